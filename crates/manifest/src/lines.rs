//! Where each setting is written in `bulkhead.toml`, so a report can point
//! at the line that causes or mitigates a threat (T21): the threat model's
//! findings and the privilege review's grants carry these lines.
//!
//! Keys are dotted paths as the manifest spells them, with the function's
//! or store's name in place of the array index: `function.NAME.route`,
//! `function.NAME.grants.kv.STORE`, `store.NAME.retention`,
//! `limits.rate_limit`. Only the settings a report cites are kept.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use crate::problem::line_and_column;
use crate::raw::{RawLimits, RawManifest, RawTls};

/// Setting -> 1-based line in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceLines(BTreeMap<String, usize>);

impl SourceLines {
    /// The line of `key`, if the manifest writes it.
    pub fn get(&self, key: &str) -> Option<usize> {
        self.0.get(key).copied()
    }

    /// The line of the first of `keys` the manifest writes: the most
    /// specific setting first, its section last.
    pub fn first(&self, keys: &[&str]) -> Option<usize> {
        keys.iter().find_map(|key| self.get(key))
    }

    /// Every key and its line, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

struct Builder<'a> {
    source: &'a str,
    lines: BTreeMap<String, usize>,
}

impl Builder<'_> {
    fn at(&mut self, key: String, span: Range<usize>) {
        let (line, _) = line_and_column(self.source, span.start);
        self.lines.entry(key).or_insert(line);
    }

    fn opt<T>(&mut self, key: String, value: &Option<Spanned<T>>) {
        if let Some(value) = value {
            self.at(key, value.span());
        }
    }

    /// `[tls]` keys a strict environment's refusals cite (T15).
    fn tls(&mut self, tls: &RawTls) {
        self.opt("tls.cert".into(), &tls.cert);
        self.opt("tls.client_ca".into(), &tls.client_ca);
        self.opt("tls.hsts".into(), &tls.hsts);
        self.opt("tls.terminated_upstream".into(), &tls.terminated_upstream);
    }

    /// `[limits]` keys a threat model cites; an environment's overlay
    /// (visited first) wins over the base section.
    fn limits(&mut self, prefix: &str, limits: &RawLimits) {
        let key = |name: &str| format!("{prefix}.{name}");
        self.opt(key("rate_limit"), &limits.rate_limit);
        self.opt(key("budget"), &limits.budget);
        self.opt(key("metering"), &limits.metering);
        self.opt(key("dynamic_throttle"), &limits.dynamic_throttle);
        self.opt(key("trusted_proxies"), &limits.trusted_proxies);
    }
}

pub(crate) fn map(source: &str, raw: &RawManifest, env: &str) -> SourceLines {
    let mut b = Builder {
        source,
        lines: BTreeMap::new(),
    };
    b.at("app".into(), raw.app.name.span());
    b.opt("app.hostnames".into(), &raw.app.hostnames);
    if let Some(overlay) = raw.env.get(env) {
        b.limits("limits", &overlay.get_ref().limits);
        b.opt(
            "telemetry.otlp_endpoint".into(),
            &overlay.get_ref().telemetry.otlp_endpoint,
        );
    }
    b.limits("limits", &raw.limits);
    if let Some(overlay) = raw.env.get(env) {
        b.opt("trust.signers".into(), &overlay.get_ref().trust.signers);
        b.tls(&overlay.get_ref().tls);
    }
    b.opt("trust.signers".into(), &raw.trust.signers);
    b.tls(&raw.tls);
    b.opt(
        "telemetry.otlp_endpoint".into(),
        &raw.telemetry.otlp_endpoint,
    );
    if let Some(jwt) = &raw.auth.jwt {
        b.at("auth.jwt".into(), jwt.span());
        b.opt(
            "auth.jwt.max_token_lifetime".into(),
            &jwt.get_ref().max_token_lifetime,
        );
    }
    for (name, store) in &raw.store {
        let prefix = format!("store.{}", name.get_ref());
        b.at(prefix.clone(), name.span());
        let s = store.get_ref();
        b.opt(format!("{prefix}.scope"), &s.scope);
        b.opt(format!("{prefix}.retention"), &s.retention);
    }
    for spanned in &raw.function {
        let f = spanned.get_ref();
        let prefix = format!("function.{}", f.name.get_ref());
        let key = |name: &str| format!("{prefix}.{name}");
        b.at(prefix.clone(), f.name.span());
        b.at(key("component"), f.component.span());
        b.opt(key("route"), &f.route);
        b.opt(key("trigger"), &f.trigger);
        b.opt(key("digest"), &f.digest);
        b.opt(key("methods"), &f.methods);
        b.opt(key("auth"), &f.auth);
        b.opt(key("public_reason"), &f.public_reason);
        b.opt(key("scopes"), &f.scopes);
        b.opt(key("rate_limit"), &f.rate_limit);
        b.opt(key("budget"), &f.budget);
        b.opt(key("timeout"), &f.timeout);
        b.opt(key("memory"), &f.memory);
        b.opt(key("input.body_schema"), &f.input.body_schema);
        b.opt(key("client_cert"), &f.client_cert);
        let g = &f.grants;
        for origin in &g.outbound {
            b.at(key("grants.outbound"), origin.span());
            b.at(
                key(&format!("grants.outbound.{}", origin.get_ref())),
                origin.span(),
            );
            // Also under the origin as reports print it (`https://host:443`).
            if let Ok(rule) = crate::OutboundRule::parse(origin.get_ref()) {
                b.at(key(&format!("grants.outbound.{rule}")), origin.span());
            }
        }
        for (store, access) in &g.kv {
            b.at(key("grants.kv"), store.span());
            b.at(
                key(&format!("grants.kv.{}", store.get_ref())),
                access.span(),
            );
        }
        for (store, grant) in &g.sql {
            b.at(key("grants.sql"), store.span());
            b.at(
                key(&format!("grants.sql.{}", store.get_ref())),
                grant.span(),
            );
        }
        for secret in &g.secrets {
            b.at(key("grants.secrets"), secret.span());
            b.at(
                key(&format!("grants.secrets.{}", secret.get_ref())),
                secret.span(),
            );
        }
        for config in &g.config {
            b.at(key("grants.config"), config.span());
            b.at(
                key(&format!("grants.config.{}", config.get_ref())),
                config.span(),
            );
        }
    }
    SourceLines(b.lines)
}

