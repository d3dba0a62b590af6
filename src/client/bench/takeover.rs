//! `takeover`: kill -9 of the replica that holds a watched call; the time to SERVER_RESTART.

use std::time::Instant;

use tonic::transport::Channel;

use crate::proto::{
    interaction_service_client::InteractionServiceClient, InteractionState, StartCallRequest,
    WatchInteractionRequest,
};

use super::{next_in_state, watch_channels, with_agent, BenchArgs};

/// `calldesk bench takeover`: one connected call on the replica `--server`, watched on the
/// replica `--watch-server`; SIGKILL to `--kill-pid` (the first replica), then the time until
/// the watcher reads the call's WRAP_UP, which must end SERVER_RESTART.
pub(super) async fn takeover(args: &BenchArgs, channels: &[Channel]) -> Result<(), String> {
    let (pid, watch_server) = takeover_target(args)?;
    let watchers = watch_channels(args, channels).await?;
    let mut client = InteractionServiceClient::new(channels[0].clone());
    let id = client
        .start_call(with_agent(StartCallRequest {
            phone_number: args.phone_number.clone(),
            ..Default::default()
        }))
        .await
        .map_err(|s| format!("StartCall on {}: {s}", args.server[0]))?
        .into_inner()
        .interaction_id
        .ok_or("StartCall returned no interaction")?;
    let mut watcher = InteractionServiceClient::new(watchers[0].clone());
    let mut stream = watcher
        .watch_interaction(with_agent(WatchInteractionRequest {
            interaction_id: id.clone(),
            after_sequence: 0,
        }))
        .await
        .map_err(|s| format!("WatchInteraction on {watch_server}: {s}"))?
        .into_inner();
    // The next event in the given state or later, within --call-timeout.
    let deadline = tokio::time::Instant::now() + args.call_timeout;
    let delivered = next_in_state(&mut stream, deadline, InteractionState::Delivered).await?;
    if delivered.state != InteractionState::Delivered as i32 {
        return Err(format!(
            "the call ended before the kill: {:?}",
            delivered.interaction.map(|i| i.end_reason)
        ));
    }
    tokio::time::sleep(args.kill_after).await;
    // Once more just before the kill: the process may have exited meanwhile.
    takeover_target(args)?;
    let killed_wall = std::time::SystemTime::now();
    let killed = Instant::now();
    // SAFETY: kill(2) has no memory-safety preconditions; the pid was just checked to be a
    // `calldesk serve` process.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
        return Err(format!(
            "kill -9 {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let deadline = tokio::time::Instant::now() + args.call_timeout;
    let ended = next_in_state(&mut stream, deadline, InteractionState::WrapUp).await?;
    let seen = killed.elapsed();
    let reason = ended
        .interaction
        .as_ref()
        .and_then(|i| crate::proto::EndReason::try_from(i.end_reason).ok())
        .map_or("none", |r| {
            r.as_str_name().trim_start_matches("END_REASON_")
        });
    // The event's own time is the survivor's clock at the takeover: the same machine's.
    let written = ended.time.as_ref().and_then(|t| {
        crate::domain::system_time(t)
            .duration_since(killed_wall)
            .ok()
    });
    println!(
        "takeover: kill -9 of {} → WRAP_UP {reason} at the watcher on {watch_server} after {:.3} s{}",
        args.server[0],
        seen.as_secs_f64(),
        written.map_or(String::new(), |w| format!(
            " (the event's time: {:.3} s after the kill; then {:.1} ms to the watcher)",
            w.as_secs_f64(),
            (seen.as_secs_f64() - w.as_secs_f64()) * 1000.0
        )),
    );
    if reason != "SERVER_RESTART" {
        return Err(format!("the call ended {reason}, not SERVER_RESTART"));
    }
    Ok(())
}

/// The process `takeover` kills and the server its watcher is on, checked: `--kill-pid` must
/// be a `calldesk serve` process, and `--watch-server` must be given.
pub(super) fn takeover_target(args: &BenchArgs) -> Result<(u32, &str), String> {
    let Some(pid) = args.kill_pid else {
        return Err(
            "takeover needs --kill-pid: the process id of the replica --server names".into(),
        );
    };
    let Some(watch_server) = &args.watch_server else {
        return Err(
            "takeover needs --watch-server: another replica, whose watcher sees the takeover"
                .into(),
        );
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("--kill-pid {pid}: {e}"))?;
    let argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !is_calldesk_serve(&argv) {
        return Err(format!(
            "--kill-pid {pid} is not a `calldesk serve` process: {}",
            argv.join(" ")
        ));
    }
    Ok((pid, watch_server))
}

/// Whether a process's command line is `…/calldesk serve …`.
pub(super) fn is_calldesk_serve(argv: &[String]) -> bool {
    argv.first().is_some_and(|a| {
        std::path::Path::new(a).file_name() == Some(std::ffi::OsStr::new("calldesk"))
    }) && argv.get(1).is_some_and(|a| a == "serve")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn takeover_kills_only_a_calldesk_server() {
        assert!(is_calldesk_serve(&argv(&[
            "target/release/calldesk",
            "serve",
            "--listen",
            "127.0.0.1:0"
        ])));
        assert!(is_calldesk_serve(&argv(&["calldesk", "serve"])));
        for other in [
            &["calldesk", "bench", "takeover"][..],
            &["/usr/bin/sleep", "100"],
            &["calldesk-other", "serve"],
            &["postgres", "serve"],
            &[],
        ] {
            assert!(!is_calldesk_serve(&argv(other)), "{other:?}");
        }
    }
}
