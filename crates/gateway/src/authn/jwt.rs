//! Signed JWTs (T11): keys only from the configured JWKS (reloaded when the
//! file changes), one algorithm per key, the token's `alg` must be that
//! key's, and the claims must hold issuer, audience, subject, `exp` and
//! `iat` with `exp - iat` under the maximum lifetime.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bulkhead_manifest::{JwtKeys, JwtSettings};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Verified;
use super::parsed_keys::{self, ParsedKey};

/// The longest `sub` accepted, in bytes (T20).
pub const MAX_SUB_BYTES: usize = 1024;

/// How often the JWKS file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Why a JWT was refused, for the operator's log (never the client).
pub type Reason = String;

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    /// The same key parsed once, for ES256, ES384 and EdDSA (issue 17).
    parsed: Option<Arc<ParsedKey>>,
    /// What every token for this key must satisfy, built once.
    validation: Validation,
}

struct KeySet {
    keys: Vec<Key>,
    modified: Option<SystemTime>,
    checked: Instant,
}

pub struct JwtVerifier {
    settings: JwtSettings,
    keys: RwLock<KeySet>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    // Required: jsonwebtoken ignores "iat" in `required_spec_claims`.
    iat: u64,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScopeList>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Text(String),
    List(Vec<String>),
}

impl JwtVerifier {
    /// Load the JWKS now; an unusable file is an error (for `check`).
    pub fn new(settings: &JwtSettings) -> Result<Self, String> {
        if let Err(why) = parsed_keys::install() {
            tracing::warn!(target: "bulkhead::auth", "{why}");
        }
        let keys = load_keys(settings)?;
        Ok(Self {
            settings: settings.clone(),
            keys: RwLock::new(KeySet {
                keys,
                modified: modified(&settings.keys),
                checked: Instant::now(),
            }),
        })
    }

    /// The issuer every accepted token names (`iss`).
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Reload the JWKS file if it changed; a bad new file keeps the old keys.
    fn refresh(&self) {
        let JwtKeys::File(path) = &self.settings.keys else {
            return;
        };
        let stale = self
            .keys
            .read()
            .map(|set| set.checked.elapsed() >= RELOAD_CHECK)
            .unwrap_or(false);
        if !stale {
            return;
        }
        let Ok(mut set) = self.keys.write() else {
            return;
        };
        set.checked = Instant::now();
        let now = modified(&self.settings.keys);
        if now == set.modified {
            return;
        }
        match load_keys(&self.settings) {
            Ok(keys) => {
                set.keys = keys;
                set.modified = now;
                tracing::info!(target: "bulkhead::auth", jwks = %path.display(), "reloaded the JWKS");
            }
            Err(e) => {
                tracing::error!(target: "bulkhead::auth", error = %e, "the changed JWKS is unusable; keeping the previous keys")
            }
        }
    }

    pub fn verify(&self, token: &str) -> Result<Verified, Reason> {
        self.refresh();
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed JWT header: {e}"))?;
        if header.crit.is_some() {
            return Err("the JWT header has `crit` extensions we do not understand".into());
        }
        if header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err("the JWT header points at its own key (jku/jwk/x5u/x5c); only configured keys are used".into());
        }
        let set = self
            .keys
            .read()
            .map_err(|_| "key set unavailable".to_string())?;
        let key = match &header.kid {
            Some(kid) => set
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or("unknown `kid`")?,
            None if set.keys.len() == 1 => &set.keys[0],
            None => return Err("no `kid`, and more than one key is configured".into()),
        };
        if header.alg != key.algorithm {
            return Err(format!(
                "`alg` {:?} is not the key's algorithm {:?} (algorithm confusion)",
                header.alg, key.algorithm
            ));
        }
        let data = parsed_keys::with_key(key.parsed.as_ref(), || {
            jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
        })
        .map_err(|e| format!("JWT refused: {e}"))?;
        let claims = data.claims;
        let leeway = self.settings.leeway.get().as_secs();
        let now = jsonwebtoken::get_current_timestamp();
        if claims.iat > now.saturating_add(leeway) {
            return Err("`iat` is in the future".into());
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        let max = self.settings.max_token_lifetime.get().as_secs();
        if lifetime > max {
            return Err(format!(
                "token lifetime {lifetime}s is over the maximum {max}s"
            ));
        }
        if claims.sub.is_empty() {
            return Err("empty `sub`".into());
        }
        // The subject keys stored personal data: one `data erase|export
        // --subject` cannot address, or that reaches a terminal or log raw,
        // is refused (T20, T13). The reason goes to the log only (T11).
        if claims.sub.len() > MAX_SUB_BYTES {
            return Err(format!(
                "`sub` is {} bytes, over the maximum {MAX_SUB_BYTES}",
                claims.sub.len()
            ));
        }
        if claims.sub.chars().any(char::is_control) {
            return Err("`sub` has control characters".into());
        }
        let mut scopes: Vec<String> = claims
            .scope
            .iter()
            .flat_map(|s| s.split(' '))
            .map(String::from)
            .collect();
        match claims.scp {
            Some(ScopeList::Text(text)) => scopes.extend(text.split(' ').map(String::from)),
            Some(ScopeList::List(list)) => scopes.extend(list),
            None => {}
        }
        scopes.retain(|s| !s.is_empty());
        Ok(Verified {
            subject: claims.sub,
            scopes,
        })
    }
}

