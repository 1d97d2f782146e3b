//! Dynamic plugins end to end: fixture and example cdylibs loaded into the
//! real `ktstr` binary with `--plugin`.
//!
//! `cargo test` does not build cdylibs, so the first test to need them runs
//! `$CARGO build -p <fixture>...` into this test's target directory. Each
//! test then gets a private install: a hard link of `ktstr` in `<tmp>/bin`
//! (its own directory is a plugin search directory, and the target
//! directory holds every fixture) and the libraries in `<tmp>/libs`, which
//! the test names in `KTSTR_PLUGIN_PATH` when it wants name resolution.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{Fixture, Run};

const LIBS: [&str; 8] = [
    "ktstr-plugin-fixture-ok",
    "ktstr-plugin-fixture-error",
    "ktstr-plugin-fixture-panic",
    "ktstr-plugin-fixture-root-panic",
    "ktstr-plugin-fixture-old-abi",
    "ktstr-plugin-fixture-not-a-plugin",
    "ktstr-plugin-shared-dir-cache",
    "ktstr-plugin-fixed-cpus",
];

/// `<target>/<profile>` after building ktstr and every plugin crate.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bin = common::ktstr_bin();
        let profile_dir = bin.parent().unwrap().to_path_buf();
        let target = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--profile", &profile])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(target)
            .stdin(Stdio::null());
        for lib in LIBS {
            cmd.args(["-p", lib]);
        }
        let out = cmd.output().expect("run cargo");
        assert!(
            out.status.success(),
            "building the plugin fixtures failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir
    })
}

fn lib_file(krate: &str) -> String {
    format!("lib{}.so", krate.replace('-', "_"))
}

/// A private installation of ktstr plus the plugin libraries.
struct Install {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    libs: PathBuf,
    root: PathBuf,
}

fn link_or_copy(from: &Path, to: &Path) {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).unwrap();
    }
}

impl Install {
    fn new() -> Install {
        let built = built();
        let dir = tempfile::Builder::new()
            .prefix("ktstr-plugins-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("libs")).unwrap();
        let bin = root.join("bin/ktstr");
        link_or_copy(&built.join("ktstr"), &bin);
        for lib in LIBS {
            let name = lib_file(lib);
            link_or_copy(&built.join(&name), &root.join("libs").join(&name));
        }
        Install {
            bin,
            libs: root.join("libs"),
            root,
            _dir: dir,
        }
    }

    fn lib(&self, krate: &str) -> String {
        self.libs
            .join(lib_file(krate))
            .to_str()
            .unwrap()
            .to_string()
    }

    /// Like `Fixture::command`, with this installation's binary and
    /// `KTSTR_PLUGIN_PATH` naming the library directory.
    fn run(&self, fx: &Fixture, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KTSTR_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("KTSTR_CACHE_DIR", &fx.cache)
            .env("KTSTR_FIXTURE_MAKE_LOG", &fx.make_log)
            .env("KTSTR_PLUGIN_PATH", &self.libs)
            .env("KTSTR_SHARED_CACHE_DIR", fx.root.path().join("shared"))
            .env("XDG_CONFIG_HOME", fx.root.path().join("xdg-config"))
            .env("XDG_DATA_HOME", fx.root.path().join("xdg-data"))
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .current_dir(fx.root.path())
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        fx.run_cmd(cmd, args)
    }
}

/// The host did not crash: no abort, no stray panic report from either
/// side's std (a plugin panic is reported as one `panicked in` error).
#[track_caller]
fn assert_no_crash(run: &Run, code: i32) {
    assert_eq!(run.code(), Some(code), "{}", run.describe());
    assert!(
        !run.stderr.contains("thread '") && !run.stderr.contains("RUST_BACKTRACE"),
        "a raw panic report reached the user\n{}",
        run.describe()
    );
}

fn build_args<'a>(fx: &'a Fixture, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["build", "--kernel", fx.tree.to_str().unwrap()];
    args.extend_from_slice(extra);
    args
}

