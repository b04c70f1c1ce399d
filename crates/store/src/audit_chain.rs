//! The deployment's audit trail on PostgreSQL (issue 16, T09): one hash
//! chain across every node.
//!
//! Each node keeps writing its own trail first (group commit to its disk,
//! so an answer still waits only for a local sync, see `audit_writer`),
//! and ships what it committed, in order, into the schema's `audit_chain`
//! every [`SHIP_EVERY`] and at a clean stop. A shipment is one
//! transaction that takes the chain's head row `FOR UPDATE`, so appends
//! from all nodes are serialised into one order; it checks the head's MAC
//! and that the last record is the one the head names, appends each record
//! chained to the one before, moves the MAC'd head, and records how far
//! this node has shipped (`audit_chain_nodes`), so a record is shipped
//! exactly once whatever crashes in between.
//!
//! A shipped record keeps the node's own record whole (its number, fields
//! and hashes), so `verify` recomputes both chains: the deployment's, and
//! each node's inside it. The head is MAC'd under a data key every node
//! shares (wrapped by the master key), which the database never sees in
//! the clear: a database writer who edits, deletes or re-hashes records
//! breaks the chain or the head. A node that finds the chain broken
//! never extends it: it logs an error and starts a new segment whose first
//! record, `audit.chain_broken`, says what it expected and found (as the
//! node's own trail does), so `verify` reports the break for ever.
//!
//! Tolerance: the chain lags each node by up to [`SHIP_EVERY`] (plus any
//! time the database is unreachable; the node's trail keeps everything
//! meanwhile, and the next shipment catches up). A node whose state
//! directory is lost before it shipped loses that lag.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{error, warn};

use crate::audit::{CHAIN_BROKEN, GENESIS, record_hash};
use crate::crypto::{DataKey, Keyring};
use crate::pg::{Pg, PgError};
use crate::{Store, StoreError, locked};

/// How often a node ships what its trail committed.
pub const SHIP_EVERY: Duration = Duration::from_millis(200);
/// Records per shipment (one transaction).
const BATCH: u32 = 1_000;
/// Records `verify` reads at a time.
const VERIFY_PAGE: i64 = 10_000;
/// The file in the state directory that names this node in the chain.
const NODE_FILE: &str = "audit.node";
/// The file in the state directory that holds this node's mark: the last
/// record it appended to the chain (number and hash) and how far it had
/// shipped its own trail then.
const MARK_FILE: &str = "audit.chain.mark";
/// The data key the head is MAC'd under, in the shared keyring.
const KEY_OWNER: &str = "audit";
const KEY_NAME: &str = "chain";

/// A node's record as shipped: the record whole, and the text its hash
/// was computed over.
#[derive(Debug, Clone)]
pub(crate) struct NodeRecord {
    pub seq: i64,
    pub time_ms: i64,
    pub kind: String,
    pub correlation_id: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
    pub detail_json: String,
    pub prev_hash: String,
    pub hash: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerification {
    Intact { records: i64, nodes: i64 },
    Broken { seq: i64, reason: String },
}

/// One node's shipper into the deployment's chain.
pub struct SharedTrail {
    pg: Arc<Pg>,
    key: Arc<DataKey>,
    store: Store,
    /// This node's name in the chain: a new one when its trail no longer
    /// matches what it shipped (see [`SharedTrail::ship`]).
    node: Mutex<String>,
    /// A break this node found, written first in its next shipment.
    pending_break: Mutex<Option<String>>,
    /// The (node, shipped) last found to match this node's trail: not
    /// checked again while the chain says the same (third review: the
    /// check every 200 ms was a query per node per tick).
    matched: Mutex<Option<(String, i64)>>,
    mark_file: std::path::PathBuf,
    /// Serialises shipments of this process (the shipper thread and the
    /// last one at close).
    shipping: Mutex<()>,
    stop: AtomicBool,
}

impl SharedTrail {
    /// Create the chain's tables if missing and name this node (a file in
    /// its state directory, so a restarted node goes on where it left).
    pub fn open(pg: Arc<Pg>, store: &Store, keyring: &Keyring) -> Result<Arc<Self>, StoreError> {
        let key = Arc::new(chain_key(keyring)?);
        let node = node_id(store.dir())?;
        let migration = migration(pg.schema());
        pg.call(move |pool| async move {
            let client = pool.get().await.map_err(PgError::of)?;
            client.batch_execute(&migration).await.map_err(PgError::of)
        })
        .map_err(backend)?;
        Ok(Arc::new(Self {
            pg,
            key,
            store: store.clone(),
            node: Mutex::new(node),
            pending_break: Mutex::new(None),
            matched: Mutex::new(None),
            mark_file: store.dir().join(MARK_FILE),
            shipping: Mutex::new(()),
            stop: AtomicBool::new(false),
        }))
    }

