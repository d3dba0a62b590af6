//! What the store keeps for status callbacks (`--webhooks`, `crate::webhooks`): which agents
//! each subscription covers, and one cursor per subscription and interaction.
//!
//! - **Subscriptions** ([`Store::webhook_subscribe`](super::Store::webhook_subscribe)): one
//!   row per (agent, subscription), `*` for every agent. The writer reads them when it creates
//!   an interaction, and in the same transaction gives each subscription that covers the agent
//!   a cursor at 0: an interaction's events can never be committed without the cursors that
//!   will deliver them. A subscription registered later (or an agent added to one) gets
//!   cursors for the live interactions at their latest sequence: it starts from "now".
//! - **Cursors**: the last sequence delivered (or skipped) per subscription and interaction,
//!   moved forward durably ([`CursorMove`]; SQLite: in the writer thread's transactions), and
//!   deleted once the interaction's COMPLETED event is delivered. With PostgreSQL each cursor
//!   has an owner, the replica that delivers it (the one that created the interaction); a
//!   replica taken over leaves orphans that a live one claims
//!   ([`Store::webhook_claim`](super::Store::webhook_claim)), and a move succeeds only for
//!   the owner, so each event is delivered by one replica.
//! - **Commits** ([`Store::commits`](super::Store::commits)): a feed of what the store has
//!   committed, so that deliveries start at once rather than by polling.

use std::sync::Arc;

use crate::domain::EncodedEvent;

/// The agents a subscription covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agents {
    /// `*`: every agent, present and future.
    All,
    /// These agents (sorted, without duplicates).
    Only(Vec<String>),
}

impl Agents {
    /// Whether it covers `agent_id`.
    pub fn covers(&self, agent_id: &str) -> bool {
        match self {
            Agents::All => true,
            Agents::Only(ids) => ids.binary_search_by(|id| id.as_str().cmp(agent_id)).is_ok(),
        }
    }

    /// Whether it covers `agent_id` and `before` (the same subscription's earlier agents, if
    /// it existed) did not: that agent's live interactions get cursors from "now".
    pub(crate) fn newly_covers(&self, before: Option<&Agents>, agent_id: &str) -> bool {
        self.covers(agent_id) && !before.is_some_and(|b| b.covers(agent_id))
    }

    /// The rows it stands for in `webhook_subscriptions`' agent column.
    pub(crate) fn rows(&self) -> Vec<&str> {
        match self {
            Agents::All => vec![ALL_AGENTS],
            Agents::Only(ids) => ids.iter().map(String::as_str).collect(),
        }
    }

    /// From the rows of `webhook_subscriptions`.
    pub(crate) fn from_rows(mut rows: Vec<String>) -> Self {
        if rows.iter().any(|r| r == ALL_AGENTS) {
            return Agents::All;
        }
        rows.sort_unstable();
        rows.dedup();
        Agents::Only(rows)
    }
}

/// The agent column's value for "every agent".
pub(crate) const ALL_AGENTS: &str = "*";

/// A subscription as the store knows it: its name and the agents it covers (its URL, secret
/// and event kinds are the delivery's business, not the store's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub name: String,
    pub agents: Agents,
}

/// One cursor of a subscription, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub interaction_id: String,
    /// The last sequence delivered or skipped (0: none yet).
    pub delivered: u64,
    /// The interaction's latest committed sequence; None when the interaction is gone
    /// (retention deleted it before its events were delivered).
    pub latest: Option<u64>,
}

/// A change to one cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorMove {
    /// Events up to `delivered` are delivered (or skipped, or dropped).
    Advance {
        subscription: Arc<str>,
        interaction_id: Arc<str>,
        delivered: u64,
    },
    /// The interaction's last event (COMPLETED) is delivered: the cursor goes.
    Finish {
        subscription: Arc<str>,
        interaction_id: Arc<str>,
    },
}

/// Something the store committed.
#[derive(Debug, Clone)]
pub enum Commit {
    /// An event.
    Event(Committed),
    /// Commits may have gone unreported (PostgreSQL's listening connection broke): whoever
    /// follows the feed must look at the store again.
    Missed,
}

/// A committed event: whose and which.
#[derive(Debug, Clone)]
pub struct Committed {
    pub interaction_id: Arc<str>,
    pub agent_id: Arc<str>,
    pub sequence: u64,
    /// The event itself when the store has it at hand (SQLite: the bytes it wrote); None when
    /// it must be read (PostgreSQL: a notification names it).
    pub event: Option<EncodedEvent>,
}

/// How many commits the feed buffers for a follower that falls behind (it then gets
/// `Lagged` and must look at the store again).
pub(crate) const COMMIT_FEED_CAPACITY: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn only(ids: &[&str]) -> Agents {
        Agents::from_rows(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn agents_cover_one_or_all() {
        assert!(Agents::All.covers("anyone"));
        assert!(only(&["bob", "alice"]).covers("alice"));
        assert!(!only(&["bob", "alice"]).covers("carol"));
        assert_eq!(only(&["a", "*"]), Agents::All);

        assert_eq!(
            only(&["b", "a", "b"]),
            Agents::Only(vec!["a".into(), "b".into()])
        );
        assert_eq!(Agents::All.rows(), ["*"]);
        let ab = only(&["a", "b"]);
        assert!(ab.newly_covers(None, "a"));
        assert!(!ab.newly_covers(Some(&only(&["a"])), "a"));
        assert!(ab.newly_covers(Some(&only(&["a"])), "b"));
        assert!(!ab.newly_covers(Some(&Agents::All), "b"));
        assert!(Agents::All.newly_covers(Some(&ab), "c"));
        assert!(!Agents::All.newly_covers(Some(&ab), "a"));
    }
}
