//! The hostile-input battery: every file ktstr reads, replaced by something
//! that is not a small regular file; archives whose headers lie; specs that
//! could be read two ways; corrupted and redirected cache entries.
//!
//! Every case asserts the exit code, the message (naming the file or the
//! spec), that the run ended promptly (a FIFO must not hang ktstr, nor
//! `/dev/zero` grow its memory), that nothing was written outside the cache
//! root (`$TMPDIR` and the working directory stay as they were), and that
//! no partial entry is left behind. Cases are tables: a new file kind or a
//! new kind of hostile file is one row.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Fixture, Run, make_tarball, stem};

/// Longest a refused input may take: reading a FIFO or `/dev/zero` would
/// take forever, so anything near this bound is a hang.
const PROMPT: Duration = Duration::from_secs(20);

/// What a file is replaced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hostile {
    Fifo,
    /// A symlink to a FIFO next to it.
    FifoViaSymlink,
    /// A symlink to `/dev/zero`.
    DevZero,
    Directory,
    /// `a -> b -> a`.
    SymlinkLoop,
    /// A sparse 3 GiB file: reading it whole would grow memory to gigabytes.
    Huge,
}

const EVERY: [Hostile; 6] = [
    Hostile::Fifo,
    Hostile::FifoViaSymlink,
    Hostile::DevZero,
    Hostile::Directory,
    Hostile::SymlinkLoop,
    Hostile::Huge,
];

/// Put `what` at `path` (replacing whatever is there); returns the names
/// it created next to `path`, for the containment check.
fn plant(path: &Path, what: Hostile) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).unwrap(),
        Ok(_) => fs::remove_file(path).unwrap(),
        Err(_) => {}
    }
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
    match what {
        Hostile::Fifo => nix::unistd::mkfifo(path, mode).unwrap(),
        Hostile::FifoViaSymlink => {
            let target = path.with_extension("fifo-target");
            let _ = fs::remove_file(&target);
            nix::unistd::mkfifo(&target, mode).unwrap();
            symlink(&target, path).unwrap();
        }
        Hostile::DevZero => symlink("/dev/zero", path).unwrap(),
        Hostile::Directory => {
            fs::create_dir(path).unwrap();
            fs::write(path.join("inside"), "x").unwrap();
        }
        Hostile::SymlinkLoop => {
            let other = path.with_extension("loop");
            let _ = fs::remove_file(&other);
            symlink(&other, path).unwrap();
            symlink(path, &other).unwrap();
        }
        Hostile::Huge => fs::File::create(path).unwrap().set_len(3 << 30).unwrap(),
    }
}

/// A fixture whose `$TMPDIR` is a private, empty directory, so that
/// anything written outside the cache root is seen.
fn fixture(git: bool) -> Fixture {
    let fx = if git {
        Fixture::git()
    } else {
        Fixture::plain()
    };
    let tmp = fx.root.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let tmp = tmp.to_str().unwrap().to_string();
    fx.with_env("TMPDIR", &tmp)
}

/// Names the fixture itself puts in its root.
const FIXTURE_NAMES: [&str; 6] = [
    "linux",
    "cache",
    "make.log",
    "tmp",
    "xdg-config",
    "xdg-data",
];

/// Nothing outside the cache root: `$TMPDIR` empty, the working directory
/// holding only the fixture's own names and `planted` ones; no staging or
/// partial entry in the cache root; every entry directory a complete entry
/// unless `corrupt_ok`.
#[track_caller]
fn assert_contained(fx: &Fixture, planted: &[&str], run: &Run) {
    let tmp: Vec<_> = fs::read_dir(fx.root.path().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        tmp.is_empty(),
        "written to $TMPDIR: {tmp:?}\n{}",
        run.describe()
    );
    for entry in fs::read_dir(fx.root.path()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            FIXTURE_NAMES.contains(&name.as_str()) || planted.iter().any(|p| name.starts_with(p)),
            "written outside the cache root: {name}\n{}",
            run.describe()
        );
    }
    for dir in [fx.cache.clone(), fx.kernels_dir()] {
        for entry in fs::read_dir(&dir).into_iter().flatten() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".tmp-"),
                "partial or staging directory {name} left in {}\n{}",
                dir.display(),
                run.describe()
            );
        }
    }
}

#[track_caller]
fn assert_prompt(run: &Run) {
    assert!(
        run.elapsed < PROMPT,
        "took {:?}: a hostile file must be refused at once\n{}",
        run.elapsed,
        run.describe()
    );
}

