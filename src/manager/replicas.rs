//! What a store shared by several replicas (PostgreSQL) adds around the actor, all of it
//! outside the actor, which never awaits I/O:
//!
//! - **admission** before a dial: the request_id and `--max-active-calls` are checked across
//!   replicas in the store ([`Store::admit_start`]), so that two replicas never dial one key and
//!   an agent's limit holds deployment-wide;
//! - **forwarding** after the actor answered NotFound: an interaction another replica owns is
//!   changed there, through [`Peers`];
//! - **replay** of a DialStaged that another replica answered (its dialpad is cleared).
//!
//! With one process (SQLite) every step is a no-op and the actor decides alone.

use std::{sync::Arc, time::Duration};

use super::{labels, AgentOp, Peers};
use crate::{
    domain::CallError,
    proto,
    store::{self, Admission, Claims, Store},
};

/// How long a StartCall waits for another replica that is dialing the same request_id, beyond
/// the dial's own deadline, before it answers UNAVAILABLE.
const IN_FLIGHT_ELSEWHERE_MARGIN: Duration = Duration::from_secs(5);
/// How often it asks again meanwhile.
const IN_FLIGHT_ELSEWHERE_POLL: Duration = Duration::from_millis(25);
/// How long a dial reservation holds beyond `--originate-timeout` (the creation's commit).
const RESERVATION_MARGIN: Duration = Duration::from_secs(10);
/// While a forwarded operation waits for its owner's answer, how often the owner is looked up
/// again (a takeover ends the wait).
const OWNER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The replicas' side of the call manager.
#[derive(Clone)]
pub(super) struct Replicas {
    store: Store,
    /// The other replicas, to forward operations on the interactions they own; None until
    /// the server sets them (and always with SQLite).
    pub peers: Option<Arc<dyn Peers>>,
    /// A dial reservation lasts as long as the dial may take, plus a margin.
    pub originate_timeout: Duration,
    /// `--max-active-calls`, counted across replicas.
    pub max_active_calls: u32,
}

impl Replicas {
    pub fn new(store: Store, originate_timeout: Duration, max_active_calls: u32) -> Self {
        Self {
            store,
            peers: None,
            originate_timeout,
            max_active_calls,
        }
    }

