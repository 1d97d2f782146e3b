//! Single-flight per cache key: the same key is built once, whatever the
//! reserver.
//!
//! Before anything is fetched, reserved or built, a build whose key is
//! already known takes `<root>/.locks/build-<key>.lock` (exclusive). A
//! second build of the key blocks there, says for whom it waits, and once
//! the lock is granted looks in the cache again: the peer has usually just
//! stored the kernel. Only when the peer failed (or was killed) does it
//! build itself. The lock is inherited by every process the build runs, so
//! a killed build's leftover processes keep it until they have exited.
//!
//! Locks are always taken in the order key → CPUs (reserver) → source tree,
//! so builds cannot deadlock on each other.

use std::path::Path;

use ktstr_sdk::Result;
use ktstr_sdk::cache::CacheEntry;
use ktstr_sdk::context::StageContext;
use ktstr_sdk::lock::{self, FileLock, LockMode};
use ktstr_sdk::paths;

use crate::identity::DerivedKey;
use crate::registry::Stages;

/// What a build may do after asking for its key's turn.
pub(super) enum Turn {
    /// Build it; the lock (if the key was known) is held until dropped.
    Build(Option<FileLock>),
    /// The build we waited for stored the key.
    PeerBuilt(Box<CacheEntry>),
}

/// Take the build lock of `key` (nothing to take when the key is not known
/// yet), then look in the cache again: the local tier only when the lock
/// was free (a peer may have finished between our lookup and now), every
/// tier after a wait.
pub(super) fn take_turn(
    stages: &Stages,
    root: &Path,
    key: Option<&DerivedKey>,
    cx: &StageContext,
) -> Result<Turn> {
    let Some(derived) = key else {
        return Ok(Turn::Build(None));
    };
    let key = &derived.key;
    paths::ensure_root(root)?;
    let path = paths::build_lock(root, key);
    let (held, waited) = lock::lock_reporting(&path, LockMode::Exclusive, |holders| {
        cx.progress.note(&format!(
            "{key} is being built by another ktstr; waiting for it instead of building it \
             twice ({})",
            lock::describe_holders(holders)
        ));
    })?;
    let held = held.inherit_into_commands();
    cx.cancel.check()?;
    let found = if waited {
        stages.tiers.lookup(derived, cx)?
    } else {
        stages.tiers.lookup_local(derived, cx)
    };
    if let Some(entry) = found {
        cx.progress.note(&format!(
            "a concurrent build cached {key} {}; not rebuilding",
            if waited {
                "while we waited"
            } else {
                "just now"
            }
        ));
        return Ok(Turn::PeerBuilt(Box::new(entry)));
    }
    Ok(Turn::Build(Some(held)))
}
