//! What of the user's environment may reach kbuild, and how.
//!
//! kbuild reads dozens of variables from the environment (`ARCH`, `LLVM`,
//! `KCFLAGS`, `KBUILD_*`, ...), any of which changes the kernel. If one
//! reached make without being in the cache key, `LLVM=1 ktstr build` would
//! hit the gcc entry. So every `make` a stage runs gets a *controlled*
//! environment ([`controlled`]): the inherited one cleared, then only the
//! harmless variables of [`ALLOWED`] put back. Every variable kbuild reads
//! that the user exported is decided by [`classify`]: a declared input
//! (passed on make's command line and recorded in the key), a variable
//! with a ktstr flag of its own (refused, naming the flag), or refused
//! outright. docs/build-inputs.md lists the table.

use crate::context::CommandSpec;
use crate::error::{Result, StageError};

/// Inherited variables that pass into make unchanged: they change where
/// and how output is shown, not what is built.
pub const ALLOWED: &[&str] = &[
    "PATH", "HOME", "TMPDIR", "LANG", "LANGUAGE", "TERM", "USER", "LOGNAME", "TZ",
];

/// Prefixes of inherited variables that pass unchanged: locale, compiler
/// caches and distributors (they never change the object code), and
/// ktstr's own (tests steer the fixture tree with `KTSTR_FIXTURE_*`).
pub const ALLOWED_PREFIXES: &[&str] =
    &["LC_", "CCACHE_", "DISTCC_", "ICECC_", "SCCACHE_", "KTSTR_"];

