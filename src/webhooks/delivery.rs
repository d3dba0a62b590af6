//! One subscription's deliveries: a task that keeps a lane per interaction it has a cursor
//! for, and never awaits a request itself (requests, reads and cursor moves are tasks of
//! their own, whose outcomes come back to it).
//!
//! A lane sends its interaction's events one at a time, in order: event n + 1 is sent only
//! once event n got a 2xx and the cursor's move past n is durable. Lanes are independent: a
//! slow or failing interaction waits alone, and at most [`MAX_POSTS`] requests of the
//! subscription are in flight at once. A failed attempt is tried again after a backoff
//! (backoff.rs); any success of the subscription cuts the other lanes' waits short, since the
//! receiver is evidently back. An event still failing `--webhook-retry-for` after it was
//! committed has its interaction's whole backlog dropped (cursor moved past it), with an ERROR
//! log and `calldesk_webhook_dropped_total`.
//!
//! A receiver that is down costs bounded memory and one request at a time, however long it is
//! down and however many interactions wait:
//!
//! - At most [`MAX_LANES`] lanes are in memory. An interaction with no room for a lane waits
//!   as what it is in the store, a cursor behind its events; the cursors are read back page by
//!   page ([`SCAN_PAGE`], in interaction id order) as lanes finish, so a backlog of any size
//!   drains through a window of lanes at the normal rate. A lane that has caught up leaves
//!   memory when lanes are many (its next event looks its cursor up again).
//! - After a failure the subscription's [`Gate`] closes: until an attempt succeeds, one
//!   request at a time probes the receiver, the lanes ready taking turns, with the
//!   subscription's own backoff between probes; the first success opens it for every lane.
//!   (Before, each of ~200,000 interactions of a 10-minute outage kept a lane, its events and a
//!   timer, and retried on its own: 1 GiB, and a drain slower than the outage.)
//!
//! Where events come from: the store's commit feed says what was committed (SQLite hands the
//! bytes, PostgreSQL only the names, which the lane then reads). A commit of an interaction
//! without a lane is looked up: its cursor exists if the subscription covered the agent when
//! the interaction was created (and, with PostgreSQL, belongs to this replica if this replica
//! created it or claimed it). Whatever the feed may have missed (it lagged, PostgreSQL's
//! listener reconnected, cursors were claimed) a rescan of the stored cursors finds, and one
//! runs every [`RESCAN_INTERVAL`] regardless.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use prost::Message;
use tokio::{
    sync::{broadcast, watch},
    task::JoinSet,
};
use tokio_util::time::{delay_queue, DelayQueue};

use super::{
    backoff,
    client::{Attempt, Client},
    config::Subscription,
    cursors::{CursorWriter, Moved},
    signing,
};
use crate::{
    domain::EncodedEvent,
    proto,
    store::{
        webhooks::{Commit, Committed, Cursor, CursorMove},
        Store, StoreError,
    },
};

/// Requests of one subscription in flight at most.
pub const MAX_POSTS: usize = 64;
/// Store reads of one subscription in flight at most.
const MAX_READS: usize = 16;
/// Events a lane holds ready at most (the rest are read when it gets there).
const QUEUE_CAP: usize = 16;
/// How often the stored cursors are read again, whatever the feed said.
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Lanes (and cursor lookups) of one subscription in memory at most: enough to keep
/// [`MAX_POSTS`] requests busy, few enough that an outage's backlog stays in the store.
pub const MAX_LANES: usize = 2048;
/// Cursors one read of the store's cursors brings at most.
const SCAN_PAGE: usize = 256;
/// How often `calldesk_webhook_lag_seconds` is set.
const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// Interactions remembered as having no cursor here, at most (then forgotten at once).
const NOT_MINE_CAP: usize = 100_000;
/// A store read or move that failed is tried again after this.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Events one drop reads at most (an interaction has a handful).
const DROP_READ: usize = 100_000;

/// What a subscription's deliveries need.
#[derive(Clone)]
pub struct Context {
    pub subscription: Arc<Subscription>,
    pub store: Store,
    pub client: Client,
    pub cursors: CursorWriter,
    /// `--webhook-retry-for`.
    pub retry_for: Duration,
}

/// An event ready to send.
struct Ready {
    sequence: u64,
    /// Its state is COMPLETED: the interaction's last event.
    completed: bool,
    /// The subscription's `events=` keeps it.
    wanted: bool,
    /// When it happened (its `time`): the retries' deadline counts from it.
    time: SystemTime,
    /// Its proto3 JSON.
    body: Bytes,
}

