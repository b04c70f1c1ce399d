//! T15 with T10, T11, T01: every gateway control holds on HTTP/2 as on
//! HTTP/1.1. The validation corpus and the credential attack corpus run
//! again over HTTP/2 (the `h2` crate as client, over rustls), and HTTP/2's
//! own attacks are made with raw frames: more streams than the cap, rapid
//! reset (CVE-2023-44487), an oversized header list and a CONTINUATION
//! flood. Each is handled without a panic, and the server serves others.

#[path = "auth/corpus.rs"]
mod auth_corpus;
#[path = "tls/common.rs"]
mod common;
mod support;
#[allow(dead_code)]
#[path = "validation/corpus.rs"]
mod validation_corpus;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Ca, TLS_SECTION, client, connect, install, runtime};
use rustls::ClientConfig;
use support::{RawAnswer, Server, TestApp, assert_no_5xx, guest_calls};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use validation_corpus::Expect;

const H2: &[&[u8]] = &[b"h2"];

/// One HTTP/2 connection through the `h2` crate: nothing between the test
/// and the frames but HPACK.
async fn h2_connection(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> h2::client::SendRequest<Bytes> {
    let stream = connect(addr, config).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// What an HTTP/2 request got: an answer, or a reset stream / connection.
enum H2Answer {
    Answer(RawAnswer),
    Reset(String),
    /// The client library refused to send it (it cannot be expressed).
    Unsendable(String),
}

async fn h2_send(
    sender: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: Bytes,
) -> H2Answer {
    let mut sender = match sender.clone().ready().await {
        Ok(s) => s,
        Err(e) => return H2Answer::Reset(e.to_string()),
    };
    let end = body.is_empty();
    let (response, mut stream) = match sender.send_request(request, end) {
        Ok(pair) => pair,
        // Neither the connection nor the peer: the client refused it.
        Err(e) if !e.is_io() && !e.is_go_away() && !e.is_reset() => {
            return H2Answer::Unsendable(e.to_string());
        }
        Err(e) => return H2Answer::Reset(e.to_string()),
    };
    if !end {
        let _ = stream.send_data(body, true);
    }
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return H2Answer::Reset(e.to_string()),
    };
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            Err(e) => return H2Answer::Reset(e.to_string()),
        }
    }
    H2Answer::Answer(RawAnswer {
        status: Some(parts.status.as_u16()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).trim().to_string(),
                )
            })
            .collect(),
        body: bytes,
        complete: true,
        rest: Vec::new(),
    })
}

/// An HTTP/1.1 request of the corpus, as an HTTP/2 client sends it: the
/// host as `:authority` (an absolute form's, else a lone `Host`'s if it is
/// an authority at all, else `x`, the `Host` fields then kept as they are,
/// so they repeat or disagree with `:authority` as in HTTP/1.1), no
/// connection headers, the body as DATA.
fn as_h2(raw: &[u8]) -> Result<(http::Request<()>, Bytes), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no head")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let body = Bytes::copy_from_slice(&raw[end + 4..]);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().ok_or("no request line")?.split(' ');
    let method = first.next().ok_or("no method")?;
    let target = first.next().ok_or("no target")?;
    let mut fields: Vec<(String, &str)> = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("bad header")?;
        fields.push((name.trim().to_ascii_lowercase(), value.trim()));
    }
    let hosts: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| n == "host")
        .map(|(_, v)| *v)
        .collect();
    let (uri, host_in_authority) = if !target.starts_with('/') {
        (target.to_string(), false)
    } else {
        match hosts.as_slice() {
            [one]
                if one.parse::<http::uri::Authority>().is_ok()
                    && format!("https://{one}{target}")
                        .parse::<http::Uri>()
                        .is_ok() =>
            {
                (format!("https://{one}{target}"), true)
            }
            _ => (format!("https://x{target}"), false),
        }
    };
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in fields {
        if (name == "host" && host_in_authority) || name == "connection" {
            continue;
        }
        builder = builder.header(name, value);
    }
    builder
        .version(http::Version::HTTP_2)
        .body(())
        .map(|r| (r, body))
        .map_err(|e| e.to_string())
}

