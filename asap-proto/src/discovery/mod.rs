//! Discovery: finding an agent's manifest, checking its health, and the Lite
//! Registry — caches and validation, without I/O.
//!
//! * [`HttpCache`]: the one cache every document below shares — `ETag`
//!   revalidation with `If-None-Match` (a 304 refreshes without a body; a 304
//!   for an entry evicted meanwhile becomes a new unconditional fetch),
//!   freshness, 304 / 2xx / error classification, bounded LRU size. A
//!   [`CacheDocument`] says where a document lives, how it decodes and how
//!   long it stays fresh.
//! * [`ManifestCache`]: manifests keyed by base URL; `Cache-Control: max-age`
//!   and the manifest's `ttl_seconds` (the smaller wins).
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
//! let mut step = cache.lookup(base_url, clock.now())?;
//! let manifest = loop {
//!     match step {
//!         Lookup::Fresh(m) => break m,
//!         Lookup::Transmit(req) => match http.execute(req) {   // GET .../manifest.json (+ If-None-Match)
//!             // 200 / 304 → Fresh; a 304 for an evicted entry → Transmit again (unconditional)
//!             Ok(resp) => step = cache.handle_response(base_url, &resp, clock.now())?,
//!             Err(e) => { cache.invalidate(base_url); return Err(e.into()) }
//!         },
//!     }
//! };
//! check_version_compatibility(&manifest, None)?;                // optional, as in the reference
//! require_skill(&manifest, "echo")?;
//! // health: the same loop, with health.handle_response_with_ttl(base_url, &resp, manifest_ttl(&manifest), now)
//! ```
//!
//! `asap_proto::client::ClientState` runs this loop for an adapter (see
//! its `FetchExchange`). Caches expire lazily at `lookup`; none needs a
//! timer. A runnable example is on [`ManifestCache`].

mod cache;
mod health;
pub(crate) mod lru;
mod manifest;
mod registry;
mod validation;

pub use cache::{parse_max_age, CacheDocument, HttpCache, Lookup, MAX_AGE_CAP};
pub use health::{
    health_request, interpret_health_response, manifest_ttl, HealthCache, HealthCacheConfig,
    HealthLoad, HealthStatus, HealthVerdict, STATUS_HEALTHY, STATUS_UNHEALTHY,
};
pub use manifest::{ManifestCache, ManifestCacheConfig};
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
    /// A 304 answered the unconditional fetch that a cache asks for when a
    /// 304 comes for an entry it no longer holds: the server claims a
    /// version the client never had.
    #[error("304 Not Modified to a request without If-None-Match; the server's cache validation is broken")]
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
            Self::InvalidUrl { .. } => Fault::Local,
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
