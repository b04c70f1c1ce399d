//! `bulkhead sbom`: a CycloneDX 1.5 software bill of materials of what a
//! deployment runs (T18): the host, meaning this `bulkhead` binary's own
//! crates (embedded at build time by build.rs), and the app's components,
//! each with its SHA-256, its signer when a trusted signature verifies, and
//! the interfaces it imports. A scanner matches the crates against
//! advisories; a reviewer sees what each function is built from.
//!
//! The output is deterministic: everything sorted, the serial number derived
//! from the content, and no timestamp unless asked for, so two runs over the
//! same app and binary are byte-identical and an SBOM can be diffed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bulkhead_manifest::App;
use bulkhead_report::ComponentFacts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Target, load_manifest, report, threat_model_cmd};

/// The host's crates, as build.rs found them for this build.
const HOST_DEPS: &str = include_str!(concat!(env!("OUT_DIR"), "/host-deps.json"));

/// What the host list leaves out, said in the SBOM itself.
const HOST_LIMITS: &str = "lists the crates linked into this bulkhead binary (normal dependencies \
    for its target and features); build scripts and proc-macros run only while compiling and are \
    left out; C code vendored by -sys crates (aws-lc, SQLCipher, ...) appears as the crate that \
    vendors it; shared system libraries (libc, the system's libcrypto) are not listed; workspace \
    crates carry no hash; resolved as `cargo build -p bulkhead-cli` does, so features a \
    whole-workspace build unifies in are not seen";

pub fn run(target: &Target, output: Option<&Path>, timestamp: bool) -> Result<ExitCode> {
    let app = match load_manifest(target) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    let deployed = deployed(&app)?;
    let host: Value = serde_json::from_str(HOST_DEPS)
        .context("the dependency list embedded in this binary is unreadable; rebuild bulkhead")?;
    let now = timestamp
        .then(|| humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
    let bom = bom(&app, &deployed, &host, now.as_deref())?;
    let mut text = serde_json::to_string_pretty(&bom).context("cannot serialise the SBOM")?;
    text.push('\n');
    threat_model_cmd::emit(output, &text, "the SBOM")?;
    let crates = bom["components"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|c| c["purl"].is_string()).count());
    eprintln!(
        "SBOM of `{}` (env {}): {} function(s), {} component(s), host bulkhead {} with {} crate(s)",
        app.name,
        app.env,
        app.functions.len(),
        deployed.len(),
        env!("CARGO_PKG_VERSION"),
        crates.saturating_sub(1)
    );
    Ok(ExitCode::SUCCESS)
}

/// One component file of the app, read once however many functions use it.
struct Deployed {
    /// Its path as the manifest names it, relative to the app, `/`-separated.
    name: String,
    digest: String,
    imports: BTreeSet<String>,
    signer: Option<String>,
    functions: BTreeSet<String>,
}

/// Every component the app deploys, keyed by path. A component that cannot
/// be read, or that differs from the digest the manifest or `bulkhead.lock`
/// pins, is an error:
/// an SBOM must describe what would really be served.
fn deployed(app: &App) -> Result<BTreeMap<PathBuf, Deployed>> {
    let mut out: BTreeMap<PathBuf, Deployed> = BTreeMap::new();
    for f in &app.functions {
        if let Some(d) = out.get_mut(&f.component) {
            d.functions.insert(f.name.clone());
            continue;
        }
        let name = relative_name(app, &f.component);
        let facts = ComponentFacts::read(&f.component);
        let (Some(digest), Ok(imports)) = (facts.digest, facts.imports.clone()) else {
            let why = facts.imports.err().unwrap_or_else(|| "unreadable".into());
            bail!(
                "function `{}`: component {} cannot be described: {why}; build it, or fix its \
                 `component =` at {}",
                f.name,
                f.component.display(),
                at(app, &f.name, "component")
            );
        };
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or(&digest)
            .to_string();
        if let Some(pinned) = f.digest
            && hex != hex::encode(pinned)
        {
            bail!(
                "function `{}`: component {} is sha256:{hex}, not the digest pinned at {}; \
                 `bulkhead check` refuses it too. Rebuild the pinned artefact, or pin the new one",
                f.name,
                f.component.display(),
                at(app, &f.name, "digest")
            );
        }
        // T18: a component that no longer matches `bulkhead.lock` is not
        // what was reviewed and locked; refused, as `bulkhead check` does.
        if let Some(locked) = f.locked
            && hex != hex::encode(locked)
        {
            bail!(
                "function `{}`: component {} is sha256:{hex}, but {} pins sha256:{}; \
                 `bulkhead check` refuses it too. Review the new artefact, then run \
                 `bulkhead lock APP_DIR` (and `bulkhead sign`), or rebuild the locked one",
                f.name,
                f.component.display(),
                app.dir.join(bulkhead_manifest::LOCK_FILE).display(),
                hex::encode(locked)
            );
        }
        out.insert(
            f.component.clone(),
            Deployed {
                name,
                digest: hex,
                imports: imports.into_iter().collect(),
                signer: verified_signer(app, &f.component),
                functions: BTreeSet::from([f.name.clone()]),
            },
        );
    }
    Ok(out)
}

