//! The config file: which plugin runs each stage on this host, and each
//! plugin's settings.
//!
//! One TOML file per user (`$KTSTR_CONFIG`, else
//! `$XDG_CONFIG_HOME/ktstr/config.toml`, else `~/.config/ktstr/config.toml`).
//! A fleet shares one file and varies it per machine with `[hosts."<glob>"]`
//! tables, matched against the host name; every matching table applies, in
//! file order, over the top-level settings. Unknown keys are errors, because
//! a misspelt `reserver` silently ignored would be a wrong build.
//!
//! ```toml
//! reserver = "llc"
//! caches = ["s3-cache"]          # tiers after the local cache
//! plugins = ["acme-cache@^1"]    # libraries loaded as if given with --plugin
//!
//! [plugin.s3-cache]
//! bucket = "kernels"
//!
//! [hosts."ci-*"]
//! reserver = "none"
//! [hosts."ci-*".plugin.s3-cache]
//! read_only = true
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ktstr_sdk::paths::env_nonempty;
use ktstr_sdk::registry::PluginConfig;
use ktstr_sdk::{Result, StageError};
use serde::Deserialize;

use crate::registry::Selection;

pub const CONFIG_ENV: &str = "KTSTR_CONFIG";

/// Settings that may appear at the top level or in a `[hosts."…"]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub reserver: Option<String>,
    pub configurer: Option<String>,
    pub builder: Option<String>,
    /// Cache tiers after `local-cache`.
    pub caches: Option<Vec<String>>,
    /// Plugin libraries (or built-ins) to load, as with `--plugin`.
    pub plugins: Option<Vec<String>>,
    /// `[plugin.<name>]` settings tables.
    #[serde(default)]
    pub plugin: BTreeMap<String, toml::Table>,
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Where it was read from (`None`: no file, defaults only).
    pub path: Option<PathBuf>,
    pub settings: Settings,
    pub hosts: BTreeMap<String, Settings>,
    /// `hosts` keys in file order (BTreeMap sorts them).
    host_order: Vec<String>,
}

/// The file's shape. `Settings` is spelt out rather than flattened: serde
/// loses unknown-key positions through `flatten`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    reserver: Option<String>,
    configurer: Option<String>,
    builder: Option<String>,
    caches: Option<Vec<String>>,
    plugins: Option<Vec<String>>,
    #[serde(default)]
    plugin: BTreeMap<String, toml::Table>,
    #[serde(default)]
    hosts: BTreeMap<String, Settings>,
}

/// The settings that apply to one host, merged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub settings: Settings,
    /// The `[hosts."…"]` patterns that matched, in the order applied.
    pub matched: Vec<String>,
}

impl Config {
    /// The default location, or `$KTSTR_CONFIG`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = env_nonempty(CONFIG_ENV) {
            return Some(PathBuf::from(p));
        }
        let base = env_nonempty("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| env_nonempty("HOME").map(|h| Path::new(&h).join(".config")))?;
        Some(base.join("ktstr").join("config.toml"))
    }

    /// Load the file ktstr would use. A missing default file means
    /// defaults; a missing `$KTSTR_CONFIG` file is an error.
    pub fn load() -> Result<Self> {
        let Some(path) = Self::default_path() else {
            return Ok(Self::default());
        };
        let explicit = env_nonempty(CONFIG_ENV).is_some();
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(e) => Err(StageError::io("read config file", &path, e)
                .with_hint(format!("fix or unset {CONFIG_ENV}"))),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| {
            StageError::invalid_input(format!("config file {}: {}", path.display(), e.message()))
                .with_hint(format!(
                    "{}; see docs/config.md for the keys",
                    e.span()
                        .map(|s| format!("at line {}", line_of(text, s.start)))
                        .unwrap_or_else(|| "fix the file".into())
                ))
        })?;
        Ok(Config {
            path: Some(path.to_path_buf()),
            host_order: host_order(text, &file.hosts),
            hosts: file.hosts,
            settings: Settings {
                reserver: file.reserver,
                configurer: file.configurer,
                builder: file.builder,
                caches: file.caches,
                plugins: file.plugins,
                plugin: file.plugin,
            },
        })
    }

    /// Merge the top level with every `[hosts."…"]` table matching `host`.
    pub fn for_host(&self, host: &str) -> Effective {
        let mut eff = Effective {
            settings: self.settings.clone(),
            matched: Vec::new(),
        };
        for pattern in &self.host_order {
            if glob_match(pattern, host) {
                eff.settings.overlay(&self.hosts[pattern]);
                eff.matched.push(pattern.clone());
            }
        }
        eff
    }
}

