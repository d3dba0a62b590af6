//! What every part of the switch shares: the rsipstack endpoint and dialog layer, the
//! configuration, and the addresses made from them. It knows nothing of calls
//! ([`super::live`] holds those).

use std::net::SocketAddr;
use std::sync::Arc;

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::{Auth, Param, Transport, Uri};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::SipAddr;
use tokio::sync::watch;

use super::config::{SipConfig, SipTransport};

pub(super) struct Engine {
    /// rsipstack's endpoint: transactions, and the ACKs calldesk sends itself.
    pub endpoint: EndpointInnerRef,
    /// rsipstack's dialogs: every leg's INVITE dialog is made and forgotten here.
    pub dialogs: Arc<DialogLayer>,
    /// What `--sip-*` asked for.
    pub config: SipConfig,
    /// The address the switch listens on: Contact, Via and SDP origins name it.
    pub local: SocketAddr,
    /// The trunk's URI, parsed once: the customer's Request-URI and the caller id's host.
    pub trunk: Uri,
    /// The trunk's health, as the OPTIONS keepalive last found it.
    pub trunk_up: watch::Sender<bool>,
}

impl Engine {
    pub fn transport(&self) -> Transport {
        match self.config.transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
        }
    }

    /// `sip:{user}@{our address}`, with `;transport=tcp` over TCP.
    pub fn local_uri(&self, user: &str) -> Result<Uri, String> {
        let text = format!("sip:{user}@{}", self.local);
        let uri = Uri::try_from(text.as_str()).map_err(|_| "invalid local URI".to_owned())?;
        Ok(self.with_transport(uri))
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

    /// The From of the customer leg: the caller id (or `calldesk`) at the trunk's host.
    pub fn caller_uri(&self) -> Uri {
        let mut uri = self.trunk.clone();
        uri.auth = Some(Auth {
            user: self
                .config
                .caller_id
                .clone()
                .unwrap_or_else(|| "calldesk".to_owned()),
            password: None,
        });
        uri.params.clear();
        uri.headers.clear();
        uri
    }

    /// `uri`, marked `;transport=tcp` when the switch sends over TCP.
    pub fn with_transport(&self, mut uri: Uri) -> Uri {
        if self.config.transport == SipTransport::Tcp
            && !uri.params.iter().any(|p| matches!(p, Param::Transport(_)))
        {
            uri.params.push(Param::Transport(Transport::Tcp));
        }
        uri
    }

    /// Where to send an INVITE for `uri`, over the configured transport.
    pub fn destination(&self, uri: &Uri) -> SipAddr {
        SipAddr {
            r#type: Some(self.transport()),
            addr: uri.host_with_port.clone(),
        }
    }
}
