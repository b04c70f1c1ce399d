//! One caller must not lock everyone else out (T01, T04), against the real
//! binary over loopback, with a second client address (127.0.0.2) standing
//! for everyone else: one address holding every connection, one anonymous
//! caller spending the whole app's daily budget.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde_json::Value;
use support::{Reply, Server, TestApp, get, request};

/// GET `path` over a fresh connection from local address `from`.
async fn try_get_from(addr: SocketAddr, from: &str, path: &str) -> Result<Reply, String> {
    let from: IpAddr = from.parse().map_err(|e| format!("{e}"))?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request("GET", addr, path, Bytes::new()))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// The value of one sample line of the OpenMetrics text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// T01: 300 connections from 127.0.0.1 that each send half a request line
/// and hold on, and keep reconnecting about 100 times a second. Only a small share of the listener's 200 connections is
/// theirs (max(8, 200/16) = 12); the rest are refused at once, with a 429
/// when the client can read it. Meanwhile 127.0.0.2 is served every time.
/// The refusals are logged and metered one by one, and audited folded
/// (T09): a handful of `listener.refused` records that count them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_t01() {
    let app = TestApp::new(
        r#"
[app]
name = "connections"

[limits]
max_connections = 200
header_read_timeout = "60s"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#,
        &["hello"],
    );
    let server = Server::start(&app);
    let addr = server.addr;
    let unix_second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    };
    let first_second = unix_second();
    let mut flood = Vec::new();
    for _ in 0..300 {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = stream.write_all(b"GET /hello HT");
        flood.push(stream);
    }
    assert!(flood.len() >= 250, "only {} flood connections", flood.len());
    // However the server caps them, at least 100 of the 300 are refused:
    // wait until it has seen them.
    let refused = |r: &Value| r["message"] == "connection refused";
    server.wait_for_count(refused, 100);
    // And it keeps reconnecting, about 100 times a second (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let reconnects = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut made = 0u32;
            while !stop.load(Ordering::Relaxed) && made < 3000 {
                if let Ok(mut stream) = TcpStream::connect(addr) {
                    let _ = stream.write_all(b"GET /hello HT");
                }
                made += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });

    // Everyone else is still served while the flood holds.
    let mut served = 0;
    for _ in 0..20 {
        if let Ok(reply) = try_get_from(addr, "127.0.0.2", "/hello").await
            && reply.status == 200
        {
            served += 1;
        }
        // Spread over about a second, while the flood reconnects.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("127.0.0.2 served {served} of 20 while 127.0.0.1 floods");

    // A refused connection that reads gets a problem, not just a reset.
    let mut probe = TcpStream::connect(addr).expect("connect");
    probe
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut answer = Vec::new();
    let _ = probe.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(served, 20, "the flood locked 127.0.0.2 out");
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer:?}");
    assert!(answer.contains("retry-after: 1"), "{answer:?}");
    assert!(
        answer.contains("https://bulkhead.dev/problems/too-many-connections"),
        "{answer:?}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let problem: Value = serde_json::from_str(body).expect("problem JSON");
    assert!(head.contains(&format!(
        "bulkhead-correlation-id: {}",
        problem["correlation_id"].as_str().expect("a correlation ID")
    )));

    stop.store(true, Ordering::Relaxed);
    reconnects.join().expect("the reconnecting flood");

    // Every refusal is metered one by one; logged and audited folded.
    let by_address = |r: &Value| {
        r["message"] == "connection refused" && r["reason"] == "address-connection-limit"
    };
    let admin = server.admin.expect("admin listener");
    let metered = |text: &str| {
        metric(
            text,
            "bulkhead_refusals_total{reason=\"address-connection-limit\"}",
        )
        .unwrap_or(0.0) as u64
    };
    // The last reconnects may still be in the accept queue: wait (bounded)
    // until the count stops moving.
    let mut refusals = metered(&get(admin, "/metrics").await.text());
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = metered(&get(admin, "/metrics").await.text());
        if now == refusals {
            break;
        }
        refusals = now;
    }
    assert!(refusals >= 289, "{refusals} refusals metered");
    drop(flood);
    let seconds = unix_second() - first_second + 1;
    // The log is read once the server has stopped (everything written).
    let logs = server.stop_with_logs();
    let logged = logs.iter().filter(|r| by_address(r)).count() as u64;

    let records: Vec<Value> = app
        .audit_records("listener.refused")
        .into_iter()
        .filter(|r| r["detail"]["reason"] == "address-connection-limit")
        .collect();
    let full = records
        .iter()
        .filter(|r| r["detail"]["peer"].is_string())
        .count() as u64;
    let folded: u64 = records
        .iter()
        .filter_map(|r| r["detail"]["repeated"].as_u64())
        .sum();
    eprintln!("{refusals} refusals: {full} audited in full, {folded} counted");
    assert_eq!(full + folded, refusals, "{records:?}");
    // Logged like audited: one line per peer and second, not one each, so
    // a flood of connections cannot fill the disk through the log (T09).
    assert_eq!(logged, full, "one log line per audited refusal");
    assert!(
        full <= seconds,
        "{full} full records in {seconds} s: not folded"
    );
    for summary in records.iter().filter(|r| r["detail"]["repeated"].is_u64()) {
        assert_eq!(summary["detail"]["caller"], "ip:127.0.0.1");
    }
}

/// T04: each caller may spend a tenth of the app's daily budget unless a
/// per-caller budget says otherwise. At one (list) dollar a request and
/// 20 USD a day, 127.0.0.1 gets two calls of the public route and is then
/// refused with `budget-exhausted`; 127.0.0.2 is still served.
#[tokio::test]
async fn one_caller_cannot_spend_the_whole_app_budget_t04() {
    let app = TestApp::new(
        r#"
[app]
name = "shares"

[pricing]
per_million_requests = "1000000 USD"
per_gb_second = "0 USD"
per_gb_egress = "0 USD"

[limits]
budget = { per_day = "20 USD" }

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#,
        &["hello"],
    );
    let server = Server::start(&app);
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..5 {
        let reply = get(server.addr, "/hello").await;
        statuses.push(reply.status);
        if reply.status != 200 {
            refusal = Some(reply);
        }
    }
    eprintln!("127.0.0.1 got {statuses:?}");
    assert_eq!(statuses, [200, 200, 429, 429, 429]);
    let refusal = refusal.expect("a refusal");
    let problem = refusal.assert_problem(429, "budget-exhausted");
    // The caller's own share is spent, not the app's budget.
    assert_eq!(
        problem["detail"]
            .as_str()
            .map(|t| t.starts_with("You have spent your daily budget for this app")),
        Some(true),
        "{problem}"
    );
    let wait: u64 = refusal
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After");
    assert!((1..=86_400).contains(&wait));
    for _ in 0..2 {
        let other = try_get_from(server.addr, "127.0.0.2", "/hello")
            .await
            .expect("a response");
        assert_eq!(other.status, 200, "{}", other.text());
    }
    try_get_from(server.addr, "127.0.0.2", "/hello")
        .await
        .expect("a response")
        .assert_problem(429, "budget-exhausted");
}
