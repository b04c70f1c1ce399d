//! `bulkhead deploy`, `bulkhead versions`, `bulkhead rollback` (T19): the
//! client side of live deploys. The admin token is read from a file
//! (`--token-file`, or the file `BULKHEAD_ADMIN_TOKEN_FILE` names), never
//! from argv, and never printed; over https the server is checked against
//! `--cacert`, with an optional client certificate (mTLS).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::bundle;
use crate::versions::Versions;
use crate::{Target, load_app, report};

/// The environment variable naming the admin token's file.
pub const TOKEN_FILE_ENV: &str = "BULKHEAD_ADMIN_TOKEN_FILE";

/// How to reach and authenticate to an admin listener.
#[derive(Args, Clone)]
pub struct Admin {
    /// A file holding the admin token (`bulkhead admin token`); else the
    /// file named by BULKHEAD_ADMIN_TOKEN_FILE; else no token (only `dev`
    /// on loopback, before any token exists, takes that).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// For https: the CA certificate(s) (PEM) that signed the admin
    /// listener's certificate.
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,
    /// For https with mTLS: this client's certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// For https with mTLS: this client's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
}

/// `bulkhead deploy APP_DIR --to URL`.
pub fn deploy(target: &Target, to: &str, admin: &Admin) -> Result<ExitCode> {
    let app = match load_app(target) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    let (archive, index) = bundle::pack(&app).map_err(anyhow::Error::msg)?;
    eprintln!(
        "bundle of `{}`: {} file(s), {} bytes; sending to {to}",
        app.name,
        index.files.len(),
        archive.len()
    );
    let reply = exchange(
        to,
        admin,
        "POST",
        "/deploys",
        Some(("application/x-tar", archive)),
    )?;
    match reply {
        (201, body) => {
            println!(
                "deployed {} ({})",
                body["version"].as_str().unwrap_or("?"),
                to
            );
            print_digests(&body);
            print_cluster(&body);
            Ok(ExitCode::SUCCESS)
        }
        (status, body) => Ok(refused(status, &body)),
    }
}

/// On a cluster (issue 16): whether the version went out to the other
/// nodes.
fn print_cluster(body: &Value) {
    let cluster = &body["cluster"];
    if cluster.is_null() {
        return;
    }
    match cluster["published"].as_i64() {
        Some(seq) => println!(
            "    published to the other nodes (deploy #{seq}); each installs it after its own checks"
        ),
        None => eprintln!(
            "warning: serving on this node only, not published to the other nodes: {}; deploy again once the database answers",
            cluster["error"]
                .as_str()
                .unwrap_or("the database did not take it")
        ),
    }
}

/// `bulkhead versions APP_DIR [--admin URL]`.
pub fn versions(target: &Target, url: Option<&str>, admin: &Admin) -> Result<ExitCode> {
    let listing = match url {
        Some(url) => match exchange(url, admin, "GET", "/deploys", None)? {
            (200, body) => body,
            (status, body) => return Ok(refused(status, &body)),
        },
        None => {
            let state = bulkhead_manifest::state_dir(&target.app_dir, &target.env);
            let versions = Versions::at(&state);
            serde_json::json!({
                "current": versions.current(),
                "versions": versions.list()?,
            })
        }
    };
    let current = listing["current"].as_str().unwrap_or("");
    let list = listing["versions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!(
            "no version kept yet for `{}`; `bulkhead serve` or `bulkhead deploy` makes one",
            target.env
        );
    }
    for version in list {
        let name = version["name"].as_str().unwrap_or("?");
        let created = version["created_ms"]
            .as_i64()
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string()
            })
            .unwrap_or_default();
        println!(
            "{}{name}  {created}  {}  by {}",
            if name == current { "* " } else { "  " },
            version["source"].as_str().unwrap_or(""),
            bulkhead_manifest::text::visible(version["who"].as_str().unwrap_or("")),
        );
        print_digests(&version);
    }
    Ok(ExitCode::SUCCESS)
}

/// `bulkhead rollback APP_DIR --to VERSION [--admin URL]`.
pub fn rollback(
    target: &Target,
    version: &str,
    url: Option<&str>,
    admin: &Admin,
) -> Result<ExitCode> {
    if let Some(url) = url {
        let body = serde_json::to_vec(&serde_json::json!({ "version": version }))?;
        return match exchange(
            url,
            admin,
            "POST",
            "/deploys/rollback",
            Some(("application/json", body)),
        )? {
            (200, body) => {
                println!("rolled back to {}", body["version"].as_str().unwrap_or("?"));
                print_cluster(&body);
                print_digests(&body);
                Ok(ExitCode::SUCCESS)
            }
            (status, body) => Ok(refused(status, &body)),
        };
    }
    if target.env == bulkhead_manifest::DEFAULT_ENV {
        bail!(
            "`dev` serves APP_DIR at every start, so an offline rollback has nothing to change; roll back a running server with `--admin URL`, or use another --env"
        );
    }
    let store = target.store(false)?;
    let versions = Versions::at(store.dir());
    let record = versions.record(version).with_context(|| {
        format!(
            "`bulkhead versions {} --env {}` lists the kept versions",
            target.app_dir.display(),
            target.env
        )
    })?;
    versions.set_current(&record.name)?;
    store.change_audited(|_| {
        let event = bulkhead_store::AuditEvent::new("deploy.rollback")
            .detail("version", record.name.as_str())
            .detail("who", "cli (offline)")
            .detail("functions", serde_json::json!(record.functions))
            .detail("files", serde_json::json!(record.files));
        anyhow::Ok(((), vec![event]))
    })?;
    println!(
        "the next `bulkhead serve --env {}` starts from {}",
        target.env, record.name
    );
    Ok(ExitCode::SUCCESS)
}

