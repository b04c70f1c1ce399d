//! Failed-authentication throttle (T03): failures per client address are
//! counted with a GCRA limiter (governor); each time an address exceeds
//! its allowance it earns a strike and is shut out for a period that
//! doubles with every strike it holds, so guessing tokens or keys gets
//! slower and slower.
//!
//! Strikes decay: they are a second GCRA bucket (governor) that gives one
//! strike back per `decay` (the `[auth] backoff_decay`, 15 minutes by
//! default). Precisely: a strike taken when the address holds `n` strikes
//! (after decay) starts a penalty of 2^n seconds, at most 15 minutes, and
//! the count falls by one for every `decay` that passes. So an address
//! that stops failing is forgiven entirely, one strike per `decay`. Bad
//! tokens within the allowance earn no strike at all; but an address that
//! goes past its allowance once per `decay` (about `per_minute` + 1 bad
//! tokens every quarter of an hour by default) keeps its strikes and stays
//! at the longest penalty, and with it everyone behind it (a NAT) who has
//! no credential accepted before: see below.
//!
//! While an address is shut out, its requests are refused unread, except
//! those presenting a credential that was already accepted before (from
//! any address), which are verified as usual. A guesser gains nothing:
//! a guess is never among them, a guess is not even verified during the
//! back-off (so a right one is refused just like a wrong one), and the
//! back-off still applies to everything else. Users behind the same
//! address who already hold a working credential keep working; someone
//! signing in anew waits for the penalty, which decays. The memory of
//! accepted credentials lives in this process: after a restart a
//! credential is known again once it is accepted outside a back-off.
//!
//! With a Redis in `[cluster]` (issue 16) the back-off is the cluster's:
//! failures, strikes and penalties live in Redis (one atomic script per
//! failure, `cluster/backoff.lua`, the same rules, keyed by a hash of the
//! client network), so guesses spread over any number of nodes earn the
//! penalty at the same count as on one; accepted credentials are also
//! remembered there (by a hash of their fingerprint). Every failure is
//! still counted here too, so when Redis does not answer (within
//! `[cluster] check_timeout`) the node decides by its own back-off, never
//! by none, and counts that in `bulkhead_cluster_limits_fallback`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

// IPv6 callers are keyed by their /64: one host has a whole /64.
use crate::caller::network_of;
use crate::cluster::{BackoffRules, ClusterLimits};

const FIRST_PENALTY: Duration = Duration::from_secs(1);
const MAX_PENALTY: Duration = Duration::from_secs(15 * 60);
/// Strikes held at most: past 11 the penalty is at its longest anyway.
const MAX_STRIKES: u32 = 16;
/// Addresses tracked at most; beyond it, expired entries are swept.
const MAX_TRACKED: usize = 100_000;
/// Accepted credentials remembered at most, and for how long.
const MAX_KNOWN: usize = 65_536;
const KNOWN_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// The SHA-256 of a presented credential: what is remembered of it.
pub type Fingerprint = [u8; 32];

pub struct FailedAuthThrottle {
    /// Failures allowed before a strike.
    allowance: DefaultKeyedRateLimiter<IpAddr>,
    /// Strikes held: each takes a cell, one comes back per decay period.
    strikes: DefaultKeyedRateLimiter<IpAddr, StateInformationMiddleware>,
    /// When each penalised address may try again.
    penalties: Mutex<HashMap<IpAddr, Instant>>,
    /// Credentials accepted before, and when last.
    known: Mutex<HashMap<Fingerprint, Instant>>,
    /// The cluster's back-off in Redis (issue 16), and its rules.
    cluster: Option<(Arc<ClusterLimits>, BackoffRules)>,
}

impl FailedAuthThrottle {
    /// Allow `per_minute` failures per address (as a burst, refilled
    /// evenly over the minute) before the first strike; forgive one strike
    /// per `decay`.
    #[cfg(test)]
    pub fn new(per_minute: u32, decay: Duration) -> Self {
        Self::in_cluster(per_minute, decay, None)
    }

    /// [`Self::new`], shared with the other nodes through `cluster`
    /// (issue 16) when given.
    pub(crate) fn in_cluster(
        per_minute: u32,
        decay: Duration,
        cluster: Option<&Arc<ClusterLimits>>,
    ) -> Self {
        let per_minute = per_minute.max(1);
        let rules = BackoffRules {
            allowance: per_minute,
            allowance_interval: Duration::from_secs(60) / per_minute,
            decay: decay.max(Duration::from_millis(1)),
            max_strikes: MAX_STRIKES,
            first_penalty: FIRST_PENALTY,
            max_penalty: MAX_PENALTY,
        };
        let allowance = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let most = NonZeroU32::new(MAX_STRIKES).unwrap_or(NonZeroU32::MIN);
        let strikes = Quota::with_period(decay.max(Duration::from_millis(1)))
            .unwrap_or(Quota::per_hour(NonZeroU32::MIN))
            .allow_burst(most);
        Self {
            allowance: RateLimiter::keyed(Quota::per_minute(allowance).allow_burst(allowance)),
            strikes: RateLimiter::keyed(strikes).with_middleware::<StateInformationMiddleware>(),
            penalties: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            cluster: cluster.map(|c| (c.clone(), rules)),
        }
    }

