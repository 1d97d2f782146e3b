//! `--json` output of `build`, `cache pull` and `kernel clean`: the exact
//! field sets (a rename fails here; docs/cli.md "JSON output" is the
//! contract) and the outcomes they report.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Fixture, make_tarball};
use ktstr_test_servers::Nginx;
use serde_json::Value;

#[track_caller]
fn fields(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

#[track_caller]
fn assert_fields(v: &Value, want: &[&str]) {
    assert_eq!(fields(v), want.iter().copied().collect(), "{v:#}");
}

const BUILD_FIELDS: &[&str] = &[
    "key",
    "outcome",
    "reason",
    "image",
    "vmlinux",
    "config",
    "metadata",
    "tree",
    "durations",
    "verify",
];
const DURATION_FIELDS: &[&str] = &["total_ms", "configure_ms", "build_ms"];

#[track_caller]
fn is_file(v: &Value) -> bool {
    v.as_str().is_some_and(|p| Path::new(p).is_file())
}

#[test]
fn build_json_reports_built_then_hit() {
    let fx = Fixture::git();
    let run = fx.build(&["--json"]);
    run.assert_ok();
    let built = run.json();
    assert_fields(&built, BUILD_FIELDS);
    assert_fields(&built["durations"], DURATION_FIELDS);
    assert_eq!(built["outcome"], "built");
    assert_eq!(
        built["key"],
        run.cached_key().as_str(),
        "the key stderr names"
    );
    assert!(
        built["reason"].is_null() && built["tree"].is_null(),
        "{built}"
    );
    for f in ["image", "vmlinux", "config", "metadata"] {
        assert!(is_file(&built[f]), "{f}: {built:#}");
    }
    assert!(built["durations"]["build_ms"].is_u64(), "{built:#}");
    assert!(built["durations"]["total_ms"].is_u64(), "{built:#}");

    let run = fx.build(&["--json"]);
    let hit = run.json();
    assert_fields(&hit, BUILD_FIELDS);
    assert_eq!(hit["outcome"], "hit", "{}", run.describe());
    assert_eq!(hit["key"], built["key"]);
    assert_eq!(hit["image"], built["image"]);
    assert_eq!(
        hit["durations"]["build_ms"], built["durations"]["build_ms"],
        "a hit reports the entry's recorded build time"
    );

    // Without --json stdout stays the image path alone.
    assert_eq!(fx.build(&[]).image_path().to_str(), built["image"].as_str());
}

#[test]
fn build_json_says_why_a_build_was_not_cached() {
    let fx = Fixture::git();
    fx.dirty_tracked_file();
    let run = fx.build(&["--json"]);
    run.assert_ok();
    let v = run.json();
    assert_fields(&v, BUILD_FIELDS);
    assert_eq!(v["outcome"], "not-cached");
    assert_eq!(v["reason"], "dirty");
    assert!(v["key"].is_null() && v["metadata"].is_null(), "{v:#}");
    assert!(is_file(&v["image"]), "{v:#}");

    let plain = Fixture::plain();
    let v = plain.build(&["--json"]).json();
    assert_eq!(
        (v["outcome"].as_str(), v["reason"].as_str()),
        (Some("not-cached"), Some("not-git"))
    );
}

const PULL_FIELDS: &[&str] = &[
    "key",
    "outcome",
    "from",
    "image",
    "vmlinux",
    "config",
    "metadata",
    "duration_ms",
];

/// Machine A builds and pushes to an HTTP tier; B's `cache pull --json`
/// and C's `build --json` report `pulled`, their second runs
/// `present` and `hit`.
#[test]
fn pulled_entries_are_reported_as_pulled() {
    let Some(server) = Nginx::start() else { return };
    let url = server.url();
    let machine = || {
        Fixture::plain()
            .with_env("KTSTR_HTTP_CACHE_URL", &url)
            .with_env("KTSTR_HTTP_CACHE_RETRIES", "0")
    };
    let shared = tempfile::tempdir().unwrap();
    let work = shared.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let spec = make_tarball(&work, "6.99.8", shared.path());
    let spec = spec.to_str().unwrap();
    let build = |fx: &Fixture| {
        fx.run(&[
            "build",
            "--kernel",
            spec,
            "--plugin",
            "http-cache",
            "--json",
        ])
    };

    let a = machine();
    let built = build(&a).json();
    assert_eq!(built["outcome"], "built", "{built:#}");
    let key = built["key"].as_str().unwrap().to_string();

    let b = machine();
    let run = b.run(&["cache", "pull", &key, "--plugin", "http-cache", "--json"]);
    run.assert_ok();
    let pulled = run.json();
    assert_fields(&pulled, PULL_FIELDS);
    assert_eq!(pulled["outcome"], "pulled");
    assert_eq!(pulled["from"], "http-cache");
    assert_eq!(pulled["key"], key.as_str());
    for f in ["image", "vmlinux", "config", "metadata"] {
        assert!(is_file(&pulled[f]), "{f}: {pulled:#}");
    }
    let again = b
        .run(&["cache", "pull", &key, "--plugin", "http-cache", "--json"])
        .json();
    assert_fields(&again, PULL_FIELDS);
    assert_eq!(again["outcome"], "present");
    assert!(again["from"].is_null());

    let c = machine();
    let first = build(&c).json();
    assert_eq!(first["outcome"], "pulled", "{first:#}");
    assert_eq!(c.build_count(), 0);
    let second = build(&c).json();
    assert_eq!(
        second["outcome"], "hit",
        "an old backfill is a hit: {second:#}"
    );
}

const CLEAN_FIELDS: &[&str] = &["dry_run", "removed", "kept", "freed", "pruned_locks"];
const REMOVAL_FIELDS: &[&str] = &["key", "tier", "size", "reason"];

#[test]
fn clean_json_lists_what_went_and_the_space_freed() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    let size = fx.list_json()[0]["size"].as_u64().expect("list has sizes");
    assert!(size > 0);

    let dry = fx.run(&["kernel", "clean", "--dry-run", "--json"]);
    dry.assert_ok();
    let v = dry.json();
    assert_fields(&v, CLEAN_FIELDS);
    assert_eq!(v["dry_run"], true);
    assert_fields(&v["removed"][0], REMOVAL_FIELDS);
    assert_eq!(v["removed"][0]["key"], key.as_str());
    assert_eq!(v["freed"], size);
    assert_eq!(
        fx.entries_on_disk(),
        vec![key.clone()],
        "dry run removed nothing"
    );

    let run = fx.run(&["kernel", "clean", "--force", "--json", &key]);
    run.assert_ok();
    let v = run.json();
    assert_fields(&v, CLEAN_FIELDS);
    assert_eq!(v["dry_run"], false);
    assert_eq!(
        v["removed"][0],
        serde_json::json!({"key": key, "tier": "local-cache", "size": size, "reason": "named"})
    );
    assert_eq!(v["freed"], size);
    assert_eq!(v["kept"], serde_json::json!([]));
    assert!(fx.entries_on_disk().is_empty());
}

/// `kernel list --json` rows: every field of a usable entry and of a
/// corrupt one.
#[test]
fn list_json_rows_have_a_stable_field_set() {
    let fx = Fixture::git();
    let image = fx.build(&[]).image_path();
    let row = &fx.list_json()[0];
    assert_fields(
        row,
        &[
            "key",
            "status",
            "version",
            "profile",
            "arch",
            "source",
            "built_at",
            "last_used",
            "size",
            "image",
            "vmlinux",
            "location",
            "origin",
            "pulled_from",
            "fragments",
            "kernelrelease",
            "image_name",
            "config_sha256",
            "builder",
            "toolchain",
            "components",
            "strip",
            "build",
            "log",
            "verify",
            "tier",
        ],
    );
    assert!(row["size"].as_u64().is_some_and(|s| s > 0), "{row}");
    std::fs::write(image.parent().unwrap().join("metadata.json"), "{").unwrap();
    let row = &fx.list_json()[0];
    assert_fields(row, &["key", "status", "reason", "size", "tier"]);
    assert!(row["size"].is_null());
}
