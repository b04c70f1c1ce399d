//! W3C Trace Context (`traceparent`): a valid one is continued, anything
//! else starts a new trace. The trace ID is the request's correlation ID
//! (T08).

use http::HeaderMap;

/// The response header carrying the correlation ID.
pub const CORRELATION_HEADER: &str = "bulkhead-correlation-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: String,
    /// The span ID of this hop, handed to the function as its parent.
    span_id: String,
    /// The caller's span ID, when its trace is continued.
    parent_span_id: Option<String>,
    flags: u8,
}

impl TraceContext {
    /// Continue the caller's trace if its `traceparent` is valid; start one otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let continued = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match continued {
            Some((trace_id, parent_span_id, flags)) => Self {
                trace_id,
                span_id: random_hex::<8>(),
                parent_span_id: Some(parent_span_id),
                flags,
            },
            None => Self {
                trace_id: random_hex::<16>(),
                span_id: random_hex::<8>(),
                parent_span_id: None,
                flags: 0,
            },
        }
    }

    /// The trace a queued message belongs to (issue 18): the sender's
    /// correlation ID, when it is a trace ID, continued with a new span
    /// (one trace across the hop, T08); a new trace otherwise.
    pub(crate) fn continuing(correlation_id: &str) -> Self {
        let valid = correlation_id.len() == 32
            && correlation_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && correlation_id.bytes().any(|b| b != b'0');
        Self {
            trace_id: if valid {
                correlation_id.to_string()
            } else {
                random_hex::<16>()
            },
            span_id: random_hex::<8>(),
            parent_span_id: None,
            flags: 0,
        }
    }

    /// A new trace, for a schedule's run (issue 18).
    pub(crate) fn fresh() -> Self {
        Self::from_headers(&HeaderMap::new())
    }

    /// A constant context: what `bench/costs` serves when it measures the
    /// cost of correlation (issue 17). Never in a build without the
    /// `bench-stages` feature.
    #[cfg(feature = "bench-stages")]
    pub(crate) fn constant() -> Self {
        Self {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            parent_span_id: None,
            flags: 0,
        }
    }

    /// The 16-hex-digit span ID of this hop: the span exported for this
    /// request, and the parent of what the function does.
    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// The caller's span ID, when its `traceparent` was continued.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.parent_span_id.as_deref()
    }

    /// Did the caller (or this hop) decide to record the trace?
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// This hop records the trace: say so to the function and its calls.
    pub fn mark_sampled(&mut self) {
        self.flags |= SAMPLED;
    }

    /// The correlation ID: the 32-hex-digit trace ID.
    pub fn correlation_id(&self) -> &str {
        &self.trace_id
    }

    /// The `traceparent` for the function's view of the request.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// `version-traceid-parentid-flags`, lowercase hex, no all-zero IDs.
fn parse_traceparent(value: &str) -> Option<(String, String, u8)> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    // Version 00 has exactly four fields; later versions may append more.
    let valid = is_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && is_hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && is_hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && is_hex(flags, 2);
    if !valid {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_string(), parent_id.to_string(), flags))
}

/// IDs need to be unique and unguessable, not secret: the thread's CSPRNG
/// (seeded and reseeded from the OS) spares a system call per request.
fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    // Into one buffer: `hex::encode` builds the string a char at a time,
    // ~2 % of a refusal's CPU (issue 17).
    let mut out = vec![0u8; 2 * N];
    match hex::encode_to_slice(bytes, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| hex::encode(bytes)),
        Err(_) => hex::encode(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", value.parse().unwrap());
        h
    }

    #[test]
    fn continues_a_valid_trace() {
        let ctx = TraceContext::from_headers(&headers(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(ctx.correlation_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            ctx.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        assert!(ctx.traceparent().ends_with("-01"));
        assert!(!ctx.traceparent().contains("00f067aa0ba902b7"));
        assert_eq!(ctx.parent_span_id(), Some("00f067aa0ba902b7"));
        assert!(ctx.sampled());
    }

    #[test]
    fn a_new_trace_is_unsampled_until_this_hop_records_it() {
        let mut ctx = TraceContext::from_headers(&HeaderMap::new());
        assert_eq!(ctx.parent_span_id(), None);
        assert!(!ctx.sampled());
        assert!(ctx.traceparent().ends_with("-00"));
        ctx.mark_sampled();
        assert!(ctx.traceparent().ends_with("-01"));
        assert_eq!(ctx.traceparent().split('-').nth(2), Some(ctx.span_id()));
    }

    #[test]
    fn starts_a_new_trace_for_anything_invalid() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let ctx = TraceContext::from_headers(&headers(bad));
            assert_ne!(
                ctx.correlation_id(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert_eq!(ctx.correlation_id().len(), 32);
        }
    }
}
