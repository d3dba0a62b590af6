//! The PostgreSQL store (`--database-url`): one database that any number of replicas share.
//!
//! It keeps SQLite's shape (one row per event; the interactions row holds what queries select
//! on) and adds what replicas need to share one deployment:
//!
//! - **Leases** (`lease.rs`): each replica registers a row in `replicas` (a node id made at
//!   start, the address its peers reach it at, and a lease it renews every third of
//!   `--lease-duration`). A survivor takes over the live interactions of a replica whose lease
//!   expired (row locks: exactly one does) and ends their calls with SERVER_RESTART.
//! - **Ownership and fencing** (`writer.rs`): a live interaction is owned by the replica that
//!   started it (or took it over). Every write transaction first checks, under a lock that a
//!   takeover must wait for, that this replica's lease row is still there and unexpired; a
//!   replica taken over while paused writes nothing more, and its state changes updates only
//!   rows it owns.
//! - **Admission** (`admission.rs`): a StartCall's request_id and the agent's
//!   `--max-active-calls` are checked in one transaction under a per-agent advisory lock before
//!   anything is dialed, so that they hold across replicas.
//! - **Webhook cursors** (`webhooks.rs`): owned by the replica that created the interaction;
//!   a taken-over replica's are claimed by a live one.
//! - **Fan-out** (`fanout.rs`): each write transaction sends `NOTIFY` with the ids of its
//!   events (delivered at commit, in commit order); every replica `LISTEN`s and feeds its own
//!   watchers with the events read from the table, so a notification carries no payload that
//!   could be missed or reordered.
//!
//! Durability: `synchronous_commit = on` on every connection; a write is acknowledged only
//! once PostgreSQL has committed it. Group commit works as with SQLite: the writer takes every
//! pending write into one transaction.

mod admission;
mod fanout;
mod lease;
mod schema;
pub mod tls;
mod webhooks;
mod writer;

pub use fanout::Fanout;
pub use lease::Replica;
pub use schema::SCHEMA_VERSION;
pub use writer::{start_writer, WriterConn, WriterHandle};

use std::{path::Path, str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use prost::Message;
use tokio_postgres::{tls::MakeTlsConnect, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    snapshot_of, FaultState, Page, PageTokens, StagedDialpad, StoreError, StoreFault,
    TransferKeyRecord,
};
use crate::{domain::EncodedEvent, proto};

/// How many pooled connections serve reads, admissions and leases.
const POOL_SIZE: usize = 16;
/// How long connecting may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the PostgreSQL store is opened with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `postgres://…`: never logged as given (it may hold a password).
    pub url: String,
    /// Where the other replicas reach this one (`host:port`).
    pub advertise_address: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// COMPLETED interactions older than this are deleted.
    pub retention: Duration,
}

/// The store's reads and what replicas share. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// What is wrong with the store; the writer and the lease keep it current.
    faults: FaultState,
    /// Every replica's committed events, for this replica's watchers.
    fanout: Fanout,
    /// This replica's node id: the owner it writes as.
    node_id: std::sync::Arc<str>,
    /// ListInteractions' page tokens, under the key all replicas share.
    page_tokens: PageTokens,
}

/// The URL's host, port and database, without the user or password: how logs name the store.
pub fn shown(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("postgresql://{host}:{port}/{db}")
}

/// A PostgreSQL error as a store error (its words, never the URL).
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::new(format!("store: {}", describe(&e)))
}

/// The words of a PostgreSQL error: the server's message when there is one, with its code;
/// else what failed and why (a TLS failure said as what to change).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(words) = tls::describe(e) {
        return words;
    }
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// The fault a failed statement stands for.
pub(crate) fn classify(e: &tokio_postgres::Error) -> StoreFault {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => StoreFault::DiskFull,
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            StoreFault::Unreachable
        }
        Some(_) => StoreFault::WriteFailed,
        // No SQLSTATE: the connection broke or could not be made.
        None => StoreFault::Unreachable,
    }
}

