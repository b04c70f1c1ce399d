//! T08: OpenTelemetry export over OTLP/HTTP, built only with
//! `--features otlp`. A real OTLP/HTTP receiver on loopback, an app whose
//! manifest points at it, requests with known trace contexts, a SIGTERM, and
//! the spans the receiver must have been sent by then.
#![cfg(feature = "otlp")]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use support::{Server, TestApp, send};

/// One POST the receiver was sent: path, content type, body.
type Received = Arc<Mutex<Vec<(String, String, Bytes)>>>;

/// A minimal OTLP/HTTP collector: accepts `POST /v1/traces` on a loopback
/// port and keeps each body; answers an empty (successful) export response.
async fn receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let address = listener.local_addr().expect("receiver address");
    let received: Received = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = request.uri().path().to_string();
                        let content_type = request
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let post = request.method() == http::Method::POST;
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let status = if post && path == "/v1/traces" {
                            sink.lock().unwrap().push((path, content_type, body));
                            200
                        } else {
                            404
                        };
                        let response = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/x-protobuf")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (address, received)
}

fn manifest(collector: SocketAddr) -> String {
    format!(
        r#"
[app]
name = "traced"

[[function]]
name = "echo"
component = "echo.wasm"
route = "/echo/{{word}}"
auth = "public"
input.path.word = "[A-Za-z0-9-]+"
input.query.token = "[A-Za-z0-9-]+"

[telemetry]
otlp_endpoint = "http://{collector}"
service_name = "traced-api"
"#
    )
}

async fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> support::Reply {
    let mut request = support::request("GET", server.addr, path, Bytes::new());
    for (name, value) in headers {
        let name: http::HeaderName = name.parse().expect("header name");
        request
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    send(server.addr, request).await
}

fn attributes(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v: &Any| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_in_the_callers_trace() {
    let (collector, received) = receiver().await;
    let app = TestApp::new(&manifest(collector), &["echo"]);
    let checked = app.run(&["check"]);
    let check_out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        check_out.contains(&format!("http://{collector}/v1/traces (OTLP/HTTP)")),
        "{check_out}"
    );
    let server = Server::start(&app);

    // A sampled caller: its trace continues and our span hangs under its span.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let secret = "sekrit-4711";
    let reply = get_with(
        &server,
        &format!("/echo/{secret}?token={secret}"),
        &[
            ("traceparent", &traceparent),
            ("authorization", &format!("Bearer {secret}")),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.correlation_id(), trace_id);
    let seen = reply.json();
    let handed_on = seen["headers"]
        .as_array()
        .and_then(|h| h.iter().find(|pair| pair[0] == "traceparent"))
        .and_then(|pair| pair[1].as_str())
        .expect("the function is handed a traceparent")
        .to_string();

    // A refusal, in a new trace the gateway starts and records.
    let refused = get_with(&server, "/nowhere", &[]).await;
    assert_eq!(refused.status, 404);
    let refused_trace = refused.correlation_id();

    // A caller that decided not to record: no span for it.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let reply = get_with(
        &server,
        "/echo/quiet",
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
    )
    .await;
    assert_eq!(reply.status, 200);

    // Stop: queued spans are flushed before the process exits.
    let status = server.stop();
    assert!(status.success(), "{status:?}");

    let received = received.lock().unwrap().clone();
    assert!(!received.is_empty(), "the collector received no export");
    let mut spans: Vec<Span> = Vec::new();
    for (_, content_type, body) in &received {
        assert_eq!(content_type, "application/x-protobuf");
        assert!(
            !String::from_utf8_lossy(body).contains(secret),
            "no path, query or header value is exported"
        );
        let export = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP export");
        for resource_spans in export.resource_spans {
            let resource = resource_spans.resource.expect("a resource");
            let resource = attributes(&resource.attributes);
            assert_eq!(resource["service.name"], "traced-api");
            assert_eq!(resource["deployment.environment.name"], "dev");
            for scope_spans in resource_spans.scope_spans {
                spans.extend(scope_spans.spans);
            }
        }
    }
    let find = |trace: &str| {
        spans
            .iter()
            .find(|s| hex(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no span in trace {trace}; got {spans:#?}"))
    };

    let span = find(trace_id);
    assert_eq!(span.name, "bulkhead.request");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&span.parent_span_id), caller_span);
    assert_eq!(
        handed_on,
        format!("00-{trace_id}-{}-01", hex(&span.span_id)),
        "the function's parent is the exported span"
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    let attrs = attributes(&span.attributes);
    assert_eq!(attrs["bulkhead.function"], "echo");
    assert_eq!(attrs["http.route"], "/echo/{word}");
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["http.response.status_code"], "200");
    assert!(!attrs.contains_key("bulkhead.refusal_reason"));

    let span = find(&refused_trace);
    assert!(span.parent_span_id.is_empty(), "a new trace has no parent");
    let attrs = attributes(&span.attributes);
    assert_eq!(attrs["bulkhead.refusal_reason"], "not-found");
    assert_eq!(attrs["http.response.status_code"], "404");
    assert!(!attrs.contains_key("bulkhead.function"));

    assert!(
        spans.iter().all(|s| hex(&s.trace_id) != unsampled),
        "an unsampled caller's request is not exported"
    );
    assert_eq!(spans.len(), 2, "{spans:#?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
