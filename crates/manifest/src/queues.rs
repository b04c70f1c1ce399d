//! `[queue.NAME]`, the queue grants and `[limits] max_event_depth`
//! (issue 18; T01, T04, T14, T16).
//!
//! - A queue is declared once for the app, with bounds that keep it from
//!   growing without end: retention, a message size cap, a delivery
//!   attempt cap and a dead-letter queue (which must exist, with no cycle
//!   of dead-letter queues).
//! - A function sends to a queue only through a grant naming it, with a
//!   cap per call on messages and bytes (T16, T04): one call cannot flood
//!   a queue.
//! - `max_event_depth` (T04, loops): every message carries its causal
//!   depth; a chain of events deeper than it is stopped. It sits under
//!   `[limits]` with the app's other bounds, so an environment may change
//!   it in `[env.NAME.limits]`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use crate::problem::Collector;
use crate::units::{ByteSize, Duration};

/// Built-in queue defaults and bounds.
pub mod defaults {
    use crate::units::{ByteSize, Duration};

    /// Unprocessed messages are deleted after this (SQS's default).
    pub const RETENTION: Duration = Duration::from_secs(4 * 24 * 3600);
    pub const MAX_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
    pub const MAX_MESSAGE_BYTES: ByteSize = ByteSize::kib(256);
    /// The largest message any queue may take.
    pub const MESSAGE_BYTES_CEILING: ByteSize = ByteSize::mib(1);
    /// Deliveries of one message before it is dead-lettered.
    pub const MAX_ATTEMPTS: u32 = 5;
    pub const ATTEMPTS_CEILING: u32 = 100;
    /// How long a delivered message stays invisible to other deliveries.
    pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
    /// Hops of one causal chain of events (Lambda stops loops at 16).
    pub const MAX_EVENT_DEPTH: u32 = 16;
    pub const EVENT_DEPTH_CEILING: u32 = 64;
    /// Messages one causal chain may send in all.
    pub const MAX_EVENT_MESSAGES: u32 = 1_000;
    pub const EVENT_MESSAGES_CEILING: u32 = 1_000_000;
    /// Messages one call may send to one queue.
    pub const MESSAGES_PER_CALL: u32 = 10;
    pub const MESSAGES_PER_CALL_CEILING: u32 = 1000;
    /// Bytes one call may send to one queue.
    pub const BYTES_PER_CALL: ByteSize = ByteSize::mib(1);
}

/// One declared queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    /// A message not processed within this is deleted.
    pub retention: Duration,
    pub max_message_bytes: ByteSize,
    /// Deliveries before the message goes to `dead_letter` (or is parked).
    pub max_attempts: u32,
    /// A delivered message is redelivered if not acknowledged within this.
    pub visibility_timeout: Duration,
    /// Where a message goes after `max_attempts` failed deliveries or
    /// when its chain is too deep; `None`: it is kept, undelivered, in
    /// this queue until its retention ends.
    pub dead_letter: Option<String>,
}

/// `queues = { NAME = "send" }` or `{ NAME = { access = "send", max_messages = 10, max_bytes = "1MiB" } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueGrant {
    /// Messages one call may send to this queue.
    pub max_messages_per_call: u32,
    /// Payload bytes one call may send to this queue.
    pub max_bytes_per_call: ByteSize,
}

/// `[queue.NAME]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub retention: Option<Spanned<Duration>>,
    pub max_message_bytes: Option<Spanned<ByteSize>>,
    pub max_attempts: Option<Spanned<u32>>,
    pub visibility_timeout: Option<Spanned<Duration>>,
    pub dead_letter: Option<Spanned<String>>,
}

