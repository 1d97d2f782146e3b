//! A fleet builds each kernel once: cache roots ("machines") that miss the
//! same key at once against one s3s-fs bucket take turns through the
//! bucket's build lease. One builds; the others wait for its entry and pull
//! it. A holder killed with -9 is taken over after the lease's expiry; a
//! holder whose build fails, or that is interrupted, releases the lease at
//! once. With leases off, the same race builds on every machine. Skips
//! with the reason when s3s-fs is not installed (.ci/run installs it).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Fixture, Gate, Run, Spawned};
use ktstr_test_servers::S3Server;

/// Far longer than any of these builds: a waiter that gets the lease
/// sooner got it because the holder released it, not because it expired.
const LONG_EXPIRY: &str = "120s";

/// A machine on the bucket at `port`, with lease timings small enough for
/// a test (`expiry` after the last heartbeat, which comes every 300 ms).
fn machine(port: u16, expiry: &str) -> Fixture {
    Fixture::plain()
        .on_s3(port)
        .with_env("KTSTR_S3_LEASE_HEARTBEAT", "300ms")
        .with_env("KTSTR_S3_LEASE_EXPIRY", expiry)
        .with_env("KTSTR_S3_LEASE_POLL", "200ms")
}

/// `ktstr build --kernel SPEC --plugin s3-cache` in the background, its
/// make held at `gate` if there is one.
fn spawn_build(fx: &Fixture, spec: &Path, gate: Option<&Gate>) -> Spawned {
    fx.spawn(
        &[
            "build",
            "--kernel",
            spec.to_str().unwrap(),
            "--plugin",
            "s3-cache",
        ],
        &gate.map(Gate::env).into_iter().collect::<Vec<_>>(),
    )
}

/// What a machine that found another's lease says.
const WAITS_ON_THE_LEASE: &str = "is being built by host";

/// The machine whose make has started, once one has.
fn the_builder(fleet: &[Fixture]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(i) = fleet.iter().position(|m| m.build_count() > 0) {
            return i;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no machine started make within 60s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files under the bucket's `dir` (relative to the prefix's `v1`).
fn objects_under(s3: &S3Server, dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&s3.bucket_dir().join("ktstr/v1").join(dir), &mut out);
    out
}

fn archives(s3: &S3Server) -> usize {
    (objects_under(s3, "archives").iter())
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .count()
}

/// Every lease was released (or, for a killed holder, replaced and then
/// released by whoever took it over).
#[track_caller]
fn no_lease_left(s3: &S3Server) {
    let left = objects_under(s3, "leases");
    assert!(left.is_empty(), "leases left in the bucket: {left:?}");
}

#[test]
fn three_machines_missing_at_once_build_once() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.11");
    let fleet: Vec<Fixture> = (0..3).map(|_| machine(s3.port, "10s")).collect();
    let gate = Gate::new();
    let mut running: Vec<Spawned> = (fleet.iter())
        .map(|m| spawn_build(m, &spec, Some(&gate)))
        .collect();
    // One machine builds, held at make until the other two wait on its
    // lease.
    let first = the_builder(&fleet);
    for (_, waiter) in running.iter_mut().enumerate().filter(|(i, _)| *i != first) {
        waiter.wait_for_stderr(WAITS_ON_THE_LEASE, Duration::from_secs(60));
    }
    gate.open();
    let runs: Vec<Run> = (running.into_iter())
        .map(|r| r.wait(Duration::from_secs(120)))
        .collect();

    let makes: usize = fleet.iter().map(Fixture::build_count).sum();
    let everything = || {
        runs.iter()
            .map(Run::describe)
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!("fleet of 3: {makes} make run(s) built the kernel");
    assert_eq!(makes, 1, "the fleet built more than once\n{}", everything());
    for run in &runs {
        run.image_path();
        run.assert_stderr_lacks("warning");
    }
    let builder = fleet.iter().position(|m| m.build_count() == 1).unwrap();
    let key = runs[builder].cached_key();
    for (i, run) in runs.iter().enumerate().filter(|(i, _)| *i != builder) {
        run.assert_stderr_has("not building it here");
        assert!(
            run.stdout
                .trim()
                .starts_with(fleet[i].cache.to_str().unwrap()),
            "machine {i} serves the image from its own cache\n{}",
            run.describe()
        );
        let listed = fleet[i].list_json();
        assert_eq!(listed[0]["key"], key.as_str(), "{listed:?}");
    }
    assert_eq!(archives(&s3), 1, "archives in the bucket");
    no_lease_left(&s3);
}

