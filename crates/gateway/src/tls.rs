//! TLS on the public listener (T15): rustls on the aws-lc-rs provider only,
//! TLS 1.2 and 1.3 with rustls' default (AEAD, ECDHE) suites, ALPN `h2`
//! and `http/1.1`, optional client certificates verified against
//! `[tls] client_ca` (mTLS), and the certificate and key reloaded when
//! their files change, without dropping a connection.
//!
//! Reload: a background task reads both files every [`POLL`]; when their
//! SHA-256 (over contents, mode and ctime, so a `chmod` counts) changes, the new pair is parsed and checked (the key must match
//! the certificate) and swapped into [`Reloading`], which every new
//! handshake asks. A pair that does not load keeps the old one, logged and
//! audited; open connections keep the key they were made with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bulkhead_manifest::TlsListener;
use bulkhead_store::{AuditEvent, AuditLog};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How often the certificate and key files are read for a change.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// ALPN protocol IDs, most preferred first.
const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// Why a certificate, key or CA cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` holds no PEM certificate; write the chain as PEM, leaf first")]
    NoCertificate { path: PathBuf },
    #[error("`{path}` is not a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    BadKey { path: PathBuf },
    #[error(
        "the key `{key}` does not fit the certificate `{cert}` ({reason}); write a matching pair"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the client CA `{path}` cannot verify client certificates ({reason})")]
    ClientCa { path: PathBuf, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("{0}")]
    KeyMode(String),
}

/// The provider every TLS configuration uses: aws-lc-rs, never a second.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The files of one pair as read, and what they hash to.
struct Read {
    cert: Vec<u8>,
    key: zeroize::Zeroizing<Vec<u8>>,
    hash: [u8; 32],
}

/// A PEM file, bounded (T15, T18): a device, FIFO or file over 1 MiB is
/// refused, not read forever.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    bulkhead_manifest::files::read_bounded(path, bulkhead_manifest::files::MAX_TEXT_BYTES).map_err(
        |source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        },
    )
}

fn read_pair(settings: &TlsListener) -> Result<Read, TlsError> {
    let cert = read(&settings.cert)?;
    let key = zeroize::Zeroizing::new(read(&settings.key)?);
    let mut hash = Sha256::new();
    hash.update((cert.len() as u64).to_be_bytes());
    hash.update(&cert);
    hash.update(&key[..]);
    // T15: the files' mode and ctime too, so the `chmod 600` a refused
    // key's message asks for is itself a change, and the pair is tried again.
    for path in [&settings.cert, &settings.key] {
        hash.update(stat_fingerprint(path));
    }
    Ok(Read {
        cert,
        key,
        hash: hash.finalize().into(),
    })
}

/// Mode and ctime of `path` (followed, as it is read); zeros if it cannot
/// be stat'ed (the read just before would have failed).
fn stat_fingerprint(path: &Path) -> [u8; 20] {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = [0u8; 20];
    if let Ok(meta) = std::fs::metadata(path) {
        out[..4].copy_from_slice(&meta.mode().to_be_bytes());
        out[4..12].copy_from_slice(&meta.ctime().to_be_bytes());
        out[12..20].copy_from_slice(&meta.ctime_nsec().to_be_bytes());
    }
    out
}

/// Parse and check one pair: a chain, a key, and the key the chain's.
fn certified(settings: &TlsListener, read: &Read) -> Result<CertifiedKey, TlsError> {
    bulkhead_manifest::tls::check_key_private(&settings.key).map_err(TlsError::KeyMode)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read.cert)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: settings.cert.clone(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: settings.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&read.key).map_err(|_| TlsError::BadKey {
        path: settings.key.clone(),
    })?;
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        cert: settings.cert.clone(),
        key: settings.key.clone(),
        reason: e.to_string(),
    };
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| TlsError::BadKey {
            path: settings.key.clone(),
        })?;
    let certified = CertifiedKey::new(chain, key);
    // Proven, not assumed: an unknown consistency is refused too.
    certified.keys_match().map_err(mismatch)?;
    Ok(certified)
}

/// The certificate new handshakes get: swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloading {
    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The public listener's TLS: acceptors for it and the admin listener, the
/// reloading certificate, and the HSTS header value.
pub(crate) struct Tls {
    settings: TlsListener,
    resolver: Arc<Reloading>,
    /// Hash of the files the current pair was loaded from (or last refused).
    seen: std::sync::Mutex<[u8; 32]>,
    pub(crate) public: TlsAcceptor,
    /// Client certificates required (`client_ca` set), `http/1.1` only.
    pub(crate) admin: Option<TlsAcceptor>,
    /// `max-age=…` when HSTS is on.
    pub(crate) hsts: Option<http::HeaderValue>,
}

impl Tls {
    /// Load the pair and the client CA now: a server never starts with a
    /// certificate it cannot serve.
    pub(crate) fn new(settings: &TlsListener) -> Result<Self, TlsError> {
        let read = read_pair(settings)?;
        let resolver = Arc::new(Reloading {
            current: RwLock::new(Arc::new(certified(settings, &read)?)),
        });
        let roots = settings
            .client_ca
            .as_deref()
            .map(client_roots)
            .transpose()?;
        let public = config(
            resolver.clone(),
            roots.clone(),
            false,
            &[H2, HTTP11],
            settings,
        )?;
        let admin = roots
            .map(|roots| config(resolver.clone(), Some(roots), true, &[HTTP11], settings))
            .transpose()?;
        let hsts = settings.hsts.and_then(|age| {
            http::HeaderValue::from_str(&format!("max-age={}", age.get().as_secs())).ok()
        });
        Ok(Self {
            settings: settings.clone(),
            resolver,
            seen: std::sync::Mutex::new(read.hash),
            public,
            admin,
            hsts,
        })
    }

    /// Read the files again; load a changed pair, or keep the old one
    /// (logged, audited) if the new one does not load.
    pub(crate) fn reload(&self, audit: &AuditLog) {
        let read = match read_pair(&self.settings) {
            Ok(read) => read,
            // Mid-rotation (one file moved, not yet the other): next poll.
            Err(_) => return,
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == read.hash {
            return;
        }
        *seen = read.hash;
        let cert = self.settings.cert.display().to_string();
        match certified(&self.settings, &read) {
            Ok(pair) => {
                self.resolver.set(Arc::new(pair));
                info!(target: "bulkhead::tls", cert = %cert, "certificate reloaded: new handshakes use it");
                audit.record(AuditEvent::new("tls.reloaded").detail("cert", cert));
            }
            Err(error) => {
                warn!(target: "bulkhead::tls", cert = %cert, error = %error, "new certificate or key refused: the previous pair is still served");
                audit.record(
                    AuditEvent::new("tls.reload_refused")
                        .detail("cert", cert)
                        .detail("error", error.to_string()),
                );
            }
        }
    }
}

fn client_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let bad = |reason: String| TlsError::ClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(Arc::new(roots))
}

fn config(
    resolver: Arc<Reloading>,
    roots: Option<Arc<RootCertStore>>,
    require_client_cert: bool,
    alpn: &[&[u8]],
    settings: &TlsListener,
) -> Result<TlsAcceptor, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            // Asked for on the public listener, where a route decides
            // whether it needs one; required on the admin listener.
            let verifier = if require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path: settings.client_ca.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Whether the negotiated protocol is HTTP/2.
pub(crate) fn is_h2(alpn: Option<&[u8]>) -> bool {
    alpn == Some(H2)
}

/// Marks a request that came over a connection whose client certificate
/// was verified against `[tls] client_ca`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VerifiedClientCert;
