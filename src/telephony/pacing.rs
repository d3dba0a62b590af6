//! Trunk pacing: a layer in front of any telephony backend that keeps customer calls within the
//! carrier's limits (`--sip-max-cps`, `--sip-max-calls`), and slows down by itself when the
//! trunk pushes back.
//!
//! A dial that finds no capacity waits in line: one FIFO per agent, served round-robin across
//! agents, so that one agent's burst does not hold back the others; at most [`MAX_WAITING`]
//! dials wait at once. A dial still waiting after `--sip-pacing-wait` (or finding the line
//! full) is given up: its sink gets [`SwitchSignal::TrunkBusy`] and the backend never sees it.
//!
//! - Rate: a token bucket of `rate` tokens a second, holding at most `max(1, rate)`.
//! - Calls: a dial holds a place from the moment it is handed to the backend until the backend
//!   reports its end (busy, no answer, failure, a hang-up) or the call manager hangs it up.
//!   The place is taken before the agent's phone rings (3PCC calls the agent first), so a
//!   call counts a little early, never late.
//! - Pushback: a [`SwitchSignal::Pushback`] (SIP 503 from the trunk, with or without
//!   Retry-After) halves the rate (from the measured rate when none is set) at most once a
//!   second, and pauses dispatch for the Retry-After (at most [`MAX_PAUSE`]); each quiet second
//!   then adds a tenth of the ceiling back until the rate is the ceiling again. Each lowering
//!   and the full recovery are logged once.
//! - Replicas: the limits are the deployment's. [`Pacer::set_share`] gives this replica its
//!   part: `rate / replicas`, and calls split as evenly as whole numbers allow (the first
//!   `calls % replicas` ranks get one more).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::domain::dialog::CallDialogs;

use super::{Dial, SignalSink, SwitchOp, SwitchReport, SwitchSignal, Telephony};

/// Dials that may wait at once; one more is refused at once (TRUNK_BUSY).
pub const MAX_WAITING: usize = 4096;
/// The longest pause a Retry-After imposes.
const MAX_PAUSE: Duration = Duration::from_secs(60);
/// The lowest rate pushback brings the pacing to.
const MIN_RATE: f64 = 0.1;
/// How often the rate climbs back after pushback, and the least time between two lowerings
/// (the calls in flight were sent at the old rate: their 503s are one signal, not several).
const STEP: Duration = Duration::from_secs(1);

/// The deployment's limits (`--sip-max-cps`, `--sip-max-calls`, `--sip-pacing-wait`).
#[derive(Debug, Clone, Copy)]
pub struct PacingLimits {
    /// Customer calls started per second; None: not limited (until the trunk pushes back).
    pub max_cps: Option<f64>,
    /// Customer calls in progress at once; None: not limited.
    pub max_calls: Option<u32>,
    /// How long a dial may wait in line.
    pub wait: Duration,
}

/// The layer: a [`Telephony`] that paces dials before handing them to `inner`.
pub struct Pacer {
    inner: Arc<dyn Telephony>,
    shared: Arc<Shared>,
}

struct Shared {
    limits: PacingLimits,
    state: Mutex<State>,
    /// Wakes the dispatcher: a dial waits, a place freed, the share changed.
    wake: Notify,
}

/// A dial waiting in line.
struct Waiting {
    dial: Dial,
    sink: SignalSink,
    since: Instant,
}

struct State {
    /// This replica's part of the limits: (replicas, rank).
    share: (u32, u32),
    /// The configured rate's share; None: not configured.
    ceiling: Option<f64>,
    /// The rate in force (below `ceiling` after pushback); None: not limited.
    rate: Option<f64>,
    /// Where the rate climbs back to after pushback when no rate was configured.
    recover_to: Option<f64>,
    tokens: f64,
    refilled: Instant,
    /// No dispatch before this (a Retry-After).
    paused_until: Option<Instant>,
    last_lowered: Option<Instant>,
    last_step: Instant,
    /// Dials handed to the backend whose calls have not ended.
    live: HashSet<String>,
    /// Dispatches of the last second, to measure the rate when none is set.
    recent: VecDeque<Instant>,
    /// Agents with waiting dials, in turn order.
    turns: VecDeque<String>,
    /// Each agent's waiting dials, oldest first.
    by_agent: HashMap<String, VecDeque<Waiting>>,
    /// Every waiting dial's agent, by call id.
    waiting: HashMap<String, String>,
    /// Waiting call ids in arrival order (deadlines in order); ids no longer waiting are
    /// skipped.
    arrivals: VecDeque<(Instant, String)>,
}

