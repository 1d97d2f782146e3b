//! Trees whose content is not pinned by a commit are built but never cached.

mod common;

use std::fs;
use std::time::Duration;

use common::{Fixture, canon};

#[test]
fn dirty_git_tree_is_built_but_not_cached() {
    let fx = Fixture::git();
    fx.dirty_tracked_file();
    let run = fx.build(&[]);
    let image = run.image_path();
    assert_eq!(
        canon(&image),
        canon(&fx.tree_image()),
        "a dirty build prints the in-tree image\n{}",
        run.describe()
    );
    run.assert_stderr_has("has uncommitted changes")
        .assert_stderr_has("commit or stash")
        .assert_stderr_has("not cached")
        .assert_stderr_lacks("ktstr: cached ");
    assert_eq!(fx.build_count(), 1);
    fx.assert_nothing_cached();

    // Committing the edit makes the next build cacheable.
    common::git(&fx.tree, &["commit", "-q", "-am", "edit"]);
    let run = fx.build(&[]);
    run.image_path();
    run.cached_key();
    assert_eq!(fx.list_json().len(), 1);
}

/// Untracked files do not make a tree dirty, the same rule the kernel's own
/// `scripts/setlocalversion` uses for its `-dirty` suffix (`git diff-index`):
/// kernel trees routinely hold stray patches and notes, and treating them as
/// dirty would mean never caching such trees. The caveat (an untracked
/// top-level `localversion*` file changes the release string) is documented.
#[test]
fn untracked_file_does_not_make_the_tree_dirty() {
    let fx = Fixture::git();
    fs::write(fx.tree.join("notes-for-review.txt"), "todo\n").unwrap();
    let run = fx.build(&[]);
    run.image_path();
    run.cached_key();
    run.assert_stderr_lacks("not cached");
    assert_eq!(fx.list_json().len(), 1);
}

#[test]
fn non_git_tree_is_built_but_not_cached() {
    let fx = Fixture::plain();
    let run = fx.build(&[]);
    let image = run.image_path();
    assert_eq!(canon(&image), canon(&fx.tree_image()), "{}", run.describe());
    run.assert_stderr_has("not a git repository")
        .assert_stderr_has("git init")
        .assert_stderr_has("not cached")
        .assert_stderr_lacks("ktstr: cached ");
    fx.assert_nothing_cached();
}

#[test]
fn tree_changed_during_the_build_is_not_cached() {
    let fx = Fixture::git();
    let mut child = fx.spawn_build(&[], &[("KTSTR_FIXTURE_BUILD_SECONDS", "3")]);
    fx.wait_for_build_start(1, &mut child, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    fx.dirty_tracked_file();
    let run = child.wait(Duration::from_secs(120));
    let image = run.image_path();
    assert_eq!(canon(&image), canon(&fx.tree_image()), "{}", run.describe());
    run.assert_stderr_has("changed during the build")
        .assert_stderr_has("not cached")
        .assert_stderr_lacks("ktstr: cached ");
    fx.assert_nothing_cached();
}
