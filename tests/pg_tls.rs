//! PostgreSQL over TLS (docs/api.md §11): calldesk against a real PostgreSQL with `ssl=on` and
//! `hostssl`-only access (`PgCluster::shared_tls`), its certificates made here with rcgen.
//!
//! `sslmode=verify-full` with the right CA serves the whole API over TLS connections only; a
//! wrong CA, a wrong host name and `sslmode=disable` are refused at start with words that say
//! what failed, never the password; each mode checks what libpq's does; `sslcert`/`sslkey`
//! log in with a client certificate.

mod support;

use std::path::Path;

use calldesk::{proto::InteractionState, store::postgres::Connector};
use support::{
    in_process::TestServer,
    pki,
    postgres::{self, PgCluster},
    process::{self, run_to_exit},
    *,
};

/// The password every URL here carries: it must appear in no message (trust authentication
/// never asks for it).
const PASSWORD: &str = "pw-never-printed-9417";

/// The TLS-only cluster's URL of `db` with `params` (`&`-separated), as `postgres` with
/// [`PASSWORD`], host `host`.
fn url(cluster: &PgCluster, host: &str, db: &str, params: &str) -> String {
    format!(
        "postgres://postgres:{PASSWORD}@{host}:{}/{db}?{params}",
        cluster.port()
    )
}

/// The CA file of the TLS-only cluster.
fn ca_file(cluster: &PgCluster) -> String {
    let tls = cluster.tls().expect("a TLS-only cluster");
    tls.ca_file.display().to_string()
}

/// The name of the database of `url` (the path after the port).
fn db_name(url: &str) -> String {
    let before_params = url.split('?').next().expect("a URL");
    before_params.rsplit_once('/').expect("a path").1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_right_ca_serves_the_whole_api_over_tls_only() {
    let cluster = PgCluster::shared_tls();
    let db = db_name(&cluster.database());
    let ca = ca_file(cluster);
    let database_url = url(
        cluster,
        "127.0.0.1",
        &db,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let server = TestServer::start_on(Store::Sqlite, |c| {
        let dir = c.data_dir.parent().expect("the temp dir").to_owned();
        c.database_url = Some(database_url);
        c.peer_token_file = Some(postgres::write_peer_token(&dir));
        c.lease_duration = humantime::parse_duration(postgres::TEST_LEASE).expect("lease");
    })
    .await;

    let mut client = server.client("tina");
    let mut all = watch_all(&mut client).await;
    let id = start_call(&mut client, NUM_OK).await;
    let mut one = watch(&mut client, &id, 0).await;
    wait_for_state(&mut one, InteractionState::Delivered).await;
    hold(&mut client, &id).await.expect("HoldCall");
    resume(&mut client, &id).await.expect("ResumeCall");
    end(&mut client, &id).await.expect("EndCall");
    let done = complete(&mut client, &id, "sale", "")
        .await
        .expect("CompleteInteraction");
    let events = collect_until_completed(&mut one, WAIT).await;
    assert_eq!(events.last().map(|e| e.sequence), Some(done.sequence));
    // WatchInteractions is fed by LISTEN/NOTIFY: its connection is TLS too.
    wait_for(&mut all, WAIT, |e| {
        e.interaction_id == id && e.state == InteractionState::Completed as i32
    })
    .await;
    let listed = list_all(&mut client, InteractionState::Completed).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        get(&mut client, &id).await.expect("get").sequence,
        done.sequence
    );

    // Every connection calldesk holds (the pool, the writer, the listener) is encrypted.
    let admin = postgres::connect(&cluster.url("postgres")).await;
    let rows = admin
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
             WHERE a.application_name = 'calldesk' AND a.datname = $1",
            &[&db],
        )
        .await
        .expect("pg_stat_ssl");
    let encrypted: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        encrypted.len() >= 3,
        "calldesk's connections: {encrypted:?}"
    );
    assert!(encrypted.iter().all(|ssl| *ssl), "{encrypted:?}");
    server.shutdown().await;
}

/// `calldesk serve --database-url URL` run to its exit: its stderr (it must have failed).
fn refused(url: &str, dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("a dir for the refused server");
    let token = postgres::write_peer_token(dir);
    let args = process::serve_args_for(
        Store::Sqlite,
        "127.0.0.1:0",
        &dir.join("data"),
        &[
            "--database-url",
            url,
            "--peer-token-file",
            token.to_str().expect("utf-8 path"),
        ],
    );
    let finished = run_to_exit(args, WAIT);
    assert!(!finished.status.success(), "{}", finished.stderr);
    assert!(
        !finished.stderr.contains(PASSWORD) && !finished.stdout.contains(PASSWORD),
        "the password is never printed: {}",
        finished.stderr
    );
    finished.stderr
}

