//! The events test guest (issue 18): one component, run over HTTP and by
//! triggers, so tests can drive queues and schedules end to end.
//!
//! Over HTTP (no `bulkhead-event-kind` header):
//! - `POST /send?queue=Q[&n=N]`: send the body to queue Q (N times, each
//!   body suffixed with `-I` when N > 1); answers `ok` or `error:KIND`.
//! - `GET /kv?key=K`: the value recorded under K, or `none`.
//!
//! Triggered (`bulkhead-event-kind` set), the body decides:
//! - `fail...`: answers 500 (the delivery fails; retried, then dead-lettered);
//! - `loop...`: sends the body again to the queue it came from (`loop@Q...`:
//!   to queue Q), then records;
//! - `slow...`: records `started-BODY`, spins for a second, then records;
//! - anything else: records.
//!
//! Recording writes key `event-BODY` (queue) or `schedule-ID` (schedule)
//! in store `events`, value `correlation=C depth=D attempt=A source=S`, and
//! bumps nothing else: a key is written once however often it is delivered.

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "bulkhead:test-guests/events", generate_all });
}

use std::io::Read as _;

use bindings::bulkhead::queue::producer;
use bindings::wasi::keyvalue::store;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Events);

struct Events;

fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v)
}

fn header(request: &IncomingRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn send_error(e: producer::Error) -> String {
    match e {
        producer::Error::NotGranted => "error:not-granted".into(),
        producer::Error::TooLarge => "error:too-large".into(),
        producer::Error::CapReached => "error:cap-reached".into(),
        producer::Error::Unavailable => "error:unavailable".into(),
    }
}

fn record(key: &str, value: &str) -> Result<(), String> {
    let bucket = store::open("events").map_err(|e| format!("open: {e:?}"))?;
    bucket
        .set(key, value.as_bytes())
        .map_err(|e| format!("set: {e:?}"))
}

fn triggered(request: &IncomingRequest, body: &[u8]) -> (u16, String) {
    let kind = header(request, "bulkhead-event-kind");
    let source = header(request, "bulkhead-event-source");
    let id = header(request, "bulkhead-event-id");
    let value = format!(
        "correlation={} depth={} attempt={} source={source}",
        header(request, "bulkhead-correlation-id"),
        header(request, "bulkhead-event-depth"),
        header(request, "bulkhead-event-attempt"),
    );
    let text = String::from_utf8_lossy(body).into_owned();
    if text.starts_with("fail") {
        return (500, "failing as asked".into());
    }
    // A schedule of a function named `slow…` runs for 2.5 s: longer than
    // its period, so its firings overlap.
    if kind == "schedule" && source.starts_with("slow") {
        let start = wasip2::clocks::monotonic_clock::now();
        while wasip2::clocks::monotonic_clock::now() - start < 2_500_000_000 {}
    }
    if text.starts_with("slow") {
        let _ = record(&format!("started-{text}"), &value);
        let start = wasip2::clocks::monotonic_clock::now();
        while wasip2::clocks::monotonic_clock::now() - start < 1_000_000_000 {}
    }
    if text.starts_with("loop") {
        // The depth in the key: every hop is a key of its own.
        let depth = header(request, "bulkhead-event-depth");
        // `loop@Q…` sends to queue Q (up to a `-`) instead of its source:
        // a dead-letter consumer sending back to the main queue.
        let target = text
            .strip_prefix("loop@")
            .and_then(|rest| rest.split('-').next())
            .unwrap_or(&source);
        if let Err(e) = producer::send(target, body) {
            let _ = record(&format!("loop-error-{depth}"), &send_error(e));
        }
        return match record(&format!("event-{text}-{depth}"), &value) {
            Ok(()) => (200, "ok".into()),
            Err(e) => (500, e),
        };
    }
    let key = if kind == "schedule" {
        format!("schedule-{id}")
    } else {
        format!("event-{text}")
    };
    match record(&key, &value) {
        Ok(()) => (200, "ok".into()),
        Err(e) => (500, e),
    }
}

fn http(path: &str, query: &str, body: &[u8]) -> String {
    match path {
        p if p.ends_with("/send") => {
            let queue = param(query, "queue");
            let n: u32 = param(query, "n").parse().unwrap_or(1);
            for i in 0..n {
                let message = if n > 1 {
                    let mut m = body.to_vec();
                    m.extend_from_slice(format!("-{i}").as_bytes());
                    m
                } else {
                    body.to_vec()
                };
                if let Err(e) = producer::send(queue, &message) {
                    return format!("{}:{i}", send_error(e));
                }
            }
            "ok".into()
        }
        "/kv" => match store::open("events") {
            Ok(bucket) => match bucket.get(param(query, "key")) {
                Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                Ok(None) => "none".into(),
                Err(e) => format!("error:{e:?}"),
            },
            Err(e) => format!("error:{e:?}"),
        },
        _ => "unknown".into(),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Events {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let mut body = Vec::new();
        let path_with_query = request.path_with_query().unwrap_or_default();
        if let Ok(incoming) = request.consume() {
            if let Ok(mut stream) = incoming.stream() {
                let _ = stream.read_to_end(&mut body);
            }
            drop(IncomingBody::finish(incoming));
        }
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let (status, text) = if header(&request, "bulkhead-event-kind").is_empty() {
            (200, http(path, query, &body))
        } else {
            triggered(&request, &body)
        };
        reply(response_out, status, &text);
    }
}

fn reply(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream");
    stream
        .blocking_write_and_flush(text.as_bytes())
        .expect("write");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish");
}
