//! Embeds the `bulkhead` binary's own dependency tree for `bulkhead sbom`
//! (T18): the crates this very build links, as `cargo tree` resolves them
//! for the target and features being built, with the checksum Cargo.lock
//! pins for each. The CLI reads it with `include_str!` from OUT_DIR.
//!
//! Build scripts and proc-macros run while compiling and are not linked, so
//! they are left out (`-e normal,no-proc-macro`). A build that cannot run
//! `cargo tree` (no Cargo.lock, a crate not downloaded) fails here, loudly,
//! rather than shipping an SBOM that lists nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the SBOM says about how its host list was made.
const METHOD: &str = "cargo tree -e normal,no-proc-macro --target TARGET --locked --offline \
                      (features as built), run by the build script of bulkhead-cli; \
                      checksums from Cargo.lock";

fn main() {
    let dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = dir.join("../..");
    let lock = root.join("Cargo.lock");
    // The lock and every manifest of the workspace decide what is linked.
    let mut inputs = vec![lock.clone(), root.join("Cargo.toml")];
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        inputs.extend(
            crates
                .filter_map(Result::ok)
                .map(|e| e.path().join("Cargo.toml")),
        );
    }
    for file in inputs {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let target = env::var("TARGET").expect("cargo sets TARGET");
    // The features this build of bulkhead-cli has on (`otlp` or none).
    let features: Vec<String> = env::vars()
        .filter_map(|(k, _)| {
            k.strip_prefix("CARGO_FEATURE_")
                .map(|f| f.to_lowercase().replace('_', "-"))
        })
        .collect();

    let tree = cargo_tree(&dir, &target, &features);
    let checksums = checksums(&lock);
    let packages = parse_tree(&tree, &checksums);

    let method = METHOD.replace("TARGET", &target);
    let doc = serde_json::json!({
        "method": method,
        "target": target,
        "features": features,
        "packages": packages,
    });
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("host-deps.json");
    let text = serde_json::to_string(&doc).expect("the tree serialises");
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

/// `cargo tree` of bulkhead-cli, one package a line: depth, then
/// `name vVERSION[ (SOURCE)]`, licence and repository, tab-separated; a
/// package already shown ends in ` (*)`.
fn cargo_tree(dir: &Path, target: &str, features: &[String]) -> String {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("tree")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .args(["--package", "bulkhead-cli", "--locked", "--offline"])
        .args(["--target", target])
        .args(["--edges", "normal,no-proc-macro"])
        .args(["--prefix", "depth", "--charset", "ascii"])
        .args(["--format", "{p}\t{l}\t{r}"]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo tree: {e}"));
    if !out.status.success() {
        panic!(
            "`cargo tree` failed, so the SBOM of the host cannot be embedded:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("cargo tree prints UTF-8")
}

/// `name version` → the sha256 Cargo.lock pins for it (registry crates).
fn checksums(lock: &Path) -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(lock)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", lock.display()));
    let doc: toml::Table =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not TOML: {e}", lock.display()));
    let mut map = BTreeMap::new();
    let packages = doc
        .get("package")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    for p in packages {
        let field = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if let (Some(name), Some(version), Some(sum)) =
            (field("name"), field("version"), field("checksum"))
        {
            map.insert((name, version), sum);
        }
    }
    map
}

/// The packages of the tree, each once, with the packages it depends on.
fn parse_tree(
    tree: &str,
    checksums: &BTreeMap<(String, String), String>,
) -> Vec<serde_json::Value> {
    struct Package {
        name: String,
        version: String,
        source: &'static str,
        license: String,
        repository: String,
        deps: BTreeSet<String>,
    }
    let mut packages: BTreeMap<String, Package> = BTreeMap::new();
    // The key of the last package seen at each depth: a line's parent.
    let mut path: Vec<String> = Vec::new();
    for line in tree.lines().filter(|l| !l.trim().is_empty()) {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let depth: usize = line[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("no depth in `{line}`"));
        let line = line[digits..].trim_end();
        let line = line.strip_suffix(" (*)").unwrap_or(line);
        let mut fields = line.split('\t');
        let id = fields.next().unwrap_or_default();
        let license = fields.next().unwrap_or_default().trim().to_string();
        let repository = fields.next().unwrap_or_default().trim().to_string();
        // `name vX.Y.Z`, then ` (/path)` or ` (registry …)` when not crates.io.
        let mut words = id.splitn(3, ' ');
        let name = words.next().unwrap_or_default().to_string();
        let version = words
            .next()
            .and_then(|v| v.strip_prefix('v'))
            .unwrap_or_else(|| panic!("no version in `{id}`"))
            .to_string();
        // A crate patched in from vendor/ (the published crate plus a patch,
        // vendor/README.md) is neither the registry's nor the workspace's.
        let source = match words.next() {
            None => "crates.io",
            Some(path) if path.contains("/vendor/") => "vendor",
            Some(_) => "path",
        };
        let key = format!("{name}@{version}");
        path.truncate(depth);
        if let Some(parent) = path.last()
            && let Some(p) = packages.get_mut(parent)
        {
            p.deps.insert(key.clone());
        }
        path.push(key.clone());
        packages.entry(key).or_insert(Package {
            name,
            version,
            source,
            license,
            repository,
            deps: BTreeSet::new(),
        });
    }
    packages
        .into_values()
        .map(|p| {
            let checksum = checksums.get(&(p.name.clone(), p.version.clone()));
            let registry = p.source == "crates.io";
            serde_json::json!({
                "name": p.name,
                "version": p.version,
                "source": p.source,
                "license": p.license,
                "repository": p.repository,
                "checksum": if registry { checksum.cloned() } else { None },
                "dependencies": p.deps,
            })
        })
        .collect()
}
