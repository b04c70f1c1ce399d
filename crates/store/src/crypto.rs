//! Envelope encryption at rest (T14, T15, T20).
//!
//! - The master key (32 bytes) comes from the file named by
//!   `BULKHEAD_MASTER_KEY_FILE` (raw bytes or 64 hex digits, readable by its
//!   owner only) or, in the `dev` environment only, from `master.key` in the
//!   state directory, generated with mode 0600 on first run.
//! - Every store, and every subject of a subject-scoped store, has its own
//!   random 32-byte data key (DEK). DEKs are stored only wrapped by the
//!   master key (AES key wrap, RFC 3394); destroying a subject's DEK makes
//!   every copy of its records unreadable (crypto-shredding).
//! - Values are sealed with XChaCha20Poly1305 under a DEK, a random 24-byte
//!   nonce each time, and associated data binding the ciphertext to where it
//!   lives (purpose, store, subject, key), so rows cannot be swapped.
//!
//! Nothing here is hand-rolled: chacha20poly1305, aes-kw, secrecy, zeroize.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_kw::KwAes256;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rusqlite::{Connection, OptionalExtension, params};
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::files;

/// The environment variable naming the master key file.
pub const MASTER_KEY_ENV: &str = "BULKHEAD_MASTER_KEY_FILE";
/// The generated master key of the `dev` environment, in the state dir.
pub const DEV_MASTER_KEY_FILE: &str = "master.key";

const NONCE_LEN: usize = 24;
const WRAPPED_LEN: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "no master key for environment `{env}`: set {MASTER_KEY_ENV} to a file holding 32 random bytes, readable by this user only, for example:\n  head -c 32 /dev/urandom > /secure/bulkhead-master.key && chmod 600 /secure/bulkhead-master.key\n  export {MASTER_KEY_ENV}=/secure/bulkhead-master.key\n(only the `dev` environment generates one by itself; keep the file and a backup: data sealed under it cannot be read without it)"
    )]
    NoMasterKey { env: String },
    #[error(
        "with `[cluster] backend = \"postgres\"` every node must hold the same master key: set {MASTER_KEY_ENV} on each node to a file holding the same 32 random bytes, readable by the server's user only (no key is generated: one generated in a node's state directory would seal what no other node can read)"
    )]
    SharedNoMasterKey,
    #[error("master key file {path}: {why}")]
    MasterKeyFile { path: PathBuf, why: String },
    #[error(
        "a stored data key does not unwrap under this master key (a different master key than the one the data was written with?)"
    )]
    Unwrap,
    #[error("a stored value failed authentication (tampered, moved or sealed under another key)")]
    Open,
    #[error("cannot seal a value")]
    Seal,
    #[error("randomness: {0}")]
    Random(std::io::Error),
    #[error("data key table: {0}")]
    Db(#[from] rusqlite::Error),
    /// The shared data key store (PostgreSQL, issue 16) failed; never
    /// holds a key or the database URL.
    #[error("data key store: {0}")]
    Backend(String),
}

/// The key that wraps every data key. Never logged, zeroed on drop.
pub struct MasterKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

