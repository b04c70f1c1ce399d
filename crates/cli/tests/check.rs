//! `bulkhead check`: the manifest is validated with every problem named by
//! file, line and fix; components are verified (T18 digest pin), compiled
//! once and cached with an integrity check; environments overlay (T19).

mod support;

use std::fs;

use support::{Server, TestApp};

const VALID: &str = r#"
[app]
name = "checked"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_valid_app_checks_out_and_lists_what_it_serves() {
    let app = TestApp::new(VALID, &["hello"]);
    let out = app.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("GET /hello -> hello"), "{text}");
    assert!(text.contains("timeout 10s, memory 128MiB"), "{text}");
    // T04: what one call holds of its budgets while it runs: 10 s at
    // 128 MiB, and its 6 MiB response and 16 MiB outbound caps at list price.
    assert!(
        text.contains("a call reserves up to 1.250000 GB-s, 0.002097 USD"),
        "{text}"
    );
    assert!(
        text.contains("wasi:http/types"),
        "imports are listed: {text}"
    );
}

#[test]
fn an_unknown_key_names_the_line_and_the_valid_keys() {
    let app = TestApp::new(
        &VALID.replace("route = \"/hello\"", "route = \"/hello\"\ncolour = \"red\""),
        &["hello"],
    );
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bulkhead.toml:9:1"), "{err}");
    assert!(err.contains("unknown field `colour`"), "{err}");
    assert!(err.contains("expected one of"), "{err}");
}

#[test]
fn a_bad_value_says_what_would_be_valid() {
    let app = TestApp::new(
        &VALID.replace(
            "route = \"/hello\"",
            "route = \"/hello\"\ntimeout = \"2 parsecs\"",
        ),
        &["hello"],
    );
    let err = stderr(&app.run(&["check"]));
    assert!(err.contains("bulkhead.toml:9:"), "{err}");
    assert!(err.contains("`2s`"), "{err}");
}

#[test]
fn every_problem_is_listed_at_once() {
    let app = TestApp::new(
        r#"
[app]
name = "Not Valid"

[[function]]
name = "a"
component = "missing.wasm"
route = "no-slash"
auth = "everyone"
max_concurrent_requests = 0

[[function]]
name = "a"
component = "hello.wasm"
route = "/x/{id}/{id}"
methods = ["FETCH"]
memory = "16GiB"
"#,
        &["hello"],
    );
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for expected in [
        "bulkhead.toml:3:8: app name must be",
        "bulkhead.toml:7:13: function `a`: component file `missing.wasm` does not exist",
        "bulkhead.toml:8:9: function `a`: route `no-slash` must start with `/`",
        "bulkhead.toml:9:8: function `a`: auth `everyone` is not one of \"public\"",
        "bulkhead.toml:10:27: `max_concurrent_requests` must be at least 1",
        "bulkhead.toml:13:8: function name `a` is used twice",
        "parameter `id` twice",
        "method `FETCH` is not one of",
        "`memory` must be between",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_missing_manifest_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("an app directory holds a `bulkhead.toml`"));
}

/// T18: a pinned digest that does not match refuses the deploy, for both
/// `check` and `serve`; the right digest passes.
#[test]
fn a_swapped_artifact_is_refused() {
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let manifest = VALID.replace(
        "route = \"/hello\"",
        &format!("route = \"/hello\"\ndigest = \"{wrong}\""),
    );
    let app = TestApp::new(&manifest, &["hello"]);
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("but the manifest pins"), "{err}");
    assert!(err.contains(&wrong));

    let serve = app.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!serve.status.success(), "serve refuses too");
    assert!(stderr(&serve).contains("but the manifest pins"));

    let actual = err
        .split("has SHA-256 ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("the error names the actual digest")
        .to_string();
    fs::write(
        app.path().join("bulkhead.toml"),
        manifest.replace(&wrong, &actual),
    )
    .unwrap();
    let out = app.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let app = TestApp::new(VALID, &[]);
    fs::write(app.path().join("hello.wasm"), b"\0asm not really").unwrap();
    let err = stderr(&app.run(&["check"]));
    assert!(err.contains("is not a WebAssembly component"), "{err}");
}

