//! The dirty check: clean, modified, staged, untracked, unborn, foreign
//! and nested repositories.

use super::*;
use crate::probe::not_git;

#[test]
fn clean_repo_is_clean_and_reports_head() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    let head = git(&dir, &["rev-parse", "HEAD"]);
    assert_eq!(
        probe(&dir),
        SourceState {
            is_dirty: false,
            is_git: true,
            head: Some(head.clone()),
        }
    );

    let src = acquire(dir_str(&dir)).unwrap();
    assert_eq!(src.source_dir, dir);
    assert_eq!(src.version.as_deref(), Some("6.99.0"));
    assert_eq!(
        src.identity,
        SourceIdentity {
            kind: "local".into(),
            id: head.clone(),
            short: Some(head[..12].to_string()),
        }
    );
    assert!(!src.is_dirty && src.is_git && src.is_local && !src.is_temp);

    let again = LocalSource
        .probe(&src, &StageContext::quiet())
        .unwrap()
        .expect("local trees are probed");
    assert_eq!(again.head.as_deref(), Some(head.as_str()));
    assert!(!again.is_dirty);
}

#[test]
fn modified_tracked_file_is_dirty() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    let head = git(&dir, &["rev-parse", "HEAD"]);
    fs::write(
        dir.join("main.c"),
        "int main(void) { return 1; } /* edit */\n",
    )
    .unwrap();
    let state = probe(&dir);
    assert!(state.is_dirty && state.is_git);
    assert_eq!(state.head.as_deref(), Some(head.as_str()));

    // A dirty tree has no content identity, but keeps its short hash.
    let src = acquire(dir_str(&dir)).unwrap();
    assert!(src.is_dirty);
    assert_eq!(src.identity.id, "");
    assert_eq!(src.identity.short.as_deref(), Some(&head[..12]));
}

#[test]
fn same_size_edit_is_dirty() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    // Same length, written within the index's timestamp granularity:
    // only a content comparison can see it.
    fs::write(dir.join("main.c"), "int main(void) { return 7; }\n").unwrap();
    assert!(probe(&dir).is_dirty);
}

#[test]
fn staged_only_change_is_dirty() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    fs::write(
        dir.join("main.c"),
        "int main(void) { return 2; } /* staged */\n",
    )
    .unwrap();
    git(&dir, &["add", "main.c"]);
    // Work tree == index; only HEAD vs index differs.
    assert!(probe(&dir).is_dirty);
}

#[test]
fn removal_from_index_only_is_dirty() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    git(&dir, &["rm", "-q", "--cached", "main.c"]);
    assert!(dir.join("main.c").exists());
    assert!(probe(&dir).is_dirty);
}

#[test]
fn deleted_tracked_file_is_dirty() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    fs::remove_file(dir.join("main.c")).unwrap();
    assert!(probe(&dir).is_dirty);
}

#[test]
fn executable_bit_change_is_dirty() {
    if !git_available() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (_tmp, dir) = committed_kernel();
    fs::set_permissions(dir.join("main.c"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(probe(&dir).is_dirty);
}

#[test]
fn intent_to_add_is_dirty() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    fs::write(dir.join("new.c"), "int x;\n").unwrap();
    git(&dir, &["add", "-N", "new.c"]);
    assert!(probe(&dir).is_dirty);
}

#[test]
fn untracked_files_do_not_count() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    fs::write(dir.join("untracked.c"), "int y;\n").unwrap();
    fs::create_dir_all(dir.join("build/out")).unwrap();
    fs::write(dir.join("build/out/vmlinux"), "ELF").unwrap();
    fs::write(dir.join(".config"), "CONFIG_X=y\n").unwrap();
    let state = probe(&dir);
    assert!(!state.is_dirty, "{state:?}");
}

#[test]
fn touched_but_unchanged_file_is_clean_and_index_untouched() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    let index = dir.join(".git/index");
    let before = fs::read(&index).unwrap();
    let before_mtime = fs::metadata(&index).unwrap().modified().unwrap();
    // New mtime, same content: stale stat data that git would refresh.
    let f = fs::File::options()
        .append(true)
        .open(dir.join("main.c"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert!(!probe(&dir).is_dirty);
    assert!(!probe(&dir).is_dirty);
    assert_eq!(fs::read(&index).unwrap(), before, "probe rewrote the index");
    assert_eq!(
        fs::metadata(&index).unwrap().modified().unwrap(),
        before_mtime
    );
    assert!(!dir.join(".git/index.lock").exists());
}

#[test]
fn new_commit_changes_head() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    let first = probe(&dir).head.unwrap();
    fs::write(
        dir.join("main.c"),
        "int main(void) { return 3; } /* v2 */\n",
    )
    .unwrap();
    git(&dir, &["commit", "-q", "-am", "v2"]);
    let state = probe(&dir);
    assert!(!state.is_dirty);
    let second = state.head.unwrap();
    assert_ne!(first, second);
    assert_eq!(second, git(&dir, &["rev-parse", "HEAD"]));
}

#[test]
fn soft_reset_is_dirty() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    fs::write(
        dir.join("main.c"),
        "int main(void) { return 6; } /* v2 */\n",
    )
    .unwrap();
    git(&dir, &["commit", "-q", "-am", "v2"]);
    // HEAD moves back; index and work tree (and the index's cache-tree)
    // still hold v2.
    git(&dir, &["reset", "-q", "--soft", "HEAD~1"]);
    let state = probe(&dir);
    assert!(state.is_dirty);
    assert_eq!(state.head, Some(git(&dir, &["rev-parse", "HEAD"])));
}

