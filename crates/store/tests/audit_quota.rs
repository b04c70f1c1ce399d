//! T09 (issue 11, outside attack): one caller, or all callers together,
//! cannot crowd other callers' or the operator's records out of the audit
//! trail: not out of the writer's queue (finding A) and not out of the
//! trail's size budget (finding B). Whatever is not written is counted on
//! the record, by source.

use std::sync::Arc;

use bulkhead_store::{AuditEvent, AuditLog, AuditQuery, AuditRecord, Store, Verification};
use rusqlite::Connection;

/// More than the writer's queue holds (16,384).
const FLOOD_THREADS: usize = 4;
const FLOOD_EACH: usize = 10_000;

const FLOODER: &str = "ip:203.0.113.66";

/// Admin and security kinds, recorded without a source.
const ADMIN: [&str; 6] = [
    "key.created",
    "secret.set",
    "admin.token_created",
    "admin.tokens_revoked",
    "deploy",
    "data.erased",
];
const VICTIM: &str = "ip:198.51.100.7";

fn kinds(store: &Store, kind: &str) -> Vec<AuditRecord> {
    store
        .query_audit(&AuditQuery {
            kind: Some(kind.into()),
            ..AuditQuery::default()
        })
        .unwrap()
}

/// Hold the database's write lock, so that the writer stalls on its next
/// batch as on a slow disk: the queue then fills for certain, without
/// depending on how fast this machine is. Released by `COMMIT` well
/// within the writer's 5-second busy timeout (the floods below take
/// milliseconds).
fn stall_writer(store: &Store) -> Connection {
    let conn = Connection::open(store.db_path()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

/// `threads` threads each record `each` events from each of `sources`.
fn flood(log: &AuditLog, sources: &[String], threads: usize, each: usize) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            let log = log.clone();
            scope.spawn(move || {
                let sources: Vec<Arc<str>> = sources.iter().map(|s| s.as_str().into()).collect();
                for i in 0..each {
                    for source in &sources {
                        log.record_from(
                            source.clone(),
                            AuditEvent::new("capability.denied")
                                .correlation_id(format!("flood-{t}-{i}"))
                                .detail("capability", "config"),
                        );
                    }
                }
            });
        }
    });
}

/// Per source, the events the `audit.dropped` records count.
fn dropped_from(store: &Store, source: &str) -> u64 {
    kinds(store, "audit.dropped")
        .iter()
        .filter_map(|r| r.detail["sources"][source].as_u64())
        .sum()
}

/// Finding A: one source flooding far past the queue from several threads
/// while the writer is slow cannot make another source's records or an
/// admin event be dropped; what the flooder loses is counted under its
/// name, and every one of its events is written or counted.
#[test]
fn t09_one_source_cannot_crowd_others_out_of_the_audit_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = AuditLog::start(&store).unwrap();
    log.flush();

    let lock = stall_writer(&store);
    flood(&log, &[FLOODER.to_string()], FLOOD_THREADS, FLOOD_EACH);
    for i in 0..20 {
        log.record_from(
            VICTIM,
            AuditEvent::new("auth.failed")
                .correlation_id(format!("victim-{i}"))
                .detail("reason", "invalid-token"),
        );
    }
    log.record(AuditEvent::new("key.created").detail("id", "k1"));
    lock.execute_batch("COMMIT").unwrap();
    log.flush();
    let status = log.status();
    log.close();

    let victim = kinds(&store, "auth.failed");
    assert_eq!(victim.len(), 20, "the victim's records were dropped");
    assert_eq!(kinds(&store, "key.created").len(), 1, "the admin event");

    let flooded = (FLOOD_THREADS * FLOOD_EACH) as u64;
    let written = kinds(&store, "capability.denied").len() as u64;
    let dropped = dropped_from(&store, FLOODER);
    assert!(dropped > 0, "the flood passed its share unnoticed");
    assert_eq!(written + dropped, flooded, "every event written or counted");
    assert_eq!(dropped_from(&store, VICTIM), 0);
    assert_eq!(status.dropped, dropped);
    assert!(matches!(
        store.verify_audit().unwrap(),
        Verification::Intact { .. }
    ));
}

/// Finding A, all sources together: many flooding sources fill no more
/// than the traffic share of the queue, so admin events still get in, and
/// every flooded event is written or counted (sources past the listed
/// ones under `other_sources`).
#[test]
fn t09_many_sources_together_leave_room_for_admin_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = AuditLog::start(&store).unwrap();
    log.flush();

    let sources: Vec<String> = (0..64).map(|i| format!("ip:192.0.2.{i}")).collect();
    let lock = stall_writer(&store);
    flood(&log, &sources, 2, 400);
    for kind in ADMIN {
        log.record(AuditEvent::new(kind).detail("by", "operator"));
    }
    lock.execute_batch("COMMIT").unwrap();
    log.close();

    for kind in ADMIN {
        assert_eq!(kinds(&store, kind).len(), 1, "{kind}");
    }
    let flooded = (sources.len() * 2 * 400) as u64;
    let written = kinds(&store, "capability.denied").len() as u64;
    let counted: u64 = kinds(&store, "audit.dropped")
        .iter()
        .map(|r| {
            let listed: u64 = r.detail["sources"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
            listed + r.detail["other_sources"].as_u64().unwrap_or(0)
        })
        .sum();
    assert!(counted > 0);
    assert_eq!(written + counted, flooded, "every event written or counted");
}

/// Finding B: traffic fills the size budget only up to its share; the
/// rest is kept for admin and security events, which are still written
/// in full after traffic has stopped.
#[test]
fn t09_traffic_cannot_spend_the_reserve_kept_for_admin_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.set_audit_max_size(40_000).unwrap();
    let log = AuditLog::start(&store).unwrap();
    let flooded = 600;
    for i in 0..flooded {
        log.record_from(
            FLOODER,
            AuditEvent::new("request.refused")
                .correlation_id(format!("c{i}"))
                .detail("path", "/x".repeat(20)),
        );
        if i % 200 == 199 {
            log.flush();
        }
    }
    log.flush();
    for kind in ADMIN {
        log.record(AuditEvent::new(kind).detail("by", "operator"));
    }
    log.flush();
    let status = log.status();
    log.close();

    for kind in ADMIN {
        let records = kinds(&store, kind);
        assert_eq!(records.len(), 1, "{kind} was not written");
        assert_eq!(records[0].detail["by"], "operator");
    }
    assert!(status.traffic_full, "{status:?}");
    assert!(!status.full, "{status:?}");
    assert_eq!(kinds(&store, "audit.traffic_full").len(), 1);
    assert!(kinds(&store, "audit.full").is_empty());
    let written = kinds(&store, "request.refused").len() as u64;
    let suppressed: u64 = kinds(&store, "audit.suppressed")
        .iter()
        .filter_map(|r| r.detail["kinds"]["request.refused"].as_u64())
        .sum();
    assert_eq!(
        written + suppressed,
        flooded,
        "every event written or counted"
    );
    assert!(suppressed > 0);
    assert!(matches!(
        store.verify_audit().unwrap(),
        Verification::Intact { .. }
    ));
}
