//! Opening a plugin library and checking it is one this ktstr can use.
//!
//! Order matters. `lib_header_from_path` only reads the library header;
//! the ABI version recorded there is compared with ours *before*
//! `init_root_module` runs abi_stable's layout check, because a plugin
//! built against another ABI version fails that check with a report of
//! every differing type — correct, but a wall of text that does not say
//! what to do. The user gets one paragraph instead (which plugin, where,
//! built against what, what is needed, rebuild against which SDK); the
//! raw report is logged at debug level (`RUST_LOG=ktstr=debug`).
//!
//! `RootModule::load_from_*` is not used: it caches one library per
//! root-module type, so a second plugin would silently be the first.

use std::path::{Path, PathBuf};

use ktstr_sdk::export::abi::abi_stable::library::{
    LibraryError, RawLibrary, RootModuleError, lib_header_from_path,
};
use ktstr_sdk::export::abi::abi_stable::sabi_types::VersionNumber;
use ktstr_sdk::export::abi::{ABI_VERSION, PluginModRef, ROOT_MODULE_NAME};
use ktstr_sdk::export::{Manifest, PANIC_UNWIND_SYMBOL, SDK_VERSION, from_ffi, from_json};
use ktstr_sdk::{ErrorKind, StageError};

/// A library that loaded and passed every check. Never unloaded: its
/// stages may live until the process exits.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub manifest: Manifest,
    pub(crate) root: PluginModRef,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

/// Why a library cannot be used, for `ktstr plugins list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    AbiMismatch,
    NotAPlugin,
    /// Built with `panic = "abort"`.
    PanicAbort,
    /// A library whose name a built-in already has: `--plugin NAME`
    /// selects the built-in, so this library is never loaded by name.
    Shadowed,
    Broken,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::AbiMismatch => "mismatch",
            Self::NotAPlugin => "not-a-plugin",
            Self::PanicAbort => "panic-abort",
            Self::Shadowed => "shadowed",
            Self::Broken => "error",
        }
    }
}

/// A load failure with its classification.
#[derive(Debug)]
pub struct LoadError {
    pub status: Status,
    /// The plugin's ABI version, when the header could be read.
    pub abi_version: Option<String>,
    pub error: StageError,
}

impl From<LoadError> for StageError {
    fn from(e: LoadError) -> Self {
        e.error
    }
}

/// Plugin ABI versions this host accepts, as abi_stable checks them: for
/// `x.y.z` with x >= 1, the same major version and at least our minor (an
/// older host loads a newer, grown plugin; a newer host refuses an older
/// one); for `0.y.z`, the same `0.y` (abi_stable's per-type check treats
/// the 0.y minor as a major version, so a plugin of ABI 0.(y+1) is refused
/// even with identical types). Checked before abi_stable so a mismatch is
/// one clear paragraph.
pub fn abi_requirement() -> semver::VersionReq {
    let ours = semver::Version::parse(ABI_VERSION).expect("ABI_VERSION is semver");
    let req = if ours.major == 0 {
        format!(
            ">={}.{}.0, <{}.{}.0",
            ours.major,
            ours.minor,
            ours.major,
            ours.minor + 1
        )
    } else {
        format!("^{}.{}.0", ours.major, ours.minor)
    };
    semver::VersionReq::parse(&req).expect("valid requirement")
}

fn rebuild_hint(path: &Path) -> String {
    format!(
        "rebuild it against ktstr-sdk {SDK_VERSION} (plugin ABI {ABI_VERSION}): set its ktstr-sdk dependency to that version, `cargo build --release`, and replace {}",
        path.display()
    )
}

fn fail(status: Status, abi: Option<String>, error: StageError) -> LoadError {
    LoadError {
        status,
        abi_version: abi,
        error,
    }
}

/// What to call the plugin before its manifest is read: the name it was
/// asked for, else the one its file name implies, else the file name.
fn label(path: &Path, asked: Option<&str>) -> String {
    asked
        .map(str::to_string)
        .or_else(|| super::search::name_of(path))
        .unwrap_or_else(|| path.display().to_string())
}

