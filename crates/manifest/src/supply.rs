//! The app's supply chain at deploy (T18, T19): every component matches
//! `bulkhead.lock`, and carries a signature from a trusted key when the app
//! names signers, and always outside `dev`; the manifest's and the lock's
//! own signatures are verified when present, and required outside `dev`.
//! Every problem is reported at once, each naming the file and the fix.

use crate::problem::{Problem, Problems};
use crate::trust::{self, Signed, TrustError};
use crate::{App, LOCK_FILE, MANIFEST_FILE};

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

/// Verify every component of `app` against the lock and the signers, and
/// pin each function to the digest verified here, so the runtime refuses
/// a file swapped between this check and its compilation. Returns one
/// [`Evidence`] per function, in order.
pub fn verify(app: &mut App) -> Result<Vec<Evidence>, Problems> {
    let required = signatures_required(app);
    let mut problems = Vec::new();
    let manifest = app.manifest_path.clone();
    let at = |app: &App, key: &str| app.lines.get(key).map(|line| (line, 1));
    if required && app.signers.is_empty() {
        problems.push(Problem {
            file: manifest.clone(),
            location: None,
            message: format!(
                "environment `{}` requires signed components, but `[trust] signers` is not set; create a key with `bulkhead keygen --output keys/release`, add `[trust] signers = [\"keys/release.pub\"]`, then run `bulkhead sign APP_DIR --key keys/release.key`",
                app.env
            ),
        });
    }
    // The manifest and the lock: verified when signed, required outside dev.
    let mut own = vec![(manifest.clone(), MANIFEST_FILE)];
    if app.lock.is_some() {
        own.push((app.dir.join(LOCK_FILE), LOCK_FILE));
    }
    for (path, name) in own {
        let signed = trust::signature_path(&path).exists();
        if !app.signers.is_empty()
            && (signed || !app.is_dev())
            && let Err(e) = trust::verify_file(&path, &app.dir, &app.signers)
        {
            problems.push(Problem {
                file: path.clone(),
                location: None,
                message: message(&e, name),
            });
        }
    }

    let mut evidence = Vec::new();
    for index in 0..app.functions.len() {
        let function = &app.functions[index];
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
        let signed = if required && !app.signers.is_empty() {
            match trust::verify_beside(&function.component, &app.dir, &file, &bytes, &app.signers) {
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
        // Compile exactly what was verified (T18).
        let function = &mut app.functions[index];
        if function.digest.is_none() {
            function.digest = Some(sha256);
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
