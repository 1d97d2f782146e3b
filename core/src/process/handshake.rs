//! Starting a plugin and the `hello` exchange: which protocol, who it is,
//! which stages it offers (docs/plugin-protocol.md, "Handshake").

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ktstr_sdk::export::StageManifest;
use ktstr_sdk::{ErrorKind, Result, StageError};
use serde_json::{Value, json};

use super::conn::Conn;
use super::{PROTOCOL, PROTOCOLS};
use crate::dynamic::search;

/// The handshake and `stage.new` must answer within this.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A plugin process that answered its handshake.
#[derive(Clone)]
pub struct ProcessPlugin {
    pub name: String,
    pub version: String,
    /// The protocol version it picked.
    pub protocol: u32,
    pub stages: Vec<StageManifest>,
    pub conn: Arc<Conn>,
}

impl std::fmt::Debug for ProcessPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPlugin")
            .field("name", &self.name)
            .field("path", &self.conn.path())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct Hello {
    protocol: u32,
    name: String,
    version: String,
    #[serde(default)]
    stages: Vec<Value>,
}

/// Start the executable at `path` (a trusted file) and shake hands.
/// `name` is the plugin name the file stands for: what `--plugin NAME`
/// asked for, or the file's name for a path.
pub fn launch(path: &Path, name: &str) -> Result<ProcessPlugin> {
    let mut conn = Conn::start(path, name, PROTOCOL)?;
    let params = json!({
        "protocols": PROTOCOLS,
        "host": "ktstr",
        "host_version": env!("CARGO_PKG_VERSION"),
    });
    let refused = |e: StageError| {
        let hint = e.hint.clone();
        let mut e = e.context(format!(
            "plugin {name} ({}) refused the handshake",
            path.display()
        ));
        e.hint = hint.or(Some(
            "see `ktstr docs plugin-protocol` (Handshake, Compatibility)".into(),
        ));
        e
    };
    let answer = match conn.call("hello", params, None, SETUP_TIMEOUT) {
        Ok(v) => v,
        // The connection's own failures already name the plugin.
        Err(e) if conn.is_dead() => return Err(e),
        Err(e) => return Err(refused(e)),
    };
    let hello: Hello = serde_json::from_value(answer).map_err(|e| {
        conn.shut_down();
        StageError::internal(format!(
            "plugin {name} ({}) answered the handshake with something that is not a hello result",
            path.display()
        ))
        .caused_by(e)
        .with_hint(
            "a hello result is {\"protocol\", \"name\", \"version\", \"stages\"}: see `ktstr docs plugin-protocol`",
        )
    })?;
    if !PROTOCOLS.contains(&hello.protocol) {
        conn.shut_down();
        return Err(StageError::new(ErrorKind::Unsupported, format!(
            "plugin {name} ({}) speaks protocol {}; this ktstr speaks {}",
            path.display(),
            hello.protocol,
            PROTOCOLS
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_hint(
            "install a version of the plugin that speaks this protocol, or a ktstr that speaks the plugin's (`ktstr docs plugin-protocol`, Compatibility)",
        ));
    }
    let mut stages = Vec::new();
    for raw in hello.stages {
        match serde_json::from_value::<StageManifest>(raw.clone()) {
            Ok(stage) => stages.push(stage),
            // A stage kind of a newer ktstr: not an error, just not usable here.
            Err(e) => tracing::debug!("plugin {name}: ignoring stage {raw}: {e}"),
        }
    }
    if hello.name != name && search::name_of(path).as_deref() == Some(name) {
        tracing::warn!(
            "{} declares plugin name {:?}, not {name:?}; using it as {:?}",
            path.display(),
            hello.name,
            hello.name
        );
    }
    conn.rename(&hello.name);
    Ok(ProcessPlugin {
        name: hello.name,
        version: hello.version,
        protocol: hello.protocol,
        stages,
        conn: Arc::new(conn),
    })
}
