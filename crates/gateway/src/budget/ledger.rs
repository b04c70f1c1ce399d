//! Today's budget totals without a per-request lock (T04, issue 17).
//!
//! Every request touches four scopes (the app, its function, and the
//! caller of each); the app's and the function's are shared by every
//! request, so a mutex around them serialises the whole gateway. Here each
//! scope is a handful of atomic counters ([`Cells`]): a request adds its
//! price and its worst case, reads the totals back, and takes them off
//! again if they no longer fit ([`super::Meter::admit`]). Adds are never
//! lost and every read includes the reader's own add, so whatever the
//! interleaving an admitted request saw everything admitted before it:
//! the budget holds as it did under the lock. Locks remain only off the
//! fast path: starting a new day in a scope, sweeping idle callers at
//! midnight, and retrying a refusal at a budget's boundary.
//!
//! Per-caller scopes live in sharded maps (dashmap): a request takes a
//! shard's read lock, contended only by callers hashed to that shard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bulkhead_store::ledger::{LedgerKey, ScopeTotals, Tally};
use bulkhead_store::meter::Usage;
use dashmap::DashMap;
use dashmap::mapref::one::Ref;

/// The most one call adds to a counter, so sums of many calls stay far
/// from wrapping (2^48 MiB·µs is about 275,000 GB-seconds).
const MAX_ADD: u64 = 1 << 48;

/// Alert levels already logged today, as bits of [`DayCells::alerted`].
pub(super) const ALERTED_80: u8 = 1;
pub(super) const ALERTED_100: u8 = 2;

/// The most shared scopes whose totals a node remembers ([`Seen`]): past
/// it, a scope's share while the shared ledger is away is the plain one.
const MOST_SEEN: usize = 65_536;

/// What this node last learned of one shared scope (issue 16, T04): the
/// deployment's totals the shared ledger returned (spent and reserved,
/// every node's), and this node's own at that moment. While the ledger is
/// unreachable the node may add only its share of what was left then.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub deployment: Amount,
    pub local: Amount,
}

impl Seen {
    /// The ledger's `totals` for a scope, beside this node's `cells` of it
    /// on `day`: spent and reserved, both.
    pub fn of(totals: &ScopeTotals, cells: &Cells, day: i64) -> Self {
        Self {
            deployment: Amount::from(totals.spent).plus(Amount::from(totals.reserved)),
            local: cells.spent(day).plus(cells.reserved()),
        }
    }
}

/// What a budget limits: requests, memory × time, and bytes sent out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Amount {
    pub requests: u64,
    pub mib_us: u64,
    pub egress: u64,
}

impl Amount {
    pub const ONE_REQUEST: Amount = Amount {
        requests: 1,
        mib_us: 0,
        egress: 0,
    };

    pub fn of(usage: &Usage) -> Self {
        Self {
            requests: usage.requests.min(MAX_ADD),
            mib_us: usage.mib_us.min(MAX_ADD),
            egress: usage.egress_bytes().min(MAX_ADD),
        }
    }

    pub fn plus(self, other: Amount) -> Self {
        Self {
            requests: self.requests.saturating_add(other.requests),
            mib_us: self.mib_us.saturating_add(other.mib_us),
            egress: self.egress.saturating_add(other.egress),
        }
    }

    /// `n` times this much.
    pub fn times(self, n: u64) -> Self {
        Self {
            requests: self.requests.saturating_mul(n),
            mib_us: self.mib_us.saturating_mul(n),
            egress: self.egress.saturating_mul(n),
        }
    }

    pub fn minus(self, other: Amount) -> Self {
        Self {
            requests: self.requests.saturating_sub(other.requests),
            mib_us: self.mib_us.saturating_sub(other.mib_us),
            egress: self.egress.saturating_sub(other.egress),
        }
    }

    /// As a meter `Usage`, for pricing: egress counted as response bytes.
    pub fn usage(self) -> Usage {
        Usage {
            requests: self.requests,
            mib_us: self.mib_us,
            response_bytes: self.egress,
            ..Usage::default()
        }
    }
}

