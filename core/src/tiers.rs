//! Every cache tier of one run behind one type: the local tier, which is
//! authoritative and always first, and the remote tiers after it.
//!
//! Tier policy is the host's, so it lives here and nowhere else: a lookup
//! serves an entry only when the inputs it recorded are the wanted ones; a
//! remote hit is copied into the local tier (backfill); a remote that fails
//! is not asked again in this run; read-only tiers are never written, and
//! are wrapped in [`ReadOnly`] so no write could reach them anyway.
//! Backends only store, find, list and remove. Results say what happened
//! ([`Backfilled`]) instead of leaving callers to inspect paths.
//!
//! Two more pieces of the backend contract (docs/cache.md) are the host's
//! and so live here: the [`Staging`] each lookup gets, which this type
//! owns and removes (after a backfill, else when the run's `Tiers` is
//! dropped), and `metadata.origin`, which backends store verbatim: a
//! backfill sets it, and a store (a build, a push) clears it.
//!
//! It lives in core, not the SDK, because verifying a hit needs the host's
//! key derivation ([`crate::identity`]) and the run's progress reporting.

use std::path::PathBuf;
use std::sync::Mutex;

use ktstr_sdk::cache::{Artifacts, CacheBackend, CacheEntry, CacheKey, Metadata, Staging};
use ktstr_sdk::context::{Cancellation, StageContext};
use ktstr_sdk::error::ErrorKind;
use ktstr_sdk::read_only::ReadOnly;
use ktstr_sdk::{Result, StageError};

use crate::identity::{self, DerivedKey};
use crate::registry::Named;

/// One cache tier.
pub type Tier = Named<dyn CacheBackend>;

/// The local tier and the remotes of one run.
pub struct Tiers {
    local: Tier,
    remotes: Vec<Tier>,
    /// Remote tiers that failed during this run: not asked again, so an
    /// unreachable remote costs one timeout and one warning, not one per call.
    down: Mutex<Vec<String>>,
    /// Keys a remote tier answered in this run, with that tier's name
    /// (`build --json` reports them as `pulled`).
    pulled: Mutex<Vec<(CacheKey, String)>>,
    /// Where lookups stage files; `None`: the cache root, when first needed.
    staging_root: Option<PathBuf>,
    /// The staging of every hit still served from it; dropped (removed)
    /// with this value, at the end of the run, unless released earlier.
    held: Mutex<Vec<Staging>>,
}

/// Where a remote hit ended up.
#[derive(Debug)]
pub enum Backfilled {
    /// Copied into the local tier: the local entry.
    Local(CacheEntry),
    /// The local tier could not take it (warned): the remote entry, to
    /// serve this once.
    RemoteOnly(CacheEntry),
}

impl Backfilled {
    pub fn entry(self) -> CacheEntry {
        match self {
            Self::Local(e) | Self::RemoteOnly(e) => e,
        }
    }
}

impl Tiers {
    /// A remote whose capabilities say read-only is wrapped in [`ReadOnly`].
    pub fn new(local: Tier, remotes: Vec<Tier>) -> Self {
        let remotes = remotes
            .into_iter()
            .map(|t| {
                if !is_read_only(&t) {
                    return t;
                }
                let why = format!(
                    "the {} tier is configured read-only; only machines trusted to write should \
                     have it writable",
                    t.name
                );
                Named {
                    name: t.name,
                    stage: Box::new(ReadOnly::new(t.stage, why)) as Box<dyn CacheBackend>,
                }
            })
            .collect();
        Self {
            local,
            remotes,
            down: Mutex::default(),
            pulled: Mutex::default(),
            staging_root: None,
            held: Mutex::default(),
        }
    }

    /// Stage lookups under `root` instead of the cache root.
    pub fn with_staging_root(mut self, root: PathBuf) -> Self {
        self.staging_root = Some(root);
        self
    }

