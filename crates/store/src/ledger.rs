//! The budget ledger every node of a deployment shares (issue 16, T04):
//! today's totals per budget scope in PostgreSQL, so a daily budget holds
//! across nodes exactly, reservations included.
//!
//! - **Admission** is one transaction: each of the request's scopes that
//!   has a limit gets its request and its worst case added with an upsert
//!   that returns the new totals and keeps the row locked; the caller's
//!   `decide` judges them, and the transaction commits only if they fit.
//!   Row locks serialise two nodes admitting into one scope, so the
//!   budget is overshot by at most the last call admitted, as on one node.
//!   Rows are always locked in one order ([`LedgerKey`]'s), so two
//!   admissions never deadlock.
//! - **Leases.** One transaction per call caps a busy scope at what its
//!   locked row lets through (about 650 calls/s here), so while a budget
//!   is far from spent a node reserves several calls at once (a lease:
//!   their requests and worst cases, counted as reserved by every node)
//!   and admits from it without the database. A lease is granted only if
//!   `decide` finds that, after it, every live node could still take
//!   [`LEASE_HEADROOM`] as large; near the end of a budget every call goes to the
//!   database again, so leases never let a budget be overshot. What a
//!   lease does not use is given back within [`LEASE_FOR_MS`]: until then
//!   another node's call may be refused as "held", never admitted past.
//! - **Reservations** are also recorded per node (`budget_holds`) and each
//!   node beats a heartbeat (`budget_nodes`). When a node stops beating
//!   for [`DEAD_AFTER_MS`] (killed mid-call), any other node gives its
//!   reservations back, so a crash never holds a budget until midnight.
//!   Requests it admitted stay counted: they were charged.
//! - **Settling** a call turns its reservation into what it used, on the
//!   day it was admitted. Calls that end are summed per scope and settled
//!   together every [`SETTLE_EVERY`] (a reservation stays counted until
//!   then: the safe side). A settlement that cannot reach the database is
//!   kept (at most [`MAX_UNSETTLED`]) and retried by the heartbeat, so a
//!   blip holds reservations a little longer, never forever.
//! - Rows name callers (personal data, T20) and are deleted two days on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tracing::{error, warn};

use crate::pg::{Pg, PgError};
use crate::{locked, now_ms};

/// A node that has not beaten for this long is dead: its reservations
/// are given back by the others.
pub const DEAD_AFTER_MS: i64 = 30_000;
/// How often a node beats, retries settlements and sweeps.
const BEAT_EVERY: Duration = Duration::from_secs(5);
/// How often the calls that ended are settled and spent leases given back.
const SETTLE_EVERY: Duration = Duration::from_millis(100);
/// How soon usage kept during an outage reaches the carried file (T04:
/// what a node killed then loses).
const CARRY_EVERY: Duration = Duration::from_secs(1);
/// Settlements kept for a retry while the database is unreachable.
const MAX_UNSETTLED: usize = 100_000;
/// Kept settlements a settling retries (the beat retries them all).
const ON_TICK: usize = 256;
/// Days of totals kept (today and yesterday: a call admitted before
/// midnight settles after it).
const KEEP_DAYS: i64 = 2;
/// How long a lease may be admitted from; what it did not use is then
/// given back.
pub const LEASE_FOR_MS: i64 = 1_000;
/// The calls of a first lease, and the fewest a lease asks for.
const FIRST_LEASE: u64 = 8;
/// The most calls one lease asks for (a lease used up within
/// [`LEASE_FOR_MS`] doubles the next one's size, up to this).
const MOST_LEASE: u64 = 1_024;
/// The most scopes a node holds leases on (many callers, each with a
/// budget of their own): past it, calls are admitted one by one.
const MOST_LEASED_SCOPES: usize = 65_536;
/// A lease is granted only if, after it, this many leases as large per
/// live node would still fit: a budget's last calls go one by one, and a
/// node that has not yet counted the others (it counts every beat) still
/// leases only a small part of what is left.
const LEASE_HEADROOM: u64 = 4;
/// A lease's bookkeeping is forgotten this long after it ended.
const FORGET_LEASE_MS: i64 = 60_000;

/// One budget scope of one day: which (`scope`, an index the caller
/// gives meaning to), of which function and caller (empty when the scope
/// is app-wide or not per caller).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerKey {
    pub day: i64,
    pub scope: i16,
    pub function: Arc<str>,
    pub caller: Arc<str>,
}

impl LedgerKey {
    /// The function's and the caller's name, as the statements take them.
    fn names(&self) -> [&str; 2] {
        [&self.function, &self.caller]
    }
}

/// What a budget counts: requests, memory × time (MiB·µs), bytes out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub mib_us: u64,
    pub egress: u64,
}

impl Tally {
    fn plus(self, other: Tally) -> Tally {
        Tally {
            requests: self.requests.saturating_add(other.requests),
            mib_us: self.mib_us.saturating_add(other.mib_us),
            egress: self.egress.saturating_add(other.egress),
        }
    }

    /// `calls` calls' worst case, their requests counted.
    fn of_calls(self, calls: u64) -> Tally {
        Tally {
            requests: calls,
            mib_us: self.mib_us.saturating_mul(calls),
            egress: self.egress.saturating_mul(calls),
        }
    }
}

/// A scope's totals after an admission's adds: what is spent (this
/// request included, when admitted alone) and what running calls and
/// leases reserve (its own included; `requests`: leased requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeTotals {
    pub spent: Tally,
    pub reserved: Tally,
}

/// How the ledger took a call; its settlement says the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// In a transaction of its own: its request is spent already.
    Alone,
    /// From a lease this node holds: its request is reserved until it
    /// settles.
    Leased,
}

/// Calls of one set of scopes that ended since the last settling, summed.
#[derive(Debug, Clone, Copy, Default)]
struct Ended {
    /// Added to what was spent (`requests`: leased calls' requests, and
    /// calls admitted on the node's share).
    used: Tally,
    /// Taken off what is reserved, as far as this node holds it
    /// (`requests`: leased requests).
    worst: Tally,
    /// Calls admitted alone that never ran: their requests come off.
    unran: u64,
}

