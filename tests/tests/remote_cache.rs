//! Two cache roots sharing a bucket behave like two machines: the first
//! builds and uploads, the second downloads instead of building. A remote
//! that is down costs one warning, never the build. Runs against a real
//! `s3s-fs` (SigV4-checking S3 server) on loopback; skips with the reason
//! when it is not installed (.ci/run installs it).

mod common;

use std::path::{Path, PathBuf};

use common::Fixture;
use ktstr_test_servers::{S3Server, free_port};

/// A fixture ("machine") whose ktstr uses the bucket at `port`.
fn machine(port: u16) -> Fixture {
    Fixture::plain().on_s3(port)
}

fn build(fx: &Fixture, spec: &Path) -> common::Run {
    fx.run(&[
        "build",
        "--kernel",
        spec.to_str().unwrap(),
        "--plugin",
        "s3-cache",
    ])
}

#[test]
fn a_second_machine_downloads_instead_of_building() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.5");

    let a = machine(s3.port);
    let built = build(&a, &spec);
    built.image_path();
    built.assert_stderr_lacks("warning");
    let key = built.cached_key();
    assert!(s3.objects() >= 2, "archive and manifest uploaded");

    let b = machine(s3.port);
    let pulled = build(&b, &spec);
    assert_eq!(pulled.hit_key(), key, "{}", pulled.describe());
    pulled.assert_stderr_has("came from");
    assert_eq!(b.build_count(), 0, "the second machine must not build");
    let image = pulled.image_path();
    assert!(image.starts_with(&b.cache), "backfilled into b's own cache");
    no_staging_left(&b.cache);

    let list = b.run(&["kernel", "list", "--json"]);
    let rows = list.json();
    assert!(
        rows[0]["pulled_from"]
            .as_str()
            .is_some_and(|s| s.starts_with("s3-cache")),
        "{}",
        list.describe()
    );
    let remote = b.run(&["kernel", "list", "--json", "--plugin", "s3-cache"]);
    let tiers: Vec<String> = remote
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tier"].as_str().unwrap().to_string())
        .collect();
    assert!(tiers.contains(&"s3-cache".to_string()), "{tiers:?}");
    // A remote row names the archive, not local files it does not have.
    let rows = remote.json();
    let row = (rows.as_array().unwrap().iter())
        .find(|r| r["tier"] == "s3-cache")
        .unwrap();
    assert!(row["image"].is_null(), "{row}");
    assert!(
        row["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("s3://")),
        "{row}"
    );
    assert!(
        row["pulled_from"].is_null(),
        "a pushed entry claims an origin: {row}"
    );

    // Explicit pull onto a third machine.
    let c = machine(s3.port);
    let run = c.run(&["cache", "pull", &key, "--plugin", "s3-cache"]);
    run.assert_ok();
    assert!(run.stdout.trim().starts_with(c.cache.to_str().unwrap()));
    no_staging_left(&c.cache);
}

/// The host removed the staging a remote hit was unpacked into.
fn no_staging_left(cache: &std::path::Path) {
    let left: Vec<String> = std::fs::read_dir(cache.join("scratch"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cache-staging-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

#[test]
fn read_only_never_writes_and_a_down_remote_costs_a_warning() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.6");

    let ro = machine(s3.port).with_env("KTSTR_S3_READ_ONLY", "1");
    build(&ro, &spec).image_path();
    assert_eq!(s3.objects(), 0, "a read-only tier uploaded something");
    let push = ro.run(&[
        "cache",
        "push",
        &build(&ro, &spec).hit_key(),
        "--plugin",
        "s3-cache",
    ]);
    push.assert_fails().assert_stderr_has("read-only");

    // The same cache root with a writable tier: an explicit push uploads it,
    // and a fresh machine then pulls instead of building.
    let key = build(&ro, &spec).hit_key();
    let mut rw = machine(s3.port);
    rw.cache = ro.cache.clone();
    rw.run(&["cache", "push", &key, "--plugin", "s3-cache"])
        .assert_ok()
        .assert_stderr_has("pushed");
    assert!(s3.objects() >= 2);
    let fresh = machine(s3.port);
    assert_eq!(build(&fresh, &spec).hit_key(), key);
    assert_eq!(fresh.build_count(), 0);

    // Nothing listens on this port: the build goes on, with a warning.
    let down = machine(free_port());
    let run = build(&down, &spec);
    run.image_path();
    run.assert_stderr_has("s3-cache: not using it for the rest of this run")
        .assert_stderr_has("hint: is the server reachable?");
    assert_eq!(
        run.stderr.matches("warning").count(),
        1,
        "one warning for a down remote\n{}",
        run.describe()
    );
}

/// Flip one byte of every archive in the bucket, keeping its size.
fn damage_archives(s3: &S3Server) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, n);
            } else if p.to_string_lossy().ends_with(".tar.zst") {
                let mut bytes = std::fs::read(&p).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x10;
                std::fs::write(&p, &bytes).unwrap();
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&s3.bucket_dir(), &mut n);
    n
}

