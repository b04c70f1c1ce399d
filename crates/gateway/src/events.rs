//! The trigger runner (issue 18; T01, T04, T05, T08, T09): schedules and
//! queue consumers, run under the controls HTTP calls have.
//!
//! A triggered function stays a plain `wasi:http/incoming-handler`
//! component. The runner calls it in-process, never through the listener
//! (it has no route), with `POST /` and the event in the body; the event's
//! metadata is in headers only the host sets: `bulkhead-event-kind`
//! (`schedule` or `queue`), `bulkhead-event-source` (the function for a
//! schedule, the queue's name for a message), `bulkhead-event-id`,
//! `bulkhead-event-attempt`, `bulkhead-event-depth` and
//! `bulkhead-correlation-id`. A 2xx answer acknowledges a message; any
//! other status, a trap or a timeout fails it: it is retried after a
//! back-off and dead-lettered after the queue's `max_attempts`.
//!
//! Every run is admitted like an HTTP call: its function's timeout and
//! memory cap (the sandbox's), at most its `max_concurrent_requests` at
//! once, today's budgets charged and metered under the caller
//! `trigger:FUNCTION` (T04), one log line per run with the correlation ID,
//! an audit record for each failure, dead letter and budget refusal. A
//! message's run continues the trace of the call that sent it: the same
//! correlation ID on both sides of the hop (T08).
//!
//! - Schedules fire in UTC (cron with seconds, or `every`); while a run
//!   still goes, `overlap = "skip"` skips a firing (counted), `"queue"`
//!   keeps one waiting.
//! - A consumer leases one message per free place, with the queue's
//!   visibility timeout; while the budget refuses, it leases nothing (no
//!   delivery attempt is spent on a refusal).
//! - Stopping: no new firing or lease; runs under way finish (each ends by
//!   its function's timeout). A message leased and not yet settled is
//!   delivered again after its visibility timeout: none is lost, even on
//!   SIGKILL (the queue is durable; an acknowledgement is a commit).
//! - Expired messages are swept per the queues' retention.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bulkhead_manifest::{App, Overlap, Trigger};
use bulkhead_runtime::{DataPlane, Invocation, LoadedFunction};
use bulkhead_store::queue::{Acked, Delivery, Failed, QueueBackend};
use bulkhead_store::{AuditEvent, CallTickets};
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body::Body as _;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::access_log::{self, Level};
use crate::budget::Charge;
use crate::caller::Caller;
use crate::correlation::{CORRELATION_HEADER, TraceContext};
use crate::{Gateway, Shared};

/// An idle consumer looks for new messages this often.
const POLL: Duration = Duration::from_millis(100);
/// A consumer whose budget refuses, or whose queue fails, waits this long.
const PAUSE: Duration = Duration::from_secs(1);
/// Queue gauges (depth, oldest message) are read this often.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Longest failure reason kept in a log line or audit record.
const MAX_REASON: usize = 256;

/// The running triggers of a server, until their stop signal.
pub struct Triggers {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Triggers {
    /// Once the stop signal was given: wait for the runs under way to
    /// finish and settle, then commit their usage (T04).
    pub async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
        if let Some(meter) = &self.shared.current().meter {
            meter.flush();
        }
    }
}

