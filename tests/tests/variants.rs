//! Build variants are inputs: every kbuild variable in the environment
//! changes the key or is refused, `--arch`/`--toolchain`/`--kconfig` get
//! their own entries, an entry whose recorded inputs differ is never
//! served, and `--output` leaves the source tree untouched.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use common::{Fixture, git};
use ktstr_sdk::make_env::{Policy, VARIABLES};

/// A value a fixture build accepts for `var` (the identity probes run the
/// compiler, linker and assembler given).
fn value_for(var: &str) -> &'static str {
    match var {
        "CC" | "HOSTCC" => "gcc",
        "HOSTCXX" => "g++",
        "LD" => "ld.bfd",
        "AS" => "as",
        "KCFLAGS" => "-O1",
        _ => "ktstr-test-value",
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[test]
fn every_documented_variable_changes_the_key_or_is_refused() {
    let fx = Fixture::git();
    let base = fx.build(&[]);
    base.assert_ok();
    let base_key = base.cached_key();
    let mut keys = HashSet::from([base_key.clone()]);
    let args = fx.build_args(&[]);
    let mut checked = 0;
    for (var, policy) in VARIABLES {
        let mut cmd = fx.command(&args);
        cmd.env(var, value_for(var));
        let run = fx.run_cmd(cmd, &args);
        match policy {
            Policy::Input => {
                run.assert_ok();
                let key = run.cached_key();
                assert!(
                    keys.insert(key.clone()),
                    "{var} gave key {key}, which another input already had\n{}",
                    run.describe()
                );
                let meta =
                    fs::read_to_string(fx.kernels_dir().join(&key).join("metadata.json")).unwrap();
                let recorded = if *var == "KCFLAGS" {
                    "KCFLAGS=-Wno-error -O1".to_string()
                } else {
                    format!("{var}={}", value_for(var))
                };
                assert!(
                    meta.contains(&recorded),
                    "{var} is not recorded in the entry's inputs\n{meta}"
                );
            }
            Policy::UseFlag(flag) => {
                run.assert_fails().assert_hint();
                run.assert_stderr_has(&format!("{var}={}", value_for(var)));
                let flag = flag.split_whitespace().next().unwrap();
                run.assert_stderr_has(flag);
            }
            Policy::Refused(_) => {
                run.assert_fails().assert_hint();
                run.assert_stderr_has(&format!("{var}={}", value_for(var)));
            }
            Policy::Dropped(_) => {
                // Not read by a build: the plain entry is the right one,
                // and the user is told the variable was not passed.
                assert_eq!(run.hit_key(), base_key, "{}", run.describe());
                run.assert_stderr_has(&format!("not passing {var} from the environment"));
            }
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} variables in the table");

    // Any other KBUILD_*/KCONFIG_* variable is refused too.
    for var in [
        "KBUILD_EXTRA_SYMBOLS",
        "KCONFIG_CONFIG",
        "KBUILD_SOMETHING_NEW",
    ] {
        let mut cmd = fx.command(&args);
        cmd.env(var, "x");
        fx.run_cmd(cmd, &args)
            .assert_fails()
            .assert_stderr_has(&format!("{var}=x"));
    }

    // The same input again is a hit on its own entry, not the plain one.
    let mut cmd = fx.command(&args);
    cmd.env("KCFLAGS", "-O1");
    let again = fx.run_cmd(cmd, &args);
    assert_ne!(again.hit_key(), base_key, "{}", again.describe());
    let mut image = fs::read_to_string(again.image_path()).unwrap();
    assert!(image.contains("KCFLAGS=-Wno-error -O1"), "{image}");
    // And the plain build still hits the plain entry.
    let plain = fx.build(&[]);
    assert_eq!(plain.hit_key(), base_key);
    image = fs::read_to_string(plain.image_path()).unwrap();
    assert!(!image.contains("-O1"), "{image}");
}

#[test]
fn kconfig_flag_equals_a_fragment_with_the_same_line() {
    let fx = Fixture::git();
    let frag = fx.write_file("x.kconfig", "CONFIG_FIXTURE_X=y\n");
    let with_file = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    let key = with_file.cached_key();
    let with_flag = fx.build(&["--kconfig", "CONFIG_FIXTURE_X=y"]);
    assert_eq!(with_flag.hit_key(), key, "{}", with_flag.describe());
    let other = fx.build(&["--kconfig", "CONFIG_FIXTURE_X=n"]);
    assert_ne!(other.cached_key(), key);
    fx.build(&["--kconfig", "NOT A LINE"])
        .assert_fails()
        .assert_stderr_has("--kconfig NOT A LINE");
}

#[test]
fn toolchain_and_arch_variants_get_their_own_entries() {
    let fx = Fixture::git();
    let gcc = fx.build(&[]).cached_key();
    let mut keys = vec![gcc.clone()];

    if which("clang") && which("ld.lld") {
        let llvm = fx.build(&["--toolchain", "llvm"]);
        let key = llvm.cached_key();
        assert!(!keys.contains(&key), "{}", llvm.describe());
        let image = fs::read_to_string(llvm.image_path()).unwrap();
        assert!(image.contains("CC=clang"), "{image}");
        assert_eq!(fx.build(&["--toolchain", "llvm"]).hit_key(), key);
        keys.push(key);
    } else {
        ktstr_sdk::testing::skip("clang/ld.lld not installed: --toolchain llvm not checked");
    }

    if which("aarch64-linux-gnu-gcc") {
        let arm = fx.build(&["--arch", "aarch64"]);
        let key = arm.cached_key();
        assert!(key.starts_with("6.99.0-local-arm64-"), "{}", arm.describe());
        assert!(!keys.contains(&key));
        let image = arm.image_path();
        assert_eq!(image.file_name().unwrap(), "Image");
        let text = fs::read_to_string(&image).unwrap();
        assert!(
            text.contains("ARCH=arm64 CC=aarch64-linux-gnu-gcc"),
            "{text}"
        );
        let vmlinux = image.with_file_name("vmlinux");
        assert!(common::elf_machine(&vmlinux).contains("AArch64"));
        assert_eq!(fx.build(&["--arch", "arm64"]).hit_key(), key);
        let listed = fx.list_json();
        assert!(
            listed
                .iter()
                .any(|e| e["key"] == key && e["arch"] == "arm64")
        );
        keys.push(key);
    } else {
        ktstr_sdk::testing::skip("aarch64-linux-gnu-gcc not installed: --arch arm64 not checked");
    }

    // Nothing hit anything else, and the plain build still hits its own.
    assert_eq!(fx.build(&[]).hit_key(), gcc);

    fx.run(&fx.build_args(&["--arch", "vax"]))
        .assert_no_panic()
        .assert_stderr_has("vax");
    assert_eq!(fx.build(&["--arch", "vax"]).code(), Some(2));
    assert_eq!(fx.build(&["--toolchain", "icc"]).code(), Some(2));
    fx.build(&["--arch", "riscv", "--cross-compile", "ktstr-no-such-"])
        .assert_fails()
        .assert_stderr_has("ktstr-no-such-gcc");
}

#[test]
fn missing_cross_compiler_names_the_package() {
    let fx = Fixture::git();
    // A PATH with make and the host gcc but no cross compilers.
    let path = common::path_without(fx.root.path(), &["s390x-linux-gnu-gcc"]);
    let args = fx.build_args(&["--arch", "s390"]);
    let mut cmd = fx.command(&args);
    cmd.env("PATH", path);
    fx.run_cmd(cmd, &args)
        .assert_fails()
        .assert_hint()
        .assert_stderr_has("s390x-linux-gnu-gcc")
        .assert_stderr_has("apt-get install gcc-s390x-linux-gnu");
}

/// A kbuild variable whose value is not UTF-8 cannot be recorded in the
/// key: refused, naming it. A variable that is not kbuild's is left alone.
#[test]
fn a_kbuild_variable_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::git();
    let args = fx.build_args(&[]);
    let bytes = std::ffi::OsStr::from_bytes(b"-O2 \xff");
    let mut cmd = fx.command(&args);
    cmd.env("KCFLAGS", bytes);
    fx.run_cmd(cmd, &args)
        .assert_fails()
        .assert_hint()
        .assert_stderr_has("KCFLAGS=")
        .assert_stderr_has("not UTF-8");
    fx.assert_nothing_cached();
    let mut cmd = fx.command(&args);
    cmd.env("KTSTR_TEST_UNRELATED", bytes);
    fx.run_cmd(cmd, &args).assert_ok();
}

/// Rewrite one recorded input of the entry `key`.
fn tamper(fx: &Fixture, key: &str, component: &str) {
    let path = fx.kernels_dir().join(key).join("metadata.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let comps = meta["components"].as_array_mut().unwrap();
    let c = comps
        .iter_mut()
        .find(|c| c["name"] == component)
        .unwrap_or_else(|| panic!("no {component} component"));
    c["value"] = format!("{} (tampered)", c["value"].as_str().unwrap()).into();
    fs::write(&path, serde_json::to_string_pretty(&meta).unwrap()).unwrap();
}

#[test]
fn an_entry_built_from_other_inputs_is_never_served() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    for component in ["toolchain", "builder", "source", "config", "arch"] {
        tamper(&fx, &key, component);
        let run = fx.build(&[]);
        run.assert_ok()
            .assert_stderr_has(&format!(
                "entry {key} in the local cache was built from other inputs ({component} \
                 differs); rebuilding"
            ))
            .assert_stderr_lacks("cache hit");
        // The rebuild replaced it: the next run is a clean hit.
        assert_eq!(run.cached_key(), key);
        let again = fx.build(&[]);
        assert_eq!(again.hit_key(), key);
        again.assert_stderr_lacks("other inputs");
    }
}

#[test]
fn old_format_entries_are_listed_as_such_and_cleaned() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    let old_key = format!("{}1a2b3c4d", &key[..key.len() - 16]);
    let old = fx.kernels_dir().join(&old_key);
    common::copy_dir(&fx.kernels_dir().join(&key), &old);
    let meta_path = old.join("metadata.json");
    let meta = fs::read_to_string(&meta_path)
        .unwrap()
        .replace(&key, &old_key);
    fs::write(&meta_path, meta).unwrap();

    let listed = fx.list_json();
    let row = listed
        .iter()
        .find(|e| e["key"] == old_key)
        .expect("old entry listed");
    assert_eq!(row["status"], "old-format");
    let table = fx.run(&["kernel", "list"]);
    assert!(table.stdout.contains("old format"), "{}", table.describe());

    // --keep 5 keeps the current entry but never an old-format one.
    fx.run(&["kernel", "clean", "--keep", "5", "--force"])
        .assert_ok();
    assert!(!old.exists());
    assert!(fx.kernels_dir().join(&key).exists());
}

