//! Issue 18: `bulkhead queue list|peek|purge|redrive` against an app's real
//! embedded queues (SQLite state, sealed payloads), through the binary.
//! Messages are put in with the store's own queue back end, as the
//! server's producer does.

mod support;

use std::sync::Arc;

use bulkhead_store::queue::{
    NewMessage, QueueBackend as _, QueueLimits, QueueSettings, SqliteQueue, SystemClock,
};
use bulkhead_store::{State, StateConfig};
use serde_json::Value;
use support::TestApp;

const APP: &str = r#"
[app]
name = "bins"

[queue.telemetry]
max_attempts = 1
dead_letter = "telemetry-dead"

[queue.telemetry-dead]

[[function]]
name = "bridge"
component = "hello.wasm"
route = "/telemetry"
methods = ["POST"]
auth = "public"
grants = { queues = { telemetry = "send" } }
"#;

/// The app's dev queues, opened as the server opens them.
fn queues(app: &TestApp) -> SqliteQueue {
    let dir = bulkhead_manifest::state_dir(app.path(), "dev");
    let state = State::open(&StateConfig::Embedded { dir }).unwrap();
    let keyring = state.keyring("dev").unwrap();
    let settings = |name: &str, dead: Option<&str>| QueueSettings {
        name: name.into(),
        retention_ms: 4 * 24 * 3600 * 1000,
        max_message_bytes: 256 * 1024,
        max_attempts: 1,
        visibility_timeout_ms: 30_000,
        dead_letter: dead.map(Into::into),
    };
    SqliteQueue::open(
        state.store(),
        &keyring,
        vec![
            settings("telemetry", Some("telemetry-dead")),
            settings("telemetry-dead", None),
        ],
        QueueLimits::default(),
        Arc::new(SystemClock),
    )
    .unwrap()
}

fn send(queues: &SqliteQueue, payload: &[u8], correlation_id: &str) {
    queues
        .enqueue(
            "telemetry",
            NewMessage {
                payload,
                correlation_id,
                depth: 1,
                chain: [5; 16],
            },
        )
        .unwrap();
}

fn ok(out: &std::process::Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

fn list(app: &TestApp) -> Vec<Value> {
    let (stdout, _) = ok(&app.run_with(&["queue", "list"], &["--format", "json"]));
    serde_json::from_str(&stdout).unwrap()
}

fn row<'a>(rows: &'a [Value], queue: &str) -> &'a Value {
    rows.iter().find(|r| r["queue"] == queue).unwrap()
}

#[test]
fn list_peek_redrive_and_purge_a_dead_letter_queue() {
    let app = TestApp::new(APP, &["hello"]);
    let q = queues(&app);
    send(&q, b"bin-7 42%", "corr-one");
    send(&q, b"bin-9 \x1b[2J", "corr-two");
    send(&q, &[0xff, 0x00, 0x80], "corr-three");

    let rows = list(&app);
    assert_eq!(row(&rows, "telemetry")["ready"], 3, "{rows:?}");
    assert_eq!(row(&rows, "telemetry-dead")["ready"], 0, "{rows:?}");
    let (text, _) = ok(&app.run_with(&["queue", "list"], &[]));
    assert!(text.contains("telemetry-dead"), "{text}");

    // Without --payload: metadata only, and no audit record of a read.
    let (stdout, _) = ok(&app.run_with(&["queue", "peek"], &["telemetry"]));
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        stdout.contains("\"correlation_id\":\"corr-one\""),
        "{stdout}"
    );
    assert!(
        !stdout.contains("bin-7"),
        "payload shown without --payload: {stdout}"
    );
    assert!(app.audit_records("queue.peeked").is_empty());

    // With it: decrypted, escaped (T08: no raw escape sequence reaches the
    // terminal), hex when not UTF-8, and audited.
    let (stdout, _) = ok(&app.run_with(&["queue", "peek"], &["telemetry", "--payload"]));
    assert!(stdout.contains("bin-7 42%"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "raw escape printed: {stdout:?}");
    assert!(stdout.contains("\\u001b[2J"), "{stdout}");
    assert!(stdout.contains("\"payload_hex\":\"ff0080\""), "{stdout}");
    let peeked = app.audit_records("queue.peeked");
    assert_eq!(peeked.len(), 1, "{peeked:?}");

    // Fail every message once: max_attempts = 1 sends each to the
    // dead-letter queue, which redrive sends back.
    for delivery in q.lease("telemetry", 10).unwrap() {
        q.fail(&delivery.lease, "consumer answered 500").unwrap();
    }
    let rows = list(&app);
    assert_eq!(row(&rows, "telemetry")["ready"], 0, "{rows:?}");
    assert_eq!(row(&rows, "telemetry-dead")["ready"], 3, "{rows:?}");
    let (stdout, _) = ok(&app.run_with(&["queue", "peek"], &["telemetry-dead"]));
    assert!(stdout.contains("\"from\":\"telemetry\""), "{stdout}");
    assert!(stdout.contains("\"state\":\"dead\""), "{stdout}");

    let (_, stderr) = ok(&app.run_with(&["queue", "redrive"], &["telemetry-dead"]));
    assert!(stderr.contains("3 dead message(s)"), "{stderr}");
    let rows = list(&app);
    assert_eq!(row(&rows, "telemetry")["ready"], 3, "{rows:?}");
    assert_eq!(row(&rows, "telemetry-dead")["ready"], 0, "{rows:?}");
    let redriven = app.audit_records("queue.redriven");
    assert_eq!(redriven.len(), 1, "{redriven:?}");

    // Purge asks for --yes, and deletes nothing without it.
    let out = app.run_with(&["queue", "purge"], &["telemetry"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(row(&list(&app), "telemetry")["ready"], 3);
    let (_, stderr) = ok(&app.run_with(&["queue", "purge"], &["telemetry", "--yes"]));
    assert!(stderr.contains("3 message(s) deleted"), "{stderr}");
    assert_eq!(row(&list(&app), "telemetry")["ready"], 0);
    assert_eq!(app.audit_records("queue.purged").len(), 1);
}

#[test]
fn an_undeclared_queue_is_refused_without_echoing_it() {
    let app = TestApp::new(APP, &["hello"]);
    let _ = queues(&app);
    for command in [
        vec!["queue", "peek", "nope\x1b[31m"],
        vec!["queue", "purge", "nope\x1b[31m", "--yes"],
        vec!["queue", "redrive", "telemetry-dead", "--to", "nope\x1b[31m"],
    ] {
        let out = app.run_with(&command[..2], &command[2..]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?}");
        assert!(stderr.contains("is not declared"), "{stderr}");
        assert!(stderr.contains("`telemetry`"), "{stderr}");
        assert!(!stderr.contains('\x1b'), "raw input echoed: {stderr:?}");
    }
    let out = app.run_with(&["queue", "peek"], &["telemetry", "--limit", "0"]);
    assert!(!out.status.success());
    assert!(app.audit_records("queue.purged").is_empty());
}