impl Gateway {
    /// Run `app`'s triggered functions (`functions`: loaded, in the order
    /// of `app.triggered`) until `stopped` turns true: from then on nothing
    /// fires and nothing is leased; [`Triggers::finish`] waits for the rest.
    pub fn start_triggers(
        &self,
        app: &App,
        functions: Vec<LoadedFunction>,
        data: Arc<DataPlane>,
        stopped: watch::Receiver<bool>,
    ) -> Triggers {
        let mut tasks = JoinSet::new();
        // T01 (outside review of issue 18): triggered runs share the
        // host's live-instance pool with HTTP calls; long consumers filled
        // it and every HTTP call got 503 `capacity`. Together they take at
        // most half of it, so HTTP calls always have the rest.
        let pool = Arc::new(Semaphore::new(triggered_share(app.limits.max_instances)));
        let _ = self.shared.trigger_digests.set(
            functions
                .iter()
                .map(|f| (f.name().to_string(), f.digest()))
                .collect(),
        );
        for (triggered, function) in app.triggered.iter().zip(functions) {
            let unit = Arc::new(Unit {
                shared: self.shared.clone(),
                caller: Caller::internal(&triggered.trigger.caller(&triggered.function.name)),
                function,
                refusing: AtomicBool::new(false),
                pool: pool.clone(),
            });
            match &triggered.trigger {
                Trigger::Schedule { schedule, overlap } => {
                    let timing = Timing::Cron(schedule.clone());
                    tasks.spawn(run_schedule(unit, timing, *overlap, stopped.clone()));
                }
                Trigger::Every { period, overlap } => {
                    let timing = Timing::Every(period.get());
                    tasks.spawn(run_schedule(unit, timing, *overlap, stopped.clone()));
                }
                Trigger::Queue { queue } => match &data.queue {
                    Some(backend) => {
                        tasks.spawn(consume(
                            unit,
                            backend.clone(),
                            queue.clone(),
                            stopped.clone(),
                        ));
                    }
                    None => {
                        warn!(target: "bulkhead::events", function = %triggered.function.name, "no queue store is open: the consumer does not run")
                    }
                },
            }
        }
        if let Some(backend) = &data.queue {
            let sweep_every = app
                .queues
                .iter()
                .map(|q| q.retention.get() / 2)
                .min()
                .unwrap_or(Duration::from_secs(60))
                .clamp(Duration::from_secs(1), Duration::from_secs(60));
            tasks.spawn(housekeeping(
                self.shared.clone(),
                backend.clone(),
                data.clone(),
                sweep_every,
                stopped.clone(),
            ));
        }
        info!(target: "bulkhead::events", triggers = app.triggered.len(), queues = app.queues.len(), "triggers running");
        Triggers {
            shared: self.shared.clone(),
            tasks,
        }
    }
}

/// One triggered function, as the runner calls it.
struct Unit {
    shared: Arc<Shared>,
    /// `trigger:FUNCTION`: metered, budgeted and audited under this key.
    caller: Caller,
    function: LoadedFunction,
    /// Its budget refuses it now: the refusal was logged and audited once
    /// (T09: a refused schedule or consumer does not flood the trail).
    refusing: AtomicBool,
    /// The triggered runs' share of the instance pool, shared by every
    /// triggered function ([`triggered_share`]).
    pool: Arc<Semaphore>,
}

