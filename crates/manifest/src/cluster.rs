//! `[cluster]` (issue 16): where shared state lives when several nodes
//! serve one app. `backend` picks the system of record (`embedded`
//! SQLite, the default, or `postgres`); `redis_url` names the Redis that
//! holds the per-caller limits shared by every node (T02, T03).
//!
//! The manifest is not a secret (it is signed, reviewed, kept in version
//! control), so a URL holding a password is never written in it: the
//! database URL comes only from `BULKHEAD_DATABASE_URL` or a file named by
//! `database_url_file`, and a Redis URL with a password only from
//! `BULKHEAD_REDIS_URL` or `redis_url_file`. Problems never echo a URL.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::problem::Collector;
use crate::raw::RawCluster;

/// The environment variable a Redis URL (with its password) comes from.
pub const REDIS_URL_ENV: &str = "BULKHEAD_REDIS_URL";
/// The environment variable the database URL comes from.
pub const DATABASE_URL_ENV: &str = "BULKHEAD_DATABASE_URL";
/// Keys in Redis start with this unless `key_prefix` says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "bulkhead";
/// Nodes there may be at most, as far as `fallback_nodes` goes.
const MAX_NODES: u32 = 4096;
/// How long a request waits for Redis's answer before deciding locally.
pub const DEFAULT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest `check_timeout` allowed: a request must not hang on Redis.
const MAX_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the app's state lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files in the app's state directory: one node.
    #[default]
    Embedded,
    /// PostgreSQL, shared by every node.
    Postgres,
}

/// Where a URL comes from, as the manifest says.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// Written in the manifest: never with a password.
    Inline(String),
    /// A file (absolute, or relative to the app directory) holding it.
    File(PathBuf),
}

impl fmt::Debug for UrlSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Printed in restart-only comparisons: no password inside.
            Self::Inline(url) => write!(f, "Inline({url})"),
            Self::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub backend: Backend,
    /// Where `backend` is written (1-based line and column).
    pub backend_location: Option<(usize, usize)>,
    /// `redis_url` or `redis_url_file`; else [`REDIS_URL_ENV`], if set.
    pub redis: Option<UrlSource>,
    /// `database_url_file`; else [`DATABASE_URL_ENV`], if set.
    pub database_url_file: Option<PathBuf>,
    /// First part of every Redis key; the app and environment follow.
    pub key_prefix: String,
    /// Nodes assumed while Redis has never answered, for the fallback share.
    pub fallback_nodes: u32,
    /// How long a request waits for Redis before deciding at its share.
    pub check_timeout: std::time::Duration,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            backend_location: None,
            redis: None,
            database_url_file: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            fallback_nodes: 1,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
        }
    }
}

/// A URL holding a credential: shown nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL itself, to hand to the client library and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretUrl(..)")
    }
}

/// Why a cluster URL cannot be used. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} from {from} {why}")]
    Invalid {
        what: &'static str,
        from: String,
        why: &'static str,
    },
}

impl Cluster {
    /// The Redis URL: the manifest's (`redis_url`, `redis_url_file`), else
    /// `from_env` (the value of [`REDIS_URL_ENV`]); `None` without one.
    pub fn redis_url(
        &self,
        app_dir: &Path,
        from_env: Option<String>,
    ) -> Result<Option<SecretUrl>, ClusterError> {
        const WHAT: &str = "Redis URL";
        let (url, from) = match &self.redis {
            Some(UrlSource::Inline(url)) => (url.clone(), "`redis_url`".to_string()),
            Some(UrlSource::File(path)) => (read_secret(app_dir, path, WHAT)?, file_name(path)),
            None => match from_env.filter(|v| !v.trim().is_empty()) {
                Some(url) => (url, REDIS_URL_ENV.to_string()),
                None => return Ok(None),
            },
        };
        let url = url.trim().to_string();
        check_redis_url(&url).map_err(|why| ClusterError::Invalid {
            what: WHAT,
            from,
            why,
        })?;
        Ok(Some(SecretUrl(url)))
    }

