//! `ktstr plugins list`: every built-in plugin is registered.

mod common;

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
            ["source", "reserver", "configurer", "builder", "cache"].contains(&kind),
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
