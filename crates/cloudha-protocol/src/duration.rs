//! Human-readable durations: `"500ms"`, `"90s"`, `"8m30s"`, `"1h"`.
//!
//! Used wherever a duration is written by a person (config files, scenarios). Units are `ms`, `s`,
//! `m` and `h`; parts may be combined, largest first or not, and add up.

use std::time::Duration;

/// A duration string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {reason} (use e.g. \"500ms\", \"90s\", \"8m30s\", \"1h\")")]
pub struct DurationError {
    /// The text given.
    pub input: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a human-readable duration.
///
/// # Errors
/// [`DurationError`] naming the input and what is wrong with it.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number"));
        }
        let n: u128 = s[start..i].parse().map_err(|_| err("number too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let factor = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        total_ms = n
            .checked_mul(factor)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| err("too large"))?;
    }
    let ms = u64::try_from(total_ms).map_err(|_| err("too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Formats a duration in the same notation, shortest form (`"2m30s"`, `"0s"`).
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// Serde support for `Duration` fields written as human-readable strings.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct C { #[serde(with = "cloudha_protocol::duration::serde_str")] every: std::time::Duration }
/// let c: C = serde_json::from_str(r#"{"every":"1m30s"}"#).unwrap();
/// assert_eq!(c.every.as_secs(), 90);
/// ```
pub mod serde_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as a string such as `"90s"`.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    /// Deserializes from a string such as `"90s"`.
    ///
    /// # Errors
    /// A custom error naming the bad input.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde support for config durations: written `"60s"`, read from `"60s"`, `"8m30s"` or a bare
/// (non-negative) number of seconds, as CloudStack stores them.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct C { #[serde(with = "cloudha_protocol::duration::secs")] every: std::time::Duration }
/// let c: C = serde_json::from_str(r#"{"every":90}"#).unwrap();
/// assert_eq!(c.every.as_secs(), 90);
/// ```
pub mod secs {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `"60s"`.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    /// Reads `"60s"`, `60` or `1.5`.
    ///
    /// # Errors
    /// A message naming the bad value.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    pub(super) struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"60s\" or \"8m30s\", or a number of seconds")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse(v).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("a duration must not be negative, got {v}")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| {
                E::custom(format!(
                    "a duration must be a non-negative number of seconds, got {v}"
                ))
            })
        }
    }
}

/// Optional config durations, same forms as [`secs`]; absent values are skipped by the field
/// attribute (`skip_serializing_if = "Option::is_none"`).
pub mod opt_secs {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `"60s"`.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads like [`super::secs::deserialize`].
    ///
    /// # Errors
    /// A message naming the bad value.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(super::secs::Visitor).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (text, ms) in [
            ("500ms", 500),
            ("90s", 90_000),
            ("8m30s", 510_000),
            ("1h", 3_600_000),
            ("1h1m1s1ms", 3_661_001),
            ("30s2m", 150_000),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        assert_eq!(format(Duration::from_millis(510_000)), "8m30s");
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(1500)), "1s500ms");
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        for (text, reason) in [
            ("", "empty"),
            ("90", "missing unit"),
            ("9x", "unknown unit"),
            ("s", "expected a number"),
            ("-1s", "expected a number"),
            (
                "99999999999999999999999999999999999999999h",
                "number too large",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().reason, reason, "{text}");
        }
    }
}
