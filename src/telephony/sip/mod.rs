//! A SIP switch for calldesk, on rsipstack: third-party call control (RFC 3725, Flow IV).
//!
//! For each dial it rings the agent's own phone first, then the customer through a SIP
//! trunk, and connects their media directly: calldesk carries signalling only, never RTP.
//! See [`call`] for the flow and the signals it reports, and [`edge`] for what reaches the
//! SIP port before the stack sees it (only its peers, bounded, answered statelessly).
//!
//! Logs name Call-IDs and status codes only. rsipstack's own logs (target `rsipstack`)
//! include whole messages, SDP and Authorization headers among them, at `info` and
//! `debug`: keep that target at `warn` in production.

mod abandon;
mod ack;
mod adopt;
mod call;
mod conference;
mod config;
mod conformance;
mod consult;
mod dialog_store;
mod edge;
mod engine;
mod finished;
mod identity;
mod incoming;
mod keepalive;
mod leg;
mod legs;
mod live;
mod moves;
mod outcome;
mod parked;
mod sdp;
mod states;
mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::platform::CancellationToken;
use rsipstack::sip::{Method, Scheme, Uri};
use rsipstack::transaction::endpoint::EndpointOption;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipConnection, TlsConfig, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::Instrument;

use super::{Dial, SignalSink, SwitchOp, SwitchSignal, Telephony};
use crate::domain::dialog::CallDialogs;
use crate::domain::spans;
use engine::Engine;
use live::{Command, LiveCalls};

pub use config::{
    AgentDirectory, AgentPhone, SipConfig, SipCredential, SipTransport, StaticAgents, TlsIdentity,
};

/// How many ports `start` tries when asked for any free one (port 0).
const PORT_ATTEMPTS: usize = 16;

/// The UDP socket's receive buffer, asked of the kernel (SO_RCVBUF).
const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// How long [`SipSwitch::hang_up_all`] waits for the far ends' responses.
const HANG_UP_ALL_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// The SIP switch. Share it as `Arc<SipSwitch>`; dropping the last one stops the endpoint.
pub struct SipSwitch {
    /// What every call and the keepalive share: the endpoint, the configuration.
    engine: Arc<Engine>,
    /// The live calls' queues: what `hangup`, `switch` and shutdown reach a call through.
    live: Arc<LiveCalls>,
    /// The runtime the switch was started in: call tasks are spawned there.
    runtime: tokio::runtime::Handle,
    /// Stops the endpoint, its transports and the keepalive when the switch is dropped.
    cancel: CancellationToken,
    /// The trunk's health, for the server's health reasons.
    trunk_up: watch::Receiver<bool>,
}

impl SipSwitch {
    /// Binds UDP and TCP (TLS too, with a certificate) at `config.listen` and starts the
    /// endpoint, the edge that reads the port, the loop that answers requests in calldesk's
    /// dialogs, the resolution of the peers' addresses, and the trunk keepalive. Must be
    /// called inside a tokio runtime.
    pub async fn start(config: SipConfig) -> Result<Arc<SipSwitch>, String> {
        let trunk = Uri::try_from(config.trunk.as_str())
            .ok()
            .filter(|uri| matches!(uri.scheme, Some(Scheme::Sip | Scheme::Sips)))
            .ok_or_else(|| format!("invalid SIP trunk URI {:?}", config.trunk))?;
        if let Some(caller_id) = &config.caller_id {
            if !config::is_plain_user(caller_id) {
                return Err(format!("invalid caller id {caller_id:?}"));
            }
        }
        if let Some(credential) = &config.credential {
            if !config::is_header_token(&credential.user) {
                return Err(format!(
                    "invalid SIP auth user {:?}: printable ASCII without spaces, quotes or backslashes",
                    credential.user
                ));
            }
        }
        let tls = config
            .tls_identity
            .as_ref()
            .map(edge::tls::acceptor)
            .transpose()?;
        if tls.is_none() {
            let mut uris = config.agents.peer_uris();
            uris.push(config.trunk.clone());
            if let Some(uri) = uris
                .iter()
                .find(|uri| config.transport == SipTransport::Tls || is_tls_uri(uri))
            {
                return Err(format!(
                    "{uri:?} goes over TLS: calldesk then needs a TLS listener for the far \
                     end's requests (--sip-tls-cert and --sip-tls-key)"
                ));
            }
        }
        let anchors = edge::tls::trust_anchors(config.tls_ca_pem.as_deref())?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "SipSwitch::start needs a tokio runtime".to_owned())?;

