//! The store: the event log, what each interaction's queries select on, idempotency keys and
//! staged dialpads. Two backends behind one surface, chosen by the server (`server::start`):
//!
//! - [`sqlite`], the embedded default: one file under `--data-dir`, one process.
//! - [`postgres`] (`--database-url`): one database that several replicas share, each holding
//!   a lease; a replica owns the live interactions it started, and the store fences every write
//!   of a replica whose lease lapsed.
//!
//! # What a store provides
//!
//! This is the whole surface the rest of calldesk uses; both backends provide it with the same
//! guarantees:
//!
//! - **Opening** ([`open`], [`open_postgres`]): create or migrate the schema (versioned; refuse
//!   a foreign store or one written by a newer calldesk, untouched) and return what a restart
//!   must pick up again ([`Recovered`]: interactions not COMPLETED).
//! - **Writing** ([`start_writer`] → [`WriterHandle`]): the call manager submits [`Write`]s
//!   ([`WriteOp::Create`] with its idempotency key in the same transaction,
//!   [`WriteOp::Append`] with its transfer key in the same transaction,
//!   [`WriteOp::StageDialpad`], [`WriteOp::Release`]) without waiting,
//!   and gets one [`Completion`] per transaction. A write is acknowledged only once it is
//!   durable, and the events of one interaction commit in submission order (sequences 1, 2,
//!   3, … with no gap).
//! - **Reading** ([`Store`], cheap to clone, never through the writer):
//!   [`Store::interaction`] (GetInteraction), [`Store::list`] (ListInteractions, newest
//!   first, paged), [`Store::events_after`] (a watch's history), [`Store::dialpad`]
//!   (GetDialpad), [`Store::transfer_keys`]. Reads see only committed data.
//! - **Sharing** (PostgreSQL only; the SQLite answers say "one process"):
//!   [`Store::admit_start`] (idempotency and `--max-active-calls` across replicas),
//!   [`Store::owner`] (which replica holds a live interaction), [`Store::interaction_feed`] and
//!   [`Store::agent_feed`] (every replica's committed events, for watchers).
//! - **Retention**: delete COMPLETED interactions older than `--retention`, in small batches,
//!   off the write path.
//! - **Page tokens** ([`Store::page_tokens`]): ListInteractions' tokens sealed under a key the
//!   store keeps, so that every replica and every restart reads every token it issued
//!   ([`page_token`]).
//! - **Webhooks** ([`webhooks`]): the subscriptions' agents ([`Store::webhook_subscribe`]), a
//!   cursor per subscription and interaction, made by the writer in the transaction that
//!   creates the interaction and moved as durably as events ([`Store::webhook_move`]: SQLite
//!   in the writer thread's next transaction, PostgreSQL in a transaction of their own),
//!   and the feed of commits ([`Store::commits`]).
//!
//! The call manager and the API know only these names.

mod faults;
pub mod page_token;
pub mod postgres;
pub mod sqlite;
pub mod webhooks;

pub use faults::{recover_advice, FaultState, Faults, StoreFault};
pub use page_token::PageTokens;
pub use sqlite::{prune, Retention, DB_FILE};

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;

use crate::{
    domain::{dialog::CallDialogs, EncodedEvent},
    proto,
};

/// How many writes one transaction takes at most (group commit).
pub const MAX_BATCH: usize = 1024;

/// A live feed of committed events: one interaction's.
pub type EventFeed = tokio::sync::broadcast::Receiver<EncodedEvent>;

/// A live feed of committed events: one agent's, which buffers only what its watchers have not
/// read (`domain/feed.rs`): thousands of agents' consoles each cost what is in flight.
pub type AgentEventFeed = crate::domain::feed::Receiver<EncodedEvent>;

/// How hard a commit tries to survive failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=FULL`: a commit survives power loss.
    Full,
    /// `synchronous=NORMAL`: a commit survives a process crash, but the last commits may be
    /// lost if the machine loses power.
    Normal,
}

/// A store failure. Opening failures name the path and stop the server; run-time write
/// failures become UNAVAILABLE for the request that needed the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub message: String,
    /// SQLite said the file is damaged ("malformed", "not a database").
    pub corrupt: bool,
}

impl StoreError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            corrupt: false,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> Self {
        StoreError {
            message: format!("store: corrupt row: {e}"),
            corrupt: true,
        }
    }
}

