//! One conformance test for every key-value backend (issue 16): the same
//! body runs against each, through [`Kv`] (sealing above the trait), so a
//! backend that differs in subject scope (T13), expiry (T20), paging,
//! atomic counters or erasure fails here.

mod support;

use std::sync::Arc;
use support::PgDatabase;

use bulkhead_store::crypto::{KeyStore, Keyring, MasterKey};
use bulkhead_store::kv::{self, Kv, KvBackend, KvError, LIST_PAGE, SharedKv, Space};
use bulkhead_store::{State, StateConfig};

/// A keyring of its own in `dir` (the data keys stay on the node).
fn keyring(dir: &std::path::Path) -> Arc<Keyring> {
    let path = dir.join("master");
    bulkhead_store::files::write_private(&path, &[&[7u8; 32]]).unwrap();
    Arc::new(Keyring::new(
        MasterKey::from_file(&path).unwrap(),
        KeyStore::open(dir).unwrap(),
    ))
}

fn space(store: &str, subject: &str) -> Space {
    Space {
        store: store.into(),
        subject: subject.into(),
        retention_ms: None,
    }
}

/// What every backend must do, through the sealing layer.
fn conformance(backend: SharedKv, keys: &std::path::Path) {
    let keyring = keyring(keys);
    let kv = Kv::new(backend, keyring.clone());
    let (alice, bob, shared) = (space("s", "alice"), space("s", "bob"), space("s", ""));

    // Subjects are separate (T13): same store, same key.
    kv.set(&alice, "k", b"alice-value").unwrap();
    assert_eq!(&kv.get(&alice, "k").unwrap().unwrap()[..], b"alice-value");
    assert!(kv.get(&bob, "k").unwrap().is_none());
    assert!(kv.get(&shared, "k").unwrap().is_none());
    kv.set(&bob, "k", b"bob-value").unwrap();
    kv.set(&shared, "k", b"shared-value").unwrap();
    assert_eq!(&kv.get(&alice, "k").unwrap().unwrap()[..], b"alice-value");
    assert_eq!(&kv.get(&bob, "k").unwrap().unwrap()[..], b"bob-value");
    assert_eq!(&kv.get(&shared, "k").unwrap().unwrap()[..], b"shared-value");

    // Overwrite, exists, delete (absent is no error).
    kv.set(&alice, "k", b"again").unwrap();
    assert_eq!(&kv.get(&alice, "k").unwrap().unwrap()[..], b"again");
    assert!(kv.exists(&alice, "k").unwrap());
    kv.delete(&alice, "nothing-here").unwrap();

    // Atomic counters, and a non-counter refused without a write.
    assert_eq!(kv.increment(&alice, "n", 2).unwrap(), 2);
    assert_eq!(kv.increment(&alice, "n", 3).unwrap(), 5);
    assert!(matches!(
        kv.increment(&alice, "k", 1),
        Err(KvError::NotACounter)
    ));
    assert_eq!(&kv.get(&alice, "k").unwrap().unwrap()[..], b"again");
    kv.set(&alice, "max", u64::MAX.to_string().as_bytes())
        .unwrap();
    assert!(matches!(
        kv.increment(&alice, "max", 1),
        Err(KvError::Overflow)
    ));

    // Pages of keys, each subject its own.
    let many = space("paged", "carol");
    for i in 0..(LIST_PAGE + 5) {
        kv.set(&many, &format!("k{i:03}"), b"v").unwrap();
    }
    let (first, next) = kv.list(&many, 0).unwrap();
    assert_eq!(first.len(), LIST_PAGE);
    let (rest, end) = kv.list(&many, next.unwrap()).unwrap();
    assert_eq!(rest.len(), 5);
    assert!(end.is_none());
    let mut all: Vec<String> = first.into_iter().chain(rest).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), LIST_PAGE + 5);
    assert!(kv.list(&space("paged", "dave"), 0).unwrap().0.is_empty());

    // Expiry (T20): hidden at once, swept, and an expired counter
    // restarts from zero.
    let mut short = space("s", "alice");
    short.retention_ms = Some(-1);
    kv.set(&short, "gone", b"x").unwrap();
    assert!(kv.get(&alice, "gone").unwrap().is_none());
    assert!(!kv.list(&alice, 0).unwrap().0.contains(&"gone".to_string()));
    kv.set(&short, "old-counter", b"41").unwrap();
    assert_eq!(kv.increment(&alice, "old-counter", 1).unwrap(), 1);
    assert_eq!(kv.sweep().unwrap(), 1);
    assert_eq!(kv.sweep().unwrap(), 0);

    // What an operator sees, then an erasure (T20): keys first, rows next.
    let holdings = kv::subject_holdings(keyring.key_store(), kv.backend(), "alice").unwrap();
    assert_eq!(holdings, (1, 4));
    let backend: &dyn KvBackend = kv.backend();
    assert_eq!(kv::subject_stores(backend, "alice").unwrap(), ["s"]);
    let like = |s: &str| s.eq_ignore_ascii_case("ALICE");
    let found = kv::find_subjects(keyring.key_store(), backend, &like, 20).unwrap();
    assert_eq!(found, ["alice"]);
    let exported = kv.export_subject("alice", &["s".into()]).unwrap();
    assert_eq!(exported.len(), 4);
    let erased = kv.erase_subject("alice").unwrap();
    assert_eq!((erased.keys_destroyed, erased.records_deleted), (1, 4));
    assert!(kv.get(&alice, "k").unwrap().is_none());
    assert_eq!(&kv.get(&bob, "k").unwrap().unwrap()[..], b"bob-value");
    assert_eq!(&kv.get(&shared, "k").unwrap().unwrap()[..], b"shared-value");
}