impl Pacer {
    /// Puts pacing in front of `inner`. Spawns the dispatcher: call it inside a tokio runtime.
    pub fn new(inner: Arc<dyn Telephony>, limits: PacingLimits) -> Arc<Self> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            limits,
            state: Mutex::new(State {
                share: (1, 0),
                ceiling: limits.max_cps,
                rate: limits.max_cps,
                recover_to: None,
                tokens: limits.max_cps.map_or(0.0, burst),
                refilled: now,
                paused_until: None,
                last_lowered: None,
                last_step: now,
                live: HashSet::new(),
                recent: VecDeque::new(),
                turns: VecDeque::new(),
                by_agent: HashMap::new(),
                waiting: HashMap::new(),
                arrivals: VecDeque::new(),
            }),
            wake: Notify::new(),
        });
        publish(&shared.lock(), &limits);
        let pacer = Arc::new(Self { inner, shared });
        tokio::spawn(dispatch(Arc::downgrade(&pacer)));
        pacer
    }

    /// With replicas: this replica is `rank` (0-based) of `replicas` live ones; its part of
    /// the deployment's limits follows.
    pub fn set_share(&self, replicas: u32, rank: u32) {
        let replicas = replicas.max(1);
        let mut state = self.shared.lock();
        if state.share == (replicas, rank) {
            return;
        }
        state.share = (replicas, rank);
        let ceiling = self.shared.limits.max_cps.map(|r| r / f64::from(replicas));
        state.ceiling = ceiling;
        state.rate = match (state.rate, ceiling) {
            (Some(rate), Some(ceiling)) => Some(rate.min(ceiling)),
            (rate, None) => rate,
            (None, ceiling) => ceiling,
        };
        if let Some(rate) = state.rate {
            state.tokens = state.tokens.min(burst(rate));
        }
        tracing::info!(
            replicas,
            rank,
            max_cps = ?state.ceiling,
            max_calls = ?max_calls(&self.shared.limits, state.share),
            "trunk pacing: this replica's share"
        );
        publish(&state, &self.shared.limits);
        drop(state);
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves counters, not broken invariants: carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes what the backend reports about a dispatched call: its end frees its place,
    /// pushback slows the rate.
    fn observe(&self, report: &SwitchReport) {
        match report.signal {
            SwitchSignal::Pushback { retry_after } => {
                let mut state = self.lock();
                state.pushed_back(retry_after, &self.limits);
            }
            SwitchSignal::Busy
            | SwitchSignal::NoAnswer
            | SwitchSignal::Failed
            | SwitchSignal::RemoteHangup
            | SwitchSignal::AgentHangup
                if self.lock().live.remove(&report.call_id) =>
            {
                self.wake.notify_one();
            }
            _ => {}
        }
    }
}

/// The most tokens a bucket of `rate` holds: a second's worth, and at least one call.
fn burst(rate: f64) -> f64 {
    rate.max(1.0)
}

/// This replica's part of `--sip-max-calls`.
fn max_calls(limits: &PacingLimits, (replicas, rank): (u32, u32)) -> Option<u32> {
    limits
        .max_calls
        .map(|n| n / replicas + u32::from(rank < n % replicas))
}

/// Every `why` label of `calldesk_pacing_refusals_total`, exposed at zero from the start
/// (`server::metrics`): given up after `--sip-pacing-wait`, or the waiting line was full.
pub const REFUSAL_WHYS: [&str; 2] = [WAITED_TOO_LONG, LINE_FULL];
const WAITED_TOO_LONG: &str = "waited_too_long";
const LINE_FULL: &str = "line_full";

/// The gauges of the pacing's state.
fn publish(state: &State, limits: &PacingLimits) {
    metrics::gauge!("calldesk_pacing_waiting").set(state.waiting.len() as f64);
    metrics::gauge!("calldesk_pacing_calls").set(state.live.len() as f64);
    metrics::gauge!("calldesk_pacing_rate").set(state.rate.unwrap_or(0.0));
    metrics::gauge!("calldesk_pacing_max_calls")
        .set(max_calls(limits, state.share).map_or(0.0, f64::from));
}

