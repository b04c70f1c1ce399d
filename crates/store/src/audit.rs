//! The audit trail (T09): security events, each record holding the hash of
//! the one before (a hash chain), and a head record MAC'd under a key only
//! this host holds. Editing, inserting or deleting a record — at the end
//! too — breaks the chain or the head, and `verify` names the first bad one.
//!
//! The keyed head also covers whether the head file vouched for it
//! (`anchored`) and how many breaks were recorded. A new store is anchored
//! when it is created (a keyed head and a head file for record 0), so
//! deleting the keyed head, the head file, or every record with both (a
//! wipe) is a break too. A store of an older Bulkhead is told apart by its
//! head's MAC (the old way), or, when it holds no record at all, by its
//! schema version (see `Store::anchor_new_trail`).
//!
//! What stays undetectable here, with only this host's files to go on: a
//! consistent restore of the whole state directory (database, head file,
//! keys) to an earlier copy, or deleting it (or deleting the trail together
//! with its audit key, or rewinding an emptied database's schema to an
//! older version: the same as a new store). Only a copy kept elsewhere
//! shows that: export the trail off-host (OTLP, or `audit query --format
//! json` shipped by the operator).

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError};

/// The `prev_hash` of the first record.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A security event, before it is written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditEvent {
    /// What happened, e.g. `request.refused`, `sandbox.limit`, `deploy`.
    pub kind: String,
    pub correlation_id: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
    pub detail: Map<String, Value>,
}

impl AuditEvent {
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            ..Self::default()
        }
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn function(mut self, function: impl Into<String>) -> Self {
        let function = function.into();
        if !function.is_empty() {
            self.function = Some(function);
        }
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub time_ms: i64,
    pub kind: String,
    pub correlation_id: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// RFC 3339 time of the record, to the millisecond.
    pub fn time(&self) -> String {
        let ms = u64::try_from(self.time_ms).unwrap_or(0);
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_millis(time).to_string()
    }
}

