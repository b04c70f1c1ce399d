//! Host rules (T10, RFC 9112 §3.2): an HTTP/1.1 request carries exactly one
//! `Host`, and it is a valid `uri-host [":" port]`; an absolute-form target's
//! authority agrees with it; with `[app] hostnames`, the host is one of
//! those. A request that names some other host, or names it ambiguously, is
//! refused before routing: whatever reads the host later (the function, a
//! cache, a log reader, a virtual-host split in front) reads the same one.
//!
//! The value is parsed by `http::uri::Authority`; on top of its grammar a
//! host must have the one canonical spelling of
//! [`bulkhead_manifest::hosts::canonical_host`], no userinfo and a port of
//! plain digits.

use bulkhead_manifest::hosts::canonical_host;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Uri, Version, header};

use super::{Part, Refusal, Rule};

/// A parsed host: canonical name and port, if one was given.
#[derive(Debug, PartialEq, Eq)]
struct Host {
    name: String,
    port: Option<u16>,
}

impl Host {
    /// `host[:port]` in its one canonical spelling.
    fn into_authority(self) -> String {
        let Some(port) = self.port else {
            return self.name;
        };
        // Without the formatter (issue 17: it was ~4 % of a refusal's CPU).
        let mut authority = self.name;
        authority.reserve(6);
        authority.push(':');
        let mut digits = [0u8; 5];
        let mut n = port;
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &digit in &digits[start..] {
            authority.push(char::from(digit));
        }
        authority
    }

    /// `Host` and an absolute-form target agree when they name the same
    /// host on the same port, an absent port meaning the scheme's default.
    fn agrees(&self, other: &Host, default_port: u16) -> bool {
        self.name == other.name
            && self.port.unwrap_or(default_port) == other.port.unwrap_or(default_port)
    }
}

/// `uri-host [":" port]`, or `None`.
fn parse(text: &str) -> Option<Host> {
    let authority: Authority = text.parse().ok()?;
    let whole = authority.as_str();
    // Userinfo is not part of `Host` (RFC 9112 §3.2), and `Authority`
    // would read past an `@`.
    if whole.contains('@') {
        return None;
    }
    let host = authority.host();
    let name = canonical_host(host)?;
    let rest = whole.get(host.len()..)?;
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        None => return None,
        // Digits only: `u16::from_str` (which `Authority` uses) also takes `+80`.
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(authority.port_u16().filter(|p| *p != 0)?)
        }
        Some(_) => return None,
    };
    Some(Host { name, port })
}

fn header_host(value: &HeaderValue) -> Option<Host> {
    parse(value.to_str().ok()?)
}

fn refuse(field: &str, rule: Rule) -> Refusal {
    Refusal::new(Part::Host, field, rule)
}

/// Check the request's `Host` and target authority; `allowed` is the
/// canonical `[app] hostnames` list, `None` for any host. Returns the host
/// accepted (an absolute-form target's, else `Host`'s) as canonical
/// `host[:port]`, `None` for an HTTP/1.0 request that names none: what the
/// function is told, so it sees exactly what was checked (T10).
pub fn check_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    allowed: Option<&[String]>,
) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(header::HOST).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(refuse("header.host", Rule::Repeated));
    }
    let from_header = match first {
        Some(value) => {
            Some(header_host(value).ok_or_else(|| refuse("header.host", Rule::InvalidHost))?)
        }
        // HTTP/1.0 may leave `Host` out (RFC 9112 §3.2); 1.1 may not.
        None if version == Version::HTTP_10 || version == Version::HTTP_09 => None,
        // HTTP/2 names the host in `:authority` (RFC 9113 §8.3.1), checked
        // below as the target's authority, like HTTP/1.1's absolute form.
        None if version == Version::HTTP_2 && uri.authority().is_some() => None,
        None => return Err(refuse("header.host", Rule::MissingHost)),
    };
    // Absolute form: `http://host/path`. A server must use its authority
    // (RFC 9112 §3.2.2); here it must also agree with `Host`, so nothing
    // downstream can be told a different host than the one checked.
    let from_target = match uri.authority() {
        Some(authority) => {
            let default_port = match uri.scheme_str() {
                Some("http") => 80,
                Some("https") => 443,
                _ => return Err(refuse("target", Rule::InvalidHost)),
            };
            let target =
                parse(authority.as_str()).ok_or_else(|| refuse("target", Rule::InvalidHost))?;
            if let Some(host) = &from_header
                && !host.agrees(&target, default_port)
            {
                return Err(refuse("target", Rule::HostMismatch));
            }
            Some(target)
        }
        None => None,
    };
    let accepted = from_target.or(from_header);
    let Some(allowed) = allowed else {
        return Ok(accepted.map(Host::into_authority));
    };
    let Some(host) = accepted else {
        // An HTTP/1.0 request that names no host cannot be one of ours.
        return Err(refuse("header.host", Rule::MissingHost));
    };
    if !allowed.contains(&host.name) {
        return Err(refuse("header.host", Rule::HostNotAllowed));
    }
    Ok(Some(host.into_authority()))
}