/// Why a transaction was not committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    /// The fault behind it, when it is a known one (disk full, corrupt, file replaced, …).
    pub fault: Option<StoreFault>,
    pub message: String,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An idempotency key and the response it stands for (AIP-155).
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    pub agent_id: String,
    pub request_id: String,
    /// A hash of the request, to tell a retry from a different request under the same key.
    pub fingerprint: Vec<u8>,
    pub response: proto::StartCallResponse,
    pub expire_time: SystemTime,
}

/// A transfer operation's idempotency key (TransferCall, ConsultCall, CompleteTransfer,
/// CancelConsult, ConferenceCall), written with the event the operation committed: a retry
/// with the same key, even after a restart or a takeover, is answered with the interaction as
/// it is then. Kept until the interaction is COMPLETED, the newest
/// [`TRANSFER_KEYS_PER_INTERACTION`] per interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferKeyRecord {
    pub request_id: String,
    /// What the key stands for, to tell a retry from another request under the same key: the
    /// operation and its target (`TransferCall agent:bob`).
    pub request: String,
}

/// How many transfer keys an interaction keeps (the oldest goes first).
pub const TRANSFER_KEYS_PER_INTERACTION: usize = 16;

/// A staged dialpad, as stored: whose, and its encoded `Dialpad`.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedDialpad {
    pub agent_id: String,
    pub payload: Vec<u8>,
}

/// One change to write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// A new interaction: its first event, and the idempotency key of the StartCall that made
    /// it, in the same transaction.
    Create {
        event: Arc<proto::InteractionEvent>,
        /// `event`, encoded: the row as written.
        payload: bytes::Bytes,
        idempotency: Option<Box<IdempotencyRecord>>,
        /// DialStaged: the staging this call dials, cleared in the same transaction (only if
        /// it is still the one staged: a newer staging stays).
        clear_dialpad: Option<Box<StagedDialpad>>,
        /// PostgreSQL: the dial reservation this call held against `--max-active-calls`,
        /// released in the same transaction (the interaction counts from then on).
        reservation: Option<Box<str>>,
    },
    /// The next event of an interaction.
    Append {
        event: Arc<proto::InteractionEvent>,
        /// `event`, encoded: the row as written.
        payload: bytes::Bytes,
        /// The idempotency key of the transfer operation this event carries out, if it had
        /// one: in the same transaction, so that the key exists exactly when its effect does.
        transfer_key: Option<Box<TransferKeyRecord>>,
    },
    /// Deferred Dial staged a number in an agent's dialpad.
    StageDialpad {
        agent_id: String,
        dialpad: Box<proto::Dialpad>,
        idempotency: Option<Box<IdempotencyRecord>>,
    },
    /// A StartCall failed before creating anything: release what it claimed.
    Release(Box<Claims>),
    /// A connected call's SIP dialogs as they are now, replacing the ones kept before: what a
    /// restart adopts the call from (stored encoded: `CallDialogs::encode`). They are deleted
    /// in the transaction that writes the interaction's end (its WRAP_UP event).
    SaveDialogs {
        interaction_id: String,
        dialogs: Box<CallDialogs>,
    },
}

/// PostgreSQL: what a StartCall admitted by [`Store::admit_start`] held in the shared
/// store (its dial reservation, its idempotency key in flight), released when it failed
/// before creating anything. The SQLite store holds no such claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub reservation: Option<Box<str>>,
    /// (agent_id, request_id) claimed as in flight.
    pub key: Option<(String, String)>,
}

impl Claims {
    pub fn is_empty(&self) -> bool {
        self.reservation.is_none() && self.key.is_none()
    }

    /// The reservation alone: for a request whose key is in flight (or answered) already, whose
    /// claim must stay.
    pub fn without_key(self) -> Self {
        Self {
            reservation: self.reservation,
            key: None,
        }
    }
}

/// A write and the token its completion comes back with.
#[derive(Debug)]
pub struct Write<T> {
    pub token: T,
    pub op: WriteOp,
    /// The work of the request that asked for it (`Span::none()` for none): its transaction's
    /// `store.commit` span is a child of it ([`commit_spans`]).
    pub span: tracing::Span,
}

/// The `store.commit` spans of one transaction, one a child of each write's request span that
/// is recorded (none without the OTLP exporter: no allocation then). Held while the
/// transaction runs: a span lasts until it is dropped.
fn commit_spans<T>(batch: &[Write<T>]) -> Vec<tracing::Span> {
    batch
        .iter()
        .filter(|write| !write.span.is_disabled())
        .map(
            |write| tracing::debug_span!(parent: &write.span, "store.commit", writes = batch.len()),
        )
        .filter(|span| !span.is_disabled())
        .collect()
}

