//! The dirty check: is a kernel tree a clean git work tree, and at which
//! HEAD.
//!
//! It runs at acquire time and again after every wait and build (see
//! [`SourceAcquirer::probe`]), so it has to be about as fast as
//! `git status` on an ~90k-file kernel tree. It uses gix and never writes
//! to the repository (no index refresh is written back). Which status
//! items count as a change lives in [`crate::changes`].

use std::path::Path;
use std::time::Instant;

use gix::bstr::{BString, ByteSlice, ByteVec};
use ktstr_sdk::prelude::*;

use crate::changes::has_tracked_changes;

/// A tree that is not a git work tree: always dirty, since nothing can
/// tell whether it changed.
pub(crate) fn not_git() -> SourceState {
    SourceState {
        is_dirty: true,
        is_git: false,
        head: None,
    }
}

/// Inspect the kernel tree at `path`: is it a git work tree, its HEAD
/// commit, and whether it has tracked changes.
///
/// - Not inside a git repository (or inside one that does not track the
///   tree, such as a home directory under git): `is_git = false`,
///   `is_dirty = true`, `head = None`.
/// - A repository without commits: `is_git = true`, dirty, no head.
/// - Otherwise dirty means HEAD's tree differs from the index (staged
///   changes) or the index from the work tree (modified, deleted or
///   type-changed tracked files, conflicts, `git add -N` files).
///   Untracked files and submodules are ignored. When the tree is a
///   subdirectory of the repository, only changes under it count.
///
/// The repository is only read: the index is never written back, even when
/// its stat data is stale. Environment overrides (`GIT_DIR`,
/// `GIT_INDEX_FILE`, `GIT_WORK_TREE`, `GIT_OBJECT_DIRECTORY`, …) are
/// ignored so that running from a git hook cannot point the probe at
/// another repository; the user's and system git config are read as git
/// reads them (they decide `safe.directory`, line-ending and stat rules).
/// A repository owned by another user and not listed in `safe.directory`
/// is an error, as it is for git.
pub fn probe_tree(path: &Path) -> Result<SourceState> {
    let started = Instant::now();
    let state = probe_inner(path)?;
    tracing::debug!(
        path = %path.display(),
        is_git = state.is_git,
        is_dirty = state.is_dirty,
        head = state.head.as_deref().unwrap_or("-"),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "probed local kernel tree",
    );
    Ok(state)
}

