//! Opaque credentials (T12): session tokens and API keys. Each is 256 bits
//! from the OS, shown once, and kept only as its SHA-256 beside the subject,
//! scopes and expiry. A token carries no personal data and means nothing
//! without this table; revoking or expiring it takes effect at once.
//!
//! A [`CredentialBackend`] keeps the hashes (and the admin tokens'); the
//! checks (kind, revocation, expiry) are made here, the same for every
//! backend. A SQLite connection is the embedded backend, so the CLI can
//! issue or revoke in the transaction that appends the audit record (T09).

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError, files, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    ApiKey,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::ApiKey => "api-key",
        }
    }

    /// The visible prefix of the secret, so a leaked one is recognisable.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Session => "bhs_",
            Kind::ApiKey => "bhk_",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "session" => Some(Kind::Session),
            "api-key" => Some(Kind::ApiKey),
            _ => None,
        }
    }
}

/// What a valid credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub kind: Kind,
    pub subject: String,
    pub scopes: Vec<String>,
    pub expires_ms: i64,
}

/// A credential as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub id: String,
    pub kind: &'static str,
    pub subject: String,
    pub scopes: Vec<String>,
    pub label: Option<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// Why a presented credential was not accepted (for the operator's log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Unknown,
    Expired,
    Revoked,
    WrongKind,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unknown => "unknown credential",
            Rejection::Expired => "credential expired",
            Rejection::Revoked => "credential revoked",
            Rejection::WrongKind => "credential of another kind",
        }
    }
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn split_scopes(text: &str) -> Vec<String> {
    text.split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A credential as written: its secret only as a SHA-256 (hex).
#[derive(Debug, Clone)]
pub struct NewCredential<'a> {
    pub id: &'a str,
    pub kind: Kind,
    pub hash: &'a str,
    pub subject: &'a str,
    /// Space-separated.
    pub scopes: &'a str,
    pub label: Option<&'a str>,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// A credential as found by its hash, before any check.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    /// As stored: a kind this build does not know is a wrong kind.
    pub kind: String,
    pub subject: String,
    /// Space-separated.
    pub scopes: String,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// Where credential hashes are kept: sessions and API keys (T12), and
/// admin tokens (T19).
pub trait CredentialBackend {
    fn insert(&self, credential: &NewCredential<'_>) -> Result<(), StoreError>;
    /// The credential whose secret hashes to `hash` (hex SHA-256).
    fn find(&self, hash: &str) -> Result<Option<Found>, StoreError>;
    /// Revoke the unrevoked credential `id` of `kind`; false if none.
    fn revoke(&self, kind: Kind, id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Every credential of `kind`, oldest first.
    fn list(&self, kind: Kind) -> Result<Vec<Listed>, StoreError>;
    fn insert_admin_token(&self, id: &str, hash: &str, now_ms: i64) -> Result<(), StoreError>;
    /// The admin tokens' hashes (hex SHA-256), as stored.
    fn admin_token_hashes(&self) -> Result<Vec<String>, StoreError>;
    /// Remove every admin token; returns how many there were.
    fn revoke_admin_tokens(&self) -> Result<usize, StoreError>;
    /// Delete up to `max` sessions issued by sign-in (label starting with
    /// [`SIGN_IN_LABEL`]) that expired at or before `before_ms` (issue 15,
    /// T01); how many were deleted. Operators' tokens are never pruned.
    fn prune_expired_sessions(&self, before_ms: i64, max: usize) -> Result<usize, StoreError>;
    /// Revoke the live sessions issued by sign-in of `subject` beyond its
    /// `keep` newest (issue 15, T01); how many were revoked. A token an
    /// operator issued (`bulkhead token issue`) is never revoked by it.
    fn cap_sessions(&self, subject: &str, keep: usize, now_ms: i64) -> Result<usize, StoreError>;
}

/// The label every session issued by sign-in at the gateway starts with
/// (`login ISSUER`, `login HANDLE`): what the session cap and pruning
/// touch, never an operator's token.
pub const SIGN_IN_LABEL: &str = "login";

/// A backend the server's threads share.
pub type SharedCredentials = std::sync::Arc<dyn CredentialBackend + Send + Sync>;

/// Create a credential in `backend`; returns its id and the secret,
/// shown once.
pub fn issue(
    backend: &dyn CredentialBackend,
    kind: Kind,
    subject: &str,
    scopes: &[String],
    ttl_ms: i64,
    label: Option<&str>,
) -> Result<(String, String), StoreError> {
    let id = hex::encode(files::random_bytes::<6>().map_err(StoreError::Key)?);
    let secret = format!(
        "{}{}",
        kind.prefix(),
        hex::encode(files::random_bytes::<32>().map_err(StoreError::Key)?)
    );
    let now = now_ms();
    backend.insert(&NewCredential {
        id: &id,
        kind,
        hash: &digest(&secret),
        subject,
        scopes: &scopes.join(" "),
        label,
        created_ms: now,
        expires_ms: now.saturating_add(ttl_ms),
    })?;
    Ok((id, secret))
}

/// Check a presented secret of `kind` against `backend`.
pub fn verify(
    backend: &dyn CredentialBackend,
    kind: Kind,
    secret: &str,
) -> Result<Result<Grant, Rejection>, StoreError> {
    let Some(found) = backend.find(&digest(secret))? else {
        return Ok(Err(Rejection::Unknown));
    };
    if Kind::parse(&found.kind) != Some(kind) {
        return Ok(Err(Rejection::WrongKind));
    }
    if found.revoked_ms.is_some() {
        return Ok(Err(Rejection::Revoked));
    }
    if found.expires_ms <= now_ms() {
        return Ok(Err(Rejection::Expired));
    }
    Ok(Ok(Grant {
        id: found.id,
        kind,
        subject: found.subject,
        scopes: split_scopes(&found.scopes),
        expires_ms: found.expires_ms,
    }))
}

impl Store {
    /// Create a credential; returns its id and the secret, shown once.
    pub fn issue_credential(
        &self,
        kind: Kind,
        subject: &str,
        scopes: &[String],
        ttl_ms: i64,
        label: Option<&str>,
    ) -> Result<(String, String), StoreError> {
        issue(&self.connect()?, kind, subject, scopes, ttl_ms, label)
    }

    /// [`Store::issue_credential`] on `conn` (a transaction that also
    /// appends the audit record: `Store::change_audited`).
    pub fn issue_credential_in(
        &self,
        conn: &Connection,
        kind: Kind,
        subject: &str,
        scopes: &[String],
        ttl_ms: i64,
        label: Option<&str>,
    ) -> Result<(String, String), StoreError> {
        issue(conn, kind, subject, scopes, ttl_ms, label)
    }

    /// Check a presented secret of `kind` with `conn`.
    pub fn verify_credential(
        &self,
        conn: &Connection,
        kind: Kind,
        secret: &str,
    ) -> Result<Result<Grant, Rejection>, StoreError> {
        verify(conn, kind, secret)
    }

    /// A connection for the request path (one per worker, reused).
    pub fn reader(&self) -> Result<Connection, StoreError> {
        self.connect()
    }

    /// Revoke a credential of `kind` by id; false if there is none.
    pub fn revoke_credential(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        self.connect()?.revoke(kind, id, now_ms())
    }

    /// [`Store::revoke_credential`] on `conn`.
    pub fn revoke_credential_in(
        &self,
        conn: &Connection,
        kind: Kind,
        id: &str,
    ) -> Result<bool, StoreError> {
        conn.revoke(kind, id, now_ms())
    }

    pub fn list_credentials(&self, kind: Kind) -> Result<Vec<Listed>, StoreError> {
        CredentialBackend::list(&self.connect()?, kind)
    }
}

/// The error of a statement on `conn`, naming its database file.
pub(crate) fn db_error(conn: &Connection, source: rusqlite::Error) -> StoreError {
    StoreError::Db {
        path: conn.path().unwrap_or_default().into(),
        source,
    }
}

/// The embedded backend: the `credentials` and `admin_tokens` tables.
impl CredentialBackend for Connection {
    fn insert(&self, c: &NewCredential<'_>) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO credentials (id, kind, hash, subject, scopes, label, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                c.id,
                c.kind.as_str(),
                c.hash,
                c.subject,
                c.scopes,
                c.label,
                c.created_ms,
                c.expires_ms
            ],
        )
        .map_err(|e| db_error(self, e))?;
        Ok(())
    }

    fn find(&self, hash: &str) -> Result<Option<Found>, StoreError> {
        self.prepare_cached(
            "SELECT id, kind, subject, scopes, expires_ms, revoked_ms FROM credentials WHERE hash = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row([hash], |r| {
                    Ok(Found {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        subject: r.get(2)?,
                        scopes: r.get(3)?,
                        expires_ms: r.get(4)?,
                        revoked_ms: r.get(5)?,
                    })
                })
                .optional()
        })
        .map_err(|e| db_error(self, e))
    }

    fn revoke(&self, kind: Kind, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE credentials SET revoked_ms = ?1 WHERE id = ?2 AND kind = ?3 AND revoked_ms IS NULL",
                params![now_ms, id, kind.as_str()],
            )
            .map_err(|e| db_error(self, e))?;
        Ok(changed > 0)
    }

    fn list(&self, kind: Kind) -> Result<Vec<Listed>, StoreError> {
        let mut statement = self
            .prepare(
                "SELECT id, subject, scopes, label, created_ms, expires_ms, revoked_ms
                 FROM credentials WHERE kind = ?1 ORDER BY created_ms",
            )
            .map_err(|e| db_error(self, e))?;
        let rows = statement
            .query_map([kind.as_str()], |r| {
                Ok(Listed {
                    id: r.get(0)?,
                    kind: kind.as_str(),
                    subject: r.get(1)?,
                    scopes: split_scopes(&r.get::<_, String>(2)?),
                    label: r.get(3)?,
                    created_ms: r.get(4)?,
                    expires_ms: r.get(5)?,
                    revoked_ms: r.get(6)?,
                })
            })
            .map_err(|e| db_error(self, e))?;
        rows.map(|r| r.map_err(|e| db_error(self, e))).collect()
    }

    fn insert_admin_token(&self, id: &str, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO admin_tokens (id, hash, created_ms) VALUES (?1, ?2, ?3)",
            params![id, hash, now_ms],
        )
        .map_err(|e| db_error(self, e))?;
        Ok(())
    }

    fn admin_token_hashes(&self) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .prepare("SELECT hash FROM admin_tokens")
            .map_err(|e| db_error(self, e))?;
        let hashes = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(|e| db_error(self, e))?
            .filter_map(|h| h.ok())
            .collect();
        Ok(hashes)
    }

    fn revoke_admin_tokens(&self) -> Result<usize, StoreError> {
        self.execute("DELETE FROM admin_tokens", [])
            .map_err(|e| db_error(self, e))
    }

    fn prune_expired_sessions(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        self.execute(
            "DELETE FROM credentials WHERE id IN (
                 SELECT id FROM credentials WHERE kind = ?1 AND expires_ms <= ?2
                 AND substr(label, 1, 5) = 'login' LIMIT ?3)",
            params![
                Kind::Session.as_str(),
                before_ms,
                i64::try_from(max).unwrap_or(i64::MAX)
            ],
        )
        .map_err(|e| db_error(self, e))
    }

    fn cap_sessions(&self, subject: &str, keep: usize, now_ms: i64) -> Result<usize, StoreError> {
        self.execute(
            "UPDATE credentials SET revoked_ms = ?1 WHERE id IN (
                 SELECT id FROM credentials
                 WHERE kind = ?2 AND subject = ?3 AND revoked_ms IS NULL AND expires_ms > ?1
                 AND substr(label, 1, 5) = 'login'
                 ORDER BY created_ms DESC, rowid DESC LIMIT -1 OFFSET ?4)",
            params![
                now_ms,
                Kind::Session.as_str(),
                subject,
                i64::try_from(keep).unwrap_or(i64::MAX)
            ],
        )
        .map_err(|e| db_error(self, e))
    }
}