/// The key id of the trusted signer whose `.minisig` beside `component`
/// verifies it under the environment's `[trust] signers` (T18); `None`
/// when the app names no signers or the signature does not verify.
fn verified_signer(app: &App, component: &Path) -> Option<String> {
    if app.signers.is_empty() {
        return None;
    }
    bulkhead_manifest::trust::verify_file(component, &app.dir, &app.signers)
        .ok()
        .map(|signed| signed.key_id)
}

/// `bulkhead.toml:LINE` of a function's setting (or of the function).
fn at(app: &App, function: &str, key: &str) -> String {
    let line = app.lines.first(&[
        &format!("function.{function}.{key}"),
        &format!("function.{function}"),
    ]);
    match line {
        Some(line) => format!("{}:{line}", app.manifest_path.display()),
        None => app.manifest_path.display().to_string(),
    }
}

fn relative_name(app: &App, path: &Path) -> String {
    let rel = path.strip_prefix(&app.dir).unwrap_or(path);
    rel.to_string_lossy().replace('\\', "/")
}

/// The whole document, serial number included.
fn bom(
    app: &App,
    deployed: &BTreeMap<PathBuf, Deployed>,
    host: &Value,
    timestamp: Option<&str>,
) -> Result<Value> {
    let app_ref = format!("app:{}", app.name);
    let (host_ref, host_components, mut dependencies) = host_part(host)?;
    let (mut components, app_dependencies) = app_part(app, deployed);
    dependencies.extend(app_dependencies);
    let mut app_uses: BTreeSet<String> = app
        .functions
        .iter()
        .map(|f| format!("function:{}", f.name))
        .collect();
    app_uses.insert(host_ref);
    dependencies.insert(app_ref.clone(), app_uses);

    components.extend(host_components);
    components.sort_by(|a, b| a["bom-ref"].as_str().cmp(&b["bom-ref"].as_str()));

    let mut metadata = json!({
        "tools": {"components": [{
            "type": "application",
            "name": "bulkhead",
            "version": env!("CARGO_PKG_VERSION"),
        }]},
        "component": {
            "type": "application",
            "bom-ref": app_ref,
            "name": app.name,
            "description": "Bulkhead app",
        },
        "properties": [
            {"name": "bulkhead:env", "value": app.env},
            {"name": "bulkhead:host:method", "value": host["method"]},
            {"name": "bulkhead:host:target", "value": host["target"]},
            {"name": "bulkhead:host:features", "value": features(host)},
            {"name": "bulkhead:host:limits", "value": HOST_LIMITS},
        ],
    });
    if let Some(at) = timestamp {
        metadata["timestamp"] = json!(at);
    }
    let mut bom = json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": metadata,
        "components": components,
        "dependencies": dependencies
            .into_iter()
            .map(|(r, on)| json!({"ref": r, "dependsOn": on}))
            .collect::<Vec<_>>(),
    });
    bom["serialNumber"] = json!(serial_number(&bom)?);
    Ok(bom)
}

