//! Deploy bundles (T19, T18): an app's deployable files in one tar
//! archive with an index of each file's SHA-256 (`bulkhead-bundle.json`).
//!
//! Packing takes exactly the files the manifest names (the manifest and
//! the lock with their `.minisig`, components with theirs, the `[trust]`
//! public keys, body schemas, the JWKS file, migrations): never the
//! `.bulkhead/` state, never a private key (the server carries the `[tls]`
//! files and the JWE key over from the version it serves).
//!
//! Unpacking treats the archive as hostile: only regular files, at
//! relative, normal paths (no `..`, no absolute path, no hidden component,
//! so never `.bulkhead/`), bounded in count and size, written into a fresh
//! directory with exclusive creates; a file not in the index, an index
//! entry with no file, or a digest that does not match is refused. Every
//! problem is reported, not just the first.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};

use bulkhead_manifest::{App, LOCK_FILE, MANIFEST_FILE};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The index's name inside the archive; no app file may take it.
pub const INDEX_FILE: &str = "bulkhead-bundle.json";
/// At most this many files in a bundle (T01).
pub const MAX_FILES: usize = 1000;
/// At most this many bytes in one file (T01); the whole bundle is bounded
/// by the admin listener's body limit.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Longest path accepted inside a bundle.
const MAX_PATH_BYTES: usize = 512;

/// What a bundle says it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub format: u32,
    pub app: String,
    pub files: Vec<IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

impl Index {
    /// `sha256:…` of each file, by path: what a version records.
    pub fn digests(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .map(|f| (f.path.clone(), format!("sha256:{}", f.sha256)))
            .collect()
    }
}

/// The files of `app` a deploy ships, relative to its directory: what the
/// lock pins (the manifest and every file it names: `[trust]` public keys,
/// the JWKS file, body schemas, migrations), the lock and the signatures
/// when present (T18), and each component with its signature.
pub fn deployable_files(app: &App) -> Result<Vec<PathBuf>, String> {
    let mut files: BTreeSet<PathBuf> = bulkhead_manifest::supply::named_files(app)?
        .into_iter()
        .map(|(name, _)| PathBuf::from(name))
        .collect();
    for name in [
        format!("{MANIFEST_FILE}.minisig"),
        LOCK_FILE.to_string(),
        format!("{LOCK_FILE}.minisig"),
    ] {
        if app.dir.join(&name).is_file() {
            files.insert(PathBuf::from(name));
        }
    }
    let relative = |path: &Path| -> Result<PathBuf, String> {
        path.strip_prefix(&app.dir)
            .map(Path::to_path_buf)
            .map_err(|_| format!("{} is outside the app directory", path.display()))
    };
    for function in &app.functions {
        files.insert(relative(&function.component)?);
        let mut signature = function.component.clone().into_os_string();
        signature.push(".minisig");
        if Path::new(&signature).is_file() {
            files.insert(relative(Path::new(&signature))?);
        }
    }
    Ok(files.into_iter().collect())
}

/// Pack `app`'s deployable files and their index into a tar archive.
pub fn pack(app: &App) -> Result<(Vec<u8>, Index), String> {
    let mut index = Index {
        format: 1,
        app: app.name.clone(),
        files: Vec::new(),
    };
    let mut contents = Vec::new();
    for path in deployable_files(app)? {
        let full = app.dir.join(&path);
        let data =
            std::fs::read(&full).map_err(|e| format!("cannot read {}: {e}", full.display()))?;
        // `keys/a.pub` however the manifest spells it (`./keys/a.pub`).
        let parts: Option<Vec<&str>> = path
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .map(|c| match c {
                Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect();
        let text = parts
            .map(|parts| parts.join("/"))
            .ok_or_else(|| format!("{} is not a plain UTF-8 path in the app", full.display()))?;
        index.files.push(IndexEntry {
            path: text.clone(),
            sha256: hex::encode(Sha256::digest(&data)),
            size: data.len() as u64,
        });
        contents.push((text, data));
    }
    let index_json = serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?;
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, INDEX_FILE, &index_json)?;
    for (path, data) in &contents {
        append(&mut builder, path, data)?;
    }
    let archive = builder.into_inner().map_err(|e| e.to_string())?;
    Ok((archive, index))
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> Result<(), String> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path, data)
        .map_err(|e| format!("cannot pack {path}: {e}"))
}

