//! Per-caller rate limits shared by every node through Redis (issue 16,
//! T02, T03). Each check is one atomic server-side script (GCRA, after
//! rwz/redis-gcra and redis-cell: `gcra.lua`), so a caller's limit holds
//! across nodes exactly while Redis answers: every node counts against the
//! same key, on Redis's clock.
//!
//! The request path never waits long for Redis: a check that takes more
//! than `[cluster] check_timeout` (50 ms by default) or fails is decided
//! locally, and the node turns
//! *degraded*: until Redis answers a heartbeat again (each
//! [`HEARTBEAT_EVERY`]), every check is decided by a local governor
//! limiter holding this node's share of the limit (the limit divided by
//! the live nodes last counted in Redis, or by `[cluster] fallback_nodes`
//! before any count; at least 1). Never "no limit". The switch is logged
//! once each way and each local decision is counted in the metric
//! `bulkhead_cluster_limits_fallback`.
//!
//! Redis also holds the failed-authentication back-off (T03,
//! `backoff.lua`: one atomic script per failure, the same rules as the
//! node-local back-off, keyed by a hash of the client's network) and each
//! node's load for the dynamic throttle (T01: published with the
//! heartbeat, `nodes.lua`). Both fall back to the node's own view while
//! Redis does not answer: the local back-off (never none), the local load.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_manifest::RateLimit;
use bulkhead_manifest::cluster::SecretUrl;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::caller::Caller;
use crate::ratelimit::CallerLimiter;

/// How often a node says it is alive, and probes Redis while degraded.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node that has not beaten for this long is no longer counted.
const NODE_TTL: Duration = Duration::from_secs(5);
/// The heartbeat's own bound: off the request path, so longer.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the shared limits cannot start. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the Redis URL is not one the client accepts ({kind})")]
    Url { kind: String },
}

/// What `/metrics` shows of the shared limits.
#[derive(Clone, Default)]
pub(crate) struct ClusterMetrics {
    /// Rate-limit checks decided by the local share, and failed-auth
    /// back-off checks decided by the local back-off (Redis unreachable).
    pub fallback: Counter,
    /// Live nodes last counted in Redis.
    pub nodes: Gauge,
    /// 1 while this node decides limits locally.
    pub degraded: Gauge,
}

/// The Redis side of one app's shared limits: a lazily connected,
/// self-reconnecting connection, this node's heartbeat and what it knows
/// of the others.
pub struct ClusterLimits {
    connection: ConnectionManager,
    gcra: redis::Script,
    heartbeat: redis::Script,
    backoff: redis::Script,
    /// `KEY_PREFIX:APP:ENV`: every key starts with it.
    prefix: String,
    node: String,
    /// Live nodes last counted (or `fallback_nodes` before any count).
    nodes: AtomicU32,
    degraded: AtomicBool,
    /// The longest a request waits for Redis before deciding locally.
    check_timeout: Duration,
    pub(crate) metrics: ClusterMetrics,
    /// This node's throttle signals (CPU, memory, in-flight), published
    /// with each heartbeat; `None` without a dynamic throttle.
    own_load: Mutex<Option<[f64; 3]>>,
    /// The mean signals of the live nodes reporting one, and when counted.
    cluster_load: Mutex<Option<(Instant, [f64; 3])>>,
}

/// A cluster load older than this many heartbeats is not used.
const LOAD_FRESH_BEATS: u32 = 3;
/// Signals travel as millionths.
const LOAD_SCALE: f64 = 1_000_000.0;

