// With --auth-tokens the console asks for a bearer token (kept in sessionStorage only) and
// refuses a wrong one; with --deferred-dial a call is staged, shown from GetDialpad, and placed
// by the Dial button (DialStaged).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  binaryPath, launchBrowser, placeCall, screenshot, startCalldesk, STEP_MS, waitForSummary,
} from "./harness.mjs";

let calldesk;
let browser;
let token;
let dir;

before(async () => {
  // A token minted as an operator would: `calldesk token AGENT`.
  const minted = execFileSync(binaryPath(), ["token", "agent-token"], { encoding: "utf8" });
  token = /^token: (\S+)$/m.exec(minted)[1];
  const line = minted.trim().split("\n").at(-1);
  dir = mkdtempSync(join(tmpdir(), "calldesk-console-auth-"));
  writeFileSync(join(dir, "tokens"), `${line}\n`);
  calldesk = await startCalldesk([
    "--auth-tokens", join(dir, "tokens"), "--deferred-dial", "--sim-ring", "50ms", "--sim-answer", "50ms",
  ]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await calldesk?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

test("sign in with a bearer token; a wrong one is refused", async () => {
  const page = await (await browser.newContext()).newPage();
  await page.goto(calldesk.url);
  assert.equal(await page.isVisible("#token-field"), true, "--auth-tokens asks for a token");
  assert.equal(await page.isVisible("#agent-field"), false);
  await page.fill("#token", "not-a-token");
  await page.click("#signin-button");
  await page.waitForFunction(() => document.getElementById("signin-error")?.textContent, null, { timeout: STEP_MS });
  assert.match(await page.textContent("#signin-error"), /^Not signed in\. UNAUTHENTICATED: unknown bearer token/);
  await page.fill("#token", token);
  await page.click("#signin-button");
  await page.waitForSelector("#desk:not([hidden])", { timeout: STEP_MS });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("calldesk.token")), token);
  assert.equal(await page.evaluate(() => localStorage.length + document.cookie.length), 0);
  // A reload in the same tab stays signed in; a new tab does not.
  await page.reload();
  await page.waitForSelector("#desk:not([hidden])", { timeout: STEP_MS });
  const other = await (await browser.newContext()).newPage();
  await other.goto(calldesk.url);
  assert.equal(await other.isVisible("#signin"), true);
  await screenshot(page, "signed-in-with-token");
  await page.click("#sign-out");
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, "signing out forgets the token");
});

test("Deferred Dial: the staged number and its Dial button", async () => {
  const page = await (await browser.newContext({ viewport: { width: 1200, height: 860 } })).newPage();
  await page.goto(calldesk.url);
  await page.fill("#token", token);
  await page.click("#signin-button");
  await page.waitForSelector("#desk:not([hidden])", { timeout: STEP_MS });
  assert.equal(await page.isVisible("#dial-button"), false, "nothing staged, no Dial");
  await placeCall(page, "+12025550100", { displayName: "Staged case" });
  await page.waitForFunction(() => document.getElementById("dialpad-staged")?.textContent?.includes("+12025550100"),
    null, { timeout: STEP_MS });
  assert.equal(await page.textContent("#dialpad-staged"), "Staged: +12025550100 · Staged case");
  assert.equal(await page.locator("#interactions tr").count(), 0, "staging places no call");
  await screenshot(page, "deferred-dial");
  await page.click("#dial-button");
  await waitForSummary(page, "DELIVERED · CONNECTED");
  await page.waitForSelector("#dial-button", { state: "hidden", timeout: STEP_MS });
  assert.equal(await page.textContent("#dialpad-staged"), "Nothing staged.");
  assert.equal(await page.locator("#interactions tr").count(), 1);
});
