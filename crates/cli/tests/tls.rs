//! T15: TLS on the public listener, attacked with real clients: a rustls
//! client (HTTP/1.1 and HTTP/2 by ALPN) and `curl --cacert`; TLS 1.0/1.1
//! and plain HTTP sent to the TLS port; certificate rotation under load;
//! client certificates (mTLS) on a route and on the admin listener; HSTS;
//! `bulkhead tls self-signed`; plain HTTP beyond loopback refused in prod.

#[path = "tls/common.rs"]
mod common;
mod support;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Ca, Client, TLS_SECTION, client, connect, install, runtime, server_cert};
use support::{Server, TestApp};

const APP: &str = r#"
[app]
name = "secured"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

/// An app served over TLS with a certificate from `ca`.
fn tls_app(ca: &Ca, extra: &str) -> TestApp {
    let app = TestApp::new(&format!("{APP}{TLS_SECTION}{extra}"), &["hello"]);
    install(app.path(), &ca.server());
    app
}

#[test]
fn t15_h1_and_h2_by_alpn_every_answer_with_hsts() {
    let ca = Ca::new("test CA");
    let app = tls_app(&ca, "");
    let server = Server::start(&app);
    let port = server.addr.port();
    runtime().block_on(async {
        for (alpn, h2) in [(H2_H1, true), (H1, false)] {
            let mut conn = Client::connect(server.addr, &client(&[&ca], None, alpn))
                .await
                .unwrap();
            assert_eq!(conn.is_h2(), h2);
            let hello = conn.get(port, "/hello").await.unwrap();
            assert_eq!(hello.status, 200, "{}", hello.text());
            assert_eq!(
                hello.header("strict-transport-security"),
                Some("max-age=31536000")
            );
            // A refusal carries it too, and is still problem JSON.
            let missing = conn.get(port, "/nowhere").await.unwrap();
            missing.assert_problem(404, "not-found");
            assert_eq!(
                missing.header("strict-transport-security"),
                Some("max-age=31536000")
            );
        }
    });
    // A client that does not trust the CA gets no answer at all.
    runtime().block_on(async {
        let other = Ca::new("other CA");
        assert!(
            connect(server.addr, &client(&[&other], None, H2_H1))
                .await
                .is_err()
        );
    });
}

