//! Flood controls (T01, T02, T03): per-caller rate limits, the proxies whose
//! forwarding headers are believed, and the dynamic throttle that sheds new
//! work while the process is overloaded.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::problem::Collector;
use crate::units::Duration;

/// `rate_limit = { per_caller = "10/s", burst = 20 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub per_caller: Spanned<String>,
    pub burst: Option<Spanned<u32>>,
}

/// `dynamic_throttle = { cpu = 0.8, memory = 0.8, in_flight = 0.8 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawThrottle {
    pub enabled: Option<bool>,
    pub cpu: Option<Spanned<f64>>,
    pub memory: Option<Spanned<f64>>,
    pub in_flight: Option<Spanned<f64>>,
    pub interval: Option<Spanned<Duration>>,
}

/// How many requests one caller may make: `count` per `period`, with
/// `burst` allowed at once (a GCRA cell every `period / count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub period: std::time::Duration,
    pub burst: u32,
}

impl RateLimit {
    /// The time one request's allowance takes to come back.
    pub fn interval(&self) -> std::time::Duration {
        self.period / self.count.max(1)
    }
}

/// `"10/s"`, `"600/m"`, `"1000/h"`, `"5000/d"`: a count per unit.
fn parse_rate(text: &str) -> Result<(u32, std::time::Duration), String> {
    let invalid = || {
        format!(
            "`{text}` is not a rate; write a count per unit, like `10/s`, `600/m`, `1000/h` or `5000/d` (or `off`)"
        )
    };
    let (count, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
    let count: u32 = count.trim().parse().map_err(|_| invalid())?;
    if count == 0 {
        return Err(format!(
            "`{text}` allows nothing; give a positive count, or `off` for no limit"
        ));
    }
    let seconds = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => return Err(invalid()),
    };
    Ok((count, std::time::Duration::from_secs(seconds)))
}

/// `None` for `per_caller = "off"`.
pub(crate) fn resolve_rate_limit(
    out: &mut Collector<'_>,
    what: &str,
    raw: &RawRateLimit,
) -> Option<RateLimit> {
    let text = raw.per_caller.get_ref();
    if text.trim() == "off" {
        return None;
    }
    let (count, period) = match parse_rate(text) {
        Ok(rate) => rate,
        Err(e) => {
            out.at(Some(raw.per_caller.span()), format!("{what}: {e}"));
            return None;
        }
    };
    // Default burst: one period's worth, so a steady caller never waits.
    let burst = match &raw.burst {
        Some(b) if *b.get_ref() == 0 => {
            out.at(
                Some(b.span()),
                format!("{what}: `burst` must be at least 1"),
            );
            1
        }
        Some(b) => *b.get_ref(),
        None => count,
    };
    Some(RateLimit {
        count,
        period,
        burst,
    })
}

/// Addresses of reverse proxies whose forwarding header is believed (T02),
/// and which header that is. Empty: forwarding headers are ignored, so a
/// client cannot pick its own rate-limit key by sending one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    pub header: ForwardedHeader,
}

/// The one header the proxies write. Only one is read: a proxy appends to
/// its own header and passes the other through, so a client could write
/// any address it likes into the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx, HAProxy, cloud balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) is the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub(crate) fn resolve_proxies(
    out: &mut Collector<'_>,
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    header: Option<&Spanned<String>>,
) -> TrustedProxies {
    let header = match header.map(|h| (h, h.get_ref().to_ascii_lowercase())) {
        None => ForwardedHeader::XForwardedFor,
        Some((_, name)) if name == "x-forwarded-for" => ForwardedHeader::XForwardedFor,
        Some((_, name)) if name == "forwarded" => ForwardedHeader::Forwarded,
        Some((h, _)) => {
            out.at(
                Some(h.span()),
                "`forwarded_header` is `x-forwarded-for` or `forwarded`: the one header your proxies write",
            );
            ForwardedHeader::XForwardedFor
        }
    };
    let mut nets = Vec::new();
    for entry in raw.map(|r| r.get_ref().as_slice()).unwrap_or_default() {
        let text = entry.get_ref().trim();
        let parsed = IpNet::from_str(text)
            .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
            .map(|net| net.trunc());
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => out.at(
                Some(entry.span()),
                format!(
                    "trusted proxy `{text}` is not an address or network; write one like `10.0.0.5` or `10.0.0.0/8`"
                ),
            ),
        }
    }
    TrustedProxies { nets, header }
}

/// Shed the excess while the process is overloaded (T01, T04). A signal is
/// a share from 0 to 1: process CPU over all cores, resident memory over
/// the memory available, active requests (body read, queued or running)
/// over the app's `max_outstanding_requests`. Past a threshold the gateway
/// limits active requests adaptively (see the gateway's `throttle` module).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttle {
    pub cpu: f64,
    pub memory: f64,
    pub in_flight: f64,
    /// How often the signals are sampled.
    pub interval: Duration,
}

impl Throttle {
    /// The limit grows back (and is lifted) only while every signal is
    /// this far below its threshold.
    pub const HYSTERESIS: f64 = 0.10;
}

pub mod defaults {
    use super::{RateLimit, Throttle};
    use crate::units::Duration;

    /// Per caller, app-wide: generous for people, a wall for one flooder.
    pub const RATE_LIMIT: RateLimit = RateLimit {
        count: 100,
        period: std::time::Duration::from_secs(1),
        burst: 200,
    };
    pub const THROTTLE: Throttle = Throttle {
        cpu: 0.80,
        memory: 0.80,
        in_flight: 0.80,
        interval: Duration::from_secs(1),
    };
}

