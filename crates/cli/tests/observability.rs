//! T07, T08, T09: injection-proof logs, one correlation ID from gateway to
//! function to outbound call to a second app and into the audit trail, a
//! tamper-evident audit trail checked with `bulkhead audit verify`, and
//! Prometheus metrics on the admin listener only.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use support::{Server, TestApp, get, raw_exchange, request, send};

const APP: &str = r#"
[app]
name = "observed"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"

[[function]]
name = "echo"
component = "echo.wasm"
route = "/echo/{word}"
auth = "public"
methods = ["GET", "POST"]
"#;

/// Every way a request can carry hostile bytes into a log line: each log
/// line still parses as exactly one JSON object, and each request's access
/// record is its own, with the path kept as data.
#[tokio::test]
async fn log_injection_corpus_cannot_forge_records() {
    let app = TestApp::new(APP, &["hello", "echo"]);
    let server = Server::start(&app);
    let corpus: &[&[u8]] = &[
        b"GET /echo/a%0d%0a%7b%22level%22%3a%22ERROR%22%7d HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /echo/%1b%5b31mred%1b%5b0m HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /echo/%e2%80%a8after-line-separator HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /nowhere/\",\"forged\":true,\"x\":\" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /echo/q?v=%0a%7b%22forged%22%3atrue%7d&w=\xe2\x80\xa8 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /echo/h HTTP/1.1\r\nhost: x\r\nx-evil: \xe2\x80\xa8{\"forged\":true}\r\nuser-agent: \x1b[2J\r\nconnection: close\r\n\r\n",
        b"GET /echo/bad\x1bpath HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        b"GET /echo/crlf\r\nforged: header\r\n\r\n",
    ];
    let body = "\r\n{\"forged\":true}\r\n\u{1b}[0m\0\0";
    let post = format!(
        "POST /echo/body HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let long_path = format!(
        "GET /echo/{} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        "A".repeat(6000)
    );
    let mut answered = Vec::new();
    for raw in corpus
        .iter()
        .copied()
        .chain([long_path.as_bytes(), post.as_bytes()])
    {
        let response = raw_exchange(server.addr, raw, Duration::from_secs(10));
        if let Some(id) = response
            .lines()
            .find_map(|l| l.strip_prefix("bulkhead-correlation-id: "))
        {
            answered.push(id.trim().to_string());
        }
    }
    assert!(
        answered.len() >= 7,
        "most of the corpus reaches the gateway"
    );
    for id in &answered {
        let record = server.access_record(id);
        assert_eq!(record["target"], "bulkhead::access");
        assert!(record["path"].is_string());
    }
    // The guest's own hostile output is covered in sandbox.rs; here the
    // whole log must still be one JSON object per line, none forged.
    let logs = server.logs();
    assert!(!logs.iter().any(|r| r.get("forged").is_some()));
    assert!(!logs.iter().any(|r| r["level"] == "ERROR"));
    let access = logs
        .iter()
        .filter(|r| r["target"] == "bulkhead::access")
        .count();
    assert_eq!(
        access,
        answered.len(),
        "one access record per answered request"
    );
}