/// How many instances triggered runs may hold at once: half of the
/// host's live-instance pool (at least one), the rest kept for HTTP (T01).
fn triggered_share(max_instances: u32) -> usize {
    usize::try_from(max_instances / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// One event handed to a function.
/// Why a triggered run did not answer.
struct RunFailed {
    why: String,
    /// No instance slot was free: the function never ran.
    no_capacity: bool,
}

/// How long a message waits after its delivery found no instance slot.
const NO_CAPACITY_RETRY_MS: i64 = 1_000;

struct Event {
    kind: &'static str,
    source: String,
    id: String,
    attempt: u32,
    depth: u32,
    trace: TraceContext,
    body: Bytes,
    content_type: &'static str,
    /// When it was due (the firing's planned time, the message's enqueue
    /// time), ms since the epoch: the run's log line says how late it
    /// started (`lag_ms`: enqueue to handler start, a schedule's jitter).
    due_ms: i64,
    /// The causal chain a message belongs to; a schedule run starts one.
    chain: Option<[u8; 16]>,
}

impl Unit {
    fn name(&self) -> &str {
        self.function.name()
    }

    /// Today's budgets (T04), as for an HTTP call of this function.
    async fn admit(&self) -> Result<Option<Charge>, String> {
        let version = self.shared.current();
        let Some(meter) = &version.meter else {
            return Ok(None);
        };
        let Some(index) = meter.index_of(self.name()) else {
            return Err("the function is not part of the version being served".into());
        };
        let admitted = meter
            .admit(index, &self.caller)
            .await
            .map(Some)
            .map_err(|e| e.describe().to_string());
        if admitted.is_ok() {
            self.refusing.store(false, Ordering::Relaxed);
        }
        admitted
    }

    /// A budget refusal: logged and audited, once until admitted again.
    fn refused(&self, kind: &str, source: &str, why: &str) {
        if self.refusing.swap(true, Ordering::Relaxed) {
            return;
        }
        warn!(target: "bulkhead::events", function = %self.name(), event_kind = kind, event_source = source, reason = "budget-exhausted", detail = why, "a triggered run was refused by its budget");
        self.shared.audit.record_from(
            self.caller.key(),
            AuditEvent::new("event.refused")
                .function(self.name())
                .detail("event_kind", kind)
                .detail("event_source", source)
                .detail("reason", "budget-exhausted")
                .detail("detail", why),
        );
    }

    /// Run the function on `event`: its status, or why it failed.
    async fn run(&self, event: &Event, charge: Option<Charge>) -> Result<u16, RunFailed> {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let lag_ms = now_ms().saturating_sub(event.due_ms).max(0);
        let invocation = Invocation {
            correlation_id: event.trace.correlation_id().to_string(),
            traceparent: event.trace.traceparent(),
            outbound_bytes: Arc::default(),
            subject: None,
            caller: self.caller.key(),
            can_stream: false,
            audit_tickets: CallTickets::default(),
            event_depth: event.depth,
            event_chain: event.chain,
        };
        let mut charge = charge;
        if let Some(charge) = charge.as_mut() {
            charge.start(
                self.function.limits().memory.bytes() >> 20,
                event.body.len() as u64,
                invocation.outbound_bytes.clone(),
            );
        }
        let outcome = match self.request(event) {
            Ok(request) => match self.function.invoke(request, &invocation).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let sent = response.body().size_hint().exact().unwrap_or(0);
                    if let Some(charge) = charge.take() {
                        charge.finish(sent);
                    }
                    Ok(status)
                }
                Err(error) => Err(RunFailed {
                    no_capacity: matches!(error, bulkhead_runtime::InvokeError::Capacity),
                    why: error.to_string(),
                }),
            },
            Err(why) => Err(RunFailed {
                no_capacity: false,
                why,
            }),
        };
        if let Some(charge) = charge {
            charge.finish(0);
        }
        let elapsed = started.elapsed();
        let (level, status, detail) = match &outcome {
            Ok(status) if (200..300).contains(status) => (Level::Info, *status, ""),
            Ok(status) => (
                Level::Warn,
                *status,
                "the function answered a non-2xx status",
            ),
            Err(failed) => (Level::Warn, 0, failed.why.as_str()),
        };
        let detail = bounded(detail);
        access_log::write(level, "event", started_at + elapsed, |line| {
            line.str("correlation_id", event.trace.correlation_id())
                .str("function", self.name())
                .str("caller", &self.caller.key())
                .str("event_kind", event.kind)
                .str("event_source", &event.source)
                .str("event_id", &event.id)
                .num("attempt", event.attempt.into())
                .num("depth", event.depth.into())
                .num("lag_ms", u64::try_from(lag_ms).unwrap_or(0))
                .num("status", status.into())
                .float("duration_ms", elapsed.as_secs_f64() * 1000.0);
            if !detail.is_empty() {
                line.str("detail", &detail);
            }
        });
        outcome
    }

    /// `POST /` with the event, its metadata in `bulkhead-*` headers.
    fn request(&self, event: &Event) -> Result<Request<Bytes>, String> {
        let mut request = Request::builder()
            .method(http::Method::POST)
            .uri("http://localhost/")
            .body(event.body.clone())
            .map_err(|e| format!("cannot build the event request: {e}"))?;
        let headers = request.headers_mut();
        let text = |value: &str| {
            HeaderValue::from_str(value).map_err(|_| "an event header is not valid".to_string())
        };
        headers.insert(http::header::CONTENT_TYPE, text(event.content_type)?);
        headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(event.body.len()),
        );
        headers.insert("bulkhead-event-kind", text(event.kind)?);
        headers.insert("bulkhead-event-source", text(&event.source)?);
        headers.insert("bulkhead-event-id", text(&event.id)?);
        headers.insert("bulkhead-event-attempt", HeaderValue::from(event.attempt));
        headers.insert("bulkhead-event-depth", HeaderValue::from(event.depth));
        headers.insert(CORRELATION_HEADER, text(event.trace.correlation_id())?);
        headers.insert("traceparent", text(&event.trace.traceparent())?);
        Ok(request)
    }

    /// An audit record of a run that did not succeed.
    fn audit_failure(&self, kind: &str, event: &Event, reason: &str, extra: Option<(&str, &str)>) {
        let mut record = AuditEvent::new(kind)
            .function(self.name())
            .correlation_id(event.trace.correlation_id())
            .detail("event_kind", event.kind)
            .detail("event_source", event.source.as_str())
            .detail("event_id", event.id.as_str())
            .detail("attempt", event.attempt)
            .detail("depth", event.depth)
            .detail("reason", bounded(reason));
        if let Some((key, value)) = extra {
            record = record.detail(key, value);
        }
        self.shared.audit.record_from(self.caller.key(), record);
    }
}

