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
use serde::{Deserialize, Serialize};

use crate::registry::Selection;

pub const CONFIG_ENV: &str = "KTSTR_CONFIG";

/// Settings that may appear at the top level or in a `[hosts."…"]` table.
/// Serialized (unset keys left out) to walk them by name in [`Config::traced`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configurer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
    /// Cache tiers after `local-cache`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caches: Option<Vec<String>>,
    /// Plugin libraries (or built-ins) to load, as with `--plugin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugins: Option<Vec<String>>,
    /// `[plugin.<name>]` settings tables.
    #[serde(default)]
    pub plugin: BTreeMap<String, toml::Table>,
    /// Default `--arch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Default `--toolchain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    /// Default `--cross-compile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_compile: Option<String>,
    /// kconfig lines applied after `--extra-kconfig` files and before
    /// `--kconfig` flags (`["CONFIG_KASAN=y"]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kconfig: Option<Vec<String>>,
    /// The verifier `--verify` runs (default `qemu`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    /// Boot-check every new build, as if `--verify` were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// Default `--verify-timeout` (`"120s"`, `"5m"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_timeout: Option<String>,
}

/// Where a setting's value came from, as `ktstr config` shows it (like
/// `git config --show-origin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Built in.
    Default,
    /// Asked of the system (the host name).
    System,
    /// A `key = value` line of the config file.
    File { path: PathBuf, line: usize },
    /// An environment variable.
    Env { name: String },
    /// A command-line flag.
    Flag { name: String },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::System => f.write_str("system"),
            Origin::File { path, line } => write!(f, "file:{}:{line}", path.display()),
            Origin::Env { name } => write!(f, "env:{name}"),
            Origin::Flag { name } => write!(f, "flag:{name}"),
        }
    }
}