/// A refused input: exit 1, the message names `needle`, promptly, contained,
/// nothing cached.
#[track_caller]
fn assert_refused(fx: &Fixture, run: &Run, needle: &str, planted: &[&str]) {
    run.assert_fails();
    assert!(
        run.error_text().contains(needle),
        "the error should name {needle}\n{}",
        run.describe()
    );
    assert_prompt(run);
    assert_contained(fx, planted, run);
}

/// The word the error uses for each kind of hostile file.
fn described_as(what: Hostile) -> &'static str {
    match what {
        Hostile::Fifo | Hostile::FifoViaSymlink => "a FIFO",
        Hostile::DevZero => "a character device",
        Hostile::Directory => "a directory",
        Hostile::SymlinkLoop => "symbolic links",
        Hostile::Huge => "larger than the 1 MiB limit",
    }
}

// ---------------------------------------------------------------------------
// Files the user names: fragments, the config file, tarballs.

#[test]
fn hostile_fragments_are_refused_naming_the_file() {
    for what in EVERY {
        let fx = fixture(true);
        let frag = fx.root.path().join("frag.config");
        plant(&frag, what);
        let run = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
        assert_refused(&fx, &run, frag.to_str().unwrap(), &["frag"]);
        assert!(
            run.error_text().contains(described_as(what)),
            "{what:?}: the error should say {:?}\n{}",
            described_as(what),
            run.describe()
        );
        assert_eq!(fx.build_count(), 0, "{what:?}: nothing may be built");
        fx.assert_nothing_cached();
    }
}

#[test]
fn dev_zero_and_a_dangling_symlink_as_fragments() {
    let fx = fixture(true);
    let run = fx.build(&["--extra-kconfig", "/dev/zero"]);
    assert_refused(&fx, &run, "/dev/zero is a character device", &[]);
    let dangling = fx.root.path().join("dangling.config");
    symlink(fx.root.path().join("nowhere"), &dangling).unwrap();
    let run = fx.build(&["--extra-kconfig", dangling.to_str().unwrap()]);
    assert_refused(&fx, &run, dangling.to_str().unwrap(), &["dangling"]);
    fx.assert_nothing_cached();
}

#[test]
fn hostile_config_files_are_refused_by_every_command() {
    for what in EVERY {
        let fx = fixture(false);
        let config = fx.root.path().join("config.toml");
        plant(&config, what);
        let fx = fx.with_env("KTSTR_CONFIG", config.to_str().unwrap());
        for args in [
            vec!["kernel", "list"],
            vec!["kernel", "clean", "--force"],
            vec!["plugins", "list"],
        ] {
            let run = fx.run(&args);
            assert_refused(&fx, &run, config.to_str().unwrap(), &["config"]);
            assert!(
                run.error_text().contains(described_as(what)),
                "{what:?} {args:?}\n{}",
                run.describe()
            );
        }
    }
}

#[test]
fn config_values_of_the_wrong_type_name_the_key_and_the_line() {
    let cases: [(&str, &str, &str); 6] = [
        ("reserver = 5\n", "line 1", "`reserver`"),
        (
            "[plugin.tarball]\nmirror = \"file:///srv\"\nretries = \"many\"\n",
            "line 3",
            "`retries`",
        ),
        (
            "[hosts.\"*\".plugin.tarball]\nmax_unpacked_bytes = -1\n",
            "line 2",
            "`max_unpacked_bytes`",
        ),
        ("# fleet\n\ncaches = \"s3-cache\"\n", "line 3", "`caches`"),
        (
            "reserver = \"none\"\nplugins = [1, 2]\n",
            "line 2",
            "`plugins`",
        ),
        ("[hosts.\"ci-*\"]\nbuilder = true\n", "line 2", "`builder`"),
    ];
    for (text, line, key) in cases {
        let fx = fixture(false);
        let config = fx.write_file("config.toml", text);
        let fx = fx.with_env("KTSTR_CONFIG", config.to_str().unwrap());
        let run = fx.run(&["kernel", "list"]);
        assert_refused(&fx, &run, config.to_str().unwrap(), &["config"]);
        assert!(
            run.error_text().contains(line) && run.error_text().contains(key),
            "{text:?}: expected {line} and {key}\n{}",
            run.describe()
        );
    }
}

#[test]
fn hostile_tarball_paths_are_refused_naming_the_file() {
    for what in [
        Hostile::Fifo,
        Hostile::FifoViaSymlink,
        Hostile::DevZero,
        Hostile::SymlinkLoop,
    ] {
        let fx = fixture(false);
        let tarball = fx.root.path().join("linux-6.99.0.tar.xz");
        plant(&tarball, what);
        let spec = tarball.to_str().unwrap();
        let run = fx.run(&["build", "--kernel", spec]);
        assert_refused(&fx, &run, spec, &["linux-6.99.0"]);
        fx.assert_nothing_cached();
    }
}