/// `text` cut to [`MAX_REASON`] characters, control characters replaced
/// (T07: guests choose some of it).
fn bounded(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .take(MAX_REASON)
        .collect()
}

fn now_ms() -> i64 {
    bulkhead_store::now_ms()
}

fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Until the runner is told to stop.
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Sleep `wait`; `false` if told to stop meanwhile.
async fn pause(wait: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = stopping(stopped) => false,
    }
}

enum Timing {
    Cron(Box<bulkhead_manifest::triggers::Schedule>),
    Every(Duration),
}

impl Timing {
    /// The firing after `after_ms` (ms since the epoch, UTC).
    fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Timing::Cron(schedule) => schedule.next_after_ms(after_ms),
            Timing::Every(period) => {
                let period = i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1);
                Some(after_ms.saturating_add(period))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Timing::Cron(schedule) => schedule.as_str().to_string(),
            Timing::Every(period) => format!("every {}", humantime::format_duration(*period)),
        }
    }
}

/// Fire `unit` on `timing` until stopped; a firing while a run goes is
/// skipped or kept waiting (at most one), as `overlap` says.
async fn run_schedule(
    unit: Arc<Unit>,
    timing: Timing,
    overlap: Overlap,
    mut stopped: watch::Receiver<bool>,
) {
    let running = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Notify::new());
    let mut waiting = false;
    let mut runs = JoinSet::new();
    let mut next = timing.next_after(now_ms());
    let schedule = timing.describe();
    loop {
        let Some(at) = next else {
            info!(target: "bulkhead::events", function = %unit.name(), "the schedule fires no more");
            stopping(&mut stopped).await;
            break;
        };
        let wait = Duration::from_millis(u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0));
        tokio::select! {
            () = stopping(&mut stopped) => break,
            () = tokio::time::sleep(wait) => {
                // A server that fell behind fires once, not once per miss.
                next = timing.next_after(at.max(now_ms()));
                if running.load(Ordering::SeqCst) {
                    if overlap == Overlap::Queue && !waiting {
                        waiting = true;
                    } else {
                        unit.shared.metrics.events.skipped(unit.name());
                        info!(target: "bulkhead::events", function = %unit.name(), schedule = %schedule, reason = "overlap-skip", "a firing was skipped: the previous run still goes");
                    }
                } else {
                    running.store(true, Ordering::SeqCst);
                    runs.spawn(fire(unit.clone(), schedule.clone(), at, running.clone(), done.clone()));
                }
            }
            () = done.notified() => {
                while runs.try_join_next().is_some() {}
                if waiting && !running.load(Ordering::SeqCst) {
                    waiting = false;
                    running.store(true, Ordering::SeqCst);
                    runs.spawn(fire(unit.clone(), schedule.clone(), now_ms(), running.clone(), done.clone()));
                }
            }
        }
    }
    while runs.join_next().await.is_some() {}
}

