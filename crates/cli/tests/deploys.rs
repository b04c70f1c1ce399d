//! Live deploys, SIGHUP reloads, versions and rollback (T19, T18), against
//! the real binary over real HTTP: a deploy under continuous load loses no
//! request and switches new requests; hostile or broken bundles change
//! nothing; rollback restores the previous digests; a restart serves the
//! deployed version; a deploy without the admin token is refused and
//! audited.

#[path = "tls/common.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use support::{Server, TestApp, get, guest, request, send};

/// The app whose function `greet` runs `component`: version 1 runs hello
/// (its greeting), version 2 echo (JSON) on the same route.
fn version(component: &str) -> String {
    format!(
        r#"
[app]
name = "deployed"

# The load test's clients stay under it; restart-only, so both versions say it.
[limits]
rate_limit = {{ per_caller = "100000/s", burst = 1000 }}
# A busy test machine must not shed the load test's requests (T02): what
# is counted here is the switch.
dynamic_throttle = {{ enabled = false }}

[[function]]
name = "greet"
component = "{component}"
route = "/greet"
auth = "public"
"#
    )
}

const HELLO: &str = "Hello from a sealed compartment!\n";

fn app_v1() -> TestApp {
    TestApp::new(&version("hello.wasm"), &["hello", "echo"])
}

fn set_manifest(app: &TestApp, manifest: &str) {
    std::fs::write(app.path().join("bulkhead.toml"), manifest).expect("write manifest");
}

/// Which version answered `/greet`: 1 (hello) or 2 (echo).
async fn which(addr: SocketAddr) -> u8 {
    let reply = get(addr, "/greet").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    version_of(&reply.body)
}

fn version_of(body: &[u8]) -> u8 {
    if body == HELLO.as_bytes() {
        1
    } else {
        let json: Value = serde_json::from_slice(body).expect("echo answers JSON");
        assert_eq!(json["method"], "GET");
        2
    }
}

/// `bulkhead ARGS APP_DIR OPTIONS` with no token in the environment.
fn bulkhead(args: &[&str], app: &Path, options: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .arg(app)
        .args(options)
        .env_remove("BULKHEAD_ADMIN_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("bulkhead runs")
}

fn deploy(app: &TestApp, admin: SocketAddr, extra: &[&str]) -> Output {
    let to = format!("http://{admin}");
    let mut options = vec!["--to", to.as_str()];
    options.extend_from_slice(extra);
    bulkhead(&["deploy"], app.path(), &options)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// POST raw bytes to the admin listener's `/deploys`.
async fn post_bundle(admin: SocketAddr, bundle: Vec<u8>) -> support::Reply {
    send(admin, request("POST", admin, "/deploys", bundle)).await
}

/// One tar entry with any path and type: the hostile archives a real
/// client never makes (the tar crate's builder refuses `..`).
fn raw_entry(out: &mut Vec<u8>, path: &str, kind: tar::EntryType, data: &[u8], link: &str) {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().expect("a GNU header");
        gnu.name = [0; 100];
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
        gnu.linkname = [0; 100];
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.extend(std::iter::repeat_n(0u8, pad));
}

fn index_entry(path: &str, data: &[u8]) -> Value {
    serde_json::json!({
        "path": path,
        "sha256": hex::encode(Sha256::digest(data)),
        "size": data.len(),
    })
}

/// A bundle of `files` whose index lists `listed` (path and content).
fn bundle(
    files: &[(&str, &[u8])],
    listed: &[(&str, &[u8])],
    extra: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let index = serde_json::json!({
        "format": 1,
        "app": "deployed",
        "files": listed.iter().map(|(p, d)| index_entry(p, d)).collect::<Vec<_>>(),
    });
    let mut out = Vec::new();
    raw_entry(
        &mut out,
        "bulkhead-bundle.json",
        tar::EntryType::Regular,
        index.to_string().as_bytes(),
        "",
    );
    for (path, data) in files {
        raw_entry(&mut out, path, tar::EntryType::Regular, data, "");
    }
    extra(&mut out);
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// Wait (bounded) until `done`; it only synchronises.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn audit_records_env(app: &TestApp, kind: &str, env: &str) -> Vec<Value> {
    let out = app.run_with(
        &["audit", "query"],
        &["--kind", kind, "--format", "json", "--env", env],
    );
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect()
}

fn kept_versions(app: &TestApp, env: &str) -> Vec<String> {
    let out = bulkhead(&["versions"], app.path(), &["--env", env]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("    "))
        .map(|l| l.trim_start_matches("* ").trim().to_string())
        .collect()
}

/// T19: a deploy under continuous load loses no request (every one is
/// answered 200 on a keep-alive connection that is never dropped), and
/// once it returns every new request gets the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_under_load_loses_no_request_t19() {
    const CLIENTS: usize = 4;
    /// A bound, never reached unless the deploy takes about half a minute.
    const MAX_PER_CLIENT: usize = 20_000;
    let app = app_v1();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    assert_eq!(which(server.addr).await, 1);
    // `serve` keeps APP_DIR as served (v1) in the background first.
    wait_until(|| kept_versions(&app, "dev").len() == 1);

    let deployed = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (deployed, failures, addr) = (deployed.clone(), failures.clone(), server.addr);
        clients.push(tokio::spawn(async move {
            // One keep-alive connection per client, across the switch.
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            let (mut seen, mut after) = ([0usize; 3], 0usize);
            for _ in 0..MAX_PER_CLIENT {
                let switched = deployed.load(Ordering::SeqCst);
                let sent = sender
                    .send_request(request("GET", addr, "/greet", Bytes::new()))
                    .await;
                let response = match sent {
                    Ok(response) => response,
                    Err(e) => {
                        failures.lock().unwrap().push(format!("connection: {e}"));
                        break;
                    }
                };
                let status = response.status();
                let body = response.into_body().collect().await.map(|b| b.to_bytes());
                match body {
                    Ok(body) if status == 200 => {
                        let version = version_of(&body);
                        seen[version as usize] += 1;
                        if switched {
                            assert_eq!(
                                version, 2,
                                "a request after the deploy got the old version"
                            );
                            after += 1;
                        }
                    }
                    Ok(body) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => failures.lock().unwrap().push(format!("body: {e}")),
                }
                if after >= 20 {
                    break;
                }
                // Continuous, not a flood: the point is the switch.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (seen, after)
        }));
    }
    // Load is under way before the deploy starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    set_manifest(&app, &version("echo.wasm"));
    let out = tokio::task::spawn_blocking({
        let app_path = app.path().to_path_buf();
        move || {
            bulkhead(
                &["deploy"],
                &app_path,
                &["--to", &format!("http://{admin}")],
            )
        }
    })
    .await
    .expect("deploy ran");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("deployed v2"), "{}", text(&out));
    deployed.store(true, Ordering::SeqCst);

    let mut total = 0;
    for client in clients {
        let (seen, after) = client.await.expect("client task");
        total += seen[1] + seen[2];
        assert!(
            after > 0,
            "every client kept its connection past the switch"
        );
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "requests lost: {failures:?}; refusals logged: {:?}",
        server
            .logs()
            .iter()
            .filter(|r| r["message"] == "request refused")
            .collect::<Vec<_>>()
    );
    assert!(total >= CLIENTS * 20);
    assert_eq!(which(server.addr).await, 2);
    support::assert_no_5xx(&server);

    let records = app.audit_records("deploy");
    let last = records.last().expect("a deploy record");
    assert_eq!(last["detail"]["version"], "v2", "{last}");
    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(guest("echo")).unwrap()))
    );
    assert_eq!(
        last["detail"]["functions"]["greet"],
        digest.as_str(),
        "{last}"
    );
}

