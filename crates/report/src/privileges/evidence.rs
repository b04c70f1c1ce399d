//! What the audit trail and the meter say about one window, tallied per
//! grant as the records stream past (T16). Only what names a grant of the
//! manifest is kept, so weeks of records cost a few counters, and a guest
//! cannot grow the tally with names it makes up: a destination under a
//! wildcard grant is kept up to [`MAX_HOSTS`], the rest only counted.

use std::collections::BTreeMap;

use bulkhead_manifest::grants::{HostPattern, Scheme, parse_origin};
use bulkhead_manifest::{App, OutboundRule, StoreAccess};
use bulkhead_store::AuditRecord;
use bulkhead_store::meter::UsageRow;
use serde_json::Value;

use super::Window;

/// Hosts called under one wildcard grant that are named one by one.
pub(super) const MAX_HOSTS: usize = 16;

/// One hour, in milliseconds: the meter's grain.
pub(super) const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Capability {
    Kv,
    Sql,
    Secret,
    Config,
    Outbound,
}

impl Capability {
    /// The name the runtime records under `capability`.
    fn of_record(name: &str) -> Option<Self> {
        Some(match name {
            "kv" => Self::Kv,
            "sql" => Self::Sql,
            "secret" => Self::Secret,
            "config" => Self::Config,
            "outbound-http" => Self::Outbound,
            _ => return None,
        })
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Sql => "sql",
            Self::Secret => "secret",
            Self::Config => "config",
            Self::Outbound => "outbound",
        }
    }

    /// The `grants` field and its `app.lines` key part.
    pub(super) fn field(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Sql => "sql",
            Self::Secret => "secrets",
            Self::Config => "config",
            Self::Outbound => "outbound",
        }
    }
}

/// One grant of one function, as the manifest writes it.
#[derive(Debug, Clone)]
pub(super) struct Grant {
    pub capability: Capability,
    /// The store, secret or config key; an outbound origin as written.
    pub name: String,
    /// Store grants: what is granted.
    pub access: Option<StoreAccess>,
    /// Outbound grants: the parsed rule.
    pub rule: Option<OutboundRule>,
}

impl Grant {
    pub fn is_wildcard(&self) -> bool {
        self.rule
            .as_ref()
            .is_some_and(|r| matches!(r.host, HostPattern::Subdomains(_)))
    }

    /// Its key in `app.lines`.
    pub fn line_key(&self, function: &str) -> String {
        format!(
            "function.{function}.grants.{}.{}",
            self.capability.field(),
            self.name
        )
    }
}

/// Every grant of `function`, in manifest order per capability.
pub(super) fn grants_of(app: &App, function: &bulkhead_manifest::Function) -> Vec<Grant> {
    let g = &function.grants;
    let store = |capability, (name, access): (&String, StoreAccess)| Grant {
        capability,
        name: name.clone(),
        access: Some(access),
        rule: None,
    };
    let named = |capability, name: &String| Grant {
        capability,
        name: name.clone(),
        access: None,
        rule: None,
    };
    let mut grants: Vec<Grant> =
        g.kv.iter()
            .map(|(n, a)| store(Capability::Kv, (n, *a)))
            .collect();
    grants.extend(
        g.sql
            .iter()
            .map(|(n, s)| store(Capability::Sql, (n, s.access))),
    );
    grants.extend(g.secrets.iter().map(|n| named(Capability::Secret, n)));
    grants.extend(g.config.iter().map(|n| named(Capability::Config, n)));
    // The origins as written (the lines' keys), so a suggestion quotes
    // the manifest's own text; the rule's canonical form otherwise.
    let prefix = format!("function.{}.grants.outbound.", function.name);
    let written: Vec<(&str, OutboundRule)> = app
        .lines
        .iter()
        .filter_map(|(key, _)| key.strip_prefix(&prefix))
        .filter_map(|origin| Some((origin, OutboundRule::parse(origin).ok()?)))
        .collect();
    for rule in &g.outbound {
        let name = written
            .iter()
            .find(|(_, parsed)| parsed == rule)
            .map_or_else(|| rule.to_string(), |(text, _)| (*text).to_string());
        grants.push(Grant {
            capability: Capability::Outbound,
            name,
            access: None,
            rule: Some(rule.clone()),
        });
    }
    grants
}

