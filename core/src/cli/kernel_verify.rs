//! `ktstr kernel verify-boot KEY...`: boot-check cached kernels and
//! record the verdicts, as `build --verify` does for new builds.
//!
//! `kernel verify` checks an entry's bytes against its digests; this
//! checks that the kernel boots. Each run replaces the entry's recorded
//! verdict (a new verifier, a fixed one, or a flaky machine), re-stores
//! its metadata locally and pushes it to the writable remote tiers.

use std::io::Write;

use anyhow::Result;
use ktstr_sdk::ErrorKind;
use ktstr_sdk::cache::CacheKey;
use ktstr_sdk::registry::StageKind;
use ktstr_sdk::verify::VerifyRecord;
use serde::Serialize;

use super::{BootFailed, UsageError};
use crate::pipeline::verify::{self, BootCheck, OwnReservation};
use crate::progress::LABEL;
use crate::stage_setup::{self, Overrides, Setup};

#[derive(Debug, clap::Args)]
pub struct VerifyBootArgs {
    /// Keys of local entries to check (`ktstr kernel list` shows them).
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    /// Wall-clock bound of each check (default 120s; config
    /// `verify_timeout`).
    #[arg(long, value_name = "DURATION")]
    pub verify_timeout: Option<String>,
    /// Load a plugin (a verifier, or the remote tiers to record the
    /// verdicts in); repeatable.
    #[arg(long = "plugin", value_name = "NAME|PATH")]
    pub plugins: Vec<String>,
    /// Print JSON instead of one line per key.
    #[arg(long)]
    pub json: bool,
}

/// The selected verifier (its library loaded now if it is a plugin named
/// only by `verifier = "..."`), bounded by `--verify-timeout`, else the
/// config file's `verify_timeout`, else the default. A bad flag is a usage
/// error; `asked_by` says what asked for the check.
pub(super) fn boot_check(
    flag: Option<&str>,
    setup: &mut Setup,
    asked_by: &str,
) -> Result<BootCheck> {
    let timeout = match (flag, &setup.effective.settings.verify_timeout) {
        (Some(raw), _) => verify::parse_timeout(raw, "--verify-timeout").map_err(UsageError)?,
        (None, Some(raw)) => verify::parse_timeout(raw, "config verify_timeout")?,
        (None, None) => verify::DEFAULT_TIMEOUT,
    };
    let name = setup.selection.verifier.clone();
    crate::dynamic::load_stage(StageKind::Verifier, &name, &mut setup.catalog)?;
    Ok(BootCheck::select(
        &setup.catalog,
        &setup.selection,
        timeout,
        asked_by,
    )?)
}

/// One key's result.
#[derive(Debug, Serialize)]
struct Checked {
    key: String,
    /// `passed`, `failed`, `missing` or `error` (a corrupt entry, or the
    /// verifier could not run).
    status: &'static str,
    verify: Option<VerifyRecord>,
    error: Option<String>,
}

pub fn verify_boot(args: &VerifyBootArgs) -> Result<()> {
    let mut setup = stage_setup::setup(&Overrides {
        plugins: args.plugins.clone(),
        reserver: None,
    })?;
    let check = boot_check(
        args.verify_timeout.as_deref(),
        &mut setup,
        "kernel verify-boot",
    )?;
    let keys = (args.keys.iter())
        .map(|k| CacheKey::parse(k).map_err(UsageError))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let stages = setup.stages()?;
    let (cx, progress) = super::host_context();
    let root = ktstr_sdk::paths::cache_root()?;
    let own = OwnReservation {
        cpu_cap: None,
        bypass: super::build::bypass_requested(),
    };
    let mut results = Vec::new();
    for key in keys {
        cx.cancel.check()?;
        let local = stages.tiers.local();
        let found = stages.tiers.lookup_in(local, &key, &cx);
        let checked = match found.and_then(|found| match found {
            Some(entry) => verify::check_entry(&stages, &check, &entry, &own, &root, &cx).map(Some),
            None => Ok(None),
        }) {
            Ok(None) => Checked {
                key: key.to_string(),
                status: "missing",
                verify: None,
                error: Some(format!(
                    "not in the {}; `ktstr kernel list` shows the cached keys",
                    local.stage.describe()
                )),
            },
            Ok(Some(stored)) => {
                let record = stored.metadata.verify;
                Checked {
                    key: key.to_string(),
                    status: match &record {
                        Some(r) if r.verdict.passed => "passed",
                        _ => "failed",
                    },
                    verify: record,
                    error: None,
                }
            }
            Err(e) if e.kind == ErrorKind::Cancelled => return Err(e.into()),
            // A corrupt entry, a verifier that cannot run: said, and on to
            // the next key.
            Err(e) => {
                crate::progress::suspended(|| super::report(&anyhow::Error::from(e.clone())));
                Checked {
                    key: key.to_string(),
                    status: "error",
                    verify: None,
                    error: Some(e.to_string()),
                }
            }
        };
        if !args.json {
            match (&checked.verify, checked.status) {
                (Some(record), _) => {
                    super::build::print_verdict(&format!("{}: ", checked.key), record, &progress)
                }
                // Reported as an error above.
                (None, "error") => {}
                (None, _) => progress.println(&format!(
                    "{}: {}",
                    checked.key,
                    checked.error.as_deref().unwrap_or("not checked")
                )),
            }
        }
        results.push(checked);
    }
    if args.json {
        crate::report::print_json(&results)?;
    } else {
        let mut out = std::io::stdout().lock();
        for r in &results {
            writeln!(out, "{} {}", r.key, r.status)?;
        }
    }
    let unchecked: Vec<&str> = (results.iter())
        .filter(|r| r.status == "missing" || r.status == "error")
        .map(|r| r.key.as_str())
        .collect();
    if !unchecked.is_empty() {
        anyhow::bail!(
            "{} of {} kernels could not be checked: {}",
            unchecked.len(),
            results.len(),
            unchecked.join(", ")
        );
    }
    let failed: Vec<String> = (results.iter())
        .filter(|r| r.status == "failed")
        .map(|r| r.key.clone())
        .collect();
    if !failed.is_empty() {
        return Err(BootFailed::new(failed).into());
    }
    if results.len() > 1 {
        eprintln!(
            "{LABEL}: all {} kernels passed their boot check",
            results.len()
        );
    }
    Ok(())
}
