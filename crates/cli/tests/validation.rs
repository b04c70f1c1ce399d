//! T10: every request that is not perfectly formed is refused before any
//! function runs. A corpus of hostile requests, sent as raw bytes over TCP
//! to the real server, each refused with a 4xx problem (or, for broken
//! framing, by the HTTP parser itself: a 4xx or a closed connection), never
//! a 5xx. The echo guest prints one line per call, so the log proves which
//! requests reached it: exactly the valid ones, none of the corpus.

#[path = "validation/corpus.rs"]
mod corpus;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use corpus::Expect::{Problem, Refused};
use corpus::{MANIFEST, SCHEMA, get, json, post};
use serde_json::Value;
use support::{RawAnswer, Server, TestApp, assert_no_5xx, guest_calls, raw_answer};

fn start() -> (TestApp, Server) {
    let app = TestApp::new(MANIFEST, &["echo"]);
    std::fs::create_dir(app.path().join("schemas")).unwrap();
    std::fs::write(app.path().join("schemas/register.json"), SCHEMA).unwrap();
    let server = Server::start(&app);
    (app, server)
}

fn exchange(server: &Server, raw: &[u8]) -> RawAnswer {
    raw_answer(server.addr, raw)
}

#[test]
fn hostile_corpus_is_refused_before_any_function_runs() {
    let (_app, server) = start();
    let cases = corpus::all();
    assert!(cases.len() >= 100, "the corpus has {} cases", cases.len());
    let mut refused_ids = Vec::new();
    for (name, raw, expect) in &cases {
        let answer = exchange(&server, raw);
        let id = corpus::assert_answer(name, &answer, *expect);
        match (expect, id) {
            (Problem(_, slug, _), Some(id)) => refused_ids.push((name, id, *slug)),
            (Problem(..), None) => panic!("{name}: no correlation ID"),
            (Refused, Some(id)) => refused_ids.push((name, id, "")),
            (Refused, None) => {}
        }
    }

    // Valid requests pass, and are the only ones that reach the guest.
    let mut valid = Vec::new();
    for raw in [
        get("/items/abc123?page=2&q=hello%20world&sort=asc"),
        get("/items/%61bc"),
        get("/open/word?anything=goes&x"),
        post("/notes", Some("text/plain; charset=utf-8"), b"a note"),
        post(
            "/free",
            Some("application/json; charset=\"UTF-8\""),
            br#"{"a":1}"#,
        ),
        post("/free", Some("text/plain"), br#"{"a":1,"a":2}"#),
        b"GET http://X:80/items/abc HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
        b"GET /items/abc HTTP/1.0\r\nhost: x:80\r\n\r\n".to_vec(),
        json(r#"{"name":"Ada","email":"ada@example.org","age":36,"tags":["math"]}"#),
    ] {
        let answer = exchange(&server, &raw);
        assert_eq!(answer.status, Some(200), "{}", answer.text());
        valid.push(
            answer
                .header("bulkhead-correlation-id")
                .unwrap()
                .to_string(),
        );
    }
    let last = valid.last().unwrap().clone();
    server.wait_for_log(
        |r| r["target"] == "bulkhead::guest" && r["correlation_id"] == last.as_str(),
        Duration::from_secs(10),
    );
    let reached = guest_calls(&server, "echo");
    assert_eq!(
        reached,
        valid.iter().cloned().collect::<BTreeSet<_>>(),
        "only the valid requests reached the function"
    );

    // Each refusal has its access record naming the reason, and no 5xx anywhere.
    for (name, id, slug) in &refused_ids {
        let record = server.access_record(id);
        if !slug.is_empty() {
            assert_eq!(record["reason"], *slug, "{name}");
        }
        assert!(
            record["status"]
                .as_u64()
                .is_some_and(|s| (400..500).contains(&s)),
            "{name}"
        );
    }
    assert_no_5xx(&server);
}

/// Issue 12, T10: chunked bodies are accepted, and still no request can be
/// smuggled either way on a keep-alive connection. Each framing attack is
/// followed on its connection by a probe request (`GET /probe`, 404): a
/// refused or doubly framed request is answered at most once and the
/// connection closed before the probe is read; a request framed without
/// doubt is answered and the probe after it too. The request hidden in
/// each case (`/items/smuggled`) never appears in the access log at all,
/// so it was never read as a request.
#[test]
fn smuggling_corpus_answers_each_request_once_on_keep_alive() {
    use corpus::Framing;
    use std::io::{Read as _, Write as _};
    let (_app, server) = start();
    let probe = b"GET /probe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    for (name, raw, framing) in corpus::smuggling() {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may close before it has read everything: fine.
        let _ = stream.write_all(&[raw.as_slice(), probe].concat());
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        let answers = RawAnswer::parse_all(&out);
        let statuses: Vec<Option<u16>> = answers.iter().map(|a| a.status).collect();
        for answer in &answers {
            let status = answer.status.unwrap_or(0);
            assert!(status < 500, "{name}: {statuses:?}: {}", answer.text());
            assert!(
                !answer.text().to_ascii_lowercase().contains("evil"),
                "{name}: echoes the input"
            );
        }
        let probed = answers.last().is_some_and(|a| a.status == Some(404));
        match framing {
            Framing::Refused => {
                assert!(answers.len() <= 1 && !probed, "{name}: {statuses:?}");
                if let Some(answer) = answers.first() {
                    assert!(
                        answer.status.is_some_and(|s| (400..500).contains(&s)),
                        "{name}: {statuses:?}"
                    );
                }
            }
            Framing::Once => {
                assert!(answers.len() <= 1 && !probed, "{name}: {statuses:?}");
            }
            Framing::Kept(count) => {
                assert_eq!(answers.len(), count + 1, "{name}: {statuses:?}");
                assert!(probed, "{name}: {statuses:?}");
                assert!(
                    answers[..count].iter().all(|a| a.status == Some(200)),
                    "{name}: {statuses:?}"
                );
            }
        }
    }
    // Every answered request has its access record; the smuggled one none.
    let probes = server.wait_for_count(
        |r| r["target"] == "bulkhead::access" && r["path"] == "/probe",
        corpus::smuggling()
            .iter()
            .filter(|c| matches!(c.2, Framing::Kept(_)))
            .count(),
    );
    assert!(!probes.is_empty());
    let smuggled: Vec<Value> = server
        .logs()
        .into_iter()
        .filter(|r| {
            r["target"] == "bulkhead::access"
                && r["path"].as_str().is_some_and(|p| p.contains("smuggled"))
        })
        .collect();
    assert!(
        smuggled.is_empty(),
        "a smuggled request was read: {smuggled:?}"
    );
}

#[test]
fn valid_requests_reach_the_function_with_filtered_headers() {
    let (_app, server) = start();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = r#"{"name":"Ada","email":"ada@example.org"}"#;
    let raw = format!(
        "POST /register/ada-lovelace HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         user-agent: tester\r\naccept: application/json\r\nx-request-source: unit\r\ncookie: session=secret\r\n\
         authorization: Bearer secret\r\nx-forwarded-for: 10.0.0.1\r\nbulkhead-subject: admin\r\n\
         traceparent: 00-{trace}-00f067aa0ba902b7-01\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(&server, raw.as_bytes());
    assert_eq!(answer.status, Some(200), "{}", answer.text());
    let echo = answer.json();
    assert_eq!(echo["body"], body);
    assert_eq!(echo["path_with_query"], "/register/ada-lovelace");
    let headers = support::echoed_headers(&echo);
    let names: BTreeSet<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "accept",
            "bulkhead-correlation-id",
            "content-length",
            "content-type",
            "traceparent",
            "user-agent",
            "x-request-source",
        ]),
        "{headers:?}"
    );
    // The length of the body the gateway read and hands over (issue 12).
    let length = &headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .unwrap()
        .1;
    assert_eq!(length, &body.len().to_string());
    let traceparent = &headers.iter().find(|(k, _)| k == "traceparent").unwrap().1;
    assert!(
        traceparent.starts_with(&format!("00-{trace}-")),
        "the gateway's traceparent"
    );
    assert_eq!(answer.header("bulkhead-correlation-id"), Some(trace));

    // A field the client's `Connection` names is for that hop only, even
    // one `input.headers` lets through (RFC 9110 §7.6.1; third outside
    // attack).
    let hop = format!(
        "POST /register/ada-lovelace HTTP/1.1\r\nhost: x\r\nconnection: close, X-Request-Source\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-source: unit\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(&server, hop.as_bytes());
    assert_eq!(answer.status, Some(200), "{}", answer.text());
    let headers = support::echoed_headers(&answer.json());
    assert!(
        !headers.iter().any(|(k, _)| k == "x-request-source"),
        "{headers:?}"
    );

    // The path the function sees is the one sent: validated, never rewritten.
    let answer = exchange(&server, &get("/items/%61bc?q=a%20b"));
    let echo = answer.json();
    assert_eq!(echo["path_with_query"], "/items/%61bc?q=a%20b");
}

