//! `bulkhead review privileges` end to end (T16): a real app served with
//! real guests that use some of their grants and not others (a secret and
//! a config key read, a key-value store read and written, SQL read and
//! written, an outbound origin called), real calls, the server stopped,
//! then the review read back from the audit trail and the meter on disk.
//! Every unused grant must be named at its manifest line with the smaller
//! grant; every used one with its last use; a window after the calls must
//! find nothing used.

mod support;

use std::io::{Read as _, Write as _};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use serde_json::Value;
use support::{Server, TestApp, get};

const QUERY: &str = "input.query.op = true\ninput.query.store = true\ninput.query.key = true\ninput.query.value = true";

fn manifest(port: u16) -> String {
    format!(
        r#"[app]
name = "reviewed"

[config]
greeting = "hello"
motto = "unseen"

[store.cache]
kind = "kv"

[store.spare]
kind = "kv"

[store.events]
kind = "sql"
migrations = "migrations/events"

[[function]]
name = "settings"
component = "config.wasm"
route = "/settings"
auth = "public"
input.query.key = '[a-z_]+'
grants = {{ secrets = ["api_token", "old_token"], config = ["greeting", "motto"] }}

[[function]]
name = "counter"
component = "kv.wasm"
route = "/counter"
auth = "public"
{QUERY}
grants = {{ kv = {{ cache = "read-write", spare = "read" }} }}

[[function]]
name = "writer"
component = "kv.wasm"
route = "/writer"
auth = "public"
{QUERY}
grants = {{ kv = {{ cache = "read-write" }} }}

[[function]]
name = "ledger"
component = "sqlguest.wasm"
route = "/ledger/{{op}}"
auth = "public"
input.query.body = '[a-z0-9-]{{1,64}}'
input.query.n = '[0-9]{{1,2}}'
grants = {{ sql = {{ events = "read-write" }} }}

[[function]]
name = "viewer"
component = "sqlguest.wasm"
route = "/viewer/{{op}}"
auth = "public"
input.query.id = '[0-9]{{1,6}}'
grants = {{ sql = {{ events = "read-write" }} }}

[[function]]
name = "caller"
component = "hostile.wasm"
route = "/call/{{what}}"
auth = "public"
input.query.url = 'https?://\S{{1,200}}'
grants = {{ outbound = ["http://127.0.0.1:{port}", "https://api.unused.example"] }}

[[function]]
name = "forgotten"
component = "hello.wasm"
route = "/forgotten"
auth = "public"
grants = {{ kv = {{ cache = "read" }} }}
"#
    )
}

/// A loopback HTTP responder: 200 `ok` to anything, one request per
/// connection. The port it listens on.
fn responder() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the responder");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

fn reviewed_app(port: u16) -> (TestApp, String) {
    let source = manifest(port);
    let app = TestApp::new(&source, &["config", "kv", "sqlguest", "hostile", "hello"]);
    let dir = app.path().join("migrations/events");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("001_init.sql"),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .unwrap();
    (app, source)
}

