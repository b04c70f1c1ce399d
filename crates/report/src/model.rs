//! The threat model as data: what every format renders. Plain structs with
//! stable identifiers, so the JSON export is the model itself and repeated
//! runs on the same app give the same IDs (SARIF fingerprints, Threat
//! Dragon cells).

use serde::Serialize;

/// One app's threat model, for one environment.
#[derive(Debug, Clone, Serialize)]
pub struct ThreatModel {
    pub app: String,
    pub env: String,
    /// The manifest, as the report names it (`bulkhead.toml`).
    pub manifest: String,
    /// `bulkhead VERSION`.
    pub generator: String,
    pub inventory: Inventory,
    pub diagram: Diagram,
    pub threats: Vec<Threat>,
    /// Stores holding personal data (T20).
    pub personal_data: Vec<PersonalData>,
}

impl ThreatModel {
    /// Open threats at or above `severity`.
    pub fn open_at_or_above(&self, severity: Severity) -> impl Iterator<Item = &Threat> {
        self.threats
            .iter()
            .filter(move |t| t.status == Status::Open && t.severity >= severity)
    }

    /// Open threats of exactly `severity`.
    pub fn open_count(&self, severity: Severity) -> usize {
        self.threats
            .iter()
            .filter(|t| t.status == Status::Open && t.severity == severity)
            .count()
    }

    /// (open, mitigated, accepted) counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |s: Status| self.threats.iter().filter(|t| t.status == s).count();
        (
            count(Status::Open),
            count(Status::Mitigated),
            count(Status::Accepted),
        )
    }

    /// The element with this id.
    pub fn element(&self, id: &str) -> Option<&Element> {
        self.diagram.elements.iter().find(|e| e.id == id)
    }
}

