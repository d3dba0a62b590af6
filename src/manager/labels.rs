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

/// The `state` labels of `calldesk_interactions`: the states the call manager holds.
pub const HELD_STATES: [InteractionState; 4] = [
    InteractionState::DeliveryPending,
    InteractionState::Delivered,
    InteractionState::Hold,
    InteractionState::WrapUp,
];

/// Every `outcome` label of `calldesk_start_calls_total`, exposed at zero from the start so
/// that an alert on a rate sees the first of each (`server::metrics`).
pub const START_OUTCOMES: [&str; 17] = [
    "started",
    "deferred",
    "replayed",
    "request_id_reused",
    "not_found",
    "invalid_state",
    "too_many_active_calls",
    "originate_timeout",
    "store_unavailable",
    "shutting_down",
    "switch_refused",
    "dialpad_empty",
    "forwarded",
    "outside_calling_hours",
    "do_not_call",
    "trunk_busy",
    "caller_id_not_allowed",
];

/// Every `reason` label of `calldesk_compliance_refusals_total` (the calls `--dnc` and
/// `--calling-hours` refused): the refusals' `outcome` labels.
pub const COMPLIANCE_REFUSALS: [&str; 2] = ["do_not_call", "outside_calling_hours"];

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
        CallError::OutsideCallingHours(_) => "outside_calling_hours",
        CallError::DoNotCall { .. } => "do_not_call",
        CallError::TrunkBusy { .. } => "trunk_busy",
        CallError::CallerIdNotAllowed { .. } => "caller_id_not_allowed",
        CallError::ConferenceNotConfigured => "conference_not_configured",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::{HoursRefusal, PeerStatus},
        store::StoreFault,
    };

    #[test]
    fn every_start_outcome_is_listed() {
        let errors = [
            CallError::NotFound,
            CallError::InvalidState {
                operation: "HoldCall",
                state: InteractionState::Hold,
            },
            CallError::TooManyActiveCalls { limit: 4 },
            CallError::OriginateTimeout,
            CallError::RequestIdReused,
            CallError::StoreUnavailable,
            CallError::StoreFault(StoreFault::DiskFull),
            CallError::ShuttingDown,
            CallError::DialpadEmpty,
            CallError::SwitchRefused {
                operation: "HoldCall",
                detail: String::new(),
            },
            CallError::OwnerUnavailable {
                detail: String::new(),
            },
            CallError::Peer(PeerStatus {
                code: 14,
                message: String::new(),
                details: Default::default(),
            }),
            CallError::OutsideCallingHours(Box::new(HoursRefusal {
                region: "US".into(),
                zones: vec!["America/New_York".into()],
                local_times: vec!["2026-07-15T21:30:00-04:00".into()],
                next_allowed: None,
            })),
            CallError::DoNotCall {
                list: "dnc.txt".into(),
            },
            CallError::TrunkBusy {
                retry_after: std::time::Duration::from_secs(1),
            },
            CallError::CallerIdNotAllowed {
                caller_id: "+12025550100".into(),
            },
        ];
        let mut labels: Vec<&str> = errors.iter().map(start_error_outcome).collect();
        for outcome in [
            proto::StartCallOutcome::Started,
            proto::StartCallOutcome::Deferred,
        ] {
            labels.push(start_outcome(&proto::StartCallResponse {
                outcome: outcome as i32,
                ..Default::default()
            }));
        }
        // Answered from an idempotency key rather than by dialing.
        labels.extend(["replayed", "request_id_reused"]);
        for label in &labels {
            assert!(START_OUTCOMES.contains(label), "{label} is not listed");
        }
        for reason in COMPLIANCE_REFUSALS {
            assert!(
                START_OUTCOMES.contains(&reason),
                "{reason} is not an outcome"
            );
        }
        for listed in START_OUTCOMES {
            assert!(
                labels.contains(&listed),
                "{listed} is listed but never used"
            );
        }
    }
}
