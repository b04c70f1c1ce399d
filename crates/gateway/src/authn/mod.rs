//! Authentication and authorization stage (T11, T12, T03). Every route is
//! authenticated unless the manifest says `auth = "public"`. A caller
//! presents `Authorization: Bearer …`: a signed JWT, an encrypted JWT
//! (JWE), a session token (`bhs_…`) or an API key (`bhk_…`). The verified
//! identity reaches the function as `bulkhead-subject`, `bulkhead-credential`,
//! `bulkhead-issuer` (JWTs) and `bulkhead-scopes`; everything the gateway
//! keys on a caller uses the subject qualified by kind and issuer
//! ([`principal`]). Refusals say as little as RFC 6750 allows, and the
//! log says exactly why.

mod backoff;
mod jwe;
mod jwt;
mod parsed_keys;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_manifest::{Access, App, CredentialKind};
use bulkhead_store::credentials::{Kind, SharedCredentials};
use http::{HeaderMap, StatusCode, header};

use crate::problem::Problem;
use backoff::FailedAuthThrottle;
use jwe::JweOpener;
use jwt::JwtVerifier;

/// Longest `Authorization` value looked at; longer is refused unread.
const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// Who the caller is, once verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject as its credential names it (a JWT's `sub`, the subject
    /// a key or session was made for).
    pub subject: String,
    /// The JWT issuer that vouches for `subject`; `None` for the gateway's
    /// own credentials (sessions, API keys).
    pub issuer: Option<String>,
    /// `subject` qualified by kind and issuer ([`principal`]): what rate
    /// limits, budgets, subject-scoped data and the records key on.
    pub principal: String,
    pub scopes: Vec<String>,
    pub kind: CredentialKind,
    /// Authenticated by the sign-in session cookie (issue 15): a
    /// state-changing request must then be same-origin (CSRF).
    pub via_cookie: bool,
}

/// Characters escaped in an issuer inside a principal: `:` ends it, `%`
/// escapes, controls never reach a record.
const ISSUER_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b':');

/// One namespace per credential kind and issuer (T13, T11): an API key made
/// for `ci-bot`, a session for `ci-bot` and a JWT with `sub = ci-bot` are
/// three callers: `api-key:ci-bot`, `session:ci-bot` and
/// `jwt:ISSUER:ci-bot`, the issuer with `%` and `:` percent-escaped so the
/// first `:` after it ends it (`jwt:https%3A//idp.example.com/:ci-bot`).
pub fn principal(kind: CredentialKind, issuer: Option<&str>, subject: &str) -> String {
    match issuer {
        Some(issuer) => format!(
            "{}:{}:{subject}",
            kind.as_str(),
            percent_encoding::utf8_percent_encode(issuer, ISSUER_ESCAPES)
        ),
        None => format!("{}:{subject}", kind.as_str()),
    }
}

/// A verified token's claims, before the kind is known.
pub struct Verified {
    pub subject: String,
    pub scopes: Vec<String>,
}

/// A refusal: the problem for the client and the precise reason for the log.
pub struct Refusal {
    /// Boxed: refusals are the rare path, keep `Result` small.
    pub problem: Box<Problem>,
    pub reason: String,
    /// Who was refused, when the credential itself was valid (403).
    pub subject: Option<String>,
}

pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    jwe: Option<JweOpener>,
    /// Where sessions and API keys are checked (its backend reuses its
    /// connections across requests).
    credentials: SharedCredentials,
    /// Shared with the versions that follow (T03, T19): a deploy does not
    /// forgive a client's failed attempts.
    throttle: Arc<FailedAuthThrottle>,
    /// `[auth.login]` is configured: the session cookie is a credential.
    cookies: bool,
}

impl Authenticator {
    /// Set up from the app's `[auth]`; keys are loaded now, so a bad JWKS
    /// or JWE key fails the deploy rather than the first request.
    pub fn new(app: &App, credentials: SharedCredentials) -> Result<Self, String> {
        Self::after(app, credentials, None, None)
    }

    /// [`Self::new`] for the version that follows `previous`, keeping its
    /// failed-authentication throttle (its settings are restart-only);
    /// `cluster`, where the throttle is shared with the other nodes
    /// (issue 16), if anywhere.
    pub(crate) fn after(
        app: &App,
        credentials: SharedCredentials,
        previous: Option<&Self>,
        cluster: Option<&Arc<crate::cluster::ClusterLimits>>,
    ) -> Result<Self, String> {
        let jwt = app.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        let jwe = app
            .jwt
            .as_ref()
            .and_then(|j| j.jwe.as_ref())
            .map(JweOpener::new)
            .transpose()?;
        Ok(Self {
            jwt,
            jwe,
            credentials,
            throttle: match previous {
                Some(previous) => previous.throttle.clone(),
                None => Arc::new(FailedAuthThrottle::in_cluster(
                    app.failed_auth_per_minute,
                    app.auth_backoff_decay.get(),
                    cluster,
                )),
            },
            cookies: app.login.is_some(),
        })
    }

