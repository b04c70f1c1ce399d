//! A guest that misbehaves on purpose, one behaviour per path (the last path
//! segment picks it), so tests can show each attack contained (T05, T17):
//!
//! - `/loop`      spins forever (wall-clock timeout)
//! - `/membomb`   allocates until memory runs out (memory cap)
//! - `/recurse`   recurses without end (stack overflow)
//! - `/big`       answers with a 64 MiB body (response size cap)
//! - `/trap`      hits `unreachable`
//! - `/file`      tries to read and create files (no preopens)
//! - `/env`       reports the environment and arguments it can see
//! - `/outbound`  tries an outbound HTTP call (no grant)
//! - `/sleep`     sleeps `?ms=N` milliseconds, then answers (slow work)
//! - `/burn`      does `?n=N` thousand rounds of arithmetic, then answers
//!                (CPU work, for the overload bench)
//! - `/shout`     writes hostile text to stdout and stderr, then answers
//! - `/nobody`    returns without ever setting a response
//! - `/counter`   counts calls in a global: always 1 if no state survives
//! - `/stain`     writes a secret pattern derived from `?seed=N` into a
//!   static, the stack and 12 MiB of heap (growing memory, every other
//!   page dirty), then answers (issue 17: slot reuse must not leak it)
//! - `/peek`      scans all of its linear memory for `?seed=N`'s pattern and
//!   answers `found F pages P counter C`: F must be 0, P the initial
//!   memory size and C 1 in a fresh instance
//! - `/fetch`     GETs `?url=http://host:port/path` and answers with what came back;
//!   `&pad=N` adds an `x-pad` header of N bytes (headers count against the
//!   outbound byte cap, T17)
//! - `/socket`    tries sockets every way; `?n=N` instead tries to create a
//!   TCP socket N times (a flood of denials, T07, T09)
//! - `/fields`    holds `?n=N` header maps, each with `&v=V` values of
//!   8 KiB (default 3) (host memory, T05)
//! - `/requests`  holds `?n=N` outgoing requests, each with a 16 KiB path
//!   (host memory, T05)
//! - `/headers`   answers with the response fields the query names:
//!   `?h=NAME:VALUE` (repeatable, percent-encoded, any bytes) and
//!   `&bomb=N&size=S` for N cookies of S bytes (T01, T12: what a function
//!   may set on the gateway's clients)
use std::io::Write as _;

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

wasip2::http::proxy::export!(Hostile);

struct Hostile;

static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Where `/stain` puts the pattern in static memory (zero-initialised, so
/// part of the initial memory a reused slot must restore).
static STAINS: [std::sync::atomic::AtomicU64; 512] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 512];

