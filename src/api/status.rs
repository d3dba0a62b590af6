//! The one mapping from the call manager's errors to the contract's gRPC statuses.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{state_name, CallError};

/// The `domain` of every ErrorInfo calldesk sends.
pub const ERROR_DOMAIN: &str = "calldesk";

fn with_reason(
    code: Code,
    message: String,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

impl From<CallError> for Status {
    fn from(error: CallError) -> Self {
        let message = error.to_string();
        match error {
            CallError::NotFound => Status::not_found(message),
            CallError::InvalidState { operation, state } => with_reason(
                Code::FailedPrecondition,
                message,
                "INVALID_STATE",
                HashMap::from([
                    ("operation".to_owned(), operation.to_owned()),
                    ("state".to_owned(), state_name(state).to_owned()),
                ]),
            ),
            CallError::TooManyActiveCalls { limit } => with_reason(
                Code::ResourceExhausted,
                message,
                "TOO_MANY_ACTIVE_CALLS",
                HashMap::from([("max_active_calls".to_owned(), limit.to_string())]),
            ),
            // Bright Pattern's error text, exactly.
            CallError::OriginateTimeout => with_reason(
                Code::DeadlineExceeded,
                message,
                "ORIGINATE_TIMEOUT",
                HashMap::new(),
            ),
            CallError::RequestIdReused => super::validate::bad_field("request_id", message),
            CallError::StoreUnavailable | CallError::ShuttingDown => Status::unavailable(message),
            CallError::DialpadEmpty => with_reason(
                Code::FailedPrecondition,
                message,
                "DIALPAD_EMPTY",
                HashMap::new(),
            ),
            CallError::StoreFault(fault) => {
                with_reason(Code::Unavailable, message, fault.reason(), HashMap::new())
            }
            CallError::SwitchRefused { operation, detail } => with_reason(
                Code::FailedPrecondition,
                message,
                "SWITCH_REFUSED",
                HashMap::from([
                    ("operation".to_owned(), operation.to_owned()),
                    ("detail".to_owned(), detail),
                ]),
            ),
            CallError::OwnerUnavailable { .. } => with_reason(
                Code::Unavailable,
                message,
                "OWNER_UNAVAILABLE",
                HashMap::new(),
            ),
            CallError::OutsideCallingHours(refusal) => {
                let mut metadata = HashMap::from([
                    ("region".to_owned(), refusal.region.clone()),
                    ("zones".to_owned(), refusal.zones.join(",")),
                    ("local_time".to_owned(), refusal.local_times.join(",")),
                ]);
                if let Some(next) = &refusal.next_allowed {
                    metadata.insert("next_allowed_time".to_owned(), next.clone());
                }
                with_reason(
                    Code::FailedPrecondition,
                    message,
                    "OUTSIDE_CALLING_HOURS",
                    metadata,
                )
            }
            CallError::DoNotCall { list } => with_reason(
                Code::FailedPrecondition,
                message,
                "DO_NOT_CALL",
                HashMap::from([("list".to_owned(), list)]),
            ),
            CallError::TrunkBusy { retry_after } => {
                let mut details =
                    ErrorDetails::with_error_info("TRUNK_BUSY", ERROR_DOMAIN, HashMap::new());
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            CallError::CallerIdNotAllowed { .. } => with_reason(
                Code::PermissionDenied,
                message,
                "CALLER_ID_NOT_ALLOWED",
                HashMap::new(),
            ),
            CallError::ConferenceNotConfigured => with_reason(
                Code::FailedPrecondition,
                message,
                "CONFERENCE_NOT_CONFIGURED",
                HashMap::from([("flag".to_owned(), "--sip-conference-uri".to_owned())]),
            ),
            CallError::Peer(peer) => {
                Status::with_details(Code::from_i32(peer.code), peer.message, peer.details)
            }
        }
    }
}
