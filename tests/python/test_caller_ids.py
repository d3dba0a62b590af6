"""The calldesk-client package's caller IDs (docs/api.md §3, "Caller IDs") against the real
binary started with `--caller-ids` (conftest.CALLER_IDS): ListCallerIds, StartCall with a
caller_id of the agent's, an empty one (local presence), one outside the agent's list and a
malformed one, each with its google.rpc detail."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import AGENT_ID, CALLER_IDS

CALL_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def caller_ids_stub(pb, caller_ids_address):
    with grpc.insecure_channel(caller_ids_address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield pb.pb2_grpc.InteractionServiceStub(channel)


def _start(pb, stub, phone_number, caller_id="", agent=AGENT_ID):
    request = pb.pb2.StartCallRequest(phone_number=phone_number, caller_id=caller_id)
    return stub.StartCall(request, metadata=(("x-agent-id", agent),), timeout=CALL_TIMEOUT_S)


def _details(err, message_type):
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    found = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def test_list_caller_ids_names_the_agents_own_line_else_the_star_line(pb, caller_ids_stub):
    listed = caller_ids_stub.ListCallerIds(
        pb.pb2.ListCallerIdsRequest(), metadata=(("x-agent-id", AGENT_ID),), timeout=CALL_TIMEOUT_S
    )
    assert list(listed.caller_ids) == CALLER_IDS[AGENT_ID]
    assert listed.default_caller_id == CALLER_IDS[AGENT_ID][0]

    others = caller_ids_stub.ListCallerIds(
        pb.pb2.ListCallerIdsRequest(), metadata=(("x-agent-id", "py-other"),), timeout=CALL_TIMEOUT_S
    )
    assert list(others.caller_ids) == CALLER_IDS["*"]
    assert others.default_caller_id == CALLER_IDS["*"][0]


def test_start_call_presents_the_caller_id_asked_for_else_the_nearest(pb, caller_ids_stub):
    # Asked for: London, for a customer in New York.
    started = _start(pb, caller_ids_stub, "+12125559999", caller_id="+442079460000")
    assert started.outcome == pb.pb2.START_CALL_OUTCOME_STARTED
    assert started.interaction.caller_id == "+442079460000"
    # Empty: local presence picks Los Angeles' number for a customer in Los Angeles, and the
    # interaction records it.
    nearest = _start(pb, caller_ids_stub, "+13105559999")
    assert nearest.interaction.caller_id == "+13105550100"
    fetched = caller_ids_stub.GetInteraction(
        pb.pb2.GetInteractionRequest(interaction_id=nearest.interaction_id),
        metadata=(("x-agent-id", AGENT_ID),),
        timeout=CALL_TIMEOUT_S,
    )
    assert fetched.caller_id == "+13105550100"
    for interaction_id in (started.interaction_id, nearest.interaction_id):
        caller_ids_stub.EndCall(
            pb.pb2.EndCallRequest(interaction_id=interaction_id),
            metadata=(("x-agent-id", AGENT_ID),),
            timeout=CALL_TIMEOUT_S,
        )


def test_a_caller_id_not_the_agents_is_permission_denied(pb, caller_ids_stub):
    with pytest.raises(grpc.RpcError) as raised:
        # The `*` line's number is not py-agent's: it has a line of its own.
        _start(pb, caller_ids_stub, "+12125559999", caller_id="+18005550100")
    err = raised.value
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    infos = _details(err, error_details_pb2.ErrorInfo)
    assert [info.reason for info in infos] == ["CALLER_ID_NOT_ALLOWED"]
    # Refusals name a number by its last 4 digits only.
    assert "+18005550100" not in err.details()


def test_a_malformed_caller_id_is_a_bad_request_on_caller_id(pb, caller_ids_stub):
    with pytest.raises(grpc.RpcError) as raised:
        _start(pb, caller_ids_stub, "+12125559999", caller_id="not a number")
    err = raised.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    violations = [
        v.field for b in _details(err, error_details_pb2.BadRequest) for v in b.field_violations
    ]
    assert violations == ["caller_id"]
