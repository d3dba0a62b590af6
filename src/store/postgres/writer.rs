//! The PostgreSQL writer: one task on one connection, committing every pending write in one
//! transaction (group commit), fenced by this replica's lease.
//!
//! Each transaction opens with the fence: this replica's row in `replicas`, locked `FOR KEY
//! SHARE` (renewals still go through; a takeover, which deletes the row, waits for the
//! transaction to end) and unexpired. No row: another replica took this one over, and nothing
//! is written, ever again (`StoreFault::Fenced`). Expired: the lease lapsed while PostgreSQL
//! could not be reached; the write fails and is retried once the lease is renewed.
//!
//! Statements are per kind of row, not per write (`unnest` over arrays), so a transaction of
//! a thousand writes is still a handful of statements. The last one is `pg_notify` with the
//! ids of the events, which PostgreSQL delivers at commit, in commit order.
//!
//! A connection lost during COMMIT leaves the outcome unknown; the writer reconnects and looks
//! for the transaction's first event before it reports: what was committed is acknowledged,
//! and the call manager never writes a sequence twice.

use std::{sync::Arc, time::Duration};

use prost::Message;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::{classify, describe, fanout::CHANNEL};
use crate::store::{
    completion, millis, take_ready, Completion, FaultState, IdempotencyRecord, StoreFault, Write,
    WriteError, WriteOp, TRANSFER_KEYS_PER_INTERACTION,
};

/// While writes fail for a reason that may pass, how often the idle writer tries again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A `NOTIFY` payload stays under PostgreSQL's 8,000 bytes.
const NOTIFY_BYTES: usize = 7_000;

/// What the writer connects with.
pub struct WriterConn {
    /// How the writer (re)connects: the URL's settings and its TLS.
    connector: super::Connector,
    /// How logs name the store (no credentials).
    shown: String,
    /// The owner this replica writes as, and whose lease fences its writes.
    node_id: Arc<str>,
    faults: FaultState,
    /// A transaction left open longer than this (the process paused mid-way) is ended by
    /// PostgreSQL, so that a takeover never waits on it for longer.
    lease: Duration,
}

impl WriterConn {
    pub(super) fn new(
        connector: super::Connector,
        shown: String,
        node_id: Arc<str>,
        faults: FaultState,
        lease: Duration,
    ) -> Self {
        Self {
            connector,
            shown,
            node_id,
            faults,
            lease,
        }
    }
}

/// The sending side of the writer task.
pub struct WriterHandle<T> {
    tx: mpsc::Sender<Write<T>>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
}

/// Starts the writer task (see `store::start_writer`).
pub fn start_writer<T: Send + Sync + 'static>(
    writer: WriterConn,
    capacity: usize,
    max_batch: usize,
    completions: mpsc::Sender<Completion<T>>,
) -> WriterHandle<T> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let task = tokio::spawn(run(writer, rx, max_batch.max(1), completions));
    WriterHandle {
        tx,
        task: Some(task),
        runtime: tokio::runtime::Handle::current(),
    }
}

impl<T> WriterHandle<T> {
    pub fn submit(&self, write: Write<T>) -> Result<(), Write<T>> {
        self.tx.try_send(write).map_err(|e| match e {
            mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w) => w,
        })
    }

    /// Stops the writer after what is queued, and waits for it (on a blocking thread).
    pub fn close(mut self) {
        let WriterHandle { tx, task, runtime } = &mut self;
        drop(std::mem::replace(tx, mpsc::channel(1).0));
        if let Some(task) = task.take() {
            let _ = runtime.block_on(task);
        }
    }
}

/// The writer's connection and its prepared statements.
struct Connected {
    client: Client,
    statements: Statements,
}

