//! Health as one source of truth: a set of named reasons for NOT_SERVING. The server is
//! SERVING exactly while the set is empty, for both names it answers (`""` and
//! `calldesk.v1.InteractionService`).
//!
//! Whatever can make calldesk unfit for new work adds its reason and clears it when it passes:
//! the store (disk full, writes failing or stalled, corrupt, file replaced, integrity check
//! running), the SIP trunk, and shutdown. Each reason is logged once when it appears (WARN;
//! INFO for shutdown, which is asked for) and once when it clears (INFO), never repeatedly.

use std::{collections::BTreeMap, fmt, sync::Arc};

use tokio::sync::{watch, Mutex};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    api::InteractionApi, proto::interaction_service_server::InteractionServiceServer,
    store::StoreFault,
};

/// Why the server is NOT_SERVING.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The store cannot take writes, or is not trusted yet.
    Store(StoreFault),
    /// The SIP trunk leaves OPTIONS unanswered.
    Trunk,
    /// Shutdown has begun.
    ShuttingDown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Store(fault) => write!(f, "store: {}", fault.describe()),
            Reason::Trunk => f.write_str("the SIP trunk does not answer OPTIONS"),
            Reason::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

/// The reasons and the reporter they drive. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    reasons: Arc<watch::Sender<BTreeMap<Reason, String>>>,
    /// Held while a status is being reported, so that the last report reads the latest set.
    reporter: Arc<Mutex<HealthReporter>>,
}

impl Health {
    /// Starts SERVING, with a task that reports every change of the set.
    pub async fn start(reporter: HealthReporter) -> Health {
        let health = Health {
            reasons: Arc::new(watch::channel(BTreeMap::new()).0),
            reporter: Arc::new(Mutex::new(reporter)),
        };
        health.report().await;
        let follower = health.clone();
        let mut changes = health.reasons.subscribe();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                follower.report().await;
            }
        });
        health
    }

    /// Adds a reason (its `detail` is logged with it); nothing happens if it is already there.
    pub fn set(&self, reason: Reason, detail: &str) {
        let added = self.reasons.send_if_modified(|reasons| {
            if reasons.contains_key(&reason) {
                return false;
            }
            reasons.insert(reason, detail.to_owned());
            true
        });
        if added {
            // A shutdown is asked for, not a fault: it reads as what it is.
            if reason == Reason::ShuttingDown {
                tracing::info!(%reason, %detail, "health: NOT_SERVING");
            } else {
                tracing::warn!(%reason, %detail, "health: NOT_SERVING");
            }
        }
    }

    /// Removes a reason; nothing happens if it is not there.
    pub fn clear(&self, reason: Reason) {
        let mut left = 0;
        let removed = self.reasons.send_if_modified(|reasons| {
            let removed = reasons.remove(&reason).is_some();
            left = reasons.len();
            removed
        });
        if removed {
            if left == 0 {
                tracing::info!(%reason, "health: cleared; SERVING");
            } else {
                tracing::info!(%reason, still_not_serving = left, "health: cleared");
            }
        }
    }

    /// Sets or clears `reason`.
    pub fn hold(&self, reason: Reason, holds: bool, detail: &str) {
        if holds {
            self.set(reason, detail);
        } else {
            self.clear(reason);
        }
    }

    /// Whether the server reports SERVING.
    pub fn serving(&self) -> bool {
        self.reasons.borrow().is_empty()
    }

    /// Reports the current set now; returns once the reporter has it.
    pub async fn report(&self) {
        let reporter = self.reporter.lock().await;
        let status = if self.serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        // The service first: whoever sees the server's status change sees the service's too.
        reporter
            .set_service_status(
                <InteractionServiceServer<InteractionApi> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
        reporter.set_service_status("", status).await;
    }
}