/// Where a lane is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing to do, or waiting to be poked.
    Idle,
    /// Waiting for a free request or read slot.
    Queued,
    Reading,
    Posting,
    /// Its cursor's move is being committed.
    Moving,
    /// Its backlog is being read to be dropped.
    Dropping,
    /// A backoff timer runs.
    Waiting,
}

/// One interaction's deliveries.
struct Lane {
    /// The stored cursor: the last sequence delivered (or skipped).
    delivered: u64,
    /// The latest sequence known to be committed.
    latest: u64,
    /// Events after `delivered`, in order, read or fed.
    queue: VecDeque<Ready>,
    step: Step,
    /// Failed attempts of the head event.
    failures: u32,
    /// The backoff timer, while `Waiting`.
    timer: Option<delay_queue::Key>,
    /// A move that got its 2xx (or skip) but failed to commit: committed before anything else.
    unmoved: Option<Move>,
    /// Since when it has been behind, when the head's time is not known yet.
    behind_since: Option<SystemTime>,
}

impl Lane {
    fn new(delivered: u64, latest: u64) -> Self {
        Self {
            delivered,
            latest: latest.max(delivered),
            queue: VecDeque::new(),
            step: Step::Idle,
            failures: 0,
            timer: None,
            unmoved: None,
            behind_since: (latest > delivered).then(SystemTime::now),
        }
    }

    /// The sequence a fed or read event must have to join the queue.
    fn next_expected(&self) -> u64 {
        self.delivered + self.queue.len() as u64 + 1
    }
}

/// A cursor move a lane asked for: up to `to`, or its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Move {
    to: u64,
    finish: bool,
    /// Events it stands for that were delivered (the others were skipped or dropped).
    delivered: u64,
    dropped: u64,
}

/// What a job came back with.
enum Done {
    Lookup(Arc<str>, Result<Option<Cursor>, StoreError>),
    Read(Arc<str>, Result<Vec<EncodedEvent>, StoreError>),
    Post(Arc<str>, Attempt),
    Moved(Arc<str>, Move, Moved),
    /// The backlog read to be dropped, and why the head failed.
    Drop(Arc<str>, Result<Vec<EncodedEvent>, StoreError>, String),
    /// A page of the stored cursors.
    Page(Result<Vec<Cursor>, StoreError>),
}

/// The reading of the stored cursors, a page at a time, while there is room for lanes.
#[derive(Default)]
struct Scan {
    /// A pass through the cursors is under way: the last interaction id it read (None: from
    /// the first).
    pass: Option<Option<String>>,
    /// A page read is in flight.
    reading: bool,
    /// Something may have been missed since the pass began (a commit found no room, the feed
    /// lagged, cursors were claimed): another pass follows this one.
    again: bool,
    /// Since when commits went without a lane (no room), until a pass has read their cursors:
    /// the lag counts from it.
    waiting_since: Option<SystemTime>,
    /// The same for the pass under way.
    pass_since: Option<SystemTime>,
}

/// Whether the subscription's lanes may send: open while the receiver answers; closed after a
/// failure, when one probe at a time goes, each after the subscription's backoff.
#[derive(Default)]
struct Gate {
    /// Closed until then (None: open).
    closed_until: Option<tokio::time::Instant>,
    /// Probes that failed in a row since it closed.
    failures: u32,
    /// The lane whose request is the probe in flight.
    probe: Option<Arc<str>>,
    /// The backoff's timer is to fire (once per closing or failed probe): at `closed_until`,
    /// a lane probes, even one waiting out its own longer backoff.
    armed: bool,
}

/// What the feed said of an interaction whose cursor is being looked up.
#[derive(Default)]
struct Unknown {
    /// The latest sequence seen.
    seen: u64,
    /// The events it handed (SQLite), in order: the lane starts with them rather than read
    /// them back.
    events: Vec<EncodedEvent>,
}

