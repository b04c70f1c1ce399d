//! Admission stage (T01, T02): a bound on requests running at once and on
//! requests outstanding (running plus queued), per function and app-wide,
//! shared fairly between callers.
//!
//! Fairness has two halves. Queued requests get running slots in turn,
//! one caller after another, not in arrival order, so a caller with many
//! queued requests waits for its own. And when the outstanding bound is
//! reached, a newcomer is not simply refused: if another caller holds more
//! places than the newcomer would, that caller's newest queued request is
//! pushed out (refused) to make room. One caller flooding therefore cannot
//! fill the queue and lock everyone else out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::caller::Caller;

pub struct Gate {
    max_running: u32,
    max_outstanding: u32,
    /// Mirrors `State::outstanding`, readable without the lock.
    outstanding: AtomicU32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: u32,
    outstanding: u32,
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
    queue: VecDeque<Waiter>,
}

struct Waiter {
    ticket: u64,
    turn: oneshot::Sender<Running>,
}

/// A place among the outstanding requests, given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    caller: Caller,
    ticket: u64,
}

/// A running slot, handed to the next caller in turn when dropped.
pub struct Running {
    gate: Option<Arc<Gate>>,
}

/// Why a queued request did not get to run.
#[derive(Debug, PartialEq, Eq)]
pub struct PushedOut;

impl Gate {
    pub fn new(max_running: u32, max_outstanding: u32) -> Arc<Self> {
        Arc::new(Self {
            max_running: max_running.max(1),
            max_outstanding: max_outstanding.max(1),
            outstanding: AtomicU32::new(0),
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

    /// Take a place among the outstanding requests for `caller`, or `None`
    /// if every place is taken by callers holding no more than it would.
    pub fn try_admit(self: &Arc<Self>, caller: &Caller) -> Option<Admitted> {
        let mut state = self.lock();
        if state.outstanding >= self.max_outstanding {
            let mine = state.callers.get(caller).map_or(0, |c| c.outstanding);
            self.push_out_heaviest(&mut state, mine + 1)?;
        }
        state.outstanding += 1;
        self.outstanding.store(state.outstanding, Ordering::Release);
        state.callers.entry(caller.clone()).or_default().outstanding += 1;
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        Some(Admitted {
            gate: self.clone(),
            caller: caller.clone(),
            ticket,
        })
    }

    /// Refuse the newest queued request of the caller holding the most
    /// places, if it holds more than `share`; its place is freed now.
    fn push_out_heaviest(&self, state: &mut State, share: u32) -> Option<()> {
        let heaviest = state
            .callers
            .iter()
            .filter(|(_, c)| !c.queue.is_empty())
            .max_by_key(|(_, c)| c.outstanding)
            .filter(|(_, c)| c.outstanding > share)
            .map(|(caller, _)| caller.clone())?;
        let entry = state.callers.get_mut(&heaviest)?;
        let waiter = entry.queue.pop_back()?;
        entry.outstanding -= 1;
        if entry.queue.is_empty() {
            state.turns.retain(|c| *c != heaviest);
        }
        state.outstanding -= 1;
        state.evicted.insert(waiter.ticket);
        // Dropping the sender tells the waiter it was pushed out.
        drop(waiter);
        Some(())
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Give a freed running slot to the next caller in turn, or back.
    fn release_running(self: &Arc<Self>) {
        let mut state = self.lock();
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
    /// Wait (queued, in turn with other callers) for a running slot.
    pub async fn run(&self) -> Result<Running, PushedOut> {
        let receiver = {
            let gate = &self.gate;
            let mut state = gate.lock();
            if state.running < gate.max_running && state.turns.is_empty() {
                state.running += 1;
                return Ok(Running {
                    gate: Some(gate.clone()),
                });
            }
            let (turn, receiver) = oneshot::channel();
            let entry = state.callers.entry(self.caller.clone()).or_default();
            let first = entry.queue.is_empty();
            entry.queue.push_back(Waiter {
                ticket: self.ticket,
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
        let mut gone = false;
        if let Some(entry) = state.callers.get_mut(&self.caller) {
            entry.outstanding -= 1;
            // Still queued (it gave up waiting): leave the queue.
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
            gate.release_running();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(n: u8) -> Caller {
        Caller::of(
            None,
            std::net::IpAddr::from([192, 0, 2, n]),
            &http::HeaderMap::new(),
            &Default::default(),
        )
    }

    #[tokio::test]
    async fn refuses_beyond_outstanding_and_frees_on_drop() {
        let gate = Gate::new(1, 2);
        let a = gate.try_admit(&caller(1)).unwrap();
        let b = gate.try_admit(&caller(1)).unwrap();
        assert!(gate.try_admit(&caller(1)).is_none());
        let running = a.run().await.unwrap();
        drop(running);
        drop(a);
        assert_eq!(gate.outstanding(), 1);
        assert!(b.run().await.is_ok());
        assert!(gate.try_admit(&caller(1)).is_some());
    }

    #[tokio::test]
    async fn a_flooder_is_pushed_out_for_a_newcomer_t02() {
        let gate = Gate::new(1, 4);
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
        assert!(gate.try_admit(&caller(1)).is_none());
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
