//! `bulkhead migrate-state APP_DIR [--env ENV]` (issue 16): move an
//! embedded environment's shared state into the PostgreSQL database its
//! manifest's `[cluster]` names. See `bulkhead_store::state_move`.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use std::sync::Arc;

use bulkhead_store::crypto::{DEV_MASTER_KEY_FILE, KeyStore, Keyring, MASTER_KEY_ENV, MasterKey};
use bulkhead_store::pg::Pg;
use bulkhead_store::sql::postgres::PgSqlStore;
use bulkhead_store::sql::{SqlDatabase, SqlKey};
use bulkhead_store::state_move::SqlCopy;
use bulkhead_store::{AuditEvent, StateConfig, Store, Verification};

use crate::Target;

pub fn run(target: &Target) -> Result<ExitCode> {
    let app = crate::load_app_in(&target.app_dir, &target.env).map_err(|problems| {
        anyhow::anyhow!(
            "the manifest has problems; `bulkhead check {}` lists them:\n  {}",
            target.app_dir.display(),
            problems.join("\n  ")
        )
    })?;
    let dir = app.state_dir();
    let StateConfig::Postgres { postgres, .. } = crate::deploy::state_config(&app, dir.clone())?
    else {
        bail!(
            "the manifest keeps the state embedded: set `[cluster] backend = \"postgres\"` and `database_url_file` (or {}) to the database the nodes will share, then run migrate-state again",
            bulkhead_manifest::cluster::DATABASE_URL_ENV
        );
    };
    if !dir.join("state.db").is_file() {
        bail!(
            "no embedded state for `{}` in {}: nothing to move",
            target.env,
            dir.display()
        );
    }
    // The nodes' master key: every node must hold it (T15).
    if std::env::var_os(MASTER_KEY_ENV).is_none_or(|v| v.is_empty()) {
        bail!(
            "set {MASTER_KEY_ENV} to the master key file every node will hold: the data keys are wrapped under it on the way (a `dev` key inside the state directory is never used by nodes on PostgreSQL)"
        );
    }
    let to = MasterKey::load(&dir, &target.env)?;
    // What wrapped them here: the state directory's `dev` key, else the
    // same key the nodes hold.
    let dev_key = dir.join(DEV_MASTER_KEY_FILE);
    let embedded_key = || {
        if dev_key.is_file() {
            MasterKey::from_file(&dev_key)
        } else {
            MasterKey::load(&dir, &target.env)
        }
    };
    let from = embedded_key()?;
    // T09: only an intact trail's environment is moved.
    let store = Store::open(&dir).context("cannot open the embedded state")?;
    match store.verify_audit()? {
        Verification::Intact { records } => {
            eprintln!(
                "audit trail intact ({records} records); it stays in {}",
                dir.display()
            );
        }
        Verification::Broken { seq, reason } => bail!(
            "the audit trail is broken at record {seq} ({reason}); `bulkhead audit verify {}` says more. migrate-state moves only an environment whose trail is intact",
            target.app_dir.display()
        ),
    }
    eprintln!(
        "moving the shared state of `{}` ({}) into the PostgreSQL schema `{}` (stop every server of this environment first: what it writes meanwhile is not moved)",
        app.name, target.env, postgres.schema
    );
    let progress = |line: &str| eprintln!("  {line}");
    let sql = sql_copies(&app, &dir, embedded_key()?, &postgres, &progress)
        .context("nothing was moved")?;
    let moved =
        bulkhead_store::state_move::move_to_postgres(&dir, &from, &to, &postgres, &sql, &progress)
            .context("nothing was moved")?;
    let schema = postgres.schema.clone();
    let counts: serde_json::Map<String, serde_json::Value> = moved
        .iter()
        .map(|m| (m.table.to_string(), m.rows.into()))
        .collect();
    store.change_audited(|_| {
        let event = AuditEvent::new("state.migrated")
            .detail("to", "postgres")
            .detail("schema", schema.as_str())
            .detail("rows", serde_json::Value::Object(counts));
        anyhow::Ok(((), vec![event]))
    })?;
    println!(
        "moved: {}",
        moved
            .iter()
            .map(|m| format!("{} {}", m.rows, m.table))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "serve every node with the same {MASTER_KEY_ENV}; the node's own audit trail stays in {} (the embedded copy of what moved is kept: remove it once the nodes serve)",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Each SQL store with an embedded database: its rows, read with its key
/// (its data key under the embedded master key `from`), and its schema on
/// PostgreSQL, made by its migrations as a node would (issue 16). The rows
/// go in with the rest of the state, in one transaction.
fn sql_copies(
    app: &bulkhead_manifest::App,
    dir: &std::path::Path,
    from: MasterKey,
    postgres: &bulkhead_store::kv::PgConfig,
    progress: &dyn Fn(&str),
) -> Result<Vec<SqlCopy>> {
    let stores: Vec<_> = app
        .stores
        .iter()
        .filter_map(|spec| match &spec.kind {
            bulkhead_manifest::StoreKind::Sql { migrations, .. } => Some((&spec.name, migrations)),
            _ => None,
        })
        .filter(|(name, _)| bulkhead_store::sql::database_path(dir, name).is_file())
        .collect();
    if stores.is_empty() {
        return Ok(Vec::new());
    }
    let keyring = Keyring::new(from, KeyStore::open(dir)?);
    let pg = Pg::open(postgres).context("cannot reach the PostgreSQL database")?;
    let mut copies = Vec::new();
    for (name, migrations) in stores {
        let dek = keyring
            .data_key(bulkhead_store::sql::KEY_OWNER, name, "", false)?
            .with_context(|| format!("SQL store `{name}`: its database exists but its data key is gone; restore the state directory from backup"))?;
        let key = Arc::new(SqlKey::from_data_key(&dek, name)?);
        let tables = SqlDatabase::dump(dir, name, key)?;
        let migrations = crate::deploy::store_migrations(migrations, true)?;
        let names = PgSqlStore::prepare(&pg, name, &dek, &migrations)?;
        progress(&format!(
            "SQL store {name}: schema {} made by its {} migration(s); {} table(s) to copy",
            names.schema,
            migrations.len(),
            tables.len()
        ));
        copies.push(SqlCopy {
            store: name.clone(),
            schema: names.schema,
            tables,
        });
    }
    Ok(copies)
}
