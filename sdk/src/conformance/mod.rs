//! Conformance suites a plugin author runs against their own stage, in
//! their own `tests/`, so a backend or reserver is known to keep the
//! contracts of docs/plugin-authoring.md without running the whole tool.
//!
//! Every built-in and example stage runs the same suites in CI.

pub mod cache;
pub mod reserver;
