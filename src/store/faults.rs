//! What is wrong with the store right now, as a set of [`StoreFault`]s that the writer, its
//! watchdog, the integrity check and the readers set and clear, and that the server turns into
//! health (`server::health`) and the call manager into refusals.
//!
//! Each fault is logged once when it appears (ERROR for the permanent ones, WARN otherwise)
//! and once when it clears (INFO), never per failed write.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::watch;

pub use crate::domain::StoreFault;

/// The faults that hold, each with the words of the error that raised it.
pub type Faults = BTreeMap<StoreFault, String>;

/// The shared set of faults. Cheap to clone; readable and writable from any thread without
/// waiting (a watch channel).
#[derive(Clone)]
pub struct FaultState {
    tx: Arc<watch::Sender<Faults>>,
    /// The database file, named in every log line.
    path: Arc<PathBuf>,
}

impl FaultState {
    pub fn new(path: &Path) -> Self {
        Self {
            tx: Arc::new(watch::channel(Faults::new()).0),
            path: Arc::new(path.to_owned()),
        }
    }

    /// Raises `fault`; returns whether it is new. A permanent fault, once raised, stays.
    pub fn set(&self, fault: StoreFault, detail: impl Into<String>) -> bool {
        let detail = detail.into();
        let added = self.tx.send_if_modified(|faults| {
            if faults.contains_key(&fault) {
                return false;
            }
            faults.insert(fault, detail.clone());
            true
        });
        if added {
            let path = self.path.display();
            if fault.is_permanent() {
                tracing::error!(
                    store = %path,
                    "store fault: {}: {detail}. {}",
                    fault.describe(),
                    what_to_do(fault, &self.path)
                );
            } else if fault == StoreFault::Checking {
                tracing::info!(store = %path, "{}: {detail}", fault.describe());
            } else {
                tracing::warn!(
                    store = %path,
                    "store fault: {}: {detail}. New work is refused (UNAVAILABLE) until it \
                     clears",
                    fault.describe()
                );
            }
        }
        added
    }

    /// Clears `fault` unless it is permanent; returns whether it was there.
    pub fn clear(&self, fault: StoreFault) -> bool {
        if fault.is_permanent() {
            return false;
        }
        let removed = self
            .tx
            .send_if_modified(|faults| faults.remove(&fault).is_some());
        if removed {
            tracing::info!(store = %self.path.display(), "store fault cleared: {}", fault.describe());
        }
        removed
    }

    /// Whether `fault` holds.
    pub fn has(&self, fault: StoreFault) -> bool {
        self.tx.borrow().contains_key(&fault)
    }

    /// The fault that refuses new work, if any (a permanent one first).
    pub fn refusing(&self) -> Option<StoreFault> {
        let faults = self.tx.borrow();
        let mut refusing = faults.keys().copied().filter(|f| f.refuses_writes());
        let first = refusing.clone().find(|f| f.is_permanent());
        first.or_else(|| refusing.next())
    }

    /// The permanent fault, if one holds, with its words.
    pub fn permanent(&self) -> Option<(StoreFault, String)> {
        self.tx
            .borrow()
            .iter()
            .find(|(f, _)| f.is_permanent())
            .map(|(f, d)| (*f, d.clone()))
    }

    /// What the store is, as logs name it (a file, or PostgreSQL's host and database).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Follows the set: every change wakes the receiver.
    pub fn subscribe(&self) -> watch::Receiver<Faults> {
        self.tx.subscribe()
    }

    /// A snapshot of the set.
    pub fn current(&self) -> Faults {
        self.tx.borrow().clone()
    }
}

/// What an operator does about a permanent fault.
pub fn what_to_do(fault: StoreFault, path: &Path) -> String {
    match fault {
        StoreFault::Corrupt => recover_advice(path),
        StoreFault::Replaced => format!(
            "calldesk acknowledges nothing more. What it wrote since it opened the file is still \
             in the deleted file, open in this process: copy it out before restarting \
             (`ls -l /proc/<pid>/fd | grep '{}'`, then `cp /proc/<pid>/fd/<N> {}`), then \
             restart calldesk",
            path.display(),
            path.display()
        ),
        StoreFault::Fenced => "this replica stops; the one that took over its interactions \
             serves them, and a replica started again registers a new lease"
            .into(),
        _ => String::new(),
    }
}

/// How to recover from a damaged database file: the sentence every corruption message ends
/// with.
pub fn recover_advice(path: &Path) -> String {
    let p = path.display();
    format!(
        "calldesk will not use a damaged store. To recover: stop calldesk and move {p} (and any \
         {p}-wal) aside; then either restore {p} from a backup, or salvage what SQLite can \
         still read with `sqlite3 DAMAGED.db .recover | sqlite3 {p}` and mark it as \
         calldesk's with `sqlite3 {p} 'PRAGMA application_id = {}; PRAGMA user_version = {}'`; \
         check it with `sqlite3 {p} 'PRAGMA integrity_check'` before starting calldesk again",
        super::sqlite::schema::APPLICATION_ID,
        super::sqlite::schema::SCHEMA_VERSION
    )
}