/// The outcome of one transaction: the tokens of its writes, in the order they were
/// submitted, and whether it committed. One message per transaction rather than per write, so
/// that a batch of N writes wakes the call manager once, not N times.
#[derive(Debug)]
pub struct Completion<T> {
    pub tokens: Vec<T>,
    pub result: Result<(), WriteError>,
}

/// What a restarted server must pick up again.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Interactions to take up: live ones to end; WRAP_UP ones to wait for only where the
    /// store does not keep them apart in `wrap_ups` (a PostgreSQL takeover's batch).
    /// (Idempotency keys stay in the store: [`Store::idempotency_key`] looks one up.)
    pub open_interactions: Vec<proto::Interaction>,
    /// The stored dialogs of live calls, by interaction id: the connected ones a restart
    /// adopts instead of ending. (A row that does not decode is left out: that call ends.)
    pub dialogs: std::collections::HashMap<String, CallDialogs>,
    /// The WRAP_UP interactions left in the store (SQLite), which stay there: read back only
    /// when a change, a watcher or the wrap-up timeout needs one.
    pub wrap_ups: StoredWrapUps,
}

/// The WRAP_UP interactions a restart found in the store, without reading them: what the
/// wrap-up timeout's sweep ([`Store::wrap_up_page`]) needs to page through them later.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoredWrapUps {
    /// How many there are.
    pub count: u64,
    /// The largest row id among them: the sweep stops there, so that an interaction created
    /// after the restart is never swept.
    pub last_row: i64,
}

/// The stored dialogs' rows (interaction id, encoded), decoded; a row that does not decode
/// (written by another version) is left out with a warning: that call is not adopted.
pub(crate) fn decode_dialogs(
    rows: Vec<(String, String)>,
) -> std::collections::HashMap<String, CallDialogs> {
    rows.into_iter()
        .filter_map(|(id, text)| match CallDialogs::decode(&text) {
            Some(dialogs) => Some((id, dialogs)),
            None => {
                tracing::warn!(interaction = %id, "stored dialogs unreadable: the call is not adopted");
                None
            }
        })
        .collect()
}

/// A page of interactions, newest first.
#[derive(Debug)]
pub struct Page {
    pub interactions: Vec<proto::Interaction>,
    /// Where the next page starts (exclusive), if there is one.
    pub next_before: Option<i64>,
}

