//! `[tls]`: encryption in transit on the public listener (T15).
//!
//! Either the gateway terminates TLS itself (`cert` and `key`, optionally
//! `client_ca` for client certificates and `hsts` for the
//! `strict-transport-security` max-age), or the app says why a proxy on the
//! same machine does it (`terminated_upstream = "reason"`): then it may only
//! listen on loopback. The key file must be readable by its owner only, so
//! a checked-in or copied key that other users can read is refused before
//! it is ever served.

use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::problem::Collector;
use crate::raw::RawTls;
use crate::units::Duration;

/// How the public listener is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// The gateway terminates TLS with these files.
    Listener(TlsListener),
    /// A TLS-terminating proxy on this machine forwards to a loopback
    /// listener; the reason is what the manifest says.
    TerminatedUpstream { reason: String },
}

impl Tls {
    /// The gateway's own TLS settings, unless a proxy terminates TLS.
    pub fn listener(&self) -> Option<&TlsListener> {
        match self {
            Tls::Listener(listener) => Some(listener),
            Tls::TerminatedUpstream { .. } => None,
        }
    }
}

/// `[tls] cert`, `key`, `client_ca`, `hsts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); owner-readable only.
    pub key: PathBuf,
    /// PEM CA certificates whose client certificates are verified (mTLS).
    pub client_ca: Option<PathBuf>,
    /// `strict-transport-security: max-age`; `None` when `hsts = "off"` (dev only).
    pub hsts: Option<Duration>,
}

pub mod defaults {
    use crate::units::Duration;

    /// One year, the HSTS preload list's minimum.
    pub const HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 60 * 60);
}

/// The organisation in the subject of every certificate `bulkhead tls
/// self-signed` makes: strict `prod` refuses a certificate carrying it
/// (T15, T19).
pub const DEV_CERT_ORGANIZATION: &str = "Bulkhead development certificate (not for prod)";

/// Whether the PEM file `cert` holds a certificate made by `bulkhead tls
/// self-signed` (its subject names [`DEV_CERT_ORGANIZATION`]). The DER of
/// each `CERTIFICATE` block is searched for the organisation's UTF-8 bytes,
/// which is how an X.509 name encodes it; unreadable files are `false`
/// (the TLS loader refuses them with its own reason).
pub fn is_dev_certificate(cert: &Path) -> bool {
    use base64::Engine as _;
    let Ok(text) = std::fs::read_to_string(cert) else {
        return false;
    };
    let marker = DEV_CERT_ORGANIZATION.as_bytes();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        rest = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let Some(end) = rest.find("-----END CERTIFICATE-----") else {
            return false;
        };
        let body: String = rest[..end].split_whitespace().collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body)
            && der.windows(marker.len()).any(|w| w == marker)
        {
            return true;
        }
        rest = &rest[end..];
    }
    false
}

