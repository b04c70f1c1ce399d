//! The admin listener under attack (T09, T17): a flood of refused admin
//! requests with long paths stays a bounded, folded record with capped
//! strings; a flooding peer is rate-limited while another still gets
//! through; in `dev` a new admin token applies without a restart.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use support::{Server, TestApp, get, request, send};

const APP: &str = r#"
[app]
name = "administered"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

/// The recorded-string cap, the cut marker included.
const CAP: usize = 256;

/// Bytes of the state database, its WAL included.
/// Create an admin token with `bulkhead admin token`; the token printed.
fn admin_token(app: &TestApp) -> String {
    let created = app.run(&["admin", "token"]);
    assert!(created.status.success());
    String::from_utf8_lossy(&created.stdout).trim().to_string()
}

fn state_bytes(state: &Path) -> u64 {
    ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(state.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Send `count` pipelined GETs with `path` on one connection (the last
/// closes it) and return the status of every response the server sent
/// before it closed the connection.
fn pipelined(addr: SocketAddr, path: &str, count: usize) -> Vec<u16> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let read = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        out
    });
    for i in 0..count {
        let close = if i + 1 == count {
            "connection: close\r\n"
        } else {
            ""
        };
        let raw = format!("GET {path} HTTP/1.1\r\nhost: admin\r\n{close}\r\n");
        if stream.write_all(raw.as_bytes()).is_err() {
            break;
        }
    }
    let out = read.join().unwrap();
    let text = String::from_utf8_lossy(&out);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, m)| text.get(at + m.len()..at + m.len() + 3)?.parse().ok())
        .collect()
}

/// `count` GETs with `path`, each on a new connection (a refused one is
/// closed by the server): the status of each, and whether it was refused
/// as a connection (over the per-peer share) rather than as a request.
fn one_by_one(addr: SocketAddr, path: &str, count: usize) -> Vec<(u16, bool)> {
    let raw = format!("GET {path} HTTP/1.1\r\nhost: admin\r\n\r\n");
    (0..count)
        .map(|_| {
            let answer = drain(held(addr, raw.as_bytes()));
            let status = answer
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3)?.parse().ok())
                .unwrap_or(0);
            (status, answer.contains("/problems/too-many-connections"))
        })
        .collect()
}

/// Every string in `value`, recursively.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// GET `path` on `addr` from the local address `from`.
async fn get_from(from: &str, addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    try_get_from(from, addr, path, token)
        .await
        .expect("an HTTP response")
        .0
}

