//! Path and query decoding (T10): every component is percent-decoded exactly
//! once, then checked. Anything ambiguous is refused, never rewritten: a
//! request whose path would mean something else after another decode, a
//! normalisation or a different parser's reading never reaches a function.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use super::Rule;

/// RFC 3986 `pchar` without `%` (checked separately): unreserved,
/// sub-delims, `:` and `@`.
fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// RFC 3986 `query` (`pchar`, `/` and `?`), plus `[` and `]`, which
/// clients commonly leave unencoded (`a[]=1`, IPv6 literals in URLs).
fn query_byte(b: u8) -> bool {
    path_byte(b) || b"/?[]".contains(&b)
}

/// Decode one path segment or query name or value, once. Raw bytes must be
/// what RFC 3986 allows there, every `%` must start a two-digit escape, the
/// decoded bytes must be UTF-8 (which rules out overlong encodings and
/// surrogates) without control or invisible characters.
fn decode(raw: &str, allowed: fn(u8) -> bool) -> Result<Cow<'_, str>, Rule> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let escape = bytes.get(i + 1..i + 3).ok_or(Rule::BadEscape)?;
                if !escape.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Rule::BadEscape);
                }
                i += 3;
            }
            b if allowed(b) => i += 1,
            _ => return Err(Rule::RawCharacter),
        }
    }
    let text = match Cow::from(percent_decode(bytes)) {
        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|_| Rule::InvalidUtf8)?),
        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).map_err(|_| Rule::InvalidUtf8)?),
    };
    check_characters(&text)?;
    Ok(text)
}

/// Control characters (C0, DEL, C1) and characters that render as nothing
/// or reorder text (bidi controls, zero-width and format characters, line
/// and paragraph separators, variation selectors, tags): data with these in
/// it can look like something else to a person or a log reader (T07).
pub(super) fn check_characters(text: &str) -> Result<(), Rule> {
    for c in text.chars() {
        if c.is_control() {
            return Err(Rule::ControlCharacter);
        }
        if is_invisible(c) {
            return Err(Rule::InvisibleCharacter);
        }
    }
    Ok(())
}

fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// The request path (`uri.path()`, as sent) as decoded segments. The root
/// `/` has none. Refused: anything but origin form, empty segments (`//`, a
/// trailing `/`), `.` and `..` however encoded, encoded `/` or `\`, a `%`
/// left after decoding (double encoding), and everything [`decode`] refuses.
pub fn decode_path(raw: &str) -> Result<Vec<Cow<'_, str>>, Rule> {
    let rest = raw.strip_prefix('/').ok_or(Rule::NotOriginForm)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/')
        .map(|segment| {
            if segment.is_empty() {
                return Err(Rule::EmptySegment);
            }
            let decoded = decode(segment, path_byte)?;
            if decoded == "." || decoded == ".." {
                Err(Rule::DotSegment)
            } else if decoded.contains(['/', '\\']) {
                Err(Rule::EncodedSlash)
            } else if decoded.contains('%') {
                Err(Rule::DoubleEncoding)
            } else {
                Ok(decoded)
            }
        })
        .collect()
}

/// One `name=value` pair of a query string, both decoded once. A `+` is a
/// plus sign (RFC 3986), not a space: send a space as `%20`.
pub struct QueryPair<'q> {
    pub name: Result<Cow<'q, str>, Rule>,
    pub value: Result<Cow<'q, str>, Rule>,
}

/// Most pairs one query string may carry.
pub const MAX_QUERY_PAIRS: usize = 64;

