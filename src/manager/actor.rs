//! The call-manager actor: owns every interaction that is not COMPLETED and serializes all
//! changes to each of them.
//!
//! One write per interaction is in flight at a time: further changes to it (agent requests,
//! switch signals, timers) queue in its slot and are applied to the committed state once the
//! write before them has committed. Writes of different interactions share transactions in the
//! store's writer (group commit), so throughput does not depend on one fsync per call.

use std::{
    collections::{hash_map::Entry, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::time::DelayQueue;
use tracing::Span;

use super::{
    idempotency::{self, Begin, Follow, Key, Keys},
    key_filter::KeyFilter,
    lifecycle::{self, AgentOp, Input, NewCall},
    AgentEventFeed, Command, EventFeed, ManagerConfig, StartCall,
};
use crate::{
    domain::{
        dialog::CallDialogs, feed, spans::child_or_parent, CallError, CallProgress, EncodedEvent,
        Interaction, InteractionEvent, InteractionState, TransferTarget,
    },
    proto,
    store::{
        self, Claims, Completion, FaultState, IdempotencyRecord, Store, StoreError,
        TransferKeyRecord, Write, WriteOp, WriterHandle, TRANSFER_KEYS_PER_INTERACTION,
    },
    telephony::{Dial, SignalSink, SwitchOp, SwitchReport, SwitchSignal, Telephony},
};

/// Writes the actor may have in flight before it stops taking new commands (backpressure to
/// callers instead of an unbounded queue).
const MAX_IN_FLIGHT: usize = 4096;
/// Events buffered per interaction feed; a watcher that falls further behind catches up from
/// the store.
const INTERACTION_FEED_CAPACITY: usize = 64;
/// Events buffered per agent feed; a WatchInteractions stream that falls further behind is
/// ended with UNAVAILABLE.
const AGENT_FEED_CAPACITY: usize = 1024;
/// How long after a failed write a switch or timer change is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How often expired idempotency keys are dropped from the cache, and WRAP_UP interactions
/// whose watchers left are dropped from memory.
const KEY_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Store reads the actor has asked for and whose answers wait to be taken up.
const LOADS_CAPACITY: usize = 1024;
/// WRAP_UP interactions a restart left in the store that the wrap-up sweep times out per page.
const SWEEP_PAGE: u32 = 512;
/// How long the sweep waits before its next page while the actor has much in hand.
const SWEEP_PAUSE: Duration = Duration::from_millis(50);
/// Keys per `--idempotency-ttl` the filter of stored keys is designed for, per key the cache
/// holds: 1,000,000 at the default 10,000 (1.25 MB per generation, two generations).
const FILTER_KEYS_PER_CACHED_KEY: usize = 100;
/// Idempotency keys read per page of the start-up scan into that filter.
const FILTER_SCAN_PAGE: u32 = 10_000;
/// How long a hold or resume waits for the switch's word before it is given up as refused.
/// Longer than a SIP transaction's own timeout (32 s), so that a live switch always answers
/// first; this only guards against a backend that never does.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(40);

/// How long a transfer, consultation or conference may wait for its target's answer before it
/// is given up as failed: longer than any target rings (SIP: --sip-no-answer-timeout, 30 s by
/// default) plus a SIP transaction, so that a live switch always answers first; this guards
/// against a backend that never does (no customer left waiting for ever).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// `end_detail` of a call ended because the replica that held it stopped (PostgreSQL).
const TAKEN_OVER: &str = "the replica that held this call stopped; another took it over";

/// What a store write is for, so that its completion finds its way back.
#[derive(Debug)]
pub(super) enum WriteToken {
    /// The in-flight change of this interaction.
    Interaction(String),
    /// A Deferred Dial staging.
    Dialpad(u64),
    /// Claims of a failed StartCall released (PostgreSQL): nobody waits for it, but it is
    /// tried again until it commits, or another replica would wait for the claim to expire.
    Release(Box<Claims>),
    /// A connected call's dialogs saved: nobody waits for it (a failure is logged: that call
    /// would end SERVER_RESTART after a crash, as before).
    Dialogs(String),
}

/// The longest a timer may be set for: the timer wheel's limit is about two years, and a
/// configured timeout longer than this one is as good as never.
const MAX_TIMER: Duration = Duration::from_secs(365 * 86_400);

/// The wrap-up timeout of the WRAP_UP interactions a restart left in the store: one timer for
/// them all (they waited as long as the restart, and each gets the whole timeout after it),
/// which then pages through their ids in the store, so that a restart holds nothing per
/// WRAP_UP interaction.
#[derive(Debug, Clone, Copy)]
struct Sweep {
    /// The row id of the last one timed out (0: none yet).
    after: i64,
    /// The last WRAP_UP row the restart found: a later row is not the sweep's.
    through: i64,
    /// The restart: only an interaction whose call ended before it is the sweep's (one ended
    /// since, by the restart itself, has a timer of its own).
    ended_before: SystemTime,
}

/// Messages the actor sends itself after a delay.
#[derive(Debug)]
enum Timer {
    OriginateTimeout(String),
    /// The wrap-up timeout of one interaction; with an instant, only if its call ended before
    /// then (the sweep's, see [`Sweep`]).
    WrapUpTimeout(String, Option<SystemTime>),
    /// The next page of the sweep.
    WrapUpSweep(Sweep),
    Retry(String),
    /// A switch operation (the slot's `switch_round`) still waits for the switch.
    SwitchTimeout(String, u64),
    /// A transfer's target (the leg of that `switch_round`) still has not answered or given up.
    TransferTimeout(String, u64),
    /// Claims whose release did not commit, to release again.
    Release(Box<Claims>),
}

type StartReply = oneshot::Sender<Result<proto::StartCallResponse, CallError>>;
type ChangeReply = oneshot::Sender<Result<proto::Interaction, CallError>>;

/// A change waiting for its turn on one interaction.
struct Change {
    input: Input,
    /// The agent's reply channel; None for switch signals and timers.
    reply: Option<ChangeReply>,
    /// The switch's words for why the call ended, recorded as `end_detail`.
    detail: Option<String>,
    /// An operation the switch has already carried out: it only needs recording.
    switched: bool,
    /// The agent's request's work (its switch operation and its write run under it); none for
    /// switch signals and timers.
    span: Span,
}

impl Change {
    fn new(input: Input, reply: Option<ChangeReply>) -> Self {
        Self {
            input,
            reply,
            detail: None,
            switched: false,
            span: Span::none(),
        }
    }
}

/// The write in flight for one interaction.
struct Pending {
    event: InteractionEvent,
    wire: Arc<proto::InteractionEvent>,
    /// `wire`, encoded once: the store's row and what every watcher is sent.
    encoded: EncodedEvent,
    /// What it was: the creation (StartCall waits) or a change.
    kind: PendingKind,
    /// The work of the request that asked for it, which lasts until the write is done.
    span: Span,
}

enum PendingKind {
    Create {
        reply: StartReply,
        idempotency_key: Option<Key>,
        /// Released if the creation fails (its write carried the reservation).
        claims: Claims,
    },
    Change(Change),
    /// The new interaction of a transfer's target agent. A CompleteTransfer's reply (with the
    /// first interaction as it ended) waits for it, so that the target agent's interaction
    /// exists once CompleteTransfer has answered.
    Transferred {
        reply: Option<(ChangeReply, Box<proto::Interaction>)>,
    },
}

/// A transfer, consultation or conference under way on an interaction.
struct TransferLeg {
    /// What the switch was asked, to match its answer (`Applied` / `Refused`).
    op: SwitchOp,
    /// A target agent's: the id its new interaction gets (the switch's call goes on under it)
    /// and the agent, one of whose active calls it holds from the request on.
    to_agent: Option<(String, String)>,
    /// The slot's `switch_round` when it started, so that a late timeout finds its own.
    round: u64,
}

/// Whether a slot's transfer keys (`Slot::transfer_keys`) are all in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredKeys {
    /// Made by this process: every key it has was recorded here.
    Held,
    /// Taken up from the store (a restart, a takeover, a WRAP_UP read back): its keys are
    /// read when a transfer operation with a key first needs them.
    Unread,
    /// Being read (`Loaded::TransferKeys`); the changes wait.
    Reading,
}

/// One interaction the actor holds. Sized for the table it lives in (every open interaction
/// has one): what is there only for a moment (a write, a switch operation, a transfer) is
/// boxed, which made a slot 1.6 KiB → ~0.6 KiB. The table holds it boxed too: a table keeps
/// an eighth to a half of its entries empty, each as large as an entry.
struct Slot {
    /// The committed state; None until the creation commits.
    current: Option<Interaction>,
    /// The write in flight, if any.
    writing: Option<Box<Pending>>,
    /// An operation the switch is carrying out, and the agent's change that asked for it;
    /// the changes behind it wait, as they do for a write.
    switching: Option<Box<(SwitchOp, Change)>>,
    /// Counts holds and resumes sent to the switch, so that a late timeout finds its own.
    switch_round: u64,
    /// Changes waiting for the write in flight (or the switch).
    queued: VecDeque<Change>,
    /// Its watchers' feed, made on the first watch.
    feed: Option<broadcast::Sender<EncodedEvent>>,
    /// The transfer, consultation or conference under way, if any.
    transfer: Option<Box<TransferLeg>>,
    /// The request_ids of transfer operations already recorded on it, with what each stands
    /// for (the store keeps them too): a retry is answered with the interaction as it is, and
    /// does nothing more.
    transfer_keys: VecDeque<TransferKeyRecord>,
    /// Whether `transfer_keys` holds them all, or the store must be asked first.
    stored_keys: StoredKeys,
}

impl Slot {
    fn new(current: Option<Interaction>, writing: Option<Pending>) -> Box<Self> {
        // A slot with a committed state and no write is one taken up from the store.
        let stored_keys = match (&current, &writing) {
            (Some(_), None) => StoredKeys::Unread,
            _ => StoredKeys::Held,
        };
        Box::new(Self {
            current,
            writing: writing.map(Box::new),
            switching: None,
            switch_round: 0,
            queued: VecDeque::new(),
            feed: None,
            transfer: None,
            transfer_keys: VecDeque::new(),
            stored_keys,
        })
    }
}

/// A dial the switch has not acknowledged yet.
struct Originating {
    request: StartCall,
    reply: StartReply,
    idempotency_key: Option<Key>,
    /// What admission claimed in a shared store for this dial.
    claims: Claims,
    /// The StartCall's work: the creation's write runs under it.
    span: Span,
    /// The call's dialogs the switch reported before its acknowledgement (the agent's phone's
    /// INVITE, sent before anything answered it): saved right after the creation.
    dialogs: Option<Box<CallDialogs>>,
}

/// A Deferred Dial staging waiting for its commit.
struct Staging {
    reply: StartReply,
    idempotency_key: Option<Key>,
    claims: Claims,
}

/// What waits for an interaction the actor is reading from the store.
enum Waiter {
    /// An agent's change (`agent_id` Some: applied only if the interaction is theirs), or the
    /// wrap-up timer's (None).
    Change {
        agent_id: Option<String>,
        /// The sweep's wrap-up timeout: applied only if the call ended before this instant.
        ended_before: Option<SystemTime>,
        change: Change,
    },
    /// A watcher of the interaction (SQLite), for its feed.
    Watch { agent_id: String, reply: WatchReply },
}

/// A request waiting for the look-up of its idempotency key in the store.
enum Parked {
    /// A StartCall, with the compliance refusal it carries, if any.
    Start(Box<StartCall>, Option<CallError>, StartReply),
    /// A DialStaged with nothing staged: the key's response, if it has one.
    Follow(StartReply),
}

/// A store read the actor asked for, answered (by a task of its own: the actor never awaits).
enum Loaded {
    /// An interaction the actor did not hold: `Ok(Some(_))` when it is in WRAP_UP and this
    /// process (or replica) holds it; `Ok(None)` otherwise (unknown, COMPLETED, or live on
    /// another replica).
    Interaction {
        id: String,
        result: Result<Option<proto::Interaction>, StoreError>,
    },
    /// An idempotency key the actor did not hold.
    Key {
        key: Key,
        result: Result<Option<IdempotencyRecord>, StoreError>,
    },
    /// The store's unexpired idempotency keys, scanned at start-up into a blank of the
    /// actor's filter (SQLite).
    KeyFilter(Box<KeyFilter>),
    /// The transfer keys of an interaction taken up from the store (`StoredKeys::Reading`).
    TransferKeys {
        id: String,
        result: Result<Vec<TransferKeyRecord>, StoreError>,
    },
    /// A page of the wrap-up sweep: the ids (with their row ids) of WRAP_UP interactions.
    WrapUpPage {
        sweep: Sweep,
        result: Result<Vec<(i64, String)>, StoreError>,
    },
}

type WatchReply = oneshot::Sender<Result<Option<EventFeed>, CallError>>;

struct Actor {
    config: ManagerConfig,
    /// Every interaction that is live, being created, or being changed, and the WRAP_UP ones
    /// someone watches, by id. A WRAP_UP interaction nothing waits on is not here: it is read
    /// back from the store when a change, a watcher or its timer needs it (`loading`).
    interactions: HashMap<String, Box<Slot>>,
    /// Interactions being read from the store, and what waits for each.
    loading: HashMap<String, Vec<Waiter>>,
    /// Idempotency keys being looked up in the store, and the requests that wait for each.
    key_lookups: HashMap<Key, Vec<Parked>>,
    /// To read from the store without waiting (a task per read, answered on `loads`).
    store: Store,
    /// Where those tasks answer.
    loads: mpsc::Sender<Loaded>,
    /// Dials waiting for the switch's acknowledgement, by call id.
    originating: HashMap<String, Originating>,
    /// Per agent: dials in progress plus live calls, against `max_active_calls`.
    active_calls: HashMap<String, u32>,
    /// The sum of `active_calls`, published: a draining server waits for it to reach zero
    /// without asking the actor (which never waits for anyone).
    live_calls: watch::Sender<usize>,
    /// Set by Drain (SIGTERM): no new call is dialed or staged; the live ones go on.
    draining: bool,
    /// Idempotency keys in flight, and a cache of answered ones, by (agent, request_id), each
    /// waiting retry's reply with it.
    keys: Keys<StartReply>,
    /// The keys the store may hold unexpired (SQLite): a key certainly not among them is new
    /// and is not looked up (key_filter.rs).
    key_filter: KeyFilter,
    /// Deferred Dial stagings by token.
    staging: HashMap<u64, Staging>,
    next_staging: u64,
    /// Per agent: the WatchInteractions feed, while anyone watches (freed when the last
    /// watcher's `AgentFeed` is dropped).
    agent_feeds: HashMap<String, feed::Sender<EncodedEvent>>,
    telephony: Arc<dyn Telephony>,
    signal_sink: SignalSink,
    /// Every pending timer, in one queue polled by the actor's loop: a timer is an entry, not
    /// a task. Timers are not cancelled: each checks, when it fires, that it still applies.
    timers: DelayQueue<Timer>,
    writer: Option<WriterHandle<WriteToken>>,
    /// Writes the writer queue had no room for, in order.
    backlog: VecDeque<Write<WriteToken>>,
    /// Writes submitted (or backlogged) whose completion has not arrived.
    in_flight: usize,
    /// Set by Shutdown: the reply to send once the writes in flight are done.
    stopping: Option<oneshot::Sender<()>>,
    /// What is wrong with the store: while a fault refuses writes, agents' requests are
    /// refused at once instead of dialing or queueing behind a write that cannot succeed.
    faults: FaultState,
}

/// The state of a held interaction; None while a transfer or consultation is under way (or
/// just failed): its third leg died with the process, so its call is not adopted but ended
/// SERVER_RESTART, and no customer waits on hold for a target nobody calls.
fn interaction_state(
    interactions: &HashMap<String, Box<Slot>>,
    id: &str,
) -> Option<InteractionState> {
    interactions
        .get(id)
        .and_then(|slot| slot.current.as_ref())
        .filter(|i| {
            !matches!(
                i.progress,
                CallProgress::Transferring
                    | CallProgress::Consulting
                    | CallProgress::TransferFailed
            )
        })
        .map(|i| i.state)
}

/// Starts the actor on its task; returns its count of dials plus live calls.
pub(super) fn spawn(
    config: ManagerConfig,
    store: Store,
    commands: mpsc::Receiver<Command>,
    writer_conn: store::WriterConn,
    faults: FaultState,
    recovered: store::Recovered,
    telephony: Arc<dyn Telephony>,
) -> watch::Receiver<usize> {
    let (live_calls, live_calls_rx) = watch::channel(0);
    let idempotency_ttl = config.idempotency_ttl;
    let idempotency_cache_keys = config.idempotency_cache_keys;
    let (completions_tx, completions) = mpsc::channel(MAX_IN_FLIGHT);
    let writer = store::start_writer(writer_conn, MAX_IN_FLIGHT, store::MAX_BATCH, completions_tx);
    let (signals_tx, signals) = mpsc::channel(4096);
    let (loads_tx, loads) = mpsc::channel(LOADS_CAPACITY);
    let key_filter = KeyFilter::new(
        idempotency_cache_keys.saturating_mul(FILTER_KEYS_PER_CACHED_KEY),
        idempotency_ttl,
        SystemTime::now(),
    );
    if !store.is_shared() {
        scan_keys(store.clone(), key_filter.blank(), loads_tx.clone());
    }
    let mut actor = Actor {
        config,
        interactions: HashMap::new(),
        loading: HashMap::new(),
        key_lookups: HashMap::new(),
        store,
        loads: loads_tx,
        originating: HashMap::new(),
        active_calls: HashMap::new(),
        live_calls,
        draining: false,
        keys: Keys::new(idempotency_ttl, idempotency_cache_keys),
        key_filter,
        staging: HashMap::new(),
        next_staging: 0,
        agent_feeds: HashMap::new(),
        telephony,
        signal_sink: SignalSink::new(signals_tx),
        timers: DelayQueue::new(),
        writer: Some(writer),
        backlog: VecDeque::new(),
        in_flight: 0,
        stopping: None,
        faults,
    };
    actor.recover(recovered, None);
    tokio::spawn(actor.run(commands, signals, completions, loads));
    live_calls_rx
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut signals: mpsc::Receiver<SwitchReport>,
        mut completions: mpsc::Receiver<Completion<WriteToken>>,
        mut loads: mpsc::Receiver<Loaded>,
    ) {
        let mut prune = tokio::time::interval(KEY_PRUNE_INTERVAL);
        loop {
            if self.stopping.is_some() && self.in_flight == 0 {
                break;
            }
            let accepting = self.stopping.is_none() && self.in_flight < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                Some(c) = completions.recv() => self.on_completion(c),
                Some(loaded) = loads.recv() => self.on_loaded(loaded),
                Some(report) = signals.recv(), if self.stopping.is_none() => {
                    self.on_signal(report)
                }
                Some(timer) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)),
                    if self.stopping.is_none() => self.on_timer(timer.into_inner()),
                command = commands.recv(), if accepting => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = prune.tick() => {
                    self.keys.prune(SystemTime::now());
                    self.key_filter.prune(SystemTime::now());
                    self.drop_unwatched();
                }
            }
        }
        if let Some(writer) = self.writer.take() {
            // Joining the writer thread blocks; the queue is empty, so it is quick.
            let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        }
        if let Some(reply) = self.stopping.take() {
            let _ = reply.send(());
        }
    }

    /// Takes up interactions a previous process (or, `detail`, another replica) left:
    /// connected ones whose dialogs were stored are adopted (the switch takes the call up
    /// again; an event marked `recovered` records it), the other live ones are ended
    /// (SERVER_RESTART, with `detail` as `end_detail`), WRAP_UP ones wait again.
    fn recover(&mut self, recovered: store::Recovered, detail: Option<&str>) {
        let (mut ended, mut adopted, mut waiting) = (0, 0, 0);
        let mut dialogs = recovered.dialogs;
        for stored in recovered.open_interactions {
            let interaction = match Interaction::try_from(stored) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!("skipping a stored interaction: {}", e.0);
                    continue;
                }
            };
            let id = interaction.id.clone();
            let live = interaction.state.is_live();
            metrics::gauge!(
                "calldesk_interactions",
                "state" => super::labels::state_label(interaction.state)
            )
            .increment(1.0);
            if live {
                self.take_active(&interaction.agent_id);
            } else {
                // WRAP_UP: nothing waits on it yet, so it stays in the store; its timer reads
                // it back.
                if let Some(after) = self.config.wrap_up_timeout {
                    self.schedule(after, Timer::WrapUpTimeout(id.clone(), None));
                }
                waiting += 1;
                continue;
            }
            self.interactions
                .insert(id.clone(), Slot::new(Some(interaction), None));
            if live {
                let stored = dialogs.remove(&id);
                if self.adopt(&id, interaction_state(&self.interactions, &id), &stored) {
                    adopted += 1;
                    self.enqueue(&id, Change::new(Input::Recovered, None));
                    continue;
                }
                if let Some(stored) = stored {
                    // Still being set up, mid-transfer, or not taken up: its phones are told
                    // (CANCEL what rings, BYE what answered) before it ends.
                    self.telephony.abandon(&id, stored);
                }
                ended += 1;
                // The call died with the previous process.
                let mut change = Change::new(Input::ServerRestart, None);
                change.detail = detail.map(str::to_owned);
                self.enqueue(&id, change);
            }
        }
        // The WRAP_UP ones the store kept apart (SQLite) stay there, counted but not read.
        let stored = recovered.wrap_ups;
        if stored.count > 0 {
            metrics::gauge!(
                "calldesk_interactions",
                "state" => super::labels::state_label(InteractionState::WrapUp)
            )
            .increment(stored.count as f64);
            waiting += stored.count;
            if let Some(after) = self.config.wrap_up_timeout {
                let sweep = Sweep {
                    after: 0,
                    through: stored.last_row,
                    ended_before: SystemTime::now(),
                };
                self.schedule(after, Timer::WrapUpSweep(sweep));
            }
        }
        if ended > 0 || adopted > 0 || waiting > 0 {
            tracing::info!(ended, adopted, wrap_up = waiting, "recovered interactions");
        }
    }

    /// Hands a connected call's stored dialogs to the switch; false when there are none, the
    /// call was not connected (or a leg of it still rang), or the switch cannot take it up.
    fn adopt(
        &self,
        id: &str,
        state: Option<InteractionState>,
        dialogs: &Option<CallDialogs>,
    ) -> bool {
        let connected = matches!(
            state,
            Some(InteractionState::Delivered | InteractionState::Hold)
        );
        let Some(dialogs) = dialogs.as_ref().filter(|d| connected && d.connected()) else {
            return false;
        };
        self.telephony
            .adopt(id, dialogs.clone(), self.signal_sink.clone())
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::StartCall {
                request,
                refusal,
                reply,
                span,
            } => {
                let work = child_or_parent(
                    tracing::debug_span!(parent: &span, "manager.start_call"),
                    &span,
                );
                let _working = work.enter();
                self.start_call(request, refusal, reply, false)
            }
            Command::Change { reply, .. } if self.faults.refusing().is_some() => {
                let fault = self
                    .faults
                    .refusing()
                    .unwrap_or(store::StoreFault::WriteFailed);
                let _ = reply.send(Err(CallError::StoreFault(fault)));
            }
            Command::Change {
                agent_id,
                interaction_id,
                input,
                reply,
                span,
            } => {
                let mut change = Change::new(input.into(), Some(reply));
                change.span = child_or_parent(
                    tracing::debug_span!(parent: &span, "manager.change", operation = change.input.operation()),
                    &span,
                );
                match self.interactions.get(&interaction_id) {
                    Some(slot) => {
                        let owned = slot
                            .current
                            .as_ref()
                            .is_some_and(|i| i.agent_id == agent_id);
                        if owned {
                            self.enqueue(&interaction_id, change);
                        } else if let Some(reply) = change.reply {
                            let _ = reply.send(Err(CallError::NotFound));
                        }
                    }
                    // Not held: a WRAP_UP interaction waiting in the store, or not ours.
                    None => self.load(
                        interaction_id,
                        Waiter::Change {
                            agent_id: Some(agent_id),
                            ended_before: None,
                            change,
                        },
                    ),
                }
            }
            Command::Watch {
                agent_id,
                interaction_id,
                reply,
            } => match self.interactions.get_mut(&interaction_id) {
                Some(slot) => {
                    let _ = reply.send(Ok(subscribe(slot, &agent_id)));
                }
                None => self.load(interaction_id, Waiter::Watch { agent_id, reply }),
            },
            Command::WatchAgent { agent_id, reply } => {
                let feed: AgentEventFeed = self
                    .agent_feeds
                    .entry(agent_id)
                    .or_insert_with(|| feed::channel(AGENT_FEED_CAPACITY))
                    .subscribe();
                let _ = reply.send(feed);
            }
            Command::DialStaged {
                agent_id,
                request_id,
                call,
                refusal,
                reply,
                span,
            } => {
                let work = child_or_parent(
                    tracing::debug_span!(parent: &span, "manager.dial_staged"),
                    &span,
                );
                let _working = work.enter();
                self.dial_staged(agent_id, request_id, call, refusal, reply)
            }
            Command::Adopt { mut taken } => {
                taken
                    .open_interactions
                    .retain(|i| !self.interactions.contains_key(&i.id));
                self.recover(taken, Some(TAKEN_OVER));
            }
            Command::AgentUnwatched { agent_id } => {
                let unwatched = self
                    .agent_feeds
                    .get(&agent_id)
                    .is_some_and(|feed| feed.receiver_count() == 0);
                if unwatched {
                    self.agent_feeds.remove(&agent_id);
                    if self.agent_feeds.capacity() > 4 * self.agent_feeds.len().max(64) {
                        // Give back the table a crowd of watchers once grew.
                        self.agent_feeds.shrink_to_fit();
                    }
                }
            }
            Command::Drain { reply } => {
                self.draining = true;
                let _ = reply.send(());
            }
            Command::Shutdown { reply } => self.stopping = Some(reply),
        }
    }

    /// DialStaged: a StartCall of what is staged, or, once a first DialStaged with this
    /// `request_id` has dialed (and cleared the dialpad), a replay of its response.
    fn dial_staged(
        &mut self,
        agent_id: String,
        request_id: Option<String>,
        call: Option<StartCall>,
        refusal: Option<CallError>,
        reply: StartReply,
    ) {
        let Some(call) = call else {
            match request_id {
                Some(r) => self.follow((agent_id, r), reply, false),
                None => {
                    let _ = reply.send(Err(CallError::DialpadEmpty));
                }
            }
            return;
        };
        self.start_call(call, refusal, reply, false);
    }

    /// A DialStaged with nothing staged: its key's response, its first's outcome, or
    /// DIALPAD_EMPTY. `looked_up`: the store was asked for the key already.
    fn follow(&mut self, key: Key, reply: StartReply, looked_up: bool) {
        if !looked_up && self.must_look_up(&key) {
            return self.look_up(key, Parked::Follow(reply));
        }
        match self.keys.follow(&key, reply, SystemTime::now()) {
            Follow::Replay(reply, response) => {
                let _ = reply.send(Ok(*response));
            }
            Follow::Joined => {}
            Follow::Unknown(reply) => {
                let _ = reply.send(Err(CallError::DialpadEmpty));
            }
        }
    }

    /// Whether the store may know a key the actor does not: with SQLite, an answered key that
    /// left the cache (or a restart). With PostgreSQL admission has asked the store already.
    fn must_look_up(&self, key: &Key) -> bool {
        !self.store.is_shared() && !self.keys.knows(key) && self.key_filter.may_hold(key)
    }

    /// Reads `key` from the store on a task of its own; `parked` (and any request with the same
    /// key meanwhile) waits for the answer (`Loaded::Key`).
    fn look_up(&mut self, key: Key, parked: Parked) {
        match self.key_lookups.entry(key) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push(parked),
            Entry::Vacant(waiting) => {
                let key = waiting.key().clone();
                waiting.insert(vec![parked]);
                let (store, loads) = (self.store.clone(), self.loads.clone());
                tokio::spawn(async move {
                    let result = store.idempotency_key(&key.0, &key.1).await;
                    let _ = loads.send(Loaded::Key { key, result }).await;
                });
            }
        }
    }

    /// A StartCall (or DialStaged), under its request's work span (entered: the dial and the
    /// write it leads to run under it). `looked_up`: its key, if it has one, was looked up in
    /// the store already.
    fn start_call(
        &mut self,
        mut request: StartCall,
        refusal: Option<CallError>,
        reply: StartReply,
        looked_up: bool,
    ) {
        if let Some(request_id) = &request.request_id {
            let key = (request.agent_id.clone(), request_id.clone());
            // While the store refuses writes nothing is dialed anyway, and its reads may hang
            // with its disk: the fault is answered at once (below) from what the cache knows.
            if !looked_up && self.faults.refusing().is_none() && self.must_look_up(&key) {
                return self.look_up(key, Parked::Start(Box::new(request), refusal, reply));
            }
        }
        let claims = std::mem::take(&mut request.claims);
        // While the store cannot write, nothing is dialed: the call could not be recorded. A
        // retry with the same request_id still replays its response.
        let idempotency_key = request
            .request_id
            .clone()
            .map(|r| (request.agent_id.clone(), r));
        // Nor while draining (SIGTERM): the client starts the call on another replica.
        let refusing = match self.faults.refusing() {
            Some(fault) => Some(CallError::StoreFault(fault)),
            None => self.draining.then_some(CallError::ShuttingDown),
        };
        if let Some(error) = refusing {
            let replays = idempotency_key
                .as_ref()
                .is_some_and(|key| self.keys.replays(key, SystemTime::now()));
            if !replays {
                self.release(claims);
                metrics::counter!(
                    "calldesk_start_calls_total",
                    "outcome" => super::labels::start_error_outcome(&error)
                )
                .increment(1);
                let _ = reply.send(Err(error));
                return;
            }
        }
        let reply = match &idempotency_key {
            None => reply,
            Some(key) => {
                // Only a request with a key needs its fingerprint (a SHA-256 of the request).
                let fingerprint = idempotency::fingerprint(&request);
                match self.keys.begin(key, fingerprint, reply, SystemTime::now()) {
                    Begin::First(reply) => reply,
                    Begin::Replay(reply, response) => {
                        return self.answer_retry(reply, Ok(*response), "replayed", claims)
                    }
                    Begin::Reused(reply) => {
                        let error = Err(CallError::RequestIdReused);
                        return self.answer_retry(reply, error, "request_id_reused", claims);
                    }
                    // The key is in flight here: its claim in a shared store stays with it.
                    Begin::Joined => return self.release(claims.without_key()),
                }
            }
        };

        if self.config.deferred_dial && request.staged.is_none() {
            let dialpad = proto::Dialpad {
                phone_number: request.phone_number.clone(),
                initial_object: request.associated_object.as_ref().map(Into::into),
                stage_time: Some(crate::domain::timestamp(SystemTime::now())),
                caller_id: request.caller_id.clone().unwrap_or_default(),
            };
            let token = self.next_staging;
            self.next_staging += 1;
            let idempotency = self.key_record(&idempotency_key, deferred_response());
            self.staging.insert(
                token,
                Staging {
                    reply,
                    idempotency_key,
                    claims,
                },
            );
            self.submit(Write {
                token: WriteToken::Dialpad(token),
                op: WriteOp::StageDialpad {
                    agent_id: request.agent_id,
                    dialpad: Box::new(dialpad),
                    idempotency,
                },
                span: Span::current(),
            });
            return;
        }

        if let Some(error) = refusal {
            // Calling hours or a do-not-call list: nothing is dialed, nothing is created.
            let reason = super::labels::start_error_outcome(&error);
            metrics::counter!("calldesk_compliance_refusals_total", "reason" => reason)
                .increment(1);
            tracing::info!(
                agent = %request.agent_id,
                number = %crate::compliance::last_four(&request.phone_number),
                reason,
                "call refused"
            );
            self.fail_key(&idempotency_key, &error);
            let _ = reply.send(Err(error));
            self.release(claims);
            return;
        }
        let active = self
            .active_calls
            .get(&request.agent_id)
            .copied()
            .unwrap_or(0);
        if active >= self.config.max_active_calls {
            let error = CallError::TooManyActiveCalls {
                limit: self.config.max_active_calls,
            };
            self.fail_key(&idempotency_key, &error);
            let _ = reply.send(Err(error));
            self.release(claims);
            return;
        }
        self.take_active(&request.agent_id);
        let call_id = uuid::Uuid::now_v7().to_string();
        self.telephony.originate(
            Dial {
                call_id: call_id.clone(),
                agent_id: request.agent_id.clone(),
                phone_number: request.phone_number.clone(),
                caller_id: request.presented_caller_id.clone(),
                associated_object: request.associated_object.clone(),
            },
            self.signal_sink.clone(),
        );
        // With trunk pacing the dial may first wait in line (at most `pacing_wait`, then it is
        // given up as TRUNK_BUSY): the switch still gets the whole originate timeout after.
        self.schedule(
            self.config.originate_timeout + self.config.pacing_wait,
            Timer::OriginateTimeout(call_id.clone()),
        );
        self.originating.insert(
            call_id,
            Originating {
                request,
                reply,
                idempotency_key,
                claims,
                span: Span::current(),
                dialogs: None,
            },
        );
    }

    fn on_signal(&mut self, report: SwitchReport) {
        let SwitchReport {
            call_id,
            signal,
            detail,
            dialogs,
        } = report;
        let input = match signal {
            SwitchSignal::Dialogs => return self.save_dialogs(call_id, dialogs),
            SwitchSignal::Acknowledged => return self.acknowledged(call_id),
            SwitchSignal::Applied(op) if op.calls_target() => {
                return self.target_answered(&call_id, op, None)
            }
            SwitchSignal::Refused(op) if op.calls_target() => {
                let detail = detail.unwrap_or_else(|| "no reason given".to_owned());
                return self.target_answered(&call_id, op, Some(detail));
            }
            SwitchSignal::Applied(op) => return self.switched(&call_id, op, None),
            SwitchSignal::Refused(op) => {
                let detail = detail.unwrap_or_else(|| "no reason given".to_owned());
                return self.switched(&call_id, op, Some(detail));
            }
            SwitchSignal::TrunkBusy { retry_after } => {
                return self.trunk_busy(&call_id, retry_after)
            }
            // For the pacing layer in front of the switch; the call's end follows.
            SwitchSignal::Pushback { .. } => return,
            SwitchSignal::Ringing => Input::Ringing,
            SwitchSignal::Answered => Input::Answered,
            SwitchSignal::Busy => Input::Busy,
            SwitchSignal::NoAnswer => Input::NoAnswer,
            SwitchSignal::Failed => Input::Failed,
            SwitchSignal::RemoteHangup => Input::RemoteHangup,
            SwitchSignal::AgentHangup => Input::AgentHangup,
        };
        if self.interactions.contains_key(&call_id) {
            let mut change = Change::new(input, None);
            change.detail = detail;
            self.enqueue(&call_id, change);
        }
    }

    /// Keeps a call's dialogs in the store, so that a restart can adopt it (connected) or end
    /// it cleanly (still ringing: `Telephony::abandon`): only while the call is live and no
    /// change ending it is on its way to the store (the store deletes them with the call's
    /// end, which must come after). The creation may still be in flight (a quick answer, a
    /// slow store): the save then follows it in the same order. Before the dial is
    /// acknowledged (the agent's phone's INVITE) they wait with the dial for its creation.
    fn save_dialogs(&mut self, call_id: String, dialogs: Option<Box<CallDialogs>>) {
        let Some(dialogs) = dialogs else { return };
        if let Some(o) = self.originating.get_mut(&call_id) {
            // Not acknowledged yet: nothing to keep them with until the creation.
            o.dialogs = Some(dialogs);
            return;
        }
        let Some(slot) = self.interactions.get(&call_id) else {
            return;
        };
        let ended = slot.current.as_ref().is_some_and(|i| !i.state.is_live())
            || slot
                .writing
                .as_ref()
                .is_some_and(|w| !w.event.state.is_live());
        if ended {
            return;
        }
        self.submit(Write {
            token: WriteToken::Dialogs(call_id.clone()),
            op: WriteOp::SaveDialogs {
                interaction_id: call_id,
                dialogs,
            },
            span: Span::none(),
        });
    }

    /// Trunk pacing gave up a dial that waited too long for the trunk: nothing was dialed.
    fn trunk_busy(&mut self, call_id: &str, retry_after: Duration) {
        if let Some(o) = self.originating.remove(call_id) {
            self.release_active(&o.request.agent_id);
            let error = CallError::TrunkBusy { retry_after };
            self.fail_key(&o.idempotency_key, &error);
            let _ = o.reply.send(Err(error));
            self.release(o.claims);
        }
    }

    /// The switch carried out (`refused: None`) or refused the operation it was asked for.
    /// Carried out, the change is recorded as any other; refused, the agent hears why and
    /// nothing changes.
    fn switched(&mut self, id: &str, op: SwitchOp, refused: Option<String>) {
        let Some(slot) = self.interactions.get_mut(id) else {
            return;
        };
        if slot.switching.as_ref().map(|w| &w.0) != Some(&op) {
            // Not what is waiting (a late answer after the timeout): ignore it.
            return;
        }
        let Some(switching) = slot.switching.take() else {
            return;
        };
        let (_, mut change) = *switching;
        match refused {
            None => {
                change.switched = true;
                slot.queued.push_front(change);
            }
            Some(detail) => {
                let operation = change.input.operation();
                tracing::info!(interaction = id, %detail, operation, "the switch refused");
                if let Some(reply) = change.reply {
                    let _ = reply.send(Err(CallError::SwitchRefused { operation, detail }));
                }
            }
        }
        self.pump(id);
    }

    /// A transfer's, consultation's or conference's target answered (`refused: None`) or did
    /// not: recorded as the next step of the interaction, if it still waits for this one.
    fn target_answered(&mut self, id: &str, op: SwitchOp, refused: Option<String>) {
        let waiting = self
            .interactions
            .get(id)
            .and_then(|slot| slot.transfer.as_ref())
            .is_some_and(|leg| leg.op == op);
        if !waiting {
            // The call ended, or the consultation was cancelled, meanwhile.
            return;
        }
        match refused {
            None => {
                let input = match op {
                    SwitchOp::Consult { .. } => Input::Consulting,
                    SwitchOp::Conference { .. } => Input::Conferenced,
                    _ => Input::Transferred,
                };
                self.enqueue(id, Change::new(input, None));
            }
            Some(detail) => {
                tracing::info!(interaction = id, %detail, "the transfer target did not answer");
                let mut failed = Change::new(Input::TransferFailed, None);
                failed.detail = Some(detail);
                self.enqueue(id, failed);
                self.enqueue(id, Change::new(Input::TransferReturned, None));
            }
        }
    }

    /// After a transfer to an agent: that agent's new interaction, made from `from` (which
    /// ended TRANSFERRED) under the id the switch's call now goes on with. It holds the active
    /// call its agent reserved when the transfer started.
    fn create_transferred(
        &mut self,
        from: &Interaction,
        new_id: String,
        agent_id: String,
        reply: Option<(ChangeReply, Box<proto::Interaction>)>,
    ) {
        let event =
            lifecycle::create_transferred(from, new_id.clone(), agent_id, SystemTime::now());
        let wire = Arc::new(proto::InteractionEvent::from(&event));
        let encoded = EncodedEvent::encode(&wire);
        self.submit(Write {
            token: WriteToken::Interaction(new_id.clone()),
            op: WriteOp::Create {
                event: wire.clone(),
                payload: encoded.bytes.clone(),
                idempotency: None,
                clear_dialpad: None,
                reservation: None,
            },
            span: Span::current(),
        });
        let pending = Pending {
            event,
            wire,
            encoded,
            kind: PendingKind::Transferred { reply },
            span: Span::current(),
        };
        self.interactions
            .insert(new_id, Slot::new(None, Some(pending)));
    }

    /// The switch accepted a dial: the interaction exists from now on.
    fn acknowledged(&mut self, call_id: String) {
        let Some(o) = self.originating.remove(&call_id) else {
            // Too late: StartCall already failed with "Timeout error".
            self.telephony.hangup(&call_id);
            return;
        };
        let _working = o.span.enter();
        let staged = o.request.staged;
        let reservation = o.claims.reservation.clone();
        let event = lifecycle::create(
            NewCall {
                id: call_id.clone(),
                agent_id: o.request.agent_id,
                phone_number: o.request.phone_number,
                associated_object: o.request.associated_object,
                request_id: o.request.request_id,
                caller_id: o.request.presented_caller_id,
            },
            SystemTime::now(),
        );
        let wire = Arc::new(proto::InteractionEvent::from(&event));
        let encoded = EncodedEvent::encode(&wire);
        let response = started_response(&wire);
        let idempotency = self.key_record(&o.idempotency_key, response);
        self.submit(Write {
            token: WriteToken::Interaction(call_id.clone()),
            op: WriteOp::Create {
                event: wire.clone(),
                payload: encoded.bytes.clone(),
                idempotency,
                clear_dialpad: staged.map(Box::new),
                reservation,
            },
            span: o.span.clone(),
        });
        let pending = Pending {
            event,
            wire,
            encoded,
            kind: PendingKind::Create {
                reply: o.reply,
                idempotency_key: o.idempotency_key,
                claims: o.claims,
            },
            span: o.span.clone(),
        };
        let dialogs = o.dialogs;
        self.interactions
            .insert(call_id.clone(), Slot::new(None, Some(pending)));
        if dialogs.is_some() {
            self.save_dialogs(call_id, dialogs);
        }
    }

    /// Reads an interaction the actor does not hold from the store, on a task of its own;
    /// `waiter` (and whatever else needs it meanwhile) waits for the answer
    /// (`Loaded::Interaction`).
    fn load(&mut self, id: String, waiter: Waiter) {
        match self.loading.entry(id) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push(waiter),
            Entry::Vacant(waiting) => {
                let id = waiting.key().clone();
                waiting.insert(vec![waiter]);
                let (store, loads) = (self.store.clone(), self.loads.clone());
                tokio::spawn(async move {
                    let result = read_waiting(&store, &id).await;
                    let _ = loads.send(Loaded::Interaction { id, result }).await;
                });
            }
        }
    }

    fn on_loaded(&mut self, loaded: Loaded) {
        match loaded {
            Loaded::Interaction { id, result } => self.interaction_loaded(id, result),
            Loaded::KeyFilter(scanned) => self.key_filter.merge(*scanned),
            Loaded::TransferKeys { id, result } => self.transfer_keys_read(id, result),
            Loaded::WrapUpPage { sweep, result } => match result {
                Ok(page) => {
                    let more = page.len() == SWEEP_PAGE as usize;
                    let mut next = sweep;
                    for (row, id) in page {
                        next.after = row;
                        self.time_out_wrap_up(id, Some(sweep.ended_before));
                    }
                    if more {
                        self.sweep_wrap_ups(next);
                    }
                }
                Err(e) => {
                    tracing::warn!("read failed: {e}");
                    self.schedule(RETRY_AFTER, Timer::WrapUpSweep(sweep));
                }
            },
            Loaded::Key { key, result } => {
                let parked = self.key_lookups.remove(&key).unwrap_or_default();
                match result {
                    Ok(found) => {
                        if let Some(record) = found {
                            self.keys.found(record);
                        }
                        for request in parked {
                            match request {
                                Parked::Start(request, refusal, reply) => {
                                    self.start_call(*request, refusal, reply, true)
                                }
                                Parked::Follow(reply) => self.follow(key.clone(), reply, true),
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("read failed: {e}");
                        for request in parked {
                            let error = CallError::StoreUnavailable;
                            match request {
                                Parked::Start(request, _, reply) => {
                                    let _ = reply.send(Err(error.clone()));
                                    self.fail_key(&None, &error);
                                    self.release(request.claims);
                                }
                                Parked::Follow(reply) => {
                                    let _ = reply.send(Err(error));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The transfer keys of an interaction taken up from the store: the changes that waited for
    /// them go on. If the store could not be read, the change that needed them is refused
    /// (`STORE_UNAVAILABLE`: retry) and the next one asks again.
    fn transfer_keys_read(
        &mut self,
        id: String,
        result: Result<Vec<TransferKeyRecord>, StoreError>,
    ) {
        let Some(slot) = self.interactions.get_mut(&id) else {
            return;
        };
        match result {
            Ok(keys) => {
                // Keys recorded here meanwhile are none: the changes waited for these.
                slot.transfer_keys = keys.into();
                slot.stored_keys = StoredKeys::Held;
            }
            Err(e) => {
                tracing::warn!("read failed: {e}");
                slot.stored_keys = StoredKeys::Unread;
                if let Some(change) = slot.queued.pop_front() {
                    if let Some(reply) = change.reply {
                        let _ = reply.send(Err(CallError::StoreUnavailable));
                    }
                }
            }
        }
        self.start_next(&id);
    }

    /// An interaction read back from the store: held again, with its waiters' changes queued
    /// and its watchers subscribed, if it is a WRAP_UP one of ours; else its waiters hear so.
    fn interaction_loaded(
        &mut self,
        id: String,
        result: Result<Option<proto::Interaction>, StoreError>,
    ) {
        let waiters = self.loading.remove(&id).unwrap_or_default();
        let result = match result {
            // Taken up meanwhile (a takeover handed it over): the slot decides.
            _ if self.interactions.contains_key(&id) => Ok(true),
            Ok(Some(stored)) => match Interaction::try_from(stored) {
                Ok(interaction) => {
                    self.interactions
                        .insert(id.clone(), Slot::new(Some(interaction), None));
                    Ok(true)
                }
                Err(e) => {
                    tracing::error!(
                        interaction = id,
                        "a stored interaction is unreadable: {}",
                        e.0
                    );
                    Err(())
                }
            },
            Ok(None) => Ok(false),
            Err(e) => {
                tracing::warn!("read failed: {e}");
                Err(())
            }
        };
        for waiter in waiters {
            match (waiter, result, self.interactions.get_mut(&id)) {
                (
                    Waiter::Change {
                        agent_id,
                        ended_before,
                        change,
                    },
                    Ok(true),
                    Some(slot),
                ) => {
                    let owned = slot.current.as_ref().is_some_and(|i| {
                        agent_id.as_ref().is_none_or(|agent| *agent == i.agent_id)
                    }) && ended_in_time(slot, ended_before);
                    if owned {
                        slot.queued.push_back(change);
                    } else if let Some(reply) = change.reply {
                        let _ = reply.send(Err(CallError::NotFound));
                    }
                }
                (Waiter::Watch { agent_id, reply }, Ok(true), Some(slot)) => {
                    let _ = reply.send(Ok(subscribe(slot, &agent_id)));
                }
                // Not ours to hold: unknown, another agent's, COMPLETED (the caller tells
                // which from the store), or another replica's (the caller forwards).
                (Waiter::Change { change, .. }, Ok(_), _) => {
                    if let Some(reply) = change.reply {
                        let _ = reply.send(Err(CallError::NotFound));
                    }
                }
                (Waiter::Watch { reply, .. }, Ok(_), _) => {
                    let _ = reply.send(Ok(None));
                }
                (
                    Waiter::Change {
                        change,
                        ended_before,
                        ..
                    },
                    Err(()),
                    _,
                ) => match change.reply {
                    Some(reply) => {
                        let _ = reply.send(Err(CallError::StoreUnavailable));
                    }
                    // The wrap-up timer: try again shortly.
                    None => {
                        self.schedule(RETRY_AFTER, Timer::WrapUpTimeout(id.clone(), ended_before))
                    }
                },
                (Waiter::Watch { reply, .. }, Err(()), _) => {
                    let _ = reply.send(Err(CallError::StoreUnavailable));
                }
            }
        }
        self.pump(&id);
    }

    /// Lets go of the WRAP_UP interactions whose watchers all left (checked once a minute
    /// rather than on each watcher's drop), and of the table's room a crowd of calls grew.
    fn drop_unwatched(&mut self) {
        self.interactions.retain(|_, slot| !waits_unattended(slot));
        if self.interactions.capacity() > 4 * self.interactions.len().max(64) {
            self.interactions.shrink_to_fit();
        }
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::OriginateTimeout(call_id) => {
                if let Some(o) = self.originating.remove(&call_id) {
                    self.telephony.hangup(&call_id);
                    self.release_active(&o.request.agent_id);
                    let error = CallError::OriginateTimeout;
                    self.fail_key(&o.idempotency_key, &error);
                    let _ = o.reply.send(Err(error));
                    self.release(o.claims);
                }
            }
            Timer::WrapUpTimeout(id, ended_before) => self.time_out_wrap_up(id, ended_before),
            Timer::WrapUpSweep(sweep) => self.sweep_wrap_ups(sweep),
            Timer::Retry(id) => self.pump(&id),
            Timer::Release(claims) => self.release(*claims),
            Timer::TransferTimeout(id, round) => {
                let unanswered = self.interactions.get(&id).and_then(|slot| {
                    let leg = slot.transfer.as_ref().filter(|leg| leg.round == round)?;
                    let ringing = slot
                        .current
                        .as_ref()
                        .is_some_and(|i| i.progress == CallProgress::Transferring);
                    ringing.then(|| leg.op.clone())
                });
                if let Some(op) = unanswered {
                    // Stop the target's ringing and give the customer back, then record why.
                    self.telephony
                        .switch(&id, SwitchOp::CancelConsult, self.signal_sink.clone());
                    let detail = format!("no answer from the switch within {TRANSFER_TIMEOUT:?}");
                    self.target_answered(&id, op, Some(detail));
                }
            }
            Timer::SwitchTimeout(id, round) => {
                let waiting = self.interactions.get(&id).and_then(|slot| {
                    let (op, _) = &**slot.switching.as_ref()?;
                    (slot.switch_round == round).then(|| op.clone())
                });
                if let Some(op) = waiting {
                    let detail = format!("no answer from the switch within {SWITCH_TIMEOUT:?}");
                    self.switched(&id, op, Some(detail));
                }
            }
        }
    }

    /// The wrap-up timeout of `id` (with `ended_before`: only if its call ended before then).
    fn time_out_wrap_up(&mut self, id: String, ended_before: Option<SystemTime>) {
        let change = Change::new(Input::WrapUpTimeout, None);
        match self.interactions.get(&id) {
            Some(slot) => {
                if ended_in_time(slot, ended_before) {
                    self.enqueue(&id, change);
                }
            }
            // Waiting in the store (or COMPLETED since, which the read tells).
            None => self.load(
                id,
                Waiter::Change {
                    agent_id: None,
                    ended_before,
                    change,
                },
            ),
        }
    }

    /// Asks the store for the sweep's next page (`Loaded::WrapUpPage`), or, while the actor
    /// has many writes and reads in hand, waits a little first: the sweep of a million
    /// WRAP_UP interactions goes at the pace of their writes, never queueing them all.
    fn sweep_wrap_ups(&mut self, sweep: Sweep) {
        if self.in_flight + self.loading.len() > MAX_IN_FLIGHT / 2 {
            return self.schedule(SWEEP_PAUSE, Timer::WrapUpSweep(sweep));
        }
        let (store, loads) = (self.store.clone(), self.loads.clone());
        tokio::spawn(async move {
            let result = store
                .wrap_up_page(sweep.after, sweep.through, SWEEP_PAGE)
                .await;
            let _ = loads.send(Loaded::WrapUpPage { sweep, result }).await;
        });
    }

    fn enqueue(&mut self, id: &str, change: Change) {
        if let Some(slot) = self.interactions.get_mut(id) {
            slot.queued.push_back(change);
            self.pump(id);
        }
    }

    /// Starts the next queued change of an interaction, if none is being written; then lets a
    /// WRAP_UP interaction nothing waits on go from memory.
    fn pump(&mut self, id: &str) {
        self.start_next(id);
        if self
            .interactions
            .get(id)
            .is_some_and(|slot| waits_unattended(slot))
        {
            self.interactions.remove(id);
        }
    }

    fn start_next(&mut self, id: &str) {
        let Some(slot) = self.interactions.get_mut(id) else {
            return;
        };
        while slot.writing.is_none() && slot.switching.is_none() {
            let Some(current) = slot.current.as_ref() else {
                return;
            };
            // A transfer operation's key may be one the store holds: read them first.
            let keyed = slot.queued.front().is_some_and(
                |change| matches!(&change.input, Input::Agent(op) if op.request_id().is_some()),
            );
            if keyed && slot.stored_keys != StoredKeys::Held {
                if slot.stored_keys == StoredKeys::Unread {
                    slot.stored_keys = StoredKeys::Reading;
                    let (store, loads, id) =
                        (self.store.clone(), self.loads.clone(), id.to_owned());
                    tokio::spawn(async move {
                        let result = store.transfer_keys(id.clone()).await;
                        let _ = loads.send(Loaded::TransferKeys { id, result }).await;
                    });
                }
                return;
            }
            let Some(change) = slot.queued.pop_front() else {
                return;
            };
            if slot.queued.is_empty() {
                // Its room goes with it: a call's few changes would keep ~0.6 KiB of it for
                // the call's whole life.
                slot.queued = VecDeque::new();
            }
            // The request's work: the switch operation or the write it leads to runs under it.
            let work = change.span.clone();
            let _working = work.enter();
            if let Input::Agent(op) = &change.input {
                // A transfer operation's retry: the interaction as it is, nothing done again.
                if let Some(key) = transfer_key(op) {
                    let known = slot
                        .transfer_keys
                        .iter()
                        .find(|k| k.request_id == key.request_id);
                    if let Some(known) = known {
                        let answer = match known.request == key.request {
                            true => Ok(proto::Interaction::from(current)),
                            false => Err(CallError::RequestIdReused),
                        };
                        if let Some(reply) = change.reply {
                            let _ = reply.send(answer);
                        }
                        continue;
                    }
                }
                if matches!(op, AgentOp::Conference { .. }) && self.config.conference_uri.is_none()
                {
                    if let Some(reply) = change.reply {
                        let _ = reply.send(Err(CallError::ConferenceNotConfigured));
                    }
                    continue;
                }
            }
            let switch = switch_op(&change, slot.transfer.as_deref());
            match lifecycle::apply(current, change.input.clone(), SystemTime::now()) {
                Ok(_) if switch.is_some() => {
                    // Allowed: the switch carries it out first, and it is recorded once the
                    // switch says it took effect.
                    let Some(op) = switch else { return };
                    slot.switching = Some(Box::new((op.clone(), change)));
                    slot.switch_round += 1;
                    let round = slot.switch_round;
                    self.telephony.switch(id, op, self.signal_sink.clone());
                    self.schedule(SWITCH_TIMEOUT, Timer::SwitchTimeout(id.to_owned(), round));
                    return;
                }
                Ok(mut event) => {
                    if let Some(detail) = &change.detail {
                        if event.progress == CallProgress::TransferFailed {
                            event.interaction.transfer_detail = detail.clone();
                        } else if event.interaction.end_time.is_some() {
                            event.interaction.end_detail = detail.clone();
                        }
                    }
                    if let Input::Agent(op) = &change.input {
                        if starts_transfer(&change.input) {
                            let id = id.to_owned();
                            let target_agent = match op.target() {
                                Some(TransferTarget::Agent(agent)) => Some(agent.clone()),
                                _ => None,
                            };
                            if let Some(agent) = &target_agent {
                                // The target agent's new interaction will be one of its active
                                // calls: counted from now, so that the limit holds when it
                                // answers.
                                let active = self.active_calls.get(agent).copied().unwrap_or(0);
                                if active >= self.config.max_active_calls {
                                    if let Some(reply) = change.reply {
                                        let _ = reply.send(Err(CallError::TooManyActiveCalls {
                                            limit: self.config.max_active_calls,
                                        }));
                                    }
                                    continue;
                                }
                                *self.active_calls.entry(agent.clone()).or_default() += 1;
                                self.live_calls.send_modify(|n| *n += 1);
                            }
                            let new_call_id = target_agent
                                .as_ref()
                                .map(|_| uuid::Uuid::now_v7().to_string());
                            slot.switch_round += 1;
                            slot.transfer = Some(Box::new(TransferLeg {
                                op: transfer_switch_op(op, &id, new_call_id.clone(), &self.config),
                                to_agent: new_call_id.zip(target_agent),
                                round: slot.switch_round,
                            }));
                        }
                    }
                    let wire = Arc::new(proto::InteractionEvent::from(&event));
                    let encoded = EncodedEvent::encode(&wire);
                    let payload = encoded.bytes.clone();
                    let transfer_key = match &change.input {
                        Input::Agent(op) => transfer_key(op).map(Box::new),
                        _ => None,
                    };
                    slot.writing = Some(Box::new(Pending {
                        event,
                        wire: wire.clone(),
                        encoded,
                        kind: PendingKind::Change(change),
                        span: work.clone(),
                    }));
                    self.submit(Write {
                        token: WriteToken::Interaction(id.to_owned()),
                        op: WriteOp::Append {
                            event: wire,
                            payload,
                            transfer_key,
                        },
                        span: work.clone(),
                    });
                    return;
                }
                Err(refusal) => match change.reply {
                    Some(reply) => {
                        let _ = reply.send(Err(refusal));
                    }
                    // A signal or timer that no longer applies (the agent ended the call
                    // first, say): nothing to record.
                    None => tracing::debug!(interaction = id, "ignored: {refusal}"),
                },
            }
        }
    }

    /// A transaction committed (or failed): every write in it is done.
    fn on_completion(&mut self, completion: Completion<WriteToken>) {
        self.in_flight -= completion.tokens.len();
        self.flush_backlog();
        let failure = completion.result.err().map(|e| match e.fault {
            Some(fault) => CallError::StoreFault(fault),
            None => CallError::StoreUnavailable,
        });
        for token in completion.tokens {
            self.written(token, failure.as_ref());
        }
    }

    /// A write is done: `failure` is None when it committed, else the error its requester gets.
    fn written(&mut self, token: WriteToken, failure: Option<&CallError>) {
        match token {
            WriteToken::Dialpad(token) => {
                if let Some(s) = self.staging.remove(&token) {
                    match failure {
                        None => {
                            self.succeed_start(s.reply, &s.idempotency_key, deferred_response())
                        }
                        Some(error) => {
                            self.fail_key(&s.idempotency_key, error);
                            let _ = s.reply.send(Err(error.clone()));
                            self.release(s.claims);
                        }
                    }
                }
            }
            WriteToken::Interaction(id) => self.interaction_written(id, failure),
            WriteToken::Release(claims) => {
                if failure.is_some() {
                    self.schedule(RETRY_AFTER, Timer::Release(claims));
                }
            }
            WriteToken::Dialogs(id) => {
                if let Some(error) = failure {
                    tracing::warn!(interaction = %id, "the call's dialogs were not saved: {error}");
                }
            }
        }
    }

    fn interaction_written(&mut self, id: String, failure: Option<&CallError>) {
        let Some(slot) = self.interactions.get_mut(&id) else {
            return;
        };
        let Some(pending) = slot.writing.take() else {
            return;
        };
        let pending = *pending;
        if let Some(error) = failure {
            match pending.kind {
                PendingKind::Create {
                    reply,
                    idempotency_key,
                    claims,
                } => {
                    // Nothing was acknowledged: the call must not go on either.
                    self.interactions.remove(&id);
                    self.telephony.hangup(&id);
                    self.release_active(&pending.event.interaction.agent_id);
                    self.fail_key(&idempotency_key, error);
                    let _ = reply.send(Err(error.clone()));
                    self.release(claims);
                }
                PendingKind::Transferred { reply } => {
                    // The first interaction did end TRANSFERRED (its reply says so), but the
                    // customer's call with the target agent could not be recorded: it must not
                    // go on unrecorded.
                    if let Some((reply, first)) = reply {
                        let _ = reply.send(Ok(*first));
                    }
                    self.interactions.remove(&id);
                    self.telephony.hangup(&id);
                    self.release_active(&pending.event.interaction.agent_id);
                    tracing::warn!(
                        interaction = id,
                        "a transferred call could not be recorded; hung up"
                    );
                }
                PendingKind::Change(Change {
                    reply: Some(reply),
                    input,
                    ..
                }) => {
                    if starts_transfer(&input) {
                        // Not recorded, so not asked of the switch: the target agent's
                        // reserved call is free again.
                        if let Some((_, agent)) = slot.transfer.take().and_then(|l| l.to_agent) {
                            self.release_active(&agent);
                        }
                    }
                    let _ = reply.send(Err(error.clone()));
                    self.pump(&id);
                }
                PendingKind::Change(change) => {
                    // What the switch or a timer reported still happened: try it again.
                    slot.queued.push_front(change);
                    self.schedule(RETRY_AFTER, Timer::Retry(id));
                }
            }
            return;
        }

        let Pending {
            event,
            wire,
            encoded,
            kind,
            span,
        } = pending;
        let _working = span.enter();
        let next_state = event.interaction.state;
        let agent_id = event.interaction.agent_id.clone();
        // The committed state moves into the slot: no copy of the snapshot per event.
        let previous = slot.current.replace(event.interaction);
        if let PendingKind::Change(change) = &kind {
            if let Input::Agent(op) = &change.input {
                if let Some(key) = transfer_key(op) {
                    if slot.transfer_keys.len() >= TRANSFER_KEYS_PER_INTERACTION {
                        slot.transfer_keys.pop_front();
                    }
                    slot.transfer_keys.push_back(key);
                }
            }
        }
        // A transfer that is no longer under way: its target agent's reserved call becomes
        // that agent's new interaction (TRANSFERRED), or is free again.
        let progress = slot.current.as_ref().map(|i| i.progress);
        let ended_transfer = match progress {
            Some(CallProgress::Transferring | CallProgress::Consulting) => None,
            _ => slot.transfer.take().map(|leg| *leg),
        };
        let transferred_from = slot
            .current
            .as_ref()
            .filter(|i| i.end_reason == Some(crate::domain::EndReason::Transferred))
            .cloned();
        // A CompleteTransfer to an agent answers once that agent's interaction is stored.
        let hands_to_agent = transferred_from.is_some()
            && matches!(
                &ended_transfer,
                Some(TransferLeg {
                    to_agent: Some(_),
                    ..
                })
            );
        let mut deferred_reply = None;
        let ask_switch = match &kind {
            PendingKind::Change(change) if starts_transfer(&change.input) => slot
                .transfer
                .as_ref()
                .map(|leg| (leg.op.clone(), leg.round)),
            _ => None,
        };
        if let Some(feed) = &slot.feed {
            if feed.send(encoded.clone()).is_err() {
                slot.feed = None;
            }
        }
        let left_live =
            previous.as_ref().is_some_and(|p| p.state.is_live()) && !next_state.is_live();
        let entered_wrap_up = next_state == InteractionState::WrapUp && left_live;
        let completed = next_state == InteractionState::Completed;
        if let Some(p) = &previous {
            metrics::gauge!(
                "calldesk_interactions",
                "state" => super::labels::state_label(p.state)
            )
            .decrement(1.0);
        }
        if !completed {
            metrics::gauge!(
                "calldesk_interactions",
                "state" => super::labels::state_label(next_state)
            )
            .increment(1.0);
        }
        match kind {
            PendingKind::Create {
                reply,
                idempotency_key,
                ..
            } => {
                self.succeed_start(reply, &idempotency_key, started_response(&wire));
            }
            PendingKind::Change(change) => {
                if change.input == Input::Agent(AgentOp::End) && left_live {
                    self.telephony.hangup(&id);
                }
                let answer = wire.interaction.clone().unwrap_or_default();
                match change.reply {
                    Some(reply) if hands_to_agent => {
                        deferred_reply = Some((reply, Box::new(answer)))
                    }
                    Some(reply) => {
                        let _ = reply.send(Ok(answer));
                    }
                    None => {}
                }
            }
            PendingKind::Transferred { reply } => {
                if let Some((reply, first)) = reply {
                    let _ = reply.send(Ok(*first));
                }
            }
        }
        if let Some((op, round)) = ask_switch {
            // Recorded (TRANSFERRING): now the switch calls the target.
            self.telephony.switch(&id, op, self.signal_sink.clone());
            self.schedule(TRANSFER_TIMEOUT, Timer::TransferTimeout(id.clone(), round));
        }
        if let Some(TransferLeg {
            to_agent: Some((new_id, agent)),
            ..
        }) = ended_transfer
        {
            match transferred_from {
                Some(from) => self.create_transferred(&from, new_id, agent, deferred_reply),
                None => self.release_active(&agent),
            }
        }
        self.publish_to_agent(&agent_id, encoded);
        if left_live {
            self.release_active(&agent_id);
        }
        if entered_wrap_up {
            if let Some(after) = self.config.wrap_up_timeout {
                self.schedule(after, Timer::WrapUpTimeout(id.clone(), None));
            }
        }
        if completed {
            // Terminal: the store has it all from now on. Dropping the slot closes its feed
            // once the watchers have read the last event.
            if let Some(slot) = self.interactions.remove(&id) {
                for change in slot.queued {
                    if let Some(reply) = change.reply {
                        let _ = reply.send(Err(CallError::InvalidState {
                            operation: change.input.operation(),
                            state: InteractionState::Completed,
                        }));
                    }
                }
            }
        } else {
            self.pump(&id);
        }
    }

    fn publish_to_agent(&mut self, agent_id: &str, event: EncodedEvent) {
        if let Some(feed) = self.agent_feeds.get(agent_id) {
            if feed.send(event).is_err() {
                self.agent_feeds.remove(agent_id);
            }
        }
    }

    /// One more dial or live call of the agent's (checked against its limit before).
    fn take_active(&mut self, agent_id: &str) {
        *self.active_calls.entry(agent_id.to_owned()).or_default() += 1;
        self.live_calls.send_modify(|n| *n += 1);
    }

    /// One dial or live call of the agent's fewer.
    fn release_active(&mut self, agent_id: &str) {
        if let Some(n) = self.active_calls.get_mut(agent_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active_calls.remove(agent_id);
            }
            self.live_calls.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// A retry answered from its key's memory: nothing is dialed, and what admission claimed
    /// for it in a shared store (all but the key, which its first holds) is released.
    fn answer_retry(
        &mut self,
        reply: StartReply,
        answer: Result<proto::StartCallResponse, CallError>,
        outcome: &'static str,
        claims: Claims,
    ) {
        metrics::counter!("calldesk_start_calls_total", "outcome" => outcome).increment(1);
        let _ = reply.send(answer);
        self.release(claims.without_key());
    }

    /// The idempotency row to write with a StartCall's outcome.
    /// The row to store with a request's outcome, its key added to the filter of stored keys
    /// before the row can be read.
    fn key_record(
        &mut self,
        key: &Option<Key>,
        response: proto::StartCallResponse,
    ) -> Option<Box<IdempotencyRecord>> {
        let key = key.as_ref()?;
        let now = SystemTime::now();
        let record = self.keys.record(key, response, now)?;
        if !self.store.is_shared() {
            self.key_filter.insert(key, record.expire_time, now);
        }
        Some(record)
    }

    fn succeed_start(
        &mut self,
        reply: StartReply,
        key: &Option<Key>,
        response: proto::StartCallResponse,
    ) {
        if let Some(key) = key {
            for waiter in self.keys.succeed(key, &response, SystemTime::now()) {
                let _ = waiter.send(Ok(response.clone()));
            }
        }
        metrics::counter!(
            "calldesk_start_calls_total",
            "outcome" => super::labels::start_outcome(&response)
        )
        .increment(1);
        let _ = reply.send(Ok(response));
    }

    /// A StartCall failed: its key is forgotten, so that a retry may try again, and the
    /// retries already waiting get the same error.
    fn fail_key(&mut self, key: &Option<Key>, error: &CallError) {
        metrics::counter!(
            "calldesk_start_calls_total",
            "outcome" => super::labels::start_error_outcome(error)
        )
        .increment(1);
        if let Some(key) = key {
            for waiter in self.keys.fail(key) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
    }

    fn submit(&mut self, write: Write<WriteToken>) {
        self.in_flight += 1;
        if !self.backlog.is_empty() {
            self.backlog.push_back(write);
            return;
        }
        if let Some(writer) = &self.writer {
            if let Err(write) = writer.submit(write) {
                self.backlog.push_back(write);
            }
        }
    }

    fn flush_backlog(&mut self) {
        let Some(writer) = &self.writer else { return };
        while let Some(write) = self.backlog.pop_front() {
            if let Err(write) = writer.submit(write) {
                self.backlog.push_front(write);
                return;
            }
        }
    }

    /// Releases what admission claimed in a shared store for a StartCall that failed before
    /// creating anything (nothing to do with SQLite, where there are no claims).
    fn release(&mut self, claims: Claims) {
        if !claims.is_empty() {
            let claims = Box::new(claims);
            self.submit(Write {
                token: WriteToken::Release(claims.clone()),
                op: WriteOp::Release(claims),
                span: Span::current(),
            });
        }
    }

    fn schedule(&mut self, after: Duration, timer: Timer) {
        self.timers.insert(timer, after.min(MAX_TIMER));
    }
}

/// The operation the switch must carry out before `change` is recorded, if any: the agent's
/// operations that move media at once, until the switch has said it did. (Those that call a
/// target are recorded first, TRANSFERRING, and asked of the switch after: `starts_transfer`.)
fn switch_op(change: &Change, transfer: Option<&TransferLeg>) -> Option<SwitchOp> {
    let Input::Agent(op) = &change.input else {
        return None;
    };
    if change.switched {
        return None;
    }
    match op {
        AgentOp::Hold => Some(SwitchOp::Hold),
        AgentOp::Resume => Some(SwitchOp::Resume),
        AgentOp::CompleteTransfer { .. } => Some(SwitchOp::CompleteTransfer {
            new_call_id: transfer
                .and_then(|leg| leg.to_agent.as_ref())
                .map(|(id, _)| id.clone()),
        }),
        AgentOp::CancelConsult { .. } => Some(SwitchOp::CancelConsult),
        AgentOp::End
        | AgentOp::Complete { .. }
        | AgentOp::Transfer { .. }
        | AgentOp::Consult { .. }
        | AgentOp::Conference { .. } => None,
    }
}

/// Whether `input` starts a transfer, consultation or conference: recorded (TRANSFERRING)
/// first, then asked of the switch, whose answer comes when the target answers or not.
fn starts_transfer(input: &Input) -> bool {
    matches!(
        input,
        Input::Agent(
            AgentOp::Transfer { .. } | AgentOp::Consult { .. } | AgentOp::Conference { .. }
        )
    )
}

/// What the switch is asked for an operation that calls a target.
fn transfer_switch_op(
    op: &AgentOp,
    interaction_id: &str,
    new_call_id: Option<String>,
    config: &ManagerConfig,
) -> SwitchOp {
    match op {
        AgentOp::Consult { target, .. } => SwitchOp::Consult {
            target: target.clone(),
        },
        AgentOp::Conference { target, .. } => SwitchOp::Conference {
            target: target.clone(),
            room: config
                .conference_uri
                .as_deref()
                .unwrap_or_default()
                .replace("{interaction}", interaction_id),
        },
        AgentOp::Transfer { target, .. } => SwitchOp::Transfer {
            target: target.clone(),
            new_call_id,
        },
        // Not reached: `starts_transfer` chose the operation.
        _ => SwitchOp::CancelConsult,
    }
}

/// A WRAP_UP interaction nothing waits on: no write, switch operation or change under way,
/// no watcher. It need not stay in memory: the store has it, and it is read back when needed.
/// Fills `scanned` (a blank of the actor's filter) with the store's unexpired idempotency keys,
/// a page at a time, and hands it to the actor (`Loaded::KeyFilter`). A failed page is tried
/// again a few times; if the store keeps failing, the filter stays unready and every key is
/// looked up, as without it.
fn scan_keys(store: Store, mut scanned: KeyFilter, loads: mpsc::Sender<Loaded>) {
    tokio::spawn(async move {
        let started = SystemTime::now();
        let (mut after, mut failures, mut keys) = ((String::new(), String::new()), 0u32, 0);
        loop {
            match store.unexpired_keys(after.clone(), FILTER_SCAN_PAGE).await {
                Ok(page) => {
                    let last = page.len() < FILTER_SCAN_PAGE as usize;
                    keys += page.len();
                    for (agent_id, request_id, expires) in page {
                        after = (agent_id, request_id);
                        scanned.insert(&after, expires, started);
                    }
                    if last {
                        break;
                    }
                }
                Err(e) if failures < 5 => {
                    failures += 1;
                    tracing::warn!("reading the idempotency keys failed (tried again): {e}");
                    tokio::time::sleep(RETRY_AFTER * failures).await;
                }
                Err(e) => {
                    tracing::warn!(
                        "reading the idempotency keys failed: every key is looked up: {e}"
                    );
                    return;
                }
            }
        }
        // Said in the log: from now on a new request_id is not looked up.
        tracing::info!(keys, "stored idempotency keys scanned");
        let _ = loads.send(Loaded::KeyFilter(Box::new(scanned))).await;
    });
}

/// Whether a wrap-up timeout with `ended_before` applies to `slot`: always without one, else
/// only if its call ended before that instant.
fn ended_in_time(slot: &Slot, ended_before: Option<SystemTime>) -> bool {
    ended_before.is_none_or(|before| {
        slot.current
            .as_ref()
            .and_then(|i| i.end_time)
            .is_some_and(|end| end < before)
    })
}

/// A transfer operation's idempotency key and what it stands for, if it carried one.
fn transfer_key(op: &AgentOp) -> Option<TransferKeyRecord> {
    let request_id = op.request_id()?;
    let request = match op.target() {
        Some(target) => format!("{} {target}", op.operation()),
        None => op.operation().to_owned(),
    };
    Some(TransferKeyRecord {
        request_id: request_id.to_owned(),
        request,
    })
}

fn waits_unattended(slot: &Slot) -> bool {
    // (A transfer's request_ids are in the store too: read back with the interaction.)
    slot.writing.is_none()
        && slot.switching.is_none()
        && slot.queued.is_empty()
        && slot
            .current
            .as_ref()
            .is_some_and(|i| i.state == InteractionState::WrapUp)
        && slot.feed.as_ref().is_none_or(|f| f.receiver_count() == 0)
}

/// The interaction's feed for a watcher, if it is `agent_id`'s (made on the first watch).
fn subscribe(slot: &mut Slot, agent_id: &str) -> Option<EventFeed> {
    let owned = slot.current.as_ref()?.agent_id == agent_id;
    owned.then(|| {
        slot.feed
            .get_or_insert_with(|| broadcast::channel(INTERACTION_FEED_CAPACITY).0)
            .subscribe()
    })
}

/// An interaction the actor does not hold, from the store: Some if it waits in WRAP_UP and is
/// this process's (with PostgreSQL, this replica's: another's is changed there, forwarded).
async fn read_waiting(store: &Store, id: &str) -> Result<Option<proto::Interaction>, StoreError> {
    let Some(stored) = store.interaction(id.to_owned()).await? else {
        return Ok(None);
    };
    if stored.state != proto::InteractionState::WrapUp as i32 {
        return Ok(None);
    }
    if store.is_shared() && !store.owner(id).await?.is_some_and(|owner| owner.is_self) {
        return Ok(None);
    }
    Ok(Some(stored))
}

fn started_response(event: &proto::InteractionEvent) -> proto::StartCallResponse {
    proto::StartCallResponse {
        interaction_id: Some(event.interaction_id.clone()),
        outcome: proto::StartCallOutcome::Started as i32,
        interaction: event.interaction.clone(),
    }
}

fn deferred_response() -> proto::StartCallResponse {
    proto::StartCallResponse {
        interaction_id: None,
        outcome: proto::StartCallOutcome::Deferred as i32,
        interaction: None,
    }
}