    /// This node's name in the chain.
    pub fn node(&self) -> String {
        locked(&self.node).clone()
    }

    /// Ship every [`SHIP_EVERY`] on a thread of its own, until
    /// [`Self::close`].
    pub fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        let trail = self.clone();
        std::thread::Builder::new()
            .name("bulkhead-audit-chain".into())
            .spawn(move || {
                let mut failing = false;
                while !trail.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(SHIP_EVERY);
                    match trail.ship() {
                        Ok(_) if failing => {
                            failing = false;
                            warn!(target: "bulkhead::audit", "the deployment's audit chain takes this node's records again");
                        }
                        Ok(_) => {}
                        Err(e) if !failing => {
                            failing = true;
                            error!(target: "bulkhead::audit", error = %e, "could not ship this node's audit records to the deployment's chain; they are kept in the node's trail and shipped when the database answers");
                        }
                        Err(_) => {}
                    }
                }
            })
            .map(drop)
            .map_err(|e| StoreError::Backend(format!("cannot start the audit chain's shipper: {e}")))
    }

    /// Stop the shipper and ship what is left (after the node's trail
    /// closed, so its last records go too).
    pub fn close(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(e) = self.ship() {
            error!(target: "bulkhead::audit", error = %e, "could not ship this node's last audit records to the deployment's chain; the next start ships them");
        }
    }

    /// Ship what the node's trail committed and the chain does not hold
    /// yet, in shipments of [`BATCH`]: how many records went.
    pub fn ship(&self) -> Result<usize, StoreError> {
        let _one = locked(&self.shipping);
        let mut total = 0;
        loop {
            let node = self.node();
            let shipped = self.shipped(&node)?;
            let seen = Some((node.clone(), shipped));
            if shipped > 0 && *locked(&self.matched) != seen {
                if !self.still_matches(&node, shipped)? {
                    self.start_over(&node, shipped)?;
                    continue;
                }
                *locked(&self.matched) = seen;
            }
            let records = self.store.audit_records_after(shipped, BATCH)?;
            let found_break = locked(&self.pending_break).take();
            if records.is_empty() && found_break.is_none() {
                return Ok(total);
            }
            let n = records.len();
            if let Err(e) = self.append(&node, records, found_break.clone()) {
                *locked(&self.pending_break) = found_break;
                return Err(e);
            }
            total += n;
        }
    }

    /// Whether this node's trail still holds, at `shipped`, the record the
    /// chain holds for it there (outside review, T09: a state directory
    /// restored to an older copy, or a raised mark in the database, made
    /// the node skip its records silently).
    fn still_matches(&self, node: &str, shipped: i64) -> Result<bool, StoreError> {
        let local = self
            .store
            .audit_records_after(shipped - 1, 1)?
            .into_iter()
            .next()
            .filter(|r| r.seq == shipped)
            .map(|r| r.hash);
        let (schema, node) = (self.pg.schema().to_string(), node.to_string());
        let shipped_hash = self
            .pg
            .call(move |pool| async move {
                let rows = crate::pg::query(
                    &pool,
                    &format!(
                        "SELECT node_hash FROM {schema}.audit_chain
                         WHERE node = $1 AND node_seq = $2 ORDER BY seq DESC LIMIT 1"
                    ),
                    &[&node, &shipped],
                )
                .await?;
                rows.first()
                    .map(|r| crate::pg::column::<String>(r, 0))
                    .transpose()
            })
            .map_err(backend)?;
        Ok(local.is_some() && local == shipped_hash)
    }

    /// This node's trail and what the chain says it shipped disagree: the
    /// break goes on the chain, and the whole trail is shipped again under
    /// a new node name, so nothing it holds is skipped.
    fn start_over(&self, node: &str, shipped: i64) -> Result<(), StoreError> {
        let reason = format!(
            "the chain says node {node} shipped its trail to record {shipped}, but that trail does not hold that record (its state directory was restored or replaced, or the chain's mark for it was changed in the database); its trail is shipped again as a new node"
        );
        error!(target: "bulkhead::audit", node = node, shipped = shipped, "the deployment's audit chain was tampered with, or this node's trail was: starting a new segment that records the break");
        let fresh = new_node_id(self.store.dir())?;
        *locked(&self.node) = fresh;
        *locked(&self.pending_break) = Some(reason);
        Ok(())
    }

    /// How far the chain holds `node`'s trail.
    fn shipped(&self, node: &str) -> Result<i64, StoreError> {
        let (schema, node) = (self.pg.schema().to_string(), node.to_string());
        self.pg
            .call(move |pool| async move {
                let rows = crate::pg::query(
                    &pool,
                    &format!("SELECT node_seq FROM {schema}.audit_chain_nodes WHERE node = $1"),
                    &[&node],
                )
                .await?;
                match rows.first() {
                    Some(row) => crate::pg::column::<i64>(row, 0),
                    None => Ok(0),
                }
            })
            .map_err(backend)
    }

    /// One shipment (see the module's notes).
    fn append(
        &self,
        node: &str,
        records: Vec<NodeRecord>,
        found_break: Option<String>,
    ) -> Result<(), StoreError> {
        let schema = self.pg.schema().to_string();
        let node = node.to_string();
        let key = self.key.clone();
        let mark = read_mark(&self.mark_file);
        let appended = self.pg
            .call(move |pool| async move {
                let mut client = pool.get().await.map_err(PgError::of)?;
                let tx = client.transaction().await.map_err(PgError::of)?;
                tx.execute(
                    &format!(
                        "INSERT INTO {schema}.audit_chain_head (id, seq, hash, mac) VALUES (1, 0, $1, $2)
                         ON CONFLICT (id) DO NOTHING"
                    ),
                    &[&GENESIS, &head_mac(&key, 0, GENESIS)],
                )
                .await
                .map_err(PgError::of)?;
                let head = tx
                    .query_one(
                        &format!("SELECT seq, hash, mac FROM {schema}.audit_chain_head WHERE id = 1 FOR UPDATE"),
                        &[],
                    )
                    .await
                    .map_err(PgError::of)?;
                let (head_seq, head_hash, signed) = read_head(&head, &key)?;
                // Under the head's lock: what this node shipped, and the end.
                let shipped = tx
                    .query(
                        &format!("SELECT node_seq FROM {schema}.audit_chain_nodes WHERE node = $1"),
                        &[&node],
                    )
                    .await
                    .map_err(PgError::of)?
                    .first()
                    .map(|r| crate::pg::column::<i64>(r, 0))
                    .transpose()?
                    .unwrap_or(0);
                let last = tx
                    .query(
                        &format!("SELECT seq, hash FROM {schema}.audit_chain ORDER BY seq DESC LIMIT 1"),
                        &[],
                    )
                    .await
                    .map_err(PgError::of)?;
                let last = match last.first() {
                    Some(r) => Some((crate::pg::column::<i64>(r, 0)?, crate::pg::column::<String>(r, 1)?)),
                    None => None,
                };
                let records: Vec<NodeRecord> =
                    records.into_iter().filter(|r| r.seq > shipped).collect();
                if records.is_empty() && found_break.is_none() {
                    tx.commit().await.map_err(PgError::of)?;
                    return Ok(None);
                }
                // What this node appended last must still be there, and its
                // shipped mark must not have gone back: a database put back
                // to an older copy (head and all) verifies, but is caught
                // here (T09).
                let rolled_back = match &mark {
                    Some((mark_seq, mark_hash, mark_shipped)) => {
                        let at = tx
                            .query(
                                &format!("SELECT hash FROM {schema}.audit_chain WHERE seq = $1"),
                                &[mark_seq],
                            )
                            .await
                            .map_err(PgError::of)?;
                        let same = match at.first() {
                            Some(r) => crate::pg::column::<String>(r, 0)? == *mark_hash,
                            None => false,
                        };
                        (!same || shipped < *mark_shipped).then(|| format!(
                            "record {mark_seq}, which this node appended, is gone or changed, or the chain says it shipped its trail to record {shipped} where it had shipped to {mark_shipped}: the chain was rolled back or rewritten in the database"
                        ))
                    }
                    None => None,
                };
                let found = last.clone().unwrap_or((0, GENESIS.to_string()));
                let broken = if let Some(found) = found_break {
                    Some(found)
                } else if let Some(rolled_back) = rolled_back {
                    Some(rolled_back)
                } else if !signed {
                    Some(FORGED_HEAD.to_string())
                } else if found != (head_seq, head_hash.clone()) {
                    Some(format!(
                        "the chain ends at record {} but its head names record {head_seq} (records deleted, added or re-hashed in the database)",
                        found.0
                    ))
                } else {
                    None
                };
                let insert = tx
                    .prepare(&format!(
                        "INSERT INTO {schema}.audit_chain
                             (seq, node, node_seq, time_ms, kind, correlation_id, subject, function,
                              detail, node_prev_hash, node_hash, prev_hash, hash)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                    ))
                    .await
                    .map_err(PgError::of)?;
                let mut seq = found.0.max(head_seq);
                // Numbers past the end are for records to come; one an
                // attacker put at the top leaves none (third review: it
                // wrapped to negative numbers, which verify never read).
                let next = |seq: i64| {
                    seq.checked_add(1).ok_or_else(|| {
                        PgError("the deployment's audit chain has no record number left (a record numbered at the top was put in the database): it cannot be extended; verify it and clean it".into())
                    })
                };
                let mut prev = found.1;
                if let Some(reason) = broken {
                    // T09: never launder a broken chain by extending it.
                    error!(target: "bulkhead::audit", reason = %reason, "the deployment's audit chain was tampered with in the database: starting a new segment that records the break");
                    let record = NodeRecord {
                        seq: 0,
                        time_ms: crate::now_ms(),
                        kind: CHAIN_BROKEN.to_string(),
                        correlation_id: None,
                        subject: None,
                        function: None,
                        detail_json: json!({
                            "reason": reason,
                            "expected": {"seq": head_seq, "hash": head_hash},
                            "found": {"seq": found.0},
                            "scope": "deployment",
                        })
                        .to_string(),
                        prev_hash: String::new(),
                        hash: String::new(),
                    };
                    seq = next(seq)?;
                    prev = GENESIS.to_string();
                    let hash = chain_hash(seq, &node, &record, &prev);
                    tx.execute(&insert, &row(&seq, &node, &record, &prev, &hash))
                        .await
                        .map_err(PgError::of)?;
                    prev = hash;
                }
                let mut to = shipped;
                for record in &records {
                    seq = next(seq)?;
                    let hash = chain_hash(seq, &node, record, &prev);
                    tx.execute(&insert, &row(&seq, &node, record, &prev, &hash))
                        .await
                        .map_err(PgError::of)?;
                    prev = hash;
                    to = record.seq;
                }
                tx.execute(
                    &format!("UPDATE {schema}.audit_chain_head SET seq = $1, hash = $2, mac = $3 WHERE id = 1"),
                    &[&seq, &prev, &head_mac(&key, seq, &prev)],
                )
                .await
                .map_err(PgError::of)?;
                tx.execute(
                    &format!(
                        "INSERT INTO {schema}.audit_chain_nodes (node, node_seq) VALUES ($1, $2)
                         ON CONFLICT (node) DO UPDATE SET node_seq = EXCLUDED.node_seq"
                    ),
                    &[&node, &to],
                )
                .await
                .map_err(PgError::of)?;
                tx.commit().await.map_err(PgError::of)?;
                Ok(Some((seq, prev, to)))
            })
            .map_err(backend)?;
        if let Some((seq, hash, shipped)) = appended {
            write_mark(&self.mark_file, seq, &hash, shipped)?;
        }
        Ok(())
    }

    /// Walk the deployment's chain: every record's hash, each node's own
    /// chain inside it, and the MAC'd head; and, when the node whose state
    /// directory is `dir` has appended before, that its last record is
    /// still there (a chain wiped or put back to an older copy verifies by
    /// itself, but not against a node's mark: outside review, T09).
    pub fn verify(pg: &Pg, keyring: &Keyring, dir: &Path) -> Result<ChainVerification, StoreError> {
        let key = chain_key(keyring)?;
        let schema = pg.schema().to_string();
        let mark = read_mark(&dir.join(MARK_FILE));
        pg.call(move |pool| async move {
            let client = pool.get().await.map_err(PgError::of)?;
            // One snapshot: a node shipping meanwhile is no false alarm.
            // Hashing a long chain takes a while between reads: the
            // session is not idle for the server to end (review).
            client
                .batch_execute(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                     SET LOCAL idle_in_transaction_session_timeout = 0",
                )
                .await
                .map_err(PgError::of)?;
            let verified = walk(&client, &schema, &key, mark).await;
            let _ = client.batch_execute("COMMIT").await;
            verified
        })
        .map_err(backend)
    }
}

