//! OpenTelemetry trace export over OTLP/HTTP (protobuf), built only with the
//! `otlp` feature (T08). Each request becomes one `bulkhead.request` span
//! that carries the IDs the gateway gave the request, so it joins the
//! caller's trace; spans are queued and sent in batches off the request
//! path, and flushed when the server stops.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bulkhead_gateway::correlation::TraceContext;
use bulkhead_gateway::{RequestSpan, SpanExport};
use bulkhead_manifest::{App, Telemetry};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SamplingDecision, ShouldSample, SpanData, SpanExporter as _,
    SpanProcessor,
};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

const SPAN_NAME: &str = "bulkhead.request";
/// Longest one export may take, connecting included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the server waits at exit for queued spans to be sent.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest collector response read.
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// Start exporting if the manifest names a collector. Exports run on
/// `runtime`, which must outlive [`SpanExport::shutdown`].
pub fn start(app: &App, runtime: &Handle) -> Result<Option<Arc<dyn SpanExport>>> {
    let Some(telemetry) = &app.telemetry else {
        return Ok(None);
    };
    let exporter = Otlp::new(app, telemetry, runtime)
        .with_context(|| format!("cannot set up trace export to {}", telemetry.otlp_endpoint))?;
    tracing::info!(
        target: "bulkhead::telemetry",
        endpoint = %telemetry.traces_url(),
        service_name = %telemetry.service_name,
        sample_ratio = telemetry.sample_ratio,
        "exporting request spans over OTLP/HTTP"
    );
    Ok(Some(Arc::new(exporter)))
}

struct Otlp {
    processor: BatchSpanProcessor,
    sampler: Sampler,
    scope: InstrumentationScope,
}

impl Otlp {
    fn new(app: &App, telemetry: &Telemetry, runtime: &Handle) -> Result<Self> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client {
                runtime: runtime.clone(),
            })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(telemetry.traces_url())
            .with_timeout(EXPORT_TIMEOUT)
            .build()?;
        exporter.set_resource(
            &Resource::builder()
                .with_service_name(telemetry.service_name.clone())
                .with_attribute(KeyValue::new(
                    "deployment.environment.name",
                    app.env.clone(),
                ))
                .build(),
        );
        Ok(Self {
            processor: BatchSpanProcessor::builder(exporter).build(),
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                telemetry.sample_ratio,
            ))),
            scope: InstrumentationScope::builder("bulkhead")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }
}

/// The IDs of a request's span: (trace, this hop, the caller's span).
fn ids(trace: &TraceContext) -> Option<(TraceId, SpanId, Option<SpanId>)> {
    let parent = match trace.parent_span_id() {
        Some(hex) => Some(SpanId::from_hex(hex).ok()?),
        None => None,
    };
    Some((
        TraceId::from_hex(trace.correlation_id()).ok()?,
        SpanId::from_hex(trace.span_id()).ok()?,
        parent,
    ))
}

impl SpanExport for Otlp {
    /// A continued trace follows its caller's sampled flag; a new one is
    /// recorded with probability `sample_ratio`, decided by its trace ID.
    fn sampled(&self, trace: &TraceContext) -> bool {
        let Some((trace_id, _, parent)) = ids(trace) else {
            return false;
        };
        let parent = match parent {
            Some(span_id) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::default().with_sampled(trace.sampled()),
                true,
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let result = self.sampler.should_sample(
            Some(&parent),
            trace_id,
            SPAN_NAME,
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    fn export(&self, span: RequestSpan<'_>) {
        let Some((trace_id, span_id, parent)) = ids(span.trace) else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", span.method),
            KeyValue::new("http.response.status_code", i64::from(span.status)),
        ];
        if let Some(route) = span.route {
            attributes.push(KeyValue::new("http.route", route.to_string()));
        }
        if let Some(function) = span.function {
            attributes.push(KeyValue::new("bulkhead.function", function.to_string()));
        }
        if let Some(reason) = span.refusal_reason {
            attributes.push(KeyValue::new("bulkhead.refusal_reason", reason));
        }
        // A server span is an error when the server failed, not the client.
        let status = if span.status >= 500 {
            Status::error(span.refusal_reason.unwrap_or("server error"))
        } else {
            Status::Unset
        };
        self.processor.on_end(SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(SPAN_NAME),
            start_time: span.start,
            end_time: span.end,
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    fn shutdown(&self) -> Result<(), String> {
        self.processor
            .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
            .map_err(|e| e.to_string())
    }
}

/// The exporter's HTTP client: hyper on our Tokio runtime, rustls with the
/// webpki roots for https. The batch processor calls it from its own
/// thread, so each request is spawned onto the runtime.
#[derive(Debug)]
struct Client {
    runtime: Handle,
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // Built inside the task: a timer needs the runtime's context.
        let exchange = async move { tokio::time::timeout(EXPORT_TIMEOUT, post(request)).await };
        match self.runtime.spawn(exchange).await? {
            Ok(result) => result,
            Err(_) => Err("the collector did not answer in time".into()),
        }
    }
}

async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let https = parts.uri.scheme_str() == Some("https");
    let authority = parts
        .uri
        .authority()
        .ok_or("the endpoint has no host")?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    // The request line carries only the path: we are not talking to a proxy.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()?;
    parts
        .headers
        .insert(http::header::HOST, authority.as_str().parse()?);
    let request = Request::from_parts(parts, Full::new(body));
    if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
        let tls = bulkhead_runtime::tls_connector().connect(name, tcp).await?;
        exchange(TokioIo::new(tls), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
) -> Result<Response<Bytes>, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // Ends when the exchange is over and the sender dropped.
    tokio::spawn(connection);
    let (parts, body) = sender.send_request(request).await?.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}
