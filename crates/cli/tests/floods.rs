//! Floods and the bill (T01, T02, T03, T04), against the real binary over
//! loopback: per-caller rate limits with exact refusal counts, forwarding
//! headers believed only from trusted proxies, fair admission under a
//! flood, the dynamic throttle starting and stopping, and budgets that
//! hold across a restart and a crash.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use support::{Reply, Server, TestApp, get, get_from, request, send};

/// GET `path` as client `ip` (sent in `X-Forwarded-For`).
async fn get_as(addr: SocketAddr, path: &str, ip: &str) -> Reply {
    let mut req = request("GET", addr, path, Bytes::new());
    req.headers_mut()
        .insert("x-forwarded-for", ip.parse().expect("header value"));
    send(addr, req).await
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds")
}

/// The value of one sample line of the OpenMetrics text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// T02/T03: a burst of 5, then one every 3 s: of 8 quick calls exactly 3
/// are refused with `rate-limited` and a Retry-After; after waiting that
/// long exactly one more call passes. The refusals are counted in the
/// metrics by reason.
#[tokio::test]
async fn a_burst_then_the_steady_rate_with_exact_refusals_t02() {
    let app = TestApp::new(
        r#"
[app]
name = "rates"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
rate_limit = { per_caller = "20/m", burst = 5 }
"#,
        &["hello"],
    );
    let server = Server::start(&app);
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let reply = get(server.addr, "/hello").await;
        statuses.push(reply.status);
        if reply.status == 429 {
            reply.assert_problem(429, "rate-limited");
            let wait = retry_after(&reply);
            assert!((1..=3).contains(&wait), "Retry-After {wait}");
            last = Some(wait);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);

    // One cell comes back every 3 s: after Retry-After, one call passes.
    tokio::time::sleep(Duration::from_millis(last.unwrap() * 1000 + 200)).await;
    assert_eq!(get(server.addr, "/hello").await.status, 200);
    get(server.addr, "/hello")
        .await
        .assert_problem(429, "rate-limited");

    let admin = server.admin.expect("admin listener");
    let metrics = get(admin, "/metrics").await.text();
    assert_eq!(
        metric(&metrics, "bulkhead_refusals_total{reason=\"rate-limited\"}"),
        Some(4.0)
    );
    // Each refusal is on the audit trail too (T09): the first of each
    // second in full, the repeats of that second counted in one record.
    let stopped = server.stop();
    assert!(stopped.success());
    let records: Vec<Value> = app
        .audit_records("request.throttled")
        .into_iter()
        .filter(|r| r["detail"]["reason"] == "rate-limited")
        .collect();
    let full = records
        .iter()
        .filter(|r| r["correlation_id"].is_string())
        .count();
    let repeated: u64 = records
        .iter()
        .filter_map(|r| r["detail"]["repeated"].as_u64())
        .sum();
    assert!(full >= 2, "the refusals 3 s apart are recorded in full");
    assert_eq!(full as u64 + repeated, 4, "{records:?}");
    for summary in records.iter().filter(|r| r["detail"]["repeated"].is_u64()) {
        assert_eq!(summary["detail"]["caller"], "ip:127.0.0.1");
        assert!(summary["detail"]["last_correlation_id"].is_string());
    }
}

