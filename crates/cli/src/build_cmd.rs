//! `bulkhead build APP_DIR`: build every component of an app with its
//! toolchain (issue 15): Rust with cargo for wasm32-wasip2, Python with
//! componentize-py, JavaScript with componentize-js, at the versions
//! examples/lib/build-lib.sh pins (the examples' build scripts).
//!
//! The Python and JavaScript tools are installed on first use into the
//! app's tool folder, `APP_DIR/.tools` (`venv/` and `node/`, the layout of
//! the repository's own `.tools`), or into the folder `BULKHEAD_TOOLS_DIR`
//! names, to share one install between apps. Per app by default: the app
//! directory is all a build touches, deleting it removes everything, and
//! one project's tools cannot be swapped under another's (T18). Every tool
//! runs as a `Command` with arguments, never through a shell, so no name or
//! path in the app is ever read as shell syntax.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::new_cmd::{self, FUNCTIONS_DIR, Lang, RECIPE_FILE, WORLD};

/// Pinned as in examples/lib/build-lib.sh (a unit test holds them equal).
pub(crate) const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
pub(crate) const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// componentize-js 0.23's engine exports wasi:http/incoming-handler at
/// exactly this version, so its world must name it.
const STARLINGMONKEY_WASI_VERSION: &str = "0.2.10";
/// The WASI version of the app's `wit/`.
const WIT_VERSION: &str = "0.2.12";

/// The npm tree of componentize-js, pinned in full: examples/hello's own
/// files, so a tool folder installed by its build.sh is reused as is.
const JS_PACKAGE_JSON: &str = include_str!("../../../examples/hello/js/package.json");
const JS_PACKAGE_LOCK: &str = include_str!("../../../examples/hello/js/package-lock.json");

/// The environment variable naming a shared tool folder.
pub(crate) const TOOLS_ENV: &str = "BULKHEAD_TOOLS_DIR";

/// One function's recipe (`functions/NAME/build.toml`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipe {
    lang: Lang,
    component: String,
}

/// The part of bulkhead.toml a build reads: where each component goes.
#[derive(serde::Deserialize)]
struct Components {
    #[serde(default)]
    function: Vec<ComponentOf>,
}

#[derive(serde::Deserialize)]
struct ComponentOf {
    name: String,
    component: String,
    route: Option<String>,
}

/// One line of progress. Names and paths in it come from the app's files:
/// control and invisible characters are shown as U+FFFD, so they cannot
/// drive the terminal.
fn say(text: &str) {
    println!("==> {}", bulkhead_manifest::text::visible(text));
}

