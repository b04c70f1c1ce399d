//! T09 (issue 19): group commit tickets, write failures counted on the
//! trail, and unclean stops reported.

use std::time::Duration;

use bulkhead_store::{
    AuditEvent, AuditLog, AuditQuery, AuditRecord, Durability, Store, UNCLEAN_STOP, Verification,
};
use rusqlite::Connection;

fn kinds(store: &Store, kind: &str) -> Vec<AuditRecord> {
    store
        .query_audit(&AuditQuery {
            kind: Some(kind.into()),
            ..AuditQuery::default()
        })
        .unwrap()
}

fn used(i: usize) -> AuditEvent {
    AuditEvent::new("capability.used")
        .correlation_id(format!("{i:032x}"))
        .detail("capability", "kv")
}

/// A ticket's wait ends once its record is committed, and the record is
/// there for another connection to read; a later ticket is larger.
#[tokio::test]
async fn t09_a_ticket_is_durable_once_its_record_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = AuditLog::start(&store).unwrap();
    let first = log.record_from("ip:192.0.2.1", used(1));
    let second = log.record(used(2));
    assert!(first.is_some() && first < second, "{first:?} {second:?}");
    let bound = Duration::from_secs(10);
    assert_eq!(log.wait_durable(second, bound).await, Durability::Durable);
    // No flush: the wait alone says it is committed.
    let ids: Vec<_> = kinds(&store, "capability.used")
        .into_iter()
        .filter_map(|r| r.correlation_id)
        .collect();
    assert_eq!(ids, [format!("{:032x}", 1), format!("{:032x}", 2)]);
    assert_eq!(log.wait_durable(first, bound).await, Durability::Durable);
    assert_eq!(log.wait_durable(None, bound).await, Durability::Nothing);
    assert_eq!(log.status().not_durable, 0);
    log.close();
}

/// A writer that cannot commit (another process holds the write lock)
/// does not hold a response past the bound: the wait times out and is
/// counted; once the lock goes, the record is written.
#[tokio::test]
async fn t09_a_stalled_writer_times_the_wait_out_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = AuditLog::start(&store).unwrap();
    let lock = Connection::open(store.db_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let ticket = log.record(used(1));
    assert_eq!(
        log.wait_durable(ticket, Duration::from_millis(200)).await,
        Durability::TimedOut
    );
    assert_eq!(log.status().not_durable, 1);
    lock.execute_batch("COMMIT").unwrap();
    assert_eq!(
        log.wait_durable(ticket, Duration::from_secs(20)).await,
        Durability::Durable
    );
    log.close();
    assert_eq!(kinds(&store, "capability.used").len(), 1);
}

/// Item 4: batches that cannot be written (here a trigger refuses every
/// insert, as a full disk would) are counted, with the error, and once
/// writing works again one `audit.dropped` record says how many were lost;
/// a lost batch that carried such a count passes it on.
#[tokio::test]
async fn t09_records_a_failed_write_loses_are_counted_on_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = AuditLog::start(&store).unwrap();
    let bound = Duration::from_secs(10);
    assert_eq!(
        log.wait_durable(log.record(used(0)), bound).await,
        Durability::Durable
    );
    let admin = Connection::open(store.db_path()).unwrap();
    admin
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit
             BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END;",
        )
        .unwrap();
    // Two failed batches: three events, then one more with the
    // `audit.dropped` record that carries the first three.
    let mut last = None;
    for i in 1..=3 {
        last = log.record(used(i));
    }
    assert_eq!(log.wait_durable(last, bound).await, Durability::NotWritten);
    let fourth = log.record(used(4));
    assert_eq!(
        log.wait_durable(fourth, bound).await,
        Durability::NotWritten
    );
    admin.execute_batch("DROP TRIGGER refuse").unwrap();
    let fifth = log.record(used(5));
    assert_eq!(log.wait_durable(fifth, bound).await, Durability::Durable);
    log.close();

    let dropped = kinds(&store, "audit.dropped");
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0].detail["write_failed"], 4, "{:?}", dropped[0]);
    assert_eq!(dropped[0].detail["events"], 4);
    assert!(
        dropped[0].detail["write_error"]
            .as_str()
            .unwrap()
            .contains("disk is full"),
        "{:?}",
        dropped[0]
    );
    assert_eq!(kinds(&store, "capability.used").len(), 2);
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 3 }
    );
}

/// A writer that stopped without closing leaves its marker: `verify`'s
/// note names it until a writer starts, which records it, chained, once;
/// a clean close leaves nothing to report.
#[test]
fn t09_an_unclean_stop_is_reported_then_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = AuditLog::start(&store).unwrap();
    log.record(used(1));
    log.close();
    assert_eq!(store.audit_unclean_stops().unwrap(), []);

    // What a SIGKILLed writer leaves: its marker, unlocked.
    let marker = dir.path().join("audit.run.4242-00ff");
    std::fs::write(&marker, r#"{"pid":4242,"started_ms":1}"#).unwrap();
    let stops = store.audit_unclean_stops().unwrap();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0].recorded_at, None);
    assert_eq!(stops[0].after_record, 1);
    assert_eq!(stops[0].pid, Some(4242));
    assert_eq!(stops[0].started_ms, Some(1));
    // The window opens at the writer's start, not where the trail ended
    // when the stop was noticed (others may have appended since).
    let said = stops[0].describe();
    assert!(said.contains("after its start at 1970-01-01"), "{said}");
    assert!(
        said.contains("held record 1 when this was noticed"),
        "{said}"
    );

    let log = AuditLog::start(&store).unwrap();
    log.flush();
    log.close();
    let recorded = kinds(&store, UNCLEAN_STOP);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].detail["after_record"], 1);
    assert_eq!(recorded[0].detail["pid"], 4242);
    let stops = store.audit_unclean_stops().unwrap();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].recorded_at, Some(recorded[0].seq));
    assert!(!marker.exists());
    // Another clean run adds nothing.
    AuditLog::start(&store).unwrap().close();
    assert_eq!(kinds(&store, UNCLEAN_STOP).len(), 1);
    assert!(matches!(
        store.verify_audit().unwrap(),
        Verification::Intact { .. }
    ));
    let markers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("audit.run")
        })
        .count();
    assert_eq!(markers, 0, "a clean close leaves no marker");
}

/// A live writer's marker is locked: another writer starting beside it
/// (a CLI command while the server runs) does not take it for a stop.
#[test]
fn t09_a_live_writer_is_not_an_unclean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let server = AuditLog::start(&store).unwrap();
    server.record(used(1));
    server.flush();
    AuditLog::start(&store).unwrap().close();
    assert_eq!(store.audit_unclean_stops().unwrap(), []);
    server.close();
    assert_eq!(kinds(&store, UNCLEAN_STOP).len(), 0);
}
