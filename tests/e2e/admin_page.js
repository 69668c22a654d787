// Drives braid's admin page in headless Chromium, as an operator would, against a braid that
// tests/admin_e2e.rs started and filled with hostile values. Input (JSON in BRAID_E2E): the page URL, the
// admin and client tokens, the planted gids, the screenshot folder and the browser. It fails (exit 1, the
// reason on stderr) on the first thing that is not as expected, and prints what it saw as JSON on stdout.
"use strict";
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const input = JSON.parse(process.env.BRAID_E2E);
const { url, adminToken, clientToken, gids, shots, browser: executablePath } = input;

function check(cond, what) {
  if (!cond) throw new Error("admin page: " + what);
}

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({ executablePath, headless: true });
  const seen = { dialogs: [], violations: [], pageErrors: [], consoleErrors: [], requests: [] };
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    // Any dialog but the force-stop confirmation means planted script ran.
    let confirmAnswer = null;
    page.on("dialog", async (d) => {
      seen.dialogs.push({ type: d.type(), message: d.message() });
      if (d.type() === "confirm" && confirmAnswer !== null) await d.accept();
      else await d.dismiss();
    });
    page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") seen.consoleErrors.push(m.text()); });
    page.on("request", (r) => seen.requests.push(r.url()));
    // The policy blocks inline script, so markup that escaped the escaping shows up as a violation: record
    // them before the page's own script runs.
    await page.addInitScript(() => {
      window.__violations = [];
      document.addEventListener("securitypolicyviolation", (e) => {
        window.__violations.push(e.violatedDirective + " " + e.blockedURI);
      });
    });

    await page.goto(url);
    if (adminToken) {
      // 1. No token yet: the page asks for one and says why.
      await page.waitForSelector("#login:not([hidden])");
      const why = await page.textContent("#login-why");
      check(/needs a token/.test(why), "the first prompt says a token is needed, got " + JSON.stringify(why));
      await page.screenshot({ path: path.join(shots, "1-token-prompt.png"), fullPage: true });

      // 2. A client token is refused with the reason; the page asks again.
      await page.fill("#login input[name=token]", clientToken);
      await page.click("#login button[type=submit]");
      await page.waitForFunction(() => /admin token/.test(document.getElementById("login-why").textContent)
        && !document.getElementById("login").hidden);
      const why2 = await page.textContent("#login-why");
      check(/refused/.test(why2), "a refused token is said to be refused, got " + JSON.stringify(why2));
      await page.screenshot({ path: path.join(shots, "2-client-token-refused.png"), fullPage: true });

      // 3. The admin token: the prompt goes, the token stays for the tab.
      await page.fill("#login input[name=token]", adminToken);
      await page.click("#login button[type=submit]");
    }
    // The list shows every planted transaction, each gid as text.
    await page.waitForSelector("tr.row");
    check(await page.isHidden("#login"), "no prompt once the page may read");
    if (adminToken) {
      check(await page.evaluate(() => sessionStorage.getItem("braid-token")) === adminToken,
        "the token is kept in sessionStorage");
    }
    const listed = await page.$$eval("tr.row", (rows) => rows.map((r) => r.dataset.gid));
    for (const g of Object.values(gids)) check(listed.includes(g), "the list shows " + JSON.stringify(g));
    const cells = await page.$$eval("tr.row td code", (cs) => cs.map((c) => c.textContent));
    for (const g of Object.values(gids)) check(cells.includes(g), "the gid is shown as text: " + JSON.stringify(g));
    const reasons = await page.$$eval("tr.row td:last-child", (cs) => cs.map((c) => c.textContent));
    check(reasons.includes(input.reason), "the rollback reason is shown as text");
    // Hover and click every row: a planted attribute handler would fire here.
    for (const row of await page.$$("tr.row")) await row.hover();
    await page.screenshot({ path: path.join(shots, "3-list.png"), fullPage: true });

    // 4. Filters: by status, then by an exact (hostile) gid.
    await page.selectOption("#filters select[name=status]", "submitted");
    await page.click("#filters button[type=submit]");
    await page.waitForFunction((g) => {
      const rows = [...document.querySelectorAll("tr.row")];
      return rows.length === 1 && rows[0].dataset.gid === g;
    }, gids.saga);
    await page.selectOption("#filters select[name=status]", "");
    await page.fill("#filters input[name=gid]", gids.aborted);
    await page.click("#filters button[type=submit]");
    await page.waitForFunction((g) => {
      const rows = [...document.querySelectorAll("tr.row")];
      return rows.length === 1 && rows[0].dataset.gid === g;
    }, gids.aborted);
    await page.screenshot({ path: path.join(shots, "4-filtered.png"), fullPage: true });
    await page.fill("#filters input[name=gid]", "");
    await page.click("#filters button[type=submit]");
    await page.waitForFunction((n) => document.querySelectorAll("tr.row").length === n, Object.keys(gids).length);

    // 5. The saga's detail: hostile URLs and headers as text, the sensitive header masked.
    await page.click(`tr.row[data-gid="${cssString(gids.saga)}"]`);
    await page.waitForSelector("#detail h2");
    check(await page.textContent("#detail h2 code") === gids.saga, "the detail is the saga's");
    const detailText = await page.textContent("#detail");
    for (const u of input.urls) check(detailText.includes(u), "the detail shows the branch URL " + JSON.stringify(u));
    check(detailText.includes(input.header), "the detail shows the header value as text");
    check(!detailText.includes(input.secret), "the secret header value is not shown");
    check(detailText.includes("***"), "the secret header is shown as ***");
    for (const b of await page.$$("#detail td, #detail code")) await b.hover();
    await page.screenshot({ path: path.join(shots, "5-detail.png"), fullPage: true });

    // 6. Force stop, through the confirmation.
    confirmAnswer = true;
    await page.click("#stop");
    // The detail is drawn again without the actions once the transaction is final.
    await page.waitForFunction(() => document.querySelector("#detail h2") && !document.getElementById("stop"));
    check(await page.isVisible("#detail .st-failed") || (await page.textContent("#detail .kv")).includes("failed"),
      "the detail shows the transaction failed");
    await page.screenshot({ path: path.join(shots, "6-stopped.png"), fullPage: true });
    const confirms = seen.dialogs.filter((d) => d.type === "confirm");
    check(confirms.length === 1 && confirms[0].message.includes(gids.saga), "one confirmation naming the gid");

    // 7. A reload keeps the token for the tab (if any): no prompt.
    await page.reload();
    await page.waitForSelector("tr.row");
    check(await page.isHidden("#login"), "no prompt after a reload");

    // Nothing planted ran, nor was blocked, nor left the page.
    const state = await page.evaluate(() => ({
      pwned: typeof window.__pwned,
      violations: window.__violations,
      injected: document.querySelectorAll("main img, main svg, main script, main iframe, [onmouseover], [onerror], [onload]").length,
    }));
    seen.violations = state.violations;
    check(state.pwned === "undefined", "window.__pwned is set: planted script ran");
    check(state.injected === 0, "planted markup made " + state.injected + " elements");
    check(state.violations.length === 0, "the policy blocked something: " + JSON.stringify(state.violations));
    check(seen.dialogs.length === 1, "unexpected dialogs: " + JSON.stringify(seen.dialogs));
    check(seen.pageErrors.length === 0, "script errors: " + JSON.stringify(seen.pageErrors));
    const origin = new URL(url).origin;
    const foreign = seen.requests.filter((r) => !r.startsWith(origin + "/"));
    check(foreign.length === 0, "requests left the origin: " + JSON.stringify(foreign));
    const base = new URL(url).pathname.replace(/\/admin$/, "");
    const outside = seen.requests.filter((r) => !new URL(r).pathname.startsWith(base + "/"));
    check(outside.length === 0, "requests outside the base path: " + JSON.stringify(outside));
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
}

// A string as a CSS attribute-selector value between double quotes.
function cssString(s) {
  return s.replace(/["\\]/g, (c) => "\\" + c);
}

main().catch((e) => {
  process.stderr.write((e && e.stack) || String(e));
  process.stderr.write("\n");
  process.exit(1);
});
