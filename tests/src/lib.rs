//! Shared helpers for the asap-rs integration tests.

pub mod interop;
pub mod sim;
pub mod vectors;
