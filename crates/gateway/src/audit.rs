//! The gateway's audit events (T09): every refusal and every sandbox limit
//! hit becomes an audit record beside its log line.

use bulkhead_store::{AuditEvent, AuditLog};

/// The audit kind for a problem slug.
fn kind_of(slug: &str) -> &'static str {
    match slug {
        "function-timeout" | "memory-limit" | "stack-overflow" | "response-too-large"
        | "capacity" => "sandbox.limit",
        "function-trapped" | "no-response" | "function-error" | "internal" => "function.failed",
        "too-many-requests" | "queue-timeout" | "auth-backoff" => "request.throttled",
        "unauthenticated" | "invalid-token" => "auth.failed",
        "insufficient-scope" => "authz.denied",
        _ => "request.refused",
    }
}

pub struct RequestFacts<'a> {
    pub correlation_id: &'a str,
    pub function: &'a str,
    pub subject: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub reason: &'a str,
    pub detail: &'a str,
}

pub fn refusal(audit: &AuditLog, facts: RequestFacts<'_>) {
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
    audit.record(event);
}

/// A connection refused before any request could be read.
pub fn listener_refusal(audit: &AuditLog, peer: &str, reason: &str) {
    audit.record(
        AuditEvent::new("listener.refused")
            .detail("peer", peer)
            .detail("reason", reason),
    );
}
