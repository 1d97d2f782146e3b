//! JSON forms of the sdk types that are not serde types themselves.
//!
//! Most stage data (`KernelSpec`, `BuildRequest`, `Metadata`, ...) derives
//! serde and crosses the plugin boundary as is. These mirrors cover the
//! rest, field for field, with lossless conversions both ways. Adding an
//! optional (`#[serde(default)]`) field is an additive ABI change; see
//! docs/plugin-abi.md.

use std::path::PathBuf;

use crate::cache::{self, CacheKey, Metadata};
use crate::context;

/// `context::CommandSpec`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandSpec {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cgroup_procs: Option<PathBuf>,
    #[serde(default)]
    pub env_clear: bool,
}

impl From<&context::CommandSpec> for CommandSpec {
    fn from(s: &context::CommandSpec) -> Self {
        Self {
            program: s.program.clone(),
            args: s.args.clone(),
            cwd: s.cwd.clone(),
            env: s.env.clone(),
            cgroup_procs: s.cgroup_procs.clone(),
            env_clear: s.env_clear,
        }
    }
}

impl From<CommandSpec> for context::CommandSpec {
    fn from(s: CommandSpec) -> Self {
        Self {
            program: s.program,
            args: s.args,
            cwd: s.cwd,
            env: s.env,
            cgroup_procs: s.cgroup_procs,
            env_clear: s.env_clear,
        }
    }
}

/// `context::OutputLine`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputLine {
    pub text: String,
    pub stderr: bool,
}

/// `context::CommandOutcome`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandOutcome {
    pub code: Option<i32>,
    #[serde(default)]
    pub tail: Vec<OutputLine>,
}

impl From<&context::CommandOutcome> for CommandOutcome {
    fn from(o: &context::CommandOutcome) -> Self {
        Self {
            code: o.code,
            tail: o
                .tail
                .iter()
                .map(|l| OutputLine {
                    text: l.text.clone(),
                    stderr: l.stderr,
                })
                .collect(),
        }
    }
}

impl From<CommandOutcome> for context::CommandOutcome {
    fn from(o: CommandOutcome) -> Self {
        Self {
            code: o.code,
            tail: o
                .tail
                .into_iter()
                .map(|l| context::OutputLine {
                    text: l.text,
                    stderr: l.stderr,
                })
                .collect(),
        }
    }
}

/// `context::CapturedOutput`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CapturedOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<&context::CapturedOutput> for CapturedOutput {
    fn from(o: &context::CapturedOutput) -> Self {
        Self {
            code: o.code,
            stdout: o.stdout.clone(),
            stderr: o.stderr.clone(),
        }
    }
}

impl From<CapturedOutput> for context::CapturedOutput {
    fn from(o: CapturedOutput) -> Self {
        Self {
            code: o.code,
            stdout: o.stdout,
            stderr: o.stderr,
        }
    }
}

/// `cache::Artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Artifacts {
    pub image: PathBuf,
    pub vmlinux: Option<PathBuf>,
    pub config: PathBuf,
    /// Optional on the wire: older hosts and plugins do not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

impl From<&cache::Artifacts> for Artifacts {
    fn from(a: &cache::Artifacts) -> Self {
        Self {
            image: a.image.clone(),
            vmlinux: a.vmlinux.clone(),
            config: a.config.clone(),
            log: a.log.clone(),
        }
    }
}

impl From<Artifacts> for cache::Artifacts {
    fn from(a: Artifacts) -> Self {
        Self {
            image: a.image,
            vmlinux: a.vmlinux,
            config: a.config,
            log: a.log,
        }
    }
}

/// `cache::CacheEntry`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub key: CacheKey,
    pub dir: PathBuf,
    pub metadata: Metadata,
    pub origin: String,
}

impl From<&cache::CacheEntry> for Entry {
    fn from(e: &cache::CacheEntry) -> Self {
        Self {
            key: e.key.clone(),
            dir: e.dir.clone(),
            metadata: e.metadata.clone(),
            origin: e.origin.clone(),
        }
    }
}

impl From<Entry> for cache::CacheEntry {
    fn from(e: Entry) -> Self {
        Self {
            key: e.key,
            dir: e.dir,
            metadata: e.metadata,
            origin: e.origin,
        }
    }
}

/// `cache::Listed`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
#[allow(clippy::large_enum_variant)]
pub enum Listed {
    Ok { entry: Entry },
    Corrupt { key: String, reason: String },
}

impl From<&cache::Listed> for Listed {
    fn from(l: &cache::Listed) -> Self {
        match l {
            cache::Listed::Ok(e) => Self::Ok { entry: e.into() },
            cache::Listed::Corrupt { key, reason } => Self::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
        }
    }
}

impl From<Listed> for cache::Listed {
    fn from(l: Listed) -> Self {
        match l {
            Listed::Ok { entry } => Self::Ok(entry.into()),
            Listed::Corrupt { key, reason } => Self::Corrupt { key, reason },
        }
    }
}

/// The data of a `reserve::Reservation` (the guard travels separately).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    #[serde(default)]
    pub cpus: Vec<usize>,
    #[serde(default)]
    pub mems: Vec<usize>,
    pub make_jobs: usize,
    #[serde(default)]
    pub sandbox_procs: Option<PathBuf>,
}
