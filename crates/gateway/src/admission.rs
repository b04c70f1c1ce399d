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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::caller::Caller;
use crate::throttle;

/// No dynamic limit set.
const UNLIMITED: u32 = u32::MAX;

pub struct Gate {
    max_running: u32,
    max_outstanding: u32,
    /// Places one caller may hold (T02).
    per_caller: u32,
    /// Mirrors `State::outstanding`, readable without the lock.
    outstanding: AtomicU32,
    /// Mirrors `State::active`.
    active: AtomicU32,
    /// The dynamic throttle's limit on active requests, or [`UNLIMITED`].
    limit: AtomicU32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: u32,
    outstanding: u32,
    /// Outstanding requests whose bodies are read (queued or running).
    active: u32,
    /// Most active at once since the last [`Gate::sample`].
    peak_active: u32,
    /// Seconds from activation to the end of running, summed, and how many
    /// requests, since the last [`Gate::sample`].
    latency_sum: f64,
    latency_count: u64,
    callers: HashMap<Caller, CallerState>,
    /// Callers with queued requests, in the order they get the next slot.
    turns: VecDeque<Caller>,
    /// Tickets pushed out of the queue; their places are already given back.
    evicted: HashSet<u64>,
    next_ticket: u64,
}

#[derive(Default)]
struct CallerState {
    outstanding: u32,
    /// Of those, activated (body read).
    active: u32,
    /// Admitted, not yet queued: still reading and checking their bodies.
    reading: Vec<u64>,
    queue: VecDeque<Waiter>,
}

struct Waiter {
    ticket: u64,
    /// When it was activated, if it was.
    since: Option<Instant>,
    turn: oneshot::Sender<Running>,
}

/// A place among the outstanding requests, given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    caller: Caller,
    ticket: u64,
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
            limit: AtomicU32::new(UNLIMITED),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent counts: every
        // update below is a handful of integer and queue operations.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Take a place among the outstanding requests for `caller`: refused if
    /// it holds its share already, if the dynamic limit is reached and it
    /// holds its part of it, or if every place is taken by callers holding
    /// no more than it would.
    pub fn try_admit(self: &Arc<Self>, caller: &Caller) -> Result<Admitted, Refused> {
        let mut state = self.lock();
        let mine = state.callers.get(caller).map_or(0, |c| c.outstanding);
        if mine >= self.per_caller {
            return Err(Refused::CallerShare);
        }
        // Shed early, before the body is read, what would be shed once it is.
        if !self.may_activate(&state, caller) {
            return Err(Refused::Overloaded);
        }
        if state.outstanding >= self.max_outstanding {
            self.push_out_heaviest(&mut state, mine + 1)
                .ok_or(Refused::Full)?;
        }
        state.outstanding += 1;
        self.outstanding.store(state.outstanding, Ordering::Release);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        let entry = state.callers.entry(caller.clone()).or_default();
        entry.outstanding += 1;
        entry.reading.push(ticket);
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
    fn may_activate(&self, state: &State, caller: &Caller) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        if limit == UNLIMITED || state.active < limit {
            return true;
        }
        let mine = state.callers.get(caller).map_or(0, |c| c.active);
        let others = state
            .callers
            .iter()
            .filter(|(key, c)| c.active > 0 && *key != caller)
            .map(|(_, c)| c.active);
        throttle::fair_admits(limit, state.active, mine, others)
    }

    /// Refuse the newest request not yet running of the caller holding the
    /// most places, if it holds more than `share`: a queued one first, else
    /// one still sending its body (a slow body must not hold a place
    /// against lighter callers). Its place is freed now.
    fn push_out_heaviest(&self, state: &mut State, share: u32) -> Option<()> {
        let heaviest = state
            .callers
            .iter()
            .filter(|(_, c)| !c.queue.is_empty() || !c.reading.is_empty())
            .max_by_key(|(_, c)| c.outstanding)
            .filter(|(_, c)| c.outstanding > share)
            .map(|(caller, _)| caller.clone())?;
        let entry = state.callers.get_mut(&heaviest)?;
        // Dropping a waiter's sender tells it that it was pushed out; a
        // reader finds out when it asks to run.
        let (ticket, was_active) = match entry.queue.pop_back() {
            Some(waiter) => (waiter.ticket, waiter.since.is_some()),
            None => (entry.reading.pop()?, false),
        };
        entry.outstanding -= 1;
        if was_active {
            entry.active -= 1;
        }
        if entry.queue.is_empty() {
            state.turns.retain(|c| *c != heaviest);
        }
        state.outstanding -= 1;
        if was_active {
            state.active -= 1;
            self.active.store(state.active, Ordering::Release);
        }
        state.evicted.insert(ticket);
        Some(())
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
        let mut state = self.lock();
        let latency =
            (state.latency_count > 0).then(|| state.latency_sum / state.latency_count as f64);
        let sample = Sample {
            active: state.active,
            peak_active: state.peak_active.max(state.active),
            latency,
        };
        state.peak_active = state.active;
        state.latency_sum = 0.0;
        state.latency_count = 0;
        sample
    }

    /// Give a freed running slot to the next caller in turn, or back.
    fn release_running(self: &Arc<Self>, since: Option<Instant>) {
        let mut state = self.lock();
        if let Some(since) = since {
            state.latency_sum += since.elapsed().as_secs_f64();
            state.latency_count += 1;
        }
        while let Some(caller) = state.turns.pop_front() {
            let Some(entry) = state.callers.get_mut(&caller) else {
                continue;
            };
            let Some(waiter) = entry.queue.pop_front() else {
                continue;
            };
            if !entry.queue.is_empty() {
                state.turns.push_back(caller);
            }
            let slot = Running {
                gate: Some(self.clone()),
                since: waiter.since,
            };
            match waiter.turn.send(slot) {
                Ok(()) => return,
                // The waiter gave up; its place is given back by its own
                // `Admitted`. Disarm the slot so dropping it does not lock.
                Err(mut slot) => {
                    slot.gate = None;
                }
            }
        }
        state.running -= 1;
    }
}

