//! Admission stage (T01, T02): a bound on requests running at once and on
//! requests outstanding (running plus queued), per function and app-wide,
//! shared fairly between callers.
//!
//! Fairness has three parts. No caller holds more than its share of the
//! outstanding places (`max_outstanding_per_caller`, a quarter by default).
//! Queued requests get running slots in turn, one caller after another,
//! not in arrival order, so a caller with many queued requests waits for
//! its own. And when the outstanding bound is reached, a newcomer is not
//! simply refused: if another caller holds more places than the newcomer
//! would, that caller's newest queued request is pushed out (refused) to
//! make room. One caller flooding therefore cannot fill the queue and lock
//! everyone else out.
//!
//! A request still sending its body holds a place but is not *active*: only
//! once its body is read ([`Admitted::activate`]) does it count against the
//! dynamic throttle's limit (T01, [`crate::throttle`]), so bodies that never
//! arrive cannot make the gateway shed everyone else's requests.
//!
//! Issue 17: no gate-wide lock on a request's way. The counts are atomics
//! whose bounds are taken by compare-and-swap (never past a bound); a
//! caller's own counts sit in a sharded map (dashmap), locked per shard,
//! so only requests of callers in the same shard meet. The gate-wide lock
//! remains where the gate is at a bound and fairness needs the whole
//! picture: queueing for a running slot (and handing freed slots on in
//! turn), pushing out the heaviest caller when every place is taken, and
//! activating at the dynamic throttle's limit. A gate away from its bounds
//! never takes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::caller::Caller;
use crate::throttle;

/// No dynamic limit set.
const UNLIMITED: u32 = u32::MAX;

/// A place's life, in [`Ticket::state`]: still sending its body (it may
/// be pushed out as a reader), past that (activated or waiting to run),
/// or given back (pushed out, or its request ended).
const READING: u8 = 0;
const PAST: u8 = 1;
const GONE: u8 = 2;

/// Reading lists are pruned of tickets past reading once this long.
const PRUNE_AT: usize = 8;

pub struct Gate {
    max_running: u32,
    max_outstanding: u32,
    /// Places one caller may hold (T02).
    per_caller: u32,
    outstanding: AtomicU32,
    /// Outstanding requests whose bodies are read (queued or running).
    active: AtomicU32,
    running: AtomicU32,
    /// Waiters in the queue (some may have given up since): while any
    /// are, freed slots go through the queue, in turn.
    queued: AtomicU32,
    /// The dynamic throttle's limit on active requests, or [`UNLIMITED`].
    limit: AtomicU32,
    /// Most active at once since the last [`Gate::sample`].
    peak_active: AtomicU32,
    /// Nanoseconds from activation to the end of running, summed, and how
    /// many requests, since the last [`Gate::sample`].
    latency_ns: AtomicU64,
    latency_count: AtomicU64,
    /// Each caller's counts, sharded: locked only by its own shard's
    /// callers.
    callers: DashMap<Caller, CallerState>,
    /// Only at a bound: see the module doc. Taken before any shard of
    /// `callers`, never while holding one.
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct CallerState {
    outstanding: AtomicU32,
    /// Of those, activated (body read).
    active: AtomicU32,
    /// Admitted, maybe still reading and checking their bodies; those
    /// past reading are pruned lazily.
    reading: Mutex<Vec<Arc<Ticket>>>,
}

#[derive(Default)]
struct Queue {
    waiting: HashMap<Caller, VecDeque<Waiter>>,
    /// Callers with queued requests, in the order they get the next slot.
    turns: VecDeque<Caller>,
}

#[derive(Default)]
struct Ticket {
    state: AtomicU8,
}

impl Ticket {
    /// Move from reading to past it; false if it was pushed out.
    fn past_reading(&self) -> bool {
        match self
            .state
            .compare_exchange(READING, PAST, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state != GONE,
        }
    }

