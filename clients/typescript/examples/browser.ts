// The same client in a browser, over gRPC-Web (the server or a proxy in front of it must speak
// gRPC-Web). Only the transport differs from examples/node.ts.
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { InteractionService, type InteractionEvent } from "@calldesk/client";

export function watchAgent(baseUrl: string, token: string, onEvent: (ev: InteractionEvent) => void): AbortController {
  const client = createClient(InteractionService, createGrpcWebTransport({ baseUrl }));
  const abort = new AbortController();
  void (async () => {
    try {
      const options = { headers: { authorization: `Bearer ${token}` }, signal: abort.signal };
      for await (const ev of client.watchInteractions({}, options)) onEvent(ev);
    } catch (err) {
      if (!abort.signal.aborted) console.error(ConnectError.from(err).code, err);
    }
  })();
  return abort;
}
