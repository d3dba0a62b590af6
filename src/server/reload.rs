//! Files the server re-reads on SIGHUP: the auth tokens, the SIP agents' phones, the calling
//! hours, the do-not-call lists and the webhooks' subscriptions.
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

/// Content read from several files together (`--dnc`): a reload replaces all of it or none.
pub trait ReloadableFiles: Sized + Send + Sync + 'static {
    /// What the files are, in log lines: "do-not-call lists".
    const WHAT: &'static str;

    /// Reads and parses every file; the error names the file and the line at fault.
    fn load(paths: &[PathBuf]) -> Result<Self, String>;

    /// How many entries they hold, for log lines.
    fn entries(&self) -> usize;
}

/// How a reading is logged: what it is, where from, how many entries, any warning.
struct Reading {
    what: &'static str,
    /// The path (or paths) it comes from, as logged.
    from: String,
}

impl Reading {
    fn loaded(&self, entries: usize, warning: Option<&'static str>, how: &str) {
        let (what, path) = (self.what, &self.from);
        match warning {
            Some(warning) => tracing::warn!(%path, entries, "{what} {how}: {warning}"),
            None => tracing::info!(%path, entries, "{what} {how}"),
        }
    }
}

/// Reads the content (again).
type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// Loads `path` and re-reads it on every SIGHUP for as long as a receiver is alive.
///
/// Call it inside a tokio runtime: the SIGHUP task is spawned there. Outside a runtime the
/// file is loaded but not reloaded.
pub fn watch_file<T: Reloadable>(path: &Path) -> Result<watch::Receiver<Arc<T>>, String> {
    watch_file_checked(path, |_: &T| Ok(()))
}

/// Like [`watch_file`], with a check of what the flags allow beside the file's own rules: a
/// reading it refuses is a bad file (at start-up, and on SIGHUP, where the last one stays).
pub fn watch_file_checked<T: Reloadable>(
    path: &Path,
    check: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
) -> Result<watch::Receiver<Arc<T>>, String> {
    let owned = path.to_owned();
    let reading = Reading {
        what: T::WHAT,
        from: path.display().to_string(),
    };
    watch_with(
        reading,
        Box::new(move || T::load(&owned).and_then(|t| check(&t).map(|()| t))),
        |content: &T, reading: &Reading, how: &str| {
            reading.loaded(content.entries(), content.warning(), how)
        },
    )
}

/// Loads every file of `paths` as one content and re-reads them together on every SIGHUP, as
/// [`watch_file`] does for one.
pub fn watch_files<T: ReloadableFiles>(
    paths: &[PathBuf],
) -> Result<watch::Receiver<Arc<T>>, String> {
    let owned = paths.to_vec();
    let reading = Reading {
        what: T::WHAT,
        from: paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    watch_with(
        reading,
        Box::new(move || T::load(&owned)),
        |content: &T, reading: &Reading, how: &str| reading.loaded(content.entries(), None, how),
    )
}

fn watch_with<T: Send + Sync + 'static>(
    reading: Reading,
    load: Loader<T>,
    log: fn(&T, &Reading, &str),
) -> Result<watch::Receiver<Arc<T>>, String> {
    let content = load()?;
    log(&content, &reading, "loaded");
    let (sender, current) = watch::channel(Arc::new(content));
    spawn_reloader(reading, load, log, sender);
    Ok(current)
}

/// Starts the task that re-reads the content on SIGHUP, if there is a runtime to run it.
#[cfg(unix)]
fn spawn_reloader<T: Send + Sync + 'static>(
    reading: Reading,
    load: Loader<T>,
    log: fn(&T, &Reading, &str),
    sender: watch::Sender<Arc<T>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (what, path) = (reading.what, reading.from.clone());
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(%path, "no tokio runtime: {what} will not be re-read on SIGHUP");
        return;
    };
    let _entered = runtime.enter();
    let hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(%path, error = %e, "cannot listen for SIGHUP: {what} will not be re-read");
            return;
        }
    };
    runtime.spawn(reload_on_hangup(reading, load, log, sender, hangups));
}

#[cfg(not(unix))]
fn spawn_reloader<T: Send + Sync + 'static>(
    _reading: Reading,
    _load: Loader<T>,
    _log: fn(&T, &Reading, &str),
    _sender: watch::Sender<Arc<T>>,
) {
}

/// Re-reads the content on each SIGHUP until every receiver is gone.
#[cfg(unix)]
async fn reload_on_hangup<T: Send + Sync + 'static>(
    reading: Reading,
    load: Loader<T>,
    log: fn(&T, &Reading, &str),
    sender: watch::Sender<Arc<T>>,
    mut hangups: tokio::signal::unix::Signal,
) {
    let load = Arc::new(load);
    loop {
        tokio::select! {
            _ = sender.closed() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        let again = load.clone();
        let what = reading.what;
        match tokio::task::spawn_blocking(move || again()).await {
            Ok(Ok(content)) => {
                // In use before it is said to be: whoever reads the line and acts on it (a
                // test, an operator) gets the new content, never the old.
                let content = Arc::new(content);
                sender.send_replace(content.clone());
                log(&content, &reading, "reloaded on SIGHUP");
            }
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "{what} not reloaded on SIGHUP; keeping the previous ones");
            }
            Err(e) => {
                let path = &reading.from;
                tracing::warn!(%path, error = %e, "{what} not reloaded on SIGHUP; keeping the previous ones");
            }
        }
    }
}
