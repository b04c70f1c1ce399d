//! Signed, locked, strict-`prod`-ready test apps, made with the real
//! `bulkhead keygen`, `bulkhead lock` and `bulkhead sign` (T18, T19).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::TestApp;

/// Run `bulkhead ARGS...` with extra environment variables.
pub fn bulkhead(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .envs(envs.iter().copied())
        .env("BULKHEAD_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("bulkhead runs")
}

/// The command's output says each of `needles`.
pub fn assert_says(output: &Output, needles: &[&str]) {
    let said = text(output);
    for needle in needles {
        assert!(said.contains(needle), "{needle:?} not in:\n{said}");
    }
}

/// The command failed, and its output says each of `needles`.
pub fn assert_refused(output: &Output, needles: &[&str]) {
    assert!(!output.status.success(), "accepted:\n{}", text(output));
    assert_says(output, needles);
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `bulkhead keygen --output APP/keys/NAME --unencrypted`: the secret key.
pub fn keygen(app: &TestApp, name: &str) -> PathBuf {
    let output = app.path().join("keys").join(name);
    let out = bulkhead(
        &[
            "keygen",
            "--output",
            output.to_str().unwrap(),
            "--unencrypted",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    app.path().join("keys").join(format!("{name}.key"))
}

/// `bulkhead lock APP` then `bulkhead sign APP --key KEY`.
pub fn lock_and_sign(app: &TestApp, key: &Path) {
    let path = app.path().to_str().unwrap();
    let out = bulkhead(&["lock", path], &[]);
    assert!(out.status.success(), "{}", text(&out));
    sign(app, key);
}

pub fn sign(app: &TestApp, key: &Path) {
    let path = app.path().to_str().unwrap();
    let out = bulkhead(&["sign", path, "--key", key.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A master key of its own (0600, outside the app), as prod wants.
pub struct MasterKey {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl MasterKey {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("prod.key");
        std::fs::write(&path, "5a".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { path, _dir: dir }
    }

    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("BULKHEAD_MASTER_KEY_FILE", self.path.to_str().unwrap())]
    }
}

/// Rewrite `app`'s manifest to meet strict `prod` (T19): `strict_imports`,
/// a reason on every public route, `[trust] signers`, TLS terminated
/// upstream (tests listen on loopback); then lock and sign
/// it with a fresh key. Returns the master key to serve it with.
pub fn make_prod_ready(app: &TestApp) -> MasterKey {
    let manifest = app.path().join("bulkhead.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text
        .replacen("[app]\n", "[app]\nstrict_imports = true\n", 1)
        .replace(
            "auth = \"public\"\n",
            "auth = \"public\"\npublic_reason = \"a test route anyone may call\"\n",
        );
    let text = format!(
        "{text}\n[trust]\nsigners = [\"keys/release.pub\"]\n\n[tls]\nterminated_upstream = \"the test's loopback client stands in for a TLS proxy\"\n"
    );
    std::fs::write(&manifest, text).unwrap();
    let key = keygen(app, "release");
    lock_and_sign(app, &key);
    MasterKey::new()
}
