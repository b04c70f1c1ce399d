//! The gateway's audit events (T09): every refusal and every sandbox limit
//! hit becomes an audit record beside its log line.
//!
//! A flood repeats one refusal (the same reason, function and caller)
//! thousands of times a second. Writing each in full would let the flood
//! fill the disk through the audit trail and starve the writer, so that
//! the events that matter get dropped (T01, T09). So refusals are folded:
//! the first of each second for a (reason, function, caller) is recorded in
//! full, and the rest of that second become one record counting them
//! (`repeated`), naming the caller and the last correlation ID. However
//! fast a caller is refused, it adds at most two records a second per
//! reason and function. Each refused request still has its own access-log
//! line with its correlation ID and detail.

use bulkhead_store::{AuditEvent, AuditLog, now_ms};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::caller::Caller;

/// The audit kind for a problem slug.
fn kind_of(slug: &str) -> &'static str {
    match slug {
        "function-timeout" | "memory-limit" | "stack-overflow" | "response-too-large"
        | "capacity" => "sandbox.limit",
        "function-trapped" | "no-response" | "function-error" | "internal" => "function.failed",
        "too-many-requests" | "rate-limited" | "overloaded" | "budget-exhausted"
        | "budget-held" | "queue-timeout" | "auth-backoff" => "request.throttled",
        "unauthenticated" | "invalid-token" => "auth.failed",
        "insufficient-scope" => "authz.denied",
        _ => "request.refused",
    }
}

/// At most this many (reason, function, caller) windows are open at once.
/// Past it (a flood from more callers than that, say many IPv6 /64s), new
/// callers share one window per reason and function, caller `*`.
const MAX_WINDOWS: usize = 4096;

/// The caller of the shared window past [`MAX_WINDOWS`].
const MANY_CALLERS: &str = "*";

pub struct RequestFacts<'a> {
    pub correlation_id: &'a str,
    pub function: &'a str,
    pub subject: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub reason: &'static str,
    pub detail: &'a str,
    /// Who was refused, once known: what folding keys on.
    pub caller: Option<&'a Caller>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct RepeatKey {
    reason: &'static str,
    function: Box<str>,
    caller: Arc<str>,
}

/// One second of one repeated refusal.
struct Window {
    second: u64,
    status: u16,
    folded: u64,
    last_correlation_id: String,
}

/// Records refusals, folding the repeats of a flood.
#[derive(Default)]
pub struct Refusals {
    windows: Mutex<HashMap<RepeatKey, Window>>,
}

impl Refusals {
    pub fn record(&self, audit: &AuditLog, facts: RequestFacts<'_>) {
        if let Some(caller) = facts.caller {
            let mut key = RepeatKey {
                reason: facts.reason,
                function: facts.function.into(),
                caller: caller.key(),
            };
            let second = unix_second();
            let closed = {
                let mut windows = self.lock();
                if windows.len() >= MAX_WINDOWS && !windows.contains_key(&key) {
                    key.caller = MANY_CALLERS.into();
                }
                match windows.get_mut(&key) {
                    Some(window) if window.second == second => {
                        window.folded += 1;
                        facts
                            .correlation_id
                            .clone_into(&mut window.last_correlation_id);
                        return;
                    }
                    Some(window) => {
                        let fresh = Window::new(second, facts.status);
                        Some(std::mem::replace(window, fresh))
                    }
                    None => {
                        windows.insert(key.clone(), Window::new(second, facts.status));
                        None
                    }
                }
            };
            if let Some(window) = closed.filter(|w| w.folded > 0) {
                audit.record(summary(facts.reason, facts.function, &key.caller, &window));
            }
        }
        audit.record(full_record(&facts));
    }

    /// Record the folded count of every window before this second (or of
    /// all of them, at shutdown) and forget those windows.
    pub fn flush(&self, audit: &AuditLog, all: bool) {
        let second = unix_second();
        let closed: HashMap<RepeatKey, Window> = {
            let mut windows = self.lock();
            // `!=`, not `<`: a wall clock stepped back must not hold a
            // window open until it catches up.
            let (closed, open) = windows
                .drain()
                .partition(|(_, window)| all || window.second != second);
            *windows = open;
            closed
        };
        for (key, window) in closed.iter().filter(|(_, w)| w.folded > 0) {
            audit.record(summary(key.reason, &key.function, &key.caller, window));
        }
    }

