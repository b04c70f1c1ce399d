//! `bulkhead sbom` (T18): the real binary over the real hello example and
//! over apps made of the test guests. The SBOM is checked against the
//! official CycloneDX 1.5 JSON schema (tests/fixtures/cyclonedx), against
//! the workspace's own Cargo.lock (the host's crates and their checksums)
//! and against the component files themselves (digests, imports).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{TestApp, repo_root};

fn fixture(name: &str) -> Value {
    let path = repo_root()
        .join("crates/cli/tests/fixtures/cyclonedx")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("schema fixture");
    serde_json::from_str(&text).expect("schema is JSON")
}

/// Serves the schemas the CycloneDX schema `$ref`s, under the `$id`s it
/// names, from the fixtures; any other URI is an error, so nothing is
/// fetched.
struct Fixtures;

impl jsonschema::Retrieve for Fixtures {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        match uri.as_str() {
            "http://cyclonedx.org/schema/spdx.schema.json" => Ok(fixture("spdx.schema.json")),
            "http://cyclonedx.org/schema/jsf-0.82.schema.json" => {
                Ok(fixture("jsf-0.82.schema.json"))
            }
            other => Err(format!("not a fixture: {other}").into()),
        }
    }
}

/// The official CycloneDX 1.5 schema (draft-07), formats asserted.
fn cyclonedx_validator() -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(true)
        .with_retriever(Fixtures)
        .build(&fixture("bom-1.5.schema.json"))
        .expect("the CycloneDX 1.5 schema compiles")
}

fn assert_valid(bom: &Value) {
    let validator = cyclonedx_validator();
    let errors: Vec<String> = validator
        .iter_errors(bom)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not CycloneDX 1.5:\n{}",
        errors.join("\n")
    );
}

fn hello() -> TestApp {
    let example = repo_root().join("examples/hello");
    for component in ["hello-rust", "hello-python", "hello-js"] {
        assert!(
            example
                .join("build")
                .join(format!("{component}.wasm"))
                .is_file(),
            "{component}.wasm is missing: run examples/hello/build.sh (scripts/test does)"
        );
    }
    TestApp::existing(&example)
}

/// `bulkhead sbom APP ARGS...`, which must succeed: its stdout.
fn sbom(app: &TestApp, args: &[&str]) -> String {
    let out = app.run_with(&["sbom"], args);
    assert!(
        out.status.success(),
        "bulkhead sbom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("the SBOM is JSON")
}

fn components(bom: &Value) -> &[Value] {
    bom["components"].as_array().expect("components")
}

fn by_ref<'a>(bom: &'a Value, bom_ref: &str) -> &'a Value {
    components(bom)
        .iter()
        .find(|c| c["bom-ref"] == bom_ref)
        .unwrap_or_else(|| panic!("no component `{bom_ref}`"))
}

fn depends_on(bom: &Value, bom_ref: &str) -> BTreeSet<String> {
    let entry = bom["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .find(|d| d["ref"] == bom_ref)
        .unwrap_or_else(|| panic!("`{bom_ref}` is not in the dependency graph"));
    entry["dependsOn"]
        .as_array()
        .expect("dependsOn")
        .iter()
        .map(|v| v.as_str().expect("a ref").to_string())
        .collect()
}

fn property<'a>(component: &'a Value, name: &str) -> Vec<&'a str> {
    component["properties"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|p| p["name"] == name)
                .filter_map(|p| p["value"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// `name version` → checksum of every registry package in Cargo.lock.
fn lock_checksums() -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(repo_root().join("Cargo.lock")).expect("Cargo.lock");
    let mut map = BTreeMap::new();
    for block in text.split("[[package]]") {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{key} = \""))
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_string)
            })
        };
        if let (Some(n), Some(v), Some(c)) = (field("name"), field("version"), field("checksum")) {
            map.insert((n, v), c);
        }
    }
    map
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("component")))
}

#[test]
fn sbom_of_hello_is_valid_cyclonedx_1_5() {
    let app = hello();
    let bom = parse(&sbom(&app, &[]));
    assert_valid(&bom);
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");
    assert_eq!(bom["metadata"]["component"]["name"], "hello");
    let method = bom["metadata"]["properties"]
        .as_array()
        .expect("metadata properties")
        .iter()
        .find(|p| p["name"] == "bulkhead:host:method")
        .expect("the SBOM says how the host list was made");
    assert!(
        method["value"]
            .as_str()
            .unwrap_or_default()
            .contains("cargo tree")
    );

    // The validator does bite: a hash that is not hex, an unknown
    // component type.
    let mut broken = bom.clone();
    broken["components"][0]["hashes"][0]["content"] = "not a digest".into();
    broken["components"][1]["type"] = "plugin".into();
    let errors = cyclonedx_validator().iter_errors(&broken).count();
    assert!(errors >= 2, "{errors} schema error(s) for a broken SBOM");

    // With a timestamp it is still valid, and says when.
    let stamped = parse(&sbom(&app, &["--timestamp"]));
    assert_valid(&stamped);
    assert!(stamped["metadata"]["timestamp"].is_string(), "{stamped:#}");
    assert!(
        bom["metadata"]["timestamp"].is_null(),
        "no timestamp unless asked"
    );
}

