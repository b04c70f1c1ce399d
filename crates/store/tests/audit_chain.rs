//! T09: the audit chain detects every kind of tampering on the real SQLite
//! file, and names the first bad record.

use bulkhead_store::{AuditEvent, AuditLog, AuditQuery, Store, Verification};
use rusqlite::Connection;

fn store_with(n: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = AuditLog::start(&store).unwrap();
    for i in 0..n {
        log.record(
            AuditEvent::new("request.refused")
                .correlation_id(format!("c{i}"))
                .function("hello")
                .detail("reason", "not-found"),
        );
    }
    log.close();
    (dir, store)
}

fn sql(store: &Store, statement: &str) {
    let conn = Connection::open(store.db_path()).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn broken_at(store: &Store) -> i64 {
    match store.verify_audit().unwrap() {
        Verification::Broken { seq, .. } => seq,
        Verification::Intact { records } => panic!("tampering went unnoticed ({records} records)"),
    }
}

#[test]
fn an_untouched_chain_verifies() {
    let (_dir, store) = store_with(10);
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 10 }
    );
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        Store::open(empty.path()).unwrap().verify_audit().unwrap(),
        Verification::Intact { records: 0 }
    );
}

#[test]
fn appending_across_restarts_keeps_one_chain() {
    let (_dir, store) = store_with(3);
    let log = AuditLog::start(&store).unwrap();
    log.record(AuditEvent::new("deploy"));
    log.close();
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 4 }
    );
}

#[test]
fn an_edited_record_is_named() {
    let (_dir, store) = store_with(10);
    sql(
        &store,
        "UPDATE audit SET detail = '{\"reason\":\"nothing to see\"}' WHERE seq = 4",
    );
    assert_eq!(broken_at(&store), 4);
}

#[test]
fn a_replaced_hash_is_named() {
    let (_dir, store) = store_with(10);
    sql(
        &store,
        "UPDATE audit SET kind = 'deploy', hash = 'ab' WHERE seq = 4",
    );
    assert_eq!(broken_at(&store), 4);
}

#[test]
fn a_deleted_record_is_named() {
    let (_dir, store) = store_with(10);
    sql(&store, "DELETE FROM audit WHERE seq = 6");
    assert_eq!(broken_at(&store), 6);
}

#[test]
fn records_deleted_from_the_end_are_detected() {
    let (_dir, store) = store_with(10);
    sql(&store, "DELETE FROM audit WHERE seq >= 8");
    assert_eq!(broken_at(&store), 8);
}

#[test]
fn a_record_appended_outside_bulkhead_is_detected() {
    let (_dir, store) = store_with(3);
    let conn = Connection::open(store.db_path()).unwrap();
    let last_hash: String = conn
        .query_row("SELECT hash FROM audit WHERE seq = 3", [], |r| r.get(0))
        .unwrap();
    // Even a well-formed, correctly chained record is caught by the keyed head.
    conn.execute(
        "INSERT INTO audit (seq, time_ms, kind, detail, prev_hash, hash) VALUES (4, 0, 'deploy', '{}', ?1, 'x')",
        [last_hash],
    )
    .unwrap();
    assert_eq!(broken_at(&store), 4);
}

#[test]
fn a_forged_head_is_detected() {
    let (_dir, store) = store_with(5);
    sql(&store, "UPDATE audit_head SET seq = 4");
    assert_eq!(broken_at(&store), 4);
}

