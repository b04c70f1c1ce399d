//! The embedded key-value backend: the `kv` table of the state database
//! (migration 4). A [`rusqlite::Connection`] is itself a [`KvBackend`], so
//! an operator command can run a step inside the transaction that also
//! appends its audit record (T09); [`SqliteKv`] is the server's: one
//! connection kept open, taken in turn.

use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Change, KeyPage, KvBackend, KvError, RecordKey, Sealed, StoredRecord};
use crate::Store;

/// The server's embedded backend: one connection, locked per operation.
pub struct SqliteKv {
    conn: Mutex<Connection>,
}

impl SqliteKv {
    pub fn open(store: &Store) -> Result<Self, KvError> {
        Ok(Self {
            conn: Mutex::new(store.connect()?),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn i64_of(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl KvBackend for Connection {
    fn get(&self, key: &RecordKey<'_>, now_ms: i64) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .query_row(
                "SELECT value_sealed FROM kv WHERE store = ?1 AND subject = ?2 AND key_id = ?3 AND (expires_ms IS NULL OR expires_ms > ?4)",
                params![key.store, key.subject, key.key_id, now_ms],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn put(&self, key: &RecordKey<'_>, record: &Sealed) -> Result<(), KvError> {
        self.execute(
            "INSERT INTO kv (store, subject, key_id, key_sealed, value_sealed, updated_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (store, subject, key_id) DO UPDATE SET key_sealed = excluded.key_sealed, value_sealed = excluded.value_sealed, updated_ms = excluded.updated_ms, expires_ms = excluded.expires_ms",
            params![
                key.store,
                key.subject,
                key.key_id,
                record.key_sealed,
                record.value_sealed,
                record.updated_ms,
                record.expires_ms
            ],
        )?;
        Ok(())
    }

    fn delete(&self, key: &RecordKey<'_>) -> Result<(), KvError> {
        self.execute(
            "DELETE FROM kv WHERE store = ?1 AND subject = ?2 AND key_id = ?3",
            params![key.store, key.subject, key.key_id],
        )?;
        Ok(())
    }

    fn list(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
        limit: usize,
        offset: u64,
    ) -> Result<KeyPage, KvError> {
        let mut stmt = self.prepare(
            "SELECT key_id, key_sealed FROM kv WHERE store = ?1 AND subject = ?2 AND (expires_ms IS NULL OR expires_ms > ?3)
             ORDER BY key_id LIMIT ?4 OFFSET ?5",
        )?;
        let rows = stmt
            .query_map(
                params![store, subject, now_ms, i64_of(limit), i64_of(offset)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn update(
        &self,
        key: &RecordKey<'_>,
        now_ms: i64,
        change: &mut Change<'_>,
    ) -> Result<(), KvError> {
        // The write lock first (IMMEDIATE): two writers never both read
        // the old value. Dropped without commit on any error: rolled back.
        let tx = rusqlite::Transaction::new_unchecked(self, TransactionBehavior::Immediate)?;
        let current = KvBackend::get(&*tx, key, now_ms)?;
        let record = change(current.as_deref())?;
        KvBackend::put(&*tx, key, &record)?;
        tx.commit()?;
        Ok(())
    }

    fn records(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Vec<StoredRecord>, KvError> {
        let mut stmt = self.prepare(
            "SELECT key_id, key_sealed, value_sealed, updated_ms, expires_ms FROM kv
             WHERE store = ?1 AND subject = ?2 AND (expires_ms IS NULL OR expires_ms > ?3) ORDER BY key_id",
        )?;
        let rows = stmt
            .query_map(params![store, subject, now_ms], |row| {
                Ok(StoredRecord {
                    key_id: row.get(0)?,
                    record: Sealed {
                        key_sealed: row.get(1)?,
                        value_sealed: row.get(2)?,
                        updated_ms: row.get(3)?,
                        expires_ms: row.get(4)?,
                    },
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn sweep(&self, now_ms: i64) -> Result<usize, KvError> {
        Ok(self.execute(
            "DELETE FROM kv WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
            params![now_ms],
        )?)
    }

    fn subject_rows(&self, subject: &str) -> Result<usize, KvError> {
        let rows: i64 = self.query_row(
            "SELECT count(*) FROM kv WHERE subject = ?1",
            params![subject],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(rows).unwrap_or(0))
    }

    fn subject_stores(&self, subject: &str) -> Result<Vec<String>, KvError> {
        let mut statement =
            self.prepare("SELECT DISTINCT store FROM kv WHERE subject = ?1 ORDER BY store")?;
        let stores = statement
            .query_map(params![subject], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(stores)
    }

    fn subjects(&self, keep: &dyn Fn(&str) -> bool, limit: usize) -> Result<Vec<String>, KvError> {
        let mut found = Vec::new();
        let mut statement = self.prepare("SELECT DISTINCT subject FROM kv WHERE subject <> ''")?;
        let mut rows = statement.query([])?;
        while found.len() < limit {
            let Some(row) = rows.next()? else { break };
            let subject: String = row.get(0)?;
            if keep(&subject) {
                found.push(subject);
            }
        }
        Ok(found)
    }

    fn delete_subject(&self, subject: &str) -> Result<usize, KvError> {
        self.pragma_update(None, "secure_delete", "ON")?;
        Ok(self.execute("DELETE FROM kv WHERE subject = ?1", params![subject])?)
    }

    fn after_erase(&self) {
        super::checkpoint_after_erase(self);
    }
}

/// Each operation on the one connection, in turn.
impl KvBackend for SqliteKv {
    fn get(&self, key: &RecordKey<'_>, now_ms: i64) -> Result<Option<Vec<u8>>, KvError> {
        KvBackend::get(&*self.conn(), key, now_ms)
    }
    fn put(&self, key: &RecordKey<'_>, record: &Sealed) -> Result<(), KvError> {
        KvBackend::put(&*self.conn(), key, record)
    }
    fn delete(&self, key: &RecordKey<'_>) -> Result<(), KvError> {
        KvBackend::delete(&*self.conn(), key)
    }
    fn list(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
        limit: usize,
        offset: u64,
    ) -> Result<KeyPage, KvError> {
        KvBackend::list(&*self.conn(), store, subject, now_ms, limit, offset)
    }
    fn update(
        &self,
        key: &RecordKey<'_>,
        now_ms: i64,
        change: &mut Change<'_>,
    ) -> Result<(), KvError> {
        KvBackend::update(&*self.conn(), key, now_ms, change)
    }
    fn records(
        &self,
        store: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Vec<StoredRecord>, KvError> {
        KvBackend::records(&*self.conn(), store, subject, now_ms)
    }
    fn sweep(&self, now_ms: i64) -> Result<usize, KvError> {
        KvBackend::sweep(&*self.conn(), now_ms)
    }
    fn subject_rows(&self, subject: &str) -> Result<usize, KvError> {
        KvBackend::subject_rows(&*self.conn(), subject)
    }
    fn subject_stores(&self, subject: &str) -> Result<Vec<String>, KvError> {
        KvBackend::subject_stores(&*self.conn(), subject)
    }
    fn subjects(&self, keep: &dyn Fn(&str) -> bool, limit: usize) -> Result<Vec<String>, KvError> {
        KvBackend::subjects(&*self.conn(), keep, limit)
    }
    fn delete_subject(&self, subject: &str) -> Result<usize, KvError> {
        KvBackend::delete_subject(&*self.conn(), subject)
    }
    fn after_erase(&self) {
        KvBackend::after_erase(&*self.conn());
    }
}
