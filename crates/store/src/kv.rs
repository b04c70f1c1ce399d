//! The key-value backend (T13, T15, T20): records in the `kv` table of the
//! state database, keys and values sealed under a data key per store, or per
//! subject for a subject-scoped store.
//!
//! - A record's subject is its own column, fixed by the host from the
//!   verified identity; a guest names only the key, so it cannot reach
//!   another subject's rows by forging a key prefix.
//! - Lookups use a keyed hash of the key (`key_id`); the key itself is
//!   stored sealed, like the value. Both are bound by associated data to
//!   (store, subject, key) so rows cannot be swapped.
//! - Retention: `expires_ms` is set on write; reads never return an expired
//!   row and [`Kv::sweep`] deletes them.

use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use crate::crypto::{Aad, CryptoError, DataKey, Destroyed, KeyStore, Keyring};
use crate::{Store, StoreError, now_ms};

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

/// The key-value backend of one app environment.
pub struct Kv {
    conn: Mutex<Connection>,
    keyring: Arc<Keyring>,
}

impl Kv {
    pub fn open(store: &Store, keyring: Arc<Keyring>) -> Result<Self, KvError> {
        Ok(Self {
            conn: Mutex::new(store.connect()?),
            keyring,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The value of `key`, unless absent or expired.
    pub fn get(&self, space: &Space, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, KvError> {
        let conn = self.conn();
        let Some(dek) = self.dek(space, false)? else {
            return Ok(None);
        };
        let sealed: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value_sealed FROM kv WHERE store = ?1 AND subject = ?2 AND key_id = ?3 AND (expires_ms IS NULL OR expires_ms > ?4)",
                params![space.store, space.subject, Self::key_id(&dek, key), now_ms()],
                |row| row.get(0),
            )
            .optional()?;
        match sealed {
            Some(blob) => Ok(Some(dek.open(&Self::value_aad(space, key), &blob)?)),
            None => Ok(None),
        }
    }

    pub fn exists(&self, space: &Space, key: &str) -> Result<bool, KvError> {
        Ok(self.get(space, key)?.is_some())
    }

    /// Write `value` under `key`, restarting its retention.
    pub fn set(&self, space: &Space, key: &str, value: &[u8]) -> Result<(), KvError> {
        let conn = self.conn();
        Self::set_in(&conn, &self.dek_or_create(space)?, space, key, value)
    }

    fn dek_or_create(&self, space: &Space) -> Result<DataKey, KvError> {
        self.dek(space, true)?
            .ok_or(KvError::Crypto(CryptoError::Unwrap))
    }

    fn set_in(
        conn: &Connection,
        dek: &DataKey,
        space: &Space,
        key: &str,
        value: &[u8],
    ) -> Result<(), KvError> {
        let key_id = Self::key_id(dek, key);
        let key_sealed = dek.seal(&Self::key_aad(space, &key_id), key.as_bytes())?;
        let value_sealed = dek.seal(&Self::value_aad(space, key), value)?;
        let now = now_ms();
        let expires = space.retention_ms.map(|r| now.saturating_add(r));
        conn.execute(
            "INSERT INTO kv (store, subject, key_id, key_sealed, value_sealed, updated_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (store, subject, key_id) DO UPDATE SET key_sealed = excluded.key_sealed, value_sealed = excluded.value_sealed, updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms",
            params![space.store, space.subject, key_id, key_sealed, value_sealed, now, expires],
        )?;
        Ok(())
    }

    /// Delete `key` (no error when absent).
    pub fn delete(&self, space: &Space, key: &str) -> Result<(), KvError> {
        let conn = self.conn();
        let Some(dek) = self.dek(space, false)? else {
            return Ok(());
        };
        conn.execute(
            "DELETE FROM kv WHERE store = ?1 AND subject = ?2 AND key_id = ?3",
            params![space.store, space.subject, Self::key_id(&dek, key)],
        )?;
        Ok(())
    }

    /// One page of live keys from `offset`, and the next page's offset.
    pub fn list(&self, space: &Space, offset: u64) -> Result<(Vec<String>, Option<u64>), KvError> {
        let conn = self.conn();
        let Some(dek) = self.dek(space, false)? else {
            return Ok((Vec::new(), None));
        };
        let mut stmt = conn.prepare(
            "SELECT key_id, key_sealed FROM kv WHERE store = ?1 AND subject = ?2 AND (expires_ms IS NULL OR expires_ms > ?3)
             ORDER BY key_id LIMIT ?4 OFFSET ?5",
        )?;
        let limit = i64::try_from(LIST_PAGE + 1).unwrap_or(i64::MAX);
        let offset_sql = i64::try_from(offset).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(
                params![space.store, space.subject, now_ms(), limit, offset_sql],
                |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
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
        let mut conn = self.conn();
        let dek = self.dek_or_create(space)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let sealed: Option<Vec<u8>> = tx
            .query_row(
                "SELECT value_sealed FROM kv WHERE store = ?1 AND subject = ?2 AND key_id = ?3 AND (expires_ms IS NULL OR expires_ms > ?4)",
                params![space.store, space.subject, Self::key_id(&dek, key), now_ms()],
                |row| row.get(0),
            )
            .optional()?;
        let current = match sealed {
            None => 0,
            Some(blob) => {
                let plain = dek.open(&Self::value_aad(space, key), &blob)?;
                std::str::from_utf8(&plain)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or(KvError::NotACounter)?
            }
        };
        let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
        Self::set_in(&tx, &dek, space, key, next.to_string().as_bytes())?;
        tx.commit()?;
        Ok(next)
    }

    /// Delete every expired record; returns how many.
    pub fn sweep(&self) -> Result<usize, KvError> {
        Ok(self.conn().execute(
            "DELETE FROM kv WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
            params![now_ms()],
        )?)
    }

    /// Crypto-shred `subject`: destroy its data keys, then delete its rows
    /// in every subject-scoped store.
    pub fn erase_subject(&self, subject: &str) -> Result<Erased, KvError> {
        erase_subject(self.keyring.key_store(), &mut self.conn(), subject)
    }

    /// Every live record of `subject` in the named stores, decrypted.
    pub fn export_subject(
        &self,
        subject: &str,
        stores: &[String],
    ) -> Result<Vec<ExportedRecord>, KvError> {
        let conn = self.conn();
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
            let mut stmt = conn.prepare(
                "SELECT key_id, key_sealed, value_sealed, updated_ms, expires_ms FROM kv
                 WHERE store = ?1 AND subject = ?2 AND (expires_ms IS NULL OR expires_ms > ?3) ORDER BY key_id",
            )?;
            let rows = stmt
                .query_map(params![store, subject, now_ms()], |row| {
                    Ok((
                        row.get::<_, Vec<u8>>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, i64>(3)?,
                        row.get::<_, Option<i64>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (key_id, key_sealed, value_sealed, updated_ms, expires_ms) in rows {
                let key = dek.open(&Self::key_aad(&space, &key_id), &key_sealed)?;
                let key = String::from_utf8_lossy(&key).into_owned();
                let value = dek.open(&Self::value_aad(&space, &key), &value_sealed)?;
                out.push(ExportedRecord {
                    store: store.clone(),
                    key,
                    value,
                    updated_ms,
                    expires_ms,
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
    conn: &Connection,
    subject: &str,
) -> Result<(usize, usize), KvError> {
    let data_keys = keys.count_subject(OWNER, subject)?;
    let rows: i64 = conn.query_row(
        "SELECT count(*) FROM kv WHERE subject = ?1",
        params![subject],
        |row| row.get(0),
    )?;
    Ok((data_keys, usize::try_from(rows).unwrap_or(0)))
}

/// The stores, sorted, holding rows of `subject` (read-only), whether or
/// not the manifest still declares them subject-scoped: a store renamed or
/// made app-wide keeps its rows under the old name, and an export must not
/// leave them out (T20).
pub fn subject_stores(conn: &Connection, subject: &str) -> Result<Vec<String>, KvError> {
    let mut statement =
        conn.prepare("SELECT DISTINCT store FROM kv WHERE subject = ?1 ORDER BY store")?;
    let stores = statement
        .query_map(params![subject], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(stores)
}

/// The subjects holding rows or data keys that `keep` accepts, sorted, at
/// most `limit` of them (read-only): the close matches named to an
/// operator whose subject holds nothing (T20).
pub fn find_subjects(
    keys: &KeyStore,
    conn: &Connection,
    keep: &dyn Fn(&str) -> bool,
    limit: usize,
) -> Result<Vec<String>, KvError> {
    let mut found = std::collections::BTreeSet::new();
    let mut statement = conn.prepare("SELECT DISTINCT subject FROM kv WHERE subject <> ''")?;
    let mut rows = statement.query([])?;
    while found.len() < limit {
        let Some(row) = rows.next()? else { break };
        let subject: String = row.get(0)?;
        if keep(&subject) {
            found.insert(subject);
        }
    }
    found.extend(keys.subjects(OWNER, keep, limit)?);
    Ok(found.into_iter().take(limit).collect())
}

/// Crypto-shred `subject` (see [`Kv::erase_subject`]); needs no master
/// key: the wrapped keys and the rows are deleted, not read.
/// The keys go first: once they are destroyed the rows are unreadable
/// even if deleting them fails or a backup holds them.
pub fn erase_subject(
    keys: &KeyStore,
    conn: &mut Connection,
    subject: &str,
) -> Result<Erased, KvError> {
    let destroyed = destroy_subject_keys(keys, subject)?;
    let rows = delete_subject_records(conn, subject)?;
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

/// The second step: delete `subject`'s rows in `state.db`, overwritten
/// (`secure_delete`). `conn` may be a transaction that also appends the
/// `data.erased` record (T09, issue 19).
pub fn delete_subject_records(conn: &Connection, subject: &str) -> Result<usize, KvError> {
    if subject.is_empty() {
        return Ok(0);
    }
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn.execute("DELETE FROM kv WHERE subject = ?1", params![subject])?)
}

/// After the rows are deleted and committed: move the WAL into the
/// database and truncate it. Best effort: a running server's readers may
/// hold the WAL a while; what stays there is sealed under keys destroyed
/// before.
pub fn checkpoint_after_erase(conn: &Connection) {
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
        let holdings = |subject| subject_holdings(kv.keyring.key_store(), &kv.conn(), subject);
        assert_eq!(holdings("alice").unwrap(), (1, 2));
        assert_eq!(holdings("Alice").unwrap(), (0, 0));
        let like_alice = |s: &str| s.eq_ignore_ascii_case("ALICE");
        let found = find_subjects(kv.keyring.key_store(), &kv.conn(), &like_alice, 20);
        assert_eq!(found.unwrap(), ["alice"]);
        assert_eq!(subject_stores(&kv.conn(), "alice").unwrap(), ["s"]);
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