#[test]
fn queries_filter_by_correlation_function_and_kind() {
    let (_dir, store) = store_with(5);
    let hits = store
        .query_audit(&AuditQuery {
            correlation_id: Some("c3".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].seq, 4);
    assert_eq!(hits[0].detail["reason"], "not-found");
    let all = store
        .query_audit(&AuditQuery {
            function: Some("hello".into()),
            kind: Some("request.refused".into()),
            ..AuditQuery::default()
        })
        .unwrap();
    assert_eq!(all.len(), 5);
}

// ---- T09, issue 11: the writer must not launder a tampered chain ----

/// The hash of one record, as the writer computes it: an attacker with
/// write access to `state.db` has it too (it needs no key).
fn rehash(store: &Store, from: i64) {
    rehash_range(store, from, i64::MAX);
}

/// Recompute the hashes of records `from..=to`, as an attacker without
/// the key can.
fn rehash_range(store: &Store, from: i64, to: i64) {
    use sha2::{Digest, Sha256};
    let conn = Connection::open(store.db_path()).unwrap();
    let mut prev: String = conn
        .query_row("SELECT prev_hash FROM audit WHERE seq = ?1", [from], |r| {
            r.get(0)
        })
        .unwrap();
    type Fields = (
        i64,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
    );
    let rows: Vec<Fields> = conn
        .prepare("SELECT seq, time_ms, kind, correlation_id, subject, function, detail FROM audit WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq")
        .unwrap()
        .query_map([from, to], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (seq, time, kind, corr, subject, function, detail) in rows {
        let canonical = serde_json::json!([seq, time, kind, corr, subject, function, detail, prev]);
        let hash = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
        conn.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
}

fn append(store: &Store, kind: &str) -> AuditLog {
    let log = AuditLog::start(store).unwrap();
    log.record(AuditEvent::new(kind));
    log.flush();
    log
}

fn kinds(store: &Store, kind: &str) -> Vec<bulkhead_store::AuditRecord> {
    store
        .query_audit(&AuditQuery {
            kind: Some(kind.into()),
            ..AuditQuery::default()
        })
        .unwrap()
}

/// Deleting the last records and then causing any audited event used to
/// turn `verify` from BROKEN to OK. Now the writer records the break in a
/// new segment and `verify` keeps reporting it, however much is appended.
#[test]
fn t09_records_deleted_from_the_end_are_not_laundered_by_the_next_append() {
    let (_dir, store) = store_with(10);
    sql(&store, "DELETE FROM audit WHERE seq >= 9");
    let log = append(&store, "request.refused");
    assert_eq!(log.status().chain_breaks, 1);
    log.close();
    for _ in 0..3 {
        append(&store, "deploy").close();
    }
    assert_eq!(broken_at(&store), 9);
    let breaks = kinds(&store, bulkhead_store::CHAIN_BROKEN);
    assert_eq!(breaks.len(), 1, "one break, recorded once");
    assert_eq!(
        breaks[0].seq, 11,
        "the new segment starts after the old head"
    );
    assert_eq!(breaks[0].detail["broken_at"], 9);
    assert_eq!(breaks[0].detail["expected"]["record"], 10);
    assert_eq!(breaks[0].detail["found"]["last_record"], 8);
    // The break record itself cannot be removed: the keyed head covers it.
    sql(&store, "DELETE FROM audit WHERE seq >= 11");
    broken_at(&store);
}

/// Editing a record and recomputing every later hash (no key needed) and
/// then appending used to give a fresh, valid head.
#[test]
fn t09_an_edited_and_rehashed_chain_is_not_laundered_by_the_next_append() {
    let (_dir, store) = store_with(10);
    sql(
        &store,
        "UPDATE audit SET detail = '{\"reason\":\"nothing to see\"}' WHERE seq = 4",
    );
    rehash(&store, 4);
    append(&store, "credential.created").close();
    match store.verify_audit().unwrap() {
        Verification::Broken { seq, reason } => {
            assert_eq!(seq, 10, "{reason}");
            assert!(reason.contains("new segment at record 11"), "{reason}");
        }
        other => panic!("laundered: {other:?}"),
    }
}

/// An older copy of the database, restored: the head file beside it is
/// ahead, and both `verify` and the next writer say so.
#[test]
fn t09_a_rolled_back_database_is_detected_through_the_head_file() {
    let (dir, store) = store_with(5);
    let (_, head) = store.audit_head_file().unwrap();
    assert_eq!(
        head,
        bulkhead_store::HeadFile::Valid {
            seq: 5,
            hash: kinds(&store, "request.refused")[4].hash.clone()
        }
    );
    let old = dir.path().join("old.db");
    sql(&store, &format!("VACUUM INTO '{}'", old.display()));
    append(&store, "deploy").close();
    append(&store, "deploy").close();
    // Roll the audit tables back to the copy.
    sql(
        &store,
        &format!(
            "ATTACH '{}' AS old; DELETE FROM audit; DELETE FROM audit_head;
             INSERT INTO audit SELECT * FROM old.audit; INSERT INTO audit_head SELECT * FROM old.audit_head;",
            old.display()
        ),
    );
    match store.verify_audit().unwrap() {
        Verification::Broken { seq, reason } => {
            assert_eq!(seq, 6);
            assert!(reason.contains("rolled back"), "{reason}");
        }
        other => panic!("rollback unnoticed: {other:?}"),
    }
    let log = append(&store, "deploy");
    assert_eq!(log.status().chain_breaks, 1);
    log.close();
    let breaks = kinds(&store, bulkhead_store::CHAIN_BROKEN);
    assert_eq!(breaks.len(), 1);
    assert_eq!(
        breaks[0].seq, 8,
        "after the highest record the head file knew"
    );
    assert_eq!(broken_at(&store), 6);
}

/// Deleting the head file (to hide a rollback) is itself a break once the
/// trail was anchored; a trail from before the head file gets anchored.
#[test]
fn t09_a_deleted_head_file_is_detected() {
    let (dir, store) = store_with(3);
    // An older trail, written before the head file existed (its head MAC'd
    // the old way, unanchored), is accepted and anchored.
    let head_file = dir.path().join("audit.head");
    make_pre_anchoring(&store);
    let store = Store::open(dir.path()).unwrap();
    append(&store, "deploy").close();
    append(&store, "deploy").close();
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 5 }
    );
    std::fs::remove_file(&head_file).unwrap();
    assert!(
        matches!(store.verify_audit().unwrap(), Verification::Broken { seq: 5, ref reason } if reason.contains("deleted"))
    );
    // Clearing the head's `anchored` flag to excuse it breaks its MAC.
    sql(&store, "UPDATE audit_head SET anchored = 0");
    assert!(
        matches!(store.verify_audit().unwrap(), Verification::Broken { reason, .. } if reason.contains("forged"))
    );
    // A forged head file is no better.
    std::fs::write(
        &head_file,
        r#"{"version":1,"seq":1,"hash":"00","mac":"00"}"#,
    )
    .unwrap();
    broken_at(&store);
}

/// T09/T01 (issue 11, item 12): the trail has a size budget. Past it the
/// writer records `audit.full` once and then only counts; it keeps taking
/// events (never blocks, never fails).
#[test]
fn t09_the_audit_trail_stops_at_its_size_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.set_audit_max_size(20_000).unwrap();
    let log = AuditLog::start(&store).unwrap();
    for i in 0..400 {
        log.record(
            AuditEvent::new("request.refused")
                .correlation_id(format!("c{i}"))
                .detail("path", "/x".repeat(20)),
        );
        if i % 50 == 0 {
            log.flush();
        }
    }
    log.flush();
    let status = log.status();
    assert!(status.full, "{status:?}");
    assert_eq!(status.max_size_bytes, 20_000);
    log.close();
    assert_eq!(kinds(&store, "audit.nearly_full").len(), 1);
    assert_eq!(kinds(&store, "audit.full").len(), 1);
    let written = kinds(&store, "request.refused").len() as u64;
    let suppressed: u64 = kinds(&store, "audit.suppressed")
        .iter()
        .map(|r| r.detail["kinds"]["request.refused"].as_u64().unwrap())
        .sum();
    assert_eq!(written + suppressed, 400, "every event written or counted");
    assert!(written < 100, "{written} written past a 20 kB budget");
    assert!(matches!(
        store.verify_audit().unwrap(),
        Verification::Intact { .. }
    ));
}

