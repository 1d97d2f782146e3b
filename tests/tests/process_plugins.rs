//! Process plugins end to end (docs/plugin-protocol.md): Python plugins
//! driven by the real `ktstr` binary over stdin/stdout.
//!
//! The scaffolded Python cache stores a build and serves a fresh local
//! cache; a Python reserver is chosen per host in the config file; and each
//! fixture of `tests/fixtures/process/` misbehaves in one way (crash, hang,
//! garbage on stdout, wrong protocol, exit during the handshake), which
//! must cost one message naming it while the build goes on, leaving no
//! process behind. Needs python3 (tests print why they skip without it).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Fixture, Run};

fn have_python() -> bool {
    !ktstr_sdk::testing::missing("Python plugin test", &["python3"], "python3")
}

/// A fixture tree plus a private plugin directory (in `KTSTR_PLUGIN_PATH`)
/// holding the fixtures of `tests/fixtures/process/` as
/// `ktstr-plugin-fixture-<name>` links.
struct Setup {
    fx: Fixture,
    plugins: PathBuf,
    /// The copied fixture scripts: every plugin process's command line
    /// names this directory.
    scripts: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let fx = Fixture::git();
        let root = fs::canonicalize(fx.root.path()).unwrap();
        let plugins = root.join("plugins");
        let scripts = root.join("scripts");
        fs::create_dir_all(&plugins).unwrap();
        common::copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/process"),
            &scripts,
        );
        for dir in [&root, &plugins, &scripts] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for entry in fs::read_dir(&scripts).unwrap() {
            let path = entry.unwrap().path();
            let stem = path
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .replace('_', "-");
            if stem == "fixture-proto" {
                continue;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            let name = if stem == "reserver" || stem == "verifier" {
                format!("ktstr-plugin-py-{stem}")
            } else {
                format!("ktstr-plugin-fixture-{stem}")
            };
            std::os::unix::fs::symlink(&path, plugins.join(name)).unwrap();
        }
        let fx = fx.with_env("KTSTR_PLUGIN_PATH", plugins.to_str().unwrap());
        Setup {
            fx,
            plugins,
            scripts,
        }
    }

    fn config(&self, text: &str) {
        let dir = self.fx.root.path().join("xdg-config/ktstr");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.toml"), text).unwrap();
    }

    fn build(&self, extra: &[&str]) -> Run {
        self.fx.build(extra)
    }

    /// Processes whose command line names `dir`: plugins and their children.
    fn processes_under(dir: &Path) -> Vec<String> {
        let needle = dir.to_str().unwrap();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let zombie = fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            if cmdline.contains(needle) && !zombie {
                found.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
        found
    }

    /// No plugin process, nor anything one started, is left running.
    #[track_caller]
    fn assert_no_orphans(&self, run: &Run) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = Self::processes_under(&self.scripts);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "plugin processes outlived ktstr: {left:?}\n{}",
                run.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The build went on without the plugin: it built and cached the kernel.
#[track_caller]
fn assert_built_anyway(run: &Run) {
    run.assert_ok();
    run.image_path();
    assert!(
        !run.stderr.contains("thread '"),
        "a panic reached the user\n{}",
        run.describe()
    );
}

#[test]
fn a_python_cache_stores_a_build_and_a_fresh_cache_hits_through_it() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    let scaffold = s.fx.root.path().join("scaffold");
    s.fx.run(&[
        "plugins",
        "new",
        "team-py",
        "--kind",
        "cache",
        "--lang",
        "python",
        "--dir",
        scaffold.to_str().unwrap(),
    ])
    .assert_ok();
    assert!(scaffold.join("README.md").is_file());
    let exe = scaffold.join("ktstr-plugin-team-py");
    assert_eq!(
        fs::metadata(&exe).unwrap().permissions().mode() & 0o111,
        0o111,
        "the scaffold is executable"
    );
    fs::copy(&exe, s.plugins.join("ktstr-plugin-team-py")).unwrap();
    let shared = s.fx.root.path().join("shared");
    s.config(&format!(
        "[plugin.team-py]\ndir = \"{}\"\n",
        shared.display()
    ));

    let info = s.fx.run(&["plugins", "info", "team-py", "--json"]);
    let info = info.assert_ok().json();
    assert_eq!(info["transport"], "process", "{info}");
    assert_eq!(info["protocol"], 1, "{info}");
    assert_eq!(info["stages"][0]["kind"], "cache", "{info}");

    let run = s.build(&["--plugin", "team-py"]);
    run.image_path();
    let key = run.cached_key();
    let entry = shared.join(&key);
    assert!(
        entry.join("metadata.json").is_file() && entry.join("bzImage").is_file(),
        "the Python tier lacks {key}\n{}",
        run.describe()
    );
    assert_eq!(s.fx.build_count(), 1);

    // Another machine: an empty local cache hits through the plugin,
    // without running make.
    fs::remove_dir_all(&s.fx.cache).unwrap();
    let hit = s.build(&["--plugin", "team-py"]);
    hit.image_path();
    assert_eq!(hit.hit_key(), key, "{}", hit.describe());
    assert_eq!(s.fx.build_count(), 1, "the hit must not build again");
    hit.assert_stderr_has("came from team-py cache at");
    assert!(
        fs::read(hit.image_path()).unwrap() == fs::read(entry.join("bzImage")).unwrap(),
        "the backfilled image is the stored one"
    );

    let list =
        s.fx.run(&["kernel", "list", "--json", "--plugin", "team-py"]);
    let rows = list.assert_ok().json();
    let tiers: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"] == key.as_str())
        .map(|r| r["tier"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["local-cache", "team-py"], "{}", list.describe());
    s.assert_no_orphans(&hit);

    // Its handshake and capabilities are remembered: a local hit does not
    // start the plugin at all.
    let local = s.fx.run(&s.fx.build_args(&["-v", "--plugin", "team-py"]));
    assert_eq!(local.hit_key(), key, "{}", local.describe());
    local.assert_stderr_has("handshake remembered, started on first use");
    local.assert_stderr_lacks("started plugin team-py");

    // A damaged entry is reported as corrupt and rebuilt, never served.
    fs::remove_dir_all(&s.fx.cache).unwrap();
    fs::write(entry.join("bzImage"), b"damaged").unwrap();
    let rebuilt = s.build(&["--plugin", "team-py"]);
    rebuilt.assert_ok();
    rebuilt.assert_stderr_has("bzImage does not match its recorded sha256");
    assert_eq!(s.fx.build_count(), 2, "a corrupt entry is rebuilt");
}

#[test]
fn a_python_reserver_is_chosen_per_host_in_the_config_file() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    let record = s.fx.root.path().join("reservations");
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    s.config(&format!(
        "reserver = \"llc\"\n[hosts.\"{host}\"]\nreserver = \"py-reserver\"\n\
         [plugin.py-reserver]\nrecord = \"{}\"\n",
        record.display()
    ));
    let run = s.build(&[]);
    run.assert_ok().image_path();
    run.assert_stderr_has("make -j1");
    assert_eq!(
        fs::read_to_string(&record).unwrap(),
        "reserve cpu_cap=None\nrelease g1\n",
        "reserved through the plugin and released when the build was done\n{}",
        run.describe()
    );
    s.assert_no_orphans(&run);

    // Its config error is its own message, and fatal when a build needs
    // the reserver: ktstr never builds with one the host did not choose.
    fs::remove_dir_all(&s.fx.cache).unwrap();
    s.config(&format!("[hosts.\"{host}\"]\nreserver = \"py-reserver\"\n"));
    let run = s.build(&[]);
    run.assert_fails();
    run.assert_stderr_has("record");
    s.assert_no_orphans(&run);
}

