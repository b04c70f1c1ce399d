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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bulkhead_manifest::cost::Limits;
use bulkhead_manifest::{App, Budget, FunctionLimits, Pricing};
use bulkhead_store::meter::{MeterLog, Usage, hour_of, usage_since};
use bulkhead_store::{Store, StoreError, now_ms};
use tracing::{error, warn};

use crate::caller::Caller;

const DAY_MS: i64 = 86_400_000;

/// Which budget refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    App,
    AppPerCaller,
    Function,
    FunctionPerCaller,
}

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
    ledger: Arc<Mutex<Ledger>>,
}

#[derive(Default)]
struct Ledger {
    day: i64,
    app: Totals,
    app_callers: HashMap<Arc<str>, Totals>,
    /// Per function name, so versions with other functions share it.
    functions: HashMap<Arc<str>, Totals>,
    function_callers: HashMap<Arc<str>, HashMap<Arc<str>, Totals>>,
    /// Budget alerts already logged today: (scope, function, caller, level).
    alerted: HashSet<(u8, Arc<str>, Arc<str>, u8)>,
}

/// One scope's day: what is spent, and what running calls have reserved.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    spent: Usage,
    reserved: Usage,
}

impl Totals {
    /// Nothing spent; `reserved` held by calls still running.
    fn holding(reserved: Usage) -> Self {
        Self {
            spent: Usage::default(),
            reserved,
        }
    }
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
}

/// A call under way: what its usage is measured from.
struct Running {
    started: Instant,
    memory_mib: u64,
    request_bytes: u64,
    outbound_bytes: Arc<AtomicU64>,
}

