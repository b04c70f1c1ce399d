//! The compile cache: native code for each component, keyed by the
//! component's SHA-256 and the engine's settings, so a restart does not
//! recompile.
//!
//! wasmtime trusts the bytes it deserializes (forged bytes would be native
//! code), so every entry carries an HMAC-SHA256 under a key that only this
//! host holds (`cache.key`, mode 0600). The MAC covers the engine's
//! settings hash, the component's SHA-256 and the artefact, so an entry is
//! accepted only for the exact component and engine it was built from: a
//! valid entry copied over another component's file name fails the check
//! (T18). An entry that fails the check is never loaded: it is compiled
//! again and replaced. Entries no deploy uses any more are pruned
//! ([`CompileCache::prune`]), so an older build is not left lying around.

use std::collections::HashSet;
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
const ENTRY_EXTENSION: &str = "cwasm";
/// The entry format: a new one gives every entry a new name, so entries of
/// an older format are never read, only pruned.
const FORMAT: &[u8] = b"bulkhead-compile-cache-v2";

pub struct CompileCache {
    dir: PathBuf,
    mac_key: [u8; 32],
    engine_hash: [u8; 32],
    /// The entries used since this cache was opened: what a prune keeps.
    used: std::sync::Mutex<HashSet<PathBuf>>,
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
        // Entries written by an older version, or copied in loosely, are
        // owner-only like everything under `.bulkhead` (T17).
        let entries = fs::read_dir(dir).map_err(|e| io("cannot list", e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == ENTRY_EXTENSION) {
                files::make_private(&path).map_err(|e| io("cannot make private an entry in", e))?;
            }
        }
        let mut hasher = StableHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            mac_key,
            engine_hash: hasher.0.finalize().into(),
            used: std::sync::Mutex::new(HashSet::new()),
        })
    }

    /// Where the entry for this component lives. The name is only an
    /// index; what binds an entry to its component is the MAC.
    fn entry_path(&self, wasm_sha256: &[u8; 32]) -> PathBuf {
        let mut key = Sha256::new();
        key.update(FORMAT);
        key.update(self.engine_hash);
        key.update(wasm_sha256);
        self.dir
            .join(format!("{}.{ENTRY_EXTENSION}", hex::encode(key.finalize())))
    }

    /// The MAC of an entry for the component `wasm_sha256` built by this
    /// engine: fixed-length fields first, then the artefact (T18).
    fn mac(&self, wasm_sha256: &[u8; 32], artefact: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.mac_key).unwrap_or_else(|_| unreachable!());
        mac.update(FORMAT);
        mac.update(&self.engine_hash);
        mac.update(wasm_sha256);
        mac.update(artefact);
        mac
    }

    /// The component for `wasm`, from the cache when a valid entry exists.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_sha256: &[u8; 32],
    ) -> Result<(Component, CacheOutcome), RuntimeError> {
        let path = self.entry_path(wasm_sha256);
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone());
        let outcome = match fs::read(&path) {
            Ok(entry) => match self.verified(&entry, wasm_sha256) {
                Some(artefact) => {
                    // SAFETY: the bytes carry a MAC only this host can make,
                    // over this engine's settings hash, this component's
                    // SHA-256 and the bytes themselves: they are the
                    // unmodified output of this engine for this component.
                    match unsafe { Component::deserialize(engine, artefact) } {
                        Ok(component) => return Ok((component, CacheOutcome::Hit)),
                        Err(_) => CacheOutcome::Rejected,
                    }
                }
                None => CacheOutcome::Rejected,
            },
            Err(_) => CacheOutcome::Miss,
        };
        // Compiling a component nested thousands of levels deep takes
        // gigabytes (T05 at deploy): refuse it before wasmtime sees it.
        crate::imports::check_nesting(wasm).map_err(RuntimeError::Compile)?;
        let component =
            Component::new(engine, wasm).map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        let artefact = component
            .serialize()
            .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        self.store(&path, wasm_sha256, &artefact)?;
        Ok((component, outcome))
    }

    /// Delete every entry not used since the cache was opened: entries of
    /// other engine settings, of components no longer deployed and of
    /// superseded builds. Call it once every function is loaded. Returns
    /// how many were deleted.
    pub fn prune(&self) -> Result<usize, RuntimeError> {
        let used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| RuntimeError::Cache(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut pruned = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == ENTRY_EXTENSION) && !used.contains(&path) {
                fs::remove_file(&path).map_err(|e| {
                    RuntimeError::Cache(format!("cannot delete {}: {e}", path.display()))
                })?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    fn verified<'a>(&self, entry: &'a [u8], wasm_sha256: &[u8; 32]) -> Option<&'a [u8]> {
        if entry.len() < MAC_LEN {
            return None;
        }
        let (tag, artefact) = entry.split_at(MAC_LEN);
        self.mac(wasm_sha256, artefact).verify_slice(tag).ok()?;
        Some(artefact)
    }

    fn store(
        &self,
        path: &Path,
        wasm_sha256: &[u8; 32],
        artefact: &[u8],
    ) -> Result<(), RuntimeError> {
        let tag = self.mac(wasm_sha256, artefact).finalize().into_bytes();
        files::write_private(path, &[&tag, artefact])
            .map_err(|e| RuntimeError::Cache(format!("cannot write {}: {e}", path.display())))
    }
}
