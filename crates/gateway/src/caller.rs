//! Who is calling, for rate limits, fair queueing, metering and budgets
//! (T02, T03, T04): the verified subject when there is one, else the
//! client's address. A forwarding header names the client only when the
//! connection comes from a trusted proxy; otherwise a flooder could pick a
//! new key for every request by sending a new header.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use bulkhead_manifest::TrustedProxies;
use bulkhead_manifest::traffic::{ForwardedHeader, canonical};
use http::HeaderMap;

use crate::authn::Identity;

/// A caller key: `sub:PRINCIPAL` (the subject qualified by credential kind
/// and issuer, [`crate::authn::principal`], T13) or `ip:ADDRESS` (IPv6 by
/// its /64, since one host commonly holds a whole /64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller(Arc<str>);

impl Caller {
    /// `client` is the client's address from [`client_address`].
    pub fn of(identity: Option<&Identity>, client: IpAddr) -> Self {
        match identity {
            Some(identity) => Self(format!("sub:{}", identity.principal).into()),
            None => Self(address_key(network_of(client)).into()),
        }
    }

    /// A caller that is no client: `trigger:FUNCTION` for a schedule or
    /// queue delivery (issue 18), metered and audited under that key.
    pub fn internal(key: &str) -> Self {
        Self(key.into())
    }

    /// The key itself, shared.
    pub fn key(&self) -> Arc<str> {
        self.0.clone()
    }
}

/// `ip:ADDRESS`. IPv4 written digit by digit: `Display` through the
/// formatter was ~2 % of a refusal's CPU (issue 17); same text.
fn address_key(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return format!("ip:{ip}");
    };
    let mut key = String::with_capacity(18);
    key.push_str("ip:");
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        if octet >= 100 {
            key.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            key.push(char::from(b'0' + octet / 10 % 10));
        }
        key.push(char::from(b'0' + octet % 10));
    }
    key
}

/// The key of an address: IPv4 as is (mapped forms folded), IPv6 by its
/// /64, since one host commonly holds a whole /64.
pub(crate) fn network_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client's address (IPv4-mapped IPv6 as IPv4): the peer, unless the
/// peer is a trusted proxy; then the nearest address in the proxies'
/// forwarding header that is not a trusted proxy. Entries further left
/// were written by the client and prove nothing.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, proxies: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if proxies.is_empty() || !proxies.contains(peer) {
        return peer;
    }
    let chain = match proxies.header {
        ForwardedHeader::XForwardedFor => x_forwarded_for_chain(headers),
        ForwardedHeader::Forwarded => forwarded_chain(headers),
    };
    let Some(chain) = chain else {
        return peer;
    };
    // Walk from the nearest hop outwards; an unreadable hop ends the walk at
    // the last address we could trust.
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop {
            Some(ip) => {
                client = canonical(*ip);
                if !proxies.contains(*ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// The scheme the client used (issue 12, T02/T11): the listener's own,
/// `http`, unless the peer is a trusted proxy that says `https` in its
/// header: `X-Forwarded-Proto` (one value, `http` or `https`) beside
/// `X-Forwarded-For`, or `proto=` in the `Forwarded` element that names the
/// client (the hop [`client_address`] stops at). From anyone else these
/// headers are ignored: a client cannot pretend it came over TLS.
pub fn client_scheme(peer: IpAddr, headers: &HeaderMap, proxies: &TrustedProxies) -> &'static str {
    let peer = canonical(peer);
    if proxies.is_empty() || !proxies.contains(peer) {
        return "http";
    }
    let said = match proxies.header {
        ForwardedHeader::XForwardedFor => x_forwarded_proto(headers),
        ForwardedHeader::Forwarded => forwarded_proto(headers, proxies),
    };
    match said {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

/// `X-Forwarded-Proto`, only when it is exactly one value: a list means
/// some proxy appended to what the client wrote, and nothing says which
/// entry is whose.
fn x_forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all("x-forwarded-proto").iter();
    let value = values.next()?.to_str().ok()?.trim();
    (values.next().is_none() && !value.contains(',')).then_some(value)
}

/// `proto=` of the `Forwarded` element the trusted proxies wrote about the
/// client: walking from the nearest element outwards, the first whose
/// `for=` is not a trusted proxy. An unreadable element ends the walk with
/// nothing, like an element further left, which the client wrote itself.
fn forwarded_proto<'h>(headers: &'h HeaderMap, proxies: &TrustedProxies) -> Option<&'h str> {
    let mut elements = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        elements.extend(rfc7239::parse(value.to_str().ok()?));
    }
    for element in elements.into_iter().rev() {
        let element = element.ok()?;
        let hop = element.forwarded_for.as_ref().and_then(|id| match id.name {
            rfc7239::NodeName::Ip(ip) => Some(ip),
            _ => None,
        });
        match hop {
            Some(ip) if proxies.contains(ip) => continue,
            Some(_) => return element.protocol,
            None => return None,
        }
    }
    None
}

