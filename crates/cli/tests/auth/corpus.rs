//! The credential attack corpus of `auth.rs` (T11, T12), shared with the
//! HTTP/2 run of it (`tls_h2.rs`): forged, expired, confused, tampered and
//! revoked credentials, each of which must get a 401 `invalid-token`.
#![allow(dead_code)]

use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::TestApp;

pub const ISSUER: &str = "https://id.example.org";
pub const AUDIENCE: &str = "guarded";

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/auth")
            .join(name),
    )
    .unwrap()
}

pub fn manifest(failures_per_minute: u32) -> String {
    format!(
        r#"
[app]
name = "guarded"

[auth]
failed_attempts_per_minute = {failures_per_minute}

[auth.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks = "keys/jwks.json"
algorithms = ["EdDSA", "ES256", "RS256"]
max_token_lifetime = "15m"
decryption_key = "keys/jwe.pem"
decryption_algorithm = "ECDH-ES+A256KW"

[[function]]
name = "echo"
component = "echo.wasm"
route = "/echo"
scopes = ["conference:register"]

[[function]]
name = "open"
component = "echo.wasm"
route = "/open"
auth = "public"

[[function]]
name = "keys-only"
component = "echo.wasm"
route = "/keys-only"
auth = "api-key"
"#
    )
}

pub fn app(failures_per_minute: u32) -> TestApp {
    let app = TestApp::new(&manifest(failures_per_minute), &["echo"]);
    install_keys(&app);
    app
}

/// The JWKS and the JWE decryption key the manifest names.
pub fn install_keys(app: &TestApp) {
    let keys = app.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for file in ["jwks.json", "jwe.pem"] {
        std::fs::write(keys.join(file), fixture(file)).unwrap();
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn claims() -> Value {
    json!({
        "sub": "ada",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 300,
        "scope": "conference:register profile:read",
    })
}

pub fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

pub fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

pub fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap()
}

pub fn ed_token(claims: &Value) -> String {
    sign(Algorithm::EdDSA, Some("ed-1"), &ed(), claims)
}

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub fn jwe(inner: &str, recipient_pem: &[u8]) -> String {
    use josekit::jwe::{ECDH_ES_A256KW, JweHeader};
    let mut header = JweHeader::new();
    header.set_content_encryption("A256GCM");
    header.set_content_type("JWT");
    let encrypter = ECDH_ES_A256KW.encrypter_from_pem(recipient_pem).unwrap();
    josekit::jwe::serialize_compact(inner.as_bytes(), &header, &encrypter).unwrap()
}

/// Flip one character of base64url segment `index` of a compact token.
pub fn flip(token: &str, index: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let segment = &mut parts[index];
    let middle = segment.len() / 2;
    let replacement = if &segment[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    segment.replace_range(middle..=middle, replacement);
    parts.join(".")
}

/// Every attack, named; `session` is a valid session token, used on a
/// route that accepts only API keys. Each must get 401 `invalid-token`.
pub fn attacks(session: &str) -> Vec<(&'static str, String)> {
    let valid = ed_token(&claims());
    let rsa_public = fixture("rsa.pub.pem");
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(claims().to_string().as_bytes());
    let stranger = EncodingKey::from_ed_pem(&fixture("stranger.pem")).unwrap();
    let es = EncodingKey::from_ec_pem(&fixture("p256.pem")).unwrap();
    let rs = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
    let jwe_ok = jwe(&valid, &fixture("jwe.pub.pem"));
    let parts: Vec<&str> = valid.split('.').collect();

    vec![
        ("alg none", format!("{header_none}.{body}.")),
        (
            "alg none, signature kept",
            format!("{header_none}.{body}.{}", parts[2]),
        ),
        (
            "HS256 with the RSA public key (confusion)",
            sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &EncodingKey::from_secret(&rsa_public),
                &claims(),
            ),
        ),
        (
            "HS256 with the Ed25519 key id",
            sign(
                Algorithm::HS256,
                Some("ed-1"),
                &EncodingKey::from_secret(b"fixture"),
                &claims(),
            ),
        ),
        (
            "ES256 key claiming the EdDSA kid",
            sign(Algorithm::ES256, Some("ed-1"), &es, &claims()),
        ),
        (
            "RS256 signature under the ES256 kid",
            sign(Algorithm::RS256, Some("ec-1"), &rs, &claims()),
        ),
        (
            "signed by a stranger",
            sign(Algorithm::EdDSA, Some("ed-1"), &stranger, &claims()),
        ),
        (
            "expired",
            ed_token(&with(
                with(claims(), "iat", json!(now() - 600)),
                "exp",
                json!(now() - 300),
            )),
        ),
        (
            "nbf in the future",
            ed_token(&with(claims(), "nbf", json!(now() + 600))),
        ),
        (
            "iat in the future",
            ed_token(&with(
                with(claims(), "iat", json!(now() + 600)),
                "exp",
                json!(now() + 900),
            )),
        ),
        (
            "lifetime over the maximum",
            ed_token(&with(claims(), "exp", json!(now() + 3600))),
        ),
        ("no exp", ed_token(&without(claims(), "exp"))),
        ("no iat", ed_token(&without(claims(), "iat"))),
        ("no sub", ed_token(&without(claims(), "sub"))),
        // T20, T13: a `sub` that `data erase|export --subject` could not
        // address, or that would reach a terminal raw, is refused.
        (
            "sub with a tab",
            ed_token(&with(claims(), "sub", json!("ada\tx"))),
        ),
        (
            "sub with a newline",
            ed_token(&with(claims(), "sub", json!("ada\nx"))),
        ),
        (
            "sub with C1 NEL (U+0085)",
            ed_token(&with(claims(), "sub", json!("bob\u{85}"))),
        ),
        (
            "sub with C1 CSI (U+009B)",
            ed_token(&with(claims(), "sub", json!("bob\u{9b}31m"))),
        ),
        (
            "sub with DEL",
            ed_token(&with(claims(), "sub", json!("dan\u{7f}"))),
        ),
        (
            "sub over 1024 bytes",
            ed_token(&with(claims(), "sub", json!("é".repeat(513)))),
        ),
        (
            "wrong issuer",
            ed_token(&with(claims(), "iss", json!("https://evil.example"))),
        ),
        ("no issuer", ed_token(&without(claims(), "iss"))),
        (
            "wrong audience",
            ed_token(&with(claims(), "aud", json!("someone-else"))),
        ),
        ("no audience", ed_token(&without(claims(), "aud"))),
        (
            "unknown kid",
            sign(Algorithm::EdDSA, Some("ed-9"), &ed(), &claims()),
        ),
        (
            "kid path traversal",
            sign(
                Algorithm::EdDSA,
                Some("../../../../etc/passwd"),
                &ed(),
                &claims(),
            ),
        ),
        (
            "kid URL",
            sign(
                Algorithm::EdDSA,
                Some("https://evil.example/jwks.json"),
                &ed(),
                &claims(),
            ),
        ),
        (
            "kid with a suffix",
            sign(Algorithm::EdDSA, Some("ed-1/../ed-1"), &ed(), &claims()),
        ),
        ("stripped signature", format!("{}.{}.", parts[0], parts[1])),
        (
            "truncated signature",
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]),
        ),
        ("bit-flipped signature", flip(&valid, 2)),
        ("bit-flipped payload", flip(&valid, 1)),
        (
            "oversized token",
            format!("{}.{}.{}", parts[0], "A".repeat(10_000), parts[2]),
        ),
        ("garbage", "not-a-token".to_string()),
        ("JWE with tampered ciphertext", flip(&jwe_ok, 3)),
        ("JWE with tampered tag", flip(&jwe_ok, 4)),
        ("JWE with tampered header", flip(&jwe_ok, 0)),
        (
            "JWE for another key",
            jwe(&valid, &fixture("other-jwe.pub.pem")),
        ),
        (
            "JWE holding an expired JWT",
            jwe(
                &ed_token(&with(
                    with(claims(), "iat", json!(now() - 600)),
                    "exp",
                    json!(now() - 300),
                )),
                &fixture("jwe.pub.pem"),
            ),
        ),
        (
            "JWE holding an unsigned JWT",
            jwe(&format!("{header_none}.{body}."), &fixture("jwe.pub.pem")),
        ),
        ("unknown session", format!("bhs_{}", "0".repeat(64))),
        ("unknown API key", format!("bhk_{}", "1".repeat(64))),
        ("session on an API-key-only route", session.to_string()),
    ]
}

/// The route an attack goes to.
pub fn route_of(case: &str) -> &'static str {
    if case == "session on an API-key-only route" {
        "/keys-only"
    } else {
        "/echo"
    }
}
