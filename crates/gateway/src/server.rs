//! Listener stage (T01): bounded connections (in all, and per client
//! address, so one address cannot take them all), bounded request heads, a
//! deadline on reading headers (slowloris; it also closes idle keep-alive
//! connections), graceful shutdown that lets requests under way finish.
//! Each accepted connection is served by [`crate::connection`]: over TLS
//! when `[tls]` is set (T15), the handshake after its places are taken.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::caller::network_of;
use crate::connection::{Connection, http2_builder};
use crate::correlation::{CORRELATION_HEADER, TraceContext};
use crate::problem::Problem;
use crate::send_timeout::{SendTimeout, is_send_timeout};
use crate::{Gateway, Shared};

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
        let per_address = PerAddress::new(
            limits.max_connections_per_address,
            limits.max_connections_per_address < limits.max_connections,
        );
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout.get())
            .max_buf_size(limits.max_header_bytes.as_usize())
            .max_headers(limits.max_headers as usize)
            .keep_alive(true);
        let http2 = http2_builder(&limits);
        let graceful = GracefulShutdown::new();
        // HTTP/2 connections close themselves when idle, so they are
        // drained through their own signal; `h2_open` closes once the
        // last of them ended.
        let (draining, _) = tokio::sync::watch::channel(false);
        let (h2_open, mut h2_closed) = tokio::sync::mpsc::channel::<()>(1);
        // Changed certificate files are loaded for new handshakes (T15).
        let reloader = self.shared.tls.clone().map(|tls| {
            let audit = self.shared.audit.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::tls::POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let tls = tls.clone();
                    let audit = audit.clone();
                    let _ = tokio::task::spawn_blocking(move || tls.reload(&audit)).await;
                }
            })
        });
        tokio::pin!(shutdown);
        if let Some(shedder) = &self.shared.shedder {
            shedder.start(
                self.shared.app_gate.clone(),
                limits.max_outstanding_requests,
                self.shared.cluster.clone(),
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
            // One address may not take every connection (T01): its share is
            // checked first, so a flood from it never takes a global place.
            // A trusted proxy carries many clients; only the total caps it.
            let address_slot =
                if !per_address.binds || self.shared.limits.trusted_proxies.contains(peer.ip()) {
                    None
                } else {
                    match per_address.take(peer.ip()) {
                        Some(slot) => Some(slot),
                        None => {
                            let tls = self.shared.tls.is_some();
                            refuse(&self.shared, stream, peer, "address-connection-limit", tls);
                            continue;
                        }
                    }
                };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                let tls = self.shared.tls.is_some();
                refuse(&self.shared, stream, peer, "connection-limit", tls);
                continue;
            };
            let _ = stream.set_nodelay(true);
            // Closed once its client reads nothing for as long as a head may
            // take to arrive (T01).
            let stream = SendTimeout::new(stream, limits.header_read_timeout.get());
            let connection = Connection {
                shared: self.shared.clone(),
                peer,
                http1: builder.clone(),
                http2: http2.clone(),
                graceful: graceful.watcher(),
                draining: draining.subscribe(),
                _h2_open: h2_open.clone(),
            };
            tokio::spawn(async move {
                connection.run(stream).await;
                drop(permit);
                drop(address_slot);
            });
        }

        self.shared.ready.store(false, Ordering::Release);
        info!(target: "bulkhead::listener", "shutting down; draining requests under way");
        drop(listener);
        let _ = draining.send(true);
        drop(h2_open);
        let drained = async {
            graceful.shutdown().await;
            let _ = h2_closed.recv().await;
        };
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
            warn!(target: "bulkhead::listener", "drain timed out; closing remaining connections");
        }
        flusher.abort();
        self.shared.refusals.flush(&self.shared.audit, true);
        // Commit the last usage: a restart must not forget what was spent (T04).
        if let Some(meter) = &self.shared.current().meter {
            meter.close();
        }
        Ok(())
    }
}

