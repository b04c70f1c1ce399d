//! Respond stage: the function's answer goes to the client as the guest
//! writes it (issue 12, item 1). A body still being written streams; one
//! that fails or passes `max_response_body` after its head was sent cuts
//! the connection (the client sees an incomplete response, never a whole
//! one), and the cut is logged and audited like a refusal (T05, T09). What
//! was sent is metered when the body ends (T04), and the call's admission
//! places are held while its instance still runs, never past its timeout
//! (T01: a client that stops reading cannot pin them).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bulkhead_manifest::input::HOP_BY_HOP;
use bulkhead_manifest::login::MAX_FUNCTION_COOKIE_BYTES;
use bulkhead_runtime::{InvokeError, ResponseBody};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::access_log::{self, Level};
use crate::budget::Charge;
use crate::caller::Caller;
use crate::pipeline::{RESERVED_PREFIX, connection_named};
use crate::problem::Problem;
use crate::{Shared, audit};

/// A response body as the public listener sends it.
pub(crate) struct Outgoing(Kind);

enum Kind {
    /// The gateway's own answer (a problem) or nothing.
    Bytes(Option<Bytes>),
    /// The function's, complete before its head was sent.
    Whole(ResponseBody),
    /// The function's, still being written.
    Guest(Box<GuestStream>),
}

impl Outgoing {
    pub(crate) fn bytes(bytes: Bytes) -> Self {
        Self(Kind::Bytes((!bytes.is_empty()).then_some(bytes)))
    }

    /// Whether this is a body still being written (one that can be cut).
    pub(crate) fn is_streaming(&self) -> bool {
        matches!(self.0, Kind::Guest(_))
    }

