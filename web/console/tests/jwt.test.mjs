// With --jwt-jwks the console asks for a token, and a JWT the identity provider signed, pasted
// as is, signs the agent in as the JWT's subject; an expired one is refused with its reason.
// The provider is an Ed25519 key this test generates (node:crypto), its public half the JWKS.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, sign } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launchBrowser, placeCall, startCalldesk, STEP_MS, waitForSummary } from "./harness.mjs";

const ISSUER = "https://idp.example.com/realms/contact-center";
const AUDIENCE = "calldesk";

let calldesk;
let browser;
let dir;
const { publicKey, privateKey } = generateKeyPairSync("ed25519");

/** A JWT (EdDSA, kid "console-1") with the usual claims, `changes` on top. */
function jwt(changes = {}) {
  const now = Math.floor(Date.now() / 1000);
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const claims = { iss: ISSUER, aud: AUDIENCE, sub: "jane.doe", exp: now + 3600, ...changes };
  const signed = `${part({ alg: "EdDSA", typ: "JWT", kid: "console-1" })}.${part(claims)}`;
  return `${signed}.${sign(null, Buffer.from(signed), privateKey).toString("base64url")}`;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "calldesk-console-jwt-"));
  const jwk = { ...publicKey.export({ format: "jwk" }), kid: "console-1", alg: "EdDSA", use: "sig" };
  writeFileSync(join(dir, "jwks.json"), JSON.stringify({ keys: [jwk] }));
  calldesk = await startCalldesk([
    "--jwt-jwks", join(dir, "jwks.json"), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE,
    "--sim-ring", "50ms", "--sim-answer", "50ms",
  ]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await calldesk?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

test("sign in with a pasted JWT; an expired one is refused with its reason", async () => {
  const page = await (await browser.newContext()).newPage();
  await page.goto(calldesk.url);
  assert.equal(await page.isVisible("#token-field"), true, "--jwt-jwks asks for a token");
  await page.fill("#token", jwt({ exp: Math.floor(Date.now() / 1000) - 600 }));
  await page.click("#signin-button");
  await page.waitForFunction(() => document.getElementById("signin-error")?.textContent, null, { timeout: STEP_MS });
  assert.match(await page.textContent("#signin-error"), /^Not signed in\. UNAUTHENTICATED: JWT expired/);
  await page.fill("#token", jwt());
  await page.click("#signin-button");
  await page.waitForSelector("#desk:not([hidden])", { timeout: STEP_MS });
  await placeCall(page, "+12025550100");
  await waitForSummary(page, "DELIVERED · CONNECTED");
});