/// The shared ledger counts the same three (issue 16).
impl From<Tally> for Amount {
    fn from(t: Tally) -> Self {
        Self {
            requests: t.requests,
            mib_us: t.mib_us,
            egress: t.egress,
        }
    }
}

impl From<Amount> for Tally {
    fn from(a: Amount) -> Self {
        Self {
            requests: a.requests,
            mib_us: a.mib_us,
            egress: a.egress,
        }
    }
}

/// One scope: what running calls hold (across days: a call admitted
/// before midnight releases its reservation after), and what is spent, in
/// two slots by the day's parity so a new day starts without touching the
/// old one. Aligned so two scopes never share a cache line.
#[repr(align(128))]
pub(super) struct Cells {
    reserved_mib_us: AtomicU64,
    reserved_egress: AtomicU64,
    days: [DayCells; 2],
}

struct DayCells {
    /// The UTC day these counters are for.
    day: AtomicI64,
    requests: AtomicU64,
    mib_us: AtomicU64,
    egress: AtomicU64,
    alerted: AtomicU8,
}

impl DayCells {
    fn new(day: i64) -> Self {
        Self {
            day: AtomicI64::new(day),
            requests: AtomicU64::new(0),
            mib_us: AtomicU64::new(0),
            egress: AtomicU64::new(0),
            alerted: AtomicU8::new(0),
        }
    }
}

impl Cells {
    pub fn new(day: i64) -> Self {
        let mut days = [DayCells::new(i64::MIN), DayCells::new(i64::MIN)];
        days[slot(day)] = DayCells::new(day);
        Self {
            reserved_mib_us: AtomicU64::new(0),
            reserved_egress: AtomicU64::new(0),
            days,
        }
    }

    fn today(&self, day: i64) -> &DayCells {
        &self.days[slot(day)]
    }

    /// Make `day`'s slot current: the first request of a day clears what
    /// the slot held two days ago. Locked, once per scope and day.
    pub fn fresh(&self, day: i64, roll: &Mutex<()>) {
        let cells = self.today(day);
        if cells.day.load(Ordering::Acquire) == day {
            return;
        }
        let _one_at_a_time = lock(roll);
        if cells.day.load(Ordering::Acquire) != day {
            cells.requests.store(0, Ordering::Relaxed);
            cells.mib_us.store(0, Ordering::Relaxed);
            cells.egress.store(0, Ordering::Relaxed);
            cells.alerted.store(0, Ordering::Relaxed);
            cells.day.store(day, Ordering::Release);
        }
    }

    /// Spent on `day` (nothing if its slot holds another day).
    pub fn spent(&self, day: i64) -> Amount {
        let cells = self.today(day);
        if cells.day.load(Ordering::Acquire) != day {
            return Amount::default();
        }
        Amount {
            requests: cells.requests.load(Ordering::Acquire),
            mib_us: cells.mib_us.load(Ordering::Acquire),
            egress: cells.egress.load(Ordering::Acquire),
        }
    }

    /// What running calls hold. Read it before [`spent`](Self::spent): a
    /// call settling adds to spent before it releases its reservation, so
    /// in this order a reader never misses both.
    pub fn reserved(&self) -> Amount {
        Amount {
            requests: 0,
            mib_us: self.reserved_mib_us.load(Ordering::Acquire),
            egress: self.reserved_egress.load(Ordering::Acquire),
        }
    }

    /// Add `spent` to `day` (made [`fresh`](Self::fresh)) and reserve
    /// `worst`.
    pub fn charge(&self, day: i64, spent: Amount, worst: Amount) {
        self.add_spent(day, spent);
        self.reserved_mib_us
            .fetch_add(worst.mib_us, Ordering::AcqRel);
        self.reserved_egress
            .fetch_add(worst.egress, Ordering::AcqRel);
    }

    /// Take back a [`charge`](Self::charge) of the same day.
    pub fn uncharge(&self, day: i64, spent: Amount, worst: Amount) {
        self.unreserve(worst);
        self.sub_spent(day, spent);
    }

