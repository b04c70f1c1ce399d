//! Group commit (T09, issue 19): the records of an acknowledged call are on
//! disk before its answer leaves. Every event the writer's queue takes gets
//! a [`Ticket`], its place in the queue's order (assigned under the same
//! lock as the send, so the writer's n-th event is ticket n). The writer
//! commits each batch with `synchronous = FULL` (the WAL is synced) and then
//! publishes how far it got; a response waits, without holding a thread,
//! for the batch that holds its call's last ticket. Batches close as soon
//! as the queue is empty, so responses that wait at once share one commit.
//!
//! The wait is bounded: a writer that cannot commit (the database locked
//! past SQLite's busy timeout, a full disk) must not hang the gateway. Past
//! the bound, or when the batch could not be written, the answer goes out
//! anyway; it is counted (`/metrics`) and logged, and a batch that could
//! not be written is counted on the trail (`audit.dropped`, `write_failed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::now_ms;

/// An event's place in the writer's queue order (1 is the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(pub(crate) u64);

/// The last ticket of one call's records, from every thread that records
/// for it; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CallTickets(Arc<AtomicU64>);

impl CallTickets {
    /// Note a record's ticket (`None`: it was dropped, and is counted).
    pub fn note(&self, ticket: Option<Ticket>) {
        if let Some(Ticket(t)) = ticket {
            self.0.fetch_max(t, Ordering::AcqRel);
        }
    }

    /// The latest ticket noted, if any.
    pub fn last(&self) -> Option<Ticket> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            t => Some(Ticket(t)),
        }
    }
}

/// How waiting for a ticket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// No ticket: nothing to wait for.
    Nothing,
    /// Its batch is committed and synced.
    Durable,
    /// Its batch could not be written: counted, on the trail once writing
    /// works again (`audit.dropped`).
    NotWritten,
    /// The bound passed first.
    TimedOut,
}

/// What the writer has settled: every ticket up to `settled` is committed,
/// except those of the last batch that could not be written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    settled: u64,
    failed_from: u64,
    failed_through: u64,
}

/// How often, at most, an answer sent before its records were durable is
/// logged (each is counted).
const WARN_EVERY_MS: i64 = 10_000;

pub(crate) struct Durable {
    progress: watch::Sender<Progress>,
    /// Answers sent before their records were durable.
    late: AtomicU64,
    warned_ms: AtomicI64,
}

impl Default for Durable {
    fn default() -> Self {
        Self {
            progress: watch::Sender::new(Progress::default()),
            late: AtomicU64::new(0),
            warned_ms: AtomicI64::new(0),
        }
    }
}

impl Durable {
    /// The writer took every ticket up to `through` and committed them
    /// (`written`) or could not.
    pub fn settle(&self, through: u64, written: bool) {
        self.progress.send_modify(|p| {
            if through <= p.settled {
                return;
            }
            if !written {
                p.failed_from = p.settled + 1;
                p.failed_through = through;
            }
            p.settled = through;
        });
    }

    pub fn late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Wait, at most `bound`, until `ticket`'s batch is settled.
    pub async fn wait(&self, ticket: Option<Ticket>, bound: Duration) -> Durability {
        let Some(Ticket(t)) = ticket else {
            return Durability::Nothing;
        };
        let outcome = |p: &Progress| {
            if (p.failed_from..=p.failed_through).contains(&t) {
                Durability::NotWritten
            } else {
                Durability::Durable
            }
        };
        let mut progress = self.progress.subscribe();
        let done = {
            let now = progress.borrow_and_update();
            (now.settled >= t).then(|| outcome(&now))
        };
        let result = match done {
            Some(result) => result,
            None => {
                match tokio::time::timeout(bound, progress.wait_for(|p| p.settled >= t)).await {
                    Ok(Ok(p)) => outcome(&p),
                    // The writer is gone: nothing will be written.
                    Ok(Err(_)) => Durability::NotWritten,
                    Err(_) => Durability::TimedOut,
                }
            }
        };
        if matches!(result, Durability::NotWritten | Durability::TimedOut) {
            self.count_late(result);
        }
        result
    }

    fn count_late(&self, why: Durability) {
        let late = self.late.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        if now - last >= WARN_EVERY_MS
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let why = match why {
                Durability::TimedOut => "the audit writer did not commit in time",
                _ => "the audit writer could not write them",
            };
            warn!(target: "bulkhead::audit", late, why, "answered before the call's audit records were durable (counted: audit_answers_not_durable)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ticket_waits_for_its_batch_and_failures_are_told_apart() {
        let durable = Arc::new(Durable::default());
        let short = Duration::from_millis(50);
        assert_eq!(durable.wait(None, short).await, Durability::Nothing);
        assert_eq!(
            durable.wait(Some(Ticket(3)), short).await,
            Durability::TimedOut
        );
        durable.settle(2, true);
        assert_eq!(
            durable.wait(Some(Ticket(2)), short).await,
            Durability::Durable
        );
        let waiter = {
            let durable = durable.clone();
            tokio::spawn(
                async move { durable.wait(Some(Ticket(5)), Duration::from_secs(30)).await },
            )
        };
        durable.settle(6, false);
        assert_eq!(waiter.await.ok(), Some(Durability::NotWritten));
        assert_eq!(
            durable.wait(Some(Ticket(2)), short).await,
            Durability::Durable
        );
        durable.settle(9, true);
        assert_eq!(
            durable.wait(Some(Ticket(8)), short).await,
            Durability::Durable
        );
        assert_eq!(durable.late(), 2);
        let tickets = CallTickets::default();
        assert_eq!(tickets.last(), None);
        tickets.note(Some(Ticket(4)));
        tickets.note(None);
        tickets.note(Some(Ticket(2)));
        assert_eq!(tickets.last(), Some(Ticket(4)));
    }
}