/// T18: an interface Bulkhead does not offer is refused at deploy, by name.
#[test]
fn a_component_importing_an_unknown_interface_is_refused() {
    let app = TestApp::new(&VALID.replace("hello.wasm", "greedy.wasm"), &["greedy"]);
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("imports an interface Bulkhead does not offer"),
        "{err}"
    );
    assert!(
        err.contains("attacker:vault/secrets"),
        "the interface is named: {err}"
    );
}

/// Components are compiled once; a tampered cache entry is detected,
/// rebuilt and never loaded.
#[test]
fn the_compile_cache_is_reused_and_tampering_is_detected() {
    let app = TestApp::new(VALID, &["hello"]);
    assert!(stderr(&app.run(&["check"])).contains("compiled and cached"));
    assert!(stderr(&app.run(&["check"])).contains("from the compile cache"));

    let cache = app.path().join(".bulkhead/dev/compile-cache");
    let entry = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a cache entry");
    let mut bytes = fs::read(&entry).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&entry, &bytes).unwrap();

    let out = app.run(&["check"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("failed its integrity check and was replaced"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&app.run(&["check"])).contains("from the compile cache"));

    // And the server still serves the real thing.
    let server = Server::start(&app);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(support::get(server.addr, "/hello"));
    assert_eq!(reply.status, 200);
}

/// T19: one manifest, overlays per environment; an undeclared environment
/// is an error that lists the known ones.
#[test]
fn environments_overlay_the_limits() {
    let manifest = format!(
        "{VALID}\n[env.prod.limits]\ntimeout = \"1s\"\n\n[env.canary.limits]\nmemory = \"64MiB\"\n"
    );
    let app = TestApp::new(&manifest, &["hello"]);
    assert!(stdout(&app.run(&["check"])).contains("timeout 10s"));
    // Outside dev the strict rules hold (T19): signed, locked, reasons given.
    let master_key = support::prod::make_prod_ready(&app);
    let path = app.path().to_str().unwrap();
    let check = |env: &str| {
        let out = support::prod::bulkhead(&["check", path, "--env", env], &master_key.env());
        assert!(out.status.success(), "{}", support::prod::text(&out));
        stdout(&out)
    };
    assert!(check("prod").contains("timeout 1s"));
    assert!(check("canary").contains("memory 64MiB"));
    let err = stderr(&app.run(&["check", "--env", "prdo"]));
    assert!(err.contains("environment `prdo` is not declared"), "{err}");
    assert!(err.contains("canary"), "{err}");
    // Each environment keeps its own state.
    assert!(app.path().join(".bulkhead/prod/compile-cache").is_dir());
}

/// A binary built without the `otlp` feature refuses `[telemetry]` rather
/// than silently exporting nothing (T08), in `check` and in `serve`, and
/// says how to build one that exports.
#[cfg(not(feature = "otlp"))]
#[test]
fn telemetry_without_the_otlp_feature_is_refused_with_how_to_build_it() {
    let manifest =
        format!("{VALID}\n[env.prod.telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n");
    let app = TestApp::new(&manifest, &["hello"]);
    assert!(app.run(&["check"]).status.success(), "dev exports nothing");
    let serve_options = ["--listen", "127.0.0.1:0", "--admin-listen", "off"];
    for (command, options) in [("check", &[][..]), ("serve", &serve_options[..])] {
        let options = [&["--env", "prod"][..], options].concat();
        let out = app.run_with(&[command], &options);
        assert!(!out.status.success(), "{command}");
        let err = stderr(&out);
        assert!(err.contains("bulkhead.toml:12:17"), "{command}: {err}");
        assert!(
            err.contains("without the `otlp` feature"),
            "{command}: {err}"
        );
        assert!(
            err.contains("cargo build --release -p bulkhead-cli --features otlp"),
            "{command}: {err}"
        );
    }
}

