//! What the edge's readers share: the [`Edge`] (the allow list, the answer budget, the way
//! into the SIP stack), what it does with one message, and the metrics of what it drops.

use std::net::SocketAddr;
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::DialogId;
use rsipstack::sip::{HostWithPort, Response, SipMessage, Transport};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::key::TransactionKey;
use rsipstack::transport::channel::ChannelConnection;
use rsipstack::transport::connection::TransportSender;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};

use super::allow::AllowList;
use super::budget;
use super::vet::{vet, DropReason, Known, ToTags, Verdict};

/// What the edge's readers share.
pub(in super::super) struct Edge {
    pub allow: Arc<AllowList>,
    /// The dialogs and transactions that messages may belong to.
    stack: Stack,
    tags: ToTags,
    /// How many requests outside calldesk's calls are still answered this second.
    budget: budget::AnswerBudget,
    /// Into the SIP stack: the in-memory connection's feed.
    inject: TransportSender,
}

impl Edge {
    /// Opens the way into `endpoint`'s stack: an in-memory connection whose events the stack
    /// reads as its own transports'. It sits in the stack's connection table under a `.invalid`
    /// address (never resolved), so nothing is ever sent through it.
    pub(in super::super) async fn new(
        allow: Arc<AllowList>,
        endpoint: EndpointInnerRef,
        dialogs: Arc<DialogLayer>,
        parked: Arc<dyn OtherDialogs>,
    ) -> Result<Edge, String> {
        let (inject, feed) = tokio::sync::mpsc::unbounded_channel();
        let (nowhere, _) = tokio::sync::mpsc::unbounded_channel();
        let address = SipAddr {
            r#type: None,
            addr: HostWithPort::try_from("calldesk-edge.invalid")
                .map_err(|e| format!("edge address: {e}"))?,
        };
        let doorway = ChannelConnection::create_connection(feed, nowhere, address, None)
            .await
            .map_err(|e| format!("edge connection: {e}"))?;
        endpoint
            .transport_layer
            .add_connection(SipConnection::Channel(doorway));
        expose_at_zero();
        Ok(Edge {
            allow,
            stack: Stack {
                endpoint,
                dialogs,
                parked,
            },
            tags: ToTags::default(),
            budget: budget::AnswerBudget::default(),
            inject,
        })
    }

    /// Whether `dialog` is still one of the stack's (a connection carrying it is not idle).
    pub(super) fn has_dialog(&self, dialog: &DialogId) -> bool {
        self.stack.dialog(dialog)
    }

    /// Whether the raw `bytes` of a message are worth reading: not when they are a request
    /// outside any dialog and [`budget::ANSWERS_PER_SECOND`] of those were answered in the
    /// last second (then counted as dropped, `rate_limited`).
    pub(super) fn worth_reading(&self, bytes: &[u8], transport: Transport) -> bool {
        if budget::outside_any_dialog(bytes) && !self.budget.take() {
            dropped(transport, Reason::RateLimited);
            return false;
        }
        true
    }

    /// Vets one message that came from `source` over `transport` on `connection` (the one
    /// the stack answers on) and passes it on, answers it or drops it.
    pub(super) fn handle(
        &self,
        message: SipMessage,
        source: SocketAddr,
        transport: Transport,
        connection: &SipConnection,
    ) -> Handled {
        match vet(message, source, &self.stack, &self.tags) {
            Verdict::Pass { message, dialog } => {
                let from = SipAddr {
                    r#type: Some(transport),
                    addr: source.into(),
                };
                let _ =
                    self.inject
                        .send(TransportEvent::Incoming(message, connection.clone(), from));
                Handled::Passed { dialog }
            }
            Verdict::Answer { response, reply_to } => {
                metrics::counter!(
                    "calldesk_sip_stateless_responses_total",
                    "status" => status_label(&response)
                )
                .increment(1);
                Handled::Answer { response, reply_to }
            }
            Verdict::Drop(reason) => {
                dropped(
                    transport,
                    match reason {
                        DropReason::Malformed => Reason::Malformed,
                        DropReason::Stray => Reason::Stray,
                    },
                );
                Handled::Dropped
            }
        }
    }
}

/// What became of a message.
pub(super) enum Handled {
    /// Handed to the stack; a request in this dialog.
    Passed {
        dialog: Option<DialogId>,
    },
    /// To be sent back to its sender: over UDP to `reply_to`, on a stream on it.
    Answer {
        response: Response,
        reply_to: SocketAddr,
    },
    Dropped,
}

