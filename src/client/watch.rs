//! `calldesk watch` and `watch-all`: printing a stream's events, resuming from the last
//! sequence printed when the server ends the stream with a retryable code, and stopping at the
//! value of `--until`.

use std::{
    io::Write,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use tonic::{Code, Streaming};

use super::{
    connect::Client,
    errors::{code_name, CliError},
    output::print_event,
    until::{Until, Verdict},
};
use crate::proto::{InteractionEvent, WatchInteractionRequest};

/// The first pause before reconnecting; it doubles after each fruitless attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What `watch` follows, and for how long it keeps trying when the stream breaks.
pub(super) struct Resume {
    pub id: String,
    /// Print only events after this sequence.
    pub after: u64,
    /// How long attempts may go on without bringing a new event.
    pub reconnect_for: Duration,
    /// `--until`: stop at the first event at this value (success) or past it (failure).
    pub until: Option<Until>,
}

/// `watch`: prints every event after `resume.after` until the stream ends with the
/// interaction COMPLETED, or, with `resume.until`, until the first event at that value (`Ok`)
/// or past it (`NotReached`). When the stream breaks with a code that says "try again"
/// (UNAVAILABLE: a restart, a dropped connection, shutdown; RESOURCE_EXHAUSTED: a watcher too
/// slow to keep up), it reconnects with capped exponential backoff and resumes after the last
/// sequence printed, as the contract prescribes. It gives up once `reconnect_for` has passed
/// without a new event.
pub(super) async fn watch(
    client: &mut Client,
    out: &mut dyn Write,
    json: bool,
    resume: Resume,
) -> Result<(), CliError> {
    let mut last = resume.after;
    let mut backoff = FIRST_BACKOFF;
    let mut give_up_at: Option<Instant> = None;
    loop {
        let request = WatchInteractionRequest {
            interaction_id: resume.id.clone(),
            after_sequence: last,
        };
        let before = last;
        let mut stopped: Option<Result<(), CliError>> = None;
        let result = match client.watch_interaction(request).await {
            Ok(response) => {
                print_stream(out, json, response.into_inner(), &mut |event| {
                    last = last.max(event.sequence);
                    match resume.until.map(|until| (until, until.verdict(event))) {
                        Some((_, Verdict::Reached)) => stopped = Some(Ok(())),
                        Some((until, Verdict::Passed)) => {
                            stopped = Some(Err(not_reached(&resume.id, until, event)));
                        }
                        Some((_, Verdict::Wait)) | None => return ControlFlow::Continue(()),
                    }
                    ControlFlow::Break(())
                })
                .await
            }
            Err(status) => Err(CliError::Rpc(status)),
        };
        if let Some(outcome) = stopped {
            return outcome;
        }
        let status = match result {
            Err(CliError::Rpc(status)) if worth_retrying(&status) => status,
            // The stream ended after COMPLETED, which is past any other value (the verdict
            // says so first): only an event the verdict could not read gets here.
            Ok(()) => {
                return match resume.until {
                    Some(until) => Err(CliError::NotReached(format!(
                        "interaction {} ended its stream without reaching {until}",
                        resume.id
                    ))),
                    None => Ok(()),
                }
            }
            other => return other,
        };
        if last > before {
            // Progress: a fresh budget.
            give_up_at = None;
            backoff = FIRST_BACKOFF;
        }
        let now = Instant::now();
        let deadline = *give_up_at.get_or_insert(now + resume.reconnect_for);
        if now >= deadline {
            return Err(CliError::Rpc(status));
        }
        let pause = backoff.min(deadline - now);
        eprintln!(
            "calldesk: stream ended ({}: {}); resuming after sequence {last} in {}ms",
            code_name(status.code()),
            status.message(),
            pause.as_millis()
        );
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// UNAVAILABLE and RESOURCE_EXHAUSTED are the contract's "resume with the last sequence";
/// UNKNOWN is what a connection cut in the middle of a stream turns into on the client.
fn worth_retrying(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Unknown
    )
}

/// `--until VALUE` will not come: where the interaction is instead.
fn not_reached(id: &str, until: Until, event: &InteractionEvent) -> CliError {
    let state = event
        .state()
        .as_str_name()
        .trim_start_matches("INTERACTION_STATE_");
    let progress = event
        .progress()
        .as_str_name()
        .trim_start_matches("CALL_PROGRESS_");
    let mut now = format!("{state} {progress}");
    let reason = event.interaction.as_ref().map(|i| i.end_reason());
    if let Some(reason) = reason.filter(|r| *r != crate::proto::EndReason::Unspecified) {
        now.push(' ');
        now.push_str(reason.as_str_name().trim_start_matches("END_REASON_"));
    }
    CliError::NotReached(format!(
        "interaction {id} went past {until} without reaching it: it is {now} (#{})",
        event.sequence
    ))
}

/// Prints the events of a stream until it ends, or until `seen`, told of each event printed,
/// says to stop (the stream is then dropped, which cancels it).
pub(super) async fn print_stream(
    out: &mut dyn Write,
    json: bool,
    mut stream: Streaming<InteractionEvent>,
    seen: &mut dyn FnMut(&InteractionEvent) -> ControlFlow<()>,
) -> Result<(), CliError> {
    while let Some(event) = stream.message().await? {
        print_event(out, json, &event)?;
        if seen(&event).is_break() {
            break;
        }
    }
    Ok(())
}
