//! T09 (issue 19): `bulkhead audit verify` beside a running server under
//! load never raises a false alarm (it reads the head file, then the
//! records and the keyed head in one snapshot), and still names a record
//! edited on disk while the server keeps writing.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use support::{Server, TestApp};

/// Many callers (behind a trusted proxy), so that refusals are recorded
/// one by one rather than folded: a steady stream of records.
const APP: &str = r#"
[app]
name = "busy"

[limits]
trusted_proxies = ["127.0.0.1"]

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

const VERIFY_RUNS: usize = 30;

/// Upper bound on the load's requests: it stops by itself.
const MAX_REQUESTS: u64 = 400_000;

/// One refused request (404) from caller `i`, over its own connection.
fn refused(addr: SocketAddr, i: u64) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let request = format!(
        "GET /missing/{i} HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: 10.{}.{}.{}\r\nConnection: close\r\n\r\n",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    );
    let mut answer = Vec::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.1 404")
}

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

/// The record count `verify` reported (`intact (N records)`).
fn records(text: &str) -> u64 {
    text.split("intact (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn t09_audit_verify_beside_a_busy_server_has_no_false_alarm_and_catches_an_edit() {
    let app = TestApp::new(APP, &["hello"]);
    let server = Server::start(&app);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, answered, addr) = (stop.clone(), answered.clone(), server.addr);
        std::thread::spawn(move || {
            for i in 0..MAX_REQUESTS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if refused(addr, i) {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut seen = Vec::new();
    for run in 0..VERIFY_RUNS {
        let (ok, text) = verify(app.path());
        assert!(ok, "run {run}: a false alarm beside a busy server:\n{text}");
        seen.push(records(&text));
    }
    // The trail really grew while it was verified (the server was writing).
    let (first, last) = (seen[0], seen[VERIFY_RUNS - 1]);
    assert!(last > first, "the trail did not grow: {seen:?}");

    // A record edited on disk while the server keeps writing is named.
    let db = app.path().join(".bulkhead/dev/state.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let edited = conn
        .execute(
            "UPDATE audit SET detail = '{\"reason\":\"not-found\",\"path\":\"/innocent\"}' WHERE seq = 2",
            [],
        )
        .unwrap();
    assert_eq!(edited, 1);
    drop(conn);
    let (ok, text) = verify(app.path());
    assert!(!ok, "an edited record went unnoticed:\n{text}");
    assert!(
        text.contains("BROKEN at record 2") && text.contains("edited"),
        "{text}"
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(answered.load(Ordering::Relaxed) > 0);
    assert!(server.stop().success());
}