    /// The windows; a panic elsewhere while holding them leaves counts
    /// that are still worth recording.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RepeatKey, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Window {
    fn new(second: u64, status: u16) -> Self {
        Self {
            second,
            status,
            folded: 0,
            last_correlation_id: String::new(),
        }
    }
}

fn full_record(facts: &RequestFacts<'_>) -> AuditEvent {
    let mut event = AuditEvent::new(kind_of(facts.reason))
        .correlation_id(facts.correlation_id)
        .function(facts.function)
        .detail("reason", facts.reason)
        .detail("status", facts.status)
        .detail("method", facts.method)
        .detail("path", facts.path);
    if !facts.subject.is_empty() {
        event = event.subject(facts.subject);
    }
    if !facts.detail.is_empty() {
        event = event.detail("detail", facts.detail);
    }
    event
}

/// The refusals folded into one second's window, after its first.
fn summary(reason: &str, function: &str, caller: &str, window: &Window) -> AuditEvent {
    let mut event = AuditEvent::new(kind_of(reason))
        .function(function)
        .detail("reason", reason)
        .detail("status", window.status)
        .detail("caller", caller)
        .detail("repeated", window.folded)
        .detail("second", window.second)
        .detail("last_correlation_id", window.last_correlation_id.as_str());
    if let Some(subject) = caller.strip_prefix("sub:") {
        event = event.subject(subject);
    }
    event
}

fn unix_second() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

/// A connection refused before any request could be read.
pub fn listener_refusal(audit: &AuditLog, peer: &str, reason: &str) {
    audit.record(
        AuditEvent::new("listener.refused")
            .detail("peer", peer)
            .detail("reason", reason),
    );
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use bulkhead_store::{AuditQuery, Store};

    use super::*;

    /// T09 under a flood from more callers than there are windows (an
    /// IPv6 attacker with many /64s): the newcomers share one window, so
    /// the trail still grows by a bounded number of records a second, and
    /// every refusal is still counted.
    #[test]
    fn past_the_window_cap_new_callers_share_one_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = AuditLog::start(&store).unwrap();
        let refusals = Refusals::default();
        let callers: Vec<Caller> = (0..MAX_WINDOWS + 500)
            .map(|i| {
                let net = Ipv6Addr::new(0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1);
                Caller::of(None, IpAddr::V6(net))
            })
            .collect();
        let first = unix_second();
        for _ in 0..3 {
            for caller in &callers {
                refusals.record(
                    &audit,
                    RequestFacts {
                        correlation_id: "0af7651916cd43dd8448eb211c80319c",
                        function: "hello",
                        subject: "",
                        method: "GET",
                        path: "/",
                        status: 429,
                        reason: "rate-limited",
                        detail: "",
                        caller: Some(caller),
                    },
                );
            }
        }
        let seconds = unix_second() - first + 1;
        refusals.flush(&audit, true);
        audit.flush();

        let records = store
            .query_audit(&AuditQuery {
                kind: Some("request.throttled".into()),
                ..AuditQuery::default()
            })
            .unwrap();
        let full = records
            .iter()
            .filter(|r| r.correlation_id.is_some())
            .count() as u64;
        let folded: u64 = records
            .iter()
            .filter_map(|r| r.detail["repeated"].as_u64())
            .sum();
        assert_eq!(full + folded, 3 * callers.len() as u64);
        assert!(
            full <= (MAX_WINDOWS as u64 + 1) * seconds,
            "{full} full records in {seconds} s"
        );
        assert!(records.iter().any(|r| r.detail["caller"] == MANY_CALLERS));
    }

    #[test]
    fn flood_refusals_are_throttle_kinds() {
        for reason in [
            "rate-limited",
            "overloaded",
            "too-many-requests",
            "budget-exhausted",
            "budget-held",
            "queue-timeout",
            "auth-backoff",
        ] {
            assert_eq!(kind_of(reason), "request.throttled", "{reason}");
        }
    }
}
