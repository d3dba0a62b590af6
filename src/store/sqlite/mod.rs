//! The SQLite store: the event log, what each interaction's queries select on, idempotency keys
//! and staged dialpads, in one file under `--data-dir`. The embedded default.
//!
//! Writes go to one writer thread, which takes everything pending and commits it in a single
//! transaction (group commit), then reports each write's outcome on the completion channel.
//! The call manager acknowledges nothing before that report, so an acknowledged change is
//! durable. Reads run on a small pool of connections on tokio's blocking threads; in WAL mode
//! they never wait for the writer and see only committed transactions.
//!
//! Each event is written once, as one row: the `InteractionEvent` exactly as watchers get it
//! (encoded once by the call manager, [`EncodedEvent`]). An interaction's snapshot, as
//! GetInteraction returns it, is the `interaction` of its latest event. The interactions table
//! holds only what queries select on (agent, state, completion time), and an event that does
//! not change the state does not touch it.

mod retention;
pub(super) mod schema;
mod watchdog;
mod webhooks;

pub use retention::{prune, Retention};

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc as std_mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{broadcast, mpsc};

use super::{
    completion, millis, recover_advice, snapshot_in, snapshot_of, take_ready,
    webhooks::{Commit, Committed, COMMIT_FEED_CAPACITY},
    Completion, Durability, FaultState, IdempotencyRecord, Page, PageTokens, Recovered,
    StagedDialpad, StoreError, StoreFault, StoredWrapUps, TransferKeyRecord, Write, WriteError,
    WriteOp, TRANSFER_KEYS_PER_INTERACTION,
};
use crate::{domain::EncodedEvent, proto};

/// The database file's name under the data dir.
pub const DB_FILE: &str = "calldesk.db";

/// How many read connections are kept open for reuse, and how many reads run at once: more
/// would wait for a core on a small machine anyway, and each one beyond the pool cost a
/// blocking thread and a fresh connection (its schema, its page cache). Under 256 StartCalls in
/// flight, every one reading (a wrap-up timer's read-back, a key's look-up), tokio's blocking
/// pool grew to 400 threads and RSS by ~1 KB a call, never given back (BENCHMARKS.md).
const READ_POOL: usize = 4;

/// While writes fail for a reason that may pass (disk full, I/O error), how often the idle
/// writer tries a one-page write to find out whether it has passed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError {
            message: format!("store: {e}"),
            corrupt: is_corrupt(&e),
        }
    }
}

/// Whether SQLite reports the file as damaged.
pub(crate) fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// The fault a failed write stands for.
fn classify(e: &rusqlite::Error) -> StoreFault {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreFault::DiskFull,
        _ if is_corrupt(e) => StoreFault::Corrupt,
        _ => StoreFault::WriteFailed,
    }
}

/// A handle to the store's reads. Cheap to clone. Writes go through [`WriterHandle`], which
/// only the call manager holds.
#[derive(Clone)]
pub struct Store {
    readers: Arc<ReadPool>,
    /// What is wrong with the store; readers raise `Corrupt` when SQLite says so.
    faults: FaultState,
    /// ListInteractions' page tokens, under the key kept in the file.
    page_tokens: PageTokens,
    /// Where webhook subscriptions are written.
    webhooks: webhooks::WebhookWriter,
    /// Webhook cursor moves, for the writer thread.
    cursors: Arc<webhooks::CursorQueue>,
    /// What the writer committed, for the webhooks' deliveries.
    commits: broadcast::Sender<Commit>,
}

/// The connection the writer thread writes on, with what it needs to notice that the file at
/// the store's path is no longer the one it writes.
pub struct WriterConn {
    conn: Connection,
    path: PathBuf,
    /// The file `conn` opened (device, inode).
    file: FileId,
    faults: FaultState,
    /// Where each committed event is announced (when someone follows).
    commits: broadcast::Sender<Commit>,
    /// Webhook cursor moves, committed with the next batch.
    cursors: Arc<webhooks::CursorQueue>,
    /// The read pool's reads under way, for the watchdog.
    reads: Arc<watchdog::ReadClock>,
}

/// A file's identity: (device, inode).
type FileId = (u64, u64);

/// What the writer thread is handed.
enum Job<T> {
    Write(Write<T>),
    /// Webhook cursor moves are waiting (`CursorQueue`): commit them even without a write.
    Wake,
}

/// The sending side of the writer thread.
pub struct WriterHandle<T> {
    /// The only strong reference: dropping it ends the thread (the cursor queue's waker holds
    /// a weak one).
    tx: Arc<std_mpsc::SyncSender<Job<T>>>,
    thread: Option<thread::JoinHandle<()>>,
    /// Watches the writer for stalls and the path for a replaced file.
    watchdog: Option<watchdog::Watchdog>,
}

struct ReadPool {
    path: PathBuf,
    /// Idle connections. The lock is held only to take or return one, never across I/O.
    idle: Mutex<Vec<Connection>>,
    /// Set at shutdown ([`Store::close_reads`]): connections are closed after their read
    /// instead of kept, so that the writer's is the last one open.
    closed: std::sync::atomic::AtomicBool,
    /// The reads under way, which the watchdog times as it does the writer's commits.
    clock: Arc<watchdog::ReadClock>,
    /// A permit per read under way, at most [`READ_POOL`]: the others wait their turn here,
    /// not on a blocking thread of their own.
    turns: Arc<tokio::sync::Semaphore>,
}

