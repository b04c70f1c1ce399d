//! Key-value capability end to end (T13, T15, T16, T20): a real server, the
//! `kv` guest built from source, real SQLite files on disk.
//!
//! - grants: an ungranted or undeclared store cannot be opened, a read
//!   grant cannot write; every denial is logged and audited;
//! - subject scope: each API key's subject sees only its own records, and a
//!   public route cannot open a subject-scoped store; an API key and a JWT
//!   for the same name are two subjects (subjects are keyed by credential
//!   kind and issuer);
//! - retention: an expired record is never returned and the sweeper
//!   deletes the row;
//! - erase / export; no plaintext value or key anywhere on disk.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::{Reply, Server, TestApp, request, send};

const QUERY: &str = "input.query.op = true\ninput.query.store = true\ninput.query.key = true\ninput.query.value = true\n";

fn manifest() -> String {
    format!(
        r#"
[app]
name = "kvapp"

[store.shared]
kind = "kv"

[store.private]
kind = "kv"
scope = "subject"
personal_data = true

[store.shortlived]
kind = "kv"
retention = "4s"

[store.unused]
kind = "kv"

[[function]]
name = "writer"
component = "kv.wasm"
route = "/w"
auth = "public"
{QUERY}grants = {{ kv = {{ shared = "read-write", shortlived = "read-write" }} }}

[[function]]
name = "reader"
component = "kv.wasm"
route = "/r"
auth = "public"
# Room for the 10 000-operation flood on a slow, shared machine.
timeout = "120s"
{QUERY}grants = {{ kv = {{ shared = "read" }} }}

[[function]]
name = "mine"
component = "kv.wasm"
route = "/mine"
{QUERY}grants = {{ kv = {{ private = "read-write" }} }}

[[function]]
name = "public-private"
component = "kv.wasm"
route = "/pp"
auth = "public"
{QUERY}grants = {{ kv = {{ private = "read-write" }} }}
"#
    )
}

async fn call(server: &Server, path: &str, key: Option<&str>) -> String {
    let mut req = request("GET", server.addr, path, Bytes::new());
    if let Some(key) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    let reply: Reply = send(server.addr, req).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.text()
}