/// The host is the crates linked into this binary, each pinned by the
/// checksum in Cargo.lock: not the dev-dependencies, build scripts'
/// helpers, proc-macros or the crypto provider the tree bans.
#[test]
fn host_lists_the_linked_crates_with_their_cargo_lock_checksums() {
    let bom = parse(&sbom(&hello(), &[]));
    let lock = lock_checksums();
    let crates: BTreeMap<(String, String), &Value> = components(&bom)
        .iter()
        .filter(|c| c["purl"].is_string())
        .map(|c| {
            let key = (
                c["name"].as_str().expect("name").to_string(),
                c["version"].as_str().expect("version").to_string(),
            );
            (key, c)
        })
        .collect();
    assert!(crates.len() > 100, "only {} crates listed", crates.len());
    let names: BTreeSet<&str> = crates.keys().map(|(n, _)| n.as_str()).collect();
    for known in [
        "wasmtime",
        "rustls",
        "aws-lc-rs",
        "hyper",
        "tokio",
        "rusqlite",
        "josekit",
    ] {
        assert!(names.contains(known), "`{known}` is linked but not listed");
    }
    let wasmtime = crates
        .iter()
        .find(|((n, _), _)| n == "wasmtime")
        .map(|((_, v), _)| v.clone())
        .expect("wasmtime");
    assert!(wasmtime.starts_with("48."), "wasmtime {wasmtime}");
    // Dev-only, build-only, proc-macro and banned crates are not linked.
    for absent in [
        "tempfile",
        "prometheus-parse",
        "cc",
        "serde_derive",
        "thiserror-impl",
        "ring",
    ] {
        assert!(
            !names.contains(absent),
            "`{absent}` is listed but not linked"
        );
    }
    assert_eq!(
        names.contains("opentelemetry"),
        cfg!(feature = "otlp"),
        "opentelemetry is linked exactly when the otlp feature is on"
    );

    for ((name, version), c) in &crates {
        let purl = format!("pkg:cargo/{name}@{version}");
        assert_eq!(c["purl"], purl.as_str());
        assert_eq!(c["bom-ref"], purl.as_str());
        match lock.get(&(name.clone(), version.clone())) {
            Some(sum) => {
                assert_eq!(
                    c["hashes"][0],
                    serde_json::json!({"alg": "SHA-256", "content": sum}),
                    "{name} {version}"
                );
            }
            // Only the workspace's own crates and the patched copies in
            // vendor/ (wasmtime, issue 17) have no registry checksum; those
            // say so, and name their patch.
            None if name.starts_with("bulkhead-") => {
                assert!(c["hashes"].is_null());
                assert_eq!(c["properties"][0]["value"], "workspace", "{name}");
            }
            None => {
                assert_eq!(name, "wasmtime", "{name} has no checksum");
                assert!(c["hashes"].is_null());
                assert_eq!(
                    c["properties"],
                    serde_json::json!([
                        {"name": "bulkhead:source", "value": "vendored"},
                        {"name": "bulkhead:patch", "value": "vendor/wasmtime.patch"},
                    ])
                );
            }
        }
    }
    let rustls = crates
        .iter()
        .find(|((n, _), _)| n == "rustls")
        .map(|(_, c)| *c)
        .expect("rustls");
    assert_eq!(
        rustls["licenses"][0]["expression"],
        "Apache-2.0 OR ISC OR MIT"
    );

    // The graph: app -> host -> its direct crates -> theirs.
    let host = by_ref(
        &bom,
        &format!("pkg:cargo/bulkhead-cli@{}", env!("CARGO_PKG_VERSION")),
    );
    assert_eq!(host["type"], "application");
    let app_deps = depends_on(&bom, "app:hello");
    assert!(app_deps.contains(host["bom-ref"].as_str().expect("ref")));
    let host_deps = depends_on(&bom, host["bom-ref"].as_str().expect("ref"));
    assert!(
        host_deps.contains("pkg:cargo/bulkhead-gateway@0.1.0"),
        "{host_deps:?}"
    );
    let wasmtime_ref = format!("pkg:cargo/wasmtime@{wasmtime}");
    let runtime_deps = depends_on(&bom, "pkg:cargo/bulkhead-runtime@0.1.0");
    assert!(runtime_deps.contains(&wasmtime_ref), "{runtime_deps:?}");
    // Every edge points at a listed component.
    let refs: BTreeSet<&str> = components(&bom)
        .iter()
        .filter_map(|c| c["bom-ref"].as_str())
        .chain(std::iter::once("app:hello"))
        .collect();
    for d in bom["dependencies"].as_array().expect("dependencies") {
        for on in d["dependsOn"].as_array().expect("dependsOn") {
            assert!(refs.contains(on.as_str().expect("ref")), "dangling {on}");
        }
    }
}