/// Corpus cases about HTTP/1 alone: a request without `Host` (HTTP/2 has
/// `:authority`, which the conversion always sends) and HTTP/1.0.
const H1_ONLY: &[&str] = &[
    "no host on http/1.1",
    "absolute form no host",
    "http/1.0 without host",
    "http/1.0 absolute form elsewhere",
];

/// The validation corpus's app (echo behind its routes and schema) served
/// over TLS with a certificate from its own CA.
fn validation_app() -> (Ca, TestApp, Server) {
    let ca = Ca::new("h2 CA");
    let manifest = format!("{}{TLS_SECTION}", validation_corpus::MANIFEST);
    let app = TestApp::new(&manifest, &["echo"]);
    std::fs::create_dir(app.path().join("schemas")).unwrap();
    std::fs::write(
        app.path().join("schemas/register.json"),
        validation_corpus::SCHEMA,
    )
    .unwrap();
    install(app.path(), &ca.server());
    let server = Server::start(&app);
    (ca, app, server)
}

#[test]
fn t10_the_validation_corpus_over_h2_is_refused_like_over_h1() {
    let (ca, _app, server) = validation_app();
    let config = client(&[&ca], None, H2);
    let mut same = 0;
    let mut reset = Vec::new();
    let mut unsendable = Vec::new();
    let mut refused_ids = Vec::new();
    let valid_ids = runtime().block_on(async {
        let mut sender = h2_connection(server.addr, &config).await;
        for (name, raw, expect) in validation_corpus::all() {
            if H1_ONLY.contains(&name) {
                continue;
            }
            let (request, body) = match as_h2(&raw) {
                Ok(pair) => pair,
                Err(e) => {
                    unsendable.push((name, e));
                    continue;
                }
            };
            match h2_send(&mut sender, request, body).await {
                H2Answer::Answer(answer) => {
                    let id = validation_corpus::assert_answer(name, &answer, expect);
                    if let Expect::Problem(..) = expect {
                        same += 1;
                    }
                    refused_ids.extend(id);
                }
                H2Answer::Reset(e) => {
                    // The HTTP/2 layer refused it; a new connection for the rest.
                    reset.push((name, e));
                    sender = h2_connection(server.addr, &config).await;
                }
                H2Answer::Unsendable(e) => unsendable.push((name, e)),
            }
        }
        // Valid requests pass over HTTP/2, and are the only ones that reach the guest.
        let mut ids = Vec::new();
        for raw in [
            validation_corpus::get("/items/abc123?page=2&q=hello%20world&sort=asc"),
            validation_corpus::post("/notes", Some("text/plain; charset=utf-8"), b"a note"),
            validation_corpus::json(r#"{"name":"Ada","email":"ada@example.org","age":36}"#),
        ] {
            let (request, body) = as_h2(&raw).unwrap();
            let H2Answer::Answer(answer) = h2_send(&mut sender, request, body).await else {
                panic!("a valid request is answered");
            };
            assert_eq!(answer.status, Some(200), "{}", answer.text());
            ids.push(answer.correlation_id());
        }
        ids
    });
    eprintln!(
        "h2 corpus: {same} refused with the same problem as over HTTP/1.1; {} reset by the HTTP/2 layer: {reset:?}; {} not expressible in HTTP/2: {unsendable:?}",
        reset.len(),
        unsendable.len()
    );
    assert!(
        same >= 100,
        "only {same} cases answered with the same problem"
    );
    // Only framing the HTTP/2 layer itself forbids may be reset.
    assert!(reset.len() <= 10, "{reset:?}");
    let last = valid_ids.last().unwrap().clone();
    server.wait_for_log(
        |r| r["target"] == "bulkhead::guest" && r["correlation_id"] == last.as_str(),
        Duration::from_secs(10),
    );
    assert_eq!(
        guest_calls(&server, "echo"),
        valid_ids.iter().cloned().collect::<BTreeSet<_>>(),
        "only the valid requests reached the function"
    );
    for id in &refused_ids {
        let record = server.access_record(id);
        assert!(record["reason"].is_string(), "{record}");
    }
    assert_no_5xx(&server);
}

#[test]
fn t10_authority_and_host_must_agree_and_be_allowed_over_h2() {
    let (ca, _app, server) = validation_app();
    let config = client(&[&ca], None, H2);
    runtime().block_on(async {
        let mut sender = h2_connection(server.addr, &config).await;
        for (uri, host, rule) in [
            ("https://evil.example/items/x", None, "not-allowed"),
            ("https://x/items/x", Some("evil.example"), "mismatch"),
            ("https://x:8443/items/x", Some("x"), "mismatch"),
            ("https://x/items/x", Some("x evil"), "invalid"),
        ] {
            let mut request = http::Request::get(uri).version(http::Version::HTTP_2);
            if let Some(host) = host {
                request = request.header("host", host);
            }
            let H2Answer::Answer(answer) =
                h2_send(&mut sender, request.body(()).unwrap(), Bytes::new()).await
            else {
                panic!("{uri} {host:?}: answered");
            };
            let problem = answer.assert_problem(400, "invalid-host");
            assert_eq!(problem["rule"], rule, "{uri} {host:?}");
        }
        // `:authority` alone, or with an agreeing Host, is served.
        for host in [None, Some("x")] {
            let mut request =
                http::Request::get("https://x/items/abc").version(http::Version::HTTP_2);
            if let Some(host) = host {
                request = request.header("host", host);
            }
            let H2Answer::Answer(answer) =
                h2_send(&mut sender, request.body(()).unwrap(), Bytes::new()).await
            else {
                panic!("answered");
            };
            assert_eq!(answer.status, Some(200), "{}", answer.text());
        }
    });
}

#[test]
fn t11_the_credential_attack_corpus_over_h2_is_refused() {
    let ca = Ca::new("h2 CA");
    let app = TestApp::new(
        &format!("{}{TLS_SECTION}", auth_corpus::manifest(10_000)),
        &["echo"],
    );
    auth_corpus::install_keys(&app);
    install(app.path(), &ca.server());
    let session = app.run_with(
        &["token", "issue"],
        &["--subject", "ada", "--scopes", "conference:register"],
    );
    assert!(session.status.success());
    let session = String::from_utf8_lossy(&session.stdout).trim().to_string();
    let server = Server::start(&app);
    let config = client(&[&ca], None, H2);
    let corpus = auth_corpus::attacks(&session);
    assert!(corpus.len() >= 40);
    runtime().block_on(async {
        let mut sender = h2_connection(server.addr, &config).await;
        for (case, token) in &corpus {
            let request =
                http::Request::get(format!("https://localhost{}", auth_corpus::route_of(case)))
                    .header("authorization", format!("Bearer {token}"))
                    .body(())
                    .unwrap();
            let H2Answer::Answer(answer) = h2_send(&mut sender, request, Bytes::new()).await else {
                panic!("{case}: answered");
            };
            let problem = answer.assert_problem(401, "invalid-token");
            assert!(
                !problem.to_string().contains(&token[..token.len().min(40)]),
                "{case}: never echoed"
            );
            let record = server.access_record(&answer.correlation_id());
            assert_eq!(record["reason"], "invalid-token", "{case}");
        }
        // The valid ones pass, over the same connection.
        let valid = auth_corpus::ed_token(&auth_corpus::claims());
        for credential in [valid.as_str(), session.as_str()] {
            let request = http::Request::get("https://localhost/echo")
                .header("authorization", format!("Bearer {credential}"))
                .body(())
                .unwrap();
            let H2Answer::Answer(answer) = h2_send(&mut sender, request, Bytes::new()).await else {
                panic!("answered");
            };
            assert_eq!(answer.status, Some(200), "{}", answer.text());
        }
    });
    assert_no_5xx(&server);
}

// --- Raw HTTP/2 frames, for what no well-behaved client sends. ---

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HPACK literal header field without indexing, new name.
fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_length(name.len()));
    out.extend_from_slice(name.as_bytes());
    out.extend(hpack_length(value.len()));
    out.extend_from_slice(value);
    out
}

