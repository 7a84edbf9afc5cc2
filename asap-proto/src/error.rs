//! Decode errors: what was wrong, where, and whose fault it is.

use std::fmt;

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// This side: configuration, misuse, or a request the peer rightly refused.
    Local,
    /// The peer: it misbehaved, failed, or refused for its own reasons.
    Peer,
    /// Neither could be reached: connection, timeout, dropped exchange.
    Network,
}

/// What kind of problem a [`DecodeError`] reports; maps onto the reference's
/// pydantic error `type` strings so error bodies stay familiar to Python peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The bytes are not JSON (or not UTF-8).
    Syntax,
    /// A required member is absent.
    Missing,
    /// A member the model does not define is present.
    UnknownField,
    /// A member has the wrong JSON type.
    WrongType,
    /// A member has the right type but breaks a rule (URN format, range, ...).
    InvalidValue,
    /// The document nests deeper than the decoder allows.
    TooDeep,
}

impl DecodeErrorKind {
    /// The pydantic error `type` the reference reports for this kind of problem.
    #[must_use]
    pub fn pydantic_type(self) -> &'static str {
        match self {
            Self::Syntax => "json_invalid",
            Self::Missing => "missing",
            Self::UnknownField => "extra_forbidden",
            Self::WrongType => "type_error",
            Self::InvalidValue => "value_error",
            Self::TooDeep => "recursion_loop",
        }
    }
}

