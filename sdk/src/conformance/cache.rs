//! The cache backend conformance suite (see docs/plugin-authoring.md).
