//! The call manager: the single owner of every interaction that is not yet COMPLETED.
//!
//! [`CallManager`] is a cheap, cloneable handle; the actor behind it (in `actor.rs`) owns all
//! live state and runs on its own task. Each request is one `Command` on a bounded channel
//! with a `oneshot` for the reply. The actor never waits on I/O: dials go to the telephony
//! backend and come back as signals, writes go to the store's writer thread and come back as
//! completions. A change is replied to, and published to watchers, only once its event is
//! committed, so nothing anyone has seen can be lost.
//!
//! Reads (GetInteraction, ListInteractions, history, the dialpad) do not pass through the
//! actor: they read the store, which holds everything that was ever acknowledged.
//!
//! The parts: `actor.rs` (the owner of live state), [`lifecycle`] (the rules, pure),
//! `idempotency.rs` (request_id keys, pure), `replicas.rs` (what a store shared by replicas adds
//! around the actor: admission, forwarding, replay), [`peers`] (the trait forwarding goes
//! through), [`labels`] (metric label values).

mod actor;
mod idempotency;
mod key_filter;
pub mod labels;
pub mod lifecycle;
pub mod peers;
mod replicas;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::{
    caller_id::CallerIds,
    compliance::Compliance,
    domain::{AssociatedObject, CallError, EncodedEvent, InteractionState},
    proto,
    store::{self, Claims, StagedDialpad, Store},
    telephony::Telephony,
};

pub use lifecycle::{AgentOp, Input};
pub use peers::Peers;
use replicas::Replicas;

/// A stream of committed events, shared by all watchers of one interaction.
pub type EventFeed = broadcast::Receiver<EncodedEvent>;
/// A stream of committed events, shared by all watchers of one agent.
pub use store::AgentEventFeed;

/// One WatchInteractions watcher's subscription to its agent's feed.
pub struct AgentFeed {
    /// Always Some until dropped: taken in `drop` so that the actor, told next, sees one
    /// receiver fewer.
    feed: Option<AgentEventFeed>,
    /// Whose feed, to name it to the actor on drop.
    agent_id: String,
    /// To tell the actor this watcher left.
    commands: mpsc::Sender<Command>,
}

impl AgentFeed {
    /// The next event, as [`broadcast::Receiver::recv`].
    pub async fn recv(&mut self) -> Result<EncodedEvent, broadcast::error::RecvError> {
        match self.feed.as_mut() {
            Some(feed) => feed.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }

    /// The events buffered for this watcher that it has not received, as
    /// [`broadcast::Receiver::len`].
    pub fn unreceived(&self) -> usize {
        self.feed.as_ref().map_or(0, AgentEventFeed::len)
    }
}

impl Drop for AgentFeed {
    fn drop(&mut self) {
        drop(self.feed.take());
        let command = Command::AgentUnwatched {
            agent_id: std::mem::take(&mut self.agent_id),
        };
        match self.commands.try_send(command) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            // The queue is full (the actor is busy): deliver it later rather than lose it, or
            // the feed would stay for ever.
            Err(mpsc::error::TrySendError::Full(command)) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let commands = self.commands.clone();
                    runtime.spawn(async move {
                        let _ = commands.send(command).await;
                    });
                }
            }
        }
    }
}

/// How the call manager behaves: the relevant `serve` flags.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Deferred Dial: StartCall stages the number instead of dialing.
    pub deferred_dial: bool,
    /// How long the switch has to acknowledge a dial.
    pub originate_timeout: Duration,
    /// WRAP_UP ends by itself after this long, when set.
    pub wrap_up_timeout: Option<Duration>,
    /// Live calls one agent may have at once.
    pub max_active_calls: u32,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// `--calling-hours` and `--dnc`, asked before every dial (off by default).
    pub compliance: Compliance,
    /// Trunk pacing's `--sip-pacing-wait` (zero without pacing): how long a dial may wait in
    /// line before the switch sees it, added to `originate_timeout`.
    pub pacing_wait: Duration,
    /// Answered idempotency keys kept in memory (`--idempotency-cache-keys`); the store has
    /// them all.
    pub idempotency_cache_keys: usize,
    /// `--caller-ids` (else `--sip-caller-id`): what each agent may present, asked before
    /// every dial and staging.
    pub caller_ids: CallerIds,
    /// `--sip-conference-uri`: the PBX's conference room template (`{interaction}` is
    /// replaced by the interaction's id); ConferenceCall is refused without it.
    pub conference_uri: Option<String>,
}