#[test]
fn t15_curl_with_cacert_over_http1_and_http2() {
    assert!(
        Command::new("curl").arg("-V").output().is_ok(),
        "curl is required (scripts/test installs it)"
    );
    let ca = Ca::new("curl CA");
    let app = tls_app(&ca, "");
    std::fs::write(app.path().join("ca.pem"), &ca.pem).unwrap();
    let server = Server::start(&app);
    let port = server.addr.port();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--include", flag, "--cacert"])
            .arg(app.path().join("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/hello"))
            .args(["--write-out", "\nversion=%{http_version}"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(" 200"), "{text}");
        assert!(
            text.contains("strict-transport-security: max-age=31536000"),
            "{text}"
        );
        assert!(text.ends_with(&format!("version={version}")), "{text}");
    }
    // Without the CA, curl refuses the certificate.
    let out = Command::new("curl")
        .args([
            "--silent",
            "--resolve",
            &format!("localhost:{port}:127.0.0.1"),
        ])
        .arg(format!("https://localhost:{port}/hello"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A TLS 1.1 ClientHello (no `supported_versions` extension), written by
/// hand: rustls must answer with an alert, never a ServerHello.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    let suites: &[u8] = &[0xc0, 0x13, 0xc0, 0x14, 0x00, 0x2f, 0x00, 0x35];
    body.extend_from_slice(&(suites.len() as u16).to_be_bytes());
    body.extend_from_slice(suites);
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut handshake = vec![1]; // ClientHello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

#[test]
fn t15_old_protocol_versions_and_plain_http_are_refused_cleanly() {
    let ca = Ca::new("test CA");
    let app = tls_app(&ca, "\n[limits]\nheader_read_timeout = \"1s\"\n");
    let server = Server::start(&app);
    // TLS 1.1: one fatal alert record (0x15, level 2), no ServerHello
    // (0x16): rustls has no version in common with it.
    let answer = raw(server.addr, &tls11_client_hello());
    assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
    assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:?}");
    assert_eq!(answer.len(), 7, "the alert alone: {answer:?}");
    // Plain HTTP to the TLS port: no HTTP answer, the connection closed.
    let answer = raw(
        server.addr,
        b"GET /hello HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    );
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // Slowloris on the handshake: a connection that sends nothing is
    // closed at the head deadline (1 s here), its place given back.
    let answer = raw(server.addr, b"");
    assert!(answer.is_empty(), "{answer:?}");
    server.wait_for_log(
        |r| r["reason"] == "tls-handshake-timeout",
        Duration::from_secs(10),
    );
    // curl refusing to go below TLS 1.2 is refused too.
    let out = Command::new("curl")
        .args(["--silent", "--insecure", "--tlsv1.0", "--tls-max", "1.1"])
        .arg(format!("https://127.0.0.1:{}/hello", server.addr.port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Each was logged and audited as a refused handshake; the server serves on.
    server.wait_for_log(
        |r| r["reason"] == "tls-handshake-failed" && r["message"] == "TLS handshake refused",
        Duration::from_secs(10),
    );
    runtime().block_on(async {
        let mut conn = Client::connect(server.addr, &client(&[&ca], None, H2_H1))
            .await
            .unwrap();
        let hello = conn.get(server.addr.port(), "/hello").await.unwrap();
        assert_eq!(hello.status, 200);
    });
    assert!(server.stop().success());
    let refused = app.audit_records("listener.refused");
    assert!(
        refused
            .iter()
            .any(|r| r.to_string().contains("tls-handshake-failed")),
        "{refused:?}"
    );
}

/// Rotation under load: requests keep going on open and new connections
/// while the pair is replaced; none fails, and a later connection gets the
/// new certificate. A bad pair afterwards is refused: the last good one
/// stays, with a warning and an audit record.
#[test]
fn t15_certificate_rotation_under_load_drops_nothing() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    // Not the per-caller rate limit under test: one test client is all callers.
    let app = tls_app(
        &old_ca,
        "\n[limits]\nrate_limit = { per_caller = \"off\" }\n",
    );
    let server = Server::start(&app);
    let addr = server.addr;
    let port = addr.port();
    let config = client(&[&old_ca, &new_ca], None, H2_H1);
    let first = runtime().block_on(async { server_cert(&connect(addr, &config).await.unwrap()) });

    let new_pair = new_ca.server();
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    const CLIENTS: usize = 4;
    // Each client runs until it made `AFTER` requests after the reload was
    // seen, and never more than `MOST` in all (bounded).
    const AFTER: usize = 50;
    const MOST: usize = 3000;
    let rotated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = runtime();
    let load: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let config = config.clone();
            let done = done.clone();
            let failed = failed.clone();
            let rotated = rotated.clone();
            rt.spawn(async move {
                // Half keep one connection open throughout; half open a
                // new one per request (a handshake each).
                let mut kept = if i % 2 == 0 {
                    Some(Client::connect(addr, &config).await.unwrap())
                } else {
                    None
                };
                let mut after = 0;
                for _ in 0..MOST {
                    let reply = match kept.as_mut() {
                        Some(conn) => conn.get(port, "/hello").await,
                        None => match Client::connect(addr, &config).await {
                            Ok(mut conn) => conn.get(port, "/hello").await,
                            Err(e) => Err(e),
                        },
                    };
                    match reply {
                        Ok(r) if r.status == 200 => {}
                        other => {
                            if failed.fetch_add(1, Ordering::SeqCst) < 3 {
                                eprintln!("failed: {:?}", other.map(|r| (r.status, r.text())));
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    if rotated.load(Ordering::SeqCst) {
                        after += 1;
                        if after >= AFTER {
                            break;
                        }
                    }
                }
                after
            })
        })
        .collect();
    // Rotate once some load is through.
    while done.load(Ordering::SeqCst) < 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    install(app.path(), &new_pair);
    server.wait_for_log(
        |r| r["message"] == "certificate reloaded: new handshakes use it",
        Duration::from_secs(30),
    );
    rotated.store(true, Ordering::SeqCst);
    let after: Vec<usize> = rt.block_on(async {
        let mut after = Vec::new();
        for task in load {
            after.push(task.await.unwrap());
        }
        after
    });
    let total = done.load(Ordering::SeqCst);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "none of {total} requests failed"
    );
    // The kept connections made their requests across the reload too.
    assert!(after.iter().all(|n| *n == AFTER), "{after:?} of {total}");
    // A fresh client (no session to resume, which would show the old one).
    let fresh = || client(&[&old_ca, &new_ca], None, H2_H1);
    let later = rt.block_on(async { server_cert(&connect(addr, &fresh()).await.unwrap()) });
    assert_ne!(later, first);
    assert_eq!(later, new_pair.der);

    // A key that does not fit the certificate: refused, the last good pair kept.
    let stray = new_ca.server();
    let mismatched = common::Pair {
        cert_pem: stray.cert_pem.clone(),
        key_pem: old_ca.server().key_pem,
        der: stray.der.clone(),
    };
    install(app.path(), &mismatched);
    server.wait_for_log(
        |r| {
            r["message"] == "new certificate or key refused: the previous pair is still served"
                && r["level"] == "WARN"
        },
        Duration::from_secs(30),
    );
    let still = rt.block_on(async { server_cert(&connect(addr, &fresh()).await.unwrap()) });
    assert_eq!(still, new_pair.der);
    assert!(server.stop().success());
    assert_eq!(app.audit_records("tls.reloaded").len(), 1);
    let refused = app.audit_records("tls.reload_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        !refused[0].to_string().contains("PRIVATE KEY"),
        "no key material in the record"
    );
}

/// T15: a new pair whose key is group/world-readable is refused at reload
/// (logged, audited, the old pair still served); the `chmod 600` the
/// refusal asks for is itself noticed, and the new pair is then served.
#[test]
fn t15_a_key_refused_for_its_mode_is_picked_up_after_chmod_600() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let app = tls_app(&old_ca, "");
    let server = Server::start(&app);
    let addr = server.addr;
    let fresh = || client(&[&old_ca, &new_ca], None, H2_H1);
    let rt = runtime();
    let first = rt.block_on(async { server_cert(&connect(addr, &fresh()).await.unwrap()) });
    let new_pair = new_ca.server();
    // The new pair, each file whole, the key 0644 from the start.
    let key = app.path().join("tls/key.pem");
    for (name, text, mode) in [
        ("key.pem", &new_pair.key_pem, 0o644),
        ("cert.pem", &new_pair.cert_pem, 0o644),
    ] {
        let tmp = app.path().join(format!("tls/.{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, app.path().join("tls").join(name)).unwrap();
    }
    server.wait_for_log(
        |r| {
            r["message"] == "new certificate or key refused: the previous pair is still served"
                && r["error"].as_str().is_some_and(|e| e.contains("chmod 600"))
        },
        Duration::from_secs(30),
    );
    let still = rt.block_on(async { server_cert(&connect(addr, &fresh()).await.unwrap()) });
    assert_eq!(still, first);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    server.wait_for_log(
        |r| r["message"] == "certificate reloaded: new handshakes use it",
        Duration::from_secs(30),
    );
    let later = rt.block_on(async { server_cert(&connect(addr, &fresh()).await.unwrap()) });
    assert_eq!(later, new_pair.der);
    assert!(server.stop().success());
    let refused = app.audit_records("tls.reload_refused");
    assert!(!refused.is_empty());
    assert!(refused[0].to_string().contains("chmod 600"), "{refused:?}");
    assert!(!refused[0].to_string().contains("PRIVATE KEY"));
    assert_eq!(app.audit_records("tls.reloaded").len(), 1);
}

const MTLS: &str = r#"client_ca = "tls/clients.pem"

[[function]]
name = "vault"
component = "hello.wasm"
route = "/vault"
auth = "public"
client_cert = "required"
"#;

#[test]
fn t15_a_route_requiring_a_client_certificate() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("stranger CA");
    let app = tls_app(&server_ca, MTLS);
    std::fs::write(app.path().join("tls/clients.pem"), &client_ca.pem).unwrap();
    let server = Server::start(&app);
    let port = server.addr.port();
    let good = client_ca.client("alice");
    let stranger = stranger_ca.client("mallory");
    runtime().block_on(async {
        for alpn in [H2_H1, H1] {
            // No certificate: the public route answers, the vault refuses.
            let mut anonymous = Client::connect(server.addr, &client(&[&server_ca], None, alpn))
                .await
                .unwrap();
            assert_eq!(anonymous.get(port, "/hello").await.unwrap().status, 200);
            let refused = anonymous.get(port, "/vault").await.unwrap();
            refused.assert_problem(401, "client-certificate-required");
            assert!(refused.header("strict-transport-security").is_some());
            // A certificate from a CA the server does not trust: no connection.
            let config = client(&[&server_ca], Some(&stranger), alpn);
            let handshake = async {
                let mut conn = Client::connect(server.addr, &config).await?;
                conn.get(port, "/vault").await
            };
            assert!(
                handshake.await.is_err(),
                "a stranger's certificate is refused"
            );
            // A trusted certificate reaches the vault.
            let mut alice = Client::connect(server.addr, &client(&[&server_ca], Some(&good), alpn))
                .await
                .unwrap();
            let vault = alice.get(port, "/vault").await.unwrap();
            assert_eq!(vault.status, 200, "{}", vault.text());
        }
    });
    server.wait_for_log(
        |r| r["reason"] == "client-certificate-required" && r["status"] == 401,
        Duration::from_secs(10),
    );
    assert!(server.stop().success());
    let refusals = app.audit_records("request.refused");
    assert!(
        refusals
            .iter()
            .any(|r| r.to_string().contains("client-certificate-required")),
        "{refusals:?}"
    );
}

#[test]
fn t15_the_admin_listener_requires_a_client_certificate_with_client_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let app = tls_app(&server_ca, MTLS);
    std::fs::write(app.path().join("tls/clients.pem"), &client_ca.pem).unwrap();
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listening");
    let operator = client_ca.client("operator");
    runtime().block_on(async {
        // Plain HTTP: no answer.
        let plain = support::try_send(admin, support::request("GET", admin, "/healthz", "")).await;
        assert!(plain.is_err(), "{:?}", plain.map(|r| r.status));
        // TLS without a certificate: the handshake fails.
        let anonymous = async {
            let mut conn = Client::connect(admin, &client(&[&server_ca], None, H1)).await?;
            conn.get(admin.port(), "/healthz").await
        };
        assert!(anonymous.await.is_err());
        // With one: served (dev on loopback with no token: open).
        let mut conn = Client::connect(admin, &client(&[&server_ca], Some(&operator), H1))
            .await
            .unwrap();
        let health = conn.get(admin.port(), "/healthz").await.unwrap();
        assert_eq!(health.status, 200, "{}", health.text());
    });
    server.wait_for_log(
        |r| r["reason"] == "admin-tls-handshake-failed",
        Duration::from_secs(10),
    );
}

#[test]
fn t15_self_signed_writes_a_dev_pair_that_serves() {
    let app = TestApp::new(APP, &["hello"]);
    let out = app.run(&["tls", "self-signed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(lines.contains("[tls]"), "{lines}");
    assert!(!lines.contains("PRIVATE KEY"), "the key is never printed");
    let dir = app.path().join(".bulkhead/dev/tls");
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let manifest = std::fs::read_to_string(app.path().join("bulkhead.toml")).unwrap();
    std::fs::write(
        app.path().join("bulkhead.toml"),
        format!("{manifest}\n{lines}"),
    )
    .unwrap();
    let server = Server::start(&app);
    let cert = std::fs::read(dir.join("cert.pem")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(&cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    runtime().block_on(async {
        let mut conn = Client::connect(server.addr, &config).await.unwrap();
        let hello = conn.get(server.addr.port(), "/hello").await.unwrap();
        assert_eq!(hello.status, 200);
    });
    // The threat model counts the listener's TLS as the mitigation (T21).
    let model = app.run(&["threat-model"]);
    let model = String::from_utf8_lossy(&model.stdout);
    assert!(
        model.lines().any(|l| l.contains("eavesdropping")
            && l.contains("| mitigated |")
            && l.contains("the gateway terminates TLS")),
        "{model}"
    );
    // Review of issue 14, findings C and 13 (T15): CN `localhost`, marked
    // as a development certificate, valid 90 days from today (not
    // 1975-4096); an existing pair is kept unless `--force`.
    let shown = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-startdate",
            "-enddate",
            "-checkend",
        ])
        .arg((89 * 86_400).to_string())
        .arg("-in")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl runs");
    let shown_text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.status.success(),
        "valid 89 days from now: {shown_text}"
    );
    assert!(
        shown_text.contains("CN = localhost") || shown_text.contains("CN=localhost"),
        "{shown_text}"
    );
    assert!(
        shown_text.contains("Bulkhead development certificate (not for prod)"),
        "{shown_text}"
    );
    let expired_in_91 = Command::new("openssl")
        .args(["x509", "-noout", "-checkend"])
        .arg((91 * 86_400).to_string())
        .arg("-in")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        !expired_in_91.status.success(),
        "not valid 91 days from now: {shown_text}"
    );
    let before = std::fs::read(dir.join("key.pem")).unwrap();
    let out = app.run(&["tls", "self-signed"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exists already") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("key.pem")).unwrap(), before, "kept");
    let out = app.run(&["tls", "self-signed", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        std::fs::read(dir.join("key.pem")).unwrap(),
        before,
        "replaced"
    );
    // Not outside dev.
    let out = app.run_with(&["tls", "self-signed"], &["--env", "prod"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`dev` only"), "{err}");
}

#[test]
fn t15_plain_http_beyond_loopback_is_refused_outside_dev() {
    // Without `[tls]`, strict environments refuse the app itself (T19).
    let plain = TestApp::new(APP, &["hello"]);
    for env in ["staging", "prod"] {
        let out = plain.run_with(&["check"], &["--env", env]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the public listener is plain HTTP"), "{err}");
    }
    // With TLS terminated upstream, the app passes every strict rule, and
    // still may not listen in plain HTTP beyond this machine.
    let upstream = TestApp::new(APP, &["hello"]);
    let master = support::prod::make_prod_ready(&upstream);
    let path = upstream.path().to_str().unwrap().to_owned();
    for env in ["staging", "prod"] {
        let out = support::prod::bulkhead(
            &[
                "serve",
                &path,
                "--env",
                env,
                "--listen",
                "0.0.0.0:0",
                "--admin-listen",
                "off",
            ],
            &master.env(),
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("plain HTTP beyond this machine"), "{err}");
        assert!(err.contains("bulkhead.toml"), "{err}");
        assert!(
            err.contains("listen on loopback"),
            "the fix is named: {err}"
        );
    }
    // Behind a proxy on loopback, prod serves.
    let server = Server::start_with_env(
        &upstream,
        &["--env", "prod", "--admin-listen", "off"],
        &master.env(),
    );
    runtime().block_on(async {
        let hello = support::get(server.addr, "/hello").await;
        assert_eq!(hello.status, 200);
        assert!(hello.header("strict-transport-security").is_none());
    });
}

#[test]
fn t15_tls_help_teaches() {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["tls", "self-signed", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("localhost"), "{text}");
    assert!(text.contains("[tls]"), "{text}");
    assert!(text.contains("`dev` only"), "{text}");
}

/// T01: a connection takes its places (per address, then in all) before
/// its handshake: silent connections from one address hold only that
/// address's share; the next from it is refused at once, unread, and
/// another address still completes its handshake and is served.
#[test]
fn t01_handshakes_wait_behind_the_per_address_connection_share() {
    let ca = Ca::new("test CA");
    let app = tls_app(
        &ca,
        "\n[limits]\nmax_connections = 64\nmax_connections_per_address = 4\n",
    );
    let server = Server::start(&app);
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    // The fifth from 127.0.0.1 (T15, T01): closed before any handshake,
    // with no plaintext 429 (garbage to a TLS client, and around HSTS);
    // still logged and audited.
    let answer = raw(server.addr, &tls11_client_hello());
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    runtime().block_on(async {
        assert!(
            connect(server.addr, &client(&[&ca], None, H2_H1))
                .await
                .is_err()
        );
    });
    server.wait_for_log(
        |r| r["reason"] == "address-connection-limit",
        Duration::from_secs(10),
    );
    // Another address handshakes and is served meanwhile.
    runtime().block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let tcp = socket.connect(server.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(client(&[&ca], None, H2_H1))
            .connect(name, tcp)
            .await
            .unwrap();
        let mut conn = Client::over(stream).await.unwrap();
        let hello = conn.get(server.addr.port(), "/hello").await.unwrap();
        assert_eq!(hello.status, 200);
    });
    drop(silent);
    assert!(server.stop().success());
    let refused = app.audit_records("listener.refused");
    assert!(
        refused
            .iter()
            .any(|r| r.to_string().contains("address-connection-limit")),
        "{refused:?}"
    );
}

/// A pair that cannot be served stops `serve` before it listens, naming
/// the file and what is wrong; the key's bytes never appear.
#[test]
fn t15_serve_refuses_a_pair_it_cannot_serve() {
    let ca = Ca::new("test CA");
    let app = tls_app(&ca, "");
    let other = ca.server();
    let cert = app.path().join("tls/cert.pem");
    let key = app.path().join("tls/key.pem");
    let good_cert = std::fs::read_to_string(&cert).unwrap();
    for (name, cert_text, key_text, expected) in [
        (
            "garbage certificate",
            "not a certificate",
            None,
            "holds no PEM certificate",
        ),
        (
            "key of another pair",
            good_cert.as_str(),
            Some(other.key_pem.as_str()),
            "does not fit the certificate",
        ),
        (
            "garbage key",
            good_cert.as_str(),
            Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            "is not a PEM private key",
        ),
    ] {
        std::fs::write(&cert, cert_text).unwrap();
        if let Some(text) = key_text {
            std::fs::write(&key, text).unwrap();
        }
        let out = app.run_with(
            &["serve"],
            &["--listen", "127.0.0.1:0", "--admin-listen", "off"],
        );
        assert!(!out.status.success(), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains("BEGIN PRIVATE KEY"), "{name}: {err}");
    }
}
