//! Live deploys (T19, T18): a new version of the app, from a bundle
//! (`POST /deploys`), from APP_DIR (SIGHUP, and `serve` at start), or a
//! kept version (rollback), is verified completely before anything
//! changes: unpacked into the next version's fresh directory, loaded exactly as
//! `check` loads an app (manifest, digests, imports, migrations as a dry
//! run), checked against what only a restart may change; only then are
//! its migrations applied, the version kept, the gateway switched and the
//! `current` pointer moved. On any failure nothing changes and every
//! problem is returned, logged and audited, with who asked.
//!
//! Trust comes from the running version, never from the bundle (T18):
//! when it names `[trust] signers`, the new version's `bulkhead.toml` must
//! carry a signature by one of those keys, and its components are checked
//! against those keys, whatever signers the bundle lists (which become the
//! trust of the versions after it). A manifest signed before the serving
//! version's (`signed_at`) is a replay and is refused: a rollback to a
//! kept version is the only way back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bulkhead_gateway::{DeployError, DeployOutcome, Deployer, Gateway, Who};
use bulkhead_manifest::App;
use bulkhead_manifest::strict::Host;
use bulkhead_manifest::supply::Evidence;
use bulkhead_manifest::trust::{self, Signers};
use bulkhead_store::deploy_channel::{DeployChannel, Published};
use bulkhead_store::{AuditEvent, AuditLog};
use serde_json::json;
use tracing::{info, warn};

use crate::bundle::{self, Index};
use crate::deploy::{self, Deployment, Mode};
use crate::versions::{Record, Versions};

/// How long a deploy waits for one under way before it is told to retry.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Live {
    gateway: Gateway,
    /// The server's APP_DIR: where state lives, what SIGHUP re-reads.
    app_dir: PathBuf,
    env: String,
    audit: AuditLog,
    versions: Versions,
    keep: usize,
    /// The strict `prod` rules' view of this host (T19).
    host: Host,
    /// What the serving version trusts, and when its manifest was signed.
    trust: Mutex<Trust>,
    /// The serving version's private files, which a bundle never carries.
    private: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// One deploy or rollback at a time; a second is told to retry.
    busy: Mutex<()>,
    /// Where versions fan out to the other nodes, on PostgreSQL (issue 16).
    fanout: OnceLock<Fanout>,
}

/// This node on the deployment's deploy channel.
struct Fanout {
    channel: Arc<DeployChannel>,
    /// This process's id on the channel: its own publications are skipped.
    node: String,
}

/// What a version published by another node is installed as.
const FROM_CLUSTER: &str = "cluster";

#[derive(Clone)]
struct Trust {
    signers: Signers,
    signed_at: Option<u64>,
    /// The serving version's signed lock: its `signed_at` and its SHA-256.
    /// A new version's lock signed earlier is a replay; one signed in the
    /// same second must be this very lock (T18, T19).
    lock: Option<(u64, [u8; 32])>,
}

impl Trust {
    /// `app`'s signers, and its manifest's signature time when signed by
    /// one of them (verified where its files are, which may be a version).
    fn of(app: &App) -> Self {
        let dir = app.manifest_path.parent().unwrap_or(&app.dir);
        let signed_at = (!app.signers.is_empty())
            .then(|| trust::verify_file(&app.manifest_path, dir, &app.signers).ok())
            .flatten()
            .map(|signed| signed.signed_at);
        Self {
            signers: app.signers.clone(),
            signed_at,
            lock: signed_lock(dir, &app.signers),
        }
    }
}

/// The lock in `dir` with its `signed_at` and the SHA-256 its signature
/// verified, when signed by one of `signers`.
fn signed_lock(dir: &Path, signers: &Signers) -> Option<(u64, [u8; 32])> {
    if signers.is_empty() {
        return None;
    }
    let path = dir.join(bulkhead_manifest::LOCK_FILE);
    let signed = trust::verify_file(&path, dir, signers).ok()?;
    Some((signed.signed_at, signed.sha256))
}

