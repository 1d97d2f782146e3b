//! A killed ktstr never poisons the cache (issue 12, classes 1, 3 and 7).
//!
//! ktstr is killed (`kill -9` of ktstr alone and of its whole process
//! group, SIGHUP, two quick SIGINTs) while make waits, while the compiler
//! runs and while vmlinux is stripped. Each time: no process of the build
//! outlives it (nothing runs in the tree a few seconds later), the tree
//! lock is free, nothing half-built is cached, nothing is left in $TMPDIR,
//! and the next build of the tree builds and caches its own kernel, with no
//! leftover writer touching the tree after it.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Fixture, Run, Spawned};

/// How ktstr is killed.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// `kill -9 <ktstr>`.
    Alone,
    /// `kill -9 -<ktstr's process group>`: ktstr and whatever shares its
    /// group (an objcopy; make runs in a group of its own).
    Group,
    /// SIGHUP (a closed terminal): handled like Ctrl-C.
    Hangup,
    /// Two SIGINTs in quick succession: the second kills ktstr at once.
    TwoInterrupts,
}

/// Start `ktstr build` in a process group of its own (so that the test can
/// signal the group without signalling itself).
fn spawn_in_own_group(fx: &Fixture, extra: &[&str], env: &[(&str, String)]) -> Spawned {
    let args: Vec<String> = fx.build_args(extra).iter().map(|s| s.to_string()).collect();
    let mut cmd = fx.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    Spawned::new(args, cmd.spawn().expect("spawn ktstr"))
}

fn signal(pid: u32, how: Kill) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    match how {
        Kill::Alone => kill(pid, Signal::SIGKILL).unwrap(),
        // The test spawned ktstr as its group's leader.
        Kill::Group => killpg(pid, Signal::SIGKILL).unwrap(),
        Kill::Hangup => kill(pid, Signal::SIGHUP).unwrap(),
        Kill::TwoInterrupts => {
            kill(pid, Signal::SIGINT).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let _ = kill(pid, Signal::SIGINT);
        }
    }
}

/// A `cc` that marks the moment it compiles vmlinux, then takes `seconds`.
fn slow_cc(fx: &Fixture, seconds: u32) -> (PathBuf, PathBuf) {
    let marker = fx.root.path().join("cc-started");
    let script = fx.write_file(
        "slow-cc",
        &format!(
            "#!/bin/sh\ncase \" $* \" in *\" -o vmlinux \"*) touch '{}'; sleep {seconds};; esac\nexec cc \"$@\"\n",
            marker.display()
        ),
    );
    make_executable(&script);
    (script, marker)
}

