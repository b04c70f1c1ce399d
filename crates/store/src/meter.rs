//! The meter (T04): what every invocation used, per hour, function and
//! caller, kept durably. Calls add to an in-memory tally that a writer
//! thread commits every [`FLUSH_EVERY`], so the request path never waits
//! on the disk; a crash loses at most that window, and `close` commits the
//! rest. Budgets are read back from here at start, so restarting the
//! server never resets them.
//!
//! The tally is split into shards, one picked per thread (issue 17): the
//! gateway's worker threads record calls without meeting on one lock; the
//! writer merges the shards (the same key in two shards adds up).
//!
//! On PostgreSQL (issue 16) every node adds into the same rows of the
//! schema's `meters` table (one statement per commit, rows in one order
//! so two nodes never deadlock), and `bulkhead usage` reads the
//! deployment's usage from there. A commit the database does not take is
//! kept in the tally for the next one, as on SQLite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use tracing::error;

use crate::pg::{Pg, PgError};
use crate::{Store, StoreError};

/// Tally shards: more than the worker threads of most hosts.
const SHARDS: usize = 16;

/// Which shard this thread records into: threads are dealt out in turn.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

/// How often pending usage is committed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Meter rows name callers (addresses, subjects): personal data, kept this
/// long and then deleted when the meter starts (T20).
pub const RETENTION_DAYS: i64 = 90;

pub(crate) const MIGRATION: &str = r"
    CREATE TABLE meters (
        hour INTEGER NOT NULL,
        function TEXT NOT NULL,
        caller TEXT NOT NULL,
        requests INTEGER NOT NULL,
        wall_us INTEGER NOT NULL,
        mib_us INTEGER NOT NULL,
        request_bytes INTEGER NOT NULL,
        response_bytes INTEGER NOT NULL,
        outbound_bytes INTEGER NOT NULL,
        PRIMARY KEY (hour, function, caller)
    ) WITHOUT ROWID;
";

/// What some calls used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub requests: u64,
    /// Wall time of the calls, in microseconds.
    pub wall_us: u64,
    /// Memory reserved (the function's cap, in MiB) times wall time in
    /// microseconds: GB-seconds, the way FaaS bills them.
    pub mib_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Bytes sent and received over outbound HTTP.
    pub outbound_bytes: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.requests = self.requests.saturating_add(other.requests);
        self.wall_us = self.wall_us.saturating_add(other.wall_us);
        self.mib_us = self.mib_us.saturating_add(other.mib_us);
        self.request_bytes = self.request_bytes.saturating_add(other.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(other.response_bytes);
        self.outbound_bytes = self.outbound_bytes.saturating_add(other.outbound_bytes);
    }

    /// Take `other` back, field by field, never below zero.
    pub fn sub(&mut self, other: &Usage) {
        self.requests = self.requests.saturating_sub(other.requests);
        self.wall_us = self.wall_us.saturating_sub(other.wall_us);
        self.mib_us = self.mib_us.saturating_sub(other.mib_us);
        self.request_bytes = self.request_bytes.saturating_sub(other.request_bytes);
        self.response_bytes = self.response_bytes.saturating_sub(other.response_bytes);
        self.outbound_bytes = self.outbound_bytes.saturating_sub(other.outbound_bytes);
    }

    pub fn gb_seconds(&self) -> f64 {
        self.mib_us as f64 / 1024.0 / 1e6
    }

    /// Bytes that left: responses and outbound traffic.
    pub fn egress_bytes(&self) -> u64 {
        self.response_bytes.saturating_add(self.outbound_bytes)
    }
}

/// Hours since the Unix epoch, of `ms` milliseconds since it.
pub fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(3_600_000)
}

type Key = (i64, Arc<str>, Arc<str>);

/// Where the meter commits: the state directory's database, or the
/// deployment's (issue 16).
enum Sink {
    Local(Connection),
    Shared(Arc<Pg>),
}

struct Pending {
    tally: [Mutex<HashMap<Key, Usage>>; SHARDS],
    sink: Mutex<Sink>,
    stop: AtomicBool,
    wake: Condvar,
    sleeping: Mutex<()>,
    /// On the shared meter: where rows the database did not take are kept
    /// for the next start, and whether that file may hold rows (removed
    /// after the next commit that takes them).
    carry: Option<(std::path::PathBuf, AtomicBool)>,
    /// When rows were last written to the carried file (ms).
    carried_ms: std::sync::atomic::AtomicI64,
}

/// One meter row as the carried file holds it.
type CarriedRow = (i64, String, String, Usage);

/// A handle to the meter; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct MeterLog {
    pending: Arc<Pending>,
}