fn print_digests(body: &Value) {
    if let Some(functions) = body["functions"].as_object() {
        for (name, digest) in functions {
            println!(
                "    function {}: {}",
                bulkhead_manifest::text::visible(name),
                digest.as_str().unwrap_or("")
            );
        }
    }
}

/// A refusal from the admin listener: its problem, and each reason.
fn refused(status: u16, body: &Value) -> ExitCode {
    let detail = body["detail"].as_str().unwrap_or("no detail");
    let mut problems = vec![format!(
        "the admin listener answered {status}: {}",
        bulkhead_manifest::text::visible(detail)
    )];
    if let Some(list) = body["problems"].as_array() {
        problems.extend(list.iter().filter_map(|p| p.as_str()).map(str::to_string));
    }
    if status == 401 {
        problems.push(format!(
            "pass the admin token's file with --token-file FILE (or set {TOKEN_FILE_ENV}); `bulkhead admin token` makes one"
        ));
    }
    report(&problems)
}

/// The admin token, from the file `--token-file` or the environment names.
fn token(admin: &Admin) -> Result<Option<Zeroizing<String>>> {
    let path = match &admin.token_file {
        Some(path) => path.clone(),
        None => match std::env::var_os(TOKEN_FILE_ENV) {
            Some(path) => PathBuf::from(path),
            None => return Ok(None),
        },
    };
    let text = Zeroizing::new(
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?,
    );
    let token = Zeroizing::new(text.trim().to_string());
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "{} should hold one admin token (as `bulkhead admin token` prints it) and nothing else",
            path.display()
        );
    }
    Ok(Some(token))
}

/// One request to the admin listener at `url`: its status and JSON body.
fn exchange(
    url: &str,
    admin: &Admin,
    method: &str,
    path: &str,
    body: Option<(&'static str, Vec<u8>)>,
) -> Result<(u16, Value)> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL like http://127.0.0.1:9901"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("`{url}` must start with http:// or https://"),
    };
    let host = uri
        .host()
        .with_context(|| format!("`{url}` names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let token = token(admin)?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority);
    if let Some(token) = &token {
        let value = Zeroizing::new(format!("Bearer {}", token.as_str()));
        let mut header =
            http::HeaderValue::from_str(&value).context("the admin token is not valid")?;
        header.set_sensitive(true);
        request = request.header(http::header::AUTHORIZATION, header);
    }
    let (content_type, bytes) = body.unwrap_or(("application/json", Vec::new()));
    if method == "POST" {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    let request = request.body(Full::new(Bytes::from(bytes)))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("cannot connect to {url}; is `bulkhead serve` running with --admin-listen there?"))?;
        let response = if tls {
            let connector = tls_connector(admin)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .with_context(|| format!("`{host}` is not a valid TLS server name"))?;
            let stream = connector
                .connect(name, stream)
                .await
                .with_context(|| format!("TLS with {url} failed; is --cacert the CA that signed its certificate?"))?;
            send(hyper_util::rt::TokioIo::new(stream), request).await?
        } else {
            send(hyper_util::rt::TokioIo::new(stream), request).await?
        };
        Ok::<_, anyhow::Error>(response)
    })
}

async fn send<I>(io: I, request: http::Request<Full<Bytes>>) -> Result<(u16, Value)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake with the admin listener failed")?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("the admin listener did not answer")?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .context("cannot read the admin listener's answer")?
        .to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((status, value))
}

/// A TLS client trusting `--cacert` only, presenting `--cert`/`--key` if
/// given (T15, T17); aws-lc-rs, TLS 1.2+.
fn tls_connector(admin: &Admin) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cacert = admin
        .cacert
        .as_deref()
        .context("https needs --cacert: the CA certificate that signed the admin listener's")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cacert)
        .with_context(|| format!("cannot read {}", cacert.display()))?
    {
        let cert =
            cert.with_context(|| format!("{} holds no valid PEM certificate", cacert.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", cacert.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots);
    let mut config = match (&admin.cert, &admin.key) {
        (Some(cert), Some(key)) => {
            let chain = read_chain(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("{} holds no PEM private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not match")?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn read_chain(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let chain = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds no valid PEM certificate", path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(chain)
}