/// A validated StartCall.
#[derive(Debug, Clone, PartialEq)]
pub struct StartCall {
    pub agent_id: String,
    /// Normalized.
    pub phone_number: String,
    pub associated_object: Option<AssociatedObject>,
    pub request_id: Option<String>,
    /// The caller ID asked for (normalized); None for the agent's default or local presence.
    /// Part of the request (idempotency), and staged with it under Deferred Dial.
    pub caller_id: Option<String>,
    /// The caller ID to present: `caller_id`, or the one [`CallerIds::choose`] picked for it.
    /// The server's choice, not the request's: a retry finds the first call's in its response.
    pub presented_caller_id: String,
    /// DialStaged: the staging being dialed. It is dialed even under Deferred Dial, and
    /// cleared with the new interaction.
    pub staged: Option<StagedDialpad>,
    /// PostgreSQL: what admission claimed for it in the shared store (see
    /// [`Store::admit_start`]); empty with SQLite.
    pub claims: Claims,
}

/// What the actor is asked to do. A request's command carries the request's span (`span`),
/// under which the actor does its work: traces and log lines follow a request across the
/// actor without the actor awaiting anything for them.
enum Command {
    StartCall {
        request: StartCall,
        /// Why the number may not be dialed now (calling hours, do-not-call), found before
        /// the actor; applied after the idempotency key, so that a retry of a call that was
        /// placed still gets its response.
        refusal: Option<CallError>,
        reply: oneshot::Sender<Result<proto::StartCallResponse, CallError>>,
        span: tracing::Span,
    },
    Change {
        agent_id: String,
        interaction_id: String,
        input: AgentOp,
        reply: oneshot::Sender<Result<proto::Interaction, CallError>>,
        span: tracing::Span,
    },
    /// The live feed of one interaction; None when it is not the actor's to hold (COMPLETED,
    /// unknown, or another agent's). A WRAP_UP one is read back from the store to be watched.
    Watch {
        agent_id: String,
        interaction_id: String,
        reply: oneshot::Sender<Result<Option<EventFeed>, CallError>>,
    },
    /// The live feed of all of an agent's interactions.
    WatchAgent {
        agent_id: String,
        reply: oneshot::Sender<AgentEventFeed>,
    },
    /// DialStaged: dial `call` (what the store had staged), or, with nothing staged, replay
    /// the first response of `request_id` once the dialpad has been cleared by it.
    DialStaged {
        agent_id: String,
        request_id: Option<String>,
        call: Option<StartCall>,
        /// As for StartCall: why the staged number may not be dialed now.
        refusal: Option<CallError>,
        reply: oneshot::Sender<Result<proto::StartCallResponse, CallError>>,
        span: tracing::Span,
    },
    /// PostgreSQL: interactions taken over from a replica whose lease expired. Connected
    /// ones with stored dialogs are adopted (the switch takes them up again), the other live
    /// ones ended (SERVER_RESTART), WRAP_UP ones wait for their timer here.
    Adopt { taken: store::Recovered },
    /// A WatchInteractions watcher of this agent left: free the agent's feed if it was the
    /// last, so that an agent id that once watched costs nothing afterwards.
    AgentUnwatched { agent_id: String },
    /// Take no new call from now on (StartCall and DialStaged are refused `ShuttingDown`,
    /// unless they replay an answered key); the live calls go on. Replied once in force.
    Drain { reply: oneshot::Sender<()> },
    /// Finish the writes in flight, stop the store writer, and stop.
    Shutdown { reply: oneshot::Sender<()> },
}

/// The handle to the call manager. Clone it freely.
#[derive(Clone)]
pub struct CallManager {
    /// To the actor.
    commands: mpsc::Sender<Command>,
    /// Reads (Get, List, history, the dialpad) go straight to the store.
    store: Store,
    /// Deferred Dial: a StartCall stages rather than dials (admission counts only dials).
    deferred_dial: bool,
    /// With a shared store: admission, forwarding and replay across replicas.
    replicas: Replicas,
    /// Calling hours and do-not-call lists, checked here rather than in the actor.
    compliance: Compliance,
    /// The agents' caller IDs, checked (and chosen) here rather than in the actor.
    caller_ids: CallerIds,
    /// Dials in progress plus live calls, of every agent, as the actor counts them: what a
    /// draining server waits on.
    live_calls: watch::Receiver<usize>,
}

