//! `bulkhead serve`: deploy, listen, serve until asked to stop, drain.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use bulkhead_gateway::{AdminAccess, Gateway, SpanExport};
use bulkhead_manifest::supply::Evidence;
use bulkhead_manifest::{App, MANIFEST_FILE};
use bulkhead_store::credentials::SharedCredentials;
use bulkhead_store::{AuditEvent, AuditLog, State, Store};
use serde_json::json;
use tracing::{info, warn};

use crate::live::Live;
use crate::versions::Versions;
use crate::{Target, deploy, load_verified, load_verified_in, report};

/// The most `--workers` accepted: each is an OS thread, and a host's
/// thread limit (ulimit -u, a container's pids limit) is often near this.
pub const MAX_WORKERS: i64 = 1024;

/// The async runtime, with `workers` threads or tokio's one per core
/// (issue 17). tokio panics when the OS refuses a worker thread, and
/// unwinding then waits for ever on the threads it did start: so while it
/// builds, a panic prints what to do and exits at once instead.
fn start_runtime(workers: Option<u16>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(usize::from(workers.max(1)));
    }
    builder.enable_all().thread_name("bulkhead");
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|panic| {
        let why = panic
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.payload().downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        eprintln!(
            "error: cannot start the async runtime ({why}); lower --workers or raise the \
             process's thread limit (ulimit -u, systemd TasksMax, the container's pids limit)"
        );
        std::process::exit(1);
    }));
    let built = builder.build();
    std::panic::set_hook(previous);
    built.context("cannot start the async runtime")
}

