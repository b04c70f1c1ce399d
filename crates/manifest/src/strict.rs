//! Strict `prod` (T19): outside `dev`, an app is deployed only when every
//! strict default holds. Each rule broken is one problem at its manifest
//! line with the exact fix, and all are reported at once, by `check` and
//! by `serve` alike. Signatures themselves are checked by
//! [`crate::supply`]; the facts only the host knows (the master key, the
//! admin listener) come in [`Host`].

use crate::App;
use crate::problem::Problem;

/// What the host knows about this deploy, beyond the manifest.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// Why the master key is a development key, when it is.
    pub dev_master_key: Option<String>,
    /// Why the master key file is exposed, when it is (T15, T19): open to
    /// group or others, or inside the app directory.
    pub exposed_master_key: Vec<String>,
    /// Why the admin listener is exposed, when it leaves loopback
    /// without a token or mTLS.
    pub exposed_admin: Option<String>,
}

/// Every strict rule `app` breaks; empty in `dev`.
pub fn check(app: &App, host: &Host) -> Vec<Problem> {
    if app.is_dev() {
        return Vec::new();
    }
    let mut rules = Rules {
        app,
        problems: Vec::new(),
    };
    rules.tls();
    rules.pinned();
    rules.public_routes();
    rules.strict_imports();
    rules.rate_limits();
    rules.budget();
    rules.ownership();
    if let Some(why) = &host.dev_master_key {
        rules.at(
            None,
            format!("the master key is a development key ({why}); outside `dev` set BULKHEAD_MASTER_KEY_FILE to a key file of its own, kept outside the app directory: `head -c 32 /dev/urandom > /etc/bulkhead/{}.key && chmod 600 /etc/bulkhead/{}.key`", app.env, app.env),
        );
    }
    for why in &host.exposed_master_key {
        rules.at(None, format!("the master key file {why}"));
    }
    if let Some(why) = &host.exposed_admin {
        rules.at(
            None,
            format!("the admin listener {why}; create a token with `bulkhead admin token APP_DIR --env {}`, keep it on loopback, or pass `--admin-listen off`", app.env),
        );
    }
    rules.problems
}

struct Rules<'a> {
    app: &'a App,
    problems: Vec<Problem>,
}

