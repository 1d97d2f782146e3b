//! The real tiny kernel through compiler wrappers, on the real-kernel
//! test's one unpacked tree (after its in-tree build is cached; the tree is
//! then configured in place, so these build in tree too): one build
//! through a distccd on loopback and one through an icecream scheduler +
//! iceccd, each with `--force`, must land on the plain build's key with the
//! daemon's own log showing the kernel's compiles; then a dirty tree built
//! twice through ccache, the second time after touching a header every file
//! includes, must show ccache hits. The tree's tracked files are left as
//! found. Each build is a full one (the `CC` command changes each time).
//! A missing engine skips its step, naming the package.

use std::fs;
use std::path::Path;

use crate::common::{self, Fixture};
use crate::daemons::{Distccd, Icecream, ccache_stat, daemon_dir, missing};

/// Every wrapper step; `plain_key` is the in-tree gcc build's key.
pub fn wrapper_builds(fx: &Fixture, plain_key: &str) {
    distcc_build(fx, plain_key);
    icecc_build(fx, plain_key);
    ccache_rebuild(fx);
}

/// `--profile tiny --cpu-cap 2 --force` with `flags`.
fn forced_build(fx: &Fixture, name: &str, flags: &[&str], env: &[(String, String)]) -> common::Run {
    let mut args = fx.build_args(&["--profile", "tiny", "--cpu-cap", "2", "--force"]);
    args.extend(flags);
    let mut cmd = fx.command(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = fx.run_cmd(cmd, &args);
    // Uncaptured, so CI's log shows what each wrapper build costs.
    ktstr_sdk::testing::note(format!(
        "real-kernel {name} build: {:.1}s",
        run.elapsed.as_secs_f64()
    ));
    run
}

/// More than a hundred of `jobs` are the kernel's own sources, not host
/// tools (`scripts/`) or the compiler probe.
fn assert_kernel_compiles(engine: &str, jobs: &[String]) {
    let kernel = jobs
        .iter()
        .filter(|j| j.ends_with(".c") && !j.contains("scripts/") && *j != "probe.c")
        .count();
    assert!(
        kernel > 100,
        "{engine}: {kernel} kernel compiles among {} jobs; first: {:?}",
        jobs.len(),
        jobs.iter().take(8).collect::<Vec<_>>()
    );
}

pub fn distcc_build(fx: &Fixture, plain_key: &str) {
    if missing("real-kernel distcc build", &["distcc", "distccd"], "distcc") {
        return;
    }
    let dir = daemon_dir();
    let d = Distccd::start(dir.path(), None);
    let run = forced_build(
        fx,
        "distcc",
        &["--wrapper", "distcc", "--wrapper-required"],
        &d.env(2),
    );
    run.assert_ok()
        .assert_stderr_has("building with distcc (2 remote slots, -j2; local: 2 CPUs)")
        .assert_stderr_lacks("warning: distcc host");
    assert_eq!(run.cached_key(), plain_key, "{}", run.describe());
    let jobs = d.compiled();
    assert_kernel_compiles("distccd", &jobs);
}

pub fn icecc_build(fx: &Fixture, plain_key: &str) {
    if missing(
        "real-kernel icecream build",
        &["icecc", "iceccd", "icecc-scheduler"],
        "icecc",
    ) {
        return;
    }
    let dir = daemon_dir();
    let ice = Icecream::start(dir.path());
    let run = forced_build(
        fx,
        "icecc",
        &["--wrapper", "icecc", "--wrapper-required"],
        &ice.env(),
    );
    run.assert_ok()
        .assert_stderr_has("building with icecc (-j2; local: 2 CPUs)");
    assert_eq!(run.cached_key(), plain_key, "{}", run.describe());
    // The scheduler's NEW lines end with the source file and its language.
    let jobs: Vec<String> = ice
        .jobs()
        .iter()
        .filter_map(|l| l.split_whitespace().rev().nth(2).map(str::to_string))
        .collect();
    assert_kernel_compiles("icecc-scheduler", &jobs);
}

pub fn ccache_rebuild(fx: &Fixture) {
    if missing("real-kernel ccache rebuild", &["ccache"], "ccache") {
        return;
    }
    let ccache_dir = fx.root.path().join("ccache");
    let env = [(
        "CCACHE_DIR".to_string(),
        ccache_dir.to_str().unwrap().to_string(),
    )];
    let args = fx.build_args(&["--profile", "tiny", "--cpu-cap", "2", "--wrapper", "ccache"]);
    let build = || {
        let mut cmd = fx.command(&args);
        cmd.envs(env.iter().cloned());
        let run = fx.run_cmd(cmd, &args);
        ktstr_sdk::testing::note(format!(
            "real-kernel ccache build: {:.1}s",
            run.elapsed.as_secs_f64()
        ));
        run.assert_ok()
            .assert_stderr_has("building with ccache (-j2; local: 2 CPUs)")
            .assert_stderr_has("not cached");
        run
    };
    let edited = fx.tree.join("init/calibrate.c");
    let original = fs::read(&edited).unwrap();
    let mut dirty = original.clone();
    dirty.extend_from_slice(b"/* a developer's uncommitted edit */\n");
    fs::write(&edited, &dirty).unwrap();

    build();
    let hits =
        |d: &Path| ccache_stat(d, "direct_cache_hit") + ccache_stat(d, "preprocessed_cache_hit");
    let (misses, before) = (ccache_stat(&ccache_dir, "cache_miss"), hits(&ccache_dir));
    assert!(misses > 100, "the first ccache build missed {misses} times");
    // Every C file includes kconfig.h (-include): all of them recompile,
    // and ccache has each one.
    let header = fx.tree.join("include/linux/kconfig.h");
    let now = std::time::SystemTime::now();
    fs::File::options()
        .append(true)
        .open(&header)
        .unwrap()
        .set_modified(now)
        .unwrap();
    build();
    let gained = hits(&ccache_dir) - before;
    assert!(
        gained > 100,
        "the rebuild after touching kconfig.h hit ccache {gained} times"
    );
    // Only what changes per build misses (the build timestamp's file, the
    // kallsyms passes): far fewer than the hits.
    let new_misses = ccache_stat(&ccache_dir, "cache_miss") - misses;
    assert!(
        new_misses * 10 < gained,
        "the rebuild missed ccache {new_misses} times and hit it {gained} times"
    );

    fs::write(&edited, &original).unwrap();
    assert_eq!(
        common::git(&fx.tree, &["status", "--porcelain", "--untracked-files=no"]),
        "",
        "the ccache step left the tree changed"
    );
}
