//! One call: a fresh Store and instance, the epoch deadline and memory cap
//! set, the request handed to `wasi:http/incoming-handler`, the response
//! collected under the size cap, and every way it can fail named (T05).

use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;

use bulkhead_manifest::FunctionLimits;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wasmtime::component::ResourceTableError;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{FieldMapError, WasiHttpView};

use crate::call::CallContext;
use crate::data::{CallData, Redactions};
use crate::engine::deadline_ticks;
use crate::host::{HostState, MemoryCap};
use crate::outbound::Outbound;
use crate::output::GuestOutput;
use crate::response::{ResponseBody, Settle, Stream, redact_fields};

pub(crate) struct Sealed {
    pub name: String,
    pub limits: FunctionLimits,
    pub pre: ProxyPre<HostState>,
    pub outbound: Arc<[bulkhead_manifest::OutboundRule]>,
    pub sql: Arc<crate::sql::SqlBindings>,
    pub grants: Arc<bulkhead_manifest::Grants>,
    pub data: Arc<crate::data::DataPlane>,
    pub audit: bulkhead_store::AuditLog,
    pub _ticker: Arc<crate::engine::EpochTicker>,
}

/// What the gateway knows about the request that the sandbox needs.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub correlation_id: String,
    /// The trace context to hand on to outbound calls (T08).
    pub traceparent: String,
    /// Outbound HTTP bytes of this call, sent and received, for the meter.
    pub outbound_bytes: Arc<AtomicU64>,
    /// The verified identity of the caller, `None` on a public route; a
    /// subject-scoped store confines the call to it (T13).
    pub subject: Option<String>,
    /// The caller as the gateway keys it (`sub:…`, `ip:…`): the source of
    /// the call's audit records, held to its share of the audit queue and
    /// budget (T09).
    pub caller: Arc<str>,
    /// Whether the client can tell a body cut short from a whole one: an
    /// HTTP/1.0 client cannot (no chunked framing, the end of a body is the
    /// end of the connection), so its answer is read whole before its head
    /// is sent, and a failure still gets a problem response (issue 12).
    pub can_stream: bool,
    /// The last ticket of the call's audit records, noted as they are
    /// recorded: the gateway waits for it before it answers (issue 19).
    pub audit_tickets: bulkhead_store::CallTickets,
    /// The causal depth of the event the call handles (issue 18, T04):
    /// 0 for an HTTP request or a schedule, the message's for a queue
    /// delivery; what it sends is one deeper.
    pub event_depth: u32,
    /// The causal chain of the message the call handles (issue 18, T04);
    /// `None` for an HTTP request or a schedule run, which starts a chain
    /// of its own when it first sends.
    pub event_chain: Option<[u8; 16]>,
}

/// Trailer fields of a chunked request body, already filtered by the
/// gateway, carried as an extension of the request handed to
/// [`crate::LoadedFunction::invoke`]: the function gets them after the body
/// (`incoming-body.finish`), as the client sent them (issue 12).
#[derive(Debug, Clone, Default)]
pub struct RequestTrailers(pub http::HeaderMap);

/// How a call failed. The gateway turns each into a problem response; the
/// detail strings are for the operator's log, never for the client.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the function ran past its timeout")]
    Timeout,
    #[error("the function tried to use more memory than its cap")]
    MemoryLimit,
    #[error("the function overflowed its stack")]
    StackOverflow,
    #[error("the function trapped: {0}")]
    Trap(String),
    #[error("the function returned without setting a response")]
    NoResponse,
    #[error("the function answered with an error code: {0}")]
    GuestError(String),
    #[error("the function's response body is over its {limit}-byte cap")]
    ResponseTooLarge { limit: usize },
    #[error("no instance slot is free (the live-instance cap is reached)")]
    Capacity,
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvokeError {
    /// The error with every secret value the call read replaced (T15): the
    /// gateway logs these strings, and a guest chooses some of them.
    pub(crate) fn redacted(self, redactions: &Redactions) -> Self {
        if redactions.is_empty() {
            return self;
        }
        match self {
            Self::Trap(text) => Self::Trap(redactions.apply(&text)),
            Self::GuestError(text) => Self::GuestError(redactions.apply(&text)),
            Self::Internal(text) => Self::Internal(redactions.apply(&text)),
            other => other,
        }
    }
}

/// Why the guest task ended early.
pub(crate) enum Failure {
    Deadline,
    Wasm(wasmtime::Error),
}

