//! `[auth.login]` (issue 15; T11, T12): sign-in at the gateway. The
//! gateway runs the OpenID Connect authorization-code flow (PKCE, `state`,
//! `nonce`) or, for a plain OAuth2 provider such as GitHub, the same flow
//! against an explicit authorization/token/user-info endpoint triple; it
//! then issues its own opaque session. The client secret is the name of a
//! secret in the app's secret store, never a value in the manifest.

use crate::units::Duration;

/// Where the provider sends the browser back: always this path.
pub const CALLBACK_PATH: &str = "/.bulkhead/callback";
/// Starts a sign-in (`?return=/local/path`, `&mode=token` for API clients).
pub const LOGIN_PATH: &str = "/.bulkhead/login";
/// Revokes the caller's session (POST).
pub const LOGOUT_PATH: &str = "/.bulkhead/logout";

pub mod defaults {
    use crate::units::Duration;

    /// A signed-in session lives this long unless `session_ttl` says less.
    pub const SESSION_TTL: Duration = Duration::from_secs(3600);
    /// The longest session a sign-in may give (T12: short-lived).
    pub const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
}

/// `[auth.login]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginSettings {
    pub provider: LoginProvider,
    pub client_id: String,
    /// The name of the secret (`bulkhead secrets set APP NAME`) holding the
    /// client secret; `None` for a public client (PKCE only).
    pub client_secret: Option<String>,
    /// The full redirect URL registered with the provider; its path is
    /// always [`CALLBACK_PATH`].
    pub redirect_url: String,
    /// `scheme://host[:port]` of `redirect_url`: the app's own origin, the
    /// one a cookie-authenticated state-changing request must come from.
    pub origin: String,
    /// Scopes asked of the provider (`openid` is always asked for OIDC).
    pub scopes: Vec<String>,
    pub session_ttl: Duration,
    /// Bulkhead scopes a signed-in session carries (`bulkhead-scopes`).
    pub session_scopes: Vec<String>,
    /// The only cookies a function's response may set (T01, T12): the
    /// browser's jar then holds at most these, each host-only, on `/` and
    /// of at most [`MAX_FUNCTION_COOKIE_BYTES`], so no function can grow
    /// it past the header limit and lock the browser out with 431.
    pub function_cookies: Vec<String>,
}

