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

    // The host owns `origin`: the backfilled local copy says where it came
    // from, the shared tier's copy (stored verbatim) says nothing; both
    // tiers keep directories, so both rows name their files.
    let list = inst.run(
        &fx,
        &[],
        &["kernel", "list", "--json", "--plugin", "shared-dir-cache"],
    );
    let rows = list.assert_ok().json();
    let row = |tier: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key.as_str() && r["tier"] == tier)
            .cloned()
            .unwrap_or_else(|| panic!("no {tier} row\n{}", list.describe()))
    };
    let (local, remote) = (row("local-cache"), row("shared-dir-cache"));
    assert!(
        local["pulled_from"]
            .as_str()
            .is_some_and(|o| o.starts_with("shared-dir-cache shared directory cache at ")),
        "{local}"
    );
    assert!(remote["pulled_from"].is_null(), "{remote}");
    assert_eq!(
        remote["image"].as_str().map(PathBuf::from),
        Some(shared.join("bzImage")),
        "{remote}"
    );

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
    .assert_stderr_has("panicked at tests/fixtures/plugins/panic/src/lib.rs")
    // Marked down for the run: said once, with the plugin's hint, and
    // neither asked again nor given the build to store.
    .assert_stderr_has("fixture-panic-cache: not using it for the rest of this run")
    .assert_stderr_has("hint: this is a bug in plugin fixture-panic 0.1.0");
    assert_eq!(
        run.stderr
            .matches("panicked in cache fixture-panic-cache")
            .count(),
        1,
        "{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("fixture-panic-cache store"),
        "store was called on a tier marked down\n{}",
        run.describe()
    );
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
        .assert_stderr_has(&format!(
            "needs plugin ABI >={}",
            ktstr_sdk::export::abi::ABI_VERSION
                .rsplit_once('.')
                .expect("x.y.z")
                .0
        ))
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
        .assert_stderr_has("chmod go-w");
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    inst.run(&fx, &[], &build_args(&fx, &["--plugin", arg]))
        .assert_fails()
        .assert_stderr_has("its directory");

    // Any writable ancestor is as bad, checked before the library is
    // opened; a sticky one (like /tmp) is not.
    let deep = dir.join("team/x86");
    fs::create_dir_all(&deep).unwrap();
    for d in [dir.clone(), dir.join("team"), deep.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let lib = deep.join("libktstr_plugin_fixture_ok.so");
    fs::copy(inst.lib("ktstr-plugin-fixture-ok"), &lib).unwrap();
    fs::set_permissions(&lib, fs::Permissions::from_mode(0o644)).unwrap();
    let arg = lib.to_str().unwrap();
    inst.run(&fx, &[], &["plugins", "info", arg]).assert_ok();
    fs::set_permissions(dir.join("team"), fs::Permissions::from_mode(0o777)).unwrap();
    let log = fx.root.path().join("plugin.log");
    let env = [("KTSTR_FIXTURE_PLUGIN_LOG", log.to_str().unwrap())];
    let run = inst.run(&fx, &env, &build_args(&fx, &["--plugin", arg]));
    run.assert_fails().assert_hint().assert_stderr_has(&format!(
        "its ancestor directory {} is world-writable",
        dir.join("team").display()
    ));
    assert!(!log.exists(), "the refused plugin ran");
    assert_eq!(fx.build_count(), 0);
    inst.run(&fx, &[], &["plugins", "info", arg])
        .assert_fails()
        .assert_stderr_has("ancestor directory");
    fs::set_permissions(dir.join("team"), fs::Permissions::from_mode(0o1777)).unwrap();
    inst.run(&fx, &[], &["plugins", "info", arg]).assert_ok();
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
    assert_eq!(shared["abi_version"], ktstr_sdk::export::abi::ABI_VERSION);

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
    // The last allowed CPU: confined, make sees only it.
    let allowed = ktstr_sdk::cpus::allowed_cpus().unwrap();
    let cpu = allowed.last().unwrap().to_string();
    let cpus_log = fx.root.path().join("cpus.log");
    let run = inst.run(
        &fx,
        &[
            ("KTSTR_FIXED_CPUS", cpu.as_str()),
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
    let can_confine = nix::unistd::Uid::effective().is_root()
        && ktstr_sdk::cpus::sandbox::detect_for_self(Path::new("/sys/fs/cgroup"))
            .is_ok_and(|h| !h.synthetic);
    if !can_confine {
        ktstr_sdk::testing::skip("fixed-cpus confinement: not root or no cpuset controller");
        assert_eq!(
            run.stderr.matches("best-effort").count(),
            1,
            "{}",
            run.describe()
        );
        return;
    }
    assert!(
        log.contains(&format!("Cpus_allowed_list:\t{cpu}\n")),
        "make must be confined to CPU {cpu}:\n{log}\n{}",
        run.describe()
    );
    let sandbox = log
        .lines()
        .find_map(|l| l.split_once(":cpuset:").map(|(_, p)| p.trim()))
        .or_else(|| log.lines().find_map(|l| l.strip_prefix("0::")))
        .unwrap_or_else(|| panic!("no cgroup line in {log}"));
    assert!(
        sandbox.contains("/ktstr-"),
        "make ran outside a sandbox: {sandbox}"
    );
    run.assert_stderr_lacks("best-effort");

    // Its lock files reach `ktstr locks` through the plugin ABI.
    write_config(&fx, "reserver = \"fixed-cpus\"\n");
    let locks = inst.run(
        &fx,
        &[("KTSTR_FIXED_CPUS", cpu.as_str())],
        &["locks", "--all", "--json"],
    );
    let rows: serde_json::Value =
        serde_json::from_str(&locks.stdout).unwrap_or_else(|e| panic!("{e}\n{}", locks.describe()));
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "llc" || r["kind"] == "cpu"),
        "the plugin's CPU locks are listed\n{}",
        locks.describe()
    );
}