#[test]
fn embedded_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(&StateConfig::Embedded {
        dir: dir.path().join("state"),
    })
    .unwrap();
    conformance(state.kv().unwrap(), dir.path());
}

#[test]
fn postgres_backend_conforms() {
    let db = PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    // Opened where every backend is: `State::open`.
    let state = State::open(&StateConfig::Postgres {
        dir: dir.path().join("state"),
        postgres: db.config(),
    })
    .unwrap();
    conformance(state.kv().unwrap(), dir.path());
    // Nothing of it in the embedded database.
    let rows: i64 = state
        .store()
        .connect()
        .unwrap()
        .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

/// Two backends (two nodes) on one database: a counter stays exact under
/// increments from both at once, and what one writes the other reads.
#[test]
fn postgres_nodes_share_records_and_counters() {
    let db = PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring(dir.path());
    let nodes: Vec<Arc<Kv>> = (0..2)
        .map(|_| {
            Arc::new(Kv::new(
                Arc::new(kv::PostgresKv::open(&db.config()).unwrap()),
                ring.clone(),
            ))
        })
        .collect();
    let alice = space("s", "alice");
    nodes[0].set(&alice, "k", b"from node 0").unwrap();
    assert_eq!(
        &nodes[1].get(&alice, "k").unwrap().unwrap()[..],
        b"from node 0"
    );
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let node = nodes[i % 2].clone();
            let alice = alice.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    node.increment(&alice, "hits", 1).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(nodes[1].increment(&alice, "hits", 0).unwrap(), 100);
}

/// T13: the database itself refuses another subject's rows. Confined as
/// the call role with bob's subject, a query with no subject predicate at
/// all sees none of alice's rows, cannot change them, cannot write a row
/// as alice; and a transaction that set no subject sees nothing, not even
/// the app-wide rows (subject "").
#[test]
fn postgres_row_level_security_refuses_another_subjects_rows() {
    let db = PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::new(
        Arc::new(kv::PostgresKv::open(&db.config()).unwrap()),
        keyring(dir.path()),
    );
    kv.set(&space("s", "alice"), "k", b"alice-value").unwrap();
    kv.set(&space("s", ""), "k", b"shared-value").unwrap();
    let client = db.client();
    let role = format!("{}_kv_call", db.schema);
    let table = format!("{}.kv", db.schema);
    let confined = |subject: Option<&str>, statement: &str| {
        let mut sql = format!("BEGIN; SET LOCAL ROLE {role}; ");
        if let Some(subject) = subject {
            // Test-owned literals only (no quote in them).
            sql.push_str(&format!(
                "SELECT set_config('bulkhead.subject', 's:{subject}', true); "
            ));
        }
        sql.push_str(statement);
        let result = db.admin.block_on(client.simple_query(&sql));
        db.admin.block_on(client.batch_execute("ROLLBACK")).unwrap();
        result
    };
    let count = |subject: Option<&str>| -> String {
        let messages = confined(subject, &format!("SELECT count(*) FROM {table}")).unwrap();
        // The last row: the count (set_config answers a row first).
        messages
            .iter()
            .rev()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(count(Some("alice")), "1");
    assert_eq!(count(Some("")), "1");
    assert_eq!(count(Some("bob")), "0", "bob sees none of alice's rows");
    // Set once in the session, then not: '' is no subject's (T13).
    assert_eq!(count(None), "0", "no subject set: no rows at all");
    // Bob's UPDATE and DELETE with no predicate touch nothing.
    let touched = |statement: &str| {
        confined(Some("bob"), statement)
            .unwrap()
            .iter()
            .rev()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        touched(&format!("UPDATE {table} SET value_sealed = ''::bytea")),
        0
    );
    assert_eq!(touched(&format!("DELETE FROM {table}")), 0);
    // Bob cannot write a row as alice: the policy's check refuses it.
    let forged = confined(
        Some("bob"),
        &format!(
            "INSERT INTO {table} (store, subject, key_id, key_sealed, value_sealed, updated_ms) VALUES ('s', 'alice', '\\x00'::bytea, ''::bytea, ''::bytea, 0)"
        ),
    );
    let refused = forged.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused}"
    );
    // Alice's value is untouched.
    assert_eq!(
        &kv.get(&space("s", "alice"), "k").unwrap().unwrap()[..],
        b"alice-value"
    );
}

