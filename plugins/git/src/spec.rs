//! The `git+URL[#tag=|#branch=|#sha=]` spec grammar.
//!
//! The `git+` prefix is what tells a git remote apart from a tarball URL
//! (`https://…/linux.tar.xz`) or a local path, so every spec starting with
//! it is claimed here — even one with an unsupported scheme — so the user
//! gets "scheme ftp is not supported" rather than "no plugin understands
//! this spec". The fragment names exactly one ref kind: a bare `#v6.12`
//! would be ambiguous between a tag and a branch of the same name.

use ktstr_sdk::prelude::*;

/// The prefix every git spec starts with.
pub const PREFIX: &str = "git+";

/// URL schemes that can follow `git+`.
pub const SCHEMES: [&str; 4] = ["https", "http", "file", "ssh"];

/// What the fragment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitRef {
    /// No fragment: whatever the remote's `HEAD` points at.
    Head,
    /// `#tag=NAME`: `refs/tags/NAME` (annotated tags are peeled).
    Tag(String),
    /// `#branch=NAME`: `refs/heads/NAME`.
    Branch(String),
    /// `#sha=<40 hex>`: one commit, lowercase.
    Sha(String),
}

impl GitRef {
    /// The full ref name on the remote (`HEAD`, `refs/tags/v6.12`), or
    /// `None` for a commit id.
    pub fn full_name(&self) -> Option<String> {
        match self {
            GitRef::Head => Some("HEAD".into()),
            GitRef::Tag(t) => Some(format!("refs/tags/{t}")),
            GitRef::Branch(b) => Some(format!("refs/heads/{b}")),
            GitRef::Sha(_) => None,
        }
    }

    /// How the ref reads in messages: `tag v6.12`, `the remote HEAD`.
    pub fn describe(&self) -> String {
        match self {
            GitRef::Head => "the remote HEAD".into(),
            GitRef::Tag(t) => format!("tag {t}"),
            GitRef::Branch(b) => format!("branch {b}"),
            GitRef::Sha(s) => format!("commit {s}"),
        }
    }
}

/// A parsed `git+` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSpec {
    /// The remote URL without `git+` and fragment, exactly as written
    /// (minus trailing slashes): it keys the mirror, so two spellings of one
    /// remote get two mirrors rather than a wrong guess that they are equal.
    pub url: String,
    pub scheme: String,
    pub reference: GitRef,
}

impl GitSpec {
    /// The spec pinned to `commit`: what `acquire` is handed after resolve.
    pub fn pinned(&self, commit: &str) -> String {
        pinned(&self.url, commit)
    }
}

/// `git+URL#sha=COMMIT`.
pub fn pinned(url: &str, commit: &str) -> String {
    format!("{PREFIX}{url}#sha={commit}")
}

/// Whether `raw` is a git spec (claimed even when malformed, see the
/// module docs).
pub fn claims(raw: &str) -> bool {
    raw.starts_with(PREFIX)
}

/// The forms shown when no acquirer claims a spec.
pub fn accepted_forms() -> Vec<String> {
    vec![
        "git+https://HOST/REPO.git#tag=NAME (also git+http://, git+ssh://, git+file:///PATH)"
            .into(),
        "git+URL#branch=NAME".into(),
        "git+URL#sha=<40-hex commit id>".into(),
        "git+URL (no fragment: the commit the remote's HEAD points at)".into(),
    ]
}

const GRAMMAR_HINT: &str = "write git+URL#tag=NAME, git+URL#branch=NAME or git+URL#sha=<40 hex>, e.g. git+https://git.kernel.org/pub/scm/linux/kernel/git/stable/linux.git#tag=v6.12.3";

/// Parse a `git+` spec; errors name the spec and show the grammar.
pub fn parse(raw: &str) -> Result<GitSpec> {
    let bad = |what: String| {
        StageError::invalid_input(format!("--kernel {raw}: {what}")).with_hint(GRAMMAR_HINT)
    };
    let rest = raw
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("a git spec starts with git+".into()))?;
    let (url, fragment) = match rest.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (rest, None),
    };
    let url = url.trim_end_matches('/');
    let Some((scheme, after)) = url.split_once("://") else {
        return Err(bad(format!(
            "{url:?} is not a URL (expected {}://…)",
            SCHEMES.join("://, ")
        )));
    };
    if !SCHEMES.contains(&scheme) {
        return Err(bad(format!(
            "the URL scheme {scheme}:// is not supported (use one of {})",
            SCHEMES.map(|s| format!("{s}://")).join(", ")
        )));
    }
    if after.is_empty() || (scheme == "file" && !after.starts_with('/')) {
        let example = if scheme == "file" {
            "file:///srv/linux.git (an absolute path after file://)"
        } else {
            "HOST/PATH after the scheme"
        };
        return Err(bad(format!(
            "{url:?} has no repository location: write {example}"
        )));
    }
    let reference = match fragment {
        None => GitRef::Head,
        Some(fragment) => parse_fragment(fragment).map_err(bad)?,
    };
    Ok(GitSpec {
        url: url.to_string(),
        scheme: scheme.to_string(),
        reference,
    })
}

