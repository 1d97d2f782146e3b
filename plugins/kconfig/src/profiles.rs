//! The baked-in profiles: a base make target plus a fragment compiled into
//! the binary.
//!
//! A profile is baked in (via `include_str!` of `profiles/*.kconfig`) rather
//! than read at run time so a given ktstr version always configures the
//! same way, and so the fragment's hash in the cache key changes exactly
//! when the shipped fragment does. Each profile also names the symbols a
//! ktstr kernel cannot work without; `validate` checks them after the build
//! and explains, per symbol, what usually removes it.
//!
//! A profile may add a fragment for one architecture (`tiny.arm64.kconfig`)
//! for what only that arch needs, such as its serial console driver. In the
//! shared fragment such a symbol would not exist on the other arches, so
//! every build there would report it dropped and never look configured.

use ktstr_sdk::configure::ProfileInfo;
use ktstr_sdk::error::{Result, StageError};

/// A symbol the built kernel must have set to `y`, with what to do when
/// it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequiredSymbol {
    /// Full name (`CONFIG_BPF`).
    pub symbol: &'static str,
    /// One line: what the symbol depends on / how to get it back.
    pub hint: &'static str,
}

/// One baked-in profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    /// The make target producing the base `.config` when the tree has none.
    pub base_target: &'static str,
    pub summary: &'static str,
    /// The fragment applied on top of the base, in kconfig fragment syntax.
    pub fragment: &'static str,
    /// Checked after the build.
    pub required: &'static [RequiredSymbol],
    /// Applied after `fragment` when building for that arch.
    pub arch_fragments: &'static [ArchFragment],
}

/// A profile's lines for one architecture only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchFragment {
    /// kbuild arch name (`ktstr_sdk::arch::KernelArch::name`).
    pub arch: &'static str,
    pub fragment: &'static str,
}

impl Profile {
    /// The name baked-in assignments carry as their origin file, so
    /// warnings read `default profile:12: ...`.
    pub fn origin_name(&self) -> String {
        format!("{} profile", self.name)
    }

    pub fn info(&self) -> ProfileInfo {
        ProfileInfo {
            name: self.name.to_string(),
            base_target: self.base_target.to_string(),
            summary: self.summary.to_string(),
        }
    }

    /// The fragment this profile adds for kbuild arch `arch`, with the
    /// origin its assignments carry (`tiny profile (arm64)`).
    pub fn arch_fragment(&self, arch: &str) -> Option<(String, &'static str)> {
        self.arch_fragments
            .iter()
            .find(|f| f.arch == arch)
            .map(|f| (format!("{} ({arch})", self.origin_name()), f.fragment))
    }

    /// The required-symbol entry for `symbol`, if the profile requires it.
    pub fn required(&self, symbol: &str) -> Option<&'static RequiredSymbol> {
        self.required.iter().find(|r| r.symbol == symbol)
    }
}

/// What every ktstr kernel needs, whatever the profile: sched_ext and the
/// BPF pieces it is built from.
const SCHED_EXT_REQUIRED: &[RequiredSymbol] = &[
    RequiredSymbol {
        symbol: "CONFIG_BPF",
        hint: "the base of all BPF support; make sure no fragment sets it to n",
    },
    RequiredSymbol {
        symbol: "CONFIG_BPF_SYSCALL",
        hint: "needs CONFIG_BPF; sched_ext schedulers are loaded through the bpf(2) syscall",
    },
    RequiredSymbol {
        symbol: "CONFIG_BPF_JIT",
        hint: "needs CONFIG_BPF and an architecture with an eBPF JIT (HAVE_EBPF_JIT)",
    },
    RequiredSymbol {
        symbol: "CONFIG_DEBUG_INFO_BTF",
        hint: "DEBUG_INFO_BTF needs DEBUG_INFO (e.g. CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y), \
               no DEBUG_INFO_REDUCED/SPLIT, and pahole >= 1.16 (>= 1.21 for DWARF 5) on PATH \
               when configuring (apt-get install dwarves)",
    },
    RequiredSymbol {
        symbol: "CONFIG_SCHED_CLASS_EXT",
        hint: "sched_ext needs Linux >= 6.12 and depends on BPF_SYSCALL, BPF_JIT and \
               DEBUG_INFO_BTF; fix those first",
    },
    RequiredSymbol {
        symbol: "CONFIG_KALLSYMS",
        hint: "sched_ext needs kallsyms to register; only an EXPERT config can turn it off, \
               so check for CONFIG_KALLSYMS=n in a fragment",
    },
    RequiredSymbol {
        symbol: "CONFIG_SMP",
        hint: "sched_ext does not link without SMP; on 32-bit or tiny configs set CONFIG_SMP=y \
               (and CONFIG_64BIT=y on x86)",
    },
];

