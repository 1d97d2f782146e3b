//! Built-in source acquirer for a kernel tree on local disk.
//!
//! `--kernel ./linux` (or any other path) names a kernel source tree the
//! user owns. ktstr builds it in place; it never copies or modifies it here.
//! Its identity is the HEAD commit when the tree is a clean git work tree;
//! any tracked change, a tree without commits, or a tree outside git makes it
//! dirty, and dirty trees are built but never cached.
//!
//! [`probe_tree`] is the dirty check. It is run at acquire time and again
//! after every wait and build (see [`SourceAcquirer::probe`]), so it has to
//! be about as fast as `git status` on an ~90k-file kernel tree. It uses gix
//! and never writes to the repository (no index refresh is written back).

use std::path::{Path, PathBuf};
use std::time::Instant;

use gix::bstr::{BStr, BString, ByteSlice, ByteVec};
use gix::status::index_worktree;
use gix::status::plumbing::index_as_worktree::{Change, EntryStatus};
use ktstr_sdk::prelude::*;
use ktstr_sdk::source::kernel_version_from_makefile;

/// The plugin's registered name and its identity kind.
pub const NAME: &str = "local";

/// Hint for a path that is not the top of a kernel tree.
const TREE_HINT: &str = "point --kernel at the top of a Linux source tree, the directory containing MAINTAINERS/Kconfig/arch";

/// Source acquirer for a kernel tree on local disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalSource;

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "kernel source tree on local disk (--kernel PATH); clean git trees are cached by HEAD commit",
        constructor: Constructor::Source(|_cfg| Ok(Box::new(LocalSource))),
    }
}

impl SourceAcquirer for LocalSource {
    fn claims(&self, spec: &KernelSpec) -> bool {
        claims_spec(&spec.raw)
    }

    fn accepted_forms(&self) -> Vec<String> {
        vec!["PATH to a kernel source tree (./linux, /src/linux, ~/linux)".to_string()]
    }

    fn acquire(&self, spec: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource> {
        cx.cancel.check()?;
        let raw = spec.raw.as_str();
        let path = expand_home(raw)?;
        let (source_dir, version) = check_kernel_tree(raw, &path)?;
        let state = probe_tree(&source_dir)?;
        Ok(acquired_source(source_dir, version, state))
    }

    fn probe(&self, source: &AcquiredSource, cx: &StageContext) -> Result<Option<SourceState>> {
        cx.cancel.check()?;
        probe_tree(&source.source_dir).map(Some)
    }
}

/// Whether `raw` is a spec this acquirer handles: something written as a
/// path (`/…`, `./…`, `../…`, `~/…`, `.`, `..`) or naming an existing
/// directory, but neither a URL nor a tarball.
///
/// A path-shaped spec is claimed even when it does not exist, so that
/// `--kernel ./typo` fails with "no such directory" rather than with
/// "no source plugin understands ./typo".
pub fn claims_spec(raw: &str) -> bool {
    // A tarball path keeps its `#sha256=` (or a malformed `#...`): the
    // name before the fragment decides (`/abs/linux-6.12.tar.xz#sha256=…`
    // is the tarball source's, which explains a bad fragment).
    let body = raw.split_once('#').map_or(raw, |(b, _)| b);
    if raw.is_empty() || is_url(raw) || is_tarball(raw) || is_tarball(body) {
        return false;
    }
    let path_shaped = matches!(raw, "." | ".." | "~")
        || ["/", "./", "../", "~/"].iter().any(|p| raw.starts_with(p));
    path_shaped || Path::new(raw).is_dir()
}

fn is_url(raw: &str) -> bool {
    raw.contains("://") || raw.starts_with("git+")
}

/// Archives are left to the tarball acquirer.
fn is_tarball(raw: &str) -> bool {
    ktstr_sdk::archive::has_archive_suffix(raw)
}

/// Expand a leading `~` / `~/` with `$HOME`; other specs are returned as is.
fn expand_home(raw: &str) -> Result<PathBuf> {
    expand_home_with(raw, std::env::var_os("HOME"))
}

fn expand_home_with(raw: &str, home: Option<std::ffi::OsString>) -> Result<PathBuf> {
    let rest = match raw.strip_prefix('~') {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => return Ok(PathBuf::from(raw)),
    };
    match home.filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(rest)),
        None => Err(StageError::invalid_input(format!(
            "--kernel {raw}: cannot expand ~ because $HOME is not set"
        ))
        .with_hint("write the path out in full")),
    }
}

