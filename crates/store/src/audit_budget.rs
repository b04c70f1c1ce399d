//! The audit trail's size budget (`[audit] max_size`, T09, T01). Past 80 %
//! the writer warns (log, metric, one `audit.nearly_full` record). At 90 %
//! sourced (traffic) events stop: one `audit.traffic_full` record, and from
//! then on they are only counted; the last 10 % is kept for unsourced
//! admin, security and system events, so that anonymous traffic cannot
//! leave a key creation, a secret change or a deploy unwritten. At 100 %
//! one `audit.full` record, and from then on every event is only counted
//! (`audit.suppressed`, at most one a minute), so the trail cannot fill the
//! disk. `audit.chain_broken` is always written.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tracing::{error, warn};

use crate::audit::{AuditEvent, CHAIN_BROKEN, GENESIS};
use crate::audit_spill::{RECOVERED, SPILL_REJECTED};

/// Records written whatever the budget says (T09): a break, and what a
/// spill file became. A spill taken in is known as such only by its
/// `audit.recovered` record, so suppressing it would let a copy of the
/// file be taken in again.
fn always_written(kind: &str) -> bool {
    kind == CHAIN_BROKEN || kind == RECOVERED || kind == SPILL_REJECTED
}

/// Share of the budget past which the writer warns.
const WARN_PERCENT: u64 = 80;

/// Share of the budget sourced (traffic) events may fill; the rest is kept
/// for unsourced admin, security and system events (T09).
const TRAFFIC_PERCENT: u64 = 90;

/// Bytes counted per record beyond its fields and hashes: the row's
/// header and rowid, its entry in the time index, the correlation index's
/// entry beyond the ID itself, B-tree page slack. Calibrated against SQLite
/// (pages used per 4000 records, `t09_the_audit_size_estimate_tracks_sqlites_usage`):
/// the estimate is within a few per cent for request records and over,
/// never under, for small ones. It is an estimate, not the file's size
/// (the WAL, freed pages and other tables are not counted).
const RECORD_OVERHEAD: u64 = 72;

/// How often, at most, a full trail gets an `audit.suppressed` count.
const SUPPRESSED_EVERY_MS: i64 = 60_000;

/// An event the writer holds to the size budget.
#[derive(Clone)]
pub(crate) struct Pending {
    pub event: AuditEvent,
    pub time_ms: i64,
    /// Caused by traffic (sourced): stops at [`TRAFFIC_PERCENT`] of the
    /// budget.
    pub traffic: bool,
}

impl Pending {
    pub fn system(event: AuditEvent, time_ms: i64) -> Self {
        Self {
            event,
            time_ms,
            traffic: false,
        }
    }
}

/// The size budget's state in the writer.
#[derive(Default)]
pub(crate) struct Budget {
    /// Events not written because the trail (or its traffic share) is
    /// full, by kind.
    suppressed: BTreeMap<String, u64>,
    /// When the oldest of them came (0: none pending).
    suppressed_since: i64,
    /// Warned (log) that the trail is past 80 % of its budget.
    warned: bool,
}

/// The trail's bookkeeping: its size and budget from `audit_meta`
/// (unkeyed: an estimate and a setting), the break count from the keyed
/// head.
pub(crate) struct Meta {
    pub size_bytes: u64,
    pub max_bytes: u64,
    pub breaks: u64,
}

/// A record's approximate size on disk: its fields, its two hashes, its
/// correlation ID a second time (its index holds a copy) and
/// [`RECORD_OVERHEAD`].
fn record_bytes(event: &AuditEvent) -> u64 {
    let text = |v: &Option<String>| v.as_ref().map_or(0, String::len);
    let detail = Value::Object(event.detail.clone()).to_string().len();
    u64::try_from(
        event.kind.len()
            + 2 * text(&event.correlation_id)
            + text(&event.subject)
            + text(&event.function)
            + detail
            + 2 * GENESIS.len(),
    )
    .unwrap_or(u64::MAX)
    .saturating_add(RECORD_OVERHEAD)
}

/// The size sourced (traffic) events may fill the trail to.
pub(crate) fn traffic_max(max: u64) -> u64 {
    max / 100 * TRAFFIC_PERCENT
}

impl Budget {
    /// Events counted and not yet on the record.
    pub fn has_counts(&self) -> bool {
        !self.suppressed.is_empty()
    }