/// T19, T18: a bundle that fails verification changes nothing: hostile
/// archive paths, links, a file not in the index, an index entry with no
/// file, a tampered file, a broken manifest, a component that is not
/// wasm, a restart-only change, an oversized bundle. Each is refused with
/// its problem and audited; the old version keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_fails_verification_changes_nothing_t19() {
    let app = app_v1();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    assert_eq!(which(server.addr).await, 1);
    let hello = std::fs::read(guest("hello")).unwrap();
    let echo = std::fs::read(guest("echo")).unwrap();
    let v2 = version("echo.wasm");
    let v2 = v2.as_bytes();
    let ok_files: [(&str, &[u8]); 2] = [("bulkhead.toml", v2), ("echo.wasm", &echo)];
    wait_until(|| kept_versions(&app, "dev").len() == 1);
    let before = kept_versions(&app, "dev");

    let symlink = |out: &mut Vec<u8>| {
        raw_entry(
            out,
            "link.wasm",
            tar::EntryType::Symlink,
            b"",
            "/etc/passwd",
        )
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "parent path",
            bundle(&ok_files, &ok_files, |out| {
                raw_entry(out, "../escape.txt", tar::EntryType::Regular, b"x", "")
            }),
            "`..` is not allowed",
        ),
        (
            "absolute path",
            bundle(&ok_files, &ok_files, |out| {
                raw_entry(out, "/tmp/escape.txt", tar::EntryType::Regular, b"x", "")
            }),
            "absolute paths are not allowed",
        ),
        (
            "symlink",
            bundle(&ok_files, &ok_files, symlink),
            "symbolic link",
        ),
        (
            "state dir",
            bundle(&ok_files, &ok_files, |out| {
                raw_entry(
                    out,
                    ".bulkhead/dev/state.db",
                    tar::EntryType::Regular,
                    b"x",
                    "",
                )
            }),
            "hidden files",
        ),
        (
            "not in index",
            bundle(
                &[ok_files[0], ok_files[1], ("extra.txt", b"x")],
                &ok_files,
                |_| {},
            ),
            "not in `bulkhead-bundle.json`",
        ),
        (
            "missing file",
            bundle(&ok_files[..1], &ok_files, |_| {}),
            "missing from the bundle",
        ),
        (
            "tampered",
            bundle(
                &[("bulkhead.toml", v2), ("echo.wasm", &hello)],
                &ok_files,
                |_| {},
            ),
            "does not match its `sha256`/`size`",
        ),
        (
            "bad manifest",
            bundle(
                &[
                    (
                        "bulkhead.toml",
                        b"[app]\nname = \"deployed\"\nunknown = 1\n",
                    ),
                    ok_files[1],
                ],
                &[
                    (
                        "bulkhead.toml",
                        b"[app]\nname = \"deployed\"\nunknown = 1\n",
                    ),
                    ok_files[1],
                ],
                |_| {},
            ),
            "bulkhead.toml",
        ),
        (
            "not wasm",
            bundle(
                &[("bulkhead.toml", v2), ("echo.wasm", b"not a component")],
                &[("bulkhead.toml", v2), ("echo.wasm", b"not a component")],
                |_| {},
            ),
            "function `greet`",
        ),
    ];
    for (name, body, expected) in cases {
        let reply = post_bundle(admin, body).await;
        let problem = reply.assert_problem(422, "deploy-refused");
        let problems = problem["problems"].to_string();
        assert!(problems.contains(expected), "{name}: {problems}");
        assert_eq!(which(server.addr).await, 1, "{name} changed the version");
    }
    assert!(!app.path().join("../escape.txt").exists());

    // A restart-only setting: refused, naming it.
    let limits =
        version("echo.wasm").replace("burst = 1000 }", "burst = 1000 }\nmax_connections = 7");
    set_manifest(&app, &limits);
    let out = deploy(&app, admin, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only change with a restart"),
        "{}",
        text(&out)
    );
    assert_eq!(which(server.addr).await, 1);

    // Oversized: refused from its declared length, before it is read.
    let big = request("POST", admin, "/deploys", Bytes::new());
    let (mut parts, _) = big.into_parts();
    parts.headers.insert("content-length", (65u64 << 20).into());
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(http::Request::from_parts(parts, Full::new(Bytes::new())))
        .await
        .expect("an answer before the body");
    assert_eq!(response.status(), 413);

    assert_eq!(kept_versions(&app, "dev"), before, "no version was kept");
    let refused = app.audit_records("deploy.refused");
    assert!(refused.len() >= 10, "{refused:?}");
    // Nothing half-made is left: every directory is a recorded version.
    let left: Vec<_> = std::fs::read_dir(app.path().join(".bulkhead/dev/versions"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "current" && !e.path().join("version.json").is_file())
        .collect();
    assert!(left.is_empty(), "unfinished versions left: {left:?}");
    support::assert_no_5xx(&server);
}

