//! The embedded queue (issue 18): what only it does (its files, its
//! reopening) and the back-off; every primitive runs against both back
//! ends in `tests/queue_backends.rs`.

use std::sync::Arc;

use super::*;
use crate::Store;
use crate::crypto::{KeyStore, Keyring, MasterKey};

const T0: i64 = 1_767_225_600_000;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    clock: Arc<ManualClock>,
    queue: SqliteQueue,
}

fn settings(name: &str, dead_letter: Option<&str>) -> QueueSettings {
    QueueSettings {
        name: name.into(),
        retention_ms: 60 * 60 * 1000,
        max_message_bytes: 1024,
        max_attempts: 3,
        visibility_timeout_ms: 30_000,
        dead_letter: dead_letter.map(str::to_string),
    }
}

fn open_in(dir: &std::path::Path, clock: Arc<ManualClock>) -> SqliteQueue {
    open_with(
        dir,
        clock,
        QueueLimits {
            max_event_depth: 4,
            ..QueueLimits::default()
        },
    )
}

fn open_with(dir: &std::path::Path, clock: Arc<ManualClock>, limits: QueueLimits) -> SqliteQueue {
    let store = Store::open(dir).unwrap();
    let path = dir.join("master");
    if !path.exists() {
        crate::files::write_private(&path, &[&[7u8; 32]]).unwrap();
    }
    let keyring = Keyring::new(
        MasterKey::from_file(&path).unwrap(),
        KeyStore::open(dir).unwrap(),
    );
    SqliteQueue::open(
        &store,
        &keyring,
        vec![
            settings("work", Some("work-dead")),
            settings("work-dead", None),
            settings("solo", None),
        ],
        limits,
        clock,
    )
    .unwrap()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let queue = open_in(dir.path(), clock.clone());
    Fixture {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        clock,
        queue,
    }
}

fn msg(payload: &[u8]) -> NewMessage<'_> {
    NewMessage {
        payload,
        correlation_id: "req-1",
        depth: 1,
        chain: [1; 16],
    }
}

/// The back-off doubles from `retry_base_ms` and stops at `retry_max_ms`
/// (the rest of the semantics, on both back ends: `tests/queue_backends.rs`).
#[test]
fn the_back_off_doubles_up_to_its_cap() {
    let f = fixture();
    let rules = &f.queue.rules;
    assert_eq!(
        [1, 2, 3].map(|a| rules.backoff_ms(a)),
        [1_000, 2_000, 4_000]
    );
    assert_eq!(rules.backoff_ms(40), 5 * 60 * 1000);
}

/// T14: payloads are sealed at rest: their bytes are in no file of the
/// state directory, and a payload tampered with (here: its depth lowered
/// to escape the loop limit) is never delivered.
#[test]
fn payloads_are_sealed_at_rest() {
    let f = fixture();
    let marker = b"PLAINTEXT-MARKER-4242-do-not-store";
    f.queue.enqueue("work", msg(marker)).unwrap();
    let mut seen = 0;
    for entry in std::fs::read_dir(&f.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            seen += bytes.len();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{} holds the payload in clear",
                path.display()
            );
        }
    }
    assert!(seen > 0);
    let conn = Store::open(&f.dir).unwrap().connect().unwrap();
    conn.execute("UPDATE queue_messages SET depth = 0", [])
        .unwrap();
    assert!(f.queue.lease("work", 1).unwrap().is_empty());
    let dead = f.queue.peek("work-dead", 10).unwrap();
    // Dead-lettered with the reason; peek shows it without its bytes.
    assert_eq!(
        dead[0].dead_reason.as_deref(),
        Some("failed authentication at rest")
    );
    assert!(dead[0].payload.is_none());
}

#[test]
fn messages_survive_reopening() {
    let f = fixture();
    let id = f.queue.enqueue("work", msg(b"kept")).unwrap();
    let reopened = open_in(&f.dir, f.clock.clone());
    let got = reopened.lease("work", 1).unwrap();
    assert_eq!(got[0].lease.id, id);
}
