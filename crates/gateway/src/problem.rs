//! RFC 9457 problem responses. Every refusal the gateway makes is one: a
//! stable `type`, a title, a detail written by us (never an echo of the
//! input) and the correlation ID.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

/// Where problem types live; `type` is this plus the problem's slug.
pub const PROBLEM_BASE: &str = "https://bulkhead.dev/problems/";

/// A refusal or failure, before it becomes a response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable machine-readable name: the last segment of `type`.
    pub slug: &'static str,
    pub title: &'static str,
    /// Ours, never the client's; most are constant and not copied.
    pub detail: Cow<'static, str>,
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
        detail: impl Into<Cow<'static, str>>,
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

    /// A cookie set (or cleared) with the refusal; several may be.
    pub fn set_cookie(self, cookie: HeaderValue) -> Self {
        self.header(header::SET_COOKIE, cookie)
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
        let body = self.body(correlation_id);
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            // Set-Cookie is the one header that may come several times.
            if name == header::SET_COOKIE {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
        response
    }

    /// The problem document, members in the RFC's order: `type`, `title`,
    /// `status`, `detail`, `correlation_id`, then `field`, `rule` and
    /// `problems` when set. Written straight into one buffer (issue 17: a
    /// refusal's document was ~3 % of its CPU through a serialised struct
    /// and a formatted `type`); every string goes through serde_json's
    /// escaping, except a slug made only of `[a-z0-9-]`, which needs none.
    fn body(&self, correlation_id: &str) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(160 + self.title.len() + self.detail.len() + correlation_id.len());
        out.extend_from_slice(b"{\"type\":");
        if self
            .slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            out.push(b'"');
            out.extend_from_slice(PROBLEM_BASE.as_bytes());
            out.extend_from_slice(self.slug.as_bytes());
            out.push(b'"');
        } else {
            json_string(&mut out, &format!("{PROBLEM_BASE}{}", self.slug));
        }
        out.extend_from_slice(b",\"title\":");
        json_string(&mut out, self.title);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(b",\"detail\":");
        json_string(&mut out, &self.detail);
        out.extend_from_slice(b",\"correlation_id\":");
        json_string(&mut out, correlation_id);
        if let Some((field, rule)) = self.check.as_deref() {
            out.extend_from_slice(b",\"field\":");
            json_string(&mut out, field);
            out.extend_from_slice(b",\"rule\":");
            json_string(&mut out, rule);
        }
        if !self.problems.is_empty() {
            out.extend_from_slice(b",\"problems\":");
            // A list of strings always serialises.
            let _ = serde_json::to_writer(&mut out, &self.problems);
        }
        out.push(b'}');
        out
    }
}

/// `text` as a JSON string, quoted and escaped by serde_json.
fn json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is valid JSON with every member, in the RFC's order,
    /// escaped (T10: nothing a detail holds can break out of its string).
    #[test]
    fn the_problem_document_is_json_in_order() {
        let problem = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid parameter",
            "quote \" backslash \\ newline \n control \u{1} end",
        )
        .field("query.who", "pattern")
        .problems(vec!["one".into(), "two \"2\"".into()]);
        let body = problem.body("01JF\"id");
        let text = String::from_utf8(body.clone()).expect("utf-8");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            value["type"],
            "https://bulkhead.dev/problems/invalid-parameter"
        );
        assert_eq!(value["status"], 400);
        assert_eq!(
            value["detail"],
            "quote \" backslash \\ newline \n control \u{1} end"
        );
        assert_eq!(value["correlation_id"], "01JF\"id");
        assert_eq!(value["field"], "query.who");
        assert_eq!(value["rule"], "pattern");
        assert_eq!(value["problems"][1], "two \"2\"");
        let order: Vec<usize> = [
            "\"type\"",
            "\"title\"",
            "\"status\"",
            "\"detail\"",
            "\"correlation_id\"",
            "\"field\"",
            "\"rule\"",
            "\"problems\"",
        ]
        .iter()
        .map(|member| text.find(member).expect("member present"))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        // Without the optional members, none of them appears.
        let plain = Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "none");
        let value: serde_json::Value = serde_json::from_slice(&plain.body("c")).expect("json");
        assert_eq!(value.as_object().map(|o| o.len()), Some(5), "{value}");
    }
}