/// The app's functions and components, and their edges, keyed by bom-ref.
fn app_part(app: &App, deployed: &BTreeMap<PathBuf, Deployed>) -> (Vec<Value>, Graph) {
    let mut dependencies = Graph::new();
    let mut components = vec![];
    // Function name -> the bom-ref of the component it runs.
    let mut functions = BTreeMap::new();
    for d in deployed.values() {
        let component_ref = format!("component:{}", d.name);
        let mut properties: Vec<Value> = d
            .imports
            .iter()
            .map(|i| json!({"name": "bulkhead:import", "value": i}))
            .collect();
        properties.push(json!({
            "name": "bulkhead:signature",
            "value": if d.signer.is_some() { "verified" } else { "not verified" },
        }));
        if let Some(signer) = &d.signer {
            properties.push(json!({"name": "bulkhead:signer", "value": signer}));
        }
        components.push(json!({
            "type": "library",
            "bom-ref": component_ref,
            "name": d.name,
            "description": "WebAssembly component (wasi:http)",
            "hashes": [{"alg": "SHA-256", "content": d.digest}],
            "properties": properties,
        }));
        dependencies.insert(component_ref.clone(), BTreeSet::new());
        for f in &d.functions {
            functions.insert(f.clone(), component_ref.clone());
        }
    }
    for f in &app.functions {
        let function_ref = format!("function:{}", f.name);
        components.push(json!({
            "type": "application",
            "bom-ref": function_ref,
            "name": f.name,
            "description": "Bulkhead function",
            "properties": [{"name": "bulkhead:route", "value": f.route.to_string()}],
        }));
        let uses = functions.get(&f.name).cloned().into_iter().collect();
        dependencies.insert(function_ref, uses);
    }
    (components, dependencies)
}

fn features(host: &Value) -> String {
    let names: Vec<&str> = host["features"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "default".into()
    } else {
        names.join(",")
    }
}

/// Who depends on whom, by bom-ref.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The host: the `bulkhead` application's bom-ref, it and its crates, and
/// the edges between them.
type HostPart = (String, Vec<Value>, Graph);

fn host_part(host: &Value) -> Result<HostPart> {
    let packages = host["packages"].as_array().context(
        "the dependency list embedded in this binary lists no packages; rebuild bulkhead",
    )?;
    let field = |p: &Value, k: &str| p[k].as_str().unwrap_or_default().to_string();
    let purl = |key: &str| {
        let (name, version) = key.split_once('@').unwrap_or((key, ""));
        format!("pkg:cargo/{name}@{version}")
    };
    let mut components = vec![];
    let mut dependencies = Graph::new();
    let mut host_ref = None;
    for p in packages {
        let (name, version) = (field(p, "name"), field(p, "version"));
        let bom_ref = purl(&format!("{name}@{version}"));
        let uses: BTreeSet<String> = p["dependencies"]
            .as_array()
            .map(|d| d.iter().filter_map(Value::as_str).map(purl).collect())
            .unwrap_or_default();
        dependencies.insert(bom_ref.clone(), uses);
        let mut c = json!({
            "type": "library",
            "bom-ref": bom_ref,
            "name": name,
            "version": version,
            "purl": bom_ref,
        });
        if name == "bulkhead-cli" {
            c["type"] = json!("application");
            c["description"] = json!("the bulkhead host: gateway and WebAssembly runtime");
            host_ref = Some(bom_ref.clone());
        }
        if let Some(sum) = p["checksum"].as_str() {
            c["hashes"] = json!([{"alg": "SHA-256", "content": sum}]);
        }
        let license = field(p, "license");
        if !license.is_empty() {
            // Cargo's old `MIT/Apache-2.0` spelling means OR.
            c["licenses"] = json!([{"expression": license.replace('/', " OR ")}]);
        }
        let repository = field(p, "repository");
        if !repository.is_empty() {
            c["externalReferences"] = json!([{"type": "vcs", "url": repository}]);
        }
        match field(p, "source").as_str() {
            "crates.io" => {}
            // The published crate plus a patch of ours (vendor/README.md):
            // no registry checksum describes what was built (T18).
            "vendor" => {
                c["properties"] = json!([
                    {"name": "bulkhead:source", "value": "vendored"},
                    {"name": "bulkhead:patch", "value": format!("vendor/{name}.patch")},
                ]);
            }
            _ => c["properties"] = json!([{"name": "bulkhead:source", "value": "workspace"}]),
        }
        components.push(c);
    }
    let host_ref = host_ref.context(
        "the dependency list embedded in this binary has no bulkhead-cli; rebuild bulkhead",
    )?;
    Ok((host_ref, components, dependencies))
}

/// A `urn:uuid:` derived from the SHA-256 of the document without it: the
/// same content always gets the same serial, other content another. The
/// schema wants an RFC 4122 shape, so the version nibble says 5 (name-based)
/// and the variant bits are set.
fn serial_number(bom: &Value) -> Result<String> {
    let bytes = serde_json::to_vec(bom).context("cannot serialise the SBOM")?;
    let mut id: [u8; 16] = Sha256::digest(&bytes)[..16]
        .try_into()
        .context("a SHA-256 digest has 32 bytes")?;
    id[6] = (id[6] & 0x0f) | 0x50;
    id[8] = (id[8] & 0x3f) | 0x80;
    let h = hex::encode(id);
    Ok(format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}
