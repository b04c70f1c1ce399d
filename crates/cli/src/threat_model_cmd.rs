//! `bulkhead threat-model`: the app's threat model, derived from what is
//! deployed (T21), written in the format asked for, and an exit status a CI
//! pipeline can gate on.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bulkhead_report::{ComponentFacts, Severity, ThreatModel};
use bulkhead_store::files;
use clap::ValueEnum;

use crate::{Target, load_app, report};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Markdown with a Mermaid diagram: hand it to a reviewer.
    Md,
    /// One self-contained page with an SVG diagram.
    Html,
    /// The model itself, as JSON.
    Json,
    /// An OWASP Threat Dragon v2 model.
    ThreatDragon,
    /// SARIF 2.1.0, for code scanning.
    Sarif,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FailOn {
    High,
    Medium,
    Low,
}

impl FailOn {
    fn severity(self) -> Severity {
        match self {
            FailOn::High => Severity::High,
            FailOn::Medium => Severity::Medium,
            FailOn::Low => Severity::Low,
        }
    }
}

pub fn run(
    target: &Target,
    format: Format,
    output: Option<&Path>,
    fail_on: Option<FailOn>,
) -> Result<ExitCode> {
    let app = match load_app(target) {
        Ok(app) => app,
        Err(problems) => return Ok(report(&problems)),
    };
    // Functions may share a component: each file is read and hashed once.
    let mut read: HashMap<&Path, ComponentFacts> = HashMap::new();
    // Routed then triggered, as `threat_model` takes them.
    let components: Vec<ComponentFacts> = app
        .all_functions()
        .map(|f| {
            read.entry(f.component.as_path())
                .or_insert_with(|| ComponentFacts::read(&f.component))
                .clone()
        })
        .collect();
    let model = bulkhead_report::threat_model(&app, &components);
    let text = match format {
        Format::Md => bulkhead_report::markdown(&model),
        Format::Html => bulkhead_report::html(&model),
        Format::Json => bulkhead_report::json(&model),
        Format::ThreatDragon => bulkhead_report::threat_dragon(&model),
        Format::Sarif => bulkhead_report::sarif(&model),
    };
    emit(output, &text, "the threat model")?;
    eprintln!("{}", summary(&model));
    Ok(gate(&model, fail_on))
}

fn summary(model: &ThreatModel) -> String {
    let (open, mitigated, accepted) = model.counts();
    let count = |s: Severity| model.open_count(s);
    format!(
        "threat model of `{}` (env {}): {open} open ({} high, {} medium, {} low), {mitigated} mitigated, {accepted} accepted",
        model.app,
        model.env,
        count(Severity::High),
        count(Severity::Medium),
        count(Severity::Low)
    )
}

/// Exit 1, listing them, when open findings at or above `fail_on` exist.
fn gate(model: &ThreatModel, fail_on: Option<FailOn>) -> ExitCode {
    let Some(fail_on) = fail_on else {
        return ExitCode::SUCCESS;
    };
    let failing: Vec<_> = model.open_at_or_above(fail_on.severity()).collect();
    if failing.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "error: {} open finding(s) at or above {}:",
        failing.len(),
        fail_on.severity().as_str()
    );
    for t in failing {
        let at = t.line.map_or(String::new(), |l| format!(" (line {l})"));
        eprintln!(
            "  - [{}] {} {}{at}: {} (rule `{}`)",
            t.severity.as_str(),
            t.threat_id,
            bulkhead_report::plain(&t.title),
            bulkhead_report::plain(&t.detail),
            t.rule
        );
    }
    eprintln!(
        "fix them, or record an accepted risk with `[[accept]] rule = \"RULE\", target = \"NAME\", reason = \"…\"`"
    );
    ExitCode::FAILURE
}

/// Write `text` (`what` it is, for errors) to `output`, atomically, or to
/// stdout when there is none.
pub(crate) fn emit(output: Option<&Path>, text: &str, what: &str) -> Result<()> {
    match output {
        Some(path) => {
            write_atomically(path, text.as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth a message.
            if let Err(e) = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(e).with_context(|| format!("cannot write {what} to stdout"));
            }
        }
    }
    Ok(())
}

/// Write `bytes` to `path` atomically ([`files::write_atomically`]), so a
/// crash or a full disk never leaves half a report where a CI step reads
/// one. Only a regular file is replaced: a device, FIFO, directory or
/// symlink at `path` is refused rather than swapped for a report. A new
/// file gets what the umask allows, a replaced one keeps its mode.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let existing = match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => bail!(
            "--output {} exists and is not a regular file (a directory, symlink, device or pipe); \
             name a new file, or leave out --output to write to stdout",
            path.display()
        ),
        Ok(meta) => Some(meta.permissions()),
        Err(_) => None,
    };
    files::write_atomically(path, &[bytes], 0o666)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(permissions) = existing {
        std::fs::set_permissions(path, permissions)
            .with_context(|| format!("cannot keep the mode of {}", path.display()))?;
    }
    Ok(())
}
