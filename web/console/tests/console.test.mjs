// The console in Debian's chromium against one real calldesk (development mode), clicked as a
// person would: sign in, a call with an object (RINGING, then CONNECTED; a double click dials
// once), hold and resume, end and complete, a busy number, a bad number, the active-call limit
// and the switch's "Timeout error", calls refused by a do-not-call list and by calling hours,
// the caller-ID choice (ListCallerIds) and the number each call presented, a consultation
// cancelled and a transfer to another agent.
// Each test saves a PNG in screenshots/.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  launchBrowser, placeCall, screenshot, signIn, startCalldesk, STEP_MS, timeline, waitForSummary,
} from "./harness.mjs";

const NUM_OK = "+12025550100";
const NUM_BUSY = "+12025550101";
const NUM_NO_ACK = "+12025550104";
/** On the do-not-call list of this server. */
const NUM_DNC = "+12025550199";
/** Phoenix: calling hours closed all week on this server. */
const NUM_CLOSED = "+16025550100";
/** agent-cid's caller IDs (--caller-ids): the default (Chicago), and one in NUM_OK's area code. */
const CID_DEFAULT = "+13125550122";
const CID_LOCAL = "+12025550111";
const OBJECT = {
  id: "case-4711", type: "Case", displayName: "Printer on fire", displayType: "Support case",
  customFields: { priority: "high" },
};

let calldesk;
let browser;
/** The test's own files (lists for the flags), removed at the end. */
let files;

before(async () => {
  files = mkdtempSync(join(tmpdir(), "calldesk-console-"));
  writeFileSync(join(files, "dnc.txt"), `${NUM_DNC}\n`);
  writeFileSync(join(files, "hours.txt"), "+1602 Mon-Sun closed\n");
  writeFileSync(join(files, "caller-ids.txt"), `agent-cid ${CID_DEFAULT} ${CID_LOCAL}\n`);
  calldesk = await startCalldesk([
    "--sim-ring", "300ms", "--sim-answer", "500ms", "--originate-timeout", "1s",
    "--max-active-calls", "2",
    "--dnc", join(files, "dnc.txt"), "--calling-hours", join(files, "hours.txt"),
    "--caller-ids", join(files, "caller-ids.txt"),
  ]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await calldesk?.cleanup();
  if (files) rmSync(files, { recursive: true, force: true });
});

/** A fresh tab (its own sessionStorage) signed in as `agent`. */
async function desk(agent) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
  const page = await context.newPage();
  await signIn(page, calldesk.url, agent);
  return page;
}

/** Places a call to NUM_OK with the object and waits until it is CONNECTED. */
async function connectedCall(page) {
  await placeCall(page, NUM_OK, OBJECT);
  await waitForSummary(page, "CONNECTED");
}

test("sign in with an agent id", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(calldesk.url);
  assert.equal(await page.isVisible("#agent-field"), true, "development mode asks for an agent id");
  assert.equal(await page.isVisible("#token-field"), false);
  await page.click("#signin-button");
  assert.match(await page.textContent("#signin-error"), /agent id/);
  await page.fill("#agent-id", "agent-signin");
  await page.click("#signin-button");
  await page.waitForSelector("#desk:not([hidden])", { timeout: STEP_MS });
  assert.equal(await page.textContent("#agent"), "agent agent-signin");
  await page.waitForSelector('#connection[data-state="connected"]', { timeout: STEP_MS });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("calldesk.development")), "agent-signin");
  assert.equal(await page.evaluate(() => localStorage.length), 0, "nothing in localStorage");
  await screenshot(page, "sign-in");
  await context.close();
});

