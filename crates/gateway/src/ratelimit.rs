//! Per-caller rate limits (T02, T03): a GCRA limiter per scope, keyed by
//! [`Caller`]. Over the limit, the request is refused before its body is
//! read, with the time until the caller may try again.
//!
//! Two backends (issue 16): in this process (governor, the default: one
//! node), or shared by every node through Redis ([`crate::cluster`], when
//! `[cluster]` names a Redis). [`Limiter`] dispatches statically, so the
//! in-process check costs what it did; [`admit_each`] checks a request's
//! scopes, the shared ones in one Redis call.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bulkhead_manifest::RateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::caller::Caller;
use crate::cluster::{ClusterLimits, SharedLimiter};

impl Limiter {
    /// [`Limiter::admit`] for a path that cannot wait (the sign-in
    /// endpoints, issue 15): a shared limit is checked at this node's
    /// share, never looser.
    pub(crate) fn check(&self, caller: &Caller) -> Result<(), Duration> {
        match self {
            Self::Local(limiter) => limiter.check(caller),
            Self::Shared(limiter) => limiter.check_share(caller),
        }
    }
}

/// The limiter of one scope: in this process, or shared through Redis.
pub(crate) enum Limiter {
    Local(CallerLimiter),
    Shared(SharedLimiter),
}

impl Limiter {
    /// `scope`: `app`, or `fn:NAME`; `cluster`, the shared limits if any.
    pub(crate) fn new(
        limit: &RateLimit,
        scope: &str,
        cluster: Option<&std::sync::Arc<ClusterLimits>>,
    ) -> Self {
        match cluster {
            Some(cluster) => Self::Shared(SharedLimiter::new(cluster, scope, limit)),
            None => Self::Local(CallerLimiter::new(limit)),
        }
    }
}

/// `Err(wait)` when `caller` is over any of `limiters` (the app's, then
/// the function's): the request path. Local ones are decided here and
/// now; shared ones in one Redis call for all (one round trip per
/// request, issue 16's cost target), counted in none when one refuses.
pub(crate) async fn admit_each(
    limiters: [Option<&Limiter>; 2],
    caller: &Caller,
) -> Result<(), Duration> {
    let mut shared: [Option<&SharedLimiter>; 2] = [None, None];
    for (limiter, slot) in limiters.into_iter().zip(shared.iter_mut()) {
        match limiter {
            Some(Limiter::Local(limiter)) => limiter.check(caller)?,
            Some(Limiter::Shared(limiter)) => *slot = Some(limiter),
            None => {}
        }
    }
    // Boxed: the request's future does not grow by the Redis call's.
    match shared {
        [None, None] => Ok(()),
        [Some(one), None] | [None, Some(one)] => {
            Box::pin(SharedLimiter::check_all(&[one], caller)).await
        }
        [Some(app), Some(function)] => {
            Box::pin(SharedLimiter::check_all(&[app, function], caller)).await
        }
    }
}

/// Keys tracked before idle ones are swept.
const SWEEP_ABOVE: usize = 50_000;
/// Checks between sweeps of idle keys.
const SWEEP_EVERY: u32 = 4096;

/// A GCRA limiter per key (governor) whose idle keys are swept, so a flood
/// of new keys cannot grow it without bound.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
    checks: AtomicU32,
}

/// Per-caller rate limit of one scope (the app or a function).
pub type CallerLimiter = KeyedLimiter<Caller>;

impl CallerLimiter {
    pub fn new(limit: &RateLimit) -> Self {
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(limit.interval().max(Duration::from_nanos(1)))
            .map_or_else(|| Quota::per_second(burst), |q| q.allow_burst(burst));
        Self::with_quota(quota)
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn with_quota(quota: Quota) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            checks: AtomicU32::new(0),
        }
    }

    /// `Err(wait)` when `key` is over its rate.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
            && self.limiter.len() > SWEEP_ABOVE
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_waits_about_one_interval() {
        let limiter = CallerLimiter::new(&RateLimit {
            count: 1,
            period: Duration::from_secs(60),
            burst: 3,
        });
        let caller = Caller::of(None, "192.0.2.1".parse().unwrap());
        for _ in 0..3 {
            assert!(limiter.check(&caller).is_ok());
        }
        let wait = limiter.check(&caller).unwrap_err();
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        // Another caller has its own allowance.
        let other = Caller::of(None, "192.0.2.2".parse().unwrap());
        assert!(limiter.check(&other).is_ok());
    }
}