/// Aborts the guest task when the call is abandoned (the client went away):
/// no work is paid for that nobody waits for.
pub(crate) struct AbortOnDrop(Option<JoinHandle<Result<(), Failure>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

impl AbortOnDrop {
    fn new(task: JoinHandle<Result<(), Failure>>) -> Self {
        Self(Some(task))
    }

    /// A handle to no task (what is left once one was detached).
    pub(crate) fn finished() -> Self {
        Self(None)
    }

    /// How the guest task ended, once it has.
    pub(crate) fn poll_end(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), Failure>> {
        let Some(task) = self.0.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        std::pin::Pin::new(task).poll(cx).map(|joined| {
            joined.unwrap_or_else(|join| {
                Err(Failure::Wasm(wasmtime::Error::msg(format!(
                    "guest task failed: {join}"
                ))))
            })
        })
    }
}

/// Logs the guest's output however the call ends, even when aborted.
struct FlushOutput {
    function: String,
    correlation_id: String,
    stdout: GuestOutput,
    stderr: GuestOutput,
}

impl Drop for FlushOutput {
    fn drop(&mut self) {
        self.stdout
            .flush_to_log(&self.function, &self.correlation_id, "stdout");
        self.stderr
            .flush_to_log(&self.function, &self.correlation_id, "stderr");
    }
}

pub(crate) async fn invoke(
    sealed: Arc<Sealed>,
    request: http::Request<Bytes>,
    invocation: &Invocation,
) -> Result<http::Response<ResponseBody>, InvokeError> {
    let redactions = Redactions::default();
    run(sealed, request, invocation, redactions.clone())
        .await
        .map_err(|e| e.redacted(&redactions))
}

async fn run(
    sealed: Arc<Sealed>,
    mut request: http::Request<Bytes>,
    invocation: &Invocation,
    redactions: Redactions,
) -> Result<http::Response<ResponseBody>, InvokeError> {
    let timeout = sealed.limits.timeout.get();
    let deadline = Instant::now() + timeout;
    let memory_hit = Arc::new(AtomicBool::new(false));
    let flush = FlushOutput {
        function: sealed.name.clone(),
        correlation_id: invocation.correlation_id.clone(),
        stdout: GuestOutput::new(redactions.clone()),
        stderr: GuestOutput::new(redactions.clone()),
    };
    // The call's one context: every capability reports through it, and
    // its events are folded past a per-call budget (T09).
    let call = CallContext::new(
        sealed.name.clone(),
        invocation.correlation_id.clone(),
        invocation.subject.clone(),
        invocation.caller.clone(),
        (sealed.audit.clone(), invocation.audit_tickets.clone()),
        redactions.clone(),
        deadline,
    );
    let state = HostState::new(
        MemoryCap::new(sealed.limits.memory.as_usize(), memory_hit.clone()),
        flush.stdout.clone(),
        flush.stderr.clone(),
        Outbound {
            rules: sealed.outbound.clone(),
            call: call.clone(),
            traceparent: invocation.traceparent.clone(),
            sent: 0,
            bytes: invocation.outbound_bytes.clone(),
            max_bytes: sealed.limits.max_outbound_bytes.bytes(),
        },
        crate::sql::SqlCtx {
            bindings: sealed.sql.clone(),
            call: call.clone(),
            queries: 0,
        },
        CallData {
            plane: sealed.data.clone(),
            grants: sealed.grants.clone(),
            call: call.clone(),
            kv_ops: 0,
            depth: invocation.event_depth,
            chain: invocation.event_chain,
            queue_sent: Default::default(),
        },
    );
    let internal = |e: wasmtime::Error| InvokeError::Internal(format!("{e:#}"));
    let mut store = Store::try_new(sealed.pre.engine(), state).map_err(internal)?;
    store.limiter(|state| &mut state.limits);
    // Every epoch tick the guest yields to the executor, and at the deadline
    // it traps (T01, T05). A CPU-bound guest must not hold a worker thread
    // for its whole run: under overload the gateway could then not even read,
    // shed or refuse new requests, and the backlog would wait, unseen by the
    // throttle, in front of it (issue 11, item 4).
    let mut ticks_left = deadline_ticks(timeout);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        ticks_left = ticks_left.saturating_sub(1);
        Ok(if ticks_left == 0 {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
        })
    });

    let (sender, receiver) = tokio::sync::oneshot::channel();
    // The scheme the client used, as the gateway wrote it into the URI.
    let scheme = match request.uri().scheme_str() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let trailers = request.extensions_mut().remove::<RequestTrailers>();
    let request = request.map(|body| {
        Full::new(body)
            .with_trailers(std::future::ready(trailers.map(|t| Ok(t.0))))
            .map_err(
                |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
            )
    });
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(scheme, request)
        .map_err(internal)?;
    let outparam = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(internal)?;

    let pre = sealed.pre.clone();
    let task = AbortOnDrop::new(tokio::spawn(async move {
        let _flush = flush;
        let run = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, outparam)
                .await
        };
        // Epochs stop busy guests; this stops guests blocked in a host call.
        match tokio::time::timeout_at(deadline, run).await {
            Ok(result) => result.map_err(Failure::Wasm),
            Err(_) => Err(Failure::Deadline),
        }
    }));

    let classify = |failure: Failure| classify(failure, memory_hit.load(Ordering::Relaxed), &call);
    let response = match receiver.await {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return Err(InvokeError::GuestError(format!("{code:?}"))),
        // The guest never called `response-outparam.set`: find out why.
        Err(_) => {
            return Err(match finish(task).await {
                Err(failure) => classify(failure),
                Ok(()) => InvokeError::NoResponse,
            });
        }
    };

    // Only a final status can be a function's answer: an informational one
    // (1xx, a 101 upgrade) or one past 599 is its error (outside attack).
    if !(200..=599).contains(&response.status().as_u16()) {
        return Err(InvokeError::GuestError(format!(
            "it answered with status {}, which is not a final HTTP status",
            response.status().as_u16()
        )));
    }
    let limit = sealed.limits.max_response_body.as_usize();
    let (mut parts, guest_body) = response.into_parts();
    // Secret values read so far never leave in a header (T14).
    redact_fields(&redactions, &mut parts.headers);
    let declared = declared_length(&parts.headers);
    // A length declared over the cap is refused before anything is sent.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(InvokeError::ResponseTooLarge { limit });
    }
    // The declared length goes to the client only when no redaction can
    // change it: a function that may read secrets is sent chunked (T14).
    let exact_length = declared.filter(|&n| n > 0 && sealed.grants.secrets.is_empty());
    let mut stream = Stream::new(
        guest_body,
        Settle {
            task,
            memory_hit,
            call,
            redactions,
        },
        limit,
        exact_length,
    );
    // Take what the guest has already written, without waiting for more: a
    // body complete by now goes out whole, with its length, and its failure
    // still as a problem response. Anything slower streams (item 1), so the
    // head and first bytes go out as soon as the guest writes them.
    let mut whole = Vec::new();
    let mut taken = 0usize;
    let mut trailers = None;
    loop {
        let frame = if stream.body_ended() || !invocation.can_stream {
            // Only the handler's return is awaited: it decides whether the
            // body was whole (a Store dropped mid-body ends it cleanly).
            std::future::poll_fn(|cx| stream.poll_frame(cx)).await
        } else {
            match std::future::poll_fn(|cx| Poll::Ready(stream.poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => break,
            }
        };
        match frame {
            None => {
                let data = if whole.len() == 1 {
                    whole.swap_remove(0)
                } else {
                    Bytes::from(whole.concat())
                };
                return Ok(http::Response::from_parts(
                    parts,
                    ResponseBody::whole(data, trailers),
                ));
            }
            Some(Err(error)) => return Err(error),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    taken += data.len();
                    whole.push(data);
                    if taken >= WHOLE_BYTES && !stream.body_ended() && invocation.can_stream {
                        break;
                    }
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
        }
    }
    stream.put_back(whole);
    Ok(http::Response::from_parts(
        parts,
        ResponseBody::streaming(stream),
    ))
}