/// T19: rollback to a kept version restores its digests, live; the
/// versions listed name who made each and its digests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_digests_t19() {
    let app = app_v1();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    let url = format!("http://{admin}");
    // `serve` keeps APP_DIR as served: v1 (in the background).
    wait_until(|| kept_versions(&app, "dev").len() == 1);
    set_manifest(&app, &version("echo.wasm"));
    let out = deploy(&app, admin, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(which(server.addr).await, 2);

    let listed = bulkhead(&["versions"], app.path(), &["--admin", &url]);
    let listing = text(&listed);
    assert!(listing.contains("* v2"), "{listing}");
    assert!(listing.contains("  v1"), "{listing}");

    let out = bulkhead(&["rollback"], app.path(), &["--to", "v1", "--admin", &url]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(which(server.addr).await, 1);
    let hello = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(guest("hello")).unwrap()))
    );
    assert!(text(&out).contains(&hello), "{}", text(&out));
    let rollback = app.audit_records("deploy.rollback");
    let last = rollback.last().expect("a rollback record");
    assert_eq!(
        last["detail"]["functions"]["greet"],
        hello.as_str(),
        "{last}"
    );

    // An unknown version: 404, nothing changes.
    let out = bulkhead(&["rollback"], app.path(), &["--to", "v99", "--admin", &url]);
    assert!(!out.status.success());
    assert!(text(&out).contains("404"), "{}", text(&out));
    assert_eq!(which(server.addr).await, 1);
}

/// T19: SIGHUP re-reads APP_DIR and deploys it; a broken APP_DIR keeps
/// the old version serving and logs every problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_app_dir_t19() {
    let app = app_v1();
    let server = Server::start(&app);
    assert_eq!(which(server.addr).await, 1);
    wait_until(|| kept_versions(&app, "dev").len() == 1);
    set_manifest(&app, &version("echo.wasm"));
    let hup = |server: &Server| {
        let status = Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup(&server);
    server.wait_for_log(
        |r| r["message"] == "SIGHUP reload serving",
        Duration::from_secs(120),
    );
    assert_eq!(which(server.addr).await, 2);

    set_manifest(
        &app,
        "[app]\nname = \"deployed\"\n[[function]]\nname = \"greet\"\n",
    );
    hup(&server);
    let refused = server.wait_for_log(
        |r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("SIGHUP reload refused"))
        },
        Duration::from_secs(120),
    );
    assert!(
        refused["error"].as_str().unwrap().contains("bulkhead.toml"),
        "{refused}"
    );
    assert_eq!(which(server.addr).await, 2);
    let records = app.audit_records("deploy");
    assert_eq!(records.last().unwrap()["detail"]["who"], "SIGHUP");
}

/// A copy of `app`'s files (not its `.bulkhead/` state) in a new
/// directory.
fn copy_app(app: &TestApp) -> (tempfile::TempDir, TestApp) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() == ".bulkhead" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(app.path(), dir.path());
    let copy = TestApp::existing(dir.path());
    (dir, copy)
}

