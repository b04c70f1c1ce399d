//! Sign-in at the gateway (issue 15; T11, T12): `[auth.login]`.
//!
//! `GET /.bulkhead/login?return=/path` starts an authorization-code flow
//! with PKCE (S256), `state` and `nonce` (OpenID Connect, via the
//! `openidconnect` crate: discovery, ID token signature, `iss`, `aud`,
//! `exp` and `nonce` checks) or, for a plain OAuth2 provider like GitHub,
//! PKCE and `state` against an explicit endpoint triple (the `oauth2`
//! crate), the subject then read from the user-info endpoint. What the
//! callback needs is sealed into a `__Host-bulkhead-signin-<id>` cookie
//! bound to the `state` ([`signins`]): no sign-in state on the server, so
//! no flood can fill a table and lock others out (T01).
//!
//! `GET /.bulkhead/callback` exchanges the code, verifies, and issues the
//! gateway's own opaque session (`bhs_…`, stored hashed, short TTL,
//! revocable: the existing session tokens) as a `HttpOnly; Secure;
//! SameSite=Lax` cookie, or with `mode=token` as a bearer token in JSON.
//! The provider's tokens are dropped there: no provider token ever reaches
//! a function, which sees only `bulkhead-subject` and `bulkhead-scopes`.
//!
//! `POST /.bulkhead/logout` revokes the session presented.
//!
//! A state-changing request authenticated by the cookie must come from the
//! app's own origin (`Sec-Fetch-Site: same-origin` or a matching `Origin`),
//! else it is refused ([`cross_site`], CSRF).

pub(crate) mod cookies;
mod http_client;
mod signins;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_manifest::App;
use bulkhead_manifest::login::{
    CALLBACK_PATH, LOGIN_PATH, LOGOUT_PATH, LoginProvider, LoginSettings,
};
use bulkhead_store::AuditEvent;
use bulkhead_store::credentials::{self, Kind, SharedCredentials};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse as _, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse as _,
};
use zeroize::Zeroizing;

use crate::Shared;
use crate::audit::client_text;
use crate::authn::{Authenticator, Refusal, principal};
use crate::caller::Caller;
use crate::problem::Problem;
use crate::respond::Outgoing;
use signins::{Mode, Signins, Started};

/// The discovery document (endpoints, ID token keys) is fetched again
/// after this, so a provider's key rotation is picked up.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Longest return path kept.
const MAX_RETURN_PATH: usize = 1024;
/// Longest user-info answer member used as a subject or handle.
const MAX_CLAIM: usize = 256;
/// Code exchanges one client address may start per minute (a burst of as
/// many, refilled evenly): each is an outbound call to the provider that
/// carries the client secret (T01, T03).
pub(crate) const EXCHANGES_PER_MINUTE: u32 = 20;
/// Code exchanges under way at once, from all addresses (T01).
pub(crate) const EXCHANGES_IN_FLIGHT: usize = 32;
/// Code exchanges under way at once from one client address (an IPv6
/// caller's /64): holding every place of [`EXCHANGES_IN_FLIGHT`] takes 8
/// addresses, not 2 (outside re-review of issue 15, T01).
pub(crate) const EXCHANGES_IN_FLIGHT_PER_ADDRESS: usize = 4;

/// Live sessions one subject holds at most: a sign-in beyond this revokes
/// the oldest (issue 15, T01).
pub(crate) const MAX_SESSIONS_PER_SUBJECT: usize = 16;
/// Expired sessions deleted at most per sign-in (bounded work).
const PRUNE_PER_SIGN_IN: usize = 256;

/// The ID token signing algorithms accepted: asymmetric ones only (RSA,
/// RSA-PSS, ECDSA, EdDSA), never `HS*` (keyed with the client secret,
/// which the gateway holds too) or `none`.
const ID_TOKEN_ALGS: &[openidconnect::core::CoreJwsSigningAlgorithm] = {
    use openidconnect::core::CoreJwsSigningAlgorithm as A;
    &[
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EcdsaP521Sha512,
        A::EdDsa,
    ]
};

/// The bounds on code exchanges (outside review of issue 15: 300 callbacks
/// with a genuine state and a bogus code made 300 token requests). Shared
/// with the versions that follow, like the sign-in key.
struct Exchanges {
    /// Per client address (an IPv6 caller's /64), GCRA (governor).
    per_address: crate::ratelimit::KeyedLimiter<IpAddr>,
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Exchanges under way per client network; an entry goes when its
    /// count returns to 0, so the map holds at most `EXCHANGES_IN_FLIGHT`.
    per_address_in_flight: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

/// One address's place among the exchanges under way, given back on drop.
struct AddressPlace {
    network: IpAddr,
    counts: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.network) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.network);
            }
        }
    }
}

