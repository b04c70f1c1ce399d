//! The function's response body on its way to the client (issue 12, item 1):
//! streamed as the guest writes it, with its size cap enforced on the bytes
//! the guest wrote (T05), every secret value the call read replaced even
//! when it straddles two writes (T14), and the call settled when the body
//! ends: a body that ends cleanly while its handler failed is cut, never
//! finished, so a client cannot take a broken answer for a whole one.

use std::collections::VecDeque;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use secrecy::ExposeSecret;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::call::CallContext;
use crate::data::{REDACTED, Redactions};
use crate::invoke::{AbortOnDrop, InvokeError, classify};

/// The response body a call hands the gateway.
pub struct ResponseBody {
    state: State,
}

enum State {
    /// Complete before the head was sent: its length is known.
    Whole {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// Still being written by the guest.
    Streaming(Box<Stream>),
    Done,
}

/// The most of a whole body handed to hyper at once.
const WHOLE_FRAME: usize = 64 * 1024;

impl ResponseBody {
    pub(crate) fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            state: State::Whole {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn streaming(stream: Stream) -> Self {
        Self {
            state: State::Streaming(Box::new(stream)),
        }
    }

    /// Whether the body was complete before its head was sent.
    pub fn is_whole(&self) -> bool {
        matches!(self.state, State::Whole { .. })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = InvokeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InvokeError>>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Whole { data, trailers } => {
                // In frames, so that hyper takes the next only once it has
                // written the last: the body ends when the answer is
                // nearly all written, which the gateway's deadline guard
                // watches (T01), not when the first write was queued.
                if let Some(rest) = data.as_mut() {
                    let frame = if rest.len() > WHOLE_FRAME {
                        rest.split_to(WHOLE_FRAME)
                    } else {
                        data.take().unwrap_or_default()
                    };
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
                let trailers = trailers.take();
                this.state = State::Done;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            State::Streaming(stream) => {
                let polled = stream.poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    this.state = State::Done;
                }
                polled
            }
            State::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Whole { data, trailers } => data.is_none() && trailers.is_none(),
            State::Streaming(_) => false,
            State::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            // Trailers go only in a chunked body: no length then.
            State::Whole {
                trailers: Some(_), ..
            } => SizeHint::default(),
            State::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            State::Streaming(stream) => match stream.exact_remaining {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            State::Done => SizeHint::with_exact(0),
        }
    }
}

/// How the guest task ended, found out once its body is over.
pub(crate) struct Settle {
    pub task: AbortOnDrop,
    pub memory_hit: Arc<AtomicBool>,
    pub call: CallContext,
    pub redactions: Redactions,
}

impl Settle {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), InvokeError>> {
        self.task.poll_end(cx).map_err(|failure| {
            classify(failure, self.memory_hit.load(Ordering::Relaxed), &self.call)
                .redacted(&self.redactions)
        })
    }
}

enum Phase {
    /// Reading what the guest writes.
    Reading,
    /// The guest's body ended (`Some`: with this error); waiting for its
    /// handler to return, which decides whether the body was whole.
    Settling(Option<String>),
    Finished,
}

/// A body the guest is still writing.
pub(crate) struct Stream {
    guest: HyperOutgoingBody,
    settle: Settle,
    phase: Phase,
    /// Redacted bytes ready to send.
    ready: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    redactor: Redactor,
    /// `max_response_body`, on the bytes the guest writes (T05).
    limit: usize,
    read: usize,
    /// The length still to send, when the guest declared one and no
    /// redaction can change it.
    exact_remaining: Option<u64>,
}

impl Stream {
    pub(crate) fn new(
        guest: HyperOutgoingBody,
        settle: Settle,
        limit: usize,
        exact_length: Option<u64>,
    ) -> Self {
        let redactor = Redactor::new(settle.redactions.clone());
        Self {
            guest,
            settle,
            phase: Phase::Reading,
            ready: VecDeque::new(),
            trailers: None,
            redactor,
            limit,
            read: 0,
            exact_remaining: exact_length,
        }
    }