#[test]
fn plugins_new_scaffolds_a_crate_that_builds_and_loads() {
    let inst = Install::new();
    let fx = Fixture::git();
    let dir = common::scaffold(&fx, "team-cache", "cache");
    let out = common::cargo_in_scaffold(&dir, &["build", "--quiet"]);
    assert!(
        out.status.success(),
        "the scaffolded crate does not build:\n{}",
        common::output_text(&out)
    );
    let target = common::scaffold_target();
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

/// `cargo <sub>` with this test's target directory and profile.
fn cargo_in_target(sub: &str) -> Command {
    let profile_dir = built();
    let target = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.arg(sub)
        .arg("--quiet")
        .args(["--profile", &profile])
        .arg("--target-dir")
        .arg(target)
        .stdin(Stdio::null());
    cmd
}

#[track_caller]
fn cargo_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The abort fixture compiled with `-C panic=abort` (a workspace member
/// cannot have a profile of its own; `cargo rustc` passes the flag to the
/// plugin crate only, and a crate built with panic=abort links against
/// dependencies built to unwind), copied out at once into `dest`.
fn build_abort_fixture(dest: &Path) -> PathBuf {
    let mut cmd = cargo_in_target("rustc");
    cmd.arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .args([
            "-p",
            "ktstr-plugin-fixture-abort",
            "--lib",
            "--",
            "-C",
            "panic=abort",
        ]);
    cargo_ok(cmd, "building the panic=abort fixture");
    let name = lib_file("ktstr-plugin-fixture-abort");
    let to = dest.join(&name);
    fs::copy(built().join(&name), &to).unwrap();
    to
}

#[test]
fn a_plugin_built_with_panic_abort_is_refused_before_it_runs() {
    let inst = Install::new();
    let fx = Fixture::git();
    let lib = build_abort_fixture(&inst.libs);
    let arg = lib.to_str().unwrap();
    let run = inst.run(&fx, &[], &build_args(&fx, &["--plugin", arg]));
    // Refused with an error, not exit 134 from an abort in its lookup.
    assert_no_crash(&run, 1);
    run.assert_hint()
        .assert_stderr_has("refusing to load plugin")
        .assert_stderr_has("built with panic = \"abort\"")
        .assert_stderr_has("rebuild it with the default panic = \"unwind\"");
    assert!(
        !run.stderr.contains("fixture-abort lookup"),
        "{}",
        run.describe()
    );
    assert_eq!(fx.build_count(), 0);

    // `plugins info` does not call it ok; `plugins list` says why.
    inst.run(&fx, &[], &["plugins", "info", arg])
        .assert_fails()
        .assert_stderr_has("panic = \"abort\"");
    let list = inst.run(&fx, &[], &["plugins", "list", "--json"]);
    list.assert_ok();
    let rows = list.json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["plugin"] == "fixture-abort")
        .unwrap_or_else(|| panic!("no fixture-abort row\n{}", list.describe()));
    assert_eq!(row["status"], "panic-abort", "{row}");

    // The same crate built normally loads: the refusal is the strategy.
    let mut cmd = cargo_in_target("build");
    cmd.arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .args(["-p", "ktstr-plugin-fixture-abort"]);
    cargo_ok(cmd, "building the abort fixture to unwind");
    let unwinding = inst.root.join("unwind");
    fs::create_dir(&unwinding).unwrap();
    let name = lib_file("ktstr-plugin-fixture-abort");
    fs::copy(built().join(&name), unwinding.join(&name)).unwrap();
    inst.run(
        &fx,
        &[],
        &["plugins", "info", unwinding.join(&name).to_str().unwrap()],
    )
    .assert_ok();
}

/// The abi-bump fixture built against a copy of the ABI crate (same
/// source, so the same types) whose version is `version`.
fn build_abi_bump(version: &str, dest: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = fs::canonicalize(repo).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir_all(w.join("abi")).unwrap();
    fs::create_dir_all(w.join("plugin")).unwrap();
    fs::write(
        w.join("Cargo.toml"),
        "[workspace]\nresolver = \"3\"\nmembers = [\"abi\", \"plugin\"]\n",
    )
    .unwrap();
    // The workspace's lock: the same dependency versions, nothing fetched.
    fs::copy(repo.join("Cargo.lock"), w.join("Cargo.lock")).unwrap();
    fs::write(
        w.join("abi/Cargo.toml"),
        format!(
            "[package]\nname = \"ktstr-plugin-abi\"\nversion = \"{version}\"\nedition = \"2024\"\n\
             publish = false\n\n[lib]\npath = \"{}\"\n\n[dependencies]\n\
             abi_stable = {{ version = \"0.11\", default-features = false }}\n",
            repo.join("sdk/abi/src/lib.rs").display()
        ),
    )
    .unwrap();
    fs::write(
        w.join("plugin/Cargo.toml"),
        format!(
            "[package]\nname = \"ktstr-plugin-fixture-abi-bump\"\nversion = \"0.1.0\"\n\
             edition = \"2024\"\npublish = false\n\n[lib]\ncrate-type = [\"cdylib\"]\npath = \"{}\"\n\n\
             [dependencies]\nktstr-plugin-abi = {{ path = \"../abi\" }}\n\
             abi_stable = {{ version = \"0.11\", default-features = false }}\n",
            repo.join("tests/fixtures/plugins/abi-bump/src/lib.rs").display()
        ),
    )
    .unwrap();
    let mut cmd = cargo_in_target("build");
    cmd.arg("--manifest-path")
        .arg(w.join("Cargo.toml"))
        .args(["-p", "ktstr-plugin-fixture-abi-bump"]);
    cargo_ok(
        cmd,
        &format!("building the fixture against plugin ABI {version}"),
    );
    let name = lib_file("ktstr-plugin-fixture-abi-bump");
    let to = dest.join(format!("abi-{version}"));
    fs::create_dir_all(&to).unwrap();
    fs::copy(built().join(&name), to.join(&name)).unwrap();
    to.join(name)
}

/// docs/plugin-abi.md: a 0.y.z host loads plugins of ABI >=0.y.0, <0.(y+1).0.
#[test]
fn an_abi_patch_bump_loads_and_a_minor_bump_is_refused_as_documented() {
    let inst = Install::new();
    let fx = Fixture::git();
    let ours = ktstr_sdk::export::abi::ABI_VERSION;
    let parts: Vec<u64> = ours.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts[0], 0, "update this test (and the docs) for ABI 1.0");
    let patch = format!("0.{}.{}", parts[1], parts[2] + 7);
    let minor = format!("0.{}.0", parts[1] + 1);
    let needs = format!(">=0.{}.0, <0.{}.0", parts[1], parts[1] + 1);

    let lib = build_abi_bump(&patch, &inst.root);
    let info = inst.run(&fx, &[], &["plugins", "info", lib.to_str().unwrap()]);
    info.assert_ok();
    assert!(
        info.stdout.contains(&format!(
            "abi      {patch} (this ktstr accepts {needs}): ok"
        )),
        "{}",
        info.describe()
    );

    let lib = build_abi_bump(&minor, &inst.root);
    let run = inst.run(&fx, &[], &["plugins", "info", lib.to_str().unwrap()]);
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has(&format!("built against plugin ABI {minor}"))
        .assert_stderr_has(&format!("needs plugin ABI {needs}"))
        .assert_stderr_has("rebuild it against ktstr-sdk");
    assert!(
        run.stderr.lines().count() <= 3,
        "one paragraph, no layout report\n{}",
        run.describe()
    );
}

