//! The key-value capability, `wasi:keyvalue@0.2.0-draft` (T13 other
//! subjects' data, T15 sealed at rest, T16 grants, T20 retention): store,
//! atomics and batch, backed by `bulkhead_store::kv` (SQLite, values
//! sealed at rest).
//!
//! - `open(name)` succeeds only for a store the function's grants name;
//!   anything else is `access-denied` (an undeclared store looks the same as
//!   an ungranted one) and audited as `capability.denied`.
//! - Under a `read` grant every write is `access-denied` and audited.
//! - A subject-scoped store confines every call to the verified subject of
//!   the request (a separate column, never a key prefix); a call without a
//!   subject (a public route) cannot open it.
//! - One `capability.used` audit record per opened bucket per call (not per
//!   operation, which would flood the chain), and one with `access =
//!   "write"` at the call's first write to a store, so the privilege review
//!   can tell a read-write grant that never writes (T16); every denial is
//!   audited. Keys and values never appear in logs or audit records.

use std::sync::Arc;

use bulkhead_manifest::StoreAccess;
use bulkhead_store::crypto::CryptoError;
use bulkhead_store::kv::{Kv, KvError, Space};
use wasmtime::component::{HasData, Linker, Resource};

use crate::data::CallData;
use crate::host::HostState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::Bucket },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use store::{Error, KeyResponse};

/// Longest key accepted, in bytes.
const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted, in bytes.
const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys in one batch call.
const MAX_BATCH: usize = 100;
/// Most key-value operations (a batch counts each key) in one call: a
/// guest cannot grind the shared database (T04).
pub(crate) const MAX_OPS_PER_CALL: usize = 10_000;

/// An opened store, as the guest holds it.
pub struct Bucket {
    name: String,
    access: StoreAccess,
    space: Space,
}

struct KvCapability;

impl HasData for KvCapability {
    type Data<'a> = &'a mut HostState;
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    store::add_to_linker::<HostState, KvCapability>(linker, |s| s)?;
    atomics::add_to_linker::<HostState, KvCapability>(linker, |s| s)?;
    batch::add_to_linker::<HostState, KvCapability>(linker, |s| s)?;
    Ok(())
}

type Outcome<T> = wasmtime::Result<Result<T, Error>>;

/// `Ok(Err(e))` to the guest on a refusal, else the value.
macro_rules! refuse_or {
    ($outcome:expr) => {
        match $outcome? {
            Ok(value) => value,
            Err(e) => return Ok(Err(e)),
        }
    };
}

/// What an operation needs once its checks have passed.
struct Prepared {
    kv: Arc<Kv>,
    space: Space,
    name: String,
}

impl HostState {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<&Bucket> {
        Ok(self.table.get(bucket)?)
    }

    /// The backend, and a refusal if this bucket may not be written.
    fn writable(&self, bucket: &Bucket, operation: &str) -> Result<Arc<Kv>, Error> {
        if !bucket.access.can_write() {
            // Fixed text: nothing is formatted before the per-call budget
            // decides whether this denial is reported in full (T09).
            let reason = match operation {
                "set" => "set under a read grant",
                "delete" => "delete under a read grant",
                "increment" => "increment under a read grant",
                "set-many" => "set-many under a read grant",
                "delete-many" => "delete-many under a read grant",
                _ => "a write under a read grant",
            };
            self.data.deny("kv", &bucket.name, reason);
            return Err(Error::AccessDenied);
        }
        self.kv_backend()
    }

    /// The checks every operation starts with: count it (each key of a
    /// batch counts), find the bucket, refuse a write (`write` names the
    /// operation) under a read grant, check the number and size of `keys`.
    fn prepare(
        &mut self,
        bucket: &Resource<Bucket>,
        write: Option<&str>,
        keys: &[&str],
    ) -> Outcome<Prepared> {
        if let Err(e) = self.spend(keys.len().max(1)) {
            return Ok(Err(e));
        }
        let b = self.bucket(bucket)?;
        let kv = match write {
            Some(operation) => self.writable(b, operation),
            None => self.kv_backend(),
        };
        let checked = kv.and_then(|kv| {
            if keys.len() > MAX_BATCH {
                return Err(Error::Other(format!("at most {MAX_BATCH} keys per batch")));
            }
            keys.iter().try_for_each(|k| check_key(k))?;
            if write.is_some() {
                self.data.used_once("kv", &b.name, "write");
            }
            Ok(Prepared {
                kv,
                space: b.space.clone(),
                name: b.name.clone(),
            })
        });
        Ok(checked)
    }

    /// Count `n` operations against the call's budget.
    fn spend(&mut self, n: usize) -> Result<(), Error> {
        let before = self.data.kv_ops;
        self.data.kv_ops = before.saturating_add(n);
        if self.data.kv_ops <= MAX_OPS_PER_CALL {
            return Ok(());
        }
        // Once per call: formatting here costs nothing a loop can repeat.
        if before <= MAX_OPS_PER_CALL {
            self.data.deny(
                "kv",
                "",
                &format!("over {MAX_OPS_PER_CALL} key-value operations in one call"),
            );
        }
        Err(Error::Other(format!(
            "at most {MAX_OPS_PER_CALL} key-value operations per call"
        )))
    }

