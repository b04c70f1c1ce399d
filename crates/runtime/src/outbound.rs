//! Outbound HTTP from guests (T17, T08). A request leaves only if a grant
//! names its scheme, host and port; the host is resolved here, once, and
//! loopback, private, link-local, unique-local, multicast and metadata
//! addresses are refused unless the grant names that exact address. The
//! connection goes to the checked address, so DNS cannot be re-resolved
//! to a different one in between. Redirects are never followed; each call
//! may make a bounded number of requests; responses are size-capped; the
//! trace context travels with the request.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bulkhead_manifest::grants::{HostPattern, OutboundRule, Scheme};
use bulkhead_store::{AuditEvent, AuditLog};
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::net::is_public;

/// Outbound requests one call may make.
const MAX_REQUESTS_PER_CALL: u32 = 16;
/// Longest time to resolve and connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Outbound {
    pub rules: Arc<[OutboundRule]>,
    pub function: String,
    pub correlation_id: String,
    /// The `traceparent` to send: the caller's trace continues.
    pub traceparent: String,
    pub audit: AuditLog,
    pub deadline: Instant,
    pub sent: u32,
    /// Bytes sent and received so far in this call, against `max_bytes`.
    pub bytes: Arc<AtomicU64>,
    pub max_bytes: u64,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

/// Where a request wants to go.
struct Destination {
    scheme: Scheme,
    host: String,
    port: u16,
}

impl Destination {
    fn of(uri: &http::Uri) -> Option<Self> {
        let scheme = match uri.scheme_str()? {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        Some(Self { scheme, host, port })
    }

    fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }

    /// The host without IPv6 brackets, for resolution.
    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// What a denial or an audit record needs, movable into the send future.
#[derive(Clone)]
struct Reporter {
    audit: AuditLog,
    function: String,
    correlation_id: String,
}

impl Reporter {
    fn deny(&self, destination: &str, reason: &str) {
        warn!(
            target: "bulkhead::capability",
            function = %self.function,
            correlation_id = %self.correlation_id,
            capability = "outbound-http",
            destination,
            reason,
            "outbound request denied"
        );
        self.audit.record(
            AuditEvent::new("capability.denied")
                .correlation_id(&self.correlation_id)
                .function(&self.function)
                .detail("capability", "outbound-http")
                .detail("destination", destination)
                .detail("reason", reason),
        );
    }

