//! Secrets (T14, T15): values set by an operator through the CLI (stdin or a
//! file, never argv), sealed under the app's secrets data key, read only by
//! functions granted them. Only the newest version of a secret is kept:
//! `rotate` replaces the value and bumps the version, so a leaked old value
//! cannot be read back from the store.
//!
//! [`Secrets`] seals and opens; a [`SecretBackend`] keeps the sealed values
//! (a SQLite connection is the embedded one, so the CLI can write a secret
//! in the transaction that also appends its audit record, T09).

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use secrecy::SecretString;

use crate::crypto::{Aad, CryptoError, Keyring};
use crate::now_ms;

const OWNER: &str = "secrets";
/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("secrets table: {0}")]
    Db(#[from] rusqlite::Error),
    /// The shared secret store (PostgreSQL, issue 16) failed; never holds
    /// a value or the database URL.
    #[error("secret store: {0}")]
    Backend(String),
    #[error("secret `{0}` already exists; use `bulkhead secrets rotate` to replace its value")]
    Exists(String),
    #[error("there is no secret `{0}`; `bulkhead secrets list` shows the names")]
    Missing(String),
    #[error("a secret value must be UTF-8 text of 1 to {MAX_SECRET_BYTES} bytes")]
    BadValue,
}

/// A secret's name and version, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInfo {
    pub name: String,
    pub version: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

pub struct Secrets {
    keyring: Arc<Keyring>,
}

fn aad(name: &str, version: i64) -> Aad {
    Aad::new(&[b"secret", name.as_bytes(), &version.to_be_bytes()])
}

fn check_value(value: &[u8]) -> Result<(), SecretError> {
    if value.is_empty() || value.len() > MAX_SECRET_BYTES || std::str::from_utf8(value).is_err() {
        return Err(SecretError::BadValue);
    }
    Ok(())
}

/// Where sealed secrets are kept, newest version only.
pub trait SecretBackend {
    /// The version and sealed value of `name`.
    fn sealed(&self, name: &str) -> Result<Option<(i64, Vec<u8>)>, SecretError>;
    fn info(&self, name: &str) -> Result<Option<SecretInfo>, SecretError>;
    /// Every secret's name and version, by name.
    fn list(&self) -> Result<Vec<SecretInfo>, SecretError>;
    /// Insert or replace `name` with `version` (created time kept).
    fn write(
        &self,
        name: &str,
        version: i64,
        sealed: &[u8],
        now_ms: i64,
    ) -> Result<(), SecretError>;
    /// Delete `name`; false when there was none.
    fn remove(&self, name: &str) -> Result<bool, SecretError>;
}

/// A backend the server's threads share.
pub type SharedSecrets = Box<dyn SecretBackend + Send + Sync>;

impl Secrets {
    pub fn new(keyring: Arc<Keyring>) -> Self {
        Self { keyring }
    }

    /// Create secret `name` (version 1); refused if it exists.
    pub fn set(
        &self,
        backend: &dyn SecretBackend,
        name: &str,
        value: &[u8],
    ) -> Result<i64, SecretError> {
        check_value(value)?;
        if backend.info(name)?.is_some() {
            return Err(SecretError::Exists(name.to_string()));
        }
        self.write(backend, name, 1, value)?;
        Ok(1)
    }

    /// Replace the value of existing secret `name`; returns the new version.
    pub fn rotate(
        &self,
        backend: &dyn SecretBackend,
        name: &str,
        value: &[u8],
    ) -> Result<i64, SecretError> {
        check_value(value)?;
        let Some(info) = backend.info(name)? else {
            return Err(SecretError::Missing(name.to_string()));
        };
        let version = info.version.saturating_add(1);
        self.write(backend, name, version, value)?;
        Ok(version)
    }

    fn write(
        &self,
        backend: &dyn SecretBackend,
        name: &str,
        version: i64,
        value: &[u8],
    ) -> Result<(), SecretError> {
        let dek = self
            .keyring
            .data_key(OWNER, "", "", true)?
            .ok_or(CryptoError::Unwrap)?;
        let sealed = dek.seal(&aad(name, version), value)?;
        backend.write(name, version, &sealed, now_ms())
    }

    /// Delete secret `name`; false when there was none.
    pub fn remove(backend: &dyn SecretBackend, name: &str) -> Result<bool, SecretError> {
        backend.remove(name)
    }

    pub fn info(
        &self,
        backend: &dyn SecretBackend,
        name: &str,
    ) -> Result<Option<SecretInfo>, SecretError> {
        backend.info(name)
    }

