//! The stat fast path: it answers "clean" only for an untouched tree and
//! hands every doubtful case to the full status walk.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use gix::bstr::BStr;

use super::*;
use crate::stat_match::all_tracked_files_match;

/// A committed fake kernel whose files are an hour old and whose index was
/// refreshed since, so no entry is racy: the state of a tree that has sat
/// untouched since its last `git status`.
fn settled_kernel() -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = committed_kernel();
    let old = SystemTime::now() - Duration::from_secs(3600);
    for file in ["Makefile", "Kconfig", "arch/x86/Kconfig", "main.c"] {
        fs::File::options()
            .append(true)
            .open(dir.join(file))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    git(&dir, &["update-index", "--refresh"]);
    (tmp, dir)
}

fn fast_path(dir: &Path, prefix: Option<&str>) -> bool {
    let repo = gix::open(dir).unwrap();
    let index = repo.index().unwrap();
    all_tracked_files_match(dir, &index, prefix.map(BStr::new))
}

fn set_mtime(path: &Path, when: SystemTime) {
    fs::File::options()
        .append(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

#[test]
fn an_untouched_tree_is_answered_by_the_fast_path() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = settled_kernel();
    assert!(fast_path(&dir, None));
    assert!(!probe(&dir).is_dirty);
}

#[test]
fn a_racy_entry_is_left_to_the_full_walk() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = settled_kernel();
    // A file stamped later than the index was written: its stat data
    // cannot vouch for its content (git's "racy" entries).
    set_mtime(
        &dir.join("main.c"),
        SystemTime::now() + Duration::from_secs(10),
    );
    git(&dir, &["update-index", "--refresh"]);
    assert!(!fast_path(&dir, None));
    assert!(!probe(&dir).is_dirty, "the full walk still finds it clean");
}

#[test]
fn a_same_size_edit_with_its_mtime_put_back_is_caught() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = settled_kernel();
    let file = dir.join("main.c");
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replace("return 0", "return 7")).unwrap();
    set_mtime(&file, mtime);
    assert!(!fast_path(&dir, None), "ctime moved: not trusted");
    assert!(probe(&dir).is_dirty);
}

#[test]
fn a_directory_swapped_for_a_symlink_to_its_twin_is_not_followed() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = settled_kernel();
    // Renaming keeps every file's inode and times; only the path changed.
    fs::rename(dir.join("arch"), dir.join("arch-moved")).unwrap();
    std::os::unix::fs::symlink("arch-moved", dir.join("arch")).unwrap();
    assert!(!fast_path(&dir, None));
    assert!(probe(&dir).is_dirty, "git sees arch/x86/Kconfig deleted");
}

#[test]
fn type_and_mode_changes_are_caught() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = settled_kernel();
    let file = dir.join("main.c");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!fast_path(&dir, None));
    assert!(probe(&dir).is_dirty);

    let (_tmp, dir) = settled_kernel();
    fs::remove_file(dir.join("main.c")).unwrap();
    fs::create_dir(dir.join("main.c")).unwrap();
    assert!(!fast_path(&dir, None));
    assert!(probe(&dir).is_dirty);

    let (_tmp, dir) = settled_kernel();
    fs::remove_file(dir.join("Kconfig")).unwrap();
    assert!(!fast_path(&dir, None));
    assert!(probe(&dir).is_dirty);
}

#[test]
fn only_the_tree_under_the_prefix_counts() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = settled_kernel();
    fs::write(dir.join("main.c"), "changed\n").unwrap();
    assert!(fast_path(&dir, Some("arch/")));
    assert!(!fast_path(&dir, None));
}

#[test]
fn a_large_index_is_checked_in_every_run() {
    if !git_available() {
        return;
    }
    // Enough entries for several threads; a change in any run is found.
    let (_tmp, dir) = committed_kernel();
    let old = SystemTime::now() - Duration::from_secs(3600);
    let mut files = Vec::new();
    // Just over one thread's share, so two runs on two CPUs.
    for d in 0..90 {
        let sub = dir.join(format!("drivers/d{d:03}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..100 {
            let file = sub.join(format!("f{f:03}.c"));
            fs::write(&file, format!("int f{d}_{f};\n")).unwrap();
            files.push(file);
        }
    }
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "-m", "many"]);
    for file in files.iter().chain([&dir.join("main.c")]) {
        set_mtime(file, old);
    }
    git(&dir, &["update-index", "--refresh"]);
    assert!(fast_path(&dir, None));
    for (n, file) in [&files[0], files.last().unwrap()].into_iter().enumerate() {
        // A whole second later, so git's refresh (which compares seconds)
        // records the new stat data.
        set_mtime(file, old + Duration::from_secs(n as u64 + 1));
        assert!(!fast_path(&dir, None), "{} changed", file.display());
        git(&dir, &["update-index", "--refresh"]);
        assert!(fast_path(&dir, None), "settled again");
    }
}
