//! What calls cost and how much may be spent (T04, Denial of Wallet):
//! `[pricing]` turns meters into money, `budget` caps the spend per day.

use serde::Deserialize;
use toml::Spanned;

use crate::problem::Collector;

/// `[pricing]`: prices as `"0.20 USD"`; every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPricing {
    pub per_million_requests: Option<Spanned<String>>,
    pub per_gb_second: Option<Spanned<String>>,
    pub per_gb_egress: Option<Spanned<String>>,
}

/// `budget = { per_day = "5 USD", per_caller_per_day = "0.10 USD" }`, or in
/// native units.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudget {
    pub per_day: Option<Spanned<String>>,
    pub per_caller_per_day: Option<Spanned<String>>,
    pub requests_per_day: Option<Spanned<u64>>,
    pub per_caller_requests_per_day: Option<Spanned<u64>>,
    pub gb_seconds_per_day: Option<Spanned<f64>>,
    pub per_caller_gb_seconds_per_day: Option<Spanned<f64>>,
    /// Each caller's share of every daily limit that has no per-caller
    /// value of its own, from 0 (exclusive) to 1 (T04).
    pub per_caller_share: Option<Spanned<f64>>,
}

/// List prices; the defaults are a mainstream FaaS's public x86 prices.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    /// ISO 4217 code every price and money budget is written in.
    pub currency: String,
    pub per_million_requests: f64,
    pub per_gb_second: f64,
    /// Per GB (10^9 bytes) sent out: responses and outbound traffic.
    pub per_gb_egress: f64,
}

impl Default for Pricing {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            per_million_requests: 0.20,
            per_gb_second: 0.000_016_666_7,
            per_gb_egress: 0.09,
        }
    }
}

impl Pricing {
    /// The price of some usage, in `currency`.
    pub fn cost(&self, requests: u64, gb_seconds: f64, egress_bytes: u64) -> f64 {
        requests as f64 * self.per_million_requests / 1e6
            + gb_seconds * self.per_gb_second
            + egress_bytes as f64 / 1e9 * self.per_gb_egress
    }
}

/// Daily limits for one scope (the app or one function); each `None` is
/// unlimited. `per_caller_*` apply to each caller separately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Budget {
    pub total: Limits,
    pub per_caller: Limits,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Money, in the pricing currency.
    pub money: Option<f64>,
    pub requests: Option<u64>,
    pub gb_seconds: Option<f64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.money.is_none() && self.requests.is_none() && self.gb_seconds.is_none()
    }
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.total.is_unlimited() && self.per_caller.is_unlimited()
    }
}

pub mod defaults {
    /// App-wide spend per day unless `[limits] budget` says otherwise: a
    /// flood cannot run up more than this before it is refused (T04).
    pub const APP_PER_DAY: f64 = 10.0;
    /// Each caller may use at most this share of each app-wide daily limit
    /// that has no per-caller value (T04): one anonymous caller spending
    /// the whole app budget would be a denial of service for everyone
    /// until midnight, so it takes at least ten callers to do that.
    pub const APP_PER_CALLER_SHARE: f64 = 0.10;
}

impl Budget {
    /// Give each caller `share` of every total limit that has no per-caller
    /// limit of its own (at least one request a day).
    pub fn share_per_caller(&mut self, share: f64) {
        let per_caller = &mut self.per_caller;
        let total = &self.total;
        if per_caller.money.is_none() {
            per_caller.money = total.money.map(|m| round6(m * share));
        }
        if per_caller.gb_seconds.is_none() {
            per_caller.gb_seconds = total.gb_seconds.map(|g| round6(g * share));
        }
        if per_caller.requests.is_none() {
            per_caller.requests = total
                .requests
                .map(|r| ((r as f64 * share).floor() as u64).max(1));
        }
    }
}

/// To a millionth: a share of 3 USD is 0.3 USD, not 0.30000000000000004.
fn round6(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

/// `"0.20 USD"` -> (0.20, "USD").
fn parse_money(text: &str) -> Result<(f64, &str), String> {
    let invalid =
        || format!("`{text}` is not an amount; write a number and a currency code, like `5 USD`");
    let (amount, currency) = text.trim().split_once(' ').ok_or_else(invalid)?;
    let amount: f64 = amount.trim().parse().map_err(|_| invalid())?;
    let currency = currency.trim();
    let is_code = currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase());
    if !amount.is_finite() || amount < 0.0 || !is_code {
        return Err(invalid());
    }
    Ok((amount, currency))
}

pub(crate) fn resolve_pricing(out: &mut Collector<'_>, raw: &RawPricing) -> Pricing {
    let mut pricing = Pricing::default();
    let mut currency: Option<String> = None;
    for (key, value, slot) in [
        (
            "per_million_requests",
            &raw.per_million_requests,
            &mut pricing.per_million_requests,
        ),
        (
            "per_gb_second",
            &raw.per_gb_second,
            &mut pricing.per_gb_second,
        ),
        (
            "per_gb_egress",
            &raw.per_gb_egress,
            &mut pricing.per_gb_egress,
        ),
    ] {
        let Some(value) = value else { continue };
        match parse_money(value.get_ref()) {
            Ok((amount, code)) => {
                if currency.as_deref().is_some_and(|c| c != code) {
                    out.at(
                        Some(value.span()),
                        format!("`[pricing] {key}` is in {code}, another price is not; write every price in one currency"),
                    );
                }
                currency = Some(code.to_string());
                *slot = amount;
            }
            Err(e) => out.at(Some(value.span()), format!("`[pricing] {key}`: {e}")),
        }
    }
    if let Some(code) = currency {
        pricing.currency = code;
    }
    pricing
}