#[test]
fn a_huge_file_that_is_not_an_archive_is_refused_without_reading_it_all() {
    let fx = fixture(false);
    let tarball = fx.root.path().join("linux-6.99.0.tar");
    plant(&tarball, Hostile::Huge);
    let spec = format!("{}#sha256={}", tarball.display(), "a".repeat(64));
    let run = fx.run(&["build", "--kernel", &spec]);
    assert_refused(&fx, &run, "linux-6.99.0.tar", &["linux-6.99.0"]);
    fx.assert_nothing_cached();
}

// ---------------------------------------------------------------------------
// A tree's Makefile.

#[test]
fn hostile_makefiles_are_refused_naming_the_file() {
    for what in EVERY {
        let fx = fixture(false);
        let makefile = fx.tree.join("Makefile");
        plant(&makefile, what);
        let run = fx.build(&[]);
        run.assert_fails();
        let expected = match what {
            // A directory where the Makefile should be: not a kernel tree.
            Hostile::Directory => "missing Makefile".to_string(),
            _ => makefile.display().to_string(),
        };
        assert_refused(&fx, &run, &expected, &[]);
        assert_eq!(fx.build_count(), 0, "{what:?}");
        fx.assert_nothing_cached();
    }
}

// ---------------------------------------------------------------------------
// Files under the cache root: an entry's metadata.json, state files.

/// A fixture with one cached entry; returns it and the entry's key.
fn cached() -> (Fixture, String) {
    let fx = fixture(true);
    let key = fx.build(&[]).cached_key();
    (fx, key)
}

#[test]
fn hostile_metadata_is_a_corrupt_entry_listed_cleaned_and_rebuilt() {
    for what in EVERY {
        let (fx, key) = cached();
        let meta = fx.kernels_dir().join(&key).join("metadata.json");
        plant(&meta, what);

        let run = fx.run(&["kernel", "list", "--json"]);
        run.assert_ok();
        assert_prompt(&run);
        let rows = run.json();
        assert_eq!(rows[0]["key"], key, "{what:?}\n{}", run.describe());
        assert_eq!(rows[0]["status"], "corrupt", "{what:?}\n{}", run.describe());
        assert!(
            rows[0]["reason"]
                .as_str()
                .unwrap()
                .contains("metadata.json"),
            "{what:?}: {}",
            rows[0]
        );

        let run = fx.run(&["kernel", "verify"]);
        run.assert_fails();
        assert_prompt(&run);
        assert!(
            run.stdout.contains(&key) && run.stdout.contains("corrupt"),
            "{}",
            run.describe()
        );

        // verify removed it; plant again and let a build replace it.
        assert!(
            fx.entries_on_disk().is_empty(),
            "{what:?}: verify removes it"
        );
        let rebuilt = fx.build(&[]);
        rebuilt.assert_ok();
        assert_eq!(rebuilt.cached_key(), key);
        plant(&fx.kernels_dir().join(&key).join("metadata.json"), what);
        let run = fx.build(&[]);
        run.assert_ok().assert_stderr_has("rebuilding it");
        assert_prompt(&run);
        assert_eq!(
            fx.build_count(),
            3,
            "{what:?}: the corrupt entry is rebuilt"
        );
        assert_contained(&fx, &[], &run);
        assert_eq!(fx.list_json()[0]["status"], "ok");

        plant(&fx.kernels_dir().join(&key).join("metadata.json"), what);
        let run = fx.run(&["kernel", "clean", "--force"]);
        run.assert_ok();
        assert_prompt(&run);
        fx.assert_nothing_cached();
    }
}

#[test]
fn hostile_tree_config_records_are_ignored() {
    for what in EVERY {
        let (fx, _key) = cached();
        let record = ktstr_sdk::paths::tree_record(&fx.cache, &common::canon(&fx.tree));
        assert!(
            record.exists(),
            "the build records the tree's configuration"
        );
        plant(&record, what);
        let run = fx.build(&[]);
        run.assert_ok();
        assert_prompt(&run);
        assert_contained(&fx, &[], &run);
    }
}

/// A tarball whose name carries no version: keyable only through the
/// version memo under `<cache>/state/tarball`.
fn unnamed_tarball(fx: &Fixture) -> (PathBuf, PathBuf) {
    let work = fx.root.path().join("tarball-work");
    fs::create_dir_all(&work).unwrap();
    let made = make_tarball(&work, "6.99.4", &work);
    let tarball = work.join("kernel-source.tar.xz");
    fs::rename(made, &tarball).unwrap();
    let sha = ktstr_sdk::hash::sha256_file(&tarball).unwrap().0;
    let memo = ktstr_sdk::paths::plugin_state(&fx.cache, "tarball").join(format!("{sha}.version"));
    (tarball, memo)
}

