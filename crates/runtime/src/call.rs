//! One call's context and its one reporter (T05, T07, T09): who is calling
//! (function, correlation ID, subject), the secrets it has read, its
//! deadline and the audit handle, built once per call in `invoke.rs`. Every
//! capability (kv, config and secrets, sql, outbound, sockets) reports its
//! uses, denials and failures through [`CallContext::report`].
//!
//! Reports are folded per call. A guest looping on a refused call would
//! otherwise write millions of log lines and audit records from one call,
//! stall worker threads on logging and push other calls' security records
//! out of the shared audit channel. So the first [`FULL_PER_KIND`] events
//! of each kind (audit kind and capability), and at most
//! [`MAX_FULL_PER_CALL`] in all, are logged and audited in full; the rest
//! are counted by kind, capability, resource and outcome, and one
//! `capability.folded` record (and one log line) ends the call with the
//! counts. The budget is checked before anything is formatted, so a folded
//! event costs a lock and a short scan, nothing more. One call therefore
//! adds at most `MAX_FULL_PER_CALL + 1` records to the audit channel.
//!
//! Folding bounds one call, not a caller running many calls at once or one
//! after another: every record is recorded from the caller key, so all of
//! one caller's calls together hold only that caller's share of the audit
//! queue, and its excess is counted under its key (T09).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bulkhead_store::{AuditEvent, AuditLog, CallTickets};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::data::Redactions;

/// Events of one kind (audit kind and capability) reported in full per call.
pub(crate) const FULL_PER_KIND: u32 = 16;
/// Events reported in full per call, all kinds together. With the summary,
/// one call adds at most 49 records to the audit channel.
pub(crate) const MAX_FULL_PER_CALL: u32 = 48;
/// Distinct (kind, capability, resource, outcome) counts kept per call;
/// past it, folded events are counted under `other`.
pub(crate) const MAX_FOLD_KEYS: usize = 64;

/// What happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// A granted use (`capability.used`).
    Used,
    /// A refusal (`capability.denied`).
    Denied,
    /// A sealed record failed authentication (`storage.integrity_failed`).
    IntegrityFailed,
    /// A backend failure or a limit hit: logged, not audited.
    Failed,
}

impl Kind {
    fn audit_kind(self) -> &'static str {
        match self {
            Self::Used => "capability.used",
            Self::Denied => "capability.denied",
            Self::IntegrityFailed => "storage.integrity_failed",
            Self::Failed => "capability.failed",
        }
    }
}

/// What the event is about, under the field name each capability has
/// always used in its log lines and audit records.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    /// A key-value store, a secret or a config key (`resource`).
    Resource(&'a str),
    /// A SQL store (`store`).
    Store(&'a str),
    /// An outbound URL (`destination`), redacted of the call's secrets.
    Destination(&'a str),
    /// A socket operation (`attempt`).
    Attempt(&'a str),
}

impl<'a> Target<'a> {
    fn field(self) -> &'static str {
        match self {
            Self::Resource(_) => "resource",
            Self::Store(_) => "store",
            Self::Destination(_) => "destination",
            Self::Attempt(_) => "attempt",
        }
    }

    fn value(self) -> &'a str {
        match self {
            Self::Resource(v) | Self::Store(v) | Self::Destination(v) | Self::Attempt(v) => v,
        }
    }
}

/// How it ended, under its field name.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome<'a> {
    /// Why it was refused (`reason`).
    Reason(&'a str),
    /// The access granted (`access`).
    Access(&'a str),
    /// The address connected to (`address`); not part of the folding key.
    Address(SocketAddr),
    /// A backend error, for the log only (`error`).
    Error(&'a str),
    /// The limit that was hit, for the log only (`limit`).
    Limit(&'a str),
    /// Nothing more to say.
    Nothing,
}

impl<'a> Outcome<'a> {
    fn field(self) -> &'static str {
        match self {
            Self::Reason(_) => "reason",
            Self::Access(_) => "access",
            Self::Address(_) => "address",
            Self::Error(_) => "error",
            Self::Limit(_) => "limit",
            Self::Nothing => "",
        }
    }

    /// The field name of [`Self::key`] in a summary ("" when none).
    fn key_field(self) -> &'static str {
        match self {
            Self::Address(_) => "",
            other => other.field(),
        }
    }

    /// The part that tells one folded event from another.
    fn key(self) -> &'a str {
        match self {
            Self::Reason(v) | Self::Access(v) | Self::Error(v) | Self::Limit(v) => v,
            Self::Address(_) | Self::Nothing => "",
        }
    }
}

/// One capability event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Report<'a> {
    pub kind: Kind,
    pub capability: &'static str,
    pub target: Target<'a>,
    pub outcome: Outcome<'a>,
}

