//! The cache conformance suite must be able to fail: a small directory
//! backend passes it, and each deliberately broken variant of it fails the
//! rule it breaks, with a message naming that rule.

use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ktstr_sdk::cache::{
    ArtifactInfo, Artifacts, CONFIG_NAME, CacheBackend, CacheEntry, CacheKey, Capabilities,
    LOG_NAME, Listed, METADATA_NAME, Metadata, Staging, VMLINUX_NAME,
};
use ktstr_sdk::conformance::cache::{self, Fixture, Options, Outcome, Rule};
use ktstr_sdk::context::StageContext;
use ktstr_sdk::error::{ErrorKind, IoResultExt, Result, StageError};
use ktstr_sdk::lock::{self, LockMode};

/// One way the fixture backend breaks the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    /// Writes straight into the entry, metadata first: a failed or
    /// concurrent store shows a partial entry.
    InPlace,
    /// Claims read_only but writes anyway.
    IgnoresReadOnly,
    /// Serves entries without checking their files.
    NoChecks,
    /// Lists in directory order.
    Unsorted,
    /// `remove` always says it removed something.
    RemoveLies,
    /// Does not keep the build log.
    ForgetsLog,
    /// Copies at most 1 MiB of a file.
    Truncates,
    /// Stores whatever `cx.cancel` says.
    IgnoresCancel,
}

