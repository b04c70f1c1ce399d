//! The embedded queue (issue 18): every primitive, with a manual clock
//! (no sleeping, no timing assertions).

use std::sync::Arc;

use super::*;
use crate::crypto::{KeyStore, MasterKey};

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

#[test]
fn enqueue_lease_ack_in_order() {
    let f = fixture();
    let a = f.queue.enqueue("work", msg(b"a")).unwrap();
    let b = f.queue.enqueue("work", msg(b"b")).unwrap();
    let got = f.queue.lease("work", 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].lease.id, got[1].lease.id), (a, b));
    assert_eq!(&got[0].payload[..], b"a");
    assert_eq!(got[0].correlation_id, "req-1");
    assert_eq!((got[0].depth, got[0].attempt), (1, 1));
    assert_eq!(got[0].enqueued_ms, T0);
    // Leased: invisible to the next lease.
    assert!(f.queue.lease("work", 10).unwrap().is_empty());
    assert_eq!(f.queue.ack(&got[0].lease).unwrap(), Acked::Deleted);
    assert_eq!(f.queue.ack(&got[0].lease).unwrap(), Acked::Stale);
    let stats = f.queue.stats().unwrap();
    assert_eq!(stats[0].name, "work");
    assert_eq!((stats[0].ready, stats[0].in_flight), (0, 1));
}

#[test]
fn lease_takes_at_most_max() {
    let f = fixture();
    for i in 0..5u8 {
        f.queue.enqueue("work", msg(&[i])).unwrap();
    }
    let first = f.queue.lease("work", 2).unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(&first[0].payload[..], &[0]);
    let rest = f.queue.lease("work", 10).unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(&rest[0].payload[..], &[2]);
}

/// At least once: a lease not acknowledged within the visibility timeout
/// is delivered again, and the old lease can no longer settle it.
#[test]
fn an_unacked_lease_is_redelivered_after_the_timeout() {
    let f = fixture();
    f.queue.enqueue("work", msg(b"job")).unwrap();
    let first = f.queue.lease("work", 1).unwrap().remove(0);
    f.clock.advance_ms(29_999);
    assert!(f.queue.lease("work", 1).unwrap().is_empty());
    f.clock.advance_ms(1);
    let again = f.queue.lease("work", 1).unwrap().remove(0);
    assert_eq!(again.lease.id, first.lease.id);
    assert_eq!(again.attempt, 2);
    assert_eq!(&again.payload[..], b"job");
    assert_eq!(f.queue.ack(&first.lease).unwrap(), Acked::Stale);
    assert_eq!(f.queue.fail(&first.lease, "x").unwrap(), Failed::Stale);
    assert_eq!(f.queue.ack(&again.lease).unwrap(), Acked::Deleted);
}

#[test]
fn a_failure_retries_with_exponential_back_off() {
    let f = fixture();
    f.queue.enqueue("work", msg(b"job")).unwrap();
    let d = f.queue.lease("work", 1).unwrap().remove(0);
    assert_eq!(
        f.queue.fail(&d.lease, "boom").unwrap(),
        Failed::Retry { at_ms: T0 + 1_000 }
    );
    assert!(f.queue.lease("work", 1).unwrap().is_empty());
    assert_eq!(f.queue.stats().unwrap()[0].delayed, 1);
    f.clock.advance_ms(1_000);
    let d = f.queue.lease("work", 1).unwrap().remove(0);
    assert_eq!(d.attempt, 2);
    assert_eq!(
        f.queue.fail(&d.lease, "boom").unwrap(),
        Failed::Retry {
            at_ms: T0 + 1_000 + 2_000
        }
    );
    assert_eq!(f.queue.backoff_ms(3), 4_000);
    assert_eq!(f.queue.backoff_ms(40), 5 * 60 * 1000);
}

