//! PostgreSQL: the other replicas, as the call manager asks them to carry out an operation on
//! an interaction they own (its call legs and timers are theirs).
//!
//! The trait keeps the manager free of gRPC: the server implements it with a client of the
//! replicas' own API (`server/peers.rs`), authenticated by the shared peer secret.

use std::{future::Future, pin::Pin};

use super::AgentOp;
use crate::{domain::CallError, proto};

/// What a forwarded operation resolves to: the owner's answer, as it gave it.
pub type Forwarded = Pin<Box<dyn Future<Output = Result<proto::Interaction, CallError>> + Send>>;

/// The replicas this one can forward to.
pub trait Peers: Send + Sync + 'static {
    /// Carries out an agent's operation (EndCall, HoldCall, ResumeCall, CompleteInteraction)
    /// on the replica at `address`, which owns the interaction.
    fn change(
        &self,
        address: &str,
        agent_id: &str,
        interaction_id: &str,
        input: AgentOp,
    ) -> Forwarded;
}
