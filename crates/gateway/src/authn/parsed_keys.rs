//! JWT signatures verified with public keys parsed once (issue 17, T11).
//!
//! jsonwebtoken 11's aws-lc-rs backend hands aws-lc-rs the raw key bytes on
//! every verification, so each token paid for parsing the public key and
//! checking its point again (about a third of an ES256 check). jsonwebtoken
//! keeps doing everything JOSE: the header, `alg` against the `Validation`,
//! the signature's base64, the claims and their checks. Only the verifier
//! it asks its process-wide [`CryptoProvider`] for is ours: when the
//! [`JwtVerifier`](super::jwt::JwtVerifier) hands over the key it parsed
//! when it loaded the JWKS ([`ParsedKey`]), and that key is byte for byte
//! the `DecodingKey` jsonwebtoken was given, for the algorithm it asks
//! about, the signature is checked with it (`ParsedPublicKey::verify_sig`);
//! in every other case (RSA, HMAC, no key handed over, a mismatch) the
//! provider is jsonwebtoken's own aws-lc-rs one, unchanged. Signing and the
//! JWK utilities are always jsonwebtoken's own.
//!
//! The handover is a thread-local slot that [`with_key`] fills for the
//! length of one `jsonwebtoken::decode` call on the same thread, and that
//! the provider empties when it reads it, so a key never outlives its call
//! or reaches another token. A different key under the same `kid` and
//! `alg` (a stranger's, or the JWKS's after a rotation) cannot verify: the
//! handed key is only used when its bytes equal the `DecodingKey`'s, and
//! the `DecodingKey` is the configured one (tested in
//! `crates/cli/tests/auth.rs`).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, ParsedPublicKey,
    VerificationAlgorithm,
};
use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier as Verify, KeyUtils, aws_lc};
use jsonwebtoken::errors::Result as JoseResult;
use jsonwebtoken::signature::{Error as SignatureError, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey};

/// A configured public key, parsed (and its point validated) once.
pub(super) struct ParsedKey {
    algorithm: Algorithm,
    /// The bytes jsonwebtoken's `DecodingKey` holds for this key.
    raw: Box<[u8]>,
    parsed: ParsedPublicKey,
}

impl ParsedKey {
    /// Parse `key` for `algorithm`; `None` for the algorithms this does not
    /// cover (RSA and HMAC go through jsonwebtoken's provider as before).
    pub(super) fn new(
        algorithm: Algorithm,
        key: &DecodingKey,
    ) -> Result<Option<Arc<Self>>, String> {
        let verification: &'static dyn VerificationAlgorithm = match algorithm {
            Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED,
            Algorithm::ES384 => &ECDSA_P384_SHA384_FIXED,
            Algorithm::EdDSA => &ED25519,
            _ => return Ok(None),
        };
        let raw = key
            .try_get_as_bytes()
            .map_err(|e| format!("the {algorithm:?} key has no raw form: {e}"))?;
        let parsed = ParsedPublicKey::new(verification, raw)
            .map_err(|e| format!("the {algorithm:?} public key is not valid: {e}"))?;
        Ok(Some(Arc::new(Self {
            algorithm,
            raw: raw.into(),
            parsed,
        })))
    }
}

thread_local! {
    /// The key [`with_key`] hands to the provider for one decode.
    static HANDED: RefCell<Option<Arc<ParsedKey>>> = const { RefCell::new(None) };
}

/// Empties the slot when the decode is over, also on unwinding.
struct Clear;

impl Drop for Clear {
    fn drop(&mut self) {
        HANDED.with(|slot| slot.borrow_mut().take());
    }
}

/// Run `decode` (one `jsonwebtoken::decode`) with `key` handed to the
/// provider; without a key, jsonwebtoken's own provider verifies.
pub(super) fn with_key<R>(key: Option<&Arc<ParsedKey>>, decode: impl FnOnce() -> R) -> R {
    let Some(key) = key else {
        return decode();
    };
    HANDED.with(|slot| *slot.borrow_mut() = Some(key.clone()));
    let _clear = Clear;
    decode()
}

/// Whether the provider is installed, else why not (for the log).
pub(super) fn install() -> Result<(), &'static str> {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| match CryptoProvider::install_default(&PROVIDER) {
        Ok(()) => true,
        Err(other) => std::ptr::eq(other, &PROVIDER),
    });
    if installed {
        Ok(())
    } else {
        Err(
            "another jsonwebtoken crypto provider was installed first; every JWT verification parses its key again",
        )
    }
}

