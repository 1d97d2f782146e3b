//! Re-checking a local tree after waiting for its lock and after building.
//!
//! The acquire-time probe can go stale: a peer's build may hold the tree
//! lock for minutes, and the user may edit or commit meanwhile; the same
//! can happen while our own make runs. The classification keeps the
//! message honest about the cause (an edit is not a commit, a tree that
//! was dirty from the start did not get dirty because we waited, and an
//! unreadable tree is unknown, not changed).

use ktstr_sdk::source::{AcquiredSource, SourceState};

/// The tree after waiting for another build to release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MidWaitState {
    /// Unchanged: a peer may have just cached this exact kernel.
    Clean,
    /// Dirty before we started waiting; the wait changed nothing.
    PreAcquireDirty,
    /// A tracked file was edited while we waited.
    DirtyEdit,
    /// HEAD moved to another commit (clean) while we waited.
    HeadAdvanced { head: String },
    /// The re-probe failed; the tree's state is unknown.
    ProbeFailed(String),
}

impl MidWaitState {
    /// Classify `fresh` (or a probe error) against the acquire-time view.
    pub fn classify(acquired: &AcquiredSource, fresh: Result<Option<SourceState>, String>) -> Self {
        if acquired.is_dirty {
            return Self::PreAcquireDirty;
        }
        match fresh {
            Err(e) => Self::ProbeFailed(e),
            Ok(None) => Self::Clean,
            Ok(Some(state)) if state.is_dirty => Self::DirtyEdit,
            Ok(Some(state)) => match state.head {
                Some(head) if head != acquired.identity.id => Self::HeadAdvanced { head },
                Some(_) => Self::Clean,
                None => Self::DirtyEdit,
            },
        }
    }

    /// One line for the user, or `None` when the wait explains nothing.
    pub fn diagnostic(&self) -> Option<String> {
        match self {
            Self::Clean | Self::PreAcquireDirty => None,
            Self::DirtyEdit => Some(
                "the source tree was edited while we waited; building your edits (not cached)"
                    .into(),
            ),
            Self::HeadAdvanced { head } => Some(format!(
                "the source tree moved to commit {} while we waited; building that commit",
                ktstr_sdk::source::short_id(head)
            )),
            Self::ProbeFailed(e) => Some(format!(
                "could not re-check the source tree after waiting ({e}); building without caching"
            )),
        }
    }
}

/// Whether a post-build re-probe shows the tree no longer matches the
/// identity the build will be stored under.
pub fn changed_during_build(acquired: &AcquiredSource, fresh: &SourceState) -> bool {
    fresh.is_dirty || fresh.head.as_deref() != Some(acquired.identity.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::source::SourceIdentity;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_SYSTEM", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@localhost")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@localhost")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("seed.txt"), "one").unwrap();
        git(dir.path(), &["add", "seed.txt"]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        dir
    }

    fn acquired_from(dir: &Path) -> AcquiredSource {
        let state = ktstr_plugin_local::probe_tree(dir).unwrap();
        AcquiredSource {
            source_dir: PathBuf::from(dir),
            identity: SourceIdentity {
                kind: "local".into(),
                id: if state.is_dirty {
                    String::new()
                } else {
                    state.head.clone().unwrap_or_default()
                },
                short: None,
            },
            version: None,
            is_temp: false,
            is_dirty: state.is_dirty,
            is_git: state.is_git,
            is_local: true,
        }
    }

    fn reprobe(dir: &Path) -> Result<Option<SourceState>, String> {
        ktstr_plugin_local::probe_tree(dir)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn untouched_tree_is_clean_and_silent() {
        let dir = repo();
        let acquired = acquired_from(dir.path());
        let state = MidWaitState::classify(&acquired, reprobe(dir.path()));
        assert_eq!(state, MidWaitState::Clean);
        assert_eq!(state.diagnostic(), None);
    }

    #[test]
    fn edit_during_wait_is_dirty_edit() {
        let dir = repo();
        let acquired = acquired_from(dir.path());
        std::fs::write(dir.path().join("seed.txt"), "two").unwrap();
        let state = MidWaitState::classify(&acquired, reprobe(dir.path()));
        assert_eq!(state, MidWaitState::DirtyEdit);
        assert!(state.diagnostic().unwrap().contains("edited"));
    }

    #[test]
    fn commit_during_wait_is_head_advanced_not_dirty() {
        let dir = repo();
        let acquired = acquired_from(dir.path());
        std::fs::write(dir.path().join("new.txt"), "x").unwrap();
        git(dir.path(), &["add", "new.txt"]);
        git(dir.path(), &["commit", "-q", "-m", "two"]);
        let state = MidWaitState::classify(&acquired, reprobe(dir.path()));
        let MidWaitState::HeadAdvanced { head } = &state else {
            panic!("expected HeadAdvanced, got {state:?}");
        };
        assert_ne!(head, &acquired.identity.id);
        assert!(state.diagnostic().unwrap().contains("moved to commit"));
    }

    #[test]
    fn dirty_before_wait_stays_silent() {
        let dir = repo();
        std::fs::write(dir.path().join("seed.txt"), "dirty").unwrap();
        let acquired = acquired_from(dir.path());
        assert!(acquired.is_dirty);
        let state = MidWaitState::classify(&acquired, reprobe(dir.path()));
        assert_eq!(state, MidWaitState::PreAcquireDirty);
        assert_eq!(state.diagnostic(), None);
    }

    #[test]
    fn vanished_tree_is_probe_failed() {
        let dir = repo();
        let acquired = acquired_from(dir.path());
        let state = MidWaitState::classify(&acquired, Err("gone".into()));
        assert_eq!(state, MidWaitState::ProbeFailed("gone".into()));
        assert!(state.diagnostic().unwrap().contains("gone"));
    }

    #[test]
    fn post_build_commit_or_edit_blocks_the_store() {
        let dir = repo();
        let acquired = acquired_from(dir.path());
        let same = ktstr_plugin_local::probe_tree(dir.path()).unwrap();
        assert!(!changed_during_build(&acquired, &same));

        std::fs::write(dir.path().join("seed.txt"), "edited").unwrap();
        let edited = ktstr_plugin_local::probe_tree(dir.path()).unwrap();
        assert!(changed_during_build(&acquired, &edited));

        git(dir.path(), &["commit", "-qam", "three"]);
        let committed = ktstr_plugin_local::probe_tree(dir.path()).unwrap();
        assert!(!committed.is_dirty);
        assert!(changed_during_build(&acquired, &committed));
    }
}
