//! One reader for a plugin's settings: its config table (`[plugin.<name>]`,
//! handed over as JSON), with environment variables on top.
//!
//! Every plugin reads its table through [`ConfigReader`], so every plugin
//! refuses the same mistakes (a table that is not a table, an unknown
//! key, a value of the wrong type) with a [`ConfigError`] that names the
//! plugin and the key; the host turns the key into a line of the config
//! file. Settings read key by key ([`ConfigReader::string`], ...) take an
//! environment variable named mechanically from the key
//! (`part_size` ↔ `KTSTR_S3_PART_SIZE`, see [`env_name`]) that wins over the
//! file (the project-wide rule CLI > env > config); an empty variable counts
//! as unset, so `KTSTR_S3_READ_ONLY= ktstr ...` does not silently mean
//! "false". A plugin with a settings struct reads it whole with
//! [`ConfigReader::deserialize`].

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::{Result, StageError};
use crate::paths::env_nonempty;
use crate::registry::PluginConfig;

/// One setting: its config key and help text; the environment variable
/// is derived by [`env_name`].
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub help: &'static str,
}

/// `KTSTR_S3_PART_SIZE` for env prefix `KTSTR_S3_` and key `part_size`.
pub fn env_name(env_prefix: &str, key: &str) -> String {
    format!("{env_prefix}{}", key.to_ascii_uppercase())
}

/// A plugin's settings refused; each names the plugin and, where there is
/// one, the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin {plugin}: config must be a table, got {got}")]
    NotATable { plugin: String, got: String },
    #[error("plugin {plugin}: unknown config key {key:?}")]
    UnknownKey {
        plugin: String,
        key: String,
        known: Vec<String>,
    },
    /// A value read key by key is wrong; `env` is the variable that can
    /// set it too.
    #[error("plugin {plugin}: setting `{key}` {why}")]
    Invalid {
        plugin: String,
        key: String,
        why: String,
        env: Option<String>,
    },
    /// The table does not fit the plugin's settings struct; `key` is the
    /// entry that fails on its own, when one does.
    #[error("[plugin.{plugin}]{}: {message}", unnamed_key(key, message))]
    Table {
        plugin: String,
        key: Option<String>,
        message: String,
    },
}

/// ` key` when serde's `message` does not already name `key`.
fn unnamed_key(key: &Option<String>, message: &str) -> String {
    match key {
        Some(k) if !message.contains(&format!("`{k}`")) => format!(" {k}"),
        _ => String::new(),
    }
}

impl ConfigError {
    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::NotATable { .. } => None,
            Self::UnknownKey { key, .. } | Self::Invalid { key, .. } => Some(key),
            Self::Table { key, .. } => key.as_deref(),
        }
    }
}

impl ConfigError {
    /// As the SDK's error (kind `InvalidInput`), with a hint on where the
    /// setting goes. Not a `From` impl: a second conversion into
    /// `StageError` would leave `?` in plugins' closures without a type.
    pub fn into_error(self) -> StageError {
        let hint = match &self {
            ConfigError::NotATable { plugin, .. } => {
                Some(format!("write the settings under [plugin.{plugin}]"))
            }
            ConfigError::UnknownKey { known, .. } => {
                Some(format!("known keys: {}", known.join(", ")))
            }
            ConfigError::Invalid {
                plugin, key, env, ..
            } => Some(match env {
                Some(env) => format!(
                    "set `{key} = ...` under [plugin.{plugin}] in the config file, or export {env}"
                ),
                None => format!("set `{key} = ...` under [plugin.{plugin}] in the config file"),
            }),
            ConfigError::Table { .. } => None,
        };
        let err = StageError::invalid_input(self.to_string());
        match hint {
            Some(hint) => err.with_hint(hint),
            None => err,
        }
    }
}

/// The environment as the reader sees it: a variable's non-empty value.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads one plugin's settings: the environment first, then its table.
pub struct ConfigReader<'a> {
    plugin: &'static str,
    table: Map<String, Value>,
    env_prefix: Option<&'static str>,
    env: Env<'a>,
}

/// A raw value and where it came from (for error messages).
enum Raw {
    Env(String, String),
    Config(Value),
}

impl ConfigReader<'static> {
    /// Plugin `plugin`'s table (`Null`, no table, reads as an empty one),
    /// with no environment variables mapped to its keys.
    pub fn new(plugin: &'static str, cfg: &PluginConfig) -> Result<Self> {
        let table = match cfg {
            Value::Null => Map::new(),
            Value::Object(t) => t.clone(),
            other => {
                return Err(ConfigError::NotATable {
                    plugin: plugin.to_string(),
                    got: other.to_string(),
                }
                .into_error());
            }
        };
        Ok(Self {
            plugin,
            table,
            env_prefix: None,
            env: &env_nonempty,
        })
    }
}