/// Check that `path` is the top of a kernel tree; return it canonicalized
/// with the release parsed from its Makefile.
fn check_kernel_tree(raw: &str, path: &Path) -> Result<(PathBuf, Option<String>)> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some((body, fragment)) = raw.split_once('#')
                && Path::new(body).exists()
            {
                return Err(StageError::invalid_input(format!(
                    "--kernel {raw}: unknown fragment #{fragment}: a local tree takes no fragment"
                ))
                .with_hint(format!("write the path alone: --kernel {body}")));
            }
            let mut err = StageError::not_found(format!("--kernel {raw}: no such directory"));
            err = if path.is_relative() {
                let cwd = std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "the current directory".into());
                err.with_hint(format!(
                    "check the spelling; relative paths are taken from {cwd}"
                ))
            } else {
                err.with_hint("check the spelling of the path")
            };
            return Err(err);
        }
        Err(e) => return Err(StageError::io("inspect", path, e).context(format!("--kernel {raw}"))),
    };
    if !meta.is_dir() {
        return Err(StageError::invalid_input(format!(
            "--kernel {raw}: {} is not a directory",
            path.display()
        ))
        .with_hint(TREE_HINT));
    }
    let dir = std::fs::canonicalize(path).at("resolve", path)?;
    let (missing, version) = kernel_tree_parts(&dir)?;
    if missing.is_empty() {
        return Ok((dir, version));
    }
    let hint = match enclosing_kernel_tree(&dir) {
        Some(top) => format!(
            "{} looks like a directory inside the kernel tree {}; point --kernel at {}",
            dir.display(),
            top.display(),
            top.display()
        ),
        None => TREE_HINT.to_string(),
    };
    Err(StageError::invalid_input(format!(
        "--kernel {raw}: {} is not a kernel source tree (missing {})",
        dir.display(),
        missing.join(", ")
    ))
    .with_hint(hint))
}

/// What `dir` lacks to be the top of a kernel tree, and its release.
fn kernel_tree_parts(dir: &Path) -> Result<(Vec<&'static str>, Option<String>)> {
    let mut missing = Vec::new();
    let makefile = dir.join("Makefile");
    let read = ktstr_sdk::fsread::read_bounded(
        &makefile,
        "Makefile",
        ktstr_sdk::fsread::SMALL_FILE_LIMIT,
        ktstr_sdk::fsread::Follow::Yes,
    );
    let version = match read {
        Ok(bytes) => {
            let version = kernel_version_from_makefile(&String::from_utf8_lossy(&bytes));
            if version.is_none() {
                missing.push("VERSION/PATCHLEVEL lines in Makefile");
            }
            version
        }
        Err(e) if e.kind == ktstr_sdk::ErrorKind::NotFound || makefile.is_dir() => {
            missing.push("Makefile");
            None
        }
        // A FIFO, a device, a huge file: refused at once, naming it.
        Err(e) => return Err(e.with_hint(TREE_HINT)),
    };
    if !dir.join("Kconfig").is_file() {
        missing.push("Kconfig");
    }
    if !dir.join("arch").is_dir() {
        missing.push("arch/");
    }
    Ok((missing, version))
}

/// The nearest ancestor of `dir` that is a kernel tree, for the hint.
fn enclosing_kernel_tree(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|a| {
        kernel_tree_parts(a)
            .ok()
            .filter(|(missing, _)| missing.is_empty())
            .map(|_| a.to_path_buf())
    })
}

