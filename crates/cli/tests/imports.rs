//! T18: the import check at deploy. `bulkhead check` lists every import
//! beside the grant that would enable it; an interface Bulkhead does not
//! offer is refused by name; with `strict_imports` a capability import
//! the function was not granted refuses the component before it runs.

mod support;

use support::{Server, TestApp, get};

fn manifest(app_extra: &str, function_extra: &str, kv_extra: &str) -> String {
    format!(
        r#"
[app]
name = "imports"
{app_extra}

[store.events]
kind = "sql"
migrations = "migrations"

[store.cache]
kind = "kv"

[[function]]
name = "q"
component = "sqlguest.wasm"
route = "/q/{{op}}"
auth = "public"
{function_extra}

[[function]]
name = "kv"
component = "kv.wasm"
route = "/kv"
auth = "public"
{kv_extra}

[[function]]
name = "net"
component = "hostile.wasm"
route = "/h/{{what}}"
auth = "public"
grants = {{ outbound = ["https://example.com"] }}
"#
    )
}

fn app(app_extra: &str, function_extra: &str) -> TestApp {
    app_with(app_extra, function_extra, function_extra)
}

fn app_with(app_extra: &str, function_extra: &str, kv_extra: &str) -> TestApp {
    let app = TestApp::new(
        &manifest(app_extra, function_extra, kv_extra),
        &["sqlguest", "hostile", "kv"],
    );
    let dir = app.path().join("migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("001.sql"),
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);",
    )
    .unwrap();
    app
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn t18_ungranted_capability_import_links_by_default_and_every_call_is_refused() {
    let app = app("", "");
    let out = app.run(&["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("bulkhead:sql/sql@0.1.0 -> grant `sql` (NOT granted"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"grants = { sql = { STORE = "read" } }"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("wasi:http/outgoing-handler@0.2")
            && stdout.contains("-> grant `outbound` (granted)"),
        "{stdout}"
    );
    assert!(stdout.contains("-> bound to deny-all"), "{stdout}");

    // Linked, but with no grant every call is refused.
    let server = Server::start(&app);
    let reply = get(server.addr, "/q/count").await.text();
    assert_eq!(reply, "err not-granted: events");
}

#[test]
fn t18_strict_imports_refuses_an_ungranted_capability_import() {
    for (app_extra, function_extra) in
        [("strict_imports = true", ""), ("", "strict_imports = true")]
    {
        let app = app(app_extra, function_extra);
        let out = app.run(&["check"]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("imports `bulkhead:sql/sql@0.1.0`, which needs grant `sql`"),
            "{stderr}"
        );
        assert!(
            stderr.contains(r#"add grants = { sql = { STORE = "read" } } to the function"#),
            "{stderr}"
        );
        assert!(
            stderr.contains("imports `wasi:keyvalue/atomics@0.2.0-draft`, which needs grant `kv`"),
            "{stderr}"
        );
        assert!(!stderr.contains("function `net`: component"), "{stderr}");
    }
    // Granted: strict mode accepts it.
    let app = app_with(
        "strict_imports = true",
        r#"grants = { sql = { events = "read" } }"#,
        r#"grants = { kv = { cache = "read" } }"#,
    );
    let out = app.run(&["check"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("bulkhead:sql/sql@0.1.0 -> grant `sql` (granted)"),
        "{stdout}"
    );
    assert!(stdout.contains("strict     yes"), "{stdout}");
    assert!(
        stdout.contains("sql        events (read, any statement)"),
        "{stdout}"
    );
}

/// T18/T05: sockets are bound to deny-all. Rust std and raw wasi:sockets
/// both fail to create a socket, and every attempt is logged and audited.
#[tokio::test]
async fn t18_every_socket_is_refused_and_audited() {
    let app = app("", "");
    let server = Server::start(&app);
    let reply = get(server.addr, "/h/socket").await;
    let body = reply.text();
    assert_eq!(body.matches("refused").count(), 5, "{body}");
    assert!(
        !["CONNECTED", "CREATED", "BOUND", "RESOLVING"]
            .iter()
            .any(|w| body.contains(w))
    );
    let id = reply.correlation_id();
    let refused = server.wait_for_count(
        |r| r["message"] == "socket refused" && r["correlation_id"] == id.as_str(),
        5,
    );
    assert!(refused.iter().any(|r| r["attempt"] == "resolve-addresses"));
    assert!(refused.iter().any(|r| r["attempt"] == "create-tcp-socket"));
    assert!(refused.iter().any(|r| r["attempt"] == "create-udp-socket"));
    assert!(server.stop().success());
    let audited = app.run_with(
        &["audit", "query"],
        &["--kind", "capability.denied", "--format", "json"],
    );
    let audited = String::from_utf8_lossy(&audited.stdout).into_owned();
    assert_eq!(
        audited.matches("\"capability\":\"sockets\"").count(),
        5,
        "{audited}"
    );
}