struct Statements {
    fence: tokio_postgres::Statement,
    create: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    events: tokio_postgres::Statement,
    keys: tokio_postgres::Statement,
    release_reservations: tokio_postgres::Statement,
    release_keys: tokio_postgres::Statement,
    clear_dialpad: tokio_postgres::Statement,
    stage_dialpad: tokio_postgres::Statement,
    save_dialogs: tokio_postgres::Statement,
    forget_dialogs: tokio_postgres::Statement,
    transfer_keys: tokio_postgres::Statement,
    trim_transfer_keys: tokio_postgres::Statement,
    forget_transfer_keys: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
}

async fn connect(writer: &WriterConn) -> Result<Connected, tokio_postgres::Error> {
    let (client, connection) = writer.connector.connect().await?;
    tokio::spawn(connection);
    // Custom plans: the statements are prepared once per connection, often on a new, empty
    // database; a generic plan made then (a sequential scan of `interactions`) would be kept
    // until the first ANALYZE. A custom plan sees the table as it is, and planning costs
    // little beside a batch (BENCHMARKS.md, "Several replicas").
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {}; SET plan_cache_mode = force_custom_plan",
            (writer.lease.as_millis() / 2).max(1)
        ))
        .await?;
    let statements = Statements {
        fence: client
            .prepare(
                "SELECT lease_expires > clock_timestamp() FROM replicas
                 WHERE node_id = $1 FOR KEY SHARE",
            )
            .await?,
        // With the webhooks' cursors of the new interactions, owned by this replica (see
        // store/webhooks.rs): one statement, no round trip more.
        create: client
            .prepare(
                "WITH created AS (
                     INSERT INTO interactions (id, agent_id, state, owner)
                     SELECT u.id, u.agent_id, u.state, $4
                     FROM unnest($1::TEXT[], $2::TEXT[], $3::INTEGER[]) AS u(id, agent_id, state)
                     RETURNING id, agent_id)
                 INSERT INTO webhook_cursors (subscription, interaction_id, delivered, owner)
                 SELECT DISTINCT s.subscription, c.id, 0, $4 FROM created c
                 JOIN webhook_subscriptions s ON s.agent_id IN (c.agent_id, '*')
                 ON CONFLICT DO NOTHING",
            )
            .await?,
        update: client
            .prepare(
                "UPDATE interactions SET state = u.state, complete_time_ms = u.done
                 FROM unnest($1::TEXT[], $2::INTEGER[], $3::BIGINT[]) AS u(id, state, done)
                 WHERE interactions.id = u.id AND interactions.owner = $4",
            )
            .await?,
        events: client
            .prepare(
                "INSERT INTO events (interaction_id, sequence, payload)
                 SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::BYTEA[])",
            )
            .await?,
        keys: client
            .prepare(
                "INSERT INTO idempotency_keys
                 (agent_id, request_id, fingerprint, response, expire_time_ms, owner)
                 SELECT u.a, u.r, u.f, u.resp, u.e, NULL
                 FROM unnest($1::TEXT[], $2::TEXT[], $3::BYTEA[], $4::BYTEA[], $5::BIGINT[])
                     AS u(a, r, f, resp, e)
                 ON CONFLICT (agent_id, request_id) DO UPDATE SET
                     fingerprint = EXCLUDED.fingerprint, response = EXCLUDED.response,
                     expire_time_ms = EXCLUDED.expire_time_ms, owner = NULL",
            )
            .await?,
        release_reservations: client
            .prepare("DELETE FROM dial_reservations WHERE id = ANY($1::TEXT[])")
            .await?,
        release_keys: client
            .prepare(
                "DELETE FROM idempotency_keys k USING unnest($1::TEXT[], $2::TEXT[]) AS u(a, r)
                 WHERE k.agent_id = u.a AND k.request_id = u.r AND k.response IS NULL",
            )
            .await?,
        clear_dialpad: client
            .prepare("DELETE FROM dialpads WHERE agent_id = $1 AND payload = $2")
            .await?,
        stage_dialpad: client
            .prepare(
                "INSERT INTO dialpads (agent_id, payload) VALUES ($1, $2)
                 ON CONFLICT (agent_id) DO UPDATE SET payload = EXCLUDED.payload",
            )
            .await?,
        save_dialogs: client
            .prepare(
                "INSERT INTO call_dialogs (interaction_id, dialogs) VALUES ($1, $2)
                 ON CONFLICT (interaction_id) DO UPDATE SET dialogs = EXCLUDED.dialogs",
            )
            .await?,
        forget_dialogs: client
            .prepare("DELETE FROM call_dialogs WHERE interaction_id = ANY($1::TEXT[])")
            .await?,
        transfer_keys: client
            .prepare(
                "INSERT INTO transfer_keys (interaction_id, sequence, request_id, request)
                 SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[])",
            )
            .await?,
        // The newest TRANSFER_KEYS_PER_INTERACTION of each interaction given stay.
        trim_transfer_keys: client
            .prepare(
                "DELETE FROM transfer_keys t WHERE t.interaction_id = ANY($1::TEXT[])
                 AND t.sequence NOT IN (
                     SELECT sequence FROM transfer_keys k WHERE k.interaction_id = t.interaction_id
                     ORDER BY sequence DESC LIMIT $2)",
            )
            .await?,
        forget_transfer_keys: client
            .prepare("DELETE FROM transfer_keys WHERE interaction_id = ANY($1::TEXT[])")
            .await?,
        notify: client
            .prepare(&format!("SELECT pg_notify('{CHANNEL}', $1)"))
            .await?,
    };
    Ok(Connected { client, statements })
}

