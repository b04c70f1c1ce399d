//! Sign-ins under way, kept by the browser (issue 15; T01, T11, T12).
//!
//! What the callback needs (PKCE verifier, nonce, return path, mode) is
//! sealed into a `__Host-bulkhead-signin-<id>` cookie with an AEAD
//! (XChaCha20-Poly1305, the store's [`DataKey`]) under a key of the app:
//! the server keeps no per-sign-in state, so no flood of `/login` from any
//! number of addresses can fill a table and lock others out (outside
//! re-review: 625 addresses filled the 10,000 pending sign-ins).
//!
//! - `state` is `id || expiry || tag`: a random 128-bit sign-in id, the
//!   expiry (Unix seconds) and an HMAC tag (the data key's
//!   [`DataKey::lookup_id`] subkey), so a state this gateway did not issue,
//!   or an edited one, is refused before anything else.
//! - The cookie is named after the id (a second tab gets its own), sealed
//!   with the id as associated data (it cannot be moved under another
//!   name), and carries the whole `state`, compared in constant time with
//!   the one in the URL: the browser binding (login CSRF).
//! - Single use: the first callback naming a genuine, unexpired state marks
//!   its id used ([`Used`]), whatever follows, and the cookie is cleared;
//!   the provider's code is single-use too. The used set is bounded and
//!   never refuses a sign-in: when full, the entry expiring first goes.
//!
//! The key is the app's `login` data key in the keyring (wrapped by the
//! master key, like the key-value and secret keys), so a restart or a
//! deploy in the middle of a sign-in does not break it; without a master
//! key (an environment other than `dev` that has none) it is a random key
//! held in memory, and sign-ins under way across a restart fail.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bulkhead_store::crypto::{Aad, DataKey};
use zeroize::Zeroizing;

/// A sign-in must come back from the provider within this.
pub const SIGNIN_TTL: Duration = Duration::from_secs(600);
/// The sign-in cookies' common name prefix; the sign-in id follows.
pub const COOKIE_PREFIX: &str = "__Host-bulkhead-signin-";
/// Most sign-in cookies one browser holds: a new sign-in beyond this
/// clears the oldest (tabs; a browser's cookie header stays small).
pub const MAX_PER_BROWSER: usize = 4;
/// Most used sign-in ids remembered (each until its expiry; ~64 B each).
pub const MAX_USED: usize = 65_536;
/// Longest sealed cookie value looked at (a 1 KiB return path fits).
pub const MAX_COOKIE_VALUE: usize = 2048;
/// The keyring namespace of the sealing key.
pub const KEY_OWNER: &str = "login";

const ID_LEN: usize = 16;
const TAG_LEN: usize = 16;
const STATE_LEN: usize = ID_LEN + 8 + TAG_LEN;
const TAG_CONTEXT: &[u8] = b"bulkhead login state v1";
const SEAL_PURPOSE: &[u8] = b"login-signin";

/// How the signed-in caller gets the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// A `HttpOnly; Secure; SameSite=Lax` cookie and a redirect to the
    /// return path (browsers).
    Cookie,
    /// The session token in a JSON answer (API clients, CLIs).
    Token,
}

/// What a sign-in's callback needs.
pub struct Started {
    pub verifier: Zeroizing<String>,
    pub nonce: Zeroizing<String>,
    pub return_to: String,
    pub mode: Mode,
}

/// The sealed form (short member names: it travels in a cookie).
#[derive(serde::Serialize, serde::Deserialize)]
struct Sealed {
    s: String,
    v: String,
    n: String,
    r: String,
    m: Mode,
    e: u64,
}

/// A sign-in just started: the `state` for the provider, and the cookie.
pub struct Begun {
    pub state: String,
    pub cookie_name: String,
    pub cookie_value: String,
}

/// Why a callback's sign-in is not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Not issued here: malformed, tampered or under another key.
    Unknown,
    Expired,
    /// A callback already came with this state.
    Used,
    /// No cookie, or one that does not open or names another state.
    OtherBrowser,
}

