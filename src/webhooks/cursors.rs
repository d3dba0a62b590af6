//! Cursor moves, group-committed: every subscription's deliveries hand their moves to one
//! task, which commits whatever is pending in one store transaction and answers each.
//!
//! A delivery waits for its move to be durable before it sends the interaction's next event:
//! after a crash it resumes from the stored cursor, so only the request that was in flight can
//! be sent twice. Batching keeps that wait to one commit shared by everything delivered
//! meanwhile (one fsync for a thousand deliveries, not a thousand).

use tokio::sync::{mpsc, oneshot};

use crate::store::{webhooks::CursorMove, Store};

/// Moves one transaction takes at most.
const MAX_BATCH: usize = 1024;
/// Moves waiting at most; a delivery that finds it full waits (backpressure).
const CAPACITY: usize = 4096;

/// What a move came to: whether the cursor was there (and, with PostgreSQL, still this
/// replica's), or why the store could not say.
pub type Moved = Result<bool, String>;

type Pending = (CursorMove, oneshot::Sender<Moved>);

/// The sending side; the task ends when every clone is dropped.
#[derive(Clone)]
pub struct CursorWriter {
    tx: mpsc::Sender<Pending>,
}

impl CursorWriter {
    /// Starts the committing task.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        tokio::spawn(commit_batches(store, rx));
        Self { tx }
    }

    /// Commits one move (with whatever else is pending) and says how it went.
    pub async fn apply(&self, m: CursorMove) -> Moved {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((m, reply))
            .await
            .map_err(|_| "the cursor writer stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the cursor writer stopped".to_owned())?
    }
}

async fn commit_batches(store: Store, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let (moves, replies): (Vec<CursorMove>, Vec<oneshot::Sender<Moved>>) =
            batch.drain(..).unzip();
        match store.webhook_move(moves).await {
            Ok(applied) => {
                for (reply, applied) in replies.into_iter().zip(applied) {
                    let _ = reply.send(Ok(applied));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.message.clone()));
                }
            }
        }
    }
}