async fn run<T: Send + Sync>(
    writer: WriterConn,
    mut rx: mpsc::Receiver<Write<T>>,
    max_batch: usize,
    completions: mpsc::Sender<Completion<T>>,
) {
    let mut connected: Option<Connected> = None;
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        let failing = writer.faults.refusing().is_some() && writer.faults.permanent().is_none();
        let first = if failing {
            match tokio::time::timeout(PROBE_INTERVAL, rx.recv()).await {
                Ok(Some(w)) => w,
                Ok(None) => break,
                Err(_) => {
                    // Idle while failing: is PostgreSQL back, and is the lease ours again?
                    if connected.is_none() {
                        connected = connect(&writer).await.ok();
                    }
                    if let Some(c) = &connected {
                        match fence(c, &writer).await {
                            Ok(()) => {
                                writer.faults.clear(StoreFault::Unreachable);
                                writer.faults.clear(StoreFault::WriteFailed);
                                writer.faults.clear(StoreFault::DiskFull);
                            }
                            Err(Refusal::Broken) => connected = None,
                            Err(_) => {}
                        }
                    }
                    continue;
                }
            }
        } else {
            match rx.recv().await {
                Some(w) => w,
                None => break,
            }
        };
        batch.push(first);
        take_ready(&mut batch, max_batch, || rx.try_recv().ok());
        let started = std::time::Instant::now();
        let spans = super::super::commit_spans(&batch);
        let result = write_batch(&writer, &mut connected, &batch).await;
        drop(spans);
        if completions
            .send(completion(&mut batch, started, result))
            .await
            .is_err()
        {
            // The call manager is gone: nobody waits for the outcome any more.
        }
    }
}

/// Why the fence refused.
enum Refusal {
    /// This replica's row is gone: it was taken over.
    Fenced,
    /// The lease expired (PostgreSQL was out of reach while it should have been renewed).
    Lapsed,
    /// The connection failed.
    Broken,
}

async fn fence(c: &Connected, writer: &WriterConn) -> Result<(), Refusal> {
    match c
        .client
        .query_opt(&c.statements.fence, &[&&*writer.node_id])
        .await
    {
        Ok(Some(row)) if row.get::<_, bool>(0) => Ok(()),
        Ok(Some(_)) => Err(Refusal::Lapsed),
        Ok(None) => Err(Refusal::Fenced),
        Err(_) => Err(Refusal::Broken),
    }
}