test("a call with an associated object rings, then connects; a double click dials once", async () => {
  const page = await desk("agent-call");
  await page.fill("#phone", NUM_OK);
  await page.fill("#object-id", OBJECT.id);
  await page.fill("#object-type", OBJECT.type);
  await page.fill("#object-name", OBJECT.displayName);
  await page.fill("#object-display-type", OBJECT.displayType);
  await page.click("#add-field");
  await page.locator(".field-key").last().fill("priority");
  await page.locator(".field-value").last().fill("high");
  await page.dblclick("#call-button");
  await waitForSummary(page, "RINGING");
  await waitForSummary(page, "CONNECTED");
  const events = await timeline(page);
  const states = events.map((e) => e.text);
  const ringing = states.findIndex((t) => t.includes("RINGING"));
  const connected = states.findIndex((t) => t.includes("CONNECTED"));
  assert.ok(ringing >= 0 && connected > ringing, `RINGING, then CONNECTED: ${states.join(" | ")}`);
  const row = page.locator("#interactions tr");
  assert.equal(await row.count(), 1, "the double click dialed once");
  assert.equal(await row.locator(".state").textContent(), "DELIVERED");
  assert.equal(await row.locator(".progress").textContent(), "CONNECTED");
  assert.equal(await row.locator(".number").textContent(), NUM_OK);
  assert.equal(await row.locator(".object").textContent(), OBJECT.displayName);
  await page.waitForFunction(() => /\d+s$/.test(document.querySelector("#interactions .since")?.textContent ?? ""),
    null, { timeout: STEP_MS });
  await screenshot(page, "console");
  await page.context().close();
});

test("hold and resume", async () => {
  const page = await desk("agent-hold");
  await connectedCall(page);
  assert.equal(await page.isVisible("#resume-button"), false, "no Resume on a connected call");
  await page.click("#hold-button");
  await waitForSummary(page, "HOLD · HELD");
  assert.equal(await page.isVisible("#hold-button"), false, "no Hold on a held call");
  await screenshot(page, "hold");
  await page.click("#resume-button");
  await waitForSummary(page, "DELIVERED · CONNECTED");
  assert.equal(await page.isVisible("#hold-button"), true);
  await page.context().close();
});

test("consult and cancel, then a transfer to another agent, whose desk shows the call", async () => {
  const page = await desk("agent-xfer");
  const other = await desk("agent-xfer-2");
  await connectedCall(page);
  await page.fill("#transfer-target", "agent:agent-xfer-2");
  await page.click("#consult-button");
  await waitForSummary(page, "HOLD · CONSULTING");
  assert.equal(await page.isVisible("#resume-button"), false, "no Resume during a consultation");
  await page.click("#cancel-consult-button");
  await waitForSummary(page, "DELIVERED · CONNECTED");
  await page.click("#transfer-button");
  await waitForSummary(page, "TRANSFERRED · to agent:agent-xfer-2");
  assert.equal(await page.isVisible("#transfer-actions"), false, "no transfer after the end");
  await screenshot(page, "transfer");
  await other.waitForFunction(() => document.querySelectorAll("#interactions tr").length === 1, null,
    { timeout: STEP_MS });
  await other.locator("#interactions tr").first().click();
  await waitForSummary(other, "DELIVERED · CONNECTED · transferred from");
  await page.context().close();
  await other.context().close();
});

test("end the call, then complete it with a disposition", async () => {
  const page = await desk("agent-complete");
  await connectedCall(page);
  assert.equal(await page.isVisible("#complete-form"), false, "no Complete before the call ends");
  await page.click("#end-button");
  await waitForSummary(page, "WRAP_UP · ENDED · AGENT_HANGUP");
  assert.equal(await page.isVisible("#end-button"), false);
  await page.fill("#disposition", "Resolved");
  await page.fill("#notes", "Printer replaced.");
  await page.click("#complete-button");
  await waitForSummary(page, "COMPLETED");
  await waitForSummary(page, "disposition: Resolved");
  await page.waitForFunction(() => document.querySelector("#interactions .state")?.textContent === "COMPLETED",
    null, { timeout: STEP_MS });
  assert.equal(await page.isVisible("#complete-form"), false);
  const seqs = (await timeline(page)).map((e) => e.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "the timeline has every event once");
  await screenshot(page, "completed");
  await page.context().close();
});

test("a busy number ends with BUSY", async () => {
  const page = await desk("agent-busy");
  await placeCall(page, NUM_BUSY, { displayName: "Busy customer" });
  await waitForSummary(page, "WRAP_UP · ENDED · BUSY");
  await screenshot(page, "busy");
  await page.context().close();
});

test("a bad number reads clearly next to the form", async () => {
  const page = await desk("agent-bad");
  await placeCall(page, "12ab");
  await page.waitForFunction(() => document.getElementById("call-error")?.textContent, null, { timeout: STEP_MS });
  const error = await page.textContent("#call-error");
  assert.match(error, /^Bad number\. INVALID_ARGUMENT: phone_number: /, error);
  assert.equal(await page.locator("#interactions tr").count(), 0, "nothing was placed");
  await screenshot(page, "bad-number");
  await page.context().close();
});

