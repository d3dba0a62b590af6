//! PostgreSQL: forwarding an agent's operation to the replica that owns the interaction, over
//! that replica's own gRPC API (the call manager's [`Peers`]).
//!
//! The hop carries the peer secret (`x-calldesk-peer`, checked by `auth.rs` on the owner) and
//! the agent (`x-agent-id`); the owner carries the operation out as if the agent had asked it
//! directly, and its answer, success or error with its details, is passed on as it came. The
//! hop goes to the address the owner advertised (`--advertise-address`): over TLS when the
//! replicas serve TLS (`--tls-cert`; they all do, or none), the owner's certificate checked
//! against `--peer-ca` (default: `--tls-client-ca`, else the system's roots) for
//! `--peer-server-name` (default: the advertised host), and with mutual TLS (`--tls-client-ca`)
//! presenting this replica's own certificate; else plain HTTP/2, inside the cluster's network,
//! which a mesh may encrypt.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{
    auth::{PeerSecret, PEER_HEADER},
    config::Config,
    ServeError,
};
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
    /// TLS for the hop (the replicas serve `--tls-cert`); None: plain HTTP/2.
    tls: Option<ClientTlsConfig>,
    /// One HTTP/2 channel per address, made on first use (channels reconnect by themselves).
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerClient {
    pub fn new(secret: PeerSecret, tls: Option<ClientTlsConfig>) -> Self {
        Self {
            secret,
            tls,
            channels: Arc::default(),
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, CallError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let unusable = |e: &dyn std::fmt::Display| CallError::OwnerUnavailable {
            detail: format!("its address {address:?} is not usable: {e}"),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| unusable(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(HOP_TIMEOUT);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| unusable(&e))?;
        }
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
                AgentOp::Transfer { target, request_id } => {
                    client
                        .transfer_call(hop(
                            proto::TransferCallRequest {
                                interaction_id: id,
                                target: target.to_string(),
                                request_id: request_id.unwrap_or_default(),
                            },
                            &secret,
                            &agent,
                        ))
                        .await
                }
                AgentOp::Consult { target, request_id } => {
                    client
                        .consult_call(hop(
                            proto::ConsultCallRequest {
                                interaction_id: id,
                                target: target.to_string(),
                                request_id: request_id.unwrap_or_default(),
                            },
                            &secret,
                            &agent,
                        ))
                        .await
                }
                AgentOp::CompleteTransfer { request_id } => {
                    client
                        .complete_transfer(hop(
                            proto::CompleteTransferRequest {
                                interaction_id: id,
                                request_id: request_id.unwrap_or_default(),
                            },
                            &secret,
                            &agent,
                        ))
                        .await
                }
                AgentOp::CancelConsult { request_id } => {
                    client
                        .cancel_consult(hop(
                            proto::CancelConsultRequest {
                                interaction_id: id,
                                request_id: request_id.unwrap_or_default(),
                            },
                            &secret,
                            &agent,
                        ))
                        .await
                }
                AgentOp::Conference { target, request_id } => {
                    client
                        .conference_call(hop(
                            proto::ConferenceCallRequest {
                                interaction_id: id,
                                target: target.to_string(),
                                request_id: request_id.unwrap_or_default(),
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
                    let why = tls_failure(&status).unwrap_or_else(|| status.message().to_owned());
                    Err(CallError::OwnerUnavailable {
                        detail: format!("{address}: {why}"),
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

/// With `--tls-cert`: the TLS of the hop to the other replicas, which serve TLS on their
/// advertised addresses too. Their certificates must chain to `--peer-ca` (else
/// `--tls-client-ca`, else the system's roots) and hold `--peer-server-name` (else the host
/// they advertise); with mutual TLS (`--tls-client-ca`) this replica presents its own
/// certificate, which therefore serves as a client certificate too.
pub fn tls(config: &Config) -> Result<Option<ClientTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ServeError(format!("cannot read {}: {e}", path.display())))
    };
    let (mut tls, roots) = match (&config.peer_ca, &config.tls_client_ca) {
        (Some(ca), _) => (ClientTlsConfig::new(), Some(("--peer-ca", ca))),
        (None, Some(ca)) => (ClientTlsConfig::new(), Some(("--tls-client-ca", ca))),
        (None, None) => (ClientTlsConfig::new().with_native_roots(), None),
    };
    if let Some((flag, ca)) = roots {
        let pem = read(ca)?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ServeError(format!(
                "{flag} {}: no PEM certificate in it",
                ca.display()
            )));
        }
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    if config.tls_client_ca.is_some() {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &config.peer_server_name {
        tls = tls.domain_name(name.clone());
    }
    // Whatever tonic would refuse later (a CA it cannot parse), refused now.
    Endpoint::from_static("https://calldesk.invalid")
        .tls_config(tls.clone())
        .map_err(|e| ServeError(format!("TLS to the other replicas: {e}")))?;
    Ok(Some(tls))
}

/// A hop's failed TLS handshake, said as what to change; None if it failed otherwise.
fn tls_failure(status: &tonic::Status) -> Option<String> {
    use tokio_rustls::rustls::{CertificateError, Error};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    let rustls = loop {
        let error = cause?;
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if let Some(rustls) = inner.unwrap_or(error).downcast_ref::<Error>() {
            break rustls;
        }
        cause = error.source();
    };
    Some(match rustls {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS handshake failed: its certificate is not signed by a CA this replica trusts \
             for its peers (unknown CA: check --peer-ca, which defaults to --tls-client-ca, \
             else the system's roots)"
                .into()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "TLS handshake failed: its certificate does not name the host it advertises \
              (host name mismatch: give each replica a certificate for its --advertise-address, \
              or name the one they share with --peer-server-name)"
            .into(),
        Error::AlertReceived(alert) => format!(
            "TLS handshake failed: it refused this replica ({alert:?}; with --tls-client-ca, \
             each replica presents its own --tls-cert, which must chain to the others' \
             --tls-client-ca and allow client authentication)"
        ),
        other => format!("TLS handshake failed: {other}"),
    })
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
