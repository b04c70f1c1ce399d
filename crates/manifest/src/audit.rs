//! `[audit]`: the audit trail's size budget (T09). Past 80 % of it the
//! writer warns (log, metric, an `audit.nearly_full` record); at 100 % it
//! stops writing full records and only counts them, so that the trail
//! cannot fill the disk.

use crate::ByteSize;
use crate::defaults::AUDIT_MAX_SIZE;
use crate::problem::Collector;
use crate::raw::RawAudit;

/// Below this a budget would fill with the records of one busy minute.
const MIN_AUDIT_SIZE: ByteSize = ByteSize::mib(1);

pub(crate) fn resolve(out: &mut Collector<'_>, raw: &RawAudit) -> ByteSize {
    match &raw.max_size {
        Some(size) if size.get_ref().bytes() < MIN_AUDIT_SIZE.bytes() => {
            out.at(
                Some(size.span()),
                format!("`[audit] max_size` must be at least {MIN_AUDIT_SIZE}, like `1GiB`"),
            );
            AUDIT_MAX_SIZE
        }
        Some(size) => *size.get_ref(),
        None => AUDIT_MAX_SIZE,
    }
}

#[cfg(test)]
mod tests {
    use crate::{App, parse};

    /// A manifest with one function and `extra` from line 9 on.
    fn app(extra: &str, env: &str) -> Result<App, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let manifest = format!(
            "[app]\nname = \"audited\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\n\n{extra}"
        );
        parse(
            dir.path(),
            &dir.path().join("bulkhead.toml"),
            &manifest,
            env,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_audit_budget_defaults_to_one_gib_and_overlays_per_env() {
        assert_eq!(app("", "dev").unwrap().audit_max_size.bytes(), 1 << 30);
        let text = "[audit]\nmax_size = \"64MiB\"\n\n[env.prod.audit]\nmax_size = \"8GiB\"\n";
        assert_eq!(app(text, "dev").unwrap().audit_max_size.bytes(), 64 << 20);
        assert_eq!(app(text, "prod").unwrap().audit_max_size.bytes(), 8 << 30);
    }

    #[test]
    fn a_tiny_or_unknown_audit_setting_is_refused_with_its_line() {
        let err = app("[audit]\nmax_size = \"10KiB\"\n", "dev").unwrap_err();
        assert!(err.contains("bulkhead.toml:10:12"), "{err}");
        assert!(err.contains("at least 1MiB"), "{err}");
        let err = app("[audit]\nmax_records = 5\n", "dev").unwrap_err();
        assert!(err.contains("max_records"), "{err}");
    }
}