/// Most cookie names `function_cookies` may declare.
pub const MAX_FUNCTION_COOKIES: usize = 8;
/// Longest `name=value` of a function's cookie with `[auth.login]`: all
/// of them together stay within 4 KiB of the browser's `Cookie` field.
pub const MAX_FUNCTION_COOKIE_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginProvider {
    /// OpenID Connect: endpoints and keys from the issuer's discovery
    /// document; the ID token is verified (signature, `iss`, `aud`, `exp`,
    /// `nonce`).
    Oidc { issuer: String },
    /// Plain OAuth2 (no ID token): the subject comes from the user-info
    /// endpoint, called with the access token.
    OAuth2 {
        authorization_endpoint: String,
        token_endpoint: String,
        userinfo_endpoint: String,
        /// The user-info member that becomes the subject (GitHub: `id`).
        subject_claim: String,
        /// The user-info member kept as the session's label (GitHub: `login`).
        handle_claim: Option<String>,
    },
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogin {
    pub issuer: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub subject_claim: Option<String>,
    pub handle_claim: Option<String>,
    pub client_id: String,
    pub client_secret_name: Option<String>,
    pub redirect_url: String,
    pub scopes: Option<Vec<String>>,
    pub session_ttl: Option<Duration>,
    pub session_scopes: Option<Vec<String>>,
    pub function_cookies: Option<Vec<String>>,
}

/// A cookie name as RFC 6265 allows it (a token), bounded.
fn valid_cookie_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
/// An absolute URL the gateway may call or send browsers to: `https`, or
/// `http` on a loopback host only (a provider in tests or on the same
/// machine). Returns the origin.
fn checked_url(text: &str, what: &str) -> Result<(url::Url, String), String> {
    let url = url::Url::parse(text)
        .map_err(|e| format!("[auth.login] `{what}` is not an absolute URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "[auth.login] `{what}` must use https (plain http only on a loopback host, for tests)"
            ));
        }
        other => {
            return Err(format!(
                "[auth.login] `{what}` has scheme `{other}`; use https"
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "[auth.login] `{what}` must not carry credentials; the client secret goes in the secret store"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("[auth.login] `{what}` must not have a fragment"));
    }
    let origin = url.origin().ascii_serialization();
    Ok((url, origin))
}

fn valid_secret_name(name: &str) -> bool {
    name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

/// From `[auth.login]` as written to [`LoginSettings`], collecting problems.
pub(crate) fn resolve(
    out: &mut crate::problem::Collector<'_>,
    raw: &toml::Spanned<RawLogin>,
) -> Option<LoginSettings> {
    let span = Some(raw.span());
    let login = raw.get_ref();
    let before = out.problems.len();
    let fail = |out: &mut crate::problem::Collector<'_>, message: String| {
        out.at(span.clone(), message);
    };
    let endpoints = (
        &login.authorization_endpoint,
        &login.token_endpoint,
        &login.userinfo_endpoint,
    );
    let provider = match (&login.issuer, endpoints) {
        (Some(issuer), (None, None, None)) => {
            if login.subject_claim.is_some() || login.handle_claim.is_some() {
                fail(
                    out,
                    "[auth.login] `subject_claim` and `handle_claim` are for plain OAuth2; an OpenID issuer's subject is the ID token's `sub`".into(),
                );
            }
            match checked_url(issuer, "issuer") {
                Ok(_) => Some(LoginProvider::Oidc {
                    issuer: issuer.clone(),
                }),
                Err(e) => {
                    fail(out, e);
                    None
                }
            }
        }
        (None, (Some(auth), Some(token), Some(userinfo))) => {
            for (text, what) in [
                (auth, "authorization_endpoint"),
                (token, "token_endpoint"),
                (userinfo, "userinfo_endpoint"),
            ] {
                if let Err(e) = checked_url(text, what) {
                    fail(out, e);
                }
            }
            let subject_claim = login.subject_claim.clone().unwrap_or_else(|| "id".into());
            for claim in [Some(&subject_claim), login.handle_claim.as_ref()]
                .into_iter()
                .flatten()
            {
                if claim.is_empty() || claim.len() > 64 {
                    fail(
                        out,
                        format!("[auth.login] claim name `{claim}` must be 1 to 64 characters"),
                    );
                }
            }
            Some(LoginProvider::OAuth2 {
                authorization_endpoint: auth.clone(),
                token_endpoint: token.clone(),
                userinfo_endpoint: userinfo.clone(),
                subject_claim,
                handle_claim: login.handle_claim.clone(),
            })
        }
        _ => {
            fail(
                out,
                "[auth.login] needs either `issuer` (OpenID Connect, discovered) or all three of `authorization_endpoint`, `token_endpoint` and `userinfo_endpoint` (plain OAuth2, like GitHub), not both".into(),
            );
            None
        }
    };
    if login.client_id.trim().is_empty() {
        fail(out, "[auth.login] `client_id` must not be empty".into());
    }
    if let Some(name) = &login.client_secret_name
        && !valid_secret_name(name)
    {
        fail(
            out,
            "[auth.login] `client_secret_name` names a secret in the store (`bulkhead secrets set APP NAME`): a lowercase letter, then up to 63 lowercase letters, digits, `_` or `-`; the secret itself never goes in the manifest".into(),
        );
    }
    let origin = match checked_url(&login.redirect_url, "redirect_url") {
        Ok((url, origin)) => {
            if url.path() != CALLBACK_PATH || url.query().is_some() {
                fail(
                    out,
                    format!(
                        "[auth.login] `redirect_url` must be the app's origin followed by exactly `{CALLBACK_PATH}`, like `https://app.example.com{CALLBACK_PATH}`"
                    ),
                );
            }
            origin
        }
        Err(e) => {
            fail(out, e);
            String::new()
        }
    };
    let oidc = matches!(provider, Some(LoginProvider::Oidc { .. }));
    let mut scopes = login.scopes.clone().unwrap_or_else(|| {
        if oidc {
            vec!["openid".into()]
        } else {
            Vec::new()
        }
    });
    if oidc && !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let session_scopes = login.session_scopes.clone().unwrap_or_default();
    for scope in scopes.iter().chain(&session_scopes) {
        if !valid_scope(scope) {
            fail(
                out,
                format!(
                    "[auth.login] scope `{scope}` must be printable ASCII without spaces or quotes"
                ),
            );
        }
    }
    let session_ttl = login.session_ttl.unwrap_or(defaults::SESSION_TTL);
    if session_ttl > defaults::MAX_SESSION_TTL || session_ttl.get().as_secs() < 1 {
        fail(
            out,
            "[auth.login] `session_ttl` must be between 1s and 24h: sessions are short-lived (T12)"
                .into(),
        );
    }
    let function_cookies = login.function_cookies.clone().unwrap_or_default();
    if function_cookies.len() > MAX_FUNCTION_COOKIES {
        fail(
            out,
            format!(
                "[auth.login] `function_cookies` names at most {MAX_FUNCTION_COOKIES} cookies: each is sent back on every request, and the browser's `Cookie` field must stay within the header limit (T01)"
            ),
        );
    }
    for (i, name) in function_cookies.iter().enumerate() {
        if !valid_cookie_name(name) {
            fail(
                out,
                format!(
                    "[auth.login] `function_cookies` entry {} is not a cookie name: 1 to 64 letters, digits or !#$%&'*+-.^_`|~",
                    i + 1
                ),
            );
        } else if name.to_ascii_lowercase().starts_with("__host-bulkhead-") {
            fail(
                out,
                format!(
                    "[auth.login] `function_cookies` cannot name `{name}`: `__Host-bulkhead-*` cookies are the gateway's own"
                ),
            );
        } else if function_cookies[..i].contains(name) {
            fail(
                out,
                format!("[auth.login] `function_cookies` names `{name}` twice"),
            );
        }
    }
    if out.problems.len() > before {
        return None;
    }
    Some(LoginSettings {
        provider: provider?,
        client_id: login.client_id.clone(),
        client_secret: login.client_secret_name.clone(),
        redirect_url: login.redirect_url.clone(),
        origin,
        scopes,
        session_ttl,
        session_scopes,
        function_cookies,
    })
}
