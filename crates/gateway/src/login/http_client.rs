//! The HTTP client the sign-in flows call the provider with (issue 15):
//! hyper over a plain TCP connection, or rustls on aws-lc-rs with the
//! webpki roots (the one TLS stack the tree has; no reqwest). It follows no
//! redirects (a redirect from the provider is an error, never a request to
//! somewhere else), speaks plain `http` only to a loopback host (a provider
//! in tests), bounds the answer's size and the whole exchange's time.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The whole exchange (connect, TLS, request, answer) ends by then.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest provider answer read (discovery documents, JWKS, tokens).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the provider URL has no host")]
    NoHost,
    #[error("plain http is allowed only to a loopback host; use https")]
    PlainHttp,
    #[error("unsupported URL scheme")]
    Scheme,
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to the provider: {0}")]
    Connect(std::io::Error),
    #[error("TLS with the provider failed: {0}")]
    Tls(std::io::Error),
    #[error("invalid provider host name")]
    ServerName,
    #[error("HTTP exchange with the provider failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the provider's answer is over {MAX_RESPONSE_BYTES} bytes or broken")]
    Body,
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One request to the provider (what `openidconnect`/`oauth2` call).
pub async fn call(request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, HttpError> {
    match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(request)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout(EXCHANGE_TIMEOUT)),
    }
}

async fn exchange(request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let https = match parts.uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(HttpError::Scheme),
    };
    let authority = parts.uri.authority().ok_or(HttpError::NoHost)?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !https && !is_loopback(&host) {
        return Err(HttpError::PlainHttp);
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(HttpError::Connect)?;
    let _ = tcp.set_nodelay(true);
    // Origin form: we are not talking to a proxy.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .map_err(http::Error::from)?;
    parts.headers.insert(
        header::HOST,
        authority.as_str().parse().map_err(http::Error::from)?,
    );
    // GitHub's API refuses requests without one.
    parts.headers.insert(
        header::USER_AGENT,
        http::HeaderValue::from_static("bulkhead-gateway"),
    );
    let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
    if https {
        let name =
            rustls::pki_types::ServerName::try_from(host).map_err(|_| HttpError::ServerName)?;
        let tls = bulkhead_runtime::tls_connector()
            .connect(name, tcp)
            .await
            .map_err(HttpError::Tls)?;
        send(TokioIo::new(tls), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
) -> Result<Response<Vec<u8>>, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // Ends when the exchange is over and the sender dropped.
    tokio::spawn(connection);
    let (parts, body) = sender.send_request(request).await?.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|_| HttpError::Body)?
        .to_bytes();
    Ok(Response::from_parts(parts, body.to_vec()))
}
