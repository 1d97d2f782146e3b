//! Whether HEAD, the index and the work tree differ in a tracked file.
//!
//! The comparison half of the probe: when HEAD and the index agree, the
//! stat fast path ([`crate::stat_match`]) answers for an untouched tree;
//! otherwise a gix status walk, tuned to stop at the first change, and the rule for which status items make a tree
//! dirty (stat-only updates, untracked files and submodules do not).

use gix::bstr::{BStr, ByteSlice};
use gix::status::index_worktree;
use gix::status::plumbing::index_as_worktree::{Change, EntryStatus};

/// Whether HEAD's tree, the index and the work tree differ in a tracked
/// file (under `prefix` when given). Stops at the first change.
pub(crate) fn has_tracked_changes(
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

    if index_matches_head
        && let Some(workdir) = repo.workdir()
        && crate::stat_match::all_tracked_files_match(workdir, &index, prefix)
    {
        return Ok(false);
    }

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