/// A directory with an `objcopy` that marks its start, then takes
/// `seconds` before running the real one.
fn slow_objcopy(fx: &Fixture, seconds: u32) -> (PathBuf, PathBuf) {
    let marker = fx.root.path().join("objcopy-started");
    let dir = fx.root.path().join("slow-bin");
    fs::create_dir_all(&dir).unwrap();
    let real = which("objcopy").expect("objcopy (binutils) on PATH");
    let script = dir.join("objcopy");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\nsleep {seconds}\nexec '{}' \"$@\"\n",
            marker.display(),
            real.display()
        ),
    )
    .unwrap();
    make_executable(&script);
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (PathBuf::from(path), marker)
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[track_caller]
fn wait_for_file(path: &Path, child: &mut Spawned, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            child.child.try_wait().unwrap().is_none(),
            "ktstr exited before {} appeared",
            path.display()
        );
        assert!(
            start.elapsed() < timeout,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Directories ktstr left in its private `$TMPDIR`.
fn tmpdir_leftovers(tmp: &Path) -> Vec<String> {
    fs::read_dir(tmp)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What the killed run must look like from outside.
#[track_caller]
fn assert_killed(run: &Run, how: Kill) {
    match how {
        Kill::Alone | Kill::Group | Kill::TwoInterrupts => {
            // Killed by a signal, or (a second SIGINT that lost the race
            // with the first's unwinding) exited as interrupted.
            assert!(
                run.code().is_none() || run.code() == Some(130),
                "{how:?}: {}",
                run.describe()
            );
        }
        Kill::Hangup => {
            assert_eq!(run.code(), Some(130), "{}", run.describe());
            run.assert_stderr_has("interrupted").assert_no_panic();
        }
    }
}

/// The phase of the build in which ktstr is killed.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// make is running its recipe (the fixture's sleep).
    Make,
    /// The compiler is running (a slow `cc` under make).
    Compile,
}

/// Kill ktstr `how` during `phase`, then check the class-1 promises and
/// build again at once.
fn kill_then_rebuild(phase: Phase, how: Kill) {
    let fx = Fixture::git();
    let tmp = fx.root.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut env = vec![("TMPDIR", tmp.display().to_string())];
    // How long the killed build's recipe would still have run.
    const SECONDS: u32 = 4;
    let marker = match phase {
        Phase::Make => {
            env.push(("KTSTR_FIXTURE_BUILD_SECONDS", SECONDS.to_string()));
            None
        }
        Phase::Compile => {
            let (cc, marker) = slow_cc(&fx, SECONDS);
            env.push(("CC", cc.display().to_string()));
            Some(marker)
        }
    };
    let mut victim = spawn_in_own_group(&fx, &["--reserver", "none"], &env);
    fx.wait_for_build_start(1, &mut victim, Duration::from_secs(60));
    match &marker {
        Some(m) => wait_for_file(m, &mut victim, Duration::from_secs(60)),
        None => std::thread::sleep(Duration::from_millis(300)),
    }
    assert!(
        !common::processes_in(&fx.tree).is_empty(),
        "the build should be running in the tree"
    );
    signal(victim.pid(), how);
    let killed_at = Instant::now();
    let killed = victim.wait(Duration::from_secs(30));
    assert_killed(&killed, how);

    // No process of the killed build survives it for long (make dies with
    // ktstr; the reaper kills its group), and so the lock is free.
    common::assert_nothing_runs_in(&fx.tree, Duration::from_secs(3), &killed.describe());
    common::assert_tree_lock_free(&fx.cache, &fx.tree);
    fx.assert_nothing_cached();
    assert_eq!(
        tmpdir_leftovers(&tmp),
        Vec::<String>::new(),
        "ktstr wrote to $TMPDIR"
    );

    // The next build of the tree builds its own kernel and caches it.
    let again = fx.build(&["--reserver", "none"]);
    let image = again.image_path();
    let key = again.cached_key();
    assert_eq!(fx.build_count(), 2, "{:?}", fx.make_log());
    let tree_image = fx.tree_image();
    let written = fs::metadata(&tree_image).unwrap().modified().unwrap();
    // Past the moment the killed build's sleep or compiler would have
    // ended: nothing of it may write into the tree afterwards.
    let orphan_done = killed_at + Duration::from_secs(u64::from(SECONDS) + 1);
    std::thread::sleep(orphan_done.saturating_duration_since(Instant::now()));
    let still = fs::metadata(&tree_image).unwrap().modified().unwrap();
    assert_eq!(
        written, still,
        "something wrote the tree's bzImage after the rebuild"
    );
    assert_eq!(
        fs::read(&image).unwrap(),
        fs::read(&tree_image).unwrap(),
        "the cached image is not what the rebuild made"
    );
    assert_eq!(fx.list_json().len(), 1, "{key}");
}

#[test]
fn kill_9_during_make_takes_make_along() {
    kill_then_rebuild(Phase::Make, Kill::Alone);
}

#[test]
fn kill_9_of_the_group_during_make_takes_make_along() {
    kill_then_rebuild(Phase::Make, Kill::Group);
}

#[test]
fn kill_9_during_the_compiler_takes_the_compiler_along() {
    kill_then_rebuild(Phase::Compile, Kill::Alone);
}

#[test]
fn kill_9_of_the_group_during_the_compiler_takes_it_along() {
    kill_then_rebuild(Phase::Compile, Kill::Group);
}

#[test]
fn sighup_during_make_stops_cleanly() {
    kill_then_rebuild(Phase::Make, Kill::Hangup);
}

#[test]
fn two_quick_sigints_during_the_compiler_leave_nothing_running() {
    kill_then_rebuild(Phase::Compile, Kill::TwoInterrupts);
}

/// Names in `<cache>/scratch` that a strip staged.
fn strip_scratch(fx: &Fixture) -> Vec<String> {
    fs::read_dir(fx.cache.join("scratch"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("strip-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Interrupt ktstr while objcopy strips vmlinux: exit 130, "interrupted",
/// nothing cached, no staging directory left, under the cache root or in
/// $TMPDIR. `group`: the signal also reaches objcopy (a terminal's Ctrl-C),
/// which dies of it; that is an interrupt, not an objcopy failure.
fn interrupt_during_strip(sig: nix::sys::signal::Signal, group: bool) {
    let fx = Fixture::git();
    let tmp = fx.root.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let (path, marker) = slow_objcopy(&fx, 2);
    let env = [
        ("TMPDIR", tmp.display().to_string()),
        ("PATH", path.display().to_string()),
    ];
    let mut victim = spawn_in_own_group(&fx, &["--reserver", "none"], &env);
    wait_for_file(&marker, &mut victim, Duration::from_secs(60));
    assert_eq!(
        strip_scratch(&fx).len(),
        1,
        "the strip stages under the cache root"
    );
    let pid = nix::unistd::Pid::from_raw(victim.pid() as i32);
    if group {
        nix::sys::signal::killpg(pid, sig).unwrap();
    } else {
        nix::sys::signal::kill(pid, sig).unwrap();
    }
    let run = victim.wait(Duration::from_secs(60));
    assert_eq!(run.code(), Some(130), "{}", run.describe());
    run.assert_stderr_has("interrupted")
        .assert_stderr_lacks("exit None")
        .assert_stderr_lacks("killed by a signal")
        .assert_stderr_lacks("ktstr: cached ")
        .assert_no_panic();
    fx.assert_nothing_cached();
    assert_eq!(strip_scratch(&fx), Vec::<String>::new());
    assert_eq!(tmpdir_leftovers(&tmp), Vec::<String>::new());
    common::assert_nothing_runs_in(&fx.tree, Duration::from_secs(5), &run.describe());
}

#[test]
fn sigint_of_ktstr_during_strip_caches_nothing() {
    interrupt_during_strip(nix::sys::signal::Signal::SIGINT, false);
}

#[test]
fn sigint_of_the_group_during_strip_is_an_interrupt_not_an_objcopy_failure() {
    interrupt_during_strip(nix::sys::signal::Signal::SIGINT, true);
}

#[test]
fn sigterm_of_the_group_during_strip_caches_nothing() {
    interrupt_during_strip(nix::sys::signal::Signal::SIGTERM, true);
}

/// `kill -9` during the strip leaves the staging directory under the cache
/// root (never in $TMPDIR), where the next build sweeps it.
#[test]
fn kill_9_during_strip_leaves_only_what_the_next_build_sweeps() {
    let fx = Fixture::git();
    let tmp = fx.root.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let (path, marker) = slow_objcopy(&fx, 2);
    let env = [
        ("TMPDIR", tmp.display().to_string()),
        ("PATH", path.display().to_string()),
    ];
    let mut victim = spawn_in_own_group(&fx, &["--reserver", "none"], &env);
    wait_for_file(&marker, &mut victim, Duration::from_secs(60));
    let pid = victim.pid();
    signal(pid, Kill::Alone);
    let killed = victim.wait(Duration::from_secs(30));
    assert!(killed.code().is_none(), "{}", killed.describe());
    let left = strip_scratch(&fx);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(&format!("strip-{pid}-")), "{left:?}");
    fx.assert_nothing_cached();
    assert_eq!(tmpdir_leftovers(&tmp), Vec::<String>::new());

    let again = fx.build(&["--reserver", "none"]);
    again.image_path();
    again.cached_key();
    assert_eq!(strip_scratch(&fx), Vec::<String>::new(), "not swept");
}