/// The hash of one record: its fields in a fixed JSON array, chained to the
/// hash of the record before.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_hash(
    seq: i64,
    time_ms: i64,
    kind: &str,
    correlation_id: Option<&str>,
    subject: Option<&str>,
    function: Option<&str>,
    detail_json: &str,
    prev_hash: &str,
) -> String {
    let canonical = json!([
        seq,
        time_ms,
        kind,
        correlation_id,
        subject,
        function,
        detail_json,
        prev_hash
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The keyed head stored in the database. It covers whether the head was
/// written once the head file existed (`anchored`), so that clearing the
/// flag to excuse a deleted head file breaks the MAC, and how many breaks
/// the writers recorded, so that resetting the count (for `/metrics`)
/// does too (T09).
pub(crate) fn head_mac(
    key: &[u8; 32],
    seq: i64,
    hash: &str,
    anchored: bool,
    breaks: u64,
) -> String {
    hex::encode(mac_of(key, &head_mac_input(seq, hash, anchored, breaks)))
}

fn head_mac_input(seq: i64, hash: &str, anchored: bool, breaks: u64) -> String {
    format!(
        "bulkhead audit head v2:{seq}:{hash}:{}:{breaks}",
        u8::from(anchored)
    )
}

/// The head's MAC input before the break count was covered. A head MAC'd
/// this way is still accepted (a store of an older Bulkhead), and the next
/// writer MACs it the new way.
fn legacy_head_mac_input(seq: i64, hash: &str, anchored: bool) -> String {
    if anchored {
        format!("{seq}:{hash}:anchored")
    } else {
        format!("{seq}:{hash}")
    }
}

pub(crate) fn mac_of(key: &[u8; 32], input: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn mac_valid(key: &[u8; 32], input: &str, tag_hex: &str) -> bool {
    let Ok(tag) = hex::decode(tag_hex) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(input.as_bytes());
    mac.verify_slice(&tag).is_ok()
}

/// The kind of the first record of a new segment: the writer found the
/// chain broken and would not extend it (T09).
pub const CHAIN_BROKEN: &str = "audit.chain_broken";

/// The detail of a break record naming the chain's end it found.
pub(crate) const SEGMENT_END: &str = "segment_end";

/// The head file beside `state.db`: the chain's head anchored outside the
/// database, so that restoring an older copy of the database is seen.
pub(crate) const HEAD_FILE: &str = "audit.head";

/// The head file's content, MAC'd under the audit key (with its own
/// domain, so a database head cannot be passed off as a file head).
#[derive(Debug, Serialize, serde::Deserialize)]
struct HeadFileBody {
    version: u32,
    seq: i64,
    hash: String,
    mac: String,
}

fn file_mac_input(seq: i64, hash: &str) -> String {
    format!("bulkhead audit.head v1:{seq}:{hash}")
}

/// What the head file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadFile {
    /// No head file (a trail not yet anchored, or one deleted).
    Missing,
    /// The head as of the last commit: record `seq` with hash `hash`.
    Valid { seq: i64, hash: String },
    /// Unreadable, or its MAC does not hold: forged or damaged.
    Invalid(String),
}

pub(crate) fn read_head_file(path: &Path, key: &[u8; 32]) -> HeadFile {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HeadFile::Missing,
        Err(e) => return HeadFile::Invalid(format!("cannot read it: {e}")),
    };
    let Ok(body) = serde_json::from_str::<HeadFileBody>(&text) else {
        return HeadFile::Invalid("it is not a head file".into());
    };
    if body.version != 1 || !mac_valid(key, &file_mac_input(body.seq, &body.hash), &body.mac) {
        return HeadFile::Invalid("its MAC does not hold (forged or edited)".into());
    }
    HeadFile::Valid {
        seq: body.seq,
        hash: body.hash,
    }
}

/// Write the head file whole: temp file, fsync, rename, directory fsync.
pub(crate) fn write_head_file(
    path: &Path,
    key: &[u8; 32],
    seq: i64,
    hash: &str,
) -> std::io::Result<()> {
    let body = HeadFileBody {
        version: 1,
        seq,
        hash: hash.to_string(),
        mac: hex::encode(mac_of(key, &file_mac_input(seq, hash))),
    };
    let mut text = serde_json::to_string(&body).map_err(std::io::Error::other)?;
    text.push('\n');
    crate::files::write_private(path, &[text.as_bytes()])
}

/// The keyed head as stored in the database.
pub(crate) struct DbHead {
    pub seq: i64,
    pub hash: String,
    mac: String,
    pub anchored: bool,
    /// As stored: trustworthy only once the MAC is checked.
    pub breaks: u64,
}

pub(crate) fn read_db_head(conn: &Connection) -> rusqlite::Result<Option<DbHead>> {
    conn.query_row(
        "SELECT seq, hash, mac, anchored, breaks FROM audit_head WHERE id = 1",
        [],
        |row| {
            Ok(DbHead {
                seq: row.get(0)?,
                hash: row.get(1)?,
                mac: row.get(2)?,
                anchored: row.get::<_, i64>(3)? != 0,
                breaks: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
            })
        },
    )
    .optional()
}

impl DbHead {
    /// Whether the MAC holds: `Some(true)` the current way, `Some(false)`
    /// the way of an older Bulkhead (its break count not covered), `None`
    /// forged or edited.
    fn mac_holds(&self, key: &[u8; 32]) -> Option<bool> {
        let input = head_mac_input(self.seq, &self.hash, self.anchored, self.breaks);
        if mac_valid(key, &input, &self.mac) {
            return Some(true);
        }
        let legacy = legacy_head_mac_input(self.seq, &self.hash, self.anchored);
        mac_valid(key, &legacy, &self.mac).then_some(false)
    }
}

/// A break in the chain, as the writer or `verify` finds it at its end.
#[derive(Debug, Clone)]
pub(crate) struct Break {
    /// The first record concerned.
    pub seq: i64,
    pub reason: String,
    /// What the keyed heads said, and what the database holds.
    pub expected: Value,
    pub found: Value,
    /// The highest record number any trustworthy source knows of: a new
    /// segment starts after it.
    pub high_water: i64,
}

/// The head of an intact chain, as checked.
pub(crate) struct Checked {
    /// The head file vouches for it.
    pub file_valid: bool,
    /// The keyed head says it was written once the head file existed.
    pub head_anchored: bool,
    /// The recorded breaks, when the keyed head covers the count (`None`:
    /// a head MAC'd the way of an older Bulkhead, to be MAC'd anew).
    pub breaks: Option<u64>,
}

/// Compare the keyed database head and the head file (`file`, read from
/// `head_file` before the database snapshot was taken, so that it can
/// never be newer than the snapshot) with the chain's last record
/// (`last`: its seq and hash; `None` for an empty table). This is what
/// every writer checks before it appends, and `verify` at the end.
pub(crate) fn check_head(
    conn: &Connection,
    key: &[u8; 32],
    head_file: &Path,
    file: HeadFile,
    last: Option<(i64, &str)>,
) -> rusqlite::Result<Result<Checked, Break>> {
    let (last_seq, last_hash) = last.unwrap_or((0, GENESIS));
    let end = End {
        last_seq,
        found: json!({"last_record": last_seq, "hash": last_hash}),
        file_seq: match &file {
            HeadFile::Valid { seq, .. } => *seq,
            _ => 0,
        },
    };
    let head = read_db_head(conn)?;
    let Some(h) = head else {
        // Every store has a keyed head from the moment it is created (or,
        // for a store of an older Bulkhead, from its first record): none
        // means it was deleted, with the records when there are none.
        let reason = if last_seq == 0 {
            "the audit trail was wiped: its records and its keyed head are gone (the audit key shows the trail existed)"
        } else {
            "the chain's head record is missing (deleted)"
        };
        return Ok(Err(end.brk(1, reason.into(), Value::Null, 0)));
    };
    let expected = json!({"source": "database head", "record": h.seq, "hash": h.hash});
    let Some(current) = h.mac_holds(key) else {
        return Ok(Err(end.brk(
            h.seq,
            "the chain's head record was forged or edited".into(),
            expected,
            0,
        )));
    };
    let mismatch = if h.seq > last_seq {
        Some((
            last_seq + 1,
            format!(
                "records {} to {} were deleted from the end",
                last_seq + 1,
                h.seq
            ),
        ))
    } else if h.seq < last_seq {
        Some((
            h.seq + 1,
            format!(
                "record {} was appended outside Bulkhead (inserted)",
                h.seq + 1
            ),
        ))
    } else if h.hash != last_hash {
        Some((
            last_seq,
            format!(
                "record {last_seq} is not the one the keyed head recorded (edited and re-hashed, or replaced)"
            ),
        ))
    } else {
        None
    };
    if let Some((seq, reason)) = mismatch {
        return Ok(Err(end.brk(seq, reason, expected, h.seq)));
    }
    let checked = |file_valid| Checked {
        file_valid,
        head_anchored: h.anchored,
        breaks: current.then_some(h.breaks),
    };
    Ok(check_head_file(conn, head_file, file, h.anchored, &end)?.map(checked))
}

/// The chain's end as found, for the breaks `check_head` reports.
struct End {
    last_seq: i64,
    found: Value,
    file_seq: i64,
}

impl End {
    /// A break at `seq`; `trusted`: the highest record a keyed source
    /// says existed.
    fn brk(&self, seq: i64, reason: String, expected: Value, trusted: i64) -> Break {
        Break {
            seq,
            reason,
            expected,
            found: self.found.clone(),
            high_water: self.last_seq.max(trusted).max(self.file_seq),
        }
    }
}

/// The head file against an intact keyed head: whether it vouches for
/// the chain's end (`Ok(true)`), is missing where that is allowed (a head
/// not yet anchored: `Ok(false)`), or shows a deletion or a rollback.
fn check_head_file(
    conn: &Connection,
    head_file: &Path,
    file: HeadFile,
    head_anchored: bool,
    end: &End,
) -> rusqlite::Result<Result<bool, Break>> {
    let last_seq = end.last_seq;
    let file_name = head_file.display();
    match file {
        HeadFile::Missing if head_anchored => Ok(Err(end.brk(
            last_seq,
            format!("the head file {file_name} was deleted"),
            json!({"source": "database head", "head_file": "present"}),
            0,
        ))),
        HeadFile::Missing => Ok(Ok(false)),
        HeadFile::Invalid(why) => Ok(Err(end.brk(
            last_seq,
            format!("the head file {file_name} is not valid: {why}"),
            Value::Null,
            0,
        ))),
        HeadFile::Valid { seq, hash } => {
            let expected = json!({"source": "head file", "record": seq, "hash": hash});
            if seq > last_seq {
                return Ok(Err(end.brk(
                    last_seq + 1,
                    format!(
                        "the database was rolled back: the head file says the trail reached record {seq}, the database ends at record {last_seq}"
                    ),
                    expected,
                    seq,
                )));
            }
            if seq > 0 {
                let at: Option<String> = conn
                    .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| r.get(0))
                    .optional()?;
                if at.as_deref() != Some(hash.as_str()) {
                    return Ok(Err(end.brk(
                        seq,
                        format!(
                            "record {seq} is not the one the head file recorded (the database was rolled back and written again, or edited)"
                        ),
                        expected,
                        seq,
                    )));
                }
            }
            Ok(Ok(true))
        }
    }
}

/// The outcome of `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Intact { records: i64 },
    Broken { seq: i64, reason: String },
}

