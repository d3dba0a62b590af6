//! The store's schema and its migrations.
//!
//! A calldesk database is marked with `PRAGMA application_id` and versioned with
//! `PRAGMA user_version`. On open: a file that is not SQLite, or SQLite that belongs to
//! something else, is refused untouched; a newer schema than this binary knows is refused;
//! an older one is migrated step by step in one transaction.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// "CDK1": marks the file as calldesk's.
pub(crate) const APPLICATION_ID: i32 = 0x4344_4B31;

/// Migrations in order: `MIGRATIONS[n]` takes the schema from version n to n + 1.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: interactions with their latest snapshot, the event log, idempotency keys, dialpads.
    "CREATE TABLE interactions (
         rowid INTEGER PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         agent_id TEXT NOT NULL,
         state INTEGER NOT NULL,
         complete_time_ms INTEGER,
         snapshot BLOB NOT NULL
     );
     CREATE INDEX interactions_by_agent ON interactions (agent_id, rowid);
     CREATE INDEX interactions_open ON interactions (state) WHERE state != 5;
     CREATE INDEX interactions_completed ON interactions (complete_time_ms)
         WHERE complete_time_ms IS NOT NULL;
     CREATE TABLE events (
         interaction_id TEXT NOT NULL,
         sequence INTEGER NOT NULL,
         payload BLOB NOT NULL,
         PRIMARY KEY (interaction_id, sequence)
     ) WITHOUT ROWID;
     CREATE TABLE idempotency_keys (
         agent_id TEXT NOT NULL,
         request_id TEXT NOT NULL,
         fingerprint BLOB NOT NULL,
         response BLOB NOT NULL,
         expire_time_ms INTEGER NOT NULL,
         PRIMARY KEY (agent_id, request_id)
     ) WITHOUT ROWID;
     CREATE TABLE dialpads (
         agent_id TEXT PRIMARY KEY,
         payload BLOB NOT NULL
     ) WITHOUT ROWID;",
    // 2: an interaction's snapshot is its latest event's `interaction`, so each event is written
    // once, as its event row; the interactions row keeps only what queries select on. It is
    // small, and an event that does not change the state does not touch it.
    "ALTER TABLE interactions DROP COLUMN snapshot;",
    // 3: secrets the store keeps for the whole deployment: the page token key (made by the
    // first start that finds none, store/page_token.rs).
    "CREATE TABLE secrets (
         name TEXT PRIMARY KEY,
         value BLOB NOT NULL
     ) WITHOUT ROWID;",
    // 4: status callbacks (store/webhooks.rs): the agents each subscription covers ('*': all),
    // read when an interaction is created; a cursor per subscription and interaction.
    "CREATE TABLE webhook_subscriptions (
         agent_id TEXT NOT NULL,
         subscription TEXT NOT NULL,
         PRIMARY KEY (agent_id, subscription)
     ) WITHOUT ROWID;
     CREATE TABLE webhook_cursors (
         subscription TEXT NOT NULL,
         interaction_id TEXT NOT NULL,
         delivered INTEGER NOT NULL,
         PRIMARY KEY (subscription, interaction_id)
     ) WITHOUT ROWID;",
    // 5: a connected call's SIP dialogs (domain/dialog.rs, JSON), written when it connects
    // and on every hold or resume, deleted with its end: what a restart adopts it from.
    "CREATE TABLE call_dialogs (
         interaction_id TEXT PRIMARY KEY,
         dialogs TEXT NOT NULL
     ) WITHOUT ROWID;",
    // 6: the transfer operations' idempotency keys (store::TransferKeyRecord), by the sequence
    // of the event that carried each out, deleted when the interaction is COMPLETED.
    "CREATE TABLE transfer_keys (
         interaction_id TEXT NOT NULL,
         sequence INTEGER NOT NULL,
         request_id TEXT NOT NULL,
         request TEXT NOT NULL,
         PRIMARY KEY (interaction_id, sequence)
     ) WITHOUT ROWID;",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Checks the file's header and schema, and migrates it. `creating`: the file was just made
/// by calldesk (an empty SQLite file is expected); otherwise it must already carry calldesk's
/// header, so that an empty or truncated file never silently becomes a new, empty store.
pub(super) fn check_and_migrate(
    conn: &mut Connection,
    path: &Path,
    creating: bool,
) -> Result<(), StoreError> {
    let refuse =
        |why: String| StoreError::new(format!("refusing to use {}: {why}", path.display()));
    if !creating && std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err(refuse(
            "the file is empty (0 bytes): it is not a calldesk store, and calldesk creates a              store only where there is no database file at all. If it was truncated, restore              it from a backup; if you want a new, empty store, remove the file"
                .into(),
        ));
    }
    // Reading the header is the first thing that touches the file: a file that is not SQLite
    // fails here, before anything could be written to it.
    let not_ours = |e: rusqlite::Error| {
        let mut error = refuse(format!("not a calldesk database ({e})"));
        error.corrupt = super::is_corrupt(&e)
            && e.sqlite_error_code() != Some(rusqlite::ErrorCode::NotADatabase);
        error
    };
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(not_ours)?;
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(not_ours)?;
    if application_id == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| refuse(format!("not a calldesk database ({e})")))?;
        if tables > 0 {
            return Err(refuse(
                "it is an SQLite database of another application".into(),
            ));
        }
        if !creating {
            return Err(refuse(
                "it is an empty SQLite database without calldesk's header (application_id 0):                  calldesk creates a store only where there is no database file at all. If you                  want a new, empty store, remove the file"
                    .into(),
            ));
        }
    } else if application_id != APPLICATION_ID {
        return Err(refuse(format!(
            "it is an SQLite database of another application (application_id {application_id:#x})"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(refuse(format!(
            "its schema version {version} is newer than this calldesk knows ({SCHEMA_VERSION}); \
             run a newer calldesk"
        )));
    }
    let cannot = |e: rusqlite::Error| StoreError {
        corrupt: super::is_corrupt(&e),
        message: format!("cannot write store {}: {e}", path.display()),
    };
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(cannot)?;
    if version < SCHEMA_VERSION {
        let tx = conn.transaction().map_err(cannot)?;
        for migration in &MIGRATIONS[version as usize..] {
            tx.execute_batch(migration).map_err(cannot)?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(cannot)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(cannot)?;
        tx.commit().map_err(cannot)?;
    }
    Ok(())
}
