//! The gateway's own cookies (issue 15, T12). All carry the `__Host-`
//! prefix: a browser keeps them only when set `Secure`, with `Path=/` and
//! without `Domain`, so a sibling subdomain can neither set nor overwrite
//! them (cookie tossing). All are `HttpOnly` (no script reads them) and
//! `SameSite=Lax` (not sent on cross-site subrequests or POSTs).

use http::{HeaderMap, HeaderValue, header};

/// The signed-in session: an opaque `bhs_…` token (the store keeps only
/// its SHA-256).
pub const SESSION: &str = "__Host-bulkhead-session";
// A sign-in under way is `__Host-bulkhead-signin-<id>`: see `signins`.

/// Longest cookie value looked at (the session's).
const MAX_VALUE: usize = 512;
/// Most cookies of one name prefix looked at in a request.
const MAX_WITH_PREFIX: usize = 32;

/// `NAME=VALUE; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age=SECONDS`.
pub fn set(name: &str, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age_secs}"
    ))
    .ok()
}

/// Tells the browser to drop cookie `name`.
pub fn clear(name: &str) -> Option<HeaderValue> {
    set(name, "", 0)
}

/// The value of cookie `name` across every `Cookie` header: `Ok(None)` if
/// absent, `Err` if sent twice (ambiguous: refused, never guessed) or too
/// long.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, &'static str> {
    get_limited(headers, name, MAX_VALUE)
}

/// [`get`] with values up to `max` bytes.
pub fn get_limited<'h>(
    headers: &'h HeaderMap,
    name: &str,
    max: usize,
) -> Result<Option<&'h str>, &'static str> {
    let mut found = None;
    for (key, value) in pairs(headers) {
        if key != name {
            continue;
        }
        if found.is_some() {
            return Err("the cookie is sent more than once");
        }
        if value.len() > max {
            return Err("cookie value too long");
        }
        found = Some(value);
    }
    Ok(found)
}

/// The (name, value) of the cookies whose name starts with `prefix`, at
/// most [`MAX_WITH_PREFIX`] of them.
pub fn with_prefix<'h>(headers: &'h HeaderMap, prefix: &str) -> Vec<(&'h str, &'h str)> {
    pairs(headers)
        .filter(|(key, _)| key.starts_with(prefix))
        .take(MAX_WITH_PREFIX)
        .collect()
}

/// The `name=value` pairs of every `Cookie` field, read as bytes: a pair
/// that is not UTF-8 (`lang=é`, which a function, a sibling site or the
/// page's own script can set) is skipped alone, never the whole field, so
/// it cannot hide the session or the sign-in cookie beside it (T12, T01;
/// outside review of issue 15: one such cookie locked a browser out of
/// signing in and out). A skipped pair is never echoed anywhere.
fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok())
        .filter_map(|pair| pair.trim().split_once('='))
}

/// The session token of the session cookie, if one is sent.
pub fn session(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    match get(headers, SESSION)? {
        None | Some("") => Ok(None),
        Some(token) if token.starts_with("bhs_") => Ok(Some(token)),
        Some(_) => Err("session cookie does not hold a session token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for c in cookies {
            map.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        map
    }

    #[test]
    fn reads_one_and_refuses_two() {
        let h = headers(&["a=1; __Host-bulkhead-session=bhs_x; b=2"]);
        assert_eq!(session(&h), Ok(Some("bhs_x")));
        let h = headers(&[
            "__Host-bulkhead-session=bhs_x",
            "__Host-bulkhead-session=bhs_y",
        ]);
        assert!(session(&h).is_err());
        let h = headers(&["__Host-bulkhead-session=bhk_x"]);
        assert!(session(&h).is_err());
        assert_eq!(session(&headers(&["other=1"])), Ok(None));
    }

    /// T12, T01: a non-UTF-8 pair is skipped alone, wherever it sits.
    #[test]
    fn a_non_utf8_cookie_hides_nothing_t12() {
        let field = |bytes: &[u8]| {
            let mut map = HeaderMap::new();
            map.append(header::COOKIE, HeaderValue::from_bytes(bytes).unwrap());
            map
        };
        for line in [
            &b"__Host-bulkhead-session=bhs_x; lang=\xc3\xa9"[..],
            b"lang=\xc3\xa9; __Host-bulkhead-session=bhs_x",
            b"a=\xff\xfe; __Host-bulkhead-session=bhs_x; b=\xc3",
        ] {
            let h = field(line);
            assert_eq!(session(&h), Ok(Some("bhs_x")));
        }
        let h = field(b"lang=\xc3\xa9; __Host-bulkhead-signin-AB=v");
        assert_eq!(
            with_prefix(&h, "__Host-bulkhead-signin-"),
            [("__Host-bulkhead-signin-AB", "v")]
        );
    }
}
