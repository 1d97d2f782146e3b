//! What qemu is run with: one table row per architecture (binary, machine,
//! serial console, firmware) and the command line built from it.
//!
//! The arches are those the builder cross-builds and qemu boots without a
//! disk: x86_64 and arm64. Everything per-arch lives in [`MACHINES`]; the
//! command line is a pure function of a [`Plan`], so tests check it
//! without starting qemu.

use std::path::PathBuf;

use ktstr_sdk::{Result, StageError};

use crate::accel::Accel;

/// How to boot one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Machine {
    /// kbuild arch name (`ktstr_sdk::arch::KernelArch::name`).
    pub arch: &'static str,
    /// The qemu system emulator.
    pub qemu: &'static str,
    /// The Debian package that ships it.
    pub package: &'static str,
    /// Machine and CPU model arguments.
    pub machine_args: &'static [&'static str],
    /// The serial console's device name in the guest.
    pub console: &'static str,
    /// Firmware (`-bios`) by file name in qemu's data directory, when
    /// qemu's default does not suit.
    pub firmware: Option<&'static str>,
}

/// Every architecture the verifier boots.
///
/// x86_64 boots with qboot (from qemu's own data files) rather than
/// SeaBIOS: a kernel without ACPI (the `tiny` profile) finds its CPUs in
/// the MP table, and SeaBIOS's lists only the boot CPU under TCG.
pub const MACHINES: &[Machine] = &[
    Machine {
        arch: "x86_64",
        qemu: "qemu-system-x86_64",
        package: "qemu-system-x86",
        machine_args: &["-machine", "pc"],
        console: "ttyS0",
        firmware: Some("qboot.rom"),
    },
    Machine {
        arch: "arm64",
        qemu: "qemu-system-aarch64",
        package: "qemu-system-arm",
        // gic-version=max: a KVM host may lack GICv2 emulation.
        machine_args: &["-machine", "virt,gic-version=max", "-cpu", "max"],
        console: "ttyAMA0",
        firmware: None,
    },
];

/// The row for kbuild arch `arch` (aliases such as `aarch64` accepted).
pub fn for_arch(arch: &str) -> Result<&'static Machine> {
    let name = ktstr_sdk::arch::find(arch)?.name;
    MACHINES.iter().find(|m| m.arch == name).ok_or_else(|| {
        let known: Vec<&str> = MACHINES.iter().map(|m| m.arch).collect();
        StageError::new(
            ktstr_sdk::ErrorKind::Unsupported,
            format!("qemu verifier: cannot boot {name} kernels"),
        )
        .with_hint(format!(
            "it boots {}; skip the boot check for {name} or use a verifier plugin that can",
            known.join(" and ")
        ))
    })
}

/// Firmware choice: the table's, qemu's default, or a file the user names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    Table,
    QemuDefault,
    File(String),
}

/// Everything one qemu run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub machine: &'static Machine,
    /// The emulator to run (the table's, or the `qemu` setting).
    pub qemu: String,
    pub accel: Accel,
    pub vcpus: usize,
    pub memory_mib: u64,
    pub firmware: Firmware,
    pub image: PathBuf,
    pub initramfs: PathBuf,
    pub pidfile: PathBuf,
    /// Kernel parameters added after ktstr's own.
    pub append: Option<String>,
}

