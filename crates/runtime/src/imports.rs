//! The import check at deploy (T18): every interface a component imports
//! is classified before it is linked. Capabilities (outbound HTTP,
//! key-value, config and secrets, SQL, queues) are listed beside the grant that
//! enables them; the WASI interfaces language runtimes import by habit are
//! bound to implementations that grant nothing (no preopens, empty
//! environment, every socket address refused and audited); anything else
//! is refused by name. With `strict_imports`, a capability import the
//! function was not granted refuses the component before it ever runs.

use std::fmt;

use bulkhead_manifest::Grants;

/// A capability a grant enables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Outbound,
    KeyValue,
    Config,
    Sql,
    /// `bulkhead:queue/producer` (issue 18).
    Queue,
}

impl Capability {
    /// The `grants` key that enables it.
    pub fn grant_key(self) -> &'static str {
        match self {
            Capability::Outbound => "outbound",
            Capability::KeyValue => "kv",
            Capability::Config => "config / secrets",
            Capability::Sql => "sql",
            Capability::Queue => "queues",
        }
    }

    /// A grant line that would allow it, for messages.
    pub fn example_grant(self) -> &'static str {
        match self {
            Capability::Outbound => r#"grants = { outbound = ["https://HOST"] }"#,
            Capability::KeyValue => r#"grants = { kv = { STORE = "read" } }"#,
            Capability::Config => {
                r#"grants = { config = ["KEY"] } or grants = { secrets = ["NAME"] }"#
            }
            Capability::Sql => r#"grants = { sql = { STORE = "read" } }"#,
            Capability::Queue => r#"grants = { queues = { QUEUE = "send" } }"#,
        }
    }

    fn granted(self, grants: &Grants) -> bool {
        match self {
            Capability::Outbound => !grants.outbound.is_empty(),
            Capability::KeyValue => !grants.kv.is_empty(),
            Capability::Config => !grants.config.is_empty() || !grants.secrets.is_empty(),
            Capability::Sql => !grants.sql.is_empty(),
            Capability::Queue => !grants.queues.is_empty(),
        }
    }
}

/// What one import is to Bulkhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    /// Enabled by a grant; `granted` says whether this function has it.
    Capability {
        capability: Capability,
        granted: bool,
    },
    /// Types and streams every wasi:http component needs; grant nothing.
    Plumbing,
    /// Imported by habit (files, environment, sockets, terminal): bound to
    /// an implementation that denies everything.
    DenyAll,
    /// Bulkhead does not offer it: the component is refused.
    Unsupported,
}

/// One import and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// As the component names it, e.g. `wasi:http/outgoing-handler@0.2.0`.
    pub name: String,
    pub kind: ImportKind,
}

impl fmt::Display for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ImportKind::Capability {
                capability,
                granted: true,
            } => write!(
                f,
                "{} -> grant `{}` (granted)",
                self.name,
                capability.grant_key()
            ),
            ImportKind::Capability {
                capability,
                granted: false,
            } => write!(
                f,
                "{} -> grant `{}` (NOT granted: every call is refused; to allow it add {})",
                self.name,
                capability.grant_key(),
                capability.example_grant()
            ),
            ImportKind::Plumbing => write!(f, "{} -> WASI basics (nothing to grant)", self.name),
            ImportKind::DenyAll => write!(f, "{} -> bound to deny-all", self.name),
            ImportKind::Unsupported => write!(f, "{} -> NOT OFFERED (refused)", self.name),
        }
    }
}

/// The interface part of an import name: `wasi:http/types@0.2.3` ->
/// (`wasi:http`, `types`).
fn split(name: &str) -> (&str, &str) {
    let bare = name.split_once('@').map_or(name, |(n, _)| n);
    bare.split_once('/').unwrap_or((bare, ""))
}

pub fn classify(name: &str, grants: &Grants) -> ImportKind {
    let capability = |capability: Capability| ImportKind::Capability {
        capability,
        granted: capability.granted(grants),
    };
    match split(name) {
        ("wasi:http", "outgoing-handler") => capability(Capability::Outbound),
        ("wasi:http", "types") => ImportKind::Plumbing,
        ("wasi:keyvalue", _) => capability(Capability::KeyValue),
        ("wasi:config", "store") => capability(Capability::Config),
        ("bulkhead:sql", "sql") => capability(Capability::Sql),
        ("bulkhead:queue", "producer") => capability(Capability::Queue),
        ("wasi:io" | "wasi:clocks" | "wasi:random", _) => ImportKind::Plumbing,
        ("wasi:cli", "stdout" | "stderr" | "stdin" | "exit") => ImportKind::Plumbing,
        ("wasi:cli", _) | ("wasi:filesystem", _) | ("wasi:sockets", _) => ImportKind::DenyAll,
        _ => ImportKind::Unsupported,
    }
}

