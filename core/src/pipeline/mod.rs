//! One `ktstr build`: resolve → identity → (hit?) → reserve → lock →
//! re-check → configure → build → validate → gate → store.
//!
//! The order is what makes "never build the same kernel twice" cheap:
//! the key is derived before anything is reserved or locked, so a hit
//! costs a probe, a few stats and one metadata read. Builds of one tree
//! queue on its lock, and whoever waited looks in the cache again, since
//! the peer it waited for has usually just stored the same kernel.

mod build_lock;
mod evidence;
mod failure;
mod store;
pub mod tree_state;

use std::path::{Path, PathBuf};

use ktstr_sdk::build::{BuildPlan, BuildRequest, Variant};
use ktstr_sdk::cache::{CacheEntry, Listed};
use ktstr_sdk::configure::ConfigureRequest;
use ktstr_sdk::context::StageContext;
use ktstr_sdk::lock::{self, LockMode};
use ktstr_sdk::reserve::ReserveRequest;
use ktstr_sdk::source::{AcquiredSource, KernelSpec, Resolved, SourceAcquirer};
use ktstr_sdk::{Result, paths};

use crate::identity::{self, ConfigIdentity, DerivedKey, KeyInputs};
use crate::registry::{Named, Stages};
use crate::scratch::ScratchGuard;
use crate::tree_config;
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

/// Derives keys for one request (the parts that don't change mid-run).
struct Keyer {
    root: PathBuf,
    arch: &'static str,
    builder: Vec<ktstr_sdk::cache::KeyComponent>,
    declared: Vec<ktstr_sdk::cache::KeyComponent>,
}

impl Keyer {
    fn derive(&self, source: &AcquiredSource, config: ConfigIdentity) -> DerivedKey {
        identity::derive(&KeyInputs {
            source,
            arch: self.arch,
            config,
            builder: &self.builder,
        })
    }

    /// The key of what building now would produce, if it is knowable
    /// without configuring: fresh trees always, local trees when the
    /// `.config` in their build directory already satisfies the request.
    fn current(
        &self,
        stages: &Stages,
        source: &AcquiredSource,
        build_dir: &Path,
        request: &ConfigureRequest,
    ) -> Result<Option<DerivedKey>> {
        if source.is_dirty {
            return Ok(None);
        }
        if !source.is_local {
            return Ok(Some(
                self.derive(source, ConfigIdentity::Declared(self.declared.clone())),
            ));
        }
        if !stages.configurer.stage.is_configured(build_dir, request)? {
            return Ok(None);
        }
        let sha = dot_config_sha256(build_dir)?;
        if tree_config::is_leftover(&self.root, build_dir, &sha, &self.declared) {
            return Ok(None);
        }
        Ok(Some(self.derive(source, ConfigIdentity::DotConfig(sha))))
    }
}

fn dot_config_sha256(tree: &Path) -> Result<String> {
    Ok(ktstr_sdk::hash::sha256_file(&tree.join(".config"))?.0)
}