/// `default_share` is each caller's share of the totals unless
/// `per_caller_share` says otherwise; `None`: no per-caller default.
pub(crate) fn resolve_budget(
    out: &mut Collector<'_>,
    what: &str,
    raw: &RawBudget,
    pricing: &Pricing,
    default_share: Option<f64>,
) -> Budget {
    let mut money = |key: &str, value: &Option<Spanned<String>>| -> Option<f64> {
        let value = value.as_ref()?;
        match parse_money(value.get_ref()) {
            Ok((amount, code)) if code == pricing.currency => Some(amount),
            Ok((_, code)) => {
                out.at(
                    Some(value.span()),
                    format!(
                        "{what}: `budget.{key}` is in {code} but `[pricing]` is in {}; use one currency",
                        pricing.currency
                    ),
                );
                None
            }
            Err(e) => {
                out.at(Some(value.span()), format!("{what}: `budget.{key}`: {e}"));
                None
            }
        }
    };
    let total_money = money("per_day", &raw.per_day);
    let caller_money = money("per_caller_per_day", &raw.per_caller_per_day);
    let mut gb = |key: &str, value: &Option<Spanned<f64>>| -> Option<f64> {
        let value = value.as_ref()?;
        let amount = *value.get_ref();
        if amount.is_finite() && amount >= 0.0 {
            Some(amount)
        } else {
            out.at(
                Some(value.span()),
                format!("{what}: `budget.{key}` must be a number of GB-seconds, 0 or more"),
            );
            None
        }
    };
    let total_gb = gb("gb_seconds_per_day", &raw.gb_seconds_per_day);
    let caller_gb = gb(
        "per_caller_gb_seconds_per_day",
        &raw.per_caller_gb_seconds_per_day,
    );
    let share = match &raw.per_caller_share {
        Some(v) => {
            let share = *v.get_ref();
            if share.is_finite() && share > 0.0 && share <= 1.0 {
                Some(share)
            } else {
                out.at(
                    Some(v.span()),
                    format!("{what}: `budget.per_caller_share` is a share of each daily limit: a number above 0 and at most 1, like 0.1"),
                );
                default_share
            }
        }
        None => default_share,
    };
    let mut budget = Budget {
        total: Limits {
            money: total_money,
            requests: raw.requests_per_day.as_ref().map(|v| *v.get_ref()),
            gb_seconds: total_gb,
        },
        per_caller: Limits {
            money: caller_money,
            requests: raw
                .per_caller_requests_per_day
                .as_ref()
                .map(|v| *v.get_ref()),
            gb_seconds: caller_gb,
        },
    };
    if let Some(share) = share {
        budget.share_per_caller(share);
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_and_refuses_nonsense() {
        assert_eq!(parse_money("5 USD").unwrap(), (5.0, "USD"));
        assert_eq!(parse_money("0.10 EUR").unwrap(), (0.10, "EUR"));
        assert!(parse_money("5").is_err());
        assert!(parse_money("5 dollars").is_err());
        assert!(parse_money("-1 USD").is_err());
        assert!(parse_money("NaN USD").is_err());
    }

    fn app(extra: &str) -> Result<crate::App, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.wasm"), b"").unwrap();
        let manifest = format!(
            "[app]\nname = \"t\"\n\n[[function]]\nname = \"f\"\ncomponent = \"f.wasm\"\nroute = \"/f\"\nauth = \"public\"\n{extra}"
        );
        crate::parse(
            dir.path(),
            &dir.path().join("bulkhead.toml"),
            &manifest,
            "dev",
        )
        .map_err(|e| e.to_string())
    }

    /// T04: each caller gets a tenth of every app-wide limit that has no
    /// per-caller value; a function's budget has no default share.
    #[test]
    fn callers_get_a_share_of_the_app_budget_t04() {
        let default = app("").unwrap().budget;
        assert_eq!(default.total.money, Some(10.0));
        assert_eq!(default.per_caller.money, Some(1.0));

        let set = app(
            "[limits]\nbudget = { per_day = \"3 USD\", requests_per_day = 15, per_caller_gb_seconds_per_day = 2.0, gb_seconds_per_day = 100.0 }\n",
        )
        .unwrap()
        .budget;
        assert_eq!(set.per_caller.money, Some(0.3));
        assert_eq!(set.per_caller.requests, Some(1));
        assert_eq!(set.per_caller.gb_seconds, Some(2.0));

        let own = app("[limits]\nbudget = { per_day = \"5 USD\", per_caller_share = 1 }\n")
            .unwrap()
            .budget;
        assert_eq!(own.per_caller.money, Some(5.0));
        for bad in ["0", "1.5", "-0.1"] {
            let err = app(&format!(
                "[limits]\nbudget = {{ per_day = \"5 USD\", per_caller_share = {bad} }}\n"
            ))
            .unwrap_err();
            assert!(err.contains("per_caller_share"), "{err}");
        }

        let function = app("budget = { per_day = \"5 USD\" }\n").unwrap();
        assert_eq!(function.functions[0].budget.per_caller.money, None);
    }

    #[test]
    fn default_prices_cost_what_the_list_says() {
        let pricing = Pricing::default();
        let million = pricing.cost(1_000_000, 0.0, 0);
        assert!((million - 0.20).abs() < 1e-9);
        let gb_s = pricing.cost(0, 1.0, 0);
        assert!((gb_s - 0.000_016_666_7).abs() < 1e-12);
    }
}
