//! Authentication settings (T11, T12): how callers prove who they are, and
//! what each function requires. Routes are authenticated unless the
//! manifest writes `auth = "public"`.

use std::path::PathBuf;

use crate::units::Duration;

/// Signature algorithms a JWT issuer may use. Symmetric (HS*) algorithms
/// are not offered: they would make every verifier a possible forger, and
/// they are what algorithm-confusion attacks abuse.
pub const JWT_ALGORITHMS: &[&str] = &[
    "EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

/// Key-management algorithms accepted for encrypted tokens (JWE).
pub const JWE_ALGORITHMS: &[&str] = &["ECDH-ES+A256KW", "RSA-OAEP-256"];

/// `[auth.jwt]`: the one token issuer the app trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// Where the issuer's public keys come from.
    pub keys: JwtKeys,
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest `exp - iat` accepted: only short-lived tokens pass.
    pub max_token_lifetime: Duration,
    /// Encrypted tokens (nested JWT in a compact JWE), when configured.
    pub jwe: Option<JweSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeys {
    /// A JWKS file, reloaded when it changes.
    File(PathBuf),
    /// Keys written in the manifest, as JWKS JSON.
    Inline(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JweSettings {
    /// PEM private key, readable by the host only.
    pub decryption_key: PathBuf,
    /// One of [`JWE_ALGORITHMS`]; content encryption is always A256GCM.
    pub algorithm: String,
}

/// Kinds of credential a caller may present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A signed JWT, or an encrypted one when JWE is configured.
    Jwt,
    /// An opaque session token from `bulkhead token issue`.
    Session,
    /// An API key from `bulkhead keys create`.
    ApiKey,
}

impl CredentialKind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "jwt" => Some(Self::Jwt),
            "session" => Some(Self::Session),
            "api-key" => Some(Self::ApiKey),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Session => "session",
            Self::ApiKey => "api-key",
        }
    }
}

/// What a function requires of its callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone; must be written out as `auth = "public"`.
    Public,
    /// A valid credential of one of these kinds holding every scope.
    Authenticated {
        kinds: Vec<CredentialKind>,
        scopes: Vec<String>,
    },
}

impl Access {
    pub fn is_public(&self) -> bool {
        matches!(self, Access::Public)
    }
}

pub mod defaults {
    use crate::units::Duration;

    pub const LEEWAY: Duration = Duration::from_secs(30);
    pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
    /// Failed authentications per client address per minute before back-off (T03).
    pub const FAILED_ATTEMPTS_PER_MINUTE: u32 = 10;
    /// One back-off strike is forgiven per this much time (T03): as long
    /// as the longest penalty, so a guesser who keeps the address at its
    /// longest back-off must still fail again every time it ends.
    pub const BACKOFF_DECAY: Duration = Duration::from_secs(15 * 60);
}

