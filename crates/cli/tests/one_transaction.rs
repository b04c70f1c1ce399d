//! T09 (issue 19): one change, one transaction. The real `bulkhead` CLI is
//! killed (SIGKILL, injected by strace) at each of its disk writes while it
//! rotates a secret, revokes an API key or erases a subject: at every
//! `pwrite64`, `fsync`, `fdatasync`, `rename` and `write`, and, as points
//! between them, at every file open and thread start. strace counts per
//! thread, so each number N kills at the N-th call of whichever thread gets
//! there first; N grows until the command completes untouched. After every
//! kill the change and its audit record agree (both or neither; for an
//! erasure, whose data keys live in `keys.db` apart from the trail, a
//! `data.erase_started` intent record covers the keys destroyed before the
//! rows), and `audit verify` finds the trail intact.
//!
//! Needs `strace` (`apt-get install strace`; `.ci/run` installs it).

mod support;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use support::{Server, TestApp, request, send};

/// The calls a kill is injected at.
const KILL_AT: &[&str] = &[
    "pwrite64",
    "fsync",
    "fdatasync",
    "rename",
    "write",
    "openat",
    "clone3",
];

/// More calls of one kind than any of these commands makes: the loop over
/// N ends by itself when the command completes untouched, well before.
const MAX_POINTS: u32 = 600;

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

fn strace_present() {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "these tests inject kills with strace: `apt-get install -y strace`"
    );
}

/// Run `bulkhead ARGS DIR OPTIONS` with `stdin`, killed at the `n`-th
/// `call` of a thread; whether it completed (not killed).
fn run_killed(
    dir: &Path,
    args: &[&str],
    options: &[&str],
    stdin: &[u8],
    call: &str,
    n: u32,
) -> bool {
    let mut child = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "-e"])
        .arg(format!("trace={call}"))
        .arg("-e")
        .arg(format!("inject={call}:signal=KILL:when={n}"))
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .arg(dir)
        .args(options)
        .env("BULKHEAD_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace runs");
    if let Some(mut input) = child.stdin.take() {
        // A run killed before it reads its stdin closes the pipe.
        let _ = input.write_all(stdin);
    }
    child.wait().expect("strace exits").success()
}

fn verify(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["audit", "verify"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Kill the command at each of its calls in [`KILL_AT`], each time on a
/// fresh copy of `base`; `check` each outcome (and that the trail
/// verifies). Returns how many runs were killed.
fn at_every_kill_point(
    base: &Path,
    args: &[&str],
    options: &[&str],
    stdin: &[u8],
    check: impl Fn(&Path, &str),
) -> u32 {
    strace_present();
    let mut kills = 0;
    for call in KILL_AT {
        for n in 1..=MAX_POINTS {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(base, copy.path());
            let completed = run_killed(copy.path(), args, options, stdin, call, n);
            let at = format!("killed at {call} #{n}");
            let at = if completed { "completed" } else { at.as_str() };
            check(copy.path(), at);
            let (ok, text) = verify(copy.path());
            assert!(ok, "{at}: the trail does not verify: {text}");
            if completed {
                break;
            }
            kills += 1;
            assert!(n < MAX_POINTS, "{args:?} never completed under {call}");
        }
    }
    kills
}

fn count(db: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn state_db(dir: &Path) -> std::path::PathBuf {
    dir.join(".bulkhead/dev/state.db")
}

#[test]
fn t09_secrets_rotate_killed_at_each_write_keeps_value_and_record_together() {
    let app = TestApp::new("[app]\nname = \"rotating\"\n", &[]);
    let set = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["secrets", "set"])
        .arg(app.path())
        .arg("api")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"first")?;
            child.wait()
        })
        .unwrap();
    assert!(set.success());
    let kills = at_every_kill_point(
        app.path(),
        &["secrets", "rotate"],
        &["api"],
        b"second",
        |dir, at| {
            let db = state_db(dir);
            let version = count(&db, "SELECT version FROM secrets WHERE name = 'api'");
            let records = count(
                &db,
                "SELECT count(*) FROM audit WHERE kind = 'secret.rotated'",
            );
            // Both or neither: a rotated secret always has its record.
            assert!(
                (version, records) == (1, 0) || (version, records) == (2, 1),
                "{at}: secret version {version}, {records} secret.rotated record(s)"
            );
            if at == "completed" {
                assert_eq!(version, 2);
            }
        },
    );
    assert!(kills > 10, "only {kills} kill points");
}