/// `None` when `enabled = false`.
pub(crate) fn resolve_throttle(
    out: &mut Collector<'_>,
    raw: Option<&Spanned<RawThrottle>>,
) -> Option<Throttle> {
    let mut throttle = defaults::THROTTLE;
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return Some(throttle);
    };
    for (key, value, slot) in [
        ("cpu", &raw.cpu, &mut throttle.cpu),
        ("memory", &raw.memory, &mut throttle.memory),
        ("in_flight", &raw.in_flight, &mut throttle.in_flight),
    ] {
        if let Some(v) = value {
            let share = *v.get_ref();
            if share.is_finite() && share > Throttle::HYSTERESIS && share <= 1.0 {
                *slot = share;
            } else {
                out.at(
                    Some(v.span()),
                    format!("`dynamic_throttle.{key}` is a share of capacity: a number above {} and at most 1, like 0.8", Throttle::HYSTERESIS),
                );
            }
        }
    }
    if let Some(interval) = &raw.interval {
        throttle.interval = *interval.get_ref();
    }
    raw.enabled.unwrap_or(true).then_some(throttle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_nonsense() {
        assert_eq!(parse_rate("10/s").unwrap().0, 10);
        assert_eq!(parse_rate("600/m").unwrap().1.as_secs(), 60);
        assert_eq!(parse_rate(" 5 / h ").unwrap().1.as_secs(), 3600);
        assert!(parse_rate("0/s").unwrap_err().contains("off"));
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("10/fortnight").is_err());
        assert!(parse_rate("-1/s").is_err());
    }

    fn parse_limits(limits: &str, function: &str) -> Result<crate::App, String> {
        let source = format!(
            "[app]\nname = \"t\"\n[limits]\n{limits}\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/\"\nauth = \"public\"\n{function}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let path = dir.path().join("bulkhead.toml");
        crate::parse(dir.path(), &path, &source, "dev").map_err(|e| e.to_string())
    }

    /// T02: one caller's share of the outstanding places is a quarter by
    /// default, app-wide and per function, and can be set but not above
    /// the bound it shares.
    #[test]
    fn a_callers_share_of_outstanding_places_t02() {
        let app = parse_limits("", "").unwrap();
        assert_eq!(app.limits.max_outstanding_per_caller, 64);
        assert_eq!(app.functions[0].limits.max_outstanding_per_caller, 64);
        let app = parse_limits(
            "max_outstanding_per_caller = 200",
            "max_concurrent_requests = 2\nmax_outstanding_requests = 10",
        )
        .unwrap();
        assert_eq!(app.limits.max_outstanding_per_caller, 200);
        assert_eq!(app.functions[0].limits.max_outstanding_per_caller, 3);
        let app = parse_limits("max_outstanding_per_caller = 200", "").unwrap();
        assert_eq!(app.functions[0].limits.max_outstanding_per_caller, 200);
        let err = parse_limits("max_outstanding_per_caller = 300", "").unwrap_err();
        assert!(err.contains("max_outstanding_per_caller"), "{err}");
        assert!(parse_limits("max_outstanding_per_caller = 0", "").is_err());
    }

    /// A manifest with one public function and `extra` after it.
    fn app(extra: &str) -> Result<crate::App, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let manifest = format!(
            "[app]\nname = \"t\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\nauth = \"public\"\n\n{extra}"
        );
        crate::parse(
            dir.path(),
            &dir.path().join("bulkhead.toml"),
            &manifest,
            "dev",
        )
        .map_err(|e| e.to_string())
    }

    /// T01: one address gets a small share of the connections by default.
    #[test]
    fn connections_per_address_default_to_a_share_t01() {
        assert_eq!(app("").unwrap().limits.max_connections_per_address, 64);
        let small = app("[limits]\nmax_connections = 100\n").unwrap();
        assert_eq!(small.limits.max_connections_per_address, 8);
        let tiny = app("[limits]\nmax_connections = 4\n").unwrap();
        assert_eq!(tiny.limits.max_connections_per_address, 4);
        let set = app("[limits]\nmax_connections_per_address = 3\n").unwrap();
        assert_eq!(set.limits.max_connections_per_address, 3);
        let above =
            app("[limits]\nmax_connections = 10\nmax_connections_per_address = 11\n").unwrap_err();
        assert!(above.contains("bulkhead.toml:12:"), "{above}");
        assert!(
            above.contains("cannot be above `max_connections`"),
            "{above}"
        );
        let zero = app("[limits]\nmax_connections_per_address = 0\n").unwrap_err();
        assert!(zero.contains("at least 1"), "{zero}");
    }

    /// T03: the back-off decay is a duration; unknown keys stay errors.
    #[test]
    fn backoff_decay_is_configurable_t03() {
        assert_eq!(
            app("").unwrap().auth_backoff_decay,
            crate::auth::defaults::BACKOFF_DECAY
        );
        let fast = app("[auth]\nbackoff_decay = \"2s\"\n").unwrap();
        assert_eq!(fast.auth_backoff_decay.get().as_secs(), 2);
        assert!(app("[auth]\nbackoff_decay = \"0s\"\n").is_err());
        assert!(app("[auth]\nbackoff_forever = true\n").is_err());
        assert!(app("[limits]\nconnections_per_address = 3\n").is_err());
    }

    #[test]
    fn mapped_addresses_match_their_ipv4_network() {
        let proxies = TrustedProxies {
            nets: vec!["10.0.0.0/8".parse().unwrap()],
            header: ForwardedHeader::XForwardedFor,
        };
        assert!(proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(proxies.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!proxies.contains("11.1.2.3".parse().unwrap()));
    }
}
