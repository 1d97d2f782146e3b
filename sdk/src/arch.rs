//! Kernel architectures as kbuild names them: one table for the image each
//! builds, the cross-compiler prefixes distributions ship, and the aliases
//! users type.
//!
//! The `name` is kbuild's `ARCH` value and the arch part of a cache key, so
//! `--arch aarch64` and `--arch arm64` are the same build. Everything that
//! needs per-arch knowledge (the builder's image path, the cross-compiler
//! search, `kernel list`) reads it from here.

use crate::error::{Result, StageError};

/// Kernel architecture facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelArch {
    /// kbuild's `ARCH` (`x86_64`, `arm64`); used in cache keys.
    pub name: &'static str,
    /// Other spellings users type (`aarch64`, `amd64`).
    pub aliases: &'static [&'static str],
    /// `std::env::consts::ARCH` values of hosts that build it natively.
    pub host_names: &'static [&'static str],
    /// File name of the bootable image (`bzImage`).
    pub image_name: &'static str,
    /// Image path relative to the build directory (`arch/x86/boot/bzImage`).
    pub image_path: &'static str,
    /// `CROSS_COMPILE` prefixes to look for on PATH, most common first
    /// (Debian and Fedora spell them alike).
    pub cross_prefixes: &'static [&'static str],
    /// The Debian package with the first prefix's gcc, for hints.
    pub cross_package: &'static str,
}

/// Every architecture ktstr knows how to build.
pub const ARCHES: &[KernelArch] = &[
    KernelArch {
        name: "x86_64",
        aliases: &["x86", "amd64", "x86-64"],
        host_names: &["x86_64"],
        image_name: "bzImage",
        image_path: "arch/x86/boot/bzImage",
        cross_prefixes: &["x86_64-linux-gnu-"],
        cross_package: "gcc-x86-64-linux-gnu",
    },
    KernelArch {
        name: "arm64",
        aliases: &["aarch64"],
        host_names: &["aarch64"],
        image_name: "Image",
        image_path: "arch/arm64/boot/Image",
        cross_prefixes: &["aarch64-linux-gnu-"],
        cross_package: "gcc-aarch64-linux-gnu",
    },
    KernelArch {
        name: "arm",
        aliases: &["armhf", "armel"],
        host_names: &["arm"],
        image_name: "zImage",
        image_path: "arch/arm/boot/zImage",
        cross_prefixes: &["arm-linux-gnueabihf-", "arm-linux-gnueabi-"],
        cross_package: "gcc-arm-linux-gnueabihf",
    },
    KernelArch {
        name: "riscv",
        aliases: &["riscv64"],
        host_names: &["riscv64"],
        image_name: "Image",
        image_path: "arch/riscv/boot/Image",
        cross_prefixes: &["riscv64-linux-gnu-"],
        cross_package: "gcc-riscv64-linux-gnu",
    },
    KernelArch {
        name: "s390",
        aliases: &["s390x"],
        host_names: &["s390x"],
        image_name: "bzImage",
        image_path: "arch/s390/boot/bzImage",
        cross_prefixes: &["s390x-linux-gnu-"],
        cross_package: "gcc-s390x-linux-gnu",
    },
    KernelArch {
        name: "powerpc",
        aliases: &["ppc64le", "ppc64", "powerpc64le", "powerpc64"],
        host_names: &["powerpc64"],
        image_name: "zImage",
        image_path: "arch/powerpc/boot/zImage",
        cross_prefixes: &["powerpc64le-linux-gnu-", "powerpc64-linux-gnu-"],
        cross_package: "gcc-powerpc64le-linux-gnu",
    },
    KernelArch {
        name: "loongarch",
        aliases: &["loongarch64"],
        host_names: &["loongarch64"],
        image_name: "vmlinuz.efi",
        image_path: "arch/loongarch/boot/vmlinuz.efi",
        cross_prefixes: &["loongarch64-linux-gnu-"],
        cross_package: "gcc-loongarch64-linux-gnu",
    },
];

/// The names `--arch` accepts, for help and errors.
pub fn names() -> Vec<&'static str> {
    ARCHES.iter().map(|a| a.name).collect()
}

/// The architecture this host builds natively (x86_64 if unknown).
pub fn host() -> &'static KernelArch {
    ARCHES
        .iter()
        .find(|a| a.host_names.contains(&std::env::consts::ARCH))
        .unwrap_or(&ARCHES[0])
}

/// Look an architecture up by kbuild name or alias.
pub fn find(name: &str) -> Result<&'static KernelArch> {
    let wanted = name.trim().to_ascii_lowercase();
    ARCHES
        .iter()
        .find(|a| a.name == wanted || a.aliases.contains(&wanted.as_str()))
        .ok_or_else(|| {
            StageError::invalid_input(format!("--arch {name}: not an architecture ktstr builds"))
                .with_hint(format!("use one of: {}", names().join(", ")))
        })
}

impl KernelArch {
    /// Whether this host builds it without a cross compiler.
    pub fn is_native(&self) -> bool {
        self.host_names.contains(&std::env::consts::ARCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_find_the_kbuild_name() {
        assert_eq!(find("aarch64").unwrap().name, "arm64");
        assert_eq!(find("ARM64").unwrap().name, "arm64");
        assert_eq!(find("amd64").unwrap().name, "x86_64");
        assert_eq!(find("riscv64").unwrap().image_path, "arch/riscv/boot/Image");
    }

    #[test]
    fn unknown_arch_lists_the_known_ones() {
        let err = find("vax").unwrap_err();
        assert!(err.message.contains("--arch vax"), "{err}");
        assert!(err.hint.unwrap().contains("arm64"));
    }

    #[test]
    fn names_and_aliases_are_unique() {
        let mut all: Vec<&str> = ARCHES
            .iter()
            .flat_map(|a| std::iter::once(a.name).chain(a.aliases.iter().copied()))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        for a in ARCHES {
            assert!(a.image_path.ends_with(a.image_name), "{}", a.name);
        }
    }

    #[test]
    fn host_is_native() {
        assert!(host().is_native());
    }
}