/// Open connections per client network (IPv6 by /64, as callers are
/// keyed): a count, not a rate. Only networks with a connection open are
/// held, so it is bounded by `max_connections`. The admin listener keeps
/// one too (T01, T08).
pub(crate) struct PerAddress {
    cap: u32,
    /// False when the cap is the total: the total alone then decides.
    binds: bool,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's place in its network's share; given back on drop.
pub(crate) struct AddressSlot {
    table: Arc<PerAddress>,
    network: IpAddr,
}

impl PerAddress {
    pub(crate) fn new(cap: u32, binds: bool) -> Arc<Self> {
        Arc::new(Self {
            cap,
            binds,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `peer`, unless its network
    /// already holds its share.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let network = network_of(peer);
        let mut open = self.lock();
        let count = open.entry(network).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            network,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(count) = open.get_mut(&self.network) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.network);
            }
        }
    }
}

/// Refuse a connection before reading anything from it: a best-effort 429
/// (one non-blocking write; there is no request yet, so nothing else can
/// be answered), then close. On a TLS listener (`tls`) nothing is written
/// (T15, T01): a plaintext 429 is garbage to a TLS client and would go
/// around HSTS; the connection is closed before any handshake. Logged with its correlation ID, metered, and
/// audited folded per peer network and second (T01, T09). The admin
/// listener's refusals come here too, under their own reasons (`admin-…`).
pub(crate) fn refuse(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    reason: &'static str,
    tls: bool,
) {
    let trace = TraceContext::from_headers(&http::HeaderMap::new());
    let correlation_id = trace.correlation_id();
    shared.metrics.refuse(reason);
    // Logged like it is audited: the first per peer network and second in
    // full, the rest counted (metric, audit summary), so a flood of
    // connections cannot fill the disk through the log (T09).
    if shared
        .refusals
        .record_listener(&shared.audit, peer.ip(), reason)
    {
        warn!(target: "bulkhead::listener", peer = %peer, reason, correlation_id, "connection refused");
    }
    if !tls {
        let _ = stream.try_write(&refusal_response(reason, correlation_id));
    }
    // Read what the client already sent, so closing does not reset the
    // connection before it reads the answer; never wait for more.
    let mut sink = [0u8; 4096];
    let _ = stream.try_read(&mut sink);
    drop(stream);
}

/// The 429 for a refused connection, as bytes on the wire.
fn refusal_response(reason: &str, correlation_id: &str) -> Vec<u8> {
    let detail = if reason.ends_with("address-connection-limit") {
        "Your address has too many connections open; close one before opening another."
    } else {
        "The server has too many connections open; try again shortly."
    };
    let response = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-connections",
        "Too many connections",
        detail,
    )
    .retry_after(1)
    .close_connection()
    .into_response(correlation_id);
    let mut out = b"HTTP/1.1 429 Too Many Requests\r\n".to_vec();
    for (name, value) in response.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("{CORRELATION_HEADER}: {correlation_id}\r\n").as_bytes());
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", response.body().len()).as_bytes());
    out.extend_from_slice(response.body());
    out
}

/// The HTTP/2 error under a connection's error, if it is one.
fn http2_error(error: &hyper::Error) -> Option<&h2::Error> {
    std::error::Error::source(error)?.downcast_ref::<h2::Error>()
}

/// Malformed framing, oversized heads and slow clients end here: the HTTP
/// parser has already answered (400/431) or closed the connection.
pub(crate) fn log_connection_error(shared: &Shared, peer: SocketAddr, error: &hyper::Error) {
    let reason = if is_send_timeout(error) {
        "send-timeout"
    } else if error.is_timeout() {
        "header-timeout"
    } else if error.is_parse_too_large() {
        "head-too-large"
    } else if error.is_parse() {
        "malformed-http"
    } else if error.is_incomplete_message() || error.is_canceled() {
        "client-gone"
    } else if http2_error(error).is_some() {
        // Rapid reset, a CONTINUATION flood, broken framing (T01, T15).
        "http2-protocol-error"
    } else {
        "connection-error"
    };
    if reason == "client-gone" {
        debug!(target: "bulkhead::listener", peer = %peer, reason, "connection ended");
    } else {
        shared.metrics.refuse(reason);
        if shared
            .refusals
            .record_listener(&shared.audit, peer.ip(), reason)
        {
            // The HTTP/2 layer's own words: which frame rule was broken.
            let detail = http2_error(error).map(ToString::to_string);
            warn!(target: "bulkhead::listener", peer = %peer, reason, error = %error, detail, "connection refused");
        }
    }
}
