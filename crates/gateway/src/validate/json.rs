//! Strict JSON (T10): a body that says it is JSON is parsed once, here,
//! with limits on depth, number of values and number magnitude, and with
//! duplicate keys refused (compared case-folded, as Go reads them), before
//! any schema runs. Two parsers that read
//! `{"role":"user","role":"admin"}` differently (first wins, last wins) are
//! a classic parser differential; so are integers past 2^53, which
//! JavaScript and many JSON libraries silently round (RFC 7493, I-JSON).

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::Rule;

/// Deepest nesting of arrays and objects.
pub const MAX_DEPTH: usize = 32;
/// Most values (scalars, arrays and objects) in one body.
pub const MAX_VALUES: usize = 10_000;
/// Largest magnitude of any number: 2^53 - 1, the last integer every JSON
/// implementation represents exactly.
pub const MAX_NUMBER: u64 = (1 << 53) - 1;

struct Budget {
    depth: Cell<usize>,
    values: Cell<usize>,
    /// Which limit stopped the parse, when one did.
    broken: Cell<Option<Rule>>,
}

impl Budget {
    fn refuse<E: de::Error>(&self, rule: Rule) -> E {
        self.broken.set(Some(rule));
        E::custom(rule.as_str())
    }

    /// Add one to `counter`; past `limit`, refuse with `rule`.
    fn bump<E: de::Error>(&self, counter: &Cell<usize>, limit: usize, rule: Rule) -> Result<(), E> {
        let n = counter.get() + 1;
        counter.set(n);
        if n > limit {
            return Err(self.refuse(rule));
        }
        Ok(())
    }

    fn count<E: de::Error>(&self) -> Result<(), E> {
        self.bump(&self.values, MAX_VALUES, Rule::TooManyValues)
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        self.bump(&self.depth, MAX_DEPTH, Rule::Depth)
    }

    fn leave(&self) {
        self.depth.set(self.depth.get().saturating_sub(1));
    }
}

