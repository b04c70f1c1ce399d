//! Issue 12, items 3 and 5: chunked uploads (`curl -T -`, streaming
//! browsers) sent as raw bytes over loopback to the real server and the
//! echo guest, which reports the body, its length, the `content-length`
//! and trailers it was handed, and the scheme and authority it saw. The cap
//! (T01) holds while chunks still stream in, a stalled body times out,
//! trailers are filtered like headers (T10, T11), and https is believed
//! only from a trusted proxy (T02, T11).

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use support::{RawAnswer, Server, TestApp, guest_calls};

const MAX_BODY: usize = 64 * 1024;

const MANIFEST: &str = r#"
[app]
name = "uploads"

[limits]
body_read_timeout = "2s"

[[function]]
name = "upload"
component = "echo.wasm"
route = "/upload"
auth = "public"
methods = ["POST"]
input.max_body = "64KiB"
input.headers = ["x-checksum"]
"#;

/// An RFC 9457 problem of `status` and `slug` with the correlation ID,
/// echoing nothing of the request; returns the correlation ID.
fn refused(answer: &RawAnswer, status: u16, slug: &str) -> String {
    let problem = answer.assert_problem(status, slug);
    assert!(!problem.to_string().contains("secret-payload"));
    answer.correlation_id()
}

/// One client connection; bytes read past one response are kept for the
/// next (pipelined answers can arrive in one read).
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut buf = [0u8; 8192];
        let n = self.stream.read(&mut buf).expect("the server answers");
        self.pending.extend_from_slice(&buf[..n]);
        n
    }

    /// Read exactly one response, as far as its framing (`content-length`
    /// or chunked; the echo guest's answers stream, so come chunked). It
    /// does not wait for the connection to close, so it shows the server
    /// answered while the client still holds its side open.
    fn answer(&mut self) -> RawAnswer {
        loop {
            let answer = RawAnswer::parse(&self.pending);
            if answer.complete {
                assert!(answer.status.is_some(), "a status line");
                assert!(
                    answer.header("content-length").is_some()
                        || answer.header("transfer-encoding") == Some("chunked"),
                    "a framed answer: {:?}",
                    answer.headers
                );
                let used = self.pending.len() - answer.rest.len();
                self.pending.drain(..used);
                return answer;
            }
            let raw = String::from_utf8_lossy(&self.pending).into_owned();
            assert!(self.fill() > 0, "closed before a whole answer: {raw}");
        }
    }

    /// Whatever else comes before the server closes the connection.
    fn rest(mut self) -> Vec<u8> {
        let _ = self.stream.read_to_end(&mut self.pending);
        self.pending
    }
}

fn head(extra: &str) -> String {
    format!(
        "POST /upload HTTP/1.1\r\nhost: uploads.example:8080\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n{extra}\r\n"
    )
}

/// `body` as chunks of the sizes in `sizes`, cycled, then the last chunk
/// and `trailers` (lines ending in CRLF).
fn chunked(body: &[u8], sizes: &[usize], trailers: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut size = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*size.next().unwrap()).min(rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
    out
}

fn upload(addr: SocketAddr, raw: &[u8]) -> RawAnswer {
    let mut conn = Conn::open(addr);
    conn.send(raw);
    conn.answer()
}

