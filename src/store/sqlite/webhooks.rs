//! The SQLite side of status callbacks (`store/webhooks.rs`): subscriptions and cursors.
//!
//! Cursor moves go to the writer thread ([`CursorQueue`]), which commits them in the
//! transaction of its next batch of events (or alone, woken for them): a moved cursor is as
//! durable as an event, shares its fsync, and no second writer contends for SQLite's lock
//! (whose busy handler sleeps in steps of milliseconds). Registering subscriptions, which is
//! rare, uses a connection of its own (as retention's deletes do), in a `BEGIN IMMEDIATE`
//! transaction that the writer waits for through the busy timeout.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::{Store, StoreError};
use crate::store::{
    webhooks::{Agents, Cursor, CursorMove, Subscribed},
    Durability,
};

/// Moves handed to the writer thread, and where their outcome goes.
pub(super) type Queued = (
    Vec<CursorMove>,
    oneshot::Sender<Result<Vec<bool>, StoreError>>,
);

/// Wakes the writer thread; false once it is gone.
type Waker = Box<dyn Fn() -> bool + Send + Sync>;

/// Cursor moves waiting for the writer thread. At most one batch per caller is waiting (the
/// webhooks' cursor writer awaits each), so it stays small.
#[derive(Default)]
pub(super) struct CursorQueue {
    pending: Mutex<Vec<Queued>>,
    /// Set when the writer starts: wakes it for moves when no write comes.
    wake: Mutex<Option<Waker>>,
}

impl CursorQueue {
    pub(super) fn set_waker(&self, wake: Waker) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    /// Everything waiting (for the writer thread's next transaction).
    pub(super) fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn submit(&self, moves: Vec<CursorMove>) -> Result<Vec<bool>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((moves, reply));
        let woken = self
            .wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|wake| wake());
        if !woken {
            self.take();
            return Err(StoreError::new("store: the writer has stopped"));
        }
        answer
            .await
            .map_err(|_| StoreError::new("store: the writer has stopped"))?
    }
}

/// In the writer's transaction: the queued moves; for each, whether its cursor was there.
pub(super) fn apply_moves(
    conn: &Connection,
    queued: &[Queued],
) -> rusqlite::Result<Vec<Vec<bool>>> {
    if queued.is_empty() {
        return Ok(Vec::new());
    }
    let mut advance = conn.prepare_cached(
        "UPDATE webhook_cursors SET delivered = max(delivered, ?3)
         WHERE subscription = ?1 AND interaction_id = ?2",
    )?;
    let mut finish = conn.prepare_cached(
        "DELETE FROM webhook_cursors WHERE subscription = ?1 AND interaction_id = ?2",
    )?;
    let mut outcomes = Vec::with_capacity(queued.len());
    for (moves, _) in queued {
        let mut applied = Vec::with_capacity(moves.len());
        for m in moves {
            let changed = match m {
                CursorMove::Advance {
                    subscription,
                    interaction_id,
                    delivered,
                } => advance.execute(params![
                    &**subscription,
                    &**interaction_id,
                    (*delivered).min(i64::MAX as u64) as i64
                ])?,
                CursorMove::Finish {
                    subscription,
                    interaction_id,
                } => finish.execute(params![&**subscription, &**interaction_id])?,
            };
            applied.push(changed == 1);
        }
        outcomes.push(applied);
    }
    Ok(outcomes)
}

/// Tells each queued batch how its transaction went.
pub(super) fn answer(
    queued: Vec<Queued>,
    result: &Result<Vec<Vec<bool>>, crate::store::WriteError>,
) {
    match result {
        Ok(outcomes) => {
            for ((_, reply), applied) in queued.into_iter().zip(outcomes.iter().cloned()) {
                let _ = reply.send(Ok(applied));
            }
        }
        Err(e) => {
            for (_, reply) in queued {
                let _ = reply.send(Err(StoreError::new(e.message.clone())));
            }
        }
    }
}

/// How long registering subscriptions waits for the call manager's writer at most.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection cursors and subscriptions are written on, opened at first use.
#[derive(Clone)]
pub(super) struct WebhookWriter {
    conn: Arc<Mutex<Option<Connection>>>,
    durability: Durability,
}

impl WebhookWriter {
    pub(super) fn new(durability: Durability) -> Self {
        Self {
            conn: Arc::new(Mutex::new(None)),
            durability,
        }
    }
}

