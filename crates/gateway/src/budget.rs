//! Metering and hard budgets (T04, Denial of Wallet). Every invocation's
//! usage goes to the durable meter; a ledger of today's totals (UTC) per
//! scope (the app, each function, and each caller of either) decides,
//! before a request may queue, whether the budget allows it. The ledger is
//! rebuilt from the meter at start, so a restart never resets a budget.
//! Usage crossing 80 % of a budget logs a warning; reaching it, an error.
//!
//! A call's cost is known only when it ends, so each admitted call reserves
//! its worst case (its timeout times its memory, its response and outbound
//! byte caps) in every scope until it settles for what it really used. A
//! request is admitted only if what is spent, plus what running calls have
//! reserved, leaves room for its price: so however many calls run at once,
//! a budget is overshot by at most the last call admitted, and by little
//! more than that call's worst case (a call can outrun its timeout by an
//! epoch tick). A request refused only because of reservations is told to
//! retry once the running calls end, not at midnight: nothing is spent yet.
//!
//! The ledger takes no lock on a request's way (issue 17): see
//! [`ledger`]. A request adds its price and worst case to every scope,
//! then reads the totals back; all of a request's adds come before a
//! sequentially consistent fence and all its reads after, so of any two
//! requests admitted at once the later one (in fence order) saw every
//! add of the other, exactly as if they had taken a lock in that order.
//! A request that does not fit takes its adds off again. Two requests at a
//! budget's boundary can each see the other's add and both not fit; a
//! refusal is therefore retried once, one at a time, under a lock, unless
//! the scope was already found exhausted today.

mod ledger;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::time::Instant;

use bulkhead_manifest::cost::Limits;
use bulkhead_manifest::{App, Budget, FunctionLimits, Pricing};
use bulkhead_store::ledger::{Admitted, LedgerKey, ScopeTotals, SharedLedger};
use bulkhead_store::meter::{MeterLog, Usage, hour_of};
use bulkhead_store::{State, StoreError, now_ms};
use tracing::{error, warn};

use self::ledger::{
    ALERTED_80, ALERTED_100, Amount, Cells, FunctionBooks, Ledger, Seen, cells_of, lock,
};
use http::StatusCode;

use crate::caller::Caller;
use crate::problem::Problem;

const DAY_MS: i64 = 86_400_000;

/// Which budget refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    App,
    AppPerCaller,
    Function,
    FunctionPerCaller,
}

/// The scopes in the order a request's cells are passed around.
const SCOPES: [Scope; 4] = [
    Scope::App,
    Scope::AppPerCaller,
    Scope::Function,
    Scope::FunctionPerCaller,
];

impl Scope {
    pub fn describe(self) -> &'static str {
        match self {
            Scope::App => "The app has spent its daily budget",
            Scope::AppPerCaller => "You have spent your daily budget for this app",
            Scope::Function => "This function has spent its daily budget",
            Scope::FunctionPerCaller => "You have spent your daily budget for this function",
        }
    }

    /// The same scope, when it is only held by calls still running.
    pub fn describe_held(self) -> &'static str {
        match self {
            Scope::App => "The app's daily budget is taken",
            Scope::AppPerCaller => "Your daily budget for this app is taken",
            Scope::Function => "This function's daily budget is taken",
            Scope::FunctionPerCaller => "Your daily budget for this function is taken",
        }
    }
}

/// A refusal: which budget, whether it is spent or only held by running
/// calls, and seconds until retrying makes sense.
#[derive(Debug, Clone, Copy)]
pub struct Exhausted {
    pub scope: Scope,
    /// True when what is spent leaves room, but running calls' reservations
    /// do not: retry once they end (after `retry_after`, the function's
    /// timeout), not at midnight.
    pub held: bool,
    pub retry_after: u64,
}

pub struct Meter {
    pricing: Pricing,
    app_budget: Budget,
    function_budgets: Vec<Budget>,
    /// The most one call of each function can cost: what it reserves.
    worst_cases: Vec<Usage>,
    function_names: Vec<Arc<str>>,
    log: MeterLog,
    /// Shared with the versions that follow (T04, T19): a deploy neither
    /// forgets what was spent today nor what calls under way reserved.
    ledger: Arc<Ledger>,
    /// Each function's books in the ledger, by manifest position.
    books: Vec<Arc<FunctionBooks>>,
    /// The ledger every node shares, on PostgreSQL (issue 16): a request
    /// fits this node's ledger first, then the deployment's.
    shared: Option<Arc<SharedLedger>>,
    /// Deciding on this node's share: the shared ledger did not answer
    /// (logged once per switch).
    degraded: Arc<AtomicBool>,
}