/// Filters for `query`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub correlation_id: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: Option<u32>,
}

struct Row {
    record: AuditRecord,
    detail_json: String,
}

const COLUMNS: &str =
    "seq, time_ms, kind, correlation_id, subject, function, detail, prev_hash, hash";

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let detail_json: String = row.get(6)?;
    Ok(Row {
        record: AuditRecord {
            seq: row.get(0)?,
            time_ms: row.get(1)?,
            kind: row.get(2)?,
            correlation_id: row.get(3)?,
            subject: row.get(4)?,
            function: row.get(5)?,
            detail: serde_json::from_str(&detail_json)
                .unwrap_or(Value::String(detail_json.clone())),
            prev_hash: row.get(7)?,
            hash: row.get(8)?,
        },
        detail_json,
    })
}

impl Store {
    /// Walk the whole chain and check the keyed head and the head file:
    /// the first bad record, or OK. A segment started by the writer after
    /// it found the chain broken (`audit.chain_broken`) is reported for
    /// ever: the record that says so is chained and covered by the head.
    pub fn verify_audit(&self) -> Result<Verification, StoreError> {
        self.verify_audit_and_head()
            .map(|(_, verification)| verification)
    }

    /// [`Store::verify_audit`], with the head file as read for it (what
    /// `audit verify` prints: the file the records were checked against).
    ///
    /// Safe beside a running server (issue 19): the file is read first,
    /// then the records and the keyed head in one read transaction (one
    /// WAL snapshot). A writer writes the file only after its commit, so
    /// the snapshot holds at least what the file names: a file ahead of it
    /// is a rollback, never a race, and a writer committing meanwhile is
    /// not seen at all (its records are after the snapshot's end).
    pub fn verify_audit_and_head(&self) -> Result<(HeadFile, Verification), StoreError> {
        let key = self.audit_key()?;
        let head_file = self.dir().join(HEAD_FILE);
        let file = read_head_file(&head_file, &key);
        let shown = file.clone();
        let mut conn = self.connect()?;
        let db = |e| self.db_error(e);
        let conn = conn.transaction().map_err(db)?;
        let mut problems: Vec<(i64, String)> = Vec::new();
        let mut records = 0_i64;
        let mut expected_seq = 1;
        let mut prev_hash = GENESIS.to_string();
        // The row read before, whatever its segment: what a break record
        // says it found at the chain's end.
        let mut prev_row: Option<(i64, String)> = None;
        // False from a segment's first bad record to the next segment.
        let mut segment_ok = true;
        {
            let mut statement = conn
                .prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))
                .map_err(db)?;
            let rows = statement.query_map([], read_row).map_err(db)?;
            for row in rows {
                let Row {
                    record: r,
                    detail_json,
                } = row.map_err(db)?;
                records += 1;
                let row = (r.seq, r.hash.clone());
                let before = prev_row.replace(row);
                if r.kind == CHAIN_BROKEN && r.prev_hash == GENESIS {
                    if let Some(problem) = history_changed(&r, before.as_ref()) {
                        problems.push(problem);
                    }
                    problems.push(describe_break(&r));
                    expected_seq = r.seq;
                    prev_hash = GENESIS.to_string();
                    segment_ok = true;
                } else if !segment_ok {
                    continue;
                }
                let problem = if r.seq != expected_seq {
                    Some((
                        expected_seq,
                        format!("record {expected_seq} is missing (deleted)"),
                    ))
                } else if r.prev_hash != prev_hash {
                    Some((
                        r.seq,
                        format!(
                            "record {} does not follow the record before it (a record was inserted, replaced or re-hashed)",
                            r.seq
                        ),
                    ))
                } else if record_hash(
                    r.seq,
                    r.time_ms,
                    &r.kind,
                    r.correlation_id.as_deref(),
                    r.subject.as_deref(),
                    r.function.as_deref(),
                    &detail_json,
                    &r.prev_hash,
                ) != r.hash
                {
                    Some((
                        r.seq,
                        format!("record {} was changed after it was written (edited)", r.seq),
                    ))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    problems.push(problem);
                    segment_ok = false;
                    continue;
                }
                prev_hash = r.hash;
                expected_seq += 1;
            }
        }
        if segment_ok {
            let last_seq = expected_seq - 1;
            let last = (records > 0).then_some((last_seq, prev_hash.as_str()));
            if let Err(brk) = check_head(&conn, &key, &head_file, file, last).map_err(db)? {
                problems.push((brk.seq, brk.reason));
            }
        }
        let mut problems = problems.into_iter();
        let verification = match problems.next() {
            None => Verification::Intact { records },
            Some((seq, mut reason)) => {
                let more = problems.len();
                if more > 0 {
                    reason.push_str(&format!(
                        "; and {more} later problem(s) (see `bulkhead audit query --kind {CHAIN_BROKEN}`)"
                    ));
                }
                broken(seq, reason)
            }
        };
        Ok((shown, verification))
    }

    /// Anchor a trail that has no head yet (called by [`Store::open`] under
    /// the write lock, `schema` being the database's schema version before
    /// this open migrated it): a keyed head and a head file for record 0,
    /// the file first, so that a crash leaves only the file and the next
    /// open finishes the job. From then on a deleted keyed head or head
    /// file is a break (T09).
    ///
    /// A trail without a keyed head, records or head file is new only if
    /// its audit key does not exist yet, or if this open upgrades a store
    /// of an older Bulkhead (schema below [`crate::ANCHORED_SCHEMA`]: it
    /// never had a head before its first record, say after only `bulkhead
    /// check`). Otherwise it was wiped: it stays without a head and every
    /// check reports the break. Nothing in an empty trail is MAC'd, so
    /// an attacker who also deletes the audit key, or rewinds the schema
    /// to an older version, makes a wiped trail look new; that is no more
    /// than deleting the state directory, which only an off-host copy of
    /// the trail can reveal (README, Known limits).
    pub(crate) fn anchor_new_trail(&self, tx: &Connection, schema: i64) -> Result<(), StoreError> {
        let db = |e| self.db_error(e);
        if read_db_head(tx).map_err(db)?.is_some() {
            return Ok(());
        }
        let has_records: bool = tx
            .query_row("SELECT EXISTS (SELECT 1 FROM audit)", [], |r| r.get(0))
            .map_err(db)?;
        if has_records {
            return Ok(());
        }
        let exists = |path: &Path| match std::fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
        let head_file = self.dir().join(HEAD_FILE);
        let key_exists =
            exists(&self.dir().join(crate::AUDIT_KEY_FILE)).map_err(StoreError::Key)?;
        let file_exists = exists(&head_file).map_err(StoreError::HeadFile)?;
        let new = match (key_exists, file_exists) {
            (false, false) => true,
            // The key was deleted: the file says there was a trail.
            (false, true) => false,
            (true, false) => (1..crate::ANCHORED_SCHEMA).contains(&schema),
            // A crash after the file was written, before the commit.
            (true, true) => {
                read_head_file(&head_file, &self.audit_key()?)
                    == (HeadFile::Valid {
                        seq: 0,
                        hash: GENESIS.into(),
                    })
            }
        };
        if !new {
            return Ok(());
        }
        let key = self.audit_key()?;
        write_head_file(&head_file, &key, 0, GENESIS).map_err(StoreError::HeadFile)?;
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash, mac, anchored, breaks) VALUES (1, 0, ?1, ?2, 1, 0)",
            rusqlite::params![GENESIS, head_mac(&key, 0, GENESIS, true, 0)],
        )
        .map(drop)
        .map_err(db)
    }

    /// The head file beside the database and what it says (for
    /// `audit verify`).
    pub fn audit_head_file(&self) -> Result<(PathBuf, HeadFile), StoreError> {
        let key = self.audit_key()?;
        let path = self.dir().join(HEAD_FILE);
        let head = read_head_file(&path, &key);
        Ok((path, head))
    }

    /// Records matching `query`, oldest first.
    pub fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut records = Vec::new();
        self.visit_audit(query, |record| records.push(record))?;
        Ok(records)
    }

    /// Hand each record matching `query` to `visit`, oldest first, without
    /// holding them all: a report over weeks of records (the privilege
    /// review, T16) keeps only what it tallies.
    pub fn visit_audit(
        &self,
        query: &AuditQuery,
        mut visit: impl FnMut(AuditRecord),
    ) -> Result<(), StoreError> {
        let conn = self.lease()?;
        let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut filter = |column: &str, value: &Option<String>| {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                values.push(v.clone().into());
            }
        };
        filter("correlation_id", &query.correlation_id);
        filter("subject", &query.subject);
        filter("function", &query.function);
        filter("kind", &query.kind);
        if let Some(since) = query.since_ms {
            sql.push_str(" AND time_ms >= ?");
            values.push(since.into());
        }
        sql.push_str(" ORDER BY seq");
        if let Some(limit) = query.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let db = |e| self.db_error(e);
        let mut statement = conn.prepare(&sql).map_err(db)?;
        let rows = statement
            .query_map(params_from_iter(values), read_row)
            .map_err(db)?;
        for row in rows {
            visit(row.map_err(db)?.record);
        }
        Ok(())
    }
}