/// One table per kind of thing the app exposes or holds.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub entry_points: Vec<EntryPoint>,
    pub functions: Vec<FunctionEntry>,
    pub stores: Vec<StoreEntry>,
    /// Secrets and config keys, with the functions that may read each.
    pub secrets_and_config: Vec<NamedValue>,
    pub outbound: Vec<OutboundEntry>,
    pub admin: AdminEntry,
    pub telemetry: Option<TelemetryEntry>,
    pub boundaries: Vec<BoundaryEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryPoint {
    pub route: String,
    pub methods: Vec<String>,
    pub function: String,
    /// `public`, or the credential kinds accepted.
    pub auth: Vec<String>,
    pub scopes: Vec<String>,
    /// Path and query rules, body schema, content types.
    pub input: Vec<String>,
    /// Request and response body caps, timeout.
    pub limits: String,
    /// `5/s burst 10 per caller`, or `off`.
    pub rate_limit: String,
    pub budget: String,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionEntry {
    pub name: String,
    pub component: String,
    /// `sha256:…` of the component on disk, when it could be read.
    pub digest: Option<String>,
    /// Whether the manifest pins the digest (T18).
    pub pinned: bool,
    pub imports: Vec<ImportEntry>,
    /// Grants as the manifest writes them: `kv attendees read-write`.
    pub grants: Vec<String>,
    pub strict_imports: bool,
    pub limits: String,
    /// What one call can cost at most: GB-seconds and money.
    pub worst_case: String,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportEntry {
    pub name: String,
    /// What it is to Bulkhead: the grant behind it, `WASI basics`,
    /// `deny-all`, `not offered`.
    pub behind: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreEntry {
    pub name: String,
    pub kind: String,
    pub scope: String,
    pub retention: Option<String>,
    pub personal_data: bool,
    pub encryption: String,
    pub readers: Vec<String>,
    pub writers: Vec<String>,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NamedValue {
    pub name: String,
    /// `secret` or `config`.
    pub kind: String,
    pub functions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboundEntry {
    pub origin: String,
    pub functions: Vec<String>,
    /// A wildcard host (`*.example.com`).
    pub wildcard: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminEntry {
    pub summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TelemetryEntry {
    pub endpoint: String,
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoundaryEntry {
    pub id: String,
    pub name: String,
    /// What crosses it in this app.
    pub crossing: String,
    /// The controls on it.
    pub controls: String,
}

/// The data-flow diagram: elements in trust zones, flows between them.
#[derive(Debug, Clone, Serialize)]
pub struct Diagram {
    pub zones: Vec<Zone>,
    pub elements: Vec<Element>,
    pub flows: Vec<Flow>,
}

/// A trust zone: a box in the diagram; a flow between two zones crosses
/// the trust boundary between them.
#[derive(Debug, Clone, Serialize)]
pub struct Zone {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ElementKind {
    /// Someone outside who calls in (clients, the operator).
    Actor,
    /// Code that runs (the gateway, each function).
    Process,
    /// Where data rests.
    Store,
    /// A system outside Bulkhead's control (outbound hosts, collectors).
    External,
}

#[derive(Debug, Clone, Serialize)]
pub struct Element {
    /// Stable: `fn:NAME`, `store:NAME`, `out:ORIGIN`, `gateway`, …
    pub id: String,
    pub kind: ElementKind,
    pub name: String,
    pub zone: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub id: String,
    pub from: String,
    pub to: String,
    pub label: String,
    /// The boundary it crosses, when its ends are in different zones.
    pub boundary: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Mitigated,
    Open,
    Accepted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Mitigated => "mitigated",
            Status::Open => "open",
            Status::Accepted => "accepted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stride {
    Spoofing,
    Tampering,
    Repudiation,
    #[serde(rename = "Information disclosure")]
    InformationDisclosure,
    #[serde(rename = "Denial of service")]
    DenialOfService,
    #[serde(rename = "Elevation of privilege")]
    ElevationOfPrivilege,
}

impl Stride {
    pub fn as_str(self) -> &'static str {
        match self {
            Stride::Spoofing => "Spoofing",
            Stride::Tampering => "Tampering",
            Stride::Repudiation => "Repudiation",
            Stride::InformationDisclosure => "Information disclosure",
            Stride::DenialOfService => "Denial of service",
            Stride::ElevationOfPrivilege => "Elevation of privilege",
        }
    }

    /// The letter in STRIDE.
    pub fn letter(self) -> char {
        self.as_str().chars().next().unwrap_or('?')
    }
}

/// One threat to one element.
#[derive(Debug, Clone, Serialize)]
pub struct Threat {
    /// Stable across runs: `RULE:TARGET`.
    pub id: String,
    /// What kind of threat, like `public-route`; `[[accept]]` names it.
    pub rule: &'static str,
    /// The catalogue entry (`T11`).
    pub threat_id: &'static str,
    pub stride: Stride,
    /// The element it is about (an [`Element::id`]).
    pub element: String,
    /// The function, store or app it is about.
    pub target: String,
    /// What `[[accept]] target` names to accept it: `target`, or for a
    /// finding about one grant of a function `FUNCTION:GRANT` (an origin,
    /// store or grant key), so an acceptance covers that grant only.
    pub accept_as: String,
    /// Short and about this app: "route `/admin` is public".
    pub title: String,
    pub status: Status,
    /// How bad it would be if open; kept when mitigated or accepted.
    pub severity: Severity,
    /// Mitigated: the control and where it is set. Open: the exact fix.
    /// Accepted: the recorded reason.
    pub detail: String,
    /// The manifest line that causes or mitigates it.
    pub line: Option<usize>,
}

/// One store holding personal data (T20).
#[derive(Debug, Clone, Serialize)]
pub struct PersonalData {
    pub store: String,
    pub kind: String,
    pub retention: Option<String>,
    /// How a subject's data is erased, or what is missing.
    pub erasure: String,
    pub export: String,
    pub readers: Vec<String>,
    pub writers: Vec<String>,
    pub line: Option<usize>,
}
