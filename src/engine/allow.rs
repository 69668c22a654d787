//! Which addresses braid may call (`--branch-allow`). A step, callback, registered branch or subscriber URL
//! outside the allowlist is refused when the transaction is created (400 naming the field and the URL), the
//! same over every protocol. Patterns: a host (`payments.internal`), a host suffix (`*.svc.cluster.local`),
//! a CIDR for IP hosts (`10.0.0.0/8`, `fd00::/8`) and `host:port`. Without an allowlist every host is
//! allowed except link-local addresses (169.254.0.0/16, fe80::/10: where cloud metadata services answer),
//! unless a pattern names them.
//!
//! The check at creation reads the URL's host as written. At call time [`CheckedResolver`] resolves the
//! names the HTTP client calls and checks every address (so a name that passed at creation cannot be made
//! to point elsewhere later, DNS rebinding included): a link-local address is refused unless a CIDR names
//! it, and when the allowlist lists networks, a name must resolve into one of them. A call whose name
//! resolves only to refused addresses fails as a business failure (never retried), logged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{Error, Result};
use crate::model::TOPIC_SCHEME;

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// This host exactly (any port).
    Host(String),
    /// Hosts ending in `.suffix`.
    Suffix(String),
    /// This host and port.
    HostPort(String, u16),
    /// IP hosts in this network.
    Cidr(IpAddr, u8),
}

/// The allowlist (empty: everything but link-local addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BranchAllow(Vec<Pattern>);

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The host and port of a branch URL: `http(s)://`, `discovery://` or a gRPC target `host:port/...`.
fn host_port(url: &str) -> Option<(String, Option<u16>)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host.to_ascii_lowercase(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => Some((h.to_ascii_lowercase(), p.parse().ok())),
        _ => Some((authority.to_ascii_lowercase(), None)),
    }
}

impl BranchAllow {
    /// Parses comma-separated patterns; the message names a bad one.
    pub fn parse(list: &str) -> std::result::Result<Self, String> {
        let mut out = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = raw.to_ascii_lowercase();
            let pattern = if let Some(suffix) = p.strip_prefix("*.") {
                Pattern::Suffix(suffix.to_owned())
            } else if p.contains('/') {
                let (ip, bits) =
                    parse_cidr(&p).ok_or_else(|| format!("branch-allow: '{raw}' is not a CIDR"))?;
                Pattern::Cidr(ip, bits)
            } else if let Ok(ip) = p.trim_matches(['[', ']']).parse::<IpAddr>() {
                Pattern::Cidr(ip, if ip.is_ipv4() { 32 } else { 128 })
            } else if let Some((h, port)) = p.rsplit_once(':') {
                let port = port
                    .parse()
                    .map_err(|_| format!("branch-allow: '{raw}' has a bad port"))?;
                Pattern::HostPort(h.to_owned(), port)
            } else {
                Pattern::Host(p)
            };
            out.push(pattern);
        }
        Ok(Self(out))
    }

    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let ip: Option<IpAddr> = host.parse().ok();
        let named = self.0.iter().any(|p| match p {
            Pattern::Host(h) => h == host,
            Pattern::Suffix(s) => host.ends_with(&format!(".{s}")),
            Pattern::HostPort(h, p) => h == host && Some(*p) == port,
            Pattern::Cidr(net, bits) => ip.is_some_and(|ip| in_network(ip, *net, *bits)),
        });
        if named {
            return true;
        }
        if self.0.is_empty() {
            return !ip.is_some_and(link_local);
        }
        false
    }

    /// Whether a call to `host` may go to `ip`, one of the addresses the name resolves to (see the module
    /// docs).
    pub fn allows_address(&self, ip: IpAddr) -> bool {
        let mut networks = self.0.iter().filter_map(|p| match p {
            Pattern::Cidr(net, bits) => Some((*net, *bits)),
            _ => None,
        });
        let listed = networks.clone().next().is_some();
        if networks.any(|(net, bits)| in_network(ip, net, bits)) {
            return true;
        }
        !link_local(ip) && !listed
    }

    /// Checks each `(field, url)`: empty URLs and `topic://` steps pass.
    pub(crate) fn check<'a>(
        &self,
        urls: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<()> {
        for (field, url) in urls {
            if url.is_empty() || url.starts_with(TOPIC_SCHEME) {
                continue;
            }
            let allowed = host_port(url).is_some_and(|(h, p)| self.allows(&h, p));
            if !allowed {
                let why = if self.0.is_empty() {
                    "a link-local address, which braid does not call unless --branch-allow names it"
                } else {
                    "outside --branch-allow"
                };
                return Err(Error::BadRequest(format!(
                    "field '{field}': '{url}' is {why}"
                )));
            }
        }
        Ok(())
    }
}