impl Ended {
    fn add(&mut self, other: Ended) {
        self.used = self.used.plus(other.used);
        self.worst = self.worst.plus(other.worst);
        self.unran = self.unran.saturating_add(other.unran);
    }
}

/// What ended under one set of scopes, on its way to the database.
#[derive(Debug, Clone)]
struct Settlement {
    keys: Vec<LedgerKey>,
    ended: Ended,
}

/// A lease on one set of scopes (see the module's notes).
#[derive(Debug, Clone, Copy)]
struct Lease {
    worst: Tally,
    /// Calls it may still admit.
    left: u64,
    /// How many calls the next lease asks for.
    size: u64,
    until_ms: i64,
    /// No lease is asked for before then: the last did not fit.
    refused_until_ms: i64,
}

/// What the leases say of a call about to be admitted.
enum FromLease {
    Taken,
    /// Ask the database for this many calls (1: no lease).
    Ask(u64),
}

/// The shared ledger of one app environment, as one node sees it.
pub struct SharedLedger {
    pg: Arc<Pg>,
    /// This process's id in `budget_holds` and `budget_nodes`: fresh at
    /// every start, so a restarted node's old reservations are reaped.
    node: String,
    /// Usage the database did not take yet, summed per set of scopes.
    unsettled: Mutex<HashMap<Vec<LedgerKey>, Ended>>,
    /// Held while settlements are applied or holds reconciled: a stop's
    /// last settling never races a beat (outside review).
    settling: Mutex<()>,
    /// Calls that ended since the last settling, per set of scopes.
    ended: Arc<Mutex<HashMap<Vec<LedgerKey>, Ended>>>,
    leases: Mutex<HashMap<Vec<LedgerKey>, Lease>>,
    /// What this node's admitted, unsettled calls and its leases reserve,
    /// per scope: the truth its `budget_holds` rows are brought back to at
    /// every beat (outside review: a commit whose answer was lost, or a
    /// late settlement, left holds that no settlement would ever take off).
    in_flight: Arc<Mutex<HashMap<LedgerKey, Tally>>>,
    /// Nodes that beat within [`DEAD_AFTER_MS`], at the last beat: what a
    /// node divides the budgets by while the ledger is unreachable.
    live_nodes: AtomicUsize,
    /// After a failed call, requests do not try the database again until
    /// then (ms since the epoch): they decide on the node's share at once
    /// instead of each waiting out a timeout. The heartbeat still tries.
    down_until_ms: AtomicI64,
    /// Where what is still unsettled at a stop is kept for the next start
    /// ([`Self::carry_in`]).
    carry: std::sync::OnceLock<std::path::PathBuf>,
    /// The carried file may hold something: removed once nothing waits.
    carried_on_disk: std::sync::atomic::AtomicBool,
    /// Usage was kept since the carried file was last written.
    carry_behind: std::sync::atomic::AtomicBool,
}

/// One kept settlement as the carried file holds it: its scopes (day,
/// scope, function, caller) and the usage (requests, MiB·µs, egress).
type CarriedSettlement = (Vec<(i64, i16, String, String)>, (u64, u64, u64));

/// How long requests leave the database alone after a failed call.
const BACK_OFF_MS: i64 = 2_000;
/// The longest a request's ledger call may take (a database that stops
/// answering without closing, or rows locked too long): then the node
/// decides on its share. A request never waits on the network for longer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a heartbeat may take (it reconciles every scope this node
/// holds): well inside [`DEAD_AFTER_MS`], so a stalled beat fails, is
/// logged and is tried again, instead of hanging while the others take
/// this node for dead (third outside review).
const BEAT_TIMEOUT: Duration = Duration::from_secs(10);

fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn small(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl SharedLedger {
    /// Create the ledger's tables if missing, register this node and
    /// start its heartbeat (which stops when the ledger is dropped).
    pub fn open(pg: Arc<Pg>) -> Result<Arc<Self>, PgError> {
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).map_err(PgError::of)?;
        let ledger = Arc::new(Self {
            node: hex::encode(id),
            unsettled: Mutex::default(),
            settling: Mutex::default(),
            ended: Arc::default(),
            leases: Mutex::default(),
            in_flight: Arc::default(),
            live_nodes: AtomicUsize::new(1),
            down_until_ms: AtomicI64::new(0),
            carry: std::sync::OnceLock::new(),
            carried_on_disk: std::sync::atomic::AtomicBool::new(false),
            carry_behind: std::sync::atomic::AtomicBool::new(false),
            pg,
        });
        let migration = migration(ledger.pg.schema());
        ledger.pg.call(move |pool| async move {
            let client = pool.get().await.map_err(PgError::of)?;
            client.batch_execute(&migration).await.map_err(PgError::of)
        })?;
        ledger.beat()?;
        let weak = Arc::downgrade(&ledger);
        std::thread::Builder::new()
            .name("bulkhead-ledger".into())
            .spawn(move || heartbeat(weak))
            .map_err(PgError::of)?;
        Ok(ledger)
    }

    /// Keep, in `path`, what is still unsettled when this node stops (a
    /// stop during an outage: usage admitted on its share), and apply now
    /// what a previous run of this node kept there (issue 16, T04:
    /// outside review, a stop during an outage let the deployment spend
    /// that usage again). Called once, by the state that opened the
    /// ledger.
    pub fn carry_in(&self, path: std::path::PathBuf) {
        let carried: Vec<CarriedSettlement> = crate::carried::load(&path);
        let count = carried.len();
        for (keys, (requests, mib_us, egress)) in carried {
            if keys.is_empty()
                || !keys.iter().all(|(_, _, function, caller)| {
                    crate::carried::sound_name(function) && crate::carried::sound_name(caller)
                })
            {
                tracing::error!(target: "bulkhead::budget", "a carried settlement names a function or caller the shared ledger cannot take; dropped");
                continue;
            }
            let keys: Vec<LedgerKey> = keys
                .into_iter()
                .map(|(day, scope, function, caller)| LedgerKey {
                    day,
                    scope,
                    function: function.into(),
                    caller: caller.into(),
                })
                .collect();
            let used = Tally {
                requests,
                mib_us,
                egress,
            };
            self.keep(Settlement {
                keys,
                ended: Ended {
                    used,
                    ..Ended::default()
                },
            });
        }
        if count > 0 {
            self.retry_unsettled(MAX_UNSETTLED);
            let left = locked(&self.unsettled).len();
            tracing::info!(target: "bulkhead::budget", carried = count, left, "usage the last run admitted on its share applied to the shared ledger");
            if left == 0 {
                crate::carried::remove(&path);
            } else {
                self.carried_on_disk.store(true, Ordering::Release);
            }
        }
        let _ = self.carry.set(path);
    }

    /// This node's id (for tests and logs).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Admit a call under `keys`, reserving `worst`: from a lease this
    /// node holds, or by the database if `decide` accepts the totals
    /// (given in `keys` order, this call's adds included). `decide` is
    /// also asked about a lease, with `ahead`: the calls' worth that must
    /// still fit after it (0 for a call alone). `Ok(Err(r))`: refused,
    /// nothing kept.
    pub async fn admit<R: Send + 'static>(
        &self,
        keys: &[LedgerKey],
        worst: Tally,
        decide: impl Fn(&[ScopeTotals], u64) -> Result<(), R> + Clone + Send + 'static,
    ) -> Result<Result<Admitted, R>, PgError> {
        let now = now_ms();
        let size = match self.take_leased(keys, worst, now) {
            FromLease::Taken => return Ok(Ok(Admitted::Leased)),
            FromLease::Ask(size) => size,
        };
        if self.is_down() {
            return Err(PgError(
                "the budget ledger did not answer a moment ago".into(),
            ));
        }
        if size > 1 {
            let nodes = u64::try_from(self.live_nodes()).unwrap_or(u64::MAX);
            let ahead = size.saturating_mul(nodes).saturating_mul(LEASE_HEADROOM);
            match self
                .admit_calls(keys, worst, size, ahead, decide.clone())
                .await?
            {
                Ok(()) => {
                    self.leased(keys, worst, size - 1, now);
                    return Ok(Ok(Admitted::Leased));
                }
                Err(_) => self.lease_refused(keys, now),
            }
        }
        Ok(self
            .admit_calls(keys, worst, 1, 0, decide)
            .await?
            .map(|()| Admitted::Alone))
    }

    /// One admission transaction for `calls` calls (more than one: a
    /// lease, whose requests are reserved, not spent).
    async fn admit_calls<R: Send + 'static>(
        &self,
        keys: &[LedgerKey],
        worst: Tally,
        calls: u64,
        ahead: u64,
        decide: impl FnOnce(&[ScopeTotals], u64) -> Result<(), R> + Send + 'static,
    ) -> Result<Result<(), R>, PgError> {
        let schema = self.pg.schema().to_string();
        let node = self.node.clone();
        let order = locking_order(keys);
        let keys = keys.to_vec();
        let in_flight = self.in_flight.clone();
        let mut held = worst.of_calls(calls);
        let spent = if calls > 1 {
            0
        } else {
            held.requests = 0;
            1
        };
        // Cancel-safe (outside review, high): a request dropped while its
        // admission runs (its client gone) gives back what was admitted
        // for it, at the next settling, instead of holding it for ever.
        let (ended, undo_keys) = (self.ended.clone(), keys.clone());
        let undo = move |admitted: Result<Result<(), R>, PgError>| {
            if let Ok(Ok(())) = admitted {
                let back = Ended {
                    used: Tally::default(),
                    worst: held,
                    unran: u64::try_from(spent).unwrap_or(0),
                };
                end_into(&ended, &undo_keys, back);
            }
        };
        self.watch(self.pg.call_async_or(move |pool| within(async move {
            let mut client = pool.get().await.map_err(PgError::of)?;
            let tx = client.transaction().await.map_err(PgError::of)?;
            let add = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.budget_days AS d
                         (day, scope, function, caller, requests, mib_us, egress,
                          reserved_requests, reserved_mib_us, reserved_egress)
                     VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $7, $8)
                     ON CONFLICT (day, scope, function, caller) DO UPDATE SET
                         requests = d.requests + EXCLUDED.requests,
                         reserved_requests = d.reserved_requests + EXCLUDED.reserved_requests,
                         reserved_mib_us = d.reserved_mib_us + EXCLUDED.reserved_mib_us,
                         reserved_egress = d.reserved_egress + EXCLUDED.reserved_egress
                     RETURNING requests, mib_us, egress, reserved_requests, reserved_mib_us, reserved_egress"
                ))
                .await
                .map_err(PgError::of)?;
            let adds = [spent, big(held.requests), big(held.mib_us), big(held.egress)];
            let mut totals = vec![ScopeTotals::default(); keys.len()];
            for &i in &order {
                let k = &keys[i];
                let row = tx
                    .query_one(&add, &params(k, &k.names(), &adds))
                    .await
                    .map_err(PgError::of)?;
                totals[i] = totals_of(&row)?;
            }
            if let Err(refused) = decide(&totals, ahead) {
                tx.rollback().await.map_err(PgError::of)?;
                return Ok(Err(refused));
            }
            let hold = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.budget_holds AS h
                         (node, day, scope, function, caller, requests, mib_us, egress)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (node, day, scope, function, caller) DO UPDATE SET
                         requests = h.requests + EXCLUDED.requests,
                         mib_us = h.mib_us + EXCLUDED.mib_us,
                         egress = h.egress + EXCLUDED.egress"
                ))
                .await
                .map_err(PgError::of)?;
            for &i in &order {
                let k = &keys[i];
                tx.execute(
                    &hold,
                    &[
                        &node,
                        &k.day,
                        &k.scope,
                        &&*k.function,
                        &&*k.caller,
                        &big(held.requests),
                        &big(held.mib_us),
                        &big(held.egress),
                    ],
                )
                .await
                .map_err(PgError::of)?;
            }
            // Counted before the commit, under the scopes' row locks, so a
            // beat's reconciliation never misses a committed admission;
            // taken off again unless the commit answers, even when the
            // timeout drops this future mid-commit (second outside review).
            let counted = Counted::new(&in_flight, &keys, held);
            tx.commit().await.map_err(PgError::of)?;
            counted.keep();
            Ok(Ok(()))
        }), undo).await)
    }

    /// Take a call from this node's lease on `keys`, or say how many
    /// calls to ask the database for.
    fn take_leased(&self, keys: &[LedgerKey], worst: Tally, now: i64) -> FromLease {
        let mut leases = locked(&self.leases);
        let full = leases.len() >= MOST_LEASED_SCOPES;
        match leases.get_mut(keys) {
            Some(lease) if lease.left > 0 && lease.worst == worst && now < lease.until_ms => {
                lease.left -= 1;
                if lease.left == 0 {
                    // Used up in time: the next one may be larger.
                    lease.size = lease.size.saturating_mul(2).min(MOST_LEASE);
                }
                FromLease::Taken
            }
            Some(lease) if now < lease.refused_until_ms => FromLease::Ask(1),
            Some(lease) => FromLease::Ask(lease.size),
            None if full => FromLease::Ask(1),
            None => FromLease::Ask(FIRST_LEASE),
        }
    }

    /// A lease of `left` more calls was granted on `keys`.
    fn leased(&self, keys: &[LedgerKey], worst: Tally, left: u64, now: i64) {
        let mut leases = locked(&self.leases);
        if leases.len() >= MOST_LEASED_SCOPES && !leases.contains_key(keys) {
            // Past the bound (racing first admissions): given back at the
            // next settling, the call itself stays admitted.
            drop(leases);
            self.end(
                keys,
                Ended {
                    worst: worst.of_calls(left),
                    ..Ended::default()
                },
            );
            return;
        }
        let lease = leases.entry(keys.to_vec()).or_insert(Lease {
            worst,
            left: 0,
            size: FIRST_LEASE,
            until_ms: now,
            refused_until_ms: 0,
        });
        if lease.left > 0 && lease.worst != worst {
            // A deploy changed the worst case: the old lease goes back.
            let back = lease.worst.of_calls(lease.left);
            self.end(
                keys,
                Ended {
                    worst: back,
                    ..Ended::default()
                },
            );
            lease.left = 0;
        }
        lease.worst = worst;
        lease.left = lease.left.saturating_add(left);
        lease.until_ms = now + LEASE_FOR_MS;
    }

    /// A lease on `keys` did not fit: the next asks for half as many
    /// calls; when even the smallest did not fit, calls go one by one for
    /// [`LEASE_FOR_MS`].
    fn lease_refused(&self, keys: &[LedgerKey], now: i64) {
        let mut leases = locked(&self.leases);
        if let Some(lease) = leases.get_mut(keys) {
            if lease.size <= FIRST_LEASE {
                lease.refused_until_ms = now + LEASE_FOR_MS;
            }
            lease.size = (lease.size / 2).max(FIRST_LEASE);
        } else if leases.len() < MOST_LEASED_SCOPES {
            leases.insert(
                keys.to_vec(),
                Lease {
                    worst: Tally::default(),
                    left: 0,
                    size: FIRST_LEASE,
                    until_ms: now,
                    refused_until_ms: now + LEASE_FOR_MS,
                },
            );
        }
    }

    /// Give back what leases past their time (or, at a stop, every
    /// lease) did not use, and forget leases long ended.
    fn end_leases(&self, now: i64, every: bool) {
        let mut back = Vec::new();
        locked(&self.leases).retain(|keys, lease| {
            if lease.left > 0 && (every || now >= lease.until_ms) {
                back.push((keys.clone(), lease.worst.of_calls(lease.left)));
                lease.left = 0;
                // Not used up in time: the next one asks for less.
                lease.size = (lease.size / 2).max(FIRST_LEASE);
            }
            now < lease.until_ms.max(lease.refused_until_ms) + FORGET_LEASE_MS
        });
        for (keys, worst) in back {
            self.end(
                &keys,
                Ended {
                    worst,
                    ..Ended::default()
                },
            );
        }
    }

    /// Whether a call failed less than [`BACK_OFF_MS`] ago.
    fn is_down(&self) -> bool {
        now_ms() < self.down_until_ms.load(Ordering::Relaxed)
    }

    /// `result`, noting a failure (requests back off) or a success.
    fn watch<T>(&self, result: Result<T, PgError>) -> Result<T, PgError> {
        let until = match &result {
            Ok(_) => 0,
            Err(_) => now_ms() + BACK_OFF_MS,
        };
        self.down_until_ms.store(until, Ordering::Relaxed);
        result
    }

    /// A call admitted under `keys` ended having used `used`: its
    /// reservation `worst` becomes that, at the next settling. Never
    /// fails: a settlement the database does not take is retried.
    pub fn settle(&self, keys: &[LedgerKey], used: Tally, worst: Tally, admitted: Admitted) {
        let leased = u64::from(admitted == Admitted::Leased);
        self.end(
            keys,
            Ended {
                used: Tally {
                    requests: leased,
                    ..used
                },
                worst: Tally {
                    requests: leased,
                    ..worst
                },
                unran: 0,
            },
        );
    }

    /// A call admitted on this node's share while the ledger was
    /// unreachable used `used` (its request included): added to the
    /// deployment's totals once the ledger answers.
    pub fn record_unadmitted(&self, keys: &[LedgerKey], used: Tally) {
        self.end(
            keys,
            Ended {
                used,
                ..Ended::default()
            },
        );
    }

    /// A call admitted under `keys` never ran: its request and its
    /// reservation are given back.
    pub fn give_back(&self, keys: &[LedgerKey], worst: Tally, admitted: Admitted) {
        let leased = admitted == Admitted::Leased;
        self.end(
            keys,
            Ended {
                used: Tally::default(),
                worst: Tally {
                    requests: u64::from(leased),
                    ..worst
                },
                unran: u64::from(!leased),
            },
        );
    }

    /// Nodes alive at the last beat (at least 1).
    pub fn live_nodes(&self) -> usize {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }

    /// Sum `ended` into what the next settling applies.
    fn end(&self, keys: &[LedgerKey], ended: Ended) {
        end_into(&self.ended, keys, ended);
    }

    /// Settle what ended since the last time, one transaction per set of
    /// scopes, behind what waits for a retry (or kept for one while the
    /// database is down). Run every [`SETTLE_EVERY`] by the heartbeat
    /// thread, and by [`Self::flush`].
    fn settle_ended(&self) {
        let _one = locked(&self.settling);
        let ended = std::mem::take(&mut *locked(&self.ended));
        for (keys, ended) in ended {
            // Off the truth the beat reconciles holds to now: if this
            // transaction fails, the beat gives the hold back.
            track(&self.in_flight, &keys, ended.worst, false);
            let settlement = Settlement { keys, ended };
            if self.is_down() {
                self.keep(settlement);
                continue;
            }
            if let Err(e) = self.watch(self.apply(settlement.clone())) {
                warn!(target: "bulkhead::budget", error = %e, "the shared budget ledger did not take a settlement; it is retried");
                self.keep(settlement);
            }
        }
    }

    /// Give every lease back and settle what ended, then what waits: at a
    /// clean stop, and for tests.
    pub fn flush(&self) {
        self.end_leases(now_ms(), true);
        self.settle_ended();
        self.retry_unsettled(MAX_UNSETTLED);
        self.carry_out(true);
    }

    /// Write what is unsettled to the carried file (or remove it once
    /// nothing is): at a stop, at every beat, and within [`CARRY_EVERY`]
    /// of usage kept, so a node killed during an outage loses at most
    /// that much of what it admitted.
    fn carry_out(&self, at_stop: bool) {
        self.carry_behind.store(false, Ordering::Release);
        if let Some(path) = self.carry.get() {
            let kept: Vec<CarriedSettlement> = locked(&self.unsettled)
                .iter()
                .map(|(keys, ended)| {
                    (
                        keys.iter()
                            .map(|k| (k.day, k.scope, k.function.to_string(), k.caller.to_string()))
                            .collect(),
                        (ended.used.requests, ended.used.mib_us, ended.used.egress),
                    )
                })
                .collect();
            if kept.is_empty() && !self.carried_on_disk.swap(false, Ordering::AcqRel) {
                return;
            }
            if !kept.is_empty() {
                self.carried_on_disk.store(true, Ordering::Release);
            }
            crate::carried::save(path, &kept, at_stop);
        }
    }

    /// Keep `settlement` for a retry. Only its usage is retried: its
    /// reservation is the beat's to reconcile (a failed commit may have
    /// landed, so retrying it whole could take it off twice). A call that
    /// never ran stays counted: the safe side.
    fn keep(&self, settlement: Settlement) {
        let Settlement { keys, ended } = settlement;
        if ended.used == Tally::default() {
            return;
        }
        let used = Ended {
            used: ended.used,
            ..Ended::default()
        };
        let mut unsettled = locked(&self.unsettled);
        // Set under the lock, once the usage is in: a carry_out that
        // clears it before then reads the usage too (outside review: set
        // before, the write could miss it for a whole beat).
        let behind = || self.carry_behind.store(true, Ordering::Release);
        // Summed per set of scopes: an outage with many callers keeps one
        // entry each, and the retry is one transaction each (review).
        if let Some(sum) = unsettled.get_mut(&keys) {
            sum.add(used);
            behind();
            return;
        }
        if unsettled.len() >= MAX_UNSETTLED {
            // Dropped: its usage never reaches the shared totals (the
            // reservation is the beat's to reconcile), so the deployment
            // undercounts by it: said loudly, never silently.
            error!(target: "bulkhead::budget", "too many settlements wait for the shared budget ledger; one is dropped and its usage is not counted in the shared totals");
            return;
        }
        unsettled.insert(keys, used);
        behind();
    }

    /// One settlement, in one transaction. The node's hold comes off
    /// first, and the scope's reservation only as far as the hold had it:
    /// a node declared dead whose holds were reaped gives nothing back
    /// twice.
    fn apply(&self, settlement: Settlement) -> Result<(), PgError> {
        let (schema, node) = (self.pg.schema().to_string(), self.node.clone());
        self.pg
            .call(move |pool| within(apply_on(pool, schema, node, settlement)))
    }

    /// Today's totals of `keys`, without adding anything (metrics, tests).
    pub fn totals(&self, keys: &[LedgerKey]) -> Result<Vec<ScopeTotals>, PgError> {
        let schema = self.pg.schema().to_string();
        let keys = keys.to_vec();
        self.pg.call(move |pool| async move {
            let mut out = Vec::with_capacity(keys.len());
            for k in &keys {
                let rows = crate::pg::query(
                    &pool,
                    &format!(
                        "SELECT requests, mib_us, egress, reserved_requests, reserved_mib_us, reserved_egress
                         FROM {schema}.budget_days
                         WHERE day = $1 AND scope = $2 AND function = $3 AND caller = $4"
                    ),
                    &[&k.day, &k.scope, &&*k.function, &&*k.caller],
                )
                .await?;
                let Some(row) = rows.first() else {
                    out.push(ScopeTotals::default());
                    continue;
                };
                out.push(totals_of(row)?);
            }
            Ok(out)
        })
    }
    /// Beat, give back dead nodes' reservations, retry what waits and
    /// forget old days. Run every [`BEAT_EVERY`] by the heartbeat thread;
    /// public so a test can run it at once.
    pub fn beat(&self) -> Result<(), PgError> {
        let _one = locked(&self.settling);
        let schema = self.pg.schema().to_string();
        let node = self.node.clone();
        let today = now_ms().div_euclid(86_400_000);
        let in_flight = self.in_flight.clone();
        self.watch(self.pg.call(move |pool| within_for(BEAT_TIMEOUT, async move {
            let mut client = pool.get().await.map_err(PgError::of)?;
            // The database's clock, not the node's: nodes whose clocks
            // disagree never declare each other dead (outside review).
            let now: i64 = client
                .query_one(
                    "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT",
                    &[],
                )
                .await
                .and_then(|row| row.try_get(0))
                .map_err(PgError::of)?;
            client
                .execute(
                    &format!(
                        "INSERT INTO {schema}.budget_nodes (node, seen_ms) VALUES ($1, $2)
                         ON CONFLICT (node) DO UPDATE SET seen_ms = EXCLUDED.seen_ms"
                    ),
                    &[&node, &now],
                )
                .await
                .map_err(PgError::of)?;
            let live: i64 = client
                .query_one(
                    &format!("SELECT count(*) FROM {schema}.budget_nodes WHERE seen_ms >= $1"),
                    &[&(now - DEAD_AFTER_MS)],
                )
                .await
                .and_then(|row| row.try_get(0))
                .map_err(PgError::of)?;
            // The dead nodes' holds, summed per scope, off the scopes'
            // reservations, in the admissions' locking order.
            let tx = client.transaction().await.map_err(PgError::of)?;
            tx.execute(
                &format!(
                    "SELECT 1 FROM {schema}.budget_days d
                     WHERE (d.day, d.scope, d.function, d.caller) IN (
                         SELECT h.day, h.scope, h.function, h.caller
                         FROM {schema}.budget_holds h LEFT JOIN {schema}.budget_nodes n USING (node)
                         WHERE n.node IS NULL OR n.seen_ms < $1)
                     ORDER BY d.day, d.scope, d.function COLLATE \"C\", d.caller COLLATE \"C\"
                     FOR UPDATE OF d"
                ),
                &[&(now - DEAD_AFTER_MS)],
            )
            .await
            .map_err(PgError::of)?;
            tx.execute(
                &format!(
                    "WITH dead AS (
                         DELETE FROM {schema}.budget_nodes WHERE seen_ms < $1 RETURNING node
                     ), gone AS (
                         DELETE FROM {schema}.budget_holds h
                         WHERE h.node IN (SELECT node FROM dead)
                            OR NOT EXISTS (SELECT 1 FROM {schema}.budget_nodes n WHERE n.node = h.node)
                         RETURNING h.day, h.scope, h.function, h.caller, h.requests, h.mib_us, h.egress
                     ), summed AS (
                         SELECT day, scope, function, caller, SUM(requests)::BIGINT AS requests,
                                SUM(mib_us)::BIGINT AS mib_us, SUM(egress)::BIGINT AS egress
                         FROM gone GROUP BY day, scope, function, caller
                     )
                     UPDATE {schema}.budget_days d SET
                         reserved_requests = GREATEST(0, d.reserved_requests - s.requests),
                         reserved_mib_us = GREATEST(0, d.reserved_mib_us - s.mib_us),
                         reserved_egress = GREATEST(0, d.reserved_egress - s.egress)
                     FROM summed s
                     WHERE d.day = s.day AND d.scope = s.scope AND d.function = s.function AND d.caller = s.caller"
                ),
                &[&(now - DEAD_AFTER_MS)],
            )
            .await
            .map_err(PgError::of)?;
            tx.commit().await.map_err(PgError::of)?;
            reconcile(&mut client, &schema, &node, &in_flight).await?;
            client
                .batch_execute(&format!(
                    "DELETE FROM {schema}.budget_holds WHERE node = '{node}' AND requests = 0 AND mib_us = 0 AND egress = 0;
                     DELETE FROM {schema}.budget_days WHERE day < {keep};
                     DELETE FROM {schema}.budget_holds WHERE day < {keep};",
                    keep = today - KEEP_DAYS + 1,
                ))
                .await
                .map_err(PgError::of)?;
            Ok(live)
        })))
        .map(|live| {
            let live = usize::try_from(live).unwrap_or(1).max(1);
            let before = self.live_nodes.swap(live, Ordering::Relaxed);
            if before != live {
                tracing::info!(target: "bulkhead::budget", live_nodes = live, "nodes sharing the budget ledger counted (a node's share while it is unreachable)");
            }
        })?;
        Ok(())
    }

    /// Apply kept usage, at most `most` sets of scopes: a settling
    /// retries a bounded share ([`ON_TICK`]), a stop all of it, so no
    /// retry after an outage holds the heartbeat past its bound (review).
    fn retry_unsettled(&self, most: usize) {
        for _ in 0..most {
            if self.is_down() {
                return;
            }
            let next = {
                let mut unsettled = locked(&self.unsettled);
                let keys = unsettled.keys().next().cloned();
                keys.and_then(|keys| unsettled.remove_entry(&keys))
            };
            let Some((keys, ended)) = next else {
                return;
            };
            let settlement = Settlement { keys, ended };
            if self.watch(self.apply(settlement.clone())).is_err() {
                end_into(&self.unsettled, &settlement.keys, settlement.ended);
                return;
            }
        }
    }
}