/// One run of a schedule.
async fn fire(
    unit: Arc<Unit>,
    schedule: String,
    at_ms: i64,
    running: Arc<AtomicBool>,
    done: Arc<Notify>,
) {
    let id = random_id();
    let scheduled_at =
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    let body = serde_json::json!({
        "kind": "schedule",
        "function": unit.name(),
        "schedule": schedule,
        "scheduled_at": humantime::format_rfc3339_millis(scheduled_at).to_string(),
    });
    let event = Event {
        kind: "schedule",
        source: unit.name().to_string(),
        id,
        attempt: 1,
        depth: 0,
        trace: TraceContext::fresh(),
        body: Bytes::from(body.to_string()),
        content_type: "application/json",
        due_ms: at_ms,
        chain: None,
    };
    // A closed pool cannot happen (it is never closed); run without it then.
    let _instance = unit.pool.clone().acquire_owned().await.ok();
    match unit.admit().await {
        Ok(charge) => {
            unit.shared.metrics.events.fired(unit.name());
            match unit.run(&event, charge).await {
                Ok(status) if (200..300).contains(&status) => {}
                Ok(status) => unit.audit_failure(
                    "event.failed",
                    &event,
                    &format!("the function answered {status}"),
                    None,
                ),
                Err(failed) => unit.audit_failure("event.failed", &event, &failed.why, None),
            }
        }
        Err(why) => unit.refused("schedule", unit.name(), &why),
    }
    running.store(false, Ordering::SeqCst);
    done.notify_one();
}

/// Lease and deliver `queue`'s messages to `unit` until stopped, at most
/// its `max_concurrent_requests` at once.
async fn consume(
    unit: Arc<Unit>,
    backend: Arc<dyn QueueBackend>,
    queue: String,
    mut stopped: watch::Receiver<bool>,
) {
    let places = Arc::new(Semaphore::new(
        usize::try_from(unit.function.limits().max_concurrent_requests.max(1)).unwrap_or(1),
    ));
    let mut running = JoinSet::new();
    loop {
        while running.try_join_next().is_some() {}
        let place = tokio::select! {
            place = places.clone().acquire_owned() => place,
            () = stopping(&mut stopped) => break,
        };
        let Ok(place) = place else { break };
        let instance = tokio::select! {
            instance = unit.pool.clone().acquire_owned() => instance,
            () = stopping(&mut stopped) => break,
        };
        let Ok(instance) = instance else { break };
        let place = (place, instance);
        if *stopped.borrow() {
            break;
        }
        // T04: charged before a lease, so a refusal spends no attempt.
        let charge = match unit.admit().await {
            Ok(charge) => charge,
            Err(why) => {
                unit.refused("queue", &queue, &why);
                drop(place);
                if !pause(PAUSE, &mut stopped).await {
                    break;
                }
                continue;
            }
        };
        let leased = {
            let (backend, queue) = (backend.clone(), queue.clone());
            tokio::task::spawn_blocking(move || backend.lease(&queue, 1)).await
        };
        let delivery = match leased {
            Ok(Ok(mut found)) if !found.is_empty() => found.swap_remove(0),
            Ok(Ok(_)) => {
                drop((charge, place));
                if !pause(POLL, &mut stopped).await {
                    break;
                }
                continue;
            }
            Ok(Err(e)) => {
                warn!(target: "bulkhead::events", queue = %queue, error = %e, "cannot lease from the queue");
                drop((charge, place));
                if !pause(PAUSE, &mut stopped).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                warn!(target: "bulkhead::events", queue = %queue, error = %e, "the lease failed");
                drop((charge, place));
                if !pause(PAUSE, &mut stopped).await {
                    break;
                }
                continue;
            }
        };
        let (unit, backend) = (unit.clone(), backend.clone());
        running.spawn(async move {
            let _place = place;
            deliver(&unit, backend, delivery, charge).await;
        });
    }
    // In-flight deliveries finish and settle (each within its timeout).
    while running.join_next().await.is_some() {}
}