impl Exchanges {
    /// A place for one more exchange from `network`, if it holds fewer
    /// than [`EXCHANGES_IN_FLIGHT_PER_ADDRESS`].
    fn place_for(&self, network: IpAddr) -> Option<AddressPlace> {
        let mut counts = self
            .per_address_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(network).or_insert(0);
        if *n >= EXCHANGES_IN_FLIGHT_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressPlace {
            network,
            counts: self.per_address_in_flight.clone(),
        })
    }

    fn new() -> Self {
        let per_minute =
            std::num::NonZeroU32::new(EXCHANGES_PER_MINUTE).unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            per_address: crate::ratelimit::KeyedLimiter::with_quota(governor::Quota::per_minute(
                per_minute,
            )),
            in_flight: Arc::new(tokio::sync::Semaphore::new(EXCHANGES_IN_FLIGHT)),
            per_address_in_flight: Arc::default(),
        }
    }
}

/// The sign-in service of one app version.
pub(crate) struct Login {
    settings: LoginSettings,
    /// From the secret store (`client_secret_name`), never the manifest.
    client_secret: Option<Zeroizing<String>>,
    /// OpenID Connect: the provider's discovery document, once fetched.
    discovered: tokio::sync::Mutex<Option<(Instant, Arc<CoreProviderMetadata>)>>,
    /// The sign-in sealing key (and used states), shared with the versions
    /// that follow: a deploy does not break a sign-in under way.
    signins: Arc<Signins>,
    exchanges: Arc<Exchanges>,
    /// Where sessions are issued, checked and revoked: the state's
    /// credentials backend, shared by every node on PostgreSQL (issue 16).
    credentials: SharedCredentials,
}

type Answer = Result<Response<Outgoing>, Refusal>;

/// What the sign-in paths read of a request (its body never).
#[derive(Clone, Copy)]
pub(crate) struct Asked<'r> {
    pub(crate) method: &'r Method,
    pub(crate) uri: &'r http::Uri,
    pub(crate) headers: &'r HeaderMap,
}

impl Login {
    /// `[auth.login]` of `app`, its client secret read from the store now
    /// (a missing one fails the start or deploy with what to do).
    pub(crate) fn new(
        app: &App,
        state: &bulkhead_store::State,
        previous: Option<&Login>,
    ) -> Result<Option<Arc<Self>>, String> {
        let Some(settings) = app.login.clone() else {
            return Ok(None);
        };
        let client_secret = match &settings.client_secret {
            None => None,
            Some(name) => Some(read_secret(app, state, name)?),
        };
        Ok(Some(Arc::new(Self {
            settings,
            client_secret,
            discovered: tokio::sync::Mutex::new(None),
            signins: match previous {
                Some(previous) => previous.signins.clone(),
                None => Arc::new(Signins::new(sealing_key(app, state)?)),
            },
            exchanges: match previous {
                Some(previous) => previous.exchanges.clone(),
                None => Arc::new(Exchanges::new()),
            },
            credentials: state.credentials().clone(),
        })))
    }

    /// The app's own origin, for [`cross_site`].
    pub(crate) fn origin(&self) -> &str {
        &self.settings.origin
    }

    /// The cookies a function's response may set (T01, T12).
    pub(crate) fn function_cookies(&self) -> &[String] {
        &self.settings.function_cookies
    }

