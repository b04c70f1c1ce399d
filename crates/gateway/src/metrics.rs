//! Prometheus metrics (T08): requests by function and status, latency,
//! refusals by reason, requests outstanding and live sandboxes. Labels come
//! only from the manifest and from our own reason names, never from
//! request input, so a client cannot blow up the series count.

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
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
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
        Self {
            registry,
            requests,
            duration,
            refusals,
            outstanding,
            live_instances,
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
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
