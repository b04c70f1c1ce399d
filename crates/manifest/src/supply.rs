//! The app's supply chain at deploy (T18, T19): every component matches
//! `bulkhead.lock`, and carries a signature from a trusted key when the app
//! names signers, and always outside `dev`; the manifest's and the lock's
//! own signatures are verified when present, and required outside `dev`.
//! Every problem is reported at once, each naming the file and the fix.

use crate::problem::{Problem, Problems};
use crate::trust::{self, Signed, Signers, TrustError};
use crate::{App, JwtKeys, LOCK_FILE, MANIFEST_FILE, StoreKind};
use std::path::PathBuf;

/// What was verified of one component: its digest and, when signed, by whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The component, relative to the app directory.
    pub file: String,
    pub sha256: [u8; 32],
    /// The verified signature, when the component carries one.
    pub signed: Option<Signed>,
}

impl Evidence {
    /// `sha256:HEX`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.sha256))
    }

    /// The signing key's ID, or `unsigned`.
    pub fn signer(&self) -> &str {
        self.signed
            .as_ref()
            .map_or("unsigned", |s| s.key_id.as_str())
    }
}

/// Whether `app` must carry signatures: when it names signers, and
/// always outside `dev`.
pub fn signatures_required(app: &App) -> bool {
    !app.signers.is_empty() || !app.is_dev()
}

/// `bulkhead.toml` and every other file the manifest names, except its
/// components (pinned as components) and the `[tls]` and JWE files (the
/// server keeps its own, never a bundle's; T15): `[trust]` public keys, the
/// JWKS file, body schemas, `*.sql` migrations. App-relative name and path,
/// sorted: what `bulkhead lock` pins as `[[file]]` (T18, T19).
pub fn named_files(app: &App) -> Result<Vec<(String, PathBuf)>, String> {
    let mut paths = vec![app.manifest_path.clone()];
    for signer in app.signers.iter() {
        paths.push(app.dir.join(&signer.file));
    }
    for function in &app.functions {
        if let Some(schema) = &function.input.body_schema {
            paths.push(schema.path.clone());
        }
    }
    if let Some(jwt) = &app.jwt
        && let JwtKeys::File(path) = &jwt.keys
    {
        paths.push(path.clone());
    }
    for store in &app.stores {
        if let StoreKind::Sql { migrations, .. } = &store.kind {
            let entries = std::fs::read_dir(migrations)
                .map_err(|e| format!("cannot read {}: {e}", migrations.display()))?;
            for entry in entries {
                let path = entry
                    .map_err(|e| format!("cannot read {}: {e}", migrations.display()))?
                    .path();
                if path.is_file() && path.extension().is_some_and(|e| e == "sql") {
                    paths.push(path);
                }
            }
        }
    }
    let mut named = std::collections::BTreeMap::new();
    for path in paths {
        let name = trust::app_relative(&app.dir, &path).ok_or_else(|| {
            format!(
                "{} cannot be pinned in `{LOCK_FILE}` (outside the app directory, not UTF-8 or holding a line break); move it into the app",
                path.display()
            )
        })?;
        named.insert(name, path);
    }
    Ok(named.into_iter().collect())
}

/// Where signatures are required, the signed lock covers the manifest and
/// every file it names (T18, T19): the lock must exist, pin `bulkhead.toml`
/// as it is now and every named file as it is now.
fn check_named_files(app: &App, problems: &mut Vec<Problem>) {
    let manifest = app.manifest_path.clone();
    let fix = "review the files, then run `bulkhead lock APP_DIR` and `bulkhead sign APP_DIR --key KEY_FILE`";
    let Some(lock) = &app.lock else {
        problems.push(Problem {
            file: app.dir.join(LOCK_FILE),
            location: None,
            message: format!(
                "there is no `{LOCK_FILE}`: where signatures are required (`[trust] signers` is set, or the environment is not `dev`; here `{}`) a signed lock must pin `{MANIFEST_FILE}` and every file it names; {fix}",
                app.env
            ),
        });
        return;
    };
    let named = match named_files(app) {
        Ok(named) => named,
        Err(e) => {
            problems.push(Problem {
                file: manifest,
                location: None,
                message: e,
            });
            return;
        }
    };
    for (name, path) in named {
        // Bounded like every file the app directory supplies (T05, T18).
        let bytes = match crate::files::read_bounded(&path, crate::files::MAX_TEXT_BYTES) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(Problem {
                    file: path.clone(),
                    location: None,
                    message: format!("cannot read `{name}` ({e})"),
                });
                continue;
            }
        };
        let sha256 = trust::sha256(&bytes);
        match lock.file(&name) {
            None => problems.push(Problem {
                file: path.clone(),
                location: None,
                message: format!(
                    "`{name}` is not pinned in `{LOCK_FILE}` (a lock from before this bulkhead, or the manifest now names a new file); {fix}"
                ),
            }),
            Some(locked) if *locked != sha256 => problems.push(Problem {
                file: path.clone(),
                location: None,
                message: format!(
                    "`{name}` changed since it was locked: `{LOCK_FILE}` pins sha256:{}, the file is sha256:{} (edited after `bulkhead lock`, or taken from another version); {fix}",
                    hex::encode(locked),
                    hex::encode(sha256)
                ),
            }),
            Some(_) => {}
        }
    }
}

