//! The host architecture as kbuild names it, and where its image lands.

/// Kernel architecture facts for one host architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelArch {
    /// Rust/uname name, used in cache keys (`x86_64`).
    pub name: &'static str,
    /// File name of the bootable image (`bzImage`).
    pub image_name: &'static str,
    /// Image path relative to the tree (`arch/x86/boot/bzImage`).
    pub image_path: &'static str,
}

/// The architecture ktstr builds for: the host's.
pub fn host() -> KernelArch {
    match std::env::consts::ARCH {
        "aarch64" => KernelArch {
            name: "aarch64",
            image_name: "Image",
            image_path: "arch/arm64/boot/Image",
        },
        "riscv64" => KernelArch {
            name: "riscv64",
            image_name: "Image",
            image_path: "arch/riscv/boot/Image",
        },
        _ => KernelArch {
            name: "x86_64",
            image_name: "bzImage",
            image_path: "arch/x86/boot/bzImage",
        },
    }
}
