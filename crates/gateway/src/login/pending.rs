//! Sign-ins under way (issue 15, T12): what the callback needs (PKCE
//! verifier, nonce, return path) kept server-side under the `state` value,
//! bound to the browser that started it. Bounded: at most [`MAX_PENDING`]
//! at once, each for at most [`PENDING_TTL`], so a flood of `/login`
//! cannot grow memory without bound; single-use: the callback takes its
//! entry out whether it then succeeds or not, so a replayed callback finds
//! nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Most sign-ins under way at once (about 0.5 KiB each).
pub const MAX_PENDING: usize = 10_000;
/// Most sign-ins under way for one client (its address, an IPv6 /64): a
/// new one pushes out that client's oldest, so a flood of `/login` from
/// one place displaces only its own and never locks others out (T01;
/// outside review: one address filled the whole table for ten minutes).
pub const MAX_PENDING_PER_CLIENT: usize = 16;
/// A sign-in must come back from the provider within this.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// How the signed-in caller gets the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A `HttpOnly; Secure; SameSite=Lax` cookie and a redirect to the
    /// return path (browsers).
    Cookie,
    /// The session token in a JSON answer (API clients, CLIs).
    Token,
}

pub struct Started {
    /// SHA-256 of the browser-binding cookie's value.
    pub binding: [u8; 32],
    pub verifier: Zeroizing<String>,
    pub nonce: Zeroizing<String>,
    pub return_to: String,
    pub mode: Mode,
}

struct Entry {
    started: Started,
    at: Instant,
    /// The caller key of the client that started it.
    client: std::sync::Arc<str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    Unknown,
    Expired,
    OtherBrowser,
}

impl Taken {
    pub fn as_str(&self) -> &'static str {
        match self {
            Taken::Unknown => "unknown or already used state",
            Taken::Expired => "sign-in took longer than 10 minutes",
            Taken::OtherBrowser => {
                "state bound to another browser (login cookie missing or different)"
            }
        }
    }
}

#[derive(Default)]
pub struct Pending {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

pub fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl Pending {
    /// Keep `started` under `state`; `false` when [`MAX_PENDING`] live
    /// sign-ins are already under way.
    /// `client` is the caller key of the client's address: it holds at
    /// most [`MAX_PENDING_PER_CLIENT`], its oldest pushed out first.
    pub fn insert(&self, state: &str, started: Started, client: std::sync::Arc<str>) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mine: Vec<([u8; 32], Instant)> = entries
            .iter()
            .filter(|(_, e)| e.client == client)
            .map(|(k, e)| (*k, e.at))
            .collect();
        if mine.len() >= MAX_PENDING_PER_CLIENT
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, at)| *at)
        {
            entries.remove(oldest);
        }
        if entries.len() >= MAX_PENDING {
            entries.retain(|_, e| e.at.elapsed() < PENDING_TTL);
        }
        if entries.len() >= MAX_PENDING {
            return false;
        }
        entries.insert(
            digest(state),
            Entry {
                started,
                at: Instant::now(),
                client,
            },
        );
        true
    }

    /// Take out the sign-in `state` names, for the browser whose binding
    /// cookie is `binding` (its value). Always removes it.
    pub fn take(&self, state: &str, binding: Option<&str>) -> Result<Started, Taken> {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(state))
            .ok_or(Taken::Unknown)?;
        if entry.at.elapsed() >= PENDING_TTL {
            return Err(Taken::Expired);
        }
        let presented = binding.map(digest).unwrap_or([0; 32]);
        // Digests of 256-bit random values: equality leaks nothing useful,
        // but compare in constant time anyway.
        let same = presented
            .iter()
            .zip(entry.started.binding.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if binding.is_none() || !same {
            return Err(Taken::OtherBrowser);
        }
        Ok(entry.started)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(binding: &str) -> Started {
        Started {
            binding: digest(binding),
            verifier: Zeroizing::new("v".into()),
            nonce: Zeroizing::new("n".into()),
            return_to: "/".into(),
            mode: Mode::Cookie,
        }
    }

    #[test]
    fn single_use_and_bound_to_the_browser() {
        let pending = Pending::default();
        assert!(pending.insert("s1", started("b1"), "a".into()));
        assert_eq!(
            pending.take("s1", Some("b2")).err(),
            Some(Taken::OtherBrowser)
        );
        // Taken out even though it failed: a second try finds nothing.
        assert_eq!(pending.take("s1", Some("b1")).err(), Some(Taken::Unknown));
        assert!(pending.insert("s2", started("b1"), "a".into()));
        assert!(pending.take("s2", Some("b1")).is_ok());
        assert_eq!(pending.take("s2", Some("b1")).err(), Some(Taken::Unknown));
        assert_eq!(pending.take("s3", None).err(), Some(Taken::Unknown));
    }

    #[test]
    fn bounded() {
        let pending = Pending::default();
        for i in 0..MAX_PENDING {
            let client = format!("addr:{}", i / MAX_PENDING_PER_CLIENT);
            assert!(pending.insert(&format!("s{i}"), started("b"), client.into()));
        }
        assert!(!pending.insert("one-more", started("b"), "addr:new".into()));
        assert_eq!(pending.len(), MAX_PENDING);
    }

    /// T01 (outside review): one client's flood pushes out only its own
    /// oldest sign-ins; another client's stays and still completes.
    #[test]
    fn one_client_cannot_fill_the_table_t01() {
        let pending = Pending::default();
        assert!(pending.insert("theirs", started("b2"), "addr:two".into()));
        for i in 0..MAX_PENDING + 100 {
            assert!(pending.insert(&format!("s{i}"), started("b"), "addr:one".into()));
        }
        assert_eq!(pending.len(), MAX_PENDING_PER_CLIENT + 1);
        // The flooder's first ones were pushed out, its newest kept.
        assert_eq!(pending.take("s0", Some("b")).err(), Some(Taken::Unknown));
        assert!(
            pending
                .take(&format!("s{}", MAX_PENDING + 99), Some("b"))
                .is_ok()
        );
        assert!(pending.take("theirs", Some("b2")).is_ok());
    }
}
