//! The compile cache: native code for each component, keyed by the
//! component's SHA-256 and the engine's settings, so a restart does not
//! recompile.
//!
//! wasmtime trusts the bytes it deserializes (forged bytes would be native
//! code), so every entry carries an HMAC-SHA256 under a key that only this
//! host holds (`cache.key`, mode 0600). An entry that fails the check is
//! never loaded: it is compiled again and replaced (T18).

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use bulkhead_store::files;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::RuntimeError;

type HmacSha256 = Hmac<Sha256>;

const KEY_FILE: &str = "cache.key";
const MAC_LEN: usize = 32;

pub struct CompileCache {
    dir: PathBuf,
    mac_key: [u8; 32],
    engine_hash: [u8; 32],
}

/// Where a component came from this time: the cache or the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    /// Compiled because there was no entry.
    Miss,
    /// Compiled because the entry failed its integrity check.
    Rejected,
}

/// Feeds wasmtime's compatibility hash into SHA-256, which (unlike
/// `DefaultHasher`) is stable across Rust releases.
struct StableHasher(Sha256);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

impl CompileCache {
    /// Open (creating if needed) the cache in `dir` for `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, RuntimeError> {
        let io = |what: &str, e: std::io::Error| {
            RuntimeError::Cache(format!("{what} {}: {e}", dir.display()))
        };
        files::create_private_dir(dir)
            .map_err(|e| io("cannot create the compile cache directory", e))?;
        // A lost or damaged key only costs a recompile: start afresh.
        let key_path = dir.join(KEY_FILE);
        let mac_key = files::load_or_create_key(&key_path)
            .or_else(|_| {
                let _ = fs::remove_file(&key_path);
                files::load_or_create_key(&key_path)
            })
            .map_err(|e| io("cannot read or create the cache key in", e))?;
        let mut hasher = StableHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            mac_key,
            engine_hash: hasher.0.finalize().into(),
        })
    }

    fn entry_path(&self, wasm_sha256: &[u8; 32]) -> PathBuf {
        let mut key = Sha256::new();
        key.update(self.engine_hash);
        key.update(wasm_sha256);
        self.dir
            .join(format!("{}.cwasm", hex::encode(key.finalize())))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.mac_key).unwrap_or_else(|_| unreachable!())
    }

    /// The component for `wasm`, from the cache when a valid entry exists.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &[u8; 32],
    ) -> Result<(Component, CacheOutcome), RuntimeError> {
        let path = self.entry_path(wasm_sha256);
        let outcome = match fs::read(&path) {
            Ok(entry) => match self.verified(&entry) {
                Some(artefact) => {
                    // SAFETY: the bytes were produced by this host's engine
                    // (the compatibility hash is in the key) and carry a MAC
                    // only this host can make, so they are unmodified.
                    match unsafe { Component::deserialize(engine, artefact) } {
                        Ok(component) => return Ok((component, CacheOutcome::Hit)),
                        Err(_) => CacheOutcome::Rejected,
                    }
                }
                None => CacheOutcome::Rejected,
            },
            Err(_) => CacheOutcome::Miss,
        };
        let component =
            Component::new(engine, wasm).map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        let artefact = component
            .serialize()
            .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        self.store(&path, &artefact)?;
        Ok((component, outcome))
    }

    fn verified<'a>(&self, entry: &'a [u8]) -> Option<&'a [u8]> {
        if entry.len() < MAC_LEN {
            return None;
        }
        let (tag, artefact) = entry.split_at(MAC_LEN);
        let mut mac = self.mac();
        mac.update(artefact);
        mac.verify_slice(tag).ok()?;
        Some(artefact)
    }

    fn store(&self, path: &Path, artefact: &[u8]) -> Result<(), RuntimeError> {
        let mut mac = self.mac();
        mac.update(artefact);
        let tag = mac.finalize().into_bytes();
        files::write_private(path, &[&tag, artefact])
            .map_err(|e| RuntimeError::Cache(format!("cannot write {}: {e}", path.display())))
    }
}