/// Resolve `[queue.*]`: each queue's bounds, then its dead-letter chain.
pub(crate) fn resolve(
    out: &mut Collector<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<RawQueue>>,
) -> Vec<QueueSpec> {
    let mut queues = Vec::new();
    for (name, spanned) in raw {
        let label = name.get_ref();
        if !crate::stores::valid_resource_name(label) {
            out.at(
                Some(name.span()),
                "queue name must start with a lowercase letter and hold at most 64 lowercase letters, digits, `_` or `-`, like `[queue.telemetry]`",
            );
            continue;
        }
        let q = spanned.get_ref();
        let retention = bounded(
            out,
            label,
            "retention",
            q.retention.as_ref(),
            defaults::RETENTION,
            defaults::MAX_RETENTION,
        );
        let visibility_timeout = bounded(
            out,
            label,
            "visibility_timeout",
            q.visibility_timeout.as_ref(),
            defaults::VISIBILITY_TIMEOUT,
            defaults::MAX_VISIBILITY_TIMEOUT,
        );
        let max_message_bytes =
            q.max_message_bytes
                .as_ref()
                .map_or(defaults::MAX_MESSAGE_BYTES, |size| {
                    if *size.get_ref() > defaults::MESSAGE_BYTES_CEILING {
                        out.at(
                        Some(size.span()),
                        format!(
                            "queue `{label}`: `max_message_bytes` may be at most {}; keep large data in a store and send its key",
                            defaults::MESSAGE_BYTES_CEILING
                        ),
                    );
                    }
                    *size.get_ref()
                });
        let max_attempts = q.max_attempts.as_ref().map_or(defaults::MAX_ATTEMPTS, |n| {
            if *n.get_ref() == 0 || *n.get_ref() > defaults::ATTEMPTS_CEILING {
                out.at(
                    Some(n.span()),
                    format!(
                        "queue `{label}`: `max_attempts` must be between 1 and {}, like `max_attempts = 5`",
                        defaults::ATTEMPTS_CEILING
                    ),
                );
            }
            *n.get_ref()
        });
        queues.push(QueueSpec {
            name: label.clone(),
            retention,
            max_message_bytes,
            max_attempts,
            visibility_timeout,
            dead_letter: q.dead_letter.as_ref().map(|d| d.get_ref().clone()),
        });
    }
    check_dead_letters(out, raw, &queues);
    queues
}

fn bounded(
    out: &mut Collector<'_>,
    queue: &str,
    key: &str,
    value: Option<&Spanned<Duration>>,
    default: Duration,
    max: Duration,
) -> Duration {
    match value {
        Some(v) if *v.get_ref() > max => {
            out.at(
                Some(v.span()),
                format!("queue `{queue}`: `{key}` may be at most {max}; give a shorter one"),
            );
            *v.get_ref()
        }
        Some(v) => *v.get_ref(),
        None => default,
    }
}

/// Every `dead_letter` names another declared queue, and following them
/// never comes back to a queue already passed (a cycle would move a
/// poison message round for ever).
fn check_dead_letters(
    out: &mut Collector<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<RawQueue>>,
    queues: &[QueueSpec],
) {
    let declared: BTreeSet<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    let target = |name: &str| {
        queues
            .iter()
            .find(|q| q.name == name)
            .and_then(|q| q.dead_letter.as_deref())
    };
    for (name, spanned) in raw {
        let Some(dead_letter) = &spanned.get_ref().dead_letter else {
            continue;
        };
        let (label, to) = (name.get_ref(), dead_letter.get_ref());
        if !declared.contains(to.as_str()) {
            out.at(
                Some(dead_letter.span()),
                format!("queue `{label}`: its `dead_letter` queue is not declared; add a `[queue.NAME]` section for it or remove `dead_letter`"),
            );
            continue;
        }
        if to == label {
            out.at(
                Some(dead_letter.span()),
                format!("queue `{label}`: a queue cannot be its own `dead_letter`; declare a separate queue like `[queue.{label}-dead]`"),
            );
            continue;
        }
        let mut seen = BTreeSet::from([label.as_str()]);
        let mut next = Some(to.as_str());
        while let Some(current) = next {
            if !seen.insert(current) {
                out.at(
                    Some(dead_letter.span()),
                    format!("queue `{label}`: its `dead_letter` chain comes back to `{current}` (a cycle); the last queue of a chain must have no `dead_letter`"),
                );
                break;
            }
            next = target(current);
        }
    }
}

/// `[limits] max_event_depth`: 1 to [`defaults::EVENT_DEPTH_CEILING`].
pub(crate) fn resolve_depth(out: &mut Collector<'_>, value: Option<&Spanned<u32>>) -> u32 {
    match value {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > defaults::EVENT_DEPTH_CEILING => {
            out.at(
                Some(v.span()),
                format!(
                    "`max_event_depth` must be between 1 and {} (the default is {}): it stops a chain of events that triggers itself",
                    defaults::EVENT_DEPTH_CEILING,
                    defaults::MAX_EVENT_DEPTH
                ),
            );
            defaults::MAX_EVENT_DEPTH
        }
        Some(v) => *v.get_ref(),
        None => defaults::MAX_EVENT_DEPTH,
    }
}

