//! Schema from migration files, applied at deploy (T06: schema only from the operator): `*.sql` files in
//! name order, each recorded with its SHA-256 so an applied migration that
//! later changes (or disappears) is refused instead of silently diverging.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
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

const TRACKING: &str = "CREATE TABLE IF NOT EXISTS _bulkhead_migrations (
    name TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    applied_ms INTEGER NOT NULL
)";

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
    let mut applied: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT name, sha256 FROM _bulkhead_migrations ORDER BY name")
            .map_err(db)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    applied.sort();
    let mut report = MigrationReport::default();
    for (name, _) in &applied {
        if !migrations.iter().any(|m| &m.name == name) {
            return Err(SqlStoreError::MigrationMissing {
                store: store.to_string(),
                name: name.clone(),
            });
        }
    }
    let last_applied = applied.last().map(|(n, _)| n.clone());
    for migration in migrations {
        let hash = migration.sha256();
        let recorded: Option<String> = tx
            .query_row(
                "SELECT sha256 FROM _bulkhead_migrations WHERE name = ?1",
                [&migration.name],
                |row| row.get(0),
            )
            .optional()
            .map_err(db)?;
        match recorded {
            Some(old) if old == hash => report.already.push(migration.name.clone()),
            Some(_) => {
                return Err(SqlStoreError::MigrationChanged {
                    store: store.to_string(),
                    name: migration.name.clone(),
                });
            }
            None => {
                if let Some(last) = &last_applied
                    && migration.name < *last
                {
                    return Err(SqlStoreError::MigrationOutOfOrder {
                        store: store.to_string(),
                        name: migration.name.clone(),
                        last: last.clone(),
                    });
                }
                tx.execute_batch(&migration.sql).map_err(|source| {
                    SqlStoreError::MigrationFailed {
                        store: store.to_string(),
                        name: migration.name.clone(),
                        source,
                    }
                })?;
                tx.execute(
                    "INSERT INTO _bulkhead_migrations (name, sha256, applied_ms) VALUES (?1, ?2, ?3)",
                    params![migration.name, hash, crate::now_ms()],
                )
                .map_err(db)?;
                report.applied.push(migration.name.clone());
            }
        }
    }
    if commit {
        tx.commit().map_err(db)?;
    } else {
        tx.rollback().map_err(db)?;
    }
    Ok(report)
}
