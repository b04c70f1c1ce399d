//! Encrypted tokens (T11, T12: "JWTs are encoded, not encrypted, unless
//! JWE is used"): a compact JWE (RFC 7516) whose plaintext is a signed JWT,
//! decrypted with the configured private key, then verified like any JWT.
//! JOSE is josekit's; we only pin what we accept before it decrypts.

use bulkhead_manifest::JweSettings;
use josekit::jwe::{self, JweDecrypter, JweHeader};
use zeroize::Zeroizing;

pub struct JweOpener {
    algorithm: String,
    decrypter: Box<dyn JweDecrypter>,
}

impl JweOpener {
    pub fn new(settings: &JweSettings) -> Result<Self, String> {
        // Bounded (T15, T18): a key file that is a device or FIFO is refused.
        let pem = Zeroizing::new(
            bulkhead_manifest::files::read_bounded(
                &settings.decryption_key,
                bulkhead_manifest::files::MAX_TEXT_BYTES,
            )
            .map_err(|e| {
                format!(
                    "cannot read the JWE key {}: {e}",
                    settings.decryption_key.display()
                )
            })?,
        );
        let decrypter: Box<dyn JweDecrypter> = match settings.algorithm.as_str() {
            "ECDH-ES+A256KW" => Box::new(
                jwe::ECDH_ES_A256KW
                    .decrypter_from_pem(&*pem)
                    .map_err(|e| format!("the JWE key is not a usable EC private key: {e}"))?,
            ),
            "RSA-OAEP-256" => Box::new(
                jwe::RSA_OAEP_256
                    .decrypter_from_pem(&*pem)
                    .map_err(|e| format!("the JWE key is not a usable RSA private key: {e}"))?,
            ),
            other => return Err(format!("JWE algorithm {other} is not supported")),
        };
        Ok(Self {
            algorithm: settings.algorithm.clone(),
            decrypter,
        })
    }

    /// The inner JWS of a compact JWE, or why not.
    pub fn open(&self, token: &str) -> Result<String, String> {
        let selector =
            |header: &JweHeader| -> Result<Option<&dyn JweDecrypter>, josekit::JoseError> {
                Ok(accepts(header, &self.algorithm).then_some(&*self.decrypter))
            };
        let (plaintext, header) = jwe::deserialize_compact_with_selector(token, selector)
            .map_err(|e| format!("JWE refused: {e}"))?;
        if !header
            .content_type()
            .is_some_and(|cty| cty.eq_ignore_ascii_case("JWT"))
        {
            return Err("the JWE does not hold a JWT (`cty` is not JWT)".into());
        }
        String::from_utf8(plaintext).map_err(|_| "the JWE plaintext is not text".into())
    }
}

/// Only our algorithm with A256GCM, no compression, no critical extensions.
fn accepts(header: &JweHeader, algorithm: &str) -> bool {
    header.algorithm() == Some(algorithm)
        && header.content_encryption() == Some("A256GCM")
        && header.compression().is_none()
        && header.critical().is_none()
}
