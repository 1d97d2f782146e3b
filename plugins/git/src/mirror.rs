//! The bare mirror of one remote under `<cache root>/git/<crc32(url)>.git`.
//!
//! Every commit ktstr builds is fetched into the mirror once and kept
//! there, named by a `refs/ktstr/<commit>` ref. The refs keep the commits
//! reachable (so a `git gc` in the mirror does not drop them) and are what
//! gix offers the server as "haves", so the next fetch of a nearby commit
//! transfers only the difference.
//!
//! Fetches want the commit id itself, shallow (`depth`, default 1): a
//! kernel at depth 1 is a few hundred MB where its full history is several
//! GB, and a build only needs the one tree. Protocol v2 servers (git ≥ 2.18,
//! every major forge) accept any commit id in a want. When a server refuses
//! (protocol v0 without `uploadpack.allowReachableSHA1InWant`), the fetch
//! falls back to all branches and tags with full history.
//!
//! The mirror is only ever written under the exclusive mirror lock
//! (`<root>/.locks/mirror-<crc32>.lock`); reading objects needs no lock,
//! since git only adds packs by rename.
//!
//! A fetch that is killed (`kill -9`, a power cut) leaves git's own lock
//! files behind (`shallow.lock`, `packed-refs.lock`, `refs/.../<ref>.lock`),
//! and git refuses to write while they exist. The flock is released by the
//! kernel when its holder dies, so whoever holds it next knows that no one
//! else writes the mirror: every `*.lock` file in it is stale, and
//! [`Mirror::remove_stale_locks`] removes them before fetching.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktstr_sdk::context::Progress;
use ktstr_sdk::paths;
use ktstr_sdk::prelude::*;

use crate::remote::{Timeouts, chain, connect, remote, transport_error};
use crate::spec::GitSpec;

/// `<cache root>/git`: every mirror.
pub const MIRRORS_DIR_NAME: &str = "git";
/// File name prefix of a mirror lock, `mirror-<crc32(url)>.lock`.
pub(crate) const LOCK_PREFIX: &str = "mirror-";

/// `<root>/git/<crc32 of url>.git`: the bare mirror of one remote.
pub fn git_mirror(root: &Path, url: &str) -> PathBuf {
    root.join(MIRRORS_DIR_NAME).join(format!(
        "{}.git",
        ktstr_sdk::hash::crc32_hex(url.as_bytes())
    ))
}

/// Lock serialising fetches into one git mirror, in `<root>/.locks`.
pub fn mirror_lock(root: &Path, url: &str) -> PathBuf {
    paths::lock_dir(root).join(format!(
        "{LOCK_PREFIX}{}.lock",
        ktstr_sdk::hash::crc32_hex(url.as_bytes())
    ))
}

/// One opened mirror.
pub struct Mirror {
    pub path: PathBuf,
    pub repo: gix::Repository,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("path", &self.path).finish()
    }
}

/// Open options: the user's and system git config apply (proxies,
/// `url.<base>.insteadOf`, credential helpers, CA bundles), but the
/// `GIT_DIR`-style environment of whatever runs ktstr does not.
fn open_options() -> gix::open::Options {
    let mut permissions = gix::open::Permissions::default();
    permissions.env.git_prefix = gix::sec::Permission::Deny;
    permissions.env.objects = gix::sec::Permission::Deny;
    gix::open::Options::default().permissions(permissions)
}

fn gix_failure(what: String, path: &Path, e: gix::Error) -> StageError {
    let kind = if e.is_corrupted() {
        ErrorKind::Corrupt
    } else {
        ErrorKind::Io
    };
    let mut err = StageError::new(kind, what);
    err.causes = chain(&e);
    err.with_hint(format!(
        "the mirror {} may be damaged; remove it and ktstr fetches it again",
        path.display()
    ))
}

impl Mirror {
    /// Open the mirror of `url`, creating an empty one if there is none.
    ///
    /// Creation happens in a temporary directory renamed into place, so
    /// concurrent first users race harmlessly and need no lock.
    pub fn open_or_init(root: &Path, url: &str) -> Result<Mirror> {
        let path = git_mirror(root, url);
        if !path.exists() {
            init(root, &path, url)?;
        }
        let repo = gix::open_opts(&path, open_options()).map_err(|e| {
            gix_failure(
                format!("cannot open the git mirror {} of {url}", path.display()),
                &path,
                e,
            )
        })?;
        Ok(Mirror { path, repo })
    }