impl<'a> ConfigReader<'a> {
    /// Let `<env_prefix><KEY>` (read from `env`; the process environment
    /// outside tests) override each key.
    pub fn with_env<'b>(self, env_prefix: &'static str, env: Env<'b>) -> ConfigReader<'b> {
        ConfigReader {
            plugin: self.plugin,
            table: self.table,
            env_prefix: Some(env_prefix),
            env,
        }
    }

    /// Refuse keys not in `known`.
    pub fn known(self, known: &[Setting]) -> Result<Self> {
        if let Some(unknown) = self
            .table
            .keys()
            .find(|k| !known.iter().any(|s| s.key == k.as_str()))
        {
            return Err(ConfigError::UnknownKey {
                plugin: self.plugin.to_string(),
                key: unknown.clone(),
                known: known.iter().map(|s| s.key.to_string()).collect(),
            }
            .into_error());
        }
        Ok(self)
    }

    /// The whole table as the plugin's settings struct (`T::default()`
    /// fields via `#[serde(default)]`); no environment applies.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let table = Value::Object(self.table.clone());
        serde_json::from_value(table).map_err(|e| {
            // serde does not say which field failed: find the one key that
            // fails on its own, so the message (and the host, which adds the
            // line) can name it.
            let key = self.table.iter().find_map(|(k, v)| {
                let alone = Value::Object(Map::from_iter([(k.clone(), v.clone())]));
                serde_json::from_value::<T>(alone)
                    .is_err()
                    .then(|| k.clone())
            });
            ConfigError::Table {
                plugin: self.plugin.to_string(),
                key,
                message: e.to_string(),
            }
            .into_error()
        })
    }

    /// The variable `name` (not derived from a key) in the reader's
    /// environment, when set and not empty.
    pub fn env_var(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    fn env_for(&self, key: &str) -> Option<String> {
        self.env_prefix.map(|p| env_name(p, key))
    }

    fn raw(&self, key: &str) -> Option<Raw> {
        if let Some(env) = self.env_for(key)
            && let Some(v) = (self.env)(&env)
        {
            return Some(Raw::Env(env, v));
        }
        self.table.get(key).cloned().map(Raw::Config)
    }

    /// An error about `key`, naming both places it can be set.
    pub fn bad(&self, key: &str, why: impl std::fmt::Display) -> StageError {
        ConfigError::Invalid {
            plugin: self.plugin.to_string(),
            key: key.to_string(),
            why: why.to_string(),
            env: self.env_for(key),
        }
        .into_error()
    }

    fn origin(&self, raw: &Raw, key: &str) -> String {
        match raw {
            Raw::Env(name, _) => name.clone(),
            Raw::Config(_) => format!("[plugin.{}] {key}", self.plugin),
        }
    }

    /// A string; an empty one in the table counts as unset.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.raw(key) {
            None => Ok(None),
            Some(Raw::Env(_, v)) => Ok(Some(v)),
            Some(Raw::Config(Value::String(s))) if s.is_empty() => Ok(None),
            Some(Raw::Config(Value::String(s))) => Ok(Some(s)),
            Some(Raw::Config(other)) => {
                Err(self.bad(key, format!("must be a string, got {other}")))
            }
        }
    }

    pub fn required(&self, key: &str) -> Result<String> {
        self.string(key)?.ok_or_else(|| self.bad(key, "is not set"))
    }

    /// A path; unlike [`Self::string`], an empty one is an error.
    pub fn path(&self, key: &str) -> Result<Option<PathBuf>> {
        match self.raw(key) {
            Some(Raw::Config(Value::String(s))) if s.is_empty() => Err(self.bad(key, "is empty")),
            _ => Ok(self.string(key)?.map(PathBuf::from)),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        let Some(raw) = self.raw(key) else {
            return Ok(default);
        };
        let parsed = match &raw {
            Raw::Config(Value::Bool(b)) => Some(*b),
            Raw::Env(_, s) | Raw::Config(Value::String(s)) => parse_bool(s),
            Raw::Config(_) => None,
        };
        parsed.ok_or_else(|| {
            self.bad(
                key,
                format!(
                    "({}) must be true or false (also 1/0, yes/no, on/off)",
                    self.origin(&raw, key)
                ),
            )
        })
    }

    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration> {
        let Some(raw) = self.raw(key) else {
            return Ok(default);
        };
        let parsed = match &raw {
            Raw::Config(Value::Number(n)) => n.as_f64().and_then(secs),
            Raw::Env(_, s) | Raw::Config(Value::String(s)) => parse_duration(s),
            Raw::Config(_) => None,
        };
        match parsed {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(self.bad(
                key,
                format!(
                    "({}) must be a positive duration such as 500ms, 5s, 2m or a number of seconds",
                    self.origin(&raw, key)
                ),
            )),
        }
    }

    pub fn size(&self, key: &str, default: u64) -> Result<u64> {
        let Some(raw) = self.raw(key) else {
            return Ok(default);
        };
        let parsed = match &raw {
            Raw::Config(Value::Number(n)) => n.as_u64(),
            Raw::Env(_, s) | Raw::Config(Value::String(s)) => parse_size(s),
            Raw::Config(_) => None,
        };
        parsed.filter(|n| *n > 0).ok_or_else(|| {
            self.bad(
                key,
                format!(
                    "({}) must be a size such as 16MiB, 512KiB, 2GiB or a number of bytes",
                    self.origin(&raw, key)
                ),
            )
        })
    }

    pub fn int(&self, key: &str, default: i64, range: (i64, i64)) -> Result<i64> {
        let Some(raw) = self.raw(key) else {
            return Ok(default);
        };
        let parsed = match &raw {
            Raw::Config(Value::Number(n)) => n.as_i64(),
            Raw::Env(_, s) | Raw::Config(Value::String(s)) => s.trim().parse().ok(),
            Raw::Config(_) => None,
        };
        parsed
            .filter(|n| (range.0..=range.1).contains(n))
            .ok_or_else(|| {
                self.bad(
                    key,
                    format!(
                        "({}) must be a whole number from {} to {}",
                        self.origin(&raw, key),
                        range.0,
                        range.1
                    ),
                )
            })
    }
}

