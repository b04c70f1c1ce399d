//! `bulkhead`: serve and check secure-by-default wasi:http functions.

mod deploy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;

use bulkhead_gateway::Gateway;
use bulkhead_manifest::{DEFAULT_ENV, MANIFEST_FILE};

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Serve WebAssembly functions behind a gateway where every control is on by default",
    long_about = "Bulkhead serves wasi:http WebAssembly components (Rust, Python, JavaScript, Go, C) \
                  described in one bulkhead.toml. Each call runs in a fresh sandbox with nothing \
                  granted and hard limits on time, memory and output.\n\n\
                  Start with `bulkhead check APP_DIR`, then `bulkhead serve APP_DIR`.",
    after_help = "Logs are JSON lines on stderr; set BULKHEAD_LOG (e.g. `debug`, `bulkhead=info`) to change the level."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every function of an app on its route.
    #[command(
        long_about = "Serve every function of the app in APP_DIR on its route.\n\n\
                      Components are compiled once and cached (integrity-checked) under \
                      APP_DIR/.bulkhead/ENV/compile-cache, so a restart is fast. Stop with Ctrl-C: \
                      requests under way are allowed to finish.",
        after_help = "Example:\n  bulkhead serve examples/hello --listen 127.0.0.1:8080"
    )]
    Serve {
        /// The app directory, holding bulkhead.toml.
        app_dir: PathBuf,
        /// The environment overlay to apply: dev, staging, prod, or one declared in [env.NAME].
        #[arg(long, default_value = DEFAULT_ENV, value_name = "NAME")]
        env: String,
        /// Address to listen on. Port 0 picks a free port (the log says which).
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
    },
    /// Validate the manifest and every component without serving.
    #[command(
        long_about = "Validate APP_DIR/bulkhead.toml and every component it names: digests, \
                      compilation, imports and exports. Prints what each function would serve \
                      with and exits non-zero listing every problem found.",
        after_help = "Example:\n  bulkhead check examples/hello --env prod"
    )]
    Check {
        /// The app directory, holding bulkhead.toml.
        app_dir: PathBuf,
        /// The environment overlay to apply.
        #[arg(long, default_value = DEFAULT_ENV, value_name = "NAME")]
        env: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Serve {
            app_dir,
            env,
            listen,
        } => serve(app_dir, &env, listen),
        Command::Check { app_dir, env } => check(app_dir, &env),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("BULKHEAD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Print each problem on its own line; the caller exits non-zero.
fn report(problems: &[String]) -> ExitCode {
    eprintln!("error: {} problem(s) found:", problems.len());
    for problem in problems {
        eprintln!("  - {problem}");
    }
    ExitCode::FAILURE
}

fn load_app(app_dir: &std::path::Path, env: &str) -> Result<bulkhead_manifest::App, Vec<String>> {
    bulkhead_manifest::load(app_dir, env)
        .map_err(|problems| problems.0.iter().map(ToString::to_string).collect())
}

fn check(app_dir: PathBuf, env: &str) -> Result<ExitCode> {
    let app = match load_app(&app_dir, env) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    let deployment = match deploy::deploy(app, &|line| eprintln!("{line}")) {
        Ok(deployment) => deployment,
        Err(problems) => return Ok(report(&problems)),
    };
    let app = &deployment.app;
    println!(
        "app `{}` (env {}): {} function(s), all OK",
        app.name,
        app.env,
        app.functions.len()
    );
    for (spec, loaded) in app.functions.iter().zip(&deployment.functions) {
        let l = &spec.limits;
        println!(
            "\n{} {} -> {}",
            spec.methods.join(","),
            spec.route,
            spec.name
        );
        println!(
            "  component  {} ({})",
            spec.component.display(),
            loaded.digest()
        );
        println!(
            "  limits     timeout {}, memory {}, request body {}, response body {}, {} running / {} outstanding",
            l.timeout,
            l.memory,
            l.max_request_body,
            l.max_response_body,
            l.max_concurrent_requests,
            l.max_outstanding_requests
        );
        println!("  imports    {}", loaded.imports().join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(app_dir: PathBuf, env: &str, listen: SocketAddr) -> Result<ExitCode> {
    let app = match load_app(&app_dir, env) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bulkhead")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let progress = |line: &str| info!(target: "bulkhead::deploy", "{line}");
        let deployment = match tokio::task::block_in_place(|| deploy::deploy(app, &progress)) {
            Ok(deployment) => deployment,
            Err(problems) => return Ok(report(&problems)),
        };
        let gateway = Gateway::new(&deployment.app, deployment.functions.clone());
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}; is another server using it? pick another with --listen"))?;
        let address = listener.local_addr().context("cannot read the listening address")?;
        info!(
            target: "bulkhead::listener",
            address = %address,
            app = %deployment.app.name,
            env = %deployment.app.env,
            functions = deployment.functions.len(),
            manifest = %deployment.app.dir.join(MANIFEST_FILE).display(),
            "listening"
        );
        gateway.serve(listener, shutdown_signal()).await.context("the listener failed")?;
        drop(deployment);
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
