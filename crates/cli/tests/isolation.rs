//! Issue 17 (T05, T16): a freed instance slot is reset to the component's
//! initial image before the next call, whatever mechanism the engine uses
//! for it (`madvise`, or copying back the pages a call wrote when the
//! pooling allocator keeps them resident with `PAGEMAP_SCAN`). A guest
//! writes a secret pattern into a static, its stack and 12 MiB of heap
//! (growing its memory), and later calls of the same function, in the same
//! slots, scan their whole linear memory for it: never found, memory back to
//! its initial size, a global counter back to its initial value.

mod support;

use support::{Server, TestApp, get};

const MANIFEST: &str = r#"
[app]
name = "isolation"

[limits]
timeout = "5s"
memory = "64MiB"

[[function]]
name = "hostile"
component = "hostile.wasm"
route = "/hostile/{behaviour}"
auth = "public"
input.query.seed = '[0-9]{1,20}'
"#;

/// `... found F pages P ...` -> (F, P), from the last `found` and `pages`
/// (`/stain` says "heap pages" first).
fn found_and_pages(text: &str) -> (u64, u64) {
    let words: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| -> u64 {
        let at = words
            .iter()
            .rposition(|w| *w == key)
            .unwrap_or_else(|| panic!("no `{key}` in {text:?}"));
        words
            .get(at + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number after `{key}` in {text:?}"))
    };
    (after("found"), after("pages"))
}

#[tokio::test]
async fn a_reused_slot_keeps_nothing_of_the_previous_call() {
    let app = TestApp::new(MANIFEST, &["hostile"]);
    let server = Server::start(&app);
    // A seed no build can hold: the pattern is derived from it at run time.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        | 1;

    // A fresh instance: the initial memory size, and no pattern.
    let first = get(server.addr, &format!("/hostile/peek?seed={seed}")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let (found, initial_pages) = found_and_pages(&first.text());
    assert_eq!(found, 0, "{}", first.text());
    assert!(first.text().ends_with("counter 1"), "{}", first.text());

    for round in 0..6 {
        // One at a time (the allocator hands the same slot back) and then
        // eight at once (several slots, each reused below).
        let width = if round % 2 == 0 { 1 } else { 8 };
        let stains: Vec<_> = (0..width)
            .map(|_| call(server.addr, format!("/hostile/stain?seed={seed}")))
            .collect();
        for stained in futures_join(stains).await {
            assert_eq!(stained.status, 200, "{}", stained.text());
            // The scan sees what the call wrote: 1,536 heap pages and the
            // static at least, in a memory grown past its initial size.
            let (found, pages) = found_and_pages(&stained.text());
            assert!(
                found > 1536,
                "the scan must see the stain: {}",
                stained.text()
            );
            assert!(pages > initial_pages, "{}", stained.text());
        }
        let peeks: Vec<_> = (0..width)
            .map(|_| call(server.addr, format!("/hostile/peek?seed={seed}")))
            .collect();
        for peeked in futures_join(peeks).await {
            assert_eq!(peeked.status, 200, "{}", peeked.text());
            let text = peeked.text();
            assert_eq!(
                found_and_pages(&text),
                (0, initial_pages),
                "round {round}: a later call saw the previous call's memory: {text}"
            );
            assert!(text.ends_with("counter 1"), "round {round}: {text}");
        }
    }
}

/// One GET that owns its path, so it can run in a task of its own.
async fn call(addr: std::net::SocketAddr, path: String) -> support::Reply {
    get(addr, &path).await
}

/// Run the calls at once and return their replies in order.
async fn futures_join<F: std::future::Future + Send + 'static>(calls: Vec<F>) -> Vec<F::Output>
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
