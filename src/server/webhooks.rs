//! `--webhooks`: the subscriptions file, read with what the `--webhook-*` flags allow and
//! re-read on SIGHUP, and the deliveries (`crate::webhooks`) started on the store.

use super::{
    config::Config,
    reload::{watch_file_checked, Reloadable},
    ServeError,
};
use crate::{
    store::Store,
    webhooks::{self, Policy, Subscriptions, Webhooks},
};

impl Reloadable for Subscriptions {
    const WHAT: &'static str = "webhook subscriptions";

    fn load(path: &std::path::Path) -> Result<Self, String> {
        Subscriptions::load(path)
    }

    fn entries(&self) -> usize {
        self.subscriptions.len()
    }
}

/// The file and settings of `--webhooks`, read before anything else starts (a bad file fails
/// the start, touching nothing).
pub struct Loaded {
    file: tokio::sync::watch::Receiver<std::sync::Arc<Subscriptions>>,
    settings: webhooks::Settings,
}

/// Reads `--webhooks`, if given, and checks it against the `--webhook-*` flags.
pub fn load(config: &Config) -> Result<Option<Loaded>, ServeError> {
    let Some(path) = &config.webhooks else {
        return Ok(None);
    };
    let policy = Policy {
        allow_private: config.webhook_allow_private,
        allow_http: config.webhook_allow_http,
    };
    let file = watch_file_checked(path, move |subs: &Subscriptions| subs.check(&policy))
        .map_err(ServeError)?;
    Ok(Some(Loaded {
        file,
        settings: webhooks::Settings {
            retry_for: config.webhook_retry_for,
            timeout: config.webhook_timeout,
            policy,
        },
    }))
}

/// Registers the subscriptions in the store and starts the deliveries: before the server
/// serves, so that every call it takes is covered.
pub async fn start(loaded: Option<Loaded>, store: &Store) -> Result<Option<Webhooks>, ServeError> {
    let Some(Loaded { file, settings }) = loaded else {
        return Ok(None);
    };
    webhooks::start(store.clone(), file, settings)
        .await
        .map(Some)
        .map_err(ServeError)
}