/// `[limits] max_event_messages`: 1 to [`defaults::EVENT_MESSAGES_CEILING`].
pub(crate) fn resolve_chain_messages(out: &mut Collector<'_>, value: Option<&Spanned<u32>>) -> u32 {
    match value {
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > defaults::EVENT_MESSAGES_CEILING => {
            out.at(
                Some(v.span()),
                format!(
                    "`max_event_messages` must be between 1 and {} (the default is {}): it bounds the messages one chain of events sends in all, so fan-out cannot multiply the bill",
                    defaults::EVENT_MESSAGES_CEILING,
                    defaults::MAX_EVENT_MESSAGES
                ),
            );
            defaults::MAX_EVENT_MESSAGES
        }
        Some(v) => *v.get_ref(),
        None => defaults::MAX_EVENT_MESSAGES,
    }
}

const GRANT_KEYS: &str = "`access`, `max_messages`, `max_bytes`";

/// `grants.queues`: each names a declared queue, with access `send` and
/// a cap per call no smaller than one message.
pub(crate) fn resolve_grants(
    out: &mut Collector<'_>,
    function: &str,
    raw: &BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    queues: &[QueueSpec],
) -> BTreeMap<String, QueueGrant> {
    let mut grants = BTreeMap::new();
    for (name, value) in raw {
        let span = Some(value.span());
        let Some(queue) = queues.iter().find(|q| &q.name == name.get_ref()) else {
            out.at(
                Some(name.span()),
                format!("function `{function}`: grant `queues` names a queue that is not declared; add a `[queue.NAME]` section or remove the grant"),
            );
            continue;
        };
        let mut grant = QueueGrant {
            max_messages_per_call: defaults::MESSAGES_PER_CALL,
            max_bytes_per_call: defaults::BYTES_PER_CALL.max(queue.max_message_bytes),
        };
        let access = match value.get_ref() {
            toml::Value::String(access) => Some(access.as_str()),
            toml::Value::Table(table) => {
                if let Some(key) = table
                    .keys()
                    .find(|k| !["access", "max_messages", "max_bytes"].contains(&k.as_str()))
                {
                    let key = crate::text::visible(key);
                    out.at(
                        span.clone(),
                        format!("function `{function}`: unknown key `{key}` in a queue grant; use {GRANT_KEYS}"),
                    );
                }
                if let Some(n) = table.get("max_messages") {
                    match n.as_integer().and_then(|n| u32::try_from(n).ok()) {
                        Some(n) if (1..=defaults::MESSAGES_PER_CALL_CEILING).contains(&n) => {
                            grant.max_messages_per_call = n;
                        }
                        _ => out.at(
                            span.clone(),
                            format!(
                                "function `{function}`: `max_messages` must be a whole number from 1 to {}, like `max_messages = 10`",
                                defaults::MESSAGES_PER_CALL_CEILING
                            ),
                        ),
                    }
                }
                if let Some(size) = table.get("max_bytes") {
                    let parsed = match size {
                        toml::Value::String(text) => text.parse::<ByteSize>().ok(),
                        toml::Value::Integer(n) => {
                            u64::try_from(*n).ok().filter(|n| *n > 0).map(ByteSize)
                        }
                        _ => None,
                    };
                    match parsed {
                        Some(bytes) if bytes >= queue.max_message_bytes => {
                            grant.max_bytes_per_call = bytes;
                        }
                        Some(_) => out.at(
                            span.clone(),
                            format!(
                                "function `{function}`: `max_bytes` is below queue `{}`'s `max_message_bytes` ({}), so a full message could never be sent; raise it or lower `max_message_bytes`",
                                queue.name, queue.max_message_bytes
                            ),
                        ),
                        None => out.at(
                            span.clone(),
                            format!("function `{function}`: `max_bytes` must be a size like `1MiB`"),
                        ),
                    }
                }
                table.get("access").and_then(toml::Value::as_str)
            }
            _ => None,
        };
        if access != Some("send") {
            out.at(
                span,
                format!("function `{function}`: a queue grant is `\"send\"` (a function receives from a queue through `trigger = {{ queue = \"NAME\" }}`); write `queues = {{ {} = \"send\" }}`", queue.name),
            );
            continue;
        }
        grants.insert(queue.name.clone(), grant);
    }
    grants
}

#[cfg(test)]
#[path = "queues/tests.rs"]
mod tests;