/// The stack's dialogs and transactions, as [`vet`] asks about them.
struct Stack {
    endpoint: EndpointInnerRef,
    dialogs: Arc<DialogLayer>,
    /// Connected calls' dialogs out of `dialogs` while they wait: known all the same.
    parked: Arc<dyn OtherDialogs>,
}

/// Dialogs of calldesk's that are not in the dialog layer (the switch parks a waiting call's
/// dialogs): requests in them are let in all the same.
pub(in super::super) trait OtherDialogs: Send + Sync {
    fn contains(&self, id: &DialogId) -> bool;
}

impl Known for Stack {
    fn dialog(&self, id: &DialogId) -> bool {
        self.dialogs.get_dialog(id).is_some() || self.parked.contains(id)
    }

    fn transaction(&self, key: &TransactionKey) -> bool {
        self.endpoint.transactions.contains_key(key)
            || self.endpoint.finished_transactions.contains_key(key)
    }
}

/// Why the edge dropped something unanswered, or closed a connection: the `reason` label of
/// `calldesk_sip_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    /// From outside the allow list: a datagram dropped unread, a connection closed at once.
    NotAllowed,
    /// A connection past `--sip-max-connections`, closed at once.
    ConnectionLimit,
    /// Not SIP, over [`MAX_MESSAGE`], without the headers an answer needs, or a failed TLS
    /// handshake (a stream is closed: its framing is lost).
    Malformed,
    /// An ACK or a response that belongs to nothing calldesk holds.
    Stray,
    /// A request outside calldesk's calls past [`budget::ANSWERS_PER_SECOND`], dropped
    /// unread.
    RateLimited,
    /// A connection that sent no complete message within `--sip-first-message-timeout`.
    FirstMessageTimeout,
    /// A connection without a dialog, silent for `--sip-idle-connection-timeout`.
    Idle,
}

impl Reason {
    /// Every reason, for [`expose_at_zero`].
    const ALL: [Reason; 7] = [
        Reason::NotAllowed,
        Reason::ConnectionLimit,
        Reason::Malformed,
        Reason::Stray,
        Reason::RateLimited,
        Reason::FirstMessageTimeout,
        Reason::Idle,
    ];

    /// Whether only a connection can be dropped for it (never a datagram).
    fn connections_only(self) -> bool {
        matches!(
            self,
            Reason::ConnectionLimit | Reason::FirstMessageTimeout | Reason::Idle
        )
    }

    fn label(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::ConnectionLimit => "connection_limit",
            Reason::Malformed => "malformed",
            Reason::Stray => "stray",
            Reason::RateLimited => "rate_limited",
            Reason::FirstMessageTimeout => "first_message_timeout",
            Reason::Idle => "idle",
        }
    }
}

/// Registers the edge's counters and gauges at zero (what was recorded keeps its value), as the
/// server does its own (`server::metrics::expose_at_zero`), so that `rate()` sees their first
/// event: each transport with each reason it can drop for, each status, each transport's
/// connections.
fn expose_at_zero() {
    for transport in [Transport::Udp, Transport::Tcp, Transport::Tls] {
        for reason in Reason::ALL {
            if transport == Transport::Udp && reason.connections_only() {
                continue;
            }
            metrics::counter!(
                "calldesk_sip_dropped_total",
                "transport" => transport_label(transport),
                "reason" => reason.label()
            )
            .increment(0);
        }
    }
    for status in ["200", "403", "405", "481"] {
        metrics::counter!("calldesk_sip_stateless_responses_total", "status" => status)
            .increment(0);
    }
    for transport in [Transport::Tcp, Transport::Tls] {
        metrics::gauge!("calldesk_sip_connections", "transport" => transport_label(transport))
            .increment(0.0);
    }
}

/// Counts one drop in `calldesk_sip_dropped_total{transport, reason}`.
pub(super) fn dropped(transport: Transport, reason: Reason) {
    metrics::counter!(
        "calldesk_sip_dropped_total",
        "transport" => transport_label(transport),
        "reason" => reason.label()
    )
    .increment(1);
}

pub(super) fn transport_label(transport: Transport) -> &'static str {
    match transport {
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        _ => "udp",
    }
}

/// The `status` label of a stateless answer: one of the few the edge sends.
fn status_label(response: &Response) -> &'static str {
    match response.status_code.code() {
        200 => "200",
        403 => "403",
        405 => "405",
        _ => "481",
    }
}
