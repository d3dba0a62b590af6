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

use std::{fmt, io::Write, str::FromStr, time::Duration};

use clap::{Args, Subcommand};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
    Code, Request, Status, Streaming,
};
use tonic_types::StatusExt;

use crate::proto::{
    interaction_service_client::InteractionServiceClient, AssociatedObject, CallProgress,
    CompleteInteractionRequest, Dialpad, EndCallRequest, EndReason, GetDialpadRequest,
    GetInteractionRequest, HoldCallRequest, Interaction, InteractionEvent, InteractionState,
    ListInteractionsRequest, ListInteractionsResponse, ResumeCallRequest, StartCallOutcome,
    StartCallRequest, StartCallResponse, WatchInteractionRequest, WatchInteractionsRequest,
};

/// The server a client talks to unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// How many times `watch` resumes a stream the server ended with UNAVAILABLE or
/// RESOURCE_EXHAUSTED without any new event in between.
const WATCH_RESUME_ATTEMPTS: u32 = 3;

/// Options shared by every client subcommand.
#[derive(Clone, Args)]
pub struct ClientOptions {
    /// URL of the calldesk server.
    #[arg(long, env = "CALLDESK_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,

    /// Agent to act as, sent as `x-agent-id` (honoured only by servers without --auth-tokens).
    #[arg(long, env = "CALLDESK_AGENT", value_name = "ID")]
    pub agent: Option<String>,

    /// Bearer token naming the agent (sent as `authorization: Bearer TOKEN`).
    #[arg(
        long,
        env = "CALLDESK_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Print one proto3-JSON object per line instead of human-readable lines.
    #[arg(long)]
    pub json: bool,
}

impl fmt::Debug for ClientOptions {
    // Never shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("server", &self.server)
            .field("agent", &self.agent)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .finish()
    }
}

/// The client subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Start an outbound call (prints the interaction id).
    Call(CallArgs),
    /// Follow one interaction: every event, in order, until it is COMPLETED.
    Watch(WatchArgs),
    /// Follow all of the agent's interactions live, until interrupted.
    WatchAll(OptionsOnly),
    /// Show one interaction.
    Get(IdArgs),
    /// List the agent's interactions, newest first.
    List(ListArgs),
    /// Hang up a call (before it is answered: cancel it).
    End(IdArgs),
    /// Put a connected call on hold.
    Hold(IdArgs),
    /// Take a held call back.
    Resume(IdArgs),
    /// Finish wrap-up with a disposition and notes.
    Complete(CompleteArgs),
    /// Show what Deferred Dial staged in the agent's dialpad.
    Dialpad(OptionsOnly),
}

impl Command {
    /// The connection options of this subcommand.
    pub fn options(&self) -> &ClientOptions {
        match self {
            Command::Call(a) => &a.options,
            Command::Watch(a) => &a.options,
            Command::WatchAll(a) | Command::Dialpad(a) => &a.options,
            Command::Get(a) | Command::End(a) | Command::Hold(a) | Command::Resume(a) => &a.options,
            Command::List(a) => &a.options,
            Command::Complete(a) => &a.options,
        }
    }
}

/// `calldesk call`.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// The number to dial: +E.164, a national number (with a server default region) or an
    /// extension of 2 to 8 digits.
    #[arg(value_name = "NUMBER")]
    pub number: String,

    /// Object to associate with the call, in Bright Pattern's JSON shape:
    /// {"id":…,"type":…,"displayName":…,"displayType":…,"customFields":{…}}.
    #[arg(long, value_name = "JSON", value_parser = parse_object)]
    pub object: Option<AssociatedObject>,

    /// Idempotency key: retrying with the same key does not dial twice.
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The interaction to follow.
    #[arg(value_name = "ID")]
    pub id: String,

    /// Only events with a sequence greater than N (0: from the first).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// Subcommands that name one interaction.
#[derive(Debug, Clone, Args)]
pub struct IdArgs {
    /// The interaction's id.
    #[arg(value_name = "ID")]
    pub id: String,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// Subcommands with nothing but the connection options.
#[derive(Debug, Clone, Args)]
pub struct OptionsOnly {
    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only interactions in this state: DELIVERY_PENDING, DELIVERED, HOLD, WRAP_UP or
    /// COMPLETED (case-insensitive; the INTERACTION_STATE_ prefix is optional).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<InteractionState>,

    /// How many interactions per page (1 to 1000; the server's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,

    /// The next_page_token printed by the previous page.
    #[arg(long, value_name = "T")]
    pub page_token: Option<String>,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// `calldesk complete`.
#[derive(Debug, Clone, Args)]
pub struct CompleteArgs {
    /// The interaction's id.
    #[arg(value_name = "ID")]
    pub id: String,

