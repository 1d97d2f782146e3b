//! `ktstr config`: every effective value with its origin (default, file
//! and line, environment variable, flag), as text and as JSON, through the
//! real binary.

mod common;

use common::Fixture;
use serde_json::Value;

const CONFIG: &str = r#"# fleet settings
reserver = "llc"
plugins = []
[plugin.tarball]
mirror = "https://mirror.example/pub/linux/kernel"
[plugin.http-cache]
password = "hunter2"

[hosts."*"]
toolchain = "llvm"
[hosts."no-such-host-*"]
arch = "arm64"
"#;

fn with_config(fx: Fixture) -> (Fixture, String) {
    let path = fx.write_file("config.toml", CONFIG);
    let path = path.to_str().unwrap().to_string();
    (fx.with_env("KTSTR_CONFIG", &path), path)
}

/// The text row for `name`: `(origin, value)`.
fn row(stdout: &str, name: &str) -> (String, String) {
    let needle = format!("  {name}=");
    let line = stdout
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no {name} row in:\n{stdout}"));
    let (origin, value) = line.split_once(&needle).unwrap();
    (origin.trim().to_string(), value.to_string())
}

#[test]
fn defaults_say_so() {
    let fx = Fixture::plain();
    let run = fx.run(&["config"]);
    run.assert_ok();
    let out = &run.stdout;
    assert_eq!(row(out, "reserver"), ("default".into(), "llc".into()));
    assert_eq!(row(out, "builder"), ("default".into(), "kbuild".into()));
    assert_eq!(row(out, "toolchain"), ("default".into(), "gcc".into()));
    // The fixture points XDG_CONFIG_HOME at an empty directory.
    let (origin, file) = row(out, "config_file");
    assert_eq!(origin, "env:XDG_CONFIG_HOME");
    assert!(
        file.ends_with("ktstr/config.toml (absent: built-in defaults)"),
        "{file}"
    );
    assert_eq!(
        row(out, "cache_dir"),
        ("env:KTSTR_CACHE_DIR".into(), fx.cache.display().to_string())
    );
    assert!(
        !out.contains("hosts="),
        "no host table without a file:\n{out}"
    );
}

#[test]
fn file_lines_env_and_flags_are_origins() {
    let (fx, path) = with_config(Fixture::plain());
    let fx = fx
        .with_env("KTSTR_CPU_CAP", "3")
        .with_env("KTSTR_KERNEL_MIRROR", "file:///srv/kernel")
        .with_env("KTSTR_HTTP_CACHE_TOKEN", "s3cr3t-token");
    let run = fx.run(&["config"]);
    run.assert_ok();
    let out = &run.stdout;
    assert_eq!(
        row(out, "config_file"),
        ("env:KTSTR_CONFIG".into(), path.clone())
    );
    assert_eq!(
        row(out, "reserver"),
        (format!("file:{path}:2"), "llc".into())
    );
    assert_eq!(
        row(out, "toolchain"),
        (format!("file:{path}:10"), "llvm".into()),
        "from the matching [hosts.\"*\"] table"
    );
    assert_eq!(
        row(out, "hosts"),
        (format!("file:{path}:9"), "[\"*\"]".into())
    );
    assert_eq!(
        row(out, "arch").0,
        "default",
        "a table for other hosts does not apply"
    );
    assert_eq!(
        row(out, "plugin.tarball.mirror"),
        (
            format!("file:{path}:5"),
            "https://mirror.example/pub/linux/kernel".into()
        )
    );
    assert_eq!(
        row(out, "cpu_cap"),
        ("env:KTSTR_CPU_CAP".into(), "3".into())
    );
    assert_eq!(
        row(out, "KTSTR_KERNEL_MIRROR"),
        (
            "env:KTSTR_KERNEL_MIRROR".into(),
            "file:///srv/kernel".into()
        )
    );
    // Credentials are named, never shown.
    assert_eq!(row(out, "plugin.http-cache.password").1, "(redacted)");
    assert_eq!(row(out, "KTSTR_HTTP_CACHE_TOKEN").1, "(redacted)");
    assert!(
        !out.contains("hunter2") && !out.contains("s3cr3t-token"),
        "{out}"
    );

    let flagged = fx.run(&["config", "--reserver", "none"]);
    flagged.assert_ok();
    assert_eq!(
        row(&flagged.stdout, "reserver"),
        ("flag:--reserver".into(), "none".into())
    );
}

#[test]
fn json_names_every_origin() {
    let (fx, path) = with_config(Fixture::plain());
    let run = fx.run(&["config", "--json"]);
    run.assert_ok();
    let rows: Vec<Value> = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    let get = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
    };
    assert_eq!(get("reserver")["value"], "llc");
    assert_eq!(
        get("reserver")["origins"],
        serde_json::json!([{"kind": "file", "path": path, "line": 2}])
    );
    assert_eq!(
        get("configurer")["origins"],
        serde_json::json!([{"kind": "default"}])
    );
    assert_eq!(get("cache_dir")["origins"][0]["kind"], "env");
    assert_eq!(get("cache_dir")["origins"][0]["name"], "KTSTR_CACHE_DIR");
    assert_eq!(get("caches")["value"], serde_json::json!(["local-cache"]));
    for r in &rows {
        assert!(
            r["name"].is_string() && r["origins"].as_array().is_some_and(|o| !o.is_empty()),
            "{r}"
        );
    }
}

#[test]
fn a_broken_file_is_an_error_naming_its_line() {
    let fx = Fixture::plain();
    let path = fx.write_file("bad.toml", "reserver = \"llc\"\nreserve = \"none\"\n");
    let fx = fx.with_env("KTSTR_CONFIG", path.to_str().unwrap());
    let run = fx.run(&["config"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    run.assert_stderr_has("line 2").assert_stderr_has("reserve");
}

#[test]
fn an_unknown_reserver_flag_is_an_error() {
    let fx = Fixture::plain();
    let run = fx.run(&["config", "--reserver", "no-such-reserver"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    run.assert_stderr_has("no-such-reserver").assert_hint();
}

/// A plugin the file names that does not load is shown, with a warning,
/// not an error: `ktstr config` is where one looks when that happens.
#[test]
fn a_plugin_that_does_not_load_is_a_warning() {
    let fx = Fixture::plain();
    let path = fx.write_file("c.toml", "plugins = [\"no-such-plugin\"]\n");
    let fx = fx.with_env("KTSTR_CONFIG", path.to_str().unwrap());
    let run = fx.run(&["config"]);
    run.assert_ok()
        .assert_stderr_has("warning: cannot select stages");
    assert_eq!(
        row(&run.stdout, "plugins"),
        (
            format!("file:{}:1", path.display()),
            "[\"no-such-plugin\"]".into()
        )
    );
}