impl State {
    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(burst(rate));
        }
        self.refilled = now;
    }

    /// Whether one more dial may go to the backend now (taking its token if so).
    fn take_place(&mut self, now: Instant, limits: &PacingLimits) -> bool {
        if self.paused_until.is_some_and(|until| now < until) {
            return false;
        }
        if max_calls(limits, self.share).is_some_and(|max| self.live.len() >= max as usize) {
            return false;
        }
        self.refill(now);
        if self.rate.is_some() {
            if self.tokens < 1.0 {
                return false;
            }
            self.tokens -= 1.0;
        }
        true
    }

    /// When a token will be there, if the rate is what holds dials back.
    fn next_token(&self, now: Instant) -> Option<Instant> {
        let rate = self.rate?;
        let missing = (1.0 - self.tokens).max(0.0);
        Some(now + Duration::from_secs_f64(missing / rate))
    }

    fn dispatched(&mut self, call_id: String, now: Instant) {
        self.live.insert(call_id);
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > STEP)
        {
            self.recent.pop_front();
        }
    }

    /// The oldest waiting dial of the agent whose turn it is.
    fn next_waiting(&mut self) -> Option<Waiting> {
        while let Some(agent) = self.turns.pop_front() {
            let Some(line) = self.by_agent.get_mut(&agent) else {
                continue;
            };
            let Some(waiting) = line.pop_front() else {
                self.by_agent.remove(&agent);
                continue;
            };
            if line.is_empty() {
                self.by_agent.remove(&agent);
            } else {
                self.turns.push_back(agent);
            }
            self.waiting.remove(&waiting.dial.call_id);
            return Some(waiting);
        }
        None
    }

    /// Takes `call_id` out of the line, if it waits there.
    fn leave(&mut self, call_id: &str) -> Option<Waiting> {
        let agent = self.waiting.remove(call_id)?;
        let line = self.by_agent.get_mut(&agent)?;
        let index = line.iter().position(|w| w.dial.call_id == call_id)?;
        let waiting = line.remove(index);
        if line.is_empty() {
            self.by_agent.remove(&agent);
            self.turns.retain(|a| a != &agent);
        }
        waiting
    }

    /// How long a refused dial should wait before trying again: the pause, or the line's
    /// worth at the current rate, at least a second.
    fn retry_after(&self, now: Instant) -> Duration {
        let paused = self
            .paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let line = self.rate.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(self.waiting.len() as f64 / rate)
        });
        paused.max(line).max(Duration::from_secs(1))
    }

    fn pushed_back(&mut self, retry_after: Option<Duration>, limits: &PacingLimits) {
        let now = Instant::now();
        metrics::counter!("calldesk_trunk_pushbacks_total").increment(1);
        if let Some(pause) = retry_after {
            let until = now + pause.min(MAX_PAUSE);
            self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        }
        if self
            .last_lowered
            .is_some_and(|t| now.duration_since(t) < STEP)
        {
            return;
        }
        let (from, floor) = match self.rate {
            Some(rate) => (rate, MIN_RATE),
            None => {
                // Not limited until now: start from what was sent in the last second, never
                // below a call a second (one 503 must not stop an unconfigured deployment), with
                // a full bucket (the calls just sent were not paced).
                let measured = (self.recent.len() as f64).max(1.0);
                self.recover_to = Some(measured);
                self.tokens = burst(measured);
                (measured, 1.0)
            }
        };
        let rate = (from / 2.0).max(floor.min(from));
        self.rate = Some(rate);
        self.refill(now);
        self.tokens = self.tokens.min(burst(rate));
        self.last_lowered = Some(now);
        self.last_step = now;
        tracing::warn!(
            rate = format!("{rate:.2}"),
            pause = ?retry_after.map(|p| p.min(MAX_PAUSE)),
            "trunk pushback (503): pacing lowered to {rate:.2} calls/s"
        );
        publish(self, limits);
    }

    /// After pushback: a quiet second adds a tenth of the ceiling back.
    fn recover(&mut self, now: Instant, limits: &PacingLimits) {
        let Some(rate) = self.rate else { return };
        let Some(lowered) = self.last_lowered else {
            return;
        };
        let Some(target) = self.ceiling.or(self.recover_to) else {
            return;
        };
        if now.duration_since(self.last_step) < STEP || now.duration_since(lowered) < STEP {
            return;
        }
        self.last_step = now;
        self.refill(now);
        let raised = (rate + target / 10.0).min(target);
        if raised >= target {
            self.last_lowered = None;
            if self.ceiling.is_none() {
                self.rate = None;
                self.recover_to = None;
                tracing::info!("trunk pacing recovered: no limit");
            } else {
                self.rate = Some(target);
                tracing::info!("trunk pacing recovered: {target:.2} calls/s");
            }
        } else {
            self.rate = Some(raised);
            tracing::debug!("trunk pacing raised to {raised:.2} calls/s");
        }
        publish(self, limits);
    }
}