fn secs(f: f64) -> Option<Duration> {
    (f.is_finite() && f > 0.0 && f < 1e9).then(|| Duration::from_secs_f64(f))
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `5s`, `500ms`, `2m`, `1h 30m`, or plain seconds (`2.5`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(f) = s.parse::<f64>() {
        return secs(f);
    }
    humantime::parse_duration(s).ok()
}

/// `1048576`, `512KiB`, `16MiB`, `2GiB`, `16M` (binary), `16MB` (decimal).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("2 GiB"), Some(2 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_bool("YES"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        retries: u32,
        mirror: String,
    }

    #[test]
    fn deserialize_names_the_failing_key() {
        let r = ConfigReader::new("demo", &Value::Null).unwrap();
        assert_eq!(r.deserialize::<Demo>().unwrap(), Demo::default());

        let cfg = serde_json::json!({"mirror": "m", "retries": "many"});
        let e = ConfigReader::new("demo", &cfg)
            .unwrap()
            .deserialize::<Demo>()
            .unwrap_err();
        assert!(e.message.starts_with("[plugin.demo] retries: "), "{e}");

        let cfg = serde_json::json!({"mirorr": "m"});
        let e = ConfigReader::new("demo", &cfg)
            .unwrap()
            .deserialize::<Demo>()
            .unwrap_err();
        assert!(
            e.message
                .starts_with("[plugin.demo]: unknown field `mirorr`"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_plugin_key_and_env() {
        let e = ConfigReader::new("demo", &serde_json::json!("x"))
            .err()
            .unwrap();
        assert_eq!(e.message, "plugin demo: config must be a table, got \"x\"");

        const KNOWN: &[Setting] = &[Setting {
            key: "root",
            help: "where",
        }];
        let cfg = serde_json::json!({"rot": 1});
        let e = ConfigReader::new("demo", &cfg)
            .unwrap()
            .known(KNOWN)
            .err()
            .unwrap();
        assert_eq!(e.message, "plugin demo: unknown config key \"rot\"");
        assert_eq!(e.hint.as_deref(), Some("known keys: root"));

        let env = |k: &str| (k == "KTSTR_DEMO_ROOT").then(|| "/env".to_string());
        let cfg = serde_json::json!({"root": "/file", "flag": "perhaps"});
        let r = ConfigReader::new("demo", &cfg)
            .unwrap()
            .with_env("KTSTR_DEMO_", &env);
        assert_eq!(r.path("root").unwrap(), Some(PathBuf::from("/env")));
        let e = r.bool("flag", false).unwrap_err();
        assert!(e.message.contains("[plugin.demo] flag"), "{e}");
        assert!(e.hint.unwrap().contains("KTSTR_DEMO_FLAG"));

        let cfg = serde_json::json!({"root": ""});
        let r = ConfigReader::new("demo", &cfg).unwrap();
        let e = r.path("root").unwrap_err();
        assert_eq!(e.message, "plugin demo: setting `root` is empty");
        assert!(!e.hint.unwrap().contains("export"));
    }
}