pub fn run(
    target: &Target,
    listen: SocketAddr,
    admin_listen: &str,
    keep_versions: usize,
    workers: Option<u16>,
) -> Result<ExitCode> {
    // Issue 17: SQLite's one-time set-up beside the manifest's checks.
    bulkhead_store::warm_up();
    let admin_address = match admin_listen {
        "off" => None,
        text => Some(text.parse::<SocketAddr>().with_context(|| {
            format!("--admin-listen `{text}` is not an address like 127.0.0.1:9901 (or `off`)")
        })?),
    };
    // T19: outside `dev` the admin listener needs a token wherever it
    // listens; listed with every other strict reason.
    let mut host = crate::strict_host(target);
    // Issue 17: one connection held while the server runs, so no
    // connection closed during start-up checkpoints the WAL (see
    // `Store::open_held`).
    let mut held: Option<State> = None;
    if let Some(address) = admin_address
        && target.env != bulkhead_manifest::DEFAULT_ENV
        && bulkhead_store::tokens::admin_token_hashes(
            &**held.insert(target.state(true)?).credentials(),
        )?
        .is_empty()
    {
        host.exposed_admin = Some(if address.ip().is_loopback() {
            format!("on {address} has no token (outside `dev` even loopback needs one)")
        } else {
            format!("would listen on {address}, beyond loopback, with no token")
        });
    }
    let (mut app, mut evidence) = match load_verified(target, &host) {
        Ok(loaded) => loaded,
        Err(problems) => {
            audit_refusal(target, &problems);
            return Ok(report(&problems));
        }
    };
    if let Err(problem) = crate::tls_cmd::listener_policy(&app, listen) {
        return Ok(report(&[problem]));
    }
    // Issue 17: the engine (pool, epoch ticker, linker) needs no state:
    // built on a thread while the state, the versions and the audit trail
    // open. Nothing is compiled or loaded in it before `deploy` (T18).
    let settings = deploy::engine_settings(&app);
    let engine = std::thread::Builder::new()
        .name("bulkhead-engine".into())
        .spawn(move || bulkhead_runtime::Runtime::prepare(&settings))
        .ok();
    let state = match held {
        Some(state) => state,
        None => target.state(true)?,
    };
    let store = state.store().clone();
    // T19: outside `dev`, a restart serves the last version deployed (or
    // rolled back to), never older code; `dev` serves APP_DIR, so edits
    // take effect on restart. Either way APP_DIR served is kept as a
    // version when it differs from the current one.
    let versions = Versions::open(&app.state_dir())?;
    versions.clean_staging();
    let from_version = if app.is_dev() {
        None
    } else {
        versions.current()
    };
    if let Some(name) = &from_version {
        // T19: the kept files are what was verified and recorded at deploy,
        // or the server does not start (naming each file and both digests).
        if let Err(mut problems) = versions.verify_files(name) {
            problems.push(format!(
                "refusing to serve the deployed version {name}: its files differ from its record"
            ));
            return Ok(report(&problems));
        }
        (app, evidence) = match load_verified_in(&versions.files(name), &target.env, &host) {
            Ok((mut deployed, verified)) => {
                // Verified where its files are; its state is APP_DIR's.
                deployed.dir = target.app_dir.clone();
                info!(target: "bulkhead::deploy", version = %name, "serving the deployed version {name}, not APP_DIR; send SIGHUP or `bulkhead deploy` to serve APP_DIR's files");
                (deployed, verified)
            }
            Err(mut problems) => {
                problems.push(format!(
                    "the deployed version {name} cannot be loaded; roll back offline with `bulkhead rollback {} --env {} --to VERSION`",
                    target.app_dir.display(),
                    target.env
                ));
                return Ok(report(&problems));
            }
        };
    }
    let access = match admin_address {
        Some(address) => Some((
            address,
            admin_access(state.credentials(), &app, address, target)?,
        )),
        None => None,
    };
    // Every writer of the trail (this server, CLI commands) holds to the
    // budget kept in the store (T09).
    store.set_audit_max_size(app.audit_max_size.bytes())?;
    // Issue 17: the writer opens on its own thread (connection, run
    // marker and its syncs, the head check) while the runtime starts and
    // the functions load; `serve` waits for it before it listens (T09).
    let (audit, audit_opening) = AuditLog::start_opening(&store)?;
    // Issue 16 (T09): on PostgreSQL this node's trail is shipped into the
    // deployment's one chain.
    let shared_trail = shared_trail(&state, &target.env)?;
    let runtime = start_runtime(workers)?;
    ignore_file_size_signal(&runtime);
    let spans = span_export(&app, runtime.handle())?;
    let result = runtime.block_on(serve(
        (app, evidence, engine),
        listen,
        access,
        (audit.clone(), audit_opening),
        state.clone(),
        spans.clone(),
        Kept {
            versions,
            keep: keep_versions,
            from_version,
            host,
        },
    ));
    // After the drain, so every request's span is queued; the runtime still
    // runs the last exports.
    if let Some(spans) = spans
        && let Err(e) = spans.shutdown()
    {
        warn!(target: "bulkhead::telemetry", error = %e, "could not send every queued span");
    }
    audit.close();
    // After the trail closed: its last records are shipped too.
    if let Some(trail) = shared_trail {
        trail.close();
    }
    // Issue 17: the next start finds an empty WAL (nothing to read back).
    state.checkpoint();
    result
}

/// The deployment's audit chain on PostgreSQL (issue 16, T09), shipping.
fn shared_trail(
    state: &State,
    env: &str,
) -> Result<Option<Arc<bulkhead_store::audit_chain::SharedTrail>>> {
    if !state.is_shared() {
        return Ok(None);
    }
    let keyring = state.keyring(env)?;
    let Some(trail) = state
        .shared_trail(&keyring)
        .context("cannot open the deployment's audit chain")?
    else {
        return Ok(None);
    };
    trail.start()?;
    info!(target: "bulkhead::audit", node = trail.node(), "this node's audit trail is shipped into the deployment's chain");
    Ok(Some(trail))
}