/// What happens to a kbuild variable found in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Passed to make as `NAME=value` and recorded in the cache key.
    Input,
    /// Refused: ktstr has a flag for it (the flag is named).
    UseFlag(&'static str),
    /// Refused, with the reason and what to do instead.
    Refused(&'static str),
    /// Not passed (make would not read it from the environment, or it only
    /// matters to `make install`, which ktstr never runs).
    Dropped(&'static str),
}

/// Variables kbuild reads, with their policy. Any other `KBUILD_*` or
/// `KCONFIG_*` variable is refused (see [`policy_of`]).
pub const VARIABLES: &[(&str, Policy)] = &[
    ("ARCH", Policy::UseFlag("--arch")),
    ("SRCARCH", Policy::UseFlag("--arch")),
    ("SUBARCH", Policy::UseFlag("--arch")),
    ("CROSS_COMPILE", Policy::UseFlag("--cross-compile")),
    ("LLVM", Policy::UseFlag("--toolchain llvm (or llvm-N)")),
    (
        "LLVM_IAS",
        Policy::UseFlag("--toolchain llvm (the integrated assembler is always on)"),
    ),
    ("O", Policy::UseFlag("--output")),
    ("KBUILD_OUTPUT", Policy::UseFlag("--output")),
    (
        "LOCALVERSION",
        Policy::Refused(
            "ktstr builds with LOCALVERSION= so a tree's release string is stable; set CONFIG_LOCALVERSION with --kconfig instead",
        ),
    ),
    (
        "MAKEFILES",
        Policy::Refused("it makes make read extra makefiles; unset it"),
    ),
    ("CC", Policy::Input),
    ("LD", Policy::Input),
    ("AS", Policy::Input),
    ("AR", Policy::Input),
    ("NM", Policy::Input),
    ("STRIP", Policy::Input),
    ("OBJCOPY", Policy::Input),
    ("OBJDUMP", Policy::Input),
    ("READELF", Policy::Input),
    ("HOSTCC", Policy::Input),
    ("HOSTCXX", Policy::Input),
    ("HOSTLD", Policy::Input),
    ("HOSTAR", Policy::Input),
    ("HOSTPKG_CONFIG", Policy::Input),
    ("HOSTCFLAGS", Policy::Input),
    ("HOSTCXXFLAGS", Policy::Input),
    ("HOSTLDFLAGS", Policy::Input),
    ("HOSTLDLIBS", Policy::Input),
    ("HOSTRUSTFLAGS", Policy::Input),
    ("KCFLAGS", Policy::Input),
    ("KCPPFLAGS", Policy::Input),
    ("KAFLAGS", Policy::Input),
    ("KRUSTFLAGS", Policy::Input),
    ("CFLAGS_KERNEL", Policy::Input),
    ("AFLAGS_KERNEL", Policy::Input),
    ("RUSTFLAGS_KERNEL", Policy::Input),
    ("CFLAGS_MODULE", Policy::Input),
    ("AFLAGS_MODULE", Policy::Input),
    ("LDFLAGS_MODULE", Policy::Input),
    ("RUSTFLAGS_MODULE", Policy::Input),
    ("USERCFLAGS", Policy::Input),
    ("USERLDFLAGS", Policy::Input),
    ("RUSTC", Policy::Input),
    ("BINDGEN", Policy::Input),
    ("PAHOLE", Policy::Input),
    ("RESOLVE_BTFIDS", Policy::Input),
    ("PYTHON3", Policy::Input),
    ("PERL", Policy::Input),
    ("KBUILD_BUILD_USER", Policy::Input),
    ("KBUILD_BUILD_HOST", Policy::Input),
    ("KBUILD_BUILD_TIMESTAMP", Policy::Input),
    ("KBUILD_BUILD_VERSION", Policy::Input),
    (
        "INSTALL_PATH",
        Policy::Dropped("only `make install` reads it"),
    ),
    (
        "INSTALL_MOD_PATH",
        Policy::Dropped("only `make modules_install` reads it"),
    ),
    (
        "INSTALL_MOD_STRIP",
        Policy::Dropped("only `make modules_install` reads it"),
    ),
    (
        "INSTALL_HDR_PATH",
        Policy::Dropped("only `make headers_install` reads it"),
    ),
    (
        "INSTALL_DTBS_PATH",
        Policy::Dropped("only `make dtbs_install` reads it"),
    ),
    (
        "MAKEFLAGS",
        Policy::Dropped("ktstr sets make's flags (-j) itself"),
    ),
    (
        "MFLAGS",
        Policy::Dropped("ktstr sets make's flags (-j) itself"),
    ),
    (
        "GNUMAKEFLAGS",
        Policy::Dropped("ktstr sets make's flags (-j) itself"),
    ),
    ("MAKELEVEL", Policy::Dropped("make's own bookkeeping")),
    (
        "V",
        Policy::Dropped("kbuild reads it from the command line only"),
    ),
    (
        "W",
        Policy::Dropped("kbuild reads it from the command line only"),
    ),
    (
        "C",
        Policy::Dropped("kbuild reads it from the command line only"),
    ),
];

/// The policy for `name`, if kbuild reads it.
pub fn policy_of(name: &str) -> Option<Policy> {
    if let Some((_, p)) = VARIABLES.iter().find(|(n, _)| *n == name) {
        return Some(*p);
    }
    if name.starts_with("KBUILD_") || name.starts_with("KCONFIG_") {
        return Some(Policy::Refused(
            "kbuild reads it and it may change the kernel; ktstr does not pass it, so unset it",
        ));
    }
    None
}

/// What [`classify`] found in an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classified {
    /// Declared inputs (name, value), in [`VARIABLES`] order.
    pub inputs: Vec<(String, String)>,
    /// Variables kbuild would not read during a build: (name, why).
    pub dropped: Vec<(String, &'static str)>,
}

/// The kbuild variables found in `env`, or the error for the first
/// refused one. Empty values count as unset.
pub fn classify<I, K, V>(env: I) -> Result<Classified>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut inputs = Vec::new();
    let mut dropped = Vec::new();
    let mut refused: Vec<StageError> = Vec::new();
    for (k, v) in env {
        let (name, value) = (k.as_ref(), v.as_ref());
        if value.is_empty() {
            continue;
        }
        match policy_of(name) {
            Some(Policy::Input) => inputs.push((name.to_string(), value.to_string())),
            Some(Policy::UseFlag(flag)) => refused.push(refusal(
                name,
                value,
                format!("unset {name} and pass {flag} instead"),
            )),
            Some(Policy::Refused(why)) => refused.push(refusal(
                name,
                value,
                format!("{why} (see `ktstr docs build-inputs`)"),
            )),
            Some(Policy::Dropped(why)) => dropped.push((name.to_string(), why)),
            None => {}
        }
    }
    refused.sort_by(|a, b| a.message.cmp(&b.message));
    if let Some(first) = refused.into_iter().next() {
        return Err(first);
    }
    inputs.sort_by_key(|(n, _)| VARIABLES.iter().position(|(v, _)| v == n));
    dropped.sort();
    Ok(Classified { inputs, dropped })
}

/// [`classify`] of this process's environment. A kbuild variable whose
/// value is not UTF-8 is refused (the key could not record it); other
/// variables that are not UTF-8 are not kbuild's, and are left alone.
pub fn classify_process_env() -> Result<Classified> {
    let mut vars = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(name) = k.to_str() else { continue };
        match v.into_string() {
            Ok(value) => vars.push((name.to_string(), value)),
            Err(raw) if policy_of(name).is_some() => {
                return Err(StageError::invalid_input(format!(
                    "{name}={} is set in the environment and is not UTF-8 text; kbuild would \
                     read it, and ktstr cannot record it in the cache key",
                    raw.to_string_lossy()
                ))
                .with_hint(format!("unset {name}, or set it to UTF-8 text")));
            }
            Err(_) => {}
        }
    }
    classify(vars)
}