/// A request's place in today's budgets: its request is charged and its
/// worst case reserved on admission; the reservation becomes its real usage
/// when it ends, and both are given back if it never runs.
pub struct Charge {
    meter: Arc<Meter>,
    /// The UTC day its request was charged to.
    day: i64,
    function: usize,
    caller: Arc<str>,
    running: Option<Running>,
    settled: bool,
    /// How the deployment's ledger took it: settled there accordingly.
    shared: Shared,
}

/// How a charge stands in the deployment's ledger (issue 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shared {
    /// No shared ledger, or no limit to check there.
    None,
    /// Admitted by the shared ledger (alone, or from this node's lease):
    /// settled there.
    Admitted(Admitted),
    /// Admitted on this node's share while the ledger was unreachable:
    /// its usage is added there once it answers.
    OnShare,
}

/// A call under way: what its usage is measured from.
struct Running {
    started: Instant,
    memory_mib: u64,
    request_bytes: u64,
    outbound_bytes: Arc<AtomicU64>,
}

impl Exhausted {
    /// The problem response of this refusal.
    pub fn problem(&self) -> Problem {
        if self.held {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "budget-held",
                "Budget held by running calls",
                format!(
                    "{}, counting what calls still running may use; retry once they end.",
                    self.scope.describe_held()
                ),
            )
        } else {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "budget-exhausted",
                "Budget exhausted",
                format!("{}; it renews at 00:00 UTC.", self.scope.describe()),
            )
        }
        .retry_after(self.retry_after)
    }

    /// The refusal in words, for triggered runs' logs and audit.
    pub fn describe(&self) -> &'static str {
        if self.held {
            self.scope.describe_held()
        } else {
            self.scope.describe()
        }
    }
}

/// Why a charge did not fit, and whether a retry could change that.
struct Misfit {
    exhausted: Exhausted,
    /// Already found exhausted today: no other request's passing add can
    /// explain it.
    settled: bool,
}

impl Meter {
    /// `limits` are the functions' own, in manifest order: the routed
    /// ones, then the triggered ones ([`App::all_functions`]).
    pub fn new(
        app: &App,
        limits: &[&FunctionLimits],
        state: &State,
    ) -> Result<Arc<Self>, StoreError> {
        // On PostgreSQL the meter is the deployment's (issue 16): every
        // node's calls, so this node's ledger starts from the deployment's
        // spend today (the safe side for its own checks).
        let log = state.meter_log()?;
        let today = day_of(now_ms());
        let shared = state.budget_ledger()?;
        let meter = Self::with(app, limits, log, Arc::new(Ledger::new(today)), shared);
        meter.reload(state, today)?;
        meter.see_deployment(today);
        Ok(Arc::new(meter))
    }

    /// What the shared ledger holds today for the app's and each
    /// function's budget, remembered as if an admission had just read it
    /// (second outside review of issue 16: a node restarted and then cut
    /// off before its first admission knew nothing of the deployment's
    /// spend, and admitted a fresh share of it). Per-caller budgets are
    /// learnt at each caller's first admission.
    fn see_deployment(&self, day: i64) {
        let Some(shared) = &self.shared else {
            return;
        };
        let none: Arc<str> = Arc::from("");
        for function in 0..self.function_names.len() {
            let (keys, scopes) = self.shared_keys(function, &none, day);
            let (keys, scopes): (Vec<LedgerKey>, Vec<usize>) = keys
                .into_iter()
                .zip(scopes)
                .filter(|(_, i)| matches!(SCOPES[*i], Scope::App | Scope::Function))
                .unzip();
            if keys.is_empty() {
                continue;
            }
            match shared.totals(&keys) {
                Ok(totals) => {
                    for ((key, &i), t) in keys.iter().zip(&scopes).zip(&totals) {
                        let cells = match SCOPES[i] {
                            Scope::App => &self.ledger.app,
                            _ => &self.books[function].cells,
                        };
                        self.ledger.see(key, Seen::of(t, cells, day));
                    }
                }
                Err(e) => {
                    warn!(target: "bulkhead::budget", error = %e, "cannot read the shared budgets at start; a cut-off node will use the plain share until it admits once");
                    return;
                }
            }
        }
    }

