//! The writer's watchdog: a thread that looks, every second, at what the writer cannot report
//! itself. A commit running longer than [`STALL_AFTER`] (a frozen or hung disk: the writer is
//! stuck in the kernel) raises `Stalled`; the file at the store's path no longer being the one
//! written (deleted or replaced) raises `Replaced`, even while no write comes.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use super::{now_millis, same_file, FaultState, FileId, StoreFault};

/// A write not finished after this long turns health NOT_SERVING.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// How often the watchdog looks.
const INTERVAL: Duration = Duration::from_secs(1);

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
    ) -> Option<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("calldesk-store-watchdog".into())
            .spawn(move || loop {
                let since = busy_since.load(Ordering::Relaxed);
                if since != 0 {
                    let running = Duration::from_millis(now_millis().saturating_sub(since));
                    if running >= STALL_AFTER {
                        faults.set(
                            StoreFault::Stalled,
                            format!(
                                "a write to {} has not finished after {}s",
                                path.display(),
                                running.as_secs()
                            ),
                        );
                    }
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