#[test]
fn shared_dir_cache_plugin_stores_lists_hits_and_cleans() {
    let inst = Install::new();
    let fx = Fixture::git();
    let plugin = ["--plugin", "shared-dir-cache"];
    let run = inst.run(&fx, &[], &build_args(&fx, &plugin));
    run.image_path();
    let key = run.cached_key();
    let shared = fx.root.path().join("shared/kernels").join(&key);
    assert!(
        shared.join("metadata.json").is_file() && shared.join("bzImage").is_file(),
        "the shared tier lacks {key}\n{}",
        run.describe()
    );

    let list = inst.run(
        &fx,
        &[],
        &["kernel", "list", "--json", "--plugin", "shared-dir-cache"],
    );
    list.assert_ok();
    let rows = list.json();
    let tiers: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"] == key.as_str())
        .map(|r| r["tier"].as_str().unwrap())
        .collect();
    assert_eq!(
        tiers,
        ["local-cache", "shared-dir-cache"],
        "{}",
        list.describe()
    );

    // Another machine (a fresh local cache) hits in the shared tier.
    fs::remove_dir_all(&fx.cache).unwrap();
    let hit = inst.run(&fx, &[], &build_args(&fx, &plugin));
    hit.image_path();
    assert_eq!(hit.hit_key(), key, "{}", hit.describe());
    assert_eq!(fx.build_count(), 1, "the hit must not build again");

    let clean = inst.run(
        &fx,
        &[],
        &["kernel", "clean", "--force", "--plugin", "shared-dir-cache"],
    );
    clean.assert_ok().assert_stderr_has("removed 2 entries");
    assert!(!shared.exists(), "{}", clean.describe());
}

#[test]
fn every_stage_kind_runs_across_the_plugin_boundary() {
    let inst = Install::new();
    let fx = Fixture::git();
    let log = fx.root.path().join("plugin.log");
    let spec = format!("fixture:{}", fx.tree.display());
    let lib = inst.lib("ktstr-plugin-fixture-ok");
    let run = inst.run(
        &fx,
        &[
            ("KTSTR_FIXTURE_PLUGIN_LOG", log.to_str().unwrap()),
            ("RUST_LOG", "ktstr::plugin=info"),
        ],
        &["build", "--kernel", &spec, "--plugin", &lib],
    );
    run.image_path();
    let key = run.cached_key();
    let log = fs::read_to_string(&log).unwrap_or_default();
    for want in [
        "source acquire",
        "forwarded",
        "reserve jobs=",
        "configure",
        "build jobs=",
        &format!("cache lookup {key}"),
        &format!("cache store {key}"),
        "reservation released",
    ] {
        assert!(
            log.contains(want),
            "plugin log lacks {want:?}:\n{log}\n{}",
            run.describe()
        );
    }
    // The plugin's tracing output reached the host's log.
    run.assert_stderr_has("plugin fixture-ok");
    run.assert_stderr_has("fixture source acquiring");
}

#[test]
fn a_plugin_error_reaches_the_user_with_its_hint() {
    let inst = Install::new();
    let fx = Fixture::git();
    let lib = inst.lib("ktstr-plugin-fixture-error");
    let run = inst.run(&fx, &[], &build_args(&fx, &["--plugin", &lib]));
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has("fixture-error-reserver: no CPUs for this build")
        .assert_stderr_has("the fixture always refuses")
        .assert_stderr_has("run without --plugin fixture-error");
}

#[test]
fn a_panicking_plugin_method_is_an_error_and_the_build_goes_on() {
    let inst = Install::new();
    let fx = Fixture::git();
    let lib = inst.lib("ktstr-plugin-fixture-panic");
    let run = inst.run(&fx, &[], &build_args(&fx, &["--plugin", &lib]));
    assert_no_crash(&run, 0);
    run.assert_stderr_has(
        "plugin fixture-panic panicked in cache fixture-panic-cache lookup: fixture lookup of",
    )
    .assert_stderr_has("panicked in cache fixture-panic-cache store")
    .assert_stderr_has("panicked at tests/fixtures/plugins/panic/src/lib.rs");
    run.cached_key();
    // Listing through the panicking tier warns and still lists the local one.
    let list = inst.run(&fx, &[], &["kernel", "list", "--plugin", &lib]);
    assert_no_crash(&list, 0);
    list.assert_stderr_has("panicked in cache fixture-panic-cache list");
    assert!(list.stdout.contains("[local-cache]"), "{}", list.describe());
}

