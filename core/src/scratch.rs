//! Removing scratch kernel trees (extracted tarballs, git checkouts) after
//! the build, whatever happens.
//!
//! Acquirers create them with [`ktstr_sdk::scratch::Scratch`]. The host owns
//! their removal, so a plugin cannot forget it and `--keep-source` works the
//! same for every source; trees a `kill -9` left are removed by
//! [`ktstr_sdk::scratch::sweep_dead`] at the next build.
//!
//! A tree is kept (and marked, so no sweep takes it) with `--keep-source`.
//! A tree whose build failed is kept too, so the reproduce command in the
//! error works: [`ScratchGuard::keep_failed`] marks it for the sweep to
//! remove a day later ([`ktstr_sdk::scratch::FAILED_KEPT_FOR`]).

use std::path::{Path, PathBuf};

use ktstr_sdk::context::StageContext;
use ktstr_sdk::paths;
use ktstr_sdk::source::AcquiredSource;

/// Removes a scratch tree when dropped, unless it is kept.
pub struct ScratchGuard<'a> {
    dir: Option<PathBuf>,
    keep: bool,
    failed: bool,
    cx: &'a StageContext,
}

impl<'a> ScratchGuard<'a> {
    /// Guard `source` if it is a scratch tree. Only a directory directly
    /// under `<root>/scratch` is ever removed: a plugin that marks some
    /// other path temporary gets a warning, never a deleted user directory.
    pub fn new(root: &Path, source: &AcquiredSource, keep: bool, cx: &'a StageContext) -> Self {
        let dir = if source.is_temp {
            let top = scratch_top(root, &source.source_dir);
            if top.is_none() {
                cx.progress.warn(&format!(
                    "the source plugin marked {} temporary, but it is not under {}; \
                     leaving it in place",
                    source.source_dir.display(),
                    paths::scratch_dir(root).display()
                ));
            }
            top
        } else {
            None
        };
        Self {
            dir,
            keep,
            failed: false,
            cx,
        }
    }

    /// The build in this tree failed: keep the tree for the reproduce
    /// command. Returns it, `None` when the source is not a scratch tree.
    pub fn keep_failed(&mut self) -> Option<PathBuf> {
        let dir = self.dir.clone()?;
        if !self.keep && !self.failed {
            ktstr_sdk::scratch::mark_failed(&dir);
            self.failed = true;
        }
        Some(dir)
    }

    /// Whether the tree stays after this build whatever happens.
    pub fn kept_for_good(&self) -> bool {
        self.keep
    }
}

impl Drop for ScratchGuard<'_> {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if self.keep {
            ktstr_sdk::scratch::mark_kept(&dir);
            self.cx
                .progress
                .note(&format!("kept the source tree in {}", dir.display()));
            return;
        }
        if self.failed {
            // The error says where and for how long.
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.cx
                .progress
                .warn(&format!("could not remove {}: {e}", dir.display()));
        }
    }
}

/// The `<root>/scratch/<entry>` directory that contains `tree`.
fn scratch_top(root: &Path, tree: &Path) -> Option<PathBuf> {
    let scratch = paths::scratch_dir(root);
    let scratch = scratch.canonicalize().unwrap_or(scratch);
    let tree = tree.canonicalize().unwrap_or_else(|_| tree.to_path_buf());
    let rest = tree.strip_prefix(&scratch).ok()?;
    let first = rest.components().next()?;
    Some(scratch.join(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::source::SourceIdentity;

    fn source(dir: PathBuf, is_temp: bool) -> AcquiredSource {
        AcquiredSource {
            source_dir: dir,
            identity: SourceIdentity {
                kind: "tarball".into(),
                id: "x".into(),
                short: None,
            },
            version: None,
            is_temp,
            is_dirty: false,
            is_git: false,
            is_local: false,
        }
    }

    #[test]
    fn removes_the_whole_scratch_entry_unless_kept() {
        let root = tempfile::tempdir().unwrap();
        let top = paths::scratch_dir(root.path()).join("tarball-1-0");
        let tree = top.join("linux-6.12.3");
        std::fs::create_dir_all(&tree).unwrap();
        let cx = StageContext::quiet();
        drop(ScratchGuard::new(
            root.path(),
            &source(tree.clone(), true),
            true,
            &cx,
        ));
        assert!(tree.exists(), "--keep-source keeps it");
        drop(ScratchGuard::new(
            root.path(),
            &source(tree.clone(), true),
            false,
            &cx,
        ));
        assert!(!top.exists());
    }

    #[test]
    fn a_failed_build_keeps_the_tree_marked_for_a_later_sweep() {
        let root = tempfile::tempdir().unwrap();
        let top = paths::scratch_dir(root.path()).join("git-1-0");
        let tree = top.join("linux");
        std::fs::create_dir_all(&tree).unwrap();
        let cx = StageContext::quiet();
        let mut guard = ScratchGuard::new(root.path(), &source(tree.clone(), true), false, &cx);
        assert_eq!(
            guard.keep_failed().map(|d| d.canonicalize().unwrap()),
            Some(top.canonicalize().unwrap())
        );
        drop(guard);
        assert!(tree.is_dir(), "kept for the reproduce command");
        assert!(ktstr_sdk::scratch::is_marked(&top.canonicalize().unwrap()));
    }

    #[test]
    fn never_removes_a_tree_outside_scratch() {
        let root = tempfile::tempdir().unwrap();
        let user = tempfile::tempdir().unwrap();
        let cx = StageContext::quiet();
        drop(ScratchGuard::new(
            root.path(),
            &source(user.path().to_path_buf(), true),
            false,
            &cx,
        ));
        assert!(user.path().exists());
    }
}
