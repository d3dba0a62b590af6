//! `calldesk watch --until VALUE`: what a watcher waits for, and whether an event reaches it,
//! passes it by, or leaves it still to come.
//!
//! A script that must act once a call is connected (hang up, put it on hold) cannot act right
//! after `call`: the call is still DIALING. `watch ID --until CONNECTED` prints the events up to
//! the first one that is CONNECTED and exits 0. The lifecycle only goes forward (docs/api.md §2;
//! the one way back is HOLD to DELIVERED, HELD to CONNECTED), so an event further along than the
//! value says it will never come: a busy call is ENDED without having been CONNECTED. The watch
//! then ends at once with an error, instead of waiting for a COMPLETED that a call in WRAP_UP
//! may never reach.

use std::fmt;

use crate::proto::{CallProgress, InteractionEvent, InteractionState};

/// A value of `--until`: an interaction state or a call progress (their names do not overlap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    State(InteractionState),
    Progress(CallProgress),
}

/// What one event says about the value awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The event is at the value: stop, with success.
    Reached,
    /// The event is further along: the value will not come.
    Passed,
    /// The value may still come.
    Wait,
}

impl Until {
    /// What `event` says about this value.
    pub fn verdict(self, event: &InteractionEvent) -> Verdict {
        let (at, target, reached) = match self {
            Until::State(target) => (
                state_rank(event.state()),
                state_rank(target),
                event.state() == target,
            ),
            Until::Progress(target) => (
                progress_rank(event.progress()),
                progress_rank(target),
                event.progress() == target,
            ),
        };
        match (at, target) {
            _ if reached => Verdict::Reached,
            (Some(at), Some(target)) if at > target => Verdict::Passed,
            _ => Verdict::Wait,
        }
    }
}

/// How far along the lifecycle a state is; DELIVERED and HOLD alternate, so they rank alike.
fn state_rank(state: InteractionState) -> Option<u8> {
    match state {
        InteractionState::Unspecified => None,
        InteractionState::DeliveryPending => Some(0),
        InteractionState::Delivered | InteractionState::Hold => Some(1),
        InteractionState::WrapUp => Some(2),
        InteractionState::Completed => Some(3),
    }
}

/// How far along a call a progress is; CONNECTED and HELD alternate, so they rank alike. A call
/// may go from DIALING to CONNECTED without RINGING: it has then passed RINGING.
fn progress_rank(progress: CallProgress) -> Option<u8> {
    match progress {
        CallProgress::Unspecified => None,
        CallProgress::Dialing => Some(0),
        CallProgress::Ringing => Some(1),
        CallProgress::Connected
        | CallProgress::Held
        | CallProgress::Transferring
        | CallProgress::Consulting
        | CallProgress::TransferFailed
        | CallProgress::Conferenced => Some(2),
        CallProgress::Ended => Some(3),
    }
}

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Until::State(s) => s.as_str_name().trim_start_matches("INTERACTION_STATE_"),
            Until::Progress(p) => p.as_str_name().trim_start_matches("CALL_PROGRESS_"),
        };
        f.write_str(name)
    }
}