pub fn run(app_dir: &Path) -> Result<ExitCode> {
    new_cmd::real_dir(app_dir, "the app directory")?;
    let app = app_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", app_dir.display()))?;
    let manifest_path = app.join(bulkhead_manifest::MANIFEST_FILE);
    let text = bulkhead_manifest::files::read_bounded_text(
        &manifest_path,
        bulkhead_manifest::files::MAX_TEXT_BYTES,
    )
    .with_context(|| {
        format!(
            "cannot read {}; make an app with `bulkhead new {}`",
            manifest_path.display(),
            new_cmd::shell_word(&app_dir.display().to_string())
        )
    })?;
    let wanted: Components = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid TOML: {} (`bulkhead check` says where)",
            manifest_path.display(),
            e.message().trim()
        )
    })?;
    if wanted.function.is_empty() {
        bail!(
            "the app has no function to build; add one with `bulkhead new function hello --lang rust --app {}`",
            new_cmd::shell_word(&app_dir.display().to_string())
        );
    }
    // Everything but the components (not built yet) must already be valid.
    let problems = new_cmd::problems_but_unbuilt(&app, &manifest_path, &text);
    if !problems.is_empty() {
        eprintln!("nothing was built: fix bulkhead.toml first");
        return Ok(crate::report(&problems));
    }
    let recipes = read_recipes(&app)?;
    let tools = tools_dir(&app);

    // Each component once, in manifest order, with the recipe naming it.
    let mut jobs: Vec<(String, PathBuf, Recipe)> = Vec::new();
    let mut kept = Vec::new();
    for f in &wanted.function {
        if jobs.iter().any(|(c, _, _)| *c == f.component) || kept.contains(&f.component) {
            continue;
        }
        match recipes.iter().position(|(_, r)| r.component == f.component) {
            Some(i) => {
                let (dir, recipe) = &recipes[i];
                jobs.push((
                    f.component.clone(),
                    dir.clone(),
                    Recipe {
                        lang: recipe.lang,
                        component: recipe.component.clone(),
                    },
                ));
            }
            None if app.join(&f.component).is_file() => {
                say(&format!(
                    "{}: `{}` has no recipe under {FUNCTIONS_DIR}/; kept as it is",
                    f.name, f.component
                ));
                kept.push(f.component.clone());
            }
            None => bail!(
                "function `{}`: nothing builds `{}`: no {FUNCTIONS_DIR}/*/{RECIPE_FILE} names it. \
                 Add the function with `bulkhead new function {} --lang rust|python|js`, or build \
                 the component yourself and put it there",
                bulkhead_manifest::text::visible(&f.name),
                bulkhead_manifest::text::visible(&f.component),
                bulkhead_manifest::text::visible(&f.name),
            ),
        }
    }
    for (dir, recipe) in &recipes {
        if !jobs.iter().any(|(c, _, _)| *c == recipe.component) {
            say(&format!(
                "{}: not built, no function in bulkhead.toml has `component = \"{}\"`",
                dir.display(),
                recipe.component
            ));
        }
    }
    if jobs.is_empty() {
        say("no function has a recipe here: nothing to build");
    }

    if jobs.iter().any(|(_, _, r)| r.lang == Lang::Python) {
        install_python_tools(&tools)?;
    }
    if jobs.iter().any(|(_, _, r)| r.lang == Lang::Js) {
        install_js_tools(&tools)?;
    }
    for (component, dir, recipe) in &jobs {
        let out = component_path(&app, component)?;
        match recipe.lang {
            Lang::Rust => build_rust(dir, &out)?,
            Lang::Python => build_python(&app, dir, &tools, &out)?,
            Lang::Js => build_js(&app, dir, &tools, &out)?,
        }
    }

    // The app as `check` and `serve` will see it.
    let word = new_cmd::shell_word(&app_dir.display().to_string());
    if let Err(found) = bulkhead_manifest::load(&app, bulkhead_manifest::DEFAULT_ENV) {
        let problems: Vec<String> = found.0.iter().map(ToString::to_string).collect();
        eprintln!("built, but bulkhead.toml still has problems (`bulkhead check {word}`):");
        return Ok(crate::report(&problems));
    }
    let mut scopes: Vec<&str> = wanted.function.iter().map(|f| f.name.as_str()).collect();
    scopes.dedup();
    println!();
    println!("Built {} component(s). Next, serve the app:", jobs.len());
    println!("  bulkhead serve {word}");
    println!(
        "Then, in another terminal, get a credential (printed once, kept only as a hash) and call a route:"
    );
    println!(
        "  KEY=$(bulkhead keys create {word} --subject me --scopes {})",
        scopes.join(",")
    );
    for route in wanted.function.iter().filter_map(|f| f.route.as_deref()) {
        // The route as written, `{param}`s left for the user to fill in;
        // `visible` keeps a hostile manifest from writing to the terminal.
        println!(
            "  curl -H \"authorization: Bearer $KEY\" http://127.0.0.1:8080{}",
            bulkhead_manifest::text::visible(route)
        );
    }
    println!(
        "  (for a person, a short-lived token instead: bulkhead token issue {word} --subject me --scopes … --ttl 15m)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the Python and JavaScript tools live (see the module's notes).
pub(crate) fn tools_dir(app: &Path) -> PathBuf {
    match std::env::var_os(TOOLS_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => app.join(".tools"),
    }
}

/// Every `functions/*/build.toml`.
fn read_recipes(app: &Path) -> Result<Vec<(PathBuf, Recipe)>> {
    let functions = app.join(FUNCTIONS_DIR);
    if std::fs::symlink_metadata(&functions).is_err() {
        return Ok(Vec::new());
    }
    new_cmd::real_dir(&functions, "the functions folder")?;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&functions)
        .with_context(|| format!("cannot read {}", functions.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(RECIPE_FILE).is_file())
        .collect();
    dirs.sort();
    let mut recipes = Vec::new();
    for dir in dirs {
        new_cmd::real_dir(&dir, "the function folder")?;
        let file = dir.join(RECIPE_FILE);
        let text = bulkhead_manifest::files::read_bounded_text(&file, 64 * 1024)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let recipe: Recipe = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {} (a recipe holds `lang = \"rust\"|\"python\"|\"js\"` and `component = \"build/NAME.wasm\"`)",
                file.display(),
                e.message().trim()
            )
        })?;
        recipes.push((dir, recipe));
    }
    Ok(recipes)
}

