//! The one error type every stage returns.
//!
//! It is plain data (a kind, a message, an optional hint and the chain of
//! causes as strings) rather than a boxed `dyn Error`, because the same value
//! has to cross the dynamic-plugin boundary unchanged. The host renders it as
//! `message: cause: cause` plus a `hint:` line, so a stage should put *what
//! failed on which input* in the message and *what to do* in the hint.

use std::fmt;
use std::path::Path;

/// Broad class of a stage failure; the host maps it to wording and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The user's input (spec, path, fragment, flag) is wrong.
    InvalidInput,
    /// Something the user named does not exist.
    NotFound,
    /// A filesystem or OS call failed.
    Io,
    /// An external command (make, objcopy, ...) failed or is missing.
    Command,
    /// Stored data (a cache entry, a manifest) failed validation.
    Corrupt,
    /// A required kernel config symbol is missing after the build.
    Validation,
    /// The operation is not supported by this stage or this host.
    Unsupported,
    /// The user interrupted the run.
    Cancelled,
    /// A bug: a plugin panicked or broke its contract.
    Internal,
}

/// Error returned by every stage method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct StageError {
    pub kind: ErrorKind,
    pub message: String,
    /// What the user should do about it, if the stage knows.
    pub hint: Option<String>,
    /// Lower-level causes, outermost first.
    pub causes: Vec<String>,
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

/// Result alias used by every stage trait.
pub type Result<T, E = StageError> = std::result::Result<T, E>;

impl StageError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            causes: Vec::new(),
        }
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn command(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Command, message)
    }

    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "interrupted")
    }

    /// An I/O failure on `path`: the message names the action and the path.
    pub fn io(action: &str, path: &Path, err: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{action} {}", path.display())).caused_by(err)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Append `cause` (and its own `source()` chain) to the cause list.
    pub fn caused_by(mut self, cause: impl std::error::Error) -> Self {
        self.causes.push(cause.to_string());
        let mut next = cause.source();
        while let Some(c) = next {
            self.causes.push(c.to_string());
            next = c.source();
        }
        self
    }

    /// Prefix the message with more context, keeping kind and hint.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// Extension for attaching a path and action to `io::Result`s.
pub trait IoResultExt<T> {
    fn at(self, action: &str, path: &Path) -> Result<T>;
}

impl<T> IoResultExt<T> for std::io::Result<T> {
    fn at(self, action: &str, path: &Path) -> Result<T> {
        self.map_err(|e| StageError::io(action, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_joins_message_and_causes() {
        let e = StageError::io(
            "read",
            Path::new("/x/y"),
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        )
        .with_hint("create it");
        assert_eq!(e.to_string(), "read /x/y: gone");
        assert_eq!(e.kind, ErrorKind::Io);
        assert_eq!(e.hint.as_deref(), Some("create it"));
    }

    #[test]
    fn context_prefixes_message() {
        let e = StageError::invalid_input("bad line").context("fragment f.kconfig");
        assert_eq!(e.to_string(), "fragment f.kconfig: bad line");
    }
}
