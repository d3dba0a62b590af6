//! Prometheus metrics at `--metrics-listen`: scraped over plain HTTP after real calls, and a
//! fresh `calldesk serve`'s against the metrics table of the documentation.
//!
//! The recorder is global to the process, so every assertion about the in-process server is in
//! one test function (each tests/*.rs file is a process of its own), and the values are exact
//! where this test made every call that counts. The fresh server is a process of its own.

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use calldesk::proto::InteractionState as S;
use support::{in_process::TestServer, process::ServerProcess, *};
use tonic::Code;

const UNKNOWN_ID: &str = "01970000-0000-7000-8000-000000000000";
const START: &str = "/calldesk.v1.InteractionService/StartCall";
const GET: &str = "/calldesk.v1.InteractionService/GetInteraction";
const WATCH: &str = "/calldesk.v1.InteractionService/WatchInteraction";
const COMPLETE: &str = "/calldesk.v1.InteractionService/CompleteInteraction";
/// How long the completed watch stream is held open on purpose, to see that a stream's
/// duration is measured at its end, not when its headers are sent.
const HOLD_OPEN: Duration = Duration::from_millis(300);

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like `get`, panicking with the whole scrape if it is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in the scrape:\n{}", self.text))
    }

    /// The sum of every sample named `name`.
    fn total(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Parses `name{k="v",...} value` lines (label values here never contain `"` or `,`).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let labels = body
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// GET /metrics over HTTP/1.1 with `Connection: close`.
async fn scrape(addr: SocketAddr) -> Scrape {
    let response = get_metrics(addr, WAIT).await;
    let response = String::from_utf8(response).expect("UTF-8 scrape");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {response:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "scrape not OK: {head:?}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked scrape: {head}"
    );
    Scrape {
        text: body.to_string(),
        samples: parse(body),
    }
}

/// Scrapes until `ready` holds, within a bound.
async fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = scrape(addr).await;
        if ready(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("{what}: not seen within 15 s; last scrape:\n{}", s.text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_count_rpcs_store_and_interactions() {
    let metrics_addr = free_addr();
    let server = TestServer::start_with(|c| c.metrics_listen = Some(metrics_addr)).await;
    // A second server in the same process: the recorder is installed once, the second
    // install (same address, or another one) is a no-op rather than an error or a panic.
    let second = TestServer::start_with(|c| c.metrics_listen = Some(metrics_addr)).await;
    let other_addr = free_addr();
    let third = TestServer::start_with(|c| c.metrics_listen = Some(other_addr)).await;
    third.shutdown().await;
    second.shutdown().await;

    let mut c = server.client("alice");

    // StartCall: two OK, one INVALID_ARGUMENT.
    let live = start_call(&mut c, NUM_OK).await;
    let busy = start_call(&mut c, NUM_BUSY).await;
    let status = start_err(&mut c, start_req("abc")).await;
    assert_code(&status, Code::InvalidArgument);

    // GetInteraction: NOT_FOUND.
    assert_not_found(get(&mut c, UNKNOWN_ID).await, "GetInteraction");

    // WatchInteraction run to completion (OK), held open for HOLD_OPEN first.
    let (mut w, _) = watch_until(&mut c, &busy, S::WrapUp).await;
    tokio::time::sleep(HOLD_OPEN).await;
    complete(&mut c, &busy, "busy", "").await.expect("Complete");
    let (_, end) = collect_to_end(&mut w, WAIT).await;
    end.expect("watch ends with OK");
    drop(w);

    // A WatchInteraction the client abandons: CANCELLED.
    let (abandoned, _) = watch_until(&mut c, &live, S::Delivered).await;
    drop(abandoned);

    let code = |m: &'static str, code: &'static str| [("method", m), ("code", code)];
    let s = scrape_until(metrics_addr, "RSS and the abandoned watch", |s| {
        s.get("process_resident_memory_bytes", &[])
            .is_some_and(|v| v > 0.0)
            && s.get("calldesk_rpc_requests_total", &code(WATCH, "CANCELLED"))
                .is_some_and(|v| v >= 1.0)
    })
    .await;

    // Requests by method and code.
    let requests = "calldesk_rpc_requests_total";
    assert_eq!(s.value(requests, &code(START, "OK")), 2.0);
    assert_eq!(s.value(requests, &code(START, "INVALID_ARGUMENT")), 1.0);
    assert_eq!(s.value(requests, &code(GET, "NOT_FOUND")), 1.0);
    assert_eq!(s.value(requests, &code(COMPLETE, "OK")), 1.0);
    assert_eq!(s.value(requests, &code(WATCH, "OK")), 1.0);
    assert_eq!(s.value(requests, &code(WATCH, "CANCELLED")), 1.0);
    assert!(s.total(requests) >= 7.0, "{}", s.text);

    // Durations: per method; a stream's at its end.
    let count = "calldesk_rpc_duration_seconds_count";
    let sum = "calldesk_rpc_duration_seconds_sum";
    assert_eq!(s.value(count, &[("method", START)]), 3.0);
    assert!(s.value(sum, &[("method", START)]) > 0.0);
    s.value(
        "calldesk_rpc_duration_seconds_bucket",
        &[("method", START), ("le", "0.0005")],
    );
    assert_eq!(
        s.value(
            "calldesk_rpc_duration_seconds_bucket",
            &[("method", START), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(s.value(count, &[("method", WATCH)]), 2.0);
    assert!(
        s.value(sum, &[("method", WATCH)]) >= HOLD_OPEN.as_secs_f64(),
        "the completed watch was open at least {HOLD_OPEN:?}:\n{}",
        s.text
    );

    // The store writer.
    assert!(s.value("calldesk_store_commit_seconds_count", &[]) > 0.0);
    s.value("calldesk_store_commit_seconds_bucket", &[("le", "10")]);
    assert!(s.value("calldesk_store_batch_size_count", &[]) > 0.0);
    assert!(s.value("calldesk_store_batch_size_sum", &[]) >= 1.0);
    s.value("calldesk_store_batch_size_bucket", &[("le", "1024")]);
    assert!(
        s.get("calldesk_store_commit_failures_total", &[])
            .unwrap_or(0.0)
            == 0.0
    );

    // The call manager: one live call DELIVERED, the busy one COMPLETED (not held).
    let interactions = |state| s.value("calldesk_interactions", &[("state", state)]);
    assert_eq!(interactions("DELIVERED"), 1.0);
    assert_eq!(interactions("DELIVERY_PENDING"), 0.0);
    assert_eq!(interactions("WRAP_UP"), 0.0);
    assert!(s
        .get("calldesk_interactions", &[("state", "COMPLETED")])
        .is_none());
    assert_eq!(
        s.value("calldesk_start_calls_total", &[("outcome", "started")]),
        2.0
    );

    // Resident memory, and descriptions.
    assert!(s.value("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(s.has("calldesk_rpc_duration_seconds_bucket"));
    assert!(
        s.text.contains("# HELP calldesk_rpc_requests_total"),
        "{}",
        s.text
    );
    assert!(s
        .text
        .contains("# TYPE calldesk_rpc_duration_seconds histogram"));

    server.shutdown().await;
}

/// A row of the documentation's metrics table (`| metric | type | what |`).
struct DocumentedMetric {
    name: String,
    kind: String,
    /// The label values the row names in backquotes (`DELIVERED`, `OK`, `agent`, …).
    values: Vec<String>,
    /// Its description starts with "PostgreSQL:".
    postgres_only: bool,
    /// Its description starts with "SIP:": only with `--telephony sip`.
    sip_only: bool,
    /// Its description starts with "Webhooks:": per subscription, only with `--webhooks`.
    webhooks_only: bool,
}

/// The metrics table, wherever the documentation keeps it (README.md or docs/guide/).
fn documented_metrics() -> Vec<DocumentedMetric> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    if let Ok(guides) = std::fs::read_dir(root.join("docs/guide")) {
        files.extend(guides.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let text = files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find(|t| t.contains("| metric | type | what |"))
        .expect("a document with the metrics table");
    let table = text
        .split("| metric | type | what |")
        .nth(1)
        .expect("the table");
    let mut metrics = Vec::new();
    for row in table.lines().skip(2) {
        let Some(row) = row.strip_prefix('|') else {
            break;
        };
        let cells: Vec<&str> = row.split(" | ").map(str::trim).collect();
        let series = cells[0].trim_matches('`');
        let (name, label_names) = series.split_once('{').unwrap_or((series, ""));
        let label_names: Vec<&str> = label_names.trim_end_matches('}').split(',').collect();
        let what = cells[2].trim_end_matches('|').trim();
        let values = what
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|v| !label_names.contains(v))
            .map(str::to_string)
            .collect();
        metrics.push(DocumentedMetric {
            name: name.to_string(),
            kind: cells[1].to_string(),
            values,
            postgres_only: what.starts_with("PostgreSQL:"),
            sip_only: what.starts_with("SIP:"),
            webhooks_only: what.starts_with("Webhooks:"),
        });
    }
    assert!(metrics.len() >= 10, "the table has its rows");
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exposes_every_documented_counter_and_gauge_at_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics_addr = free_addr();
    let listen = metrics_addr.to_string();
    let _server = ServerProcess::start(dir.path(), &["--metrics-listen", &listen]).await;
    let s = scrape(metrics_addr).await;
    let on_postgres = Store::from_env() == Store::Postgres;
    let checked = assert_documented_at_zero(&s, |m| {
        // Webhooks' rows: per subscription, and this server has none (tests/webhooks.rs
        // checks them at zero on one that has).
        if m.sip_only || m.webhooks_only || (m.postgres_only && !on_postgres) {
            Expect::Absent
        } else {
            Expect::AtZero
        }
    });
    assert!(checked >= 6, "counters and gauges checked: {checked}");
    // Every method of the service, with every code (the table names three of them).
    let requests: Vec<&Sample> = s
        .samples
        .iter()
        .filter(|x| x.name == "calldesk_rpc_requests_total")
        .collect();
    assert_eq!(requests.len(), 17 * 17, "{}", s.text);
}

/// The table's `SIP:` rows on a fresh `--telephony sip` server: each at zero, with every label
/// value the table names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_sip_server_exposes_the_sip_counters_and_gauges_at_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics_addr = free_addr();
    let listen = metrics_addr.to_string();
    let sip_listen = format!("127.0.0.1:{}", free_sip_port());
    let _server = ServerProcess::start(
        dir.path(),
        &[
            "--metrics-listen",
            &listen,
            "--telephony",
            "sip",
            "--sip-listen",
            &sip_listen,
            "--sip-agent-uri",
            "sip:{agent}@127.0.0.1:5070",
            "--sip-trunk",
            "sip:127.0.0.1:5080",
            "--sip-keepalive-interval",
            "off",
        ],
    )
    .await;
    let s = scrape(metrics_addr).await;
    let checked = assert_documented_at_zero(&s, |m| {
        if m.sip_only {
            Expect::AtZero
        } else {
            Expect::Ignored
        }
    });
    assert_eq!(checked, 4, "the SIP rows checked");
}

/// What a scrape must show of one row of the table.
enum Expect {
    /// Every sample at zero (the RSS above a megabyte), with each label value the row names.
    AtZero,
    /// No sample at all.
    Absent,
    /// Not this test's business.
    Ignored,
}

/// Checks the table's counters and gauges in `s` as `expect` says; how many were `AtZero`.
fn assert_documented_at_zero(s: &Scrape, expect: impl Fn(&DocumentedMetric) -> Expect) -> usize {
    let mut checked = 0;
    for metric in documented_metrics() {
        if metric.kind == "histogram" {
            continue;
        }
        let samples: Vec<&Sample> = s.samples.iter().filter(|x| x.name == metric.name).collect();
        match expect(&metric) {
            Expect::Ignored => continue,
            Expect::Absent => {
                assert!(
                    samples.is_empty(),
                    "{} is exposed:\n{}",
                    metric.name,
                    s.text
                );
                continue;
            }
            Expect::AtZero => {}
        }
        assert!(
            !samples.is_empty(),
            "{} ({}) is not exposed by a fresh server:\n{}",
            metric.name,
            metric.kind,
            s.text
        );
        for sample in &samples {
            if metric.name == "process_resident_memory_bytes" {
                assert!(sample.value > 1_000_000.0, "{sample:?}");
            } else {
                assert_eq!(sample.value, 0.0, "a fresh server's {sample:?}");
            }
        }
        // Each label value the table names is there.
        for value in &metric.values {
            assert!(
                samples
                    .iter()
                    .any(|x| x.labels.values().any(|v| v == value)),
                "{} has no sample labelled {value:?}:\n{}",
                metric.name,
                s.text
            );
        }
        checked += 1;
    }
    checked
}
