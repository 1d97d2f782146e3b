//! KVM or TCG: whether this host can run the guest on hardware
//! virtualisation.
//!
//! `/dev/kvm` existing is not enough: it may be unreadable for this user,
//! or a stub in a container. The probe opens it read-write, asks the API
//! version and creates (and drops) a VM, which is what qemu does first.
//! A host whose KVM passes that and still cannot run a guest (some
//! nested setups) is caught later: see the silence fallback in `boot.rs`.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

use ktstr_sdk::arch::KernelArch;

/// The accelerator a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// qemu's `-accel` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// For summaries: `KVM`, `TCG`.
    pub fn label(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }
}

/// The `accel` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM when the probe passes, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "kvm" => Some(Self::Kvm),
            "tcg" => Some(Self::Tcg),
            _ => None,
        }
    }
}

pub const KVM_DEVICE: &str = "/dev/kvm";

/// The accelerator for `choice` given the probe's answer; with `Auto`
/// and an unusable KVM, also why (for the progress note).
pub fn choose(
    choice: AccelChoice,
    probe: impl FnOnce() -> Result<(), String>,
) -> (Accel, Option<String>) {
    match choice {
        AccelChoice::Kvm => (Accel::Kvm, None),
        AccelChoice::Tcg => (Accel::Tcg, None),
        AccelChoice::Auto => match probe() {
            Ok(()) => (Accel::Kvm, None),
            Err(why) => (Accel::Tcg, Some(why)),
        },
    }
}

/// `Ok` when a guest of kbuild arch `arch` can run on this host's KVM
/// at `device`. KVM runs only the host's own architecture: an arm64
/// kernel on an x86_64 host is TCG without asking the device, where
/// trying KVM would only fail in qemu and warn.
pub fn probe_kvm_for(arch: &KernelArch, device: &Path) -> Result<(), String> {
    if !arch.is_native() {
        return Err(foreign_arch(arch));
    }
    probe_kvm(device)
}

/// Why KVM cannot run `arch`'s guests here.
pub fn foreign_arch(arch: &KernelArch) -> String {
    format!(
        "KVM runs only {} guests on this host, not {}",
        ktstr_sdk::arch::host().name,
        arch.name
    )
}

/// `Ok` when `device` is a KVM this process can create VMs on.
pub fn probe_kvm(device: &Path) -> Result<(), String> {
    // _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01), KVMIO = 0xAE; API version 12
    // has been the only one since Linux 2.6.22.
    const KVM_GET_API_VERSION: nix::libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: nix::libc::c_ulong = 0xAE01;
    const KVM_API_VERSION: i32 = 12;

    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| format!("cannot open {} read-write: {e}", device.display()))?;
    // SAFETY: both ioctls take no argument and only return an int (or a
    // new fd, which is wrapped at once).
    let version = unsafe { nix::libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != KVM_API_VERSION {
        return Err(format!(
            "{} is not a usable KVM device (API version {version})",
            device.display()
        ));
    }
    // SAFETY: as above; machine type 0 is the default.
    let vm = unsafe { nix::libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(format!(
            "{} cannot create a VM: {}",
            device.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `vm` is a fresh fd this function owns.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(vm) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_choices_skip_the_probe() {
        let never = || -> Result<(), String> { panic!("probed") };
        assert_eq!(choose(AccelChoice::Tcg, never), (Accel::Tcg, None));
        assert_eq!(choose(AccelChoice::Kvm, never), (Accel::Kvm, None));
    }

    #[test]
    fn auto_falls_back_to_tcg_with_the_reason() {
        assert_eq!(choose(AccelChoice::Auto, || Ok(())), (Accel::Kvm, None));
        let (accel, why) = choose(AccelChoice::Auto, || Err("no /dev/kvm".into()));
        assert_eq!(accel, Accel::Tcg);
        assert_eq!(why.as_deref(), Some("no /dev/kvm"));
    }

    #[test]
    fn probe_refuses_what_is_not_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("kvm");
        let err = probe_kvm(&missing).unwrap_err();
        assert!(err.contains("cannot open") && err.contains("kvm"), "{err}");
        // Opens read-write, but the ioctl is not KVM's.
        let err = probe_kvm(Path::new("/dev/null")).unwrap_err();
        assert!(err.contains("not a usable KVM device"), "{err}");
    }

    #[test]
    fn a_foreign_arch_never_probes_kvm() {
        let foreign = ktstr_sdk::arch::ARCHES
            .iter()
            .find(|a| !a.is_native())
            .unwrap();
        // A device that would pass is not even opened.
        let err = probe_kvm_for(foreign, Path::new("/nonexistent/kvm")).unwrap_err();
        assert_eq!(err, foreign_arch(foreign));
        assert!(err.contains(&format!("not {}", foreign.name)), "{err}");
        // The host's own arch goes on to the device probe.
        let err = probe_kvm_for(ktstr_sdk::arch::host(), Path::new("/nonexistent/kvm"));
        assert!(err.unwrap_err().contains("cannot open"));
    }

    #[test]
    fn setting_values() {
        assert_eq!(AccelChoice::parse(" TCG "), Some(AccelChoice::Tcg));
        assert_eq!(AccelChoice::parse("auto"), Some(AccelChoice::Auto));
        assert_eq!(AccelChoice::parse("hvf"), None);
    }
}
