//! Where an app environment's state lives, opened in one place. Each kind
//! of state has a backend trait beside its capability (like Spin's
//! key-value factor and its `StoreManager`):
//!
//! | state | trait | embedded (SQLite) |
//! |---|---|---|
//! | key-value | [`KvBackend`](crate::kv::KvBackend) | [`SqliteKv`](crate::kv::SqliteKv), `Connection` |
//! | secrets | [`SecretBackend`](crate::secrets::SecretBackend) | `Connection` |
//! | sessions, API keys, admin tokens | [`CredentialBackend`](crate::credentials::CredentialBackend) | [`SqliteCredentials`](crate::credentials::SqliteCredentials), `Connection` |
//! | wrapped data keys | [`DataKeyBackend`](crate::crypto::DataKeyBackend) | [`SqliteKeys`](crate::crypto::SqliteKeys) (`keys.db`) |
//!
//! | queues (issue 18) | [`QueueBackend`](crate::queue::QueueBackend) | [`SqliteQueue`](crate::queue::SqliteQueue) |
//!
//! With [`StateConfig::Postgres`] all five are in PostgreSQL, in the app
//! environment's schema ([`crate::kv::PostgresKv`], [`crate::pg`],
//! [`crate::queue::PostgresQueue`]), so every node shares them, and so is
//! the daily budgets' ledger ([`crate::ledger::SharedLedger`]; on one node
//! it is the gateway's in-memory ledger, rebuilt from the meter), and the
//! deployment's audit chain ([`crate::audit_chain::SharedTrail`]: each
//! node's trail, written locally first, shipped into one chain) and the
//! hourly meter ([`State::meter_log`]); SQL stores stay in the node's
//! state directory for now.
//!
//! Sealing (T15) and every check (expiry, revocation, subject scope) stay
//! above the traits, so a backend only ever sees sealed blobs and hashes.
//! [`State::open`] is the one place a [`StateConfig`] becomes backends; the
//! runtime and the gateway take them from the [`State`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::credentials::{SharedCredentials, SqliteCredentials};
use crate::crypto::{CryptoError, KeyStore, Keyring, MASTER_KEY_ENV, MasterKey};
use crate::deploy_channel::DeployChannel;
use crate::kv::{KvError, PgConfig, PostgresKv, SharedKv, SqliteKv, valid_schema};
use crate::ledger::SharedLedger;
use crate::pg::{Pg, PostgresCredentials, PostgresKeys, PostgresSecrets};
use crate::queue::{
    Clock, PostgresQueue, QueueError, QueueLimits, QueueSettings, SharedQueue, SqliteQueue,
};
use crate::secrets::SharedSecrets;
use crate::{Held, Store, StoreError};

/// Which backends hold an app environment's state.
#[derive(Debug, Clone)]
pub enum StateConfig {
    /// SQLite files in one directory per app and environment (the default:
    /// nothing to install).
    Embedded { dir: PathBuf },
    /// Key-value records, wrapped data keys, secrets, credentials and
    /// queues in PostgreSQL (issues 16, 18), in the schema `postgres`
    /// names, so every node of a deployment shares them; everything else
    /// (audit trail, meter, SQL stores) still in `dir`, for now.
    Postgres { dir: PathBuf, postgres: PgConfig },
}

impl StateConfig {
    /// PostgreSQL at `url` for app `app` in environment `env`: the schema
    /// is named after both ([`schema_for`]).
    pub fn postgres(
        dir: PathBuf,
        url: impl Into<secrecy::SecretString>,
        app: &str,
        env: &str,
    ) -> Self {
        Self::Postgres {
            dir,
            postgres: PgConfig {
                url: url.into(),
                schema: schema_for(app, env),
            },
        }
    }
}

/// The PostgreSQL schema of `app` in `env`: `bh_APP_ENV` with anything
/// but a-z and 0-9 made `_`; when that changed or cut the names, a hash of
/// them is appended, so two apps never share a schema.
pub fn schema_for(app: &str, env: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '_',
            })
            .collect()
    };
    let plain = format!("bh_{}_{}", clean(app), clean(env));
    if plain == format!("bh_{app}_{env}") && valid_schema(&plain) {
        return plain;
    }
    let digest = Sha256::digest(format!("{app}\0{env}").as_bytes());
    let mut schema: String = plain.chars().take(33).collect();
    schema.push('_');
    schema.push_str(&hex::encode(&digest[..8]));
    schema
}

