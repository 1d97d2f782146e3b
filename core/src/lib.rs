//! The ktstr host: command line, pipeline orchestration, stage selection
//! and cache-key derivation. Stages themselves live in plugin crates.

pub mod cli;
pub mod config;
pub mod dynamic;
pub mod host;
pub mod identity;
pub mod interrupt;
pub mod pipeline;
pub mod progress;
pub mod registry;
pub mod report;
pub mod scratch;
pub mod tree_config;