/// [`SharedTrail::verify`] inside its snapshot.
async fn walk(
    client: &deadpool_postgres::Object,
    schema: &str,
    key: &DataKey,
    mark: Option<(i64, String, i64)>,
) -> Result<ChainVerification, PgError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.audit_chain_head")],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(PgError::of)?;
    let broken = |seq: i64, reason: String| Ok(ChainVerification::Broken { seq, reason });
    let lost = |seq: i64| {
        Ok(ChainVerification::Broken {
            seq,
            reason: format!(
                "record {seq}, which this node appended, is gone or changed: the chain was wiped or put back to an older copy in the database"
            ),
        })
    };
    if !exists {
        return match mark {
            Some((seq, _, _)) => lost(seq),
            None => Ok(ChainVerification::Intact {
                records: 0,
                nodes: 0,
            }),
        };
    }
    let mut prev = (0i64, GENESIS.to_string());
    // Pages start below every number, so a row numbered 0 or less is read
    // (and found out of place) too.
    let mut cursor = i64::MIN;
    let mut nodes: std::collections::HashMap<String, (i64, String)> = Default::default();
    let mut first_break = None;
    let mut mark_found = false;
    let mut any = false;
    // Read in pages, within the snapshot: memory stays bounded whatever
    // the chain's length (review).
    loop {
        let rows = client
            .query(
                &format!(
                    "SELECT seq, node, node_seq, time_ms, kind, correlation_id, subject, function,
                        detail, node_prev_hash, node_hash, prev_hash, hash
                 FROM {schema}.audit_chain WHERE seq > $1 ORDER BY seq LIMIT {VERIFY_PAGE}"
                ),
                &[&cursor],
            )
            .await
            .map_err(PgError::of)?;
        if rows.is_empty() {
            break;
        }
        any = true;
        for r in &rows {
            let seq: i64 = crate::pg::column(r, 0)?;
            let node: String = crate::pg::column(r, 1)?;
            let record = NodeRecord {
                seq: crate::pg::column(r, 2)?,
                time_ms: crate::pg::column(r, 3)?,
                kind: crate::pg::column(r, 4)?,
                correlation_id: crate::pg::column(r, 5)?,
                subject: crate::pg::column(r, 6)?,
                function: crate::pg::column(r, 7)?,
                detail_json: crate::pg::column(r, 8)?,
                prev_hash: crate::pg::column(r, 9)?,
                hash: crate::pg::column(r, 10)?,
            };
            let prev_hash: String = crate::pg::column(r, 11)?;
            let hash: String = crate::pg::column(r, 12)?;
            let segment = record.seq == 0 && record.kind == CHAIN_BROKEN;
            let expected = prev.0.saturating_add(1);
            if seq != expected {
                return broken(
                    expected,
                    format!("record {expected} is missing (the next is {seq})"),
                );
            }
            let chained = if segment {
                prev_hash == GENESIS
            } else {
                prev_hash == prev.1
            };
            if !chained || hash != chain_hash(seq, &node, &record, &prev_hash) {
                return broken(
                    seq,
                    format!("record {seq} was changed, inserted or re-hashed in the database"),
                );
            }
            if segment {
                first_break.get_or_insert_with(|| {
                let why: Value = serde_json::from_str(&record.detail_json).unwrap_or(Value::Null);
                let why = why["reason"].as_str().unwrap_or("the chain was found broken").to_string();
                (seq, format!("{why}; the node that found it started a new segment at record {seq} ({CHAIN_BROKEN})"))
            });
            } else {
                // The node's own record, whole, and its place in that node's
                // chain (a break in the node's own trail starts over there).
                let own = record_hash(
                    record.seq,
                    record.time_ms,
                    &record.kind,
                    record.correlation_id.as_deref(),
                    record.subject.as_deref(),
                    record.function.as_deref(),
                    &record.detail_json,
                    &record.prev_hash,
                );
                if own != record.hash {
                    return broken(
                        seq,
                        format!(
                            "record {seq} (node {node}'s record {}) was changed in the database",
                            record.seq
                        ),
                    );
                }
                if let Some((last_seq, last_hash)) = nodes.get(&node) {
                    let restarted = record.kind == CHAIN_BROKEN && record.prev_hash == GENESIS;
                    if record.seq <= *last_seq || (!restarted && record.prev_hash != *last_hash) {
                        return broken(
                            seq,
                            format!(
                                "record {seq} does not follow node {node}'s record {last_seq} (a record of that node is missing or out of order)"
                            ),
                        );
                    }
                }
                nodes.insert(node, (record.seq, record.hash.clone()));
            }
            if let Some((mark_seq, mark_hash, _)) = &mark
                && seq == *mark_seq
            {
                if hash != *mark_hash {
                    return lost(seq);
                }
                mark_found = true;
            }
            cursor = seq;
            prev = (seq, hash);
        }
    }
    if let Some((mark_seq, _, _)) = &mark
        && !mark_found
    {
        return lost(*mark_seq);
    }
    let head = client
        .query(
            &format!("SELECT seq, hash, mac FROM {schema}.audit_chain_head WHERE id = 1"),
            &[],
        )
        .await
        .map_err(PgError::of)?;
    let Some(head) = head.first() else {
        return if !any {
            Ok(ChainVerification::Intact {
                records: 0,
                nodes: 0,
            })
        } else {
            broken(prev.0, "the chain's head is gone".into())
        };
    };
    let (head_seq, head_hash, signed) = read_head(head, key)?;
    if !signed {
        return broken(head_seq, FORGED_HEAD.into());
    }
    if (head_seq, head_hash) != prev {
        return broken(
            prev.0.min(head_seq) + 1,
            format!(
                "the chain ends at record {} but its head names record {head_seq} (records deleted from the end, or added)",
                prev.0
            ),
        );
    }
    if let Some((seq, reason)) = first_break {
        return broken(seq, reason);
    }
    Ok(ChainVerification::Intact {
        records: prev.0,
        nodes: i64::try_from(nodes.len()).unwrap_or(i64::MAX),
    })
}

