//! The ktstr host: command line, pipeline orchestration, stage selection
//! and cache-key derivation. Stages themselves live in plugin crates.

pub mod broken_pipe;
pub mod build_log;
pub mod byte_size;
pub mod cli;
pub mod config;
pub mod dynamic;
pub mod identity;
pub mod integrity;
pub mod interrupt;
pub mod pipeline;
pub mod process;
pub mod progress;
pub mod registry;
pub mod report;
pub mod scratch;
pub mod spec_claim;
pub mod stage_setup;
pub mod suggest;
pub mod table;
pub mod tiers;
pub mod tree_config;
