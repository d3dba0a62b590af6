// @calldesk/client against the real calldesk binary, over gRPC on HTTP/2
// (@connectrpc/connect-node's createGrpcTransport). Run: node --test tests/
//
// No sleeps: every unary call has a timeout and the watch stream has an abort deadline; the
// events are awaited on the stream.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { create, toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  CallDirection,
  CallProgress,
  EndReason,
  InteractionSchema,
  InteractionService,
  InteractionState,
  StartCallOutcome,
  StartCallRequestSchema,
} from "@calldesk/client";
import { startServer } from "./server.mjs";

const CALL_TIMEOUT_MS = 10_000;
const WATCH_TIMEOUT_MS = 30_000;
// Development mode: the agent is named by the x-agent-id metadata.
const headers = { "x-agent-id": "ts-agent" };

let server;
let client;

before(async () => {
  server = await startServer();
  client = createClient(InteractionService, createGrpcTransport({ baseUrl: server.baseUrl }));
});

after(async () => {
  await server?.stop();
});

/** Reads the next event, or fails if the stream ended first. */
async function nextEvent(iterator) {
  const { value, done } = await iterator.next();
  assert.ok(!done, "the watch stream ended early");
  return value;
}

test("starts, watches and ends a call over HTTP/2", async () => {
  const request = create(StartCallRequestSchema, {
    phoneNumber: "+12025550100",
    initialObject: {
      id: "003XX",
      type: "contact",
      displayName: "Ann Lee",
      displayType: "Contact",
      customFields: { tier: "gold", source: "typescript" },
    },
  });
  const started = await client.startCall(request, { headers, timeoutMs: CALL_TIMEOUT_MS });
  assert.equal(started.outcome, StartCallOutcome.STARTED);
  const iid = started.interactionId;
  assert.ok(iid, "StartCall returns the interaction id");
  const created = started.interaction;
  assert.equal(created.id, iid);
  assert.equal(created.agentId, "ts-agent");
  assert.equal(created.phoneNumber, "+12025550100");
  assert.equal(created.direction, CallDirection.OUTBOUND);
  assert.deepEqual(created.associatedObject.customFields, { tier: "gold", source: "typescript" });
  // proto3 JSON carries Bright Pattern's field names.
  const json = toJson(InteractionSchema, created);
  assert.equal(json.phoneNumber, "+12025550100");
  assert.equal(json.associatedObject.displayName, "Ann Lee");

  const watching = new AbortController();
  const deadline = setTimeout(() => watching.abort(new Error("watch deadline")), WATCH_TIMEOUT_MS);
  try {
    const stream = client.watchInteraction(
      { interactionId: iid, afterSequence: 0n },
      { headers, signal: watching.signal },
    )[Symbol.asyncIterator]();

    // Dialing, ringing, then the simulated switch answers.
    const events = [];
    do {
      events.push(await nextEvent(stream));
    } while (events.at(-1).state === InteractionState.DELIVERY_PENDING);
    assert.deepEqual(
      events.map((e) => e.progress),
      [CallProgress.DIALING, CallProgress.RINGING, CallProgress.CONNECTED],
    );
    assert.equal(events.at(-1).state, InteractionState.DELIVERED);
    assert.equal(events[0].previousState, InteractionState.UNSPECIFIED);
    assert.equal(typeof events[0].sequence, "bigint", "uint64 sequences are bigints");

    const ended = await client.endCall({ interactionId: iid }, { headers, timeoutMs: CALL_TIMEOUT_MS });
    assert.equal(ended.state, InteractionState.WRAP_UP);
    assert.equal(ended.endReason, EndReason.AGENT_HANGUP);
    const wrapUp = await nextEvent(stream);
    events.push(wrapUp);
    assert.equal(wrapUp.state, InteractionState.WRAP_UP);
    assert.equal(wrapUp.previousState, InteractionState.DELIVERED);

    const completed = await client.completeInteraction(
      { interactionId: iid, disposition: "sale", notes: "from TypeScript" },
      { headers, timeoutMs: CALL_TIMEOUT_MS },
    );
    assert.equal(completed.state, InteractionState.COMPLETED);
    const last = await nextEvent(stream);
    events.push(last);
    assert.equal(last.state, InteractionState.COMPLETED);
    assert.equal(last.interaction.disposition, "sale");

    // Gapless sequences 1, 2, 3…, and the stream ends with OK right after COMPLETED.
    assert.deepEqual(events.map((e) => e.sequence), events.map((_, i) => BigInt(i + 1)));
    assert.deepEqual(await stream.next(), { value: undefined, done: true });
  } finally {
    clearTimeout(deadline);
    watching.abort();
  }

  const fetched = await client.getInteraction({ interactionId: iid }, { headers, timeoutMs: CALL_TIMEOUT_MS });
  assert.equal(fetched.state, InteractionState.COMPLETED);
  assert.equal(fetched.notes, "from TypeScript");
});

test("an unknown interaction is NOT_FOUND", async () => {
  await assert.rejects(
    client.getInteraction({ interactionId: "no-such-interaction" }, { headers, timeoutMs: CALL_TIMEOUT_MS }),
    (err) => {
      assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
      assert.equal(err.code, Code.NotFound);
      assert.equal(err.rawMessage, "interaction not found");
      return true;
    },
  );
});

test("a malformed number is INVALID_ARGUMENT with a google.rpc.BadRequest", async () => {
  await assert.rejects(
    client.startCall({ phoneNumber: "not a number" }, { headers, timeoutMs: CALL_TIMEOUT_MS }),
    (err) => {
      assert.ok(err instanceof ConnectError, `expected a ConnectError, got ${err}`);
      assert.equal(err.code, Code.InvalidArgument);
      assert.match(err.rawMessage, /^phone_number: /);
      assert.deepEqual(err.details.map((d) => d.desc?.typeName ?? d.type), ["google.rpc.BadRequest"]);
      return true;
    },
  );
});