#[test]
fn a_plugin_that_panics_while_loading_is_refused() {
    let inst = Install::new();
    let fx = Fixture::git();
    let lib = inst.lib("ktstr-plugin-fixture-root-panic");
    let run = inst.run(&fx, &[], &build_args(&fx, &["--plugin", &lib]));
    assert_no_crash(&run, 1);
    run.assert_hint()
        .assert_stderr_has("failed to initialise")
        .assert_stderr_has("fixture-root-panic refuses to describe itself");
    assert_eq!(fx.build_count(), 0);
}

#[test]
fn an_older_abi_gets_one_paragraph_asking_for_a_rebuild() {
    let inst = Install::new();
    let fx = Fixture::git();
    let lib = inst.lib("ktstr-plugin-fixture-old-abi");
    let run = inst.run(&fx, &[], &build_args(&fx, &["--plugin", &lib]));
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has("plugin fixture-old-abi")
        .assert_stderr_has(&lib)
        .assert_stderr_has("built against plugin ABI 0.0.1")
        .assert_stderr_has("needs plugin ABI >=0.1")
        .assert_stderr_has("rebuild it against ktstr-sdk 0.1.0");
    assert!(
        run.stderr.lines().count() <= 3,
        "no layout dump without RUST_LOG\n{}",
        run.describe()
    );
}

#[test]
fn not_a_plugin_missing_files_and_names_are_explained() {
    let inst = Install::new();
    let fx = Fixture::git();
    let lib = inst.lib("ktstr-plugin-fixture-not-a-plugin");
    inst.run(&fx, &[], &build_args(&fx, &["--plugin", &lib]))
        .assert_fails()
        .assert_hint()
        .assert_stderr_has("is not a ktstr plugin");

    let missing = inst.libs.join("libktstr_plugin_gone.so");
    inst.run(
        &fx,
        &[],
        &build_args(&fx, &["--plugin", missing.to_str().unwrap()]),
    )
    .assert_fails()
    .assert_stderr_has(missing.to_str().unwrap());

    // A plugin in the current directory is never found by name.
    let cwd_copy = fx.root.path().join("libktstr_plugin_gone.so");
    fs::copy(&lib, &cwd_copy).unwrap();
    let run = inst.run(&fx, &[], &build_args(&fx, &["--plugin", "gone"]));
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has("no libktstr_plugin_gone.so was found")
        .assert_stderr_has(inst.libs.to_str().unwrap())
        .assert_stderr_has(inst.root.join("bin").to_str().unwrap())
        .assert_stderr_has("xdg-data/ktstr/plugins");
}

#[test]
fn world_writable_libraries_and_directories_are_refused() {
    let inst = Install::new();
    let fx = Fixture::git();
    let dir = fx.root.path().join("plugins");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let lib = dir.join("libktstr_plugin_fixture_not_a_plugin.so");
    fs::copy(inst.lib("ktstr-plugin-fixture-not-a-plugin"), &lib).unwrap();
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o666)).unwrap();
    let arg = lib.to_str().unwrap();
    inst.run(&fx, &[], &build_args(&fx, &["--plugin", arg]))
        .assert_fails()
        .assert_hint()
        .assert_stderr_has("world-writable")
        .assert_stderr_has("chmod o-w");
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    inst.run(&fx, &[], &build_args(&fx, &["--plugin", arg]))
        .assert_fails()
        .assert_stderr_has("its directory");
}

#[test]
fn a_name_found_in_two_places_is_ambiguous() {
    let inst = Install::new();
    let fx = Fixture::git();
    let other = inst.root.join("lib/ktstr/plugins");
    fs::create_dir_all(&other).unwrap();
    let name = lib_file("ktstr-plugin-fixture-ok");
    fs::copy(inst.libs.join(&name), other.join(&name)).unwrap();
    inst.run(&fx, &[], &build_args(&fx, &["--plugin", "fixture-ok"]))
        .assert_fails()
        .assert_stderr_has("found in two places")
        .assert_stderr_has(inst.libs.join(&name).to_str().unwrap())
        .assert_stderr_has("lib/ktstr/plugins/libktstr_plugin_fixture_ok.so");
}