/// Each deployed component: its path, the SHA-256 of the file itself and
/// the interfaces it imports; functions point at their component.
#[test]
fn components_of_hello_carry_their_digest_and_imports() {
    let app = hello();
    let bom = parse(&sbom(&app, &[]));
    let functions = depends_on(&bom, "app:hello");
    for name in ["hello-rust", "hello-python", "hello-js"] {
        let function_ref = format!("function:{name}");
        assert!(functions.contains(&function_ref), "{functions:?}");
        let function = by_ref(&bom, &function_ref);
        assert_eq!(function["type"], "application");
        let route = format!("/hello/{}", name.trim_start_matches("hello-"));
        assert_eq!(property(function, "bulkhead:route"), [route.as_str()]);

        let path = format!("build/{name}.wasm");
        let component_ref = format!("component:{path}");
        assert_eq!(
            depends_on(&bom, &function_ref),
            BTreeSet::from([component_ref.clone()])
        );
        let component = by_ref(&bom, &component_ref);
        assert_eq!(component["name"], path.as_str());
        assert_eq!(
            component["hashes"],
            serde_json::json!([{"alg": "SHA-256", "content": sha256_hex(&app.path().join(&path))}])
        );
        let imports = property(component, "bulkhead:import");
        assert!(
            imports
                .iter()
                .any(|i| i.starts_with("wasi:http/types@0.2.")),
            "{name} imports {imports:?}"
        );
        let mut sorted = imports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(imports, sorted, "imports sorted, once each");
        // Signing is not wired into this build: no signer is claimed.
        assert_eq!(property(component, "bulkhead:signature"), ["not verified"]);
        assert!(property(component, "bulkhead:signer").is_empty());
    }
    // Python links filesystem and sockets by habit (T18's import check
    // binds them to deny-all): the SBOM shows it.
    let python = by_ref(&bom, "component:build/hello-python.wasm");
    let imports = property(python, "bulkhead:import");
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:filesystem/")),
        "{imports:?}"
    );
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:sockets/")),
        "{imports:?}"
    );
}