/// Commits one batch, keeping the fault set current.
async fn write_batch<T>(
    writer: &WriterConn,
    connected: &mut Option<Connected>,
    batch: &[Write<T>],
) -> Result<(), WriteError> {
    let refuse = |fault: StoreFault, detail: String| {
        writer.faults.set(fault, detail.clone());
        metrics::counter!("calldesk_store_commit_failures_total").increment(1);
        Err(WriteError {
            fault: Some(fault),
            message: detail,
        })
    };
    if let Some((fault, detail)) = writer.faults.permanent() {
        return refuse(fault, detail);
    }
    if connected.is_none() {
        match connect(writer).await {
            Ok(c) => *connected = Some(c),
            Err(e) => {
                return refuse(
                    StoreFault::Unreachable,
                    format!("cannot connect to {}: {}", writer.shown, describe(&e)),
                )
            }
        }
    }
    let Some(c) = connected.as_ref() else {
        return refuse(StoreFault::Unreachable, "no connection".into());
    };
    match commit(c, writer, batch).await {
        Ok(()) => {}
        Err(Failed::Fence(Refusal::Fenced)) => {
            return refuse(
                StoreFault::Fenced,
                format!(
                    "replica {} has no lease in {} any more: another replica took over its \
                     interactions",
                    writer.node_id, writer.shown
                ),
            )
        }
        Err(Failed::Fence(Refusal::Lapsed)) => {
            return refuse(
                StoreFault::Unreachable,
                format!(
                    "the lease of replica {} lapsed; writes wait for its renewal",
                    writer.node_id
                ),
            )
        }
        Err(Failed::Fence(Refusal::Broken)) => {
            *connected = None;
            return refuse(
                StoreFault::Unreachable,
                format!("lost the connection to {}", writer.shown),
            );
        }
        Err(Failed::OwnerMoved) => {
            return refuse(
                StoreFault::Fenced,
                format!(
                    "an interaction replica {} wrote is owned by another replica now",
                    writer.node_id
                ),
            )
        }
        Err(Failed::Statement(e)) => {
            let fault = classify(&e);
            tracing::debug!(
                writes = batch.len(),
                "store commit failed: {}",
                describe(&e)
            );
            if fault == StoreFault::Unreachable || e.is_closed() {
                *connected = None;
            }
            return refuse(
                fault,
                format!("{} (writing {})", describe(&e), writer.shown),
            );
        }
        Err(Failed::Commit(e)) => {
            // Committed or not: only PostgreSQL knows. Ask it on a new connection.
            *connected = None;
            match committed(writer, batch).await {
                Some(true) => {
                    tracing::info!(
                        "the connection broke during COMMIT, and the transaction had committed"
                    );
                }
                Some(false) => {
                    return refuse(
                        StoreFault::Unreachable,
                        format!("{} (committing to {})", describe(&e), writer.shown),
                    )
                }
                None => {
                    // Cannot tell yet: not acknowledged. A retry finds its rows there (the
                    // call manager reads them back) or writes them.
                    return refuse(
                        StoreFault::Unreachable,
                        format!(
                            "{} (committing to {}; the outcome is unknown)",
                            describe(&e),
                            writer.shown
                        ),
                    );
                }
            }
        }
    }
    writer.faults.clear(StoreFault::Unreachable);
    writer.faults.clear(StoreFault::DiskFull);
    writer.faults.clear(StoreFault::WriteFailed);
    Ok(())
}

/// Idempotency rows to upsert, by column.
type KeyColumns<'a> = (
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a [u8]>,
    Vec<Vec<u8>>,
    Vec<i64>,
);

fn put_key<'a>(keys: &mut KeyColumns<'a>, record: &'a Option<Box<IdempotencyRecord>>) {
    if let Some(r) = record {
        keys.0.push(r.agent_id.as_str());
        keys.1.push(r.request_id.as_str());
        keys.2.push(r.fingerprint.as_slice());
        keys.3.push(r.response.encode_to_vec());
        keys.4.push(millis(r.expire_time));
    }
}

