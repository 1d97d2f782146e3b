//! "Did you mean": the known name closest to a misspelt one.
//!
//! Jaro-Winkler similarity from `strsim` (already in the tree through
//! clap), with clap's own threshold, so `--plugin s3cache` and
//! `--profile tiy` get the same kind of suggestion clap gives for a
//! misspelt flag.

/// The candidate most similar to `wrong`, if any is similar enough.
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(wrong, c), c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `; did you mean "tiny"?`, or nothing: appended to a hint.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(wrong, candidates).map_or(String::new(), |c| format!("did you mean {c:?}? "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_miss_is_suggested_and_nonsense_is_not() {
        let plugins = ["local-cache", "s3-cache", "http-cache", "llc", "none"];
        assert_eq!(closest("s3cache", plugins), Some("s3-cache"));
        assert_eq!(closest("http_cache", plugins), Some("http-cache"));
        assert_eq!(closest("lcc", plugins), Some("llc"));
        assert_eq!(closest("zzzzqqq", plugins), None);
        assert_eq!(closest("tiy", ["default", "tiny"]), Some("tiny"));
        assert_eq!(closest("huge", ["default", "tiny"]), None);
        assert_eq!(did_you_mean("huge", ["default", "tiny"]), "");
        assert_eq!(
            did_you_mean("defualt", ["default", "tiny"]),
            "did you mean \"default\"? "
        );
    }
}