    /// Answer a request for one of the reserved paths; `None` for any other
    /// path (the request goes on to routing).
    pub(crate) async fn serve(
        &self,
        shared: &Shared,
        authenticator: &Authenticator,
        request: Asked<'_>,
        client: IpAddr,
        correlation_id: &str,
    ) -> Option<Answer> {
        let path = request.uri.path();
        let endpoint = [LOGIN_PATH, CALLBACK_PATH, LOGOUT_PATH]
            .into_iter()
            .find(|p| *p == path)?;
        let caller = Caller::of(None, client);
        // The app-wide per-caller rate limit covers sign-in too (T02, T03).
        if let Some(limiter) = shared.app_limiter.as_ref()
            && let Err(wait) = limiter.check(&caller)
        {
            return Some(Err(refusal(
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Rate limit reached",
                    "You are sending requests faster than this service allows; wait as long as Retry-After says.",
                )
                .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64),
                "sign-in rate limited".into(),
            )));
        }
        let answer = match endpoint {
            LOGIN_PATH => self.start(&request).await,
            CALLBACK_PATH => {
                self.callback(shared, authenticator, &request, client, correlation_id)
                    .await
            }
            _ => self.logout(shared, &request, &caller, correlation_id).await,
        };
        Some(answer)
    }

    /// `GET /.bulkhead/login`: to the provider, with PKCE, state and nonce.
    async fn start(&self, request: &Asked<'_>) -> Answer {
        only(request.method, &Method::GET)?;
        let query = Query::parse(request.uri.query())?;
        let return_to = match query.one("return")? {
            None => "/".to_string(),
            Some(path) => local_path(&path).map_err(|reason| {
                refusal(
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-return-path",
                        "Return path refused",
                        "The return path must be a path on this site, like /account.",
                    ),
                    format!("return path refused: {reason}"),
                )
            })?,
        };
        let mode = match query.one("mode")?.as_deref() {
            None | Some("cookie") => Mode::Cookie,
            Some("token") => Mode::Token,
            Some(_) => {
                return Err(refusal(
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "bad-login-request",
                        "Sign-in request refused",
                        "`mode` may be `cookie` (the default) or `token`.",
                    ),
                    "unknown sign-in mode".into(),
                ));
            }
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let oidc = matches!(self.settings.provider, LoginProvider::Oidc { .. });
        let nonce = oidc.then(Nonce::new_random);
        // Nothing kept here: the sign-in travels sealed in its cookie.
        let begun = self
            .signins
            .begin(&Started {
                verifier: Zeroizing::new(verifier.into_secret()),
                nonce: Zeroizing::new(
                    nonce
                        .as_ref()
                        .map(|n| n.secret().clone())
                        .unwrap_or_default(),
                ),
                return_to,
                mode,
            })
            .map_err(|e| {
                refusal(
                    Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "login-unavailable",
                        "Sign-in unavailable",
                        "Signing in is not possible right now; retry later.",
                    ),
                    e.to_string(),
                )
            })?;
        let state = CsrfToken::new(begun.state.clone());
        let url = match (&self.settings.provider, nonce) {
            (LoginProvider::Oidc { .. }, Some(nonce)) => {
                let scopes = self
                    .settings
                    .scopes
                    .iter()
                    .filter(|s| s.as_str() != "openid")
                    .map(|s| Scope::new(s.clone()));
                let client = self.oidc_client().await?;
                let (url, _, _) = client
                    .authorize_url(
                        AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                        move || state,
                        move || nonce,
                    )
                    .add_scopes(scopes)
                    .set_pkce_challenge(challenge)
                    .url();
                url
            }
            _ => {
                let client = self.oauth2_client()?;
                let (url, _) = client
                    .authorize_url(move || state)
                    .add_scopes(
                        self.settings
                            .scopes
                            .iter()
                            .map(|s| oauth2::Scope::new(s.clone())),
                    )
                    .set_pkce_challenge(challenge)
                    .url();
                url
            }
        };
        let mut response = empty(StatusCode::FOUND);
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(url.as_str()) {
            headers.insert(header::LOCATION, location);
        }
        // Other tabs' sign-ins stay (each has its own cookie), at most
        // MAX_PER_BROWSER of them: the oldest beyond that are cleared.
        for name in self.surplus_signins(request.headers) {
            if let Some(cookie) = cookies::clear(&name) {
                headers.append(header::SET_COOKIE, cookie);
            }
        }
        if let Some(cookie) = cookies::set(
            &begun.cookie_name,
            &begun.cookie_value,
            signins::SIGNIN_TTL.as_secs(),
        ) {
            headers.append(header::SET_COOKIE, cookie);
        }
        Ok(response)
    }

    /// The sign-in cookies `headers` carries beyond the
    /// `MAX_PER_BROWSER - 1` newest (a new one is about to join them);
    /// ones that do not open count as oldest.
    fn surplus_signins(&self, headers: &HeaderMap) -> Vec<String> {
        let mut held: Vec<(u64, &str)> = cookies::with_prefix(headers, signins::COOKIE_PREFIX)
            .into_iter()
            .map(|(name, value)| (self.signins.expiry_of(name, value).unwrap_or(0), name))
            .collect();
        let keep = signins::MAX_PER_BROWSER - 1;
        if held.len() <= keep {
            return Vec::new();
        }
        held.sort_unstable();
        held.truncate(held.len() - keep);
        held.into_iter().map(|(_, name)| name.to_string()).collect()
    }

    /// `GET /.bulkhead/callback`: code for tokens, verified, for a session.
    async fn callback(
        &self,
        shared: &Shared,
        authenticator: &Authenticator,
        request: &Asked<'_>,
        client: IpAddr,
        correlation_id: &str,
    ) -> Answer {
        let caller = &Caller::of(None, client);
        only(request.method, &Method::GET)?;
        let query = Query::parse(request.uri.query())?;
        let state_refused = |reason: String| {
            refusal(
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "login-state-invalid",
                    "Sign-in not recognised",
                    "This sign-in was not started here, has expired or was already used; start again.",
                ),
                reason,
            )
        };
        let state = query
            .one("state")?
            .ok_or_else(|| state_refused("callback without state".into()))?;
        let cookie_name = Signins::cookie_for(&state)
            .ok_or_else(|| state_refused(signins::Taken::Unknown.as_str().into()))?;
        // Before the sign-in is used up, and before anything reaches the
        // provider (T01, T03): an address in the failed-authentication
        // back-off is refused, as are exchanges past the address's rate or
        // the number under way. The sign-in stays usable for a retry.
        if let Some(wait) = authenticator.backed_off(client) {
            return Err(crate::authn::backoff_refusal(wait));
        }
        let busy = |wait: Duration| {
            refusal(
                Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Rate limit reached",
                    "Too many sign-ins are being completed right now; wait as long as Retry-After says.",
                )
                .retry_after(wait.as_secs_f64().ceil().max(1.0) as u64),
                "code exchanges over their bound".into(),
            )
        };
        let network = crate::caller::network_of(client);
        self.exchanges.per_address.check(&network).map_err(busy)?;
        let _address_place = self
            .exchanges
            .place_for(network)
            .ok_or_else(|| busy(Duration::from_secs(1)))?;
        let _exchanging = self
            .exchanges
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy(Duration::from_secs(1)))?;
        // The sign-in's cookie is cleared by every answer from here on.
        let clear = cookies::clear(&cookie_name);
        let clearing = |mut refused: Refusal| {
            if let Some(cookie) = clear.clone() {
                refused.problem = Box::new(refused.problem.set_cookie(cookie));
            }
            refused
        };
        let sealed = cookies::get_limited(request.headers, &cookie_name, signins::MAX_COOKIE_VALUE)
            .map_err(|r| clearing(state_refused(r.to_string())))?;
        // Single-use: used up now, whatever follows.
        let started = self.signins.take(&state, sealed).map_err(|taken| {
            let refused = state_refused(taken.as_str().to_string());
            // A state this gateway did not issue (a forged tag naming a
            // real sign-in's id) leaves that sign-in's cookie alone:
            // only its own callback may drop it (outside review).
            if taken == signins::Taken::Unknown {
                refused
            } else {
                clearing(refused)
            }
        })?;
        self.finish(shared, &query, started, caller, correlation_id)
            .await
            .inspect_err(|refused| {
                // A failed sign-in is a failed authentication of the
                // address (T03): bogus codes lead to the back-off above.
                if refused.problem.slug == "login-failed" {
                    authenticator.count_failure(client);
                }
            })
            .map(|mut response| {
                if let Some(cookie) = clear.clone() {
                    response.headers_mut().append(header::SET_COOKIE, cookie);
                }
                response
            })
            .map_err(clearing)
    }

    /// The callback once its sign-in is taken: the code for a session.
    async fn finish(
        &self,
        shared: &Shared,
        query: &Query,
        started: Started,
        caller: &Caller,
        correlation_id: &str,
    ) -> Answer {
        if let Some(error) = query.one("error")? {
            return Err(login_failed(format!(
                "the provider answered error={}",
                client_text(&error)
            )));
        }
        let code = query
            .one("code")?
            .ok_or_else(|| login_failed("callback without code".into()))?;
        let (subject, label) = match &self.settings.provider {
            LoginProvider::Oidc { issuer } => {
                // RFC 9207: when the provider names itself, it must be ours.
                if let Some(iss) = query.one("iss")?
                    && iss.trim_end_matches('/') != issuer.trim_end_matches('/')
                {
                    return Err(login_failed(format!(
                        "callback from another issuer: {}",
                        client_text(&iss)
                    )));
                }
                let client = self.oidc_client().await?;
                let exchange = client
                    .exchange_code(AuthorizationCode::new(code))
                    .map_err(|e| login_failed(format!("provider has no token endpoint: {e}")))?
                    .set_pkce_verifier(PkceCodeVerifier::new(started.verifier.to_string()));
                let tokens = exchange
                    .request_async(&http_client::call)
                    .await
                    .map_err(|e| login_failed(format!("code exchange refused: {e}")))?;
                let id_token = tokens
                    .id_token()
                    .ok_or_else(|| login_failed("token answer without an ID token".into()))?;
                let nonce = Nonce::new(started.nonce.to_string());
                // Asymmetric signatures only: never an HMAC keyed with the
                // client secret, whatever the provider advertises (outside
                // review of issue 15).
                let verifier = client
                    .id_token_verifier()
                    .set_allowed_algs(ID_TOKEN_ALGS.iter().cloned());
                let claims = id_token
                    .claims(&verifier, &nonce)
                    .map_err(|e| login_failed(format!("ID token refused: {e}")))?;
                (
                    claims.subject().to_string(),
                    format!("{} {issuer}", credentials::SIGN_IN_LABEL),
                )
            }
            LoginProvider::OAuth2 {
                userinfo_endpoint,
                subject_claim,
                handle_claim,
                ..
            } => {
                let client = self.oauth2_client()?;
                let tokens = client
                    .exchange_code(oauth2::AuthorizationCode::new(code))
                    .set_pkce_verifier(oauth2::PkceCodeVerifier::new(started.verifier.to_string()))
                    .request_async(&http_client::call)
                    .await
                    .map_err(|e| login_failed(format!("code exchange refused: {e}")))?;
                let info = user_info(userinfo_endpoint, tokens.access_token().secret()).await?;
                let subject = claim(&info, subject_claim).ok_or_else(|| {
                    login_failed(format!(
                        "user-info answer has no string or number `{subject_claim}`"
                    ))
                })?;
                let handle = handle_claim
                    .as_ref()
                    .and_then(|c| claim(&info, c))
                    .map_or_else(String::new, |h| format!(" {h}"));
                (subject, format!("{}{handle}", credentials::SIGN_IN_LABEL))
            }
        };
        if subject.is_empty() || subject.len() > MAX_CLAIM || subject.chars().any(char::is_control)
        {
            return Err(login_failed(
                "subject empty, too long or with control characters".into(),
            ));
        }
        let ttl = self.settings.session_ttl.get();
        let (id, token) = credentials::issue(
            &*self.credentials,
            Kind::Session,
            &subject,
            &self.settings.session_scopes,
            i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            Some(&label),
        )
        .map_err(|e| {
            refusal(
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "login-unavailable",
                    "Sign-in unavailable",
                    "Signing in is not possible right now; retry later.",
                ),
                format!("cannot issue the session: {e}"),
            )
        })?;
        let principal = principal(bulkhead_manifest::CredentialKind::Session, None, &subject);
        self.tidy_sessions(shared, &subject, &principal, correlation_id);
        let ticket = shared.audit.record_from(
            caller.key(),
            AuditEvent::new("auth.login")
                .correlation_id(correlation_id)
                .subject(client_text(&principal))
                .detail("credential", id.as_str())
                .detail(
                    "mode",
                    match started.mode {
                        Mode::Cookie => "cookie",
                        Mode::Token => "token",
                    },
                )
                .detail("ttl_s", ttl.as_secs()),
        );
        // T09: the record is durable before the session is handed out.
        let _ = shared
            .audit
            .wait_durable(ticket, crate::audit::DURABLE_WAIT)
            .await;
        tracing::info!(
            correlation_id,
            subject = %client_text(&principal),
            credential = %id,
            "signed in"
        );
        let response = match started.mode {
            Mode::Cookie => {
                let mut response = empty(StatusCode::SEE_OTHER);
                let headers = response.headers_mut();
                if let Ok(location) = HeaderValue::from_str(&started.return_to) {
                    headers.insert(header::LOCATION, location);
                }
                if let Some(cookie) = cookies::set(cookies::SESSION, &token, ttl.as_secs()) {
                    headers.append(header::SET_COOKIE, cookie);
                }
                response
            }
            Mode::Token => {
                let body = serde_json::json!({
                    "token_type": "Bearer",
                    "access_token": token,
                    "expires_in": ttl.as_secs(),
                    "scope": self.settings.session_scopes.join(" "),
                });
                let mut response = Response::new(Outgoing::bytes(Bytes::from(body.to_string())));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                // A bearer token: never kept by a cache (RFC 6749 §5.1).
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
        };
        Ok(response)
    }

    /// After a sign-in (issue 15, T01; outside review: 300 sign-ins left
    /// 302 rows, all expired): the oldest live sessions of `subject` past
    /// [`MAX_SESSIONS_PER_SUBJECT`] are revoked (one `auth.sessions_capped`
    /// record), and up to [`PRUNE_PER_SIGN_IN`] sessions that expired a
    /// `session_ttl` ago or more are deleted (one `auth.sessions_pruned`
    /// record with the count: an expired row needs no record of its own).
    /// Failures are logged; the sign-in stands.
    fn tidy_sessions(&self, shared: &Shared, subject: &str, principal: &str, correlation_id: &str) {
        let now_ms = bulkhead_store::now_ms();
        match self
            .credentials
            .cap_sessions(subject, MAX_SESSIONS_PER_SUBJECT, now_ms)
        {
            Ok(0) => {}
            Ok(revoked) => {
                let _ = shared.audit.record(
                    AuditEvent::new("auth.sessions_capped")
                        .correlation_id(correlation_id)
                        .subject(client_text(principal))
                        .detail("revoked", revoked)
                        .detail("kept", MAX_SESSIONS_PER_SUBJECT),
                );
            }
            Err(e) => {
                tracing::warn!(correlation_id, error = %e, "cannot cap the subject's sessions")
            }
        }
        let ttl_ms = i64::try_from(self.settings.session_ttl.get().as_millis()).unwrap_or(i64::MAX);
        match self
            .credentials
            .prune_expired_sessions(now_ms.saturating_sub(ttl_ms), PRUNE_PER_SIGN_IN)
        {
            Ok(0) => {}
            Ok(deleted) => {
                let _ = shared.audit.record(
                    AuditEvent::new("auth.sessions_pruned")
                        .correlation_id(correlation_id)
                        .detail("deleted", deleted),
                );
            }
            Err(e) => tracing::warn!(correlation_id, error = %e, "cannot prune expired sessions"),
        }
    }

    /// `POST /.bulkhead/logout`: revoke the session presented.
    async fn logout(
        &self,
        shared: &Shared,
        request: &Asked<'_>,
        caller: &Caller,
        correlation_id: &str,
    ) -> Answer {
        only(request.method, &Method::POST)?;
        let headers = request.headers;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // As the authenticator reads it (outside review).
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let token = match bearer {
            Some(token) => Some(token),
            None => {
                let token = cookies::session(headers).map_err(|r| {
                    refusal(
                        Problem::new(
                            StatusCode::BAD_REQUEST,
                            "bad-session-cookie",
                            "Session cookie refused",
                            "The session cookie is malformed or sent more than once.",
                        ),
                        r.to_string(),
                    )
                })?;
                // Signing out by cookie is state-changing: same origin only.
                if token.is_some()
                    && let Some(reason) = cross_site(request.method, headers, self.origin())
                {
                    return Err(cross_site_refusal(reason));
                }
                token
            }
        };
        let Some(token) = token.filter(|t| t.starts_with(Kind::Session.prefix())) else {
            return Err(refusal(
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "Authentication required",
                    "Signing out needs the session: its cookie or a Bearer session token.",
                )
                .challenge("Bearer realm=\"bulkhead\""),
                "sign-out without a session".into(),
            ));
        };
        let unavailable = |e: String| {
            refusal(
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "logout-unavailable",
                    "Sign-out unavailable",
                    "The session could not be revoked right now; retry.",
                ),
                e,
            )
        };
        let verified = credentials::verify(&*self.credentials, Kind::Session, token)
            .map_err(|e| unavailable(e.to_string()))?;
        // An unknown, expired or revoked session is already signed out.
        let mut ticket = None;
        if let Ok(grant) = verified {
            self.credentials
                .revoke(Kind::Session, &grant.id, bulkhead_store::now_ms())
                .map_err(|e| unavailable(e.to_string()))?;
            let principal = principal(
                bulkhead_manifest::CredentialKind::Session,
                None,
                &grant.subject,
            );
            ticket = shared.audit.record_from(
                caller.key(),
                AuditEvent::new("auth.logout")
                    .correlation_id(correlation_id)
                    .subject(client_text(&principal))
                    .detail("credential", grant.id.as_str()),
            );
        }
        let _ = shared
            .audit
            .wait_durable(ticket, crate::audit::DURABLE_WAIT)
            .await;
        let mut response = empty(StatusCode::NO_CONTENT);
        if let Some(cookie) = cookies::clear(cookies::SESSION) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Ok(response)
    }

    /// The OpenID client, from the (cached) discovery document.
    async fn oidc_client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        Refusal,
    > {
        let LoginProvider::Oidc { issuer } = &self.settings.provider else {
            return Err(unavailable("not an OpenID provider".into()));
        };
        let metadata = {
            let mut cached = self.discovered.lock().await;
            match cached.as_ref() {
                Some((at, metadata)) if at.elapsed() < DISCOVERY_TTL => metadata.clone(),
                _ => {
                    let issuer_url = IssuerUrl::new(issuer.clone())
                        .map_err(|e| unavailable(format!("issuer URL: {e}")))?;
                    let metadata = Arc::new(
                        CoreProviderMetadata::discover_async(issuer_url, &http_client::call)
                            .await
                            .map_err(|e| unavailable(format!("discovery failed: {e}")))?,
                    );
                    *cached = Some((Instant::now(), metadata.clone()));
                    metadata
                }
            }
        };
        let redirect = RedirectUrl::new(self.settings.redirect_url.clone())
            .map_err(|e| unavailable(format!("redirect URL: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            (*metadata).clone(),
            ClientId::new(self.settings.client_id.clone()),
            self.client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.to_string())),
        )
        .set_redirect_uri(redirect))
    }

    /// The plain OAuth2 client, from the manifest's endpoint triple.
    fn oauth2_client(
        &self,
    ) -> Result<
        oauth2::basic::BasicClient<
            oauth2::EndpointSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointNotSet,
            oauth2::EndpointSet,
        >,
        Refusal,
    > {
        let LoginProvider::OAuth2 {
            authorization_endpoint,
            token_endpoint,
            ..
        } = &self.settings.provider
        else {
            return Err(unavailable("not a plain OAuth2 provider".into()));
        };
        let bad = |e: oauth2::url::ParseError| unavailable(format!("endpoint URL: {e}"));
        let mut client =
            oauth2::basic::BasicClient::new(oauth2::ClientId::new(self.settings.client_id.clone()))
                .set_auth_uri(oauth2::AuthUrl::new(authorization_endpoint.clone()).map_err(bad)?)
                .set_token_uri(oauth2::TokenUrl::new(token_endpoint.clone()).map_err(bad)?)
                .set_redirect_uri(
                    oauth2::RedirectUrl::new(self.settings.redirect_url.clone()).map_err(bad)?,
                );
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(oauth2::ClientSecret::new(secret.to_string()));
        }
        Ok(client)
    }
}

