//! Files only this host may read: directories 0700, files 0600, written
//! whole (temp file, fsync, rename) so a crash never leaves half a key.
//!
//! Everything under `.bulkhead/` goes through here: the state directory
//! and `.bulkhead` itself are created 0700 (or tightened to 0700 if they
//! already exist looser, and refused if they cannot be), databases are
//! created 0600 before SQLite opens them, so that SQLite's `-wal` and
//! `-shm` files, which copy the database file's mode, are 0600 too. An
//! existing database is never opened here, only chmod'ed (T09: see
//! [`create_private_file`]).

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Create `dir` (and its parents) owner-only; an existing `dir` readable or
/// writable by group or others is tightened to 0700, and an error if that
/// is not possible (say, it belongs to another user).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    refuse_foreign(dir)?;
    tighten(dir, 0o700).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "{} is open to group or others and cannot be made private (chmod 700): {e}",
                dir.display()
            ),
        )
    })
}

/// Create `path` empty and owner-only if it does not exist; an existing one
/// open to group or others is tightened to 0600. Its SQLite companions
/// (`-wal`, `-shm`, `-journal`), if any, are tightened too.
///
/// An existing file is only looked at and chmod'ed, never opened (T09):
/// closing any handle on a file drops every POSIX lock this process holds
/// on it, SQLite's included. Another process closing the database would
/// then take itself for its last user and checkpoint and delete the WAL
/// that this process is still appending to: those records would be lost.
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    create_absent(path)?;
    refuse_foreign(path)?;
    tighten(path, 0o600)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        make_private(Path::new(&companion))?;
    }
    Ok(())
}

/// Tighten an existing file open to group or others to 0600 (by path,
/// without opening it); a missing one is fine.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    match tighten(path, 0o600) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Create `dir` (an environment's state directory) as
/// [`create_private_dir`] does, and tighten its parent too when that is
/// `.bulkhead`, which holds every environment of the app: writable by
/// others, it would let them move an environment's state away and put
/// their own in its place (T09, T17).
pub fn create_state_dir(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    match dir.parent() {
        Some(root) if root.file_name() == Some(std::ffi::OsStr::new(".bulkhead")) => {
            create_private_dir(root)
        }
        _ => Ok(()),
    }
}

