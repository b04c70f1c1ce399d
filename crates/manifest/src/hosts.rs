//! `[app] hostnames`: the names an app answers to (T10, RFC 9112 §3.2).
//! The manifest and the gateway's Host check share one canonical form, so
//! an entry and a request's host are equal exactly when they name the same
//! host, however either was spelled.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name in text form (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;

/// The canonical form of the host part of an authority (what
/// `http::uri::Authority::host()` gives): an IPv6 literal `[…]` or an IPv4
/// address re-written from the parsed address, a name in lowercase. `None`
/// for anything else a parser might read differently: percent-escapes,
/// sub-delimiters (`,` `;` `!` …), zone IDs, IPvFuture literals, empty
/// labels (including a trailing dot), over-long names or labels, and names
/// ending in a number that are not a plain dotted quad.
pub fn canonical_host(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[') {
        let ip: Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some(format!("[{ip}]"));
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        // std parses only the canonical dotted quad (no leading zeros, no
        // other radix): the text is already its one spelling, and copying
        // it skips `Display` (issue 17: a share of every request's Host check).
        return Some(host.to_string());
    }
    // A browser reads a name whose last label is a number (`2130706433`,
    // `0x7f.0.0.1`, `0177.1`, `127.000.000.001`) as an IPv4 address (WHATWG
    // URL); only the dotted quad std parses above (no leading zeros) is
    // one. Any other is read two ways: refused (T10).
    let last = host.rsplit('.').next().unwrap_or(host);
    if (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        || last.starts_with("0x")
        || last.starts_with("0X")
    {
        return None;
    }
    let is_name = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    is_name.then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_host() {
        assert_eq!(
            canonical_host("API.Example.com").unwrap(),
            "api.example.com"
        );
        assert_eq!(canonical_host("localhost").unwrap(), "localhost");
        assert_eq!(canonical_host("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(canonical_host("123.Example.x1").unwrap(), "123.example.x1");
        assert_eq!(canonical_host("0x.example").unwrap(), "0x.example");
        assert_eq!(canonical_host("[0:0::1]").unwrap(), "[::1]");
        assert_eq!(
            canonical_host("[::FFFF:1.2.3.4]").unwrap(),
            "[::ffff:1.2.3.4]"
        );
        for bad in [
            "",
            "example.com.",
            "a..b",
            "ex%61mple.com",
            "a,b",
            "a;b",
            "a b",
            "user@host",
            "host:80",
            "[fe80::1%25eth0]",
            "[v1.x]",
            "[::1",
            "::1",
            "é.example",
            &"a".repeat(64),
            &["a"; 130].join("."),
            // What a browser reads as 127.0.0.1 (WHATWG URL: a name ending
            // in a number is an IPv4 address), and other numeric endings.
            "2130706433",
            "0x7f.0.0.1",
            "127.000.000.001",
            "0177.1",
            "127.1",
            "0X7F",
            "a.0x",
            "example.123",
            "1.2.3.4.5",
        ] {
            assert_eq!(canonical_host(bad), None, "{bad:?}");
        }
    }

    fn app(app_keys: &str) -> Result<crate::App, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let manifest = format!(
            "[app]\nname = \"hosted\"\n{app_keys}\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\n"
        );
        crate::parse(
            dir.path(),
            &dir.path().join("bulkhead.toml"),
            &manifest,
            "dev",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn hostnames_are_optional_and_checked_with_their_line() {
        assert_eq!(app("").unwrap().hostnames, None);
        let app_ =
            app("hostnames = [\"API.example.com\", \"[::1]\", \"api.example.com\"]").unwrap();
        assert_eq!(
            app_.hostnames.unwrap(),
            ["api.example.com".to_string(), "[::1]".to_string()]
        );
        for (value, expected) in [
            (
                "[\"api.example.com:8080\"]",
                "`api.example.com:8080` is not a host name",
            ),
            ("[\"https://api.example.com\"]", "is not a host name"),
            ("[\"*.example.com\"]", "is not a host name"),
            ("[\"2130706433\"]", "`2130706433` is not a host name"),
            ("[\"0x7f.0.0.1\"]", "is not a host name"),
            ("[]", "`hostnames` is empty"),
        ] {
            let err = app(&format!("hostnames = {value}")).unwrap_err();
            assert!(err.contains("bulkhead.toml:3:"), "{value}: {err}");
            assert!(err.contains(expected), "{value}: {err}");
        }
        let err = app("hostname = [\"a\"]").unwrap_err();
        assert!(err.contains("unknown field `hostname`"), "{err}");
    }
}
