//! What the capability modules (`kv`, `config`) share: the app's data
//! plane (backends, declared stores, config) and, per call, who is calling
//! with which grants. Denials and uses are reported through the call's
//! one reporter (`call.rs`), folded past a per-call budget (T09, T16).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bulkhead_manifest::stores::valid_resource_name;
use bulkhead_manifest::{Grants, StoreSpec};
use bulkhead_store::State;
use bulkhead_store::kv::Kv;
use bulkhead_store::queue::{QueueLimits, QueueSettings, SharedQueue, SystemClock};
use bulkhead_store::secrets::{Secrets, SharedSecrets};
use secrecy::{ExposeSecret, SecretString};

use crate::call::{CallContext, Kind, Outcome, Report, Target};

/// The app's data backends, shared by every call.
pub struct DataPlane {
    pub kv: Option<Arc<Kv>>,
    pub(crate) secrets: Option<SecretSource>,
    pub stores: Arc<[StoreSpec]>,
    pub config: Arc<BTreeMap<String, String>>,
    /// The app's queues (issue 18), when it declares any.
    pub queue: Option<SharedQueue>,
    /// Messages stopped at `max_event_depth` (T04), for the metric.
    pub depth_exceeded: AtomicU64,
    /// Messages stopped at `max_event_messages` (T04), for the metric.
    pub chain_exhausted: AtomicU64,
}