impl wasip2::exports::http::incoming_handler::Guest for Hostile {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let behaviour = path.rsplit('/').next().unwrap_or_default();
        match behaviour {
            "loop" => spin(),
            "membomb" => reply(response_out, 200, &membomb()),
            "recurse" => reply(response_out, 200, &recurse(1).to_string()),
            "big" => big(response_out),
            "brokenbody" => broken_body(response_out),
            "trap" => std::process::abort(),
            "file" => reply(response_out, 200, &try_files()),
            "env" => reply(response_out, 200, &environment()),
            "outbound" => reply(response_out, 200, &outbound()),
            "fetch" => {
                // The URL is the rest of the query (it may hold `&`),
                // less a trailing `&pad=N`.
                let (rest, pad) = match query.rsplit_once("&pad=") {
                    Some((rest, pad)) => (rest, pad.parse().unwrap_or(0)),
                    None => (query, 0),
                };
                let url = rest.strip_prefix("url=").unwrap_or_default();
                reply(response_out, 200, &fetch_padded(url, pad))
            }
            "requests" => {
                let n = param(query, "n").parse().unwrap_or(1);
                reply(response_out, 200, &hoard_requests(n))
            }
            "fields" => {
                let n = param(query, "n").parse().unwrap_or(1);
                let v = param(query, "v").parse().unwrap_or(3);
                reply(response_out, 200, &hoard_fields(n, v))
            }
            "sleep" => {
                let ms: u64 = query
                    .strip_prefix("ms=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100);
                wasip2::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                reply(response_out, 200, "slept")
            }
            "burn" => {
                let n: u64 = query
                    .strip_prefix("n=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                reply(response_out, 200, &burn(n).to_string())
            }
            "headers" => with_headers(response_out, query),
            "socket" => match param(query, "n").parse::<u64>() {
                Ok(n) => reply(response_out, 200, &socket_flood(n)),
                Err(_) => reply(response_out, 200, &sockets()),
            },
            "shout" => {
                let forged = "line one\r\n{\"level\":\"INFO\",\"forged\":true}\n\x1b[31mred\x1b[0m\u{2028}after";
                println!("{forged}");
                eprintln!("{forged}");
                for i in 0..10_000 {
                    println!("flood line {i} {}", "x".repeat(200));
                }
                reply(response_out, 200, "shouted")
            }
            "nobody" => drop(response_out),
            "counter" => {
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                reply(response_out, 200, &n.to_string())
            }
            "stain" => {
                let seed = param(query, "seed").parse().unwrap_or(1);
                reply(response_out, 200, &stain(seed))
            }
            "peek" => {
                let seed = param(query, "seed").parse().unwrap_or(1);
                reply(response_out, 200, &peek(seed))
            }
            _ => reply(response_out, 404, "unknown behaviour"),
        }
    }
}

/// Word `i` of `seed`'s secret pattern (splitmix64). Computed, never
/// stored, by `/peek`, so finding it in memory means a call wrote it.
fn pattern(seed: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Write the secret pattern (two words) into a static, the stack and every
/// other 4 KiB page of a 12 MiB heap block: many separate dirty regions
/// (past the 32 wasmtime's page-map reset copies back, so both its copy and
/// its `madvise` paths are exercised) and a grown memory.
fn stain(seed: u64) -> String {
    let (w0, w1) = (pattern(seed, 0), pattern(seed, 1));
    STAINS[0].store(w0, std::sync::atomic::Ordering::Relaxed);
    STAINS[1].store(w1, std::sync::atomic::Ordering::Relaxed);
    let on_stack = std::hint::black_box([w0, w1]);
    const HEAP_WORDS: usize = (12 << 20) / 8;
    const PAGE_WORDS: usize = 4096 / 8;
    let mut heap = vec![0u64; HEAP_WORDS];
    let mut pages = 0;
    for page in (0..HEAP_WORDS).step_by(2 * PAGE_WORDS) {
        heap[page] = w0;
        heap[page + 1] = w1;
        pages += 1;
    }
    std::hint::black_box(&heap);
    // Left in memory on purpose: the instance ends with it.
    std::mem::forget(heap);
    std::hint::black_box(on_stack);
    // The scan must see what was just written, or `/peek` proves nothing.
    let (found, total) = scan(seed);
    format!("stained {pages} heap pages found {found} pages {total}")
}

/// `found F pages P counter C`: where `seed`'s pattern sits in this
/// instance's memory, its size and the calls this instance has seen.
fn peek(seed: u64) -> String {
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let (found, pages) = scan(seed);
    format!("found {found} pages {pages} counter {calls}")
}

/// How often `seed`'s pattern occurs in linear memory, and its size in pages.
fn scan(seed: u64) -> (u32, usize) {
    let (w0, w1) = (pattern(seed, 0), pattern(seed, 1));
    let pages = core::arch::wasm32::memory_size(0);
    let end = pages * 65536;
    let mut found = 0u32;
    // Address 0 is valid wasm memory, but start past it: Rust's null.
    let mut addr = 8usize;
    while addr + 16 <= end {
        // SAFETY: every address below `memory.size` is readable wasm memory.
        let (a, b) = unsafe {
            let p = addr as *const u64;
            (p.read_volatile(), p.add(1).read_volatile())
        };
        if a == w0 && b == w1 {
            found += 1;
        }
        addr += 8;
    }
    (found, pages)
}

/// Answer 200 with the fields `query` asks for (see `/headers`).
fn with_headers(response_out: ResponseOutparam, query: &str) {
    let unescape = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && let Some(v) = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        out
    };
    let mut list: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in query.split('&').filter_map(|p| p.split_once('=')) {
        if k == "h" {
            let raw = unescape(v);
            if let Some(at) = raw.iter().position(|&c| c == b':') {
                let name = String::from_utf8_lossy(&raw[..at]).to_lowercase();
                list.push((name, raw[at + 1..].to_vec()));
            }
        }
    }
    let bomb: usize = param(query, "bomb").parse().unwrap_or(0);
    let size: usize = param(query, "size").parse().unwrap_or(0);
    for i in 0..bomb {
        let cookie = format!("bomb{i}={}; Path=/; Max-Age=86400", "x".repeat(size));
        list.push(("set-cookie".into(), cookie.into_bytes()));
    }
    let fields = Fields::from_list(&list).unwrap_or_else(|_| Fields::new());
    let resp = OutgoingResponse::new(fields);
    let body = resp.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(resp));
    let mut out = body.write().expect("stream is taken once");
    let _ = out.write_all(b"headers set");
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}