impl Store {
    /// Up to `limit` records after record `after`, oldest first, each with
    /// the detail text its hash covers (the deployment's chain ships them
    /// whole, see `audit_chain`).
    pub(crate) fn audit_records_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<crate::audit_chain::NodeRecord>, StoreError> {
        let conn = self.lease()?;
        let db = |e| self.db_error(e);
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))
            .map_err(db)?;
        let rows = statement
            .query_map(rusqlite::params![after, limit], read_row)
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let Row {
                record,
                detail_json,
            } = row.map_err(db)?;
            out.push(crate::audit_chain::NodeRecord {
                seq: record.seq,
                time_ms: record.time_ms,
                kind: record.kind,
                correlation_id: record.correlation_id,
                subject: record.subject,
                function: record.function,
                detail_json,
                prev_hash: record.prev_hash,
                hash: record.hash,
            });
        }
        Ok(out)
    }
}

fn broken(seq: i64, reason: String) -> Verification {
    Verification::Broken { seq, reason }
}

/// What a segment's `audit.chain_broken` record says was wrong.
/// A break record names the chain's end it found (`segment_end`: number
/// and stored hash, null when no record was left). The record before it
/// must be that one: if not, records before the break were deleted, or
/// rewritten and re-hashed, after it (T09). Break records written before
/// this field existed are not checked.
fn history_changed(r: &AuditRecord, before: Option<&(i64, String)>) -> Option<(i64, String)> {
    let end = r.detail.get(SEGMENT_END)?;
    let found = match end {
        Value::Null => None,
        end => Some((end["seq"].as_i64()?, end["hash"].as_str()?)),
    };
    let intact = match (found, before) {
        (None, None) => true,
        (Some((seq, hash)), Some((prev_seq, prev_hash))) => seq == *prev_seq && hash == prev_hash,
        _ => false,
    };
    (!intact).then(|| {
        let seq = found.map_or(1, |(seq, _)| seq);
        (
            seq,
            format!(
                "the records before the break at record {} are not those it found (record {seq} and those before it were deleted or rewritten after the break)",
                r.seq
            ),
        )
    })
}

fn describe_break(r: &AuditRecord) -> (i64, String) {
    let at = r.detail["broken_at"].as_i64().unwrap_or(r.seq);
    let why = r.detail["reason"]
        .as_str()
        .unwrap_or("the chain was found broken");
    (
        at,
        format!(
            "{why}; Bulkhead refused to extend that chain and started a new segment at record {} ({CHAIN_BROKEN})",
            r.seq
        ),
    )
}