/// Run one message and settle it: acknowledged on a 2xx, failed otherwise.
async fn deliver(
    unit: &Unit,
    backend: Arc<dyn QueueBackend>,
    delivery: Delivery,
    charge: Option<Charge>,
) {
    let Delivery {
        lease,
        queue,
        payload,
        correlation_id,
        depth,
        attempt,
        enqueued_ms,
        chain,
        ..
    } = delivery;
    let event = Event {
        kind: "queue",
        source: queue.clone(),
        id: lease.id.to_string(),
        attempt,
        depth,
        trace: TraceContext::continuing(&correlation_id),
        body: Bytes::copy_from_slice(&payload),
        content_type: "application/octet-stream",
        due_ms: enqueued_ms,
        chain: Some(chain),
    };
    drop(payload);
    let outcome = unit.run(&event, charge).await;
    let metrics = &unit.shared.metrics.events;
    let reason = match outcome {
        Ok(status) if (200..300).contains(&status) => {
            metrics.delivered(&queue, "acked");
            let acked = tokio::task::spawn_blocking(move || backend.ack(&lease)).await;
            match acked {
                Ok(Ok(Acked::Deleted)) => {}
                Ok(Ok(Acked::Stale)) => {
                    warn!(target: "bulkhead::events", function = %unit.name(), queue = %queue, correlation_id = %event.trace.correlation_id(), event_id = %event.id, "acknowledged after its lease ended: the message may be delivered again");
                }
                Ok(Err(e)) => {
                    warn!(target: "bulkhead::events", queue = %queue, error = %e, event_id = %event.id, "cannot acknowledge: the message will be delivered again");
                }
                Err(e) => {
                    warn!(target: "bulkhead::events", queue = %queue, error = %e, event_id = %event.id, "cannot acknowledge: the message will be delivered again");
                }
            }
            return;
        }
        Ok(status) => format!("the function answered {status}"),
        // The host had no instance slot (its live-instance cap, shared
        // with HTTP): the message never reached the function, so it goes
        // back without spending an attempt (outside review of issue 18:
        // healthy messages were dead-lettered by a busy host), delivered
        // again after a second.
        Err(failed) if failed.no_capacity => {
            metrics.delivered(&queue, "no-capacity");
            let released =
                tokio::task::spawn_blocking(move || backend.release(&lease, NO_CAPACITY_RETRY_MS))
                    .await;
            match released {
                Ok(Ok(_)) => {
                    debug!(target: "bulkhead::events", function = %unit.name(), queue = %queue, event_id = %event.id, "no instance slot was free: the message goes back, its attempt not counted");
                }
                Ok(Err(e)) => {
                    warn!(target: "bulkhead::events", queue = %queue, error = %e, event_id = %event.id, "cannot give the message back: it is delivered again after its visibility timeout");
                }
                Err(e) => {
                    warn!(target: "bulkhead::events", queue = %queue, error = %e, event_id = %event.id, "cannot give the message back: it is delivered again after its visibility timeout");
                }
            }
            return;
        }
        Err(failed) => failed.why,
    };
    metrics.delivered(&queue, "failed");
    let failed = {
        let reason = bounded(&reason);
        tokio::task::spawn_blocking(move || backend.fail(&lease, &reason)).await
    };
    match failed {
        Ok(Ok(Failed::Retry { at_ms })) => {
            metrics.retried(&queue);
            let retry_in_ms = at_ms.saturating_sub(now_ms()).max(0).to_string();
            unit.audit_failure(
                "event.failed",
                &event,
                &reason,
                Some(("retry_in_ms", retry_in_ms.as_str())),
            );
        }
        Ok(Ok(Failed::DeadLettered { to })) => {
            metrics.dead_lettered(&queue);
            warn!(target: "bulkhead::events", function = %unit.name(), queue = %queue, dead_letter = %to, correlation_id = %event.trace.correlation_id(), event_id = %event.id, attempt, "a message failed its last delivery: dead-lettered");
            unit.audit_failure(
                "event.dead_lettered",
                &event,
                &reason,
                Some(("dead_letter", to.as_str())),
            );
        }
        Ok(Ok(Failed::Parked)) => {
            metrics.dead_lettered(&queue);
            warn!(target: "bulkhead::events", function = %unit.name(), queue = %queue, correlation_id = %event.trace.correlation_id(), event_id = %event.id, attempt, "a message failed its last delivery: parked in its queue (it has no dead-letter queue)");
            unit.audit_failure(
                "event.dead_lettered",
                &event,
                &reason,
                Some(("dead_letter", "parked")),
            );
        }
        Ok(Ok(Failed::Stale)) => {}
        Ok(Err(e)) => {
            warn!(target: "bulkhead::events", queue = %queue, error = %e, "cannot record the failure: the message is delivered again after its visibility timeout");
        }
        Err(e) => {
            warn!(target: "bulkhead::events", queue = %queue, error = %e, "cannot record the failure: the message is delivered again after its visibility timeout");
        }
    }
}

