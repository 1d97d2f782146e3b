//! Kernel configuration: profiles, user fragments and post-build validation.

use std::path::{Path, PathBuf};

use crate::cache::KeyComponent;
use crate::context::StageContext;
use crate::error::Result;

/// A kconfig fragment the user supplied (`--extra-kconfig FILE`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fragment {
    /// Where it came from, for messages (`file:line`).
    pub name: String,
    pub content: String,
}

/// What to configure.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigureRequest {
    /// Profile name (`default`, `tiny`, ...).
    pub profile: String,
    /// User fragments, applied after the profile's own, in order.
    pub fragments: Vec<Fragment>,
    /// `make -j` for configure-time make runs.
    pub make_jobs: usize,
    /// Sandbox the configure-time make joins, if any.
    pub sandbox_procs: Option<PathBuf>,
    /// Start from the profile's base target even if `.config` exists (the
    /// host sets it when the existing `.config` is ktstr's own output for a
    /// different profile or fragments, or after `--clean`).
    #[serde(default)]
    pub reset: bool,
    /// Arguments every configure-time `make` gets besides `-j` and the
    /// target (the builder's [`BuildPlan::make_args`](crate::build::BuildPlan)),
    /// so `.config` is made for the compiler and arch that will build it.
    #[serde(default)]
    pub make_args: Vec<String>,
    /// Out-of-tree configuration: the `tree` argument is the build directory
    /// and this is the source (`make -C source O=tree`).
    #[serde(default)]
    pub source_dir: Option<PathBuf>,
}

/// One selectable profile, for `ktstr plugins list` and errors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProfileInfo {
    pub name: String,
    /// The make target that produces the base `.config` (`defconfig`).
    pub base_target: String,
    pub summary: String,
}

/// Stage 3: produce the tree's `.config` and check it after the build.
pub trait Configurer: Send + Sync {
    fn profiles(&self) -> Vec<ProfileInfo>;

    /// The configuration's contribution to the cache key, computed from the
    /// request alone. Rejects unknown profiles and malformed fragments.
    fn identity(&self, request: &ConfigureRequest) -> Result<Vec<KeyComponent>>;

    /// Whether `tree/.config` already carries every line the request asks
    /// for, so configuring again would change nothing.
    fn is_configured(&self, tree: &Path, request: &ConfigureRequest) -> Result<bool>;

    /// Write `tree/.config`. Overrides and dropped lines are reported as
    /// warnings through `cx.progress`.
    fn configure(&self, tree: &Path, request: &ConfigureRequest, cx: &StageContext) -> Result<()>;

    /// After the build: every symbol the profile requires is still set.
    /// The error lists each missing symbol with a hint.
    fn validate(&self, tree: &Path, request: &ConfigureRequest) -> Result<()>;
}
