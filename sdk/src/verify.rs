//! Stage 6: prove a built kernel boots.
//!
//! A cached entry is shared with every machine that misses its key, so an
//! image that never reaches init is worse than no entry. A [`Verifier`]
//! boots the entry's image (the built-in `qemu` verifier: a VM with an
//! initramfs ktstr generates) and reports what the kernel showed. The host
//! records the [`Verdict`] in the entry's metadata as a [`VerifyRecord`],
//! with the fields only the host knows (which verifier, when, how long).
//!
//! A verifier that *could not run* (qemu missing, no usable image) returns
//! `Err`; a kernel that *failed* (panic, hang, never reached init, a
//! required feature missing) is `Ok` with `passed: false`: the entry is kept
//! and marked.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::context::StageContext;
use crate::error::Result;

/// What the host asks a verifier to check. Its JSON form crosses the
/// plugin ABI: new fields must be `#[serde(default)]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyRequest {
    /// The boot image (`bzImage`, arm64 `Image`).
    pub image: PathBuf,
    /// The stored (stripped) vmlinux, when the entry has one.
    #[serde(default)]
    pub vmlinux: Option<PathBuf>,
    /// The entry's `.config`.
    pub config: PathBuf,
    /// kbuild architecture of the image (`x86_64`, `arm64`).
    pub arch: String,
    /// `uname -r` the build recorded, when known.
    #[serde(default)]
    pub kernelrelease: Option<String>,
    /// Virtual CPUs the guest should see (at least 1).
    pub vcpus: usize,
    /// Wall-clock bound for the whole check; past it the verifier stops
    /// the guest and fails with what the console showed.
    pub timeout_ms: u64,
    /// Sandbox the verifier's processes join (the reservation's), if any.
    #[serde(default)]
    pub sandbox_procs: Option<PathBuf>,
    /// Scratch directory the host owns (removed after the call): initramfs,
    /// console log.
    pub scratch: PathBuf,
}

/// What a verifier saw. `observed` uses the [`observed`] key names where
/// they apply; plugins may add their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub passed: bool,
    /// One line: `booted 6.12.57 in 24.1 s: sched_ext disabled, BTF present, 2 CPUs`
    /// or why it failed (`kernel panic: VFS: Unable to mount root fs`).
    pub summary: String,
    #[serde(default)]
    pub observed: BTreeMap<String, String>,
    /// The last console lines, kept when the check failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console_tail: Vec<String>,
}

/// Well-known keys of [`Verdict::observed`].
pub mod observed {
    /// `uname -r` inside the guest.
    pub const RELEASE: &str = "release";
    /// `/sys/kernel/sched_ext/state`, or `absent`.
    pub const SCHED_EXT: &str = "sched_ext";
    /// `present` when `/sys/kernel/btf/vmlinux` exists, else `absent`.
    pub const BTF: &str = "btf";
    /// CPUs online in the guest.
    pub const CPUS: &str = "cpus";
}

/// A verdict as stored in `metadata.json` (`verify`): the plugin's
/// [`Verdict`] plus what the host adds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyRecord {
    /// The verifier plugin's name and version.
    pub verifier: String,
    pub verifier_version: String,
    /// RFC 3339, UTC.
    pub verified_at: String,
    pub duration_ms: u64,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Stage 6: boot-check a built kernel (docs/verify.md).
///
/// The host calls it on a thread of its own and bounds it: stop the guest
/// at `request.timeout_ms` and report what the console showed; check
/// `cx.cancel` between steps; run processes through `cx.runner` with
/// `cgroup_procs` set to `request.sandbox_procs`, so they stay inside the
/// reservation and die with a cancelled context. A verifier that overruns
/// its bound by the host's grace is abandoned (a library plugin's thread
/// lives on until ktstr exits).
pub trait Verifier: Send + Sync {
    /// `Ok` with the verdict, passed or not; `Err` only when the check
    /// could not be made.
    fn verify(&self, request: &VerifyRequest, cx: &StageContext) -> Result<Verdict>;
}
