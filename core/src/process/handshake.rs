//! The `hello` exchange: which protocol, who the plugin is, which stages
//! it offers (docs/plugin-protocol.md, "Handshake"), at start-up
//! ([`launch`]) or at a lazily started plugin's first call (`conn`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ktstr_sdk::export::StageManifest;
use ktstr_sdk::{ErrorKind, Result, StageError};
use serde_json::{Value, json};

use super::conn::Conn;
use super::memo::{Hello, Memo};
use super::{PROTOCOL, PROTOCOLS};
use crate::dynamic::search;

/// The handshake and `stage.new` must answer within this.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A process plugin whose handshake is known: it answered it now, or
/// answered it in an earlier run and will be started on first use.
#[derive(Clone)]
pub struct ProcessPlugin {
    pub name: String,
    pub version: String,
    /// The protocol version it picked.
    pub protocol: u32,
    pub stages: Vec<StageManifest>,
    pub conn: Arc<Conn>,
    pub memo: Option<Arc<Memo>>,
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

impl ProcessPlugin {
    pub fn new(hello: Hello, conn: Arc<Conn>, memo: Option<Arc<Memo>>) -> Self {
        Self {
            name: hello.name,
            version: hello.version,
            protocol: hello.protocol,
            stages: hello.stages,
            conn,
            memo,
        }
    }
}

/// `hello`'s params.
pub fn params() -> Value {
    json!({
        "protocols": PROTOCOLS,
        "host": "ktstr",
        "host_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The plugin answered `hello` with an error.
pub fn refused(path: &Path, name: &str, e: StageError) -> StageError {
    let hint = e.hint.clone();
    let mut e = e.context(format!(
        "plugin {name} ({}) refused the handshake",
        path.display()
    ));
    e.hint = hint.or(Some(
        "see `ktstr docs plugin-protocol` (Handshake, Compatibility)".into(),
    ));
    e
}

#[derive(serde::Deserialize)]
struct Answer {
    protocol: u32,
    name: String,
    version: String,
    #[serde(default)]
    stages: Vec<Value>,
}

/// Check `hello`'s answer from the plugin at `path`, known as `name`.
pub fn check(path: &Path, name: &str, answer: Value) -> Result<Hello> {
    let answer: Answer = serde_json::from_value(answer).map_err(|e| {
        StageError::internal(format!(
            "plugin {name} ({}) answered the handshake with something that is not a hello result",
            path.display()
        ))
        .caused_by(e)
        .with_hint(
            "a hello result is {\"protocol\", \"name\", \"version\", \"stages\"}: see `ktstr docs plugin-protocol`",
        )
    })?;
    if !PROTOCOLS.contains(&answer.protocol) {
        return Err(StageError::new(
            ErrorKind::Unsupported,
            format!(
                "plugin {name} ({}) speaks protocol {}; this ktstr speaks {}",
                path.display(),
                answer.protocol,
                PROTOCOLS
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .with_hint(
            "install a version of the plugin that speaks this protocol, or a ktstr that speaks the plugin's (`ktstr docs plugin-protocol`, Compatibility)",
        ));
    }
    let mut stages = Vec::new();
    for raw in answer.stages {
        match serde_json::from_value::<StageManifest>(raw.clone()) {
            Ok(stage) => stages.push(stage),
            // A stage kind of a newer ktstr: not an error, just not usable here.
            Err(e) => tracing::debug!("plugin {name}: ignoring stage {raw}: {e}"),
        }
    }
    if answer.name != name && search::name_of(path).as_deref() == Some(name) {
        tracing::warn!(
            "{} declares plugin name {:?}, not {name:?}; using it as {:?}",
            path.display(),
            answer.name,
            answer.name
        );
    }
    Ok(Hello {
        protocol: answer.protocol,
        name: answer.name,
        version: answer.version,
        stages,
    })
}

/// Start the executable at `path` (a trusted file) now and shake hands;
/// the answer is remembered in `memo`. `name` is the plugin name the file
/// stands for: what `--plugin NAME` asked for, or the file's name.
pub fn launch(path: &Path, name: &str, memo: Option<Arc<Memo>>) -> Result<ProcessPlugin> {
    let mut conn = Conn::start(path, name, PROTOCOL)?;
    let answer = match conn.call("hello", params(), None, SETUP_TIMEOUT) {
        Ok(v) => v,
        // The connection's own failures already name the plugin.
        Err(e) if conn.is_dead() => return Err(e),
        Err(e) => return Err(refused(path, name, e)),
    };
    let hello = check(path, name, answer).inspect_err(|_| conn.shut_down())?;
    if let Some(memo) = &memo {
        memo.record_hello(&hello);
    }
    conn.rename(&hello.name);
    Ok(ProcessPlugin::new(hello, Arc::new(conn), memo))
}