pub(crate) struct SecretSource {
    pub secrets: Secrets,
    pub backend: SharedSecrets,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Crypto(#[from] bulkhead_store::crypto::CryptoError),
    #[error(transparent)]
    Kv(#[from] bulkhead_store::kv::KvError),
    #[error(transparent)]
    Store(#[from] bulkhead_store::StoreError),
    #[error(transparent)]
    Queue(#[from] bulkhead_store::queue::QueueError),
}

impl DataPlane {
    /// Nothing stored: no stores, no secrets, no config.
    pub fn empty() -> Self {
        Self {
            kv: None,
            secrets: None,
            stores: Arc::from(Vec::new()),
            config: Arc::new(BTreeMap::new()),
            queue: None,
            depth_exceeded: AtomicU64::new(0),
            chain_exhausted: AtomicU64::new(0),
        }
    }

    /// Open the backends `app` needs. The master key is loaded only when
    /// the app declares a key-value store or grants a secret, so an app
    /// without either runs anywhere without one.
    pub fn open(app: &bulkhead_manifest::App, state: &State) -> Result<Self, DataError> {
        let needs_kv = app.stores.iter().any(StoreSpec::is_kv);
        // Triggered functions' grants too (issue 18).
        let needs_secrets = app.all_functions().any(|f| !f.grants.secrets.is_empty());
        let needs_queue = !app.queues.is_empty();
        let mut plane = Self::empty();
        plane.stores = app.stores.clone().into();
        plane.config = Arc::new(app.config.clone());
        if !needs_kv && !needs_secrets && !needs_queue {
            return Ok(plane);
        }
        let keyring = Arc::new(state.keyring(&app.env)?);
        if needs_kv {
            plane.kv = Some(Arc::new(Kv::new(state.kv()?, keyring.clone())));
        }
        if needs_queue {
            plane.queue = Some(open_queue(app, state, &keyring)?);
        }
        if needs_secrets {
            plane.secrets = Some(SecretSource {
                secrets: Secrets::new(keyring),
                backend: state.secrets()?,
            });
        }
        Ok(plane)
    }
}

/// The app's queues (issue 18) with the manifest's bounds, where `state`
/// keeps them ([`State::queue`]: the state database, or PostgreSQL on a
/// cluster, `FOR UPDATE SKIP LOCKED`); messages sealed under a data key of
/// `keyring` (T14). The server and `bulkhead queue` open them the same way.
pub fn open_queue(
    app: &bulkhead_manifest::App,
    state: &State,
    keyring: &bulkhead_store::crypto::Keyring,
) -> Result<SharedQueue, DataError> {
    let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let queues = app
        .queues
        .iter()
        .map(|q| QueueSettings {
            name: q.name.clone(),
            retention_ms: millis(q.retention.get()),
            max_message_bytes: q.max_message_bytes.as_usize(),
            max_attempts: q.max_attempts,
            visibility_timeout_ms: millis(q.visibility_timeout.get()),
            dead_letter: q.dead_letter.clone(),
        })
        .collect();
    let limits = QueueLimits {
        max_event_depth: app.limits.max_event_depth,
        max_chain_messages: app.limits.max_event_messages,
        ..QueueLimits::default()
    };
    Ok(state.queue(keyring, queues, limits, Arc::new(SystemClock))?)
}

/// Secret values read during one call: redacted from its output and from
/// the errors the gateway logs for it (T14).
#[derive(Clone, Default)]
pub(crate) struct Redactions(Arc<Mutex<Vec<SecretString>>>);

pub(crate) const REDACTED: &str = "[REDACTED]";

impl Redactions {
    pub fn add(&self, value: SecretString) {
        if value.expose_secret().is_empty() {
            return;
        }
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !list
            .iter()
            .any(|v| v.expose_secret() == value.expose_secret())
        {
            list.push(value);
        }
    }

    /// `text` with every secret value replaced by `[REDACTED]`.
    pub fn apply(&self, text: &str) -> String {
        self.replace(text, |v| Cow::Borrowed(v))
    }

    /// Like [`Self::apply`] for text cut off at a cap: a secret cut in two
    /// leaves its beginning at the very end, which is redacted too (at
    /// worst a few innocent characters with it).
    pub fn apply_cut(&self, text: &str) -> String {
        let mut out = self.apply(text.trim_end_matches(char::REPLACEMENT_CHARACTER));
        let list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let cut = list
            .iter()
            .filter_map(|value| {
                let value = value.expose_secret();
                (1..value.len())
                    .rev()
                    .find(|&k| value.is_char_boundary(k) && out.ends_with(&value[..k]))
            })
            .max();
        if let Some(len) = cut {
            out.truncate(out.len() - len);
            out.push_str(REDACTED);
        }
        out
    }

    /// Like [`Self::apply`] for text that was lowercased (a URL's host):
    /// each secret is matched lowercased too.
    pub fn apply_lowercase(&self, text: &str) -> String {
        self.replace(text, |v| Cow::Owned(v.to_ascii_lowercase()))
    }

    /// `text` with each secret, in the `form` it would take there, replaced.
    fn replace(&self, text: &str, form: impl for<'a> Fn(&'a str) -> Cow<'a, str>) -> String {
        let list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Longest first, so a secret containing another is replaced whole.
        let mut values: Vec<Cow<'_, str>> = list.iter().map(|v| form(v.expose_secret())).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for value in &values {
            if out.contains(value.as_ref()) {
                out = out.replace(value.as_ref(), REDACTED);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many values were read; the list only ever grows during a call.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `f` over the values read so far, in the order they were read.
    pub fn with_values<R>(&self, f: impl FnOnce(&[SecretString]) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Per call: who calls, with which grants, and where to report.
pub(crate) struct CallData {
    pub plane: Arc<DataPlane>,
    pub grants: Arc<Grants>,
    /// The call's identity and its one reporter (folded per call, T09).
    pub call: CallContext,
    /// Key-value operations so far in this call.
    pub kv_ops: usize,
    /// The causal depth of the event this call handles (0 for HTTP, T04).
    pub depth: u32,
    /// The causal chain this call's sends count in (T04): the message's,
    /// or one drawn at the call's first send.
    pub chain: Option<[u8; 16]>,
    /// Messages and bytes sent so far per queue in this call (T04).
    pub queue_sent: BTreeMap<String, (u32, u64)>,
}

/// A guest-chosen name, safe to log: only a valid resource name is kept.
fn loggable(name: &str) -> &str {
    if name.is_empty() || valid_resource_name(name) {
        name
    } else {
        "<invalid name>"
    }
}

impl CallData {
    /// A refused capability use: logged and audited, never the key or value.
    pub fn deny(&self, capability: &'static str, resource: &str, reason: &str) {
        self.call
            .deny(capability, Target::Resource(loggable(resource)), reason);
    }

    /// A granted use: logged and audited.
    pub fn used(&self, capability: &'static str, resource: &str, access: &str) {
        self.call.used(
            capability,
            Target::Resource(loggable(resource)),
            Outcome::Access(access),
        );
    }

    /// A granted use, reported once per call for this resource and access
    /// (a key-value write, a config read): evidence for the privilege
    /// review (T16) without a record per operation.
    pub fn used_once(&self, capability: &'static str, resource: &str, access: &'static str) {
        self.call
            .used_once(capability, Target::Resource(loggable(resource)), access);
    }

    /// The verified subject of the request, if the route authenticates.
    pub fn subject(&self) -> Option<&str> {
        self.call.subject()
    }

    /// Secret values read during this call.
    pub fn redactions(&self) -> &Redactions {
        self.call.redactions()
    }

    /// A sealed record that failed authentication: tampered with, moved
    /// between rows or subjects, or sealed under another key (T15). Logged
    /// as an error and audited; the guest gets a generic error.
    pub fn integrity_failure(&self, capability: &'static str, resource: &str) {
        self.call.report(Report {
            kind: Kind::IntegrityFailed,
            capability,
            target: Target::Resource(loggable(resource)),
            outcome: Outcome::Nothing,
        });
    }

    /// A backend failure: the operator's log gets the detail, the guest a
    /// generic error.
    pub fn backend_failure(&self, capability: &'static str, resource: &str, error: &str) {
        self.call.report(Report {
            kind: Kind::Failed,
            capability,
            target: Target::Resource(loggable(resource)),
            outcome: Outcome::Error(error),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_in_a_lowercased_host_is_redacted_t14() {
        let redactions = Redactions::default();
        redactions.add(SecretString::from("Sk-Live-42"));
        // The outbound check lowercases the host a guest wrote.
        let host = "http://sk-live-42.attacker.example:80";
        assert_eq!(
            redactions.apply_lowercase(host),
            "http://[REDACTED].attacker.example:80"
        );
        assert_eq!(redactions.apply("say Sk-Live-42"), "say [REDACTED]");
    }

    /// T15: output cut at the capture cap in the middle of a secret keeps
    /// none of it; whole secrets before the cut are redacted as ever.
    #[test]
    fn a_secret_cut_at_the_cap_leaves_nothing_of_itself() {
        let redactions = Redactions::default();
        redactions.add(SecretString::from("sk_live_Zq9é8Wx7"));
        redactions.add(SecretString::from("other-secret"));
        for (cut, expected) in [
            ("key sk_live_Zq9", "key [REDACTED]"),
            ("key s", "key [REDACTED]"),
            // Cut inside the two bytes of `é`: the lossy conversion left a
            // replacement character.
            ("key sk_live_Zq9\u{FFFD}", "key [REDACTED]"),
            (
                "sk_live_Zq9é8Wx7 then other-sec",
                "[REDACTED] then [REDACTED]",
            ),
            ("nothing secret here", "nothing secret here"),
        ] {
            assert_eq!(redactions.apply_cut(cut), expected, "{cut}");
        }
    }
}
