//! The admin listener (T08, T17): metrics and health on a separate address,
//! never the public one, behind a bearer token stored hashed (or, in `dev`
//! on loopback with no token made yet, open to the local machine only).
//!
//! A flood of admin requests is bounded (T09): each peer (IPv6 by /64) is
//! rate-limited, refusals are audited folded per peer and second, and the
//! client's path is recorded only capped ([`client_text`]).
//!
//! Its connections are bounded in all and per peer (T01, T08): one address
//! holds at most [`MAX_ADMIN_CONNECTIONS_PER_PEER`] of them, and a refused
//! answer closes its connection, so no one keeps a place with refused
//! requests; idle connections end at the header deadline. A connection
//! over either cap gets the public listener's best-effort 429 and is
//! logged, metered and audited folded like its refusals.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_store::tokens::token_matches;
use bytes::Bytes;
use governor::Quota;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::audit::{AdminFacts, client_text};
use crate::caller::network_of;
use crate::correlation::{CORRELATION_HEADER, TraceContext};
use crate::deploys::{self, Who};
use crate::problem::Problem;
use crate::ratelimit::KeyedLimiter;
use crate::server::{PerAddress, refuse};
use crate::validate;
use crate::{Gateway, Shared};

const MAX_ADMIN_CONNECTIONS: usize = 16;
/// One peer network's share of [`MAX_ADMIN_CONNECTIONS`] (T01, T08): a
/// scraper and a few probes, never every place.
const MAX_ADMIN_CONNECTIONS_PER_PEER: u32 = 4;
/// The deadline for a request's head (slowloris), and so how long an idle
/// keep-alive connection keeps its place: hyper runs it while it waits for
/// the next request (T01).
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin requests per second per peer, and the burst (T09): ample for
/// scrapes and probes, far below what fills a disk.
const ADMIN_RATE_PER_SECOND: u32 = 20;
const ADMIN_BURST: u32 = 40;
/// How old the token list may be: a token made or revoked with
/// `bulkhead admin token` applies within this, without a restart, and a
/// flood reads the store at most this often.
const TOKEN_REFRESH: Duration = Duration::from_millis(250);

/// Reads the SHA-256 of every admin token from the store; an `Err` when
/// the store cannot be read.
type TokenReader = Box<dyn Fn() -> Result<Vec<[u8; 32]>, String> + Send + Sync>;
type TokenHashes = Arc<Vec<[u8; 32]>>;

/// Who may use the admin listener.
pub struct AdminAccess {
    /// The SHA-256 of every admin token, read from the store.
    read: TokenReader,
    /// `dev` on loopback: open while no token exists. Once one exists,
    /// tokens are required until the process ends (revoking them all does
    /// not reopen it).
    open_until_token: bool,
    /// Set once a token has been seen (at start, too); then the listener
    /// is never open.
    token_seen: AtomicBool,
    /// The hashes last read (None until a read succeeds), and when the
    /// store was last asked.
    cache: Mutex<TokenCache>,
    /// Serve over TLS and require a client certificate verified against
    /// `[tls] client_ca` before any request is read (T15, T17).
    client_certificates: bool,
}

struct TokenCache {
    asked_at: Instant,
    hashes: Option<TokenHashes>,
    /// The last read failed: logged once, until a read succeeds again.
    failing: bool,
}

/// What the admin listener asks of a request.
enum Gate {
    /// `dev` on loopback with no token: no token asked.
    Open,
    /// A token among these (none: every request is refused).
    Tokens(TokenHashes),
}

impl AdminAccess {
    /// A bearer token whose SHA-256 is among those `read` returns.
    pub fn token(read: TokenReader) -> Self {
        Self::new(read, false)
    }

    /// For `dev` on a loopback address: open to this machine until the
    /// first admin token is created (which applies without a restart),
    /// then tokens as in [`Self::token`].
    pub fn open_until_token(read: TokenReader) -> Self {
        Self::new(read, true)
    }