    /// The meter of the version that follows this one (T19): `app`'s
    /// prices and budgets over the same ledger and durable log, so today's
    /// spending and the reservations of calls under way carry over.
    pub fn successor(&self, app: &App, limits: &[&FunctionLimits]) -> Arc<Self> {
        Arc::new(Self::with(
            app,
            limits,
            self.log.clone(),
            self.ledger.clone(),
            self.shared.clone(),
        ))
    }

    fn with(
        app: &App,
        limits: &[&FunctionLimits],
        log: MeterLog,
        ledger: Arc<Ledger>,
        shared: Option<Arc<SharedLedger>>,
    ) -> Self {
        Self::of_parts(
            app.pricing.clone(),
            app.budget.clone(),
            app.all_functions().map(|f| f.budget.clone()).collect(),
            limits.iter().map(|l| worst_case(l)).collect(),
            app.all_functions()
                .map(|f| f.name.as_str().into())
                .collect(),
            log,
            ledger,
            shared,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn of_parts(
        pricing: Pricing,
        app_budget: Budget,
        function_budgets: Vec<Budget>,
        worst_cases: Vec<Usage>,
        function_names: Vec<Arc<str>>,
        log: MeterLog,
        ledger: Arc<Ledger>,
        shared: Option<Arc<SharedLedger>>,
    ) -> Self {
        let books = function_names.iter().map(|n| ledger.function(n)).collect();
        Self {
            pricing,
            app_budget,
            function_budgets,
            worst_cases,
            function_names,
            log,
            ledger,
            books,
            shared,
            degraded: Arc::default(),
        }
    }

    /// Rebuild today's totals from the durable meter, before any request.
    fn reload(&self, state: &State, today: i64) -> Result<(), StoreError> {
        let rows = state.usage_since(hour_of(today * DAY_MS))?;
        let ledger = &self.ledger;
        for row in rows {
            let caller: Arc<str> = row.caller.as_str().into();
            let function: Arc<str> = row.function.as_str().into();
            let books = ledger.function(&function);
            let spent = Amount::of(&row.usage);
            let none = Amount::default();
            ledger.app.charge(today, spent, none);
            cells_of(&ledger.app_callers, &caller, today).charge(today, spent, none);
            books.cells.charge(today, spent, none);
            cells_of(&books.callers, &caller, today).charge(today, spent, none);
        }
        Ok(())
    }

    /// Run `f` over the four scopes a call of `function` by `caller`
    /// counts in, each made current for `day`, in [`SCOPES`] order.
    fn with_scopes<T>(
        &self,
        function: usize,
        caller: &Arc<str>,
        day: i64,
        f: impl FnOnce([&Cells; 4]) -> T,
    ) -> T {
        let ledger = &self.ledger;
        // A new day first sweeps idle callers; never while holding a guard.
        ledger.roll(day);
        let books = &self.books[function];
        let app_caller = cells_of(&ledger.app_callers, caller, day);
        let function_caller = cells_of(&books.callers, caller, day);
        let cells = [&ledger.app, &*app_caller, &books.cells, &*function_caller];
        for c in cells {
            c.fresh(day, &ledger.roll);
        }
        f(cells)
    }

    /// Charge one request to every budget of `function` for `caller`, or
    /// refuse it if any is spent.
    pub async fn admit(
        self: &Arc<Self>,
        function: usize,
        caller: &Caller,
    ) -> Result<Charge, Exhausted> {
        let now = now_ms();
        let day = day_of(now);
        let caller = caller.key();
        let mut fit = self.try_charge(function, &caller, day, now, false);
        if let Err(Misfit { settled: false, .. }) = fit {
            // Maybe only another request's passing add: once more, with
            // every other retry waiting (the boundary's slow path).
            let _one_at_a_time = lock(&self.ledger.boundary);
            fit = self.try_charge(function, &caller, day, now, true);
        }
        fit.map_err(|misfit| misfit.exhausted)?;
        // Dropped unadmitted below, it gives this node's charge back.
        let mut charge = Charge {
            meter: self.clone(),
            day,
            function,
            caller,
            running: None,
            settled: false,
            shared: Shared::None,
        };
        charge.shared = self.admit_shared(&charge, now).await?;
        Ok(charge)
    }

    /// The deployment's budgets (issue 16): how the shared ledger took
    /// `charge`. When it cannot be reached, this node decides alone on its
    /// share of every limit (the limit divided by the nodes alive at the
    /// last heartbeat), like the rate limits without Redis: never "no
    /// budget", and never a refusal only because the database blinked.
    async fn admit_shared(&self, charge: &Charge, now: i64) -> Result<Shared, Exhausted> {
        let Some(shared) = &self.shared else {
            return Ok(Shared::None);
        };
        let (function, caller, day) = (charge.function, &charge.caller, charge.day);
        let (keys, scopes) = self.shared_keys(function, caller, day);
        if keys.is_empty() {
            return Ok(Shared::None);
        }
        let worst = Amount::of(&self.worst_cases[function]);
        let limits = self.limits(function).map(Limits::clone);
        let pricing = self.pricing.clone();
        // The totals the ledger returned, remembered below.
        let observed: Arc<std::sync::Mutex<Vec<ScopeTotals>>> = Arc::default();
        let observe = observed.clone();
        // `ahead`: a lease is asked for only if that many more calls
        // would still fit after it (see `bulkhead_store::ledger`).
        let in_order = scopes.clone();
        let decide = move |totals: &[ScopeTotals], ahead: u64| {
            *lock(&observe) = totals.to_vec();
            let (more_spent, more_reserved) =
                (Amount::ONE_REQUEST.times(ahead), worst.times(ahead));
            let mut all = [(Amount::default(), Amount::default()); 4];
            for (&i, t) in in_order.iter().zip(totals) {
                all[i] = (
                    Amount::from(t.spent).plus(more_spent),
                    Amount::from(t.reserved).plus(more_reserved),
                );
            }
            let limits = [&limits[0], &limits[1], &limits[2], &limits[3]];
            match misfit(&pricing, &limits, &all, worst) {
                Some(found) => Err(found),
                None => Ok(()),
            }
        };
        let answer = shared.admit(&keys, worst.into(), decide).await;
        if answer.is_ok() {
            self.remember(charge, &keys, &scopes, &lock(&observed));
        }
        match answer {
            Ok(Ok(admitted)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    warn!(target: "bulkhead::budget", "the shared budget ledger answers again: budgets are the deployment's again");
                }
                Ok(Shared::Admitted(admitted))
            }
            Ok(Err((i, held))) => {
                if !held {
                    self.with_scopes(function, caller, day, |cells| {
                        self.alert(cells[i], day, i, function, caller, 1.0);
                    });
                }
                Err(self.refusal(function, i, held, now))
            }
            Err(e) => {
                let nodes = shared.live_nodes();
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    error!(target: "bulkhead::budget", error = %e, live_nodes = nodes, "the shared budget ledger is unreachable: budgets are now this node's share (each limit divided by the live nodes last counted) until it answers");
                }
                self.admit_on_share(charge, &keys, &scopes, nodes, now)
            }
        }
    }

