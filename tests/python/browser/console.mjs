#!/usr/bin/env node
// Drives the approvals console in a real browser (Debian's Chromium through playwright-core):
// signs in as an approver, finds the approval's card, checks its masked preview and that no raw
// secret is anywhere in the page, takes a full-page screenshot, approves through the card's
// form and checks the detail page says so.
//
// Used by tests/python/test_approvals_browser.py; both are installed by .ci/install.
//
// Inputs (a flag wins over its environment variable):
//   --admin URL          CONSOLE_ADMIN_URL    the proxy's admin listener, e.g. http://127.0.0.1:9901
//   --id ID              CONSOLE_APPROVAL_ID  the pending approval to find and approve
//   --expect TEXT        CONSOLE_EXPECT       text the card's preview must hold (flag repeatable;
//                                             the variable is a JSON array of strings)
//   --screenshot PATH    CONSOLE_SCREENSHOT   where the full-page PNG goes
//   --reason TEXT        CONSOLE_REASON       the reason typed before approving (optional)
//   --detail-screenshot PATH                  a screenshot of the detail page after approving
//                        CONSOLE_DETAIL_SCREENSHOT                               (optional)
//                        CONSOLE_TOKEN        the approver's token (environment only: not in `ps`)
//                        CONSOLE_FORBIDDEN    JSON array of strings that must appear nowhere in
//                                             any page's HTML (raw secrets; environment only)
//                        STREAMMASK_NODE_DIR  where playwright-core is installed
//                                             (default $HOME/.cache/streammask-node)
//                        CHROMIUM             the browser (default /usr/bin/chromium)
//
// Prints one JSON object on stdout ({"ok": true, ...} or {"ok": false, "step", "error"}) and
// exits 0 only when every check passed.

import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const TIMEOUT_MS = 15000;