    /// Every secret's name and version, by name.
    pub fn list(backend: &dyn SecretBackend) -> Result<Vec<SecretInfo>, SecretError> {
        backend.list()
    }

    /// The value of secret `name`, if it exists.
    pub fn get(
        &self,
        backend: &dyn SecretBackend,
        name: &str,
    ) -> Result<Option<SecretString>, SecretError> {
        let Some((version, sealed)) = backend.sealed(name)? else {
            return Ok(None);
        };
        let dek = self
            .keyring
            .data_key(OWNER, "", "", false)?
            .ok_or(CryptoError::Unwrap)?;
        let plain = dek.open(&aad(name, version), &sealed)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| SecretError::BadValue)?;
        Ok(Some(SecretString::from(text)))
    }
}

/// The embedded backend: the `secrets` table of the state database.
impl SecretBackend for Connection {
    fn sealed(&self, name: &str) -> Result<Option<(i64, Vec<u8>)>, SecretError> {
        Ok(self
            .query_row(
                "SELECT version, sealed FROM secrets WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    fn info(&self, name: &str) -> Result<Option<SecretInfo>, SecretError> {
        Ok(self
            .query_row(
                "SELECT name, version, created_ms, updated_ms FROM secrets WHERE name = ?1",
                params![name],
                info_of,
            )
            .optional()?)
    }

    fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        let mut stmt = self
            .prepare("SELECT name, version, created_ms, updated_ms FROM secrets ORDER BY name")?;
        let rows = stmt
            .query_map([], info_of)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn write(
        &self,
        name: &str,
        version: i64,
        sealed: &[u8],
        now_ms: i64,
    ) -> Result<(), SecretError> {
        self.execute(
            "INSERT INTO secrets (name, version, sealed, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, sealed = excluded.sealed, updated_ms = excluded.updated_ms",
            params![name, version, sealed, now_ms],
        )?;
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<bool, SecretError> {
        Ok(self.execute("DELETE FROM secrets WHERE name = ?1", params![name])? > 0)
    }
}

/// A connection the server's threads share, one call at a time.
impl<T: SecretBackend> SecretBackend for std::sync::Mutex<T> {
    fn sealed(&self, name: &str) -> Result<Option<(i64, Vec<u8>)>, SecretError> {
        crate::locked(self).sealed(name)
    }
    fn info(&self, name: &str) -> Result<Option<SecretInfo>, SecretError> {
        crate::locked(self).info(name)
    }
    fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        crate::locked(self).list()
    }
    fn write(
        &self,
        name: &str,
        version: i64,
        sealed: &[u8],
        now_ms: i64,
    ) -> Result<(), SecretError> {
        crate::locked(self).write(name, version, sealed, now_ms)
    }
    fn remove(&self, name: &str) -> Result<bool, SecretError> {
        crate::locked(self).remove(name)
    }
}

fn info_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<SecretInfo> {
    Ok(SecretInfo {
        name: row.get(0)?,
        version: row.get(1)?,
        created_ms: row.get(2)?,
        updated_ms: row.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use secrecy::ExposeSecret;

    #[test]
    fn set_rotate_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let conn = store.connect().unwrap();
        let path = dir.path().join("master");
        crate::files::write_private(&path, &[&[5u8; 32]]).unwrap();
        let secrets = Secrets::new(Arc::new(Keyring::new(
            MasterKey::from_file(&path).unwrap(),
            crate::crypto::KeyStore::open(dir.path()).unwrap(),
        )));
        assert_eq!(secrets.set(&conn, "api", b"one").unwrap(), 1);
        assert!(matches!(
            secrets.set(&conn, "api", b"x"),
            Err(SecretError::Exists(_))
        ));
        assert_eq!(
            secrets.get(&conn, "api").unwrap().unwrap().expose_secret(),
            "one"
        );
        assert_eq!(secrets.rotate(&conn, "api", b"two").unwrap(), 2);
        assert_eq!(
            secrets.get(&conn, "api").unwrap().unwrap().expose_secret(),
            "two"
        );
        assert!(matches!(
            secrets.rotate(&conn, "nope", b"x"),
            Err(SecretError::Missing(_))
        ));
        assert!(matches!(
            secrets.set(&conn, "empty", b""),
            Err(SecretError::BadValue)
        ));
        assert_eq!(Secrets::list(&conn).unwrap()[0].version, 2);
        assert!(Secrets::remove(&conn, "api").unwrap());
        assert!(secrets.get(&conn, "api").unwrap().is_none());
    }
}
