//! New phone numbers cost what known ones do: StartCall validates a number it has never seen
//! without the `phonenumber` crate's regex cache (a global mutex and a SipHash of each
//! pattern's text per lookup, ~95k instructions per number; BENCHMARKS.md), and still answers
//! what the crate answers. The figures are `scripts/bench instructions`; this checks the
//! path.
//!
//! One test in this file: it reads the crate's process-wide cache, which any other test in
//! the same process could fill.

mod support;

use phonenumber::metadata::DATABASE;
use support::{in_process::TestServer, *};
use tonic::Code;

/// How many patterns the crate's regex cache holds now.
fn crate_cache_len() -> usize {
    DATABASE
        .cache()
        .lock()
        .map(|c| c.len())
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_numbers_are_validated_without_the_crates_regex_cache() {
    let server = TestServer::start_with(|c| {
        c.max_active_calls = 1000;
        c.default_region = Some("GB".into());
    })
    .await;
    let mut client = server.client("campaign");
    if let Ok(mut cache) = DATABASE.cache().lock() {
        cache.clear();
    }

    // 400 numbers the server has never seen: international US, UK and German ones, and
    // national UK ones read in --default-region GB.
    let mut dialed = 0;
    for i in 0..100u32 {
        for (raw, e164) in [
            (
                format!("+1 (212) 3{:02}-{:04}", 20 + i % 80, i * 7),
                format!("+12123{:02}{:04}", 20 + i % 80, i * 7),
            ),
            (
                format!("+44 20 7{:03} {:04}", i, i * 3),
                format!("+44207{:03}{:04}", i, i * 3),
            ),
            (
                format!("+49 30 5{:07}", i * 11),
                format!("+49305{:07}", i * 11),
            ),
            (
                format!("020 8{:03} {:04}", i, i + 1),
                format!("+44208{:03}{:04}", i, i + 1),
            ),
        ] {
            let interaction = start_ok(&mut client, start_req(&raw))
                .await
                .interaction
                .expect("interaction");
            assert_eq!(interaction.phone_number, e164, "{raw}");
            dialed += 1;
        }
    }
    assert_eq!(dialed, 400);
    assert_eq!(
        crate_cache_len(),
        0,
        "valid new numbers were validated through the crate's regex cache"
    );

    // A refusal still comes from the crate, in its words.
    let status = start_err(&mut client, start_req("+44 20 7946 00")).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "phone_number: is not a possible phone number"
    );
    assert!(crate_cache_len() > 0, "the crate answered the refusal");
    server.shutdown().await;
}
