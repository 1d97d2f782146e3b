//! Two builds of one tree: the second waits for the first and is served
//! from the cache instead of building again.

mod common;

use std::time::Duration;

use common::{Fixture, Gate};

/// The reserver `none` takes no CPU locks, so the two meet at the tree lock.
#[test]
fn concurrent_builds_of_one_tree_build_once() {
    let fx = Fixture::git();
    let gate = Gate::new();
    let args = ["--reserver", "none"];
    let mut first = fx.spawn_build(&args, &[gate.env()]);
    let first_pid = first.pid();
    // The first holds the source-tree lock once make is building, and
    // keeps building until the second has said it waits.
    fx.wait_for_build_start(1, &mut first, Duration::from_secs(60));
    let mut second = fx.spawn_build(&args, &[gate.env()]);
    second.wait_for_stderr("is locked by", Duration::from_secs(60));
    gate.open();

    let first = first.wait(Duration::from_secs(120));
    let second = second.wait(Duration::from_secs(120));
    let first_image = first.image_path();
    let key = first.cached_key();
    assert_eq!(second.image_path(), first_image, "{}", second.describe());

    assert_eq!(
        fx.build_count(),
        1,
        "the kernel was built more than once: {:?}\n{}\n{}",
        fx.make_log(),
        first.describe(),
        second.describe()
    );
    second
        .assert_stderr_has("is locked by")
        .assert_stderr_has("waiting")
        .assert_stderr_has(&format!("pid {first_pid}"))
        .assert_stderr_has("while we waited")
        .assert_stderr_lacks("ktstr: cached ");
    assert!(
        second.stderr.contains(&key),
        "the second should name the key it got\n{}",
        second.describe()
    );
    assert_eq!(fx.list_json().len(), 1);
}

/// With the default `llc` reserver and every CPU taken by the first build,
/// the second waits for CPUs instead, names the holder, and still looks in
/// the cache afterwards.
#[test]
fn waiting_for_cpus_also_rechecks_the_cache() {
    let fx = Fixture::git();
    let gate = Gate::new();
    let all = ktstr_sdk::cpus::allowed_cpus().unwrap().len().to_string();
    let mut first = fx.spawn_build(&["--cpu-cap", &all], &[gate.env()]);
    let first_pid = first.pid();
    fx.wait_for_build_start(1, &mut first, Duration::from_secs(60));
    let mut second = fx.spawn_build(&[], &[gate.env()]);
    second.wait_for_stderr("waiting for 1 CPU", Duration::from_secs(60));
    gate.open();
    let first = first.wait(Duration::from_secs(120));
    let second = second.wait(Duration::from_secs(120));
    assert_eq!(second.image_path(), first.image_path());
    assert_eq!(fx.build_count(), 1, "{:?}", fx.make_log());
    second
        .assert_stderr_has("waiting for 1 CPU")
        .assert_stderr_has(&format!("pid {first_pid}"))
        .assert_stderr_has("while we waited")
        .assert_stderr_lacks("ktstr: cached ");
}

#[test]
fn different_trees_do_not_wait_for_each_other() {
    let a = Fixture::git();
    let mut b = Fixture::git();
    // One cache, two trees with different commits.
    b.cache = a.cache.clone();
    b.dirty_tracked_file();
    common::git(&b.tree, &["commit", "-q", "-am", "b"]);
    let slow = [("KTSTR_FIXTURE_BUILD_SECONDS", "2")];
    // Only the tree lock is under test: the default reserver would make
    // them queue for CPUs on a 1-CPU machine (reservation.rs has the test
    // of two builds sharing a host's CPUs).
    let ra = a.spawn_build(&["--reserver", "none"], &slow);
    let rb = b.spawn_build(&["--reserver", "none"], &slow);
    let ra = ra.wait(Duration::from_secs(120));
    let rb = rb.wait(Duration::from_secs(120));
    let ia = ra.image_path();
    let ib = rb.image_path();
    assert_ne!(ia, ib);
    ra.assert_stderr_lacks("is locked by");
    rb.assert_stderr_lacks("is locked by");
}

/// Identity comes first: a hit is served while another build holds the
/// tree's lock, without waiting for it.
#[test]
fn cache_hit_does_not_wait_for_a_running_build() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    let gate = Gate::new();
    let mut forced = fx.spawn_build(&["--force"], &[gate.env()]);
    fx.wait_for_build_start(2, &mut forced, Duration::from_secs(60));
    // The forced build stays at make until the hit is done: a hit that
    // waited for the tree lock would never finish.
    let hit = fx.spawn_build(&[], &[]).wait(Duration::from_secs(60));
    hit.image_path();
    assert_eq!(hit.hit_key(), key, "{}", hit.describe());
    hit.assert_stderr_lacks("is locked by");
    gate.open();
    forced.wait(Duration::from_secs(120)).assert_ok();
}

/// A build killed mid-make leaves no lock and no entry behind; the next one
/// builds and stores normally.
#[test]
fn killed_build_leaves_nothing_behind() {
    let fx = Fixture::git();
    let gate = Gate::new();
    let mut victim = fx.spawn_build(&[], &[gate.env()]);
    fx.wait_for_build_start(1, &mut victim, Duration::from_secs(60));
    victim.child.kill().unwrap();
    let killed = victim.wait(Duration::from_secs(30));
    assert!(killed.code().is_none(), "{}", killed.describe());
    // make and its jobs die with ktstr (see killed_builds.rs).
    common::assert_nothing_runs_in(&fx.tree, Duration::from_secs(3), &killed.describe());
    assert!(
        fx.entries_on_disk().is_empty(),
        "{:?}",
        fx.entries_on_disk()
    );

    let run = fx.build(&[]);
    run.image_path();
    run.assert_stderr_lacks("is locked by");
    run.cached_key();
    assert_eq!(fx.list_json().len(), 1);
}

/// Ctrl-C (SIGINT) stops the build between steps: exit 130, "interrupted",
/// nothing stored, the tree lock released.
#[test]
fn interrupted_build_stops_cleanly() {
    let fx = Fixture::git();
    let gate = Gate::new();
    let mut victim = fx.spawn_build(&[], &[gate.env()]);
    fx.wait_for_build_start(1, &mut victim, Duration::from_secs(60));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &victim.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let run = victim.wait(Duration::from_secs(60));
    assert_eq!(run.code(), Some(130), "{}", run.describe());
    run.assert_stderr_has("interrupted");
    assert!(
        fx.entries_on_disk().is_empty(),
        "{:?}",
        fx.entries_on_disk()
    );

    let again = fx.build(&[]);
    again.assert_stderr_lacks("is locked by");
    again.cached_key();
}
