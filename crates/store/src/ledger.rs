//! The budget ledger every node of a deployment shares (issue 16, T04):
//! today's totals per budget scope in PostgreSQL, so a daily budget holds
//! across nodes exactly, reservations included.
//!
//! - **Admission** is one transaction: each of the request's scopes that
//!   has a limit gets its price and its worst case added with an upsert
//!   that returns the new totals and keeps the row locked; the caller's
//!   `decide` judges them, and the transaction commits only if they fit.
//!   Row locks serialise two nodes admitting into one scope, so the
//!   budget is overshot by at most the last call admitted, as on one node.
//!   Rows are always locked in one order ([`LedgerKey`]'s), so two
//!   admissions never deadlock.
//! - **Reservations** are also recorded per node (`budget_holds`) and each
//!   node beats a heartbeat (`budget_nodes`). When a node stops beating
//!   for [`DEAD_AFTER_MS`] (killed mid-call), any other node gives its
//!   reservations back, so a crash never holds a budget until midnight.
//!   Requests it admitted stay counted: they were charged.
//! - **Settling** a call turns its reservation into what it used, on the
//!   day it was admitted. A settlement that cannot reach the database is
//!   kept (at most [`MAX_UNSETTLED`]) and retried by the heartbeat, so a
//!   blip holds reservations a little longer, never forever.
//! - Rows name callers (personal data, T20) and are deleted two days on.

use std::collections::{HashMap, VecDeque};
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
/// Settlements kept for a retry while the database is unreachable.
const MAX_UNSETTLED: usize = 100_000;
/// Settlements a request applies from the queue before its own.
const ON_REQUEST: usize = 64;
/// Days of totals kept (today and yesterday: a call admitted before
/// midnight settles after it).
const KEEP_DAYS: i64 = 2;

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

/// What a budget counts: requests, memory × time (MiB·µs), bytes out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub mib_us: u64,
    pub egress: u64,
}

/// A scope's totals after an admission's adds: what is spent (this
/// request included) and what running calls reserve (its own included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeTotals {
    pub spent: Tally,
    pub reserved: Tally,
}

/// A call's way out of the ledger: what it used, or that it never ran.
#[derive(Debug, Clone)]
enum Settlement {
    Used {
        keys: Vec<LedgerKey>,
        used: Tally,
        worst: Tally,
    },
    NeverRan {
        keys: Vec<LedgerKey>,
        worst: Tally,
    },
    /// A call a node admitted on its own share while the ledger was
    /// unreachable: its request and usage, added when it answers.
    Unadmitted {
        keys: Vec<LedgerKey>,
        used: Tally,
    },
}