/// The component's path, inside the app (as the manifest requires), its
/// folder created if needed and never a symbolic link.
fn component_path(app: &Path, component: &str) -> Result<PathBuf> {
    let relative = Path::new(component);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("component `{component}` must be a path inside the app directory, without `..`");
    }
    let out = app.join(relative);
    let mut dir = app.to_path_buf();
    if let Some(parent) = relative.parent() {
        for part in parent.components() {
            dir.push(part);
            if std::fs::symlink_metadata(&dir).is_err() {
                new_cmd::create_dir(&dir)?;
            }
            new_cmd::real_dir(&dir, "the component's folder")?;
        }
    }
    if std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link; remove it, `bulkhead build` does not write through links",
            out.display()
        );
    }
    Ok(out)
}

/// Run a tool; its output goes to the terminal as it comes (progress).
fn run_tool(command: &mut Command, what: &str, fix: &str) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = match command.status() {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{what}: `{program}` is not installed; {fix}")
        }
        Err(e) => bail!("{what}: cannot run `{program}`: {e}"),
    };
    if !status.success() {
        bail!("{what} failed ({status}); see its output above");
    }
    Ok(())
}

/// A tool's `--version` line, or `None` when it is missing or fails.
fn version_of(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn need(program: &str, fix: &str) -> Result<()> {
    match Command::new(program).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => bail!("`{program}` is not installed; {fix}"),
    }
}

fn install_python_tools(tools: &Path) -> Result<()> {
    let venv = tools.join("venv");
    let tool = venv.join("bin/componentize-py");
    let pinned = format!("componentize-py {COMPONENTIZE_PY_VERSION}");
    if version_of(&tool).as_deref() == Some(pinned.as_str()) {
        say(&format!("{pinned}: already in {}", venv.display()));
        return Ok(());
    }
    need(
        "python3",
        "install Python 3.11 or newer (Debian: `apt-get install python3 python3-venv`)",
    )?;
    say(&format!(
        "{pinned}: installing into {} (first use; about a minute)",
        venv.display()
    ));
    std::fs::create_dir_all(tools).with_context(|| format!("cannot create {}", tools.display()))?;
    let python = venv.join("bin/python");
    if !python.is_file() {
        let _ = std::fs::remove_dir_all(&venv);
        // Debian's python3 lacks ensurepip unless python3-venv is
        // installed: then make the venv without pip and fill it with the
        // system pip, as examples/lib/build-lib.sh does.
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            let _ = std::fs::remove_dir_all(&venv);
            run_tool(
                Command::new("python3")
                    .args(["-m", "venv", "--without-pip"])
                    .arg(&venv),
                "making the Python environment",
                "install Python 3.11 or newer",
            )?;
        }
    }
    let package = format!("componentize-py=={COMPONENTIZE_PY_VERSION}");
    let pip = venv.join("bin/pip");
    if pip.is_file() {
        run_tool(
            Command::new(&pip).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &package,
            ]),
            "installing componentize-py",
            "install Python 3.11 or newer with pip",
        )?;
    } else {
        run_tool(
            Command::new("python3")
                .args(["-m", "pip", "--python"])
                .arg(&python)
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    &package,
                ]),
            "installing componentize-py",
            "install pip (Debian: `apt-get install python3-pip`) or python3-venv",
        )?;
    }
    match version_of(&tool) {
        Some(v) if v == pinned => {
            say(&format!("{pinned}: installed"));
            Ok(())
        }
        other => bail!(
            "componentize-py was installed but reports {:?}, not `{pinned}`; remove {} and build again",
            other.unwrap_or_default(),
            venv.display()
        ),
    }
}