/// Point the prod-ready app's function at `component`, then lock and
/// sign it again with `key`.
fn resign(app: &TestApp, from: &str, to: &str, key: &Path) {
    let manifest = app.path().join("bulkhead.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace(from, to)).unwrap();
    support::prod::lock_and_sign(app, key);
}

/// T19, T18, T08: in `prod` a deploy needs the admin token, read from a
/// file (none or a wrong one: 401, audited, nothing changes), and a
/// `bulkhead.toml` signed by a key the serving version trusts: unsigned,
/// or signed by a key the bundle itself declares, is refused; an older
/// signed version replayed is refused. A good one switches, and a restart
/// serves it, not older code put back in APP_DIR; an offline rollback
/// sets what the next start serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deploys_need_the_token_a_trusted_key_and_no_replay_t19() {
    let app = app_v1();
    let master = support::prod::make_prod_ready(&app);
    let release = app.path().join("keys/release.key");
    let created = app.run_with(&["admin", "token"], &["--env", "prod"]);
    assert!(created.status.success(), "{}", text(&created));
    let token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let keys = tempfile::tempdir().unwrap();
    let token_file = keys.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let wrong_file = keys.path().join("wrong.token");
    std::fs::write(&wrong_file, format!("bha_{}", "0".repeat(64))).unwrap();
    let token_arg = token_file.to_str().unwrap().to_string();
    let prod = ["--env", "prod"];
    let server = Server::start_with_env(&app, &prod, &master.env());
    let admin = server.admin.expect("admin listener");
    assert_eq!(which(server.addr).await, 1);
    wait_until(|| kept_versions(&app, "prod").len() == 1);
    // v1 as signed now: replayed later.
    let (_old_dir, old) = copy_app(&app);
    // Signatures count seconds: the next one must be later than v1's.
    std::thread::sleep(Duration::from_millis(1100));
    resign(&app, "\"hello.wasm\"", "\"echo.wasm\"", &release);

    // No token, a wrong token: 401, nothing changes.
    let none = deploy(&app, admin, &prod);
    assert!(!none.status.success());
    assert!(text(&none).contains("401"), "{}", text(&none));
    let wrong = deploy(
        &app,
        admin,
        &[
            "--env",
            "prod",
            "--token-file",
            wrong_file.to_str().unwrap(),
        ],
    );
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("401"), "{}", text(&wrong));
    assert!(!text(&wrong).contains("bha_"), "the token is never printed");
    assert_eq!(which(server.addr).await, 1);

    // Unsigned manifest: refused.
    let (_unsigned_dir, unsigned) = copy_app(&app);
    std::fs::remove_file(unsigned.path().join("bulkhead.toml.minisig")).unwrap();
    let out = deploy(
        &unsigned,
        admin,
        &["--env", "prod", "--token-file", &token_arg],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("is not signed"), "{}", text(&out));

    // Signed by a key the bundle brings itself: refused.
    let (_rogue_dir, rogue) = copy_app(&app);
    let rogue_key = support::prod::keygen(&rogue, "rogue");
    resign(&rogue, "keys/release.pub", "keys/rogue.pub", &rogue_key);
    let out = deploy(
        &rogue,
        admin,
        &["--env", "prod", "--token-file", &token_arg],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a trusted signer"),
        "{}",
        text(&out)
    );
    assert_eq!(which(server.addr).await, 1);

    // Signed by the trusted key, with the token (from the environment).
    let ok = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("deploy")
        .arg(app.path())
        .args(["--env", "prod", "--to", &format!("http://{admin}")])
        .env("BULKHEAD_ADMIN_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(which(server.addr).await, 2);

    // v1 replayed: its signature is older than the serving version's.
    let out = deploy(&old, admin, &["--env", "prod", "--token-file", &token_arg]);
    assert!(!out.status.success());
    assert!(text(&out).contains("replayed is refused"), "{}", text(&out));
    assert_eq!(which(server.addr).await, 2);
    server.stop();

    let refused = audit_records_env(&app, "admin.refused", "prod");
    assert!(
        refused
            .iter()
            .filter(|r| r["detail"]["path"] == "/deploys")
            .count()
            >= 2,
        "{refused:?}"
    );
    assert!(audit_records_env(&app, "deploy.refused", "prod").len() >= 3);
    let deploys = audit_records_env(&app, "deploy", "prod");
    let last = deploys.last().unwrap();
    let who = last["detail"]["who"].as_str().unwrap();
    assert!(who.starts_with("admin-token sha256:"), "{last}");
    assert!(last["detail"]["signers"]["greet"].is_string(), "{last}");

    // APP_DIR gets v1's files back; the restart still serves v2.
    for file in [
        "bulkhead.toml",
        "bulkhead.toml.minisig",
        "bulkhead.lock",
        "bulkhead.lock.minisig",
    ] {
        std::fs::copy(old.path().join(file), app.path().join(file)).unwrap();
    }
    let server = Server::start_with_env(&app, &prod, &master.env());
    assert_eq!(which(server.addr).await, 2);
    // Started from the kept version, its deploy record still names the key
    // that signed each component, and no signer change is claimed (T18).
    let deploys = audit_records_env(&app, "deploy", "prod");
    let last = deploys.last().unwrap();
    let functions = last["detail"]["functions"].as_array().expect("functions");
    assert!(!functions.is_empty(), "{last}");
    assert!(
        functions.iter().all(|f| f["signer"] != "unsigned"),
        "{last}"
    );
    assert!(audit_records_env(&app, "trust.signer_changed", "prod").is_empty());
    server.stop();
    // Offline rollback sets what the next start serves.
    let out = bulkhead(&["rollback"], app.path(), &["--env", "prod", "--to", "v1"]);
    assert!(out.status.success(), "{}", text(&out));
    let server = Server::start_with_env(&app, &prod, &master.env());
    assert_eq!(which(server.addr).await, 1);
}

/// The limits test's app: `greet` rate-limited per caller, `count` on a
/// per-caller daily budget, `which` free; `{A}`/`{B}` name components.
const LIMITED: &str = r#"
[app]
name = "limited"

[[function]]
name = "greet"
component = "{A}.wasm"
route = "/greet"
auth = "public"
rate_limit = { per_caller = "1/h", burst = 2 }

[[function]]
name = "count"
component = "{B}.wasm"
route = "/count"
auth = "public"
budget = { per_caller_requests_per_day = 2 }

