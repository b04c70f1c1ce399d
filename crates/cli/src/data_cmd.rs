//! `bulkhead data`: a subject's rights over its data (T20). `erase`
//! crypto-shreds the subject: its data keys are destroyed, then its records
//! in every subject-scoped store are deleted, so any copy left (a backup of
//! the data, a free page) is unreadable. `export` prints its records as
//! JSON, decrypted. Both are audited.

use std::process::ExitCode;

use anyhow::{Result, bail};
use bulkhead_store::crypto::{KeyStore, Keyring};
use bulkhead_store::kv::{self, Kv};
use bulkhead_store::{AuditEvent, AuditLog, Store};
use clap::Subcommand;
use serde_json::json;

use crate::Target;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Erase a subject: destroy its data keys and delete its records.
    #[command(
        long_about = "Erase everything the subject S has in the app's subject-scoped key-value \
                      stores (`scope = \"subject\"`): its data keys are destroyed first \
                      (crypto-shredding: copies in backups of the data become unreadable), then its \
                      records are deleted. App-wide stores and SQL stores are not subject-scoped \
                      and are not touched: erase from those in your own code. Works without the \
                      master key. Audited as `data.erased`.",
        after_help = "Example:\n  bulkhead data erase my-app --subject user-123 --env prod"
    )]
    Erase {
        #[command(flatten)]
        target: Target,
        /// The subject (the verified identity the records were written under).
        #[arg(long)]
        subject: String,
    },
    /// Print a subject's records as JSON, decrypted.
    #[command(
        long_about = "Print, as one JSON document on stdout, every live record the subject S has \
                      in the app's subject-scoped key-value stores, decrypted (values that are not \
                      UTF-8 are given as `value_hex`). Needs the master key. Audited as \
                      `data.exported`.",
        after_help = "Example:\n  bulkhead data export my-app --subject user-123 --env prod > user-123.json"
    )]
    Export {
        #[command(flatten)]
        target: Target,
        /// The subject (the verified identity the records were written under).
        #[arg(long)]
        subject: String,
    },
}

pub fn run(command: DataCommand) -> Result<ExitCode> {
    match command {
        DataCommand::Erase { target, subject } => erase(&target, &subject),
        DataCommand::Export { target, subject } => export(&target, &subject),
    }
}

fn check_subject(subject: &str) -> Result<()> {
    if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
        bail!("--subject must be 1 to 256 characters without control characters");
    }
    Ok(())
}

fn audited(store: &Store, event: AuditEvent) -> Result<()> {
    let audit = AuditLog::start(store)?;
    audit.record(event);
    audit.close();
    Ok(())
}

fn erase(target: &Target, subject: &str) -> Result<ExitCode> {
    check_subject(subject)?;
    let store = target.store(false)?;
    let keys = KeyStore::open(store.dir())?;
    let mut conn = store.connect()?;
    let (destroyed, deleted) = kv::erase_subject(&keys, &mut conn, subject)?;
    audited(
        &store,
        AuditEvent::new("data.erased")
            .subject(subject)
            .detail("keys_destroyed", destroyed)
            .detail("records_deleted", deleted),
    )?;
    eprintln!("subject erased: {destroyed} data key(s) destroyed, {deleted} record(s) deleted");
    Ok(ExitCode::SUCCESS)
}

fn export(target: &Target, subject: &str) -> Result<ExitCode> {
    check_subject(subject)?;
    let app = match crate::load_app(target) {
        Ok(app) => app,
        Err(problems) => return Ok(crate::report(&problems)),
    };
    let store = target.store(false)?;
    let stores: Vec<String> = app
        .stores
        .iter()
        .filter(|s| s.per_subject())
        .map(|s| s.name.clone())
        .collect();
    let keyring = Keyring::open(store.dir(), &target.env)?;
    let kv = Kv::open(&store, std::sync::Arc::new(keyring))?;
    let records = kv.export_subject(subject, &stores)?;
    let records: Vec<_> = records
        .iter()
        .map(|r| {
            let mut record = json!({
                "store": r.store,
                "key": r.key,
                "updated_ms": r.updated_ms,
                "expires_ms": r.expires_ms,
            });
            match std::str::from_utf8(&r.value) {
                Ok(text) => record["value"] = json!(text),
                Err(_) => record["value_hex"] = json!(hex_of(&r.value)),
            }
            record
        })
        .collect();
    let document = json!({
        "app": app.name,
        "env": app.env,
        "subject": subject,
        "stores": stores,
        "records": records,
    });
    println!("{}", serde_json::to_string_pretty(&document)?);
    audited(
        &store,
        AuditEvent::new("data.exported")
            .subject(subject)
            .detail("records", records.len()),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