#[test]
fn t09_keys_revoke_killed_at_each_write_keeps_revocation_and_record_together() {
    let app = TestApp::new("[app]\nname = \"revoking\"\n", &[]);
    let out = app.run_with(&["keys", "create"], &["--subject", "ci-bot"]);
    assert!(out.status.success());
    let id: String = rusqlite::Connection::open(state_db(app.path()))
        .unwrap()
        .query_row("SELECT id FROM credentials", [], |r| r.get(0))
        .unwrap();
    let kills = at_every_kill_point(app.path(), &["keys", "revoke"], &[&id], b"", |dir, at| {
        let db = state_db(dir);
        let revoked = count(
            &db,
            "SELECT count(*) FROM credentials WHERE revoked_ms IS NOT NULL",
        );
        let records = count(&db, "SELECT count(*) FROM audit WHERE kind = 'key.revoked'");
        assert_eq!(
            revoked, records,
            "{at}: {revoked} key(s) revoked, {records} key.revoked record(s)"
        );
        if at == "completed" {
            assert_eq!(revoked, 1);
        }
    });
    assert!(kills > 10, "only {kills} kill points");
}

const KV_APP: &str = r#"
[app]
name = "erasing"

[store.private]
kind = "kv"
scope = "subject"
personal_data = true

[[function]]
name = "mine"
component = "kv.wasm"
route = "/mine"
input.query.op = true
input.query.store = true
input.query.key = true
input.query.value = true
grants = { kv = { private = "read-write" } }
"#;

#[tokio::test]
async fn t09_data_erase_killed_at_each_write_never_destroys_unrecorded() {
    let app = TestApp::new(KV_APP, &["kv"]);
    let out = app.run_with(&["keys", "create"], &["--subject", "alice"]);
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let server = Server::start(&app);
    for k in ["a", "b"] {
        let mut req = request(
            "GET",
            server.addr,
            &format!("/mine?op=set&store=private&key={k}&value=v{k}"),
            Bytes::new(),
        );
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        assert_eq!(send(server.addr, req).await.text(), "ok");
    }
    assert!(server.stop().success());
    let subject = "api-key:alice";
    let kills = at_every_kill_point(
        app.path(),
        &["data", "erase"],
        &["--subject", subject],
        b"",
        |dir, at| {
            let db = state_db(dir);
            let rows = count(
                &db,
                "SELECT count(*) FROM kv WHERE subject = 'api-key:alice'",
            );
            let keys = count(
                &dir.join(".bulkhead/dev/keys.db"),
                "SELECT count(*) FROM data_keys WHERE subject = 'api-key:alice'",
            );
            let started = count(
                &db,
                "SELECT count(*) FROM audit WHERE kind = 'data.erase_started'",
            );
            let erased = count(&db, "SELECT count(*) FROM audit WHERE kind = 'data.erased'");
            let state = format!(
                "{at}: {rows} row(s), {keys} data key(s), {started} data.erase_started, {erased} data.erased"
            );
            // The rows go with their record, in one transaction...
            assert_eq!(erased == 1, rows == 0, "{state}");
            // ...and no data key is destroyed before the intent is on the
            // trail; `data.erased` comes only after the keys are gone.
            assert!(keys > 0 || started == 1, "{state}");
            assert!(erased == 0 || (keys == 0 && started == 1), "{state}");
            if at == "completed" {
                assert_eq!((rows, keys, erased), (0, 0, 1), "{state}");
            }
        },
    );
    assert!(kills > 10, "only {kills} kill points");
}
