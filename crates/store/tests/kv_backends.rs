//! One conformance test for every key-value backend (issue 16): the same
//! body runs against each, through [`Kv`] (sealing above the trait), so a
//! backend that differs in subject scope (T13), expiry (T20), paging,
//! atomic counters or erasure fails here.

use std::sync::Arc;

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