impl Taken {
    pub fn as_str(&self) -> &'static str {
        match self {
            Taken::Unknown => "state not issued here (malformed or tampered)",
            Taken::Expired => "sign-in took longer than 10 minutes",
            Taken::Used => "state already used",
            Taken::OtherBrowser => {
                "state bound to another browser (sign-in cookie missing or different)"
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("randomness: {0}")]
    Random(std::io::Error),
    #[error("cannot seal the sign-in: {0}")]
    Seal(bulkhead_store::crypto::CryptoError),
    #[error("cannot encode the sign-in: {0}")]
    Encode(serde_json::Error),
}

/// The sealing key and the used ids: shared by every version of the app.
pub struct Signins {
    key: DataKey,
    used: Mutex<Used>,
}

impl Signins {
    pub fn new(key: DataKey) -> Self {
        Self {
            key,
            used: Mutex::new(Used::default()),
        }
    }

    /// Seal `started` for a new sign-in; `state` is to send the provider.
    pub fn begin(&self, started: &Started) -> Result<Begun, SealError> {
        self.begin_at(started, now())
    }

    fn begin_at(&self, started: &Started, now: u64) -> Result<Begun, SealError> {
        let id = bulkhead_store::files::random_bytes::<ID_LEN>().map_err(SealError::Random)?;
        let expires = now.saturating_add(SIGNIN_TTL.as_secs());
        let state = self.state(&id, expires);
        let sealed = Zeroizing::new(
            serde_json::to_vec(&Sealed {
                s: state.clone(),
                v: started.verifier.to_string(),
                n: started.nonce.to_string(),
                r: started.return_to.clone(),
                m: started.mode,
                e: expires,
            })
            .map_err(SealError::Encode)?,
        );
        let blob = self
            .key
            .seal(&Aad::new(&[SEAL_PURPOSE, &id]), &sealed)
            .map_err(SealError::Seal)?;
        Ok(Begun {
            state,
            cookie_name: cookie_name(&id),
            cookie_value: URL_SAFE_NO_PAD.encode(blob),
        })
    }

    /// The sign-in `state` names, if `cookie` (looked up by
    /// [`Self::cookie_for`]) is its sealed cookie. The first call for a
    /// genuine, unexpired state uses it up, whatever follows.
    pub fn take(&self, state: &str, cookie: Option<&str>) -> Result<Started, Taken> {
        self.take_at(state, cookie, now())
    }

    fn take_at(&self, state: &str, cookie: Option<&str>, now: u64) -> Result<Started, Taken> {
        let (id, expires) = self.verify_state(state).ok_or(Taken::Unknown)?;
        if expires <= now {
            return Err(Taken::Expired);
        }
        if !self
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, expires, now)
        {
            return Err(Taken::Used);
        }
        let sealed = cookie
            .and_then(|value| self.open(&id, value))
            .ok_or(Taken::OtherBrowser)?;
        // Both are MAC'd; compared in constant time all the same.
        if aws_lc_rs::constant_time::verify_slices_are_equal(sealed.s.as_bytes(), state.as_bytes())
            .is_err()
            || sealed.e != expires
        {
            return Err(Taken::OtherBrowser);
        }
        Ok(Started {
            verifier: Zeroizing::new(sealed.v),
            nonce: Zeroizing::new(sealed.n),
            return_to: sealed.r,
            mode: sealed.m,
        })
    }

    /// The name of the cookie a callback with `state` must carry, when the
    /// state is well-formed (its tag is checked by [`Self::take`]).
    pub fn cookie_for(state: &str) -> Option<String> {
        let bytes = decode_state(state)?;
        let id: [u8; ID_LEN] = bytes.get(..ID_LEN)?.try_into().ok()?;
        Some(cookie_name(&id))
    }

    /// When the sign-in sealed in cookie `name` = `value` expires; `None`
    /// when it is not one of ours or does not open.
    pub fn expiry_of(&self, name: &str, value: &str) -> Option<u64> {
        let id = URL_SAFE_NO_PAD
            .decode(name.strip_prefix(COOKIE_PREFIX)?)
            .ok()?;
        let id: [u8; ID_LEN] = id.as_slice().try_into().ok()?;
        self.open(&id, value).map(|s| s.e)
    }

