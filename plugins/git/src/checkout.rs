//! Writing one commit's tree into a fresh scratch directory.
//!
//! The tree is plain files with no `.git`: the build sees exactly the
//! commit's content, nothing can make it "dirty", and the scratch tree can
//! be deleted with no repository bookkeeping. It is never the user's tree:
//! ktstr does not reset or check out anything in a repository it did not
//! create.
//!
//! Checkout goes through a second handle on the mirror opened with
//! isolated configuration, so a user's `core.autocrlf`, `core.eol` or
//! filter drivers cannot rewrite kernel sources on the way out.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ktstr_sdk::prelude::*;

use crate::remote::chain;

/// Write the tree of `commit` from the mirror at `mirror` into `dest`
/// (an empty directory).
pub fn checkout(mirror: &Path, commit: &str, dest: &Path, interrupt: &AtomicBool) -> Result<()> {
    let fail = |what: &str| {
        let what = format!(
            "cannot check out commit {commit} into {}: {what}",
            dest.display()
        );
        move |e: gix::Error| {
            if interrupt.load(Ordering::SeqCst) {
                return StageError::cancelled();
            }
            let mut err = StageError::new(ErrorKind::Io, what.clone());
            err.causes = chain(&e);
            err.with_hint(format!(
                "check free space in {}; if it persists, remove the mirror {} and retry",
                dest.display(),
                mirror.display()
            ))
        }
    };
    let repo =
        gix::open_opts(mirror, gix::open::Options::isolated()).map_err(fail("open the mirror"))?;
    let id = gix::ObjectId::from_hex(commit.as_bytes())
        .map_err(|e| StageError::internal(format!("{commit} is not a commit id")).caused_by(e))?;
    let tree = repo
        .find_commit(id)
        .map_err(fail("read the commit"))?
        .tree_id()
        .map_err(fail("read the commit's tree"))?;
    let mut index = repo.index_from_tree(&tree).map_err(fail("list the tree"))?;
    let mut options = repo
        .checkout_options(gix::worktree::stack::state::attributes::Source::IdMapping)
        .map_err(fail("read checkout options"))?;
    options.destination_is_initially_empty = true;
    let objects = repo
        .objects
        .clone()
        .into_arc()
        .map_err(|e| StageError::io("open the objects of", mirror, e))?;
    let outcome = gix::worktree::state::checkout(
        &mut index,
        dest,
        objects,
        &gix::progress::Discard,
        &gix::progress::Discard,
        interrupt,
        options,
    )
    .map_err(fail("write files"))?;
    if interrupt.load(Ordering::SeqCst) {
        return Err(StageError::cancelled());
    }
    if let Some(first) = outcome.errors.first() {
        let mut err = StageError::new(
            ErrorKind::Io,
            format!(
                "cannot check out commit {commit} into {}: {} files failed, first {}",
                dest.display(),
                outcome.errors.len(),
                first.path
            ),
        );
        err.causes = chain(&first.error);
        return Err(err);
    }
    if let Some(first) = outcome.collisions.first() {
        return Err(StageError::new(
            ErrorKind::Unsupported,
            format!(
                "cannot check out commit {commit} into {}: paths collide on this file system (first {})",
                dest.display(),
                first.path
            ),
        )
        .with_hint("put the ktstr cache on a case-sensitive file system (KTSTR_CACHE_DIR)"));
    }
    Ok(())
}