fn modified(keys: &JwtKeys) -> Option<SystemTime> {
    match keys {
        JwtKeys::File(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        JwtKeys::Inline(_) => None,
    }
}

/// What a token for a key of `algorithm` must satisfy: its `alg` only, the
/// issuer and audience, `exp`, `iss`, `aud` and `sub` present, `nbf`
/// checked (T11).
fn validation(settings: &JwtSettings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = settings.leeway.get().as_secs();
    validation.validate_nbf = true;
    validation
}

/// Read a JWKS; each key gets exactly one algorithm, which must be allowed.
fn load_keys(settings: &JwtSettings) -> Result<Vec<Key>, String> {
    let (source, allowed) = (&settings.keys, &settings.algorithms);
    let (text, path) = match source {
        JwtKeys::File(path) => (
            // Bounded (T18, T05): a JWKS that is /dev/zero or a FIFO is refused.
            bulkhead_manifest::files::read_bounded_text(
                path,
                bulkhead_manifest::files::MAX_TEXT_BYTES,
            )
            .map_err(|e| format!("cannot read JWKS {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        JwtKeys::Inline(json) => (json.clone(), "[auth.jwt] keys".to_string()),
    };
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("JWKS {path} is not valid: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        let algorithm = key_algorithm(jwk).map_err(|e| format!("JWKS key {name}: {e}"))?;
        if !allowed
            .iter()
            .any(|a| Algorithm::from_str(a).ok() == Some(algorithm))
        {
            return Err(format!(
                "JWKS key {name} uses {algorithm:?}, which [auth.jwt] `algorithms` does not list"
            ));
        }
        check_key_size(jwk).map_err(|e| format!("JWKS key {name}: {e}"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key {name}: {e}"))?;
        let parsed =
            ParsedKey::new(algorithm, &key).map_err(|e| format!("JWKS key {name}: {e}"))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
            parsed,
            validation: validation(settings, algorithm),
        });
    }
    if keys.is_empty() {
        return Err(format!("JWKS {path} has no keys"));
    }
    if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
        return Err(format!(
            "JWKS {path}: with more than one key, every key needs a `kid`"
        ));
    }
    Ok(keys)
}

/// The key's one algorithm: its `alg`, else what its type implies.
fn key_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    if let Some(alg) = jwk.common.key_algorithm {
        return alg
            .to_string()
            .parse::<Algorithm>()
            .map_err(|_| format!("algorithm {alg:?} cannot sign JWTs"));
    }
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(_) => Ok(Algorithm::EdDSA),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Ok(Algorithm::ES256),
            EllipticCurve::P384 => Ok(Algorithm::ES384),
            _ => Err("unsupported curve".into()),
        },
        AlgorithmParameters::RSA(_) => {
            Err("an RSA key must say its `alg` (RS256 or PS256, …)".into())
        }
        _ => Err("symmetric and unknown key types are not accepted".into()),
    }
}

/// Reject keys of the wrong size before a verifier sees them.
fn check_key_size(jwk: &Jwk) -> Result<(), String> {
    use base64::Engine as _;
    let decoded_len = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map(|b| b.len())
            .map_err(|_| "a key coordinate is not base64url".to_string())
    };
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(okp) => {
            if decoded_len(&okp.x)? != 32 {
                return Err("an Ed25519 key is 32 bytes".into());
            }
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let size = match ec.curve {
                EllipticCurve::P256 => 32,
                EllipticCurve::P384 => 48,
                _ => return Err("unsupported curve".into()),
            };
            if decoded_len(&ec.x)? != size || decoded_len(&ec.y)? != size {
                return Err(format!(
                    "a {:?} point has {size}-byte coordinates",
                    ec.curve
                ));
            }
        }
        AlgorithmParameters::RSA(rsa) => {
            if decoded_len(&rsa.n)? < 256 {
                return Err("RSA keys must be at least 2048 bits".into());
            }
        }
        _ => return Err("symmetric and unknown key types are not accepted".into()),
    }
    Ok(())
}
