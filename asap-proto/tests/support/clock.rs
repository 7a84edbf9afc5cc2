//! Test support compiled into asap-proto's unit tests (`#[path]` from `lib.rs`):
//! the one real `Instant` the time-driven tests start from. The library never
//! reads a clock; tests only do arithmetic on this base.
#![allow(clippy::disallowed_methods)]

/// A base instant for tests.
pub(crate) fn base() -> std::time::Instant {
    std::time::Instant::now()
}
