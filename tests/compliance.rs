//! `--calling-hours` and `--dnc` against the real binary: refusals with their details, nothing
//! created or dialed, the metric and the log line (last 4 digits only), SIGHUP reloads (a bad
//! file keeps the previous lists), DialStaged held to the same rules while staging is not.
//!
//! Calling hours are tested at the real current time: the windows file is written relative to
//! it, for Phoenix numbers (UTC-7 all year, no DST, so local time is UTC - 7 h exactly).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use calldesk::proto::{self, DialStagedRequest, GetDialpadRequest, ListInteractionsRequest};
use support::process::{fast_flags, send_signal, ServerProcess};
use support::*;
use tonic::Code;
use tonic_types::StatusExt;

/// A Phoenix number (+1 602) and another (+1 480), both America/Phoenix.
const PHOENIX_CLOSED: &str = "+16025550100";
const PHOENIX_OPEN: &str = "+14805550100";

/// Metadata of the ErrorInfo of a status with `reason`.
fn error_info(status: &tonic::Status, reason: &str) -> std::collections::HashMap<String, String> {
    assert_error_info(status, reason);
    status.get_details_error_info().unwrap().metadata
}

/// A windows file for the two Phoenix prefixes: +1480 open all week, +1602 open only from a
/// minute boundary 61 minutes from now (local), until the end of that local day. Returns the
/// file's text and that instant (RFC 3339, UTC).
fn windows_from_now() -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = (now / 60 + 61) * 60;
    let local = start - 7 * 3600;
    let (minute_of_day, days) = ((local % 86_400) / 60, local / 86_400);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let text = format!(
        "# written by tests/compliance.rs\n+1480 Mon-Sun 00:00-24:00\n\
         +1602 {weekday} {:02}:{:02}-24:00\n",
        minute_of_day / 60,
        minute_of_day % 60
    );
    let next = jiff::Timestamp::from_second(start as i64)
        .unwrap()
        .to_string();
    (text, next)
}

#[tokio::test]
async fn refusals_name_their_reason_and_dial_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (windows, next_allowed) = windows_from_now();
    let hours = dir.path().join("hours.txt");
    std::fs::write(&hours, windows).unwrap();
    let national = dir.path().join("national.txt");
    std::fs::write(&national, "# national list\n+12025550100\n+1900*\n").unwrap();
    let internal = dir.path().join("internal.txt");
    std::fs::write(&internal, "+442079460000\n").unwrap();
    let metrics = free_addr().to_string();
    let (hours, national, internal) = (
        hours.to_str().unwrap(),
        national.to_str().unwrap(),
        internal.to_str().unwrap(),
    );
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &fast_flags(&[
            "--calling-hours",
            hours,
            "--dnc",
            national,
            "--dnc",
            internal,
            "--metrics-listen",
            &metrics,
            // A refusal holds no place: one place is enough for the call dialed after four
            // refusals, on PostgreSQL too (where a place is reserved in the store).
            "--max-active-calls",
            "1",
        ]),
    )
    .await;
    let mut client = server.client("ann");

    // Outside calling hours: the zone, its local time and when the number may be called.
    let status = start_err(&mut client, start_req(PHOENIX_CLOSED)).await;
    assert_code(&status, Code::FailedPrecondition);
    let info = error_info(&status, "OUTSIDE_CALLING_HOURS");
    assert_eq!(info["region"], "+1602");
    assert_eq!(info["zones"], "America/Phoenix");
    assert!(info["local_time"].ends_with("-07:00"), "{info:?}");
    assert_eq!(info["next_allowed_time"], next_allowed);
    assert!(status.message().contains(&next_allowed), "{status:?}");

    // On a list (a number, a prefix, the second file).
    for (number, list) in [
        ("+12025550100", "national.txt"),
        ("+19005550123", "national.txt"),
        ("+442079460000", "internal.txt"),
    ] {
        let status = start_err(&mut client, start_req(number)).await;
        assert_code(&status, Code::FailedPrecondition);
        assert_eq!(error_info(&status, "DO_NOT_CALL")["list"], list, "{number}");
    }

    // Nothing was created for any of them; a number in hours and on no list is dialed.
    let id = start_call(&mut client, PHOENIX_OPEN).await;
    let listed = client
        .list_interactions(ListInteractionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .interactions;
    assert_eq!(
        listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );

    // Counted by reason; logged by the last 4 digits only.
    let scrape =
        String::from_utf8_lossy(&get_metrics(metrics.parse().unwrap(), WAIT).await).into_owned();
    assert!(
        scrape.contains("calldesk_compliance_refusals_total{reason=\"do_not_call\"} 3"),
        "{scrape}"
    );
    assert!(
        scrape.contains("calldesk_compliance_refusals_total{reason=\"outside_calling_hours\"} 1"),
        "{scrape}"
    );
    let log = server.stderr_text();
    assert!(
        log.contains("…0100") && log.contains("call refused"),
        "{log}"
    );
    for full in ["6025550100", "2025550100", "2079460000"] {
        assert!(!log.contains(full), "the log shows a whole number: {log}");
    }
}