/// One effective setting from the file, with every line that made it: one
/// for a replaced value, several for a `plugins` list that adds up.
#[derive(Debug, Clone, PartialEq)]
pub struct Traced {
    /// `reserver`, `plugins`, `plugin.<name>.<key>`.
    pub name: String,
    pub value: serde_json::Value,
    pub origins: Vec<Origin>,
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
    /// The file's text, to locate settings a plugin refuses.
    pub text: Option<String>,
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
    arch: Option<String>,
    toolchain: Option<String>,
    cross_compile: Option<String>,
    kconfig: Option<Vec<String>>,
    verifier: Option<String>,
    verify: Option<bool>,
    verify_timeout: Option<String>,
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
        use ktstr_sdk::fsread::{Follow, SMALL_FILE_LIMIT, read_text};
        match read_text(&path, "config file", SMALL_FILE_LIMIT, Follow::Yes) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind == ktstr_sdk::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(e) => Err(e.with_hint(format!("fix or unset {CONFIG_ENV}"))),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| describe_position(text, s.start));
            StageError::invalid_input(format!(
                "config file {}{}: {}",
                path.display(),
                at.as_deref().unwrap_or(""),
                e.message().trim_end()
            ))
            .with_hint("see `ktstr docs config` for the keys and their types")
        })?;
        Ok(Config {
            path: Some(path.to_path_buf()),
            host_order: host_order(text, &file.hosts),
            text: Some(text.to_string()),
            hosts: file.hosts,
            settings: Settings {
                reserver: file.reserver,
                configurer: file.configurer,
                builder: file.builder,
                caches: file.caches,
                plugins: file.plugins,
                plugin: file.plugin,
                arch: file.arch,
                toolchain: file.toolchain,
                cross_compile: file.cross_compile,
                kconfig: file.kconfig,
                verifier: file.verifier,
                verify: file.verify,
                verify_timeout: file.verify_timeout,
            },
        })
    }

    /// Where [`Self::default_path`] came from: `$KTSTR_CONFIG`, or the
    /// default location (under `$XDG_CONFIG_HOME` or `$HOME`).
    pub fn path_origin() -> Origin {
        if env_nonempty(CONFIG_ENV).is_some() {
            Origin::Env {
                name: CONFIG_ENV.into(),
            }
        } else if env_nonempty("XDG_CONFIG_HOME").is_some() {
            Origin::Env {
                name: "XDG_CONFIG_HOME".into(),
            }
        } else {
            Origin::Default
        }
    }

    /// The `[hosts."…"]` patterns matching `host`, in the order applied,
    /// each with the line of its table.
    pub fn matched_hosts(&self, host: &str) -> Vec<(String, Origin)> {
        let lines = self.key_lines();
        self.host_order
            .iter()
            .filter(|p| glob_match(p, host))
            .map(|p| {
                let at = ["hosts".to_string(), p.clone()];
                (p.clone(), self.origin_at(&lines, &at))
            })
            .collect()
    }

    /// The settings the file gives `host`, each with the lines it came
    /// from: the same merge as [`Self::for_host`], traced. Unset keys are
    /// left out (the caller knows the defaults).
    pub fn traced(&self, host: &str) -> Vec<Traced> {
        let lines = self.key_lines();
        let mut layers: Vec<(Vec<String>, &Settings)> = vec![(Vec::new(), &self.settings)];
        for pattern in self.host_order.iter().filter(|p| glob_match(p, host)) {
            layers.push((vec!["hosts".into(), pattern.clone()], &self.hosts[pattern]));
        }
        let mut out: Vec<Traced> = Vec::new();
        let mut upsert =
            |name: String, value: serde_json::Value, origin: Origin, add: bool| match out
                .iter_mut()
                .find(|t| t.name == name)
            {
                Some(t) if add => {
                    t.value = value;
                    t.origins.push(origin);
                }
                Some(t) => {
                    t.value = value;
                    t.origins = vec![origin];
                }
                None => out.push(Traced {
                    name,
                    value,
                    origins: vec![origin],
                }),
            };
        let mut plugins: Vec<serde_json::Value> = Vec::new();
        for (prefix, settings) in layers {
            let at = |keys: &[&str]| {
                let mut path = prefix.clone();
                path.extend(keys.iter().map(|k| k.to_string()));
                self.origin_at(&lines, &path)
            };
            let serde_json::Value::Object(fields) =
                serde_json::to_value(settings).unwrap_or_default()
            else {
                continue;
            };
            for (key, value) in fields {
                match (key.as_str(), value) {
                    ("plugin", serde_json::Value::Object(tables)) => {
                        for (plugin, table) in tables {
                            let serde_json::Value::Object(table) = table else {
                                continue;
                            };
                            for (k, v) in table {
                                let origin = at(&["plugin", &plugin, &k]);
                                upsert(format!("plugin.{plugin}.{k}"), v, origin, false);
                            }
                        }
                    }
                    // Lists of libraries add up (see `Settings::overlay`).
                    ("plugins", serde_json::Value::Array(more)) => {
                        for p in more {
                            if !plugins.contains(&p) {
                                plugins.push(p);
                            }
                        }
                        let value = serde_json::Value::Array(plugins.clone());
                        upsert(key.clone(), value, at(&[&key]), true);
                    }
                    (_, value) => upsert(key.clone(), value, at(&[&key]), false),
                }
            }
        }
        out
    }

    fn origin_at(&self, lines: &BTreeMap<Vec<String>, usize>, path: &[String]) -> Origin {
        Origin::File {
            path: self.path.clone().unwrap_or_default(),
            line: lines.get(path).copied().unwrap_or(0),
        }
    }

    /// The line of every key in the file, by its path (`["hosts", "ci-*",
    /// "reserver"]`); a table's path gives its header's line.
    fn key_lines(&self) -> BTreeMap<Vec<String>, usize> {
        fn walk(
            text: &str,
            table: &toml::de::DeTable<'_>,
            prefix: &mut Vec<String>,
            out: &mut BTreeMap<Vec<String>, usize>,
        ) {
            for (key, value) in table {
                prefix.push(key.get_ref().to_string());
                out.entry(prefix.clone())
                    .or_insert_with(|| line_of(text, key.span().start));
                if let toml::de::DeValue::Table(inner) = value.get_ref() {
                    walk(text, inner, prefix, out);
                }
                prefix.pop();
            }
        }
        let mut out = BTreeMap::new();
        if let Some(text) = &self.text
            && let Ok(doc) = toml::de::DeTable::parse(text)
        {
            walk(text, doc.get_ref(), &mut Vec::new(), &mut out);
        }
        out
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
        take!(
            reserver,
            configurer,
            builder,
            caches,
            arch,
            toolchain,
            cross_compile,
            kconfig,
            verifier,
            verify,
            verify_timeout
        );
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
        if let Some(v) = &s.verifier {
            sel.verifier = v.clone();
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

/// ` line N (key `k`)` for an error at byte `offset`: the line, and the
/// key assigned on it when the line is a `key = value` line.
fn describe_position(text: &str, offset: usize) -> String {
    let line = line_of(text, offset);
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match key {
        Some(key) => format!(" line {line} (key `{key}`)"),
        None => format!(" line {line}"),
    }
}

/// Where in `text` the `[plugin.<plugin>]` settings are (top level or in a
/// `[hosts."…".plugin.<plugin>]` table): the line of the first `key = value`
/// whose key `message` names, else the table's header line.
pub fn locate_plugin_setting(text: &str, plugin: &str, message: &str) -> Option<String> {
    let headers = [
        format!("[plugin.{plugin}]"),
        format!("[plugin.\"{plugin}\"]"),
    ];
    let mut in_table = false;
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_table = headers.iter().any(|h| {
                trimmed == h || (trimmed.ends_with(&h[1..]) && trimmed.contains(".plugin."))
            });
            if in_table && header_line.is_none() {
                header_line = Some(i + 1);
            }
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some((key, _)) = trimmed.split_once('=') {
            let key = key.trim().trim_matches('"');
            let named = message.match_indices(key).any(|(at, _)| {
                let before = message[..at].chars().next_back();
                let after = message[at + key.len()..].chars().next();
                let boundary = |c: Option<char>| {
                    c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                };
                boundary(before) && boundary(after)
            });
            if !key.is_empty() && named {
                return Some(format!("line {} (key `{key}`)", i + 1));
            }
        }
    }
    header_line.map(|l| format!("line {l} ([plugin.{plugin}])"))
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
        assert!(err.message.contains("line 2"), "{err:?}");
    }

    #[test]
    fn wrong_types_name_the_key_and_the_line() {
        let err = parse("reserver = \"llc\"\ncaches = \"s3-cache\"\n").unwrap_err();
        assert!(err.message.contains("line 2 (key `caches`)"), "{err}");
        let err = parse("# c\n\nreserver = 5\n").unwrap_err();
        assert!(err.message.contains("line 3 (key `reserver`)"), "{err}");
        assert!(err.message.contains("string"), "{err}");
        let err = parse("[hosts.\"x\"]\nplugins = [1]\n").unwrap_err();
        assert!(err.message.contains("line 2 (key `plugins`)"), "{err}");
    }

    #[test]
    fn build_variant_defaults_apply_per_host() {
        let cfg = parse(
            r#"
toolchain = "gcc"
kconfig = ["CONFIG_KASAN=y"]
[hosts."arm-ci-*"]
arch = "arm64"
toolchain = "llvm"
"#,
        )
        .unwrap();
        let dev = cfg.for_host("dev").settings;
        assert_eq!((dev.arch, dev.toolchain.as_deref()), (None, Some("gcc")));
        let ci = cfg.for_host("arm-ci-2").settings;
        assert_eq!(ci.arch.as_deref(), Some("arm64"));
        assert_eq!(ci.toolchain.as_deref(), Some("llvm"));
        assert_eq!(ci.kconfig.unwrap(), ["CONFIG_KASAN=y"]);
    }

    #[test]
    fn boot_check_settings_apply_per_host() {
        let cfg = parse(
            r#"
verify_timeout = "5m"
verifier = "acme-smoke"
[hosts."ci-*"]
verify = true
"#,
        )
        .unwrap();
        let dev = cfg.for_host("dev");
        assert_eq!(dev.settings.verify, None);
        assert_eq!(dev.settings.verify_timeout.as_deref(), Some("5m"));
        assert_eq!(dev.selection().unwrap().verifier, "acme-smoke");
        assert_eq!(cfg.for_host("ci-3").settings.verify, Some(true));
        assert_eq!(
            Selection::default().verifier,
            crate::registry::DEFAULT_VERIFIER
        );
        let err = parse("verify = \"yes\"\n").unwrap_err();
        assert!(err.message.contains("line 1 (key `verify`)"), "{err}");
    }

    #[test]
    fn empty_file_is_defaults() {
        let sel = parse("").unwrap().for_host("x").selection().unwrap();
        assert_eq!(sel, Selection::default());
    }

    #[test]
    fn traced_settings_name_the_lines_they_came_from() {
        let cfg = parse(
            r#"# fleet
reserver = "llc"
plugins = ["acme-cache"]
[plugin.tarball]
mirror = "https://m/pub"
retries = 5

[hosts."ci-*"]
reserver = "none"
plugins = ["gpu-builder"]
[hosts."ci-*".plugin.tarball]
retries = 9
[hosts."dev"]
arch = "arm64"
"#,
        )
        .unwrap();
        let at = |line| Origin::File {
            path: "/etc/test.toml".into(),
            line,
        };
        let traced = cfg.traced("ci-1");
        let get = |name: &str| traced.iter().find(|t| t.name == name).unwrap().clone();
        assert_eq!(get("reserver").value, "none");
        assert_eq!(get("reserver").origins, [at(9)]);
        assert_eq!(
            get("plugins").value,
            serde_json::json!(["acme-cache", "gpu-builder"])
        );
        assert_eq!(get("plugins").origins, [at(3), at(10)]);
        assert_eq!(get("plugin.tarball.mirror").origins, [at(5)]);
        assert_eq!(get("plugin.tarball.retries").value, 9);
        assert_eq!(get("plugin.tarball.retries").origins, [at(12)]);
        assert!(
            traced.iter().all(|t| t.name != "arch"),
            "dev's table does not apply"
        );
        assert_eq!(cfg.matched_hosts("ci-1"), [("ci-*".to_string(), at(8))]);
        assert_eq!(at(9).to_string(), "file:/etc/test.toml:9");

        // The traced values are the merged ones, for every host.
        for host in ["ci-1", "dev", "other"] {
            let eff = serde_json::to_value(cfg.for_host(host).settings).unwrap();
            for t in cfg.traced(host) {
                let merged = match t.name.strip_prefix("plugin.") {
                    Some(rest) => {
                        let (plugin, key) = rest.split_once('.').unwrap();
                        eff["plugin"][plugin][key].clone()
                    }
                    None => eff[&t.name].clone(),
                };
                assert_eq!(merged, t.value, "{host}: {}", t.name);
            }
        }
    }

    #[test]
    fn plugin_settings_are_located_by_key_or_table() {
        let text = "reserver = \"llc\"\n[plugin.tarball]\nmirror = \"x\"\nretries = \"many\"\n\n[hosts.\"ci\".plugin.tarball]\nxz_threads = 0\n";
        assert_eq!(
            locate_plugin_setting(text, "tarball", "`retries` must be a number").as_deref(),
            Some("line 4 (key `retries`)")
        );
        assert_eq!(
            locate_plugin_setting(text, "tarball", "xz_threads must be at least 1").as_deref(),
            Some("line 7 (key `xz_threads`)")
        );
        assert_eq!(
            locate_plugin_setting(text, "tarball", "invalid type: string, expected u32").as_deref(),
            Some("line 2 ([plugin.tarball])")
        );
        assert_eq!(locate_plugin_setting(text, "s3-cache", "x"), None);
    }
}