fn echoed(reply: &Value, name: &str) -> Vec<String> {
    support::echoed_headers(reply)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

/// Item 3: chunked bodies of 0, 1, 1000 bytes, 64 KiB in many chunks of
/// odd sizes (exactly the cap) reach the function whole, with the
/// `content-length` of what was read, the empty one included; a second
/// request on the same keep-alive connection is answered too.
#[test]
fn chunked_uploads_reach_the_function_with_their_length() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let pattern: Vec<u8> = (0..MAX_BODY).map(|i| b'a' + (i % 26) as u8).collect();
    for (size, chunks) in [
        (0, &[1][..]),
        (1, &[1][..]),
        (1000, &[7, 300, 1][..]),
        (MAX_BODY, &[1, 4093, 517, 8192, 2][..]),
    ] {
        let body = &pattern[..size];
        let raw = [
            head("connection: close\r\n").into_bytes(),
            chunked(body, chunks, ""),
        ]
        .concat();
        let answer = upload(server.addr, &raw);
        assert_eq!(answer.status, Some(200), "{size}: {}", answer.text());
        let reply = answer.json();
        assert_eq!(reply["body_length"], size, "{size}");
        assert_eq!(reply["body"].as_str().unwrap().as_bytes(), body, "{size}");
        assert_eq!(
            echoed(&reply, "content-length"),
            vec![size.to_string()],
            "{size}"
        );
        assert!(
            echoed(&reply, "transfer-encoding").is_empty(),
            "framing is ours"
        );
        assert_eq!(reply["scheme"], "http");
        assert_eq!(reply["authority"], "uploads.example:8080");
    }

    // Two chunked requests back to back on one connection.
    let mut conn = Conn::open(server.addr);
    let first = [head("").into_bytes(), chunked(b"first", &[2], "")].concat();
    let second = [
        head("connection: close\r\n").into_bytes(),
        chunked(b"second", &[4], ""),
    ]
    .concat();
    conn.send(&[first, second].concat());
    assert_eq!(conn.answer().json()["body"], "first");
    assert_eq!(conn.answer().json()["body"], "second");
}

/// Item 3, T01: one byte over the cap is refused with 413 while the
/// client is still sending (its last chunk never sent), the connection
/// closed, the refusal logged and audited; the function never runs.
#[test]
fn a_chunked_upload_over_the_cap_is_refused_while_it_streams_t01() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let mut conn = Conn::open(server.addr);
    conn.send(head("").as_bytes());
    let chunk = vec![b's'; 4096];
    for _ in 0..MAX_BODY / chunk.len() {
        conn.send(format!("{:x}\r\n", chunk.len()).as_bytes());
        conn.send(&chunk);
        conn.send(b"\r\n");
    }
    // Exactly the cap so far; one byte more passes it. No last chunk.
    conn.send(b"1\r\nx\r\n");
    let answer = conn.answer();
    let id = refused(&answer, 413, "body-too-large");
    assert_eq!(answer.header("connection"), Some("close"));
    let record = server.access_record(&id);
    assert_eq!(record["reason"], "body-too-large");
    // Nothing more is read from this connection as a request.
    let _ = conn
        .stream
        .write_all(b"0\r\n\r\nGET /upload HTTP/1.1\r\nhost: x\r\n\r\n");
    let rest = conn.rest();
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "one answer"
    );
    assert!(guest_calls(&server, "echo").is_empty());
    // A clean stop, so the audit writer has flushed.
    assert!(server.stop().success());
    let audited = app
        .audit_records("request.refused")
        .into_iter()
        .any(|r| r["correlation_id"] == id.as_str() && r["detail"]["reason"] == "body-too-large");
    assert!(audited, "the refusal is on the audit trail");
}

/// Item 3, T01: a chunked body that stalls mid-way gets 408 once the body
/// read timeout passes, and the function never runs.
#[test]
fn a_stalled_chunked_upload_gets_408_t01() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let mut conn = Conn::open(server.addr);
    conn.send(format!("{}5\r\nhello\r\n", head("")).as_bytes());
    let answer = conn.answer();
    let id = refused(&answer, 408, "body-timeout");
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(server.access_record(&id)["reason"], "body-timeout");
    assert!(guest_calls(&server, "echo").is_empty());
}

/// Item 3, T10/T11: trailers reach the function after the body, filtered
/// like headers: only those its input rules let through, never a
/// `bulkhead-*` field (T11: a client cannot name itself), never one that may
/// not be a trailer (`content-type`, `authorization`). An oversized trailer
/// section is refused before the function runs.
#[test]
fn trailers_reach_the_function_filtered_t11() {
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    let trailers = "x-checksum: sha256-abc\r\nbulkhead-subject: admin\r\nbulkhead-credential: api-key\r\n\
                    content-type: text/evil\r\nauthorization: Bearer secret-payload\r\n\
                    content-length: 999\r\nx-undeclared: 1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    let raw = [
        head("connection: close\r\n").into_bytes(),
        chunked(b"payload", &[3], trailers),
    ]
    .concat();
    let answer = upload(server.addr, &raw);
    assert_eq!(answer.status, Some(200), "{}", answer.text());
    let reply = answer.json();
    assert_eq!(reply["body"], "payload");
    assert_eq!(
        reply["trailers"],
        serde_json::json!([["x-checksum", "sha256-abc"]])
    );
    assert!(echoed(&reply, "bulkhead-subject").is_empty());
    assert_eq!(echoed(&reply, "content-length"), vec!["7".to_string()]);

    // hyper bounds the trailer section (16 KiB): past it, the body is
    // malformed and refused.
    let huge = format!("x-checksum: {}\r\n", "a".repeat(20 * 1024));
    let raw = [
        head("connection: close\r\n").into_bytes(),
        chunked(b"payload", &[7], &huge),
    ]
    .concat();
    let answer = upload(server.addr, &raw);
    let id = refused(&answer, 400, "bad-body");
    assert_eq!(server.access_record(&id)["reason"], "bad-body");
    assert_eq!(
        guest_calls(&server, "echo").len(),
        1,
        "only the first upload ran"
    );
}

