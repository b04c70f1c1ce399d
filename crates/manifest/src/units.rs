//! Human-readable quantities in the manifest: durations (`2s`, `15m`) and
//! sizes (`64MiB`, `8KiB`). Both refuse zero and give the valid forms in
//! their error, so a typo is fixed from the message alone.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de};

/// A positive duration written like `250ms`, `2s`, `15m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed = humantime::parse_duration(text.trim()).map_err(|_| {
            format!("`{text}` is not a duration; write a number and a unit, like `250ms`, `2s`, `15m` or `1h`")
        })?;
        if parsed.is_zero() {
            return Err("a duration of zero is not allowed; give a positive one like `2s`".into());
        }
        Ok(Self(parsed))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A positive size in bytes written like `512B`, `8KiB`, `64MiB`, `1GiB`
/// (binary units) or `10kB`, `5MB` (decimal units). A bare integer is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size as `usize`, saturating on (theoretical) 32-bit hosts.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "`{text}` is not a size; write a number and a unit, like `512B`, `8KiB`, `64MiB` or `1GiB`"
            )
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let unit = unit.trim();
        let multiplier = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, m)| *m)
                .ok_or_else(invalid)?
        };
        let bytes = number
            .checked_mul(multiplier)
            .ok_or_else(|| format!("`{text}` is too large"))?;
        if bytes == 0 {
            return Err("a size of zero is not allowed; give a positive one like `8KiB`".into());
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0.is_multiple_of(m) {
                return write!(f, "{}{name}", self.0 / m);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Integer(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Integer(0) => Err(de::Error::custom("a size of zero is not allowed")),
            Raw::Integer(n) => Ok(Self(n)),
            Raw::Text(text) => text.parse().map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_refuse_nonsense() {
        assert_eq!("2s".parse::<Duration>().unwrap().get().as_secs(), 2);
        assert_eq!("15m".parse::<Duration>().unwrap().get().as_secs(), 900);
        assert_eq!("250ms".parse::<Duration>().unwrap().get().as_millis(), 250);
        assert!("0s".parse::<Duration>().is_err());
        assert!("soon".parse::<Duration>().unwrap_err().contains("`2s`"));
    }

    #[test]
    fn sizes_parse_and_refuse_nonsense() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().bytes(), 64 << 20);
        assert_eq!("8KiB".parse::<ByteSize>().unwrap().bytes(), 8192);
        assert_eq!("10kB".parse::<ByteSize>().unwrap().bytes(), 10_000);
        assert_eq!("512".parse::<ByteSize>().unwrap().bytes(), 512);
        assert!("0B".parse::<ByteSize>().is_err());
        assert!("64 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999999999999GiB".parse::<ByteSize>().is_err());
        assert!("-1MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(6).to_string(), "6MiB");
    }
}
