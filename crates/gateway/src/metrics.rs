//! Prometheus metrics (T08): requests by function and status, latency,
//! refusals by reason, requests outstanding and live sandboxes. Labels come
//! only from the manifest and from our own reason names, never from
//! request input, so a client cannot blow up the series count.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    function: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    scope: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: String,
}

type Share = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    queue: String,
    outcome: String,
}

/// Schedules and queues (issue 18): labels are manifest names only.
#[derive(Default)]
pub(crate) struct EventMetrics {
    depth: Family<QueueLabels, Gauge>,
    oldest_age: Family<QueueLabels, Share>,
    deliveries: Family<DeliveryLabels, Counter>,
    retries: Family<QueueLabels, Counter>,
    dead_letters: Family<QueueLabels, Counter>,
    firings: Family<FunctionLabels, Counter>,
    skipped: Family<FunctionLabels, Counter>,
    depth_exceeded: Counter,
    depth_exceeded_seen: AtomicU64,
    chain_exhausted: Counter,
    chain_exhausted_seen: AtomicU64,
}

impl EventMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "queue_depth",
            "Messages in a queue not yet acknowledged (ready, in flight, waiting out a retry, or parked)",
            self.depth.clone(),
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest message in a queue (0 when empty)",
            self.oldest_age.clone(),
        );
        registry.register(
            "queue_deliveries",
            "Messages handed to their consuming function, by outcome (acked, failed)",
            self.deliveries.clone(),
        );
        registry.register(
            "queue_retries",
            "Failed deliveries to be retried after a back-off",
            self.retries.clone(),
        );
        registry.register(
            "queue_dead_letters",
            "Messages dead-lettered (or parked) after their last failed delivery",
            self.dead_letters.clone(),
        );
        registry.register(
            "schedule_firings",
            "Schedule runs started, by function",
            self.firings.clone(),
        );
        registry.register(
            "schedule_skipped",
            "Schedule firings skipped because the previous run was still going (overlap)",
            self.skipped.clone(),
        );
        registry.register(
            "event_depth_exceeded",
            "Messages stopped because their chain of events passed max_event_depth (T04)",
            self.depth_exceeded.clone(),
        );
        registry.register(
            "event_chain_exhausted",
            "Messages stopped because their chain of events had sent max_event_messages (T04)",
            self.chain_exhausted.clone(),
        );
    }

    pub(crate) fn delivered(&self, queue: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                queue: queue.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub(crate) fn retried(&self, queue: &str) {
        self.retries
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .inc();
    }

    pub(crate) fn dead_lettered(&self, queue: &str) {
        self.dead_letters
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .inc();
    }

    pub(crate) fn fired(&self, function: &str) {
        self.firings
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .inc();
    }

    pub(crate) fn skipped(&self, function: &str) {
        self.skipped
            .get_or_create(&FunctionLabels {
                function: function.to_string(),
            })
            .inc();
    }

    /// A queue's depth and the age of its oldest message, read just now.
    pub(crate) fn set_queue(&self, queue: &str, depth: u64, oldest_age_seconds: f64) {
        let labels = QueueLabels {
            queue: queue.to_string(),
        };
        self.depth
            .get_or_create(&labels)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.oldest_age
            .get_or_create(&labels)
            .set(oldest_age_seconds);
    }

    /// The data plane's count of messages stopped at the chain's limit.
    pub(crate) fn set_chain_exhausted(&self, total: u64) {
        let seen = self
            .chain_exhausted_seen
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
        if total > seen {
            self.chain_exhausted.inc_by(total - seen);
        }
    }

    /// The data plane's count of messages stopped at the depth limit.
    pub(crate) fn set_depth_exceeded(&self, total: u64) {
        let seen = self
            .depth_exceeded_seen
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
        if total > seen {
            self.depth_exceeded.inc_by(total - seen);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<FunctionLabels, Histogram>,
    refusals: Family<ReasonLabels, Counter>,
    outstanding: Family<FunctionLabels, Gauge>,
    live_instances: Gauge,
    budget_used: Family<BudgetLabels, Share>,
    throttle_shedding: Gauge,
    throttle_limit: Gauge,
    throttle_signals: Family<SignalLabels, Share>,
    audit: AuditGauges,
    /// Log lines the log writer dropped (T09, issue 17).
    log_dropped: Counter,
    log_dropped_seen: AtomicU64,
    /// Schedules and queues (issue 18).
    pub(crate) events: EventMetrics,
}

/// The audit trail's state (T09): its head, recorded breaks, dropped
/// events and size against its budget.
#[derive(Default)]
struct AuditGauges {
    head_seq: Gauge,
    chain_breaks: Gauge,
    dropped: Counter,
    /// What `dropped` has counted so far, to add only the difference.
    dropped_seen: std::sync::atomic::AtomicU64,
    size_bytes: Gauge,
    max_size_bytes: Gauge,
    size_ratio: Share,
    full: Gauge,
    traffic_full: Gauge,
    /// Answers sent before their records were durable (issue 19).
    not_durable: Counter,
    not_durable_seen: std::sync::atomic::AtomicU64,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// `cluster`: the shared limits' metrics, when the node has them.
    pub(crate) fn new(cluster: Option<&crate::cluster::ClusterMetrics>) -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<FunctionLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        let outstanding = Family::<FunctionLabels, Gauge>::default();
        let live_instances = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by function and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response, by function",
            duration.clone(),
        );
        registry.register(
            "refusals",
            "Requests refused or failed, by reason",
            refusals.clone(),
        );
        registry.register(
            "outstanding_requests",
            "Requests running or queued, by function",
            outstanding.clone(),
        );
        registry.register(
            "live_instances",
            "WebAssembly instances alive right now",
            live_instances.clone(),
        );
        let budget_used = Family::<BudgetLabels, Share>::default();
        registry.register(
            "budget_used_ratio",
            "Share of today's budget used (the largest of its limits), app-wide and by function",
            budget_used.clone(),
        );
        let throttle_shedding = Gauge::default();
        registry.register(
            "throttle_shedding",
            "1 while the dynamic throttle sheds new requests",
            throttle_shedding.clone(),
        );
        let throttle_limit = Gauge::default();
        registry.register(
            "throttle_limit",
            "Requests the dynamic throttle lets be active (body read) app-wide; 0 while it sets no limit",
            throttle_limit.clone(),
        );
        let throttle_signals = Family::<SignalLabels, Share>::default();
        registry.register(
            "throttle_signal_ratio",
            "The load signals the dynamic throttle last sampled",
            throttle_signals.clone(),
        );
        let audit = AuditGauges::default();
        registry.register(
            "audit_head_seq",
            "The audit chain's last record, as anchored in the head file",
            audit.head_seq.clone(),
        );
        registry.register(
            "audit_chain_breaks",
            "Breaks the audit writers found and recorded (tampering or rollback); anything above 0 needs investigating",
            audit.chain_breaks.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit events dropped because the writer's queue was full or their caller held its share of it (counted, by caller, in an audit.dropped record)",
            audit.dropped.clone(),
        );
        registry.register(
            "audit_size_bytes",
            "The audit trail's approximate size",
            audit.size_bytes.clone(),
        );
        registry.register(
            "audit_max_size_bytes",
            "The audit trail's size budget ([audit] max_size)",
            audit.max_size_bytes.clone(),
        );
        registry.register(
            "audit_size_ratio",
            "Share of the audit trail's size budget used; a warning is logged at 0.8",
            audit.size_ratio.clone(),
        );
        registry.register(
            "audit_full",
            "1 once the audit trail reached its size budget: events are counted, not written",
            audit.full.clone(),
        );
        registry.register(
            "audit_traffic_full",
            "1 once the audit trail reached 90 % of its size budget: request and guest events are counted, not written; admin and security events still are",
            audit.traffic_full.clone(),
        );
        registry.register(
            "audit_answers_not_durable",
            "Answers sent before their call's audit records were durable: the audit writer did not commit within the wait's bound (1 s), or could not write them (counted in an audit.dropped record)",
            audit.not_durable.clone(),
        );
        if let Some(cluster) = cluster {
            registry.register(
                "cluster_limits_fallback",
                "Per-caller rate-limit checks this node decided alone, at its share of the limit (the limit divided by the live nodes last counted), and failed-authentication back-off checks it decided by its own back-off, because Redis did not answer within [cluster] check_timeout (issue 16)",
                cluster.fallback.clone(),
            );
            registry.register(
                "cluster_nodes",
                "Live nodes sharing the limits, as last counted in Redis (or [cluster] fallback_nodes before any count)",
                cluster.nodes.clone(),
            );
            registry.register(
                "cluster_limits_degraded",
                "1 while Redis is unreachable and this node decides per-caller limits alone, at its share",
                cluster.degraded.clone(),
            );
        }
        let log_dropped = Counter::default();
        registry.register(
            "log_dropped",
            "Log lines dropped because the log writer's queue was full or its sink failed; a summary line says how many once it catches up (the audit trail is never dropped this way)",
            log_dropped.clone(),
        );
        let events = EventMetrics::default();
        events.register(&mut registry);
        Self {
            events,
            log_dropped,
            log_dropped_seen: AtomicU64::new(0),
            audit,
            registry,
            requests,
            duration,
            refusals,
            outstanding,
            live_instances,
            budget_used,
            throttle_shedding,
            throttle_limit,
            throttle_signals,
        }
    }

    pub fn observe(&self, function: &str, status: u16, seconds: f64, refusal: Option<&str>) {
        self.requests
            .get_or_create(&RequestLabels {
                function: function.to_string(),
                status,
            })
            .inc();
        if !function.is_empty() {
            self.duration
                .get_or_create(&FunctionLabels {
                    function: function.to_string(),
                })
                .observe(seconds);
        }
        if let Some(reason) = refusal {
            self.refuse(reason);
        }
    }

    pub fn refuse(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn set_budget_shares(&self, shares: Vec<(Option<&str>, f64)>) {
        for (function, share) in shares {
            let labels = BudgetLabels {
                scope: if function.is_some() {
                    "function"
                } else {
                    "app"
                }
                .to_string(),
                function: function.unwrap_or("").to_string(),
            };
            self.budget_used.get_or_create(&labels).set(share);
        }
    }

    pub fn set_throttle(&self, shedding: bool, signals: crate::throttle::Signals) {
        self.throttle_shedding.set(i64::from(shedding));
        self.throttle_limit.set(signals.limit.map_or(0, i64::from));
        for (name, value) in [
            ("cpu", signals.cpu),
            ("memory", signals.memory),
            ("in_flight", signals.in_flight),
        ] {
            self.throttle_signals
                .get_or_create(&SignalLabels {
                    signal: name.to_string(),
                })
                .set(value);
        }
    }

    pub fn set_audit(&self, status: bulkhead_store::AuditStatus) {
        let gauges = &self.audit;
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauges.head_seq.set(status.head_seq);
        gauges.chain_breaks.set(int(status.chain_breaks));
        let seen = gauges
            .dropped_seen
            .fetch_max(status.dropped, std::sync::atomic::Ordering::Relaxed);
        if status.dropped > seen {
            gauges.dropped.inc_by(status.dropped - seen);
        }
        gauges.size_bytes.set(int(status.size_bytes));
        gauges.max_size_bytes.set(int(status.max_size_bytes));
        if status.max_size_bytes > 0 {
            gauges
                .size_ratio
                .set(status.size_bytes as f64 / status.max_size_bytes as f64);
        }
        gauges.full.set(i64::from(status.full));
        gauges.traffic_full.set(i64::from(status.traffic_full));
        let seen = gauges
            .not_durable_seen
            .fetch_max(status.not_durable, std::sync::atomic::Ordering::Relaxed);
        if status.not_durable > seen {
            gauges.not_durable.inc_by(status.not_durable - seen);
        }
    }

    /// The registry in OpenMetrics text, with the gauges read just now.
    pub fn render<'a>(
        &self,
        live: u64,
        outstanding: impl Iterator<Item = (&'a str, u32)>,
    ) -> String {
        self.live_instances
            .set(i64::try_from(live).unwrap_or(i64::MAX));
        for (function, count) in outstanding {
            self.outstanding
                .get_or_create(&FunctionLabels {
                    function: function.to_string(),
                })
                .set(i64::from(count));
        }
        let dropped = crate::access_log::dropped();
        let seen = self
            .log_dropped_seen
            .fetch_max(dropped, std::sync::atomic::Ordering::Relaxed);
        if dropped > seen {
            self.log_dropped.inc_by(dropped - seen);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