/// A directory cache: `<root>/kernels/<key>/`, staged in `<root>/tmp`,
/// flock per key (readers shared, writers exclusive).
struct DirCache {
    root: PathBuf,
    read_only: bool,
    flaw: Flaw,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl DirCache {
    fn entry(&self, key: &CacheKey) -> PathBuf {
        self.root.join("kernels").join(key.as_str())
    }

    fn lock(&self, key: &CacheKey, mode: LockMode) -> Result<Option<lock::FileLock>> {
        if self.flaw == Flaw::InPlace {
            return Ok(None);
        }
        lock::lock(&self.root.join("locks").join(format!("{key}.lock")), mode).map(Some)
    }

    fn refuse(&self, what: &str) -> Result<()> {
        if self.read_only && self.flaw != Flaw::IgnoresReadOnly {
            return Err(
                StageError::new(ErrorKind::Unsupported, format!("{what}: read-only"))
                    .with_hint("open it writable"),
            );
        }
        Ok(())
    }

    fn read(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let dir = self.entry(key);
        let meta = dir.join(METADATA_NAME);
        let text = match std::fs::read(&meta) {
            Ok(t) => t,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
            Err(e) => return Err(StageError::io("read", &meta, e)),
        };
        let metadata: Metadata = serde_json::from_slice(&text)
            .map_err(|e| StageError::corrupt(format!("{key}: bad metadata: {e}")))?;
        if self.flaw != Flaw::NoChecks {
            for (name, info) in &metadata.artifacts {
                let len = std::fs::metadata(dir.join(name)).map(|m| m.len()).ok();
                if len != Some(info.size) {
                    return Err(StageError::corrupt(format!("{key}: {name} is damaged")));
                }
            }
        }
        Ok(Some(CacheEntry {
            key: key.clone(),
            dir,
            metadata,
            origin: "dir".into(),
            location: None,
            last_used: None,
        }))
    }

    fn copy(&self, src: &Path, dest: &Path) -> Result<ArtifactInfo> {
        if self.flaw == Flaw::Truncates {
            let mut from = std::fs::File::open(src).at("open", src)?;
            let mut to = std::fs::File::create(dest).at("create", dest)?;
            std::io::copy(&mut std::io::Read::take(&mut from, 1 << 20), &mut to).at("copy", src)?;
        } else {
            std::fs::copy(src, dest).at("copy", src)?;
        }
        let (sha256, size) = ktstr_sdk::hash::sha256_file(dest)?;
        Ok(ArtifactInfo { sha256, size })
    }

    /// Write the entry's files into `dir`, metadata first when `in_place`.
    fn fill(&self, dir: &Path, artifacts: &Artifacts, metadata: &Metadata) -> Result<Metadata> {
        std::fs::create_dir_all(dir).at("create", dir)?;
        let mut files = vec![(metadata.image_name.clone(), &artifacts.image)];
        files.extend(
            artifacts
                .vmlinux
                .iter()
                .map(|v| (VMLINUX_NAME.to_string(), v)),
        );
        files.push((CONFIG_NAME.to_string(), &artifacts.config));
        if self.flaw != Flaw::ForgetsLog {
            files.extend(artifacts.log.iter().map(|l| (LOG_NAME.to_string(), l)));
        }
        let mut stored = metadata.clone();
        stored.artifacts.clear();
        let write_meta = |m: &Metadata| {
            std::fs::write(dir.join(METADATA_NAME), serde_json::to_vec(m).unwrap()).at("write", dir)
        };
        if self.flaw == Flaw::InPlace {
            // Claims the sizes of the sources before copying them.
            for (name, src) in &files {
                let size = std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
                stored.artifacts.insert(
                    name.clone(),
                    ArtifactInfo {
                        sha256: String::new(),
                        size,
                    },
                );
            }
            write_meta(&stored)?;
            stored.artifacts.clear();
        }
        for (name, src) in files {
            stored
                .artifacts
                .insert(name.clone(), self.copy(src, &dir.join(&name))?);
            if self.flaw == Flaw::InPlace {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        write_meta(&stored)?;
        Ok(stored)
    }
}

impl DirCache {
    fn find(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        let _lock = self.lock(key, LockMode::Shared)?;
        self.read(key)
    }
}

impl CacheBackend for DirCache {
    fn lookup(&self, key: &CacheKey, _: &Staging, _: &StageContext) -> Result<Option<CacheEntry>> {
        self.find(key)
    }

    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        self.refuse(&format!("store {key}"))?;
        if self.flaw != Flaw::IgnoresCancel {
            cx.cancel.check()?;
        }
        let _lock = self.lock(key, LockMode::Exclusive)?;
        let dest = self.entry(key);
        if self.flaw == Flaw::InPlace {
            let stored = self.fill(&dest, artifacts, metadata)?;
            return Ok(CacheEntry {
                key: key.clone(),
                dir: dest,
                metadata: stored,
                origin: "dir".into(),
                location: None,
                last_used: None,
            });
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{key}-{n}"));
        let stored = match self.fill(&tmp, artifacts, metadata) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        std::fs::create_dir_all(dest.parent().unwrap()).at("create", &dest)?;
        let aside = self.root.join("tmp").join(format!("old-{key}-{n}"));
        let replacing = std::fs::rename(&dest, &aside).is_ok();
        std::fs::rename(&tmp, &dest).at("publish", &dest)?;
        if replacing {
            std::fs::remove_dir_all(&aside).at("remove", &aside)?;
        }
        Ok(CacheEntry {
            key: key.clone(),
            dir: dest,
            metadata: stored,
            origin: "dir".into(),
            location: None,
            last_used: None,
        })
    }

    fn list(&self, _: &StageContext) -> Result<Vec<Listed>> {
        let kernels = self.root.join("kernels");
        let mut rows = Vec::new();
        let mut names: Vec<String> = match std::fs::read_dir(&kernels) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == IoKind::NotFound => Vec::new(),
            Err(e) => return Err(StageError::io("list", &kernels, e)),
        };
        names.sort();
        for name in names {
            let key = CacheKey::parse(&name)?;
            match self.find(&key) {
                Ok(Some(e)) => rows.push(Listed::Ok(e)),
                Ok(None) => {}
                Err(e) => rows.push(Listed::Corrupt {
                    key: name,
                    reason: e.message,
                }),
            }
        }
        if self.flaw != Flaw::Unsorted {
            ktstr_sdk::cache::sort_newest_first(&mut rows);
        }
        Ok(rows)
    }

    fn remove(&self, key: &CacheKey, _: &StageContext) -> Result<bool> {
        self.refuse(&format!("remove {key}"))?;
        let _lock = self.lock(key, LockMode::Exclusive)?;
        let gone = match std::fs::remove_dir_all(self.entry(key)) {
            Ok(()) => true,
            Err(e) if e.kind() == IoKind::NotFound => false,
            Err(e) => return Err(StageError::io("remove", &self.entry(key), e)),
        };
        Ok(gone || self.flaw == Flaw::RemoveLies)
    }

    fn describe(&self) -> String {
        format!("dir cache at {} ({:?})", self.root.display(), self.flaw)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only,
        }
    }
}

/// Truncate the stored image to one byte.
fn damage(fx: &Fixture, key: &CacheKey) {
    let dir = fx.shared.join("kernels").join(key.as_str());
    let meta: Metadata =
        serde_json::from_slice(&std::fs::read(dir.join(METADATA_NAME)).unwrap()).unwrap();
    std::fs::write(dir.join(&meta.image_name), b"x").unwrap();
}

/// The suite's report for `flaw`, with both optional rules enabled.
fn report(flaw: Flaw, large_size: u64) -> cache::Report {
    let make = move |fx: &Fixture| -> Box<dyn CacheBackend> {
        Box::new(DirCache {
            root: fx.shared.clone(),
            read_only: false,
            flaw,
        })
    };
    let options = Options::default()
        .large_size(large_size)
        .rounds(8)
        .read_only(move |fx: &Fixture| -> Box<dyn CacheBackend> {
            Box::new(DirCache {
                root: fx.shared.clone(),
                read_only: true,
                flaw,
            })
        })
        .corrupt(damage);
    cache::check(&make, &options)
}

#[test]
fn a_correct_backend_passes_every_rule() {
    let report = report(Flaw::None, (1 << 20) + 1);
    assert!(report.broken().is_empty(), "{report}");
    for (rule, outcome) in &report.results {
        assert_eq!(*outcome, Outcome::Passed, "{rule}\n{report}");
    }
}

/// `flaw` breaks `rule`, and the report says so in words that point at it.
fn breaks(flaw: Flaw, rule: Rule, observed: &str) {
    let report = report(flaw, (1 << 20) + 1);
    let broken = report.broken();
    let Some((_, why)) = broken.iter().find(|(r, _)| *r == rule) else {
        panic!("{flaw:?} should break {rule}:\n{report}");
    };
    assert!(
        why.contains(observed),
        "{rule} observed {why:?}, expected {observed:?}"
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!("BROKEN   {rule} ({})", rule.contract())),
        "{text}"
    );
}