    fn kv_backend(&self) -> Result<Arc<Kv>, Error> {
        self.data
            .plane
            .kv
            .clone()
            .ok_or_else(|| Error::Other("key-value storage is not available".into()))
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::Other(format!(
            "a key must be 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::Other(format!(
            "a value may be at most {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Run a backend operation off the async threads; backend failures are
/// logged here and reach the guest as a generic error.
async fn blocking<T: Send + 'static>(
    data: &CallData,
    store: &str,
    work: impl FnOnce() -> Result<T, KvError> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(KvError::NotACounter)) => {
            Err(Error::Other("the value is not a decimal counter".into()))
        }
        Ok(Err(KvError::Overflow)) => Err(Error::Other("counter overflow".into())),
        Ok(Err(KvError::Crypto(CryptoError::Open))) => {
            data.integrity_failure("kv", store);
            Err(Error::Other("storage error".into()))
        }
        Ok(Err(e)) => {
            data.backend_failure("kv", store, &e.to_string());
            Err(Error::Other("storage error".into()))
        }
        Err(e) => {
            data.backend_failure("kv", store, &e.to_string());
            Err(Error::Other("storage error".into()))
        }
    }
}

impl store::Host for HostState {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>> {
        let data = &self.data;
        let Some(access) = data.grants.kv.get(&identifier).copied() else {
            data.deny("kv", &identifier, "store not granted to this function");
            return Ok(Err(Error::AccessDenied));
        };
        let Some(spec) = data.plane.stores.iter().find(|s| s.name == identifier) else {
            data.deny("kv", &identifier, "store not declared");
            return Ok(Err(Error::NoSuchStore));
        };
        let subject = if spec.per_subject() {
            match data.subject() {
                Some(subject) if !subject.is_empty() => subject.to_string(),
                _ => {
                    data.deny(
                        "kv",
                        &identifier,
                        "subject-scoped store on a call without a verified subject",
                    );
                    return Ok(Err(Error::AccessDenied));
                }
            }
        } else {
            String::new()
        };
        let retention_ms = spec
            .retention()
            .map(|r| i64::try_from(r.get().as_millis()).unwrap_or(i64::MAX));
        data.used("kv", &identifier, access.as_str());
        let bucket = Bucket {
            name: identifier.clone(),
            access,
            space: Space {
                store: identifier,
                subject,
                retention_ms,
            },
        };
        Ok(Ok(self.table.push(bucket)?))
    }
}

impl store::HostBucket for HostState {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>> {
        let Prepared { kv, space, name } = refuse_or!(self.prepare(&bucket, None, &[&key]));
        Ok(blocking(&self.data, &name, move || {
            kv.get(&space, &key).map(|v| v.map(|v| v.to_vec()))
        })
        .await)
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<()> {
        let Prepared { kv, space, name } = refuse_or!(self.prepare(&bucket, Some("set"), &[&key]));
        if let Err(e) = check_value(&value) {
            return Ok(Err(e));
        }
        Ok(blocking(&self.data, &name, move || kv.set(&space, &key, &value)).await)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<()> {
        let Prepared { kv, space, name } =
            refuse_or!(self.prepare(&bucket, Some("delete"), &[&key]));
        Ok(blocking(&self.data, &name, move || kv.delete(&space, &key)).await)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<bool> {
        let Prepared { kv, space, name } = refuse_or!(self.prepare(&bucket, None, &[&key]));
        Ok(blocking(&self.data, &name, move || kv.exists(&space, &key)).await)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Outcome<KeyResponse> {
        let Prepared { kv, space, name } = refuse_or!(self.prepare(&bucket, None, &[]));
        Ok(blocking(&self.data, &name, move || {
            kv.list(&space, cursor.unwrap_or(0))
                .map(|(keys, cursor)| KeyResponse { keys, cursor })
        })
        .await)
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for HostState {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Outcome<u64> {
        let Prepared { kv, space, name } =
            refuse_or!(self.prepare(&bucket, Some("increment"), &[&key]));
        Ok(blocking(&self.data, &name, move || kv.increment(&space, &key, delta)).await)
    }
}

impl batch::Host for HostState {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>> {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let Prepared { kv, space, name } = refuse_or!(self.prepare(&bucket, None, &names));
        Ok(blocking(&self.data, &name, move || {
            keys.into_iter()
                .map(|key| Ok(kv.get(&space, &key)?.map(|v| (key, v.to_vec()))))
                .collect()
        })
        .await)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<()> {
        let names: Vec<&str> = key_values.iter().map(|(k, _)| k.as_str()).collect();
        let Prepared { kv, space, name } =
            refuse_or!(self.prepare(&bucket, Some("set-many"), &names));
        if let Err(e) = key_values.iter().try_for_each(|(_, v)| check_value(v)) {
            return Ok(Err(e));
        }
        Ok(blocking(&self.data, &name, move || {
            key_values
                .iter()
                .try_for_each(|(key, value)| kv.set(&space, key, value))
        })
        .await)
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Outcome<()> {
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let Prepared { kv, space, name } =
            refuse_or!(self.prepare(&bucket, Some("delete-many"), &names));
        Ok(blocking(&self.data, &name, move || {
            keys.iter().try_for_each(|key| kv.delete(&space, key))
        })
        .await)
    }
}
