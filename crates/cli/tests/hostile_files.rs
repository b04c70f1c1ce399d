//! T18, T05: hostile files in an app directory. A lock, manifest,
//! component or TLS PEM that is a symlink to `/dev/zero`, and a signature
//! or lock that is a FIFO, are each refused at once with a message naming
//! the file, never read forever or waited on. Real binary, real files.
//!
//! Each run has a liveness bound: the binary is polled until it exits and
//! killed (the test failing) if it has not after [`BOUND`]; no timing is
//! asserted.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::TestApp;
use support::prod::{keygen, lock_and_sign};

/// Generous: a refusal takes milliseconds; a hang or an endless read never ends.
const BOUND: Duration = Duration::from_secs(60);

const SIGNED: &str = r#"
[app]
name = "hostile"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"

[trust]
signers = ["keys/release.pub"]
"#;

const PLAIN: &str = r#"
[app]
name = "hostile"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

/// `bulkhead ARGS... APP OPTIONS...`, killed (and the test failed) if it
/// has not exited within [`BOUND`].
fn bounded(app: &Path, args: &[&str], options: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .arg(app)
        .args(options)
        .env("BULKHEAD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bulkhead runs");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > BOUND {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "bulkhead {args:?} did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

fn zero(path: &Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink("/dev/zero", path).unwrap();
}

fn check(app: &TestApp) -> Output {
    bounded(app.path(), &["check"], &[])
}

fn assert_refused(out: &Output, file: &str, why: &str) {
    let all = text(out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains(file), "names {file}: {all}");
    assert!(all.contains(why), "says {why}: {all}");
}

#[test]
fn t18_a_lock_that_is_dev_zero_or_a_fifo_is_refused() {
    let app = TestApp::new(PLAIN, &["hello"]);
    let lock = app.path().join("bulkhead.lock");
    zero(&lock);
    assert_refused(&check(&app), "bulkhead.lock", "character device");
    std::fs::remove_file(&lock).unwrap();
    mkfifo(&lock);
    assert_refused(&check(&app), "bulkhead.lock", "FIFO");
}

#[test]
fn t18_a_manifest_that_is_dev_zero_is_refused() {
    let app = TestApp::new(PLAIN, &["hello"]);
    zero(&app.path().join("bulkhead.toml"));
    assert_refused(&check(&app), "bulkhead.toml", "character device");
}

#[test]
fn t18_a_component_that_is_dev_zero_is_refused() {
    let app = TestApp::new(PLAIN, &["hello"]);
    zero(&app.path().join("hello.wasm"));
    assert_refused(&check(&app), "hello.wasm", "is not a regular file");
    let out = bounded(
        app.path(),
        &["serve"],
        &["--listen", "127.0.0.1:0", "--admin-listen", "off"],
    );
    assert_refused(&out, "hello.wasm", "is not a regular file");
}

#[test]
fn t18_a_signature_that_is_a_fifo_is_refused() {
    let app = TestApp::new(SIGNED, &["hello"]);
    let key = keygen(&app, "release");
    lock_and_sign(&app, &key);
    assert!(check(&app).status.success());
    let signature = app.path().join("hello.wasm.minisig");
    let fifo = app.path().join("pipe");
    mkfifo(&fifo);
    std::fs::remove_file(&signature).unwrap();
    std::os::unix::fs::symlink(&fifo, &signature).unwrap();
    assert_refused(&check(&app), "hello.wasm.minisig", "FIFO");
}

#[test]
fn t15_a_tls_pem_that_is_dev_zero_is_refused() {
    let app = TestApp::new(
        &format!("{PLAIN}\n[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n"),
        &["hello"],
    );
    let tls = app.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let key = tls.join("key.pem");
    std::fs::write(&key, "a key").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    zero(&tls.join("cert.pem"));
    let out = bounded(
        app.path(),
        &["serve"],
        &["--listen", "127.0.0.1:0", "--admin-listen", "off"],
    );
    assert_refused(&out, "cert.pem", "is not a regular file");
}

/// T18, T05 (outside review): a file the signed lock pins (here the JWKS)
/// grown to 2 GiB (sparse: nothing is written) is refused by its cap when
/// the lock is checked, never read whole into memory.
#[test]
fn t18_a_pinned_file_grown_huge_is_refused_by_its_cap() {
    let manifest = format!(
        "{SIGNED}\n[auth.jwt]\nissuer = \"https://issuer.example\"\naudience = \"hostile\"\njwks = \"keys/jwks.json\"\nalgorithms = [\"EdDSA\", \"ES256\", \"RS256\"]\n"
    );
    let app = TestApp::new(&manifest, &["hello"]);
    std::fs::create_dir_all(app.path().join("keys")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth/jwks.json"),
        app.path().join("keys/jwks.json"),
    )
    .unwrap();
    let key = keygen(&app, "release");
    lock_and_sign(&app, &key);
    let ok = bounded(app.path(), &["check"], &[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let jwks = std::fs::OpenOptions::new()
        .write(true)
        .open(app.path().join("keys/jwks.json"))
        .unwrap();
    jwks.set_len(2 << 30).unwrap();
    drop(jwks);
    let out = bounded(app.path(), &["check"], &[]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("keys/jwks.json"), "{said}");
    assert!(said.contains("-byte cap for this file"), "{said}");
}