/// The value of `name` in a query string, or "".
fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map_or("", |(_, v)| v)
}

/// Ask for a TCP socket `n` times; every one must be refused.
fn socket_flood(n: u64) -> String {
    use wasip2::sockets::network::IpAddressFamily;
    let mut refused = 0u64;
    for _ in 0..n {
        if wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4).is_err() {
            refused += 1;
        }
    }
    format!("refused {refused} of {n}")
}

/// Hold `n` header maps, each with `v` values of 8 KiB: host memory the
/// guest's own memory cap never sees. (A map past the host's size limit
/// traps in the host.)
fn hoard_fields(n: u64, v: u32) -> String {
    let value = vec![b'v'; 8 << 10];
    let mut held = Vec::new();
    let mut values = 0u64;
    for _ in 0..n {
        let fields = Fields::new();
        for i in 0..v {
            if fields.append(&format!("x-{i}"), &value).is_err() {
                break;
            }
            values += 1;
        }
        held.push(fields);
    }
    format!("held {} header maps, {values} values of 8 KiB", held.len())
}

/// Hold `n` outgoing requests, each with a 16 KiB path, never sent.
fn hoard_requests(n: u64) -> String {
    let path = format!("/{}", "p".repeat(16 << 10));
    let mut held = Vec::new();
    for _ in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        if request.set_path_with_query(Some(&path)).is_err() {
            break;
        }
        held.push(request);
    }
    format!("held {} requests", held.len())
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// `n` thousand rounds of a multiply-xor hash: CPU work whose cost does
/// not depend on anything but `n`.
fn burn(n: u64) -> u64 {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..n.saturating_mul(1000) {
        x = std::hint::black_box((x ^ i).wrapping_mul(0x0100_0000_01b3));
    }
    x
}

fn membomb() -> String {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used.
        hoard.push(vec![0xA5; 1 << 20]);
        if hoard.len() > 1 << 16 {
            return format!("hoarded {} MiB", hoard.len());
        }
    }
}

/// Recursion that lives on the wasm stack itself (no shadow-stack frame),
/// so it ends in the engine's stack-overflow trap.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    // An indirect call cannot be turned into a loop by the optimiser.
    let next: fn(u64) -> u64 = std::hint::black_box(recurse);
    next(depth + 1).wrapping_mul(31).wrapping_add(depth)
}

fn big(response_out: ResponseOutparam) {
    let resp = OutgoingResponse::new(Fields::new());
    let body = resp.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(resp));
    let mut out = body.write().expect("stream is taken once");
    let chunk = vec![b'B'; 1 << 16];
    for _ in 0..1024 {
        if out.write_all(&chunk).is_err() {
            return;
        }
    }
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}

/// A head, part of a body, then the body dropped without `finish`: the
/// body stream ends in an error (issue 12, item 6: the function's failure).
fn broken_body(response_out: ResponseOutparam) {
    let resp = OutgoingResponse::new(Fields::new());
    let body = resp.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(resp));
    let out = body.write().expect("stream is taken once");
    let _ = out.blocking_write_and_flush(b"partial ");
    drop(out);
    drop(body);
}