/// Every file of a new version must be pinned by its signed lock, or be the
/// lock, or a `.minisig` of one of those (T18, T19): nothing rides along
/// unverified. Each refusal names the file.
fn unpinned(paths: &[String], lock: Option<&bulkhead_manifest::Lock>) -> Vec<String> {
    let Some(lock) = lock else {
        return Vec::new();
    };
    let lock_name = bulkhead_manifest::LOCK_FILE;
    let pinned = |path: &str| path == lock_name || lock.pins(path);
    // Signatures only where one is read: the lock's, the manifest's and
    // each component's; no `.minisig` beside another file rides along.
    let signed = |path: &str| {
        path == lock_name || path == bulkhead_manifest::MANIFEST_FILE || lock.get(path).is_some()
    };
    let mut problems = Vec::new();
    for path in paths {
        let ok = pinned(path) || path.strip_suffix(".minisig").is_some_and(&signed);
        if !ok {
            let shown: String = bulkhead_manifest::text::visible(path)
                .chars()
                .take(120)
                .collect();
            problems.push(format!(
                "`{shown}` is in the bundle but not pinned by the signed `{lock_name}`: only the files the manifest names are deployed; remove it, or name it in the manifest and run `bulkhead lock` and `bulkhead sign` again"
            ));
        }
    }
    problems
}

/// A version loaded, verified and ready to switch to.
struct Verified {
    deployment: Deployment,
    evidence: Vec<Evidence>,
    signed_at: Option<u64>,
    signers: Signers,
    lock: Option<(u64, [u8; 32])>,
}

impl Live {
    /// `serving` is the app the server started with.
    pub fn new(
        gateway: Gateway,
        serving: &App,
        host: Host,
        audit: AuditLog,
        versions: Versions,
        keep: usize,
    ) -> Self {
        Self {
            gateway,
            app_dir: serving.dir.clone(),
            env: serving.env.clone(),
            audit,
            versions,
            keep,
            host,
            trust: Mutex::new(Trust::of(serving)),
            private: Mutex::new(private_files(serving)),
            busy: Mutex::new(()),
            fanout: OnceLock::new(),
        }
    }

    /// Fan deploys out through `channel` (issue 16, T19): every version
    /// this node activates (a deploy, a SIGHUP reload, a rollback; not the
    /// version it starts with) is published, and every version another
    /// node publishes is installed here, verified as a deploy sent to this
    /// node's admin listener would be (its signers, replays, imports,
    /// migrations). At start the node catches up with the newest one.
    pub fn fan_out(self: &Arc<Self>, channel: Arc<DeployChannel>) {
        let mut id = [0u8; 6];
        if getrandom::fill(&mut id).is_err() {
            warn!(target: "bulkhead::deploy", "no randomness for a node id: deploys do not fan out");
            return;
        }
        let fanout = Fanout {
            channel: channel.clone(),
            node: hex::encode(id),
        };
        if self.fanout.set(fanout).is_err() {
            return;
        }
        let live = Arc::downgrade(self);
        let mut seen = 0;
        channel.listen(move || {
            let Some(live) = live.upgrade() else {
                return false;
            };
            live.follow(&mut seen);
            true
        });
    }