#[test]
fn hostile_version_memos_are_ignored_and_rebuilt() {
    for what in EVERY {
        let fx = fixture(false);
        let (tarball, memo) = unnamed_tarball(&fx);
        let spec = tarball.to_str().unwrap();
        let key = fx.run(&["build", "--kernel", spec]).cached_key();
        assert_eq!(fs::read_to_string(&memo).unwrap().trim(), "6.99.4");
        plant(&memo, what);
        let run = fx.run(&["build", "--kernel", spec]);
        run.assert_ok();
        assert_prompt(&run);
        assert_eq!(run.hit_key(), key, "{what:?}: the same kernel, found again");
        assert_contained(&fx, &["tarball-work"], &run);
    }
}

#[test]
fn hostile_lock_files_do_not_hang_ktstr_locks() {
    for what in EVERY {
        let (fx, _key) = cached();
        let lock = fx.cache.join(".locks").join("source-0badf00d.lock");
        plant(&lock, what);
        let run = fx.run(&["locks", "--json"]);
        run.assert_ok();
        assert_prompt(&run);
        assert_contained(&fx, &[], &run);
    }
}

#[test]
fn hostile_credentials_files_are_refused_naming_the_file() {
    for what in EVERY {
        let (fx, key) = cached();
        let creds = fx.root.path().join("credentials");
        plant(&creds, what);
        let fx = fx
            .with_env("KTSTR_S3_ENDPOINT", "http://127.0.0.1:9")
            .with_env("KTSTR_S3_BUCKET", "kernels")
            .with_env("KTSTR_S3_PROFILE", "ci")
            .with_env("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap());
        let run = fx.run(&["cache", "push", &key, "--plugin", "s3-cache"]);
        assert_refused(&fx, &run, creds.to_str().unwrap(), &["credentials"]);
        assert!(
            run.error_text().contains(described_as(what)),
            "{what:?}\n{}",
            run.describe()
        );
    }
}

#[test]
fn a_tampered_version_memo_never_keys_a_tree_by_a_version_it_does_not_have() {
    let fx = fixture(false);
    let (tarball, memo) = unnamed_tarball(&fx);
    let spec = tarball.to_str().unwrap();
    let first = fx.run(&["build", "--kernel", spec]);
    let key = first.cached_key();
    fx.run(&["kernel", "clean", "--force"]).assert_ok();
    fs::write(&memo, "6.1.0\n").unwrap();

    let run = fx.run(&["build", "--kernel", spec]);
    assert_refused(&fx, &run, "says 6.1.0", &["tarball-work"]);
    assert!(run.error_text().contains("6.99.4"), "{}", run.describe());
    fx.assert_nothing_cached();
    assert_eq!(
        fs::read_to_string(&memo).unwrap().trim(),
        "6.99.4",
        "corrected"
    );

    let again = fx.run(&["build", "--kernel", spec]);
    assert_eq!(again.cached_key(), key);
    assert!(fx.list_json().iter().all(|e| e["version"] == "6.99.4"));
}

// ---------------------------------------------------------------------------
// Cache entries: symlinked key directories, same-size corruption.

#[test]
fn a_symlinked_key_directory_is_never_followed() {
    let (fx, key) = cached();
    let outside = fx.root.path().join("outside-entry");
    fs::rename(fx.kernels_dir().join(&key), &outside).unwrap();
    symlink(&outside, fx.kernels_dir().join(&key)).unwrap();
    let image_before = fs::read(outside.join("bzImage")).unwrap();

    let list = fx.run(&["kernel", "list", "--json"]);
    list.assert_ok();
    assert_eq!(list.json()[0]["status"], "corrupt", "{}", list.describe());
    assert!(list.stdout.contains("symlink"), "{}", list.describe());

    let run = fx.build(&[]);
    run.assert_ok().assert_stderr_has("symlink");
    assert_eq!(
        fx.build_count(),
        2,
        "rebuilt, not served from outside the root"
    );
    assert!(
        !run.image_path().starts_with(&outside),
        "served from the symlink target\n{}",
        run.describe()
    );
    let entry = fx.kernels_dir().join(&key);
    assert!(
        fs::symlink_metadata(&entry).unwrap().is_dir(),
        "replaced by a real entry"
    );
    assert_eq!(
        fs::read(outside.join("bzImage")).unwrap(),
        image_before,
        "target untouched"
    );
    assert_contained(&fx, &["outside-entry"], &run);
}

#[test]
fn kernel_clean_removes_a_symlinked_key_without_touching_its_target() {
    let (fx, key) = cached();
    let outside = fx.root.path().join("outside-entry");
    fs::rename(fx.kernels_dir().join(&key), &outside).unwrap();
    symlink(&outside, fx.kernels_dir().join(&key)).unwrap();
    let run = fx.run(&["kernel", "clean", "--force"]);
    run.assert_ok();
    fx.assert_nothing_cached();
    assert!(outside.join("bzImage").is_file(), "the target survives");
    assert!(outside.join("metadata.json").is_file());
}

/// Bit rot: flip one byte of `path`, keeping its size and mtime, so that
/// only a digest can tell.
fn rot_byte(path: &Path) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    flip_byte(path);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Flip one byte of `path` in place (same size).
fn flip_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(path, bytes).unwrap();
}

