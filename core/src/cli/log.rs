//! `ktstr kernel log KEY`: print the build log kept in a cache entry.
//!
//! The log is stored zstd-compressed (`build.log.zst`); this decompresses
//! it to stdout, so `ktstr kernel log KEY | grep warning:` works. An entry
//! without a log (stored before ktstr kept them) is an error that says so.

use anyhow::Result;
use clap::Args;
use ktstr_sdk::StageError;
use ktstr_sdk::cache::CacheKey;

use crate::stage_setup;

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The entry's key (`ktstr kernel list`).
    pub key: String,
}

pub fn run(raw: &str) -> Result<()> {
    let key = CacheKey::parse(raw).map_err(|e| {
        StageError::invalid_input(format!("{raw:?} is not a cache key: {e}"))
            .with_hint("`ktstr kernel list` shows the keys")
    })?;
    let stages = stage_setup::stages_with_plugins(&[])?;
    let local = stages.tiers.local();
    let (cx, _progress) = super::host_context();
    let Some(entry) = stages.tiers.lookup_in(local, &key, &cx)? else {
        return Err(StageError::not_found(format!(
            "{key} is not in the {}",
            local.stage.describe()
        ))
        .with_hint(
            "`ktstr kernel list` shows local entries; `ktstr cache pull KEY` fetches one from \
             a remote tier",
        )
        .into());
    };
    let Some(log) = entry.log() else {
        let rebuild = entry
            .metadata
            .build
            .as_ref()
            .map(|b| b.reproduce.ktstr.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "`ktstr build --force` with the same inputs".to_string());
        return Err(
            StageError::not_found(format!("cache entry {key} has no build log"))
                .with_hint(format!(
                    "it was stored by a ktstr that did not keep build logs, or copied from a tier \
             that did not carry one; rebuild it to get one: {rebuild}"
                ))
                .into(),
        );
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    crate::build_log::decompress_to(&log, &mut out)?;
    Ok(())
}
