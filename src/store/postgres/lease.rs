//! This replica's lease, and the takeover of replicas whose lease expired.
//!
//! A replica registers a row in `replicas` when it opens the store, and renews its lease every
//! third of `--lease-duration`. Its row gone means another replica took it over: it is fenced
//! (`StoreFault::Fenced`) and must stop. Times are PostgreSQL's (`now()`), never the replicas'
//! own clocks.
//!
//! Every renewal period, a replica that has held its own lease for a whole lease period looks
//! for replicas whose lease has expired (`FOR UPDATE SKIP LOCKED`: each expired row is taken by
//! exactly one replica; a dead replica's open write transaction, which holds its row `FOR KEY
//! SHARE`, is ended by PostgreSQL's idle-in-transaction timeout first). In one transaction it
//! makes itself the owner of that replica's open interactions, drops its dial reservations
//! and in-flight idempotency keys, and deletes its row. The interactions are then handed to the
//! call manager ([`Replica::adopted`]), which ends their calls with SERVER_RESTART and runs
//! their wrap-up timers from then on. Waiting a whole lease after connecting keeps a replica
//! that has just come back to PostgreSQL (after it restarted, say) from taking over replicas
//! that simply have not renewed yet.

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch};

use super::{describe, latest_event, pg_error, snapshot_of};
use crate::{
    proto,
    store::{FaultState, Recovered, StoreError, StoreFault},
};

/// Interactions taken over at once, at most (the rest wait for the next round).
const TAKEOVER_BATCH: i64 = 10_000;
/// Rows one retention statement deletes at most.
const RETENTION_BATCH: i64 = 1_000;

/// How many replicas hold a live lease, and this one's rank among them (by node id, 0-based):
/// what trunk pacing divides the deployment's limits by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub replicas: u32,
    pub rank: u32,
}

/// This replica's membership: its lease, kept by a task until [`Replica::release`].
pub struct Replica {
    node_id: Arc<str>,
    /// The live replicas as of the last renewal.
    membership: watch::Receiver<Membership>,
    /// Interactions taken over from expired replicas, for the call manager.
    adopted: Option<mpsc::Receiver<Recovered>>,
    /// Tells the keeper to stop renewing.
    stop: watch::Sender<bool>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    pool: Pool,
}

impl Replica {
    /// Registers this replica and starts keeping its lease.
    pub(super) async fn register(
        pool: Pool,
        node_id: Arc<str>,
        address: String,
        lease: Duration,
        retention: Duration,
        faults: FaultState,
    ) -> Result<Self, StoreError> {
        let client = pool
            .get()
            .await
            .map_err(|e| StoreError::new(format!("store: no connection: {e}")))?;
        client
            .execute(
                "INSERT INTO replicas (node_id, address, lease_expires)
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond')",
                &[&&*node_id, &address, &(lease.as_millis() as f64)],
            )
            .await
            .map_err(pg_error)?;
        // A replica registered at this very address is this one's predecessor (the process
        // that listened here before, restarted): it is gone, so its lease is released now
        // rather than waited out. Each replica's address is its own (peers forward to it).
        let predecessors = client
            .execute(
                "UPDATE replicas SET lease_expires = '-infinity'
                 WHERE address = $1 AND node_id <> $2 AND lease_expires <> '-infinity'",
                &[&address, &&*node_id],
            )
            .await
            .map_err(pg_error)?;
        if predecessors > 0 {
            tracing::info!(
                %address,
                "a previous replica at this address is gone: its interactions are taken over now"
            );
        }
        drop(client);
        tracing::info!(replica = %node_id, %address, "registered with a lease of {lease:?}");
        let (adopted_tx, adopted) = mpsc::channel(16);
        let (stop, stopped) = watch::channel(false);
        let (members, membership) = watch::channel(Membership {
            replicas: 1,
            rank: 0,
        });
        let keeper = tokio::spawn(keep(
            pool.clone(),
            node_id.clone(),
            lease,
            retention,
            faults,
            Reports {
                adopted: adopted_tx,
                members,
            },
            stopped,
        ));
        Ok(Self {
            node_id,
            membership,
            adopted: Some(adopted),
            stop,
            keeper: Some(keeper),
            pool,
        })
    }