impl Rules<'_> {
    fn line(&self, keys: &[&str]) -> Option<(usize, usize)> {
        self.app.lines.first(keys).map(|line| (line, 1))
    }

    fn at(&mut self, location: Option<(usize, usize)>, message: String) {
        self.problems.push(Problem {
            file: self.app.manifest_path.clone(),
            location,
            message: format!("strict `{}`: {message}", self.app.env),
        });
    }

    /// T15: the public listener speaks TLS, or a proxy on this machine does.
    fn tls(&mut self) {
        // Review of issue 14, finding C (T15, T19): not the dev pair.
        if let Some(listener) = self.app.tls.as_ref().and_then(|t| t.listener()) {
            let env_cert = format!("env.{}.tls.cert", self.app.env);
            let env_tls = format!("env.{}.tls", self.app.env);
            let at = self.line(&[&env_cert, "tls.cert", &env_tls, "tls"]);
            let state = self.app.dir.join(".bulkhead").canonicalize().ok();
            for (what, path) in [("cert", &listener.cert), ("key", &listener.key)] {
                if let (Ok(file), Some(state)) = (path.canonicalize(), &state)
                    && file.starts_with(state)
                {
                    self.at(
                        at,
                        format!("`[tls]` {what} `{}` is inside the app's `.bulkhead/` state, where `bulkhead tls self-signed` writes the dev pair; outside `dev` use a certificate from a CA your clients trust, kept outside `.bulkhead/` (like /etc/bulkhead/tls/)", path.display()),
                    );
                }
            }
            if crate::tls::is_dev_certificate(&listener.cert) {
                self.at(
                    at,
                    format!("`[tls]` cert `{}` is a development certificate made by `bulkhead tls self-signed` (subject \"{}\"); outside `dev` use a certificate from a CA your clients trust", listener.cert.display(), crate::tls::DEV_CERT_ORGANIZATION),
                );
            }
        }
        if self.app.tls.is_none() {
            self.at(
                None,
                format!("the public listener is plain HTTP; add `[env.{}.tls]` (or `[tls]`) with `cert = \"…\"` and `key = \"…\"` (PEM files), or, when a TLS-terminating proxy on this machine forwards to a loopback listener, `terminated_upstream = \"which proxy terminates TLS\"`", self.app.env),
            );
        }
    }

    /// T18: every component pinned by the lock or a `digest =` line.
    fn pinned(&mut self) {
        for f in self.app.all_functions() {
            let digest = format!("function.{}.digest", f.name);
            if f.locked.is_some() || self.app.lines.get(&digest).is_some() {
                continue;
            }
            let at = self.line(&[&format!("function.{}.component", f.name)]);
            let component = self.app.component_name(f);
            self.at(
                at,
                format!("function `{}`: component `{component}` is not pinned; run `bulkhead lock APP_DIR` after review (or add `digest = \"sha256:…\"`), then `bulkhead sign`", f.name),
            );
        }
    }

    /// T11/T19: a public route says why.
    fn public_routes(&mut self) {
        for f in self.app.all_functions() {
            if !f.access.is_public() || f.public_reason.is_some() {
                continue;
            }
            let name = &f.name;
            let at = self.line(&[
                &format!("function.{name}.auth"),
                &format!("function.{name}"),
            ]);
            self.at(
                at,
                format!("function `{name}` is public without a reason; add `public_reason = \"why anyone may call it\"` to it, or require a credential (`auth = \"jwt\"`, …)"),
            );
        }
    }

    /// T18: a capability import without its grant is refused.
    fn strict_imports(&mut self) {
        if !self.app.strict_imports {
            let loose = self.app.all_functions().any(|f| !f.strict_imports);
            if loose {
                let at = self.line(&["app"]);
                self.at(
                    at,
                    "`strict_imports` is off; add `strict_imports = true` under `[app]`".into(),
                );
            }
            return;
        }
        for f in self.app.all_functions().filter(|f| !f.strict_imports) {
            let at = self.line(&[&format!("function.{}", f.name)]);
            self.at(
                at,
                format!("function `{}` turns `strict_imports` off; remove `strict_imports = false` from it", f.name),
            );
        }
    }

    /// T03: no caller may go unthrottled.
    fn rate_limits(&mut self) {
        if self.app.limits.rate_limit.is_none() {
            let at = self.line(&["limits.rate_limit"]);
            self.at(
                at,
                "`[limits] rate_limit` is off; set a per-caller rate, like `rate_limit = { per_caller = \"10/s\", burst = 20 }`, or remove it for the default".into(),
            );
        }
        for f in self.app.all_functions() {
            let key = format!("function.{}.rate_limit", f.name);
            if f.limits.rate_limit.is_none() && self.app.lines.get(&key).is_some() {
                let at = self.line(&[&key]);
                self.at(
                    at,
                    format!("function `{}` turns its `rate_limit` off; give it a rate, like `rate_limit = {{ per_caller = \"5/s\" }}`, or remove it to inherit the app's", f.name),
                );
            }
        }
    }

    /// T04: the bill has a ceiling.
    fn budget(&mut self) {
        if self.app.budget.is_unlimited() {
            let at = self.line(&["limits.metering", "limits.budget"]);
            self.at(
                at,
                "the app has no budget; set `[limits] budget = { per_day = \"10 USD\" }` (and keep metering on)".into(),
            );
        }
    }

    /// T19/T18: what `serve` trusts on disk is the app's own, not another
    /// local user's. The app directory, `.bulkhead/` and this
    /// environment's state directory, `bulkhead.toml`, `bulkhead.lock`,
    /// every `[trust] signers` key and every component (and each directory
    /// between them and the app directory) must belong to the user running
    /// bulkhead (or root) and be writable by nobody else: otherwise another
    /// user swaps in their own state, key or component and re-signs it.
    fn ownership(&mut self) {
        let dir = self.app.dir.clone();
        let mut paths = vec![
            dir.clone(),
            dir.join(".bulkhead"),
            self.app.state_dir(),
            self.app.manifest_path.clone(),
            dir.join(crate::lock::LOCK_FILE),
        ];
        paths.extend(self.app.signers.iter().map(|s| dir.join(&s.file)));
        paths.extend(self.app.all_functions().map(|f| f.component.clone()));
        let mut seen = std::collections::BTreeSet::new();
        for path in paths {
            // Each directory between the file and the app directory too.
            let mut chain = vec![path.clone()];
            if path.starts_with(&dir) {
                let mut parent = path.parent();
                while let Some(p) = parent.filter(|p| p.starts_with(&dir) && *p != dir) {
                    chain.push(p.to_path_buf());
                    parent = p.parent();
                }
            }
            for path in chain {
                if !seen.insert(path.clone()) {
                    continue;
                }
                if let Some(why) = foreign_or_writable(&path) {
                    self.at(None, why);
                }
            }
        }
    }
}

/// The user this process runs as (its effective uid).
#[cfg(unix)]
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `path` may not be trusted (T19, T18): it belongs to a user other
/// than this one or root, or its group or others may write to it. `None`
/// when it is fine or absent (a missing file is reported elsewhere).
#[cfg(unix)]
pub fn foreign_or_writable(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    let me = current_uid();
    let shown = path.display();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "`{shown}` belongs to uid {}, not to the user running bulkhead (uid {me}) or root: another local user could replace it; check its contents, then `chown {me} {shown}`",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "`{shown}` is writable by its group or others (mode {mode:o}): another local user could replace what it holds; run `chmod go-w {shown}`"
        ));
    }
    None
}

#[cfg(not(unix))]
pub fn foreign_or_writable(_path: &std::path::Path) -> Option<String> {
    None
}