    /// The outcome of the call, e.g. "sale".
    #[arg(long, value_name = "D")]
    pub disposition: String,

    /// Free-text notes on the call.
    #[arg(long, value_name = "N", default_value = "")]
    pub notes: String,

    #[command(flatten)]
    pub options: ClientOptions,
}

/// Parses `--object`: Bright Pattern's InteractionAssociatedObject as proto3 JSON.
pub fn parse_object(s: &str) -> Result<AssociatedObject, String> {
    serde_json::from_str::<AssociatedObject>(s).map_err(|e| {
        // serde_json's message ends with "at line L column C".
        format!(
            "not a valid object: {e}; expected \
             {{\"id\":…,\"type\":…,\"displayName\":…,\"displayType\":…,\"customFields\":{{…}}}}"
        )
    })
}

/// Parses `--state`: `DELIVERED`, `delivered`, `wrap-up` or `INTERACTION_STATE_DELIVERED`.
pub fn parse_state(s: &str) -> Result<InteractionState, String> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let full = if upper.starts_with("INTERACTION_STATE_") {
        upper
    } else {
        format!("INTERACTION_STATE_{upper}")
    };
    match InteractionState::from_str_name(&full) {
        Some(InteractionState::Unspecified) | None => Err(format!(
            "unknown state {s:?}; expected one of DELIVERY_PENDING, DELIVERED, HOLD, WRAP_UP, \
             COMPLETED"
        )),
        Some(state) => Ok(state),
    }
}

/// Why a client subcommand failed; [`CliError::exit_code`] is the process exit code.
#[derive(Debug)]
pub enum CliError {
    /// A mistake found before anything was sent (exit code 2).
    Usage(String),
    /// The server could not be reached (exit code 1).
    Connect(String),
    /// The server answered with an error status (exit code 1).
    Rpc(Status),
    /// Writing the output failed (exit code 1).
    Output(std::io::Error),
}

impl CliError {
    /// The process exit code for this error: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The error as one JSON object, `{"error":{"code":…,"message":…}}`, for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            CliError::Rpc(status) => status_json(status),
            CliError::Usage(m) => error_json("INVALID_ARGUMENT", m),
            CliError::Connect(m) => error_json("UNAVAILABLE", m),
            CliError::Output(e) => error_json("INTERNAL", &e.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m) => f.write_str(m),
            CliError::Connect(m) => write!(f, "UNAVAILABLE: {m}"),
            CliError::Rpc(status) => f.write_str(&describe_status(status)),
            CliError::Output(e) => write!(f, "cannot write output: {e}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        CliError::Rpc(status)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Output(e)
    }
}

/// The canonical name of a gRPC code, as in `google.rpc.Code` (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `CODE: message`, followed by the decoded `google.rpc` details that matter to a user.
fn describe_status(status: &Status) -> String {
    let mut out = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(info) = status.get_details_error_info() {
        out.push_str(&format!(" [reason {}", info.reason));
        if !info.domain.is_empty() {
            out.push_str(&format!(", domain {}", info.domain));
        }
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        for (k, v) in metadata {
            out.push_str(&format!(", {k}={v}"));
        }
        out.push(']');
    }
    if let Some(bad) = status.get_details_bad_request() {
        for v in &bad.field_violations {
            out.push_str(&format!("\n  field {}: {}", v.field, v.description));
        }
    }
    if let Some(pre) = status.get_details_precondition_failure() {
        for v in &pre.violations {
            out.push_str(&format!(
                "\n  precondition {} {}: {}",
                v.r#type, v.subject, v.description
            ));
        }
    }
    if let Some(retry) = status.get_details_retry_info() {
        if let Some(delay) = retry.retry_delay {
            out.push_str(&format!("\n  retry after {delay:?}"));
        }
    }
    out
}

fn error_json(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "code": code, "message": message } })
}

fn status_json(status: &Status) -> serde_json::Value {
    let mut error = serde_json::Map::new();
    error.insert("code".into(), code_name(status.code()).into());
    error.insert("message".into(), status.message().into());
    let mut details = Vec::new();
    if let Some(info) = status.get_details_error_info() {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }));
    }
    if let Some(bad) = status.get_details_bad_request() {
        let violations: Vec<_> = bad
            .field_violations
            .iter()
            .map(|v| serde_json::json!({ "field": v.field, "description": v.description }))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if !details.is_empty() {
        error.insert("details".into(), details.into());
    }
    serde_json::json!({ "error": error })
}