#[test]
fn a_store_that_shows_partial_entries_is_caught() {
    breaks(Flaw::InPlace, Rule::PartialStore, "after a failed store");
}

#[test]
fn in_place_replacement_is_caught_as_a_mix() {
    breaks(Flaw::InPlace, Rule::AtomicReplace, "replaced it");
}

#[test]
fn a_backend_ignoring_read_only_is_caught() {
    breaks(
        Flaw::IgnoresReadOnly,
        Rule::ReadOnly,
        "on the read-only instance succeeded",
    );
}

#[test]
fn serving_damaged_files_is_caught() {
    breaks(Flaw::NoChecks, Rule::Corrupt, "served the damaged entry");
}

#[test]
fn an_unsorted_listing_is_caught() {
    breaks(Flaw::Unsorted, Rule::ListOrder, "sort_newest_first order");
}

#[test]
fn remove_claiming_success_is_caught() {
    breaks(
        Flaw::RemoveLies,
        Rule::Remove,
        "second time returned Ok(true)",
    );
    breaks(
        Flaw::RemoveLies,
        Rule::Miss,
        "never stored returned Ok(true)",
    );
}

#[test]
fn a_store_that_ignores_cancellation_is_caught() {
    breaks(
        Flaw::IgnoresCancel,
        Rule::Cancellation,
        "succeeded although the run was cancelled",
    );
}

#[test]
fn a_dropped_artifact_is_caught() {
    breaks(Flaw::ForgetsLog, Rule::RoundTrip, "build.log.zst");
}

#[test]
fn a_truncated_large_file_is_caught() {
    breaks(Flaw::Truncates, Rule::LargeArtifact, "\"size\":1048577");
}

#[test]
fn run_panics_naming_the_broken_rule() {
    let make = |fx: &Fixture| -> Box<dyn CacheBackend> {
        Box::new(DirCache {
            root: fx.shared.clone(),
            read_only: false,
            flaw: Flaw::Unsorted,
        })
    };
    let panic = std::panic::catch_unwind(|| cache::run(&make, Options::default().large_size(1000)))
        .unwrap_err();
    let msg = panic.downcast_ref::<String>().unwrap();
    assert!(
        msg.starts_with("1 broken cache conformance rule(s): list-order\n"),
        "{msg}"
    );
    assert!(
        msg.contains("skipped  read-only: Options::read_only not given"),
        "{msg}"
    );
}