impl MeterLog {
    /// Start the writer for `store`.
    pub fn start(store: &Store) -> Result<Self, StoreError> {
        let conn = store.connect()?;
        let oldest_kept = hour_of(crate::now_ms()) - RETENTION_DAYS * 24;
        conn.execute("DELETE FROM meters WHERE hour < ?1", [oldest_kept])
            .map_err(|e| store.db_error(e))?;
        Self::start_on(Sink::Local(conn), None, || StoreError::Dir {
            dir: store.dir().to_path_buf(),
            source: std::io::Error::other("cannot start the meter's writer"),
        })
    }

    /// Start the writer into the deployment's `meters` table (issue 16),
    /// creating it if missing.
    /// Rows the database did not take at a stop are kept in `carry` and
    /// committed after this start (T04: a stop during an outage loses no
    /// usage).
    pub(crate) fn start_shared(pg: Arc<Pg>, carry: std::path::PathBuf) -> Result<Self, StoreError> {
        create_shared(&pg)?;
        let carried: Vec<CarriedRow> = crate::carried::load(&carry)
            .into_iter()
            .filter(|(_, function, caller, _): &CarriedRow| {
                crate::carried::sound_name(function) && crate::carried::sound_name(caller)
            })
            .collect();
        let log = Self::start_on(Sink::Shared(pg), Some(carry), || {
            StoreError::Backend("cannot start the meter's writer".into())
        })?;
        let any = !carried.is_empty();
        for (hour, function, caller, usage) in carried {
            if let Ok(mut tally) = log.pending.tally[0].lock() {
                tally
                    .entry((hour, function.into(), caller.into()))
                    .or_default()
                    .add(&usage);
            }
        }
        // Set once the rows are in: the first commit after it has them.
        if let Some((_, on_disk)) = &log.pending.carry {
            on_disk.store(any, Ordering::Release);
        }
        // Committed now, before the budgets are rebuilt from the shared
        // meter (second outside review: a restarted node's own count left
        // them out, and a second outage spent them again).
        if any {
            log.pending.commit();
        }
        Ok(log)
    }

    fn start_on(
        sink: Sink,
        carry: Option<std::path::PathBuf>,
        error: impl FnOnce() -> StoreError,
    ) -> Result<Self, StoreError> {
        let pending = Arc::new(Pending {
            tally: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            sink: Mutex::new(sink),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            sleeping: Mutex::new(()),
            carry: carry.map(|path| (path, AtomicBool::new(false))),
            carried_ms: std::sync::atomic::AtomicI64::new(0),
        });
        let writer = pending.clone();
        std::thread::Builder::new()
            .name("bulkhead-meter".into())
            .spawn(move || {
                while !writer.stop.load(Ordering::Acquire) {
                    if let Ok(guard) = writer.sleeping.lock() {
                        let _ = writer.wake.wait_timeout(guard, FLUSH_EVERY);
                    }
                    writer.commit();
                }
            })
            .map_err(|_| error())?;
        Ok(Self { pending })
    }

    /// Add one call's usage, at `time_ms`. The names are shared, not
    /// copied: this runs once per call.
    pub fn record(&self, time_ms: i64, function: &Arc<str>, caller: &Arc<str>, usage: &Usage) {
        let key = (hour_of(time_ms), function.clone(), caller.clone());
        if let Ok(mut tally) = self.pending.tally[shard()].lock() {
            tally.entry(key).or_default().add(usage);
        }
    }

    /// Commit everything recorded so far.
    pub fn flush(&self) {
        self.pending.commit();
    }

    /// Commit what is pending and stop the writer; on the shared meter,
    /// keep what the database did not take for the next start.
    pub fn close(&self) {
        self.pending.stop.store(true, Ordering::Release);
        self.pending.wake.notify_all();
        self.pending.commit();
        if let Some((path, _)) = &self.pending.carry {
            // Under the sink's lock: no commit has rows out of the tally
            // meanwhile (the writer's last one may still run).
            let _no_commit = self.pending.sink.lock();
            crate::carried::save(path, &self.pending.snapshot(), true);
        }
    }
}

impl Pending {
    /// Every row not committed yet, as the carried file holds them.
    fn snapshot(&self) -> Vec<CarriedRow> {
        let mut kept = Vec::new();
        for shard in &self.tally {
            if let Ok(tally) = shard.lock() {
                kept.extend(tally.iter().map(|((hour, function, caller), usage)| {
                    (*hour, function.to_string(), caller.to_string(), *usage)
                }));
            }
        }
        kept
    }