    /// Remember the deployment's totals the shared ledger returned for
    /// `keys` (of `scopes`), beside this node's own at this moment.
    fn remember(
        &self,
        charge: &Charge,
        keys: &[LedgerKey],
        scopes: &[usize],
        totals: &[ScopeTotals],
    ) {
        let (function, caller, day) = (charge.function, &charge.caller, charge.day);
        let seen = self.with_scopes(function, caller, day, |cells| {
            scopes
                .iter()
                .zip(totals)
                .map(|(&i, t)| Seen::of(t, cells[i], day))
                .collect::<Vec<_>>()
        });
        for (key, seen) in keys.iter().zip(seen) {
            self.ledger.see(key, seen);
        }
    }

    /// `charge` (its shared `keys`, of `scopes`) on this node's share
    /// while the shared ledger is away, two ways, both of which it must
    /// fit:
    /// - its own totals (its adds included, and at start the deployment's
    ///   spend) against each limit divided by the live nodes;
    /// - what it added since it last saw a scope's deployment totals
    ///   against its share of what the deployment had left then (issue
    ///   16, T04): a budget nearly spent elsewhere leaves each node a
    ///   share of the rest, not a fresh share of all of it. So the nodes
    ///   together overshoot at most by what others spent after this
    ///   node's last look (and each by its last call).
    fn admit_on_share(
        &self,
        charge: &Charge,
        keys: &[LedgerKey],
        scopes: &[usize],
        nodes: usize,
        now: i64,
    ) -> Result<Shared, Exhausted> {
        let (function, caller, day) = (charge.function, &charge.caller, charge.day);
        let worst = Amount::of(&self.worst_cases[function]);
        let full = self.limits(function);
        let shares = full.map(|l| share_of(l, nodes));
        let totals = self.with_scopes(function, caller, day, |cells| {
            cells.map(|c| {
                let reserved = c.reserved();
                (c.spent(day), reserved)
            })
        });
        let shares = [&shares[0], &shares[1], &shares[2], &shares[3]];
        if let Some((i, held)) = misfit(&self.pricing, &shares, &totals, worst) {
            return Err(self.refusal(function, i, held, now));
        }
        let mut left = [Limits::default(); 4];
        let mut since = [(Amount::default(), Amount::default()); 4];
        for (key, &i) in keys.iter().zip(scopes) {
            let Some(seen) = self.ledger.seen(key) else {
                continue;
            };
            let unspent = 1.0 - share(&self.pricing, full[i], &seen.deployment);
            left[i] = scaled(full[i], (unspent / nodes.max(1) as f64).max(0.0));
            let (spent, reserved) = totals[i];
            let added = spent.plus(reserved).minus(seen.local);
            since[i] = (added.minus(reserved), reserved);
        }
        let left = [&left[0], &left[1], &left[2], &left[3]];
        match misfit(&self.pricing, &left, &since, worst) {
            Some((i, held)) => Err(self.refusal(function, i, held, now)),
            None => Ok(Shared::OnShare),
        }
    }