#[test]
fn out_of_tree_build_leaves_the_source_untouched_and_hits() {
    let fx = Fixture::git();
    let out = fx.root.path().join("build-out");
    let out_arg = out.to_str().unwrap();
    let first = fx.build(&["--output", out_arg]);
    let key = first.cached_key();
    assert_eq!(
        git(&fx.tree, &["status", "--porcelain", "--ignored"]),
        "",
        "the source tree was written\n{}",
        first.describe()
    );
    assert!(out.join(".config").is_file());
    assert!(out.join("arch/x86/boot/bzImage").is_file() || out.join("arch").is_dir());
    let again = fx.build(&["--output", out_arg]);
    assert_eq!(again.hit_key(), key, "{}", again.describe());

    // An in-tree build of the same commit and config is the same kernel.
    let in_tree = fx.build(&[]);
    assert_eq!(in_tree.hit_key(), key, "{}", in_tree.describe());

    // A relative --output is taken from the current directory.
    let rel = fx.build(&["--output", "rel-out", "--force"]);
    rel.assert_ok();
    assert!(fx.root.path().join("rel-out/.config").is_file());

    // The source tree itself is refused.
    fx.build(&["--output", fx.tree.to_str().unwrap()])
        .assert_fails()
        .assert_stderr_has("is the source tree itself");
}