    /// This replica's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The live replicas and this one's rank, updated at every renewal (a replica that
    /// joins, stops or is taken over changes it within a renewal period).
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.membership.clone()
    }

    /// The interactions this replica takes over, batch by batch. Taken once.
    pub fn adopted(&mut self) -> Option<mpsc::Receiver<Recovered>> {
        self.adopted.take()
    }

    /// After a clean stop (the writer closed): stop renewing and let the lease expire now, so
    /// that another replica takes over what this one still owned at once.
    pub async fn release(mut self) {
        let _ = self.stop.send(true);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
        let released = match self.pool.get().await {
            Ok(client) => client
                .execute(
                    "UPDATE replicas SET lease_expires = '-infinity' WHERE node_id = $1",
                    &[&&*self.node_id],
                )
                .await
                .map_err(|e| describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        match released {
            Ok(_) => tracing::info!(replica = %self.node_id, "released the lease"),
            Err(e) => tracing::warn!(
                replica = %self.node_id,
                "could not release the lease ({e}); it expires by itself"
            ),
        }
    }
}

/// What the lease keeper tells the rest of the replica.
struct Reports {
    /// Interactions taken over, for the call manager.
    adopted: mpsc::Sender<Recovered>,
    /// The live replicas, for trunk pacing's shares.
    members: watch::Sender<Membership>,
}

/// Renews the lease, takes over expired replicas, and deletes what retention allows.
async fn keep(
    pool: Pool,
    node_id: Arc<str>,
    lease: Duration,
    retention: Duration,
    faults: FaultState,
    reports: Reports,
    mut stopped: watch::Receiver<bool>,
) {
    let Reports { adopted, members } = reports;
    let period = (lease / 3).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when this replica has renewed without a failure in between.
    let mut held_since = Some(tokio::time::Instant::now());
    let mut last_retention = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        match renew(&pool, &node_id, lease).await {
            Ok(Some(now)) => {
                held_since.get_or_insert_with(tokio::time::Instant::now);
                // PostgreSQL answers and the lease is ours: writes may go on (a writer that
                // still cannot write raises it again).
                faults.clear(StoreFault::Unreachable);
                members.send_if_modified(|m| std::mem::replace(m, now) != now);
            }
            Ok(None) => {
                faults.set(
                    StoreFault::Fenced,
                    format!(
                        "replica {node_id}'s lease row is gone: another replica took over its \
                         interactions"
                    ),
                );
                return;
            }
            Err(e) => {
                // Health is NOT_SERVING while PostgreSQL does not answer, even with nothing to
                // write.
                held_since = None;
                faults.set(
                    StoreFault::Unreachable,
                    format!("cannot renew replica {node_id}'s lease: {e}"),
                );
                continue;
            }
        }
        // Released leases (a clean stop, a predecessor at this address) are taken over at once;
        // expired ones only by a replica that has held its own lease for a whole period.
        if let Some(since) = held_since {
            match take_over(&pool, &node_id, since.elapsed() >= lease).await {
                Ok(Some((dead, interactions))) => {
                    tracing::warn!(
                        replica = %node_id,
                        from = %dead,
                        interactions = interactions.open_interactions.len(),
                        connected = interactions.dialogs.len(),
                        "took over an expired replica"
                    );
                    metrics::counter!("calldesk_replica_takeovers_total").increment(1);
                    if !interactions.open_interactions.is_empty()
                        && adopted.send(interactions).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(replica = %node_id, "takeover failed: {e}"),
            }
        }
        if last_retention.elapsed() >= crate::store::retention_interval(retention) {
            last_retention = tokio::time::Instant::now();
            if let Err(e) = prune(&pool, retention).await {
                tracing::warn!("retention: {e}");
            }
        }
    }
}

/// Pushes the lease forward and counts the live replicas; Ok(None) when this replica's row is
/// gone (taken over).
async fn renew(pool: &Pool, node_id: &str, lease: Duration) -> Result<Option<Membership>, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    // The live replicas are counted in the same statement (one round trip, no second
    // connection): trunk pacing divides the deployment's limits by them.
    let renewed = client
        .query_opt(
            "UPDATE replicas SET lease_expires = now() + $2 * interval '1 millisecond'
             WHERE node_id = $1
             RETURNING
               (SELECT count(*) FROM replicas WHERE lease_expires > now()),
               (SELECT count(*) FROM replicas WHERE lease_expires > now() AND node_id < $1)",
            &[&node_id, &(lease.as_millis() as f64)],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(renewed.map(|row| {
        let (replicas, rank): (i64, i64) = (row.get(0), row.get(1));
        Membership {
            replicas: u32::try_from(replicas.max(1)).unwrap_or(u32::MAX),
            rank: u32::try_from(rank).unwrap_or(0),
        }
    }))
}

/// Takes over one replica whose lease was released, or (`expired_too`) has expired, if there is
/// one: its id and its open interactions.
async fn take_over(
    pool: &Pool,
    node_id: &str,
    expired_too: bool,
) -> Result<Option<(String, Recovered)>, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| describe(&e))?;
    let dead = tx
        .query_opt(
            "SELECT node_id FROM replicas
             WHERE (lease_expires = '-infinity' OR ($2 AND lease_expires < now()))
               AND node_id <> $1
             ORDER BY lease_expires LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&node_id, &expired_too],
        )
        .await
        .map_err(|e| describe(&e))?;
    let Some(dead) = dead else {
        if !expired_too {
            return Ok(None);
        }
        // Also interactions whose owner has no row at all (a takeover cut short).
        return adopt_orphans(tx, node_id).await;
    };
    let dead: String = dead.get(0);
    let rows = tx
        .query(
            concat!(
                "WITH moved AS (
                     UPDATE interactions SET owner = $2
                     WHERE id IN (SELECT id FROM interactions
                                  WHERE owner = $1 AND state <> 5 LIMIT $3)
                     RETURNING id, row_id)
                 SELECT m.row_id, ",
                latest_event!(),
                " FROM moved m JOIN interactions i ON i.id = m.id ORDER BY m.row_id"
            ),
            &[&dead, &node_id, &TAKEOVER_BATCH],
        )
        .await
        .map_err(|e| describe(&e))?;
    let full = rows.len() as i64 == TAKEOVER_BATCH;
    tx.execute("DELETE FROM dial_reservations WHERE owner = $1", &[&dead])
        .await
        .map_err(|e| describe(&e))?;
    tx.execute(
        "DELETE FROM idempotency_keys WHERE owner = $1 AND response IS NULL",
        &[&dead],
    )
    .await
    .map_err(|e| describe(&e))?;
    if !full {
        tx.execute("DELETE FROM replicas WHERE node_id = $1", &[&dead])
            .await
            .map_err(|e| describe(&e))?;
    }
    let interactions = taken(&tx, &rows).await?;
    tx.commit().await.map_err(|e| describe(&e))?;
    Ok(Some((dead, interactions)))
}

