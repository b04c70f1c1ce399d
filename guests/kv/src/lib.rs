//! A guest that uses `wasi:keyvalue` as its query says, so one component
//! can try legitimate and overstepping operations (T13, T14, T16):
//!
//! `?op=get|set|delete|exists|list|incr|getmany|setmany|flood|openflood&store=NAME&key=K&value=V`
//! (`openflood` opens the store `value` times)
//!
//! The body is the outcome: `ok`, `value:V`, `none`, `true`/`false`,
//! `keys:a,b`, `count:N` or `error:access-denied`, `error:no-such-store`,
//! `error:other:MESSAGE`; `open-error:...` when `open` itself fails.

mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "bulkhead:test-guests/kv", generate_all });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(Kv);

struct Kv;

fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v)
}

fn error(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "error:no-such-store".into(),
        store::Error::AccessDenied => "error:access-denied".into(),
        store::Error::Other(m) => format!("error:other:{m}"),
    }
}

fn run(query: &str) -> String {
    // Opens the store `value` times and counts the refusals (a flood of
    // capability events, T07, T09).
    if param(query, "op") == "openflood" {
        let n: u64 = param(query, "value").parse().unwrap_or(1);
        let refused = (0..n)
            .filter(|_| store::open(param(query, "store")).is_err())
            .count();
        return format!("refused {refused} of {n}");
    }
    let bucket = match store::open(param(query, "store")) {
        Ok(b) => b,
        Err(e) => return format!("open-{}", error(e)),
    };
    let key = param(query, "key");
    let value = param(query, "value");
    let result = match param(query, "op") {
        "get" => bucket.get(key).map(|v| match v {
            Some(v) => format!("value:{}", String::from_utf8_lossy(&v)),
            None => "none".into(),
        }),
        "set" => bucket.set(key, value.as_bytes()).map(|()| "ok".into()),
        "delete" => bucket.delete(key).map(|()| "ok".into()),
        "exists" => bucket.exists(key).map(|b| b.to_string()),
        "list" => {
            let mut all = Vec::new();
            let mut cursor = None;
            loop {
                match bucket.list_keys(cursor) {
                    Ok(page) => {
                        all.extend(page.keys);
                        cursor = page.cursor;
                        if cursor.is_none() {
                            break Ok(format!("keys:{}", all.join(",")));
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
        }
        "incr" => atomics::increment(&bucket, key, 1).map(|n| format!("count:{n}")),
        "setmany" => batch::set_many(
            &bucket,
            &[
                (key.to_string(), value.as_bytes().to_vec()),
                (format!("{key}2"), value.as_bytes().to_vec()),
            ],
        )
        .map(|()| "ok".into()),
        "getmany" => batch::get_many(&bucket, &[key.to_string(), format!("{key}2")]).map(|vs| {
            vs.into_iter()
                .map(|v| {
                    v.map_or("none".into(), |(k, v)| {
                        format!("{k}={}", String::from_utf8_lossy(&v))
                    })
                })
                .collect::<Vec<_>>()
                .join(",")
        }),
        // Reads until refused: reports the first refused operation.
        "flood" => {
            let mut refused = None;
            for i in 1..=20_000u32 {
                if let Err(e) = bucket.exists(key) {
                    refused = Some(format!("refused-at:{i}:{}", error(e)));
                    break;
                }
            }
            Ok(refused.unwrap_or_else(|| "never-refused".into()))
        }
        // `bench/kv`: time `value` (a count) sets, then as many gets.
        "bench" => Ok(bench(&bucket, value.parse().unwrap_or(1000))),
        _ => Ok("unknown op".into()),
    };
    result.unwrap_or_else(error)
}

/// Per-operation latency percentiles, in microseconds, as seen by the guest.
fn bench(bucket: &store::Bucket, n: u32) -> String {
    use wasip2::clocks::monotonic_clock::now;
    let n = n.clamp(1, 4000);
    let payload = vec![b'x'; 100];
    let mut sets = Vec::new();
    let mut gets = Vec::new();
    for i in 0..n {
        let key = format!("bench-{i}");
        let started = now();
        if bucket.set(&key, &payload).is_err() {
            return "bench-set-failed".into();
        }
        sets.push(now() - started);
    }
    for i in 0..n {
        let key = format!("bench-{i}");
        let started = now();
        if !matches!(bucket.get(&key), Ok(Some(_))) {
            return "bench-get-failed".into();
        }
        gets.push(now() - started);
    }
    let pct = |v: &mut Vec<u64>, p: usize| {
        v.sort_unstable();
        v[(v.len() - 1) * p / 100] as f64 / 1000.0
    };
    format!(
        "n={n} put_p50_us={:.1} put_p99_us={:.1} get_p50_us={:.1} get_p99_us={:.1}",
        pct(&mut sets, 50),
        pct(&mut sets, 99),
        pct(&mut gets, 50),
        pct(&mut gets, 99)
    )
}

impl wasip2::exports::http::incoming_handler::Guest for Kv {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let query = path_with_query.split_once('?').map_or("", |(_, q)| q);
        reply(response_out, &run(query));
    }
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
