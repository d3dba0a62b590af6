"""Cross-language test: a Python grpcio client against the real `calldesk serve` binary.

No sleeps: every call and stream has a deadline, and events are awaited on the watch stream.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

CALL_TIMEOUT_S = 10
WATCH_TIMEOUT_S = 30


def _next_event(stream):
    try:
        return next(stream)
    except StopIteration:
        pytest.fail(f"watch stream ended early with {stream.code()}: {stream.details()}")


def _assert_gapless(events, first=1):
    assert [e.sequence for e in events] == list(range(first, first + len(events)))


def test_call_lifecycle_is_streamed_in_order(pb, stub, agent_metadata):
    m = pb.pb2
    request = m.StartCallRequest(
        phone_number="+12025550100",
        initial_object=m.AssociatedObject(
            id="003XX",
            type="contact",
            display_name="Ann Lee",
            display_type="Contact",
            custom_fields={"tier": "gold", "source": "python"},
        ),
    )
    started = stub.StartCall(request, metadata=agent_metadata, timeout=CALL_TIMEOUT_S)
    assert started.outcome == m.START_CALL_OUTCOME_STARTED
    assert started.HasField("interaction_id")
    iid = started.interaction_id
    assert iid
    created = started.interaction
    assert created.id == iid
    assert created.agent_id == "py-agent"
    assert created.phone_number == "+12025550100"
    assert created.direction == m.CALL_DIRECTION_OUTBOUND
    assert created.origination == m.ORIGINATION_INTEGRATION_API
    assert created.associated_object.display_name == "Ann Lee"
    assert dict(created.associated_object.custom_fields) == {"tier": "gold", "source": "python"}

    watch = stub.WatchInteraction(
        m.WatchInteractionRequest(interaction_id=iid, after_sequence=0),
        metadata=agent_metadata,
        timeout=WATCH_TIMEOUT_S,
    )
    try:
        # Dialing, ringing, then the simulated switch answers.
        events = []
        while True:
            event = _next_event(watch)
            events.append(event)
            if event.state != m.INTERACTION_STATE_DELIVERY_PENDING:
                break
        assert events[-1].state == m.INTERACTION_STATE_DELIVERED
        assert events[-1].progress == m.CALL_PROGRESS_CONNECTED
        assert [e.progress for e in events] == [
            m.CALL_PROGRESS_DIALING,
            m.CALL_PROGRESS_RINGING,
            m.CALL_PROGRESS_CONNECTED,
        ]
        assert events[0].previous_state == m.INTERACTION_STATE_UNSPECIFIED
        answered_at = events[-1].sequence

        ended = stub.EndCall(
            m.EndCallRequest(interaction_id=iid), metadata=agent_metadata, timeout=CALL_TIMEOUT_S
        )
        assert ended.state == m.INTERACTION_STATE_WRAP_UP
        assert ended.end_reason == m.END_REASON_AGENT_HANGUP

        completed = stub.CompleteInteraction(
            m.CompleteInteractionRequest(interaction_id=iid, disposition="sale", notes="from python"),
            metadata=agent_metadata,
            timeout=CALL_TIMEOUT_S,
        )
        assert completed.state == m.INTERACTION_STATE_COMPLETED
        assert completed.disposition == "sale"

        tail = list(watch)  # ends right after COMPLETED, or the deadline fails it
        assert watch.code() == grpc.StatusCode.OK, watch.details()
    finally:
        watch.cancel()

    assert [e.state for e in tail] == [m.INTERACTION_STATE_WRAP_UP, m.INTERACTION_STATE_COMPLETED]
    events += tail
    _assert_gapless(events)
    for before, after in zip(events, events[1:]):
        assert after.previous_state == before.state
    for event in events:
        assert event.interaction_id == iid
        assert event.interaction.id == iid
        assert event.interaction.sequence == event.sequence
        assert event.HasField("time")

    last = events[-1].interaction
    assert last.state == m.INTERACTION_STATE_COMPLETED
    assert last.progress == m.CALL_PROGRESS_ENDED
    assert last.end_reason == m.END_REASON_AGENT_HANGUP
    assert last.disposition == "sale"
    assert last.notes == "from python"
    for field in ("create_time", "connect_time", "end_time", "complete_time", "talk_duration"):
        assert last.HasField(field), field

    # Resuming from the last sequence seen replays exactly the rest, then ends OK.
    resumed = stub.WatchInteraction(
        m.WatchInteractionRequest(interaction_id=iid, after_sequence=answered_at),
        metadata=agent_metadata,
        timeout=WATCH_TIMEOUT_S,
    )
    replay = list(resumed)
    assert resumed.code() == grpc.StatusCode.OK, resumed.details()
    assert [e.sequence for e in replay] == [e.sequence for e in tail]
    assert [e.state for e in replay] == [e.state for e in tail]

    # Already past COMPLETED: the stream ends OK at once.
    finished = stub.WatchInteraction(
        m.WatchInteractionRequest(interaction_id=iid, after_sequence=events[-1].sequence),
        metadata=agent_metadata,
        timeout=WATCH_TIMEOUT_S,
    )
    assert list(finished) == []
    assert finished.code() == grpc.StatusCode.OK, finished.details()


def test_invalid_phone_number_is_a_bad_request(pb, stub, agent_metadata):
    m = pb.pb2
    with pytest.raises(grpc.RpcError) as raised:
        stub.StartCall(
            m.StartCallRequest(phone_number="abc"), metadata=agent_metadata, timeout=CALL_TIMEOUT_S
        )
    err = raised.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()

    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    violations = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
    assert violations, f"no google.rpc.BadRequest detail in {list(status.details)}"
    assert "phone_number" in [v.field for v in violations]
