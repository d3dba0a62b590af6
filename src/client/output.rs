//! What the client prints: one human-readable line per interaction or event, or with
//! `--json` one proto3-JSON object per line.

use std::io::Write;

use super::errors::CliError;
use crate::proto::{
    CallProgress, Dialpad, EndReason, Interaction, InteractionEvent, InteractionState,
    ListCallerIdsResponse, ListInteractionsResponse, StartCallOutcome, StartCallResponse,
};

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

pub(super) fn print_start_call(
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

pub(super) fn print_event(
    out: &mut dyn Write,
    json: bool,
    event: &InteractionEvent,
) -> Result<(), CliError> {
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

pub(super) fn print_interaction(
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
    if !interaction.caller_id.is_empty() {
        line.push_str(" from ");
        line.push_str(&interaction.caller_id);
    }
    if let Ok(reason) = EndReason::try_from(interaction.end_reason) {
        if reason != EndReason::Unspecified {
            line.push(' ');
            line.push_str(strip(reason.as_str_name(), "END_REASON_"));
        }
    }
    if !interaction.transfer_target.is_empty() {
        line.push_str(" to ");
        line.push_str(&interaction.transfer_target);
    }
    if !interaction.transferred_from.is_empty() {
        line.push_str(" transferred from ");
        line.push_str(&interaction.transferred_from);
    }
    if !interaction.transfer_detail.is_empty() {
        line.push_str(&format!(" ({})", interaction.transfer_detail));
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

pub(super) fn print_list(
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
    if response.interactions.is_empty() && response.next_page_token.is_empty() {
        // Say so: an empty screen reads like a command that hung or failed. (JSON stays empty:
        // zero objects is the answer.)
        return write_line(out, "no interactions");
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

pub(super) fn print_dialpad(
    out: &mut dyn Write,
    json: bool,
    dialpad: &Dialpad,
) -> Result<(), CliError> {
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
    if !dialpad.caller_id.is_empty() {
        line.push_str(&format!(" from {}", dialpad.caller_id));
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

/// `calldesk caller-ids`: one number per line, the default marked.
pub(super) fn print_caller_ids(
    out: &mut dyn Write,
    json: bool,
    response: &ListCallerIdsResponse,
) -> Result<(), CliError> {
    if json {
        return write_json(out, response);
    }
    if response.caller_ids.is_empty() {
        return write_line(out, "no caller IDs: the switch presents its own");
    }
    for number in &response.caller_ids {
        if *number == response.default_caller_id {
            write_line(out, &format!("{number} (default)"))?;
        } else {
            write_line(out, number)?;
        }
    }
    Ok(())
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
