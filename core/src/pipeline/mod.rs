//! One `ktstr build`: resolve → identity → (hit?) → acquire → (hit?) →
//! reserve → lock → re-check → configure → (hit?) → build → validate →
//! gate → (boot check) → store. [`run`] reads as these phases, each a
//! method of `Run`; a hit is boot-checked afterwards when asked ([`verify`]).
//!
//! The order is what makes "never build the same kernel twice" cheap:
//! the key is derived before anything is reserved or locked, so a hit
//! costs a probe, a few stats and one metadata read. Builds of one tree
//! queue on its lock, and whoever waited looks in the cache again, since
//! the peer it waited for has usually just stored the same kernel.

mod build_lock;
mod configure;
mod evidence;
mod explain;
mod failure;
mod keyer;
mod lease;
mod store;
pub mod tree_state;
pub mod verify;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ktstr_sdk::build::{BuildOutput, BuildPlan, BuildRequest, Variant};
use ktstr_sdk::cache::CacheEntry;
use ktstr_sdk::configure::ConfigureRequest;
use ktstr_sdk::context::StageContext;
use ktstr_sdk::lock::{self, FileLock, LockMode};
use ktstr_sdk::reserve::{Reservation, ReserveRequest};
use ktstr_sdk::source::{AcquiredSource, KernelSpec, Resolved, SourceAcquirer};
use ktstr_sdk::{Result, paths};

use crate::build_log::BuildLog;
use crate::identity::DerivedKey;
use crate::registry::{Named, Stages};
use crate::scratch::ScratchGuard;
use configure::Configured;
use keyer::{ConfigSnapshot, Keyer};
use tree_state::{MidWaitState, changed_during_build};

/// What the user asked `ktstr build` for.
#[derive(Debug, Clone)]
pub struct BuildRequestSpec {
    pub spec: KernelSpec,
    /// Profile and user fragments; jobs and sandbox are filled in here.
    pub configure: ConfigureRequest,
    pub clean: bool,
    pub force: bool,
    pub cpu_cap: Option<usize>,
    pub explain: bool,
    /// Keep a scratch source tree (extracted tarball, git checkout).
    pub keep_source: bool,
    /// `KTSTR_BYPASS_LLC_LOCKS`: no CPU reservation (the tree and key locks
    /// still apply).
    pub bypass_locks: bool,
    /// Architecture and toolchain (`--arch`, `--toolchain`, `--cross-compile`).
    pub variant: Variant,
    /// Out-of-tree build directory (`--output`, kbuild `O=`), absolute.
    pub output: Option<PathBuf>,
}

/// One kernel to build: a resolved spec and the acquirer that resolved it.
pub struct Target<'a> {
    pub acquirer: &'a Named<dyn SourceAcquirer>,
    pub resolved: Resolved,
}

impl Target<'_> {
    /// How to name this target in messages: its version, else its spec.
    pub fn label(&self) -> String {
        self.resolved
            .version
            .clone()
            .unwrap_or_else(|| self.resolved.spec.raw.clone())
    }
}

/// Resolve `spec` to the kernels it names (a range names several).
pub fn resolve<'a>(
    stages: &'a Stages,
    spec: &KernelSpec,
    cx: &StageContext,
) -> Result<Vec<Target<'a>>> {
    let acquirer = stages.acquirer_for(spec)?;
    let resolved = crate::spec_claim::name_spec(spec, acquirer.stage.resolve(spec, cx))?;
    if resolved.is_empty() {
        return Err(ktstr_sdk::StageError::not_found(format!(
            "--kernel {}: names no kernel",
            spec.raw
        ))
        .with_hint("check the range bounds or the version prefix"));
    }
    Ok(resolved
        .into_iter()
        .map(|resolved| Target { acquirer, resolved })
        .collect())
}

/// Why a built kernel was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCached {
    /// Dirty (or non-git) tree: its content has no identity to key on.
    Dirty { is_git: bool },
    /// The tree changed while make ran.
    ChangedDuringBuild,
}

