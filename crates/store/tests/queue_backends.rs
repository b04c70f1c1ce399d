//! Conformance of the queue back ends (issue 18): every body runs against
//! the embedded queue ([`SqliteQueue`]) and against PostgreSQL
//! ([`PostgresQueue`]), each opened where production opens it
//! ([`State::queue`]), with a manual clock (no sleeping, no timing
//! assertions). Then what only a shared back end must do: two nodes (two
//! states, one database) leasing one queue from several threads never
//! deliver a message twice while it is leased and deliver every message
//! (T01), an acknowledgement through one node is seen by both, and a
//! chain's message limit holds across nodes (T04).

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Barrier, Mutex};

use bulkhead_store::crypto::{Keyring, MasterKey};
use bulkhead_store::queue::{
    Acked, Failed, ManualClock, NewMessage, QueueError, QueueLimits, QueueSettings, SharedQueue,
};
use bulkhead_store::{State, StateConfig, Store};
use support::PgDatabase;

const T0: i64 = 1_767_225_600_000;

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One node's queue, its clock and a way to change its rows behind its
/// back (T14).
struct Fixture {
    queue: SharedQueue,
    clock: Arc<ManualClock>,
    _state: State,
    db: Option<PgDatabase>,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Run `sql` on the back end's tables, as someone with access to the
    /// database (not the node) could.
    fn tamper(&self, sql: &str) {
        match &self.db {
            Some(db) => {
                db.query(&format!("SET search_path TO {}; {sql}", db.schema));
            }
            None => Store::open(self.dir.path())
                .unwrap()
                .connect()
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
        }
    }
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

fn declared() -> Vec<QueueSettings> {
    vec![
        settings("work", Some("work-dead")),
        settings("work-dead", None),
        settings("solo", None),
    ]
}

/// The keyring of `state` under a master key of 32 bytes `7`: every node
/// of a test holds the same one.
fn keyring(state: &State, dir: &std::path::Path) -> Keyring {
    let path = dir.join("master");
    if !path.exists() {
        bulkhead_store::files::write_private(&path, &[&[7u8; 32]]).unwrap();
    }
    Keyring::new(
        MasterKey::from_file(&path).unwrap(),
        state.key_store().unwrap(),
    )
}

fn node(
    state: &State,
    dir: &std::path::Path,
    limits: QueueLimits,
    clock: Arc<ManualClock>,
) -> SharedQueue {
    state
        .queue(&keyring(state, dir), declared(), limits, clock)
        .unwrap()
}

impl Backend {
    fn open(self, limits: QueueLimits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let (state, db) = match self {
            Self::Sqlite => {
                let state = State::open(&StateConfig::Embedded {
                    dir: dir.path().to_path_buf(),
                })
                .unwrap();
                (state, None)
            }
            Self::Postgres => {
                let db = PgDatabase::create();
                (db.node(dir.path()), Some(db))
            }
        };
        let queue = node(&state, dir.path(), limits, clock.clone());
        Fixture {
            queue,
            clock,
            _state: state,
            db,
            dir,
        }
    }

    fn fixture(self) -> Fixture {
        self.open(QueueLimits {
            max_event_depth: 4,
            ..QueueLimits::default()
        })
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

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(super::Backend::Postgres) } )*
        }
    };
}

on_both!(
    enqueue_lease_ack_in_order,
    lease_takes_at_most_max,
    an_unacked_lease_is_redelivered_after_the_timeout,
    a_failure_retries_with_exponential_back_off,
    dead_letter_after_max_attempts_then_redrive,
    expired_leases_count_as_attempts,
    too_deep_is_refused_and_can_be_dead_lettered_t04,
    a_chain_stops_at_max_chain_messages_and_keeps_its_chain_t04,
    a_released_delivery_spends_no_attempt_t01,
    enqueue_refuses_bad_input,
    retention_sweep_peek_and_purge,
    a_tampered_row_is_buried_never_delivered_t14,
);

