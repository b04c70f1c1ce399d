//! Signed components (T18, T19): which keys an app trusts, and whether a
//! file carries a signature from one of them, made for that very file.
//!
//! Signatures are standard minisign (`FILE.minisig` beside `FILE`), so the
//! `minisign` CLI makes and checks them too. Verification goes through
//! `minisign-verify` with legacy (non-prehashed) signatures refused. The
//! signature's trusted comment (covered by the signature) binds it to one
//! file: `bulkhead-v1 file=<path in the app> sha256=<hex> signed_at=<unix>`,
//! so a valid signature copied beside another file, or a renamed file, is
//! refused as "made for another file".

use std::fmt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};
use toml::Spanned;

use crate::problem::Collector;

/// The extension of a signature file: `component.wasm.minisig`.
pub const SIGNATURE_EXTENSION: &str = "minisig";

/// The first word of every trusted comment Bulkhead writes and accepts.
pub const COMMENT_TAG: &str = "bulkhead-v1";

/// The fix printed with every missing or stale signature.
const SIGN_FIX: &str = "run `bulkhead sign APP_DIR --key KEY_FILE` with a trusted key";

/// One trusted minisign public key.
#[derive(Clone)]
pub struct Signer {
    /// The key file as the manifest names it (relative to the app).
    pub file: String,
    /// minisign's key ID, as the CLI prints it (16 uppercase hex digits).
    pub key_id: String,
    key: minisign_verify::PublicKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({} {})", self.key_id, self.file)
    }
}

/// `[trust] signers`: the keys a signature must come from. Empty when the
/// manifest names none.
#[derive(Debug, Clone, Default)]
pub struct Signers {
    list: Vec<Signer>,
    /// The manifest line of `signers`, for reports.
    pub line: Option<usize>,
}

impl Signers {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Signer> {
        self.list.iter()
    }

    /// `ID (file), ...`: how a refusal names the trusted keys.
    pub fn describe(&self) -> String {
        if self.list.is_empty() {
            return "none: `[trust] signers` is not set".into();
        }
        self.list
            .iter()
            .map(|s| format!("{} ({})", s.key_id, s.file))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a verified signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The key ID of the trusted key that made the signature.
    pub key_id: String,
    /// The file, relative to the app directory (`/`-separated).
    pub file: String,
    pub sha256: [u8; 32],
    /// When it was signed (unix seconds), as the signature says.
    pub signed_at: u64,
}

impl Signed {
    /// `sha256:HEX`, as manifests and audit records write digests.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.sha256))
    }
}

/// Why a file is not trusted. Each message names the file and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("`{file}` is not signed (no `{signature}`); {SIGN_FIX}")]
    Missing { file: String, signature: String },
    #[error("`{file}` cannot be read ({why})")]
    Unreadable { file: String, why: String },
    #[error(
        "`{file}` is signed by key {key_id}, which is not a trusted signer (trusted: {trusted}); sign it with a trusted key (`bulkhead sign`), or, after review, add that key's `.pub` file to `[trust] signers`"
    )]
    UntrustedKey {
        file: String,
        key_id: String,
        trusted: String,
    },
    #[error(
        "`{file}`: its signature `{signature}` was made for another file ({why}); the file was changed, renamed or its signature copied: review the change, then {SIGN_FIX}"
    )]
    OtherFile {
        file: String,
        signature: String,
        why: String,
    },
    #[error("`{file}`: its signature `{signature}` is malformed ({why}); delete it and {SIGN_FIX}")]
    Malformed {
        file: String,
        signature: String,
        why: String,
    },
}

impl TrustError {
    /// A short, stable name for logs and audit records.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "signature-missing",
            Self::Unreadable { .. } => "unreadable",
            Self::UntrustedKey { .. } => "untrusted-key",
            Self::OtherFile { .. } => "signed-for-another-file",
            Self::Malformed { .. } => "signature-malformed",
        }
    }
}

/// `path` beside which its signature lives: `path.minisig`.
pub fn signature_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".");
    name.push(SIGNATURE_EXTENSION);
    PathBuf::from(name)
}

