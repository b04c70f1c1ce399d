//! RFC 9457 problem responses. Every refusal the gateway makes is one: a
//! stable `type`, a title, a detail written by us (never an echo of the
//! input) and the correlation ID.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Where problem types live; `type` is this plus the problem's slug.
pub const PROBLEM_BASE: &str = "https://bulkhead.dev/problems/";

/// A refusal or failure, before it becomes a response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable machine-readable name: the last segment of `type`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Seconds the client should wait before retrying (`Retry-After`).
    pub retry_after: Option<u64>,
    /// Methods the route accepts (`Allow`, for 405).
    pub allow: Option<String>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn allow(mut self, methods: String) -> Self {
        self.allow = Some(methods);
        self
    }

    pub fn into_response(self, correlation_id: &str) -> Response<Bytes> {
        let body = serde_json::json!({
            "type": format!("{PROBLEM_BASE}{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "correlation_id": correlation_id,
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(header::ALLOW, allow);
        }
        response
    }
}