    /// The database URL: the file `database_url_file` names, else
    /// `from_env` (the value of [`DATABASE_URL_ENV`]).
    pub fn database_url(
        &self,
        app_dir: &Path,
        from_env: Option<String>,
    ) -> Result<Option<SecretUrl>, ClusterError> {
        const WHAT: &str = "database URL";
        let (url, from) = match &self.database_url_file {
            Some(path) => (read_secret(app_dir, path, WHAT)?, file_name(path)),
            None => match from_env.filter(|v| !v.trim().is_empty()) {
                Some(url) => (url, DATABASE_URL_ENV.to_string()),
                None => return Ok(None),
            },
        };
        let url = url.trim().to_string();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ClusterError::Invalid {
                what: WHAT,
                from,
                why: "must start with postgres:// or postgresql://",
            });
        }
        Ok(Some(SecretUrl(url)))
    }
}

fn file_name(path: &Path) -> String {
    format!("the file {}", path.display())
}

fn read_secret(app_dir: &Path, path: &Path, what: &'static str) -> Result<String, ClusterError> {
    let path = app_dir.join(path);
    // Bounded: a URL is short; a FIFO or /dev/zero is refused (T05).
    crate::files::read_bounded_text(&path, 4096).map_err(|source| ClusterError::Read {
        what,
        path,
        source,
    })
}

/// `redis://[user[:password]@]host[:port][/db]`: the only form taken.
/// TLS (`rediss://`) is not built in: its client TLS stack pulls `ring`.
fn check_redis_url(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(if url.starts_with("rediss://") {
            "asks for TLS (rediss://), which this build does not support; reach Redis over a private network or a local TLS tunnel and write redis://"
        } else {
            "must start with redis://, like redis://127.0.0.1:6379/"
        });
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err("has no host, like redis://127.0.0.1:6379/");
    }
    let path_ok = path.is_empty()
        || path == "/"
        || path
            .strip_prefix('/')
            .is_some_and(|db| db.len() <= 2 && db.bytes().all(|b| b.is_ascii_digit()));
    if !path_ok {
        return Err("may end only in a database number, like /0, without a query");
    }
    Ok(())
}

/// Whether `url` (a `redis://` URL) carries a password in its userinfo.
fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || rest.contains("password=")
}

pub(crate) fn resolve(out: &mut Collector<'_>, raw: &RawCluster) -> Cluster {
    let mut cluster = Cluster::default();
    if let Some(backend) = &raw.backend {
        cluster.backend_location = Some(out.location(backend.span()));
        cluster.backend = match backend.get_ref().as_str() {
            "embedded" => Backend::Embedded,
            "postgres" => Backend::Postgres,
            _ => {
                out.at(
                    Some(backend.span()),
                    "`backend` must be \"embedded\" (SQLite in the state directory, one node) or \"postgres\" (shared by every node)",
                );
                Backend::Embedded
            }
        };
    }
    if let Some(value) = &raw.database_url {
        // Never echoed: it holds the database's password.
        out.at(
            Some(value.span()),
            format!("`database_url` is never written in the manifest: it holds the database password, and the manifest is not a secret. Set {DATABASE_URL_ENV} in the server's environment, or write the URL in a file only the server can read and name it with `database_url_file`"),
        );
    }
    cluster.database_url_file = raw
        .database_url_file
        .as_ref()
        .and_then(|file| path(out, "database_url_file", file));
    cluster.redis = match (&raw.redis_url, &raw.redis_url_file) {
        (Some(_), Some(file)) => {
            out.at(
                Some(file.span()),
                "`redis_url` and `redis_url_file` are both set; keep one",
            );
            None
        }
        (Some(url), None) if has_password(url.get_ref()) => {
            out.at(
                Some(url.span()),
                format!("`redis_url` holds a password, and the manifest is not a secret; write the URL in a file only the server can read and name it with `redis_url_file`, or set {REDIS_URL_ENV} in the server's environment, and remove `redis_url`"),
            );
            None
        }
        (Some(url), None) => match check_redis_url(url.get_ref()) {
            Ok(()) => Some(UrlSource::Inline(url.get_ref().clone())),
            Err(why) => {
                out.at(Some(url.span()), format!("`redis_url` {why}"));
                None
            }
        },
        (None, Some(file)) => path(out, "redis_url_file", file).map(UrlSource::File),
        (None, None) => None,
    };
    if let Some(prefix) = &raw.key_prefix {
        let text = prefix.get_ref();
        let valid = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            cluster.key_prefix = text.clone();
        } else {
            out.at(
                Some(prefix.span()),
                "`key_prefix` must be 1 to 64 letters, digits, `-`, `_` or `.`, like `bulkhead`",
            );
        }
    }
    if let Some(nodes) = &raw.fallback_nodes {
        let n = *nodes.get_ref();
        if (1..=MAX_NODES).contains(&n) {
            cluster.fallback_nodes = n;
        } else {
            out.at(
                Some(nodes.span()),
                format!("`fallback_nodes` must be 1 to {MAX_NODES}: the nodes assumed to share the limits while Redis has never answered"),
            );
        }
    }
    if let Some(timeout) = &raw.check_timeout {
        let t = timeout.get_ref().get();
        if t.is_zero() || t > MAX_CHECK_TIMEOUT {
            out.at(
                Some(timeout.span()),
                "`check_timeout` must be between 1ms and 2s, like \"50ms\": how long a request waits for Redis before this node decides alone, at its share",
            );
        } else {
            cluster.check_timeout = t;
        }
    }
    cluster
}