impl Admitted {
    /// Its body is read: from now on it counts against the dynamic
    /// throttle's limit, unless that limit is reached and its caller holds
    /// its fair part of it (T01). Pushed out while reading: `Full`.
    pub fn activate(&mut self) -> Result<(), Refused> {
        let gate = self.gate.clone();
        let mut state = gate.lock();
        if state.evicted.contains(&self.ticket) {
            return Err(Refused::Full);
        }
        if self.activated.is_some() {
            return Ok(());
        }
        if let Some(entry) = state.callers.get_mut(&self.caller) {
            entry.reading.retain(|t| *t != self.ticket);
        }
        if !gate.may_activate(&state, &self.caller) {
            return Err(Refused::Overloaded);
        }
        state.active += 1;
        state.peak_active = state.peak_active.max(state.active);
        gate.active.store(state.active, Ordering::Release);
        if let Some(entry) = state.callers.get_mut(&self.caller) {
            entry.active += 1;
        }
        self.activated = Some(Instant::now());
        Ok(())
    }

    /// Wait (queued, in turn with other callers) for a running slot.
    pub async fn run(&self) -> Result<Running, PushedOut> {
        let receiver = {
            let gate = &self.gate;
            let mut state = gate.lock();
            if state.evicted.contains(&self.ticket) {
                return Err(PushedOut);
            }
            if let Some(entry) = state.callers.get_mut(&self.caller) {
                entry.reading.retain(|t| *t != self.ticket);
            }
            if state.running < gate.max_running && state.turns.is_empty() {
                state.running += 1;
                return Ok(Running {
                    gate: Some(gate.clone()),
                    since: self.activated,
                });
            }
            let (turn, receiver) = oneshot::channel();
            let entry = state.callers.entry(self.caller.clone()).or_default();
            let first = entry.queue.is_empty();
            entry.queue.push_back(Waiter {
                ticket: self.ticket,
                since: self.activated,
                turn,
            });
            if first {
                state.turns.push_back(self.caller.clone());
            }
            receiver
        };
        receiver.await.map_err(|_| PushedOut)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        if state.evicted.remove(&self.ticket) {
            return;
        }
        state.outstanding -= 1;
        self.gate
            .outstanding
            .store(state.outstanding, Ordering::Release);
        let active = self.activated.is_some();
        if active {
            state.active -= 1;
            self.gate.active.store(state.active, Ordering::Release);
        }
        let mut gone = false;
        if let Some(entry) = state.callers.get_mut(&self.caller) {
            entry.outstanding -= 1;
            if active {
                entry.active -= 1;
            }
            // Still reading, or queued and it gave up waiting: leave.
            entry.reading.retain(|t| *t != self.ticket);
            entry.queue.retain(|w| w.ticket != self.ticket);
            gone = entry.outstanding == 0 && entry.queue.is_empty();
        }
        if gone {
            state.callers.remove(&self.caller);
            state.turns.retain(|c| *c != self.caller);
        } else if state
            .callers
            .get(&self.caller)
            .is_some_and(|c| c.queue.is_empty())
        {
            state.turns.retain(|c| *c != self.caller);
        }
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

    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