/// `bulkhead check` compiles every pattern and schema and names the file
/// and line of each problem; for a schema, the schema file.
#[test]
fn check_reports_bad_patterns_and_schemas_with_file_and_line() {
    let manifest = r#"
[app]
name = "badinput"

[[function]]
name = "one"
component = "echo.wasm"
route = "/one/{id}"
input.path.id = "[a-z"
input.path.other = "[a-z]+"
input.query.page = "(?=lookahead)"
input.headers = ["bulkhead-subject", "x ok"]
input.content_types = ["text/*"]
input.max_body = "1KiB"
max_request_body = "2KiB"
input.colour = "red"

[[function]]
name = "two"
component = "echo.wasm"
route = "/two"
methods = ["POST"]
input.body_schema = "schemas/broken.json"

[[function]]
name = "three"
component = "echo.wasm"
route = "/three"
methods = ["POST"]
input.body_schema = "schemas/remote.json"
input.content_types = ["text/plain"]
"#;
    let app = TestApp::new(manifest, &["echo"]);
    std::fs::create_dir(app.path().join("schemas")).unwrap();
    std::fs::write(
        app.path().join("schemas/broken.json"),
        "{\n  \"type\": \"object\",\n  \"properties\": {,}\n}\n",
    )
    .unwrap();
    std::fs::write(
        app.path().join("schemas/remote.json"),
        r#"{"$ref": "https://example.com/schema.json"}"#,
    )
    .unwrap();
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // An unknown key under `input` is a parse error that stops at once.
    assert!(
        err.contains("bulkhead.toml:16:") && err.contains("unknown field `colour`"),
        "{err}"
    );

    let fixed = manifest.replace("input.colour = \"red\"\n", "");
    std::fs::write(app.path().join("bulkhead.toml"), &fixed).unwrap();
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for expected in [
        "bulkhead.toml:9:17: function `one`: `input.path.id` is not a valid pattern",
        "bulkhead.toml:10:20: function `one`: `input.path.other` names no parameter of the route; the route has `{id}`",
        "bulkhead.toml:11:20: function `one`: `input.query.page` is not a valid pattern",
        "bulkhead.toml:12:18: function `one`: header `bulkhead-subject` is set by the gateway",
        "bulkhead.toml:12:38: function `one`: `x ok` is not a header name",
        "bulkhead.toml:13:24: function `one`: `text/*` is not a media type",
        "bulkhead.toml:14:18: function `one`: `input.max_body` and `max_request_body` are the same limit",
        "schemas/broken.json:3:18: function `two`: the body schema is not valid JSON",
        "schemas/remote.json: function `three`: the body schema does not compile",
        "bulkhead.toml:30:24: function `three`: `text/plain` is not JSON",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// The `.cwasm` entries of the dev compile cache.
fn cache_entries(app: &TestApp) -> std::collections::BTreeSet<std::path::PathBuf> {
    fs::read_dir(app.path().join(".bulkhead/dev/compile-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

/// The digest `check` reports for `component`.
fn reported_digest(app: &TestApp, component: &str) -> String {
    let out = app.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    text.split(&format!("/{component} ("))
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no digest for {component} in {text}"))
        .to_string()
}

const HELLO_ONLY: &str = r#"
[app]
name = "swapped"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

/// T18: a valid entry of one component copied over another component's
/// entry is not loaded: the MAC binds an entry to the component (and the
/// engine) it was built from. The pinned function runs its own code, the
/// deploy record's digest is what ran, and the swap is logged and audited.
#[test]
fn t18_a_cache_entry_copied_over_another_components_name_is_rejected() {
    let app = TestApp::new(HELLO_ONLY, &["hello", "echo"]);
    assert!(app.run(&["check"]).status.success());
    let hello_entries = cache_entries(&app);
    assert_eq!(hello_entries.len(), 1);
    let hello_entry = hello_entries.iter().next().unwrap().clone();

    let both = format!(
        "{HELLO_ONLY}\n[[function]]\nname = \"echo\"\ncomponent = \"echo.wasm\"\nroute = \"/echo/{{word}}\"\nauth = \"public\"\n"
    );
    fs::write(app.path().join("bulkhead.toml"), &both).unwrap();
    let digest = reported_digest(&app, "echo.wasm");
    let echo_entry = cache_entries(&app)
        .difference(&hello_entries)
        .next()
        .expect("an entry for echo")
        .clone();
    // Pin echo by digest, serve once, stop.
    let pinned = format!("{both}digest = \"{digest}\"\n");
    fs::write(app.path().join("bulkhead.toml"), &pinned).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = Server::start(&app);
    let reply = rt.block_on(support::get(server.addr, "/echo/x"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["method"], "GET");
    assert!(server.stop().success());

    // The attack: hello's valid entry under echo's name.
    fs::copy(&hello_entry, &echo_entry).unwrap();
    let server = Server::start(&app);
    let reply = rt.block_on(support::get(server.addr, "/echo/x"));
    assert_eq!(reply.status, 200);
    assert!(
        !reply.text().contains("Hello from a sealed compartment"),
        "echo ran hello's code: {}",
        reply.text()
    );
    assert_eq!(reply.json()["method"], "GET", "echo answers as echo");
    let hello = rt.block_on(support::get(server.addr, "/hello"));
    assert!(hello.text().contains("Hello from a sealed compartment"));
    server.wait_for_log(
        |r| r["reason"] == "cache-entry-rejected" && r["function"] == "echo",
        std::time::Duration::from_secs(10),
    );
    assert!(server.stop().success());

    let rejected = app.audit_records("cache.rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["function"], "echo");
    assert_eq!(rejected[0]["detail"]["digest"], digest.as_str());
    // The rebuilt entry is echo's own: served from the cache from now on.
    assert!(
        stderr(&app.run(&["check"])).contains("function `echo` ready (from the compile cache"),
        "the entry was replaced"
    );
    assert_ne!(
        fs::read(&hello_entry).unwrap(),
        fs::read(&echo_entry).unwrap()
    );
}

/// T18: a deploy deletes the entries it does not use, so the entry of a
/// superseded build is gone and cannot be copied back into place.
#[test]
fn t18_redeploying_a_changed_component_prunes_the_old_entry() {
    let app = TestApp::new(HELLO_ONLY, &["hello", "echo"]);
    let server = Server::start(&app);
    assert!(server.stop().success());
    let old = cache_entries(&app);
    assert_eq!(old.len(), 1);

    // A new build of the function's component.
    fs::copy(app.path().join("echo.wasm"), app.path().join("hello.wasm")).unwrap();
    let server = Server::start(&app);
    assert!(server.stop().success());
    let new = cache_entries(&app);
    assert_eq!(
        new.len(),
        1,
        "only the deployed build's entry is kept: {new:?}"
    );
    assert!(old.is_disjoint(&new), "the old build's entry is gone");
}

/// An app whose one function is granted `outbound` (a TOML array body).
fn with_outbound(entries: &str) -> String {
    VALID.replace(
        "auth = \"public\"",
        &format!("auth = \"public\"\ngrants = {{ outbound = [{entries}] }}"),
    )
}

/// T17: `check` lists each function's outbound destinations and warns,
/// naming the destination and the reason, about one no call can ever
/// reach (a name the resolver reads as loopback, a `.localhost` name, a
/// multicast address) and about one reaching the cloud metadata service;
/// `localhost` in dev is loopback on its port; a function with no grant
/// reaches nothing.
#[test]
fn check_lists_outbound_destinations_and_warns_about_unreachable_ones_t17() {
    let app = TestApp::new(
        &format!(
            "{}\n[[function]]\nname = \"bare\"\ncomponent = \"hello.wasm\"\nroute = \"/bare\"\nauth = \"public\"\n",
            with_outbound(
                r#""https://api.example.com", "http://localhost:3000", "http://10.0.0.5:8080",
                "http://2130706433", "http://app.localhost:3000", "http://224.0.0.1",
                "http://169.254.169.254", "http://127.0.0.1:9000""#,
            )
        ),
        &["hello"],
    );
    let out = app.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "  outbound   https://api.example.com:443\n",
        "             http://localhost:3000 (dev: this machine's loopback, port 3000 only, never resolved)\n",
        "             http://10.0.0.5:8080 (an internal address, granted exactly)\n",
        "             http://2130706433:80 (never reached)\n",
        "  warning    http://2130706433:80 can never be reached: `2130706433` is the address 127.0.0.1 written another way",
        "  warning    http://app.localhost:3000 can never be reached: names under `.localhost` resolve to loopback",
        "  warning    http://224.0.0.1:80 can never be reached: 224.0.0.1 is a multicast or broadcast address",
        "  warning    http://169.254.169.254:80 reaches a cloud metadata service",
        "  outbound   none\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // Loopback named exactly is what dev is for: no warning there, nor
    // for the private address a grant names on purpose.
    assert!(!text.contains("warning    http://127.0.0.1:9000"), "{text}");
    assert!(!text.contains("warning    http://10.0.0.5"), "{text}");
    assert!(
        !text.contains("warning    https://api.example.com"),
        "{text}"
    );
}

/// T17/T19: outside `dev` a grant naming `localhost` is refused by `check`
/// and `serve` at its line, saying why and what to do instead; a grant of
/// loopback by address still deploys there, but `check` warns and `serve`
/// logs that it reaches this machine.
#[test]
fn outside_dev_a_localhost_grant_is_refused_and_loopback_warned_t19() {
    let app = TestApp::new(&with_outbound(r#""http://localhost:3000""#), &["hello"]);
    assert!(app.run(&["check"]).status.success(), "dev allows it");
    let serve_options = ["--listen", "127.0.0.1:0", "--admin-listen", "off"];
    for env in ["staging", "prod"] {
        for (command, options) in [("check", &[][..]), ("serve", &serve_options[..])] {
            let options = [&["--env", env][..], options].concat();
            let out = app.run_with(&[command], &options);
            assert!(!out.status.success(), "{command} --env {env}");
            let err = stderr(&out);
            assert!(err.contains("bulkhead.toml:10:"), "{command}: {err}");
            assert!(
                err.contains("outbound entry `http://localhost:3000` names `localhost`"),
                "{command}: {err}"
            );
            assert!(err.contains("allowed only in `dev`"), "{command}: {err}");
            assert!(err.contains("grant the real host"), "{command}: {err}");
        }
    }

    let app = TestApp::new(&with_outbound(r#""http://127.0.0.1:9000""#), &["hello"]);
    assert!(!stdout(&app.run(&["check"])).contains("warning"));
    let master_key = support::prod::make_prod_ready(&app);
    let out = support::prod::bulkhead(
        &["check", app.path().to_str().unwrap(), "--env", "prod"],
        &master_key.env(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("  warning    http://127.0.0.1:9000 reaches this machine's loopback"),
        "{text}"
    );
    // `serve` does not reach it silently either: the deploy logs it.
    let server = Server::start_with_env(
        &app,
        &["--env", "prod", "--admin-listen", "off"],
        &master_key.env(),
    );
    let warning = server.wait_for_log(
        |r| {
            r["target"] == "bulkhead::deploy"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("reaches this machine's loopback"))
        },
        std::time::Duration::from_secs(10),
    );
    assert_eq!(warning["function"], "hello", "{warning}");
    assert_eq!(warning["level"], "WARN", "{warning}");
}

fn leb(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A component holding `depth` components, each inside the last, each
/// level instantiating the one inside it `fan_out` times.
fn nested_component(depth: usize, fan_out: usize) -> Vec<u8> {
    const HEADER: &[u8] = b"\0asm\x0d\0\x01\0";
    let mut bytes = HEADER.to_vec();
    for _ in 0..depth {
        let mut outer = HEADER.to_vec();
        outer.push(4); // a nested component section
        leb(&mut outer, bytes.len());
        outer.extend_from_slice(&bytes);
        if fan_out > 0 {
            // A component instance section: `fan_out` instantiations of
            // component 0 with no arguments.
            let mut section = Vec::new();
            leb(&mut section, fan_out);
            for _ in 0..fan_out {
                section.extend_from_slice(&[0, 0, 0]);
            }
            outer.push(5);
            leb(&mut outer, section.len());
            outer.extend_from_slice(&section);
        }
        bytes = outer;
    }
    bytes
}

#[test]
fn t05_a_component_nested_thousands_deep_is_refused_before_it_is_compiled() {
    // Outside attack on issue 13: 20,000 levels in 238 KB took wasmtime's
    // compiler past 3 GB; 200,000 levels, 23 GB and the OOM killer.
    let app = TestApp::new(VALID, &["hello"]);
    fs::write(app.path().join("hello.wasm"), nested_component(5000, 0)).expect("write");
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("nested more than 32 levels deep"), "{text}");
    // The threat model reads it without compiling, and says nothing worse.
    let out = app.run(&["threat-model"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn t05_a_component_that_fans_out_its_instances_is_refused_before_it_is_compiled() {
    // Second outside attack on issue 13: nine levels (under the depth
    // limit), each instantiating the next ten times, 357 bytes: 10^8
    // instances, past 2 GB in the compiler.
    let app = TestApp::new(VALID, &["hello"]);
    fs::write(app.path().join("hello.wasm"), nested_component(9, 10)).expect("write");
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("instances when instantiated, over the 10000 allowed"),
        "{text}"
    );
    // A few instantiations, as real components make, are not refused for it.
    fs::write(app.path().join("hello.wasm"), nested_component(3, 2)).expect("write");
    let text = stderr(&app.run(&["check"]));
    assert!(
        !text.contains("allowed") && !text.contains("nested more"),
        "{text}"
    );
}

/// Third outside attack: siblings reached by `alias outer`, each
/// instantiating the previous one ten times, `chain` of them (nesting
/// stays at two levels): 10^chain instances from a few hundred bytes.
fn alias_chain_component(chain: usize, fan_out: usize) -> Vec<u8> {
    const COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";
    const MODULE: &[u8] = b"\0asm\x01\0\0\0";
    let section = |id: u8, body: &[u8]| {
        let mut out = vec![id];
        leb(&mut out, body.len());
        out.extend_from_slice(body);
        out
    };
    let vec_of = |items: &[Vec<u8>]| {
        let mut out = Vec::new();
        leb(&mut out, items.len());
        for item in items {
            out.extend_from_slice(item);
        }
        out
    };
    // C0: one core instance of an empty module.
    let mut c0 = COMPONENT.to_vec();
    c0.extend(section(1, MODULE));
    c0.extend(section(2, &vec_of(&[vec![0, 0, 0]])));
    let mut root = COMPONENT.to_vec();
    root.extend(section(4, &c0));
    for i in 1..=chain {
        let mut alias = vec![4, 2, 1]; // sort component, outer, one level up
        leb(&mut alias, i - 1);
        let mut ci = COMPONENT.to_vec();
        ci.extend(section(6, &vec_of(&[alias])));
        ci.extend(section(5, &vec_of(&vec![vec![0, 0, 0]; fan_out])));
        root.extend(section(4, &ci));
    }
    let mut last = vec![0];
    leb(&mut last, chain);
    last.push(0);
    root.extend(section(5, &vec_of(&[last])));
    root
}

#[test]
fn t05_instances_fanned_out_through_aliased_siblings_are_refused_before_compiling() {
    // 390 bytes took `check` past 2 GB in 5 s before the bound counted
    // instantiations whatever component they name.
    let app = TestApp::new(VALID, &["hello"]);
    fs::write(app.path().join("hello.wasm"), alias_chain_component(7, 10)).expect("write");
    let out = app.run(&["check"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("instances when instantiated, over the 10000 allowed"),
        "{text}"
    );
}
