//! `bulkhead data`: a subject's rights over its data (T20). `erase`
//! crypto-shreds the subject: its data keys are destroyed, then its records
//! in every subject-scoped store are deleted, so any copy left (a backup of
//! the data, a free page) is unreadable. `export` prints its records as
//! JSON, decrypted. Both are audited.
//!
//! A subject is named as the gateway keys it (T13): qualified by the kind
//! of credential and, for JWTs, the issuer, so `api-key:ci-bot` and
//! `jwt:ISSUER:ci-bot` are two subjects with two sets of records.

use std::borrow::Cow;
use std::process::ExitCode;

use anyhow::{Result, bail};
use bulkhead_gateway::authn::principal;
use bulkhead_manifest::CredentialKind;
use bulkhead_store::AuditEvent;
use bulkhead_store::crypto::KeyStore;
use bulkhead_store::kv::{self, Kv, KvBackend};
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
                      master key. Audited as `data.erased`.\n\n\
                      S is the subject qualified as the access log and the audit trail name it: \
                      `api-key:NAME` for an API key made for NAME, `session:NAME` for a session, \
                      `jwt:ISSUER:SUB` for a JWT, with `%` and `:` in the issuer written as `%25` and \
                      `%3A`. A subject that holds no records and no data keys is refused (exit \
                      status 1, nothing erased or audited), naming the close matches. S is taken \
                      exactly as given, up to 64 KiB, control characters included (records an older \
                      version stored under such a subject stay erasable); such a subject is printed \
                      quoted and escaped, never raw.",
        after_help = "Examples:\n  bulkhead data erase my-app --subject api-key:ci-bot --env prod\n  \
                      bulkhead data erase my-app --subject 'jwt:https%3A//idp.example.com/:user-123' --env prod"
    )]
    Erase {
        #[command(flatten)]
        target: Target,
        /// The qualified subject: `api-key:NAME`, `session:NAME` or `jwt:ISSUER:SUB`.
        #[arg(long)]
        subject: String,
    },
    /// Print a subject's records as JSON, decrypted.
    #[command(
        long_about = "Print, as one JSON document on stdout, every live record the subject S has \
                      in the app's subject-scoped key-value stores, decrypted (values that are not \
                      UTF-8 are given as `value_hex`). Needs the master key. Audited as \
                      `data.exported`. S is qualified as for `data erase`.",
        after_help = "Example:\n  bulkhead data export my-app --subject session:user-123 --env prod > user-123.json"
    )]
    Export {
        #[command(flatten)]
        target: Target,
        /// The qualified subject: `api-key:NAME`, `session:NAME` or `jwt:ISSUER:SUB`.
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

/// The kinds a subject is qualified by, as the gateway writes them (T13).
const KINDS: [&str; 3] = ["api-key:", "session:", "jwt:"];

/// How many close matches a refusal names.
const CLOSE_MATCHES: usize = 20;

/// The longest `--subject` taken, in bytes: generous, so that records an
/// older version stored under a long subject can still be erased (T20).
const MAX_SUBJECT_BYTES: usize = 64 * 1024;

/// `subject` as printed: verbatim, or, when it has a character that would
/// reach the terminal raw as a control (C0, DEL, C1) or not show at all,
/// quoted and escaped as Rust writes it (`"ada\tx\u{85}"`) (T20).
fn shown(subject: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control() || (c.escape_debug().count() > 1 && !matches!(c, '\\' | '\'' | '"'))
    };
    if subject.chars().any(hidden) {
        Cow::Owned(format!("{subject:?}"))
    } else {
        Cow::Borrowed(subject)
    }
}