function fail(step, error, extra = {}) {
  // Playwright's call logs carry terminal colours: plain text reads better in pytest's report.
  const message = (error instanceof Error ? error.message : String(error)).replace(/\u001b\[[0-9;]*m/g, "");
  process.stdout.write(JSON.stringify({ ok: false, step, error: message, ...extra }) + "\n");
  process.stderr.write(`console.mjs: ${step}: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const flags = { expect: [] };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i];
    const value = argv[i + 1];
    if (!name.startsWith("--") || value === undefined) fail("arguments", `unexpected argument ${name}`);
    const key = name.slice(2);
    if (!["admin", "id", "expect", "screenshot", "reason", "detail-screenshot"].includes(key)) {
      fail("arguments", `unknown flag ${name}`);
    }
    if (key === "expect") flags.expect.push(value);
    else flags[key] = value;
    i++;
  }
  return flags;
}

function jsonList(name) {
  const raw = process.env[name];
  if (!raw) return [];
  try {
    const list = JSON.parse(raw);
    if (Array.isArray(list) && list.every((s) => typeof s === "string")) return list;
  } catch (_) {
    // fall through
  }
  fail("arguments", `${name} must be a JSON array of strings`);
}

const flags = parseArgs(process.argv.slice(2));
const admin = (flags.admin ?? process.env.CONSOLE_ADMIN_URL ?? "").replace(/\/+$/, "");
const id = flags.id ?? process.env.CONSOLE_APPROVAL_ID ?? "";
const expected = flags.expect.length ? flags.expect : jsonList("CONSOLE_EXPECT");
const screenshot = flags.screenshot ?? process.env.CONSOLE_SCREENSHOT ?? "";
const reason = flags.reason ?? process.env.CONSOLE_REASON ?? "";
const detailScreenshot = flags["detail-screenshot"] ?? process.env.CONSOLE_DETAIL_SCREENSHOT ?? "";
const token = process.env.CONSOLE_TOKEN ?? "";
const forbidden = jsonList("CONSOLE_FORBIDDEN").filter((s) => s.length > 0);
for (const [what, value] of [["--admin", admin], ["--id", id], ["--screenshot", screenshot], ["CONSOLE_TOKEN", token]]) {
  if (!value) fail("arguments", `${what} is required`);
}
if (!/^apr_[0-9a-f]+$/.test(id)) fail("arguments", `--id ${JSON.stringify(id)} is not an approval id`);

const nodeDir = process.env.STREAMMASK_NODE_DIR || path.join(os.homedir(), ".cache", "streammask-node");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
let chromium;
try {
  const require = createRequire(path.join(nodeDir, "node_modules") + path.sep);
  ({ chromium } = require("playwright-core"));
} catch (error) {
  fail("setup", `playwright-core not found under ${nodeDir}/node_modules (run .ci/install): ${error.message}`);
}
if (!fs.existsSync(executablePath)) fail("setup", `${executablePath} not found (run .ci/install)`);

/** The forbidden strings found in `html`, by index (never the strings themselves). */
function leaks(html) {
  return forbidden.map((s, i) => (html.includes(s) ? i : -1)).filter((i) => i >= 0);
}

const summary = { ok: false, approval_id: id, admin, checks: [] };
const consoleErrors = [];
const pageErrors = [];
let step = "launch";
const browser = await chromium
  .launch({
    executablePath,
    args: ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 60000,
  })
  .catch((error) => fail(step, error));
const started = Date.now();
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 }, deviceScaleFactor: 1 });
  context.setDefaultTimeout(TIMEOUT_MS);
  context.setDefaultNavigationTimeout(TIMEOUT_MS);
  page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") consoleErrors.push(msg.text());
  });
  page.on("pageerror", (error) => pageErrors.push(error.message));
  // A dialog can only come from script injected through a record: dismiss it, fail the run.
  page.on("dialog", (dialog) => {
    pageErrors.push(`unexpected ${dialog.type()} dialog: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  summary.browser_version = browser.version();

  step = "open the console";
  const first = await page.goto(`${admin}/approvals`);
  if (!first || first.status() !== 200) throw new Error(`GET /approvals answered ${first && first.status()}`);
  const tokenField = page.locator('form[action="/approvals/sign-in"] input[name="token"]');
  await tokenField.waitFor({ state: "visible" });
  summary.checks.push("sign-in form shown");

  step = "sign in";
  await tokenField.fill(token);
  await page.locator('form[action="/approvals/sign-in"] button[type="submit"]').click();
  // Either the lists (signed in) or the sign-in form again with an error.
  await page.locator("#lists, p.error").first().waitFor({ state: "attached" });
  if (await page.locator('form[action="/approvals/sign-in"]').count()) {
    const error = (await page.locator("p.error").allTextContents()).join(" ");
    throw new Error(`still on the sign-in form after signing in${error ? `: ${error}` : ""}`);
  }
  summary.checks.push("signed in");

  step = "find the approval's card";
  const card = page.locator(`[data-approval="${id}"]`);
  await card.waitFor({ state: "visible" });
  const preview = (await card.locator("pre").textContent()) ?? "";
  summary.preview = preview;
  const missing = expected.filter((s) => !preview.includes(s));
  if (missing.length) throw new Error(`the card's preview lacks ${JSON.stringify(missing)}; it shows ${JSON.stringify(preview)}`);
  summary.checks.push(`preview holds ${expected.length} expected string(s)`);
  const buttons = await card.locator("form button").allTextContents();
  if (!buttons.includes("Approve") || !buttons.includes("Deny")) throw new Error(`the card's buttons are ${JSON.stringify(buttons)}`);
  if ((await card.locator('input[type="hidden"][name="csrf"]').count()) !== 1) throw new Error("the card's form has no csrf input");

  step = "check the previews are text";
  // Every value is escaped: a preview is a text node, never markup.
  const markup = await page.locator("#lists pre *").count();
  if (markup) throw new Error(`${markup} element(s) inside the previews: a record was not escaped`);
  summary.checks.push("previews are plain text");

  step = "check the page for raw secrets";
  let found = leaks(await page.content());
  if (found.length) throw new Error(`the list page holds forbidden string(s) #${found.join(", #")}`);
  summary.checks.push(`no forbidden string in the list page (${forbidden.length} checked)`);

  step = "wait for the in-place refresh";
  // console.js swaps the lists' HTML every 2 s: a mark on the card goes when it is replaced.
  await card.evaluate((el) => el.setAttribute("data-test-seen", "1"));
  await page.waitForFunction(
    (sel) => {
      const el = document.querySelector(sel);
      return el !== null && !el.hasAttribute("data-test-seen");
    },
    `[data-approval="${id}"]`,
    { timeout: 8000 },
  );
  found = leaks(await page.content());
  if (found.length) throw new Error(`the refreshed list holds forbidden string(s) #${found.join(", #")}`);
  summary.checks.push("list refreshed in place");

  step = "screenshot";
  fs.mkdirSync(path.dirname(path.resolve(screenshot)), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  summary.screenshot = screenshot;
  summary.checks.push("screenshot taken");

  step = "approve";
  if (reason) {
    // Typing in the reason field also pauses the refresh (console.js leaves a form in use).
    await card.locator('input[name="reason"]').fill(reason);
  }
  const detailUrl = `${admin}/approvals/${id}`;
  await Promise.all([page.waitForURL(detailUrl), card.getByRole("button", { name: "Approve", exact: true }).click()]);
  summary.detail_url = page.url();

  step = "check the detail page";
  const decision = page.locator("main p.note", { hasText: /^(Approved|Denied) by/ });
  await decision.first().waitFor({ state: "visible" });
  const decided = ((await decision.first().textContent()) ?? "").trim();
  summary.decision = decided;
  if (!decided.startsWith("Approved by")) throw new Error(`the detail page says ${JSON.stringify(decided)}`);
  if (reason && !decided.includes(reason)) throw new Error(`the detail page lacks the reason: ${JSON.stringify(decided)}`);
  const badge = ((await page.locator(`[data-approval="${id}"] .state`).first().textContent()) ?? "").trim();
  if (badge !== "approved") throw new Error(`the detail page's badge says ${JSON.stringify(badge)}`);
  if (await page.locator(`[data-approval="${id}"] form`).count()) throw new Error("the decided card still has a decision form");
  found = leaks(await page.content());
  if (found.length) throw new Error(`the detail page holds forbidden string(s) #${found.join(", #")}`);
  summary.checks.push("detail page says approved");
  if (detailScreenshot) {
    await page.screenshot({ path: detailScreenshot, fullPage: true });
    summary.detail_screenshot = detailScreenshot;
  }

  if (pageErrors.length) {
    step = "page errors";
    throw new Error(`uncaught errors in the page: ${JSON.stringify(pageErrors)}`);
  }
  summary.ok = true;
} catch (error) {
  let failureShot;
  if (page && screenshot) {
    failureShot = screenshot.replace(/(\.png)?$/, ".failure.png");
    await page.screenshot({ path: failureShot, fullPage: true }).catch(() => (failureShot = undefined));
  }
  await browser.close().catch(() => {});
  fail(step, error, { url: page ? page.url() : undefined, failure_screenshot: failureShot, checks: summary.checks, console_errors: consoleErrors, page_errors: pageErrors });
}
summary.console_errors = consoleErrors;
summary.elapsed_ms = Date.now() - started;
await browser.close();
process.stdout.write(JSON.stringify(summary) + "\n");
