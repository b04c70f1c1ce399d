//! Secrets and plain config, `wasi:config/store@0.2.0-rc.1` (T14, T16).
//!
//! `get(key)` returns a secret the function's grants name (decrypted from
//! the store) or a `[config]` value they name; anything else is `none`,
//! logged and audited as `capability.denied`. Every secret read is audited
//! with its name, never its value, and the value joins the call's
//! redaction list: it is replaced by `[REDACTED]` in the guest's captured
//! output and in the errors logged for the call. A granted config key read
//! is audited once per call (`capability = "config"`), so the privilege
//! review can tell a config grant that is never read (T16).

use bulkhead_store::crypto::CryptoError;
use bulkhead_store::secrets::SecretError;
use secrecy::ExposeSecret;
use wasmtime::component::{HasData, Linker};

use crate::data::CallData;
use crate::host::HostState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/config",
        world: "wasi:config/imports",
        imports: { default: async | trappable },
    });
}

use bindings::wasi::config::store::{self, Error};

struct ConfigCapability;

impl HasData for ConfigCapability {
    type Data<'a> = &'a mut HostState;
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    store::add_to_linker::<HostState, ConfigCapability>(linker, |s| s)
}

/// A granted secret's value, audited; `Err` on a backend failure.
async fn read_secret(data: &CallData, name: &str) -> Result<Option<String>, Error> {
    {
        let source = data.plane.clone();
        if source.secrets.is_none() {
            data.backend_failure("secrets", name, "no secret store is open");
            return Err(Error::Io("secrets are not available".into()));
        }
        let owned = name.to_string();
        let result = tokio::task::spawn_blocking(move || {
            let Some(source) = source.secrets.as_ref() else {
                return Ok(None);
            };
            source.secrets.get(&*source.backend, &owned)
        })
        .await;
        match result {
            Ok(Ok(Some(value))) => {
                data.used("secret", name, "read");
                let text = value.expose_secret().to_string();
                data.redactions().add(value);
                Ok(Some(text))
            }
            Ok(Ok(None)) => {
                // Granted but never set: the operator should know.
                data.deny(
                    "secret",
                    name,
                    "granted secret is not set (bulkhead secrets set)",
                );
                Ok(None)
            }
            Ok(Err(SecretError::Crypto(CryptoError::Open))) => {
                data.integrity_failure("secret", name);
                Err(Error::Io("secret store error".into()))
            }
            Ok(Err(e)) => {
                data.backend_failure("secrets", name, &e.to_string());
                Err(Error::Io("secret store error".into()))
            }
            Err(e) => {
                data.backend_failure("secrets", name, &e.to_string());
                Err(Error::Io("secret store error".into()))
            }
        }
    }
}

impl store::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        let data = &self.data;
        if data.grants.secrets.contains(&key) {
            return Ok(read_secret(&self.data, &key).await);
        }
        if data.grants.config.contains(&key) {
            data.used_once("config", &key, "read");
            return Ok(Ok(data.plane.config.get(&key).cloned()));
        }
        data.deny("config", &key, "key not granted to this function");
        Ok(Ok(None))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, Error>> {
        let mut all = Vec::new();
        for key in &self.data.grants.config {
            self.data.used_once("config", key, "read");
            if let Some(value) = self.data.plane.config.get(key) {
                all.push((key.clone(), value.clone()));
            }
        }
        let secrets = self.data.grants.secrets.clone();
        for name in secrets {
            match read_secret(&self.data, &name).await {
                Ok(Some(value)) => all.push((name, value)),
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(all))
    }
}