/// Runs one subscription's deliveries until aborted. `rescans`: bumped when cursors may have
/// been claimed (PostgreSQL).
pub async fn run(ctx: Context, mut rescans: watch::Receiver<u64>) {
    let name = ctx.subscription.name.clone();
    let label = [("subscription", name.to_string())];
    expose_metrics(&name);
    let mut commits = ctx.store.commits();
    let mut d = Dispatcher {
        ctx,
        label,
        lanes: HashMap::new(),
        not_mine: HashSet::new(),
        looking_up: HashMap::new(),
        ready_posts: VecDeque::new(),
        ready_reads: VecDeque::new(),
        posting: 0,
        reading: 0,
        timers: DelayQueue::new(),
        jobs: JoinSet::new(),
        failing: None,
        scan: Scan::default(),
        gate: Gate::default(),
    };
    d.rescan();
    let mut rescan_tick = tokio::time::interval(RESCAN_INTERVAL);
    rescan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan_tick.tick().await;
    let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            commit = commits.recv() => match commit {
                Ok(Commit::Event(c)) => d.committed(c),
                Ok(Commit::Missed) | Err(broadcast::error::RecvError::Lagged(_)) => d.rescan(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            Some(done) = d.jobs.join_next(), if !d.jobs.is_empty() => match done {
                Ok(done) => d.done(done),
                Err(e) => tracing::error!(subscription = %name, "webhooks: a job failed: {e}"),
            },
            Some(expired) = std::future::poll_fn(|cx| d.timers.poll_expired(cx)),
                if !d.timers.is_empty() => d.expired(expired.into_inner()),
            changed = rescans.changed() => match changed {
                Ok(()) => d.rescan(),
                Err(_) => return,
            },
            _ = rescan_tick.tick() => d.rescan(),
            _ = sleep_until(d.gate.closed_until), if d.gate.armed => d.probe(),
            _ = lag_tick.tick() => d.report_lag(),
        }
    }
}

/// A subscription's metrics, at zero until something happens (a dashboard sees the series
/// from the start).
pub fn expose_metrics(subscription: &str) {
    let label = [("subscription", subscription.to_owned())];
    metrics::counter!("calldesk_webhook_delivered_total", &label).increment(0);
    metrics::counter!("calldesk_webhook_retried_total", &label).increment(0);
    metrics::counter!("calldesk_webhook_dropped_total", &label).increment(0);
    metrics::gauge!("calldesk_webhook_lag_seconds", &label).increment(0.0);
}