/// How often retention looks for COMPLETED interactions past `--retention`: every minute, or
/// every `retention` when that is shorter (at most once a second), so that a short retention
/// is kept as closely as a long one.
pub fn retention_interval(retention: Duration) -> Duration {
    retention.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Group commit: adds to `batch` the writes `ready` has without waiting, up to `max` in all.
fn take_ready<W>(batch: &mut Vec<W>, max: usize, mut ready: impl FnMut() -> Option<W>) {
    while batch.len() < max {
        match ready() {
            Some(write) => batch.push(write),
            None => break,
        }
    }
}

/// One transaction done (`batch`, started at `started`): its figures recorded, and its
/// completion for the call manager, which takes the batch's tokens.
fn completion<T>(
    batch: &mut Vec<Write<T>>,
    started: std::time::Instant,
    result: Result<(), WriteError>,
) -> Completion<T> {
    metrics::histogram!("calldesk_store_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("calldesk_store_batch_size").record(batch.len() as f64);
    Completion {
        tokens: batch.drain(..).map(|w| w.token).collect(),
        result,
    }
}

impl Page {
    /// A page of rows read newest first, `(position, latest event)`: up to `page_size`, read
    /// one beyond it to tell whether another page follows.
    pub(crate) fn newest_first(
        rows: impl IntoIterator<Item = Result<(i64, Option<Vec<u8>>), StoreError>>,
        page_size: usize,
    ) -> Result<Page, StoreError> {
        let mut interactions = Vec::with_capacity(page_size);
        let mut last_row = None;
        let mut more = false;
        for row in rows {
            let (position, latest) = row?;
            if interactions.len() == page_size {
                more = true;
                break;
            }
            interactions.push(snapshot_of(&latest.unwrap_or_default())?);
            last_row = Some(position);
        }
        Ok(Page {
            interactions,
            next_before: if more { last_row } else { None },
        })
    }
}

/// The snapshot inside a stored event: its `interaction`.
pub(crate) fn snapshot_of(payload: &[u8]) -> Result<proto::Interaction, StoreError> {
    use prost::Message;
    snapshot_in(proto::InteractionEvent::decode(payload)?)
}

pub(crate) fn snapshot_in(
    event: proto::InteractionEvent,
) -> Result<proto::Interaction, StoreError> {
    event.interaction.ok_or_else(|| StoreError {
        corrupt: true,
        message: "a stored event has no interaction (or none at all)".into(),
    })
}

/// A handle to the store's reads. Cheap to clone. Writes go through [`WriterHandle`], which
/// only the call manager holds.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::Store),
    Postgres(postgres::Store),
}

/// The connection (or settings) the writer will write with, as `open` returned it.
pub enum WriterConn {
    Sqlite(sqlite::WriterConn),
    Postgres(postgres::WriterConn),
}

/// The sending side of the writer.
pub struct WriterHandle<T> {
    inner: WriterInner<T>,
}

enum WriterInner<T> {
    Sqlite(sqlite::WriterHandle<T>),
    Postgres(postgres::WriterHandle<T>),
}

/// Opens the SQLite store under `data_dir` (see [`sqlite::open`]).
pub fn open(
    data_dir: &Path,
    durability: Durability,
) -> Result<(Store, WriterConn, Recovered), StoreError> {
    let (store, writer, recovered) = sqlite::open(data_dir, durability)?;
    Ok((
        Store {
            backend: Backend::Sqlite(store),
        },
        WriterConn::Sqlite(writer),
        recovered,
    ))
}

/// Opens the PostgreSQL store at `settings.url` and registers this replica with a lease (see
/// [`postgres::open`]).
pub async fn open_postgres(
    settings: postgres::Settings,
) -> Result<(Store, WriterConn, Recovered, postgres::Replica), StoreError> {
    let (store, writer, replica) = postgres::open(settings).await?;
    Ok((
        Store {
            backend: Backend::Postgres(store),
        },
        WriterConn::Postgres(writer),
        Recovered::default(),
        replica,
    ))
}

/// Starts the writer on the connection `open` returned. `capacity` bounds the writes waiting;
/// completions (one per transaction) go to `completions`, which must have room for as many.
/// One transaction takes up to `max_batch` writes ([`MAX_BATCH`]; 1 turns group commit off,
/// which only the benchmark does).
pub fn start_writer<T: Send + Sync + 'static>(
    writer: WriterConn,
    capacity: usize,
    max_batch: usize,
    completions: mpsc::Sender<Completion<T>>,
) -> WriterHandle<T> {
    let inner = match writer {
        WriterConn::Sqlite(w) => {
            WriterInner::Sqlite(sqlite::start_writer(w, capacity, max_batch, completions))
        }
        WriterConn::Postgres(w) => {
            WriterInner::Postgres(postgres::start_writer(w, capacity, max_batch, completions))
        }
    };
    WriterHandle { inner }
}

impl<T: Send + Sync + 'static> WriterHandle<T> {
    /// Queues a write without waiting. Fails when the queue is full or the writer has stopped;
    /// the caller bounds its writes in flight to the capacity, so "full" means "stopped".
    pub fn submit(&self, write: Write<T>) -> Result<(), Write<T>> {
        match &self.inner {
            WriterInner::Sqlite(w) => w.submit(write),
            WriterInner::Postgres(w) => w.submit(write),
        }
    }

    /// Stops the writer after it has written everything queued, and waits for it (blocking:
    /// call it on a blocking thread).
    pub fn close(self) {
        match self.inner {
            WriterInner::Sqlite(w) => w.close(),
            WriterInner::Postgres(w) => w.close(),
        }
    }
}

/// What [`Store::admit_start`] decided about a StartCall before anything is dialed.
#[derive(Debug)]
pub enum Admission {
    /// One process (SQLite): the call manager decides alone, from what it holds.
    Local,
    /// Admitted in the shared store: what it claimed there goes with the call.
    Admitted(Claims),
    /// The request_id was answered before (on any replica): its first response.
    Replay(Box<proto::StartCallResponse>),
    /// The request_id was used before for a different request.
    Reused,
    /// The agent already has `--max-active-calls` live calls or dials, on all replicas.
    TooMany,
    /// Another replica is dialing this request_id right now: ask again shortly.
    InFlightElsewhere,
}

/// The replica that holds a live interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    /// Where its gRPC listener is reached (`host:port`).
    pub address: String,
    /// Whether it is this replica.
    pub is_self: bool,
}

