//! `bulkhead token` and `bulkhead keys`: opaque session tokens and API keys
//! (T12). Secrets are printed once on stdout and stored only as SHA-256;
//! listing never shows them; every change is audited.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use bulkhead_store::AuditEvent;
use bulkhead_store::credentials::{self, CredentialBackend, Kind, Listed};
use clap::Subcommand;

use crate::Target;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a session token for a subject; printed once.
    #[command(
        after_help = "Example:\n  bulkhead token issue my-app --subject ada --scopes conference:register --ttl 15m"
    )]
    Issue {
        #[command(flatten)]
        target: Target,
        /// Who the token stands for (handed to functions as bulkhead-subject).
        #[arg(long)]
        subject: String,
        /// Comma-separated scopes the token grants.
        #[arg(long, value_delimiter = ',', default_value = "")]
        scopes: Vec<String>,
        /// How long it lives (at most 24h).
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
    /// List session tokens (never their values).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a session token by id (from `list`); refused at once after.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// The token's id, as `list` shows it.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create an API key; printed once.
    #[command(
        after_help = "Example:\n  bulkhead keys create my-app --subject ci-bot --scopes deploy:read --label \"CI\" --ttl 90d"
    )]
    Create {
        #[command(flatten)]
        target: Target,
        /// Who the key stands for (handed to functions as bulkhead-subject).
        #[arg(long)]
        subject: String,
        /// Comma-separated scopes the key grants.
        #[arg(long, value_delimiter = ',', default_value = "")]
        scopes: Vec<String>,
        /// A note to recognise it by in `list`.
        #[arg(long)]
        label: Option<String>,
        /// How long it lives (at most 365d).
        #[arg(long, default_value = "90d")]
        ttl: String,
    },
    /// List API keys (never their values).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Revoke an API key by id (from `list`).
    Revoke {
        #[command(flatten)]
        target: Target,
        id: String,
    },
}

const DAY_MS: i64 = 24 * 3600 * 1000;

pub fn run_token(command: TokenCommand) -> Result<ExitCode> {
    match command {
        TokenCommand::Issue {
            target,
            subject,
            scopes,
            ttl,
        } => issue_session(&target, &subject, &scopes, &ttl),
        TokenCommand::List { target } => list(&target, Kind::Session),
        TokenCommand::Revoke { target, id } => revoke(&target, Kind::Session, &id),
    }
}

/// Issue a session token for `subject` (printed once on stdout).
pub fn issue_session(
    target: &Target,
    subject: &str,
    scopes: &[String],
    ttl: &str,
) -> Result<ExitCode> {
    issue(target, Kind::Session, subject, scopes, ttl, DAY_MS, None)
}

pub fn run_keys(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Create {
            target,
            subject,
            scopes,
            label,
            ttl,
        } => issue(
            &target,
            Kind::ApiKey,
            &subject,
            &scopes,
            &ttl,
            365 * DAY_MS,
            label.as_deref(),
        ),
        KeysCommand::List { target } => list(&target, Kind::ApiKey),
        KeysCommand::Revoke { target, id } => revoke(&target, Kind::ApiKey, &id),
    }
}

fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Session => "session token",
        Kind::ApiKey => "API key",
    }
}

fn issue(
    target: &Target,
    kind: Kind,
    subject: &str,
    scopes: &[String],
    ttl: &str,
    max_ms: i64,
    label: Option<&str>,
) -> Result<ExitCode> {
    let ttl_ms = humantime::parse_duration(ttl)
        .with_context(|| format!("--ttl `{ttl}` is not a duration like 15m, 1h or 90d"))
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))?;
    if ttl_ms <= 0 || ttl_ms > max_ms {
        bail!(
            "--ttl must be positive and at most {}d for a {}",
            max_ms / DAY_MS,
            noun(kind)
        );
    }
    let valid =
        |s: &str| !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_graphic());
    if !valid(subject) {
        bail!(
            "the subject (`--subject`, or `--as` for `dev login`) must be 1 to 256 printable ASCII characters without spaces"
        );
    }
    let scopes: Vec<String> = scopes.iter().filter(|s| !s.is_empty()).cloned().collect();
    if let Some(bad) = scopes.iter().find(|s| !valid(s)) {
        bail!("scope `{bad}` must be printable ASCII without spaces");
    }
    // Issue 16: on PostgreSQL the hash goes to the table every node
    // checks, the record to this node's trail.
    let state = target.state(true)?;
    let store = state.store().clone();
    let shared = state.shared_credentials();
    let kind_name = match kind {
        Kind::Session => "token.issued",
        Kind::ApiKey => "key.created",
    };
    // T09 (issue 19): the credential and its record commit together.
    let (id, secret) = store.change_audited(|tx| {
        let backend: &dyn CredentialBackend = match &shared {
            Some(shared) => &**shared,
            None => tx,
        };
        let (id, secret) = credentials::issue(backend, kind, subject, &scopes, ttl_ms, label)?;
        let event = AuditEvent::new(kind_name)
            .subject(subject)
            .detail("id", id.as_str())
            .detail("scopes", scopes.join(" "))
            .detail("ttl_ms", ttl_ms);
        anyhow::Ok(((id, secret), vec![event]))
    })?;
    eprintln!(
        "{} {id} issued for `{subject}` (expires in {ttl}); it is shown once, keep it secret:",
        noun(kind)
    );
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}

fn list(target: &Target, kind: Kind) -> Result<ExitCode> {
    let state = target.state(false)?;
    let now = bulkhead_store::now_ms();
    println!(
        "{:<14}  {:<24}  {:<10}  {:<30}  LABEL",
        "ID", "SUBJECT", "STATE", "SCOPES"
    );
    let entries: Vec<Listed> = state.credentials().list(kind)?;
    for entry in &entries {
        let state = if entry.revoked_ms.is_some() {
            "revoked"
        } else if entry.expires_ms <= now {
            "expired"
        } else {
            "active"
        };
        println!(
            "{:<14}  {:<24}  {:<10}  {:<30}  {}",
            entry.id,
            entry.subject.escape_debug(),
            state,
            entry.scopes.join(" ").escape_debug(),
            entry.label.as_deref().unwrap_or("").escape_debug()
        );
    }
    eprintln!("{} {}(s)", entries.len(), noun(kind));
    Ok(ExitCode::SUCCESS)
}

fn revoke(target: &Target, kind: Kind, id: &str) -> Result<ExitCode> {
    let state = target.state(false)?;
    let store = state.store().clone();
    let shared = state.shared_credentials();
    let kind_name = match kind {
        Kind::Session => "token.revoked",
        Kind::ApiKey => "key.revoked",
    };
    // T09 (issue 19): the revocation and its record commit together (on
    // PostgreSQL, issue 16: the revocation first, then its record here).
    store.change_audited(|tx| {
        let backend: &dyn CredentialBackend = match &shared {
            Some(shared) => &**shared,
            None => tx,
        };
        if !backend.revoke(kind, id, bulkhead_store::now_ms())? {
            bail!("no active {} with id `{id}`; see `list`", noun(kind));
        }
        Ok(((), vec![AuditEvent::new(kind_name).detail("id", id)]))
    })?;
    eprintln!("{} {id} revoked", noun(kind));
    Ok(ExitCode::SUCCESS)
}