impl ClusterLimits {
    /// Connect lazily to `url` (nothing is sent yet) and start this
    /// node's heartbeat. Must run inside the tokio runtime.
    pub fn start(
        url: &SecretUrl,
        app: &str,
        env: &str,
        cluster: &bulkhead_manifest::Cluster,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = redis::Client::open(url.expose()).map_err(|e| ClusterError::Url {
            kind: format!("{:?}", e.kind()),
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(HEARTBEAT_TIMEOUT))
            .set_response_timeout(Some(HEARTBEAT_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(HEARTBEAT_EVERY);
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            ClusterError::Url {
                kind: format!("{:?}", e.kind()),
            }
        })?;
        let mut id = [0u8; 8];
        rand::fill(&mut id);
        let limits = Arc::new(Self {
            connection,
            gcra: redis::Script::new(include_str!("gcra.lua")),
            heartbeat: redis::Script::new(include_str!("nodes.lua")),
            backoff: redis::Script::new(include_str!("backoff.lua")),
            prefix: format!("{}:{app}:{env}", cluster.key_prefix),
            node: hex::encode(id),
            nodes: AtomicU32::new(cluster.fallback_nodes.max(1)),
            degraded: AtomicBool::new(false),
            check_timeout: cluster.check_timeout,
            metrics: ClusterMetrics::default(),
            own_load: Mutex::new(None),
            cluster_load: Mutex::new(None),
        });
        limits
            .metrics
            .nodes
            .set(i64::from(cluster.fallback_nodes.max(1)));
        tokio::spawn(beat(Arc::downgrade(&limits)));
        Ok(limits)
    }

    /// The nodes sharing the limits, as last known; at least 1.
    pub fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::Relaxed).max(1)
    }

    fn degrade(&self, why: &str) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.metrics.degraded.set(1);
            warn!(
                target: "bulkhead::cluster",
                reason = why,
                nodes = self.nodes(),
                "Redis is unreachable: per-caller limits are now this node's share (the limit divided by the live nodes last counted); the failed-authentication back-off and the throttle's load are this node's own"
            );
        }
    }

    fn recover(&self, nodes: u32) {
        self.nodes.store(nodes.max(1), Ordering::Relaxed);
        self.metrics.nodes.set(i64::from(nodes.max(1)));
        if self.degraded.swap(false, Ordering::Relaxed) {
            self.metrics.degraded.set(0);
            info!(
                target: "bulkhead::cluster",
                nodes,
                "Redis answers again: per-caller limits, the failed-authentication back-off and the throttle's load are shared across nodes again"
            );
        }
    }

    /// One heartbeat: register this node (and publish its load), count
    /// the live ones; their mean load, if any reports one.
    async fn beat_once(&self) -> Result<(u32, Option<[f64; 3]>), String> {
        let load = match *self.own_load.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(signals) => signals
                .iter()
                .map(|s| format!("{}", (s.clamp(0.0, 1.0) * LOAD_SCALE).round() as u64))
                .collect::<Vec<_>>()
                .join(":"),
            None => String::new(),
        };
        let mut connection = self.connection.clone();
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(format!("{}:nodes", self.prefix))
            .key(format!("{}:load", self.prefix))
            .arg(&self.node)
            .arg(u64::try_from(NODE_TTL.as_millis()).unwrap_or(u64::MAX))
            .arg(load);
        let answer: Vec<i64> =
            match tokio::time::timeout(HEARTBEAT_TIMEOUT, invocation.invoke_async(&mut connection))
                .await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => return Err(format!("{:?}", e.kind())),
                Err(_) => return Err("timeout".into()),
            };
        let nodes = answer
            .first()
            .and_then(|n| u32::try_from(*n).ok())
            .unwrap_or(1);
        let mean = match (answer.get(1), answer.get(2..5)) {
            (Some(&reporting), Some(sums)) if reporting > 0 => {
                let mean = |sum: i64| (sum as f64 / reporting as f64 / LOAD_SCALE).clamp(0.0, 1.0);
                Some([mean(sums[0]), mean(sums[1]), mean(sums[2])])
            }
            _ => None,
        };
        Ok((nodes, mean))
    }

    /// Whether Redis is to be asked (not degraded).
    fn answering(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
    }

    /// A check decided locally: counted, and the node degraded if Redis
    /// failed just now (`why`).
    fn fell_back(&self, why: Option<&str>) {
        if let Some(why) = why {
            self.degrade(why);
        }
        self.metrics.fallback.inc();
    }

    /// Run `invocation` within the request path's bound.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.check_timeout, invocation.invoke_async(&mut connection))
            .await
        {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{:?}", e.kind())),
            Err(_) => Err("timeout".into()),
        }
    }

    /// Run `command` within the request path's bound.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, String> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.check_timeout, command.query_async(&mut connection)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{:?}", e.kind())),
            Err(_) => Err("timeout".into()),
        }
    }

    /// The dynamic throttle's signals on this node (T01), for the next
    /// heartbeat.
    pub(crate) fn publish_load(&self, signals: [f64; 3]) {
        *self.own_load.lock().unwrap_or_else(|p| p.into_inner()) = Some(signals);
    }

    /// The mean throttle signals of the live nodes, this one included,
    /// while Redis answers and the count is fresh; else `None` (the
    /// throttle then goes by this node's signals alone).
    pub(crate) fn cluster_load(&self) -> Option<[f64; 3]> {
        if !self.answering() {
            return None;
        }
        let load = *self.cluster_load.lock().unwrap_or_else(|p| p.into_inner());
        let (at, mean) = load?;
        (at.elapsed() <= HEARTBEAT_EVERY.saturating_mul(LOAD_FRESH_BEATS)).then_some(mean)
    }

    /// `PREFIX:auth:HASH:`: where the back-off of `network` lives. Hashed
    /// (with the prefix, so the same address is another key in another
    /// deployment): no address stored in Redis.
    fn backoff_key(&self, network: IpAddr) -> String {
        let mut hash = Sha256::new();
        hash.update(self.prefix.as_bytes());
        hash.update(b"\0auth\0");
        hash.update(network.to_string().as_bytes());
        format!(
            "{}:auth:{}",
            self.prefix,
            hex::encode(&hash.finalize()[..16])
        )
    }

    /// T03: how much longer `network` is shut out, across the cluster.
    /// `Err` when Redis did not answer (the caller decides locally).
    pub(crate) async fn backoff_blocked(&self, network: IpAddr) -> Result<Option<Duration>, ()> {
        if !self.answering() {
            self.fell_back(None);
            return Err(());
        }
        let mut command = redis::cmd("PTTL");
        command.arg(format!("{}:p", self.backoff_key(network)));
        match self.query::<i64>(&command).await {
            Ok(ms) => Ok(u64::try_from(ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)),
            Err(why) => {
                self.fell_back(Some(&why));
                Err(())
            }
        }
    }

    /// T03: count one failure from `network` across the cluster; the
    /// penalty that starts now, if one does. `Err` when Redis did not
    /// answer (the caller decides locally).
    pub(crate) async fn backoff_failed(
        &self,
        network: IpAddr,
        rules: &BackoffRules,
    ) -> Result<Option<Duration>, ()> {
        if !self.answering() {
            self.fell_back(None);
            return Err(());
        }
        let key = self.backoff_key(network);
        let mut invocation = self.backoff.prepare_invoke();
        invocation
            .key(format!("{key}:a"))
            .key(format!("{key}:s"))
            .key(format!("{key}:p"))
            .arg(micros(rules.allowance_interval))
            .arg(rules.allowance)
            .arg(micros(rules.decay))
            .arg(rules.max_strikes)
            .arg(millis(rules.first_penalty))
            .arg(millis(rules.max_penalty));
        match self.invoke::<i64>(invocation).await {
            Ok(ms) => Ok(u64::try_from(ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)),
            Err(why) => {
                self.fell_back(Some(&why));
                Err(())
            }
        }
    }

    /// `PREFIX:known:HASH`: a credential accepted on some node.
    fn known_key(&self, fingerprint: &[u8; 32]) -> String {
        format!("{}:known:{}", self.prefix, hex::encode(&fingerprint[..16]))
    }

    /// T03: whether a node of the cluster accepted the credential with
    /// this fingerprint (within `ttl`). `false` when Redis does not answer.
    pub(crate) async fn is_known(&self, fingerprint: &[u8; 32]) -> bool {
        if !self.answering() {
            return false;
        }
        let mut command = redis::cmd("EXISTS");
        command.arg(self.known_key(fingerprint));
        match self.query::<i64>(&command).await {
            Ok(found) => found > 0,
            Err(why) => {
                self.degrade(&why);
                false
            }
        }
    }

    /// T03: tell the other nodes that the credential with this
    /// fingerprint was accepted, for `ttl`. Off the request path.
    pub(crate) fn remember(self: &Arc<Self>, fingerprint: &[u8; 32], ttl: Duration) {
        if !self.answering() {
            return;
        }
        let key = self.known_key(fingerprint);
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut command = redis::cmd("SET");
            command.arg(key).arg(1).arg("PX").arg(millis(ttl));
            if let Err(why) = cluster.query::<()>(&command).await {
                cluster.degrade(&why);
            }
        });
    }
}