    /// The shared ledger's keys of a call of `function` by `caller` on
    /// `day`: one per scope with a limit, and which scope each is.
    fn shared_keys(
        &self,
        function: usize,
        caller: &Arc<str>,
        day: i64,
    ) -> (Vec<LedgerKey>, Vec<usize>) {
        let limits = self.limits(function);
        let none: Arc<str> = Arc::from("");
        let name = &self.function_names[function];
        let mut keys = Vec::new();
        let mut scopes = Vec::new();
        for (i, scope) in SCOPES.iter().enumerate() {
            if limits[i].is_unlimited() {
                continue;
            }
            let per_function = matches!(scope, Scope::Function | Scope::FunctionPerCaller);
            let per_caller = matches!(scope, Scope::AppPerCaller | Scope::FunctionPerCaller);
            keys.push(LedgerKey {
                day,
                scope: i as i16,
                function: if per_function {
                    name.clone()
                } else {
                    none.clone()
                },
                caller: if per_caller {
                    caller.clone()
                } else {
                    none.clone()
                },
            });
            scopes.push(i);
        }
        (keys, scopes)
    }

    /// The refusal of a request of `function` by `SCOPES[i]`.
    fn refusal(&self, function: usize, i: usize, held: bool, now: i64) -> Exhausted {
        let retry_after = if held {
            let timeout_us = self.worst_cases[function].wall_us;
            timeout_us.div_ceil(1_000_000).max(1)
        } else {
            seconds_to_midnight(now)
        };
        Exhausted {
            scope: SCOPES[i],
            held,
            retry_after,
        }
    }

    /// Add this request's price and worst case to every scope and keep
    /// them if they fit; `last`: no retry follows, so a refusal is logged.
    fn try_charge(
        &self,
        function: usize,
        caller: &Arc<str>,
        day: i64,
        now: i64,
        last: bool,
    ) -> Result<(), Misfit> {
        let one = Amount::ONE_REQUEST;
        let worst = Amount::of(&self.worst_cases[function]);
        let limits = self.limits(function);
        self.with_scopes(function, caller, day, |cells| {
            for c in cells {
                c.charge(day, one, worst);
            }
            // Every add above before every read below (see the module doc).
            fence(Ordering::SeqCst);
            let totals = cells.map(|c| {
                let reserved = c.reserved();
                (c.spent(day), reserved)
            });
            if let Some((i, held)) = misfit(&self.pricing, &limits, &totals, worst) {
                for c in cells {
                    c.uncharge(day, one, worst);
                }
                let settled = !held && cells[i].alerted(day, ALERTED_100);
                if !held && (last || settled) {
                    self.alert(cells[i], day, i, function, caller, 1.0);
                }
                return Err(Misfit {
                    exhausted: self.refusal(function, i, held, now),
                    settled,
                });
            }
            for (i, (spent, _)) in totals.iter().enumerate() {
                if limits[i].is_unlimited() {
                    continue;
                }
                let share = share(&self.pricing, limits[i], spent);
                if share >= 0.8 {
                    self.alert(cells[i], day, i, function, caller, share);
                }
            }
            Ok(())
        })
    }

