//! Status callbacks (`--webhooks FILE`): every event of the subscribed agents' interactions
//! POSTed to an HTTP endpoint, in order per interaction, signed (Standard Webhooks), and never
//! lost. The contract is docs/api.md §12; the user's guide docs/guide/webhooks.md.
//!
//! The parts, each a file:
//!
//! - [`config`]: the file (one subscription per line) and what the flags allow ([`Policy`]);
//!   the server re-reads it on SIGHUP and hands each good reading here.
//! - [`signing`]: the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
//! - [`ssrf`]: which addresses a callback may go to, checked on the address connected to.
//! - [`client`]: the HTTP client (hyper-util over rustls, system roots, no redirects).
//! - [`backoff`]: when a failed attempt is tried again.
//! - [`cursors`]: the group commit of cursor moves.
//! - [`delivery`]: one subscription's deliveries, a lane per interaction.
//!
//! The durable part lives in the store (`store::webhooks`): the writer gives each new
//! interaction a cursor per subscription that covers its agent, in the transaction that
//! creates it, and a delivery moves the cursor past an event (durably) before it sends the
//! next one. So an event is never lost, and after a crash only the request that was in flight
//! is sent again (with the same `webhook-id`). With several replicas (PostgreSQL), each cursor
//! has one owner replica; those of a replica that was taken over are claimed here, every
//! [`CLAIM_INTERVAL`], by whichever live replica gets them first.
//!
//! This module depends on the store and the domain only; nothing here runs in the call
//! manager's actor, and no store write waits for a request.

pub mod backoff;
pub mod client;
pub mod config;
pub mod cursors;
pub mod delivery;
pub mod signing;
pub mod ssrf;

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{
    sync::watch,
    task::{AbortHandle, JoinSet},
};

pub use config::{Policy, Subscription, Subscriptions};

use crate::store::{webhooks::Subscribed, Store};

/// How often a replica looks for cursors whose owner is gone (PostgreSQL).
pub const CLAIM_INTERVAL: Duration = Duration::from_secs(1);
/// After the store refused to register the subscriptions, when to try again.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

/// What the flags say.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--webhook-retry-for`: how long after an event happened its delivery is retried.
    pub retry_for: Duration,
    /// `--webhook-timeout`: each attempt's deadline.
    pub timeout: Duration,
    pub policy: Policy,
}

/// The running deliveries; dropping it (or [`Webhooks::stop`]) stops them all.
pub struct Webhooks {
    task: tokio::task::JoinHandle<()>,
}

impl Webhooks {
    /// Stops every delivery now. A request in flight is cut: its event is sent again at the
    /// next start (same `webhook-id`).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts delivering the subscriptions `file` holds now, and whatever it holds after each
/// reload. It returns once those of now are registered in the store: the server serves after
/// it, so that a call placed as soon as it listens gets its cursors (an interaction created
/// before its subscription was registered would never be delivered).
pub async fn start(
    store: Store,
    mut file: watch::Receiver<Arc<Subscriptions>>,
    settings: Settings,
) -> Result<Webhooks, String> {
    let client = client::Client::new(settings.policy.allow_private, settings.timeout)?;
    let first = file.borrow_and_update().clone();
    for sub in &first.subscriptions {
        delivery::expose_metrics(&sub.name);
    }
    store
        .webhook_subscribe(subscribed(&first))
        .await
        .map_err(|e| format!("cannot register the webhook subscriptions: {e}"))?;
    let task = tokio::spawn(follow(store, file, first, settings, client));
    Ok(Webhooks { task })
}

/// What the store keeps of a reading of the file.
fn subscribed(reading: &Subscriptions) -> Vec<Subscribed> {
    reading
        .subscriptions
        .iter()
        .map(|s| Subscribed {
            name: s.name.to_string(),
            agents: s.agents.clone(),
        })
        .collect()
}

/// Applies each reading of the file (`first` is registered already), and claims orphaned
/// cursors.
async fn follow(
    store: Store,
    mut file: watch::Receiver<Arc<Subscriptions>>,
    first: Arc<Subscriptions>,
    settings: Settings,
    client: client::Client,
) {
    let cursors = cursors::CursorWriter::start(store.clone());
    let (rescan, rescans) = watch::channel(0u64);
    let mut deliveries: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<Arc<str>, (Arc<Subscription>, AbortHandle)> = HashMap::new();
    let mut claims = tokio::time::interval(CLAIM_INTERVAL);
    claims.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let context = |subscription| delivery::Context {
        subscription,
        store: store.clone(),
        client: client.clone(),
        cursors: cursors.clone(),
        retry_for: settings.retry_for,
    };
    apply(&first, &mut running, &mut deliveries, &context, &rescans);
    let mut registered = first;
    let mut warned = false;
    loop {
        let reading = file.borrow_and_update().clone();
        if registered != reading {
            match store.webhook_subscribe(subscribed(&reading)).await {
                Ok(()) => {
                    warned = false;
                    apply(&reading, &mut running, &mut deliveries, &context, &rescans);
                    registered = reading.clone();
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(
                            "webhooks: cannot register the subscriptions ({e}); retrying"
                        );
                        warned = true;
                    }
                }
            }
        }
        tokio::select! {
            changed = file.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(REGISTER_RETRY), if registered != reading => {}
            _ = claims.tick(), if store.is_shared() => match store.webhook_claim().await {
                Ok(0) => {}
                Ok(claimed) => {
                    tracing::info!(cursors = claimed, "webhooks: took over the cursors of a replica that is gone");
                    rescan.send_modify(|n| *n += 1);
                }
                Err(e) => tracing::debug!("webhooks: cannot claim cursors: {e}"),
            },
            Some(ended) = deliveries.join_next(), if !deliveries.is_empty() => {
                if let Err(e) = ended {
                    if e.is_panic() {
                        tracing::error!("webhooks: a subscription's deliveries panicked: {e}");
                    }
                }
            }
        }
    }
}

/// Starts the deliveries of new or changed subscriptions, stops those of changed or removed
/// ones (a change restarts them from the stored cursors).
fn apply(
    reading: &Subscriptions,
    running: &mut HashMap<Arc<str>, (Arc<Subscription>, AbortHandle)>,
    deliveries: &mut JoinSet<()>,
    context: &impl Fn(Arc<Subscription>) -> delivery::Context,
    rescans: &watch::Receiver<u64>,
) {
    running.retain(|name, (sub, handle)| {
        let keep = reading.subscriptions.iter().any(|s| s == sub);
        if !keep {
            handle.abort();
            if !reading.subscriptions.iter().any(|s| &s.name == name) {
                metrics::gauge!("calldesk_webhook_lag_seconds", "subscription" => name.to_string())
                    .set(0.0);
            }
        }
        keep
    });
    for sub in &reading.subscriptions {
        if running.contains_key(&sub.name) {
            continue;
        }
        tracing::info!(
            subscription = %sub.name,
            url = %sub.origin(),
            "webhooks: delivering"
        );
        let handle = deliveries.spawn(delivery::run(context(sub.clone()), rescans.clone()));
        running.insert(sub.name.clone(), (sub.clone(), handle));
    }
}
