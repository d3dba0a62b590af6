//! The PostgreSQL side of status callbacks (`store/webhooks.rs`): subscriptions, and cursors
//! owned by the replica that delivers them.
//!
//! The writer gives a new interaction's cursors to its own replica. A move (and a read of
//! one's cursors) counts only the cursors this replica owns, so that two replicas never
//! deliver the same event: a replica that was taken over (its `replicas` row deleted) leaves
//! orphans, which [`Store::webhook_claim`] hands to a live replica, and from then on the old
//! owner's moves fail (it stops delivering them; the request it had in flight is the only one
//! sent twice).

use std::collections::HashMap;

use super::{pg_error, Store};
use crate::store::{
    webhooks::{Agents, Cursor, CursorMove, Subscribed},
    StoreError,
};

/// The advisory lock replicas registering subscriptions take in turn ("CDKW").
const SUBSCRIBE_LOCK: i64 = 0x4344_4B57;

/// The cursors of one subscription that this replica owns, with each interaction's latest
/// sequence.
const CURSORS: &str = "SELECT c.interaction_id, c.delivered,
        (SELECT max(e.sequence) FROM events e WHERE e.interaction_id = c.interaction_id)
     FROM webhook_cursors c WHERE c.subscription = $1 AND c.owner = $2";

/// A page of them, in interaction id order (the primary key's).
const CURSOR_PAGE: &str = "SELECT c.interaction_id, c.delivered,
        (SELECT max(e.sequence) FROM events e WHERE e.interaction_id = c.interaction_id)
     FROM webhook_cursors c WHERE c.subscription = $1 AND c.owner = $2 AND c.interaction_id > $3
     ORDER BY c.interaction_id LIMIT $4";

fn cursor_row(r: &tokio_postgres::Row) -> Cursor {
    Cursor {
        interaction_id: r.get(0),
        delivered: r.get::<_, i64>(1).max(0) as u64,
        latest: r.get::<_, Option<i64>>(2).map(|s| s.max(0) as u64),
    }
}