impl Telephony for Pacer {
    fn originate(&self, dial: Dial, signals: SignalSink) {
        let now = Instant::now();
        let mut state = self.shared.lock();
        if state.waiting.is_empty() && state.take_place(now, &self.shared.limits) {
            state.dispatched(dial.call_id.clone(), now);
            publish(&state, &self.shared.limits);
            drop(state);
            return self.hand_over(dial, signals);
        }
        if state.waiting.len() >= MAX_WAITING {
            let retry_after = state.retry_after(now);
            drop(state);
            metrics::counter!("calldesk_pacing_refusals_total", "why" => LINE_FULL).increment(1);
            return busy(dial.call_id, signals, retry_after);
        }
        let call_id = dial.call_id.clone();
        let agent = dial.agent_id.clone();
        state.waiting.insert(call_id.clone(), agent.clone());
        state
            .arrivals
            .push_back((now + self.shared.limits.wait, call_id));
        let line = state.by_agent.entry(agent.clone()).or_default();
        line.push_back(Waiting {
            dial,
            sink: signals,
            since: now,
        });
        if line.len() == 1 {
            state.turns.push_back(agent);
        }
        publish(&state, &self.shared.limits);
        drop(state);
        self.shared.wake.notify_one();
    }

    fn hangup(&self, call_id: &str) {
        let mut state = self.shared.lock();
        if state.leave(call_id).is_some() {
            // It never reached the backend.
            publish(&state, &self.shared.limits);
            return;
        }
        let freed = state.live.remove(call_id);
        publish(&state, &self.shared.limits);
        drop(state);
        if freed {
            self.shared.wake.notify_one();
        }
        self.inner.hangup(call_id);
    }

    fn switch(&self, call_id: &str, op: SwitchOp, signals: SignalSink) {
        self.inner.switch(call_id, op, signals);
    }

    /// An adopted call is connected already and its dial was paced by the process that
    /// placed it: it goes straight to the backend, and is not counted among this process's
    /// calls in progress.
    fn adopt(&self, call_id: &str, dialogs: CallDialogs, signals: SignalSink) -> bool {
        self.inner.adopt(call_id, dialogs, signals)
    }

    /// Nothing is dialed: no pacing.
    fn abandon(&self, call_id: &str, dialogs: CallDialogs) {
        self.inner.abandon(call_id, dialogs)
    }
}

impl Pacer {
    /// Gives a dial to the backend with a sink that lets the pacing see its signals.
    fn hand_over(&self, dial: Dial, signals: SignalSink) {
        let shared = Arc::downgrade(&self.shared);
        let observed = signals.observed(Arc::new(move |report: &SwitchReport| {
            if let Some(shared) = shared.upgrade() {
                shared.observe(report);
            }
        }));
        self.inner.originate(dial, observed);
    }
}

/// Tells the call manager a dial was given up without reaching the backend.
fn busy(call_id: String, signals: SignalSink, retry_after: Duration) {
    tokio::spawn(async move {
        signals
            .send(&call_id, SwitchSignal::TrunkBusy { retry_after })
            .await
    });
}