    /// Hold `events` to the size budget: what fits is returned to be
    /// written; past the budget, events are only counted. Traffic stops at
    /// [`TRAFFIC_PERCENT`], other events at 100 %; breaks are always
    /// written.
    pub fn apply(
        &mut self,
        events: Vec<Pending>,
        meta: &mut Meta,
        flush: bool,
        now: i64,
    ) -> Vec<(AuditEvent, i64)> {
        let max = meta.max_bytes;
        let warn_at = max / 100 * WARN_PERCENT;
        let traffic_at = traffic_max(max);
        if meta.size_bytes >= warn_at && !self.warned {
            self.warned = true;
            warn!(
                target: "bulkhead::audit",
                size_bytes = meta.size_bytes,
                max_size_bytes = max,
                "the audit trail is past 80 % of its size budget ([audit] max_size); raise it or archive the trail before it is full"
            );
        }
        let mut out = Vec::with_capacity(events.len());
        let add = |out: &mut Vec<_>, meta: &mut Meta, event: AuditEvent, time: i64| {
            let before = meta.size_bytes;
            meta.size_bytes = before.saturating_add(record_bytes(&event));
            out.push((event, time));
            before
        };
        let mark = |out: &mut Vec<_>, meta: &mut Meta, kind: &str| {
            let event = AuditEvent::new(kind)
                .detail("size_bytes", meta.size_bytes)
                .detail("max_size_bytes", max);
            add(out, meta, event, now);
        };
        for Pending {
            event,
            time_ms,
            traffic,
        } in events
        {
            // T09: traffic cannot spend the part kept for admin events.
            let limit = if traffic { traffic_at } else { max };
            if !always_written(&event.kind) && meta.size_bytes >= limit {
                *self.suppressed.entry(event.kind).or_insert(0) += 1;
                if self.suppressed_since == 0 {
                    self.suppressed_since = time_ms;
                }
                continue;
            }
            let before = add(&mut out, meta, event, time_ms);
            // Each mark is written once, by whichever record reaches it
            // (the marks count too).
            let crossed = |meta: &Meta, at: u64| before < at && meta.size_bytes >= at;
            if crossed(meta, warn_at) {
                mark(&mut out, meta, "audit.nearly_full");
            }
            if crossed(meta, traffic_at) {
                error!(
                    target: "bulkhead::audit",
                    size_bytes = meta.size_bytes,
                    max_size_bytes = max,
                    "the audit trail reached 90 % of its size budget ([audit] max_size): from now on request and guest events are counted, not written; the rest is kept for admin and security events"
                );
                mark(&mut out, meta, "audit.traffic_full");
            }
            if crossed(meta, max) {
                error!(
                    target: "bulkhead::audit",
                    size_bytes = meta.size_bytes,
                    max_size_bytes = max,
                    "the audit trail reached its size budget ([audit] max_size): from now on events are counted, not written"
                );
                mark(&mut out, meta, "audit.full");
            }
        }
        if !self.suppressed.is_empty()
            && (flush || now - self.suppressed_since >= SUPPRESSED_EVERY_MS)
        {
            let kinds = std::mem::take(&mut self.suppressed);
            let total: u64 = kinds.values().sum();
            let event = AuditEvent::new("audit.suppressed")
                .detail("events", total)
                .detail("kinds", json!(kinds))
                .detail("since_ms", self.suppressed_since);
            self.suppressed_since = 0;
            add(&mut out, meta, event, now);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(kind: &str, traffic: bool) -> Pending {
        Pending {
            event: AuditEvent::new(kind),
            time_ms: 1,
            traffic,
        }
    }

    fn kinds(out: &[(AuditEvent, i64)]) -> Vec<&str> {
        out.iter().map(|(e, _)| e.kind.as_str()).collect()
    }

    /// T09: between 90 % and 100 % traffic is counted and admin events are
    /// written; past 100 % only a break is.
    #[test]
    fn traffic_stops_at_ninety_percent_admin_at_a_hundred_breaks_never() {
        let mut budget = Budget::default();
        let mut meta = Meta {
            size_bytes: 9_000,
            max_bytes: 10_000,
            breaks: 0,
        };
        let out = budget.apply(
            vec![
                pending("request.refused", true),
                pending("key.created", false),
            ],
            &mut meta,
            false,
            1,
        );
        assert_eq!(kinds(&out), ["key.created"]);
        assert_eq!(budget.suppressed.get("request.refused"), Some(&1));

        meta.size_bytes = 10_000;
        let out = budget.apply(
            vec![
                pending("secret.set", false),
                pending(CHAIN_BROKEN, false),
                pending(RECOVERED, false),
                pending(SPILL_REJECTED, false),
            ],
            &mut meta,
            true,
            1,
        );
        assert_eq!(
            kinds(&out),
            [CHAIN_BROKEN, RECOVERED, SPILL_REJECTED, "audit.suppressed"]
        );
        assert!(!budget.has_counts());
    }

    /// Crossing 90 % writes one `audit.traffic_full` mark, once.
    #[test]
    fn the_traffic_mark_is_written_once() {
        let mut budget = Budget::default();
        let mut meta = Meta {
            size_bytes: 8_990,
            max_bytes: 10_000,
            breaks: 0,
        };
        let out = budget.apply(
            (0..5).map(|_| pending("request.refused", true)).collect(),
            &mut meta,
            false,
            1,
        );
        assert_eq!(kinds(&out), ["request.refused", "audit.traffic_full"]);
    }
}