/// The shared ledger of one app environment, as one node sees it.
pub struct SharedLedger {
    pg: Arc<Pg>,
    /// This process's id in `budget_holds` and `budget_nodes`: fresh at
    /// every start, so a restarted node's old reservations are reaped.
    node: String,
    unsettled: Mutex<VecDeque<Settlement>>,
    /// What this node's admitted, unsettled calls reserve, per scope: the
    /// truth its `budget_holds` rows are brought back to at every beat
    /// (outside review: a commit whose answer was lost, or a late
    /// settlement, left holds that no settlement would ever take off).
    in_flight: Arc<Mutex<HashMap<LedgerKey, Tally>>>,
    /// Settlements spawned and not yet done ([`SharedLedger::flush`]).
    spawned: Arc<std::sync::atomic::AtomicUsize>,
    /// Nodes that beat within [`DEAD_AFTER_MS`], at the last beat: what a
    /// node divides the budgets by while the ledger is unreachable.
    live_nodes: std::sync::atomic::AtomicUsize,
    /// After a failed call, requests do not try the database again until
    /// then (ms since the epoch): they decide on the node's share at once
    /// instead of each waiting out a timeout. The heartbeat still tries.
    down_until_ms: std::sync::atomic::AtomicI64,
}

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
            unsettled: Mutex::new(VecDeque::new()),
            in_flight: Arc::default(),
            spawned: Arc::default(),
            live_nodes: std::sync::atomic::AtomicUsize::new(1),
            down_until_ms: std::sync::atomic::AtomicI64::new(0),
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

    /// This node's id (for tests and logs).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Add `one` to what each scope of `keys` spent and `worst` to what
    /// it reserves, and keep them only if `decide` accepts the totals
    /// (given in `keys` order). `Ok(Err(r))`: refused, nothing kept.
    pub async fn admit<R: Send + 'static>(
        &self,
        keys: &[LedgerKey],
        one: Tally,
        worst: Tally,
        decide: impl FnOnce(&[ScopeTotals]) -> Result<(), R> + Send + 'static,
    ) -> Result<Result<(), R>, PgError> {
        if self.is_down() {
            return Err(PgError(
                "the budget ledger did not answer a moment ago".into(),
            ));
        }
        // What waits first, so the totals judged include it.
        self.retry_unsettled_async(ON_REQUEST).await;
        let schema = self.pg.schema().to_string();
        let node = self.node.clone();
        let order = locking_order(keys);
        let keys = keys.to_vec();
        let in_flight = self.in_flight.clone();
        self.watch(self.pg.call_async(move |pool| within(async move {
            let mut client = pool.get().await.map_err(PgError::of)?;
            let tx = client.transaction().await.map_err(PgError::of)?;
            let add = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.budget_days AS d
                         (day, scope, function, caller, requests, mib_us, egress, reserved_mib_us, reserved_egress)
                     VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $7)
                     ON CONFLICT (day, scope, function, caller) DO UPDATE SET
                         requests = d.requests + EXCLUDED.requests,
                         reserved_mib_us = d.reserved_mib_us + EXCLUDED.reserved_mib_us,
                         reserved_egress = d.reserved_egress + EXCLUDED.reserved_egress
                     RETURNING requests, mib_us, egress, reserved_mib_us, reserved_egress"
                ))
                .await
                .map_err(PgError::of)?;
            let mut totals = vec![ScopeTotals::default(); keys.len()];
            for &i in &order {
                let k = &keys[i];
                let row = tx
                    .query_one(
                        &add,
                        &params(k, &[&k.function, &k.caller], &[big(one.requests), big(worst.mib_us), big(worst.egress)]),
                    )
                    .await
                    .map_err(PgError::of)?;
                totals[i] = totals_of(&row)?;
            }
            if let Err(refused) = decide(&totals) {
                tx.rollback().await.map_err(PgError::of)?;
                return Ok(Err(refused));
            }
            let hold = tx
                .prepare_cached(&format!(
                    "INSERT INTO {schema}.budget_holds AS h
                         (node, day, scope, function, caller, mib_us, egress)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (node, day, scope, function, caller) DO UPDATE SET
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
                        &big(worst.mib_us),
                        &big(worst.egress),
                    ],
                )
                .await
                .map_err(PgError::of)?;
            }
            // Counted before the commit, under the scopes' row locks, so a
            // beat's reconciliation never misses a committed admission;
            // taken off again unless the commit answers, even when the
            // timeout drops this future mid-commit (second outside review).
            let counted = Counted::new(&in_flight, &keys, worst);
            tx.commit().await.map_err(PgError::of)?;
            counted.keep();
            Ok(Ok(()))
        })).await)
    }

    /// Whether a call failed less than [`BACK_OFF_MS`] ago.
    fn is_down(&self) -> bool {
        now_ms()
            < self
                .down_until_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `result`, noting a failure (requests back off) or a success.
    fn watch<T>(&self, result: Result<T, PgError>) -> Result<T, PgError> {
        let until = match &result {
            Ok(_) => 0,
            Err(_) => now_ms() + BACK_OFF_MS,
        };
        self.down_until_ms
            .store(until, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// A call admitted under `keys` ended having used `used`: its
    /// reservation `worst` becomes that. Never fails: a settlement the
    /// database does not take now is retried by the heartbeat.
    pub fn settle(self: &Arc<Self>, keys: Vec<LedgerKey>, used: Tally, worst: Tally) {
        track(&self.in_flight, &keys, worst, false);
        self.apply_or_keep(Settlement::Used { keys, used, worst });
    }

    /// A call admitted on this node's share while the ledger was
    /// unreachable used `used` (its request included): added to the
    /// deployment's totals once the ledger answers.
    pub fn record_unadmitted(self: &Arc<Self>, keys: Vec<LedgerKey>, used: Tally) {
        self.apply_or_keep(Settlement::Unadmitted { keys, used });
    }

    /// Nodes alive at the last beat (at least 1).
    pub fn live_nodes(&self) -> usize {
        self.live_nodes
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1)
    }

    /// A call admitted under `keys` never ran: its request and its
    /// reservation are given back.
    pub fn give_back(self: &Arc<Self>, keys: Vec<LedgerKey>, worst: Tally) {
        track(&self.in_flight, &keys, worst, false);
        self.apply_or_keep(Settlement::NeverRan { keys, worst });
    }

    /// Apply `settlement` off the caller's thread (a call's end never
    /// waits for the database); behind what waits, or kept for the
    /// heartbeat when the database is down.
    fn apply_or_keep(self: &Arc<Self>, settlement: Settlement) {
        if self.is_down() || self.unsettled() > 0 {
            self.keep(settlement);
            return;
        }
        let ledger = self.clone();
        self.spawned
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.pg.spawn(async move {
            if let Err(e) = ledger.watch(ledger.apply_async(settlement.clone()).await) {
                warn!(target: "bulkhead::budget", error = %e, "the shared budget ledger did not take a settlement; it is retried");
                ledger.keep(settlement);
            }
            ledger
                .spawned
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        });
    }

    /// Wait (at most 10 s) for the settlements under way, then apply what
    /// waits: at a clean stop, and for tests.
    pub fn flush(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.spawned.load(std::sync::atomic::Ordering::SeqCst) > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.retry_unsettled(MAX_UNSETTLED);
    }

    /// Keep `settlement` for a retry. Only its usage is retried: its
    /// reservation is the beat's to reconcile (a failed commit may have
    /// landed, so retrying it whole could take it off twice). A call that
    /// never ran stays counted: the safe side.
    fn keep(&self, settlement: Settlement) {
        let settlement = match settlement {
            Settlement::Used { keys, used, .. } => Settlement::Unadmitted {
                keys,
                used: Tally {
                    requests: 0,
                    ..used
                },
            },
            Settlement::NeverRan { .. } => return,
            unadmitted @ Settlement::Unadmitted { .. } => unadmitted,
        };
        let mut unsettled = locked(&self.unsettled);
        if unsettled.len() >= MAX_UNSETTLED {
            // Dropped: its usage never reaches the shared totals (the
            // reservation is the beat's to reconcile), so the deployment
            // undercounts by it: said loudly, never silently.
            error!(target: "bulkhead::budget", "too many settlements wait for the shared budget ledger; one is dropped and its usage is not counted in the shared totals");
            return;
        }
        unsettled.push_back(settlement);
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

    /// [`Self::apply`], awaited without blocking the caller's thread.
    async fn apply_async(&self, settlement: Settlement) -> Result<(), PgError> {
        let (schema, node) = (self.pg.schema().to_string(), self.node.clone());
        self.pg
            .call_async(move |pool| within(apply_on(pool, schema, node, settlement)))
            .await
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
                        "SELECT requests, mib_us, egress, reserved_mib_us, reserved_egress
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
                         RETURNING h.day, h.scope, h.function, h.caller, h.mib_us, h.egress
                     ), summed AS (
                         SELECT day, scope, function, caller,
                                SUM(mib_us)::BIGINT AS mib_us, SUM(egress)::BIGINT AS egress
                         FROM gone GROUP BY day, scope, function, caller
                     )
                     UPDATE {schema}.budget_days d SET
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
                    "DELETE FROM {schema}.budget_holds WHERE node = '{node}' AND mib_us = 0 AND egress = 0;
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
            let before = self
                .live_nodes
                .swap(live, std::sync::atomic::Ordering::Relaxed);
            if before != live {
                tracing::info!(target: "bulkhead::budget", live_nodes = live, "nodes sharing the budget ledger counted (a node's share while it is unreachable)");
            }
        })?;
        self.retry_unsettled(MAX_UNSETTLED);
        Ok(())
    }

    /// [`Self::retry_unsettled`] without blocking the caller's thread.
    async fn retry_unsettled_async(&self, most: usize) {
        if self.is_down() {
            return;
        }
        for _ in 0..most {
            let Some(settlement) = locked(&self.unsettled).pop_front() else {
                return;
            };
            if self
                .watch(self.apply_async(settlement.clone()).await)
                .is_err()
            {
                locked(&self.unsettled).push_front(settlement);
                return;
            }
        }
    }

    /// Apply what waits, in order, at most `most` of it: a request takes
    /// a bounded share ([`ON_REQUEST`]), the heartbeat all of it, so no
    /// request drains a long queue after an outage (second review).
    fn retry_unsettled(&self, most: usize) {
        if self.is_down() {
            return;
        }
        for _ in 0..most {
            let Some(settlement) = locked(&self.unsettled).pop_front() else {
                return;
            };
            if self.watch(self.apply(settlement.clone())).is_err() {
                locked(&self.unsettled).push_front(settlement);
                return;
            }
        }
    }

    /// Settlements waiting for the database (metrics).
    pub fn unsettled(&self) -> usize {
        locked(&self.unsettled).len()
    }
}