fn probe_inner(path: &Path) -> Result<SourceState> {
    let meta = std::fs::metadata(path).at("inspect", path)?;
    if !meta.is_dir() {
        return Err(StageError::invalid_input(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    let tree = std::fs::canonicalize(path).at("resolve", path)?;
    let Some(mut repo) = open_repository(&tree)? else {
        return Ok(not_git());
    };
    // The probe is the cache hit's main cost. Checking the index's trailing
    // SHA-1 (~10 MB on a kernel tree) doubles the time to read it, and git
    // writes the index by rename, so a torn one cannot be seen: skip it
    // (git's own `index.skipHash`), in memory only.
    if let Err(e) = repo
        .config_snapshot_mut()
        .set_value(&gix::config::tree::Index::SKIP_HASH, "true")
    {
        tracing::debug!("cannot skip the index checksum: {e}");
    }
    // Compare the nanoseconds of mtime and ctime too (git stores them but
    // compares whole seconds unless built with USE_NSEC). Without them, a
    // same-size edit whose mtime is put back within the second of the last
    // stat change looks untouched, and the tree would be cached as its HEAD;
    // with them, nanoseconds git left stale cost one content check.
    if let Err(e) = repo
        .config_snapshot_mut()
        .set_value(&gix::config::tree::gitoxide::Core::USE_NSEC, "true")
    {
        tracing::debug!("cannot compare nanoseconds: {e}");
    }
    let fail = |what: &str| {
        let what = what.to_string();
        let tree = tree.clone();
        move |e: gix::Error| probe_error(&tree, &what, e)
    };

    if repo.git_dir_trust() != gix::sec::Trust::Full {
        let top = repo.workdir().unwrap_or(repo.git_dir()).to_path_buf();
        return Err(StageError::invalid_input(format!(
            "{}: the git repository at {} is owned by another user; ktstr does not trust it (git would refuse it too)",
            tree.display(),
            top.display()
        ))
        .with_hint(format!(
            "if you trust it, run `git config --global --add safe.directory {}`, or build from a copy you own",
            top.display()
        )));
    }

    // Only a work tree can be checked for changes; a bare repository that
    // happens to contain the tree, or a `core.worktree` pointing elsewhere,
    // says nothing about it.
    let Some(workdir) = repo.workdir() else {
        return Ok(not_git());
    };
    let workdir = std::fs::canonicalize(workdir).at("resolve", workdir)?;
    let Ok(rel) = tree.strip_prefix(&workdir) else {
        return Ok(not_git());
    };
    let prefix: Option<BString> = if rel.as_os_str().is_empty() {
        None
    } else {
        use std::os::unix::ffi::OsStrExt;
        let mut p = BString::from(rel.as_os_str().as_bytes());
        p.push_byte(b'/');
        Some(p)
    };

    let mut head = repo.head().map_err(fail("read HEAD"))?;
    if head.is_unborn() {
        return Ok(SourceState {
            is_dirty: true,
            is_git: true,
            head: None,
        });
    }
    let commit = head
        .peel_to_commit()
        .map_err(fail("resolve HEAD to a commit"))?;
    let head_id = commit.id;
    let head_tree = commit.tree_id().map_err(fail("read HEAD's tree"))?.detach();

    let index = repo.index_or_empty().map_err(fail("read the index"))?;
    if let Some(prefix) = &prefix {
        // A tree inside a repository that does not track it (a kernel
        // unpacked into a home directory kept under git) is not versioned:
        // HEAD says nothing about its content.
        let mut makefile = prefix.clone();
        makefile.push_str("Makefile");
        if index.entry_by_path(makefile.as_bstr()).is_none() {
            return Ok(not_git());
        }
    }

    let is_dirty = has_tracked_changes(
        &repo,
        index,
        head_tree,
        prefix.as_ref().map(|p| p.as_bstr()),
    )
    .map_err(|e| probe_error(&tree, "compare HEAD, index and work tree", e))?;
    Ok(SourceState {
        is_dirty,
        is_git: true,
        head: Some(head_id.to_string()),
    })
}

/// Open the repository containing `tree`, or `None` when there is none.
fn open_repository(tree: &Path) -> Result<Option<gix::Repository>> {
    let mut permissions = gix::open::Permissions::default();
    // GIT_DIR/GIT_WORK_TREE/GIT_INDEX_FILE/GIT_CONFIG_* and the object
    // directory variables describe the repository of whatever git command
    // runs ktstr (a hook, `rebase --exec`), not necessarily this tree.
    permissions.env.git_prefix = gix::sec::Permission::Deny;
    permissions.env.objects = gix::sec::Permission::Deny;
    permissions.config.env = false;
    let options = gix::open::Options::default()
        .permissions(permissions)
        .bail_if_untrusted(false);
    let upwards = gix::discover::upwards::Options {
        // Like git without GIT_DISCOVERY_ACROSS_FILESYSTEM: stop at a mount.
        cross_fs: true,
        ..Default::default()
    };
    match gix::discover_opts(tree, upwards, options) {
        Ok(repo) => Ok(Some(repo)),
        Err(e) => {
            use gix::discover::upwards::Error as D;
            match e.downcast_any_ref::<D>() {
                Some(D::NoGitRepository { .. })
                | Some(D::NoGitRepositoryWithinCeiling { .. })
                | Some(D::NoGitRepositoryWithinFs { .. }) => Ok(None),
                Some(D::NoTrustedGitRepository { candidate, .. }) => {
                    Err(StageError::invalid_input(format!(
                        "{}: the git repository at {} is not trusted (owned by another user)",
                        tree.display(),
                        candidate.display()
                    ))
                    .with_hint(format!(
                        "if you trust it, run `git config --global --add safe.directory {}`",
                        candidate.display()
                    )))
                }
                _ => Err(probe_error(tree, "open the git repository", e)),
            }
        }
    }
}

pub(crate) fn probe_error(tree: &Path, what: &str, e: gix::Error) -> StageError {
    let kind = if e.is_corrupted() {
        ErrorKind::Corrupt
    } else {
        ErrorKind::Io
    };
    StageError::new(
        kind,
        format!("{}: cannot {what} of its git repository", tree.display()),
    )
    .caused_by(e)
    .with_hint(format!(
        "run `git -C {} status` to see what is wrong with the repository",
        tree.display()
    ))
}
