//! Every replica's committed events, for this replica's watchers: `LISTEN`, then read.
//!
//! The writer's transactions end with `pg_notify` listing their events (interaction id,
//! sequence, agent id: one line each), which PostgreSQL delivers at commit, in commit order.
//! One connection per replica listens. For each notification it reads the events that
//! someone here watches from the `events` table, and publishes them on broadcast feeds, one
//! per watched interaction and one per watched agent. The notification only says where to
//! read; what watchers get is what was committed.
//!
//! If the listening connection breaks, notifications may have been missed. An interaction's
//! watchers then get its latest event again after reconnecting: a WatchInteraction stream that
//! sees a gap in sequences reads what it missed from the store (api/watch.rs), so it never
//! loses one. The agents' feeds are closed instead, which ends their WatchInteractions streams
//! with UNAVAILABLE, as for a watcher that fell behind: they watch again.
//!
//! Every notified event is also announced, without being read, on the commit feed that the
//! webhooks follow ([`Fanout::commits`]); after a reconnection that feed says `Missed`.
//!
//! A new agent watcher joins its feed at a barrier: a notification of its own, sent when it
//! asks. Notifications arrive in commit order, so the events notified before the barrier were
//! committed before the watcher asked, and it gets none of them: WatchInteractions has no
//! history, even for an event whose notification was still on its way.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_postgres::Pool;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::AsyncMessage;

use super::{describe, Connector};
use crate::{
    domain::{feed, EncodedEvent},
    store::{
        webhooks::{Commit, Committed, COMMIT_FEED_CAPACITY},
        AgentEventFeed, EventFeed,
    },
};

/// The channel the writer notifies and every replica listens on.
pub const CHANNEL: &str = "calldesk_events";
/// Events buffered per interaction feed (as the call manager's own).
const INTERACTION_FEED_CAPACITY: usize = 64;
/// Events buffered per agent feed (as the call manager's own).
const AGENT_FEED_CAPACITY: usize = 1024;
/// Notifications waiting to be read, at most.
const PENDING_NOTIFICATIONS: usize = 4096;
/// How long a new agent watcher waits for its barrier to come back before giving up.
const BARRIER_WAIT: Duration = Duration::from_secs(10);
/// A barrier notification starts with this; an event's line starts with its interaction id,
/// a UUID.
const BARRIER: &str = "barrier\t";
/// The longest wait between attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The feeds of this replica's watchers. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    hub: Arc<Mutex<Hub>>,
    /// To send barriers.
    pool: Pool,
    /// This replica's barriers' prefix, so that it knows its own among every replica's.
    nonce: String,
    /// Every notified event, for the webhooks.
    commits: broadcast::Sender<Commit>,
}

#[derive(Default)]
struct Hub {
    interactions: HashMap<String, broadcast::Sender<EncodedEvent>>,
    agents: HashMap<String, feed::Sender<EncodedEvent>>,
    /// Feeds at the last sweep of unwatched ones: the next sweep is when there are twice as
    /// many.
    swept_at: usize,
    /// Agent watchers waiting for their barrier, by its number: whose feed, and where to send
    /// it once joined.
    barriers: HashMap<u64, (String, oneshot::Sender<AgentEventFeed>)>,
    /// The next barrier's number.
    next_barrier: u64,
}

impl Hub {
    /// Drops the feeds nobody watches any more, once their number has doubled.
    fn sweep(&mut self) {
        let len = self.interactions.len() + self.agents.len();
        if len > 2 * self.swept_at.max(32) {
            self.interactions.retain(|_, f| f.receiver_count() > 0);
            self.agents.retain(|_, f| f.receiver_count() > 0);
            self.swept_at = self.interactions.len() + self.agents.len();
        }
    }

    /// Joins `agent`'s feed for a watcher whose barrier has come back.
    fn join(&mut self, agent: String, reply: oneshot::Sender<AgentEventFeed>) {
        let feed = self
            .agents
            .entry(agent)
            .or_insert_with(|| feed::channel(AGENT_FEED_CAPACITY))
            .subscribe();
        let _ = reply.send(feed);
    }

    fn watched(&self, id: &str, agent: &str) -> bool {
        self.interactions
            .get(id)
            .is_some_and(|f| f.receiver_count() > 0)
            || self
                .agents
                .get(agent)
                .is_some_and(|f| f.receiver_count() > 0)
    }
}