    /// Data taken from [`Self::poll_frame`] that is to be sent after all.
    pub(crate) fn put_back(&mut self, taken: Vec<Bytes>) {
        for data in taken.into_iter().rev() {
            if let Some(n) = self.exact_remaining.as_mut() {
                *n += data.len() as u64;
            }
            self.ready.push_front(data);
        }
    }

    /// Whether the guest's body is over (only its handler's end is awaited).
    pub(crate) fn body_ended(&self) -> bool {
        !matches!(self.phase, Phase::Reading)
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InvokeError>>> {
        loop {
            if let Some(data) = self.ready.pop_front() {
                if let Some(n) = self.exact_remaining.as_mut() {
                    *n = n.saturating_sub(data.len() as u64);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match &self.phase {
                Phase::Reading => {
                    // The function's timeout bounds its whole answer (T05):
                    // the guest task ends at it, dropping its body, and
                    // settling says why.
                    match Pin::new(&mut self.guest).poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => {
                                self.read = self.read.saturating_add(data.len());
                                if self.read > self.limit {
                                    return Poll::Ready(Some(Err(InvokeError::ResponseTooLarge {
                                        limit: self.limit,
                                    })));
                                }
                                let out = self.redactor.push(data);
                                if !out.is_empty() {
                                    self.ready.push_back(out);
                                }
                            }
                            Err(frame) => {
                                self.trailers = frame.into_trailers().ok().map(|mut t| {
                                    redact_fields(&self.settle.redactions, &mut t);
                                    t
                                });
                                self.end_of_body(None);
                            }
                        },
                        Poll::Ready(Some(Err(error))) => self.end_of_body(Some(error.to_string())),
                        Poll::Ready(None) => self.end_of_body(None),
                    }
                }
                Phase::Settling(_) => {
                    match self.settle.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error))),
                        Poll::Ready(Ok(())) => {
                            // The handler returned but its body failed
                            // (dropped unfinished, a wrong length): the
                            // function's error, not the gateway's (item 6).
                            if let Phase::Settling(Some(error)) =
                                std::mem::replace(&mut self.phase, Phase::Finished)
                            {
                                let error = InvokeError::GuestError(format!(
                                    "its response body failed: {error}"
                                ));
                                return Poll::Ready(Some(Err(
                                    error.redacted(&self.settle.redactions)
                                )));
                            }
                            if let Some(trailers) = self.trailers.take() {
                                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                            }
                        }
                    }
                }
                Phase::Finished => return Poll::Ready(None),
            }
        }
    }

    /// The guest's task, when the client got the whole declared length:
    /// hyper drops a body once its length is reached, before its handler
    /// has returned, and the guest may still have work to do.
    fn fully_sent(&self) -> bool {
        self.exact_remaining == Some(0) && !matches!(self.phase, Phase::Finished)
    }

    fn end_of_body(&mut self, error: Option<String>) {
        let tail = self.redactor.finish();
        if !tail.is_empty() {
            self.ready.push_back(tail);
        }
        self.phase = Phase::Settling(error);
    }
}

impl Drop for Stream {
    /// A body dropped after its whole declared length was sent lets its
    /// guest finish (bounded by its deadline) and logs a failure it ends
    /// with; otherwise the client went away and the guest is stopped.
    fn drop(&mut self) {
        if !self.fully_sent() {
            return;
        }
        // The guest task goes on in a watcher of its own, which settles it
        // as the stream would have.
        let mut settle = Settle {
            task: std::mem::replace(&mut self.settle.task, AbortOnDrop::finished()),
            memory_hit: self.settle.memory_hit.clone(),
            call: self.settle.call.clone(),
            redactions: self.settle.redactions.clone(),
        };
        tokio::spawn(async move {
            if let Err(error) = std::future::poll_fn(|cx| settle.poll(cx)).await {
                tracing::warn!(
                    target: "bulkhead::sandbox",
                    function = %settle.call.function(),
                    correlation_id = %settle.call.correlation_id(),
                    error = %error,
                    "the function failed after its whole response was sent"
                );
            }
        });
    }
}

