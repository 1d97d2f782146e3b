//! What a build leaves in its entry's metadata besides the key: the
//! kernelrelease, step durations, diagnostic counts, the make command and
//! a reproducer (see `Metadata::build` and docs/cache.md).
//!
//! The pipeline gathers an [`Evidence`] while it configures and builds;
//! `store::metadata_for` turns it into the recorded fields.

use std::path::Path;
use std::time::Duration;

use ktstr_sdk::cache::{KeyComponent, StepDurations};
use ktstr_sdk::source::AcquiredSource;

use super::BuildRequestSpec;

/// What the pipeline observed about one build.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// `include/config/kernel.release` of the build directory.
    pub kernelrelease: Option<String>,
    pub durations: StepDurations,
    pub warnings: u64,
    pub errors: u64,
    /// The builder's make command (`BuildOutput::command`).
    pub make_command: Option<String>,
    /// The configurer's declared identity (profile, fragment digests).
    pub declared: Vec<KeyComponent>,
    /// The `ktstr build ... --force` command that rebuilds it.
    pub ktstr_command: String,
}

/// Milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The release kbuild wrote for this build, if it did.
pub fn kernelrelease(build_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(build_dir.join("include/config/kernel.release")).ok()?;
    let release = text.trim();
    (!release.is_empty()).then(|| release.to_string())
}

/// `word` quoted for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%#".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// An absolute form of `raw` if it names an existing path (a tree or a
/// tarball file given relative to where ktstr ran), else `raw` itself.
fn absolute_if_path(raw: &str) -> String {
    let path = Path::new(raw);
    if raw.contains("://") || !path.exists() {
        return raw.to_string();
    }
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| raw.to_string())
}

/// `ktstr build --kernel <spec> [--profile P] [--extra-kconfig F]...
/// [--kconfig L]... [--arch A] [--toolchain T] [--cross-compile P]
/// [--output D] --force`.
///
/// Local trees are named by their absolute path; paths are absolute so the
/// command works from any directory.
pub fn ktstr_command(spec: &str, source: &AcquiredSource, req: &BuildRequestSpec) -> String {
    let request = &req.configure;
    let kernel = if source.is_local {
        source.source_dir.display().to_string()
    } else {
        absolute_if_path(spec)
    };
    let mut words = vec![
        "ktstr".to_string(),
        "build".to_string(),
        "--kernel".to_string(),
        kernel,
        "--profile".to_string(),
        request.profile.clone(),
    ];
    for f in &request.fragments {
        // `--kconfig` lines (and the config file's) are named after their line.
        if let Some(line) = f
            .name
            .strip_prefix("--kconfig ")
            .or_else(|| f.name.strip_prefix("config file kconfig "))
        {
            words.push("--kconfig".to_string());
            words.push(line.to_string());
        } else {
            words.push("--extra-kconfig".to_string());
            words.push(absolute_if_path(&f.name));
        }
    }
    let v = &req.variant;
    for (flag, value) in [
        ("--arch", &v.arch),
        ("--toolchain", &v.toolchain),
        ("--cross-compile", &v.cross_compile),
    ] {
        if let Some(value) = value {
            words.push(flag.to_string());
            words.push(value.clone());
        }
    }
    if let Some(out) = &req.output {
        words.push("--output".to_string());
        words.push(out.display().to_string());
    }
    words.push("--force".to_string());
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The plain-kbuild reproducer: in the source tree, with the entry's
/// `config` file.
pub fn make_reproducer(make_command: &str) -> String {
    format!("cp config .config && make olddefconfig && {make_command}")
}

/// Every input the build was asked for: the key components, then the
/// declared ones the key does not carry itself (a local tree's key holds
/// its `.config` digest instead of the profile and fragments).
pub fn inputs(components: &[KeyComponent], declared: &[KeyComponent]) -> Vec<KeyComponent> {
    let mut all = components.to_vec();
    for d in declared {
        if !all.iter().any(|c| c.name == d.name) {
            all.push(d.clone());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::configure::{ConfigureRequest, Fragment};
    use ktstr_sdk::source::SourceIdentity;

    fn source(dir: &str, is_local: bool) -> AcquiredSource {
        AcquiredSource {
            source_dir: dir.into(),
            identity: SourceIdentity {
                kind: "git".into(),
                id: "abc".into(),
                short: None,
            },
            version: None,
            is_temp: !is_local,
            is_dirty: false,
            is_git: true,
            is_local,
        }
    }

    fn request(fragments: &[&str]) -> BuildRequestSpec {
        BuildRequestSpec {
            spec: ktstr_sdk::source::KernelSpec::new("x"),
            configure: ConfigureRequest {
                profile: "tiny".into(),
                fragments: fragments
                    .iter()
                    .map(|n| Fragment {
                        name: n.to_string(),
                        content: String::new(),
                    })
                    .collect(),
                make_jobs: 1,
                ..ConfigureRequest::default()
            },
            clean: false,
            force: false,
            cpu_cap: None,
            explain: false,
            keep_source: false,
            bypass_locks: false,
            variant: Default::default(),
            output: None,
        }
    }

    #[test]
    fn quoting_only_when_needed() {
        assert_eq!(shell_quote("/src/linux-6.12"), "/src/linux-6.12");
        assert_eq!(
            shell_quote("git+https://h/r#tag=v1"),
            "git+https://h/r#tag=v1"
        );
        assert_eq!(shell_quote("my tree"), "'my tree'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn ktstr_reproducer_names_the_tree_or_spec_and_forces() {
        let local = ktstr_command("./linux", &source("/work/linux", true), &request(&[]));
        assert_eq!(
            local,
            "ktstr build --kernel /work/linux --profile tiny --force"
        );
        let remote = ktstr_command(
            "git+https://example.invalid/linux.git#tag=v6.12",
            &source("/cache/scratch/git-1-0", false),
            &request(&["/no/such/debug.kconfig"]),
        );
        assert_eq!(
            remote,
            "ktstr build --kernel git+https://example.invalid/linux.git#tag=v6.12 --profile \
             tiny --extra-kconfig /no/such/debug.kconfig --force"
        );
        let mut variant = request(&["--kconfig CONFIG_X=y"]);
        variant.variant.arch = Some("arm64".into());
        variant.variant.toolchain = Some("llvm".into());
        variant.output = Some("/b/out".into());
        assert_eq!(
            ktstr_command("./linux", &source("/work/linux", true), &variant),
            "ktstr build --kernel /work/linux --profile tiny --kconfig CONFIG_X=y --arch arm64 \
             --toolchain llvm --output /b/out --force"
        );
    }

    #[test]
    fn inputs_add_declared_components_the_key_lacks() {
        let comps = vec![
            KeyComponent::new("source", "local:a"),
            KeyComponent::new("config", ".config:x"),
        ];
        let declared = vec![
            KeyComponent::new("profile", "tiny"),
            KeyComponent::new("source", "ignored"),
        ];
        let all = inputs(&comps, &declared);
        assert_eq!(
            all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["source", "config", "profile"]
        );
        assert_eq!(all[0].value, "local:a");
    }

    #[test]
    fn kernelrelease_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kernelrelease(dir.path()), None);
        std::fs::create_dir_all(dir.path().join("include/config")).unwrap();
        std::fs::write(dir.path().join("include/config/kernel.release"), "6.12.3\n").unwrap();
        assert_eq!(kernelrelease(dir.path()).as_deref(), Some("6.12.3"));
    }
}