/// Opens the store under `data_dir`, checks and migrates its schema, and reads what a restart
/// must recover. A new store is created only where there is no database file at all, and is
/// put in place whole (created aside, then renamed), so that a crash while creating leaves no
/// half-made store. Refuses, untouched, a file that is not a calldesk store (an empty file, one
/// without calldesk's header, another application's), one written by a newer calldesk, and a
/// damaged one (with how to recover). The data dir must exist and be locked by the caller.
pub fn open(
    data_dir: &Path,
    durability: Durability,
) -> Result<(Store, WriterConn, Recovered), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        StoreError::new(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join(DB_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(data_dir, &path)?,
        Err(e) => {
            return Err(StoreError::new(format!(
                "cannot read store {}: {e}",
                path.display()
            )))
        }
    }
    let damaged = |e: StoreError| {
        if e.corrupt {
            StoreError {
                message: format!(
                    "refusing to use {}: the database file is damaged ({}). {}",
                    path.display(),
                    e.message,
                    recover_advice(&path)
                ),
                corrupt: true,
            }
        } else {
            e
        }
    };
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::new(format!("cannot open store {}: {e}", path.display())))?;
    let file = file_id(&path)
        .map_err(|e| StoreError::new(format!("cannot read store {}: {e}", path.display())))?;
    schema::check_and_migrate(&mut conn, &path, false).map_err(damaged)?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )
    .map_err(|e| StoreError::new(format!("cannot configure store {}: {e}", path.display())))?;
    let recovered = recover(&conn).map_err(damaged)?;
    let page_tokens = page_token_key(&conn)
        .and_then(|key| PageTokens::with_key(&key))
        .map_err(damaged)?;
    let faults = FaultState::new(&path);
    let commits = broadcast::channel(COMMIT_FEED_CAPACITY).0;
    let cursors = Arc::new(webhooks::CursorQueue::default());
    let reads = Arc::new(watchdog::ReadClock::default());
    let store = Store {
        readers: Arc::new(ReadPool {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
            closed: Default::default(),
            clock: reads.clone(),
            turns: Arc::new(tokio::sync::Semaphore::new(READ_POOL)),
        }),
        faults: faults.clone(),
        page_tokens,
        webhooks: webhooks::WebhookWriter::new(durability),
        cursors: cursors.clone(),
        commits: commits.clone(),
    };
    let writer = WriterConn {
        conn,
        path,
        file,
        faults,
        commits,
        cursors,
        reads,
    };
    Ok((store, writer, recovered))
}

/// The key page tokens are sealed with: the one in the file, or a new one put there by the
/// first start that finds none.
fn page_token_key(conn: &Connection) -> Result<Vec<u8>, StoreError> {
    const NAME: &str = "page_token_key";
    let stored = conn
        .query_row("SELECT value FROM secrets WHERE name = ?1", [NAME], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .optional()?;
    if let Some(key) = stored {
        return Ok(key);
    }
    let key = PageTokens::new_key()?;
    conn.execute(
        "INSERT INTO secrets (name, value) VALUES (?1, ?2)",
        params![NAME, key.as_slice()],
    )?;
    Ok(key.to_vec())
}

/// Creates a new, empty store at `path`: made whole beside it, then renamed into place.
fn create(data_dir: &Path, path: &Path) -> Result<(), StoreError> {
    let aside = data_dir.join(format!("{DB_FILE}.new"));
    let cannot = |e: &dyn std::fmt::Display| {
        StoreError::new(format!("cannot create store {}: {e}", path.display()))
    };
    // What a crash during an earlier creation left: never a store anyone used.
    for leftover in ["", "-wal", "-shm", "-journal"] {
        let f = data_dir.join(format!("{DB_FILE}.new{leftover}"));
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(cannot(&e)),
        }
    }
    {
        let mut conn = Connection::open_with_flags(
            &aside,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| cannot(&e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| cannot(&e))?;
        schema::check_and_migrate(&mut conn, &aside, true)?;
        // Everything into the one file, so that the rename moves the whole store.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| cannot(&e))?;
        conn.close().map_err(|(_, e)| cannot(&e))?;
    }
    std::fs::rename(&aside, path).map_err(|e| cannot(&e))?;
    for leftover in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(data_dir.join(format!("{DB_FILE}.new{leftover}")));
    }
    // The rename itself must survive a power loss.
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| cannot(&e))?;
    tracing::info!(store = %path.display(), "created a new store");
    Ok(())
}

#[cfg(unix)]
fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> std::io::Result<FileId> {
    std::fs::metadata(path).map(|_| (0, 0))
}

/// Err with the words for an operator when the file at `path` is not `file` any more.
fn same_file(path: &Path, file: FileId) -> Result<(), String> {
    match file_id(path) {
        Ok(now) if now == file => Ok(()),
        Ok(now) => Err(format!(
            "{} is another file now (inode {} on device {}, calldesk writes inode {} on device {})",
            path.display(),
            now.1,
            now.0,
            file.1,
            file.0
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} was deleted (calldesk still writes the deleted file, inode {})",
            path.display(),
            file.1
        )),
        // Cannot tell (a stat that fails for another reason): the write path will say.
        Err(_) => Ok(()),
    }
}

/// Starts the writer thread on the connection `open` returned, and its watchdog. `capacity`
/// bounds the writes waiting; completions (one per transaction) go to `completions`, which
/// must have room for as many. One transaction takes up to `max_batch` writes ([`MAX_BATCH`];
/// 1 turns group commit off, which only the benchmark does).
///
/// A write is refused, never acknowledged, while the store has a permanent fault (corrupt, or
/// the file at its path replaced), and when the file at the path is not the one written any
/// more, checked before and after each commit.
pub fn start_writer<T: Send + 'static>(
    writer: WriterConn,
    capacity: usize,
    max_batch: usize,
    completions: mpsc::Sender<Completion<T>>,
) -> WriterHandle<T> {
    let (tx, rx) = std_mpsc::sync_channel(capacity.max(1));
    let tx = Arc::new(tx);
    let wake = Arc::downgrade(&tx);
    writer.cursors.set_waker(Box::new(move || {
        wake.upgrade().is_some_and(|tx| {
            !matches!(
                tx.try_send(Job::Wake),
                Err(std_mpsc::TrySendError::Disconnected(_))
            )
        })
    }));
    let max_batch = max_batch.max(1);
    // When the commit under way started (ms since the epoch), 0 while idle: for the watchdog.
    let busy_since = Arc::new(AtomicU64::new(0));
    let watchdog = watchdog::Watchdog::start(
        writer.path.clone(),
        writer.file,
        writer.faults.clone(),
        busy_since.clone(),
        writer.reads.clone(),
    );
    let thread = thread::Builder::new()
        .name("calldesk-store-writer".into())
        .spawn(move || writer_loop(writer, rx, max_batch, completions, busy_since))
        .map_err(|e| tracing::error!("cannot start the store writer thread: {e}"))
        .ok();
    WriterHandle {
        tx,
        thread,
        watchdog,
    }
}

