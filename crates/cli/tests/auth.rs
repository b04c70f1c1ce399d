//! T11, T12, T03: every route is authenticated unless declared public. An
//! attack corpus of forged, expired, confused, tampered and revoked
//! credentials is refused with 401 (and a log record naming the precise
//! reason); valid JWTs (EdDSA, ES256, RS256), JWEs, sessions and API keys
//! reach the function with the verified subject and scopes; failed
//! attempts from one address are throttled with growing back-off.

#[path = "auth/corpus.rs"]
mod corpus;
mod support;

use std::time::Duration;

use bytes::Bytes;
use corpus::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::{Reply, Server, TestApp, request, send};

async fn call(server: &Server, path: &str, credential: Option<&str>) -> Reply {
    let mut req = request("GET", server.addr, path, Bytes::new());
    if let Some(credential) = credential {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {credential}").parse().unwrap(),
        );
    }
    send(server.addr, req).await
}

fn header_of(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .echoed_headers()
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test]
async fn the_attack_corpus_is_refused() {
    let app = app(10_000);
    let session = app.run_with(
        &["token", "issue"],
        &["--subject", "ada", "--scopes", "conference:register"],
    );
    assert!(session.status.success());
    let session = String::from_utf8_lossy(&session.stdout).trim().to_string();
    let server = Server::start(&app);

    let corpus = attacks(&session);
    for (case, token) in &corpus {
        let path = route_of(case);
        let reply = call(&server, path, Some(token)).await;
        let problem = reply.assert_problem(401, "invalid-token");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"bulkhead\", error=\"invalid_token\""),
            "{case}"
        );
        assert!(
            !problem.to_string().contains(&token[..token.len().min(40)]),
            "{case}: never echoed"
        );
        let record = server.access_record(&reply.correlation_id());
        assert_eq!(record["reason"], "invalid-token", "{case}");
        assert!(
            record["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: the log says why"
        );
    }

    // No credential at all: 401 without an error code (RFC 6750 §3.1).
    let bare = call(&server, "/echo", None).await;
    bare.assert_problem(401, "unauthenticated");
    assert_eq!(
        bare.header("www-authenticate"),
        Some("Bearer realm=\"bulkhead\"")
    );

    // Valid, but without the scope the function requires: 403.
    let narrow = ed_token(&with(claims(), "scope", json!("profile:read")));
    let forbidden = call(&server, "/echo", Some(&narrow)).await;
    forbidden.assert_problem(403, "insufficient-scope");
    assert!(
        forbidden
            .header("www-authenticate")
            .is_some_and(|h| h.contains("insufficient_scope") && h.contains("conference:register"))
    );
    assert_eq!(
        server.access_record(&forbidden.correlation_id())["subject"],
        "jwt:https%3A//id.example.org:ada"
    );

    // The public route needs nothing.
    assert_eq!(call(&server, "/open", None).await.status, 200);

    // The `sub` bound is 1024 bytes, inclusive.
    let longest = ed_token(&with(claims(), "sub", json!("a".repeat(1024))));
    assert_eq!(call(&server, "/echo", Some(&longest)).await.status, 200);
}

