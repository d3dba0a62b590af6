//! Admission of a StartCall across replicas, before anything is dialed: its request_id
//! (AIP-155 idempotency) and the agent's `--max-active-calls`.
//!
//! Both are decided in one short transaction under a per-agent advisory lock, so that two
//! replicas admitting for one agent at once take turns. What it claims there (the key, marked
//! in flight with this replica as owner; a dial reservation counted against the limit) goes
//! with the call: the transaction that creates the interaction stores the key's response and
//! drops the reservation, and a StartCall that fails before that releases both
//! (`WriteOp::Release`). A replica that dies holding claims has them dropped by the one that
//! takes it over; a reservation also expires by itself after the dial's own deadline.
//!
//! Its statements are prepared once per pooled connection (`prepare_cached`): a StartCall
//! does not pay PostgreSQL's parse and plan for each of them.

use std::time::{Duration, SystemTime};

use prost::Message;

use super::{pg_error, Store};
use crate::{
    proto,
    store::{millis, Admission, Claims, StoreError},
};

/// Keyed by agent: the advisory lock's second key space ("CDKa"), apart from the migration's.
const AGENT_LOCK_SPACE: i32 = 0x4344_4B61;

impl Store {
    /// The response `request_id` was answered with, if it is unexpired (see
    /// [`crate::store::Store::answered`]).
    pub async fn answered(
        &self,
        agent_id: &str,
        request_id: &str,
    ) -> Result<Option<proto::StartCallResponse>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT response FROM idempotency_keys
                 WHERE agent_id = $1 AND request_id = $2 AND response IS NOT NULL
                   AND expire_time_ms > $3",
            )
            .await
            .map_err(pg_error)?;
        let row = client
            .query_opt(
                &statement,
                &[&agent_id, &request_id, &millis(SystemTime::now())],
            )
            .await
            .map_err(pg_error)?;
        row.map(|r| {
            let bytes: Vec<u8> = r.get(0);
            Ok(proto::StartCallResponse::decode(bytes.as_slice())?)
        })
        .transpose()
    }

    /// Decides whether a StartCall may go on (see [`crate::store::Store::admit_start`]).
    /// `key`: its request_id and fingerprint; `limit`: `--max-active-calls` when it dials;
    /// `hold_for`: how long a dial may take before its reservation lapses by itself.
    pub async fn admit_start(
        &self,
        agent_id: &str,
        key: Option<(&str, &[u8])>,
        limit: Option<u32>,
        hold_for: Duration,
    ) -> Result<Admission, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute(
            &tx.prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .await
                .map_err(pg_error)?,
            &[&AGENT_LOCK_SPACE, &agent_id],
        )
        .await
        .map_err(pg_error)?;
        let now_ms = millis(SystemTime::now());
        let mut claims = Claims::default();
        if let Some((request_id, fingerprint)) = key {
            let row = tx
                .query_opt(
                    &tx.prepare_cached(
                        "SELECT fingerprint, response, owner, expire_time_ms FROM idempotency_keys
                     WHERE agent_id = $1 AND request_id = $2",
                    )
                    .await
                    .map_err(pg_error)?,
                    &[&agent_id, &request_id],
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = row {
                let first: Vec<u8> = row.get(0);
                let response: Option<Vec<u8>> = row.get(1);
                let owner: Option<String> = row.get(2);
                let expire_ms: i64 = row.get(3);
                if expire_ms > now_ms {
                    if first != fingerprint {
                        return Ok(Admission::Reused);
                    }
                    return Ok(match response {
                        Some(bytes) => Admission::Replay(Box::new(
                            proto::StartCallResponse::decode(bytes.as_slice())?,
                        )),
                        // In flight here: the call manager holds it and queues this retry
                        // behind the first request.
                        None if owner.as_deref() == Some(&*self.node_id) => {
                            Admission::Admitted(Claims::default())
                        }
                        None => Admission::InFlightElsewhere,
                    });
                }
                tx.execute(
                    &tx.prepare_cached(
                        "DELETE FROM idempotency_keys WHERE agent_id = $1 AND request_id = $2",
                    )
                    .await
                    .map_err(pg_error)?,
                    &[&agent_id, &request_id],
                )
                .await
                .map_err(pg_error)?;
            }
        }
        if let Some(limit) = limit {
            let row = tx
                .query_one(
                    &tx.prepare_cached(
                        "SELECT (SELECT count(*) FROM interactions
                             WHERE agent_id = $1 AND state IN (1, 2, 3))
                          + (SELECT count(*) FROM dial_reservations
                             WHERE agent_id = $1 AND expires > now())",
                    )
                    .await
                    .map_err(pg_error)?,
                    &[&agent_id],
                )
                .await
                .map_err(pg_error)?;
            let active: i64 = row.get(0);
            if active >= i64::from(limit) {
                return Ok(Admission::TooMany);
            }
            let reservation = uuid::Uuid::now_v7().to_string();
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO dial_reservations (id, agent_id, owner, expires)
                 VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')",
                )
                .await
                .map_err(pg_error)?,
                &[
                    &reservation,
                    &agent_id,
                    &&*self.node_id,
                    &(hold_for.as_millis().min(i64::MAX as u128) as f64),
                ],
            )
            .await
            .map_err(pg_error)?;
            claims.reservation = Some(reservation.into());
        }
        if let Some((request_id, fingerprint)) = key {
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO idempotency_keys
                 (agent_id, request_id, fingerprint, response, expire_time_ms, owner)
                 VALUES ($1, $2, $3, NULL, $4, $5)",
                )
                .await
                .map_err(pg_error)?,
                &[
                    &agent_id,
                    &request_id,
                    &fingerprint,
                    &(now_ms + hold_for.as_millis().min(i64::MAX as u128 / 2) as i64),
                    &&*self.node_id,
                ],
            )
            .await
            .map_err(pg_error)?;
            claims.key = Some((agent_id.to_owned(), request_id.to_owned()));
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(Admission::Admitted(claims))
    }
}
