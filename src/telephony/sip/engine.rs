//! What every part of the switch shares: the rsipstack endpoint and dialog layer, the
//! configuration, and the addresses made from them. It knows nothing of calls
//! ([`super::live`] holds those).

use std::net::SocketAddr;
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::uri::ParamsExt;
use rsipstack::sip::{Auth, Param, Scheme, Transport, Uri};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::SipAddr;
use tokio::sync::watch;

use super::config::{SipConfig, SipTransport};
use super::finished::FinishedMessages;
use super::parked::ParkedDialogs;
use super::states::DialogStates;

pub(super) struct Engine {
    /// rsipstack's endpoint: transactions, and the ACKs calldesk sends itself.
    pub endpoint: EndpointInnerRef,
    /// rsipstack's dialogs: every leg's INVITE dialog is made and forgotten here.
    pub dialogs: Arc<DialogLayer>,
    /// The dialogs of connected calls that wait, out of `dialogs` meanwhile (parked.rs).
    pub parked: Arc<ParkedDialogs>,
    /// The one channel every dialog reports its changes on, handed to the legs.
    pub states: DialogStates,
    /// calldesk's ACKs left for retransmitted final responses, forgotten after 64*T1.
    pub finished: FinishedMessages,
    /// What `--sip-*` asked for.
    pub config: SipConfig,
    /// Where the switch listens: UDP and TCP, and TLS on the TCP port.
    pub local: SocketAddr,
    /// The trunk's URI, parsed once: the customer's Request-URI and the caller id's host.
    pub trunk: Uri,
    /// The trunk's health, as the OPTIONS keepalive last found it.
    pub trunk_up: watch::Sender<bool>,
}

impl Engine {
    /// The transport of requests to `uri`: TLS for a `sips:` URI, else its `transport=`
    /// parameter, else `--sip-transport`.
    pub fn transport_for(&self, uri: &Uri) -> Transport {
        if uri.scheme == Some(Scheme::Sips) {
            return Transport::Tls;
        }
        if let Some(transport) = uri.transport() {
            return *transport;
        }
        match self.config.transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
            SipTransport::Tls => Transport::Tls,
        }
    }

    /// `sip:{user}@{our address}`, with the `;transport=` of `--sip-transport` over TCP or
    /// TLS.
    pub fn local_uri(&self, user: &str) -> Result<Uri, String> {
        let text = format!("sip:{user}@{}", self.local);
        let uri = Uri::try_from(text.as_str()).map_err(|_| "invalid local URI".to_owned())?;
        Ok(self.with_transport(uri))
    }

    /// calldesk's Contact in a dialog with `target` (RFC 3261 §8.1.1.8): a `sips:` URI when
    /// the target is one, else a `sip:` URI marked with the transport the requests go over.
    pub fn contact_for(&self, target: &Uri) -> Result<Uri, String> {
        let transport = self.transport_for(target);
        let secure = target.scheme == Some(Scheme::Sips);
        let text = format!(
            "{}:calldesk@{}",
            if secure { "sips" } else { "sip" },
            self.local
        );
        let mut uri = Uri::try_from(text.as_str()).map_err(|_| "invalid local URI".to_owned())?;
        if !secure && transport != Transport::Udp {
            uri.params.push(Param::Transport(transport));
        }
        Ok(uri)
    }

    /// The URI of `agent_id`'s phone.
    pub fn agent_uri(&self, agent_id: &str) -> Result<Uri, &'static str> {
        self.config
            .agents
            .phone_for(agent_id)
            .ok_or("no SIP URI for agent")?
            .to_uri()
    }

    /// The customer's Request-URI: the trunk's URI with `number` as its user part.
    pub fn customer_uri(&self, number: &str) -> Uri {
        let mut uri = self.trunk.clone();
        uri.auth = Some(Auth {
            user: number.to_owned(),
            password: None,
        });
        self.with_transport(uri)
    }

    /// The call's caller ID: its own (`Dial::caller_id`), else `--sip-caller-id`; None when
    /// neither is set.
    pub fn caller_id<'a>(&'a self, dial_caller_id: &'a str) -> Option<&'a str> {
        Some(dial_caller_id)
            .filter(|c| !c.is_empty())
            .or(self.config.caller_id.as_deref())
    }

    /// The From of the customer leg: the caller id (or `calldesk`) at the trunk's host.
    pub fn caller_uri(&self, caller_id: Option<&str>) -> Uri {
        let mut uri = self.trunk.clone();
        uri.auth = Some(Auth {
            user: caller_id.unwrap_or("calldesk").to_owned(),
            password: None,
        });
        uri.params.clear();
        uri.headers.clear();
        uri
    }

    /// The trunk's host[:port], as P-Asserted-Identity names it.
    pub fn trunk_host(&self) -> String {
        self.trunk.host_with_port.to_string()
    }

    /// What shapes each leg's presentation (identity.rs).
    pub fn presentation(&self) -> super::identity::PresentationConfig {
        super::identity::PresentationConfig {
            caller_name: self.config.caller_name.clone(),
            agent_auto_answer: self.config.agent_auto_answer,
            send_uui: self.config.send_uui,
        }
    }

    /// `uri`, marked `;transport=tcp` or `;transport=tls` when `--sip-transport` says so and
    /// the URI names no transport of its own (a `sips:` URI needs none).
    pub fn with_transport(&self, mut uri: Uri) -> Uri {
        let transport = self.transport_for(&uri);
        if transport != Transport::Udp
            && uri.scheme != Some(Scheme::Sips)
            && !uri.params.iter().any(|p| matches!(p, Param::Transport(_)))
        {
            uri.params.push(Param::Transport(transport));
        }
        uri
    }

    /// Where to send a request for `uri`, over its transport.
    pub fn destination(&self, uri: &Uri) -> SipAddr {
        SipAddr {
            r#type: Some(self.transport_for(uri)),
            addr: uri.host_with_port.clone(),
        }
    }
}
