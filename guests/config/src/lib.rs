//! A guest that reads `wasi:config` as its query says (T15, T16):
//!
//! - `?key=NAME`            answers `value:V` or `none` (or `error:...`)
//! - `?key=NAME&print=yes`  also writes the value to stdout and stderr,
//!   which the host must redact; `&pad=N` first writes N bytes of `x` lines
//!   to stdout, to place the value where the host's capture cap cuts it
//! - `?key=NAME&fail=yes`   fails the call with an error code that carries
//!   the value, which the host must redact from what it logs
//! - `?all=yes`             answers every `k=v` the function may read
//! - `?key=NAME&split=K&gap=MS` answers `value:V end`, written in two
//!   parts split at byte K, MS milliseconds apart (a streamed body, T14)
//! - `?key=NAME&repeat=N`   reads the key N times and answers how often it
//!   was `none` (a flood of capability events, T07, T09)

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "bulkhead:test-guests/config", generate_all });
}

use bindings::wasi::config::store;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Config);

struct Config;

fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v)
}

fn error(e: store::Error) -> String {
    match e {
        store::Error::Upstream(m) => format!("error:upstream:{m}"),
        store::Error::Io(m) => format!("error:io:{m}"),
    }
}

fn run(query: &str) -> String {
    if let Ok(n) = param(query, "repeat").parse::<u64>() {
        let key = param(query, "key");
        let none = (0..n)
            .filter(|_| matches!(store::get(key), Ok(None)))
            .count();
        return format!("repeated:{n} none:{none}");
    }
    if param(query, "all") == "yes" {
        return match store::get_all() {
            Ok(all) => all
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => error(e),
        };
    }
    match store::get(param(query, "key")) {
        Ok(Some(value)) => {
            if param(query, "print") == "yes" {
                let mut pad: usize = param(query, "pad").parse().unwrap_or(0);
                while pad >= 1000 {
                    println!("{}", "x".repeat(999));
                    pad -= 1000;
                }
                print!("{}", "x".repeat(pad));
                println!("the value is {value} (stdout)");
                eprintln!("the value is {value} (stderr)");
                // Answer only the length: the body is the client's business.
                return format!("printed:{}", value.len());
            }
            format!("value:{value}")
        }
        Ok(None) => "none".into(),
        Err(e) => error(e),
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Config {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query.split_once('?').map_or("", |(_, q)| q);
        if param(query, "fail") == "yes" {
            let value = store::get(param(query, "key"))
                .ok()
                .flatten()
                .unwrap_or_default();
            let code = ErrorCode::InternalError(Some(format!("failed holding {value}")));
            ResponseOutparam::set(response_out, Err(code));
            return;
        }
        if let Ok(split) = param(query, "split").parse::<usize>() {
            let value = store::get(param(query, "key"))
                .ok()
                .flatten()
                .unwrap_or_default();
            let split = split.min(value.len());
            let gap: u64 = param(query, "gap").parse().unwrap_or(0);
            split_reply(response_out, &value[..split], &value[split..], gap);
            return;
        }
        reply(response_out, &run(query));
    }
}

/// The value written in two parts, `gap` milliseconds apart, so the host
/// sees it split between two writes of a streamed body (T14).
fn split_reply(out: ResponseOutparam, head: &str, tail: &str, gap: u64) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream");
    let _ = stream.blocking_write_and_flush(format!("value:{head}").as_bytes());
    wasip2::clocks::monotonic_clock::subscribe_duration(gap * 1_000_000).block();
    let _ = stream.blocking_write_and_flush(format!("{tail} end").as_bytes());
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

fn reply(out: ResponseOutparam, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream");
    stream
        .blocking_write_and_flush(text.as_bytes())
        .expect("write");
    drop(stream);
    OutgoingBody::finish(body, None).expect("finish");
}