#[test]
fn kernel_verify_finds_same_size_corruption_and_the_next_build_rebuilds() {
    for artifact in ["bzImage", "vmlinux", "config"] {
        let (fx, key) = cached();
        let ok = fx.run(&["kernel", "verify"]);
        ok.assert_ok();
        assert!(
            ok.stdout.contains(&key) && ok.stdout.contains(" ok"),
            "{}",
            ok.describe()
        );

        // Bit rot: same size, same mtime; only the digest can tell.
        rot_byte(&fx.kernels_dir().join(&key).join(artifact));
        let served = fx.build(&[]);
        assert_eq!(served.hit_key(), key, "a hit does not hash (docs/cache.md)");
        let run = fx.run(&["kernel", "verify", &key, "--json"]);
        run.assert_fails();
        let rows = run.json();
        assert_eq!(rows[0]["key"], key);
        assert_eq!(rows[0]["status"], "corrupt");
        assert_eq!(rows[0]["removed"], true);
        assert!(
            rows[0]["problems"][0]
                .as_str()
                .unwrap()
                .starts_with(artifact),
            "{}",
            rows[0]
        );
        assert!(
            fx.entries_on_disk().is_empty(),
            "a corrupt entry is removed"
        );

        let run = fx.build(&[]);
        assert_eq!(run.cached_key(), key);
        assert_eq!(fx.build_count(), 2, "{artifact}: rebuilt");
        fx.run(&["kernel", "verify", &key]).assert_ok();
        assert_contained(&fx, &[], &run);
    }
}

#[test]
fn a_hit_never_serves_an_artifact_rewritten_in_place() {
    for artifact in ["bzImage", "vmlinux", "config"] {
        let (fx, key) = cached();
        let path = fx.kernels_dir().join(&key).join(artifact);
        flip_byte(&path);
        // Newer than metadata.json, whatever the clock granularity.
        let later = std::time::SystemTime::now() + Duration::from_secs(2);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let run = fx.build(&[]);
        run.assert_ok()
            .assert_stderr_has(&format!(
                "{artifact} was modified after the entry was stored"
            ))
            .assert_stderr_has("rebuilding it");
        assert_eq!(fx.build_count(), 2, "{artifact}: rebuilt, not served");
        fx.run(&["kernel", "verify", &key]).assert_ok();
        assert_contained(&fx, &[], &run);
    }
}

#[test]
fn kernel_verify_of_unknown_and_malformed_keys_fails_naming_them() {
    let fx = fixture(false);
    for key in ["6.99.0-local-x86_64-00000000", "../../etc", ""] {
        let run = fx.run(&["kernel", "verify", key, "--json"]);
        run.assert_fails();
        let rows = run.json();
        assert_eq!(rows[0]["key"], key);
        assert_ne!(rows[0]["status"], "ok");
        assert_contained(&fx, &[], &run);
    }
}

#[test]
fn cache_push_refuses_a_locally_corrupted_entry() {
    let (fx, key) = cached();
    rot_byte(&fx.kernels_dir().join(&key).join("bzImage"));
    // The remote is never reached: the entry is checked first.
    let fx = fx
        .with_env("KTSTR_S3_ENDPOINT", "http://127.0.0.1:9")
        .with_env("KTSTR_S3_BUCKET", "kernels")
        .with_env("KTSTR_S3_REGION", "us-east-1")
        .with_env("KTSTR_S3_RETRIES", "0")
        .with_env("AWS_ACCESS_KEY_ID", "x")
        .with_env("AWS_SECRET_ACCESS_KEY", "y");
    let run = fx.run(&["cache", "push", &key, "--plugin", "s3-cache"]);
    assert_refused(&fx, &run, "is corrupt: bzImage", &[]);
    run.assert_hint();
    run.assert_stderr_lacks("pushed");
}

// ---------------------------------------------------------------------------
// Archives whose headers lie.

