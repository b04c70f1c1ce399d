//! `[store.NAME]`, `[config]` and the store, secret and config grants
//! (T13, T14, T16, T20): every store is declared once for the app; a
//! function reaches one only through a grant naming it with the right kind.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component as PathPart, Path, PathBuf};

use toml::Spanned;

use crate::grants::{SqlGrant, StoreAccess};
use crate::problem::Collector;
use crate::raw::{RawGrants, RawSqlGrant, RawStore};
use crate::units::Duration;

/// One declared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub name: String,
    pub kind: StoreKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Kv {
        scope: Scope,
        /// Records older than this are never returned and are swept.
        retention: Option<Duration>,
        personal_data: bool,
    },
    Sql {
        /// Directory of `*.sql` files applied in name order at deploy.
        migrations: PathBuf,
        retention: Option<Duration>,
        personal_data: bool,
    },
}

impl StoreSpec {
    pub fn is_kv(&self) -> bool {
        matches!(self.kind, StoreKind::Kv { .. })
    }

    pub fn is_sql(&self) -> bool {
        matches!(self.kind, StoreKind::Sql { .. })
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            StoreKind::Kv { .. } => "kv",
            StoreKind::Sql { .. } => "sql",
        }
    }

    /// `scope = "subject"`: each caller sees only its own records.
    pub fn per_subject(&self) -> bool {
        matches!(
            self.kind,
            StoreKind::Kv {
                scope: Scope::Subject,
                ..
            }
        )
    }

    pub fn retention(&self) -> Option<Duration> {
        match &self.kind {
            StoreKind::Kv { retention, .. } | StoreKind::Sql { retention, .. } => *retention,
        }
    }

    pub fn personal_data(&self) -> bool {
        match &self.kind {
            StoreKind::Kv { personal_data, .. } | StoreKind::Sql { personal_data, .. } => {
                *personal_data
            }
        }
    }
}

/// Whose records a key-value call sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One key space for the whole app.
    App,
    /// One key space per verified subject (T13).
    Subject,
}

/// Store, secret and config names: `^[a-z][a-z0-9_-]{0,63}$`.
pub fn valid_resource_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

const NAME_RULE: &str =
    "must start with a lowercase letter and hold at most 64 lowercase letters, digits, `_` or `-`";

fn check_resource_name(out: &mut Collector<'_>, what: &str, name: &Spanned<String>) -> bool {
    if valid_resource_name(name.get_ref()) {
        return true;
    }
    // The name is not echoed: it may be anything the author typed.
    out.at(Some(name.span()), format!("{what} name {NAME_RULE}"));
    false
}

/// Resolve `[store.*]`.
pub(crate) fn resolve_stores(
    out: &mut Collector<'_>,
    app_dir: &Path,
    raw: &BTreeMap<Spanned<String>, Spanned<RawStore>>,
) -> Vec<StoreSpec> {
    let mut stores = Vec::new();
    for (name, spanned) in raw {
        let ok_name = check_resource_name(out, "store", name);
        let store = spanned.get_ref();
        let label = name.get_ref();
        let retention = store.retention.as_ref().map(|r| *r.get_ref());
        let personal_data = store.personal_data.unwrap_or(false);
        let kind = match store.kind.get_ref().as_str() {
            "kv" => {
                if let Some(m) = &store.migrations {
                    out.at(
                        Some(m.span()),
                        format!("store `{label}`: `migrations` applies only to `kind = \"sql\"`"),
                    );
                }
                let scope = match store
                    .scope
                    .as_ref()
                    .map(|s| (s.get_ref().as_str(), s.span()))
                {
                    None | Some(("app", _)) => Some(Scope::App),
                    Some(("subject", _)) => Some(Scope::Subject),
                    Some((_, span)) => {
                        out.at(
                            Some(span),
                            format!("store `{label}`: `scope` must be \"app\" or \"subject\""),
                        );
                        None
                    }
                };
                scope.map(|scope| StoreKind::Kv {
                    scope,
                    retention,
                    personal_data,
                })
            }
            "sql" => {
                if let Some(s) = &store.scope {
                    out.at(
                        Some(s.span()),
                        format!(
                            "store `{label}`: `scope` applies only to `kind = \"kv\"`; a SQL store is app-wide"
                        ),
                    );
                }
                match &store.migrations {
                    None => {
                        out.at(
                            Some(spanned.span()),
                            format!(
                                "store `{label}`: a SQL store needs `migrations = \"DIR\"`, a directory of `*.sql` files applied in name order"
                            ),
                        );
                        None
                    }
                    Some(dir) => {
                        migrations_dir(out, app_dir, label, dir).map(|migrations| StoreKind::Sql {
                            migrations,
                            retention,
                            personal_data,
                        })
                    }
                }
            }
            _ => {
                out.at(
                    Some(store.kind.span()),
                    format!("store `{label}`: `kind` must be \"kv\" or \"sql\""),
                );
                None
            }
        };
        if let (true, Some(kind)) = (ok_name, kind) {
            stores.push(StoreSpec {
                name: label.clone(),
                kind,
            });
        }
    }
    stores
}