/// After `max_attempts` deliveries a message moves to the dead-letter
/// queue with its reason, where it can be read and redriven.
#[test]
fn dead_letter_after_max_attempts_then_redrive() {
    let f = fixture();
    let id = f.queue.enqueue("work", msg(b"poison")).unwrap();
    for attempt in 1..=3 {
        let d = f.queue.lease("work", 1).unwrap().remove(0);
        assert_eq!(d.attempt, attempt);
        let outcome = f.queue.fail(&d.lease, "handler trapped\nforged").unwrap();
        if attempt < 3 {
            assert!(matches!(outcome, Failed::Retry { .. }), "{outcome:?}");
            f.clock.advance_ms(10 * 60 * 1000);
        } else {
            assert_eq!(
                outcome,
                Failed::DeadLettered {
                    to: "work-dead".into()
                }
            );
        }
    }
    assert!(f.queue.lease("work", 1).unwrap().is_empty());
    let dead = f.queue.peek("work-dead", 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].origin.as_deref(), Some("work"));
    let reason = dead[0].dead_reason.as_deref().unwrap();
    assert!(
        reason.starts_with("failed 3 deliveries; last: handler trapped"),
        "{reason}"
    );
    assert!(!reason.contains('\n'), "{reason}");
    assert_eq!(&dead[0].payload.as_ref().unwrap()[..], b"poison");
    // A dead-letter queue is a queue: a function may consume it.
    let from_dead = f.queue.lease("work-dead", 1).unwrap().remove(0);
    assert!(from_dead.dead_reason.is_some());
    f.clock.advance_ms(30_000);
    // Redrive: back to where it came from, as new.
    assert_eq!(f.queue.redrive("work-dead", None).unwrap(), 1);
    let back = f.queue.lease("work", 1).unwrap().remove(0);
    assert_eq!((back.lease.id, back.attempt), (id, 1));
    assert!(back.dead_reason.is_none());
}

/// A lease that keeps timing out (a handler that crashes the process)
/// is dead-lettered too, at the next lease after the last attempt.
#[test]
fn expired_leases_count_as_attempts() {
    let f = fixture();
    f.queue.enqueue("solo", msg(b"crash")).unwrap();
    for _ in 0..3 {
        assert_eq!(f.queue.lease("solo", 1).unwrap().len(), 1);
        f.clock.advance_ms(30_000);
    }
    assert!(f.queue.lease("solo", 1).unwrap().is_empty());
    // No dead-letter queue: parked, kept for the operator, undelivered.
    let parked = f.queue.peek("solo", 10).unwrap();
    assert!(parked[0].parked);
    assert!(
        parked[0]
            .dead_reason
            .as_deref()
            .unwrap()
            .contains("after 3 deliveries")
    );
    assert_eq!(f.queue.stats().unwrap()[2].parked, 1);
    assert_eq!(f.queue.redrive("solo", None).unwrap(), 1);
    assert_eq!(f.queue.lease("solo", 1).unwrap()[0].attempt, 1);
}

/// T04: a chain deeper than `max_event_depth` is refused at enqueue with
/// a typed error; the caller dead-letters it.
#[test]
fn too_deep_is_refused_and_can_be_dead_lettered() {
    let f = fixture();
    let deep = NewMessage {
        depth: 4,
        ..msg(b"ok")
    };
    f.queue.enqueue("work", deep).unwrap();
    let deeper = NewMessage {
        depth: 5,
        ..msg(b"loop")
    };
    match f.queue.enqueue("work", deeper) {
        Err(QueueError::TooDeep { depth: 5, max: 4 }) => {}
        other => panic!("{other:?}"),
    }
    let to = f
        .queue
        .dead_letter_refused("work", deeper, "max_event_depth exceeded")
        .unwrap();
    assert_eq!(
        to,
        Failed::DeadLettered {
            to: "work-dead".into()
        }
    );
    let dead = f.queue.peek("work-dead", 10).unwrap();
    assert_eq!(dead[0].depth, 5);
    assert_eq!(&dead[0].payload.as_ref().unwrap()[..], b"loop");
    assert_eq!(
        f.queue
            .dead_letter_refused("solo", deeper, "too deep")
            .unwrap(),
        Failed::Parked
    );
}

