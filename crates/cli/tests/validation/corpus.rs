//! The hostile-input corpus for `validation.rs`: raw HTTP/1.1 requests and
//! what each must get. Targets are written as a client would send them;
//! nothing here is normalised before it reaches the server.

/// The app the corpus attacks (served over HTTP/1.1 by `validation.rs`,
/// over HTTP/2 by `tls_h2.rs`).
pub const MANIFEST: &str = r#"
[app]
name = "validation"
hostnames = ["x"]

[[function]]
name = "register"
component = "echo.wasm"
route = "/register/{handle}"
auth = "public"
methods = ["POST"]
input.path.handle = "[a-z0-9-]{1,20}"
input.body_schema = "schemas/register.json"
input.max_body = "64KiB"
input.headers = ["x-request-source"]

[[function]]
name = "items"
component = "echo.wasm"
route = "/items/{id}"
auth = "public"
input.query.page = "[0-9]{1,3}"
input.query.q = "[A-Za-z0-9 ]{1,32}"
input.query.sort = true

[[function]]
name = "notes"
component = "echo.wasm"
route = "/notes"
auth = "public"
methods = ["POST"]
input.content_types = ["text/plain"]
input.max_body = "1KiB"

[[function]]
name = "open"
component = "echo.wasm"
route = "/open/{word}"
auth = "public"
input.allow_unknown_query = true

# No input rules: only strict JSON applies, decided by the media type.
[[function]]
name = "free"
component = "echo.wasm"
route = "/free"
auth = "public"
methods = ["POST"]
"#;

pub const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["name", "email"],
  "additionalProperties": false,
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 64},
    "email": {"type": "string", "format": "email", "maxLength": 254},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "maxItems": 16, "items": {"type": "string", "pattern": "^[a-z]{1,16}$"}},
    "extra": {"type": "object"}
  }
}"#;

/// What a hostile request must get.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// This status, problem type and (unless empty) rule, from the gateway.
    Problem(u16, &'static str, &'static str),
    /// Broken framing: whatever the HTTP parser or the gateway answers, a
    /// 4xx or a closed connection.
    Refused,
}
use Expect::{Problem, Refused};

pub type Case = (&'static str, Vec<u8>, Expect);

/// Assert that `answer` is what `expect` says a hostile request gets: a
/// 4xx or nothing; for a problem, its status, problem JSON, type, rule and
/// correlation ID (and a field and rule where validation refused it);
/// never the input echoed. Returns the correlation ID when one came.
pub fn assert_answer(
    name: &str,
    answer: &crate::support::RawAnswer,
    expect: Expect,
) -> Option<String> {
    if let Some(status) = answer.status {
        assert!(
            (400..500).contains(&status),
            "{name}: status {status}: {}",
            answer.text()
        );
    }
    if let Problem(status, slug, rule) = expect {
        assert_eq!(answer.status, Some(status), "{name}: {}", answer.text());
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json"),
            "{name}"
        );
        let problem: serde_json::Value = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {}", answer.text()));
        assert_eq!(
            problem["type"],
            format!("https://bulkhead.dev/problems/{slug}"),
            "{name}"
        );
        if slug != "not-found" && slug != "body-too-large" {
            assert!(
                problem["field"].is_string() && problem["rule"].is_string(),
                "{name}: {problem}"
            );
        }
        if !rule.is_empty() {
            assert_eq!(problem["rule"], rule, "{name}: {problem}");
        }
        assert_eq!(
            problem["correlation_id"].as_str(),
            answer.header("bulkhead-correlation-id"),
            "{name}"
        );
    }
    assert!(
        !answer.echoes("evil"),
        "{name}: the answer echoes the input: {}",
        answer.text()
    );
    answer.header("bulkhead-correlation-id").map(String::from)
}