/// Adds the agent and token metadata to every request.
#[derive(Clone)]
pub struct Credentials {
    agent: Option<MetadataValue<Ascii>>,
    authorization: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// Checks that the agent and token can be sent as metadata.
    pub fn new(options: &ClientOptions) -> Result<Self, CliError> {
        let agent = match &options.agent {
            Some(agent) => Some(MetadataValue::from_str(agent).map_err(|_| {
                CliError::Usage(format!(
                    "--agent {agent:?} cannot be sent as metadata (printable ASCII only)"
                ))
            })?),
            None => None,
        };
        let authorization = match &options.token {
            Some(token) => {
                // The error names neither the token nor the header value.
                let mut value =
                    MetadataValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        CliError::Usage(
                            "--token cannot be sent as metadata (printable ASCII only)".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Credentials {
            agent,
            authorization,
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(agent) = &self.agent {
            request.metadata_mut().insert("x-agent-id", agent.clone());
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        Ok(request)
    }
}

/// The generated client with the credentials interceptor.
pub type Client = InteractionServiceClient<InterceptedService<Channel, Credentials>>;

/// Checks the server URL (no connection yet).
fn endpoint(server: &str) -> Result<Endpoint, CliError> {
    let endpoint = Endpoint::from_shared(server.to_string())
        .map_err(|e| CliError::Usage(format!("--server {server:?} is not a valid URL: {e}")))?;
    Ok(endpoint.connect_timeout(Duration::from_secs(10)))
}

/// Connects to the server.
pub async fn connect(options: &ClientOptions) -> Result<Client, CliError> {
    let credentials = Credentials::new(options)?;
    let endpoint = endpoint(&options.server)?;
    let channel = endpoint.connect().await.map_err(|e| {
        CliError::Connect(format!(
            "cannot connect to {}: {}",
            options.server,
            error_chain(&e)
        ))
    })?;
    Ok(InteractionServiceClient::with_interceptor(
        channel,
        credentials,
    ))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut previous = out.clone();
    while let Some(s) = source {
        // hyper and tonic often wrap an error in one with the same text.
        let text = s.to_string();
        if text != previous {
            out.push_str(": ");
            out.push_str(&text);
        }
        previous = text;
        source = s.source();
    }
    out
}

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
    let options = command.options().clone();
    // Validate everything local before the first byte goes out.
    Credentials::new(&options)?;
    endpoint(&options.server)?;
    let json = options.json;
    let mut client = connect(&options).await?;
    match command {
        Command::Call(args) => {
            let request = StartCallRequest {
                phone_number: args.number,
                initial_object: args.object,
                request_id: args.request_id.unwrap_or_default(),
            };
            let response = client.start_call(request).await?.into_inner();
            print_start_call(out, json, &response)?;
        }
        Command::Watch(args) => watch(&mut client, out, json, args.id, args.after).await?,
        Command::WatchAll(_) => {
            let stream = client
                .watch_interactions(WatchInteractionsRequest {})
                .await?
                .into_inner();
            print_stream(out, json, stream, &mut |_| {}).await?;
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
        Command::Dialpad(_) => {
            let dialpad = client.get_dialpad(GetDialpadRequest {}).await?.into_inner();
            print_dialpad(out, json, &dialpad)?;
        }
    }
    Ok(())
}

/// `watch`: prints every event after `after` until the stream ends. When the server ends the
/// stream with UNAVAILABLE or RESOURCE_EXHAUSTED (a watcher too slow to keep up), it resumes
/// from the last sequence printed, as the contract prescribes; it gives up after a few attempts
/// in a row that bring no new event.
async fn watch(
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
async fn print_stream(
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

fn write_json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> Result<(), CliError> {
    let line = serde_json::to_string(value)
        .map_err(|e| CliError::Output(std::io::Error::other(e.to_string())))?;
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn write_line(out: &mut dyn Write, line: &str) -> Result<(), CliError> {
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn print_start_call(
    out: &mut dyn Write,
    json: bool,
    response: &StartCallResponse,
) -> Result<(), CliError> {
    if json {
        return write_json(out, response);
    }
    let outcome = StartCallOutcome::try_from(response.outcome).ok();
    match (&response.interaction_id, outcome) {
        (None, _) | (_, Some(StartCallOutcome::Deferred)) => {
            write_line(out, "deferred: staged in dialpad")
        }
        (Some(id), _) => write_line(out, id),
    }
}

fn print_event(out: &mut dyn Write, json: bool, event: &InteractionEvent) -> Result<(), CliError> {
    if json {
        return write_json(out, event);
    }
    let mut line = format!(
        "#{} {} {} {}",
        event.sequence,
        event.interaction_id,
        state_name(event.state),
        progress_name(event.progress)
    );
    if let Some(interaction) = &event.interaction {
        append_interaction_tail(&mut line, interaction);
    }
    write_line(out, &line)
}

fn print_interaction(
    out: &mut dyn Write,
    json: bool,
    interaction: &Interaction,
) -> Result<(), CliError> {
    if json {
        return write_json(out, interaction);
    }
    let mut line = format!(
        "{} {} {}",
        interaction.id,
        state_name(interaction.state),
        progress_name(interaction.progress)
    );
    append_interaction_tail(&mut line, interaction);
    line.push_str(&format!(" #{}", interaction.sequence));
    write_line(out, &line)
}

/// Number, end reason, disposition and object name: the parts a human scans for.
fn append_interaction_tail(line: &mut String, interaction: &Interaction) {
    if !interaction.phone_number.is_empty() {
        line.push(' ');
        line.push_str(&interaction.phone_number);
    }
    if let Ok(reason) = EndReason::try_from(interaction.end_reason) {
        if reason != EndReason::Unspecified {
            line.push(' ');
            line.push_str(strip(reason.as_str_name(), "END_REASON_"));
        }
    }
    if !interaction.disposition.is_empty() {
        line.push_str(&format!(" disposition={:?}", interaction.disposition));
    }
    if let Some(object) = &interaction.associated_object {
        if !object.display_name.is_empty() {
            line.push_str(&format!(" object={:?}", object.display_name));
        } else if !object.id.is_empty() {
            line.push_str(&format!(" object={}:{}", object.r#type, object.id));
        }
    }
}

fn print_list(
    out: &mut dyn Write,
    json: bool,
    response: &ListInteractionsResponse,
) -> Result<(), CliError> {
    if json {
        for interaction in &response.interactions {
            write_json(out, interaction)?;
        }
        if !response.next_page_token.is_empty() {
            write_json(
                out,
                &serde_json::json!({ "nextPageToken": response.next_page_token }),
            )?;
        }
        return Ok(());
    }
    for interaction in &response.interactions {
        print_interaction(out, false, interaction)?;
    }
    if !response.next_page_token.is_empty() {
        write_line(
            out,
            &format!("next page: --page-token {}", response.next_page_token),
        )?;
    }
    Ok(())
}

fn print_dialpad(out: &mut dyn Write, json: bool, dialpad: &Dialpad) -> Result<(), CliError> {
    if json {
        return write_json(out, dialpad);
    }
    if dialpad.phone_number.is_empty() {
        return write_line(out, "dialpad empty");
    }
    let mut line = dialpad.phone_number.clone();
    if let Some(time) = &dialpad.stage_time {
        // The proto3 JSON of a Timestamp is its RFC 3339 text.
        if let Ok(serde_json::Value::String(time)) = serde_json::to_value(time) {
            line.push_str(&format!(" staged {time}"));
        }
    }
    if let Some(object) = &dialpad.initial_object {
        if !object.display_name.is_empty() {
            line.push_str(&format!(" object={:?}", object.display_name));
        } else if !object.id.is_empty() {
            line.push_str(&format!(" object={}:{}", object.r#type, object.id));
        }
    }
    write_line(out, &line)
}

fn strip<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

fn state_name(value: i32) -> String {
    match InteractionState::try_from(value) {
        Ok(state) => strip(state.as_str_name(), "INTERACTION_STATE_").to_string(),
        Err(_) => format!("STATE({value})"),
    }
}

fn progress_name(value: i32) -> String {
    match CallProgress::try_from(value) {
        Ok(progress) => strip(progress.as_str_name(), "CALL_PROGRESS_").to_string(),
        Err(_) => format!("PROGRESS({value})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_in_bright_pattern_shape_parses() {
        let object = parse_object(
            r#"{"id":"c1","type":"contact","displayName":"Ann","displayType":"Contact","customFields":{"k":"v"}}"#,
        );
        let object = object.unwrap_or_default();
        assert_eq!(object.id, "c1");
        assert_eq!(object.display_name, "Ann");
        assert_eq!(object.custom_fields.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn malformed_object_names_line_and_column() {
        let err = parse_object(r#"{"id": "1", "type": }"#)
            .err()
            .unwrap_or_default();
        assert!(err.contains("line 1"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn states_parse_in_any_spelling() {
        assert_eq!(parse_state("delivered"), Ok(InteractionState::Delivered));
        assert_eq!(parse_state("wrap-up"), Ok(InteractionState::WrapUp));
        assert_eq!(
            parse_state("INTERACTION_STATE_COMPLETED"),
            Ok(InteractionState::Completed)
        );
        assert!(parse_state("UNSPECIFIED").is_err());
        assert!(parse_state("ringing").is_err());
    }

    #[test]
    fn token_is_not_in_debug_output() {
        let options = ClientOptions {
            server: DEFAULT_SERVER.into(),
            agent: None,
            token: Some("s3cret".into()),
            json: false,
        };
        assert!(!format!("{options:?}").contains("s3cret"));
    }
}
