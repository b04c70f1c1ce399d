//! Bench-only stage switches (issue 17): `bench/costs` measures what each
//! pipeline stage costs by turning it off in turn. A stage with a manifest
//! switch (rate limit, throttle, metering, authentication) is turned off
//! there; the others are named in `BULKHEAD_BENCH_SKIP` (comma-separated:
//! `correlation`, `route`, `validation`, `admission`, `metrics`, `audit`).
//!
//! Only a binary built with the `bench-stages` feature reads that variable.
//! Without it [`skip`] is a constant `false` and the checks compile away,
//! so no production binary can turn a control off (T01, T02, T08, T09, T10
//! stay on whatever the environment says; tested in
//! `crates/cli/tests/bench_stages.rs`).

/// A stage of the pipeline that only the bench can turn off.
// Without the feature nothing reads `Correlation` (`trace_context` asks
// only in bench builds).
#[cfg_attr(not(feature = "bench-stages"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// A fresh trace and correlation ID per request (T08): a fixed one instead.
    Correlation,
    /// Decoding the path and finding the route: the first function instead.
    Route,
    /// Host, path parameter, query, header and body checks (T10).
    Validation,
    /// Fair admission: the app's and the function's gates (T01, T02).
    Admission,
    /// Prometheus counters and the latency histogram.
    Metrics,
    /// Audit: the refusal record and the wait for durable records (T09).
    Audit,
}

#[cfg(feature = "bench-stages")]
mod switches {
    use super::Stage;
    use std::sync::OnceLock;

    /// The variable naming the stages to skip.
    const VARIABLE: &str = "BULKHEAD_BENCH_SKIP";

    const ALL: [(&str, Stage); 6] = [
        ("correlation", Stage::Correlation),
        ("route", Stage::Route),
        ("validation", Stage::Validation),
        ("admission", Stage::Admission),
        ("metrics", Stage::Metrics),
        ("audit", Stage::Audit),
    ];

    fn bit(stage: Stage) -> u32 {
        1 << (stage as u32)
    }

    fn skipped() -> u32 {
        static SKIPPED: OnceLock<u32> = OnceLock::new();
        *SKIPPED.get_or_init(|| {
            let names = std::env::var(VARIABLE).unwrap_or_default();
            let mut mask = 0;
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match ALL.iter().find(|(known, _)| *known == name) {
                    Some((_, stage)) => mask |= bit(*stage),
                    None => tracing::warn!(stage = name, "{VARIABLE}: no such stage; ignored"),
                }
            }
            if mask != 0 {
                tracing::warn!(skip = %names, "bench build: pipeline stages turned off");
            }
            mask
        })
    }

    pub(crate) fn skip(stage: Stage) -> bool {
        skipped() & bit(stage) != 0
    }
}

/// Whether the bench turned `stage` off. Always `false` without the
/// `bench-stages` feature.
#[cfg(feature = "bench-stages")]
#[inline]
pub(crate) fn skip(stage: Stage) -> bool {
    switches::skip(stage)
}

/// Whether the bench turned `stage` off. Always `false` without the
/// `bench-stages` feature.
#[cfg(not(feature = "bench-stages"))]
#[inline(always)]
pub(crate) const fn skip(_stage: Stage) -> bool {
    false
}

/// The request's trace context (T08): continued or new, or a constant one
/// when the bench turned correlation off.
pub(crate) fn trace_context(headers: &http::HeaderMap) -> crate::correlation::TraceContext {
    #[cfg(feature = "bench-stages")]
    if skip(Stage::Correlation) {
        return crate::correlation::TraceContext::constant();
    }
    crate::correlation::TraceContext::from_headers(headers)
}