    /// What to say, and to whom, should the stream be cut: set once the
    /// request's record is known.
    pub(crate) fn on_cut(&mut self, report: CutReport) {
        if let Kind::Guest(stream) = &mut self.0 {
            *stream
                .state
                .report
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(report);
        }
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = InvokeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InvokeError>>> {
        let mut polled = match &mut self.get_mut().0 {
            Kind::Bytes(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Whole(body) => Pin::new(body).poll_frame(cx),
            Kind::Guest(stream) => stream.poll_frame(cx),
        };
        // A guest's trailers are held to the rules of its head (T11).
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            strip_fields(trailers, true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Bytes(bytes) => bytes.is_none(),
            Kind::Whole(body) => body.is_end_stream(),
            Kind::Guest(stream) => stream.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Whole(body) => body.size_hint(),
            Kind::Guest(stream) => stream.body.size_hint(),
        }
    }
}

/// What a running call holds until its body ends.
pub(crate) struct Held {
    /// Its places in the function's and the app's admission (T01).
    pub _places: Box<dyn Send>,
    /// Its budget charge, settled with the bytes sent (T04).
    pub charge: Option<Charge>,
}

/// Who to name when a stream is cut.
pub(crate) struct CutReport {
    pub shared: Arc<Shared>,
    pub correlation_id: String,
    pub function: String,
    pub subject: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub caller: Option<Caller>,
}

/// Closes the client's connection from outside hyper: a response the
/// client stopped reading is never polled again, so only the connection's
/// task can end it (T01).
#[derive(Clone, Default)]
pub(crate) struct ConnectionCut(Arc<Notify>);

impl ConnectionCut {
    /// Resolves once a stream on this connection asked for it to be cut.
    pub(crate) async fn requested(&self) {
        self.0.notified().await;
    }

    fn cut(&self) {
        self.0.notify_one();
    }
}

/// What the stream and its deadline guard share.
struct StreamState {
    held: Mutex<Option<Held>>,
    sent: AtomicU64,
    report: Mutex<Option<CutReport>>,
}

impl StreamState {
    /// Settle the charge with the bytes sent and give the places back;
    /// false if the stream's end or its guard did so already.
    fn release(&self) -> bool {
        let taken = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut held) = taken else {
            return false;
        };
        if let Some(charge) = held.charge.take() {
            charge.finish(self.sent.load(Ordering::Relaxed));
        }
        true
    }

    /// The head is sent, so the client cannot get a problem: the connection
    /// is cut, and the cut recorded as the problem it would have been.
    fn report_cut(&self, slug: &'static str, why: &dyn std::fmt::Display) {
        let Some(report) = self.report.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let detail = format!(
            "cut after {} bytes were sent: {why}",
            self.sent.load(Ordering::Relaxed)
        );
        let shared = &report.shared;
        shared.metrics.refuse(slug);
        access_log::write(Level::Warn, "response cut", SystemTime::now(), |line| {
            line.str("correlation_id", &report.correlation_id)
                .str("method", &report.method)
                .str("path", &report.path)
                .str("function", &report.function)
                .str("subject", &report.subject)
                .num("status", report.status.into())
                .str("reason", slug)
                .str("detail", &detail);
        });
        shared.refusals.record(
            &shared.audit,
            audit::RequestFacts {
                correlation_id: &report.correlation_id,
                function: &report.function,
                subject: &report.subject,
                method: &report.method,
                path: &report.path,
                status: report.status,
                reason: slug,
                detail: &detail,
                caller: report.caller.as_ref(),
            },
        );
    }
}

/// The function's body on its way out.
struct GuestStream {
    body: ResponseBody,
    state: Arc<StreamState>,
    guard: Option<JoinHandle<()>>,
}

/// The function's response as the client gets it: framing is ours, and so
/// are `bulkhead-*` fields (T11). A body the guest finished before its head
/// was sent is settled now; one it is still writing keeps `held` until it
/// ends, or at the latest until `deadline`, when the connection is cut
/// whether or not the client still reads (T01).
pub(crate) fn guest_response(
    response: Response<ResponseBody>,
    mut held: Held,
    deadline: tokio::time::Instant,
    connection: &ConnectionCut,
    login_cookies: Option<&[String]>,
) -> Response<Outgoing> {
    let (mut parts, body) = response.into_parts();
    strip_fields(&mut parts.headers, false);
    bound_guest_cookies(&mut parts.headers);
    if let Some(declared) = login_cookies {
        keep_declared_cookies(&mut parts.headers, declared);
        strip_cookie_clearing(&mut parts.headers);
    }
    if body.is_whole() {
        // The instance is gone: its places go back now.
        held._places = Box::new(());
        let length = body.size_hint().exact().unwrap_or(0);
        // A small body fits the socket's buffer at once: billed and done. A
        // larger one may be read slowly for as long as a client likes (an
        // HTTP/1.0 client's is read whole, up to the cap), so it is sent
        // under the same deadline guard as a stream, and billed for what
        // was sent (outside attack).
        if length <= UNGUARDED_WHOLE_BYTES {
            if let Some(charge) = held.charge.take() {
                charge.finish(length);
            }
            return Response::from_parts(parts, Outgoing(Kind::Whole(body)));
        }
    }
    let state = Arc::new(StreamState {
        held: Mutex::new(Some(held)),
        sent: AtomicU64::new(0),
        report: Mutex::new(None),
    });
    let guard = tokio::spawn({
        let state = state.clone();
        let connection = connection.clone();
        async move {
            tokio::time::sleep_until(deadline).await;
            if state.release() {
                state.report_cut(
                    "response-timeout",
                    &"the response was not delivered within the function's timeout",
                );
                connection.cut();
            }
        }
    });
    let stream = GuestStream {
        body,
        state,
        guard: Some(guard),
    };
    Response::from_parts(parts, Outgoing(Kind::Guest(Box::new(stream))))
}

/// Whole bodies up to this size are sent without a deadline guard: the
/// socket's buffer takes them at once.
const UNGUARDED_WHOLE_BYTES: u64 = 64 * 1024;

/// Connection fields, and the `bulkhead-*` ones only the gateway may set,
/// out of a guest's header or trailer map. The guest's `Trailer`
/// declaration stays in its head: hyper sends the declared trailers when
/// the client asked for them (`TE: trailers`).
fn strip_fields(fields: &mut HeaderMap, trailers: bool) {
    // Fields the guest's `Connection` names are connection fields too
    // (RFC 9110 §7.6.1): they go with it.
    for name in connection_named(fields) {
        fields.remove(name);
    }
    for name in HOP_BY_HOP {
        if trailers || *name != "trailer" {
            fields.remove(*name);
        }
    }
    let reserved: Vec<HeaderName> = fields
        .keys()
        .filter(|name| name.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for name in reserved {
        fields.remove(name);
    }
    // The gateway's own cookies (the sign-in session and its binding,
    // `__Host-bulkhead-*`) are set by the gateway alone: a function could
    // otherwise sign the browser into another account or out of its own
    // (T12; outside review of issue 15). Cookie prefixes are matched
    // without case, as browsers match them.
    if fields.contains_key(http::header::SET_COOKIE) {
        let kept: Vec<http::HeaderValue> = fields
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter(|value| {
                let text = String::from_utf8_lossy(value.as_bytes());
                let pair = text.split(';').next().unwrap_or_default();
                let (name, rest) = pair.split_once('=').unwrap_or(("", pair));
                // A nameless cookie (`=__Host-bulkhead-session=…`, or no
                // `=` at all) is sent back by older browsers as its value:
                // judge it by that (outside re-review).
                let name = match name.trim() {
                    "" => rest.trim(),
                    name => name,
                };
                !name.to_ascii_lowercase().starts_with("__host-bulkhead-")
            })
            .cloned()
            .collect();
        fields.remove(http::header::SET_COOKIE);
        for value in kept {
            fields.append(http::header::SET_COOKIE, value);
        }
    }
}

/// Most cookies one function response may set, and their total size
/// (`Set-Cookie` values, bytes). A browser sends every cookie back on each
/// request: a function setting 40 cookies of 400 bytes made the browser's
/// `Cookie` field pass the gateway's header limit, so it got 431 on every
/// path, signing in included (T01, T12; outside review of issue 15). What
/// passes either bound is dropped (the first ones, in order, are kept) and
/// logged.
pub(crate) const MAX_GUEST_COOKIES: usize = 8;
pub(crate) const MAX_GUEST_COOKIE_BYTES: usize = 4096;

/// Keep at most [`MAX_GUEST_COOKIES`] `Set-Cookie` fields of a function's
/// response, [`MAX_GUEST_COOKIE_BYTES`] in all.
fn bound_guest_cookies(fields: &mut HeaderMap) {
    let all = fields.get_all(http::header::SET_COOKIE).iter().count();
    if all == 0 {
        return;
    }
    let mut bytes = 0usize;
    let mut kept = Vec::new();
    for value in fields.get_all(http::header::SET_COOKIE) {
        if kept.len() == MAX_GUEST_COOKIES || bytes + value.len() > MAX_GUEST_COOKIE_BYTES {
            break;
        }
        bytes += value.len();
        kept.push(value.clone());
    }
    if kept.len() == all {
        return;
    }
    tracing::warn!(
        target: "bulkhead::access",
        set = all,
        kept = kept.len(),
        "a function set more cookies than one response may (at most {MAX_GUEST_COOKIES}, {MAX_GUEST_COOKIE_BYTES} bytes): the rest were dropped"
    );
    fields.remove(http::header::SET_COOKIE);
    for value in kept {
        fields.append(http::header::SET_COOKIE, value);
    }
}

/// With sign-in at the gateway, a function may set only the cookies
/// `[auth.login] function_cookies` declares, host-only (no `Domain`), on
/// `/` (added when the cookie names no `Path`) and each at most
/// [`MAX_FUNCTION_COOKIE_BYTES`] as `name=value`. The browser's jar then
/// holds at most one of each, whatever the number of responses: the
/// per-response bound alone let five visits to a public function fill it
/// with 19.5 KB, and the browser got 431 on every path, signing in and out
/// included (T01, T12; fourth outside review of issue 15). What does not
/// fit is dropped and logged with what to change, never the value.
fn keep_declared_cookies(fields: &mut HeaderMap, declared: &[String]) {
    if !fields.contains_key(http::header::SET_COOKIE) {
        return;
    }
    let mut dropped = 0usize;
    let mut kept = Vec::new();
    for value in fields.get_all(http::header::SET_COOKIE) {
        match declared_cookie(value, declared) {
            Some(value) => kept.push(value),
            None => dropped += 1,
        }
    }
    if dropped > 0 {
        tracing::warn!(
            target: "bulkhead::access",
            dropped,
            kept = kept.len(),
            "a function set a cookie that [auth.login] does not allow: only the names in `function_cookies`, with `Path=/`, no `Domain`, and at most {MAX_FUNCTION_COOKIE_BYTES} bytes as name=value; the others were dropped"
        );
    }
    fields.remove(http::header::SET_COOKIE);
    for value in kept {
        fields.append(http::header::SET_COOKIE, value);
    }
}

/// `value` as it may be sent under [`keep_declared_cookies`], or `None`.
/// Read as bytes: a value that is not UTF-8 is the function's business
/// (the gateway reads such cookies pair by pair), its name and attributes
/// are judged as text.
fn declared_cookie(value: &HeaderValue, declared: &[String]) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let pair_len = bytes.iter().position(|&b| b == b';').unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.split(';');
    let (name, _) = parts.next()?.split_once('=')?;
    if pair_len > MAX_FUNCTION_COOKIE_BYTES || !declared.iter().any(|d| d == ows(name)) {
        return None;
    }
    let mut has_path = false;
    for attribute in parts {
        let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
        match ows(key).to_ascii_lowercase().as_str() {
            // Another host's or path's copy would be a second jar entry.
            "domain" => return None,
            "path" if ows(val) != "/" => return None,
            "path" => has_path = true,
            _ => {}
        }
    }
    if has_path {
        return Some(value.clone());
    }
    // Without `Path` a browser files the cookie under the request's
    // directory: one more entry per directory visited.
    HeaderValue::from_bytes(&[bytes, b"; Path=/"].concat()).ok()
}

/// `text` without the spaces and tabs around it: all a browser strips
/// (RFC 6265bis §5.6). `str::trim` strips every Unicode space, so
/// `\u{a0}lang` passed as `lang` while a browser kept it as another name,
/// one more jar entry per variant (T01; outside review of issue 15).
fn ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// With sign-in at the gateway, a function's `Clear-Site-Data` that names
/// `"cookies"` or `"*"` is dropped whole: it would delete the gateway's
/// session cookie, signing the browser out from any function, a public
/// one included (T12; outside review of issue 15). Signing out is
/// `/.bulkhead/logout`, which also revokes the session.
fn strip_cookie_clearing(fields: &mut HeaderMap) {
    const CLEAR_SITE_DATA: &str = "clear-site-data";
    let clears_cookies = fields.get_all(CLEAR_SITE_DATA).iter().any(|value| {
        String::from_utf8_lossy(value.as_bytes())
            .split(',')
            .map(|d| d.trim().trim_matches('"').to_ascii_lowercase())
            .any(|d| d == "cookies" || d == "*")
    });
    if clears_cookies {
        fields.remove(CLEAR_SITE_DATA);
    }
}

impl GuestStream {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InvokeError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.state
                        .sent
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => self.end(),
            Poll::Ready(Some(Err(error))) => {
                self.state.report_cut(invoke_problem(error).slug, error);
                self.end();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn end(&mut self) {
        self.state.release();
        if let Some(guard) = self.guard.take() {
            guard.abort();
        }
    }
}

impl Drop for GuestStream {
    /// The client went away, or was sent no body (HEAD): what was sent is
    /// billed, and the call stopped (the runtime aborts it with its body).
    fn drop(&mut self) {
        if self.guard.is_some() {
            debug!(
                target: "bulkhead::access",
                sent = self.state.sent.load(Ordering::Relaxed),
                "response stream dropped before its end"
            );
            self.end();
        }
    }
}

pub(crate) fn invoke_problem(error: &InvokeError) -> Problem {
    let failed = |slug, title, detail: &'static str| {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, slug, title, detail)
    };
    match error {
        InvokeError::Timeout => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "function-timeout",
            "Function timed out",
            "The function did not finish within its time limit and was stopped.",
        ),
        InvokeError::MemoryLimit => failed(
            "memory-limit",
            "Function exceeded its memory limit",
            "The function tried to use more memory than it is allowed and was stopped.",
        ),
        InvokeError::StackOverflow => failed(
            "stack-overflow",
            "Function overflowed its stack",
            "The function recursed too deeply and was stopped.",
        ),
        InvokeError::Trap(_) => failed(
            "function-trapped",
            "Function failed",
            "The function stopped with an error.",
        ),
        InvokeError::NoResponse => failed(
            "no-response",
            "Function gave no response",
            "The function finished without sending a response.",
        ),
        InvokeError::GuestError(_) => failed(
            "function-error",
            "Function reported an error",
            "The function reported an error instead of a response.",
        ),
        InvokeError::ResponseTooLarge { .. } => failed(
            "response-too-large",
            "Function response too large",
            "The function's response was larger than it is allowed to send.",
        ),
        InvokeError::Capacity => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "capacity",
            "No capacity",
            "Every sandbox slot is in use; retry shortly.",
        )
        .retry_after(1),
        InvokeError::Internal(_) => failed(
            "internal",
            "Internal error",
            "The gateway could not run the function.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn connection_fields_reserved_fields_and_the_fields_connection_names_go() {
        let mut fields = HeaderMap::new();
        fields.insert("connection", HeaderValue::from_static("keep-alive, X-Foo"));
        fields.insert("x-foo", HeaderValue::from_static("hop"));
        fields.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        fields.insert("bulkhead-subject", HeaderValue::from_static("admin"));
        fields.insert("trailer", HeaderValue::from_static("x-sum"));
        fields.insert("x-kept", HeaderValue::from_static("end to end"));
        strip_fields(&mut fields, false);
        let names: Vec<&str> = fields.keys().map(|n| n.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(fields.contains_key("x-kept") && fields.contains_key("trailer"));
        // In trailers, a `trailer` field is never kept.
        let mut trailers = HeaderMap::new();
        trailers.insert("trailer", HeaderValue::from_static("x"));
        strip_fields(&mut trailers, true);
        assert!(trailers.is_empty());
    }

    #[test]
    fn a_function_cannot_set_the_gateways_cookies_t12() {
        let mut fields = HeaderMap::new();
        for cookie in [
            "__Host-bulkhead-session=bhs_attacker; Path=/; Secure",
            "__host-Bulkhead-login=x; Max-Age=0",
            " __Host-bulkhead-session=; Max-Age=0",
            "=__Host-bulkhead-session=bhs_attacker; Path=/; Secure",
            "__Host-bulkhead-session",
            "theme=dark; Path=/",
        ] {
            fields.append(http::header::SET_COOKIE, HeaderValue::from_static(cookie));
        }
        strip_fields(&mut fields, false);
        let left: Vec<&str> = fields
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap_or_default())
            .collect();
        assert_eq!(left, ["theme=dark; Path=/"]);
    }

