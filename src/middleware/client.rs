//! Who is calling: the client's address, as every per-address limit counts
//! it. Behind a trusted proxy (`TRUSTED_PROXIES`) it is the nearest
//! forwarded address that is not itself a trusted proxy, so that clients
//! behind one proxy are told apart; otherwise it is the TCP peer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// An IP network (CIDR), e.g. `10.0.0.0/8` or `::1/128`; a bare address
/// is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `address/prefix` or a bare address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }

    /// Whether `ip` is in the network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy,
/// in which case the nearest address in `X-Forwarded-For` (else
/// `Forwarded`) that is not itself a trusted proxy.
pub fn client_address(peer: IpAddr, headers: &http::HeaderMap, trusted: &[Network]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = if headers.contains_key("x-forwarded-for") {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect()
    } else {
        headers
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.trim().split_once('=')?;
                    if !key.trim().eq_ignore_ascii_case("for") {
                        return None;
                    }
                    let value = value.trim().trim_matches('"');
                    // `[v6]:port`, `[v6]`, `v4:port` or `v4`.
                    let host = match value.strip_prefix('[') {
                        Some(rest) => rest.split(']').next()?,
                        None => value.split(':').next()?,
                    };
                    host.parse().ok()
                })
            })
            .collect()
    };
    // Walk from the nearest hop back; the first untrusted one is the client.
    forwarded.iter().rev().copied().find(|ip| !is_trusted(*ip)).or(forwarded.first().copied()).unwrap_or(peer)
}

/// The client address of requests, through the proxies it trusts.
#[derive(Clone, Debug, Default)]
pub struct ClientAddresses {
    trusted: Arc<[Network]>,
}

impl ClientAddresses {
    /// Trusts the forwarding headers of peers in `trusted` only.
    pub fn new(trusted: &[Network]) -> Self {
        Self { trusted: trusted.into() }
    }

    /// The client address of `req`; `None` when the connection's peer is
    /// unknown (a request not from the listener).
    pub fn of<B>(&self, req: &http::Request<B>) -> Option<IpAddr> {
        let peer = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>()?.0.ip();
        Some(client_address(peer, req.headers(), &self.trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = [Network::parse("10.0.0.0/8").unwrap(), Network::parse("::1").unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.1.2.3"));
        assert_eq!(client_address(ip("192.0.2.1"), &headers, &trusted), ip("192.0.2.1"), "untrusted peer");
        assert_eq!(client_address(ip("10.0.0.1"), &headers, &trusted), ip("198.51.100.7"), "nearest untrusted hop");
        assert_eq!(client_address(ip("::ffff:10.0.0.1"), &headers, &trusted), ip("198.51.100.7"), "v4-mapped peer");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::FORWARDED,
            HeaderValue::from_static("for=\"[2001:db8::1]:4711\";proto=https, for=10.9.9.9"),
        );
        assert_eq!(client_address(ip("::1"), &headers, &trusted), ip("2001:db8::1"));
        assert_eq!(client_address(ip("::1"), &http::HeaderMap::new(), &trusted), ip("::1"), "no header: the peer");
        for bad in ["10.0.0.0/33", "nope", "::1/129"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    }
}