fn try_files() -> String {
    let read = match std::fs::read_to_string("/etc/passwd") {
        Ok(text) => format!("LEAKED {} bytes", text.len()),
        Err(e) => format!("read refused: {e}"),
    };
    let write = match std::fs::write("bulkhead-escape.txt", b"escaped") {
        Ok(()) => "WROTE a file".to_string(),
        Err(e) => format!("write refused: {e}"),
    };
    let list = match std::fs::read_dir("/") {
        Ok(_) => "LISTED the root".to_string(),
        Err(e) => format!("list refused: {e}"),
    };
    format!("{read}\n{write}\n{list}\n")
}

fn environment() -> String {
    let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args: Vec<String> = std::env::args().collect();
    format!("vars={} args={}\n", vars.len(), args.len())
}

fn outbound() -> String {
    fetch("http://127.0.0.1:9/")
}

/// GET `url` (`scheme://authority/path`) and describe the outcome.
fn fetch(url: &str) -> String {
    fetch_padded(url, 0)
}

/// Like [`fetch`], with an `x-pad` header of `pad` bytes.
fn fetch_padded(url: &str, pad: usize) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    if pad > 0 && headers.append("x-pad", &vec![b'p'; pad]).is_err() {
        return "the host refused the header".into();
    }
    let request = OutgoingRequest::new(headers);
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    match wasip2::http::outgoing_handler::handle(request, None) {
        Err(e) => format!("outbound refused: {e:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(resp))) => {
                    let status = resp.status();
                    let mut body = Vec::new();
                    if let Ok(incoming) = resp.consume()
                        && let Ok(mut stream) = incoming.stream()
                    {
                        use std::io::Read as _;
                        let _ = stream.read_to_end(&mut body);
                    }
                    format!(
                        "REACHED status {status}\n{}",
                        String::from_utf8_lossy(&body)
                    )
                }
                Some(Ok(Err(e))) => format!("outbound refused: {e:?}"),
                other => format!("outbound failed: {other:?}"),
            }
        }
    }
}

/// Try the network without wasi:http: Rust std (as a language runtime
/// would) and wasi:sockets directly. Every attempt must be refused (T18).
fn sockets() -> String {
    use wasip2::sockets::network::IpAddressFamily;
    let std_tcp = match std::net::TcpStream::connect("127.0.0.1:9") {
        Ok(_) => "CONNECTED".to_string(),
        Err(e) => format!("refused ({})", e.kind()),
    };
    let std_udp = match std::net::UdpSocket::bind("0.0.0.0:0") {
        Ok(_) => "BOUND".to_string(),
        Err(e) => format!("refused ({})", e.kind()),
    };
    let tcp = match wasip2::sockets::tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
        Ok(_) => "CREATED".to_string(),
        Err(e) => format!("refused ({e:?})"),
    };
    let udp = match wasip2::sockets::udp_create_socket::create_udp_socket(IpAddressFamily::Ipv6) {
        Ok(_) => "CREATED".to_string(),
        Err(e) => format!("refused ({e:?})"),
    };
    let network = wasip2::sockets::instance_network::instance_network();
    let dns = match wasip2::sockets::ip_name_lookup::resolve_addresses(&network, "example.com") {
        Ok(_) => "RESOLVING".to_string(),
        Err(e) => format!("refused ({e:?})"),
    };
    format!("std tcp {std_tcp}; std udp {std_udp}; tcp {tcp}; udp {udp}; dns {dns}")
}

fn reply(response_out: ResponseOutparam, status: u16, text: &str) {
    let resp = OutgoingResponse::new(Fields::new());
    let _ = resp.set_status_code(status);
    let body = resp.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(resp));
    let mut out = body.write().expect("stream is taken once");
    let _ = out.write_all(text.as_bytes());
    drop(out);
    let _ = OutgoingBody::finish(body, None);
}