/// Why `key` may not be served as a private key: it is readable by its
/// group or by others. The message says how to fix it.
pub fn check_key_private(key: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(key)
            .map_err(|e| format!("cannot read the TLS key file `{}`: {e}", key.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "the TLS key file `{}` is readable by other users (mode {:o}); run `chmod 600 {}`",
                key.display(),
                mode & 0o777,
                key.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = key;
    Ok(())
}

pub(crate) fn resolve(
    out: &mut Collector<'_>,
    app_dir: &Path,
    raw: &RawTls,
    dev: bool,
) -> Option<Tls> {
    let before = out.problems.len();
    let files = [
        ("cert", &raw.cert),
        ("key", &raw.key),
        ("client_ca", &raw.client_ca),
    ];
    if let Some(reason) = &raw.terminated_upstream {
        if let Some((key, value)) = files.iter().find_map(|(k, v)| v.as_ref().map(|v| (*k, v))) {
            out.at(
                Some(value.span()),
                format!("`[tls]` sets both `terminated_upstream` and `{key}`; either the gateway terminates TLS (`cert`, `key`) or a proxy does (`terminated_upstream`), not both"),
            );
        }
        if let Some(hsts) = &raw.hsts {
            out.at(
                Some(hsts.span()),
                "`hsts` applies when the gateway terminates TLS; with `terminated_upstream` the proxy sends it, so remove it",
            );
        }
        let text = reason.get_ref().trim();
        if text.is_empty() || text.chars().any(crate::text::is_hidden) {
            out.at(
                Some(reason.span()),
                "`terminated_upstream` must say, in plain text, which proxy terminates TLS, like \"nginx on this host terminates TLS for api.example.com\"",
            );
        }
        return (out.problems.len() == before).then(|| Tls::TerminatedUpstream {
            reason: text.to_string(),
        });
    }
    let (cert, key) = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            let set = [("client_ca", raw.client_ca.as_ref().map(Spanned::span))]
                .into_iter()
                .chain([("hsts", raw.hsts.as_ref().map(Spanned::span))])
                .find_map(|(k, s)| s.map(|s| (k, s)));
            if let Some((key, span)) = set {
                out.at(
                    Some(span),
                    format!("`[tls]` sets `{key}` but no `cert` and `key`; add both, like `cert = \"tls/cert.pem\"` and `key = \"tls/key.pem\"`"),
                );
            }
            return None;
        }
        (Some(cert), None) => {
            out.at(
                Some(cert.span()),
                "`[tls]` has a `cert` but no `key`; add `key = \"PATH\"` (PEM, owner-readable only)",
            );
            return None;
        }
        (None, Some(key)) => {
            out.at(
                Some(key.span()),
                "`[tls]` has a `key` but no `cert`; add `cert = \"PATH\"` (PEM, leaf certificate first)",
            );
            return None;
        }
    };
    let fix = "write the PEM file there, or run `bulkhead tls self-signed APP_DIR` in dev";
    let cert = crate::resolve::app_file(out, app_dir, cert, "`[tls]` cert", fix);
    let key_path = crate::resolve::app_file(out, app_dir, key, "`[tls]` key", fix);
    if let Some(path) = &key_path
        && let Err(why) = check_key_private(path)
    {
        out.at(Some(key.span()), why);
    }
    let client_ca = raw.client_ca.as_ref().and_then(|ca| {
        crate::resolve::app_file(
            out,
            app_dir,
            ca,
            "`[tls]` client_ca",
            "write the PEM file of the CA that issues client certificates there",
        )
    });
    let hsts = match &raw.hsts {
        None => Some(defaults::HSTS_MAX_AGE),
        Some(value) if value.get_ref() == "off" => {
            if !dev {
                out.at(
                    Some(value.span()),
                    "`hsts = \"off\"` is allowed only in `dev`; remove it (default one year) or give a max-age like \"180d\"",
                );
            }
            None
        }
        Some(value) => match value.get_ref().parse::<Duration>() {
            Ok(age) => Some(age),
            Err(why) => {
                out.at(
                    Some(value.span()),
                    format!("`hsts`: {why}, like \"1y\" (or \"off\" in dev)"),
                );
                None
            }
        },
    };
    if out.problems.len() != before {
        return None;
    }
    Some(Tls::Listener(TlsListener {
        cert: cert?,
        key: key_path?,
        client_ca,
        hsts,
    }))
}