impl Store {
    /// Registers the subscriptions (see `Store::webhook_subscribe`). Replicas reading the same
    /// file register the same thing: the first does the work, the others find it done.
    pub async fn webhook_subscribe(
        &self,
        subscriptions: Vec<Subscribed>,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SUBSCRIBE_LOCK])
            .await
            .map_err(pg_error)?;
        let mut rows: HashMap<String, Vec<String>> = HashMap::new();
        for row in tx
            .query(
                "SELECT subscription, agent_id FROM webhook_subscriptions",
                &[],
            )
            .await
            .map_err(pg_error)?
        {
            rows.entry(row.get(0)).or_default().push(row.get(1));
        }
        let stored: HashMap<String, Agents> = rows
            .into_iter()
            .map(|(name, rows)| (name, Agents::from_rows(rows)))
            .collect();
        let gone: Vec<&str> = stored
            .keys()
            .filter(|name| !subscriptions.iter().any(|s| &s.name == *name))
            .map(String::as_str)
            .collect();
        if !gone.is_empty() {
            tx.execute(
                "DELETE FROM webhook_subscriptions WHERE subscription = ANY($1)",
                &[&gone],
            )
            .await
            .map_err(pg_error)?;
            tx.execute(
                "DELETE FROM webhook_cursors WHERE subscription = ANY($1)",
                &[&gone],
            )
            .await
            .map_err(pg_error)?;
        }
        let changed: Vec<&Subscribed> = subscriptions
            .iter()
            .filter(|s| stored.get(&s.name) != Some(&s.agents))
            .collect();
        if !changed.is_empty() {
            // The live interactions, whose next events a newly covering subscription delivers;
            // their cursors go to the replica that owns each.
            let open: Vec<(String, String, Option<String>, i64)> = tx
                .query(
                    "SELECT i.id, i.agent_id, i.owner,
                            (SELECT max(e.sequence) FROM events e WHERE e.interaction_id = i.id)
                     FROM interactions i WHERE i.state <> 5",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .filter_map(|r| {
                    let latest: Option<i64> = r.get(3);
                    Some((r.get(0), r.get(1), r.get(2), latest?))
                })
                .collect();
            for sub in changed {
                let before = stored.get(&sub.name);
                if before.is_some() {
                    let cursors = tx
                        .query(
                            "SELECT c.interaction_id, i.agent_id FROM webhook_cursors c
                             LEFT JOIN interactions i ON i.id = c.interaction_id
                             WHERE c.subscription = $1",
                            &[&sub.name],
                        )
                        .await
                        .map_err(pg_error)?;
                    let uncovered: Vec<String> = cursors
                        .iter()
                        .filter(|r| {
                            r.get::<_, Option<&str>>(1)
                                .is_some_and(|agent| !sub.agents.covers(agent))
                        })
                        .map(|r| r.get(0))
                        .collect();
                    tx.execute(
                        "DELETE FROM webhook_cursors
                         WHERE subscription = $1 AND interaction_id = ANY($2)",
                        &[&sub.name, &uncovered],
                    )
                    .await
                    .map_err(pg_error)?;
                }
                let seeded: Vec<&(String, String, Option<String>, i64)> = open
                    .iter()
                    .filter(|(_, agent, _, _)| sub.agents.newly_covers(before, agent))
                    .collect();
                let ids: Vec<&str> = seeded.iter().map(|s| s.0.as_str()).collect();
                let owners: Vec<&str> = seeded
                    .iter()
                    .map(|s| s.2.as_deref().unwrap_or(""))
                    .collect();
                let latest: Vec<i64> = seeded.iter().map(|s| s.3).collect();
                tx.execute(
                    "INSERT INTO webhook_cursors (subscription, interaction_id, delivered, owner)
                     SELECT $1, u.id, u.latest, u.owner
                     FROM unnest($2::TEXT[], $3::BIGINT[], $4::TEXT[]) AS u(id, latest, owner)
                     ON CONFLICT DO NOTHING",
                    &[&sub.name, &ids, &latest, &owners],
                )
                .await
                .map_err(pg_error)?;
                tx.execute(
                    "DELETE FROM webhook_subscriptions WHERE subscription = $1",
                    &[&sub.name],
                )
                .await
                .map_err(pg_error)?;
                tx.execute(
                    "INSERT INTO webhook_subscriptions (agent_id, subscription)
                     SELECT a, $2 FROM unnest($1::TEXT[]) AS a",
                    &[&sub.agents.rows(), &sub.name],
                )
                .await
                .map_err(pg_error)?;
            }
        }
        tx.commit().await.map_err(pg_error)
    }

    /// A page of the subscription's cursors that this replica owns: at most `limit`, in
    /// interaction id order, after `after` (from the first with None).
    pub async fn webhook_cursors(
        &self,
        subscription: String,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<Cursor>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(CURSOR_PAGE).await.map_err(pg_error)?;
        let after = after.unwrap_or_default();
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = client
            .query(
                &statement,
                &[&subscription, &&*self.node_id, &after, &limit],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows.iter().map(cursor_row).collect())
    }

    /// One cursor, if the subscription has one for the interaction and this replica owns it.
    pub async fn webhook_cursor(
        &self,
        subscription: String,
        interaction_id: String,
    ) -> Result<Option<Cursor>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("{CURSORS} AND c.interaction_id = $3"))
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(
                &statement,
                &[&subscription, &&*self.node_id, &interaction_id],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.as_ref().map(cursor_row))
    }

    /// Applies the moves in one transaction; for each, whether this replica still owns its
    /// cursor (false: another replica claimed it, or its subscription went).
    pub async fn webhook_move(&self, moves: Vec<CursorMove>) -> Result<Vec<bool>, StoreError> {
        let mut advance = (Vec::new(), Vec::new(), Vec::new());
        let mut finish = (Vec::new(), Vec::new());
        for m in &moves {
            match m {
                CursorMove::Advance {
                    subscription,
                    interaction_id,
                    delivered,
                } => {
                    advance.0.push(&**subscription);
                    advance.1.push(&**interaction_id);
                    advance.2.push((*delivered).min(i64::MAX as u64) as i64);
                }
                CursorMove::Finish {
                    subscription,
                    interaction_id,
                } => {
                    finish.0.push(&**subscription);
                    finish.1.push(&**interaction_id);
                }
            }
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let mut applied: std::collections::HashSet<(String, String)> = Default::default();
        if !advance.0.is_empty() {
            for row in tx
                .query(
                    "UPDATE webhook_cursors c SET delivered = GREATEST(c.delivered, u.d)
                     FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS u(s, i, d)
                     WHERE c.subscription = u.s AND c.interaction_id = u.i AND c.owner = $4
                     RETURNING c.subscription, c.interaction_id",
                    &[&advance.0, &advance.1, &advance.2, &&*self.node_id],
                )
                .await
                .map_err(pg_error)?
            {
                applied.insert((row.get(0), row.get(1)));
            }
        }
        if !finish.0.is_empty() {
            for row in tx
                .query(
                    "DELETE FROM webhook_cursors c USING unnest($1::TEXT[], $2::TEXT[]) AS u(s, i)
                     WHERE c.subscription = u.s AND c.interaction_id = u.i AND c.owner = $3
                     RETURNING c.subscription, c.interaction_id",
                    &[&finish.0, &finish.1, &&*self.node_id],
                )
                .await
                .map_err(pg_error)?
            {
                applied.insert((row.get(0), row.get(1)));
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(moves
            .iter()
            .map(|m| {
                let (s, i) = match m {
                    CursorMove::Advance {
                        subscription,
                        interaction_id,
                        ..
                    }
                    | CursorMove::Finish {
                        subscription,
                        interaction_id,
                    } => (subscription, interaction_id),
                };
                applied.contains(&(s.to_string(), i.to_string()))
            })
            .collect())
    }

    /// Takes the cursors whose owner has no replica row any more (it was taken over, or
    /// stopped and was cleaned up): how many this replica now delivers.
    pub async fn webhook_claim(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE webhook_cursors c SET owner = $1
                 WHERE NOT EXISTS (SELECT 1 FROM replicas r WHERE r.node_id = c.owner)",
            )
            .await
            .map_err(pg_error)?;
        client
            .execute(&statement, &[&&*self.node_id])
            .await
            .map_err(pg_error)
    }
}
