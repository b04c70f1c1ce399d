//! Triggers (issue 18): what is accepted, and each refusal with its fix.

use crate::{App, Overlap, Trigger, parse};

/// A manifest: `[app]`, then `rest` (functions and queues) verbatim.
fn app(rest: &str) -> Result<App, String> {
    app_in(rest, "dev")
}

fn app_in(rest: &str, env: &str) -> Result<App, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
    let manifest = format!("[app]\nname = \"events\"\n{rest}");
    parse(
        dir.path(),
        &dir.path().join("bulkhead.toml"),
        &manifest,
        env,
    )
    .map_err(|e| e.to_string())
}

fn triggered(trigger: &str) -> String {
    format!("[[function]]\nname = \"t\"\ncomponent = \"f.wasm\"\ntrigger = {trigger}\n")
}

const QUEUE: &str = "[queue.telemetry]\n";

#[test]
fn schedule_every_and_queue_triggers_resolve() {
    let source = format!(
        "{QUEUE}[[function]]\nname = \"web\"\ncomponent = \"f.wasm\"\nroute = \"/\"\nauth = \"public\"\n\n[[function]]\nname = \"cron\"\ncomponent = \"f.wasm\"\ntrigger = {{ schedule = \"0 */5 * * * *\" }}\n\n[[function]]\nname = \"tick\"\ncomponent = \"f.wasm\"\ntrigger = {{ every = \"30s\", overlap = \"queue\" }}\n\n[[function]]\nname = \"worker\"\ncomponent = \"f.wasm\"\ntimeout = \"20s\"\ntrigger = {{ queue = \"telemetry\" }}\n"
    );
    let app = app(&source).unwrap();
    // Only the HTTP function is routed; the triggered ones are apart.
    assert_eq!(app.functions.len(), 1);
    assert_eq!(app.functions[0].name, "web");
    assert_eq!(app.triggered.len(), 3);
    assert_eq!(app.all_functions().count(), 4);
    match &app.triggered[0].trigger {
        Trigger::Schedule { schedule, overlap } => {
            assert_eq!(schedule.as_str(), "0 */5 * * * *");
            assert_eq!(*overlap, Overlap::Skip);
            // 2026-01-01T00:01:00Z -> the next five-minute mark, 00:05:00.
            let t0 = 1_767_225_660_000;
            assert_eq!(schedule.next_after_ms(t0), Some(1_767_225_900_000));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        app.triggered[1].trigger,
        Trigger::Every {
            period: "30s".parse().unwrap(),
            overlap: Overlap::Queue
        }
    );
    let worker = &app.triggered[2];
    assert_eq!(
        worker.trigger,
        Trigger::Queue {
            queue: "telemetry".into()
        }
    );
    assert_eq!(worker.trigger.caller("worker"), "trigger:worker");
    // The event is posted on an internal route, with the queue's size cap.
    assert_eq!(worker.function.route.as_str(), "/");
    assert_eq!(worker.function.methods, ["POST"]);
    assert_eq!(
        worker.function.limits.max_request_body,
        crate::queues::defaults::MAX_MESSAGE_BYTES
    );
}

#[test]
fn a_function_is_routed_or_triggered_not_both() {
    for (key, line) in [
        ("route", "route = \"/x\""),
        ("methods", "methods = [\"POST\"]"),
        ("auth", "auth = \"public\""),
        ("scopes", "scopes = [\"a\"]"),
        ("rate_limit", "rate_limit = { per_caller = \"1/s\" }"),
        ("max_request_body", "max_request_body = \"1KiB\""),
        ("input", "input = { headers = [\"x-a\"] }"),
    ] {
        let source = format!(
            "[[function]]\nname = \"t\"\ncomponent = \"f.wasm\"\n{line}\ntrigger = {{ every = \"1m\" }}\n"
        );
        let err = app(&source).unwrap_err();
        assert!(
            err.contains(&format!("has both `trigger` and `{key}`")),
            "{key}: {err}"
        );
        assert!(err.contains(&format!("remove `{key}`")), "{key}: {err}");
    }
}

#[test]
fn a_function_without_route_or_trigger_is_told_both_ways() {
    let err = app("[[function]]\nname = \"t\"\ncomponent = \"f.wasm\"\n").unwrap_err();
    assert!(err.contains("has no `route`"), "{err}");
    assert!(err.contains("add `route = \"/path\"`"), "{err}");
    assert!(err.contains("`trigger`"), "{err}");
}

#[test]
fn a_trigger_names_exactly_one_source() {
    for bad in [
        "{ }",
        "{ every = \"1m\", schedule = \"0 * * * * *\" }",
        "{ every = \"1m\", queue = \"telemetry\" }",
    ] {
        let err = app(&format!("{QUEUE}{}", triggered(bad))).unwrap_err();
        assert!(err.contains("needs exactly one of"), "{bad}: {err}");
    }
}

#[test]
fn unknown_trigger_keys_are_refused() {
    let err = app(&triggered("{ every = \"1m\", cron = \"x\" }")).unwrap_err();
    assert!(err.contains("unknown field `cron`"), "{err}");
}

#[test]
fn bad_schedules_are_refused_with_the_form() {
    for bad in [
        "*/5 * * * *",
        "every five minutes",
        "0 61 * * * *",
        "0 0 0 30 2 *",
    ] {
        let err = app(&triggered(&format!("{{ schedule = \"{bad}\" }}"))).unwrap_err();
        assert!(err.contains("`schedule`"), "{bad}: {err}");
        assert!(
            err.contains("0 */5 * * * *") || err.contains("never fires"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn bad_every_and_overlap_are_refused() {
    let err = app(&triggered("{ every = \"soon\" }")).unwrap_err();
    assert!(err.contains("`every`") && err.contains("`2s`"), "{err}");
    let err = app(&triggered("{ every = \"500ms\" }")).unwrap_err();
    assert!(err.contains("`every` must be at least 1s"), "{err}");
    let err = app(&triggered("{ every = \"1m\", overlap = \"pile\" }")).unwrap_err();
    assert!(err.contains("`overlap` must be \"skip\""), "{err}");
    let err = app(&format!(
        "{QUEUE}{}",
        triggered("{ queue = \"telemetry\", overlap = \"skip\" }")
    ))
    .unwrap_err();
    assert!(err.contains("remove `overlap`"), "{err}");
}

#[test]
fn a_queue_trigger_needs_a_declared_queue_with_one_consumer() {
    let err = app(&triggered("{ queue = \"nope\" }")).unwrap_err();
    assert!(err.contains("queue is not declared"), "{err}");
    assert!(err.contains("[queue.NAME]"), "{err}");
    let two = format!(
        "{QUEUE}{}[[function]]\nname = \"u\"\ncomponent = \"f.wasm\"\ntrigger = {{ queue = \"telemetry\" }}\n",
        triggered("{ queue = \"telemetry\" }")
    );
    let err = app(&two).unwrap_err();
    assert!(err.contains("triggers both `t` and `u`"), "{err}");
}

#[test]
fn a_visibility_timeout_shorter_than_the_consumer_timeout_is_refused() {
    let source = "[queue.telemetry]\nvisibility_timeout = \"5s\"\n[[function]]\nname = \"t\"\ncomponent = \"f.wasm\"\ntimeout = \"10s\"\ntrigger = { queue = \"telemetry\" }\n";
    let err = app(source).unwrap_err();
    assert!(err.contains("delivered again while it still runs"), "{err}");
    assert!(
        err.contains("raise `visibility_timeout` to at least 10s"),
        "{err}"
    );
}

/// T18: a triggered function's component is held to the same strict
/// rules as a routed one (pinned, owned) outside `dev`.
#[test]
fn strict_rules_cover_triggered_functions() {
    let app = app_in(&triggered("{ every = \"1m\" }"), "dev").unwrap();
    let mut staging = app.clone();
    staging.env = "staging".into();
    let problems = crate::strict::check(&staging, &crate::strict::Host::default());
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|p| p.contains("function `t`: component") && p.contains("not pinned")),
        "{text:?}"
    );
}
