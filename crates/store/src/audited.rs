//! One change, one transaction (T09, issue 19): an operator's change and
//! its audit record are committed together or not at all. The trail lives
//! in `state.db` beside secrets, credentials, admin tokens and key-value
//! records, so a CLI command makes its change and appends its record in one
//! SQLite transaction: a command killed at any moment leaves both or
//! neither. A change outside `state.db` (data keys in `keys.db`) cannot
//! share that transaction: its command first commits an intent record
//! (`data.erase_started`), then changes, then commits the outcome.

use rusqlite::Connection;

use crate::audit::AuditEvent;
use crate::{Store, StoreError};

/// What failed inside [`Store::change_audited`]: the change, or the
/// database under it.
enum Failed<E> {
    Change(E),
    Db(rusqlite::Error),
}

impl<E> From<rusqlite::Error> for Failed<E> {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e)
    }
}

impl Store {
    /// Run `change` in a write transaction on `state.db` and append the
    /// audit records it returns in the same transaction, after the same
    /// checks of the chain's end as every writer makes (a break found is
    /// recorded first, in that transaction too); then bring the head file
    /// up to date (a durable commit first). When `change` fails, nothing is
    /// committed, no record either. Records waiting in spill files are
    /// taken in by the same transaction.
    pub fn change_audited<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&Connection) -> Result<(T, Vec<AuditEvent>), E>,
    ) -> Result<T, E> {
        let mut out = None;
        let result = crate::audit_writer::append_once(self, |tx| {
            let (value, events) = change(tx).map_err(Failed::Change)?;
            out = Some(value);
            Ok::<_, Failed<E>>(events)
        });
        match result {
            Ok(()) => out.ok_or_else(|| {
                E::from(StoreError::Db {
                    path: self.db_path(),
                    source: rusqlite::Error::InvalidQuery,
                })
            }),
            Err(Ok(e)) => Err(E::from(e)),
            Err(Err(Failed::Change(e))) => Err(e),
            Err(Err(Failed::Db(e))) => Err(E::from(self.db_error(e))),
        }
    }

    /// Commit `event` on its own, durably, before a change it announces
    /// (an intent record, or a disclosure such as `data.exported`): the
    /// record first, so that a change is never made unrecorded.
    pub fn record_first(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.change_audited(|_| Ok::<_, StoreError>(((), vec![event])))
    }
}
