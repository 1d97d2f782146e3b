//! What a process plugin said about itself, remembered between runs, so a
//! run that never calls the plugin never starts it.
//!
//! Starting an interpreter costs tens of milliseconds (hundreds with a
//! heavy SDK to import), and most runs never need the plugin: a local
//! cache hit asks no remote tier. The catalog needs the stages the
//! plugin offers, and the cache tiers need each tier's capabilities, so
//! both are kept in `<cache root>/state/process-plugins/`, valid while the
//! executable is the same file (device, inode, size, mtime, ctime). A
//! plugin started later checks them again (see `conn`); a memo that turns
//! out wrong is dropped.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ktstr_sdk::cache::Capabilities;
use ktstr_sdk::export::StageManifest;

/// The handshake's answer, as remembered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub name: String,
    pub version: String,
    pub stages: Vec<StageManifest>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Stored {
    /// The executable's identity when this was written.
    file: String,
    hello: Option<Hello>,
    /// Capabilities by `<stage name>/<sha256 of its config>`.
    #[serde(default)]
    capabilities: BTreeMap<String, Capabilities>,
}

/// The memo file of one plugin executable.
#[derive(Debug)]
pub struct Memo {
    path: PathBuf,
    file: String,
}

/// device:inode:size:mtime:ctime (ns) of `exe`, following symlinks.
fn identity(exe: &Path) -> Option<String> {
    let m = std::fs::metadata(exe).ok()?;
    Some(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

impl Memo {
    /// The memo of the executable at `exe` (a canonical path), if there is
    /// a cache root to keep it in.
    pub fn of(exe: &Path) -> Option<Self> {
        let root = ktstr_sdk::paths::cache_root().ok()?;
        let dir = ktstr_sdk::paths::plugin_state(&root, "process-plugins");
        let digest = ktstr_sdk::hash::sha256_hex(exe.as_os_str().as_encoded_bytes());
        Some(Self {
            path: dir.join(format!("{}.json", &digest[..32])),
            file: identity(exe)?,
        })
    }

    /// A memo kept in `file` (tests: no cache root involved).
    #[cfg(test)]
    pub fn at(file: &Path, exe: &Path) -> Self {
        Self {
            path: file.to_path_buf(),
            file: identity(exe).expect("the executable exists"),
        }
    }

    fn read(&self) -> Stored {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
            .filter(|s| s.file == self.file)
            .unwrap_or_default()
    }

    /// Replace the file in one rename; a failure only costs a start later.
    fn write(&self, stored: &Stored) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(stored).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("cannot remember {}: {e}", self.path.display());
        }
    }

    pub fn hello(&self) -> Option<Hello> {
        self.read().hello
    }

    /// Remember `hello`; capabilities remembered for another answer go.
    pub fn record_hello(&self, hello: &Hello) {
        let mut stored = self.read();
        if stored.hello.as_ref() != Some(hello) {
            stored = Stored {
                file: self.file.clone(),
                hello: Some(hello.clone()),
                capabilities: BTreeMap::new(),
            };
            self.write(&stored);
        }
    }

    /// Forget everything: the plugin no longer answers as remembered.
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    fn key(stage: &str, config: &serde_json::Value) -> String {
        let digest = ktstr_sdk::hash::sha256_hex(config.to_string().as_bytes());
        format!("{stage}/{}", &digest[..16])
    }

    pub fn capabilities(&self, stage: &str, config: &serde_json::Value) -> Option<Capabilities> {
        self.read()
            .capabilities
            .get(&Self::key(stage, config))
            .copied()
    }

    pub fn record_capabilities(&self, stage: &str, config: &serde_json::Value, c: Capabilities) {
        let mut stored = self.read();
        if stored.hello.is_none() {
            return;
        }
        stored.capabilities.insert(Self::key(stage, config), c);
        self.write(&stored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn memo_in(dir: &Path, exe: &Path) -> Memo {
        Memo::at(&dir.join("m.json"), exe)
    }

    #[test]
    fn a_memo_holds_while_the_executable_is_the_same_file() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("ktstr-plugin-x");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let hello = Hello {
            protocol: 1,
            name: "x".into(),
            version: "1.0.0".into(),
            stages: Vec::new(),
        };
        let memo = memo_in(tmp.path(), &exe);
        assert_eq!(memo.hello(), None);
        memo.record_hello(&hello);
        let cfg = json!({"dir": "/a"});
        memo.record_capabilities("x", &cfg, Capabilities { read_only: true });
        assert_eq!(memo.hello(), Some(hello.clone()));
        assert_eq!(
            memo.capabilities("x", &cfg).map(|c| c.read_only),
            Some(true)
        );
        assert_eq!(memo.capabilities("x", &json!({"dir": "/b"})), None);

        // Another file at the same path (a new version installed).
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&exe, "#!/bin/sh\n# v2\n").unwrap();
        let memo = memo_in(tmp.path(), &exe);
        assert_eq!(memo.hello(), None, "a changed executable is asked again");
        memo.record_hello(&hello);
        memo.forget();
        assert_eq!(memo.hello(), None);
    }
}