fn acquired_source(
    source_dir: PathBuf,
    version: Option<String>,
    state: SourceState,
) -> AcquiredSource {
    let clean_head = state.head.as_ref().filter(|_| !state.is_dirty);
    AcquiredSource {
        identity: SourceIdentity {
            kind: NAME.to_string(),
            id: clean_head.cloned().unwrap_or_default(),
            short: state
                .head
                .as_deref()
                .map(|h| ktstr_sdk::source::short_id(h).to_string()),
        },
        source_dir,
        version,
        is_temp: false,
        is_dirty: state.is_dirty,
        is_git: state.is_git,
        is_local: true,
    }
}

/// A tree that is not a git work tree: always dirty, since nothing can
/// tell whether it changed.
fn not_git() -> SourceState {
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

fn probe_error(tree: &Path, what: &str, e: gix::Error) -> StageError {
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

/// Whether HEAD's tree, the index and the work tree differ in a tracked
/// file (under `prefix` when given). Stops at the first change.
fn has_tracked_changes(
    repo: &gix::Repository,
    index: gix::worktree::Index,
    head_tree: gix::ObjectId,
    prefix: Option<&BStr>,
) -> gix::Result<bool> {
    use gix::status::{Item, Submodule, UntrackedFiles, tree_index::TrackRenames};

    // `git commit` leaves a cache-tree (TREE extension) whose root is the
    // tree just committed; any later `git add`/`rm` invalidates it along the
    // changed path. A valid root equal to HEAD^{tree} proves HEAD and the
    // index agree, which spares building an index from HEAD's ~5k trees.
    let index_matches_head = index
        .tree()
        .is_some_and(|t| t.num_entries.is_some() && t.id == head_tree)
        && index.entries().iter().all(|e| e.stage_raw() == 0);

    let platform = repo
        .status(gix::progress::Discard)?
        .index(gix::worktree::IndexPersistedOrInMemory::Persisted(index))
        .untracked_files(UntrackedFiles::None)
        .index_worktree_options_mut(|o| {
            o.dirwalk_options = None;
            o.rewrites = None;
            o.sorting = None;
        })
        .index_worktree_submodules(Submodule::Given {
            ignore: gix::submodule::config::Ignore::All,
            check_dirty: false,
        })
        .tree_index_track_renames(TrackRenames::Disabled)
        .head_tree(head_tree);

    let under_prefix =
        |item: &Item| prefix.is_none_or(|p| item.location().starts_with(p.as_bytes()));
    if index_matches_head {
        for item in platform.into_index_worktree_iter(Vec::new())? {
            let item = Item::IndexWorktree(item?);
            if under_prefix(&item) && counts_as_change(&item) {
                return Ok(true);
            }
        }
    } else {
        for item in platform.into_iter(Vec::new())? {
            let item = item?;
            if under_prefix(&item) && counts_as_change(&item) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Whether a status item makes the tree dirty: anything but stat-only
/// updates, untracked entries and submodules.
fn counts_as_change(item: &gix::status::Item) -> bool {
    use gix::diff::index::Change as TreeIndex;
    use gix::status::Item;
    match item {
        Item::IndexWorktree(index_worktree::Item::Modification { entry, status, .. }) => {
            match status {
                EntryStatus::Conflict { .. } | EntryStatus::IntentToAdd => true,
                EntryStatus::NeedsUpdate(_) => false,
                EntryStatus::Change(Change::SubmoduleModification(_)) => false,
                EntryStatus::Change(_) => !entry.mode.is_submodule(),
            }
        }
        Item::IndexWorktree(index_worktree::Item::DirectoryContents { .. }) => false,
        Item::IndexWorktree(index_worktree::Item::Rewrite { .. }) => true,
        Item::TreeIndex(TreeIndex::Addition { entry_mode, .. })
        | Item::TreeIndex(TreeIndex::Deletion { entry_mode, .. }) => !entry_mode.is_submodule(),
        Item::TreeIndex(TreeIndex::Modification {
            previous_entry_mode,
            entry_mode,
            ..
        }) => !(previous_entry_mode.is_submodule() && entry_mode.is_submodule()),
        Item::TreeIndex(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::process::Command;

    use super::*;

    /// `git` is needed to build the fixture repositories.
    fn git_available() -> bool {
        let ok = Command::new("git")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            ktstr_sdk::testing::skip("git is not installed");
        }
        ok
    }

    /// Run git in `dir` isolated from the host's git config, with a fixed
    /// identity; return trimmed stdout.
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "protocol.file.allow=always"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_SYSTEM", "/dev/null")
            .env("GIT_AUTHOR_NAME", "ktstr-test")
            .env("GIT_AUTHOR_EMAIL", "ktstr-test@localhost")
            .env("GIT_COMMITTER_NAME", "ktstr-test")
            .env("GIT_COMMITTER_EMAIL", "ktstr-test@localhost")
            .env_remove("GIT_DIR")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_WORK_TREE")
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A minimal tree that passes the kernel-tree check.
    fn fake_kernel(dir: &Path) {
        fs::create_dir_all(dir.join("arch/x86")).unwrap();
        fs::write(
            dir.join("Makefile"),
            "# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 99\nSUBLEVEL = 0\nEXTRAVERSION =\nNAME = Test\n\nall:\n\ttrue\n",
        )
        .unwrap();
        fs::write(dir.join("Kconfig"), "mainmenu \"Test\"\n").unwrap();
        fs::write(dir.join("arch/x86/Kconfig"), "config X86\n\tdef_bool y\n").unwrap();
        fs::write(dir.join("main.c"), "int main(void) { return 0; }\n").unwrap();
    }

    fn init_commit(dir: &Path) {
        git(dir, &["init", "-q", "-b", "main"]);
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "-m", "base"]);
    }

    /// A fake kernel tree committed to a fresh repository.
    fn committed_kernel() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        fake_kernel(&dir);
        init_commit(&dir);
        (tmp, dir)
    }

    fn probe(dir: &Path) -> SourceState {
        probe_tree(dir).expect("probe")
    }

    fn acquire(raw: &str) -> Result<AcquiredSource> {
        LocalSource.acquire(&KernelSpec::new(raw), &StageContext::quiet())
    }

    fn dir_str(dir: &Path) -> &str {
        dir.to_str().unwrap()
    }

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

    #[test]
    fn claims_paths_but_not_urls_or_tarballs() {
        let claimed = [
            "/src/linux",
            "./linux",
            "../linux",
            "~/linux",
            "~",
            ".",
            "..",
            "./missing-dir",
            "/no/such/dir",
        ];
        for spec in claimed {
            assert!(claims_spec(spec), "{spec} should be claimed");
        }
        let not_claimed = [
            "",
            "6.12.3",
            "6.12",
            "linux-not-here",
            "https://cdn.kernel.org/linux-6.12.tar.xz",
            "git+https://host/linux.git#tag=v6.12",
            "git+ssh://host/linux.git",
            "file:///src/linux",
            "./linux-6.12.tar.xz",
            "/tmp/linux-6.12.tar.gz",
            "../linux.tgz",
            "~/linux.tar",
            "./linux.tar.zst",
            "/tmp/LINUX.TAR.XZ",
        ];
        for spec in not_claimed {
            assert!(!claims_spec(spec), "{spec} should not be claimed");
        }

        // A bare name is claimed only when it is an existing directory.
        let tmp = tempfile::tempdir().unwrap();
        let name = tmp
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let cwd_relative = std::env::temp_dir().join(&name);
        assert!(claims_spec(cwd_relative.to_str().unwrap()));
        assert!(LocalSource.claims(&KernelSpec::new("./linux")));
        assert!(!LocalSource.claims(&KernelSpec::new("6.12.3")));
        assert!(!LocalSource.accepted_forms().is_empty());
    }

    #[test]
    fn expands_home() {
        let home = Some(std::ffi::OsString::from("/home/u"));
        assert_eq!(
            expand_home_with("~/linux", home.clone()).unwrap(),
            PathBuf::from("/home/u/linux")
        );
        assert_eq!(
            expand_home_with("~", home.clone()).unwrap(),
            PathBuf::from("/home/u")
        );
        assert_eq!(
            expand_home_with("./~/x", home.clone()).unwrap(),
            PathBuf::from("./~/x")
        );
        assert_eq!(
            expand_home_with("~user/x", home).unwrap(),
            PathBuf::from("~user/x")
        );
        let e = expand_home_with("~/linux", None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("$HOME"));
    }

    #[test]
    fn missing_path_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let raw = format!("{}/missing-dir", tmp.path().display());
        let e = acquire(&raw).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(e.to_string(), format!("--kernel {raw}: no such directory"));
        assert!(e.hint.is_some());

        let e = acquire("./ktstr-surely-missing-dir").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--kernel ./ktstr-surely-missing-dir: no such directory"
        );
        assert!(e.hint.unwrap().contains("relative paths"));
    }

    #[test]
    fn non_kernel_directory_is_invalid_input() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(tmp.path()).unwrap();
        fs::write(dir.join("Makefile"), "all:\n\ttrue\n").unwrap();
        let e = acquire(dir_str(&dir)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            format!(
                "--kernel {0}: {0} is not a kernel source tree (missing VERSION/PATCHLEVEL lines in Makefile, Kconfig, arch/)",
                dir.display()
            )
        );
        assert_eq!(e.hint.as_deref(), Some(TREE_HINT));

        let empty = dir.join("empty");
        fs::create_dir(&empty).unwrap();
        let e = acquire(dir_str(&empty)).unwrap_err();
        assert!(
            e.message
                .ends_with("is not a kernel source tree (missing Makefile, Kconfig, arch/)"),
            "{e}"
        );
    }

    #[test]
    fn file_is_invalid_input() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("Makefile");
        fs::write(&file, "VERSION = 6\n").unwrap();
        let e = acquire(file.to_str().unwrap()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains("is not a directory"), "{e}");
        assert_eq!(e.hint.as_deref(), Some(TREE_HINT));
    }

    #[test]
    fn subdirectory_of_kernel_tree_points_at_the_top() {
        let tmp = tempfile::tempdir().unwrap();
        let top = fs::canonicalize(tmp.path()).unwrap();
        fake_kernel(&top);
        let e = acquire(dir_str(&top.join("arch/x86"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let hint = e.hint.unwrap();
        assert!(
            hint.contains(&format!("point --kernel at {}", top.display())),
            "{hint}"
        );
    }

    #[test]
    fn acquire_canonicalizes_and_parses_version() {
        let tmp = tempfile::tempdir().unwrap();
        let top = fs::canonicalize(tmp.path()).unwrap();
        fake_kernel(&top.join("linux"));
        std::os::unix::fs::symlink(top.join("linux"), top.join("link")).unwrap();
        let raw = format!("{}/link/../linux/.", top.display());
        let src = acquire(&raw).unwrap();
        assert_eq!(src.source_dir, top.join("linux"));
        assert_eq!(src.version.as_deref(), Some("6.99.0"));
        assert_eq!(src.identity.kind, "local");
    }

    #[test]
    fn registered_as_builtin() {
        let p = ktstr_sdk::registry::builtins()
            .into_iter()
            .find(|p| p.name == NAME)
            .expect("local is registered");
        assert_eq!(p.constructor.kind(), StageKind::Source);
        let Constructor::Source(make) = p.constructor else {
            unreachable!()
        };
        assert!(
            make(&PluginConfig::Null)
                .unwrap()
                .claims(&KernelSpec::new("./linux"))
        );
    }
}