/// The client secret named by `client_secret_name`, from the secret store.
/// The key sign-ins are sealed with: the app's `login` data key in the
/// keyring, so a restart mid-sign-in does not break it; without a master
/// key (not `dev`, none configured) one held in memory, so sign-ins under
/// way then fail across a restart (said once in the log).
/// On PostgreSQL (issue 16) the key is the one every node shares.
fn sealing_key(
    app: &App,
    state: &bulkhead_store::State,
) -> Result<bulkhead_store::crypto::DataKey, String> {
    use bulkhead_store::crypto::{CryptoError, DataKey};
    match state.keyring(&app.env) {
        Ok(keyring) => keyring
            .data_key(signins::KEY_OWNER, "", "", true)
            .map_err(|e| format!("[auth.login] cannot read the sign-in key: {e}"))?
            .ok_or_else(|| "[auth.login] the sign-in key was not created".to_string()),
        Err(CryptoError::NoMasterKey { .. }) => {
            tracing::warn!(
                "[auth.login] no master key: sign-ins are sealed under a key held in memory; those under way fail across a restart (set BULKHEAD_MASTER_KEY_FILE to keep them)"
            );
            DataKey::ephemeral()
                .map_err(|e| format!("[auth.login] cannot make the sign-in key: {e}"))
        }
        Err(e) => Err(format!("[auth.login] cannot open the keyring: {e}")),
    }
}