    /// The tokens are read once now: a token present at start closes the
    /// `dev` listener for good at once, even if it is revoked before the
    /// first admin request (T08).
    fn new(read: TokenReader, open_until_token: bool) -> Self {
        let access = Self {
            read,
            open_until_token,
            token_seen: AtomicBool::new(false),
            cache: Mutex::new(TokenCache {
                asked_at: Instant::now(),
                hashes: None,
                failing: false,
            }),
            client_certificates: false,
        };
        access.refresh(&mut access.lock());
        access
    }

    /// Also require TLS with a client certificate verified against the
    /// app's `[tls] client_ca` (mTLS), on top of the tokens (T15, T17).
    pub fn require_client_certificate(mut self) -> Self {
        self.client_certificates = true;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask the store. A failed read keeps the hashes last read (T08: never
    /// "no tokens", which would open the `dev` listener); with none read
    /// yet, every request is refused until a read succeeds.
    fn refresh(&self, cache: &mut TokenCache) {
        cache.asked_at = Instant::now();
        match (self.read)() {
            Ok(hashes) => {
                if cache.failing {
                    info!(target: "bulkhead::admin", "the admin tokens can be read again");
                }
                cache.failing = false;
                if !hashes.is_empty()
                    && self.open_until_token
                    && !self.token_seen.swap(true, Ordering::AcqRel)
                    && cache.hashes.is_some()
                {
                    info!(target: "bulkhead::admin", "an admin token exists: the admin listener now requires one");
                }
                cache.hashes = Some(Arc::new(hashes));
            }
            Err(error) => {
                // Once per failing spell, not per request (T09).
                if !cache.failing {
                    warn!(target: "bulkhead::admin", error = %error, kept = cache.hashes.is_some(), "cannot read the admin tokens: the last ones read still apply (none read yet: every admin request is refused)");
                }
                cache.failing = true;
            }
        }
    }

    /// Whether the `dev` listener is still open and needs watching.
    fn watching(&self) -> bool {
        self.open_until_token && !self.token_seen.load(Ordering::Acquire)
    }

    /// Re-read the store if the last read is older than [`TOKEN_REFRESH`]:
    /// run in the background while the `dev` listener is open, so that a
    /// token created and revoked between two admin requests still closes
    /// it for good (T08).
    fn watch(&self) {
        let mut cache = self.lock();
        if cache.asked_at.elapsed() >= TOKEN_REFRESH {
            self.refresh(&mut cache);
        }
    }

    /// What a request must show now; the token list is re-read from the
    /// store when older than [`TOKEN_REFRESH`].
    fn gate(&self) -> Gate {
        let mut cache = self.lock();
        if cache.asked_at.elapsed() >= TOKEN_REFRESH {
            self.refresh(&mut cache);
        }
        match &cache.hashes {
            // Open without a token: `dev` on loopback while no token
            // exists or has ever been seen by this process.
            Some(hashes)
                if hashes.is_empty()
                    && self.open_until_token
                    && !self.token_seen.load(Ordering::Acquire) =>
            {
                Gate::Open
            }
            Some(hashes) => Gate::Tokens(hashes.clone()),
            // Never read: closed (T08).
            None => Gate::Tokens(Arc::new(Vec::new())),
        }
    }
}

/// Per-peer rate limit of the admin listener (T09), keyed by network
/// (IPv6 by /64).
fn peer_limiter() -> KeyedLimiter<IpAddr> {
    let rate = NonZeroU32::new(ADMIN_RATE_PER_SECOND).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(ADMIN_BURST).unwrap_or(NonZeroU32::MIN);
    KeyedLimiter::with_quota(Quota::per_second(rate).allow_burst(burst))
}

impl Gateway {
    /// Serve `/metrics`, `/healthz` and `/readyz` until `shutdown`.
    pub async fn serve_admin(
        self,
        listener: TcpListener,
        access: AdminAccess,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        // mTLS: the handshake requires a client certificate (T15).
        let acceptor = match (access.client_certificates, &self.shared.tls) {
            (false, _) => None,
            (true, Some(tls)) if tls.admin.is_some() => tls.admin.clone(),
            (true, _) => {
                return Err(std::io::Error::other(
                    "the admin listener requires client certificates but `[tls] client_ca` is not set",
                ));
            }
        };
        let access = Arc::new(access);
        // While the `dev` listener is open, the store is watched even when
        // no admin request comes; it stops once a token has been seen.
        let watcher = access.watching().then(|| {
            let access = access.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TOKEN_REFRESH);
                while access.watching() {
                    tick.tick().await;
                    let access = access.clone();
                    let _ = tokio::task::spawn_blocking(move || access.watch()).await;
                }
            })
        });
        let limiter = Arc::new(peer_limiter());
        let connections = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
        let per_peer = PerAddress::new(MAX_ADMIN_CONNECTIONS_PER_PEER, true);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(ADMIN_HEADER_TIMEOUT)
            .keep_alive(true);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // One peer may not hold every admin connection (T01, T08): its
            // share is checked first, so its flood never takes a global
            // place. Refusals are answered, logged, metered and audited
            // folded (T09), as on the public listener.
            let Some(peer_slot) = per_peer.take(peer.ip()) else {
                refuse(
                    &self.shared,
                    stream,
                    peer,
                    "admin-address-connection-limit",
                    acceptor.is_some(),
                );
                continue;
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                refuse(
                    &self.shared,
                    stream,
                    peer,
                    "admin-connection-limit",
                    acceptor.is_some(),
                );
                continue;
            };
            let shared = self.shared.clone();
            let access = access.clone();
            let limiter = limiter.clone();
            // The client certificate's fingerprint, once mTLS has checked
            // it: who a deploy names beside the token (T19).
            let certificate = Arc::new(std::sync::OnceLock::<String>::new());
            let presented = certificate.clone();
            let service = service_fn(move |request| {
                let mut handled = handle(&shared, &access, &limiter, peer, &request);
                if let (Handled::Deploys(who, _), Some(cert)) = (&mut handled, presented.get()) {
                    who.0
                        .push_str(&format!(", client certificate sha256:{cert}"));
                }
                let shared = shared.clone();
                async move {
                    let response = match handled {
                        Handled::Answered(response) => response,
                        // `/deploys` reads a body: answered by its module (T19).
                        Handled::Deploys(who, correlation_id) => {
                            let mut response =
                                deploys::serve(shared, request, who, correlation_id.clone()).await;
                            if let Ok(id) = HeaderValue::from_str(&correlation_id) {
                                response.headers_mut().insert(CORRELATION_HEADER, id);
                            }
                            response
                        }
                    };
                    Ok::<_, std::convert::Infallible>(response.map(Full::new))
                }
            });
            let builder = builder.clone();
            let acceptor = acceptor.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(ADMIN_HEADER_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                if let Some(leaf) = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|chain| chain.first())
                                {
                                    let _ = certificate
                                        .set(hex::encode(&Sha256::digest(leaf.as_ref())[..8]));
                                }
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                            Ok(Err(error)) => {
                                admin_handshake_refused(&shared, peer, Some(&error));
                            }
                            Err(_) => admin_handshake_refused(&shared, peer, None),
                        }
                    }
                }
                drop(permit);
                drop(peer_slot);
            });
        }
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        // The folded counts of the last seconds (T09).
        self.shared.refusals.flush(&self.shared.audit, true);
        Ok(())
    }
}

