//! Why a client subcommand failed: the line (or JSON object) it prints, with the server's
//! `google.rpc` details decoded, and the process exit code.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Why a client subcommand failed; [`CliError::exit_code`] is the process exit code.
#[derive(Debug)]
pub enum CliError {
    /// A mistake found before anything was sent (exit code 2).
    Usage(String),
    /// The server could not be reached (exit code 1).
    Connect(String),
    /// The server answered with an error status (exit code 1).
    Rpc(Status),
    /// `watch --until`: the interaction went past the value awaited without reaching it
    /// (exit code 1); the message says where it is.
    NotReached(String),
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
            CliError::NotReached(m) => error_json("FAILED_PRECONDITION", m),
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
            CliError::NotReached(m) => write!(f, "FAILED_PRECONDITION: {m}"),
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
    if let Some(next) = status
        .get_details_error_info()
        .and_then(|info| info.metadata.get("next_allowed_time").cloned())
    {
        // OUTSIDE_CALLING_HOURS: when the number may be called.
        out.push_str(&format!("\n  next allowed: {next}"));
    }
    if let Some(retry) = status.get_details_retry_info() {
        if let Some(delay) = retry.retry_delay {
            out.push_str(&format!("\n  retry after {} s", delay.as_secs_f64().ceil()));
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
    if let Some(delay) = status
        .get_details_retry_info()
        .and_then(|retry| retry.retry_delay)
    {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", delay.as_secs_f64()),
        }));
    }
    if !details.is_empty() {
        error.insert("details".into(), details.into());
    }
    serde_json::json!({ "error": error })
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn a_refusal_prints_its_reason_and_when_to_try_again() {
        let hours = Status::with_error_details(
            Code::FailedPrecondition,
            "outside calling hours for US",
            ErrorDetails::with_error_info(
                "OUTSIDE_CALLING_HOURS",
                "calldesk",
                HashMap::from([(
                    "next_allowed_time".to_owned(),
                    "2026-07-16T12:00:00Z".to_owned(),
                )]),
            ),
        );
        let printed = CliError::Rpc(hours).to_string();
        assert!(
            printed.contains("[reason OUTSIDE_CALLING_HOURS"),
            "{printed}"
        );
        assert!(
            printed.ends_with("\n  next allowed: 2026-07-16T12:00:00Z"),
            "{printed}"
        );

        let mut details = ErrorDetails::with_error_info("TRUNK_BUSY", "calldesk", HashMap::new());
        details.set_retry_info(Some(Duration::from_millis(2500)));
        let busy =
            Status::with_error_details(Code::ResourceExhausted, "the trunk is busy", details);
        let printed = CliError::Rpc(busy.clone()).to_string();
        assert!(printed.ends_with("\n  retry after 3 s"), "{printed}");
        let json = CliError::Rpc(busy).to_json();
        assert_eq!(json["error"]["details"][1]["retryDelay"], "2.5s", "{json}");
    }
}
