//! `[[accept]]`: a finding of the threat model the app's owner has weighed
//! and accepted (T21). It stays in every report, marked `accepted` with its
//! reason, and no longer fails `threat-model --fail-on`.
//!
//! ```toml
//! [[accept]]
//! rule = "public-route"
//! target = "hello-rust"
//! reason = "a greeting for anyone; it holds and reaches nothing"
//! ```

use toml::Spanned;

use crate::problem::{Collector, line_and_column};
use crate::raw::RawAccept;

/// Longest reason kept: a sentence or two, not a document.
const MAX_REASON: usize = 500;

/// One accepted risk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRisk {
    /// The finding's rule, like `public-route`.
    pub rule: String,
    /// The route's function, store or origin it applies to; every finding
    /// of the rule when `None`.
    pub target: Option<String>,
    pub reason: String,
    /// 1-based line of its `rule` in the manifest.
    pub line: usize,
}

impl AcceptedRisk {
    /// Whether it accepts the finding of `rule` about `target`.
    pub fn covers(&self, rule: &str, target: &str) -> bool {
        self.rule == rule && self.target.as_deref().is_none_or(|t| t == target)
    }
}

fn valid_rule(rule: &str) -> bool {
    !rule.is_empty()
        && rule.len() <= 64
        && rule
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(crate) fn resolve(out: &mut Collector<'_>, raw: &[Spanned<RawAccept>]) -> Vec<AcceptedRisk> {
    let mut accepted = Vec::new();
    for spanned in raw {
        let a = spanned.get_ref();
        let rule = a.rule.get_ref();
        if !valid_rule(rule) {
            out.at(
                Some(a.rule.span()),
                "`[[accept]]` `rule` must name a finding's rule, like \"public-route\" \
                 (lowercase letters, digits and `-`; `bulkhead threat-model` prints each finding's rule)",
            );
            continue;
        }
        let reason = a.reason.get_ref().trim();
        if reason.is_empty() || reason.len() > MAX_REASON {
            out.at(
                Some(a.reason.span()),
                format!(
                    "`[[accept]]` `reason` must say in at most {MAX_REASON} bytes why the risk is acceptable"
                ),
            );
            continue;
        }
        accepted.push(AcceptedRisk {
            rule: rule.clone(),
            target: a.target.as_ref().map(|t| t.get_ref().clone()),
            reason: reason.to_string(),
            line: line_and_column(out.source(), a.rule.span().start).0,
        });
    }
    accepted
}
