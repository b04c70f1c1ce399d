//! Signed components and the lock (T18): keys from `bulkhead keygen` and
//! from the reference `minisign` CLI, each side verifying the other's
//! signatures; and the attacks: a tampered component, another key, a
//! signature moved to another file, a replayed older signed version, a
//! manifest edited after signing. Real binaries, real files, real guests.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::TestApp;
use support::prod::{assert_refused, assert_says, bulkhead, keygen, lock_and_sign, sign, text};

const SIGNED: &str = r#"
[app]
name = "signed"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"

[trust]
signers = ["keys/release.pub"]
"#;

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn minisign(args: &[&str], stdin: &[u8], dir: &Path) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new("minisign")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the minisign CLI runs (Debian package `minisign`, installed by scripts/test)");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .unwrap();
    child.wait_with_output().unwrap()
}

fn check(app: &TestApp) -> std::process::Output {
    bulkhead(&["check", app.path().to_str().unwrap()], &[])
}

/// T18: `bulkhead keygen` (password-protected, from a file) and `bulkhead
/// sign` make signatures the reference CLI accepts; the key opens in the
/// CLI with its password given on stdin; the secret is never printed.
#[test]
fn t18_bulkhead_keys_and_signatures_verify_with_the_minisign_cli() {
    let app = TestApp::new(SIGNED, &["hello"]);
    let dir = app.path();
    let password = dir.join("pass.txt");
    std::fs::write(&password, "correct horse battery\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let chmod =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    // Review of issue 14, finding D (T18): a password file others can read
    // is refused with the fix, and no key is made.
    chmod(&password, 0o644);
    let out = bulkhead(
        &[
            "keygen",
            "--output",
            dir.join("keys/release").to_str().unwrap(),
            "--password-file",
            password.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let fix = format!("`chmod 600 {}`", password.display());
    assert_says(&out, &[&fix]);
    assert!(!text(&out).contains("correct horse"), "{}", text(&out));
    assert!(!dir.join("keys/release.key").exists());
    chmod(&password, 0o600);
    let out = bulkhead(
        &[
            "keygen",
            "--output",
            dir.join("keys/release").to_str().unwrap(),
            "--password-file",
            password.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let secret = std::fs::read_to_string(dir.join("keys/release.key")).unwrap();
    let secret_line = secret.lines().nth(1).unwrap();
    assert!(
        !text(&out).contains(secret_line),
        "the secret key is never printed"
    );
    assert_says(&out, &["signers = ["]);
    let mode = std::fs::metadata(dir.join("keys/release.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Never overwritten.
    let again = bulkhead(
        &[
            "keygen",
            "--output",
            dir.join("keys/release").to_str().unwrap(),
            "--unencrypted",
        ],
        &[],
    );
    assert_refused(&again, &["already exists"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("keys/release.key")).unwrap(),
        secret
    );

    // No password and no terminal: keygen refuses rather than prompt.
    let refused = bulkhead(
        &[
            "keygen",
            "--output",
            dir.join("keys/other").to_str().unwrap(),
        ],
        &[],
    );
    assert_refused(&refused, &["stdin is not a terminal"]);
    assert!(!dir.join("keys/other.key").exists());

    // Without the password the key does not open, and nothing prompts.
    let refused = bulkhead(
        &[
            "sign",
            dir.to_str().unwrap(),
            "--key",
            dir.join("keys/release.key").to_str().unwrap(),
        ],
        &[],
    );
    assert_refused(&refused, &["--password-file"]);
    let wrong = dir.join("wrong.txt");
    std::fs::write(&wrong, "not it\n").unwrap();
    chmod(&wrong, 0o600);
    // A secret key others can read is refused with the fix; the manifest
    // passed as a key is named as not a key (finding D, T18).
    let secret_key = dir.join("keys/release.key");
    chmod(&secret_key, 0o640);
    let loose = bulkhead(
        &[
            "sign",
            dir.to_str().unwrap(),
            "--key",
            secret_key.to_str().unwrap(),
            "--password-file",
            password.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!loose.status.success());
    let fix = format!("`chmod 600 {}`", secret_key.display());
    assert_says(&loose, &[&fix]);
    chmod(&secret_key, 0o600);
    let manifest = dir.join("bulkhead.toml");
    let manifest_copy = dir.join("manifest-as-key.toml");
    std::fs::copy(&manifest, &manifest_copy).unwrap();
    chmod(&manifest_copy, 0o600);
    let not_key = bulkhead(
        &[
            "sign",
            dir.to_str().unwrap(),
            "--key",
            manifest_copy.to_str().unwrap(),
        ],
        &[],
    );
    assert_refused(&not_key, &["is not a minisign secret key"]);
    assert!(
        !text(&not_key).contains("password-protected"),
        "{}",
        text(&not_key)
    );
    std::fs::remove_file(&manifest_copy).unwrap();
    let refused = bulkhead(
        &[
            "sign",
            dir.to_str().unwrap(),
            "--key",
            dir.join("keys/release.key").to_str().unwrap(),
            "--password-file",
            wrong.to_str().unwrap(),
        ],
        &[],
    );
    assert_refused(&refused, &["wrong password"]);

    // The lock pins the manifest and every file it names (T18, T19).
    let locked = bulkhead(&["lock", dir.to_str().unwrap()], &[]);
    assert!(locked.status.success(), "{}", text(&locked));
    let out = bulkhead(
        &[
            "sign",
            dir.to_str().unwrap(),
            "--key",
            dir.join("keys/release.key").to_str().unwrap(),
            "--password-file",
            password.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.lines().filter(|l| l.starts_with("signed ")).count(),
        3,
        "{printed}"
    );
    for file in ["hello.wasm", "bulkhead.toml"] {
        let verified = minisign(&["-V", "-p", "keys/release.pub", "-m", file], b"", dir);
        assert!(
            verified.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
        let said = String::from_utf8_lossy(&verified.stdout).into_owned()
            + &String::from_utf8_lossy(&verified.stderr);
        assert!(
            said.contains(&format!("bulkhead-v1 file={file} sha256=")),
            "{said}"
        );
    }
    // The password-protected key opens in the reference CLI (password on
    // stdin, never in argv) and signs there too.
    std::fs::write(dir.join("other.bin"), b"other").unwrap();
    let signed = minisign(
        &["-S", "-s", "keys/release.key", "-m", "other.bin"],
        b"correct horse battery\n",
        dir,
    );
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(
        minisign(
            &["-V", "-p", "keys/release.pub", "-m", "other.bin"],
            b"",
            dir
        )
        .status
        .success()
    );

    let out = check(&app);
    assert!(out.status.success(), "{}", text(&out));
    assert_says(&out, &["trust      signed by key"]);
}

/// T18: a key made by `minisign -G -W` signing with `minisign -S -t` and
/// Bulkhead's trusted comment: Bulkhead accepts it and serves the app.
#[test]
fn t18_a_minisign_cli_key_and_signature_are_accepted() {
    let app = TestApp::new(&SIGNED.replace("release.pub", "cli.pub"), &["hello"]);
    let dir = app.path();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let made = minisign(
        &["-G", "-W", "-p", "keys/cli.pub", "-s", "keys/cli.key"],
        b"",
        dir,
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let locked = bulkhead(&["lock", dir.to_str().unwrap()], &[]);
    assert!(locked.status.success(), "{}", text(&locked));
    for file in ["hello.wasm", "bulkhead.toml", "bulkhead.lock"] {
        let comment = format!(
            "bulkhead-v1 file={file} sha256={} signed_at=1700000000",
            sha256_hex(&dir.join(file))
        );
        let signed = minisign(
            &["-S", "-s", "keys/cli.key", "-m", file, "-t", &comment],
            b"",
            dir,
        );
        assert!(
            signed.status.success(),
            "{}",
            String::from_utf8_lossy(&signed.stderr)
        );
    }
    let out = check(&app);
    assert!(out.status.success(), "{}", text(&out));
    assert_says(&out, &["trust      signed by key"]);
    // A plain `minisign -S` (its default comment) names no file: refused.
    let plain = minisign(&["-S", "-s", "keys/cli.key", "-m", "hello.wasm"], b"", dir);
    assert!(plain.status.success());
    let out = check(&app);
    assert_refused(&out, &["was made for another file"]);
    assert_says(&out, &["bulkhead-v1 file="]);
}

/// T18: each attack on a signed app is refused at `check` and `serve`,
/// naming the file and the fix; `serve` audits the refusal.
#[test]
fn t18_tampered_foreign_moved_replayed_and_edited_are_refused() {
    let app = TestApp::new(
        &format!(
            "{SIGNED}\n[[function]]\nname = \"echo\"\ncomponent = \"echo.wasm\"\nroute = \"/echo\"\nauth = \"public\"\n"
        ),
        &["hello", "echo"],
    );
    let dir = app.path();
    let key = keygen(&app, "release");
    lock_and_sign(&app, &key);
    assert!(check(&app).status.success(), "{}", text(&check(&app)));
    let hello = std::fs::read(dir.join("hello.wasm")).unwrap();
    let hello_sig = std::fs::read(dir.join("hello.wasm.minisig")).unwrap();
    let restore = || {
        std::fs::write(dir.join("hello.wasm"), &hello).unwrap();
        std::fs::write(dir.join("hello.wasm.minisig"), &hello_sig).unwrap();
    };
    let refused = |what: &str, expected: &[&str]| {
        let out = check(&app);
        assert!(!out.status.success(), "{what}: check accepted it");
        let said = text(&out);
        for part in expected {
            assert!(said.contains(part), "{what}: no `{part}` in:\n{said}");
        }
    };

    // Tampered: one byte appended.
    let mut tampered = hello.clone();
    tampered.push(0);
    std::fs::write(dir.join("hello.wasm"), &tampered).unwrap();
    refused(
        "tampered",
        &[
            "`hello.wasm` changed since it was locked",
            "bulkhead lock APP_DIR",
            "bulkhead sign",
        ],
    );
    // `serve` refuses it as well, and records why.
    let out = app.run_with(
        &["serve"],
        &["--listen", "127.0.0.1:0", "--admin-listen", "off"],
    );
    assert_refused(&out, &["changed since it was locked"]);
    let records = app.audit_records("deploy.refused");
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0].to_string().contains("hello.wasm"),
        "{}",
        records[0]
    );
    restore();

    // Signed by a key that is not trusted.
    let other = keygen(&app, "other");
    let out = bulkhead(
        &[
            "sign",
            dir.to_str().unwrap(),
            "--key",
            other.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let other_id = std::fs::read_to_string(dir.join("keys/other.pub")).unwrap();
    let other_id = other_id
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    refused(
        "another key",
        &[
            "is signed by key",
            &other_id,
            "not a trusted signer",
            "keys/release.pub",
        ],
    );
    sign(&app, &key);

    // A valid signature moved to another file: echo's beside hello.
    std::fs::copy(
        dir.join("echo.wasm.minisig"),
        dir.join("hello.wasm.minisig"),
    )
    .unwrap();
    refused(
        "another file's signature",
        &["`hello.wasm`", "made for another file"],
    );
    restore();
    // Renamed: hello.wasm served as echo.wasm with its own signature.
    std::fs::copy(dir.join("hello.wasm"), dir.join("echo.wasm")).unwrap();
    std::fs::copy(
        dir.join("hello.wasm.minisig"),
        dir.join("echo.wasm.minisig"),
    )
    .unwrap();
    refused("renamed", &["`echo.wasm` changed since it was locked"]);
    std::fs::copy(support::guest("echo"), dir.join("echo.wasm")).unwrap();
    sign(&app, &key);

    // The manifest edited after signing.
    let manifest = std::fs::read_to_string(dir.join("bulkhead.toml")).unwrap();
    std::fs::write(
        dir.join("bulkhead.toml"),
        manifest.replace("/echo\"", "/admin\""),
    )
    .unwrap();
    refused(
        "edited manifest",
        &[
            "bulkhead.toml",
            "edited after it was signed",
            "`bulkhead.toml` changed since it was locked",
        ],
    );
    std::fs::write(dir.join("bulkhead.toml"), &manifest).unwrap();
    assert!(check(&app).status.success());

    // A replayed older version: validly signed, but not what the lock pins.
    lock_and_sign(&app, &key);
    let old = (hello.clone(), hello_sig.clone());
    std::fs::copy(support::guest("echo"), dir.join("hello.wasm")).unwrap();
    lock_and_sign(&app, &key);
    assert!(check(&app).status.success(), "{}", text(&check(&app)));
    std::fs::write(dir.join("hello.wasm"), &old.0).unwrap();
    std::fs::write(dir.join("hello.wasm.minisig"), &old.1).unwrap();
    refused(
        "replayed",
        &["`hello.wasm` changed since it was locked", "bulkhead lock"],
    );
}

/// T18, T19 (review finding A): the signed lock pins `bulkhead.toml`. A
/// manifest edited after `bulkhead lock` and then signed again (manifest
/// and lock signatures both valid) is refused outside `dev`, naming the
/// file, both digests and the fix; `lock --check` names it too.
#[test]
fn t18_t19_a_manifest_edited_after_lock_is_refused_outside_dev() {
    let app = TestApp::new(
        &SIGNED.replace("[trust]\nsigners = [\"keys/release.pub\"]\n", ""),
        &["hello"],
    );
    let dir = app.path();
    // Strict `prod`-ready, locked and signed with keys/release.key.
    let master = support::prod::make_prod_ready(&app);
    let key = dir.join("keys/release.key");
    let staging = || {
        bulkhead(
            &["check", dir.to_str().unwrap(), "--env", "prod"],
            &master.env(),
        )
    };
    assert!(staging().status.success(), "{}", text(&staging()));
    let before = sha256_hex(&dir.join("bulkhead.toml"));
    let manifest = std::fs::read_to_string(dir.join("bulkhead.toml")).unwrap();
    std::fs::write(
        dir.join("bulkhead.toml"),
        manifest.replace("route = \"/hello\"", "route = \"/admin\""),
    )
    .unwrap();
    sign(&app, &key);
    let after = sha256_hex(&dir.join("bulkhead.toml"));
    let out = staging();
    assert!(!out.status.success(), "an edited manifest was accepted");
    let said = text(&out);
    for part in [
        "`bulkhead.toml` changed since it was locked",
        before.as_str(),
        after.as_str(),
        "bulkhead lock APP_DIR",
    ] {
        assert!(said.contains(part), "no `{part}` in:\n{said}");
    }
    let stale = bulkhead(&["lock", dir.to_str().unwrap(), "--check"], &[]);
    assert_eq!(stale.status.code(), Some(1), "{}", text(&stale));
    assert_says(&stale, &["bulkhead.toml: locked sha256:"]);
}

/// T18: `bulkhead lock` pins every component, sorted, never touching the
/// manifest; `--check` fails a stale lock; a changed component is refused
/// naming both digests, and a `digest =` line must agree with the lock.
#[test]
fn t18_the_lock_pins_components_and_check_mode_catches_a_stale_one() {
    let manifest = "[app]\nname = \"locked\"\n\n# keep this comment\n[[function]]\nname = \"hello\"\ncomponent = \"./hello.wasm\"\nroute = \"/hello\"\nauth = \"public\"\n\n[[function]]\nname = \"echo\"\ncomponent = \"echo.wasm\"\nroute = \"/echo\"\nauth = \"public\"\n";
    let app = TestApp::new(manifest, &["hello", "echo"]);
    let dir = app.path();
    let path = dir.to_str().unwrap();
    let stale = bulkhead(&["lock", path, "--check"], &[]);
    assert_eq!(stale.status.code(), Some(1), "{}", text(&stale));
    assert_says(&stale, &["there is no bulkhead.lock"]);
    let out = bulkhead(&["lock", path], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("bulkhead.toml")).unwrap(),
        manifest
    );
    let lock = std::fs::read_to_string(dir.join("bulkhead.lock")).unwrap();
    assert!(lock.starts_with("# Generated by `bulkhead lock`"), "{lock}");
    let hello_digest = sha256_hex(&dir.join("hello.wasm"));
    assert!(lock.contains(&hello_digest), "{lock}");
    assert!(
        lock.find("echo.wasm").unwrap() < lock.find("\"hello.wasm").unwrap(),
        "sorted: {lock}"
    );
    assert!(bulkhead(&["lock", path, "--check"], &[]).status.success());
    assert!(check(&app).status.success());

    // Swapped: refused with both digests and the fix.
    std::fs::copy(support::guest("echo"), dir.join("hello.wasm")).unwrap();
    let new_digest = sha256_hex(&dir.join("hello.wasm"));
    let out = check(&app);
    assert!(!out.status.success());
    let said = text(&out);
    for part in [
        "bulkhead.toml:7:",
        "`hello.wasm` changed since it was locked",
        &hello_digest,
        &new_digest,
        "bulkhead lock APP_DIR",
    ] {
        assert!(said.contains(part), "no `{part}` in:\n{said}");
    }
    let stale = bulkhead(&["lock", path, "--check"], &[]);
    assert_eq!(stale.status.code(), Some(1));
    assert_says(
        &stale,
        &[&format!(
            "hello.wasm: locked sha256:{hello_digest}, now sha256:{new_digest}"
        )],
    );

    // A `digest =` pin that disagrees with the lock.
    std::fs::copy(support::guest("hello"), dir.join("hello.wasm")).unwrap();
    let pinned = manifest.replace(
        "component = \"./hello.wasm\"\n",
        &format!("component = \"./hello.wasm\"\ndigest = \"sha256:{new_digest}\"\n"),
    );
    std::fs::write(dir.join("bulkhead.toml"), pinned).unwrap();
    let out = check(&app);
    assert_refused(&out, &["bulkhead.toml:8:"]);
    assert_says(&out, &["but `bulkhead.lock` pins `hello.wasm`"]);
}

/// Signatures and locks are optional in `dev` until the app names signers.
#[test]
fn t18_dev_without_signers_needs_no_signature() {
    let app = TestApp::new(
        &SIGNED.replace("[trust]\nsigners = [\"keys/release.pub\"]\n", ""),
        &["hello"],
    );
    let out = check(&app);
    assert!(out.status.success(), "{}", text(&out));
    assert_says(&out, &["trust      unsigned; not pinned"]);
    // A named key file that is not a key: the manifest line says so.
    let app = TestApp::new(SIGNED, &["hello"]);
    std::fs::create_dir_all(app.path().join("keys")).unwrap();
    std::fs::write(app.path().join("keys/release.pub"), "not a key\n").unwrap();
    let out = check(&app);
    assert_refused(&out, &["bulkhead.toml:12:"]);
    assert_says(&out, &["is not a minisign public key"]);
}

/// T18: `keygen` never replaces a directory entry at OUTPUT.key or
/// OUTPUT.pub, a dangling symlink included: refused, the link left as it
/// was, nothing written where it points, no half pair left behind.
#[test]
fn t18_keygen_never_replaces_a_dangling_symlink() {
    let app = TestApp::new(SIGNED, &["hello"]);
    let dir = app.path();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    for name in ["release.key", "release.pub"] {
        let link = dir.join("keys").join(name);
        let target = dir.join(format!("elsewhere-{name}"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = bulkhead(
            &[
                "keygen",
                "--output",
                dir.join("keys/release").to_str().unwrap(),
                "--unencrypted",
            ],
            &[],
        );
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert_says(&out, &["already exists"]);
        assert_says(&out, &[name]);
        assert_eq!(std::fs::read_link(&link).unwrap(), target, "{name}");
        assert!(!target.exists(), "{name}: nothing written through the link");
        let entries: Vec<_> = std::fs::read_dir(dir.join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries.len(), 1, "{name}: {entries:?}");
        std::fs::remove_file(&link).unwrap();
    }
}
