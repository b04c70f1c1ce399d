//! Opaque credentials (T12): session tokens and API keys. Each is 256 bits
//! from the OS, shown once, and kept only as its SHA-256 beside the subject,
//! scopes and expiry. A token carries no personal data and means nothing
//! without this table; revoking or expiring it takes effect at once.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError, files, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    ApiKey,
}

impl Kind {
    fn as_str(self) -> &'static str {
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

    fn parse(text: &str) -> Option<Self> {
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
        self.issue_credential_in(&self.connect()?, kind, subject, scopes, ttl_ms, label)
    }

    /// [`Store::issue_credential`] on `conn` (a transaction that also
    /// appends the audit record: `Store::change_audited`).
    pub fn issue_credential_in(
        &self,
        conn: &rusqlite::Connection,
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
        conn.execute(
            "INSERT INTO credentials (id, kind, hash, subject, scopes, label, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                id,
                kind.as_str(),
                digest(&secret),
                subject,
                scopes.join(" "),
                label,
                now,
                now.saturating_add(ttl_ms)
            ],
        )
        .map_err(|e| self.db_error(e))?;
        Ok((id, secret))
    }

    /// Check a presented secret of `kind` with `conn`.
    pub fn verify_credential(
        &self,
        conn: &rusqlite::Connection,
        kind: Kind,
        secret: &str,
    ) -> Result<Result<Grant, Rejection>, StoreError> {
        let row: Option<(String, String, String, String, i64, Option<i64>)> = conn
            .prepare_cached(
                "SELECT id, kind, subject, scopes, expires_ms, revoked_ms FROM credentials WHERE hash = ?1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row([digest(secret)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })
                    .optional()
            })
            .map_err(|e| self.db_error(e))?;
        let Some((id, stored_kind, subject, scopes, expires_ms, revoked_ms)) = row else {
            return Ok(Err(Rejection::Unknown));
        };
        if Kind::parse(&stored_kind) != Some(kind) {
            return Ok(Err(Rejection::WrongKind));
        }
        if revoked_ms.is_some() {
            return Ok(Err(Rejection::Revoked));
        }
        if expires_ms <= now_ms() {
            return Ok(Err(Rejection::Expired));
        }
        Ok(Ok(Grant {
            id,
            kind,
            subject,
            scopes: split_scopes(&scopes),
            expires_ms,
        }))
    }

    /// A connection for the request path (one per worker, reused).
    pub fn reader(&self) -> Result<rusqlite::Connection, StoreError> {
        self.connect()
    }

    /// Revoke a credential of `kind` by id; false if there is none.
    pub fn revoke_credential(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        self.revoke_credential_in(&self.connect()?, kind, id)
    }

    /// [`Store::revoke_credential`] on `conn`.
    pub fn revoke_credential_in(
        &self,
        conn: &rusqlite::Connection,
        kind: Kind,
        id: &str,
    ) -> Result<bool, StoreError> {
        let changed = conn
            .execute(
                "UPDATE credentials SET revoked_ms = ?1 WHERE id = ?2 AND kind = ?3 AND revoked_ms IS NULL",
                params![now_ms(), id, kind.as_str()],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(changed > 0)
    }

    pub fn list_credentials(&self, kind: Kind) -> Result<Vec<Listed>, StoreError> {
        let conn = self.connect()?;
        let mut statement = conn
            .prepare(
                "SELECT id, subject, scopes, label, created_ms, expires_ms, revoked_ms
                 FROM credentials WHERE kind = ?1 ORDER BY created_ms",
            )
            .map_err(|e| self.db_error(e))?;
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
            .map_err(|e| self.db_error(e))?;
        rows.map(|r| r.map_err(|e| self.db_error(e))).collect()
    }
}
