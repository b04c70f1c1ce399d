//! Issue 12, item 2: trailing wildcard routes (`/api/{*rest}`), so an app
//! with its own router serves many paths from one component. The real
//! `bulkhead` binary, real HTTP over loopback, a real router guest
//! (`guests/router`) that routes the path it is handed by itself.
//!
//! T10: the tail is decoded once and checked segment by segment like any
//! other path, then matched against `input.path.NAME`; the hostile path
//! corpus of `validation.rs` is replayed under the wildcard and must get
//! exactly the answers it gets without one, never reaching the guest.

#[allow(dead_code)]
#[path = "validation/corpus.rs"]
mod corpus;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use corpus::Expect::{Problem, Refused};
use serde_json::Value;
use support::{RawAnswer, Server, TestApp, assert_no_5xx, get, guest_calls, raw_answer};

/// The router guest behind `/api/{*rest}`, a literal `/api/health` served
/// by another function, and the corpus's `/items/{id}` (same query rules)
/// to compare with.
const MANIFEST: &str = r#"
[app]
name = "routes"

[[function]]
name = "api"
component = "router.wasm"
route = "/api/{*rest}"
auth = "public"
input.query.page = "[0-9]{1,3}"
input.query.q = "[A-Za-z0-9 ]{1,32}"
input.query.sort = true

[[function]]
name = "health"
component = "echo.wasm"
route = "/api/health"
auth = "public"

[[function]]
name = "items"
component = "echo.wasm"
route = "/items/{id}"
auth = "public"
input.query.page = "[0-9]{1,3}"
input.query.q = "[A-Za-z0-9 ]{1,32}"
input.query.sort = true

# A custom tail pattern: at most three segments, ending in `.txt`.
[[function]]
name = "files"
component = "echo.wasm"
route = "/files/{*file}"
auth = "public"
input.path.file = "([a-z0-9-]+/){0,2}[a-z0-9-]+\\.txt"
"#;

fn start() -> (TestApp, Server) {
    let app = TestApp::new(MANIFEST, &["router", "echo"]);
    let server = Server::start(&app);
    (app, server)
}

fn exchange(server: &Server, raw: &[u8]) -> RawAnswer {
    raw_answer(server.addr, raw)
}

/// What the gateway answered, as compared between a path with and without
/// the wildcard: status, problem type and rule (the field differs: the
/// route's parameter is named differently).
fn verdict(answer: &RawAnswer) -> (Option<u16>, Option<String>, Option<String>) {
    let problem: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let get = |key: &str| {
        problem
            .as_ref()
            .and_then(|p| p[key].as_str())
            .map(String::from)
    };
    (answer.status, get("type"), get("rule"))
}

/// `target` with its `/items/` prefix moved under a wildcard: `prefix`
/// replaces `items`, `suffix` is appended to the path (so the hostile
/// segment sits first, deep, or in the middle of the tail).
fn under(target: &str, prefix: &str, suffix: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut moved = path.replacen("items", prefix, 1);
    moved.push_str(suffix);
    if let Some(q) = query {
        moved.push('?');
        moved.push_str(q);
    }
    moved
}

/// T10: every hostile path of the corpus, sent under `/api/{*rest}` with
/// the hostile segment first, deep in the tail and in its middle, gets
/// exactly the status, problem type and rule it gets under `/items/{id}`
/// (and that the corpus expects), and none reaches the router guest.
#[test]
fn t10_hostile_path_corpus_under_a_wildcard_is_refused_as_without_one() {
    let (_app, server) = start();
    assert!(corpus::TARGETS.len() >= 80);
    let mut sent = 0;
    for (name, target, expect) in corpus::TARGETS {
        let baseline = exchange(&server, &corpus::get(target));
        corpus::assert_answer(name, &baseline, *expect);
        for (prefix, suffix) in [("api", ""), ("api/v1/deep", ""), ("api/first", "/last")] {
            let moved = under(target, prefix, suffix);
            let label = format!("{name} as {moved}");
            let answer = exchange(&server, &corpus::get(&moved));
            corpus::assert_answer(&label, &answer, *expect);
            assert_eq!(verdict(&answer), verdict(&baseline), "{label}");
            if let Problem(_, "invalid-parameter", _) = expect {
                let problem = answer.json();
                let field = problem["field"].as_str().unwrap_or_default();
                assert!(
                    field == "path.rest" || field.starts_with("query"),
                    "{label}: the refusal names the tail: {problem}"
                );
            }
            if matches!(expect, Refused) {
                assert!(answer.status.is_none_or(|s| (400..500).contains(&s)));
            }
            sent += 1;
        }
    }
    assert!(sent >= 240, "{sent} hostile requests under the wildcard");

    // A valid request reaches the router; it is the only one that did.
    let valid = exchange(&server, &corpus::get("/api/users/ada?page=2"));
    assert_eq!(valid.status, Some(200), "{}", valid.text());
    let id = valid.correlation_id();
    server.wait_for_log(
        |r| r["target"] == "bulkhead::guest" && r["correlation_id"] == id.as_str(),
        Duration::from_secs(10),
    );
    assert_eq!(guest_calls(&server, "router"), BTreeSet::from([id]));
    assert!(guest_calls(&server, "echo").is_empty());
    assert_no_5xx(&server);
}

