//! Compiler wrappers on the fixture tree, against real daemons on loopback:
//! compile jobs go through distccd / the icecream scheduler / ccache (their
//! own logs and counters say so), the entry has the plain build's key and
//! is a hit for a plain build, a distcc host with another compiler is a
//! warning, and a missing engine is a local build with one warning, or an
//! error when the wrapper is required. Each test skips, saying which
//! package is missing, where its engine is not installed.

mod common;
#[path = "wrapper_daemons/mod.rs"]
mod daemons;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Fixture, Run};
use daemons::{Distccd, Icecream, ccache_stat, daemon_dir, missing};

/// A fixture with `env` for every run.
fn fixture(env: &[(String, String)]) -> Fixture {
    fixture_with(Fixture::git(), env)
}

fn fixture_with(fx: Fixture, env: &[(String, String)]) -> Fixture {
    env.iter().fold(fx, |fx, (k, v)| fx.with_env(k, v))
}

/// The key a plain build of `fx`'s tree gets, in a cache of its own.
fn plain_key(fx: &Fixture) -> String {
    let args = fx.build_args(&[]);
    let mut cmd = fx.command(&args);
    cmd.env("KTSTR_CACHE_DIR", fx.root.path().join("plain-cache"));
    let run = fx.run_cmd(cmd, &args);
    run.cached_key()
}

/// A wrapped build was cached under the plain key, and a plain build
/// into the same cache hits it.
fn assert_plain_key(fx: &Fixture, wrapped: &Run) {
    let key = wrapped.cached_key();
    assert_eq!(key, plain_key(fx), "{}", wrapped.describe());
    let plain = fx.build(&[]);
    assert_eq!(plain.hit_key(), key, "{}", plain.describe());
}

fn write_config(fx: &Fixture, text: &str) {
    let dir = fx.root.path().join("xdg-config/ktstr");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.toml"), text).unwrap();
}

#[test]
fn distcc_compiles_cc_and_hostcc_on_distccd_under_the_plain_key() {
    if missing("distcc test", &["distcc", "distccd"], "distcc") {
        return;
    }
    let dir = daemon_dir();
    let d = Distccd::start(dir.path(), None);
    let fx = fixture(&d.env(3));
    let run = fx.build(&[
        "--wrapper",
        "distcc",
        "--wrapper-required",
        "--cpu-cap",
        "1",
    ]);
    run.assert_ok()
        .assert_stderr_has("building with distcc (3 remote slots, -j3; local: 1 CPU)")
        .assert_stderr_lacks("warning");
    // The compiler probe, then the fixture's HOSTCC and CC compiles.
    let jobs = d.compiled_once_logged("fixture.c", 2);
    assert_eq!(
        jobs.iter().filter(|j| *j == "fixture.c").count(),
        2,
        "{jobs:?}\n{}",
        d.log_text()
    );
    assert!(jobs.iter().any(|j| j == "probe.c"), "{jobs:?}");
    let meta = fs::read_to_string(
        fx.kernels_dir()
            .join(run.cached_key())
            .join("metadata.json"),
    )
    .unwrap();
    assert!(
        meta.contains("CC='distcc gcc' HOSTCC='distcc gcc'"),
        "{meta}"
    );
    assert_plain_key(&fx, &run);
}