/// In `interactions i`: the interaction's latest sequence.
const LATEST: &str = "(SELECT max(e.sequence) FROM events e WHERE e.interaction_id = i.id)";

impl Store {
    /// Runs `f` on the cursors' connection, on a blocking thread.
    async fn write_webhooks<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let writer = self.webhooks.clone();
        let path = self.readers.path.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = writer.conn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                let conn = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| {
                    StoreError::new(format!("cannot open store {}: {e}", path.display()))
                })?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn.pragma_update(
                    None,
                    "synchronous",
                    match writer.durability {
                        Durability::Full => "FULL",
                        Durability::Normal => "NORMAL",
                    },
                )?;
                *guard = Some(conn);
            }
            match guard.as_mut() {
                Some(conn) => f(conn),
                None => Err(StoreError::new("store: no connection for webhooks")),
            }
        })
        .await
        .map_err(|e| StoreError::new(format!("store webhook task failed: {e}")))?;
        if let Err(e) = &result {
            if e.corrupt {
                self.faults
                    .set(crate::store::StoreFault::Corrupt, e.message.clone());
            }
        }
        result
    }

    /// Registers the subscriptions (see `Store::webhook_subscribe`).
    pub async fn webhook_subscribe(
        &self,
        subscriptions: Vec<Subscribed>,
    ) -> Result<(), StoreError> {
        self.write_webhooks(move |conn| subscribe(conn, &subscriptions))
            .await
    }

    /// A page of a subscription's cursors: at most `limit`, in interaction id order, after
    /// `after` (from the first with None).
    pub async fn webhook_cursors(
        &self,
        subscription: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Cursor>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.interaction_id, c.delivered,
                        (SELECT max(e.sequence) FROM events e
                         WHERE e.interaction_id = c.interaction_id)
                 FROM webhook_cursors c WHERE c.subscription = ?1 AND c.interaction_id > ?2
                 ORDER BY c.interaction_id LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    subscription,
                    after.unwrap_or_default(),
                    limit.min(i64::MAX as usize) as i64
                ],
                cursor_row,
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// One cursor, if the subscription has one for the interaction.
    pub async fn webhook_cursor(
        &self,
        subscription: String,
        interaction_id: String,
    ) -> Result<Option<Cursor>, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT c.interaction_id, c.delivered,
                            (SELECT max(e.sequence) FROM events e
                             WHERE e.interaction_id = c.interaction_id)
                     FROM webhook_cursors c WHERE c.subscription = ?1 AND c.interaction_id = ?2",
                )?
                .query_row(params![subscription, interaction_id], cursor_row)
                .optional()?)
        })
        .await
    }

    /// Applies the moves in the writer's next transaction; for each, whether its cursor was
    /// there.
    pub async fn webhook_move(&self, moves: Vec<CursorMove>) -> Result<Vec<bool>, StoreError> {
        self.cursors.submit(moves).await
    }
}

fn cursor_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Cursor> {
    Ok(Cursor {
        interaction_id: r.get(0)?,
        delivered: r.get::<_, i64>(1)?.max(0) as u64,
        latest: r.get::<_, Option<i64>>(2)?.map(|s| s.max(0) as u64),
    })
}