/// Under `/{*all}` every path but `/` reaches one function, and the
/// corpus is refused the same: only the look-alike of a literal route,
/// a 404 where there is no wildcard, is now a tail that breaks the
/// default pattern (T10).
#[test]
fn t10_a_root_wildcard_refuses_the_corpus_too() {
    let manifest = r#"
[app]
name = "everything"

[[function]]
name = "all"
component = "router.wasm"
route = "/{*all}"
auth = "public"
input.query.page = "[0-9]{1,3}"
input.query.q = "[A-Za-z0-9 ]{1,32}"
input.query.sort = true
"#;
    let app = TestApp::new(manifest, &["router"]);
    let server = Server::start(&app);
    for (name, target, expect) in corpus::TARGETS {
        let expect = match expect {
            Problem(404, "not-found", _) => Problem(400, "invalid-parameter", "pattern"),
            other => *other,
        };
        let answer = exchange(&server, &corpus::get(target));
        corpus::assert_answer(name, &answer, expect);
        if let Problem(_, "invalid-parameter", _) = expect {
            let problem = answer.json();
            let field = problem["field"].as_str().unwrap_or_default();
            assert!(field == "path.all" || field.starts_with("query"), "{name}");
        }
    }
    // `/` has no tail: the wildcard matches one or more segments.
    let root = exchange(&server, &corpus::get("/"));
    assert_eq!(root.status, Some(404), "{}", root.text());
    assert!(
        root.text().contains("/problems/not-found"),
        "{}",
        root.text()
    );
    let valid = exchange(&server, &corpus::get("/anything/at/all.json"));
    assert_eq!(
        valid.status,
        Some(404),
        "the guest's own 404: {}",
        valid.text()
    );
    assert_eq!(valid.header("content-type"), Some("application/json"));
    let id = valid.correlation_id();
    server.wait_for_log(
        |r| r["target"] == "bulkhead::guest" && r["correlation_id"] == id.as_str(),
        Duration::from_secs(10),
    );
    assert_eq!(guest_calls(&server, "router"), BTreeSet::from([id]));
}

/// The router guest behind `/api/{*rest}` answers its own routes and its
/// own 404, seeing the path exactly as the client sent it; the literal
/// `/api/health` of another function wins over the wildcard; `/api`
/// itself (no tail) is not the wildcard's.
#[test]
fn a_router_guest_behind_a_wildcard_routes_itself_and_literal_routes_win() {
    let (_app, server) = start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = server.addr;

        let user = get(addr, "/api/users/42").await;
        assert_eq!(user.status, 200, "{}", user.text());
        let body = user.json();
        assert_eq!(body["route"], "user");
        assert_eq!(body["id"], "42");
        assert_eq!(body["path_with_query"], "/api/users/42");

        // The guest gets the original path, escapes and query unchanged:
        // it routes itself.
        let encoded = get(addr, "/api/users/%34%32?page=7").await;
        assert_eq!(encoded.status, 200, "{}", encoded.text());
        assert_eq!(
            encoded.json()["path_with_query"],
            "/api/users/%34%32?page=7"
        );
        assert_eq!(encoded.json()["id"], "%34%32");

        // Anything the guest does not know: its own 404, not the gateway's.
        let unknown = get(addr, "/api/nothing/here/at.all").await;
        assert_eq!(unknown.status, 404);
        assert_eq!(unknown.header("content-type"), Some("application/json"));
        assert_eq!(
            unknown.json()["path_with_query"],
            "/api/nothing/here/at.all"
        );

        // The literal route of another function wins over the wildcard.
        let health = get(addr, "/api/health").await;
        assert_eq!(health.status, 200, "{}", health.text());
        let echoed = health.json();
        assert_eq!(echoed["method"], "GET", "the echo guest answered: {echoed}");
        assert!(echoed.get("route").is_none(), "not the router: {echoed}");
        let health_id = health.correlation_id();
        assert_eq!(server.access_record(&health_id)["function"], "health");
        // One segment deeper is the wildcard's again.
        let deeper = get(addr, "/api/health/details").await;
        assert_eq!(deeper.status, 404);
        assert_eq!(
            server.access_record(&deeper.correlation_id())["function"],
            "api"
        );

        // No tail, no match: `/api` is not under `/api/{*rest}`.
        get(addr, "/api").await.assert_problem(404, "not-found");
        let slash = get(addr, "/api/").await.assert_problem(400, "invalid-path");
        assert_eq!(slash["rule"], "empty-segment");
        // Only the methods the route allows (GET, and so HEAD).
        let post = support::send(
            addr,
            support::request("POST", addr, "/api/users/42", bytes::Bytes::new()),
        )
        .await;
        post.assert_problem(405, "method-not-allowed");
        assert_eq!(post.header("allow"), Some("GET, HEAD"));

        // The default tail pattern: letters, digits, `.`, `_`, `~`, `-`.
        let spaced = get(addr, "/api/users/a%20b").await;
        let problem = spaced.assert_problem(400, "invalid-parameter");
        assert_eq!(problem["field"], "path.rest");
        assert_eq!(problem["rule"], "pattern");
        let tilde = get(addr, "/api/users/v1.2_beta~x-y").await;
        assert_eq!(tilde.status, 200, "{}", tilde.text());
    });
}