const fn path(rule: &'static str) -> Expect {
    Problem(400, "invalid-path", rule)
}
const fn param(rule: &'static str) -> Expect {
    Problem(400, "invalid-parameter", rule)
}
const fn body(rule: &'static str) -> Expect {
    Problem(400, "invalid-body", rule)
}
const fn media(rule: &'static str) -> Expect {
    Problem(415, "unsupported-media-type", rule)
}
const fn host(rule: &'static str) -> Expect {
    Problem(400, "invalid-host", rule)
}
const UNKNOWN: Expect = Problem(400, "unknown-parameter", "undeclared");
const TOO_LARGE: Expect = Problem(413, "body-too-large", "");
const NOT_FOUND: Expect = Problem(404, "not-found", "");

/// GET targets: traversal, control and invisible characters, look-alikes,
/// double encoding, the query allowlist.
#[rustfmt::skip]
pub const TARGETS: &[(&str, &str, Expect)] = &[
    // Traversal, in its encodings.
    ("dot-dot", "/items/../admin", path("dot-segment")),
    ("dot", "/items/./x", path("dot-segment")),
    ("leading dot", "/./items/x", path("dot-segment")),
    ("encoded dot-dot", "/items/%2e%2e/admin", path("dot-segment")),
    ("encoded dot-dot upper", "/items/%2E%2E", path("dot-segment")),
    ("half encoded dot-dot", "/items/.%2e/x", path("dot-segment")),
    ("half encoded dot-dot 2", "/items/%2e./x", path("dot-segment")),
    ("encoded dot", "/items/%2e", path("dot-segment")),
    ("absolute form dot-dot", "http://x/items/../a", path("dot-segment")),
    ("double encoded dot-dot", "/items/%252e%252e", path("double-encoding")),
    ("encoded slash", "/items/..%2fadmin", path("encoded-slash")),
    ("encoded slash upper", "/items/..%2Fadmin", path("encoded-slash")),
    ("encoded passwd", "/items/%2e%2e%2fetc%2fpasswd", path("encoded-slash")),
    ("encoded backslash", "/items/..%5cadmin", path("encoded-slash")),
    ("encoded slash alone", "/items/%2fetc", path("encoded-slash")),
    ("raw backslash", "/items/..\\admin", Refused),
    ("overlong dot-dot", "/items/%c0%ae%c0%ae/x", path("invalid-utf8")),
    ("overlong slash", "/items/a%c0%afb", path("invalid-utf8")),
    ("overlong 3-byte dot", "/items/%e0%80%ae", path("invalid-utf8")),
    ("overlong 4-byte dot", "/items/%f0%80%80%ae", path("invalid-utf8")),
    ("overlong backslash", "/items/%c1%9c", path("invalid-utf8")),
    ("utf-16 surrogate", "/items/%ed%a0%80", path("invalid-utf8")),
    ("invalid bytes", "/items/%ff%fe", path("invalid-utf8")),
    ("truncated sequence", "/items/a%e2%80", path("invalid-utf8")),
    ("double encoded overlong", "/items/%25c0%25ae", path("double-encoding")),
    ("iis unicode escape", "/items/%u002e%u002e", path("bad-escape")),
    ("truncated escape", "/items/a%2", path("bad-escape")),
    ("empty segment", "/items//x", path("empty-segment")),
    ("trailing slash", "/items/x/", path("empty-segment")),
    ("leading double slash", "//items/x", path("empty-segment")),
    // NUL and control characters.
    ("nul", "/items/a%00b", path("control-character")),
    ("trailing nul", "/items/a%00", path("control-character")),
    ("crlf injection", "/items/a%0d%0aSet-Cookie:%20evil", path("control-character")),
    ("line feed", "/items/a%0a", path("control-character")),
    ("tab", "/items/a%09", path("control-character")),
    ("ansi escape", "/items/a%1b%5b31m", path("control-character")),
    ("delete", "/items/a%7f", path("control-character")),
    ("c1 next line", "/items/a%c2%85", path("control-character")),
    ("c1 csi", "/items/a%c2%9b", path("control-character")),
    ("query nul", "/items/x?q=a%00", param("control-character")),
    ("query crlf", "/items/x?q=a%0d%0aevil", param("control-character")),
    // Unicode look-alikes, invisible and bidi characters.
    ("cyrillic a", "/items/%d0%b0dmin", param("pattern")),
    ("fullwidth a", "/items/%ef%bd%81", param("pattern")),
    ("fullwidth dots", "/items/%ef%bc%8e%ef%bc%8e", param("pattern")),
    ("lookalike literal", "/it%d0%b5ms/x", NOT_FOUND),
    ("right-to-left override", "/items/%e2%80%aeevil", path("invisible-character")),
    ("zero width space", "/items/abc%e2%80%8b", path("invisible-character")),
    ("byte order mark", "/items/%ef%bb%bfabc", path("invisible-character")),
    ("left-to-right isolate", "/items/a%e2%81%a6b", path("invisible-character")),
    ("arabic letter mark", "/items/a%d8%9cb", path("invisible-character")),
    ("line separator", "/items/%e2%80%a8", path("invisible-character")),
    ("hangul filler", "/items/%e1%85%9f", path("invisible-character")),
    ("tag character", "/items/a%f3%a0%80%81", path("invisible-character")),
    ("query bidi", "/items/x?q=%e2%80%ae", param("invisible-character")),
    ("query cyrillic", "/items/x?q=%d0%b0", param("pattern")),
    ("raw utf-8 in path", "/items/\u{e9}", Refused),
    // Double encoding.
    ("double encoded letter", "/items/%2541", path("double-encoding")),
    ("double encoded slash", "/items/%252f", path("double-encoding")),
    ("double encoded backslash", "/items/%255c", path("double-encoding")),
    ("triple encoded dot", "/items/%25252e", path("double-encoding")),
    ("query double encoded", "/items/x?q=%252e%252e", param("pattern")),
    ("query double encoded digit", "/items/x?page=%2531", param("pattern")),
    // The query allowlist.
    ("undeclared", "/items/x?debug=1", UNKNOWN),
    ("undeclared after declared", "/items/x?page=1&admin=true", UNKNOWN),
    ("case differs", "/items/x?PAGE=1", UNKNOWN),
    ("repeated", "/items/x?page=1&page=2", param("repeated")),
    ("letters for digits", "/items/x?page=abc", param("pattern")),
    ("too long", "/items/x?page=1000", param("pattern")),
    ("negative", "/items/x?page=-1", param("pattern")),
    ("empty value", "/items/x?page=", param("pattern")),
    ("no value", "/items/x?page", param("pattern")),
    ("empty pair", "/items/x?page=1&&q=a", param("empty-parameter")),
    ("only ampersand", "/items/x?&", param("empty-parameter")),
    ("semicolon separator", "/items/x?page=1;q=a", param("pattern")),
    ("bad escape", "/items/x?page=%zz", param("bad-escape")),
    ("empty name", "/items/x?=1", param("empty-parameter")),
    ("plus is not space", "/items/x?q=a+b", param("pattern")),
    ("sql in query", "/items/x?q=%27%20OR%201=1--", param("pattern")),
    ("script in query", "/items/x?q=%3Cscript%3Eevil%3C/script%3E", param("pattern")),
    ("sql in path", "/items/1%27%20OR%20%271%27=%271", param("pattern")),
];

