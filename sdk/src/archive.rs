//! Which file names are kernel archives.
//!
//! The tarball source unpacks them and the local source must leave them to
//! it (a `linux-6.12.tar.xz` path is a tarball, not a tree), so both read
//! this one list; plugins may not depend on each other.

/// File name endings of archives, longest first where one ends another
/// (`.tar.xz` before `.tar`), so stripping the first match leaves the stem.
/// The content is recognised by its magic bytes, not by the name.
pub const ARCHIVE_SUFFIXES: [&str; 5] = [".tar.xz", ".tar.gz", ".tgz", ".tar.zst", ".tar"];

/// Whether `name` ends in an archive suffix, in any letter case.
pub fn has_archive_suffix(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ARCHIVE_SUFFIXES.iter().any(|s| lower.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_named_by_their_suffix() {
        for yes in [
            "linux-6.12.tar.xz",
            "L.TGZ",
            "a.tar",
            "b.tar.zst",
            "c.tar.gz",
        ] {
            assert!(has_archive_suffix(yes), "{yes}");
        }
        for no in ["linux-6.12", "a.tar.bz2", "a.zip", "tar"] {
            assert!(!has_archive_suffix(no), "{no}");
        }
        assert_eq!(
            ARCHIVE_SUFFIXES
                .iter()
                .find_map(|s| "linux-6.12.tar.xz".strip_suffix(s)),
            Some("linux-6.12")
        );
    }
}
