//! What an outbound grant can reach, judged before deploy (T17, T19):
//! `bulkhead check` lists every destination with this review, so a grant
//! that reaches this machine's loopback or the cloud metadata service, or
//! one that the egress rules ([`crate::net`], `outbound.rs`) refuse at
//! every call, is seen before it is served rather than found in the audit
//! trail.

use std::net::{IpAddr, Ipv4Addr};

use bulkhead_manifest::grants::{HostPattern, OutboundRule};

use crate::net::is_public;

/// How one grant fares against the egress rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A name resolved at call time (reached when it resolves to a public
    /// address), or a public address.
    Public,
    /// `localhost` in `dev`: this machine's loopback on that port only,
    /// never asked of DNS.
    DevLoopback,
    /// An internal address the grant names exactly, so it is reached; what
    /// it is. `warn` when that deserves a warning (loopback outside `dev`,
    /// cloud metadata).
    Internal { what: &'static str, warn: bool },
    /// Refused or unconnectable at every call, and why.
    Never(String),
}

/// Judge `rule` for an app served in `dev` or not.
pub fn review(rule: &OutboundRule, dev: bool) -> Reach {
    match &rule.host {
        HostPattern::Name(name) if rule.host.is_localhost() => {
            // The manifest refuses `localhost` outside dev; say so if a
            // rule got here anyway.
            if dev {
                Reach::DevLoopback
            } else {
                Reach::Never(format!(
                    "`{name}` means this machine's loopback and is granted only in `dev`"
                ))
            }
        }
        HostPattern::Name(name) | HostPattern::Subdomains(name)
            if name.ends_with(".localhost") =>
        {
            Reach::Never(
                "names under `.localhost` resolve to loopback (RFC 6761), which no name but `localhost` in `dev` may reach"
                    .into(),
            )
        }
        HostPattern::Name(name) => match legacy_ipv4(name) {
            // The system resolver reads `2130706433`, `0x7f000001` or
            // `127.1` as an address; a name never reaches a non-public one.
            Some(ip) if !is_public(IpAddr::V4(ip)) => Reach::Never(format!(
                "`{name}` is the address {ip} written another way, and a name never reaches a non-public address; grant `{ip}` itself if that is meant"
            )),
            _ => Reach::Public,
        },
        HostPattern::Subdomains(_) => Reach::Public,
        HostPattern::Ip(ip) => review_ip(*ip, dev),
    }
}

/// The warning `check` prints and `serve` logs for `rule`, if any.
pub fn warning(rule: &OutboundRule, dev: bool) -> Option<String> {
    review(rule, dev).warning(rule)
}

impl Reach {
    /// The warning for `rule`, which was judged this, if it deserves one.
    pub fn warning(&self, rule: &OutboundRule) -> Option<String> {
        match self {
            Reach::Never(why) => Some(format!("{rule} can never be reached: {why}")),
            Reach::Internal { what, warn: true } => Some(format!(
                "{rule} reaches {what}; it is allowed because the grant names the address: remove it unless that is meant"
            )),
            _ => None,
        }
    }
}

fn review_ip(ip: IpAddr, dev: bool) -> Reach {
    if is_public(ip) {
        return Reach::Public;
    }
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    let unconnectable =
        |why: &str| Reach::Never(format!("{ip} is {why}: TCP cannot connect to it"));
    if ip.is_multicast() || v4.is_some_and(|v4| v4.is_multicast() || v4.is_broadcast()) {
        return unconnectable("a multicast or broadcast address");
    }
    if v4.is_some_and(|v4| v4.octets()[0] >= 240) {
        return unconnectable("a reserved address");
    }
    if let IpAddr::V6(v6) = ip
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return unconnectable(
            "an IPv6 link-local address, which needs an interface a URL cannot name",
        );
    }
    let metadata = [
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
        IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
        IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    ];
    if metadata.contains(&ip) || v4.is_some_and(|v4| metadata.contains(&IpAddr::V4(v4))) {
        return Reach::Internal {
            what: "a cloud metadata service: a function that reaches it may obtain this machine's cloud credentials",
            warn: true,
        };
    }
    // Linux connects the unspecified address to this machine itself.
    if ip.is_loopback() || ip.is_unspecified() || v4.is_some_and(|v4| v4.is_loopback()) {
        return Reach::Internal {
            what: "this machine's loopback: the gateway host's own services (its admin listener, local databases)",
            warn: !dev,
        };
    }
    Reach::Internal {
        what: "an internal address (private, link-local or otherwise not public)",
        warn: false,
    }
}

