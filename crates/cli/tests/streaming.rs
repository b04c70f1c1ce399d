//! Issue 12, item 1: a function's response streams to the client as the
//! guest writes it, over raw loopback sockets against the real binary and
//! the real `stream` guest. Its caps still hold mid-stream (T05): a body
//! that passes `max_response_body`, or a guest that fails, after the head
//! was sent cuts the connection, and the cut is logged and audited (T09).

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{RawAnswer, Server, TestApp};

fn app(extra: &str) -> TestApp {
    TestApp::new(
        &format!(
            r#"
[app]
name = "streams"

[[function]]
name = "stream"
component = "stream.wasm"
route = "/s/{{what}}"
auth = "public"
input.query.port = '[0-9]{{1,5}}'
input.query.lines = '[0-9]{{1,3}}'
input.query.gap = '[0-9]{{1,4}}'
input.query.bytes = '[0-9]{{1,9}}'
input.query.chunk = '[0-9]{{1,9}}'
input.query.declare = 'yes'
{extra}
"#
        ),
        &["stream"],
    )
}

/// Send `request` and read the answer as it comes, each read timestamped.
/// Stops at the end of the connection, or once `until` is in what came.
fn read_timed(stream: &mut TcpStream, until: Option<&[u8]>) -> Vec<(Instant, Vec<u8>)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reads = Vec::new();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 65536];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return reads,
            Ok(n) => {
                seen.extend_from_slice(&buffer[..n]);
                reads.push((Instant::now(), buffer[..n].to_vec()));
                if until.is_some_and(|u| contains(&seen, u)) {
                    return reads;
                }
            }
        }
    }
}

/// Read until the server closes the connection (an end or a reset) and
/// say how many bytes came; `None` if it is still open after 30 s.
fn read_until_closed(stream: &mut TcpStream) -> Option<usize> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut sink = vec![0u8; 1 << 20];
    let mut received = 0usize;
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Some(received),
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(received),
            Err(_) => return None,
        }
    }
}

/// GET `path` (with extra `headers` lines) on a connection of its own and
/// read the whole answer, raw.
fn fetch(addr: SocketAddr, path: &str, headers: &str) -> String {
    all(&read_timed(&mut send(addr, path, headers), None))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn send(addr: SocketAddr, path: &str, headers: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\n{headers}connection: close\r\n\r\n"
    )
    .expect("send");
    stream
}

fn all(reads: &[(Instant, Vec<u8>)]) -> String {
    String::from_utf8_lossy(
        &reads
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect::<Vec<_>>(),
    )
    .into_owned()
}

