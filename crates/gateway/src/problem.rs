//! RFC 9457 problem responses. Every refusal the gateway makes is one: a
//! stable `type`, a title, a detail written by us (never an echo of the
//! input) and the correlation ID.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde::Serialize;

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
    /// For validation refusals (T10): which field failed and which rule,
    /// as extension members. Both come from the manifest, the schema or
    /// the gateway, never from the request.
    check: Option<Box<(String, String)>>,
    /// Every problem found, for a refusal that has several (a deploy that
    /// fails verification, T19): written by us, naming files and lines.
    problems: Vec<String>,
    /// Headers the response carries besides the problem body.
    headers: Vec<(HeaderName, HeaderValue)>,
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
            check: None,
            problems: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Name the field and the rule a validation refusal is about.
    pub fn field(mut self, field: &str, rule: &str) -> Self {
        self.check = Some(Box::new((field.to_string(), rule.to_string())));
        self
    }

    /// List every problem found, as the `problems` extension member.
    pub fn problems(mut self, problems: Vec<String>) -> Self {
        self.problems = problems;
        self
    }

    /// Close the connection after this response: whatever else the client
    /// sent on it is never read as another request (request smuggling).
    pub fn close_connection(self) -> Self {
        self.header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// Seconds the client should wait before retrying (`Retry-After`).
    pub fn retry_after(self, seconds: u64) -> Self {
        self.header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    /// Methods the route accepts (`Allow`, for 405).
    pub fn allow(self, methods: &str) -> Self {
        self.header_text(header::ALLOW, methods)
    }

    /// The challenge for a 401 (`WWW-Authenticate`).
    pub fn challenge(self, challenge: &str) -> Self {
        self.header_text(header::WWW_AUTHENTICATE, challenge)
    }

    fn header_text(self, name: HeaderName, value: &str) -> Self {
        match HeaderValue::from_str(value) {
            Ok(value) => self.header(name, value),
            Err(_) => self,
        }
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn into_response(self, correlation_id: &str) -> Response<Bytes> {
        let (field, rule) = match self.check.as_deref() {
            Some((field, rule)) => (Some(field.as_str()), Some(rule.as_str())),
            None => (None, None),
        };
        let body = ProblemBody {
            kind: format!("{PROBLEM_BASE}{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            correlation_id,
            field,
            rule,
            problems: &self.problems,
        };
        // Serializing plain strings and numbers cannot fail; an empty body
        // would still carry the status.
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

fn no_problems(problems: &&[String]) -> bool {
    problems.is_empty()
}

/// The problem document, members in the RFC's order.
#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    correlation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "no_problems")]
    problems: &'a [String],
}
