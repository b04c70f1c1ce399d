//! Listener stage (T01): bounded connections, bounded request heads, a
//! deadline on reading headers (slowloris; it also closes idle keep-alive
//! connections), graceful shutdown that lets requests under way finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::{Gateway, Shared, audit, pipeline};

/// How long shutdown waits for requests under way.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

impl Gateway {
    /// Serve on `listener` until `shutdown` resolves, then drain.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let limits = self.shared.limits.clone();
        let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout.get())
            .max_buf_size(limits.max_header_bytes.as_usize())
            .max_headers(limits.max_headers as usize)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        if let Some(shedder) = &self.shared.shedder {
            shedder.start(
                self.shared.app_gate.clone(),
                limits.max_outstanding_requests,
            );
        }
        // Folded refusals are recorded once their second is over (T09).
        let flusher = tokio::spawn({
            let shared = self.shared.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    shared.refusals.flush(&shared.audit, false);
                }
            }
        });
        self.shared.ready.store(true, Ordering::Release);

        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(target: "bulkhead::listener", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                warn!(target: "bulkhead::listener", peer = %peer, reason = "connection-limit", "connection refused");
                self.shared.metrics.refuse("connection-limit");
                audit::listener_refusal(&self.shared.audit, &peer.to_string(), "connection-limit");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move {
                    let response = pipeline::handle(shared, request, peer.ip()).await;
                    Ok::<_, std::convert::Infallible>(response.map(Full::new))
                }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    log_connection_error(&shared, peer, &e);
                }
                drop(permit);
            });
        }

        self.shared.ready.store(false, Ordering::Release);
        info!(target: "bulkhead::listener", "shutting down; draining requests under way");
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            warn!(target: "bulkhead::listener", "drain timed out; closing remaining connections");
        }
        flusher.abort();
        self.shared.refusals.flush(&self.shared.audit, true);
        // Commit the last usage: a restart must not forget what was spent (T04).
        if let Some(meter) = &self.shared.meter {
            meter.close();
        }
        Ok(())
    }
}

/// Malformed framing, oversized heads and slow clients end here: the HTTP
/// parser has already answered (400/431) or closed the connection.
fn log_connection_error(shared: &Shared, peer: SocketAddr, error: &hyper::Error) {
    let reason = if error.is_timeout() {
        "header-timeout"
    } else if error.is_parse_too_large() {
        "head-too-large"
    } else if error.is_parse() {
        "malformed-http"
    } else if error.is_incomplete_message() || error.is_canceled() {
        "client-gone"
    } else {
        "connection-error"
    };
    if reason == "client-gone" {
        debug!(target: "bulkhead::listener", peer = %peer, reason, "connection ended");
    } else {
        warn!(target: "bulkhead::listener", peer = %peer, reason, error = %error, "connection refused");
        shared.metrics.refuse(reason);
        audit::listener_refusal(&shared.audit, &peer.to_string(), reason);
    }
}
