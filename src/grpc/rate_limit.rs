//! Per-buyer and per-address rate limits on Purchase and on Login/Register (GCRA via governor;
//! burst = one second's worth). A limit of 0 turns that limiter off. The address is the TCP
//! peer: behind a proxy it is the proxy's, so set the per-address limits there or to 0.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

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
        }
    }

    /// One purchase by `caller` from `peer`.
    pub fn purchase(&self, caller: &Caller, peer: Option<SocketAddr>) -> Result<(), ServiceError> {
        check(&self.buyer_purchases, &caller.user_id)?;
        match peer {
            Some(peer) => check(&self.ip_purchases, &peer.ip()),
            None => Ok(()),
        }
    }

    /// One login or registration from `peer`.
    pub fn login(&self, peer: Option<SocketAddr>) -> Result<(), ServiceError> {
        match peer {
            Some(peer) => check(&self.ip_logins, &peer.ip()),
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