/// Unpack `archive` into `dest` (which must not exist yet), checking it
/// against its index. On failure, every problem; `dest` may then hold
/// part of it and is the caller's to delete.
pub fn unpack(archive: &[u8], dest: &Path) -> Result<Index, Vec<String>> {
    let mut problems = Vec::new();
    private_dirs(dest, false)
        .map_err(|e| vec![format!("cannot create {}: {e}", dest.display())])?;
    let mut seen: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut index_bytes: Option<Vec<u8>> = None;
    let mut count = 0usize;
    let mut tar = tar::Archive::new(archive);
    let entries = match tar.entries() {
        Ok(entries) => entries,
        // The tar crate's errors may quote raw header bytes: never echoed (T09).
        Err(_) => return Err(vec!["the bundle is not a tar archive".to_string()]),
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(_) => {
                problems.push(format!(
                    "the bundle is not a valid tar archive (entry {} is malformed); make bundles with `bulkhead deploy`",
                    count + 1
                ));
                break;
            }
        };
        count += 1;
        if count > MAX_FILES + 1 {
            problems.push(format!(
                "the bundle holds more than {MAX_FILES} files; ship only what the manifest names"
            ));
            break;
        }
        let raw = entry.path_bytes().into_owned();
        let shown = bulkhead_manifest::text::visible(&String::from_utf8_lossy(&raw));
        let shown: String = shown.chars().take(120).collect();
        let path = match checked_path(&raw) {
            Ok(path) => path,
            Err(why) => {
                problems.push(format!("bundle entry `{shown}`: {why}"));
                continue;
            }
        };
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            problems.push(format!(
                "bundle entry `{shown}`: a {} is not allowed, only regular files",
                kind_name(kind)
            ));
            continue;
        }
        let size = entry.size();
        if size > MAX_FILE_BYTES {
            problems.push(format!(
                "bundle entry `{shown}`: {size} bytes, over the {MAX_FILE_BYTES}-byte limit per file"
            ));
            continue;
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 20));
        if (&mut entry)
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut data)
            .is_err()
        {
            problems.push(format!(
                "bundle entry `{shown}`: cannot be read (truncated or malformed)"
            ));
            continue;
        }
        if path == INDEX_FILE {
            if index_bytes.replace(data).is_some() {
                problems.push(format!("the bundle holds `{INDEX_FILE}` twice"));
            }
            continue;
        }
        if seen.contains_key(&path) {
            problems.push(format!("bundle entry `{shown}` appears twice"));
            continue;
        }
        let digest = hex::encode(Sha256::digest(&data));
        if let Err(e) = write_new(&dest.join(&path), &data) {
            problems.push(format!("bundle entry `{shown}`: cannot be written: {e}"));
            continue;
        }
        seen.insert(path, (digest, data.len() as u64));
    }
    let index = match index_bytes {
        None => {
            problems.push(format!(
                "the bundle has no `{INDEX_FILE}`; make bundles with `bulkhead deploy`"
            ));
            return Err(problems);
        }
        Some(bytes) => match serde_json::from_slice::<Index>(&bytes) {
            Ok(index) if index.format == 1 => index,
            Ok(index) => {
                problems.push(format!(
                    "`{INDEX_FILE}` has format {}, this server reads format 1",
                    index.format
                ));
                return Err(problems);
            }
            // serde's message may quote the input (a 3 MB string): only
            // where, never what (T09).
            Err(e) => {
                problems.push(format!(
                    "`{INDEX_FILE}` is not a valid index (line {}, column {}: {}); make bundles with `bulkhead deploy`",
                    e.line(),
                    e.column(),
                    match e.classify() {
                        serde_json::error::Category::Io => "unreadable",
                        serde_json::error::Category::Syntax => "not valid JSON",
                        serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
                        serde_json::error::Category::Eof => "it ends too early",
                    }
                ));
                return Err(problems);
            }
        },
    };
    let mut listed = BTreeSet::new();
    for (number, entry) in index.files.iter().enumerate() {
        // An index path is named only once it is a valid bundle path
        // (bounded); otherwise its entry number (T09).
        let shown = match checked_path(entry.path.as_bytes()) {
            Ok(path) => path,
            Err(why) => {
                problems.push(format!(
                    "`{INDEX_FILE}` entry {}: `path` is not valid ({why})",
                    number + 1
                ));
                continue;
            }
        };
        if !listed.insert(entry.path.clone()) {
            problems.push(format!("`{INDEX_FILE}` lists `{shown}` twice"));
            continue;
        }
        match seen.get(&entry.path) {
            None => problems.push(format!(
                "`{shown}` is listed in `{INDEX_FILE}` but missing from the bundle"
            )),
            Some((digest, size)) if *digest != entry.sha256 || *size != entry.size => {
                // The index's own value is never echoed (T09).
                problems.push(format!(
                    "`{shown}` does not match its `sha256`/`size` in `{INDEX_FILE}` (entry {}; the file is sha256:{digest}, {size} bytes): the bundle was altered",
                    number + 1
                ));
            }
            Some(_) => {}
        }
    }
    for path in seen.keys() {
        if !listed.contains(path) {
            problems.push(format!(
                "`{}` is in the bundle but not in `{INDEX_FILE}`",
                bulkhead_manifest::text::visible(path)
            ));
        }
    }
    if problems.is_empty() {
        Ok(index)
    } else {
        Err(problems)
    }
}