fn read_secret(
    app: &App,
    state: &bulkhead_store::State,
    name: &str,
) -> Result<Zeroizing<String>, String> {
    use secrecy::ExposeSecret as _;
    let keyring = state
        .keyring(&app.env)
        .map_err(|e| format!("[auth.login] cannot open the secret store: {e}"))?;
    let secrets = bulkhead_store::secrets::Secrets::new(Arc::new(keyring));
    let backend = state
        .secrets()
        .map_err(|e| format!("[auth.login] cannot open the secret store: {e}"))?;
    match secrets.get(&*backend, name) {
        Ok(Some(value)) => Ok(Zeroizing::new(value.expose_secret().trim_end().to_string())),
        Ok(None) => Err(format!(
            "[auth.login] the client secret `{name}` is not set; set it with `bulkhead secrets set {} {name}` (the value is read from standard input)",
            app.dir.display()
        )),
        Err(e) => Err(format!(
            "[auth.login] cannot read the client secret `{name}`: {e}"
        )),
    }
}

/// The user-info answer of a plain OAuth2 provider (GitHub: `GET /user`).
async fn user_info(endpoint: &str, access_token: &str) -> Result<serde_json::Value, Refusal> {
    let request = Request::get(endpoint)
        .header(header::ACCEPT, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {access_token}"))
        .body(Vec::new())
        .map_err(|e| login_failed(format!("user-info request: {e}")))?;
    let response = http_client::call(request)
        .await
        .map_err(|e| login_failed(format!("user-info request failed: {e}")))?;
    if !response.status().is_success() {
        return Err(login_failed(format!(
            "user-info endpoint answered {}",
            response.status()
        )));
    }
    serde_json::from_slice(response.body())
        .map_err(|e| login_failed(format!("user-info answer is not JSON: {e}")))
}

/// A user-info member as text: a string, or a number (GitHub's `id`).
fn claim(info: &serde_json::Value, name: &str) -> Option<String> {
    match info.get(name)? {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= MAX_CLAIM => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Why a state-changing request authenticated by the session cookie is
/// cross-site (CSRF), or `None` when it is safe or same-origin. Safe
/// methods pass; otherwise `Sec-Fetch-Site` must say `same-origin` and
/// `Origin`, when sent, must be the app's origin; with neither header the
/// request is refused (a browser sends at least one on a POST; other
/// clients use a Bearer token).
pub(crate) fn cross_site(method: &Method, headers: &HeaderMap, origin: &str) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let fetch_site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    let sent_origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
    match (fetch_site, sent_origin) {
        (None, None) => {
            Some("cookie-authenticated request without Origin or Sec-Fetch-Site".into())
        }
        (Some(site), _) if site != b"same-origin" => Some(format!(
            "Sec-Fetch-Site is {}",
            client_text(&String::from_utf8_lossy(site))
        )),
        (_, Some(sent)) if sent != origin.as_bytes() => Some(format!(
            "Origin {} is not the app's",
            client_text(&String::from_utf8_lossy(sent))
        )),
        _ => None,
    }
}

pub(crate) fn cross_site_refusal(reason: String) -> Refusal {
    refusal(
        Problem::new(
            StatusCode::FORBIDDEN,
            "cross-site-request",
            "Cross-site request refused",
            "A request that changes state with the session cookie must come from this site's own pages.",
        ),
        reason,
    )
}

/// A path on this site to send the browser back to (T12: no open
/// redirect): it starts with one `/`, holds only printable ASCII without
/// `\`, and is not a reserved `/.bulkhead/` path.
fn local_path(path: &str) -> Result<String, &'static str> {
    if path.len() > MAX_RETURN_PATH {
        return Err("longer than 1024 bytes");
    }
    if !path.starts_with('/') {
        return Err("not a path starting with /");
    }
    // `//host` and `/\host` are read by browsers as another host.
    if path.starts_with("//") || path.contains('\\') {
        return Err("names another host");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("control characters, spaces or non-ASCII");
    }
    // Encoded slashes and backslashes could be decoded by some hop into
    // `//` or `\`: refused rather than reasoned about.
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%09") {
        return Err("encoded slash, backslash or tab");
    }
    if path.starts_with("/.bulkhead/") {
        return Err("a reserved path");
    }
    // `/.//host` and `/..//host` normalise to `//host` (outside re-review
    // of issue 15): no empty, `.` or `..` segment in the path part.
    let path_part = path.split(['?', '#']).next().unwrap_or("");
    if path_part.contains("//")
        || path_part
            .split('/')
            .any(|segment| segment == "." || segment == "..")
    {
        return Err("an empty, `.` or `..` segment");
    }
    Ok(path.to_string())
}