impl<T> WriterHandle<T> {
    /// Queues a write without waiting. Fails when the queue is full or the writer has stopped;
    /// the caller bounds its writes in flight to the capacity, so "full" means "stopped".
    pub fn submit(&self, write: Write<T>) -> Result<(), Write<T>> {
        match self.tx.try_send(Job::Write(write)) {
            Err(
                std_mpsc::TrySendError::Full(Job::Write(w))
                | std_mpsc::TrySendError::Disconnected(Job::Write(w)),
            ) => Err(w),
            // Only a write was sent: what comes back is that write.
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Stops the writer after it has written everything queued, checkpoints the WAL into the
    /// database file (so that the data dir is one file), and waits for it.
    pub fn close(mut self) {
        let WriterHandle {
            tx,
            thread,
            watchdog,
        } = &mut self;
        drop(std::mem::replace(tx, Arc::new(std_mpsc::sync_channel(1).0)));
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
        if let Some(w) = watchdog.take() {
            w.stop();
        }
    }
}

fn now_millis() -> u64 {
    millis(SystemTime::now()).max(1) as u64
}

fn writer_loop<T>(
    writer: WriterConn,
    rx: std_mpsc::Receiver<Job<T>>,
    max_batch: usize,
    completions: mpsc::Sender<Completion<T>>,
    busy_since: Arc<AtomicU64>,
) {
    let WriterConn {
        mut conn,
        path,
        file,
        faults,
        commits,
        cursors,
        reads: _,
    } = writer;
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let passing = faults.has(StoreFault::DiskFull) || faults.has(StoreFault::WriteFailed);
        let first = if passing && faults.permanent().is_none() {
            match rx.recv_timeout(PROBE_INTERVAL) {
                Ok(job) => job,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    busy_since.store(now_millis(), Ordering::Relaxed);
                    let probed = probe(&conn);
                    busy_since.store(0, Ordering::Relaxed);
                    faults.clear(StoreFault::Stalled);
                    if probed.is_ok() && same_file(&path, file).is_ok() {
                        faults.clear(StoreFault::DiskFull);
                        faults.clear(StoreFault::WriteFailed);
                    }
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        if let Job::Write(w) = first {
            batch.push(w);
        }
        take_ready(&mut batch, max_batch, || loop {
            match rx.try_recv() {
                Ok(Job::Write(w)) => return Some(w),
                Ok(Job::Wake) => continue,
                Err(_) => return None,
            }
        });
        // The webhooks' cursor moves ride in the same transaction: no fsync of their own, and
        // no second writer contending for SQLite's lock.
        let moves = cursors.take();
        if batch.is_empty() && moves.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        busy_since.store(now_millis(), Ordering::Relaxed);
        let spans = super::commit_spans(&batch);
        let result = write_batch(&mut conn, &batch, &moves, &path, file, &faults);
        drop(spans);
        busy_since.store(0, Ordering::Relaxed);
        faults.clear(StoreFault::Stalled);
        webhooks::answer(moves, &result);
        let result = result.map(|_| ());
        if result.is_ok() {
            announce(&commits, &batch);
        }
        if !batch.is_empty()
            && completions
                .blocking_send(completion(&mut batch, started, result))
                .is_err()
        {
            // The call manager is gone: nobody waits for the outcome any more.
        }
    }
    // A clean stop: everything into the database file, the WAL emptied, so that the data dir
    // can be copied as one file. Not over a file that is damaged or no longer at the path.
    if faults.permanent().is_none() {
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(0) => tracing::debug!(store = %path.display(), "checkpointed the WAL"),
            Ok(_) => tracing::warn!(
                store = %path.display(),
                "the final checkpoint was blocked by a reader; the -wal file stays beside the                  database and is applied at the next start"
            ),
            Err(e) => tracing::warn!(store = %path.display(), "the final checkpoint failed: {e}"),
        }
    }
}

/// Commits one batch, unless the store has a permanent fault or the file at the path is not
/// the one written any more (then nothing is acknowledged), and keeps the fault set current.
fn write_batch<T>(
    conn: &mut Connection,
    batch: &[Write<T>],
    moves: &[webhooks::Queued],
    path: &Path,
    file: FileId,
    faults: &FaultState,
) -> Result<Vec<Vec<bool>>, WriteError> {
    let refuse = |fault: StoreFault, detail: String| {
        faults.set(fault, detail.clone());
        metrics::counter!("calldesk_store_commit_failures_total").increment(1);
        Err(WriteError {
            fault: Some(fault),
            message: detail,
        })
    };
    if let Some((fault, detail)) = faults.permanent() {
        return refuse(fault, detail);
    }
    if let Err(detail) = same_file(path, file) {
        return refuse(StoreFault::Replaced, detail);
    }
    let applied = match commit(conn, batch, moves) {
        Ok(applied) => applied,
        Err(e) => {
            let fault = classify(&e);
            tracing::debug!(writes = batch.len(), "store commit failed: {e}");
            return refuse(fault, format!("{e} (writing {})", path.display()));
        }
    };
    // Committed to the file that was deleted meanwhile: lost at the next start, so not
    // acknowledged either.
    if let Err(detail) = same_file(path, file) {
        return refuse(StoreFault::Replaced, detail);
    }
    faults.clear(StoreFault::DiskFull);
    faults.clear(StoreFault::WriteFailed);
    Ok(applied)
}

/// Tells the commit feed's followers (the webhooks) what the batch committed, with the bytes
/// as written. Nothing when nobody follows.
fn announce<T>(commits: &broadcast::Sender<Commit>, batch: &[Write<T>]) {
    if commits.receiver_count() == 0 {
        return;
    }
    for write in batch {
        if let WriteOp::Create { event, payload, .. } | WriteOp::Append { event, payload, .. } =
            &write.op
        {
            let agent = event
                .interaction
                .as_ref()
                .map_or("", |i| i.agent_id.as_str());
            let _ = commits.send(Commit::Event(Committed {
                interaction_id: event.interaction_id.as_str().into(),
                agent_id: agent.into(),
                sequence: event.sequence,
                event: Some(EncodedEvent {
                    sequence: event.sequence,
                    completed: event.state == proto::InteractionState::Completed as i32,
                    bytes: payload.clone(),
                }),
            }));
        }
    }
}

/// A one-page write (the schema version, rewritten as it is): does a write fit again?
fn probe(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; PRAGMA user_version = {}; COMMIT;",
        schema::SCHEMA_VERSION
    ))
    .inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

fn commit<T>(
    conn: &mut Connection,
    batch: &[Write<T>],
    moves: &[webhooks::Queued],
) -> rusqlite::Result<Vec<Vec<bool>>> {
    // BEGIN and COMMIT as cached statements: `Connection::transaction` parses them again for
    // every batch.
    conn.prepare_cached("BEGIN")?.execute([])?;
    let written = write_all(conn, batch)
        .and_then(|()| webhooks::apply_moves(conn, moves))
        .and_then(|applied| {
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(applied)
        });
    if written.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

/// The rows of one batch, inside the transaction `commit` opened.
fn write_all<T>(conn: &Connection, batch: &[Write<T>]) -> rusqlite::Result<()> {
    let mut insert_interaction = conn.prepare_cached(
        "INSERT INTO interactions (id, agent_id, state, complete_time_ms) VALUES (?1, ?2, ?3, NULL)",
    )?;
    let mut update_interaction = conn.prepare_cached(
        "UPDATE interactions SET state = ?2, complete_time_ms = ?3 WHERE id = ?1",
    )?;
    let mut insert_event = conn.prepare_cached(
        "INSERT INTO events (interaction_id, sequence, payload) VALUES (?1, ?2, ?3)",
    )?;
    let mut upsert_key = conn.prepare_cached(
        "INSERT OR REPLACE INTO idempotency_keys
         (agent_id, request_id, fingerprint, response, expire_time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut clear_staged =
        conn.prepare_cached("DELETE FROM dialpads WHERE agent_id = ?1 AND payload = ?2")?;
    let mut upsert_dialpad =
        conn.prepare_cached("INSERT OR REPLACE INTO dialpads (agent_id, payload) VALUES (?1, ?2)")?;
    let mut create_cursors = conn.prepare_cached(webhooks::CREATE_CURSORS)?;
    let mut save_dialogs = conn.prepare_cached(
        "INSERT OR REPLACE INTO call_dialogs (interaction_id, dialogs) VALUES (?1, ?2)",
    )?;
    let mut forget_dialogs =
        conn.prepare_cached("DELETE FROM call_dialogs WHERE interaction_id = ?1")?;
    let mut insert_transfer_key = conn.prepare_cached(
        "INSERT INTO transfer_keys (interaction_id, sequence, request_id, request)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    // The newest TRANSFER_KEYS_PER_INTERACTION stay.
    let mut trim_transfer_keys = conn.prepare_cached(
        "DELETE FROM transfer_keys WHERE interaction_id = ?1 AND sequence NOT IN (
             SELECT sequence FROM transfer_keys WHERE interaction_id = ?1
             ORDER BY sequence DESC LIMIT ?2)",
    )?;
    let mut forget_transfer_keys =
        conn.prepare_cached("DELETE FROM transfer_keys WHERE interaction_id = ?1")?;
    let mut put_key = |record: &Option<Box<IdempotencyRecord>>| -> rusqlite::Result<()> {
        if let Some(r) = record {
            upsert_key.execute(params![
                r.agent_id,
                r.request_id,
                r.fingerprint,
                r.response.encode_to_vec(),
                millis(r.expire_time)
            ])?;
        }
        Ok(())
    };
    for write in batch {
        match &write.op {
            WriteOp::Create {
                event,
                payload,
                idempotency,
                clear_dialpad,
                ..
            } => {
                if let Some(staged) = clear_dialpad {
                    clear_staged.execute(params![staged.agent_id, staged.payload])?;
                }
                let agent = event.interaction.as_ref().map(|i| i.agent_id.as_str());
                insert_interaction.execute(params![event.interaction_id, agent, event.state])?;
                create_cursors.execute(params![event.interaction_id, agent.unwrap_or("")])?;
                insert_event.execute(params![
                    event.interaction_id,
                    event.sequence as i64,
                    &payload[..]
                ])?;
                put_key(idempotency)?;
            }
            WriteOp::Append {
                event,
                payload,
                transfer_key,
            } => {
                let complete_ms = event
                    .interaction
                    .as_ref()
                    .and_then(|i| i.complete_time.as_ref())
                    .map(|t| millis(crate::domain::system_time(t)));
                // Only the state and the completion time are selected on.
                if event.state != event.previous_state || complete_ms.is_some() {
                    update_interaction.execute(params![
                        event.interaction_id,
                        event.state,
                        complete_ms
                    ])?;
                }
                // The call is over: nothing to adopt any more.
                if event.state == proto::InteractionState::WrapUp as i32
                    && event.previous_state != event.state
                {
                    forget_dialogs.execute(params![event.interaction_id])?;
                }
                insert_event.execute(params![
                    event.interaction_id,
                    event.sequence as i64,
                    &payload[..]
                ])?;
                if let Some(key) = transfer_key {
                    insert_transfer_key.execute(params![
                        event.interaction_id,
                        event.sequence as i64,
                        key.request_id,
                        key.request
                    ])?;
                    trim_transfer_keys.execute(params![
                        event.interaction_id,
                        TRANSFER_KEYS_PER_INTERACTION as i64
                    ])?;
                }
                // COMPLETED: no operation can be retried any more.
                if complete_ms.is_some() {
                    forget_transfer_keys.execute(params![event.interaction_id])?;
                }
            }
            WriteOp::StageDialpad {
                agent_id,
                dialpad,
                idempotency,
            } => {
                upsert_dialpad.execute(params![agent_id, dialpad.encode_to_vec()])?;
                put_key(idempotency)?;
            }
            // Claims are made only in a shared (PostgreSQL) store.
            WriteOp::Release(_) => {}
            WriteOp::SaveDialogs {
                interaction_id,
                dialogs,
            } => {
                save_dialogs.execute(params![interaction_id, dialogs.encode()])?;
            }
        }
    }
    Ok(())
}

/// In a query of `interactions`: the row's latest event, whose `interaction` is its snapshot.
/// A macro, so that `concat!` can splice it into the queries.
macro_rules! latest_event {
    () => {
        "(SELECT payload FROM events WHERE interaction_id = interactions.id
          ORDER BY sequence DESC LIMIT 1)"
    };
}

/// The live interactions a restart ends: not COMPLETED (5) and not WRAP_UP (4), so below
/// WRAP_UP. The WRAP_UP ones stay in the store ([`WRAP_UPS`]).
const LIVE_INTERACTIONS: &str = concat!(
    "SELECT rowid, ",
    latest_event!(),
    " FROM interactions WHERE state != 5 AND state < 4"
);
/// How many WRAP_UP interactions there are, and the last one's row id: read from the partial
/// index alone (it holds the state and the row id), never a snapshot.
const WRAP_UPS: &str =
    "SELECT count(*), coalesce(max(rowid), 0) FROM interactions WHERE state != 5 AND state = 4";
/// A page of WRAP_UP interactions' ids in row order (the wrap-up timeout's sweep).
const WRAP_UP_PAGE: &str = "SELECT rowid, id FROM interactions
     WHERE state != 5 AND state = 4 AND rowid > ?1 AND rowid <= ?2
     ORDER BY rowid LIMIT ?3";
const _: () = assert!(proto::InteractionState::Completed as i32 == 5);
const _: () = assert!(proto::InteractionState::WrapUp as i32 == 4);
const _: () = assert!(proto::InteractionState::Hold as i32 == 3);

fn recover(conn: &Connection) -> Result<Recovered, StoreError> {
    // `state != 5` (COMPLETED), spelled as the partial index `interactions_open` spells it:
    // only then may SQLite read that index instead of every interaction ever stored. A bound
    // parameter, or `state IN (...)`, or an ORDER BY rowid, makes it scan the whole table:
    // 13 s for a million interactions with a cold page cache (BENCHMARKS.md). The WRAP_UP
    // ones are only counted: a million of them read whole held ~1.5 GiB at start-up.
    let mut stmt = conn.prepare(LIVE_INTERACTIONS)?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, Option<Vec<u8>>>(1)?))
    })?;
    let mut live = Vec::new();
    for row in rows {
        let (rowid, latest) = row?;
        live.push((rowid, snapshot_of(&latest.unwrap_or_default())?));
    }
    // In the order they were created, as before the restart.
    live.sort_unstable_by_key(|(rowid, _)| *rowid);
    let (count, last_row) = conn.query_row(WRAP_UPS, [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
    })?;
    // The live calls' dialogs: a few rows (one per connected call at the crash).
    let mut stmt = conn.prepare("SELECT interaction_id, dialogs FROM call_dialogs")?;
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let dialogs = crate::store::decode_dialogs(rows);
    // Idempotency keys stay in the store: the call manager looks each up when it needs it.
    Ok(Recovered {
        open_interactions: live.into_iter().map(|(_, i)| i).collect(),
        dialogs,
        wrap_ups: StoredWrapUps {
            count: count.max(0) as u64,
            last_row,
        },
    })
}

