//! Trace export (T08): one span per request, handed to an exporter that the
//! binary may plug in (the CLI's `otlp` feature). The gateway owns the trace
//! context, so each span carries the IDs the request already has: the trace
//! ID is the correlation ID, the span ID is the one the function sees as its
//! parent, and the parent is the caller's span when its trace was continued.

use std::time::SystemTime;

use crate::correlation::TraceContext;

/// Where request spans go.
pub trait SpanExport: Send + Sync {
    /// Is this request's span recorded? Asked as the request arrives, so the
    /// decision travels to the function and its outbound calls.
    fn sampled(&self, trace: &TraceContext) -> bool;
    /// Take a finished span of a sampled request; must not block.
    fn export(&self, span: RequestSpan<'_>);
    /// Send what is queued and stop; called once, when the server stops.
    fn shutdown(&self) -> Result<(), String>;
}

/// One finished request. It holds only what Bulkhead or the manifest
/// chose: never the path, a header, a body, a guest's words or a secret.
#[derive(Debug, Clone)]
pub struct RequestSpan<'a> {
    pub trace: &'a TraceContext,
    pub start: SystemTime,
    pub end: SystemTime,
    /// The function and its route, once the request was routed.
    pub function: Option<&'a str>,
    pub route: Option<&'a str>,
    /// One of the standard methods, else `_OTHER`: bounded, never echoed.
    pub method: &'static str,
    pub status: u16,
    /// The problem slug, when the request was refused or failed.
    pub refusal_reason: Option<&'static str>,
}

/// The request method as a span may carry it (OpenTelemetry's HTTP
/// conventions): a known method, else `_OTHER`.
pub(crate) fn method_name(method: &http::Method) -> &'static str {
    const KNOWN: &[&str] = &[
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|known| **known == method.as_str())
        .copied()
        .unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_name(&http::Method::POST), "POST");
        let long = http::Method::from_bytes(&[b'X'; 200]).unwrap();
        assert_eq!(method_name(&long), "_OTHER");
        let lower = http::Method::from_bytes(b"get").unwrap();
        assert_eq!(method_name(&lower), "_OTHER");
    }
}