/// A peer sent bytes that do not decode into the expected ASAP model.
///
/// `path` names the offending member (`payload.skill_id`, `params.envelope.sender`);
/// it is empty when the whole document is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct DecodeError {
    /// Dotted path of the offending member (`""` for the document itself).
    pub path: String,
    /// Classification of the problem.
    pub kind: DecodeErrorKind,
    /// Human-readable explanation, without the path.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl DecodeError {
    /// Builds an error for `path`.
    pub fn new(path: impl Into<String>, kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind,
            message: message.into(),
        }
    }

    /// Puts `prefix` in front of the path (`sender` becomes `envelope.sender`).
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        self.path = if self.path.is_empty() {
            prefix.to_owned()
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }

    /// The path split into segments, as pydantic's `loc` array (indices stay numbers).
    #[must_use]
    pub fn loc(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for seg in self.path.split('.').filter(|s| !s.is_empty()) {
            // "parts[2]" -> "parts", 2
            let mut rest = seg;
            if let Some(i) = rest.find('[') {
                if i > 0 {
                    out.push(serde_json::Value::from(&rest[..i]));
                }
                rest = &rest[i..];
                while let Some(stripped) = rest.strip_prefix('[') {
                    let end = stripped.find(']').unwrap_or(stripped.len());
                    let idx = &stripped[..end];
                    match idx.parse::<u64>() {
                        Ok(n) => out.push(n.into()),
                        Err(_) => out.push(idx.into()),
                    }
                    rest = stripped.get(end + 1..).unwrap_or("");
                }
            } else {
                out.push(rest.into());
            }
        }
        out
    }

    /// A pydantic-shaped `validation_errors` item: `{"type", "loc", "msg"}`.
    #[must_use]
    pub fn to_validation_item(&self) -> serde_json::Value {
        let (kind, msg) = self.pydantic_type_and_msg();
        serde_json::json!({
            "type": kind,
            "loc": self.loc(),
            "msg": msg,
        })
    }

    /// The pydantic error `type` and `msg` the reference reports for this error:
    /// `extra_forbidden` / "Extra inputs are not permitted", `string_type` /
    /// "Input should be a valid string", `dict_type`, `bool_type`, `bool_parsing`,
    /// `datetime_type`, `datetime_from_date_parsing`, ... (spec 1, 3). Errors
    /// without a pydantic counterpart keep [`DecodeErrorKind::pydantic_type`]
    /// and their own message.
    #[must_use]
    pub fn pydantic_type_and_msg(&self) -> (&'static str, String) {
        let m = self.message.as_str();
        let expected = m.split_once(", expected ").map_or("", |(_, e)| e);
        let fixed = |t: &'static str, msg: &str| (t, msg.to_owned());
        match self.kind {
            DecodeErrorKind::Missing if m.starts_with("missing field `") => {
                fixed("missing", "Field required")
            }
            DecodeErrorKind::UnknownField => {
                fixed("extra_forbidden", "Extra inputs are not permitted")
            }
            DecodeErrorKind::WrongType => {
                if expected.contains("datetime") {
                    fixed("datetime_type", "Input should be a valid datetime")
                } else if expected.starts_with("a string") || expected.starts_with("string") {
                    fixed("string_type", "Input should be a valid string")
                } else if expected.contains("map") || expected.starts_with("struct") {
                    fixed("dict_type", "Input should be a valid dictionary")
                } else if expected.starts_with("a boolean") {
                    fixed("bool_type", "Input should be a valid boolean")
                } else if expected.starts_with("a sequence") {
                    fixed("list_type", "Input should be a valid list")
                } else if expected.starts_with("i64")
                    || expected.starts_with("u64")
                    || expected.starts_with("u32")
                    || expected.starts_with("an integer")
                {
                    fixed("int_type", "Input should be a valid integer")
                } else if expected.starts_with("f64") || expected.starts_with("a number") {
                    fixed("float_type", "Input should be a valid number")
                } else {
                    (self.kind.pydantic_type(), self.message.clone())
                }
            }
            DecodeErrorKind::InvalidValue if expected.starts_with("a boolean") => fixed(
                "bool_parsing",
                "Input should be a valid boolean, unable to interpret input",
            ),
            DecodeErrorKind::InvalidValue
                if m.starts_with("input should be a valid datetime or date") =>
            {
                ("datetime_from_date_parsing", format!("I{}", &m[1..]))
            }
            _ => (self.kind.pydantic_type(), self.message.clone()),
        }
    }

    /// Converts a serde error raised while decoding from JSON text or a `Value`.
    pub(crate) fn from_serde(path: String, err: &serde_json::Error) -> Self {
        let full = err.to_string();
        // serde_json appends " at line L column C" for text input; keep it only for syntax errors.
        let (msg, has_pos) = match full.rfind(" at line ") {
            Some(i) => (&full[..i], true),
            None => (full.as_str(), false),
        };
        use serde_json::error::Category;
        let kind = match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                if msg.contains("recursion limit") {
                    DecodeErrorKind::TooDeep
                } else {
                    DecodeErrorKind::Syntax
                }
            }
            Category::Data => classify_data(msg),
        };
        let mut path = path;
        let mut message = match kind {
            DecodeErrorKind::Syntax | DecodeErrorKind::TooDeep if has_pos => full.clone(),
            _ => msg.to_owned(),
        };
        // serde reports a missing member (and, inside buffered content such as an
        // internally tagged enum, an unknown one) at the path of the enclosing
        // object, and container-level validators that blame one member can only
        // say so in their message (see `blame`): move the member into the path.
        if !matches!(kind, DecodeErrorKind::Syntax | DecodeErrorKind::TooDeep) {
            if let Some((field, rest)) = blamed_member(msg) {
                // serde_path_to_error already names an unknown key, except inside
                // buffered content; a missing or blamed member is never in the path.
                let named = kind == DecodeErrorKind::UnknownField
                    && path.rsplit('.').next().unwrap_or("") == field;
                if !named {
                    path = if path.is_empty() {
                        field.to_owned()
                    } else {
                        format!("{path}.{field}")
                    };
                }
                if let Some(rest) = rest {
                    message = rest.to_owned();
                }
            }
        }
        Self {
            path,
            kind,
            message,
        }
    }
}

/// Message of a serde custom error, raised by a container-level validator, that
/// names the member at fault: [`DecodeError`] gets `field` appended to its path
/// and `msg` as its message. `missing` selects [`DecodeErrorKind::Missing`]
/// (else [`DecodeErrorKind::InvalidValue`]).
pub(crate) fn blame(field: &str, missing: bool, msg: impl fmt::Display) -> String {
    if missing {
        format!("missing field `{field}`: {msg}")
    } else {
        format!("field `{field}`: {msg}")
    }
}