impl Store {
    /// Runs `f` with a read connection on a blocking thread.
    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        // Held by the read itself, so that it is released when the read ends even if its
        // caller went away meanwhile. The semaphore is never closed.
        let turn = pool
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::new(format!("store reads closed: {e}")))?;
        let result = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let _timer = pool.clock.start();
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::new(format!("store read task failed: {e}")))?;
        if let Err(e) = &result {
            if e.corrupt {
                // Damage found by a read stops the writes as well.
                self.faults.set(StoreFault::Corrupt, e.message.clone());
            }
        }
        result
    }

    /// For a clean stop, before the writer's: closes the read connections, so that the
    /// writer's connection is the last one and SQLite, closing it, removes the `-wal` and
    /// `-shm` files (the data dir is then `calldesk.db` alone). Reads still work, each on a
    /// connection of its own.
    pub fn close_reads(&self) {
        self.readers.close();
    }

    /// ListInteractions' page tokens.
    pub fn page_tokens(&self) -> &PageTokens {
        &self.page_tokens
    }

    /// What is wrong with the store right now; follow it with [`FaultState::subscribe`].
    pub fn faults(&self) -> &FaultState {
        &self.faults
    }

    /// What the writer commits from now on.
    pub fn commits(&self) -> broadcast::Receiver<Commit> {
        self.commits.subscribe()
    }

    /// Runs SQLite's check of the whole file now (blocking): Err, naming the file, the damage and
    /// how to recover, when it finds any.
    pub fn check_integrity(&self) -> Result<(), StoreError> {
        let path = &self.readers.path;
        let damage = match integrity_check(path) {
            Ok(problems) if problems.is_empty() => return Ok(()),
            Ok(problems) => problems.join("; "),
            Err(e) if is_corrupt(&e) => e.to_string(),
            Err(e) => {
                return Err(StoreError::new(format!(
                    "cannot check store {}: {e}",
                    path.display()
                )))
            }
        };
        Err(StoreError {
            message: format!(
                "refusing to use {}: SQLite's integrity check found damage ({damage}). {}",
                path.display(),
                recover_advice(path)
            ),
            corrupt: true,
        })
    }

    /// Runs the same check on a thread of its own (it reads the whole file:
    /// seconds to minutes for a large store, too long for start-up). `Checking` holds until it
    /// is done; damage found raises `Corrupt`, which stops every acknowledgement.
    pub fn check_integrity_in_background(&self) {
        let faults = self.faults.clone();
        let path = self.readers.path.clone();
        faults.set(
            StoreFault::Checking,
            "SQLite's integrity check runs in the background after start-up",
        );
        let spawned = thread::Builder::new()
            .name("calldesk-store-check".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match integrity_check(&path) {
                    Ok(problems) if problems.is_empty() => tracing::info!(
                        store = %path.display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "integrity check passed"
                    ),
                    Ok(problems) => {
                        faults.set(
                            StoreFault::Corrupt,
                            format!(
                                "the integrity check of {} found damage: {}",
                                path.display(),
                                problems.join("; ")
                            ),
                        );
                    }
                    Err(e) if is_corrupt(&e) => {
                        faults.set(
                            StoreFault::Corrupt,
                            format!("the integrity check of {} failed: {e}", path.display()),
                        );
                    }
                    Err(e) => tracing::warn!(
                        store = %path.display(),
                        "the integrity check could not run: {e}"
                    ),
                }
                faults.clear(StoreFault::Checking);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the integrity check: {e}");
            self.faults.clear(StoreFault::Checking);
        }
    }

    /// One interaction's latest snapshot.
    pub async fn interaction(&self, id: String) -> Result<Option<proto::Interaction>, StoreError> {
        let latest: Option<proto::InteractionEvent> = self
            .one_message(
                "SELECT payload FROM events WHERE interaction_id = ?1
                 ORDER BY sequence DESC LIMIT 1",
                id,
            )
            .await?;
        latest.map(snapshot_in).transpose()
    }

    /// The transfer keys recorded on an interaction, oldest first.
    pub async fn transfer_keys(&self, id: String) -> Result<Vec<TransferKeyRecord>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT request_id, request FROM transfer_keys WHERE interaction_id = ?1
                 ORDER BY sequence",
            )?;
            let rows = stmt.query_map(params![id], |row| {
                Ok(TransferKeyRecord {
                    request_id: row.get(0)?,
                    request: row.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// A page of the WRAP_UP interactions' ids with a row id in (`after`, `through`].
    pub async fn wrap_up_page(
        &self,
        after: i64,
        through: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(WRAP_UP_PAGE)?;
            let rows = stmt.query_map(params![after, through, limit], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// A page of the unexpired idempotency keys after `after` in key order, at most `limit`,
    /// each with its expiry: the call manager fills its filter of stored keys from them at
    /// start-up (a page per read, so that no read runs long).
    pub async fn unexpired_keys(
        &self,
        after: (String, String),
        limit: u32,
    ) -> Result<Vec<(String, String, SystemTime)>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT agent_id, request_id, expire_time_ms FROM idempotency_keys
                 WHERE (agent_id, request_id) > (?1, ?2) AND expire_time_ms > ?3
                 ORDER BY agent_id, request_id LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![after.0, after.1, millis(SystemTime::now()), limit],
                |row| {
                    let expire_ms = row.get::<_, i64>(2)?;
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        UNIX_EPOCH + Duration::from_millis(expire_ms.max(0) as u64),
                    ))
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// An answered idempotency key that has not expired: the call manager's look-up of a key
    /// it does not hold in memory.
    pub async fn idempotency_key(
        &self,
        agent_id: String,
        request_id: String,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.read(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT fingerprint, response, expire_time_ms FROM idempotency_keys
                     WHERE agent_id = ?1 AND request_id = ?2 AND expire_time_ms > ?3",
                )?
                .query_row(
                    params![agent_id, request_id, millis(SystemTime::now())],
                    |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            row.get::<_, Vec<u8>>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    },
                )
                .optional()?;
            let Some((fingerprint, response, expire_ms)) = row else {
                return Ok(None);
            };
            Ok(Some(IdempotencyRecord {
                agent_id,
                request_id,
                fingerprint,
                response: proto::StartCallResponse::decode(response.as_slice())?,
                expire_time: UNIX_EPOCH + Duration::from_millis(expire_ms.max(0) as u64),
            }))
        })
        .await
    }

    /// The protobuf blob that `sql` (one `?1` parameter, one column) finds for `key`, decoded.
    async fn one_message<M: Message + Default + 'static>(
        &self,
        sql: &'static str,
        key: String,
    ) -> Result<Option<M>, StoreError> {
        Ok(self.one_blob(sql, key).await?.map(|(message, _)| message))
    }

    /// Like `one_message`, with the blob as stored.
    async fn one_blob<M: Message + Default + 'static>(
        &self,
        sql: &'static str,
        key: String,
    ) -> Result<Option<(M, Vec<u8>)>, StoreError> {
        self.read(move |conn| {
            let blob: Option<Vec<u8>> = conn
                .prepare_cached(sql)?
                .query_row(params![key], |r| r.get(0))
                .optional()?;
            match blob {
                Some(blob) => Ok(Some((M::decode(blob.as_slice())?, blob))),
                None => Ok(None),
            }
        })
        .await
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
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT rowid, ",
                latest_event!(),
                " FROM interactions
                 WHERE agent_id = ?1 AND (?2 IS NULL OR state = ?2) AND rowid < ?3
                 ORDER BY rowid DESC LIMIT ?4"
            ))?;
            let rows = stmt.query_map(
                params![
                    agent_id,
                    state,
                    before.unwrap_or(i64::MAX),
                    page_size as i64 + 1
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?)),
            )?;
            Page::newest_first(rows.map(|row| row.map_err(StoreError::from)), page_size)
        })
        .await
    }

    /// An interaction's events with a sequence greater than `after`, in order, at most `limit`.
    pub async fn events_after(
        &self,
        interaction_id: String,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EncodedEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT payload FROM events WHERE interaction_id = ?1 AND sequence > ?2
                 ORDER BY sequence LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    interaction_id,
                    after.min(i64::MAX as u64) as i64,
                    limit as i64
                ],
                |r| r.get::<_, Vec<u8>>(0),
            )?;
            let mut events = Vec::new();
            for row in rows {
                events.push(EncodedEvent::from_stored(row?.into())?);
            }
            Ok(events)
        })
        .await
    }

    /// What is staged for the agent, with its stored bytes: DialStaged clears exactly that
    /// staging (re-encoding would not give the same bytes: map fields have no fixed order).
    pub async fn staged_dialpad(
        &self,
        agent_id: String,
    ) -> Result<Option<(proto::Dialpad, StagedDialpad)>, StoreError> {
        let found: Option<(proto::Dialpad, Vec<u8>)> = self
            .one_blob(
                "SELECT payload FROM dialpads WHERE agent_id = ?1",
                agent_id.clone(),
            )
            .await?;
        Ok(found.map(|(dialpad, payload)| (dialpad, StagedDialpad { agent_id, payload })))
    }
}

