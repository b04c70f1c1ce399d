//! Key-value state (T13, T15, T20): [`Kv`] seals keys and values under a
//! data key per store, or per subject for a subject-scoped store, *before*
//! they reach a [`KvBackend`] (the `StoreManager` of Spin's key-value
//! factor): the backend only ever holds sealed blobs, keyed by (store,
//! subject, keyed hash of the key). SQLite (`sqlite.rs`, the `kv` table of
//! the state database) is the embedded backend.
//!
//! - A record's subject is its own column, fixed by the host from the
//!   verified identity; a guest names only the key, so it cannot reach
//!   another subject's rows by forging a key prefix.
//! - Lookups use a keyed hash of the key (`key_id`); the key itself is
//!   stored sealed, like the value. Both are bound by associated data to
//!   (store, subject, key) so rows cannot be swapped.
//! - Retention: `expires_ms` is set on write; reads never return an expired
//!   row and [`Kv::sweep`] deletes them.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::crypto::{Aad, CryptoError, DataKey, Destroyed, KeyStore, Keyring};
use crate::{Store, StoreError, now_ms};

mod postgres;
mod sqlite;

pub use postgres::{PgConfig, PostgresKv, valid_schema};
pub use sqlite::SqliteKv;

const OWNER: &str = "kv";
/// Most keys one `list` page returns.
pub const LIST_PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("key-value database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A backend other than the embedded one failed (its own error type,
    /// kept as the source; never holds a key or a value).
    #[error("key-value backend: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    #[error("the stored value is not a decimal counter")]
    NotACounter,
    #[error("counter overflow")]
    Overflow,
}

/// Where a call's records live: one store and, for a subject-scoped
/// store, one subject (`""` for an app-wide store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub store: String,
    pub subject: String,
    /// Retention of records written now, in milliseconds.
    pub retention_ms: Option<i64>,
}

/// One record of a subject, for export.
#[derive(Debug, Clone)]
pub struct ExportedRecord {
    pub store: String,
    pub key: String,
    pub value: Zeroizing<Vec<u8>>,
    pub updated_ms: i64,
    pub expires_ms: Option<i64>,
}

/// The key a backend sees: the subject is part of it, fixed by the host
/// from the verified identity, never a prefix a guest could forge (T13).
/// `key_id` is a keyed hash of the guest's key; the key itself only
/// reaches the backend sealed.
#[derive(Debug, Clone, Copy)]
pub struct RecordKey<'a> {
    pub store: &'a str,
    pub subject: &'a str,
    pub key_id: &'a [u8],
}

/// A record as written: key and value sealed by [`Kv`].
#[derive(Debug, Clone)]
pub struct Sealed {
    pub key_sealed: Vec<u8>,
    pub value_sealed: Vec<u8>,
    pub updated_ms: i64,
    pub expires_ms: Option<i64>,
}

/// A record as stored, with its key id (export).
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub key_id: Vec<u8>,
    pub record: Sealed,
}

/// A change made atomically by [`KvBackend::update`]: given the live
/// sealed value (if any), the record to write.
pub type Change<'a> = dyn FnMut(Option<&[u8]>) -> Result<Sealed, KvError> + 'a;