#[cfg(test)]
mod tests {
    use crate::parse;

    fn app(manifest: &str, env: &str) -> Result<crate::App, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("f.wasm"), b"").map_err(|e| e.to_string())?;
        parse(dir.path(), &dir.path().join("bulkhead.toml"), manifest, env)
            .map_err(|e| e.to_string())
    }

    const MANIFEST: &str = "[app]\nname = \"lined\"\n\n[limits]\nrate_limit = { per_caller = \"5/s\" }\n\n[env.prod.limits]\nrate_limit = { per_caller = \"1/s\" }\n\n[store.people]\nkind = \"kv\"\nretention = \"48h\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\nauth = \"public\"\ngrants = { kv = { people = \"read\" }, outbound = [\"https://api.example.com\"] }\n\n[[accept]]\nrule = \"public-route\"\nreason = \"anyone may call it\"\n";

    #[test]
    fn t21_each_setting_has_its_line_and_an_overlay_wins_in_its_env() {
        let dev = app(MANIFEST, "dev").unwrap();
        assert_eq!(dev.lines.get("limits.rate_limit"), Some(5));
        assert_eq!(dev.lines.get("store.people.retention"), Some(12));
        assert_eq!(dev.lines.get("function.f.route"), Some(17));
        assert_eq!(dev.lines.get("function.f.grants.kv.people"), Some(19));
        // Both as written and as reports print the origin.
        assert_eq!(
            dev.lines
                .get("function.f.grants.outbound.https://api.example.com"),
            Some(19)
        );
        assert_eq!(
            dev.lines
                .get("function.f.grants.outbound.https://api.example.com:443"),
            Some(19)
        );
        assert_eq!(
            dev.lines.first(&["function.f.digest", "function.f"]),
            Some(15)
        );
        let prod = app(MANIFEST, "prod").unwrap();
        assert_eq!(prod.lines.get("limits.rate_limit"), Some(8));
    }

    #[test]
    fn t21_an_accepted_risk_needs_a_rule_name_and_a_reason() {
        let dev = app(MANIFEST, "dev").unwrap();
        let risk = &dev.accepted[0];
        assert_eq!((risk.rule.as_str(), risk.line), ("public-route", 22));
        assert!(risk.covers("public-route", "f", false) && risk.covers("public-route", "g", false));
        // Without a target it never covers a high finding.
        assert!(!risk.covers("public-route", "f", true));
        assert!(!risk.covers("no-budget", "f", false));
        let bad = MANIFEST.replace("rule = \"public-route\"", "rule = \"stale-acceptance\"");
        assert!(app(&bad, "dev").unwrap_err().contains("cannot be accepted"));
        let bad = MANIFEST.replace(
            "rule = \"public-route\"",
            "rule = \"public-route\"\ntarget = \"f`<b>\"",
        );
        assert!(app(&bad, "dev").unwrap_err().contains("`target` must name"));
        let bad = MANIFEST.replace("anyone may call it", "anyone \\u202e may call it");
        assert!(app(&bad, "dev").unwrap_err().contains("plain text"));
        let bad = MANIFEST.replace("rule = \"public-route\"", "rule = \"Public Route!\"");
        assert!(app(&bad, "dev").unwrap_err().contains("`rule` must name"));
        let bad = MANIFEST.replace("reason = \"anyone may call it\"", "reason = \" \"");
        assert!(app(&bad, "dev").unwrap_err().contains("`reason` must say"));
        let bad = MANIFEST.replace("reason = \"anyone may call it\"\n", "");
        assert!(app(&bad, "dev").is_err(), "a reason is required");
    }
}