#[tokio::test]
async fn lists_are_reread_on_sighup_and_a_bad_file_keeps_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("dnc.txt");
    std::fs::write(&list, "+12025550100\n").unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &fast_flags(&["--dnc", list.to_str().unwrap()]),
    )
    .await;
    let mut client = server.client("ann");
    assert_error_info(
        &start_err(&mut client, start_req("+12025550100")).await,
        "DO_NOT_CALL",
    );

    // The list changes: the first number may be called, the second not.
    std::fs::write(&list, "+12025550177\n").unwrap();
    send_signal(server.pid(), "-HUP");
    wait_until_refused(&mut client, "+12025550177").await;
    let placed = start_ok(&mut client, start_req_id("+12025550100", "ann-1")).await;

    // Listed again: a new call is refused, but the retry of the call placed before still gets
    // its response (the lists apply to dials, after the idempotency key).
    std::fs::write(&list, "+12025550100\n").unwrap();
    send_signal(server.pid(), "-HUP");
    wait_until_refused(&mut client, "+12025550100").await;
    let replayed = start_ok(&mut client, start_req_id("+12025550100", "ann-1")).await;
    assert_eq!(replayed, placed);

    // A bad line: the previous list stays, and the log says why.
    std::fs::write(&list, "+12025550177\nnot a number\n").unwrap();
    send_signal(server.pid(), "-HUP");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !server.stderr_text().contains("not reloaded on SIGHUP") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log of the failed reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.stderr_text().contains("line 2"));
    assert_error_info(
        &start_err(&mut client, start_req("+12025550100")).await,
        "DO_NOT_CALL",
    );
    start_call(&mut client, "+12025550177").await;
}

/// StartCall of `number` until it is refused by a list (the reload is asynchronous).
async fn wait_until_refused(client: &mut Client, number: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match try_start(client, start_req(number)).await {
            Err(status)
                if status
                    .get_details_error_info()
                    .is_some_and(|i| i.reason == "DO_NOT_CALL") =>
            {
                return
            }
            Ok(response) => {
                // Dialed before the reload took: end it so that the agent's limit stays free.
                let id = response.interaction_id.unwrap_or_default();
                let _ = end(client, &id).await;
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{number} never refused"
        );
    }
}

#[tokio::test]
async fn staging_is_not_calling_but_dialing_the_staging_is() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("dnc.txt");
    std::fs::write(&list, "+12025550100\n").unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &fast_flags(&["--deferred-dial", "--dnc", list.to_str().unwrap()]),
    )
    .await;
    let mut client = server.client("ann");
    let staged = start_ok(&mut client, start_req("+12025550100")).await;
    assert_eq!(staged.outcome, proto::StartCallOutcome::Deferred as i32);
    let status = client
        .dial_staged(DialStagedRequest::default())
        .await
        .unwrap_err();
    assert_code(&status, Code::FailedPrecondition);
    assert_error_info(&status, "DO_NOT_CALL");
    // The refused dial left the staging in place.
    let dialpad = client
        .get_dialpad(GetDialpadRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dialpad.phone_number, "+12025550100");
}
