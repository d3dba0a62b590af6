//! `calldesk watch` and `watch-all`: printing a stream's events, resuming from the last
//! sequence printed when the server ends the stream with a retryable code.

use std::{io::Write, time::Duration};

use tonic::{Code, Streaming};

use super::{
    connect::Client,
    errors::{code_name, CliError},
    output::print_event,
};
use crate::proto::{InteractionEvent, WatchInteractionRequest};

/// How many times `watch` resumes a stream the server ended with UNAVAILABLE or
/// RESOURCE_EXHAUSTED without any new event in between.
const WATCH_RESUME_ATTEMPTS: u32 = 3;

/// `watch`: prints every event after `after` until the stream ends. When the server ends the
/// stream with UNAVAILABLE or RESOURCE_EXHAUSTED (a watcher too slow to keep up), it resumes
/// from the last sequence printed, as the contract prescribes; it gives up after a few attempts
/// in a row that bring no new event.
pub(super) async fn watch(
    client: &mut Client,
    out: &mut dyn Write,
    json: bool,
    id: String,
    after: u64,
) -> Result<(), CliError> {
    let mut last = after;
    let mut fruitless = 0;
    loop {
        let request = WatchInteractionRequest {
            interaction_id: id.clone(),
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
        match result {
            Err(CliError::Rpc(status))
                if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) =>
            {
                fruitless = if last > before { 0 } else { fruitless + 1 };
                if fruitless >= WATCH_RESUME_ATTEMPTS {
                    return Err(CliError::Rpc(status));
                }
                eprintln!(
                    "calldesk: stream ended ({}: {}); resuming after sequence {last}",
                    code_name(status.code()),
                    status.message()
                );
                tokio::time::sleep(Duration::from_millis(200 * u64::from(fruitless))).await;
            }
            other => return other,
        }
    }
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
