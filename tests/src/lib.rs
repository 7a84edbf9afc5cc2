//! Shared helpers for the asap-rs integration tests.

pub mod vectors;
