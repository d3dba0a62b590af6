// @calldesk/client's caller IDs (docs/api.md §3, "Caller IDs") against the real calldesk
// binary started with --caller-ids: ListCallerIds, StartCall with a caller_id of the agent's,
// an empty one (local presence), one outside the agent's list and a malformed one.
// Run: node --test tests/
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InteractionService, StartCallOutcome } from "@calldesk/client";
import { startServer } from "./server.mjs";

const CALL_TIMEOUT_MS = 10_000;
const AGENT = "ts-agent";
// ts-agent's own line, New York first (its default), then Los Angeles and London; everyone
// else's (`*`), one toll-free number.
const CALLER_IDS = {
  [AGENT]: ["+12125550100", "+13105550100", "+442079460000"],
  "*": ["+18005550100"],
};
const as = (agent) => ({ headers: { "x-agent-id": agent }, timeoutMs: CALL_TIMEOUT_MS });

/** The reason (field 1) of a `google.rpc.ErrorInfo` status detail, read off the wire: the
 * package carries calldesk's messages, not google.rpc's. */
function errorInfoReason(detail) {
  const reader = new BinaryReader(detail.value);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1) return reader.string();
    reader.skip(wireType);
  }
  return undefined;
}

let dir;
let server;
let client;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "calldesk-ts-caller-ids-"));
  const file = join(dir, "caller-ids.txt");
  writeFileSync(
    file,
    Object.entries(CALLER_IDS).map(([agent, numbers]) => `${agent} ${numbers.join(" ")}\n`).join(""),
  );
  server = await startServer(["--caller-ids", file]);
  client = createClient(InteractionService, createGrpcTransport({ baseUrl: server.baseUrl }));
});

after(async () => {
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("ListCallerIds names the agent's own line, else the * line", async () => {
  const mine = await client.listCallerIds({}, as(AGENT));
  assert.deepEqual(mine.callerIds, CALLER_IDS[AGENT]);
  assert.equal(mine.defaultCallerId, CALLER_IDS[AGENT][0]);
  const others = await client.listCallerIds({}, as("ts-other"));
  assert.deepEqual(others.callerIds, CALLER_IDS["*"]);
  assert.equal(others.defaultCallerId, CALLER_IDS["*"][0]);
});

test("StartCall presents the caller ID asked for, else the nearest", async () => {
  // Asked for: London, for a customer in New York.
  const asked = await client.startCall(
    { phoneNumber: "+12125559999", callerId: "+442079460000" },
    as(AGENT),
  );
  assert.equal(asked.outcome, StartCallOutcome.STARTED);
  assert.equal(asked.interaction.callerId, "+442079460000");
  // Empty: local presence picks Los Angeles' number for a customer in Los Angeles.
  const nearest = await client.startCall({ phoneNumber: "+13105559999" }, as(AGENT));
  assert.equal(nearest.interaction.callerId, "+13105550100");
  const fetched = await client.getInteraction({ interactionId: nearest.interactionId }, as(AGENT));
  assert.equal(fetched.callerId, "+13105550100");
  // Ended, so that the server's graceful stop has no live call to wait for.
  for (const { interactionId } of [asked, nearest]) {
    await client.endCall({ interactionId }, as(AGENT));
  }
});

test("a caller ID not the agent's is PERMISSION_DENIED, CALLER_ID_NOT_ALLOWED", async () => {
  await assert.rejects(
    // The * line's number is not ts-agent's: it has a line of its own.
    client.startCall({ phoneNumber: "+12125559999", callerId: "+18005550100" }, as(AGENT)),
    (err) => {
      assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
      assert.equal(err.code, Code.PermissionDenied);
      assert.deepEqual(err.details.map((d) => d.desc?.typeName ?? d.type), ["google.rpc.ErrorInfo"]);
      assert.equal(errorInfoReason(err.details[0]), "CALLER_ID_NOT_ALLOWED");
      // Refusals name a number by its last 4 digits only.
      assert.ok(!err.rawMessage.includes("+18005550100"), err.rawMessage);
      return true;
    },
  );
});

test("a malformed caller ID is INVALID_ARGUMENT on caller_id", async () => {
  await assert.rejects(
    client.startCall({ phoneNumber: "+12125559999", callerId: "not a number" }, as(AGENT)),
    (err) => {
      assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
      assert.equal(err.code, Code.InvalidArgument);
      assert.match(err.rawMessage, /^caller_id: /);
      assert.deepEqual(err.details.map((d) => d.desc?.typeName ?? d.type), ["google.rpc.BadRequest"]);
      return true;
    },
  );
});
