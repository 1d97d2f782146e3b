//! After a successful build: shrink vmlinux, describe the entry, store it.
//!
//! vmlinux carries hundreds of MiB of DWARF that nothing downstream reads;
//! the symbol table and `.BTF` (what BPF schedulers and tracing need) stay.
//! The stripped copy is written to a scratch directory, never over the
//! user's tree: `<root>/scratch/strip-<pid>-<n>.part`, under the cache root
//! (not `$TMPDIR`), removed when the store ends and swept by the next build
//! if ktstr was killed (the pid in its name says whose it is).
//!
//! An interrupt (SIGINT, SIGTERM, SIGHUP) during strip or store stores
//! nothing: the run is checked for cancellation after the strip, before the
//! local store and after it (an entry installed while the signal arrived is
//! removed again), and an objcopy killed by the signal is a cancellation,
//! not a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ktstr_sdk::build::BuildOutput;
use ktstr_sdk::cache::{
    Artifacts, BuildRecord, CacheEntry, FragmentInfo, KeyComponent, Metadata, Reproducer,
    SourceInfo, StripInfo,
};
use ktstr_sdk::configure::ConfigureRequest;
use ktstr_sdk::context::{CommandSpec, StageContext};
use ktstr_sdk::error::IoResultExt;
use ktstr_sdk::source::AcquiredSource;
use ktstr_sdk::{Result, StageError};

use super::evidence::{self, Evidence};
use crate::identity::DerivedKey;
use crate::registry::Stages;

const STRIP_ARGS: &[&str] = &["--strip-debug"];

/// Strip `vmlinux` into `scratch` with `objcopy` (the build's, which reads
/// its arch's ELF). Without objcopy the original is kept, with a warning:
/// a bigger entry beats no entry.
pub fn strip_vmlinux(
    vmlinux: &Path,
    scratch: &Path,
    objcopy: &str,
    cx: &StageContext,
) -> Result<(PathBuf, Option<StripInfo>)> {
    let started = std::time::Instant::now();
    let out = scratch.join(ktstr_sdk::cache::VMLINUX_NAME);
    let spec = CommandSpec::new(objcopy)
        .args(STRIP_ARGS.iter().copied())
        .arg(vmlinux.display().to_string())
        .arg(out.display().to_string());
    let captured = cx.runner.capture(&spec);
    // A terminal's Ctrl-C reaches objcopy too: that is an interrupt.
    cx.cancel.check()?;
    match captured {
        Ok(o) if o.code == Some(0) => {
            let original_size = std::fs::metadata(vmlinux).at("stat", vmlinux)?.len();
            let stripped_size = std::fs::metadata(&out).at("stat", &out)?.len();
            Ok((
                out,
                Some(StripInfo {
                    tool: format!("{objcopy} {}", STRIP_ARGS.join(" ")),
                    original_size,
                    stripped_size,
                    duration_ms: Some(super::evidence::millis(started.elapsed())),
                }),
            ))
        }
        Ok(o) if o.code.is_none() => Err(StageError::command(format!(
            "{} was killed by a signal while stripping {}",
            spec.display(),
            vmlinux.display()
        ))
        .with_hint("run the build again; if it recurs, check `dmesg` for the OOM killer")),
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
    evidence: &Evidence,
) -> Metadata {
    let build = BuildRecord {
        durations: evidence.durations.clone(),
        warnings: evidence.warnings,
        errors: evidence.errors,
        make_command: evidence.make_command.clone(),
        inputs: evidence::inputs(&derived.components, &evidence.declared),
        reproduce: Reproducer {
            ktstr: evidence.ktstr_command.clone(),
            make: evidence
                .make_command
                .as_deref()
                .map(evidence::make_reproducer),
        },
    };
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
        kernelrelease: evidence.kernelrelease.clone(),
        build: Some(build),
        verify: None,
    }
}

/// What a finished build hands to [`store_all`].
pub struct Built<'a> {
    pub output: &'a BuildOutput,
    /// The final `.config`.
    pub config: &'a Path,
    /// The compressed build log, if one was kept.
    pub log: Option<&'a Path>,
    pub metadata: &'a Metadata,
    /// The objcopy that reads this build's ELF (`BuildPlan::objcopy`).
    pub objcopy: &'a str,
}

/// Store into the local tier (its failure is an error: the user asked for
/// a cached kernel) and then every writable remote tier (failures warn).
pub fn store_all(
    stages: &Stages,
    derived: &DerivedKey,
    built: &Built<'_>,
    cache_root: &Path,
    cx: &StageContext,
) -> Result<CacheEntry> {
    let Built {
        output,
        config,
        log,
        metadata,
        objcopy,
    } = *built;
    let scratch = ktstr_sdk::scratch::Scratch::stage(cache_root, "strip")?;
    let (vmlinux, strip) = match &output.vmlinux {
        Some(v) => {
            let (path, info) = strip_vmlinux(v, scratch.path(), objcopy, cx)?;
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
        log: log.map(Path::to_path_buf),
    };
    stages.tiers.store(&derived.key, &artifacts, &metadata, cx)
}