/// An HPACK string length (7-bit prefix integer, no Huffman).
fn hpack_length(mut n: usize) -> Vec<u8> {
    if n < 127 {
        return vec![n as u8];
    }
    let mut out = vec![127];
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
    out
}

/// `GET /hello` on `localhost`: `:method GET` (static 2), `:scheme https`
/// (7), `:path` literal, `:authority` literal.
fn get_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87];
    // `:path` is static index 4: literal without indexing, indexed name.
    block.push(0x04);
    block.extend(hpack_length(path.len()));
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // `:authority`, static index 1
    block.extend(hpack_length("localhost".len()));
    block.extend_from_slice(b"localhost");
    block
}

/// Open a TLS connection offering only h2, write the preface, an empty
/// SETTINGS frame and `frames`, and read what comes back (until the server
/// closes or 10 s pass), as frame types by stream.
async fn raw_h2(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    frames: &[u8],
) -> Vec<(u8, u32, Vec<u8>)> {
    let mut stream = connect(addr, config).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend_from_slice(frames);
    // The server may close before it has read it all: fine.
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let mut read = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut read)).await;
    let mut frames = Vec::new();
    let mut at = 0;
    while read.len() >= at + 9 {
        let len = u32::from_be_bytes([0, read[at], read[at + 1], read[at + 2]]) as usize;
        let kind = read[at + 3];
        let id = u32::from_be_bytes([read[at + 5], read[at + 6], read[at + 7], read[at + 8]])
            & 0x7fff_ffff;
        let end = (at + 9 + len).min(read.len());
        frames.push((kind, id, read[at + 9..end].to_vec()));
        at += 9 + len;
    }
    frames
}