/// jsonwebtoken's aws-lc-rs provider with [`verifier`] in front.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: |algorithm, key| (aws_lc::DEFAULT_PROVIDER.signer_factory)(algorithm, key),
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |der| {
            (aws_lc::DEFAULT_PROVIDER
                .key_utils
                .rsa_pub_components_from_private_key)(der)
        },
        rsa_pub_components_from_public_key: |der| {
            (aws_lc::DEFAULT_PROVIDER
                .key_utils
                .rsa_pub_components_from_public_key)(der)
        },
        ec_pub_components_from_private_key: |der, algorithm| {
            (aws_lc::DEFAULT_PROVIDER
                .key_utils
                .ec_pub_components_from_private_key)(der, algorithm)
        },
        ed_pub_components_from_private_key: |der, curve| {
            (aws_lc::DEFAULT_PROVIDER
                .key_utils
                .ed_pub_components_from_private_key)(der, curve)
        },
        compute_digest: |data, hash| {
            (aws_lc::DEFAULT_PROVIDER.key_utils.compute_digest)(data, hash)
        },
    },
};

/// The handed key when it is exactly `key` for `algorithm`, else
/// jsonwebtoken's own verifier.
fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> JoseResult<Box<dyn Verify>> {
    let handed = HANDED.with(|slot| slot.borrow_mut().take());
    if let Some(parsed) = handed
        && parsed.algorithm == *algorithm
        && key.family() == algorithm.family()
        && key.try_get_as_bytes().ok() == Some(&parsed.raw[..])
    {
        return Ok(Box::new(Parsed(parsed)));
    }
    (aws_lc::DEFAULT_PROVIDER.verifier_factory)(algorithm, key)
}

struct Parsed(Arc<ParsedKey>);

impl Verifier<Vec<u8>> for Parsed {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), SignatureError> {
        self.0
            .parsed
            .verify_sig(message, signature)
            .map_err(SignatureError::from_source)
    }
}

impl Verify for Parsed {
    fn algorithm(&self) -> Algorithm {
        self.0.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, Validation};

    fn fixture(name: &str) -> Vec<u8> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/fixtures/auth");
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn ed_public(pem_name: &str) -> DecodingKey {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pem = String::from_utf8(fixture(pem_name)).expect("pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64");
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).expect("ed25519 key");
        DecodingKey::from_ed_der(pair.public_key().as_ref())
    }

    fn token(pem_name: &str) -> String {
        let key = EncodingKey::from_ed_pem(&fixture(pem_name)).expect("ed key");
        let claims =
            serde_json::json!({"sub": "ada", "exp": jsonwebtoken::get_current_timestamp() + 60});
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("sign")
    }

    fn decode(token: &str, key: &DecodingKey, parsed: Option<&Arc<ParsedKey>>) -> bool {
        let validation = Validation::new(Algorithm::EdDSA);
        with_key(parsed, || {
            jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).is_ok()
        })
    }

    /// T11: the parsed key verifies its own tokens only; a parsed key
    /// handed for a different `DecodingKey` is not used, and the slot is
    /// empty after every decode.
    #[test]
    fn a_parsed_key_verifies_only_its_own_tokens_t11() {
        install().expect("the provider installs");
        let ours = ed_public("ed25519.pem");
        let parsed = ParsedKey::new(Algorithm::EdDSA, &ours)
            .expect("parses")
            .expect("EdDSA is covered");
        assert!(decode(&token("ed25519.pem"), &ours, Some(&parsed)));
        assert!(!decode(&token("stranger.pem"), &ours, Some(&parsed)));
        assert!(HANDED.with(|slot| slot.borrow().is_none()));
        // Handed for another key: jsonwebtoken's own verifier decides.
        let theirs = ed_public("stranger.pem");
        assert!(decode(&token("stranger.pem"), &theirs, Some(&parsed)));
        assert!(!decode(&token("ed25519.pem"), &theirs, Some(&parsed)));
        assert!(HANDED.with(|slot| slot.borrow().is_none()));
        // RSA and HMAC are left to jsonwebtoken's provider.
        assert!(
            ParsedKey::new(Algorithm::HS256, &DecodingKey::from_secret(b"k"))
                .expect("no error")
                .is_none()
        );
        // A malformed point is refused when the JWKS loads.
        assert!(ParsedKey::new(Algorithm::ES256, &DecodingKey::from_ec_der(&[4; 65])).is_err());
    }
}
