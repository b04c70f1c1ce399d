use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const SCHEMA: &str = "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);";

fn migrations() -> Vec<Migration> {
    vec![Migration {
        name: "001_events.sql".into(),
        sql: SCHEMA.into(),
    }]
}

fn key(byte: u8) -> Arc<SqlKey> {
    Arc::new(SqlKey::new([byte; 32]))
}

fn limits() -> QueryLimits {
    QueryLimits {
        max_rows: 100,
        max_bytes: 1 << 20,
        deadline: Instant::now() + Duration::from_secs(10),
    }
}

fn deployed() -> (tempfile::TempDir, SqlDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let (db, report) = SqlDatabase::deploy(dir.path(), "events", key(7), &migrations()).unwrap();
    assert_eq!(report.applied, vec!["001_events.sql".to_string()]);
    (dir, db)
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

#[test]
fn t15_database_is_encrypted_at_rest_and_refuses_the_wrong_key() {
    let (dir, db) = deployed();
    let secret = "plaintext-marker-4f1c9e";
    db.query(
        Access::ReadWrite,
        None,
        "INSERT INTO events (body) VALUES (?1)",
        &[text(secret)],
        &limits(),
    )
    .unwrap();
    let got = db
        .query(
            Access::Read,
            None,
            "SELECT body FROM events",
            &[],
            &limits(),
        )
        .unwrap();
    assert_eq!(got.rows, vec![vec![text(secret)]]);
    drop(db);
    for entry in std::fs::read_dir(dir.path().join(SQL_DIR)).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(!bytes.starts_with(b"SQLite format 3"));
    }
    let err = SqlDatabase::deploy(dir.path(), "events", key(8), &migrations())
        .err()
        .unwrap();
    assert!(matches!(err, SqlStoreError::WrongKey { .. }), "{err}");
}