    /// Each budget that applies to a call of `function`, in [`SCOPES`]
    /// order.
    fn limits(&self, function: usize) -> [&Limits; 4] {
        let budget = &self.function_budgets[function];
        [
            &self.app_budget.total,
            &self.app_budget.per_caller,
            &budget.total,
            &budget.per_caller,
        ]
    }

    /// Log that `SCOPES[i]` crossed 80 % (`share` below 1) or 100 %, once
    /// a day.
    fn alert(
        &self,
        cells: &Cells,
        day: i64,
        i: usize,
        function: usize,
        caller: &Arc<str>,
        share: f64,
    ) {
        let level = if share >= 1.0 {
            ALERTED_100
        } else {
            ALERTED_80
        };
        let scope = SCOPES[i];
        if !cells.alert_once(day, level) {
            return;
        }
        let caller = match scope {
            Scope::AppPerCaller | Scope::FunctionPerCaller => &**caller,
            _ => "",
        };
        let function = match scope {
            Scope::Function | Scope::FunctionPerCaller => {
                self.function_names.get(function).map_or("", |name| &**name)
            }
            _ => "",
        };
        let scope_name = format!("{scope:?}");
        let used_percent = (share * 100.0).round();
        if level == ALERTED_100 {
            error!(target: "bulkhead::budget", scope = scope_name, function, caller, used_percent, "daily budget exhausted: requests are refused until 00:00 UTC");
        } else {
            warn!(target: "bulkhead::budget", scope = scope_name, function, caller, used_percent, "daily budget 80% used");
        }
    }

    /// Where `function` is in the ledger (issue 18: a triggered
    /// function is metered after the routed ones).
    pub(crate) fn index_of(&self, function: &str) -> Option<usize> {
        self.function_names.iter().position(|n| &**n == function)
    }

    /// Budget shares for metrics: the app, then each function.
    pub fn shares(&self) -> Vec<(Option<&str>, f64)> {
        let day = day_of(now_ms());
        let mut out = vec![(
            None,
            share(
                &self.pricing,
                &self.app_budget.total,
                &self.ledger.app.spent(day),
            ),
        )];
        for (i, name) in self.function_names.iter().enumerate() {
            let share = share(
                &self.pricing,
                &self.function_budgets[i].total,
                &self.books[i].cells.spent(day),
            );
            out.push((Some(&**name), share));
        }
        out
    }

    /// Commit pending usage now (issue 18: triggered runs that ended
    /// after the listener's drain).
    pub fn flush(&self) {
        self.log.flush();
    }

    /// Commit pending usage and stop the meter's writer; settle what the
    /// shared ledger still has under way.
    pub fn close(&self) {
        self.log.close();
        if let Some(shared) = &self.shared {
            shared.flush();
        }
    }
}

impl Charge {
    /// The call starts now, reserving `memory_mib` for its duration. From
    /// here on it is billed even if the client goes away mid-call.
    pub fn start(&mut self, memory_mib: u64, request_bytes: u64, outbound_bytes: Arc<AtomicU64>) {
        self.running = Some(Running {
            started: Instant::now(),
            memory_mib,
            request_bytes,
            outbound_bytes,
        });
    }

    /// The call ended, having sent `response_bytes` back.
    pub fn finish(mut self, response_bytes: u64) {
        self.settle(response_bytes);
    }