impl Plan {
    /// The kernel command line: the console, `panic=-1` (a panic reboots,
    /// which `-no-reboot` turns into qemu exiting), then the user's
    /// parameters, which win where they repeat one (`rdinit=`).
    pub fn kernel_cmdline(&self) -> String {
        let mut line = format!("console={} panic=-1 rdinit=/init", self.machine.console);
        if let Some(extra) = self
            .append
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            line.push(' ');
            line.push_str(extra);
        }
        line
    }

    /// qemu's arguments.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = self
            .machine
            .machine_args
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["-accel".into(), self.accel.as_str().into()]);
        let firmware = match &self.firmware {
            Firmware::Table => self.machine.firmware.map(str::to_string),
            Firmware::QemuDefault => None,
            Firmware::File(f) => Some(f.clone()),
        };
        if let Some(f) = firmware {
            args.extend(["-bios".into(), f]);
        }
        args.extend([
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.vcpus.max(1).to_string(),
            // Serial console on stdout; no display, network or reboot.
            "-nographic".into(),
            "-nic".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            self.image.display().to_string(),
            "-initrd".into(),
            self.initramfs.display().to_string(),
            "-append".into(),
            self.kernel_cmdline(),
            "-pidfile".into(),
            self.pidfile.display().to_string(),
        ]);
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(arch: &str, accel: Accel) -> Plan {
        let machine = for_arch(arch).unwrap();
        Plan {
            machine,
            qemu: machine.qemu.to_string(),
            accel,
            vcpus: 2,
            memory_mib: 512,
            firmware: Firmware::Table,
            image: "/c/bzImage".into(),
            initramfs: "/s/initramfs.cpio".into(),
            pidfile: "/s/qemu.pid".into(),
            append: Some(" rdinit=/nonexistent ".into()),
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let i = args.iter().position(|a| a == flag).expect(flag);
        &args[i + 1]
    }

    #[test]
    fn table_covers_the_builders_boot_arches() {
        assert_eq!(for_arch("x86_64").unwrap().console, "ttyS0");
        let arm = for_arch("aarch64").unwrap();
        assert_eq!(
            (arm.qemu, arm.package, arm.console),
            ("qemu-system-aarch64", "qemu-system-arm", "ttyAMA0")
        );
        for m in MACHINES {
            ktstr_sdk::arch::find(m.arch).expect("a kbuild arch name");
        }
        let err = for_arch("riscv").unwrap_err();
        assert!(err.message.contains("cannot boot riscv"), "{err}");
        assert!(err.hint.unwrap().contains("x86_64 and arm64"));
        assert!(for_arch("vax").unwrap_err().message.contains("--arch vax"));
    }

    #[test]
    fn x86_command_line() {
        let args = plan("x86_64", Accel::Tcg).args();
        assert_eq!(after(&args, "-machine"), "pc");
        assert_eq!(after(&args, "-accel"), "tcg");
        assert_eq!(after(&args, "-bios"), "qboot.rom");
        assert_eq!(after(&args, "-smp"), "2");
        assert_eq!(after(&args, "-m"), "512M");
        assert_eq!(after(&args, "-kernel"), "/c/bzImage");
        assert_eq!(after(&args, "-initrd"), "/s/initramfs.cpio");
        assert_eq!(after(&args, "-pidfile"), "/s/qemu.pid");
        assert_eq!(
            after(&args, "-append"),
            "console=ttyS0 panic=-1 rdinit=/init rdinit=/nonexistent"
        );
        for flag in ["-nographic", "-no-reboot"] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
        assert_eq!(after(&args, "-nic"), "none");
    }

    #[test]
    fn arm64_command_line_and_firmware_choices() {
        let mut p = plan("arm64", Accel::Kvm);
        p.append = None;
        let args = p.args();
        assert_eq!(after(&args, "-machine"), "virt,gic-version=max");
        assert_eq!(after(&args, "-cpu"), "max");
        assert_eq!(after(&args, "-accel"), "kvm");
        assert!(!args.iter().any(|a| a == "-bios"), "{args:?}");
        assert_eq!(
            after(&args, "-append"),
            "console=ttyAMA0 panic=-1 rdinit=/init"
        );

        let mut p = plan("x86_64", Accel::Tcg);
        p.firmware = Firmware::QemuDefault;
        assert!(!p.args().iter().any(|a| a == "-bios"));
        p.firmware = Firmware::File("/fw/bios.bin".into());
        assert_eq!(after(&p.args(), "-bios"), "/fw/bios.bin");
        p.vcpus = 0;
        assert_eq!(after(&p.args(), "-smp"), "1");
    }
}