/// An admin request answered at once, or let through to `/deploys`.
enum Handled {
    Answered(Response<Bytes>),
    Deploys(Who, String),
}

/// A client without a trusted certificate (or too slow to show one):
/// logged, metered and audited folded, like every admin refusal (T09).
fn admin_handshake_refused(shared: &Shared, peer: SocketAddr, error: Option<&std::io::Error>) {
    let reason = if error.is_some() {
        "admin-tls-handshake-failed"
    } else {
        "admin-tls-handshake-timeout"
    };
    shared.metrics.refuse(reason);
    if shared
        .refusals
        .record_listener(&shared.audit, peer.ip(), reason)
    {
        let error = error.map(ToString::to_string).unwrap_or_default();
        warn!(target: "bulkhead::admin", peer = %peer, reason, error, "admin TLS handshake refused");
    }
}

fn handle(
    shared: &Shared,
    access: &AdminAccess,
    limiter: &KeyedLimiter<IpAddr>,
    peer: SocketAddr,
    request: &Request<Incoming>,
) -> Handled {
    let trace = TraceContext::from_headers(request.headers());
    let correlation_id = trace.correlation_id();
    // Whatever the client wrote is recorded capped (T09).
    let path = client_text(request.uri().path());
    let method = client_text(request.method().as_str());
    let checked = limiter
        .check(&network_of(peer.ip()))
        .map_err(rate_limited)
        .and_then(|()| check_host(access, request))
        .and_then(|()| authorize(access, request, peer));
    let mut response = match checked {
        Err(problem) => {
            let status = problem.status.as_u16();
            warn!(target: "bulkhead::admin", correlation_id, method = %method, path = %path, peer = %peer.ip(), status, reason = problem.slug, "admin request refused");
            shared.refusals.record_admin(
                &shared.audit,
                peer.ip(),
                AdminFacts {
                    correlation_id,
                    method: &method,
                    path: &path,
                    status,
                    reason: problem.slug,
                },
            );
            problem.into_response(correlation_id)
        }
        Ok(who) if deploys::is_deploys(request.uri().path()) => {
            info!(target: "bulkhead::admin", correlation_id, method = %method, path = %path, who = %who.0, "admin request");
            return Handled::Deploys(who, correlation_id.to_string());
        }
        Ok(_) => {
            let response = route(shared, request, correlation_id);
            info!(target: "bulkhead::admin", correlation_id, method = %method, path = %path, status = response.status().as_u16(), "admin request");
            response
        }
    };
    if let Ok(id) = HeaderValue::from_str(correlation_id) {
        response.headers_mut().insert(CORRELATION_HEADER, id);
    }
    // A refused request (401, 404, 429, ...) ends its connection (T01,
    // T08): otherwise one refused request every few seconds would keep a
    // connection, and its place, forever without a token.
    if response.status().is_client_error() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Handled::Answered(response)
}