fn install_js_tools(tools: &Path) -> Result<()> {
    let prefix = tools.join("node");
    let installed = prefix.join("node_modules/@bytecodealliance/componentize-js/package.json");
    let marker = prefix.join(".installed");
    let lock_hash = hex::encode(Sha256::digest(
        [JS_PACKAGE_JSON.as_bytes(), JS_PACKAGE_LOCK.as_bytes()].concat(),
    ));
    let pinned = format!("componentize-js {COMPONENTIZE_JS_VERSION}");
    if installed.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == lock_hash)
    {
        say(&format!("{pinned}: already in {}", prefix.display()));
        return Ok(());
    }
    need(
        "node",
        "install Node.js 20 or newer (https://nodejs.org, or Debian: `apt-get install nodejs npm`)",
    )?;
    need(
        "npm",
        "install npm (it comes with Node.js; Debian: `apt-get install npm`)",
    )?;
    say(&format!(
        "{pinned}: installing into {} (first use; npm ci of a pinned lock file, about a minute)",
        prefix.display()
    ));
    std::fs::create_dir_all(&prefix)
        .with_context(|| format!("cannot create {}", prefix.display()))?;
    let _ = std::fs::remove_file(&marker);
    std::fs::write(prefix.join("package.json"), JS_PACKAGE_JSON)
        .and_then(|()| std::fs::write(prefix.join("package-lock.json"), JS_PACKAGE_LOCK))
        .with_context(|| format!("cannot write into {}", prefix.display()))?;
    run_tool(
        Command::new("npm")
            .args(["ci", "--prefix"])
            .arg(&prefix)
            .args(["--no-audit", "--no-fund", "--loglevel=error"]),
        "installing componentize-js (npm ci)",
        "install npm (it comes with Node.js)",
    )?;
    let version = std::fs::read_to_string(&installed)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string))
        .unwrap_or_default();
    if version != COMPONENTIZE_JS_VERSION {
        bail!(
            "npm installed componentize-js {version:?}, but Bulkhead pins {COMPONENTIZE_JS_VERSION}"
        );
    }
    std::fs::write(&marker, format!("{lock_hash}\n"))
        .with_context(|| format!("cannot write {}", marker.display()))?;
    say(&format!("{pinned}: installed"));
    Ok(())
}

fn build_rust(dir: &Path, out: &Path) -> Result<()> {
    let name = crate_name(dir)?;
    need("cargo", "install Rust with rustup: https://rustup.rs")?;
    let has_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-wasip2")
        });
    if has_target == Some(false) {
        say("adding the wasm32-wasip2 Rust target (rustup target add wasm32-wasip2)");
        run_tool(
            Command::new("rustup").args(["target", "add", "wasm32-wasip2"]),
            "adding the wasm32-wasip2 target",
            "install Rust with rustup: https://rustup.rs",
        )?;
    }
    let target = dir.join("target");
    say(&format!(
        "{name}: cargo build --release --locked --target wasm32-wasip2 ({})",
        dir.display()
    ));
    run_tool(
        Command::new("cargo")
            .args([
                "build",
                "--quiet",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--manifest-path")
            .arg(dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target),
        &format!("building {name} (cargo)"),
        "install Rust with rustup: https://rustup.rs, then `rustup target add wasm32-wasip2`",
    )?;
    let built = target
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let temp = temp_for(out);
    std::fs::copy(&built, &temp).with_context(|| {
        format!(
            "cargo built no {}; the crate must be a `cdylib` named like its folder",
            built.display()
        )
    })?;
    finish(&temp, out)
}

/// The Rust package's name, from its Cargo.toml.
fn crate_name(dir: &Path) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        package: Package,
    }
    #[derive(serde::Deserialize)]
    struct Package {
        name: String,
    }
    let file = dir.join("Cargo.toml");
    let text = bulkhead_manifest::files::read_bounded_text(&file, 256 * 1024)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let manifest: Manifest = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message().trim()))?;
    Ok(manifest.package.name)
}

