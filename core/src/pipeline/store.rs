//! After a successful build: shrink vmlinux, describe the entry, store it.
//!
//! vmlinux carries hundreds of MiB of DWARF that nothing downstream reads;
//! the symbol table and `.BTF` (what BPF schedulers and tracing need) stay.
//! The stripped copy is written to a scratch directory, never over the
//! user's tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ktstr_sdk::build::BuildOutput;
use ktstr_sdk::cache::{
    Artifacts, CacheEntry, FragmentInfo, KeyComponent, Metadata, SourceInfo, StripInfo,
};
use ktstr_sdk::configure::ConfigureRequest;
use ktstr_sdk::context::{CommandSpec, StageContext};
use ktstr_sdk::error::IoResultExt;
use ktstr_sdk::source::AcquiredSource;
use ktstr_sdk::{Result, StageError};

use crate::identity::DerivedKey;
use crate::registry::Stages;

const STRIP_TOOL: &str = "objcopy";
const STRIP_ARGS: &[&str] = &["--strip-debug"];

/// Strip `vmlinux` into `scratch`. Without objcopy the original is kept,
/// with a warning: a bigger entry beats no entry.
pub fn strip_vmlinux(
    vmlinux: &Path,
    scratch: &Path,
    cx: &StageContext,
) -> Result<(PathBuf, Option<StripInfo>)> {
    let out = scratch.join(ktstr_sdk::cache::VMLINUX_NAME);
    let spec = CommandSpec::new(STRIP_TOOL)
        .args(STRIP_ARGS.iter().copied())
        .arg(vmlinux.display().to_string())
        .arg(out.display().to_string());
    match cx.runner.capture(&spec) {
        Ok(o) if o.code == Some(0) => {
            let original_size = std::fs::metadata(vmlinux).at("stat", vmlinux)?.len();
            let stripped_size = std::fs::metadata(&out).at("stat", &out)?.len();
            Ok((
                out,
                Some(StripInfo {
                    tool: format!("{STRIP_TOOL} {}", STRIP_ARGS.join(" ")),
                    original_size,
                    stripped_size,
                }),
            ))
        }
        Ok(o) => Err(StageError::command(format!(
            "{} failed on {} (exit {:?})",
            spec.display(),
            vmlinux.display(),
            o.code
        ))
        .with_hint(o.stderr.trim().to_string())),
        Err(e) => {
            cx.progress.warn(&format!(
                "cannot strip vmlinux ({e}); caching it unstripped (install binutils to shrink entries)"
            ));
            Ok((vmlinux.to_path_buf(), None))
        }
    }
}

fn component<'a>(components: &'a [KeyComponent], name: &str) -> &'a str {
    components
        .iter()
        .find(|c| c.name == name)
        .map_or("", |c| c.value.as_str())
}

/// Describe the entry; artifact digests are filled in by the backend.
pub fn metadata_for(
    source: &AcquiredSource,
    derived: &DerivedKey,
    request: &ConfigureRequest,
    config_sha256: &str,
    image_name: &str,
    arch: &str,
) -> Metadata {
    Metadata {
        schema: Metadata::SCHEMA,
        key: derived.key.clone(),
        source: SourceInfo {
            kind: source.identity.kind.clone(),
            identity: source.identity.id.clone(),
            path: source
                .is_local
                .then(|| source.source_dir.display().to_string()),
        },
        version: source.version.clone(),
        arch: arch.to_string(),
        image_name: image_name.to_string(),
        profile: request.profile.clone(),
        config_sha256: config_sha256.to_string(),
        fragments: request
            .fragments
            .iter()
            .map(|f| FragmentInfo {
                name: f.name.clone(),
                sha256: ktstr_sdk::hash::sha256_hex(f.content.as_bytes()),
            })
            .collect(),
        builder: component(&derived.components, "builder").to_string(),
        toolchain: component(&derived.components, "toolchain").to_string(),
        built_at: ktstr_sdk::now_rfc3339(),
        components: derived.components.clone(),
        artifacts: BTreeMap::new(),
        strip: None,
        origin: None,
    }
}

/// Store into the local tier (its failure is an error: the user asked for
/// a cached kernel) and then every writable remote tier (failures warn).
pub fn store_all(
    stages: &Stages,
    derived: &DerivedKey,
    output: &BuildOutput,
    config: &Path,
    metadata: &Metadata,
    cx: &StageContext,
) -> Result<CacheEntry> {
    let scratch = tempfile::tempdir()
        .map_err(|e| StageError::io("create scratch directory in", &std::env::temp_dir(), e))?;
    let (vmlinux, strip) = match &output.vmlinux {
        Some(v) => {
            let (path, info) = strip_vmlinux(v, scratch.path(), cx)?;
            (Some(path), info)
        }
        None => (None, None),
    };
    let mut metadata = metadata.clone();
    metadata.strip = strip;
    let artifacts = Artifacts {
        image: output.image.clone(),
        vmlinux,
        config: config.to_path_buf(),
    };
    let local = stages.local_cache();
    let entry = local
        .stage
        .store(&derived.key, &artifacts, &metadata)
        .map_err(|e| {
            e.context(format!(
                "storing {} in the {}",
                derived.key,
                local.stage.describe()
            ))
        })?;
    for tier in stages.live_remotes() {
        if tier.stage.capabilities().read_only {
            continue;
        }
        if let Err(e) = tier.stage.store(&derived.key, &artifacts, &entry.metadata) {
            crate::report::warn_error(
                &*cx.progress,
                &format!("{}: could not store {}: ", tier.name, derived.key),
                &e,
            );
        }
    }
    Ok(entry)
}