/// T10, RFC 9112 §3.2 without `[app] hostnames`: any well-formed host is
/// served, HTTP/1.0 may leave `Host` out, but an HTTP/1.1 request without
/// one, with two, with an invalid one or with an absolute-form target that
/// names another host is refused, and none reaches the function.
#[test]
fn t10_host_rules_hold_without_an_allowlist() {
    let app = TestApp::new(
        r#"
[app]
name = "anyhost"

[[function]]
name = "items"
component = "echo.wasm"
route = "/items/{id}"
auth = "public"
"#,
        &["echo"],
    );
    let server = Server::start(&app);
    let mut served = Vec::new();
    for raw in [
        &b"GET /items/a HTTP/1.1\r\nhost: anything.example\r\nconnection: close\r\n\r\n"[..],
        b"GET /items/a HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nconnection: close\r\n\r\n",
        b"GET /items/a HTTP/1.1\r\nhost: [::1]\r\nconnection: close\r\n\r\n",
        b"GET /items/a HTTP/1.0\r\n\r\n",
        b"GET http://other.example/items/a HTTP/1.1\r\nhost: other.example\r\nconnection: close\r\n\r\n",
    ] {
        let answer = exchange(&server, raw);
        assert_eq!(
            answer.status,
            Some(200),
            "{}: {}",
            String::from_utf8_lossy(raw),
            answer.text()
        );
        served.push(answer.header("bulkhead-correlation-id").unwrap().to_string());
    }
    for (raw, rule) in [
        (&b"GET /items/a HTTP/1.1\r\nconnection: close\r\n\r\n"[..], "missing"),
        (
            b"GET /items/a HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nconnection: close\r\n\r\n",
            "repeated",
        ),
        (
            b"GET /items/a HTTP/1.1\r\nhost: evil evil\r\nconnection: close\r\n\r\n",
            "invalid",
        ),
        // T10: names a browser reads as 127.0.0.1 never reach the function.
        (
            b"GET /items/a HTTP/1.1\r\nhost: 2130706433\r\nconnection: close\r\n\r\n",
            "invalid",
        ),
        (
            b"GET /items/a HTTP/1.1\r\nhost: 0x7f.0.0.1\r\nconnection: close\r\n\r\n",
            "invalid",
        ),
        (
            b"GET /items/a HTTP/1.1\r\nhost: 127.000.000.001\r\nconnection: close\r\n\r\n",
            "invalid",
        ),
        (
            b"GET /items/a HTTP/1.1\r\nhost: 0177.1:8080\r\nconnection: close\r\n\r\n",
            "invalid",
        ),
        (
            b"GET http://other.example/items/a HTTP/1.1\r\nhost: a.example\r\nconnection: close\r\n\r\n",
            "mismatch",
        ),
    ] {
        let answer = exchange(&server, raw);
        assert_eq!(
            answer.status,
            Some(400),
            "{}: {}",
            String::from_utf8_lossy(raw),
            answer.text()
        );
        let problem = answer.json();
        assert_eq!(problem["type"], "https://bulkhead.dev/problems/invalid-host");
        assert_eq!(problem["rule"], rule);
        assert!(
            !answer.echoes("evil") && !answer.echoes("example"),
            "the problem never echoes the host: {}",
            answer.text()
        );
        let id = answer.header("bulkhead-correlation-id").unwrap().to_string();
        assert_eq!(server.access_record(&id)["reason"], "invalid-host");
    }
    let last = served.last().unwrap().clone();
    server.wait_for_log(
        |r| r["target"] == "bulkhead::guest" && r["correlation_id"] == last.as_str(),
        Duration::from_secs(10),
    );
    assert_eq!(
        guest_calls(&server, "echo"),
        served.into_iter().collect::<BTreeSet<_>>(),
        "only the served requests reached the function"
    );

    // The function sees the host the check accepted, in its one canonical
    // spelling, never the client's own: what it builds links from is what
    // was checked (issue 11 review, T10).
    for (host, seen) in [
        ("API.Example.COM:08080", "api.example.com:8080"),
        ("[0:0::1]", "[::1]"),
        ("Localhost", "localhost"),
    ] {
        let raw = format!("GET /items/a HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let answer = exchange(&server, raw.as_bytes());
        assert_eq!(answer.status, Some(200), "{host}: {}", answer.text());
        let echo = answer.json();
        assert_eq!(echo["authority"], seen, "{host}");
    }
}

/// Issue 12, item 4 (RFC 9110 §9.3.2): a route that allows GET answers
/// HEAD too; the function sees HEAD and the client gets the head of the
/// answer without its body. A route without GET does not.
#[test]
fn head_is_answered_where_get_is_allowed_without_a_body() {
    let (_app, server) = start();
    let answer = exchange(
        &server,
        b"HEAD /items/abc HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, Some(200), "{}", answer.text());
    assert!(
        answer.body.is_empty() && answer.rest.is_empty(),
        "no body in an answer to HEAD"
    );
    let id = answer
        .header("bulkhead-correlation-id")
        .unwrap()
        .to_string();
    let record = server.access_record(&id);
    assert_eq!(record["method"], "HEAD");
    assert_eq!(record["function"], "items");
    // The function ran: its output is logged once its call ends (for HEAD,
    // when hyper drops the body it does not send), so wait for it.
    server.wait_for_log(
        |r| {
            r["target"] == "bulkhead::guest"
                && r["line"] == "echo called"
                && r["correlation_id"] == id.as_str()
        },
        Duration::from_secs(10),
    );

    // `/notes` allows POST only: HEAD is not allowed there.
    let answer = exchange(
        &server,
        b"HEAD /notes HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(answer.status, Some(405));
}