/// `path` relative to `app_dir`, `/`-separated, without `.` parts: the
/// name a trusted comment carries. `None` outside the app directory or
/// for a name a comment cannot hold (not UTF-8, a line break).
pub fn app_relative(app_dir: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(app_dir).ok()?;
    let mut parts = Vec::new();
    for part in relative.components() {
        match part {
            Component::Normal(name) => parts.push(name.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let name = parts.join("/");
    (!name.is_empty() && !name.contains(['\n', '\r'])).then_some(name)
}

/// The trusted comment that binds a signature to one file's bytes.
pub fn trusted_comment(file: &str, sha256: &[u8; 32], signed_at: u64) -> String {
    format!(
        "{COMMENT_TAG} file={file} sha256={} signed_at={signed_at}",
        hex::encode(sha256)
    )
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Verify the signature beside `path` (a file inside `app_dir`): made by
/// one of `signers`, over these bytes, for this file name.
pub fn verify_file(path: &Path, app_dir: &Path, signers: &Signers) -> Result<Signed, TrustError> {
    let file = app_relative(app_dir, path).unwrap_or_else(|| path.display().to_string());
    let bytes =
        crate::files::read_bounded(path, crate::files::MAX_COMPONENT_BYTES).map_err(|e| {
            TrustError::Unreadable {
                file: file.clone(),
                why: e.to_string(),
            }
        })?;
    verify_beside(path, app_dir, &file, &bytes, signers)
}

/// The signature beside `path` (whose `bytes` were read as `file`).
pub(crate) fn verify_beside(
    path: &Path,
    app_dir: &Path,
    file: &str,
    bytes: &[u8],
    signers: &Signers,
) -> Result<Signed, TrustError> {
    let signature = signature_path(path);
    let signature_name =
        app_relative(app_dir, &signature).unwrap_or_else(|| signature.display().to_string());
    let text = match read_bounded(&signature) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TrustError::Missing {
                file: file.to_string(),
                signature: signature_name,
            });
        }
        Err(e) => {
            return Err(TrustError::Unreadable {
                file: signature_name,
                why: e.to_string(),
            });
        }
    };
    verify_bytes(file, bytes, &text, &signature_name, signers)
}

/// Largest signature or key file read: a minisign signature is about 300
/// bytes, a public key about 100.
const MAX_SIGNATURE_BYTES: usize = 4096;

/// `path`, a regular file of at most [`MAX_SIGNATURE_BYTES`], so a huge
/// file, a device or a FIFO planted as a signature or key is refused at
/// once (T18, T05).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::files::read_bounded(path, MAX_SIGNATURE_BYTES as u64)
}

/// Verify `signature` (the text of a `.minisig`, named `signature_name`
/// in messages) over `bytes`, which are the file `file` (relative to the
/// app, `/`-separated). For files not on disk, such as a deploy bundle's.
pub fn verify_bytes(
    file: &str,
    bytes: &[u8],
    signature: &[u8],
    signature_name: &str,
    signers: &Signers,
) -> Result<Signed, TrustError> {
    let malformed = |why: &str| TrustError::Malformed {
        file: file.to_string(),
        signature: signature_name.to_string(),
        why: why.to_string(),
    };
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(malformed("larger than any minisign signature"));
    }
    let text = std::str::from_utf8(signature).map_err(|_| malformed("not UTF-8 text"))?;
    // minisign-verify slices the trusted comment line by its prefix:
    // check its shape first so no input can make it panic.
    let mut lines = text.lines();
    let comment_line = lines
        .nth(2)
        .ok_or_else(|| malformed("fewer than 4 lines"))?;
    if !comment_line.starts_with("trusted comment: ") {
        return Err(malformed("its third line is not a trusted comment"));
    }
    let decoded = minisign_verify::Signature::decode(text)
        .map_err(|_| malformed("not a minisign signature"))?;
    let signed_by = signature_key_id(text);
    let mut key_id = None;
    for signer in &signers.list {
        match signer.key.verify(bytes, &decoded, false) {
            Ok(()) => {
                key_id = Some(signer.key_id.clone());
                break;
            }
            Err(minisign_verify::Error::UnexpectedKeyId) => {}
            // The right key, but not over these bytes.
            Err(minisign_verify::Error::InvalidSignature) => {
                return Err(TrustError::OtherFile {
                    file: file.to_string(),
                    signature: signature_name.to_string(),
                    why: "it does not verify over this file's bytes".into(),
                });
            }
            Err(minisign_verify::Error::UnexpectedAlgorithm) => {
                return Err(malformed(
                    "a legacy (not prehashed) signature; minisign 0.11 and later sign prehashed",
                ));
            }
            Err(_) => return Err(malformed("not a minisign Ed25519 signature")),
        }
    }
    let Some(key_id) = key_id else {
        return Err(TrustError::UntrustedKey {
            file: file.to_string(),
            key_id: signed_by.unwrap_or_else(|| "(unknown)".into()),
            trusted: signers.describe(),
        });
    };
    // The signature is good: now its comment must name this file and these bytes.
    let other = |why: String| TrustError::OtherFile {
        file: file.to_string(),
        signature: signature_name.to_string(),
        why,
    };
    let comment = decoded.trusted_comment();
    let claim = parse_comment(comment).ok_or_else(|| {
        other(format!(
            "its trusted comment is not `{COMMENT_TAG} file=… sha256=… signed_at=…`"
        ))
    })?;
    if claim.file != file {
        return Err(other(format!("it was signed for `{}`", claim.file)));
    }
    let actual = sha256(bytes);
    if claim.sha256 != actual {
        return Err(other(format!(
            "it was signed for sha256:{}, this file is sha256:{}",
            hex::encode(claim.sha256),
            hex::encode(actual)
        )));
    }
    Ok(Signed {
        key_id,
        file: file.to_string(),
        sha256: actual,
        signed_at: claim.signed_at,
    })
}

