//! Kept versions of an app (T19): `STATE/versions/vN/` holds a version's
//! files (`files/`) and its record (`version.json`: who, when, source,
//! every digest); `STATE/versions/current` names the version serving.
//!
//! A version is written whole under a staging name, synced, then renamed
//! into place; only then does `current` change, itself replaced
//! atomically. Everything is owner-only, as the rest of the state
//! directory (T15). A crash at any point leaves either the old pointer or the
//! new one, never a pointer to a partial version; leftover staging
//! directories are deleted at the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use bulkhead_store::files;
use serde::{Deserialize, Serialize};

/// Versions kept when `--keep-versions` does not say.
pub const DEFAULT_KEEP: usize = 5;
const CURRENT: &str = "current";
const RECORD: &str = "version.json";
const STAGING_PREFIX: &str = ".staging-";

/// What is known of one version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub number: u64,
    pub created_ms: i64,
    /// Who made it: an admin token's fingerprint, `SIGHUP`, `serve`.
    pub who: String,
    /// `deploy` (admin listener), `sighup`, or `serve` (APP_DIR at start).
    pub source: String,
    /// `sha256:…` of each function's component, by function name.
    pub functions: BTreeMap<String, String>,
    /// `sha256:…` of each file, by path.
    pub files: BTreeMap<String, String>,
    /// When the bundle's signature says it was signed (seconds since the
    /// epoch), when it was signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
}

pub struct Versions {
    dir: PathBuf,
}

impl Versions {
    /// The versions of the environment whose state is `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("versions");
        files::create_private_dir(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// Read-only: the versions directory, which may not exist.
    pub fn at(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("versions"),
        }
    }

    /// Delete what a deploy interrupted by a crash left behind.
    pub fn clean_staging(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// A fresh staging directory's path (not created); its `files/` is
    /// where a bundle is unpacked.
    pub fn staging(&self) -> Result<PathBuf> {
        let suffix = hex::encode(files::random_bytes::<8>().context("randomness")?);
        let path = self.dir.join(format!("{STAGING_PREFIX}{suffix}"));
        files::create_private_dir(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(path)
    }

    /// Make `staged` (its `files/` verified) the next version, recorded
    /// as `record` says; synced before it is renamed into place.
    pub fn commit(&self, staged: &Path, mut record: Record) -> Result<Record> {
        let number = self.list()?.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        record.number = number;
        record.name = format!("v{number}");
        let json = serde_json::to_vec_pretty(&record)?;
        files::write_private(&staged.join(RECORD), &[json.as_slice()])?;
        sync_tree(staged)?;
        let target = self.dir.join(&record.name);
        std::fs::rename(staged, &target)
            .with_context(|| format!("cannot move the new version to {}", target.display()))?;
        sync_dir(&self.dir)?;
        Ok(record)
    }

    /// Make `name` the version the next `serve` starts from.
    pub fn set_current(&self, name: &str) -> Result<()> {
        files::write_private(&self.dir.join(CURRENT), &[name.as_bytes()])
            .with_context(|| format!("cannot record {name} as the current version"))
    }

    /// The version serving (or the next `serve` starts from), if any.
    pub fn current(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(CURRENT)).ok()?;
        let name = text.trim();
        valid_name(name).then(|| name.to_string())
    }

    /// Every kept version, newest first.
    pub fn list(&self) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.dir.display())),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if valid_name(&name)
                && let Ok(record) = self.record(&name)
            {
                records.push(record);
            }
        }
        records.sort_by_key(|r| std::cmp::Reverse(r.number));
        Ok(records)
    }

    /// The record of the kept version `name`.
    pub fn record(&self, name: &str) -> Result<Record> {
        if !valid_name(name) {
            bail!("`{name}` is not a version name (like v3)");
        }
        let path = self.dir.join(name).join(RECORD);
        let text = std::fs::read(&path).with_context(|| format!("no version {name}"))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// The app files of the kept version `name`.
    pub fn files(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("files")
    }

    /// Delete the oldest versions past `keep`, never the current one.
    pub fn prune(&self, keep: usize) -> Result<Vec<String>> {
        let current = self.current();
        let mut deleted = Vec::new();
        for record in self.list()?.into_iter().skip(keep.max(1)) {
            if Some(&record.name) == current.as_ref() {
                continue;
            }
            std::fs::remove_dir_all(self.dir.join(&record.name))
                .with_context(|| format!("cannot delete version {}", record.name))?;
            deleted.push(record.name);
        }
        Ok(deleted)
    }
}

/// `v` and digits: the only names a version directory has.
fn valid_name(name: &str) -> bool {
    name.len() > 1
        && name.len() <= 20
        && name.starts_with('v')
        && name[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Sync every file and directory under `dir` (the version is durable
/// before its rename makes it visible).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}
