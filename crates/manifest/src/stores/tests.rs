//! Parse errors of `[store.*]`, `[config]` and store/secret/config grants.

use crate::{App, Scope, StoreAccess, StoreKind, parse};

/// A manifest: `head` from line 3 on, then one function `f` whose grants
/// are `grants` (the function starts after `head`).
fn app(head: &str, grants: &str) -> Result<App, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    let manifest = format!(
        "[app]\nname = \"stored\"\n{head}\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\nauth = \"public\"\ngrants = {{ {grants} }}\n"
    );
    parse(
        dir.path(),
        &dir.path().join("bulkhead.toml"),
        &manifest,
        "dev",
    )
    .map_err(|e| e.to_string())
}

const STORES: &str = "[store.attendees]\nkind = \"kv\"\nscope = \"subject\"\nretention = \"48h\"\npersonal_data = true\n\n[store.events]\nkind = \"sql\"\nmigrations = \"migrations\"\n\n[config]\ngreeting = \"hello\"\n";

#[test]
fn full_example_resolves() {
    let app = app(
        STORES,
        "kv = { attendees = \"read-write\" }, sql = { events = { access = \"read\", statements = [\"SELECT 1\"] } }, secrets = [\"stripe_key\"], config = [\"greeting\"]",
    )
    .unwrap();
    assert_eq!(app.stores.len(), 2);
    let attendees = app.store("attendees").unwrap();
    assert!(attendees.per_subject() && attendees.personal_data());
    assert_eq!(attendees.retention().unwrap().get().as_secs(), 48 * 3600);
    match &app.store("events").unwrap().kind {
        StoreKind::Sql { migrations, .. } => assert!(migrations.ends_with("migrations")),
        other => panic!("{other:?}"),
    }
    assert_eq!(app.config["greeting"], "hello");
    let f = &app.functions[0];
    assert_eq!(f.grants.kv["attendees"], StoreAccess::ReadWrite);
    assert_eq!(f.grants.sql["events"].access, StoreAccess::Read);
    assert_eq!(
        f.grants.sql["events"].statements.as_deref(),
        Some(&["SELECT 1".to_string()][..])
    );
    assert_eq!(f.grants.secrets, ["stripe_key"]);
    assert_eq!(f.grants.config, ["greeting"]);
    assert!(!f.strict_imports && !app.strict_imports);
}

#[test]
fn defaults_and_strict_imports() {
    let app = app(
        "strict_imports = true\n[store.cache]\nkind = \"kv\"\n",
        "kv = { cache = \"read\" }",
    )
    .unwrap();
    match app.store("cache").unwrap().kind {
        StoreKind::Kv {
            scope,
            retention,
            personal_data,
        } => {
            assert_eq!(scope, Scope::App);
            assert!(retention.is_none() && !personal_data);
        }
        ref other => panic!("{other:?}"),
    }
    assert!(app.strict_imports && app.functions[0].strict_imports);
    assert!(app.functions[0].grants.secrets.is_empty());
}

fn expect(head: &str, grants: &str, place: &str, message: &str) {
    let err = app(head, grants).unwrap_err();
    assert!(err.contains(place), "expected {place}: {err}");
    assert!(err.contains(message), "expected {message}: {err}");
}

#[test]
fn undeclared_store_grant_names_the_line() {
    expect(
        STORES,
        "kv = { visitors = \"read\" }",
        "bulkhead.toml:21:19",
        "store `visitors` is not declared",
    );
    expect(
        STORES,
        "sql = { nothing = \"read\" }",
        "bulkhead.toml:21:20",
        "store `nothing` is not declared",
    );
}

#[test]
fn kind_mismatch_is_refused() {
    expect(
        STORES,
        "kv = { events = \"read\" }",
        "bulkhead.toml:21:19",
        "store `events` is a sql store; grant it under `sql`, not `kv`",
    );
    expect(
        STORES,
        "sql = { attendees = \"read\" }",
        "bulkhead.toml:21:20",
        "store `attendees` is a kv store; grant it under `kv`, not `sql`",
    );
}

#[test]
fn config_grant_must_be_declared() {
    expect(
        STORES,
        "config = [\"farewell\"]",
        "bulkhead.toml:21:22",
        "config key `farewell` is not declared",
    );
    expect(
        STORES,
        "config = [\"greeting\"], secrets = [\"greeting\"]",
        "bulkhead.toml:21:22",
        "granted both as a secret and as a config key",
    );
}

#[test]
fn scope_on_sql_and_bad_values() {
    expect(
        "[store.events]\nkind = \"sql\"\nscope = \"subject\"\nmigrations = \"migrations\"\n",
        "",
        "bulkhead.toml:5:9",
        "`scope` applies only to `kind = \"kv\"`",
    );
    expect(
        "[store.events]\nkind = \"sql\"\n",
        "",
        "bulkhead.toml:3:1",
        "a SQL store needs `migrations",
    );
    expect(
        "[store.events]\nkind = \"sql\"\nmigrations = \"../elsewhere\"\n",
        "",
        "bulkhead.toml:5:14",
        "inside the app directory",
    );
    expect(
        "[store.events]\nkind = \"sql\"\nmigrations = \"missing\"\n",
        "",
        "bulkhead.toml:5:14",
        "does not exist",
    );
    expect(
        "[store.c]\nkind = \"redis\"\n",
        "",
        "bulkhead.toml:4:8",
        "`kind` must be \"kv\" or \"sql\"",
    );
    expect(
        "[store.c]\nkind = \"kv\"\nscope = \"tenant\"\n",
        "",
        "bulkhead.toml:5:9",
        "`scope` must be \"app\" or \"subject\"",
    );
    expect(
        "[store.c]\nkind = \"kv\"\nmigrations = \"migrations\"\n",
        "",
        "bulkhead.toml:5:14",
        "`migrations` applies only",
    );
    expect(
        "[store.c]\nkind = \"kv\"\nretention = \"soon\"\n",
        "",
        "bulkhead.toml:5:13",
        "is not a duration",
    );
    expect(
        "[store.c]\nkind = \"kv\"\nttl = \"1h\"\n",
        "",
        "bulkhead.toml:5:1",
        "unknown field `ttl`",
    );
    expect(
        "[store.c]\nkind = \"kv\"\n",
        "kv = { c = \"write\" }",
        "bulkhead.toml:11:23",
        "must be \"read\" or \"read-write\"",
    );
    expect(
        "",
        "files = [\"x\"]",
        "bulkhead.toml:",
        "unknown field `files`",
    );
}

#[test]
fn bad_names_are_refused_without_echo() {
    expect(
        "[store.Bad_Store]\nkind = \"kv\"\n",
        "",
        "bulkhead.toml:3:8",
        "store name must start with a lowercase letter",
    );
    expect(
        "[config]\n\"9lives\" = \"x\"\n",
        "",
        "bulkhead.toml:4:1",
        "config name must start",
    );
    let err = app("", "secrets = [\"STRIPE KEY\"]").unwrap_err();
    assert!(err.contains("bulkhead.toml:9:23"), "{err}");
    assert!(err.contains("secret name must start"), "{err}");
    assert!(!err.contains("STRIPE KEY"), "not echoed: {err}");
    let long = "a".repeat(65);
    expect(
        &format!("[store.{long}]\nkind = \"kv\"\n"),
        "",
        "bulkhead.toml:3:8",
        "store name must start",
    );
    assert!(crate::stores::valid_resource_name(&"a".repeat(64)));
    assert!(crate::stores::valid_resource_name("a_b-9"));
    assert!(!crate::stores::valid_resource_name("-a"));
}