/// Issue 16: per-caller rate limits shared through Redis, when `[cluster]`
/// (or `BULKHEAD_REDIS_URL`) names one. Nothing is sent yet: a Redis
/// that does not answer leaves the node at its share, never unlimited.
fn cluster_limits(
    app: &App,
) -> Result<Option<Arc<bulkhead_gateway::cluster::ClusterLimits>>, String> {
    use bulkhead_manifest::cluster::REDIS_URL_ENV;
    let url = app
        .cluster
        .redis_url(&app.dir, std::env::var(REDIS_URL_ENV).ok())
        .map_err(|e| format!("[cluster]: {e}"))?;
    let Some(url) = url else {
        return Ok(None);
    };
    let limits =
        bulkhead_gateway::cluster::ClusterLimits::start(&url, &app.name, &app.env, &app.cluster)
            .map_err(|e| format!("[cluster]: {e}"))?;
    info!(
        target: "bulkhead::cluster",
        key_prefix = %app.cluster.key_prefix,
        fallback_nodes = app.cluster.fallback_nodes,
        "per-caller rate limits are shared with the other nodes through Redis"
    );
    Ok(Some(limits))
}

/// T18/T19: a deploy refused before anything ran (unsigned, unlocked or
/// changed components, strict `prod` rules) is recorded in the
/// environment's audit trail with every reason; best effort, since the
/// refusal itself is what matters.
fn audit_refusal(target: &Target, problems: &[String]) {
    let Ok(store) = target.store(true) else {
        return;
    };
    let Ok(audit) = AuditLog::start(&store) else {
        return;
    };
    audit.record(
        AuditEvent::new("deploy.refused")
            .detail("env", target.env.as_str())
            .detail("problems", problems.to_vec()),
    );
    audit.close();
    warn!(target: "bulkhead::deploy", env = %target.env, problems = problems.len(), reason = "deploy-refused", "deploy refused");
}

/// Where request spans go: a collector, when the binary has the `otlp`
/// feature and the manifest's `[telemetry]` names one.
#[cfg(feature = "otlp")]
fn span_export(app: &App, runtime: &tokio::runtime::Handle) -> Result<Option<Arc<dyn SpanExport>>> {
    crate::otlp::start(app, runtime)
}

/// Without the `otlp` feature `load_app` refuses `[telemetry]`: nothing to export.
#[cfg(not(feature = "otlp"))]
fn span_export(_: &App, _: &tokio::runtime::Handle) -> Result<Option<Arc<dyn SpanExport>>> {
    Ok(None)
}

/// The admin listener's policy: tokens if any exist; open only in `dev` on
/// loopback, and only until the first token is created (which applies at
/// once, without a restart); otherwise refuse to start rather than expose
/// metrics. With `[tls] client_ca` set it also requires TLS with a client
/// certificate verified against it (mTLS, T15, T17), on any address.
fn admin_access(
    credentials: &SharedCredentials,
    app: &App,
    address: SocketAddr,
    target: &Target,
) -> Result<AdminAccess> {
    let access = admin_tokens(credentials, &app.env, address, target)?;
    let mtls = app
        .tls
        .as_ref()
        .and_then(|t| t.listener())
        .is_some_and(|l| l.client_ca.is_some());
    Ok(if mtls {
        access.require_client_certificate()
    } else {
        access
    })
}

/// The tokens are the state's (issue 16: on PostgreSQL, every node's).
fn admin_tokens(
    credentials: &SharedCredentials,
    env: &str,
    address: SocketAddr,
    target: &Target,
) -> Result<AdminAccess> {
    use bulkhead_store::tokens::admin_token_hashes;
    let reader = credentials.clone();
    // A failed read is an error, never "no tokens", which would open the
    // `dev` listener (T08): the listener keeps the tokens it last read.
    let read = Box::new(move || admin_token_hashes(&*reader).map_err(|e| e.to_string()));
    let has_token = !admin_token_hashes(&**credentials)?.is_empty();
    if env == "dev" && address.ip().is_loopback() {
        if !has_token {
            warn!(
                target: "bulkhead::admin",
                address = %address,
                "admin listener has no token: open to this machine only (dev) until one is created with `bulkhead admin token`"
            );
        }
        return Ok(AdminAccess::open_until_token(read));
    }
    if has_token {
        return Ok(AdminAccess::token(read));
    }
    bail!(
        "the admin listener on {address} needs a token outside `dev` on loopback: run `bulkhead admin token {} --env {env}` first, or pass `--admin-listen off`",
        target.app_dir.display()
    )
}