    fn commit(&self) {
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        let mut batch: HashMap<Key, Usage> = HashMap::new();
        for shard in &self.tally {
            let Ok(mut tally) = shard.lock() else {
                continue;
            };
            if batch.is_empty() {
                batch = std::mem::take(&mut *tally);
            } else {
                for (key, usage) in tally.drain() {
                    batch.entry(key).or_default().add(&usage);
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        let written = match &mut *sink {
            Sink::Local(conn) => write(conn, &batch).map_err(|e| e.to_string()),
            Sink::Shared(pg) => write_shared(pg, &batch).map_err(|e| e.to_string()),
        };
        if written.is_ok()
            && let Some((path, on_disk)) = &self.carry
            && on_disk.swap(false, Ordering::AcqRel)
        {
            // The carried rows were in this batch.
            crate::carried::remove(path);
        }
        if let Err(e) = written {
            error!(target: "bulkhead::meter", error = %e, rows = batch.len(), "cannot commit usage; keeping it for the next attempt");
            if let Ok(mut tally) = self.tally[0].lock() {
                for (key, usage) in batch {
                    tally.entry(key).or_default().add(&usage);
                }
            }
            // On disk too, at most once a second, so a node killed while
            // the database is away loses only what came since.
            if let Some((path, on_disk)) = &self.carry {
                let now = crate::now_ms();
                if now.saturating_sub(self.carried_ms.load(Ordering::Acquire)) >= 1_000 {
                    self.carried_ms.store(now, Ordering::Release);
                    crate::carried::save(path, &self.snapshot(), false);
                    // Removed after the next commit that takes them.
                    on_disk.store(true, Ordering::Release);
                }
            }
        }
    }
}

fn write(conn: &mut Connection, batch: &HashMap<Key, Usage>) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO meters (hour, function, caller, requests, wall_us, mib_us, request_bytes, response_bytes, outbound_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (hour, function, caller) DO UPDATE SET
                requests = requests + excluded.requests,
                wall_us = wall_us + excluded.wall_us,
                mib_us = mib_us + excluded.mib_us,
                request_bytes = request_bytes + excluded.request_bytes,
                response_bytes = response_bytes + excluded.response_bytes,
                outbound_bytes = outbound_bytes + excluded.outbound_bytes",
        )?;
        for ((hour, function, caller), u) in batch {
            upsert.execute(params![
                hour,
                function,
                caller,
                as_i64(u.requests),
                as_i64(u.wall_us),
                as_i64(u.mib_us),
                as_i64(u.request_bytes),
                as_i64(u.response_bytes),
                as_i64(u.outbound_bytes),
            ])?;
        }
    }
    tx.commit()
}

/// The deployment's `meters` table, created if missing, rows past the
/// retention deleted (a node's start; `migrate-state`).
pub(crate) fn create_shared(pg: &Pg) -> Result<(), StoreError> {
    let (schema, oldest_kept) = (
        pg.schema().to_string(),
        hour_of(crate::now_ms()) - RETENTION_DAYS * 24,
    );
    pg.call(move |pool| async move {
        let client = pool.get().await.map_err(PgError::of)?;
        client
            .batch_execute(&format!(
                "{preamble}
                     CREATE TABLE IF NOT EXISTS {schema}.meters (
                         hour BIGINT NOT NULL,
                         function TEXT NOT NULL,
                         caller TEXT NOT NULL,
                         requests BIGINT NOT NULL,
                         wall_us BIGINT NOT NULL,
                         mib_us BIGINT NOT NULL,
                         request_bytes BIGINT NOT NULL,
                         response_bytes BIGINT NOT NULL,
                         outbound_bytes BIGINT NOT NULL,
                         PRIMARY KEY (hour, function, caller)
                     );
                     DELETE FROM {schema}.meters WHERE hour < {oldest_kept};",
                preamble = crate::pg::migration_preamble(),
            ))
            .await
            .map_err(PgError::of)
    })
    .map_err(|e| StoreError::Backend(e.to_string()))
}

/// `batch` added into the deployment's rows: one statement, rows in key
/// order (every node locks them in the same order).
fn write_shared(pg: &Pg, batch: &HashMap<Key, Usage>) -> Result<(), PgError> {
    let mut rows: Vec<(&Key, &Usage)> = batch.iter().collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let mut columns: (Vec<i64>, Vec<String>, Vec<String>) = Default::default();
    let mut amounts: [Vec<i64>; 6] = Default::default();
    for ((hour, function, caller), u) in rows {
        columns.0.push(*hour);
        columns.1.push(function.to_string());
        columns.2.push(caller.to_string());
        for (column, n) in amounts.iter_mut().zip([
            u.requests,
            u.wall_us,
            u.mib_us,
            u.request_bytes,
            u.response_bytes,
            u.outbound_bytes,
        ]) {
            column.push(as_i64(n));
        }
    }
    let schema = pg.schema().to_string();
    pg.call(move |pool| async move {
        crate::pg::execute(
            &pool,
            &format!(
                "INSERT INTO {schema}.meters AS m
                     (hour, function, caller, requests, wall_us, mib_us, request_bytes, response_bytes, outbound_bytes)
                 SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[],
                                      $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[])
                 ON CONFLICT (hour, function, caller) DO UPDATE SET
                     requests = m.requests + EXCLUDED.requests,
                     wall_us = m.wall_us + EXCLUDED.wall_us,
                     mib_us = m.mib_us + EXCLUDED.mib_us,
                     request_bytes = m.request_bytes + EXCLUDED.request_bytes,
                     response_bytes = m.response_bytes + EXCLUDED.response_bytes,
                     outbound_bytes = m.outbound_bytes + EXCLUDED.outbound_bytes"
            ),
            &[
                &columns.0,
                &columns.1,
                &columns.2,
                &amounts[0],
                &amounts[1],
                &amounts[2],
                &amounts[3],
                &amounts[4],
                &amounts[5],
            ],
        )
        .await
        .map(drop)
    })
}