/// The counts past the full records of one call. Pure bookkeeping, so it
/// can be tested alone.
#[derive(Default, Debug)]
pub(crate) struct Fold {
    /// Full records so far per (kind, capability).
    per_kind: Vec<(Kind, &'static str, u32)>,
    /// Full records so far, all kinds.
    full: u32,
    /// Folded events per key.
    folded: Vec<(FoldKey, u64)>,
    /// Folded events whose key did not fit under [`MAX_FOLD_KEYS`].
    other: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoldKey {
    kind: Kind,
    capability: &'static str,
    target_field: &'static str,
    resource: Box<str>,
    outcome_field: &'static str,
    outcome: Box<str>,
}

impl Fold {
    /// `true`: report this event in full. `false`: it was counted.
    pub fn admit(&mut self, report: &Report<'_>) -> bool {
        let (kind, capability) = (report.kind, report.capability);
        let index = match self
            .per_kind
            .iter()
            .position(|(k, c, _)| *k == kind && *c == capability)
        {
            Some(i) => i,
            None => {
                self.per_kind.push((kind, capability, 0));
                self.per_kind.len() - 1
            }
        };
        let used = &mut self.per_kind[index].2;
        if *used < FULL_PER_KIND && self.full < MAX_FULL_PER_CALL {
            *used += 1;
            self.full += 1;
            return true;
        }
        let (resource, outcome) = (report.target.value(), report.outcome.key());
        let found = self.folded.iter().position(|(key, _)| {
            key.kind == kind
                && key.capability == capability
                && *key.resource == *resource
                && *key.outcome == *outcome
        });
        match found {
            Some(i) => self.folded[i].1 += 1,
            None if self.folded.len() < MAX_FOLD_KEYS => self.folded.push((
                FoldKey {
                    kind,
                    capability,
                    target_field: report.target.field(),
                    resource: resource.into(),
                    outcome_field: report.outcome.key_field(),
                    outcome: outcome.into(),
                },
                1,
            )),
            None => self.other += 1,
        }
        false
    }

    /// Events counted rather than reported.
    pub fn folded(&self) -> u64 {
        self.folded.iter().map(|(_, n)| n).sum::<u64>() + self.other
    }

    /// Events reported in full.
    pub fn full(&self) -> u32 {
        self.full
    }

    /// The summary's entries, one per folded key; `redact` is applied to
    /// each destination.
    fn entries(&self, redact: impl Fn(&str) -> String) -> Vec<Value> {
        self.folded
            .iter()
            .map(|(key, count)| {
                let mut entry = Map::new();
                entry.insert("kind".into(), key.kind.audit_kind().into());
                entry.insert("capability".into(), key.capability.into());
                let resource = if key.target_field == "destination" {
                    redact(&key.resource)
                } else {
                    key.resource.to_string()
                };
                entry.insert(key.target_field.into(), resource.into());
                if !key.outcome_field.is_empty() {
                    entry.insert(key.outcome_field.into(), key.outcome.to_string().into());
                }
                entry.insert("count".into(), (*count).into());
                Value::Object(entry)
            })
            .collect()
    }
}

/// One call's identity and reporter; cheap to clone (the outbound hook and
/// the socket check hold clones). The fold summary is written when the
/// last clone goes, however the call ends.
#[derive(Clone)]
pub(crate) struct CallContext {
    inner: Arc<Inner>,
}

struct Inner {
    function: String,
    correlation_id: String,
    /// The verified subject of the request, if the route authenticates.
    subject: Option<String>,
    /// The caller key: every record of the call is recorded from it, so a
    /// caller running many calls fills only its own share of the audit
    /// queue (T09).
    caller: Arc<str>,
    audit: AuditLog,
    /// The last ticket of the call's records: the gateway waits for it to
    /// be durable before it answers (group commit, issue 19).
    tickets: CallTickets,
    /// Secret values read during the call: redacted from what is reported.
    redactions: Redactions,
    deadline: Instant,
    fold: Mutex<Fold>,
    /// Uses already reported by [`CallContext::used_once`]: only granted
    /// resources get here, so the list is as short as the grants.
    once: Mutex<Vec<(&'static str, Box<str>, &'static str)>>,
}

/// Log one capability event with the target under its own field name
/// (tracing needs the names at compile time).
macro_rules! log_target {
    ($level:ident, $inner:expr, $capability:expr, $target:expr, $message:expr $(, $($field:tt)+)?) => {
        match $target {
            Target::Resource(v) => tracing::$level!(
                target: "bulkhead::capability",
                function = %$inner.function,
                correlation_id = %$inner.correlation_id,
                capability = $capability,
                resource = v,
                $($($field)+,)?
                "{}", $message
            ),
            Target::Store(v) => tracing::$level!(
                target: "bulkhead::capability",
                function = %$inner.function,
                correlation_id = %$inner.correlation_id,
                capability = $capability,
                store = v,
                $($($field)+,)?
                "{}", $message
            ),
            Target::Destination(v) => tracing::$level!(
                target: "bulkhead::capability",
                function = %$inner.function,
                correlation_id = %$inner.correlation_id,
                capability = $capability,
                destination = v,
                $($($field)+,)?
                "{}", $message
            ),
            Target::Attempt(v) => tracing::$level!(
                target: "bulkhead::capability",
                function = %$inner.function,
                correlation_id = %$inner.correlation_id,
                capability = $capability,
                attempt = v,
                $($($field)+,)?
                "{}", $message
            ),
        }
    };
}

impl CallContext {
    pub fn new(
        function: String,
        correlation_id: String,
        subject: Option<String>,
        caller: Arc<str>,
        audit: (AuditLog, CallTickets),
        redactions: Redactions,
        deadline: Instant,
    ) -> Self {
        let (audit, tickets) = audit;
        Self {
            inner: Arc::new(Inner {
                function,
                correlation_id,
                subject,
                caller,
                audit,
                tickets,
                redactions,
                deadline,
                fold: Mutex::new(Fold::default()),
                once: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn function(&self) -> &str {
        &self.inner.function
    }

    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }

    pub fn redactions(&self) -> &Redactions {
        &self.inner.redactions
    }

    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// Report one event: in full while the call's budget lasts, else
    /// counted for the summary. Nothing is formatted before the check.
    pub fn report(&self, report: Report<'_>) {
        let full = {
            let mut fold = self.inner.fold.lock().unwrap_or_else(|p| p.into_inner());
            fold.admit(&report)
        };
        if full {
            self.emit(report);
        }
    }

    /// A refusal.
    pub fn deny(&self, capability: &'static str, target: Target<'_>, reason: &str) {
        self.report(Report {
            kind: Kind::Denied,
            capability,
            target,
            outcome: Outcome::Reason(reason),
        });
    }

    /// A granted use.
    pub fn used(&self, capability: &'static str, target: Target<'_>, outcome: Outcome<'_>) {
        self.report(Report {
            kind: Kind::Used,
            capability,
            target,
            outcome,
        });
    }

    /// A granted use reported once per call for each capability, resource
    /// and access: the privilege review (T16) needs to know that a store
    /// was written or a config key read, not how often.
    pub fn used_once(&self, capability: &'static str, target: Target<'_>, access: &'static str) {
        {
            let mut once = self.inner.once.lock().unwrap_or_else(|p| p.into_inner());
            let resource = target.value();
            if once
                .iter()
                .any(|(c, r, a)| *c == capability && **r == *resource && *a == access)
            {
                return;
            }
            once.push((capability, resource.into(), access));
        }
        self.used(capability, target, Outcome::Access(access));
    }

    fn emit(&self, report: Report<'_>) {
        let inner = &*self.inner;
        let redacted;
        let target = match report.target {
            Target::Destination(url) => {
                redacted = inner.redactions.apply_lowercase(url);
                Target::Destination(&redacted)
            }
            other => other,
        };
        let capability = report.capability;
        match (report.kind, report.outcome) {
            (Kind::Denied, outcome) => {
                let message = match capability {
                    "sql" => "SQL statement denied",
                    "outbound-http" => "outbound request denied",
                    "sockets" => "socket refused",
                    _ => "capability denied",
                };
                log_target!(
                    warn,
                    inner,
                    capability,
                    target,
                    message,
                    reason = outcome.key()
                );
            }
            (Kind::Used, Outcome::Address(address)) => {
                log_target!(info, inner, capability, target, "outbound request", address = %address);
            }
            (Kind::Used, outcome) => {
                log_target!(
                    info,
                    inner,
                    capability,
                    target,
                    "capability used",
                    access = outcome.key()
                );
            }
            (Kind::IntegrityFailed, _) => {
                log_target!(
                    error,
                    inner,
                    capability,
                    target,
                    "stored record failed authentication"
                );
            }
            (Kind::Failed, Outcome::Limit(limit)) => {
                log_target!(
                    warn,
                    inner,
                    capability,
                    target,
                    "SQL statement hit a limit",
                    limit = limit
                );
            }
            (Kind::Failed, outcome) => {
                log_target!(
                    warn,
                    inner,
                    capability,
                    target,
                    "capability backend failed",
                    error = outcome.key()
                );
            }
        }
        if report.kind == Kind::Failed {
            return;
        }
        let mut event = self
            .event(report.kind.audit_kind())
            .detail("capability", capability)
            .detail(target.field(), target.value());
        match report.outcome {
            Outcome::Reason(v) | Outcome::Access(v) => {
                event = event.detail(report.outcome.field(), v);
            }
            Outcome::Address(address) => event = event.detail("address", address.to_string()),
            Outcome::Error(_) | Outcome::Limit(_) | Outcome::Nothing => {}
        }
        inner
            .tickets
            .note(inner.audit.record_from(inner.caller.clone(), event));
    }

    /// An audit event about this call: who, which function, which request.
    fn event(&self, kind: &str) -> AuditEvent {
        let inner = &*self.inner;
        let event = AuditEvent::new(kind)
            .correlation_id(&inner.correlation_id)
            .function(&inner.function);
        match &inner.subject {
            Some(subject) => event.subject(subject),
            None => event,
        }
    }
}

impl Drop for Inner {
    /// The call is over: one record with what was folded, if anything was.
    fn drop(&mut self) {
        let fold = std::mem::take(self.fold.get_mut().unwrap_or_else(|p| p.into_inner()));
        let folded = fold.folded();
        if folded == 0 {
            return;
        }
        let redactions = &self.redactions;
        let entries = fold.entries(|text| redactions.apply_lowercase(text));
        let counts = Value::Array(entries);
        tracing::warn!(
            target: "bulkhead::capability",
            function = %self.function,
            correlation_id = %self.correlation_id,
            full = fold.full(),
            folded,
            other = fold.other,
            counts = %counts,
            "capability events folded"
        );
        let mut event = AuditEvent::new("capability.folded")
            .correlation_id(&self.correlation_id)
            .function(&self.function)
            .detail("full", fold.full())
            .detail("folded", folded)
            .detail("counts", counts);
        if fold.other > 0 {
            event = event.detail("other", fold.other);
        }
        if let Some(subject) = &self.subject {
            event = event.subject(subject);
        }
        // Waited for when the answer is whole; after a stream's head, not.
        self.tickets
            .note(self.audit.record_from(self.caller.clone(), event));
    }
}

/// What a summary says, for the tests.
#[cfg(test)]
fn summary_of(fold: &Fold) -> Value {
    serde_json::json!({ "full": fold.full(), "folded": fold.folded(), "counts": fold.entries(str::to_string), "other": fold.other })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied<'a>(capability: &'static str, resource: &'a str, reason: &'a str) -> Report<'a> {
        Report {
            kind: Kind::Denied,
            capability,
            target: Target::Resource(resource),
            outcome: Outcome::Reason(reason),
        }
    }

    /// T07, T09: a loop of one refusal gives 16 full records and a count
    /// of the rest; the counts add up.
    #[test]
    fn a_repeated_denial_is_folded_after_the_first_sixteen_t09() {
        let mut fold = Fold::default();
        let full = (0..100_000)
            .filter(|_| fold.admit(&denied("config", "nope", "not granted")))
            .count();
        assert_eq!(full, FULL_PER_KIND as usize);
        assert_eq!(fold.folded(), 100_000 - u64::from(FULL_PER_KIND));
        let summary = summary_of(&fold);
        assert_eq!(summary["counts"].as_array().map(Vec::len), Some(1));
        assert_eq!(summary["counts"][0]["resource"], "nope");
        assert_eq!(summary["counts"][0]["reason"], "not granted");
        assert_eq!(summary["counts"][0]["count"], 100_000 - 16);
    }

    /// Each kind has its own sixteen, and all kinds share one per-call cap.
    #[test]
    fn kinds_are_counted_apart_under_one_per_call_cap_t09() {
        let mut fold = Fold::default();
        let capabilities = ["config", "kv", "sockets", "sql", "outbound-http", "secret"];
        let mut full = 0;
        let mut total = 0u64;
        for capability in capabilities {
            for round in 0..1000 {
                let resource = format!("r{}", round % 3);
                total += 1;
                if fold.admit(&denied(capability, &resource, "no")) {
                    full += 1;
                }
            }
        }
        assert_eq!(full, MAX_FULL_PER_CALL);
        assert_eq!(fold.full(), MAX_FULL_PER_CALL);
        assert_eq!(u64::from(fold.full()) + fold.folded(), total);
        // Each kind had its sixteen until the call's cap was spent.
        let kept = |capability: &str| {
            fold.per_kind
                .iter()
                .find(|(_, c, _)| *c == capability)
                .map_or(0, |(_, _, n)| *n)
        };
        let whole = (MAX_FULL_PER_CALL / FULL_PER_KIND) as usize;
        for capability in &capabilities[..whole] {
            assert_eq!(kept(capability), FULL_PER_KIND, "{capability}");
        }
        for capability in &capabilities[whole..] {
            assert_eq!(kept(capability), 0, "{capability}");
        }
    }

    /// Distinct keys past the cap are still counted, under `other`.
    #[test]
    fn distinct_resources_past_the_key_cap_are_counted_as_other_t09() {
        let mut fold = Fold::default();
        let n = 10_000u64;
        let mut full = 0u64;
        for i in 0..n {
            if fold.admit(&denied("kv", &format!("store{i}"), "no")) {
                full += 1;
            }
        }
        assert_eq!(full, u64::from(FULL_PER_KIND));
        assert_eq!(fold.folded.len(), MAX_FOLD_KEYS);
        assert_eq!(fold.other, n - full - MAX_FOLD_KEYS as u64);
        assert_eq!(full + fold.folded(), n);
    }

    /// A used outbound request folds by destination, not by address.
    #[test]
    fn the_address_is_not_part_of_the_key() {
        let mut fold = Fold::default();
        for port in 0..100u16 {
            fold.admit(&Report {
                kind: Kind::Used,
                capability: "outbound-http",
                target: Target::Destination("https://api.example:443"),
                outcome: Outcome::Address(SocketAddr::from(([1, 1, 1, 1], port))),
            });
        }
        let summary = summary_of(&fold);
        assert_eq!(
            summary["counts"][0]["destination"],
            "https://api.example:443"
        );
        assert_eq!(summary["counts"][0]["count"], 100 - 16);
        assert!(summary["counts"][0].get("address").is_none());
    }
}