    /// A call ended having used `used`: spent first, then the reservation
    /// released, so a concurrent reader sees too much, never too little.
    pub fn settle(&self, day: i64, used: Amount, worst: Amount) {
        self.add_spent(day, used);
        self.unreserve(worst);
    }

    pub fn unreserve(&self, worst: Amount) {
        saturating_sub(&self.reserved_mib_us, worst.mib_us);
        saturating_sub(&self.reserved_egress, worst.egress);
    }

    fn add_spent(&self, day: i64, spent: Amount) {
        let cells = self.today(day);
        if spent.requests > 0 {
            cells.requests.fetch_add(spent.requests, Ordering::AcqRel);
        }
        if spent.mib_us > 0 {
            cells.mib_us.fetch_add(spent.mib_us, Ordering::AcqRel);
        }
        if spent.egress > 0 {
            cells.egress.fetch_add(spent.egress, Ordering::AcqRel);
        }
    }

    /// Take `spent` back from `day`, if its slot still holds that day.
    pub fn sub_spent(&self, day: i64, spent: Amount) {
        let cells = self.today(day);
        if cells.day.load(Ordering::Acquire) != day {
            return;
        }
        saturating_sub(&cells.requests, spent.requests);
        saturating_sub(&cells.mib_us, spent.mib_us);
        saturating_sub(&cells.egress, spent.egress);
    }

    /// Mark `level` as alerted on `day`; true the first time only.
    pub fn alert_once(&self, day: i64, level: u8) -> bool {
        self.today(day).alerted.fetch_or(level, Ordering::AcqRel) & level == 0
    }

    /// Whether `level` was alerted on `day`.
    pub fn alerted(&self, day: i64, level: u8) -> bool {
        let cells = self.today(day);
        cells.day.load(Ordering::Acquire) == day
            && cells.alerted.load(Ordering::Acquire) & level != 0
    }

    /// Nothing reserved and nothing spent on `day`: safe to forget.
    fn idle(&self, day: i64) -> bool {
        let reserved = self.reserved();
        reserved == Amount::default() && self.spent(day) == Amount::default()
    }
}

fn slot(day: i64) -> usize {
    usize::from(day.rem_euclid(2) == 1)
}