impl MasterKey {
    /// The master key for `env`, whose state lives in `state_dir`.
    pub fn load(state_dir: &Path, env: &str) -> Result<Self, CryptoError> {
        match std::env::var_os(MASTER_KEY_ENV) {
            Some(path) if !path.is_empty() => Self::from_file(Path::new(&path)),
            _ if env == "dev" => {
                let path = state_dir.join(DEV_MASTER_KEY_FILE);
                files::create_private_dir(state_dir).map_err(|e| CryptoError::MasterKeyFile {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                if path.exists() {
                    return Self::from_file(&path);
                }
                let key =
                    files::load_or_create_key(&path).map_err(|e| CryptoError::MasterKeyFile {
                        path: path.clone(),
                        why: e.to_string(),
                    })?;
                Ok(Self(SecretBox::new(Box::new(key))))
            }
            _ => Err(CryptoError::NoMasterKey {
                env: env.to_string(),
            }),
        }
    }

    /// Read a key file: 32 raw bytes or 64 hex digits (a trailing newline
    /// allowed). Refuses a file that group or others may read.
    pub fn from_file(path: &Path) -> Result<Self, CryptoError> {
        let fail = |why: String| CryptoError::MasterKeyFile {
            path: path.to_path_buf(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("is not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(fail(format!(
                    "is readable by group or others (mode {mode:o}); run `chmod 600` on it"
                )));
            }
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| fail(e.to_string()))?);
        let mut key = Box::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
        } else {
            let text = std::str::from_utf8(&bytes)
                .map(str::trim)
                .map_err(|_| fail("must hold 32 raw bytes or 64 hex digits".into()))?;
            hex::decode_to_slice(text, key.as_mut_slice())
                .map_err(|_| fail("must hold 32 raw bytes or 64 hex digits".into()))?;
        }
        Ok(Self(SecretBox::new(key)))
    }

    fn kek(&self) -> KwAes256 {
        KwAes256::new(&(*self.0.expose_secret()).into())
    }

    fn wrap(&self, dek: &DataKey) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; WRAPPED_LEN];
        self.kek()
            .wrap_key(dek.0.expose_secret(), &mut out)
            .map_err(|_| CryptoError::Seal)?;
        Ok(out)
    }

    /// `wrapped` (a data key under this master key) wrapped under `to`
    /// instead (moving state to nodes that hold another master key).
    pub(crate) fn rewrap(&self, wrapped: &[u8], to: &MasterKey) -> Result<Vec<u8>, CryptoError> {
        to.wrap(&self.unwrap(wrapped)?)
    }

    fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let mut key = Box::new([0u8; 32]);
        if wrapped.len() != WRAPPED_LEN {
            return Err(CryptoError::Unwrap);
        }
        self.kek()
            .unwrap_key(wrapped, key.as_mut_slice())
            .map_err(|_| CryptoError::Unwrap)?;
        Ok(DataKey(SecretBox::new(key)))
    }
}

/// Why the master key an environment other than `dev` of the app in
/// `app_dir` would use is a development key, if it is (T15, T19): no
/// `BULKHEAD_MASTER_KEY_FILE`, a file inside the app's state (an
/// environment's generated `master.key`), or the same bytes as the `dev`
/// environment's generated key. A key file that cannot be read is left to
/// [`MasterKey::load`], which refuses it with its own reason.
pub fn dev_master_key(app_dir: &Path) -> Option<String> {
    let path = match std::env::var_os(MASTER_KEY_ENV) {
        Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
        _ => return Some(format!("{MASTER_KEY_ENV} is not set")),
    };
    let state = app_dir.join(".bulkhead");
    if let (Ok(key), Ok(state)) = (path.canonicalize(), state.canonicalize())
        && key.starts_with(&state)
    {
        return Some(format!(
            "{MASTER_KEY_ENV} names {}, inside the app's state directory, where `dev` generates its key",
            path.display()
        ));
    }
    let dev = state.join("dev").join(DEV_MASTER_KEY_FILE);
    if let (Ok(key), Ok(dev_key)) = (MasterKey::from_file(&path), MasterKey::from_file(&dev))
        && key.0.expose_secret() == dev_key.0.expose_secret()
    {
        return Some(format!(
            "{MASTER_KEY_ENV} holds the same key as the `dev` environment's generated {DEV_MASTER_KEY_FILE}"
        ));
    }
    None
}