/// What the guest wrote before the head is sent, at most, when it keeps
/// writing: the rest streams.
const WHOLE_BYTES: usize = 64 * 1024;

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn finish(mut task: AbortOnDrop) -> Result<(), Failure> {
    std::future::poll_fn(|cx| task.poll_end(cx)).await
}

pub(crate) fn classify(failure: Failure, memory_hit: bool, call: &CallContext) -> InvokeError {
    let error = match failure {
        Failure::Deadline => return InvokeError::Timeout,
        Failure::Wasm(error) => error,
    };
    if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return InvokeError::Capacity;
    }
    // T05: host memory counts against the memory cap too. A guest holding
    // more host resources than the table allows, or building a header map
    // past its size cap, traps in the host; say why.
    let table_full = matches!(
        error.downcast_ref::<ResourceTableError>(),
        Some(ResourceTableError::Full)
    );
    let fields_full = matches!(
        error.downcast_ref::<FieldMapError>(),
        Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields)
    );
    if table_full || fields_full {
        tracing::warn!(
            target: "bulkhead::sandbox",
            function = %call.function(),
            correlation_id = %call.correlation_id(),
            max_resources = crate::host::MAX_RESOURCES,
            max_fields_bytes = crate::host::MAX_FIELDS_BYTES,
            cap = if table_full { "resources" } else { "header map size" },
            "the function held more host memory than its cap and was stopped"
        );
        return InvokeError::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeError::Timeout,
        Some(Trap::StackOverflow) => InvokeError::StackOverflow,
        // A refused growth usually ends in an abort or a trap: name the cause.
        _ if memory_hit => InvokeError::MemoryLimit,
        Some(trap) => InvokeError::Trap(trap.to_string()),
        None => InvokeError::Trap(format!("{error:#}")),
    }
}