fn build_python(app: &Path, dir: &Path, tools: &Path, out: &Path) -> Result<()> {
    let wit = app.join("wit");
    let label = format!("componentize-py {COMPONENTIZE_PY_VERSION}");
    let fingerprint = fingerprint(&label, &[dir, wit.as_path()])?;
    let name = folder_name(dir);
    if up_to_date(out, &fingerprint) {
        say(&format!("{name}: up to date"));
        return Ok(());
    }
    say(&format!("{name}: componentize-py (world {WORLD} in wit/)"));
    let temp = temp_for(out);
    run_tool(
        Command::new(tools.join("venv/bin/componentize-py"))
            .arg("--quiet")
            .arg("--wit-path")
            .arg(&wit)
            .args(["--world", WORLD, "componentize", "--python-path"])
            .arg(dir)
            .arg("app")
            .arg("--output")
            .arg(&temp),
        &format!("building {name} (componentize-py)"),
        "build again: the tool is installed on first use",
    )?;
    finish(&temp, out)?;
    stamp(out, &fingerprint)
}

fn build_js(app: &Path, dir: &Path, tools: &Path, out: &Path) -> Result<()> {
    let wit = app.join("wit");
    let label = format!("componentize-js {COMPONENTIZE_JS_VERSION}");
    let fingerprint = fingerprint(&label, &[dir, wit.as_path()])?;
    let name = folder_name(dir);
    if up_to_date(out, &fingerprint) {
        say(&format!("{name}: up to date"));
        return Ok(());
    }
    let out_dir = out.parent().unwrap_or(app);
    let wit_js = out_dir.join(".wit-js");
    derive_js_wit(&wit, &wit_js)?;
    say(&format!(
        "{name}: componentize-js (world {WORLD}, wasi:http@{STARLINGMONKEY_WASI_VERSION})"
    ));
    let temp = temp_for(out);
    // From the function's folder: componentize-js maps the current
    // directory into its snapshotting sandbox and finds the source in it.
    run_tool(
        Command::new("node")
            .arg(tools.join("node/node_modules/@bytecodealliance/componentize-js/src/cli.js"))
            .arg(dir.join("app.js"))
            .arg("--wit")
            .arg(&wit_js)
            .args(["--world-name", WORLD, "--out"])
            .arg(&temp)
            .current_dir(dir),
        &format!("building {name} (componentize-js)"),
        "install Node.js 20 or newer",
    )?;
    finish(&temp, out)?;
    stamp(out, &fingerprint)
}

