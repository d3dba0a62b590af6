//! Retention: COMPLETED interactions older than `--retention` are deleted with their events,
//! and expired idempotency keys with them, in small batches on a thread of their own, so that
//! the writer is never held up for long.

use std::{
    path::PathBuf,
    sync::mpsc,
    thread,
    time::{Duration, SystemTime},
};

use rusqlite::{params, Connection};

use super::{millis, StoreError};

/// Rows one transaction deletes at most: short transactions keep the writer's waits short.
const BATCH: i64 = 500;
/// How long the writer may hold the lock before a retention batch gives up and retries.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The running retention thread; dropping it (or `stop`) ends the thread.
pub struct Retention {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Retention {
    /// Prunes every `interval` what is older than `keep`.
    pub fn start(path: PathBuf, keep: Duration, interval: Duration) -> Result<Self, StoreError> {
        let conn = Connection::open(&path)
            .map_err(|e| StoreError::new(format!("cannot open store {}: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("calldesk-retention".into())
            .spawn(move || loop {
                match prune(&conn, SystemTime::now(), keep) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "retention pruned old rows"),
                    Err(e) => tracing::warn!("retention failed, will retry: {e}"),
                }
                match stopped.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            })
            .map_err(|e| StoreError::new(format!("cannot start the retention thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread after the batch it is in.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Retention {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// Deletes, batch by batch, the interactions completed before `now - keep` with their
/// events, and the idempotency keys expired at `now`. Returns how many rows went.
pub fn prune(conn: &Connection, now: SystemTime, keep: Duration) -> Result<usize, StoreError> {
    let cutoff = millis(now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH));
    let mut deleted = 0;
    loop {
        let tx = conn.unchecked_transaction()?;
        let ids: Vec<String> = tx
            .prepare_cached(
                "SELECT id FROM interactions
                 WHERE complete_time_ms IS NOT NULL AND complete_time_ms < ?1 LIMIT ?2",
            )?
            .query_map(params![cutoff, BATCH], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in &ids {
            deleted += tx
                .prepare_cached("DELETE FROM events WHERE interaction_id = ?1")?
                .execute(params![id])?;
            deleted += tx
                .prepare_cached("DELETE FROM interactions WHERE id = ?1")?
                .execute(params![id])?;
        }
        let keys = tx
            .prepare_cached(
                "DELETE FROM idempotency_keys WHERE (agent_id, request_id) IN
                 (SELECT agent_id, request_id FROM idempotency_keys
                  WHERE expire_time_ms <= ?1 LIMIT ?2)",
            )?
            .execute(params![millis(now), BATCH])?;
        deleted += keys;
        tx.commit()?;
        if (ids.len() as i64) < BATCH && (keys as i64) < BATCH {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{sqlite::open, Durability};

    #[test]
    fn prunes_old_completed_interactions_their_events_and_expired_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, writer, _) = open(dir.path(), Durability::Normal).unwrap();
        let conn = writer.conn;
        let day = Duration::from_secs(86_400);
        let now = SystemTime::UNIX_EPOCH + 400 * day;
        let old = millis(now - 31 * day);
        let recent = millis(now - day);
        for (n, completed) in [(0, Some(old)), (1, Some(recent)), (2, None)] {
            conn.execute(
                "INSERT INTO interactions (id, agent_id, state, complete_time_ms)
                 VALUES (?1, 'a', 5, ?2)",
                params![format!("i{n}"), completed],
            )
            .unwrap();
            for seq in 1..=3 {
                conn.execute(
                    "INSERT INTO events (interaction_id, sequence, payload) VALUES (?1, ?2, x'')",
                    params![format!("i{n}"), seq],
                )
                .unwrap();
            }
        }
        for (key, expire) in [("k-old", millis(now) - 1), ("k-live", millis(now) + 1)] {
            conn.execute(
                "INSERT INTO idempotency_keys VALUES ('a', ?1, x'', x'', ?2)",
                params![key, expire],
            )
            .unwrap();
        }
        assert_eq!(prune(&conn, now, 30 * day).unwrap(), 1 + 3 + 1);
        let left: Vec<String> = conn
            .prepare("SELECT id FROM interactions ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, ["i1", "i2"]);
        let events: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 6);
        let keys: String = conn
            .query_row(
                "SELECT group_concat(request_id) FROM idempotency_keys",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(keys, "k-live");
        assert_eq!(
            prune(&conn, now, 30 * day).unwrap(),
            0,
            "nothing left to prune"
        );
    }
}