/// How often something was seen and when last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seen {
    pub count: u64,
    pub last_ms: Option<i64>,
    /// Of `count`, known only from a `capability.folded` count.
    pub folded: u64,
}

impl Seen {
    fn add(&mut self, count: u64, time_ms: i64, folded: bool) {
        self.count = self.count.saturating_add(count);
        self.last_ms = Some(self.last_ms.map_or(time_ms, |t| t.max(time_ms)));
        if folded {
            self.folded = self.folded.saturating_add(count);
        }
    }

    pub fn any(&self) -> bool {
        self.count > 0
    }
}

/// What was recorded about one grant.
#[derive(Debug, Clone, Default)]
pub(super) struct GrantUse {
    /// Granted uses: a store opened or queried, a secret or key read, an
    /// outbound connection made.
    pub used: Seen,
    /// Of those, writes (stores only).
    pub writes: Seen,
    /// Of the uses, SQL statements that reached the database and failed
    /// there: whether they were writes is not recorded.
    pub failed: Seen,
    /// Refused attempts on the granted resource (a secret not set, a
    /// statement the grant does not declare, a destination that resolved
    /// to a private address): the function tried to use it.
    pub refused: Seen,
    /// Why the last refused attempt was refused.
    pub last_reason: Option<String>,
    /// Writes refused under a `read` grant.
    pub refused_writes: Seen,
    /// Outbound: origins called under this grant.
    pub hosts: BTreeMap<String, Seen>,
    /// Outbound: calls to origins past [`MAX_HOSTS`].
    pub more_hosts: u64,
}

impl GrantUse {
    /// Used at all in the window, as recorded.
    pub fn exercised(&self) -> bool {
        self.used.any() || self.writes.any()
    }

    /// The latest recorded use.
    pub fn last_use_ms(&self) -> Option<i64> {
        self.used.last_ms.max(self.writes.last_ms)
    }
}

/// What was recorded about one function.
#[derive(Debug, Clone, Default)]
pub(super) struct FunctionUse {
    pub grants: Vec<(Grant, GrantUse)>,
    /// Capability records of the function in the window: it ran.
    pub ran: Seen,
    /// Metered calls in hours that start inside the window.
    pub calls: u64,
    /// Metered calls in the hour the window starts in, partly before it.
    pub calls_first_hour: u64,
    /// The latest metered hour with calls, as ms since the epoch.
    pub last_hour_ms: Option<i64>,
    /// The first `deploy` record that lists the function.
    pub first_served_ms: Option<i64>,
}

/// A hole in the evidence, in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gap {
    /// `audit.dropped`: events lost before they were written.
    Dropped { events: u64, time_ms: i64 },
    /// `audit.suppressed`: events counted, not written (size budget).
    Suppressed { events: u64, time_ms: i64 },
    /// `audit.traffic_full` / `audit.full`: the size budget reached.
    Full { kind: String, time_ms: i64 },
    /// `audit.chain_broken`: the trail was found edited.
    ChainBroken { time_ms: i64 },
    /// Folded events past the per-call key cap: not known what they were.
    FoldedOther { function: String, events: u64 },
}

/// Everything the review knows, gathered by feeding it records and meter
/// rows. Build it with [`Evidence::new`], then [`Evidence::add`] every
/// audit record of the window, [`Evidence::add_deploy`] every `deploy`
/// record, [`Evidence::trail_starts`] the oldest record's time and
/// [`Evidence::add_usage`] the meter's rows (or nothing when metering is
/// off).
#[derive(Debug, Clone)]
pub struct Evidence {
    pub(super) window: Window,
    pub(super) functions: BTreeMap<String, FunctionUse>,
    pub(super) trail_start_ms: Option<i64>,
    pub(super) first_deploy_ms: Option<i64>,
    pub(super) metered: bool,
    pub(super) gaps: Vec<Gap>,
}