/// Queue gauges every second; expired messages swept every `sweep_every`.
async fn housekeeping(
    shared: Arc<Shared>,
    backend: Arc<dyn QueueBackend>,
    data: Arc<DataPlane>,
    sweep_every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last_sweep: Option<Instant> = None;
    loop {
        let sweep = last_sweep.is_none_or(|at| at.elapsed() >= sweep_every);
        if sweep {
            last_sweep = Some(Instant::now());
        }
        let backend = backend.clone();
        let read = tokio::task::spawn_blocking(move || {
            let swept = if sweep { Some(backend.sweep()) } else { None };
            (swept, backend.stats())
        })
        .await;
        let metrics = &shared.metrics.events;
        metrics.set_depth_exceeded(data.depth_exceeded.load(Ordering::Relaxed));
        metrics.set_chain_exhausted(data.chain_exhausted.load(Ordering::Relaxed));
        if let Ok((swept, stats)) = read {
            match swept {
                Some(Ok(0)) | None => {}
                Some(Ok(deleted)) => {
                    info!(target: "bulkhead::retention", deleted, "expired queue messages deleted")
                }
                Some(Err(e)) => {
                    warn!(target: "bulkhead::retention", error = %e, "queue sweep failed")
                }
            }
            match stats {
                Ok(stats) => {
                    let now = now_ms();
                    for q in stats {
                        let depth = q.ready + q.in_flight + q.delayed + q.parked;
                        let age = q
                            .oldest_enqueued_ms
                            .map_or(0.0, |at| (now.saturating_sub(at)).max(0) as f64 / 1000.0);
                        metrics.set_queue(&q.name, depth, age);
                    }
                }
                Err(e) => {
                    warn!(target: "bulkhead::events", error = %e, "cannot read the queues' counts")
                }
            }
        }
        if !pause(STATS_EVERY, &mut stopped).await {
            break;
        }
    }
}