/// Every baked-in profile; the first is the default.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "default",
        base_target: "defconfig",
        summary: "defconfig + sched_ext, BPF, BTF, tracing, kprobes, IKCONFIG, \
                  serial console and virtio for VM boot",
        fragment: include_str!("profiles/default.kconfig"),
        required: SCHED_EXT_REQUIRED,
        arch_fragments: &[],
    },
    Profile {
        name: "tiny",
        base_target: "tinyconfig",
        summary: "tinyconfig + the minimum for sched_ext and a serial console: \
                  fastest to build",
        fragment: include_str!("profiles/tiny.kconfig"),
        required: SCHED_EXT_REQUIRED,
        arch_fragments: &[ArchFragment {
            arch: "arm64",
            fragment: include_str!("profiles/tiny.arm64.kconfig"),
        }],
    },
];

/// Look a profile up by name; an unknown name is an invalid-input error
/// whose hint lists the profiles.
pub fn find(name: &str) -> Result<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<String> = PROFILES
            .iter()
            .map(|p| format!("{} ({} + fragment)", p.name, p.base_target))
            .collect();
        StageError::invalid_input(format!("--profile {name}: unknown profile"))
            .with_hint(format!("choose one of: {}", known.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment;
    use ktstr_sdk::ErrorKind;

    #[test]
    fn baked_in_fragments_parse_and_set_every_required_symbol() {
        for p in PROFILES {
            let lines = fragment::parse(&p.origin_name(), p.fragment)
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
            for f in p.arch_fragments {
                ktstr_sdk::arch::find(f.arch).expect("a kbuild arch name");
                let arch_lines = fragment::parse(&p.origin_name(), f.fragment)
                    .unwrap_or_else(|e| panic!("{} ({}): {e}", p.name, f.arch));
                assert!(!arch_lines.is_empty());
                // An arch line must not repeat a shared one: it would
                // silently override it on that arch only.
                for a in &arch_lines {
                    assert!(
                        lines.iter().all(|l| l.symbol != a.symbol),
                        "{} ({}): {} is in the shared fragment too",
                        p.name,
                        f.arch,
                        a.symbol
                    );
                }
            }
            for r in p.required {
                assert!(
                    lines.iter().any(
                        |a| a.symbol == r.symbol && a.value == fragment::Value::Set("y".into())
                    ),
                    "profile {} requires {} but its fragment does not set it",
                    p.name,
                    r.symbol
                );
                assert!(!r.hint.is_empty());
            }
            // No symbol assigned twice inside a shipped fragment: that would
            // be a silent typo in our own file.
            let mut seen = std::collections::BTreeSet::new();
            for a in &lines {
                assert!(seen.insert(&a.symbol), "{}: {} twice", p.name, a.symbol);
            }
        }
    }

    #[test]
    fn tiny_fragment_is_exactly_the_verified_list() {
        let tiny = find("tiny").unwrap();
        let lines: Vec<String> = fragment::parse("tiny", tiny.fragment)
            .unwrap()
            .iter()
            .map(|a| a.config_line())
            .collect();
        let want = [
            "CONFIG_64BIT=y",
            "CONFIG_SMP=y",
            "CONFIG_BPF=y",
            "CONFIG_BPF_SYSCALL=y",
            "CONFIG_BPF_JIT=y",
            "CONFIG_DEBUG_KERNEL=y",
            "CONFIG_DEBUG_INFO=y",
            "CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT=y",
            "CONFIG_DEBUG_INFO_BTF=y",
            "CONFIG_SCHED_CLASS_EXT=y",
            "CONFIG_KALLSYMS=y",
            "CONFIG_PRINTK=y",
            "CONFIG_TTY=y",
            "CONFIG_SERIAL_8250=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_PROC_FS=y",
            "CONFIG_SYSFS=y",
            "CONFIG_DEVTMPFS=y",
            "CONFIG_BLK_DEV_INITRD=y",
            "CONFIG_BINFMT_ELF=y",
        ];
        assert_eq!(lines, want);
        let (origin, arm64) = tiny.arch_fragment("arm64").unwrap();
        assert_eq!(origin, "tiny profile (arm64)");
        let arm64: Vec<String> = fragment::parse(&origin, arm64)
            .unwrap()
            .iter()
            .map(|a| a.config_line())
            .collect();
        assert_eq!(
            arm64,
            [
                "CONFIG_SERIAL_AMBA_PL011=y",
                "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y"
            ]
        );
        assert!(tiny.arch_fragment("x86_64").is_none());
        assert_eq!(tiny.base_target, "tinyconfig");
        assert_eq!(find("default").unwrap().base_target, "defconfig");
    }

    #[test]
    fn unknown_profile_lists_the_known_ones() {
        let err = find("foo").unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert_eq!(err.message, "--profile foo: unknown profile");
        let hint = err.hint.unwrap();
        assert!(hint.contains("default") && hint.contains("tiny"), "{hint}");
    }
}