impl Drop for SharedLedger {
    /// A clean stop: settle what waits and leave the node list at once, so
    /// nobody waits [`DEAD_AFTER_MS`] for reservations that are all given
    /// back by then.
    fn drop(&mut self) {
        self.flush();
        let schema = self.pg.schema().to_string();
        let node = self.node.clone();
        let _ = self.pg.call(move |pool| async move {
            crate::pg::execute(
                &pool,
                &format!("UPDATE {schema}.budget_nodes SET seen_ms = 0 WHERE node = $1"),
                &[&node],
            )
            .await
        });
    }
}

/// Sum `ended` into `all` under `keys`.
fn end_into(all: &Mutex<HashMap<Vec<LedgerKey>, Ended>>, keys: &[LedgerKey], ended: Ended) {
    let mut all = locked(all);
    match all.get_mut(keys) {
        Some(sum) => sum.add(ended),
        None => {
            all.insert(keys.to_vec(), ended);
        }
    }
}

/// One settlement, in one transaction (see [`SharedLedger::apply`]).
async fn apply_on(
    pool: deadpool_postgres::Pool,
    schema: String,
    node: String,
    settlement: Settlement,
) -> Result<(), PgError> {
    let Settlement { keys, ended } = settlement;
    let mut client = pool.get().await.map_err(PgError::of)?;
    let tx = client.transaction().await.map_err(PgError::of)?;
    // The scopes' rows first, as an admission locks them (by an upsert: a
    // call admitted on the node's share may be the scope's first), then
    // the holds: one order for every transaction, so none deadlock.
    let add = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.budget_days AS d
                 (day, scope, function, caller, requests, mib_us, egress,
                  reserved_requests, reserved_mib_us, reserved_egress)
             VALUES ($1, $2, $3, $4, GREATEST(0, $5::BIGINT), $6, $7, 0, 0, 0)
             ON CONFLICT (day, scope, function, caller) DO UPDATE SET
                 requests = GREATEST(0, d.requests + $5::BIGINT),
                 mib_us = d.mib_us + EXCLUDED.mib_us,
                 egress = d.egress + EXCLUDED.egress"
        ))
        .await
        .map_err(PgError::of)?;
    let unhold = tx
        .prepare_cached(&format!(
            "UPDATE {schema}.budget_holds
             SET requests = requests - $6, mib_us = mib_us - $7, egress = egress - $8
             WHERE node = $1 AND day = $2 AND scope = $3 AND function = $4 AND caller = $5
               AND requests >= $6 AND mib_us >= $7 AND egress >= $8"
        ))
        .await
        .map_err(PgError::of)?;
    let unreserve = tx
        .prepare_cached(&format!(
            "UPDATE {schema}.budget_days SET
                 reserved_requests = GREATEST(0, reserved_requests - $5),
                 reserved_mib_us = GREATEST(0, reserved_mib_us - $6),
                 reserved_egress = GREATEST(0, reserved_egress - $7)
             WHERE day = $1 AND scope = $2 AND function = $3 AND caller = $4"
        ))
        .await
        .map_err(PgError::of)?;
    let requests = big(ended.used.requests) - big(ended.unran);
    let adds = [requests, big(ended.used.mib_us), big(ended.used.egress)];
    let worst = [
        big(ended.worst.requests),
        big(ended.worst.mib_us),
        big(ended.worst.egress),
    ];
    let order = locking_order(&keys);
    for &i in &order {
        let k = &keys[i];
        tx.execute(&add, &params(k, &k.names(), &adds))
            .await
            .map_err(PgError::of)?;
    }
    if ended.worst == Tally::default() {
        return tx.commit().await.map_err(PgError::of);
    }
    for &i in &order {
        let k = &keys[i];
        let held = tx
            .execute(
                &unhold,
                &[
                    &node,
                    &k.day,
                    &k.scope,
                    &&*k.function,
                    &&*k.caller,
                    &worst[0],
                    &worst[1],
                    &worst[2],
                ],
            )
            .await
            .map_err(PgError::of)?
            > 0;
        if held {
            tx.execute(&unreserve, &params(k, &k.names(), &worst))
                .await
                .map_err(PgError::of)?;
        }
    }
    tx.commit().await.map_err(PgError::of)
}

