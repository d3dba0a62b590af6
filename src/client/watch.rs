//! `calldesk watch` and `watch-all`: printing a stream's events, resuming from the last
//! sequence printed when the server ends the stream with a retryable code.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use tonic::{Code, Streaming};

use super::{
    connect::Client,
    errors::{code_name, CliError},
    output::print_event,
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
}

/// `watch`: prints every event after `resume.after` until the stream ends with the
/// interaction COMPLETED. When the stream breaks with a code that says "try again"
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
        let result = match client.watch_interaction(request).await {
            Ok(response) => {
                print_stream(out, json, response.into_inner(), &mut |event| {
                    last = last.max(event.sequence);
                })
                .await
            }
            Err(status) => Err(CliError::Rpc(status)),
        };
        let status = match result {
            Err(CliError::Rpc(status)) if worth_retrying(&status) => status,
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

/// Prints the events of a stream until it ends; `seen` is told of each event printed.
pub(super) async fn print_stream(
    out: &mut dyn Write,
    json: bool,
    mut stream: Streaming<InteractionEvent>,
    seen: &mut dyn FnMut(&InteractionEvent),
) -> Result<(), CliError> {
    while let Some(event) = stream.message().await? {
        print_event(out, json, &event)?;
        seen(&event);
    }
    Ok(())
}
