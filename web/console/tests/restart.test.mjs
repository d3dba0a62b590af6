// calldesk restarts in the middle of a call: the console says "reconnecting", retries with
// backoff by itself, and resumes the timeline from the last sequence it showed: after the
// restart it shows the SERVER_RESTART event, with no gap and no duplicate.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  launchBrowser, placeCall, screenshot, signIn, startCalldesk, STEP_MS, timeline, waitForSummary,
} from "./harness.mjs";

const FAST = ["--sim-ring", "50ms", "--sim-answer", "50ms"];
let calldesk;
let browser;

before(async () => {
  calldesk = await startCalldesk(FAST);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await calldesk?.cleanup();
});

test("a restart in the middle of a call: reconnecting, then the timeline goes on without gap or duplicate", async () => {
  const page = await (await browser.newContext({ viewport: { width: 1200, height: 860 } })).newPage();
  await signIn(page, calldesk.url, "agent-restart");
  await placeCall(page, "+12025550100", { displayName: "Restart test" });
  await waitForSummary(page, "DELIVERED · CONNECTED");
  const before = await timeline(page);
  assert.deepEqual(before.map((e) => e.seq), [1, 2, 3]);

  await calldesk.stop();
  await page.waitForSelector('#connection[data-state="reconnecting"]', { timeout: STEP_MS });
  assert.equal(await page.textContent("#connection"), "reconnecting…");
  await screenshot(page, "reconnecting");

  // The same port and data dir: the call died with the process (SERVER_RESTART).
  const restarted = await startCalldesk(FAST, { listen: calldesk.address, dataDir: calldesk.dataDir });
  try {
    await page.waitForSelector('#connection[data-state="connected"]', { timeout: 20_000 });
    await waitForSummary(page, "WRAP_UP · ENDED · SERVER_RESTART");
    const events = await timeline(page);
    const seqs = events.map((e) => e.seq);
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `no gap, no duplicate: ${seqs}`);
    assert.deepEqual(events.slice(0, 3), before, "what was shown stays as it was");
    assert.match(events.at(-1).text, /WRAP_UP · ENDED · SERVER_RESTART/);
    // The list caught up too.
    await page.waitForFunction(() => document.querySelector("#interactions .state")?.textContent === "WRAP_UP",
      null, { timeout: STEP_MS });
    await screenshot(page, "after-restart");
  } finally {
    await restarted.cleanup();
  }
});