/// Two runs over the same input give the same bytes, on stdout and through
/// --output; a changed component changes the serial number.
#[test]
fn sbom_is_deterministic_and_written_atomically() {
    let app = TestApp::new(
        r#"[app]
name = "shared"

[[function]]
name = "one"
component = "hello.wasm"
route = "/one"
auth = "public"

[[function]]
name = "two"
component = "hello.wasm"
route = "/two"
auth = "public"
"#,
        &["hello"],
    );
    let first = sbom(&app, &[]);
    let second = sbom(&app, &[]);
    assert_eq!(first, second, "two runs differ");
    let out = app.path().join("sbom.cdx.json");
    let _ = sbom(&app, &["--output", out.to_str().expect("UTF-8 path")]);
    assert_eq!(std::fs::read_to_string(&out).expect("written"), first);
    let leftovers: Vec<_> = std::fs::read_dir(app.path())
        .expect("app dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // One component shared by two functions: listed once, used by both.
    let bom = parse(&first);
    assert_valid(&bom);
    let wasm: Vec<_> = components(&bom)
        .iter()
        .filter(|c| {
            c["bom-ref"]
                .as_str()
                .is_some_and(|r| r.starts_with("component:"))
        })
        .collect();
    assert_eq!(wasm.len(), 1);
    for f in ["function:one", "function:two"] {
        assert_eq!(
            depends_on(&bom, f),
            BTreeSet::from(["component:hello.wasm".to_string()])
        );
    }

    // Another artefact, another serial number.
    let mut bytes = std::fs::read(app.path().join("hello.wasm")).expect("component");
    // A custom section named `tail`: still a valid component.
    bytes.extend_from_slice(b"\x00\x05\x04tail");
    std::fs::write(app.path().join("hello.wasm"), &bytes).expect("rewrite");
    let changed = parse(&sbom(&app, &[]));
    assert_ne!(changed["serialNumber"], bom["serialNumber"]);
    assert_eq!(
        by_ref(&changed, "component:hello.wasm")["hashes"][0]["content"],
        hex::encode(Sha256::digest(&bytes)).as_str()
    );
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "bulkhead sbom succeeded");
    assert!(out.stdout.is_empty(), "no SBOM on failure");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An SBOM describes what would be served: a missing component, or one
/// that is not the artefact the manifest pins, is an error naming it.
#[test]
fn sbom_refuses_a_missing_or_swapped_component() {
    let missing = TestApp::new(
        r#"[app]
name = "missing"

[[function]]
name = "gone"
component = "gone.wasm"
route = "/gone"
auth = "public"
"#,
        &[],
    );
    let stderr = failure(&missing.run(&["sbom"]));
    assert!(stderr.contains("gone.wasm"), "{stderr}");
    assert!(
        stderr.contains("bulkhead.toml:6"),
        "the line of `component =`: {stderr}"
    );

    // A file that is not a WebAssembly component cannot be described.
    std::fs::write(
        missing.path().join("gone.wasm"),
        b"#!/bin/sh\necho not wasm\n",
    )
    .expect("write");
    let stderr = failure(&missing.run(&["sbom"]));
    assert!(stderr.contains("gone.wasm"), "{stderr}");
    assert!(
        stderr.contains("not a valid WebAssembly binary"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bulkhead.toml:6"),
        "the line of `component =`: {stderr}"
    );

    let pinned = hex::encode(Sha256::digest(b"another artefact"));
    let swapped = TestApp::new(
        &format!(
            r#"[app]
name = "swapped"

[[function]]
name = "hello"
component = "hello.wasm"
digest = "sha256:{pinned}"
route = "/hello"
auth = "public"
"#
        ),
        &["hello"],
    );
    let stderr = failure(&swapped.run(&["sbom"]));
    assert!(stderr.contains("hello.wasm"), "{stderr}");
    assert!(stderr.contains("not the digest"), "{stderr}");
    assert!(
        stderr.contains("bulkhead.toml:7"),
        "the line of `digest =`: {stderr}"
    );

    // --output onto a directory is refused, and the directory stays.
    let app = hello();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("sbom")
        .arg(app.path())
        .arg("--output")
        .arg(dir.path())
        .output()
        .expect("bulkhead runs");
    let stderr = failure(&out);
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert!(dir.path().is_dir());
}

/// T18: a component whose `.minisig` verifies under `[trust] signers` is
/// listed as verified with its signer's key id; once its signature is
/// moved away it is listed as not verified, never as signed.
#[test]
fn a_signed_component_names_its_verified_signer() {
    let app = TestApp::new(
        "[app]\nname = \"signed\"\n\n[trust]\nsigners = [\"keys/release.pub\"]\n\n\
         [[function]]\nname = \"hello\"\ncomponent = \"hello.wasm\"\nroute = \"/hello\"\nauth = \"public\"\n",
        &["hello"],
    );
    let key = support::prod::keygen(&app, "release");
    support::prod::sign(&app, &key);
    let bom = parse(&sbom(&app, &[]));
    let component = by_ref(&bom, "component:hello.wasm");
    assert_eq!(property(component, "bulkhead:signature"), ["verified"]);
    let signer = property(component, "bulkhead:signer");
    assert_eq!(signer.len(), 1, "{component}");
    let public = std::fs::read_to_string(app.path().join("keys/release.pub")).unwrap();
    // The key id is what `minisign` prints in the public key's comment.
    assert!(
        public.to_uppercase().contains(&signer[0].to_uppercase()),
        "signer {} is not the key in release.pub:\n{public}",
        signer[0]
    );

    std::fs::rename(
        app.path().join("hello.wasm.minisig"),
        app.path().join("moved.minisig"),
    )
    .unwrap();
    // The SBOM describes what is there, signed or not (`check` refuses).
    let bom = parse(&sbom(&app, &[]));
    let component = by_ref(&bom, "component:hello.wasm");
    assert_eq!(property(component, "bulkhead:signature"), ["not verified"]);
    assert!(property(component, "bulkhead:signer").is_empty());
}

/// T18: a component that no longer matches `bulkhead.lock` is not the
/// reviewed artefact: the SBOM is refused (exit 1, nothing on stdout),
/// naming the lock, both digests and the fix, as for a `digest =` pin.
#[test]
fn sbom_refuses_a_component_that_differs_from_the_lock() {
    let app = TestApp::new(
        r#"[app]
name = "locked"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#,
        &["hello"],
    );
    let out = app.run(&["lock"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let locked = sha256_hex(&app.path().join("hello.wasm"));
    sbom(&app, &[]);
    std::fs::copy(support::guest("echo"), app.path().join("hello.wasm")).expect("swap");
    let now = sha256_hex(&app.path().join("hello.wasm"));
    assert_ne!(locked, now);
    let out = app.run(&["sbom"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = failure(&out);
    assert!(stderr.contains("hello.wasm"), "{stderr}");
    assert!(stderr.contains("bulkhead.lock"), "{stderr}");
    assert!(stderr.contains(&locked), "the locked digest: {stderr}");
    assert!(stderr.contains(&now), "the file's digest: {stderr}");
    assert!(stderr.contains("bulkhead lock APP_DIR"), "{stderr}");
}
