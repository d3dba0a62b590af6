//! What every part of the switch shares: the rsipstack endpoint and dialog layer, the
//! configuration, and the live calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::{Auth, Param, Transport, Uri};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::SipAddr;
use tokio::sync::{mpsc, watch};

use super::call::Command;
use super::config::{SipConfig, SipTransport};

pub(super) struct Engine {
    pub endpoint: EndpointInnerRef,
    pub dialogs: Arc<DialogLayer>,
    pub config: SipConfig,
    pub local: SocketAddr,
    pub trunk: Uri,
    pub calls: Mutex<HashMap<String, mpsc::Sender<Command>>>,
    pub trunk_up: watch::Sender<bool>,
}

impl Engine {
    pub fn transport(&self) -> Transport {
        match self.config.transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
        }
    }

    pub fn calls(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Command>>> {
        // A poisoned map is still a valid map: every writer only inserts or removes.
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
