//! pydantic "lax mode" coercions the reference applies to a few fields.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// Words pydantic accepts for `true`/`false` (compared case-insensitively).
pub(crate) fn bool_from_str(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
        "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
        _ => None,
    }
}

struct LaxBool;

impl Visitor<'_> for LaxBool {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a boolean (true/false, 0/1, or \"yes\"/\"no\"/\"on\"/\"off\")")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
        if v == 0.0 {
            Ok(false)
        } else if v == 1.0 {
            Ok(true)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        bool_from_str(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

/// Deserializes a boolean with pydantic's lax coercions; `null` is rejected.
pub(crate) fn lax_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    d.deserialize_any(LaxBool)
}

struct LaxInt;

impl Visitor<'_> for LaxInt {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<i64, E> {
        Ok(i64::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| {
            E::invalid_value(
                de::Unexpected::Unsigned(v),
                &"an integer that fits in 64 bits",
            )
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9.2e18 {
            Ok(v as i64)
        } else {
            Err(E::invalid_value(
                de::Unexpected::Float(v),
                &"an integer (a float with a fractional part is not one)",
            ))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        v.trim().parse::<i64>().map_err(|_| {
            E::invalid_value(
                de::Unexpected::Str(v),
                &"an integer, or a string holding one",
            )
        })
    }
}

/// Deserializes an integer with pydantic's lax coercions (`"3"`, `3.0`, `true`).
pub(crate) fn lax_int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(LaxInt)
}

/// Optional lax integer: `null` → `None`.
pub(crate) fn lax_opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            lax_int(d).map(Some)
        }
    }
    d.deserialize_option(V)
}
