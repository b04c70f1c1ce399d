//! Shares of the audit writer's queue (T09). Every event a request or a
//! guest causes is recorded with its source: the caller key the gateway
//! uses (`sub:…` or `ip:…`). One source may hold at most [`PER_SOURCE`]
//! events queued at once, and all sources together at most
//! [`TRAFFIC_SHARE`], so that neither one flooding caller nor all callers
//! together can crowd other callers' records, or the operator's and the
//! trail's own (unsourced) records, out of the queue. An event over its
//! share is dropped and counted under its source, and the writer puts the
//! counts on the record (`audit.dropped`): the gap is never silent.
//!
//! The request path pays one short lock of one of [`SHARDS`] maps and an
//! atomic; the writer gives the places back as it takes events.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::locked;

/// Events the writer's queue holds.
pub(crate) const CHANNEL_CAPACITY: usize = 16_384;

/// Events one source may hold queued at once.
pub(crate) const PER_SOURCE: u32 = (CHANNEL_CAPACITY / 16) as u32;

/// Events all sources together may hold queued: the rest of the queue is
/// kept for unsourced (admin, CLI and system) events.
pub(crate) const TRAFFIC_SHARE: usize = CHANNEL_CAPACITY / 4 * 3;

/// Sources an `audit.dropped` record names; the drops of any others are
/// counted together (`other_sources`), so memory and the record stay
/// bounded whatever number of sources a flood uses.
const MAX_LISTED: usize = 32;

/// The longest source name a record keeps.
const MAX_SOURCE_TEXT: usize = 256;

const SHARDS: usize = 16;

/// Places held in the queue, by source, and what was dropped.
#[derive(Default)]
pub(crate) struct Quota {
    shards: [Mutex<HashMap<Arc<str>, u32>>; SHARDS],
    hasher: RandomState,
    /// Sourced events queued, all sources together.
    queued: AtomicUsize,
    dropped: Mutex<Dropped>,
}

/// Sourced events dropped and not yet on the record.
#[derive(Default)]
pub(crate) struct Dropped {
    /// By source, at most [`MAX_LISTED`] of them.
    pub by_source: HashMap<Arc<str>, u64>,
    /// Of the sources past those.
    pub other_sources: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.by_source
            .values()
            .fold(self.other_sources, |sum, n| sum.saturating_add(*n))
    }

    /// The `sources` detail of an `audit.dropped` record.
    pub fn sources_detail(&self) -> serde_json::Map<String, serde_json::Value> {
        self.by_source
            .iter()
            .map(|(source, n)| (cut(source).to_string(), (*n).into()))
            .collect()
    }
}

impl Quota {
    /// Take a place in the queue for one event of `source`; `false` when
    /// the source, or all sources together, hold their share already.
    pub fn take(&self, source: &Arc<str>) -> bool {
        let mut shard = self.shard(source);
        let mine = shard.get(source).copied().unwrap_or(0);
        if mine >= PER_SOURCE {
            return false;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= TRAFFIC_SHARE {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        *shard.entry(source.clone()).or_insert(0) += 1;
        true
    }

    /// Give back `n` places of `source`: the writer took its events, or
    /// the queue refused one.
    pub fn give_back(&self, source: &Arc<str>, n: u32) {
        let mut shard = self.shard(source);
        if let Some(held) = shard.get_mut(source) {
            let n = n.min(*held);
            *held -= n;
            if *held == 0 {
                shard.remove(source);
            }
            self.queued.fetch_sub(n as usize, Ordering::AcqRel);
        }
    }

    /// Count one dropped event of `source`.
    pub fn dropped(&self, source: &Arc<str>) {
        let mut dropped = locked(&self.dropped);
        if let Some(n) = dropped.by_source.get_mut(source) {
            *n = n.saturating_add(1);
        } else if dropped.by_source.len() < MAX_LISTED {
            dropped.by_source.insert(source.clone(), 1);
        } else {
            dropped.other_sources = dropped.other_sources.saturating_add(1);
        }
    }

    /// Put back counts taken for a record that could not be written.
    pub fn restore(&self, counts: Dropped) {
        if counts.total() == 0 {
            return;
        }
        let mut dropped = locked(&self.dropped);
        dropped.other_sources = dropped.other_sources.saturating_add(counts.other_sources);
        for (source, n) in counts.by_source {
            if let Some(held) = dropped.by_source.get_mut(&source) {
                *held = held.saturating_add(n);
            } else if dropped.by_source.len() < MAX_LISTED {
                dropped.by_source.insert(source, n);
            } else {
                dropped.other_sources = dropped.other_sources.saturating_add(n);
            }
        }
    }

    /// The drops counted since the last call.
    pub fn take_dropped(&self) -> Dropped {
        std::mem::take(&mut *locked(&self.dropped))
    }

    fn shard(&self, source: &str) -> MutexGuard<'_, HashMap<Arc<str>, u32>> {
        let i = (self.hasher.hash_one(source) % SHARDS as u64) as usize;
        locked(&self.shards[i])
    }
}

/// `source` as a record keeps it: at most [`MAX_SOURCE_TEXT`] bytes, cut
/// on a character boundary (the gateway's keys are shorter; this bounds
/// what any other caller passes).
fn cut(source: &str) -> &str {
    if source.len() <= MAX_SOURCE_TEXT {
        return source;
    }
    let mut end = MAX_SOURCE_TEXT;
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    &source[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_holds_at_most_its_share_and_gets_it_back() {
        let quota = Quota::default();
        let a: Arc<str> = "ip:192.0.2.1".into();
        let b: Arc<str> = "ip:192.0.2.2".into();
        let taken = (0..2 * PER_SOURCE).filter(|_| quota.take(&a)).count();
        assert_eq!(taken, PER_SOURCE as usize);
        assert!(quota.take(&b), "another source still has room");
        quota.give_back(&a, PER_SOURCE);
        assert!(quota.take(&a));
        quota.give_back(&a, 1);
        quota.give_back(&b, 1);
        assert_eq!(quota.queued.load(Ordering::Relaxed), 0);
        assert!(quota.shards.iter().all(|s| locked(s).is_empty()));
    }

    #[test]
    fn all_sources_together_hold_at_most_the_traffic_share() {
        let quota = Quota::default();
        let mut taken = 0;
        for i in 0..64 {
            let source: Arc<str> = format!("ip:192.0.2.{i}").into();
            taken += (0..PER_SOURCE).filter(|_| quota.take(&source)).count();
        }
        assert_eq!(taken, TRAFFIC_SHARE);
    }

    #[test]
    fn drops_of_sources_past_the_listed_ones_are_counted_together() {
        let quota = Quota::default();
        for i in 0..MAX_LISTED + 10 {
            let source: Arc<str> = format!("ip:192.0.2.{i}").into();
            quota.dropped(&source);
            quota.dropped(&source);
        }
        let dropped = quota.take_dropped();
        assert_eq!(dropped.by_source.len(), MAX_LISTED);
        assert_eq!(dropped.other_sources, 20);
        assert_eq!(dropped.total(), 2 * (MAX_LISTED as u64 + 10));
        assert_eq!(quota.take_dropped().total(), 0);
        let long: Arc<str> = format!("sub:{}", "é".repeat(400)).into();
        quota.dropped(&long);
        let detail = quota.take_dropped().sources_detail();
        assert!(detail.keys().all(|k| k.len() <= MAX_SOURCE_TEXT));
    }
}