[[function]]
name = "which"
component = "{A}.wasm"
route = "/which"
auth = "public"
"#;

/// T19, T03, T04: a deploy is not a way to reset a caller's limits: a
/// caller out of its rate and out of its daily budget stays out after a
/// new version (other components, same settings) is switched in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_resets_no_callers_limits_t19() {
    let limited = |a: &str, b: &str| LIMITED.replace("{A}", a).replace("{B}", b);
    let app = TestApp::new(&limited("hello", "echo"), &["hello", "echo"]);
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    wait_until(|| kept_versions(&app, "dev").len() == 1);
    for _ in 0..2 {
        assert_eq!(get(server.addr, "/greet").await.status, 200);
        assert_eq!(get(server.addr, "/count").await.status, 200);
    }
    get(server.addr, "/greet")
        .await
        .assert_problem(429, "rate-limited");
    get(server.addr, "/count")
        .await
        .assert_problem(429, "budget-exhausted");
    assert_eq!(get(server.addr, "/which").await.body, HELLO.as_bytes());

    set_manifest(&app, &limited("echo", "hello"));
    let out = deploy(&app, admin, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The new version serves...
    let which = get(server.addr, "/which").await;
    assert_eq!(which.status, 200);
    assert_ne!(which.body, HELLO.as_bytes());
    // ...and the caller is still out of its rate and its budget.
    get(server.addr, "/greet")
        .await
        .assert_problem(429, "rate-limited");
    get(server.addr, "/count")
        .await
        .assert_problem(429, "budget-exhausted");
}

const WITH_SQL: &str = r#"
[app]
name = "migrated"

[store.events]
kind = "sql"
migrations = "migrations/events"

[[function]]
name = "greet"
component = "{C}"
route = "/greet"
auth = "public"
"#;

/// What `bulkhead check` says of the `events` store's migrations.
fn migrations_line(app: &TestApp) -> String {
    let out = bulkhead(&["check"], app.path(), &[]);
    let all = text(&out);
    all.lines()
        .find(|l| l.contains("SQL store `events`"))
        .unwrap_or_else(|| panic!("no migrations line in:\n{all}"))
        .to_string()
}

/// T19, T06: a new version's migrations are applied only once the whole
/// version is verified: a broken migration, or a good one shipped with a
/// component that does not load, applies nothing; a good version applies
/// its migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_only_after_the_whole_version_is_verified_t19() {
    let app = TestApp::new(&WITH_SQL.replace("{C}", "hello.wasm"), &["hello"]);
    let dir = app.path().join("migrations/events");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("001_init.sql"),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n",
    )
    .unwrap();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    wait_until(|| kept_versions(&app, "dev").len() == 1);
    assert!(migrations_line(&app).contains("1 migration(s) already applied, 0"));

    // A broken migration: refused in the dry run, nothing applied.
    std::fs::write(dir.join("002_bad.sql"), "CREATE TABLE broken (;\n").unwrap();
    let out = deploy(&app, admin, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("002_bad.sql"), "{}", text(&out));
    std::fs::remove_file(dir.join("002_bad.sql")).unwrap();

    // A good migration with a component that does not load: nothing applied.
    std::fs::write(
        dir.join("002_more.sql"),
        "ALTER TABLE events ADD COLUMN at INTEGER;\n",
    )
    .unwrap();
    std::fs::write(app.path().join("broken.wasm"), b"not a component").unwrap();
    set_manifest(&app, &WITH_SQL.replace("{C}", "broken.wasm"));
    let out = deploy(&app, admin, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("function `greet`"), "{}", text(&out));
    set_manifest(&app, &WITH_SQL.replace("{C}", "hello.wasm"));
    let line = migrations_line(&app);
    assert!(line.contains("1 migration(s) already applied, 1"), "{line}");

    // The whole version verified: its migration applied.
    let out = deploy(&app, admin, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let line = migrations_line(&app);
    assert!(line.contains("2 migration(s) already applied, 0"), "{line}");
    assert_eq!(get(server.addr, "/greet").await.status, 200);
}

