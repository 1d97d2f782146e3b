//! Whether a directory is the top of a kernel source tree.
//!
//! The check behind `--kernel PATH`'s error messages: a missing path, a
//! file, a directory that lacks the kernel's landmarks, or one inside a
//! kernel tree (whose hint names the tree's top).

use std::path::{Path, PathBuf};

use ktstr_sdk::prelude::*;
use ktstr_sdk::source::kernel_version_from_makefile;

/// Hint for a path that is not the top of a kernel tree.
pub(crate) const TREE_HINT: &str = "point --kernel at the top of a Linux source tree, the directory containing MAINTAINERS/Kconfig/arch";

/// Check that `path` is the top of a kernel tree; return it canonicalized
/// with the release parsed from its Makefile.
pub(crate) fn check_kernel_tree(raw: &str, path: &Path) -> Result<(PathBuf, Option<String>)> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some((body, fragment)) = raw.split_once('#')
                && Path::new(body).exists()
            {
                return Err(StageError::invalid_input(format!(
                    "--kernel {raw}: unknown fragment #{fragment}: a local tree takes no fragment"
                ))
                .with_hint(format!("write the path alone: --kernel {body}")));
            }
            let mut err = StageError::not_found(format!("--kernel {raw}: no such directory"));
            err = if path.is_relative() {
                let cwd = std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|_| "the current directory".into());
                err.with_hint(format!(
                    "check the spelling; relative paths are taken from {cwd}"
                ))
            } else {
                err.with_hint("check the spelling of the path")
            };
            return Err(err);
        }
        Err(e) => return Err(StageError::io("inspect", path, e).context(format!("--kernel {raw}"))),
    };
    if !meta.is_dir() {
        return Err(StageError::invalid_input(format!(
            "--kernel {raw}: {} is not a directory",
            path.display()
        ))
        .with_hint(TREE_HINT));
    }
    let dir = std::fs::canonicalize(path).at("resolve", path)?;
    let (missing, version) = kernel_tree_parts(&dir)?;
    if missing.is_empty() {
        return Ok((dir, version));
    }
    let hint = match enclosing_kernel_tree(&dir) {
        Some(top) => format!(
            "{} looks like a directory inside the kernel tree {}; point --kernel at {}",
            dir.display(),
            top.display(),
            top.display()
        ),
        None => TREE_HINT.to_string(),
    };
    Err(StageError::invalid_input(format!(
        "--kernel {raw}: {} is not a kernel source tree (missing {})",
        dir.display(),
        missing.join(", ")
    ))
    .with_hint(hint))
}

/// What `dir` lacks to be the top of a kernel tree, and its release.
fn kernel_tree_parts(dir: &Path) -> Result<(Vec<&'static str>, Option<String>)> {
    let mut missing = Vec::new();
    let makefile = dir.join("Makefile");
    let read = ktstr_sdk::fsread::read_bounded(
        &makefile,
        "Makefile",
        ktstr_sdk::fsread::SMALL_FILE_LIMIT,
        ktstr_sdk::fsread::Follow::Yes,
    );
    let version = match read {
        Ok(bytes) => {
            let version = kernel_version_from_makefile(&String::from_utf8_lossy(&bytes));
            if version.is_none() {
                missing.push("VERSION/PATCHLEVEL lines in Makefile");
            }
            version
        }
        Err(e) if e.kind == ktstr_sdk::ErrorKind::NotFound || makefile.is_dir() => {
            missing.push("Makefile");
            None
        }
        // A FIFO, a device, a huge file: refused at once, naming it.
        Err(e) => return Err(e.with_hint(TREE_HINT)),
    };
    if !dir.join("Kconfig").is_file() {
        missing.push("Kconfig");
    }
    if !dir.join("arch").is_dir() {
        missing.push("arch/");
    }
    Ok((missing, version))
}

/// The nearest ancestor of `dir` that is a kernel tree, for the hint.
fn enclosing_kernel_tree(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|a| {
        kernel_tree_parts(a)
            .ok()
            .filter(|(missing, _)| missing.is_empty())
            .map(|_| a.to_path_buf())
    })
}