impl Evidence {
    /// An empty tally for `app`'s functions and grants over `window`.
    pub fn new(app: &App, window: Window) -> Self {
        let functions = app
            .functions
            .iter()
            .map(|f| {
                let grants = grants_of(app, f)
                    .into_iter()
                    .map(|g| (g, GrantUse::default()))
                    .collect();
                (
                    f.name.clone(),
                    FunctionUse {
                        grants,
                        ..FunctionUse::default()
                    },
                )
            })
            .collect();
        Self {
            window,
            functions,
            trail_start_ms: None,
            first_deploy_ms: None,
            metered: false,
            gaps: Vec::new(),
        }
    }

    /// The time of the oldest record in the whole trail.
    pub fn trail_starts(&mut self, time_ms: i64) {
        self.trail_start_ms = Some(self.trail_start_ms.map_or(time_ms, |t| t.min(time_ms)));
    }

    /// A `deploy` record, of any time: when each function was first served.
    pub fn add_deploy(&mut self, record: &AuditRecord) {
        if record.kind != "deploy" {
            return;
        }
        let time = record.time_ms;
        self.first_deploy_ms = Some(self.first_deploy_ms.map_or(time, |t| t.min(time)));
        let listed = record.detail["functions"].as_array().into_iter().flatten();
        for name in listed.filter_map(|f| f["name"].as_str()) {
            if let Some(f) = self.functions.get_mut(name) {
                f.first_served_ms = Some(f.first_served_ms.map_or(time, |t| t.min(time)));
            }
        }
    }

    /// Meter rows from the window's first hour on: calls per function.
    pub fn add_usage(&mut self, rows: &[UsageRow]) {
        self.metered = true;
        for row in rows {
            let Some(f) = self.functions.get_mut(&row.function) else {
                continue;
            };
            let start = row.hour.saturating_mul(HOUR_MS);
            let calls = row.usage.requests;
            if calls == 0 || start.saturating_add(HOUR_MS) <= self.window.since_ms {
                continue;
            }
            if start >= self.window.since_ms {
                f.calls = f.calls.saturating_add(calls);
            } else {
                f.calls_first_hour = f.calls_first_hour.saturating_add(calls);
            }
            f.last_hour_ms = Some(f.last_hour_ms.map_or(start, |t| t.max(start)));
        }
    }

    /// One audit record of the window. Records of other kinds, before the
    /// window or about functions the manifest no longer has are ignored.
    pub fn add(&mut self, record: &AuditRecord) {
        let time = record.time_ms;
        if time < self.window.since_ms || time > self.window.until_ms {
            return;
        }
        let detail = &record.detail;
        let events = || detail["events"].as_u64().unwrap_or(0);
        match record.kind.as_str() {
            "capability.used" | "capability.denied" => {
                let used = record.kind == "capability.used";
                if let Some(function) = &record.function {
                    self.event(function, used, detail, 1, time, false);
                }
            }
            "capability.folded" => {
                let Some(function) = &record.function else {
                    return;
                };
                for entry in detail["counts"].as_array().into_iter().flatten() {
                    let used = match entry["kind"].as_str() {
                        Some("capability.used") => true,
                        Some("capability.denied") => false,
                        _ => continue,
                    };
                    let count = entry["count"].as_u64().unwrap_or(0);
                    self.event(function, used, entry, count, time, true);
                }
                let other = detail["other"].as_u64().unwrap_or(0);
                if other > 0 && self.functions.contains_key(function) {
                    self.gaps.push(Gap::FoldedOther {
                        function: function.clone(),
                        events: other,
                    });
                }
            }
            "audit.dropped" => self.gaps.push(Gap::Dropped {
                events: events(),
                time_ms: time,
            }),
            "audit.suppressed" => self.gaps.push(Gap::Suppressed {
                events: events(),
                time_ms: time,
            }),
            "audit.traffic_full" | "audit.full" => self.gaps.push(Gap::Full {
                kind: record.kind.clone(),
                time_ms: time,
            }),
            "audit.chain_broken" => self.gaps.push(Gap::ChainBroken { time_ms: time }),
            _ => {}
        }
    }

