//! T09, T01 (issue 17): the access log is written off the request path.
//! A log sink that takes nothing (a pipe nobody reads) never holds a
//! request: lines past the writer's bounded queue are dropped, counted on
//! `/metrics` and reported in a summary line once the sink takes lines
//! again; a SIGTERM writes every queued line before the process exits; and
//! `BULKHEAD_LOG` still chooses which access lines are written.

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use support::{TestApp, get};

const APP: &str = r#"
[app]
name = "logged"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

/// A server whose log file is a FIFO the test reads only when it says so.
struct PipedServer {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    /// Tells the reader to read on, to the end.
    go: mpsc::Sender<()>,
    /// Every line read after `go`, then the reader's end.
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl PipedServer {
    /// Start `bulkhead serve` logging into a new FIFO; read it until the
    /// server listens, then stop reading: from then on the pipe fills and
    /// the server's log writer blocks in its write.
    fn start(app: &TestApp) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("log.fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
        assert!(made.success());
        let child = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .arg("serve")
            .arg(app.path())
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--log-file")
            .arg(&fifo)
            .env("BULKHEAD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bulkhead starts");
        let (go, wait) = mpsc::channel::<()>();
        let (send_line, lines) = mpsc::channel::<String>();
        let (send_addr, addrs) = mpsc::channel::<(String, String)>();
        std::thread::spawn(move || read_pausing(&fifo, &send_addr, &wait, &send_line));
        let (addr, admin) = addrs
            .recv_timeout(Duration::from_secs(180))
            .expect("the server logs `listening`");
        Self {
            child,
            addr: addr.parse().expect("listen address"),
            admin: admin.parse().expect("admin address"),
            go,
            lines,
            _dir: dir,
        }
    }

    /// SIGTERM, then read the log to its end (bounded); the exit status.
    fn stop_and_read(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        // Only now does anyone read the pipe again.
        let _ = self.go.send(());
        let mut records = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) {
            records.push(
                serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|e| panic!("log line is not one JSON object ({e}): {line:?}")),
            );
        }
        let status = self.child.wait().expect("the server exits");
        (status, records)
    }
}

impl Drop for PipedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reader: open the FIFO (blocks until the server opens it), read to
/// the `listening` line, wait for `go`, then pass on every line to the end.
fn read_pausing(
    fifo: &Path,
    addrs: &mpsc::Sender<(String, String)>,
    go: &mpsc::Receiver<()>,
    out: &mpsc::Sender<String>,
) {
    let Ok(file) = std::fs::File::open(fifo) else {
        return;
    };
    let mut reader = BufReader::new(file);
    let mut admin = String::new();
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if let Ok(record) = serde_json::from_str::<Value>(&line) {
            let address = record["address"].as_str().unwrap_or("").to_string();
            match record["message"].as_str() {
                Some("admin listening") => admin = address,
                Some("listening") => {
                    let _ = addrs.send((address, admin.clone()));
                    break;
                }
                _ => {}
            }
        }
        line.clear();
    }
    if go.recv().is_err() {
        return;
    }
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if out.send(line).is_err() {
            break;
        }
    }
}

/// `count` GETs of distinct paths over `connections` keep-alive
/// connections; every answer's status and correlation ID.
async fn flood(addr: SocketAddr, connections: usize, count: usize, path: impl Fn(usize) -> String) -> Vec<(u16, String)> {
    let per = count.div_ceil(connections);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let paths: Vec<String> = (c * per..((c + 1) * per).min(count)).map(&path).collect();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(connection);
            let mut answers = Vec::new();
            for path in paths {
                sender.ready().await.expect("the connection stays open");
                let request = http::Request::get(path)
                    .header("host", addr.to_string())
                    .body(Full::new(Bytes::new()))
                    .expect("a request");
                let response = sender.send_request(request).await.expect("an answer");
                let status = response.status().as_u16();
                let id = response
                    .headers()
                    .get("bulkhead-correlation-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                response.into_body().collect().await.expect("a body");
                answers.push((status, id));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.expect("the client task"));
    }
    answers
}

/// `bulkhead_log_dropped_total` from the admin listener.
async fn log_dropped(admin: SocketAddr) -> f64 {
    let text = get(admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("bulkhead_log_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no bulkhead_log_dropped_total in:\n{text}"))
}

/// A path that fills most of the record's 256-byte cap for client text.
fn long_path(i: usize) -> String {
    format!("/nowhere/{i:06}/{}", "a".repeat(220))
}