/// The query of a sign-in request, each name at most once.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Self, Refusal> {
        let query = query.unwrap_or("");
        if query.len() > 8 * 1024 {
            return Err(bad_query("query over 8 KiB"));
        }
        Ok(Self(
            url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }

    fn one(&self, name: &str) -> Result<Option<String>, Refusal> {
        let mut found = self.0.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.clone());
        if found.next().is_some() {
            return Err(bad_query("a query parameter is repeated"));
        }
        Ok(first)
    }
}

fn bad_query(reason: &str) -> Refusal {
    refusal(
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-login-request",
            "Sign-in request refused",
            "The sign-in request's query is malformed.",
        ),
        reason.to_string(),
    )
}

fn only(method: &Method, allowed: &Method) -> Result<(), Refusal> {
    if method == allowed {
        return Ok(());
    }
    Err(refusal(
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "This route does not accept that method; the Allow header lists the ones it does.",
        )
        .allow(allowed.as_str()),
        "wrong method for a sign-in path".into(),
    ))
}

fn login_failed(reason: String) -> Refusal {
    refusal(
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "login-failed",
            "Sign-in failed",
            "The identity provider's answer could not be verified; start again.",
        ),
        reason,
    )
}

fn unavailable(reason: String) -> Refusal {
    refusal(
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "login-unavailable",
            "Sign-in unavailable",
            "The identity provider could not be reached or answered wrongly; retry later.",
        ),
        reason,
    )
}