fn goaway_code(frames: &[(u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(kind, _, _)| *kind == GOAWAY)
        .and_then(|(_, _, p)| {
            p.get(4..8)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        })
}

/// The server still answers a well-behaved HTTP/2 client.
async fn still_serves(addr: SocketAddr, config: &Arc<ClientConfig>) {
    let mut sender = h2_connection(addr, config).await;
    let request = http::Request::get("https://localhost/hello")
        .body(())
        .unwrap();
    let H2Answer::Answer(answer) = h2_send(&mut sender, request, Bytes::new()).await else {
        panic!("served");
    };
    assert_eq!(answer.status, Some(200));
}

const APP: &str = r#"
[app]
name = "h2-attacked"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

fn attacked() -> (Ca, TestApp, Server) {
    let ca = Ca::new("h2 CA");
    let app = TestApp::new(&format!("{APP}{TLS_SECTION}"), &["hello"]);
    install(app.path(), &ca.server());
    let server = Server::start(&app);
    (ca, app, server)
}

#[test]
fn t01_more_streams_than_the_cap_are_refused_on_their_connection() {
    let (ca, _app, mut server) = attacked();
    let config = client(&[&ca], None, H2);
    runtime().block_on(async {
        // 200 requests at once on one connection, ignoring the server's
        // SETTINGS_MAX_CONCURRENT_STREAMS (32).
        let mut frames = Vec::new();
        for i in 0..200u32 {
            frames.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                1 + 2 * i,
                &get_block("/hello"),
            ));
        }
        let got = raw_h2(server.addr, &config, &frames).await;
        let answered: BTreeSet<u32> = got
            .iter()
            .filter(|(kind, id, _)| *kind == HEADERS && *id != 0)
            .map(|(_, id, _)| *id)
            .collect();
        let reset = got
            .iter()
            .filter(|(kind, _, _)| *kind == RST_STREAM)
            .count();
        let goaway = goaway_code(&got);
        // Refused: streams reset (REFUSED_STREAM) or the connection ended;
        // never all 200 served at once.
        assert!(
            answered.len() < 200 && (reset > 0 || goaway.is_some()),
            "answered {}, reset {reset}, goaway {goaway:?}",
            answered.len()
        );
        assert!(answered.len() <= 200);
        still_serves(server.addr, &config).await;
    });
    assert!(server.is_running());
    assert_no_5xx(&server);
}

