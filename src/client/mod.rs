//! The client side of `calldesk`: one subcommand per RPC of `calldesk.v1.InteractionService`.
//!
//! Every client subcommand takes the same connection options ([`ClientOptions`]): the server
//! URL, the agent (`x-agent-id`, development servers only), the bearer token and `--json`.
//! Output is one line per interaction or event: human-readable by default, and with `--json`
//! exactly one proto3-JSON object per line (the pbjson mapping of the generated types).
//!
//! Everything that can be checked locally (the `--object` JSON, the `--state` name, the token
//! and agent as metadata, the server URL) is checked before any connection is made; such
//! mistakes exit with code 2 and nothing is sent. Errors from the server exit with code 1.
//!
//! The files: [`args`] the subcommands and their flags, [`mod@connect`] the channel and the
//! credentials every request carries, [`watch`] following a stream with resumption,
//! [`until`] what `watch --until` waits for, [`output`] the lines and JSON printed, [`errors`]
//! what a failure prints and its exit code, [`mod@bench`] the load generator (`calldesk bench`).

pub mod args;
pub mod bench;
pub mod connect;
pub mod errors;
pub mod output;
pub mod until;
pub mod watch;

use std::{io::Write, ops::ControlFlow};

pub use args::*;
pub use connect::{connect, Client, Credentials};
pub use errors::{code_name, CliError};

use crate::proto::{
    CancelConsultRequest, CompleteInteractionRequest, CompleteTransferRequest,
    ConferenceCallRequest, ConsultCallRequest, DialStagedRequest, EndCallRequest,
    GetDialpadRequest, GetInteractionRequest, HoldCallRequest, InteractionState,
    ListCallerIdsRequest, ListInteractionsRequest, ResumeCallRequest, StartCallRequest,
    TransferCallRequest, WatchInteractionsRequest,
};
use connect::endpoint;
use output::{print_caller_ids, print_dialpad, print_interaction, print_list, print_start_call};
use watch::{print_stream, watch, Resume};

/// Runs a client subcommand, printing to stdout.
pub async fn run(command: Command) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run_to(command, &mut out).await {
        // `calldesk watch-all | head`: the reader went away, which is not a failure.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Runs a client subcommand, printing to `out`. Local checks happen before connecting.
pub async fn run_to(command: Command, out: &mut dyn Write) -> Result<(), CliError> {
    let options = command.options().clone().with_env();
    // Validate everything local before the first byte goes out.
    Credentials::new(&options)?;
    endpoint(&options)?;
    let json = options.json;
    let mut client = connect(&options).await?;
    match command {
        Command::Call(args) => {
            let request = StartCallRequest {
                phone_number: args.number,
                initial_object: args.object,
                request_id: args.request_id.unwrap_or_default(),
                caller_id: args.caller_id.unwrap_or_default(),
            };
            let response = client.start_call(request).await?.into_inner();
            print_start_call(out, json, &response)?;
        }
        Command::Watch(args) => {
            let resume = Resume {
                id: args.id,
                after: args.after,
                reconnect_for: args.reconnect_for,
                until: args.until,
            };
            watch(&mut client, out, json, resume).await?
        }
        Command::WatchAll(_) => {
            let stream = client
                .watch_interactions(WatchInteractionsRequest {})
                .await?
                .into_inner();
            print_stream(out, json, stream, &mut |_| ControlFlow::Continue(())).await?;
        }
        Command::Get(args) => {
            let request = GetInteractionRequest {
                interaction_id: args.id,
            };
            let interaction = client.get_interaction(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::List(args) => {
            let request = ListInteractionsRequest {
                page_size: args.page_size.unwrap_or(0),
                page_token: args.page_token.unwrap_or_default(),
                state: args.state.unwrap_or(InteractionState::Unspecified) as i32,
            };
            let response = client.list_interactions(request).await?.into_inner();
            print_list(out, json, &response)?;
        }
        Command::End(args) => {
            let request = EndCallRequest {
                interaction_id: args.id,
            };
            let interaction = client.end_call(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::Hold(args) => {
            let request = HoldCallRequest {
                interaction_id: args.id,
            };
            let interaction = client.hold_call(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::Resume(args) => {
            let request = ResumeCallRequest {
                interaction_id: args.id,
            };
            let interaction = client.resume_call(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::Complete(args) => {
            let request = CompleteInteractionRequest {
                interaction_id: args.id,
                disposition: args.disposition,
                notes: args.notes,
            };
            let interaction = client.complete_interaction(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::Dial(args) => {
            let request = DialStagedRequest {
                request_id: args.request_id.unwrap_or_default(),
            };
            let response = client.dial_staged(request).await?.into_inner();
            print_start_call(out, json, &response)?;
        }
        Command::CallerIds(_) => {
            let response = client
                .list_caller_ids(ListCallerIdsRequest {})
                .await?
                .into_inner();
            print_caller_ids(out, json, &response)?;
        }
        Command::Dialpad(_) => {
            let dialpad = client.get_dialpad(GetDialpadRequest {}).await?.into_inner();
            print_dialpad(out, json, &dialpad)?;
        }
        Command::Transfer(args) => {
            let request = TransferCallRequest {
                interaction_id: args.id,
                target: args.target,
                request_id: args.request_id.unwrap_or_default(),
            };
            let interaction = client.transfer_call(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::Consult(args) => {
            let request = ConsultCallRequest {
                interaction_id: args.id,
                target: args.target,
                request_id: args.request_id.unwrap_or_default(),
            };
            let interaction = client.consult_call(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::Conference(args) => {
            let request = ConferenceCallRequest {
                interaction_id: args.id,
                target: args.target,
                request_id: args.request_id.unwrap_or_default(),
            };
            let interaction = client.conference_call(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::CompleteTransfer(args) => {
            let request = CompleteTransferRequest {
                interaction_id: args.id,
                request_id: args.request_id.unwrap_or_default(),
            };
            let interaction = client.complete_transfer(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
        Command::CancelConsult(args) => {
            let request = CancelConsultRequest {
                interaction_id: args.id,
                request_id: args.request_id.unwrap_or_default(),
            };
            let interaction = client.cancel_consult(request).await?.into_inner();
            print_interaction(out, json, &interaction)?;
        }
    }
    Ok(())
}