/// The smaller item of issue 11: the state directory and every file the
/// store writes are owner-only, the SQLite companions included.
#[cfg(unix)]
#[test]
fn state_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(".bulkhead/dev");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&dir).unwrap();
    let log = append(&store, "deploy");
    let _reader = store.connect().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for name in [
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "audit.key",
        "audit.head",
    ] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    log.close();
}

/// Two writers on one trail (the server and a CLI command, here two
/// handles) interleave without either seeing the other's appends as a
/// break: each checks and continues from the real head under the lock.
#[test]
fn t09_two_writers_interleave_without_false_breaks() {
    let (_dir, store) = store_with(2);
    let server = AuditLog::start(&store).unwrap();
    for i in 0..20 {
        server.record(AuditEvent::new("request.refused").detail("i", i));
        if i % 3 == 0 {
            server.flush();
            let cli = AuditLog::start(&store).unwrap();
            cli.record(AuditEvent::new("key.created").detail("i", i));
            cli.close();
        }
    }
    server.flush();
    assert_eq!(server.status().chain_breaks, 0);
    server.close();
    assert!(kinds(&store, bulkhead_store::CHAIN_BROKEN).is_empty());
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact {
            records: 2 + 20 + 7
        }
    );
}

/// The head file lags the database by at most a moment: after a burst
/// that no flush follows, the idle writer brings it up to date by itself.
#[test]
fn t09_the_head_file_catches_up_without_a_flush() {
    let (_dir, store) = store_with(1);
    let log = AuditLog::start(&store).unwrap();
    for i in 0..4 {
        log.record(AuditEvent::new("request.refused").detail("i", i));
    }
    let mut head = None;
    for _ in 0..200 {
        head = Some(store.audit_head_file().unwrap().1);
        if matches!(head, Some(bulkhead_store::HeadFile::Valid { seq: 5, .. })) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        matches!(head, Some(bulkhead_store::HeadFile::Valid { seq: 5, .. })),
        "{head:?}"
    );
    log.close();
}