/// Why the file `BULKHEAD_MASTER_KEY_FILE` names is exposed outside `dev`
/// (T15, T19): readable or writable by group or others, or inside the app
/// directory (after resolving symlinks and `..`), where whoever can read or
/// copy the app (a bundle, a backup, a repository) takes the key with it.
/// Each reason ends with its fix; empty when the variable is unset or the
/// file is missing (reported by [`dev_master_key`] and [`MasterKey::load`]).
pub fn exposed_master_key(app_dir: &Path, env: &str) -> Vec<String> {
    let mut found = Vec::new();
    let path = match std::env::var_os(MASTER_KEY_ENV) {
        Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
        _ => return found,
    };
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(&path) {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push(format!(
                "`{}` ({MASTER_KEY_ENV}) is readable or writable by group or others (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    if let (Ok(key), Ok(app)) = (path.canonicalize(), app_dir.canonicalize())
        && key.starts_with(&app)
    {
        found.push(format!(
            "`{}` ({MASTER_KEY_ENV}) is inside the app directory `{}`, where a copy, bundle or backup of the app takes it along; keep it outside, like `mv {} /etc/bulkhead/{env}.key` and set {MASTER_KEY_ENV}=/etc/bulkhead/{env}.key",
            path.display(),
            app.display(),
            path.display()
        ));
    }
    found
}

/// One data key (DEK), unwrapped in memory only while it is used.
pub struct DataKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

impl DataKey {
    fn generate() -> Result<Self, CryptoError> {
        let key = Zeroizing::new(files::random_bytes::<32>().map_err(CryptoError::Random)?);
        Ok(Self(SecretBox::new(Box::new(*key))))
    }

    /// A random key that lives in memory only (never wrapped or stored):
    /// for what may be lost with the process, such as sign-ins under way
    /// when no master key is configured.
    pub fn ephemeral() -> Result<Self, CryptoError> {
        Self::generate()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.0.expose_secret()).into())
    }

    /// A deterministic keyed hash of `data` for lookups (a sealed key
    /// cannot be searched): HMAC-SHA256 under a subkey derived from this
    /// DEK for `context`, so the DEK itself is used for one purpose only.
    pub fn lookup_id(&self, context: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, Mac};
        type HmacSha256 = Hmac<sha2::Sha256>;
        let mut derive = <HmacSha256 as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        derive.update(b"bulkhead lookup id v1\0");
        derive.update(context);
        let subkey: Zeroizing<[u8; 32]> = Zeroizing::new(derive.finalize().into_bytes().into());
        let mut mac = <HmacSha256 as Mac>::new_from_slice(subkey.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// `nonce || ciphertext+tag`, bound to `aad`.
    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = files::random_bytes::<NONCE_LEN>().map_err(CryptoError::Random)?;
        let sealed = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad.0,
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of `blob` if it was sealed under this key with `aad`.
    pub fn open(&self, aad: &Aad, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if blob.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| CryptoError::Open)?;
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad.0,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }
}

/// Associated data: where a sealed value belongs. Each part is length
/// prefixed so no two different places encode alike.
pub struct Aad(Vec<u8>);

impl Aad {
    pub fn new(parts: &[&[u8]]) -> Self {
        let mut out = b"bulkhead/v1".to_vec();
        for part in parts {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part);
        }
        Self(out)
    }
}

/// The file holding the wrapped data keys, apart from the data itself:
/// a backup of `state.db` taken before an erase is unreadable once the
/// subject's key is gone from here (crypto-shredding, T20).
pub const KEYS_DB_FILE: &str = "keys.db";

/// What [`KeyStore::destroy_subject`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destroyed {
    /// How many data keys were destroyed.
    pub keys: usize,
    /// Whether `keys.db-wal` was checkpointed and truncated: if not, the
    /// destroyed wrapped keys may stay in it until a later checkpoint.
    pub checkpointed: bool,
}