/// Where sealed key-value records are kept. Every read honours expiry
/// (`now_ms`): an expired record is absent whether or not it was swept.
/// One `dyn` call per operation; implementations are blocking (the runtime
/// calls them off its async threads). No `Sync` bound: a single SQLite
/// connection is one (inside an operator's audited transaction); what a
/// server shares is a [`SharedKv`].
pub trait KvBackend {
    /// The sealed value at `key`, unless absent or expired.
    fn get(&self, key: &RecordKey<'_>, now_ms: i64) -> Result<Option<Vec<u8>>, KvError>;
    /// Insert or replace the record at `key`.
    fn put(&self, key: &RecordKey<'_>, record: &Sealed) -> Result<(), KvError>;
    /// Delete the record at `key` (no error when absent).
    fn delete(&self, key: &RecordKey<'_>) -> Result<(), KvError>;
    /// Up to `limit` live (key id, sealed key) pairs of (store, subject)
    /// from `offset`, ordered by key id.
    fn list(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
        limit: usize,
        offset: u64,
    ) -> Result<KeyPage, KvError>;
    /// Read the live value at `key` and write what `change` returns, as
    /// one atomic step against every other writer (nodes included); an
    /// error from `change` writes nothing.
    fn update(
        &self,
        key: &RecordKey<'_>,
        now_ms: i64,
        change: &mut Change<'_>,
    ) -> Result<(), KvError>;
    /// Every live record of (store, subject), ordered by key id.
    fn records(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Vec<StoredRecord>, KvError>;
    /// Delete every record expired at `now_ms`; returns how many.
    fn sweep(&self, now_ms: i64) -> Result<usize, KvError>;
    /// How many rows `subject` holds, expired or not.
    fn subject_rows(&self, subject: &str) -> Result<usize, KvError>;
    /// The stores, sorted, holding rows of `subject`.
    fn subject_stores(&self, subject: &str) -> Result<Vec<String>, KvError>;
    /// Up to `limit` non-empty subjects holding rows that `keep` accepts.
    fn subjects(&self, keep: &dyn Fn(&str) -> bool, limit: usize) -> Result<Vec<String>, KvError>;
    /// Delete every row of `subject` (overwritten where the engine can);
    /// returns how many.
    fn delete_subject(&self, subject: &str) -> Result<usize, KvError>;
    /// After an erasure has committed: push deleted rows out of logs the
    /// engine keeps beside its data, where it can (best effort).
    fn after_erase(&self) {}
}

/// (key id, sealed key) pairs: one page of [`KvBackend::list`].
pub type KeyPage = Vec<(Vec<u8>, Vec<u8>)>;

/// A backend the server's threads share.
pub type SharedKv = Arc<dyn KvBackend + Send + Sync>;

/// The key-value capability's state for one app environment: the keyring
/// that seals, and the backend that keeps the sealed records.
pub struct Kv {
    backend: SharedKv,
    keyring: Arc<Keyring>,
}

impl Kv {
    /// The embedded backend: the `kv` table of `store`'s database.
    pub fn open(store: &Store, keyring: Arc<Keyring>) -> Result<Self, KvError> {
        Ok(Self::new(Arc::new(SqliteKv::open(store)?), keyring))
    }

    pub fn new(backend: SharedKv, keyring: Arc<Keyring>) -> Self {
        Self { backend, keyring }
    }

    pub fn backend(&self) -> &dyn KvBackend {
        &*self.backend
    }

    fn dek(&self, space: &Space, create: bool) -> Result<Option<DataKey>, KvError> {
        Ok(self
            .keyring
            .data_key(OWNER, &space.store, &space.subject, create)?)
    }

    fn value_aad(space: &Space, key: &str) -> Aad {
        Aad::new(&[
            b"kv-value",
            space.store.as_bytes(),
            space.subject.as_bytes(),
            key.as_bytes(),
        ])
    }

    fn key_aad(space: &Space, key_id: &[u8]) -> Aad {
        Aad::new(&[
            b"kv-key",
            space.store.as_bytes(),
            space.subject.as_bytes(),
            key_id,
        ])
    }

    fn key_id(dek: &DataKey, key: &str) -> Vec<u8> {
        dek.lookup_id(b"kv-key", key.as_bytes())
    }

    fn record_key<'a>(space: &'a Space, key_id: &'a [u8]) -> RecordKey<'a> {
        RecordKey {
            store: &space.store,
            subject: &space.subject,
            key_id,
        }
    }

    /// The value of `key`, unless absent or expired.
    pub fn get(&self, space: &Space, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, KvError> {
        let Some(dek) = self.dek(space, false)? else {
            return Ok(None);
        };
        let key_id = Self::key_id(&dek, key);
        match self
            .backend
            .get(&Self::record_key(space, &key_id), now_ms())?
        {
            Some(blob) => Ok(Some(dek.open(&Self::value_aad(space, key), &blob)?)),
            None => Ok(None),
        }
    }

    pub fn exists(&self, space: &Space, key: &str) -> Result<bool, KvError> {
        Ok(self.get(space, key)?.is_some())
    }

    /// Write `value` under `key`, restarting its retention.
    pub fn set(&self, space: &Space, key: &str, value: &[u8]) -> Result<(), KvError> {
        let dek = self.dek_or_create(space)?;
        let key_id = Self::key_id(&dek, key);
        let record = Self::seal(&dek, space, key, &key_id, value)?;
        self.backend.put(&Self::record_key(space, &key_id), &record)
    }

    fn dek_or_create(&self, space: &Space) -> Result<DataKey, KvError> {
        self.dek(space, true)?
            .ok_or(KvError::Crypto(CryptoError::Unwrap))
    }

    fn seal(
        dek: &DataKey,
        space: &Space,
        key: &str,
        key_id: &[u8],
        value: &[u8],
    ) -> Result<Sealed, KvError> {
        let now = now_ms();
        Ok(Sealed {
            key_sealed: dek.seal(&Self::key_aad(space, key_id), key.as_bytes())?,
            value_sealed: dek.seal(&Self::value_aad(space, key), value)?,
            updated_ms: now,
            expires_ms: space.retention_ms.map(|r| now.saturating_add(r)),
        })
    }

    /// Delete `key` (no error when absent).
    pub fn delete(&self, space: &Space, key: &str) -> Result<(), KvError> {
        let Some(dek) = self.dek(space, false)? else {
            return Ok(());
        };
        let key_id = Self::key_id(&dek, key);
        self.backend.delete(&Self::record_key(space, &key_id))
    }

    /// One page of live keys from `offset`, and the next page's offset.
    pub fn list(&self, space: &Space, offset: u64) -> Result<(Vec<String>, Option<u64>), KvError> {
        let Some(dek) = self.dek(space, false)? else {
            return Ok((Vec::new(), None));
        };
        let rows = self.backend.list(
            &space.store,
            &space.subject,
            now_ms(),
            LIST_PAGE + 1,
            offset,
        )?;
        let more = rows.len() > LIST_PAGE;
        let mut keys = Vec::new();
        for (key_id, sealed) in rows.into_iter().take(LIST_PAGE) {
            let key = dek.open(&Self::key_aad(space, &key_id), &sealed)?;
            keys.push(String::from_utf8_lossy(&key).into_owned());
        }
        let next = more.then(|| offset.saturating_add(LIST_PAGE as u64));
        Ok((keys, next))
    }

    /// Add `delta` to the decimal counter at `key` (absent: 0), atomically.
    pub fn increment(&self, space: &Space, key: &str, delta: u64) -> Result<u64, KvError> {
        let dek = self.dek_or_create(space)?;
        let key_id = Self::key_id(&dek, key);
        let mut next = 0;
        self.backend
            .update(&Self::record_key(space, &key_id), now_ms(), &mut |sealed| {
                let current = match sealed {
                    None => 0,
                    Some(blob) => {
                        let plain = dek.open(&Self::value_aad(space, key), blob)?;
                        std::str::from_utf8(&plain)
                            .ok()
                            .and_then(|t| t.parse::<u64>().ok())
                            .ok_or(KvError::NotACounter)?
                    }
                };
                next = current.checked_add(delta).ok_or(KvError::Overflow)?;
                Self::seal(&dek, space, key, &key_id, next.to_string().as_bytes())
            })?;
        Ok(next)
    }

    /// Delete every expired record; returns how many.
    pub fn sweep(&self) -> Result<usize, KvError> {
        self.backend.sweep(now_ms())
    }

    /// Crypto-shred `subject`: destroy its data keys, then delete its rows
    /// in every subject-scoped store.
    pub fn erase_subject(&self, subject: &str) -> Result<Erased, KvError> {
        let destroyed = destroy_subject_keys(self.keyring.key_store(), subject)?;
        let rows = delete_subject_records(&*self.backend, subject)?;
        self.backend.after_erase();
        Ok(Erased {
            keys_destroyed: destroyed.keys,
            records_deleted: rows,
            keys_checkpointed: destroyed.checkpointed,
        })
    }

    /// Every live record of `subject` in the named stores, decrypted.
    pub fn export_subject(
        &self,
        subject: &str,
        stores: &[String],
    ) -> Result<Vec<ExportedRecord>, KvError> {
        let mut out = Vec::new();
        for store in stores {
            let space = Space {
                store: store.clone(),
                subject: subject.to_string(),
                retention_ms: None,
            };
            let Some(dek) = self.dek(&space, false)? else {
                continue;
            };
            for StoredRecord { key_id, record } in self.backend.records(store, subject, now_ms())? {
                let key = dek.open(&Self::key_aad(&space, &key_id), &record.key_sealed)?;
                let key = String::from_utf8_lossy(&key).into_owned();
                let value = dek.open(&Self::value_aad(&space, &key), &record.value_sealed)?;
                out.push(ExportedRecord {
                    store: store.clone(),
                    key,
                    value,
                    updated_ms: record.updated_ms,
                    expires_ms: record.expires_ms,
                });
            }
        }
        Ok(out)
    }
}

/// What `subject` holds (read-only): (data keys, rows, expired or not)
/// in the subject-scoped stores, what [`erase_subject`] would destroy.
/// An erasure or export of a subject holding nothing is a mistyped
/// subject, never a success (T20).
pub fn subject_holdings(
    keys: &KeyStore,
    backend: &dyn KvBackend,
    subject: &str,
) -> Result<(usize, usize), KvError> {
    let data_keys = keys.count_subject(OWNER, subject)?;
    Ok((data_keys, backend.subject_rows(subject)?))
}

/// The stores, sorted, holding rows of `subject` (read-only), whether or
/// not the manifest still declares them subject-scoped: a store renamed or
/// made app-wide keeps its rows under the old name, and an export must not
/// leave them out (T20).
pub fn subject_stores(backend: &dyn KvBackend, subject: &str) -> Result<Vec<String>, KvError> {
    backend.subject_stores(subject)
}

/// The subjects holding rows or data keys that `keep` accepts, sorted, at
/// most `limit` of them (read-only): the close matches named to an
/// operator whose subject holds nothing (T20).
pub fn find_subjects(
    keys: &KeyStore,
    backend: &dyn KvBackend,
    keep: &dyn Fn(&str) -> bool,
    limit: usize,
) -> Result<Vec<String>, KvError> {
    let mut found: std::collections::BTreeSet<String> =
        backend.subjects(keep, limit)?.into_iter().collect();
    found.extend(keys.subjects(OWNER, keep, limit)?);
    Ok(found.into_iter().take(limit).collect())
}

/// Crypto-shred `subject` (see [`Kv::erase_subject`]) in the embedded
/// store; needs no master key: the wrapped keys and the rows are deleted,
/// not read. The keys go first: once they are destroyed the rows are
/// unreadable even if deleting them fails or a backup holds them.
pub fn erase_subject(
    keys: &KeyStore,
    conn: &mut rusqlite::Connection,
    subject: &str,
) -> Result<Erased, KvError> {
    let destroyed = destroy_subject_keys(keys, subject)?;
    let rows = delete_subject_records(&*conn, subject)?;
    checkpoint_after_erase(conn);
    Ok(Erased {
        keys_destroyed: destroyed.keys,
        records_deleted: rows,
        keys_checkpointed: destroyed.checkpointed,
    })
}

/// The first step of an erasure: destroy `subject`'s data keys in
/// `keys.db` (nothing for the empty subject, the app-wide stores').
pub fn destroy_subject_keys(keys: &KeyStore, subject: &str) -> Result<Destroyed, KvError> {
    if subject.is_empty() {
        return Ok(Destroyed {
            keys: 0,
            checkpointed: true,
        });
    }
    Ok(keys.destroy_subject(OWNER, subject)?)
}

/// The second step: delete `subject`'s rows. On the embedded backend
/// `backend` may be a transaction that also appends the `data.erased`
/// record (T09, issue 19); rows are overwritten (`secure_delete`).
pub fn delete_subject_records(backend: &dyn KvBackend, subject: &str) -> Result<usize, KvError> {
    if subject.is_empty() {
        return Ok(0);
    }
    backend.delete_subject(subject)
}

/// After the rows are deleted and committed: move the WAL into the
/// database and truncate it. Best effort: a running server's readers may
/// hold the WAL a while; what stays there is sealed under keys destroyed
/// before.
pub fn checkpoint_after_erase(conn: &rusqlite::Connection) {
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

/// What an erasure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erased {
    pub keys_destroyed: usize,
    pub records_deleted: usize,
    /// Whether `keys.db-wal` was truncated: if not, the destroyed wrapped
    /// keys may stay in it until a later checkpoint (T20).
    pub keys_checkpointed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyStore, MasterKey};

    fn kv(dir: &std::path::Path) -> Kv {
        let store = Store::open(dir).unwrap();
        let path = dir.join("master");
        crate::files::write_private(&path, &[&[3u8; 32]]).unwrap();
        let ring = Arc::new(Keyring::new(
            MasterKey::from_file(&path).unwrap(),
            KeyStore::open(dir).unwrap(),
        ));
        Kv::open(&store, ring).unwrap()
    }

    fn space(store: &str, subject: &str) -> Space {
        Space {
            store: store.into(),
            subject: subject.into(),
            retention_ms: None,
        }
    }

    #[test]
    fn subjects_are_separate_and_erasable() {
        let dir = tempfile::tempdir().unwrap();
        let kv = kv(dir.path());
        let (alice, bob) = (space("s", "alice"), space("s", "bob"));
        kv.set(&alice, "k", b"alice-value").unwrap();
        assert_eq!(&kv.get(&alice, "k").unwrap().unwrap()[..], b"alice-value");
        assert!(kv.get(&bob, "k").unwrap().is_none());
        assert!(kv.list(&bob, 0).unwrap().0.is_empty());
        kv.set(&bob, "k", b"bob-value").unwrap();
        assert_eq!(&kv.get(&alice, "k").unwrap().unwrap()[..], b"alice-value");
        assert_eq!(kv.list(&alice, 0).unwrap().0, ["k"]);
        assert_eq!(kv.increment(&alice, "n", 2).unwrap(), 2);
        assert_eq!(kv.increment(&alice, "n", 3).unwrap(), 5);
        assert!(matches!(
            kv.increment(&alice, "k", 1),
            Err(KvError::NotACounter)
        ));
        let exported = kv.export_subject("alice", &["s".into()]).unwrap();
        assert_eq!(exported.len(), 2);
        // What an erase would destroy, and the close matches, read-only.
        let holdings = |subject| subject_holdings(kv.keyring.key_store(), kv.backend(), subject);
        assert_eq!(holdings("alice").unwrap(), (1, 2));
        assert_eq!(holdings("Alice").unwrap(), (0, 0));
        let like_alice = |s: &str| s.eq_ignore_ascii_case("ALICE");
        let found = find_subjects(kv.keyring.key_store(), kv.backend(), &like_alice, 20);
        assert_eq!(found.unwrap(), ["alice"]);
        assert_eq!(subject_stores(kv.backend(), "alice").unwrap(), ["s"]);
        let erased = kv.erase_subject("alice").unwrap();
        assert_eq!((erased.keys_destroyed, erased.records_deleted), (1, 2));
        assert_eq!(holdings("alice").unwrap(), (0, 0));
        assert!(kv.get(&alice, "k").unwrap().is_none());
        assert_eq!(&kv.get(&bob, "k").unwrap().unwrap()[..], b"bob-value");
        kv.delete(&bob, "k").unwrap();
        assert!(!kv.exists(&bob, "k").unwrap());
    }

    #[test]
    fn expired_records_are_hidden_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let kv = kv(dir.path());
        let mut short = space("s", "");
        short.retention_ms = Some(-1);
        kv.set(&short, "gone", b"x").unwrap();
        assert!(kv.get(&short, "gone").unwrap().is_none());
        assert!(kv.list(&short, 0).unwrap().0.is_empty());
        assert_eq!(kv.sweep().unwrap(), 1);
    }

    #[test]
    fn list_pages() {
        let dir = tempfile::tempdir().unwrap();
        let kv = kv(dir.path());
        let s = space("s", "");
        for i in 0..(LIST_PAGE + 5) {
            kv.set(&s, &format!("k{i}"), b"v").unwrap();
        }
        let (first, next) = kv.list(&s, 0).unwrap();
        assert_eq!(first.len(), LIST_PAGE);
        let (rest, end) = kv.list(&s, next.unwrap()).unwrap();
        assert_eq!(rest.len(), 5);
        assert!(end.is_none());
    }
}