/// `Forwarded: for=…` (RFC 7239), every header line in order.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut chain = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let text = value.to_str().ok()?;
        for node in rfc7239::parse(text) {
            let ip = node
                .ok()
                .and_then(|n| n.forwarded_for)
                .and_then(|id| match id.name {
                    rfc7239::NodeName::Ip(ip) => Some(ip),
                    _ => None,
                });
            chain.push(ip);
        }
    }
    (!chain.is_empty()).then_some(chain)
}

/// `X-Forwarded-For: client, proxy1, proxy2`.
fn x_forwarded_for_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut chain = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let text = value.to_str().ok()?;
        chain.extend(
            text.split(',')
                .map(|part| part.trim().parse::<IpAddr>().ok()),
        );
    }
    (!chain.is_empty()).then_some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written IPv4 key is the text `Display` writes (issue 17):
    /// rate limits, shares and audit records key on it.
    #[test]
    fn address_keys_match_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.5.250",
            "2001:db8::1",
            "::ffff:192.0.2.7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let network = network_of(ip);
            assert_eq!(address_key(network), format!("ip:{network}"), "{ip}");
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(octet, 0, octet, 1));
            assert_eq!(address_key(ip), format!("ip:{ip}"));
        }
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        proxies_reading(list, "x-forwarded-for")
    }

    fn proxies_reading(list: &[&str], header: &str) -> TrustedProxies {
        let source = format!(
            "[app]\nname = \"t\"\n[limits]\nforwarded_header = \"{header}\"\ntrusted_proxies = [{}]\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/\"\nauth = \"public\"\n",
            list.iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let path = dir.path().join("bulkhead.toml");
        bulkhead_manifest::parse(dir.path(), &path, &source, "dev")
            .unwrap()
            .limits
            .trusted_proxies
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn forwarding_headers_from_untrusted_peers_are_ignored_t02() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let spoofed = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(client_address(peer, &spoofed, &proxies(&[])), peer);
        assert_eq!(
            client_address(peer, &spoofed, &proxies(&["10.0.0.0/8"])),
            peer
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted = proxies(&["10.0.0.0/8"]);
        // The client wrote the first entry itself: it proves nothing.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.3")]);
        assert_eq!(
            client_address(peer, &chain, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let forwarded = headers(&[("forwarded", "for=1.1.1.1, for=\"[2001:db8::1]:4711\"")]);
        let rfc7239 = proxies_reading(&["10.0.0.0/8"], "forwarded");
        assert_eq!(
            client_address(peer, &forwarded, &rfc7239),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Only the configured header is read: a client-written `Forwarded`
        // passed through by an X-Forwarded-For proxy names nobody.
        let both = headers(&[
            ("forwarded", "for=192.0.2.99"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            client_address(peer, &both, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(peer, &forwarded, &trusted), peer);
        let garbage = headers(&[("x-forwarded-for", "not-an-address")]);
        assert_eq!(client_address(peer, &garbage, &trusted), peer);
    }

    /// Issue 12, T02/T11: only a trusted proxy can say the client used
    /// https, in the one header it is configured to write.
    #[test]
    fn https_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xfp = proxies(&["10.0.0.0/8"]);
        let https = headers(&[("x-forwarded-proto", "HTTPS")]);
        assert_eq!(client_scheme(proxy, &https, &xfp), "https");
        assert_eq!(client_scheme(stranger, &https, &xfp), "http");
        assert_eq!(client_scheme(proxy, &https, &proxies(&[])), "http");
        for odd in ["https, http", "ftp", "", "https;x", "javascript"] {
            let h = headers(&[("x-forwarded-proto", odd)]);
            assert_eq!(client_scheme(proxy, &h, &xfp), "http", "{odd:?}");
        }
        let twice = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(client_scheme(proxy, &twice, &xfp), "http");
        // The other header is passed through as the client wrote it.
        let other = headers(&[("forwarded", "for=192.0.2.1;proto=https")]);
        assert_eq!(client_scheme(proxy, &other, &xfp), "http");

        let rfc = proxies_reading(&["10.0.0.0/8"], "forwarded");
        let client = headers(&[(
            "forwarded",
            "for=192.0.2.1;proto=https, for=10.0.0.3;proto=http",
        )]);
        assert_eq!(client_scheme(proxy, &client, &rfc), "https");
        assert_eq!(client_scheme(stranger, &client, &rfc), "http");
        // What the client wrote further left proves nothing.
        let forged = headers(&[(
            "forwarded",
            "for=1.1.1.1;proto=https, for=192.0.2.1;proto=http",
        )]);
        assert_eq!(client_scheme(proxy, &forged, &rfc), "http");
        let garbage = headers(&[("forwarded", "for=192.0.2.1;proto=https;;=, for")]);
        assert_eq!(client_scheme(proxy, &garbage, &rfc), "http");
        assert_eq!(client_scheme(proxy, &https, &rfc), "http");
    }

    #[test]
    fn subjects_are_keyed_by_kind_and_issuer_t13() {
        use bulkhead_manifest::CredentialKind as Kind;

        use crate::authn::principal;
        let key = principal(Kind::ApiKey, None, "ci-bot");
        let session = principal(Kind::Session, None, "ci-bot");
        let jwt = principal(Kind::Jwt, Some("https://id.example.org"), "ci-bot");
        assert_eq!(key, "api-key:ci-bot");
        assert_eq!(session, "session:ci-bot");
        assert_eq!(jwt, "jwt:https%3A//id.example.org:ci-bot");
        // The issuer ends at the first `:`: no issuer and subject pair can
        // spell another's principal.
        assert_ne!(
            principal(Kind::Jwt, Some("a:b"), "c"),
            principal(Kind::Jwt, Some("a"), "b:c")
        );
        assert_ne!(
            principal(Kind::Jwt, Some("a%3Ab"), "c"),
            principal(Kind::Jwt, Some("a:b"), "c")
        );
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let caller = |kind, issuer: Option<&str>| {
            Caller::of(
                Some(&Identity {
                    subject: "ci-bot".into(),
                    issuer: issuer.map(String::from),
                    principal: principal(kind, issuer, "ci-bot"),
                    scopes: vec![],
                    kind,
                    via_cookie: false,
                }),
                client,
            )
        };
        let callers = [
            caller(Kind::ApiKey, None),
            caller(Kind::Session, None),
            caller(Kind::Jwt, Some("https://a.example")),
            caller(Kind::Jwt, Some("https://b.example")),
        ];
        for (i, a) in callers.iter().enumerate() {
            for b in &callers[i + 1..] {
                assert_ne!(a, b, "one rate limit and budget per kind and issuer");
            }
        }
    }

    #[test]
    fn ipv6_callers_share_their_slash_64() {
        let a = network_of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = network_of("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            network_of("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }
}
