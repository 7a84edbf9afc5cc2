//! Client (placeholder while the module is built).