fn refusal(problem: Problem, reason: String) -> Refusal {
    Refusal {
        problem: Box::new(problem),
        reason,
        subject: None,
    }
}

fn empty(status: StatusCode) -> Response<Outgoing> {
    let mut response = Response::new(Outgoing::bytes(Bytes::new()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_this_site() {
        for ok in [
            "/",
            "/account",
            "/account/",
            "/talks?id=3&x=%20y",
            "/a/b.c~d",
            "/a?next=//x",
        ] {
            assert_eq!(local_path(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "/.//evil.example",
            "/..//evil.example",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "evil.example",
            "/%2F%2Fevil.example",
            "/%5cevil.example",
            "/\t/evil.example",
            "/ /evil",
            "/\u{3000}evil",
            "",
            "javascript:alert(1)",
            "/.bulkhead/logout",
        ] {
            assert!(local_path(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn cross_site_rules() {
        let origin = "https://app.example";
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        // (method, request headers, refused as cross-site?)
        type Case = (Method, &'static [(&'static str, &'static str)], bool);
        let cases: [Case; 9] = [
            (Method::GET, &[], false),
            (Method::POST, &[], true),
            (Method::POST, &[("sec-fetch-site", "same-origin")], false),
            (Method::POST, &[("sec-fetch-site", "same-site")], true),
            (Method::POST, &[("sec-fetch-site", "cross-site")], true),
            (Method::DELETE, &[("origin", "https://app.example")], false),
            (Method::PUT, &[("origin", "https://evil.example")], true),
            (Method::POST, &[("origin", "null")], true),
            (
                Method::POST,
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://evil.example"),
                ],
                true,
            ),
        ];
        for (method, headers, refused) in cases {
            assert_eq!(
                cross_site(&method, &h(headers), origin).is_some(),
                refused,
                "{method} {headers:?}"
            );
        }
    }
}

#[cfg(test)]
mod exchange_tests {
    use super::*;

    /// T01 (outside re-review of issue 15: two addresses held all 32
    /// places of the code exchanges under a slow provider): one address
    /// holds at most four, and gives them back as its exchanges end.
    #[test]
    fn one_address_holds_at_most_four_exchanges_t01() {
        let exchanges = Exchanges::new();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let held: Vec<_> = (0..EXCHANGES_IN_FLIGHT_PER_ADDRESS)
            .map(|_| exchanges.place_for(a).unwrap())
            .collect();
        assert!(exchanges.place_for(a).is_none());
        assert!(exchanges.place_for(b).is_some());
        drop(held);
        assert!(exchanges.place_for(a).is_some());
        let counts = exchanges
            .per_address_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        assert!(counts.is_empty(), "{counts:?}");
    }
}
