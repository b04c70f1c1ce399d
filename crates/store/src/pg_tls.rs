//! TLS to PostgreSQL (issue 16, T15): rustls on aws-lc-rs behind
//! tokio-postgres's `MakeTlsConnect`, so the database URL's
//! `sslmode=require` or `sslmode=verify-full` encrypts and **verifies**
//! the server: its certificate must chain to `sslrootcert` (a PEM file)
//! or, without one, to the public web roots, and name the host the URL
//! connects to. Unlike libpq, `require` never means "encrypt but trust
//! anyone": a database that cannot prove its name is refused.
//! `verify-ca` (a chain without the name) is refused as weaker. With
//! `sslcert` and `sslkey` the node proves itself too (a client
//! certificate, for `cert` authentication or `clientcert=verify-full` in
//! the server's `pg_hba.conf`); like libpq, a key file that its group or
//! others may read is refused. This file
//! is only the adapter (the same shape as the `tokio-postgres-rustls`
//! crate); the TLS is rustls.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::pg::PgError;

/// The node's own certificate: the PEM files `sslcert` (the chain, leaf
/// first) and `sslkey` (its private key) name.
#[derive(Debug, Clone, Copy)]
pub struct ClientCert<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl ClientCert<'_> {
    /// The chain and the key, read; the key file must be the owner's only.
    fn load(
        self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        PgError,
    > {
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| PgError(format!("cannot read sslcert: {e}")))?;
        if chain.is_empty() {
            return Err(PgError("sslcert holds no certificate".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(self.key)
                .map_err(|e| PgError(format!("cannot read sslkey: {e}")))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(PgError(format!(
                    "sslkey {} may be read by its group or others (mode {:o}); make it the owner's only: chmod 600",
                    self.key.display(),
                    mode & 0o777
                )));
            }
        }
        // The parser's errors name the PEM section, never its bytes.
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(self.key)
            .map_err(|e| PgError(format!("cannot read sslkey: {e}")))?;
        Ok((chain, key))
    }
}

/// Makes a verifying TLS session per connection.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustlsConnect {
    /// Trusting the certificates in the PEM file `root` (`sslrootcert`),
    /// or the public web roots; presenting `client` when there is one.
    pub fn new(root: Option<&Path>, client: Option<ClientCert<'_>>) -> Result<Self, PgError> {
        let mut roots = rustls::RootCertStore::empty();
        match root {
            Some(path) => {
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| PgError(format!("cannot read sslrootcert: {e}")))?;
                for cert in certs {
                    let cert =
                        cert.map_err(|e| PgError(format!("cannot read sslrootcert: {e}")))?;
                    roots.add(cert).map_err(|e| {
                        PgError(format!("sslrootcert holds a bad certificate: {e}"))
                    })?;
                }
                if roots.is_empty() {
                    return Err(PgError("sslrootcert holds no certificate".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(PgError::of)?
            .with_root_certificates(roots);
        let config = match client {
            Some(client) => {
                let (chain, key) = client.load()?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    PgError(format!(
                        "sslcert and sslkey do not make a client certificate: {e}"
                    ))
                })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            name: ServerName::try_from(host.to_string())?,
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
        })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::pin(stream)))
        })
    }
}

/// A TLS session over a PostgreSQL connection.
pub struct RustlsStream<S>(Pin<Box<tokio_rustls::client::TlsStream<S>>>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }
}