test("the active-call limit reads TOO_MANY_ACTIVE_CALLS", async () => {
  const page = await desk("agent-limit");
  for (let n = 1; n <= 2; n++) {
    await placeCall(page, NUM_OK);
    await page.waitForFunction((n) => document.querySelectorAll("#interactions tr").length === n, n,
      { timeout: STEP_MS });
  }
  await placeCall(page, NUM_OK);
  await page.waitForFunction(() => document.getElementById("call-error")?.textContent, null, { timeout: STEP_MS });
  const error = await page.textContent("#call-error");
  assert.match(error, /TOO_MANY_ACTIVE_CALLS/, error);
  assert.match(error, /RESOURCE_EXHAUSTED: the agent already has 2 active calls/, error);
  await screenshot(page, "too-many-active-calls");
  await page.context().close();
});

test("a dial the switch never acknowledges reads Timeout error", async () => {
  const page = await desk("agent-timeout");
  await placeCall(page, NUM_NO_ACK);
  await page.waitForFunction(() => document.getElementById("call-error")?.textContent, null, { timeout: STEP_MS });
  const error = await page.textContent("#call-error");
  assert.match(error, /DEADLINE_EXCEEDED: Timeout error$/, error);
  assert.match(error, /did not acknowledge the dial/, error);
  await screenshot(page, "timeout-error");
  await page.context().close();
});

test("calls refused by a do-not-call list or by calling hours read in words", async () => {
  const page = await desk("agent-refused");
  await placeCall(page, NUM_DNC);
  await page.waitForFunction(() => document.getElementById("call-error")?.textContent, null, { timeout: STEP_MS });
  let error = await page.textContent("#call-error");
  assert.match(error, /^Not called: the number is on a do-not-call list \(dnc\.txt\)\. FAILED_PRECONDITION: /, error);
  await screenshot(page, "do-not-call");
  await placeCall(page, NUM_CLOSED);
  await page.waitForFunction(() => /calling hours/.test(document.getElementById("call-error")?.textContent ?? ""),
    null, { timeout: STEP_MS });
  error = await page.textContent("#call-error");
  assert.match(error, /^Not called: it is outside calling hours where the number is\. FAILED_PRECONDITION: /, error);
  assert.equal(await page.locator("#interactions tr").count(), 0, "nothing was placed");
  await screenshot(page, "outside-calling-hours");
  await page.context().close();
});

test("the caller ID: closest to the customer by default, or the one chosen; each call shows it", async () => {
  const page = await desk("agent-cid");
  await page.waitForSelector("#caller-id-field:not([hidden])", { timeout: STEP_MS });
  const options = await page.locator("#caller-id option").evaluateAll((os) => os.map((o) => [o.value, o.textContent]));
  assert.deepEqual(options, [["", "Closest to the customer"], [CID_DEFAULT, CID_DEFAULT], [CID_LOCAL, CID_LOCAL]]);
  // Local presence: NUM_OK is in Washington's 202, as CID_LOCAL is.
  await placeCall(page, NUM_OK);
  await waitForSummary(page, `from ${CID_LOCAL}`);
  await page.selectOption("#caller-id", CID_DEFAULT);
  await placeCall(page, NUM_BUSY);
  await waitForSummary(page, `from ${CID_DEFAULT}`);
  const rows = page.locator("#interactions tr");
  await page.waitForFunction(() => document.querySelectorAll("#interactions tr").length === 2, null, { timeout: STEP_MS });
  const shown = await rows.evaluateAll((trs) =>
    trs.map((tr) => [tr.querySelector(".number")?.textContent, tr.querySelector(".caller-id")?.textContent]).sort());
  assert.deepEqual(shown, [[NUM_OK, CID_LOCAL], [NUM_BUSY, CID_DEFAULT]].sort());
  await screenshot(page, "caller-id");
  await page.context().close();
});

test("an agent without caller IDs sees no choice", async () => {
  const page = await desk("agent-no-cid");
  // ListCallerIds answered (the automatic option is there) with no number.
  await page.waitForFunction(() => document.getElementById("caller-id")?.children.length === 1, null, { timeout: STEP_MS });
  assert.equal(await page.isVisible("#caller-id-field"), false);
  await page.context().close();
});