#[tokio::test]
async fn valid_credentials_of_each_kind_reach_the_function() {
    let app = app(10_000);
    let issued = app.run_with(
        &["token", "issue"],
        &[
            "--subject",
            "grace",
            "--scopes",
            "conference:register,talks:read",
        ],
    );
    let session = String::from_utf8_lossy(&issued.stdout).trim().to_string();
    let created = app.run_with(
        &["keys", "create"],
        &[
            "--subject",
            "ci-bot",
            "--scopes",
            "conference:register",
            "--label",
            "CI",
        ],
    );
    let api_key = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(session.starts_with("bhs_") && api_key.starts_with("bhk_"));
    let server = Server::start(&app);

    let es = EncodingKey::from_ec_pem(&fixture("p256.pem")).unwrap();
    let rs = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).unwrap();
    let scp_list = with(
        without(claims(), "scope"),
        "scp",
        json!(["conference:register"]),
    );
    let cases = [
        ("EdDSA JWT", ed_token(&claims()), "ada", "jwt"),
        (
            "ES256 JWT",
            sign(Algorithm::ES256, Some("ec-1"), &es, &claims()),
            "ada",
            "jwt",
        ),
        (
            "RS256 JWT with scp",
            sign(Algorithm::RS256, Some("rsa-1"), &rs, &scp_list),
            "ada",
            "jwt",
        ),
        (
            "JWE",
            jwe(&ed_token(&claims()), &fixture("jwe.pub.pem")),
            "ada",
            "jwt",
        ),
        ("session", session.clone(), "grace", "session"),
        ("API key", api_key.clone(), "ci-bot", "api-key"),
    ];
    for (case, token, subject, kind) in &cases {
        let mut req = request("GET", server.addr, "/echo", Bytes::new());
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        // A client's own identity headers never get through.
        req.headers_mut()
            .insert("bulkhead-subject", "root".parse().unwrap());
        req.headers_mut()
            .insert("bulkhead-scopes", "everything".parse().unwrap());
        let reply = send(server.addr, req).await;
        assert_eq!(reply.status, 200, "{case}: {}", reply.text());
        assert_eq!(
            header_of(&reply, "bulkhead-subject"),
            vec![subject.to_string()],
            "{case}"
        );
        assert_eq!(
            header_of(&reply, "bulkhead-credential"),
            vec![kind.to_string()],
            "{case}"
        );
        let scopes = header_of(&reply, "bulkhead-scopes");
        assert_eq!(scopes.len(), 1, "{case}");
        assert!(
            scopes[0].split(' ').any(|s| s == "conference:register"),
            "{case}: {scopes:?}"
        );
        // The function sees the subject as its credential names it, with
        // the kind and (for JWTs) the issuer; the gateway's records name
        // the qualified subject, one namespace per kind and issuer (T13).
        let issuer = header_of(&reply, "bulkhead-issuer");
        let qualified = if *kind == "jwt" {
            assert_eq!(issuer, vec![ISSUER.to_string()], "{case}");
            format!("jwt:https%3A//id.example.org:{subject}")
        } else {
            assert!(issuer.is_empty(), "{case}: {issuer:?}");
            format!("{kind}:{subject}")
        };
        assert_eq!(
            server.access_record(&reply.correlation_id())["subject"],
            qualified.as_str(),
            "{case}"
        );
    }
    // An API key on the API-key-only route.
    assert_eq!(
        call(&server, "/keys-only", Some(&api_key)).await.status,
        200
    );

    // Revocation is immediate, for sessions and API keys alike.
    let session_id = listed_id(&app, "token", "grace");
    let key_id = listed_id(&app, "keys", "ci-bot");
    assert!(
        app.run_with(&["token", "revoke"], &[&session_id])
            .status
            .success()
    );
    assert!(
        app.run_with(&["keys", "revoke"], &[&key_id])
            .status
            .success()
    );
    call(&server, "/echo", Some(&session))
        .await
        .assert_problem(401, "invalid-token");
    call(&server, "/echo", Some(&api_key))
        .await
        .assert_problem(401, "invalid-token");
    let listing = app.run_with(&["token", "list"], &[]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("revoked") && !listing.contains(&session));
}

fn listed_id(app: &TestApp, command: &str, subject: &str) -> String {
    let out = app.run_with(&[command, "list"], &[]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(subject))
        .and_then(|l| l.split_whitespace().next())
        .expect("listed")
        .to_string()
}