/// Parse `bytes` as one strict JSON value.
pub fn parse(bytes: &[u8]) -> Result<Value, Rule> {
    let budget = Budget {
        depth: Cell::new(0),
        values: Cell::new(0),
        broken: Cell::new(None),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = Node(&budget)
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    parsed.map_err(|e| match budget.broken.get() {
        Some(rule) => rule,
        // serde_json's own words for a number past f64's range.
        None if e.to_string().starts_with("number out of range") => Rule::NumberMagnitude,
        None => Rule::JsonSyntax,
    })
}

/// One JSON value, built into a `serde_json::Value` under the budget.
struct Node<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.count()?;
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.count()?;
        Ok(Value::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.count()?;
        if v > MAX_NUMBER {
            return Err(self.0.refuse(Rule::NumberMagnitude));
        }
        Ok(Value::Number(v.into()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.count()?;
        if v.unsigned_abs() > MAX_NUMBER {
            return Err(self.0.refuse(Rule::NumberMagnitude));
        }
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.count()?;
        match Number::from_f64(v) {
            Some(n) if v.abs() <= MAX_NUMBER as f64 => Ok(Value::Number(n)),
            _ => Err(self.0.refuse(Rule::NumberMagnitude)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.count()?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.count()?;
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.count()?;
        self.0.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Node(self.0))? {
            items.push(item);
        }
        self.0.leave();
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        self.0.count()?;
        self.0.enter()?;
        let mut map = Map::new();
        let mut folded_keys = HashSet::new();
        // Keys are compared decoded: `"a"` and `"\u0061"` are the same key.
        while let Some(key) = access.next_key::<String>()? {
            // A NUL ends a key for C and many guest parsers: `"a\u0000b"`
            // would be a second `"a"` to them (T10).
            if key.contains('\0') {
                return Err(self.0.refuse(Rule::ControlCharacter));
            }
            // Go's encoding/json matches struct fields case-insensitively
            // (Unicode simple folding, `\u212a` is `k`, `\u017f` is `s`)
            // and the last key wins: keys equal under folding are one key
            // to a Go guest, two to the gateway (T10).
            if !folded_keys.insert(fold(&key)) {
                return Err(self.0.refuse(Rule::DuplicateKey));
            }
            let value = access.next_value_seed(Node(self.0))?;
            map.insert(key, value);
        }
        self.0.leave();
        Ok(Value::Object(map))
    }
}

/// `key` case-folded: each character lowercased, uppercased and lowercased
/// again, which maps `ſ` (U+017F) to `s`, the Kelvin sign (U+212A) to `k`
/// and both `ß` and `ẞ` (U+1E9E) to `ss`. Coarser than Go's simple folding
/// where they differ (`ß` and `ss` are one key here): such keys are
/// refused, never read two ways (T10).
fn fold(key: &str) -> String {
    key.chars()
        .flat_map(char::to_lowercase)
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_json() {
        let v = parse(br#"{"a":[1,2.5,-3,true,null,"x"],"b":{"c":"d"}}"#).unwrap();
        assert_eq!(v["b"]["c"], "d");
        // Keys that differ other than by case are two keys.
        assert!(parse(br#"{"ab":1,"a":2,"b":3,"ba":4,"k":5,"K1":6}"#).is_ok());
        assert!(parse(b"9007199254740991").is_ok());
        assert!(parse(b"-9007199254740991").is_ok());
        assert!(
            parse(
                &[b'['; MAX_DEPTH]
                    .iter()
                    .chain(&[b']'; MAX_DEPTH])
                    .copied()
                    .collect::<Vec<_>>()
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_each_trap_by_name() {
        let deep: Vec<u8> = [b'['; MAX_DEPTH + 1]
            .iter()
            .chain(&[b']'; MAX_DEPTH + 1])
            .copied()
            .collect();
        let very_deep = "[".repeat(100_000);
        let many = format!("[{}0]", "0,".repeat(MAX_VALUES));
        for (body, rule) in [
            (&br#"{"a":1,"a":2}"#[..], Rule::DuplicateKey),
            (br#"{"a":1,"\u0061":2}"#, Rule::DuplicateKey),
            (br#"{"x":{"a":1,"a":1}}"#, Rule::DuplicateKey),
            // Go matches struct fields case-insensitively with simple
            // folding, the last key winning: one key to a Go guest (T10).
            (br#"{"admin":false,"Admin":true}"#, Rule::DuplicateKey),
            (br#"{"k":1,"\u212a":2}"#, Rule::DuplicateKey),
            (br#"{"ss":1,"\u017fs":2}"#, Rule::DuplicateKey),
            (br#"{"\u00df":1,"\u1e9e":2}"#, Rule::DuplicateKey),
            (br#"{"x":{"ROLE":1,"role":2}}"#, Rule::DuplicateKey),
            (br#"{"a\u0000b":1,"a":2}"#, Rule::ControlCharacter),
            (b"9007199254740992", Rule::NumberMagnitude),
            (b"-9007199254740992", Rule::NumberMagnitude),
            (b"1e300", Rule::NumberMagnitude),
            (b"1e400", Rule::NumberMagnitude),
            (b"123456789012345678901234567890", Rule::NumberMagnitude),
            (&deep, Rule::Depth),
            (very_deep.as_bytes(), Rule::Depth),
            (many.as_bytes(), Rule::TooManyValues),
            (b"", Rule::JsonSyntax),
            (b"{", Rule::JsonSyntax),
            (b"{} {}", Rule::JsonSyntax),
            (b"\xef\xbb\xbf{}", Rule::JsonSyntax),
            (b"{'a':1}", Rule::JsonSyntax),
            (b"[1,]", Rule::JsonSyntax),
            (b"NaN", Rule::JsonSyntax),
            (br#""\ud800""#, Rule::JsonSyntax),
            (b"\"\xc0\xae\"", Rule::JsonSyntax),
            (b"\"a\x00b\"", Rule::JsonSyntax),
        ] {
            assert_eq!(parse(body), Err(rule), "{}", String::from_utf8_lossy(body));
        }
    }
}
