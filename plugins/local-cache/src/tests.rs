//! Behaviour of the local cache against a real temp directory.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use ktstr_sdk::cache::{ArtifactInfo, KeyComponent, SourceInfo};
use ktstr_sdk::hash::sha256_file;

use super::*;

fn cx() -> StageContext {
    StageContext::quiet()
}

/// Entries are directories: lookups never touch the staging.
fn no_staging() -> ktstr_sdk::cache::Staging {
    ktstr_sdk::cache::Staging::lent(PathBuf::from("/nonexistent/staging"))
}

fn key(s: &str) -> CacheKey {
    CacheKey::parse(s).unwrap()
}

/// Metadata as the pipeline would hand it over. `artifacts` holds a bogus
/// digest so tests can check that store replaces it.
fn metadata(key: &CacheKey, tag: &str, built_at: &str) -> Metadata {
    let mut artifacts = BTreeMap::new();
    artifacts.insert(
        "bogus".to_string(),
        ArtifactInfo {
            sha256: "0".repeat(64),
            size: 1,
        },
    );
    Metadata {
        schema: Metadata::SCHEMA,
        key: key.clone(),
        source: SourceInfo {
            kind: "tarball".into(),
            identity: "ab".repeat(32),
            path: None,
        },
        version: Some(tag.to_string()),
        arch: "x86_64".into(),
        image_name: "bzImage".into(),
        profile: "tiny".into(),
        config_sha256: "cd".repeat(32),
        fragments: Vec::new(),
        builder: "kbuild".into(),
        toolchain: "gcc 14.2.0".into(),
        built_at: built_at.to_string(),
        components: vec![KeyComponent::new("source", "tarball:abab")],
        artifacts,
        strip: None,
        origin: None,
        kernelrelease: None,
        build: None,
        verify: None,
    }
}

/// Source files in `dir`, each starting with a `tag` line; `pad` bytes of
/// filler make sizes differ between generations.
fn sources(dir: &Path, tag: &str, pad: usize, with_vmlinux: bool) -> Artifacts {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, fill: u8| {
        let p = dir.join(name);
        let mut body = format!("{tag}\n{name}\n").into_bytes();
        body.extend(std::iter::repeat_n(fill, pad));
        std::fs::write(&p, body).unwrap();
        p
    };
    Artifacts {
        image: write("bzImage", b'i'),
        vmlinux: with_vmlinux.then(|| write("vmlinux", b'v')),
        config: write(".config", b'c'),
        log: None,
    }
}

fn first_line(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    let end = bytes.iter().position(|b| *b == b'\n').unwrap();
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

/// Names directly under `root` that start with `.tmp-`.
fn temp_dirs(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

fn setup() -> (tempfile::TempDir, LocalCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = LocalCache::at(dir.path().join("cache"));
    (dir, cache)
}

#[test]
fn store_then_lookup_round_trip() {
    let (dir, cache) = setup();
    let k = key("6.12.3-tarball-x86_64-1a2b3c4d");
    let src = sources(&dir.path().join("src"), "gen-1", 4096, true);
    let before: Vec<_> = [&src.image, src.vmlinux.as_ref().unwrap(), &src.config]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).unwrap();
            (std::fs::read(p).unwrap(), m.modified().unwrap(), m.ino())
        })
        .collect();

    let stored = cache
        .store(
            &k,
            &src,
            &metadata(&k, "gen-1", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap();
    assert_eq!(stored.origin, "local");
    assert_eq!(stored.dir, cache.root().join("kernels").join(k.as_str()));

    let hit = cache
        .lookup(&k, &no_staging(), &cx())
        .unwrap()
        .expect("hit");
    assert_eq!(hit.metadata, stored.metadata);
    assert_eq!(hit.origin, "local");
    // The caller's artifacts map was replaced by digests of the stored copies.
    let names: Vec<_> = hit.metadata.artifacts.keys().cloned().collect();
    assert_eq!(names, ["bzImage", "config", "vmlinux"]);
    for (name, srcp) in [
        ("bzImage", &src.image),
        ("vmlinux", src.vmlinux.as_ref().unwrap()),
        ("config", &src.config),
    ] {
        let (sha, size) = sha256_file(srcp).unwrap();
        let info = &hit.metadata.artifacts[name];
        assert_eq!((&info.sha256, info.size), (&sha, size), "{name}");
        assert_eq!(
            std::fs::read(hit.dir.join(name)).unwrap(),
            std::fs::read(srcp).unwrap()
        );
    }
    assert_eq!(hit.image(), hit.dir.join("bzImage"));
    assert_eq!(hit.vmlinux(), Some(hit.dir.join("vmlinux")));
    assert_eq!(hit.config(), hit.dir.join("config"));

    // metadata.json is pretty JSON that parses back to the same value.
    let raw = std::fs::read_to_string(hit.dir.join("metadata.json")).unwrap();
    assert!(raw.contains("\n  \"schema\": 1"), "{raw}");
    let parsed: Metadata = serde_json::from_str(&raw).unwrap();
    assert_eq!(parsed, hit.metadata);

    // Sources untouched: same bytes, same mtime, same inode (copied, not moved).
    let after: Vec<_> = [&src.image, src.vmlinux.as_ref().unwrap(), &src.config]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).unwrap();
            (std::fs::read(p).unwrap(), m.modified().unwrap(), m.ino())
        })
        .collect();
    assert_eq!(before, after);
    assert!(temp_dirs(cache.root()).is_empty());
    cache.verify(&k).unwrap();
}