fn not_a_plugin(path: &Path, why: impl std::fmt::Display) -> LoadError {
    fail(
        Status::NotAPlugin,
        None,
        StageError::invalid_input(format!("{} is not a ktstr plugin: {why}", path.display()))
            .with_hint(
                "a ktstr plugin is a cdylib crate that depends on ktstr-sdk and invokes ktstr_sdk::export_plugin! (see `ktstr docs plugin-authoring`)",
            ),
    )
}

/// Load the library at `path` (already resolved and trusted).
pub fn load(path: &Path, asked: Option<&str>) -> std::result::Result<LoadedPlugin, LoadError> {
    let name = label(path, asked);
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::GetSymbolError { .. } => {
            not_a_plugin(path, "it exports no ktstr plugin header")
        }
        LibraryError::OpenError { err, .. } => fail(
            Status::NotAPlugin,
            None,
            StageError::invalid_input(format!(
                "cannot load plugin {name} from {}: {err}",
                path.display()
            ))
            .with_hint("the file must be a shared library built for this machine (a cdylib)"),
        ),
        LibraryError::InvalidAbiHeader(h) => fail(
            Status::AbiMismatch,
            None,
            StageError::invalid_input(format!(
                "plugin {name} at {} was built with an incompatible abi_stable (header {h:?})",
                path.display()
            ))
            .with_hint(rebuild_hint(path)),
        ),
        other => fail(
            Status::Broken,
            None,
            StageError::internal(format!(
                "cannot read the header of plugin {name} at {}",
                path.display()
            ))
            .caused_by(other),
        ),
    })?;

    let consts = header.root_mod_consts();
    if consts.name() != ROOT_MODULE_NAME {
        return Err(not_a_plugin(
            path,
            format!(
                "it is an abi_stable library for {:?}, not for ktstr",
                consts.name()
            ),
        ));
    }

    let theirs = header.version_strings();
    let abi = theirs.version.as_str().to_string();
    let version = semver::Version::parse(&abi).map_err(|e| {
        fail(
            Status::AbiMismatch,
            Some(abi.clone()),
            StageError::invalid_input(format!(
                "plugin {name} at {} declares ABI version {abi:?}, which is not a version",
                path.display()
            ))
            .caused_by(e)
            .with_hint(rebuild_hint(path)),
        )
    })?;
    let needed = abi_requirement();
    if !needed.matches(&version) {
        return Err(fail(
            Status::AbiMismatch,
            Some(abi.clone()),
            StageError::invalid_input(format!(
                "plugin {name} ({}) was built against plugin ABI {abi}, but this ktstr {} needs plugin ABI {needed}",
                path.display(),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_hint(rebuild_hint(path)),
        ));
    }

    // Before the root-module constructor, the first plugin code that runs.
    check_unwinds(path, &name, &abi)?;

    let root = header
        .init_root_module::<PluginModRef>()
        .map_err(|e| init_error(&name, path, &abi, e))?;

    let attach = (root.attach())(super::callbacks::logger_box(&name));
    if let Err(e) = attach.into_result() {
        return Err(fail(
            Status::Broken,
            Some(abi),
            from_ffi(e).context(format!("plugin {name}")),
        ));
    }
    let manifest: Manifest = (root.manifest())()
        .into_result()
        .map_err(from_ffi)
        .and_then(|json| from_json("the plugin manifest", &json))
        .map_err(|e| {
            fail(
                Status::Broken,
                Some(abi.clone()),
                e.context(format!("plugin {name} at {}", path.display())),
            )
        })?;
    Ok(LoadedPlugin {
        path: path.to_path_buf(),
        manifest,
        root,
    })
}

/// Whether the library records that it unwinds on panic (the symbol
/// `export_plugin!` exports); `None` for a library built before the SDK
/// exported it.
fn unwinds(path: &Path) -> Option<bool> {
    let lib = RawLibrary::load_at(path).ok()?;
    let mut symbol = PANIC_UNWIND_SYMBOL.as_bytes().to_vec();
    symbol.push(0);
    // SAFETY: `export_plugin!` declares this symbol as a `u8` static; the
    // library stays loaded (abi_stable leaked a handle to it) while we read.
    let value = unsafe {
        let sym = lib.get::<*const u8>(&symbol).ok()?;
        (*sym).read_volatile()
    };
    Some(value != 0)
}

/// Refuse a plugin built with `panic = "abort"`: a panic in it would kill
/// ktstr on the spot (exit 134, its CPU sandbox left behind) instead of
/// being the error the panic guards turn it into.
fn check_unwinds(path: &Path, name: &str, abi: &str) -> std::result::Result<(), LoadError> {
    match unwinds(path) {
        Some(true) => Ok(()),
        None => {
            tracing::debug!(
                "plugin {name} ({}) does not record its panic strategy (built with an older \
                 ktstr-sdk); assuming it unwinds",
                path.display()
            );
            Ok(())
        }
        Some(false) => Err(fail(
            Status::PanicAbort,
            Some(abi.to_string()),
            StageError::invalid_input(format!(
                "refusing to load plugin {name} ({}): it was built with panic = \"abort\", so \
                 its first panic would kill ktstr instead of being reported as an error",
                path.display()
            ))
            .with_hint(format!(
                "rebuild it with the default panic = \"unwind\" (remove panic = \"abort\" from \
                 its Cargo profile and -C panic=abort from RUSTFLAGS) and replace {}",
                path.display()
            )),
        )),
    }
}

fn init_error(name: &str, path: &Path, abi: &str, e: LibraryError) -> LoadError {
    let at = path.display();
    match e {
        LibraryError::AbiInstability(report) => {
            tracing::debug!("abi_stable layout report for {at}:\n{report}");
            fail(
                Status::AbiMismatch,
                Some(abi.to_string()),
                StageError::invalid_input(format!(
                    "plugin {name} ({at}) declares plugin ABI {abi}, but its types do not match this ktstr's (it was built against a different ktstr-sdk)"
                ))
                .with_hint(format!(
                    "{}; -v (or RUST_LOG=ktstr=debug) shows abi_stable's layout report",
                    rebuild_hint(path)
                )),
            )
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => fail(
            Status::AbiMismatch,
            Some(abi.to_string()),
            StageError::invalid_input(format!(
                "plugin {name} ({at}) was built against plugin ABI {}, but this ktstr needs {}",
                version_text(&actual_version),
                abi_requirement()
            ))
            .with_hint(rebuild_hint(path)),
        ),
        LibraryError::RootModule { err, .. } => {
            let why = match err {
                RootModuleError::Returned(e) => e.to_string(),
                RootModuleError::Unwound => "it panicked".to_string(),
            };
            fail(
                Status::Broken,
                Some(abi.to_string()),
                StageError::new(
                    ErrorKind::Internal,
                    format!("plugin {name} ({at}) failed to initialise: {why}"),
                )
                .with_hint(format!(
                    "this is a bug in the plugin; report it to its authors, or run without --plugin {name}"
                )),
            )
        }
        other => fail(
            Status::Broken,
            Some(abi.to_string()),
            StageError::internal(format!("cannot load plugin {name} ({at})")).caused_by(other),
        ),
    }
}

fn version_text(v: &VersionNumber) -> String {
    format!("{}.{}.{}", v.major, v.minor, v.patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_follows_abi_stable() {
        let req = abi_requirement();
        let ours = semver::Version::parse(ABI_VERSION).unwrap();
        assert!(req.matches(&ours));
        let older = semver::Version::new(0, 0, 1);
        assert!(!req.matches(&older), "{req}");
        let next_patch = semver::Version::new(ours.major, ours.minor, ours.patch + 7);
        assert!(req.matches(&next_patch), "a newer patch: {req}");
        let next_minor = semver::Version::new(ours.major, ours.minor + 1, 0);
        // abi_stable accepts a newer minor only from 1.0 on.
        assert_eq!(req.matches(&next_minor), ours.major >= 1, "{req}");
        let next_major = semver::Version::new(ours.major + 1, 0, 0);
        assert!(!req.matches(&next_major), "{req}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let e = super::super::search::check_trusted(Path::new("/nonexistent/libktstr_plugin_x.so"))
            .unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/libktstr_plugin_x.so"),
            "{e}"
        );
    }
}
