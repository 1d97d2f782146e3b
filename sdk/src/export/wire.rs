//! JSON forms of the sdk data whose own shape cannot cross the plugin
//! boundary as is.
//!
//! Stage data (`KernelSpec`, `BuildRequest`, `Metadata`, `CacheEntry`,
//! `CommandSpec`, ...) derives serde and crosses as its own JSON. Two
//! types keep a mirror here:
//!
//! - [`Listed`]: `cache::Listed::Ok` holds its entry as a tuple variant,
//!   which serde cannot tag with a field; the wire form is
//!   `{"status": "ok", "entry": {...}}` (older plugins read exactly that).
//! - [`Grant`]: a `reserve::Reservation` minus its guard, which is a live
//!   object travelling separately as an FFI trait object.
//!
//! Adding an optional (`#[serde(default)]`) field is an additive ABI
//! change; see docs/plugin-abi.md.

use std::path::PathBuf;

use crate::cache::{self, CacheEntry};

/// `cache::Listed`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
#[allow(clippy::large_enum_variant)]
pub enum Listed {
    Ok { entry: CacheEntry },
    Corrupt { key: String, reason: String },
}

impl From<&cache::Listed> for Listed {
    fn from(l: &cache::Listed) -> Self {
        match l {
            cache::Listed::Ok(e) => Self::Ok { entry: e.clone() },
            cache::Listed::Corrupt { key, reason } => Self::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
        }
    }
}

impl From<Listed> for cache::Listed {
    fn from(l: Listed) -> Self {
        match l {
            Listed::Ok { entry } => Self::Ok(entry),
            Listed::Corrupt { key, reason } => Self::Corrupt { key, reason },
        }
    }
}

/// The data of a `reserve::Reservation` (the guard travels separately).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    #[serde(default)]
    pub cpus: Vec<usize>,
    #[serde(default)]
    pub mems: Vec<usize>,
    pub make_jobs: usize,
    #[serde(default)]
    pub sandbox_procs: Option<PathBuf>,
}
