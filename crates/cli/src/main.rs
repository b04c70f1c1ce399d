//! `bulkhead`: serve and check secure-by-default wasi:http functions.

mod admin_cmd;
mod audit_cmd;
mod build_cmd;
mod bundle;
mod check;
mod credentials_cmd;
mod data_cmd;
mod deploy;
mod deploy_cmd;
mod dev_cmd;
mod live;
mod migrate_state_cmd;
mod new_cmd;
#[cfg(feature = "otlp")]
mod otlp;
mod queue_cmd;
mod review_cmd;
mod sbom_cmd;
mod secrets_cmd;
mod serve;
mod sweeper;
mod terminal;
mod threat_model_cmd;
mod tls_cmd;
mod trust_cmd;
mod usage_cmd;
mod versions;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use bulkhead_manifest::DEFAULT_ENV;
use bulkhead_store::Store;

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Serve WebAssembly functions behind a gateway where every control is on by default",
    long_about = "Bulkhead serves wasi:http WebAssembly components (Rust, Python, JavaScript, Go, C) \
                  described in one bulkhead.toml. Each call runs in a fresh sandbox with nothing \
                  granted and hard limits on time, memory and output; every refusal is logged and \
                  kept in a tamper-evident audit trail.\n\n\
                  Start with `bulkhead check APP_DIR`, then `bulkhead serve APP_DIR`.",
    after_help = "Logs are JSON lines on stderr; set BULKHEAD_LOG (e.g. `debug`, `bulkhead=info`) to change the level."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The app and environment every command works on.
#[derive(clap::Args)]
struct Target {
    /// The app directory, holding bulkhead.toml.
    app_dir: PathBuf,
    /// The environment: dev, staging, prod, or one declared in [env.NAME].
    /// Each keeps its own state (cache, audit trail, tokens).
    #[arg(long, default_value = DEFAULT_ENV, value_name = "NAME")]
    env: String,
}

impl Target {
    /// The environment's store, which must already exist unless `create`.
    fn store(&self, create: bool) -> Result<Store> {
        let dir = self.state_dir(create)?;
        let state = bulkhead_store::State::open(&bulkhead_store::StateConfig::Embedded { dir })?;
        Ok(state.store().clone())
    }

    /// The environment's state, opened with its backends (the one place
    /// the CLI names where state lives), which must already exist unless
    /// `create`. `serve` holds it while it runs (issue 17).
    fn state(&self, create: bool) -> Result<bulkhead_store::State> {
        let dir = self.state_dir(create)?;
        let config = deploy::state_config_of(&self.app_dir, &self.env, dir)?;
        Ok(bulkhead_store::State::open(&config)?)
    }