// ---- T09, outside attack on the release binary: locks, wipes, counters ----

/// Run `script` in a Python child process with `db` as `sys.argv[1]`: a
/// second process using the database, as a CLI command does while the
/// server runs.
fn python(script: &str, db: &std::path::Path) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Opening the store again while its audit writer runs (the server does,
/// when it deploys) used to open and close a plain handle on `state.db`,
/// which drops every POSIX lock this process holds on it, SQLite's
/// included. Another process closing the database then took itself for
/// the last user: it checkpointed and deleted the WAL the writer was still
/// appending to, and those records were lost.
#[cfg(unix)]
#[test]
fn t09_reopening_the_store_keeps_sqlites_locks() {
    use std::os::unix::fs::MetadataExt as _;
    let (dir, store) = store_with(3);
    let log = append(&store, "deploy");
    let wal = dir.path().join("state.db-wal");
    let wal_inode = std::fs::metadata(&wal).unwrap().ino();
    // The server opens the store again while its writer runs.
    Store::open(dir.path()).unwrap();
    bulkhead_store::files::create_private_file(&store.db_path()).unwrap();
    // A CLI command opens and closes the database.
    let seen = python(
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1])\n\
         print(c.execute('SELECT count(*) FROM audit').fetchone()[0])\n\
         c.close()",
        &store.db_path(),
    );
    assert_eq!(seen, "4");
    assert_eq!(
        std::fs::metadata(&wal).map(|m| m.ino()).ok(),
        Some(wal_inode),
        "the WAL was deleted under the writer"
    );
    for i in 0..5 {
        log.record(AuditEvent::new("request.refused").detail("i", i));
    }
    log.flush();
    let seen = python(
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1])\n\
         print(c.execute('SELECT count(*) FROM audit').fetchone()[0])\n\
         c.close()",
        &store.db_path(),
    );
    assert_eq!(seen, "9", "records written after the other process closed");
    log.close();
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 9 }
    );
}