#[test]
fn a_python_verifier_checks_builds_and_its_verdict_is_recorded() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    s.config("verifier = \"py-verifier\"\n");
    let run = s.build(&["--verify"]);
    run.assert_ok()
        .assert_stderr_has("boot check passed (py-verifier 0.1.0, ");
    let image = run.image_path();
    let key = run.cached_key();
    let metadata: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(image.with_file_name("metadata.json")).unwrap())
            .unwrap();
    let verdict = &metadata["verify"];
    assert_eq!(verdict["verifier"], "py-verifier", "{metadata:#}");
    assert_eq!(verdict["passed"], true, "{metadata:#}");
    assert_eq!(
        verdict["observed"]["image_bytes"],
        fs::metadata(&image).unwrap().len().to_string(),
        "the plugin read the image the host named"
    );
    s.assert_no_orphans(&run);

    // A kernel the plugin fails: exit 3, its console tail shown, the entry
    // kept and marked.
    s.config("verifier = \"py-verifier\"\n[plugin.py-verifier]\nfail = true\n");
    let failed = s.fx.run(&["kernel", "verify-boot", &key]);
    assert_eq!(failed.code(), Some(3), "{}", failed.describe());
    failed
        .assert_stderr_has("boot check FAILED (py-verifier 0.1.0, ")
        .assert_stderr_has("  | Kernel panic - not syncing: the fixture said so");
    assert!(image.is_file(), "a failed boot keeps the entry");
    s.assert_no_orphans(&failed);
}