/// How many commands may wait for the actor.
const COMMAND_CAPACITY: usize = 1024;

impl CallManager {
    /// Starts the actor on the store the server opened, taking up what `recovered` holds:
    /// with SQLite, what the previous run left (live calls are ended with SERVER_RESTART,
    /// WRAP_UP ones wait again, answered keys replay). With PostgreSQL `recovered` is empty: a
    /// restarted replica is a new one, and the interactions of the one before reach the actor
    /// later, through [`CallManager::adopt`], when the lease keeper takes them over.
    pub fn start(
        config: ManagerConfig,
        store: Store,
        writer_conn: store::WriterConn,
        recovered: store::Recovered,
        telephony: Arc<dyn Telephony>,
    ) -> Self {
        let (commands, rx) = mpsc::channel(COMMAND_CAPACITY);
        let faults = store.faults().clone();
        // A dial's reservation lasts its whole originate timeout, the wait for the trunk
        // included (docs/api.md §3, trunk pacing).
        let replicas = Replicas::new(
            store.clone(),
            config.originate_timeout + config.pacing_wait,
            config.max_active_calls,
        );
        let deferred_dial = config.deferred_dial;
        let compliance = config.compliance.clone();
        let caller_ids = config.caller_ids.clone();
        let live_calls = actor::spawn(
            config,
            store.clone(),
            rx,
            writer_conn,
            faults,
            recovered,
            telephony,
        );
        Self {
            commands,
            store,
            deferred_dial,
            replicas,
            compliance,
            caller_ids,
            live_calls,
        }
    }

    /// PostgreSQL: forward operations on interactions other replicas own through `peers`.
    pub fn with_peers(mut self, peers: Arc<dyn Peers>) -> Self {
        self.replicas.peers = Some(peers);
        self
    }

    /// PostgreSQL: takes over interactions of a replica whose lease expired.
    pub async fn adopt(&self, taken: store::Recovered) -> Result<(), CallError> {
        self.commands
            .send(Command::Adopt { taken })
            .await
            .map_err(|_| CallError::ShuttingDown)
    }

