//! The `bulkhead:sql` capability end to end (T06, T15, T16, T05): a real
//! guest built from source, a real server, a real SQLCipher file on disk.
//! The guest uses its grant legitimately and tries every way to overstep:
//! an ungranted store, a write under a read grant, an undeclared
//! statement, DDL, ATTACH, PRAGMA, two statements in one, the host's own
//! tables, and an injection string passed as a parameter (stored inert).

mod support;

use support::{Server, TestApp, get};

/// The app: the `sqlguest` functions (writer, reader, declared) over two
/// stores (issue 16's cluster test serves the same on PostgreSQL).
fn manifest() -> String {
    format!("[app]\nname = \"ledger\"\n{}", support::SQL_LEDGER)
}

fn ledger() -> TestApp {
    let app = TestApp::new(&manifest(), &["sqlguest"]);
    for (store, sql) in [
        (
            "events",
            "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        ),
        ("other", "CREATE TABLE secrets (v TEXT);"),
    ] {
        let dir = app.path().join("migrations").join(store);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("001_init.sql"), sql).unwrap();
    }
    app
}

#[tokio::test]
async fn t06_t15_t16_guest_sql_is_confined_and_encrypted_at_rest() {
    let app = ledger();
    let server = Server::start(&app);
    let call = |path: &str| {
        let addr = server.addr;
        let path = path.to_string();
        async move { get(addr, &path).await.text() }
    };

    // Legitimate use.
    let marker = "plaintext-marker-7c1d";
    let inserted = call(&format!("/w/insert?body={marker}")).await;
    assert_eq!(inserted, "ok columns= changes=1 rows=[]");
    assert_eq!(
        call("/r/get?id=1").await,
        format!("ok columns=body changes=0 rows=[[\"{marker}\"]]")
    );
    assert_eq!(
        call("/d/get?id=1").await,
        format!("ok columns=body changes=0 rows=[[\"{marker}\"]]")
    );

    // T06: the injection string is a value, stored and found as written.
    let injected = call("/w/inject").await;
    assert_eq!(
        injected,
        "ok columns= changes=1 rows=[]\nok columns=body changes=0 rows=[[\"'); DROP TABLE events; --\"]]"
    );
    assert!(
        call("/r/count")
            .await
            .starts_with("ok columns=count(*) changes=0 rows=[[2]]")
    );

    // T06/T16: every overstep refused, and the reason named.
    let cases = [
        ("/w/count?store=other", "err not-granted: other"),
        ("/w/count?store=nosuch", "err not-granted: nosuch"),
        ("/r/insert?body=x", "err denied: a write under a read grant"),
        ("/d/count", "err statement-not-allowed"),
        ("/d/insert?body=x", "err statement-not-allowed"),
        ("/w/ddl", "err denied: DDL"),
        ("/w/create", "err denied: DDL"),
        ("/r/ddl", "err denied: DDL"),
        ("/w/attach", "err denied: ATTACH"),
        ("/w/pragma", "err denied: PRAGMA"),
        ("/w/rekey", "err denied: PRAGMA"),
        (
            "/w/internal",
            "err denied: a table the host keeps for itself",
        ),
    ];
    for (path, expected) in cases {
        let text = call(path).await;
        assert!(text.starts_with(expected), "{path}: {text}");
    }
    let multi = call("/w/multi").await;
    assert!(multi.starts_with("err "), "{multi}");
    // Nothing was dropped or written by any of them.
    assert!(
        call("/r/count")
            .await
            .starts_with("ok columns=count(*) changes=0 rows=[[2]]")
    );
    assert!(!app.path().join("stolen.db").exists());

    let denials = server.wait_for_count(
        |r| r["target"] == "bulkhead::capability" && r["message"] == "SQL statement denied",
        cases.len(),
    );
    assert!(denials.iter().all(|r| r["correlation_id"].is_string()));
    assert!(denials.iter().all(|r| !r.to_string().contains(marker)));
    assert!(server.stop().success());

    let audited = app.run_with(
        &["audit", "query"],
        &["--kind", "capability.denied", "--format", "json"],
    );
    let audited = String::from_utf8_lossy(&audited.stdout).to_string();
    assert!(audited.lines().count() >= cases.len(), "{audited}");
    assert!(audited.contains("\"store\":\"other\"") && audited.contains("\"capability\":\"sql\""));

    // T15: the database on disk holds no plaintext, and no SQLite header.
    let sql_dir = app.path().join(".bulkhead/dev/sql");
    let mut files = 0;
    for entry in std::fs::read_dir(&sql_dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()));
        assert!(!bytes.starts_with(b"SQLite format 3"));
        files += 1;
    }
    assert!(files >= 2);

    // T15: the database key is derived from a data key wrapped by the
    // master key; under another master key the store cannot be opened.
    let master = app.path().join(".bulkhead/dev/master.key");
    assert!(master.exists());
    std::fs::write(&master, [0x5a_u8; 32]).unwrap();
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not unwrap under this master key"),
        "{stderr}"
    );
}

#[test]
fn t06_a_changed_applied_migration_is_refused_by_check_and_serve() {
    let app = ledger();
    let out = app.run(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SQL store `events`: 0 migration(s) already applied, 1 pending"),
        "{stderr}"
    );
    // `check` creates no database.
    assert!(!app.path().join(".bulkhead/dev/sql/events.db").exists());

    let server = Server::start(&app);
    drop(server);
    assert!(app.path().join(".bulkhead/dev/sql/events.db").exists());
    std::fs::write(
        app.path().join("migrations/events/001_init.sql"),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT, extra TEXT);",
    )
    .unwrap();
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("migration `001_init.sql` was already applied but its file has changed"),
        "{stderr}"
    );
}

/// T20: a retention Bulkhead cannot enforce on a SQL store is refused.
#[test]
fn t20_retention_on_a_sql_store_is_refused_not_ignored() {
    let app = ledger();
    let manifest = std::fs::read_to_string(app.path().join("bulkhead.toml")).unwrap();
    std::fs::write(
        app.path().join("bulkhead.toml"),
        manifest.replace(
            "migrations = \"migrations/other\"\n",
            "migrations = \"migrations/other\"\nretention = \"48h\"\n",
        ),
    )
    .unwrap();
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SQL store `other`: `retention` is not supported on SQL stores"),
        "{stderr}"
    );
}
