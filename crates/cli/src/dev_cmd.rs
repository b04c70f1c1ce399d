//! `bulkhead dev login`: a development identity (issue 15, T11, T12). It
//! mints a short-lived session token for a named test user, with every
//! scope the app's functions ask for, into the app's `dev` state only.
//!
//! A session lives in the state of one environment (`.bulkhead/dev/`), and
//! nothing else trusts it: `staging` and `prod` have their own state, so a
//! dev identity cannot sign anyone in there, and there is no dev issuer key
//! for them to refuse. The command itself has no `--env`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use bulkhead_manifest::auth::Access;
use clap::Subcommand;

use crate::{DEFAULT_ENV, Target, credentials_cmd};

/// The longest a dev identity lives.
const MAX_TTL: &str = "1h";

#[derive(Subcommand)]
pub enum DevCommand {
    /// Sign in as a test user in `dev`: print a session token holding every
    /// scope the app's functions ask for. Never for staging or prod.
    #[command(after_help = "Examples:\n  \
        TOKEN=$(bulkhead dev login examples/conference --as ada)\n  \
        curl -H \"authorization: Bearer $TOKEN\" http://127.0.0.1:8080/badge\n\n\
        The token is a session (`bulkhead token list` shows it, `bulkhead token revoke` ends it) \
        in the app's dev state (.bulkhead/dev/), which no other environment reads. \
        Functions see it as bulkhead-subject NAME with bulkhead-credential session; \
        key-value stores and the audit trail name the caller session:NAME.")]
    Login {
        /// The app directory, holding bulkhead.toml.
        app_dir: PathBuf,
        /// The test user's name (1 to 256 printable ASCII characters).
        #[arg(long = "as", value_name = "NAME")]
        name: String,
        /// How long the token lives (at most 1h).
        #[arg(long, default_value = "15m")]
        ttl: String,
    },
}

pub fn run(command: DevCommand) -> Result<ExitCode> {
    match command {
        DevCommand::Login { app_dir, name, ttl } => login(app_dir, &name, &ttl),
    }
}

fn login(app_dir: PathBuf, name: &str, ttl: &str) -> Result<ExitCode> {
    let target = Target {
        app_dir,
        env: DEFAULT_ENV.to_string(),
    };
    let app = match crate::load_manifest(&target) {
        Ok(app) => app,
        Err(problems) => return Ok(crate::report(&problems)),
    };
    let within = humantime::parse_duration(ttl).ok();
    let max = humantime::parse_duration(MAX_TTL).ok();
    if within.is_none() || within > max {
        bail!(
            "--ttl `{ttl}` must be a duration of at most {MAX_TTL}, like 15m: a dev identity is short-lived"
        );
    }
    // Every scope any function asks for: the test user can call them all.
    let scopes: BTreeSet<String> = app
        .functions
        .iter()
        .filter_map(|f| match &f.access {
            Access::Authenticated { scopes, .. } => Some(scopes.iter().cloned()),
            Access::Public => None,
        })
        .flatten()
        .collect();
    let scopes: Vec<String> = scopes.into_iter().collect();
    // The name is printed only once `issue_session` has checked it (visible
    // ASCII): never raw to the terminal (outside review).
    let code = credentials_cmd::issue_session(&target, name, &scopes, ttl)?;
    eprintln!(
        "dev identity `session:{name}` with scopes [{}], for `{}` in dev only",
        scopes.join(" "),
        app.name
    );
    Ok(code)
}
