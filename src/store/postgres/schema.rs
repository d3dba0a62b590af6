//! The PostgreSQL store's schema and its migrations.
//!
//! The version lives in `calldesk_schema` (one row). Replicas starting at once migrate one at a
//! time (an advisory lock held for the migration's transaction); a schema newer than this
//! binary knows is refused, and so is a database that has calldesk's tables without its
//! version row (not calldesk's, or damaged).

use tokio_postgres::Client;

use super::{pg_error, StoreError};

/// The advisory lock the migration holds ("CDK1", as SQLite's application_id).
const MIGRATION_LOCK: i64 = 0x4344_4B31;

/// Migrations in order: `MIGRATIONS[n]` takes the schema from version n to n + 1.
///
/// The tables follow SQLite's schema 2: one row per event (its payload is the
/// `InteractionEvent` as watchers get it; a snapshot is the latest event's `interaction`), and
/// an interactions row with only what queries select on. Beside them, what replicas share:
/// their leases, who owns each live interaction, idempotency keys in flight, and the dials
/// that count against `--max-active-calls` before their interaction exists.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1
    "CREATE TABLE replicas (
         node_id TEXT PRIMARY KEY,
         address TEXT NOT NULL,
         started TIMESTAMPTZ NOT NULL DEFAULT now(),
         lease_expires TIMESTAMPTZ NOT NULL
     );
     CREATE TABLE interactions (
         row_id BIGSERIAL PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         agent_id TEXT NOT NULL,
         state INTEGER NOT NULL,
         complete_time_ms BIGINT,
         owner TEXT
     );
     CREATE INDEX interactions_by_agent ON interactions (agent_id, row_id);
     CREATE INDEX interactions_open ON interactions (owner) WHERE state <> 5;
     CREATE INDEX interactions_live ON interactions (agent_id) WHERE state IN (1, 2, 3);
     CREATE INDEX interactions_completed ON interactions (complete_time_ms)
         WHERE complete_time_ms IS NOT NULL;
     CREATE TABLE events (
         interaction_id TEXT NOT NULL,
         sequence BIGINT NOT NULL,
         payload BYTEA NOT NULL,
         PRIMARY KEY (interaction_id, sequence)
     );
     CREATE TABLE idempotency_keys (
         agent_id TEXT NOT NULL,
         request_id TEXT NOT NULL,
         fingerprint BYTEA NOT NULL,
         response BYTEA,
         expire_time_ms BIGINT NOT NULL,
         owner TEXT,
         PRIMARY KEY (agent_id, request_id)
     );
     CREATE INDEX idempotency_keys_in_flight ON idempotency_keys (owner)
         WHERE response IS NULL;
     CREATE TABLE dialpads (
         agent_id TEXT PRIMARY KEY,
         payload BYTEA NOT NULL
     );
     CREATE TABLE dial_reservations (
         id TEXT PRIMARY KEY,
         agent_id TEXT NOT NULL,
         owner TEXT NOT NULL,
         expires TIMESTAMPTZ NOT NULL
     );
     CREATE INDEX dial_reservations_by_agent ON dial_reservations (agent_id);",
    // 2: secrets the replicas share: the page token key (made by the first replica that finds
    // none, store/page_token.rs).
    "CREATE TABLE secrets (
         name TEXT PRIMARY KEY,
         value BYTEA NOT NULL
     );",
    // 3: status callbacks (store/webhooks.rs): the agents each subscription covers ('*': all),
    // read when an interaction is created; a cursor per subscription and interaction, owned by
    // the replica that delivers it.
    "CREATE TABLE webhook_subscriptions (
         agent_id TEXT NOT NULL,
         subscription TEXT NOT NULL,
         PRIMARY KEY (agent_id, subscription)
     );
     CREATE TABLE webhook_cursors (
         subscription TEXT NOT NULL,
         interaction_id TEXT NOT NULL,
         delivered BIGINT NOT NULL,
         owner TEXT NOT NULL,
         PRIMARY KEY (subscription, interaction_id)
     );
     CREATE INDEX webhook_cursors_by_owner ON webhook_cursors (owner);",
    // 4: a connected call's SIP dialogs (domain/dialog.rs, JSON), written when it connects
    // and on every hold or resume, deleted with its end: what a survivor adopts it from.
    "CREATE TABLE call_dialogs (
         interaction_id TEXT PRIMARY KEY,
         dialogs TEXT NOT NULL
     );",
    // 5: the transfer operations' idempotency keys (store::TransferKeyRecord), by the sequence
    // of the event that carried each out, deleted when the interaction is COMPLETED.
    "CREATE TABLE transfer_keys (
         interaction_id TEXT NOT NULL,
         sequence BIGINT NOT NULL,
         request_id TEXT NOT NULL,
         request TEXT NOT NULL,
         PRIMARY KEY (interaction_id, sequence)
     );",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Checks the database's schema and migrates it, in one transaction under the migration lock.
pub(super) async fn check_and_migrate(client: &mut Client, shown: &str) -> Result<(), StoreError> {
    let refuse = |why: String| StoreError::new(format!("refusing to use {shown}: {why}"));
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    let tables: Vec<String> = tx
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema()
               AND table_name IN ('calldesk_schema', 'interactions', 'events')",
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let version: i32 =
        if tables.iter().any(|t| t == "calldesk_schema") {
            let row = tx
                .query_opt("SELECT version FROM calldesk_schema", &[])
                .await
                .map_err(pg_error)?;
            match row {
                Some(row) => row.get(0),
                None => return Err(refuse(
                    "its calldesk_schema table has no version row: restore the database from a \
                     backup, or give calldesk a new, empty database"
                        .into(),
                )),
            }
        } else if !tables.is_empty() {
            return Err(refuse(format!(
                "it has tables named {} but no calldesk_schema: it is not a calldesk store. Give \
             calldesk a database (or a schema, with ?options=-csearch_path%3D…) of its own",
                tables.join(", ")
            )));
        } else {
            tx.batch_execute("CREATE TABLE calldesk_schema (version INTEGER NOT NULL)")
                .await
                .map_err(pg_error)?;
            tx.execute("INSERT INTO calldesk_schema (version) VALUES (0)", &[])
                .await
                .map_err(pg_error)?;
            0
        };
    if version > SCHEMA_VERSION {
        return Err(refuse(format!(
            "it was written by a newer calldesk (schema version {version}; this calldesk knows \
             up to {SCHEMA_VERSION}). Run the newer calldesk, or restore a backup taken \
             before the upgrade"
        )));
    }
    for (from, migration) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(migration).await.map_err(pg_error)?;
        tx.execute(
            "UPDATE calldesk_schema SET version = $1",
            &[&(from as i32 + 1)],
        )
        .await
        .map_err(pg_error)?;
        if version > 0 {
            tracing::info!(store = shown, from, to = from + 1, "migrated the schema");
        }
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}
