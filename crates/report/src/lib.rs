//! What Bulkhead can say about an app from what is deployed: its threat
//! model (inventory, data-flow diagram, STRIDE per element, each threat
//! tied to a T-ID and marked mitigated, open or accepted), its personal-data
//! inventory (T20) and its privilege review (T16). Everything is derived
//! from the manifest, the components' imports and Bulkhead's own records;
//! nothing is written by hand, so the model changes when the app does (T21).

mod derive;
pub mod describe;
mod html;
mod markdown;
pub mod model;
pub mod privileges;
mod rules;
mod sarif;
mod svg;
mod tables;
mod threat_dragon;

use std::path::Path;

use bulkhead_manifest::App;
use sha2::{Digest, Sha256};

pub use html::html;
pub use markdown::{markdown, plain};
pub use model::{Severity, Status, ThreatModel};
pub use rules::{RULES, Rule};
pub use sarif::sarif;
pub use threat_dragon::threat_dragon;

/// Larger than any real component (a Python one is ~40 MiB): the model
/// reads each whole, so a sparse multi-GiB file is refused, not read.
const MAX_COMPONENT_BYTES: u64 = 512 << 20;

/// What the model needs to know of one function's component.
#[derive(Debug, Clone)]
pub struct ComponentFacts {
    /// `sha256:HEX` of the file, when it could be read.
    pub digest: Option<String>,
    /// The names its import section lists, or why they could not be read.
    pub imports: Result<Vec<String>, String>,
}

impl ComponentFacts {
    /// Read the component at `path`: its digest and its imports, without
    /// compiling it.
    pub fn read(path: &Path) -> Self {
        let unreadable = |why: String| Self {
            digest: None,
            imports: Err(why),
        };
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() > MAX_COMPONENT_BYTES => {
                return unreadable(format!(
                    "the component is {} bytes, over the {} MiB a component may be",
                    meta.len(),
                    MAX_COMPONENT_BYTES >> 20
                ));
            }
            Ok(meta) if !meta.is_file() => {
                return unreadable("the component is not a regular file".into());
            }
            Ok(_) => {}
            Err(e) => return unreadable(format!("cannot read the component ({e})")),
        }
        match std::fs::read(path) {
            Ok(bytes) => Self {
                digest: Some(format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))),
                imports: bulkhead_runtime::imports::read_component_imports(&bytes),
            },
            Err(e) => unreadable(format!("cannot read the component ({e})")),
        }
    }
}

/// The threat model of `app`; `components` holds one entry per function,
/// in the manifest's order.
pub fn threat_model(app: &App, components: &[ComponentFacts]) -> ThreatModel {
    ThreatModel {
        app: app.name.clone(),
        env: app.env.clone(),
        manifest: manifest_path(app),
        generator: format!("bulkhead {}", env!("CARGO_PKG_VERSION")),
        inventory: derive::inventory(app, components),
        diagram: derive::diagram(app),
        threats: rules::threats(app, components),
        personal_data: derive::personal_data(app),
    }
}

/// The manifest's path as the user named the app, `/`-separated: SARIF
/// locations and the report's header point at it.
fn manifest_path(app: &App) -> String {
    let path = app.manifest_path.to_string_lossy().replace('\\', "/");
    path.strip_prefix("./").unwrap_or(&path).to_string()
}

/// The model as JSON (pretty-printed, stable key order).
pub fn json(model: &ThreatModel) -> String {
    serde_json::to_string_pretty(model).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