#[test]
fn t06_changed_or_missing_applied_migration_is_refused() {
    let (dir, db) = deployed();
    drop(db);
    let mut changed = migrations();
    changed[0].sql.push_str(" -- edited");
    let err = SqlDatabase::deploy(dir.path(), "events", key(7), &changed)
        .err()
        .unwrap();
    assert!(
        matches!(err, SqlStoreError::MigrationChanged { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("001_events.sql"));
    let err = SqlDatabase::deploy(dir.path(), "events", key(7), &[])
        .err()
        .unwrap();
    assert!(
        matches!(err, SqlStoreError::MigrationMissing { .. }),
        "{err}"
    );
    let mut more = migrations();
    more.push(Migration {
        name: "002_index.sql".into(),
        sql: "CREATE INDEX events_body ON events (body);".into(),
    });
    let report = SqlDatabase::check(dir.path(), "events", key(7), &more).unwrap();
    assert_eq!(report.applied, vec!["002_index.sql".to_string()]);
    // The dry run rolled back: deploying applies it for real.
    let (_, report) = SqlDatabase::deploy(dir.path(), "events", key(7), &more).unwrap();
    assert_eq!(report.applied, vec!["002_index.sql".to_string()]);
}

#[test]
fn check_creates_nothing_and_reports_broken_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let report = SqlDatabase::check(dir.path(), "events", key(7), &migrations()).unwrap();
    assert_eq!(report.applied.len(), 1);
    assert!(!dir.path().join(SQL_DIR).exists());
    let bad = vec![Migration {
        name: "001.sql".into(),
        sql: "CREATE TABLE (".into(),
    }];
    let err = SqlDatabase::check(dir.path(), "events", key(7), &bad)
        .err()
        .unwrap();
    assert!(
        matches!(err, SqlStoreError::MigrationFailed { .. }),
        "{err}"
    );
}

#[test]
fn t06_read_grant_cannot_write() {
    let (_dir, db) = deployed();
    let err = db
        .query(
            Access::Read,
            None,
            "INSERT INTO events (body) VALUES ('x')",
            &[],
            &limits(),
        )
        .unwrap_err();
    assert_eq!(err, QueryError::Denied("a write under a read grant"));
    let err = db
        .query(Access::Read, None, "DELETE FROM events", &[], &limits())
        .unwrap_err();
    assert!(matches!(err, QueryError::Denied(_)), "{err}");
}

#[test]
fn t06_ddl_attach_pragma_transactions_and_other_schemas_are_denied() {
    let (dir, db) = deployed();
    let other = dir.path().join("other.db");
    let attach = format!("ATTACH DATABASE '{}' AS other", other.display());
    let copy = dir.path().join("copy.db");
    let vacuum_into = format!("VACUUM INTO '{}'", copy.display());
    for (statement, reason) in [
        ("DROP TABLE events", "DDL"),
        ("CREATE TABLE x (a)", "DDL"),
        ("ALTER TABLE events ADD COLUMN y", "DDL"),
        ("CREATE TEMP TABLE t (a)", "another database"),
        (attach.as_str(), "ATTACH"),
        ("DETACH DATABASE main", "ATTACH"),
        ("PRAGMA table_info(events)", "PRAGMA"),
        ("PRAGMA key = 'x'", "PRAGMA"),
        ("SELECT * FROM pragma_table_info('events')", ""),
        ("SELECT * FROM pragma_database_list", ""),
        ("SELECT * FROM pragma_compile_options", ""),
        (
            "SELECT * FROM pragma_table_info('_bulkhead_migrations')",
            "",
        ),
        ("BEGIN", "transaction"),
        ("SELECT * FROM _bulkhead_migrations", "host keeps"),
        ("SELECT * FROM temp.sqlite_master", "another database"),
        ("SELECT load_extension('x')", "function"),
        // VACUUM attaches a database internally: the authorizer sees it.
        ("VACUUM", "ATTACH"),
        (vacuum_into.as_str(), "ATTACH"),
        ("REINDEX", "DDL"),
        ("SELECT count(*) FROM dbstat", "host keeps"),
        ("ANALYZE", "DDL"),
    ] {
        for access in [Access::Read, Access::ReadWrite] {
            let err = db
                .query(access, None, statement, &[], &limits())
                .unwrap_err();
            match &err {
                QueryError::Denied(why) => assert!(why.contains(reason), "{statement}: {why}"),
                // Table-valued pragmas do not exist for the authorizer's
                // purposes; SQLite refuses them as unknown under DEFENSIVE.
                QueryError::Invalid(_) if reason.is_empty() => {}
                QueryError::ReadOnly if access == Access::Read => {}
                other => panic!("{statement} ({access:?}): {other:?}"),
            }
        }
    }
    assert!(!other.exists());
    assert!(!copy.exists(), "VACUUM INTO must not write a copy anywhere");
}

#[test]
fn t06_injection_string_as_parameter_is_inert() {
    let (_dir, db) = deployed();
    let hostile = "'); DROP TABLE events; --";
    let r = db
        .query(
            Access::ReadWrite,
            None,
            "INSERT INTO events (body) VALUES (?1)",
            &[text(hostile)],
            &limits(),
        )
        .unwrap();
    assert_eq!(r.changes, 1);
    let got = db
        .query(
            Access::Read,
            None,
            "SELECT body FROM events WHERE body = ?1",
            &[text(hostile)],
            &limits(),
        )
        .unwrap();
    assert_eq!(got.columns, vec!["body".to_string()]);
    assert_eq!(got.rows, vec![vec![text(hostile)]]);
}

#[test]
fn one_statement_per_call() {
    let (_dir, db) = deployed();
    let err = db
        .query(
            Access::ReadWrite,
            None,
            "SELECT 1; SELECT 2",
            &[],
            &limits(),
        )
        .unwrap_err();
    assert_eq!(err, QueryError::Invalid("one statement per call".into()));
    let err = db
        .query(
            Access::ReadWrite,
            None,
            "SELECT 1; DROP TABLE events",
            &[],
            &limits(),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        QueryError::Denied(_) | QueryError::Invalid(_)
    ));
    db.query(
        Access::Read,
        None,
        "SELECT count(*) FROM events",
        &[],
        &limits(),
    )
    .unwrap();
}