    /// The environment's state directory, which must already exist unless
    /// `create`.
    fn state_dir(&self, create: bool) -> Result<PathBuf> {
        if !bulkhead_manifest::valid_env_name(&self.env) {
            bail!(
                "environment name `{}` must be lowercase letters, digits or `-`",
                self.env
            );
        }
        let dir = bulkhead_manifest::state_dir(&self.app_dir, &self.env);
        if !create && !dir.is_dir() {
            bail!(
                "no state for environment `{}` in {} yet; serve the app there first (`bulkhead serve {} --env {}`)",
                self.env,
                self.app_dir.display(),
                self.app_dir.display(),
                self.env
            );
        }
        Ok(dir)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve every function of an app on its route.
    #[command(
        long_about = "Serve every function of the app in APP_DIR on its route.\n\n\
                      Components are compiled once and cached (integrity-checked) under \
                      APP_DIR/.bulkhead/ENV/compile-cache, so a restart is fast. Metrics and health \
                      are served on a separate admin address. Stop with Ctrl-C: requests under way \
                      are allowed to finish. Before anything runs, it verifies what `check` does \
                      (the lock, signatures and, outside `dev`, the strict rules) and refuses to \
                      start with every problem listed, recorded as `deploy.refused` in the audit trail.",
        after_help = "Examples:\n  bulkhead serve examples/hello\n  bulkhead serve examples/hello --listen 0.0.0.0:8080 --admin-listen off\n  bulkhead serve my-app --env prod --log-file /var/log/bulkhead.jsonl"
    )]
    Serve {
        #[command(flatten)]
        target: Target,
        /// Address to listen on. Port 0 picks a free port (the log says which).
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
        /// Admin address for /metrics, /healthz and /readyz, or `off`. Outside
        /// `dev` on loopback it needs a token (`bulkhead admin token`).
        #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR|off")]
        admin_listen: String,
        /// Write the JSON log lines to this file (appended) instead of stderr.
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
        /// How many versions to keep for rollback under
        /// APP_DIR/.bulkhead/ENV/versions (the serving one is always kept).
        #[arg(long, default_value_t = versions::DEFAULT_KEEP, value_name = "N")]
        keep_versions: usize,
        /// Threads serving requests (and running functions); default one
        /// per core. Set it below the cores to leave some to other
        /// processes on a shared host, or to measure how throughput scales
        /// with cores (bench/scaling). At most 1024: each is an OS thread.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=serve::MAX_WORKERS))]
        workers: Option<u16>,
    },
    /// Validate the manifest and every component without serving.
    #[command(
        long_about = "Validate APP_DIR/bulkhead.toml and every component it names: digests, \
                      bulkhead.lock, signatures from `[trust] signers` (required outside `dev`), \
                      compilation, imports and exports; outside `dev`, the strict rules too \
                      (TLS, pinned and signed components, `public_reason` on public routes, \
                      strict_imports, a master key of its own, rate limits, a budget). Prints what each function would serve \
                      with, including its outbound destinations with a warning for any that \
                      reaches this machine or a metadata service or can never be reached, and \
                      exits non-zero listing every problem found (such as a grant naming \
                      `localhost` outside `dev`).",
        after_help = "Example:\n  bulkhead check examples/hello --env prod"
    )]
    Check {
        #[command(flatten)]
        target: Target,
    },
    /// Move an embedded environment's shared state into PostgreSQL.
    #[command(
        long_about = "Move the shared state of an app environment kept embedded (SQLite in \
                      APP_DIR/.bulkhead/ENV) into the PostgreSQL database its manifest's \
                      `[cluster]` names (`backend = \"postgres\"`, the URL from \
                      `database_url_file` or BULKHEAD_DATABASE_URL: never on the command line): \
                      key-value records, data keys, secrets, sessions and API keys, admin tokens, \
                      the hourly meter, the queues, and the SQL stores' rows (each into its \
                      store's schema, made first by the store's migrations; each value cast by \
                      PostgreSQL to its column's type). \
                      Records and secrets stay sealed; the data keys are wrapped again under the \
                      master key every node will hold (BULKHEAD_MASTER_KEY_FILE, required). One \
                      transaction into an empty schema; each table's rows are counted on both \
                      sides; the audit trail must verify first and records `state.migrated`. The \
                      audit trail (each node's server ships it into the deployment's chain) \
                      stays in the state directory. Stop every server of the \
                      environment first.",
        after_help = "Example:\n  # bulkhead.toml: [cluster] backend = \"postgres\", database_url_file = \"/etc/bulkhead/db-url\"\n  BULKHEAD_MASTER_KEY_FILE=/etc/bulkhead/master.key bulkhead migrate-state my-app --env prod"
    )]
    MigrateState {
        #[command(flatten)]
        target: Target,
    },
    /// Write the app's threat model, derived from what is deployed.
    #[command(
        name = "threat-model",
        long_about = "Derive the threat model of the app in APP_DIR from its manifest and the \
                      components it names: an inventory (entry points, functions and their imports, \
                      stores, secrets and config, outbound destinations, admin listener, telemetry, \
                      trust boundaries), a data-flow diagram, the personal data it keeps (GDPR), and \
                      STRIDE threats per element, each tied to a threat ID (T01..T21) and marked \
                      mitigated (naming the manifest line or built-in control), open (with its \
                      severity and the exact fix) or accepted (an `[[accept]]` entry with its reason).\n\n\
                      Nothing is compiled and no state is read: it runs in milliseconds, so run it \
                      in CI on every change. With --fail-on, the exit status is 1 when an open \
                      finding at or above that severity exists. A summary goes to stderr.",
        after_help = "Examples:\n  bulkhead threat-model examples/hello\n  \
                      bulkhead threat-model my-app --env prod --fail-on high\n  \
                      bulkhead threat-model my-app --format html --output threat-model.html\n  \
                      bulkhead threat-model my-app --format sarif --output bulkhead.sarif\n  \
                      bulkhead threat-model my-app --format threat-dragon --output my-app.json\n\n\
                      Accept a risk in bulkhead.toml (it stays listed, as accepted):\n  \
                      [[accept]]\n  rule = \"public-route\"\n  target = \"hello\"\n  \
                      reason = \"a greeting for anyone; it holds and reaches nothing\""
    )]
    ThreatModel {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t = threat_model_cmd::Format::Md)]
        format: threat_model_cmd::Format,
        /// Write to this file (replaced atomically) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Exit 1 when an open finding at or above this severity exists.
        #[arg(long, value_enum, value_name = "SEVERITY")]
        fail_on: Option<threat_model_cmd::FailOn>,
    },
    /// Write a CycloneDX SBOM of the host and the app's components (T18).
    #[command(
        long_about = "Write a CycloneDX 1.5 JSON software bill of materials (SBOM) of what the app \
                      in APP_DIR runs on and with (T18):\n\n\
                      - the host: this bulkhead binary and every crate linked into it, each with \
                      its version, package URL (pkg:cargo/NAME@VERSION), the SHA-256 checksum \
                      Cargo.lock pins and its licence, as recorded when the binary was built;\n\
                      - the app: each function (name, route) and the component it runs (path, \
                      SHA-256 digest, the interfaces it imports, and its signer when a trusted \
                      signature verifies it),\n\
                      linked by a dependency graph (app -> functions -> components, app -> host \
                      -> crates).\n\n\
                      Nothing is compiled or served. The output is deterministic (sorted, serial \
                      number derived from the content, no timestamp unless --timestamp), so two \
                      runs over the same app and binary are byte-identical. A component that is \
                      missing, unreadable or not the digest the manifest pins is an error.",
        after_help = "Examples:\n  bulkhead sbom examples/hello\n  \
                      bulkhead sbom my-app --env prod --output my-app.cdx.json\n  \
                      bulkhead sbom my-app --timestamp -o sbom.json"
    )]
    Sbom {
        #[command(flatten)]
        target: Target,
        /// Write to this file (replaced atomically) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Record when the SBOM was made (metadata.timestamp). Off by default,
        /// so the same input gives the same bytes.
        #[arg(long)]
        timestamp: bool,
    },
    /// What the functions used and what it costs, from the durable meter.
    #[command(
        long_about = "Report the usage the meter recorded for APP_DIR: requests, wall time, \
                      GB-seconds (memory reserved x time), bytes in and out (responses plus \
                      outbound HTTP), and their cost at the manifest's [pricing]. Calls refused \
                      before they ran are not billed. Usage is kept per hour, so --since is \
                      rounded down to the start of an hour. With [cluster] backend = \"postgres\" \
                      it is the deployment's usage: every node's calls.",
        after_help = "Examples:\n  bulkhead usage my-app\n  bulkhead usage my-app --by caller --since 7d\n  bulkhead usage my-app --env prod --by hour --format json"
    )]
    Usage {
        #[command(flatten)]
        target: Target,
        /// How to group the report.
        #[arg(long, value_enum, default_value_t = usage_cmd::GroupBy::Function)]
        by: usage_cmd::GroupBy,
        /// How far back, like 24h, 7d or 30m.
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        since: String,
        #[arg(long, value_enum, default_value_t = usage_cmd::Format::Table)]
        format: usage_cmd::Format,
    },
    /// Inspect the tamper-evident audit trail.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Manage access to the admin listener.
    #[command(subcommand)]
    Admin(admin_cmd::AdminCommand),
    /// TLS for the public listener: a development certificate.
    #[command(subcommand)]
    Tls(tls_cmd::TlsCommand),
    /// Issue, list and revoke opaque session tokens.
    #[command(subcommand)]
    Token(credentials_cmd::TokenCommand),
    /// Development helpers: `dev login` signs in a test user (dev only).
    #[command(subcommand)]
    Dev(dev_cmd::DevCommand),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(credentials_cmd::KeysCommand),
    /// Set, list, rotate and remove secrets functions read via wasi:config.
    #[command(subcommand)]
    Secrets(secrets_cmd::SecretsCommand),
    /// Erase or export one subject's data (subject-scoped stores).
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Inspect and operate an app's queues: list, peek, purge, redrive.
    #[command(subcommand)]
    Queue(queue_cmd::QueueCommand),
    /// Review the app against what it did: grants never used (T16).
    #[command(subcommand)]
    Review(review_cmd::ReviewCommand),
    /// Make a new app, or add a function to one (`new function`).
    #[command(
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        long_about = "Make a new app in APP_DIR: a bulkhead.toml with every default control spelt \
                      out and commented (limits, rate limits, the dynamic throttle, budgets, \
                      failed-sign-in back-off, audit) and a .gitignore. APP_DIR must not exist or \
                      be empty (nothing is ever overwritten) and must not be a symbolic link. The \
                      app is named after the directory unless --name says otherwise.\n\n\
                      Then add functions with `bulkhead new function NAME --lang rust|python|js \
                      --app APP_DIR`: each gets a component skeleton, its build recipe and a \
                      manifest entry with auth on, its input declared and nothing granted.",
        after_help = "A first secure function, from nothing to an authenticated call:\n  \
                      bulkhead new my-app\n  \
                      bulkhead new function hello --lang rust --app my-app    # or --lang python, --lang js\n  \
                      bulkhead build my-app\n  \
                      bulkhead serve my-app\n\n\
                      In another terminal:\n  \
                      KEY=$(bulkhead keys create my-app --subject me --scopes hello)\n  \
                      curl -H \"authorization: Bearer $KEY\" http://127.0.0.1:8080/hello\n  \
                      curl -i http://127.0.0.1:8080/hello     # 401: no credential, no call"
    )]
    New {
        #[command(subcommand)]
        what: Option<new_cmd::NewCommand>,
        /// The new app's directory (created; if it exists it must be empty).
        #[arg(required = true)]
        app_dir: Option<PathBuf>,
        /// The app's name; default: the directory's name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Build every component of an app with its toolchain.
    #[command(
        long_about = "Build the component of every function in APP_DIR/bulkhead.toml from its \
                      recipe (functions/NAME/build.toml, written by `bulkhead new function`) and \
                      write it where the function's `component =` points (replaced atomically):\n\n\
                      - rust: cargo build --release --locked --target wasm32-wasip2 (the target is \
                      added with rustup when missing);\n\
                      - python: componentize-py 0.25.1 against the app's wit/ folder;\n\
                      - js: componentize-js 0.23.0 (StarlingMonkey), through a copy of wit/ at \
                      WASI 0.2.10, the version its engine exports.\n\n\
                      componentize-py and componentize-js are installed on first use, at the \
                      versions examples/lib/build-lib.sh pins, into APP_DIR/.tools (venv/ and node/), \
                      or into the folder BULKHEAD_TOOLS_DIR names to share one install between apps. \
                      A Python or JavaScript component is rebuilt only when its sources, the WIT or \
                      the tool changed; cargo decides for Rust. Every tool runs as a program with \
                      arguments, never through a shell. Components the manifest names without a \
                      recipe are kept as they are.",
        after_help = "Examples:\n  bulkhead build my-app\n  \
                      BULKHEAD_TOOLS_DIR=~/.cache/bulkhead/tools bulkhead build my-app\n\n\
                      Then:\n  bulkhead serve my-app"
    )]
    Build {
        /// The app directory, holding bulkhead.toml.
        app_dir: PathBuf,
    },
    /// Send a new version of the app to a running server, live.
    #[command(
        long_about = "Pack the deployable files of APP_DIR (bulkhead.toml, bulkhead.lock, every \
                      component and its .minisig, body schemas, the JWKS file, migrations; never \
                      .bulkhead/ state or private keys) into one bundle with an index of their \
                      SHA-256 digests, and send it to the admin listener of a running `bulkhead \
                      serve` (POST /deploys).\n\n\
                      The server verifies the whole version as `bulkhead check` would (manifest, \
                      digests, imports, migrations as a dry run) before anything changes; then it \
                      applies the migrations, keeps the version and switches to it: requests under \
                      way finish on the old version, new ones get the new one, no connection is \
                      dropped. On any problem nothing changes and every problem is printed. \
                      Listener and app-wide `[limits]`, stores and telemetry only change with a \
                      restart; a bundle changing them is refused.\n\n\
                      The admin token is read from --token-file, or from the file \
                      BULKHEAD_ADMIN_TOKEN_FILE names: never from the command line.",
        after_help = "Examples:\n  bulkhead deploy my-app --to http://127.0.0.1:9901 --token-file ~/.bulkhead-admin\n  \
                      BULKHEAD_ADMIN_TOKEN_FILE=/run/secrets/admin bulkhead deploy my-app --env prod \\\n    \
                      --to https://admin.internal:9901 --cacert ca.pem --cert me.pem --key me.key"
    )]
    Deploy {
        #[command(flatten)]
        target: Target,
        /// The admin listener, like http://127.0.0.1:9901 or https://host:9901.
        #[arg(long, value_name = "URL")]
        to: String,
        #[command(flatten)]
        admin: deploy_cmd::Admin,
    },
    /// List the kept versions of the app, newest first.
    #[command(
        long_about = "List the versions kept under APP_DIR/.bulkhead/ENV/versions (or, with \
                      --admin, those of a running server): name, when, how it came (serve, \
                      deploy, sighup), who made it, and each function's component digest. `*` \
                      marks the version serving, or the one the next `serve` starts from.",
        after_help = "Examples:\n  bulkhead versions my-app --env prod\n  bulkhead versions my-app --admin http://127.0.0.1:9901 --token-file admin.token"
    )]
    Versions {
        #[command(flatten)]
        target: Target,
        /// Ask this running server's admin listener instead of reading the state directory.
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
        #[command(flatten)]
        access: deploy_cmd::Admin,
    },
    /// Switch back to a kept version: live, or for the next start.
    #[command(
        long_about = "Switch back to a kept version (`bulkhead versions` lists them). With --admin, \
                      the running server verifies that version again and switches to it live, as a \
                      deploy does. Without it (offline, not in `dev`, which always serves APP_DIR), \
                      it sets the version the next `bulkhead serve` starts from. Rolling back is the \
                      only way to an older version: the versions kept are what it can reach.",
        after_help = "Examples:\n  bulkhead rollback my-app --env prod --to v3 --admin http://127.0.0.1:9901 --token-file admin.token\n  bulkhead rollback my-app --env prod --to v3"
    )]
    Rollback {
        #[command(flatten)]
        target: Target,
        /// The version to switch to, like v3.
        #[arg(long, value_name = "VERSION")]
        to: String,
        /// The running server's admin listener; without it, offline.
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
        #[command(flatten)]
        access: deploy_cmd::Admin,
    },
    /// Make a minisign key pair to sign apps with.
    #[command(
        long_about = "Make a minisign key pair: OUTPUT.key (the secret key, mode 0600, \
                      password-protected) and OUTPUT.pub (the public key, to list in the \
                      manifest's `[trust] signers`). The password is asked on the terminal, \
                      twice, or read from the first line of --password-file; never from the \
                      command line. --unencrypted writes a key without password, for a CI key \
                      kept in a secret store. Existing files are never overwritten; the secret \
                      key is never printed. The keys are standard minisign keys: the `minisign` \
                      CLI uses them too.",
        after_help = "Examples:\n  bulkhead keygen --output keys/release\n  \
                      bulkhead keygen --output keys/ci --password-file /run/secrets/sign-pass\n  \
                      bulkhead keygen --output keys/ci --unencrypted\n\n\
                      Then trust it in bulkhead.toml:\n  [trust]\n  signers = [\"keys/release.pub\"]"
    )]
    Keygen {
        /// Where to write the pair: OUTPUT.key and OUTPUT.pub.
        #[arg(long, short, default_value = "keys/release", value_name = "PATH")]
        output: PathBuf,
        /// Read the new key's password from the first line of this file.
        #[arg(long, value_name = "FILE", conflicts_with = "unencrypted")]
        password_file: Option<PathBuf>,
        /// Write the secret key without a password (CI keys only).
        #[arg(long)]
        unencrypted: bool,
    },
    /// Sign every component of an app, its manifest and its lock.
    #[command(
        long_about = "Sign every component the app in APP_DIR serves, its bulkhead.toml and, \
                      when present, its bulkhead.lock, with a minisign secret key. Each signature \
                      is written (atomically) beside its file as FILE.minisig; its trusted comment \
                      `bulkhead-v1 file=PATH sha256=HEX signed_at=UNIX` binds it to that file's \
                      name and bytes, so it cannot be moved to another file. `check` and `serve` \
                      verify them against `[trust] signers`; outside `dev` they are required. \
                      The `minisign` CLI verifies them too: \
                      `minisign -V -p keys/release.pub -m FILE`.",
        after_help = "Examples:\n  bulkhead lock my-app && bulkhead sign my-app --key keys/release.key\n  \
                      bulkhead sign my-app --key keys/ci.key --password-file /run/secrets/sign-pass"
    )]
    Sign {
        #[command(flatten)]
        target: Target,
        /// The minisign secret key file (from `bulkhead keygen` or `minisign -G`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Read the key's password from the first line of this file; without
        /// it a password-protected key asks on the terminal.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Pin every component's SHA-256 in bulkhead.lock.
    #[command(
        long_about = "Write APP_DIR/bulkhead.lock: the SHA-256 of every component the app \
                      serves, one entry per path, sorted, replaced atomically. `check` and \
                      `serve` refuse a component that no longer matches it (a swapped artefact, \
                      or an older version that is still validly signed), naming both digests. \
                      A `digest =` line in the manifest must agree with it. It also pins \
                      bulkhead.toml and every file the manifest names (keys, JWKS, schemas, \
                      migrations): where signatures are required, a changed one is refused \
                      (T18). The manifest itself is never rewritten. With --check nothing is written: the exit status is \
                      1 when the lock is missing or stale (for CI).",
        after_help = "Examples:\n  bulkhead lock my-app\n  bulkhead lock my-app --check"
    )]
    Lock {
        #[command(flatten)]
        target: Target,
        /// Only compare: exit 1 if the lock is missing or stale.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_file = match &cli.command {
        Command::Serve { log_file, .. } => log_file.clone(),
        _ => None,
    };
    let _log_guard = match init_logging(log_file.as_deref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve {
            target,
            listen,
            admin_listen,
            keep_versions,
            workers,
            ..
        } => serve::run(&target, listen, &admin_listen, keep_versions, workers),
        Command::Check { target } => check::run(&target),
        Command::MigrateState { target } => migrate_state_cmd::run(&target),
        Command::ThreatModel {
            target,
            format,
            output,
            fail_on,
        } => threat_model_cmd::run(&target, format, output.as_deref(), fail_on),
        Command::Sbom {
            target,
            output,
            timestamp,
        } => sbom_cmd::run(&target, output.as_deref(), timestamp),
        Command::Usage {
            target,
            by,
            since,
            format,
        } => usage_cmd::run(&target, by, &since, format),
        Command::Audit(command) => audit_cmd::run(command),
        Command::Admin(command) => admin_cmd::run(command),
        Command::Tls(command) => tls_cmd::run(command),
        Command::Token(command) => credentials_cmd::run_token(command),
        Command::Dev(command) => dev_cmd::run(command),
        Command::Keys(command) => credentials_cmd::run_keys(command),
        Command::Secrets(command) => secrets_cmd::run(command),
        Command::Data(command) => data_cmd::run(command),
        Command::Queue(command) => queue_cmd::run(command),
        Command::Review(command) => review_cmd::run(command),
        Command::New {
            what,
            app_dir,
            name,
        } => new_cmd::run(what, app_dir.as_deref(), name.as_deref()),
        Command::Build { app_dir } => build_cmd::run(&app_dir),
        Command::Deploy { target, to, admin } => deploy_cmd::deploy(&target, &to, &admin),
        Command::Versions {
            target,
            admin,
            access,
        } => deploy_cmd::versions(&target, admin.as_deref(), &access),
        Command::Rollback {
            target,
            to,
            admin,
            access,
        } => deploy_cmd::rollback(&target, &to, admin.as_deref(), &access),
        Command::Keygen {
            output,
            password_file,
            unencrypted,
        } => trust_cmd::keygen(&output, password_file.as_deref(), unencrypted),
        Command::Sign {
            target,
            key,
            password_file,
        } => trust_cmd::sign(&target, &key, password_file.as_deref()),
        Command::Lock { target, check } => trust_cmd::lock(&target, check),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// JSON logs on stderr or to `file`. Lines are written by one thread in
/// batches, so a request never waits on the terminal or the disk; when the
/// bounded queue is full a line is dropped, counted on /metrics
/// (`bulkhead_log_dropped_total`) and reported in a summary line, never
/// waited for (T09, issue 17: the audit trail is the record that is never
/// dropped). The returned guard writes what is queued when dropped.
fn init_logging(file: Option<&Path>) -> Result<bulkhead_gateway::log_writer::LogGuard> {
    let filter = EnvFilter::try_from_env("BULKHEAD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let sink: Box<dyn std::io::Write + Send> = match file {
        Some(path) => Box::new(
            open_log_file(path)
                .map_err(|e| anyhow::anyhow!("cannot open the log file {}: {e}", path.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let (writer, guard) = bulkhead_gateway::log_writer::LogWriter::start(sink)
        .map_err(|e| anyhow::anyhow!("cannot start the log writer: {e}"))?;
    let events = writer.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(move || events.clone())
        .init();
    // After the subscriber: the access log asks its filter what it wants.
    bulkhead_gateway::access_log::install(writer);
    Ok(guard)
}

/// The log file, appended to and owner-only (T09, T19): its lines name
/// peers, paths and subjects. A new one is created 0600 whatever the
/// umask; an existing regular file open to group or others is tightened to
/// 0600, as the state files are. A device or pipe (`/dev/stderr`) is used
/// as it is: never chmod'ed.
fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
    if !special {
        bulkhead_store::files::make_private(path)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Print each problem on its own line; the caller exits non-zero. A
/// problem may quote the manifest (a key, a value, a path): control and
/// invisible-formatting characters are shown as U+FFFD, so a manifest
/// cannot colour, clear or reorder the terminal.
fn report(problems: &[String]) -> ExitCode {
    eprintln!("error: {} problem(s) found:", problems.len());
    for problem in problems {
        eprintln!("  - {}", bulkhead_manifest::text::visible(problem));
    }
    ExitCode::FAILURE
}

/// The validated manifest of `target`, or every problem with it.
fn load_manifest(target: &Target) -> Result<bulkhead_manifest::App, Vec<String>> {
    bulkhead_manifest::load(&target.app_dir, &target.env)
        .map_err(|problems| problems.0.iter().map(ToString::to_string).collect())
}

/// [`load_manifest`], refusing what this build cannot serve.
fn load_app(target: &Target) -> Result<bulkhead_manifest::App, Vec<String>> {
    load_app_in(&target.app_dir, &target.env)
}

/// [`load_app`] of the app whose files are in `dir` (an app directory, or
/// a kept or staged version's files).
fn load_app_in(dir: &Path, env: &str) -> Result<bulkhead_manifest::App, Vec<String>> {
    let app = bulkhead_manifest::load(dir, env).map_err(|problems| {
        problems
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    })?;
    if let Some(telemetry) = &app.telemetry
        && !cfg!(feature = "otlp")
    {
        let problem = bulkhead_manifest::Problem {
            file: app.manifest_path.clone(),
            location: telemetry.location,
            message: "`[telemetry]` asks for OpenTelemetry export, but this bulkhead was built \
                      without the `otlp` feature; build it with \
                      `cargo build --release -p bulkhead-cli --features otlp`, or remove \
                      `otlp_endpoint`"
                .into(),
        };
        return Err(vec![problem.to_string()]);
    }
    // Issue 16: `[cluster] backend = "postgres"` is served: the state
    // opens on PostgreSQL (`deploy::state_config`), never embedded instead.
    Ok(app)
}

/// [`load_app`], then the supply chain (T18): every component matches
/// `bulkhead.lock` and carries a trusted signature when required, and the
/// manifest's own signature holds; outside `dev`, the strict rules (T19).
/// Every problem of both at once. What `check` and `serve` deploy.
fn load_verified(target: &Target, host: &bulkhead_manifest::strict::Host) -> Verified {
    load_verified_in(&target.app_dir, &target.env, host)
}

/// An app verified as `check` and `serve` verify one, with the evidence
/// of each component; or every problem.
type Verified = Result<
    (
        bulkhead_manifest::App,
        Vec<bulkhead_manifest::supply::Evidence>,
    ),
    Vec<String>,
>;

/// [`load_verified`] of the app whose files are in `dir` (APP_DIR, or a
/// kept or staged version's files, T19).
fn load_verified_in(dir: &Path, env: &str, host: &bulkhead_manifest::strict::Host) -> Verified {
    let mut app = load_app_in(dir, env)?;
    // Before `supply::verify` pins every function to what it verified.
    let mut problems: Vec<String> = bulkhead_manifest::strict::check(&app, host)
        .iter()
        .map(ToString::to_string)
        .collect();
    match bulkhead_manifest::supply::verify(&mut app) {
        Ok(evidence) if problems.is_empty() => return Ok((app, evidence)),
        Ok(_) => {}
        Err(found) => problems.extend(found.0.iter().map(ToString::to_string)),
    }
    Err(problems)
}

/// The host's side of strict `prod` (T19): the master key, and the admin
/// listener when `serve` opens one.
fn strict_host(target: &Target) -> bulkhead_manifest::strict::Host {
    let dev = target.env == DEFAULT_ENV;
    bulkhead_manifest::strict::Host {
        dev_master_key: (!dev)
            .then(|| bulkhead_store::crypto::dev_master_key(&target.app_dir))
            .flatten(),
        exposed_master_key: if dev {
            Vec::new()
        } else {
            bulkhead_store::crypto::exposed_master_key(&target.app_dir, &target.env)
        },
        exposed_admin: None,
    }
}
