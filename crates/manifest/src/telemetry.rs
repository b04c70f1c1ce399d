//! `[telemetry]`: where request spans are exported over OTLP/HTTP (T08).
//! The endpoint is checked like any other value: http or https, a host, an
//! optional port and path, and never credentials, a query or a fragment.

use toml::Spanned;

use crate::Telemetry;
use crate::grants::{HostPattern, parse_origin};
use crate::problem::Collector;
use crate::raw::RawTelemetry;

pub(crate) fn resolve(
    out: &mut Collector<'_>,
    app_name: &str,
    raw: &RawTelemetry,
) -> Option<Telemetry> {
    let Some(endpoint) = &raw.otlp_endpoint else {
        let set = raw
            .service_name
            .as_ref()
            .map(|v| ("service_name", v.span()))
            .or_else(|| {
                raw.sample_ratio
                    .as_ref()
                    .map(|v| ("sample_ratio", v.span()))
            });
        if let Some((key, span)) = set {
            out.at(
                Some(span),
                format!("`[telemetry]` sets `{key}` but no `otlp_endpoint`; add one, like `otlp_endpoint = \"http://127.0.0.1:4318\"`"),
            );
        }
        return None;
    };
    let before = out.problems.len();
    let otlp_endpoint = match parse_endpoint(endpoint.get_ref()) {
        Ok(url) => url,
        Err(why) => {
            out.at(
                Some(endpoint.span()),
                // The value is not echoed: it may hold a credential.
                format!(
                    "`otlp_endpoint` {why}; write the collector's OTLP/HTTP address, like `http://127.0.0.1:4318`"
                ),
            );
            String::new()
        }
    };
    let service_name = match &raw.service_name {
        Some(name) if !valid_service_name(name.get_ref()) => {
            out.at(
                Some(name.span()),
                "`service_name` must be 1 to 63 letters, digits, `-`, `_` or `.`, like `conference-api`",
            );
            String::new()
        }
        Some(name) => name.get_ref().clone(),
        None => app_name.to_string(),
    };
    let sample_ratio = sample_ratio(out, raw.sample_ratio.as_ref());
    (out.problems.len() == before).then(|| Telemetry {
        otlp_endpoint,
        service_name,
        sample_ratio,
        location: Some(out.location(endpoint.span())),
    })
}

fn sample_ratio(out: &mut Collector<'_>, value: Option<&Spanned<f64>>) -> f64 {
    match value {
        None => 1.0,
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            out.at(
                Some(v.span()),
                "`sample_ratio` must be between 0.0 (no new trace recorded) and 1.0 (every one)",
            );
            1.0
        }
    }
}

/// `scheme://host[:port][/path]`, returned without a trailing `/`.
fn parse_endpoint(text: &str) -> Result<String, &'static str> {
    let (_, rest) = text.split_once("://").ok_or("has no scheme")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(
            "must not hold credentials; send them as a header through OTEL_EXPORTER_OTLP_HEADERS instead",
        );
    }
    let origin = &text[..text.len() - path.len()];
    let (_, host, _) = parse_origin(origin)?;
    if matches!(host, HostPattern::Subdomains(_)) {
        return Err("must name one host, not a wildcard");
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~'));
    if !path_ok {
        return Err("may have a path but no query, fragment or unusual characters");
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use crate::{App, parse};

    /// A manifest with one function and `extra` from line 9 on.
    fn app(extra: &str, env: &str) -> Result<App, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let manifest = format!(
            "[app]\nname = \"traced\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\n\n{extra}"
        );
        parse(
            dir.path(),
            &dir.path().join("bulkhead.toml"),
            &manifest,
            env,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn an_endpoint_turns_export_on_with_defaults() {
        let app = app(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\n",
            "dev",
        )
        .unwrap();
        let telemetry = app.telemetry.unwrap();
        assert_eq!(telemetry.otlp_endpoint, "http://127.0.0.1:4318");
        assert_eq!(telemetry.traces_url(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(telemetry.service_name, "traced");
        assert_eq!(telemetry.sample_ratio, 1.0);
        assert_eq!(telemetry.location, Some((10, 17)));
        assert!(self::app("", "dev").unwrap().telemetry.is_none());
    }

    #[test]
    fn environments_overlay_telemetry() {
        let text = "[telemetry]\nservice_name = \"api\"\nsample_ratio = 0.25\n\n\
                    [env.prod.telemetry]\notlp_endpoint = \"https://otel.example.com/otlp\"\n";
        let prod = app(text, "prod").unwrap().telemetry.unwrap();
        assert_eq!(prod.traces_url(), "https://otel.example.com/otlp/v1/traces");
        assert_eq!(prod.service_name, "api");
        assert_eq!(prod.sample_ratio, 0.25);
        let dev = app(text, "dev").unwrap_err();
        assert!(dev.contains("bulkhead.toml:10:16"), "{dev}");
        assert!(dev.contains("no `otlp_endpoint`"), "{dev}");
    }

    #[test]
    fn bad_settings_name_the_line_and_what_is_valid() {
        for (value, expected) in [
            ("\"ftp://collector:4318\"", "must use http or https"),
            ("\"collector:4318\"", "has no scheme"),
            (
                "\"http://user:secret@collector:4318\"",
                "must not hold credentials",
            ),
            ("\"http://collector:4318/v1?token=x\"", "no query"),
            ("\"http://collector:99999\"", "invalid port"),
            ("\"http://*.example.com\"", "not a wildcard"),
            ("\"http://\"", "invalid host name"),
        ] {
            let err = app(&format!("[telemetry]\notlp_endpoint = {value}\n"), "dev").unwrap_err();
            assert!(err.contains("bulkhead.toml:10:17"), "{value}: {err}");
            assert!(err.contains(expected), "{value}: {err}");
            assert!(!err.contains("secret"), "the value is not echoed: {err}");
        }
        let err = app(
            "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = 1.5\nservice_name = \"no spaces\"\n",
            "dev",
        )
        .unwrap_err();
        assert!(
            err.contains("bulkhead.toml:11:16: `sample_ratio` must be between"),
            "{err}"
        );
        assert!(
            err.contains("bulkhead.toml:12:16: `service_name` must be"),
            "{err}"
        );
        let err = app("[telemetry]\nendpoint = \"http://c:4318\"\n", "dev").unwrap_err();
        assert!(err.contains("unknown field `endpoint`"), "{err}");
    }
}
