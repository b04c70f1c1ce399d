//! `bulkhead admin`: tokens for the admin listener.

use std::process::ExitCode;

use anyhow::Result;
use bulkhead_store::AuditEvent;
use bulkhead_store::credentials::CredentialBackend;
use clap::Subcommand;

use crate::Target;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create an admin token; it is printed once and stored only as a hash.
    #[command(
        long_about = "Create a 256-bit admin token for the admin listener (/metrics, /healthz, \
                      /readyz). It is printed once on stdout and stored only as a SHA-256 hash; \
                      send it as `Authorization: Bearer TOKEN`. Outside `dev` on loopback the \
                      admin listener does not start without one.",
        after_help = "Example:\n  bulkhead admin token my-app --env prod > admin-token && chmod 600 admin-token"
    )]
    Token {
        #[command(flatten)]
        target: Target,
    },
    /// Revoke every admin token of an environment.
    RevokeTokens {
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(command: AdminCommand) -> Result<ExitCode> {
    match command {
        AdminCommand::Token { target } => {
            // Issue 16: on PostgreSQL the hash goes where every node reads.
            let state = target.state(true)?;
            let store = state.store().clone();
            let shared = state.shared_credentials();
            // T09 (issue 19): the token and its record commit together.
            let token = store.change_audited(|tx| {
                let backend: &dyn CredentialBackend = match &shared {
                    Some(shared) => &**shared,
                    None => tx,
                };
                let token = bulkhead_store::tokens::create_admin_token(backend)?;
                let event =
                    AuditEvent::new("admin.token_created").detail("token_id", token.id.as_str());
                anyhow::Ok((token, vec![event]))
            })?;
            eprintln!(
                "admin token {} created for `{}`; it is shown once, keep it secret:",
                token.id, target.env
            );
            println!("{}", token.secret);
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::RevokeTokens { target } => {
            let state = target.state(false)?;
            let store = state.store().clone();
            let shared = state.shared_credentials();
            let revoked = store.change_audited(|tx| {
                let backend: &dyn CredentialBackend = match &shared {
                    Some(shared) => &**shared,
                    None => tx,
                };
                let revoked = backend.revoke_admin_tokens()?;
                let event = AuditEvent::new("admin.tokens_revoked").detail("count", revoked);
                anyhow::Ok((revoked, vec![event]))
            })?;
            eprintln!("revoked {revoked} admin token(s) of `{}`", target.env);
            Ok(ExitCode::SUCCESS)
        }
    }
}
