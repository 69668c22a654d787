"use strict";
const api = (path) => "/api/dtmsvr/" + path;
const $ = (id) => document.getElementById(id);
let cursors = [""], page = 0;

// Every value goes through this before it lands in markup, in text or in a quoted attribute.
const ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;"};
function text(s) { return (s == null ? "" : String(s)).replace(/[&<>"'`]/g, (c) => ESCAPES[c]); }
function showError(e) { $("msg").textContent = e ? String(e) : ""; }

// With tokens configured the page asks for an admin token once per tab (kept in sessionStorage).
async function call(path, init, asked) {
  // State-changing routes take JSON only (a cross-site form cannot send it).
  const headers = {"Content-Type": "application/json"};
  const token = sessionStorage.getItem("braid-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(api(path), Object.assign({headers}, init));
  if ((r.status === 401 || r.status === 403) && !asked) {
    const t = prompt("braid admin token");
    if (t) { sessionStorage.setItem("braid-token", t); return call(path, init, true); }
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || ("HTTP " + r.status));
  return body;
}

function query() {
  const f = new FormData($("filters")); const q = new URLSearchParams();
  for (const [k, v] of f) if (v) q.set(k, v);
  if (cursors[page]) q.set("position", cursors[page]);
  return q.toString();
}

async function load() {
  showError("");
  try {
    const data = await call("all?" + query());
    const list = data.transactions || [];
    $("rows").innerHTML = list.map(t => `<tr class="row" data-gid="${text(t.gid)}">
      <td><code>${text(t.gid)}</code></td><td>${text(t.trans_type)}</td>
      <td class="st st-${text(t.status)}">${text(t.status)}</td><td>${text(t.create_time)}</td>
      <td>${text(t.next_cron_time || "")}</td><td>${text(t.rollback_reason || "")}</td></tr>`).join("")
      || `<tr><td colspan="6">No transactions.</td></tr>`;
    cursors[page + 1] = data.next_position || "";
    $("next").disabled = !data.next_position;
    for (const tr of document.querySelectorAll("tr.row")) tr.onclick = () => detail(tr.dataset.gid);
  } catch (e) { showError(e.message); }
}

async function detail(gid) {
  showError("");
  try {
    const d = await call("query?gid=" + encodeURIComponent(gid));
    const t = d.transaction;
    if (!t) { $("detail").innerHTML = ""; return showError("No transaction " + gid); }
    const fields = ["gid","trans_type","status","protocol","create_time","update_time","finish_time","rollback_time",
      "next_cron_interval","next_cron_time","rollback_reason","query_prepared","custom_data","options","result"];
    const open = !["succeed","failed"].includes(t.status);
    $("detail").innerHTML = `<h2>Transaction <code>${text(t.gid)}</code></h2>
      <div class="actions">${open ? `<button class="danger" id="stop">Force stop</button>
        <button id="now">Retry now</button>` : ""}</div>
      <div class="kv">${fields.filter(k => t[k] !== undefined && t[k] !== "")
        .map(k => `<div>${k}</div><div><code>${text(t[k])}</code></div>`).join("")}</div>
      <table><thead><tr><th>branch</th><th>op</th><th>status</th><th>url</th><th>finished</th></tr></thead><tbody>
      ${(d.branches || []).map(b => `<tr><td>${text(b.branch_id)}</td><td>${text(b.op)}</td>
        <td class="st st-${text(b.status)}">${text(b.status)}</td><td><code>${text(b.url || "")}</code></td>
        <td>${text(b.finish_time || b.rollback_time || "")}</td></tr>`).join("")}</tbody></table>`;
    if (open) {
      $("stop").onclick = async () => {
        if (!confirm("Mark " + gid + " failed without calling its branches?")) return;
        try { await call("forceStop", {method: "POST", body: JSON.stringify({gid})}); await detail(gid); await load(); }
        catch (e) { showError(e.message); }
      };
      $("now").onclick = async () => {
        try { await call("resetNextCronTime", {method: "POST", body: JSON.stringify({gid})}); await detail(gid); }
        catch (e) { showError(e.message); }
      };
    }
  } catch (e) { showError(e.message); }
}

$("filters").onsubmit = (ev) => { ev.preventDefault(); cursors = [""]; page = 0; load(); };
$("first").onclick = () => { page = 0; load(); };
$("next").onclick = () => { if (cursors[page + 1]) { page += 1; load(); } };
call("version").then(v => $("version").textContent = v.version).catch(() => {});
load();