fn write_config(fx: &Fixture, text: &str) {
    let dir = fx.root.path().join("xdg-config/ktstr");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.toml"), text).unwrap();
}

#[test]
fn a_plugin_stage_named_in_a_host_table_is_loaded_and_stray_tables_warn() {
    let inst = Install::new();
    let fx = Fixture::git();
    write_config(
        &fx,
        r#"
[hosts."*"]
reserver = "fixed-cpus"

[plugin.fixed-cpu]
cpus = "0"
"#,
    );
    let cpus_log = fx.root.path().join("cpus.log");
    let env = [
        ("KTSTR_FIXED_CPUS", "0"),
        ("KTSTR_FIXTURE_CPUS_LOG", cpus_log.to_str().unwrap()),
    ];
    let run = inst.run(&fx, &env, &build_args(&fx, &[]));
    run.image_path();
    assert!(
        fs::read_to_string(&cpus_log)
            .unwrap_or_default()
            .contains("-j1"),
        "the fixed-cpus reserver ran\n{}",
        run.describe()
    );
    // The misspelt table is named, once.
    run.assert_stderr_has("warning: [plugin.fixed-cpu]")
        .assert_stderr_has("its settings are ignored");
    assert_eq!(run.stderr.matches("[plugin.fixed-cpu]").count(), 1);

    // `plugins list` tells the same truth.
    let list = inst.run(&fx, &env, &["plugins", "list", "--json"]);
    list.assert_ok();
    let rows = list.json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "fixed-cpus")
        .unwrap();
    assert_eq!(row["selected"], true, "{row}");

    // A stage no built-in and no installed library provides: the error
    // says what to add.
    write_config(&fx, "reserver = \"no-such-reserver\"\n");
    inst.run(&fx, &[], &build_args(&fx, &[]))
        .assert_fails()
        .assert_stderr_has("no reserver plugin named \"no-such-reserver\"")
        .assert_stderr_has("libktstr_plugin_no_such_reserver.so");
}

#[test]
fn a_library_named_like_a_builtin_is_listed_as_shadowed() {
    let inst = Install::new();
    let fx = Fixture::git();
    fs::copy(
        inst.lib("ktstr-plugin-fixture-ok"),
        inst.libs.join("libktstr_plugin_kbuild.so"),
    )
    .unwrap();
    let list = inst.run(&fx, &[], &["plugins", "list", "--json"]);
    list.assert_ok();
    let rows = list.json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("libktstr_plugin_kbuild.so"))
        })
        .unwrap_or_else(|| panic!("no row for the shadowed library\n{}", list.describe()));
    assert_eq!(row["status"], "shadowed", "{row}");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("shadowed by the built-in kbuild"),
        "{row}"
    );
    let table = inst.run(&fx, &[], &["plugins", "list"]);
    table.assert_ok();
    assert!(table.stdout.contains("shadowed"), "{}", table.describe());
}