/// The same race with leases off (what http-cache and stores without
/// conditional PUT get): every machine builds, every build is uploaded.
/// Shows the test above measures the leases, not the timing.
#[test]
fn without_leases_the_same_fleet_builds_three_times() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.15");
    let fleet: Vec<Fixture> = (0..3)
        .map(|_| machine(s3.port, "5s").with_env("KTSTR_S3_LEASES", "0"))
        .collect();
    let running: Vec<Spawned> = (fleet.iter())
        .map(|m| spawn_build(m, &spec, None))
        .collect();
    for run in running {
        run.wait(Duration::from_secs(120)).image_path();
    }
    let makes: usize = fleet.iter().map(Fixture::build_count).sum();
    eprintln!("fleet of 3 without leases: {makes} make runs built the kernel");
    assert_eq!(makes, 3);
    assert_eq!(archives(&s3), 3, "each build is its own archive");
    no_lease_left(&s3);
}

#[test]
fn a_holder_killed_with_sigkill_is_taken_over_after_the_expiry() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.12");
    let holder = machine(s3.port, "5s");
    let waiter = machine(s3.port, "5s");

    let never = Gate::new();
    let mut held = spawn_build(&holder, &spec, Some(&never));
    holder.wait_for_build_start(1, &mut held, Duration::from_secs(60));
    let mut waiting = spawn_build(&waiter, &spec, None);
    waiting.wait_for_stderr(WAITS_ON_THE_LEASE, Duration::from_secs(60));
    let pid = nix::unistd::Pid::from_raw(held.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = held.wait(Duration::from_secs(10));
    assert!(killed.code().is_none(), "{}", killed.describe());
    kill_everything_in(&holder.cache);

    let run = waiting.wait(Duration::from_secs(60));
    run.image_path();
    run.assert_stderr_has("is being built by host")
        .assert_stderr_has(&format!("pid {}", pid))
        .assert_stderr_has("has had no heartbeat for")
        .assert_stderr_has("taking it over");
    assert_eq!(
        waiter.build_count(),
        1,
        "the waiter built after taking over"
    );
    assert_eq!(archives(&s3), 1);
    no_lease_left(&s3);
}

/// The killed holder's make and its children (ktstr -9 leaves them).
fn kill_everything_in(dir: &Path) {
    for (pid, _, _) in common::processes_in(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    common::assert_nothing_runs_in(dir, Duration::from_secs(10), "the killed holder");
}

/// A holder that stops building (`stop` it, or fail its build at the
/// gate) hands the lease on at once: the waiter builds long before the
/// lease could have expired.
fn a_failed_holder_releases(version: &str, stop: impl FnOnce(&mut Spawned, &Gate)) {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), version);
    let holder = machine(s3.port, LONG_EXPIRY);
    let waiter = machine(s3.port, LONG_EXPIRY);

    let gate = Gate::new();
    let mut held = spawn_build(&holder, &spec, Some(&gate));
    holder.wait_for_build_start(1, &mut held, Duration::from_secs(60));
    let mut waiting = spawn_build(&waiter, &spec, None);
    waiting.wait_for_stderr(WAITS_ON_THE_LEASE, Duration::from_secs(60));
    stop(&mut held, &gate);
    let stopped = held.wait(Duration::from_secs(30));
    assert!(
        matches!(stopped.code(), Some(1 | 130)),
        "{}",
        stopped.describe()
    );
    stopped.assert_no_panic();

    let run = waiting.wait(Duration::from_secs(60));
    run.image_path();
    run.assert_stderr_lacks("taking it over");
    assert!(
        run.elapsed < Duration::from_secs(60),
        "the waiter waited for the expiry, not the release\n{}",
        run.describe()
    );
    assert_eq!(waiter.build_count(), 1);
    assert_eq!(archives(&s3), 1);
    no_lease_left(&s3);
}

#[test]
fn a_holder_whose_build_fails_releases_the_lease() {
    a_failed_holder_releases("6.99.13", |_, gate| gate.fail());
}

#[test]
fn an_interrupted_holder_releases_the_lease() {
    a_failed_holder_releases("6.99.14", |held, _| {
        let pid = nix::unistd::Pid::from_raw(held.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    });
}
