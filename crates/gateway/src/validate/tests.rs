//! Unit tests of the validation stage, and a property test that throws
//! random paths, queries, headers and bodies at the router and the rules
//! and asserts that nothing panics and every refusal is well named.

use bulkhead_manifest::{BodySchema, Input, Param, Pattern, RoutePattern};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use serde_json::json;

use super::*;

/// A route without path parameters.
const NO_PARAMS: &[(&str, &str)] = &[];
use crate::router::{RouteMatch, Router};

fn param(name: &str, pattern: &str) -> Param {
    Param {
        name: name.to_string(),
        pattern: Pattern::new(pattern).unwrap(),
    }
}

fn schema() -> BodySchema {
    let schema = json!({
        "type": "object",
        "required": ["name", "tags"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}},
            "address": {
                "type": "object",
                "required": ["zip"],
                "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}}
            }
        }
    });
    BodySchema::compile("schema.json".into(), &schema).unwrap()
}

fn rules() -> Rules {
    let route = RoutePattern::parse("/users/{handle}").unwrap();
    let mut input = Input::for_route(&route);
    input.path = vec![param("handle", "[a-z]{1,8}")];
    input.query = vec![param("page", "[0-9]{1,3}"), param("q", "[A-Za-z0-9]+")];
    input.content_types = Some(vec!["application/json".into()]);
    input.body_schema = Some(schema());
    Rules::new(&input)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn head(query: Option<&str>, pairs: &[(&str, &str)]) -> Result<(), (String, String)> {
    rules()
        .check_head(&[("handle", "ada")], query, &headers(pairs))
        .map_err(|r| (r.field, r.rule))
}

fn body(text: &str) -> Result<(), (String, String)> {
    rules()
        .check_body(
            &Method::POST,
            &headers(&[("content-type", "application/json")]),
            &Bytes::from(text.to_string()),
        )
        .map_err(|r| (r.field, r.rule))
}

fn refused(field: &str, rule: &str) -> Result<(), (String, String)> {
    Err((field.to_string(), rule.to_string()))
}

#[test]
fn path_parameters_match_their_patterns() {
    let r = rules();
    let none = HeaderMap::new();
    assert!(r.check_head(&[("handle", "ada")], None, &none).is_ok());
    for bad in ["Ada", "ada1", "toolonghandle", "a\u{430}a"] {
        let refusal = r.check_head(&[("handle", bad)], None, &none).unwrap_err();
        assert_eq!(
            (refusal.part, refusal.field.as_str()),
            (Part::Parameter, "path.handle")
        );
        assert_eq!(refusal.rule, "pattern");
    }
}

#[test]
fn the_query_is_an_allowlist() {
    assert_eq!(head(Some("page=2&q=abc"), &[]), Ok(()));
    assert_eq!(head(Some(""), &[]), Ok(()));
    assert_eq!(
        head(Some("page=2&debug=1"), &[]),
        refused("query", "undeclared")
    );
    assert_eq!(
        head(Some("page=2&page=3"), &[]),
        refused("query.page", "repeated")
    );
    assert_eq!(
        head(Some("page=1000"), &[]),
        refused("query.page", "pattern")
    );
    assert_eq!(head(Some("page="), &[]), refused("query.page", "pattern"));
    assert_eq!(head(Some("q=a+b"), &[]), refused("query.q", "pattern"));
    assert_eq!(
        head(Some("q=%00"), &[]),
        refused("query.q", "control-character")
    );
    assert_eq!(
        head(Some("q=%c0%ae"), &[]),
        refused("query.q", "invalid-utf8")
    );
    assert_eq!(
        head(Some("page=1&&q=a"), &[]),
        refused("query", "empty-parameter")
    );
    assert_eq!(
        head(Some("p%61ge=1"), &[]),
        Ok(()),
        "names are decoded once"
    );
    assert_eq!(head(Some("%zz=1"), &[]), refused("query", "bad-escape"));

    let route = RoutePattern::parse("/x").unwrap();
    let mut open = Input::for_route(&route);
    open.allow_unknown_query = true;
    let open = Rules::new(&open);
    assert!(
        open.check_head(NO_PARAMS, Some("anything=goes&x"), &HeaderMap::new())
            .is_ok()
    );
    let refusal = open
        .check_head(NO_PARAMS, Some("x=%ff"), &HeaderMap::new())
        .unwrap_err();
    assert_eq!(
        refusal.rule, "invalid-utf8",
        "opting out keeps the encoding checks"
    );
}

#[test]
fn framing_and_media_types() {
    let json = ("content-type", "application/json");
    assert_eq!(head(None, &[json, ("content-length", "2")]), Ok(()));
    assert_eq!(
        head(None, &[("content-length", "0")]),
        Ok(()),
        "no body, no type needed"
    );
    assert_eq!(
        head(None, &[("content-length", "2")]),
        refused("header.content-type", "missing")
    );
    assert_eq!(
        head(
            None,
            &[("content-type", "text/plain"), ("content-length", "2")]
        ),
        refused("header.content-type", "not-allowed")
    );
    assert_eq!(
        head(
            None,
            &[
                ("content-type", "application/json; charset=utf-16"),
                ("content-length", "2")
            ]
        ),
        refused("header.content-type", "charset")
    );
    assert_eq!(
        head(
            None,
            &[
                ("content-type", "Application/JSON; Charset=\"UTF-8\""),
                ("content-length", "2")
            ]
        ),
        Ok(())
    );
    assert_eq!(
        head(None, &[("content-type", "json"), ("content-length", "2")]),
        refused("header.content-type", "malformed")
    );
    assert_eq!(
        head(None, &[json, json, ("content-length", "2")]),
        refused("header.content-type", "repeated")
    );
    assert_eq!(
        head(
            None,
            &[
                json,
                ("content-length", "2"),
                ("transfer-encoding", "chunked")
            ]
        ),
        refused("header.transfer-encoding", "both-framings")
    );
    // Issue 12: a chunked body alone is framed well; any other coding, a
    // list or a second line is refused (T10).
    assert_eq!(
        head(None, &[json, ("transfer-encoding", "chunked")]),
        Ok(())
    );
    assert_eq!(
        head(None, &[json, ("transfer-encoding", "Chunked")]),
        Ok(())
    );
    for coding in [
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunked;q=1",
        "xchunked",
    ] {
        assert_eq!(
            head(None, &[json, ("transfer-encoding", coding)]),
            refused("header.transfer-encoding", "only-chunked"),
            "{coding}"
        );
    }
    assert_eq!(
        head(
            None,
            &[
                json,
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]
        ),
        refused("header.transfer-encoding", "repeated")
    );
    assert_eq!(
        head(
            None,
            &[json, ("content-length", "2"), ("content-length", "2")]
        ),
        refused("header.content-length", "repeated")
    );
}

#[test]
fn bodies_are_strict_json_then_the_schema() {
    assert_eq!(body(r#"{"name":"ada","tags":["x"]}"#), Ok(()));
    assert_eq!(
        body(r#"{"name":"ada","tags":["x"],"name":"eve"}"#),
        refused("body", "duplicate-key")
    );
    assert_eq!(body(r#"{"name":"ada"}"#), refused("body.tags", "required"));
    assert_eq!(
        body(r#"{"name":"ada","tags":[],"admin":true}"#),
        refused("body", "additionalProperties")
    );
    assert_eq!(
        body(r#"{"name":1,"tags":[]}"#),
        refused("body.name", "type")
    );
    assert_eq!(
        body(r#"{"name":"ada","tags":["X"]}"#),
        refused("body.tags[]", "pattern")
    );
    assert_eq!(
        body(r#"{"name":"ada","tags":[],"email":"not-an-email"}"#),
        refused("body.email", "format")
    );
    assert_eq!(
        body(r#"{"name":"ada","tags":[],"address":{"zip":"1"}}"#),
        refused("body.address.zip", "pattern")
    );
    assert_eq!(
        body(r#"{"name":"ada","tags":[],"address":{}}"#),
        refused("body.address.zip", "required")
    );
    assert_eq!(body("[1, 2"), refused("body", "json-syntax"));
    let r = rules();
    let empty = r.check_body(&Method::POST, &HeaderMap::new(), &Bytes::new());
    assert_eq!(empty.unwrap_err().rule, "missing");
    assert!(
        r.check_body(&Method::GET, &HeaderMap::new(), &Bytes::new())
            .is_ok()
    );
}

#[test]
fn json_bodies_are_strict_even_without_a_schema() {
    let route = RoutePattern::parse("/x").unwrap();
    let plain = Rules::new(&Input::for_route(&route));
    let json = headers(&[("content-type", "application/json")]);
    let dup = Bytes::from_static(br#"{"a":1,"a":2}"#);
    assert_eq!(
        plain
            .check_body(&Method::POST, &json, &dup)
            .unwrap_err()
            .rule,
        "duplicate-key"
    );
    let text = headers(&[("content-type", "text/plain")]);
    assert!(plain.check_body(&Method::POST, &text, &dup).is_ok());
}

#[test]
fn problems_name_field_and_rule_never_the_value() {
    let refusal = rules()
        .check_head(
            &[("handle", "EVIL<script>")],
            Some("q=SECRET%00"),
            &HeaderMap::new(),
        )
        .unwrap_err();
    let response = refusal.to_problem().into_response("0123");
    let text = String::from_utf8_lossy(response.body()).into_owned();
    assert_eq!(response.status(), 400);
    assert!(
        text.contains("\"field\":\"path.handle\"") && text.contains("\"rule\":\"pattern\""),
        "{text}"
    );
    assert!(!text.contains("EVIL") && !text.contains("script"), "{text}");
}

/// T10: a `Content-Type` is exactly one media type or the request is
/// refused; JSON or not is decided from type and subtype alone.
#[test]
fn t10_malformed_media_types_never_skip_strict_json() {
    let route = RoutePattern::parse("/x").unwrap();
    let plain = Rules::new(&Input::for_route(&route));
    let smuggled = Bytes::from_static(br#"{"role":"user","role":"admin","id":9007199254740993}"#);
    for bad in [
        "application/json;",
        "application/json; charset",
        "application/json;charset=utf-8;",
        "application/json, text/plain",
        "application/json; charset=utf-8; charset=latin1",
        "application/json; charset=\"utf-8",
        "application/json; charset=\"a\"b",
        "application/json;;charset=utf-8",
        "application/json; =utf-8",
        "application/json charset=utf-8",
        "application /json",
        "application/",
        "/json",
        "application/json/x",
        "application/j(son)",
        "",
    ] {
        let h = headers(&[("content-type", bad), ("content-length", "52")]);
        let refusal = plain.check_head(NO_PARAMS, None, &h).unwrap_err();
        assert_eq!(
            (refusal.part, refusal.field.as_str(), refusal.rule.as_str()),
            (Part::MediaType, "header.content-type", "malformed"),
            "{bad:?}"
        );
        assert_eq!(refusal.to_problem().status, 415, "{bad:?}");
        // Even if the head were let through, the body is not.
        let refusal = plain.check_body(&Method::POST, &h, &smuggled).unwrap_err();
        assert_eq!(refusal.rule, "malformed", "{bad:?}");
    }
    for good in [
        "application/json",
        "application/json;charset=utf-8",
        "application/json ; charset=utf-8",
        "Application/JSON;\tCharset=\"UTF-8\"",
        "application/json; charset=\"ut\\f-8\"; q=\"a;b,c\"",
        "application/problem+json",
        "application/vnd.api+json; ext=\"x\"",
    ] {
        let h = headers(&[("content-type", good), ("content-length", "52")]);
        assert!(plain.check_head(NO_PARAMS, None, &h).is_ok(), "{good:?}");
        let refusal = plain.check_body(&Method::POST, &h, &smuggled).unwrap_err();
        assert_eq!(refusal.rule, "duplicate-key", "{good:?}");
    }
    // JSON is UTF-8 whatever the function declares (T10): another charset
    // is refused even without `input.content_types`.
    for latin in [
        "application/json; charset=iso-8859-1",
        "application/problem+json; charset=latin1",
        "text/json; charset=\"UTF-16\"",
    ] {
        let h = headers(&[("content-type", latin), ("content-length", "52")]);
        let refusal = plain.check_head(NO_PARAMS, None, &h).unwrap_err();
        assert_eq!(
            (refusal.part, refusal.rule.as_str()),
            (Part::MediaType, "charset"),
            "{latin:?}"
        );
        assert_eq!(refusal.to_problem().status, 415, "{latin:?}");
        let refusal = plain.check_body(&Method::POST, &h, &smuggled).unwrap_err();
        assert_eq!(refusal.rule, "charset", "{latin:?}");
    }
    let text = headers(&[("content-type", "text/plain; charset=utf-8")]);
    assert!(plain.check_body(&Method::POST, &text, &smuggled).is_ok());
    let latin_text = headers(&[
        ("content-type", "text/plain; charset=iso-8859-1"),
        ("content-length", "52"),
    ]);
    assert!(plain.check_head(NO_PARAMS, None, &latin_text).is_ok());
    assert_eq!(
        parse_media_type("Application/Problem+JSON; Charset=\"UTF-8\""),
        Some(MediaType {
            essence: "application/problem+json".into(),
            charset: Some("utf-8".into()),
        })
    );
}

fn host_check(
    version: http::Version,
    target: &str,
    hosts: &[&str],
    allowed: Option<&[&str]>,
) -> Result<(), (String, String)> {
    let uri: http::Uri = target.parse().unwrap();
    let mut map = HeaderMap::new();
    for host in hosts {
        map.append(http::header::HOST, HeaderValue::from_str(host).unwrap());
    }
    let allowed: Option<Vec<String>> = allowed.map(|a| a.iter().map(|s| s.to_string()).collect());
    check_host(version, &uri, &map, allowed.as_deref())
        .map(drop)
        .map_err(|r| {
            assert_eq!(r.part, Part::Host);
            assert_eq!(r.to_problem().status, 400);
            (r.field, r.rule)
        })
}

/// T10, RFC 9112 §3.2: one valid `Host` on HTTP/1.1, agreeing with an
/// absolute-form target, one of `hostnames` when that is set.
#[test]
fn t10_host_rules() {
    use http::Version as V;
    let ok = |target: &str, hosts: &[&str], allowed: Option<&[&str]>| {
        assert_eq!(
            host_check(V::HTTP_11, target, hosts, allowed),
            Ok(()),
            "{target} {hosts:?}"
        );
    };
    ok("/a", &["x"], None);
    ok("/a", &["API.Example.com:8443"], None);
    ok("/a", &["127.0.0.1"], None);
    ok("/a", &["[::1]:80"], None);
    ok("/a", &["api.example.com"], Some(&["api.example.com"]));
    ok("/a", &["API.EXAMPLE.COM:443"], Some(&["api.example.com"]));
    ok("/a", &["[0::1]"], Some(&["[::1]"]));
    ok("http://x/a", &["x"], None);
    ok("http://x:80/a", &["X"], Some(&["x"]));
    ok("https://x/a", &["x:443"], None);
    assert_eq!(host_check(V::HTTP_10, "/a", &[], None), Ok(()));
    assert_eq!(
        host_check(V::HTTP_10, "http://x/a", &[], Some(&["x"])),
        Ok(())
    );

    let refused = |field: &str, rule: &str| Err((field.to_string(), rule.to_string()));
    let check = |target: &str, hosts: &[&str], allowed: Option<&[&str]>| {
        host_check(V::HTTP_11, target, hosts, allowed)
    };
    assert_eq!(check("/a", &[], None), refused("header.host", "missing"));
    assert_eq!(
        check("http://x/a", &[], None),
        refused("header.host", "missing")
    );
    assert_eq!(
        check("/a", &["x", "x"], None),
        refused("header.host", "repeated")
    );
    assert_eq!(
        check("/a", &["x", "y"], None),
        refused("header.host", "repeated")
    );
    for bad in [
        "",
        "x y",
        "x,y",
        "a@x",
        "x/y",
        "x?y",
        "x#y",
        "http://x",
        "x:",
        "x:0",
        "x:+80",
        "x:99999",
        "x:80:81",
        "x:8a",
        "%78",
        "x.",
        "a..b",
        "[::1",
        "::1",
        "[fe80::1%25eth0]",
        "[v7.x]",
        "é",
        "x\ty",
    ] {
        let Ok(value) = HeaderValue::from_str(bad) else {
            continue;
        };
        let uri: http::Uri = "/a".parse().unwrap();
        let mut map = HeaderMap::new();
        map.insert(http::header::HOST, value);
        let refusal = check_host(V::HTTP_11, &uri, &map, None).unwrap_err();
        assert_eq!(
            (refusal.field.as_str(), refusal.rule.as_str()),
            ("header.host", "invalid"),
            "{bad:?}"
        );
    }
    assert_eq!(
        check("http://y/a", &["x"], None),
        refused("target", "mismatch")
    );
    assert_eq!(
        check("http://x:8080/a", &["x"], None),
        refused("target", "mismatch")
    );
    assert_eq!(
        check("https://x/a", &["x:80"], None),
        refused("target", "mismatch")
    );
    assert_eq!(
        check("http://a@x/a", &["x"], None),
        refused("target", "invalid")
    );
    assert_eq!(
        check("ftp://x/a", &["x"], None),
        refused("target", "invalid")
    );
    assert_eq!(
        check("/a", &["y"], Some(&["x"])),
        refused("header.host", "not-allowed")
    );
    assert_eq!(
        check("http://y/a", &["y"], Some(&["x"])),
        refused("header.host", "not-allowed")
    );
    assert_eq!(
        host_check(V::HTTP_10, "/a", &[], Some(&["x"])),
        refused("header.host", "missing")
    );
    assert_eq!(
        host_check(V::HTTP_10, "http://y/a", &[], Some(&["x"])),
        refused("header.host", "not-allowed")
    );
    // The problem names the rule, never the host.
    let refusal = check_host(
        V::HTTP_11,
        &"/a".parse().unwrap(),
        &headers(&[("host", "evil.example")]),
        Some(&["x".to_string()]),
    )
    .unwrap_err();
    let response = refusal.to_problem().into_response("0123");
    let text = String::from_utf8_lossy(response.body()).into_owned();
    assert!(
        text.contains("invalid-host") && !text.contains("evil"),
        "{text}"
    );
}

/// Characters that make paths and queries interesting.
fn hostile_text() -> impl Strategy<Value = String> {
    let alphabet: Vec<&str> = vec![
        "a",
        "Z",
        "0",
        "/",
        ".",
        "..",
        "%",
        "%2e",
        "%2f",
        "%5c",
        "%00",
        "%c0%ae",
        "%ff",
        "%25",
        "?",
        "&",
        "=",
        "+",
        "\\",
        "é",
        "\u{202e}",
        "%e2%80%ae",
        "~",
        ";",
        "@",
        "{",
        "}",
        "%zz",
    ];
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(alphabet), 0..24)
            .prop_map(|v| v.concat()),
        any::<String>(),
    ]
}

fn random_body() -> impl Strategy<Value = Vec<u8>> {
    let fragments: Vec<&str> = vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"a\"",
        "\"name\"",
        "\"tags\"",
        "1",
        "-1e400",
        "9007199254740993",
        "true",
        "null",
        "\"\\ud800\"",
        " ",
        "\"x\"",
    ];
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(fragments), 0..64)
            .prop_map(|v| v.concat().into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_never_panic(
        path in prop_oneof![hostile_text(), hostile_text().prop_map(|t| format!("users/{t}"))],
        query in hostile_text(),
        content_type in prop_oneof![Just("application/json"), Just("text/plain"), Just("a/b; charset=x"), Just(";;")],
        payload in random_body(),
    ) {
        let router = Router::new([
            (RoutePattern::parse("/users/{handle}").unwrap(), vec!["POST".to_string()]),
            (RoutePattern::parse("/users/me").unwrap(), vec!["GET".to_string()]),
            (RoutePattern::parse("/users/{handle}/{*rest}").unwrap(), vec!["POST".to_string()]),
        ]);
        let r = rules();
        let raw = format!("/{path}");
        let Ok(decoded) = decode_path(&raw) else { return Ok(()) };
        let segments: Vec<&str> = decoded.iter().map(|s| s.as_ref()).collect();
        for segment in &segments {
            prop_assert!(!segment.is_empty() && *segment != "." && *segment != "..");
            prop_assert!(!segment.contains(['/', '\\', '%', '\0']));
        }
        if let RouteMatch::Found { params, .. } = router.find("POST", &segments) {
            // A wildcard's tail is made of segments that passed the same
            // checks (T10): joining them by `/` adds nothing ambiguous.
            for (_, value) in &params {
                for segment in value.split('/') {
                    prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
                    prop_assert!(!segment.contains(['\\', '%', '\0']));
                }
            }
            let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_ref())).collect();
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(content_type) {
                h.insert(http::header::CONTENT_TYPE, v);
            }
            h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(payload.len()));
            if let Err(refusal) = r.check_head(&params, Some(&query), &h) {
                let field = refusal.field.as_str();
                prop_assert!(["path.handle", "query", "query.page", "query.q", "header.content-type"].contains(&field));
            }
            if let Err(refusal) = r.check_body(&Method::POST, &h, &Bytes::from(payload)) {
                prop_assert!(refusal.field.starts_with("body") || refusal.field == "header.content-type");
            }
        }
    }
}

/// T10 on HTTP/2 (T15): the host is `:authority` (the target's authority);
/// a `Host` beside it must agree, and `[app] hostnames` applies to it.
#[test]
fn t10_t15_h2_authority_is_the_host() {
    use http::Version as V;
    let refused = |field: &str, rule: &str| Err((field.to_string(), rule.to_string()));
    assert_eq!(
        host_check(V::HTTP_2, "https://x/a", &[], Some(&["x"])),
        Ok(())
    );
    assert_eq!(
        host_check(V::HTTP_2, "https://x/a", &["x:443"], None),
        Ok(())
    );
    assert_eq!(
        host_check(V::HTTP_2, "https://evil.example/a", &[], Some(&["x"])),
        refused("header.host", "not-allowed")
    );
    assert_eq!(
        host_check(V::HTTP_2, "https://x/a", &["evil.example"], None),
        refused("target", "mismatch")
    );
    assert_eq!(
        host_check(V::HTTP_2, "https://x/a", &["x", "x"], None),
        refused("header.host", "repeated")
    );
    // Neither `:authority` nor `Host`: no host at all.
    assert_eq!(
        host_check(V::HTTP_2, "/a", &[], None),
        refused("header.host", "missing")
    );
}

/// T10: what the function is told is the host in its one canonical
/// spelling, port included (issue 17 writes it without the formatter).
#[test]
fn the_accepted_host_is_canonical_t10() {
    let accepted = |host: &str| {
        let mut map = HeaderMap::new();
        map.append(http::header::HOST, HeaderValue::from_str(host).unwrap());
        check_host(http::Version::HTTP_11, &"/".parse().unwrap(), &map, None)
            .ok()
            .flatten()
    };
    for (given, canonical) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("127.0.0.1", "127.0.0.1"),
        ("API.Example.com:08080", "api.example.com:8080"),
        ("example.com:1", "example.com:1"),
        ("example.com:10", "example.com:10"),
        ("example.com:65535", "example.com:65535"),
        ("[0:0::1]:443", "[::1]:443"),
    ] {
        assert_eq!(accepted(given).as_deref(), Some(canonical), "{given}");
    }
    for refused in [
        "example.com:0",
        "example.com:65536",
        "127.000.0.1:80",
        "0x7f.0.0.1",
    ] {
        assert_eq!(accepted(refused), None, "{refused}");
    }
}
