//! `bulkhead --help` lists each subcommand with its own one-line summary.

use std::process::Command;

#[test]
fn help_pairs_each_subcommand_with_its_own_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("--help")
        .output()
        .expect("bulkhead runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line_of = |command: &str| -> String {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(command))
            .unwrap_or_else(|| panic!("`{command}` is not listed:\n{text}"))
            .trim_start()[command.len()..]
            .trim()
            .to_string()
    };
    for (command, summary) in [
        ("serve", "Serve every function of an app on its route"),
        (
            "check",
            "Validate the manifest and every component without serving",
        ),
        (
            "usage",
            "What the functions used and what it costs, from the durable meter",
        ),
        (
            "sbom",
            "Write a CycloneDX SBOM of the host and the app's components (T18)",
        ),
        ("audit", "Inspect the tamper-evident audit trail"),
        (
            "deploy",
            "Send a new version of the app to a running server, live",
        ),
        (
            "versions",
            "List the kept versions of the app, newest first",
        ),
        (
            "rollback",
            "Switch back to a kept version: live, or for the next start",
        ),
        ("admin", "Manage access to the admin listener"),
        (
            "tls",
            "TLS for the public listener: a development certificate",
        ),
        ("token", "Issue, list and revoke opaque session tokens"),
        ("keys", "Create, list and revoke API keys"),
        (
            "secrets",
            "Set, list, rotate and remove secrets functions read via wasi:config",
        ),
        (
            "data",
            "Erase or export one subject's data (subject-scoped stores)",
        ),
        ("keygen", "Make a minisign key pair to sign apps with"),
        (
            "sign",
            "Sign every component of an app, its manifest and its lock",
        ),
        ("lock", "Pin every component's SHA-256 in bulkhead.lock"),
    ] {
        assert_eq!(line_of(command), summary, "in:\n{text}");
    }
}

/// T18: the signing commands' help teaches the whole flow: where keys go,
/// how passwords are given (never argv), what is signed, how to verify
/// with the minisign CLI, what the lock pins and how CI checks it.
#[test]
fn the_signing_commands_teach_their_flow() {
    let help = |command: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args([command, "--help"])
            .output()
            .expect("bulkhead runs");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let keygen = help("keygen");
    for part in [
        "--output",
        "--password-file",
        "--unencrypted",
        "mode 0600",
        "never from the command line",
        "signers = [\"keys/release.pub\"]",
    ] {
        assert!(
            keygen.contains(part),
            "keygen --help lacks `{part}`:\n{keygen}"
        );
    }
    let sign = help("sign");
    for part in [
        "--key",
        "--password-file",
        "FILE.minisig",
        "bulkhead-v1 file=PATH sha256=HEX signed_at=UNIX",
        "minisign -V -p keys/release.pub -m FILE",
        "outside `dev` they are required",
    ] {
        assert!(sign.contains(part), "sign --help lacks `{part}`:\n{sign}");
    }
    let lock = help("lock");
    for part in [
        "--check",
        "exit status is 1",
        "never rewritten",
        "bulkhead lock my-app --check",
    ] {
        assert!(lock.contains(part), "lock --help lacks `{part}`:\n{lock}");
    }
}

/// `serve --workers` takes 1 to 1024 and says so; 0, text and huge values
/// are refused before anything starts (each worker is an OS thread).
#[test]
fn serve_workers_is_bounded() {
    for bad in ["0", "1025", "5000", "18446744073709551615", "-1", "abc"] {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["serve", "/nonexistent-app", &format!("--workers={bad}")])
            .output()
            .expect("bulkhead runs");
        assert_eq!(
            out.status.code(),
            Some(2),
            "--workers {bad} was not refused"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--workers"), "--workers {bad}: {err}");
    }
}
