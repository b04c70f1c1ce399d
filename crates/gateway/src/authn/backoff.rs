//! Failed-authentication throttle (T03): failures per client address are
//! counted with a GCRA limiter (governor); each time an address exceeds
//! its allowance it is shut out for a period that doubles with every
//! strike, so guessing tokens or keys gets slower and slower.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

// IPv6 callers are keyed by their /64: one host has a whole /64.
use crate::caller::network_of;

const FIRST_PENALTY: Duration = Duration::from_secs(1);
const MAX_PENALTY: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most; beyond it, expired entries are swept.
const MAX_TRACKED: usize = 100_000;

struct Penalty {
    strikes: u32,
    until: Instant,
}

pub struct FailedAuthThrottle {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    penalties: Mutex<HashMap<IpAddr, Penalty>>,
}

impl FailedAuthThrottle {
    /// Allow `per_minute` failures per address (as a burst, refilled
    /// evenly over the minute) before the first penalty.
    pub fn new(per_minute: u32) -> Self {
        let allowance = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(allowance).allow_burst(allowance)),
            penalties: Mutex::new(HashMap::new()),
        }
    }

    /// If `ip` is shut out, for how much longer.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let penalties = self.penalties.lock().ok()?;
        let penalty = penalties.get(&network_of(ip))?;
        penalty.until.checked_duration_since(Instant::now())
    }

    /// Count a failure from `ip`; returns the penalty if one starts now.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let key = network_of(ip);
        if self.limiter.check_key(&key).is_ok() {
            return None;
        }
        let Ok(mut penalties) = self.penalties.lock() else {
            return None;
        };
        if penalties.len() >= MAX_TRACKED {
            let now = Instant::now();
            penalties.retain(|_, p| p.until > now);
            self.limiter.retain_recent();
        }
        let penalty = penalties.entry(key).or_insert(Penalty {
            strikes: 0,
            until: Instant::now(),
        });
        penalty.strikes = penalty.strikes.saturating_add(1);
        let length = FIRST_PENALTY
            .saturating_mul(1u32 << penalty.strikes.saturating_sub(1).min(20))
            .min(MAX_PENALTY);
        penalty.until = Instant::now() + length;
        Some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_start_after_the_allowance_and_grow() {
        let throttle = FailedAuthThrottle::new(3);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.failed(ip), None);
        }
        assert!(throttle.blocked(ip).is_none());
        let first = throttle.failed(ip).unwrap();
        let second = throttle.failed(ip).unwrap();
        assert!(second > first);
        assert!(throttle.blocked(ip).is_some());
        // Another address is not affected; IPv6 neighbours in one /64 are one.
        assert!(throttle.blocked("203.0.113.8".parse().unwrap()).is_none());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..4 {
            throttle.failed(a);
        }
        assert!(throttle.blocked(b).is_some());
    }
}
