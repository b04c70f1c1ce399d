//! The review's logic from records to findings (T16), on a real manifest
//! parsed by the manifest crate and records shaped as the runtime writes
//! them (`runtime/src/call.rs`).

use bulkhead_manifest::App;
use bulkhead_store::AuditRecord;
use bulkhead_store::meter::{Usage, UsageRow};
use serde_json::{Value, json};

use super::evidence::HOUR_MS;
use super::*;

const MANIFEST: &str = r#"[app]
name = "shop"

[config]
greeting = "hi"
motto = "m"

[store.cache]
kind = "kv"

[store.spare]
kind = "kv"

[store.events]
kind = "sql"
migrations = "migrations"

[[function]]
name = "api"
component = "f.wasm"
route = "/api"
auth = "public"
grants = { kv = { cache = "read-write", spare = "read" }, sql = { events = "read-write" }, secrets = ["token", "old", "pending"], config = ["greeting", "motto"], outbound = [
    "https://*.example.com",
    "https://api.example.com",
    "https://unused.example.org",
] }

[[function]]
name = "idle"
component = "f.wasm"
route = "/idle"
auth = "public"
grants = { secrets = ["token"] }
"#;

/// 2026-12-01T10:00:00Z, on the hour.
const NOW: i64 = 1_796_119_200_000;
const DAY: i64 = 24 * HOUR_MS;

fn app(source: &str) -> App {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    let path = dir.path().join("bulkhead.toml");
    bulkhead_manifest::parse(dir.path(), &path, source, "dev").unwrap()
}

fn record(kind: &str, function: Option<&str>, time_ms: i64, detail: Value) -> AuditRecord {
    AuditRecord {
        seq: 0,
        time_ms,
        kind: kind.into(),
        correlation_id: Some("c".into()),
        subject: None,
        function: function.map(String::from),
        detail,
        prev_hash: String::new(),
        hash: String::new(),
    }
}

fn used(function: &str, time_ms: i64, detail: Value) -> AuditRecord {
    record("capability.used", Some(function), time_ms, detail)
}

fn calls(function: &str, hour_ms: i64, requests: u64) -> UsageRow {
    UsageRow {
        hour: hour_ms / HOUR_MS,
        function: function.into(),
        caller: "ip:127.0.0.1".into(),
        usage: Usage {
            requests,
            ..Usage::default()
        },
    }
}

/// What a busy day of `api` leaves in the trail and the meter.
fn busy_day(app: &App, window: Window) -> Evidence {
    let mut evidence = Evidence::new(app, window);
    evidence.trail_starts(NOW - 40 * DAY);
    let t = NOW - HOUR_MS;
    for r in [
        used(
            "api",
            t,
            json!({"capability": "kv", "resource": "cache", "access": "read-write"}),
        ),
        used(
            "api",
            t + 1,
            json!({"capability": "sql", "store": "events", "access": "write"}),
        ),
        used(
            "api",
            t + 2,
            json!({"capability": "secret", "resource": "token", "access": "read"}),
        ),
        used(
            "api",
            t + 3,
            json!({"capability": "config", "resource": "greeting", "access": "read"}),
        ),
        record(
            "capability.denied",
            Some("api"),
            t + 4,
            json!({"capability": "secret", "resource": "pending", "reason": "granted secret is not set (bulkhead secrets set)"}),
        ),
        used(
            "api",
            t + 5,
            json!({"capability": "outbound-http", "destination": "https://a.example.com:443", "address": "1.2.3.4:443"}),
        ),
        // An exact grant wins over the wildcard that also matches.
        used(
            "api",
            t + 6,
            json!({"capability": "outbound-http", "destination": "https://api.example.com:443", "address": "1.2.3.5:443"}),
        ),
        record(
            "capability.folded",
            Some("api"),
            t + 7,
            json!({"full": 48, "folded": 5, "counts": [
                {"kind": "capability.used", "capability": "outbound-http", "destination": "https://b.example.com:443", "count": 5}
            ]}),
        ),
        // Not the manifest's: another function, an ungranted store.
        used(
            "gone",
            t,
            json!({"capability": "kv", "resource": "spare", "access": "read"}),
        ),
        record(
            "capability.denied",
            Some("api"),
            t,
            json!({"capability": "kv", "resource": "other", "reason": "store not granted to this function"}),
        ),
    ] {
        evidence.add(&r);
    }
    evidence.add_usage(&[calls("api", NOW - HOUR_MS, 7)]);
    evidence
}