/// `bulkhead ARGS APP_DIR EXTRA` with `stdin`.
fn bulkhead(app: &TestApp, args: &[&str], extra: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .arg(app.path())
        .args(extra)
        .env_remove("BULKHEAD_MASTER_KEY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bulkhead runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("bulkhead exits")
}

fn review_text(app: &TestApp, extra: &[&str]) -> String {
    let out = app.run_with(&["review", "privileges"], extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn review_json(app: &TestApp, extra: &[&str]) -> Value {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let text = review_text(app, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The 1-based line of `source` holding `needle`.
fn line_of(source: &str, needle: &str) -> u64 {
    let index = source
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` is not in the manifest"));
    u64::try_from(index + 1).unwrap()
}

fn grant<'a>(review: &'a Value, function: &str, capability: &str, name: &str) -> &'a Value {
    review["grants"]
        .as_array()
        .expect("a list of grants")
        .iter()
        .find(|g| g["function"] == function && g["capability"] == capability && g["name"] == name)
        .unwrap_or_else(|| panic!("no grant {function} {capability} {name} in {review:#}"))
}

fn function<'a>(review: &'a Value, name: &str) -> &'a Value {
    review["functions"]
        .as_array()
        .expect("a list of functions")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no function {name} in {review:#}"))
}

/// Seconds since the epoch of an RFC 3339 time the review printed.
fn epoch_seconds(time: &Value) -> u64 {
    let text = time
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {time}"));
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn t16_the_review_names_each_unused_grant_at_its_line_with_a_smaller_one() {
    let port = responder();
    let (app, source) = reviewed_app(port);
    let out = bulkhead(&app, &["secrets", "set"], &["api_token"], b"tok-value");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let server = Server::start(&app);
    let call = |path: String| {
        let addr = server.addr;
        async move { get(addr, &path).await.text() }
    };
    // Used: a secret and a config key read; a store read under a
    // read-write grant, and one written; SQL written and only read; an
    // origin called. Unused: the rest.
    // The value itself is redacted from the answer (T14).
    assert_eq!(
        call("/settings?key=api_token".into()).await,
        "value:[REDACTED]"
    );
    assert_eq!(call("/settings?key=greeting".into()).await, "value:hello");
    assert_eq!(
        call("/counter?op=get&store=cache&key=k".into()).await,
        "none"
    );
    assert_eq!(
        call("/writer?op=set&store=cache&key=k&value=v".into()).await,
        "ok"
    );
    assert_eq!(
        call("/ledger/insert?body=hello".into()).await,
        "ok columns= changes=1 rows=[]"
    );
    // Many writes in one call are one recorded write: evidence, not a
    // record per operation.
    let bench = call("/writer?op=bench&store=cache&value=5".into()).await;
    assert!(bench.starts_with("n=5 "), "{bench}");
    assert_eq!(
        call("/ledger/seed?n=5".into()).await,
        "ok columns= changes=1 rows=[]"
    );
    assert!(
        call("/viewer/get?id=1".into())
            .await
            .starts_with("ok columns=body")
    );
    let fetched = call(format!("/call/fetch?url=http://127.0.0.1:{port}/x")).await;
    assert!(fetched.starts_with("REACHED status 200"), "{fetched}");
    assert!(server.stop().success());

    let review = review_json(&app, &[]);
    assert_eq!(review["app"], "reviewed");
    assert_eq!(review["env"], "dev");

    // An unused secret and config key: removed from their line.
    let settings_line = line_of(&source, r#"grants = { secrets = ["api_token""#);
    for (capability, name) in [("secret", "old_token"), ("config", "motto")] {
        let g = grant(&review, "settings", capability, name);
        assert_eq!(g["status"], "unused", "{g:#}");
        assert_eq!(g["line"], settings_line, "{g:#}");
        assert_eq!(g["suggestion"]["change"], "remove", "{g:#}");
    }
    assert_eq!(
        grant(&review, "settings", "secret", "old_token")["suggestion"]["suggested_line"],
        r#"grants = { secrets = ["api_token"], config = ["greeting", "motto"] }"#
    );

    // An unused store, and a read-write store only read: `read`.
    let counter_line = line_of(&source, r#"grants = { kv = { cache = "read-write", spare"#);
    let spare = grant(&review, "counter", "kv", "spare");
    assert_eq!(
        (
            &spare["status"],
            &spare["line"],
            &spare["suggestion"]["change"]
        ),
        (&"unused".into(), &counter_line.into(), &"remove".into())
    );
    let cache = grant(&review, "counter", "kv", "cache");
    assert_eq!(cache["status"], "wider", "{cache:#}");
    assert_eq!(cache["line"], counter_line);
    assert_eq!(cache["writes"], 0);
    assert_eq!(cache["suggestion"]["change"], "read");
    assert_eq!(
        cache["suggestion"]["suggested_line"],
        r#"grants = { kv = { cache = "read", spare = "read" } }"#
    );
    let viewer = grant(&review, "viewer", "sql", "events");
    assert_eq!(viewer["status"], "wider", "{viewer:#}");
    assert_eq!(viewer["suggestion"]["change"], "read");

    // An origin never called.
    let unused = grant(&review, "caller", "outbound", "https://api.unused.example");
    assert_eq!(unused["status"], "unused");
    assert_eq!(
        unused["line"],
        line_of(&source, "https://api.unused.example")
    );

    // A function never invoked, at its line; its grant unused with it.
    let forgotten = function(&review, "forgotten");
    assert_eq!(forgotten["invoked"], "never", "{forgotten:#}");
    assert_eq!(forgotten["line"], line_of(&source, r#"name = "forgotten""#));
    assert!(
        forgotten["suggestion"]
            .as_str()
            .unwrap()
            .contains("/forgotten")
    );
    assert_eq!(
        grant(&review, "forgotten", "kv", "cache")["status"],
        "unused"
    );

    // Used as granted, each with a last use no older than the calls.
    let origin = format!("http://127.0.0.1:{port}");
    for (function, capability, name) in [
        ("settings", "secret", "api_token"),
        ("settings", "config", "greeting"),
        ("writer", "kv", "cache"),
        ("ledger", "sql", "events"),
        ("caller", "outbound", origin.as_str()),
    ] {
        let g = grant(&review, function, capability, name);
        assert_eq!(g["status"], "used", "{g:#}");
        assert!(g["uses"].as_u64().unwrap() >= 1, "{g:#}");
        assert!(epoch_seconds(&g["last_use"]) >= before, "{g:#}");
        assert!(g["suggestion"].is_null(), "{g:#}");
    }
    let writer = grant(&review, "writer", "kv", "cache");
    assert_eq!((&writer["uses"], &writer["writes"]), (&2.into(), &2.into()));
    let ledger = grant(&review, "ledger", "sql", "events");
    assert_eq!((&ledger["uses"], &ledger["writes"]), (&2.into(), &2.into()));
    for name in [
        "settings", "counter", "writer", "ledger", "viewer", "caller",
    ] {
        assert_eq!(function(&review, name)["invoked"], "yes", "{name}");
    }
    assert_eq!(review["summary"]["unused"], 5, "{:#}", review["summary"]);
    assert_eq!(review["summary"]["wider"], 2, "{:#}", review["summary"]);

    // The table: the same findings, one aligned row each.
    let table = review_text(&app, &[]);
    let row = |needle: &str| {
        table
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no row with `{needle}`:\n{table}"))
            .to_string()
    };
    let old = row("secret old_token");
    assert!(
        old.contains(&format!("  {settings_line}  "))
            && old.contains("never read")
            && old.ends_with("remove the grant"),
        "{old}"
    );
    let narrower = row("kv cache (read-write)");
    assert!(narrower.starts_with("  counter "), "{narrower}");
    assert!(narrower.contains("never written") && narrower.contains("grant \"read\""));
    assert!(
        row("forgotten  /forgotten").contains("never invoked"),
        "{table}"
    );
    // Used: as granted, and the two wider than their use.
    assert!(table.contains("Grants used (7):"), "{table}");

    // The diff: the grant lines as they are and as suggested.
    let diff = review_text(&app, &["--format", "diff"]);
    for line in [
        r#"-grants = { secrets = ["api_token", "old_token"], config = ["greeting", "motto"] }"#,
        r#"+grants = { secrets = ["api_token"], config = ["greeting"] }"#,
        r#"-grants = { kv = { cache = "read-write", spare = "read" } }"#,
        r#"+grants = { kv = { cache = "read" } }"#,
        r#"+grants = { sql = { events = "read" } }"#,
        &format!(r#"+grants = {{ outbound = ["http://127.0.0.1:{port}"] }}"#),
        r#"-grants = { kv = { cache = "read" } }"#,
    ] {
        assert!(diff.lines().any(|l| l == line), "no `{line}` in:\n{diff}");
    }
    assert!(diff.contains(&format!("@@ -{settings_line} +{settings_line} @@")));
    // Applied, it is a manifest `bulkhead check` accepts.
    std::fs::write(app.path().join("bulkhead.toml"), apply(&source, &diff)).unwrap();
    let checked = app.run(&["check"]);
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    std::fs::write(app.path().join("bulkhead.toml"), &source).unwrap();

    // The shortest window the meter can judge sees the same calls.
    let hour = review_json(&app, &["--since", "1h"]);
    assert_eq!(hour["summary"], review["summary"]);
}

/// Outside review, issue 13 (T16): `--since 0s` (or any window under the
/// meter's hour) called every grant unused, and its diff deleted every
/// grant line of an app whose functions had just run. Refused now, with
/// why, and nothing printed to apply.
#[tokio::test(flavor = "multi_thread")]
async fn t16_a_window_shorter_than_an_hour_is_refused_not_read_as_unused() {
    let port = responder();
    let (app, _) = reviewed_app(port);
    let server = Server::start(&app);
    assert_eq!(
        get(server.addr, "/settings?key=greeting").await.text(),
        "value:hello"
    );
    assert!(server.stop().success());
    for since in ["0s", "1ms", "1s", "59m"] {
        for format in ["diff", "json", "table"] {
            let out = app.run_with(
                &["review", "privileges"],
                &["--since", since, "--format", format],
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "--since {since}: {stderr}");
            assert!(
                stderr.contains("shorter than an hour") && stderr.contains("per hour"),
                "--since {since}: {stderr}"
            );
            assert!(out.stdout.is_empty(), "--since {since}: printed a review");
        }
    }
    let review = review_json(&app, &["--since", "1h"]);
    assert_eq!(
        grant(&review, "settings", "config", "greeting")["status"],
        "used"
    );
}

/// Two stores named like keys of the grant syntax (`kv`, `access`), and the
/// repository's guests using some of their grants. A manifest for
/// `t16_the_diff_removes_the_grant_in_its_own_table_not_a_namesake`.
const NAMESAKES: &str = r#"[app]
name = "namesakes"

[store.kv]
kind = "kv"

[store.data]
kind = "kv"

[store.other]
kind = "kv"

[store.access]
kind = "kv"

[store.events]
kind = "sql"
migrations = "migrations/events"

[[function]]
name = "keeper"
component = "kv.wasm"
route = "/keeper"
auth = "public"
input.query.op = true
input.query.store = true
input.query.key = true
input.query.value = true
grants = { kv = { kv = "read", data = "read-write", other = "read-write" } }

[[function]]
name = "inserter"
component = "sqlguest.wasm"
route = "/inserter/{op}"
auth = "public"
input.query.body = '[a-z0-9-]{1,64}'
grants = { sql = { events = { access = "read-write", statements = ["INSERT INTO events (body) VALUES (?1)"] } }, kv = { access = "read" } }
"#;

/// Outside review, issue 13 (T16): the diff searched the whole line for
/// the grant's name, so removing the unused store `kv` deleted the whole
/// `kv` table (and the line, dropping the used `data`), and removing the
/// unused kv store `access` took the SQL grant's `access` instead. Each
/// edit must change the grant at its own path, and the patched manifest
/// must keep every used grant and pass `bulkhead check`.
#[tokio::test(flavor = "multi_thread")]
async fn t16_the_diff_removes_the_grant_in_its_own_table_not_a_namesake() {
    let app = TestApp::new(NAMESAKES, &["kv", "sqlguest"]);
    write_migration(
        &app,
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    );
    let server = Server::start(&app);
    let call = |path: &'static str| {
        let addr = server.addr;
        async move { get(addr, path).await.text() }
    };
    assert_eq!(call("/keeper?op=set&store=data&key=k&value=v").await, "ok");
    assert_eq!(call("/keeper?op=get&store=other&key=k").await, "none");
    assert_eq!(
        call("/inserter/insert?body=fresh").await,
        "ok columns= changes=1 rows=[]"
    );
    assert!(server.stop().success());

    let review = review_json(&app, &[]);
    for (function, name) in [("keeper", "kv"), ("inserter", "access")] {
        let g = grant(&review, function, "kv", name);
        assert_eq!(g["status"], "unused", "{g:#}");
    }
    assert_eq!(grant(&review, "keeper", "kv", "data")["status"], "used");
    assert_eq!(grant(&review, "keeper", "kv", "other")["status"], "wider");
    assert_eq!(
        grant(&review, "inserter", "sql", "events")["status"],
        "used"
    );

    let diff = review_text(&app, &["--format", "diff"]);
    for line in [
        r#"+grants = { kv = { data = "read-write", other = "read" } }"#,
        r#"+grants = { sql = { events = { access = "read-write", statements = ["INSERT INTO events (body) VALUES (?1)"] } } }"#,
    ] {
        assert!(diff.lines().any(|l| l == line), "no `{line}` in:\n{diff}");
    }
    let patched = apply(NAMESAKES, &diff);
    std::fs::write(app.path().join("bulkhead.toml"), &patched).unwrap();
    let checked = app.run(&["check"]);
    assert!(
        checked.status.success(),
        "{patched}\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The patched app keeps what was used: the same calls still run.
    let server = Server::start(&app);
    assert_eq!(
        get(server.addr, "/keeper?op=get&store=data&key=k")
            .await
            .text(),
        "value:v"
    );
    assert_eq!(
        get(server.addr, "/inserter/insert?body=again").await.text(),
        "ok columns= changes=1 rows=[]"
    );
    // And what was removed is gone.
    assert!(
        get(server.addr, "/keeper?op=get&store=kv&key=k")
            .await
            .text()
            .contains("access-denied"),
    );
    assert!(server.stop().success());
}

fn write_migration(app: &TestApp, sql: &str) {
    let dir = app.path().join("migrations/events");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("001_init.sql"), sql).unwrap();
}

/// Outside review, issue 13 (T16): a statement that reached the database
/// and failed there (here a UNIQUE constraint) left no record of use, so a
/// grant whose every statement failed was "no statement ran, remove the
/// grant". Removing it would break the function; it is a use.
#[tokio::test(flavor = "multi_thread")]
async fn t16_a_statement_that_failed_in_the_database_is_a_use_of_its_grant() {
    let source = r#"[app]
name = "failing"

[store.events]
kind = "sql"
migrations = "migrations/events"

[[function]]
name = "ledger"
component = "sqlguest.wasm"
route = "/ledger/{op}"
auth = "public"
input.query.body = '[a-z0-9-]{1,64}'
grants = { sql = { events = "read-write" } }
"#;
    let app = TestApp::new(source, &["sqlguest"]);
    write_migration(
        &app,
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);\n\
         INSERT INTO events (body) VALUES ('taken');",
    );
    let server = Server::start(&app);
    for _ in 0..3 {
        let answer = get(server.addr, "/ledger/insert?body=taken").await.text();
        assert!(
            answer.starts_with("err invalid:") && answer.contains("UNIQUE"),
            "{answer}"
        );
    }
    assert!(server.stop().success());

    let review = review_json(&app, &[]);
    let events = grant(&review, "ledger", "sql", "events");
    assert_eq!(events["status"], "used", "{events:#}");
    assert!(events["suggestion"].is_null(), "{events:#}");
    assert!(events["uses"].as_u64().unwrap() >= 1, "{events:#}");
    let diff = review_text(&app, &["--format", "diff"]);
    assert!(!diff.contains("--- a/"), "{diff}");
    // The evidence: one record of the failed use per call, not per try.
    let used = app.audit_records("capability.used");
    let failed = used
        .iter()
        .filter(|r| r["detail"]["store"] == "events" && r["detail"]["access"] == "failed")
        .count();
    assert_eq!(failed, 3, "{used:#?}");
}

/// The diff's hunks applied to `source` (each replaces or drops one line).
fn apply(source: &str, diff: &str) -> String {
    let mut lines: Vec<Option<String>> = source.lines().map(|l| Some(l.to_string())).collect();
    let mut at = None;
    for line in diff.lines() {
        if let Some(header) = line.strip_prefix("@@ -") {
            let old: usize = header
                .split([' ', ','])
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a hunk's line");
            lines[old - 1] = None;
            at = Some(old - 1);
        } else if let (Some(i), Some(text)) = (at, line.strip_prefix('+'))
            && !line.starts_with("+++")
        {
            lines[i] = Some(text.to_string());
        }
    }
    lines.into_iter().flatten().collect::<Vec<_>>().join("\n") + "\n"
}

#[test]
fn t16_a_review_before_the_app_was_ever_served_says_to_serve_it() {
    let (app, _) = reviewed_app(9);
    // No state at all.
    let out = app.run(&["review", "privileges"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("serve the app there first"), "{text}");
    // State (a secret was set), but never served.
    let set = bulkhead(&app, &["secrets", "set"], &["api_token"], b"v");
    assert!(set.status.success());
    let out = app.run(&["review", "privileges"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("was never served in `dev`") && text.contains("bulkhead serve"),
        "{text}"
    );
    // A bad window is refused with an example.
    let out = app.run_with(&["review", "privileges"], &["--since", "lately"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("like 30d"));
}

#[test]
fn t16_review_privileges_help_explains_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["review", "privileges", "--help"])
        .output()
        .expect("bulkhead runs");
    assert!(out.status.success());
    // Wrapped to the terminal: compare words, not lines.
    let text = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for needle in [
        "read-write stores never written",
        "--format diff",
        "Exits 0",
        "bulkhead review privileges my-app --env prod --since 90d",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
}