fn parse_fragment(fragment: &str) -> std::result::Result<GitRef, String> {
    let Some((key, value)) = fragment.split_once('=') else {
        return Err(format!(
            "fragment #{fragment} names no ref kind (tag=, branch= or sha=)"
        ));
    };
    if value.is_empty() {
        return Err(format!("#{key}= is empty"));
    }
    match key {
        "tag" => valid_ref_name(value).map(|v| GitRef::Tag(v.into())),
        "branch" => valid_ref_name(value).map(|v| GitRef::Branch(v.into())),
        "sha" => {
            if value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(GitRef::Sha(value.to_ascii_lowercase()))
            } else {
                Err(format!(
                    "#sha={value} is not a full commit id (40 hex digits); abbreviated ids are not accepted because they can become ambiguous"
                ))
            }
        }
        other => Err(format!(
            "unknown fragment key {other:?} (expected tag, branch or sha)"
        )),
    }
}

/// A tag or branch name as `git check-ref-format` would accept it.
fn valid_ref_name(name: &str) -> std::result::Result<&str, String> {
    use gix::bstr::ByteSlice;
    let full = format!("refs/heads/{name}");
    gix::validate::reference::name(full.as_bytes().as_bstr())
        .map(|_| name)
        .map_err(|e| format!("{name:?} is not a valid ref name ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let s = parse("git+https://h.example/linux.git#tag=v6.12").unwrap();
        assert_eq!(s.url, "https://h.example/linux.git");
        assert_eq!(s.scheme, "https");
        assert_eq!(s.reference, GitRef::Tag("v6.12".into()));
        assert_eq!(
            parse("git+file:///srv/linux.git#branch=sched/next")
                .unwrap()
                .reference,
            GitRef::Branch("sched/next".into())
        );
        let sha = "ABCDEF0123456789abcdef0123456789abcdef01";
        let s = parse(&format!("git+http://127.0.0.1:8/r/#sha={sha}")).unwrap();
        assert_eq!(s.url, "http://127.0.0.1:8/r");
        assert_eq!(s.reference, GitRef::Sha(sha.to_ascii_lowercase()));
        assert_eq!(
            s.pinned(&sha.to_ascii_lowercase()),
            format!("git+http://127.0.0.1:8/r#sha={}", sha.to_ascii_lowercase())
        );
        assert_eq!(
            parse("git+ssh://git@h/linux.git").unwrap().reference,
            GitRef::Head
        );
    }

    #[test]
    fn rejects_malformed_specs_with_the_grammar() {
        for (raw, needle) in [
            ("git+ftp://h/r#tag=x", "scheme ftp:// is not supported"),
            ("git+/srv/linux.git", "is not a URL"),
            ("git+file://srv/linux.git", "no repository location"),
            ("git+https://h/r#v6.12", "names no ref kind"),
            ("git+https://h/r#tag=", "#tag= is empty"),
            ("git+https://h/r#rev=x", "unknown fragment key \"rev\""),
            ("git+https://h/r#sha=abc123", "not a full commit id"),
            ("git+https://h/r#branch=a..b", "not a valid ref name"),
            ("git+https://h/r#tag=x y", "not a valid ref name"),
        ] {
            let e = parse(raw).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{raw}");
            assert!(e.message.starts_with(&format!("--kernel {raw}: ")), "{e}");
            assert!(e.message.contains(needle), "{raw}: {e}");
            assert!(e.hint.unwrap().contains("#tag=NAME"));
        }
    }

    #[test]
    fn claims_only_git_prefixed_specs() {
        assert!(claims("git+https://h/r"));
        assert!(claims("git+ftp://h/r"));
        assert!(!claims("https://h/linux-6.12.tar.xz"));
        assert!(!claims("./linux"));
        assert!(!claims("6.12"));
    }
}