    /// T01, T12 (fourth outside review of issue 15): with sign-in, only
    /// declared names pass, host-only, on `/`, each small, so the jar stays
    /// bounded however many responses set cookies.
    #[test]
    fn with_login_only_declared_cookies_pass_on_one_path_t01_t12() {
        let declared = vec!["lang".to_string(), "theme".to_string()];
        let mut fields = HeaderMap::new();
        for cookie in [
            "lang=en",
            "theme=dark; Path=/; Secure",
            "theme=light; Path=/docs",
            "lang=fr; Domain=example.com; Path=/",
            "Lang=de",
            "other=1; Path=/",
            "=lang=x",
            "lang",
            // Unicode spaces are not trimmed by browsers: other names, and
            // a path that is not `/` (outside review).
            "\u{a0}lang=2; Path=/",
            "lang\u{3000}=4; Path=/",
            "lang=5; Path=\u{a0}/",
        ] {
            fields.append(
                http::header::SET_COOKIE,
                HeaderValue::from_bytes(cookie.as_bytes()).unwrap(),
            );
        }
        let big = format!("theme={}", "x".repeat(MAX_FUNCTION_COOKIE_BYTES));
        fields.append(
            http::header::SET_COOKIE,
            HeaderValue::from_str(&big).unwrap(),
        );
        fields.append(
            http::header::SET_COOKIE,
            HeaderValue::from_bytes(b"lang=\xc3\xa9; Path=/").unwrap(),
        );
        keep_declared_cookies(&mut fields, &declared);
        let left: Vec<&[u8]> = fields
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(
            left,
            [
                &b"lang=en; Path=/"[..],
                b"theme=dark; Path=/; Secure",
                b"lang=\xc3\xa9; Path=/"
            ]
        );
        // Nothing declared: nothing passes.
        let mut fields = HeaderMap::new();
        fields.append(
            http::header::SET_COOKIE,
            HeaderValue::from_static("lang=en"),
        );
        keep_declared_cookies(&mut fields, &[]);
        assert!(fields.get(http::header::SET_COOKIE).is_none());
    }