/// The engine being built beside the rest of start-up (issue 17).
type EngineThread =
    std::thread::JoinHandle<Result<bulkhead_runtime::Prepared, bulkhead_runtime::RuntimeError>>;

/// The versions a server keeps and where it started from (T19).
struct Kept {
    versions: Versions,
    keep: usize,
    /// The kept version served at start; `None` for APP_DIR.
    from_version: Option<String>,
    /// The strict rules' view of this host, for live deploys (T19).
    host: bulkhead_manifest::strict::Host,
}

/// `engine`: the engine being built beside the rest of start-up.
async fn serve(
    (app, evidence, engine): (App, Vec<Evidence>, Option<EngineThread>),
    listen: SocketAddr,
    admin: Option<(SocketAddr, AdminAccess)>,
    (audit, audit_opening): (AuditLog, bulkhead_store::AuditOpening),
    state: State,
    spans: Option<Arc<dyn SpanExport>>,
    kept: Kept,
) -> Result<ExitCode> {
    // The directory the signatures were verified in: a kept version's own
    // files when serving one, so its components are found under their
    // signed names (T18).
    let verified_in = match &kept.from_version {
        Some(name) => kept.versions.files(name),
        None => app.dir.clone(),
    };
    let progress = |line: &str| info!(target: "bulkhead::deploy", "{line}");
    let deployment = match tokio::task::block_in_place(|| {
        // A failed or panicked build is built again, inline, so its error
        // is reported as a deploy problem.
        let prepared = engine
            .and_then(|thread| thread.join().ok())
            .and_then(Result::ok);
        let opened = deploy::Opened {
            prepared,
            state: Some(state.clone()),
        };
        deploy::deploy_on(app, audit.clone(), deploy::Mode::Serve, &progress, opened)
    }) {
        Ok(deployment) => deployment,
        Err(problems) => return Ok(report(&problems)),
    };
    let app = &deployment.app;
    // Before this deploy's own record (T18): who signed what last time.
    let before = if app.is_dev() {
        Default::default()
    } else {
        last_signers(state.store())
    };
    crate::sweeper::start(app, &deployment.data);
    let cluster = match cluster_limits(app) {
        Ok(cluster) => cluster,
        Err(problem) => return Ok(report(&[problem])),
    };
    let fanout_channel = state.deploy_channel();
    let gateway = match Gateway::in_cluster(
        app,
        deployment.functions.clone(),
        audit.clone(),
        state,
        spans,
        cluster,
    ) {
        Ok(gateway) => gateway,
        Err(problem) => return Ok(report(&[problem])),
    };
    let live = Arc::new(Live::new(
        gateway.clone(),
        app,
        kept.host,
        audit.clone(),
        kept.versions,
        kept.keep,
    ));
    gateway.set_deployer(live.clone());
    // Issue 16 (T19): on PostgreSQL, versions fan out to every node.
    match fanout_channel {
        Ok(Some(channel)) => live.fan_out(channel),
        Ok(None) => {}
        Err(e) => return Ok(report(&[format!("cannot open the deploy channel: {e}")])),
    }
    // T09: nothing is served, and nothing is kept as a version, unless the
    // audit writer opened (its run marker synced, the chain's end checked).
    tokio::task::block_in_place(|| audit_opening.wait()).context("cannot start the audit trail")?;
    reload_on_hangup(&live);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen}; is another server using it? pick another with --listen"
            )
        })?;
    let address = listener
        .local_addr()
        .context("cannot read the listening address")?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    let triggers_stopped = stopped.clone();
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let admin_task = match admin {
        Some((admin_address, access)) => {
            let admin_listener = tokio::net::TcpListener::bind(admin_address).await.with_context(|| {
                format!("cannot listen on {admin_address} for the admin listener; pick another with --admin-listen (or `off`)")
            })?;
            let bound = admin_listener
                .local_addr()
                .context("cannot read the admin address")?;
            info!(target: "bulkhead::admin", address = %bound, "admin listening");
            Some(tokio::spawn(gateway.clone().serve_admin(
                admin_listener,
                access,
                until_stopped(),
            )))
        }
        None => None,
    };

    // Review of issue 14, finding A (T18, T19): outside `dev`, a function
    // now signed by another key than at the last deploy is said aloud.
    if !app.is_dev() {
        for spec in &app.functions {
            let now = signer_of(&evidence, &verified_in, app, spec);
            if let Some(old) = before.get(&spec.name)
                && old != now
            {
                warn!(target: "bulkhead::trust", function = %spec.name, old_signer = %old, new_signer = %now, "the function's signer key changed since the last deploy");
                audit.record(
                    AuditEvent::new("trust.signer_changed")
                        .function(spec.name.as_str())
                        .detail("old_signer", old.as_str())
                        .detail("new_signer", now),
                );
            }
        }
    }
    audit.record(
        AuditEvent::new("deploy")
            .detail("app", app.name.as_str())
            .detail("env", app.env.as_str())
            .detail("listen", address.to_string())
            .detail(
                "functions",
                app.functions
                    .iter()
                    .zip(&deployment.functions)
                    .map(|(spec, loaded)| {
                        // T18: which key vouched for the code now served.
                        let file = app.component_name(spec);
                        let signer = signer_of(&evidence, &verified_in, app, spec);
                        json!({"name": spec.name, "route": spec.route.as_str(), "component": file, "digest": loaded.digest(), "signer": signer})
                    })
                    .collect::<Vec<_>>(),
            ),
    );
    // T09 (issue 19): the record first: committed before the first request
    // is served, so a server killed at once still left its deploy record;
    // and anchored in the head file, so a rolled-back state database cannot
    // take the deploy record (or the first requests' records) with it
    // unseen. Issue 17 tried waiting for the record's own group commit
    // instead (no head-file write on the start path); an outside review
    // showed the rollback that opened, so the flush stays. Connections that
    // arrive meanwhile wait in the listen backlog, not refused.
    audit.flush();
    // Issue 17: after the flush, so that packing and hashing APP_DIR does
    // not take a core from the start-up path; as before, in the background.
    if kept.from_version.is_none() {
        let (live, app, functions) = (live.clone(), app.clone(), deployment.functions.clone());
        tokio::task::spawn_blocking(move || live.record_start(&app, &functions));
    }
    let signalled = shutdown_signal();
    info!(
        target: "bulkhead::listener",
        address = %address,
        tls = app.tls.as_ref().is_some_and(|t| t.listener().is_some()),
        app = %app.name,
        env = %app.env,
        functions = deployment.functions.len(),
        manifest = %app.dir.join(MANIFEST_FILE).display(),
        "listening"
    );
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        signalled.await;
        let _ = signal_stop.send(true);
    });
    // Issue 18: schedules and queue consumers, after the deploy record;
    // the stop signal stops them with the listener.
    let triggers = gateway.start_triggers(
        app,
        deployment.triggered.clone(),
        deployment.data.clone(),
        triggers_stopped,
    );
    let served = gateway.serve(listener, until_stopped()).await;
    // Runs and deliveries under way finish and settle (issue 18); a
    // listener that failed stops them too.
    let _ = stop.send(true);
    triggers.finish().await;
    served.context("the listener failed")?;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    audit.record(AuditEvent::new("shutdown").detail("app", app.name.as_str()));
    Ok(ExitCode::SUCCESS)
}

