//! `bulkhead migrate-state APP_DIR [--env ENV]` (issue 16): move an
//! embedded environment's shared state into the PostgreSQL database its
//! manifest's `[cluster]` names. See `bulkhead_store::state_move`.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use bulkhead_store::crypto::{DEV_MASTER_KEY_FILE, MASTER_KEY_ENV, MasterKey};
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
    // Issue 16: on PostgreSQL each SQL store is a schema of its own; its
    // rows are not moved yet, so an app whose SQL stores hold data is not
    // moved at all rather than served without them.
    let sql_files: Vec<String> = app
        .stores
        .iter()
        .filter(|spec| matches!(spec.kind, bulkhead_manifest::StoreKind::Sql { .. }))
        .map(|spec| bulkhead_store::sql::database_path(&dir, &spec.name))
        .filter(|path| path.is_file())
        .map(|path| path.display().to_string())
        .collect();
    if !sql_files.is_empty() {
        bail!(
            "nothing was moved: migrate-state does not move SQL stores yet, and on PostgreSQL each SQL store is a schema of its own that would start empty. The embedded databases: {}. Copy their rows through a function once the nodes serve (a declared SELECT here, INSERT there), then move these files out of the state directory and run migrate-state again",
            sql_files.join(", ")
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
    let from = if dev_key.is_file() {
        MasterKey::from_file(&dev_key)?
    } else {
        MasterKey::load(&dir, &target.env)?
    };
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
    let moved =
        bulkhead_store::state_move::move_to_postgres(&dir, &from, &to, &postgres, &progress)
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
