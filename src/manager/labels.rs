//! The label values of the metrics the call manager records (`calldesk_interactions`,
//! `calldesk_start_calls_total`), kept beside the code that records them so that a new state
//! or error cannot be added without naming its label.

use crate::{
    domain::{CallError, InteractionState},
    proto,
};

/// The `state` label of `calldesk_interactions`.
pub fn state_label(state: InteractionState) -> &'static str {
    match state {
        InteractionState::DeliveryPending => "DELIVERY_PENDING",
        InteractionState::Delivered => "DELIVERED",
        InteractionState::Hold => "HOLD",
        InteractionState::WrapUp => "WRAP_UP",
        InteractionState::Completed => "COMPLETED",
    }
}

/// The `outcome` label of `calldesk_start_calls_total` for a successful StartCall.
pub fn start_outcome(response: &proto::StartCallResponse) -> &'static str {
    if response.outcome == proto::StartCallOutcome::Deferred as i32 {
        "deferred"
    } else {
        "started"
    }
}

/// The `outcome` label of `calldesk_start_calls_total` for a failed StartCall.
pub fn start_error_outcome(error: &CallError) -> &'static str {
    match error {
        CallError::NotFound => "not_found",
        CallError::InvalidState { .. } => "invalid_state",
        CallError::TooManyActiveCalls { .. } => "too_many_active_calls",
        CallError::OriginateTimeout => "originate_timeout",
        CallError::RequestIdReused => "request_id_reused",
        CallError::StoreUnavailable | CallError::StoreFault(_) => "store_unavailable",
        CallError::ShuttingDown => "shutting_down",
        CallError::SwitchRefused { .. } => "switch_refused",
        CallError::DialpadEmpty => "dialpad_empty",
        CallError::OwnerUnavailable { .. } | CallError::Peer(_) => "forwarded",
    }
}
