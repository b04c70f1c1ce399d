//! Issue 12: a component written on a third-party framework (the Bytecode
//! Alliance's `wstd`, its own `#[wstd::http_server]` entry point and body
//! types, `guests/wstd-app`) runs unchanged: served behind one wildcard
//! route that its in-guest router splits up, streaming its body, echoing a
//! chunked upload, passing trailers both ways, and failing mid-body as the
//! function's failure. Real binary, real sockets.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use support::{RawAnswer, Server, TestApp};

const MANIFEST: &str = r#"
[app]
name = "wstd-compat"

[[function]]
name = "app"
component = "wstd_app.wasm"
route = "/app/{*rest}"
methods = ["GET", "POST"]
auth = "public"
input.headers = ["x-checksum"]
"#;

/// Write `request` raw and read the whole answer, each read kept apart.
fn exchange(server: &Server, request: &[u8]) -> Vec<Vec<u8>> {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    let mut reads = Vec::new();
    let mut buffer = [0u8; 65536];
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        reads.push(buffer[..n].to_vec());
    }
    reads
}

fn text(reads: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&reads.concat()).into_owned()
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{extra}connection: close\r\n\r\n")
        .into_bytes()
}

#[test]
fn a_wstd_app_runs_unchanged_behind_a_wildcard_route() {
    let app = TestApp::new(MANIFEST, &["wstd_app"]);
    let server = Server::start(&app);

    // The in-guest router gets every path under the wildcard.
    let hello = text(&exchange(&server, &get("/app/hello", "")));
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert!(hello.ends_with("Hello from wstd\n"), "{hello}");
    let missing = text(&exchange(&server, &get("/app/nowhere", "")));
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(missing.contains("no such route in the app"), "{missing}");
    // Outside the wildcard, the gateway answers, not the app.
    let outside = text(&exchange(&server, &get("/elsewhere", "")));
    assert!(outside.starts_with("HTTP/1.1 404"), "{outside}");
    assert!(outside.contains("problem+json"), "{outside}");

    // Streamed: the first line is read before the last was written.
    let reads = exchange(&server, &get("/app/stream", ""));
    let all = text(&reads);
    assert!(all.contains("transfer-encoding: chunked"), "{all}");
    for i in 1..=5 {
        assert!(all.contains(&format!("line {i} at")), "{all}");
    }
    let first = reads
        .iter()
        .position(|r| String::from_utf8_lossy(r).contains("line 1 at"))
        .expect("line 1 read");
    let last = reads
        .iter()
        .position(|r| String::from_utf8_lossy(r).contains("line 5 at"))
        .expect("line 5 read");
    assert!(first < last, "held back until the end: {reads:?}");

    // A chunked upload (no Content-Length), echoed back by the app.
    let payload = "0123456789abcdef".repeat(4096);
    let mut upload = b"POST /app/echo HTTP/1.1\r\nhost: localhost\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for piece in payload.as_bytes().chunks(10_000) {
        upload.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        upload.extend_from_slice(piece);
        upload.extend_from_slice(b"\r\n");
    }
    upload.extend_from_slice(b"0\r\n\r\n");
    let echoed = text(&exchange(&server, &upload));
    assert!(
        echoed.starts_with("HTTP/1.1 200"),
        "{}",
        &echoed[..200.min(echoed.len())]
    );
    assert_eq!(RawAnswer::parse(echoed.as_bytes()).text(), payload);

    // Trailers in (let through by `input.headers`), trailers out (asked for).
    let mut with_trailers = b"POST /app/trailers HTTP/1.1\r\nhost: localhost\r\nte: trailers\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    with_trailers
        .extend_from_slice(b"2\r\nhi\r\n0\r\nx-checksum: abc\r\nbulkhead-subject: admin\r\n\r\n");
    let answer = text(&exchange(&server, &with_trailers)).to_ascii_lowercase();
    assert!(answer.contains("trailers: x-checksum\n"), "{answer}");
    assert!(answer.contains("\r\n0\r\nx-checksum: abc\r\n"), "{answer}");
    assert!(!answer.contains("bulkhead-subject"), "{answer}");

    // A body that fails is the function's failure, never a whole answer.
    let failed = text(&exchange(&server, &get("/app/body-fail", "")));
    if failed.starts_with("HTTP/1.1 500") {
        assert!(failed.contains("function-error"), "{failed}");
    } else {
        assert!(failed.starts_with("HTTP/1.1 200"), "{failed}");
        assert!(
            !failed.ends_with("0\r\n\r\n"),
            "ended like a whole body: {failed}"
        );
    }
}