/// The dispatcher: gives waiting dials to the backend as places free, gives up those that
/// waited too long, and brings the rate back after pushback. Ends with the pacer.
async fn dispatch(pacer: std::sync::Weak<Pacer>) {
    loop {
        let Some(this) = pacer.upgrade() else { return };
        let shared = this.shared.clone();
        let limits = shared.limits;
        let now = Instant::now();
        let mut go = Vec::new();
        let mut expired = Vec::new();
        let wake_at = {
            let mut state = shared.lock();
            state.recover(now, &limits);
            while let Some((deadline, call_id)) = state.arrivals.front().cloned() {
                if !state.waiting.contains_key(&call_id) {
                    state.arrivals.pop_front();
                } else if deadline <= now {
                    state.arrivals.pop_front();
                    if let Some(waiting) = state.leave(&call_id) {
                        expired.push(waiting);
                    }
                } else {
                    break;
                }
            }
            let retry_after = state.retry_after(now);
            while !state.waiting.is_empty() && state.take_place(now, &limits) {
                let Some(waiting) = state.next_waiting() else {
                    break;
                };
                if waiting.sink.is_closed() {
                    // The call manager stopped (shutdown) while it waited: place nothing.
                    state.tokens += 1.0;
                    continue;
                }
                state.dispatched(waiting.dial.call_id.clone(), now);
                go.push(waiting);
            }
            publish(&state, &limits);
            // The next moment something may change by itself.
            let mut wake_at = now + STEP;
            if let Some((deadline, _)) = state.arrivals.front() {
                wake_at = wake_at.min(*deadline);
            }
            if !state.waiting.is_empty() {
                if let Some(until) = state.paused_until.filter(|u| *u > now) {
                    wake_at = wake_at.min(until);
                } else if let Some(token) = state.next_token(now) {
                    wake_at = wake_at.min(token.max(now + Duration::from_millis(1)));
                }
            }
            (wake_at, retry_after)
        };
        let (wake_at, retry_after) = wake_at;
        for waiting in expired {
            metrics::counter!("calldesk_pacing_refusals_total", "why" => WAITED_TOO_LONG)
                .increment(1);
            busy(waiting.dial.call_id, waiting.sink, retry_after);
        }
        for waiting in go {
            metrics::histogram!("calldesk_pacing_wait_seconds")
                .record(now.duration_since(waiting.since).as_secs_f64());
            this.hand_over(waiting.dial, waiting.sink);
        }
        drop(this);
        tokio::select! {
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = shared.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::telephony::{sim, SimSwitch, SimTimings};

    /// The simulated switch, its calls ringing for a minute (they hold their place).
    fn switch() -> Arc<dyn Telephony> {
        Arc::new(SimSwitch::new(SimTimings {
            ring: Duration::from_millis(100),
            answer: Duration::from_secs(60),
            no_answer: Duration::from_secs(60),
            talk: Duration::from_secs(60),
        }))
    }

    fn dial(id: &str, agent: &str, number: &str) -> Dial {
        Dial {
            call_id: id.into(),
            agent_id: agent.into(),
            phone_number: number.into(),
            caller_id: String::new(),
            associated_object: None,
        }
    }

    /// Runs for `for_how_long` of (paused) time; the first signal of each call, and when.
    async fn first_signals(
        rx: &mut mpsc::Receiver<SwitchReport>,
        for_how_long: Duration,
    ) -> Vec<(u128, String, SwitchSignal)> {
        let start = Instant::now();
        let deadline = tokio::time::sleep(for_how_long);
        tokio::pin!(deadline);
        let mut seen: Vec<(u128, String, SwitchSignal)> = vec![];
        loop {
            tokio::select! {
                Some(report) = rx.recv() => {
                    if !seen.iter().any(|(_, id, _)| *id == report.call_id) {
                        seen.push((start.elapsed().as_millis(), report.call_id, report.signal));
                    }
                }
                _ = &mut deadline => return seen,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_spaces_dials_and_the_line_gives_up_after_the_wait() {
        let pacer = Pacer::new(
            switch(),
            PacingLimits {
                max_cps: Some(2.0),
                max_calls: None,
                wait: Duration::from_millis(1200),
            },
        );
        let (tx, mut rx) = mpsc::channel(64);
        for i in 0..6 {
            pacer.originate(
                dial(&format!("c{i}"), "ann", "+12025550100"),
                SignalSink::new(tx.clone()),
            );
        }
        let seen = first_signals(&mut rx, Duration::from_secs(5)).await;
        let busy = SwitchSignal::TrunkBusy {
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(
            seen,
            [
                (0, "c0".into(), SwitchSignal::Acknowledged),
                (0, "c1".into(), SwitchSignal::Acknowledged),
                (500, "c2".into(), SwitchSignal::Acknowledged),
                (1000, "c3".into(), SwitchSignal::Acknowledged),
                (1200, "c4".into(), busy.clone()),
                (1200, "c5".into(), busy),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_progress_hold_places_and_agents_take_turns() {
        let pacer = Pacer::new(
            switch(),
            PacingLimits {
                max_cps: None,
                max_calls: Some(1),
                wait: Duration::from_secs(30),
            },
        );
        let (tx, mut rx) = mpsc::channel(64);
        let sink = || SignalSink::new(tx.clone());
        // a1 is busy after 100 ms (its end frees the place); ann queues three more, bob one.
        pacer.originate(dial("a1", "ann", sim::BUSY), sink());
        pacer.originate(dial("a2", "ann", sim::BUSY), sink());
        pacer.originate(dial("a3", "ann", "+12025550100"), sink());
        pacer.originate(dial("b1", "bob", "+12025550100"), sink());
        let seen = first_signals(&mut rx, Duration::from_secs(2)).await;
        // a1, then a2 when a1 ends; then bob's turn before ann's third; a3 waits for b1,
        // which rings on.
        let order: Vec<(u128, &str)> = seen.iter().map(|(t, id, _)| (*t, id.as_str())).collect();
        assert_eq!(order, [(0, "a1"), (100, "a2"), (200, "b1")]);
        // Hanging up the call in progress lets the next one go.
        pacer.hangup("b1");
        let seen = first_signals(&mut rx, Duration::from_millis(10)).await;
        assert_eq!(seen.first().map(|(_, id, _)| id.as_str()), Some("a3"));
    }

    #[tokio::test(start_paused = true)]
    async fn pushback_halves_the_rate_pauses_and_recovers() {
        let limits = PacingLimits {
            max_cps: Some(10.0),
            max_calls: None,
            wait: Duration::from_secs(30),
        };
        let pacer = Pacer::new(switch(), limits);
        let shared = pacer.shared.clone();
        let report = |retry_after| SwitchReport {
            call_id: "x".into(),
            signal: SwitchSignal::Pushback { retry_after },
            detail: None,
            dialogs: None,
        };
        shared.observe(&report(Some(Duration::from_secs(2))));
        assert_eq!(shared.lock().rate, Some(5.0));
        // A second 503 within the second is the same pushback.
        shared.observe(&report(None));
        assert_eq!(shared.lock().rate, Some(5.0));
        // Nothing is dispatched during the Retry-After.
        let (tx, mut rx) = mpsc::channel(64);
        pacer.originate(dial("c0", "ann", "+12025550100"), SignalSink::new(tx));
        let seen = first_signals(&mut rx, Duration::from_secs(3)).await;
        assert_eq!(seen[0].0, 2000, "{seen:?}");
        // A tenth of the ceiling back per quiet second: 5 -> 10 in five steps after the first.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(shared.lock().rate, Some(10.0));
        assert_eq!(shared.lock().last_lowered, None);
    }

    #[tokio::test(start_paused = true)]
    async fn without_limits_one_503_slows_nothing_and_a_retry_after_refuses_at_once() {
        let limits = PacingLimits {
            max_cps: None,
            max_calls: None,
            wait: Duration::ZERO,
        };
        let pacer = Pacer::new(switch(), limits);
        let pushback = |retry_after| SwitchReport {
            call_id: "x".into(),
            signal: SwitchSignal::Pushback { retry_after },
            detail: None,
            dialogs: None,
        };
        pacer.shared.observe(&pushback(None));
        let (tx, mut rx) = mpsc::channel(64);
        pacer.originate(
            dial("c0", "ann", "+12025550100"),
            SignalSink::new(tx.clone()),
        );
        let seen = first_signals(&mut rx, Duration::from_millis(10)).await;
        assert_eq!(seen[0].2, SwitchSignal::Acknowledged, "{seen:?}");
        // Recovered to no limit within a couple of seconds.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(pacer.shared.lock().rate, None);
        // A Retry-After: the next dial fails at once, told to wait out the pause.
        pacer
            .shared
            .observe(&pushback(Some(Duration::from_secs(5))));
        pacer.originate(dial("c1", "ann", "+12025550100"), SignalSink::new(tx));
        let seen = first_signals(&mut rx, Duration::from_millis(10)).await;
        let c1 = seen.iter().find(|(_, id, _)| id == "c1");
        assert_eq!(
            c1.map(|(_, _, signal)| signal.clone())
                .unwrap_or(SwitchSignal::Acknowledged),
            SwitchSignal::TrunkBusy {
                retry_after: Duration::from_secs(5)
            },
            "{seen:?}"
        );
    }

    #[test]
    fn shares_of_the_calls_add_up_to_the_deployments() {
        let limits = PacingLimits {
            max_cps: Some(5.0),
            max_calls: Some(10),
            wait: Duration::ZERO,
        };
        let shares: Vec<u32> = (0..3)
            .filter_map(|rank| max_calls(&limits, (3, rank)))
            .collect();
        assert_eq!(shares, [4, 3, 3]);
        assert_eq!(max_calls(&limits, (1, 0)), Some(10));
    }
}
