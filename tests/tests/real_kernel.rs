//! Build Debian's `linux-source-6.12` with the `tiny` profile, then hit the
//! cache: first an arm64 cross build and an LLVM build, both out of tree
//! (`--output`, so the one unpacked tree stays clean for them all), then the
//! in-tree gcc build. Runs where the source package and the toolchains are
//! installed (CI: `.ci/run`); elsewhere it prints why it skips (a missing
//! cross or LLVM toolchain skips only that variant). Between the variants and
//! the in-tree build, a kill -9 mid-compile (out of tree too) must leave no
//! process behind. The arm64 entry boots under qemu-system-aarch64 right
//! after its build; last, the in-tree entry boots under qemu (`real/boot.rs`).
//! One test, one unpacked tree: CI pays for one extraction.

#[path = "real/boot.rs"]
mod boot;
mod common;
#[path = "wrapper_daemons/mod.rs"]
mod daemons;
#[path = "real/wrappers.rs"]
mod real_wrappers;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, assert_stripped_vmlinux, canon};

const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const PACKAGES: &str = "linux-source-6.12 build-essential flex bison bc libelf-dev libssl-dev dwarves cpio xz-utils python3";

use ktstr_sdk::testing::on_path;

fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new(TARBALL).is_file() {
        missing.push(TARBALL.to_string());
    }
    for program in [
        "make", "gcc", "flex", "bison", "bc", "pahole", "git", "objcopy", "readelf", "xz",
        "python3",
    ] {
        if !on_path(program) {
            missing.push(program.to_string());
        }
    }
    if !Path::new("/usr/include/libelf.h").is_file() && !Path::new("/usr/include/gelf.h").is_file()
    {
        missing.push("libelf.h".to_string());
    }
    missing
}

/// Extract the tarball into `dir`, returning the tree.
fn extract(dir: &Path) -> PathBuf {
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(TARBALL)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar");
    assert!(status.success(), "extracting {TARBALL} failed");
    let tree = dir.join("linux-source-6.12");
    assert!(
        tree.join("Makefile").is_file(),
        "{} has no Makefile",
        tree.display()
    );
    tree
}

/// Debian's tarball ends `.gitignore` with a packaging block that ignores
/// everything at the top level (`/*`, `!/debian/`); drop it so the tree can
/// be committed.
fn drop_debian_gitignore_block(tree: &Path) {
    let path = tree.join(".gitignore");
    let text = fs::read_to_string(&path).unwrap();
    let mut kept = Vec::new();
    for line in text.lines() {
        if line == "/*" {
            break;
        }
        kept.push(line);
    }
    fs::write(&path, kept.join("\n") + "\n").unwrap();
}

/// `(cmdline, Cpus_allowed_list)` of every make running in a ktstr sandbox.
fn sandboxed_makes() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "make" {
            continue;
        }
        let cgroup = fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        if !cgroup.contains("/ktstr-") {
            continue;
        }
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let cmdline = fs::read_to_string(dir.join("cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        found.push((cmdline, cpus));
    }
    found
}

