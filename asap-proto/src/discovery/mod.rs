//! Discovery (placeholder while the module is built).
#[allow(dead_code)] // used by the caches added next
pub(crate) mod lru;