/// The names a component's own import section lists, read from its bytes
/// without compiling it (the threat model reads every component of an app
/// in milliseconds). Imports of components and modules nested inside are
/// satisfied within it and are not listed.
pub fn read_component_imports(bytes: &[u8]) -> Result<Vec<String>, String> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut names = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| format!("not a valid WebAssembly binary: {e}"))? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != Encoding::Component {
                    return Err("a core WebAssembly module, not a component".into());
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(|e| format!("unreadable import: {e}"))?;
                    names.push(import.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// Deepest nesting of components and modules a deployed component may
/// have. Real toolchains nest a few levels (componentize-py: 3); wasmtime's
/// compiler needs memory growing with the depth, gigabytes at 20,000.
pub const MAX_NESTING: usize = 32;

/// Most instances a component may create when instantiated. Real
/// components create a handful; a few hundred bytes instantiating ten-fold
/// through nine levels, or through a chain of sibling components reached
/// by alias, ask the compiler for 10^8 and gigabytes.
pub const MAX_INSTANCES: u64 = 10_000;

/// Refuse, before it is compiled, a component nested deeper than
/// [`MAX_NESTING`] or that may create more than [`MAX_INSTANCES`]
/// instances (T05 at deploy). Read without compiling; malformed bytes are
/// left to the compiler to describe.
///
/// The bound does not follow which component each `instantiate` names
/// (nested, imported, aliased from an outer scope or an instance's
/// exports): components cannot instantiate themselves, so every chain of
/// instantiations passes through distinct components, and the product
/// over all of them of (1 + the instantiations each makes) bounds the
/// component instances however they are wired; each of those may hold at
/// most all the core instances the file declares.
pub fn check_nesting(bytes: &[u8]) -> Result<(), String> {
    use wasmparser::{ComponentInstance, Instance, Parser, Payload};
    // Per component or module being read: the component instantiations it
    // makes so far.
    let mut frames: Vec<u64> = Vec::new();
    let mut component_instances = 1u64;
    let mut core_instances = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return Ok(());
        };
        match payload {
            Payload::Version { .. } => {
                frames.push(0);
                if frames.len() > MAX_NESTING {
                    return Err(format!(
                        "components and modules are nested more than {MAX_NESTING} levels deep"
                    ));
                }
            }
            Payload::End(_) => {
                let made = frames.pop().unwrap_or(0);
                component_instances = component_instances.saturating_mul(made.saturating_add(1));
            }
            Payload::InstanceSection(reader) => {
                let count = reader
                    .into_iter()
                    .filter(|i| matches!(i, Ok(Instance::Instantiate { .. })))
                    .count();
                core_instances = core_instances.saturating_add(count as u64);
            }
            Payload::ComponentInstanceSection(reader) => {
                let count = reader
                    .into_iter()
                    .filter(|i| matches!(i, Ok(ComponentInstance::Instantiate { .. })))
                    .count();
                if let Some(made) = frames.last_mut() {
                    *made = made.saturating_add(count as u64);
                }
            }
            _ => {}
        }
        let instances = component_instances.saturating_mul(core_instances.saturating_add(1));
        if instances > MAX_INSTANCES {
            return Err(format!(
                "it may create up to {instances} instances when instantiated, over the {MAX_INSTANCES} allowed"
            ));
        }
    }
    Ok(())
}

/// Classify every import, in the order given.
pub fn classify_all(names: &[String], grants: &Grants) -> Vec<Import> {
    names
        .iter()
        .map(|name| Import {
            name: name.clone(),
            kind: classify(name, grants),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bulkhead_manifest::grants::{SqlGrant, StoreAccess};

    use super::*;

    #[test]
    fn t18_imports_are_classified() {
        let none = Grants::default();
        let sql = Grants {
            sql: BTreeMap::from([(
                "events".to_string(),
                SqlGrant {
                    access: StoreAccess::Read,
                    statements: None,
                },
            )]),
            ..Grants::default()
        };
        assert_eq!(
            classify("bulkhead:sql/sql@0.1.0", &none),
            ImportKind::Capability {
                capability: Capability::Sql,
                granted: false
            }
        );
        assert_eq!(
            classify("bulkhead:sql/sql@0.1.0", &sql),
            ImportKind::Capability {
                capability: Capability::Sql,
                granted: true
            }
        );
        assert_eq!(
            classify("wasi:keyvalue/atomics@0.2.0-draft", &none),
            ImportKind::Capability {
                capability: Capability::KeyValue,
                granted: false
            }
        );
        assert_eq!(
            classify("wasi:sockets/tcp@0.2.0", &none),
            ImportKind::DenyAll
        );
        assert_eq!(
            classify("wasi:filesystem/preopens@0.2.3", &none),
            ImportKind::DenyAll
        );
        assert_eq!(
            classify("wasi:cli/environment@0.2.3", &none),
            ImportKind::DenyAll
        );
        assert_eq!(
            classify("wasi:io/streams@0.2.3", &none),
            ImportKind::Plumbing
        );
        assert_eq!(
            classify("attacker:vault/secrets", &none),
            ImportKind::Unsupported
        );
        assert_eq!(
            classify("wasi:http-evil/types", &none),
            ImportKind::Unsupported
        );
        assert_eq!(
            classify("bulkhead:sqlx/sql", &none),
            ImportKind::Unsupported
        );
    }
}
