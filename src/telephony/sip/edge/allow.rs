//! Who may talk to calldesk's SIP port: its peers (the addresses the trunk's and the agents'
//! phones' hosts resolve to) and the `--sip-allow-from` ranges. A datagram from anyone else is
//! dropped before it is parsed, a connection closed as soon as it is accepted.
//!
//! The peers' names are resolved at start, again on SIGHUP (after the agents' file is re-read)
//! and every [`RESOLVE_EVERY`]; a change is logged. A name that stops resolving keeps its last
//! addresses, so that a DNS outage does not cut calldesk off from its trunk.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use rsipstack::sip::{Host, Uri};
use tokio::sync::watch;

use super::super::config::AgentDirectory;

/// How often the peers' names are resolved again.
pub(in super::super) const RESOLVE_EVERY: Duration = Duration::from_secs(60);
/// How long one name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The sources calldesk's SIP port takes anything from.
pub(in super::super) struct AllowList {
    /// `--sip-allow-from`.
    ranges: Vec<IpNet>,
    /// The peers' addresses, by the host they were resolved from; replaced whole on each
    /// resolution.
    peers: RwLock<Arc<Peers>>,
}

/// One resolution of the peers' hosts.
#[derive(Default, PartialEq, Eq)]
struct Peers {
    /// Every address of every peer host.
    addresses: BTreeSet<IpAddr>,
    /// The addresses of each host (an address literal is its own host).
    by_host: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Hosts whose last resolution failed (they keep the addresses they had).
    failing: BTreeSet<String>,
}

impl AllowList {
    pub fn new(ranges: Vec<IpNet>) -> Self {
        Self {
            ranges,
            peers: RwLock::new(Arc::default()),
        }
    }

    /// Whether `ip` may send to the SIP port.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ranges.iter().any(|range| range.contains(&ip))
            || self
                .peers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .addresses
                .contains(&ip)
    }

    /// Resolves the hosts of `uris` and takes their addresses as the peers'. Logs the result
    /// the first time, and afterwards only what changed.
    pub async fn resolve(&self, uris: &[String]) {
        let previous = Arc::clone(&self.peers.read().unwrap_or_else(PoisonError::into_inner));
        let mut hosts: BTreeSet<(String, u16)> = BTreeSet::new();
        for uri in uris {
            if let Some(host) = host_of(uri) {
                hosts.insert(host);
            }
        }
        let mut lookups = tokio::task::JoinSet::new();
        for (host, port) in hosts {
            lookups.spawn(async move {
                let lookup = tokio::net::lookup_host((host.clone(), port));
                let found = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await;
                let addresses: Result<BTreeSet<IpAddr>, String> = match found {
                    Ok(Ok(found)) => Ok(found.map(|a| a.ip().to_canonical()).collect()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
                };
                (host, addresses)
            });
        }
        let mut next = Peers::default();
        while let Some(joined) = lookups.join_next().await {
            let Ok((host, addresses)) = joined else {
                continue;
            };
            let addresses = match addresses {
                Ok(addresses) if !addresses.is_empty() => {
                    if previous.failing.contains(&host) {
                        tracing::info!(%host, "a SIP peer resolves again");
                    }
                    addresses
                }
                failed => {
                    let kept = previous.by_host.get(&host).cloned().unwrap_or_default();
                    if !previous.failing.contains(&host) {
                        let error = failed.err().unwrap_or_else(|| "no address".to_owned());
                        tracing::warn!(%host, %error, kept = ?kept, "cannot resolve a SIP peer; it keeps the addresses it had");
                    }
                    next.failing.insert(host.clone());
                    kept
                }
            };
            next.addresses.extend(addresses.iter().copied());
            next.by_host.insert(host, addresses);
        }
        if *previous == next {
            return;
        }
        let next = Arc::new(next);
        // In effect before it is logged: whoever reads the log may count on it.
        *self.peers.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&next);
        let first = previous.by_host.is_empty() && previous.failing.is_empty();
        let added: Vec<&IpAddr> = next.addresses.difference(&previous.addresses).collect();
        let removed: Vec<&IpAddr> = previous.addresses.difference(&next.addresses).collect();
        if first {
            tracing::info!(peers = ?next.addresses, ranges = ?self.ranges, "SIP port open to these peers' addresses");
        } else if !added.is_empty() || !removed.is_empty() {
            tracing::info!(?added, ?removed, peers = ?next.addresses, "SIP peers' addresses changed");
        }
    }
}

/// The host (and port, for the lookup) of a SIP URI; a template's placeholder stands for any
/// user. None for what does not parse: the switch refuses such a trunk, and a call to such a
/// phone fails on its own.
fn host_of(uri: &str) -> Option<(String, u16)> {
    let uri = Uri::try_from(uri.replace("{agent}", "x").as_str()).ok()?;
    let port = uri.host_with_port.port.map(|p| p.value()).unwrap_or(5060);
    let host = match uri.host_with_port.host {
        Host::IpAddr(ip) => ip.to_string(),
        Host::Domain(domain) => domain.to_string(),
    };
    Some((host, port))
}

/// Resolves the peers again on SIGHUP (once the agents' file is re-read), when the agents'
/// URIs change, and every [`RESOLVE_EVERY`], for as long as the switch runs.
pub(in super::super) async fn keep_resolving(
    allow: Arc<AllowList>,
    trunk: String,
    agents: Arc<dyn AgentDirectory>,
) {
    let uris = |agents: &dyn AgentDirectory| {
        let mut uris = agents.peer_uris();
        uris.push(trunk.clone());
        uris
    };
    let mut changes = agents.changes();
    let mut ticker = tokio::time::interval(RESOLVE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = changed(&mut changes) => if !changed { changes = None },
            () = hangup(&mut hangups) => {}
        }
        allow.resolve(&uris(agents.as_ref())).await;
    }
}

/// True when the agents' URIs changed; false once they never will again (then waits no more
/// on them).
async fn changed(changes: &mut Option<watch::Receiver<()>>) -> bool {
    match changes {
        Some(changes) => changes.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
async fn hangup(hangups: &mut Option<tokio::signal::unix::Signal>) {
    match hangups {
        Some(signal) => {
            if signal.recv().await.is_none() {
                *hangups = None;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn hangup(_: &mut Option<()>) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peers_and_ranges_are_allowed_and_nothing_else() {
        let allow = AllowList::new(vec!["10.1.0.0/16".parse().expect("range")]);
        allow
            .resolve(&[
                "sip:127.0.0.2:5070".to_owned(),
                "sip:{agent}@127.0.0.3".to_owned(),
                "sips:7001@[::1]:5061".to_owned(),
                "not a uri".to_owned(),
            ])
            .await;
        for ip in [
            "127.0.0.2",
            "127.0.0.3",
            "::1",
            "10.1.200.3",
            "::ffff:127.0.0.2",
        ] {
            assert!(allow.allows(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["127.0.0.1", "10.2.0.1", "192.0.2.1"] {
            assert!(!allow.allows(ip.parse().expect("ip")), "{ip}");
        }
        // A new resolution replaces the peers.
        allow.resolve(&["sip:127.0.0.4".to_owned()]).await;
        assert!(allow.allows("127.0.0.4".parse().expect("ip")));
        assert!(!allow.allows("127.0.0.2".parse().expect("ip")));
    }

    #[tokio::test]
    async fn a_name_resolves_to_its_addresses() {
        let allow = AllowList::new(Vec::new());
        allow
            .resolve(&["sip:trunk@localhost:5070".to_owned()])
            .await;
        assert!(allow.allows("127.0.0.1".parse().expect("ip")));
    }
}
