//! Kept versions of an app (T19): `STATE/versions/vN/` holds a version's
//! files (`files/`) and its record (`version.json`: who, when, source,
//! every digest); `STATE/versions/current` names the version serving.
//!
//! A version is written whole, synced, then its record is written
//! atomically (a directory without one is not a version); only then does
//! `current` change, itself replaced atomically. Everything is owner-only, as the rest of the state
//! directory (T15). A crash at any point leaves either the old pointer or the
//! new one, never a pointer to a partial version; unfinished version
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
            let name = entry.file_name().to_string_lossy().into_owned();
            let unfinished = valid_name(&name) && !entry.path().join(RECORD).is_file();
            if unfinished || name.starts_with(STAGING_PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// The next version's directory, created empty (owner-only); its
    /// `files/` is where a bundle is unpacked. It is a version only once
    /// [`Self::commit`] writes its record: the app is loaded from here,
    /// so the paths it holds stay valid once it serves. Call under the
    /// deploy lock.
    pub fn staging(&self) -> Result<PathBuf> {
        let highest = std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                valid_name(&name)
                    .then(|| name[1..].parse::<u64>().ok())
                    .flatten()
            })
            .max()
            .unwrap_or(0);
        let path = self.dir.join(format!("v{}", highest + 1));
        // Exclusive: never into a directory already there.
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(path)
    }

    /// Make `staged` (its `files/` verified) a version, recorded as
    /// `record` says: every file synced, then the record written
    /// atomically (what makes it a version), then the directory synced.
    pub fn commit(&self, staged: &Path, mut record: Record) -> Result<Record> {
        let name = staged
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| valid_name(n))
            .with_context(|| format!("{} is not a version directory", staged.display()))?;
        record.number = name[1..].parse().unwrap_or(0);
        record.name = name;
        sync_tree(staged)?;
        let json = serde_json::to_vec_pretty(&record)?;
        files::write_private(&staged.join(RECORD), &[json.as_slice()])?;
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

    /// Check version `name`'s files against the digests its record holds
    /// (T19): a file changed, or gone, since the version was kept is a
    /// problem naming it and both digests. (Whoever can rewrite the record
    /// too is out of reach of this check.)
    pub fn verify_files(&self, name: &str) -> Result<(), Vec<String>> {
        use sha2::Digest as _;
        let record = self.record(name).map_err(|e| vec![format!("{e:#}")])?;
        let dir = self.files(name);
        let fix = format!(
            "the kept version {name} was changed on disk after it was deployed; restore it, or roll back offline to another version (`bulkhead rollback APP_DIR --env ENV --to VERSION`) and deploy again"
        );
        let mut problems = Vec::new();
        for (path, recorded) in &record.files {
            let file = dir.join(path);
            match std::fs::read(&file) {
                Ok(bytes) => {
                    let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
                    if actual != *recorded {
                        problems.push(format!(
                            "{}: `{path}` is {actual}, but {name}'s record says {recorded}; {fix}",
                            file.display()
                        ));
                    }
                }
                Err(e) => problems.push(format!(
                    "{}: `{path}` cannot be read ({e}), but {name}'s record lists it as {recorded}; {fix}",
                    file.display()
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
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
