//! A guest of the `bulkhead:sql` capability (T06, T15, T16, T05): one
//! legitimate use and every way to overstep, chosen by the last path
//! segment. It answers `ok changes=N rows=[…]` or `err KIND: message`.

wit_bindgen::generate!({
    path: "../../crates/runtime/wit/sql",
    world: "bulkhead:sql/imports",
});

use std::io::Write as _;

use bulkhead::sql::sql::{Error, QueryResult, Value, query};
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasip2::http::proxy::export!(SqlGuest);

struct SqlGuest;

/// The classic: a value that would end the statement if spliced into it.
const INJECTION: &str = "'); DROP TABLE events; --";

impl wasip2::exports::http::incoming_handler::Guest for SqlGuest {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query_string) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let param = |name: &str| {
            query_string
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let store = param("store").unwrap_or_else(|| "events".into());
        let body = param("body").unwrap_or_default();
        let id: i64 = param("id").and_then(|v| v.parse().ok()).unwrap_or(1);
        let run = |statement: &str, params: Vec<Value>| show(query(&store, statement, &params));
        let text = match path.rsplit('/').next().unwrap_or_default() {
            "insert" => run(
                "INSERT INTO events (body) VALUES (?1)",
                vec![Value::Text(body)],
            ),
            "get" => run(
                "SELECT body FROM events WHERE id = ?1",
                vec![Value::Integer(id)],
            ),
            "find" => run(
                "SELECT id, body FROM events WHERE body = ?1",
                vec![Value::Text(body)],
            ),
            "count" => run("SELECT count(*) FROM events", vec![]),
            "ddl" => run("DROP TABLE events", vec![]),
            "create" => run("CREATE TABLE stolen (a)", vec![]),
            "attach" => run("ATTACH DATABASE 'stolen.db' AS stolen", vec![]),
            "pragma" => run("PRAGMA table_info(events)", vec![]),
            "rekey" => run("PRAGMA rekey = 'guessable'", vec![]),
            "multi" => run("SELECT 1; DROP TABLE events", vec![]),
            "internal" => run("SELECT name FROM _bulkhead_migrations", vec![]),
            // PostgreSQL's server functions and SELECT … INTO (issue 16).
            "largeobject" => run(
                "SELECT lo_from_bytea(0, ?1)",
                vec![Value::Blob(b"hidden".to_vec())],
            ),
            "lock" => run("SELECT pg_advisory_lock(1)", vec![]),
            "notify" => run("SELECT pg_notify('deploys', 'x')", vec![]),
            "into" => run("SELECT body INTO TEMP stolen FROM events", vec![]),
            // Benchmark: `n` point queries, each timed with the monotonic
            // clock inside the guest; answers p50/p90/p99 in nanoseconds.
            "bench" => {
                let n: usize = param("n").and_then(|v| v.parse().ok()).unwrap_or(100);
                bench(&store, id, n)
            }
            "seed" => {
                let n: usize = param("n").and_then(|v| v.parse().ok()).unwrap_or(100);
                let mut last = String::new();
                for i in 0..n {
                    last = run(
                        "INSERT INTO events (body) VALUES (?1)",
                        vec![Value::Text(format!("row-{i}"))],
                    );
                }
                last
            }
            // Any statement, the request's body (for attacks on the
            // store's bounds: a test guest only).
            "raw" => {
                let statement = read_body(request);
                run(&statement, vec![])
            }
            "inject" => {
                let inserted = run(
                    "INSERT INTO events (body) VALUES (?1)",
                    vec![Value::Text(INJECTION.into())],
                );
                let found = run(
                    "SELECT body FROM events WHERE body = ?1",
                    vec![Value::Text(INJECTION.into())],
                );
                format!("{inserted}\n{found}")
            }
            other => format!("unknown op {other}"),
        };
        reply(response_out, &text);
    }
}

/// The request's body as text, at most 64 KiB.
fn read_body(request: IncomingRequest) -> String {
    let mut bytes = Vec::new();
    if let Ok(body) = request.consume()
        && let Ok(stream) = body.stream()
    {
        while bytes.len() < 64 << 10 {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => bytes.extend(chunk),
                Err(_) => break,
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn bench(store: &str, id: i64, n: usize) -> String {
    use wasip2::clocks::monotonic_clock::now;
    let mut times = Vec::with_capacity(n);
    let began = now();
    for i in 0..n {
        let key = Value::Integer(id + (i as i64 % 100));
        let start = now();
        let result = query(store, "SELECT body FROM events WHERE id = ?1", &[key]);
        times.push(now() - start);
        if let Err(e) = result {
            return show(Err(e));
        }
    }
    let mean = (now() - began) / (n.max(1) as u64);
    times.sort_unstable();
    let at = |q: usize| {
        times
            .get((times.len() * q / 100).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    format!(
        "n={n} p50_ns={} p90_ns={} p99_ns={} mean_ns={mean}",
        at(50),
        at(90),
        at(99)
    )
}

fn show(result: Result<QueryResult, Error>) -> String {
    match result {
        Ok(r) => {
            let rows: Vec<String> = r
                .rows
                .iter()
                .map(|row| {
                    let values: Vec<String> = row.values.iter().map(value).collect();
                    format!("[{}]", values.join(","))
                })
                .collect();
            format!(
                "ok columns={} changes={} rows=[{}]",
                r.columns.join(","),
                r.changes,
                rows.join(",")
            )
        }
        Err(Error::NotGranted(s)) => format!("err not-granted: {s}"),
        Err(Error::ReadOnly) => "err read-only".into(),
        Err(Error::StatementNotAllowed) => "err statement-not-allowed".into(),
        Err(Error::Denied(s)) => format!("err denied: {s}"),
        Err(Error::Invalid(s)) => format!("err invalid: {s}"),
        Err(Error::Limit(s)) => format!("err limit: {s}"),
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => f.to_string(),
        Value::Text(s) => format!("{s:?}"),
        Value::Blob(b) => format!("blob({})", b.len()),
    }
}

fn reply(response_out: ResponseOutparam, text: &str) {
    let resp = OutgoingResponse::new(Fields::new());
    let _ = resp.set_status_code(200);
    let Ok(body) = resp.body() else { return };
    ResponseOutparam::set(response_out, Ok(resp));
    if let Ok(mut out) = body.write() {
        let _ = out.write_all(text.as_bytes());
    }
    let _ = OutgoingBody::finish(body, None);
}
