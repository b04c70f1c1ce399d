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
//!
//! The same folding serves the admin listener's refusals (per peer, IPv6
//! by /64) and is there for the listener's (`listener.refused`): one
//! [`Refusals`] folds every kind, keyed by kind, reason, function and
//! caller.
//!
//! Every record here is recorded with its caller as its source
//! ([`AuditLog::record_from`]), so that one caller's refusals can fill only
//! that caller's share of the audit writer's queue and the traffic share
//! of the trail's size budget, never another caller's or the operator's
//! (T09).
//!
//! Whatever a client wrote (path, method, subject, user agent, ...) goes
//! into a log or audit record only through [`client_text`], which caps it,
//! so one record cannot carry kilobytes of attacker-chosen text (T09).

use bulkhead_store::{AuditEvent, AuditLog, Ticket, now_ms};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::caller::Caller;

/// The most bytes of one client-supplied string a log or audit record
/// keeps, the cut marker included (T09).
pub const MAX_CLIENT_TEXT: usize = 256;
/// Room kept for the marker `…[cut, N bytes]` (at most 36 bytes).
const MARKER_ROOM: usize = 40;

/// `text` as a log or audit record may hold it: at most
/// [`MAX_CLIENT_TEXT`] bytes; a longer text is cut on a character boundary
/// and ends with a marker naming its original length. Applying it twice
/// changes nothing. The one place the gateway bounds what clients write
/// into the record (T09).
pub fn client_text(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_CLIENT_TEXT {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_CLIENT_TEXT - MARKER_ROOM;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[cut, {} bytes]", &text[..end], text.len()))
}

/// The audit kind for a problem slug.
fn kind_of(slug: &str) -> &'static str {
    match slug {
        "function-timeout" | "memory-limit" | "stack-overflow" | "response-too-large"
        | "capacity" => "sandbox.limit",
        "function-trapped" | "no-response" | "function-error" | "internal" => "function.failed",
        "too-many-requests" | "rate-limited" | "overloaded" | "budget-exhausted"
        | "budget-held" | "queue-timeout" | "auth-backoff" => "request.throttled",
        "unauthenticated" | "invalid-token" | "login-failed" | "login-state-invalid" => {
            "auth.failed"
        }
        "insufficient-scope" | "cross-site-request" => "authz.denied",
        _ => "request.refused",
    }
}

/// How long an answer waits, at most, for its call's audit records to be
/// durable (group commit, issue 19): past it, it goes out anyway and is
/// counted (`audit_answers_not_durable`). A batch commits in milliseconds;
/// only a writer that cannot write (the database locked by another process,
/// a full disk) takes this long.
pub const DURABLE_WAIT: Duration = Duration::from_secs(1);

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

/// One refusal as folding sees it.
pub struct Fold<'a> {
    /// The audit kind, like `admin.refused`.
    pub kind: &'static str,
    pub reason: &'static str,
    /// The function, or empty for the listeners.
    pub function: &'a str,
    /// Who was refused: the key each second's window is kept for.
    pub caller: &'a Caller,
    /// The HTTP status answered, or 0 when none was (a dropped connection).
    pub status: u16,
    /// Empty when no request was read.
    pub correlation_id: &'a str,
}

/// What an admin request refusal records.
pub struct AdminFacts<'a> {
    pub correlation_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub reason: &'static str,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct RepeatKey {
    kind: &'static str,
    reason: &'static str,
    function: Box<str>,
    caller: Arc<str>,
}

/// How [`Refusals::record_folded`] recorded a refusal.
pub enum Recorded {
    /// In full, with its ticket (`None`: dropped, and counted).
    Full(Option<Ticket>),
    /// Counted into its second's window (written as the window closes).
    Folded,
}

