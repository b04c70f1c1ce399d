//! `bulkhead secrets`: values functions read through `wasi:config` when
//! their grants name them (T14). A value is read from stdin or a file,
//! never from the command line (argv is visible to every user of the
//! machine and lands in shell history); it is stored sealed under the
//! environment's master key; `list` shows names and versions only; every
//! change is audited by name.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use bulkhead_manifest::stores::valid_resource_name;
use bulkhead_store::AuditEvent;
use bulkhead_store::secrets::{MAX_SECRET_BYTES, SecretBackend, Secrets};
use clap::Subcommand;
use zeroize::Zeroizing;

use crate::Target;

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Create a secret; the value is read from stdin (or --from-file).
    #[command(
        long_about = "Create the secret NAME for the app's environment. The value is read from \
                      standard input (or from --from-file), never from the command line; one \
                      trailing newline is dropped. It is stored encrypted under the environment's \
                      master key (BULKHEAD_MASTER_KEY_FILE; in `dev` a generated \
                      .bulkhead/dev/master.key). A function reads it through wasi:config only if \
                      its grants list it: grants = { secrets = [\"NAME\"] }. Refused if NAME exists: \
                      use `rotate` to replace a value.",
        after_help = "Examples:\n  printf '%s' \"$STRIPE_KEY\" | bulkhead secrets set my-app stripe_key --env prod\n  bulkhead secrets set my-app tls_pass --from-file /run/keys/tls_pass"
    )]
    Set {
        #[command(flatten)]
        target: Target,
        /// The secret's name: a lowercase letter, then up to 63 lowercase
        /// letters, digits, `_` or `-`.
        name: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// List secrets: names, versions and times, never values.
    #[command(after_help = "Example:\n  bulkhead secrets list my-app --env prod")]
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Replace a secret's value (stdin or --from-file); the version goes up
    /// and the old value is deleted, not kept.
    #[command(
        long_about = "Replace the value of the existing secret NAME, read from standard input (or \
                      --from-file). The version number goes up by one; the old value is deleted, \
                      not kept, so a leaked old value cannot be read back from the store. Calls \
                      that start after the rotation read the new value.",
        after_help = "Example:\n  bulkhead secrets rotate my-app stripe_key --env prod < new-key.txt"
    )]
    Rotate {
        #[command(flatten)]
        target: Target,
        /// The existing secret's name, as `list` shows it.
        name: String,
        /// Read the new value from this file instead of stdin.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// Delete a secret; functions granted it then read nothing.
    #[command(after_help = "Example:\n  bulkhead secrets rm my-app stripe_key --env prod")]
    Rm {
        #[command(flatten)]
        target: Target,
        /// The secret's name, as `list` shows it.
        name: String,
    },
}

pub fn run(command: SecretsCommand) -> Result<ExitCode> {
    match command {
        SecretsCommand::Set {
            target,
            name,
            from_file,
        } => write(&target, &name, from_file, false),
        SecretsCommand::Rotate {
            target,
            name,
            from_file,
        } => write(&target, &name, from_file, true),
        SecretsCommand::List { target } => list(&target),
        SecretsCommand::Rm { target, name } => remove(&target, &name),
    }
}

fn check_name(name: &str) -> Result<()> {
    if !valid_resource_name(name) {
        bail!(
            "a secret name must start with a lowercase letter and hold at most 64 lowercase letters, digits, `_` or `-`"
        );
    }
    Ok(())
}

/// The value from `file` or stdin, without one trailing newline.
fn read_value(file: Option<PathBuf>) -> Result<Zeroizing<Vec<u8>>> {
    let mut value = Zeroizing::new(Vec::new());
    match file {
        Some(path) => {
            let mut file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            file.by_ref()
                .take(MAX_SECRET_BYTES as u64 + 2)
                .read_to_end(&mut value)
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("type the value, then press Enter and Ctrl-D:");
            }
            stdin
                .lock()
                .take(MAX_SECRET_BYTES as u64 + 2)
                .read_to_end(&mut value)
                .context("cannot read the value from stdin")?;
        }
    }
    let trailing = if value.ends_with(b"\r\n") {
        2
    } else {
        usize::from(value.ends_with(b"\n"))
    };
    let keep = value.len() - trailing;
    value.truncate(keep);
    if value.is_empty() {
        bail!("the value is empty; pipe it on stdin or use --from-file PATH");
    }
    Ok(value)
}

fn write(target: &Target, name: &str, file: Option<PathBuf>, rotate: bool) -> Result<ExitCode> {
    check_name(name)?;
    // Issue 16: on PostgreSQL the sealed value goes to the table every
    // node reads, its record to this node's trail.
    let state = target.state(true)?;
    let store = state.store().clone();
    let shared = state.shared_secrets();
    let keyring = state.keyring(&target.env)?;
    let value = read_value(file)?;
    let secrets = Secrets::new(Arc::new(keyring));
    let kind = if rotate {
        "secret.rotated"
    } else {
        "secret.set"
    };
    // T09 (issue 19): the new value and its record commit together.
    let version = store.change_audited(|tx| {
        let backend: &dyn SecretBackend = match &shared {
            Some(shared) => &**shared,
            None => tx,
        };
        let version = if rotate {
            secrets.rotate(backend, name, &value)?
        } else {
            secrets.set(backend, name, &value)?
        };
        let event = AuditEvent::new(kind)
            .detail("name", name)
            .detail("version", version);
        anyhow::Ok((version, vec![event]))
    })?;
    eprintln!("secret `{name}` stored, version {version}");
    Ok(ExitCode::SUCCESS)
}

fn list(target: &Target) -> Result<ExitCode> {
    let state = target.state(false)?;
    let listed = Secrets::list(&*state.secrets()?)?;
    if listed.is_empty() {
        eprintln!("no secrets in environment `{}`", target.env);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<32} {:>7}  {:<24} updated", "name", "version", "created");
    for info in listed {
        println!(
            "{:<32} {:>7}  {:<24} {}",
            info.name,
            info.version,
            time(info.created_ms),
            time(info.updated_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn time(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn remove(target: &Target, name: &str) -> Result<ExitCode> {
    check_name(name)?;
    let state = target.state(false)?;
    let store = state.store().clone();
    let shared = state.shared_secrets();
    // T09 (issue 19): the deletion and its record commit together (on
    // PostgreSQL, issue 16: the deletion first, then its record here).
    store.change_audited(|tx| {
        tx.pragma_update(None, "secure_delete", "ON")?;
        let backend: &dyn SecretBackend = match &shared {
            Some(shared) => &**shared,
            None => tx,
        };
        if !Secrets::remove(backend, name)? {
            bail!("there is no secret `{name}`; `bulkhead secrets list` shows the names");
        }
        Ok((
            (),
            vec![AuditEvent::new("secret.removed").detail("name", name)],
        ))
    })?;
    eprintln!("secret `{name}` removed");
    Ok(ExitCode::SUCCESS)
}
