//! Where plugin libraries are looked for, and which files are trusted.
//!
//! Only directories the user or the installation controls are searched,
//! in this order: `$KTSTR_PLUGIN_PATH` (colon-separated, absolute entries
//! only), `$XDG_DATA_HOME/ktstr/plugins` (default
//! `~/.local/share/ktstr/plugins`), the directory of the `ktstr` binary and
//! `<bin>/../lib/ktstr/plugins`. Never the current directory: `ktstr build`
//! is run inside kernel trees that may come from anywhere. A library that
//! another user could replace (the file, its directory or any ancestor
//! writable by someone other than this user and root, sticky directories
//! such as `/tmp` aside) is refused before it is opened, because opening
//! it runs that user's code.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ktstr_sdk::paths::env_nonempty;
use ktstr_sdk::{Result, StageError};

pub const PLUGIN_PATH_ENV: &str = "KTSTR_PLUGIN_PATH";

/// One searched directory and why it is searched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    pub path: PathBuf,
    /// `$KTSTR_PLUGIN_PATH`, `$XDG_DATA_HOME`, `ktstr's directory`, ...
    pub why: String,
}

/// `libktstr_plugin_<name>.so`, with `-` in the name spelled `_` (cargo's
/// file name for a cdylib crate called `ktstr-plugin-<name>`).
pub fn file_name(name: &str) -> String {
    format!("libktstr_plugin_{}.so", name.replace('-', "_"))
}

/// `ktstr-plugin-<name>`: the file name of a process plugin (an
/// executable speaking docs/plugin-protocol.md).
pub fn exe_name(name: &str) -> String {
    format!("ktstr-plugin-{name}")
}

/// The plugin name a library file name (`_` shown as `-`) or a process
/// plugin's file name stands for.
pub fn name_of(file: &Path) -> Option<String> {
    let stem = file.file_name()?.to_str()?;
    if let Some(name) = stem.strip_prefix("ktstr-plugin-") {
        let valid = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        return (valid && !name.is_empty()).then(|| name.to_string());
    }
    let name = stem.strip_prefix("libktstr_plugin_")?.strip_suffix(".so")?;
    (!name.is_empty()).then(|| name.replace('_', "-"))
}

/// Whether `path` is a process plugin (an executable) rather than a
/// library: anything that does not end in `.so`.
pub fn is_process(path: &Path) -> bool {
    !path.to_string_lossy().ends_with(".so")
}

/// The directories searched, in order, without duplicates.
pub fn search_dirs() -> Vec<SearchDir> {
    let mut dirs = Vec::new();
    if let Some(list) = env_nonempty(PLUGIN_PATH_ENV) {
        for entry in list.split(':').filter(|e| !e.is_empty()) {
            if Path::new(entry).is_absolute() {
                dirs.push(SearchDir {
                    path: entry.into(),
                    why: format!("${PLUGIN_PATH_ENV}"),
                });
            } else {
                tracing::warn!(
                    "ignoring relative {PLUGIN_PATH_ENV} entry {entry:?}: plugins are never searched relative to the current directory"
                );
            }
        }
    }
    let data = env_nonempty("XDG_DATA_HOME")
        .filter(|d| Path::new(d).is_absolute())
        .map(|d| (PathBuf::from(d), "$XDG_DATA_HOME/ktstr/plugins"))
        .or_else(|| {
            env_nonempty("HOME").map(|h| {
                (
                    PathBuf::from(h).join(".local/share"),
                    "~/.local/share/ktstr/plugins",
                )
            })
        });
    if let Some((base, why)) = data {
        dirs.push(SearchDir {
            path: base.join("ktstr/plugins"),
            why: why.into(),
        });
    }
    if let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let lib_dir = bin_dir.join("../lib/ktstr/plugins");
        dirs.push(SearchDir {
            path: bin_dir,
            why: "ktstr's directory".into(),
        });
        dirs.push(SearchDir {
            path: lib_dir,
            why: "<ktstr's directory>/../lib/ktstr/plugins".into(),
        });
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let canon = std::fs::canonicalize(&d.path).unwrap_or_else(|_| d.path.clone());
        if seen.contains(&canon) {
            false
        } else {
            seen.push(canon);
            true
        }
    });
    dirs
}

/// Find the library of plugin `name` in the search directories.
pub fn find(name: &str) -> Result<PathBuf> {
    let file = file_name(name);
    let exe = exe_name(name);
    let dirs = search_dirs();
    let found: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| [d.path.join(&file), d.path.join(&exe)])
        .filter(|p| p.is_file())
        .collect();
    if let (Some(lib), Some(proc)) = (
        found.iter().find(|p| !is_process(p)),
        found.iter().find(|p| is_process(p)),
    ) {
        return Err(StageError::invalid_input(format!(
            "--plugin {name}: found both as a library, {}, and as an executable, {}",
            lib.display(),
            proc.display()
        ))
        .with_hint("remove one of them, or pass the path of the one to use"));
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => {
            let searched: Vec<String> = dirs
                .iter()
                .map(|d| format!("{} ({})", d.path.display(), d.why))
                .collect();
            let mut known: Vec<String> = ktstr_sdk::registry::builtins()
                .iter()
                .map(|p| p.name.to_string())
                .collect();
            known.extend(discover().iter().filter_map(|p| name_of(p)));
            let guess = crate::suggest::did_you_mean(name, known.iter().map(String::as_str));
            Err(StageError::not_found(format!(
                "--plugin {name}: no built-in plugin has this name and no {file} was found, nor an executable {exe}"
            ))
            .with_hint(format!(
                "{guess}searched {}; install the library ({file}) or the executable ({exe}) into one of them, set {PLUGIN_PATH_ENV}, or pass its path (--plugin /path/to/{file}); `ktstr plugins list` shows what is found",
                searched.join(", ")
            )))
        }
        [first, second, ..] => Err(StageError::invalid_input(format!(
            "--plugin {name}: found in two places: {} and {}",
            first.display(),
            second.display()
        ))
        .with_hint("remove one of them, or pass the path of the one to use")),
    }
}