/// `(member, custom message)` named by a serde data error message:
/// "missing field `x`", "unknown field `x`, expected ...", "duplicate field `x`",
/// or the [`blame`] forms.
fn blamed_member(msg: &str) -> Option<(&str, Option<&str>)> {
    let (rest, custom_allowed) = if let Some(r) = msg.strip_prefix("missing field `") {
        (r, true)
    } else if let Some(r) = msg
        .strip_prefix("unknown field `")
        .or_else(|| msg.strip_prefix("duplicate field `"))
    {
        (r, false)
    } else if let Some(r) = msg.strip_prefix("field `") {
        (r, true)
    } else {
        return None;
    };
    let end = rest.find('`')?;
    let field = &rest[..end];
    let after = &rest[end + 1..];
    let custom = if custom_allowed {
        after.strip_prefix(": ")
    } else {
        None
    };
    if msg.starts_with("field `") && custom.is_none() {
        return None;
    }
    Some((field, custom))
}

fn classify_data(msg: &str) -> DecodeErrorKind {
    if msg.starts_with("missing field") {
        DecodeErrorKind::Missing
    } else if msg.starts_with("unknown field") {
        DecodeErrorKind::UnknownField
    } else if msg.starts_with("invalid type") {
        DecodeErrorKind::WrongType
    } else {
        DecodeErrorKind::InvalidValue
    }
}

/// Decodes any wire model from a JSON value, with a path-carrying error.
pub fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, DecodeError> {
    // Fast path without path bookkeeping; only a failure pays for a second,
    // path-tracking pass (over the same, borrowed document).
    match T::deserialize(&value) {
        Ok(v) => Ok(v),
        Err(_) => match serde_path_to_error::deserialize(&value) {
            Ok(v) => Ok(v),
            Err(e) => Err(DecodeError::from_serde(display_path(e.path()), e.inner())),
        },
    }
}

/// Decodes any wire model from a borrowed JSON object, with a path-carrying error.
pub fn from_object<T: serde::de::DeserializeOwned>(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, DecodeError> {
    match T::deserialize(object) {
        Ok(v) => Ok(v),
        Err(_) => match serde_path_to_error::deserialize(object) {
            Ok(v) => Ok(v),
            Err(e) => Err(DecodeError::from_serde(display_path(e.path()), e.inner())),
        },
    }
}

/// Decodes any wire model from JSON bytes, with a path-carrying error.
pub fn from_slice<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    // As in `from_value`: decode without path tracking first, re-run with it on error.
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = display_path(e.path());
        DecodeError::from_serde(path, e.inner())
    })?;
    de.end()
        .map_err(|e| DecodeError::from_serde(String::new(), &e))?;
    Ok(value)
}

fn display_path(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_blamed_members_are_in_the_path() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            a: u8,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            inner: Inner,
        }
        let err = from_value::<Outer>(serde_json::json!({"inner": {}})).unwrap_err();
        assert_eq!(
            (err.path.as_str(), err.kind),
            ("inner.a", DecodeErrorKind::Missing)
        );
        let err = from_value::<Outer>(serde_json::json!({})).unwrap_err();
        assert_eq!(err.path, "inner");
        let err = from_slice::<Outer>(br#"{"inner": {"a": 1, "a": 2}}"#).unwrap_err();
        assert_eq!(
            (err.path.as_str(), err.kind),
            ("inner.a", DecodeErrorKind::InvalidValue)
        );

        assert_eq!(
            blamed_member(&blame("uri", false, "bad")),
            Some(("uri", Some("bad")))
        );
        assert_eq!(
            blamed_member(&blame("correlation_id", true, "x")),
            Some(("correlation_id", Some("x")))
        );
        assert_eq!(
            blamed_member("unknown field `z`, expected `a`"),
            Some(("z", None))
        );
        assert_eq!(
            blamed_member("duplicate field `sender`"),
            Some(("sender", None))
        );
        assert_eq!(blamed_member("field `z` without a message"), None);
        assert_eq!(blamed_member("invalid type: string"), None);
    }
}