    /// If the failed-authentication back-off (T03) shuts `peer` out now,
    /// for how much longer: sign-in's callback checks it too.
    pub(crate) fn backed_off(&self, peer: IpAddr) -> Option<Duration> {
        self.throttle.blocked(peer)
    }

    /// Count a failed authentication from `peer` that happened outside
    /// [`Self::check`] (a sign-in whose code exchange failed); the penalty
    /// if one starts now.
    pub(crate) fn count_failure(&self, peer: IpAddr) -> Option<Duration> {
        self.throttle.failed(peer)
    }

    /// Authenticate and authorize a request for a function with `access`.
    /// Asks Redis about the back-off when the app is in a cluster.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        access: &Access,
        peer: IpAddr,
    ) -> Result<Option<Identity>, Refusal> {
        let Access::Authenticated { kinds, scopes } = access else {
            return Ok(None);
        };
        // What is remembered of the credential presented (one header: two
        // are refused below anyway).
        // With sign-in at the gateway the session may come as its cookie:
        // a cookie accepted before passes a back-off like a header does
        // (T03, T12; outside review: signed-in browsers were shut out by a
        // guesser sharing their address).
        let presented = match headers.get(header::AUTHORIZATION) {
            Some(value) => Some(backoff::fingerprint(value.as_bytes())),
            None if self.cookies => crate::login::cookies::session(headers)
                .ok()
                .flatten()
                .map(|token| backoff::fingerprint(token.as_bytes())),
            None => None,
        };
        if let Some(wait) = self.throttle.blocked_anywhere(peer).await {
            // T03: during a back-off only a credential accepted before gets
            // verified; a guess never is one (see `backoff`).
            let known = match &presented {
                Some(f) => self.throttle.is_known_anywhere(f).await,
                None => false,
            };
            if !known {
                return Err(backoff_refusal(wait));
            }
        }
        let identity = match self.authenticate(headers, kinds) {
            Ok(identity) => identity,
            Err(mut refusal) => {
                let by_cookie = self.cookies
                    && refusal.problem.slug == "invalid-token"
                    && headers.get(header::AUTHORIZATION).is_none();
                // A session cookie that no longer opens anything is cleared
                // (T12, outside review: browsers kept sending it). One the
                // store knows as expired or revoked was a real session (256
                // random bits are not guessed): no strike for the address
                // (T03). An unknown one still counts as a guess.
                let stale = by_cookie
                    && [
                        bulkhead_store::credentials::Rejection::Expired.as_str(),
                        bulkhead_store::credentials::Rejection::Revoked.as_str(),
                    ]
                    .contains(&refusal.reason.as_str());
                if by_cookie
                    && let Some(clear) =
                        crate::login::cookies::clear(crate::login::cookies::SESSION)
                {
                    refusal.problem = Box::new(refusal.problem.set_cookie(clear));
                }
                // Only a presented, wrong credential counts as a guess.
                if refusal.problem.slug == "invalid-token"
                    && !stale
                    && let Some(wait) = self.throttle.failed_anywhere(peer).await
                {
                    return Err(Refusal {
                        reason: format!(
                            "{}; address now shut out for {}s",
                            refusal.reason,
                            wait.as_secs()
                        ),
                        problem: backoff_refusal(wait).problem,
                        subject: None,
                    });
                }
                return Err(refusal);
            }
        };
        if let Some(fingerprint) = presented {
            self.throttle.remember_everywhere(fingerprint);
        }
        let missing: Vec<&String> = scopes
            .iter()
            .filter(|s| !identity.scopes.contains(s))
            .collect();
        if !missing.is_empty() {
            return Err(Refusal {
                problem: Box::new(
                    Problem::new(
                        StatusCode::FORBIDDEN,
                        "insufficient-scope",
                        "Insufficient scope",
                        "The credential does not grant what this function requires.",
                    )
                    .challenge(&format!(
                        "Bearer realm=\"bulkhead\", error=\"insufficient_scope\", scope=\"{}\"",
                        scopes.join(" ")
                    )),
                ),
                reason: format!(
                    "subject lacks scope(s) {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                subject: Some(identity.principal.clone()),
            });
        }
        Ok(Some(identity))
    }

    fn authenticate(
        &self,
        headers: &HeaderMap,
        kinds: &[CredentialKind],
    ) -> Result<Identity, Refusal> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            // Signed in at the gateway (issue 15): the session cookie.
            return self.by_cookie(headers, kinds);
        };
        if values.next().is_some() {
            return Err(invalid("more than one Authorization header"));
        }
        if value.len() > MAX_CREDENTIAL_BYTES {
            return Err(invalid("credential over 8 KiB"));
        }
        let Some(token) = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            return Err(invalid("not a Bearer credential"));
        };
        let kind = if token.starts_with(Kind::Session.prefix()) {
            CredentialKind::Session
        } else if token.starts_with(Kind::ApiKey.prefix()) {
            CredentialKind::ApiKey
        } else {
            CredentialKind::Jwt
        };
        if !kinds.contains(&kind) {
            return Err(invalid(&format!(
                "this function does not accept {} credentials",
                kind.as_str()
            )));
        }
        let verified = match kind {
            CredentialKind::Jwt => self.verify_jwt(token).map_err(|reason| invalid(&reason)),
            CredentialKind::Session => self.verify_opaque(Kind::Session, token),
            CredentialKind::ApiKey => self.verify_opaque(Kind::ApiKey, token),
        }?;
        let issuer = match kind {
            CredentialKind::Jwt => self.jwt.as_ref().map(JwtVerifier::issuer),
            CredentialKind::Session | CredentialKind::ApiKey => None,
        };
        Ok(Identity {
            principal: principal(kind, issuer, &verified.subject),
            issuer: issuer.map(str::to_string),
            subject: verified.subject,
            scopes: verified.scopes,
            kind,
            via_cookie: false,
        })
    }

    /// The session cookie `[auth.login]` sets, when no `Authorization` is sent.
    fn by_cookie(
        &self,
        headers: &HeaderMap,
        kinds: &[CredentialKind],
    ) -> Result<Identity, Refusal> {
        // A route that takes no sessions ignores the cookie: the browser
        // sends it everywhere, so it is no credential presented to this
        // route. Refused for lack of one, never cleared, never a strike
        // (T12, T03; outside review of issue 15: a link to such a route
        // signed the browser out, and 12 visits put its address, a NAT
        // neighbour's too, in back-off).
        if !self.cookies || !kinds.contains(&CredentialKind::Session) {
            return Err(unauthenticated());
        }
        let token = match crate::login::cookies::session(headers) {
            Ok(Some(token)) => token,
            Ok(None) => return Err(unauthenticated()),
            Err(reason) => return Err(invalid(reason)),
        };
        let verified = self.verify_opaque(Kind::Session, token)?;
        Ok(Identity {
            principal: principal(CredentialKind::Session, None, &verified.subject),
            issuer: None,
            subject: verified.subject,
            scopes: verified.scopes,
            kind: CredentialKind::Session,
            via_cookie: true,
        })
    }

    fn verify_jwt(&self, token: &str) -> Result<Verified, String> {
        let verifier = self
            .jwt
            .as_ref()
            .ok_or("no [auth.jwt] issuer is configured")?;
        match token.matches('.').count() {
            2 => verifier.verify(token),
            4 => {
                let opener = self
                    .jwe
                    .as_ref()
                    .ok_or("encrypted token, but no JWE key is configured")?;
                verifier.verify(&opener.open(token)?)
            }
            _ => Err("not a JWT or JWE in compact form".into()),
        }
    }

    /// A session or API key, checked in the credential store. A store
    /// that does not answer (PostgreSQL unreachable, issue 16) is a 503,
    /// never a 401: the credential may be good, so it is no guess (no
    /// strike, T03) and a session cookie is not cleared (T12).
    fn verify_opaque(&self, kind: Kind, token: &str) -> Result<Verified, Refusal> {
        match bulkhead_store::credentials::verify(&*self.credentials, kind, token) {
            Ok(Ok(grant)) => Ok(Verified {
                subject: grant.subject,
                scopes: grant.scopes,
            }),
            Ok(Err(rejection)) => Err(invalid(rejection.as_str())),
            Err(e) => Err(Refusal {
                problem: Box::new(
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "credentials-unavailable",
                        "Credentials cannot be checked",
                        "The credential store does not answer, so no session or API key can be checked; retry shortly.",
                    )
                    .retry_after(5),
                ),
                reason: format!("credential store unavailable: {e}"),
                subject: None,
            }),
        }
    }
}

fn unauthenticated() -> Refusal {
    Refusal {
        problem: Box::new(
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
                "This function requires a Bearer credential.",
            )
            .challenge("Bearer realm=\"bulkhead\""),
        ),
        reason: "no credential".into(),
        subject: None,
    }
}

/// One answer for every bad credential: no oracle beyond RFC 6750's code.
fn invalid(reason: &str) -> Refusal {
    Refusal {
        problem: Box::new(
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "invalid-token",
                "Invalid credential",
                "The credential is not valid.",
            )
            .challenge("Bearer realm=\"bulkhead\", error=\"invalid_token\""),
        ),
        reason: reason.to_string(),
        subject: None,
    }
}

pub(crate) fn backoff_refusal(wait: Duration) -> Refusal {
    Refusal {
        problem: Box::new(
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "auth-backoff",
                "Too many failed attempts",
                "Too many invalid credentials came from this address; wait before trying again.",
            )
            .retry_after(wait.as_secs().max(1)),
        ),
        reason: "failed-authentication back-off".into(),
        subject: None,
    }
}
