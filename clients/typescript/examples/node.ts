// Start a call and follow it to the end, from Node over gRPC (HTTP/2).
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { CallProgress, InteractionService, InteractionState } from "@calldesk/client";

const client = createClient(InteractionService, createGrpcTransport({ baseUrl: "http://127.0.0.1:50051" }));
const headers = { "x-agent-id": "agent-7" }; // with --auth-tokens: { authorization: "Bearer …" }

const res = await client.startCall({ phoneNumber: "+12025550100" }, { headers });
for await (const ev of client.watchInteraction({ interactionId: res.interactionId, afterSequence: 0n }, { headers })) {
  console.log(ev.sequence, InteractionState[ev.state], CallProgress[ev.progress]);
  if (ev.state === InteractionState.DELIVERED) {
    await client.endCall({ interactionId: ev.interactionId }, { headers });
  } else if (ev.state === InteractionState.WRAP_UP) {
    await client.completeInteraction({ interactionId: ev.interactionId, disposition: "done" }, { headers });
  }
} // the stream ends after the event that enters COMPLETED
