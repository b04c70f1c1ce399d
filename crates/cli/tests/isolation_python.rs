//! Issue 17 (T05, T16): a Python function keeps nothing from one call to
//! the next. The Python guest (guests/python/state, componentize-py) leaves
//! a seed-derived marker in a module global, a module-level list and dict, a
//! class attribute, `builtins`, `sys.modules`, `os.environ`, an
//! `lru_cache`, an interned string, a 4 MiB heap buffer and (refused by the
//! deny-all filesystem) a file in /tmp; later calls look for it in each of
//! those and in every container the garbage collector tracks. Reset slots
//! (one at a time: the allocator hands the same slot back; eight at once:
//! several slots) must answer as a fresh instance does: nothing found, and
//! the module's call counter at 1. The guest's own `selfcheck` (stain and
//! peek in one call) shows that the peek finds each stain, so the test can
//! fail. Raw linear memory is checked by the Rust guest of isolation.rs.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use support::{Server, TestApp, get, repo_root};

const MANIFEST: &str = r#"
[app]
name = "isolation-python"

[limits]
timeout = "10s"
memory = "128MiB"

[[function]]
name = "state"
component = "state.wasm"
route = "/state/{op}"
auth = "public"
input.query.seed = '[0-9]{1,20}'
"#;

/// What a fresh instance answers to `peek`.
const CLEAN: &str =
    "calls 1 global - list 0 dict 0 class - builtins - module - env - cache 0 heap 0 file -";

/// Build the Python guest (guests/python/build.sh, once per test binary).
fn state_guest() -> &'static PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = repo_root();
        let out = Command::new(root.join("guests/python/build.sh"))
            .output()
            .expect("guests/python/build.sh runs");
        assert!(
            out.status.success(),
            "building the Python guest failed (run examples/hello/build.sh first: it installs \
             componentize-py): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("guests/target/python/state-python.wasm")
    })
}

#[tokio::test]
async fn a_python_function_keeps_nothing_between_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(state_guest(), dir.path().join("state.wasm")).expect("copy the guest");
    std::fs::write(dir.path().join("bulkhead.toml"), MANIFEST).expect("write the manifest");
    let app = TestApp::existing(dir.path());
    let server = Server::start(&app);
    // A seed no build can hold: the marker is derived from it at run time.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);

    // The detector works: stain and peek within one call finds every stain
    // (the file write is refused by the deny-all filesystem, T18).
    let check = get(server.addr, &format!("/state/selfcheck?seed={seed}")).await;
    assert_eq!(check.status, 200, "{}", check.text());
    let text = check.text();
    let heap = text
        .strip_prefix(
            "calls 1 stained file refused global yes list 1 dict 1 class yes builtins yes \
             module yes env yes cache 1 heap ",
        )
        .and_then(|rest| rest.strip_suffix(" file -"))
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        heap.is_some_and(|n| n > 0),
        "the guest's own check must see each stain: {text}"
    );

    // A fresh instance, and the slot the self-check used, reset.
    let first = get(server.addr, &format!("/state/peek?seed={seed}")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.text(), CLEAN);

    for round in 0..4 {
        // One at a time (the same slot back) and then eight at once.
        let width = if round % 2 == 0 { 1 } else { 8 };
        let stains: Vec<_> = (0..width)
            .map(|_| call(server.addr, format!("/state/stain?seed={seed}")))
            .collect();
        for stained in join(stains).await {
            assert_eq!(stained.status, 200, "{}", stained.text());
            assert_eq!(stained.text(), "calls 1 stained file refused");
        }
        let peeks: Vec<_> = (0..width)
            .map(|_| call(server.addr, format!("/state/peek?seed={seed}")))
            .collect();
        for peeked in join(peeks).await {
            assert_eq!(peeked.status, 200, "{}", peeked.text());
            assert_eq!(
                peeked.text(),
                CLEAN,
                "round {round}: a later call saw an earlier call's Python state"
            );
        }
    }
}

/// One GET that owns its path, so it can run in a task of its own.
async fn call(addr: std::net::SocketAddr, path: String) -> support::Reply {
    get(addr, &path).await
}

/// Run the calls at once and return their replies in order.
async fn join<F: std::future::Future + Send + 'static>(calls: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = calls.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("the call task ran"));
    }
    out
}