/// From `[auth.jwt]` as written to [`JwtSettings`], collecting problems.
pub(crate) fn resolve_jwt(
    out: &mut crate::problem::Collector<'_>,
    app_dir: &std::path::Path,
    raw: &toml::Spanned<crate::raw::RawJwt>,
) -> Option<JwtSettings> {
    let jwt = raw.get_ref();
    let before = out.problems.len();
    for (key, value) in [("issuer", &jwt.issuer), ("audience", &jwt.audience)] {
        if value.get_ref().trim().is_empty() {
            out.at(
                Some(value.span()),
                format!("[auth.jwt] `{key}` must not be empty"),
            );
        }
    }
    let keys = match (&jwt.jwks, &jwt.keys) {
        (Some(file), None) => crate::resolve::app_file(
            out,
            app_dir,
            file,
            "[auth.jwt] jwks",
            "write the issuer's public keys there as a JWKS (`{\"keys\": [...]}`)",
        )
        .map(JwtKeys::File),
        (None, Some(inline)) => {
            match serde_json::to_string(&serde_json::json!({ "keys": inline.get_ref() })) {
                Ok(json) => Some(JwtKeys::Inline(json)),
                Err(e) => {
                    out.at(
                        Some(inline.span()),
                        format!("[auth.jwt] `keys` cannot be read as JWKs: {e}"),
                    );
                    None
                }
            }
        }
        _ => {
            out.at(
                Some(raw.span()),
                "[auth.jwt] needs exactly one of `jwks` (a JWKS file) or `keys` (inline JWKs)",
            );
            None
        }
    };
    let mut algorithms = Vec::new();
    for alg in jwt.algorithms.get_ref() {
        if alg.eq_ignore_ascii_case("none") {
            out.at(
                Some(jwt.algorithms.span()),
                "[auth.jwt] `none` can never be listed: unsigned tokens prove nothing",
            );
        } else if alg.starts_with("HS") {
            out.at(
                Some(jwt.algorithms.span()),
                format!("[auth.jwt] `{alg}` is symmetric: every verifier could forge tokens; use EdDSA or ES256"),
            );
        } else if !JWT_ALGORITHMS.contains(&alg.as_str()) {
            out.at(
                Some(jwt.algorithms.span()),
                format!(
                    "[auth.jwt] algorithm `{alg}` is not one of {}",
                    JWT_ALGORITHMS.join(", ")
                ),
            );
        } else if !algorithms.contains(alg) {
            algorithms.push(alg.clone());
        }
    }
    if jwt.algorithms.get_ref().is_empty() {
        out.at(
            Some(jwt.algorithms.span()),
            "[auth.jwt] `algorithms` is empty; list the issuer's, like [\"EdDSA\", \"ES256\"]",
        );
    }
    let leeway = jwt
        .leeway
        .as_ref()
        .map_or(defaults::LEEWAY, |l| *l.get_ref());
    if leeway > Duration::from_secs(300) {
        let span = jwt.leeway.as_ref().map(toml::Spanned::span);
        out.at(span, "[auth.jwt] `leeway` may be at most 5m");
    }
    let max_token_lifetime = jwt
        .max_token_lifetime
        .as_ref()
        .map_or(defaults::MAX_TOKEN_LIFETIME, |l| *l.get_ref());
    if max_token_lifetime > Duration::from_secs(24 * 3600) {
        let span = jwt.max_token_lifetime.as_ref().map(toml::Spanned::span);
        out.at(
            span,
            "[auth.jwt] `max_token_lifetime` may be at most 24h: tokens must be short-lived",
        );
    }
    let jwe = match (&jwt.decryption_key, &jwt.decryption_algorithm) {
        (None, None) => None,
        (Some(key), Some(alg)) => {
            if !JWE_ALGORITHMS.contains(&alg.get_ref().as_str()) {
                out.at(
                    Some(alg.span()),
                    format!(
                        "[auth.jwt] `decryption_algorithm` must be one of {}",
                        JWE_ALGORITHMS.join(", ")
                    ),
                );
            }
            crate::resolve::app_file(
                out,
                app_dir,
                key,
                "[auth.jwt] decryption_key",
                "write the PEM private key there",
            )
            .map(|decryption_key| JweSettings {
                decryption_key,
                algorithm: alg.get_ref().clone(),
            })
        }
        _ => {
            out.at(
                Some(raw.span()),
                "[auth.jwt] encrypted tokens need both `decryption_key` and `decryption_algorithm`",
            );
            None
        }
    };
    if out.problems.len() > before {
        return None;
    }
    Some(JwtSettings {
        issuer: jwt.issuer.get_ref().clone(),
        audience: jwt.audience.get_ref().clone(),
        keys: keys?,
        algorithms,
        leeway,
        max_token_lifetime,
        jwe,
    })
}

/// A function's `auth` and `scopes`, with the app's authenticators.
pub(crate) fn resolve_access(
    out: &mut crate::problem::Collector<'_>,
    function: &str,
    auth: Option<&toml::Spanned<crate::raw::RawAccess>>,
    scopes: Option<&toml::Spanned<Vec<String>>>,
    jwt_configured: bool,
) -> Access {
    let scope_list = scopes.map(|s| s.get_ref().clone()).unwrap_or_default();
    for scope in &scope_list {
        let valid = !scope.is_empty()
            && scope
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
        if !valid {
            out.at(
                scopes.map(toml::Spanned::span),
                format!("function `{function}`: scope `{scope}` must be printable ASCII without spaces or quotes"),
            );
        }
    }
    let names: Vec<String> = match auth.map(toml::Spanned::get_ref) {
        None => Vec::new(),
        Some(crate::raw::RawAccess::One(one)) => vec![one.clone()],
        Some(crate::raw::RawAccess::Many(many)) => many.clone(),
    };
    if names.iter().any(|n| n == "public") {
        if names.len() > 1 || !scope_list.is_empty() {
            out.at(
                auth.map(toml::Spanned::span),
                format!("function `{function}`: a public route cannot also require credentials or scopes"),
            );
        }
        return Access::Public;
    }
    let mut kinds = Vec::new();
    for name in &names {
        match CredentialKind::parse(name) {
            Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
            Some(_) => {}
            None => out.at(
                auth.map(toml::Spanned::span),
                format!(
                    "function `{function}`: auth `{name}` is not one of \"public\", \"jwt\", \"session\", \"api-key\""
                ),
            ),
        }
    }
    if kinds.is_empty() {
        // Absent: any credential the app accepts.
        if jwt_configured {
            kinds.push(CredentialKind::Jwt);
        }
        kinds.extend([CredentialKind::Session, CredentialKind::ApiKey]);
    }
    if kinds.contains(&CredentialKind::Jwt) && !jwt_configured {
        out.at(
            auth.map(toml::Spanned::span),
            format!(
                "function `{function}`: auth \"jwt\" needs an [auth.jwt] section naming the issuer"
            ),
        );
    }
    Access::Authenticated {
        kinds,
        scopes: scope_list,
    }
}
