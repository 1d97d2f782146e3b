//! Building a configured tree.

use std::path::{Path, PathBuf};

use crate::arch::{self, KernelArch};
use crate::cache::KeyComponent;
use crate::context::StageContext;
use crate::error::{Result, StageError};

/// Which kernel to build from one configured source: the architecture and
/// the toolchain. Part of the cache key through [`Builder::plan`]. Every
/// field `None` is the host's architecture with the builder's default
/// toolchain.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    /// kbuild `ARCH` or an alias (`arm64`, `aarch64`); `None`: the host's.
    #[serde(default)]
    pub arch: Option<String>,
    /// `gcc`, `gcc-N`, `clang`, `llvm` or `llvm-N`; `None`: `gcc`.
    #[serde(default)]
    pub toolchain: Option<String>,
    /// `CROSS_COMPILE` prefix; `None`: looked up on PATH for a foreign arch.
    #[serde(default)]
    pub cross_compile: Option<String>,
}

impl Variant {
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// How a builder will build one [`Variant`]: what enters the key, and the
/// arguments every `make` of the build gets (configure-time ones too, so
/// `.config` is made for the same compiler and architecture).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    pub arch: &'static KernelArch,
    /// Builder options and toolchain identity, for the key.
    pub components: Vec<KeyComponent>,
    /// `ARCH=`, `CROSS_COMPILE=`, `LLVM=`, `CC=`, ...: everything but `-j`,
    /// `O=` and the target.
    pub make_args: Vec<String>,
    /// The objcopy that understands this arch's ELF (the host strips the
    /// stored vmlinux with it): `aarch64-linux-gnu-objcopy`, `llvm-objcopy`.
    pub objcopy: String,
}

/// What to build.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildRequest {
    pub tree: PathBuf,
    /// `make -j` value from the reservation.
    pub make_jobs: usize,
    /// Sandbox the build's processes join, if any.
    pub sandbox_procs: Option<PathBuf>,
    /// Also produce `compile_commands.json` (local trees, for editors).
    pub compile_commands: bool,
    /// The variant [`Builder::plan`] planned.
    #[serde(default)]
    pub variant: Variant,
    /// Build out of tree into this directory (kbuild `O=`); the source tree
    /// is not written.
    #[serde(default)]
    pub output: Option<PathBuf>,
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
    /// Builder options and toolchain identity for the cache key, for the
    /// default variant.
    fn identity(&self, cx: &StageContext) -> Result<Vec<KeyComponent>>;

    /// Plan a build of `variant`. The default builds only the default
    /// variant (the host's architecture, the builder's own toolchain).
    fn plan(&self, variant: &Variant, cx: &StageContext) -> Result<BuildPlan> {
        if !variant.is_default() {
            return Err(StageError::invalid_input(
                "this builder builds only for the host with its own toolchain",
            )
            .with_hint(
                "drop --arch/--toolchain/--cross-compile, or use the built-in kbuild builder",
            ));
        }
        Ok(BuildPlan {
            arch: arch::host(),
            components: self.identity(cx)?,
            make_args: Vec::new(),
            objcopy: "objcopy".into(),
        })
    }

    /// Whether [`BuildRequest::output`] (out-of-tree builds) is honoured.
    fn builds_out_of_tree(&self) -> bool {
        false
    }

    /// Remove every build product from the tree (`make mrproper`).
    fn clean(&self, tree: &Path, cx: &StageContext) -> Result<()>;

    fn build(&self, request: &BuildRequest, cx: &StageContext) -> Result<BuildOutput>;
}