fn api_key(app: &TestApp, subject: &str) -> String {
    let out = app.run_with(&["keys", "create"], &["--subject", subject]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn state(app: &TestApp) -> std::path::PathBuf {
    app.path().join(".bulkhead/dev")
}

#[tokio::test(flavor = "multi_thread")]
async fn t16_grants_decide_which_store_and_what_access() {
    let app = TestApp::new(&manifest(), &["kv"]);
    // `check` shows each function's grants and the stores, for review.
    let checked = app.run(&["check"]);
    let listing = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{listing}");
    assert!(
        listing.contains("  kv         shared (read-write), shortlived (read-write)"),
        "{listing}"
    );
    assert!(listing.contains("  kv         shared (read)"), "{listing}");
    assert!(
        listing.contains("  private          kv, one key space per subject, personal data"),
        "{listing}"
    );
    assert!(
        listing.contains("  shortlived       kv, app-wide, retention 4s"),
        "{listing}"
    );
    let server = Server::start(&app);

    // Legitimate use: set, get, exists, list, increment, batch, delete.
    assert_eq!(
        call(&server, "/w?op=set&store=shared&key=k1&value=one", None).await,
        "ok"
    );
    assert_eq!(
        call(&server, "/w?op=get&store=shared&key=k1", None).await,
        "value:one"
    );
    assert_eq!(
        call(&server, "/w?op=exists&store=shared&key=k1", None).await,
        "true"
    );
    assert_eq!(
        call(&server, "/w?op=incr&store=shared&key=n", None).await,
        "count:1"
    );
    assert_eq!(
        call(&server, "/w?op=incr&store=shared&key=n", None).await,
        "count:2"
    );
    assert_eq!(
        call(&server, "/w?op=setmany&store=shared&key=b&value=v", None).await,
        "ok"
    );
    assert_eq!(
        call(&server, "/w?op=getmany&store=shared&key=b", None).await,
        "b=v,b2=v"
    );
    let listed = call(&server, "/w?op=list&store=shared", None).await;
    let mut keys: Vec<&str> = listed.strip_prefix("keys:").unwrap().split(',').collect();
    keys.sort();
    assert_eq!(keys, ["b", "b2", "k1", "n"]);
    assert_eq!(
        call(&server, "/w?op=delete&store=shared&key=b2", None).await,
        "ok"
    );
    assert_eq!(
        call(&server, "/w?op=get&store=shared&key=b2", None).await,
        "none"
    );

    // A read grant reads what another function wrote...
    assert_eq!(
        call(&server, "/r?op=get&store=shared&key=k1", None).await,
        "value:one"
    );
    // ...and can write nothing.
    for op in ["set", "delete", "incr", "setmany"] {
        let text = call(
            &server,
            &format!("/r?op={op}&store=shared&key=k1&value=x"),
            None,
        )
        .await;
        assert_eq!(text, "error:access-denied", "{op}");
    }
    assert_eq!(
        call(&server, "/r?op=get&store=shared&key=k1", None).await,
        "value:one"
    );

    // Ungranted (declared) and undeclared stores look the same: denied.
    assert_eq!(
        call(&server, "/r?op=get&store=unused&key=k1", None).await,
        "open-error:access-denied"
    );
    assert_eq!(
        call(&server, "/w?op=get&store=nosuchstore&key=k1", None).await,
        "open-error:access-denied"
    );
    assert_eq!(
        call(&server, "/w?op=get&store=private&key=k1", None).await,
        "open-error:access-denied"
    );

    // A call may make at most 10 000 key-value operations (T04).
    assert_eq!(
        call(&server, "/r?op=flood&store=shared&key=k1", None).await,
        "refused-at:10001:error:other:at most 10000 key-value operations per call"
    );
    server.wait_for_log(
        |r| {
            r["message"] == "capability denied"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("operations in one call"))
        },
        Duration::from_secs(10),
    );

    // 4 writes under a read grant + 3 opens + 1 flood: each logged, never the key or value.
    let denials = server.wait_for_count(
        |r| r["target"] == "bulkhead::capability" && r["message"] == "capability denied",
        8,
    );
    assert_eq!(denials.len(), 8, "{denials:?}");
    for d in &denials {
        assert_eq!(d["capability"], "kv");
        assert!(d["correlation_id"].as_str().is_some_and(|c| !c.is_empty()));
        assert!(!d.to_string().contains("value:one"));
    }
    assert!(server.stop().success());
    let audited = app.audit_records("capability.denied");
    assert_eq!(audited.len(), 8, "{audited:?}");
    assert!(
        audited
            .iter()
            .any(|r| r.to_string().contains("set under a read grant"))
    );
    assert!(!app.audit_records("capability.used").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn t13_subject_scope_separates_subjects_and_t20_erase_shreds() {
    let app = TestApp::new(&manifest(), &["kv"]);
    let alice = api_key(&app, "alice");
    let bob = api_key(&app, "bob");
    let server = Server::start(&app);

    let set = |key: &'static str, value: &'static str| {
        format!("/mine?op=set&store=private&key={key}&value={value}")
    };
    assert_eq!(
        call(&server, &set("k", "alicevalue"), Some(&alice)).await,
        "ok"
    );
    assert_eq!(
        call(&server, &set("other", "alicemore"), Some(&alice)).await,
        "ok"
    );
    // Bob cannot read, list or guess Alice's keys...
    let get = "/mine?op=get&store=private&key=k";
    assert_eq!(call(&server, get, Some(&bob)).await, "none");
    assert_eq!(
        call(&server, "/mine?op=exists&store=private&key=k", Some(&bob)).await,
        "false"
    );
    assert_eq!(
        call(&server, "/mine?op=list&store=private", Some(&bob)).await,
        "keys:"
    );
    // ...nor overwrite or delete them: his writes land in his own space.
    assert_eq!(call(&server, &set("k", "bobvalue"), Some(&bob)).await, "ok");
    assert_eq!(
        call(
            &server,
            "/mine?op=delete&store=private&key=other",
            Some(&bob)
        )
        .await,
        "ok"
    );
    assert_eq!(call(&server, get, Some(&alice)).await, "value:alicevalue");
    assert_eq!(call(&server, get, Some(&bob)).await, "value:bobvalue");
    let listed = call(&server, "/mine?op=list&store=private", Some(&alice)).await;
    assert!(
        listed == "keys:k,other" || listed == "keys:other,k",
        "{listed}"
    );

    // Without a verified subject (a public route) the store cannot be opened.
    assert_eq!(
        call(&server, "/pp?op=get&store=private&key=k", None).await,
        "open-error:access-denied"
    );
    server.wait_for_log(
        |r| {
            r["message"] == "capability denied"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("without a verified subject"))
        },
        Duration::from_secs(10),
    );

    // The subject is a column of its own, never part of the stored key.
    let db = rusqlite::Connection::open(state(&app).join("state.db")).unwrap();
    let subjects: Vec<String> = db
        .prepare("SELECT DISTINCT subject FROM kv WHERE store = 'private' ORDER BY subject")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Qualified by credential kind (T13): an API key's subject is `api-key:NAME`.
    assert_eq!(subjects, ["api-key:alice", "api-key:bob"]);

    // Export shows Alice's data, decrypted, and nobody else's.
    let out = app.run_with(&["data", "export"], &["--subject", "api-key:alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = exported.to_string();
    assert!(
        text.contains("alicevalue") && text.contains("alicemore"),
        "{text}"
    );
    assert!(!text.contains("bobvalue"), "{text}");
    assert_eq!(exported["records"].as_array().unwrap().len(), 2);

    // Erase: keys destroyed, rows gone, reads give nothing; Bob untouched.
    let out = app.run_with(&["data", "erase"], &["--subject", "api-key:alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(&server, get, Some(&alice)).await, "none");
    assert_eq!(
        call(&server, "/mine?op=list&store=private", Some(&alice)).await,
        "keys:"
    );
    assert_eq!(call(&server, get, Some(&bob)).await, "value:bobvalue");
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM kv WHERE subject = 'api-key:alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
    let keys = rusqlite::Connection::open(state(&app).join("keys.db")).unwrap();
    let alice_keys: i64 = keys
        .query_row(
            "SELECT count(*) FROM data_keys WHERE subject = 'api-key:alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(alice_keys, 0);
    // Once erased the subject holds nothing: exporting or erasing it again
    // is refused rather than reported as done (T20).
    for command in ["export", "erase"] {
        let out = app.run_with(&["data", command], &["--subject", "api-key:alice"]);
        assert_eq!(out.status.code(), Some(1), "data {command} after erase");
        assert!(out.stdout.is_empty());
    }
    assert!(server.stop().success());
    let erased = app.audit_records("data.erased");
    assert_eq!(erased.len(), 1);
    assert_eq!(erased[0]["subject"], "api-key:alice");
    assert_eq!(app.audit_records("data.exported").len(), 1);
}

/// T13, T11: an API key made for `ci-bot` and a JWT with `sub = ci-bot`
/// are two callers: neither reads, lists or overwrites the other's
/// subject-scoped records, and `data erase` addresses each on its own.
#[tokio::test(flavor = "multi_thread")]
async fn t13_an_api_key_and_a_jwt_for_the_same_name_are_two_subjects() {
    const ISSUER: &str = "https://id.example.org";
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
    let manifest = format!(
        "{}\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"kvapp\"\njwks = \"keys/jwks.json\"\nalgorithms = [\"EdDSA\", \"ES256\", \"RS256\"]\n",
        manifest()
    );
    let app = TestApp::new(&manifest, &["kv"]);
    std::fs::create_dir_all(app.path().join("keys")).unwrap();
    std::fs::copy(
        fixtures.join("jwks.json"),
        app.path().join("keys/jwks.json"),
    )
    .unwrap();
    let key = api_key(&app, "ci-bot");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("ed-1".into());
    let jwt = jsonwebtoken::encode(
        &header,
        &serde_json::json!({
            "sub": "ci-bot", "iss": ISSUER, "aud": "kvapp", "iat": now, "exp": now + 300,
        }),
        &jsonwebtoken::EncodingKey::from_ed_pem(
            &std::fs::read(fixtures.join("ed25519.pem")).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let server = Server::start(&app);

    let get = "/mine?op=get&store=private&key=deploy";
    assert_eq!(
        call(
            &server,
            "/mine?op=set&store=private&key=deploy&value=fromkey",
            Some(&key)
        )
        .await,
        "ok"
    );
    // The JWT's `ci-bot` sees none of the key's records...
    assert_eq!(call(&server, get, Some(&jwt)).await, "none");
    assert_eq!(
        call(&server, "/mine?op=list&store=private", Some(&jwt)).await,
        "keys:"
    );
    // ...and its writes land in its own space.
    assert_eq!(
        call(
            &server,
            "/mine?op=set&store=private&key=deploy&value=fromjwt",
            Some(&jwt)
        )
        .await,
        "ok"
    );
    assert_eq!(call(&server, get, Some(&key)).await, "value:fromkey");
    assert_eq!(call(&server, get, Some(&jwt)).await, "value:fromjwt");

    let db = rusqlite::Connection::open(state(&app).join("state.db")).unwrap();
    let subjects: Vec<String> = db
        .prepare("SELECT DISTINCT subject FROM kv WHERE store = 'private' ORDER BY subject")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let jwt_subject = "jwt:https%3A//id.example.org:ci-bot";
    assert_eq!(subjects, ["api-key:ci-bot", jwt_subject]);

    // A bare name matches no record: the erasure is refused, naming the
    // qualified subjects, and nothing is erased (never a silent success).
    let out = app.run_with(&["data", "erase"], &["--subject", "ci-bot"]);
    assert!(!out.status.success(), "a bare subject must not succeed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api-key:ci-bot") && stderr.contains(jwt_subject),
        "{stderr}"
    );
    assert_eq!(call(&server, get, Some(&key)).await, "value:fromkey");
    let out = app.run_with(&["data", "export"], &["--subject", "ci-bot"]);
    assert!(
        !out.status.success(),
        "a bare subject must not export nothing"
    );

    // T20: a qualified subject that holds nothing is refused too, naming
    // the close matches: the issuer as written in the token (unencoded),
    // another case, another kind. Nothing is erased or exported.
    let unencoded = "jwt:https://id.example.org:ci-bot";
    for (subject, named) in [
        (unencoded, vec![jwt_subject]),
        ("api-key:CI-Bot", vec!["api-key:ci-bot", jwt_subject]),
        ("session:ci-bot", vec!["api-key:ci-bot", jwt_subject]),
    ] {
        for command in ["erase", "export"] {
            let out = app.run_with(&["data", command], &["--subject", subject]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {subject}: {stderr}");
            assert!(out.stdout.is_empty(), "{command} {subject}");
            for name in &named {
                assert!(stderr.contains(name), "{command} {subject}: {stderr}");
            }
        }
    }
    let out = app.run_with(&["data", "erase"], &["--subject", unencoded]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("percent-encoded"), "{stderr}");
    assert_eq!(call(&server, get, Some(&key)).await, "value:fromkey");
    assert_eq!(call(&server, get, Some(&jwt)).await, "value:fromjwt");

    // A bare name that holds records of its own (written before subjects
    // were qualified) is erased, with a note naming its namesakes; the
    // namesakes are untouched. The legacy row is made by relabelling one.
    assert_eq!(
        call(
            &server,
            "/mine?op=set&store=private&key=legacy&value=old",
            Some(&key)
        )
        .await,
        "ok"
    );
    let relabelled = db
        .execute(
            "UPDATE kv SET subject = 'ci-bot' WHERE store = 'private' AND subject = 'api-key:ci-bot'
             AND updated_ms = (SELECT max(updated_ms) FROM kv WHERE store = 'private' AND subject = 'api-key:ci-bot')",
            [],
        )
        .unwrap();
    assert_eq!(relabelled, 1);
    let out = app.run_with(&["data", "erase"], &["--subject", "ci-bot"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("api-key:ci-bot") && stderr.contains(jwt_subject),
        "{stderr}"
    );
    assert!(stderr.contains("1 record(s) deleted"), "{stderr}");
    let legacy: i64 = db
        .query_row(
            "SELECT count(*) FROM kv WHERE subject = 'ci-bot'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(legacy, 0);
    assert_eq!(call(&server, get, Some(&key)).await, "value:fromkey");
    assert_eq!(call(&server, get, Some(&jwt)).await, "value:fromjwt");

    // Each is addressed on its own: erasing the key's leaves the JWT's.
    let out = app.run_with(&["data", "erase"], &["--subject", "api-key:ci-bot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(&server, get, Some(&key)).await, "none");
    assert_eq!(call(&server, get, Some(&jwt)).await, "value:fromjwt");
    let out = app.run_with(&["data", "export"], &["--subject", jwt_subject]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(exported["records"].as_array().unwrap().len(), 1);
    assert!(exported.to_string().contains("fromjwt"));
    assert!(server.stop().success());
    // Only the two erasures that found something were audited.
    let erased: Vec<_> = app
        .audit_records("data.erased")
        .iter()
        .map(|r| r["subject"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(erased, ["ci-bot", "api-key:ci-bot"]);
    assert_eq!(app.audit_records("data.exported").len(), 1);
}

/// T20: records an older version stored under a subject the gateway now
/// refuses (control characters in the JWT `sub`, over 1024 bytes) can be
/// erased with that exact subject, and the CLI never prints such a subject
/// raw. The old records are made by relabelling rows (and data keys).
#[tokio::test(flavor = "multi_thread")]
async fn t20_subjects_with_control_characters_or_long_are_erasable() {
    let app = TestApp::new(&manifest(), &["kv"]);
    let ada = api_key(&app, "ada");
    let bob = api_key(&app, "bob");
    let server = Server::start(&app);
    for key in [&ada, &bob] {
        assert_eq!(
            call(
                &server,
                "/mine?op=set&store=private&key=k&value=v",
                Some(key)
            )
            .await,
            "ok"
        );
    }
    assert!(server.stop().success());
    let odd = "jwt:https%3A//id.example.org:ada\tx\u{85}";
    let long = format!("jwt:https%3A//id.example.org:{}", "b".repeat(1500));
    let db = rusqlite::Connection::open(state(&app).join("state.db")).unwrap();
    let keys = rusqlite::Connection::open(state(&app).join("keys.db")).unwrap();
    for (from, to) in [("api-key:ada", odd), ("api-key:bob", long.as_str())] {
        let relabel = |conn: &rusqlite::Connection, table: &str| {
            conn.execute(
                &format!("UPDATE {table} SET subject = ?1 WHERE subject = ?2"),
                rusqlite::params![to, from],
            )
            .unwrap()
        };
        assert_eq!(relabel(&db, "kv"), 1);
        assert_eq!(relabel(&keys, "data_keys"), 1);
    }

    // A near miss is refused, naming the subject and the close match
    // escaped: no control character reaches the terminal raw.
    let near = "jwt:https%3A//id.example.org:ADA\tx\u{85}";
    let out = app.run_with(&["data", "erase"], &["--subject", near]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(r"ada\tx\u{85}") && stderr.contains(r"ADA\tx\u{85}"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\t') && !stderr.contains('\u{85}'),
        "{stderr}"
    );

    for subject in [odd, long.as_str()] {
        let out = app.run_with(&["data", "erase"], &["--subject", subject]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("1 data key(s) destroyed, 1 record(s) deleted"),
            "{stderr}"
        );
        let rows: i64 = db
            .query_row(
                "SELECT count(*) FROM kv WHERE subject = ?1",
                [subject],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 0);
        let data_keys: i64 = keys
            .query_row(
                "SELECT count(*) FROM data_keys WHERE subject = ?1",
                [subject],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(data_keys, 0);
    }
    let erased: Vec<_> = app
        .audit_records("data.erased")
        .iter()
        .map(|r| r["subject"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(erased, [odd.to_string(), long]);
}

/// T20: a store renamed in the manifest (or made app-wide) keeps its rows
/// under the old name; `data export` still includes them, naming the store
/// the manifest no longer declares, never an empty export.
#[tokio::test(flavor = "multi_thread")]
async fn t20_export_includes_stores_the_manifest_no_longer_declares() {
    let app = TestApp::new(&manifest(), &["kv"]);
    let ada = api_key(&app, "ada");
    let server = Server::start(&app);
    assert_eq!(
        call(
            &server,
            "/mine?op=set&store=private&key=k&value=kept",
            Some(&ada)
        )
        .await,
        "ok"
    );
    assert!(server.stop().success());
    let renamed = manifest()
        .replace("[store.private]", "[store.personal]")
        .replace("private = \"read-write\"", "personal = \"read-write\"");
    std::fs::write(app.path().join("bulkhead.toml"), renamed).unwrap();

    let out = app.run_with(&["data", "export"], &["--subject", "api-key:ada"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let exported: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = exported["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{exported}");
    assert_eq!(records[0]["store"], "private");
    assert_eq!(records[0]["value"], "kept");
    assert!(
        stderr.contains("`private`") && stderr.contains("not declare"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn t20_expired_records_are_never_returned_and_are_swept() {
    let app = TestApp::new(&manifest(), &["kv"]);
    let server = Server::start(&app);
    assert_eq!(
        call(
            &server,
            "/w?op=set&store=shortlived&key=brief&value=soon",
            None
        )
        .await,
        "ok"
    );
    assert_eq!(
        call(&server, "/w?op=set&store=shared&key=kept&value=stays", None).await,
        "ok"
    );
    // Poll (bounded) until the record is past its retention: from then on
    // it is never returned, whether or not the sweeper has run yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = call(&server, "/w?op=get&store=shortlived&key=brief", None).await;
        if text == "none" {
            break;
        }
        assert_eq!(text, "value:soon");
        assert!(Instant::now() < deadline, "the record never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        call(&server, "/w?op=list&store=shortlived", None).await,
        "keys:"
    );
    assert_eq!(
        call(&server, "/w?op=exists&store=shortlived&key=brief", None).await,
        "false"
    );
    // The sweeper deletes the row itself.
    let db = rusqlite::Connection::open(state(&app).join("state.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: i64 = db
            .query_row(
                "SELECT count(*) FROM kv WHERE store = 'shortlived'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if rows == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sweeper never deleted the row"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    server.wait_for_log(
        |r| r["message"] == "expired key-value records deleted",
        Duration::from_secs(10),
    );
    // A store without retention keeps its records.
    assert_eq!(
        call(&server, "/w?op=get&store=shared&key=kept", None).await,
        "value:stays"
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn assert_nowhere_on_disk(app: &TestApp, needles: &[&str]) -> usize {
    let mut files = Vec::new();
    files_under(&app.path().join(".bulkhead"), &mut files);
    for file in &files {
        // A temp file renamed into place while we look (the audit head
        // file is replaced after each commit) is read under its new name.
        let Ok(bytes) = std::fs::read(file) else {
            assert!(!file.exists(), "cannot read {}", file.display());
            continue;
        };
        for needle in needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "plaintext {needle:?} found in {}",
                file.display()
            );
        }
    }
    files.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn t15_no_plaintext_on_disk_and_moved_ciphertext_fails() {
    let app = TestApp::new(&manifest(), &["kv"]);
    let alice = api_key(&app, "alice");
    let mut set = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["secrets", "set"])
        .arg(app.path())
        .arg("canary_secret")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    set.stdin
        .take()
        .unwrap()
        .write_all(b"SecretCanary4242xyz\n")
        .unwrap();
    let out = set.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = Server::start(&app);
    assert_eq!(
        call(
            &server,
            "/w?op=set&store=shared&key=KeyCanary5150&value=PlainTextCanary7319",
            None
        )
        .await,
        "ok"
    );
    assert_eq!(
        call(
            &server,
            "/mine?op=set&store=private&key=PrivKeyCanary616&value=PrivValueCanary8080",
            Some(&alice)
        )
        .await,
        "ok"
    );
    let needles = [
        "PlainTextCanary7319",
        "KeyCanary5150",
        "PrivKeyCanary616",
        "PrivValueCanary8080",
        "SecretCanary4242xyz",
    ];
    // While serving (the WAL holds the latest pages) and after a clean stop.
    let scanned = assert_nowhere_on_disk(&app, &needles);
    assert!(scanned >= 3, "the database files were scanned");
    // Sealed, yet read back intact.
    assert_eq!(
        call(&server, "/w?op=get&store=shared&key=KeyCanary5150", None).await,
        "value:PlainTextCanary7319"
    );

    // Someone with write access to the database swaps two sealed values
    // (same store, same data key) and copies one subject's value over
    // another's: each read fails authentication, none returns the other
    // record's value.
    assert_eq!(
        call(
            &server,
            "/w?op=set&store=shared&key=second&value=SecondValue",
            None
        )
        .await,
        "ok"
    );
    let bob = api_key(&app, "bob");
    assert_eq!(
        call(
            &server,
            "/mine?op=set&store=private&key=PrivKeyCanary616&value=BobsOwn",
            Some(&bob)
        )
        .await,
        "ok"
    );
    let db = rusqlite::Connection::open(state(&app).join("state.db")).unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = db
        .prepare("SELECT key_id, value_sealed FROM kv WHERE store = 'shared'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2);
    let swap = "UPDATE kv SET value_sealed = ?1 WHERE store = 'shared' AND key_id = ?2";
    db.execute(swap, rusqlite::params![rows[1].1, rows[0].0])
        .unwrap();
    db.execute(swap, rusqlite::params![rows[0].1, rows[1].0])
        .unwrap();
    let copied = db
        .execute(
            "UPDATE kv SET value_sealed = (SELECT value_sealed FROM kv WHERE store = 'private' AND subject = 'api-key:alice')
             WHERE store = 'private' AND subject = 'api-key:bob'",
            [],
        )
        .unwrap();
    // The copy must really land on bob's row, or the check below proves nothing.
    assert_eq!(copied, 1, "bob's private row was not found");
    for path in [
        "/w?op=get&store=shared&key=KeyCanary5150",
        "/w?op=get&store=shared&key=second",
    ] {
        assert_eq!(
            call(&server, path, None).await,
            "error:other:storage error",
            "{path}"
        );
    }
    assert_eq!(
        call(
            &server,
            "/mine?op=get&store=private&key=PrivKeyCanary616",
            Some(&bob)
        )
        .await,
        "error:other:storage error"
    );
    assert_eq!(
        call(
            &server,
            "/mine?op=get&store=private&key=PrivKeyCanary616",
            Some(&alice)
        )
        .await,
        "value:PrivValueCanary8080"
    );
    let tampered =
        server.wait_for_count(|r| r["message"] == "stored record failed authentication", 3);
    assert_eq!(tampered.len(), 3, "{tampered:?}");
    assert!(server.stop().success());
    assert_nowhere_on_disk(&app, &needles);
    assert_eq!(app.audit_records("storage.integrity_failed").len(), 3);
    let names: Vec<String> = {
        let mut files = Vec::new();
        files_under(&state(&app), &mut files);
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert!(names.iter().any(|n| n == "state.db"), "{names:?}");
    assert!(names.iter().any(|n| n == "keys.db"), "{names:?}");
    assert!(names.iter().any(|n| n == "master.key"), "{names:?}");
}
