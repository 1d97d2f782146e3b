//! Which `--kernel` specs name a local tree, and turning one into a path.
//!
//! Kept apart from the tree checks because claiming is decided on the
//! spec's text alone: it runs for every spec, before anything touches disk.

use std::path::{Path, PathBuf};

use ktstr_sdk::prelude::*;

/// Whether `raw` is a spec this acquirer handles: something written as a
/// path (`/…`, `./…`, `../…`, `~/…`, `.`, `..`) or naming an existing
/// directory, but neither a URL nor a tarball.
///
/// A path-shaped spec is claimed even when it does not exist, so that
/// `--kernel ./typo` fails with "no such directory" rather than with
/// "no source plugin understands ./typo".
pub fn claims_spec(raw: &str) -> bool {
    // A tarball path keeps its `#sha256=` (or a malformed `#...`): the
    // name before the fragment decides (`/abs/linux-6.12.tar.xz#sha256=…`
    // is the tarball source's, which explains a bad fragment).
    let body = raw.split_once('#').map_or(raw, |(b, _)| b);
    if raw.is_empty() || is_url(raw) || is_tarball(raw) || is_tarball(body) {
        return false;
    }
    let path_shaped = matches!(raw, "." | ".." | "~")
        || ["/", "./", "../", "~/"].iter().any(|p| raw.starts_with(p));
    path_shaped || Path::new(raw).is_dir()
}

fn is_url(raw: &str) -> bool {
    raw.contains("://") || raw.starts_with("git+")
}

/// Archives are left to the tarball acquirer.
fn is_tarball(raw: &str) -> bool {
    ktstr_sdk::archive::has_archive_suffix(raw)
}

/// Expand a leading `~` / `~/` with `$HOME`; other specs are returned as is.
pub(crate) fn expand_home(raw: &str) -> Result<PathBuf> {
    expand_home_with(raw, std::env::var_os("HOME"))
}

pub(crate) fn expand_home_with(raw: &str, home: Option<std::ffi::OsString>) -> Result<PathBuf> {
    ktstr_sdk::paths::expand_home_with(raw, home).ok_or_else(|| {
        StageError::invalid_input(format!(
            "--kernel {raw}: cannot expand ~ because $HOME is not set"
        ))
        .with_hint("write the path out in full")
    })
}
