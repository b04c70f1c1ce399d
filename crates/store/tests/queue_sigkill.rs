//! Issue 18: an enqueue that returned `Ok` survives SIGKILL. The test
//! runs this binary again as a child that enqueues and prints the id of
//! each message once `enqueue` returned; the parent kills it with SIGKILL
//! mid-stream, reopens the state and finds every message it was told of.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bulkhead_store::Store;
use bulkhead_store::crypto::{KeyStore, Keyring, MasterKey};
use bulkhead_store::queue::{
    NewMessage, QueueBackend as _, QueueLimits, QueueSettings, SqliteQueue, SystemClock,
};

const CHILD_DIR: &str = "BULKHEAD_QUEUE_SIGKILL_DIR";
/// Acknowledged enqueues the parent waits for before it kills the child.
const BEFORE_KILL: usize = 200;

fn open(dir: &Path) -> SqliteQueue {
    let store = Store::open(dir).unwrap();
    let path = dir.join("master");
    if !path.exists() {
        bulkhead_store::files::write_private(&path, &[&[9u8; 32]]).unwrap();
    }
    let keyring = Keyring::new(
        MasterKey::from_file(&path).unwrap(),
        KeyStore::open(dir).unwrap(),
    );
    let settings = QueueSettings {
        name: "telemetry".into(),
        retention_ms: 24 * 3600 * 1000,
        max_message_bytes: 4096,
        max_attempts: 5,
        visibility_timeout_ms: 30_000,
        dead_letter: None,
    };
    SqliteQueue::open(
        &store,
        &keyring,
        vec![settings],
        QueueLimits::default(),
        Arc::new(SystemClock),
    )
    .unwrap()
}

/// The child: enqueue until killed (bounded, should the parent vanish).
/// Not a test of its own; the parent runs it with `--ignored`.
#[test]
#[ignore = "run by acknowledged_enqueues_survive_sigkill as its child"]
fn child_enqueues_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let queue = open(Path::new(&dir));
    let mut out = std::io::stdout().lock();
    for i in 0..1_000_000u32 {
        let payload = format!("reading {i}");
        let id = queue
            .enqueue(
                "telemetry",
                NewMessage {
                    payload: payload.as_bytes(),
                    correlation_id: "sigkill-test",
                    depth: 1,
                    // One chain per message, as one HTTP call each.
                    chain: {
                        let mut chain = [0; 16];
                        chain[..4].copy_from_slice(&i.to_be_bytes());
                        chain
                    },
                },
            )
            .unwrap();
        writeln!(out, "acked {id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_enqueues_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // Created here, so the child never races the parent to create it.
    drop(open(dir.path()));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_enqueues_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    while acked.len() < BEFORE_KILL {
        let line = lines.next().expect("the child stopped early").unwrap();
        if let Some(id) = line.strip_prefix("acked ") {
            acked.push(id.to_string());
        }
    }
    // SIGKILL: no destructor, no checkpoint, no clean close.
    child.kill().unwrap();
    // Whatever it printed before dying was acknowledged too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("acked ") {
            acked.push(id.to_string());
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was not killed: {status:?}");

    let queue = open(dir.path());
    let kept: std::collections::HashSet<String> = queue
        .peek("telemetry", 2_000_000)
        .unwrap()
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !kept.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost",
        lost.len(),
        acked.len()
    );
}
