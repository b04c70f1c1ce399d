//! Issue 18, first slice: schedules and queues are declared and checked,
//! but nothing runs them yet, so `serve` refuses an app with a trigger
//! (never serving it while silently not running its triggers), and
//! `check` accepts it, compiling the triggered components too.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::TestApp;

const EVENTS: &str = r#"
[app]
name = "bins"

[queue.telemetry]
max_message_bytes = "8KiB"
dead_letter = "telemetry-dead"

[queue.telemetry-dead]

[[function]]
name = "bridge"
component = "hello.wasm"
route = "/telemetry"
methods = ["POST"]
auth = "public"
grants = { queues = { telemetry = { access = "send", max_messages = 5, max_bytes = "64KiB" } } }

[[function]]
name = "process"
component = "hello.wasm"
trigger = { queue = "telemetry" }

[[function]]
name = "summary"
component = "hello.wasm"
trigger = { schedule = "0 0 6 * * *" }
"#;

fn text(output: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_triggers_and_queues_and_lists_them() {
    let app = TestApp::new(EVENTS, &["hello"]);
    let out = app.run(&["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("3 function(s), all OK"), "{stdout}");
    assert!(stdout.contains("POST /telemetry -> bridge"), "{stdout}");
    assert!(
        stdout.contains("telemetry (send, at most 5 message(s) and 64KiB per call)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("queue `telemetry` -> process (not yet run by this build"),
        "{stdout}"
    );
    assert!(stdout.contains("caller     trigger:process"), "{stdout}");
    assert!(stdout.contains("event body 8KiB"), "{stdout}");
    assert!(
        stdout.contains("schedule `0 0 6 * * *` (UTC), overlap skip -> summary"),
        "{stdout}"
    );
    assert!(
        stdout.contains("a chain of events deeper than 16 is stopped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dead letters to `telemetry-dead`"),
        "{stdout}"
    );
}

/// `check` compiles a triggered function's component: one that is not a
/// component is refused, as for a routed function (T18).
#[test]
fn check_compiles_triggered_components() {
    let app = TestApp::new(EVENTS, &["hello"]);
    std::fs::write(app.path().join("not-a-component.wasm"), b"\0asm junk").unwrap();
    let manifest = EVENTS.replacen(
        "name = \"summary\"\ncomponent = \"hello.wasm\"",
        "name = \"summary\"\ncomponent = \"not-a-component.wasm\"",
        1,
    );
    std::fs::write(app.path().join("bulkhead.toml"), manifest).unwrap();
    let out = app.run(&["check"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("function `summary`"), "{stderr}");
}

#[test]
fn serve_refuses_an_app_with_triggers_until_they_run() {
    let app = TestApp::new(EVENTS, &["hello"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["serve"])
        .arg(app.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .env("BULKHEAD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A bound, not a timing assertion: a server that starts never exits.
    let limit = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > limit {
            child.kill().unwrap();
            panic!("`serve` started an app whose triggers it cannot run");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    for needle in [
        "function `process` has a trigger (queue `telemetry`), but triggers are not yet run by this build",
        "function `summary` has a trigger (schedule `0 0 6 * * *` (UTC), overlap skip)",
        "remove each function's `trigger`",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    // Refused like any deploy: audited.
    let refused = app.audit_records("deploy.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
}

#[test]
fn check_refuses_a_function_both_routed_and_triggered() {
    let manifest = EVENTS.replacen(
        "name = \"process\"\ncomponent = \"hello.wasm\"",
        "name = \"process\"\ncomponent = \"hello.wasm\"\nroute = \"/process\"",
        1,
    );
    let app = TestApp::new(&manifest, &["hello"]);
    let out = app.run(&["check"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("bulkhead.toml:22:"), "{stderr}");
    assert!(
        stderr.contains("function `process` has both `trigger` and `route`"),
        "{stderr}"
    );
    assert!(stderr.contains("remove `route`"), "{stderr}");
}
