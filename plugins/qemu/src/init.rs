//! The guest's `/init`: `init.c` compiled static for the kernel's arch,
//! once per source and compiler.
//!
//! ktstr ships the C source, not a binary: the host's (cross) gcc builds
//! it, the same compilers the builder already needs for that arch. The
//! result is kept under the cache root (`state/qemu/init-<arch>-<hash>`),
//! keyed by the source, the flags and the compiler's `--version` and
//! `-dumpmachine`, so a compiler upgrade rebuilds it and nothing else does.
//! It is written to a temporary name and renamed, so a killed compile
//! leaves no half binary under the final name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ktstr_sdk::arch::KernelArch;
use ktstr_sdk::context::CommandSpec;
use ktstr_sdk::error::{IoResultExt, Result, StageError};
use ktstr_sdk::prelude::StageContext;

/// The init's C source.
pub const SOURCE: &str = include_str!("init.c");
const FLAGS: &[&str] = &["-static", "-Os", "-s", "-Wall"];

/// The compiler for `arch`'s init: the host gcc for the host's arch, else
/// the first cross gcc on PATH. Its name, and the hint when none is there.
pub fn compiler(arch: &KernelArch, on_path: impl Fn(&str) -> bool) -> Result<String> {
    let mut candidates: Vec<String> = Vec::new();
    if arch.is_native() {
        candidates.push("gcc".into());
    }
    candidates.extend(arch.cross_prefixes.iter().map(|p| format!("{p}gcc")));
    if let Some(found) = candidates.iter().find(|c| on_path(c)) {
        return Ok(found.clone());
    }
    // The cross C library is only a Recommends of the cross gcc package:
    // name it too, or the next error is the static link's.
    let package = if arch.is_native() {
        "gcc libc6-dev".to_string()
    } else {
        format!(
            "{} libc6-dev-{}-cross",
            arch.cross_package,
            debian_arch(arch.name)
        )
    };
    Err(StageError::command(format!(
        "qemu verifier: no C compiler for the {} boot-check init (looked for {})",
        arch.name,
        candidates.join(", ")
    ))
    .with_hint(format!("install it: apt-get install {package}")))
}

/// Whether `program` is an executable file in a `PATH` directory.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The cache file name for a compiler identity.
pub fn cached_name(arch: &str, compiler_version: &str, machine: &str) -> String {
    let identity = [SOURCE, &FLAGS.join(" "), compiler_version, machine].join("\0");
    let hash = ktstr_sdk::hash::sha256_hex(identity.as_bytes());
    format!("init-{arch}-{}", &hash[..16])
}

/// The init binary for `arch`, compiled into `state_dir` unless it is
/// there already. `scratch` receives the source file.
pub fn binary(
    arch: &KernelArch,
    state_dir: &Path,
    scratch: &Path,
    cx: &StageContext,
) -> Result<Vec<u8>> {
    let cc = compiler(arch, on_path)?;
    let version = capture(&cc, "--version", cx)?;
    let machine = capture(&cc, "-dumpmachine", cx)?;
    let path = state_dir.join(cached_name(arch.name, &version, &machine));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(bytes);
    }
    std::fs::create_dir_all(state_dir).at("create directory", state_dir)?;
    let source = scratch.join("ktstr-init.c");
    std::fs::write(&source, SOURCE).at("write", &source)?;
    let tmp = temp_name(&path);
    let spec = CommandSpec::new(&cc)
        .args(FLAGS.iter().copied())
        .arg("-o")
        .arg(tmp.display().to_string())
        .arg(source.display().to_string());
    let out = cx.runner.capture(&spec);
    let out = match out {
        Ok(out) if out.code == Some(0) => out,
        other => {
            let _ = std::fs::remove_file(&tmp);
            let out = other?;
            return Err(compile_error(arch, &cc, &out.stderr));
        }
    };
    drop(out);
    std::fs::rename(&tmp, &path).at("rename the compiled init to", &path)?;
    std::fs::read(&path).at("read", &path)
}

fn temp_name(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(name)
}

fn capture(cc: &str, flag: &str, cx: &StageContext) -> Result<String> {
    let out = cx.runner.capture(&CommandSpec::new(cc).arg(flag))?;
    if out.code != Some(0) {
        return Err(StageError::command(format!(
            "`{cc} {flag}` failed: {}",
            out.stderr.trim()
        )));
    }
    Ok(out.stdout.trim().to_string())
}

