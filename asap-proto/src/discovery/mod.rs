//! Discovery: finding an agent's manifest, checking its health, and the Lite
//! Registry — caches and validation, without I/O.
//!
//! * [`ManifestCache`]: manifests keyed by base URL; `Cache-Control: max-age`,
//!   the manifest's `ttl_seconds` (the smaller wins), `ETag` revalidation with
//!   `If-None-Match` (304 refreshes without a body), bounded LRU size.
//! * [`HealthCache`] / [`interpret_health_response`]: a liveness verdict;
//!   a 503 is an [`HealthVerdict::Unhealthy`] answer, not an error.
//! * [`validate_manifest_bytes`], [`check_version_compatibility`],
//!   [`require_skill`]: the reference's validation helpers, same messages.
//! * [`LiteRegistry`], [`RegistryCache`] (15 min), [`generate_registry_entry`].
//!
//! Every cache has the same driver loop; the adapter owns the HTTP client
//! and the clock:
//!
//! ```text
//! let manifest = match cache.lookup(base_url, clock.now())? {
//!     Lookup::Fresh(m) => m,
//!     Lookup::Fetch(req) => match http.execute(req) {          // GET .../manifest.json (+ If-None-Match)
//!         Ok(resp) => cache.handle_response(base_url, &resp, clock.now())?,   // 200 / 304 / error
//!         Err(e) => { cache.invalidate(base_url); return Err(e.into()) }
//!     },
//! };
//! check_version_compatibility(&manifest, None)?;                // optional, as in the reference
//! require_skill(&manifest, "echo")?;
//! let verdict = match health.lookup(base_url, clock.now())? {
//!     Lookup::Fresh(v) => v,
//!     Lookup::Fetch(req) => health.handle_response(base_url, &http.execute(req)?, manifest_ttl(&manifest), clock.now())?,
//! };
//! ```
//!
//! Caches expire lazily at `lookup`; none needs a timer. A runnable example is
//! on [`ManifestCache`].

mod cache;
mod health;
pub(crate) mod lru;
mod registry;
mod validation;

pub use cache::{parse_max_age, Lookup, ManifestCache, ManifestCacheConfig, MAX_AGE_CAP};
pub use health::{
    health_request, interpret_health_response, manifest_ttl, HealthCache, HealthCacheConfig,
    HealthLoad, HealthStatus, HealthVerdict, STATUS_HEALTHY, STATUS_UNHEALTHY,
};
pub use registry::{
    generate_registry_entry, LiteRegistry, RegistryCache, RegistryCacheConfig, RegistryEndpoints,
    RegistryEntry, DEFAULT_REGISTRY_TTL, DEFAULT_REGISTRY_URL,
};
pub use validation::{
    check_version_compatibility, require_skill, validate_manifest_bytes, validate_manifest_value,
    ManifestValidationError, Pep440Version,
};

use crate::client::ClientError;
use crate::error::DecodeError;
use crate::error::Fault;

/// Why a discovery step failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The URL given is unusable (local).
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with status ≥ 400.
    #[error("HTTP error {status}: {snippet}")]
    HttpStatus {
        /// The status.
        status: u16,
        /// The start of the body.
        snippet: String,
    },
    /// A 1xx/3xx status other than 304.
    #[error("unexpected HTTP status {status}")]
    UnexpectedStatus {
        /// The status.
        status: u16,
    },
    /// A 304 arrived but nothing is cached to refresh (the entry was evicted
    /// or invalidated meanwhile): look up again, which fetches unconditionally.
    #[error("304 Not Modified but nothing is cached; fetch again")]
    NotModifiedWithoutCache,
    /// The body is compressed with an encoding this core does not decode.
    #[error("unsupported Content-Encoding {0:?}")]
    UnsupportedContentEncoding(String),
    /// The manifest is invalid.
    #[error(transparent)]
    InvalidManifest(ManifestValidationError),
    /// The health document is invalid.
    #[error("invalid health document: {0}")]
    InvalidHealth(DecodeError),
    /// The registry document is invalid.
    #[error("invalid registry: {0}")]
    InvalidRegistry(DecodeError),
}

impl DiscoveryError {
    /// Whose fault the failure is.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self {
            Self::InvalidUrl { .. } | Self::NotModifiedWithoutCache => Fault::Local,
            Self::InvalidManifest(e) => e.fault(),
            _ => Fault::Peer,
        }
    }
}

impl From<ClientError> for DiscoveryError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::InvalidBaseUrl { url, reason } => Self::InvalidUrl { url, reason },
            ClientError::InsecureUrl { url } => Self::InvalidUrl {
                url,
                reason: "plain http:// to a non-loopback host".to_owned(),
            },
        }
    }
}
