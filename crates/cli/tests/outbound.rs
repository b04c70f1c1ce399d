//! T17: outbound HTTP leaves only for granted destinations, and never for
//! loopback, private, link-local or metadata addresses — whatever name or
//! encoding the guest uses — unless a grant names that exact address, or,
//! in `dev` only, names `localhost` (loopback on that port, no DNS).
//! Every denial is audited. No test here sends traffic off this machine:
//! the non-loopback destinations are refused before any connection.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use support::{Server, TestApp, get};

/// A loopback HTTP server on `bind` answering every request with 200 and
/// `text`; keeps the `Host` header of each request it got.
async fn responder(bind: &str, text: &'static str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .expect("bind the responder");
    let address = listener.local_addr().expect("responder address");
    let hosts: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = hosts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let service = hyper::service::service_fn(
                move |request: http::Request<hyper::body::Incoming>| {
                    let host = request
                        .headers()
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    seen.lock().unwrap().push(host);
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text)))) }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (address, hosts)
}

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

    // T17: in dev, `localhost` granted by name is loopback on that port.
    let local = fetch(format!("http://localhost:{port}/hello")).await;
    assert!(local.starts_with("REACHED status 200"), "{local}");

    // Granted by a name the resolver reads as loopback: refused after DNS.
    for url in [
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
        format!("http://localhost:{}/hello", port.wrapping_add(1)),
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

/// T17/T19: in `dev` a grant naming `localhost` means this machine's
/// loopback on the granted port and nothing more: the guest reaches a
/// server on 127.0.0.1 (or, failing that, ::1) by that name, with its own
/// `Host`; the same name on another port, loopback by address, a name
/// under `.localhost` and names the resolver reads as 127.0.0.1 stay
/// refused and audited; the use is audited with the loopback address.
#[tokio::test]
async fn localhost_in_dev_is_loopback_on_the_granted_port_only() {
    let (v4, v4_hosts) = responder("127.0.0.1:0", "dev server on v4").await;
    let (v6, _) = responder("[::1]:0", "dev server on v6").await;
    let (other, other_hosts) = responder("127.0.0.1:0", "not granted").await;
    let app = TestApp::new(
        &format!(
            r#"
[app]
name = "devloop"

[[function]]
name = "caller"
component = "hostile.wasm"
route = "/call/{{what}}"
auth = "public"
input.query.url = 'https?://\S{{1,200}}'
grants = {{ outbound = [
    "http://LocalHost:{v4}",
    "http://localhost:{v6}",
    "http://app.localhost:{v4}",
    "http://2130706433:{v4}",
    "http://127.1:{v4}",
] }}
"#,
            v4 = v4.port(),
            v6 = v6.port(),
        ),
        &["hostile"],
    );
    let server = Server::start(&app);
    let fetch = |url: String| {
        let addr = server.addr;
        async move { get(addr, &format!("/call/fetch?url={url}")).await.text() }
    };

    let reached = fetch(format!("http://localhost:{}/x", v4.port())).await;
    assert!(reached.starts_with("REACHED status 200"), "{reached}");
    assert!(reached.contains("dev server on v4"), "{reached}");
    assert_eq!(
        v4_hosts.lock().unwrap().as_slice(),
        [format!("localhost:{}", v4.port())]
    );
    // Nothing listens on 127.0.0.1 at this port: IPv6 loopback answers.
    let reached = fetch(format!("http://LOCALHOST:{}/", v6.port())).await;
    assert!(reached.contains("dev server on v6"), "{reached}");

    // Another port, loopback by address: no grant names them.
    for url in [
        format!("http://localhost:{}/", other.port()),
        format!("http://127.0.0.1:{}/", v4.port()),
        format!("http://[::1]:{}/", v6.port()),
        format!("http://localhost.:{}/", v4.port()),
    ] {
        let text = fetch(url.clone()).await;
        assert!(text.contains("HttpRequestDenied"), "{url}: {text}");
    }
    // Granted names other than `localhost` that lead to loopback: refused
    // after resolution, whatever the resolver makes of them (T17).
    for url in [
        format!("http://app.localhost:{}/", v4.port()),
        format!("http://2130706433:{}/", v4.port()),
        format!("http://127.1:{}/", v4.port()),
    ] {
        let text = fetch(url.clone()).await;
        assert!(text.contains("outbound refused"), "{url}: {text}");
        assert!(!text.contains("REACHED"), "{url}: {text}");
    }
    assert!(other_hosts.lock().unwrap().is_empty());
    assert_eq!(v4_hosts.lock().unwrap().len(), 1);

    let denials = server.wait_for_count(
        |r| r["target"] == "bulkhead::capability" && r["message"] == "outbound request denied",
        7,
    );
    assert_eq!(denials.len(), 7, "{denials:?}");
    assert!(server.stop().success());
    let used = app.audit_records("capability.used");
    let addresses: Vec<String> = used
        .iter()
        .filter_map(|r| r["detail"]["address"].as_str().map(str::to_string))
        .collect();
    assert!(
        addresses.contains(&v4.to_string()) && addresses.contains(&v6.to_string()),
        "{used:?}"
    );
    assert_eq!(app.audit_records("capability.denied").len(), 7);
}