impl Recorded {
    pub fn ticket(self) -> Option<Ticket> {
        match self {
            Self::Full(ticket) => ticket,
            Self::Folded => None,
        }
    }
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
    /// A refused request of the public listener: the ticket of its record
    /// when it was recorded in full (the first of its second), `None` when
    /// it was only counted. Only a full record is waited for: a flood of
    /// refusals is answered at the speed of a counter (issue 19).
    pub fn record(&self, audit: &AuditLog, facts: RequestFacts<'_>) -> Option<Ticket> {
        match facts.caller {
            Some(caller) => self
                .record_folded(
                    audit,
                    Fold {
                        kind: kind_of(facts.reason),
                        reason: facts.reason,
                        function: facts.function,
                        caller,
                        status: facts.status,
                        correlation_id: facts.correlation_id,
                    },
                    || full_record(&facts),
                )
                .ticket(),
            // Not reached from the pipeline, which names the caller first.
            None => audit.record(full_record(&facts)),
        }
    }

    /// A refused admin request, folded per peer (IPv6 by /64) and second.
    pub fn record_admin(&self, audit: &AuditLog, peer: IpAddr, facts: AdminFacts<'_>) {
        let caller = Caller::of(None, peer);
        self.record_folded(
            audit,
            Fold {
                kind: "admin.refused",
                reason: facts.reason,
                function: "",
                caller: &caller,
                status: facts.status,
                correlation_id: facts.correlation_id,
            },
            || {
                AuditEvent::new("admin.refused")
                    .correlation_id(facts.correlation_id)
                    .detail("reason", facts.reason)
                    .detail("status", facts.status)
                    .detail("method", client_text(facts.method))
                    .detail("path", client_text(facts.path))
                    .detail("caller", caller.key().as_ref())
            },
        );
    }

    /// A connection the listener refused before reading a request, folded
    /// per peer (IPv6 by /64) and second, like [`Self::record_admin`].
    /// Returns whether it was recorded in full (the first of its second):
    /// only that one is logged, so a flood of connections cannot fill the
    /// disk through the log either (T09).
    #[must_use]
    pub fn record_listener(&self, audit: &AuditLog, peer: IpAddr, reason: &'static str) -> bool {
        let recorded = self.record_listener_folded(audit, peer, reason);
        matches!(recorded, Recorded::Full(_))
    }

    fn record_listener_folded(
        &self,
        audit: &AuditLog,
        peer: IpAddr,
        reason: &'static str,
    ) -> Recorded {
        let caller = Caller::of(None, peer);
        self.record_folded(
            audit,
            Fold {
                kind: "listener.refused",
                reason,
                function: "",
                caller: &caller,
                status: 0,
                correlation_id: "",
            },
            || {
                AuditEvent::new("listener.refused")
                    .detail("peer", peer.to_string())
                    .detail("reason", reason)
            },
        )
    }

    /// Record `full()` if it is the first refusal of its kind, reason,
    /// function and caller this second; otherwise only count it. A window
    /// of an earlier second is recorded as it closes.
    pub fn record_folded(
        &self,
        audit: &AuditLog,
        fold: Fold<'_>,
        full: impl FnOnce() -> AuditEvent,
    ) -> Recorded {
        let mut key = RepeatKey {
            kind: fold.kind,
            reason: fold.reason,
            function: fold.function.into(),
            caller: fold.caller.key(),
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
                    fold.correlation_id
                        .clone_into(&mut window.last_correlation_id);
                    return Recorded::Folded;
                }
                Some(window) => {
                    let fresh = Window::new(second, fold.status);
                    Some(std::mem::replace(window, fresh))
                }
                None => {
                    windows.insert(key.clone(), Window::new(second, fold.status));
                    None
                }
            }
        };
        if let Some(window) = closed.filter(|w| w.folded > 0) {
            audit.record_from(key.caller.clone(), summary(&key, &window));
        }
        Recorded::Full(audit.record_from(fold.caller.key(), full()))
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
            audit.record_from(key.caller.clone(), summary(key, window));
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
        .detail("method", client_text(facts.method))
        .detail("path", client_text(facts.path));
    if !facts.subject.is_empty() {
        event = event.subject(client_text(facts.subject));
    }
    if !facts.detail.is_empty() {
        event = event.detail("detail", client_text(facts.detail));
    }
    event
}

