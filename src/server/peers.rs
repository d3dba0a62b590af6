//! PostgreSQL: forwarding an agent's operation to the replica that owns the interaction, over
//! that replica's own gRPC API (the call manager's [`Peers`]).
//!
//! The hop carries the peer secret (`x-calldesk-peer`, checked by `auth.rs` on the owner) and
//! the agent (`x-agent-id`); the owner carries the operation out as if the agent had asked it
//! directly, and its answer, success or error with its details, is passed on as it came. The
//! hop is plain HTTP/2 on the address the owner advertised (`--advertise-address`): inside the
//! cluster's network, which a mesh may encrypt.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::transport::{Channel, Endpoint};

use super::auth::{PeerSecret, PEER_HEADER};
use crate::{
    domain::{CallError, PeerStatus},
    manager::{peers::Forwarded, AgentOp, Peers},
    proto::{self, interaction_service_client::InteractionServiceClient},
};

/// How long a forwarded operation may take on the owner (a hold waits for the switch).
const HOP_TIMEOUT: Duration = Duration::from_secs(45);
/// How long connecting to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The other replicas, reached by the addresses they advertise. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    secret: PeerSecret,
    /// One HTTP/2 channel per address, made on first use (channels reconnect by themselves).
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerClient {
    pub fn new(secret: PeerSecret) -> Self {
        Self {
            secret,
            channels: Arc::default(),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, CallError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| CallError::OwnerUnavailable {
                detail: format!("its address {address:?} is not usable: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(HOP_TIMEOUT);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl Peers for PeerClient {
    fn change(
        &self,
        address: &str,
        agent_id: &str,
        interaction_id: &str,
        input: AgentOp,
    ) -> Forwarded {
        let channel = self.channel(address);
        let secret = self.secret.header_value();
        let agent = tonic::metadata::MetadataValue::try_from(agent_id);
        let interaction_id = interaction_id.to_owned();
        let address = address.to_owned();
        Box::pin(async move {
            let mut client = InteractionServiceClient::new(channel?);
            let agent = agent.map_err(|_| CallError::NotFound)?;
            let secret =
                tonic::metadata::MetadataValue::try_from(secret.as_bytes()).map_err(|_| {
                    CallError::OwnerUnavailable {
                        detail: "the peer secret is not a metadata value".into(),
                    }
                })?;
            let id = interaction_id;
            let answer = match input {
                AgentOp::End => {
                    client
                        .end_call(hop(
                            proto::EndCallRequest { interaction_id: id },
                            &secret,
                            &agent,
                        ))
                        .await
                }
                AgentOp::Hold => {
                    client
                        .hold_call(hop(
                            proto::HoldCallRequest { interaction_id: id },
                            &secret,
                            &agent,
                        ))
                        .await
                }
                AgentOp::Resume => {
                    client
                        .resume_call(hop(
                            proto::ResumeCallRequest { interaction_id: id },
                            &secret,
                            &agent,
                        ))
                        .await
                }
                AgentOp::Complete { disposition, notes } => {
                    client
                        .complete_interaction(hop(
                            proto::CompleteInteractionRequest {
                                interaction_id: id,
                                disposition,
                                notes,
                            },
                            &secret,
                            &agent,
                        ))
                        .await
                }
            };
            match answer {
                Ok(response) => Ok(response.into_inner()),
                // The owner could not be reached at all: nothing was carried out.
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && status.metadata().get("content-type").is_none() =>
                {
                    tracing::debug!(%address, "forwarding failed: {}", status.message());
                    Err(CallError::OwnerUnavailable {
                        detail: format!("{address}: {}", status.message()),
                    })
                }
                Err(status) => Err(CallError::Peer(PeerStatus {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    details: status.details().to_vec().into(),
                })),
            }
        })
    }
}

/// A request to another replica: the message, the peer secret and the agent it acts for.
fn hop<M>(
    message: M,
    secret: &tonic::metadata::AsciiMetadataValue,
    agent: &tonic::metadata::AsciiMetadataValue,
) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(PEER_HEADER, secret.clone());
    request.metadata_mut().insert("x-agent-id", agent.clone());
    request
}