impl Settings {
    fn overlay(&mut self, over: &Settings) {
        macro_rules! take {
            ($($f:ident),*) => {$(if over.$f.is_some() { self.$f = over.$f.clone(); })*};
        }
        take!(reserver, configurer, builder, caches);
        // Libraries add up: a host table's `plugins` loads more, it never
        // silently drops the top-level list.
        if let Some(more) = &over.plugins {
            let mine = self.plugins.get_or_insert_with(Vec::new);
            for p in more {
                if !mine.contains(p) {
                    mine.push(p.clone());
                }
            }
        }
        for (name, table) in &over.plugin {
            let mine = self.plugin.entry(name.clone()).or_default();
            for (k, v) in table {
                mine.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Effective {
    /// The stage selection these settings describe (before `--plugin`
    /// and `--reserver` on the command line).
    pub fn selection(&self) -> Result<Selection> {
        let s = &self.settings;
        let mut sel = Selection::default();
        if let Some(r) = &s.reserver {
            sel.reserver = r.clone();
        }
        if let Some(c) = &s.configurer {
            sel.configurer = c.clone();
        }
        if let Some(b) = &s.builder {
            sel.builder = b.clone();
        }
        if let Some(c) = &s.caches {
            sel.caches.extend(c.iter().cloned());
        }
        for (name, table) in &s.plugin {
            let json = serde_json::to_value(table).map_err(|e| {
                StageError::invalid_input(format!("[plugin.{name}]: {e}"))
                    .with_hint("use plain TOML values (no dates) in plugin tables")
            })?;
            sel.configs.insert(name.clone(), json as PluginConfig);
        }
        Ok(sel)
    }
}

/// This machine's host name, for `[hosts."…"]` matching.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Shell-style match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `hosts` patterns in the order their tables first appear in the text.
fn host_order(text: &str, hosts: &BTreeMap<String, Settings>) -> Vec<String> {
    let mut found: Vec<(usize, String)> = hosts
        .keys()
        .map(|k| {
            let quoted = format!("\"{k}\"");
            let pos = text
                .match_indices("hosts")
                .filter_map(|(i, _)| {
                    let rest = text[i + 5..].trim_start_matches([' ', '.']);
                    rest.starts_with(&quoted).then_some(i)
                })
                .next()
                .unwrap_or(usize::MAX);
            (pos, k.clone())
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/test.toml"))
    }

    #[test]
    fn globs() {
        assert!(glob_match("ci-*", "ci-runner-3"));
        assert!(glob_match("*", ""));
        assert!(glob_match("build?", "build7"));
        assert!(!glob_match("ci-*", "dev-box"));
        assert!(glob_match("*-gpu-*", "ci-gpu-2"));
        assert!(!glob_match("ci", "ci-1"));
    }

    #[test]
    fn host_tables_override_in_file_order() {
        let cfg = parse(
            r#"
reserver = "llc"
caches = ["s3-cache"]
[plugin.s3-cache]
bucket = "k"
region = "eu"

[hosts."ci-*"]
reserver = "none"
[hosts."ci-*".plugin.s3-cache]
read_only = true

[hosts."ci-special"]
reserver = "fixed-cpus"
"#,
        )
        .unwrap();
        let dev = cfg.for_host("dev");
        assert_eq!(dev.settings.reserver.as_deref(), Some("llc"));
        assert!(dev.matched.is_empty());

        let ci = cfg.for_host("ci-7");
        assert_eq!(ci.settings.reserver.as_deref(), Some("none"));
        let sel = ci.selection().unwrap();
        assert_eq!(sel.reserver, "none");
        assert_eq!(sel.cache_tiers(), ["local-cache", "s3-cache"]);
        assert_eq!(sel.config("s3-cache")["read_only"], true);
        assert_eq!(sel.config("s3-cache")["bucket"], "k");

        let special = cfg.for_host("ci-special");
        assert_eq!(
            cfg.for_host("dev").settings.plugins,
            None,
            "no list anywhere stays no list"
        );
        assert_eq!(special.matched, ["ci-*", "ci-special"]);
        assert_eq!(special.settings.reserver.as_deref(), Some("fixed-cpus"));
    }

    #[test]
    fn host_plugin_lists_add_to_the_top_level_list() {
        let cfg = parse(
            r#"
plugins = ["acme-cache", "fixed-cpus"]
[hosts."ci-*"]
plugins = ["fixed-cpus", "gpu-builder"]
"#,
        )
        .unwrap();
        assert_eq!(
            cfg.for_host("ci-1").settings.plugins.unwrap(),
            ["acme-cache", "fixed-cpus", "gpu-builder"]
        );
        assert_eq!(
            cfg.for_host("dev").settings.plugins.unwrap(),
            ["acme-cache", "fixed-cpus"]
        );
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let err = parse("reserver = \"llc\"\nreserve = \"none\"\n").unwrap_err();
        assert!(err.message.contains("/etc/test.toml"), "{err}");
        assert!(err.message.contains("reserve"), "{err}");
        assert!(err.hint.as_deref().unwrap().contains("line 2"), "{err:?}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let err = parse("caches = \"s3-cache\"\n").unwrap_err();
        assert!(
            err.message.contains("caches") || err.message.contains("sequence"),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_defaults() {
        let sel = parse("").unwrap().for_host("x").selection().unwrap();
        assert_eq!(sel, Selection::default());
    }
}