impl Drop for SharedLedger {
    /// A clean stop: settle what waits and leave the node list at once, so
    /// nobody waits [`DEAD_AFTER_MS`] for reservations that are all given
    /// back by then.
    fn drop(&mut self) {
        self.retry_unsettled(MAX_UNSETTLED);
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

/// One settlement, in one transaction (see [`SharedLedger::apply`]).
async fn apply_on(
    pool: deadpool_postgres::Pool,
    schema: String,
    node: String,
    settlement: Settlement,
) -> Result<(), PgError> {
    let (keys, used, worst, requests) = match &settlement {
        Settlement::Used { keys, used, worst } => (keys, *used, *worst, 0i64),
        Settlement::NeverRan { keys, worst } => (keys, Tally::default(), *worst, 1),
        Settlement::Unadmitted { keys, used } => {
            return add_unadmitted(&pool, &schema, keys, *used).await;
        }
    };
    let mut client = pool.get().await.map_err(PgError::of)?;
    let tx = client.transaction().await.map_err(PgError::of)?;
    // The scopes' rows first, as an admission locks them, then the
    // holds: one order for every transaction, so none deadlock.
    let lock = tx
        .prepare_cached(&format!(
            "SELECT 1 FROM {schema}.budget_days
         WHERE day = $1 AND scope = $2 AND function = $3 AND caller = $4
         FOR UPDATE"
        ))
        .await
        .map_err(PgError::of)?;
    let order = locking_order(keys);
    for &i in &order {
        let k = &keys[i];
        tx.execute(&lock, &[&k.day, &k.scope, &&*k.function, &&*k.caller])
            .await
            .map_err(PgError::of)?;
    }
    let unhold = tx
        .prepare_cached(&format!(
            "UPDATE {schema}.budget_holds
         SET mib_us = mib_us - $6, egress = egress - $7
         WHERE node = $1 AND day = $2 AND scope = $3 AND function = $4 AND caller = $5
           AND mib_us >= $6 AND egress >= $7"
        ))
        .await
        .map_err(PgError::of)?;
    let settle = tx
        .prepare_cached(&format!(
            "UPDATE {schema}.budget_days SET
             requests = GREATEST(0, requests - $5),
             mib_us = mib_us + $6,
             egress = egress + $7,
             reserved_mib_us = GREATEST(0, reserved_mib_us - $8),
             reserved_egress = GREATEST(0, reserved_egress - $9)
         WHERE day = $1 AND scope = $2 AND function = $3 AND caller = $4"
        ))
        .await
        .map_err(PgError::of)?;
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
                    &big(worst.mib_us),
                    &big(worst.egress),
                ],
            )
            .await
            .map_err(PgError::of)?
            > 0;
        let (off_mib_us, off_egress) = if held {
            (big(worst.mib_us), big(worst.egress))
        } else {
            (0, 0)
        };
        tx.execute(
            &settle,
            &[
                &k.day,
                &k.scope,
                &&*k.function,
                &&*k.caller,
                &requests,
                &big(used.mib_us),
                &big(used.egress),
                &off_mib_us,
                &off_egress,
            ],
        )
        .await
        .map_err(PgError::of)?;
    }
    tx.commit().await.map_err(PgError::of)
}