/// Every row of the deployment's meter from `since_hour` on (issue 16).
pub(crate) fn usage_since_shared(pg: &Pg, since_hour: i64) -> Result<Vec<UsageRow>, StoreError> {
    let schema = pg.schema().to_string();
    pg.call(move |pool| async move {
        let exists: bool = crate::pg::query(
            &pool,
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.meters")],
        )
        .await?
        .first()
        .map(|r| crate::pg::column(r, 0))
        .transpose()?
        .unwrap_or(false);
        if !exists {
            return Ok(Vec::new());
        }
        let rows = crate::pg::query(
            &pool,
            &format!(
                "SELECT hour, function, caller, requests, wall_us, mib_us, request_bytes, response_bytes, outbound_bytes
                 FROM {schema}.meters WHERE hour >= $1 ORDER BY hour, function, caller"
            ),
            &[&since_hour],
        )
        .await?;
        rows.iter()
            .map(|row| {
                usage_row(
                    |i| crate::pg::column::<i64>(row, i),
                    |i| crate::pg::column::<String>(row, i),
                )
            })
            .collect()
    })
    .map_err(|e| StoreError::Backend(e.to_string()))
}

/// A meter row (hour, function, caller, then the six counters) from
/// either database's getters.
fn usage_row<E>(
    number: impl Fn(usize) -> Result<i64, E>,
    text: impl Fn(usize) -> Result<String, E>,
) -> Result<UsageRow, E> {
    let n = |i: usize| number(i).map(|v| u64::try_from(v).unwrap_or(0));
    Ok(UsageRow {
        hour: number(0)?,
        function: text(1)?,
        caller: text(2)?,
        usage: Usage {
            requests: n(3)?,
            wall_us: n(4)?,
            mib_us: n(5)?,
            request_bytes: n(6)?,
            response_bytes: n(7)?,
            outbound_bytes: n(8)?,
        },
    })
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UsageRow {
    pub hour: i64,
    pub function: String,
    pub caller: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// Every meter row from `since_hour` on.
pub fn usage_since(store: &Store, since_hour: i64) -> Result<Vec<UsageRow>, StoreError> {
    let conn = store.lease()?;
    let read = || -> rusqlite::Result<Vec<UsageRow>> {
        let mut statement = conn.prepare(
            "SELECT hour, function, caller, requests, wall_us, mib_us, request_bytes, response_bytes, outbound_bytes
             FROM meters WHERE hour >= ?1 ORDER BY hour, function, caller",
        )?;
        let rows = statement.query_map([since_hour], |row| {
            usage_row(|i| row.get::<_, i64>(i), |i| row.get::<_, String>(i))
        })?;
        rows.collect()
    };
    read().map_err(|e| store.db_error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_committed_and_added_up_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let one = Usage {
            requests: 1,
            wall_us: 1500,
            mib_us: 128 * 1500,
            request_bytes: 10,
            response_bytes: 20,
            outbound_bytes: 0,
        };
        let now = crate::now_ms();
        let (hello, caller): (Arc<str>, Arc<str>) = ("hello".into(), "ip:127.0.0.1".into());
        let meter = MeterLog::start(&store).unwrap();
        meter.record(now, &hello, &caller, &one);
        meter.record(now, &hello, &caller, &one);
        // A row past the retention is deleted when the meter next starts.
        meter.record(7_200_000, &hello, &caller, &one);
        meter.close();
        let again = MeterLog::start(&store).unwrap();
        again.record(now, &hello, &caller, &one);
        again.close();
        let rows = usage_since(&store, 0).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].hour, hour_of(now));
        assert_eq!(rows[0].usage.requests, 3);
        assert_eq!(rows[0].usage.wall_us, 4500);
        assert_eq!(rows[0].usage.egress_bytes(), 60);
    }
}