    /// Look `key` up in `tier`, lending it a fresh [`Staging`]. A hit
    /// whose files are in it keeps the staging until [`Tiers::backfill`]
    /// copied them or the run ends; otherwise it goes now.
    pub fn lookup_in(
        &self,
        tier: &Tier,
        key: &CacheKey,
        cx: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        // Only a backend that unpacks creates the directory; a lookup must
        // not fail for want of a cache root it may never use.
        let root = (self.staging_root.clone())
            .or_else(|| ktstr_sdk::paths::cache_root().ok())
            .unwrap_or_else(std::env::temp_dir);
        let staging = Staging::new(&root);
        let found = tier.stage.lookup(key, &staging, cx)?;
        if let Some(e) = &found
            && staging.holds(&e.dir)
        {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(staging);
        }
        Ok(found)
    }

    /// Remove the staging that holds `entry`'s files, if any.
    fn release(&self, entry: &CacheEntry) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|s| !s.holds(&entry.dir));
    }

    /// Store `entry` (from the local tier) in `tier`: what `cache push`
    /// does. The copy there does not say where this machine got it from.
    pub fn push_to(
        &self,
        tier: &Tier,
        entry: &CacheEntry,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        let mut metadata = entry.metadata.clone();
        metadata.origin = None;
        tier.stage
            .store(&entry.key, &entry.artifacts(), &metadata, cx)
    }

    /// The authoritative local tier.
    pub fn local(&self) -> &Tier {
        &self.local
    }

    /// Every remote tier configured, in order.
    pub fn remotes(&self) -> &[Tier] {
        &self.remotes
    }

    /// The local tier, then (with `remotes`) every remote: what `kernel
    /// list` and `kernel clean` work on. `true` marks the local tier.
    pub fn scope(&self, remotes: bool) -> impl Iterator<Item = (&Tier, bool)> {
        let others = if remotes { &self.remotes[..] } else { &[] };
        std::iter::once((&self.local, true)).chain(others.iter().map(|t| (t, false)))
    }

    /// The remote tiers still worth asking in this run.
    pub fn live_remotes(&self) -> impl Iterator<Item = &Tier> {
        let down = self.down.lock().map(|d| d.clone()).unwrap_or_default();
        self.remotes.iter().filter(move |t| !down.contains(&t.name))
    }

    /// Stop asking `tier` for the rest of this run.
    pub fn mark_down(&self, tier: &str) {
        if let Ok(mut down) = self.down.lock()
            && !down.iter().any(|d| d == tier)
        {
            down.push(tier.to_string());
        }
    }

    /// Look `derived` up in every tier, local first; a remote hit is copied
    /// into the local tier. An entry built from other inputs under the same
    /// key (a digest collision, a tampered or foreign entry) is a miss with
    /// a warning, and the rebuild replaces it. A corrupt entry is reported
    /// (with its hint) and is a miss; the tier replaces it when the rebuild
    /// is stored. A remote tier that fails otherwise (unreachable, timing
    /// out, refusing the credentials, a missing bucket, a plugin that
    /// panicked) is reported once and not asked again in this run.
    pub fn lookup(&self, derived: &DerivedKey, cx: &StageContext) -> Result<Option<CacheEntry>> {
        let key = &derived.key;
        match self.lookup_in(&self.local, key, cx) {
            Ok(Some(entry)) if verified(derived, &entry, "the local cache", "rebuilding", cx) => {
                return Ok(Some(entry));
            }
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::Corrupt => {
                crate::report::warn_error_then(&*cx.progress, "", &e, "; rebuilding it");
            }
            Err(e) => return Err(e),
        }
        for tier in self.live_remotes() {
            match self.lookup_in(tier, key, cx) {
                Ok(Some(entry)) if verified(derived, &entry, &tier.name, "not using it", cx) => {
                    if let Ok(mut pulled) = self.pulled.lock() {
                        pulled.push((key.clone(), tier.name.clone()));
                    }
                    return Ok(Some(self.backfill(tier, &entry, cx).entry()));
                }
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::Corrupt => {
                    crate::report::warn_error(&*cx.progress, "not using ", &e);
                }
                Err(e) => {
                    self.mark_down(&tier.name);
                    crate::report::warn_error(
                        &*cx.progress,
                        &format!(
                            "{}: not using it for the rest of this run: lookup of {key} failed: ",
                            tier.name
                        ),
                        &e,
                    );
                }
            }
        }
        Ok(None)
    }

    /// The remote tier that answered a lookup of `key` in this run, if one did.
    pub fn pulled_from(&self, key: &CacheKey) -> Option<String> {
        let pulled = self.pulled.lock().ok()?;
        pulled
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, t)| t.clone())
    }

    /// The local tier's entry for `derived` if it is there and verified;
    /// a lookup error is a miss (the caller builds and the store replaces it).
    pub fn lookup_local(&self, derived: &DerivedKey, cx: &StageContext) -> Option<CacheEntry> {
        (self.lookup_in(&self.local, &derived.key, cx).ok().flatten())
            .filter(|e| verified(derived, e, "the local cache", "rebuilding", cx))
    }

    /// Copy `remote` (found in `tier`) into the local tier, recording where
    /// it came from; its staging is removed once the copy is made.
    pub fn backfill(&self, tier: &Tier, remote: &CacheEntry, cx: &StageContext) -> Backfilled {
        let mut metadata = remote.metadata.clone();
        // Built-in tiers' descriptions start with their name: say it once.
        let described = tier.stage.describe();
        metadata.origin = Some(if described.starts_with(&tier.name) {
            described.clone()
        } else {
            format!("{} {described}", tier.name)
        });
        match self
            .local
            .stage
            .store(&remote.key, &remote.artifacts(), &metadata, cx)
        {
            Ok(entry) => {
                self.release(remote);
                cx.progress
                    .note(&format!("{} came from {described}", remote.key));
                Backfilled::Local(entry)
            }
            Err(e) => {
                crate::report::warn_error(
                    &*cx.progress,
                    &format!("could not copy {} into the local cache: ", remote.key),
                    &e,
                );
                Backfilled::RemoteOnly(remote.clone())
            }
        }
    }

    /// Store a build into the local tier (its failure is an error: the
    /// user asked for a cached kernel), then into every live writable
    /// remote (failures warn). A build comes from nowhere else, so its
    /// `origin` is cleared. An interrupt stores nothing: backends stop
    /// through `cx`, the run is checked for cancellation before the local
    /// store and after each step, and an entry installed while the signal
    /// arrived is removed again.
    pub fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        cx.cancel.check()?;
        let mut metadata = metadata.clone();
        metadata.origin = None;
        let entry = self
            .local
            .stage
            .store(key, artifacts, &metadata, cx)
            .map_err(|e| {
                e.context(format!(
                    "storing {key} in the {}",
                    self.local.stage.describe()
                ))
            })?;
        self.undo_if_cancelled(key, cx)?;
        for tier in self.live_remotes().filter(|t| !is_read_only(t)) {
            self.undo_if_cancelled(key, cx)?;
            if let Err(e) = tier.stage.store(key, artifacts, &metadata, cx) {
                crate::report::warn_error(
                    &*cx.progress,
                    &format!("{}: could not store {key}: ", tier.name),
                    &e,
                );
            }
        }
        self.undo_if_cancelled(key, cx)?;
        Ok(entry)
    }

    /// Interrupted while the entry was being stored: take the local entry
    /// out again (an interrupted build caches nothing) and stop.
    fn undo_if_cancelled(&self, key: &CacheKey, cx: &StageContext) -> Result<()> {
        if !cx.cancel.is_cancelled() {
            return Ok(());
        }
        // Under a context of its own: the run's says stop, and a backend
        // that honours it would refuse the very removal that cleans up.
        let undo = StageContext {
            cancel: Cancellation::new(),
            ..cx.clone()
        };
        if let Err(e) = self.local.stage.remove(key, &undo) {
            cx.progress.warn(&format!(
                "interrupted while storing {key}; could not remove it again: {e}"
            ));
        }
        Err(StageError::cancelled())
    }
}