/// Makes the stored subscriptions exactly `subscriptions`, in one transaction: a subscription
/// no longer listed loses its cursors; one new, or covering new agents, gets cursors for the
/// live interactions of those agents at their latest sequence; one that no longer covers an
/// agent loses that agent's cursors.
fn subscribe(conn: &mut Connection, subscriptions: &[Subscribed]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut stored: HashMap<String, Vec<String>> = HashMap::new();
    {
        let mut stmt = tx.prepare("SELECT subscription, agent_id FROM webhook_subscriptions")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (name, agent) = row?;
            stored.entry(name).or_default().push(agent);
        }
    }
    let stored: HashMap<String, Agents> = stored
        .into_iter()
        .map(|(name, rows)| (name, Agents::from_rows(rows)))
        .collect();
    for name in stored.keys() {
        if !subscriptions.iter().any(|s| &s.name == name) {
            tx.execute(
                "DELETE FROM webhook_subscriptions WHERE subscription = ?1",
                params![name],
            )?;
            tx.execute(
                "DELETE FROM webhook_cursors WHERE subscription = ?1",
                params![name],
            )?;
        }
    }
    let changed: Vec<&Subscribed> = subscriptions
        .iter()
        .filter(|s| stored.get(&s.name) != Some(&s.agents))
        .collect();
    if changed.is_empty() {
        tx.commit()?;
        return Ok(());
    }
    // The live interactions (the partial index `interactions_open`), whose next events a
    // newly covering subscription delivers.
    let open: Vec<(String, String, i64)> = tx
        .prepare(&format!(
            "SELECT i.id, i.agent_id, {LATEST} FROM interactions i WHERE state != 5"
        ))?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<i64>>(2)?))
        })?
        .filter_map(|row| match row {
            Ok((id, agent, Some(latest))) => Some(Ok((id, agent, latest))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    for sub in changed {
        let before = stored.get(&sub.name);
        if before.is_some() {
            // The agents it no longer covers lose their cursors.
            let cursors: Vec<(String, Option<String>)> = tx
                .prepare(
                    "SELECT c.interaction_id, i.agent_id FROM webhook_cursors c
                     LEFT JOIN interactions i ON i.id = c.interaction_id
                     WHERE c.subscription = ?1",
                )?
                .query_map(params![sub.name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, agent) in cursors {
                if agent.is_some_and(|a| !sub.agents.covers(&a)) {
                    tx.execute(
                        "DELETE FROM webhook_cursors WHERE subscription = ?1 AND interaction_id = ?2",
                        params![sub.name, id],
                    )?;
                }
            }
        }
        let mut seed = tx.prepare_cached(
            "INSERT OR IGNORE INTO webhook_cursors (subscription, interaction_id, delivered)
             VALUES (?1, ?2, ?3)",
        )?;
        for (id, agent, latest) in &open {
            if sub.agents.newly_covers(before, agent) {
                seed.execute(params![sub.name, id, latest])?;
            }
        }
        drop(seed);
        tx.execute(
            "DELETE FROM webhook_subscriptions WHERE subscription = ?1",
            params![sub.name],
        )?;
        for agent in sub.agents.rows() {
            tx.execute(
                "INSERT INTO webhook_subscriptions (agent_id, subscription) VALUES (?1, ?2)",
                params![agent, sub.name],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// In the writer's transaction that creates an interaction: a cursor at 0 for each
/// subscription that covers its agent.
pub(super) const CREATE_CURSORS: &str =
    "INSERT OR IGNORE INTO webhook_cursors (subscription, interaction_id, delivered)
     SELECT subscription, ?1, 0 FROM webhook_subscriptions WHERE agent_id IN (?2, '*')";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        domain::EncodedEvent,
        proto,
        store::{
            sqlite::{open, start_writer},
            webhooks::Commit,
            Write, WriteOp,
        },
    };

    fn created(id: &str, agent: &str) -> WriteOp {
        let event = proto::InteractionEvent {
            interaction_id: id.into(),
            sequence: 1,
            state: proto::InteractionState::DeliveryPending as i32,
            interaction: Some(proto::Interaction {
                id: id.into(),
                agent_id: agent.into(),
                state: proto::InteractionState::DeliveryPending as i32,
                sequence: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let payload = EncodedEvent::encode(&event).bytes;
        WriteOp::Create {
            event: Arc::new(event),
            payload,
            idempotency: None,
            clear_dialpad: None,
            reservation: None,
        }
    }

    fn subscribed(name: &str, agents: Agents) -> Subscribed {
        Subscribed {
            name: name.into(),
            agents,
        }
    }

    fn delivered(cursors: &[Cursor]) -> Vec<(&str, u64, Option<u64>)> {
        let mut seen: Vec<_> = cursors
            .iter()
            .map(|c| (c.interaction_id.as_str(), c.delivered, c.latest))
            .collect();
        seen.sort();
        seen
    }

    /// The writer gives a new interaction a cursor for each subscription covering its agent,
    /// in its own transaction; a subscription made later starts at the latest sequence; one
    /// that stops covering an agent, or goes, loses the cursors.
    #[tokio::test]
    async fn cursors_are_made_with_the_interaction_and_follow_the_subscriptions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, writer, _) = open(dir.path(), Durability::Normal).expect("open");
        let (done_tx, mut done) = tokio::sync::mpsc::channel(16);
        let writer = start_writer(writer, 16, 16, done_tx);
        let mut commits = store.commits();
        let write = |op| {
            writer
                .submit(Write {
                    token: (),
                    op,
                    span: tracing::Span::none(),
                })
                .map_err(|_| ())
                .expect("submit")
        };

        write(created("i-before", "alice"));
        assert!(done.recv().await.expect("commit").result.is_ok());
        store
            .webhook_subscribe(vec![subscribed("crm", Agents::All)])
            .await
            .expect("subscribe");
        let crm = store
            .webhook_cursors("crm".into(), None, usize::MAX)
            .await
            .expect("cursors");
        assert_eq!(delivered(&crm), [("i-before", 1, Some(1))], "from now");

        write(created("i-after", "bob"));
        assert!(done.recv().await.expect("commit").result.is_ok());
        let crm = store
            .webhook_cursors("crm".into(), None, usize::MAX)
            .await
            .expect("cursors");
        assert_eq!(
            delivered(&crm),
            [("i-after", 0, Some(1)), ("i-before", 1, Some(1))]
        );
        // Page by page, in interaction id order.
        let first = store
            .webhook_cursors("crm".into(), None, 1)
            .await
            .expect("page");
        assert_eq!(delivered(&first), [("i-after", 0, Some(1))]);
        let second = store
            .webhook_cursors("crm".into(), Some("i-after".into()), 1)
            .await
            .expect("page");
        assert_eq!(delivered(&second), [("i-before", 1, Some(1))]);
        assert!(store
            .webhook_cursors("crm".into(), Some("i-before".into()), 1)
            .await
            .expect("page")
            .is_empty());
        // The feed announced both commits, with the bytes written.
        for id in ["i-before", "i-after"] {
            match commits.recv().await.expect("feed") {
                Commit::Event(c) => {
                    assert_eq!((&*c.interaction_id, c.sequence), (id, 1));
                    assert!(c
                        .event
                        .is_some_and(|e| e.sequence == 1 && !e.bytes.is_empty()));
                }
                Commit::Missed => panic!("SQLite misses nothing"),
            }
        }

        // Only alice now: bob's cursor goes; a second subscription for bob starts from now.
        store
            .webhook_subscribe(vec![
                subscribed("crm", Agents::Only(vec!["alice".into()])),
                subscribed("bobs", Agents::Only(vec!["bob".into()])),
            ])
            .await
            .expect("resubscribe");
        let crm = store
            .webhook_cursors("crm".into(), None, usize::MAX)
            .await
            .expect("cursors");
        assert_eq!(delivered(&crm), [("i-before", 1, Some(1))]);
        let bobs = store
            .webhook_cursors("bobs".into(), None, usize::MAX)
            .await
            .expect("cursors");
        assert_eq!(delivered(&bobs), [("i-after", 1, Some(1))]);

        let moved = store
            .webhook_move(vec![
                CursorMove::Advance {
                    subscription: "bobs".into(),
                    interaction_id: "i-after".into(),
                    delivered: 1,
                },
                CursorMove::Finish {
                    subscription: "crm".into(),
                    interaction_id: "i-before".into(),
                },
                CursorMove::Advance {
                    subscription: "crm".into(),
                    interaction_id: "i-after".into(),
                    delivered: 1,
                },
            ])
            .await
            .expect("move");
        assert_eq!(moved, [true, true, false]);
        assert!(store
            .webhook_cursor("crm".into(), "i-before".into())
            .await
            .expect("cursor")
            .is_none());

        store.webhook_subscribe(vec![]).await.expect("unsubscribe");
        assert!(store
            .webhook_cursors("bobs".into(), None, usize::MAX)
            .await
            .expect("cursors")
            .is_empty());
        write(created("i-unwatched", "bob"));
        assert!(done.recv().await.expect("commit").result.is_ok());
        assert!(store
            .webhook_cursors("bobs".into(), None, usize::MAX)
            .await
            .expect("cursors")
            .is_empty());
        tokio::task::spawn_blocking(move || writer.close())
            .await
            .expect("close");
        // The moves ride in the writer's transactions: without a writer they fail (and the
        // closed writer's thread did end, though the queue's waker outlives its handle).
        let stopped = store
            .webhook_move(vec![CursorMove::Finish {
                subscription: "crm".into(),
                interaction_id: "i-unwatched".into(),
            }])
            .await;
        assert!(stopped.is_err(), "{stopped:?}");
    }
}
