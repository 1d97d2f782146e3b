//! Cache-key derivation: the one place that decides when two builds are the same.
//!
//! A key is a readable prefix (`<version>-<source kind>-<arch>`) plus a
//! digest of every input that determines the output: source content
//! identity, architecture, configuration, builder options and toolchain.
//! The digest is the first [`DIGEST_HEX`] hex digits (64 bits) of the
//! SHA-256 of the inputs: on a bucket shared by a fleet with a million
//! entries, the chance of any two keys colliding stays below 1 in 30,000
//! (32 bits, the CRC32 of the first format, collided with 1% odds at 10,000
//! entries). A collision would still not serve a wrong kernel: the inputs
//! are kept as named components in the entry's metadata, and a lookup
//! serves an entry only when they all equal the wanted ones
//! ([`same_inputs`]); `ktstr build --explain` shows which one differs.
//!
//! Configuration identity comes in two forms:
//! - **declared** (fresh trees: tarballs, git checkouts): the profile and
//!   fragment hashes, because configuring a fresh tree from them is
//!   deterministic, so the key is known before anything is downloaded;
//! - **`.config` content** (the user's own tree): a local tree keeps its
//!   `.config` when it already carries every requested line, so the file
//!   itself is the input. Hashing it also catches hand edits, and two
//!   checkouts of one commit with the same `.config` share one entry.

use ktstr_sdk::cache::{CacheKey, KeyComponent};
use ktstr_sdk::source::AcquiredSource;

/// How the configuration enters the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigIdentity {
    /// Components from `Configurer::identity` (profile, fragment hashes).
    Declared(Vec<KeyComponent>),
    /// sha256 of the tree's final `.config`.
    DotConfig(String),
}

/// Everything the key depends on.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub source: &'a AcquiredSource,
    pub arch: &'a str,
    pub config: ConfigIdentity,
    /// From `Builder::identity` (builder options, toolchain).
    pub builder: &'a [KeyComponent],
}

/// A derived key with the components that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedKey {
    pub key: CacheKey,
    pub components: Vec<KeyComponent>,
}

/// Derive the key. Only call for sources whose identity is complete
/// (a clean tree): a dirty tree has no content identity to key on.
pub fn derive(inputs: &KeyInputs<'_>) -> DerivedKey {
    let source = inputs.source;
    let mut components = vec![
        KeyComponent::new(
            "source",
            format!("{}:{}", source.identity.kind, source.identity.id),
        ),
        KeyComponent::new("arch", inputs.arch),
    ];
    match &inputs.config {
        ConfigIdentity::Declared(parts) => components.extend(parts.iter().cloned()),
        ConfigIdentity::DotConfig(sha) => {
            components.push(KeyComponent::new("config", format!(".config:{sha}")));
        }
    }
    components.extend(inputs.builder.iter().cloned());

    let digest_input: String = components
        .iter()
        .map(|c| format!("{}={}\n", c.name, c.value))
        .collect();
    let digest = &ktstr_sdk::hash::sha256_hex(digest_input.as_bytes())[..DIGEST_HEX];
    let version = sanitize(source.version.as_deref().unwrap_or("unknown"));
    let kind = sanitize(&source.identity.kind);
    let key = fit_key(
        &format!("{version}-{kind}-{}", sanitize(inputs.arch)),
        digest,
    );
    DerivedKey { key, components }
}

/// Hex digits of the key's digest (64 bits of SHA-256).
pub const DIGEST_HEX: usize = 16;

