//! Why the gateway refuses a request: one typed vocabulary for every stage
//! of the pipeline, mapped in one place to what the client gets (an RFC
//! 9457 problem, [`Refused::into_problem`]) and to what the access log and
//! the audit record get besides its slug ([`Refused::detail`]), which the
//! client never sees. Each stage returns `Result<_, Refused>`; `pipeline`
//! lists the stages.

use std::time::Duration;

use bulkhead_runtime::InvokeError;
use http::StatusCode;

use crate::problem::Problem;
use crate::{admission, authn, budget, respond, validate};

pub(crate) enum Refused {
    /// T10: the host, path, query, headers or body broke an input rule.
    Invalid(validate::Refusal),
    /// No route takes this method on this path; `allow` lists those that do.
    MethodNotAllowed { allow: String },
    /// No route matches the path.
    NotFound,
    /// T15: the route serves only callers whose connection presented a
    /// client certificate the server verified.
    ClientCertificateRequired,
    /// T11, T12: authentication, authorization or sign-in refused it; the
    /// refusal carries its own problem (challenge headers, cookies).
    Auth(authn::Refusal),
    /// T02, T03: over a per-caller rate limit. `after`: the failed
    /// authentication that was charged to the limit, when there was one.
    RateLimited {
        wait: Duration,
        after: Option<String>,
    },
    /// T01, T02: not admitted at the app's or the function's gate (its
    /// bound, or the caller's share of it).
    Admission {
        why: admission::Refused,
        scope: &'static str,
    },
    /// T01: shed by the dynamic throttle.
    Overloaded {
        scope: &'static str,
        retry_after: u64,
    },
    /// T01: admitted, but pushed out of the queue for a running slot.
    PushedOut { scope: &'static str },
    /// T01: waited its function's timeout for a running slot.
    QueueTimeout,
    /// T01: the body is larger than the function accepts.
    BodyTooLarge { max: usize },
    /// T01: the body did not arrive in time.
    BodyTimeout,
    /// The body could not be read (framing, a connection error).
    BadBody { error: String },
    /// T04: a daily budget is spent, or held by running calls.
    Budget(budget::Exhausted),
    /// The path or host cannot make the function's request URI.
    BadRequestTarget,
    /// T05: the function failed, trapped or timed out.
    Invoke(InvokeError),
}

impl Refused {
    /// A gate's refusal: the throttle's has a Retry-After of its own.
    pub(crate) fn admission(
        why: admission::Refused,
        scope: &'static str,
        throttle_retry_after: impl FnOnce() -> u64,
    ) -> Self {
        match why {
            admission::Refused::Overloaded => Self::Overloaded {
                scope,
                retry_after: throttle_retry_after(),
            },
            why => Self::Admission { why, scope },
        }
    }

    /// What the access log and the audit record say besides the slug:
    /// ours, or the client's text capped by the caller (T09).
    pub(crate) fn detail(&self) -> Option<String> {
        match self {
            Self::Invalid(refusal) => Some(refusal.to_string()),
            Self::Auth(refusal) => Some(refusal.reason.clone()),
            Self::RateLimited { after, .. } => after.clone(),
            Self::Admission { why, scope } => Some(why.describe(scope)),
            Self::Overloaded { scope, .. } => Some(admission::Refused::Overloaded.describe(scope)),
            Self::BadBody { error } => Some(error.clone()),
            Self::Invoke(error) => Some(error.to_string()),
            Self::MethodNotAllowed { .. }
            | Self::NotFound
            | Self::ClientCertificateRequired
            | Self::PushedOut { .. }
            | Self::QueueTimeout
            | Self::BodyTooLarge { .. }
            | Self::BodyTimeout
            | Self::Budget(_)
            | Self::BadRequestTarget => None,
        }
    }

    /// The problem the client gets: written by us, never an echo.
    pub(crate) fn into_problem(self) -> Problem {
        use StatusCode as S;
        let too_many = |scope: &str| {
            Problem::new(
                S::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
                format!("The {scope} has as many requests outstanding as it accepts; retry later."),
            )
            .retry_after(1)
        };
        match self {
            Self::Invalid(refusal) => refusal.to_problem(),
            Self::MethodNotAllowed { allow } => Problem::new(
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "This route does not accept that method; the Allow header lists the ones it does.",
            )
            .allow(&allow),
            Self::NotFound => Problem::new(
                S::NOT_FOUND,
                "not-found",
                "Not found",
                "No function is served on this path.",
            ),
            Self::ClientCertificateRequired => Problem::new(
                S::UNAUTHORIZED,
                "client-certificate-required",
                "Client certificate required",
                "This route accepts only callers that present a client certificate the server trusts.",
            ),
            Self::Auth(refusal) => *refusal.problem,
            Self::RateLimited { wait, .. } => Problem::new(
                S::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limit reached",
                "You are sending requests faster than this service allows; wait as long as Retry-After says.",
            )
            .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64),
            Self::Admission {
                why: admission::Refused::CallerShare,
                scope,
            } => Problem::new(
                S::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
                format!(
                    "You have as many requests outstanding at the {scope} as one caller may; retry once one has finished."
                ),
            )
            .retry_after(1),
            Self::Admission { scope, .. } | Self::PushedOut { scope } => too_many(scope),
            Self::Overloaded { retry_after, .. } => Problem::new(
                S::TOO_MANY_REQUESTS,
                "overloaded",
                "Service overloaded",
                "The service is shedding load to stay up; retry after the time Retry-After gives.",
            )
            .retry_after(retry_after),
            Self::QueueTimeout => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "queue-timeout",
                "Service busy",
                "The request waited too long for a free slot; retry later.",
            )
            .retry_after(1),
            Self::BodyTooLarge { max } => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!("This function accepts request bodies of at most {max} bytes."),
            )
            .close_connection(),
            Self::BodyTimeout => Problem::new(
                S::REQUEST_TIMEOUT,
                "body-timeout",
                "Request body too slow",
                "The request body did not arrive in time.",
            )
            .close_connection(),
            Self::BadBody { .. } => Problem::new(
                S::BAD_REQUEST,
                "bad-body",
                "Malformed request body",
                "The request body could not be read.",
            )
            .close_connection(),
            Self::Budget(exhausted) => exhausted.problem(),
            Self::BadRequestTarget => Problem::new(
                S::BAD_REQUEST,
                "bad-request-target",
                "Malformed request target",
                "The request's path or Host header is not valid.",
            ),
            Self::Invoke(error) => respond::invoke_problem(&error),
        }
    }
}

impl From<validate::Refusal> for Refused {
    fn from(refusal: validate::Refusal) -> Self {
        Self::Invalid(refusal)
    }
}

impl From<authn::Refusal> for Refused {
    fn from(refusal: authn::Refusal) -> Self {
        Self::Auth(refusal)
    }
}

impl From<budget::Exhausted> for Refused {
    fn from(exhausted: budget::Exhausted) -> Self {
        Self::Budget(exhausted)
    }
}