/// The back-off's rules, as the node-local one has them (T03).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackoffRules {
    /// Failures allowed at once, and the time for one to come back.
    pub allowance: u32,
    pub allowance_interval: Duration,
    /// The time for one strike to come back.
    pub decay: Duration,
    pub max_strikes: u32,
    pub first_penalty: Duration,
    pub max_penalty: Duration,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Beat every [`HEARTBEAT_EVERY`] while the limits are in use.
async fn beat(limits: std::sync::Weak<ClusterLimits>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        match limits.beat_once().await {
            Ok((nodes, load)) => {
                *limits
                    .cluster_load
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = load.map(|mean| (Instant::now(), mean));
                limits.recover(nodes);
            }
            Err(why) => limits.degrade(&why),
        }
    }
}

/// One scope's per-caller limit (the app's or a function's), held in
/// Redis, with this node's share as the fallback.
pub(crate) struct SharedLimiter {
    cluster: Arc<ClusterLimits>,
    /// `PREFIX:rl:SCOPE:`; the caller's hashed key follows.
    key: String,
    interval_us: u64,
    burst: u32,
    rate: RateLimit,
    /// The local share, built for a node count when first needed.
    fallback: Mutex<Option<(u32, Arc<CallerLimiter>)>>,
}

impl SharedLimiter {
    /// `scope`: `app`, or `fn:NAME` for a function's own limit.
    pub(crate) fn new(cluster: &Arc<ClusterLimits>, scope: &str, rate: &RateLimit) -> Self {
        let interval = rate.interval().max(Duration::from_micros(1));
        Self {
            key: format!("{}:rl:{scope}:", cluster.prefix),
            cluster: cluster.clone(),
            interval_us: u64::try_from(interval.as_micros()).unwrap_or(u64::MAX),
            burst: rate.burst.max(1),
            rate: *rate,
            fallback: Mutex::new(None),
        }
    }

