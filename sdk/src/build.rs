//! Building a configured tree.

use std::path::{Path, PathBuf};

use crate::cache::KeyComponent;
use crate::context::StageContext;
use crate::error::Result;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildRequest {
    pub tree: PathBuf,
    /// `make -j` value from the reservation.
    pub make_jobs: usize,
    /// Sandbox the build's processes join, if any.
    pub sandbox_procs: Option<PathBuf>,
    /// Also produce `compile_commands.json` (local trees, for editors).
    pub compile_commands: bool,
}

/// What a successful build produced, inside the tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildOutput {
    /// The bootable image (`arch/x86/boot/bzImage`).
    pub image: PathBuf,
    /// The ELF `vmlinux`, when the build left one.
    pub vmlinux: Option<PathBuf>,
    /// The make command line that built it, as run in the tree (recorded in
    /// the entry's metadata as its reproducer). Optional for builders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// Stage 4: run the build system.
pub trait Builder: Send + Sync {
    /// Builder options and toolchain identity for the cache key.
    fn identity(&self, cx: &StageContext) -> Result<Vec<KeyComponent>>;

    /// Remove every build product from the tree (`make mrproper`).
    fn clean(&self, tree: &Path, cx: &StageContext) -> Result<()>;

    fn build(&self, request: &BuildRequest, cx: &StageContext) -> Result<BuildOutput>;
}