/// Server-sent events arrive one by one as the guest writes them, not all
/// at the end: the read that brought the first event did not bring the
/// last, written a second later, and the head came without a length.
#[test]
fn server_sent_events_arrive_as_the_guest_writes_them() {
    let app = app("");
    let server = Server::start(&app);
    let mut stream = send(server.addr, "/s/sse?lines=6&gap=200", "");
    let asked = Instant::now();
    let reads = read_timed(&mut stream, None);
    let text = all(&reads);
    let answer = RawAnswer::parse(text.as_bytes());
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(
        answer.header("content-type"),
        Some("text/event-stream"),
        "{text}"
    );
    assert_eq!(
        answer.header("transfer-encoding"),
        Some("chunked"),
        "{text}"
    );
    assert!(answer.header("content-length").is_none(), "{text}");
    assert!(answer.complete, "{text}");
    let body = answer.text();
    for i in 1..=6 {
        assert!(body.contains(&format!("data: event {i} of 6")), "{body}");
    }
    let first = reads
        .iter()
        .position(|(_, b)| contains(b, b"event 1 of 6"))
        .expect("event 1 read");
    let last = reads
        .iter()
        .position(|(_, b)| contains(b, b"event 6 of 6"))
        .expect("event 6 read");
    for (at, bytes) in &reads {
        eprintln!(
            "{:>6} ms: {:?}",
            at.duration_since(asked).as_millis(),
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(
        first < last,
        "the first event came in the same read as the last: the body was held back"
    );
}

/// Proof without clocks: the guest writes `first`, then waits for an
/// outbound answer the test gives only once its client has read `first`
/// from the gateway. A gateway that held the body back until the guest
/// finished would deadlock here, and the call would end in a timeout.
#[test]
fn a_body_reaches_the_client_before_the_guest_finishes_it() {
    let release = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = release.local_addr().expect("addr").port();
    let (got_first, wait_for_first) = mpsc::channel::<()>();
    let releaser = std::thread::spawn(move || {
        let (mut conn, _) = release.accept().expect("the guest calls");
        let mut head = [0u8; 4096];
        let _ = conn.read(&mut head);
        // Held until the client has the first line.
        let released = wait_for_first.recv_timeout(Duration::from_secs(30)).is_ok();
        let _ =
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        released
    });
    let app = app(&format!(
        "grants = {{ outbound = [\"http://127.0.0.1:{port}\"] }}\ntimeout = \"60s\"\n"
    ));
    let server = Server::start(&app);
    let mut stream = send(server.addr, &format!("/s/gate?port={port}"), "");
    let reads = read_timed(&mut stream, Some(b"first\n"));
    let text = all(&reads);
    assert!(
        text.contains("first\n"),
        "the client never got `first` while the guest waited: {text}"
    );
    got_first.send(()).expect("releaser waits");
    let rest = all(&read_timed(&mut stream, None));
    assert!(
        releaser.join().expect("releaser"),
        "released only by the timeout"
    );
    let answer = RawAnswer::parse((text + &rest).as_bytes());
    assert!(answer.complete);
    assert_eq!(answer.text(), "first\nsecond after status 200\n");
}

/// T05: `max_response_body` holds on the bytes streamed. Past it mid-way,
/// the connection is cut (the chunked body never ends, so no client takes
/// it for whole), the cut is logged with its reason and audited. A length
/// declared over the cap is refused before anything is sent.
#[test]
fn t05_the_response_cap_cuts_a_stream_mid_way_and_says_so() {
    let app = app("max_response_body = \"256KiB\"\n");
    let server = Server::start(&app);

    let text = fetch(server.addr, "/s/big?bytes=1048576", "");
    let answer = RawAnswer::parse(text.as_bytes());
    assert!(text.starts_with("HTTP/1.1 200"), "{:?}", answer.headers);
    assert!(
        !answer.complete,
        "a cut stream must not end like a whole one"
    );
    assert!(
        answer.body.len() <= 256 << 10,
        "{} bytes sent",
        answer.body.len()
    );
    let correlation_id = answer
        .header("x-correlation-id")
        .or_else(|| answer.header("bulkhead-correlation-id"))
        .map(str::to_string);
    let cut = server.wait_for_log(
        |r| r["message"] == "response cut" && r["reason"] == "response-too-large",
        Duration::from_secs(10),
    );
    assert_eq!(cut["function"], "stream");
    assert_eq!(cut["status"], 200);
    if let Some(id) = correlation_id {
        assert_eq!(cut["correlation_id"], id.as_str());
    }

    // Declared over the cap: nothing sent yet, so a problem answers.
    let text = fetch(server.addr, "/s/big?bytes=1048576&declare=yes", "");
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert!(text.contains("response-too-large"), "{text}");

    // Under the cap, a declared length goes to the client as it is.
    let text = fetch(
        server.addr,
        "/s/big?bytes=200000&declare=yes&chunk=1000",
        "",
    );
    let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 200000"),
        "{head}"
    );
    assert_eq!(rest.len(), 200_000);

    assert!(server.stop().success());
    let audited = app.audit_records("sandbox.limit");
    assert!(
        audited
            .iter()
            .any(|r| r.to_string().contains("response-too-large")
                && r.to_string().contains("cut after")),
        "{audited:?}"
    );
}

/// Issue 12, item 6 while streaming: a guest that dies mid-body has its
/// connection cut and the failure logged as the function's.
#[test]
fn a_guest_failing_mid_stream_is_cut_and_logged_as_the_functions_failure() {
    let app = app("");
    let server = Server::start(&app);
    let text = fetch(server.addr, "/s/fail?bytes=262144", "");
    let answer = RawAnswer::parse(text.as_bytes());
    assert!(text.starts_with("HTTP/1.1 200"), "{:?}", answer.headers);
    assert!(
        !answer.complete,
        "a failed body must not end like a whole one"
    );
    let cut = server.wait_for_log(|r| r["message"] == "response cut", Duration::from_secs(10));
    assert_eq!(cut["reason"], "function-trapped", "{cut}");
    // The gateway keeps serving.
    let text = fetch(server.addr, "/s/big?bytes=10", "");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// Trailers the guest sends reach a client that asked for them (`TE:
/// trailers`), and only such a client.
#[test]
fn response_trailers_reach_clients_that_ask_for_them() {
    let app = app("");
    let server = Server::start(&app);
    let asked = fetch(server.addr, "/s/trailers", "te: trailers\r\n").to_ascii_lowercase();
    assert!(asked.contains("payload"), "{asked}");
    assert!(asked.contains("\r\n0\r\nx-checksum: abc123\r\n"), "{asked}");
    // T11: a guest cannot set the gateway's own fields, head or trailers.
    assert!(!asked.contains("bulkhead-subject: admin"), "{asked}");

    let plain = fetch(server.addr, "/s/trailers", "").to_ascii_lowercase();
    assert!(plain.contains("payload"), "{plain}");
    assert!(!plain.contains("abc123"), "{plain}");
}

/// T01: a client that takes a stream's head and then stops reading cannot
/// hold the call's admission places past the function's timeout. With one
/// place, another caller is refused while the stream runs, and admitted
/// once the timeout has passed, the stalled client still connected.
#[test]
fn t01_a_client_that_stops_reading_cannot_hold_the_places_past_the_timeout() {
    let app = app(
        "timeout = \"2s\"\nmax_concurrent_requests = 1\nmax_outstanding_requests = 1\nmax_response_body = \"512MiB\"\n",
    );
    let server = Server::start(&app);
    let mut stalled = send(server.addr, "/s/big?bytes=400000000", "");
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = [0u8; 64];
    let n = stalled.read(&mut head).expect("the head comes");
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // From here on the client reads nothing more.

    let other = |path: &str| {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        let _ = stream.read_to_string(&mut out);
        out
    };
    // Held, outstanding place included: refused at once, not queued (the
    // outside attack found a stream gave its outstanding place back).
    let refused = other("/s/big?bytes=10");
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");

    // Bounded wait, not a timing assertion: the places must come back.
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = other("/s/big?bytes=10");
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the stalled stream still holds the places: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The stalled connection itself is closed by the server, and the cut
    // logged: the client cannot pin a connection either.
    assert!(
        read_until_closed(&mut stalled).is_some(),
        "the server kept the stalled connection open"
    );
    let cut = server.wait_for_log(
        |r| r["message"] == "response cut" && r["reason"] == "response-timeout",
        Duration::from_secs(10),
    );
    assert_eq!(cut["function"], "stream");
}

/// An HTTP/1.0 client cannot tell a body cut short from a whole one (no
/// chunked framing: the body ends with the connection), so its answer is
/// read whole first, and a failure is a problem response, never a body
/// that ends cleanly (outside attack on issue 12).
#[test]
fn an_http_1_0_client_never_gets_a_cut_body_that_looks_whole() {
    let app = app("max_response_body = \"256KiB\"\n");
    let server = Server::start(&app);
    for (path, slug) in [
        ("/s/fail?bytes=100000", "function-trapped"),
        ("/s/big?bytes=1048576", "response-too-large"),
    ] {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        write!(stream, "GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n").expect("send");
        let text = all(&read_timed(&mut stream, None));
        assert!(
            text.starts_with("HTTP/1.0 500") || text.starts_with("HTTP/1.1 500"),
            "{path}: {}",
            &text[..text.len().min(300)]
        );
        assert!(
            text.contains(slug),
            "{path}: {}",
            &text[..text.len().min(300)]
        );
    }
    // A whole one still comes whole, with its length.
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    write!(
        stream,
        "GET /s/sse?lines=3&gap=50 HTTP/1.0\r\nhost: localhost\r\n\r\n"
    )
    .expect("send");
    let text = all(&read_timed(&mut stream, None));
    assert!(text.contains("content-length: "), "{text}");
    assert!(text.contains("event 3 of 3"), "{text}");
}

/// Outside attack: a guest's status must be a final one; an informational
/// status or one past 599 is its error, answered with a problem.
#[test]
fn a_status_that_is_not_final_is_the_functions_error() {
    let app = app("input.query.code = '[0-9]{1,3}'\n");
    let server = Server::start(&app);
    for code in [100, 101, 103, 199, 600, 999] {
        let text = fetch(server.addr, &format!("/s/status?code={code}"), "");
        assert!(text.starts_with("HTTP/1.1 500"), "{code}: {text}");
        assert!(text.contains("function-error"), "{code}: {text}");
    }
    assert!(fetch(server.addr, "/s/status?code=204", "").starts_with("HTTP/1.1 204"));
}

/// Outside attack: once the whole declared length is sent, hyper drops
/// the body; the guest still finishes its work (bounded by its timeout),
/// and a failure after its body is logged, not lost.
#[test]
fn a_guest_finishes_its_work_after_its_whole_declared_body_was_sent() {
    let app = app("");
    let server = Server::start(&app);
    let text = fetch(server.addr, "/s/afterbody", "");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    server.wait_for_log(
        |r| r["line"] == "work after the body",
        Duration::from_secs(10),
    );
    server.wait_for_log(
        |r| r["message"] == "the function failed after its whole response was sent",
        Duration::from_secs(10),
    );
}

/// Outside attack: a client that takes an answer's head and then reads
/// nothing (here an HTTP/1.0 client, whose answer is read whole first) is
/// disconnected once a write has made no progress for the send timeout
/// (`header_read_timeout`), so such clients cannot pin connections and the
/// memory buffered for them; the disconnection is logged.
#[test]
fn t01_a_client_that_reads_nothing_is_disconnected() {
    let app = app("max_response_body = \"16MiB\"\n\n[limits]\nheader_read_timeout = \"2s\"\n");
    let server = Server::start(&app);
    let mut stalled = TcpStream::connect(server.addr).expect("connect");
    write!(
        stalled,
        "GET /s/big?bytes=12000000 HTTP/1.0\r\nhost: localhost\r\n\r\n"
    )
    .expect("send");
    server.wait_for_log(|r| r["reason"] == "send-timeout", Duration::from_secs(30));
    let received = read_until_closed(&mut stalled).expect("the server closes the connection");
    assert!(received < 12_000_000, "all {received} bytes came");
}

/// Third outside attack: an answer read whole before its head (an HTTP/1.0
/// client's) to a client that reads it slowly but steadily (so the send
/// timeout never fires) must not hold its connection and the buffered
/// answer past the function's timeout either: it is cut like a stream,
/// and the cut logged.
#[test]
fn t01_a_whole_answer_read_slowly_is_cut_at_the_deadline() {
    let app = app("timeout = \"2s\"\nmax_response_body = \"16MiB\"\n");
    let server = Server::start(&app);
    let mut slow = TcpStream::connect(server.addr).expect("connect");
    write!(
        slow,
        "GET /s/big?bytes=12000000 HTTP/1.0\r\nhost: localhost\r\n\r\n"
    )
    .expect("send");
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // 16 KiB every 100 ms: 160 KiB/s, the whole answer would take 75 s.
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut chunk = [0u8; 16 << 10];
    let mut received = 0usize;
    let closed = loop {
        match slow.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
        if Instant::now() > give_up {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(closed, "still open after {received} bytes");
    assert!(received < 12_000_000, "all {received} bytes came");
    server.wait_for_log(
        |r| r["message"] == "response cut" && r["reason"] == "response-timeout",
        Duration::from_secs(10),
    );
}