    /// In a shared store, before the actor sees a StartCall (or DialStaged, `dials`): its
    /// request_id and `--max-active-calls` across replicas. Ok(claims) to go on; Err(answer)
    /// when it is answered already (a replay, or a refusal).
    pub async fn admit(
        &self,
        agent_id: &str,
        key: Option<(&str, Vec<u8>)>,
        dials: bool,
    ) -> Result<Claims, Result<proto::StartCallResponse, CallError>> {
        if !self.store.is_shared() || (key.is_none() && !dials) {
            // One process, or a staging without a request_id: nothing to check across replicas.
            return Ok(Claims::default());
        }
        let limit = dials.then_some(self.max_active_calls);
        let hold_for = self.originate_timeout + RESERVATION_MARGIN;
        let deadline =
            tokio::time::Instant::now() + self.originate_timeout + IN_FLIGHT_ELSEWHERE_MARGIN;
        let outcome = |label: &'static str| {
            metrics::counter!("calldesk_start_calls_total", "outcome" => label).increment(1);
        };
        loop {
            let key = key.as_ref().map(|(r, f)| (*r, f.as_slice()));
            let admission = self
                .store
                .admit_start(agent_id, key, limit, hold_for)
                .await
                .map_err(|e| {
                    tracing::warn!("admission failed: {e}");
                    outcome("store_unavailable");
                    // Nothing was dialed. The admission's transaction is PostgreSQL answering
                    // at all: say so as a write would.
                    Err(CallError::StoreFault(store::StoreFault::Unreachable))
                })?;
            return match admission {
                Admission::Local => Ok(Claims::default()),
                Admission::Admitted(claims) => Ok(claims),
                Admission::Replay(response) => {
                    outcome("replayed");
                    Err(Ok(*response))
                }
                Admission::Reused => {
                    outcome("request_id_reused");
                    Err(Err(CallError::RequestIdReused))
                }
                Admission::TooMany => {
                    let error = CallError::TooManyActiveCalls {
                        limit: self.max_active_calls,
                    };
                    outcome(labels::start_error_outcome(&error));
                    Err(Err(error))
                }
                Admission::InFlightElsewhere if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(IN_FLIGHT_ELSEWHERE_POLL).await;
                    continue;
                }
                Admission::InFlightElsewhere => Err(Err(CallError::OwnerUnavailable {
                    detail: "another replica is still dialing this request_id".into(),
                })),
            };
        }
    }

    /// After the actor answered NotFound for an agent's operation: the owner's answer when
    /// another replica owns the interaction (forwarded there, unless the request was itself
    /// forwarded: one hop at most), an error when it is between owners, or None when no
    /// replica owns it (it is unknown, or COMPLETED).
    pub async fn forward(
        &self,
        agent_id: &str,
        interaction_id: &str,
        op: AgentOp,
        forwarded: bool,
    ) -> Option<Result<proto::Interaction, CallError>> {
        let peers = self.peers.as_ref()?;
        let owner = match self.store.owner(interaction_id).await {
            Ok(owner) => owner?,
            Err(e) => {
                tracing::warn!("read failed: {e}");
                return Some(Err(CallError::StoreUnavailable));
            }
        };
        // Another agent's interaction is NotFound here as on its owner.
        let before = match super::read_interaction(&self.store, agent_id, interaction_id).await {
            Ok(interaction) => interaction,
            Err(e) => return Some(Err(e)),
        };
        if owner.is_self || forwarded || owner.address.is_empty() {
            // Ours but not (yet) in the actor: a takeover is handing it over.
            return Some(Err(CallError::OwnerUnavailable {
                detail: if owner.address.is_empty() {
                    "its replica's lease expired and it is being taken over".into()
                } else {
                    "it is being handed over between replicas".into()
                },
            }));
        }
        let hop = peers.change(&owner.address, agent_id, interaction_id, op);
        Some(self.while_it_owns(hop, &before, &owner.node_id).await)
    }

    /// A forwarded operation's answer, or OWNER_UNAVAILABLE once the interaction's owner is no
    /// longer `node_id` (a replica that stopped answering, paused, and was taken over) and that
    /// owner recorded nothing on it after `before` was read: fenced from the takeover on, it
    /// can never carry the operation out, and the caller need not wait for its deadline. If the
    /// old owner did record something meanwhile, it may be this operation (applied just before
    /// the pause): the answer is the owner's, or the deadline's, as without a takeover.
    async fn while_it_owns(
        &self,
        mut hop: super::peers::Forwarded,
        before: &proto::Interaction,
        node_id: &str,
    ) -> Result<proto::Interaction, CallError> {
        let mut check = tokio::time::interval(OWNER_CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            tokio::select! {
                answer = &mut hop => return answer,
                _ = check.tick() => {
                    match self.store.owner(&before.id).await {
                        Ok(Some(owner)) if owner.node_id == node_id => {}
                        // Unreadable: the store's fault is health's to report; the hop goes on.
                        Err(_) => {}
                        Ok(_) => break,
                    }
                }
            }
        }
        // Taken over: what the old owner committed is final now. Nothing after `before`, or
        // only the takeover's own SERVER_RESTART, means it did not carry the operation out.
        let untouched = match self.store.interaction(before.id.clone()).await {
            Ok(Some(now)) => {
                now.sequence == before.sequence
                    || (now.sequence == before.sequence + 1
                        && now.end_reason == proto::EndReason::ServerRestart as i32)
            }
            _ => false,
        };
        if untouched {
            return Err(CallError::OwnerUnavailable {
                detail: "its replica stopped answering and was taken over".into(),
            });
        }
        hop.await
    }

    /// A DialStaged with nothing staged: the response of the DialStaged with this request_id
    /// that dialed (and cleared the dialpad), on whichever replica, if there was one.
    pub async fn replay(
        &self,
        agent_id: &str,
        request_id: &str,
    ) -> Result<Option<proto::StartCallResponse>, CallError> {
        self.store
            .answered(agent_id, request_id)
            .await
            .map_err(|e| {
                tracing::warn!("read failed: {e}");
                CallError::StoreUnavailable
            })
    }
}