impl Store {
    /// The SQLite store, for what only it has (its integrity check).
    pub fn sqlite(&self) -> Option<&sqlite::Store> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s),
            Backend::Postgres(_) => None,
        }
    }

    /// For a clean stop, before the writer's: SQLite closes its read connections (see
    /// [`sqlite::Store::close_reads`]); nothing with PostgreSQL.
    pub fn close_reads(&self) {
        if let Backend::Sqlite(s) = &self.backend {
            s.close_reads();
        }
    }

    /// Seals and opens ListInteractions' page tokens under the store's key.
    pub fn page_tokens(&self) -> &PageTokens {
        match &self.backend {
            Backend::Sqlite(s) => s.page_tokens(),
            Backend::Postgres(s) => s.page_tokens(),
        }
    }

    /// Whether several replicas share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// What is wrong with the store right now; follow it with [`FaultState::subscribe`].
    pub fn faults(&self) -> &FaultState {
        match &self.backend {
            Backend::Sqlite(s) => s.faults(),
            Backend::Postgres(s) => s.faults(),
        }
    }

    /// One interaction's latest snapshot.
    pub async fn interaction(&self, id: String) -> Result<Option<proto::Interaction>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.interaction(id).await,
            Backend::Postgres(s) => s.interaction(id).await,
        }
    }

    /// An agent's interactions, newest first, before position `before` (exclusive), optionally
    /// in one state.
    pub async fn list(
        &self,
        agent_id: String,
        state: Option<i32>,
        before: Option<i64>,
        page_size: usize,
    ) -> Result<Page, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.list(agent_id, state, before, page_size).await,
            Backend::Postgres(s) => s.list(agent_id, state, before, page_size).await,
        }
    }

    /// An interaction's events with a sequence greater than `after`, in order, at most `limit`.
    pub async fn events_after(
        &self,
        interaction_id: String,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EncodedEvent>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.events_after(interaction_id, after, limit).await,
            Backend::Postgres(s) => s.events_after(interaction_id, after, limit).await,
        }
    }

    /// What Deferred Dial last staged for an agent.
    pub async fn dialpad(&self, agent_id: String) -> Result<Option<proto::Dialpad>, StoreError> {
        Ok(self.staged_dialpad(agent_id).await?.map(|(d, _)| d))
    }

    /// What is staged for the agent, with its stored bytes: DialStaged clears exactly that
    /// staging (re-encoding would not give the same bytes: map fields have no fixed order).
    pub async fn staged_dialpad(
        &self,
        agent_id: String,
    ) -> Result<Option<(proto::Dialpad, StagedDialpad)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.staged_dialpad(agent_id).await,
            Backend::Postgres(s) => s.staged_dialpad(agent_id).await,
        }
    }

    /// Before a StartCall dials (or stages): across replicas, its request_id and the agent's
    /// `--max-active-calls` (`limit`, when it dials). SQLite: [`Admission::Local`].
    pub async fn admit_start(
        &self,
        agent_id: &str,
        key: Option<(&str, &[u8])>,
        limit: Option<u32>,
        hold_for: Duration,
    ) -> Result<Admission, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(Admission::Local),
            Backend::Postgres(s) => s.admit_start(agent_id, key, limit, hold_for).await,
        }
    }

    /// The response a request_id was answered with, if it is unexpired. PostgreSQL only: a
    /// retry of a DialStaged that another replica dialed. None with SQLite, where the call
    /// manager remembers its keys.
    pub async fn answered(
        &self,
        agent_id: &str,
        request_id: &str,
    ) -> Result<Option<proto::StartCallResponse>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(s) => s.answered(agent_id, request_id).await,
        }
    }

    /// The transfer operations' idempotency keys recorded on an interaction, oldest first: the
    /// call manager reads them when it takes up an interaction it did not make (a restart, a
    /// takeover, a WRAP_UP read back) and a transfer operation with a key arrives.
    pub async fn transfer_keys(
        &self,
        interaction_id: String,
    ) -> Result<Vec<TransferKeyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.transfer_keys(interaction_id).await,
            Backend::Postgres(s) => s.transfer_keys(interaction_id).await,
        }
    }

    /// An answered, unexpired idempotency key, for the call manager's look-up of a key it does
    /// not hold. SQLite only: with PostgreSQL, admission ([`Store::admit_start`]) answers
    /// every answered key before the call manager sees the request, so this is None.
    pub async fn idempotency_key(
        &self,
        agent_id: &str,
        request_id: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.idempotency_key(agent_id.to_owned(), request_id.to_owned())
                    .await
            }
            Backend::Postgres(_) => Ok(None),
        }
    }

    /// The ids of the WRAP_UP interactions with a row id in (`after`, `through`], at most
    /// `limit`, in row order, each with its row id: a page of the wrap-up timeout's sweep
    /// after a restart ([`StoredWrapUps`]). SQLite only (a PostgreSQL takeover hands over its
    /// WRAP_UP interactions in batches already): empty with PostgreSQL.
    pub async fn wrap_up_page(
        &self,
        after: i64,
        through: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.wrap_up_page(after, through, limit).await,
            Backend::Postgres(_) => Ok(Vec::new()),
        }
    }

    /// A page of the unexpired idempotency keys after `after` (agent, request_id order), with
    /// their expiries. SQLite only (the call manager's filter of stored keys): empty with
    /// PostgreSQL, where another replica may write any key at any time.
    pub async fn unexpired_keys(
        &self,
        after: (String, String),
        limit: u32,
    ) -> Result<Vec<(String, String, SystemTime)>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.unexpired_keys(after, limit).await,
            Backend::Postgres(_) => Ok(Vec::new()),
        }
    }

    /// The replica that holds a live interaction; None for a COMPLETED or unknown one, and
    /// always with SQLite (this process holds them all).
    pub async fn owner(&self, interaction_id: &str) -> Result<Option<Owner>, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(s) => s.owner(interaction_id).await,
        }
    }

    /// PostgreSQL: the committed events of one interaction, whichever replica wrote them.
    /// None with SQLite, where the call manager's own feed is everything.
    pub fn interaction_feed(&self, interaction_id: &str) -> Option<EventFeed> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(s) => Some(s.fanout().interaction(interaction_id)),
        }
    }

    /// What the store commits from now on (every replica's, with PostgreSQL): the webhooks
    /// follow it to deliver at once.
    pub fn commits(&self) -> tokio::sync::broadcast::Receiver<webhooks::Commit> {
        match &self.backend {
            Backend::Sqlite(s) => s.commits(),
            Backend::Postgres(s) => s.fanout().commits(),
        }
    }

    /// Makes the stored webhook subscriptions exactly these, in one transaction: one that is
    /// gone loses its cursors (its undelivered events are dropped); one that is new, or covers
    /// agents it did not, gets cursors for their live interactions at the latest sequence (it
    /// starts from now); one that no longer covers an agent loses that agent's cursors.
    pub async fn webhook_subscribe(
        &self,
        subscriptions: Vec<webhooks::Subscribed>,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_subscribe(subscriptions).await,
            Backend::Postgres(s) => s.webhook_subscribe(subscriptions).await,
        }
    }

    /// A page of a subscription's cursors (PostgreSQL: those this replica delivers), each with
    /// its interaction's latest sequence: at most `limit`, in interaction id order, after
    /// `after` (from the first with None). Read page by page, a backlog of any size costs the
    /// reader one page of memory.
    pub async fn webhook_cursors(
        &self,
        subscription: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<webhooks::Cursor>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_cursors(subscription, after, limit).await,
            Backend::Postgres(s) => s.webhook_cursors(subscription, after, limit).await,
        }
    }

    /// The subscription's cursor of one interaction, if it has one (PostgreSQL: that this
    /// replica delivers).
    pub async fn webhook_cursor(
        &self,
        subscription: String,
        interaction_id: String,
    ) -> Result<Option<webhooks::Cursor>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_cursor(subscription, interaction_id).await,
            Backend::Postgres(s) => s.webhook_cursor(subscription, interaction_id).await,
        }
    }

    /// Moves cursors, in one durable transaction; for each move, whether its cursor was there
    /// (and, with PostgreSQL, still this replica's).
    pub async fn webhook_move(
        &self,
        moves: Vec<webhooks::CursorMove>,
    ) -> Result<Vec<bool>, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.webhook_move(moves).await,
            Backend::Postgres(s) => s.webhook_move(moves).await,
        }
    }

    /// PostgreSQL: takes over the cursors of replicas that are gone; how many. 0 with SQLite.
    pub async fn webhook_claim(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(0),
            Backend::Postgres(s) => s.webhook_claim().await,
        }
    }

    /// PostgreSQL: the events of all of an agent's interactions committed from now on,
    /// whichever replica wrote them. None with SQLite.
    pub async fn agent_feed(&self, agent_id: &str) -> Option<Result<AgentEventFeed, StoreError>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(s) => Some(s.fanout().agent(agent_id).await.map_err(StoreError::new)),
        }
    }
}