/// Split a raw query string into decoded pairs. An empty pair (`a=1&&b=2`,
/// a trailing `&`) or more than [`MAX_QUERY_PAIRS`] is refused outright; a
/// pair without `=` has the empty value.
pub fn query_pairs(raw: &str) -> Result<Vec<QueryPair<'_>>, Rule> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let mut pairs = Vec::new();
    for pair in raw.split('&') {
        if pair.is_empty() {
            return Err(Rule::EmptyParameter);
        }
        if pairs.len() == MAX_QUERY_PAIRS {
            return Err(Rule::TooMany);
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push(QueryPair {
            name: decode(name, query_byte).and_then(|n| {
                if n.is_empty() {
                    Err(Rule::EmptyParameter)
                } else {
                    Ok(n)
                }
            }),
            value: decode(value, query_byte),
        });
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<Vec<String>, Rule> {
        decode_path(raw).map(|v| v.into_iter().map(Cow::into_owned).collect())
    }

    #[test]
    fn decodes_once() {
        assert_eq!(path("/"), Ok(vec![]));
        assert_eq!(path("/a/b"), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(path("/h%61llo"), Ok(vec!["hallo".into()]));
        assert_eq!(path("/caf%C3%A9"), Ok(vec!["café".into()]));
        assert_eq!(path("/a+b"), Ok(vec!["a+b".into()]));
    }

    #[test]
    fn refuses_what_is_ambiguous() {
        for (raw, rule) in [
            ("", Rule::NotOriginForm),
            ("*", Rule::NotOriginForm),
            ("/a//b", Rule::EmptySegment),
            ("/a/", Rule::EmptySegment),
            ("/..", Rule::DotSegment),
            ("/a/./b", Rule::DotSegment),
            ("/%2e%2e", Rule::DotSegment),
            ("/%2E", Rule::DotSegment),
            ("/.%2e", Rule::DotSegment),
            ("/..%2f", Rule::EncodedSlash),
            ("/a%5cb", Rule::EncodedSlash),
            ("/%252e%252e", Rule::DoubleEncoding),
            ("/%25", Rule::DoubleEncoding),
            ("/%c0%ae%c0%ae", Rule::InvalidUtf8),
            ("/%e0%80%ae", Rule::InvalidUtf8),
            ("/%ed%a0%80", Rule::InvalidUtf8),
            ("/%ff", Rule::InvalidUtf8),
            ("/a%00", Rule::ControlCharacter),
            ("/a%0d%0a", Rule::ControlCharacter),
            ("/a%7f", Rule::ControlCharacter),
            ("/a%c2%85", Rule::ControlCharacter),
            ("/a%e2%80%ae", Rule::InvisibleCharacter),
            ("/a%e2%80%8b", Rule::InvisibleCharacter),
            ("/a%ef%bb%bf", Rule::InvisibleCharacter),
            ("/a%", Rule::BadEscape),
            ("/a%2", Rule::BadEscape),
            ("/a%zz", Rule::BadEscape),
            ("/a\\b", Rule::RawCharacter),
            ("/a b", Rule::RawCharacter),
            ("/é", Rule::RawCharacter),
            ("/a?b", Rule::RawCharacter),
        ] {
            assert_eq!(path(raw), Err(rule), "{raw:?}");
        }
    }

    #[test]
    fn query_pairs_decode_once() {
        let pairs = query_pairs("a=1&b=x%20y&c&d=%2B+").unwrap();
        let got: Vec<(String, String)> = pairs
            .into_iter()
            .map(|p| (p.name.unwrap().into_owned(), p.value.unwrap().into_owned()))
            .collect();
        assert_eq!(
            got,
            [("a", "1"), ("b", "x y"), ("c", ""), ("d", "++")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert!(matches!(query_pairs("a=1&&b=2"), Err(Rule::EmptyParameter)));
        assert!(matches!(query_pairs("a=1&"), Err(Rule::EmptyParameter)));
        let many = vec!["a=1"; MAX_QUERY_PAIRS + 1].join("&");
        assert!(matches!(query_pairs(&many), Err(Rule::TooMany)));
        let bad = query_pairs("a=%00").unwrap();
        assert_eq!(bad[0].value.as_ref().err(), Some(&Rule::ControlCharacter));
        let empty_name = query_pairs("=1").unwrap();
        assert_eq!(
            empty_name[0].name.as_ref().err(),
            Some(&Rule::EmptyParameter)
        );
    }
}