    fn settle(&mut self, response_bytes: u64) {
        let Some(running) = self.running.take() else {
            return;
        };
        self.settled = true;
        let wall_us = u64::try_from(running.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut usage = Usage {
            requests: 0,
            wall_us,
            mib_us: wall_us.saturating_mul(running.memory_mib),
            request_bytes: running.request_bytes,
            response_bytes,
            outbound_bytes: running.outbound_bytes.load(Ordering::Relaxed),
        };
        // A call that ran across midnight is billed to the day it ended, as
        // the meter records it; its reservation comes off wherever it is.
        let meter = &self.meter;
        let worst = Amount::of(&meter.worst_cases[self.function]);
        let used = Amount::of(&usage);
        let today = day_of(now_ms());
        meter.with_scopes(self.function, &self.caller, today, |cells| {
            for c in cells {
                c.settle(today, used, worst);
            }
        });
        if let Some(shared) = &meter.shared {
            let keys = || meter.shared_keys(self.function, &self.caller, self.day).0;
            match self.shared {
                Shared::Admitted(admitted) => {
                    shared.settle(&keys(), used.into(), worst.into(), admitted);
                }
                Shared::OnShare => {
                    shared.record_unadmitted(&keys(), used.plus(Amount::ONE_REQUEST).into());
                }
                Shared::None => {}
            }
        }
        usage.requests = 1;
        meter.log.record(
            now_ms(),
            &meter.function_names[self.function],
            &self.caller,
            &usage,
        );
    }
}

impl Drop for Charge {
    /// A call abandoned mid-way is billed for what it ran; a request that
    /// never ran costs nothing, so its charge is given back.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if self.running.is_some() {
            self.settle(0);
            return;
        }
        let meter = &self.meter;
        let worst = Amount::of(&meter.worst_cases[self.function]);
        let today = day_of(now_ms());
        let charged = self.day;
        meter.with_scopes(self.function, &self.caller, today, |cells| {
            for c in cells {
                c.unreserve(worst);
                // From the day it was charged, if its slot still holds it.
                c.sub_spent(charged, Amount::ONE_REQUEST);
            }
        });
        if let Shared::Admitted(admitted) = self.shared
            && let Some(shared) = &meter.shared
        {
            let (keys, _) = meter.shared_keys(self.function, &self.caller, charged);
            shared.give_back(&keys, worst.into(), admitted);
        }
    }
}

/// The most one call can use: all of its time at all of its memory, and
/// every byte its caps let it send. An admitted call reserves this much of
/// every budget it counts in until it ends.
pub fn worst_case(limits: &FunctionLimits) -> Usage {
    let wall_us = u64::try_from(limits.timeout.get().as_micros()).unwrap_or(u64::MAX);
    Usage {
        requests: 0,
        wall_us,
        mib_us: wall_us.saturating_mul(limits.memory.bytes() >> 20),
        request_bytes: 0,
        response_bytes: limits.max_response_body.bytes(),
        outbound_bytes: limits.max_outbound_bytes.bytes(),
    }
}

/// The first scope `totals` (this request's adds included) do not fit:
/// spent first in every scope, then spent plus what others reserved.
fn misfit(
    pricing: &Pricing,
    limits: &[&Limits; 4],
    totals: &[(Amount, Amount); 4],
    worst: Amount,
) -> Option<(usize, bool)> {
    let over = |i: usize, used: &Amount| {
        !limits[i].is_unlimited() && share(pricing, limits[i], used) > 1.0
    };
    if let Some(i) = (0..4).find(|&i| over(i, &totals[i].0)) {
        return Some((i, false));
    }
    (0..4)
        .find(|&i| over(i, &totals[i].0.plus(totals[i].1).minus(worst)))
        .map(|i| (i, true))
}

/// `limits` divided among `nodes` (a node's share while the shared ledger
/// is unreachable): rounded down, but a limit above zero keeps at least
/// one request.
fn share_of(limits: &Limits, nodes: usize) -> Limits {
    let n = nodes.max(1) as u64;
    Limits {
        money: limits.money.map(|m| m / n as f64),
        requests: limits
            .requests
            .map(|r| if r == 0 { 0 } else { (r / n).max(1) }),
        gb_seconds: limits.gb_seconds.map(|g| g / n as f64),
    }
}

/// `fraction` of `limits`, rounded down: a limit scaled to nothing
/// refuses everything.
fn scaled(limits: &Limits, fraction: f64) -> Limits {
    Limits {
        money: limits.money.map(|m| m * fraction),
        requests: limits.requests.map(|r| (r as f64 * fraction) as u64),
        gb_seconds: limits.gb_seconds.map(|g| g * fraction),
    }
}

/// The largest share of any limit that `used` takes.
fn share(pricing: &Pricing, limits: &Limits, used: &Amount) -> f64 {
    let total = used.usage();
    let mut share: f64 = 0.0;
    if let Some(limit) = limits.requests {
        share = share.max(ratio(total.requests as f64, limit as f64));
    }
    if let Some(limit) = limits.gb_seconds {
        share = share.max(ratio(total.gb_seconds(), limit));
    }
    if let Some(limit) = limits.money {
        let cost = pricing.cost(total.requests, total.gb_seconds(), total.egress_bytes());
        share = share.max(ratio(cost, limit));
    }
    share
}