/// Whether `tier` refuses writes.
pub fn is_read_only(tier: &Tier) -> bool {
    tier.stage.capabilities().read_only
}

/// Whether `entry` (found in `tier`) recorded the inputs `derived` was made
/// of; warns when not.
fn verified(
    derived: &DerivedKey,
    entry: &CacheEntry,
    tier: &str,
    then: &str,
    cx: &StageContext,
) -> bool {
    if identity::same_inputs(&derived.components, &entry.metadata.components) {
        return true;
    }
    cx.progress.warn(&format!(
        "entry {} in {tier} was built from other inputs ({} differs); {then}",
        derived.key,
        identity::first_difference(&derived.components, &entry.metadata.components)
    ));
    false
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use ktstr_sdk::cache::{Capabilities, KeyComponent, Listed, SourceInfo, Staging};
    use ktstr_sdk::testing::{RecordingRunner, context_with};

    use super::*;

    /// An in-memory tier that records every call.
    #[derive(Default)]
    struct Memory {
        entries: Mutex<BTreeMap<String, CacheEntry>>,
        calls: Mutex<Vec<String>>,
        fail_lookups: bool,
        fail_stores: bool,
        caps: Capabilities,
        /// Unpack hits into the host's staging, as an archive tier does.
        unpacks: bool,
        /// Interrupt the run while storing (a signal during the store).
        interrupt_on_store: bool,
        /// Staging directories its hits went to.
        staged: Mutex<Vec<std::path::PathBuf>>,
        /// Whether the image a store was given could be read.
        stored_readable: Mutex<Vec<bool>>,
    }

    impl Memory {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    /// The tier's handle; the test keeps another to inspect it.
    struct Shared(Arc<Memory>);

    impl std::ops::Deref for Shared {
        type Target = Memory;
        fn deref(&self) -> &Memory {
            &self.0
        }
    }

    impl CacheBackend for Shared {
        fn lookup(
            &self,
            key: &CacheKey,
            staging: &Staging,
            _: &StageContext,
        ) -> Result<Option<CacheEntry>> {
            self.calls.lock().unwrap().push(format!("lookup {key}"));
            if self.fail_lookups {
                return Err(StageError::new(ErrorKind::Io, "unreachable"));
            }
            let found = self.entries.lock().unwrap().get(key.as_str()).cloned();
            match found {
                Some(mut e) if self.unpacks => {
                    e.dir = staging.dir()?.join(key.as_str());
                    std::fs::create_dir(&e.dir).unwrap();
                    std::fs::write(e.image(), b"kernel").unwrap();
                    self.staged.lock().unwrap().push(e.dir.clone());
                    Ok(Some(e))
                }
                found => Ok(found),
            }
        }
        fn store(
            &self,
            key: &CacheKey,
            a: &Artifacts,
            m: &Metadata,
            cx: &StageContext,
        ) -> Result<CacheEntry> {
            self.calls.lock().unwrap().push(format!("store {key}"));
            (self.stored_readable.lock().unwrap()).push(a.image.is_file());
            if self.fail_stores {
                return Err(StageError::new(ErrorKind::Io, "disk full"));
            }
            if self.interrupt_on_store {
                cx.cancel.cancel();
            }
            let entry = entry(key.as_str(), &m.components, "memory");
            let mut entry = entry;
            entry.metadata = m.clone();
            (self.entries.lock().unwrap()).insert(key.to_string(), entry.clone());
            Ok(entry)
        }
        fn list(&self, _: &StageContext) -> Result<Vec<Listed>> {
            Ok(Vec::new())
        }
        /// Honours cancellation, as a careful plugin would.
        fn remove(&self, key: &CacheKey, cx: &StageContext) -> Result<bool> {
            cx.cancel.check()?;
            self.calls.lock().unwrap().push(format!("remove {key}"));
            Ok(self.entries.lock().unwrap().remove(key.as_str()).is_some())
        }
        fn describe(&self) -> String {
            "memory tier".into()
        }
        fn capabilities(&self) -> Capabilities {
            self.caps
        }
    }

    fn components(config: &str) -> Vec<KeyComponent> {
        vec![
            KeyComponent::new("source", "git:abc"),
            KeyComponent::new("config", config),
        ]
    }

    fn entry(key: &str, components: &[KeyComponent], origin: &str) -> CacheEntry {
        let key = CacheKey::parse(key).unwrap();
        CacheEntry {
            key: key.clone(),
            dir: std::path::PathBuf::from("/nowhere"),
            metadata: Metadata {
                schema: Metadata::SCHEMA,
                key,
                source: SourceInfo {
                    kind: "git".into(),
                    identity: "abc".into(),
                    path: None,
                },
                version: None,
                arch: "x86_64".into(),
                image_name: "bzImage".into(),
                profile: "tiny".into(),
                config_sha256: String::new(),
                fragments: Vec::new(),
                builder: String::new(),
                toolchain: String::new(),
                built_at: String::new(),
                components: components.to_vec(),
                artifacts: BTreeMap::new(),
                strip: None,
                origin: None,
                kernelrelease: None,
                build: None,
                verify: None,
            },
            origin: origin.into(),
            location: None,
            last_used: None,
        }
    }

    fn tier(name: &str, m: &Arc<Memory>) -> Tier {
        Named {
            name: name.into(),
            stage: Box::new(Shared(m.clone())),
        }
    }

    fn wanted(key: &str) -> DerivedKey {
        DerivedKey {
            key: CacheKey::parse(key).unwrap(),
            components: components("cfg-1"),
        }
    }

    fn put(m: &Memory, key: &str, config: &str) {
        (m.entries.lock().unwrap()).insert(key.into(), entry(key, &components(config), "memory"));
    }

    fn cx() -> (StageContext, Arc<ktstr_sdk::testing::RecordingProgress>) {
        context_with(Arc::new(RecordingRunner::default()))
    }

    #[test]
    fn a_remote_hit_is_verified_and_copied_into_the_local_tier() {
        let local = Arc::new(Memory::default());
        let remote = Arc::new(Memory::default());
        put(&remote, "k-1", "cfg-1");
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("s3-cache", &remote)]);
        let (cx, progress) = cx();
        assert_eq!(tiers.pulled_from(&wanted("k-1").key), None);
        let got = tiers.lookup(&wanted("k-1"), &cx).unwrap().unwrap();
        assert_eq!(got.metadata.origin.as_deref(), Some("s3-cache memory tier"));
        assert_eq!(local.calls(), ["lookup k-1", "store k-1"]);
        assert_eq!(tiers.pulled_from(&got.key).as_deref(), Some("s3-cache"));
        // Served from the local tier now: not pulled again.
        let again = Tiers::new(tier("local-cache", &local), vec![tier("s3-cache", &remote)]);
        again.lookup(&wanted("k-1"), &cx).unwrap().unwrap();
        assert_eq!(again.pulled_from(&got.key), None);
        assert!(
            progress
                .notes()
                .iter()
                .any(|n| n == "k-1 came from memory tier"),
            "{:?}",
            progress.notes()
        );
    }

    #[test]
    fn an_entry_of_other_inputs_is_a_miss_in_every_tier() {
        let local = Arc::new(Memory::default());
        let remote = Arc::new(Memory::default());
        put(&local, "k-1", "cfg-other");
        put(&remote, "k-1", "cfg-other");
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("s3-cache", &remote)]);
        let (cx, progress) = cx();
        assert!(tiers.lookup(&wanted("k-1"), &cx).unwrap().is_none());
        assert!(tiers.lookup_local(&wanted("k-1"), &cx).is_none());
        let warnings = progress.warnings();
        assert!(
            warnings.iter().any(|w| w.contains(
                "entry k-1 in the local cache was built from \
                 other inputs (config differs); rebuilding"
            )),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("in s3-cache was built from other inputs")
                    && w.ends_with("not using it")),
            "{warnings:?}"
        );
        assert_eq!(
            local.calls(),
            ["lookup k-1", "lookup k-1"],
            "nothing stored"
        );
    }

    #[test]
    fn a_failed_backfill_says_so_and_serves_the_remote_copy() {
        let local = Arc::new(Memory {
            fail_stores: true,
            ..Memory::default()
        });
        let remote = Arc::new(Memory::default());
        put(&remote, "k-1", "cfg-1");
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("s3-cache", &remote)]);
        let (cx, progress) = cx();
        let remote_tier = &tiers.remotes()[0];
        let found = remote.entries.lock().unwrap()["k-1"].clone();
        let Backfilled::RemoteOnly(e) = tiers.backfill(remote_tier, &found, &cx) else {
            panic!("a failed local store is not Local");
        };
        assert_eq!(e.key.as_str(), "k-1");
        assert!(
            progress.warnings()[0].starts_with("could not copy k-1 into the local cache: "),
            "{:?}",
            progress.warnings()
        );
    }

    #[test]
    fn a_failing_remote_is_asked_once_per_run_and_not_written() {
        let local = Arc::new(Memory::default());
        let down = Arc::new(Memory {
            fail_lookups: true,
            ..Memory::default()
        });
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("s3-cache", &down)]);
        let (cx, progress) = cx();
        assert!(tiers.lookup(&wanted("k-1"), &cx).unwrap().is_none());
        assert!(tiers.lookup(&wanted("k-2"), &cx).unwrap().is_none());
        assert_eq!(down.calls(), ["lookup k-1"]);
        assert_eq!(progress.warnings().len(), 1, "{:?}", progress.warnings());
        let stored = entry("k-2", &components("cfg-1"), "x");
        tiers
            .store(&stored.key, &stored.artifacts(), &stored.metadata, &cx)
            .unwrap();
        assert_eq!(down.calls(), ["lookup k-1"], "a down tier was written");
        assert_eq!(local.calls().last().unwrap(), "store k-2");
    }

    #[test]
    fn read_only_remotes_are_wrapped_and_never_written() {
        let local = Arc::new(Memory::default());
        let ro = Arc::new(Memory {
            caps: Capabilities { read_only: true },
            ..Memory::default()
        });
        let rw = Arc::new(Memory::default());
        let tiers = Tiers::new(
            tier("local-cache", &local),
            vec![tier("ro", &ro), tier("rw", &rw)],
        );
        let (cx, _) = cx();
        let e = entry("k-1", &components("cfg-1"), "x");
        tiers
            .store(&e.key, &e.artifacts(), &e.metadata, &cx)
            .unwrap();
        assert!(ro.calls().is_empty(), "{:?}", ro.calls());
        assert_eq!(rw.calls(), ["store k-1"]);
        let err = tiers.remotes()[0].stage.remove(&e.key, &cx).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(ro.calls().is_empty(), "the decorator let a remove through");
        assert_eq!(
            tiers
                .scope(true)
                .map(|(t, local)| (t.name.as_str(), local))
                .collect::<Vec<_>>(),
            [("local-cache", true), ("ro", false), ("rw", false)]
        );
        assert_eq!(tiers.scope(false).count(), 1);
    }

    #[test]
    fn an_interrupted_store_leaves_nothing_behind() {
        let local = Arc::new(Memory::default());
        let remote = Arc::new(Memory::default());
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("rw", &remote)]);
        let (cx, _) = cx();
        cx.cancel.cancel();
        let e = entry("k-1", &components("cfg-1"), "x");
        let err = tiers
            .store(&e.key, &e.artifacts(), &e.metadata, &cx)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
        assert!(local.entries.lock().unwrap().is_empty());
        assert!(remote.calls().is_empty());
    }

    fn unpacking() -> Arc<Memory> {
        Arc::new(Memory {
            unpacks: true,
            ..Memory::default()
        })
    }

    /// A hit unpacked into staging is read by the backfill, then its
    /// staging goes; the run's own directory holds nothing afterwards.
    #[test]
    fn staging_of_a_remote_hit_goes_after_the_backfill() {
        let root = tempfile::tempdir().unwrap();
        let local = Arc::new(Memory::default());
        let remote = unpacking();
        put(&remote, "k-1", "cfg-1");
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("tar", &remote)])
            .with_staging_root(root.path().to_path_buf());
        let (cx, _) = cx();
        let got = tiers.lookup(&wanted("k-1"), &cx).unwrap().unwrap();
        assert_eq!(got.origin, "memory", "the local tier's entry");
        assert_eq!(*local.stored_readable.lock().unwrap(), [true]);
        let staged = remote.staged.lock().unwrap().clone();
        assert_eq!(staged.len(), 1);
        assert!(staged[0].starts_with(root.path().join("scratch")));
        assert!(!staged[0].exists(), "staging kept after the backfill");
        assert!(tiers.held.lock().unwrap().is_empty());
    }

    /// Served from the remote copy (the local tier refused it), the files
    /// stay until the run ends, then go.
    #[test]
    fn staging_of_a_hit_served_from_it_lasts_the_run() {
        let root = tempfile::tempdir().unwrap();
        let local = Arc::new(Memory {
            fail_stores: true,
            ..Memory::default()
        });
        let remote = unpacking();
        put(&remote, "k-1", "cfg-1");
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("tar", &remote)])
            .with_staging_root(root.path().to_path_buf());
        let (cx, _) = cx();
        let got = tiers.lookup(&wanted("k-1"), &cx).unwrap().unwrap();
        assert!(got.image().is_file(), "served files removed during the run");
        drop(tiers);
        assert!(!got.dir.exists(), "staging outlived the run");
    }

    /// Backends store metadata verbatim; the host owns `origin`: set on a
    /// backfill, cleared when storing a build and when pushing, so no
    /// tier's copy claims to come from somewhere.
    #[test]
    fn origin_is_set_on_backfill_and_cleared_on_store_and_push() {
        let root = tempfile::tempdir().unwrap();
        let local = Arc::new(Memory::default());
        let remote = Arc::new(Memory::default());
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("s3-cache", &remote)])
            .with_staging_root(root.path().to_path_buf());
        let (cx, _) = cx();
        let mut e = entry("k-1", &components("cfg-1"), "x");
        e.metadata.origin = Some("s3-cache s3://elsewhere".into());
        tiers
            .store(&e.key, &e.artifacts(), &e.metadata, &cx)
            .unwrap();
        let origin_in = |m: &Memory| m.entries.lock().unwrap()["k-1"].metadata.origin.clone();
        assert_eq!(origin_in(&local), None);
        assert_eq!(origin_in(&remote), None);

        // Pulled into a second machine's local tier: origin says from where.
        let other = Arc::new(Memory::default());
        let there = Tiers::new(tier("local-cache", &other), vec![tier("s3-cache", &remote)])
            .with_staging_root(root.path().to_path_buf());
        there.lookup(&wanted("k-1"), &cx).unwrap().unwrap();
        assert_eq!(origin_in(&other).as_deref(), Some("s3-cache memory tier"));
        assert_eq!(origin_in(&remote), None, "the lookup wrote the remote");

        // Pushed back from there: the remote copy does not claim to come
        // from the remote itself.
        let pulled = other.entries.lock().unwrap()["k-1"].clone();
        there.push_to(&there.remotes()[0], &pulled, &cx).unwrap();
        assert_eq!(origin_in(&remote), None);
    }

    /// A signal while the local tier stores: the entry is taken out again
    /// (through a context that is not itself cancelled, or a backend that
    /// honours cancellation would refuse the removal) and nothing reaches
    /// the remotes.
    #[test]
    fn a_store_interrupted_inside_the_backend_is_undone() {
        let root = tempfile::tempdir().unwrap();
        let local = Arc::new(Memory {
            interrupt_on_store: true,
            ..Memory::default()
        });
        let remote = Arc::new(Memory::default());
        let tiers = Tiers::new(tier("local-cache", &local), vec![tier("rw", &remote)])
            .with_staging_root(root.path().to_path_buf());
        let (cx, progress) = cx();
        let e = entry("k-1", &components("cfg-1"), "x");
        let err = tiers
            .store(&e.key, &e.artifacts(), &e.metadata, &cx)
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
        assert!(local.entries.lock().unwrap().is_empty(), "still visible");
        assert_eq!(local.calls(), ["store k-1", "remove k-1"]);
        assert!(remote.calls().is_empty());
        assert!(progress.warnings().is_empty(), "{:?}", progress.warnings());
    }
}