/// T04 (outside review of issue 18: one request fanned out to 121 runs
/// and 243 dead letters within `max_event_depth`): a chain's messages are
/// counted together whatever their depth, and a redriven message keeps
/// its chain, so neither width nor a redrive multiplies the bill.
#[test]
fn a_chain_stops_at_max_chain_messages_and_keeps_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let q = open_with(
        dir.path(),
        clock,
        QueueLimits {
            max_chain_messages: 3,
            ..QueueLimits::default()
        },
    );
    let of = |c: u8, depth: u32| NewMessage {
        chain: [c; 16],
        depth,
        ..msg(b"fan")
    };
    q.enqueue("work", of(7, 1)).unwrap();
    q.enqueue("work", of(7, 2)).unwrap();
    q.enqueue("solo", of(7, 2)).unwrap();
    assert!(matches!(
        q.enqueue("work", of(7, 3)),
        Err(QueueError::ChainExhausted { max: 3 })
    ));
    // Another chain is its own.
    q.enqueue("work", of(8, 1)).unwrap();
    let got = q.lease("work", 10).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got.iter().filter(|d| d.chain == [7; 16]).count(), 2);
    for d in &got {
        q.ack(&d.lease).unwrap();
    }
    // Acknowledged messages still count: the chain stays spent.
    assert!(matches!(
        q.enqueue("work", of(7, 1)),
        Err(QueueError::ChainExhausted { max: 3 })
    ));
    // A refused message kept as a dead letter, redriven, keeps its chain.
    q.dead_letter_refused("work", of(7, 4), "chain exhausted")
        .unwrap();
    assert_eq!(q.redrive("work-dead", None).unwrap(), 1);
    let back = q.lease("work", 10).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].chain, [7; 16]);
}

/// Outside review of issue 18 (T01): a delivery the host had no room to
/// run goes back without spending an attempt, so a busy host does not
/// dead-letter healthy messages.
#[test]
fn a_released_delivery_spends_no_attempt() {
    let f = fixture();
    f.queue.enqueue("work", msg(b"m")).unwrap();
    for _ in 0..5 {
        let got = f.queue.lease("work", 1).unwrap();
        assert_eq!(got[0].attempt, 1);
        assert!(f.queue.release(&got[0].lease, 1_000).unwrap());
        // A stale lease releases nothing.
        assert!(!f.queue.release(&got[0].lease, 1_000).unwrap());
        assert!(
            f.queue.lease("work", 1).unwrap().is_empty(),
            "hidden for a second"
        );
        f.clock.advance_ms(1_000);
    }
    let got = f.queue.lease("work", 1).unwrap();
    assert_eq!(got[0].attempt, 1, "max_attempts is 3: not one was spent");
}

#[test]
fn enqueue_refuses_bad_input() {
    let f = fixture();
    assert!(matches!(
        f.queue.enqueue("nope", msg(b"x")),
        Err(QueueError::UnknownQueue(_))
    ));
    let big = vec![0u8; 1025];
    assert!(matches!(
        f.queue.enqueue("work", msg(&big)),
        Err(QueueError::TooLarge {
            size: 1025,
            max: 1024,
            ..
        })
    ));
    for bad in ["", "a\nb", &"x".repeat(129)] {
        let m = NewMessage {
            correlation_id: bad,
            ..msg(b"x")
        };
        assert!(matches!(
            f.queue.enqueue("work", m),
            Err(QueueError::BadCorrelationId)
        ));
    }
    assert!(matches!(
        f.queue.lease("nope", 1),
        Err(QueueError::UnknownQueue(_))
    ));
    assert!(matches!(
        f.queue.purge("nope"),
        Err(QueueError::UnknownQueue(_))
    ));
    assert!(matches!(
        f.queue.redrive("work-dead", Some("nope")),
        Err(QueueError::UnknownQueue(_))
    ));
}

#[test]
fn retention_sweep_peek_and_purge() {
    let f = fixture();
    f.queue.enqueue("work", msg(b"old")).unwrap();
    f.clock.advance_ms(30 * 60 * 1000);
    f.queue.enqueue("work", msg(b"new")).unwrap();
    let peeked = f.queue.peek("work", 10).unwrap();
    assert_eq!(peeked.len(), 2);
    assert!(!peeked[0].leased && peeked[0].attempts == 0);
    assert_eq!(f.queue.stats().unwrap()[0].oldest_enqueued_ms, Some(T0));
    f.clock.advance_ms(30 * 60 * 1000);
    // Past retention: hidden at once, deleted by the sweep.
    assert_eq!(f.queue.peek("work", 10).unwrap().len(), 1);
    assert_eq!(f.queue.sweep().unwrap(), 1);
    assert_eq!(f.queue.sweep().unwrap(), 0);
    assert_eq!(f.queue.purge("work").unwrap(), 1);
    assert!(f.queue.lease("work", 10).unwrap().is_empty());
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