/// T09 under T01: a flood of refusals cannot flood the audit trail. Each
/// caller's repeats are folded into one record per second that counts
/// them, so the trail accounts for every refusal with a handful of
/// records, and every refused request still has its own access-log line.
#[tokio::test]
async fn a_flood_of_refusals_is_counted_on_the_audit_trail_not_copied_t09() {
    let app = TestApp::new(
        r#"
[app]
name = "folds"

[limits]
rate_limit = { per_caller = "1/h", burst = 1 }
trusted_proxies = ["127.0.0.1", "::1"]

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#,
        &["hello"],
    );
    let server = Server::start(&app);
    let unix_second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    };
    let first_second = unix_second();
    let floods = [("198.51.100.7", 120_u64), ("198.51.100.8", 40)];
    let mut refused_ids = Vec::new();
    for (ip, calls) in floods {
        assert_eq!(get_as(server.addr, "/hello", ip).await.status, 200);
        for _ in 0..calls {
            let reply = get_as(server.addr, "/hello", ip).await;
            reply.assert_problem(429, "rate-limited");
            refused_ids.push(reply.correlation_id());
        }
    }
    let seconds = unix_second() - first_second + 1;
    let logs = server.wait_for_count(|r| r["reason"] == "rate-limited", refused_ids.len());
    for id in &refused_ids {
        assert!(logs.iter().any(|r| r["correlation_id"] == id.as_str()));
    }
    // The counts are written once their second is over, while the server
    // runs, not only when it stops.
    let waited = Instant::now();
    while !app
        .audit_records("request.throttled")
        .iter()
        .any(|r| r["detail"]["repeated"].is_u64())
    {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "no folded count written while serving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.stop().success());

    let records = app.audit_records("request.throttled");
    for (ip, calls) in floods {
        let caller = format!("ip:{ip}");
        let summaries: Vec<&Value> = records
            .iter()
            .filter(|r| r["detail"]["caller"] == caller.as_str())
            .collect();
        let folded: u64 = summaries
            .iter()
            .map(|r| r["detail"]["repeated"].as_u64().expect("a count"))
            .sum();
        assert!(!summaries.is_empty(), "{caller}: {records:?}");
        assert!(
            summaries.len() as u64 <= seconds,
            "{caller}: one summary a second"
        );
        // The first refusal of each second is recorded in full.
        assert!(folded < calls, "{caller}: the first refusal is in full");
    }
    // Every refusal is accounted for: records in full plus those counted.
    let full = records
        .iter()
        .filter(|r| r["correlation_id"].is_string() && r["detail"]["reason"] == "rate-limited")
        .count() as u64;
    let folded: u64 = records
        .iter()
        .filter_map(|r| r["detail"]["repeated"].as_u64())
        .sum();
    assert_eq!(full + folded, refused_ids.len() as u64);
    assert!(full <= 2 * seconds, "{full} full records in {seconds} s");
}

/// T02: a client cannot escape its limit by inventing `X-Forwarded-For`
/// addresses; behind a trusted proxy, the header does name the caller.
#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies_t02() {
    let manifest = |proxies: &str| {
        format!(
            r#"
[app]
name = "proxies"

[limits]
rate_limit = {{ per_caller = "1/h", burst = 2 }}
{proxies}

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#
        )
    };
    // No trusted proxy: three invented addresses are one caller.
    let app = TestApp::new(&manifest(""), &["hello"]);
    let server = Server::start(&app);
    let mut statuses = Vec::new();
    for ip in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        statuses.push(get_as(server.addr, "/hello", ip).await.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    drop(server);

    // Loopback is a trusted proxy: each forwarded address is its own caller.
    let app = TestApp::new(
        &manifest(r#"trusted_proxies = ["127.0.0.1", "::1"]"#),
        &["hello"],
    );
    let server = Server::start(&app);
    for ip in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        assert_eq!(get_as(server.addr, "/hello", ip).await.status, 200);
    }
    assert_eq!(
        get_as(server.addr, "/hello", "198.51.100.1").await.status,
        200
    );
    get_as(server.addr, "/hello", "198.51.100.1")
        .await
        .assert_problem(429, "rate-limited");
}