impl Fanout {
    /// Starts listening on a connection of its own; returns once `LISTEN` is in effect, so that
    /// no event committed after the server starts can go unnoticed.
    pub(super) async fn start(
        connector: Connector,
        pool: Pool,
        shown: String,
    ) -> Result<Self, crate::store::StoreError> {
        let fanout = Fanout {
            hub: Arc::new(Mutex::new(Hub::default())),
            pool: pool.clone(),
            nonce: uuid::Uuid::now_v7().simple().to_string(),
            commits: broadcast::channel(COMMIT_FEED_CAPACITY).0,
        };
        let first = subscribe(&connector).await.map_err(|e| {
            crate::store::StoreError::new(format!("cannot LISTEN on {shown}: {}", describe(&e)))
        })?;
        tokio::spawn(listen(
            connector,
            pool,
            Arc::downgrade(&fanout.hub),
            fanout.commits.clone(),
            shown,
            first,
            fanout.nonce.clone(),
        ));
        Ok(fanout)
    }

    /// A feed of one interaction's committed events.
    pub fn interaction(&self, id: &str) -> EventFeed {
        let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        hub.sweep();
        hub.interactions
            .entry(id.to_owned())
            .or_insert_with(|| broadcast::channel(INTERACTION_FEED_CAPACITY).0)
            .subscribe()
    }

    /// Every replica's commits from now on, as notified (the events are not read).
    pub fn commits(&self) -> broadcast::Receiver<Commit> {
        self.commits.subscribe()
    }

    /// A feed of the committed events of all of an agent's interactions, from its barrier on
    /// (module docs): one round trip to the store.
    pub async fn agent(&self, agent_id: &str) -> Result<AgentEventFeed, String> {
        let (reply, joined) = oneshot::channel();
        let number = {
            let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
            hub.sweep();
            let number = hub.next_barrier;
            hub.next_barrier += 1;
            hub.barriers.insert(number, (agent_id.to_owned(), reply));
            number
        };
        let sent = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let payload = format!("{BARRIER}{}\t{number}", self.nonce);
            client
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .await
                .map_err(|e| describe(&e))
        };
        // Whatever ends the wait (an error, a timeout, the request dropped), the barrier is
        // no longer waited for.
        let _forget = Forget {
            hub: &self.hub,
            number,
        };
        sent.await?;
        tokio::time::timeout(BARRIER_WAIT, joined)
            .await
            .map_err(|_| "no barrier came back from the store".to_owned())?
            .map_err(|_| "the listening connection ended".to_owned())
    }
}

/// Removes a barrier's waiter, if it is still there, when dropped.
struct Forget<'a> {
    hub: &'a Mutex<Hub>,
    number: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        hub.barriers.remove(&self.number);
    }
}

/// One line of a notification.
struct Notice<'a> {
    id: &'a str,
    sequence: i64,
    agent: &'a str,
}

fn parse(payload: &str) -> impl Iterator<Item = Notice<'_>> {
    payload.lines().filter_map(|line| {
        let mut parts = line.split('\t');
        let id = parts.next()?;
        let sequence = parts.next()?.parse().ok()?;
        let agent = parts.next()?;
        Some(Notice {
            id,
            sequence,
            agent,
        })
    })
}

/// A listening connection: its client (kept open) and its notifications' payloads.
type Listening = (tokio_postgres::Client, mpsc::Receiver<String>);

/// Connects and `LISTEN`s; notifications arrive on the receiver until the connection breaks.
async fn subscribe(connector: &Connector) -> Result<Listening, tokio_postgres::Error> {
    let (client, mut connection) = connector.connect().await?;
    let (tx, notifications) = mpsc::channel::<String>(PENDING_NOTIFICATIONS);
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return Err(e);
    }
    Ok((client, notifications))
}