/// Replaces the call's secret values in the bytes it sends (T14). A value
/// may be split between two writes, so up to the longest value's length
/// less one byte is held back until the next write or the end. Values only
/// ever get added during a call; those read after some bytes were sent are
/// replaced from then on.
pub(crate) struct Redactor {
    redactions: Redactions,
    held: Vec<u8>,
    /// The matcher for the first `count` values, rebuilt when more are read.
    matcher: Option<(usize, AhoCorasick)>,
}

impl Redactor {
    pub(crate) fn new(redactions: Redactions) -> Self {
        Self {
            redactions,
            held: Vec::new(),
            matcher: None,
        }
    }

    /// The bytes of `data` (after what was held back) that can be sent.
    pub(crate) fn push(&mut self, data: Bytes) -> Bytes {
        if self.held.is_empty() && self.redactions.is_empty() {
            return data;
        }
        let mut buffer = std::mem::take(&mut self.held);
        buffer.extend_from_slice(&data);
        let Some(matcher) = self.matcher() else {
            return Bytes::from(buffer);
        };
        let hold = matcher.max_pattern_len().saturating_sub(1);
        let ranges = secret_ranges(matcher, &buffer);
        let mut cut = buffer.len().saturating_sub(hold);
        // A value that ends past the cut could grow into a longer one with
        // the next write: it is held back whole.
        if let Some(straddling) = ranges.iter().find(|r| r.start < cut && r.end > cut) {
            cut = straddling.start;
        }
        let out = replace_ranges(&buffer[..cut], ranges.iter().filter(|r| r.end <= cut));
        self.held = buffer.split_off(cut);
        Bytes::from(out)
    }

    /// What was held back, redacted: the body is over.
    pub(crate) fn finish(&mut self) -> Bytes {
        let buffer = std::mem::take(&mut self.held);
        if buffer.is_empty() {
            return Bytes::new();
        }
        let Some(matcher) = self.matcher() else {
            return Bytes::from(buffer);
        };
        let ranges = secret_ranges(matcher, &buffer);
        Bytes::from(replace_ranges(&buffer, ranges.iter()))
    }

    fn matcher(&mut self) -> Option<&AhoCorasick> {
        let count = self.redactions.len();
        if count == 0 {
            return None;
        }
        if self
            .matcher
            .as_ref()
            .is_none_or(|(built, _)| *built != count)
        {
            // Every occurrence of every value, overlapping ones included.
            let matcher = self.redactions.with_values(|values| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .build(values.iter().map(|v| v.expose_secret().as_bytes()))
                    .ok()
            })?;
            self.matcher = Some((count, matcher));
        }
        self.matcher.as_ref().map(|(_, matcher)| matcher)
    }
}

