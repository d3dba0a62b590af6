//! Files the server re-reads on SIGHUP: the auth tokens and the SIP agents' phones.
//!
//! A file is read once at start-up (a bad file fails the start, naming the path), then again
//! on every SIGHUP: a good reading replaces the current one at once for every reader, a bad one
//! keeps the previous reading and logs why. Readers hold a `watch::Receiver` and borrow the
//! latest `Arc` only to clone it, never across an await.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::watch;

/// A file's parsed content.
pub trait Reloadable: Sized + Send + Sync + 'static {
    /// What the file is, in log lines: "auth tokens", "SIP agent phones".
    const WHAT: &'static str;

    /// Reads and parses the file; the error names the path and the line at fault.
    fn load(path: &Path) -> Result<Self, String>;

    /// How many entries it holds, for log lines.
    fn entries(&self) -> usize;

    /// What an operator must know about this reading, logged as a warning on every load.
    fn warning(&self) -> Option<&'static str> {
        None
    }
}

fn log_loaded<T: Reloadable>(path: &Path, content: &T, how: &str) {
    let entries = content.entries();
    match content.warning() {
        Some(warning) => {
            tracing::warn!(path = %path.display(), entries, "{} {how}: {warning}", T::WHAT)
        }
        None => tracing::info!(path = %path.display(), entries, "{} {how}", T::WHAT),
    }
}

/// Loads `path` and re-reads it on every SIGHUP for as long as a receiver is alive.
///
/// Call it inside a tokio runtime: the SIGHUP task is spawned there. Outside a runtime the
/// file is loaded but not reloaded.
pub fn watch_file<T: Reloadable>(path: &Path) -> Result<watch::Receiver<Arc<T>>, String> {
    let content = T::load(path)?;
    log_loaded(path, &content, "loaded");
    let (sender, current) = watch::channel(Arc::new(content));
    spawn_reloader(path.to_owned(), sender);
    Ok(current)
}

/// Starts the task that re-reads `path` on SIGHUP, if there is a runtime to run it.
#[cfg(unix)]
fn spawn_reloader<T: Reloadable>(path: PathBuf, sender: watch::Sender<Arc<T>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(path = %path.display(), "no tokio runtime: {} will not be re-read on SIGHUP", T::WHAT);
        return;
    };
    let _entered = runtime.enter();
    let hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot listen for SIGHUP: {} will not be re-read", T::WHAT);
            return;
        }
    };
    runtime.spawn(reload_on_hangup(path, sender, hangups));
}

#[cfg(not(unix))]
fn spawn_reloader<T: Reloadable>(_path: PathBuf, _sender: watch::Sender<Arc<T>>) {}

/// Re-reads the file on each SIGHUP until every receiver is gone.
#[cfg(unix)]
async fn reload_on_hangup<T: Reloadable>(
    path: PathBuf,
    sender: watch::Sender<Arc<T>>,
    mut hangups: tokio::signal::unix::Signal,
) {
    loop {
        tokio::select! {
            _ = sender.closed() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        let reading = path.clone();
        match tokio::task::spawn_blocking(move || T::load(&reading)).await {
            Ok(Ok(content)) => {
                log_loaded(&path, &content, "reloaded on SIGHUP");
                sender.send_replace(Arc::new(content));
            }
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "{} not reloaded on SIGHUP; keeping the previous ones", T::WHAT);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "{} not reloaded on SIGHUP; keeping the previous ones", T::WHAT);
            }
        }
    }
}
