//! A build leaves evidence: make's whole output is kept in the entry and
//! printed by `ktstr kernel log KEY`, travels with the entry through remote
//! tiers, `-v` streams it live; metadata records the kernelrelease, step
//! durations, diagnostic counts, the make command and working reproducers;
//! a failed build of a scratch tree keeps the tree its reproduce hint names.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Fixture, Run, make_tarball};
use ktstr_test_servers::{ACCESS_KEY, BUCKET, Nginx, S3Server, SECRET_KEY};

const LOG_NAME: &str = "build.log.zst";

fn kernel_log(fx: &Fixture, key: &str) -> Run {
    fx.run(&["kernel", "log", key])
}

/// Files directly under `<cache>/scratch`.
fn scratch_names(fx: &Fixture) -> Vec<String> {
    std::fs::read_dir(fx.cache.join("scratch"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_build_keeps_make_output_and_kernel_log_prints_it() {
    let fx = Fixture::git();
    let built = fx.build(&[]);
    built.image_path();
    let key = built.cached_key();
    assert!(fx.kernels_dir().join(&key).join(LOG_NAME).is_file());
    // The plain log is gone once stored; nothing was written into the tree.
    assert!(
        !scratch_names(&fx)
            .iter()
            .any(|n| n.starts_with("buildlog-")),
        "{:?}",
        scratch_names(&fx)
    );
    assert_eq!(
        common::git(&fx.tree, &["status", "--porcelain", "--ignored"])
            .lines()
            .filter(|l| l.contains("log"))
            .count(),
        0
    );

    let log = kernel_log(&fx, &key);
    log.assert_ok();
    for line in [
        "# configuration written to .config",
        "  CC      fixture.o",
        "fixture.c:2:1: warning: a fixture warning, counted in metadata",
        "Kernel: arch/x86/boot/bzImage is ready",
    ] {
        assert!(
            log.stdout.lines().any(|l| l == line),
            "kernel log should print {line:?}\n{}",
            log.describe()
        );
    }
    assert!(
        log.stdout.contains("### ktstr: building"),
        "{}",
        log.describe()
    );
    // A hit still has it.
    assert_eq!(fx.build(&[]).hit_key(), key);
    kernel_log(&fx, &key).assert_ok();
}

#[test]
fn an_entry_without_a_log_says_so() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    // Make the entry look like one an older ktstr stored.
    let entry = fx.kernels_dir().join(&key);
    std::fs::remove_file(entry.join(LOG_NAME)).unwrap();
    let meta_path = entry.join("metadata.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["artifacts"].as_object_mut().unwrap().remove(LOG_NAME);
    meta.as_object_mut().unwrap().remove("build");
    meta.as_object_mut().unwrap().remove("kernelrelease");
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();

    assert_eq!(fx.build(&[]).hit_key(), key, "an old entry is still a hit");
    let run = kernel_log(&fx, &key);
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has(&format!("cache entry {key} has no build log"));
    assert!(run.stdout.is_empty(), "{}", run.describe());

    let row = &fx.list_json()[0];
    assert!(row["build"].is_null() && row["log"].is_null(), "{row}");

    let missing = kernel_log(&fx, "6.99.0-local-x86_64-00000000");
    missing
        .assert_fails()
        .assert_stderr_has("is not in the local cache");
    kernel_log(&fx, "../etc").assert_fails();
}

#[test]
fn metadata_records_the_evidence_and_its_reproducers_work() {
    let fx = Fixture::git();
    let frag = fx.write_file("extra.kconfig", "CONFIG_FIXTURE_EXTRA=y\n");
    let built = fx.build(&[
        "--profile",
        "tiny",
        "--extra-kconfig",
        frag.to_str().unwrap(),
    ]);
    built.image_path();
    let key = built.cached_key();
    let rows = fx.list_json();
    let row = &rows[0];
    assert_eq!(row["key"], key.as_str());
    assert_eq!(row["kernelrelease"], "6.99.0", "{row}");
    let build = &row["build"];
    assert!(build["durations"]["build_ms"].is_u64(), "{row}");
    assert!(build["durations"]["configure_ms"].is_u64(), "{row}");
    assert_eq!(
        build["warnings"], 1,
        "the fixture prints one warning: {row}"
    );
    assert_eq!(build["errors"], 0, "{row}");
    let make = build["make_command"].as_str().unwrap();
    assert!(
        make.starts_with("make -j") && make.ends_with("KCFLAGS=-Wno-error LOCALVERSION="),
        "{make}"
    );
    let inputs: Vec<&str> = build["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "source",
        "arch",
        "config",
        "builder",
        "toolchain",
        "profile",
    ] {
        assert!(inputs.contains(&name), "{name} missing from {inputs:?}");
    }
    assert!(inputs.len() > 6, "the fragment digest too: {inputs:?}");
    assert!(row["log"].as_str().unwrap().ends_with(LOG_NAME), "{row}");
    if !row["strip"].is_null() {
        assert!(row["strip"]["duration_ms"].is_u64(), "{row}");
    }

    // The ktstr reproducer rebuilds the same entry, from anywhere.
    let ktstr = build["reproduce"]["ktstr"].as_str().unwrap();
    assert!(
        ktstr.contains(&format!("--kernel {}", common::canon(&fx.tree).display()))
            && ktstr.contains("--profile tiny")
            && ktstr.contains(&common::canon(&frag).display().to_string())
            && ktstr.ends_with("--force"),
        "{ktstr}"
    );
    let words: Vec<&str> = ktstr.split(' ').collect();
    assert_eq!(&words[..2], ["ktstr", "build"]);
    let again = fx.run(&words[1..]);
    assert_eq!(again.cached_key(), key, "{}", again.describe());
    assert_eq!(fx.build_count(), 2, "--force rebuilt it");

    // The plain make reproducer builds it in a copy of the source with the
    // entry's config.
    let plain = build["reproduce"]["make"].as_str().unwrap();
    assert!(plain.ends_with(make), "{plain}");
    let copy = fx.root.path().join("copy");
    common::copy_dir(&common::fixture_src(), &copy);
    std::fs::copy(
        fx.kernels_dir().join(&key).join("config"),
        copy.join("config"),
    )
    .unwrap();
    let out = Command::new("sh")
        .args(["-c", plain])
        .current_dir(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{plain}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(copy.join("arch/x86/boot/bzImage").is_file());
}

#[test]
fn verbose_streams_make_output_live() {
    let fx = Fixture::git();
    let quiet = fx.build(&[]);
    quiet.image_path();
    quiet.assert_stderr_lacks("  CC      fixture.o");
    let loud = fx.build(&["--force", "-v"]);
    loud.image_path();
    for line in [
        "  CC      fixture.o",
        "Kernel: arch/x86/boot/bzImage is ready",
    ] {
        assert!(
            loud.stderr.lines().any(|l| l == line),
            "-v should print {line:?} as make did\n{}",
            loud.describe()
        );
    }
}

/// The path in the first backquoted `cd <dir> && ...` of the hint.
fn reproduce_dir(run: &Run) -> PathBuf {
    let text = run.error_text();
    let start = text
        .find("`cd ")
        .unwrap_or_else(|| panic!("no reproduce command\n{}", run.describe()));
    let rest = &text[start + 4..];
    PathBuf::from(&rest[..rest.find(" && ").unwrap()])
}

#[test]
fn a_failed_scratch_build_keeps_the_tree_its_hint_names() {
    let fx = Fixture::plain();
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tarball = make_tarball(&work, "6.99.3", fx.root.path());
    let frag = fx.write_file("fail.config", "CONFIG_FIXTURE_FAIL=y\n");
    let args = [
        "build",
        "--kernel",
        tarball.to_str().unwrap(),
        "--extra-kconfig",
        frag.to_str().unwrap(),
    ];
    let run = fx.run(&args);
    run.assert_fails().assert_hint();
    let dir = reproduce_dir(&run);
    assert!(
        dir.starts_with(&fx.cache),
        "a scratch tree: {}",
        dir.display()
    );
    assert!(
        dir.join("Makefile").is_file(),
        "the tree the hint names must exist\n{}",
        run.describe()
    );
    run.assert_stderr_has("is kept in")
        .assert_stderr_has("--keep-source");

    // The full log is kept and named.
    let text = run.error_text();
    let at = text.find("make's whole output is in ").unwrap() + 26;
    let log = PathBuf::from(text[at..].split(' ').next().unwrap());
    let content = std::fs::read_to_string(&log).unwrap();
    assert!(
        content.contains("fixture.c:1: error: deliberate failure"),
        "{content}"
    );

    // The reproduce command fails the same way there.
    let hint = &text[text.find("`cd ").unwrap() + 1..];
    let command = &hint[..hint.find('`').unwrap()];
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("deliberate failure"));

    // The next build (another process) does not sweep it away.
    let ok = fx.run(&["build", "--kernel", tarball.to_str().unwrap()]);
    ok.image_path();
    assert!(dir.join("Makefile").is_file(), "swept too early");
    assert!(log.is_file(), "log swept too early");
}

#[test]
fn a_failed_local_build_names_its_log() {
    let fx = Fixture::git();
    let frag = fx.write_file("fail.config", "CONFIG_FIXTURE_FAIL=y\n");
    let run = fx.build(&["--extra-kconfig", frag.to_str().unwrap()]);
    run.assert_fails();
    assert_eq!(
        common::canon(&reproduce_dir(&run)),
        common::canon(&fx.tree),
        "a local tree is reproduced in place"
    );
    run.assert_stderr_has("make's whole output is in ")
        .assert_stderr_lacks("is kept in");
}

// --- remote tiers ----------------------------------------------------------

/// Machine A builds and pushes; machine B pulls the entry (`cache pull`)
/// and a build on machine C backfills it: both print A's log.
fn log_round_trip(machine: impl Fn() -> Fixture, plugin: &str) {
    let shared = tempfile::tempdir().unwrap();
    let work = shared.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let spec = make_tarball(&work, "6.99.7", shared.path());
    let spec = spec.to_str().unwrap();

    let a = machine();
    let built = a.run(&["build", "--kernel", spec, "--plugin", plugin]);
    built.image_path();
    built.assert_stderr_lacks("warning:");
    let key = built.cached_key();
    let original = kernel_log(&a, &key);
    original.assert_ok();
    assert!(original.stdout.contains("  CC      fixture.o"));

    let b = machine();
    b.run(&["cache", "pull", &key, "--plugin", plugin])
        .assert_ok();
    let pulled = kernel_log(&b, &key);
    pulled.assert_ok();
    assert_eq!(
        pulled.stdout, original.stdout,
        "the same log after push and pull"
    );

    let c = machine();
    let hit = c.run(&["build", "--kernel", spec, "--plugin", plugin]);
    assert_eq!(hit.hit_key(), key, "{}", hit.describe());
    assert_eq!(c.build_count(), 0);
    assert_eq!(kernel_log(&c, &key).stdout, original.stdout);
    let row = &c.list_json()[0];
    assert_eq!(row["kernelrelease"], "6.99.7", "{row}");
    assert!(row["build"]["make_command"].is_string(), "{row}");
    let ktstr = row["build"]["reproduce"]["ktstr"].as_str().unwrap();
    assert!(
        !ktstr.contains(shared.path().to_str().unwrap()),
        "no local path travels: {ktstr}"
    );
}

#[test]
fn the_log_survives_an_s3_push_and_pull() {
    let Some(s3) = S3Server::start() else { return };
    let endpoint = s3.endpoint();
    log_round_trip(
        || {
            Fixture::plain()
                .with_env("KTSTR_S3_ENDPOINT", &endpoint)
                .with_env("KTSTR_S3_BUCKET", BUCKET)
                .with_env("KTSTR_S3_REGION", "us-east-1")
                .with_env("KTSTR_S3_RETRIES", "0")
                .with_env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .with_env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        },
        "s3-cache",
    );
}

#[test]
fn the_log_survives_an_http_push_and_pull() {
    let Some(server) = Nginx::start() else { return };
    let url = server.url();
    log_round_trip(
        || {
            Fixture::plain()
                .with_env("KTSTR_HTTP_CACHE_URL", &url)
                .with_env("KTSTR_HTTP_CACHE_RETRIES", "0")
        },
        "http-cache",
    );
}