#[test]
fn a_distcc_host_with_another_compiler_is_a_warning() {
    if missing(
        "distcc compiler check",
        &["distcc", "distccd", "objcopy"],
        "distcc binutils",
    ) {
        return;
    }
    // The daemon's gcc stamps its objects as another release would.
    let dir = daemon_dir();
    let bin = dir.path().join("other-gcc");
    fs::create_dir(&bin).unwrap();
    let real = which("x86_64-linux-gnu-gcc")
        .or_else(|| which("gcc"))
        .unwrap();
    let stamp = dir.path().join("stamp");
    fs::write(&stamp, "GCC: (Other 99.1-1) 99.1\0").unwrap();
    let script = format!(
        "#!/bin/sh\nout=\nprev=\nfor a in \"$@\"; do [ \"$prev\" = -o ] && out=$a; prev=$a; done\n\
         {} \"$@\" || exit\nexec objcopy --remove-section=.comment --add-section .comment={} \"$out\"\n",
        real.display(),
        stamp.display()
    );
    for name in ["x86_64-linux-gnu-gcc", "gcc"] {
        let p = bin.join(name);
        fs::write(&p, &script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let d = Distccd::start(dir.path(), Some(Path::new(&path)));
    let fx = fixture(&d.env(2));
    let run = fx.build(&["--wrapper", "distcc"]);
    run.assert_ok().assert_stderr_has(&format!(
        "warning: distcc host {} compiles with `GCC: (Other 99.1-1) 99.1`, this host with `GCC: (",
        d.hosts(2)
    ));
    let jobs = d.compiled_once_logged("fixture.c", 1);
    assert!(jobs.iter().any(|j| j == "fixture.c"), "{jobs:?}");
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[test]
fn icecc_sends_jobs_through_the_scheduler_under_the_plain_key() {
    if missing(
        "icecream test",
        &["icecc", "iceccd", "icecc-scheduler"],
        "icecc",
    ) {
        return;
    }
    let dir = daemon_dir();
    let ice = Icecream::start(dir.path());
    let fx = fixture(&ice.env());
    // The scheduler's capacity is not asked; the config gives -j.
    write_config(
        &fx,
        "[plugin.kbuild]\nwrapper = \"icecc\"\nwrapper_jobs = 5\n",
    );
    let run = fx.build(&["--wrapper-required", "--cpu-cap", "1"]);
    run.assert_ok()
        .assert_stderr_has("building with icecc (wrapper_jobs, -j5; local: 1 CPU)");
    let jobs = ice.jobs_once_logged("fixture.c", 2);
    assert_eq!(
        jobs.iter().filter(|j| j.contains("fixture.c")).count(),
        2,
        "{jobs:?}\n{}",
        fs::read_to_string(&ice.daemon_log).unwrap_or_default()
    );
    write_config(&fx, "");
    assert_plain_key(&fx, &run);
}

#[test]
fn ccache_hits_on_the_second_build_of_a_dirty_tree() {
    if missing("ccache test", &["ccache"], "ccache") {
        return;
    }
    let fx = Fixture::git();
    let ccache_dir = fx.root.path().join("ccache");
    let fx = fx.with_env("CCACHE_DIR", ccache_dir.to_str().unwrap());
    let run = fx.build(&["--wrapper", "ccache", "--cpu-cap", "1"]);
    run.assert_ok()
        .assert_stderr_has("building with ccache (-j1; local: 1 CPU)");
    assert_eq!(ccache_stat(&ccache_dir, "cache_miss"), 2, "CC and HOSTCC");
    assert_plain_key(&fx, &run);

    fx.dirty_tracked_file();
    for _ in 0..2 {
        fx.build(&["--wrapper", "ccache"])
            .assert_ok()
            .assert_stderr_has("not cached");
    }
    // The dirty builds compile the same source again: hits, no new misses.
    assert_eq!(ccache_stat(&ccache_dir, "cache_miss"), 2);
    assert!(ccache_stat(&ccache_dir, "direct_cache_hit") >= 4);
}

/// A private sccache server (its own port and directory), stopped on drop.
struct Sccache {
    env: Vec<(String, String)>,
}

impl Sccache {
    fn new(root: &Path) -> Sccache {
        let env = vec![
            (
                "SCCACHE_DIR".to_string(),
                root.join("sccache").display().to_string(),
            ),
            (
                "SCCACHE_SERVER_PORT".to_string(),
                ktstr_test_servers::free_port().to_string(),
            ),
        ];
        Sccache { env }
    }

    fn command(&self, arg: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("sccache");
        cmd.arg(arg).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `Cache hits` of `sccache --show-stats`.
    fn hits(&self) -> u64 {
        let out = self.command("--show-stats").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("Cache hits ").map(str::trim))
            .and_then(|n| n.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no `Cache hits` in:\n{text}"))
    }
}

impl Drop for Sccache {
    fn drop(&mut self) {
        let _ = self.command("--stop-server").output();
    }
}

#[test]
fn sccache_serves_a_dirty_rebuild_and_its_server_holds_no_build_lock() {
    if missing("sccache test", &["sccache"], "sccache") {
        return;
    }
    let fx = Fixture::git();
    let sccache = Sccache::new(fx.root.path());
    let fx = fixture_with(fx, &sccache.env);
    let run = fx.build(&["--wrapper", "sccache", "--cpu-cap", "1"]);
    run.assert_ok()
        .assert_stderr_has("building with sccache (-j1; local: 1 CPU)");
    assert_plain_key(&fx, &run);

    // The server outlives the build. Had a compile started it, it would
    // hold the tree's lock and the next build of the tree would wait for
    // ever: ktstr starts it as a service instead.
    fx.dirty_tracked_file();
    for _ in 0..2 {
        fx.spawn_build(&["--wrapper", "sccache"], &[])
            .wait(std::time::Duration::from_secs(120))
            .assert_ok()
            .assert_stderr_has("not cached");
    }
    assert!(
        sccache.hits() >= 2,
        "the dirty rebuilds did not hit sccache"
    );
}

#[test]
fn per_host_config_picks_the_wrapper_and_wrapper_none_drops_it() {
    if missing("wrapper config test", &["ccache"], "ccache") {
        return;
    }
    let fx = Fixture::git();
    let ccache_dir = fx.root.path().join("ccache");
    let fx = fx.with_env("CCACHE_DIR", ccache_dir.to_str().unwrap());
    write_config(&fx, "[hosts.\"*\".plugin.kbuild]\nwrapper = \"ccache\"\n");
    fx.build(&[])
        .assert_ok()
        .assert_stderr_has("building with ccache");
    fx.build(&["--wrapper", "none", "--force", "--cpu-cap", "1"])
        .assert_ok()
        .assert_stderr_has("building (make -j1)")
        .assert_stderr_lacks("ccache");
    write_config(&fx, "[plugin.kbuild]\nwrapper = \"ccach\"\n");
    fx.build(&[])
        .assert_fails()
        .assert_stderr_has("wrapper ccach: not a compiler wrapper ktstr knows")
        .assert_hint();
}

#[test]
fn a_missing_engine_builds_locally_with_one_warning_unless_required() {
    let closed = daemons::free_port(false);
    let fx = Fixture::git().with_env("DISTCC_HOSTS", &format!("127.0.0.1:{closed}/4"));
    // distcc itself may be absent: either way it cannot run.
    let run = fx.build(&["--wrapper", "distcc", "--cpu-cap", "1"]);
    run.assert_ok().assert_stderr_has("building (make -j1)");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.describe());
    assert!(
        warnings[0].starts_with("ktstr: warning: wrapper distcc: ")
            && warnings[0].contains("building locally without it"),
        "{}",
        warnings[0]
    );
    assert_eq!(run.cached_key(), plain_key(&fx));

    let builds = fx.build_count();
    let required = fx.build(&["--wrapper", "distcc", "--wrapper-required", "--force"]);
    required
        .assert_fails()
        .assert_stderr_has("wrapper distcc is required, but ")
        .assert_hint();
    assert_eq!(required.code(), Some(1), "{}", required.describe());
    assert_eq!(
        fx.build_count(),
        builds,
        "make ran for a failed requirement"
    );

    // Not installed: the hint names the package.
    let bin = common::path_without(fx.root.path(), &["sccache"]);
    let args = fx.build_args(&["--wrapper", "sccache", "--wrapper-required", "--force"]);
    let mut cmd = fx.command(&args);
    cmd.env("PATH", &bin);
    let run = fx.run_cmd(cmd, &args);
    run.assert_fails()
        .assert_stderr_has("wrapper sccache is required, but sccache is not installed")
        .assert_stderr_has("apt-get install sccache");
}

#[test]
fn bad_wrapper_flags_are_usage_errors() {
    let fx = Fixture::git();
    let run = fx.build(&["--wrapper", "distc"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    run.assert_stderr_has("invalid value 'distc' for '--wrapper <NAME>': not a compiler wrapper");
    let run = fx.build(&["--wrapper-required"]);
    assert_eq!(run.code(), Some(2), "{}", run.describe());
    run.assert_stderr_has("ktstr: error: --wrapper-required: no wrapper is chosen")
        .assert_hint();
    fx.assert_nothing_cached();
}

#[test]
fn a_wrapper_that_changes_the_compilers_version_line_is_not_used() {
    // kbuild records `$(CC) --version` in .config and the kernel; a wrapper
    // answering differently would build another kernel under this key.
    let fx = Fixture::git();
    let bin = fx.root.path().join("fake-bin");
    fs::create_dir(&bin).unwrap();
    let fake = bin.join("sccache");
    fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = --start-server ] && exit 0\n\
         [ \"$2\" = --version ] && { echo 'patched-gcc 1.0'; exit 0; }\nexec \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let fx = fx.with_env("PATH", &path);
    let run = fx.build(&["--wrapper", "sccache", "--cpu-cap", "1"]);
    run.assert_ok()
        .assert_stderr_has(
            "warning: wrapper sccache: `sccache gcc --version` answers `patched-gcc 1.0`, not `gcc ",
        )
        .assert_stderr_has("building (make -j1)");
    assert_eq!(run.cached_key(), plain_key(&fx));
    fx.build(&["--wrapper", "sccache", "--wrapper-required", "--force"])
        .assert_fails()
        .assert_stderr_has("wrapper sccache is required, but `sccache gcc --version`");
}