/// Hold the tree's build lock, saying whom we wait for. Returns whether we waited.
fn lock_tree(root: &Path, tree: &Path, cx: &StageContext) -> Result<(lock::FileLock, bool)> {
    let path = paths::source_lock(root, tree);
    let held = lock::lock_reporting(&path, LockMode::Exclusive, |holders| {
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
    Ok((held.0.inherit_into_commands(), held.1))
}

/// Print why the cache missed: the nearest entry's differing inputs.
fn explain_miss(stages: &Stages, derived: &DerivedKey, cx: &StageContext) {
    let prefix = identity::prefix_of(&derived.key);
    let entries = stages.tiers.local().stage.list().unwrap_or_default();
    let nearest = entries.iter().filter_map(|l| match l {
        Listed::Ok(e) if identity::prefix_of(&e.key) == prefix => Some(e),
        _ => None,
    });
    let best = nearest.min_by_key(|e| {
        identity::explain_difference(&derived.components, &e.metadata.components).len()
    });
    match best {
        None => cx.progress.note(&format!(
            "explain: no cached entry starts with {prefix}; inputs are: {}",
            derived
                .components
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(e) => {
            cx.progress.note(&format!(
                "explain: {} missed; nearest entry {} differs in:",
                derived.key, e.key
            ));
            for line in identity::explain_difference(&derived.components, &e.metadata.components) {
                cx.progress.note(&format!("explain:   {line}"));
            }
        }
    }
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

/// Run one build request through the pipeline.
pub fn run(
    stages: &Stages,
    req: &BuildRequestSpec,
    target: &Target<'_>,
    cache_root: &Path,
    cx: &StageContext,
) -> Result<Outcome> {
    let acquirer = target.acquirer;
    // Validate the variant, profile and fragments before touching anything.
    let plan = stages.builder.stage.plan(&req.variant, cx)?;
    if req.output.is_some() && !stages.builder.stage.builds_out_of_tree() {
        return Err(ktstr_sdk::StageError::invalid_input(format!(
            "--output: the {} builder does not build out of tree",
            stages.builder.name
        ))
        .with_hint("drop --output, or use the built-in kbuild builder"));
    }
    let declared = stages.configurer.stage.identity(&req.configure)?;
    let keyer = Keyer {
        root: cache_root.to_path_buf(),
        arch: plan.arch.name,
        builder: plan.components.clone(),
        declared,
    };
    let mut looked_up: Option<DerivedKey> = None;
    let known = pre_acquire_source(&target.resolved);
    if let Some(known) = &known
        && !req.force
    {
        let derived = keyer.derive(known, ConfigIdentity::Declared(keyer.declared.clone()));
        if let Some(entry) = stages.tiers.lookup(&derived, cx)? {
            return Ok(Outcome::Hit(entry));
        }
        if req.explain {
            explain_miss(stages, &derived, cx);
        }
        looked_up = Some(derived);
    }
    let mut key_lock = match build_lock::take_turn(stages, cache_root, looked_up.as_ref(), cx)? {
        build_lock::Turn::PeerBuilt(entry) => return Ok(Outcome::PeerBuilt(*entry)),
        build_lock::Turn::Build(held) => held,
    };

    for stale in ktstr_sdk::scratch::sweep_dead(cache_root) {
        tracing::info!("removed {} left by a dead ktstr", stale.display());
    }
    let mut source =
        crate::spec_claim::name_spec(&req.spec, acquirer.stage.acquire(&target.resolved.spec, cx))?;
    let mut scratch = ScratchGuard::new(cache_root, &source, req.keep_source, cx);
    if let Some(known) = known {
        if source.version.is_some() && source.version != known.version {
            cx.progress.warn(&format!(
                "{} resolved to kernel {} but the tree says {}; keying it as resolved",
                target.resolved.spec.raw,
                known.version.as_deref().unwrap_or("?"),
                source.version.as_deref().unwrap_or("?")
            ));
        }
        source.identity = known.identity;
        source.version = known.version;
    }
    let tree = source.source_dir.clone();
    let build_dir = build_dir_for(&tree, req.output.as_deref())?;

    if looked_up.is_none() && !req.force && !req.clean {
        match keyer.current(stages, &source, &build_dir, &req.configure)? {
            Some(derived) => {
                if let Some(entry) = stages.tiers.lookup(&derived, cx)? {
                    return Ok(Outcome::Hit(entry));
                }
                if req.explain {
                    explain_miss(stages, &derived, cx);
                }
                looked_up = Some(derived);
            }
            None if req.explain => cx.progress.note(if source.is_dirty {
                "explain: the tree has changes its identity does not capture; it is never cached"
            } else {
                "explain: the tree's .config does not carry this request yet; the key is known \
                 only after configuring"
            }),
            None => {}
        }
    }
    // Builds of one local tree queue on the tree's lock below instead.
    if key_lock.is_none() && !source.is_local {
        match build_lock::take_turn(stages, cache_root, looked_up.as_ref(), cx)? {
            build_lock::Turn::PeerBuilt(entry) => return Ok(Outcome::PeerBuilt(*entry)),
            build_lock::Turn::Build(held) => key_lock = held,
        }
    }
    if req.clean && !source.is_local {
        cx.progress
            .note("--clean only applies to local trees; downloaded sources start clean");
    }

    // A bad root fails now, not after a long build.
    paths::ensure_root(cache_root)?;
    let reservation = if req.bypass_locks {
        cx.progress
            .note("KTSTR_BYPASS_LLC_LOCKS is set: no CPU reservation");
        bypass_reservation()
    } else {
        stages.reserver.stage.reserve(
            &ReserveRequest {
                cpu_cap: req.cpu_cap,
            },
            cx,
        )?
    };
    let _tree_lock = if source.is_local {
        // Waiting for CPUs (in the reserver) is waiting too: re-check the
        // tree and the cache after every wait, whichever lock it was on.
        // On this, the miss path, the probe's cost is noise. An out-of-tree
        // build writes only its build directory, so that is what it locks.
        let (held, _waited) = lock_tree(cache_root, &build_dir, cx)?;
        {
            let fresh = acquirer.stage.probe(&source, cx).map_err(|e| e.to_string());
            let state = MidWaitState::classify(&source, fresh);
            if let Some(msg) = state.diagnostic() {
                cx.progress.note(&msg);
            }
            match state {
                MidWaitState::Clean if !req.force && !req.clean => {
                    if let Some(derived) =
                        keyer.current(stages, &source, &build_dir, &req.configure)?
                        && let Some(entry) = stages.tiers.lookup(&derived, cx)?
                    {
                        cx.progress.note(&format!(
                            "a concurrent build cached {} while we waited; not rebuilding",
                            derived.key
                        ));
                        return Ok(Outcome::PeerBuilt(entry));
                    }
                }
                MidWaitState::DirtyEdit | MidWaitState::ProbeFailed(_) => source.is_dirty = true,
                MidWaitState::HeadAdvanced { head } => {
                    source.identity.short = Some(ktstr_sdk::source::short_id(&head).to_string());
                    source.identity.id = head;
                    looked_up = None;
                }
                _ => {}
            }
        }
        Some(held)
    } else {
        if !req.force
            && let Some(derived) = &looked_up
            && let Some(entry) = stages.tiers.lookup(derived, cx)?
        {
            cx.progress.note(&format!(
                "a concurrent build cached {} while we waited; not rebuilding",
                derived.key
            ));
            return Ok(Outcome::PeerBuilt(entry));
        }
        None
    };

    cx.cancel.check()?;
    // make's whole output, from here on, also goes to the build log.
    let mut log = crate::build_log::BuildLog::start(cache_root)?;
    let lcx = log.context(cx);
    let mut evidence = evidence::Evidence::default();
    if req.clean && source.is_local && build_dir.join("Makefile").is_file() {
        stages.builder.stage.clean(&build_dir, &lcx)?;
    }

    let (configure, configure_took) = configure_phase(
        stages,
        req,
        &plan,
        &source,
        &build_dir,
        &keyer.declared,
        cache_root,
        &reservation,
        &lcx,
    )
    .map_err(|e| failure::keep_evidence(e, &mut log, &mut scratch))?;
    evidence.durations.configure_ms = configure_took.map(evidence::millis);

    // Configuring may have produced a .config some earlier build used.
    let derived = keyer.current(stages, &source, &build_dir, &configure)?;
    if let Some(d) = &derived
        && !req.force
        && looked_up.as_ref().map(|l| &l.key) != Some(&d.key)
    {
        if let Some(entry) = stages.tiers.lookup(d, cx)? {
            return Ok(Outcome::Hit(entry));
        }
        if req.explain {
            explain_miss(stages, d, cx);
        }
    }

    cx.cancel.check()?;
    let started = std::time::Instant::now();
    let output = stages
        .builder
        .stage
        .build(
            &BuildRequest {
                tree: tree.clone(),
                make_jobs: reservation.make_jobs,
                sandbox_procs: reservation.sandbox_procs.clone(),
                compile_commands: source.is_local,
                variant: req.variant.clone(),
                output: req.output.clone(),
            },
            &lcx,
        )
        .map_err(|e| failure::keep_evidence(e, &mut log, &mut scratch))?;
    evidence.durations.build_ms = Some(evidence::millis(started.elapsed()));
    stages.configurer.stage.validate(&build_dir, &configure)?;

    let Some(derived) = derived.filter(|_| !source.is_dirty) else {
        return Ok(Outcome::NotCached {
            tree,
            image: output.image,
            reason: NotCached::Dirty {
                is_git: source.is_git,
            },
        });
    };
    // A local tree must still match the key it is stored under: no commit
    // or edit during make, and no `.config` make rewrote (syncconfig).
    if source.is_local
        && (keyer
            .current(stages, &source, &build_dir, &configure)?
            .is_none_or(|now| now.key != derived.key)
            || probe_changed(acquirer, &source, cx)?)
    {
        return Ok(Outcome::NotCached {
            tree,
            image: output.image,
            reason: NotCached::ChangedDuringBuild,
        });
    }

    cx.cancel.check()?;
    let config_path = build_dir.join(".config");
    let config_sha = ktstr_sdk::hash::sha256_file(&config_path)?.0;
    let summary = log.finish(cx);
    evidence.kernelrelease = evidence::kernelrelease(&build_dir);
    evidence.warnings = summary.warnings;
    evidence.errors = summary.errors;
    evidence.make_command = output.command.clone();
    evidence.declared = keyer.declared.clone();
    evidence.ktstr_command = evidence::ktstr_command(&target.resolved.spec.raw, &source, req);
    let metadata = store::metadata_for(
        &source,
        &derived,
        &configure,
        &config_sha,
        plan.arch.image_name,
        plan.arch.name,
        &evidence,
    );
    let entry = store::store_all(
        stages,
        &derived,
        &store::Built {
            output: &output,
            config: &config_path,
            log: summary.compressed.as_deref(),
            metadata: &metadata,
            objcopy: &plan.objcopy,
        },
        cache_root,
        cx,
    )?;
    drop(reservation);
    drop(key_lock);
    Ok(Outcome::Stored(entry))
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

/// Configure the build directory when its `.config` does not carry the
/// request (or is ktstr's own output for another request), then validate
/// at once. Returns the request as configured (jobs, sandbox, make args).
#[allow(clippy::too_many_arguments)]
fn configure_phase(
    stages: &Stages,
    req: &BuildRequestSpec,
    plan: &BuildPlan,
    source: &AcquiredSource,
    build_dir: &Path,
    declared: &[ktstr_sdk::cache::KeyComponent],
    cache_root: &Path,
    reservation: &ktstr_sdk::reserve::Reservation,
    cx: &StageContext,
) -> Result<(ConfigureRequest, Option<std::time::Duration>)> {
    let mut configure = req.configure.clone();
    configure.make_jobs = reservation.make_jobs;
    configure.sandbox_procs = reservation.sandbox_procs.clone();
    configure.make_args = plan.make_args.clone();
    configure.source_dir = req.output.as_ref().map(|_| source.source_dir.clone());
    configure.reset = source.is_local
        && !req.clean
        && dot_config_sha256(build_dir)
            .is_ok_and(|sha| tree_config::is_leftover(cache_root, build_dir, &sha, declared));
    if configure.reset {
        cx.progress.note(&format!(
            "{}/.config was written by ktstr for another profile or fragments; configuring \
             from the {} profile's base (kconfig keeps the old one as .config.old)",
            build_dir.display(),
            configure.profile
        ));
    }
    let mut took = None;
    if configure.reset
        || !stages
            .configurer
            .stage
            .is_configured(build_dir, &configure)?
    {
        let started = std::time::Instant::now();
        stages
            .configurer
            .stage
            .configure(build_dir, &configure, cx)?;
        took = Some(started.elapsed());
        // A required symbol olddefconfig dropped fails now, not after the build.
        stages.configurer.stage.validate(build_dir, &configure)?;
        if source.is_local {
            let recorded = dot_config_sha256(build_dir)
                .and_then(|sha| tree_config::record(cache_root, build_dir, &sha, declared));
            if let Err(e) = recorded {
                tracing::warn!("could not record the tree's configuration: {e}");
            }
        }
    }
    Ok((configure, took))
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
