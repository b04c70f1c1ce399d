//! Capability grants (T16): a function may use nothing the manifest does
//! not name. This module parses and checks each grant; the runtime enforces
//! them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Everything one function is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Outbound HTTP destinations (T17).
    pub outbound: Vec<OutboundRule>,
    /// Key-value stores by name (T13/T16): `kv = { NAME = "read" }`.
    pub kv: BTreeMap<String, StoreAccess>,
    /// SQL stores by name (T13/T16).
    pub sql: BTreeMap<String, SqlGrant>,
    /// Secrets this function may read through `wasi:config` (T15).
    pub secrets: Vec<String>,
    /// `[config]` keys this function may read through `wasi:config`.
    pub config: Vec<String>,
    /// Queues this function may send to, with its cap per call (issue 18).
    pub queues: BTreeMap<String, crate::queues::QueueGrant>,
}

impl Grants {
    /// Every store grant, key-value then SQL, with its access.
    pub fn stores(&self) -> impl Iterator<Item = (&str, StoreAccess)> {
        let kv = self
            .kv
            .iter()
            .map(|(name, access)| (name.as_str(), *access));
        let sql = self.sql.iter().map(|(name, g)| (name.as_str(), g.access));
        kv.chain(sql)
    }
}

/// What a store grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreAccess {
    Read,
    ReadWrite,
}

impl StoreAccess {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "read-write" => Some(Self::ReadWrite),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadWrite => "read-write",
        }
    }

    pub fn can_write(self) -> bool {
        self == Self::ReadWrite
    }
}

/// One `sql = { NAME = ... }` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlGrant {
    pub access: StoreAccess,
    /// When set, the only statements this function may run (exact text).
    pub statements: Option<Vec<String>>,
}

/// One `scheme://host[:port]` entry of `outbound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// A DNS name, lowercase.
    Name(String),
    /// `*.example.com`: any name below `example.com` (not itself).
    Subdomains(String),
    /// An IP address written out: the only way to reach a private,
    /// loopback or link-local address.
    Ip(IpAddr),
}

impl HostPattern {
    /// `localhost` exactly: in `dev` this machine's loopback on the granted
    /// port, reached without DNS; refused in every other environment (T17).
    pub fn is_localhost(&self) -> bool {
        matches!(self, Self::Name(name) if name == "localhost")
    }
}

impl OutboundRule {
    /// Parse `https://api.github.com`, `http://10.0.0.5:8080` or
    /// `https://*.example.com:8443`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| {
            format!("outbound entry `{text}` {why}; write `https://host` or `https://host:port`")
        };
        let (scheme, host, port) = parse_origin(text).map_err(invalid)?;
        Ok(Self { scheme, host, port })
    }

    /// Does this rule allow a request to `scheme://host:port`? `host` is
    /// as the guest wrote it (lowercased here).
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || port != self.port {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        match &self.host {
            HostPattern::Name(name) => host == *name,
            HostPattern::Subdomains(parent) => host
                .strip_suffix(parent.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
            HostPattern::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
        }
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match &self.host {
            HostPattern::Name(n) => n.clone(),
            HostPattern::Subdomains(p) => format!("*.{p}"),
            HostPattern::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            HostPattern::Ip(ip) => ip.to_string(),
        };
        write!(f, "{}://{host}:{}", self.scheme.as_str(), self.port)
    }
}

/// Parse `scheme://host[:port]` (a trailing `/` at most): the scheme,
/// the host (a DNS name, a leading-`*.` wildcard or an IP address) and the
/// port, defaulted from the scheme. The error says what is wrong with it.
pub fn parse_origin(text: &str) -> Result<(Scheme, HostPattern, u16), &'static str> {
    let (scheme, authority) = text.split_once("://").ok_or("has no scheme")?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err("must use http or https"),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains(['/', '?', '#', '@']) {
        return Err("may name only a scheme, a host and a port (no path, query or user)");
    }
    let (host, port) = split_host_port(authority).ok_or("has an invalid port")?;
    let port = port.unwrap_or(scheme.default_port());
    let host = if let Some(ip) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        HostPattern::Ip(ip.parse().map_err(|_| "has an invalid IPv6 address")?)
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        HostPattern::Ip(ip)
    } else if let Some(parent) = host.strip_prefix("*.") {
        if !valid_dns_name(parent) || !parent.contains('.') {
            return Err(
                "has an invalid wildcard; only a leading `*.` below a domain like `*.example.com` is allowed",
            );
        }
        HostPattern::Subdomains(parent.to_ascii_lowercase())
    } else if valid_dns_name(host) {
        HostPattern::Name(host.to_ascii_lowercase())
    } else {
        return Err("has an invalid host name");
    };
    Ok((scheme, host, port))
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok().filter(|p| *p != 0)?))),
        None => Some((authority, None)),
    }
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches_entries() {
        let github = OutboundRule::parse("https://api.github.com").unwrap();
        assert!(github.allows(Scheme::Https, "API.GitHub.com", 443));
        assert!(!github.allows(Scheme::Http, "api.github.com", 80));
        assert!(!github.allows(Scheme::Https, "api.github.com.evil.net", 443));
        assert!(!github.allows(Scheme::Https, "api.github.com", 8443));

        let wildcard = OutboundRule::parse("https://*.example.com:8443").unwrap();
        assert!(wildcard.allows(Scheme::Https, "a.b.example.com", 8443));
        assert!(!wildcard.allows(Scheme::Https, "example.com", 8443));
        assert!(!wildcard.allows(Scheme::Https, "badexample.com", 8443));

        let named = OutboundRule::parse("http://LocalHost:3000").unwrap();
        assert!(named.host.is_localhost());
        assert!(named.allows(Scheme::Http, "localhost", 3000));
        assert!(!named.allows(Scheme::Http, "localhost", 3001));
        assert!(!named.allows(Scheme::Http, "127.0.0.1", 3000));
        for other in [
            "http://localhost.localdomain:3000",
            "http://a.localhost:3000",
        ] {
            assert!(!OutboundRule::parse(other).unwrap().host.is_localhost());
        }

        let local = OutboundRule::parse("http://127.0.0.1:8080").unwrap();
        assert!(local.allows(Scheme::Http, "127.0.0.1", 8080));
        assert!(!local.allows(Scheme::Http, "localhost", 8080));
        let v6 = OutboundRule::parse("http://[::1]:9000").unwrap();
        assert!(v6.allows(Scheme::Http, "[::1]", 9000));
    }

    /// T17/T19: `localhost` is a grant only in `dev`; elsewhere the
    /// manifest is refused at its line with the reason and the fix.
    #[test]
    fn localhost_is_granted_only_in_dev_t17() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let path = dir.path().join("bulkhead.toml");
        let source = "[app]\nname = \"t\"\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/\"\nauth = \"public\"\ngrants = { outbound = [\"http://localhost:3000\"] }\n";
        let app = crate::parse(dir.path(), &path, source, "dev").unwrap();
        assert!(app.functions[0].grants.outbound[0].host.is_localhost());
        for env in ["staging", "prod"] {
            let err = crate::parse(dir.path(), &path, source, env)
                .unwrap_err()
                .to_string();
            assert!(err.contains("bulkhead.toml:8:"), "{err}");
            assert!(err.contains("allowed only in `dev`"), "{err}");
        }
    }

    #[test]
    fn refuses_malformed_entries() {
        for bad in [
            "api.github.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://user@x.com",
            "https://x.com:0",
            "https://x.com:99999",
            "https://*.com",
            "https://a.*.com",
            "https://-x.com",
            "https://",
            "https://[::1",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }
}