        let cancel = CancellationToken::new();
        let (udp, tcp) = bind(config.listen).await?;
        let udp = Arc::new(udp);
        let transport_layer = TransportLayer::new(cancel.child_token());
        // rsipstack sends through the UDP socket; the edge reads it.
        let sender = UdpConnection::from_socket(
            Arc::new(edge::udp::SendOnly(udp.clone())),
            None,
            Some(cancel.child_token()),
        )
        .await
        .map_err(|e| format!("SIP UDP socket: {e}"))?;
        let local = sender
            .get_addr()
            .get_socketaddr()
            .map_err(|e| format!("no local UDP address: {e}"))?;
        transport_layer.add_transport(sender.clone().into());
        transport_layer.set_tls_config(TlsConfig {
            ca_certs: Some(anchors),
            ..Default::default()
        });

        let option = EndpointOption {
            // Flow IV sends the customer's answer in the ACK: every 2xx is ACKed by us.
            auto_ack_2xx: false,
            ..Default::default()
        };
        let endpoint = EndpointBuilder::new()
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transport_layer)
            .with_user_agent(&config.user_agent)
            .with_option(option)
            .with_inspector(Box::new(conformance::Conformance))
            .with_allows(vec![
                Method::Invite,
                Method::Ack,
                Method::Bye,
                Method::Cancel,
                Method::Options,
            ])
            .build();
        let incoming = endpoint
            .incoming_transactions()
            .map_err(|e| format!("SIP endpoint: {e}"))?;
        let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let parked = Arc::new(parked::ParkedDialogs::new());

        let allow = Arc::new(edge::allow::AllowList::new(config.allow_from.clone()));
        let mut peers = config.agents.peer_uris();
        peers.push(config.trunk.clone());
        allow.resolve(&peers).await;
        let edge = Arc::new(
            edge::Edge::new(
                allow.clone(),
                endpoint.inner.clone(),
                dialogs.clone(),
                parked.clone(),
            )
            .await?,
        );
        let limits = edge::stream::StreamLimits {
            max_connections: config.max_connections,
            first_message_timeout: config.first_message_timeout,
            idle_timeout: config.idle_connection_timeout,
        };

        let (trunk_up_tx, trunk_up) = watch::channel(true);
        let keepalive = config.keepalive_interval;
        let resolving =
            edge::allow::keep_resolving(allow, config.trunk.clone(), Arc::clone(&config.agents));
        let engine = Arc::new(Engine {
            endpoint: endpoint.inner.clone(),
            dialogs,
            parked,
            states: states::DialogStates::start(&runtime, cancel.child_token()),
            finished: finished::FinishedMessages::start(
                &runtime,
                endpoint.inner.clone(),
                cancel.child_token(),
            ),
            config,
            local,
            trunk,
            trunk_up: trunk_up_tx,
        });

        runtime.spawn(async move { endpoint.serve().await });
        runtime.spawn(incoming::serve(engine.clone(), incoming));
        runtime.spawn(edge::udp::serve(
            edge.clone(),
            udp,
            SipConnection::Udp(sender),
            cancel.child_token(),
        ));
        runtime.spawn(edge::stream::serve(
            edge,
            tcp,
            tls,
            limits,
            cancel.child_token(),
        ));
        {
            let cancel = cancel.clone();
            runtime.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = resolving => {}
                }
            });
        }
        if let Some(interval) = keepalive {
            let engine = engine.clone();
            let cancel = cancel.clone();
            runtime.spawn(async move {
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = keepalive::run(engine, interval) => {}
                }
            });
        }
        tracing::info!(%local, transport = ?engine.config.transport, "SIP switch listening");
        Ok(Arc::new(SipSwitch {
            engine,
            live: Arc::default(),
            runtime,
            cancel,
            trunk_up,
        }))
    }

    /// True at start; false after an OPTIONS keepalive got no response, true again once
    /// one gets any response. Always true without a keepalive.
    pub fn trunk_up(&self) -> watch::Receiver<bool> {
        self.trunk_up.clone()
    }

    /// For shutdown: CANCELs or BYEs every leg of every live call and waits (a few seconds
    /// at most) for the far ends' responses. Nothing is reported for those calls.
    ///
    /// A call the call manager already hung up (EndCall) is not live: its CANCEL or BYE went
    /// out then, and its task may still be waiting for a far end that never answers. It is
    /// neither waited for nor warned of; only calls whose legs were still up and did not end
    /// in time are.
    pub async fn hang_up_all(&self) {
        let waits = self.live.shut_down_all();
        let waited: Vec<String> = waits.iter().map(|(call_id, _)| call_id.clone()).collect();
        let all = async {
            for (_, wait) in waits {
                let _ = wait.await;
            }
        };
        if tokio::time::timeout(HANG_UP_ALL_WAIT, all).await.is_err() {
            // A call's task leaves the live calls when it ends.
            let up = self.live.still_live(&waited);
            if !up.is_empty() {
                tracing::warn!(calls = up.len(), call_ids = ?up, "SIP legs did not end in time");
            }
        }
    }

    /// The address the switch listens on (UDP and TCP, and TLS with a certificate).
    pub fn local_addr(&self) -> SocketAddr {
        self.engine.local
    }
}

