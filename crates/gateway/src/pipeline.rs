//! The request pipeline: correlate -> decode path -> route -> validate head
//! -> admit -> read body -> validate body -> queue -> invoke -> respond.
//! Cheap checks come first, so a refused request never instantiates a
//! function. Every outcome ends in one access-log record.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bulkhead_manifest::input::HOP_BY_HOP;
use bulkhead_runtime::{Invocation, RequestTrailers};
use bulkhead_store::CallTickets;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::access_log::{self, Level};
use crate::admission::PushedOut;
use crate::authn::Identity;
use crate::caller::{Caller, client_address, client_scheme};
use crate::correlation::{CORRELATION_HEADER, TraceContext};
use crate::refusal::Refused;
use crate::respond::{self, ConnectionCut, CutReport, Held, Outgoing};
use crate::router::RouteMatch;
use crate::spans::{RequestSpan, method_name};
use crate::stages::{self, Stage, skip};
use crate::validate::{self, Rules};
use crate::version::Version;
use crate::{FunctionSlot, Shared, audit};

/// Header prefix reserved for what the gateway tells the function; a client
/// can never set one (T11).
pub(crate) const RESERVED_PREFIX: &str = "bulkhead-";

/// What the access log says about one request.
struct Outcome<'s> {
    slot: Option<&'s FunctionSlot>,
    subject: Option<String>,
    /// Who is calling, once the client address is known.
    caller: Option<Caller>,
    reason: Option<&'static str>,
    /// What the log and audit record say of a refusal besides its slug.
    detail: Option<String>,
    /// The last ticket of the request's audit records: the call's, and its
    /// refusal's. The answer waits for it (group commit, issue 19).
    tickets: CallTickets,
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    peer: IpAddr,
    connection: ConnectionCut,
) -> Response<Outgoing> {
    let started = Instant::now();
    let started_at = SystemTime::now();
    // The version this request runs on, to its end (T19): a deploy during
    // it switches only the requests that start after.
    let version = shared.current();
    let mut trace = stages::trace_context(request.headers());
    let spans = shared
        .spans
        .as_deref()
        .filter(|spans| spans.sampled(&trace));
    if spans.is_some() {
        trace.mark_sampled();
    }
    // What the client wrote goes into the record capped (T09). The method
    // and URI are kept (a shared buffer's count, not a copy) for the record.
    let request_method = request.method().clone();
    let request_uri = request.uri().clone();
    let method = audit::client_text(request_method.as_str());
    let span_method = method_name(&request_method);
    let path = audit::client_text(request_uri.path());
    let mut outcome = Outcome {
        slot: None,
        subject: None,
        caller: None,
        reason: None,
        detail: None,
        tickets: CallTickets::default(),
    };
    let mut response = match pipeline(
        &shared,
        &version,
        request,
        peer,
        &connection,
        &trace,
        &mut outcome,
    )
    .await
    {
        Ok(response) => response,
        Err(refused) => {
            outcome.detail = refused.detail();
            let problem = refused.into_problem();
            outcome.reason = Some(problem.slug);
            problem
                .into_response(trace.correlation_id())
                .map(Outgoing::bytes)
        }
    };
    if let Ok(id) = HeaderValue::from_str(trace.correlation_id()) {
        response.headers_mut().insert(CORRELATION_HEADER, id);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let function = outcome.slot.map_or("", |slot| slot.function.name());
    let subject = audit::client_text(outcome.subject.as_deref().unwrap_or(""));
    let subject = subject.as_ref();
    let correlation_id = trace.correlation_id();
    if !skip(Stage::Metrics) {
        shared
            .metrics
            .observe(function, status, elapsed.as_secs_f64(), outcome.reason);
    }
    if let Some(spans) = spans {
        spans.export(RequestSpan {
            trace: &trace,
            start: started_at,
            end: started_at + elapsed,
            function: outcome.slot.map(|slot| slot.function.name()),
            route: outcome.slot.map(|slot| slot.route.as_str()),
            method: span_method,
            status,
            refusal_reason: outcome.reason,
        });
    }
    // Only a stream can be cut after its head: only it needs the record.
    if outcome.reason.is_none() && response.body().is_streaming() {
        response.body_mut().on_cut(CutReport {
            shared: shared.clone(),
            correlation_id: correlation_id.to_string(),
            function: function.to_string(),
            subject: subject.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            status,
            caller: outcome.caller.clone(),
        });
    }
    // T09 (issue 17): serialised here, written by the log thread.
    let logged_at = started_at + elapsed;
    // The fields every access line has, answered or refused.
    let request_fields = |line: &mut access_log::Line<'_>| {
        line.str("correlation_id", correlation_id)
            .str("method", &method)
            .str("path", &path)
            .str("function", function)
            .str("subject", subject)
            .num("status", status.into())
            .float("duration_ms", duration_ms);
    };
    match outcome.reason {
        None => access_log::write(Level::Info, "request", logged_at, request_fields),
        Some(reason) => {
            let detail = audit::client_text(outcome.detail.as_deref().unwrap_or(""));
            let detail = detail.as_ref();
            access_log::write(Level::Warn, "request refused", logged_at, |line| {
                request_fields(line);
                line.str("reason", reason)
                    .str("detail", detail)
                    .ip("peer", peer);
            });
            // `skip` is `false` outside bench builds (stages.rs): T09 stays on.
            let ticket = (!skip(Stage::Audit)).then(|| {
                shared.refusals.record(
                    &shared.audit,
                    audit::RequestFacts {
                        correlation_id,
                        function,
                        subject,
                        method: &method,
                        path: &path,
                        status,
                        reason,
                        detail,
                        caller: outcome.caller.as_ref(),
                    },
                )
            });
            outcome.tickets.note(ticket.flatten());
        }
    }
    // T09 (issue 19): the call's records are durable before its answer (a
    // stream's head) goes out; what is recorded after the head (a stream's
    // end or cut, the fold summary of a streamed call) is not waited for.
    // Bounded: past `DURABLE_WAIT` the answer goes out, counted.
    if !skip(Stage::Audit) {
        shared
            .audit
            .wait_durable(outcome.tickets.last(), audit::DURABLE_WAIT)
            .await;
    }
    response
}

