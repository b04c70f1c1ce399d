//! The audit trail (T09): security events, each record holding the hash of
//! the one before (a hash chain), and a head record MAC'd under a key only
//! this host holds. Editing, inserting or deleting a record — at the end
//! too — breaks the chain or the head, and `verify` names the first bad one.

use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, params_from_iter};
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

pub(crate) fn head_mac(key: &[u8; 32], seq: i64, hash: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(format!("{seq}:{hash}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn head_mac_valid(key: &[u8; 32], seq: i64, hash: &str, tag_hex: &str) -> bool {
    let Ok(tag) = hex::decode(tag_hex) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(format!("{seq}:{hash}").as_bytes());
    mac.verify_slice(&tag).is_ok()
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
    /// Walk the whole chain and check the head: the first bad record, or OK.
    pub fn verify_audit(&self) -> Result<Verification, StoreError> {
        let key = self.audit_key()?;
        let conn = self.connect()?;
        let db = |e| self.db_error(e);
        let mut statement = conn
            .prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))
            .map_err(db)?;
        let rows = statement.query_map([], read_row).map_err(db)?;
        let mut expected_seq = 1;
        let mut prev_hash = GENESIS.to_string();
        for row in rows {
            let Row {
                record: r,
                detail_json,
            } = row.map_err(db)?;
            if r.seq != expected_seq {
                return Ok(broken(
                    expected_seq,
                    format!("record {expected_seq} is missing (deleted)"),
                ));
            }
            if r.prev_hash != prev_hash {
                return Ok(broken(
                    r.seq,
                    format!(
                        "record {} does not follow the record before it (a record was inserted, replaced or re-hashed)",
                        r.seq
                    ),
                ));
            }
            let recomputed = record_hash(
                r.seq,
                r.time_ms,
                &r.kind,
                r.correlation_id.as_deref(),
                r.subject.as_deref(),
                r.function.as_deref(),
                &detail_json,
                &r.prev_hash,
            );
            if recomputed != r.hash {
                return Ok(broken(
                    r.seq,
                    format!("record {} was changed after it was written (edited)", r.seq),
                ));
            }
            prev_hash = r.hash;
            expected_seq += 1;
        }
        let last_seq = expected_seq - 1;
        let head: Option<(i64, String, String)> = conn
            .query_row(
                "SELECT seq, hash, mac FROM audit_head WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(db)?;
        let Some((head_seq, head_hash, mac)) = head else {
            return Ok(if last_seq == 0 {
                Verification::Intact { records: 0 }
            } else {
                broken(1, "the chain's head record is missing (deleted)".into())
            });
        };
        if !head_mac_valid(&key, head_seq, &head_hash, &mac) {
            return Ok(broken(
                head_seq,
                "the chain's head record was forged or edited".into(),
            ));
        }
        if head_seq > last_seq {
            return Ok(broken(
                last_seq + 1,
                format!(
                    "records {} to {head_seq} were deleted from the end",
                    last_seq + 1
                ),
            ));
        }
        if head_seq < last_seq {
            return Ok(broken(
                head_seq + 1,
                format!(
                    "record {} was appended outside Bulkhead (inserted)",
                    head_seq + 1
                ),
            ));
        }
        if head_hash != prev_hash {
            return Ok(broken(
                last_seq,
                format!("record {last_seq} was changed after it was written (edited)"),
            ));
        }
        Ok(Verification::Intact { records: last_seq })
    }

    /// Records matching `query`, oldest first.
    pub fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.connect()?;
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
        rows.map(|row| row.map(|r| r.record).map_err(db)).collect()
    }
}

fn broken(seq: i64, reason: String) -> Verification {
    Verification::Broken { seq, reason }
}
