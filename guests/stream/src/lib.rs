//! A guest that answers progressively, one behaviour per path (the last
//! segment picks it), for the streaming tests and benchmarks (issue 12,
//! item 1):
//!
//! - `/sse`      head at once, then `?lines=N` (10) server-sent events, one
//!               every `&gap=MS` (200) milliseconds, the first at once
//! - `/gate`     writes `first`, then GETs `http://127.0.0.1:?port=P/release`
//!               and only then writes `second`: the test holds that answer
//!               until its client has read `first`, so a gateway that
//!               buffered the body would never deliver it
//! - `/big`      `?bytes=N` (1 MiB) of `B` in `&chunk=C` (64 KiB) writes;
//!               `&declare=yes` declares the length first
//! - `/fail`     writes `?bytes=N` (256 KiB), then aborts mid-body
//! - `/status`   an empty answer with status `?code=N`
//! - `/afterbody` declares and sends `ok`, finishes its body, then prints a
//!               line and aborts: work after the body, and its failure
//! - `/trailers` a body, then trailer `x-checksum` (declared in `trailer`);
//!               `bulkhead-subject: admin` in its head and trailers
use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(Stream);

struct Stream;

fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v)
}

fn number(query: &str, name: &str, default: u64) -> u64 {
    param(query, name).parse().unwrap_or(default)
}

/// Set a response with these headers and hand back its body.
fn start(response_out: ResponseOutparam, headers: &[(&str, &[u8])]) -> OutgoingBody {
    let fields = Fields::new();
    for (name, value) in headers {
        let _ = fields.append(name, value);
    }
    let resp = OutgoingResponse::new(fields);
    let body = resp.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(resp));
    body
}

impl wasip2::exports::http::incoming_handler::Guest for Stream {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        match path.rsplit('/').next().unwrap_or_default() {
            "sse" => sse(response_out, number(query, "lines", 10), number(query, "gap", 200)),
            "gate" => gate(response_out, param(query, "port")),
            "big" => big(
                response_out,
                number(query, "bytes", 1 << 20),
                number(query, "chunk", 1 << 16).max(1),
                param(query, "declare") == "yes",
            ),
            "fail" => fail(response_out, number(query, "bytes", 256 << 10)),
            "trailers" => trailers(response_out),
            "status" => {
                let code = number(query, "code", 200) as u16;
                let resp = OutgoingResponse::new(Fields::new());
                let _ = resp.set_status_code(code);
                let body = resp.body().expect("body is taken once");
                ResponseOutparam::set(response_out, Ok(resp));
                let _ = OutgoingBody::finish(body, None);
            }
            "afterbody" => after_body(response_out),
            _ => {
                let body = start(response_out, &[]);
                if let Ok(out) = body.write() {
                    let _ = out.blocking_write_and_flush(b"unknown behaviour");
                }
                let _ = OutgoingBody::finish(body, None);
            }
        }
    }
}

fn sse(response_out: ResponseOutparam, lines: u64, gap_ms: u64) {
    let body = start(response_out, &[("content-type", b"text/event-stream")]);
    let Ok(out) = body.write() else { return };
    let began = wasip2::clocks::monotonic_clock::now();
    for i in 1..=lines {
        if i > 1 {
            wasip2::clocks::monotonic_clock::subscribe_duration(gap_ms * 1_000_000).block();
        }
        let at_ms = (wasip2::clocks::monotonic_clock::now() - began) / 1_000_000;
        let event = format!("data: event {i} of {lines} written at {at_ms} ms\n\n");
        if out.blocking_write_and_flush(event.as_bytes()).is_err() {
            return;
        }
    }
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}

fn gate(response_out: ResponseOutparam, port: &str) {
    let body = start(response_out, &[("content-type", b"text/plain")]);
    let Ok(out) = body.write() else { return };
    if out.blocking_write_and_flush(b"first\n").is_err() {
        return;
    }
    let released = release(port);
    let _ = out.blocking_write_and_flush(format!("second after {released}\n").as_bytes());
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}

/// GET `http://127.0.0.1:PORT/release` and say how it went.
fn release(port: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(&format!("127.0.0.1:{port}")));
    let _ = request.set_path_with_query(Some("/release"));
    match wasip2::http::outgoing_handler::handle(request, None) {
        Err(e) => format!("refused {e:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(resp))) => format!("status {}", resp.status()),
                other => format!("failed {other:?}"),
            }
        }
    }
}

fn big(response_out: ResponseOutparam, bytes: u64, chunk: u64, declare: bool) {
    let length = bytes.to_string();
    let headers: &[(&str, &[u8])] = if declare {
        &[("content-length", length.as_bytes())]
    } else {
        &[]
    };
    let body = start(response_out, headers);
    let Ok(mut out) = body.write() else { return };
    let block = vec![b'B'; chunk as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk);
        if out.write_all(&block[..n as usize]).is_err() {
            return;
        }
        left -= n;
    }
    let _ = out.flush();
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}

fn fail(response_out: ResponseOutparam, bytes: u64) {
    let body = start(response_out, &[]);
    let Ok(mut out) = body.write() else { return };
    let block = vec![b'F'; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64);
        if out.write_all(&block[..n as usize]).is_err() {
            return;
        }
        left -= n;
    }
    let _ = out.flush();
    std::process::abort();
}

fn trailers(response_out: ResponseOutparam) {
    // A reserved field in the head and the trailers: only the gateway may
    // set `bulkhead-*` (T11).
    let body = start(
        response_out,
        &[
            ("trailer", b"x-checksum, bulkhead-subject"),
            ("bulkhead-subject", b"admin"),
        ],
    );
    if let Ok(out) = body.write() {
        let _ = out.blocking_write_and_flush(b"payload");
    }
    let trailers = Fields::new();
    let _ = trailers.append("x-checksum", b"abc123");
    let _ = trailers.append("bulkhead-subject", b"admin");
    let _ = OutgoingBody::finish(body, Some(trailers));
}

fn after_body(response_out: ResponseOutparam) {
    let body = start(response_out, &[("content-length", b"2")]);
    if let Ok(out) = body.write() {
        let _ = out.blocking_write_and_flush(b"ok");
    }
    let _ = OutgoingBody::finish(body, None);
    wasip2::clocks::monotonic_clock::subscribe_duration(100_000_000).block();
    println!("work after the body");
    std::process::abort();
}
