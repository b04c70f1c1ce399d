//! `bulkhead tls`: a development certificate (T15), and the rule `serve`
//! keeps: plain HTTP only on loopback, outside `dev`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use bulkhead_manifest::App;
use clap::Subcommand;

use crate::Target;

/// Where `self-signed` writes, relative to the app directory.
const DEV_TLS_DIR: &str = ".bulkhead/dev/tls";

#[derive(Subcommand)]
pub enum TlsCommand {
    /// Write a self-signed certificate and key for development.
    #[command(
        name = "self-signed",
        long_about = "Write a self-signed certificate for `localhost`, 127.0.0.1 and ::1, and \
                      its private key, into APP_DIR/.bulkhead/dev/tls/ (cert.pem, and key.pem \
                      readable by you only, each written whole), then print the `[tls]` lines to \
                      add to bulkhead.toml. The key is never printed. For `dev` only: other \
                      environments need a certificate from a CA their clients trust, and strict \
                      `prod` refuses this one (its subject says it is a development certificate). \
                      Valid for 90 days from now. An existing pair is kept unless `--force` \
                      replaces it; a running server loads the new one within seconds.",
        after_help = "Example:\n  bulkhead tls self-signed examples/hello\n  \
                      curl --cacert examples/hello/.bulkhead/dev/tls/cert.pem https://localhost:8080/hello"
    )]
    SelfSigned {
        #[command(flatten)]
        target: Target,
        /// Replace an existing cert.pem / key.pem.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(command: TlsCommand) -> Result<ExitCode> {
    match command {
        TlsCommand::SelfSigned { target, force } => self_signed(&target, force),
    }
}

fn self_signed(target: &Target, force: bool) -> Result<ExitCode> {
    if target.env != bulkhead_manifest::DEFAULT_ENV {
        bail!(
            "a self-signed certificate is for `dev` only, not `{}`: put a certificate from a CA your clients trust in `[env.{}.tls]` (`cert`, `key`)",
            target.env,
            target.env
        );
    }
    if !target
        .app_dir
        .join(bulkhead_manifest::MANIFEST_FILE)
        .is_file()
    {
        bail!(
            "{} has no {}; give the app directory",
            target.app_dir.display(),
            bulkhead_manifest::MANIFEST_FILE
        );
    }
    let dir = target.app_dir.join(DEV_TLS_DIR);
    bulkhead_store::files::create_private_dir(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    // Finding 13 of the issue 14 review (T15): never overwrite a pair
    // silently, a key someone relies on included.
    if !force && let Some(existing) = [&cert_path, &key_path].into_iter().find(|p| p.exists()) {
        bail!(
            "{} exists already; keep it, or pass `--force` to replace the pair: `bulkhead tls self-signed {} --force`",
            existing.display(),
            target.app_dir.display()
        );
    }
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .context("cannot prepare the certificate")?;
    // The subject marks it (T15, T19): strict `prod` refuses a certificate
    // with this organisation.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.distinguished_name.push(
        rcgen::DnType::OrganizationName,
        bulkhead_manifest::tls::DEV_CERT_ORGANIZATION,
    );
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs()
        / 86_400;
    let (y, m, d) = date_of(today);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = date_of(today + DEV_CERT_DAYS);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let signing_key = rcgen::KeyPair::generate().context("cannot generate the key")?;
    let cert = params
        .self_signed(&signing_key)
        .context("cannot generate the certificate")?;
    let key = zeroize::Zeroizing::new(signing_key.serialize_pem());
    // The key first: a certificate never sits beside a key it does not fit
    // for longer than the two renames.
    bulkhead_store::files::write_private(&key_path, &[key.as_bytes()])
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    bulkhead_store::files::write_atomically(&cert_path, &[cert.pem().as_bytes()], 0o644)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    eprintln!(
        "wrote {} and {} (key readable by you only)",
        cert_path.display(),
        key_path.display()
    );
    println!("[tls]\ncert = \"{DEV_TLS_DIR}/cert.pem\"\nkey = \"{DEV_TLS_DIR}/key.pem\"");
    Ok(ExitCode::SUCCESS)
}

/// How long `self-signed` certificates last.
const DEV_CERT_DAYS: u64 = 90;

/// Midnight UTC of the day `days` after 1970-01-01 (civil calendar, after
/// Howard Hinnant's `civil_from_days`).
fn date_of(days: u64) -> (i32, u8, u8) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

/// Plain HTTP is served only on loopback, unless in `dev` (T15): a
/// non-loopback `--listen` needs `[tls]` with a certificate; a proxy that
/// terminates TLS (`terminated_upstream`) forwards to a loopback address.
pub fn listener_policy(app: &App, listen: SocketAddr) -> Result<(), String> {
    let terminates = app.tls.as_ref().and_then(|t| t.listener()).is_some();
    if terminates || listen.ip().is_loopback() || app.is_dev() {
        return Ok(());
    }
    let manifest = app.manifest_path.display();
    let fix = if app.tls.is_some() {
        "`terminated_upstream` says a proxy on this machine terminates TLS: listen on loopback (like `--listen 127.0.0.1:8080`) and let the proxy forward there"
    } else {
        "add `[tls]` with `cert` and `key` (PEM) to the manifest, or listen on loopback (like `--listen 127.0.0.1:8080`) behind a TLS-terminating proxy and say so with `[tls] terminated_upstream = \"REASON\"`"
    };
    Err(format!(
        "{manifest}: `--listen {listen}` would serve plain HTTP beyond this machine in `{}`; {fix}",
        app.env
    ))
}
