//! Single-flight is a cache guarantee, not a side effect of the CPU
//! reservation (issue 12, class 4): four concurrent builds of one key run
//! make once with `--reserver none` and with `KTSTR_BYPASS_LLC_LOCKS`, for
//! a local tree, a tarball and a git remote. The others wait on the key's
//! (or the tree's) lock, say for whom, look in the cache again and are
//! served the peer's entry.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Fixture, Gate, Run, make_tarball};

/// Start four builds of `spec` at once (the first one first, until make
/// runs, where it stays until the other three say they wait), wait for
/// all, and check that make built once and every run got the same image.
fn four_at_once(fx: &Fixture, spec: &str, extra: &[&str]) -> Vec<Run> {
    let mut args = vec!["build", "--kernel", spec];
    args.extend_from_slice(extra);
    let gate = Gate::new();
    let mut first = fx.spawn(&args, &[gate.env()]);
    let first_pid = first.pid();
    fx.wait_for_build_start(1, &mut first, Duration::from_secs(60));
    let mut others: Vec<_> = (0..3).map(|_| fx.spawn(&args, &[gate.env()])).collect();
    for other in &mut others {
        other.wait_for_stderr("waiting", Duration::from_secs(60));
    }
    gate.open();
    let mut runs = vec![first.wait(Duration::from_secs(180))];
    runs.extend(others.into_iter().map(|o| o.wait(Duration::from_secs(180))));
    let image = runs[0].image_path();
    let key = runs[0].cached_key();
    for run in &runs[1..] {
        assert_eq!(run.image_path(), image, "{}", run.describe());
        run.assert_stderr_has("waiting")
            .assert_stderr_has(&format!("pid {first_pid}"))
            .assert_stderr_has("while we waited")
            .assert_stderr_has(&key)
            .assert_stderr_lacks("ktstr: cached ");
    }
    assert_eq!(
        fx.build_count(),
        1,
        "make built {} times: {:?}\n{}",
        fx.build_count(),
        fx.make_log(),
        runs.iter()
            .map(Run::describe)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(fx.list_json().len(), 1);
    runs
}

fn tarball_fixture() -> (Fixture, String) {
    let fx = Fixture::plain();
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = make_tarball(&work, "6.99.7", fx.root.path());
    (fx, file.display().to_string())
}

#[test]
fn four_builds_of_one_tree_without_a_reserver_build_once() {
    let fx = Fixture::git();
    let tree = fx.tree.display().to_string();
    let runs = four_at_once(&fx, &tree, &["--reserver", "none"]);
    runs[1].assert_stderr_has("is locked by");
}

/// The bypass skips the CPU reservation only: the tree lock still holds.
#[test]
fn bypassing_cpu_locks_still_builds_one_tree_once() {
    let fx = Fixture::git().with_env("KTSTR_BYPASS_LLC_LOCKS", "1");
    let tree = fx.tree.display().to_string();
    let runs = four_at_once(&fx, &tree, &[]);
    for run in &runs {
        run.assert_stderr_has("no CPU reservation")
            .assert_stderr_lacks("no source-tree lock");
    }
}

#[test]
fn four_builds_of_one_tarball_without_a_reserver_build_once() {
    let (fx, file) = tarball_fixture();
    let runs = four_at_once(&fx, &file, &["--reserver", "none"]);
    for run in &runs[1..] {
        run.assert_stderr_has("is being built by another ktstr");
    }
    assert_scratch_empty(&fx.cache);
}

#[test]
fn four_builds_of_one_tarball_with_the_bypass_build_once() {
    let (fx, file) = tarball_fixture();
    let fx = fx.with_env("KTSTR_BYPASS_LLC_LOCKS", "1");
    four_at_once(&fx, &file, &[]);
}

#[test]
fn four_builds_of_one_git_commit_without_a_reserver_build_once() {
    let fx = Fixture::plain();
    let repo = fx.root.path().join("remote");
    common::copy_dir(&common::fixture_src(), &repo);
    common::git_init_commit(&repo);
    let url = format!("git+file://{}#branch=main", repo.display());
    four_at_once(&fx, &url, &["--reserver", "none"]);
    assert_scratch_empty(&fx.cache);
}

/// `ktstr locks` names the per-key build lock a tarball build took.
#[test]
fn locks_lists_build_locks() {
    let (fx, file) = tarball_fixture();
    let key = fx
        .run(&["build", "--kernel", &file, "--reserver", "none"])
        .cached_key();
    let run = fx.run(&["locks", "--json", "--all"]);
    run.assert_ok();
    let text = run.stdout.clone();
    let rows = run.json();
    let found =
        rows.as_array().into_iter().flatten().any(|row| {
            row["kind"] == "build" && row["id"] == serde_json::Value::String(key.clone())
        });
    assert!(found, "no build lock for {key} in {text}");
}

fn assert_scratch_empty(cache: &Path) {
    let left: Vec<String> = std::fs::read_dir(cache.join("scratch"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch trees left: {left:?}");
}