/// `input.path.file` for `{*file}` is honoured: it matches the whole tail
/// (its decoded segments joined by `/`); a tail that breaks it is refused
/// with a 400 problem naming the field and not the value, logged and
/// audited, and the function never runs (T10, T09).
#[test]
fn t10_a_custom_tail_pattern_is_honoured_and_its_violation_refused() {
    let (app, server) = start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let addr = server.addr;
        for ok in [
            "/files/a.txt",
            "/files/docs/a.txt",
            "/files/docs/2024/notes-1.txt",
        ] {
            let answer = get(addr, ok).await;
            assert_eq!(answer.status, 200, "{ok}: {}", answer.text());
            assert_eq!(answer.json()["path_with_query"], ok);
        }
        let mut refused = Vec::new();
        for bad in [
            "/files/docs/evil.exe",
            "/files/EVIL.txt",
            "/files/a/b/c/evil.txt",
            "/files/docs/evil.txt.exe",
            "/files/evil%20name.txt",
        ] {
            let answer = get(addr, bad).await;
            let problem = answer.assert_problem(400, "invalid-parameter");
            assert_eq!(problem["field"], "path.file", "{bad}");
            assert_eq!(problem["rule"], "pattern", "{bad}");
            assert!(
                !answer.text().to_ascii_lowercase().contains("evil"),
                "{bad}: echoes the input: {}",
                answer.text()
            );
            refused.push(answer.correlation_id());
        }
        // The path rules come first, whatever the pattern allows.
        let slash = get(addr, "/files/docs%2fevil.txt").await;
        assert_eq!(
            slash.assert_problem(400, "invalid-path")["rule"],
            "encoded-slash"
        );
        refused
    });
    for id in &refused {
        let record = server.access_record(id);
        assert_eq!(record["reason"], "invalid-parameter");
        assert_eq!(record["function"], "files");
    }
    let reached = guest_calls(&server, "echo");
    assert!(
        refused.iter().all(|id| !reached.contains(id)),
        "a refused request reached the function"
    );
    // The audit trail is read once the server has flushed it (T09).
    assert!(server.stop().success());
    let audited: Vec<String> = app
        .audit_records("request.refused")
        .iter()
        .filter_map(|r| r["correlation_id"].as_str().map(String::from))
        .collect();
    assert!(
        audited.contains(&refused[0]),
        "the refusal is audited: {audited:?}"
    );
}

/// `bulkhead check` explains every misplaced or misnamed wildcard with its
/// line and what to write instead, lists the tail's pattern, and refuses
/// two wildcards that match the same paths.
#[test]
fn check_explains_wildcard_mistakes() {
    let manifest = r#"
[app]
name = "badroutes"

[[function]]
name = "middle"
component = "echo.wasm"
route = "/api/{*rest}/more"
auth = "public"

[[function]]
name = "bare"
component = "echo.wasm"
route = "/files/*"
auth = "public"

[[function]]
name = "misnamed"
component = "echo.wasm"
route = "/docs/{*Rest}"
auth = "public"

[[function]]
name = "wrongkey"
component = "echo.wasm"
route = "/blog/{*tail}"
auth = "public"
input.path.rest = "[a-z]+"

[[function]]
name = "one"
component = "echo.wasm"
route = "/x/{*a}"
auth = "public"

[[function]]
name = "two"
component = "echo.wasm"
route = "/x/{*b}"
auth = "public"
"#;
    let app = TestApp::new(manifest, &["echo"]);
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for expected in [
        "bulkhead.toml:8:9: function `middle`: route `/api/{*rest}/more`: the wildcard `{*rest}` must be the last segment",
        "bulkhead.toml:14:9: function `bare`: route `/files/*`: segment `*`",
        "write `{*rest}`",
        "bulkhead.toml:20:9: function `misnamed`: route `/docs/{*Rest}`: wildcard `{*Rest}` must be a lowercase name like `{*rest}`",
        "function `wrongkey`: `input.path.rest` names no parameter of the route; the route has `{*tail}`",
        "functions `one` and `two` both serve GET on routes that match the same paths",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    let good = r#"
[app]
name = "goodroutes"

[[function]]
name = "api"
component = "echo.wasm"
route = "/api/{*rest}"
auth = "public"

[[function]]
name = "user"
component = "echo.wasm"
route = "/api/{id}"
auth = "public"

[[function]]
name = "files"
component = "echo.wasm"
route = "/t/{tenant}/{*file}"
auth = "public"
input.path.file = "[a-z/]+"
"#;
    std::fs::write(app.path().join("bulkhead.toml"), good).unwrap();
    let out = app.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "GET /api/{*rest} -> api",
        "path       rest ^(?:[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*)$",
        "path       tenant ^(?:[A-Za-z0-9]+)$, file ^(?:[a-z/]+)$",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