/// One 512-byte ustar header.
fn header(name: &str, size: u64, kind: u8, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(if kind == b'5' { b"0000755" } else { b"0000644" });
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar stream under construction.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn entry(&mut self, name: &str, kind: u8, link: &str, body: &[u8], declared: u64) -> &mut Self {
        self.0
            .extend_from_slice(&header(name, declared, kind, link));
        self.0.extend_from_slice(body);
        let pad = (512 - body.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn file(&mut self, name: &str, body: &[u8]) -> &mut Self {
        self.entry(name, b'0', "", body, body.len() as u64)
    }
    fn pax(&mut self, records: &[(&str, &str)]) -> &mut Self {
        let mut body = String::new();
        for (k, v) in records {
            let rest = format!(" {k}={v}\n");
            let mut len = rest.len() + 1;
            while format!("{len}{rest}").len() != len {
                len += 1;
            }
            body.push_str(&format!("{len}{rest}"));
        }
        self.entry(
            "././@PaxHeader",
            b'x',
            "",
            body.as_bytes(),
            body.len() as u64,
        )
    }
    fn kernel_top(&mut self) -> &mut Self {
        let makefile = fs::read(common::fixture_src().join("Makefile")).unwrap();
        self.entry("linux-6.99.0/", b'5', "", b"", 0)
            .file("linux-6.99.0/Makefile", &makefile)
    }
    fn finish(&mut self, path: &Path) {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        fs::write(path, &self.0).unwrap();
    }
}

/// A config capping unpacked bytes at 1 MiB.
fn capped(fx: Fixture) -> Fixture {
    let config = fx.write_file(
        "config.toml",
        "[plugin.tarball]\nmax_unpacked_bytes = 1048576\n",
    );
    fx.with_env("KTSTR_CONFIG", config.to_str().unwrap())
}

#[test]
fn archives_that_lie_about_sizes_or_carry_huge_records_are_refused() {
    type Build = fn(&mut Tar);
    let cases: [(&str, Build, &str); 8] = [
        // Header says 0 bytes, PAX says 4 MiB, 4 MiB follow.
        (
            "pax-size-lie",
            |t| {
                t.kernel_top().pax(&[("size", "4194304")]).entry(
                    "linux-6.99.0/big",
                    b'0',
                    "",
                    &vec![b'a'; 4 << 20],
                    0,
                );
            },
            "PAX record gives",
        ),
        // PAX size agrees with the header but passes the cap.
        (
            "pax-size-over-cap",
            |t| {
                t.kernel_top()
                    .pax(&[("size", "2097152")])
                    .file("linux-6.99.0/big", &vec![b'a'; 2 << 20]);
            },
            "max_unpacked_bytes",
        ),
        // Many files, each under the cap, together over it.
        (
            "many-files-over-cap",
            |t| {
                t.kernel_top();
                for i in 0..5 {
                    t.file(&format!("linux-6.99.0/f{i}"), &vec![b'a'; 300 << 10]);
                }
            },
            "max_unpacked_bytes",
        ),
        // A PAX header far larger than any real one.
        (
            "huge-pax-header",
            |t| {
                let long = "a".repeat(2 << 20);
                t.kernel_top()
                    .pax(&[("comment", &long)])
                    .file("linux-6.99.0/x", b"x");
            },
            "PAX header of",
        ),
        // A GNU long name larger than any path.
        (
            "huge-gnu-long-name",
            |t| {
                let long = vec![b'a'; 2 << 20];
                t.kernel_top()
                    .entry("././@LongLink", b'L', "", &long, long.len() as u64)
                    .file("linux-6.99.0/x", b"x");
            },
            "GNU long name of",
        ),
        // A GNU long name that escapes the tree.
        (
            "gnu-long-name-escape",
            |t| {
                let name = format!("linux-6.99.0/{}/../../../../escaped\0", "d".repeat(120));
                t.kernel_top()
                    .entry(
                        "././@LongLink",
                        b'L',
                        "",
                        name.as_bytes(),
                        name.len() as u64,
                    )
                    .file("linux-6.99.0/innocent", b"x");
            },
            "contains `..`",
        ),
        // A PAX path that escapes the tree.
        (
            "pax-path-escape",
            |t| {
                t.kernel_top()
                    .pax(&[("path", "../../escaped")])
                    .file("linux-6.99.0/innocent", b"x");
            },
            "contains `..`",
        ),
        // A GNU sparse entry.
        (
            "gnu-sparse",
            |t| {
                t.kernel_top()
                    .entry("linux-6.99.0/sparse", b'S', "", b"", 0);
            },
            "unsupported entry type",
        ),
    ];
    for (name, build, needle) in cases {
        let fx = capped(fixture(false));
        let tarball = fx.root.path().join(format!("{name}.tar"));
        let mut tar = Tar::default();
        build(&mut tar);
        tar.finish(&tarball);
        let run = fx.run(&["build", "--kernel", tarball.to_str().unwrap()]);
        assert_refused(&fx, &run, needle, &[name, "config"]);
        assert!(
            !fx.root.path().join("escaped").exists() && !fx.cache.join("escaped").exists(),
            "{name}: escaped"
        );
        let scratch = fx.cache.join("scratch");
        let left: Vec<_> = fs::read_dir(&scratch)
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{name}: scratch left behind: {left:?}");
        fx.assert_nothing_cached();
    }
}

#[test]
fn pax_and_gnu_long_names_within_bounds_still_unpack() {
    let fx = fixture(false);
    let tarball = fx.root.path().join("long-names.tar");
    let mut tar = Tar::default();
    let long = format!("linux-6.99.0/{}/file", "d".repeat(150));
    let gnu = format!("{long}\0");
    tar.kernel_top()
        .pax(&[("path", &long), ("size", "2")])
        .file("linux-6.99.0/short-name", b"ok")
        .entry("././@LongLink", b'L', "", gnu.as_bytes(), gnu.len() as u64)
        .file("linux-6.99.0/other", b"ok");
    // The rest of the fixture tree, so the build can run.
    let src = common::fixture_src();
    for rel in ["Kconfig", "fixture.c"] {
        tar.file(
            &format!("linux-6.99.0/{rel}"),
            &fs::read(src.join(rel)).unwrap(),
        );
    }
    add_dir(&mut tar, &src.join("arch"), "linux-6.99.0/arch");
    tar.finish(&tarball);
    let run = fx.run(&[
        "build",
        "--kernel",
        tarball.to_str().unwrap(),
        "--keep-source",
    ]);
    run.assert_ok();
    assert_contained(&fx, &["long-names"], &run);
}

fn add_dir(tar: &mut Tar, dir: &Path, name: &str) {
    tar.entry(&format!("{name}/"), b'5', "", b"", 0);
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let child = format!("{name}/{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            add_dir(tar, &entry.path(), &child);
        } else {
            tar.file(&child, &fs::read(entry.path()).unwrap());
        }
    }
}

// ---------------------------------------------------------------------------
// Spec forms.

#[test]
fn tarball_specs_with_fragments_in_every_form() {
    let fx = fixture(false);
    let work = fx.root.path().join("tarballs");
    let tarball = make_tarball(&work.join("w"), "6.99.5", &work);
    let sha = ktstr_sdk::hash::sha256_file(&tarball).unwrap().0;
    let abs = tarball.display().to_string();
    let rel = format!("./tarballs/{}.tar.xz", stem("6.99.5"));

    for spec in [
        format!("{abs}#sha256={sha}"),
        format!("{rel}#sha256={sha}"),
        format!("file://{abs}#sha256={sha}"),
        format!("{abs}#sha256={}", sha.to_uppercase()),
    ] {
        let run = fx.run(&["build", "--kernel", &spec]);
        run.assert_ok();
        assert_contained(&fx, &["tarballs"], &run);
    }
    for (spec, needle) in [
        (format!("{abs}#foo=bar"), "unknown fragment #foo=bar"),
        (format!("{rel}#foo=bar"), "unknown fragment #foo=bar"),
        (format!("file://{abs}#foo=bar"), "unknown fragment #foo=bar"),
        (format!("{abs}#sha256=abc"), "64 hex digits"),
        (
            format!("{abs}#sha256={}", "0".repeat(64)),
            "sha256 mismatch",
        ),
        ("6.99.5#foo=bar".to_string(), "unknown fragment #foo=bar"),
        (
            format!("{}#tag=v1", fx.tree.display()),
            "unknown fragment #tag=v1",
        ),
    ] {
        let run = fx.run(&["build", "--kernel", &spec]);
        assert_refused(&fx, &run, needle, &["tarballs"]);
        run.assert_hint();
    }
}

#[test]
fn a_directory_named_like_a_release_is_ambiguous_not_a_silent_local_build() {
    for name in ["6.99.3", "6.99", "6.98..6.99"] {
        let fx = fixture(false);
        let dir = fx.root.path().join(name);
        common::copy_dir(&common::fixture_src(), &dir);
        let run = fx.run(&["build", "--kernel", name]);
        assert_refused(&fx, &run, "is ambiguous", &[name]);
        assert!(
            run.error_text().contains(&format!("./{name}")),
            "both readings\n{}",
            run.describe()
        );
        run.assert_hint();
        assert_eq!(fx.build_count(), 0);

        // Written as a path, it is the directory.
        let run = fx.run(&["build", "--kernel", &format!("./{name}")]);
        run.assert_ok();
        assert!(run.image_path().starts_with(&dir), "{}", run.describe());
    }
}

#[test]
fn network_errors_name_the_spec_that_needed_them() {
    let fx = fixture(false)
        .with_env("KTSTR_KERNEL_MIRROR", "http://127.0.0.1:9")
        .with_env("KTSTR_RELEASES_URL", "http://127.0.0.1:9/releases.json");
    for spec in ["99.99.99", "99.99", "99.98..99.99", "99.99.1..99.99.5"] {
        let run = fx.run(&["build", "--kernel", spec]);
        assert_refused(&fx, &run, &format!("--kernel {spec}"), &[]);
        let first = run.error_text().lines().next().unwrap();
        assert_eq!(
            first.matches("--kernel ").count(),
            1,
            "the spec is named once\n{}",
            run.describe()
        );
    }
}

#[test]
fn a_huge_range_names_only_releases_that_exist() {
    let fx = fixture(false);
    let mirror = fx.root.path().join("mirror");
    let series = mirror.join("v6.x");
    let work = fx.root.path().join("mirror-work");
    let tarball = make_tarball(&work, "6.99.2", &series);
    let sha = ktstr_sdk::hash::sha256_file(&tarball).unwrap().0;
    fs::write(
        series.join("sha256sums.asc"),
        format!("{sha}  {}.tar.xz\n", stem("6.99.2")),
    )
    .unwrap();
    let releases = fx.root.path().join("releases.json");
    fs::write(&releases, r#"{"releases": []}"#).unwrap();
    let fx = fx
        .with_env(
            "KTSTR_KERNEL_MIRROR",
            &format!("file://{}", mirror.display()),
        )
        .with_env(
            "KTSTR_RELEASES_URL",
            &format!("file://{}", releases.display()),
        );

    let run = fx.run(&["build", "--kernel", "6.99.0..6.99.999999"]);
    run.assert_ok();
    assert_prompt(&run);
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "one member\n{}",
        run.describe()
    );

    let run = fx.run(&["build", "--kernel", "6.99.3..6.99.999999"]);
    assert_refused(
        &fx,
        &run,
        "no release in this range",
        &["mirror", "releases.json"],
    );
}

#[test]
fn a_long_extraversion_is_cut_from_the_key_not_a_panic() {
    for extra in ["-".to_string() + &"x".repeat(200), "-rc1+".repeat(60)] {
        let fx = fixture(true);
        let makefile = fx.tree.join("Makefile");
        let text = fs::read_to_string(&makefile).unwrap().replacen(
            "EXTRAVERSION =\n",
            &format!("EXTRAVERSION = {extra}\n"),
            1,
        );
        fs::write(&makefile, text).unwrap();
        common::git(&fx.tree, &["commit", "-qam", "long extraversion"]);
        let run = fx.build(&[]);
        run.assert_ok();
        let key = run.cached_key();
        assert!(key.len() <= 160, "{key}");
        fx.build(&[]).hit_key();
        assert_contained(&fx, &[], &run);
    }
}

// ---------------------------------------------------------------------------
// stdout closed early.

/// Run with stdout a pipe whose reading end is already closed.
fn run_with_closed_stdout(fx: &Fixture, args: &[&str]) -> Run {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut cmd = fx.command(args);
    cmd.stdout(std::process::Stdio::from(write));
    cmd.stderr(std::process::Stdio::piped());
    let start = std::time::Instant::now();
    let out = cmd.output().unwrap();
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        status: out.status,
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

#[test]
fn a_closed_stdout_is_not_an_error_for_any_command() {
    let (fx, key) = cached();
    for args in [
        vec!["plugins", "list"],
        vec!["plugins", "list", "--json"],
        vec!["plugins", "info", "tarball"],
        vec!["kernel", "list"],
        vec!["kernel", "list", "--json"],
        vec!["kernel", "verify"],
        vec!["locks"],
        vec!["build", "--kernel", fx.tree.to_str().unwrap()],
        vec!["--help"],
        vec!["--version"],
    ] {
        let run = run_with_closed_stdout(&fx, &args);
        assert_eq!(run.code(), Some(0), "{args:?}\n{}", run.describe());
        run.assert_stderr_lacks("Broken pipe").assert_no_panic();
        run.assert_stderr_lacks("error");
    }
    let _ = key;
    // With a real pipe too: `ktstr plugins list | head -1` under pipefail.
    let script = format!(
        "set -o pipefail; {} plugins list | head -1 >/dev/null",
        common::ktstr_bin().display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .env("KTSTR_CACHE_DIR", &fx.cache)
        .env("XDG_CONFIG_HOME", fx.root.path().join("xdg-config"))
        .env("TMPDIR", fx.root.path().join("tmp"))
        .current_dir(fx.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Broken pipe"),
        "{out:?}"
    );
}