struct Claim<'a> {
    file: &'a str,
    sha256: [u8; 32],
    signed_at: u64,
}

/// `bulkhead-v1 file=<path> sha256=<hex> signed_at=<n>`; the path may hold
/// spaces, so the fixed fields are taken from the end.
fn parse_comment(comment: &str) -> Option<Claim<'_>> {
    let rest = comment.strip_prefix(COMMENT_TAG)?.strip_prefix(" file=")?;
    let mut fields = rest.rsplitn(3, ' ');
    let signed_at = fields.next()?.strip_prefix("signed_at=")?.parse().ok()?;
    let digest = fields.next()?.strip_prefix("sha256=")?;
    let file = fields.next()?;
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(digest, &mut sha256).ok()?;
    Some(Claim {
        file,
        sha256,
        signed_at,
    })
}

/// minisign's key ID display: the 8 key-number bytes as a little-endian
/// number in uppercase hex (what `minisign -G` and `-V` print).
fn key_id_hex(key_number: [u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(key_number))
}

/// The key ID a signature names (its second line: algorithm, key number,
/// signature), to say which untrusted key made it.
fn signature_key_id(text: &str) -> Option<String> {
    let line = text.lines().nth(1)?;
    let bytes = base64_decode(line.trim())?;
    let number: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
    Some(key_id_hex(number))
}

/// The key ID of a minisign public key file's text (`KEY.pub`).
pub fn public_key_id(text: &str) -> Option<String> {
    minisign_verify::PublicKey::decode(text).ok()?;
    let bytes = base64_decode(text.lines().nth(1)?.trim())?;
    Some(key_id_hex(bytes.get(2..10)?.try_into().ok()?))
}

/// Read one `[trust] signers` key file.
fn read_signer(app_dir: &Path, file: &str) -> Result<Signer, String> {
    let path = app_dir.join(file);
    let text = read_bounded(&path).map_err(|e| {
        format!("cannot read the minisign public key `{file}` ({e}); create one with `bulkhead keygen --output keys/release`, or fix the path")
    })?;
    let text = String::from_utf8_lossy(&text);
    let malformed = || {
        format!(
            "`{file}` is not a minisign public key (two lines: `untrusted comment: …` and the key); use the `.pub` file `bulkhead keygen` or `minisign -G` wrote"
        )
    };
    if text.len() > MAX_SIGNATURE_BYTES {
        return Err(malformed());
    }
    let key = minisign_verify::PublicKey::decode(&text).map_err(|_| malformed())?;
    let line = text.lines().nth(1).ok_or_else(malformed)?;
    let bytes = base64_decode(line.trim()).ok_or_else(malformed)?;
    let number: [u8; 8] = bytes
        .get(2..10)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)?;
    Ok(Signer {
        file: file.to_string(),
        key_id: key_id_hex(number),
        key,
    })
}

