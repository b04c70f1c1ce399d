//! Shared test support: real guests built from source, a real `bulkhead`
//! process on a loopback port, real HTTP. Nothing here stands in for the
//! thing under test.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

pub mod prod;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the test guests (once per test binary) and return their directory.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let guests = repo_root().join("guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(guests.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(guests.join("target"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building the test guests failed; is the target installed? `rustup target add wasm32-wasip2`"
        );
        guests.join("target/wasm32-wasip2/release")
    })
}

pub fn guest(name: &str) -> PathBuf {
    guests_dir().join(format!("{name}.wasm"))
}

/// An app directory: a temporary one, or one of the repository's examples.
pub struct TestApp {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TestApp {
    /// Write `manifest` and copy the named guests (as `NAME.wasm`).
    pub fn new(manifest: &str, guests: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in guests {
            std::fs::copy(guest(name), dir.path().join(format!("{name}.wasm")))
                .expect("copy guest");
        }
        std::fs::write(dir.path().join("bulkhead.toml"), manifest).expect("write manifest");
        Self {
            path: dir.path().to_path_buf(),
            _temp: Some(dir),
        }
    }

    /// An app directory that already exists (it is not deleted afterwards).
    pub fn existing(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            _temp: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `bulkhead ARGS... APP_DIR` to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_with(args, &[])
    }