async fn pipeline<'s>(
    shared: &'s Shared,
    version: &'s Arc<Version>,
    request: Request<Incoming>,
    peer: IpAddr,
    connection: &ConnectionCut,
    trace: &TraceContext,
    outcome: &mut Outcome<'s>,
) -> Result<Response<Outgoing>, Refused> {
    // The client's address: the peer, or what a trusted proxy says (T02);
    // until a subject is verified, it names the caller.
    let client = client_address(peer, request.headers(), &shared.limits.trusted_proxies);
    // The scheme the client used: https only if a trusted proxy says so.
    let scheme = client_scheme(peer, request.headers(), &shared.limits.trusted_proxies);
    outcome.caller = Some(Caller::of(None, client));

    // One valid Host, agreeing with an absolute-form target, one of
    // `[app] hostnames` if set (T10, RFC 9112 §3.2); kept, canonical, for
    // the function.
    let host = if skip(Stage::Validation) {
        None
    } else {
        validate::check_host(
            request.version(),
            request.uri(),
            request.headers(),
            version.hostnames.as_deref(),
        )?
    };

    // Sign-in at the gateway (issue 15, T11/T12): its reserved paths.
    if let Some(login) = version.login.as_deref()
        && let Some(answer) = login
            .serve(
                shared,
                &version.authenticator,
                crate::login::Asked {
                    method: request.method(),
                    uri: request.uri(),
                    headers: request.headers(),
                },
                client,
                trace.correlation_id(),
            )
            .await
    {
        return answer.map_err(Refused::Auth);
    }

    // Decode the path once and refuse what is ambiguous, before routing (T10).
    let (decoded, segments): (Vec<_>, Vec<&str>);
    let found = if skip(Stage::Route) {
        RouteMatch::Found {
            function: 0,
            params: Vec::new(),
        }
    } else {
        decoded = validate::decode_path(request.uri().path()).map_err(validate::Refusal::path)?;
        segments = decoded.iter().map(|s| s.as_ref()).collect();
        // Route.
        version.router.find(request.method().as_str(), &segments)
    };
    let (slot, params) = match found {
        RouteMatch::Found { function, params } => (&version.functions[function], params),
        RouteMatch::MethodNotAllowed { allow } => {
            return Err(Refused::MethodNotAllowed { allow });
        }
        RouteMatch::NotFound => return Err(Refused::NotFound),
    };
    let function = &slot.function;
    outcome.slot = Some(slot);

    // A route that requires a client certificate (mTLS, T15) is refused
    // to a caller whose connection presented none the server verified.
    if slot.client_cert_required
        && request
            .extensions()
            .get::<crate::tls::VerifiedClientCert>()
            .is_none()
    {
        return Err(Refused::ClientCertificateRequired);
    }

    // Authenticate and authorize (T11) before anything costs more; failed
    // attempts are counted per client, not per proxy (T03).
    let identity = match version
        .authenticator
        .check(request.headers(), &slot.access, client)
        .await
    {
        Ok(identity) => identity,
        Err(refusal) => {
            outcome.subject = refusal.subject.clone();
            // A refused authentication is charged to the client address's
            // per-caller rate limit, app's then function's (T01, T03;
            // outside review of issue 15: 1000 replays of a revoked cookie
            // got 1000 401s, never a 429). Only the refused path pays for
            // this check; an admitted request is charged once, below.
            if refusal.problem.slug != "auth-backoff" {
                let anonymous = Caller::of(None, client);
                let limiters = [shared.app_limiter.as_ref(), slot.limiter.as_deref()];
                if let Err(wait) = crate::ratelimit::admit_each(limiters, &anonymous).await {
                    return Err(Refused::RateLimited {
                        wait,
                        after: Some(refusal.reason),
                    });
                }
            }
            return Err(Refused::Auth(refusal));
        }
    };
    // Records name the qualified subject: `api-key:S`, `jwt:ISSUER:S` (T13).
    outcome.subject = identity.as_ref().map(|i| i.principal.clone());
    // Cookie-authenticated and state-changing: same origin only (issue 15, CSRF).
    if let (Some(login), Some(true)) = (
        version.login.as_deref(),
        identity.as_ref().map(|i| i.via_cookie),
    ) && let Some(reason) =
        crate::login::cross_site(request.method(), request.headers(), login.origin())
    {
        return Err(Refused::Auth(crate::login::cross_site_refusal(reason)));
    }

    // Rate limits per caller, app-wide then this function's (T02, T03).
    let caller = match (&identity, outcome.caller.take()) {
        (None, Some(anonymous)) => anonymous,
        _ => Caller::of(identity.as_ref(), client),
    };
    outcome.caller = Some(caller.clone());
    crate::ratelimit::admit_each(
        [shared.app_limiter.as_ref(), slot.limiter.as_deref()],
        &caller,
    )
    .await
    .map_err(|wait| Refused::RateLimited { wait, after: None })?;

    // Validate parameters, query, framing and content type (T10).
    if !skip(Stage::Validation) {
        slot.rules
            .check_head(&params, request.uri().query(), request.headers())?;
    }

    // Admit: app-wide, then per function, fairly between callers (T01,
    // T02): over either bound or a caller's share of it, 429 at once; while
    // the dynamic throttle limits active requests, the heaviest callers'
    // excess is shed with `overloaded`.
    let refused = |why, scope| {
        Refused::admission(why, scope, || {
            shared.shedder.as_ref().map_or(1, |s| s.retry_after())
        })
    };
    // `None` only when the bench turned admission off (stages.rs).
    let admit = !skip(Stage::Admission);
    let mut app_place = admit
        .then(|| shared.app_gate.try_admit(&caller))
        .transpose()
        .map_err(|r| refused(r, "app"))?;
    let function_place = admit
        .then(|| slot.gate.try_admit(&caller))
        .transpose()
        .map_err(|r| refused(r, "function"))?;

    // Read the body, bounded in size and time (T01), framed by its length
    // or chunked: a chunked one is cut off as soon as it passes the cap.
    let limits = function.limits();
    let (parts, body) = request.into_parts();
    let max_body = limits.max_request_body.as_usize();
    let too_large = Refused::BodyTooLarge { max: max_body };
    if validate::declared_length(&parts.headers).is_some_and(|n| n > max_body as u64) {
        return Err(too_large);
    }
    let read = tokio::time::timeout(
        shared.limits.body_read_timeout.get(),
        Limited::new(body, max_body).collect(),
    )
    .await;
    let (body, trailers) = match read {
        Err(_) => return Err(Refused::BodyTimeout),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(too_large);
        }
        Ok(Err(e)) => {
            return Err(Refused::BadBody {
                error: e.to_string(),
            });
        }
        Ok(Ok(collected)) => {
            let trailers = collected.trailers().map(|t| guest_trailers(t, &slot.rules));
            (collected.to_bytes(), trailers)
        }
    };

    // Its body is read: it now counts against the dynamic throttle's limit,
    // unless that is reached and this caller holds its part (T01).
    if let Some(place) = app_place.as_mut() {
        place.activate().map_err(|r| refused(r, "app"))?;
    }

    // Validate the body: strict JSON, then the schema (T10).
    if !skip(Stage::Validation) {
        slot.rules
            .check_body(&parts.method, &parts.headers, &body)?;
    }

    // Budgets (T04): refused before it can cost anything.
    let mut charge = match &version.meter {
        Some(meter) => Some(meter.admit(slot.index, &caller).await?),
        None => None,
    };

    // Queue for a running slot, this function's then the app's, taking
    // turns with other callers; a request waits at most its function's
    // timeout.
    let queue_timeout = limits.timeout.get();
    let permits = tokio::time::timeout(queue_timeout, async {
        let (Some(function_place), Some(app_place)) = (&function_place, &app_place) else {
            return Ok(None);
        };
        let function = function_place.run().await.map_err(|PushedOut| "function")?;
        let app = app_place.run().await.map_err(|PushedOut| "app")?;
        Ok(Some((function, app)))
    })
    .await;
    let places = match permits {
        Ok(Ok(permits)) => permits,
        Ok(Err(scope)) => return Err(Refused::PushedOut { scope }),
        Err(_) => return Err(Refused::QueueTimeout),
    };

    // Invoke, metered from here on (T04).
    let request_bytes = body.len() as u64;
    let client_can_stream = parts.version >= http::Version::HTTP_11;
    let mut guest_request = guest_request(
        parts,
        host,
        scheme,
        body,
        trace,
        identity.as_ref(),
        &slot.rules,
    )?;
    if let Some(trailers) = trailers.filter(|t| !t.0.is_empty()) {
        guest_request.extensions_mut().insert(trailers);
    }
    let invocation = Invocation {
        correlation_id: trace.correlation_id().to_string(),
        traceparent: trace.traceparent(),
        outbound_bytes: Arc::default(),
        // The verified identity, qualified by credential kind and issuer:
        // subject-scoped stores confine the call to it (T13).
        subject: identity.as_ref().map(|i| i.principal.clone()),
        // The call's audit records count against this caller's share (T09).
        caller: caller.key(),
        can_stream: client_can_stream,
        audit_tickets: outcome.tickets.clone(),
        // An HTTP call starts a chain of events (issue 18, T04).
        event_depth: 0,
        event_chain: None,
    };
    if let Some(charge) = charge.as_mut() {
        charge.start(
            limits.memory.bytes() >> 20,
            request_bytes,
            invocation.outbound_bytes.clone(),
        );
    }
    // The instance ends by its timeout (and a grace second for the runtime's
    // own clock): a stream's places are held no longer.
    let deadline = tokio::time::Instant::now() + limits.timeout.get() + Duration::from_secs(1);
    match function.invoke(guest_request, &invocation).await {
        Ok(response) => Ok(respond::guest_response(
            response,
            Held {
                // Running slots and outstanding places alike: a stream
                // counts against both bounds, its caller's share and the
                // throttle until it ends (outside attack on issue 12).
                // The version too: a stream ends on the code it began on.
                _places: Box::new((places, function_place, app_place, version.clone())),
                charge,
            },
            deadline,
            connection,
            version
                .login
                .as_deref()
                .map(crate::login::Login::function_cookies),
        )),
        Err(error) => {
            if let Some(charge) = charge {
                charge.finish(0);
            }
            Err(Refused::Invoke(error))
        }
    }
}