#[test]
fn t16_only_declared_statements_run() {
    let (_dir, db) = deployed();
    let declared = vec!["SELECT body FROM events WHERE id = ?1".to_string()];
    db.query(
        Access::Read,
        Some(&declared),
        "SELECT body\n  FROM events WHERE id = ?1",
        &[SqlValue::Integer(1)],
        &limits(),
    )
    .unwrap();
    let err = db
        .query(
            Access::Read,
            Some(&declared),
            "SELECT body FROM events",
            &[],
            &limits(),
        )
        .unwrap_err();
    assert_eq!(err, QueryError::StatementNotAllowed);
}

#[test]
fn t05_rows_and_deadline_are_capped() {
    let (_dir, db) = deployed();
    let mut small = limits();
    small.max_rows = 3;
    let err = db
        .query(
            Access::Read,
            None,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10) SELECT x FROM c",
            &[],
            &small,
        )
        .unwrap_err();
    assert!(matches!(err, QueryError::Limit(_)), "{err}");
    let mut late = limits();
    late.deadline = Instant::now();
    let err = db
        .query(
            Access::Read,
            None,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            &[],
            &late,
        )
        .unwrap_err();
    assert_eq!(err, QueryError::Limit("the call's deadline passed".into()));
    let err = db
        .query(Access::Read, None, "SELECT ?1", &[], &limits())
        .unwrap_err();
    assert!(matches!(err, QueryError::Invalid(_)));
}

/// `migrate-state` (issue 16) reads a store whole: its tables in the
/// order they were made, rows in rowid order, without the migrations'
/// record; text that is not UTF-8 stops it, naming the column, never the
/// value (outside review: it was replaced by U+FFFD, silently).
#[test]
fn dump_reads_every_table_and_refuses_text_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let made = vec![Migration {
        name: "001.sql".into(),
        sql: "CREATE TABLE \"we\"\"ird\" (\"Col A\" TEXT, b BLOB); \
              INSERT INTO \"we\"\"ird\" VALUES ('x', x'00ff'), (NULL, NULL); \
              CREATE TABLE n (v INTEGER, r REAL); INSERT INTO n VALUES (-9223372036854775808, 0.1);"
            .into(),
    }];
    SqlDatabase::deploy(dir.path(), "s", key(3), &made).unwrap();
    let tables = SqlDatabase::dump(dir.path(), "s", key(3)).unwrap();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["we\"ird", "n"]);
    assert_eq!(tables[0].columns, ["Col A", "b"]);
    assert_eq!(
        tables[0].rows,
        vec![
            vec![text("x"), SqlValue::Blob(vec![0, 255])],
            vec![SqlValue::Null, SqlValue::Null]
        ]
    );
    assert_eq!(
        tables[1].rows,
        vec![vec![SqlValue::Integer(i64::MIN), SqlValue::Real(0.1)]]
    );

    let bad = tempfile::tempdir().unwrap();
    let made = vec![Migration {
        name: "001.sql".into(),
        sql: "CREATE TABLE t (note TEXT); INSERT INTO t VALUES (CAST(x'41ff42' AS TEXT));".into(),
    }];
    SqlDatabase::deploy(bad.path(), "s", key(3), &made).unwrap();
    match SqlDatabase::dump(bad.path(), "s", key(3)) {
        Err(SqlStoreError::NotUtf8 { table, column, .. }) => {
            assert_eq!((table.as_str(), column.as_str()), ("t", "note"));
        }
        other => panic!("{other:?}"),
    }
}