    /// Run `bulkhead ARGS... APP_DIR OPTIONS...` to completion.
    pub fn run_with(&self, args: &[&str], options: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(args)
            .arg(self.path())
            .args(options)
            .env("BULKHEAD_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("bulkhead runs")
    }

    /// The audit records of `kind` (`bulkhead audit query --kind KIND`).
    pub fn audit_records(&self, kind: &str) -> Vec<Value> {
        self.audit_records_in("dev", kind)
    }

    /// The audit records of `kind` in environment `env`.
    pub fn audit_records_in(&self, env: &str, kind: &str) -> Vec<Value> {
        let out = self.run_with(
            &["audit", "query"],
            &["--env", env, "--kind", kind, "--format", "json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
            .collect()
    }
}

/// `bulkhead secrets set APP_DIR NAME` with `value` on stdin, as a user
/// sets a secret (never on the command line); asserts it succeeded.
/// A stand-in for a third-party HTTP API on a loopback port (there is no
/// internet here): every request is answered by `answer`.
pub async fn stand_in<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stand-in");
    let address = listener.local_addr().expect("stand-in address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let service = hyper::service::service_fn(move |request| {
                let answer = answer.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(request).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    address
}

/// Check `app` (compiling its components into its dev compile cache) and
/// keep a copy of that cache: the example tests compile their Python and
/// JavaScript components once per file (a debug build takes minutes).
pub fn fill_compile_cache(app: &TestApp) -> (tempfile::TempDir, PathBuf) {
    let out = app.run(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("compile-cache");
    std::fs::create_dir(&cache).expect("mkdir");
    for entry in std::fs::read_dir(app.path().join(".bulkhead/dev/compile-cache")).expect("cache") {
        let entry = entry.expect("an entry");
        std::fs::copy(entry.path(), cache.join(entry.file_name())).expect("copy");
    }
    (dir, cache)
}

/// Copy a cache [`fill_compile_cache`] kept into `app`'s dev state; each
/// entry is still checked against its component and the engine's settings
/// when loaded.
pub fn seed_compile_cache(app: &TestApp, cache: &Path) {
    let to = app.path().join(".bulkhead/dev/compile-cache");
    std::fs::create_dir_all(&to).expect("mkdir the cache");
    for dir in [
        app.path().join(".bulkhead"),
        app.path().join(".bulkhead/dev"),
        to.clone(),
    ] {
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod");
    }
    for entry in std::fs::read_dir(cache).expect("the cache") {
        let entry = entry.expect("an entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy an entry");
    }
}

pub fn set_secret(app: &TestApp, name: &str, value: &str) {
    let mut set = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["secrets", "set"])
        .arg(app.path())
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bulkhead runs");
    set.stdin
        .take()
        .expect("stdin is piped")
        .write_all(format!("{value}\n").as_bytes())
        .expect("write the secret");
    let out = set.wait_with_output().expect("secrets set ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `bulkhead serve`, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when it runs.
    pub admin: Option<SocketAddr>,
    logs: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// Set when the server's stderr closed (it exited).
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    pub fn start(app: &TestApp) -> Self {
        Self::start_with(app, &[])
    }

    /// Start with extra arguments; the admin listener gets a free loopback
    /// port unless `extra` says otherwise.
    pub fn start_with(app: &TestApp, extra: &[&str]) -> Self {
        Self::start_with_env(app, extra, &[])
    }

    /// [`Server::start_with`], with extra environment variables (such as
    /// `BULKHEAD_MASTER_KEY_FILE`).
    pub fn start_with_env(app: &TestApp, extra: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        command.envs(envs.iter().copied());
        command.arg("serve").arg(app.path());
        // A fixed port when the test needs to know it before the start
        // (a redirect URL registered with an identity provider, issue 15).
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--admin-listen") {
            command.args(["--admin-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(extra)
            .env("BULKHEAD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bulkhead starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = logs.clone();
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let eof = closed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lines, ready) = &*sink;
                lines.lock().unwrap().push(line);
                ready.notify_all();
            }
            eof.store(true, std::sync::atomic::Ordering::SeqCst);
            sink.1.notify_all();
        });
        let mut server = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            admin: None,
            logs,
            closed,
        };
        let listening =
            server.wait_for_log(|r| r["message"] == "listening", Duration::from_secs(180));
        let addr = listening["address"].as_str().expect("address field");
        server.addr = addr.parse().expect("socket address");
        server.admin = server
            .logs()
            .iter()
            .find(|r| r["message"] == "admin listening")
            .and_then(|r| r["address"].as_str()?.parse().ok());
        server
    }

    /// Every log line so far, each of which must be one JSON object (T07).
    pub fn logs(&self) -> Vec<Value> {
        let lines = self.logs.0.lock().unwrap().clone();
        lines
            .iter()
            .map(|line| {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("log line is not one JSON object ({e}): {line:?}"))
            })
            .collect()
    }

    /// Wait (bounded) for a log record matching `pred` and return it. Logs
    /// reach the pipe before the response does, but our reader thread may
    /// lag; this only synchronises, it asserts nothing about time.
    pub fn wait_for_log(&self, pred: impl Fn(&Value) -> bool, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        let (lines, ready) = &*self.logs;
        let mut guard = lines.lock().unwrap();
        loop {
            for line in guard.iter() {
                if let Ok(record) = serde_json::from_str::<Value>(line)
                    && pred(&record)
                {
                    return record;
                }
            }
            let now = Instant::now();
            let exited = self.closed.load(std::sync::atomic::Ordering::SeqCst);
            if now >= deadline || exited {
                let why = if exited {
                    "the server exited"
                } else {
                    "timed out"
                };
                panic!(
                    "no matching log record ({why}); logs were:\n{}",
                    guard.join("\n")
                );
            }
            guard = ready.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Wait (bounded) until `count` log records match `pred`; return them.
    pub fn wait_for_count(&self, pred: impl Fn(&Value) -> bool, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let matching: Vec<Value> = self.logs().into_iter().filter(|r| pred(r)).collect();
            if matching.len() >= count || Instant::now() >= deadline {
                return matching;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The access-log record of the request with this correlation ID.
    pub fn access_record(&self, correlation_id: &str) -> Value {
        self.wait_for_log(
            |r| r["target"] == "bulkhead::access" && r["correlation_id"] == correlation_id,
            Duration::from_secs(10),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The server's process ID (to read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ask the server to stop (SIGTERM) and wait for it to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("server exits")
    }

    /// Stop the server (SIGTERM), wait for it, and read its whole log:
    /// what it wrote while shutting down included. Asserts a clean exit.
    pub fn stop_with_logs(mut self) -> Vec<Value> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("server exits");
        assert!(status.success(), "{status}");
        self.logs()
    }
}

impl Server {
    /// Kill the server at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, fully read.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The request headers the echo guest reports it was handed.
    pub fn echoed_headers(&self) -> Vec<(String, String)> {
        echoed_headers(&self.json())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn correlation_id(&self) -> String {
        self.header("bulkhead-correlation-id")
            .expect("every response carries a correlation ID")
            .to_string()
    }

    /// Assert an RFC 9457 problem response of `status` and type slug `slug`,
    /// carrying the correlation ID; returns the problem body.
    pub fn assert_problem(&self, status: u16, slug: &str) -> Value {
        assert_problem_in(
            Some(self.status),
            self.header("content-type"),
            self.header("bulkhead-correlation-id"),
            &self.body,
            status,
            slug,
        )
    }
}

/// The RFC 9457 checks of `Reply::assert_problem` and
/// `RawAnswer::assert_problem`: one definition of a well-formed refusal.
fn assert_problem_in(
    seen: Option<u16>,
    content_type: Option<&str>,
    correlation_id: Option<&str>,
    body: &[u8],
    status: u16,
    slug: &str,
) -> Value {
    let text = String::from_utf8_lossy(body);
    assert_eq!(seen, Some(status), "status; body: {text}");
    assert_eq!(content_type, Some("application/problem+json"));
    let problem: Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"));
    assert_eq!(
        problem["type"],
        format!("https://bulkhead.dev/problems/{slug}")
    );
    assert_eq!(problem["status"], status);
    assert!(problem["title"].is_string() && problem["detail"].is_string());
    let correlation_id = correlation_id.expect("every response carries a correlation ID");
    assert_eq!(problem["correlation_id"], correlation_id);
    problem
}

/// The `headers` pairs of an echo guest's reply body.
pub fn echoed_headers(body: &Value) -> Vec<(String, String)> {
    body["headers"]
        .as_array()
        .expect("the echo guest lists headers")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().to_string(),
                p[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Send one request over a fresh HTTP/1.1 connection (hyper's client).
pub async fn send(addr: SocketAddr, request: http::Request<Full<Bytes>>) -> Reply {
    try_send(addr, request).await.expect("an HTTP response")
}

/// Like `send`, but a closed connection is an `Err`, not a panic.
pub async fn try_send(
    addr: SocketAddr,
    request: http::Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body.into()))
        .expect("valid request")
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, request("GET", addr, path, Bytes::new())).await
}

/// GET `path` over a connection from the local address `from` (another
/// loopback address, such as 127.0.0.2: another caller).
pub async fn get_from(addr: SocketAddr, path: &str, from: &str) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("an address");
    socket.bind(local).expect("bind the client address");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    let response = sender
        .send_request(request("GET", addr, path, Bytes::new()))
        .await
        .expect("a response");
    let (parts, body) = response.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .expect("a body")
        .to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Write raw bytes and read until the server closes or `limit` passes.
/// For requests no well-behaved client would send.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    String::from_utf8_lossy(&raw_bytes(addr, bytes, limit)).into_owned()
}

/// `raw_exchange`, the bytes as they came.
pub fn raw_bytes(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(limit)).expect("timeout");
    // The server may refuse and close before it has read everything: fine.
    let _ = stream.write_all(bytes);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Write raw bytes, read until the server closes (10 s at most) and parse
/// the first answer.
pub fn raw_answer(addr: SocketAddr, bytes: &[u8]) -> RawAnswer {
    RawAnswer::parse(&raw_bytes(addr, bytes, Duration::from_secs(10)))
}

/// A response as read off a raw socket, for tests that must see the wire
/// itself: hostile framing (T10), a stream cut mid-body (T05), answers
/// pipelined on one keep-alive connection. Lenient on purpose: it parses
/// whatever came, and says how much of the answer that was.
pub struct RawAnswer {
    /// `None` when no status line came (the connection closed first).
    pub status: Option<u16>,
    /// In the order sent; names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// De-chunked when chunked; only what came when cut short.
    pub body: Vec<u8>,
    /// The whole answer came: the head's end, and a chunked body's last
    /// (zero) chunk or all of a `content-length` body. A body without
    /// either framing runs to the end of what was read.
    pub complete: bool,
    /// What came after this answer: the next one on a keep-alive
    /// connection, or anything sent past the framing.
    pub rest: Vec<u8>,
}

impl RawAnswer {
    /// Parse the first answer in `raw` (everything read so far).
    pub fn parse(raw: &[u8]) -> Self {
        let (head, after) = match find(raw, b"\r\n\r\n") {
            Some(end) => (&raw[..end], Some(&raw[end + 4..])),
            None => (raw, None),
        };
        let head = String::from_utf8_lossy(head);
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok());
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut answer = Self {
            status,
            headers,
            body: Vec::new(),
            complete: false,
            rest: Vec::new(),
        };
        let Some(after) = after else {
            return answer;
        };
        let chunked = answer.header("transfer-encoding").is_some_and(|v| {
            v.rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        let length = answer
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        // RFC 9112 §6.3: 1xx, 204 and 304 answers have no body.
        if status.is_some_and(|s| s < 200 || s == 204 || s == 304) {
            answer.complete = true;
            answer.rest = after.to_vec();
        } else if chunked {
            (answer.body, answer.complete, answer.rest) = dechunk(after);
        } else if let Some(length) = length {
            let came = length.min(after.len());
            answer.body = after[..came].to_vec();
            answer.complete = came == length;
            answer.rest = after[came..].to_vec();
        } else {
            answer.body = after.to_vec();
            answer.complete = true;
        }
        answer
    }

    /// Every answer in `raw`, in order (those pipelined on one connection).
    pub fn parse_all(raw: &[u8]) -> Vec<Self> {
        let mut answers = Vec::new();
        let mut raw = raw.to_vec();
        while find(&raw, b"\r\n\r\n").is_some() {
            let answer = Self::parse(&raw);
            raw = answer.rest.clone();
            answers.push(answer);
        }
        answers
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn correlation_id(&self) -> String {
        self.header("bulkhead-correlation-id")
            .expect("every response carries a correlation ID")
            .to_string()
    }

    /// Whether `word` appears, in any case, in the body or anything after
    /// it on the connection: the answer echoes the input (T10).
    pub fn echoes(&self, word: &str) -> bool {
        let word = word.to_ascii_lowercase();
        [&self.body, &self.rest].iter().any(|bytes| {
            String::from_utf8_lossy(bytes)
                .to_ascii_lowercase()
                .contains(&word)
        })
    }

    /// As `Reply::assert_problem`: an RFC 9457 problem of `status` and
    /// `slug` with the correlation ID; returns the problem body.
    pub fn assert_problem(&self, status: u16, slug: &str) -> Value {
        assert_problem_in(
            self.status,
            self.header("content-type"),
            self.header("bulkhead-correlation-id"),
            &self.body,
            status,
            slug,
        )
    }
}

/// A chunked body: (data, whether its last chunk came, what followed).
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool, Vec<u8>) {
    let mut body = Vec::new();
    loop {
        let Some(line) = find(raw, b"\r\n") else {
            return (body, false, Vec::new());
        };
        let size = String::from_utf8_lossy(&raw[..line]);
        let size = size.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return (body, false, Vec::new());
        };
        let data = &raw[line + 2..];
        if size == 0 {
            // The trailer section ends with an empty line.
            let rest = if data.starts_with(b"\r\n") {
                &data[2..]
            } else {
                find(data, b"\r\n\r\n").map_or(&[][..], |end| &data[end + 4..])
            };
            return (body, true, rest.to_vec());
        }
        if data.len() < size.saturating_add(2) {
            body.extend_from_slice(&data[..data.len().min(size)]);
            return (body, false, Vec::new());
        }
        body.extend_from_slice(&data[..size]);
        raw = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The correlation IDs of the calls that reached `guest`: each test guest
/// logs `GUEST called` once per call.
/// Assert that the server answered no request with a 5xx (its access log).
pub fn assert_no_5xx(server: &Server) {
    assert!(
        !server
            .logs()
            .iter()
            .any(|r| r["status"].as_u64().is_some_and(|s| s >= 500)),
        "no 5xx"
    );
}

pub fn guest_calls(server: &Server, guest: &str) -> BTreeSet<String> {
    let line = format!("{guest} called");
    server
        .logs()
        .iter()
        .filter(|r| r["target"] == "bulkhead::guest" && r["line"] == line.as_str())
        .filter_map(|r| r["correlation_id"].as_str().map(String::from))
        .collect()
}

/// Two SQL stores and three functions of the `sqlguest` component over
/// `events` (a read-write grant at `/w/{op}`, a read grant at `/r/{op}`,
/// one declared statement at `/d/{op}`): `tests/sql.rs` on the embedded
/// backend, `tests/cluster_postgres.rs` on PostgreSQL (issue 16).
pub const SQL_LEDGER: &str = r#"
[store.events]
kind = "sql"
migrations = "migrations/events"

[store.other]
kind = "sql"
migrations = "migrations/other"

[[function]]
name = "writer"
component = "sqlguest.wasm"
route = "/w/{op}"
auth = "public"
input.query.body = '[a-z0-9-]{1,64}'
input.query.id = '[0-9]{1,6}'
input.query.store = '[a-z]{1,16}'
grants = { sql = { events = "read-write" } }

[[function]]
name = "reader"
component = "sqlguest.wasm"
route = "/r/{op}"
auth = "public"
input.query.body = '[a-z0-9-]{1,64}'
input.query.id = '[0-9]{1,6}'
grants = { sql = { events = "read" } }

[[function]]
name = "declared"
component = "sqlguest.wasm"
route = "/d/{op}"
auth = "public"
input.query.id = '[0-9]{1,6}'
input.query.body = '[a-z0-9-]{1,64}'
grants = { sql = { events = { access = "read-write", statements = ["SELECT body FROM events WHERE id = ?1"] } } }
"#;