/// Every `libktstr_plugin_*.so` and `ktstr-plugin-*` file in the search
/// directories, in search order.
pub fn discover() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in search_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir.path) else {
            continue;
        };
        let mut here: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| name_of(p).is_some() && p.is_file())
            .collect();
        here.sort();
        found.extend(here);
    }
    found
}

/// Who besides the owner may write `path`, if anyone: `o+w`, or `g+w` for
/// a group other than root's and ours. A sticky directory (`/tmp`) is
/// fine: others may add files there but not replace ours.
fn writable_by_others(path: &Path) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let mode = meta.permissions().mode();
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    if sticky_dir {
        return Ok(None);
    }
    if mode & 0o002 != 0 {
        return Ok(Some(format!("world-writable (mode {:04o})", mode & 0o7777)));
    }
    let own_group = meta.gid() == 0 || meta.gid() == nix::unistd::getegid().as_raw();
    if mode & 0o020 != 0 && !own_group {
        return Ok(Some(format!(
            "writable by group {} (mode {:04o})",
            meta.gid(),
            mode & 0o7777
        )));
    }
    let uid = meta.uid();
    if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
        return Ok(Some(format!("owned by another user (uid {uid})")));
    }
    Ok(None)
}

/// Refuse a library that is missing, not a file, or that anyone but this
/// user and root could have replaced: the library, its directory and
/// every ancestor must be writable by no one else (a sticky directory
/// such as `/tmp` aside). Checked before the library is opened, because
/// opening it runs its code.
pub fn check_trusted(path: &Path) -> Result<PathBuf> {
    let canon = std::fs::canonicalize(path).map_err(|e| {
        StageError::io("cannot open plugin library", path, e)
            .with_hint("check the path, or pass a plugin name to search the plugin directories")
    })?;
    if !canon.is_file() {
        return Err(StageError::invalid_input(format!(
            "plugin library {} is not a file",
            path.display()
        )));
    }
    let dir = canon.parent().unwrap_or(Path::new("/"));
    let chain = std::iter::once(("library", canon.as_path()))
        .chain(std::iter::once(("directory", dir)))
        .chain(dir.ancestors().skip(1).map(|a| ("ancestor directory", a)));
    for (what, p) in chain {
        if let Some(why) = writable_by_others(p).map_err(|e| StageError::io("stat", p, e))? {
            return Err(StageError::invalid_input(format!(
                "refusing to load plugin {}: its {what} {} is {why}, so another user could replace the code ktstr would run",
                path.display(),
                p.display()
            ))
            .with_hint(format!(
                "run `chmod go-w {}` (and make it yours or root's), or install the plugin in a directory only you can write",
                p.display()
            )));
        }
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_cargo() {
        assert_eq!(
            file_name("shared-dir-cache"),
            "libktstr_plugin_shared_dir_cache.so"
        );
        assert_eq!(
            name_of(Path::new("/x/libktstr_plugin_shared_dir_cache.so")).as_deref(),
            Some("shared-dir-cache")
        );
        assert_eq!(name_of(Path::new("/x/libfoo.so")), None);
        assert_eq!(
            name_of(Path::new("/x/ktstr-plugin-team-cache")).as_deref(),
            Some("team-cache")
        );
        assert_eq!(name_of(Path::new("/x/ktstr-plugin-x.py")), None);
        assert!(is_process(Path::new("/x/ktstr-plugin-team-cache")));
        assert!(!is_process(Path::new("/x/libktstr_plugin_x.so")));
        assert_eq!(name_of(Path::new("/x/libktstr_plugin_.so")), None);
    }

    #[test]
    fn world_writable_files_and_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libktstr_plugin_x.so");
        std::fs::write(&lib, b"").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_trusted(&lib).is_ok());
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = check_trusted(&lib).unwrap_err();
        assert!(e.message.contains("world-writable"), "{e}");
        assert!(e.hint.unwrap().contains("chmod go-w"));
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_trusted(&lib).unwrap_err();
        assert!(e.message.contains("its directory"), "{e}");
        // A writable ancestor is as bad as a writable directory; a sticky
        // one (like /tmp) is not.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        let deep = nested.join("libktstr_plugin_x.so");
        std::fs::write(&deep, b"").unwrap();
        for d in [dir.path().join("a"), nested.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert!(check_trusted(&deep).is_ok());
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let e = check_trusted(&deep).unwrap_err();
        assert!(e.message.contains("its ancestor directory"), "{e}");
        assert!(
            e.message.contains(&format!("{}/a ", dir.path().display())),
            "{e}"
        );
        std::fs::set_permissions(
            dir.path().join("a"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        assert!(check_trusted(&deep).is_ok(), "a sticky ancestor is fine");
        let e = check_trusted(&dir.path().join("missing.so")).unwrap_err();
        assert!(e.message.contains("missing.so"), "{e}");
    }
}