#[test]
fn a_plugin_that_crashes_mid_call_marks_its_tier_down_and_the_build_goes_on() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    let run = s.build(&["--plugin", "fixture-crash"]);
    assert_built_anyway(&run);
    run.assert_stderr_has("fixture-crash: not using it for the rest of this run");
    run.assert_stderr_has("died during cache.lookup (killed by signal SIGSEGV)");
    run.assert_stderr_has("its stderr ended with: fixture-crash: about to crash");
    assert_eq!(
        run.stderr.matches("fixture-crash (").count(),
        1,
        "one message about the crash\n{}",
        run.describe()
    );
    s.assert_no_orphans(&run);
}

#[test]
fn a_plugin_that_hangs_past_its_timeout_is_killed_with_its_children() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    s.config("[plugin.fixture-hang]\ncall_timeout = \"1s\"\n");
    let run = s.build(&["--plugin", "fixture-hang"]);
    assert_built_anyway(&run);
    run.assert_stderr_has("sent nothing for 1 s during cache.lookup; killed it");
    run.assert_stderr_has("raise call_timeout in [plugin.fixture-hang]");
    assert!(run.elapsed < Duration::from_secs(30), "{}", run.describe());
    s.assert_no_orphans(&run);
}

#[test]
fn a_plugin_that_writes_garbage_on_stdout_is_stopped() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    let run = s.build(&["--plugin", "fixture-garbage"]);
    assert_built_anyway(&run);
    run.assert_stderr_has(
        "wrote something that is not a protocol message on stdout during cache.lookup: \"looking up",
    );
    run.assert_stderr_has("logs to stderr");
    s.assert_no_orphans(&run);
}

#[test]
fn a_plugin_of_another_protocol_version_is_not_used() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    let run = s.build(&["--plugin", "fixture-wrong-protocol"]);
    assert_built_anyway(&run);
    run.assert_stderr_has("speaks protocol 99; this ktstr speaks 1; going on without it");
    s.assert_no_orphans(&run);
}

#[test]
fn a_plugin_that_exits_during_the_handshake_is_not_used() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    let run = s.build(&["--plugin", "fixture-exit-handshake"]);
    assert_built_anyway(&run);
    run.assert_stderr_has("exited during the handshake (exit status 3)");
    run.assert_stderr_has("no credentials for the artifact store");
    s.assert_no_orphans(&run);

    // Named as a cache tier in the config file: the tier is down, once,
    // when the build needs it (a local miss).
    fs::remove_dir_all(&s.fx.cache).unwrap();
    s.config("caches = [\"fixture-exit-handshake\"]\n");
    let run = s.build(&[]);
    assert_built_anyway(&run);
    run.assert_stderr_has(
        "fixture-exit-handshake: not using it for the rest of this run: lookup of",
    );
    run.assert_stderr_has("exited during the handshake (exit status 3)");
    assert_eq!(
        run.stderr.matches("exited during the handshake").count(),
        1,
        "one message\n{}",
        run.describe()
    );
    s.assert_no_orphans(&run);
}