    /// Install the newest version published after `seen`, unless this node
    /// published it or serves it already.
    fn follow(&self, seen: &mut i64) {
        let Some(fanout) = self.fanout.get() else {
            return;
        };
        let published = match fanout.channel.newest_after(*seen) {
            Ok(Some(published)) => published,
            Ok(None) => return,
            Err(e) => {
                warn!(target: "bulkhead::deploy", error = %e, "cannot read the deploys other nodes published; retrying");
                return;
            }
        };
        if published.origin == fanout.node || self.serving_files() == Some(published.files.clone())
        {
            *seen = published.seq;
            return;
        }
        let Published {
            seq,
            kind,
            origin,
            archive,
            ..
        } = published;
        let who = Who(format!("cluster (node {origin})"));
        // Every row is held to a deploy's rules, a rollback too: the
        // database is no admin, so it can never take a node back in time
        // (T18, T19; two outside reviews: a row labelled a rollback skipped
        // the replay check, then lowered the replay floor so that an older
        // signed version followed). Without signers (`dev`) a rollback
        // still fans out; with them, roll each node back through its admin
        // listener.
        let result = self.install(&archive, &who, FROM_CLUSTER, "");
        match result {
            Ok(outcome) => {
                *seen = seq;
                info!(target: "bulkhead::deploy", version = %outcome.version, origin = %origin, "a version published by another node is now serving here")
            }
            // Nothing wrong with the version: tried again at the next wake.
            Err(e @ (DeployError::Busy | DeployError::Failed(_))) => {
                warn!(target: "bulkhead::deploy", origin = %origin, error = %e, "a version published by another node could not be installed yet; retrying")
            }
            Err(e) => {
                *seen = seq;
                if kind == "rollback" {
                    warn!(target: "bulkhead::deploy", origin = %origin, error = %e, "a rollback on another node is not applied here: an older signed version is never taken from the database; roll this node back with `bulkhead rollback --admin`");
                } else {
                    warn!(target: "bulkhead::deploy", origin = %origin, error = %e, "a version published by another node was refused here; this node keeps serving its version");
                }
            }
        }
    }

    /// The digest of the serving version's files, as the channel names it.
    fn serving_files(&self) -> Option<String> {
        let current = self.versions.current()?;
        let record = self.versions.record(&current).ok()?;
        Some(files_digest(&record.files))
    }

    /// Publish a version this node activated, for the others; what the
    /// deploy's answer says of it.
    fn publish(
        &self,
        kind: &str,
        archive: Vec<u8>,
        files: &BTreeMap<String, String>,
    ) -> Option<serde_json::Value> {
        let fanout = self.fanout.get()?;
        match fanout
            .channel
            .publish(kind, &fanout.node, &files_digest(files), archive)
        {
            Ok(seq) => Some(json!({ "published": seq })),
            Err(e) => {
                warn!(target: "bulkhead::deploy", error = %e, "this version serves here but could not be published to the other nodes; deploy it again once the database answers");
                Some(
                    json!({ "published": null, "error": "the database did not take it; deploy again" }),
                )
            }
        }
    }