/// A record's hash in the deployment's chain: its place, its node, the
/// node's own hash of it (which covers every field) and the hash before.
fn chain_hash(seq: i64, node: &str, record: &NodeRecord, prev: &str) -> String {
    let canonical = json!([
        seq,
        node,
        record.seq,
        record.time_ms,
        record.kind,
        record.correlation_id,
        record.subject,
        record.function,
        record.detail_json,
        record.prev_hash,
        record.hash,
        prev
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// What a head whose MAC does not match says.
const FORGED_HEAD: &str = "the chain's head is not one a node wrote (its MAC does not match)";

/// A head row (`seq, hash, mac`): its number and hash, and whether its
/// MAC is one a node wrote.
fn read_head(row: &tokio_postgres::Row, key: &DataKey) -> Result<(i64, String, bool), PgError> {
    let (seq, hash, mac): (i64, String, String) = (
        crate::pg::column(row, 0)?,
        crate::pg::column(row, 1)?,
        crate::pg::column(row, 2)?,
    );
    let signed = mac == head_mac(key, seq, &hash);
    Ok((seq, hash, signed))
}

/// The head's MAC: under a key derived from the shared data key, for this
/// purpose only.
fn head_mac(key: &DataKey, seq: i64, hash: &str) -> String {
    hex::encode(key.lookup_id(
        b"bulkhead audit chain head v1",
        format!("{seq}:{hash}").as_bytes(),
    ))
}

/// The values of one `audit_chain` row.
fn row<'a>(
    seq: &'a i64,
    node: &'a String,
    r: &'a NodeRecord,
    prev: &'a String,
    hash: &'a String,
) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 13] {
    [
        seq,
        node,
        &r.seq,
        &r.time_ms,
        &r.kind,
        &r.correlation_id,
        &r.subject,
        &r.function,
        &r.detail_json,
        &r.prev_hash,
        &r.hash,
        prev,
        hash,
    ]
}

fn chain_key(keyring: &Keyring) -> Result<DataKey, StoreError> {
    keyring
        .data_key(KEY_OWNER, KEY_NAME, "", true)
        .map_err(|e| StoreError::Backend(format!("the audit chain's key: {e}")))?
        .ok_or_else(|| StoreError::Backend("the audit chain's key could not be created".into()))
}

/// This node's mark ([`MARK_FILE`]), if it has appended before.
fn read_mark(path: &Path) -> Option<(i64, String, i64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let seq = parts.next()?.parse().ok()?;
    let hash = parts.next()?.to_string();
    let shipped = parts.next()?.parse().ok()?;
    Some((seq, hash, shipped))
}

fn write_mark(path: &Path, seq: i64, hash: &str, shipped: i64) -> Result<(), StoreError> {
    let line = format!("{seq} {hash} {shipped}\n");
    crate::files::write_atomically(path, &[line.as_bytes()], 0o600).map_err(|source| {
        StoreError::Dir {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            source,
        }
    })
}

/// A new name for this node, kept in its state directory in place of the
/// old one.
fn new_node_id(dir: &Path) -> Result<String, StoreError> {
    let bytes = crate::files::random_bytes::<32>().map_err(StoreError::Key)?;
    crate::files::write_atomically(&dir.join(NODE_FILE), &[&bytes], 0o600).map_err(|source| {
        StoreError::Dir {
            dir: dir.to_path_buf(),
            source,
        }
    })?;
    Ok(hex::encode(&bytes[..12]))
}

/// This node's name in the chain, kept in its state directory.
fn node_id(dir: &Path) -> Result<String, StoreError> {
    let bytes = crate::files::load_or_create_key(&dir.join(NODE_FILE)).map_err(StoreError::Key)?;
    Ok(hex::encode(&bytes[..12]))
}

fn backend(e: PgError) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn migration(schema: &str) -> String {
    format!(
        r"
        {preamble}
        CREATE TABLE IF NOT EXISTS {schema}.audit_chain (
            seq BIGINT PRIMARY KEY,
            node TEXT NOT NULL,
            node_seq BIGINT NOT NULL,
            time_ms BIGINT NOT NULL,
            kind TEXT NOT NULL,
            correlation_id TEXT,
            subject TEXT,
            function TEXT,
            detail TEXT NOT NULL,
            node_prev_hash TEXT NOT NULL,
            node_hash TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS audit_chain_node ON {schema}.audit_chain (node, node_seq);
        CREATE TABLE IF NOT EXISTS {schema}.audit_chain_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL,
            mac TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS {schema}.audit_chain_nodes (
            node TEXT PRIMARY KEY,
            node_seq BIGINT NOT NULL
        );
        ",
        preamble = crate::pg::migration_preamble(),
    )
}
