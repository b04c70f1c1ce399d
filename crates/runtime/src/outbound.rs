//! Outbound HTTP from guests (T17, T08). A request leaves only if a grant
//! names its scheme, host and port; the host is resolved here, once, and
//! loopback, private, link-local, unique-local, multicast and metadata
//! addresses are refused unless the grant names that exact address. The
//! connection goes to the checked address, so DNS cannot be re-resolved
//! to a different one in between. A grant naming `localhost` exists only
//! in `dev` (the manifest refuses it elsewhere) and means this machine's
//! loopback on that port, never asked of DNS, so a hosts file or resolver
//! cannot send it elsewhere; no other name reaches loopback (rebinding). Redirects are never followed; each call
//! may make a bounded number of requests; responses are size-capped; the
//! trace context travels with the request.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bulkhead_manifest::grants::{HostPattern, OutboundRule, Scheme};
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::call::{CallContext, Outcome, Target};
use crate::net::is_public;

/// Outbound requests one call may make.
const MAX_REQUESTS_PER_CALL: u32 = 16;
/// Longest time to resolve and connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Outbound {
    pub rules: Arc<[OutboundRule]>,
    /// The call's identity, deadline and reporter. The secrets it read are
    /// redacted from every destination it reports (T14).
    pub call: CallContext,
    /// The `traceparent` to send: the caller's trace continues.
    pub traceparent: String,
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

/// Reports an outbound request's use or denial through the call's one
/// reporter (folded per call, T09); movable into the send future.
#[derive(Clone)]
struct Reporter(CallContext);

impl Reporter {
    fn deny(&self, destination: &str, reason: &str) {
        self.0
            .deny("outbound-http", Target::Destination(destination), reason);
    }

    fn used(&self, destination: &str, address: SocketAddr) {
        self.0.used(
            "outbound-http",
            Target::Destination(destination),
            Outcome::Address(address),
        );
    }
}

impl WasiHttpHooks for Outbound {
    /// T05: an outgoing body holds at most this much unsent.
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        crate::host::OUTGOING_BODY_CHUNK
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let reporter = Reporter(self.call.clone());
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
        // `localhost` granted (dev only): loopback, without DNS (T17).
        let loopback = granted.iter().any(|rule| rule.host.is_localhost());
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
            ("traceparent", self.traceparent.as_str()),
            ("bulkhead-correlation-id", self.call.correlation_id()),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        let deadline = self.call.deadline();
        let meter = ByteMeter {
            used: self.bytes.clone(),
            cap: self.max_bytes,
            reporter: reporter.clone(),
            url: url.clone(),
        };
        // The request line and headers count against the cap like the body
        // (T17): a guest cannot carry data out in a huge URI or headers.
        let head = head_bytes(&request);
        if !meter.charge(head) {
            // Never sent, so never billed.
            meter.used.fetch_sub(head, Ordering::Relaxed);
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let request = request.map(|body| meter.wrap(body, Direction::Sent));
        Box::new(async move {
            let addresses = resolve(&destination, &exact, loopback, deadline)
                .await
                .map_err(|(error, reason)| {
                    reporter.deny(&url, reason);
                    error
                })?;
            // Each address tried is a use, reported before connecting.
            let tcp = connect(&addresses, deadline, |address| reporter.used(&url, address)).await?;
            let (response, connection) = send(request, &destination, tcp, deadline).await?;
            if !meter.charge(response_head_bytes(&response)) {
                return Err(Error::HttpResponseHeaderSectionSize(None));
            }
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

/// The bytes of a request's line and header section as sent: method,
/// URI (counted whole, scheme and authority too), version and every
/// `name: value` line.
fn head_bytes<B>(request: &http::Request<B>) -> u64 {
    let line = request.method().as_str().len() + request.uri().to_string().len() + 12;
    (line + headers_bytes(request.headers())) as u64
}

/// The bytes of a response's status line and header section.
fn response_head_bytes<B>(response: &http::Response<B>) -> u64 {
    (STATUS_LINE_BYTES + headers_bytes(response.headers())) as u64
}

/// `HTTP/1.1 200 OK\r\n`, near enough.
const STATUS_LINE_BYTES: usize = 17;

fn headers_bytes(headers: &http::HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    fields + 2
}

impl ByteMeter {
    /// Count `len` bytes; `false` (reported once) if that takes the call
    /// past its cap.
    fn charge(&self, len: u64) -> bool {
        let before = self.used.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) <= self.cap {
            return true;
        }
        if before <= self.cap {
            self.reporter
                .deny(&self.url, "the call's outbound byte cap is spent");
        }
        false
    }

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
            && !self.meter.charge(data.len() as u64)
        {
            let cap = Some(self.meter.cap);
            return Poll::Ready(Some(Err(match self.direction {
                Direction::Sent => Error::HttpRequestBodySize(cap),
                Direction::Received => Error::HttpResponseBodySize(cap),
            })));
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

/// Where `localhost` goes in `dev`: IPv4 loopback, then IPv6 (a dev server
/// may listen on either).
const LOOPBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

/// The permitted addresses to try, in order: the first permitted address
/// the name resolves to (resolved once), or loopback for a granted
/// `localhost` (never resolved).
async fn resolve(
    destination: &Destination,
    exact: &[IpAddr],
    loopback: bool,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, (Error, &'static str)> {
    if loopback {
        return Ok(LOOPBACK
            .iter()
            .map(|ip| SocketAddr::new(*ip, destination.port))
            .collect());
    }
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
        .map(|address| vec![address])
        .ok_or((
            Error::DestinationIpProhibited,
            "the destination resolves only to private, loopback, link-local or metadata addresses",
        ))
}

/// Connect to the first of `addresses` that accepts, calling `trying`
/// with each before it is tried.
async fn connect(
    addresses: &[SocketAddr],
    deadline: Instant,
    trying: impl Fn(SocketAddr),
) -> Result<TcpStream, Error> {
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let mut failure = Error::ConnectionRefused;
    for &address in addresses {
        trying(address);
        match tokio::time::timeout_at(limit, TcpStream::connect(address)).await {
            Err(_) => return Err(Error::ConnectionTimeout),
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => failure = Error::Connect(e),
        }
    }
    Err(failure)
}

async fn send(
    mut request: http::Request<WasiBody>,
    destination: &Destination,
    tcp: TcpStream,
    deadline: Instant,
) -> SendResult {
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
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
