//! `ktstr plugins new NAME --kind STAGE`: a plugin crate that builds as is.
//!
//! The crate depends on `ktstr-sdk` only (a path dependency: the SDK is
//! not published), is its own workspace (so it builds even when created
//! inside another one), and contains a small but working stage of the
//! requested kind to edit from. docs/plugin-authoring.md walks through it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::progress::LABEL;

/// The stage a new plugin provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NewKind {
    Source,
    Reserver,
    Configurer,
    Builder,
    Cache,
}

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Lang {
    /// A cdylib crate against ktstr-sdk (loaded as a library).
    #[default]
    Rust,
    /// One Python file (standard library only) speaking the process
    /// plugin protocol.
    Python,
}

/// The Python cache plugin and its README; `{{NAME}}` is the plugin name.
const PYTHON_CACHE: &str = include_str!("python_cache.py");
const PYTHON_README: &str = include_str!("python_readme.md");

/// Where a scaffold goes: `--dir`, else `./ktstr-plugin-NAME`; never over
/// something that exists.
fn fresh_dir(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("ktstr-plugin-{name}")));
    if dir.exists() {
        bail!(
            "{} already exists; pick another --dir or remove it",
            dir.display()
        );
    }
    Ok(dir)
}

/// `plugins new NAME --kind cache --lang python`: a directory with the
/// executable `ktstr-plugin-NAME` and a README.
fn new_python(name: &str, kind: NewKind, dir: Option<&Path>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if kind != NewKind::Cache {
        bail!(
            "--lang python has a template for --kind cache only; use --lang rust for a {kind:?} plugin, or write one to the protocol (`ktstr docs plugin-protocol`)"
        );
    }
    let dir = fresh_dir(name, dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let exe = dir.join(crate::dynamic::search::exe_name(name));
    let readme = dir.join("README.md");
    for (path, text) in [(&exe, PYTHON_CACHE), (&readme, PYTHON_README)] {
        std::fs::write(path, text.replace("{{NAME}}", name))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", exe.display()))?;
    eprintln!(
        "{LABEL}: created {} (Python cache plugin {name})",
        exe.display()
    );
    eprintln!(
        "{LABEL}: next: install -Dm755 {} ~/.local/share/ktstr/plugins/{}, set dir in [plugin.{name}], then: ktstr plugins info {name}",
        exe.display(),
        crate::dynamic::search::exe_name(name)
    );
    Ok(())
}

/// The SDK of the source tree this binary was built from, if it is still
/// there.
fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| std::fs::canonicalize(&sdk).unwrap_or(sdk))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub fn new(
    name: &str,
    kind: NewKind,
    lang: Lang,
    sdk: Option<&Path>,
    dir: Option<&Path>,
) -> Result<()> {
    if !valid_name(name) {
        bail!(
            "plugin name {name:?}: use lowercase letters, digits and -, starting with a letter (e.g. team-cache)"
        );
    }
    if lang == Lang::Python {
        return new_python(name, kind, dir);
    }
    let sdk = match sdk {
        Some(p) => std::fs::canonicalize(p)
            .with_context(|| format!("--sdk-path {}: no such directory", p.display()))?,
        None => default_sdk().with_context(|| {
            "cannot find the ktstr-sdk sources this ktstr was built from; pass --sdk-path DIR (the `sdk` directory of a ktstr checkout)"
        })?,
    };
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "--sdk-path {}: not a crate directory (no Cargo.toml); point it at the `sdk` directory of a ktstr checkout",
            sdk.display()
        );
    }
    let dir = fresh_dir(name, dir)?;
    let subdirs: &[&str] = match kind {
        NewKind::Cache => &["src", "tests"],
        _ => &["src"],
    };
    for sub in subdirs {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let write = |file: &str, text: String| -> Result<()> {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("Cargo.toml", cargo_toml(name, &sdk, kind))?;
    write(".gitignore", "/target\n".into())?;
    write("src/lib.rs", lib_rs(name, kind))?;
    if kind == NewKind::Cache {
        write("tests/conformance.rs", cache_conformance_test(name))?;
    }
    eprintln!(
        "{LABEL}: created {} ({kind:?} plugin {name})",
        dir.display()
    );
    eprintln!(
        "{LABEL}: next: cd {} && cargo test && cargo build --release && install -Dm644 target/release/{} ~/.local/share/ktstr/plugins/",
        dir.display(),
        crate::dynamic::search::file_name(name)
    );
    eprintln!("{LABEL}: then: ktstr plugins info {name}");
    Ok(())
}

fn cargo_toml(name: &str, sdk: &Path, kind: NewKind) -> String {
    let sdk = sdk.display();
    // A cache plugin's tests/ run the SDK's conformance suite: they link
    // the crate as an rlib and enable the suite for tests only.
    let (crate_type, deps, dev) = match kind {
        NewKind::Cache => (
            r#"["cdylib", "rlib"]  # the rlib links tests/conformance.rs"#,
            "tempfile = \"3\"\n",
            format!(
                r#"
[dev-dependencies]
ktstr-sdk = {{ path = "{sdk}", features = ["conformance"] }}

# The suite hashes a 64 MiB image; unoptimised sha2 makes that slow.
[profile.dev.package.sha2]
opt-level = 3
"#
            ),
        ),
        _ => (r#"["cdylib"]"#, "", String::new()),
    };
    format!(
        r#"[package]
name = "ktstr-plugin-{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A shared library the ktstr host loads: libktstr_plugin_{lib}.so
crate-type = {crate_type}

[dependencies]
ktstr-sdk = {{ path = "{sdk}" }}
serde_json = "1"
{deps}tracing = "0.1"
{dev}
# Its own workspace, so it builds wherever it is created.
[workspace]
"#,
        lib = name.replace('-', "_"),
    )
}

fn lib_rs(name: &str, kind: NewKind) -> String {
    let (body, ctor, summary) = match kind {
        NewKind::Source => (
            SOURCE,
            "Source(|cfg| Ok(Box::new(Stage::from_config(cfg)?)))",
            "kernel trees named NAME:PATH",
        ),
        NewKind::Reserver => (
            RESERVER,
            "Reserver(|cfg| Ok(Box::new(Stage::from_config(cfg)?)))",
            "the last quarter of the CPUs, locked and confined",
        ),
        NewKind::Configurer => (
            CONFIGURER,
            "Configurer(|cfg| Ok(Box::new(Stage::from_config(cfg)?)))",
            "defconfig plus fragments",
        ),
        NewKind::Builder => (
            BUILDER,
            "Builder(|cfg| Ok(Box::new(Stage::from_config(cfg)?)))",
            "make -jN",
        ),
        NewKind::Cache => (
            CACHE,
            "Cache(Stage::from_config)",
            "kernels kept in one directory",
        ),
    };
    let summary = summary.replace("NAME", name);
    // The cache template reads real settings; the others start from one
    // example setting.
    let (uses, stage, keys) = match kind {
        NewKind::Cache => (CACHE_USES, String::new(), r#"&["dir", "read_only"]"#),
        _ => ("", example_stage(name), r#"&["example"]"#),
    };
    // Docs name the plugin's config table; code uses the NAME constant.
    let body = body.replace("[plugin.NAME]", &format!("[plugin.{name}]"));
    format!(
        r#"//! ktstr plugin `{name}`: {summary}.
//!
//! Build with `cargo build --release`, install
//! `target/release/libktstr_plugin_{lib}.so` into
//! `~/.local/share/ktstr/plugins/`, then use it with `--plugin {name}`.

{uses}use ktstr_sdk::export::Plugin;
use ktstr_sdk::prelude::*;

pub const NAME: &str = "{name}";
{stage}{body}
fn plugin() -> Plugin {{
    Plugin::new(NAME, env!("CARGO_PKG_VERSION")).stage(
        NAME,
        "{summary}",
        {keys},
        Constructor::{ctor},
    )
}}

ktstr_sdk::export_plugin!(plugin);
"#,
        lib = name.replace('-', "_"),
    )
}

/// The stage struct of every template but the cache's: one example setting.
fn example_stage(name: &str) -> String {
    format!(
        r#"
/// The stage. Its settings come from `[plugin.{name}]` in ktstr's config.
struct Stage {{
    /// An example setting (`example = "..."`).
    #[allow(dead_code)]
    example: Option<String>,
}}

impl Stage {{
    fn from_config(cfg: &PluginConfig) -> Result<Self> {{
        let example = match cfg {{
            serde_json::Value::Null => None,
            serde_json::Value::Object(t) => t.get("example").and_then(|v| v.as_str()).map(String::from),
            other => {{
                return Err(StageError::invalid_input(format!(
                    "plugin {{NAME}}: config must be a table, got {{other}}"
                )));
            }}
        }};
        Ok(Self {{ example }})
    }}
}}
"#
    )
}

const SOURCE: &str = r#"
impl SourceAcquirer for Stage {
    fn claims(&self, spec: &KernelSpec) -> bool {
        spec.raw.starts_with(&format!("{NAME}:"))
    }

    fn accepted_forms(&self) -> Vec<String> {
        vec![format!("{NAME}:PATH (a kernel tree on disk)")]
    }

    fn acquire(&self, spec: &KernelSpec, cx: &StageContext) -> Result<AcquiredSource> {
        cx.cancel.check()?;
        let raw = &spec.raw[NAME.len() + 1..];
        let dir = std::fs::canonicalize(raw).at("open kernel tree", std::path::Path::new(raw))?;
        let makefile = std::fs::read_to_string(dir.join("Makefile")).at("read", &dir.join("Makefile"))?;
        tracing::info!("using kernel tree {}", dir.display());
        Ok(AcquiredSource {
            version: ktstr_sdk::source::kernel_version_from_makefile(&makefile),
            source_dir: dir,
            // No content identity yet: ktstr builds it but never caches it.
            // Return a commit id or tarball digest here to enable caching.
            identity: SourceIdentity { kind: NAME.into(), id: String::new(), short: None },
            is_temp: false,
            is_dirty: true,
            is_git: false,
            is_local: true,
        })
    }
}
"#;

const RESERVER: &str = r#"
use ktstr_sdk::cpus::{self, CpuSet, Host};

impl Reserver for Stage {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation> {
        // The policy, the only part to write: which CPUs. Here the last N
        // CPUs this process may use, N = --cpu-cap or a quarter of them.
        let allowed = cpus::allowed_cpus()?;
        let n = match request.cpu_cap {
            Some(n) if n > allowed.len() => {
                return Err(StageError::invalid_input(format!(
                    "--cpu-cap {n}: only {} CPUs are available to this process",
                    allowed.len()
                ))
                .with_hint(format!("pass --cpu-cap {} or less", allowed.len())));
            }
            Some(n) => n,
            None => allowed.len().div_ceil(4),
        };
        let chosen: CpuSet = allowed.iter().rev().take(n).copied().collect();
        // The SDK does the rest: locks the CPUs with the protocol every
        // ktstr on the host shares (waiting for their holders), confines
        // make to them with a cpuset cgroup, and releases the sandbox before
        // the locks when the build ends. With --cpu-cap, a host that cannot
        // confine is an error; without, one warning.
        Host::default().confine(&chosen, request.cpu_cap.is_some(), cx)
    }

    fn locks(&self) -> Result<Vec<ktstr_sdk::lock_list::LockInfo>> {
        Ok(cpus::locks::list(&Host::default().lock_dir()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every reserver keeps (plan within the allowed CPUs,
    /// caps honoured, make confined, complete release). Confinement is
    /// checked as root on a host with a cpuset controller, else skipped
    /// with the reason printed.
    #[test]
    fn passes_the_reserver_conformance_suite() {
        let stage = Stage::from_config(&PluginConfig::Null).unwrap();
        ktstr_sdk::conformance::reserver::assert_conforms(&stage);
    }
}
"#;

const CONFIGURER: &str = r#"
use std::path::Path;

impl Stage {
    fn make(&self, tree: &Path, target: &str, cx: &StageContext) -> Result<()> {
        let spec = CommandSpec::new("make").arg(target).cwd(tree);
        let outcome = cx.runner.run(&spec, &mut |line| cx.progress.line(line))?;
        if outcome.success() {
            Ok(())
        } else {
            Err(StageError::command(format!("make {target} failed in {}", tree.display())))
        }
    }
}

impl Configurer for Stage {
    fn profiles(&self) -> Vec<ProfileInfo> {
        vec![ProfileInfo {
            name: "default".into(),
            base_target: "defconfig".into(),
            summary: "defconfig plus the user's fragments".into(),
        }]
    }

    fn identity(&self, request: &ConfigureRequest) -> Result<Vec<KeyComponent>> {
        let mut parts = vec![KeyComponent::new("profile", &request.profile)];
        for f in &request.fragments {
            parts.push(KeyComponent::new("fragment", ktstr_sdk::hash::sha256_hex(f.content.as_bytes())));
        }
        Ok(parts)
    }

    fn is_configured(&self, tree: &Path, request: &ConfigureRequest) -> Result<bool> {
        Ok(request.fragments.is_empty() && tree.join(".config").is_file())
    }

    fn configure(&self, tree: &Path, request: &ConfigureRequest, cx: &StageContext) -> Result<()> {
        cx.progress.step("configuring");
        self.make(tree, "defconfig", cx)?;
        let config = tree.join(".config");
        let mut text = std::fs::read_to_string(&config).at("read", &config)?;
        for f in &request.fragments {
            text.push_str(&f.content);
            text.push('\n');
        }
        std::fs::write(&config, text).at("write", &config)?;
        self.make(tree, "olddefconfig", cx)?;
        cx.progress.finish_step();
        Ok(())
    }

    fn validate(&self, _tree: &Path, _request: &ConfigureRequest) -> Result<()> {
        Ok(())
    }
}
"#;

const BUILDER: &str = r#"
use std::path::Path;

impl Builder for Stage {
    fn identity(&self, cx: &StageContext) -> Result<Vec<KeyComponent>> {
        let out = cx.runner.capture(&CommandSpec::new("cc").arg("--version"))?;
        let first = out.stdout.lines().next().unwrap_or("unknown").to_string();
        Ok(vec![KeyComponent::new("builder", NAME), KeyComponent::new("toolchain", first)])
    }

    fn clean(&self, tree: &Path, cx: &StageContext) -> Result<()> {
        let spec = CommandSpec::new("make").arg("mrproper").cwd(tree);
        cx.runner.run(&spec, &mut |_| {})?;
        Ok(())
    }

    fn build(&self, request: &BuildRequest, cx: &StageContext) -> Result<BuildOutput> {
        cx.progress.step("building");
        let mut spec = CommandSpec::new("make")
            .arg(format!("-j{}", request.make_jobs))
            .cwd(&request.tree);
        spec.cgroup_procs = request.sandbox_procs.clone();
        let outcome = cx.runner.run(&spec, &mut |line| cx.progress.line(line))?;
        cx.progress.finish_step();
        if !outcome.success() {
            return Err(StageError::command(format!("make failed in {}", request.tree.display()))
                .caused_by(std::io::Error::other(outcome.failure_tail(20).join("\n"))));
        }
        let vmlinux = request.tree.join("vmlinux");
        Ok(BuildOutput {
            image: request.tree.join(ktstr_sdk::arch::host().image_path),
            vmlinux: vmlinux.is_file().then_some(vmlinux),
            command: None,
        })
    }
}
"#;

const CACHE_USES: &str = r#"use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};

use ktstr_sdk::cache::{CONFIG_NAME, LOG_NAME, METADATA_NAME, VMLINUX_NAME};
use ktstr_sdk::config::{ConfigReader, Setting};
"#;

const CACHE: &str = r#"
const SETTINGS: &[Setting] = &[
    Setting {
        key: "dir",
        help: "the directory kernels are kept in (required, absolute)",
    },
    Setting {
        key: "read_only",
        help: "never store or remove (default false)",
    },
];

/// Kernels kept in one directory: `<dir>/<key>/` holds an entry's files
/// and its `metadata.json`; `<dir>/.tmp/` holds entries being written or
/// removed (never read: a killed ktstr's leftovers there are safe to
/// delete). Settings: `[plugin.NAME]` in ktstr's config.
///
/// The contract (docs/cache.md, "Backend contract"): readers see an old
/// entry or a new one, never a mix (entries are published with one
/// rename); a damaged entry is a `Corrupt` error, never a hit; metadata is
/// stored as given; a store that fails or is cancelled leaves nothing.
pub struct Stage {
    dir: PathBuf,
}

impl Stage {
    /// The backend `[plugin.NAME]` describes; with `read_only = true` the
    /// SDK's `ReadOnly` refuses every store and remove, with a hint.
    pub fn from_config(cfg: &PluginConfig) -> Result<Box<dyn CacheBackend>> {
        let cfg = ConfigReader::new(NAME, cfg)?.known(SETTINGS)?;
        let dir = cfg
            .path("dir")?
            .ok_or_else(|| cfg.bad("dir", "is not set"))?;
        if !dir.is_absolute() {
            return Err(cfg.bad("dir", format!("{} is not an absolute path", dir.display())));
        }
        let stage = Box::new(Stage { dir });
        if cfg.bool("read_only", false)? {
            let why = format!(
                "read_only = true under [plugin.{NAME}]; unset it on machines trusted to write"
            );
            return Ok(Box::new(ReadOnly::new(stage, why)));
        }
        Ok(stage)
    }

    fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.as_str())
    }

    /// A new empty directory in `<dir>/.tmp`, removed with what it holds
    /// when dropped: a failed or cancelled store leaves nothing behind.
    fn temp_dir(&self) -> Result<tempfile::TempDir> {
        let tmp = self.dir.join(".tmp");
        std::fs::create_dir_all(&tmp).at("create", &tmp)?;
        tempfile::tempdir_in(&tmp).at("create a directory in", &tmp)
    }

    /// An entry's `metadata.json`, or `None` when there is no entry.
    fn metadata_text(&self, key: &CacheKey) -> Result<Option<String>> {
        let path = self.entry_dir(key).join(METADATA_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(StageError::io("read", &path, e)),
        }
    }

    /// The entry, checked: every file its metadata names is there, at its
    /// recorded size. A store may replace the entry while it is read, so a
    /// check that fails counts only if the metadata did not change meanwhile.
    fn read(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        loop {
            let Some(text) = self.metadata_text(key)? else {
                return Ok(None);
            };
            match self.check(key, &text) {
                Err(_) if self.metadata_text(key)?.as_ref() != Some(&text) => continue,
                checked => return checked.map(Some),
            }
        }
    }

    fn check(&self, key: &CacheKey, text: &str) -> Result<CacheEntry> {
        let dir = self.entry_dir(key);
        let corrupt = |why: String| {
            StageError::corrupt(format!("{NAME} entry {}: {why}", dir.display())).with_hint(
                format!("remove {}: the next build stores it again", dir.display()),
            )
        };
        let metadata: Metadata =
            serde_json::from_str(text).map_err(|e| corrupt(format!("bad {METADATA_NAME}: {e}")))?;
        if &metadata.key != key {
            return Err(corrupt(format!("its metadata is for {}", metadata.key)));
        }
        for (name, info) in &metadata.artifacts {
            match std::fs::metadata(dir.join(name)) {
                Ok(m) if m.len() == info.size => {}
                Ok(m) => {
                    return Err(corrupt(format!(
                        "{name} is {} bytes, not {}",
                        m.len(),
                        info.size
                    )));
                }
                Err(_) => return Err(corrupt(format!("{name} is missing"))),
            }
        }
        Ok(CacheEntry {
            key: key.clone(),
            dir,
            metadata,
            origin: NAME.into(),
            location: None,
            last_used: None,
        })
    }

    /// Make `new` the entry at `dest` with one rename. A directory cannot
    /// be renamed over a non-empty one, so an entry already there is first
    /// moved aside (and removed); another store may publish in between,
    /// hence the loop.
    fn publish(&self, new: &Path, dest: &Path) -> Result<()> {
        loop {
            match std::fs::rename(new, dest) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.kind(), IoKind::DirectoryNotEmpty | IoKind::AlreadyExists) => {
                    let old = self.temp_dir()?;
                    match std::fs::rename(dest, old.path()) {
                        Ok(()) => old.close().at("remove the replaced entry", dest)?,
                        Err(e) if e.kind() == IoKind::NotFound => {}
                        Err(e) => return Err(StageError::io("replace", dest, e)),
                    }
                }
                Err(e) => return Err(StageError::io("publish", dest, e)),
            }
        }
    }
}

impl CacheBackend for Stage {
    /// Entries are directories, returned in place: no use for `staging`
    /// (it is for backends that unpack archives).
    fn lookup(
        &self,
        key: &CacheKey,
        _staging: &Staging,
        _cx: &StageContext,
    ) -> Result<Option<CacheEntry>> {
        self.read(key)
    }

    fn store(
        &self,
        key: &CacheKey,
        artifacts: &Artifacts,
        metadata: &Metadata,
        cx: &StageContext,
    ) -> Result<CacheEntry> {
        let tmp = self.temp_dir()?;
        let mut stored = metadata.clone();
        stored.artifacts.clear();
        let files = [
            (stored.image_name.clone(), Some(&artifacts.image)),
            (VMLINUX_NAME.into(), artifacts.vmlinux.as_ref()),
            (CONFIG_NAME.into(), Some(&artifacts.config)),
            (LOG_NAME.into(), artifacts.log.as_ref()),
        ];
        for (name, src) in files {
            let Some(src) = src else { continue };
            cx.cancel.check()?;
            cx.progress.line(&format!("copying {name}"));
            let dst = tmp.path().join(&name);
            std::fs::copy(src, &dst).at("copy", src)?;
            let (sha256, size) = ktstr_sdk::hash::sha256_file(&dst)?;
            stored.artifacts.insert(name, ArtifactInfo { sha256, size });
        }
        let json = serde_json::to_vec_pretty(&stored)
            .map_err(|e| StageError::internal("encode metadata").caused_by(e))?;
        let meta = tmp.path().join(METADATA_NAME);
        std::fs::write(&meta, json).at("write", &meta)?;
        cx.cancel.check()?;
        let dest = self.entry_dir(key);
        self.publish(tmp.path(), &dest)?;
        tracing::info!("stored {key} in {}", self.describe());
        Ok(CacheEntry {
            key: key.clone(),
            dir: dest,
            metadata: stored,
            origin: NAME.into(),
            location: None,
            last_used: None,
        })
    }

    fn list(&self, _cx: &StageContext) -> Result<Vec<Listed>> {
        let names = match std::fs::read_dir(&self.dir) {
            Ok(names) => names,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StageError::io("list", &self.dir, e)),
        };
        let mut rows = Vec::new();
        for name in names {
            let name = name
                .at("list", &self.dir)?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.starts_with('.') {
                continue;
            }
            let row = match CacheKey::parse(&name).and_then(|key| self.read(&key)) {
                Ok(Some(entry)) => Listed::Ok(entry),
                Ok(None) => continue,
                Err(e) => Listed::Corrupt {
                    key: name,
                    reason: e.to_string(),
                },
            };
            rows.push(row);
        }
        ktstr_sdk::cache::sort_newest_first(&mut rows);
        Ok(rows)
    }

    fn remove(&self, key: &CacheKey, _cx: &StageContext) -> Result<bool> {
        let dest = self.entry_dir(key);
        if !dest.exists() {
            return Ok(false);
        }
        // Moved aside first, so no reader sees a half-removed entry.
        let old = self.temp_dir()?;
        match std::fs::rename(&dest, old.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => return Ok(false),
            Err(e) => return Err(StageError::io("remove", &dest, e)),
        }
        old.close().at("remove", &dest)?;
        Ok(true)
    }

    fn describe(&self) -> String {
        format!("{NAME} cache at {}", self.dir.display())
    }
}
"#;

/// `tests/conformance.rs` of a new cache plugin: the SDK's cache
/// conformance suite, every rule, run against the template's backend as
/// generated (tests/tests/plugins.rs runs it).
fn cache_conformance_test(name: &str) -> String {
    format!(
        r#"//! `{name}` against ktstr's cache conformance suite: every promise of
//! the CacheBackend contract, checked on a fresh directory per rule. See
//! "The cache conformance suite" in ktstr's docs/plugin-authoring.md.

use std::path::PathBuf;

use ktstr_plugin_{lib}::Stage;
use ktstr_sdk::conformance::cache::{{self, Fixture, Options}};
use ktstr_sdk::prelude::*;

fn dir(fx: &Fixture) -> PathBuf {{
    fx.shared.join("cache")
}}

fn open(fx: &Fixture, read_only: bool) -> Box<dyn CacheBackend> {{
    let cfg = serde_json::json!({{"dir": dir(fx), "read_only": read_only}});
    Stage::from_config(&cfg).expect("the test config is valid")
}}

/// Damage at rest, as a careless hand would: the entry loses its config.
fn damage(fx: &Fixture, key: &CacheKey) {{
    let config = dir(fx).join(key.as_str()).join("config");
    std::fs::remove_file(&config).expect("the entry has a config file");
}}

#[test]
fn conforms() {{
    cache::run(
        &|fx: &Fixture| open(fx, false),
        Options::default()
            .read_only(|fx: &Fixture| open(fx, true))
            .corrupt(damage),
    );
}}
"#,
        lib = name.replace('-', "_"),
    )
}