/// T16 (second outside review of issue 16): a database hardened for SQL
/// stores keeps `current_setting` for its catalog role's members, and the
/// key-value policy reads the subject with it. A second app's key-value
/// store, first opened after the hardening, makes its call role a member
/// and works, subject scope and all (it was refused by the database).
#[test]
fn a_key_value_store_opened_after_the_hardening_works_t16() {
    let db = PgDatabase::create();
    let pg = bulkhead_store::pg::Pg::open(&db.config()).unwrap();
    let dek = bulkhead_store::crypto::DataKey::ephemeral().unwrap();
    bulkhead_store::sql::postgres::PgSqlStore::deploy(pg, "hardens", &dek, &[]).unwrap();
    let later = format!("{}_later", db.schema);
    let dir = tempfile::tempdir().unwrap();
    let state = State::open(&StateConfig::Postgres {
        dir: dir.path().join("state"),
        postgres: bulkhead_store::kv::PgConfig {
            url: db.url().into(),
            schema: later.clone(),
        },
    })
    .unwrap();
    let kv = Kv::new(state.kv().unwrap(), keyring(dir.path()));
    let (alice, bob) = (space("s", "alice"), space("s", "bob"));
    kv.set(&alice, "k", b"alice-value").unwrap();
    assert_eq!(&kv.get(&alice, "k").unwrap().unwrap()[..], b"alice-value");
    assert!(kv.get(&bob, "k").unwrap().is_none());
    // Its call role joined the catalog role.
    let catalog = bulkhead_store::sql::postgres::catalog_role(&db.name);
    let members = db.query(&format!(
        "SELECT pg_has_role('{later}_kv_call', '{catalog}', 'MEMBER')"
    ));
    assert_eq!(members[0][0].as_deref(), Some("t"));
}