/// Like `get_from`, with the body; a closed connection is an `Err`.
async fn try_get_from(
    from: &str,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(builder.body(Full::new(Bytes::new())).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of one metric series in an OpenMetrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// A connection from 127.0.0.1 that sends `bytes` and is held open.
fn held(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = stream.write_all(bytes);
    stream
}

/// Everything the server sends on `stream` until it closes it.
fn drain(mut stream: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// T09: thousands of admin requests with 8 KiB paths and no token. On
/// main each wrote a full audit record with the whole path (tens of MB of
/// state.db); now the refusals are folded per peer and second (every one
/// still counted), the state database barely grows, no stored string is
/// longer than the cap, the flooding peer gets 429 and another peer
/// (127.0.0.2) still gets through. A refused answer closes its connection
/// (T01, T08), so a pipelined flood gets one answer per connection, and
/// the flood comes on a new connection per request.
#[test]
fn t09_an_admin_flood_is_folded_capped_and_rate_limited_per_peer() {
    let app = TestApp::new(APP, &["hello"]);
    let token = admin_token(&app);
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    let state = app.path().join(".bulkhead/dev");
    let before = state_bytes(&state);

    // Two at a time: with the one each may leave closing, within the
    // address's share of 4 connections.
    const FLOODS: usize = 2;
    const PER_FLOOD: usize = 1500;
    let path = format!("/{}", "A".repeat(8 * 1024));
    let started = Instant::now();
    let pipelined_answers = pipelined(admin, &path, 10);
    assert_eq!(pipelined_answers.len(), 1, "{pipelined_answers:?}");
    let floods: Vec<_> = (0..FLOODS)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || one_by_one(admin, &path, PER_FLOOD))
        })
        .collect();
    let answers: Vec<(u16, bool)> = floods.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let seconds = started.elapsed().as_secs() + 2;
    assert!(
        answers.iter().all(|(s, _)| *s == 401 || *s == 429),
        "every request answered: {answers:?}"
    );
    // Requests refused by the admin listener (not as connections over the
    // address's share, which are audited as `listener.refused`).
    let statuses: Vec<u16> = pipelined_answers
        .into_iter()
        .chain(answers.iter().filter(|(_, c)| !c).map(|(s, _)| *s))
        .collect();
    assert!(statuses.len() > FLOODS * PER_FLOOD * 9 / 10, "{answers:?}");
    let limited = statuses.iter().filter(|s| **s == 429).count();

    // Another peer is not shut out by the flood.
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(
        rt.block_on(get_from("127.0.0.2", admin, "/healthz", Some(&token))),
        200
    );
    assert_eq!(
        rt.block_on(get_from("127.0.0.2", admin, "/metrics", None)),
        401
    );
    assert!(server.stop().success());

    // Folded: a few records a second, and the counts add up.
    let records = app.audit_records("admin.refused");
    let grown = state_bytes(&state).saturating_sub(before);
    eprintln!(
        "admin flood: {} requests ({limited} rate-limited), {} audit records, state.db +{grown} bytes",
        statuses.len(),
        records.len()
    );
    let full = records
        .iter()
        .filter(|r| r["correlation_id"].is_string())
        .count();
    let folded: u64 = records
        .iter()
        .filter_map(|r| r["detail"]["repeated"].as_u64())
        .sum();
    assert_eq!(
        full as u64 + folded,
        statuses.len() as u64 + 1,
        "every refusal is counted (the flood and 127.0.0.2's)"
    );
    // At most a full record and a count per reason (missing token,
    // rate-limited) and peer each second.
    assert!(
        (records.len() as u64) <= 2 * 2 * seconds + 2,
        "{} records in {seconds} s",
        records.len()
    );
    assert!(records.len() < statuses.len() / 10);
    assert!(
        records
            .iter()
            .any(|r| r["detail"]["caller"] == "ip:127.0.0.2")
    );

    // The state database grew by kilobytes, not by the flood's megabytes.
    assert!(grown < 2 * 1024 * 1024, "state.db grew by {grown} bytes");

    // No stored string is longer than the cap (plus its marker).
    let db = rusqlite::Connection::open(state.join("state.db")).unwrap();
    let mut statement = db
        .prepare("SELECT kind, correlation_id, subject, function, detail FROM audit")
        .unwrap();
    let rows = statement
        .query_map([], |row| {
            let mut texts = Vec::new();
            for i in 0..4 {
                if let Some(text) = row.get::<_, Option<String>>(i)? {
                    texts.push(text);
                }
            }
            let detail: String = row.get(4)?;
            Ok((texts, detail))
        })
        .unwrap();
    let mut cut = 0;
    for row in rows {
        let (mut texts, detail) = row.unwrap();
        strings(&serde_json::from_str(&detail).unwrap(), &mut texts);
        for text in texts {
            assert!(text.len() <= CAP, "a {} byte string was stored", text.len());
            cut += usize::from(text.contains("…[cut, 8193 bytes]"));
        }
    }
    assert!(cut > 0, "the path is kept, cut, with a marker");
    assert!(
        limited > statuses.len() / 2,
        "the flooding peer is rate-limited: {limited}"
    );
}