/// The server's embedded backend: connections kept for reuse, one taken
/// per call (issue 17: no connection opened per request).
pub struct SqliteCredentials {
    store: Store,
    idle: std::sync::Mutex<Vec<Connection>>,
}

impl SqliteCredentials {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            Some(conn) => conn,
            None => self.store.reader()?,
        };
        let result = work(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        result
    }
}

impl CredentialBackend for SqliteCredentials {
    fn insert(&self, credential: &NewCredential<'_>) -> Result<(), StoreError> {
        self.with(|c| c.insert(credential))
    }
    fn find(&self, hash: &str) -> Result<Option<Found>, StoreError> {
        self.with(|c| c.find(hash))
    }
    fn revoke(&self, kind: Kind, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.with(|c| c.revoke(kind, id, now_ms))
    }
    fn list(&self, kind: Kind) -> Result<Vec<Listed>, StoreError> {
        self.with(|c| CredentialBackend::list(c, kind))
    }
    fn insert_admin_token(&self, id: &str, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.with(|c| c.insert_admin_token(id, hash, now_ms))
    }
    fn admin_token_hashes(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| c.admin_token_hashes())
    }
    fn revoke_admin_tokens(&self) -> Result<usize, StoreError> {
        self.with(|c| c.revoke_admin_tokens())
    }
    fn prune_expired_sessions(&self, before_ms: i64, max: usize) -> Result<usize, StoreError> {
        self.with(|c| c.prune_expired_sessions(before_ms, max))
    }
    fn cap_sessions(&self, subject: &str, keep: usize, now_ms: i64) -> Result<usize, StoreError> {
        self.with(|c| c.cap_sessions(subject, keep, now_ms))
    }
}