/// `raw` as a path safe to create under the staging directory: UTF-8,
/// relative, only normal components, none hidden, bounded in length.
fn checked_path(raw: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "the path is not UTF-8")?;
    if text.is_empty() || text.len() > MAX_PATH_BYTES {
        return Err("the path is empty or too long");
    }
    if text.contains('\\') || text.chars().any(char::is_control) {
        return Err("the path holds a backslash or a control character");
    }
    let path = Path::new(text);
    if path.is_absolute() {
        return Err("absolute paths are not allowed");
    }
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().ok_or("the path is not UTF-8")?;
                if part.starts_with('.') {
                    return Err(
                        "hidden files and directories (such as `.bulkhead/`) are not allowed",
                    );
                }
                parts.push(part);
            }
            Component::ParentDir => return Err("`..` is not allowed"),
            Component::CurDir => return Err("`.` components are not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed");
            }
        }
    }
    if parts.is_empty() {
        return Err("the path names no file");
    }
    let normal = parts.join("/");
    if normal != text {
        return Err("the path is not in normal form (like `dir/file`)");
    }
    Ok(normal)
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "named pipe",
        tar::EntryType::Directory => "directory entry",
        _ => "special entry",
    }
}

/// Create `path` (and its parent directories) with `data`, never
/// replacing or following anything already there; synced to disk. Owner
/// only, as everything in the state directory (T15, T19).
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        private_dirs(parent, true)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Create `dir` 0700 (with its missing parents when `recursive`).
fn private_dirs(dir: &Path, recursive: bool) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(recursive);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            &b"../x"[..],
            b"/etc/passwd",
            b"a/../../x",
            b".bulkhead/dev/state.db",
            b"a/./b",
            b"",
            b"a\\b",
            b"\xff",
        ] {
            assert!(checked_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(checked_path(b"keys/a.pub"), Ok("keys/a.pub".into()));
    }
}