/// Binds the UDP socket and the TCP listener on one port. With port 0 the OS picks a free
/// UDP port, which may be taken for TCP: then another is tried.
async fn bind(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on UDP {listen}: {e}"))?;
        // Room for a burst while the edge's reader is not scheduled: 4 MiB holds ~100 ms of
        // 50,000 small datagrams/s. The kernel caps it at net.core.rmem_max (often 208 KiB).
        let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(UDP_RECEIVE_BUFFER);
        let local = udp
            .local_addr()
            .map_err(|e| format!("no local UDP address: {e}"))?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if listen.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < PORT_ATTEMPTS => {}
            Err(e) => return Err(format!("cannot listen on TCP {local}: {e}")),
        }
    }
}

/// Whether requests to `uri` go over TLS whatever `--sip-transport` says.
fn is_tls_uri(uri: &str) -> bool {
    let uri = uri.trim();
    uri.starts_with("sips:") || uri.to_ascii_lowercase().contains(";transport=tls")
}

impl Drop for SipSwitch {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Telephony for SipSwitch {
    fn originate(&self, dial: Dial, signals: SignalSink) {
        let (sender, commands) = live::command_queue();
        if !self.live.register(&dial.call_id, sender) {
            let call_id = dial.call_id.clone();
            tracing::warn!(%call_id, "a call with this id is already live");
            self.runtime.spawn(async move {
                let _ = signals
                    .send_with_detail(&call_id, SwitchSignal::Failed, "call id already in use")
                    .await;
            });
            return;
        }
        // The call outlives the StartCall that placed it: in a trace its span is the request's
        // child; in the logs, without an exporter, it sits under the request's span (which
        // names the trace id the caller sent).
        let request = tracing::Span::current();
        let span = if spans::exporting() {
            let span =
                tracing::info_span!(parent: None, "sip.call", trace_id = tracing::field::Empty);
            spans::continue_from(&span, &request);
            span
        } else {
            tracing::info_span!(parent: &request, "sip.call")
        };
        self.runtime.spawn(
            call::run(
                self.engine.clone(),
                self.live.clone(),
                Box::new(dial),
                signals,
                commands,
            )
            .instrument(span),
        );
    }

    fn hangup(&self, call_id: &str) {
        self.live.hang_up(call_id, tracing::Span::current());
    }

    fn switch(&self, call_id: &str, op: SwitchOp, signals: SignalSink) {
        let sent = self.live.send(
            call_id,
            Command::Switch {
                op: op.clone(),
                sink: signals.clone(),
                span: tracing::Span::current(),
            },
        );
        if sent.is_err() {
            let call_id = call_id.to_owned();
            self.runtime.spawn(async move {
                let _ = signals
                    .send_with_detail(&call_id, SwitchSignal::Refused(op), "no such call")
                    .await;
            });
        }
    }

    fn adopt(&self, call_id: &str, dialogs: CallDialogs, signals: SignalSink) -> bool {
        self.adopt_call(call_id, &dialogs, signals)
    }

    fn abandon(&self, call_id: &str, dialogs: CallDialogs) {
        self.abandon_call(call_id, dialogs)
    }
}