/// T19, T15: over `https://` with mTLS (the admin listener asks a client
/// certificate when `[tls] client_ca` is set): `bulkhead deploy` checks
/// the server against `--cacert` and presents `--cert`/`--key`; without
/// a client certificate it cannot deploy. The bundle carries no private
/// key: the server keeps its own `[tls]` files for the new version.
#[test]
fn a_deploy_over_https_with_a_client_certificate_t19() {
    let server_ca = common::Ca::new("server CA");
    let client_ca = common::Ca::new("client CA");
    let tls = format!("{}client_ca = \"tls/clients.pem\"\n", common::TLS_SECTION);
    let app = TestApp::new(
        &format!("{}{tls}", version("hello.wasm")),
        &["hello", "echo"],
    );
    common::install(app.path(), &server_ca.server());
    std::fs::write(app.path().join("tls/clients.pem"), &client_ca.pem).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let operator = client_ca.client("operator");
    let (cacert, cert, key) = (
        keys.path().join("ca.pem"),
        keys.path().join("operator.pem"),
        keys.path().join("operator.key"),
    );
    std::fs::write(&cacert, &server_ca.pem).unwrap();
    std::fs::write(&cert, &operator.cert_pem).unwrap();
    std::fs::write(&key, &operator.key_pem).unwrap();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    let greet = |server: &Server| {
        let config = common::client(&[&server_ca], None, &[b"http/1.1"]);
        common::runtime().block_on(async {
            let mut conn = common::Client::connect(server.addr, &config).await.unwrap();
            let reply = conn.get(server.addr.port(), "/greet").await.unwrap();
            assert_eq!(reply.status, 200);
            version_of(&reply.body)
        })
    };
    assert_eq!(greet(&server), 1);
    wait_until(|| kept_versions(&app, "dev").len() == 1);
    set_manifest(&app, &format!("{}{tls}", version("echo.wasm")));
    let to = format!("https://127.0.0.1:{}", admin.port());
    let (cacert, cert, key) = (
        cacert.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );

    // No client certificate: the handshake fails, nothing changes.
    let out = bulkhead(&["deploy"], app.path(), &["--to", &to, "--cacert", cacert]);
    // (TLS 1.3: the server refuses after the client's half of the
    // handshake, so the client sees the connection end.)
    assert!(!out.status.success());
    assert!(!text(&out).contains("deployed v"), "{}", text(&out));
    // Not the server's CA: refused by the client.
    let other = keys.path().join("other.pem");
    std::fs::write(&other, &client_ca.pem).unwrap();
    let out = bulkhead(
        &["deploy"],
        app.path(),
        &[
            "--to",
            &to,
            "--cacert",
            other.to_str().unwrap(),
            "--cert",
            cert,
            "--key",
            key,
        ],
    );
    assert!(!out.status.success());
    assert_eq!(greet(&server), 1);

    let out = bulkhead(
        &["deploy"],
        app.path(),
        &[
            "--to", &to, "--cacert", cacert, "--cert", cert, "--key", key,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(greet(&server), 2);
    // The record names the client certificate that deployed.
    let fingerprint = hex::encode(&Sha256::digest(operator.der.as_ref())[..8]);
    let deploys = app.audit_records("deploy");
    let who = deploys.last().unwrap()["detail"]["who"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        who.ends_with(&format!("client certificate sha256:{fingerprint}")),
        "{who}"
    );
}

/// The app of the lock tests: `greet` runs `greet.wasm` (whose bytes
/// change between versions) and `[auth.jwt]` names a JWKS file; made
/// strict-`prod`-ready, locked and signed. Returns the app, the master key,
/// the signing key and a file holding the admin token.
fn signed_jwks_app() -> (
    TestApp,
    support::prod::MasterKey,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    let manifest = format!(
        "{}\n[auth.jwt]\nissuer = \"https://issuer.example\"\naudience = \"deployed\"\njwks = \"keys/jwks.json\"\nalgorithms = [\"EdDSA\", \"ES256\", \"RS256\"]\n",
        version("greet.wasm")
    );
    let app = TestApp::new(&manifest, &["hello", "echo"]);
    std::fs::copy(app.path().join("hello.wasm"), app.path().join("greet.wasm")).unwrap();
    std::fs::create_dir_all(app.path().join("keys")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth/jwks.json"),
        app.path().join("keys/jwks.json"),
    )
    .unwrap();
    let master = support::prod::make_prod_ready(&app);
    let created = app.run_with(&["admin", "token"], &["--env", "prod"]);
    assert!(created.status.success(), "{}", text(&created));
    let token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("admin.token"), format!("{token}\n")).unwrap();
    let release = app.path().join("keys/release.key");
    (app, master, release, keys)
}

/// T18, T19 (review finding A): the signed lock pins `bulkhead.toml` and
/// every file it names. An admin-token holder without the signing key
/// re-sends the serving version's signed files with its own JWKS: refused,
/// naming the file. A file the lock does not pin rides along: refused.
/// v3's signed manifest with v2's signed lock and component (a downgrade
/// by mixing two signed versions): refused, and v3 is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_lock_binds_the_manifest_to_every_file_t18_t19() {
    let (app, master, release, keys) = signed_jwks_app();
    let token_file = keys.path().join("admin.token");
    let token_arg = token_file.to_str().unwrap().to_string();
    let with_token = ["--env", "prod", "--token-file", token_arg.as_str()];
    let prod = ["--env", "prod"];
    let server = Server::start_with_env(&app, &prod, &master.env());
    let admin = server.admin.expect("admin listener");
    assert_eq!(which(server.addr).await, 1);
    wait_until(|| kept_versions(&app, "prod").len() == 1);

    // The serving version's signed files, with the attacker's JWKS.
    let (_swap_dir, swap) = copy_app(&app);
    std::fs::write(
        swap.path().join("keys/jwks.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"attacker","alg":"EdDSA"}]}"#,
    )
    .unwrap();
    let out = deploy(&swap, admin, &with_token);
    assert!(!out.status.success(), "the JWKS swap was accepted");
    let said = text(&out);
    assert!(said.contains("keys/jwks.json"), "{said}");
    assert!(said.contains("changed since it was locked"), "{said}");

    // A release adding a signer: the new key file is pinned by the lock
    // like every file the new manifest names, so one swapped after signing
    // is refused, never trusted from then on (outside review).
    let (_add_dir, add) = copy_app(&app);
    support::prod::keygen(&add, "new");
    resign(
        &add,
        "signers = [\"keys/release.pub\"]",
        "signers = [\"keys/release.pub\", \"keys/new.pub\"]",
        &release,
    );
    support::prod::keygen(&add, "attacker");
    std::fs::copy(
        add.path().join("keys/attacker.pub"),
        add.path().join("keys/new.pub"),
    )
    .unwrap();
    let out = deploy(&add, admin, &with_token);
    assert!(
        !out.status.success(),
        "a swapped new signer key was accepted"
    );
    let said = text(&out);
    assert!(said.contains("keys/new.pub"), "{said}");
    assert!(said.contains("changed since it was locked"), "{said}");
    assert_eq!(which(server.addr).await, 1);

    // A file no lock pins, riding along with the serving version's files.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for name in [
        "bulkhead.toml",
        "bulkhead.toml.minisig",
        "bulkhead.lock",
        "bulkhead.lock.minisig",
        "greet.wasm",
        "greet.wasm.minisig",
        "keys/jwks.json",
        "keys/release.pub",
    ] {
        files.push((name.into(), std::fs::read(app.path().join(name)).unwrap()));
    }
    files.push(("extra/payload.txt".into(), b"not named anywhere".to_vec()));
    // A "signature" beside a pinned file that has none to read: nothing
    // checks it, so it may not ride along either (outside review).
    files.push(("keys/jwks.json.minisig".into(), vec![b'x'; 4096]));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .collect();
    let archive = bundle(&refs, &refs, |_| {});
    let token = std::fs::read_to_string(&token_file).unwrap();
    let mut req = request("POST", admin, "/deploys", archive);
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    let reply = send(admin, req).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    for entry in ["extra/payload.txt", "keys/jwks.json.minisig"] {
        assert!(reply.text().contains(entry), "{entry}: {}", reply.text());
    }
    assert!(reply.text().contains("not pinned"), "{}", reply.text());
    assert_eq!(which(server.addr).await, 1);

    // v2 (hello's bytes) as signed now; then v3 (echo's bytes), deployed.
    let (_v2_dir, v2) = copy_app(&app);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::copy(app.path().join("echo.wasm"), app.path().join("greet.wasm")).unwrap();
    resign(
        &app,
        "a test route anyone may call",
        "a test route anyone may call (v3)",
        &release,
    );
    let out = deploy(&app, admin, &with_token);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(which(server.addr).await, 2);

    // v3's signed manifest with v2's signed lock and component.
    let (_mixed_dir, mixed) = copy_app(&app);
    for file in [
        "bulkhead.lock",
        "bulkhead.lock.minisig",
        "greet.wasm",
        "greet.wasm.minisig",
    ] {
        std::fs::copy(v2.path().join(file), mixed.path().join(file)).unwrap();
    }
    let out = deploy(&mixed, admin, &with_token);
    assert!(
        !out.status.success(),
        "the downgrade by mixing was accepted"
    );
    let said = text(&out);
    assert!(
        said.contains("`bulkhead.toml` changed since it was locked"),
        "{said}"
    );
    assert!(said.contains("`bulkhead.lock` was signed at"), "{said}");
    assert_eq!(which(server.addr).await, 2);
    server.stop();
}

