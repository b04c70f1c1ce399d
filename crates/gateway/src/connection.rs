//! One accepted connection (T01, T15): the TLS handshake, bounded in time
//! and run only after the connection's places were taken, then HTTP/1.1 or,
//! when ALPN chose it, HTTP/2 with bounds of its own: streams per
//! connection, header list size, pending resets (rapid reset,
//! CVE-2023-44487), a bounded send buffer, keep-alive pings, and an idle
//! deadline like HTTP/1.1's. A plain listener speaks HTTP/1.1 only.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_manifest::AppLimits;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::respond::{ConnectionCut, Outgoing};
use crate::send_timeout::SendTimeout;
use crate::server::log_connection_error;
use crate::tls::{VerifiedClientCert, is_h2};
use crate::{Shared, pipeline};

/// Streams one HTTP/2 connection may have open at most, whatever the
/// caller's share (T01): a client wanting more opens another connection,
/// which the per-address cap counts.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// Streams a client may open and reset before the server saw them
/// (rapid reset, CVE-2023-44487); past it the connection is closed.
const MAX_PENDING_RESETS: usize = 16;
/// Streams the server may reset because of the client's errors before it
/// closes the connection (MadeYouReset).
const MAX_ERROR_RESETS: usize = 64;
/// Bytes buffered per stream for a client that reads slowly.
const MAX_SEND_BUFFER: usize = 64 * 1024;

pub(crate) fn http2_builder(limits: &AppLimits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    let idle = limits.header_read_timeout.get();
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(
            MAX_STREAMS_PER_CONNECTION.min(limits.max_outstanding_per_caller.max(1)),
        )
        .max_header_list_size(u32::try_from(limits.max_header_bytes.bytes()).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .max_send_buf_size(MAX_SEND_BUFFER)
        // A peer that answers no ping within the idle deadline is gone.
        .keep_alive_interval(idle)
        .keep_alive_timeout(idle);
    builder
}

/// Everything a connection's task needs.
pub(crate) struct Connection {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    pub graceful: Watcher,
    /// Turns true when the server drains: HTTP/2 connections go away.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// Held while the connection is open: the drain waits for all of them.
    pub _h2_open: tokio::sync::mpsc::Sender<()>,
}

impl Connection {
    pub(crate) async fn run(self, stream: SendTimeout) {
        let Some(tls) = self.shared.tls.clone() else {
            return self.http1(stream, false, None).await;
        };
        let handshake = tokio::time::timeout(
            self.shared.limits.header_read_timeout.get(),
            tls.public.accept(stream),
        )
        .await;
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return self.refused("tls-handshake-failed", Some(&error)),
            Err(_) => return self.refused("tls-handshake-timeout", None),
        };
        let (_, session) = stream.get_ref();
        // A certificate is only ever here once the verifier accepted it.
        let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
        let hsts = tls.hsts.clone();
        if is_h2(session.alpn_protocol()) {
            self.http2(stream, client_cert, hsts).await;
        } else {
            self.http1(stream, client_cert, hsts).await;
        }
    }

    /// A handshake that failed or took too long: logged, metered and
    /// audited folded per peer network and second, like every listener
    /// refusal (T01, T09). The client got rustls' alert, if anything.
    fn refused(&self, reason: &'static str, error: Option<&std::io::Error>) {
        self.shared.metrics.refuse(reason);
        if self
            .shared
            .refusals
            .record_listener(&self.shared.audit, self.peer.ip(), reason)
        {
            let error = error.map(ToString::to_string).unwrap_or_default();
            warn!(target: "bulkhead::listener", peer = %self.peer, reason, error, "TLS handshake refused");
        }
    }

    async fn http1<I>(self, io: I, client_cert: bool, hsts: Option<HeaderValue>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // A response stream stalled past its call's deadline ends the
        // connection: hyper would wait on a client that reads nothing.
        let cut = ConnectionCut::default();
        let service = Handler::new(&self, &cut, client_cert, hsts, None);
        let connection = self.http1.serve_connection(TokioIo::new(io), service);
        let connection = self.graceful.watch(connection);
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    log_connection_error(&self.shared, self.peer, &e);
                }
            }
            () = cut.requested() => {
                debug!(target: "bulkhead::listener", peer = %self.peer, "connection cut: its response stalled");
            }
        }
    }

    async fn http2<I>(self, io: I, client_cert: bool, hsts: Option<HeaderValue>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cut = ConnectionCut::default();
        let activity = Arc::new(Activity::new());
        let service = Handler::new(&self, &cut, client_cert, hsts, Some(activity.clone()));
        let connection = self.http2.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let idle = self.shared.limits.header_read_timeout.get();
        let mut tick = tokio::time::interval(idle.min(Duration::from_secs(1)));
        let mut draining = self.draining;
        let mut closing = *draining.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        log_connection_error(&self.shared, self.peer, &e);
                    }
                    break;
                }
                _ = draining.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                // Idle like an HTTP/1.1 keep-alive connection: no request
                // for the head deadline. Streams under way still finish.
                _ = tick.tick(), if !closing => {
                    if activity.idle_for() >= idle {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = cut.requested() => {
                    debug!(target: "bulkhead::listener", peer = %self.peer, "connection cut: its response stalled");
                    break;
                }
            }
        }
    }
}

/// When an HTTP/2 connection last started a request.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// The pipeline as a hyper service for one connection: it marks requests
/// that came with a verified client certificate and adds HSTS to every
/// answer over TLS (T15).
#[derive(Clone)]
struct Handler {
    shared: Arc<Shared>,
    peer: SocketAddr,
    cut: ConnectionCut,
    client_cert: bool,
    hsts: Option<HeaderValue>,
    activity: Option<Arc<Activity>>,
}

impl Handler {
    fn new(
        connection: &Connection,
        cut: &ConnectionCut,
        client_cert: bool,
        hsts: Option<HeaderValue>,
        activity: Option<Arc<Activity>>,
    ) -> Self {
        Self {
            shared: connection.shared.clone(),
            peer: connection.peer,
            cut: cut.clone(),
            client_cert,
            hsts,
            activity,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Outgoing>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(activity) = &self.activity {
            activity.touch();
        }
        if self.client_cert {
            request.extensions_mut().insert(VerifiedClientCert);
        }
        let shared = self.shared.clone();
        let peer = self.peer.ip();
        let cut = self.cut.clone();
        let hsts = self.hsts.clone();
        Box::pin(async move {
            let mut response = pipeline::handle(shared, request, peer, cut).await;
            if let Some(hsts) = hsts {
                response
                    .headers_mut()
                    .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts);
            }
            Ok(response)
        })
    }
}
