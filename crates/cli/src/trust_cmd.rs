//! `bulkhead keygen`, `bulkhead sign` and `bulkhead lock` (T18, T19): make
//! a minisign key pair, sign every file an app deploys, pin every
//! component's digest. Signatures are standard minisign, so the `minisign`
//! CLI verifies them (and can make them).
//!
//! Passwords never come from argv or the environment: from the terminal
//! (with confirmation for a new key) or from a file. The `minisign` crate
//! prompts on the TTY when handed no password, so it is only ever handed
//! `None` when stdin is a terminal.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use bulkhead_manifest::files::{MAX_COMPONENT_BYTES, read_bounded};
use bulkhead_manifest::trust::{self, SIGNATURE_EXTENSION};
use bulkhead_manifest::{LOCK_FILE, Lock};
use zeroize::Zeroizing;

use crate::{Target, load_manifest, report};

/// Public files (keys, signatures, the lock): readable by others.
const PUBLIC_MODE: u32 = 0o644;

/// `bulkhead keygen`: `OUTPUT.key` (secret, 0600) and `OUTPUT.pub`.
pub fn keygen(output: &Path, password_file: Option<&Path>, unencrypted: bool) -> Result<ExitCode> {
    let secret_path = with_extension(output, "key");
    let public_path = with_extension(output, "pub");
    let exists = |path: &Path| {
        anyhow::anyhow!(
            "{} already exists; keygen never overwrites a key: pick another --output, or move the old pair away first",
            path.display()
        )
    };
    // Early, before a password is asked; a symlink, dangling or not, counts
    // (T18). The writes below refuse an existing name again, atomically.
    for path in [&secret_path, &public_path] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(exists(path));
        }
    }
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the directory {}", parent.display()))?;
    }
    let pair = if unencrypted {
        eprintln!(
            "WARNING: {} will NOT be password-protected: anyone who can read the file can sign as this key. Use it only for a CI key kept in a secret store.",
            secret_path.display()
        );
        minisign::KeyPair::generate_unencrypted_keypair()
    } else {
        let password = match password_file {
            Some(file) => Some(read_password(file)?),
            None if std::io::stdin().is_terminal() => None,
            None => bail!(
                "no password for the new secret key: stdin is not a terminal, so pass --password-file FILE (or --unencrypted for a CI key)"
            ),
        };
        // `None`: the crate asks on the terminal, twice.
        minisign::KeyPair::generate_encrypted_keypair(password.map(|p| p.to_string()))
    }
    .map_err(|e| anyhow::anyhow!("cannot generate the key pair: {e}"))?;
    let secret = Zeroizing::new(
        pair.sk
            .to_box(Some("bulkhead secret key"))
            .map_err(|e| anyhow::anyhow!("cannot encode the secret key: {e}"))?
            .to_string(),
    );
    let public = pair
        .pk
        .to_box()
        .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?
        .to_string();
    let key_id = trust::public_key_id(&public).unwrap_or_else(|| "?".into());
    // T18: linked into place, never renamed over: anything that appeared
    // at either name since the check above is left alone, and refused.
    let write_new = |path: &Path, bytes: &[u8], mode: u32| {
        bulkhead_store::files::write_new(path, &[bytes], mode).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(path)
            } else {
                anyhow::anyhow!("cannot write {}: {e}", path.display())
            }
        })
    };
    write_new(&secret_path, secret.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public_path, public.as_bytes(), PUBLIC_MODE) {
        // No half pair left behind: the secret just written is ours.
        let _ = std::fs::remove_file(&secret_path);
        return Err(e);
    }
    println!(
        "wrote {} (secret key, mode 0600, {}) and {} (public key {key_id})",
        secret_path.display(),
        if unencrypted {
            "NOT password-protected"
        } else {
            "password-protected"
        },
        public_path.display()
    );
    println!(
        "trust it: add to bulkhead.toml (path relative to the app directory)\n\n[trust]\nsigners = [\"{}\"]",
        public_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead sign`: a `.minisig` beside every component, the manifest and
/// the lock.
pub fn sign(target: &Target, key: &Path, password_file: Option<&Path>) -> Result<ExitCode> {
    let app = match load_manifest(target) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    let secret_key = open_secret_key(key, password_file)?;
    let public_key = minisign::PublicKey::from_secret_key(&secret_key)
        .map_err(|e| anyhow::anyhow!("{}: not a usable secret key ({e})", key.display()))?;
    let key_id = trust::public_key_id(
        &public_key
            .to_box()
            .map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?
            .to_string(),
    )
    .unwrap_or_else(|| "?".into());
    let mut files: Vec<PathBuf> = Vec::new();
    for function in app.all_functions() {
        if !files.contains(&function.component) {
            files.push(function.component.clone());
        }
    }
    files.push(app.manifest_path.clone());
    let lock = app.dir.join(LOCK_FILE);
    if lock.exists() {
        files.push(lock);
    }
    let signed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for path in &files {
        let name = trust::app_relative(&app.dir, path).with_context(|| {
            format!(
                "{} cannot be named in a signature (outside the app, not UTF-8 or holding a line break); rename it",
                path.display()
            )
        })?;
        // Bounded (T18, T05): a file to sign that is /dev/zero is refused.
        let bytes = read_bounded(path, MAX_COMPONENT_BYTES)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let sha256 = trust::sha256(&bytes);
        let comment = trust::trusted_comment(&name, &sha256, signed_at);
        let signature = minisign::sign(
            Some(&public_key),
            &secret_key,
            std::io::Cursor::new(&bytes),
            Some(&comment),
            Some(&format!("signature from bulkhead, key {key_id}")),
        )
        .map_err(|e| anyhow::anyhow!("cannot sign {}: {e}", path.display()))?;
        let signature_path = trust::signature_path(path);
        bulkhead_store::files::write_atomically(
            &signature_path,
            &[signature.into_string().as_bytes()],
            PUBLIC_MODE,
        )
        .with_context(|| format!("cannot write {}", signature_path.display()))?;
        println!(
            "signed {name} (sha256:{}) with key {key_id}: {name}.{SIGNATURE_EXTENSION}",
            hex::encode(sha256)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead lock`: write `bulkhead.lock`, or with `check` only compare.
pub fn lock(target: &Target, check: bool) -> Result<ExitCode> {
    let app = match load_manifest(target) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    let mut fresh = Lock::default();
    for function in app.all_functions() {
        let name = trust::app_relative(&app.dir, &function.component).with_context(|| {
            format!(
                "{} cannot be listed in the lock (not UTF-8 or holding a line break); rename it",
                function.component.display()
            )
        })?;
        let bytes = read_bounded(&function.component, MAX_COMPONENT_BYTES)
            .with_context(|| format!("cannot read {}", function.component.display()))?;
        fresh.insert(name, trust::sha256(&bytes));
    }
    // `bulkhead.toml` and every file it names: one signed lock binds one
    // manifest to one set of files (T18, T19).
    let named = bulkhead_manifest::supply::named_files(&app).map_err(anyhow::Error::msg)?;
    for (name, path) in named {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        fresh.insert_file(name, trust::sha256(&bytes));
    }
    let path = app.dir.join(LOCK_FILE);
    if check {
        let stale = stale_entries(app.lock.as_ref(), &fresh);
        if stale.is_empty() {
            println!(
                "{} is up to date ({} component(s))",
                path.display(),
                count(&fresh)
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("error: {} is stale:", path.display());
        for line in stale {
            eprintln!("  - {line}");
        }
        eprintln!(
            "review the changed components, then run `bulkhead lock {}` (and `bulkhead sign`)",
            target.app_dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let text = fresh
        .render()
        .map_err(|e| anyhow::anyhow!("cannot write the lock: {e}"))?;
    bulkhead_store::files::write_atomically(&path, &[text.as_bytes()], PUBLIC_MODE)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for (name, sha256) in fresh.iter().chain(fresh.files()) {
        println!("locked {name} sha256:{}", hex::encode(sha256));
    }
    println!(
        "wrote {}; sign it with the components: `bulkhead sign {} --key KEY_FILE`",
        path.display(),
        target.app_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn count(lock: &Lock) -> usize {
    lock.iter().count()
}

/// What differs between the lock on disk and the components now.
fn stale_entries(current: Option<&Lock>, fresh: &Lock) -> Vec<String> {
    let Some(current) = current else {
        return vec![format!("there is no {LOCK_FILE}")];
    };
    let mut lines = Vec::new();
    compare_pins(
        &mut lines,
        (fresh.iter(), |name| fresh.get(name)),
        (current.iter(), |name| current.get(name)),
        "no function serves it",
    );
    compare_pins(
        &mut lines,
        (fresh.files(), |name| fresh.file(name)),
        (current.files(), |name| current.file(name)),
        "the manifest no longer names it",
    );
    lines
}

/// One line per pin that differs between the fresh lock and the current
/// one: missing, changed, or no longer needed (`gone` says why).
fn compare_pins<'a, F, C>(
    lines: &mut Vec<String>,
    fresh: (impl Iterator<Item = (&'a str, &'a [u8; 32])>, F),
    current: (impl Iterator<Item = (&'a str, &'a [u8; 32])>, C),
    gone: &str,
) where
    F: Fn(&str) -> Option<&'a [u8; 32]>,
    C: Fn(&str) -> Option<&'a [u8; 32]>,
{
    let (fresh_pins, in_fresh) = fresh;
    let (current_pins, in_current) = current;
    for (name, sha256) in fresh_pins {
        match in_current(name) {
            None => lines.push(format!("{name}: not in the lock")),
            Some(old) if old != sha256 => lines.push(format!(
                "{name}: locked sha256:{}, now sha256:{}",
                hex::encode(old),
                hex::encode(sha256)
            )),
            Some(_) => {}
        }
    }
    for (name, _) in current_pins {
        if in_fresh(name).is_none() {
            lines.push(format!("{name}: locked, but {gone}"));
        }
    }
}

/// `OUTPUT.EXT` (the output names a pair, not a file).
fn with_extension(output: &Path, extension: &str) -> PathBuf {
    let mut name = output.as_os_str().to_os_string();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

/// Whether `text` has the shape of a minisign secret key file: an
/// `untrusted comment:` line, then the base64 of a 158-byte Ed25519 key
/// blob (`Ed`, the KDF, `B2`, ...).
fn looks_like_secret_key(text: &str) -> bool {
    use base64::Engine as _;
    let mut lines = text.lines();
    let comment = lines.next().unwrap_or("");
    let blob = lines.next().unwrap_or("").trim();
    if !comment.starts_with("untrusted comment:") {
        return false;
    }
    match base64::engine::general_purpose::STANDARD.decode(blob) {
        Ok(bytes) => {
            bytes.len() == 158 && bytes.starts_with(b"Ed") && bytes.get(4..6) == Some(b"B2")
        }
        Err(_) => false,
    }
}

/// Refuse a secret file (a secret key, a password) readable or writable
/// by group or others, with the fix (T18): as the TLS key is.
fn owner_only(path: &Path, what: &str) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "the {what} {} is open to other users (mode {mode:o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
    Ok(())
}

/// A password file's first line, without its line break; never empty.
fn read_password(path: &Path) -> Result<Zeroizing<String>> {
    owner_only(path, "password file")?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the password file {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!(
            "the password file {} is empty; write the password on its first line",
            path.display()
        );
    }
    Ok(Zeroizing::new(line.to_string()))
}

/// The secret key in `path`, opened with the password from
/// `password_file`, or asked on the terminal when it has one.
fn open_secret_key(path: &Path, password_file: Option<&Path>) -> Result<minisign::SecretKey> {
    owner_only(path, "secret key file")?;
    let text = Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the secret key {}; make one with `bulkhead keygen`",
            path.display()
        )
    })?);
    let not_a_key = || {
        anyhow::anyhow!(
            "{} is not a minisign secret key; pass the `.key` file `bulkhead keygen` (or `minisign -G`) wrote",
            path.display()
        )
    };
    // Review of issue 14, finding D (T18): any other file (a manifest, a
    // public key) is named as not a key, not taken for a locked one.
    if !looks_like_secret_key(&text) {
        return Err(not_a_key());
    }
    let boxed = minisign::SecretKeyBox::from_string(&text).map_err(|_| not_a_key())?;
    // An unencrypted key opens without a password; anything else needs one.
    if let Ok(key) = boxed.clone().into_unencrypted_secret_key()
        && !key.is_encrypted()
    {
        return Ok(key);
    }
    let opened = match password_file {
        Some(file) => boxed.into_secret_key(Some(read_password(file)?.to_string())),
        // The crate asks on the terminal: only when there is one.
        None if std::io::stdin().is_terminal() => boxed.into_secret_key(None),
        None => bail!(
            "{} is password-protected and stdin is not a terminal: pass --password-file FILE",
            path.display()
        ),
    };
    opened.map_err(|_| {
        anyhow::anyhow!(
            "{}: cannot open the secret key (wrong password, or a damaged file); check --password-file",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_pair_is_named_after_its_output() {
        let path = super::with_extension(std::path::Path::new("keys/release"), "key");
        assert_eq!(path, std::path::Path::new("keys/release.key"));
    }
}