#[test]
fn a_wrong_ca_a_wrong_host_name_and_sslmode_disable_are_refused_clearly() {
    let cluster = PgCluster::shared_tls();
    let db = db_name(&cluster.database());
    let dir = tempfile::tempdir().expect("temp dir");
    let other_ca = pki::write(dir.path(), "other-ca.pem", pki::Ca::new("another CA").pem());

    let stderr = refused(
        &url(
            cluster,
            "127.0.0.1",
            &db,
            &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
        ),
        &dir.path().join("wrong-ca"),
    );
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("(unknown CA)"),
        "{stderr}"
    );

    // The server's certificate names localhost and 127.0.0.1; the URL's host is another name
    // (hostaddr: where to connect; host: the name the certificate must hold).
    let stderr = refused(
        &url(
            cluster,
            "db.wrong.test",
            &db,
            &format!(
                "hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
                ca_file(cluster)
            ),
        ),
        &dir.path().join("wrong-host"),
    );
    assert!(
        stderr.contains("host name mismatch") && stderr.contains("db.wrong.test"),
        "{stderr}"
    );

    let stderr = refused(
        &url(cluster, "127.0.0.1", &db, "sslmode=disable"),
        &dir.path().join("disable"),
    );
    assert!(
        stderr.contains("no encryption") && stderr.contains("accepts only TLS connections"),
        "{stderr}"
    );
}

/// Connects with `url` through calldesk's connector and says which role it got in as, or why
/// not.
async fn login(url: &str) -> Result<String, String> {
    let connector = Connector::from_url(url).map_err(|e| e.message)?;
    let (client, connection) = connector.connect().await.map_err(|e| calldesk_words(&e))?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// The error as calldesk words it (what `serve` prints after "cannot connect to …").
fn calldesk_words(e: &tokio_postgres::Error) -> String {
    calldesk::store::postgres::tls::describe(e).unwrap_or_else(|| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_checks_what_libpqs_does() {
    let cluster = PgCluster::shared_tls();
    let db = db_name(&cluster.database());
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = ca_file(cluster);
    let other_ca = pki::write(dir.path(), "other-ca.pem", pki::Ca::new("another CA").pem());
    let other = other_ca.display().to_string();
    let wrong_host = "db.wrong.test";
    let cases: [(&str, &str, bool); 9] = [
        // libpq's default, prefer: TLS when offered, nothing checked without sslrootcert.
        ("127.0.0.1", "", true),
        ("127.0.0.1", "sslmode=require", true),
        // prefer and require check the chain when sslrootcert is given.
        (
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={other}"),
            false,
        ),
        ("127.0.0.1", &format!("sslrootcert={ca}"), true),
        // verify-ca: the chain, not the name.
        (
            wrong_host,
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
            true,
        ),
        (
            wrong_host,
            &format!("sslmode=verify-ca&sslrootcert={other}"),
            false,
        ),
        // verify-full: both.
        (
            wrong_host,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
            false,
        ),
        (
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
            true,
        ),
        // Without sslrootcert, the system's roots, which do not hold the test CA.
        ("127.0.0.1", "sslmode=verify-full", false),
    ];
    for (host, params, connects) in cases {
        let params = match host {
            // The certificate does not name it; connect to the cluster's address all the same.
            "db.wrong.test" => format!("hostaddr=127.0.0.1&{params}"),
            _ => params.to_owned(),
        };
        let outcome = login(&url(cluster, host, &db, &params)).await;
        assert_eq!(outcome.is_ok(), connects, "{host} ?{params}: {outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslcert_and_sslkey_log_in_with_a_client_certificate() {
    let cluster = PgCluster::shared_tls();
    let tls = cluster.tls().expect("TLS-only");
    let admin = postgres::connect(&cluster.url("postgres")).await;
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE certified LOGIN; EXCEPTION WHEN duplicate_object THEN END $$",
        )
        .await
        .expect("the role certified");
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = tls
        .ca
        .leaf("certified", &["certified"])
        .write(dir.path(), "certified");
    let base = format!(
        "postgres://certified@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        tls.ca_file.display()
    );
    let with_cert = format!("{base}&sslcert={}&sslkey={}", cert.display(), key.display());
    assert_eq!(login(&with_cert).await.as_deref(), Ok("certified"));
    // pg_hba.conf asks the role for a certificate: without one, refused.
    let without = login(&base).await.expect_err("no client certificate");
    assert!(without.contains("certificate"), "{without}");
}
