//! Secrets and config end to end (T14, T15, T16): set through the CLI from
//! stdin (never argv), read by the `config` guest only when granted, every
//! read audited by name, the value redacted from the guest's output and
//! never on disk in plaintext; master-key rules outside `dev`.

mod support;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{Server, TestApp, get};

const MANIFEST: &str = r#"
[app]
name = "secretive"

[config]
greeting = "hello"
motto = "unseen"

[[function]]
name = "granted"
component = "config.wasm"
route = "/granted"
auth = "public"
input.query.key = '[a-z_]+'
input.query.print = true
input.query.all = true
input.query.fail = true
input.query.pad = '[0-9]{1,6}'
input.query.split = '[0-9]{1,3}'
input.query.gap = '[0-9]{1,4}'
grants = { secrets = ["stripe_key"], config = ["greeting"] }

[[function]]
name = "bare"
component = "config.wasm"
route = "/bare"
auth = "public"
input.query.key = '[a-z_]+'
input.query.print = true
"#;

const VALUE: &str = "sk_live_Canary9d8f7e";

/// `bulkhead ARGS APP_DIR EXTRA`, with `stdin` piped in and `env` set.
fn bulkhead(
    app: &TestApp,
    args: &[&str],
    extra: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    command
        .args(args)
        .arg(app.path())
        .args(extra)
        .env_remove("BULKHEAD_MASTER_KEY_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn t14_t15_secrets_are_granted_audited_redacted_and_sealed() {
    let app = TestApp::new(MANIFEST, &["config"]);

    // The value never goes on the command line: an extra argument is refused.
    let out = bulkhead(&app, &["secrets", "set"], &["stripe_key", VALUE], b"", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    // From stdin it is stored; set twice is refused (rotate replaces).
    let stdin = format!("{VALUE}\n");
    let out = bulkhead(
        &app,
        &["secrets", "set"],
        &["stripe_key"],
        stdin.as_bytes(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(VALUE));
    let out = bulkhead(&app, &["secrets", "set"], &["stripe_key"], b"again", &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("rotate"), "{}", text(&out));
    // Another secret exists but is granted to nobody.
    let out = bulkhead(
        &app,
        &["secrets", "set"],
        &["other_secret"],
        b"OtherCanary55",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    // A bad name is refused without echoing it.
    let out = bulkhead(&app, &["secrets", "set"], &["Bad Name"], b"x", &[]);
    assert!(!out.status.success() && !text(&out).contains("Bad Name"));

    // `list`: names and versions, never values.
    let listed = app.run_with(&["secrets", "list"], &[]);
    let listing = text(&listed);
    assert!(
        listing.contains("stripe_key") && listing.contains("other_secret"),
        "{listing}"
    );
    assert!(
        !listing.contains(VALUE) && !listing.contains("OtherCanary55"),
        "{listing}"
    );

    let checked = app.run(&["check"]);
    let listing = String::from_utf8_lossy(&checked.stdout);
    assert!(listing.contains("  secrets    stripe_key"), "{listing}");
    assert!(listing.contains("  config     greeting"), "{listing}");

    let server = Server::start(&app);
    // Granted secret and granted config value.
    // A granted secret is read (`value:`, not `none`), and its value never
    // leaves in the response body either (T14): redacted like the log.
    assert_eq!(
        get(server.addr, "/granted?key=stripe_key").await.text(),
        "value:[REDACTED]"
    );
    // Split between two writes 50 ms apart, streamed: still replaced whole.
    for split in [1, 5, VALUE.len() - 1] {
        let reply = get(
            server.addr,
            &format!("/granted?key=stripe_key&split={split}&gap=50"),
        )
        .await;
        assert_eq!(reply.text(), "value:[REDACTED] end", "split at {split}");
    }
    assert_eq!(
        get(server.addr, "/granted?key=greeting").await.text(),
        "value:hello"
    );
    // Ungranted: a secret that exists, a declared config key, an unknown key.
    for key in ["other_secret", "motto", "nothing_here"] {
        assert_eq!(
            get(server.addr, &format!("/granted?key={key}"))
                .await
                .text(),
            "none",
            "{key}"
        );
    }
    assert_eq!(
        get(server.addr, "/bare?key=stripe_key").await.text(),
        "none"
    );
    // get-all: only what is granted.
    let all = get(server.addr, "/granted?all=yes").await.text();
    assert!(
        all.contains("greeting=hello") && all.contains("stripe_key=[REDACTED]"),
        "{all}"
    );
    assert!(
        !all.contains("motto") && !all.contains("OtherCanary55"),
        "{all}"
    );

    // Printed to stdout and stderr: redacted in the log.
    let reply = get(server.addr, "/granted?key=stripe_key&print=yes").await;
    assert_eq!(reply.text(), format!("printed:{}", VALUE.len()));
    let correlation_id = reply.correlation_id();
    for stream in ["stdout", "stderr"] {
        let line = server.wait_for_log(
            |r| {
                r["target"] == "bulkhead::guest"
                    && r["correlation_id"] == correlation_id.as_str()
                    && r["stream"] == stream
            },
            Duration::from_secs(10),
        );
        assert_eq!(
            line["line"],
            format!("the value is [REDACTED] ({stream})"),
            "{line}"
        );
    }
    // Cut by the 64 KiB capture cap ten characters into the value: none
    // of it reaches the log.
    let cut_at = 65_536 - "the value is ".len() - 10;
    let reply = get(
        server.addr,
        &format!("/granted?key=stripe_key&print=yes&pad={cut_at}"),
    )
    .await;
    assert_eq!(reply.text(), format!("printed:{}", VALUE.len()));
    let correlation_id = reply.correlation_id();
    let cut_line = server.wait_for_log(
        |r| {
            r["correlation_id"] == correlation_id.as_str()
                && r["stream"] == "stdout"
                && r["line"]
                    .as_str()
                    .is_some_and(|l| l.contains("the value is"))
        },
        Duration::from_secs(10),
    );
    assert!(
        cut_line["line"]
            .as_str()
            .is_some_and(|l| l.ends_with("the value is [REDACTED]")),
        "{cut_line}"
    );
    server.wait_for_log(
        |r| {
            r["correlation_id"] == correlation_id.as_str()
                && r["message"] == "guest output over the cap was dropped"
        },
        Duration::from_secs(10),
    );
    for record in server.logs() {
        assert!(
            !record.to_string().contains(&VALUE[..10]),
            "a cut secret in the log: {record}"
        );
    }

    // A guest error carrying the value: redacted in the access log (and
    // in the audit record made from it).
    let reply = get(server.addr, "/granted?key=stripe_key&fail=yes").await;
    reply.assert_problem(500, "function-error");
    let access = server.access_record(&reply.correlation_id());
    let detail = access["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("failed holding [REDACTED]"), "{access}");
    let denials = server.wait_for_count(
        |r| r["message"] == "capability denied" && r["capability"] == "config",
        4,
    );
    assert_eq!(denials.len(), 4, "{denials:?}");
    for record in server.logs() {
        assert!(
            !record.to_string().contains(VALUE),
            "secret in the log: {record}"
        );
    }

    // Rotate: a new version, read at once; the old value is gone.
    let out = bulkhead(
        &app,
        &["secrets", "rotate"],
        &["stripe_key"],
        b"sk_live_Rotated42",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    // The body is redacted (T14): the new value's length shows it was read.
    assert_eq!(
        get(server.addr, "/granted?key=stripe_key&print=yes")
            .await
            .text(),
        format!("printed:{}", "sk_live_Rotated42".len())
    );
    let listing = text(&app.run_with(&["secrets", "list"], &[]));
    let line = listing
        .lines()
        .find(|l| l.starts_with("stripe_key"))
        .unwrap();
    assert_eq!(line.split_whitespace().nth(1), Some("2"), "{listing}");

    // No plaintext secret in any file of the state directory.
    let mut files = Vec::new();
    collect(&app.path().join(".bulkhead"), &mut files);
    for file in &files {
        // The running server replaces its head file (a temporary file
        // renamed): one listed may be gone by now.
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", file.display()),
        };
        for needle in [VALUE, "sk_live_Rotated42", "OtherCanary55"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in {}",
                file.display()
            );
        }
    }

    // Removed: the granted function now reads nothing.
    let out = app.run_with(&["secrets", "rm"], &["stripe_key"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        get(server.addr, "/granted?key=stripe_key").await.text(),
        "none"
    );
    assert!(server.stop().success());

    // Audit: every read by name, never a value; every change.
    let used = app.audit_records("capability.used");
    assert!(
        used.iter()
            .filter(|r| r.to_string().contains("stripe_key"))
            .count()
            == 9,
        "{used:?}"
    );
    let denied = app.audit_records("capability.denied");
    assert_eq!(denied.len(), 5, "{denied:?}");
    for kind in ["secret.set", "secret.rotated", "secret.removed"] {
        assert!(!app.audit_records(kind).is_empty(), "{kind}");
    }
    let everything = app.run_with(&["audit", "query"], &["--format", "json"]);
    let everything = text(&everything);
    for needle in [VALUE, "sk_live_Rotated42", "OtherCanary55"] {
        assert!(!everything.contains(needle), "{needle} in the audit trail");
    }
}

fn collect(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn t15_outside_dev_the_master_key_must_come_from_a_private_file() {
    let app = TestApp::new(MANIFEST, &["config"]);
    // No key file in prod: refused with instructions, nothing generated.
    let out = bulkhead(
        &app,
        &["secrets", "set"],
        &["stripe_key", "--env", "prod"],
        b"v",
        &[],
    );
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("BULKHEAD_MASTER_KEY_FILE") && message.contains("head -c 32"),
        "{message}"
    );
    assert!(!app.path().join(".bulkhead/prod/master.key").exists());
    // `check` (and so `serve`) refuses such an app the same way.
    let out = bulkhead(&app, &["check"], &["--env", "prod"], b"", &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("BULKHEAD_MASTER_KEY_FILE"),
        "{}",
        text(&out)
    );
    assert!(!app.path().join(".bulkhead/prod/master.key").exists());

    // A group-readable key file is refused.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, [0x42u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key_env = [("BULKHEAD_MASTER_KEY_FILE", key.to_str().unwrap())];
    let out = bulkhead(
        &app,
        &["secrets", "set"],
        &["stripe_key", "--env", "prod"],
        b"v",
        &key_env,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));

    // Private: accepted, in hex form too.
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = bulkhead(
        &app,
        &["secrets", "set"],
        &["stripe_key", "--env", "prod"],
        b"v",
        &key_env,
    );
    assert!(out.status.success(), "{}", text(&out));
    // A different master key cannot read what the first sealed.
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    let out = bulkhead(
        &app,
        &["secrets", "rotate"],
        &["stripe_key", "--env", "prod"],
        b"w",
        &key_env,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("does not unwrap"), "{}", text(&out));
}