/// An admission counted in `in_flight`, taken off again when dropped
/// unless kept: an admission whose commit failed, or whose future was
/// dropped at the timeout, is not a running call. (If that commit landed
/// after all, the next beat's reconciliation gives its hold back.)
struct Counted<'a> {
    in_flight: &'a Mutex<HashMap<LedgerKey, Tally>>,
    keys: &'a [LedgerKey],
    held: Tally,
    kept: bool,
}

impl<'a> Counted<'a> {
    fn new(
        in_flight: &'a Mutex<HashMap<LedgerKey, Tally>>,
        keys: &'a [LedgerKey],
        held: Tally,
    ) -> Self {
        track(in_flight, keys, held, true);
        Self {
            in_flight,
            keys,
            held,
            kept: false,
        }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.kept {
            track(self.in_flight, self.keys, self.held, false);
        }
    }
}

/// Add (`on`) or take off `held` for each of `keys` in `in_flight`.
fn track(in_flight: &Mutex<HashMap<LedgerKey, Tally>>, keys: &[LedgerKey], held: Tally, on: bool) {
    if held == Tally::default() {
        return;
    }
    let mut map = locked(in_flight);
    for k in keys {
        let now = map.entry(k.clone()).or_default();
        if on {
            *now = now.plus(held);
        } else {
            now.requests = now.requests.saturating_sub(held.requests);
            now.mib_us = now.mib_us.saturating_sub(held.mib_us);
            now.egress = now.egress.saturating_sub(held.egress);
        }
        if *now == Tally::default() {
            map.remove(k);
        }
    }
}
/// Bring this node's holds back to what its running calls reserve
/// (`in_flight`), moving each scope's reservation by the difference, in
/// one transaction and the admissions' locking order: a hold a lost
/// commit or a late settlement left behind is given back, one taken off
/// twice is put back.
async fn reconcile(
    client: &mut deadpool_postgres::Object,
    schema: &str,
    node: &str,
    in_flight: &Mutex<HashMap<LedgerKey, Tally>>,
) -> Result<(), PgError> {
    let tx = client.transaction().await.map_err(PgError::of)?;
    let rows = tx
        .query(
            &format!(
                "SELECT day, scope, function, caller FROM {schema}.budget_holds
                 WHERE node = $1 AND (requests <> 0 OR mib_us <> 0 OR egress <> 0)"
            ),
            &[&node],
        )
        .await
        .map_err(PgError::of)?;
    let mut keys: Vec<LedgerKey> = rows
        .iter()
        .map(|r| {
            Ok(LedgerKey {
                day: r.try_get(0).map_err(PgError::of)?,
                scope: r.try_get(1).map_err(PgError::of)?,
                function: Arc::from(r.try_get::<_, &str>(2).map_err(PgError::of)?),
                caller: Arc::from(r.try_get::<_, &str>(3).map_err(PgError::of)?),
            })
        })
        .collect::<Result<_, PgError>>()?;
    keys.extend(locked(in_flight).keys().cloned());
    keys.sort();
    keys.dedup();
    // Locked by an upsert, not `SELECT … FOR UPDATE`: that would not wait
    // for a first admission's uncommitted row, and would then count its
    // reservation twice (second outside review).
    for k in &keys {
        tx.execute(
            &format!(
                "INSERT INTO {schema}.budget_days AS d
                     (day, scope, function, caller, requests, mib_us, egress,
                      reserved_requests, reserved_mib_us, reserved_egress)
                 VALUES ($1, $2, $3, $4, 0, 0, 0, 0, 0, 0)
                 ON CONFLICT (day, scope, function, caller) DO UPDATE SET requests = d.requests"
            ),
            &[&k.day, &k.scope, &&*k.function, &&*k.caller],
        )
        .await
        .map_err(PgError::of)?;
    }
    // Read under the locks: an admission counts itself before it commits.
    let truth = locked(in_flight).clone();
    for k in &keys {
        let held = tx
            .query(
                &format!(
                    "SELECT requests, mib_us, egress FROM {schema}.budget_holds
                     WHERE node = $1 AND day = $2 AND scope = $3 AND function = $4 AND caller = $5
                     FOR UPDATE"
                ),
                &[&node, &k.day, &k.scope, &&*k.function, &&*k.caller],
            )
            .await
            .map_err(PgError::of)?;
        let have: [i64; 3] = match held.first() {
            Some(row) => [
                crate::pg::column(row, 0)?,
                crate::pg::column(row, 1)?,
                crate::pg::column(row, 2)?,
            ],
            None => [0; 3],
        };
        let want = truth.get(k).copied().unwrap_or_default();
        let want = [big(want.requests), big(want.mib_us), big(want.egress)];
        if have == want {
            continue;
        }
        tx.execute(
            &format!(
                "INSERT INTO {schema}.budget_holds (node, day, scope, function, caller, requests, mib_us, egress)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (node, day, scope, function, caller) DO UPDATE SET
                     requests = EXCLUDED.requests, mib_us = EXCLUDED.mib_us, egress = EXCLUDED.egress"
            ),
            &[
                &node,
                &k.day,
                &k.scope,
                &&*k.function,
                &&*k.caller,
                &want[0],
                &want[1],
                &want[2],
            ],
        )
        .await
        .map_err(PgError::of)?;
        tx.execute(
            &format!(
                "UPDATE {schema}.budget_days SET
                     reserved_requests = GREATEST(0, reserved_requests - $5),
                     reserved_mib_us = GREATEST(0, reserved_mib_us - $6),
                     reserved_egress = GREATEST(0, reserved_egress - $7)
                 WHERE day = $1 AND scope = $2 AND function = $3 AND caller = $4"
            ),
            &params(
                k,
                &k.names(),
                &[have[0] - want[0], have[1] - want[1], have[2] - want[2]],
            ),
        )
        .await
        .map_err(PgError::of)?;
    }
    tx.commit().await.map_err(PgError::of)
}