    /// The deploy lock, waited for a few seconds (the start's own record,
    /// a short deploy), then `Busy`: never a queue of deploys.
    fn try_busy(&self) -> Result<std::sync::MutexGuard<'_, ()>, DeployError> {
        let deadline = std::time::Instant::now() + BUSY_WAIT;
        loop {
            match self.busy.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::sync::TryLockError::WouldBlock) => return Err(DeployError::Busy),
            }
        }
    }

    /// Deploy the app as it is in APP_DIR now (SIGHUP).
    pub fn reload(&self, who: &Who) -> Result<DeployOutcome, DeployError> {
        let app = crate::load_app_in(&self.app_dir, &self.env)
            .map_err(|problems| self.refused(who, "", None, problems))?;
        let (archive, _) =
            bundle::pack(&app).map_err(|problem| self.refused(who, "", None, vec![problem]))?;
        self.install(&archive, who, "sighup", "")
    }

    /// Keep APP_DIR as served at start as a version, unless it is the
    /// current one already, and make it current.
    pub fn record_start(&self, app: &App, functions: &[bulkhead_runtime::LoadedFunction]) {
        let _guard = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| -> anyhow::Result<Option<Record>> {
            let (archive, index) = bundle::pack(app).map_err(anyhow::Error::msg)?;
            if let Some(current) = self.versions.current()
                && let Ok(record) = self.versions.record(&current)
                && record.files == index.digests()
            {
                return Ok(None);
            }
            let staging = self.versions.staging()?;
            if let Err(problems) = bundle::unpack(&archive, &staging.join("files"))
                .and_then(|_| self.carry_private(&staging.join("files")))
            {
                let _ = std::fs::remove_dir_all(&staging);
                anyhow::bail!("{}", problems.join("; "));
            }
            let mut record = record_of(&index, functions, "serve", "serve");
            record.signed_at = self.lock_trust().signed_at;
            let record = self.versions.commit(&staging, record)?;
            self.versions.set_current(&record.name)?;
            let _ = self.versions.prune(self.keep);
            Ok(Some(record))
        })();
        match result {
            Ok(Some(record)) => {
                info!(target: "bulkhead::deploy", version = %record.name, "APP_DIR kept as a version")
            }
            Ok(None) => {}
            Err(e) => {
                warn!(target: "bulkhead::deploy", error = %format!("{e:#}"), "could not keep APP_DIR as a version; serving it anyway")
            }
        }
    }

    /// Unpack, verify, keep and switch to `archive`; publish it to the
    /// other nodes unless it came from them.
    fn install(
        &self,
        archive: &[u8],
        who: &Who,
        source: &str,
        correlation_id: &str,
    ) -> Result<DeployOutcome, DeployError> {
        let _guard = self.try_busy()?;
        let staging = self
            .versions
            .staging()
            .map_err(|e| DeployError::Failed(format!("{e:#}")))?;
        let files = staging.join("files");
        let verified = bundle::unpack(archive, &files).and_then(|index| {
            let paths: Vec<String> = index.files.iter().map(|f| f.path.clone()).collect();
            // Never a private key from a bundle, never a file where the
            // serving version keeps its own (T15, T19).
            let serving: Vec<PathBuf> = self
                .private
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(relative, _)| relative.clone())
                .collect();
            let private = private_entries(&files, &paths, &serving, "the serving version's");
            if !private.is_empty() {
                return Err(private);
            }
            self.carry_private(&files)?;
            let verified = self.verify(&files, false, &paths)?;
            Ok((index, verified))
        });
        let (index, verified) = match verified {
            Ok(pair) => pair,
            Err(problems) => {
                let _ = std::fs::remove_dir_all(&staging);
                // Named relative to the bundle, not the staging directory.
                let prefix = format!("{}/", files.display());
                let problems = problems.iter().map(|p| p.replace(&prefix, "")).collect();
                return Err(self.refused(who, correlation_id, None, problems));
            }
        };
        let mut record = record_of(&index, &verified.deployment.functions, &who.0, source);
        record.signed_at = verified.signed_at;
        // Kept (synced) before anything serves it.
        let record = self.versions.commit(&staging, record).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staging);
            DeployError::Failed(format!("{e:#}"))
        })?;
        let mut outcome = self.switch(verified, &record, who, correlation_id, "deploy")?;
        if source != FROM_CLUSTER
            && let Some(cluster) = self.publish("deploy", archive.to_vec(), &record.files)
        {
            outcome.report["cluster"] = cluster;
        }
        Ok(outcome)
    }

    /// Copy the serving version's private files (`[tls]` cert, key and
    /// client CA, the JWE key) into a new version's `files`: a bundle never
    /// carries one (a bundle entry at such a path is refused before this),
    /// the server always uses its own, and `[tls]` only changes with a
    /// restart anyway (T15, T19).
    fn carry_private(&self, files: &Path) -> Result<(), Vec<String>> {
        let private = self
            .private
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (relative, source) in private {
            let target = files.join(&relative);
            let copied = (|| -> std::io::Result<()> {
                if target.symlink_metadata().is_ok() {
                    std::fs::remove_file(&target)?;
                }
                if let Some(parent) = target.parent() {
                    bulkhead_store::files::create_private_dir(parent)?;
                }
                let bytes = std::fs::read(&source)?;
                bulkhead_store::files::write_private(&target, &[bytes.as_slice()])
            })();
            if let Err(e) = copied {
                return Err(vec![format!(
                    "cannot carry {} over from the serving version: {e}",
                    relative.display()
                )]);
            }
        }
        Ok(())
    }

    fn lock_trust(&self) -> std::sync::MutexGuard<'_, Trust> {
        self.trust.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Load the app in `files` as `check` does (the strict rules, the
    /// supply chain under the serving version's trust, compilation,
    /// imports, migrations as a dry run), then as `serve` does (applying
    /// its migrations): every problem, or the loaded app. A `rollback` may
    /// go back in time; a deploy may not.
    fn verify(
        &self,
        files: &Path,
        rollback: bool,
        paths: &[String],
    ) -> Result<Verified, Vec<String>> {
        let mut app = crate::load_app_in(files, &self.env)?;
        let running = self.lock_trust().clone();
        let mut problems: Vec<String> = bulkhead_manifest::strict::check(&app, &self.host)
            .iter()
            .map(ToString::to_string)
            .collect();
        // The new manifest's `[tls]` and JWE paths are the server's own too:
        // a bundle entry there is refused, never served (T15, T19).
        let own_private: Vec<PathBuf> = private_files(&app).into_iter().map(|(r, _)| r).collect();
        if !rollback {
            problems.extend(private_entries(
                files,
                paths,
                &own_private,
                "the new manifest's",
            ));
        }
        let own_signers = app.signers.clone();
        let mut signed_at = None;
        let mut lock_state = None;
        if !running.signers.is_empty() {
            // The serving version's keys, never the bundle's own (T18).
            match trust::verify_file(&app.manifest_path, files, &running.signers) {
                Ok(signed) => signed_at = Some(signed.signed_at),
                Err(e) => problems.push(format!(
                    "{e} (a new version must be signed by a key the serving version trusts: {})",
                    running.signers.describe()
                )),
            }
            if let (false, Some(active), Some(new)) = (rollback, running.signed_at, signed_at)
                && new < active
            {
                problems.push(format!(
                    "`bulkhead.toml` was signed at {new} (unix seconds), before the serving version's ({active}): an older signed version replayed is refused; to go back, roll back to a kept version (`bulkhead rollback --to VERSION`)"
                ));
            }
            // The lock pins the manifest and every file (T18, T19): its
            // signature time may not go back either, and the same second
            // means the same lock.
            let lock = trust::verify_file(
                &files.join(bulkhead_manifest::LOCK_FILE),
                files,
                &running.signers,
            );
            if let Ok(new) = &lock {
                lock_state = Some((new.signed_at, new.sha256));
            }
            if let (false, Ok(new), Some((active, active_sha256))) =
                (rollback, &lock, &running.lock)
            {
                let same = new.sha256 == *active_sha256;
                if new.signed_at < *active || (new.signed_at == *active && !same) {
                    problems.push(format!(
                        "`bulkhead.lock` was signed at {} (unix seconds), {} the serving version's ({active}): an older signed version replayed, or files mixed from two versions, are refused; sign a new version with `bulkhead lock` and `bulkhead sign`, or roll back to a kept version (`bulkhead rollback --to VERSION`)",
                        new.signed_at,
                        if new.signed_at < *active { "before" } else { "in the same second as, but different from," }
                    ));
                }
            }
        }
        // Signatures are checked against the serving version's keys when it
        // has any; what the lock must pin is what the new manifest names,
        // its own `[trust]` key files included (T18, T19).
        let trusted = if running.signers.is_empty() {
            own_signers.clone()
        } else {
            running.signers.clone()
        };
        if !trusted.is_empty() || !app.is_dev() {
            problems.extend(unpinned(paths, app.lock.as_ref()));
        }
        let evidence = match bulkhead_manifest::supply::verify_under(&mut app, &trusted) {
            Ok(evidence) => evidence,
            Err(found) => {
                problems.extend(found.0.iter().map(ToString::to_string));
                Vec::new()
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        // Its state is the server's, not the staging directory's.
        app.dir = self.app_dir.clone();
        let fixed = self.gateway.restart_only_changes(&app);
        if !fixed.is_empty() {
            return Err(fixed);
        }
        let progress = |line: &str| info!(target: "bulkhead::deploy", "{line}");
        // Everything, migrations as a dry run, before anything is applied.
        deploy::deploy(app.clone(), self.audit.clone(), Mode::Check, &progress)?;
        let deployment = deploy::deploy(app, self.audit.clone(), Mode::Serve, &progress)?;
        // Issue 18 (T19): the runner keeps the triggered code it started with.
        let changed = self.gateway.trigger_code_changes(&deployment.triggered);
        if !changed.is_empty() {
            return Err(changed);
        }
        // What the next deploy's lock is compared with: this lock as
        // verified under the serving keys, else under its own.
        let lock = lock_state.or_else(|| signed_lock(files, &own_signers));
        Ok(Verified {
            deployment,
            evidence,
            signed_at,
            signers: own_signers,
            lock,
        })
    }

    /// Switch the gateway to `deployment` (kept as `record`), move the
    /// pointer, prune, audit.
    fn switch(
        &self,
        verified: Verified,
        record: &Record,
        who: &Who,
        correlation_id: &str,
        kind: &'static str,
    ) -> Result<DeployOutcome, DeployError> {
        let Verified {
            deployment,
            evidence,
            signed_at,
            signers,
            lock,
        } = verified;
        let Deployment { app, functions, .. } = deployment;
        if let Err(problems) = self.gateway.switch(&app, functions) {
            return Err(self.refused(who, correlation_id, Some(record), problems));
        }
        *self.lock_trust() = Trust {
            signers,
            signed_at,
            lock,
        };
        *self.private.lock().unwrap_or_else(|p| p.into_inner()) = private_files(&app);
        let signer_of: std::collections::BTreeMap<&str, &str> = app
            .functions
            .iter()
            .zip(&evidence)
            .map(|(f, e)| (f.name.as_str(), e.signer()))
            .collect();
        if let Err(e) = self.versions.set_current(&record.name) {
            // Serving it already: say the restart would not.
            warn!(target: "bulkhead::deploy", version = %record.name, error = %format!("{e:#}"), "switched, but could not record it as current: a restart would serve the previous version");
        }
        match self.versions.prune(self.keep) {
            Ok(deleted) if !deleted.is_empty() => {
                info!(target: "bulkhead::deploy", deleted = ?deleted, "older versions deleted")
            }
            Ok(_) => {}
            Err(e) => {
                warn!(target: "bulkhead::deploy", error = %format!("{e:#}"), "could not delete older versions")
            }
        }
        let event = match kind {
            "rollback" => "deploy.rollback",
            _ => "deploy",
        };
        info!(target: "bulkhead::deploy", correlation_id, version = %record.name, who = %who.0, functions = ?record.functions, "{}", if kind == "rollback" { "rolled back" } else { "deployed" });
        self.audit.record(
            correlated(AuditEvent::new(event), correlation_id)
                .detail("app", app.name.as_str())
                .detail("env", app.env.as_str())
                .detail("version", record.name.as_str())
                .detail("who", who.0.as_str())
                .detail("source", record.source.as_str())
                .detail("functions", json!(record.functions))
                .detail("signers", json!(signer_of))
                .detail("signed_at", json!(record.signed_at))
                .detail("files", json!(record.files)),
        );
        self.audit.flush();
        Ok(DeployOutcome {
            version: record.name.clone(),
            report: json!({
                "version": record.name,
                "kind": kind,
                "functions": record.functions,
                "files": record.files,
            }),
        })
    }

    /// Log and audit a refusal with its problems (bounded: T09) and what
    /// is known of the version; the refusal to answer with.
    fn refused(
        &self,
        who: &Who,
        correlation_id: &str,
        record: Option<&Record>,
        problems: Vec<String>,
    ) -> DeployError {
        let problems = bounded(problems);
        warn!(target: "bulkhead::deploy", correlation_id, who = %who.0, problems = ?problems, "deploy refused: nothing changed");
        let mut event = correlated(AuditEvent::new("deploy.refused"), correlation_id)
            .detail("who", who.0.as_str())
            .detail("reason", "verification-failed")
            .detail("problems", json!(problems));
        if let Some(record) = record {
            event = event
                .detail("version", record.name.as_str())
                .detail("functions", json!(record.functions));
        }
        self.audit.record(event);
        self.audit.flush();
        DeployError::Refused(problems)
    }
}

/// At most this many problems are answered, logged and audited (T09).
const MAX_PROBLEMS: usize = 20;
/// At most this many characters of one problem.
const MAX_PROBLEM_CHARS: usize = 600;

/// `problems` bounded (T09): the first [`MAX_PROBLEMS`], each cut at
/// [`MAX_PROBLEM_CHARS`] characters, then `… and N more`. A hostile bundle
/// with 600k bad entries gets a short answer, log line and audit record.
fn bounded(problems: Vec<String>) -> Vec<String> {
    let total = problems.len();
    let mut out: Vec<String> = problems
        .into_iter()
        .take(MAX_PROBLEMS)
        .map(|problem| {
            if problem.chars().count() <= MAX_PROBLEM_CHARS {
                problem
            } else {
                let cut: String = problem.chars().take(MAX_PROBLEM_CHARS).collect();
                format!("{cut}… (cut)")
            }
        })
        .collect();
    if total > MAX_PROBLEMS {
        out.push(format!(
            "… and {} more problem(s), not listed; fix these first",
            total - MAX_PROBLEMS
        ));
    }
    out
}

impl Deployer for Live {
    fn deploy(
        &self,
        bundle: &[u8],
        who: &Who,
        correlation_id: &str,
    ) -> Result<DeployOutcome, DeployError> {
        self.install(bundle, who, "deploy", correlation_id)
    }

    fn rollback(
        &self,
        version: &str,
        who: &Who,
        correlation_id: &str,
    ) -> Result<DeployOutcome, DeployError> {
        self.roll_back(version, who, correlation_id)
    }

    fn versions(&self) -> Result<serde_json::Value, DeployError> {
        let list = self
            .versions
            .list()
            .map_err(|e| DeployError::Failed(format!("{e:#}")))?;
        Ok(json!({
            "current": self.versions.current(),
            "versions": list,
        }))
    }
}

impl Live {
    /// Switch back to the kept `version`, verified again as a deploy is,
    /// and tell the other nodes.
    fn roll_back(
        &self,
        version: &str,
        who: &Who,
        correlation_id: &str,
    ) -> Result<DeployOutcome, DeployError> {
        let _guard = self.try_busy()?;
        let record = self
            .versions
            .record(version)
            .map_err(|_| DeployError::UnknownVersion(version.to_string()))?;
        // T19: a kept version changed on disk since it was kept is refused.
        self.versions
            .verify_files(&record.name)
            .map_err(|problems| self.refused(who, correlation_id, Some(&record), problems))?;
        let verified = self
            .verify(
                &self.versions.files(&record.name),
                true,
                &record.files.keys().cloned().collect::<Vec<_>>(),
            )
            .map_err(|problems| self.refused(who, correlation_id, Some(&record), problems))?;
        // The kept files as a bundle, for the other nodes (issue 16).
        let archive = self
            .fanout
            .get()
            .and_then(|_| crate::load_app_in(&self.versions.files(&record.name), &self.env).ok())
            .and_then(|app| bundle::pack(&app).ok());
        let mut outcome = self.switch(verified, &record, who, correlation_id, "rollback")?;
        if let Some((archive, _)) = archive
            && let Some(cluster) = self.publish("rollback", archive, &record.files)
        {
            outcome.report["cluster"] = cluster;
        }
        Ok(outcome)
    }
}

/// `app`'s files a bundle never carries, by their path in the app (where
/// its manifest is) and where they are now.
fn private_files(app: &App) -> Vec<(PathBuf, PathBuf)> {
    let here = app.manifest_path.parent().unwrap_or(&app.dir);
    let mut paths = Vec::new();
    if let Some(listener) = app.tls.as_ref().and_then(|t| t.listener()) {
        paths.push(listener.cert.clone());
        paths.push(listener.key.clone());
        paths.extend(listener.client_ca.clone());
    }
    if let Some(jwe) = app.jwt.as_ref().and_then(|j| j.jwe.as_ref()) {
        paths.push(jwe.decryption_key.clone());
    }
    paths
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(here).ok()?;
            // `tls/key.pem` however the manifest spells it (`./tls/key.pem`).
            let mut plain = PathBuf::new();
            for part in relative.components() {
                match part {
                    std::path::Component::Normal(name) => plain.push(name),
                    std::path::Component::CurDir => {}
                    _ => return None,
                }
            }
            (!plain.as_os_str().is_empty()).then_some((plain, path))
        })
        .collect()
}