async fn listen(
    connector: Connector,
    pool: Pool,
    hub: std::sync::Weak<Mutex<Hub>>,
    commits: broadcast::Sender<Commit>,
    shown: String,
    first: Listening,
    nonce: String,
) {
    let mut listening = Some(first);
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        let reconnected = listening.is_none();
        let (client, mut notifications) = match listening.take() {
            Some(l) => l,
            None => match subscribe(&connector).await {
                Ok(l) => l,
                Err(e) => {
                    if !warned {
                        tracing::warn!(store = %shown, "watchers: cannot listen: {}", describe(&e));
                        warned = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(50);
        warned = false;
        if reconnected {
            tracing::info!(store = %shown, "watchers: listening again");
            let _ = commits.send(Commit::Missed);
            resync(&pool, &hub).await;
            // Their barriers may have been lost; whatever came before now is history.
            if let Some(hub) = hub.upgrade() {
                let mut hub = hub.lock().unwrap_or_else(|e| e.into_inner());
                for (_, (agent, reply)) in std::mem::take(&mut hub.barriers) {
                    hub.join(agent, reply);
                }
            }
        }
        while let Some(payload) = notifications.recv().await {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            if let Some(barrier) = payload.strip_prefix(BARRIER) {
                pass_barrier(&hub, &nonce, barrier);
                continue;
            }
            announce(&commits, &payload);
            publish(&pool, &hub, &payload).await;
        }
        drop(client);
        tracing::warn!(store = %shown, "watchers: lost the listening connection; reconnecting");
        // Notifications may be lost until it is back: agents' feeds cannot be trusted.
        if let Some(hub) = hub.upgrade() {
            hub.lock().unwrap_or_else(|e| e.into_inner()).agents.clear();
        }
    }
}

/// A barrier came back: if it is one of this replica's, its watcher joins its feed now.
fn pass_barrier(hub: &Mutex<Hub>, nonce: &str, barrier: &str) {
    let Some((from, number)) = barrier.split_once('\t') else {
        return;
    };
    let Ok(number) = number.parse::<u64>() else {
        return;
    };
    if from != nonce {
        return;
    }
    let mut hub = hub.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((agent, reply)) = hub.barriers.remove(&number) {
        hub.join(agent, reply);
    }
}

/// Every notified event on the commit feed, when someone follows it.
fn announce(commits: &broadcast::Sender<Commit>, payload: &str) {
    if commits.receiver_count() == 0 {
        return;
    }
    for n in parse(payload) {
        let _ = commits.send(Commit::Event(Committed {
            interaction_id: n.id.into(),
            agent_id: n.agent.into(),
            sequence: n.sequence.max(0) as u64,
            event: None,
        }));
    }
}

/// Reads the notified events someone here watches, and publishes them in notification order.
async fn publish(pool: &Pool, hub: &Mutex<Hub>, payload: &str) {
    let wanted: Vec<Notice<'_>> = {
        let hub = hub.lock().unwrap_or_else(|e| e.into_inner());
        parse(payload)
            .filter(|n| hub.watched(n.id, n.agent))
            .collect()
    };
    if wanted.is_empty() {
        return;
    }
    let ids: Vec<&str> = wanted.iter().map(|n| n.id).collect();
    let sequences: Vec<i64> = wanted.iter().map(|n| n.sequence).collect();
    let rows = match read(pool, &ids, &sequences).await {
        Ok(rows) => rows,
        Err(e) => {
            // Not published: interaction watchers recover at the next event (a gap); agent
            // watchers would miss it, so their feeds are closed.
            tracing::warn!("watchers: cannot read notified events: {e}");
            hub.lock().unwrap_or_else(|e| e.into_inner()).agents.clear();
            return;
        }
    };
    let mut by_key: HashMap<(&str, i64), EncodedEvent> = HashMap::with_capacity(rows.len());
    for (id, sequence, event) in &rows {
        by_key.insert((id.as_str(), *sequence), event.clone());
    }
    let hub = hub.lock().unwrap_or_else(|e| e.into_inner());
    for n in &wanted {
        let Some(event) = by_key.get(&(n.id, n.sequence)) else {
            continue;
        };
        if let Some(feed) = hub.interactions.get(n.id) {
            let _ = feed.send(event.clone());
        }
        if let Some(feed) = hub.agents.get(n.agent) {
            let _ = feed.send(event.clone());
        }
    }
}

async fn read(
    pool: &Pool,
    ids: &[&str],
    sequences: &[i64],
) -> Result<Vec<(String, i64, EncodedEvent)>, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let statement = client
        .prepare_cached(
            "SELECT e.interaction_id, e.sequence, e.payload FROM events e
             JOIN unnest($1::TEXT[], $2::BIGINT[]) AS u(id, sequence)
               ON e.interaction_id = u.id AND e.sequence = u.sequence",
        )
        .await
        .map_err(|e| describe(&e))?;
    let rows = client
        .query(&statement, &[&ids, &sequences])
        .await
        .map_err(|e| describe(&e))?;
    rows.into_iter()
        .map(|r| {
            let payload: Vec<u8> = r.get(2);
            let event = EncodedEvent::from_stored(payload.into()).map_err(|e| e.to_string())?;
            Ok((r.get(0), r.get(1), event))
        })
        .collect()
}

/// After reconnecting: each watched interaction's latest event again, so that a watcher that
/// missed some sees the gap and reads them from the store.
async fn resync(pool: &Pool, hub: &std::sync::Weak<Mutex<Hub>>) {
    let Some(hub) = hub.upgrade() else { return };
    let watched: Vec<String> = {
        let hub = hub.lock().unwrap_or_else(|e| e.into_inner());
        hub.interactions
            .iter()
            .filter(|(_, f)| f.receiver_count() > 0)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let Ok(client) = pool.get().await else { return };
    for id in watched {
        let row = client
            .query_opt(
                "SELECT payload FROM events WHERE interaction_id = $1
                 ORDER BY sequence DESC LIMIT 1",
                &[&id],
            )
            .await;
        let Ok(Some(row)) = row else { continue };
        let payload: Vec<u8> = row.get(0);
        let Ok(event) = EncodedEvent::from_stored(payload.into()) else {
            continue;
        };
        let hub = hub.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = hub.interactions.get(&id) {
            let _ = feed.send(event);
        }
    }
}
