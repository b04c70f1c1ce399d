//! Which IP addresses count as the public internet (T17). Anything else —
//! loopback, private, link-local (cloud metadata at 169.254.169.254),
//! carrier-grade NAT, unique-local, site-local, multicast, documentation,
//! reserved, the local-use NAT64 prefix, and IPv6 forms that embed such an
//! IPv4 address — is refused unless a grant names the exact address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..=127).contains(&b)) // carrier-grade NAT (and 100.100.100.200 metadata)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..=19).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let first = s[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 metadata)
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated, still routed inside some sites)
        || s[..3] == [0x64, 0xff9b, 1] // NAT64 local use (RFC 8215): translates to anything inside
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x2001 && ip.segments()[1] == 0) // Teredo
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

/// The IPv4 address inside IPv4-mapped, NAT64 and 6to4 IPv6 addresses.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_internal_addresses() {
        for text in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(
                !is_public(text.parse().unwrap()),
                "{text} must not count as public"
            );
        }
    }

    /// T17: the local-use NAT64 prefix (RFC 8215) translates to whatever
    /// the site's NAT64 maps it to, private addresses included, and
    /// site-local addresses are routed inside some networks still.
    #[test]
    fn refuses_local_nat64_and_site_local_t17() {
        for text in [
            "64:ff9b:1::a00:1",
            "64:ff9b:1::",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            "64:ff9b:1:2::808:808",
            "fec0::1",
            "fec0:0:0:ffff::1",
            "feff:ffff::1",
        ] {
            assert!(
                !is_public(text.parse().unwrap()),
                "{text} must not count as public"
            );
        }
        // Neighbours of those ranges stay public.
        for text in ["64:ff9b::808:808", "2001:4860:4860::8888"] {
            assert!(is_public(text.parse().unwrap()), "{text}");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for text in [
            "140.82.112.3",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(text.parse().unwrap()), "{text}");
        }
    }
}