    fn open(&self, id: &[u8; ID_LEN], value: &str) -> Option<Sealed> {
        if value.len() > MAX_COOKIE_VALUE {
            return None;
        }
        let blob = URL_SAFE_NO_PAD.decode(value).ok()?;
        let plain = self.key.open(&Aad::new(&[SEAL_PURPOSE, id]), &blob).ok()?;
        serde_json::from_slice(&plain).ok()
    }

    fn tag(&self, id: &[u8; ID_LEN], expires: u64) -> [u8; TAG_LEN] {
        let mut data = [0u8; ID_LEN + 8];
        data[..ID_LEN].copy_from_slice(id);
        data[ID_LEN..].copy_from_slice(&expires.to_be_bytes());
        let mac = self.key.lookup_id(TAG_CONTEXT, &data);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&mac[..TAG_LEN]);
        tag
    }

    fn state(&self, id: &[u8; ID_LEN], expires: u64) -> String {
        let mut bytes = Vec::with_capacity(STATE_LEN);
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes.extend_from_slice(&self.tag(id, expires));
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The id and expiry of a state this gateway issued.
    fn verify_state(&self, state: &str) -> Option<([u8; ID_LEN], u64)> {
        let bytes = decode_state(state)?;
        let id: [u8; ID_LEN] = bytes[..ID_LEN].try_into().ok()?;
        let expires = u64::from_be_bytes(bytes[ID_LEN..ID_LEN + 8].try_into().ok()?);
        let tag = self.tag(&id, expires);
        aws_lc_rs::constant_time::verify_slices_are_equal(&tag, &bytes[ID_LEN + 8..]).ok()?;
        Some((id, expires))
    }
}