/// Send `raw` from the local address `from` and read one answer.
async fn exchange_from(addr: SocketAddr, from: &str, raw: &str) -> RawAnswer {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("bind the client address");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    let answer = RawAnswer::parse(&out);
    assert!(
        answer.status.is_some(),
        "an answer: {}",
        String::from_utf8_lossy(&out)
    );
    answer
}

/// What scheme and authority the function saw for a GET carrying `header`.
async fn seen(server: &Server, from: &str, header: &str) -> (String, String) {
    let raw = format!(
        "POST /upload HTTP/1.1\r\nhost: API.Example.com:08443\r\n{header}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    let answer = exchange_from(server.addr, from, &raw).await;
    assert_eq!(answer.status, Some(200), "{}", answer.text());
    let reply = answer.json();
    (
        reply["scheme"].as_str().unwrap().to_string(),
        reply["authority"].as_str().unwrap().to_string(),
    )
}

/// Item 5, T02/T11: the function sees `https` only when a trusted proxy
/// says so in the header it is configured to write; the same header from
/// any other peer, or with no trusted proxies, is ignored. The authority
/// is the canonical Host.
#[tokio::test]
async fn https_is_believed_only_from_a_trusted_proxy_t02() {
    let with_proxy = |header: &str| {
        MANIFEST.replace(
            "[limits]\n",
            &format!(
                "[limits]\ntrusted_proxies = [\"127.0.0.1/32\"]\nforwarded_header = \"{header}\"\n"
            ),
        )
    };
    let authority = "api.example.com:8443".to_string();

    let app = TestApp::new(&with_proxy("x-forwarded-for"), &["echo"]);
    let server = Server::start(&app);
    let xfp = "x-forwarded-proto: https";
    assert_eq!(
        seen(&server, "127.0.0.1", xfp).await,
        ("https".into(), authority.clone())
    );
    assert_eq!(
        seen(&server, "127.0.0.2", xfp).await,
        ("http".into(), authority.clone())
    );
    assert_eq!(
        seen(&server, "127.0.0.1", "x-forwarded-proto: gopher")
            .await
            .0,
        "http"
    );
    // The header it does not write is the client's, passed through.
    assert_eq!(
        seen(&server, "127.0.0.1", "forwarded: for=192.0.2.1;proto=https")
            .await
            .0,
        "http"
    );
    drop(server);

    let app = TestApp::new(&with_proxy("forwarded"), &["echo"]);
    let server = Server::start(&app);
    let fwd = "forwarded: for=192.0.2.1;proto=https";
    assert_eq!(
        seen(&server, "127.0.0.1", fwd).await,
        ("https".into(), authority.clone())
    );
    assert_eq!(seen(&server, "127.0.0.2", fwd).await.0, "http");
    // What the client wrote before the proxy's element proves nothing.
    let forged = "forwarded: for=1.1.1.1;proto=https, for=192.0.2.1;proto=http";
    assert_eq!(seen(&server, "127.0.0.1", forged).await.0, "http");
    assert_eq!(seen(&server, "127.0.0.1", xfp).await.0, "http");
    drop(server);

    // No trusted proxies: nobody can say https.
    let app = TestApp::new(MANIFEST, &["echo"]);
    let server = Server::start(&app);
    assert_eq!(
        seen(&server, "127.0.0.1", xfp).await,
        ("http".into(), authority)
    );
}