/// The IPv4 address the C resolver (`inet_aton`) reads in `name`: one to
/// four dot-separated numbers, each decimal, octal (leading `0`) or hex
/// (`0x`), the last filling the bytes left.
fn legacy_ipv4(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<u32> = name
        .split('.')
        .map(|part| {
            if let Some(hex) = part.strip_prefix("0x") {
                u32::from_str_radix(hex, 16).ok()
            } else if let Some(octal) = part.strip_prefix('0').filter(|o| !o.is_empty()) {
                u32::from_str_radix(octal, 8).ok()
            } else {
                part.parse().ok()
            }
        })
        .collect::<Option<_>>()?;
    let (last, leading) = parts.split_last()?;
    if leading.len() > 3 || leading.iter().any(|p| *p > 255) {
        return None;
    }
    let last_bits = 32 - 8 * leading.len() as u32;
    if last_bits < 32 && *last >= 1 << last_bits {
        return None;
    }
    let high = leading
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, p)| acc | (p << (24 - 8 * i)));
    Some(Ipv4Addr::from(high | last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(text: &str, dev: bool) -> Reach {
        review(&OutboundRule::parse(text).unwrap(), dev)
    }

    /// T17: names and addresses that the egress rules refuse at every call
    /// are found before deploy.
    #[test]
    fn finds_destinations_never_reached_t17() {
        for text in [
            "http://2130706433:80",
            "http://0x7f000001:80",
            "http://127.1:80",
            "http://0177.0.0.1:80",
            "http://10.1:80",
            "http://app.localhost:80",
            "http://*.dev.localhost:80",
            "http://224.0.0.1:80",
            "http://255.255.255.255:80",
            "http://240.0.0.1:80",
            "http://[fe80::1]:80",
        ] {
            assert!(matches!(reach(text, true), Reach::Never(_)), "{text}");
        }
        assert!(matches!(
            reach("http://localhost:80", false),
            Reach::Never(_)
        ));
        for text in [
            "https://api.github.com",
            "https://*.example.com",
            "http://134744072:80", // 8.8.8.8, written as one number
            "http://1.1.1.1",
            "http://v1.2:80", // not all numbers: a name
        ] {
            assert_eq!(reach(text, false), Reach::Public, "{text}");
        }
        assert_eq!(reach("http://localhost:3000", true), Reach::DevLoopback);
    }

    /// T17/T19: loopback granted by address is reached; outside dev that
    /// is a warning, and the metadata service is one everywhere.
    #[test]
    fn warns_about_loopback_outside_dev_and_metadata_t17() {
        for text in ["http://127.0.0.1:9", "http://[::1]:9", "http://0.0.0.0:9"] {
            assert!(
                matches!(reach(text, false), Reach::Internal { warn: true, .. }),
                "{text}"
            );
            assert!(
                matches!(reach(text, true), Reach::Internal { warn: false, .. }),
                "{text}"
            );
        }
        for text in [
            "http://169.254.169.254",
            "http://[fd00:ec2::254]",
            "http://[::ffff:169.254.169.254]",
        ] {
            assert!(
                matches!(reach(text, true), Reach::Internal { warn: true, .. }),
                "{text}"
            );
        }
        assert!(matches!(
            reach("http://10.0.0.5:8080", false),
            Reach::Internal { warn: false, .. }
        ));
    }

    #[test]
    fn reads_addresses_as_the_c_resolver_does() {
        for (text, ip) in [
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("10.1.1", "10.1.0.1"),
            ("0300.0250.0.1", "192.168.0.1"),
        ] {
            assert_eq!(legacy_ipv4(text), Some(ip.parse().unwrap()), "{text}");
        }
        for text in ["256.1.1.1", "1.2.3.4.5", "1.2.65536", "example", "08.1", ""] {
            assert_eq!(legacy_ipv4(text), None, "{text}");
        }
    }
}
