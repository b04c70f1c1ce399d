//! Admin tokens: 256 bits of randomness, shown once, stored as SHA-256.
//! The token is high-entropy, so a fast hash is enough; digests are
//! compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::credentials::CredentialBackend;
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
        create_admin_token(conn)
    }

    /// Hashes of every admin token, for the admin listener to check against.
    pub fn admin_token_hashes(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        admin_token_hashes(&*self.lease()?)
    }

    /// Remove every admin token; returns how many there were.
    pub fn revoke_admin_tokens(&self) -> Result<usize, StoreError> {
        self.revoke_admin_tokens_in(&self.connect()?)
    }

    /// [`Store::revoke_admin_tokens`] on `conn`.
    pub fn revoke_admin_tokens_in(&self, conn: &rusqlite::Connection) -> Result<usize, StoreError> {
        conn.revoke_admin_tokens()
    }
}

/// Create an admin token in `backend`; its secret is shown once.
pub fn create_admin_token(backend: &dyn CredentialBackend) -> Result<NewToken, StoreError> {
    let id = hex::encode(files::random_bytes::<4>().map_err(StoreError::Key)?);
    let secret = format!(
        "bha_{}",
        hex::encode(files::random_bytes::<32>().map_err(StoreError::Key)?)
    );
    backend.insert_admin_token(&id, &hex::encode(digest(&secret)), now_ms())?;
    Ok(NewToken { id, secret })
}

/// Hashes of every admin token in `backend`, for the admin listener to
/// check against (a malformed stored hash matches nothing).
pub fn admin_token_hashes(backend: &dyn CredentialBackend) -> Result<Vec<[u8; 32]>, StoreError> {
    Ok(backend
        .admin_token_hashes()?
        .into_iter()
        .filter_map(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?.as_slice()).ok())
        .collect())
}

/// Does `presented` match one of `hashes`? Constant-time per comparison.
pub fn token_matches(presented: &str, hashes: &[[u8; 32]]) -> bool {
    let presented = digest(presented);
    hashes.iter().fold(false, |found, stored| {
        found | bool::from(stored.ct_eq(&presented))
    })
}