    /// Give its place back; true only for whoever does it first.
    fn give_back(&self, from: u8) -> bool {
        self.state
            .compare_exchange(from, GONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

struct Waiter {
    ticket: Arc<Ticket>,
    /// When it was activated, if it was.
    since: Option<Instant>,
    turn: oneshot::Sender<Running>,
}

/// A place among the outstanding requests, given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    caller: Caller,
    ticket: Arc<Ticket>,
    /// When its body was read and it became active.
    activated: Option<Instant>,
}

/// A running slot, handed to the next caller in turn when dropped.
pub struct Running {
    gate: Option<Arc<Gate>>,
    /// When the request holding it became active: its latency is sampled.
    since: Option<Instant>,
}

/// Why a queued request did not get to run.
#[derive(Debug, PartialEq, Eq)]
pub struct PushedOut;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken by callers holding no more than this one
    /// would, or its place was pushed out for a lighter caller.
    Full,
    /// The caller already holds its share of the places (T02).
    CallerShare,
    /// The dynamic throttle's limit is reached and the caller holds at
    /// least its fair part of it (T01).
    Overloaded,
}

impl Refused {
    /// For the access log and the audit record: which bound, at which gate.
    pub fn describe(self, scope: &str) -> String {
        let what = match self {
            Refused::Full => "every outstanding place is taken",
            Refused::CallerShare => "the caller holds its share of the outstanding places",
            Refused::Overloaded => {
                "over the dynamic throttle's limit, at or above the caller's part"
            }
        };
        format!("{scope}: {what}")
    }
}

/// What the dynamic throttle reads from a gate each interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Active now.
    pub active: u32,
    /// Most active at once during the interval.
    pub peak_active: u32,
    /// Mean seconds from activation to the end of running of the requests
    /// that finished during the interval, if any did.
    pub latency: Option<f64>,
}

impl Gate {
    pub fn new(max_running: u32, max_outstanding: u32, per_caller: u32) -> Arc<Self> {
        let max_outstanding = max_outstanding.max(1);
        Arc::new(Self {
            max_running: max_running.max(1),
            max_outstanding,
            per_caller: per_caller.clamp(1, max_outstanding),
            outstanding: AtomicU32::new(0),
            active: AtomicU32::new(0),
            running: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            limit: AtomicU32::new(UNLIMITED),
            peak_active: AtomicU32::new(0),
            latency_ns: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            callers: DashMap::new(),
            queue: Mutex::new(Queue::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a consistent queue: every
        // update is a push or a pop.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Take a place among the outstanding requests for `caller`: refused if
    /// it holds its share already, if the dynamic limit is reached and it
    /// holds its part of it, or if every place is taken by callers holding
    /// no more than it would.
    pub fn try_admit(self: &Arc<Self>, caller: &Caller) -> Result<Admitted, Refused> {
        let mine = self
            .callers
            .get(caller)
            .map_or(0, |c| c.outstanding.load(Ordering::Acquire));
        if mine >= self.per_caller {
            return Err(Refused::CallerShare);
        }
        // Shed early, before the body is read, what would be shed once it is.
        if !self.may_activate(caller) {
            return Err(Refused::Overloaded);
        }
        // T02: the caller's share first, taken under its shard lock, so
        // racing requests of one caller never hold more than it; and so a
        // push-out below compares the others with what this caller really
        // holds (a stale count let a caller push out another at an equal
        // share and then be refused its own: a place lost for nothing).
        let mine = {
            let entry = self.callers.entry(caller.clone()).or_default();
            match entry
                .outstanding
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.per_caller).then_some(n + 1)
                }) {
                Ok(before) => before + 1,
                Err(_) => return Err(Refused::CallerShare),
            }
        };
        if !take_below(&self.outstanding, self.max_outstanding) {
            // Every place is taken: push out a heavier caller's (its place
            // passes to this request), one at a time.
            let mut queue = self.lock();
            if !take_below(&self.outstanding, self.max_outstanding)
                && self.push_out_heaviest(&mut queue, mine).is_none()
            {
                drop(queue);
                // Its share back; a caller holding nothing leaves the map
                // (refusals never grow it, T01).
                let gone = self
                    .callers
                    .get(caller)
                    .is_some_and(|e| e.outstanding.fetch_sub(1, Ordering::AcqRel) == 1);
                if gone {
                    self.callers
                        .remove_if(caller, |_, c| c.outstanding.load(Ordering::Acquire) == 0);
                }
                return Err(Refused::Full);
            }
        }
        let ticket = Arc::new(Ticket::default());
        let entry = self.callers.entry(caller.clone()).or_default();
        {
            let mut reading = lock(&entry.reading);
            if reading.len() >= PRUNE_AT {
                reading.retain(|t| t.state.load(Ordering::Acquire) == READING);
            }
            reading.push(ticket.clone());
        }
        drop(entry);
        Ok(Admitted {
            gate: self.clone(),
            caller: caller.clone(),
            ticket,
            activated: None,
        })
    }

    /// Whether one more active request of `caller` fits the dynamic limit:
    /// below it, always; at it, only a caller under its fair part, and only
    /// as far as heavier callers hold more than theirs (T01, T02).
    fn may_activate(&self, caller: &Caller) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        if limit == UNLIMITED || self.active.load(Ordering::Acquire) < limit {
            return true;
        }
        self.fair_at_limit(limit, caller)
    }