fn rate_limited(wait: Duration) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many admin requests",
        "This address sent admin requests faster than the admin listener allows; retry after the time in Retry-After.",
    )
    .retry_after(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// Host names a browser on this machine uses for a loopback listener.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The Host rules of the public listener (T10). While the listener is open
/// without a token (`dev` on loopback), the host must also be a loopback
/// name: a web page whose own name was rebound to 127.0.0.1 (DNS
/// rebinding) sends its own name as `Host` and is refused.
fn check_host(access: &AdminAccess, request: &Request<Incoming>) -> Result<(), Problem> {
    let loopback: Vec<String>;
    let allowed = if matches!(access.gate(), Gate::Open) {
        loopback = LOOPBACK_HOSTS.iter().map(|h| (*h).to_string()).collect();
        Some(loopback.as_slice())
    } else {
        None
    };
    validate::check_host(request.version(), request.uri(), request.headers(), allowed)
        .map(drop)
        .map_err(|refusal| refusal.to_problem())
}

/// Who the request comes from: the admin token's public fingerprint (the
/// first bytes of the SHA-256 the store keeps, never the token), or the
/// peer when `dev` is open without a token.
fn authorize(
    access: &AdminAccess,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Who, Problem> {
    let hashes = match access.gate() {
        Gate::Open => return Ok(Who(format!("loopback {} (dev, no admin token)", peer.ip()))),
        Gate::Tokens(hashes) => hashes,
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let unauthorized = |slug, detail: &'static str| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            slug,
            "Admin token required",
            detail,
        )
        .challenge("Bearer realm=\"bulkhead-admin\"")
    };
    match presented {
        None => Err(unauthorized(
            "admin-token-missing",
            "Send an admin token as `Authorization: Bearer …`; create one with `bulkhead admin token`.",
        )),
        Some(token) if token_matches(token.trim(), hashes.as_slice()) => {
            let hash = Sha256::digest(token.trim().as_bytes());
            Ok(Who(format!(
                "admin-token sha256:{}",
                hex::encode(&hash[..8])
            )))
        }
        Some(_) => Err(unauthorized(
            "admin-token-invalid",
            "The admin token is not valid.",
        )),
    }
}

fn route(shared: &Shared, request: &Request<Incoming>, correlation_id: &str) -> Response<Bytes> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    if request.method() != http::Method::GET {
        return Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "The admin endpoints answer GET only.",
        )
        .allow("GET")
        .into_response(correlation_id);
    }
    match request.uri().path() {
        "/metrics" => {
            let version = shared.current();
            let live = version
                .functions
                .first()
                .map_or(0, |f| f.function.live_instances());
            let outstanding = version
                .functions
                .iter()
                .map(|slot| (slot.function.name(), slot.gate.outstanding()));
            if let Some(meter) = &version.meter {
                shared.metrics.set_budget_shares(meter.shares());
            }
            shared.metrics.set_audit(shared.audit.status());
            if let Some(shedder) = &shared.shedder {
                shared
                    .metrics
                    .set_throttle(shedder.shedding(), shedder.last());
            }
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.render(live, outstanding),
            )
        }
        "/healthz" => text(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        "/readyz" => {
            if shared.ready.load(Ordering::Acquire) {
                text(
                    StatusCode::OK,
                    "application/json",
                    r#"{"status":"ready"}"#.into(),
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    r#"{"status":"not ready"}"#.into(),
                )
            }
        }
        _ => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "The admin listener serves /metrics, /healthz, /readyz and /deploys.",
        )
        .into_response(correlation_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Store = Arc<Mutex<Result<Vec<[u8; 32]>, String>>>;

    /// An access whose token store is `store`, as the test sets it.
    fn access(store: &Store, open_until_token: bool) -> AdminAccess {
        let store = store.clone();
        let read: TokenReader =
            Box::new(move || store.lock().unwrap_or_else(|p| p.into_inner()).clone());
        if open_until_token {
            AdminAccess::open_until_token(read)
        } else {
            AdminAccess::token(read)
        }
    }

    fn set(store: &Store, value: Result<Vec<[u8; 32]>, String>) {
        *store.lock().unwrap_or_else(|p| p.into_inner()) = value;
    }

    /// The next `gate()` reads the store again (no waiting).
    fn expire(access: &AdminAccess) {
        let mut cache = access.lock();
        if let Some(old) = Instant::now().checked_sub(TOKEN_REFRESH) {
            cache.asked_at = old;
        }
    }

    fn tokens(gate: Gate) -> Option<Vec<[u8; 32]>> {
        match gate {
            Gate::Open => None,
            Gate::Tokens(hashes) => Some(hashes.to_vec()),
        }
    }

    /// T08 (second attack, info): a token present when `dev` starts closes
    /// its listener for good at once; revoking every token before the
    /// first admin request does not reopen it.
    #[test]
    fn a_token_present_at_start_keeps_dev_closed_t08() {
        let store: Store = Arc::new(Mutex::new(Ok(vec![[1; 32]])));
        let access = access(&store, true);
        set(&store, Ok(Vec::new()));
        expire(&access);
        assert_eq!(tokens(access.gate()), Some(Vec::new()), "closed, no token");
    }

    /// T08 (second attack, info): a failed read of the token store is not
    /// "no tokens" (which opened the `dev` listener): the tokens last read
    /// still apply, and with none read yet every request is refused.
    #[test]
    fn a_failed_token_read_fails_closed_t08() {
        // No read has ever succeeded: closed, even in `dev`.
        let store: Store = Arc::new(Mutex::new(Err("disk I/O error".into())));
        let access_dev = access(&store, true);
        assert_eq!(tokens(access_dev.gate()), Some(Vec::new()));
        // The store comes back with no token: `dev` opens as it should.
        set(&store, Ok(Vec::new()));
        expire(&access_dev);
        assert_eq!(tokens(access_dev.gate()), None);

        // A token was read; then the store fails: the token still applies.
        let store: Store = Arc::new(Mutex::new(Ok(vec![[2; 32]])));
        let access_token = access(&store, false);
        set(&store, Err("database is locked".into()));
        for _ in 0..3 {
            expire(&access_token);
            assert_eq!(tokens(access_token.gate()), Some(vec![[2; 32]]));
        }
    }
}
