//! T08 (first part) and T11 (header hand-off): every response carries a
//! correlation ID, a valid `traceparent` is continued into the function, and
//! a client can never set a `bulkhead-*` header the function trusts.

mod support;

use bytes::Bytes;
use serde_json::Value;
use support::{Server, TestApp, get, request, send};

const MANIFEST: &str = r#"
[app]
name = "correlation"

[[function]]
name = "echo"
component = "echo.wasm"
route = "/echo"
auth = "public"
methods = ["GET", "POST"]
"#;

fn header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_valid_traceparent_is_continued_into_the_function() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = request("GET", server.addr, "/echo", Bytes::new());
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let reply = send(server.addr, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.correlation_id(), trace_id);
    let echo = reply.json();
    let traceparent = header(&echo, "traceparent");
    assert_eq!(traceparent.len(), 1);
    assert!(traceparent[0].starts_with(&format!("00-{trace_id}-")));
    assert!(traceparent[0].ends_with("-01"));
    assert_eq!(header(&echo, "bulkhead-correlation-id"), vec![trace_id]);
    assert_eq!(server.access_record(trace_id)["status"], 200);
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let mut req = request("GET", server.addr, "/echo", Bytes::new());
    req.headers_mut().insert(
        "traceparent",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let reply = send(server.addr, req).await;
    let id = reply.correlation_id();
    assert_eq!(id.len(), 32);
    assert_ne!(id, "00000000000000000000000000000000");
    let echo = reply.json();
    assert!(header(&echo, "traceparent")[0].starts_with(&format!("00-{id}-")));
    // Two requests never share an ID.
    assert_ne!(get(server.addr, "/echo").await.correlation_id(), id);
}

#[tokio::test]
async fn clients_cannot_set_bulkhead_headers() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let mut req = request("GET", server.addr, "/echo", Bytes::new());
    for (name, value) in [
        ("bulkhead-subject", "admin"),
        ("Bulkhead-Scopes", "everything"),
        ("bulkhead-correlation-id", "forged"),
    ] {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    let reply = send(server.addr, req).await;
    let echo = reply.json();
    assert!(header(&echo, "bulkhead-subject").is_empty());
    assert!(header(&echo, "bulkhead-scopes").is_empty());
    assert_eq!(
        header(&echo, "bulkhead-correlation-id"),
        vec![reply.correlation_id().as_str()]
    );
}

#[tokio::test]
async fn refusals_are_problem_json_with_the_correlation_id_and_a_log_record() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let hostile_path = "/no-such-%0d%0aforged:%20yes";
    let reply = get(server.addr, hostile_path).await;
    // Control characters in the decoded path: refused before routing (T10).
    let problem = reply.assert_problem(400, "invalid-path");
    assert_eq!(problem["rule"], "control-character");
    assert!(
        !problem.to_string().contains("forged"),
        "never echoes the input"
    );
    let record = server.access_record(&reply.correlation_id());
    assert_eq!(record["reason"], "invalid-path");
    assert_eq!(record["path"], hostile_path, "the path is logged as data");

    let reply = send(
        server.addr,
        request("DELETE", server.addr, "/echo", Bytes::new()),
    )
    .await;
    reply.assert_problem(405, "method-not-allowed");
    assert_eq!(reply.header("allow"), Some("GET, HEAD, POST"));
    server.logs(); // every line is one JSON object
}
