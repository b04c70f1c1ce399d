//! The `bulkhead:queue/producer` capability (issue 18; T01, T04, T14,
//! T16): the host side of `wit/queue/producer.wit`.
//!
//! - `send(queue, body)` runs only if the function's grants name the queue
//!   (`grants = { queues = { NAME = "send" } }`); anything else is
//!   `not-granted` (an undeclared queue looks the same as an ungranted
//!   one) and audited as `capability.denied`.
//! - Bounded per call by the grant (messages and bytes, T04: one call
//!   cannot flood a queue) and per message by the queue's
//!   `max_message_bytes` (T01).
//! - Each message is sealed at rest like a key-value value (T14), carries
//!   the sender's correlation ID (one trace across the hop, T08) and its
//!   causal depth: the sender's plus one (an HTTP call's is 0).
//! - Loops (T04): a message whose depth would pass `max_event_depth` is
//!   not delivered: it goes straight to the queue's dead-letter queue (or
//!   is parked in the queue when it has none), logged, audited and counted
//!   (`bulkhead_event_depth_exceeded_total`). The sender is told `ok`: the
//!   message is kept, and an error would only make a consumer fail and
//!   retry its own message, running the loop a few more times.
//! - One `capability.used` record per queue per call; the body never
//!   appears in logs or audit records.

use bulkhead_store::queue::{Failed, NewMessage, QueueError};
use tracing::warn;
use wasmtime::component::{HasData, Linker};

use crate::call::Target;
use crate::host::HostState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/queue",
        world: "bulkhead:queue/imports",
        imports: { default: async },
    });
}

use bindings::bulkhead::queue::producer::{self, Error};

struct QueueCapability;

impl HasData for QueueCapability {
    type Data<'a> = &'a mut HostState;
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    producer::add_to_linker::<HostState, QueueCapability>(linker, |s| s)
}

/// A guest-chosen queue name, safe to log.
fn loggable(name: &str) -> &str {
    if bulkhead_manifest::stores::valid_resource_name(name) {
        name
    } else {
        "(not a valid queue name)"
    }
}

impl producer::Host for HostState {
    async fn send(&mut self, queue: String, body: Vec<u8>) -> Result<(), Error> {
        let shown = loggable(&queue).to_string();
        let data = &mut self.data;
        let Some(grant) = data.grants.queues.get(&queue).copied() else {
            data.call
                .deny("queue", Target::Resource(&shown), "no grant for this queue");
            return Err(Error::NotGranted);
        };
        let Some(backend) = data.plane.queue.clone() else {
            data.backend_failure("queue", &shown, "no queue store is open");
            return Err(Error::Unavailable);
        };
        // T04: the grant's cap per call, counted before anything is stored.
        let size = u64::try_from(body.len()).unwrap_or(u64::MAX);
        let (messages, bytes) = data.queue_sent.get(&queue).copied().unwrap_or((0, 0));
        if messages >= grant.max_messages_per_call
            || bytes.saturating_add(size) > grant.max_bytes_per_call.bytes()
        {
            data.call.deny(
                "queue",
                Target::Resource(&shown),
                "over the grant's cap of messages or bytes per call",
            );
            return Err(Error::CapReached);
        }
        let depth = data.depth.saturating_add(1);
        // T04: a call that handles no message starts a chain of its own,
        // drawn by the host: a client or a guest can neither pick it nor
        // reset it.
        let chain = match data.chain {
            Some(chain) => chain,
            None => {
                let Ok(chain) = bulkhead_store::files::random_bytes::<16>() else {
                    data.backend_failure("queue", &shown, "no randomness for a chain id");
                    return Err(Error::Unavailable);
                };
                data.chain = Some(chain);
                chain
            }
        };
        let correlation_id = data.call.correlation_id().to_string();
        let name = queue.clone();
        let enqueue = tokio::task::spawn_blocking(move || {
            let message = NewMessage {
                payload: &body,
                correlation_id: &correlation_id,
                depth,
                chain,
            };
            match backend.enqueue(&name, message) {
                Ok(_) => Sent::Stored,
                // T04: a chain too deep or that has sent its fill is
                // stopped here, kept as a dead letter with why.
                Err(stop @ (QueueError::TooDeep { .. } | QueueError::ChainExhausted { .. })) => {
                    let went = match backend.dead_letter_refused(&name, message, &stop.to_string())
                    {
                        Ok(Failed::DeadLettered { to }) => format!("dead-lettered to `{to}`"),
                        Ok(_) => "parked in its queue, undelivered".to_string(),
                        Err(e) => format!("not kept ({e})"),
                    };
                    Sent::Stopped { stop, went }
                }
                Err(e) => Sent::Refused(Box::new(e)),
            }
        });
        let outcome = match enqueue.await {
            Ok(outcome) => outcome,
            Err(e) => {
                data.backend_failure("queue", &shown, &e.to_string());
                return Err(Error::Unavailable);
            }
        };
        let counted = |data: &mut crate::data::CallData| {
            let entry = data.queue_sent.entry(queue.clone()).or_insert((0, 0));
            entry.0 = entry.0.saturating_add(1);
            entry.1 = entry.1.saturating_add(size);
        };
        match outcome {
            Sent::Stored => {
                counted(data);
                data.used_once("queue", &shown, "send");
                Ok(())
            }
            Sent::Stopped { stop, went } => {
                counted(data);
                let (counter, reason, denial) = match stop {
                    QueueError::TooDeep { .. } => (
                        &data.plane.depth_exceeded,
                        "event-depth-exceeded",
                        "event-depth-exceeded: the chain of events is deeper than max_event_depth; the message was dead-lettered, not delivered",
                    ),
                    _ => (
                        &data.plane.chain_exhausted,
                        "event-chain-exhausted",
                        "event-chain-exhausted: the chain of events has sent max_event_messages; the message was dead-lettered, not delivered",
                    ),
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (depth, max) = match stop {
                    QueueError::TooDeep { depth, max } => (Some(depth), max),
                    QueueError::ChainExhausted { max } => (None, max),
                    _ => (None, 0),
                };
                warn!(
                    target: "bulkhead::events",
                    function = %data.call.function(),
                    correlation_id = %data.call.correlation_id(),
                    queue = %shown,
                    depth,
                    max,
                    outcome = %went,
                    reason,
                    "a chain of events was stopped at its bound (T04): {stop}"
                );
                data.call.deny("queue", Target::Resource(&shown), denial);
                Ok(())
            }
            Sent::Refused(e) => match *e {
                QueueError::TooLarge { .. } => {
                    data.call.deny(
                        "queue",
                        Target::Resource(&shown),
                        "message over the queue's max_message_bytes",
                    );
                    Err(Error::TooLarge)
                }
                QueueError::UnknownQueue(_) => {
                    data.call.deny(
                        "queue",
                        Target::Resource(&shown),
                        "the queue is not declared",
                    );
                    Err(Error::NotGranted)
                }
                e => {
                    data.backend_failure("queue", &shown, &e.to_string());
                    Err(Error::Unavailable)
                }
            },
        }
    }
}

/// What an enqueue came to, off the async runtime.
enum Sent {
    Stored,
    /// T04: stopped at `max_event_depth` or `max_event_messages`;
    /// `went` says where it was kept.
    Stopped {
        stop: QueueError,
        went: String,
    },
    Refused(Box<QueueError>),
}