/// Verify every component of `app` against the lock and the signers, and
/// pin each function to the digest verified here, so the runtime refuses
/// a file swapped between this check and its compilation. Returns one
/// [`Evidence`] per function, in order.
pub fn verify(app: &mut App) -> Result<Vec<Evidence>, Problems> {
    let trusted = app.signers.clone();
    verify_under(app, &trusted)
}

/// [`verify`], with every signature checked against `trusted` (for a live
/// deploy, the serving version's keys: a bundle cannot bring its own),
/// while the files the lock must pin are those `app`'s own manifest
/// names, its own `[trust]` key files included (T18, T19).
pub fn verify_under(app: &mut App, trusted: &Signers) -> Result<Vec<Evidence>, Problems> {
    let required = !trusted.is_empty() || !app.is_dev();
    let mut problems = Vec::new();
    let manifest = app.manifest_path.clone();
    let at = |app: &App, key: &str| app.lines.get(key).map(|line| (line, 1));
    if required && trusted.is_empty() {
        problems.push(Problem {
            file: manifest.clone(),
            location: None,
            message: format!(
                "environment `{}` requires signed components, but `[trust] signers` is not set; create a key with `bulkhead keygen --output keys/release`, add `[trust] signers = [\"keys/release.pub\"]`, then run `bulkhead sign APP_DIR --key keys/release.key`",
                app.env
            ),
        });
    }
    // The manifest and the lock: verified when signed, required where
    // signatures are (the lock pins everything else; T18, T19).
    let mut own = vec![(manifest.clone(), MANIFEST_FILE)];
    if app.lock.is_some() {
        own.push((app.dir.join(LOCK_FILE), LOCK_FILE));
    }
    if required {
        check_named_files(app, &mut problems);
    }
    for (path, name) in own {
        let signed = trust::signature_path(&path).exists();
        if !trusted.is_empty()
            && (signed || required)
            && let Err(e) = trust::verify_file(&path, &app.dir, trusted)
        {
            problems.push(Problem {
                file: path.clone(),
                location: None,
                message: message(&e, name),
            });
        }
    }

    let mut evidence = Vec::new();
    // Issue 18: triggered functions' components are verified alike.
    let mut verified = Vec::new();
    for function in app.all_functions() {
        let file = app.component_name(function);
        let key = format!("function.{}.component", function.name);
        let location = at(app, &key);
        let problem = |message: String| Problem {
            file: manifest.clone(),
            location,
            message: format!("function `{}`: {message}", function.name),
        };
        // Bounded (T18, T05): a component that is /dev/zero is refused.
        let bytes = match crate::files::read_bounded(
            &function.component,
            crate::files::MAX_COMPONENT_BYTES,
        ) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(problem(format!("cannot read `{file}` ({e})")));
                continue;
            }
        };
        let sha256 = trust::sha256(&bytes);
        if let Some(locked) = function.locked
            && locked != sha256
        {
            problems.push(problem(format!(
                "`{file}` changed since it was locked: `{LOCK_FILE}` pins sha256:{}, the file is sha256:{}; review the new artefact, then run `bulkhead lock APP_DIR` (and `bulkhead sign`)",
                hex::encode(locked),
                hex::encode(sha256)
            )));
            continue;
        }
        let signed = if required && !trusted.is_empty() {
            match trust::verify_beside(&function.component, &app.dir, &file, &bytes, trusted) {
                Ok(signed) => Some(signed),
                Err(e) => {
                    problems.push(problem(e.to_string()));
                    continue;
                }
            }
        } else {
            None
        };
        evidence.push(Evidence {
            file,
            sha256,
            signed,
        });
        verified.push((function.name.clone(), sha256));
    }
    // Compile exactly what was verified (T18).
    for function in app.all_functions_mut() {
        if function.digest.is_none()
            && let Some((_, sha256)) = verified.iter().find(|(name, _)| *name == function.name)
        {
            function.digest = Some(*sha256);
        }
    }
    if problems.is_empty() {
        Ok(evidence)
    } else {
        Err(Problems(problems))
    }
}

/// A refusal of the manifest's or the lock's own signature.
fn message(error: &TrustError, name: &str) -> String {
    match error {
        TrustError::OtherFile { .. } => format!(
            "{error} (`{name}` was edited after it was signed, or its signature copied from elsewhere)"
        ),
        _ => error.to_string(),
    }
}