/// Open interactions whose owner has no replica row (none expired to take over).
async fn adopt_orphans(
    tx: deadpool_postgres::Transaction<'_>,
    node_id: &str,
) -> Result<Option<(String, Recovered)>, String> {
    let rows = tx
        .query(
            concat!(
                "WITH moved AS (
                     UPDATE interactions SET owner = $1
                     WHERE id IN (SELECT id FROM interactions o
                                  WHERE o.state <> 5 AND NOT EXISTS
                                      (SELECT 1 FROM replicas r WHERE r.node_id = o.owner)
                                  LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING id, row_id)
                 SELECT m.row_id, ",
                latest_event!(),
                " FROM moved m JOIN interactions i ON i.id = m.id ORDER BY m.row_id"
            ),
            &[&node_id, &TAKEOVER_BATCH],
        )
        .await
        .map_err(|e| describe(&e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let interactions = taken(&tx, &rows).await?;
    tx.commit().await.map_err(|e| describe(&e))?;
    Ok(Some(("(no replica)".into(), interactions)))
}

/// The interactions taken over (`rows`), with the stored dialogs of their connected calls.
async fn taken(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[tokio_postgres::Row],
) -> Result<Recovered, String> {
    let open_interactions = snapshots(rows)?;
    let ids: Vec<&str> = open_interactions.iter().map(|i| i.id.as_str()).collect();
    let rows = tx
        .query(
            "SELECT interaction_id, dialogs FROM call_dialogs WHERE interaction_id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| describe(&e))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let dialogs = crate::store::decode_dialogs(rows);
    // A takeover's batch carries its WRAP_UP interactions with the rest (TAKEOVER_BATCH).
    Ok(Recovered {
        open_interactions,
        dialogs,
        wrap_ups: Default::default(),
    })
}

fn snapshots(rows: &[tokio_postgres::Row]) -> Result<Vec<proto::Interaction>, String> {
    rows.iter()
        .map(|r| {
            let payload: Option<&[u8]> = r.get(1);
            snapshot_of(payload.unwrap_or_default()).map_err(|e| e.message)
        })
        .collect()
}

/// Deletes COMPLETED interactions older than `keep` and expired idempotency keys, a batch at a
/// time.
async fn prune(pool: &Pool, keep: Duration) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let now = std::time::SystemTime::now();
    let cutoff = crate::store::millis(now.checked_sub(keep).unwrap_or(std::time::UNIX_EPOCH));
    loop {
        let deleted = client
            .execute(
                "WITH old AS (
                     DELETE FROM interactions WHERE id IN (
                         SELECT id FROM interactions
                         WHERE complete_time_ms IS NOT NULL AND complete_time_ms < $1
                         LIMIT $2)
                     RETURNING id)
                 DELETE FROM events WHERE interaction_id IN (SELECT id FROM old)",
                &[&cutoff, &RETENTION_BATCH],
            )
            .await
            .map_err(|e| describe(&e))?;
        if deleted == 0 {
            break;
        }
    }
    client
        .execute(
            "DELETE FROM idempotency_keys WHERE expire_time_ms < $1",
            &[&crate::store::millis(std::time::SystemTime::now())],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(())
}