/// T15, T19 (review finding B): a bundle never replaces the server's
/// `[tls]` certificate or key (nor client CA, nor JWE key), and never
/// carries private-key material: a bundle with its own `tls/cert.pem` and
/// `tls/key.pem`, or with a minisign secret key or a PEM private key
/// anywhere, is refused naming each entry; the server keeps serving its
/// own certificate, and the version a clean bundle makes holds the
/// server's own `[tls]` files.
#[test]
fn a_bundle_never_replaces_the_servers_tls_files_or_carries_private_keys_t15_t19() {
    let server_ca = common::Ca::new("server CA");
    let attacker_ca = common::Ca::new("attacker CA");
    let app = TestApp::new(
        &format!("{}{}", version("hello.wasm"), common::TLS_SECTION),
        &["hello", "echo"],
    );
    let served = server_ca.server();
    common::install(app.path(), &served);
    let own_cert = std::fs::read(app.path().join("tls/cert.pem")).unwrap();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    let config = common::client(&[&server_ca], None, &[b"http/1.1"]);
    let greet = |addr: SocketAddr| {
        common::runtime().block_on(async {
            let mut conn = common::Client::connect(addr, &config).await.unwrap();
            version_of(&conn.get(addr.port(), "/greet").await.unwrap().body)
        })
    };
    assert_eq!(greet(server.addr), 1);
    wait_until(|| kept_versions(&app, "dev").len() == 1);

    let manifest = format!("{}{}", version("echo.wasm"), common::TLS_SECTION);
    let echo = std::fs::read(app.path().join("echo.wasm")).unwrap();
    let rogue = attacker_ca.server();
    let minisign_key = b"untrusted comment: minisign encrypted secret key\nRWRTY0IyAAAA\n";
    let pem_key =
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    // A real secret key from `bulkhead keygen` (its own comment), under an
    // innocent name (outside review: only minisign's comments were known).
    let stray = std::fs::read(support::prod::keygen(&app, "stray")).unwrap();
    let hostile: Vec<(&str, &[u8])> = vec![
        ("bulkhead.toml", manifest.as_bytes()),
        ("echo.wasm", &echo),
        ("tls/cert.pem", rogue.cert_pem.as_bytes()),
        ("tls/key.pem", rogue.key_pem.as_bytes()),
        ("keys/release.key", minisign_key),
        ("notes/key.txt", pem_key),
        ("notes/readme.txt", &stray),
    ];
    // (The admin listener speaks TLS only with `client_ca`: plain here.)
    let post = |archive: Vec<u8>| common::runtime().block_on(post_bundle(admin, archive));
    let reply = post(bundle(&hostile, &hostile, |_| {}));
    let body = reply.text();
    assert_eq!(reply.status, 422, "{body}");
    for entry in [
        "tls/cert.pem",
        "tls/key.pem",
        "keys/release.key",
        "notes/key.txt",
        "notes/readme.txt",
    ] {
        assert!(
            body.contains(&format!("`{entry}`")),
            "no `{entry}` in {body}"
        );
    }
    assert!(body.contains("holds a private key"), "{body}");
    assert!(body.contains("never replaces them"), "{body}");
    assert!(!body.contains("PRIVATE KEY-----"), "never echoed: {body}");
    assert_eq!(greet(server.addr), 1);

    // A clean bundle: switched; its version holds the server's own files.
    let clean: Vec<(&str, &[u8])> =
        vec![("bulkhead.toml", manifest.as_bytes()), ("echo.wasm", &echo)];
    let reply = post(bundle(&clean, &clean, |_| {}));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(greet(server.addr), 2);
    let current =
        std::fs::read_to_string(app.path().join(".bulkhead/dev/versions/current")).unwrap();
    let kept = app
        .path()
        .join(".bulkhead/dev/versions")
        .join(current.trim())
        .join("files/tls");
    assert_eq!(std::fs::read(kept.join("cert.pem")).unwrap(), own_cert);
    assert_eq!(
        std::fs::read_to_string(kept.join("key.pem")).unwrap(),
        served.key_pem
    );
    server.stop();
}