    /// One use or refusal (`count` of them) named in a record or a folded
    /// count: credited to the grant it exercised, if any.
    fn event(
        &mut self,
        function: &str,
        used: bool,
        detail: &Value,
        count: u64,
        time: i64,
        folded: bool,
    ) {
        let Some(f) = self.functions.get_mut(function) else {
            return;
        };
        let Some(capability) = detail["capability"]
            .as_str()
            .and_then(Capability::of_record)
        else {
            // Sockets and the like: still proof that the function ran.
            f.ran.add(count, time, folded);
            return;
        };
        f.ran.add(count, time, folded);
        let field = |name: &str| detail[name].as_str().unwrap_or_default();
        let (resource, outcome) = match capability {
            Capability::Sql => (
                field("store"),
                field(if used { "access" } else { "reason" }),
            ),
            Capability::Outbound => (field("destination"), field("reason")),
            _ => (
                field("resource"),
                field(if used { "access" } else { "reason" }),
            ),
        };
        let (index, origin) = match capability {
            Capability::Outbound => match outbound_grant(&f.grants, resource) {
                Some(found) => found,
                None => return,
            },
            _ => match f
                .grants
                .iter()
                .position(|(g, _)| g.capability == capability && g.name == resource)
            {
                Some(i) => (i, String::new()),
                None => return,
            },
        };
        let tally = &mut f.grants[index].1;
        if !used {
            // A write refused under a read grant is not a use of the grant
            // it has; anything else refused on a granted resource is an
            // attempt to use it.
            if outcome.contains("under a read grant") {
                tally.refused_writes.add(count, time, folded);
            } else {
                tally.refused.add(count, time, folded);
                tally.last_reason = Some(outcome.to_string());
            }
            return;
        }
        let write = outcome == "write";
        if write {
            tally.writes.add(count, time, folded);
        }
        if capability == Capability::Sql && outcome == "failed" {
            tally.failed.add(count, time, folded);
        }
        // A key-value write is recorded beside the open that made it a
        // use: the open is the use. A SQL statement is a use either way.
        if !(write && capability == Capability::Kv) {
            tally.used.add(count, time, folded);
        }
        if capability == Capability::Outbound {
            if let Some(seen) = tally.hosts.get_mut(&origin) {
                seen.add(count, time, folded);
            } else if tally.hosts.len() < MAX_HOSTS {
                let mut seen = Seen::default();
                seen.add(count, time, folded);
                tally.hosts.insert(origin, seen);
            } else {
                tally.more_hosts = tally.more_hosts.saturating_add(count);
            }
        }
    }
}

/// The outbound grant a destination (`scheme://host:port`, as recorded)
/// was reached under, and its origin as a grant would write it. An exact
/// grant wins over a wildcard that also matches, so a wildcard only an
/// exact grant's host was called under shows as unused.
fn outbound_grant(grants: &[(Grant, GrantUse)], destination: &str) -> Option<(usize, String)> {
    let (scheme, host, port) = parse_origin(destination).ok()?;
    let host = match host {
        HostPattern::Name(name) => name,
        HostPattern::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        HostPattern::Ip(ip) => ip.to_string(),
        HostPattern::Subdomains(_) => return None,
    };
    let allows = |g: &Grant| {
        g.rule
            .as_ref()
            .is_some_and(|rule| rule.allows(scheme, &host, port))
    };
    let index = grants
        .iter()
        .position(|(g, _)| !g.is_wildcard() && allows(g))
        .or_else(|| grants.iter().position(|(g, _)| allows(g)))?;
    Some((index, origin(scheme, &host, port)))
}

/// `https://host`, with `:port` only when it is not the scheme's default.
pub(super) fn origin(scheme: Scheme, host: &str, port: u16) -> String {
    if port == scheme.default_port() {
        format!("{}://{host}", scheme.as_str())
    } else {
        format!("{}://{host}:{port}", scheme.as_str())
    }
}
