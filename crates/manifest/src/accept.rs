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

/// The rule that guards acceptances themselves: accepting it would let a
/// stale `[[accept]]` cover a new hole unseen.
const STALE_ACCEPTANCE: &str = "stale-acceptance";

/// Text that reaches reports and terminals: nothing that could make a
/// reason read as something else.
fn printable(text: &str) -> bool {
    !text.chars().any(crate::text::is_hidden)
}

/// A target names a function, store, origin or the app: no spaces, no
/// backticks, nothing a report would have to quote.
fn valid_target(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= 256
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/*{}@+-[]".contains(c))
}

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
    /// Whether it accepts the finding of `rule` about `target`. Without a
    /// `target` it covers the rule's findings except `high` ones: a high
    /// finding is accepted only by name, so a blanket acceptance written
    /// for harmless cases never covers a new hole (T21).
    pub fn covers(&self, rule: &str, target: &str, high: bool) -> bool {
        self.rule == rule
            && match self.target.as_deref() {
                Some(t) => t == target,
                None => !high,
            }
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
        if rule == STALE_ACCEPTANCE {
            out.at(
                Some(a.rule.span()),
                "`stale-acceptance` cannot be accepted: remove or fix the `[[accept]]` entries it names",
            );
            continue;
        }
        if let Some(target) = &a.target
            && !valid_target(target.get_ref())
        {
            out.at(
                Some(target.span()),
                "`[[accept]]` `target` must name a function, store or origin as the report prints it \
                 (letters, digits and `._:/*{}@+-[]`, at most 256 bytes)",
            );
            continue;
        }
        let reason = a.reason.get_ref().trim();
        if !printable(reason) {
            out.at(
                Some(a.reason.span()),
                "`[[accept]]` `reason` must be plain text: no control characters or invisible formatting",
            );
            continue;
        }
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