/// The request as the function sees it: absolute URI, only the client
/// headers its input rules let through (T10; never connection headers or
/// client-sent `bulkhead-*` ones, T11), trace context continued.
fn guest_request(
    parts: http::request::Parts,
    host: Option<String>,
    scheme: &str,
    body: Bytes,
    trace: &TraceContext,
    identity: Option<&Identity>,
    rules: &Rules,
) -> Result<Request<Bytes>, Refused> {
    // The host `validate::check_host` accepted, canonical (an HTTP/1.0
    // request without one: `localhost`), so the function never sees a
    // spelling other than the one checked (`API.Example.com:08080` is
    // `api.example.com:8080`).
    let authority = host.unwrap_or_else(|| "localhost".to_string());
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Refused::BadRequestTarget)?;
    let body_len = body.len();
    // A chunked body has a length once read, even an empty one.
    let parts_had_length = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    let mut request = Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    // What the client's `Connection` names is for this hop only (T11).
    let hop_only = connection_named(&parts.headers);
    for (name, value) in &parts.headers {
        if passes_to_guest(name, rules) && !hop_only.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(&trace.traceparent()) {
        headers.insert("traceparent", value);
    }
    // The length of the body the gateway read, which is the whole body the
    // function gets: its own framing, never the client's (issue 12).
    if body_len > 0 || parts_had_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    if let Ok(value) = HeaderValue::from_str(trace.correlation_id()) {
        headers.insert(CORRELATION_HEADER, value);
    }
    // The verified identity, in headers only the gateway can set (T11, T13):
    // the subject as its credential names it, so functions stay portable;
    // credential kind and issuer make it unambiguous.
    if let Some(identity) = identity {
        let scopes = identity.scopes.join(" ");
        for (name, value) in [
            ("bulkhead-subject", Some(identity.subject.as_str())),
            ("bulkhead-scopes", Some(scopes.as_str())),
            ("bulkhead-credential", Some(identity.kind.as_str())),
            ("bulkhead-issuer", identity.issuer.as_deref()),
        ] {
            if let Some(Ok(value)) = value.map(HeaderValue::from_str) {
                headers.insert(name, value);
            }
        }
    }
    Ok(request)
}