fn ratio(used: f64, limit: f64) -> f64 {
    if limit <= 0.0 {
        if used > 0.0 { f64::INFINITY } else { 0.0 }
    } else {
        used / limit
    }
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

fn seconds_to_midnight(ms: i64) -> u64 {
    let left = DAY_MS - ms.rem_euclid(DAY_MS);
    u64::try_from(left).unwrap_or(0).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// A meter with one function whose call reserves `worst`, under
    /// `app` (the app's budget), in a fresh store.
    fn meter(dir: &std::path::Path, app: Limits, worst: Usage) -> Arc<Meter> {
        let store = bulkhead_store::Store::open(dir).expect("store");
        let log = MeterLog::start(&store).expect("meter log");
        Arc::new(Meter::of_parts(
            Pricing::default(),
            Budget {
                total: app,
                per_caller: Limits::default(),
            },
            vec![Budget::default()],
            vec![worst],
            vec!["hello".into()],
            log,
            Arc::new(Ledger::new(day_of(now_ms()))),
            None,
        ))
    }

    /// The admission, waited for on this thread (no shared ledger here:
    /// nothing to await for real).
    fn admit_now(
        meter: &Arc<Meter>,
        function: usize,
        caller: &Caller,
    ) -> Result<Charge, Exhausted> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(meter.admit(function, caller))
    }

    fn caller(n: u8) -> Caller {
        Caller::of(None, std::net::IpAddr::from([192, 0, 2, n]))
    }

    /// T04 under concurrency (issue 17): many threads racing for a budget
    /// of 100 requests, each admitted call running and settling at once,
    /// never spend more than 100, and the boundary's retry loses none.
    #[test]
    fn racing_callers_never_spend_more_than_the_budget_t04() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meter = meter(
            dir.path(),
            Limits {
                requests: Some(100),
                ..Limits::default()
            },
            Usage {
                mib_us: 1_000,
                ..Usage::default()
            },
        );
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let (meter, admitted) = (meter.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        if let Ok(mut charge) = admit_now(&meter, 0, &caller(t % 3)) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            charge.start(0, 0, Arc::default());
                            charge.finish(0);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 100);
        let day = day_of(now_ms());
        assert_eq!(meter.ledger.app.spent(day).requests, 100);
        assert_eq!(meter.ledger.app.reserved(), Amount::default());
        let refused = admit_now(&meter, 0, &caller(9)).err().expect("spent");
        assert!(!refused.held);
        assert_eq!(refused.scope, Scope::App);
    }

    /// T04 with reservations: a budget of 3.5 calls' worst case lets at
    /// most 4 calls hold a reservation at once (the last admitted may
    /// overshoot by its own worst case, as documented), however many
    /// threads race; when they end, nothing stays reserved.
    #[test]
    fn racing_reservations_never_exceed_what_the_budget_allows_t04() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 1 GiB for 1 s per call: 1 GB-s (binary) each.
        let worst = Usage {
            mib_us: 1024 * 1_000_000,
            ..Usage::default()
        };
        let meter = meter(
            dir.path(),
            Limits {
                gb_seconds: Some(3.5),
                ..Limits::default()
            },
            worst,
        );
        let holding = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let (meter, holding, most) = (meter.clone(), holding.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        let Ok(mut charge) = admit_now(&meter, 0, &caller(t)) else {
                            std::thread::yield_now();
                            continue;
                        };
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        holding.fetch_sub(1, Ordering::SeqCst);
                        // Used nothing: only the reservation comes and goes.
                        charge.start(0, 0, Arc::default());
                        charge.finish(0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=4).contains(&most),
            "{most} calls held reservations at once"
        );
        assert_eq!(meter.ledger.app.reserved(), Amount::default());
        let day = day_of(now_ms());
        assert_eq!(meter.ledger.app.spent(day).mib_us, 0);
    }

    /// A request that never ran gives its request and reservation back.
    #[test]
    fn a_charge_that_never_ran_is_given_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meter = meter(
            dir.path(),
            Limits {
                requests: Some(1),
                ..Limits::default()
            },
            Usage {
                mib_us: 5,
                ..Usage::default()
            },
        );
        let first = admit_now(&meter, 0, &caller(1)).expect("room for one");
        assert!(admit_now(&meter, 0, &caller(2)).is_err());
        drop(first);
        let day = day_of(now_ms());
        assert_eq!(meter.ledger.app.spent(day), Amount::default());
        assert_eq!(meter.ledger.app.reserved(), Amount::default());
        assert!(admit_now(&meter, 0, &caller(2)).is_ok());
    }
}
