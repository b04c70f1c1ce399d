//! The admin listener (T08, T17): metrics and health on a separate address,
//! never the public one, behind a bearer token stored hashed (or, in `dev`
//! on loopback with no token made yet, open to the local machine only).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bulkhead_store::AuditEvent;
use bulkhead_store::tokens::token_matches;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::correlation::{CORRELATION_HEADER, TraceContext};
use crate::problem::Problem;
use crate::{Gateway, Shared};

const MAX_ADMIN_CONNECTIONS: usize = 16;
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may use the admin listener.
pub enum AdminAccess {
    /// No token: only for `dev` on a loopback address.
    LoopbackOpen,
    /// A bearer token whose SHA-256 is among those the closure returns
    /// (read on each request, so new and revoked tokens apply at once).
    Token(Box<dyn Fn() -> Vec<[u8; 32]> + Send + Sync>),
}

impl Gateway {
    /// Serve `/metrics`, `/healthz` and `/readyz` until `shutdown`.
    pub async fn serve_admin(
        self,
        listener: TcpListener,
        access: AdminAccess,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let access = Arc::new(access);
        let connections = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(ADMIN_HEADER_TIMEOUT)
            .keep_alive(true);
        tokio::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                continue;
            };
            let shared = self.shared.clone();
            let access = access.clone();
            let service = service_fn(move |request| {
                let response = handle(&shared, &access, &request).map(Full::new);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = connection.await;
                drop(permit);
            });
        }
    }
}

fn handle(shared: &Shared, access: &AdminAccess, request: &Request<Incoming>) -> Response<Bytes> {
    let trace = TraceContext::from_headers(request.headers());
    let path = request.uri().path();
    let mut response = match authorize(access, request) {
        Err(problem) => {
            warn!(target: "bulkhead::admin", correlation_id = trace.correlation_id(), path, reason = problem.slug, "admin request refused");
            shared.audit.record(
                AuditEvent::new("admin.refused")
                    .correlation_id(trace.correlation_id())
                    .detail("reason", problem.slug)
                    .detail("path", path),
            );
            problem.into_response(trace.correlation_id())
        }
        Ok(()) => route(shared, request, trace.correlation_id()),
    };
    if let Ok(id) = HeaderValue::from_str(trace.correlation_id()) {
        response.headers_mut().insert(CORRELATION_HEADER, id);
    }
    info!(target: "bulkhead::admin", correlation_id = trace.correlation_id(), path, status = response.status().as_u16(), "admin request");
    response
}

fn authorize(access: &AdminAccess, request: &Request<Incoming>) -> Result<(), Problem> {
    let AdminAccess::Token(hashes) = access else {
        return Ok(());
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let unauthorized = |slug, detail: &str| {
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
        Some(token) if token_matches(token.trim(), &hashes()) => Ok(()),
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
            let live = shared
                .functions
                .first()
                .map_or(0, |f| f.function.live_instances());
            let outstanding = shared
                .functions
                .iter()
                .map(|slot| (slot.function.name(), slot.gate.outstanding()));
            if let Some(meter) = &shared.meter {
                shared.metrics.set_budget_shares(meter.shares());
            }
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
            "The admin listener serves /metrics, /healthz and /readyz.",
        )
        .into_response(correlation_id),
    }
}