/// A failed compile: the compiler's last lines, and the static C library
/// as the usual missing piece.
fn compile_error(arch: &KernelArch, cc: &str, stderr: &str) -> StageError {
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let libc = if arch.is_native() && cc == "gcc" {
        "libc6-dev".to_string()
    } else {
        format!("libc6-dev-{}-cross", debian_arch(arch.name))
    };
    StageError::command(format!(
        "qemu verifier: compiling the boot-check init with {cc} -static failed"
    ))
    .caused_by(std::io::Error::other(tail.join(" / ")))
    .with_hint(format!(
        "a static C library is needed (apt-get install {libc})"
    ))
}

fn debian_arch(kbuild: &str) -> &str {
    match kbuild {
        "x86_64" => "amd64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_choice_and_the_package_to_install() {
        let host = ktstr_sdk::arch::host();
        assert_eq!(compiler(host, |p| p == "gcc").unwrap(), "gcc");
        let arm = ktstr_sdk::arch::find("arm64").unwrap();
        if !arm.is_native() {
            assert_eq!(
                compiler(arm, |p| p == "aarch64-linux-gnu-gcc").unwrap(),
                "aarch64-linux-gnu-gcc"
            );
            let err = compiler(arm, |_| false).unwrap_err();
            assert!(err.message.contains("aarch64-linux-gnu-gcc"), "{err}");
            assert_eq!(
                err.hint.as_deref(),
                Some("install it: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
            );
        }
        let err = compiler(host, |_| false).unwrap_err();
        assert!(
            err.hint.clone().unwrap().contains("apt-get install"),
            "{err}"
        );
    }

    #[test]
    fn cache_name_follows_the_compiler() {
        let a = cached_name(
            "x86_64",
            "gcc (Debian 12.2.0-14) 12.2.0",
            "x86_64-linux-gnu",
        );
        let b = cached_name(
            "x86_64",
            "gcc (Debian 12.2.0-15) 12.2.0",
            "x86_64-linux-gnu",
        );
        assert_ne!(a, b);
        assert!(a.starts_with("init-x86_64-") && a.len() == "init-x86_64-".len() + 16);
        assert_eq!(
            a,
            cached_name(
                "x86_64",
                "gcc (Debian 12.2.0-14) 12.2.0",
                "x86_64-linux-gnu"
            )
        );
    }

    /// Compiles for real when the host has gcc and a static libc, then
    /// serves the second call from the cache (the compiler is not run).
    #[test]
    fn compiles_once_then_reuses() {
        let host = ktstr_sdk::arch::host();
        if !on_path("gcc") {
            ktstr_sdk::testing::skip("init compile: gcc missing (apt-get install gcc libc6-dev)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let runner = std::sync::Arc::new(ktstr_sdk::testing::RecordingRunner::default());
        let (cx, _) = ktstr_sdk::testing::context_with(runner.clone());
        let state = dir.path().join("state");
        let first = binary(host, &state, dir.path(), &cx).unwrap();
        assert_eq!(&first[..4], b"\x7fELF");
        let compiles = |r: &ktstr_sdk::testing::RecordingRunner| {
            r.specs()
                .iter()
                .filter(|s| s.args.iter().any(|a| a == "-static"))
                .count()
        };
        assert_eq!(compiles(&runner), 1);
        let second = binary(host, &state, dir.path(), &cx).unwrap();
        assert_eq!(first, second);
        assert_eq!(compiles(&runner), 1, "the cached init was rebuilt");
        let files: Vec<_> = std::fs::read_dir(&state).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "temporary files left: {files:?}");
    }

    /// The arm64 init with the cross gcc: an aarch64 ELF where the cross
    /// C library is installed, else an error naming its package (the
    /// kernel cross build needs the compiler, not the library).
    #[test]
    fn arm64_init_or_the_cross_libc_to_install() {
        let arm = ktstr_sdk::arch::find("arm64").unwrap();
        if arm.is_native() || !on_path("aarch64-linux-gnu-gcc") {
            ktstr_sdk::testing::skip(
                "arm64 init: aarch64-linux-gnu-gcc missing (apt-get install gcc-aarch64-linux-gnu)",
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        match binary(arm, &state, dir.path(), &StageContext::quiet()) {
            // e_machine 0xB7: EM_AARCH64.
            Ok(elf) => assert_eq!((&elf[..4], elf[18]), (&b"\x7fELF"[..], 0xB7)),
            Err(e) => {
                assert!(
                    e.message.contains("aarch64-linux-gnu-gcc -static failed"),
                    "{e}"
                );
                let hint = e.hint.unwrap_or_default();
                assert!(hint.contains("libc6-dev-arm64-cross"), "{hint}");
                let left = std::fs::read_dir(&state).map_or(0, |d| d.count());
                assert_eq!(left, 0, "a failed compile left files");
            }
        }
    }
}
