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
    ] {
        assert_eq!(line_of(command), summary, "in:\n{text}");
    }
}
