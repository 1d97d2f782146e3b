//! `ktstr plugins list`: every built-in plugin is registered; `ktstr
//! plugins new --kind cache`: the scaffold passes its own conformance test
//! as generated and works as a cache tier through the real binary.

mod common;

use std::path::Path;

use common::Fixture;

const BUILT_INS: [(&str, &str); 5] = [
    ("local", "source"),
    ("none", "reserver"),
    ("kconfig", "configurer"),
    ("kbuild", "builder"),
    ("local-cache", "cache"),
];

#[test]
fn built_in_plugins_are_listed_as_json() {
    let fx = Fixture::git();
    let run = fx.run(&["plugins", "list", "--json"]);
    run.assert_ok();
    let json = run.json();
    let plugins = json
        .as_array()
        .unwrap_or_else(|| panic!("an array\n{}", run.describe()));
    // Libraries that failed to load (the dynamic-plugin fixtures next to
    // the binary) are rows without a kind; they are tested elsewhere.
    for p in plugins.iter().filter(|p| p["status"] == "ok") {
        let kind = p["kind"].as_str().unwrap_or_else(|| panic!("kind: {p}"));
        assert!(
            [
                "source",
                "reserver",
                "configurer",
                "builder",
                "cache",
                "verifier"
            ]
            .contains(&kind),
            "unknown kind in {p}"
        );
        assert!(
            p["name"].as_str().is_some_and(|s| !s.is_empty()),
            "name: {p}"
        );
        assert!(
            p["version"].as_str().is_some_and(|s| !s.is_empty()),
            "version: {p}"
        );
        assert!(
            p["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "summary: {p}"
        );
    }
    for (name, kind) in BUILT_INS {
        assert!(
            plugins
                .iter()
                .any(|p| p["name"] == name && p["kind"] == kind),
            "built-in {kind} plugin {name:?} missing from {json:#}"
        );
    }
}

#[test]
fn plain_plugins_list_names_the_built_ins() {
    let fx = Fixture::git();
    let run = fx.run(&["plugins", "list"]);
    run.assert_ok();
    for (name, _) in BUILT_INS {
        assert!(
            run.stdout.contains(name),
            "{name} missing\n{}",
            run.describe()
        );
    }
}

/// Issue 17: a new cache plugin starts with passing tests. The scaffold's
/// own tests/conformance.rs runs every rule of the cache conformance suite
/// (none skipped) and passes unedited; built, the library is a working
/// tier behind `--plugin`: a build is stored in its directory and a fresh
/// local cache hits there instead of building again.
#[test]
fn scaffolded_cache_passes_its_conformance_test_and_stores_and_hits() {
    let fx = Fixture::git();
    let dir = common::scaffold(&fx, "team-cache", "cache");

    let out = common::cargo_in_scaffold(&dir, &["test", "--quiet", "--test", "conformance"]);
    let text = common::output_text(&out);
    assert!(out.status.success(), "the scaffold's tests fail:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the conformance test did not run:\n{text}"
    );
    assert!(
        !text.contains("skipped:"),
        "the scaffold's conformance test must check every rule:\n{text}"
    );

    let out = common::cargo_in_scaffold(&dir, &["build", "--quiet", "--message-format=short"]);
    assert!(out.status.success(), "{}", common::output_text(&out));
    let libs = fx.root.path().join("libs");
    std::fs::create_dir_all(&libs).unwrap();
    let so = "libktstr_plugin_team_cache.so";
    let built = common::scaffold_target().join("debug").join(so);
    std::fs::copy(built, libs.join(so)).unwrap();

    let kernels = fx.root.path().join("team-kernels");
    let config = fx.write_file(
        "config.toml",
        &format!(
            "[plugin.team-cache]\ndir = {:?}\n",
            kernels.to_str().unwrap()
        ),
    );
    let fx = fx
        .with_env("KTSTR_CONFIG", config.to_str().unwrap())
        .with_env("KTSTR_PLUGIN_PATH", libs.to_str().unwrap());
    let plugin = ["--plugin", "team-cache"];
    let run = fx.build(&plugin);
    let image = run.image_path();
    let key = run.cached_key();
    let entry = kernels.join(&key);
    for file in [
        image.file_name().unwrap(),
        "config".as_ref(),
        "metadata.json".as_ref(),
    ] {
        assert!(
            entry.join(file).is_file(),
            "the team-cache tier lacks {key}/{}\n{}",
            Path::new(file).display(),
            run.describe()
        );
    }

    let list = fx.run(&["kernel", "list", "--json", "--plugin", "team-cache"]);
    let rows = list.assert_ok().json();
    let tiers: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"] == key.as_str())
        .filter_map(|r| r["tier"].as_str())
        .collect();
    assert_eq!(tiers, ["local-cache", "team-cache"], "{}", list.describe());

    // Another machine: an empty local cache hits in the team-cache tier.
    std::fs::remove_dir_all(&fx.cache).unwrap();
    let hit = fx.build(&plugin);
    hit.image_path();
    assert_eq!(hit.hit_key(), key, "{}", hit.describe());
    assert_eq!(fx.build_count(), 1, "the hit must not build again");
    let list = fx.run(&["kernel", "list", "--json"]);
    let rows = list.assert_ok().json();
    let local = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key.as_str())
        .unwrap_or_else(|| panic!("the hit was not copied locally\n{}", list.describe()));
    let from = local["pulled_from"].as_str().unwrap_or_default();
    assert!(
        from.starts_with(&format!("team-cache cache at {}", kernels.display())),
        "the local copy must say it came from team-cache: {local}"
    );
}