/// One trace, three hops: client -> app A's function -> outbound call to
/// app B's function. Both apps log the same correlation ID; app A's audit
/// trail holds the outbound call, found with `audit query`.
#[tokio::test]
async fn one_correlation_id_follows_the_request_across_apps() {
    let b_app = TestApp::new(APP, &["hello", "echo"]);
    let b = Server::start(&b_app);
    let a_app = TestApp::new(
        &format!(
            r#"
[app]
name = "caller"

[[function]]
name = "caller"
component = "hostile.wasm"
route = "/call/{{what}}"
auth = "public"
input.query.url = 'http://\S{{1,200}}'
grants = {{ outbound = ["http://127.0.0.1:{}"] }}
"#,
            b.addr.port()
        ),
        &["hostile"],
    );
    let a = Server::start(&a_app);
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut req = request(
        "GET",
        a.addr,
        &format!(
            "/call/fetch?url=http://127.0.0.1:{}/echo/hop",
            b.addr.port()
        ),
        Bytes::new(),
    );
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    let reply = send(a.addr, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.correlation_id(), trace_id);
    let text = reply.text();
    assert!(text.starts_with("REACHED status 200"), "{text}");
    assert!(
        text.contains(&format!("00-{trace_id}-")),
        "B's function saw the trace: {text}"
    );

    assert_eq!(a.access_record(trace_id)["function"], "caller");
    assert_eq!(b.access_record(trace_id)["function"], "echo");

    assert!(a.stop().success());
    let story = a_app.run_with(
        &["audit", "query"],
        &["--correlation-id", trace_id, "--format", "json"],
    );
    assert!(story.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&story.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records.iter().any(|r| r["kind"] == "capability.used"
            && r["detail"]["destination"] == format!("http://127.0.0.1:{}", b.addr.port())),
        "{records:?}"
    );
    assert!(records.iter().all(|r| r["correlation_id"] == trace_id));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// T09: refusals land in the audit trail; editing, deleting or inserting a
/// record in the SQLite file is caught by `bulkhead audit verify`, which
/// names the first bad record.
#[tokio::test]
async fn audit_verify_names_the_first_tampered_record() {
    // Six callers (behind a trusted proxy), so that no refusal is folded
    // into another's record.
    let manifest = APP.replacen(
        "[[function]]",
        "[limits]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\n\n[[function]]",
        1,
    );
    let app = TestApp::new(&manifest, &["hello", "echo"]);
    let server = Server::start(&app);
    for i in 0..6 {
        let mut missing = request("GET", server.addr, &format!("/missing/{i}"), Bytes::new());
        missing.headers_mut().insert(
            "x-forwarded-for",
            format!("198.51.100.{i}").parse().unwrap(),
        );
        send(server.addr, missing)
            .await
            .assert_problem(404, "not-found");
    }
    assert!(server.stop().success());

    let verify = |dir: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["audit", "verify"])
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("intact (8 records)"),
        "deploy + 6 refusals + shutdown: {text}"
    );

    let refusals = app.run_with(
        &["audit", "query"],
        &["--kind", "request.refused", "--format", "json"],
    );
    assert_eq!(String::from_utf8_lossy(&refusals.stdout).lines().count(), 6);

    let tamper = |statement: &str, expect: &str| {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(app.path(), copy.path());
        let db = copy.path().join(".bulkhead/dev/state.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(statement)
            .unwrap();
        let (ok, text) = verify(copy.path());
        assert!(!ok, "tampering with `{statement}` went unnoticed");
        assert!(text.contains(expect), "{statement}: {text}");
    };
    tamper(
        "UPDATE audit SET detail = '{\"reason\":\"not-found\",\"path\":\"/innocent\"}' WHERE seq = 3",
        "BROKEN at record 3",
    );
    tamper("DELETE FROM audit WHERE seq = 5", "BROKEN at record 5");
    tamper("DELETE FROM audit WHERE seq = 8", "BROKEN at record 8");
    tamper(
        "INSERT INTO audit (seq, time_ms, kind, detail, prev_hash, hash) SELECT 9, 0, 'deploy', '{}', hash, 'f00d' FROM audit WHERE seq = 8",
        "BROKEN at record 9",
    );
}

/// T08: metrics on the admin listener (parsed by a real Prometheus text
/// parser), never on the public port.
#[tokio::test]
async fn metrics_are_served_on_the_admin_listener_only() {
    let app = TestApp::new(APP, &["hello", "echo"]);
    let server = Server::start(&app);
    for _ in 0..3 {
        assert_eq!(get(server.addr, "/hello").await.status, 200);
    }
    get(server.addr, "/nope")
        .await
        .assert_problem(404, "not-found");
    get(server.addr, "/metrics")
        .await
        .assert_problem(404, "not-found");

    let admin = server.admin.expect("admin listener");
    let metrics = get(admin, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let value = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("bulkhead_requests_total", ("function", "hello")),
        Some(3.0)
    );
    assert_eq!(
        value("bulkhead_refusals_total", ("reason", "not-found")),
        Some(2.0)
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("bulkhead_request_duration_seconds"))
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "bulkhead_live_instances")
    );

    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
}

