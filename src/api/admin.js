"use strict";
// The admin page. Every value the API returns goes through text() before it lands in markup; messages go
// through textContent. The page lives under the base path the server wrote into it, and calls the API there.
const BASE = document.querySelector('meta[name="braid-base"]').content;
const api = (path) => BASE + "/api/dtmsvr/" + path;
const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "braid-token";
let cursors = [""], page = 0;

// Every value goes through this before it lands in markup, in text or in a quoted attribute.
const ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;"};
function text(s) { return (s == null ? "" : String(s)).replace(/[&<>"'`]/g, (c) => ESCAPES[c]); }
function showError(e) { $("msg").textContent = e ? String(e) : ""; }

// A 401 or 403: the page needs a (better) token; `reason` is the server's message.
class NeedsToken extends Error {}

async function call(path, init) {
  // State-changing routes take JSON only (a cross-site form cannot send it).
  const headers = {"Content-Type": "application/json"};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(api(path), Object.assign({headers}, init));
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 || r.status === 403) throw new NeedsToken(body.message || ("HTTP " + r.status));
  if (!r.ok) throw new Error(body.message || ("HTTP " + r.status));
  return body;
}

// Runs an action of the page; when the server wants a token, asks for one and runs the action again after.
let pending = null;
async function run(action) {
  showError("");
  try { await action(); }
  catch (e) {
    if (e instanceof NeedsToken) askToken(e.message, action);
    else showError(e.message);
  }
}

function askToken(reason, retry) {
  pending = retry;
  $("login-why").textContent = (sessionStorage.getItem(TOKEN_KEY) ? "The token was refused: " : "") + reason;
  $("login").hidden = false;
  $("login").elements.token.focus();
}

$("login").onsubmit = (ev) => {
  ev.preventDefault();
  const field = $("login").elements.token;
  const token = field.value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  field.value = "";
  $("login").hidden = true;
  $("forget").hidden = false;
  const retry = pending || load;
  pending = null;
  run(retry);
};

$("forget").onclick = () => {
  sessionStorage.removeItem(TOKEN_KEY);
  $("forget").hidden = true;
  $("rows").innerHTML = "";
  $("detail").innerHTML = "";
  run(load);
};

function query() {
  const f = new FormData($("filters")); const q = new URLSearchParams();
  for (const [k, v] of f) if (v) q.set(k, v);
  if (cursors[page]) q.set("position", cursors[page]);
  return q.toString();
}

async function load() {
  const data = await call("all?" + query());
  const list = data.transactions || [];
  $("rows").innerHTML = list.map(t => `<tr class="row" data-gid="${text(t.gid)}">
    <td><code>${text(t.gid)}</code></td><td>${text(t.trans_type)}</td>
    <td class="st st-${text(t.status)}">${text(t.status)}</td><td>${text(t.create_time)}</td>
    <td>${text(t.next_cron_time || "")}</td><td>${text(t.rollback_reason || "")}</td></tr>`).join("")
    || `<tr><td colspan="6">No transactions.</td></tr>`;
  cursors[page + 1] = data.next_position || "";
  $("next").disabled = !data.next_position;
  for (const tr of document.querySelectorAll("tr.row")) tr.onclick = () => run(() => detail(tr.dataset.gid));
}

async function detail(gid) {
  const d = await call("query?gid=" + encodeURIComponent(gid));
  const t = d.transaction;
  if (!t) { $("detail").innerHTML = ""; return showError("No transaction " + gid); }
  const fields = ["gid","trans_type","status","protocol","create_time","update_time","finish_time","rollback_time",
    "next_cron_interval","next_cron_time","rollback_reason","query_prepared","custom_data","options","result"];
  const open = !["succeed","failed"].includes(t.status);
  const headers = Object.entries(t.branch_headers || {});
  $("detail").innerHTML = `<h2>Transaction <code>${text(t.gid)}</code></h2>
    <div class="actions">${open ? `<button class="danger" id="stop">Force stop</button>
      <button id="now">Retry now</button>` : ""}</div>
    <div class="kv">${fields.filter(k => t[k] !== undefined && t[k] !== "")
      .map(k => `<div>${k}</div><div><code>${text(t[k])}</code></div>`).join("")}</div>
    ${headers.length ? `<h3>branch headers</h3><div class="kv">${headers
      .map(([k, v]) => `<div><code>${text(k)}</code></div><div><code>${text(v)}</code></div>`).join("")}</div>` : ""}
    <table><thead><tr><th>branch</th><th>op</th><th>status</th><th>url</th><th>finished</th></tr></thead><tbody>
    ${(d.branches || []).map(b => `<tr><td>${text(b.branch_id)}</td><td>${text(b.op)}</td>
      <td class="st st-${text(b.status)}">${text(b.status)}</td><td><code>${text(b.url || "")}</code></td>
      <td>${text(b.finish_time || b.rollback_time || "")}</td></tr>`).join("")}</tbody></table>`;
  if (open) {
    $("stop").onclick = () => run(async () => {
      if (!confirm("Mark " + gid + " failed without calling its branches?")) return;
      await call("forceStop", {method: "POST", body: JSON.stringify({gid})});
      await detail(gid);
      await load();
    });
    $("now").onclick = () => run(async () => {
      await call("resetNextCronTime", {method: "POST", body: JSON.stringify({gid})});
      await detail(gid);
    });
  }
}

$("filters").onsubmit = (ev) => { ev.preventDefault(); cursors = [""]; page = 0; run(load); };
$("first").onclick = () => { page = 0; run(load); };
$("next").onclick = () => { if (cursors[page + 1]) { page += 1; run(load); } };
$("forget").hidden = !sessionStorage.getItem(TOKEN_KEY);
call("version").then(v => { $("version").textContent = v.version; }).catch(() => {});
run(load);