/// Add a call admitted without the ledger to each scope of `keys`, in
/// the locking order.
async fn add_unadmitted(
    pool: &deadpool_postgres::Pool,
    schema: &str,
    keys: &[LedgerKey],
    used: Tally,
) -> Result<(), PgError> {
    let mut client = pool.get().await.map_err(PgError::of)?;
    let tx = client.transaction().await.map_err(PgError::of)?;
    let add = tx
        .prepare_cached(&format!(
            "INSERT INTO {schema}.budget_days AS d
                 (day, scope, function, caller, requests, mib_us, egress, reserved_mib_us, reserved_egress)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0)
             ON CONFLICT (day, scope, function, caller) DO UPDATE SET
                 requests = d.requests + EXCLUDED.requests,
                 mib_us = d.mib_us + EXCLUDED.mib_us,
                 egress = d.egress + EXCLUDED.egress"
        ))
        .await
        .map_err(PgError::of)?;
    for i in locking_order(keys) {
        let k = &keys[i];
        tx.execute(
            &add,
            &params(
                k,
                &[&k.function, &k.caller],
                &[big(used.requests), big(used.mib_us), big(used.egress)],
            ),
        )
        .await
        .map_err(PgError::of)?;
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
    worst: Tally,
    kept: bool,
}

impl<'a> Counted<'a> {
    fn new(
        in_flight: &'a Mutex<HashMap<LedgerKey, Tally>>,
        keys: &'a [LedgerKey],
        worst: Tally,
    ) -> Self {
        track(in_flight, keys, worst, true);
        Self {
            in_flight,
            keys,
            worst,
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
            track(self.in_flight, self.keys, self.worst, false);
        }
    }
}