    async fn ask<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, CallError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| CallError::ShuttingDown)?;
        rx.await.map_err(|_| CallError::ShuttingDown)
    }

    /// Dials (or, under Deferred Dial, stages) a number for an agent.
    pub async fn start_call(
        &self,
        mut request: StartCall,
    ) -> Result<proto::StartCallResponse, CallError> {
        // A caller ID the agent may not present refuses the request outright, staging
        // included: nothing is claimed, dialed or staged.
        request.presented_caller_id = self.choose_caller_id(&request)?;
        let key = request
            .request_id
            .as_deref()
            .map(|r| (r, idempotency::fingerprint(&request)));
        let dials = !self.deferred_dial || request.staged.is_some();
        // Staging is not calling: only a dial is held to calling hours and the lists.
        let refusal = dials
            .then(|| {
                self.compliance
                    .check(&request.phone_number, SystemTime::now())
            })
            .and_then(Result::err);
        // A refused dial reserves no place under --max-active-calls (in a shared store the
        // place's release would come after the refusal's answer, and the agent's next call
        // could find its places still held); its request_id is still claimed, so that a retry
        // of a call placed earlier gets that call's response.
        let reserves = dials && refusal.is_none();
        match self.replicas.admit(&request.agent_id, key, reserves).await {
            Ok(claims) => request.claims = claims,
            Err(answer) => return answer,
        }
        let span = tracing::Span::current();
        self.ask(|reply| Command::StartCall {
            request,
            refusal,
            reply,
            span,
        })
        .await?
    }

    /// Dials what Deferred Dial staged for the agent (DialStaged).
    pub async fn dial_staged(
        &self,
        agent_id: String,
        request_id: Option<String>,
    ) -> Result<proto::StartCallResponse, CallError> {
        let dialpad = self
            .store
            .staged_dialpad(agent_id.clone())
            .await
            .map_err(|e| {
                tracing::warn!("read failed: {e}");
                CallError::StoreUnavailable
            })?;
        let call = dialpad
            .filter(|(staged, _)| !staged.phone_number.is_empty())
            .map(|(staged, stored)| StartCall {
                agent_id: agent_id.clone(),
                phone_number: staged.phone_number,
                associated_object: staged.initial_object.map(Into::into),
                request_id: request_id.clone(),
                caller_id: (!staged.caller_id.is_empty()).then_some(staged.caller_id),
                presented_caller_id: String::new(),
                staged: Some(stored),
                claims: Claims::default(),
            });
        // The staged caller ID is checked against the agent's caller IDs as they are now (and
        // an empty one chosen now, by local presence).
        let call = match call {
            Some(mut call) => {
                call.presented_caller_id = self.choose_caller_id(&call)?;
                Some(call)
            }
            None => None,
        };
        let refusal = call.as_ref().and_then(|c| {
            self.compliance
                .check(&c.phone_number, SystemTime::now())
                .err()
        });
        let call = match call {
            Some(mut call) => {
                let key = request_id
                    .as_deref()
                    .map(|r| (r, idempotency::fingerprint(&call)));
                // As for StartCall: a refused dial reserves no place.
                let reserves = refusal.is_none();
                match self.replicas.admit(&agent_id, key, reserves).await {
                    Ok(claims) => call.claims = claims,
                    Err(answer) => return answer,
                }
                Some(call)
            }
            None => {
                // Nothing staged: a retry of a DialStaged that dialed (and cleared the
                // dialpad), on whichever replica, gets its response.
                if let Some(request_id) = &request_id {
                    if let Some(response) = self.replicas.replay(&agent_id, request_id).await? {
                        return Ok(response);
                    }
                }
                None
            }
        };
        let span = tracing::Span::current();
        self.ask(|reply| Command::DialStaged {
            agent_id,
            request_id,
            call,
            refusal,
            reply,
            span,
        })
        .await?
    }

    /// The caller ID `request` presents, or CallerIdNotAllowed (counted as a StartCall
    /// outcome).
    fn choose_caller_id(&self, request: &StartCall) -> Result<String, CallError> {
        self.caller_ids
            .choose(
                &request.agent_id,
                request.caller_id.as_deref(),
                &request.phone_number,
            )
            .inspect_err(|error| {
                metrics::counter!(
                    "calldesk_start_calls_total",
                    "outcome" => labels::start_error_outcome(error)
                )
                .increment(1);
                tracing::info!(
                    agent = %request.agent_id,
                    caller_id = %crate::compliance::last_four(
                        request.caller_id.as_deref().unwrap_or_default()
                    ),
                    "caller ID refused"
                );
            })
    }

    /// The caller IDs the agent may present, the default first (ListCallerIds).
    pub fn caller_ids(&self, agent_id: &str) -> crate::caller_id::Pool {
        self.caller_ids.pool(agent_id)
    }

    /// Applies an agent's operation (EndCall, HoldCall, ResumeCall, CompleteInteraction) and
    /// returns the interaction after it.
    ///
    /// PostgreSQL: an interaction another replica owns is changed there (forwarded), unless
    /// the request was itself forwarded (`forwarded`): one hop at most.
    pub async fn change(
        &self,
        agent_id: &str,
        interaction_id: &str,
        input: AgentOp,
        forwarded: bool,
    ) -> Result<proto::Interaction, CallError> {
        let operation = input.operation();
        let forward = self.replicas.peers.is_some().then(|| input.clone());
        let result = self
            .ask(|reply| Command::Change {
                agent_id: agent_id.to_owned(),
                interaction_id: interaction_id.to_owned(),
                input,
                reply,
                span: tracing::Span::current(),
            })
            .await?;
        if let (Err(CallError::NotFound), Some(input)) = (&result, forward) {
            let elsewhere = self
                .replicas
                .forward(agent_id, interaction_id, input, forwarded)
                .await;
            if let Some(answer) = elsewhere {
                return answer;
            }
        }
        match result {
            // The actor holds only interactions that are not COMPLETED: one it does not hold
            // may still be a completed one of this agent, where the operation is refused.
            Err(CallError::NotFound) => {
                let stored = self.interaction(agent_id, interaction_id).await?;
                let state = proto::InteractionState::try_from(stored.state)
                    .ok()
                    .and_then(|s| InteractionState::try_from(s).ok())
                    .unwrap_or(InteractionState::Completed);
                Err(CallError::InvalidState { operation, state })
            }
            other => other,
        }
    }

    /// One of the agent's interactions, from the store.
    pub async fn interaction(
        &self,
        agent_id: &str,
        interaction_id: &str,
    ) -> Result<proto::Interaction, CallError> {
        read_interaction(&self.store, agent_id, interaction_id).await
    }

    /// A page of the agent's interactions, newest first.
    pub async fn list(
        &self,
        agent_id: &str,
        state: Option<InteractionState>,
        before: Option<i64>,
        page_size: usize,
    ) -> Result<store::Page, CallError> {
        let state = state.map(|s| proto::InteractionState::from(s) as i32);
        self.store
            .list(agent_id.to_owned(), state, before, page_size)
            .await
            .map_err(|e| {
                tracing::warn!("read failed: {e}");
                CallError::StoreUnavailable
            })
    }

    /// Stored events of an interaction after `after`, at most `limit`.
    pub async fn history(
        &self,
        interaction_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EncodedEvent>, CallError> {
        self.store
            .events_after(interaction_id.to_owned(), after, limit)
            .await
            .map_err(|e| {
                tracing::warn!("read failed: {e}");
                CallError::StoreUnavailable
            })
    }

    /// What Deferred Dial staged for the agent.
    pub async fn dialpad(&self, agent_id: &str) -> Result<Option<proto::Dialpad>, CallError> {
        self.store.dialpad(agent_id.to_owned()).await.map_err(|e| {
            tracing::warn!("read failed: {e}");
            CallError::StoreUnavailable
        })
    }

    /// The live feed of one interaction, if the actor holds it for this agent. Subscribe
    /// before reading history: every event is then in the history, the feed, or both.
    pub async fn watch(
        &self,
        agent_id: &str,
        interaction_id: &str,
    ) -> Result<Option<EventFeed>, CallError> {
        // Shared store: every replica's events, read from the store as they commit.
        if let Some(feed) = self.store.interaction_feed(interaction_id) {
            return Ok(Some(feed));
        }
        self.ask(|reply| Command::Watch {
            agent_id: agent_id.to_owned(),
            interaction_id: interaction_id.to_owned(),
            reply,
        })
        .await?
    }

    /// The live feed of all of the agent's interactions. Dropping it tells the actor, which
    /// frees the agent's feed when its last watcher has gone.
    pub async fn watch_agent(&self, agent_id: &str) -> Result<AgentFeed, CallError> {
        if let Some(feed) = self.store.agent_feed(agent_id).await {
            let feed = feed.map_err(|e| {
                tracing::warn!("cannot watch an agent's feed: {e}");
                CallError::StoreUnavailable
            })?;
            return Ok(AgentFeed {
                feed: Some(feed),
                agent_id: agent_id.to_owned(),
                commands: self.commands.clone(),
            });
        }
        let feed = self
            .ask(|reply| Command::WatchAgent {
                agent_id: agent_id.to_owned(),
                reply,
            })
            .await?;
        Ok(AgentFeed {
            feed: Some(feed),
            agent_id: agent_id.to_owned(),
            commands: self.commands.clone(),
        })
    }

    /// Stops taking new calls: from the moment this returns, StartCall and DialStaged are
    /// refused with `ShuttingDown` (a retry of one already answered still replays its
    /// response), while the live calls go on and agents' changes and watches work as ever.
    pub async fn drain(&self) -> Result<(), CallError> {
        self.ask(|reply| Command::Drain { reply }).await
    }

    /// Dials in progress plus live (ringing, connected, held) calls, of every agent: zero once
    /// a draining server's calls have all ended (WRAP_UP is not live: it waits in the store).
    pub fn live_calls(&self) -> watch::Receiver<usize> {
        self.live_calls.clone()
    }

    /// Lets the writes in flight commit, stops the store writer and the actor.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }
}

/// One of the agent's interactions, from the store: another agent's is NotFound.
async fn read_interaction(
    store: &Store,
    agent_id: &str,
    interaction_id: &str,
) -> Result<proto::Interaction, CallError> {
    match store.interaction(interaction_id.to_owned()).await {
        Ok(Some(i)) if i.agent_id == agent_id => Ok(i),
        Ok(_) => Err(CallError::NotFound),
        Err(e) => {
            tracing::warn!("read failed: {e}");
            Err(CallError::StoreUnavailable)
        }
    }
}