/// `work`, or an error once [`CALL_TIMEOUT`] has passed.
async fn within<T>(work: impl Future<Output = Result<T, PgError>>) -> Result<T, PgError> {
    within_for(CALL_TIMEOUT, work).await
}

/// `work`, or an error once `limit` has passed.
async fn within_for<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(PgError("the budget ledger did not answer in time".into())))
}

/// A scope's totals as a `budget_days` row's six counters return them.
fn totals_of(row: &tokio_postgres::Row) -> Result<ScopeTotals, PgError> {
    let get = |c: usize| -> Result<u64, PgError> { Ok(small(crate::pg::column::<i64>(row, c)?)) };
    Ok(ScopeTotals {
        spent: Tally {
            requests: get(0)?,
            mib_us: get(1)?,
            egress: get(2)?,
        },
        reserved: Tally {
            requests: get(3)?,
            mib_us: get(4)?,
            egress: get(5)?,
        },
    })
}

/// `$1..` of the ledger's statements on a scope's row: the key's four
/// columns (`names`: [`LedgerKey::names`]), then `N` amounts.
fn params<'a, const N: usize>(
    k: &'a LedgerKey,
    names: &'a [&'a str; 2],
    amounts: &'a [i64; N],
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    let mut out: Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&k.day, &k.scope, &names[0], &names[1]];
    out.extend(
        amounts
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)),
    );
    out
}

