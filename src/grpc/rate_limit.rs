//! Per-buyer and per-address rate limits on Purchase and on Login/Register (GCRA via governor;
//! burst = one second's worth). A limit of 0 turns that limiter off.
//!
//! The address is the TCP peer's, unless the peer is a trusted proxy (`--trusted-proxies`):
//! then it is the rightmost address of `x-forwarded-for` that is not a trusted proxy (each
//! proxy appends the address it received from, so everything left of the first untrusted hop
//! may be forged by the client), else Envoy's `x-envoy-external-address`, else the leftmost
//! trusted hop. A peer that is not trusted cannot name another address: its headers are never
//! read.

use std::net::IpAddr;
use std::num::NonZeroU32;

use ipnet::IpNet;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Caller;
use crate::config::Settings;
use crate::domain::UserId;
use crate::service::ServiceError;

/// The server's rate limiters.
pub struct RateLimits {
    buyer_purchases: Option<DefaultKeyedRateLimiter<UserId>>,
    ip_purchases: Option<DefaultKeyedRateLimiter<IpAddr>>,
    ip_logins: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trusted_proxies: Vec<IpNet>,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_sec: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_sec).map(|rate| RateLimiter::keyed(Quota::per_second(rate)))
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &Option<DefaultKeyedRateLimiter<K>>,
    key: &K,
) -> Result<(), ServiceError> {
    match limiter {
        Some(limiter) => limiter.check_key(key).map_err(|not_until| ServiceError::RateLimited {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        }),
        None => Ok(()),
    }
}

impl RateLimits {
    /// Limiters as configured.
    pub fn new(settings: &Settings) -> Self {
        Self {
            buyer_purchases: limiter(settings.buyer_purchases_per_sec),
            ip_purchases: limiter(settings.ip_purchases_per_sec),
            ip_logins: limiter(settings.ip_logins_per_sec),
            trusted_proxies: settings.trusted_proxies.clone(),
        }
    }

    /// The client's address of a request (see the module docs); `None` when the transport has
    /// no peer address.
    pub fn client_address<T>(&self, request: &tonic::Request<T>) -> Option<IpAddr> {
        let peer = request.remote_addr()?.ip();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let headers = request.metadata();
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect::<Vec<_>>();
        // Rightmost first: the nearest hop, written by the trusted proxy itself.
        let mut nearest_proxy = None;
        for hop in forwarded.iter().rev() {
            match parse_hop(hop) {
                Some(ip) if self.is_trusted(ip) => nearest_proxy = Some(ip),
                // The first untrusted hop: the client as far as trusted proxies can tell.
                Some(ip) => return Some(ip),
                // Not an address (garbage, `unknown`): the trusted hop to its right is all
                // that is known.
                None => return nearest_proxy.or(Some(peer)),
            }
        }
        // Every hop is a trusted proxy (or there is none): Envoy's header, else the leftmost
        // trusted hop, else the peer.
        let envoy = headers.get("x-envoy-external-address").and_then(|value| value.to_str().ok()).and_then(parse_hop);
        envoy.or(nearest_proxy).or(Some(peer))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// One purchase by `caller` from `client` (an address of [`RateLimits::client_address`]).
    pub fn purchase(&self, caller: &Caller, client: Option<IpAddr>) -> Result<(), ServiceError> {
        check(&self.buyer_purchases, &caller.user_id)?;
        match client {
            Some(client) => check(&self.ip_purchases, &client),
            None => Ok(()),
        }
    }

    /// One login or registration from `client`.
    pub fn login(&self, client: Option<IpAddr>) -> Result<(), ServiceError> {
        match client {
            Some(client) => check(&self.ip_logins, &client),
            None => Ok(()),
        }
    }

    /// Forgets keys idle long enough to be back at full burst (bounds memory).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.buyer_purchases {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in [&self.ip_purchases, &self.ip_logins].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// One hop of `x-forwarded-for` (or Envoy's header): an address, with or without a port
/// (`203.0.113.7`, `[2001:db8::1]:443`, `203.0.113.7:5000`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let bare = hop.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(hop);
    bare.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_proxy;

    fn limits(trusted: &[&str]) -> RateLimits {
        let settings = Settings {
            trusted_proxies: trusted.iter().map(|t| parse_proxy(t).unwrap()).collect(),
            ..Settings::default()
        };
        RateLimits::new(&settings)
    }

    fn from(peer: &str, headers: &[(&'static str, &str)]) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(format!("{peer}:5000").parse().unwrap()),
        });
        for (name, value) in headers {
            request.metadata_mut().append(*name, value.parse().unwrap());
        }
        request
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let limits = limits(&["10.0.0.0/8"]);
        let forged = from("203.0.113.9", &[("x-forwarded-for", "1.2.3.4"), ("x-envoy-external-address", "5.6.7.8")]);
        assert_eq!(limits.client_address(&forged), ip("203.0.113.9"));
        assert_eq!(
            self::limits(&[]).client_address(&from("10.0.0.2", &[("x-forwarded-for", "1.2.3.4")])),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_rightmost_untrusted_hop() {
        let limits = limits(&["10.0.0.0/8", "192.0.2.1"]);
        // The client forged the first hop; the proxies appended the rest.
        let chain = from("10.0.0.2", &[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 192.0.2.1")]);
        assert_eq!(limits.client_address(&chain), ip("198.51.100.4"));
        // Several header lines are one list, in order.
        let split = from("10.0.0.2", &[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.5:443")]);
        assert_eq!(limits.client_address(&split), ip("198.51.100.5"));
        // Envoy's header when the list names no untrusted hop.
        let envoy = from("10.0.0.2", &[("x-envoy-external-address", "198.51.100.6")]);
        assert_eq!(limits.client_address(&envoy), ip("198.51.100.6"));
        // A trusted proxy that forwards nothing: itself.
        assert_eq!(limits.client_address(&from("10.0.0.2", &[])), ip("10.0.0.2"));
        // Garbage right of the trusted hops: the nearest hop that is an address.
        let garbage = from("10.0.0.2", &[("x-forwarded-for", "198.51.100.7, unknown, 10.0.0.9")]);
        assert_eq!(limits.client_address(&garbage), ip("10.0.0.9"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_blocks() {
        let limits = limits(&["10.0.0.0/8"]);
        let mapped = from("[::ffff:10.0.0.2]", &[("x-forwarded-for", "198.51.100.8")]);
        assert_eq!(limits.client_address(&mapped), ip("198.51.100.8"));
        let bracketed = from("10.0.0.2", &[("x-forwarded-for", "[2001:db8::7]")]);
        assert_eq!(limits.client_address(&bracketed), ip("2001:db8::7"));
    }
}
