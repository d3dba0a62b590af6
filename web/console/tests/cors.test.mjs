// A CRM page on another origin (127.0.0.2, its own port) calls calldesk (127.0.0.1) from the
// browser: it can with `--cors-allow-origin` naming it, it cannot without; and a `text/plain`
// POST, which a page may send anywhere without a preflight, places nothing.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { launchBrowser, screenshot, startCalldesk, STEP_MS } from "./harness.mjs";

// The CRM page: one button that POSTs a gRPC-Web StartCall to the calldesk in ?calldesk=, and
// one that sends the same bytes as text/plain (mode no-cors), then writes what happened.
const CRM_PAGE = `<!doctype html><meta charset="utf-8"><title>CRM</title>
<h1>CRM</h1><button id="call">Call +12025550100</button><button id="plain">text/plain</button>
<pre id="result"></pre>
<script>
const calldesk = new URLSearchParams(location.search).get("calldesk");
const phone = new TextEncoder().encode("+12025550100");
const message = new Uint8Array([0x0a, phone.length, ...phone]);
const frame = new Uint8Array([0, 0, 0, 0, message.length, ...message]);
const url = calldesk + "/calldesk.v1.InteractionService/StartCall";
const show = (text) => { document.getElementById("result").textContent = text; };
document.getElementById("call").onclick = async () => {
  try {
    const res = await fetch(url, { method: "POST", body: frame, headers: {
      "content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-agent-id": "crm-agent" } });
    const body = new Uint8Array(await res.arrayBuffer());
    const trailers = new TextDecoder().decode(body).match(/grpc-status:\\s*(\\d+)/i);
    show("answered HTTP " + res.status + " grpc-status " + (res.headers.get("grpc-status") ?? (trailers && trailers[1])));
  } catch (e) { show("blocked: " + e.message); }
};
document.getElementById("plain").onclick = async () => {
  try {
    await fetch(url, { method: "POST", mode: "no-cors", body: frame, headers: { "content-type": "text/plain" } });
    show("sent");
  } catch (e) { show("failed: " + e.message); }
};
</script>`;

let crm;
let crmOrigin;
let allowing;
let closed;
let browser;

before(async () => {
  crm = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(CRM_PAGE);
  });
  await new Promise((res) => crm.listen(0, "127.0.0.2", res));
  crmOrigin = `http://127.0.0.2:${crm.address().port}`;
  allowing = await startCalldesk(["--cors-allow-origin", crmOrigin]);
  closed = await startCalldesk([]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await allowing?.cleanup();
  await closed?.cleanup();
  await new Promise((res) => crm?.close(res));
});

/** crm-agent's interactions on `calldesk`, asked with gRPC-Web from here (no browser). */
async function crmCalls(calldesk) {
  const res = await fetch(`${calldesk.url}/calldesk.v1.InteractionService/ListInteractions`, {
    method: "POST", body: new Uint8Array(5),
    headers: { "content-type": "application/grpc-web+proto", "x-agent-id": "crm-agent" },
  });
  const body = new Uint8Array(await res.arrayBuffer());
  const length = new DataView(body.buffer).getUint32(1);
  // ListInteractionsResponse: field 1 (interactions), one length-delimited entry each.
  let count = 0;
  for (let i = 5; i < 5 + length;) {
    const key = body[i++];
    let len = 0;
    for (let shift = 0; ; shift += 7) {
      const b = body[i++];
      len |= (b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    if (key === 0x0a) count++;
    i += len;
  }
  return count;
}

async function crmPage(calldesk) {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${crmOrigin}/?calldesk=${encodeURIComponent(calldesk.url)}`);
  return page;
}

async function resultOf(page, button) {
  await page.evaluate(() => { document.getElementById("result").textContent = ""; });
  await page.click(button);
  await page.waitForFunction(() => document.getElementById("result").textContent, null, { timeout: STEP_MS });
  return page.textContent("#result");
}

test("a page on an allowed origin calls calldesk", async () => {
  const page = await crmPage(allowing);
  assert.equal(await resultOf(page, "#call"), "answered HTTP 200 grpc-status 0");
  assert.equal(await crmCalls(allowing), 1);
  await screenshot(page, "cors-allowed");
});

test("without --cors-allow-origin the browser blocks the page", async () => {
  const page = await crmPage(closed);
  assert.match(await resultOf(page, "#call"), /^blocked: /);
  assert.equal(await crmCalls(closed), 0, "the preflight failed, nothing was sent");
  await screenshot(page, "cors-blocked");
});

test("a text/plain POST from any page places nothing", async () => {
  for (const calldesk of [closed, allowing]) {
    const before = await crmCalls(calldesk);
    const page = await crmPage(calldesk);
    assert.equal(await resultOf(page, "#plain"), "sent");
    assert.equal(await crmCalls(calldesk), before, `text/plain placed nothing on ${calldesk.url}`);
  }
});
