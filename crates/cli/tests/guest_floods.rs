//! A hostile guest against the host's own resources (T05, T07, T09, T17):
//! it cannot flood the log or the audit trail from one call (capability
//! events are folded per call, and other calls' records all survive), it
//! cannot make the host hold memory outside its cap (the resource table
//! and header maps are bounded), and the URI and headers of its outbound
//! requests count against its outbound byte cap.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Server, TestApp, get, get_from};

const FLOOD_MANIFEST: &str = r#"
[app]
name = "flooder"

[config]
greeting = "hello"

[[function]]
name = "config"
component = "config.wasm"
route = "/config"
auth = "public"
timeout = "60s"
input.query.key = '[a-z_]+'
input.query.repeat = '[0-9]{1,7}'
grants = { config = ["greeting"] }

[[function]]
name = "kv"
component = "kv.wasm"
route = "/kv"
auth = "public"
timeout = "60s"
input.query.op = 'openflood'
input.query.store = '[a-z]+'
input.query.value = '[0-9]{1,7}'

[[function]]
name = "hostile"
component = "hostile.wasm"
route = "/h/{what}"
auth = "public"
timeout = "60s"
input.query.n = '[0-9]{1,7}'
input.query.v = '[0-9]{1,2}'
"#;

/// Loop iterations of each flooding call.
const FLOOD: u64 = 100_000;
/// Full records of one kind per call (runtime `call.rs`).
const FULL_PER_KIND: u64 = 16;

fn for_call<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["correlation_id"] == id)
        .collect()
}

/// T07, T09: calls looping on a refused `config::get`, a refused socket
/// and a refused key-value `open` each leave 16 full records and one summary whose
/// counts add up to the loop; calls running beside them keep every one of
/// their own records, and nothing is dropped from the audit channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t07_t09_capability_floods_are_folded_per_call() {
    let app = TestApp::new(FLOOD_MANIFEST, &["config", "hostile", "kv"]);
    let server = Server::start(&app);
    let addr = server.addr;

    let config_flood =
        tokio::spawn(async move { get(addr, &format!("/config?key=nope&repeat={FLOOD}")).await });
    let socket_flood =
        tokio::spawn(async move { get(addr, &format!("/h/socket?n={FLOOD}")).await });
    let kv_flood = tokio::spawn(async move {
        get(
            addr,
            &format!("/kv?op=openflood&store=secret&value={FLOOD}"),
        )
        .await
    });
    // Other calls while the floods run, each with one denial of its own.
    let mut others = Vec::new();
    for _ in 0..200 {
        let reply = get(addr, "/config?key=other").await;
        assert_eq!(reply.text(), "none");
        others.push(reply.correlation_id());
        if others.len() >= 20
            && config_flood.is_finished()
            && socket_flood.is_finished()
            && kv_flood.is_finished()
        {
            break;
        }
    }
    let config_flood = config_flood.await.expect("flood task");
    let socket_flood = socket_flood.await.expect("flood task");
    let kv_flood = kv_flood.await.expect("flood task");
    assert_eq!(
        config_flood.text(),
        format!("repeated:{FLOOD} none:{FLOOD}")
    );
    assert_eq!(socket_flood.text(), format!("refused {FLOOD} of {FLOOD}"));
    assert_eq!(kv_flood.text(), format!("refused {FLOOD} of {FLOOD}"));
    let floods = [
        (config_flood.correlation_id(), "config", "resource", "nope"),
        (
            socket_flood.correlation_id(),
            "sockets",
            "attempt",
            "create-tcp-socket",
        ),
    ];

    // Wait (bounded) for each flood's summary line, then keep the log.
    for (id, _, _, _) in &floods {
        server.wait_for_count(
            |r| r["message"] == "capability events folded" && r["correlation_id"] == id.as_str(),
            1,
        );
    }
    let logs = server.logs();
    assert!(server.stop().success());

    // First what a flood must never do: drop other calls' records.
    let denied = app.audit_records("capability.denied");
    assert!(
        app.audit_records("audit.dropped").is_empty(),
        "the audit channel overflowed"
    );
    for id in &others {
        let mine = for_call(&denied, id);
        assert_eq!(mine.len(), 1, "the denial of call {id}");
        assert_eq!(mine[0]["detail"]["resource"], "other");
    }

    // The log: 16 lines per flooding call and one summary line.
    for (id, _, _, _) in &floods {
        let mine: Vec<&Value> = logs
            .iter()
            .filter(|r| r["target"] == "bulkhead::capability" && r["correlation_id"] == id.as_str())
            .collect();
        let summaries: Vec<&&Value> = mine
            .iter()
            .filter(|r| r["message"] == "capability events folded")
            .collect();
        assert_eq!(summaries.len(), 1, "one summary line for {id}");
        assert_eq!(summaries[0]["folded"], FLOOD - FULL_PER_KIND);
        assert_eq!(mine.len() as u64, FULL_PER_KIND + 1, "{id}");
    }

    let folded = app.audit_records("capability.folded");
    for (id, capability, field, resource) in &floods {
        let full = for_call(&denied, id);
        assert_eq!(full.len() as u64, FULL_PER_KIND, "{capability}");
        assert!(full.iter().all(|r| r["detail"][field] == *resource));
        let summary = for_call(&folded, id);
        assert_eq!(summary.len(), 1, "one summary for {capability}");
        let detail = &summary[0]["detail"];
        assert_eq!(detail["full"], FULL_PER_KIND);
        assert_eq!(detail["folded"], FLOOD - FULL_PER_KIND);
        let counts = detail["counts"].as_array().expect("counts");
        assert_eq!(counts.len(), 1, "{detail}");
        assert_eq!(counts[0]["capability"], *capability);
        assert_eq!(counts[0]["kind"], "capability.denied");
        assert_eq!(counts[0][field], *resource);
        assert!(counts[0]["reason"].is_string());
        let sum: u64 = counts.iter().filter_map(|c| c["count"].as_u64()).sum();
        assert_eq!(sum + FULL_PER_KIND, FLOOD);
    }
}