/// Subtract without going below zero. Only mismatched releases (which the
/// types prevent) or a clock jump could need it, so a CAS loop is fine.
fn saturating_sub(cell: &AtomicU64, amount: u64) {
    if amount == 0 {
        return;
    }
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(amount))
    });
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are consistent at every step (unit, or a map
    // only inserted into), so a panic elsewhere leaves nothing half-done.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A function's scope and its callers'. Shared by every version that
/// serves a function of that name.
pub(super) struct FunctionBooks {
    pub cells: Cells,
    pub callers: DashMap<Arc<str>, Cells>,
}

/// Every scope's books; shared with the versions that follow (T04, T19).
pub(super) struct Ledger {
    /// The day whose start last swept idle callers.
    day: AtomicI64,
    pub app: Cells,
    pub app_callers: DashMap<Arc<str>, Cells>,
    /// Looked up when a version's meter is built, never per request.
    functions: Mutex<HashMap<Arc<str>, Arc<FunctionBooks>>>,
    /// Clears a scope's slot for a new day.
    pub roll: Mutex<()>,
    /// Sweeps idle callers at a new day. Never held with a map's guard.
    sweep: Mutex<()>,
    /// Serialises retries of refusals at a budget's boundary.
    pub boundary: Mutex<()>,
    /// The deployment's shared totals as last seen, today's only.
    seen: Mutex<HashMap<LedgerKey, Seen>>,
}

impl Ledger {
    pub fn new(day: i64) -> Self {
        Self {
            day: AtomicI64::new(day),
            app: Cells::new(day),
            app_callers: DashMap::new(),
            functions: Mutex::new(HashMap::new()),
            roll: Mutex::new(()),
            sweep: Mutex::new(()),
            boundary: Mutex::new(()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Remember what the shared ledger said of `key` (bounded: a scope
    /// not remembered keeps the plain share).
    pub fn see(&self, key: &LedgerKey, seen: Seen) {
        let mut all = lock(&self.seen);
        if all.len() < MOST_SEEN || all.contains_key(key) {
            all.insert(key.clone(), seen);
        }
    }

    /// What the shared ledger last said of `key`, if it is remembered.
    pub fn seen(&self, key: &LedgerKey) -> Option<Seen> {
        lock(&self.seen).get(key).copied()
    }

    pub fn function(&self, name: &Arc<str>) -> Arc<FunctionBooks> {
        let day = self.day.load(Ordering::Acquire);
        lock(&self.functions)
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(FunctionBooks {
                    cells: Cells::new(day),
                    callers: DashMap::new(),
                })
            })
            .clone()
    }

    /// At the first request of a new day, forget the callers that neither
    /// hold a reservation nor spent anything today: the maps hold one
    /// day's callers, as they did under the lock. Call it holding no guard
    /// of the maps.
    pub fn roll(&self, day: i64) {
        if self.day.load(Ordering::Acquire) >= day {
            return;
        }
        let _one_at_a_time = lock(&self.sweep);
        if self.day.load(Ordering::Acquire) >= day {
            return;
        }
        // A caller's entry is removed under its shard's write lock, while
        // every add happens under a read lock: an add never lands in an
        // entry already removed.
        self.app_callers.retain(|_, cells| !cells.idle(day));
        lock(&self.seen).retain(|key, _| key.day >= day);
        let functions: Vec<_> = lock(&self.functions).values().cloned().collect();
        for books in functions {
            books.callers.retain(|_, cells| !cells.idle(day));
        }
        self.day.store(day, Ordering::Release);
    }
}

/// `key`'s cells in `map`, made on first use; the guard keeps the entry
/// from being swept while it is used.
pub(super) fn cells_of<'m>(
    map: &'m DashMap<Arc<str>, Cells>,
    key: &Arc<str>,
    day: i64,
) -> Ref<'m, Arc<str>, Cells> {
    if let Some(found) = map.get(&**key) {
        return found;
    }
    map.entry(key.clone())
        .or_insert_with(|| Cells::new(day))
        .downgrade()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(requests: u64, mib_us: u64) -> Amount {
        Amount {
            requests,
            mib_us,
            egress: 0,
        }
    }

    /// T04 at midnight: what yesterday's still-running calls reserved is
    /// kept into the new day (so they can release it), nothing they spent
    /// yesterday counts today, and idle callers are forgotten.
    #[test]
    fn a_new_day_keeps_only_what_running_calls_hold() {
        let ledger = Ledger::new(10);
        let (running, idle): (Arc<str>, Arc<str>) =
            ("ip:198.51.100.1".into(), "ip:198.51.100.2".into());
        let books = ledger.function(&"second".into());
        for cells in [
            &ledger.app,
            &*cells_of(&ledger.app_callers, &running, 10),
            &books.cells,
            &*cells_of(&books.callers, &running, 10),
        ] {
            cells.fresh(10, &ledger.roll);
            cells.charge(10, amount(5, 100), amount(0, 40));
        }
        cells_of(&ledger.app_callers, &idle, 10).charge(10, amount(1, 1), Amount::default());

        ledger.roll(11);
        assert!(ledger.app_callers.get(&*idle).is_none());
        let caller = cells_of(&ledger.app_callers, &running, 11);
        for cells in [&ledger.app, &*caller, &books.cells] {
            cells.fresh(11, &ledger.roll);
            assert_eq!(cells.spent(11), Amount::default());
            assert_eq!(cells.reserved(), amount(0, 40));
        }
        // The call ends after midnight: its reservation comes off, what it
        // used counts today.
        ledger.app.settle(11, amount(0, 30), amount(0, 40));
        assert_eq!(ledger.app.reserved(), Amount::default());
        assert_eq!(ledger.app.spent(11), amount(0, 30));
        // Two days later the slot of day 11 is cleared for day 13.
        ledger.app.fresh(13, &ledger.roll);
        assert_eq!(ledger.app.spent(13), Amount::default());
        assert_eq!(ledger.app.spent(11), Amount::default());
    }
}
