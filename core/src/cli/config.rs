//! `ktstr config`: the effective configuration for this host, each value
//! with where it came from (built-in default, config file and line,
//! environment variable, flag), like `git config --show-origin`.
//!
//! The values are the ones `ktstr build` would use: stage selection goes
//! through the same setup (so a plugin library that provides a reserver
//! shows up as the reserver), and the flags accepted here are the build's
//! own selection flags, so `ktstr config --reserver none` answers "what
//! would this build use". Secrets (passwords, tokens, secret keys) are
//! shown as `(redacted)`.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

use crate::config::{self, Config, Origin, Traced};
use crate::progress::LABEL;
use crate::registry::{DEFAULT_BUILDER, DEFAULT_CONFIGURER, DEFAULT_RESERVER};
use crate::stage_setup::{self, Overrides};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print a JSON array of {name, value, origins: [{kind, ...}]}.
    #[arg(long)]
    pub json: bool,
    /// As `ktstr build --plugin`: load a plugin and use its stages.
    #[arg(long = "plugin", value_name = "NAME|PATH")]
    pub plugins: Vec<String>,
    /// As `ktstr build --reserver`.
    #[arg(long, value_name = "NAME")]
    pub reserver: Option<String>,
}

/// Environment variables the host reads itself; any other `KTSTR_*`
/// variable is a plugin's (or the fixture's) and is listed as such.
const HOST_ENV: &[&str] = &[
    config::CONFIG_ENV,
    ktstr_sdk::paths::CACHE_DIR_ENV,
    super::build::CPU_CAP_ENV,
    super::build::BYPASS_ENV,
    crate::dynamic::search::PLUGIN_PATH_ENV,
];

/// One row of the output.
struct Row {
    name: String,
    value: Value,
    origins: Vec<Origin>,
}

impl Row {
    fn new(name: impl Into<String>, value: impl Into<Value>, origin: Origin) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
            origins: vec![origin],
        }
    }
}