/// The audit key, as the store holds it; tests use it to build what an
/// older Bulkhead wrote (the attacker of these tests does not have it).
fn old_head_mac(store: &Store, seq: i64, hash: &str, anchored: bool) -> String {
    use hmac::{Hmac, Mac};
    let key = std::fs::read(store.dir().join("audit.key")).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    let input = if anchored {
        format!("{seq}:{hash}:anchored")
    } else {
        format!("{seq}:{hash}")
    };
    mac.update(input.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Take the schema back to version 5, before the head file: what an older
/// Bulkhead left, or what an attacker makes a store look like.
fn rewind_to_v5(conn: &Connection) {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('audit_head')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for column in columns {
        if !["id", "seq", "hash", "mac"].contains(&column.as_str()) {
            conn.execute_batch(&format!("ALTER TABLE audit_head DROP COLUMN {column}"))
                .unwrap();
        }
    }
    conn.execute_batch("DROP TABLE IF EXISTS audit_meta; PRAGMA user_version = 5")
        .unwrap();
}

/// Make `store` a genuine store of a Bulkhead from before the head file:
/// schema 5, its head MAC'd the old way (unanchored), no head file.
fn make_pre_anchoring(store: &Store) {
    let conn = Connection::open(store.db_path()).unwrap();
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    rewind_to_v5(&conn);
    conn.execute("DELETE FROM audit_head", []).unwrap();
    if let Some((seq, hash)) = last {
        conn.execute(
            "INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, ?1, ?2, ?3)",
            rusqlite::params![seq, hash, old_head_mac(store, seq, &hash, false)],
        )
        .unwrap();
    }
    let _ = std::fs::remove_file(store.dir().join("audit.head"));
}

/// A break must be reported by `verify` and recorded by the next writer.
fn assert_break_recorded(store: &Store, expect_reason: &str) {
    match store.verify_audit().unwrap() {
        Verification::Broken { reason, .. } => {
            assert!(reason.contains(expect_reason), "{reason}")
        }
        other => panic!("tampering went unnoticed: {other:?}"),
    }
    let before = kinds(store, bulkhead_store::CHAIN_BROKEN).len();
    let log = append(store, "deploy");
    assert!(log.status().chain_breaks >= 1, "{:?}", log.status());
    log.close();
    assert_eq!(
        kinds(store, bulkhead_store::CHAIN_BROKEN).len(),
        before + 1,
        "the writer recorded the break"
    );
    broken_at(store);
}

/// Attack (a): delete every record, the keyed head and the head file. The
/// trail used to verify as an intact, empty one.
#[test]
fn t09_a_wiped_trail_is_detected() {
    let (dir, store) = store_with(5);
    sql(&store, "DELETE FROM audit; DELETE FROM audit_head;");
    std::fs::remove_file(dir.path().join("audit.head")).unwrap();
    assert_break_recorded(&store, "wiped");
}

/// Attack (a) as well, on a trail with nothing in it yet: a new store is
/// anchored at once, so deleting its head afterwards is seen too.
#[test]
fn t09_a_wiped_empty_trail_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.audit_head_file().unwrap().1,
        bulkhead_store::HeadFile::Valid {
            seq: 0,
            hash: "0".repeat(64)
        },
        "a new trail is anchored when the store is created"
    );
    sql(&store, "DELETE FROM audit_head");
    std::fs::remove_file(dir.path().join("audit.head")).unwrap();
    assert_break_recorded(&store, "wiped");
}