    /// If `ip` is shut out, for how much longer: across the cluster while
    /// Redis answers, else here.
    pub async fn blocked_anywhere(&self, ip: IpAddr) -> Option<Duration> {
        if let Some((cluster, _)) = &self.cluster
            && let Ok(wait) = cluster.backoff_blocked(network_of(ip)).await
        {
            return wait;
        }
        self.blocked(ip)
    }

    /// Count a failure from `ip`, here and across the cluster; the
    /// penalty if one starts now (the cluster's while Redis answers).
    pub async fn failed_anywhere(&self, ip: IpAddr) -> Option<Duration> {
        // Counted here too: the fallback starts from what this node saw.
        let here = self.failed(ip);
        if let Some((cluster, rules)) = &self.cluster
            && let Ok(penalty) = cluster.backoff_failed(network_of(ip), rules).await
        {
            return penalty;
        }
        here
    }

    /// Whether `credential` was accepted before, here or on another node.
    pub async fn is_known_anywhere(&self, credential: &Fingerprint) -> bool {
        if self.is_known(credential) {
            return true;
        }
        match &self.cluster {
            Some((cluster, _)) => cluster.is_known(credential).await,
            None => false,
        }
    }

    /// Remember that `credential` was accepted, and tell the other nodes
    /// the first time this one sees it (a day).
    pub fn remember_everywhere(&self, credential: Fingerprint) {
        if let Some((cluster, _)) = &self.cluster
            && !self.is_known(&credential)
        {
            cluster.remember(&credential, KNOWN_FOR);
        }
        self.remember(credential);
    }

    /// If `ip` is shut out, for how much longer.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let penalties = self.penalties.lock().unwrap_or_else(|p| p.into_inner());
        let until = penalties.get(&network_of(ip))?;
        until.checked_duration_since(Instant::now())
    }

    /// Count a failure from `ip`; returns the penalty if one starts now.
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let key = network_of(ip);
        if self.allowance.check_key(&key).is_ok() {
            return None;
        }
        // Strikes held, this one included, after what has decayed.
        let strikes = match self.strikes.check_key(&key) {
            Ok(state) => MAX_STRIKES.saturating_sub(state.remaining_burst_capacity()),
            Err(_) => MAX_STRIKES,
        };
        let length = FIRST_PENALTY
            .saturating_mul(1u32 << strikes.saturating_sub(1).min(20))
            .min(MAX_PENALTY);
        let now = Instant::now();
        let mut penalties = self.penalties.lock().unwrap_or_else(|p| p.into_inner());
        if penalties.len() >= MAX_TRACKED {
            penalties.retain(|_, until| *until > now);
            self.allowance.retain_recent();
            self.strikes.retain_recent();
        }
        penalties.insert(key, now + length);
        Some(length)
    }

    /// Whether `credential` was accepted before (within a day).
    pub fn is_known(&self, credential: &Fingerprint) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(credential)
            .is_some_and(|at| at.elapsed() < KNOWN_FOR)
    }

    /// Remember that `credential` was accepted; at most [`MAX_KNOWN`]
    /// are kept (the oldest forgotten first when full).
    pub fn remember(&self, credential: Fingerprint) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN && !known.contains_key(&credential) {
            known.retain(|_, at| at.elapsed() < KNOWN_FOR);
            if known.len() >= MAX_KNOWN
                && let Some(oldest) = known.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k)
            {
                known.remove(&oldest);
            }
        }
        known.insert(credential, Instant::now());
    }
}

/// What is remembered of a credential: its SHA-256, never the secret.
pub fn fingerprint(credential: &[u8]) -> Fingerprint {
    Sha256::digest(credential).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn penalties_start_after_the_allowance_and_grow() {
        let throttle = FailedAuthThrottle::new(3, HOUR);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.failed(ip), None);
        }
        assert!(throttle.blocked(ip).is_none());
        let first = throttle.failed(ip).unwrap();
        let second = throttle.failed(ip).unwrap();
        assert_eq!(first, FIRST_PENALTY);
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

    /// T03: strikes are forgiven one per decay period.
    #[test]
    fn strikes_decay_t03() {
        let throttle = FailedAuthThrottle::new(1, Duration::from_millis(100));
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(throttle.failed(ip), None);
        assert_eq!(throttle.failed(ip), Some(FIRST_PENALTY));
        std::thread::sleep(Duration::from_millis(250));
        // The earlier strike is forgiven: this one is a first strike again.
        assert_eq!(throttle.failed(ip), Some(FIRST_PENALTY));
    }

    #[test]
    fn known_credentials_are_bounded() {
        let throttle = FailedAuthThrottle::new(1, HOUR);
        let first = fingerprint(b"bhk_first");
        throttle.remember(first);
        assert!(throttle.is_known(&first));
        assert!(!throttle.is_known(&fingerprint(b"bhk_other")));
        for i in 0..MAX_KNOWN {
            throttle.remember(fingerprint(&i.to_le_bytes()));
        }
        let known = throttle.known.lock().unwrap();
        assert!(known.len() <= MAX_KNOWN);
    }
}