/// T09 (review finding C): a refusal is bounded whatever the bundle holds.
/// An index of 5000 entries, each with a 1000-character `sha256` and no
/// file, gets a short 422 (the first problems, then "and N more"), and its
/// audit record is as short; no index value is echoed. A broken manifest
/// is named relative to the bundle, not the staging directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_bounded_and_names_bundle_paths_t09() {
    let app = app_v1();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    let marker = "ab".repeat(500);
    let mut index_files = Vec::new();
    for n in 0..5000 {
        index_files.push(serde_json::json!({
            "path": format!("missing/{n}.wasm"),
            "sha256": marker,
            "size": 1,
        }));
    }
    let index = serde_json::json!({ "format": 1, "app": "deployed", "files": index_files });
    let mut archive = Vec::new();
    raw_entry(
        &mut archive,
        "bulkhead-bundle.json",
        tar::EntryType::Regular,
        index.to_string().as_bytes(),
        "",
    );
    archive.extend(std::iter::repeat_n(0u8, 1024));
    assert!(archive.len() > 5_000_000);
    let reply = post_bundle(admin, archive).await;
    let body = reply.text();
    assert_eq!(reply.status, 422, "{}", &body[..body.len().min(2000)]);
    assert!(body.len() < 16 * 1024, "{} bytes answered", body.len());
    assert!(body.contains("and 4980 more"), "{body}");
    assert!(!body.contains(&marker[..64]), "an index value was echoed");
    let refused = app.audit_records("deploy.refused");
    let last = refused.last().expect("audited").to_string();
    assert!(last.len() < 16 * 1024, "{} bytes audited", last.len());
    assert!(last.contains("and 4980 more"), "{last}");

    // A broken manifest: named as in the bundle.
    let manifest = b"[app]\nname = \"deployed\"\n[[function]]\nname = 7\n";
    let files: Vec<(&str, &[u8])> = vec![("bulkhead.toml", manifest)];
    let reply = post_bundle(admin, bundle(&files, &files, |_| {})).await;
    let body = reply.text();
    assert_eq!(reply.status, 422, "{body}");
    assert!(body.contains("bulkhead.toml"), "{body}");
    assert!(!body.contains("versions/"), "{body}");
    assert!(!body.contains(".bulkhead"), "{body}");
    assert_eq!(which(server.addr).await, 1);
    server.stop();
}

/// T19 (review finding D): a restart does not trust whatever is in
/// `versions/<current>/`. Someone with write access to the state directory
/// (but not to the record) swaps the kept component for other code, then
/// re-locks and re-signs the version with the app's own key: the restart
/// refuses to start, naming the file and both digests, instead of serving
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_refuses_a_kept_version_changed_on_disk_t19() {
    let app = app_v1();
    let master = support::prod::make_prod_ready(&app);
    let created = app.run_with(&["admin", "token"], &["--env", "prod"]);
    assert!(created.status.success(), "{}", text(&created));
    let prod = ["--env", "prod"];
    let server = Server::start_with_env(&app, &prod, &master.env());
    assert_eq!(which(server.addr).await, 1);
    wait_until(|| kept_versions(&app, "prod").len() == 1);
    server.stop();

    let kept = app.path().join(".bulkhead/prod/versions/v1/files");
    let recorded = hex::encode(Sha256::digest(
        std::fs::read(kept.join("hello.wasm")).unwrap(),
    ));
    std::fs::copy(app.path().join("echo.wasm"), kept.join("hello.wasm")).unwrap();
    let swapped = hex::encode(Sha256::digest(
        std::fs::read(kept.join("hello.wasm")).unwrap(),
    ));
    let key = app.path().join("keys/release.key");
    for args in [
        vec!["lock", kept.to_str().unwrap()],
        vec![
            "sign",
            kept.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    ] {
        let out = support::prod::bulkhead(&args, &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("serve")
        .arg(app.path())
        .args([
            "--env",
            "prod",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
        ])
        .envs(master.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A server that (wrongly) starts never exits: stop it rather than hang.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert!(
        !out.status.success(),
        "served a tampered kept version: {said}"
    );
    for part in [
        "`hello.wasm`",
        recorded.as_str(),
        swapped.as_str(),
        "refusing to serve the deployed version v1",
    ] {
        assert!(said.contains(part), "no `{part}` in:\n{said}");
    }
    assert!(!said.contains("listening"), "{said}");
}
