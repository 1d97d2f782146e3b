//! The configure phase: give the build directory a `.config` that carries
//! the request, unless it has one already.
//!
//! A local tree's `.config` that ktstr wrote for another profile or other
//! fragments is reset to the profile's base first, so fragments of an
//! earlier request never leak into this one. Every `.config` ktstr writes
//! into a local tree is recorded (`tree_config`), which is how the next
//! run recognises it.

use std::path::Path;
use std::time::Duration;

use ktstr_sdk::Result;
use ktstr_sdk::build::BuildPlan;
use ktstr_sdk::configure::ConfigureRequest;
use ktstr_sdk::context::StageContext;
use ktstr_sdk::reserve::Reservation;
use ktstr_sdk::source::AcquiredSource;

use super::BuildRequestSpec;
use super::keyer::{ConfigSnapshot, Keyer, dot_config_sha256};
use crate::registry::Stages;
use crate::tree_config;

/// The configured request and what the phase found.
pub(super) struct Configured {
    /// The request as configured (jobs, sandbox, make args).
    pub request: ConfigureRequest,
    /// How long configuring took; `None` when the `.config` already fit.
    pub took: Option<Duration>,
    /// The `.config` as the phase left it.
    pub snapshot: ConfigSnapshot,
}

/// Configure `build_dir` when its `.config` does not carry the request (or
/// is ktstr's own output for another request), then validate at once.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    stages: &Stages,
    req: &BuildRequestSpec,
    plan: &BuildPlan,
    keyer: &Keyer,
    source: &AcquiredSource,
    build_dir: &Path,
    reservation: &Reservation,
    cx: &StageContext,
) -> Result<Configured> {
    let mut request = req.configure.clone();
    request.make_jobs = reservation.make_jobs;
    request.sandbox_procs = reservation.sandbox_procs.clone();
    request.make_args = plan.make_args.clone();
    request.source_dir = req.output.as_ref().map(|_| source.source_dir.clone());
    request.reset = source.is_local
        && !req.clean
        && dot_config_sha256(build_dir).is_ok_and(|sha| {
            tree_config::is_leftover(&keyer.root, build_dir, &sha, &keyer.declared)
        });
    if request.reset {
        cx.progress.note(&format!(
            "{}/.config was written by ktstr for another profile or fragments; configuring \
             from the {} profile's base (kconfig keeps the old one as .config.old)",
            build_dir.display(),
            request.profile
        ));
    }
    let mut took = None;
    if request.reset || !stages.configurer.stage.is_configured(build_dir, &request)? {
        let started = std::time::Instant::now();
        stages.configurer.stage.configure(build_dir, &request, cx)?;
        took = Some(started.elapsed());
        // A required symbol olddefconfig dropped fails now, not after the build.
        stages.configurer.stage.validate(build_dir, &request)?;
    }
    let snapshot = ConfigSnapshot::take(stages, source, build_dir, &request)?;
    // A local tree's snapshot always tried to read `.config`; no digest
    // means there is none to record (configure failing to write one shows
    // up at the build).
    if took.is_some()
        && let Some(sha) = snapshot.any_sha256()
        && let Err(e) = tree_config::record(&keyer.root, build_dir, sha, &keyer.declared)
    {
        tracing::warn!("could not record the tree's configuration: {e}");
    }
    Ok(Configured {
        request,
        took,
        snapshot,
    })
}
