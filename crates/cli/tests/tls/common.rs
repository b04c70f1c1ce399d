//! TLS test support (T15): certificate authorities and pairs made with
//! rcgen, written into an app directory, and a real rustls client (on the
//! aws-lc-rs provider) that speaks HTTP/1.1 or HTTP/2 through hyper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::Reply;

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    pub pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pair {
        self.leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate naming `name`.
    pub fn client(&self, name: &str) -> Pair {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            // The chain, leaf first: what `[tls] cert` takes.
            cert_pem: format!("{}{}", cert.pem(), self.pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Write a pair where `[tls]` of [`TLS_SECTION`] looks for it, key 0600,
/// each file whole (a temp file renamed), as a rotation would.
pub fn install(app_dir: &Path, pair: &Pair) {
    use std::os::unix::fs::PermissionsExt;
    let dir = app_dir.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, mode) in [
        ("key.pem", &pair.key_pem, 0o600),
        ("cert.pem", &pair.cert_pem, 0o644),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

pub const TLS_SECTION: &str = "\n[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n";

/// A client trusting `roots`, offering `alpn`, with a client certificate
/// if given. TLS 1.2 and 1.3, as rustls does by default.
pub fn client(roots: &[&Ca], identity: Option<&Pair>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for ca in roots {
        store.add(ca.der.clone()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let mut config = match identity {
        Some(pair) => {
            let chain: Vec<CertificateDer<'static>> = vec![pair.der.clone()];
            let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connect and handshake as `localhost`.
pub async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// The leaf certificate the server showed on this connection.
pub fn server_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP connection over TLS: HTTP/2 when ALPN chose it.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    pub async fn over(stream: TlsStream<TcpStream>) -> Result<Self, String> {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = hyper_util::rt::TokioIo::new(stream);
        if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            Ok(Self::H2(sender))
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            Ok(Self::H1(sender))
        }
    }

    pub async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<Self, String> {
        let stream = connect(addr, config).await.map_err(|e| e.to_string())?;
        Self::over(stream).await
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }

    /// Send `request` (its URI a path; the authority is added for HTTP/2,
    /// the Host header for HTTP/1.1, both `localhost:PORT`).
    pub async fn send(
        &mut self,
        port: u16,
        mut request: http::Request<Full<Bytes>>,
    ) -> Result<Reply, String> {
        let authority = format!("localhost:{port}");
        let response = match self {
            Self::H1(sender) => {
                if !request.headers().contains_key("host") {
                    request
                        .headers_mut()
                        .insert("host", authority.parse().unwrap());
                }
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            Self::H2(sender) => {
                let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                *request.uri_mut() = format!("https://{authority}{path}").parse().unwrap();
                *request.version_mut() = http::Version::HTTP_2;
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, port: u16, path: &str) -> Result<Reply, String> {
        let request = http::Request::get(path)
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(port, request).await
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