    /// At the limit: who holds how many active requests.
    fn fair_at_limit(&self, limit: u32, caller: &Caller) -> bool {
        let mut mine = 0;
        let mut others = Vec::new();
        for entry in self.callers.iter() {
            let active = entry.active.load(Ordering::Acquire);
            if entry.key() == caller {
                mine = active;
            } else if active > 0 {
                others.push(active);
            }
        }
        let active = self.active.load(Ordering::Acquire);
        throttle::fair_admits(limit, active, mine, others.into_iter())
    }

    /// Refuse the newest request not yet running of the caller holding the
    /// most places, if it holds more than `share`: a queued one first, else
    /// one still sending its body (a slow body must not hold a place
    /// against lighter callers). Its place passes to the newcomer.
    fn push_out_heaviest(&self, queue: &mut Queue, share: u32) -> Option<()> {
        loop {
            let heaviest = self
                .callers
                .iter()
                .filter(|entry| {
                    queue.waiting.contains_key(entry.key()) || !lock(&entry.reading).is_empty()
                })
                .map(|entry| {
                    (
                        entry.outstanding.load(Ordering::Acquire),
                        entry.key().clone(),
                    )
                })
                .max_by_key(|(outstanding, _)| *outstanding)
                .filter(|(outstanding, _)| *outstanding > share)
                .map(|(_, caller)| caller)?;
            if self.push_out_one(queue, &heaviest) {
                return Some(());
            }
        }
    }

    /// Push out `caller`'s newest queued request, else its newest reader;
    /// false if it had none left (they ended meanwhile).
    fn push_out_one(&self, queue: &mut Queue, caller: &Caller) -> bool {
        // Dropping a waiter's sender tells it that it was pushed out; a
        // reader finds out when it asks to activate or run.
        while let Some(waiter) = queue.waiting.get_mut(caller).and_then(|q| q.pop_back()) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if queue.waiting.get(caller).is_some_and(|q| q.is_empty()) {
                queue.waiting.remove(caller);
                queue.turns.retain(|c| c != caller);
            }
            if waiter.ticket.give_back(PAST) {
                self.forget(caller, waiter.since.is_some());
                return true;
            }
        }
        let Some(entry) = self.callers.get(caller) else {
            // Its queue held only requests that had ended: the caller went.
            return false;
        };
        let mut reading = lock(&entry.reading);
        while let Some(ticket) = reading.pop() {
            if ticket.give_back(READING) {
                drop(reading);
                drop(entry);
                self.forget(caller, false);
                return true;
            }
        }
        drop(reading);
        drop(entry);
        // Nothing to push out after all: the scan must not pick it again.
        false
    }

