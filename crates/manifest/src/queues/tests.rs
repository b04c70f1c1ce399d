//! `[queue.*]`, queue grants and `max_event_depth` (issue 18): defaults,
//! and each refusal with its fix.

use crate::queues::defaults;
use crate::{App, parse};

fn app(queues: &str, grants: &str) -> Result<App, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
    let manifest = format!(
        "[app]\nname = \"events\"\n{queues}\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\nauth = \"public\"\ngrants = {{ {grants} }}\n"
    );
    parse(
        dir.path(),
        &dir.path().join("bulkhead.toml"),
        &manifest,
        "dev",
    )
    .map_err(|e| e.to_string())
}

#[test]
fn queues_get_safe_defaults() {
    let app = app("[queue.telemetry]\n", "queues = { telemetry = \"send\" }").unwrap();
    let q = app.queue("telemetry").unwrap();
    assert_eq!(q.retention, defaults::RETENTION);
    assert_eq!(q.max_message_bytes, defaults::MAX_MESSAGE_BYTES);
    assert_eq!(q.max_attempts, defaults::MAX_ATTEMPTS);
    assert_eq!(q.visibility_timeout, defaults::VISIBILITY_TIMEOUT);
    assert_eq!(q.dead_letter, None);
    assert_eq!(app.limits.max_event_depth, 16);
    let grant = app.functions[0].grants.queues["telemetry"];
    assert_eq!(grant.max_messages_per_call, defaults::MESSAGES_PER_CALL);
    assert_eq!(grant.max_bytes_per_call, defaults::BYTES_PER_CALL);
}

#[test]
fn every_queue_key_and_a_capped_grant_resolve() {
    let app = app(
        "[limits]\nmax_event_depth = 4\n[queue.telemetry]\nretention = \"1d\"\nmax_message_bytes = \"8KiB\"\nmax_attempts = 3\nvisibility_timeout = \"1m\"\ndead_letter = \"telemetry-dead\"\n[queue.telemetry-dead]\n",
        "queues = { telemetry = { access = \"send\", max_messages = 2, max_bytes = \"16KiB\" } }",
    )
    .unwrap();
    let q = app.queue("telemetry").unwrap();
    assert_eq!(q.retention.get().as_secs(), 24 * 3600);
    assert_eq!(q.max_message_bytes.bytes(), 8192);
    assert_eq!(q.max_attempts, 3);
    assert_eq!(q.visibility_timeout.get().as_secs(), 60);
    assert_eq!(q.dead_letter.as_deref(), Some("telemetry-dead"));
    assert_eq!(app.limits.max_event_depth, 4);
    let grant = app.functions[0].grants.queues["telemetry"];
    assert_eq!(grant.max_messages_per_call, 2);
    assert_eq!(grant.max_bytes_per_call.bytes(), 16 * 1024);
}

#[test]
fn unknown_queue_keys_are_refused() {
    let err = app("[queue.telemetry]\nfifo = true\n", "").unwrap_err();
    assert!(err.contains("unknown field `fifo`"), "{err}");
    assert!(err.contains("dead_letter"), "{err}");
}

#[test]
fn bad_queue_names_and_bounds_are_refused() {
    let err = app("[queue.Telemetry]\n", "").unwrap_err();
    assert!(
        err.contains("queue name must start with a lowercase letter"),
        "{err}"
    );
    let err = app("[queue.q]\nmax_attempts = 0\n", "").unwrap_err();
    assert!(
        err.contains("`max_attempts` must be between 1 and 100"),
        "{err}"
    );
    let err = app("[queue.q]\nmax_message_bytes = \"2MiB\"\n", "").unwrap_err();
    assert!(
        err.contains("`max_message_bytes` may be at most 1MiB"),
        "{err}"
    );
    let err = app("[queue.q]\nretention = \"30d\"\n", "").unwrap_err();
    assert!(err.contains("`retention` may be at most"), "{err}");
    let err = app("[queue.q]\nvisibility_timeout = \"1d\"\n", "").unwrap_err();
    assert!(err.contains("`visibility_timeout` may be at most"), "{err}");
    let err = app("[queue.q]\nretention = \"0s\"\n", "").unwrap_err();
    assert!(err.contains("zero"), "{err}");
}

#[test]
fn dead_letter_queues_must_exist_and_not_cycle() {
    let err = app("[queue.a]\ndead_letter = \"nope\"\n", "").unwrap_err();
    assert!(err.contains("`dead_letter` queue is not declared"), "{err}");
    let err = app("[queue.a]\ndead_letter = \"a\"\n", "").unwrap_err();
    assert!(err.contains("cannot be its own `dead_letter`"), "{err}");
    let err = app(
        "[queue.a]\ndead_letter = \"b\"\n[queue.b]\ndead_letter = \"c\"\n[queue.c]\ndead_letter = \"a\"\n",
        "",
    )
    .unwrap_err();
    assert!(err.contains("(a cycle)"), "{err}");
    assert!(err.contains("must have no `dead_letter`"), "{err}");
}

#[test]
fn max_event_depth_is_bounded() {
    for bad in ["0", "65"] {
        let err = app(&format!("[limits]\nmax_event_depth = {bad}\n"), "").unwrap_err();
        assert!(
            err.contains("`max_event_depth` must be between 1 and 64"),
            "{err}"
        );
    }
    // An environment may change it, like any `[limits]` key.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
    let source = "[app]\nname = \"e\"\n[limits]\nmax_event_depth = 8\n[env.staging.limits]\nmax_event_depth = 2\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/\"\nauth = \"public\"\n";
    let path = dir.path().join("bulkhead.toml");
    let dev = parse(dir.path(), &path, source, "dev").unwrap();
    let staging = parse(dir.path(), &path, source, "staging").unwrap();
    assert_eq!(
        (dev.limits.max_event_depth, staging.limits.max_event_depth),
        (8, 2)
    );
}

#[test]
fn queue_grants_are_checked() {
    let err = app("", "queues = { telemetry = \"send\" }").unwrap_err();
    assert!(err.contains("names a queue that is not declared"), "{err}");
    let err = app(
        "[queue.telemetry]\n",
        "queues = { telemetry = \"receive\" }",
    )
    .unwrap_err();
    assert!(err.contains("a queue grant is `\"send\"`"), "{err}");
    assert!(err.contains("trigger = { queue = \"NAME\" }"), "{err}");
    let err = app(
        "[queue.telemetry]\n",
        "queues = { telemetry = { access = \"send\", burst = 3 } }",
    )
    .unwrap_err();
    assert!(
        err.contains("unknown key `burst` in a queue grant"),
        "{err}"
    );
    let err = app(
        "[queue.telemetry]\n",
        "queues = { telemetry = { access = \"send\", max_messages = 0 } }",
    )
    .unwrap_err();
    assert!(
        err.contains("`max_messages` must be a whole number from 1 to 1000"),
        "{err}"
    );
    let err = app(
        "[queue.telemetry]\nmax_message_bytes = \"64KiB\"\n",
        "queues = { telemetry = { access = \"send\", max_bytes = \"1KiB\" } }",
    )
    .unwrap_err();
    assert!(
        err.contains("`max_bytes` is below queue `telemetry`'s `max_message_bytes`"),
        "{err}"
    );
    let err = app(
        "[queue.telemetry]\n",
        "queues = { telemetry = { access = \"send\", max_bytes = \"lots\" } }",
    )
    .unwrap_err();
    assert!(
        err.contains("`max_bytes` must be a size like `1MiB`"),
        "{err}"
    );
}