/// Whether `key` was derived by this key scheme. Keys of the first scheme
/// (a CRC32, 8 hex digits) are never looked up again: `kernel list` shows
/// them as `old format` and `kernel clean` removes them.
pub fn is_current_format(key: &CacheKey) -> bool {
    key.as_str().rsplit_once('-').is_some_and(|(_, digest)| {
        digest.len() == DIGEST_HEX && digest.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Whether an entry recorded exactly the `wanted` inputs (in any order):
/// the condition for serving it under a key derived from them.
pub fn same_inputs(wanted: &[KeyComponent], recorded: &[KeyComponent]) -> bool {
    let mut a = wanted.to_vec();
    let mut b = recorded.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// The name of the first input that differs, for the warning.
pub fn first_difference(wanted: &[KeyComponent], recorded: &[KeyComponent]) -> String {
    wanted
        .iter()
        .find(|w| !recorded.contains(w))
        .or_else(|| recorded.iter().find(|r| !wanted.contains(r)))
        .map_or_else(|| "an input".to_string(), |c| c.name.clone())
}

/// `PREFIX-DIGEST`, the readable prefix cut short when the whole would pass
/// [`CacheKey::MAX_LEN`] (a Makefile with a long EXTRAVERSION, a plugin with
/// a long source kind). The digest covers every input, so a cut prefix
/// costs readability, never uniqueness.
fn fit_key(prefix: &str, digest: &str) -> CacheKey {
    let room = CacheKey::MAX_LEN.saturating_sub(digest.len() + 1);
    let cut = prefix.get(..room.min(prefix.len())).unwrap_or("unknown");
    CacheKey::parse(&format!("{cut}-{digest}"))
        .or_else(|_| CacheKey::parse(&format!("unknown-{digest}")))
        .expect("a sanitized prefix and a hex digest form a valid key")
}

/// The readable part of a key, shared by every entry of the same
/// version, source kind and arch: what `--explain` compares against.
pub fn prefix_of(key: &CacheKey) -> &str {
    key.as_str()
        .rsplit_once('-')
        .map_or(key.as_str(), |(prefix, _)| prefix)
}

fn sanitize(part: &str) -> String {
    let cleaned: String = part
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.').replace("..", "_");
    if trimmed.is_empty() {
        "unknown".into()
    } else {
        trimmed
    }
}

/// Lines saying how `want` differs from `have` (an entry's recorded components).
pub fn explain_difference(want: &[KeyComponent], have: &[KeyComponent]) -> Vec<String> {
    let mut out = Vec::new();
    for w in want {
        match have.iter().find(|h| h.name == w.name) {
            Some(h) if h.value == w.value => {}
            Some(h) => out.push(format!(
                "{}: wanted {}, entry has {}",
                w.name, w.value, h.value
            )),
            None => out.push(format!("{}: wanted {}, entry has none", w.name, w.value)),
        }
    }
    for h in have {
        if !want.iter().any(|w| w.name == h.name) {
            out.push(format!(
                "{}: entry has {}, not an input now",
                h.name, h.value
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::source::SourceIdentity;
    use std::path::PathBuf;

    fn source(id: &str, version: Option<&str>) -> AcquiredSource {
        AcquiredSource {
            source_dir: PathBuf::from("/src/linux"),
            identity: SourceIdentity {
                kind: "local".into(),
                id: id.into(),
                short: None,
            },
            version: version.map(Into::into),
            is_temp: false,
            is_dirty: false,
            is_git: true,
            is_local: true,
        }
    }

    fn builder() -> Vec<KeyComponent> {
        vec![
            KeyComponent::new(
                "builder",
                "kbuild 0.1.0; make KCFLAGS=-Wno-error LOCALVERSION=",
            ),
            KeyComponent::new("toolchain", "gcc (Debian 12.2.0-14) 12.2.0; GNU ld 2.40"),
        ]
    }

    fn key_for(id: &str, config: ConfigIdentity) -> DerivedKey {
        let src = source(id, Some("6.12.117"));
        let b = builder();
        derive(&KeyInputs {
            source: &src,
            arch: "x86_64",
            config,
            builder: &b,
        })
    }

    #[test]
    fn key_has_readable_prefix_and_64_bit_digest() {
        let k = key_for("abc", ConfigIdentity::DotConfig("11".into()));
        let s = k.key.as_str();
        assert!(s.starts_with("6.12.117-local-x86_64-"), "{s}");
        let digest = s.rsplit('-').next().unwrap();
        assert_eq!(digest.len(), 16);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(prefix_of(&k.key), "6.12.117-local-x86_64");
        assert!(is_current_format(&k.key));
        let old = CacheKey::parse("6.12.117-local-x86_64-1a2b3c4d").unwrap();
        assert!(!is_current_format(&old));
    }

    #[test]
    fn same_inputs_ignores_order_and_sees_every_difference() {
        let k = key_for("abc", ConfigIdentity::DotConfig("11".into()));
        let mut shuffled = k.components.clone();
        shuffled.reverse();
        assert!(same_inputs(&k.components, &shuffled));
        let mut tampered = k.components.clone();
        tampered[4].value.push('x');
        assert!(!same_inputs(&k.components, &tampered));
        assert_eq!(first_difference(&k.components, &tampered), "toolchain");
        let mut extra = k.components.clone();
        extra.push(KeyComponent::new("make-vars", "KCFLAGS=-O3"));
        assert!(!same_inputs(&k.components, &extra));
        assert_eq!(first_difference(&k.components, &extra), "make-vars");
        assert!(!same_inputs(&k.components, &k.components[1..]));
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = key_for("abc", ConfigIdentity::DotConfig("11".into()));
        assert_eq!(base, key_for("abc", ConfigIdentity::DotConfig("11".into())));
        assert_ne!(
            base.key,
            key_for("abd", ConfigIdentity::DotConfig("11".into())).key
        );
        assert_ne!(
            base.key,
            key_for("abc", ConfigIdentity::DotConfig("12".into())).key
        );
        let declared = key_for(
            "abc",
            ConfigIdentity::Declared(vec![KeyComponent::new("profile", "tiny")]),
        );
        assert_ne!(base.key, declared.key);

        let src = source("abc", Some("6.12.117"));
        let mut b = builder();
        b[1].value.push_str(" (patched)");
        let other_toolchain = derive(&KeyInputs {
            source: &src,
            arch: "x86_64",
            config: ConfigIdentity::DotConfig("11".into()),
            builder: &b,
        });
        assert_ne!(base.key, other_toolchain.key);
        let other_arch = derive(&KeyInputs {
            source: &src,
            arch: "aarch64",
            config: ConfigIdentity::DotConfig("11".into()),
            builder: &builder(),
        });
        assert_ne!(base.key, other_arch.key);
    }

    #[test]
    fn components_are_recorded_in_order() {
        let k = key_for("abc", ConfigIdentity::DotConfig("11".into()));
        let names: Vec<_> = k.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["source", "arch", "config", "builder", "toolchain"]);
        assert_eq!(k.components[0].value, "local:abc");
    }

    #[test]
    fn odd_versions_are_sanitized() {
        let src = source("abc", Some("6.13.0-rc1/../x"));
        let k = derive(&KeyInputs {
            source: &src,
            arch: "x86_64",
            config: ConfigIdentity::DotConfig("1".into()),
            builder: &[],
        });
        assert!(k.key.as_str().starts_with("6.13.0-rc1_"), "{}", k.key);
        assert!(!k.key.as_str().contains('/'));
        let none = source("abc", None);
        let k = derive(&KeyInputs {
            source: &none,
            arch: "x86_64",
            config: ConfigIdentity::DotConfig("1".into()),
            builder: &[],
        });
        assert!(k.key.as_str().starts_with("unknown-local-x86_64-"));
    }

    #[test]
    fn explain_names_the_differing_component() {
        let want = vec![
            KeyComponent::new("source", "local:b"),
            KeyComponent::new("arch", "x86_64"),
        ];
        let have = vec![
            KeyComponent::new("source", "local:a"),
            KeyComponent::new("arch", "x86_64"),
            KeyComponent::new("old", "x"),
        ];
        let lines = explain_difference(&want, &have);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("source: wanted local:b, entry has local:a"));
        assert!(lines[1].contains("old"));
    }

    #[test]
    fn long_prefixes_are_cut_to_fit_the_key_limit() {
        let digest = "0123abcd";
        let key = fit_key(&"6.12.3-".repeat(40), digest);
        assert_eq!(key.as_str().len(), CacheKey::MAX_LEN);
        assert!(key.as_str().ends_with("-0123abcd"));
        assert_eq!(
            fit_key("6.12.3-tarball-x86_64", digest).as_str(),
            "6.12.3-tarball-x86_64-0123abcd"
        );
    }
}