#[test]
fn an_entry_damaged_at_rest_is_repaired_and_push_tells_the_truth() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.7");
    let a = machine(s3.port);
    let key = build(&a, &spec).cached_key();
    assert_eq!(damage_archives(&s3), 1);

    // B finds it damaged (one warning, with the hint), builds, and its
    // store replaces the bad copy.
    let b = machine(s3.port);
    let run = build(&b, &spec);
    assert_eq!(run.cached_key(), key);
    run.assert_stderr_has(&format!("not using s3-cache entry {key}"))
        .assert_stderr_has("sha256")
        .assert_stderr_has(&format!(
            "hint: the next successful build of {key} replaces it"
        ))
        .assert_stderr_lacks("not using it; not using it");
    assert_eq!(b.build_count(), 1);
    // C downloads the repaired entry instead of building.
    let c = machine(s3.port);
    assert_eq!(build(&c, &spec).hit_key(), key);
    assert_eq!(c.build_count(), 0);

    // A push of the entry the bucket holds (B's build) checks it and says
    // nothing was uploaded.
    let push = b.run(&["cache", "push", &key, "--plugin", "s3-cache"]);
    push.assert_ok()
        .assert_stderr_has("verified")
        .assert_stderr_has("nothing uploaded");
    // A's own build of the key (the fixture's builds differ byte-wise)
    // replaces it, and says so.
    a.run(&["cache", "push", &key, "--plugin", "s3-cache"])
        .assert_ok()
        .assert_stderr_has("uploaded; replaced another build of it");
    // A push over a damaged copy says so and replaces it (every archive
    // is damaged: B's, now garbage, and A's, the current one).
    assert!(damage_archives(&s3) >= 1);
    let push = a.run(&["cache", "push", &key, "--plugin", "s3-cache"]);
    push.assert_ok()
        .assert_stderr_has("replacing it")
        .assert_stderr_has("uploaded; replaced the damaged copy");
    let d = machine(s3.port);
    assert_eq!(build(&d, &spec).hit_key(), key);
    assert_eq!(d.build_count(), 0);
    // The origin names the tier once.
    let rows = d.run(&["kernel", "list", "--json"]).json();
    let from = rows[0]["pulled_from"].as_str().unwrap().to_string();
    assert!(
        from.starts_with("s3-cache s3://") && !from.contains("s3-cache s3-cache"),
        "{from}"
    );
}

#[test]
fn a_missing_bucket_is_said_once_with_a_hint() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.8");
    let m = machine(s3.port)
        .with_env("KTSTR_S3_BUCKET", "kernelz")
        .with_env("KTSTR_S3_READ_ONLY", "1");
    let run = build(&m, &spec);
    run.image_path();
    run.assert_stderr_has("bucket kernelz does not exist")
        .assert_stderr_has("hint: check the bucket name");
    assert_eq!(
        run.stderr.matches("does not exist").count(),
        1,
        "once per run\n{}",
        run.describe()
    );
}

#[test]
fn refused_credentials_warn_with_the_documented_hint() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.9");
    let m = machine(s3.port).with_env("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-0000");
    let run = build(&m, &spec);
    run.image_path();
    run.assert_stderr_has("s3-cache: not using it for the rest of this run")
        .assert_stderr_has("hint: check that the credentials (AWS_ACCESS_KEY_ID");
}

/// No server needed: a tier that is never reached still sweeps what a
/// push killed with -9 left, whenever a command opens it (a local hit too).
#[test]
fn a_killed_push_leaves_nothing_after_the_next_command() {
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.10");
    let m = machine(free_port());
    build(&m, &spec).image_path();
    // What `kill -9` during a push leaves: the tier's scratch with a
    // packed archive, owned by a pid that no longer runs.
    let dead = m
        .cache
        .join(format!(".tmp-remote@s3-cache.0-{}", i32::MAX - 1));
    std::fs::create_dir_all(dead.join("push-1")).unwrap();
    std::fs::write(dead.join("push-1/archive.tar.zst"), vec![0u8; 1 << 20]).unwrap();
    let hit = build(&m, &spec);
    hit.hit_key();
    assert!(!dead.exists(), "a cache hit left {}", dead.display());
}

#[test]
fn kernel_clean_says_it_skips_a_read_only_tier() {
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.11");
    let m = machine(free_port()).with_env("KTSTR_S3_READ_ONLY", "1");
    build(&m, &spec).image_path();
    let run = m.run(&["kernel", "clean", "--force", "--plugin", "s3-cache"]);
    run.assert_ok()
        .assert_stderr_has("not cleaning s3-cache")
        .assert_stderr_has("it is read-only");
}

/// Every `manifests/<key>.json` object s3s-fs holds on disk.
fn manifests(s3: &S3Server) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.parent().is_some_and(|d| d.ends_with("manifests"))
                && p.extension().is_some_and(|x| x == "json")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&s3.bucket_dir(), &mut out);
    out
}

/// A remote entry whose recorded inputs differ from the wanted ones (here:
/// its manifest rewritten at rest) is never installed: the second machine
/// warns, builds, and its own entry records the real inputs.
#[test]
fn a_remote_entry_built_from_other_inputs_is_never_installed() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let spec = common::fixture_tarball(shared.path(), "6.99.17");
    let a = machine(s3.port);
    let key = build(&a, &spec).cached_key();

    let found = manifests(&s3);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&found[0]).unwrap()).unwrap();
    let comps = manifest["metadata"]["components"].as_array_mut().unwrap();
    let toolchain = comps.iter_mut().find(|c| c["name"] == "toolchain").unwrap();
    let real = toolchain["value"].as_str().unwrap().to_string();
    toolchain["value"] = "cc: some other compiler".into();
    std::fs::write(&found[0], serde_json::to_vec(&manifest).unwrap()).unwrap();

    let b = machine(s3.port);
    let run = build(&b, &spec);
    run.image_path();
    run.assert_stderr_has(&format!(
        "entry {key} in s3-cache was built from other inputs (toolchain differs); not using it"
    ))
    .assert_stderr_lacks("came from");
    assert_eq!(b.build_count(), 1, "the second machine must build");
    assert_eq!(run.cached_key(), key);
    let local = std::fs::read_to_string(b.kernels_dir().join(&key).join("metadata.json")).unwrap();
    assert!(local.contains(&real), "{local}");
    assert!(!local.contains("some other compiler"), "{local}");
}
