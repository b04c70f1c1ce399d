//! The floor under a refusal's cost (issue 17): the least an HTTP/1.1
//! server on this stack can spend to answer a request with a fixed 429.
//! The same tokio runtime and hyper HTTP/1.1 connection settings as
//! `bulkhead serve` (crates/gateway/src/server.rs: a timer, the head read
//! deadline, keep-alive, TCP_NODELAY), and an answer of the same shape as
//! the gateway's `rate-limited` problem (status, content type,
//! `cache-control`, `retry-after`, correlation header, a body of the same
//! length), built once: no routing, no checks, no log, no audit. Whatever
//! this costs per request (the kernel's loopback receive and send, epoll,
//! tokio's wake-ups, hyper's parse and write) a refusal cannot go below.
//! `bench/refusals` loads it beside the real server (variant `floor`).
//!
//! `cargo run --release -p bulkhead-gateway --example refusal_floor -- 127.0.0.1:PORT`

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

const BODY: &str = r#"{"type":"https://bulkhead.dev/problems/rate-limited","title":"Rate limit reached","status":429,"detail":"You are sending requests faster than this service allows; wait as long as Retry-After says.","correlation_id":"01JF0000000000000000000000"}"#;

fn answer() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("3600"));
    headers.insert(
        "x-correlation-id",
        HeaderValue::from_static("01JF0000000000000000000000"),
    );
    response
}

fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .keep_alive(true);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(|_request| async { Ok::<_, Infallible>(answer()) });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