/// T09, T01: with a log sink that takes nothing, 12,000 requests (about
/// 6 MB of access lines, over the writer's 4 MiB queue and the pipe's own
/// buffer) are all answered; the lines the queue could not take are
/// counted on `/metrics` and, once the sink takes lines again, in one
/// summary line; every request is either in the log or in that count.
/// Before the writer, tracing's appender blocked every request on the full
/// pipe (lossy = false): this test hung at its timeout.
#[tokio::test]
async fn a_sink_that_takes_nothing_never_holds_a_request_t09() {
    let app = TestApp::new(APP, &["hello"]);
    let server = PipedServer::start(&app);
    const COUNT: usize = 12_000;
    let answers = tokio::time::timeout(
        Duration::from_secs(300),
        flood(server.addr, 4, COUNT, long_path),
    )
    .await
    .expect("every request is answered while the log sink takes nothing");
    assert_eq!(answers.len(), COUNT);
    assert!(answers.iter().all(|(status, _)| *status == 404));
    let counted = log_dropped(server.admin).await;
    assert!(counted > 0.0, "the queue overflowed and counted it");
    // The server still serves a function while its log is stuck.
    let hello = get(server.addr, "/hello").await;
    assert_eq!(hello.status, 200);

    let (status, records) = server.stop_and_read();
    assert!(status.success(), "{status}");
    let logged = records
        .iter()
        .filter(|r| {
            r["target"] == "bulkhead::access"
                && r["message"] == "request refused"
                && r["path"].as_str().is_some_and(|p| p.starts_with("/nowhere/"))
        })
        .count();
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"] == "bulkhead::log")
        .collect();
    assert!(!summaries.is_empty(), "a summary line reports the loss");
    let dropped_access: u64 = summaries
        .iter()
        .map(|r| r["access_lines"].as_u64().expect("a count"))
        .sum();
    let dropped: u64 = summaries
        .iter()
        .map(|r| r["dropped"].as_u64().expect("a count"))
        .sum();
    assert!(summaries.iter().all(|r| r["level"] == "WARN"));
    assert!(dropped as f64 >= counted, "{dropped} < {counted}");
    assert_eq!(
        logged as u64 + dropped_access,
        COUNT as u64,
        "every request is logged or counted ({logged} logged, {dropped_access} dropped)"
    );
    assert!(logged > 1000, "what the queue held was written: {logged}");
}

/// T09: lines still queued when SIGTERM comes are written before the
/// process exits: 600 requests (about 300 KB of access lines, more than
/// the pipe holds) answered while nobody reads the log, then SIGTERM: every
/// answered request's line is in the log, none dropped.
#[tokio::test]
async fn sigterm_writes_every_queued_line_t09() {
    let app = TestApp::new(APP, &["hello"]);
    let server = PipedServer::start(&app);
    let mut answers = flood(server.addr, 2, 500, long_path).await;
    answers.extend(flood(server.addr, 2, 100, |_| "/hello".to_string()).await);
    assert_eq!(answers.iter().filter(|(s, _)| *s == 404).count(), 500);
    assert_eq!(answers.iter().filter(|(s, _)| *s == 200).count(), 100);
    let (status, records) = server.stop_and_read();
    assert!(status.success(), "{status}");
    let access: std::collections::HashMap<&str, &Value> = records
        .iter()
        .filter(|r| r["target"] == "bulkhead::access")
        .filter_map(|r| Some((r["correlation_id"].as_str()?, r)))
        .collect();
    for (status, id) in &answers {
        let record = access
            .get(id.as_str())
            .unwrap_or_else(|| panic!("no access line for {id} after SIGTERM"));
        assert_eq!(record["status"], *status);
        for field in ["timestamp", "level", "message", "method", "path", "function", "subject", "duration_ms"] {
            assert!(record.get(field).is_some(), "{field} missing: {record}");
        }
    }
    assert!(!records.iter().any(|r| r["target"] == "bulkhead::log"), "nothing dropped");
}

/// `BULKHEAD_LOG=warn,bulkhead::listener=info` hides the answered
/// request's INFO line and keeps the refusal's WARN line, every field in it
/// (T09); the listener's INFO line says where it listens.
#[tokio::test]
async fn bulkhead_log_still_filters_access_lines() {
    let app = TestApp::new(APP, &["hello"]);
    let log = app.path().join("warn.log");
    let mut child = serve_logging_to(&app, &log, "warn,bulkhead::listener=info");
    let addr = wait_for_listening(&log);
    let hello = get(addr, "/hello").await;
    assert_eq!(hello.status, 200);
    let missing = get(addr, "/missing").await;
    assert_eq!(missing.status, 404);
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(child.wait().expect("exits").success());
    let records = read_log(&log);
    let access: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"] == "bulkhead::access")
        .collect();
    assert_eq!(access.len(), 1, "{access:?}");
    let refused = access[0];
    assert_eq!(refused["correlation_id"], missing.correlation_id().as_str());
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["message"], "request refused");
    assert_eq!(refused["status"], 404);
    assert_eq!(refused["reason"], "not-found");
    assert_eq!(refused["method"], "GET");
    assert_eq!(refused["path"], "/missing");
    assert_eq!(refused["peer"], "127.0.0.1");
    for field in ["timestamp", "function", "subject", "duration_ms", "detail"] {
        assert!(refused.get(field).is_some(), "{field} missing: {refused}");
    }
    assert!(
        !records
            .iter()
            .any(|r| r["level"] == "INFO" && r["target"] != "bulkhead::listener"),
        "warn hides INFO lines"
    );
}

fn serve_logging_to(app: &TestApp, log: &Path, level: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("serve")
        .arg(app.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .arg("--log-file")
        .arg(log)
        .env("BULKHEAD_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bulkhead starts")
}

fn read_log(log: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// The listen address, from the log's `listening` line (polled, bounded).
fn wait_for_listening(log: &PathBuf) -> SocketAddr {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(addr) = read_log(log)
            .iter()
            .find(|r| r["message"] == "listening")
            .and_then(|r| r["address"].as_str()?.parse().ok())
        {
            return addr;
        }
        assert!(std::time::Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}
