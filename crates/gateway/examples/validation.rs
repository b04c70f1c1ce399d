//! Validation cost (T10): how long the gateway's input checks take for a
//! typical request — a path parameter, two query parameters and a 1 KiB
//! JSON body checked by a JSON Schema. Run by `bench/validation` (release
//! build); prints microseconds per validation. Target: under 20 µs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bulkhead_gateway::validate::{Rules, decode_path};
use bulkhead_manifest::{BodySchema, Input, Param, Pattern, RoutePattern};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::json;

fn schema() -> serde_json::Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["name", "email", "talks"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "email": {"type": "string", "format": "email"},
            "company": {"type": "string", "maxLength": 64},
            "newsletter": {"type": "boolean"},
            "talks": {
                "type": "array",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "required": ["id", "title"],
                    "additionalProperties": false,
                    "properties": {
                        "id": {"type": "string", "pattern": "^[a-z0-9-]{1,32}$"},
                        "title": {"type": "string", "maxLength": 120},
                        "rating": {"type": "integer", "minimum": 1, "maximum": 5}
                    }
                }
            }
        }
    })
}

/// A registration of about 1 KiB.
fn body() -> Bytes {
    let talks: Vec<_> = (0..11)
        .map(|i| {
            json!({
                "id": format!("talk-{i:02}"),
                "title": format!("Serverless security, part {i}: what we learned"),
                "rating": 1 + i % 5,
            })
        })
        .collect();
    let value = json!({
        "name": "Ada Lovelace",
        "email": "ada@example.org",
        "company": "Analytical Engines Ltd",
        "newsletter": true,
        "talks": talks,
    });
    Bytes::from(value.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let route = RoutePattern::parse("/register/{handle}")?;
    let mut input = Input::for_route(&route);
    input.path = vec![Param {
        name: "handle".into(),
        pattern: Pattern::new("[a-z0-9-]{1,39}")?,
    }];
    input.query = vec![
        Param {
            name: "lang".into(),
            pattern: Pattern::new("[a-z]{2}")?,
        },
        Param {
            name: "ref".into(),
            pattern: Pattern::new("[A-Za-z0-9]{1,16}")?,
        },
    ];
    input.content_types = Some(vec!["application/json".into()]);
    input.body_schema = Some(BodySchema::compile("register.json".into(), &schema())?);
    let rules = Rules::new(&input);

    let body = body();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let method = Method::POST;

    let validate_once = || -> bool {
        let Ok(segments) = decode_path(black_box("/register/ada-lovelace")) else {
            return false;
        };
        let params = [("handle", segments[1].as_ref())];
        rules
            .check_head(&params, black_box(Some("lang=en&ref=conf2026")), &headers)
            .and_then(|()| rules.check_body(&method, &headers, black_box(&body)))
            .is_ok()
    };
    assert!(validate_once(), "the sample request must pass");

    // Warm up, then take the median of several timed rounds.
    let rounds = 15;
    let per_round = 2_000;
    for _ in 0..per_round {
        black_box(validate_once());
    }
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_round {
                black_box(validate_once());
            }
            started.elapsed() / per_round
        })
        .collect();
    samples.sort();
    let median = samples[rounds / 2];
    let best = samples[0];
    println!(
        "validation of a {}-byte JSON body with a schema, plus path and query: median {:.2} µs, best {:.2} µs per request ({rounds} rounds of {per_round})",
        body.len(),
        median.as_secs_f64() * 1e6,
        best.as_secs_f64() * 1e6,
    );
    Ok(())
}