#[test]
fn no_plugin_outlives_a_killed_ktstr() {
    if !have_python() {
        return;
    }
    let s = Setup::new();
    s.config("[plugin.fixture-hang]\ncall_timeout = 600\n");
    let child = s.fx.spawn_build(&["--plugin", "fixture-hang"], &[]);
    // Wait for the plugin's own child: the plugin is inside its lookup.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Setup::processes_under(&s.scripts)
        .iter()
        .any(|p| p.contains("sleep 600"))
    {
        assert!(Instant::now() < deadline, "the hang fixture never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let run = child.wait(Duration::from_secs(10));
    // The plugin dies with ktstr (PR_SET_PDEATHSIG); the sleep it started
    // is in its process group, which the death signal does not reach:
    // only the plugin itself is guaranteed gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let plugins: Vec<String> = Setup::processes_under(&s.scripts)
            .into_iter()
            .filter(|p| p.contains("hang.py"))
            .collect();
        if plugins.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the plugin outlived a killed ktstr: {plugins:?}\n{}",
            run.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in Setup::processes_under(&s.scripts) {
        let pid: i32 = p.split(' ').next().unwrap().parse().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn a_name_that_is_both_a_library_and_an_executable_is_an_error_naming_both() {
    let s = Setup::new();
    let lib = s.plugins.join("libktstr_plugin_dup.so");
    let exe = s.plugins.join("ktstr-plugin-dup");
    fs::write(&lib, b"").unwrap();
    fs::write(&exe, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let run = s.build(&["--plugin", "dup"]);
    run.assert_fails();
    run.assert_stderr_has(&format!(
        "--plugin dup: found both as a library, {}, and as an executable, {}",
        lib.display(),
        exe.display()
    ));
    assert_eq!(s.fx.build_count(), 0);
}

/// The shared-dir-cache example's stdio binary (`ktstr_sdk::stdio::serve`
/// over the same `Plugin` the library exports), built into the target
/// directory of the ktstr under test.
fn stdio_example() -> PathBuf {
    let bin = common::ktstr_bin();
    let profile_dir = bin.parent().unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(p) => p.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--profile", &profile])
        .args([
            "-p",
            "ktstr-plugin-shared-dir-cache",
            "--bin",
            "shared-dir-cache-stdio",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building the stdio example failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join("shared-dir-cache-stdio")
}

#[test]
fn a_rust_plugin_is_served_over_stdio_from_the_same_code() {
    let s = Setup::new();
    let exe = s.plugins.join("ktstr-plugin-shared-dir-cache");
    fs::copy(stdio_example(), &exe).unwrap();
    let shared = s.fx.root.path().join("shared");
    s.config(&format!(
        "[plugin.shared-dir-cache]\ndir = \"{}\"\n",
        shared.display()
    ));
    // By path: ktstr's own directory may hold the library of that name.
    let plugin = ["--plugin", exe.to_str().unwrap()];
    let info =
        s.fx.run(&["plugins", "info", exe.to_str().unwrap(), "--json"]);
    let info = info.assert_ok().json();
    assert_eq!(info["transport"], "process", "{info}");
    assert_eq!(info["name"], "shared-dir-cache", "{info}");

    let run = s.build(&plugin);
    let key = run.cached_key();
    assert!(
        shared.join("kernels").join(&key).join("bzImage").is_file(),
        "{}",
        run.describe()
    );
    fs::remove_dir_all(&s.fx.cache).unwrap();
    let hit = s.build(&plugin);
    assert_eq!(hit.hit_key(), key, "{}", hit.describe());
    assert_eq!(s.fx.build_count(), 1, "the hit must not build again");
    hit.assert_stderr_has("came from shared directory cache at");
}