fn decode_state(state: &str) -> Option<Vec<u8>> {
    // Checked before decoding: a long state costs nothing.
    if state.len() != (STATE_LEN * 4).div_ceil(3) {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(state).ok()?;
    (bytes.len() == STATE_LEN).then_some(bytes)
}

fn cookie_name(id: &[u8; ID_LEN]) -> String {
    format!("{COOKIE_PREFIX}{}", URL_SAFE_NO_PAD.encode(id))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sign-in ids already used, each until its expiry (after which its state
/// is refused as expired anyway). Bounded by [`MAX_USED`]: when full the
/// entry expiring first is dropped; a new sign-in is never refused.
#[derive(Default)]
struct Used {
    ids: HashSet<[u8; ID_LEN]>,
    by_expiry: BTreeSet<(u64, [u8; ID_LEN])>,
}

impl Used {
    /// `false` if `id` was used already.
    fn insert(&mut self, id: [u8; ID_LEN], expires: u64, now: u64) -> bool {
        if self.ids.contains(&id) {
            return false;
        }
        while let Some(&(at, old)) = self.by_expiry.first()
            && (at <= now || self.ids.len() >= MAX_USED)
        {
            self.by_expiry.pop_first();
            self.ids.remove(&old);
        }
        self.ids.insert(id);
        self.by_expiry.insert((expires, id));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(back: &str) -> Started {
        Started {
            verifier: Zeroizing::new("v".repeat(43)),
            nonce: Zeroizing::new("n".repeat(43)),
            return_to: back.into(),
            mode: Mode::Cookie,
        }
    }

    fn signins() -> Signins {
        Signins::new(DataKey::ephemeral().unwrap())
    }

    #[test]
    fn single_use_and_bound_to_the_browser() {
        let signins = signins();
        let one = signins.begin(&started("/a")).unwrap();
        let two = signins.begin(&started("/b")).unwrap();
        assert_ne!(one.state, two.state);
        assert_ne!(one.cookie_name, two.cookie_name);
        assert_eq!(
            Signins::cookie_for(&one.state).as_deref(),
            Some(one.cookie_name.as_str())
        );
        // Another sign-in's cookie (moved under this name) does not open.
        assert_eq!(
            signins.take(&one.state, Some(&two.cookie_value)).err(),
            Some(Taken::OtherBrowser)
        );
        // Used up by that try: even the right cookie cannot finish it now.
        assert_eq!(
            signins.take(&one.state, Some(&one.cookie_value)).err(),
            Some(Taken::Used)
        );
        let taken = signins.take(&two.state, Some(&two.cookie_value)).unwrap();
        assert_eq!(taken.return_to, "/b");
        assert_eq!(taken.verifier.as_str(), "v".repeat(43));
        assert_eq!(
            signins.take(&two.state, Some(&two.cookie_value)).err(),
            Some(Taken::Used)
        );
        let three = signins.begin(&started("/c")).unwrap();
        assert_eq!(
            signins.take(&three.state, None).err(),
            Some(Taken::OtherBrowser)
        );
    }

    #[test]
    fn tampered_forged_and_expired_states_are_refused() {
        let signins = signins();
        let one = signins.begin(&started("/")).unwrap();
        let mut flipped = one.state.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            signins.take(&flipped, Some(&one.cookie_value)).err(),
            Some(Taken::Unknown)
        );
        // A tampered try does not use up the real one.
        assert!(signins.take(&one.state, Some(&one.cookie_value)).is_ok());
        // Another key (another app, or a forger) issued it: unknown here.
        let other = signins.begin(&started("/")).unwrap();
        let elsewhere = Signins::new(DataKey::ephemeral().unwrap());
        assert_eq!(
            elsewhere
                .take(&other.state, Some(&other.cookie_value))
                .err(),
            Some(Taken::Unknown)
        );
        for junk in ["", "x", &"A".repeat(54), &"A".repeat(10_000)] {
            assert_eq!(signins.take(junk, None).err(), Some(Taken::Unknown));
        }
        let old = signins.begin_at(&started("/"), now() - 601).unwrap();
        assert_eq!(
            signins.take(&old.state, Some(&old.cookie_value)).err(),
            Some(Taken::Expired)
        );
        // A cookie of the right sign-in, tampered: does not open.
        let fresh = signins.begin(&started("/")).unwrap();
        let mut bad = fresh.cookie_value.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            signins
                .take(&fresh.state, Some(std::str::from_utf8(&bad).unwrap()))
                .err(),
            Some(Taken::OtherBrowser)
        );
    }

    #[test]
    fn nothing_in_the_clear_and_expiry_readable() {
        let signins = signins();
        let begun = signins.begin(&started("/secret-return")).unwrap();
        assert!(begun.cookie_value.len() < MAX_COOKIE_VALUE);
        let raw = URL_SAFE_NO_PAD.decode(&begun.cookie_value).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"secret"));
        let expiry = signins
            .expiry_of(&begun.cookie_name, &begun.cookie_value)
            .unwrap();
        assert!(expiry > now() && expiry <= now() + 600);
        assert_eq!(signins.expiry_of("__Host-bulkhead-signin-x", "y"), None);
        let long = started(&format!("/{}", "a".repeat(1023)));
        let begun = signins.begin(&long).unwrap();
        assert!(begun.cookie_value.len() <= MAX_COOKIE_VALUE);
    }

    /// T01: the used set is bounded and, full, still takes new sign-ins
    /// (the one expiring first is forgotten); expired ones go first.
    #[test]
    fn the_used_set_is_bounded_and_never_refuses() {
        let mut used = Used::default();
        let id = |i: u32| {
            let mut id = [0u8; ID_LEN];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        };
        for i in 0..MAX_USED as u32 {
            assert!(used.insert(id(i), 1_000 + u64::from(i), 10));
        }
        assert!(!used.insert(id(5), 2_000, 10));
        assert!(used.insert(id(u32::MAX), 100_000, 10));
        assert_eq!(used.ids.len(), MAX_USED);
        // The first to expire was forgotten, the others kept.
        assert!(used.insert(id(0), 1_000, 10));
        assert!(!used.insert(id(7), 2_000, 10));
        // Later, the expired ones are dropped before anything else.
        assert!(used.insert(id(u32::MAX - 1), 90_000, 80_000));
        assert_eq!(used.ids.len(), 2);
    }
}