    /// Whether the mirror holds `commit` (and so its whole tree: mirrors
    /// are never partial clones).
    pub fn has_commit(&self, commit: &str) -> bool {
        let Ok(id) = gix::ObjectId::from_hex(commit.as_bytes()) else {
            return false;
        };
        self.repo
            .find_object(id)
            .is_ok_and(|o| o.kind == gix::object::Kind::Commit)
    }

    /// The kernel release in `commit`'s top Makefile, read from the object
    /// database without a checkout. `None` when the Makefile is missing or
    /// has no VERSION/PATCHLEVEL lines.
    pub fn kernel_version(&self, commit: &str) -> Result<Option<String>> {
        let fail = |e: gix::Error| {
            gix_failure(
                format!("cannot read the Makefile of commit {commit}"),
                &self.path,
                e,
            )
        };
        let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| {
            StageError::internal(format!("{commit} is not a commit id")).caused_by(e)
        })?;
        let tree = self
            .repo
            .find_commit(id)
            .map_err(fail)?
            .tree()
            .map_err(fail)?;
        let Some(entry) = tree.lookup_entry_by_path("Makefile").map_err(fail)? else {
            return Ok(None);
        };
        if !entry.mode().is_blob() {
            return Ok(None);
        }
        let blob = entry.object().map_err(fail)?;
        Ok(ktstr_sdk::source::kernel_version_from_makefile(
            &String::from_utf8_lossy(&blob.data),
        ))
    }

    /// Remove the `*.lock` files a killed writer left in the mirror. Only
    /// call it with the mirror lock held: then no live ktstr writes here.
    /// Returns the files removed.
    pub fn remove_stale_locks(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = entry.path();
                if kind.is_dir() {
                    dirs.push(path);
                } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed.push(path),
                        Err(e) => tracing::warn!("cannot remove stale {}: {e}", path.display()),
                    }
                }
            }
        }
        removed.sort();
        removed
    }

    /// Fetch `commit` from the remote into the mirror (the caller holds the
    /// mirror lock). `depth` 0 fetches full history.
    pub fn fetch_commit(
        &self,
        spec: &GitSpec,
        commit: &str,
        depth: u32,
        timeouts: Timeouts,
        progress: &Arc<dyn Progress>,
        interrupt: &AtomicBool,
    ) -> Result<()> {
        let by_id = [format!("+{commit}:refs/ktstr/{commit}")];
        let shallow = match std::num::NonZeroU32::new(depth) {
            Some(depth) => gix::remote::fetch::Shallow::DepthAtRemote(depth),
            None if self.repo.is_shallow().unwrap_or(false) => gix::remote::fetch::Shallow::undo(),
            None => gix::remote::fetch::Shallow::NoChange,
        };
        let refused = match self.fetch(spec, &by_id, shallow, timeouts, progress, interrupt) {
            Ok(()) if self.has_commit(commit) => return Ok(()),
            Ok(()) => Vec::new(),
            Err(e) if e.kind != ErrorKind::Command => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, url = %spec.url, "fetch by commit id refused; fetching all branches and tags");
                e.causes
            }
        };
        interrupt_check(interrupt)?;
        // Servers that refuse unadvertised ids: take every branch and tag.
        let all = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"].map(String::from);
        let shallow = if self.repo.is_shallow().unwrap_or(false) {
            gix::remote::fetch::Shallow::undo()
        } else {
            gix::remote::fetch::Shallow::NoChange
        };
        self.fetch(spec, &all, shallow, timeouts, progress, interrupt)?;
        if self.has_commit(commit) {
            return Ok(());
        }
        let mut err = StageError::not_found(format!(
            "git+{}: commit {commit} is not on the remote",
            spec.url
        ));
        err.causes = refused;
        Err(err.with_hint(format!(
            "check the commit id; it must be reachable from a branch or tag of the remote (`git ls-remote {}` lists them)",
            spec.url
        )))
    }

    fn fetch(
        &self,
        spec: &GitSpec,
        refspecs: &[String],
        shallow: gix::remote::fetch::Shallow,
        timeouts: Timeouts,
        progress: &Arc<dyn Progress>,
        interrupt: &AtomicBool,
    ) -> Result<()> {
        let remote = remote(&self.repo, &spec.url, refspecs)?;
        let connection = connect(&remote, spec, timeouts)?;
        let prepared = connection
            .prepare_fetch(
                gix::progress::Discard,
                gix::remote::ref_map::Options::default(),
            )
            .map_err(|e| transport_error(spec, "list the refs of", e))?
            .with_shallow(shallow)
            .with_reflog_message(gix::remote::fetch::RefLogMessage::Override {
                message: "ktstr: fetch".into(),
            });
        let _watch = PackWatch::start(&self.path, spec.url.clone(), progress.clone());
        match prepared.receive(gix::progress::Discard, interrupt) {
            Ok(_) => Ok(()),
            Err(_) if interrupt.load(Ordering::SeqCst) => Err(StageError::cancelled()),
            Err(e) => {
                let text = chain(&e).join(": ").to_ascii_lowercase();
                // git: "not our ref <id>"; JGit: "want <id> not valid";
                // others: "unadvertised object". A protocol v0 upload-pack
                // process may exit on the refusal before gix has written
                // all wants, which gix reports as failing to send them.
                if [
                    "not our ref",
                    "not valid",
                    "unadvertised",
                    "none of the refspec",
                    "failed to send fetch arguments",
                ]
                .iter()
                .any(|needle| text.contains(needle))
                {
                    let mut err = StageError::command(format!(
                        "git+{}: the remote refused to send the wanted objects",
                        spec.url
                    ));
                    err.causes = chain(&e);
                    Err(err)
                } else {
                    Err(transport_error(spec, "fetch from", e))
                }
            }
        }
    }
}

