//! Tokio adapter for asap-proto.
#![deny(missing_docs)]
