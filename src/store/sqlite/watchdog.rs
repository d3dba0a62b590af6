//! The writer's watchdog: a thread that looks, every second, at what the writer cannot report
//! itself. A commit running longer than [`STALL_AFTER`] (a frozen or hung disk: the writer is
//! stuck in the kernel) raises `Stalled`, and so does a read (on a frozen disk SQLite's shared
//! memory blocks readers too, and a StartCall may wait on one: its idempotency key's look-up);
//! the file at the store's path no longer being the one written (deleted or replaced) raises
//! `Replaced`, even while no write comes.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

use super::{now_millis, same_file, FaultState, FileId, StoreFault};

/// A write not finished after this long turns health NOT_SERVING.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// How often the watchdog looks.
const INTERVAL: Duration = Duration::from_secs(1);

/// When each read under way started (ms since the epoch), for the watchdog.
#[derive(Default)]
pub(super) struct ReadClock {
    /// Read id → its start; an entry lives as long as its [`ReadTimer`].
    started: Mutex<HashMap<u64, u64>>,
    /// The next read's id.
    next: AtomicU64,
}

/// A read under way: forgotten by the clock when dropped.
pub(super) struct ReadTimer {
    clock: Arc<ReadClock>,
    id: u64,
}

impl ReadClock {
    fn started(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        // Only inserts and removes: a poisoned map is still a valid one.
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Times a read until the returned timer is dropped.
    pub(super) fn start(self: &Arc<Self>) -> ReadTimer {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.started().insert(id, now_millis());
        ReadTimer {
            clock: self.clone(),
            id,
        }
    }

    /// When the oldest read under way started; 0 when none is.
    fn oldest(&self) -> u64 {
        self.started().values().copied().min().unwrap_or(0)
    }
}

impl Drop for ReadTimer {
    fn drop(&mut self) {
        self.clock.started().remove(&self.id);
    }
}

pub(super) struct Watchdog {
    stop: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Watchdog {
    pub(super) fn start(
        path: PathBuf,
        file: FileId,
        faults: FaultState,
        busy_since: Arc<AtomicU64>,
        reads: Arc<ReadClock>,
    ) -> Option<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("calldesk-store-watchdog".into())
            .spawn(move || loop {
                let mut stalled = false;
                for (what, since) in [
                    ("a write to", busy_since.load(Ordering::Relaxed)),
                    ("a read of", reads.oldest()),
                ] {
                    if since == 0 {
                        continue;
                    }
                    let running = Duration::from_millis(now_millis().saturating_sub(since));
                    if running >= STALL_AFTER {
                        stalled = true;
                        faults.set(
                            StoreFault::Stalled,
                            format!(
                                "{what} {} has not finished after {}s",
                                path.display(),
                                running.as_secs()
                            ),
                        );
                    }
                }
                // Nothing stuck any more (a stalled read ended; the writer clears its own
                // after the commit): the store serves again without waiting for a write.
                if !stalled && faults.has(StoreFault::Stalled) {
                    faults.clear(StoreFault::Stalled);
                }
                // Only stat(2): it answers even on a frozen file system.
                if let Err(detail) = same_file(&path, file) {
                    faults.set(StoreFault::Replaced, detail);
                }
                match stopped.recv_timeout(INTERVAL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => return,
                }
            })
            .map_err(|e| tracing::error!("cannot start the store watchdog thread: {e}"))
            .ok()?;
        Some(Self { stop, thread })
    }

    pub(super) fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}
