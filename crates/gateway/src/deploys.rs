//! Live deploys on the admin listener (T19, T18): `POST /deploys` takes a
//! bundle (the app's deployable files and a signed index of their
//! digests), `GET /deploys` lists the kept versions, `POST
//! /deploys/rollback` switches back to one of them.
//!
//! The admin listener has already checked the peer's rate, the host and
//! the admin token (T08, T17) before a request comes here. The gateway only
//! bounds and reads the bundle; the [`Deployer`] (the CLI, which knows how
//! to load an app) treats it as hostile, verifies it completely and
//! switches it in, or changes nothing and returns every problem. Every
//! deploy, refusal and rollback is logged and audited with who asked.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_store::AuditEvent;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tracing::{info, warn};

use crate::Shared;
use crate::problem::Problem;
use crate::validate;

/// The largest bundle `POST /deploys` reads (T01): components of a few
/// MiB each, with room to spare; larger is refused with 413 unread.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;
/// How long a bundle may take to arrive (slow senders, T01).
const BUNDLE_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// A rollback request is a version name in a small JSON object.
const MAX_ROLLBACK_BYTES: usize = 1024;

/// Who asked for a deploy: the admin token's public fingerprint (never the
/// token), `loopback (dev, no admin token)`, or `SIGHUP`.
#[derive(Debug, Clone)]
pub struct Who(pub String);

/// A version switched in.
#[derive(Debug)]
pub struct DeployOutcome {
    /// The version's name, as `bulkhead versions` lists it.
    pub version: String,
    /// What the client is told: the version, its digests, what changed.
    pub report: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Verification failed: nothing changed. Each problem names its file.
    #[error("the new version was refused: {}", .0.join("; "))]
    Refused(Vec<String>),
    #[error("no kept version is called `{0}`; `bulkhead versions` lists them")]
    UnknownVersion(String),
    #[error("another deploy or rollback is under way; retry once it ends")]
    Busy,
    #[error("{0}")]
    Failed(String),
}

/// Loads, verifies, switches and records versions (T19). Blocking: it
/// compiles components; the gateway runs it off the async threads.
pub trait Deployer: Send + Sync {
    /// Verify `bundle` completely and switch to it, or change nothing.
    fn deploy(
        &self,
        bundle: &[u8],
        who: &Who,
        correlation_id: &str,
    ) -> Result<DeployOutcome, DeployError>;
    /// Switch back to the kept `version`, verified again as a deploy is.
    fn rollback(
        &self,
        version: &str,
        who: &Who,
        correlation_id: &str,
    ) -> Result<DeployOutcome, DeployError>;
    /// The kept versions, newest first, and which one is serving.
    fn versions(&self) -> Result<serde_json::Value, DeployError>;
}

/// Whether the admin listener hands `path` to this module.
pub(crate) fn is_deploys(path: &str) -> bool {
    path == "/deploys" || path == "/deploys/rollback"
}

/// Answer one authenticated `/deploys` request.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    who: Who,
    correlation_id: String,
) -> Response<Bytes> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let result = answer(&shared, request, &who, &correlation_id).await;
    let mut response = match result {
        Ok(response) => response,
        Err(problem) => {
            warn!(target: "bulkhead::deploy", correlation_id, who = %who.0, method = %method, path = %path, status = problem.status.as_u16(), reason = problem.slug, "deploy request refused");
            // Verification refusals are audited by the deployer, with the
            // bundle's digests; the rest here (T09).
            if problem.slug != "deploy-refused" {
                shared.audit.record(
                    AuditEvent::new("deploy.refused")
                        .correlation_id(&correlation_id)
                        .detail("who", who.0.as_str())
                        .detail("reason", problem.slug)
                        .detail("status", problem.status.as_u16()),
                );
            }
            problem.into_response(&correlation_id)
        }
    };
    if response.status().is_client_error() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn answer(
    shared: &Shared,
    request: Request<Incoming>,
    who: &Who,
    correlation_id: &str,
) -> Result<Response<Bytes>, Problem> {
    let deployer = shared
        .deployer
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "deploys-off",
                "Live deploys are off",
                "This server does not take live deploys.",
            )
        })?;
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/deploys") => {
            let list = blocking(move || deployer.versions()).await?;
            Ok(json(StatusCode::OK, &list))
        }
        (&Method::POST, "/deploys") => {
            let bundle = read_body(request, MAX_BUNDLE_BYTES).await?;
            info!(target: "bulkhead::deploy", correlation_id, who = %who.0, bytes = bundle.len(), "deploy received: verifying");
            let (who, id) = (who.clone(), correlation_id.to_string());
            let outcome = blocking(move || deployer.deploy(&bundle, &who, &id)).await?;
            Ok(json(StatusCode::CREATED, &outcome.report))
        }
        (&Method::POST, "/deploys/rollback") => {
            let body = read_body(request, MAX_ROLLBACK_BYTES).await?;
            let version = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("version")?.as_str().map(str::to_string))
                .ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-rollback",
                        "Malformed rollback request",
                        r#"Send {"version": "NAME"}, a version `GET /deploys` lists."#,
                    )
                })?;
            let (who, id) = (who.clone(), correlation_id.to_string());
            let outcome = blocking(move || deployer.rollback(&version, &who, &id)).await?;
            Ok(json(StatusCode::OK, &outcome.report))
        }
        (_, "/deploys") => Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "/deploys takes GET (the versions) and POST (a bundle).",
        )
        .allow("GET, POST")),
        _ => Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "/deploys/rollback takes POST.",
        )
        .allow("POST")),
    }
}

/// The request body, bounded in size and time (T01): a declared length
/// over `max` is refused before a byte is read.
async fn read_body(request: Request<Incoming>, max: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bundle-too-large",
            "Bundle too large",
            format!(
                "The admin listener reads at most {max} bytes here; ship fewer or smaller files."
            ),
        )
        .close_connection()
    };
    if validate::declared_length(request.headers()).is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        BUNDLE_READ_TIMEOUT,
        Limited::new(request.into_body(), max).collect(),
    )
    .await;
    match read {
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            "The bundle did not arrive in time.",
        )
        .close_connection()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "Malformed request body",
            "The request body could not be read.",
        )
        .close_connection()),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Run the deployer off the async threads; its errors as problems.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DeployError> + Send + 'static,
) -> Result<T, Problem> {
    let result = tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| DeployError::Failed("the deploy task failed".into()))
        .and_then(|r| r);
    result.map_err(|error| match error {
        DeployError::Refused(problems) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "deploy-refused",
            "Deploy refused",
            "The new version failed verification; nothing changed. `problems` lists every reason.",
        )
        .problems(
            problems
                .iter()
                .map(|p| bulkhead_manifest::text::visible(p))
                .collect(),
        ),
        DeployError::UnknownVersion(_) => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-version",
            "No such version",
            "No kept version has that name; `GET /deploys` lists them.",
        ),
        DeployError::Busy => Problem::new(
            StatusCode::CONFLICT,
            "deploy-busy",
            "Deploy under way",
            "Another deploy or rollback is under way; retry once it ends.",
        )
        .retry_after(1),
        DeployError::Failed(reason) => {
            warn!(target: "bulkhead::deploy", error = %reason, "deploy failed");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "deploy-failed",
                "Deploy failed",
                "The server could not complete the deploy; nothing changed. Its log says why.",
            )
        }
    })
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
