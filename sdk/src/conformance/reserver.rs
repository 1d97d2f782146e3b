//! The reserver conformance suite (see docs/plugin-authoring.md).