pub fn run(args: &ConfigArgs) -> Result<()> {
    let env = |name: &str| ktstr_sdk::paths::env_nonempty(name);
    let config = Config::load()?;
    let host = config::hostname();
    let traced = config.traced(&host);
    let from_file = |name: &str| traced.iter().find(|t| t.name == name);
    let mut rows = Vec::new();

    let path = Config::default_path();
    let file_value = match (&path, &config.path) {
        (_, Some(p)) => p.display().to_string(),
        (Some(p), None) => format!("{} (absent: built-in defaults)", p.display()),
        (None, None) => "(none: HOME is not set)".to_string(),
    };
    rows.push(Row::new("config_file", file_value, Config::path_origin()));
    rows.push(Row::new("host", host.clone(), Origin::System));
    let matched = config.matched_hosts(&host);
    if !matched.is_empty() {
        rows.push(Row {
            name: "hosts".into(),
            value: json!(matched.iter().map(|(p, _)| p).collect::<Vec<_>>()),
            origins: matched.into_iter().map(|(_, o)| o).collect(),
        });
    }

    // Stage selection, as the build would make it.
    let overrides = Overrides {
        plugins: args.plugins.clone(),
        reserver: args.reserver.clone(),
    };
    let flags_given = !args.plugins.is_empty() || args.reserver.is_some();
    let selection = match stage_setup::setup(&overrides) {
        Ok(setup) => Some(setup.selection),
        // A bad flag is the user's to fix now; a plugin the file names
        // that does not load is what they may be here to debug.
        Err(e) if flags_given => return Err(e.into()),
        Err(e) => {
            eprintln!(
                "{LABEL}: warning: cannot select stages ({}); showing the config file's values",
                e.message
            );
            None
        }
    };
    let plugin_origins = || -> Vec<Origin> {
        let mut o = from_file("plugins")
            .map(|t| t.origins.clone())
            .unwrap_or_default();
        if !args.plugins.is_empty() {
            o.push(flag("--plugin"));
        }
        o
    };
    for (name, default, selected, flag_value) in [
        (
            "reserver",
            DEFAULT_RESERVER,
            selection.as_ref().map(|s| s.reserver.clone()),
            args.reserver.as_deref(),
        ),
        (
            "configurer",
            DEFAULT_CONFIGURER,
            selection.as_ref().map(|s| s.configurer.clone()),
            None,
        ),
        (
            "builder",
            DEFAULT_BUILDER,
            selection.as_ref().map(|s| s.builder.clone()),
            None,
        ),
    ] {
        let file = from_file(name);
        let file_value = file.and_then(|t| t.value.as_str().map(str::to_string));
        let value = selected
            .or_else(|| flag_value.map(str::to_string))
            .or_else(|| file_value.clone())
            .unwrap_or_else(|| default.to_string());
        let origins = if flag_value == Some(value.as_str()) {
            vec![flag(&format!("--{name}"))]
        } else if file_value.as_deref() == Some(value.as_str()) {
            file.map(|t| t.origins.clone()).unwrap_or_default()
        } else if value != default {
            // Selected by a plugin listed in `plugins` or with --plugin.
            plugin_origins()
        } else {
            vec![Origin::Default]
        };
        rows.push(Row {
            name: name.into(),
            value: value.into(),
            origins,
        });
    }
    let caches = match &selection {
        Some(s) => s.cache_tiers().iter().map(|c| c.to_string()).collect(),
        None => {
            let mut c = vec!["local-cache".to_string()];
            if let Some(Value::Array(more)) = from_file("caches").map(|t| &t.value) {
                c.extend(more.iter().filter_map(|v| v.as_str().map(str::to_string)));
            }
            c
        }
    };
    let mut cache_origins = vec![Origin::Default];
    if let Some(t) = from_file("caches") {
        cache_origins.extend(t.origins.iter().cloned());
    }
    if caches.len()
        > 1 + from_file("caches")
            .and_then(|t| t.value.as_array())
            .map_or(0, Vec::len)
    {
        cache_origins.extend(plugin_origins());
    }
    rows.push(Row {
        name: "caches".into(),
        value: json!(caches),
        origins: cache_origins,
    });
    let mut plugins: Vec<Value> = from_file("plugins")
        .and_then(|t| t.value.as_array().cloned())
        .unwrap_or_default();
    plugins.extend(args.plugins.iter().map(|p| json!(p)));
    rows.push(Row {
        name: "plugins".into(),
        value: Value::Array(plugins),
        origins: {
            let o = plugin_origins();
            if o.is_empty() {
                vec![Origin::Default]
            } else {
                o
            }
        },
    });

    // Build defaults the config file may set (`ktstr build` flags win).
    for (name, default) in [
        (
            "arch",
            Value::from(format!("{} (the host's)", std::env::consts::ARCH)),
        ),
        ("toolchain", Value::from("gcc")),
        (
            "cross_compile",
            Value::from("(for a foreign --arch: the usual triplet found on PATH)"),
        ),
        ("kconfig", json!([])),
        ("verifier", Value::from(crate::registry::DEFAULT_VERIFIER)),
        ("verify", Value::from(false)),
        (
            "verify_timeout",
            Value::from(crate::pipeline::verify::DEFAULT_TIMEOUT_TEXT),
        ),
    ] {
        rows.push(match from_file(name) {
            Some(t) => Row {
                name: name.into(),
                value: t.value.clone(),
                origins: t.origins.clone(),
            },
            None => Row::new(name, default, Origin::Default),
        });
    }

    // Host settings read from the environment only.
    let cache_dir = ktstr_sdk::paths::cache_root()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(none: {})", e.message));
    let cache_origin = if env(ktstr_sdk::paths::CACHE_DIR_ENV).is_some() {
        env_origin(ktstr_sdk::paths::CACHE_DIR_ENV)
    } else if env("XDG_CACHE_HOME").is_some() {
        env_origin("XDG_CACHE_HOME")
    } else {
        Origin::Default
    };
    rows.push(Row::new("cache_dir", cache_dir, cache_origin));
    let cpu_cap_env = super::build::CPU_CAP_ENV;
    rows.push(match env(cpu_cap_env) {
        Some(v) => Row::new("cpu_cap", v, env_origin(cpu_cap_env)),
        None => Row::new(
            "cpu_cap",
            "(the reserver's default: 30% of the allowed CPUs for llc)",
            Origin::Default,
        ),
    });
    let bypass = super::build::BYPASS_ENV;
    rows.push(match env(bypass) {
        Some(_) => Row::new("bypass_llc_locks", true, env_origin(bypass)),
        None => Row::new("bypass_llc_locks", false, Origin::Default),
    });
    let dirs = crate::dynamic::search::search_dirs();
    rows.push(Row {
        name: "plugin_dirs".into(),
        value: json!(
            dirs.iter()
                .map(|d| d.path.display().to_string())
                .collect::<Vec<_>>()
        ),
        origins: if env(crate::dynamic::search::PLUGIN_PATH_ENV).is_some() {
            vec![
                env_origin(crate::dynamic::search::PLUGIN_PATH_ENV),
                Origin::Default,
            ]
        } else {
            vec![Origin::Default]
        },
    });

    // Plugin tables, then the environment plugins read.
    for t in traced.iter().filter(|t| t.name.starts_with("plugin.")) {
        rows.push(redacted(t));
    }
    let mut plugin_env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, v)| k.starts_with("KTSTR_") && !v.is_empty())
        .filter(|(k, _)| !HOST_ENV.contains(&k.as_str()))
        .collect();
    plugin_env.sort();
    for (name, value) in plugin_env {
        let value = if is_secret(&name) {
            "(redacted)".to_string()
        } else {
            value
        };
        rows.push(Row::new(name.clone(), value, env_origin(&name)));
    }

    print(&rows, args.json)
}

fn flag(name: &str) -> Origin {
    Origin::Flag { name: name.into() }
}

fn env_origin(name: &str) -> Origin {
    Origin::Env { name: name.into() }
}

/// Whether a setting's name says its value is a credential.
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "token", "secret", "credential"]
        .iter()
        .any(|s| name.contains(s))
}

fn redacted(t: &Traced) -> Row {
    Row {
        name: t.name.clone(),
        value: if is_secret(&t.name) {
            "(redacted)".into()
        } else {
            t.value.clone()
        },
        origins: t.origins.clone(),
    }
}

/// A string as itself, anything else as JSON (`["a","b"]`, `5`, `true`).
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print(rows: &[Row], as_json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| json!({"name": r.name, "value": r.value, "origins": r.origins}))
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let origin = |r: &Row| {
        r.origins
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let width = rows.iter().map(|r| origin(r).len()).max().unwrap_or(0);
    for r in rows {
        writeln!(out, "{:<width$}  {}={}", origin(r), r.name, show(&r.value))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_by_name() {
        for secret in [
            "KTSTR_HTTP_CACHE_PASSWORD",
            "KTSTR_HTTP_CACHE_TOKEN",
            "plugin.s3-cache.secret_access_key",
        ] {
            assert!(is_secret(secret), "{secret}");
        }
        for plain in ["KTSTR_KERNEL_MIRROR", "plugin.s3-cache.bucket", "reserver"] {
            assert!(!is_secret(plain), "{plain}");
        }
    }
}
