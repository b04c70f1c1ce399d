//! A first secure function in three commands (issue 15): `bulkhead new`,
//! `bulkhead new function`, `bulkhead build`, then the real `bulkhead
//! serve` over loopback. The route refuses a call without a credential
//! (401, T11), one without its scope (403) and undeclared input (400, T10),
//! and answers a credential minted as the README tells a user to. Also the
//! refusals of `new` itself: an existing directory, a symbolic link, bad
//! names (T18: nothing walks out of the app), an unknown language, and a
//! manifest edit that would not be valid (nothing written, comments kept).
//!
//! The Python and JavaScript builds use the repository's `.tools` (what
//! examples/hello/build.sh installs) through BULKHEAD_TOOLS_DIR, so the
//! tests do not download the toolchains each time.

mod support;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use bytes::Bytes;
use support::{Server, TestApp, repo_root, request, send};

fn bulkhead<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .env("BULKHEAD_TOOLS_DIR", repo_root().join(".tools"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("bulkhead runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

async fn call(server: &Server, path: &str, token: Option<&str>) -> support::Reply {
    let mut req = request("GET", server.addr, path, Bytes::new());
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    send(server.addr, req).await
}

/// new -> new function -> build -> check -> threat-model -> serve -> calls.
async fn three_commands(lang: &str) {
    let started = Instant::now();
    let temp = tempfile::tempdir().unwrap();
    let app: PathBuf = temp.path().join("my-app");
    let out = ok(&bulkhead([OsStr::new("new"), app.as_os_str()]));
    assert!(out.contains("bulkhead new function hello"), "{out}");
    let name = format!("hi-{lang}");
    let route = format!("/hi/{lang}/{{id}}");
    ok(&bulkhead([
        OsStr::new("new"),
        OsStr::new("function"),
        OsStr::new(&name),
        OsStr::new("--lang"),
        OsStr::new(lang),
        OsStr::new("--route"),
        OsStr::new(&route),
        OsStr::new("--app"),
        app.as_os_str(),
    ]));
    // A stamp planted as a link to a file of the user's is replaced, never
    // written through (T18, outside review: it overwrote the target).
    let victim = temp.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::create_dir_all(app.join("build")).unwrap();
    std::os::unix::fs::symlink(&victim, app.join(format!("build/.{name}.wasm.stamp"))).unwrap();
    let built = ok(&bulkhead([OsStr::new("build"), app.as_os_str()]));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(built.contains("bulkhead serve"), "{built}");
    assert!(built.contains("bulkhead keys create"), "{built}");
    assert!(
        built.contains(&format!("http://127.0.0.1:8080/hi/{lang}/{{id}}")),
        "{built}"
    );
    assert!(app.join(format!("build/{name}.wasm")).is_file());
    if lang != "rust" {
        // Nothing changed: not built again.
        let again = ok(&bulkhead([OsStr::new("build"), app.as_os_str()]));
        assert!(again.contains(&format!("{name}: up to date")), "{again}");
    }

    // The manifest passes `check`, and its threat model has no open high
    // finding (T21): the defaults it spells out are the secure ones.
    let test_app = TestApp::existing(&app);
    ok(&test_app.run(&["check"]));
    ok(&test_app.run_with(&["threat-model"], &["--fail-on", "high"]));

    // A credential as the README tells a user to mint one.
    let key = ok(&test_app.run_with(
        &["keys", "create"],
        &["--subject", "ada", "--scopes", &name],
    ))
    .trim()
    .to_string();
    let other = ok(&test_app.run_with(
        &["keys", "create"],
        &["--subject", "bob", "--scopes", "something-else"],
    ))
    .trim()
    .to_string();
    let server = Server::start(&test_app);
    let path = format!("/hi/{lang}/42");

    // No credential: 401, problem JSON with the correlation ID (T11).
    let reply = call(&server, &path, None).await;
    reply.assert_problem(401, "unauthenticated");
    // A credential without the function's scope: 403.
    call(&server, &path, Some(&other))
        .await
        .assert_problem(403, "insufficient-scope");
    // Undeclared input never reaches the function (T10).
    call(&server, &format!("{path}?debug=1"), Some(&key))
        .await
        .assert_problem(400, "unknown-parameter");
    call(&server, &format!("/hi/{lang}/a%2e%2e"), Some(&key))
        .await
        .assert_problem(400, "invalid-parameter");

    let reply = call(&server, &path, Some(&key)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    assert!(
        text.starts_with("Hello, ") && text.contains("ada"),
        "{text}"
    );
    assert!(text.contains(&name), "{text}");
    eprintln!(
        "issue 15 figure: {lang}: new -> build -> serve -> authenticated 200 in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn rust_function_in_three_commands() {
    three_commands("rust").await;
}

#[tokio::test]
async fn python_function_in_three_commands() {
    three_commands("python").await;
}

#[tokio::test]
async fn js_function_in_three_commands() {
    three_commands("js").await;
}

#[test]
fn new_app_spells_out_defaults_with_safe_modes_and_keeps_comments() {
    let temp = tempfile::tempdir().unwrap();
    let app = temp.path().join("demo");
    // Under a umask that would make files world-writable (T18).
    let out = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("new")
        .arg(&app)
        .output()
        .unwrap();
    ok(&out);
    let manifest = app.join("bulkhead.toml");
    assert_eq!(mode(&manifest), 0o644);
    assert_eq!(mode(&app.join(".gitignore")), 0o644);
    let text = std::fs::read_to_string(&manifest).unwrap();
    for control in [
        "name = \"demo\"",
        "rate_limit = { per_caller = \"100/s\", burst = 200 }",
        "dynamic_throttle",
        "budget = { per_day = \"10 USD\"",
        "failed_attempts_per_minute = 10",
        "max_request_body = \"1MiB\"",
        "[audit]",
    ] {
        assert!(text.contains(control), "missing {control}");
    }

    // A comment of the user's survives the edit; the entry has auth on,
    // input declared and no grants.
    std::fs::write(&manifest, format!("{text}\n# my own note: keep me\n")).unwrap();
    let out = Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["new", "function", "greet", "--lang", "python", "--app"])
        .arg(&app)
        .output()
        .unwrap();
    ok(&out);
    let edited = std::fs::read_to_string(&manifest).unwrap();
    assert!(edited.starts_with(&text));
    assert!(edited.contains("# my own note: keep me"));
    let entry = &edited[edited.find("[[function]]").unwrap()..];
    assert!(entry.contains("auth = [\"api-key\", \"session\"]"));
    assert!(entry.contains("scopes = [\"greet\"]"));
    assert!(entry.contains("methods = [\"GET\"]"));
    assert!(entry.contains("input.max_body"));
    assert!(!entry.contains("\ngrants"));
    assert!(!entry.contains("\"public\"\n"));
    for file in [
        "functions/greet/app.py",
        "functions/greet/build.toml",
        "wit/world.wit",
        "wit/deps/http.wit",
    ] {
        assert_eq!(mode(&app.join(file)), 0o644, "{file}");
    }
    for dir in ["functions", "functions/greet", "wit"] {
        assert_eq!(mode(&app.join(dir)), 0o755, "{dir}");
    }
}

#[test]
fn new_refuses_an_existing_directory_and_a_symlink() {
    let temp = tempfile::tempdir().unwrap();
    let full = temp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("notes.txt"), "mine").unwrap();
    let err = refused(&bulkhead([OsStr::new("new"), full.as_os_str()]));
    assert!(
        err.contains("is not empty") && err.contains("bulkhead new function"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(full.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(!full.join("bulkhead.toml").exists());

    // A link to an empty directory: refused, nothing written through it.
    let real = temp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = temp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let err = refused(&bulkhead([OsStr::new("new"), link.as_os_str()]));
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);

    // An empty directory is fine; a name that is not an app name is not.
    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&bulkhead([OsStr::new("new"), empty.as_os_str()]));
    let bad = temp.path().join("Bad_Name");
    let err = refused(&bulkhead([OsStr::new("new"), bad.as_os_str()]));
    assert!(err.contains("--name"), "{err}");
    ok(&bulkhead([
        OsStr::new("new"),
        bad.as_os_str(),
        OsStr::new("--name"),
        OsStr::new("good-name"),
    ]));
}

#[test]
fn new_function_refuses_bad_names_languages_and_invalid_manifests() {
    let temp = tempfile::tempdir().unwrap();
    let app = temp.path().join("app");
    ok(&bulkhead([OsStr::new("new"), app.as_os_str()]));
    let manifest = app.join("bulkhead.toml");
    let before = std::fs::read_to_string(&manifest).unwrap();
    let add = |name: &str, extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("new"),
            OsStr::new("function"),
            OsStr::new(name),
            OsStr::new("--app"),
            app.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        bulkhead(args)
    };
    for name in [
        "../escape",
        "a/b",
        "..",
        "Hello",
        "build",
        "std",
        "x--y",
        "x-",
    ] {
        let err = refused(&add(name, &["--lang", "rust"]));
        assert!(
            err.contains("function name") || err.contains("reserved"),
            "{name}: {err}"
        );
    }
    // An unknown language: clap names the ones there are.
    let err = refused(&add("hello", &["--lang", "go"]));
    assert!(
        err.contains("rust") && err.contains("python") && err.contains("js"),
        "{err}"
    );
    // A route that would break out of its TOML string.
    let err = refused(&add("hello", &["--lang", "rust", "--route", "/x\"\n[app]"]));
    assert!(err.contains("route"), "{err}");
    // A route the manifest refuses: nothing is written.
    let err = refused(&add(
        "hello",
        &["--lang", "rust", "--route", "/x/{*rest}/more"],
    ));
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), before);
    assert!(!app.join("functions/hello").exists());
    assert!(!temp.path().join("escape").exists());

    // The same name twice: the folder exists, refused.
    ok(&add("hello", &["--lang", "rust"]));
    let once = std::fs::read_to_string(&manifest).unwrap();
    let err = refused(&add("hello", &["--lang", "js"]));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), once);
    // A second function on the same route and method: the manifest would
    // not be valid, so nothing is written.
    let err = refused(&add("hello-two", &["--lang", "rust", "--route", "/hello"]));
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), once);
    assert!(!app.join("functions/hello-two").exists());

    // A symlinked manifest is not edited through the link.
    let other = temp.path().join("other");
    ok(&bulkhead([OsStr::new("new"), other.as_os_str()]));
    std::fs::remove_file(other.join("bulkhead.toml")).unwrap();
    std::os::unix::fs::symlink(&manifest, other.join("bulkhead.toml")).unwrap();
    let out = bulkhead([
        OsStr::new("new"),
        OsStr::new("function"),
        OsStr::new("linked"),
        OsStr::new("--lang"),
        OsStr::new("rust"),
        OsStr::new("--app"),
        other.as_os_str(),
    ]);
    assert!(refused(&out).contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), once);
}