#[test]
fn real_kernel_tiny_build_then_cache_hit() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        ktstr_sdk::testing::skip(format!(
            "real-kernel test: {} missing (apt-get install {PACKAGES})",
            missing.join(", ")
        ));
        return;
    }

    let root = tempfile::Builder::new()
        .prefix("ktstr-real-")
        .tempdir()
        .unwrap();
    let tree = extract(root.path());
    drop_debian_gitignore_block(&tree);
    common::git_init_commit(&tree);
    let fx = Fixture {
        cache: root.path().join("cache"),
        make_log: root.path().join("make.log"),
        tree,
        root,
        env: Vec::new(),
    };
    let variant_keys = out_of_tree_variants(&fx);
    kill_9_mid_compile_leaves_no_process(&fx);

    // `--cpu-cap 2`: make must run with -j2 inside a ktstr cpuset of the two
    // reserved CPUs (one-CPU confinement is the fixture tests' job; here both
    // CPUs keep CI time down). Watch the build's make processes while it runs.
    let mut spawned = fx.spawn_build(&["--profile", "tiny", "--cpu-cap", "2"], &[]);
    let mut seen = Vec::new();
    while spawned.child.try_wait().unwrap().is_none() {
        seen.extend(sandboxed_makes());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let first = spawned.wait(std::time::Duration::from_secs(5));
    if nix::unistd::Uid::effective().is_root() {
        assert!(
            !seen.is_empty(),
            "no make ran in a ktstr cpuset\n{}",
            first.describe()
        );
        for (_, cpus) in &seen {
            assert_eq!(
                cpu_count(cpus),
                2,
                "make ran on {cpus:?}, not the two reserved CPUs"
            );
        }
        // The build's make carries -j2; configuring and kbuild's sub-makes
        // carry no -j on their command line (they inherit it via MAKEFLAGS).
        let jobs: Vec<&str> = seen
            .iter()
            .flat_map(|(cmdline, _)| cmdline.split(' '))
            .filter(|arg| arg.starts_with("-j"))
            .collect();
        assert!(jobs.contains(&"-j2"), "no make -j2 among {seen:?}");
        assert!(jobs.iter().all(|j| *j == "-j2"), "{jobs:?}");
    } else {
        ktstr_sdk::testing::skip("the cpuset part of the real-kernel test: not root");
    }
    let image = first.image_path();
    let key = first.cached_key();
    assert!(
        key.starts_with("6.12.") && key.contains("-local-x86_64-"),
        "key {key}\n{}",
        first.describe()
    );
    assert!(
        canon(&image).starts_with(canon(&fx.kernels_dir())),
        "{}",
        first.describe()
    );
    let entry = image.parent().unwrap();
    assert_eq!(image.file_name().unwrap(), "bzImage");
    for name in ["vmlinux", "config", "metadata.json"] {
        assert!(entry.join(name).is_file(), "entry lacks {name}");
    }
    assert_stripped_vmlinux(&entry.join("vmlinux"));
    let config = fs::read_to_string(entry.join("config")).unwrap();
    common::assert_required_symbols(&config);
    assert!(
        fx.tree.join("compile_commands.json").is_file(),
        "compile_commands.json missing in the tree"
    );
    assert_eq!(
        common::git(&fx.tree, &["status", "--porcelain"]),
        "",
        "building dirtied the tree"
    );

    let second = fx.build(&["--profile", "tiny"]);
    assert_eq!(second.image_path(), image);
    // The hit message is printed only on the path that runs no make; how
    // fast that is lives in tests/bench/cache-hit.sh, not in a timed test.
    assert_eq!(second.hit_key(), key, "{}", second.describe());
    assert!(
        !variant_keys.contains(&key),
        "the gcc x86 build shares a key with a variant: {variant_keys:?}"
    );
    boot::boot_checks(&image, &entry.join("config"));

    // The "done when", through the CLI: `--verify` on the hit boots
    // the entry under the built-in qemu verifier and records the verdict in
    // its metadata and `kernel list`. TCG straight away: KVM on CI-like VMs
    // can hang, which the verifier only detects after 10 silent seconds.
    let verify_args = fx.build_args(&["--profile", "tiny", "--verify"]);
    let mut verify_cmd = fx.command(&verify_args);
    verify_cmd.env("KTSTR_QEMU_ACCEL", "tcg");
    let verified = fx.run_cmd(verify_cmd, &verify_args);
    verified.assert_ok().assert_stderr_has("boot check passed");
    assert_eq!(verified.hit_key(), key, "{}", verified.describe());
    let metadata: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(entry.join("metadata.json")).unwrap()).unwrap();
    let verdict = &metadata["verify"];
    assert_eq!(verdict["passed"], true, "{metadata:#}");
    assert_eq!(verdict["verifier"], "qemu", "{metadata:#}");
    assert_eq!(verdict["observed"]["sched_ext"], "disabled", "{metadata:#}");
    assert_eq!(verdict["observed"]["btf"], "present", "{metadata:#}");
    let listed = fx.run(&["kernel", "list", "--json"]);
    listed.assert_ok();
    let rows = listed.json();
    let row = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == key.as_str()))
        .unwrap_or_else(|| panic!("{key} not in kernel list --json: {rows:#}"));
    assert_eq!(row["verify"]["passed"], true, "{row:#}");

    real_wrappers::wrapper_builds(&fx, &key);
}

/// How many CPUs a cpuset list (`0-1`, `3`, `0,2`) names.
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => part.parse::<usize>().map(|_| 1).unwrap(),
        })
        .sum()
}

