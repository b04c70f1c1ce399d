//! `bulkhead new`: an app with its secure defaults spelt out, and functions
//! added to it with auth on, their input declared and nothing granted
//! (issue 15, "a first secure function in three commands").
//!
//! Files are created, never overwritten: each with `O_CREAT | O_EXCL` (a
//! planted file or symlink makes it fail) and an explicit mode (0644 files,
//! 0755 directories, so nothing is group- or world-writable whatever the
//! umask). A symlinked target is refused rather than followed (T18: a build
//! that writes through a link an attacker planted writes where they chose).
//! The manifest is edited by appending text, so the user's comments stay,
//! and only after the result is parsed back by the manifest crate and found
//! valid (T19: no command leaves a manifest `check` refuses).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

/// The manifest written by `bulkhead new APP_DIR`.
const APP_MANIFEST: &str = include_str!("../templates/new/bulkhead.toml");
const GITIGNORE: &str = include_str!("../templates/new/gitignore");
const RUST_CARGO_TOML: &str = include_str!("../templates/new/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("../templates/new/rust/lib.rs");
const PYTHON_APP: &str = include_str!("../templates/new/python/app.py");
const JS_APP: &str = include_str!("../templates/new/js/app.js");
const WORLD_WIT: &str = include_str!("../templates/new/world.wit");

/// The WASI 0.2.12 interfaces the Python and JavaScript functions build
/// against: the very files examples/hello builds with (copied from the
/// wasmtime-wasi-http crate), so both stay one version.
pub(crate) const WIT_DEPS: &[(&str, &str)] = &[
    (
        "cli.wit",
        include_str!("../../../examples/hello/wit/deps/cli.wit"),
    ),
    (
        "clocks.wit",
        include_str!("../../../examples/hello/wit/deps/clocks.wit"),
    ),
    (
        "filesystem.wit",
        include_str!("../../../examples/hello/wit/deps/filesystem.wit"),
    ),
    (
        "http.wit",
        include_str!("../../../examples/hello/wit/deps/http.wit"),
    ),
    (
        "io.wit",
        include_str!("../../../examples/hello/wit/deps/io.wit"),
    ),
    (
        "random.wit",
        include_str!("../../../examples/hello/wit/deps/random.wit"),
    ),
    (
        "sockets.wit",
        include_str!("../../../examples/hello/wit/deps/sockets.wit"),
    ),
];

/// The world in the app's `wit/world.wit`.
pub(crate) const WORLD: &str = "handler";

/// Where a function's sources live, relative to the app directory.
pub(crate) const FUNCTIONS_DIR: &str = "functions";
/// The build recipe in each function's directory.
pub(crate) const RECIPE_FILE: &str = "build.toml";

/// Names a function may not take: they collide with the app's own folders,
/// Rust's built-in crates or the gateway's prefix.
const RESERVED: &[&str] = &[
    "build",
    "wit",
    "functions",
    "target",
    "tools",
    "bulkhead",
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
    "self",
    "super",
    "crate",
];

/// The language of a new function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust, with the `wasip2` crate, built by cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js (StarlingMonkey).
    Js,
}

impl Lang {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

#[derive(clap::Subcommand)]
pub enum NewCommand {
    /// Add a function to an app: sources, build recipe, manifest entry.
    #[command(
        long_about = "Add the function NAME to the app in --app (default: the current directory): \
                      a component skeleton exporting wasi:http/incoming-handler under \
                      functions/NAME/, its build recipe (functions/NAME/build.toml, read by \
                      `bulkhead build`), and a [[function]] entry appended to bulkhead.toml with \
                      auth on (an API key or session token holding the scope NAME), its input \
                      declared (GET only, a pattern for every route parameter, no query \
                      parameters, a small body cap), tight limits and nothing granted.\n\n\
                      Your comments in bulkhead.toml are kept: the entry is appended as text, and \
                      only once the manifest with it is valid; otherwise nothing is written and \
                      every problem is listed. NAME is 1 to 40 lowercase letters, digits or `-`, \
                      starting with a letter; it names the component (build/NAME.wasm), the \
                      source folder and the scope.",
        after_help = "Examples:\n  bulkhead new function hello --lang rust --app my-app\n  \
                      bulkhead new function lookup --lang python --route '/users/{id}' --app my-app\n  \
                      cd my-app && bulkhead new function feed --lang js --route '/feed/{*rest}'\n\n\
                      Then:\n  bulkhead build my-app\n  bulkhead serve my-app"
    )]
    Function {
        /// The function's name: lowercase letters, digits, `-` (like `hello-world`).
        name: String,
        /// The language of the skeleton.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The route it serves, like /users/{id} or /files/{*rest}; default /NAME.
        #[arg(long, value_name = "ROUTE")]
        route: Option<String>,
        /// The app directory, holding bulkhead.toml.
        #[arg(long, value_name = "APP_DIR", default_value = ".")]
        app: PathBuf,
    },
}