/// A branch host name that resolved only to addresses the allowlist refuses.
#[derive(Debug, thiserror::Error)]
#[error("'{host}' resolves to {addrs:?}, which --branch-allow does not allow")]
pub struct AddressRefused {
    /// The name.
    pub host: String,
    /// What it resolved to.
    pub addrs: Vec<IpAddr>,
}

/// The HTTP client's resolver for branch calls: the system resolver, then [`BranchAllow::allows_address`]
/// on every address. Refused addresses are dropped; a name left with none fails with [`AddressRefused`].
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    allow: Arc<BranchAllow>,
}

impl CheckedResolver {
    /// A resolver checking against `allow`.
    pub fn new(allow: Arc<BranchAllow>) -> Self {
        Self { allow }
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|a| allow.allows_address(a.ip()));
            if allowed.is_empty() && !refused.is_empty() {
                tracing::warn!(
                    host = %host,
                    addrs = ?refused.iter().map(SocketAddr::ip).collect::<Vec<_>>(),
                    "branch call refused: the name resolves outside --branch-allow"
                );
                return Err(Box::new(AddressRefused {
                    host,
                    addrs: refused.iter().map(SocketAddr::ip).collect(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`AddressRefused`] in an error's source chain, if any.
pub fn address_refused<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        // An I/O error's `source` skips the error it carries: look inside it.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|e| e.downcast_ref::<AddressRefused>())
        {
            return Some(inner);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(allow: &BranchAllow, url: &str) -> bool {
        allow.check([("u".to_owned(), url)]).is_ok()
    }

    #[test]
    fn patterns_and_the_default() {
        let none = BranchAllow::default();
        assert!(ok(&none, "http://orders:8080/x"));
        assert!(!ok(&none, "http://169.254.169.254/latest/meta-data"));
        assert!(!ok(&none, "http://[fe80::1]:80/x"));
        let allow = BranchAllow::parse(
            "*.svc.cluster.local, payments.internal, 10.0.0.0/8, busi:8081, 169.254.1.1",
        )
        .unwrap();
        assert!(ok(&allow, "http://orders.shop.svc.cluster.local/api"));
        assert!(ok(&allow, "https://payments.internal/x"));
        assert!(ok(&allow, "http://10.1.2.3:8080/x"));
        assert!(ok(&allow, "busi:8081/busi.Busi/TransOut"));
        assert!(ok(&allow, "http://169.254.1.1/x"), "named link-local");
        assert!(!ok(&allow, "busi:8082/busi.Busi/TransOut"));
        assert!(!ok(&allow, "http://evil.example/x"));
        assert!(!ok(&allow, "http://11.0.0.1/x"));
        assert!(!ok(&allow, "http://svc.cluster.local.evil/x"));
        assert!(ok(&allow, "topic://orders"));
        assert!(BranchAllow::parse("10.0.0.0/40").is_err());
        // Resolved addresses: networks listed, so a name must land in one; link-local never unless named.
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(allow.allows_address(ip("10.9.9.9")));
        assert!(!allow.allows_address(ip("192.168.1.5")));
        assert!(allow.allows_address(ip("169.254.1.1")));
        assert!(!allow.allows_address(ip("169.254.169.254")));
        let names_only = BranchAllow::parse("*.svc.cluster.local").unwrap();
        assert!(names_only.allows_address(ip("192.168.1.5")));
        assert!(!names_only.allows_address(ip("169.254.169.254")));
        assert!(none.allows_address(ip("8.8.8.8")));
        assert!(!none.allows_address(ip("fe80::1")));
        assert!(BranchAllow::parse("h:port").is_err());
    }
}
