//! Bytes → manifest, Lite Registry, health document (and the header/limit
//! parsers the discovery and reliability cores use). Nothing panics; whatever
//! decodes re-encodes to bytes that decode to the same value.

#![no_main]

use std::time::{Duration, Instant};

use asap_proto::discovery::{
    check_version_compatibility, generate_registry_entry, parse_max_age, require_skill,
    validate_manifest_bytes, HealthStatus, LiteRegistry, Lookup, ManifestCache,
    ManifestCacheConfig, Pep440Version,
};
use asap_proto::reliability::{parse_http_date, retry_after_delay, RateLimitSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = validate_manifest_bytes(data) {
        let bytes = serde_json::to_vec(&manifest).expect("an accepted manifest encodes");
        let again = validate_manifest_bytes(&bytes).expect("re-encoded manifest decodes");
        assert_eq!(again, manifest);

        // Validation helpers never panic and agree with each other.
        let _ = check_version_compatibility(&manifest, None);
        let _ = check_version_compatibility(&manifest, Some(&manifest.capabilities.asap_version));
        if let Some(v) = Pep440Version::parse(&manifest.capabilities.asap_version) {
            assert_eq!(v.cmp(&v), std::cmp::Ordering::Equal);
            assert!(check_version_compatibility(&manifest, Some(v.as_str())).is_ok());
        }
        for skill in &manifest.capabilities.skills {
            assert!(require_skill(&manifest, &skill.id).is_ok());
        }

        // A registry entry generated from it round-trips.
        let entry =
            generate_registry_entry(&manifest, [("http", manifest.endpoints.asap.as_str())]);
        let text = serde_json::to_vec(&entry).expect("entry encodes");
        let back: asap_proto::discovery::RegistryEntry =
            asap_proto::error::from_slice(&text).expect("generated entry decodes");
        assert_eq!(back, entry);

        // The cache stores what it was given and serves it until its freshness ends.
        let mut cache = ManifestCache::new(ManifestCacheConfig::default());
        let t0 = far_instant();
        let resp = http::Response::builder()
            .status(200)
            .header("cache-control", "max-age=60")
            .body(data.to_vec())
            .expect("response");
        let stored = cache
            .handle_response("http://agent", &resp, t0)
            .expect("valid manifest stored")
            .fresh()
            .expect("a 200 is stored at once");
        assert_eq!(*stored, manifest);
        let ttl = Duration::from_secs(60.min(manifest.ttl_seconds));
        assert!(matches!(
            cache.lookup("http://agent", t0 + ttl).expect("lookup"),
            Lookup::Transmit(_)
        ));
    }

    if let Ok(registry) = LiteRegistry::from_slice(data) {
        let bytes = registry.to_vec();
        let again = LiteRegistry::from_slice(&bytes).expect("re-encoded registry decodes");
        assert_eq!(again, registry);
        assert_eq!(again.to_vec(), bytes, "encoding is stable");
        for entry in &registry.agents {
            assert!(registry.find_by_id(entry.id.as_str()).is_some());
            for skill in &entry.skills {
                assert!(registry
                    .find_by_skill(skill)
                    .iter()
                    .any(|e| e.id == entry.id));
            }
        }
    }

    if let Ok(health) = HealthStatus::from_slice(data) {
        let again = HealthStatus::from_slice(&health.to_vec()).expect("re-encoded health decodes");
        assert_eq!(again.status, health.status);
        assert_eq!(again.load, health.load);
    }

    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_max_age(text);
        let _ = parse_http_date(text);
        let _ = retry_after_delay(text, Some(text));
        if let Ok(spec) = RateLimitSpec::parse(text) {
            let again = RateLimitSpec::parse(&spec.to_string().replace(' ', ""));
            if !spec.is_unlimited() {
                // "10 per 1 second" items re-parse to the same limits.
                assert_eq!(again.expect("rendered spec parses"), spec);
            }
        }
        let _ = Pep440Version::parse(text);
    }
});

/// A base instant; only durations are added to it.
fn far_instant() -> Instant {
    use std::sync::OnceLock;
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}