/// Usage admitted on a node's share that the budget ledger had not taken
/// at its last stop (issue 16, T04), in the node's state directory.
pub const LEDGER_CARRIED_FILE: &str = "ledger-carried.json";
/// Meter rows the shared meter had not taken at the last stop.
pub const METER_CARRIED_FILE: &str = "meter-carried.json";

/// The opened state of one app environment. Cheap to clone: every clone
/// shares the same backends.
#[derive(Clone)]
pub struct State {
    store: Store,
    /// The shared key-value backend, when not the embedded one.
    kv: Option<SharedKv>,
    /// The shared data keys, secrets and credentials, when not embedded.
    pg: Option<Arc<Pg>>,
    credentials: SharedCredentials,
    /// The connection held open while the state is (issue 17).
    held: Arc<Held>,
}

impl State {
    /// Open (creating and migrating if needed) the state `config` names.
    pub fn open(config: &StateConfig) -> Result<Self, StoreError> {
        let (dir, kv, pg) = match config {
            StateConfig::Embedded { dir } => (dir, None, None),
            StateConfig::Postgres { dir, postgres } => {
                // First: it names what to do when the database cannot be
                // reached, and creates the schema under its lock.
                let pg = Pg::open(postgres).map_err(|e| StoreError::Backend(e.to_string()))?;
                let kv: SharedKv = Arc::new(
                    PostgresKv::open(postgres).map_err(|e| StoreError::Backend(e.to_string()))?,
                );
                (dir, Some(kv), Some(pg))
            }
        };
        let (store, held) = Store::open_held(dir)?;
        let credentials: SharedCredentials = match &pg {
            Some(pg) => Arc::new(PostgresCredentials::new(pg.clone())),
            None => Arc::new(SqliteCredentials::new(store.clone())),
        };
        Ok(Self {
            credentials,
            store,
            kv,
            pg,
            held: Arc::new(held),
        })
    }

    /// The shared database, when the state is on PostgreSQL (its SQL
    /// stores live there too).
    pub fn postgres(&self) -> Option<&Arc<Pg>> {
        self.pg.as_ref()
    }

    /// Whether the state is shared with other nodes (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.pg.is_some()
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
    /// a backend. Shared by every node on PostgreSQL, where each node must
    /// hold the same master key: a `dev` key generated in one node's state
    /// directory is refused there (T15).
    pub fn keyring(&self, env: &str) -> Result<Keyring, CryptoError> {
        if self.pg.is_none() {
            return Keyring::open(self.store.dir(), env);
        }
        if std::env::var_os(MASTER_KEY_ENV).is_none_or(|v| v.is_empty()) {
            return Err(CryptoError::SharedNoMasterKey);
        }
        let master = MasterKey::load(self.store.dir(), env)?;
        Ok(Keyring::new(master, self.key_store()?))
    }

    /// The wrapped data keys, without the master key (erasure, T20).
    pub fn key_store(&self) -> Result<KeyStore, CryptoError> {
        match &self.pg {
            Some(pg) => Ok(KeyStore::new(Box::new(PostgresKeys::new(pg.clone())))),
            None => KeyStore::open(self.store.dir()),
        }
    }

    /// The secrets backend when it is not the state database (PostgreSQL):
    /// CLI commands write there, and their audit record in the trail.
    pub fn shared_secrets(&self) -> Option<SharedSecrets> {
        self.pg
            .as_ref()
            .map(|pg| Box::new(PostgresSecrets::new(pg.clone())) as SharedSecrets)
    }

    /// The credentials backend when it is not the state database.
    pub fn shared_credentials(&self) -> Option<SharedCredentials> {
        self.pg.as_ref().map(|_| self.credentials.clone())
    }