/// The app's WIT at the version componentize-js's engine exports: the same
/// interfaces, with `exit-with-code` (not yet stable in 0.2.10) marked
/// unstable, as examples/lib/build-lib.sh derives it. The host serves every
/// 0.2.x version.
fn derive_js_wit(wit: &Path, wit_js: &Path) -> Result<()> {
    if std::fs::symlink_metadata(wit_js).is_ok() {
        new_cmd::real_dir(wit_js, "the derived WIT folder")?;
        std::fs::remove_dir_all(wit_js)
            .with_context(|| format!("cannot remove {}", wit_js.display()))?;
    }
    new_cmd::create_dir(wit_js)?;
    new_cmd::create_dir(&wit_js.join("deps"))?;
    for sub in ["", "deps"] {
        let from = wit.join(sub);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&from)
            .with_context(|| format!("cannot read {}", from.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wit") && p.is_file())
            .collect();
        files.sort();
        for file in files {
            let text = bulkhead_manifest::files::read_bounded_text(&file, 1024 * 1024)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let Some(base) = file.file_name() else {
                continue;
            };
            new_cmd::write_new(&wit_js.join(sub).join(base), &to_js_wit(&text))?;
        }
    }
    Ok(())
}

/// `@0.2.12` (not followed by a digit) to the engine's version, and the
/// `@since(version = 0.2.12)` gate to `@unstable(feature = cli-exit-with-code)`.
fn to_js_wit(text: &str) -> String {
    let text = text.replace(
        &format!("@since(version = {WIT_VERSION})"),
        "@unstable(feature = cli-exit-with-code)",
    );
    let needle = format!("@{WIT_VERSION}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(&needle) {
        let after = &rest[at + needle.len()..];
        out.push_str(&rest[..at]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(&needle);
        } else {
            out.push('@');
            out.push_str(STARLINGMONKEY_WASI_VERSION);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn temp_for(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = out.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&temp);
    temp
}

/// Move the new component into place (a rename: never half a component).
fn finish(temp: &Path, out: &Path) -> Result<()> {
    let size = std::fs::metadata(temp).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        let _ = std::fs::remove_file(temp);
        bail!("the build produced no component for {}", out.display());
    }
    std::fs::rename(temp, out)
        .with_context(|| format!("cannot move the component to {}", out.display()))?;
    say(&format!(
        "built {} ({} KiB)",
        out.display(),
        size.div_ceil(1024)
    ));
    Ok(())
}

fn stamp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.stamp"))
}

fn up_to_date(out: &Path, fingerprint: &str) -> bool {
    let stamp = stamp_path(out);
    out.is_file()
        && std::fs::symlink_metadata(&stamp).is_ok_and(|m| m.file_type().is_file())
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == fingerprint)
}

/// Write the stamp beside the component. Never through a link a hostile
/// app planted there (T18, outside review): a fresh file is created
/// exclusively and renamed over the stamp, and a rename replaces a link
/// itself, never what it points to.
fn stamp(out: &Path, fingerprint: &str) -> Result<()> {
    let path = stamp_path(out);
    let fresh = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&fresh);
    crate::new_cmd::write_new(&fresh, &format!("{fingerprint}\n"))?;
    std::fs::rename(&fresh, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// A hash of the tool's label and every source file's path and content
/// under `roots` (build outputs and caches left out), so a component is
/// rebuilt only when something it is made of changed.
fn fingerprint(label: &str, roots: &[&Path]) -> Result<String> {
    let mut files = Vec::new();
    for root in roots {
        collect(root, &mut files)?;
    }
    files.sort();
    let mut hash = Sha256::new();
    hash.update(label.as_bytes());
    hash.update(b"\n");
    for file in files {
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        hash.update(file.to_string_lossy().as_bytes());
        hash.update(b"\0");
        hash.update(Sha256::digest(&bytes));
    }
    Ok(hex::encode(hash.finalize()))
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let skip = matches!(
            entry.file_name().to_str(),
            Some("target" | "__pycache__" | "node_modules")
        );
        if kind.is_dir() && !skip {
            collect(&path, files)?;
        } else if kind.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The versions are the ones the examples' build scripts pin.
    #[test]
    fn pins_match_examples_hello() {
        let script = include_str!("../../../examples/lib/build-lib.sh");
        assert!(script.contains(&format!(
            "COMPONENTIZE_PY_VERSION={COMPONENTIZE_PY_VERSION}\n"
        )));
        assert!(script.contains(&format!(
            "COMPONENTIZE_JS_VERSION={COMPONENTIZE_JS_VERSION}\n"
        )));
        assert!(script.contains(&format!(
            "STARLINGMONKEY_WASI_VERSION={STARLINGMONKEY_WASI_VERSION}\n"
        )));
        assert!(JS_PACKAGE_JSON.contains(&format!(
            "\"@bytecodealliance/componentize-js\": \"{COMPONENTIZE_JS_VERSION}\""
        )));
    }

    #[test]
    fn js_wit_names_the_engine_version() {
        let text = "use wasi:io/streams@0.2.12;\n@since(version = 0.2.12)\nx@0.2.123;";
        assert_eq!(
            to_js_wit(text),
            "use wasi:io/streams@0.2.10;\n@unstable(feature = cli-exit-with-code)\nx@0.2.123;"
        );
    }
}
