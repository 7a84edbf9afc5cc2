//! Parts: the content units messages and artifacts refer to by id.

use serde::{Deserialize, Serialize};

use super::JsonObject;

/// A content part, discriminated by its `type` member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Part {
    /// Plain text.
    Text(TextPart),
    /// Structured data.
    Data(DataPart),
    /// A file by URI (optionally inline, base64).
    File(FilePart),
    /// An MCP resource.
    Resource(ResourcePart),
    /// A `{{var}}` template with its variables.
    Template(TemplatePart),
}

/// `{"type":"text"}` part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextPart {
    /// The text.
    pub content: String,
}

/// `{"type":"data"}` part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPart {
    /// The data.
    pub data: JsonObject,
    /// Schema of `data`.
    #[serde(default)]
    pub schema_uri: Option<String>,
}

/// `{"type":"file"}` part: no `file://` URIs, no `..`, a valid MIME type, strict base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "FilePartWire")]
pub struct FilePart {
    /// Where the file lives (`https://`, `data:`, `asap://`, ...).
    pub uri: String,
    /// MIME type (`type/subtype`, no parameters).
    pub mime_type: String,
    /// The content, standard base64 with padding.
    pub inline_data: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePartWire {
    uri: String,
    mime_type: String,
    #[serde(default)]
    inline_data: Option<String>,
}

impl TryFrom<FilePartWire> for FilePart {
    type Error = String;
    fn try_from(w: FilePartWire) -> Result<Self, String> {
        use crate::error::blame;
        check_file_uri(&w.uri).map_err(|e| blame("uri", false, e))?;
        check_mime_type(&w.mime_type).map_err(|e| blame("mime_type", false, e))?;
        if let Some(data) = &w.inline_data {
            check_base64(data).map_err(|e| blame("inline_data", false, e))?;
        }
        Ok(Self {
            uri: w.uri,
            mime_type: w.mime_type,
            inline_data: w.inline_data,
        })
    }
}

/// The reference's URI rule for file parts.
pub fn check_file_uri(uri: &str) -> Result<(), String> {
    if uri.contains("..") {
        return Err(format!("URI must not contain path traversal (..): '{uri}'"));
    }
    if uri.trim().to_ascii_lowercase().starts_with("file://") {
        return Err("file:// URIs are not allowed for security (path traversal risk)".into());
    }
    Ok(())
}

/// `type/subtype` with `[a-z0-9-]` type and `[a-z0-9.+-]` subtype, case-insensitive.
pub fn check_mime_type(m: &str) -> Result<(), String> {
    let lower = m.to_ascii_lowercase();
    let ok = lower.split_once('/').is_some_and(|(t, s)| {
        !t.is_empty()
            && !s.is_empty()
            && t.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && s.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'+' | b'-')
            })
    });
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid MIME type format: {m}"))
    }
}

fn check_base64(data: &str) -> Result<(), String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    // Python's b64decode(validate=True): standard alphabet, padding required, lenient trailing bits.
    const STRICT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    );
    STRICT
        .decode(data)
        .map(|_| ())
        .map_err(|e| format!("inline_data must be valid base64: {e}"))
}

/// `{"type":"resource"}` part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcePart {
    /// Resource URI.
    pub resource_uri: String,
}

/// `{"type":"template"}` part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatePart {
    /// Template text with `{{var}}` placeholders.
    pub template: String,
    /// Variables.
    pub variables: JsonObject,
}