/// In `dev` on loopback the admin listener starts open (no token yet);
/// `bulkhead admin token` against the running server closes it without a
/// restart, and the new token opens it.
#[tokio::test]
async fn a_token_created_in_dev_applies_to_the_running_server() {
    let app = TestApp::new(APP, &["hello"]);
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    assert_eq!(
        get(admin, "/metrics").await.status,
        200,
        "open in dev until a token exists"
    );

    let token = admin_token(&app);

    // Bounded: the listener re-reads the token store at most every
    // fraction of a second.
    let mut status = 200;
    for _ in 0..50 {
        status = get(admin, "/metrics").await.status;
        if status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    get(admin, "/metrics")
        .await
        .assert_problem(401, "admin-token-missing");
    assert_eq!(status, 401, "the new token is required without a restart");
    let mut right = request("GET", admin, "/metrics", Bytes::new());
    right
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(send(admin, right).await.status, 200);
    server.wait_for_log(
        |r| r["message"] == "an admin token exists: the admin listener now requires one",
        Duration::from_secs(10),
    );
}

/// Third outside attack (T08): a token created and revoked while no admin
/// request came used to go unseen (the store was read only on requests),
/// so the dev listener reopened. It watches the store by itself now.
#[tokio::test]
async fn a_token_created_and_revoked_between_requests_still_closes_dev() {
    let app = TestApp::new(APP, &["hello"]);
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    assert_eq!(get(admin, "/metrics").await.status, 200, "open in dev");
    assert!(app.run(&["admin", "token"]).status.success());
    // No admin request: the listener notices the token by itself.
    server.wait_for_log(
        |r| r["message"] == "an admin token exists: the admin listener now requires one",
        Duration::from_secs(10),
    );
    assert!(app.run(&["admin", "revoke-tokens"]).status.success());
    get(admin, "/metrics")
        .await
        .assert_problem(401, "admin-token-missing");
}

/// While the dev admin listener is open (no token yet), only loopback host
/// names reach it: a page on another name rebound to 127.0.0.1 (DNS
/// rebinding) sends that name as `Host` and is refused; the Host rules of
/// the public listener hold too (T10, T17).
#[tokio::test]
async fn the_open_dev_admin_listener_answers_loopback_names_only() {
    let app = TestApp::new(APP, &["hello"]);
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");
    let ask = |host: &str| {
        let head = if host.is_empty() {
            "GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n".to_string()
        } else {
            format!("GET /metrics HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
        };
        support::raw_exchange(admin, head.as_bytes(), Duration::from_secs(5))
    };
    for host in [
        "localhost".to_string(),
        format!("127.0.0.1:{}", admin.port()),
        format!("[::1]:{}", admin.port()),
    ] {
        let reply = ask(&host);
        assert!(reply.starts_with("HTTP/1.1 200"), "{host}: {reply}");
    }
    for host in [
        "rebound.example",
        "rebound.example:9901",
        "127.0.0.1.nip.io",
        "",
    ] {
        let reply = ask(host);
        assert!(reply.starts_with("HTTP/1.1 400"), "{host:?}: {reply}");
        assert!(reply.contains("invalid-host"), "{host:?}: {reply}");
        assert!(!reply.contains("rebound"), "never echoed: {reply}");
    }
}

/// T01, T08 (second attack on the release binary): one address held every
/// admin connection (16 in all, no share per address) by sending a refused
/// request on each and keeping it alive, and a peer with a valid token was
/// dropped without a word. Now a refused answer closes its connection, and
/// one address (IPv6 by /64) holds at most 4 of the 16, even while it
/// sends nothing (half a head, until the header deadline); the connections
/// over its share are answered 429 `too-many-connections`, logged, metered
/// and audited folded, and 127.0.0.2 with a token is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_one_address_cannot_hold_every_admin_connection() {
    let app = TestApp::new(APP, &["hello"]);
    let token = admin_token(&app);
    let server = Server::start(&app);
    let admin = server.admin.expect("admin listener");

    // The attack as reported: a refused request on each of 20 connections
    // (more than the 16 in all), and the start of the next one, held.
    let refused = "GET /metrics HTTP/1.1\r\nhost: admin\r\n\r\nGET /metrics HT";
    let attack: Vec<TcpStream> = (0..20).map(|_| held(admin, refused.as_bytes())).collect();
    let reply = try_get_from("127.0.0.2", admin, "/metrics", Some(&token)).await;
    assert_eq!(
        reply.as_ref().map(|r| r.0),
        Ok(200),
        "127.0.0.1 locked 127.0.0.2 out: {reply:?}"
    );
    // Each got one answer (its 401, or a 429 when over its share), and
    // then its connection was closed, not kept alive.
    for stream in attack {
        let answer = drain(stream);
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert!(
            answer.starts_with("HTTP/1.1 401 ") || answer.starts_with("HTTP/1.1 429 "),
            "{answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
    }

    // Connections that send nothing whole hold a place until the header
    // deadline: 127.0.0.1 gets 4 of them, and 127.0.0.2 is still served.
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| held(admin, b"GET /metrics HTTP/1.1\r\nhost: admin\r\n"))
        .collect();
    let probe = drain(held(admin, b""));
    let (status, metrics) = try_get_from("127.0.0.2", admin, "/metrics", Some(&token))
        .await
        .expect("127.0.0.2 is served while 127.0.0.1 holds its share");
    assert_eq!(status, 200);
    assert!(probe.starts_with("HTTP/1.1 429 "), "{probe:?}");
    assert!(
        probe.contains("https://bulkhead.dev/problems/too-many-connections"),
        "{probe:?}"
    );
    drop(slow);

    // Every refused connection is metered one by one (the accept loop
    // refuses them before it takes 127.0.0.2's connection)...
    let series = "bulkhead_refusals_total{reason=\"admin-address-connection-limit\"}";
    let refusals = metric(&metrics, series).unwrap_or(0.0) as usize;
    assert!(
        refusals > 16, // the slow 20 over the 4, and the probe
        "{refusals} refusals metered:\n{metrics}"
    );
    let logs = server.stop_with_logs();
    let logged = logs
        .iter()
        .filter(|r| {
            r["message"] == "connection refused"
                && r["reason"] == "admin-address-connection-limit"
                && r["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:"))
        })
        .count();

    // ... and audited folded per peer and second (T09).
    let records: Vec<Value> = app
        .audit_records("listener.refused")
        .into_iter()
        .filter(|r| r["detail"]["reason"] == "admin-address-connection-limit")
        .collect();
    let full = records
        .iter()
        .filter(|r| r["detail"]["peer"].is_string())
        .count();
    let folded: u64 = records
        .iter()
        .filter_map(|r| r["detail"]["repeated"].as_u64())
        .sum();
    assert_eq!(full as u64 + folded, refusals as u64, "{records:?}");
    assert!(full < refusals, "folded, not one record each: {records:?}");
    // Logged like audited: one line per peer and second (T09).
    assert_eq!(logged, full, "one log line per audited refusal");
}