/// How a build request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Found in the cache without building.
    Hit(CacheEntry),
    /// A concurrent build stored it while we waited for the tree.
    PeerBuilt(CacheEntry),
    /// Built and stored.
    Stored(CacheEntry),
    /// Built, not stored; the image is in the tree.
    NotCached {
        tree: PathBuf,
        image: PathBuf,
        reason: NotCached,
    },
}

impl Outcome {
    pub fn image(&self) -> PathBuf {
        match self {
            Self::Hit(e) | Self::PeerBuilt(e) | Self::Stored(e) => e.image(),
            Self::NotCached { image, .. } => image.clone(),
        }
    }
}

/// `return` a phase's early outcome (a hit, a peer's build, a build that
/// is not cached), else go on with its value.
macro_rules! or_done {
    ($phase:expr) => {
        match $phase? {
            ControlFlow::Continue(value) => value,
            ControlFlow::Break(outcome) => return Ok(outcome),
        }
    };
}

/// Run one build request through the pipeline. Every lookup serves an
/// entry only when the inputs it recorded are the wanted ones (see
/// [`crate::tiers`]); any phase may end the run with a hit.
pub fn run(
    stages: &Stages,
    req: &BuildRequestSpec,
    target: &Target<'_>,
    cache_root: &Path,
    cx: &StageContext,
) -> Result<Outcome> {
    let outcome = build(stages, req, target, cache_root, cx)?;
    let Some(check) = &stages.verifier else {
        return Ok(outcome);
    };
    // A new build was checked before it was stored.
    let own = verify::OwnReservation {
        cpu_cap: req.cpu_cap,
        bypass: req.bypass_locks,
    };
    Ok(match outcome {
        Outcome::Hit(e) if e.metadata.verify.is_none() => Outcome::Hit(verify::check_entry(
            stages, check, &e, &own, cache_root, cx,
        )?),
        Outcome::PeerBuilt(e) if e.metadata.verify.is_none() => Outcome::PeerBuilt(
            verify::check_entry(stages, check, &e, &own, cache_root, cx)?,
        ),
        other => other,
    })
}

/// [`run`] up to the outcome, a new build boot-checked before its store.
fn build(
    stages: &Stages,
    req: &BuildRequestSpec,
    target: &Target<'_>,
    cache_root: &Path,
    cx: &StageContext,
) -> Result<Outcome> {
    let run = Run::new(stages, req, target, cache_root, cx)?;
    // Declared first, so dropped last: the key's build lock outlives the
    // scratch tree, the reservation and the tree lock.
    let mut key = KeyState::default();
    or_done!(run.look_up_before_fetching(&mut key));
    let mut tree = run.acquire()?;
    or_done!(run.look_up_before_reserving(&tree, &mut key));
    let reservation = run.reserve()?;
    let _tree_lock = or_done!(run.lock_and_look_again(&mut tree, &mut key));
    cx.cancel.check()?;
    // make's whole output, from here on, also goes to the build log.
    let mut log = BuildLog::start(cache_root)?;
    let configured = run.configure(&mut tree, &reservation, &mut log)?;
    let derived = or_done!(run.look_up_after_configuring(&tree, &configured, &key));
    let built = run.build(&mut tree, &reservation, &configured, &mut log)?;
    let cacheable = or_done!(run.check_cacheable(&tree, derived, &configured, &built));
    let entry = run.store(&tree, &configured, &built, cacheable, &reservation, log)?;
    drop(reservation);
    drop(key);
    Ok(Outcome::Stored(entry))
}

/// One request's fixed parts, shared by every phase.
struct Run<'a> {
    stages: &'a Stages,
    req: &'a BuildRequestSpec,
    target: &'a Target<'a>,
    root: &'a Path,
    cx: &'a StageContext,
    plan: BuildPlan,
    keyer: Keyer,
    /// The source a keyable resolution describes, before it is fetched.
    known: Option<AcquiredSource>,
}

/// What the lookups so far established about the key.
#[derive(Default)]
struct KeyState {
    /// The key last looked up (and missed).
    looked_up: Option<DerivedKey>,
    /// The key's fleet build lease (`lease`), if a remote tier gave one;
    /// released (dropped) before the local lock.
    lease: Option<lease::FleetLease>,
    /// The key's build lock, once taken (`build_lock`).
    lock: Option<FileLock>,
}

