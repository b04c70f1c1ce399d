//! T17: outbound HTTP leaves only for granted destinations, and never for
//! loopback, private, link-local or metadata addresses — whatever name or
//! encoding the guest uses — unless a grant names that exact address.
//! Every denial is audited. No test here sends traffic off this machine:
//! the non-loopback destinations are refused before any connection.

mod support;

use support::{Server, TestApp, get};

fn caller_app(target_port: u16) -> TestApp {
    TestApp::new(
        &format!(
            r#"
[app]
name = "egress"

[[function]]
name = "caller"
component = "hostile.wasm"
route = "/call/{{what}}"
auth = "public"
input.query.url = 'https?://\S{{1,200}}'
grants = {{ outbound = [
    "http://127.0.0.1:{target_port}",
    "http://localhost:{target_port}",
    "http://2130706433:{target_port}",
    "http://0x7f000001:{target_port}",
] }}

[[function]]
name = "ungranted"
component = "hostile.wasm"
route = "/bare/{{what}}"
auth = "public"
input.query.url = 'https?://\S{{1,200}}'
"#
        ),
        &["hostile"],
    )
}

#[tokio::test]
async fn only_granted_public_destinations_are_reached() {
    let target_app = TestApp::new(
        "[app]\nname = \"target\"\n\n[[function]]\nname = \"hello\"\ncomponent = \"hello.wasm\"\nroute = \"/hello\"\nauth = \"public\"\n",
        &["hello"],
    );
    let target = Server::start(&target_app);
    let port = target.addr.port();
    let app = caller_app(port);
    let server = Server::start(&app);
    let fetch = |url: String| {
        let addr = server.addr;
        async move { get(addr, &format!("/call/fetch?url={url}")).await.text() }
    };

    // The exact address a grant names is reachable, loopback or not.
    let reached = fetch(format!("http://127.0.0.1:{port}/hello")).await;
    assert!(reached.starts_with("REACHED status 200"), "{reached}");
    assert!(reached.contains("sealed compartment"));

    // Granted by name, but the name resolves to loopback: refused after DNS.
    for url in [
        format!("http://localhost:{port}/hello"),
        format!("http://2130706433:{port}/hello"),
        format!("http://0x7f000001:{port}/hello"),
    ] {
        let text = fetch(url.clone()).await;
        assert!(text.contains("outbound refused"), "{url}: {text}");
        assert!(!text.contains("REACHED"), "{url}");
    }

    // Not granted at all.
    for url in [
        "http://[::1]:9/".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://example.com/".to_string(),
        format!("http://127.0.0.1:{}/hello", port.wrapping_add(1)),
        format!("https://127.0.0.1:{port}/hello"),
    ] {
        let text = fetch(url.clone()).await;
        assert!(text.contains("HttpRequestDenied"), "{url}: {text}");
    }

    // A function with no grant reaches nothing, not even what another may.
    let bare = get(
        server.addr,
        &format!("/bare/fetch?url=http://127.0.0.1:{port}/hello"),
    )
    .await;
    assert!(bare.text().contains("HttpRequestDenied"), "{}", bare.text());

    let denials = server.wait_for_count(
        |r| r["target"] == "bulkhead::capability" && r["message"] == "outbound request denied",
        10,
    );
    assert_eq!(denials.len(), 10, "{denials:?}");
    assert!(denials.iter().any(|r| {
        r["reason"]
            .as_str()
            .is_some_and(|why| why.contains("private, loopback"))
    }));
    assert!(server.stop().success());

    let audited = app.run_with(
        &["audit", "query"],
        &["--kind", "capability.denied", "--format", "json"],
    );
    assert_eq!(String::from_utf8_lossy(&audited.stdout).lines().count(), 10);
}

/// T17/T04: one call may send and receive at most `max_outbound_bytes`
/// over outbound HTTP; the body that would pass the cap fails, the guest
/// never sees the rest, the denial is logged and audited, and the bytes
/// that did flow are metered.
#[tokio::test]
async fn a_call_cannot_pass_its_outbound_byte_cap() {
    let target_app = TestApp::new(
        "[app]\nname = \"target\"\n\n[[function]]\nname = \"hello\"\ncomponent = \"hello.wasm\"\nroute = \"/hello\"\nauth = \"public\"\n",
        &["hello"],
    );
    let target = Server::start(&target_app);
    let port = target.addr.port();
    let app = TestApp::new(
        &format!(
            r#"
[app]
name = "capped"

[[function]]
name = "caller"
component = "hostile.wasm"
route = "/call/{{what}}"
auth = "public"
input.query.url = 'https?://\S{{1,200}}'
max_outbound_bytes = "300B"
grants = {{ outbound = ["http://127.0.0.1:{port}"] }}
"#
        ),
        &["hostile"],
    );
    let server = Server::start(&app);
    // The request's line and headers (about 200 bytes, T17) fit the
    // 300-byte cap; hello's response head and its 33 bytes do not.
    let text = get(
        server.addr,
        &format!("/call/fetch?url=http://127.0.0.1:{port}/hello"),
    )
    .await
    .text();
    assert!(!text.contains("sealed compartment"), "{text}");
    let denial = server.wait_for_log(
        |r| r["message"] == "outbound request denied",
        std::time::Duration::from_secs(10),
    );
    assert_eq!(denial["reason"], "the call's outbound byte cap is spent");
    assert!(server.stop().success());
    let usage = app.run_with(&["usage"], &["--format", "json"]);
    let usage: serde_json::Value = serde_json::from_slice(&usage.stdout).expect("usage JSON");
    assert!(usage["total"]["outbound_bytes"].as_u64().unwrap() > 300);
    let audited = app.run_with(
        &["audit", "query"],
        &["--kind", "capability.denied", "--format", "json"],
    );
    assert!(String::from_utf8_lossy(&audited.stdout).contains("byte cap"));
}