impl Meter {
    /// `limits` are the functions' own, in manifest order.
    pub fn new(
        app: &App,
        limits: &[&FunctionLimits],
        store: &Store,
    ) -> Result<Arc<Self>, StoreError> {
        let log = MeterLog::start(store)?;
        let meter = Self::with(app, limits, log, Arc::default());
        meter.reload(store)?;
        Ok(Arc::new(meter))
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
        ))
    }

    fn with(
        app: &App,
        limits: &[&FunctionLimits],
        log: MeterLog,
        ledger: Arc<Mutex<Ledger>>,
    ) -> Self {
        Self {
            pricing: app.pricing.clone(),
            app_budget: app.budget.clone(),
            function_budgets: app.functions.iter().map(|f| f.budget.clone()).collect(),
            worst_cases: limits.iter().map(|l| worst_case(l)).collect(),
            ledger,
            function_names: app
                .functions
                .iter()
                .map(|f| f.name.as_str().into())
                .collect(),
            log,
        }
    }

    /// Rebuild today's totals from the durable meter.
    fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let today = day_of(now_ms());
        let rows = usage_since(store, hour_of(today * DAY_MS))?;
        let mut ledger = self.lock();
        *ledger = Ledger::empty(today);
        for row in rows {
            let caller: Arc<str> = row.caller.as_str().into();
            ledger.app.spent.add(&row.usage);
            ledger
                .app_callers
                .entry(caller.clone())
                .or_default()
                .spent
                .add(&row.usage);
            let function: Arc<str> = row.function.as_str().into();
            ledger
                .functions
                .entry(function.clone())
                .or_default()
                .spent
                .add(&row.usage);
            ledger
                .function_callers
                .entry(function)
                .or_default()
                .entry(caller)
                .or_default()
                .spent
                .add(&row.usage);
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charge one request to every budget of `function` for `caller`, or
    /// refuse it if any is spent.
    pub fn admit(self: &Arc<Self>, function: usize, caller: &Caller) -> Result<Charge, Exhausted> {
        let now = now_ms();
        let day = day_of(now);
        let mut ledger = self.lock();
        ledger.roll(day);
        let caller = caller.key();
        let one = Usage {
            requests: 1,
            ..Usage::default()
        };
        let ledger = &mut *ledger;
        let scopes = self.scopes(ledger, function, &caller);
        for (scope, limits, totals) in &scopes {
            if self.share(limits, &totals.spent, &one) > 1.0 {
                self.alert(ledger, *scope, function, &caller, 100, 1.0);
                return Err(Exhausted {
                    scope: *scope,
                    held: false,
                    retry_after: seconds_to_midnight(now),
                });
            }
        }
        for (scope, limits, totals) in &scopes {
            let mut committed = totals.spent;
            committed.add(&totals.reserved);
            if self.share(limits, &committed, &one) > 1.0 {
                let timeout_us = self.worst_cases[function].wall_us;
                return Err(Exhausted {
                    scope: *scope,
                    held: true,
                    retry_after: timeout_us.div_ceil(1_000_000).max(1),
                });
            }
        }
        let worst = self.worst_cases[function];
        ledger.each_scope(&self.function_names[function], &caller, |t| {
            t.spent.add(&one);
            t.reserved.add(&worst);
        });
        let after = self.scopes(ledger, function, &caller);
        for (scope, limits, totals) in after {
            let share = self.share(limits, &totals.spent, &Usage::default());
            if share >= 1.0 {
                self.alert(ledger, scope, function, &caller, 100, share);
            } else if share >= 0.8 {
                self.alert(ledger, scope, function, &caller, 80, share);
            }
        }
        Ok(Charge {
            meter: self.clone(),
            day,
            function,
            caller,
            running: None,
            settled: false,
        })
    }

    /// Each budget that applies to a call of `function` by `caller`, with
    /// what it has used today.
    fn scopes(
        &self,
        ledger: &Ledger,
        function: usize,
        caller: &Arc<str>,
    ) -> [(Scope, &Limits, Totals); 4] {
        let budget = &self.function_budgets[function];
        let name = &self.function_names[function];
        [
            (Scope::App, &self.app_budget.total, ledger.app),
            (
                Scope::AppPerCaller,
                &self.app_budget.per_caller,
                usage_of(&ledger.app_callers, caller),
            ),
            (
                Scope::Function,
                &budget.total,
                usage_of(&ledger.functions, name),
            ),
            (
                Scope::FunctionPerCaller,
                &budget.per_caller,
                ledger
                    .function_callers
                    .get(name)
                    .map_or_else(Totals::default, |callers| usage_of(callers, caller)),
            ),
        ]
    }

    /// The largest share of any limit that `used` plus `extra` would take.
    fn share(&self, limits: &Limits, used: &Usage, extra: &Usage) -> f64 {
        let mut total = *used;
        total.add(extra);
        let mut share: f64 = 0.0;
        if let Some(limit) = limits.requests {
            share = share.max(ratio(total.requests as f64, limit as f64));
        }
        if let Some(limit) = limits.gb_seconds {
            share = share.max(ratio(total.gb_seconds(), limit));
        }
        if let Some(limit) = limits.money {
            let cost = self
                .pricing
                .cost(total.requests, total.gb_seconds(), total.egress_bytes());
            share = share.max(ratio(cost, limit));
        }
        share
    }

    fn alert(
        &self,
        ledger: &mut Ledger,
        scope: Scope,
        function: usize,
        caller: &Arc<str>,
        level: u8,
        share: f64,
    ) {
        let caller_key: Arc<str> = match scope {
            Scope::AppPerCaller | Scope::FunctionPerCaller => caller.clone(),
            _ => "".into(),
        };
        let function_key: Arc<str> = match scope {
            Scope::Function | Scope::FunctionPerCaller => self
                .function_names
                .get(function)
                .cloned()
                .unwrap_or_else(|| "".into()),
            _ => "".into(),
        };
        if !ledger
            .alerted
            .insert((scope as u8, function_key.clone(), caller_key.clone(), level))
        {
            return;
        }
        let function = &*function_key;
        let scope_name = format!("{scope:?}");
        let used_percent = (share * 100.0).round();
        if level >= 100 {
            error!(target: "bulkhead::budget", scope = scope_name, function, caller = &*caller_key, used_percent, "daily budget exhausted: requests are refused until 00:00 UTC");
        } else {
            warn!(target: "bulkhead::budget", scope = scope_name, function, caller = &*caller_key, used_percent, "daily budget 80% used");
        }
    }

    /// Budget shares for metrics: the app, then each function.
    pub fn shares(&self) -> Vec<(Option<&str>, f64)> {
        let mut ledger = self.lock();
        ledger.roll(day_of(now_ms()));
        let mut out = vec![(
            None,
            self.share(&self.app_budget.total, &ledger.app.spent, &Usage::default()),
        )];
        for (i, name) in self.function_names.iter().enumerate() {
            let share = self.share(
                &self.function_budgets[i].total,
                &usage_of(&ledger.functions, name).spent,
                &Usage::default(),
            );
            out.push((Some(&**name), share));
        }
        out
    }

    /// Commit pending usage and stop the meter's writer.
    pub fn close(&self) {
        self.log.close();
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
        // the meter records it.
        self.release(|spent, _| spent.add(&usage));
        usage.requests = 1;
        let meter = &self.meter;
        meter.log.record(
            now_ms(),
            &meter.function_names[self.function],
            &self.caller,
            &usage,
        );
    }

    /// Give back this call's reservation in every scope of today's ledger
    /// (where it was carried if the call ran past midnight), changing what
    /// is spent with `settle`, told whether the request was charged today.
    fn release(&self, settle: impl Fn(&mut Usage, bool)) {
        let mut ledger = self.meter.lock();
        ledger.roll(day_of(now_ms()));
        let charged_today = ledger.day == self.day;
        let worst = self.meter.worst_cases[self.function];
        ledger.each_scope(
            &self.meter.function_names[self.function],
            &self.caller,
            |t| {
                t.reserved.sub(&worst);
                settle(&mut t.spent, charged_today);
            },
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
        self.release(|spent, charged_today| {
            if charged_today {
                spent.requests = spent.requests.saturating_sub(1);
            }
        });
    }
}

impl Ledger {
    fn empty(day: i64) -> Self {
        Self {
            day,
            ..Default::default()
        }
    }

    /// A new UTC day starts every budget afresh, except for what calls
    /// still running have reserved: they release it when they end.
    fn roll(&mut self, day: i64) {
        if day == self.day {
            return;
        }
        let held = |map: &HashMap<Arc<str>, Totals>| -> HashMap<Arc<str>, Totals> {
            map.iter()
                .filter(|(_, t)| t.reserved != Usage::default())
                .map(|(caller, t)| (caller.clone(), Totals::holding(t.reserved)))
                .collect()
        };
        *self = Self {
            day,
            app: Totals::holding(self.app.reserved),
            app_callers: held(&self.app_callers),
            functions: held(&self.functions),
            function_callers: self
                .function_callers
                .iter()
                .map(|(function, callers)| (function.clone(), held(callers)))
                .collect(),
            alerted: HashSet::new(),
        };
    }

    /// Apply `change` to the totals of every scope a call of `function`
    /// by `caller` counts in: the app, the function, and the caller of each.
    fn each_scope(
        &mut self,
        function: &Arc<str>,
        caller: &Arc<str>,
        mut change: impl FnMut(&mut Totals),
    ) {
        change(&mut self.app);
        change(self.app_callers.entry(caller.clone()).or_default());
        change(self.functions.entry(function.clone()).or_default());
        change(
            self.function_callers
                .entry(function.clone())
                .or_default()
                .entry(caller.clone())
                .or_default(),
        );
    }
}

fn usage_of(map: &HashMap<Arc<str>, Totals>, caller: &Arc<str>) -> Totals {
    map.get(caller).copied().unwrap_or_default()
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
    use super::*;

    fn usage(requests: u64, mib_us: u64) -> Usage {
        Usage {
            requests,
            mib_us,
            ..Usage::default()
        }
    }

    /// T04 at midnight: what yesterday's still-running calls reserved is
    /// carried into the new day (so they can release it), and nothing
    /// they spent yesterday is.
    #[test]
    fn a_new_day_keeps_only_what_running_calls_hold() {
        let caller: Arc<str> = "ip:198.51.100.1".into();
        let (first, second): (Arc<str>, Arc<str>) = ("first".into(), "second".into());
        let mut ledger = Ledger::empty(10);
        ledger.each_scope(&second, &caller, |t| {
            t.spent.add(&usage(5, 100));
            t.reserved.add(&usage(0, 40));
        });
        let idle: Arc<str> = "ip:198.51.100.2".into();
        ledger.each_scope(&first, &idle, |t| t.spent.add(&usage(1, 1)));

        ledger.roll(11);
        assert_eq!(ledger.day, 11);
        for totals in [
            ledger.app,
            ledger.functions[&second],
            ledger.app_callers[&caller],
            ledger.function_callers[&second][&caller],
        ] {
            assert_eq!(totals.spent, Usage::default());
            assert_eq!(totals.reserved, usage(0, 40));
        }
        assert!(!ledger.functions.contains_key(&first));
        assert!(!ledger.app_callers.contains_key(&idle));

        // The call ends after midnight: its reservation comes off today.
        ledger.each_scope(&second, &caller, |t| {
            t.reserved.sub(&usage(0, 40));
            t.spent.add(&usage(0, 30));
        });
        assert_eq!(ledger.app.reserved, Usage::default());
        assert_eq!(ledger.app.spent, usage(0, 30));
    }
}