/// Attack (b): wipe the trail and make the store look like one an older
/// Bulkhead wrote and never anchored: break and anchor counts reset (they
/// are not what tells an old store from a wiped one).
#[test]
fn t09_a_wiped_trail_dressed_as_an_old_store_is_detected() {
    let (dir, store) = store_with(5);
    sql(
        &store,
        "DELETE FROM audit; DELETE FROM audit_head; UPDATE audit_meta SET breaks = 0, anchors = 0;",
    );
    std::fs::remove_file(dir.path().join("audit.head")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_break_recorded(&store, "wiped");
}

/// Attack (b): the count of recorded breaks (for `/metrics`) was kept
/// outside every MAC; resetting it hid earlier breaks from the metric.
#[test]
fn t09_resetting_the_break_count_is_detected() {
    let (_dir, store) = store_with(5);
    sql(&store, "DELETE FROM audit WHERE seq = 5");
    let log = append(&store, "deploy");
    assert_eq!(log.status().chain_breaks, 1);
    log.close();
    let conn = Connection::open(store.db_path()).unwrap();
    conn.execute_batch("UPDATE audit_meta SET breaks = 0, anchors = 0")
        .unwrap();
    let has_breaks_column: bool = conn
        .query_row(
            "SELECT count(*) FROM pragma_table_info('audit_head') WHERE name = 'breaks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if has_breaks_column {
        conn.execute_batch("UPDATE audit_head SET breaks = 0")
            .unwrap();
    }
    drop(conn);
    let log = append(&store, "deploy");
    let status = log.status();
    log.close();
    assert_eq!(status.chain_breaks, 2, "{status:?}");
    let breaks = kinds(&store, bulkhead_store::CHAIN_BROKEN);
    assert_eq!(breaks.len(), 2, "{breaks:?}");
    assert!(
        breaks[1].detail["reason"]
            .as_str()
            .is_some_and(|r| r.contains("forged")),
        "{breaks:?}"
    );
}

/// Upgrades raise no false alarm: a store an older Bulkhead wrote (before
/// the head file; its head MAC'd the old way) opens intact, is anchored,
/// and from then on a deleted head file is a break.
#[test]
fn t09_an_old_store_upgrades_without_a_false_alarm() {
    let (dir, store) = store_with(3);
    make_pre_anchoring(&store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 3 }
    );
    let log = append(&store, "deploy");
    assert_eq!(log.status().chain_breaks, 0);
    log.close();
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 4 }
    );
    assert!(matches!(
        store.audit_head_file().unwrap().1,
        bulkhead_store::HeadFile::Valid { seq: 4, .. }
    ));
    std::fs::remove_file(dir.path().join("audit.head")).unwrap();
    broken_at(&store);

    // Older stores that never wrote a record: with an audit key (after
    // only `bulkhead check`, which starts the writer) and without.
    for keep_key in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        AuditLog::start(&store).unwrap().close();
        make_pre_anchoring(&store);
        if !keep_key {
            std::fs::remove_file(dir.path().join("audit.key")).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.verify_audit().unwrap(),
            Verification::Intact { records: 0 }
        );
        assert!(matches!(
            store.audit_head_file().unwrap().1,
            bulkhead_store::HeadFile::Valid { seq: 0, .. }
        ));
        let log = append(&store, "deploy");
        assert_eq!(log.status().chain_breaks, 0);
        log.close();
    }
}

/// Issue 11 item 12, calibrated: the size the writer counts for each
/// record tracks what SQLite really uses for it (pages of the table and
/// its indexes), and never undercounts it by much: request records with a
/// correlation ID, and small records without one.
#[test]
fn t09_the_audit_size_estimate_tracks_sqlites_usage() {
    use sha2::Digest as _;
    let request = |i: u32| {
        AuditEvent::new("request.refused")
            // Random like real trace IDs: index pages fill as in life.
            .correlation_id(&hex::encode(sha2::Sha256::digest(i.to_string()))[..32])
            .function("register")
            .subject(format!("api-key:k{i}"))
            .detail("reason", "not-found")
            .detail("method", "GET")
            .detail("path", format!("/items/{i}"))
    };
    let small = |_: u32| AuditEvent::new("deploy");
    for (shape, event) in [
        ("request", &request as &dyn Fn(u32) -> AuditEvent),
        ("small", &small),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pages = || -> i64 {
            let conn = store.connect().unwrap();
            let count: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            let size: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap();
            count * size
        };
        let log = AuditLog::start(&store).unwrap();
        log.record(AuditEvent::new("deploy"));
        log.flush();
        let (disk_before, counted_before) = (pages(), log.status().size_bytes);
        for i in 0..4000 {
            log.record(event(i));
            if i % 500 == 0 {
                log.flush();
            }
        }
        log.flush();
        let disk = (pages() - disk_before) as f64;
        let counted = (log.status().size_bytes - counted_before) as f64;
        log.close();
        let ratio = counted / disk;
        assert!(
            (0.97..=1.2).contains(&ratio),
            "{shape}: counted {counted} bytes for {disk} bytes of pages (ratio {ratio:.3})"
        );
    }
}

/// Second outside attack (T09): another process holding the database's
/// write lock longer than SQLite's busy timeout (a `VACUUM`, a long shell
/// transaction) made the writer throw its batch away, logged and nothing
/// else: records gone, no `audit.dropped`, `verify` OK. The writer keeps
/// the batch and writes it once the lock is free.
#[test]
fn t09_a_batch_that_meets_a_held_lock_is_kept_and_written_later() {
    let (_dir, store) = store_with(2);
    let log = AuditLog::start(&store).unwrap();
    log.flush();
    let blocker = Connection::open(store.db_path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for i in 0..3 {
        log.record(AuditEvent::new("key.created").detail("n", i));
    }
    // Past the writer's 5 s busy timeout: its first attempt fails.
    std::thread::sleep(std::time::Duration::from_secs(7));
    blocker.execute_batch("COMMIT").unwrap();
    log.flush();
    log.close();
    assert_eq!(kinds(&store, "key.created").len(), 3, "no record lost");
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 5 }
    );
}