#[test]
fn plugins_list_shows_abi_status_and_info_shows_stages() {
    let inst = Install::new();
    let fx = Fixture::git();
    let run = inst.run(&fx, &[], &["plugins", "list", "--json"]);
    run.assert_ok();
    let rows = run.json();
    let rows = rows.as_array().unwrap();
    let status = |plugin: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r["plugin"] == plugin)
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(status("fixture-ok"), ["ok"; 5], "{}", run.describe());
    assert_eq!(status("fixture-old-abi"), ["mismatch"]);
    assert_eq!(status("fixture-not-a-plugin"), ["not-a-plugin"]);
    assert_eq!(status("fixture-root-panic"), ["error"]);
    assert!(
        rows.iter()
            .any(|r| r["name"] == "local-cache" && r["origin"] == "builtin")
    );
    let shared = rows
        .iter()
        .find(|r| r["name"] == "shared-dir-cache")
        .unwrap();
    assert_eq!(shared["kind"], "cache");
    assert_eq!(shared["abi_version"], "0.1.0");

    let table = inst.run(&fx, &[], &["plugins", "list"]);
    table.assert_ok();
    assert!(
        table.stdout.contains("mismatch (0.0.1"),
        "{}",
        table.describe()
    );
    assert!(
        table.stdout.contains("not-a-plugin"),
        "{}",
        table.describe()
    );

    let info = inst.run(&fx, &[], &["plugins", "info", "shared-dir-cache"]);
    info.assert_ok();
    for want in [
        "shared-dir-cache 0.1.0",
        "cache shared-dir-cache",
        "config keys",
        "stale_lock_secs",
    ] {
        assert!(info.stdout.contains(want), "{want:?}\n{}", info.describe());
    }
    inst.run(&fx, &[], &["plugins", "info", "fixture-ok@^2"])
        .assert_fails()
        .assert_stderr_has("version 1.4.0, which does not match");
    inst.run(&fx, &[], &["plugins", "info", "fixture-ok@^1.4"])
        .assert_ok();
}

#[test]
fn fixed_cpus_reserver_grants_the_configured_cpus() {
    let inst = Install::new();
    let fx = Fixture::git();
    let env = [("KTSTR_FIXED_CPUS", "0")];
    inst.run(
        &fx,
        &env,
        &build_args(&fx, &["--plugin", "fixed-cpus", "--cpu-cap", "2"]),
    )
    .assert_fails()
    .assert_hint()
    .assert_stderr_has("has only 1 CPUs reserved for builds ($KTSTR_FIXED_CPUS)");
    let cpus_log = fx.root.path().join("cpus.log");
    let run = inst.run(
        &fx,
        &[
            ("KTSTR_FIXED_CPUS", "0"),
            ("KTSTR_FIXTURE_CPUS_LOG", cpus_log.to_str().unwrap()),
        ],
        &build_args(&fx, &["--plugin", "fixed-cpus"]),
    );
    run.image_path();
    let log = fs::read_to_string(&cpus_log).unwrap_or_default();
    assert!(
        log.contains("-j1"),
        "make -j from the fixed list:\n{log}\n{}",
        run.describe()
    );
}

#[test]
fn plugins_new_scaffolds_a_crate_that_builds_and_loads() {
    let inst = Install::new();
    let fx = Fixture::git();
    let dir = fx.root.path().join("team-cache");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    inst.run(
        &fx,
        &[],
        &[
            "plugins",
            "new",
            "team-cache",
            "--kind",
            "cache",
            "--sdk-path",
            sdk.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ],
    )
    .assert_ok();
    // Same dependency versions as the workspace: builds offline, reuses
    // the compiled dependencies of the shared target directory.
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let target = built().parent().unwrap().join("scaffold");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--offline"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the scaffolded crate does not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = target.join("debug/libktstr_plugin_team_cache.so");
    let info = inst.run(&fx, &[], &["plugins", "info", lib.to_str().unwrap()]);
    info.assert_ok();
    assert!(
        info.stdout.contains("cache team-cache"),
        "{}",
        info.describe()
    );
    inst.run(
        &fx,
        &[],
        &[
            "plugins",
            "new",
            "team-cache",
            "--kind",
            "cache",
            "--dir",
            dir.to_str().unwrap(),
        ],
    )
    .assert_fails()
    .assert_stderr_has("already exists");
}