#[test]
fn dirty_tree_with_output_is_built_but_not_cached() {
    let fx = Fixture::git();
    fx.dirty_tracked_file();
    let out = fx.root.path().join("o");
    let run = fx.build(&["--output", out.to_str().unwrap()]);
    run.assert_ok().assert_stderr_has("not cached");
    assert!(run.image_path().starts_with(&out) || run.image_path().starts_with(fx.root.path()));
    fx.assert_nothing_cached();
}

#[test]
fn output_dir_is_not_the_place_for_the_tree_lock() {
    // Two output dirs of one tree lock separately: both builds run while
    // the first is still going.
    let fx = Fixture::git();
    let a = fx.root.path().join("out-a");
    let b = fx.root.path().join("out-b");
    let mut slow = fx.spawn_build(
        &["--output", a.to_str().unwrap(), "--reserver", "none"],
        &[("KTSTR_FIXTURE_BUILD_SECONDS", "4")],
    );
    fx.wait_for_build_start(1, &mut slow, std::time::Duration::from_secs(30));
    let fast = fx.build(&[
        "--output",
        b.to_str().unwrap(),
        "--reserver",
        "none",
        "--kconfig",
        "CONFIG_FIXTURE_OTHER=y",
    ]);
    fast.assert_ok()
        .assert_stderr_lacks("locked by another build");
    slow.wait(std::time::Duration::from_secs(60)).assert_ok();
    assert!(Path::new(&b).join(".config").is_file());
}