#[test]
fn t01_rapid_reset_closes_the_connection() {
    let (ca, _app, mut server) = attacked();
    let config = client(&[&ca], None, H2);
    runtime().block_on(async {
        // CVE-2023-44487: open and cancel streams as fast as frames go.
        let mut frames = Vec::new();
        for i in 0..2000u32 {
            let id = 1 + 2 * i;
            frames.extend(frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                id,
                &get_block("/hello"),
            ));
            frames.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        }
        let got = raw_h2(server.addr, &config, &frames).await;
        // ENHANCE_YOUR_CALM (0xb) once past the pending-reset bound.
        assert_eq!(
            goaway_code(&got),
            Some(0xb),
            "{:?}",
            got.iter().map(|f| f.0).collect::<Vec<_>>()
        );
        let answered = got
            .iter()
            .filter(|(kind, id, _)| *kind == HEADERS && *id != 0)
            .count();
        assert!(answered < 2000, "answered {answered}");
        still_serves(server.addr, &config).await;
    });
    assert!(server.is_running());
    // The connection it ended is logged (and audited) as refused.
    server.wait_for_log(
        |r| r["message"] == "connection refused" && r["reason"] == "http2-protocol-error",
        Duration::from_secs(10),
    );
}

#[test]
fn t01_an_oversized_header_list_and_a_continuation_flood_are_refused() {
    let (ca, _app, mut server) = attacked();
    let config = client(&[&ca], None, H2);
    runtime().block_on(async {
        // One header list far past `max_header_bytes` (16 KiB).
        let mut block = get_block("/hello");
        for i in 0..40 {
            block.extend(literal(&format!("x-big-{i}"), &[b'a'; 1000]));
        }
        let mut frames = Vec::new();
        for (i, chunk) in block.chunks(8 * 1024).enumerate() {
            let last = (i + 1) * 8 * 1024 >= block.len();
            let flags = if last {
                END_STREAM | END_HEADERS
            } else if i == 0 {
                END_STREAM
            } else {
                0
            };
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            frames.extend(frame(kind, flags, 1, chunk));
        }
        let got = raw_h2(server.addr, &config, &frames).await;
        let served = got
            .iter()
            .any(|(kind, id, p)| *kind == HEADERS && *id == 1 && p.first() == Some(&0x88));
        assert!(!served, "an oversized header list is not served with 200");
        assert!(
            got.iter()
                .any(|(kind, id, _)| (*kind == HEADERS || *kind == RST_STREAM) && *id == 1)
                || goaway_code(&got).is_some(),
            "the stream is answered (431) or reset, or the connection closed"
        );

        // CONTINUATION flood: a header block that never ends.
        let mut frames = frame(HEADERS, END_STREAM, 3, &get_block("/hello"));
        for i in 0..20_000 {
            frames.extend(frame(
                CONTINUATION,
                0,
                3,
                &literal(&format!("x-{i}"), b"flood"),
            ));
        }
        let got = raw_h2(server.addr, &config, &frames).await;
        assert!(
            goaway_code(&got).is_some() || got.iter().any(|(kind, _, _)| *kind == RST_STREAM),
            "the flood ends its connection: {:?}",
            got.iter().map(|f| f.0).collect::<Vec<_>>()
        );
        still_serves(server.addr, &config).await;
    });
    assert!(server.is_running());
    assert_no_5xx(&server);
}

#[test]
fn t01_an_idle_h2_connection_is_closed_like_an_idle_h1_one() {
    let ca = Ca::new("h2 CA");
    let app = TestApp::new(
        &format!("{APP}\n[limits]\nheader_read_timeout = \"1s\"\n{TLS_SECTION}"),
        &["hello"],
    );
    install(app.path(), &ca.server());
    let server = Server::start(&app);
    let config = client(&[&ca], None, H2);
    runtime().block_on(async {
        // A well-behaved client (it answers pings) that sends one request
        // and then nothing: the server ends the connection with GOAWAY.
        let stream = connect(server.addr, &config).await.unwrap();
        let (mut sender, connection) = h2::client::handshake(stream).await.unwrap();
        let open = tokio::spawn(connection);
        let request = http::Request::get("https://localhost/hello")
            .body(())
            .unwrap();
        let H2Answer::Answer(answer) = h2_send(&mut sender, request, Bytes::new()).await else {
            panic!("served");
        };
        assert_eq!(answer.status, Some(200));
        // Bounded wait for the close; an idle connection kept open fails
        // here. Closed by GOAWAY, or (on a loaded machine, a late pong) by
        // the ping deadline: either way it does not stay open.
        let closed = tokio::time::timeout(Duration::from_secs(30), open).await;
        assert!(matches!(closed, Ok(Ok(_))), "closed: {closed:?}");
    });
}