/// Calls of the flood in the next test: 17 records each (16 full denials
/// and a summary), together past the audit queue's 16,384 places.
const CROWDING_CALLS: usize = 1100;

/// T09 (issue 11, outside attack, finding A): one caller (127.0.0.1)
/// running many calls, each leaving its 17 folded records, while the
/// audit writer is slow, used to fill the audit queue that every caller
/// shares, so that another caller's records were dropped. Now a caller
/// holds at most its share of the queue: 127.0.0.2's denials and refusals
/// are all on the record, and what the flooder lost is counted under its
/// name. The writer is held back by holding the database's write lock (as
/// a slow disk would), so the queue fills whatever this machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn t09_one_callers_calls_cannot_crowd_another_callers_records_out() {
    // No rate limit: the flood is calls that run, not refusals.
    let manifest = FLOOD_MANIFEST.replacen(
        "[config]",
        "[limits]\nrate_limit = { per_caller = \"off\" }\n\n[config]",
        1,
    );
    let app = TestApp::new(&manifest, &["config", "hostile", "kv"]);
    let server = Server::start(&app);
    let addr = server.addr;
    assert_eq!(get(addr, "/config?key=greeting").await.status, 200);

    let lock = rusqlite::Connection::open(app.path().join(".bulkhead/dev/state.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut flooders = Vec::new();
    for _ in 0..8 {
        flooders.push(tokio::spawn(async move {
            for _ in 0..CROWDING_CALLS / 8 + 1 {
                let reply = get(addr, "/config?key=nope&repeat=17").await;
                assert_eq!(reply.text(), "repeated:17 none:17");
            }
        }));
    }
    for flooder in flooders {
        flooder.await.expect("flood task");
    }
    let mut victim = Vec::new();
    for _ in 0..5 {
        let reply = get_from(addr, "/config?key=other", "127.0.0.2").await;
        assert_eq!(reply.text(), "none");
        victim.push(reply.correlation_id());
    }
    let mut refused = Vec::new();
    for _ in 0..5 {
        let reply = get_from(addr, "/missing", "127.0.0.2").await;
        reply.assert_problem(404, "not-found");
        refused.push(reply.correlation_id());
    }
    lock.execute_batch("COMMIT").unwrap();
    assert!(server.stop().success());

    let denied = app.audit_records("capability.denied");
    for id in &victim {
        let mine = for_call(&denied, id);
        assert_eq!(mine.len(), 1, "the denial of 127.0.0.2's call {id}");
        assert_eq!(mine[0]["detail"]["resource"], "other");
    }
    // Refusals fold per caller and second: full records plus counts.
    let refusals = app.audit_records("request.refused");
    let full = refusals
        .iter()
        .filter(|r| refused.iter().any(|id| r["correlation_id"] == id.as_str()))
        .count() as u64;
    let folded: u64 = refusals
        .iter()
        .filter(|r| r["detail"]["caller"] == "ip:127.0.0.2")
        .filter_map(|r| r["detail"]["repeated"].as_u64())
        .sum();
    assert_eq!(full + folded, 5, "127.0.0.2's refusals: {refusals:?}");
    let dropped = app.audit_records("audit.dropped");
    let flooder: u64 = dropped
        .iter()
        .filter_map(|r| r["detail"]["sources"]["ip:127.0.0.1"].as_u64())
        .sum();
    assert!(flooder > 0, "the flooder's excess is counted: {dropped:?}");
    assert!(
        dropped
            .iter()
            .all(|r| r["detail"]["sources"]["ip:127.0.0.2"].is_null())
    );
}

/// Peak resident memory of a process, from /proc (kB).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

/// T05: a guest holding header maps in a loop that makes an unbounded host
/// allocate over 1 GiB is stopped at the resource cap, and one building
/// big header maps at the header map cap, each with a memory-limit
/// problem, logged and audited; the server's peak memory grows by far
/// less than that.
#[tokio::test]
async fn t05_host_memory_held_for_a_guest_is_capped() {
    let app = TestApp::new(FLOOD_MANIFEST, &["config", "hostile", "kv"]);
    let server = Server::start(&app);
    // Warm up: one small call, so the baseline includes a first instance.
    let warm = get(server.addr, "/h/fields?n=1").await.text();
    assert!(warm.starts_with("held 1 header maps"), "{warm}");
    let before = peak_rss_kib(server.pid());
    // 50,000 maps of 24 KiB each (past the resource cap), 10,000 maps of
    // 112 KiB each (past the header map cap, under wasmtime's default of
    // 128 KiB), each over 1 GiB unbounded; and 50,000 outgoing requests
    // with a 16 KiB path each (past the resource cap; 800 MiB unbounded).
    let mut replies = Vec::new();
    for path in [
        "/h/fields?n=50000&v=3",
        "/h/fields?n=10000&v=14",
        "/h/requests?n=50000",
    ] {
        replies.push(get(server.addr, path).await);
    }
    let after = peak_rss_kib(server.pid());
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!("the server's peak memory grew by {grown_mib} MiB");
    assert!(
        grown_mib < 256,
        "the server's peak memory grew by {grown_mib} MiB for three calls"
    );
    let mut ids = Vec::new();
    for reply in &replies {
        let problem = reply.assert_problem(500, "memory-limit");
        assert!(!problem.to_string().contains("vvvv"));
        ids.push(reply.correlation_id());
    }
    for (id, cap) in ids
        .iter()
        .zip(["resources", "header map size", "resources"])
    {
        let record = server.wait_for_log(
            |r| {
                r["message"] == "the function held more host memory than its cap and was stopped"
                    && r["correlation_id"] == id.as_str()
            },
            Duration::from_secs(10),
        );
        assert_eq!(record["cap"], cap);
        assert_eq!(server.access_record(id)["reason"], "memory-limit");
    }
    // The server still serves.
    assert_eq!(get(server.addr, "/config?key=greeting").await.status, 200);
    assert!(server.stop().success());
    // Audited: each in full, or counted in the gateway's summary of the
    // refusals it folds within a second.
    let limits = app.audit_records("sandbox.limit");
    let audited: u64 = limits
        .iter()
        .filter(|r| r["detail"]["reason"] == "memory-limit")
        .map(|r| r["detail"]["repeated"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(audited, ids.len() as u64, "{limits:?}");
    assert!(
        limits
            .iter()
            .any(|r| r["correlation_id"] == ids[0].as_str())
    );
}

/// T17: the request line and headers of an outbound request count against
/// `max_outbound_bytes`: a request whose header or URI alone passes the
/// cap is refused before any connection, logged and audited.
#[tokio::test]
async fn t17_outbound_headers_and_uri_count_against_the_byte_cap() {
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
name = "padded"

[[function]]
name = "caller"
component = "hostile.wasm"
route = "/call/{{what}}"
auth = "public"
input.query.url = 'https?://\S+'
input.query.pad = '[0-9]{{1,6}}'
max_outbound_bytes = "4KiB"
grants = {{ outbound = ["http://127.0.0.1:{port}"] }}
"#
        ),
        &["hostile"],
    );
    let server = Server::start(&app);
    // Within the cap, the request goes (the control).
    let small = get(
        server.addr,
        &format!("/call/fetch?url=http://127.0.0.1:{port}/hello"),
    )
    .await
    .text();
    assert!(small.starts_with("REACHED status 200"), "{small}");

    // An 8 KiB header, and a 6 KiB query string: each over the 4 KiB cap.
    let long_query = "q".repeat(6000);
    for path in [
        format!("/call/fetch?url=http://127.0.0.1:{port}/hello&pad=8000"),
        format!("/call/fetch?url=http://127.0.0.1:{port}/hello?x={long_query}"),
    ] {
        let reply = get(server.addr, &path).await;
        assert_eq!(reply.status, 200);
        let text = reply.text();
        assert!(
            text.starts_with("outbound refused: ErrorCode::HttpRequestDenied"),
            "{text}"
        );
        let id = reply.correlation_id();
        let denial = server.wait_for_log(
            |r| r["message"] == "outbound request denied" && r["correlation_id"] == id.as_str(),
            Duration::from_secs(10),
        );
        assert_eq!(denial["reason"], "the call's outbound byte cap is spent");
        assert!(!denial.to_string().contains("qqqq"));
    }
    // Only the control reached the target.
    let reached = target
        .logs()
        .iter()
        .filter(|r| r["target"] == "bulkhead::access")
        .count();
    assert_eq!(reached, 1);
    assert!(server.stop().success());
    let audited = app.audit_records("capability.denied");
    let capped = audited
        .iter()
        .filter(|r| r["detail"]["reason"] == "the call's outbound byte cap is spent")
        .count();
    assert_eq!(capped, 2);
}
