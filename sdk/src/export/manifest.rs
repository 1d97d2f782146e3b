//! What a plugin library says about itself.

use crate::registry::StageKind;

/// The JSON returned by a plugin's `manifest()` entry point.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The plugin's name, as users pass it to `--plugin`.
    pub name: String,
    /// The plugin's own version; `--plugin name@<req>` matches it.
    pub version: String,
    /// The ABI version it was built against (also in its library header).
    pub abi_version: String,
    /// The `ktstr-sdk` version it was built against.
    #[serde(default)]
    pub sdk_version: String,
    pub stages: Vec<StageManifest>,
}

/// One stage of a plugin library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageManifest {
    pub kind: StageKind,
    pub name: String,
    pub summary: String,
    /// Keys accepted in the stage's config table.
    #[serde(default)]
    pub config_keys: Vec<String>,
}
