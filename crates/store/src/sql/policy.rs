//! What a guest's SQL may do (T06, T16): the authorizer every guest
//! connection runs, and the grant's statement allowlist. Migrations run on
//! a connection of their own without this authorizer; nothing a guest sends
//! can create, alter or drop schema, attach a file, run a pragma, open a
//! transaction or reach any database but the store's own.

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use super::Access;

/// Tables the host keeps inside each SQL database; guests never see them.
pub(crate) const INTERNAL_PREFIX: &str = "_bulkhead";

/// Functions a guest may not call even where SQLite would allow them.
const DENIED_FUNCTIONS: &[&str] = &[
    "load_extension",
    "fts3_tokenizer",
    "sqlite_compileoption_get",
];

/// Decide one authorizer callback: `Err(reason)` denies the whole statement.
/// The reason is a category for the audit record, never the statement.
pub(crate) fn authorize(access: Access, ctx: &AuthContext<'_>) -> Result<(), &'static str> {
    // T06/T16: only the store's own database, never `temp` or an attached one.
    if let Some(db) = ctx.database_name
        && db != "main"
    {
        return Err("another database or schema");
    }
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        AuthAction::Read { table_name, .. } => table(table_name),
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
            if is_schema_table(table_name) =>
        {
            // SQLite asks about the schema table before the DDL itself.
            Err("DDL (schema changes come from migrations only)")
        }
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. } => match access {
            Access::Read => Err("a write under a read grant"),
            Access::ReadWrite => table(table_name),
        },
        AuthAction::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if DENIED_FUNCTIONS.contains(&name.as_str()) || name.starts_with("sqlcipher") {
                Err("a function guests may not call")
            } else {
                Ok(())
            }
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Err("ATTACH or DETACH"),
        AuthAction::Pragma { .. } => Err("PRAGMA"),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("a transaction statement (each call is one statement)")
        }
        AuthAction::CreateIndex { .. }
        | AuthAction::CreateTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::CreateTrigger { .. }
        | AuthAction::CreateView { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::DropTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. }
        | AuthAction::DropTrigger { .. }
        | AuthAction::DropView { .. }
        | AuthAction::AlterTable { .. }
        | AuthAction::CreateVtable { .. }
        | AuthAction::DropVtable { .. }
        | AuthAction::Reindex { .. }
        | AuthAction::Analyze { .. } => Err("DDL (schema changes come from migrations only)"),
        _ => Err("an operation Bulkhead does not allow"),
    }
}

fn is_schema_table(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "sqlite_master" | "sqlite_schema" | "sqlite_temp_master" | "sqlite_temp_schema"
    )
}

/// Virtual tables that expose storage internals (page layout, raw pages,
/// open statements) rather than the app's data.
const INTERNAL_VTABS: &[&str] = &["dbstat", "sqlite_dbpage", "sqlite_stmt"];

fn table(name: &str) -> Result<(), &'static str> {
    let name = name.to_ascii_lowercase();
    // `pragma_*` are PRAGMAs as table-valued functions: the database's
    // path, compile options, the host's own schema.
    if name.starts_with(INTERNAL_PREFIX)
        || name.starts_with("pragma_")
        || INTERNAL_VTABS.contains(&name.as_str())
    {
        Err("a table the host keeps for itself")
    } else {
        Ok(())
    }
}

/// When one statement trips several rules, the audit names the most
/// telling: a DROP TABLE also deletes from the schema table, which a read
/// grant refuses as a write, but the record should say "DDL".
pub(crate) fn more_telling(a: &'static str, b: &'static str) -> &'static str {
    let rank = |r: &str| {
        RANK.iter()
            .position(|p| r.starts_with(p))
            .unwrap_or(RANK.len())
    };
    if rank(b) < rank(a) { b } else { a }
}

const RANK: &[&str] = &[
    "ATTACH",
    "PRAGMA",
    "DDL",
    "another database",
    "a transaction",
];

pub(crate) fn to_authorization(decision: Result<(), &'static str>) -> Authorization {
    match decision {
        Ok(()) => Authorization::Allow,
        Err(_) => Authorization::Deny,
    }
}

/// Whitespace-normalised form used to match declared `statements`.
pub fn normalize_statement(statement: &str) -> String {
    statement
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Is `statement` one of `allowed` (when the grant lists statements)?
pub fn statement_allowed(allowed: Option<&[String]>, statement: &str) -> bool {
    match allowed {
        None => true,
        Some(list) => {
            let wanted = normalize_statement(statement);
            list.iter().any(|s| normalize_statement(s) == wanted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t16_declared_statements_match_after_whitespace_normalisation() {
        let list = vec!["SELECT id, body FROM events WHERE id = ?1".to_string()];
        assert!(statement_allowed(
            Some(&list),
            "  SELECT id,\n  body FROM events   WHERE id = ?1 ;"
        ));
        assert!(!statement_allowed(
            Some(&list),
            "SELECT id, body FROM events WHERE id = ?1 OR 1=1"
        ));
        assert!(!statement_allowed(
            Some(&list),
            "select id, body from events where id = ?1"
        ));
        assert!(statement_allowed(None, "anything"));
    }
}