/// `bulkhead new APP_DIR` or `bulkhead new function …`.
pub fn run(
    what: Option<NewCommand>,
    app_dir: Option<&Path>,
    name: Option<&str>,
) -> Result<ExitCode> {
    match (what, app_dir) {
        (
            Some(NewCommand::Function {
                name,
                lang,
                route,
                app,
            }),
            _,
        ) => new_function(&app, &name, lang, route.as_deref()),
        (None, Some(dir)) => new_app(dir, name),
        (None, None) => bail!(
            "say which directory the new app goes in: `bulkhead new my-app` (or add a function: \
             `bulkhead new function NAME --lang rust --app my-app`)"
        ),
    }
}

/// `bulkhead new APP_DIR`.
fn new_app(dir: &Path, name: Option<&str>) -> Result<ExitCode> {
    let app_name = match name {
        Some(name) => name.to_string(),
        None => dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .unwrap_or_default(),
    };
    if !valid_app_name(&app_name) {
        bail!(
            "the app's name `{}` must be 1 to 63 lowercase letters, digits or `-` (it comes from \
             the directory's name); choose another directory name or give one with `--name my-app`",
            bulkhead_manifest::text::visible(&app_name)
        );
    }
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() => bail!(
            "{} is a symbolic link; `bulkhead new` does not write through links: give the real \
             directory's path",
            dir.display()
        ),
        Ok(meta) if !meta.is_dir() => bail!(
            "{} exists and is not a directory; choose a new directory for the app",
            dir.display()
        ),
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; `bulkhead new` never overwrites files. Choose a new \
                     directory (`bulkhead new my-app`), or, to add a function to the app \
                     already there, run `bulkhead new function NAME --lang rust --app {}`",
                    dir.display(),
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            create_dir(dir)?;
        }
        Err(e) => bail!("cannot read {}: {e}", dir.display()),
    }
    // Shown on the terminal: control characters replaced (outside review).
    let shown = bulkhead_manifest::text::visible(&dir.display().to_string());
    let manifest = APP_MANIFEST
        .replace("{{APP}}", &app_name)
        .replace("{{DIR}}", &shell_word(&shown));
    write_new(&dir.join(bulkhead_manifest::MANIFEST_FILE), &manifest)?;
    write_new(&dir.join(".gitignore"), GITIGNORE)?;
    let word = shell_word(&shown);
    println!("Created the app `{app_name}` in {shown}:");
    println!("  bulkhead.toml   every default control spelt out and commented; no function yet");
    println!("  .gitignore      build outputs, tools and state stay out of version control");
    println!();
    println!("Next, add a function (rust, python or js) and build it:");
    println!("  bulkhead new function hello --lang rust --app {word}");
    println!("  bulkhead build {word}");
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead new function NAME --lang L [--route R] [--app DIR]`.
fn new_function(app_dir: &Path, name: &str, lang: Lang, route: Option<&str>) -> Result<ExitCode> {
    check_function_name(name)?;
    let default_route = format!("/{name}");
    let route = route.unwrap_or(&default_route);
    let params = route_params(route)?;
    real_dir(app_dir, "the app directory")?;
    let manifest_path = app_dir.join(bulkhead_manifest::MANIFEST_FILE);
    match std::fs::symlink_metadata(&manifest_path) {
        Ok(meta) if meta.file_type().is_symlink() => bail!(
            "{} is a symbolic link; edit the file it points to, or replace the link with the file",
            manifest_path.display()
        ),
        Ok(meta) if meta.is_file() => {}
        Ok(_) => bail!("{} is not a regular file", manifest_path.display()),
        Err(_) => bail!(
            "{} has no bulkhead.toml; make an app first with `bulkhead new {}`, or point --app at one",
            app_dir.display(),
            shell_word(&app_dir.display().to_string())
        ),
    }
    let old = bulkhead_manifest::files::read_bounded_text(
        &manifest_path,
        bulkhead_manifest::files::MAX_TEXT_BYTES,
    )
    .with_context(|| format!("cannot read {}", manifest_path.display()))?;

    let functions = app_dir.join(FUNCTIONS_DIR);
    let source_dir = functions.join(name);
    if std::fs::symlink_metadata(&source_dir).is_ok() {
        bail!(
            "{} already exists; `bulkhead new function` never overwrites files: choose another \
             name, or remove that folder first",
            source_dir.display()
        );
    }
    let component = format!("build/{name}.wasm");

    // The manifest with the new entry must be valid before anything is
    // written. The only problem allowed is a component not built yet.
    let mut text = old.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&function_entry(name, lang, route, &params, &component));
    let problems = problems_but_unbuilt(app_dir, &manifest_path, &text);
    if !problems.is_empty() {
        eprintln!(
            "nothing was written: bulkhead.toml with the function `{name}` would not be valid"
        );
        return Ok(crate::report(&problems));
    }

    // Sources first, then the manifest: a manifest never names a
    // function whose sources are missing.
    if std::fs::symlink_metadata(&functions).is_err() {
        create_dir(&functions)?;
    } else {
        real_dir(&functions, "the functions folder")?;
    }
    create_dir(&source_dir)?;
    write_new(
        &source_dir.join(RECIPE_FILE),
        &recipe(name, lang, &component),
    )?;
    match lang {
        Lang::Rust => {
            create_dir(&source_dir.join("src"))?;
            write_new(
                &source_dir.join("Cargo.toml"),
                &RUST_CARGO_TOML.replace("{{NAME}}", name),
            )?;
            write_new(&source_dir.join("Cargo.lock"), &rust_lock(name))?;
            write_new(
                &source_dir.join("src/lib.rs"),
                &RUST_LIB.replace("{{NAME}}", name),
            )?;
        }
        Lang::Python => {
            write_new(
                &source_dir.join("app.py"),
                &PYTHON_APP.replace("{{NAME}}", name),
            )?;
            ensure_wit(app_dir)?;
        }
        Lang::Js => {
            write_new(
                &source_dir.join("app.js"),
                &JS_APP.replace("{{NAME}}", name),
            )?;
            ensure_wit(app_dir)?;
        }
    }
    replace_file(&manifest_path, &text)?;

    let word = shell_word(&app_dir.display().to_string());
    println!(
        "Added the function `{name}` ({}) on GET {route}:",
        lang.as_str()
    );
    println!("  {FUNCTIONS_DIR}/{name}/        its sources and build recipe ({RECIPE_FILE})");
    println!(
        "  bulkhead.toml      its [[function]] entry: API key or session token with scope `{name}`, input declared, nothing granted"
    );
    println!();
    println!("Next: bulkhead build {word}");
    Ok(ExitCode::SUCCESS)
}

/// Every problem of manifest `text` but components not built yet: each
/// `component =` naming no file is pointed, for the check only, at the
/// manifest itself (a regular file inside the app), so the function is
/// still resolved and every rule across functions (duplicate names,
/// overlapping routes, T19) still applies. The replacement stays on the
/// value's own line, so every problem keeps its line.
pub(crate) fn problems_but_unbuilt(
    app_dir: &Path,
    manifest_path: &Path,
    text: &str,
) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Functions {
        #[serde(default)]
        function: Vec<Component>,
    }
    #[derive(serde::Deserialize)]
    struct Component {
        component: Option<toml::Spanned<String>>,
    }
    let mut patched = text.to_string();
    if let Ok(found) = toml::from_str::<Functions>(text) {
        let mut spans: Vec<std::ops::Range<usize>> = found
            .function
            .iter()
            .filter_map(|f| f.component.as_ref())
            .filter(|c| {
                let path = Path::new(c.get_ref());
                path.is_relative()
                    && path
                        .components()
                        .all(|p| matches!(p, std::path::Component::Normal(_)))
                    && std::fs::symlink_metadata(app_dir.join(path)).is_err()
            })
            .map(toml::Spanned::span)
            .filter(|span| text.get(span.clone()).is_some_and(|v| !v.contains('\n')))
            .collect();
        spans.sort_by_key(|span| std::cmp::Reverse(span.start));
        for span in spans {
            patched.replace_range(span, &format!("\"{}\"", bulkhead_manifest::MANIFEST_FILE));
        }
    }
    match bulkhead_manifest::parse(
        app_dir,
        manifest_path,
        &patched,
        bulkhead_manifest::DEFAULT_ENV,
    ) {
        Ok(_) => Vec::new(),
        Err(found) => found.0.iter().map(ToString::to_string).collect(),
    }
}

fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A function name: 1 to 40 lowercase letters, digits or `-`, starting
/// with a letter, not ending with `-`, no `--`, not reserved. It becomes a
/// folder, a file name, a Rust crate name and a scope, so nothing that can
/// walk out of a folder (`/`, `\`, `..`) or collide gets through.
fn check_function_name(name: &str) -> Result<()> {
    let shown = bulkhead_manifest::text::visible(name);
    if name.contains(['/', '\\']) || name.contains("..") {
        bail!(
            "the function name `{shown}` holds a path separator or `..`; a name is 1 to 40 \
             lowercase letters, digits or `-`, like `hello-world`"
        );
    }
    let valid = !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "the function name `{shown}` must be 1 to 40 lowercase letters, digits or `-`, \
             starting with a letter, without `--` or a trailing `-`, like `hello-world`"
        );
    }
    if RESERVED.contains(&name) {
        bail!(
            "`{name}` is reserved (it names one of the app's folders, a Rust built-in crate or \
             Bulkhead itself); choose another name, like `{name}-fn`"
        );
    }
    Ok(())
}

/// A route parameter: `{name}` or the trailing `{*name}`.
#[derive(Debug, PartialEq, Eq)]
struct Param {
    name: String,
    wildcard: bool,
}

/// The route's parameters. The route itself is checked by the manifest
/// crate once the entry is written; this only makes sure nothing in it can
/// break out of a TOML string or key (T10).
fn route_params(route: &str) -> Result<Vec<Param>> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~/{}*".contains(c);
    if route.is_empty() || route.len() > 256 || !route.chars().all(allowed) {
        bail!(
            "the route must be 1 to 256 characters of letters, digits, `-._~/`, `{{param}}` and a \
             trailing `{{*rest}}`, like `/users/{{id}}`"
        );
    }
    let mut params = Vec::new();
    for segment in route.split('/') {
        if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (wildcard, name) = match inner.strip_prefix('*') {
                Some(rest) => (true, rest),
                None => (false, inner),
            };
            let valid = !name.is_empty()
                && name.len() <= 32
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                bail!(
                    "route parameter `{{{inner}}}`: a parameter is named with 1 to 32 lowercase \
                     letters, digits or `_`, like `{{id}}` or `{{*rest}}`"
                );
            }
            params.push(Param {
                name: name.to_string(),
                wildcard,
            });
        }
    }
    Ok(params)
}

/// The `[[function]]` entry appended to bulkhead.toml.
fn function_entry(
    name: &str,
    lang: Lang,
    route: &str,
    params: &[Param],
    component: &str,
) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = String::new();
    out.push_str(&format!(
        "# The function `{name}` ({}), added by `bulkhead new function`. Sources and\n\
         # build recipe: {FUNCTIONS_DIR}/{name}/. Nothing is granted: it reaches no network,\n\
         # store, secret or config until a `grants = {{ … }}` line here says so (T16).\n",
        lang.as_str()
    ));
    out.push_str("[[function]]\n");
    out.push_str(&format!("name = {}\n", quoted(name)));
    out.push_str(&format!(
        "component = {}       # written by `bulkhead build`\n",
        quoted(component)
    ));
    out.push_str(&format!("route = {}\n", quoted(route)));
    out.push_str("methods = [\"GET\"]                    # only these methods; others get 405\n");
    out.push_str(
        "auth = [\"api-key\", \"session\"]        # a credential is required (T11): `bulkhead keys create` or\n\
         \x20                                    # `bulkhead token issue`; add \"jwt\" with [auth.jwt]\n",
    );
    out.push_str(&format!(
        "scopes = [{}]                  # the credential must hold this scope: `--scopes {name}`\n",
        quoted(name)
    ));
    out.push_str(
        "timeout = \"5s\"                       # per call; the sandbox is stopped after it (T05)\n\
         memory = \"128MiB\"                    # per instance (T05)\n\
         max_concurrent_requests = 16         # running at once (T01)\n\
         max_outstanding_requests = 64        # running + queued; beyond: 429 at once (T01)\n\
         rate_limit = { per_caller = \"10/s\", burst = 20 }   # on top of the app's (T02)\n\
         budget = { per_day = \"1 USD\", per_caller_per_day = \"0.10 USD\" }   # denial of wallet (T04)\n",
    );
    out.push_str("# Input (T10): what a well-formed request looks like; the rest is refused\n");
    out.push_str("# (400, 413, 415) before the function runs.\n");
    for param in params {
        if param.wildcard {
            out.push_str(&format!(
                "input.path.{} = \"[a-z0-9-]{{1,64}}(/[a-z0-9-]{{1,64}}){{0,7}}\"   # the whole tail\n",
                param.name
            ));
        } else {
            out.push_str(&format!(
                "input.path.{} = \"[A-Za-z0-9-]{{1,64}}\"\n",
                param.name
            ));
        }
    }
    out.push_str(
        "# input.query.lang = \"[a-z]{2}\"       # declare each query parameter; undeclared ones get 400\n\
         input.max_body = \"1KiB\"               # GET takes no body to speak of\n\
         # To take JSON: methods = [\"POST\"], input.content_types = [\"application/json\"],\n\
         # input.body_schema = \"schemas/NAME.json\" (JSON Schema), input.max_body = \"16KiB\".\n",
    );
    out
}

/// The build recipe `bulkhead build` follows.
fn recipe(name: &str, lang: Lang, component: &str) -> String {
    format!(
        "# How `bulkhead build` makes the component of `{name}`, written by\n\
         # `bulkhead new function`. `component` must be where the function's\n\
         # `component =` in bulkhead.toml points.\n\
         lang = \"{}\"            # rust | python | js\n\
         component = {}\n",
        lang.as_str(),
        toml::Value::String(component.to_string())
    )
}

/// The Rust skeleton's Cargo.lock: examples/hello's, with the package
/// renamed. Cargo orders packages by name, and `--locked` refuses a lock it
/// would write differently, so the entry goes in its sorted place.
fn rust_lock(name: &str) -> String {
    let own = format!(
        "[[package]]\nname = \"{name}\"\nversion = \"0.1.0\"\ndependencies = [\n \"wasip2\",\n]\n"
    );
    let mut packages = vec![
        (
            "bitflags".to_string(),
            "[[package]]\nname = \"bitflags\"\nversion = \"2.13.2\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"3ded4057c258ba199e2d26386d3af3780957ecaee6c4ef4041c6b4b8b97c0b06\"\n".to_string(),
        ),
        (name.to_string(), own),
        (
            "wasip2".to_string(),
            "[[package]]\nname = \"wasip2\"\nversion = \"2.0.1+wasi-0.2.12\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"89aafd4b69fb41a64cfd5d7f214cde92ab422ec4d9bcd55fcc816d3f5f49bbf3\"\ndependencies = [\n \"wit-bindgen\",\n]\n".to_string(),
        ),
        (
            "wit-bindgen".to_string(),
            "[[package]]\nname = \"wit-bindgen\"\nversion = \"0.62.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"53cb4b5556c3a791e86838ea287782bdafa704d55b0e68b5b81a3a16b9ea5f4b\"\ndependencies = [\n \"bitflags\",\n]\n".to_string(),
        ),
    ];
    packages.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::from(
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = 4\n",
    );
    for (_, entry) in packages {
        out.push('\n');
        out.push_str(&entry);
    }
    out
}

/// The app's `wit/` folder (world and WASI interfaces), written once.
fn ensure_wit(app_dir: &Path) -> Result<()> {
    let wit = app_dir.join("wit");
    if std::fs::symlink_metadata(&wit).is_ok() {
        return real_dir(&wit, "the wit folder");
    }
    create_dir(&wit)?;
    write_new(&wit.join("world.wit"), WORLD_WIT)?;
    create_dir(&wit.join("deps"))?;
    for (file, text) in WIT_DEPS {
        write_new(&wit.join("deps").join(file), text)?;
    }
    Ok(())
}

/// `path` must be a directory, not a symbolic link to one.
pub(crate) fn real_dir(path: &Path, what: &str) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => bail!(
            "{what} {} is a symbolic link; Bulkhead does not write through links: use the real path",
            path.display()
        ),
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!("{what} {} is not a directory", path.display()),
        Err(e) => bail!("{what} {} cannot be read: {e}", path.display()),
    }
}

/// Create one directory, 0755 (never group- or world-writable).
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o755);
    builder
        .create(path)
        .with_context(|| format!("cannot create the directory {}", path.display()))
}

/// Create a new file, 0644, failing if anything (a file, a symbolic link)
/// is already there.
pub(crate) fn write_new(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o644).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replace a file's content atomically (a temporary file beside it, then a
/// rename), keeping its permissions.
fn replace_file(path: &Path, text: &str) -> Result<()> {
    let permissions = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions();
    let temp = temp_beside(path);
    let _ = std::fs::remove_file(&temp);
    write_new(&temp, text)?;
    let done =
        std::fs::set_permissions(&temp, permissions).and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&temp);
        bail!("cannot replace {}: {e}", path.display());
    }
    Ok(())
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// `text` as one shell word, for the commands printed to copy.
pub(crate) fn shell_word(text: &str) -> String {
    // A leading `~` is expanded by the shell and a leading `-` read as an
    // option (outside review): quote those too.
    let plain = !text.is_empty()
        && !text.starts_with(['~', '-'])
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/~+,:@".contains(c));
    if plain {
        text.to_string()
    } else {
        format!(
            "'{}'",
            bulkhead_manifest::text::visible(text).replace('\'', "'\\''")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_walk_out_or_collide_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a\\b",
            "..",
            "Hello",
            "1abc",
            "a--b",
            "a-",
            "-a",
            "build",
            "std",
            "wit",
            "a.b",
            "a b",
            "é",
            &"a".repeat(41),
        ] {
            assert!(check_function_name(bad).is_err(), "{bad:?} passed");
        }
        for good in ["hello", "hello-world", "a1", &"a".repeat(40)] {
            assert!(check_function_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn routes_cannot_break_out_of_toml() {
        assert!(route_params("/x\"\n[admin]").is_err());
        assert!(route_params("/x/{a=\"b\"}").is_err());
        assert!(route_params("/x/{A}").is_err());
        assert_eq!(
            route_params("/users/{id}/files/{*rest}").unwrap(),
            vec![
                Param {
                    name: "id".into(),
                    wildcard: false
                },
                Param {
                    name: "rest".into(),
                    wildcard: true
                },
            ]
        );
    }

    #[test]
    fn the_lock_lists_packages_in_cargo_order() {
        for name in ["aaa", "c", "wasip3", "zeta"] {
            let lock = rust_lock(name);
            let names: Vec<&str> = lock
                .lines()
                .filter_map(|l| l.strip_prefix("name = \""))
                .map(|l| l.trim_end_matches('"'))
                .collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted);
            assert!(names.contains(&name));
        }
    }

    #[test]
    fn the_template_with_a_function_is_a_valid_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = APP_MANIFEST
            .replace("{{APP}}", "demo")
            .replace("{{DIR}}", "demo");
        let path = dir.path().join("bulkhead.toml");
        let params = route_params("/demo/{id}/{*rest}").unwrap();
        let text = format!(
            "{manifest}\n{}",
            function_entry(
                "demo",
                Lang::Rust,
                "/demo/{id}/{*rest}",
                &params,
                "build/demo.wasm"
            )
        );
        std::fs::create_dir(dir.path().join("build")).unwrap();
        std::fs::write(dir.path().join("build/demo.wasm"), b"\0asm").unwrap();
        let app = bulkhead_manifest::parse(dir.path(), &path, &text, "dev")
            .map_err(|p| p.to_string())
            .unwrap();
        let f = &app.functions[0];
        assert!(!f.access.is_public());
        assert!(f.grants.outbound.is_empty() && f.grants.secrets.is_empty());
        assert_eq!(f.methods, vec!["GET".to_string()]);
        assert_eq!(f.input.path.len(), 2);
    }
}