    /// The app's queues (issue 18): in PostgreSQL when the state is
    /// shared, so every node leases from the same queues; else in the
    /// state database. Messages are sealed under a data key of `keyring`
    /// (T14), which on PostgreSQL every node shares.
    pub fn queue(
        &self,
        keyring: &Keyring,
        queues: Vec<QueueSettings>,
        limits: QueueLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<SharedQueue, QueueError> {
        Ok(match &self.pg {
            Some(pg) => Arc::new(PostgresQueue::open(
                pg.clone(),
                keyring,
                queues,
                limits,
                clock,
            )?),
            None => Arc::new(SqliteQueue::open(
                &self.store,
                keyring,
                queues,
                limits,
                clock,
            )?),
        })
    }

    /// The budget ledger every node shares (issue 16, T04), when the
    /// state is: budgets then hold across nodes. Each call registers a
    /// node with a heartbeat of its own: a server opens it once.
    pub fn budget_ledger(&self) -> Result<Option<Arc<SharedLedger>>, StoreError> {
        match &self.pg {
            Some(pg) => {
                let ledger = SharedLedger::open(pg.clone())
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                ledger.carry_in(self.store.dir().join(LEDGER_CARRIED_FILE));
                Ok(Some(ledger))
            }
            None => Ok(None),
        }
    }

    /// The deployment's audit chain (issue 16, T09), when the state is
    /// shared: this node's trail is shipped into it. Its head is MAC'd
    /// under a data key of `keyring`, which every node shares.
    pub fn shared_trail(
        &self,
        keyring: &Keyring,
    ) -> Result<Option<Arc<crate::audit_chain::SharedTrail>>, StoreError> {
        match &self.pg {
            Some(pg) => {
                crate::audit_chain::SharedTrail::open(pg.clone(), &self.store, keyring).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The meter's writer: into the deployment's `meters` table when the
    /// state is shared (issue 16), else the state directory's.
    pub fn meter_log(&self) -> Result<crate::meter::MeterLog, StoreError> {
        match &self.pg {
            Some(pg) => crate::meter::MeterLog::start_shared(
                pg.clone(),
                self.store.dir().join(METER_CARRIED_FILE),
            ),
            None => crate::meter::MeterLog::start(&self.store),
        }
    }

    /// Every meter row from `since_hour` on: the deployment's when the
    /// state is shared (every node's calls), else this directory's.
    pub fn usage_since(&self, since_hour: i64) -> Result<Vec<crate::meter::UsageRow>, StoreError> {
        match &self.pg {
            Some(pg) => crate::meter::usage_since_shared(pg, since_hour),
            None => crate::meter::usage_since(&self.store, since_hour),
        }
    }

    /// Verify the deployment's audit chain, when the state is shared
    /// (and that it still holds what this node appended last).
    pub fn verify_shared_trail(
        &self,
        keyring: &Keyring,
    ) -> Result<Option<crate::audit_chain::ChainVerification>, StoreError> {
        match &self.pg {
            Some(pg) => {
                crate::audit_chain::SharedTrail::verify(pg, keyring, self.store.dir()).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Where deploys fan out to every node (issue 16, T19), when the
    /// state is shared.
    pub fn deploy_channel(&self) -> Result<Option<Arc<DeployChannel>>, StoreError> {
        match &self.pg {
            Some(pg) => DeployChannel::open(pg.clone())
                .map(|c| Some(Arc::new(c)))
                .map_err(|e| StoreError::Backend(e.to_string())),
            None => Ok(None),
        }
    }

    /// A key-value backend for the server's threads to share.
    pub fn kv(&self) -> Result<SharedKv, KvError> {
        if let Some(kv) = &self.kv {
            return Ok(kv.clone());
        }
        Ok(Arc::new(SqliteKv::open(&self.store)?))
    }

    /// A secrets backend for the server's threads to share.
    pub fn secrets(&self) -> Result<SharedSecrets, StoreError> {
        if let Some(shared) = self.shared_secrets() {
            return Ok(shared);
        }
        Ok(Box::new(Mutex::new(self.store.connect()?)))
    }

    /// At a clean shutdown (issue 17, see [`Held::checkpoint`]).
    pub fn checkpoint(&self) {
        self.held.checkpoint();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_valid_and_distinct() {
        assert_eq!(schema_for("conference", "prod"), "bh_conference_prod");
        let odd = schema_for("My-App", "prod");
        assert!(valid_schema(&odd), "{odd}");
        assert_ne!(odd, schema_for("my_app", "prod"));
        let long = schema_for(&"a".repeat(200), "staging");
        assert!(valid_schema(&long), "{long}");
        assert_ne!(long, schema_for(&"a".repeat(201), "staging"));
    }
}