/// Where wrapped data keys are kept (issue 16): `keys.db` in the state
/// directory ([`KeyStore::open`]) or a table every node shares
/// ([`crate::pg::PostgresKeys`]). Only wrapped keys ever reach it; the
/// master key stays on the node.
pub trait DataKeyBackend: Send + Sync {
    /// The wrapped key of (`owner`, `store`, `subject`), if there is one.
    fn wrapped(
        &self,
        owner: &str,
        store: &str,
        subject: &str,
    ) -> Result<Option<Vec<u8>>, CryptoError>;
    /// Store `wrapped` unless a key is there already (the first writer
    /// wins, on every node; the caller then reads the one kept).
    fn insert_if_absent(
        &self,
        owner: &str,
        store: &str,
        subject: &str,
        wrapped: &[u8],
        now_ms: i64,
    ) -> Result<(), CryptoError>;
    /// Destroy the data keys of `subject` under `owner`.
    fn destroy_subject(&self, owner: &str, subject: &str) -> Result<Destroyed, CryptoError>;
    /// How many data keys `subject` has under `owner`.
    fn count_subject(&self, owner: &str, subject: &str) -> Result<usize, CryptoError>;
    /// Up to `limit` non-empty subjects with keys under `owner` that
    /// `keep` accepts.
    fn subjects(
        &self,
        owner: &str,
        keep: &dyn Fn(&str) -> bool,
        limit: usize,
    ) -> Result<Vec<String>, CryptoError>;
}

/// Wrapped data keys: in `keys.db` ([`KeyStore::open`]), or in a backend
/// every node shares ([`KeyStore::new`]). Opening it needs no master key:
/// erasing a subject's keys must work even when the master key is
/// elsewhere.
pub struct KeyStore {
    backend: Box<dyn DataKeyBackend>,
}

impl KeyStore {
    /// The embedded store: `keys.db` in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, CryptoError> {
        Ok(Self::new(Box::new(SqliteKeys::open(state_dir)?)))
    }

    pub fn new(backend: Box<dyn DataKeyBackend>) -> Self {
        Self { backend }
    }

    /// Destroy the data keys of `subject` under `owner`: what they sealed
    /// can no longer be read, wherever copies of it are. On the embedded
    /// store the WAL is then checkpointed and truncated so no old page
    /// keeps the key; another process's open read transaction (a running
    /// server) can stop that, which the result says (T20).
    pub fn destroy_subject(&self, owner: &str, subject: &str) -> Result<Destroyed, CryptoError> {
        self.backend.destroy_subject(owner, subject)
    }

    /// How many data keys `subject` has under `owner` (read-only): whether
    /// an erase would destroy anything (T20).
    pub fn count_subject(&self, owner: &str, subject: &str) -> Result<usize, CryptoError> {
        self.backend.count_subject(owner, subject)
    }

    /// The subjects with data keys under `owner` that `keep` accepts, at
    /// most `limit` of them (read-only).
    pub fn subjects(
        &self,
        owner: &str,
        keep: &dyn Fn(&str) -> bool,
        limit: usize,
    ) -> Result<Vec<String>, CryptoError> {
        self.backend.subjects(owner, keep, limit)
    }
}

/// The embedded data key store: `keys.db` in the state directory.
pub struct SqliteKeys {
    conn: Mutex<Connection>,
}