/// The error for a refused variable; `hint` says what to do instead.
fn refusal(name: &str, value: &str, hint: String) -> StageError {
    StageError::invalid_input(format!(
        "{name}={value} is set in the environment; kbuild would read it, and ktstr does not \
         pass it to make"
    ))
    .with_hint(hint)
}

/// Whether an inherited variable passes into make unchanged.
pub fn is_allowed(name: &str) -> bool {
    ALLOWED.contains(&name) || ALLOWED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Give `spec` the controlled environment: nothing inherited but the
/// [`ALLOWED`] variables (and whatever `spec.env` adds).
pub fn controlled(mut spec: CommandSpec) -> CommandSpec {
    spec.env_clear = true;
    let mut inherited: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| is_allowed(k))
        .collect();
    inherited.append(&mut spec.env);
    spec.env = inherited;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_kept_in_table_order() {
        let got = classify([
            ("KCFLAGS", "-O3"),
            ("PATH", "/bin"),
            ("CC", "clang"),
            ("X", "y"),
        ])
        .unwrap()
        .inputs;
        assert_eq!(
            got,
            [
                ("CC".to_string(), "clang".to_string()),
                ("KCFLAGS".to_string(), "-O3".to_string())
            ]
        );
    }

    #[test]
    fn variant_variables_name_their_flag() {
        for (var, flag) in [
            ("ARCH", "--arch"),
            ("CROSS_COMPILE", "--cross-compile"),
            ("LLVM", "--toolchain"),
            ("O", "--output"),
            ("KBUILD_OUTPUT", "--output"),
        ] {
            let err = classify([(var, "x")]).unwrap_err();
            assert!(err.message.starts_with(&format!("{var}=x ")), "{err}");
            assert!(
                err.hint.as_deref().unwrap().contains(flag),
                "{var}: {err:?}"
            );
        }
    }

    #[test]
    fn unknown_kbuild_and_kconfig_variables_are_refused() {
        for var in [
            "KBUILD_EXTRA_SYMBOLS",
            "KCONFIG_CONFIG",
            "KBUILD_VERBOSE",
            "LOCALVERSION",
        ] {
            assert!(classify([(var, "1")]).is_err(), "{var}");
        }
        assert!(classify([("KBUILD_BUILD_USER", "ci")]).is_ok());
    }

    #[test]
    fn empty_values_count_as_unset_and_dropped_ones_are_reported() {
        let got = classify([("ARCH", ""), ("MAKEFLAGS", "-j8")]).unwrap();
        assert_eq!(got.inputs, []);
        assert_eq!(
            got.dropped,
            [(
                "MAKEFLAGS".to_string(),
                "ktstr sets make's flags (-j) itself"
            )]
        );
    }

    #[test]
    fn controlled_env_keeps_only_allowed_variables() {
        let spec = controlled(CommandSpec::new("make").env("CC", "gcc"));
        assert!(spec.env_clear);
        assert!(spec.env.iter().all(|(k, _)| is_allowed(k) || k == "CC"));
        assert_eq!(
            spec.env.last().unwrap(),
            &("CC".to_string(), "gcc".to_string())
        );
        assert!(is_allowed("LC_ALL") && is_allowed("PATH") && !is_allowed("ARCH"));
        assert!(!is_allowed("KCFLAGS") && !is_allowed("MAKEFLAGS"));
    }
}