/// The acquired tree and where it builds.
struct Tree<'a> {
    source: AcquiredSource,
    scratch: ScratchGuard<'a>,
    build_dir: PathBuf,
}

/// What the build phase produced.
struct Built {
    output: BuildOutput,
    took: std::time::Duration,
}

/// A build that may be stored: its key and its `.config` digest.
struct Cacheable {
    derived: DerivedKey,
    config_sha256: String,
}

impl<'a> Run<'a> {
    /// Validate the variant, profile and fragments before touching anything.
    fn new(
        stages: &'a Stages,
        req: &'a BuildRequestSpec,
        target: &'a Target<'a>,
        root: &'a Path,
        cx: &'a StageContext,
    ) -> Result<Self> {
        let plan = stages.builder.stage.plan(&req.variant, cx)?;
        if req.output.is_some() && !stages.builder.stage.builds_out_of_tree() {
            return Err(ktstr_sdk::StageError::invalid_input(format!(
                "--output: the {} builder does not build out of tree",
                stages.builder.name
            ))
            .with_hint("drop --output, or use the built-in kbuild builder"));
        }
        let keyer = Keyer {
            root: root.to_path_buf(),
            arch: plan.arch.name,
            builder: plan.components.clone(),
            declared: stages.configurer.stage.identity(&req.configure)?,
        };
        Ok(Self {
            stages,
            req,
            target,
            root,
            cx,
            plan,
            keyer,
            known: pre_acquire_source(&target.resolved),
        })
    }

    /// Look `derived` up; on a miss, explain it if asked (`dot_config`:
    /// the `.config` a local tree's key was derived from).
    fn look_up(
        &self,
        derived: &DerivedKey,
        dot_config: Option<&Path>,
    ) -> Result<Option<CacheEntry>> {
        let found = self.stages.tiers.lookup(derived, self.cx)?;
        if found.is_none() && self.req.explain {
            explain::miss(self.stages, derived, dot_config, self.cx);
        }
        Ok(found)
    }

    /// Look the key up again after waiting for a peer; a hit is the peer's.
    fn look_up_after_waiting(&self, derived: &DerivedKey) -> Result<ControlFlow<Outcome>> {
        match self.stages.tiers.lookup(derived, self.cx)? {
            Some(entry) => {
                self.cx.progress.note(&format!(
                    "a concurrent build cached {} while we waited; not rebuilding",
                    derived.key
                ));
                Ok(ControlFlow::Break(Outcome::PeerBuilt(entry)))
            }
            None => Ok(ControlFlow::Continue(())),
        }
    }

    /// Take the key's build lock (`build_lock`); a peer that held it may
    /// have built the kernel.
    fn take_turn(&self, key: &mut KeyState) -> Result<ControlFlow<Outcome>> {
        match build_lock::take_turn(self.stages, self.root, key.looked_up.as_ref(), self.cx)? {
            build_lock::Turn::PeerBuilt(entry) => {
                Ok(ControlFlow::Break(Outcome::PeerBuilt(*entry)))
            }
            build_lock::Turn::Build(held) => {
                key.lock = held;
                // Our machine's turn: now the fleet's (`lease`).
                if key.lock.is_some()
                    && let Some(derived) = &key.looked_up
                {
                    match lease::take(self.stages, derived, self.cx)? {
                        lease::Leased::Held(l) => key.lease = Some(l),
                        lease::Leased::PeerBuilt(e) => {
                            return Ok(ControlFlow::Break(Outcome::PeerBuilt(*e)));
                        }
                        lease::Leased::Without => {}
                    }
                }
                Ok(ControlFlow::Continue(()))
            }
        }
    }

    /// A resolution that carries its identity (an exact release, a tarball
    /// digest, a commit the mirror knows) is keyed and looked up before
    /// anything is downloaded; on a miss its build lock is taken.
    fn look_up_before_fetching(&self, key: &mut KeyState) -> Result<ControlFlow<Outcome>> {
        if let Some(known) = &self.known
            && !self.req.force
        {
            let derived = self.keyer.declared_key(known);
            if let Some(entry) = self.look_up(&derived, None)? {
                return Ok(ControlFlow::Break(Outcome::Hit(entry)));
            }
            key.looked_up = Some(derived);
        }
        self.take_turn(key)
    }