/// The fields a message's `Connection` header names: connection fields
/// too, for the hop they came over only (RFC 9110 §7.6.1).
pub(crate) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect()
}

/// Whether the function sees this client field: one its input rules let
/// through, never a connection field, `traceparent` (the gateway's) or a
/// `bulkhead-*` one (T10, T11).
fn passes_to_guest(name: &HeaderName, rules: &Rules) -> bool {
    let text = name.as_str();
    !(HOP_BY_HOP.contains(&text) || text.starts_with(RESERVED_PREFIX) || text == "traceparent")
        && rules.lets_through(name)
}

/// The chunked body's trailer fields the function gets (issue 12): those a
/// header of that name would pass ([`passes_to_guest`]), minus what may not
/// be a trailer (RFC 9110 §6.5.1: framing, routing, authentication,
/// content). hyper already bounds the trailer section (16 KiB, at most
/// `max_headers` fields) or refuses the body.
fn guest_trailers(trailers: &HeaderMap, rules: &Rules) -> RequestTrailers {
    const NOT_TRAILERS: &[&str] = &[
        "authorization",
        "content-encoding",
        "content-range",
        "content-type",
        "cookie",
        "expect",
        "host",
        "max-forwards",
        "proxy-authorization",
        "range",
    ];
    let mut kept = HeaderMap::new();
    for (name, value) in trailers {
        if passes_to_guest(name, rules) && !NOT_TRAILERS.contains(&name.as_str()) {
            kept.append(name.clone(), value.clone());
        }
    }
    RequestTrailers(kept)
}