/// `json` with DEL and C1 controls, which JSON allows raw in strings (C0
/// ones the serializer always escapes), written as `\u00XX`: the same
/// document, with no control reaching a terminal raw (T20).
fn raw_controls_escaped(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if matches!(c, '\u{7f}'..='\u{9f}') {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The name part of a subject as the gateway writes it: after the kind
/// and, for a JWT, after the percent-encoded issuer; a bare name is itself.
fn name_of(subject: &str) -> &str {
    if let Some(rest) = subject.strip_prefix("jwt:") {
        return rest.split_once(':').map_or(rest, |(_, name)| name);
    }
    KINDS
        .iter()
        .find_map(|kind| subject.strip_prefix(kind))
        .unwrap_or(subject)
}

/// The names, lowercased, an operator typing `subject` may have meant: its
/// name part and, for a JWT whose issuer was written as in the token
/// (`jwt:https://idp.example.com:ada`), every part after a `:`.
fn names_meant(subject: &str) -> Vec<String> {
    let Some(rest) = subject.strip_prefix("jwt:") else {
        return vec![name_of(subject).to_lowercase()];
    };
    let mut names: Vec<String> = rest
        .match_indices(':')
        .map(|(at, _)| rest[at + 1..].to_lowercase())
        .collect();
    if names.is_empty() {
        names.push(rest.to_lowercase());
    }
    names
}

/// `jwt:ISSUER:SUB` with the issuer unencoded, spelled as the gateway
/// writes it, for each `:` the issuer may end at.
fn encoded_spellings(subject: &str) -> Vec<String> {
    let Some(rest) = subject.strip_prefix("jwt:") else {
        return Vec::new();
    };
    let mut spellings: Vec<String> = rest
        .match_indices(':')
        .map(|(at, _)| principal(CredentialKind::Jwt, Some(&rest[..at]), &rest[at + 1..]))
        .filter(|spelled| spelled != subject)
        .collect();
    spellings.dedup();
    spellings
}

fn check_subject(keys: &KeyStore, backend: &dyn KvBackend, subject: &str) -> Result<()> {
    // Any subject argv carries is taken: records stored by older versions
    // under a subject the gateway now refuses (control characters, over
    // 1024 bytes) must stay erasable (T20). Printed only through `shown`.
    if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
        bail!("--subject must be 1 byte to 64 KiB long");
    }
    let names = names_meant(subject);
    let close = |other: &str| other != subject && names.contains(&name_of(other).to_lowercase());
    let (data_keys, rows) = kv::subject_holdings(keys, backend, subject)?;
    if data_keys + rows > 0 {
        if !KINDS.iter().any(|kind| subject.starts_with(kind)) {
            // A bare name holding rows addresses records written before
            // subjects were qualified (T13); its namesakes are other
            // subjects, named so the operator knows they are kept (T20).
            let namesakes = kv::find_subjects(keys, backend, &close, CLOSE_MATCHES)?;
            let mut note = format!(
                "note: `{}` is not qualified; it addresses the records written before subjects were qualified",
                shown(subject)
            );
            if !namesakes.is_empty() {
                let namesakes: Vec<_> = namesakes.iter().map(|s| shown(s)).collect();
                note.push_str(&format!(
                    "; these qualified subjects are other subjects and are not touched:\n  {}",
                    namesakes.join("\n  ")
                ));
            }
            eprintln!("{note}");
        }
        return Ok(());
    }
    // The subject holds nothing: a mistyped subject (another case, another
    // kind, the issuer as in the token). Erasing it and saying "erased"
    // would leave the subject's data in place (T20): refuse, name what the
    // operator most likely meant, destroy and audit nothing.
    // (subject, why it is named), each subject once.
    let mut matches: Vec<(String, &str)> = Vec::new();
    for spelled in encoded_spellings(subject) {
        if kv::subject_holdings(keys, backend, &spelled)? != (0, 0) {
            matches.push((spelled, "   (the issuer percent-encoded)"));
        }
    }
    for other in kv::find_subjects(keys, backend, &close, CLOSE_MATCHES)? {
        if !matches.iter().any(|(named, _)| *named == other) {
            matches.push((other, ""));
        }
    }
    let lines: Vec<String> = matches
        .iter()
        .map(|(named, why)| format!("{}{why}", shown(named)))
        .collect();
    let subject = shown(subject);
    if lines.is_empty() {
        bail!(
            "`{subject}` holds no records and no data keys; nothing was done. Subjects are qualified as the gateway names them: `api-key:NAME`, `session:NAME` or `jwt:ISSUER:SUB` with `%` and `:` in the issuer written as `%25` and `%3A` (the access log names the subject of each call)"
        );
    }
    bail!(
        "`{subject}` holds no records and no data keys; nothing was done. Close matches that do:\n  {}\nrun again with --subject set to one of them (the access log names the subject of each call)",
        lines.join("\n  ")
    );
}

fn erase(target: &Target, subject: &str) -> Result<ExitCode> {
    // Issue 16: on PostgreSQL the keys and rows are the ones every node
    // shares; the records stay in this node's trail.
    let state = target.state(false)?;
    let store = state.store().clone();
    let keys = state.key_store()?;
    let backend = state.kv()?;
    check_subject(&keys, &*backend, subject)?;
    // T09, T20 (issue 19): the data keys live in keys.db, apart from the
    // trail, so they cannot share its transaction. The intent is committed
    // first: a run killed after it leaves `data.erase_started` without
    // `data.erased` ("may be partly done: run it again"), never a key
    // destroyed without a record. The rows and `data.erased` then commit
    // together.
    store.record_first(AuditEvent::new("data.erase_started").subject(subject))?;
    let keys_gone = kv::destroy_subject_keys(&keys, subject)?;
    let destroyed = keys_gone.keys;
    let deleted = store.change_audited(|tx| {
        let deleted = if state.is_shared() {
            kv::delete_subject_records(&*backend, subject)?
        } else {
            kv::delete_subject_records(tx, subject)?
        };
        let event = AuditEvent::new("data.erased")
            .subject(subject)
            .detail("keys_destroyed", destroyed)
            .detail("records_deleted", deleted)
            .detail("keys_checkpointed", keys_gone.checkpointed);
        anyhow::Ok((deleted, vec![event]))
    })?;
    if state.is_shared() {
        backend.after_erase();
    } else {
        kv::checkpoint_after_erase(&store.connect()?);
    }
    eprintln!("subject erased: {destroyed} data key(s) destroyed, {deleted} record(s) deleted");
    if state.is_shared() {
        // T20: honest about what PostgreSQL keeps.
        eprintln!(
            "note: on PostgreSQL the deleted keys and rows are gone for every node at once; their old row versions stay in the database's files until PostgreSQL vacuums them, and in its WAL and backups (the keys wrapped under the master key)"
        );
    } else if !keys_gone.checkpointed {
        // The keys are deleted, but their wrapped bytes may stay in the
        // WAL until a later checkpoint: say so rather than imply they are
        // gone from disk (T20).
        eprintln!(
            "warning: keys.db-wal could not be checkpointed (another process, such as a running `bulkhead serve`, holds a read transaction on keys.db): the destroyed data keys, wrapped under the master key, may stay in that file until its next checkpoint. It completes when the server stops (its last connection to keys.db closes) or at a later `data erase` run while the server is idle"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn export(target: &Target, subject: &str) -> Result<ExitCode> {
    let app = match crate::load_app(target) {
        Ok(app) => app,
        Err(problems) => return Ok(crate::report(&problems)),
    };
    let state = target.state(false)?;
    let store = state.store();
    let backend = state.kv()?;
    check_subject(&state.key_store()?, &*backend, subject)?;
    let mut stores: Vec<String> = app
        .stores
        .iter()
        .filter(|s| s.per_subject())
        .map(|s| s.name.clone())
        .collect();
    // Every store holding rows of the subject, declared or not: a store
    // renamed or made app-wide keeps its rows under the old name, and an
    // export leaving them out would say "nothing" while data stays (T20).
    let undeclared: Vec<String> = kv::subject_stores(&*backend, subject)?
        .into_iter()
        .filter(|name| !stores.contains(name))
        .collect();
    if !undeclared.is_empty() {
        eprintln!(
            "note: records of `{}` are in store(s) the manifest does not declare subject-scoped (renamed, removed or made app-wide); they are exported too: {}",
            shown(subject),
            undeclared
                .iter()
                .map(|name| format!("`{}`", shown(name)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    stores.extend(undeclared.iter().cloned());
    let keyring = state.keyring(&target.env)?;
    let kv = Kv::new(backend.clone(), std::sync::Arc::new(keyring));
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
        "undeclared_stores": undeclared,
        "records": records,
    });
    let text = raw_controls_escaped(&serde_json::to_string_pretty(&document)?);
    // T09 (issue 19): the disclosure is recorded, durably, before the data
    // leaves: a run killed in between over-reports, never hides, it.
    store.record_first(
        AuditEvent::new("data.exported")
            .subject(subject)
            .detail("records", records.len()),
    )?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_json_never_carry_raw_controls() {
        assert_eq!(
            shown("jwt:https%3A//id.example.org:ada"),
            "jwt:https%3A//id.example.org:ada"
        );
        assert_eq!(shown("o'brien \"x\" a\\b"), "o'brien \"x\" a\\b");
        assert_eq!(shown("ada\tx\u{85}\u{7f}"), r#""ada\tx\u{85}\u{7f}""#);
        assert_eq!(shown("a\u{202e}b"), r#""a\u{202e}b""#);
        let json = serde_json::to_string_pretty(&json!({"s": "a\tb\u{85}c\u{7f}\u{9b}"}))
            .unwrap_or_default();
        let escaped = raw_controls_escaped(&json);
        assert!(
            !escaped.chars().any(|c| c.is_control() && c != '\n'),
            "{escaped}"
        );
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap_or_default();
        assert_eq!(back["s"], "a\tb\u{85}c\u{7f}\u{9b}");
    }
}