#[test]
fn store_without_vmlinux_and_custom_image_name() {
    let (dir, cache) = setup();
    let k = key("6.12.3-tarball-arm64-1a2b3c4d");
    let src = sources(&dir.path().join("src"), "g", 10, false);
    let mut md = metadata(&k, "g", "2025-01-01T00:00:00Z");
    md.image_name = "Image".into();
    cache.store(&k, &src, &md, &cx()).unwrap();
    let hit = cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap();
    assert_eq!(hit.vmlinux(), None);
    assert!(hit.dir.join("Image").is_file());
    assert!(!hit.dir.join("vmlinux").exists());
    let names: Vec<_> = hit.metadata.artifacts.keys().cloned().collect();
    assert_eq!(names, ["Image", "config"]);
}

#[test]
fn lookup_miss_creates_nothing() {
    let (dir, cache) = setup();
    assert!(
        cache
            .lookup(&key("nope"), &no_staging(), &cx())
            .unwrap()
            .is_none()
    );
    assert!(!cache.root().exists(), "a miss must not create the root");
    assert!(cache.list(&cx()).unwrap().is_empty());
    assert!(!cache.remove(&key("nope"), &cx()).unwrap());
    // A root that is a file is a miss too (store explains the problem).
    let file_root = dir.path().join("file");
    std::fs::write(&file_root, b"x").unwrap();
    assert!(
        LocalCache::at(file_root)
            .lookup(&key("k"), &no_staging(), &cx())
            .unwrap()
            .is_none()
    );
}