/// The stream of a connection to PostgreSQL (TLS, or plain with `sslmode=disable` or when a
/// `prefer` server offers no TLS).
pub type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// How to connect to the database of `--database-url`: tokio-postgres's settings and the TLS
/// connector that the URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` describe
/// (`tls.rs`). Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    /// The URL's settings less its TLS parameters, with calldesk's (application name, connect
    /// timeout, synchronous_commit) and tokio-postgres's sslmode.
    config: tokio_postgres::Config,
    /// rustls with the roots, checks and client certificate the TLS parameters name.
    tls: MakeRustlsConnect,
}

impl Connector {
    /// Parses the URL (reading the files its TLS parameters name) and sets what every calldesk
    /// connection needs. The errors never quote the URL.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let not_a_url = |e: &dyn std::fmt::Display| {
            StoreError::new(format!(
                "--database-url is not a PostgreSQL URL or connection string ({e}); expected \
                 postgres://user:password@host:port/database[?sslmode=verify-full&sslrootcert=FILE]"
            ))
        };
        let (rest, tls) = tls::split(url).map_err(|e| not_a_url(&e))?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| not_a_url(&e))?;
        let mode = tls.mode(config.get_hosts()).map_err(|e| not_a_url(&e))?;
        let (ssl_mode, tls) = tls
            .connector(mode)
            .map_err(|e| StoreError::new(format!("--database-url: {e}")))?;
        config.ssl_mode(ssl_mode);
        config.application_name("calldesk");
        config.connect_timeout(CONNECT_TIMEOUT);
        // Durable before acknowledged, whatever the server's default says.
        config.options("-c synchronous_commit=on");
        Ok(Self { config, tls })
    }

    /// The URL's host, port and database, without the user or password.
    pub fn shown(&self) -> String {
        shown(&self.config)
    }

    /// A new connection; its `Connection` must be polled (spawned) for the client to work.
    pub async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<Socket, Stream>,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

/// Opens the store: connects, creates or migrates the schema, registers this replica with a
/// lease, and starts the lease keeper, the fan-out listener and retention.
pub async fn open(settings: Settings) -> Result<(Store, WriterConn, Replica), StoreError> {
    let connector = Connector::from_url(&settings.url)?;
    let shown = connector.shown();
    let (mut client, connection) = connector
        .connect()
        .await
        .map_err(|e| StoreError::new(format!("cannot connect to {shown}: {}", describe(&e))))?;
    let connection = tokio::spawn(connection);
    schema::check_and_migrate(&mut client, &shown).await?;
    let page_tokens = PageTokens::with_key(&page_token_key(&client).await?)?;
    drop(client);
    let _ = connection.await;

    let manager = Manager::from_config(
        connector.config.clone(),
        connector.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::new(format!("cannot pool connections to {shown}: {e}")))?;
    let faults = FaultState::new(Path::new(&shown));
    let node_id: std::sync::Arc<str> = uuid::Uuid::now_v7().to_string().into();
    let replica = lease::Replica::register(
        pool.clone(),
        node_id.clone(),
        settings.advertise_address.clone(),
        settings.lease,
        settings.retention,
        faults.clone(),
    )
    .await?;
    let fanout = Fanout::start(connector.clone(), pool.clone(), shown.clone()).await?;
    let store = Store {
        pool,
        faults: faults.clone(),
        fanout,
        node_id: node_id.clone(),
        page_tokens,
    };
    let writer = WriterConn::new(connector, shown, node_id, faults, settings.lease);
    Ok((store, writer, replica))
}

/// The key page tokens are sealed with: the one in the database, or a new one put there by the
/// first replica that finds none (replicas starting at once all read the one that won).
async fn page_token_key(client: &tokio_postgres::Client) -> Result<Vec<u8>, StoreError> {
    const NAME: &str = "page_token_key";
    let fresh = PageTokens::new_key()?;
    client
        .execute(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&NAME, &fresh.as_slice()],
        )
        .await
        .map_err(pg_error)?;
    let row = client
        .query_one("SELECT value FROM secrets WHERE name = $1", &[&NAME])
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

/// In a query of `interactions i`: the row's latest event, whose `interaction` is its snapshot.
macro_rules! latest_event {
    () => {
        "(SELECT payload FROM events e WHERE e.interaction_id = i.id
          ORDER BY e.sequence DESC LIMIT 1)"
    };
}
pub(crate) use latest_event;

