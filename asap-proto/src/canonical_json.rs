//! Canonical JSON text: the bytes Python's `json.dumps` writes (`", "`/`": "`
//! separators, `\uXXXX` escapes, optionally sorted keys). Used wherever bytes
//! must match the reference: the manifest ETag input, the client's request
//! bodies, stored snapshot data, WebSocket frames.

use std::fmt::Write as _;

use serde_json::Value;

/// Options for [`to_string`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonStyle {
    /// Sort object keys (`sort_keys=True`).
    pub sort_keys: bool,
    /// Compact separators `,`/`:` instead of `", "`/`": "`.
    pub compact: bool,
}

/// Encodes `v` as Python's `json.dumps(v, ensure_ascii=True, ...)` would.
#[must_use]
pub fn to_string(v: &Value, style: JsonStyle) -> String {
    let mut out = String::new();
    write_value(&mut out, v, style);
    out
}

fn write_value(out: &mut String, v: &Value, style: JsonStyle) {
    let (item_sep, key_sep) = if style.compact {
        (",", ":")
    } else {
        (", ", ": ")
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_value(out, x, style);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('{');
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_str(out, k);
                out.push_str(key_sep);
                write_value(out, x, style);
            }
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if n.is_f64() {
        let f = n.as_f64().unwrap_or(0.0);
        // Python's float repr: exponent form below 1e-4 and from 1e16 on, "e+XX"/"e-XX".
        let abs = f.abs();
        if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
            let s = format!("{f:e}");
            let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
            let exp: i32 = exp.parse().unwrap_or(0);
            let _ = write!(
                out,
                "{mant}e{}{:02}",
                if exp < 0 { '-' } else { '+' },
                exp.abs()
            );
        } else {
            let s = n.to_string();
            out.push_str(&s);
        }
    } else {
        let _ = write!(out, "{n}");
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_style() {
        let v = serde_json::json!({"b": 1, "a": ["é", 1.5, null, 1e20]});
        assert_eq!(
            to_string(&v, JsonStyle::default()),
            r#"{"b": 1, "a": ["\u00e9", 1.5, null, 1e+20]}"#
        );
        assert_eq!(
            to_string(
                &v,
                JsonStyle {
                    sort_keys: true,
                    compact: true
                }
            ),
            r#"{"a":["\u00e9",1.5,null,1e+20],"b":1}"#
        );
    }
}