/// The `.comment` section of an ELF file (the compilers that built it).
fn elf_comment(path: &Path) -> String {
    let out = Command::new("readelf")
        .args(["-p", ".comment"])
        .arg(path)
        .output()
        .expect("run readelf");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Build the arm64 cross and LLVM variants out of tree at `--cpu-cap 2`,
/// check each is what it claims, is cached under its own key and hits on a
/// re-run, and that the source tree was never written. Returns their keys.
fn out_of_tree_variants(fx: &Fixture) -> Vec<String> {
    // Debian's tarball already holds files git ignores (dotfiles the kernel's
    // .gitignore lists); "untouched" means that list does not change either.
    let pristine = common::git(&fx.tree, &["status", "--porcelain", "--ignored"]);
    let mut keys: Vec<String> = Vec::new();
    let mut variants: Vec<(&str, Vec<&str>)> = Vec::new();
    if on_path("aarch64-linux-gnu-gcc") {
        variants.push(("arm64", vec!["--arch", "arm64"]));
    } else {
        ktstr_sdk::testing::skip(
            "real-kernel arm64 cross build: aarch64-linux-gnu-gcc missing \
             (apt-get install gcc-aarch64-linux-gnu)",
        );
    }
    if on_path("clang") && on_path("ld.lld") && on_path("llvm-objcopy") {
        variants.push(("llvm", vec!["--toolchain", "llvm"]));
    } else {
        ktstr_sdk::testing::skip(
            "real-kernel LLVM build: clang/ld.lld/llvm missing (apt-get install clang lld llvm)",
        );
    }
    for (name, flags) in variants {
        let out = fx.root.path().join(format!("out-{name}"));
        let out_arg = out.to_str().unwrap().to_string();
        let mut args = vec!["--profile", "tiny", "--cpu-cap", "2", "--output", &out_arg];
        args.extend(flags.iter().copied());
        let run = fx.build(&args);
        let image = run.image_path();
        let key = run.cached_key();
        assert!(
            !keys.contains(&key),
            "{name}: key {key} reused\n{}",
            run.describe()
        );
        let entry = image.parent().unwrap();
        let vmlinux = entry.join("vmlinux");
        assert_stripped_vmlinux(&vmlinux);
        match name {
            "arm64" => {
                assert!(key.contains("-local-arm64-"), "{key}");
                assert_eq!(image.file_name().unwrap(), "Image");
                assert_eq!(
                    common::elf_machine(&vmlinux),
                    "AArch64",
                    "{}",
                    vmlinux.display()
                );
                // The arm64 boot image's header carries the "ARM\x64" magic at 56.
                let bytes = fs::read(&image).unwrap();
                assert_eq!(&bytes[56..60], b"ARM\x64", "not an arm64 Image");
                // The cross-built kernel boots (virt machine, PL011 console
                // from the tiny profile's arm64 fragment), sched_ext-ready.
                boot::arm64_boots(&image, &entry.join("config"));
            }
            _ => {
                assert!(key.contains("-local-x86_64-"), "{key}");
                assert!(common::elf_machine(&vmlinux).contains("X86-64"));
                let comment = elf_comment(&vmlinux);
                assert!(comment.contains("clang"), "{name}: .comment: {comment}");
            }
        }
        assert!(
            common::git(&fx.tree, &["status", "--porcelain", "--ignored"]) == pristine,
            "{name}: the out-of-tree build wrote into the source tree"
        );
        let again = fx.build(&args);
        assert_eq!(again.hit_key(), key, "{name}\n{}", again.describe());
        keys.push(key);
    }
    keys
}

/// Whether `cmdline` (a compiler's) compiles a kernel object rather than a
/// host tool of the configuration step.
fn compiles_kernel_code(cmdline: &str) -> bool {
    // In-tree builds name sources relative (`init/main.c`), out-of-tree
    // builds by the source tree's absolute path (`/src/linux/init/main.c`).
    cmdline.split(' ').any(|arg| {
        arg.ends_with(".c")
            && [
                "init/",
                "kernel/",
                "mm/",
                "lib/",
                "fs/",
                "block/",
                "security/",
            ]
            .iter()
            .any(|dir| arg.starts_with(dir) || arg.contains(&format!("/{dir}")))
    })
}

/// `kill -9` of ktstr while kbuild compiles the real kernel: within a few
/// seconds no make, shell or compiler of the build runs in the tree any
/// more and the tree lock is free. Stops long before a full build.
/// kill -9 of ktstr while gcc compiles kernel code (out of tree, in a cache
/// root of its own): no make or compiler survives it, the build directory's
/// lock is free, nothing is cached.
fn kill_9_mid_compile_leaves_no_process(shared: &Fixture) {
    let root = tempfile::Builder::new()
        .prefix("ktstr-real-kill-")
        .tempdir()
        .unwrap();
    let out = root.path().join("out-kill");
    let fx = Fixture {
        cache: root.path().join("cache"),
        make_log: root.path().join("make.log"),
        tree: shared.tree.clone(),
        root,
        env: Vec::new(),
    };
    let out_arg = out.to_str().unwrap().to_string();
    let mut victim = fx.spawn_build(
        &[
            "--profile",
            "tiny",
            "--reserver",
            "none",
            "--output",
            &out_arg,
        ],
        &[],
    );
    let start = std::time::Instant::now();
    let compiling = loop {
        let procs = if out.exists() {
            common::processes_in(&out)
        } else {
            Vec::new()
        };
        if let Some(p) = procs.iter().find(|(_, _, cmd)| compiles_kernel_code(cmd)) {
            break p.clone();
        }
        if victim.child.try_wait().unwrap().is_some() {
            let run = victim.wait(std::time::Duration::from_secs(5));
            panic!("ktstr ended before compiling\n{}", run.describe());
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(900),
            "no kernel object compiled within 15 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // Let make fan out its jobs and sub-makes.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = common::processes_in(&out);
    assert!(
        before.iter().any(|(_, comm, _)| comm == "make"),
        "no make in {before:?}"
    );
    victim.child.kill().unwrap();
    // `wait`'s timeout counts from the spawn, minutes ago.
    let timeout = victim.start.elapsed() + std::time::Duration::from_secs(30);
    let killed = victim.wait(timeout);
    assert!(killed.code().is_none(), "{}", killed.describe());
    // The top make runs in the source tree, the rest in the output dir.
    for dir in [&out, &fx.tree] {
        common::assert_nothing_runs_in(
            dir,
            std::time::Duration::from_secs(5),
            &format!("compiling {compiling:?}; before the kill: {before:?}"),
        );
    }
    common::assert_tree_lock_free(&fx.cache, &fs::canonicalize(&out).unwrap());
    assert!(
        fx.entries_on_disk().is_empty(),
        "{:?}",
        fx.entries_on_disk()
    );
}