/// The indexes of `keys` in the one order every transaction locks rows in.
fn locking_order(keys: &[LedgerKey]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    order
}

/// Settle what ended every [`SETTLE_EVERY`] and beat every
/// [`BEAT_EVERY`], until the ledger is dropped.
fn heartbeat(ledger: Weak<SharedLedger>) {
    let mut last_beat = std::time::Instant::now();
    let mut last_carry = last_beat;
    loop {
        std::thread::sleep(SETTLE_EVERY);
        let Some(ledger) = ledger.upgrade() else {
            return;
        };
        ledger.end_leases(now_ms(), false);
        ledger.settle_ended();
        ledger.retry_unsettled(ON_TICK);
        if last_beat.elapsed() >= BEAT_EVERY {
            last_beat = std::time::Instant::now();
            if let Err(e) = ledger.beat() {
                warn!(target: "bulkhead::budget", error = %e, "the shared budget ledger's heartbeat failed; retrying");
            }
            ledger.carry_out(false);
            last_carry = std::time::Instant::now();
        } else if last_carry.elapsed() >= CARRY_EVERY && ledger.carry_behind.load(Ordering::Acquire)
        {
            ledger.carry_out(false);
            last_carry = std::time::Instant::now();
        }
    }
}

fn migration(schema: &str) -> String {
    format!(
        r"
        {preamble}
        CREATE TABLE IF NOT EXISTS {schema}.budget_days (
            day BIGINT NOT NULL,
            scope SMALLINT NOT NULL,
            function TEXT NOT NULL,
            caller TEXT NOT NULL,
            requests BIGINT NOT NULL,
            mib_us BIGINT NOT NULL,
            egress BIGINT NOT NULL,
            reserved_mib_us BIGINT NOT NULL,
            reserved_egress BIGINT NOT NULL,
            PRIMARY KEY (day, scope, function, caller)
        );
        ALTER TABLE {schema}.budget_days
            ADD COLUMN IF NOT EXISTS reserved_requests BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE IF NOT EXISTS {schema}.budget_holds (
            node TEXT NOT NULL,
            day BIGINT NOT NULL,
            scope SMALLINT NOT NULL,
            function TEXT NOT NULL,
            caller TEXT NOT NULL,
            mib_us BIGINT NOT NULL,
            egress BIGINT NOT NULL,
            PRIMARY KEY (node, day, scope, function, caller)
        );
        ALTER TABLE {schema}.budget_holds
            ADD COLUMN IF NOT EXISTS requests BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE IF NOT EXISTS {schema}.budget_nodes (
            node TEXT PRIMARY KEY,
            seen_ms BIGINT NOT NULL
        );
        ",
        preamble = crate::pg::migration_preamble(),
    )
}