/// Does `data` hold private-key material: a PEM `PRIVATE KEY` block (PKCS#1,
/// PKCS#8, SEC1, encrypted) or a minisign secret key (T15, T18)?
fn is_private_key(data: &[u8]) -> bool {
    const MARKERS: [&[u8]; 3] = [
        b"PRIVATE KEY-----",
        b"untrusted comment: minisign encrypted secret key",
        b"minisign secret key",
    ];
    MARKERS
        .iter()
        .any(|marker| data.windows(marker.len()).any(|w| w == *marker))
        || holds_minisign_secret_key(data)
}

/// A minisign secret key whatever its comment says (`bulkhead keygen`
/// writes its own): a line whose base64 is a 158-byte `Ed…` key box.
fn holds_minisign_secret_key(data: &[u8]) -> bool {
    use base64::Engine as _;
    const SECRET_KEY_BOX_BYTES: usize = 158;
    data.split(|b| *b == b'\n').any(|line| {
        let line = line.trim_ascii();
        line.len() < 256
            && base64::engine::general_purpose::STANDARD
                .decode(line)
                .is_ok_and(|key| key.len() == SECRET_KEY_BOX_BYTES && key.starts_with(b"Ed"))
    })
}

/// The bundle entries (`paths`, unpacked in `files`) that are private-key
/// material, or sit at one of `reserved` (the `[tls]` cert, key and client
/// CA and the JWE key of `whose` manifest, which the server keeps its own
/// of): each named, with the fix (T15, T19).
fn private_entries(
    files: &Path,
    paths: &[String],
    reserved: &[PathBuf],
    whose: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for path in paths {
        let shown: String = bulkhead_manifest::text::visible(path)
            .chars()
            .take(120)
            .collect();
        if reserved.iter().any(|r| r == Path::new(path)) {
            problems.push(format!(
                "`{shown}` is {whose} `[tls]` certificate, key or client CA, or JWE decryption key: a bundle never replaces them (the server keeps its own; change them on the server and restart); remove it from the bundle"
            ));
        } else if std::fs::read(files.join(path)).is_ok_and(|data| is_private_key(&data)) {
            problems.push(format!(
                "`{shown}` holds a private key: a bundle never carries one (keep signing keys off the server, and `[tls]`/JWE keys on it); remove it from the bundle"
            ));
        }
    }
    problems
}

/// A version's files (path → digest) as one digest: how nodes tell
/// whether a published version is the one they serve.
fn files_digest(files: &BTreeMap<String, String>) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    for (path, digest) in files {
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(digest.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// `event` with the request's correlation ID, when there is a request.
fn correlated(event: AuditEvent, correlation_id: &str) -> AuditEvent {
    if correlation_id.is_empty() {
        event
    } else {
        event.correlation_id(correlation_id)
    }
}

/// The record of a version made of `index`'s files, loaded as `functions`.
fn record_of(
    index: &Index,
    functions: &[bulkhead_runtime::LoadedFunction],
    who: &str,
    source: &str,
) -> Record {
    Record {
        name: String::new(),
        number: 0,
        created_ms: bulkhead_store::now_ms(),
        who: who.to_string(),
        source: source.to_string(),
        functions: functions
            .iter()
            .map(|f| (f.name().to_string(), f.digest()))
            .collect(),
        files: index.digests(),
        signed_at: None,
    }
}
