//! The `bulkhead:sql` capability (T06, T15, T16, T05): the host side of
//! `wit/sql/sql.wit`. A call names a store; it runs only if the function's
//! grants name that store, with the grant's access and statement list. The
//! SQL itself is confined by `bulkhead_store::sql` (read-only connection
//! for a read grant, authorizer, limits, the call's deadline). Every denial
//! is logged and audited with function, store, reason and correlation id,
//! never a parameter value. A statement that ran is audited once per call,
//! store and kind (`access = "read"` or `"write"`, or `"failed"` for one
//! that reached the database and failed there), so the privilege review
//! can tell a store never used and a read-write grant that never writes
//! (T16).

use std::collections::BTreeMap;
use std::sync::Arc;

use bulkhead_manifest::grants::{SqlGrant, StoreAccess};
use bulkhead_manifest::stores::valid_resource_name;
use bulkhead_store::sql::{Access, MAX_RESULT_BYTES, QueryError, QueryLimits, SqlStore, SqlValue};
use tracing::debug;
use wasmtime::component::HasData;

wasmtime::component::bindgen!({
    path: "wit/sql",
    world: "bulkhead:sql/imports",
    imports: { default: async },
});

use bulkhead::sql::sql::{Error, Host, QueryResult, Row, Value};

use crate::call::{CallContext, Kind, Outcome, Report, Target};

/// Largest statement text a guest may send.
const MAX_STATEMENT_BYTES: usize = 64 << 10;
/// Most parameters one statement may bind.
const MAX_PARAMS: usize = 100;
/// Most rows one call may return.
const MAX_ROWS: usize = 1000;
/// Most statements one invocation may run.
const MAX_QUERIES_PER_CALL: u32 = 10_000;

/// The SQL stores open for this deployment, by name: SQLCipher files or
/// PostgreSQL schemas, the capability does not care which.
pub type SqlStores = BTreeMap<String, Arc<dyn SqlStore>>;

/// One granted store, as one function may use it.
pub(crate) struct SqlBinding {
    db: Arc<dyn SqlStore>,
    access: Access,
    statements: Option<Vec<String>>,
}

/// A function's SQL grants, bound to open databases. Built once per load.
pub(crate) type SqlBindings = BTreeMap<String, SqlBinding>;

pub(crate) fn bind(grants: &BTreeMap<String, SqlGrant>, stores: &SqlStores) -> SqlBindings {
    grants
        .iter()
        .filter_map(|(name, grant)| {
            // Missing only in `check`'s dry run, which never invokes.
            let db = stores.get(name)?.clone();
            Some((
                name.clone(),
                SqlBinding {
                    db,
                    access: match grant.access {
                        StoreAccess::Read => Access::Read,
                        StoreAccess::ReadWrite => Access::ReadWrite,
                    },
                    statements: grant.statements.clone(),
                },
            ))
        })
        .collect()
}

/// Per-call state of the capability.
pub(crate) struct SqlCtx {
    pub bindings: Arc<SqlBindings>,
    /// The call's identity and its one reporter (T09).
    pub call: CallContext,
    pub queries: u32,
}

/// `HasData` glue for the generated `add_to_linker`.
pub(crate) struct SqlHost;

impl HasData for SqlHost {
    type Data<'a> = &'a mut SqlCtx;
}

pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut SqlCtx,
) -> wasmtime::Result<()> {
    bulkhead::sql::sql::add_to_linker::<T, SqlHost>(linker, get)
}

impl SqlCtx {
    /// A refusal, audited under the `store` field as ever.
    fn deny(&self, store: &str, reason: &str) {
        self.call.deny("sql", Target::Store(store), reason);
    }
}

/// The store name as it may appear in logs: guests choose it.
fn printable(store: &str) -> &str {
    if valid_resource_name(store) {
        store
    } else {
        "(not a valid store name)"
    }
}

