//! Where callbacks may go: no private, loopback, link-local or otherwise internal address
//! unless `--webhook-allow-private` (server-side request forgery: a subscription must not
//! reach the cloud's metadata service or the replicas' own network).
//!
//! The check is on the address connected to, not on the name in the URL: [`Resolver`]
//! resolves names for hyper's connector and keeps only the addresses allowed (a name that
//! resolves only to forbidden ones fails), and [`Guarded`] checks the URLs whose host is an
//! address already (hyper connects to those without resolving). A pooled connection stays on
//! the address that was checked, so a name that later resolves elsewhere (DNS rebinding)
//! changes nothing for it.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
};

use hyper_util::client::legacy::connect::dns::Name;
use tower::Service;

/// Why an address is forbidden without `--webhook-allow-private`, or None if it is a public
/// one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_unspecified() || a == 0 => "this-network",
        _ if ip.is_broadcast() => "broadcast",
        _ if ip.is_multicast() => "multicast",
        // 100.64.0.0/10, carrier-grade NAT: shared, never a public host.
        _ if a == 100 && (b & 0xC0) == 64 => "shared (carrier-grade NAT)",
        // 192.0.0.0/24: IETF protocol assignments.
        _ if a == 192 && b == 0 && c == 0 => "IETF protocol assignment",
        // 198.18.0.0/15: benchmarking.
        _ if a == 198 && (b & 0xFE) == 18 => "benchmarking",
        _ if ip.is_documentation() => "documentation",
        // 240.0.0.0/4: reserved.
        _ if a >= 240 => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // An IPv4 address inside an IPv6 one goes where the IPv4 address goes.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    Some(match segments {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        // fc00::/7, unique local.
        [s, ..] if (s & 0xFE00) == 0xFC00 => "unique local",
        // fe80::/10, link-local.
        [s, ..] if (s & 0xFFC0) == 0xFE80 => "link-local",
        // fec0::/10, site-local (deprecated, still private).
        [s, ..] if (s & 0xFFC0) == 0xFEC0 => "site-local",
        // 64:ff9b::/96 (NAT64) and ::a.b.c.d (IPv4-compatible) reach an IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] => {
            return forbidden_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
        }
        // 2002::/16 (6to4) carries an IPv4 address in its next 32 bits.
        [0x2002, hi, lo, ..] => {
            return forbidden_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
        }
        // 2001:db8::/32, documentation.
        [0x2001, 0x0db8, ..] => "documentation",
        _ => return None,
    })
}

/// Resolves names for hyper's `HttpConnector`, keeping only the addresses allowed.
#[derive(Clone, Debug)]
pub struct Resolver {
    /// `--webhook-allow-private`: every address is allowed.
    pub allow_private: bool,
}

impl Resolver {
    /// The addresses of `host` that callbacks may go to.
    pub async fn resolve(&self, host: &str) -> io::Result<Vec<SocketAddr>> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        if self.allow_private {
            return Ok(all);
        }
        let mut refused = None;
        let allowed: Vec<SocketAddr> = all
            .into_iter()
            .filter(|addr| match forbidden(addr.ip()) {
                Some(why) => {
                    refused = Some((addr.ip(), why));
                    false
                }
                None => true,
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (true, Some((ip, why))) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{host} resolves to {ip}, a {why} address, and to no public one: \
                     --webhook-allow-private allows it"
                ),
            )),
            _ => Ok(allowed),
        }
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Boxed<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { Ok(resolver.resolve(name.as_str()).await?.into_iter()) })
    }
}

/// A connector that refuses URLs whose host is a forbidden address (hyper connects to an
/// address in a URL without asking the resolver).
#[derive(Clone, Debug)]
pub struct Guarded<C> {
    pub inner: C,
    pub allow_private: bool,
}

/// The address a URL's host is, if it is one (`[::1]` included).
pub fn host_address(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

impl<C> Service<http::Uri> for Guarded<C>
where
    C: Service<http::Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        if !self.allow_private {
            if let Some((ip, why)) = uri
                .host()
                .and_then(host_address)
                .and_then(|ip| Some((ip, forbidden(ip)?)))
            {
                return Box::pin(async move {
                    Err(
                        format!("{ip} is a {why} address: --webhook-allow-private allows it")
                            .into(),
                    )
                });
            }
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_forbidden_and_public_ones_are_not() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "ff02::1",
        ] {
            let ip: IpAddr = internal.parse().expect(internal);
            assert!(forbidden(ip).is_some(), "{internal} must be forbidden");
        }
        for public in [
            "93.184.215.14",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::",
        ] {
            let ip: IpAddr = public.parse().expect(public);
            assert_eq!(forbidden(ip), None, "{public} is public");
        }
        assert_eq!(host_address("[::1]"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(host_address("crm.example.com"), None);
    }

    /// The check is on what the name resolves to: `localhost` is a name, and refused.
    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_allowed() {
        let strict = Resolver {
            allow_private: false,
        };
        let err = strict.resolve("localhost").await.expect_err("loopback");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("--webhook-allow-private"), "{err}");
        let lenient = Resolver {
            allow_private: true,
        };
        let addrs = lenient.resolve("localhost").await.expect("allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn an_address_in_the_url_is_checked_before_connecting() {
        let mut guarded = Guarded {
            inner: hyper_util::client::legacy::connect::HttpConnector::new(),
            allow_private: false,
        };
        let err = guarded
            .call(
                "http://169.254.169.254/latest/meta-data"
                    .parse()
                    .expect("uri"),
            )
            .await
            .expect_err("link-local");
        assert!(err.to_string().contains("link-local"), "{err}");
    }
}