fn enqueue_lease_ack_in_order(b: Backend) {
    let f = b.fixture();
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

fn lease_takes_at_most_max(b: Backend) {
    let f = b.fixture();
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
fn an_unacked_lease_is_redelivered_after_the_timeout(b: Backend) {
    let f = b.fixture();
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

fn a_failure_retries_with_exponential_back_off(b: Backend) {
    let f = b.fixture();
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
}

/// After `max_attempts` deliveries a message moves to the dead-letter
/// queue with its reason, where it can be read and redriven.
fn dead_letter_after_max_attempts_then_redrive(b: Backend) {
    let f = b.fixture();
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
fn expired_leases_count_as_attempts(b: Backend) {
    let f = b.fixture();
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
fn too_deep_is_refused_and_can_be_dead_lettered_t04(b: Backend) {
    let f = b.fixture();
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
    // Parked, never delivered by itself: a dead-letter consumer that sent
    // it on would loop for ever (outside review of issue 18, high).
    assert!(dead[0].parked);
    assert!(f.queue.lease("work-dead", 10).unwrap().is_empty());
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
fn a_chain_stops_at_max_chain_messages_and_keeps_its_chain_t04(b: Backend) {
    let f = b.open(QueueLimits {
        max_chain_messages: 3,
        ..QueueLimits::default()
    });
    let q = &f.queue;
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
fn a_released_delivery_spends_no_attempt_t01(b: Backend) {
    let f = b.fixture();
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

fn enqueue_refuses_bad_input(b: Backend) {
    let f = b.fixture();
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

fn retention_sweep_peek_and_purge(b: Backend) {
    let f = b.fixture();
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

/// T14: a row changed in the database (its depth lowered to escape the
/// loop limit, or its payload swapped for another message's) fails
/// authentication: dead-lettered with the reason, never delivered, and
/// peek shows it without its bytes.
fn a_tampered_row_is_buried_never_delivered_t14(b: Backend) {
    let f = b.fixture();
    f.queue
        .enqueue(
            "work",
            NewMessage {
                depth: 3,
                ..msg(b"deep")
            },
        )
        .unwrap();
    f.tamper("UPDATE queue_messages SET depth = 0");
    assert!(f.queue.lease("work", 1).unwrap().is_empty());
    f.queue.enqueue("work", msg(b"one")).unwrap();
    f.queue.enqueue("solo", msg(b"two")).unwrap();
    f.tamper(
        "UPDATE queue_messages SET payload_sealed = (SELECT payload_sealed FROM queue_messages WHERE queue = 'solo') WHERE queue = 'work'",
    );
    assert!(f.queue.lease("work", 10).unwrap().is_empty());
    let dead = f.queue.peek("work-dead", 10).unwrap();
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(
            d.dead_reason.as_deref(),
            Some("failed authentication at rest")
        );
        assert!(d.payload.is_none());
    }
    // The untouched one is delivered as ever.
    assert_eq!(&f.queue.lease("solo", 1).unwrap()[0].payload[..], b"two");
}

/// Two nodes on one PostgreSQL database: the same state schema, each its
/// own state directory and connections, the same master key.
struct Cluster {
    nodes: Vec<SharedQueue>,
    _states: Vec<State>,
    db: PgDatabase,
    _dirs: Vec<tempfile::TempDir>,
}

fn cluster(limits: QueueLimits, clock: Arc<ManualClock>) -> Cluster {
    let db = PgDatabase::create();
    let (mut nodes, mut states, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let state = db.node(dir.path());
        nodes.push(node(&state, dir.path(), limits, clock.clone()));
        states.push(state);
        dirs.push(dir);
    }
    Cluster {
        nodes,
        _states: states,
        db,
        _dirs: dirs,
    }
}

/// T01 on a cluster: two nodes lease one queue from four threads each at
/// once (`FOR UPDATE SKIP LOCKED`); no message is delivered twice while
/// it is leased (the clock stands still: no lease ever times out), every
/// message is delivered, each is acknowledged through either node, and
/// then it is gone for both.
#[test]
fn two_nodes_never_deliver_a_leased_message_twice_t01() {
    const MESSAGES: usize = 300;
    let clock = Arc::new(ManualClock::new(T0));
    let c = cluster(QueueLimits::default(), clock);
    for i in 0..MESSAGES {
        let payload = format!("m{i}");
        let chain = [u8::try_from(i % 200).unwrap(); 16];
        c.nodes[i % 2]
            .enqueue(
                "work",
                NewMessage {
                    chain,
                    ..msg(payload.as_bytes())
                },
            )
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let start = Arc::new(Barrier::new(8));
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let (mine, other) = (c.nodes[t % 2].clone(), c.nodes[(t + 1) % 2].clone());
            let (seen, start) = (seen.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut idle = 0;
                while idle < 50 {
                    let got = mine.lease("work", 4).unwrap();
                    if got.is_empty() {
                        idle += 1;
                        std::thread::yield_now();
                        continue;
                    }
                    idle = 0;
                    for (k, d) in got.iter().enumerate() {
                        let text = String::from_utf8(d.payload.to_vec()).unwrap();
                        assert!(
                            seen.lock().unwrap().insert(text.clone()),
                            "{text} delivered twice"
                        );
                        assert_eq!(d.attempt, 1, "{text}");
                        // Acknowledged through either node.
                        let by = if k % 2 == 0 { &mine } else { &other };
                        assert_eq!(by.ack(&d.lease).unwrap(), Acked::Deleted);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        MESSAGES,
        "every message delivered"
    );
    for node in &c.nodes {
        assert!(node.lease("work", 10).unwrap().is_empty());
        assert!(node.peek("work", 10).unwrap().is_empty());
        let stats = &node.stats().unwrap()[0];
        assert_eq!((stats.ready, stats.in_flight, stats.delayed), (0, 0, 0));
    }
    let rows = c.db.query(&format!(
        "SELECT count(*) FROM {}.queue_messages",
        c.db.schema
    ));
    assert_eq!(rows[0][0].as_deref(), Some("0"));
}

/// A message leased through one node cannot be settled by a stale lease
/// on the other, and an acknowledgement through one is seen by both.
#[test]
fn an_acknowledgement_is_seen_by_both_nodes() {
    let clock = Arc::new(ManualClock::new(T0));
    let c = cluster(QueueLimits::default(), clock.clone());
    c.nodes[0].enqueue("work", msg(b"shared")).unwrap();
    let first = c.nodes[1].lease("work", 1).unwrap().remove(0);
    assert_eq!(
        &first.payload[..],
        b"shared",
        "node B opens node A's message"
    );
    assert!(c.nodes[0].lease("work", 1).unwrap().is_empty());
    clock.advance_ms(30_000);
    let again = c.nodes[0].lease("work", 1).unwrap().remove(0);
    assert_eq!(again.attempt, 2);
    assert_eq!(c.nodes[1].ack(&first.lease).unwrap(), Acked::Stale);
    assert_eq!(c.nodes[1].ack(&again.lease).unwrap(), Acked::Deleted);
    for node in &c.nodes {
        assert!(node.peek("work", 10).unwrap().is_empty());
    }
}

/// T04 on a cluster: a chain's `max_event_messages` holds whichever node
/// its messages are sent through, even sent at once from both.
#[test]
fn a_chains_limit_holds_across_two_nodes_t04() {
    let clock = Arc::new(ManualClock::new(T0));
    let c = cluster(
        QueueLimits {
            max_chain_messages: 10,
            ..QueueLimits::default()
        },
        clock,
    );
    let start = Arc::new(Barrier::new(8));
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let (node, start) = (c.nodes[t % 2].clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let (mut sent, mut stopped) = (0, 0);
                for _ in 0..5 {
                    let m = NewMessage {
                        chain: [42; 16],
                        ..msg(b"fan")
                    };
                    match node.enqueue("work", m) {
                        Ok(_) => sent += 1,
                        Err(QueueError::ChainExhausted { max: 10 }) => stopped += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (sent, stopped)
            })
        })
        .collect();
    let (sent, stopped) = senders
        .into_iter()
        .map(|s| s.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!((sent, stopped), (10, 30));
    let rows = c.db.query(&format!(
        "SELECT count(*), (SELECT sent FROM {s}.queue_chains) FROM {s}.queue_messages",
        s = c.db.schema
    ));
    assert_eq!(rows[0][0].as_deref(), Some("10"));
    assert_eq!(
        rows[0][1].as_deref(),
        Some("10"),
        "refused sends are not counted"
    );
}
