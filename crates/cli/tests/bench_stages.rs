//! Issue 17: `bench/costs` prices pipeline stages by turning them off with
//! `BULKHEAD_BENCH_SKIP`, which only a `bench-stages` build reads. The
//! shipped binary (default features) must ignore it: with every stage
//! named, each control still refuses, over real HTTP against the real
//! binary (T01, T08, T09, T10).
#![cfg(not(feature = "bench-stages"))]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::{Server, TestApp, get};

const EVERY_STAGE: &str = "correlation,route,validation,admission,metrics,audit";

/// A request on a connection the test keeps open; its head is read.
fn hold(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).expect("the head comes");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    stream
}

#[tokio::test]
async fn the_shipped_binary_ignores_bulkhead_bench_skip_t01_t08_t09_t10() {
    let app = TestApp::new(
        r#"
[app]
name = "stages"

[limits]
max_concurrent_requests = 1
max_outstanding_requests = 1
timeout = "20s"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"

[[function]]
name = "stream"
component = "stream.wasm"
route = "/s/{what}"
auth = "public"
input.query.lines = '[0-9]{1,3}'
input.query.gap = '[0-9]{1,4}'
"#,
        &["hello", "stream"],
    );
    let server = Server::start_with_env(&app, &[], &[("BULKHEAD_BENCH_SKIP", EVERY_STAGE)]);

    // Correlation (T08): every request gets its own ID.
    let first = get(server.addr, "/hello").await;
    let second = get(server.addr, "/hello").await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_ne!(first.correlation_id(), second.correlation_id());

    // Route: an unknown path is not served by the first function.
    let missing = get(server.addr, "/nowhere").await;
    missing.assert_problem(404, "not-found");
    // Audit (T09): the refusal is on the trail before its answer.
    let refused = app.audit_records("request.refused");
    assert!(
        refused
            .iter()
            .any(|r| r.to_string().contains(&missing.correlation_id())),
        "the 404 is audited: {refused:?}"
    );

    // Validation (T10): an undeclared query parameter is refused.
    get(server.addr, "/hello?who=x")
        .await
        .assert_problem(400, "unknown-parameter");

    // Admission (T01): while a stream holds the one place, hello is refused.
    let held = hold(server.addr, "/s/sse?lines=40&gap=250");
    get(server.addr, "/hello")
        .await
        .assert_problem(429, "too-many-requests");
    drop(held);

    // And nothing in the log says stages were turned off.
    assert!(
        !server
            .logs()
            .iter()
            .any(|r| r.to_string().contains("BULKHEAD_BENCH_SKIP")
                || r["message"] == "bench build: pipeline stages turned off"),
        "a shipped binary never reads the variable"
    );
}