    fn used(&self, destination: &str, address: SocketAddr) {
        info!(
            target: "bulkhead::capability",
            function = %self.function,
            correlation_id = %self.correlation_id,
            capability = "outbound-http",
            destination,
            address = %address,
            "outbound request"
        );
        self.audit.record(
            AuditEvent::new("capability.used")
                .correlation_id(&self.correlation_id)
                .function(&self.function)
                .detail("capability", "outbound-http")
                .detail("destination", destination)
                .detail("address", address.to_string()),
        );
    }
}

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let reporter = Reporter {
            audit: self.audit.clone(),
            function: self.function.clone(),
            correlation_id: self.correlation_id.clone(),
        };
        let Some(destination) = Destination::of(request.uri()) else {
            reporter.deny("(no host)", "the request names no http(s) host");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        let url = destination.url();
        let granted: Vec<&OutboundRule> = self
            .rules
            .iter()
            .filter(|rule| rule.allows(destination.scheme, &destination.host, destination.port))
            .collect();
        if granted.is_empty() {
            reporter.deny(&url, "no outbound grant names this destination");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        if self.sent >= MAX_REQUESTS_PER_CALL {
            reporter.deny(&url, "too many outbound requests in one call");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        self.sent += 1;
        // Addresses a grant names exactly may be reached even if private.
        let exact: Vec<IpAddr> = granted
            .iter()
            .filter_map(|rule| match rule.host {
                HostPattern::Ip(ip) => Some(ip),
                _ => None,
            })
            .collect();
        let headers = request.headers_mut();
        for (name, value) in [
            ("traceparent", &self.traceparent),
            ("bulkhead-correlation-id", &self.correlation_id),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        let deadline = self.deadline;
        let meter = ByteMeter {
            used: self.bytes.clone(),
            cap: self.max_bytes,
            reporter: reporter.clone(),
            url: url.clone(),
        };
        let request = request.map(|body| meter.wrap(body, Direction::Sent));
        Box::new(async move {
            let address =
                resolve(&destination, &exact, deadline)
                    .await
                    .map_err(|(error, reason)| {
                        reporter.deny(&url, reason);
                        error
                    })?;
            reporter.used(&url, address);
            let (response, connection) = send(request, &destination, address, deadline).await?;
            let response = response.map(|body| meter.wrap(body, Direction::Received));
            Ok((response, connection))
        })
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Sent,
    Received,
}

/// Counts the bytes of one call's outbound bodies, both ways, and fails the
/// body that would take the call past its cap (T17, T04): a guest cannot
/// exfiltrate or download without bound, and the meter bills egress.
#[derive(Clone)]
struct ByteMeter {
    used: Arc<AtomicU64>,
    cap: u64,
    reporter: Reporter,
    url: String,
}

impl ByteMeter {
    fn wrap(&self, body: WasiBody, direction: Direction) -> WasiBody {
        Metered {
            body,
            meter: self.clone(),
            direction,
        }
        .boxed_unsync()
    }
}

struct Metered {
    body: WasiBody,
    meter: ByteMeter,
    direction: Direction,
}

impl Body for Metered {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            let meter = &self.meter;
            let before = meter.used.fetch_add(len, Ordering::Relaxed);
            if before.saturating_add(len) > meter.cap {
                if before <= meter.cap {
                    meter
                        .reporter
                        .deny(&meter.url, "the call's outbound byte cap is spent");
                }
                let cap = Some(meter.cap);
                return Poll::Ready(Some(Err(match self.direction {
                    Direction::Sent => Error::HttpRequestBodySize(cap),
                    Direction::Received => Error::HttpResponseBodySize(cap),
                })));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolve once and pick the first permitted address.
async fn resolve(
    destination: &Destination,
    exact: &[IpAddr],
    deadline: Instant,
) -> Result<SocketAddr, (Error, &'static str)> {
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let host = destination.bare_host();
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, destination.port)],
        Err(_) => tokio::time::timeout_at(limit, tokio::net::lookup_host((host, destination.port)))
            .await
            .map_err(|_| (Error::DnsTimeout, "name resolution timed out"))?
            .map_err(|_| (Error::DestinationNotFound, "the name does not resolve"))?
            .collect(),
    };
    addresses
        .into_iter()
        .find(|a| exact.contains(&a.ip()) || is_public(a.ip()))
        .ok_or((
            Error::DestinationIpProhibited,
            "the destination resolves only to private, loopback, link-local or metadata addresses",
        ))
}

async fn send(
    mut request: http::Request<WasiBody>,
    destination: &Destination,
    address: SocketAddr,
    deadline: Instant,
) -> SendResult {
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let tcp = tokio::time::timeout_at(limit, TcpStream::connect(address))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    let _ = tcp.set_nodelay(true);
    // The request line carries only the path: we are not a proxy.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;

    let (response, connection): (http::Response<hyper::body::Incoming>, _) = match destination
        .scheme
    {
        Scheme::Http => exchange(TokioIo::new(tcp), request, deadline).await?,
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(destination.bare_host().to_string())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            let tls = tokio::time::timeout_at(limit, tls_connector().connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            exchange(TokioIo::new(tls), request, deadline).await?
        }
    };
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    Ok((response, connection))
}

type Connection = Box<dyn Future<Output = Result<(), Error>> + Send>;

async fn exchange<S>(
    io: TokioIo<S>,
    request: http::Request<WasiBody>,
    deadline: Instant,
) -> Result<(http::Response<hyper::body::Incoming>, Connection), Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let connection: Connection = Box::new(async move { connection.await.map_err(Error::from) });
    let connection = Box::into_pin(connection);
    let driver = tokio::spawn(connection);
    let response = tokio::time::timeout_at(deadline, sender.send_request(request))
        .await
        .map_err(|_| Error::HttpResponseTimeout)??;
    let connection: Connection = Box::new(async move {
        driver
            .await
            .map_err(|e| Error::InternalError(Some(e.to_string())))?
    });
    Ok((response, connection))
}

/// The TLS client settings for every connection Bulkhead makes: rustls
/// (aws-lc-rs) with the webpki roots.
pub fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        Arc::new(
            config.unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default TLS versions")),
        )
    });
    tokio_rustls::TlsConnector::from(config.clone())
}