#[tokio::test]
async fn sessions_expire() {
    let app = app(10_000);
    let issued = app.run_with(
        &["token", "issue"],
        &[
            "--subject",
            "ada",
            "--scopes",
            "conference:register",
            "--ttl",
            "1s",
        ],
    );
    let session = String::from_utf8_lossy(&issued.stdout).trim().to_string();
    let server = Server::start(&app);
    // Wait out the one-second lifetime (a wait, not a timing assertion).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = call(&server, "/echo", Some(&session)).await;
    reply.assert_problem(401, "invalid-token");
    assert_eq!(
        server.access_record(&reply.correlation_id())["detail"],
        "credential expired"
    );
    // The store holds only the hash, never the token.
    let db = std::fs::read(app.path().join(".bulkhead/dev/state.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&session));
}

/// T03: after the allowance of failures, an address is shut out — even
/// with a valid credential it has not used before — for a time that grows
/// with each strike.
#[tokio::test]
async fn guessing_is_throttled_with_growing_back_off() {
    let app = app(3);
    let server = Server::start(&app);
    for _ in 0..3 {
        call(&server, "/echo", Some("bhk_guess"))
            .await
            .assert_problem(401, "invalid-token");
    }
    let first = call(&server, "/echo", Some("bhk_guess")).await;
    first.assert_problem(429, "auth-backoff");
    let retry: u64 = first.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    let shut_out = call(&server, "/echo", Some(&ed_token(&claims()))).await;
    shut_out.assert_problem(429, "auth-backoff");
    // Public routes stay open to everyone.
    assert_eq!(call(&server, "/open", None).await.status, 200);
    server.wait_for_log(
        |r| r["detail"].as_str().is_some_and(|d| d.contains("shut out")),
        Duration::from_secs(10),
    );
}

/// The back-off's penalty, if `reply` is one.
fn penalty(reply: &Reply) -> Option<u64> {
    (reply.status == 429).then(|| {
        reply.assert_problem(429, "auth-backoff");
        reply
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in seconds")
    })
}

/// A valid token no one has presented before.
fn fresh_token(n: u64) -> String {
    ed_token(&with(claims(), "jti", json!(format!("fresh-{n}"))))
}

/// T03: behind an address in back-off (a NAT a guesser shares with real
/// users), a credential that was accepted before still works, verified as
/// usual; a valid credential not seen before is refused unread like any
/// guess, so guessing gains nothing from it.
#[tokio::test]
async fn known_credentials_pass_a_back_off_guesses_do_not_t03() {
    let app = app(2);
    let created = app.run_with(
        &["keys", "create"],
        &["--subject", "ci-bot", "--scopes", "conference:register"],
    );
    let api_key = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(api_key.starts_with("bhk_"), "{api_key}");
    let server = Server::start(&app);
    let known = ed_token(&with(claims(), "jti", json!("known")));
    assert_eq!(call(&server, "/echo", Some(&known)).await.status, 200);
    // A key accepted once, then revoked: known, but no longer valid.
    assert_eq!(call(&server, "/echo", Some(&api_key)).await.status, 200);
    let key_id = listed_id(&app, "keys", "ci-bot");
    assert!(
        app.run_with(&["keys", "revoke"], &[&key_id])
            .status
            .success()
    );
    // Guess until the address holds its third strike (a 4 s penalty).
    let mut strikes = 0;
    let started = std::time::Instant::now();
    loop {
        let reply = call(&server, "/echo", Some("bhk_guess")).await;
        if penalty(&reply).is_some_and(|wait| wait >= 4) {
            break;
        }
        strikes += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no third strike after {strikes} guesses"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admitted = call(&server, "/echo", Some(&known)).await;
    assert_eq!(admitted.status, 200, "{}", admitted.text());
    assert!(admitted.json()["headers"].is_array());
    assert!(penalty(&call(&server, "/echo", Some(&fresh_token(1))).await).is_some());
    assert!(penalty(&call(&server, "/echo", Some("bhk_guess")).await).is_some());
    // A known credential is still verified during the back-off: revoked,
    // it is refused, and the log says why.
    let revoked = call(&server, "/echo", Some(&api_key)).await;
    assert_ne!(revoked.status, 200, "{}", revoked.text());
    server.wait_for_log(
        |r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("credential revoked"))
        },
        Duration::from_secs(10),
    );
}

/// T03: strikes decay. With one forgiven per second (`backoff_decay`), an
/// address that fails now and then, quietly in between, is never shut out
/// for longer than the first penalty; without decay every strike doubles
/// it for good (1 s, 2 s, 4 s, ...), which is how 11 bad tokens a quarter
/// of an hour locked everyone behind one NAT out.
#[tokio::test]
async fn failed_authentication_strikes_decay_t03() {
    let manifest = manifest(2).replace(
        "failed_attempts_per_minute = 2",
        "failed_attempts_per_minute = 2\nbackoff_decay = \"1s\"",
    );
    let app = TestApp::new(&manifest, &["echo"]);
    let keys = app.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    for file in ["jwks.json", "jwe.pem"] {
        std::fs::write(keys.join(file), fixture(file)).unwrap();
    }
    let server = Server::start(&app);
    let mut fresh = 0;
    let mut penalties = Vec::new();
    for _ in 0..3 {
        // Guess until penalised (the allowance may have refilled a little).
        let mut wait = None;
        for _ in 0..10 {
            wait = penalty(&call(&server, "/echo", Some("bhk_guess")).await);
            if wait.is_some() {
                break;
            }
        }
        penalties.push(wait.expect("guessing is penalised"));
        // Poll (bounded) until the address is admitted again, then stay
        // quiet for longer than the decay period.
        let started = std::time::Instant::now();
        loop {
            fresh += 1;
            let reply = call(&server, "/echo", Some(&fresh_token(fresh))).await;
            if reply.status == 200 {
                break;
            }
            assert!(penalty(&reply).is_some(), "{}", reply.text());
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "still shut out"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert_eq!(penalties, [1, 1, 1], "strikes never decay");
}

#[test]
fn check_lists_public_routes_and_refuses_weak_settings() {
    let app = app(10);
    let out = app.run(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("public routes (no credential required): /open"),
        "{text}"
    );
    assert!(
        text.contains("authenticated (jwt, session, api-key), scopes conference:register"),
        "{text}"
    );

    for (weak, expected) in [
        (
            r#"algorithms = ["EdDSA", "ES256", "RS256"]"#,
            r#"algorithms = ["none"]"#,
        ),
        (
            r#"algorithms = ["EdDSA", "ES256", "RS256"]"#,
            r#"algorithms = ["HS256"]"#,
        ),
        (
            r#"max_token_lifetime = "15m""#,
            r#"max_token_lifetime = "30d""#,
        ),
    ] {
        std::fs::write(
            app.path().join("bulkhead.toml"),
            manifest(10).replace(weak, expected),
        )
        .unwrap();
        let out = app.run(&["check"]);
        assert!(!out.status.success(), "{expected} must be refused");
    }
    // A JWKS listing a key whose algorithm is not allowed is refused at deploy.
    std::fs::write(
        app.path().join("bulkhead.toml"),
        manifest(10).replace(r#"["EdDSA", "ES256", "RS256"]"#, r#"["EdDSA"]"#),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&app.run(&["check"]).stderr).into_owned();
    assert!(
        err.contains("which [auth.jwt] `algorithms` does not list"),
        "{err}"
    );
}

/// Keys may be written inline in the manifest instead of a JWKS file.
#[tokio::test]
async fn inline_keys_verify_tokens() {
    let jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let ed_jwk = &jwks["keys"][0];
    let inline = format!(
        "keys = [{{ kty = \"OKP\", crv = \"Ed25519\", x = \"{}\", kid = \"ed-1\", alg = \"EdDSA\" }}]",
        ed_jwk["x"].as_str().unwrap()
    );
    let manifest = manifest(10_000).replace("jwks = \"keys/jwks.json\"", &inline);
    let app = TestApp::new(&manifest, &["echo"]);
    let keys = app.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("jwe.pem"), fixture("jwe.pem")).unwrap();
    let server = Server::start(&app);
    assert_eq!(
        call(&server, "/echo", Some(&ed_token(&claims())))
            .await
            .status,
        200
    );
    let es = EncodingKey::from_ec_pem(&fixture("p256.pem")).unwrap();
    call(
        &server,
        "/echo",
        Some(&sign(Algorithm::ES256, Some("ec-1"), &es, &claims())),
    )
    .await
    .assert_problem(401, "invalid-token");
}

/// The JWKS file is reloaded when it changes: a key removed from it stops
/// verifying without a restart.
#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_working() {
    let app = app(10_000);
    let server = Server::start(&app);
    let token = ed_token(&claims());
    assert_eq!(call(&server, "/echo", Some(&token)).await.status, 200);
    let mut jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] != "ed-1");
    // A new modification time, then a pause past the one-second re-check.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(app.path().join("keys/jwks.json"), jwks.to_string()).unwrap();
    let mut refused = false;
    for _ in 0..50 {
        if call(&server, "/echo", Some(&token)).await.status == 401 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the removed key must stop verifying");
    server.wait_for_log(
        |r| r["message"] == "reloaded the JWKS",
        Duration::from_secs(10),
    );
}

/// Issue 17 (T11): keys are parsed once, when the JWKS loads, and a token
/// is verified with the parsed key its `kid` names. A token signed by
/// another key under that same `kid` and `alg` is still refused; and when
/// the JWKS file replaces a key under the same `kid`, the new key verifies
/// and the old one's tokens are refused: nothing parsed before the reload
/// is used after it.
#[tokio::test]
async fn another_key_under_the_same_kid_never_verifies_t11() {
    let app = app(10_000);
    let server = Server::start(&app);
    let p256 = EncodingKey::from_ec_pem(&fixture("p256.pem")).unwrap();
    let other_p256 = EncodingKey::from_ec_pem(&fixture("other-p256.pem")).unwrap();
    let stranger = EncodingKey::from_ed_pem(&fixture("stranger.pem")).unwrap();
    let ours_es = sign(Algorithm::ES256, Some("ec-1"), &p256, &claims());
    let theirs_es = sign(Algorithm::ES256, Some("ec-1"), &other_p256, &claims());
    let ours_ed = ed_token(&claims());
    let theirs_ed = sign(Algorithm::EdDSA, Some("ed-1"), &stranger, &claims());
    // Each verified once first, so its key's parsed form is in use.
    for _ in 0..2 {
        assert_eq!(call(&server, "/echo", Some(&ours_es)).await.status, 200);
        assert_eq!(call(&server, "/echo", Some(&ours_ed)).await.status, 200);
        call(&server, "/echo", Some(&theirs_es))
            .await
            .assert_problem(401, "invalid-token");
        call(&server, "/echo", Some(&theirs_ed))
            .await
            .assert_problem(401, "invalid-token");
    }

    // Rotation: `ed-1` is now the stranger's key (its public half).
    let mut jwks: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    for key in jwks["keys"].as_array_mut().unwrap() {
        if key["kid"] == "ed-1" {
            key["x"] = json!(STRANGER_ED25519_X);
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(app.path().join("keys/jwks.json"), jwks.to_string()).unwrap();
    let mut rotated = false;
    for _ in 0..50 {
        if call(&server, "/echo", Some(&theirs_ed)).await.status == 200 {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rotated,
        "the new key under `ed-1` must verify after the reload"
    );
    call(&server, "/echo", Some(&ours_ed))
        .await
        .assert_problem(401, "invalid-token");
    // The other keys are untouched.
    assert_eq!(call(&server, "/echo", Some(&ours_es)).await.status, 200);
    call(&server, "/echo", Some(&theirs_es))
        .await
        .assert_problem(401, "invalid-token");
}

/// The public half of `fixtures/auth/stranger.pem` (Ed25519), as a JWK `x`.
const STRANGER_ED25519_X: &str = "CZAUQ2bzVSdEBIiW-i7rRIabUh73N1clBcq7NFuBZ7w";