struct Dispatcher {
    ctx: Context,
    /// The metrics' label.
    label: [(&'static str, String); 1],
    lanes: HashMap<Arc<str>, Lane>,
    /// Interactions whose commits were looked up and have no cursor here.
    not_mine: HashSet<Arc<str>>,
    /// Lookups in flight, with what the feed said meanwhile.
    looking_up: HashMap<Arc<str>, Unknown>,
    /// Lanes waiting for a request slot, and for a read slot.
    ready_posts: VecDeque<Arc<str>>,
    ready_reads: VecDeque<Arc<str>>,
    posting: usize,
    reading: usize,
    timers: DelayQueue<Arc<str>>,
    jobs: JoinSet<Done>,
    /// Why the last attempt failed, while the receiver fails: logged once, not per attempt.
    failing: Option<String>,
    scan: Scan,
    gate: Gate,
}

/// Sleeps until `when` (for ever with None: the select! branch is then disabled anyway).
async fn sleep_until(when: Option<tokio::time::Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

impl Dispatcher {
    fn name(&self) -> &str {
        &self.ctx.subscription.name
    }

    /// A commit from the feed.
    fn committed(&mut self, c: Committed) {
        if !self.ctx.subscription.agents.covers(&c.agent_id) {
            return;
        }
        if let Some(lane) = self.lanes.get_mut(&c.interaction_id) {
            lane.latest = lane.latest.max(c.sequence);
            if lane.latest > lane.delivered && lane.behind_since.is_none() {
                lane.behind_since = Some(SystemTime::now());
            }
            // A lane that is failing holds nothing ready (it reads again when it retries): a long
            // outage costs a lane's bookkeeping per interaction, not its events.
            if let Some(event) = c.event.filter(|_| lane.failures == 0) {
                if event.sequence == lane.next_expected()
                    && lane.step != Step::Reading
                    && lane.queue.len() < QUEUE_CAP
                {
                    let ready = ready(&self.ctx.subscription, &c.interaction_id, &event);
                    lane.queue.push_back(ready);
                }
            }
            self.poke(&c.interaction_id);
            return;
        }
        if self.not_mine.contains(&c.interaction_id) {
            return;
        }
        if let Some(unknown) = self.looking_up.get_mut(&c.interaction_id) {
            unknown.seen = unknown.seen.max(c.sequence);
            if unknown.events.len() < QUEUE_CAP {
                unknown.events.extend(c.event);
            }
            return;
        }
        // A pass under way has first call on the room (its cursors are the older).
        let reserved = if self.scan.pass.is_some() || self.scan.again {
            SCAN_PAGE
        } else {
            0
        };
        if !self.has_room(reserved + 1) {
            // No room: the interaction waits in the store (its cursor) for a pass.
            self.scan.again = true;
            self.scan.waiting_since.get_or_insert_with(SystemTime::now);
            return;
        }
        self.looking_up.insert(
            c.interaction_id.clone(),
            Unknown {
                seen: c.sequence,
                events: c.event.into_iter().collect(),
            },
        );
        let store = self.ctx.store.clone();
        let subscription = self.name().to_owned();
        let id = c.interaction_id;
        self.jobs.spawn(async move {
            let found = store.webhook_cursor(subscription, id.to_string()).await;
            Done::Lookup(id, found)
        });
    }

    /// Reads the stored cursors again: a pass through them, a page at a time as lanes leave
    /// room (after the pass under way, if one is).
    fn rescan(&mut self) {
        self.scan.again = true;
        self.scan_more();
    }

    /// Room for `n` more lanes.
    fn has_room(&self, n: usize) -> bool {
        self.lanes.len() + self.looking_up.len() + n <= MAX_LANES
    }

    /// Reads the next page of the pass under way (or begins one, if one is wanted) when there
    /// is room for its lanes.
    fn scan_more(&mut self) {
        if self.scan.reading || !self.has_room(SCAN_PAGE) {
            return;
        }
        let after = match &self.scan.pass {
            Some(after) => after.clone(),
            None if self.scan.again => {
                self.scan.again = false;
                self.scan.pass = Some(None);
                self.scan.pass_since = self.scan.waiting_since.take();
                None
            }
            None => return,
        };
        self.scan.reading = true;
        let store = self.ctx.store.clone();
        let subscription = self.name().to_owned();
        self.jobs.spawn(async move {
            Done::Page(store.webhook_cursors(subscription, after, SCAN_PAGE).await)
        });
    }

    /// A page of the pass came back.
    fn page(&mut self, found: Result<Vec<Cursor>, StoreError>) {
        self.scan.reading = false;
        match found {
            Ok(cursors) => {
                let full = cursors.len() >= SCAN_PAGE;
                if let Some(last) = cursors.last() {
                    self.scan.pass = Some(Some(last.interaction_id.clone()));
                }
                for cursor in cursors {
                    self.found(cursor, 0, Vec::new());
                }
                if !full {
                    self.scan.pass = None;
                    self.scan.pass_since = None;
                }
            }
            Err(e) => {
                // The pass begins again at the next rescan (or commit without room).
                tracing::warn!(subscription = %self.name(), "webhooks: cannot read the cursors: {e}");
                self.scan.pass = None;
                self.scan.again = true;
                if let Some(since) = self.scan.pass_since.take() {
                    let waiting = self.scan.waiting_since.get_or_insert(since);
                    *waiting = (*waiting).min(since);
                }
                return;
            }
        }
        self.scan_more();
    }

    /// A lane found in the store (rescan or lookup), with the events the feed handed while
    /// it was looked up (SQLite): those that follow its cursor are not read back.
    fn found(&mut self, cursor: Cursor, seen: u64, fed: Vec<EncodedEvent>) {
        let id: Arc<str> = cursor.interaction_id.as_str().into();
        self.not_mine.remove(&id);
        match self.lanes.get_mut(&id) {
            Some(lane) => {
                lane.latest = lane.latest.max(cursor.latest.unwrap_or(0)).max(seen);
                self.poke(&id);
            }
            None => {
                let Some(latest) = cursor.latest else {
                    // Its interaction is gone (retention): nothing left to deliver.
                    let mut lane = Lane::new(cursor.delivered, cursor.delivered);
                    lane.step = Step::Moving;
                    self.lanes.insert(id.clone(), lane);
                    self.commit_move(
                        id,
                        Move {
                            to: cursor.delivered,
                            finish: true,
                            delivered: 0,
                            dropped: 0,
                        },
                    );
                    return;
                };
                if latest.max(seen) <= cursor.delivered {
                    // Caught up: its next commit looks it up.
                    return;
                }
                let mut lane = Lane::new(cursor.delivered, latest.max(seen));
                if let Some(since) = self.scan.pass_since {
                    lane.behind_since = Some(since.min(SystemTime::now()));
                }
                for event in fed {
                    if event.sequence == lane.next_expected() && lane.queue.len() < QUEUE_CAP {
                        lane.queue
                            .push_back(ready(&self.ctx.subscription, &id, &event));
                    }
                }
                self.lanes.insert(id.clone(), lane);
                self.poke(&id);
            }
        }
    }

    /// Starts whatever a lane that is `Idle` should do next.
    fn poke(&mut self, id: &Arc<str>) {
        let may_post = self.may_post();
        let gate_closed = self.gate.closed_until.is_some();
        let retry_for = self.ctx.retry_for;
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        if lane.step != Step::Idle {
            return;
        }
        if let Some(pending) = lane.unmoved {
            lane.step = Step::Moving;
            self.commit_move(id.clone(), pending);
            return;
        }
        match lane.queue.front() {
            Some(head) if !head.wanted => {
                // Skipped events (`events=`): the cursor moves past them, nothing is sent.
                let m = lane.skip_from(0, 0);
                lane.step = Step::Moving;
                self.commit_move(id.clone(), m);
            }
            Some(head)
                if gate_closed
                    && SystemTime::now()
                        .duration_since(head.time)
                        .is_ok_and(|age| age >= retry_for) =>
            {
                // The receiver is down and this event's time is up: dropped without waiting
                // for its turn to probe.
                let why = self
                    .failing
                    .clone()
                    .unwrap_or_else(|| "the receiver is failing".to_owned());
                self.start_drop(id, why);
            }
            Some(_) if may_post => {
                lane.step = Step::Posting;
                self.posting += 1;
                if gate_closed {
                    self.gate.probe = Some(id.clone());
                }
                self.post(id.clone());
            }
            Some(_) => {
                lane.step = Step::Queued;
                self.ready_posts.push_back(id.clone());
            }
            None if lane.latest > lane.delivered && self.reading < MAX_READS => {
                lane.step = Step::Reading;
                self.reading += 1;
                let store = self.ctx.store.clone();
                let (id, after) = (id.clone(), lane.delivered);
                self.jobs.spawn(async move {
                    let events = store.events_after(id.to_string(), after, QUEUE_CAP).await;
                    Done::Read(id, events)
                });
            }
            None if lane.latest > lane.delivered => {
                lane.step = Step::Queued;
                self.ready_reads.push_back(id.clone());
            }
            None => {
                lane.behind_since = None;
                if self.lanes.len() > MAX_LANES / 2 {
                    // Caught up, and room is short: its cursor in the store is all it needs.
                    self.lanes.remove(id);
                    self.scan_more();
                }
            }
        }
    }

    /// A request may start now: below [`MAX_POSTS`] while the gate is open; while it is
    /// closed, one probe once its backoff is over and nothing else is in flight.
    fn may_post(&self) -> bool {
        match self.gate.closed_until {
            None => self.posting < MAX_POSTS,
            Some(until) => {
                self.posting == 0
                    && self.gate.probe.is_none()
                    && tokio::time::Instant::now() >= until
            }
        }
    }

    /// The gate's backoff is over: the next lane ready probes; if none is, one waiting out
    /// its own backoff is woken to (it reads its events, then probes).
    fn probe(&mut self) {
        self.gate.armed = false;
        self.free_slots();
        if self.gate.probe.is_some() || self.posting > 0 || !self.ready_posts.is_empty() {
            return;
        }
        let waiting = self
            .lanes
            .iter()
            .find(|(_, l)| l.step == Step::Waiting && l.unmoved.is_none())
            .map(|(id, _)| id.clone());
        if let Some(id) = waiting {
            if let Some(key) = self.lanes.get_mut(&id).and_then(|l| l.timer.take()) {
                self.timers.remove(&key);
            }
            self.expired_now(&id);
        }
    }

    /// Reads a lane's backlog to drop it (retried for `--webhook-retry-for`).
    fn start_drop(&mut self, id: &Arc<str>, why: String) {
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        lane.step = Step::Dropping;
        let store = self.ctx.store.clone();
        let (id, after) = (id.clone(), lane.delivered);
        self.jobs.spawn(async move {
            let rest = store.events_after(id.to_string(), after, DROP_READ).await;
            Done::Drop(id, rest, why)
        });
    }

    /// Sends a lane's head event.
    fn post(&mut self, id: Arc<str>) {
        let Some(head) = self.lanes.get(&id).and_then(|l| l.queue.front()) else {
            return;
        };
        let (sequence, body) = (head.sequence, head.body.clone());
        let client = self.ctx.client.clone();
        let subscription = self.ctx.subscription.clone();
        self.jobs.spawn(async move {
            let webhook_id = signing::webhook_id(&id, sequence);
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let signature = signing::sign(&subscription.secret, &webhook_id, timestamp, &body);
            let attempt = client
                .post(
                    &subscription.url,
                    [
                        ("webhook-id", webhook_id),
                        ("webhook-timestamp", timestamp.to_string()),
                        ("webhook-signature", signature),
                    ],
                    body,
                )
                .await;
            Done::Post(id, attempt)
        });
    }

    fn commit_move(&mut self, id: Arc<str>, m: Move) {
        let subscription: Arc<str> = self.ctx.subscription.name.clone();
        let cursor_move = if m.finish {
            CursorMove::Finish {
                subscription,
                interaction_id: id.clone(),
            }
        } else {
            CursorMove::Advance {
                subscription,
                interaction_id: id.clone(),
                delivered: m.to,
            }
        };
        let cursors = self.ctx.cursors.clone();
        self.jobs
            .spawn(async move { Done::Moved(id, m, cursors.apply(cursor_move).await) });
    }

    /// A slot freed: the next lane waiting for one goes.
    fn free_slots(&mut self) {
        while self.may_post() {
            let Some(id) = self.ready_posts.pop_front() else {
                break;
            };
            self.requeue(&id);
        }
        while self.reading < MAX_READS {
            let Some(id) = self.ready_reads.pop_front() else {
                break;
            };
            self.requeue(&id);
        }
    }

    fn requeue(&mut self, id: &Arc<str>) {
        if let Some(lane) = self.lanes.get_mut(id) {
            if lane.step == Step::Queued {
                lane.step = Step::Idle;
                self.poke(id);
            }
        }
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Lookup(id, found) => {
                let unknown = self.looking_up.remove(&id).unwrap_or_default();
                match found {
                    Ok(Some(cursor)) => self.found(cursor, unknown.seen, unknown.events),
                    Ok(None) => {
                        if self.not_mine.len() >= NOT_MINE_CAP {
                            self.not_mine.clear();
                        }
                        self.not_mine.insert(id);
                    }
                    Err(e) => {
                        tracing::warn!(subscription = %self.name(), "webhooks: cannot read a cursor: {e}");
                        self.rescan();
                    }
                }
            }
            Done::Page(found) => self.page(found),
            Done::Read(id, events) => {
                self.reading -= 1;
                self.read(&id, events);
                self.free_slots();
            }
            Done::Post(id, attempt) => {
                self.posting -= 1;
                self.posted(&id, attempt);
                self.free_slots();
            }
            Done::Moved(id, m, moved) => self.moved(&id, m, moved),
            Done::Drop(id, events, why) => self.drop_backlog(&id, events, why),
        }
        self.scan_more();
    }

    fn read(&mut self, id: &Arc<str>, events: Result<Vec<EncodedEvent>, StoreError>) {
        let subscription = self.ctx.subscription.clone();
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        lane.step = Step::Idle;
        match events {
            Ok(events) if events.is_empty() && lane.queue.is_empty() => {
                // Known to be committed, yet not there: retention deleted the interaction.
                tracing::warn!(
                    subscription = %subscription.name,
                    interaction_id = %id,
                    "webhooks: the interaction's events are gone (retention); its cursor goes"
                );
                lane.step = Step::Moving;
                let to = lane.delivered;
                self.commit_move(
                    id.clone(),
                    Move {
                        to,
                        finish: true,
                        delivered: 0,
                        dropped: 0,
                    },
                );
            }
            Ok(events) => {
                for event in events {
                    lane.latest = lane.latest.max(event.sequence);
                    if event.sequence == lane.next_expected() && lane.queue.len() < QUEUE_CAP {
                        lane.queue.push_back(ready(&subscription, id, &event));
                    }
                }
                self.poke(id);
            }
            Err(e) => {
                tracing::warn!(subscription = %subscription.name, "webhooks: cannot read events: {e}");
                self.wait(id, STORE_RETRY);
            }
        }
    }

    fn posted(&mut self, id: &Arc<str>, attempt: Attempt) {
        let was_probe = self.gate.probe.as_ref() == Some(id);
        if was_probe {
            self.gate.probe = None;
        }
        match &attempt {
            // The receiver answers: the gate opens (wake_all below sends the lanes waiting).
            Attempt::Delivered => self.gate = Gate::default(),
            Attempt::Failed(_) if self.gate.closed_until.is_none() || was_probe => {
                // The first failure closes the gate; each failed probe doubles its wait.
                self.gate.failures += 1;
                self.gate.closed_until = Some(
                    tokio::time::Instant::now()
                        + backoff::probe_delay(self.gate.failures, backoff::jitter()),
                );
                self.gate.armed = true;
            }
            // Sent before the gate closed: the probes' backoff does not count it.
            Attempt::Failed(_) => {}
        }
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        lane.step = Step::Idle;
        match attempt {
            Attempt::Delivered => {
                lane.failures = 0;
                let m = lane.skip_from(1, 0);
                lane.step = Step::Moving;
                self.commit_move(id.clone(), m);
                if self.failing.take().is_some() {
                    tracing::info!(
                        subscription = %self.ctx.subscription.name,
                        url = %self.ctx.subscription.origin(),
                        "webhooks: the receiver answers 2xx again"
                    );
                    self.wake_all();
                }
            }
            Attempt::Failed(why) => {
                lane.failures += 1;
                let failures = lane.failures;
                let expired = lane.queue.front().is_some_and(|head| {
                    SystemTime::now()
                        .duration_since(head.time)
                        .is_ok_and(|age| age >= self.ctx.retry_for)
                });
                if self.failing.is_none() {
                    tracing::warn!(
                        subscription = %self.ctx.subscription.name,
                        url = %self.ctx.subscription.origin(),
                        "webhooks: a delivery failed ({why}); retrying with backoff"
                    );
                }
                tracing::debug!(
                    subscription = %self.ctx.subscription.name,
                    interaction_id = %id,
                    failures,
                    "webhooks: delivery failed: {why}"
                );
                self.failing = Some(why.clone());
                if expired {
                    self.start_drop(id, why);
                } else {
                    metrics::counter!("calldesk_webhook_retried_total", &self.label).increment(1);
                    // Read again when it retries: a lane waiting out a backoff holds no event.
                    lane.behind_since = lane.queue.front().map(|head| head.time);
                    lane.queue.clear();
                    self.wait(id, backoff::delay(failures, backoff::jitter()));
                }
            }
        }
    }

    /// After retrying for `--webhook-retry-for`: the cursor moves past everything committed.
    fn drop_backlog(
        &mut self,
        id: &Arc<str>,
        rest: Result<Vec<EncodedEvent>, StoreError>,
        why: String,
    ) {
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        lane.step = Step::Idle;
        let rest = match rest {
            Ok(rest) => rest,
            Err(e) => {
                tracing::warn!(subscription = %self.ctx.subscription.name, "webhooks: cannot read events: {e}");
                self.wait(id, STORE_RETRY);
                return;
            }
        };
        let Some(last) = rest.last() else {
            self.poke(id);
            return;
        };
        let m = Move {
            to: last.sequence,
            finish: last.completed,
            delivered: 0,
            dropped: last.sequence - lane.delivered,
        };
        tracing::error!(
            subscription = %self.ctx.subscription.name,
            url = %self.ctx.subscription.origin(),
            interaction_id = %id,
            events = m.dropped,
            first = lane.delivered + 1,
            last = last.sequence,
            "webhooks: dropping this interaction's undelivered events: still failing {:?} after \
             they happened ({why})",
            self.ctx.retry_for
        );
        lane.step = Step::Moving;
        self.commit_move(id.clone(), m);
    }

    fn moved(&mut self, id: &Arc<str>, m: Move, moved: Moved) {
        let Some(lane) = self.lanes.get_mut(id) else {
            return;
        };
        lane.step = Step::Idle;
        match moved {
            Ok(true) => {
                lane.unmoved = None;
                lane.delivered = lane.delivered.max(m.to);
                lane.latest = lane.latest.max(m.to);
                while lane.queue.front().is_some_and(|r| r.sequence <= m.to) {
                    lane.queue.pop_front();
                }
                if m.delivered > 0 {
                    metrics::counter!("calldesk_webhook_delivered_total", &self.label)
                        .increment(m.delivered);
                }
                if m.dropped > 0 {
                    metrics::counter!("calldesk_webhook_dropped_total", &self.label)
                        .increment(m.dropped);
                }
                if m.finish {
                    self.lanes.remove(id);
                } else {
                    self.poke(id);
                }
            }
            Ok(false) => {
                // The cursor is not this replica's (any more): claimed by another replica, or
                // its subscription no longer covers the agent.
                if m.delivered > 0 {
                    metrics::counter!("calldesk_webhook_delivered_total", &self.label)
                        .increment(m.delivered);
                }
                self.lanes.remove(id);
                self.not_mine.insert(id.clone());
            }
            Err(e) => {
                tracing::warn!(subscription = %self.ctx.subscription.name, "webhooks: cannot move a cursor: {e}");
                lane.unmoved = Some(m);
                self.wait(id, STORE_RETRY);
            }
        }
    }

    /// A lane waits `delay` before it goes on.
    fn wait(&mut self, id: &Arc<str>, delay: Duration) {
        if let Some(lane) = self.lanes.get_mut(id) {
            lane.step = Step::Waiting;
            lane.timer = Some(self.timers.insert(id.clone(), delay));
        }
    }

    fn expired(&mut self, id: Arc<str>) {
        if let Some(lane) = self.lanes.get_mut(&id) {
            if lane.step == Step::Waiting {
                lane.timer = None;
                lane.step = Step::Idle;
                self.poke(&id);
            }
        }
    }

    /// The receiver answers again: every lane waiting out a backoff goes now.
    fn wake_all(&mut self) {
        let waiting: Vec<Arc<str>> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.step == Step::Waiting && l.unmoved.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            if let Some(key) = self.lanes.get_mut(&id).and_then(|l| l.timer.take()) {
                self.timers.remove(&key);
            }
            self.expired_now(&id);
        }
    }

    fn expired_now(&mut self, id: &Arc<str>) {
        if let Some(lane) = self.lanes.get_mut(id) {
            lane.step = Step::Idle;
            self.poke(id);
        }
    }

    /// `calldesk_webhook_lag_seconds`: the age of the oldest event not yet delivered.
    fn report_lag(&self) {
        let now = SystemTime::now();
        let oldest = self
            .lanes
            .values()
            .filter(|l| l.latest > l.delivered || !l.queue.is_empty())
            .filter_map(|l| l.queue.front().map(|r| r.time).or(l.behind_since))
            .chain(self.scan.waiting_since)
            .chain(self.scan.pass_since)
            .min();
        let lag = oldest
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        metrics::gauge!("calldesk_webhook_lag_seconds", &self.label).set(lag);
    }
}

impl Lane {
    /// The move past the first `sent` queued events (delivered) and every unwanted one right
    /// after them (skipped).
    fn skip_from(&self, sent: usize, dropped: u64) -> Move {
        let mut last = self.queue.iter().take(sent).last();
        for r in self.queue.iter().skip(sent) {
            if r.wanted {
                break;
            }
            last = Some(r);
        }
        match last {
            Some(r) => Move {
                to: r.sequence,
                finish: r.completed,
                delivered: sent as u64,
                dropped,
            },
            None => Move {
                to: self.delivered,
                finish: false,
                delivered: 0,
                dropped,
            },
        }
    }
}

/// An event as a subscription sends it: its proto3 JSON, as `WatchInteraction` would give it.
fn ready(subscription: &Subscription, interaction_id: &str, event: &EncodedEvent) -> Ready {
    match proto::InteractionEvent::decode(event.bytes.clone()) {
        Ok(decoded) => {
            let time = decoded
                .time
                .as_ref()
                .map_or_else(SystemTime::now, crate::domain::system_time);
            let body = serde_json::to_vec(&decoded).unwrap_or_default();
            Ready {
                sequence: event.sequence,
                completed: event.completed,
                wanted: subscription.wants(decoded.state) && !body.is_empty(),
                time,
                body: body.into(),
            }
        }
        Err(e) => {
            // A damaged row cannot be sent; it is skipped (the store's readers report damage).
            tracing::error!(
                subscription = %subscription.name,
                %interaction_id,
                sequence = event.sequence,
                "webhooks: cannot decode a stored event ({e}); skipping it"
            );
            Ready {
                sequence: event.sequence,
                completed: event.completed,
                wanted: false,
                time: SystemTime::now(),
                body: Bytes::new(),
            }
        }
    }
}