    /// A pushed-out place leaves its caller's counts (the gate's count of
    /// outstanding places passes to the newcomer).
    fn forget(&self, caller: &Caller, was_active: bool) {
        if was_active {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(entry) = self.callers.get(caller) {
            entry.outstanding.fetch_sub(1, Ordering::AcqRel);
            if was_active {
                entry.active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Requests whose bodies are read, queued or running.
    #[cfg(test)]
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    /// Set (or lift, with `None`) the dynamic throttle's limit on active
    /// requests.
    pub fn set_limit(&self, limit: Option<u32>) {
        self.limit
            .store(limit.map_or(UNLIMITED, |l| l.max(1)), Ordering::Release);
    }

    /// What happened since the last sample; starts the next interval.
    pub fn sample(&self) -> Sample {
        let active = self.active.load(Ordering::Acquire);
        let peak = self.peak_active.swap(active, Ordering::AcqRel);
        let sum = self.latency_ns.swap(0, Ordering::AcqRel);
        let count = self.latency_count.swap(0, Ordering::AcqRel);
        Sample {
            active,
            peak_active: peak.max(active),
            latency: (count > 0).then(|| sum as f64 / 1e9 / count as f64),
        }
    }

    /// A running slot is free: hand it to the next caller in turn if any
    /// waits, else give it back.
    fn release_running(self: &Arc<Self>, since: Option<Instant>) {
        if let Some(since) = since {
            let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.latency_ns.fetch_add(ns, Ordering::AcqRel);
            self.latency_count.fetch_add(1, Ordering::AcqRel);
        }
        // SeqCst with the queueing side (`run`): either this sees its
        // waiter, or the waiter sees this free slot. No wake-up is lost.
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            let mut queue = self.lock();
            self.hand_on(&mut queue);
        }
    }

    /// While a slot is free and someone waits, give it to the next caller
    /// in turn.
    fn hand_on(self: &Arc<Self>, queue: &mut Queue) {
        while take_below(&self.running, self.max_running) {
            let mut slot = Some(Running {
                gate: Some(self.clone()),
                since: None,
            });
            while let Some(caller) = queue.turns.pop_front() {
                let Some(waiters) = queue.waiting.get_mut(&caller) else {
                    continue;
                };
                let Some(waiter) = waiters.pop_front() else {
                    queue.waiting.remove(&caller);
                    continue;
                };
                self.queued.fetch_sub(1, Ordering::AcqRel);
                if waiters.is_empty() {
                    queue.waiting.remove(&caller);
                } else {
                    queue.turns.push_back(caller);
                }
                if waiter.ticket.state.load(Ordering::Acquire) == GONE {
                    continue;
                }
                let Some(mut turn) = slot.take() else {
                    break;
                };
                turn.since = waiter.since;
                // The waiter may have given up; its place is given back by
                // its own `Admitted`. Then try the next.
                if let Err(back) = waiter.turn.send(turn) {
                    slot = Some(back);
                } else {
                    break;
                }
            }
            if let Some(mut unused) = slot {
                // Nobody left waiting: the slot goes back, without running
                // this again through `Drop`.
                unused.gate = None;
                self.running.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Take one below `bound`: never past it, however many race.
fn take_below(count: &AtomicU32, bound: u32) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < bound).then_some(n + 1)
        })
        .is_ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Admitted {
    /// Its body is read: from now on it counts against the dynamic
    /// throttle's limit, unless that limit is reached and its caller holds
    /// its fair part of it (T01). Pushed out while reading: `Full`.
    pub fn activate(&mut self) -> Result<(), Refused> {
        if !self.ticket.past_reading() {
            return Err(Refused::Full);
        }
        if self.activated.is_some() {
            return Ok(());
        }
        let gate = &self.gate;
        let limit = gate.limit.load(Ordering::Acquire);
        let fits = if limit == UNLIMITED {
            gate.active.fetch_add(1, Ordering::AcqRel);
            true
        } else if take_below(&gate.active, limit) {
            true
        } else {
            // At the limit: decisions are taken one at a time, with every
            // caller's count in view.
            let _queue = gate.lock();
            let fits = gate.fair_at_limit(limit, &self.caller);
            if fits {
                gate.active.fetch_add(1, Ordering::AcqRel);
            }
            fits
        };
        if !fits {
            return Err(Refused::Overloaded);
        }
        let active = gate.active.load(Ordering::Acquire);
        gate.peak_active.fetch_max(active, Ordering::AcqRel);
        if let Some(entry) = gate.callers.get(&self.caller) {
            entry.active.fetch_add(1, Ordering::AcqRel);
        }
        self.activated = Some(Instant::now());
        Ok(())
    }

    /// Wait (queued, in turn with other callers) for a running slot.
    pub async fn run(&self) -> Result<Running, PushedOut> {
        if !self.ticket.past_reading() {
            return Err(PushedOut);
        }
        let gate = &self.gate;
        let slot = || Running {
            gate: Some(gate.clone()),
            since: self.activated,
        };
        if gate.queued.load(Ordering::SeqCst) == 0 && take_below(&gate.running, gate.max_running) {
            return Ok(slot());
        }
        let receiver = {
            let mut queue = gate.lock();
            if queue.turns.is_empty() && take_below(&gate.running, gate.max_running) {
                return Ok(slot());
            }
            let (turn, receiver) = oneshot::channel();
            let waiters = queue.waiting.entry(self.caller.clone()).or_default();
            let first = waiters.is_empty();
            waiters.push_back(Waiter {
                ticket: self.ticket.clone(),
                since: self.activated,
                turn,
            });
            if first {
                queue.turns.push_back(self.caller.clone());
            }
            gate.queued.fetch_add(1, Ordering::SeqCst);
            // A slot freed before the count above was seen: hand it on.
            gate.hand_on(&mut queue);
            receiver
        };
        receiver.await.map_err(|_| PushedOut)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let state = self.ticket.state.swap(GONE, Ordering::AcqRel);
        if state == GONE {
            // Pushed out: its place was given back then.
            return;
        }
        let gate = &self.gate;
        gate.outstanding.fetch_sub(1, Ordering::AcqRel);
        let active = self.activated.is_some();
        if active {
            gate.active.fetch_sub(1, Ordering::AcqRel);
        }
        let gone = match gate.callers.get(&self.caller) {
            Some(entry) => {
                if active {
                    entry.active.fetch_sub(1, Ordering::AcqRel);
                }
                entry.outstanding.fetch_sub(1, Ordering::AcqRel) == 1
            }
            None => false,
        };
        // A caller with nothing outstanding leaves the map (it stays
        // bounded by the outstanding places); a racing admission of the
        // same caller keeps it.
        if gone {
            gate.callers.remove_if(&self.caller, |_, c| {
                c.outstanding.load(Ordering::Acquire) == 0
            });
        }
        // A waiter that gave up stays queued until a slot reaches it, and
        // is then skipped (`hand_on`).
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release_running(self.since);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(n: u8) -> Caller {
        Caller::of(None, std::net::IpAddr::from([192, 0, 2, n]))
    }

    #[tokio::test]
    async fn refuses_beyond_outstanding_and_frees_on_drop() {
        let gate = Gate::new(1, 2, 2);
        let a = gate.try_admit(&caller(1)).unwrap();
        let b = gate.try_admit(&caller(1)).unwrap();
        assert!(gate.try_admit(&caller(1)).is_err());
        let running = a.run().await.unwrap();
        drop(running);
        drop(a);
        assert_eq!(gate.outstanding(), 1);
        assert!(b.run().await.is_ok());
        assert!(gate.try_admit(&caller(1)).is_ok());
    }

    #[tokio::test]
    async fn a_flooder_is_pushed_out_for_a_newcomer_t02() {
        let gate = Gate::new(1, 4, 4);
        let flood: Vec<Admitted> = (0..4)
            .map(|_| gate.try_admit(&caller(1)).unwrap())
            .collect();
        let running = flood[0].run().await.unwrap();
        let mut queued: Vec<_> = flood[1..].iter().map(|a| Box::pin(a.run())).collect();
        for q in &mut queued {
            assert!(futures_poll(q.as_mut()).is_none());
        }
        // Full; the flooder holds all 4 places, the newcomer none.
        let newcomer = gate.try_admit(&caller(2)).expect("a fair share");
        // The flooder's newest queued request was refused.
        assert_eq!(queued.pop().unwrap().await.err(), Some(PushedOut));
        // Turns alternate between callers: the flooder's oldest queued
        // request runs next, then the newcomer, before the flooder's others.
        let mut next = Box::pin(newcomer.run());
        assert!(futures_poll(next.as_mut()).is_none());
        drop(running);
        let flooder_turn = futures_poll(queued[0].as_mut()).expect("turn").unwrap();
        assert!(futures_poll(next.as_mut()).is_none());
        drop(flooder_turn);
        let _newcomer_slot = futures_poll(next.as_mut())
            .expect("newcomer's turn")
            .unwrap();
        assert!(futures_poll(queued[1].as_mut()).is_none());
        // A second flooder request cannot push out a caller at its share.
        assert!(gate.try_admit(&caller(1)).is_err());
    }

    #[tokio::test]
    async fn a_flooder_still_sending_bodies_is_pushed_out_too_t02() {
        let gate = Gate::new(1, 3, 3);
        // Three places held by requests still reading their bodies.
        let slow: Vec<Admitted> = (0..3)
            .map(|_| gate.try_admit(&caller(1)).unwrap())
            .collect();
        let newcomer = gate.try_admit(&caller(2)).expect("a fair share");
        // The flooder's newest learns it was pushed out when it asks to run.
        assert_eq!(slow[2].run().await.err(), Some(PushedOut));
        assert!(newcomer.run().await.is_ok());
        drop(slow);
        assert_eq!(gate.outstanding(), 1);
    }

    /// T02: one caller holds at most its share of the places, whatever
    /// room is left; another caller still gets in.
    #[test]
    fn a_caller_holds_no_more_than_its_share_t02() {
        let gate = Gate::new(4, 16, 4);
        let held: Vec<Admitted> = (0..4)
            .map(|_| gate.try_admit(&caller(1)).unwrap())
            .collect();
        assert_eq!(gate.try_admit(&caller(1)).err(), Some(Refused::CallerShare));
        assert!(gate.try_admit(&caller(2)).is_ok());
        drop(held);
        assert!(gate.try_admit(&caller(1)).is_ok());
    }

    /// T01: requests still reading their bodies are not active, so they do
    /// not count against the dynamic limit; activated ones do, and at the
    /// limit the caller holding more than its part is shed first.
    #[test]
    fn readers_are_not_active_and_the_heaviest_is_shed_first_t01() {
        let gate = Gate::new(8, 64, 32);
        gate.set_limit(Some(4));
        // A caller with 20 bodies that never come: none of them active.
        let readers: Vec<Admitted> = (0..20)
            .map(|_| gate.try_admit(&caller(1)).unwrap())
            .collect();
        assert_eq!(gate.active(), 0);
        // The same caller activates 4: the limit is reached, and it is
        // shed (at the head, before its body is read).
        let mut heavy: Vec<Admitted> = (0..4)
            .map(|_| gate.try_admit(&caller(1)).unwrap())
            .collect();
        for a in &mut heavy {
            a.activate().unwrap();
        }
        assert_eq!(gate.active(), 4);
        assert_eq!(gate.try_admit(&caller(1)).err(), Some(Refused::Overloaded));
        // A light caller is owed what the heavy one holds beyond its part
        // (4 / 2 callers = 2), and no more.
        let mut light: Vec<Admitted> = (0..2)
            .map(|_| gate.try_admit(&caller(2)).unwrap())
            .collect();
        for a in &mut light {
            a.activate().unwrap();
        }
        assert_eq!(gate.active(), 6);
        assert_eq!(gate.try_admit(&caller(2)).err(), Some(Refused::Overloaded));
        // Admitted below the limit, refused when its body is read and the
        // limit is reached by callers within their parts.
        let small = Gate::new(8, 64, 32);
        small.set_limit(Some(2));
        let mut places: Vec<Admitted> = (1..=3)
            .map(|n| small.try_admit(&caller(n)).unwrap())
            .collect();
        places[0].activate().unwrap();
        places[1].activate().unwrap();
        assert_eq!(places[2].activate().err(), Some(Refused::Overloaded));
        drop(places);
        assert_eq!((small.active(), small.outstanding()), (0, 0));
        // Lifting the limit admits again; readers never counted.
        gate.set_limit(None);
        assert!(gate.try_admit(&caller(3)).is_ok());
        drop(readers);
        drop(heavy);
        drop(light);
        assert_eq!((gate.active(), gate.outstanding()), (0, 0));
    }

    /// After every racing task ended, every count is back to zero and no
    /// caller is left in the map (issue 17).
    fn assert_back_to_zero(gate: &Gate) {
        assert_eq!((gate.active(), gate.outstanding()), (0, 0));
        assert_eq!(gate.running.load(Ordering::SeqCst), 0);
        assert!(gate.callers.is_empty());
    }

    /// Many tasks of four callers on a multi-thread runtime (issue 17):
    /// the gate never holds more places than its bound or a caller more
    /// than its share (T02), never runs more than its running bound, and no
    /// queued request misses its turn (each gets a slot within seconds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_requests_never_pass_the_bounds_nor_lose_a_turn_t01_t02() {
        const CALLERS: u8 = 4;
        const SHARE: u32 = 2;
        const RUNNING: u32 = 3;
        let places = u32::from(CALLERS) * SHARE;
        let gate = Gate::new(RUNNING, places, SHARE);
        let breaches = Arc::new(AtomicU32::new(0));
        let lost = Arc::new(AtomicU32::new(0));
        let ran = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..32u8)
            .map(|t| {
                let (gate, breaches, lost, ran) =
                    (gate.clone(), breaches.clone(), lost.clone(), ran.clone());
                tokio::spawn(async move {
                    let who = caller(t % CALLERS);
                    for _ in 0..200 {
                        let Ok(mut place) = gate.try_admit(&who) else {
                            tokio::task::yield_now().await;
                            continue;
                        };
                        let mine = gate
                            .callers
                            .get(&who)
                            .map_or(0, |c| c.outstanding.load(Ordering::SeqCst));
                        if mine > SHARE || gate.outstanding() > places {
                            breaches.fetch_add(1, Ordering::SeqCst);
                        }
                        if place.activate().is_err() {
                            breaches.fetch_add(1, Ordering::SeqCst);
                        }
                        let run = place.run();
                        match tokio::time::timeout(std::time::Duration::from_secs(10), run).await {
                            Ok(Ok(slot)) => {
                                ran.fetch_add(1, Ordering::SeqCst);
                                if gate.running.load(Ordering::SeqCst) > RUNNING {
                                    breaches.fetch_add(1, Ordering::SeqCst);
                                }
                                tokio::task::yield_now().await;
                                drop(slot);
                            }
                            // Nobody is heavier than a share here: no push-out.
                            Ok(Err(PushedOut)) => {
                                breaches.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                lost.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(breaches.load(Ordering::SeqCst), 0);
        assert_eq!(lost.load(Ordering::SeqCst), 0);
        assert!(ran.load(Ordering::SeqCst) > 0);
        assert_back_to_zero(&gate);
    }

    /// A flooder racing newcomers at a full gate (issue 17, T02): places
    /// pass from the flooder to newcomers, the bound is never passed, every
    /// queued request either runs or learns it was pushed out, and every
    /// count is back to zero at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flood_racing_newcomers_never_passes_the_bound_t02() {
        const PLACES: u32 = 6;
        let gate = Gate::new(2, PLACES, PLACES);
        let breaches = Arc::new(AtomicU32::new(0));
        let lost = Arc::new(AtomicU32::new(0));
        let pushed = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..24u8)
            .map(|t| {
                let (gate, breaches, lost, pushed) =
                    (gate.clone(), breaches.clone(), lost.clone(), pushed.clone());
                tokio::spawn(async move {
                    // Two thirds of the tasks are one flooder.
                    let who = if t % 3 == 0 {
                        caller(10 + t)
                    } else {
                        caller(1)
                    };
                    for _ in 0..150 {
                        let Ok(mut place) = gate.try_admit(&who) else {
                            tokio::task::yield_now().await;
                            continue;
                        };
                        if gate.outstanding() > PLACES {
                            breaches.fetch_add(1, Ordering::SeqCst);
                        }
                        if place.activate().is_err() {
                            pushed.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        let run = place.run();
                        match tokio::time::timeout(std::time::Duration::from_secs(10), run).await {
                            Ok(Ok(slot)) => {
                                tokio::task::yield_now().await;
                                drop(slot);
                            }
                            Ok(Err(PushedOut)) => {
                                pushed.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(_) => {
                                lost.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(breaches.load(Ordering::SeqCst), 0);
        assert_eq!(lost.load(Ordering::SeqCst), 0);
        assert_back_to_zero(&gate);
    }

    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