#[test]
fn linked_worktree_is_probed() {
    if !git_available() {
        return;
    }
    let (tmp, dir) = committed_kernel();
    let wt = tmp.path().join("wt");
    git(
        &dir,
        &["worktree", "add", "-q", "--detach", wt.to_str().unwrap()],
    );
    let wt = fs::canonicalize(&wt).unwrap();
    let state = probe(&wt);
    assert!(state.is_git && !state.is_dirty, "{state:?}");
    assert_eq!(state.head, Some(git(&dir, &["rev-parse", "HEAD"])));
    fs::write(wt.join("Kconfig"), "mainmenu \"Edited\"\n").unwrap();
    assert!(probe(&wt).is_dirty);
    assert!(!probe(&dir).is_dirty);
}

#[test]
fn non_git_tree_is_dirty() {
    let tmp = tempfile::tempdir().unwrap();
    fake_kernel(tmp.path());
    assert_eq!(
        probe(tmp.path()),
        SourceState {
            is_dirty: true,
            is_git: false,
            head: None,
        }
    );
    let src = acquire(dir_str(tmp.path())).unwrap();
    assert!(src.is_dirty && !src.is_git && src.is_local);
    assert_eq!(src.identity.id, "");
    assert_eq!(src.identity.short, None);
    assert_eq!(src.version.as_deref(), Some("6.99.0"));
}

#[test]
fn repository_without_commits_is_dirty() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fake_kernel(tmp.path());
    git(tmp.path(), &["init", "-q"]);
    git(tmp.path(), &["add", "-A"]);
    assert_eq!(
        probe(tmp.path()),
        SourceState {
            is_dirty: true,
            is_git: true,
            head: None,
        }
    );
}

#[test]
fn corrupt_head_is_an_error_naming_the_tree() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    fs::write(dir.join(".git/HEAD"), b"").unwrap();
    let e = probe_tree(&dir).unwrap_err();
    assert!(
        e.message.contains(dir_str(&dir)),
        "error should name the tree: {e}"
    );
    assert!(e.hint.is_some());
}

/// Only root can hand a repository to another user; elsewhere this
/// is skipped. Also skipped when the host's git config lists
/// `safe.directory` entries, which would legitimately trust it.
#[test]
fn repository_owned_by_another_user_is_reported() {
    if !git_available() {
        return;
    }
    let (_tmp, dir) = committed_kernel();
    let uid = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&dir).unwrap().uid()
    };
    if uid != 0 || std::env::var_os("SUDO_UID").is_some() {
        ktstr_sdk::testing::skip("not running as root");
        return;
    }
    let safe = Command::new("git")
        .args(["config", "--get-all", "safe.directory"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    if !safe.is_empty() {
        ktstr_sdk::testing::skip("host git config sets safe.directory");
        return;
    }
    for p in [dir.clone(), dir.join(".git")] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let e = probe_tree(&dir).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(e.message.contains("owned by another user"), "{e}");
    assert!(e.hint.unwrap().contains("safe.directory"));
}

#[test]
fn tree_in_subdirectory_of_a_repository() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    let linux = top.join("linux");
    fake_kernel(&linux);
    fs::write(top.join("README"), "project\n").unwrap();
    init_commit(&top);
    let head = git(&top, &["rev-parse", "HEAD"]);

    let state = probe(&linux);
    assert_eq!(state.head.as_deref(), Some(head.as_str()));
    assert!(state.is_git && !state.is_dirty);

    // Changes outside the kernel tree do not affect it.
    fs::write(top.join("README"), "project, edited\n").unwrap();
    assert!(!probe(&linux).is_dirty);
    // Changes inside it do.
    fs::write(
        linux.join("main.c"),
        "int main(void) { return 4; } /* sub */\n",
    )
    .unwrap();
    assert!(probe(&linux).is_dirty);
}

#[test]
fn untracked_tree_inside_a_repository_is_not_git() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let top = fs::canonicalize(tmp.path()).unwrap();
    fs::write(top.join("dotfile"), "x\n").unwrap();
    init_commit(&top);
    let linux = top.join("src/linux");
    fake_kernel(&linux);
    assert_eq!(probe(&linux), not_git());
}

#[test]
fn submodules_are_ignored() {
    if !git_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let lib = root.join("lib");
    fs::create_dir(&lib).unwrap();
    fs::write(lib.join("lib.c"), "int lib;\n").unwrap();
    init_commit(&lib);
    let kernel = root.join("kernel");
    fake_kernel(&kernel);
    init_commit(&kernel);
    git(&kernel, &["submodule", "add", "-q", "../lib", "tools/lib"]);
    git(&kernel, &["commit", "-q", "-m", "add submodule"]);
    assert!(!probe(&kernel).is_dirty);

    let sub = kernel.join("tools/lib");
    // Modified file inside the submodule.
    fs::write(sub.join("lib.c"), "int lib = 1; /* edited */\n").unwrap();
    assert!(!probe(&kernel).is_dirty);
    // A new commit in the submodule (HEAD differs from the recorded one).
    git(&sub, &["commit", "-q", "-am", "sub change"]);
    assert!(!probe(&kernel).is_dirty);
    // Even staged in the superproject.
    git(&kernel, &["add", "tools/lib"]);
    assert!(!probe(&kernel).is_dirty);
    // A real change next to it still counts.
    fs::write(
        kernel.join("main.c"),
        "int main(void) { return 5; } /* with sub */\n",
    )
    .unwrap();
    assert!(probe(&kernel).is_dirty);
}
