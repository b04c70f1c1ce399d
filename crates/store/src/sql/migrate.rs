//! Schema from migration files, applied at deploy (T06: schema only from the operator): `*.sql` files in
//! name order, each recorded with its SHA-256 so an applied migration that
//! later changes (or disappears) is refused instead of silently diverging.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};

use super::SqlStoreError;

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub name: String,
    pub sql: String,
}

impl Migration {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// What applying (or checking) migrations found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Applied before this run, unchanged.
    pub already: Vec<String>,
    /// Applied by this run (or, for a dry run, that would be).
    pub applied: Vec<String>,
}

/// Largest migration file read.
const MAX_MIGRATION_BYTES: u64 = 1 << 20;

/// The `*.sql` files of `dir`, sorted by file name.
pub fn read_migrations(dir: &Path) -> Result<Vec<Migration>, SqlStoreError> {
    let io = |source: std::io::Error| SqlStoreError::Migrations {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") || !path.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        files.push((name.to_string(), path));
    }
    files.sort();
    let mut migrations = Vec::with_capacity(files.len());
    for (name, path) in files {
        let size = std::fs::metadata(&path).map_err(io)?.len();
        if size > MAX_MIGRATION_BYTES {
            return Err(SqlStoreError::MigrationTooLarge { name });
        }
        let sql = std::fs::read_to_string(&path).map_err(io)?;
        migrations.push(Migration { name, sql });
    }
    Ok(migrations)
}

/// Where an embedded store records its applied migrations.
pub(crate) const TRACKING_TABLE: &str = "_bulkhead_migrations";

const TRACKING: &str = "CREATE TABLE IF NOT EXISTS _bulkhead_migrations (
    name TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    applied_ms INTEGER NOT NULL
)";

/// What applying migrations would do, given what a store has applied
/// (name, SHA-256): shared by both backends, so both refuse the same
/// changed, missing and out-of-order files.
pub(crate) struct Plan<'a> {
    pub pending: Vec<&'a Migration>,
    pub report: MigrationReport,
}

pub(crate) fn plan<'a>(
    store: &str,
    applied: &[(String, String)],
    migrations: &'a [Migration],
) -> Result<Plan<'a>, SqlStoreError> {
    for (name, _) in applied {
        if !migrations.iter().any(|m| &m.name == name) {
            return Err(SqlStoreError::MigrationMissing {
                store: store.to_string(),
                name: name.clone(),
            });
        }
    }
    let last_applied = applied.iter().map(|(name, _)| name).max();
    let mut plan = Plan {
        pending: Vec::new(),
        report: MigrationReport::default(),
    };
    for migration in migrations {
        match applied.iter().find(|(name, _)| *name == migration.name) {
            Some((_, old)) if *old == migration.sha256() => {
                plan.report.already.push(migration.name.clone());
            }
            Some(_) => {
                return Err(SqlStoreError::MigrationChanged {
                    store: store.to_string(),
                    name: migration.name.clone(),
                });
            }
            None => {
                if let Some(last) = last_applied
                    && migration.name < *last
                {
                    return Err(SqlStoreError::MigrationOutOfOrder {
                        store: store.to_string(),
                        name: migration.name.clone(),
                        last: last.clone(),
                    });
                }
                plan.pending.push(migration);
                plan.report.applied.push(migration.name.clone());
            }
        }
    }
    Ok(plan)
}

/// Apply what is pending, in one transaction. `commit = false` is the dry
/// run of `bulkhead check`: everything is executed, then rolled back.
pub(crate) fn apply(
    conn: &mut Connection,
    store: &str,
    migrations: &[Migration],
    commit: bool,
) -> Result<MigrationReport, SqlStoreError> {
    let db = |source: rusqlite::Error| SqlStoreError::Sql {
        store: store.to_string(),
        source,
    };
    let tx = conn.transaction().map_err(db)?;
    tx.execute_batch(TRACKING).map_err(db)?;
    let applied: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT name, sha256 FROM _bulkhead_migrations ORDER BY name")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let plan = plan(store, &applied, migrations)?;
    for migration in &plan.pending {
        tx.execute_batch(&migration.sql)
            .map_err(|source| SqlStoreError::MigrationFailed {
                store: store.to_string(),
                name: migration.name.clone(),
                source: Box::new(source),
            })?;
        tx.execute(
            "INSERT INTO _bulkhead_migrations (name, sha256, applied_ms) VALUES (?1, ?2, ?3)",
            params![migration.name, migration.sha256(), crate::now_ms()],
        )
        .map_err(db)?;
    }
    if commit {
        tx.commit().map_err(db)?;
    } else {
        tx.rollback().map_err(db)?;
    }
    Ok(plan.report)
}