    /// Fetch (or find) the tree. A downloaded tree keeps the identity and
    /// version it was resolved to.
    fn acquire(&self) -> Result<Tree<'a>> {
        for stale in ktstr_sdk::scratch::sweep_dead(self.root) {
            tracing::info!("removed {} left by a dead ktstr", stale.display());
        }
        let spec = &self.target.resolved.spec;
        let acquired = self.target.acquirer.stage.acquire(spec, self.cx);
        let mut source = crate::spec_claim::name_spec(&self.req.spec, acquired)?;
        let scratch = ScratchGuard::new(self.root, &source, self.req.keep_source, self.cx);
        if let Some(known) = &self.known {
            if source.version.is_some() && source.version != known.version {
                self.cx.progress.warn(&format!(
                    "{} resolved to kernel {} but the tree says {}; keying it as resolved",
                    spec.raw,
                    known.version.as_deref().unwrap_or("?"),
                    source.version.as_deref().unwrap_or("?")
                ));
            }
            source.identity = known.identity.clone();
            source.version = known.version.clone();
        }
        let build_dir = build_dir_for(&source.source_dir, self.req.output.as_deref())?;
        Ok(Tree {
            source,
            scratch,
            build_dir,
        })
    }

    /// If the key is knowable now without configuring (a fresh tree, or a
    /// local tree whose `.config` already carries the request), look it up.
    /// A downloaded tree's builds then queue on its key's lock; a local
    /// tree's on the tree lock (see [`Self::lock_and_look_again`]).
    fn look_up_before_reserving(
        &self,
        tree: &Tree<'_>,
        key: &mut KeyState,
    ) -> Result<ControlFlow<Outcome>> {
        let req = self.req;
        let source = &tree.source;
        if key.looked_up.is_none() && !req.force && !req.clean {
            let snapshot =
                ConfigSnapshot::take(self.stages, source, &tree.build_dir, &req.configure)?;
            match self.keyer.current(source, &tree.build_dir, &snapshot) {
                Some(derived) => {
                    let dot_config = tree.build_dir.join(".config");
                    if let Some(entry) = self.look_up(&derived, Some(&dot_config))? {
                        return Ok(ControlFlow::Break(Outcome::Hit(entry)));
                    }
                    key.looked_up = Some(derived);
                }
                None if req.explain => self.cx.progress.note(if source.is_dirty {
                    "explain: the tree has changes its identity does not capture; it is never cached"
                } else {
                    "explain: the tree's .config does not carry this request yet; the key is known \
                     only after configuring"
                }),
                None => {}
            }
        }
        if key.lock.is_none()
            && !source.is_local
            && let ControlFlow::Break(peer) = self.take_turn(key)?
        {
            return Ok(ControlFlow::Break(peer));
        }
        if req.clean && !source.is_local {
            self.cx
                .progress
                .note("--clean only applies to local trees; downloaded sources start clean");
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Reserve CPUs (the reserver may wait for them). A bad cache root
    /// fails first, not after a long build.
    fn reserve(&self) -> Result<Reservation> {
        paths::ensure_root(self.root)?;
        if self.req.bypass_locks {
            self.cx
                .progress
                .note("KTSTR_BYPASS_LLC_LOCKS is set: no CPU reservation");
            return Ok(bypass_reservation());
        }
        self.stages.reserver.stage.reserve(
            &ReserveRequest {
                cpu_cap: self.req.cpu_cap,
            },
            self.cx,
        )
    }

    /// Lock a local tree's build directory (an out-of-tree build writes
    /// only that), then, since waiting for CPUs or the lock is waiting
    /// too, re-probe the tree and look the key up again: a peer may have
    /// built it, or the tree may have moved on. A downloaded tree's key
    /// lock is held already; it is only looked up again.
    fn lock_and_look_again(
        &self,
        tree: &mut Tree<'_>,
        key: &mut KeyState,
    ) -> Result<ControlFlow<Outcome, Option<FileLock>>> {
        let req = self.req;
        if !tree.source.is_local {
            if !req.force
                && let Some(derived) = &key.looked_up
                && let ControlFlow::Break(peer) = self.look_up_after_waiting(derived)?
            {
                return Ok(ControlFlow::Break(peer));
            }
            return Ok(ControlFlow::Continue(None));
        }
        let held = lock_tree(self.root, &tree.build_dir, self.cx)?;
        // On this, the miss path, the probe's cost is noise.
        let fresh = (self.target.acquirer.stage)
            .probe(&tree.source, self.cx)
            .map_err(|e| e.to_string());
        let state = MidWaitState::classify(&tree.source, fresh);
        if let Some(msg) = state.diagnostic() {
            self.cx.progress.note(&msg);
        }
        match state {
            MidWaitState::Clean if !req.force && !req.clean => {
                let snapshot = ConfigSnapshot::take(
                    self.stages,
                    &tree.source,
                    &tree.build_dir,
                    &req.configure,
                )?;
                if let Some(derived) = self.keyer.current(&tree.source, &tree.build_dir, &snapshot)
                    && let ControlFlow::Break(peer) = self.look_up_after_waiting(&derived)?
                {
                    return Ok(ControlFlow::Break(peer));
                }
            }
            MidWaitState::DirtyEdit | MidWaitState::ProbeFailed(_) => tree.source.is_dirty = true,
            MidWaitState::HeadAdvanced { head } => {
                let source = &mut tree.source;
                source.identity.short = Some(ktstr_sdk::source::short_id(&head).to_string());
                source.identity.id = head;
                key.looked_up = None;
            }
            _ => {}
        }
        Ok(ControlFlow::Continue(Some(held)))
    }

    /// `--clean`, then configure (see `configure`). A failure keeps the
    /// build log and the scratch tree for the reproduce command.
    fn configure(
        &self,
        tree: &mut Tree<'_>,
        reservation: &Reservation,
        log: &mut BuildLog,
    ) -> Result<Configured> {
        let lcx = log.context(self.cx);
        if self.req.clean && tree.source.is_local && tree.build_dir.join("Makefile").is_file() {
            self.stages.builder.stage.clean(&tree.build_dir, &lcx)?;
        }
        configure::run(
            self.stages,
            self.req,
            &self.plan,
            &self.keyer,
            &tree.source,
            &tree.build_dir,
            reservation,
            &lcx,
        )
        .map_err(|e| failure::keep_evidence(e, log, &mut tree.scratch))
    }

    /// Configuring may have produced a `.config` some earlier build used
    /// (another tree that built the same commit): look that key up. Returns
    /// the key the build will be stored under, if it has one.
    fn look_up_after_configuring(
        &self,
        tree: &Tree<'_>,
        configured: &Configured,
        key: &KeyState,
    ) -> Result<ControlFlow<Outcome, Option<DerivedKey>>> {
        let derived = (self.keyer).current(&tree.source, &tree.build_dir, &configured.snapshot);
        if let Some(d) = &derived
            && !self.req.force
            && key.looked_up.as_ref().map(|l| &l.key) != Some(&d.key)
            && let Some(entry) = self.look_up(d, Some(&tree.build_dir.join(".config")))?
        {
            return Ok(ControlFlow::Break(Outcome::Hit(entry)));
        }
        Ok(ControlFlow::Continue(derived))
    }

    /// Build, then validate the `.config` again (make may rewrite it).
    fn build(
        &self,
        tree: &mut Tree<'_>,
        reservation: &Reservation,
        configured: &Configured,
        log: &mut BuildLog,
    ) -> Result<Built> {
        self.cx.cancel.check()?;
        let lcx = log.context(self.cx);
        let started = std::time::Instant::now();
        let output = (self.stages.builder.stage)
            .build(
                &BuildRequest {
                    tree: tree.source.source_dir.clone(),
                    make_jobs: reservation.make_jobs,
                    sandbox_procs: reservation.sandbox_procs.clone(),
                    compile_commands: tree.source.is_local,
                    variant: self.req.variant.clone(),
                    output: self.req.output.clone(),
                },
                &lcx,
            )
            .map_err(|e| failure::keep_evidence(e, log, &mut tree.scratch))?;
        let took = started.elapsed();
        (self.stages.configurer.stage).validate(&tree.build_dir, &configured.request)?;
        Ok(Built { output, took })
    }

    /// Whether the build may be stored: a dirty tree's never is, and a
    /// local tree must still match its key (no commit or edit during make,
    /// no `.config` make rewrote: syncconfig).
    fn check_cacheable(
        &self,
        tree: &Tree<'_>,
        derived: Option<DerivedKey>,
        configured: &Configured,
        built: &Built,
    ) -> Result<ControlFlow<Outcome, Cacheable>> {
        let source = &tree.source;
        let not_cached = |reason| {
            ControlFlow::Break(Outcome::NotCached {
                tree: source.source_dir.clone(),
                image: built.output.image.clone(),
                reason,
            })
        };
        let Some(derived) = derived.filter(|_| !source.is_dirty) else {
            return Ok(not_cached(NotCached::Dirty {
                is_git: source.is_git,
            }));
        };
        let after =
            ConfigSnapshot::take(self.stages, source, &tree.build_dir, &configured.request)?;
        if source.is_local
            && ((self.keyer.current(source, &tree.build_dir, &after))
                .is_none_or(|now| now.key != derived.key)
                || probe_changed(self.target.acquirer, source, self.cx)?)
        {
            return Ok(not_cached(NotCached::ChangedDuringBuild));
        }
        self.cx.cancel.check()?;
        let config_sha256 = match after.sha256() {
            Some(sha) => sha.to_string(),
            None => keyer::dot_config_sha256(&tree.build_dir)?,
        };
        Ok(ControlFlow::Continue(Cacheable {
            derived,
            config_sha256,
        }))
    }

    /// Describe the entry, with the evidence gathered, and store it in
    /// every tier (`store`).
    fn store(
        &self,
        tree: &Tree<'_>,
        configured: &Configured,
        built: &Built,
        cacheable: Cacheable,
        reservation: &Reservation,
        log: BuildLog,
    ) -> Result<CacheEntry> {
        let summary = log.finish(self.cx);
        let mut evidence = evidence::Evidence::default();
        evidence.durations.configure_ms = configured.took.map(evidence::millis);
        evidence.durations.build_ms = Some(evidence::millis(built.took));
        evidence.kernelrelease = evidence::kernelrelease(&tree.build_dir);
        evidence.warnings = summary.warnings;
        evidence.errors = summary.errors;
        evidence.make_command = built.output.command.clone();
        evidence.declared = self.keyer.declared.clone();
        evidence.ktstr_command =
            evidence::ktstr_command(&self.target.resolved.spec.raw, &tree.source, self.req);
        let mut metadata = store::metadata_for(
            &tree.source,
            &cacheable.derived,
            &configured.request,
            &cacheable.config_sha256,
            self.plan.arch.image_name,
            self.plan.arch.name,
            &evidence,
        );
        let unchecked = match &self.stages.verifier {
            Some(check) => {
                let fresh = verify::Fresh {
                    image: &built.output.image,
                    vmlinux: built.output.vmlinux.as_deref(),
                    config: tree.build_dir.join(".config"),
                    arch: self.plan.arch.name,
                    kernelrelease: evidence.kernelrelease.clone(),
                };
                let scratch = ktstr_sdk::scratch::Scratch::stage(self.root, "verify")?;
                match check.check(fresh.request(reservation, scratch.path()), self.cx) {
                    Ok(record) => {
                        metadata.verify = Some(record);
                        None
                    }
                    Err(e) if e.kind == ktstr_sdk::ErrorKind::Cancelled => return Err(e),
                    // The build is good and stays cached; the check can be
                    // run again once the verifier works.
                    Err(e) => Some(e),
                }
            }
            None => None,
        };
        let entry = store::store_all(
            self.stages,
            &cacheable.derived,
            &store::Built {
                output: &built.output,
                config: &tree.build_dir.join(".config"),
                log: summary.compressed.as_deref(),
                metadata: &metadata,
                objcopy: &self.plan.objcopy,
            },
            self.root,
            self.cx,
        )?;
        match unchecked {
            None => Ok(entry),
            Some(e) => {
                let hint = format!(
                    "{}; then `ktstr kernel verify-boot {}` checks the cached kernel",
                    e.hint.as_deref().unwrap_or("fix the verifier"),
                    entry.key
                );
                Err(e
                    .context(format!("cached {} without a boot check", entry.key))
                    .with_hint(hint))
            }
        }
    }
}

/// Hold the tree's build lock, saying whom we wait for.
fn lock_tree(root: &Path, tree: &Path, cx: &StageContext) -> Result<FileLock> {
    let path = paths::source_lock(root, tree);
    let (held, _) = lock::lock_reporting(&path, LockMode::Exclusive, |holders| {
        cx.progress.note(&format!(
            "source tree {} is locked by another build; waiting ({})",
            tree.display(),
            lock::describe_holders(holders)
        ));
    })?;
    // The file's name is a hash; its content says which tree (`ktstr locks`).
    if let Err(e) = std::fs::write(&path, format!("{}\n", tree.display())) {
        tracing::debug!("cannot describe {}: {e}", path.display());
    }
    // Every process of the build holds it: see ktstr_sdk::runner.
    Ok(held.inherit_into_commands())
}

/// Whether a re-probe shows the local tree changed (a commit or an edit)
/// while make ran. A failed re-probe warns and trusts the build.
fn probe_changed(
    acquirer: &Named<dyn SourceAcquirer>,
    source: &AcquiredSource,
    cx: &StageContext,
) -> Result<bool> {
    match acquirer.stage.probe(source, cx) {
        Ok(Some(fresh)) => Ok(changed_during_build(source, &fresh)),
        Ok(None) => Ok(false),
        Err(e) => {
            cx.progress.warn(&format!(
                "could not re-check the source tree after the build ({e}); caching anyway"
            ));
            Ok(false)
        }
    }
}

/// The source a keyable resolution describes, for deriving its key
/// before anything is fetched.
fn pre_acquire_source(resolved: &Resolved) -> Option<AcquiredSource> {
    if !resolved.is_keyable() {
        return None;
    }
    Some(AcquiredSource {
        source_dir: PathBuf::new(),
        identity: resolved.identity.clone()?,
        version: resolved.version.clone(),
        is_temp: true,
        is_dirty: false,
        is_git: false,
        is_local: false,
    })
}

/// Where `.config` and the objects go: `--output` (created if missing;
/// never the source tree itself), else the tree.
fn build_dir_for(tree: &Path, output: Option<&Path>) -> Result<PathBuf> {
    let Some(out) = output else {
        return Ok(tree.to_path_buf());
    };
    use ktstr_sdk::error::IoResultExt;
    std::fs::create_dir_all(out).at("--output: cannot create", out)?;
    let out = std::fs::canonicalize(out).at("--output: cannot resolve", out)?;
    if std::fs::canonicalize(tree).is_ok_and(|t| t == out) {
        return Err(ktstr_sdk::StageError::invalid_input(format!(
            "--output {}: is the source tree itself",
            out.display()
        ))
        .with_hint("name a directory of its own, e.g. --output ../build-linux"));
    }
    Ok(out)
}

/// What a bypassed reservation amounts to: every allowed CPU, no pinning.
fn bypass_reservation() -> ktstr_sdk::reserve::Reservation {
    ktstr_sdk::reserve::Reservation {
        cpus: Vec::new(),
        mems: Vec::new(),
        make_jobs: ktstr_sdk::reserve::allowed_cpu_count(),
        sandbox_procs: None,
        guard: None,
    }
}

/// Read `--extra-kconfig` files; the error names the file.
pub fn read_fragment(path: &Path) -> Result<ktstr_sdk::configure::Fragment> {
    use ktstr_sdk::fsread::{Follow, SMALL_FILE_LIMIT, read_text};
    let content = read_text(
        path,
        "--extra-kconfig fragment",
        SMALL_FILE_LIMIT,
        Follow::Yes,
    )
    .map_err(|e| e.with_hint("pass a readable kconfig fragment file (lines like CONFIG_FOO=y)"))?;
    Ok(ktstr_sdk::configure::Fragment {
        name: path.display().to_string(),
        content,
    })
}