#[test]
fn replacing_an_entry_serves_the_new_content() {
    let (dir, cache) = setup();
    let k = key("k-replace");
    let a = sources(&dir.path().join("a"), "A", 100, true);
    let b = sources(&dir.path().join("b"), "B", 5000, false);
    cache
        .store(&k, &a, &metadata(&k, "A", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    let first_ino = std::fs::metadata(cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap().dir)
        .unwrap()
        .ino();
    cache
        .store(&k, &b, &metadata(&k, "B", "2025-01-02T00:00:00Z"), &cx())
        .unwrap();
    let hit = cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap();
    assert_eq!(hit.metadata.version.as_deref(), Some("B"));
    assert_eq!(first_line(&hit.image()), "B");
    assert_eq!(first_line(&hit.config()), "B");
    // The old entry's vmlinux went with it: files are never mixed across stores.
    assert!(!hit.dir.join("vmlinux").exists());
    assert_ne!(std::fs::metadata(&hit.dir).unwrap().ino(), first_ino);
    assert!(temp_dirs(cache.root()).is_empty(), "old contents removed");
    cache.verify(&k).unwrap();
}

#[test]
fn store_is_atomic_under_concurrent_readers() {
    let (dir, cache) = setup();
    let cache = Arc::new(cache);
    let k = key("k-concurrent");
    let a = sources(&dir.path().join("a0"), "gen-0", 64, true);
    cache
        .store(
            &k,
            &a,
            &metadata(&k, "gen-0", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (cache, k, done, reads) = (cache.clone(), k.clone(), done.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            let mut mine = 0usize;
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Ordering::SeqCst) || mine == 0 {
                let lock_path = entry_lock(cache.root(), &k);
                let shared = lock::lock(&lock_path, LockMode::Shared).unwrap();
                let entry = cache
                    .lookup(&k, &no_staging(), &cx())
                    .unwrap()
                    .expect("entry never disappears");
                let tag = entry.metadata.version.clone().unwrap();
                seen.insert(tag.clone());
                for (name, info) in &entry.metadata.artifacts {
                    let path = entry.dir.join(name);
                    let (sha, size) = sha256_file(&path).unwrap();
                    assert_eq!(sha, info.sha256, "{name} digest differs from metadata");
                    assert_eq!(size, info.size, "{name}");
                    // Every file is from the same store as the metadata.
                    assert_eq!(first_line(&path), tag, "{name} mixed with another store");
                }
                mine += 1;
                drop(shared);
                // flock has no writer preference: back-to-back readers
                // would starve the writer, so give it a gap as real
                // (short-lived) readers do.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            reads.fetch_add(mine, Ordering::SeqCst);
            seen
        }));
    }

    for i in 1..=60 {
        let tag = format!("gen-{i}");
        // A and B differ in size and in whether vmlinux exists.
        let (pad, vmlinux) = if i % 2 == 0 {
            (64, true)
        } else {
            (50_000, false)
        };
        let src = sources(&dir.path().join(format!("s{}", i % 2)), &tag, pad, vmlinux);
        let stored = cache
            .store(&k, &src, &metadata(&k, &tag, "2025-01-01T00:00:00Z"), &cx())
            .unwrap();
        assert_eq!(stored.metadata.version.as_deref(), Some(tag.as_str()));
    }
    done.store(true, Ordering::SeqCst);
    let mut generations = std::collections::BTreeSet::new();
    for r in readers {
        generations.extend(r.join().expect("reader saw a partial or mixed entry"));
    }
    assert!(reads.load(Ordering::SeqCst) >= 3);
    // Readers really ran while stores replaced the entry.
    assert!(generations.len() > 1, "{generations:?}");
    let last = cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap();
    assert_eq!(last.metadata.version.as_deref(), Some("gen-60"));
    assert!(temp_dirs(cache.root()).is_empty());
}

#[test]
fn corrupt_metadata_is_reported_by_lookup_and_list() {
    let (dir, cache) = setup();
    let good = key("a-good");
    let bad = key("b-bad");
    let missing = key("c-nometa");
    for k in [&good, &bad, &missing] {
        let src = sources(&dir.path().join(k.as_str()), "t", 10, true);
        cache
            .store(k, &src, &metadata(k, "t", "2025-01-01T00:00:00Z"), &cx())
            .unwrap();
    }
    let kernels = cache.root().join("kernels");
    std::fs::write(kernels.join("b-bad/metadata.json"), b"{ not json").unwrap();
    std::fs::remove_file(kernels.join("c-nometa/metadata.json")).unwrap();
    // A directory whose name is not a key, and a hidden one that is skipped.
    std::fs::create_dir(kernels.join("bad name")).unwrap();
    std::fs::create_dir(kernels.join(".hidden")).unwrap();

    let err = cache.lookup(&bad, &no_staging(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert!(
        err.message
            .starts_with("cache entry b-bad: metadata.json is not valid: "),
        "{err}"
    );
    assert!(err.hint.as_deref().unwrap().contains("ktstr kernel clean"));

    let err = cache.lookup(&missing, &no_staging(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert_eq!(
        err.message,
        "cache entry c-nometa: metadata.json is missing"
    );

    let rows = cache.list(&cx()).unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(matches!(&rows[0], Listed::Ok(e) if e.key == good));
    let corrupt: Vec<(&str, &str)> = rows[1..]
        .iter()
        .map(|r| match r {
            Listed::Corrupt { key, reason } => (key.as_str(), reason.as_str()),
            Listed::Ok(e) => panic!("{} listed as ok", e.key),
        })
        .collect();
    assert_eq!(corrupt[0].0, "b-bad");
    assert!(corrupt[0].1.starts_with("metadata.json is not valid"));
    assert_eq!(corrupt[1].0, "bad name");
    assert!(corrupt[1].1.contains("not a valid cache key"));
    assert_eq!(corrupt[2], ("c-nometa", "metadata.json is missing"));

    // Storing again replaces the corrupt entry.
    let src = sources(&dir.path().join("again"), "fixed", 10, true);
    cache
        .store(
            &bad,
            &src,
            &metadata(&bad, "fixed", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap();
    assert!(cache.lookup(&bad, &no_staging(), &cx()).unwrap().is_some());
}

#[test]
fn metadata_for_another_key_is_corrupt() {
    let (dir, cache) = setup();
    let (a, b) = (key("k-a"), key("k-b"));
    let src = sources(&dir.path().join("s"), "t", 10, true);
    cache
        .store(&a, &src, &metadata(&a, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    let kernels = cache.root().join("kernels");
    std::fs::rename(kernels.join("k-a"), kernels.join("k-b")).unwrap();
    let err = cache.lookup(&b, &no_staging(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert_eq!(
        err.message,
        "cache entry k-b: metadata.json belongs to key k-a"
    );
}

#[test]
fn missing_or_truncated_artifact_is_corrupt_naming_it() {
    let (dir, cache) = setup();
    let k = key("k-art");
    let src = sources(&dir.path().join("s"), "t", 100, true);
    let entry = cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    std::fs::remove_file(entry.dir.join("vmlinux")).unwrap();
    let err = cache.lookup(&k, &no_staging(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert_eq!(err.message, "cache entry k-art: vmlinux is missing");
    let rows = cache.list(&cx()).unwrap();
    assert!(
        matches!(&rows[..], [Listed::Corrupt { key, reason }] if key == "k-art" && reason == "vmlinux is missing"),
        "{rows:?}"
    );

    cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    let config = entry.dir.join("config");
    let len = std::fs::metadata(&config).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&config)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let err = cache.lookup(&k, &no_staging(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert!(err.message.contains("config is"), "{err}");
    assert!(err.message.contains(&format!("records {len}")), "{err}");
}

#[test]
fn verify_detects_a_flipped_byte_that_lookup_does_not_hash() {
    let (dir, cache) = setup();
    let k = key("k-verify");
    let src = sources(&dir.path().join("s"), "t", 1000, true);
    let entry = cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    cache.verify(&k).unwrap();
    let image = entry.dir.join("bzImage");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[500] ^= 0x01;
    let stored_at = std::fs::metadata(&image).unwrap().modified().unwrap();
    std::fs::write(&image, bytes).unwrap();
    // Bit rot: same size, mtime unchanged. The cheap lookup still serves it...
    std::fs::File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_modified(stored_at)
        .unwrap();
    assert!(cache.lookup(&k, &no_staging(), &cx()).unwrap().is_some());
    // ...and verify catches it.
    let err = cache.verify(&k).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert!(
        err.message
            .starts_with("cache entry k-verify: bzImage has sha256 "),
        "{err}"
    );
    let err = cache.verify(&key("absent")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}

#[test]
fn an_artifact_written_in_place_after_the_store_is_corrupt_at_lookup() {
    let (dir, cache) = setup();
    let k = key("k-inplace");
    let src = sources(&dir.path().join("s"), "t", 1000, true);
    let entry = cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    let meta = std::fs::metadata(entry.dir.join(METADATA_NAME)).unwrap();
    let image = entry.dir.join("bzImage");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&image, bytes).unwrap();
    // Same size, newer than metadata.json (set explicitly: no clock races).
    let later = meta.modified().unwrap() + std::time::Duration::from_secs(1);
    std::fs::File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let err = cache.lookup(&k, &no_staging(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert!(
        err.message
            .contains("bzImage was modified after the entry was stored"),
        "{err}"
    );
}

#[test]
fn a_symlinked_entry_or_metadata_is_corrupt_and_never_followed() {
    let (dir, cache) = setup();
    let k = key("k-link");
    let src = sources(&dir.path().join("s"), "t", 10, true);
    let entry = cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    // metadata.json as a symlink to a valid copy: refused.
    let copy = dir.path().join("metadata-copy.json");
    std::fs::copy(entry.dir.join(METADATA_NAME), &copy).unwrap();
    std::fs::remove_file(entry.dir.join(METADATA_NAME)).unwrap();
    std::os::unix::fs::symlink(&copy, entry.dir.join(METADATA_NAME)).unwrap();
    let err = cache.lookup(&k, &no_staging(), &cx()).unwrap_err();
    assert!(err.message.contains("is a symlink"), "{err}");
    // The whole key directory as a symlink to a valid entry elsewhere.
    std::fs::remove_file(entry.dir.join(METADATA_NAME)).unwrap();
    std::fs::copy(&copy, entry.dir.join(METADATA_NAME)).unwrap();
    let outside = dir.path().join("outside");
    std::fs::rename(&entry.dir, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &entry.dir).unwrap();
    let err = cache.lookup(&k, &no_staging(), &cx()).unwrap_err();
    assert!(err.message.contains("is a symlink"), "{err}");
    assert!(matches!(
        &cache.list(&cx()).unwrap()[..],
        [Listed::Corrupt { .. }]
    ));
    // A store replaces the link, never writing through it.
    cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    assert!(std::fs::symlink_metadata(&entry.dir).unwrap().is_dir());
    assert!(outside.join(METADATA_NAME).is_file(), "target untouched");
    assert!(cache.lookup(&k, &no_staging(), &cx()).unwrap().is_some());
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

#[test]
fn store_sweeps_dead_temp_dirs_and_keeps_live_ones() {
    let (dir, cache) = setup();
    std::fs::create_dir_all(cache.root()).unwrap();
    let dead = dead_pid();
    let me = std::process::id();
    let mk = |name: String| {
        let p = cache.root().join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("partial"), b"x").unwrap();
        p
    };
    let dead_stage = mk(format!(".tmp-other-key-{dead}"));
    let dead_delete = mk(format!(".tmp-del@gone-{dead}"));
    let live = mk(format!(".tmp-other-key-{me}"));
    let not_ours = mk(".tmp-notapid".to_string());

    let k = key("k-sweep");
    let src = sources(&dir.path().join("s"), "t", 10, true);
    cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    assert!(!dead_stage.exists());
    assert!(!dead_delete.exists());
    assert!(live.join("partial").exists(), "a live pid's dir is kept");
    assert!(not_ours.exists());
}

#[test]
fn unwritable_root_fails_with_hint_and_leaves_nothing() {
    let (dir, _) = setup();
    let file_root = dir.path().join("not-a-dir");
    std::fs::write(&file_root, b"precious").unwrap();
    let src = sources(&dir.path().join("s"), "t", 10, true);
    let k = key("k-root");
    for root in [file_root.clone(), file_root.join("below")] {
        let cache = LocalCache::at(root.clone());
        let err = cache
            .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        assert!(
            err.message
                .contains(&format!("cache root {} is not writable", root.display())),
            "{err}"
        );
        assert!(err.message.starts_with("cannot store cache entry k-root"));
        assert_eq!(
            err.hint.as_deref(),
            Some("set KTSTR_CACHE_DIR to a writable directory")
        );
    }
    assert_eq!(std::fs::read(&file_root).unwrap(), b"precious");
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["not-a-dir", "s"]);
}

#[test]
fn failed_store_keeps_the_existing_entry_and_no_temp_dir() {
    let (dir, cache) = setup();
    let k = key("k-fail");
    let good = sources(&dir.path().join("good"), "good", 10, true);
    cache
        .store(
            &k,
            &good,
            &metadata(&k, "good", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap();
    let mut broken = sources(&dir.path().join("broken"), "broken", 10, true);
    broken.config = dir.path().join("broken/does-not-exist");
    let err = cache
        .store(
            &k,
            &broken,
            &metadata(&k, "broken", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(err.message.contains("does-not-exist"), "{err}");
    let hit = cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap();
    assert_eq!(hit.metadata.version.as_deref(), Some("good"));
    assert_eq!(first_line(&hit.image()), "good");
    assert!(
        temp_dirs(cache.root()).is_empty(),
        "{:?}",
        temp_dirs(cache.root())
    );
}

#[test]
fn store_rejects_metadata_for_another_key() {
    let (dir, cache) = setup();
    let src = sources(&dir.path().join("s"), "t", 10, true);
    let err = cache
        .store(
            &key("k-one"),
            &src,
            &metadata(&key("k-two"), "t", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert!(err.message.contains("metadata is for key k-two"), "{err}");
    assert!(!cache.root().exists(), "nothing written");

    let k = key("k-img");
    let mut md = metadata(&k, "t", "2025-01-01T00:00:00Z");
    md.image_name = "../escape".into();
    let err = cache.store(&k, &src, &md, &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
}

#[test]
fn remove_refuses_while_in_use_then_removes() {
    let (dir, cache) = setup();
    let k = key("k-remove");
    let src = sources(&dir.path().join("s"), "t", 10, true);
    cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();

    // Another thread holds the shared (reader) lock until told to stop.
    let lock_path = entry_lock(cache.root(), &k);
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let _shared = lock::lock(&lock_path, LockMode::Shared).unwrap();
        held_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    held_rx.recv().unwrap();

    let err = cache.remove(&k, &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(
        err.message
            .starts_with("cache entry k-remove is in use: held by "),
        "{err}"
    );
    assert!(
        err.message.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert_eq!(
        err.hint.as_deref(),
        Some("retry when that process finishes")
    );
    assert!(
        cache.lookup(&k, &no_staging(), &cx()).unwrap().is_some(),
        "entry kept"
    );

    release_tx.send(()).unwrap();
    reader.join().unwrap();
    assert!(cache.remove(&k, &cx()).unwrap());
    assert!(cache.lookup(&k, &no_staging(), &cx()).unwrap().is_none());
    assert!(!cache.root().join("kernels/k-remove").exists());
    assert!(!cache.remove(&k, &cx()).unwrap());
    assert!(temp_dirs(cache.root()).is_empty());
}

#[test]
fn list_sorts_newest_first() {
    let (dir, cache) = setup();
    for (k, at) in [
        ("k-old", "2024-01-01T00:00:00Z"),
        ("k-new", "2025-06-01T12:00:00Z"),
        ("k-mid", "2025-01-01T00:00:00Z"),
    ] {
        let k = key(k);
        let src = sources(&dir.path().join(k.as_str()), "t", 10, false);
        cache
            .store(&k, &src, &metadata(&k, "t", at), &cx())
            .unwrap();
    }
    // Stray files in kernels/ are not entries.
    std::fs::write(cache.root().join("kernels/README"), b"x").unwrap();
    let keys: Vec<String> = cache
        .list(&cx())
        .unwrap()
        .into_iter()
        .map(|l| match l {
            Listed::Ok(e) => e.key.to_string(),
            Listed::Corrupt { key, reason } => panic!("{key}: {reason}"),
        })
        .collect();
    assert_eq!(keys, ["k-new", "k-mid", "k-old"]);
}

#[test]
fn registered_as_builtin_and_configurable() {
    let plugin = ktstr_sdk::registry::builtins()
        .into_iter()
        .find(|p| p.name == "local-cache")
        .expect("local-cache registered");
    assert_eq!(plugin.version, env!("CARGO_PKG_VERSION"));
    let Constructor::Cache(make) = plugin.constructor else {
        panic!("local-cache is not a cache plugin");
    };
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().join("c");
    let backend = make(&serde_json::json!({ "root": root })).unwrap();
    assert_eq!(
        backend.describe(),
        format!("local cache at {}", root.display())
    );
    assert_eq!(backend.capabilities(), Default::default());

    for bad in [
        serde_json::json!({ "root": 3 }),
        serde_json::json!({ "root": "" }),
        serde_json::json!({ "rot": "/x" }),
        serde_json::json!("x"),
    ] {
        let err = LocalCache::from_config(&bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput, "{bad}");
        assert!(err.message.starts_with("plugin local-cache: "), "{err}");
    }
}

#[test]
fn the_build_log_is_stored_as_given_and_optional() {
    let (dir, cache) = setup();
    let k = key("6.12.3-tarball-x86_64-10910910");
    let mut src = sources(&dir.path().join("src"), "gen-1", 16, true);
    let log = dir.path().join("src/buildlog");
    std::fs::write(&log, b"(zstd bytes)").unwrap();
    src.log = Some(log.clone());
    let stored = cache
        .store(
            &k,
            &src,
            &metadata(&k, "gen-1", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap();
    let hit = cache
        .lookup(&k, &no_staging(), &cx())
        .unwrap()
        .expect("hit");
    let kept = hit.log().expect("the entry has a log");
    assert_eq!(kept, stored.dir.join(LOG_NAME));
    assert_eq!(std::fs::read(&kept).unwrap(), b"(zstd bytes)");
    assert_eq!(hit.artifacts().log, Some(kept.clone()));
    cache.verify(&k).unwrap();

    // A truncated log is a corrupt entry like any other file.
    std::fs::write(&kept, b"x").unwrap();
    let err = cache.lookup(&k, &no_staging(), &cx()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt, "{err}");

    // Entries without one (older ktstr) load, with no log.
    let old = key("6.12.3-tarball-x86_64-01d01d01");
    let plain = sources(&dir.path().join("src2"), "gen-1", 16, true);
    cache
        .store(
            &old,
            &plain,
            &metadata(&old, "gen-1", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap();
    let hit = cache.lookup(&old, &no_staging(), &cx()).unwrap().unwrap();
    assert_eq!(hit.log(), None);
    assert_eq!(hit.metadata.build, None);
}

#[test]
fn metadata_json_of_an_older_ktstr_still_loads() {
    let (dir, cache) = setup();
    let k = key("6.12.3-tarball-x86_64-0a0a0a0a");
    let src = sources(&dir.path().join("src"), "gen-1", 16, false);
    let mut md = metadata(&k, "gen-1", "2025-01-01T00:00:00Z");
    md.kernelrelease = Some("6.12.3".into());
    md.build = Some(ktstr_sdk::cache::BuildRecord {
        warnings: 3,
        ..Default::default()
    });
    let stored = cache.store(&k, &src, &md, &cx()).unwrap();
    assert_eq!(
        cache
            .lookup(&k, &no_staging(), &cx())
            .unwrap()
            .unwrap()
            .metadata
            .build
            .unwrap()
            .warnings,
        3
    );
    // Rewrite metadata.json as the seed's ktstr wrote it: no new fields.
    let path = stored.dir.join(METADATA_NAME);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let obj = json.as_object_mut().unwrap();
    assert!(obj.remove("kernelrelease").is_some());
    assert!(obj.remove("build").is_some());
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let hit = cache
        .lookup(&k, &no_staging(), &cx())
        .unwrap()
        .expect("old metadata is still a hit");
    assert_eq!(hit.metadata.kernelrelease, None);
    assert_eq!(hit.metadata.build, None);
}

#[test]
fn entry_locks_are_named_by_key_and_listed() {
    let k = key("6.12.0-local-x86_64-abcd");
    assert_eq!(
        entry_lock(Path::new("/c"), &k),
        Path::new("/c/.locks/entry-6.12.0-local-x86_64-abcd.lock")
    );
    assert_ne!(
        entry_lock(Path::new("/c"), &k),
        paths::build_lock(Path::new("/c"), &k)
    );
    let (dir, cache) = setup();
    assert!(cache.locks().unwrap().is_empty());
    let src = sources(&dir.path().join("s"), "t", 10, true);
    cache
        .store(&k, &src, &metadata(&k, "t", "2025-01-01T00:00:00Z"), &cx())
        .unwrap();
    std::fs::write(paths::build_lock(cache.root(), &k), "").unwrap();
    let locks = cache.locks().unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(
        (locks[0].kind.as_str(), locks[0].id.as_str()),
        ("entry", k.as_str())
    );
}

/// An interrupted store is `Cancelled`, installs nothing, keeps the entry
/// it would have replaced and leaves no temp dir.
#[test]
fn a_cancelled_store_leaves_nothing_visible() {
    let (dir, cache) = setup();
    let k = key("k-cancel");
    let good = sources(&dir.path().join("good"), "good", 10, true);
    cache
        .store(
            &k,
            &good,
            &metadata(&k, "good", "2025-01-01T00:00:00Z"),
            &cx(),
        )
        .unwrap();
    let fresh = key("k-fresh");
    let newer = sources(&dir.path().join("newer"), "newer", 10, true);
    let stopped = cx();
    stopped.cancel.cancel();
    for k in [&k, &fresh] {
        let err = cache
            .store(
                k,
                &newer,
                &metadata(k, "newer", "2025-01-02T00:00:00Z"),
                &stopped,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
    }
    assert!(
        cache
            .lookup(&fresh, &no_staging(), &cx())
            .unwrap()
            .is_none()
    );
    let kept = cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap();
    assert_eq!(first_line(&kept.image()), "good");
    assert_eq!(cache.list(&cx()).unwrap().len(), 1);
    assert!(
        temp_dirs(cache.root()).is_empty(),
        "{:?}",
        temp_dirs(cache.root())
    );
}

fn set_used(cache: &LocalCache, k: &CacheKey, rfc3339: &str) {
    let t = humantime::parse_rfc3339(rfc3339).unwrap();
    std::fs::File::options()
        .write(true)
        .open(last_use::marker(cache.root(), k))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn last_used_of(cache: &LocalCache, k: &str) -> String {
    cache
        .list(&cx())
        .unwrap()
        .into_iter()
        .find_map(|l| match l {
            Listed::Ok(e) if e.key.as_str() == k => e.last_used,
            _ => None,
        })
        .unwrap()
}

/// A store and every hit record the use in the entry's marker; listing
/// reports it; removing the entry removes the marker.
#[test]
fn hits_record_the_last_use_and_remove_forgets_it() {
    let (dir, cache) = setup();
    let k = key("k-1");
    let src = sources(&dir.path().join("src"), "t", 10, false);
    cache
        .store(&k, &src, &metadata(&k, "t", "2024-01-01T00:00:00Z"), &cx())
        .unwrap();
    let marker = last_use::marker(cache.root(), &k);
    assert!(marker.is_file(), "a store is a use");
    set_used(&cache, &k, "2025-03-01T10:00:00Z");
    assert_eq!(last_used_of(&cache, "k-1"), "2025-03-01T10:00:00Z");
    let listed_again = last_used_of(&cache, "k-1");
    assert_eq!(listed_again, "2025-03-01T10:00:00Z", "listing is not a use");
    cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap();
    let after_hit = humantime::parse_rfc3339(&last_used_of(&cache, "k-1")).unwrap();
    let age = std::time::SystemTime::now().duration_since(after_hit);
    assert!(
        age.is_ok_and(|a| a.as_secs() < 60),
        "a hit did not record its use"
    );
    // A marker that vanished (an older ktstr's entry): the store time.
    std::fs::remove_file(&marker).unwrap();
    assert!(!last_used_of(&cache, "k-1").is_empty());
    cache.lookup(&k, &no_staging(), &cx()).unwrap().unwrap();
    assert!(marker.is_file(), "the first hit creates the marker");
    assert!(cache.remove(&k, &cx()).unwrap());
    assert!(!marker.exists(), "marker outlived its entry");
    assert!(cache.lookup(&k, &no_staging(), &cx()).unwrap().is_none());
    assert!(!marker.exists(), "a miss recorded a use");
}

/// `cache gc` on the local tier: least recently used first, whatever
/// the build times say; an entry in use stays and the next one goes.
#[test]
fn gc_evicts_the_least_recently_used_and_spares_entries_in_use() {
    let (dir, cache) = setup();
    for (k, used) in [
        ("k-a", "2025-05-01T00:00:00Z"),
        ("k-b", "2025-01-01T00:00:00Z"),
        ("k-c", "2025-03-01T00:00:00Z"),
    ] {
        let k = key(k);
        let src = sources(&dir.path().join(k.as_str()), "t", 1000, false);
        // Built in the opposite order of use.
        cache
            .store(&k, &src, &metadata(&k, "t", used), &cx())
            .unwrap();
        set_used(&cache, &k, used);
    }
    let entry_size = {
        let Listed::Ok(e) = &cache.list(&cx()).unwrap()[0] else {
            panic!()
        };
        e.metadata.artifacts.values().map(|a| a.size).sum::<u64>()
    };
    let request = |dry_run| ktstr_sdk::cache_gc::GcRequest {
        policy: ktstr_sdk::cache_gc::GcPolicy {
            max_size: Some(entry_size),
            ..Default::default()
        },
        dry_run,
        now: std::time::SystemTime::now(),
    };
    let dry = cache.gc(&request(true), &cx()).unwrap();
    let keys = |r: &ktstr_sdk::cache_gc::GcReport| {
        r.evicted.iter().map(|e| e.key.clone()).collect::<Vec<_>>()
    };
    assert_eq!(keys(&dry), ["k-b", "k-c"]);
    assert_eq!(cache.list(&cx()).unwrap().len(), 3, "a dry run removed");
    // k-b is being read: it stays, and k-a goes in its place.
    let reader = lock::lock(&entry_lock(cache.root(), &key("k-b")), LockMode::Shared).unwrap();
    let r = cache.gc(&request(false), &cx()).unwrap();
    drop(reader);
    assert_eq!(keys(&r), ["k-c", "k-a"]);
    assert_eq!(r.spared.len(), 1);
    assert!(r.spared[0].reason.contains("in use"), "{:?}", r.spared);
    assert_eq!(r.bytes_after, entry_size);
}