fn path(out: &mut Collector<'_>, key: &str, value: &Spanned<String>) -> Option<PathBuf> {
    let text = value.get_ref();
    if text.trim().is_empty() || text.contains("://") {
        out.at(
            Some(value.span()),
            format!(
                "`{key}` names a file holding the URL, like \"/etc/bulkhead/redis-url\", not the URL"
            ),
        );
        return None;
    }
    Some(PathBuf::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{App, parse};

    /// A manifest with one function and `extra` from line 9 on.
    fn app_in(dir: &Path, extra: &str, env: &str) -> Result<App, String> {
        std::fs::write(dir.join("f.wasm"), b"").unwrap();
        let manifest = format!(
            "[app]\nname = \"clustered\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\n\n{extra}"
        );
        parse(dir, &dir.join("bulkhead.toml"), &manifest, env).map_err(|e| e.to_string())
    }

    fn app(extra: &str, env: &str) -> Result<App, String> {
        let dir = tempfile::tempdir().unwrap();
        app_in(dir.path(), extra, env)
    }

    #[test]
    fn without_a_section_the_app_is_embedded_and_alone() {
        let cluster = app("", "dev").unwrap().cluster;
        assert_eq!(cluster, Cluster::default());
        assert_eq!(cluster.backend, Backend::Embedded);
        let none = cluster.redis_url(Path::new("."), None).unwrap();
        assert!(none.is_none());
        // The environment alone names a Redis (its password kept out of the manifest).
        let url = cluster
            .redis_url(
                Path::new("."),
                Some("redis://:s3cret@10.0.0.5:6379/".into()),
            )
            .unwrap()
            .unwrap();
        assert_eq!(url.expose(), "redis://:s3cret@10.0.0.5:6379/");
        assert!(!format!("{url:?}").contains("s3cret"));
    }

    #[test]
    fn a_redis_url_without_password_and_settings_are_taken() {
        let text = "[cluster]\nbackend = \"embedded\"\nredis_url = \"redis://127.0.0.1:6379/\"\nkey_prefix = \"t-1\"\nfallback_nodes = 3\ncheck_timeout = \"1s\"\n";
        let cluster = app(text, "dev").unwrap().cluster;
        assert_eq!(
            cluster.redis,
            Some(UrlSource::Inline("redis://127.0.0.1:6379/".into()))
        );
        assert_eq!(cluster.key_prefix, "t-1");
        assert_eq!(cluster.fallback_nodes, 3);
        assert_eq!(cluster.check_timeout, std::time::Duration::from_secs(1));
        // The manifest's URL wins over the environment's.
        let url = cluster
            .redis_url(Path::new("."), Some("redis://other:6379/".into()))
            .unwrap()
            .unwrap();
        assert_eq!(url.expose(), "redis://127.0.0.1:6379/");
        // Per environment.
        let text = "[env.prod.cluster]\nredis_url = \"redis://redis.internal:6379/0\"\n";
        assert!(app(text, "dev").unwrap().cluster.redis.is_none());
        assert_eq!(
            app(text, "prod").unwrap().cluster.redis,
            Some(UrlSource::Inline("redis://redis.internal:6379/0".into()))
        );
    }

    #[test]
    fn passwords_are_refused_in_the_manifest_and_never_echoed() {
        for (line, expected) in [
            (
                "redis_url = \"redis://:hunter2@127.0.0.1:6379/\"",
                "`redis_url` holds a password",
            ),
            (
                "redis_url = \"redis://app:hunter2@127.0.0.1:6379/\"",
                "redis_url_file",
            ),
            (
                "database_url = \"postgres://app:hunter2@db/app\"",
                "`database_url` is never written in the manifest",
            ),
            (
                "database_url = \"postgres://db/app\"",
                "BULKHEAD_DATABASE_URL",
            ),
            (
                "redis_url = \"rediss://hunter2.example:6379/\"",
                "does not support",
            ),
            (
                "redis_url = \"http://hunter2.example:6379/\"",
                "must start with redis://",
            ),
            (
                "redis_url = \"redis://h:6379/0?hunter2=1\"",
                "database number",
            ),
            ("backend = \"mysql\"", "`backend` must be"),
            ("key_prefix = \"a b\"", "`key_prefix` must be"),
            ("fallback_nodes = 0", "`fallback_nodes` must be"),
            ("check_timeout = \"5s\"", "`check_timeout` must be"),
            (
                "redis_url_file = \"redis://h:6379/\"",
                "names a file holding the URL",
            ),
            ("nodes = 3", "unknown field `nodes`"),
        ] {
            let err = app(&format!("[cluster]\n{line}\n"), "dev").unwrap_err();
            assert!(err.contains("bulkhead.toml:10:"), "{line}: {err}");
            assert!(err.contains(expected), "{line}: {err}");
            assert!(!err.contains("hunter2"), "the value is echoed: {err}");
        }
        let err = app(
            "[cluster]\nredis_url = \"redis://h/\"\nredis_url_file = \"/etc/r\"\n",
            "dev",
        )
        .unwrap_err();
        assert!(err.contains("keep one"), "{err}");
    }

    #[test]
    fn urls_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("redis-url"),
            "redis://:pw@127.0.0.1:6379/\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("db-url"),
            "postgres://app:pw@127.0.0.1/app\n",
        )
        .unwrap();
        let cluster = app_in(
            dir.path(),
            "[cluster]\nbackend = \"postgres\"\nredis_url_file = \"redis-url\"\ndatabase_url_file = \"db-url\"\n",
            "dev",
        )
        .unwrap()
        .cluster;
        assert_eq!(cluster.backend, Backend::Postgres);
        assert_eq!(cluster.backend_location, Some((10, 11)));
        let redis = cluster.redis_url(dir.path(), None).unwrap().unwrap();
        assert_eq!(redis.expose(), "redis://:pw@127.0.0.1:6379/");
        let db = cluster.database_url(dir.path(), None).unwrap().unwrap();
        assert_eq!(db.expose(), "postgres://app:pw@127.0.0.1/app");

        // From the environment when the manifest names no file.
        let plain = Cluster::default();
        let db = plain
            .database_url(dir.path(), Some("postgresql://x:pw@db/app".into()))
            .unwrap()
            .unwrap();
        assert_eq!(db.expose(), "postgresql://x:pw@db/app");
        let err = plain
            .database_url(dir.path(), Some("mysql://x:pw@db/app".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(DATABASE_URL_ENV) && !err.contains("pw"),
            "{err}"
        );

        // A file that is missing, or holds a bad URL: said, the URL not shown.
        std::fs::write(dir.path().join("bad"), "https://:pw@x/").unwrap();
        let bad = Cluster {
            redis: Some(UrlSource::File("bad".into())),
            ..Cluster::default()
        };
        let err = bad.redis_url(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("must start with redis://"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        let missing = Cluster {
            redis: Some(UrlSource::File("nope".into())),
            ..Cluster::default()
        };
        let err = missing.redis_url(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("cannot read the Redis URL file"), "{err}");
    }
}