/// The key that signed `spec`'s component, as verified in `verified_in`
/// (APP_DIR or a kept version's files), or `unsigned`.
fn signer_of<'a>(
    evidence: &'a [Evidence],
    verified_in: &std::path::Path,
    app: &App,
    spec: &bulkhead_manifest::Function,
) -> &'a str {
    let file = bulkhead_manifest::trust::app_relative(verified_in, &spec.component)
        .unwrap_or_else(|| app.component_name(spec));
    evidence
        .iter()
        .find(|e| e.file == file)
        .map_or("unsigned", Evidence::signer)
}

/// SIGHUP re-reads APP_DIR and deploys it as `POST /deploys` would
/// (T19): verified completely, switched, kept, audited; a failed reload
/// keeps serving the old version and logs every problem.
fn reload_on_hangup(live: &Arc<Live>) {
    #[cfg(unix)]
    {
        let kind = tokio::signal::unix::SignalKind::hangup();
        let mut hangups = match tokio::signal::unix::signal(kind) {
            Ok(hangups) => hangups,
            Err(e) => {
                warn!(target: "bulkhead::deploy", error = %e, "cannot handle SIGHUP: reloads need `bulkhead deploy`");
                return;
            }
        };
        let live = live.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                info!(target: "bulkhead::deploy", "SIGHUP: reloading APP_DIR");
                let live = live.clone();
                let who = bulkhead_gateway::Who("SIGHUP".into());
                match tokio::task::spawn_blocking(move || live.reload(&who)).await {
                    Ok(Ok(outcome)) => {
                        info!(target: "bulkhead::deploy", version = %outcome.version, "SIGHUP reload serving")
                    }
                    Ok(Err(e)) => {
                        warn!(target: "bulkhead::deploy", error = %e, "SIGHUP reload refused: still serving the previous version")
                    }
                    Err(e) => warn!(target: "bulkhead::deploy", error = %e, "SIGHUP reload failed"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = live;
}

/// A write past a file-size limit (`ulimit -f`) would kill the server with
/// SIGXFSZ, by default: handled, the write fails with EFBIG instead, and
/// the store counts what it could not write (T09, issue 19). Tokio's
/// handler replaces the default action for the rest of the process.
fn ignore_file_size_signal(runtime: &tokio::runtime::Runtime) {
    #[cfg(unix)]
    {
        let _guard = runtime.enter();
        let kind = tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ);
        if let Err(e) = tokio::signal::unix::signal(kind) {
            warn!(target: "bulkhead::listener", error = %e, "cannot handle SIGXFSZ: a file-size limit would stop the server");
        }
    }
    #[cfg(not(unix))]
    let _ = runtime;
}

/// SIGTERM (and Ctrl-C). The SIGTERM handler is installed when this is
/// called, not when the future is first polled: called before the server
/// says it is listening, a SIGTERM sent as soon as it does is a graceful
/// stop, not the default kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        if let Some(mut terminate) = terminate {
            tokio::select! {
                _ = interrupt => {},
                _ = terminate.recv() => {},
            }
            return;
        }
        let _ = interrupt.await;
    }
}

/// Each function's signer key ID in the last deploy record (T18): a
/// `serve` record lists `functions` with their `signer`, a live deploy's
/// record a `signers` map. Empty when there is none or it cannot be read.
fn last_signers(store: &Store) -> std::collections::BTreeMap<String, String> {
    let query = bulkhead_store::AuditQuery {
        kind: Some("deploy".into()),
        ..Default::default()
    };
    let Some(last) = store
        .query_audit(&query)
        .ok()
        .and_then(|r| r.into_iter().last())
    else {
        return Default::default();
    };
    let mut signers = std::collections::BTreeMap::new();
    if let Some(functions) = last.detail["functions"].as_array() {
        for f in functions {
            if let (Some(name), Some(signer)) = (f["name"].as_str(), f["signer"].as_str()) {
                signers.insert(name.to_string(), signer.to_string());
            }
        }
    }
    if let Some(map) = last.detail["signers"].as_object() {
        for (name, signer) in map {
            if let Some(signer) = signer.as_str() {
                signers.insert(name.clone(), signer.to_string());
            }
        }
    }
    signers
}