enum Failed {
    Fence(Refusal),
    OwnerMoved,
    Statement(tokio_postgres::Error),
    Commit(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Statement(e)
    }
}

/// The rows of one batch in one transaction.
async fn commit<T>(c: &Connected, writer: &WriterConn, batch: &[Write<T>]) -> Result<(), Failed> {
    let s = &c.statements;
    let client = &c.client;
    let mut create = (Vec::new(), Vec::new(), Vec::new());
    let mut update = (Vec::new(), Vec::new(), Vec::new());
    let mut events = (Vec::new(), Vec::new(), Vec::new());
    let mut keys: KeyColumns<'_> = Default::default();
    let mut reservations: Vec<&str> = Vec::new();
    let mut released_keys = (Vec::new(), Vec::new());
    let mut ended: Vec<&str> = Vec::new();
    let mut transfer_keys = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut completed: Vec<&str> = Vec::new();
    let mut notices = Vec::new();
    for write in batch {
        match &write.op {
            WriteOp::Create {
                event,
                payload,
                idempotency,
                reservation,
                ..
            } => {
                let agent = event
                    .interaction
                    .as_ref()
                    .map_or("", |i| i.agent_id.as_str());
                create.0.push(event.interaction_id.as_str());
                create.1.push(agent);
                create.2.push(event.state);
                events.0.push(event.interaction_id.as_str());
                events.1.push(event.sequence as i64);
                events.2.push(&payload[..]);
                notices.push((event.interaction_id.as_str(), event.sequence, agent));
                put_key(&mut keys, idempotency);
                if let Some(r) = reservation {
                    reservations.push(r);
                }
            }
            WriteOp::Append {
                event,
                payload,
                transfer_key,
            } => {
                let agent = event
                    .interaction
                    .as_ref()
                    .map_or("", |i| i.agent_id.as_str());
                let complete_ms = event
                    .interaction
                    .as_ref()
                    .and_then(|i| i.complete_time.as_ref())
                    .map(|t| millis(crate::domain::system_time(t)));
                if event.state != event.previous_state || complete_ms.is_some() {
                    update.0.push(event.interaction_id.as_str());
                    update.1.push(event.state);
                    update.2.push(complete_ms);
                }
                // The call is over: nothing to adopt any more.
                if event.state == crate::proto::InteractionState::WrapUp as i32
                    && event.previous_state != event.state
                {
                    ended.push(event.interaction_id.as_str());
                }
                if let Some(key) = transfer_key {
                    transfer_keys.0.push(event.interaction_id.as_str());
                    transfer_keys.1.push(event.sequence as i64);
                    transfer_keys.2.push(key.request_id.as_str());
                    transfer_keys.3.push(key.request.as_str());
                }
                // COMPLETED: no operation can be retried any more.
                if complete_ms.is_some() {
                    completed.push(event.interaction_id.as_str());
                }
                events.0.push(event.interaction_id.as_str());
                events.1.push(event.sequence as i64);
                events.2.push(&payload[..]);
                notices.push((event.interaction_id.as_str(), event.sequence, agent));
            }
            WriteOp::StageDialpad { idempotency, .. } => put_key(&mut keys, idempotency),
            // In submission order, below.
            WriteOp::SaveDialogs { .. } => {}
            WriteOp::Release(claims) => {
                if let Some(r) = &claims.reservation {
                    reservations.push(r);
                }
                if let Some((agent, request)) = &claims.key {
                    released_keys.0.push(agent.as_str());
                    released_keys.1.push(request.as_str());
                }
            }
        }
    }

    client.batch_execute("BEGIN").await?;
    let written = async {
        fence(c, writer).await.map_err(Failed::Fence)?;
        if !create.0.is_empty() {
            client
                .execute(
                    &s.create,
                    &[&create.0, &create.1, &create.2, &&*writer.node_id],
                )
                .await?;
        }
        if !update.0.is_empty() {
            let updated = client
                .execute(
                    &s.update,
                    &[&update.0, &update.1, &update.2, &&*writer.node_id],
                )
                .await?;
            if updated != update.0.len() as u64 {
                return Err(Failed::OwnerMoved);
            }
        }
        if !events.0.is_empty() {
            client
                .execute(&s.events, &[&events.0, &events.1, &events.2])
                .await?;
        }
        if !keys.0.is_empty() {
            client
                .execute(&s.keys, &[&keys.0, &keys.1, &keys.2, &keys.3, &keys.4])
                .await?;
        }
        if !reservations.is_empty() {
            client
                .execute(&s.release_reservations, &[&reservations])
                .await?;
        }
        if !transfer_keys.0.is_empty() {
            client
                .execute(
                    &s.transfer_keys,
                    &[
                        &transfer_keys.0,
                        &transfer_keys.1,
                        &transfer_keys.2,
                        &transfer_keys.3,
                    ],
                )
                .await?;
            let limit = TRANSFER_KEYS_PER_INTERACTION as i64;
            client
                .execute(&s.trim_transfer_keys, &[&transfer_keys.0, &limit])
                .await?;
        }
        if !completed.is_empty() {
            client
                .execute(&s.forget_transfer_keys, &[&completed])
                .await?;
        }
        if !released_keys.0.is_empty() {
            client
                .execute(&s.release_keys, &[&released_keys.0, &released_keys.1])
                .await?;
        }
        // Dialpads in submission order: a staging and the call that clears it may share a
        // transaction.
        for write in batch {
            match &write.op {
                WriteOp::Create {
                    clear_dialpad: Some(staged),
                    ..
                } => {
                    client
                        .execute(&s.clear_dialpad, &[&staged.agent_id, &staged.payload])
                        .await?;
                }
                WriteOp::StageDialpad {
                    agent_id, dialpad, ..
                } => {
                    client
                        .execute(&s.stage_dialpad, &[agent_id, &dialpad.encode_to_vec()])
                        .await?;
                }
                WriteOp::SaveDialogs {
                    interaction_id,
                    dialogs,
                } => {
                    client
                        .execute(&s.save_dialogs, &[interaction_id, &dialogs.encode()])
                        .await?;
                }
                _ => {}
            }
        }
        // After the saves: a call that ended in this batch keeps none.
        if !ended.is_empty() {
            client.execute(&s.forget_dialogs, &[&ended]).await?;
        }
        let mut payload = String::new();
        for (id, sequence, agent) in notices {
            let line = format!("{id}\t{sequence}\t{agent}\n");
            if payload.len() + line.len() > NOTIFY_BYTES {
                client.execute(&s.notify, &[&payload]).await?;
                payload.clear();
            }
            payload.push_str(&line);
        }
        if !payload.is_empty() {
            client.execute(&s.notify, &[&payload]).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    client.batch_execute("COMMIT").await.map_err(Failed::Commit)
}

/// After a connection broke during COMMIT: whether the batch's first event is in the table
/// (Some(true): the transaction committed). None when PostgreSQL cannot be asked, or the batch
/// had no event to look for.
async fn committed<T>(writer: &WriterConn, batch: &[Write<T>]) -> Option<bool> {
    let (id, sequence) = batch.iter().find_map(|w| match &w.op {
        WriteOp::Create { event, .. } | WriteOp::Append { event, .. } => {
            Some((event.interaction_id.clone(), event.sequence as i64))
        }
        _ => None,
    })?;
    let c = connect(writer).await.ok()?;
    let row = c
        .client
        .query_opt(
            "SELECT 1 FROM events WHERE interaction_id = $1 AND sequence = $2",
            &[&id, &sequence],
        )
        .await
        .ok()?;
    Some(row.is_some())
}