/// `[trust] signers` as written: each a minisign public key file inside
/// the app directory.
pub(crate) fn resolve(
    out: &mut Collector<'_>,
    app_dir: &Path,
    signers: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Signers {
    let Some(list) = signers else {
        return Signers::default();
    };
    let line = Some(out.location(list.span()).0);
    if list.get_ref().is_empty() {
        out.at(
            Some(list.span()),
            "`signers` is empty, so nothing could be verified; list minisign public key files, like [\"keys/release.pub\"], or remove the key",
        );
    }
    let mut keys: Vec<Signer> = Vec::new();
    for entry in list.get_ref() {
        let found = crate::resolve::app_file(
            out,
            app_dir,
            entry,
            "`[trust] signers`: key",
            "create it with `bulkhead keygen --output keys/release`, or fix the path",
        );
        if found.is_none() {
            continue;
        }
        match read_signer(app_dir, entry.get_ref()) {
            Ok(signer) if keys.iter().any(|k| k.key_id == signer.key_id) => out.at(
                Some(entry.span()),
                format!(
                    "`[trust] signers`: `{}` is key {} again; list each key once",
                    entry.get_ref(),
                    signer.key_id
                ),
            ),
            Ok(signer) => keys.push(signer),
            Err(message) => out.at(Some(entry.span()), format!("`[trust] signers`: {message}")),
        }
    }
    Signers { list: keys, line }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Key {
        signers: Signers,
        secret: minisign::SecretKey,
        id: String,
    }

    fn key() -> Key {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let public = pair.pk.to_box().unwrap().to_string();
        let key = minisign_verify::PublicKey::decode(&public).unwrap();
        let id = public_key_id(&public).unwrap();
        let signer = Signer {
            file: "keys/test.pub".into(),
            key_id: id.clone(),
            key,
        };
        Key {
            signers: Signers {
                list: vec![signer],
                line: None,
            },
            secret: pair.sk,
            id,
        }
    }

    fn sign(key: &Key, bytes: &[u8], comment: &str) -> Vec<u8> {
        minisign::sign(
            None,
            &key.secret,
            std::io::Cursor::new(bytes),
            Some(comment),
            None,
        )
        .unwrap()
        .into_string()
        .into_bytes()
    }

    #[test]
    fn t18_a_signature_binds_the_file_name_and_its_bytes() {
        let key = key();
        let bytes = b"\0asm component";
        let comment = trusted_comment("build/my app.wasm", &sha256(bytes), 1_700_000_000);
        let signature = sign(&key, bytes, &comment);
        let signed =
            verify_bytes("build/my app.wasm", bytes, &signature, "s", &key.signers).unwrap();
        assert_eq!(signed.key_id, key.id);
        assert_eq!(signed.signed_at, 1_700_000_000);
        assert_eq!(signed.file, "build/my app.wasm");
        // Another name, other bytes, another key: each refused for what it is.
        let err = verify_bytes("build/other.wasm", bytes, &signature, "s", &key.signers);
        assert!(
            matches!(err, Err(TrustError::OtherFile { ref why, .. }) if why.contains("signed for `build/my app.wasm`")),
            "{err:?}"
        );
        let err = verify_bytes("build/my app.wasm", b"other", &signature, "s", &key.signers);
        assert!(matches!(err, Err(TrustError::OtherFile { .. })), "{err:?}");
        let other = key_pair_signers();
        let err = verify_bytes("build/my app.wasm", bytes, &signature, "s", &other).unwrap_err();
        assert!(
            matches!(&err, TrustError::UntrustedKey { key_id, .. } if *key_id == key.id),
            "{err:?}"
        );
        assert_eq!(err.slug(), "untrusted-key");
        // A comment naming the right file with another digest.
        let lying = trusted_comment("build/my app.wasm", &[0; 32], 1);
        let err = verify_bytes(
            "build/my app.wasm",
            bytes,
            &sign(&key, bytes, &lying),
            "s",
            &key.signers,
        );
        assert!(
            matches!(err, Err(TrustError::OtherFile { ref why, .. }) if why.contains("this file is sha256:")),
            "{err:?}"
        );
    }

    fn key_pair_signers() -> Signers {
        key().signers
    }

    /// Hostile signature files are refused as malformed, never a panic.
    #[test]
    fn t18_malformed_signatures_are_refused_without_panicking() {
        let key = key();
        let good =
            String::from_utf8(sign(&key, b"x", &trusted_comment("x", &sha256(b"x"), 1))).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\xff\xfe".to_vec(),
            b"one line".to_vec(),
            format!(
                "{}\n{}\ntrusted comment:\n{}\n",
                lines[0], lines[1], lines[3]
            )
            .into_bytes(),
            format!("{}\n{}\ntrusted\n{}\n", lines[0], lines[1], lines[3]).into_bytes(),
            format!(
                "{}\n{}\ntrusted comment: \n{}\n",
                lines[0], lines[1], lines[3]
            )
            .into_bytes(),
            format!("{}\nAAAA\n{}\n{}\n", lines[0], lines[2], lines[3]).into_bytes(),
            format!("{}\n{}\n{}\n!!!\n", lines[0], lines[1], lines[2]).into_bytes(),
            format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]).into_bytes(),
            vec![b'a'; 10_000],
        ];
        for (i, case) in cases.iter().enumerate() {
            let result = verify_bytes("x", b"x", case, "x.minisig", &key.signers);
            assert!(result.is_err(), "case {i} was accepted");
        }
        assert!(verify_bytes("x", b"x", good.as_bytes(), "x.minisig", &key.signers).is_ok());
    }

    #[test]
    fn t18_comments_parse_from_the_end_so_names_may_hold_spaces() {
        let digest = "ab".repeat(32);
        let comment = format!("bulkhead-v1 file=a b c.wasm sha256={digest} signed_at=7");
        let claim = parse_comment(&comment).unwrap();
        assert_eq!((claim.file, claim.signed_at), ("a b c.wasm", 7));
        for bad in [
            "timestamp:1700000000\tfile:x".to_string(),
            format!("bulkhead-v2 file=x sha256={digest} signed_at=7"),
            format!("bulkhead-v1 file=x sha256={digest}"),
            "bulkhead-v1 file=x sha256=zz signed_at=7".to_string(),
            format!("bulkhead-v1 file=x sha256={digest} signed_at=-1"),
        ] {
            assert!(parse_comment(&bad).is_none(), "{bad}");
        }
        assert_eq!(
            app_relative(Path::new("/app"), Path::new("/app/./b/c.wasm")).as_deref(),
            Some("b/c.wasm")
        );
        assert_eq!(
            app_relative(Path::new("/app"), Path::new("/other/c.wasm")),
            None
        );
        assert_eq!(
            app_relative(Path::new("/app"), Path::new("/app/a\nb")),
            None
        );
    }

    /// `[trust] signers` overlays per environment and each key file is
    /// checked at load, at its line.
    #[test]
    fn t18_signers_overlay_per_environment_and_bad_key_files_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let a = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let b = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let a_pub = a.pk.to_box().unwrap().to_string();
        let b_pub = b.pk.to_box().unwrap().to_string();
        std::fs::write(dir.path().join("keys/a.pub"), &a_pub).unwrap();
        std::fs::write(dir.path().join("keys/b.pub"), &b_pub).unwrap();
        std::fs::write(
            dir.path().join("keys/bad.pub"),
            "untrusted comment: x\nnot base64\n",
        )
        .unwrap();
        let manifest = "[app]\nname = \"t\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\nauth = \"public\"\n\n[trust]\nsigners = [\"keys/a.pub\"]\n\n[env.prod.trust]\nsigners = [\"keys/b.pub\"]\n";
        let load = |text: &str, env: &str| {
            crate::parse(dir.path(), &dir.path().join("bulkhead.toml"), text, env)
        };
        let ids = |app: &crate::App| {
            app.signers
                .iter()
                .map(|s| s.key_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&load(manifest, "dev").unwrap()),
            [public_key_id(&a_pub).unwrap()]
        );
        let prod = load(manifest, "prod").unwrap();
        assert_eq!(ids(&prod), [public_key_id(&b_pub).unwrap()]);
        assert_eq!(prod.lines.get("trust.signers"), Some(14));
        for (file, expected) in [
            ("keys/bad.pub", "is not a minisign public key"),
            ("keys/none.pub", "does not exist"),
            ("../a.pub", "inside the app directory"),
        ] {
            let text = manifest.replace("keys/a.pub", file);
            let err = load(&text, "dev").unwrap_err().to_string();
            assert!(err.contains("bulkhead.toml:11:"), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        let twice = manifest.replace("[\"keys/a.pub\"]", "[\"keys/a.pub\", \"./keys/a.pub\"]");
        assert!(
            load(&twice, "dev")
                .unwrap_err()
                .to_string()
                .contains("list each key once")
        );
        let empty = manifest.replace("[\"keys/a.pub\"]", "[]");
        assert!(
            load(&empty, "dev")
                .unwrap_err()
                .to_string()
                .contains("`signers` is empty")
        );
    }
}
