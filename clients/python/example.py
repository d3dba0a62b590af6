"""Start a call on calldesk, follow it to the end, and show a NOT_FOUND.

    pip install ./clients/python
    python clients/python/example.py --addr 127.0.0.1:50051 --agent agent-7
"""

from __future__ import annotations

import argparse

import grpc

from calldesk.v1 import calldesk_pb2 as pb
from calldesk.v1 import calldesk_pb2_grpc as rpc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051", help="calldesk's gRPC address")
    parser.add_argument("--agent", default="agent-7", help="sent as x-agent-id (development mode)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each call")
    args = parser.parse_args()
    timeout: float = args.timeout

    # With --auth-tokens, send ("authorization", "Bearer <token>") instead.
    md = (("x-agent-id", str(args.agent)),)
    with grpc.insecure_channel(args.addr) as channel:
        stub = rpc.InteractionServiceStub(channel)
        started = stub.StartCall(
            pb.StartCallRequest(phone_number="+12025550100"), metadata=md, timeout=timeout
        )
        iid = started.interaction_id
        print("started", iid)
        events = stub.WatchInteraction(
            pb.WatchInteractionRequest(interaction_id=iid, after_sequence=0),
            metadata=md,
            timeout=timeout,
        )
        for ev in events:  # ends right after the event that enters COMPLETED
            state = pb.InteractionState.Name(ev.state)
            print("event", ev.sequence, state, pb.CallProgress.Name(ev.progress))
            if ev.state == pb.INTERACTION_STATE_DELIVERED:
                stub.EndCall(pb.EndCallRequest(interaction_id=iid), metadata=md, timeout=timeout)
            elif ev.state == pb.INTERACTION_STATE_WRAP_UP:
                done = pb.CompleteInteractionRequest(interaction_id=iid, disposition="done")
                stub.CompleteInteraction(done, metadata=md, timeout=timeout)

        try:
            stub.GetInteraction(
                pb.GetInteractionRequest(interaction_id="no-such-interaction"),
                metadata=md,
                timeout=timeout,
            )
        except grpc.RpcError as err:
            print("unknown interaction:", err.code().name, err.details())
        else:
            raise SystemExit("GetInteraction of an unknown id succeeded")


if __name__ == "__main__":
    main()