impl SqliteKeys {
    pub fn open(state_dir: &Path) -> Result<Self, CryptoError> {
        files::create_private_dir(state_dir).map_err(|e| CryptoError::MasterKeyFile {
            path: state_dir.to_path_buf(),
            why: e.to_string(),
        })?;
        let path = state_dir.join(KEYS_DB_FILE);
        // Owner-only before SQLite creates it: its -wal and -shm copy its mode.
        files::create_private_file(&path).map_err(|e| CryptoError::MasterKeyFile {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Deleted keys are overwritten, not left in free pages (T20).
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS data_keys (
                owner TEXT NOT NULL,
                store TEXT NOT NULL,
                subject TEXT NOT NULL,
                wrapped BLOB NOT NULL,
                created_ms INTEGER NOT NULL,
                PRIMARY KEY (owner, store, subject)
            );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DataKeyBackend for SqliteKeys {
    fn wrapped(
        &self,
        owner: &str,
        store: &str,
        subject: &str,
    ) -> Result<Option<Vec<u8>>, CryptoError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT wrapped FROM data_keys WHERE owner = ?1 AND store = ?2 AND subject = ?3",
                params![owner, store, subject],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .optional()?)
    }

    fn insert_if_absent(
        &self,
        owner: &str,
        store: &str,
        subject: &str,
        wrapped: &[u8],
        now_ms: i64,
    ) -> Result<(), CryptoError> {
        // Another process may have created it meanwhile: keep the first.
        self.conn().execute(
            "INSERT OR IGNORE INTO data_keys (owner, store, subject, wrapped, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![owner, store, subject, wrapped, now_ms],
        )?;
        Ok(())
    }

    fn destroy_subject(&self, owner: &str, subject: &str) -> Result<Destroyed, CryptoError> {
        let conn = self.conn();
        let keys = conn.execute(
            "DELETE FROM data_keys WHERE owner = ?1 AND subject = ?2",
            params![owner, subject],
        )?;
        // (busy, frames in the WAL, frames checkpointed): busy, or frames
        // left behind, means the wrapped keys may still be in `keys.db-wal`
        // until a later checkpoint. The keys are deleted either way, so an
        // error here is reported the same way, not as a failed erase.
        let checkpointed = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .is_ok_and(|(busy, log, done)| busy == 0 && log == done);
        Ok(Destroyed { keys, checkpointed })
    }

    fn count_subject(&self, owner: &str, subject: &str) -> Result<usize, CryptoError> {
        let count: i64 = self.conn().query_row(
            "SELECT count(*) FROM data_keys WHERE owner = ?1 AND subject = ?2",
            params![owner, subject],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    fn subjects(
        &self,
        owner: &str,
        keep: &dyn Fn(&str) -> bool,
        limit: usize,
    ) -> Result<Vec<String>, CryptoError> {
        let conn = self.conn();
        let mut statement = conn
            .prepare("SELECT DISTINCT subject FROM data_keys WHERE owner = ?1 AND subject <> ''")?;
        let mut rows = statement.query(params![owner])?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(row) = rows.next()? else { break };
            let subject: String = row.get(0)?;
            if keep(&subject) {
                out.push(subject);
            }
        }
        Ok(out)
    }
}

/// The master key and the wrapped data keys it protects. `owner` is a
/// namespace (`kv`, `secrets`), `store` the store, `subject` the subject of
/// a subject-scoped store or `""` for an app-wide key.
pub struct Keyring {
    master: MasterKey,
    keys: KeyStore,
}

impl Keyring {
    pub fn new(master: MasterKey, keys: KeyStore) -> Self {
        Self { master, keys }
    }

    /// The keyring of the environment `env` whose state is in `state_dir`.
    pub fn open(state_dir: &Path, env: &str) -> Result<Self, CryptoError> {
        let master = MasterKey::load(state_dir, env)?;
        Ok(Self::new(master, KeyStore::open(state_dir)?))
    }

    pub fn key_store(&self) -> &KeyStore {
        &self.keys
    }

    /// The data key of (`owner`, `store`, `subject`), created when `create`.
    pub fn data_key(
        &self,
        owner: &str,
        store: &str,
        subject: &str,
        create: bool,
    ) -> Result<Option<DataKey>, CryptoError> {
        let keys = &self.keys.backend;
        if let Some(wrapped) = keys.wrapped(owner, store, subject)? {
            return self.master.unwrap(&wrapped).map(Some);
        }
        if !create {
            return Ok(None);
        }
        let dek = DataKey::generate()?;
        let wrapped = self.master.wrap(&dek)?;
        // Another process or node may have created it meanwhile: the
        // first one is kept, and read back, so every node uses it.
        keys.insert_if_absent(owner, store, subject, &wrapped, crate::now_ms())?;
        match keys.wrapped(owner, store, subject)? {
            Some(wrapped) => self.master.unwrap(&wrapped).map(Some),
            None => Err(CryptoError::Unwrap),
        }
    }
}

/// The master key's path for display (never its bytes).
pub fn master_key_source(state_dir: &Path) -> PathBuf {
    std::env::var_os(MASTER_KEY_ENV)
        .filter(|p| !p.is_empty())
        .map_or_else(|| state_dir.join(DEV_MASTER_KEY_FILE), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(dir: &Path) -> Keyring {
        let path = dir.join("k");
        files::write_private(&path, &[&[7u8; 32]]).unwrap();
        Keyring::new(
            MasterKey::from_file(&path).unwrap(),
            KeyStore::open(dir).unwrap(),
        )
    }

    #[test]
    fn seal_binds_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let ring = keyring(dir.path());
        let dek = ring.data_key("kv", "s", "alice", true).unwrap().unwrap();
        let here = Aad::new(&[b"kv", b"s", b"alice", b"k1"]);
        let blob = dek.seal(&here, b"value").unwrap();
        assert_eq!(&dek.open(&here, &blob).unwrap()[..], b"value");
        let elsewhere = Aad::new(&[b"kv", b"s", b"alice", b"k2"]);
        assert!(
            dek.open(&elsewhere, &blob).is_err(),
            "rows cannot be swapped"
        );
        // The same key comes back; another subject gets another key.
        let again = ring.data_key("kv", "s", "alice", false).unwrap().unwrap();
        assert_eq!(&again.open(&here, &blob).unwrap()[..], b"value");
        let bob = ring.data_key("kv", "s", "bob", true).unwrap().unwrap();
        assert!(bob.open(&here, &blob).is_err());
        // Shredded: the key is gone.
        let destroyed = ring.key_store().destroy_subject("kv", "alice").unwrap();
        assert_eq!(
            destroyed,
            Destroyed {
                keys: 1,
                checkpointed: true
            }
        );
        assert!(ring.data_key("kv", "s", "alice", false).unwrap().is_none());
    }

    /// T20: an open read transaction in another connection (a running
    /// server) keeps the WAL from being truncated; the erase says so.
    #[test]
    fn a_checkpoint_a_reader_blocks_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ring = keyring(dir.path());
        ring.data_key("kv", "s", "alice", true).unwrap();
        ring.data_key("kv", "s", "bob", true).unwrap();
        let reader = Connection::open(dir.path().join(KEYS_DB_FILE)).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM data_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 2);
        let destroyed = ring.key_store().destroy_subject("kv", "alice").unwrap();
        assert_eq!(destroyed.keys, 1);
        assert!(!destroyed.checkpointed, "a reader holds the WAL");
        reader.execute_batch("COMMIT").unwrap();
        let destroyed = ring.key_store().destroy_subject("kv", "bob").unwrap();
        assert_eq!(destroyed.keys, 1);
        assert!(destroyed.checkpointed);
    }

    #[test]
    fn a_wrong_master_key_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        keyring(dir.path()).data_key("kv", "s", "", true).unwrap();
        let other = dir.path().join("other");
        files::write_private(&other, &[hex::encode([9u8; 32]).as_bytes(), b"\n"]).unwrap();
        let ring = Keyring::new(
            MasterKey::from_file(&other).unwrap(),
            KeyStore::open(dir.path()).unwrap(),
        );
        assert!(matches!(
            ring.data_key("kv", "s", "", false),
            Err(CryptoError::Unwrap)
        ));
    }

    #[test]
    fn master_key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        files::write_private(&path, &[b"short"]).unwrap();
        assert!(MasterKey::from_file(&path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            files::write_private(&path, &[&[1u8; 32]]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let err = MasterKey::from_file(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        // Outside dev, no file is no key, with instructions.
        let err = MasterKey::load(dir.path(), "prod").unwrap_err().to_string();
        assert!(
            err.contains(MASTER_KEY_ENV) && err.contains("head -c 32"),
            "{err}"
        );
        // In dev it is generated 0600 and then reused.
        let state = dir.path().join("state");
        MasterKey::load(&state, "dev").unwrap();
        let bytes = std::fs::read(state.join(DEV_MASTER_KEY_FILE)).unwrap();
        assert_eq!(bytes.len(), 32);
        MasterKey::load(&state, "dev").unwrap();
        assert_eq!(
            std::fs::read(state.join(DEV_MASTER_KEY_FILE)).unwrap(),
            bytes
        );
    }
}
