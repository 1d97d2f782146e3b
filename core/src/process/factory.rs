//! `StageFactory` for a stage of a process plugin: an adapter whose first
//! call creates the plugin's instance (`stage.new`) with the stage's
//! config table. The config key `call_timeout` is the host's and is taken
//! out before the table is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktstr_sdk::export::StageManifest;
use ktstr_sdk::registry::{AnyStage, PluginConfig, StageKind};
use ktstr_sdk::{Result, StageError};
use serde_json::Value;

use super::adapters::{
    Instance, ProcBuilder, ProcCache, ProcConfigurer, ProcReserver, ProcSource, ProcVerifier,
};
use super::conn::Conn;
use super::handshake::ProcessPlugin;
use super::memo::Memo;
use crate::registry::StageFactory;

/// The host's key in a process plugin's config table.
pub const TIMEOUT_KEY: &str = "call_timeout";
/// How long a call may go without a message from the plugin by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ProcFactory {
    conn: Arc<Conn>,
    memo: Option<Arc<Memo>>,
    plugin: String,
    version: String,
    stage: StageManifest,
}

impl ProcFactory {
    pub fn new(plugin: &ProcessPlugin, stage: StageManifest) -> Self {
        Self {
            conn: plugin.conn.clone(),
            memo: plugin.memo.clone(),
            plugin: plugin.name.clone(),
            version: plugin.version.clone(),
            stage,
        }
    }

    /// A stage selected by name whose plugin failed to start: a cache
    /// tier built from it fails its first lookup with `error` (and is
    /// marked down for the run); any other stage fails to construct.
    pub fn failed(kind: StageKind, name: &str, path: &std::path::Path, error: StageError) -> Self {
        Self {
            conn: Arc::new(Conn::failed(path, name, error)),
            memo: None,
            plugin: name.to_string(),
            version: "?".into(),
            stage: StageManifest {
                kind,
                name: name.to_string(),
                summary: "(did not start)".into(),
                config_keys: Vec::new(),
            },
        }
    }

    fn label(&self) -> String {
        format!(
            "{} stage {} (plugin {})",
            self.stage.kind, self.stage.name, self.plugin
        )
    }
}

/// `call_timeout` from a config table: seconds, or a duration string.
fn take_timeout(config: &mut PluginConfig, stage: &str) -> Result<Duration> {
    let Some(raw) = config.as_object_mut().and_then(|t| t.remove(TIMEOUT_KEY)) else {
        return Ok(DEFAULT_CALL_TIMEOUT);
    };
    let parsed = match &raw {
        Value::Number(n) => n.as_f64().filter(|s| *s > 0.0).map(Duration::from_secs_f64),
        Value::String(s) => ktstr_sdk::config::parse_duration(s).filter(|d| !d.is_zero()),
        _ => None,
    };
    parsed.ok_or_else(|| {
        StageError::invalid_input(format!(
            "[plugin.{stage}] {TIMEOUT_KEY} = {raw}: not a duration"
        ))
        .with_hint(format!(
            "write e.g. {TIMEOUT_KEY} = \"10m\" or {TIMEOUT_KEY} = 90 (seconds)"
        ))
    })
}

impl StageFactory for ProcFactory {
    fn kind(&self) -> StageKind {
        self.stage.kind
    }
    fn name(&self) -> &str {
        &self.stage.name
    }
    fn version(&self) -> &str {
        &self.version
    }
    fn summary(&self) -> &str {
        &self.stage.summary
    }
    fn origin(&self) -> String {
        self.conn.path().display().to_string()
    }
    /// No call to the plugin: the instance is created by its first call
    /// (see `adapters::Instance`), so selecting a stage starts nothing.
    fn construct(&self, config: &PluginConfig) -> Result<AnyStage> {
        let mut config = config.clone();
        let timeout = take_timeout(&mut config, &self.stage.name)?;
        let kind = self.stage.kind;
        let i = Instance {
            conn: self.conn.clone(),
            kind,
            name: self.stage.name.clone(),
            config,
            id: Mutex::new(None),
            label: self.label(),
            timeout,
            memo: self.memo.clone(),
        };
        Ok(match kind {
            StageKind::Source => AnyStage::Source(Box::new(ProcSource(i))),
            StageKind::Reserver => AnyStage::Reserver(Box::new(ProcReserver(i))),
            StageKind::Configurer => AnyStage::Configurer(Box::new(ProcConfigurer(i))),
            StageKind::Builder => AnyStage::Builder(Box::new(ProcBuilder(i))),
            StageKind::Cache => AnyStage::Cache(Box::new(ProcCache(i))),
            StageKind::Verifier => AnyStage::Verifier(Box::new(ProcVerifier(i))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn call_timeout_is_the_hosts_and_leaves_the_table() {
        let mut cfg = json!({"dir": "/x", "call_timeout": "2m"});
        assert_eq!(
            take_timeout(&mut cfg, "c").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(cfg, json!({"dir": "/x"}));
        let mut cfg = json!({"call_timeout": 1.5});
        assert_eq!(
            take_timeout(&mut cfg, "c").unwrap(),
            Duration::from_millis(1500)
        );
        let mut cfg = Value::Null;
        assert_eq!(take_timeout(&mut cfg, "c").unwrap(), DEFAULT_CALL_TIMEOUT);
        let e = take_timeout(&mut json!({"call_timeout": "soon"}), "c").unwrap_err();
        assert!(e.message.contains("[plugin.c] call_timeout"), "{e}");
        assert!(take_timeout(&mut json!({"call_timeout": 0}), "c").is_err());
    }
}