/// T02: one caller floods a slow function at many times its capacity
/// while four others call it one request at a time, with the dynamic
/// throttle on (its defaults). The flood is refused in part; the
/// well-behaved callers succeed at least 99 % of the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooder_cannot_lock_out_well_behaved_callers_t02() {
    let app = TestApp::new(
        r#"
[app]
name = "fairness"

[limits]
rate_limit = { per_caller = "off" }
trusted_proxies = ["127.0.0.1"]

[[function]]
name = "slow"
component = "hostile.wasm"
route = "/slow/{what}"
auth = "public"
input.query.ms = "[0-9]{1,4}"
max_concurrent_requests = 2
max_outstanding_requests = 8
"#,
        &["hostile"],
    );
    let server = Server::start(&app);
    let addr = server.addr;
    let done = Arc::new(AtomicBool::new(false));
    let flood_ok = Arc::new(AtomicU32::new(0));
    let flood_refused = Arc::new(AtomicU32::new(0));
    // 24 connections from one caller, each calling back to back: capacity
    // is 2 calls per 50 ms, the flood asks for 12 times that at all times.
    let flooders: Vec<_> = (0..24)
        .map(|_| {
            let (done, ok, refused) = (done.clone(), flood_ok.clone(), flood_refused.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                    let reply = get_as(addr, "/slow/sleep?ms=50", "203.0.113.66").await;
                    match reply.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("flood got {other}"),
                    };
                }
            })
        })
        .collect();
    // Let the flood fill the queue first.
    while flood_refused.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let callers: Vec<_> = (1..=4)
        .map(|n| {
            tokio::spawn(async move {
                let ip = format!("198.51.100.{n}");
                let mut ok = 0;
                for _ in 0..25 {
                    let reply = get_as(addr, "/slow/sleep?ms=50", &ip).await;
                    if reply.status == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut succeeded = 0;
    for caller in callers {
        succeeded += caller.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.unwrap();
    }
    assert!(
        succeeded >= 99,
        "well-behaved callers succeeded {succeeded} of 100 times"
    );
    assert!(flood_refused.load(Ordering::Relaxed) > 0);
    assert!(flood_ok.load(Ordering::Relaxed) > 0);
}

/// Open a raw connection from the local address `from` and send the head
/// of a POST whose body never comes. A connection the server refuses (too
/// many from that address) is kept as it is: it holds nothing.
async fn post_head_without_body(
    addr: SocketAddr,
    path: &str,
    length: usize,
    from: &str,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("an address");
    socket.bind(local).expect("bind the client address");
    let mut stream = socket.connect(addr).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    stream
}

const HOLDERS_APP: &str = r#"
[app]
name = "holders"

[[function]]
name = "echo"
component = "echo.wasm"
route = "/echo"
auth = "public"
methods = ["POST"]

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#;

/// T01/T02 (issue 11, item 3): 215 POSTs that declare a 100-byte body and
/// never send it, paced within the default rate limit (100/s, burst 200),
/// from 127.0.0.1 and three more loopback addresses (54 each, within a
/// per-address connection cap of 64). Before the fix the bodies held 215 of
/// the 256 outstanding places, the throttle's in-flight signal passed 80 %
/// and every other caller was shed with `overloaded` for as long as the
/// connections stayed open. Now requests still reading their bodies do not
/// count for the throttle: with the dynamic throttle on (its defaults), a
/// fifth address, 127.0.0.2, keeps getting 200s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_bodies_cannot_lock_out_other_callers_t01_t02() {
    let app = TestApp::new(HOLDERS_APP, &["echo", "hello"]);
    let server = Server::start(&app);
    let addr = server.addr;
    assert_eq!(get_from(addr, "/hello", "127.0.0.2").await.status, 200);
    let mut held = Vec::new();
    for n in 0..215 {
        let from = ["127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.5"][n % 4];
        held.push(post_head_without_body(addr, "/echo", 100, from).await);
        // Paced: about 200 a second, within burst plus refill.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the throttle sample the load twice (it samples every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get_from(addr, "/hello", "127.0.0.2").await.status);
    }
    let admin = server.admin.expect("admin listener");
    let metrics = get(admin, "/metrics").await.text();
    drop(held);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the second address was refused: {statuses:?}"
    );
    assert_eq!(metric(&metrics, "bulkhead_throttle_shedding"), Some(0.0));
}

/// T02: a caller cannot hold more than its share of the outstanding
/// places. With 8 places (2 per caller), of 5 requests one address holds
/// open, 3 are refused at once with `too-many-requests`, the other 2 wait
/// for their bodies and then succeed, and another address is served
/// meanwhile.
#[tokio::test]
async fn a_caller_holds_no_more_than_its_share_of_places_t02() {
    use std::io::{Read as _, Write as _};
    let app = TestApp::new(
        &HOLDERS_APP.replace(
            "[[function]]\nname = \"echo\"",
            "[limits]\nmax_concurrent_requests = 4\nmax_outstanding_requests = 8\n\n[[function]]\nname = \"echo\"",
        ),
        &["echo", "hello"],
    );
    let server = Server::start(&app);
    let addr = server.addr;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let stream = post_head_without_body(addr, "/echo", 2, "127.0.0.1")
            .await
            .into_std()
            .expect("a std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a read timeout");
        streams.push((stream, Vec::new()));
    }
    // Collect the answers that come without a body (bounded wait).
    let started = Instant::now();
    let answered = |streams: &[(std::net::TcpStream, Vec<u8>)]| {
        streams
            .iter()
            .filter(|(_, got)| got.starts_with(b"HTTP/1.1 "))
            .count()
    };
    while answered(&streams) < 3 && started.elapsed() < Duration::from_secs(20) {
        for (stream, got) in &mut streams {
            let mut buf = [0_u8; 4096];
            if let Ok(n) = stream.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
    }
    assert_eq!(
        answered(&streams),
        3,
        "one address held more than 2 of 8 places"
    );
    for (_, got) in streams.iter().filter(|(_, got)| !got.is_empty()) {
        let text = String::from_utf8_lossy(got);
        assert!(text.starts_with("HTTP/1.1 429"), "{text}");
        assert!(text.contains("too-many-requests"), "{text}");
    }
    // Another address is served meanwhile.
    assert_eq!(get_from(addr, "/hello", "127.0.0.2").await.status, 200);
    // The two held requests get their bodies and succeed.
    for (stream, got) in streams.iter_mut().filter(|(_, got)| got.is_empty()) {
        stream.write_all(b"hi").expect("send the body");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a read timeout");
        let mut buf = [0_u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}

/// T01: while active requests pass the throttle's in-flight threshold, the
/// caller holding them is shed with `overloaded` before its next request
/// runs; once the slow calls finish, admission resumes.
#[tokio::test]
async fn the_dynamic_throttle_sheds_and_recovers_t01() {
    let app = TestApp::new(
        r#"
[app]
name = "throttle"

[limits]
max_concurrent_requests = 8
max_outstanding_requests = 8
# One caller sends them all: let it hold every place (T02 caps it by default).
max_outstanding_per_caller = 8
dynamic_throttle = { in_flight = 0.25, cpu = 1.0, memory = 1.0, interval = "100ms" }
timeout = "20s"

[[function]]
name = "slow"
component = "hostile.wasm"
route = "/slow/{what}"
auth = "public"
input.query.ms = "[0-9]{1,5}"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
"#,
        &["hostile", "hello"],
    );
    let server = Server::start(&app);
    let addr = server.addr;
    assert_eq!(get(addr, "/hello").await.status, 200);
    // Three of eight places busy: 0.375 >= 0.25.
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/slow/sleep?ms=3000").await.status }))
        .collect();
    let shed = poll_until(|| async { get(addr, "/hello").await }, |r| r.status == 429).await;
    shed.assert_problem(429, "overloaded");
    assert!(retry_after(&shed) >= 1);
    server.wait_for_log(
        |r| r["message"] == "overloaded: shedding new requests" && r["signal"] == "in_flight",
        Duration::from_secs(10),
    );
    let admin = server.admin.expect("admin listener");
    let metrics = get(admin, "/metrics").await.text();
    assert_eq!(metric(&metrics, "bulkhead_throttle_shedding"), Some(1.0));

    for call in slow {
        assert_eq!(call.await.unwrap(), 200);
    }
    poll_until(|| async { get(addr, "/hello").await }, |r| r.status == 200).await;
    server.wait_for_log(
        |r| r["message"] == "recovered: admitting new requests again",
        Duration::from_secs(10),
    );
}

async fn poll_until<F, Fut>(call: F, done: impl Fn(&Reply) -> bool) -> Reply
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let started = Instant::now();
    loop {
        let reply = call().await;
        if done(&reply) {
            return reply;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the expected response never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn usage_json(app: &TestApp, by: &str) -> Value {
    let out = app.run(&["usage", "--by", by, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("usage prints JSON")
}

/// T04: at one (list) dollar a request, a 5-dollar daily budget allows
/// exactly five calls; the 80 % and 100 % marks are logged; the sixth call
/// is refused with `budget-exhausted` and a Retry-After to midnight UTC;
/// after a graceful restart and after a crash it is still refused; the
/// meter's totals match the calls made.
#[tokio::test]
async fn a_spent_budget_stays_spent_across_restarts_and_crashes_t04() {
    let app = TestApp::new(
        r#"
[app]
name = "budget"

[pricing]
per_million_requests = "1000000 USD"
per_gb_second = "0 USD"
per_gb_egress = "0 USD"

[[function]]
name = "hello"
component = "hello.wasm"
route = "/hello"
auth = "public"
budget = { per_day = "5 USD" }

[[function]]
name = "echo"
component = "echo.wasm"
route = "/echo"
auth = "public"
budget = { per_caller_requests_per_day = 2 }

[limits]
trusted_proxies = ["127.0.0.1"]
# Above the built-in 10 USD a day, which these prices would reach.
budget = { per_day = "1000 USD" }
"#,
        &["hello", "echo"],
    );
    let server = Server::start(&app);
    for _ in 0..5 {
        assert_eq!(get(server.addr, "/hello").await.status, 200);
    }
    let refused = get(server.addr, "/hello").await;
    refused.assert_problem(429, "budget-exhausted");
    let wait = retry_after(&refused);
    assert!((1..=86_400).contains(&wait), "Retry-After {wait}");
    server.wait_for_log(
        |r| r["message"] == "daily budget 80% used" && r["function"] == "hello",
        Duration::from_secs(10),
    );
    let exhausted = server.wait_for_log(
        |r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("daily budget exhausted"))
        },
        Duration::from_secs(10),
    );
    assert_eq!(exhausted["level"], "ERROR");

    // Per caller: each forwarded client gets two calls of `echo`.
    for ip in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..2 {
            assert_eq!(get_as(server.addr, "/echo", ip).await.status, 200);
        }
        get_as(server.addr, "/echo", ip)
            .await
            .assert_problem(429, "budget-exhausted");
    }
    assert!(server.stop().success());

    // A graceful restart remembers.
    let server = Server::start(&app);
    get(server.addr, "/hello")
        .await
        .assert_problem(429, "budget-exhausted");
    get_as(server.addr, "/echo", "198.51.100.1")
        .await
        .assert_problem(429, "budget-exhausted");
    // A third client's calls are committed within the flush window ...
    assert_eq!(
        get_as(server.addr, "/echo", "198.51.100.3").await.status,
        200
    );
    assert_eq!(
        get_as(server.addr, "/echo", "198.51.100.3").await.status,
        200
    );
    let started = Instant::now();
    while usage_json(&app, "caller")["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["key"] != "ip:198.51.100.3" || r["requests"] != 2)
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    // ... so a crash right after forgets nothing.
    server.kill();
    let server = Server::start(&app);
    get_as(server.addr, "/echo", "198.51.100.3")
        .await
        .assert_problem(429, "budget-exhausted");
    assert!(server.stop().success());

    // The meter: exactly the calls that ran, none of the refused ones.
    let by_function = usage_json(&app, "function");
    let rows = by_function["rows"].as_array().unwrap();
    let requests = |name: &str| {
        rows.iter()
            .find(|r| r["key"] == name)
            .map(|r| r["requests"].as_u64().unwrap())
    };
    assert_eq!(requests("hello"), Some(5));
    assert_eq!(requests("echo"), Some(6));
    assert_eq!(by_function["total"]["requests"], 11);
    assert_eq!(by_function["currency"], "USD");
    let cost = by_function["total"]["cost"].as_f64().unwrap();
    assert!((cost - 11.0).abs() < 1e-9, "cost {cost}");
    let gb_seconds = by_function["total"]["gb_seconds"].as_f64().unwrap();
    assert!(gb_seconds > 0.0);
}

/// T04: calls running at once cannot spend past a budget together. Each
/// admitted call reserves its worst case (8 s at 64 MiB: 0.5 GB-s) until
/// it ends, so of six concurrent 4-second calls against a 0.6 GB-s budget
/// some are refused, and whatever the interleaving, what was spent stays
/// within the budget plus one call's worst case. Without the reservation
/// all six would run: 1.5 GB-s. A refusal while nothing is spent yet says
/// the budget is held by running calls, with a Retry-After of the timeout,
/// not of midnight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_cannot_overshoot_a_budget_together_t04() {
    let app = TestApp::new(
        r#"
[app]
name = "reserved"

[[function]]
name = "hostile"
component = "hostile.wasm"
route = "/hostile/{behaviour}"
auth = "public"
timeout = "8s"
memory = "64MiB"
input.query.ms = "[0-9]{1,5}"
budget = { gb_seconds_per_day = 0.6 }
"#,
        &["hostile"],
    );
    let server = Server::start(&app);
    let addr = server.addr;
    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(addr, "/hostile/sleep?ms=4000").await }))
        .collect();
    let mut admitted = 0;
    let mut refused = 0;
    for call in calls {
        let reply = call.await.expect("the call's task");
        if reply.status == 200 {
            admitted += 1;
        } else if reply.json()["type"].as_str() == Some("https://bulkhead.dev/problems/budget-held")
        {
            reply.assert_problem(429, "budget-held");
            assert_eq!(reply.header("retry-after"), Some("8"));
            refused += 1;
        } else {
            reply.assert_problem(429, "budget-exhausted");
            refused += 1;
        }
    }
    assert!(refused >= 1, "{admitted} admitted, none refused");
    assert!(server.stop().success());

    let by_function = usage_json(&app, "function");
    assert_eq!(by_function["total"]["requests"], admitted);
    let spent = by_function["total"]["gb_seconds"].as_f64().unwrap();
    let worst_case = 8.0 * 64.0 / 1024.0;
    assert!(
        spent <= 0.6 + worst_case,
        "{admitted} calls spent {spent} GB-s against a 0.6 GB-s budget"
    );
}