    /// `Err(wait)` when `caller` is over any of `limiters` (one cluster's:
    /// the app's and the function's), across the cluster while Redis
    /// answers, in one script call, else over this node's share of each.
    pub(crate) async fn check_all(limiters: &[&Self], caller: &Caller) -> Result<(), Duration> {
        let Some(first) = limiters.first() else {
            return Ok(());
        };
        let cluster = &first.cluster;
        if !cluster.degraded.load(Ordering::Relaxed) {
            match Self::shared(cluster, limiters, caller).await {
                Ok(decision) => return decision,
                Err(why) => cluster.degrade(&why),
            }
        }
        for limiter in limiters {
            cluster.metrics.fallback.inc();
            limiter.local().check(caller)?;
        }
        Ok(())
    }

    /// This node's share alone, for a path that cannot wait on Redis.
    pub(crate) fn check_share(&self, caller: &Caller) -> Result<(), Duration> {
        self.local().check(caller)
    }

    async fn shared(
        cluster: &ClusterLimits,
        limiters: &[&Self],
        caller: &Caller,
    ) -> Result<Result<(), Duration>, String> {
        // Hashed: bounded keys, and no subject or address stored in Redis.
        let digest = hex::encode(&Sha256::digest(caller.key().as_bytes())[..16]);
        let mut connection = cluster.connection.clone();
        let mut invocation = cluster.gcra.prepare_invoke();
        for limiter in limiters {
            invocation
                .key(format!("{}{digest}", limiter.key))
                .arg(limiter.interval_us)
                .arg(limiter.burst);
        }
        let answer: (i64, i64) = match tokio::time::timeout(
            cluster.check_timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(format!("{:?}", e.kind())),
            Err(_) => return Err("timeout".into()),
        };
        Ok(match answer {
            (1, _) => Ok(()),
            (_, wait) => Err(Duration::from_micros(u64::try_from(wait).unwrap_or(0))),
        })
    }

    /// This node's share: the rate and burst divided by the live nodes.
    fn local(&self) -> Arc<CallerLimiter> {
        let nodes = self.cluster.nodes();
        let mut fallback = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
        match &*fallback {
            Some((n, limiter)) if *n == nodes => limiter.clone(),
            _ => {
                let limiter = Arc::new(CallerLimiter::new(&share(&self.rate, nodes)));
                *fallback = Some((nodes, limiter.clone()));
                limiter
            }
        }
    }
}

/// `rate` divided among `nodes`: each gets the rate over `nodes` and the
/// burst over `nodes` (rounded down, at least 1), so together they never
/// admit more than the whole limit, bar one request per node and burst.
pub(crate) fn share(rate: &RateLimit, nodes: u32) -> RateLimit {
    let nodes = nodes.max(1);
    RateLimit {
        count: rate.count,
        period: rate.period.saturating_mul(nodes),
        burst: (rate.burst / nodes).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_rate_and_burst_and_never_reaches_zero() {
        let rate = RateLimit {
            count: 10,
            period: Duration::from_secs(1),
            burst: 6,
        };
        let half = share(&rate, 2);
        assert_eq!(half.burst, 3);
        assert_eq!(half.interval(), Duration::from_millis(200));
        assert_eq!(share(&rate, 0), rate);
        let many = share(&rate, 100);
        assert_eq!(many.burst, 1);
        assert_eq!(many.interval(), Duration::from_secs(10));
    }
}