fn grant<'a>(review: &'a Review, function: &str, capability: &str, name: &str) -> &'a GrantReport {
    review
        .grants
        .iter()
        .find(|g| g.function == function && g.capability == capability && g.name == name)
        .unwrap_or_else(|| panic!("no grant {function} {capability} {name}"))
}

fn line_of(source: &str, needle: &str) -> usize {
    source
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap()
}

/// The diff's hunks applied to `source`, as `patch` would: each hunk
/// replaces (or drops) the one line it names.
fn apply_diff(source: &str, diff: &str) -> String {
    let mut lines: Vec<Option<String>> = source.lines().map(|l| Some(l.to_string())).collect();
    let mut current = None;
    for line in diff.lines() {
        if let Some(header) = line.strip_prefix("@@ -") {
            let old: usize = header.split([' ', ',']).next().unwrap().parse().unwrap();
            current = Some(old - 1);
            lines[old - 1] = None;
        } else if let (Some(at), Some(text)) = (current, line.strip_prefix('+'))
            && !line.starts_with("+++")
        {
            lines[at] = Some(text.to_string());
        }
    }
    lines.into_iter().flatten().collect::<Vec<_>>().join("\n") + "\n"
}

#[test]
fn t16_each_unused_or_wider_grant_is_found_at_its_line() {
    let app = app(MANIFEST);
    let window = Window {
        since_ms: NOW - 30 * DAY,
        until_ms: NOW,
    };
    let review = Review::new(&app, MANIFEST, &busy_day(&app, window));
    let grants_line = line_of(MANIFEST, "grants = { kv = { cache");

    // A read-write store only read: `read`, on its line, rewritten.
    let cache = grant(&review, "api", "kv", "cache");
    assert_eq!(cache.status, Status::Wider);
    assert_eq!(cache.line, Some(grants_line));
    let suggestion = cache.suggestion.as_ref().unwrap();
    assert_eq!(suggestion.change, "read");
    assert!(
        suggestion
            .suggested_line
            .as_deref()
            .unwrap()
            .contains(r#"cache = "read", spare"#)
    );

    // Never opened, never read: remove.
    for (capability, name) in [("kv", "spare"), ("secret", "old"), ("config", "motto")] {
        let g = grant(&review, "api", capability, name);
        assert_eq!(g.status, Status::Unused, "{name}");
        assert_eq!(g.line, Some(grants_line), "{name}");
        assert_eq!(g.suggestion.as_ref().unwrap().change, "remove", "{name}");
    }
    let unused = grant(&review, "api", "outbound", "https://unused.example.org");
    assert_eq!(unused.status, Status::Unused);
    assert_eq!(unused.line, Some(line_of(MANIFEST, "unused.example.org")));
    assert_eq!(
        unused
            .suggestion
            .as_ref()
            .unwrap()
            .suggested_line
            .as_deref(),
        Some("")
    );

    // Used as granted, with the last use.
    for (capability, name) in [
        ("sql", "events"),
        ("secret", "token"),
        ("config", "greeting"),
        ("outbound", "https://api.example.com"),
    ] {
        let g = grant(&review, "api", capability, name);
        assert_eq!(g.status, Status::Used, "{name}");
        assert!(g.suggestion.is_none(), "{name}");
        assert!(
            g.last_use
                .as_deref()
                .unwrap()
                .starts_with("2026-12-01T09:00"),
            "{name}"
        );
    }
    assert_eq!(grant(&review, "api", "sql", "events").writes, Some(1));

    // A wildcard: the hosts called under it, one known from a fold.
    let wildcard = grant(&review, "api", "outbound", "https://*.example.com");
    assert_eq!(wildcard.status, Status::Wider);
    assert_eq!(wildcard.uses, 6);
    let origins: Vec<&str> = wildcard.hosts.iter().map(|h| h.origin.as_str()).collect();
    assert_eq!(origins, ["https://a.example.com", "https://b.example.com"]);
    assert!(wildcard.inferred.iter().any(|i| i.contains("folded")));
    assert_eq!(
        wildcard
            .suggestion
            .as_ref()
            .unwrap()
            .suggested_line
            .as_deref(),
        Some(r#"    "https://a.example.com", "https://b.example.com","#)
    );

    // Tried and refused: inferred as wanted, not removed.
    let pending = grant(&review, "api", "secret", "pending");
    assert_eq!(pending.status, Status::RefusedOnly);
    assert!(pending.suggestion.is_none());
    assert!(pending.finding.contains("not set"));

    // The function nobody called; its grant unused with it.
    let idle = review.functions.iter().find(|f| f.name == "idle").unwrap();
    assert_eq!(idle.invoked, Invoked::Never);
    assert_eq!(idle.line, Some(line_of(MANIFEST, r#"name = "idle""#)));
    assert_eq!(
        grant(&review, "idle", "secret", "token").status,
        Status::Unused
    );
    let api = review.functions.iter().find(|f| f.name == "api").unwrap();
    assert_eq!((api.invoked, api.calls), (Invoked::Yes, 7));

    // Nothing about the window's coverage to say: the trail is older.
    assert!(
        !review.notes.iter().any(|n| n.contains("starts at")),
        "{:?}",
        review.notes
    );
    assert!(review.notes.iter().any(|n| n.contains("folded")));
    let json = serde_json::to_value(&review).unwrap();
    assert_eq!(json["summary"]["unused"], 5);
    assert_eq!(json["summary"]["wider"], 2);
}

/// The diff, applied, is a manifest that loads, with every suggestion
/// made and nothing else changed.
#[test]
fn t16_the_suggested_manifest_loads_with_the_smaller_grants() {
    let app = app(MANIFEST);
    let window = Window {
        since_ms: NOW - 30 * DAY,
        until_ms: NOW,
    };
    let review = Review::new(&app, MANIFEST, &busy_day(&app, window));
    let diff = review.diff();
    assert!(
        diff.contains("--- a/bulkhead.toml\n+++ b/bulkhead.toml\n"),
        "{diff}"
    );
    assert!(
        diff.contains(r#"+grants = { kv = { cache = "read" }, sql = { events = "read-write" }, secrets = ["token", "pending"], config = ["greeting"], outbound = ["#),
        "{diff}"
    );
    assert!(
        diff.contains(r#"-    "https://unused.example.org","#),
        "{diff}"
    );
    assert!(
        diff.contains("function `idle` (route `/idle`) was never invoked"),
        "{diff}"
    );
    let suggested = apply_diff(MANIFEST, &diff);
    let smaller = self::app(&suggested);
    let api = &smaller.functions[0].grants;
    assert_eq!(api.kv.get("cache"), Some(&StoreAccess::Read));
    assert!(!api.kv.contains_key("spare"));
    assert_eq!(api.secrets, ["token", "pending"]);
    assert_eq!(api.config, ["greeting"]);
    let outbound: Vec<String> = api.outbound.iter().map(ToString::to_string).collect();
    assert_eq!(
        outbound,
        [
            "https://a.example.com:443",
            "https://b.example.com:443",
            "https://api.example.com:443"
        ]
    );
    // `idle`'s only grant goes, and its line with it.
    assert!(smaller.functions[1].grants.secrets.is_empty());
    assert_eq!(suggested.lines().count(), MANIFEST.lines().count() - 2);
}

/// Outside review, issue 13 (T16): a window shorter than the meter's hour
/// (`--since 0s`, `1ms`) called every grant unused and the diff deleted
/// every grant line, beside functions with calls "perhaps before it".
#[test]
fn t16_a_window_shorter_than_the_meters_hour_calls_nothing_unused() {
    let app = app(MANIFEST);
    for since_ms in [NOW, NOW - 1, NOW - HOUR_MS + 8] {
        let window = Window {
            since_ms,
            until_ms: NOW,
        };
        let review = Review::new(&app, MANIFEST, &busy_day(&app, window));
        for g in &review.grants {
            // Tried and refused stays so; nothing else is called unused.
            assert_ne!(g.status, Status::Unused, "{} {}", g.capability, g.name);
            assert!(g.suggestion.is_none(), "{} {}", g.capability, g.name);
            assert_eq!(g.uses, 0);
        }
        assert_eq!(review.summary.unused, 0);
        assert!(review.summary.uncertain > 0);
        assert!(
            review.functions.iter().all(|f| f.suggestion.is_none()),
            "{:?}",
            review.functions
        );
        let diff = review.diff();
        assert!(!diff.contains("--- a/"), "{diff}");
        assert!(!diff.lines().any(|l| l.starts_with('-')), "{diff}");
        assert!(
            review
                .notes
                .iter()
                .any(|n| n.contains("shorter than the meter's hour")),
            "{:?}",
            review.notes
        );
    }
}

/// A window of an hour or more that starts after every record: the
/// function whose calls may be from before it keeps its grants
/// (uncertain); the function that was never called loses its grant.
#[test]
fn t16_grants_of_a_function_perhaps_called_before_the_window_are_uncertain() {
    let app = app(MANIFEST);
    let window = Window {
        since_ms: NOW - HOUR_MS + 8,
        until_ms: NOW + HOUR_MS,
    };
    let review = Review::new(&app, MANIFEST, &busy_day(&app, window));
    let api = review.functions.iter().find(|f| f.name == "api").unwrap();
    assert_eq!(api.invoked, Invoked::PerhapsBeforeWindow);
    for g in review.grants.iter().filter(|g| g.function == "api") {
        assert_eq!(g.uses, 0);
        assert_eq!(g.status, Status::Uncertain, "{} {}", g.capability, g.name);
        assert!(g.suggestion.is_none(), "{} {}", g.capability, g.name);
    }
    let idle = grant(&review, "idle", "secret", "token");
    assert_eq!(idle.status, Status::Unused);
    assert_eq!(idle.suggestion.as_ref().unwrap().change, "remove");
    // The diff touches `idle`'s line only.
    let diff = review.diff();
    let removed: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .collect();
    assert_eq!(removed, [r#"-grants = { secrets = ["token"] }"#], "{diff}");
    assert!(
        review
            .notes
            .iter()
            .any(|n| n.contains("counts calls per hour"))
    );
    assert!(
        review
            .notes
            .iter()
            .any(|n| n.contains("uncertain, not unused"))
    );
}

#[test]
fn t16_what_the_records_cannot_show_is_said() {
    let app = app(MANIFEST);
    let window = Window {
        since_ms: NOW - 30 * DAY,
        until_ms: NOW,
    };
    let mut evidence = Evidence::new(&app, window);
    // Served for two days, one drop, no meter.
    evidence.trail_starts(NOW - 2 * DAY);
    evidence.add_deploy(&record(
        "deploy",
        None,
        NOW - 2 * DAY,
        json!({"functions": [{"name": "api"}, {"name": "idle"}]}),
    ));
    evidence.add(&record(
        "audit.dropped",
        None,
        NOW - DAY,
        json!({"events": 12}),
    ));
    let review = Review::new(&app, MANIFEST, &evidence);
    let notes = review.notes.join("\n");
    assert!(
        notes.contains("the audit trail starts at 2026-11-29T10:00:00Z"),
        "{notes}"
    );
    assert!(notes.contains("12 audit event(s) were dropped"), "{notes}");
    assert!(notes.contains("may have been used"), "{notes}");
    assert!(notes.contains("metering is off"), "{notes}");
    // Without a meter, a function not seen running is not known idle.
    assert!(
        review
            .functions
            .iter()
            .all(|f| f.invoked == Invoked::Unknown)
    );
    assert_eq!(
        review.functions[0].first_served.as_deref(),
        Some("2026-11-29T10:00:00Z")
    );
    // A trail that is older than the window says nothing of the sort.
    let mut older = Evidence::new(&app, window);
    older.trail_starts(window.since_ms - 1);
    older.add_usage(&[]);
    let review = Review::new(&app, MANIFEST, &older);
    assert!(review.notes.is_empty(), "{:?}", review.notes);
}

/// A grant written as its own table: the line is the setting's, and a
/// multi-line statement list is left to do by hand, said in the diff.
#[test]
fn t16_grant_tables_spread_over_lines_are_left_to_the_reader() {
    let source = r#"[app]
name = "t"

[store.events]
kind = "sql"
migrations = "migrations"

[store.cache]
kind = "kv"

[[function]]
name = "f"
component = "f.wasm"
route = "/"
auth = "public"

[function.grants.kv]
cache = "read-write"

[function.grants.sql]
events = { access = "read", statements = [
    "SELECT 1",
] }
"#;
    let app = app(source);
    let window = Window {
        since_ms: NOW - DAY,
        until_ms: NOW,
    };
    let mut evidence = Evidence::new(&app, window);
    evidence.trail_starts(NOW - 2 * DAY);
    evidence.add(&used(
        "f",
        NOW - 10,
        json!({"capability": "kv", "resource": "cache", "access": "read-write"}),
    ));
    evidence.add(&used(
        "f",
        NOW - 9,
        json!({"capability": "kv", "resource": "cache", "access": "write"}),
    ));
    let review = Review::new(&app, source, &evidence);
    let cache = grant(&review, "f", "kv", "cache");
    assert_eq!((cache.status, cache.writes), (Status::Used, Some(1)));
    assert_eq!(cache.uses, 1);
    let events = grant(&review, "f", "sql", "events");
    assert_eq!(events.status, Status::Unused);
    assert_eq!(events.line, Some(line_of(source, "events = {")));
    assert_eq!(events.suggestion.as_ref().unwrap().suggested_line, None);
    let diff = review.diff();
    assert!(
        diff.contains(&format!(
            "# line {}: function `f`: sql `events`: remove the grant (change it by hand)",
            line_of(source, "events = {")
        )),
        "{diff}"
    );
    assert!(!diff.contains("--- a/"), "{diff}");
}

/// Outside review, issue 13 (T16): a statement that failed in the
/// database (`access = "failed"`) is a use; under a read-write grant it
/// may have been a write, so the grant is not narrowed to `read` either.
#[test]
fn t16_a_failed_statement_is_a_use_and_not_narrowed() {
    let app = app(MANIFEST);
    let window = Window {
        since_ms: NOW - DAY,
        until_ms: NOW,
    };
    let mut evidence = Evidence::new(&app, window);
    evidence.trail_starts(NOW - 2 * DAY);
    evidence.add(&used(
        "api",
        NOW - 10,
        json!({"capability": "sql", "store": "events", "access": "failed"}),
    ));
    let review = Review::new(&app, MANIFEST, &evidence);
    let events = grant(&review, "api", "sql", "events");
    assert_eq!(events.status, Status::Used, "{}", events.finding);
    assert!(events.suggestion.is_none());
    assert_eq!((events.uses, events.writes), (1, Some(0)));
    assert!(events.finding.contains("failed"), "{}", events.finding);
    assert!(events.inferred.iter().any(|i| i.contains("failed there")));
}