fn interrupt_check(interrupt: &AtomicBool) -> Result<()> {
    if interrupt.load(Ordering::SeqCst) {
        Err(StageError::cancelled())
    } else {
        Ok(())
    }
}

static INIT_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Create a bare repository at `path` through a temporary sibling.
fn init(root: &Path, path: &Path, url: &str) -> Result<()> {
    let parent = root.join(MIRRORS_DIR_NAME);
    std::fs::create_dir_all(&parent).at("create directory", &parent)?;
    let tmp = parent.join(ktstr_sdk::owned::temp_name(&format!(
        "{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        INIT_SEQ.fetch_add(1, Ordering::SeqCst)
    )));
    let _ = std::fs::remove_dir_all(&tmp);
    gix::init_bare(&tmp).map_err(|e| {
        let mut err = StageError::new(
            ErrorKind::Io,
            format!("cannot create a git mirror in {}", tmp.display()),
        );
        err.causes = chain(&e);
        err.with_hint(format!(
            "make {} writable or set {} to another directory",
            parent.display(),
            paths::CACHE_DIR_ENV
        ))
    })?;
    // Say whose mirror this is, for people looking at the cache.
    let config = tmp.join("config");
    let quoted = url.replace('\\', "\\\\").replace('"', "\\\"");
    let note = format!("[ktstr]\n\turl = \"{quoted}\"\n[gc]\n\tauto = 0\n");
    let mut text = std::fs::read_to_string(&config).at("read", &config)?;
    text.push_str(&note);
    std::fs::write(&config, text).at("write", &config)?;
    match std::fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        // Another process created it first: use theirs.
        Err(_) if path.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(StageError::io("create git mirror", path, e))
        }
    }
}

/// While a fetch runs, report the bytes received so far (the pack gix is
/// writing into `objects/pack/`) every few seconds: a kernel fetch takes
/// minutes and must not look hung.
struct PackWatch {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PackWatch {
    fn start(mirror: &Path, url: String, progress: Arc<dyn Progress>) -> PackWatch {
        let dir = mirror.join("objects/pack");
        let before: u64 = dir_bytes(&dir);
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let (flag, cv) = &*stop;
                let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (guard, _) = cv
                        .wait_timeout(stopped, Duration::from_secs(3))
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = guard;
                    if *stopped {
                        return;
                    }
                    let got = dir_bytes(&dir).saturating_sub(before);
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    progress.line(&format!(
                        "fetching {url}: {:.1} MiB ({:.1} MiB/s)",
                        got as f64 / 1048576.0,
                        got as f64 / 1048576.0 / secs
                    ));
                }
            })
        };
        PackWatch {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PackWatch {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