/// Where secret values stand in `buffer`: every occurrence of every value,
/// overlapping ones merged, so a value overlapping another is replaced
/// whole too.
fn secret_ranges(matcher: &AhoCorasick, buffer: &[u8]) -> Vec<Range<usize>> {
    let mut found: Vec<Range<usize>> = matcher
        .find_overlapping_iter(buffer)
        .map(|m| m.range())
        .collect();
    found.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
    for range in found {
        match merged.last_mut() {
            Some(last) if range.start < last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// `buffer` with each of `ranges` (sorted, disjoint, within it) replaced.
fn replace_ranges<'r>(buffer: &[u8], ranges: impl Iterator<Item = &'r Range<usize>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(buffer.len());
    let mut copied = 0;
    for range in ranges {
        out.extend_from_slice(&buffer[copied..range.start]);
        out.extend_from_slice(REDACTED.as_bytes());
        copied = range.end;
    }
    out.extend_from_slice(&buffer[copied..]);
    out
}

/// Secret values the call read, replaced in header or trailer values and
/// never sent as a field's name (T14): names are lowercase on the wire, so
/// a name holding a value in any case is dropped with its field.
pub(crate) fn redact_fields(redactions: &Redactions, fields: &mut HeaderMap) {
    if redactions.is_empty() {
        return;
    }
    let leaking: Vec<http::HeaderName> = redactions.with_values(|values| {
        let lowered: Vec<String> = values
            .iter()
            .map(|v| v.expose_secret().to_ascii_lowercase())
            .collect();
        fields
            .keys()
            .filter(|name| lowered.iter().any(|v| name.as_str().contains(v.as_str())))
            .cloned()
            .collect()
    });
    for name in leaking {
        fields.remove(name);
    }
    let mut redactor = Redactor::new(redactions.clone());
    for value in fields.values_mut() {
        let redacted = redactor.push(Bytes::copy_from_slice(value.as_bytes()));
        let mut out = redacted.to_vec();
        out.extend_from_slice(&redactor.finish());
        if out != value.as_bytes() {
            *value = HeaderValue::from_bytes(&out)
                .unwrap_or_else(|_| HeaderValue::from_static(REDACTED));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn redactor(values: &[&str]) -> Redactor {
        let redactions = Redactions::default();
        for value in values {
            redactions.add(SecretString::from(value.to_string()));
        }
        Redactor::new(redactions)
    }

    /// Every way of cutting the body into writes gives the same bytes out.
    fn through(values: &[&str], body: &str) -> Vec<String> {
        let mut outputs = Vec::new();
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let mut r = redactor(values);
                let mut out = Vec::new();
                for part in [&body[..a], &body[a..b], &body[b..]] {
                    out.extend_from_slice(&r.push(Bytes::copy_from_slice(part.as_bytes())));
                }
                out.extend_from_slice(&r.finish());
                outputs.push(String::from_utf8(out).unwrap_or_default());
            }
        }
        outputs
    }

    #[test]
    fn t14_a_secret_split_across_writes_is_still_replaced() {
        for out in through(&["hunter2"], "pw=hunter2; again hunter2.") {
            assert_eq!(out, "pw=[REDACTED]; again [REDACTED].");
        }
    }

    #[test]
    fn t14_a_secret_containing_another_is_replaced_whole_however_cut() {
        for out in through(&["abc", "abcdef"], "xabcdefy abcz") {
            assert_eq!(out, "x[REDACTED]y [REDACTED]z");
        }
    }

    #[test]
    fn t14_overlapping_secrets_are_replaced_whole_however_cut() {
        // Found by the outside attack: `sk_live_Canary9d8f7e` then
        // `Canary9d8f7e_and_more_secret`, overlapping: 16 bytes leaked.
        let a = "sk_live_Canary9d8f7e";
        let b = "Canary9d8f7e_and_more_secret";
        let body = format!("X:sk_live_{b}!");
        for out in through(&[a, b], &body) {
            assert_eq!(out, "X:[REDACTED]!");
        }
    }

    #[test]
    fn t14_secrets_in_header_values_are_replaced() {
        let redactions = Redactions::default();
        redactions.add(SecretString::from("hunter2".to_string()));
        let mut fields = HeaderMap::new();
        fields.insert("x-leak", HeaderValue::from_static("pw=hunter2"));
        fields.insert("x-fine", HeaderValue::from_static("nothing here"));
        fields.insert("x-hunter2-name", HeaderValue::from_static("v"));
        redact_fields(&redactions, &mut fields);
        assert_eq!(fields["x-leak"], "pw=[REDACTED]");
        assert_eq!(fields["x-fine"], "nothing here");
        // A value as (part of) a field's name: the field is dropped.
        assert!(!fields.contains_key("x-hunter2-name"));
    }

    #[test]
    fn nothing_is_held_or_copied_without_secrets() {
        let mut r = redactor(&[]);
        let data = Bytes::from_static(b"hello");
        let out = r.push(data.clone());
        assert_eq!(out.as_ptr(), data.as_ptr(), "passed through, not copied");
        assert!(r.finish().is_empty());
    }

    #[test]
    fn a_secret_read_mid_body_is_replaced_from_then_on() {
        let redactions = Redactions::default();
        let mut r = Redactor::new(redactions.clone());
        assert_eq!(r.push(Bytes::from_static(b"token ")), "token ");
        redactions.add(SecretString::from("s3cr3t".to_string()));
        let mut out = r.push(Bytes::from_static(b"s3c")).to_vec();
        out.extend_from_slice(&r.push(Bytes::from_static(b"r3t!")));
        out.extend_from_slice(&r.finish());
        assert_eq!(out, b"[REDACTED]!");
    }
}