/// JSON bodies POSTed to `/register/ada`: structure first, then the schema.
#[rustfmt::skip]
const BODIES: &[(&str, &str, Expect)] = &[
    ("duplicate key", r#"{"name":"Ada","email":"ada@example.org","name":"admin"}"#, body("duplicate-key")),
    ("duplicate key escaped", r#"{"name":"Ada","email":"a@b.org","\u006eame":"x"}"#, body("duplicate-key")),
    ("nested duplicate", r#"{"name":"Ada","email":"a@b.org","extra":{"x":1,"x":2}}"#, body("duplicate-key")),
    ("huge exponent", r#"{"name":"Ada","email":"ada@example.org","age":1e400}"#, body("number-magnitude")),
    ("past 2^53", r#"{"name":"Ada","email":"a@b.org","age":9007199254740993}"#, body("number-magnitude")),
    ("huge negative", r#"{"name":"Ada","email":"a@b.org","age":-99999999999999999999}"#, body("number-magnitude")),
    ("big float", r#"{"name":"Ada","email":"ada@example.org","age":1e308}"#, body("number-magnitude")),
    ("not json", "name=ada&email=ada@example.org", body("json-syntax")),
    ("trailing garbage", r#"{"name":"Ada","email":"ada@example.org"} evil"#, body("json-syntax")),
    ("byte order mark", "\u{feff}{\"name\":\"Ada\",\"email\":\"ada@example.org\"}", body("json-syntax")),
    ("lone surrogate", r#"{"name":"Ada","email":"a@b.org","tags":["\ud800"]}"#, body("json-syntax")),
    ("raw nul in string", "{\"name\":\"a\0b\",\"email\":\"ada@example.org\"}", body("json-syntax")),
    ("single quotes", "{'name':'ada'}", body("json-syntax")),
    ("empty body", "", body("missing")),
    ("missing field", r#"{"name":"Ada"}"#, Problem(400, "invalid-body", "required")),
    ("extra field", r#"{"name":"Ada","email":"ada@example.org","admin":true}"#, body("additionalProperties")),
    ("prototype pollution", r#"{"name":"A","email":"a@b.org","__proto__":{"admin":1}}"#, body("additionalProperties")),
    ("wrong type", r#"{"name":1,"email":"ada@example.org"}"#, body("type")),
    ("bad email", r#"{"name":"Ada","email":"evil"}"#, body("format")),
    ("negative age", r#"{"name":"Ada","email":"ada@example.org","age":-1}"#, body("minimum")),
    ("fractional age", r#"{"name":"Ada","email":"ada@example.org","age":1.5}"#, body("type")),
    ("tag pattern", r#"{"name":"Ada","email":"ada@example.org","tags":["EVIL"]}"#, body("pattern")),
    ("array body", "[]", body("type")),
    ("null body", "null", body("type")),
];

/// Media types and sizes: (name, target, content type, body, expected).
#[rustfmt::skip]
const TYPED: &[(&str, &str, Option<&str>, &str, Expect)] = &[
    ("text for json", "/register/ada", Some("text/plain"), "{}", media("not-allowed")),
    ("no content type", "/register/ada", None, "{}", media("missing")),
    ("utf-16 json", "/register/ada", Some("application/json; charset=utf-16"), "{}", media("charset")),
    ("xml", "/register/ada", Some("application/xml"), "<a/>", media("not-allowed")),
    ("form", "/register/ada", Some("application/x-www-form-urlencoded"), "a=b", media("not-allowed")),
    ("multipart", "/register/ada", Some("multipart/form-data; boundary=x"), "--x--", media("not-allowed")),
    ("two types in one", "/register/ada", Some("application/json, text/plain"), "{}", media("malformed")),
    ("json for text", "/notes", Some("application/json"), "{}", media("not-allowed")),
    // T10: a `Content-Type` that is not exactly one media type never skips
    // strict JSON; `/free` declares no content types, so only the media
    // type's own grammar refuses these (each body has a duplicate key and a
    // number past 2^53).
    ("json empty parameter", "/free", Some("application/json;"), SMUGGLED_JSON, media("malformed")),
    ("json parameter without value", "/free", Some("application/json; charset"), SMUGGLED_JSON, media("malformed")),
    ("json trailing semicolon", "/free", Some("application/json;charset=utf-8;"), SMUGGLED_JSON, media("malformed")),
    ("json listed with text", "/free", Some("application/json, text/plain"), SMUGGLED_JSON, media("malformed")),
    ("json repeated charset", "/free", Some("application/json; charset=utf-8; charset=latin1"), SMUGGLED_JSON, media("malformed")),
    ("json unterminated quote", "/free", Some("application/json; charset=\"utf-8"), SMUGGLED_JSON, media("malformed")),
    ("json strict anyway", "/free", Some("application/json"), SMUGGLED_JSON, body("duplicate-key")),
    ("suffix json strict", "/free", Some("Application/Problem+JSON; charset=\"utf-8\""), SMUGGLED_JSON, body("duplicate-key")),
    // Other spellings of JSON are JSON too: a guest's parser reads them
    // as JSON whatever the gateway thinks (issue 11 review, T10).
    ("text/json strict", "/free", Some("text/json"), SMUGGLED_JSON, body("duplicate-key")),
    ("x-json strict", "/free", Some("application/x-json"), SMUGGLED_JSON, body("duplicate-key")),
    ("text/x-json strict", "/free", Some("text/x-json; charset=utf-8"), SMUGGLED_JSON, body("duplicate-key")),
    // A request's type is one type, never a range.
    ("wildcard type", "/free", Some("*/*"), SMUGGLED_JSON, media("malformed")),
    ("wildcard subtype", "/free", Some("application/*"), SMUGGLED_JSON, media("malformed")),
    // A NUL in a key makes `a\u0000b` and `a` one key to a C parser.
    ("nul in a key", "/free", Some("application/json"), r#"{"role\u0000x":"admin","role":"user"}"#, body("control-character")),
    // Go reads object keys into struct fields case-insensitively, with
    // Unicode simple folding, the last one winning (T10).
    ("keys equal but for case", "/free", Some("application/json"), r#"{"admin":false,"Admin":true}"#, body("duplicate-key")),
    ("kelvin sign key", "/free", Some("application/json"), r#"{"k":1,"\u212a":2}"#, body("duplicate-key")),
    ("long s key", "/free", Some("application/json"), r#"{"ss":1,"\u017fs":2}"#, body("duplicate-key")),
    ("sharp s and capital sharp s", "/free", Some("application/json"), r#"{"\u00df":1,"\u1e9e":2}"#, body("duplicate-key")),
    // JSON is UTF-8 (RFC 8259 §8.1): another charset is refused even where
    // the function declares no content types, as a guest may decode by it.
    ("json latin-1", "/free", Some("application/json; charset=iso-8859-1"), r#"{"a":"\u00e9"}"#, media("charset")),
    ("suffix json latin-1", "/free", Some("application/problem+json; charset=latin1"), "{}", media("charset")),
    ("json utf-16 charset", "/free", Some("text/json; charset=utf-16"), "{}", media("charset")),
];

/// A body two JSON parsers read differently: a duplicate key, and a
/// number JavaScript rounds.
const SMUGGLED_JSON: &str = r#"{"role":"user","role":"admin","id":9007199254740993}"#;

/// Host rules (RFC 9112 §3.2, T10), raw request heads sent to `/items/x`;
/// the app's `hostnames` is `["x"]`.
#[rustfmt::skip]
const HOSTS: &[(&str, &str, Expect)] = &[
    ("no host on http/1.1", "GET /items/x HTTP/1.1\r\n", host("missing")),
    ("two hosts", "GET /items/x HTTP/1.1\r\nhost: x\r\nhost: evil.example\r\n", host("repeated")),
    ("two equal hosts", "GET /items/x HTTP/1.1\r\nhost: x\r\nhost: x\r\n", host("repeated")),
    ("empty host", "GET /items/x HTTP/1.1\r\nhost: \r\n", host("invalid")),
    ("host with space", "GET /items/x HTTP/1.1\r\nhost: x evil\r\n", host("invalid")),
    ("host list", "GET /items/x HTTP/1.1\r\nhost: x,evil.example\r\n", host("invalid")),
    ("host with userinfo", "GET /items/x HTTP/1.1\r\nhost: evil@x\r\n", host("invalid")),
    ("host with path", "GET /items/x HTTP/1.1\r\nhost: x/evil\r\n", host("invalid")),
    ("host as url", "GET /items/x HTTP/1.1\r\nhost: http://x\r\n", host("invalid")),
    ("host port too big", "GET /items/x HTTP/1.1\r\nhost: x:99999\r\n", host("invalid")),
    ("host port signed", "GET /items/x HTTP/1.1\r\nhost: x:+80\r\n", host("invalid")),
    ("host port empty", "GET /items/x HTTP/1.1\r\nhost: x:\r\n", host("invalid")),
    ("host two ports", "GET /items/x HTTP/1.1\r\nhost: x:80:81\r\n", host("invalid")),
    ("host percent escape", "GET /items/x HTTP/1.1\r\nhost: %78\r\n", host("invalid")),
    ("host trailing dot", "GET /items/x HTTP/1.1\r\nhost: x.\r\n", host("invalid")),
    ("host open bracket", "GET /items/x HTTP/1.1\r\nhost: [::1\r\n", host("invalid")),
    ("host zone id", "GET /items/x HTTP/1.1\r\nhost: [fe80::1%25evil]\r\n", host("invalid")),
    // A name ending in a number is an IPv4 address to a browser (WHATWG
    // URL): only the plain dotted quad is one (T10).
    ("host as one number", "GET /items/x HTTP/1.1\r\nhost: 2130706433\r\n", host("invalid")),
    ("host in hex", "GET /items/x HTTP/1.1\r\nhost: 0x7f.0.0.1\r\n", host("invalid")),
    ("host not allowed", "GET /items/x HTTP/1.1\r\nhost: evil.example\r\n", host("not-allowed")),
    ("host case is not a bypass", "GET /items/x HTTP/1.1\r\nhost: EVIL.example\r\n", host("not-allowed")),
    ("absolute form to another host", "GET http://evil.example/items/x HTTP/1.1\r\nhost: x\r\n", host("mismatch")),
    ("absolute form other port", "GET http://x:8080/items/x HTTP/1.1\r\nhost: x\r\n", host("mismatch")),
    ("absolute form agreeing elsewhere", "GET http://evil.example/items/x HTTP/1.1\r\nhost: evil.example\r\n", host("not-allowed")),
    ("absolute form no host", "GET http://x/items/x HTTP/1.1\r\n", host("missing")),
    ("absolute form userinfo", "GET http://evil@x/items/x HTTP/1.1\r\nhost: x\r\n", host("invalid")),
    ("absolute form other scheme", "GET ftp://x/items/x HTTP/1.1\r\nhost: x\r\n", host("invalid")),
    ("http/1.0 without host", "GET /items/x HTTP/1.0\r\n", host("missing")),
    ("http/1.0 absolute form elsewhere", "GET http://evil.example/items/x HTTP/1.0\r\n", host("not-allowed")),
];

pub fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").into_bytes()
}

pub fn post(target: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("content-type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw
}

pub fn json(body: &str) -> Vec<u8> {
    post("/register/ada", Some("application/json"), body.as_bytes())
}

/// A valid registration with `extra` spliced into its `extra` object.
fn with_extra(extra: &str) -> Vec<u8> {
    json(&format!(
        r#"{{"name":"Ada","email":"ada@example.org","extra":{{"a":{extra}}}}}"#
    ))
}

/// Every hostile request.
pub fn all() -> Vec<Case> {
    let mut cases: Vec<Case> = TARGETS
        .iter()
        .map(|(name, target, expect)| (*name, get(target), *expect))
        .collect();
    cases.extend(
        BODIES
            .iter()
            .map(|(name, text, expect)| (*name, json(text), *expect)),
    );
    cases.extend(TYPED.iter().map(|(name, target, ct, text, expect)| {
        (*name, post(target, *ct, text.as_bytes()), *expect)
    }));
    cases.extend(HOSTS.iter().map(|(name, head, expect)| {
        (
            *name,
            format!("{head}connection: close\r\n\r\n").into_bytes(),
            *expect,
        )
    }));
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    // Valid bodies on hostile `/register/{handle}` paths.
    let valid = br#"{"name":"Ada","email":"ada@example.org"}"#;
    for (name, target, expect) in [
        ("dotless i", "/register/adm%c4%b1n", param("pattern")),
        ("path pattern", "/register/ADMIN", param("pattern")),
        (
            "double encoded post",
            "/register/..%252f",
            path("double-encoding"),
        ),
        (
            "post traversal",
            "/register/../items/x",
            path("dot-segment"),
        ),
    ] {
        cases.push((name, post(target, Some("application/json"), valid), expect));
    }
    cases.extend([
        ("deep nesting", with_extra(&nested(40)), body("depth")),
        (
            "very deep nesting",
            with_extra(&nested(5000)),
            body("depth"),
        ),
        (
            "too many values",
            with_extra(&format!("[{}0]", "0,".repeat(10_000))),
            body("too-many-values"),
        ),
        (
            "too many pairs",
            get(&format!("/items/x?{}", vec!["sort=a"; 65].join("&"))),
            param("too-many"),
        ),
        (
            "too long name",
            json(&format!(
                r#"{{"name":"{}","email":"a@b.org"}}"#,
                "a".repeat(65)
            )),
            body("maxLength"),
        ),
        (
            "oversized json",
            json(&format!(r#"{{"name":"{}"}}"#, "a".repeat(70_000))),
            TOO_LARGE,
        ),
        (
            "oversized note",
            post("/notes", Some("text/plain"), &[b'a'; 2000]),
            TOO_LARGE,
        ),
    ]);
    for (name, raw) in [
        (
            "raw nul",
            &b"GET /items/a\0b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"[..],
        ),
        (
            "raw cr",
            b"GET /items/a\rb HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ),
        (
            "raw escape",
            b"GET /items/a\x1bb HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ),
    ] {
        cases.push((name, raw.to_vec(), Refused));
    }
    cases
}

/// What a framing attack may get on a keep-alive connection (issue 12):
/// counted in responses to the case's own requests; a probe request sent
/// after it on the same connection shows whether the connection was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Refused (a 4xx, or closed unanswered), and nothing after it read.
    Refused,
    /// Answered at most once, served or refused, and the connection then
    /// closed, so nothing after it is ever read as a request: both framings
    /// at once, which hyper reads as chunked (RFC 9112 §6.1).
    Once,
    /// Framed without doubt: this many answers, then the probe's.
    Kept(usize),
}

pub type FramingCase = (&'static str, Vec<u8>, Framing);

/// Framing attacks. The outer request is one `notes` would accept; the
/// request smuggled inside (`GET /items/smuggled`) must never be read as a
/// request at all. (Two identical `Content-Length` values are not here: RFC
/// 9110 lets a recipient read them as one, hyper does, and so nothing is
/// ambiguous.) No `connection: close`: the connection is kept alive unless
/// the server closes it.
pub fn smuggling() -> Vec<FramingCase> {
    use Framing::{Kept, Once, Refused};
    let smuggled = "GET /items/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let inner = format!("0\r\n\r\n{smuggled}");
    let n = inner.len();
    let framed = |headers: String, body: &str| {
        format!(
            "POST /notes HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n{headers}\r\n{body}"
        )
        .into_bytes()
    };
    let chunked = |body: &str| framed("transfer-encoding: chunked\r\n".into(), body);
    let coded = |coding: &str, body: &str| framed(format!("transfer-encoding: {coding}\r\n"), body);
    let hello_smuggled = format!("hello{smuggled}");
    // The smuggled request as the data of one chunk: body, never a request.
    let in_chunk = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let pipelined = [
        chunked("5\r\nhello\r\n0\r\n\r\n"),
        b"GET /items/abc HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
    ]
    .concat();
    #[rustfmt::skip]
    let cases = vec![
        // Both framings: read as chunked, answered once, closed (hyper).
        ("cl and te", framed(format!("content-length: {n}\r\ntransfer-encoding: chunked\r\n"), &inner), Once),
        ("te and cl", framed(format!("transfer-encoding: chunked\r\ncontent-length: {n}\r\n"), &inner), Once),
        ("te and cl of the smuggled part", framed("transfer-encoding: chunked\r\ncontent-length: 5\r\n".into(), &format!("5\r\nhello\r\n{inner}")), Once),
        ("two lengths differ", framed("content-length: 5\r\ncontent-length: 40\r\n".into(), &hello_smuggled), Refused),
        ("length list", framed("content-length: 5, 40\r\n".into(), &hello_smuggled), Refused),
        ("signed length", framed("content-length: +5\r\n".into(), "hello"), Refused),
        ("negative length", framed("content-length: -1\r\n".into(), "hello"), Refused),
        ("te not chunked", coded("xchunked", &inner), Refused),
        ("te chunked then identity", coded("chunked, identity", &inner), Refused),
        ("te gzip then chunked", coded("gzip, chunked", &inner), Refused),
        ("te chunked twice in one line", coded("chunked, chunked", &inner), Refused),
        ("te identity then chunked", coded("identity, chunked", &inner), Refused),
        ("te space before colon", framed("transfer-encoding : chunked\r\ncontent-length: 3\r\n".into(), "0\r\n"), Refused),
        ("te obs-fold", framed("transfer-encoding:\r\n chunked\r\n".into(), &inner), Refused),
        ("te obs-fold after chunked", framed("transfer-encoding: chunked\r\n , identity\r\n".into(), &inner), Refused),
        ("te vertical tab", coded("\x0bchunked", &inner), Refused),
        ("te twice", framed("transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n".into(), "hello"), Refused),
        ("te twice without length", framed("transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n".into(), &inner), Refused),
        ("te then other te", framed("transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n".into(), &inner), Refused),
        ("chunk size overflow", chunked("ffffffffffffffffff1\r\nx\r\n0\r\n\r\n"), Refused),
        ("chunk size 2^64", chunked("10000000000000000\r\nx\r\n0\r\n\r\n"), Refused),
        ("negative chunk size", chunked("-5\r\nhello\r\n0\r\n\r\n"), Refused),
        ("hex prefix chunk size", chunked("0x5\r\nhello\r\n0\r\n\r\n"), Refused),
        ("junk chunk size", chunked("5g\r\nhello\r\n0\r\n\r\n"), Refused),
        ("empty chunk size", chunked("\r\nhello\r\n0\r\n\r\n"), Refused),
        ("chunk longer than its size", chunked("3\r\nhello\r\n0\r\n\r\n"), Refused),
        ("chunk shorter than its size", chunked(&format!("9\r\nhello\r\n{inner}")), Refused),
        ("bare lf after size", chunked("5\nhello\r\n0\r\n\r\n"), Refused),
        ("bare lf after data", chunked("5\r\nhello\n0\r\n\r\n"), Refused),
        ("bare lf in extension", chunked("5;a\nhello\r\n0\r\n\r\n"), Refused),
        ("chunk extension nul", chunked("5;\0\r\nhello\r\n0\r\n\r\n"), Kept(1)),
        ("chunk extensions", chunked("5;name=value;quoted=\"a b\"\r\nhello\r\n0;last\r\n\r\n"), Kept(1)),
        ("header name with space", framed("content length: 5\r\n".into(), "hello"), Refused),
        ("http/1.0 te and cl", format!(
            "POST /notes HTTP/1.0\r\nhost: x\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\ncontent-length: {n}\r\n\r\n{inner}"
        ).into_bytes(), Refused),
        ("http/1.0 chunked", format!(
            "POST /notes HTTP/1.0\r\nhost: x\r\ncontent-type: text/plain\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n{inner}"
        ).into_bytes(), Refused),
        // Framed well: the body is data, whatever it looks like, and the
        // connection goes on with the next request.
        ("te upper case", coded("CHUNKED", "5\r\nhello\r\n0\r\n\r\n"), Kept(1)),
        ("te tab before value", framed("transfer-encoding:\tchunked \r\n".into(), "5\r\nhello\r\n0\r\n\r\n"), Kept(1)),
        ("smuggled request inside a chunk", chunked(&in_chunk), Kept(1)),
        ("chunked then pipelined", pipelined, Kept(2)),
    ];
    cases
}
