//! T01: bounded admission and HTTP hygiene. Over the outstanding bound a
//! request is refused at once with 429; oversized, slow and malformed
//! requests are refused before any function runs.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{Server, TestApp, raw_exchange, request, send, try_send};

/// With 2 running and 4 outstanding allowed, 10 simultaneous slow calls
/// give exactly 6 refusals (429 + Retry-After) and 4 successes, no 5xx.
#[tokio::test]
async fn excess_requests_get_429_at_once_and_the_rest_succeed() {
    let app = TestApp::new(
        r#"
[app]
name = "admission"

[limits]
timeout = "20s"

[[function]]
name = "slow"
component = "hostile.wasm"
route = "/slow/{what}"
auth = "public"
input.query.ms = "[0-9]{1,5}"
max_concurrent_requests = 2
max_outstanding_requests = 4
# One caller sends all ten: let it hold every place (T02 caps it by default).
max_outstanding_per_caller = 4
"#,
        &["hostile"],
    );
    let server = Server::start(&app);
    let addr = server.addr;
    // Long enough that all ten are in flight together.
    let calls: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                send(
                    addr,
                    request("GET", addr, "/slow/sleep?ms=3000", Bytes::new()),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        let reply = call.await.unwrap();
        match reply.status {
            200 => {
                assert_eq!(reply.text(), "slept");
                ok += 1;
            }
            429 => {
                reply.assert_problem(429, "too-many-requests");
                assert_eq!(reply.header("retry-after"), Some("1"));
                refused += 1;
            }
            other => panic!("unexpected status {other}: {}", reply.text()),
        }
    }
    assert_eq!((ok, refused), (4, 6));
    let refusals = server
        .wait_for_count(|r| r["reason"] == "too-many-requests", 6)
        .len();
    assert_eq!(refusals, 6, "each refusal leaves a log record");
}

/// The app-wide bound holds across functions.
#[tokio::test]
async fn the_app_wide_bound_covers_all_functions() {
    let app = TestApp::new(
        r#"
[app]
name = "appwide"

[limits]
timeout = "20s"
max_concurrent_requests = 1
max_outstanding_requests = 2
max_outstanding_per_caller = 2

[[function]]
name = "a"
component = "hostile.wasm"
route = "/a/{what}"
auth = "public"
input.query.ms = "[0-9]{1,5}"

[[function]]
name = "b"
component = "hostile.wasm"
route = "/b/{what}"
auth = "public"
input.query.ms = "[0-9]{1,5}"
"#,
        &["hostile"],
    );
    let server = Server::start(&app);
    let addr = server.addr;
    let calls: Vec<_> = [
        "/a/sleep?ms=3000",
        "/b/sleep?ms=3000",
        "/a/sleep?ms=3000",
        "/b/sleep?ms=3000",
    ]
    .into_iter()
    .map(|p| {
        tokio::spawn(async move {
            send(addr, request("GET", addr, p, Bytes::new()))
                .await
                .status
        })
    })
    .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 429, 429]);
}

const LISTENER_APP: &str = r#"
[app]
name = "listener"

[limits]
header_read_timeout = "1s"
body_read_timeout = "1s"
max_headers = 16
max_header_bytes = "8KiB"

[[function]]
name = "echo"
component = "echo.wasm"
route = "/echo"
auth = "public"
methods = ["POST"]
max_request_body = "1KiB"
"#;

#[tokio::test]
async fn oversized_bodies_get_413_and_never_reach_the_function() {
    let app = TestApp::new(LISTENER_APP, &["echo"]);
    let server = Server::start(&app);
    // Declared too large.
    let big = vec![b'x'; 4096];
    let reply = send(
        server.addr,
        request("POST", server.addr, "/echo", big.clone()),
    )
    .await;
    let problem = reply.assert_problem(413, "body-too-large");
    assert!(
        !problem.to_string().contains("xxxx"),
        "never echoes the input"
    );
    // Chunked, so no length is declared: refused once it passes the cap
    // (issue 12: chunked bodies are read, under the same cap).
    let mut chunked = String::from(
        "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for _ in 0..8 {
        chunked.push_str("200\r\n");
        chunked.push_str(&"y".repeat(0x200));
        chunked.push_str("\r\n");
    }
    chunked.push_str("0\r\n\r\n");
    let raw = raw_exchange(server.addr, chunked.as_bytes(), Duration::from_secs(10));
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("body-too-large"), "{raw}");
    // A body within the cap is served.
    let fine = send(server.addr, request("POST", server.addr, "/echo", "small")).await;
    assert_eq!(fine.status, 200);
    assert_eq!(fine.json()["body"], "small");
}

#[tokio::test]
async fn a_slow_body_gets_408() {
    let app = TestApp::new(LISTENER_APP, &["echo"]);
    let server = Server::start(&app);
    // Declares 100 bytes, sends 10, then stalls.
    let raw = raw_exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
        Duration::from_secs(10),
    );
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.contains("body-timeout"));
}

/// Slowloris: a client that never finishes its headers is disconnected.
#[tokio::test]
async fn a_slow_header_is_cut_off() {
    let app = TestApp::new(LISTENER_APP, &["echo"]);
    let server = Server::start(&app);
    let raw = raw_exchange(
        server.addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\nx-slow: ",
        Duration::from_secs(10),
    );
    // The server closed the connection (the read did not wait the full 10 s
    // guard for nothing: either a 408 or a bare close).
    assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 408"), "{raw:?}");
    server.wait_for_log(|r| r["reason"] == "header-timeout", Duration::from_secs(10));
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_refused() {
    let app = TestApp::new(LISTENER_APP, &["echo"]);
    let server = Server::start(&app);
    let mut many = String::from("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n");
    for i in 0..40 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let raw = raw_exchange(server.addr, many.as_bytes(), Duration::from_secs(10));
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");

    let huge = format!(
        "POST /echo HTTP/1.1\r\nhost: x\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(20_000)
    );
    let raw = raw_exchange(server.addr, huge.as_bytes(), Duration::from_secs(10));
    assert!(raw.starts_with("HTTP/1.1 431"), "{raw}");
    // Still serving.
    assert_eq!(
        send(server.addr, request("POST", server.addr, "/echo", "ok"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let app = TestApp::new(
        r#"
[app]
name = "connections"

[limits]
max_connections = 2
header_read_timeout = "30s"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#,
        &["hello"],
    );
    let server = Server::start(&app);
    // Two idle connections hold both slots.
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    // The kernel's accept queue is FIFO, so the server takes these two
    // before the third.
    let raw = raw_exchange(
        server.addr,
        b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    // Closed before its request is read: at most a 429 (T01), never served.
    assert!(
        raw.is_empty() || raw.starts_with("HTTP/1.1 429 "),
        "the third connection is refused: {raw:?}"
    );
    server.wait_for_log(
        |r| r["reason"] == "connection-limit",
        Duration::from_secs(10),
    );
    drop(held);
    // Slots free again once the server has seen the idle connections go.
    let mut served = false;
    for _ in 0..100 {
        let hello = try_send(
            server.addr,
            request("GET", server.addr, "/hello", Bytes::new()),
        )
        .await;
        if hello.is_ok_and(|reply| reply.status == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the server serves again once connections close");
}