/// A function's `client_cert`: `"required"` or `"optional"` (the
/// default); required needs `[tls] client_ca` to verify against.
pub(crate) fn client_cert(
    out: &mut Collector<'_>,
    function: &str,
    value: Option<&Spanned<String>>,
    client_ca: bool,
) -> bool {
    let Some(value) = value else { return false };
    match value.get_ref().as_str() {
        "optional" => false,
        "required" if client_ca => true,
        "required" => {
            out.at(
                Some(value.span()),
                format!("function `{function}`: `client_cert = \"required\"` needs `[tls] client_ca = \"PATH\"`, the CA whose client certificates are trusted"),
            );
            false
        }
        _ => {
            out.at(
                Some(value.span()),
                format!(
                    "function `{function}`: `client_cert` must be \"required\" or \"optional\""
                ),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::{Tls, defaults};
    use crate::{App, parse};

    fn app(dir: &std::path::Path, extra: &str, env: &str) -> Result<App, String> {
        std::fs::write(dir.join("f.wasm"), b"").unwrap();
        let manifest = format!(
            "[app]\nname = \"tls\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\n\n{extra}"
        );
        parse(dir, &dir.join("bulkhead.toml"), &manifest, env).map_err(|e| e.to_string())
    }

    fn pair(dir: &std::path::Path, key_mode: u32) {
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/cert.pem"), "cert").unwrap();
        std::fs::write(dir.join("tls/key.pem"), "key").unwrap();
        std::fs::write(dir.join("tls/ca.pem"), "ca").unwrap();
        std::fs::set_permissions(
            dir.join("tls/key.pem"),
            std::fs::Permissions::from_mode(key_mode),
        )
        .unwrap();
    }

    const FILES: &str = "[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n";

    #[test]
    fn t15_a_pair_turns_tls_on_with_a_year_of_hsts() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path(), 0o600);
        let tls = app(dir.path(), FILES, "prod").unwrap().tls.unwrap();
        let listener = tls.listener().unwrap();
        assert_eq!(listener.cert, dir.path().join("tls/cert.pem"));
        assert_eq!(listener.hsts, Some(defaults::HSTS_MAX_AGE));
        assert!(listener.client_ca.is_none());
        assert!(app(dir.path(), "", "prod").unwrap().tls.is_none());
        let with_ca = format!("{FILES}client_ca = \"tls/ca.pem\"\nhsts = \"180d\"\n");
        let tls = app(dir.path(), &with_ca, "dev").unwrap().tls.unwrap();
        let listener = tls.listener().unwrap();
        assert_eq!(listener.client_ca, Some(dir.path().join("tls/ca.pem")));
        assert_eq!(listener.hsts.unwrap().get().as_secs(), 180 * 86400);
    }

    #[test]
    fn t15_a_key_others_can_read_is_refused_with_the_chmod_fix() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path(), 0o644);
        let err = app(dir.path(), FILES, "dev").unwrap_err();
        assert!(err.contains("bulkhead.toml:11:7"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn t15_hsts_off_only_in_dev_and_overlays_per_env() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path(), 0o600);
        let off = format!("{FILES}hsts = \"off\"\n");
        let dev = app(dir.path(), &off, "dev").unwrap().tls.unwrap();
        assert_eq!(dev.listener().unwrap().hsts, None);
        let err = app(dir.path(), &off, "prod").unwrap_err();
        assert!(err.contains("only in `dev`"), "{err}");
        // TLS only in prod, through the environment's overlay.
        let overlay = "[env.prod.tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n";
        assert!(app(dir.path(), overlay, "dev").unwrap().tls.is_none());
        assert!(app(dir.path(), overlay, "prod").unwrap().tls.is_some());
    }

    #[test]
    fn t15_terminated_upstream_needs_a_reason_and_no_files() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path(), 0o600);
        let upstream = "[tls]\nterminated_upstream = \"nginx on this host\"\n";
        let tls = app(dir.path(), upstream, "prod").unwrap().tls.unwrap();
        assert_eq!(
            tls,
            Tls::TerminatedUpstream {
                reason: "nginx on this host".into()
            }
        );
        assert!(tls.listener().is_none());
        let both = format!("{FILES}terminated_upstream = \"proxy\"\n");
        assert!(
            app(dir.path(), &both, "prod")
                .unwrap_err()
                .contains("not both")
        );
        let empty = "[tls]\nterminated_upstream = \" \"\n";
        assert!(
            app(dir.path(), empty, "prod")
                .unwrap_err()
                .contains("must say")
        );
    }

    #[test]
    fn t15_a_route_requiring_a_client_cert_needs_a_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path(), 0o600);
        let manifest = |tls: &str, value: &str| {
            format!(
                "[app]\nname = \"tls\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\nclient_cert = \"{value}\"\n\n{tls}"
            )
        };
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let load = |text: String| {
            parse(dir.path(), &dir.path().join("bulkhead.toml"), &text, "dev")
                .map_err(|e| e.to_string())
        };
        let with_ca = format!("{FILES}client_ca = \"tls/ca.pem\"\n");
        let app = load(manifest(&with_ca, "required")).unwrap();
        assert!(app.functions[0].client_cert_required);
        let app = load(manifest(&with_ca, "optional")).unwrap();
        assert!(!app.functions[0].client_cert_required);
        let err = load(manifest(FILES, "required")).unwrap_err();
        assert!(err.contains("bulkhead.toml:8:15"), "{err}");
        assert!(err.contains("needs `[tls] client_ca"), "{err}");
        let err = load(manifest(&with_ca, "yes")).unwrap_err();
        assert!(err.contains("must be \"required\" or"), "{err}");
    }

    #[test]
    fn t15_half_a_pair_or_a_missing_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path(), 0o600);
        let err = app(dir.path(), "[tls]\ncert = \"tls/cert.pem\"\n", "dev").unwrap_err();
        assert!(err.contains("bulkhead.toml:10:8"), "{err}");
        assert!(err.contains("no `key`"), "{err}");
        let err = app(
            dir.path(),
            "[tls]\ncert = \"tls/nope.pem\"\nkey = \"tls/key.pem\"\n",
            "dev",
        )
        .unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = app(
            dir.path(),
            "[tls]\ncert = \"../cert.pem\"\nkey = \"tls/key.pem\"\n",
            "dev",
        )
        .unwrap_err();
        assert!(err.contains("inside the app directory"), "{err}");
        let err = app(dir.path(), "[tls]\nclient_ca = \"tls/ca.pem\"\n", "dev").unwrap_err();
        assert!(err.contains("no `cert` and `key`"), "{err}");
        let err = app(dir.path(), &format!("{FILES}ciphers = \"x\"\n"), "dev").unwrap_err();
        assert!(err.contains("unknown field `ciphers`"), "{err}");
    }
}