fn migrations_dir(
    out: &mut Collector<'_>,
    app_dir: &Path,
    store: &str,
    dir: &Spanned<String>,
) -> Option<PathBuf> {
    let relative = Path::new(dir.get_ref());
    if relative.is_absolute()
        || relative
            .components()
            .any(|p| matches!(p, PathPart::ParentDir))
    {
        out.at(
            Some(dir.span()),
            format!("store `{store}`: `migrations` must be a directory inside the app directory, without `..`"),
        );
        return None;
    }
    let path = app_dir.join(relative);
    if !path.is_dir() {
        out.at(
            Some(dir.span()),
            format!("store `{store}`: the `migrations` directory does not exist; create it with the `*.sql` files of the schema"),
        );
        return None;
    }
    Some(path)
}

/// Resolve `[config]`.
pub(crate) fn resolve_config(
    out: &mut Collector<'_>,
    raw: &BTreeMap<Spanned<String>, Spanned<String>>,
) -> BTreeMap<String, String> {
    let mut config = BTreeMap::new();
    for (key, value) in raw {
        if check_resource_name(out, "config", key) {
            config.insert(key.get_ref().clone(), value.get_ref().clone());
        }
    }
    config
}

/// The store, secret and config part of one function's grants.
pub(crate) struct StoreGrants {
    pub kv: BTreeMap<String, StoreAccess>,
    pub sql: BTreeMap<String, SqlGrant>,
    pub secrets: Vec<String>,
    pub config: Vec<String>,
}

pub(crate) fn resolve_grants(
    out: &mut Collector<'_>,
    function: &str,
    raw: &RawGrants,
    stores: &[StoreSpec],
    declared: &BTreeMap<Spanned<String>, Spanned<RawStore>>,
    config: &BTreeMap<String, String>,
) -> StoreGrants {
    let mut kv = BTreeMap::new();
    for (name, access) in &raw.kv {
        let access_value = parse_access(out, function, access.get_ref(), access.span());
        if store_of_kind(out, function, name, "kv", stores, declared)
            && let Some(a) = access_value
        {
            kv.insert(name.get_ref().clone(), a);
        }
    }
    let mut sql = BTreeMap::new();
    for (name, grant) in &raw.sql {
        let (access, statements) = match grant.get_ref() {
            RawSqlGrant::Access(a) => (a.as_str(), None),
            RawSqlGrant::Table(t) => (t.access.as_str(), t.statements.clone()),
        };
        let access = parse_access(out, function, access, grant.span());
        if let Some(list) = &statements
            && (list.is_empty() || list.iter().any(|s| s.trim().is_empty()))
        {
            out.at(
                Some(grant.span()),
                format!(
                    "function `{function}`: `statements` must list at least one non-empty statement"
                ),
            );
        }
        if store_of_kind(out, function, name, "sql", stores, declared)
            && let Some(access) = access
        {
            sql.insert(name.get_ref().clone(), SqlGrant { access, statements });
        }
    }
    let mut secrets = Vec::new();
    for name in &raw.secrets {
        if check_resource_name(out, "secret", name) && !secrets.contains(name.get_ref()) {
            secrets.push(name.get_ref().clone());
        }
    }
    let mut config_keys = Vec::new();
    for key in &raw.config {
        if !check_resource_name(out, "config", key) {
            continue;
        }
        if !config.contains_key(key.get_ref()) {
            out.at(
                Some(key.span()),
                format!(
                    "function `{function}`: config key `{}` is not declared; add it under `[config]`",
                    key.get_ref()
                ),
            );
        } else if secrets.contains(key.get_ref()) {
            out.at(
                Some(key.span()),
                format!(
                    "function `{function}`: `{}` is granted both as a secret and as a config key; rename one, they share one `wasi:config` namespace",
                    key.get_ref()
                ),
            );
        } else if !config_keys.contains(key.get_ref()) {
            config_keys.push(key.get_ref().clone());
        }
    }
    StoreGrants {
        kv,
        sql,
        secrets,
        config: config_keys,
    }
}

fn parse_access(
    out: &mut Collector<'_>,
    function: &str,
    text: &str,
    span: Range<usize>,
) -> Option<StoreAccess> {
    let access = StoreAccess::parse(text);
    if access.is_none() {
        out.at(
            Some(span),
            format!("function `{function}`: store access must be \"read\" or \"read-write\""),
        );
    }
    access
}

/// Is `name` a declared store of `kind`? Reports the problem otherwise.
fn store_of_kind(
    out: &mut Collector<'_>,
    function: &str,
    name: &Spanned<String>,
    kind: &str,
    stores: &[StoreSpec],
    declared: &BTreeMap<Spanned<String>, Spanned<RawStore>>,
) -> bool {
    if !check_resource_name(out, "store", name) {
        return false;
    }
    let label = name.get_ref();
    if let Some(store) = stores.iter().find(|s| &s.name == label) {
        if store.kind_name() == kind {
            return true;
        }
        out.at(
            Some(name.span()),
            format!(
                "function `{function}`: store `{label}` is a {} store; grant it under `{}`, not `{kind}`",
                store.kind_name(),
                store.kind_name()
            ),
        );
        return false;
    }
    // Declared but invalid: its own problem is already reported.
    if !declared.keys().any(|k| k.get_ref() == label) {
        out.at(
            Some(name.span()),
            format!(
                "function `{function}`: store `{label}` is not declared; add a `[store.{label}]` section with `kind = \"{kind}\"`"
            ),
        );
    }
    false
}

#[cfg(test)]
mod tests;