/// A store of three records whose writer is still running, after its
/// two newer records were deleted and the keyed head and head file saved
/// before them were put back (T09).
fn rolled_back_under_a_running_writer() -> (tempfile::TempDir, Store, AuditLog) {
    let (dir, store) = store_with(3);
    let log = AuditLog::start(&store).unwrap();
    log.flush();
    let head_file = dir.path().join("audit.head");
    let saved_file = std::fs::read(&head_file).unwrap();
    let saved = dir.path().join("saved.db");
    sql(&store, &format!("VACUUM INTO '{}'", saved.display()));
    log.record(AuditEvent::new("key.created"));
    log.record(AuditEvent::new("key.created"));
    log.flush();
    sql(
        &store,
        &format!(
            "ATTACH '{}' AS saved; DELETE FROM audit WHERE seq > 3; DELETE FROM audit_head;
             INSERT INTO audit_head SELECT * FROM saved.audit_head;",
            saved.display()
        ),
    );
    std::fs::write(&head_file, saved_file).unwrap();
    (dir, store, log)
}

/// Second outside attack (T09): with the writer running, save the keyed
/// head and the head file, let it write more, then delete the new records
/// and put the saved head and file back. Every check agreed with itself,
/// so the running writer continued as if nothing had happened. It knows
/// what it committed itself: a trail that ends before that is a break.
#[test]
fn t09_rolling_back_under_a_running_writer_is_a_break() {
    let (_dir, store, log) = rolled_back_under_a_running_writer();
    log.record(AuditEvent::new("deploy"));
    log.flush();
    log.close();
    let breaks = kinds(&store, bulkhead_store::CHAIN_BROKEN);
    assert_eq!(breaks.len(), 1, "the running writer saw the rollback");
    broken_at(&store);
}

/// Third outside attack (T09): the same rollback, then another writer (a
/// CLI command) appends until the trail ends past the running writer's
/// last record. Comparing ends saw nothing; the running writer now checks
/// that its own last record is still in the chain.
#[test]
fn t09_a_rollback_extended_by_another_writer_is_still_a_break() {
    let (_dir, store, log) = rolled_back_under_a_running_writer();
    let other = AuditLog::start(&store).unwrap();
    for _ in 0..3 {
        other.record(AuditEvent::new("key.created"));
    }
    other.close();
    log.record(AuditEvent::new("deploy"));
    log.flush();
    log.close();
    assert_eq!(
        kinds(&store, bulkhead_store::CHAIN_BROKEN).len(),
        1,
        "the running writer saw its own records gone"
    );
    broken_at(&store);
}

/// The spill files beside the database (not those set aside).
fn spill_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("audit.spill-") && !name.ends_with(".rejected")
        })
        .collect();
    found.sort();
    found
}

/// Record three `kind` events while another connection holds the write
/// lock, and close the writer before it is released: the spill files.
fn close_behind_a_held_lock(
    store: &Store,
    dir: &std::path::Path,
    kind: &str,
) -> Vec<std::path::PathBuf> {
    let log = AuditLog::start(store).unwrap();
    log.flush();
    let blocker = Connection::open(store.db_path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for i in 0..3 {
        log.record(AuditEvent::new(kind).detail("n", i));
    }
    // Returns (bounded) while the lock is still held.
    log.close();
    let spills = spill_files(dir);
    blocker.execute_batch("COMMIT").unwrap();
    spills
}

/// Outside review (T09): a batch kept behind another process's write lock
/// was lost when the writer closed before the lock was released (the
/// server's shutdown): no count, and `verify` OK. Now it is spilled to a
/// MAC'd file, appended (marked) by the next writer to start, and a copy
/// of the spill put back afterwards is refused.
#[test]
fn t09_a_batch_kept_behind_a_held_lock_at_close_is_spilled_and_recovered() {
    let (dir, store) = store_with(2);
    let spills = close_behind_a_held_lock(&store, dir.path(), "key.created");
    assert_eq!(spills.len(), 1, "the kept batch was spilled at close");
    let copy = std::fs::read(&spills[0]).unwrap();
    AuditLog::start(&store).unwrap().close();
    let keys = kinds(&store, "key.created");
    assert_eq!(keys.len(), 3, "no record lost");
    assert!(keys.iter().all(|r| r.detail["recovered"] == true));
    let recovered = kinds(&store, "audit.recovered");
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].detail["events"], 3);
    assert!(spill_files(dir.path()).is_empty(), "removed once appended");
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 6 }
    );
    // Put back, the same spill is not appended twice.
    std::fs::write(&spills[0], copy).unwrap();
    AuditLog::start(&store).unwrap().close();
    assert_eq!(kinds(&store, "key.created").len(), 3);
    assert_eq!(kinds(&store, "audit.spill_rejected").len(), 1);
    assert!(spill_files(dir.path()).is_empty());
}

