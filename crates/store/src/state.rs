//! Where an app environment's state lives, opened in one place. Each kind
//! of state has a backend trait beside its capability (like Spin's
//! key-value factor and its `StoreManager`):
//!
//! | state | trait | embedded (SQLite) |
//! |---|---|---|
//! | key-value | [`KvBackend`](crate::kv::KvBackend) | [`SqliteKv`](crate::kv::SqliteKv), `Connection` |
//! | secrets | [`SecretBackend`](crate::secrets::SecretBackend) | `Connection` |
//! | sessions, API keys, admin tokens | [`CredentialBackend`](crate::credentials::CredentialBackend) | [`SqliteCredentials`](crate::credentials::SqliteCredentials), `Connection` |
//!
//! Sealing (T15) and every check (expiry, revocation, subject scope) stay
//! above the traits, so a backend only ever sees sealed blobs and hashes.
//! [`State::open`] is the one place a [`StateConfig`] becomes backends; the
//! runtime and the gateway take them from the [`State`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::credentials::{SharedCredentials, SqliteCredentials};
use crate::crypto::{CryptoError, Keyring};
use crate::kv::{KvError, SharedKv, SqliteKv};
use crate::secrets::SharedSecrets;
use crate::{Held, Store, StoreError};

/// Which backends hold an app environment's state.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// SQLite files in one directory per app and environment (the default:
    /// nothing to install).
    Embedded { dir: PathBuf },
}

/// The opened state of one app environment. Cheap to clone: every clone
/// shares the same backends.
#[derive(Clone)]
pub struct State {
    store: Store,
    credentials: SharedCredentials,
    /// The connection held open while the state is (issue 17).
    held: Arc<Held>,
}

impl State {
    /// Open (creating and migrating if needed) the state `config` names.
    pub fn open(config: &StateConfig) -> Result<Self, StoreError> {
        match config {
            StateConfig::Embedded { dir } => {
                let (store, held) = Store::open_held(dir)?;
                Ok(Self {
                    credentials: Arc::new(SqliteCredentials::new(store.clone())),
                    store,
                    held: Arc::new(held),
                })
            }
        }
    }

    /// The state directory: the audit trail, the meter, the data keys and
    /// what stays embedded on every backend.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sessions, API keys and admin tokens.
    pub fn credentials(&self) -> &SharedCredentials {
        &self.credentials
    }

    /// The keyring of environment `env`: the master key and the data keys
    /// it wraps, which seal key-value records and secrets before they reach
    /// a backend.
    pub fn keyring(&self, env: &str) -> Result<Keyring, CryptoError> {
        Keyring::open(self.store.dir(), env)
    }

    /// A key-value backend for the server's threads to share.
    pub fn kv(&self) -> Result<SharedKv, KvError> {
        Ok(Arc::new(SqliteKv::open(&self.store)?))
    }

    /// A secrets backend for the server's threads to share.
    pub fn secrets(&self) -> Result<SharedSecrets, StoreError> {
        Ok(Box::new(Mutex::new(self.store.connect()?)))
    }

    /// At a clean shutdown (issue 17, see [`Held::checkpoint`]).
    pub fn checkpoint(&self) {
        self.held.checkpoint();
    }
}