#[test]
fn build_names_what_is_missing() {
    let temp = tempfile::tempdir().unwrap();
    let app = temp.path().join("app");
    ok(&bulkhead([OsStr::new("new"), app.as_os_str()]));
    // No function yet.
    let err = refused(&bulkhead([OsStr::new("build"), app.as_os_str()]));
    assert!(err.contains("bulkhead new function"), "{err}");
    // A function whose component nothing builds.
    let manifest = app.join("bulkhead.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(
        "\n[[function]]\nname = \"lost\"\ncomponent = \"build/lost.wasm\"\nroute = \"/lost\"\n",
    );
    std::fs::write(&manifest, text).unwrap();
    let err = refused(&bulkhead([OsStr::new("build"), app.as_os_str()]));
    assert!(err.contains("nothing builds `build/lost.wasm`"), "{err}");

    // A missing toolchain is named with what installs it: an empty PATH
    // and an empty tool folder.
    for (lang, tool, fix) in [
        (
            "python",
            "`python3` is not installed",
            "install Python 3.11",
        ),
        ("js", "`node` is not installed", "install Node.js 20"),
        ("rust", "`cargo` is not installed", "rustup"),
    ] {
        let app = temp.path().join(format!("bare-{lang}"));
        ok(&bulkhead([OsStr::new("new"), app.as_os_str()]));
        ok(&bulkhead([
            OsStr::new("new"),
            OsStr::new("function"),
            OsStr::new("hello"),
            OsStr::new("--lang"),
            OsStr::new(lang),
            OsStr::new("--app"),
            app.as_os_str(),
        ]));
        let empty = temp.path().join(format!("empty-{lang}"));
        std::fs::create_dir(&empty).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("build")
            .arg(&app)
            .env("PATH", &empty)
            .env("BULKHEAD_TOOLS_DIR", &empty)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = refused(&out);
        assert!(err.contains(tool) && err.contains(fix), "{lang}: {err}");
        assert!(!app.join("build/hello.wasm").exists());
    }
}

#[test]
fn help_teaches_the_three_commands() {
    let out = ok(&bulkhead(["new", "--help"]));
    assert!(out.contains("bulkhead new function hello --lang rust --app my-app"));
    assert!(out.contains("bulkhead keys create my-app"));
    let out = ok(&bulkhead(["new", "function", "--help"]));
    assert!(out.contains("--lang") && out.contains("--route") && out.contains("Examples:"));
    let out = ok(&bulkhead(["build", "--help"]));
    assert!(out.contains("BULKHEAD_TOOLS_DIR") && out.contains("bulkhead serve my-app"));
}
