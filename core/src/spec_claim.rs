//! Which source a `--kernel` spec belongs to when more than one claims it.
//!
//! Precedence (docs/sources.md, "Which source claims a spec"): sources are
//! asked in order (plugin libraries first, then the built-ins) and the
//! first that claims a spec gets it. The one overlap among the built-ins
//! is a bare name that is both a directory in the working directory and
//! something another source reads (`6.12.3` with a `./6.12.3` directory
//! present). Taking the directory silently turns a release build into a
//! local build, and taking the release silently ignores the directory, so
//! that spec is an error showing both readings and how to write each.
//! A spec written as a path (`./6.12.3`, `/src/6.12.3`) is never ambiguous.

use ktstr_sdk::source::{KernelSpec, SourceAcquirer};
use ktstr_sdk::{Result, StageError};

use crate::registry::Named;

/// The built-in source that claims existing directories.
const LOCAL: &str = "local";

/// Whether `raw` is written as a path rather than as a bare name.
pub fn is_path_shaped(raw: &str) -> bool {
    matches!(raw, "." | ".." | "~") || ["/", "./", "../", "~/"].iter().any(|p| raw.starts_with(p))
}

/// The error for a spec claimed both as a bare directory name and by
/// another source; `None` when the first claimer may have it.
pub fn ambiguity(spec: &KernelSpec, claimers: &[&Named<dyn SourceAcquirer>]) -> Option<StageError> {
    let (first, rest) = claimers.split_first()?;
    if first.name != LOCAL || is_path_shaped(&spec.raw) {
        return None;
    }
    let other = rest.first()?;
    let raw = &spec.raw;
    Some(
        StageError::invalid_input(format!(
            "--kernel {raw} is ambiguous: `./{raw}` is a directory here (a local tree), \
             and the {} source reads `{raw}` as its own spec (a release)",
            other.name
        ))
        .with_hint(format!(
            "write `--kernel ./{raw}` for the directory; for the {} reading, run ktstr from \
             a directory without `./{raw}` (or rename it)",
            other.name
        )),
    )
}

/// `Ok` when `result` is; otherwise `Err` prefixed with `--kernel SPEC` unless
/// the message already names a `--kernel` spec. Attached once, where the spec is known
/// (resolve and acquire), so no plugin has to repeat it.
pub fn name_spec<T>(spec: &KernelSpec, result: Result<T>) -> Result<T> {
    result.map_err(|e| {
        if e.message.contains("--kernel ") || e.kind == ktstr_sdk::ErrorKind::Cancelled {
            e
        } else {
            e.context(format!("--kernel {}", spec.raw))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::prelude::*;

    struct Claims(bool);
    impl SourceAcquirer for Claims {
        fn claims(&self, _: &KernelSpec) -> bool {
            self.0
        }
        fn accepted_forms(&self) -> Vec<String> {
            Vec::new()
        }
        fn acquire(&self, _: &KernelSpec, _: &StageContext) -> Result<AcquiredSource> {
            Err(StageError::internal("unused"))
        }
    }

    fn named(name: &str) -> Named<dyn SourceAcquirer> {
        Named {
            name: name.into(),
            stage: Box::new(Claims(true)),
        }
    }

    #[test]
    fn a_bare_directory_name_another_source_reads_is_ambiguous() {
        let (local, tarball) = (named("local"), named("tarball"));
        let e = ambiguity(&KernelSpec::new("6.12.3"), &[&local, &tarball]).unwrap();
        assert!(e.message.contains("`./6.12.3` is a directory"), "{e}");
        assert!(e.message.contains("tarball source reads `6.12.3`"), "{e}");
        assert!(e.hint.unwrap().contains("--kernel ./6.12.3"));
        // Written as a path, claimed by one source, or a plugin first: fine.
        assert!(ambiguity(&KernelSpec::new("./6.12.3"), &[&local, &tarball]).is_none());
        assert!(ambiguity(&KernelSpec::new("6.12.3"), &[&local]).is_none());
        assert!(ambiguity(&KernelSpec::new("6.12.3"), &[&tarball, &local]).is_none());
        assert!(ambiguity(&KernelSpec::new("x"), &[]).is_none());
    }

    #[test]
    fn errors_name_the_spec_once() {
        let spec = KernelSpec::new("99.99.99");
        let e =
            name_spec::<()>(&spec, Err(StageError::not_found("cannot reach host"))).unwrap_err();
        assert_eq!(e.message, "--kernel 99.99.99: cannot reach host");
        let e = name_spec::<()>(&spec, Err(StageError::not_found("--kernel 99.99.99: gone")))
            .unwrap_err();
        assert_eq!(e.message, "--kernel 99.99.99: gone");
    }
}