/// SQLite's `quick_check` on a read-only connection: the problems it lists (at most 10), none
/// when the file is sound.
///
/// `quick_check` reads every page and checks the B-tree structure and the format of every
/// record: what a damaged page or a torn write breaks. It skips `integrity_check`'s
/// cross-check of each index against its table (a lookup per row), which makes it four times
/// faster: 1.2 s against 4.7 s for 1,000,000 interactions (BENCHMARKS.md), and the store is
/// NOT_SERVING while it runs.
fn integrity_check(path: &Path) -> rusqlite::Result<Vec<String>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let mut stmt = conn.prepare("PRAGMA quick_check(10)")?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(if lines == ["ok"] { Vec::new() } else { lines })
}

impl ReadPool {
    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| {
                StoreError::new(format!("cannot open store {}: {e}", self.path.display()))
            }),
        }
    }

    fn give_back(&self, conn: Connection) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < READ_POOL {
                idle.push(conn);
            }
        }
    }

    /// Closes the idle connections, and every other once its read is done.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let idle = self
            .idle
            .lock()
            .map(|mut idle| std::mem::take(&mut *idle))
            .unwrap_or_default();
        drop(idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .and_then(|mut s| {
                let unbound = vec![0; s.parameter_count()];
                s.query_map(rusqlite::params_from_iter(unbound), |r| {
                    r.get::<_, String>(3)
                })?
                .collect::<Result<_, _>>()
            })
            .expect("query plan")
    }

    /// A restart must not read every interaction ever stored, nor every WRAP_UP one: the
    /// recovery's queries, and the wrap-up sweep's pages, are answered from the partial index
    /// of open interactions, each from its own part of it.
    #[test]
    fn recovery_reads_the_open_interactions_index_not_the_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_store, writer, _) = open(dir.path(), Durability::Normal).expect("open");
        let live = plan(&writer.conn, LIVE_INTERACTIONS);
        assert_eq!(
            live[0],
            "SEARCH interactions USING INDEX interactions_open (state<?)"
        );
        // Each live interaction's snapshot is one seek for its latest event.
        assert!(
            live[1..]
                .iter()
                .all(|step| !step.starts_with("SCAN") && !step.contains("TEMP B-TREE")),
            "{live:?}"
        );
        assert_eq!(
            plan(&writer.conn, WRAP_UPS),
            ["SEARCH interactions USING COVERING INDEX interactions_open (state=?)"]
        );
        assert_eq!(
            plan(&writer.conn, WRAP_UP_PAGE),
            ["SEARCH interactions USING INDEX interactions_open (state=? AND rowid>? AND rowid<?)"]
        );
    }

    /// A restart reads the live interactions whole and only counts the WRAP_UP ones, which the
    /// sweep pages through in row order, up to the last one recovery saw.
    #[tokio::test]
    async fn recovery_counts_the_wrap_ups_and_the_sweep_pages_through_them() {
        use proto::InteractionState::{Completed, Delivered, DeliveryPending, WrapUp};
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let (_store, writer, _) = open(dir.path(), Durability::Normal).expect("open");
            let rows = [
                ("w1", WrapUp),
                ("live1", DeliveryPending),
                ("w2", WrapUp),
                ("done", Completed),
                ("w3", WrapUp),
                ("live2", Delivered),
                ("w4", WrapUp),
            ];
            for (id, state) in rows {
                writer
                    .conn
                    .execute(
                        "INSERT INTO interactions (id, agent_id, state) VALUES (?1, 'a', ?2)",
                        params![id, state as i32],
                    )
                    .expect("interaction");
                writer
                    .conn
                    .execute(
                        "INSERT INTO events (interaction_id, sequence, payload) VALUES (?1, 1, ?2)",
                        params![id, event(id, 1, state).encode_to_vec()],
                    )
                    .expect("event");
            }
        }
        let (store, _writer, recovered) = open(dir.path(), Durability::Normal).expect("reopen");
        let live: Vec<_> = recovered
            .open_interactions
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(live, ["live1", "live2"]);
        assert_eq!(
            recovered.wrap_ups,
            StoredWrapUps {
                count: 4,
                last_row: 7
            }
        );
        let ids = |page: Vec<(i64, String)>| -> Vec<String> {
            page.into_iter().map(|(_, id)| id).collect()
        };
        let first = store.wrap_up_page(0, 7, 2).await.expect("page");
        assert_eq!(first.last().map(|(row, _)| *row), Some(3));
        assert_eq!(ids(first), ["w1", "w2"]);
        assert_eq!(
            ids(store.wrap_up_page(3, 7, 2).await.expect("page")),
            ["w3", "w4"]
        );
        // Up to `through` only: a later WRAP_UP is not the sweep's.
        assert_eq!(
            ids(store.wrap_up_page(0, 6, 10).await.expect("page")),
            ["w1", "w2", "w3"]
        );
    }

    fn event(id: &str, sequence: u64, state: proto::InteractionState) -> proto::InteractionEvent {
        proto::InteractionEvent {
            interaction_id: id.into(),
            sequence,
            state: state as i32,
            interaction: Some(proto::Interaction {
                id: id.into(),
                agent_id: "agent-1".into(),
                state: state as i32,
                sequence,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A call's dialogs are kept from their save until the transaction that writes its end,
    /// and a restart reads them back.
    #[test]
    fn dialogs_are_kept_while_the_call_is_live_and_deleted_with_its_end() {
        use crate::domain::dialog::CallDialogs;
        use proto::InteractionState::{Delivered, DeliveryPending, WrapUp};
        let dir = tempfile::tempdir().expect("temp dir");
        let (_store, mut writer, _) = open(dir.path(), Durability::Normal).expect("open");
        let event = |sequence, previous: proto::InteractionState, state| {
            let mut e = event("i1", sequence, state);
            e.previous_state = previous as i32;
            let e = Arc::new(e);
            (bytes::Bytes::from(e.encode_to_vec()), e)
        };
        let write = |op| Write {
            token: (),
            op,
            span: tracing::Span::none(),
        };
        let (payload, created) = event(1, DeliveryPending, DeliveryPending);
        let create = WriteOp::Create {
            event: created,
            payload,
            idempotency: None,
            clear_dialpad: None,
            reservation: None,
        };
        let (payload, connected) = event(2, DeliveryPending, Delivered);
        let dialogs = CallDialogs {
            legs: vec![],
            held: true,
            pending: vec![],
        };
        let save = WriteOp::SaveDialogs {
            interaction_id: "i1".into(),
            dialogs: Box::new(dialogs.clone()),
        };
        let batch = [
            write(create),
            write(WriteOp::Append {
                event: connected,
                payload,
                transfer_key: None,
            }),
            write(save),
        ];
        commit(&mut writer.conn, &batch, &[]).expect("commit");
        let recovered = recover(&writer.conn).expect("recover");
        assert_eq!(recovered.dialogs.get("i1"), Some(&dialogs));

        let (payload, ended) = event(3, Delivered, WrapUp);
        let end = [write(WriteOp::Append {
            event: ended,
            payload,
            transfer_key: None,
        })];
        commit(&mut writer.conn, &end, &[]).expect("commit");
        assert!(recover(&writer.conn).expect("recover").dialogs.is_empty());
    }

    /// A transfer key is written with its event, the newest 16 are kept, and COMPLETED
    /// deletes them.
    #[tokio::test]
    async fn transfer_keys_are_kept_with_their_events_until_completed() {
        use proto::InteractionState::{Completed, Delivered, WrapUp};
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, mut writer, _) = open(dir.path(), Durability::Normal).expect("open");
        let append = |sequence: u64, state: proto::InteractionState| {
            let mut e = event("i1", sequence, state);
            e.previous_state = state as i32;
            let e = Arc::new(e);
            Write {
                token: (),
                op: WriteOp::Append {
                    payload: bytes::Bytes::from(e.encode_to_vec()),
                    event: e,
                    transfer_key: Some(Box::new(TransferKeyRecord {
                        request_id: format!("k{sequence}"),
                        request: format!("ConsultCall +1202555{sequence:04}"),
                    })),
                },
                span: tracing::Span::none(),
            }
        };
        let batch: Vec<_> = (1..=19).map(|n| append(n, Delivered)).collect();
        commit(&mut writer.conn, &batch, &[]).expect("commit");
        commit(&mut writer.conn, &[append(20, WrapUp)], &[]).expect("commit");
        let keys = store.transfer_keys("i1".into()).await.expect("read");
        let ids: Vec<_> = keys.iter().map(|k| k.request_id.as_str()).collect();
        // The newest 16, oldest first: k1 … k4 went.
        assert_eq!(keys.len(), TRANSFER_KEYS_PER_INTERACTION);
        assert_eq!((ids[0], ids[15]), ("k5", "k20"));
        assert_eq!(keys[15].request, "ConsultCall +12025550020");

        let mut done = event("i1", 21, Completed);
        done.previous_state = WrapUp as i32;
        if let Some(i) = done.interaction.as_mut() {
            i.complete_time = Some(pbjson_types::Timestamp {
                seconds: 1,
                nanos: 0,
            });
        }
        let done = Arc::new(done);
        let complete = [Write {
            token: (),
            op: WriteOp::Append {
                payload: bytes::Bytes::from(done.encode_to_vec()),
                event: done,
                transfer_key: None,
            },
            span: tracing::Span::none(),
        }];
        commit(&mut writer.conn, &complete, &[]).expect("commit");
        assert!(store
            .transfer_keys("i1".into())
            .await
            .expect("read")
            .is_empty());
    }

    /// A store written by the first schema (a snapshot column beside the events) opens, and
    /// reads the same: snapshots now come from each interaction's latest event.
    #[tokio::test]
    async fn a_version_1_store_is_migrated_and_reads_the_same() {
        use proto::InteractionState::{Completed, Delivered, DeliveryPending, WrapUp};
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("create");
            conn.execute_batch(schema::MIGRATIONS[0]).expect("schema 1");
            conn.pragma_update(None, "application_id", schema::APPLICATION_ID)
                .expect("header");
            conn.pragma_update(None, "user_version", 1)
                .expect("version");
            for (id, states) in [
                ("i-open", &[DeliveryPending, Delivered][..]),
                ("i-done", &[DeliveryPending, WrapUp, Completed][..]),
            ] {
                let events: Vec<_> = states
                    .iter()
                    .enumerate()
                    .map(|(n, state)| event(id, n as u64 + 1, *state))
                    .collect();
                for e in &events {
                    conn.execute(
                        "INSERT INTO events (interaction_id, sequence, payload) VALUES (?1, ?2, ?3)",
                        params![id, e.sequence as i64, e.encode_to_vec()],
                    )
                    .expect("event");
                }
                let last = events.last().expect("events");
                conn.execute(
                    "INSERT INTO interactions (id, agent_id, state, complete_time_ms, snapshot)
                     VALUES (?1, 'agent-1', ?2, NULL, ?3)",
                    params![
                        id,
                        last.state,
                        last.interaction.as_ref().map(Message::encode_to_vec)
                    ],
                )
                .expect("interaction");
            }
        }
        let (store, writer, recovered) = open(dir.path(), Durability::Normal).expect("migrate");
        let version: i32 = writer
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, schema::SCHEMA_VERSION);
        let open_ids: Vec<_> = recovered
            .open_interactions
            .iter()
            .map(|i| (i.id.as_str(), i.state, i.sequence))
            .collect();
        assert_eq!(open_ids, [("i-open", Delivered as i32, 2)]);
        let done = store.interaction("i-done".into()).await.expect("read");
        assert_eq!(
            done.map(|i| (i.state, i.sequence)),
            Some((Completed as i32, 3))
        );
        let page = store
            .list("agent-1".into(), None, None, 10)
            .await
            .expect("list");
        let listed: Vec<_> = page.interactions.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(listed, ["i-done", "i-open"]);
        let history = store
            .events_after("i-done".into(), 1, 10)
            .await
            .expect("history");
        let seen: Vec<_> = history.iter().map(|e| (e.sequence, e.completed)).collect();
        assert_eq!(seen, [(2, false), (3, true)]);
    }
}