/// Add (`on`) or take off `worst` for each of `keys` in `in_flight`.
fn track(in_flight: &Mutex<HashMap<LedgerKey, Tally>>, keys: &[LedgerKey], worst: Tally, on: bool) {
    let mut map = locked(in_flight);
    for k in keys {
        let held = map.entry(k.clone()).or_default();
        if on {
            held.mib_us = held.mib_us.saturating_add(worst.mib_us);
            held.egress = held.egress.saturating_add(worst.egress);
        } else {
            held.mib_us = held.mib_us.saturating_sub(worst.mib_us);
            held.egress = held.egress.saturating_sub(worst.egress);
        }
        if held.mib_us == 0 && held.egress == 0 {
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
                 WHERE node = $1 AND (mib_us <> 0 OR egress <> 0)"
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
                     (day, scope, function, caller, requests, mib_us, egress, reserved_mib_us, reserved_egress)
                 VALUES ($1, $2, $3, $4, 0, 0, 0, 0, 0)
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
                    "SELECT mib_us, egress FROM {schema}.budget_holds
                     WHERE node = $1 AND day = $2 AND scope = $3 AND function = $4 AND caller = $5
                     FOR UPDATE"
                ),
                &[&node, &k.day, &k.scope, &&*k.function, &&*k.caller],
            )
            .await
            .map_err(PgError::of)?;
        let (mib_us, egress): (i64, i64) = match held.first() {
            Some(row) => (
                row.try_get(0).map_err(PgError::of)?,
                row.try_get(1).map_err(PgError::of)?,
            ),
            None => (0, 0),
        };
        let want = truth.get(k).copied().unwrap_or_default();
        let (want_mib_us, want_egress) = (big(want.mib_us), big(want.egress));
        if (mib_us, egress) == (want_mib_us, want_egress) {
            continue;
        }
        tx.execute(
            &format!(
                "INSERT INTO {schema}.budget_holds (node, day, scope, function, caller, mib_us, egress)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (node, day, scope, function, caller) DO UPDATE SET
                     mib_us = EXCLUDED.mib_us, egress = EXCLUDED.egress"
            ),
            &[
                &node,
                &k.day,
                &k.scope,
                &&*k.function,
                &&*k.caller,
                &want_mib_us,
                &want_egress,
            ],
        )
        .await
        .map_err(PgError::of)?;
        tx.execute(
            &format!(
                "UPDATE {schema}.budget_days SET
                     reserved_mib_us = GREATEST(0, reserved_mib_us - $5),
                     reserved_egress = GREATEST(0, reserved_egress - $6)
                 WHERE day = $1 AND scope = $2 AND function = $3 AND caller = $4"
            ),
            &[
                &k.day,
                &k.scope,
                &&*k.function,
                &&*k.caller,
                &(mib_us - want_mib_us),
                &(egress - want_egress),
            ],
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

/// A scope's totals as a `budget_days` row's five counters return them.
fn totals_of(row: &tokio_postgres::Row) -> Result<ScopeTotals, PgError> {
    let get = |c: usize| -> Result<u64, PgError> { Ok(small(crate::pg::column::<i64>(row, c)?)) };
    Ok(ScopeTotals {
        spent: Tally {
            requests: get(0)?,
            mib_us: get(1)?,
            egress: get(2)?,
        },
        reserved: Tally {
            requests: 0,
            mib_us: get(3)?,
            egress: get(4)?,
        },
    })
}

/// `$1..$7` of the ledger's upserts: the key's four columns, then three
/// amounts.
fn params<'a>(
    k: &'a LedgerKey,
    names: &'a [&'a str; 2],
    amounts: &'a [i64; 3],
) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 7] {
    [
        &k.day,
        &k.scope,
        &names[0],
        &names[1],
        &amounts[0],
        &amounts[1],
        &amounts[2],
    ]
}

/// The indexes of `keys` in the one order every transaction locks rows in.
fn locking_order(keys: &[LedgerKey]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    order
}

fn heartbeat(ledger: Weak<SharedLedger>) {
    loop {
        std::thread::sleep(BEAT_EVERY);
        let Some(ledger) = ledger.upgrade() else {
            return;
        };
        if let Err(e) = ledger.beat() {
            warn!(target: "bulkhead::budget", error = %e, "the shared budget ledger's heartbeat failed; retrying");
        }
    }
}

fn migration(schema: &str) -> String {
    format!(
        r"
        SELECT pg_advisory_xact_lock({lock});
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
        CREATE TABLE IF NOT EXISTS {schema}.budget_nodes (
            node TEXT PRIMARY KEY,
            seen_ms BIGINT NOT NULL
        );
        ",
        lock = crate::pg::MIGRATION_LOCK,
    )
}