impl Store {
    /// What is wrong with the store right now.
    pub fn faults(&self) -> &FaultState {
        &self.faults
    }

    /// Every replica's committed events, for this replica's watchers.
    pub fn fanout(&self) -> &Fanout {
        &self.fanout
    }

    /// ListInteractions' page tokens.
    pub fn page_tokens(&self) -> &PageTokens {
        &self.page_tokens
    }

    /// A pooled connection; failing to get one is the store being unreachable.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::new(format!("store: no connection: {e}")))
    }

    /// One interaction's latest snapshot.
    pub async fn interaction(&self, id: String) -> Result<Option<proto::Interaction>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT payload FROM events WHERE interaction_id = $1
                 ORDER BY sequence DESC LIMIT 1",
            )
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&id])
            .await
            .map_err(pg_error)?;
        row.map(|r| snapshot_of(r.get::<_, &[u8]>(0))).transpose()
    }

    /// The transfer keys recorded on an interaction, oldest first.
    pub async fn transfer_keys(&self, id: String) -> Result<Vec<TransferKeyRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT request_id, request FROM transfer_keys WHERE interaction_id = $1
                 ORDER BY sequence",
            )
            .await
            .map_err(pg_error)?;
        let rows = client.query(&statement, &[&id]).await.map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| TransferKeyRecord {
                request_id: r.get(0),
                request: r.get(1),
            })
            .collect())
    }

    /// An agent's interactions, newest first, before row `before` (exclusive), optionally in
    /// one state.
    pub async fn list(
        &self,
        agent_id: String,
        state: Option<i32>,
        before: Option<i64>,
        page_size: usize,
    ) -> Result<Page, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(concat!(
                "SELECT i.row_id, ",
                latest_event!(),
                " FROM interactions i
                 WHERE i.agent_id = $1 AND ($2::INTEGER IS NULL OR i.state = $2) AND i.row_id < $3
                 ORDER BY i.row_id DESC LIMIT $4"
            ))
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &agent_id,
                    &state,
                    &before.unwrap_or(i64::MAX),
                    &(page_size as i64 + 1),
                ],
            )
            .await
            .map_err(pg_error)?;
        Page::newest_first(
            rows.into_iter()
                .map(|row| Ok((row.get::<_, i64>(0), row.get::<_, Option<Vec<u8>>>(1)))),
            page_size,
        )
    }

    /// An interaction's events with a sequence greater than `after`, in order, at most `limit`.
    pub async fn events_after(
        &self,
        interaction_id: String,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EncodedEvent>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT payload FROM events WHERE interaction_id = $1 AND sequence > $2
                 ORDER BY sequence LIMIT $3",
            )
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &interaction_id,
                    &(after.min(i64::MAX as u64) as i64),
                    &(limit as i64),
                ],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|r| {
                let payload: Vec<u8> = r.get(0);
                Ok(EncodedEvent::from_stored(payload.into())?)
            })
            .collect()
    }

    /// What is staged for the agent, with its stored bytes.
    pub async fn staged_dialpad(
        &self,
        agent_id: String,
    ) -> Result<Option<(proto::Dialpad, StagedDialpad)>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT payload FROM dialpads WHERE agent_id = $1")
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&agent_id])
            .await
            .map_err(pg_error)?;
        match row {
            Some(row) => {
                let payload: Vec<u8> = row.get(0);
                let dialpad = proto::Dialpad::decode(payload.as_slice())?;
                Ok(Some((dialpad, StagedDialpad { agent_id, payload })))
            }
            None => Ok(None),
        }
    }

    /// The replica that holds a live interaction (None: COMPLETED or unknown).
    pub async fn owner(&self, interaction_id: &str) -> Result<Option<super::Owner>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT i.owner, r.address FROM interactions i
                 LEFT JOIN replicas r ON r.node_id = i.owner
                 WHERE i.id = $1 AND i.state <> 5",
            )
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&interaction_id])
            .await
            .map_err(pg_error)?;
        Ok(row.map(|row| {
            let node_id: Option<String> = row.get(0);
            let node_id = node_id.unwrap_or_default();
            super::Owner {
                is_self: node_id == *self.node_id,
                node_id,
                address: row.get::<_, Option<String>>(1).unwrap_or_default(),
            }
        }))
    }
}