/// Create `path` empty, mode 0600, unless something is there already. The
/// file is made under a temporary name and linked into place, so `path`
/// itself is never opened, not even when another thread of this process
/// opens the database in between (see [`create_private_file`]).
fn create_absent(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let tmp = temp_sibling(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    drop(options.open(&tmp)?);
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // No hard links on this file system: create it in place. A new,
        // empty file is open to nobody else yet.
        Err(_) => match options.open(path) {
            Ok(file) => {
                drop(file);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// A name beside `path` unique to this process and call.
fn temp_sibling(path: &Path) -> std::path::PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// Refuse `path` when it belongs to another user than the one running
/// bulkhead (its effective uid) or root (T19, T18): a state directory or
/// key put there by another local user (say, through a world-writable app
/// directory) would hand them the API keys, the audit chain and the MAC
/// keys. Checked with `lstat`, so a symlink planted by them counts as
/// theirs. The error names the path and the fix.
#[cfg(unix)]
pub fn refuse_foreign(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = fs::symlink_metadata(path)?.uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if owner == me || owner == 0 {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "{} belongs to uid {owner}, not to the user running bulkhead (uid {me}) or root: another local user may have put it there; move it away and check it, or, if it is really yours, `chown -R {me} {}`",
            path.display(),
            path.display()
        ),
    ))
}

#[cfg(not(unix))]
pub fn refuse_foreign(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Clear group and other bits of `path`, if any are set.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(path: &Path, _mode: u32) -> std::io::Result<()> {
    fs::metadata(path).map(drop)
}

/// Write `parts` to `path` atomically, readable by the owner only. The temp
/// file's name is unique to this process and call, so two writers of the
/// same file (two threads, two processes) never share one.
pub fn write_private(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    write_atomically(path, parts, 0o600)
}

/// Write `parts` to `path` atomically: to a temp file beside it, created
/// exclusively (a name planted there, a symlink included, is never
/// followed) with `mode` less the umask, synced, then renamed over `path`
/// and the directory synced. A reader sees the old file or the whole new
/// one, never a part.
pub fn write_atomically(path: &Path, parts: &[&[u8]], mode: u32) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself lasts only once the directory is synced.
        #[cfg(unix)]
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write `parts` to a new file `path`, never replacing anything there: a
/// file, a symlink or a dangling symlink makes it fail with
/// `AlreadyExists` (T18: `keygen` never overwrites a key). The temp file
/// is written whole and synced, then hard-linked into place (`link(2)`
/// refuses an existing name atomically; no check-then-rename) and removed.
/// Without hard links, `path` is created with `O_CREAT|O_EXCL`, which
/// refuses an existing name, a symlink included, just the same.
pub fn write_new(path: &Path, parts: &[&[u8]], mode: u32) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let write = |target: &Path| -> std::io::Result<()> {
        let mut file = options.open(target)?;
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_all()
    };
    let tmp = temp_sibling(path);
    let linked = write(&tmp).and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(e),
        Err(_) => {
            if let Err(e) = write(path) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    let _ = fs::remove_file(path);
                }
                return Err(e);
            }
        }
    }
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A 256-bit key kept in `path`, created on first use.
pub fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match fs::read(path) {
        Ok(bytes) => {
            refuse_foreign(path)?;
            let key = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                std::io::Error::other(format!(
                    "{} is not a 32-byte key; restore it from backup (deleting it invalidates what it protects)",
                    path.display()
                ))
            })?;
            // A key written by an older version, or copied in loosely.
            tighten(path, 0o600)?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_bytes::<32>()?;
            write_private(path, &[&key])?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The smaller item of issue 11: an existing, loose state directory is
    /// tightened, files are created and tightened 0600.
    #[test]
    fn loose_dirs_and_files_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let db = dir.join("x.db");
        create_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let wal = dir.join("x.db-wal");
        fs::write(&wal, b"").unwrap();
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        create_private_file(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));

        let key = dir.join("k.key");
        load_or_create_key(&key).unwrap();
        assert_eq!(mode(&key), 0o600);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create_key(&key).unwrap();
        assert_eq!(mode(&key), 0o600);
        write_private(&dir.join("f"), &[b"x"]).unwrap();
        assert_eq!(mode(&dir.join("f")), 0o600);
    }

    /// Review of issue 14, finding A (T19, T18): a state directory or key
    /// file that another user (here uid 65534, `nobody`) put in place is
    /// refused, naming the path, in every environment. Needs root to
    /// chown (CI runs as root); otherwise it says so and checks nothing.
    #[test]
    fn state_and_keys_of_another_user_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(".bulkhead");
        fs::create_dir(&dir).unwrap();
        let key = root.path().join("audit.key");
        fs::write(&key, [1u8; 32]).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let db = root.path().join("x.db");
        fs::write(&db, b"").unwrap();
        for path in [&dir, &key, &db] {
            if let Err(e) = std::os::unix::fs::chown(path, Some(65534), Some(65534)) {
                eprintln!(
                    "NOTE: not root ({e}): the refusal of another user's files is NOT checked here"
                );
                return;
            }
        }
        let e = create_private_dir(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&dir.display().to_string()) && e.contains("uid 65534"),
            "{e}"
        );
        let e = create_state_dir(&dir.join("prod")).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
        let e = load_or_create_key(&key).unwrap_err().to_string();
        assert!(
            e.contains(&key.display().to_string()) && e.contains("chown"),
            "{e}"
        );
        let e = create_private_file(&db).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
    }
}