/// T09: a spill file edited by one byte (or forged: no key) is not
/// appended; the rejection is on the chain with the file's size, and the
/// file is kept aside for evidence.
#[test]
fn t09_a_tampered_spill_file_is_rejected_and_recorded_not_appended() {
    let (dir, store) = store_with(2);
    let spills = close_behind_a_held_lock(&store, dir.path(), "secret.set");
    assert_eq!(spills.len(), 1, "the kept batch was spilled at close");
    let mut bytes = std::fs::read(&spills[0]).unwrap();
    let at = bytes.windows(10).position(|w| w == b"secret.set").unwrap();
    bytes[at + 7] = b'S';
    std::fs::write(&spills[0], &bytes).unwrap();
    AuditLog::start(&store).unwrap().close();
    assert!(kinds(&store, "secret.set").is_empty());
    assert!(kinds(&store, "secret.Set").is_empty());
    let rejected = kinds(&store, "audit.spill_rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].detail["bytes"], bytes.len());
    assert!(spill_files(dir.path()).is_empty());
    let mut aside = spills[0].clone().into_os_string();
    aside.push(".rejected");
    assert_eq!(std::fs::read(aside).unwrap(), bytes, "kept for evidence");
    assert_eq!(
        store.verify_audit().unwrap(),
        Verification::Intact { records: 3 }
    );
}

/// Fourth outside attack (T09): once one break was recorded, `verify`
/// restarted its walk at each break record and nothing tied the records
/// before a break to it: every earlier record could be deleted, or
/// rewritten and re-hashed, and `verify` said exactly what it said before.
/// Each break record now names the chain's end it found (number and hash),
/// and `verify` checks the record before it against that.
#[test]
fn t09_history_before_a_break_cannot_be_deleted_or_rewritten() {
    let (dir, store) = store_with(5);
    std::fs::remove_file(dir.path().join("audit.head")).unwrap();
    append(&store, "key.created").close();
    assert_eq!(kinds(&store, bulkhead_store::CHAIN_BROKEN).len(), 1);
    let before = match store.verify_audit().unwrap() {
        Verification::Broken { reason, .. } => reason,
        other => panic!("the deleted head file went unnoticed: {other:?}"),
    };
    assert!(!before.contains("before it"), "{before}");

    // Rewritten and re-hashed: record 3 edited, 3..5 re-hashed.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let rewritten = Store::open(copy.path()).unwrap();
    sql(
        &rewritten,
        "UPDATE audit SET detail = '{\"reason\":\"nothing to see\"}' WHERE seq = 3",
    );
    rehash_range(&rewritten, 3, 5);
    match rewritten.verify_audit().unwrap() {
        Verification::Broken { reason, .. } => {
            assert!(reason.contains("before it"), "rewrite unnoticed: {reason}")
        }
        other => panic!("{other:?}"),
    }

    // Deleted: every record before the break.
    sql(&store, "DELETE FROM audit WHERE seq <= 5");
    match store.verify_audit().unwrap() {
        Verification::Broken { reason, .. } => {
            assert!(reason.contains("before it"), "deletion unnoticed: {reason}")
        }
        other => panic!("{other:?}"),
    }
}