/// Parses `--until`: a state (`DELIVERED`, `wrap-up`, `INTERACTION_STATE_HOLD`) or a progress
/// (`CONNECTED`, `ringing`, `CALL_PROGRESS_ENDED`).
pub fn parse_until(text: &str) -> Result<Until, String> {
    let upper = text.trim().to_ascii_uppercase().replace('-', "_");
    let bare = upper
        .strip_prefix("INTERACTION_STATE_")
        .or_else(|| upper.strip_prefix("CALL_PROGRESS_"))
        .unwrap_or(&upper);
    let state = InteractionState::from_str_name(&format!("INTERACTION_STATE_{bare}"));
    let progress = CallProgress::from_str_name(&format!("CALL_PROGRESS_{bare}"));
    match (state, progress) {
        (Some(s), _) if s != InteractionState::Unspecified => Ok(Until::State(s)),
        (_, Some(p)) if p != CallProgress::Unspecified => Ok(Until::Progress(p)),
        _ => Err(format!(
            "unknown state or progress {text:?}; expected one of DIALING, RINGING, CONNECTED, \
             HELD, ENDED (the call) or DELIVERY_PENDING, DELIVERED, HOLD, WRAP_UP, COMPLETED \
             (the interaction)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: InteractionState, progress: CallProgress) -> InteractionEvent {
        InteractionEvent {
            state: state as i32,
            progress: progress as i32,
            ..Default::default()
        }
    }

    #[test]
    fn names_parse_in_any_spelling() {
        let connected = Ok(Until::Progress(CallProgress::Connected));
        assert_eq!(parse_until("CONNECTED"), connected);
        assert_eq!(parse_until("connected"), connected);
        assert_eq!(parse_until("CALL_PROGRESS_CONNECTED"), connected);
        assert_eq!(
            parse_until("wrap-up"),
            Ok(Until::State(InteractionState::WrapUp))
        );
        assert_eq!(
            parse_until("INTERACTION_STATE_HOLD"),
            Ok(Until::State(InteractionState::Hold))
        );
        for bad in ["", "UNSPECIFIED", "answered", "CALL_PROGRESS_DELIVERED_X"] {
            assert!(parse_until(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Until::Progress(CallProgress::Connected).to_string(),
            "CONNECTED"
        );
        assert_eq!(
            Until::State(InteractionState::WrapUp).to_string(),
            "WRAP_UP"
        );
    }

    #[test]
    fn an_answered_call_reaches_connected_and_a_busy_one_passes_it() {
        use CallProgress as P;
        use InteractionState as S;
        let until = Until::Progress(P::Connected);
        assert_eq!(
            until.verdict(&event(S::DeliveryPending, P::Dialing)),
            Verdict::Wait
        );
        assert_eq!(
            until.verdict(&event(S::DeliveryPending, P::Ringing)),
            Verdict::Wait
        );
        assert_eq!(
            until.verdict(&event(S::Delivered, P::Connected)),
            Verdict::Reached
        );
        // Held first (a hold before the watch began): CONNECTED comes back with a resume.
        assert_eq!(until.verdict(&event(S::Hold, P::Held)), Verdict::Wait);
        assert_eq!(until.verdict(&event(S::WrapUp, P::Ended)), Verdict::Passed);
    }

    #[test]
    fn a_call_that_skips_ringing_has_passed_it() {
        use CallProgress as P;
        use InteractionState as S;
        let until = Until::Progress(P::Ringing);
        assert_eq!(
            until.verdict(&event(S::DeliveryPending, P::Dialing)),
            Verdict::Wait
        );
        assert_eq!(
            until.verdict(&event(S::Delivered, P::Connected)),
            Verdict::Passed
        );
    }

    #[test]
    fn states_wait_reach_and_pass_in_lifecycle_order() {
        use CallProgress as P;
        use InteractionState as S;
        let until = Until::State(S::WrapUp);
        assert_eq!(
            until.verdict(&event(S::Delivered, P::Connected)),
            Verdict::Wait
        );
        assert_eq!(until.verdict(&event(S::WrapUp, P::Ended)), Verdict::Reached);
        let until = Until::State(S::Delivered);
        assert_eq!(until.verdict(&event(S::Hold, P::Held)), Verdict::Wait);
        assert_eq!(
            until.verdict(&event(S::Completed, P::Ended)),
            Verdict::Passed
        );
        assert_eq!(
            Until::State(S::Completed).verdict(&event(S::Completed, P::Ended)),
            Verdict::Reached
        );
        // An event without a state or progress (a newer server's value) decides nothing.
        let unknown = event(S::Unspecified, P::Unspecified);
        assert_eq!(until.verdict(&unknown), Verdict::Wait);
    }
}
