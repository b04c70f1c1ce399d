//! Admission stage (T01): a bound on requests running at once and on
//! requests outstanding (running plus queued), per function and app-wide.
//! Over the outstanding bound a request is refused at once; it never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Gate {
    max_outstanding: u32,
    outstanding: AtomicU32,
    running: Arc<Semaphore>,
}

/// A place among the outstanding requests, given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
}

impl Gate {
    pub fn new(max_concurrent: u32, max_outstanding: u32) -> Arc<Self> {
        Arc::new(Self {
            max_outstanding,
            outstanding: AtomicU32::new(0),
            running: Arc::new(Semaphore::new(max_concurrent as usize)),
        })
    }

    /// Take a place among the outstanding requests, or `None` if full.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admitted> {
        self.outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_outstanding).then_some(n + 1)
            })
            .ok()?;
        Some(Admitted { gate: self.clone() })
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Acquire)
    }
}

impl Admitted {
    /// Wait (queued) for a running slot.
    pub async fn run(&self) -> Option<OwnedSemaphorePermit> {
        self.gate.running.clone().acquire_owned().await.ok()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_outstanding_and_frees_on_drop() {
        let gate = Gate::new(1, 2);
        let a = gate.try_admit().unwrap();
        let b = gate.try_admit().unwrap();
        assert!(gate.try_admit().is_none());
        let running = a.run().await.unwrap();
        // b is queued behind a.
        assert!(gate.running.clone().try_acquire_owned().is_err());
        drop(running);
        drop(a);
        assert_eq!(gate.outstanding(), 1);
        assert!(b.run().await.is_some());
        assert!(gate.try_admit().is_some());
    }
}