    /// T01, T12: a response sets at most 8 cookies, 4 KiB in all.
    #[test]
    fn function_cookies_are_bounded_per_response_t01() {
        let mut fields = HeaderMap::new();
        for i in 0..40 {
            let cookie = format!("bomb{i}={}", "x".repeat(400));
            fields.append(
                http::header::SET_COOKIE,
                HeaderValue::from_str(&cookie).unwrap(),
            );
        }
        bound_guest_cookies(&mut fields);
        let left: Vec<_> = fields.get_all(http::header::SET_COOKIE).iter().collect();
        assert!(left.len() <= MAX_GUEST_COOKIES);
        assert!(left.iter().map(|v| v.len()).sum::<usize>() <= MAX_GUEST_COOKIE_BYTES);
        assert!(left[0].to_str().unwrap().starts_with("bomb0="));
        for directives in ["\"cookies\"", "\"cache\", \"*\"", "\"Cookies\""] {
            let mut fields = HeaderMap::new();
            fields.insert(
                "clear-site-data",
                HeaderValue::from_str(directives).unwrap(),
            );
            strip_cookie_clearing(&mut fields);
            assert!(fields.is_empty(), "{directives}");
        }
        let mut fields = HeaderMap::new();
        fields.insert("clear-site-data", HeaderValue::from_static("\"cache\""));
        strip_cookie_clearing(&mut fields);
        assert_eq!(fields.len(), 1);
    }
}
