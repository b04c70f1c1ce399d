//! Admin tokens: 256 bits of randomness, shown once, stored as SHA-256.
//! The token is high-entropy, so a fast hash is enough; digests are
//! compared in constant time.

use rusqlite::params;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::{Store, StoreError, files, now_ms};

/// A freshly created token: `secret` is shown once and never stored.
pub struct NewToken {
    pub id: String,
    pub secret: String,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Store {
    pub fn create_admin_token(&self) -> Result<NewToken, StoreError> {
        self.create_admin_token_in(&self.connect()?)
    }

    /// [`Store::create_admin_token`] on `conn` (a transaction that also
    /// appends the audit record: `Store::change_audited`).
    pub fn create_admin_token_in(
        &self,
        conn: &rusqlite::Connection,
    ) -> Result<NewToken, StoreError> {
        let id = hex::encode(files::random_bytes::<4>().map_err(StoreError::Key)?);
        let secret = format!(
            "bha_{}",
            hex::encode(files::random_bytes::<32>().map_err(StoreError::Key)?)
        );
        conn.execute(
            "INSERT INTO admin_tokens (id, hash, created_ms) VALUES (?1, ?2, ?3)",
            params![id, hex::encode(digest(&secret)), now_ms()],
        )
        .map_err(|e| self.db_error(e))?;
        Ok(NewToken { id, secret })
    }

    /// Hashes of every admin token, for the admin listener to check against.
    pub fn admin_token_hashes(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let conn = self.lease()?;
        let mut statement = conn
            .prepare("SELECT hash FROM admin_tokens")
            .map_err(|e| self.db_error(e))?;
        let hashes = statement
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(|e| self.db_error(e))?
            .filter_map(|h| h.ok())
            .filter_map(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?.as_slice()).ok())
            .collect();
        Ok(hashes)
    }

    /// Remove every admin token; returns how many there were.
    pub fn revoke_admin_tokens(&self) -> Result<usize, StoreError> {
        self.revoke_admin_tokens_in(&self.connect()?)
    }

    /// [`Store::revoke_admin_tokens`] on `conn`.
    pub fn revoke_admin_tokens_in(&self, conn: &rusqlite::Connection) -> Result<usize, StoreError> {
        conn.execute("DELETE FROM admin_tokens", [])
            .map_err(|e| self.db_error(e))
    }
}

/// Does `presented` match one of `hashes`? Constant-time per comparison.
pub fn token_matches(presented: &str, hashes: &[[u8; 32]]) -> bool {
    let presented = digest(presented);
    hashes.iter().fold(false, |found, stored| {
        found | bool::from(stored.ct_eq(&presented))
    })
}