/// The refusals folded into one second's window, after its first.
fn summary(key: &RepeatKey, window: &Window) -> AuditEvent {
    let caller = client_text(&key.caller);
    let mut event = AuditEvent::new(key.kind)
        .detail("reason", key.reason)
        .detail("caller", caller.as_ref())
        .detail("repeated", window.folded)
        .detail("second", window.second);
    if !key.function.is_empty() {
        event = event.function(&*key.function);
    }
    if window.status != 0 {
        event = event.detail("status", window.status);
    }
    if !window.last_correlation_id.is_empty() {
        event = event.detail("last_correlation_id", window.last_correlation_id.as_str());
    }
    if let Some(subject) = caller.strip_prefix("sub:") {
        event = event.subject(subject);
    }
    event
}

fn unix_second() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
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
    fn client_text_is_cut_on_a_char_boundary_with_a_marker_t09() {
        assert_eq!(client_text("/short"), "/short");
        let exact = "a".repeat(MAX_CLIENT_TEXT);
        assert_eq!(client_text(&exact), exact.as_str());
        // A two-byte character straddles the cut: it is dropped whole.
        let keep = MAX_CLIENT_TEXT - MARKER_ROOM;
        let long = format!("{}é{}", "a".repeat(keep - 1), "b".repeat(8000));
        let cut = client_text(&long);
        assert_eq!(
            cut,
            format!("{}…[cut, {} bytes]", "a".repeat(keep - 1), long.len())
        );
        assert!(cut.len() <= MAX_CLIENT_TEXT);
        assert_eq!(client_text(&cut), cut, "cutting twice changes nothing");
        let huge = "x".repeat(1 << 20);
        assert!(client_text(&huge).len() <= MAX_CLIENT_TEXT);
    }

    /// T09: admin and listener refusals fold per peer (IPv6 by /64) and
    /// second like request refusals; every refusal is counted and no
    /// record carries more than the cap of the client's path.
    #[test]
    fn admin_and_listener_refusals_fold_per_peer_t09() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = AuditLog::start(&store).unwrap();
        let refusals = Refusals::default();
        let path = format!("/{}", "A".repeat(8192));
        let peers: [IpAddr; 3] = [
            "2001:db8:1:2::1".parse().unwrap(),
            "2001:db8:1:2::ffff".parse().unwrap(),
            "192.0.2.7".parse().unwrap(),
        ];
        for _ in 0..500 {
            for peer in peers {
                refusals.record_admin(
                    &audit,
                    peer,
                    AdminFacts {
                        correlation_id: "0af7651916cd43dd8448eb211c80319c",
                        method: "GET",
                        path: &path,
                        status: 401,
                        reason: "admin-token-missing",
                    },
                );
                let _ = refusals.record_listener(&audit, peer, "header-timeout");
            }
        }
        refusals.flush(&audit, true);
        audit.flush();
        for kind in ["admin.refused", "listener.refused"] {
            let records = store
                .query_audit(&AuditQuery {
                    kind: Some(kind.into()),
                    ..AuditQuery::default()
                })
                .unwrap();
            let full = records
                .iter()
                .filter(|r| r.detail["repeated"].is_null())
                .count() as u64;
            let folded: u64 = records
                .iter()
                .filter_map(|r| r.detail["repeated"].as_u64())
                .sum();
            assert_eq!(full + folded, 1500, "{kind}");
            // Two callers (one /64, one IPv4): a few records, not 1500.
            assert!(records.len() <= 2 * 2 * 3, "{kind}: {}", records.len());
            assert!(
                records
                    .iter()
                    .any(|r| r.detail["caller"] == "ip:2001:db8:1:2::"),
                "{kind}"
            );
            for record in &records {
                assert!(record.detail.to_string().len() < 1024, "{kind}");
            }
        }
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