impl Host for SqlCtx {
    async fn query(
        &mut self,
        store: String,
        statement: String,
        params: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let shown = printable(&store).to_string();
        let Some(binding) = self.bindings.get(&store) else {
            self.deny(&shown, "no grant for this store");
            return Err(Error::NotGranted(shown));
        };
        self.queries = self.queries.saturating_add(1);
        if self.queries > MAX_QUERIES_PER_CALL {
            return Err(Error::Limit(format!(
                "more than {MAX_QUERIES_PER_CALL} statements in one call"
            )));
        }
        if statement.len() > MAX_STATEMENT_BYTES {
            return Err(Error::Limit(format!(
                "statement over {MAX_STATEMENT_BYTES} bytes"
            )));
        }
        if params.len() > MAX_PARAMS {
            return Err(Error::Limit(format!("more than {MAX_PARAMS} parameters")));
        }
        let params: Vec<SqlValue> = params.into_iter().map(from_wit).collect();
        let db = binding.db.clone();
        let access = binding.access;
        let statements = binding.statements.clone();
        let limits = QueryLimits {
            max_rows: MAX_ROWS,
            max_bytes: MAX_RESULT_BYTES,
            deadline: self.call.deadline().into_std(),
        };
        let outcome = tokio::task::spawn_blocking(move || {
            db.query(access, statements.as_deref(), &statement, &params, &limits)
        })
        .await
        .unwrap_or(Err(QueryError::Internal));
        match outcome {
            Ok(result) => {
                let access = if result.write { "write" } else { "read" };
                self.call.used_once("sql", Target::Store(&shown), access);
                debug!(
                    target: "bulkhead::capability",
                    function = %self.call.function(),
                    correlation_id = %self.call.correlation_id(),
                    capability = "sql",
                    store = %shown,
                    rows = result.rows.len(),
                    changes = result.changes,
                    "SQL statement ran"
                );
                Ok(QueryResult {
                    columns: result.columns,
                    rows: result
                        .rows
                        .into_iter()
                        .map(|values| Row {
                            values: values.into_iter().map(to_wit).collect(),
                        })
                        .collect(),
                    changes: result.changes,
                })
            }
            Err(error) => Err(self.refused(&shown, error)),
        }
    }
}

impl SqlCtx {
    /// Policy refusals are audited as refusals. A statement that reached the
    /// database and failed there (a constraint, a syntax error, a limit)
    /// was still a use of the grant: it is audited once per call as
    /// `access = "failed"`, so the privilege review does not call a grant
    /// whose every statement failed unused (T16).
    fn refused(&self, store: &str, error: QueryError) -> Error {
        match error {
            QueryError::ReadOnly => {
                self.deny(store, "a write under a read grant");
                Error::ReadOnly
            }
            QueryError::StatementNotAllowed => {
                self.deny(store, "a statement the grant does not declare");
                Error::StatementNotAllowed
            }
            QueryError::Denied(why) => {
                self.deny(store, why);
                Error::Denied(why.to_string())
            }
            QueryError::Invalid(why) => {
                self.call.used_once("sql", Target::Store(store), "failed");
                Error::Invalid(why)
            }
            QueryError::Limit(why) => {
                self.call.used_once("sql", Target::Store(store), "failed");
                self.call.report(Report {
                    kind: Kind::Failed,
                    capability: "sql",
                    target: Target::Store(store),
                    outcome: Outcome::Limit(&why),
                });
                Error::Limit(why)
            }
            QueryError::Internal => Error::Invalid("the store failed; see the host log".into()),
            // Issue 16: the database is away; the host log says why.
            QueryError::Unavailable => {
                Error::Invalid("the store is unavailable right now; try again later".into())
            }
        }
    }
}

fn from_wit(value: Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Integer(v) => SqlValue::Integer(v),
        Value::Real(v) => SqlValue::Real(v),
        Value::Text(v) => SqlValue::Text(v),
        Value::Blob(v) => SqlValue::Blob(v),
    }
}

fn to_wit(value: SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(v) => Value::Integer(v),
        SqlValue::Real(v) => Value::Real(v),
        SqlValue::Text(v) => Value::Text(v),
        SqlValue::Blob(v) => Value::Blob(v),
    }
}
