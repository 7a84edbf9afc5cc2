//! Well-known endpoints: the manifest (strong ETag, 304) and the health document.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use ring::digest;

use crate::canonical_json::{self, JsonStyle};
use crate::discovery::{HealthLoad, HealthStatus};
use crate::model::Manifest;

/// `Cache-Control` of the manifest, as the reference serves it.
pub const MANIFEST_CACHE_CONTROL: &str = "public, max-age=300";

/// A manifest prepared for serving: body and ETag computed once.
#[derive(Debug, Clone)]
pub struct ManifestDocument {
    manifest: Manifest,
    body: Vec<u8>,
    etag: String,
}

impl ManifestDocument {
    /// Serialises `manifest` (compact) and computes the reference's ETag:
    /// quoted SHA-256 hex of Python `json.dumps(manifest, sort_keys=True)`.
    #[must_use]
    pub fn new(manifest: Manifest) -> Self {
        let value = serde_json::to_value(&manifest).unwrap_or_default();
        let canonical = canonical_json::to_string(
            &value,
            JsonStyle {
                sort_keys: true,
                compact: false,
            },
        );
        let hash = digest::digest(&digest::SHA256, canonical.as_bytes());
        let mut hex = String::with_capacity(66);
        hex.push('"');
        for b in hash.as_ref() {
            hex.push_str(&format!("{b:02x}"));
        }
        hex.push('"');
        let body = serde_json::to_vec(&manifest).unwrap_or_default();
        Self {
            manifest,
            body,
            etag: hex,
        }
    }

    /// The manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The quoted strong ETag.
    #[must_use]
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// The compact JSON body.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether an `If-None-Match` value matches (RFC 9110 13.1.2): `*`, or a
    /// comma list compared weakly (`W/"x"` matches `"x"`).
    #[must_use]
    pub fn matches(&self, if_none_match: &str) -> bool {
        let ours = self.etag.as_str();
        if_none_match.trim() == "*"
            || entity_tags(if_none_match).any(|tag| tag.strip_prefix("W/").unwrap_or(tag) == ours)
    }

    /// The GET response: 200 with body, or 304 when `If-None-Match` matches.
    #[must_use]
    pub fn respond(&self, request_headers: &HeaderMap) -> Response<Vec<u8>> {
        let hit = request_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| self.matches(v));
        let etag =
            HeaderValue::from_str(&self.etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
        let mut b = Response::builder()
            .header(header::ETAG, etag)
            .header(header::CACHE_CONTROL, MANIFEST_CACHE_CONTROL);
        if hit {
            b = b.status(StatusCode::NOT_MODIFIED);
            return b.body(Vec::new()).unwrap_or_default();
        }
        b.status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(self.body.clone())
            .unwrap_or_default()
    }
}

/// The entity tags of a comma list; commas inside quotes do not split.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let start = usize::from(rest.starts_with("W/")) * 2;
        let end = if rest[start..].starts_with('"') {
            rest[start + 1..]
                .find('"')
                .map_or(rest.len(), |i| start + i + 2)
        } else {
            rest.find(',').unwrap_or(rest.len())
        };
        let (tag, tail) = rest.split_at(end);
        rest = tail;
        Some(tag.trim())
    })
}

/// What the application says about itself when health is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthReport {
    /// `false` makes the endpoint answer 503 `"unhealthy"`.
    pub unhealthy: bool,
    /// Optional load figures (`null` when absent).
    pub load: Option<HealthLoad>,
}

/// The health document of spec 12.2: 200 `healthy`, or 503 `unhealthy`.
#[must_use]
pub fn health_response(
    manifest: &Manifest,
    uptime: std::time::Duration,
    report: HealthReport,
) -> Response<Vec<u8>> {
    let doc = HealthStatus::for_manifest(manifest, !report.unhealthy, uptime, report.load);
    Response::builder()
        .status(if report.unhealthy {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        })
        .header(header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&doc).unwrap_or_default())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AgentUrn;

    #[test]
    fn if_none_match_is_weak_and_understands_star_and_lists() {
        let m = Manifest::new(
            AgentUrn::new("urn:asap:agent:x").unwrap(),
            "x",
            "1.0.0",
            "x",
            "http://127.0.0.1/asap",
        );
        let doc = ManifestDocument::new(m);
        let etag = doc.etag().to_owned();
        for (value, hit) in [
            (etag.clone(), true),
            (format!("W/{etag}"), true),
            ("*".to_owned(), true),
            (format!("\"a\", W/\"b\",{etag}"), true),
            (format!("\"with,comma\", {etag}"), true),
            ("\"other\"".to_owned(), false),
            ("W/\"other\", \"x\"".to_owned(), false),
            (etag.trim_matches('"').to_owned(), false),
            (String::new(), false),
            (",,,".to_owned(), false),
        ] {
            assert_eq!(doc.matches(&value), hit, "{value}");
        }
    }
}