/// The admin listener refuses a missing or wrong token once one exists,
/// and outside dev it will not start without one.
#[tokio::test]
async fn the_admin_listener_requires_its_token() {
    let app = TestApp::new(APP, &["hello", "echo"]);
    // Everything else strict `prod` asks for is there (T19).
    let master_key = support::prod::make_prod_ready(&app);
    let refused = support::prod::bulkhead(
        &[
            "serve",
            app.path().to_str().unwrap(),
            "--env",
            "prod",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &master_key.env(),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bulkhead admin token"));

    let created = app.run_with(&["admin", "token"], &["--env", "prod"]);
    assert!(created.status.success());
    let token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(token.starts_with("bha_") && token.len() > 60);

    let server = Server::start_with_env(&app, &["--env", "prod"], &master_key.env());
    let admin = server.admin.expect("admin listener");
    let missing = get(admin, "/metrics").await;
    missing.assert_problem(401, "admin-token-missing");
    assert!(
        missing
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer"))
    );
    let mut wrong = request("GET", admin, "/metrics", Bytes::new());
    wrong
        .headers_mut()
        .insert("authorization", "Bearer bha_0000".parse().unwrap());
    send(admin, wrong)
        .await
        .assert_problem(401, "admin-token-invalid");
    let mut right = request("GET", admin, "/metrics", Bytes::new());
    right
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(send(admin, right).await.status, 200);
    assert!(server.stop().success());

    let refusals = app.run_with(
        &["audit", "query"],
        &[
            "--env",
            "prod",
            "--kind",
            "admin.refused",
            "--format",
            "json",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&refusals.stdout).lines().count(), 2);
    // The token itself is never stored or logged.
    let db = std::fs::read(app.path().join(".bulkhead/prod/state.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&token));
}

// ---- T09, issue 11: audit laundering, rollback and file modes ----

/// `bulkhead audit verify APP_DIR`: (exit success, stdout).
fn verify(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn state_db(app: &TestApp) -> std::path::PathBuf {
    app.path().join(".bulkhead/dev/state.db")
}

/// One refused request (404), which the gateway audits.
async fn refuse(server: &Server) {
    get(server.addr, "/missing")
        .await
        .assert_problem(404, "not-found");
}

/// Spill files waiting beside the app's `dev` database (not those set
/// aside as rejected).
fn waiting_spills(app: &TestApp) -> usize {
    std::fs::read_dir(app.path().join(".bulkhead/dev"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("audit.spill-") && !name.ends_with(".rejected")
        })
        .count()
}

/// An app served once, with one refused request on its audit trail, and
/// stopped: the starting point of the tampering tests.
async fn served_once() -> TestApp {
    let app = TestApp::new(APP, &["hello", "echo"]);
    let server = Server::start(&app);
    refuse(&server).await;
    assert!(server.stop().success());
    app
}

/// A gauge or counter from the admin listener's `/metrics`.
async fn metric(server: &Server, name: &str) -> Option<f64> {
    let text = get(server.admin.expect("admin listener"), "/metrics")
        .await
        .text();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// Waits for the writer's error about a broken trail.
/// Serve `app` until its writer has recorded one break and `/metrics`
/// exports it, then stop.
async fn serve_until_the_break_is_exported(app: &TestApp) {
    let server = Server::start(app);
    wait_for_break(&server);
    assert_eq!(
        metric(&server, "bulkhead_audit_chain_breaks").await,
        Some(1.0)
    );
    assert!(server.stop().success());
}

fn wait_for_break(server: &Server) {
    server.wait_for_log(
        |r| {
            r["target"] == "bulkhead::audit"
                && r["level"] == "ERROR"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("tampered"))
        },
        Duration::from_secs(30),
    );
}

/// Recompute every record's hash from `from` on, as an attacker with
/// write access to `state.db` can: the hash needs no key.
fn rehash(db: &Path, from: i64) {
    use sha2::{Digest, Sha256};
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut prev: String = conn
        .query_row("SELECT prev_hash FROM audit WHERE seq = ?1", [from], |r| {
            r.get(0)
        })
        .unwrap();
    type Fields = (
        i64,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
    );
    let rows: Vec<Fields> = conn
        .prepare("SELECT seq, time_ms, kind, correlation_id, subject, function, detail FROM audit WHERE seq >= ?1 ORDER BY seq")
        .unwrap()
        .query_map([from], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (seq, time, kind, corr, subject, function, detail) in rows {
        let canonical = serde_json::json!([seq, time, kind, corr, subject, function, detail, prev]);
        let hash = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
        conn.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
}

/// T09 (issue 11, item 1): delete the last audit records while the server
/// is stopped, restart it and cause a refusal. The writer used to carry on
/// from the shortened chain and write a fresh keyed head, so `verify` said
/// OK again. Now it refuses to extend that chain, logs an error, raises
/// `bulkhead_audit_chain_breaks`, keeps serving, and `verify` reports the
/// break for ever.
#[tokio::test]
async fn t09_deleting_the_last_audit_records_is_reported_for_ever() {
    let app = served_once().await;
    let (ok, text) = verify(app.path());
    assert!(ok && text.contains("intact (3 records)"), "{text}");

    // Hide the refusal and the shutdown.
    rusqlite::Connection::open(state_db(&app))
        .unwrap()
        .execute_batch("DELETE FROM audit WHERE seq >= 2")
        .unwrap();

    let server = Server::start(&app);
    refuse(&server).await;
    assert_eq!(
        get(server.addr, "/hello").await.status,
        200,
        "still serving"
    );
    let breaks = metric(&server, "bulkhead_audit_chain_breaks").await;
    let budget = metric(&server, "bulkhead_audit_max_size_bytes").await;
    // The writer checks the trail when it starts, before `listening`.
    let logs = server.logs();
    assert!(server.stop().success());
    let (ok, text) = verify(app.path());
    assert!(!ok, "the deletion was laundered: {text}");
    assert!(text.contains("BROKEN at record 2"), "{text}");
    assert!(text.contains("deleted from the end"), "{text}");
    assert!(
        logs.iter().any(|r| r["target"] == "bulkhead::audit"
            && r["level"] == "ERROR"
            && r["broken_at"] == 2),
        "{logs:?}"
    );
    assert_eq!(breaks, Some(1.0));
    assert_eq!(
        budget,
        Some((1u64 << 30) as f64),
        "the default [audit] max_size"
    );

    // More writers later (a CLI command, another serve) change nothing.
    let key = app.run_with(&["keys", "create"], &["--subject", "ci-bot"]);
    assert!(key.status.success());
    let server = Server::start(&app);
    refuse(&server).await;
    assert!(server.stop().success());
    let (ok, text) = verify(app.path());
    assert!(!ok && text.contains("BROKEN at record 2"), "{text}");
    assert_eq!(app.audit_records("audit.chain_broken").len(), 1);
}

/// T09 (issue 11, item 1): edit a record and recompute every later hash
/// (no key needed), then cause `keys create`, which appends from another
/// process. The keyed head no longer matches the re-hashed tail, so the
/// CLI's writer records the break instead of signing the forgery.
#[tokio::test]
async fn t09_a_rehashed_audit_chain_is_not_laundered_by_keys_create() {
    let app = served_once().await;

    let db = state_db(&app);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "UPDATE audit SET detail = '{\"reason\":\"not-found\",\"path\":\"/innocent\"}' WHERE seq = 2",
        )
        .unwrap();
    rehash(&db, 2);

    let key = app.run_with(&["keys", "create"], &["--subject", "ci-bot"]);
    assert!(key.status.success());
    let (ok, text) = verify(app.path());
    assert!(!ok, "the edit was laundered: {text}");
    assert!(text.contains("BROKEN at record 3"), "{text}");
    assert!(text.contains("re-hashed"), "{text}");
    let breaks = app.audit_records("audit.chain_broken");
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    assert_eq!(breaks[0]["seq"], 4);
    assert_eq!(app.audit_records("key.created").len(), 1);
}

/// T09 (issue 11, item 1): restore an older copy of `state.db`. The head
/// file beside it (MAC'd, outside the database) is ahead: `verify` says
/// the database was rolled back, and a server started on it records the
/// break and exports it.
#[tokio::test]
async fn t09_a_restored_older_state_db_is_detected_through_the_head_file() {
    let app = served_once().await;
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");

    let aside = tempfile::tempdir().unwrap();
    let suffixes = ["", "-wal", "-shm"];
    let companion = |base: &Path, suffix: &str| {
        let mut name = base.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let db = state_db(&app);
    for suffix in suffixes {
        let from = companion(&db, suffix);
        if from.exists() {
            std::fs::copy(&from, companion(&aside.path().join("state.db"), suffix)).unwrap();
        }
    }

    let server = Server::start(&app);
    refuse(&server).await;
    // The writer commits in the background: wait (bounded) for the head
    // gauge to reach the refusal.
    let mut head = None;
    for _ in 0..200 {
        head = metric(&server, "bulkhead_audit_head_seq").await;
        if head == Some(5.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.stop().success());

    for suffix in suffixes {
        let _ = std::fs::remove_file(companion(&db, suffix));
        let from = companion(&aside.path().join("state.db"), suffix);
        if from.exists() {
            std::fs::copy(&from, companion(&db, suffix)).unwrap();
        }
    }
    let (ok, text) = verify(app.path());
    assert!(!ok, "the rollback went unnoticed: {text}");
    assert!(text.contains("audit.head: record 6"), "{text}");
    assert!(text.contains("BROKEN at record 4"), "{text}");
    assert!(text.contains("rolled back"), "{text}");
    assert_eq!(head, Some(5.0), "deploy + refusal after the first 3");

    serve_until_the_break_is_exported(&app).await;
    let (ok, text) = verify(app.path());
    assert!(!ok && text.contains("rolled back"), "{text}");
}

/// Issue 11 (smaller item): every file under `.bulkhead/ENV` is 0600 and
/// every directory 0700, the SQLite -wal/-shm files, keys and the head
/// file included, even when the state directory already existed 0755.
#[cfg(unix)]
#[tokio::test]
async fn state_files_are_owner_only_even_in_a_loose_existing_dir() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::new(
        r#"
[app]
name = "private"

[store.shared]
kind = "kv"

[[function]]
name = "writer"
component = "kv.wasm"
route = "/w"
auth = "public"
input.query.op = true
input.query.store = true
input.query.key = true
input.query.value = true
grants = { kv = { shared = "read-write" } }
"#,
        &["kv"],
    );
    let state = app.path().join(".bulkhead/dev");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();

    /// Every directory 0700, every file 0600. A temp file renamed away
    /// while we look (the head file is replaced after each commit) is
    /// skipped.
    fn walk(dir: &Path, names: &mut Vec<String>) {
        let mode = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.is_dir(), m.permissions().mode() & 0o777))
        };
        assert_eq!(mode(dir), Some((true, 0o700)), "{}", dir.display());
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            match mode(&path) {
                Some((true, _)) => walk(&path, names),
                Some((false, m)) => {
                    assert_eq!(m, 0o600, "{}", path.display());
                    names.push(path.file_name().unwrap().to_string_lossy().into_owned());
                }
                None => {}
            }
        }
    }

    let server = Server::start(&app);
    let set = get(server.addr, "/w?op=set&store=shared&key=k&value=v").await;
    assert_eq!(set.status, 200, "{}", set.text());
    // While serving: the databases' -wal and -shm files exist.
    let mut names = Vec::new();
    walk(&state, &mut names);
    for name in ["state.db-wal", "state.db-shm", "keys.db", "master.key"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    assert!(server.stop().success());
    let mut names = Vec::new();
    walk(&state, &mut names);
    for name in ["state.db", "keys.db", "audit.key", "audit.head"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

/// The second outside attack (T09, T19): the `--log-file` file, which
/// holds peer addresses, paths and subjects, was created 0644 under the
/// usual umask 022. It is created 0600, and an existing one open to group
/// or others is tightened to 0600 (its lines are appended, never lost).
#[cfg(unix)]
#[test]
fn the_log_file_is_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    // A manifest that does not load: `serve` opens its log file, then stops.
    let app = TestApp::new("[app\n", &[]);
    let logs = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    let fresh = logs.path().join("fresh.log");
    let out = app.run_with(&["serve"], &["--log-file", fresh.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(mode(&fresh), 0o600, "a new log file");

    let loose = logs.path().join("loose.log");
    std::fs::write(&loose, b"{\"earlier\":true}\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = app.run_with(&["serve"], &["--log-file", loose.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(mode(&loose), 0o600, "an existing log file, tightened");
    assert!(
        std::fs::read_to_string(&loose)
            .unwrap()
            .starts_with("{\"earlier\":true}\n"),
        "appended to, not truncated"
    );
}

/// Issue 11 item 12 and the outside attack's finding B (T09, T01): the
/// audit trail has a size budget, and traffic may fill only 90 % of it.
/// A trail just under 90 % of its `[audit] max_size` (its recorded size
/// set there, as after a long flood) gets one `audit.traffic_full` record,
/// then only counts refusals; the server keeps answering and `/metrics`
/// says so. Admin events (`keys create`) are still written in full, up to
/// 100 %: there one `audit.full`, then they too are only counted. The
/// chain stays intact.
#[tokio::test]
async fn t09_a_full_audit_trail_counts_traffic_and_keeps_room_for_admin_events() {
    // Callers behind a trusted proxy, so that no refusal is folded.
    let manifest = APP.replacen(
        "[[function]]",
        "[limits]\ntrusted_proxies = [\"127.0.0.1\"]\n\n[[function]]",
        1,
    ) + "\n[audit]\nmax_size = \"1MiB\"\n";
    let app = TestApp::new(&manifest, &["hello", "echo"]);
    let server = Server::start(&app);
    assert!(server.stop().success());
    let set_size = |bytes: i64| {
        rusqlite::Connection::open(state_db(&app))
            .unwrap()
            .execute("UPDATE audit_meta SET size_bytes = ?1", [bytes])
            .unwrap();
    };
    set_size(1048576 / 100 * 90 - 1500);

    // More refusals than the last 10 % holds (~300 bytes each).
    let refusals = 500u64;
    let server = Server::start(&app);
    for i in 0..refusals {
        let mut missing = request("GET", server.addr, &format!("/missing/{i}"), Bytes::new());
        missing.headers_mut().insert(
            "x-forwarded-for",
            format!("10.0.{}.{}", i / 250, i % 250).parse().unwrap(),
        );
        send(server.addr, missing)
            .await
            .assert_problem(404, "not-found");
    }
    let mut traffic_full = None;
    for _ in 0..200 {
        traffic_full = metric(&server, "bulkhead_audit_traffic_full").await;
        if traffic_full == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(traffic_full, Some(1.0));
    assert_eq!(metric(&server, "bulkhead_audit_full").await, Some(0.0));
    assert_eq!(
        metric(&server, "bulkhead_audit_max_size_bytes").await,
        Some(1048576.0)
    );
    assert_eq!(
        get(server.addr, "/hello").await.status,
        200,
        "still serving"
    );
    assert!(server.stop().success());

    // The operator's events are written in the part kept for them.
    let key = app.run_with(&["keys", "create"], &["--subject", "ci-bot"]);
    assert!(key.status.success());
    assert_eq!(app.audit_records("key.created").len(), 1, "key.created");
    assert_eq!(app.audit_records("audit.traffic_full").len(), 1);
    assert!(app.audit_records("audit.full").is_empty());
    let written = app.audit_records("request.refused").len() as u64;
    let counted: u64 = app
        .audit_records("audit.suppressed")
        .iter()
        .filter_map(|r| r["detail"]["kinds"]["request.refused"].as_u64())
        .sum();
    assert!(
        written < 30,
        "{written} refusals written past the traffic share"
    );
    assert_eq!(
        written + counted,
        refusals,
        "every refusal written or counted"
    );

    // At 100 % admin events stop too: one `audit.full`, then counts.
    set_size(1048576 - 100);
    for subject in ["ci-bot-2", "ci-bot-3"] {
        let key = app.run_with(&["keys", "create"], &["--subject", subject]);
        assert!(key.status.success());
    }
    assert_eq!(app.audit_records("key.created").len(), 2);
    assert_eq!(app.audit_records("audit.full").len(), 1);
    let counted: u64 = app
        .audit_records("audit.suppressed")
        .iter()
        .filter_map(|r| r["detail"]["kinds"]["key.created"].as_u64())
        .sum();
    assert_eq!(counted, 1);
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");
}

/// Outside attack, finding 1 (T09): the server opened its store again
/// while its audit writer ran, and that dropped SQLite's locks on
/// `state.db`. Another process closing the database (a CLI command, or
/// here the `sqlite3` module of Python, as a backup script would) then
/// took itself for the last user and deleted the WAL the server was
/// writing to: later records were lost and the head file looked like a
/// rollback.
#[tokio::test]
async fn t09_other_processes_while_serving_lose_no_audit_records() {
    let app = TestApp::new(APP, &["hello", "echo"]);
    let server = Server::start(&app);
    refuse(&server).await;
    let key = app.run_with(&["keys", "create"], &["--subject", "ci-bot"]);
    assert!(key.status.success());
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");
    let python = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT count(*) FROM audit').fetchone(); c.close()",
        ])
        .arg(state_db(&app))
        .status()
        .expect("python3 runs");
    assert!(python.success());
    refuse(&server).await;
    // deploy, refusal, key.created, refusal: wait (bounded) for the
    // server's head file to reach the last one.
    let mut last = (false, String::new());
    for _ in 0..200 {
        last = verify(app.path());
        if !last.0 || last.1.contains("audit.head: record 4") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.0 && last.1.contains("intact (4 records)"),
        "{}",
        last.1
    );
    assert!(server.stop().success());
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");
    assert_eq!(app.audit_records("request.refused").len(), 2);
    assert_eq!(app.audit_records("key.created").len(), 1);
}

/// Outside review (T09): stopped (SIGTERM) while another process held the
/// database's write lock, the server lost the batch it kept, its drop
/// counts and the `shutdown` record, and `verify` said OK. Now its writer
/// spills them at close, and the next command appends them, marked.
#[tokio::test]
async fn t09_records_held_back_by_a_lock_at_shutdown_are_spilled_and_recovered() {
    let app = TestApp::new(APP, &["hello", "echo"]);
    let server = Server::start(&app);
    refuse(&server).await;
    let blocker = rusqlite::Connection::open(state_db(&app)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for _ in 0..3 {
        refuse(&server).await;
    }
    assert!(server.stop().success(), "the shutdown finishes");
    let spills = waiting_spills(&app);
    assert_eq!(spills, 1, "what could not be written was spilled");
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    // Junk spill files named to be taken first (third outside attack): one
    // start takes in four files, so a single round used to leave the real
    // spill waiting while `verify` said OK. Every file is taken in now.
    for n in 0..5 {
        std::fs::write(
            app.path()
                .join(format!(".bulkhead/dev/audit.spill-{n:032x}")),
            b"junk",
        )
        .unwrap();
    }
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");
    // That one `verify` took every file in (read from disk, before any
    // other command could).
    let waiting = waiting_spills(&app);
    assert_eq!(waiting, 0, "verify said OK with spills waiting: {text}");
    assert_eq!(app.audit_records("audit.spill_rejected").len(), 5);
    let recovered = |records: Vec<serde_json::Value>| {
        records
            .iter()
            .filter(|r| r["detail"]["recovered"] == true)
            .count()
    };
    assert_eq!(recovered(app.audit_records("shutdown")), 1);
    assert!(recovered(app.audit_records("request.refused")) >= 1);
    assert_eq!(app.audit_records("audit.recovered").len(), 1);
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");
}

/// Outside attack, finding 2a (T09): delete every audit record, the keyed
/// head and the head file. `verify` used to call that an intact, empty
/// trail. Now it says BROKEN, and the next writer records the break.
#[tokio::test]
async fn t09_wiping_the_whole_audit_trail_is_reported() {
    let app = served_once().await;

    rusqlite::Connection::open(state_db(&app))
        .unwrap()
        .execute_batch("DELETE FROM audit; DELETE FROM audit_head;")
        .unwrap();
    std::fs::remove_file(app.path().join(".bulkhead/dev/audit.head")).unwrap();
    let (ok, text) = verify(app.path());
    assert!(!ok, "the wipe went unnoticed: {text}");
    assert!(text.contains("BROKEN at record 1"), "{text}");
    assert!(text.contains("wiped"), "{text}");

    let key = app.run_with(&["keys", "create"], &["--subject", "ci-bot"]);
    assert!(key.status.success());
    let breaks = app.audit_records("audit.chain_broken");
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    let (ok, text) = verify(app.path());
    assert!(!ok && text.contains("wiped"), "{text}");
}

/// Outside attack, finding 2b (T09): wipe the trail and reset the
/// unkeyed counters (breaks, anchors) so that a missing head file looks
/// like an old store that was never anchored. The server records the
/// break when it starts, and `verify` reports it.
#[tokio::test]
async fn t09_a_wiped_trail_with_reset_counters_is_reported() {
    let app = served_once().await;

    rusqlite::Connection::open(state_db(&app))
        .unwrap()
        .execute_batch(
            "DELETE FROM audit; DELETE FROM audit_head; UPDATE audit_meta SET breaks = 0, anchors = 0;",
        )
        .unwrap();
    std::fs::remove_file(app.path().join(".bulkhead/dev/audit.head")).unwrap();
    let (ok, text) = verify(app.path());
    assert!(!ok && text.contains("BROKEN"), "{text}");

    serve_until_the_break_is_exported(&app).await;
    assert_eq!(app.audit_records("audit.chain_broken").len(), 1);
    let (ok, text) = verify(app.path());
    assert!(!ok && text.contains("wiped"), "{text}");
}

/// Outside attack, finding 3 (T09, T17): `.bulkhead` itself (which holds
/// every environment), compile-cache entries and the head file are
/// tightened when found open to group or others, not only `.bulkhead/ENV`.
#[cfg(unix)]
#[tokio::test]
async fn t17_a_loose_state_root_cache_entries_and_head_file_are_tightened() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let loosen =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let app = TestApp::new(APP, &["hello", "echo"]);
    let server = Server::start(&app);
    assert!(server.stop().success());
    let root = app.path().join(".bulkhead");
    let head = root.join("dev/audit.head");
    let entries: Vec<_> = std::fs::read_dir(root.join("dev/compile-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");

    loosen(&root, 0o755);
    loosen(&head, 0o644);
    let (ok, text) = verify(app.path());
    assert!(ok, "{text}");
    assert_eq!(mode(&root), 0o700, ".bulkhead");
    assert_eq!(mode(&head), 0o600, "audit.head");

    for entry in &entries {
        loosen(entry, 0o644);
    }
    let server = Server::start(&app);
    assert!(server.stop().success());
    for entry in &entries {
        assert_eq!(mode(entry), 0o600, "{}", entry.display());
    }
}
