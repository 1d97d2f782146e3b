//! The fake build outputs the rules store: files whose bytes say which
//! version they belong to, kept in a pristine copy the backend never sees,
//! and the metadata a correct backend must give back for them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::cache::{
    ArtifactInfo, Artifacts, CONFIG_NAME, CacheEntry, CacheKey, LOG_NAME, Metadata, SourceInfo,
    VMLINUX_NAME,
};

/// What a fake build contains.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub image_name: &'static str,
    pub image_len: u64,
    pub vmlinux: bool,
    pub log: bool,
}

impl Shape {
    /// Every optional file present.
    pub fn full(image_len: u64) -> Self {
        Self {
            image_name: "bzImage",
            image_len,
            vmlinux: true,
            log: true,
        }
    }

    /// Only what an entry must have: an image (arm64's name) and a config.
    pub fn minimal(image_len: u64) -> Self {
        Self {
            image_name: "Image",
            image_len,
            vmlinux: false,
            log: false,
        }
    }
}

/// One fake build: the files handed to `store` and pristine copies of them.
#[derive(Debug, Clone)]
pub(super) struct Build {
    pub version: u32,
    pub artifacts: Artifacts,
    pub metadata: Metadata,
    /// (entry file name, path handed to store, pristine copy).
    pub files: Vec<(String, PathBuf, PathBuf)>,
}

/// `built_at` of `version`: distinct per version, later for higher ones.
pub(super) fn built_at(version: u32) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_740_000_000 + 60 * version as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Deterministic, incompressible bytes (xorshift), fast even unoptimised.
fn noise(out: &mut Vec<u8>, len: u64, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let want = (len - out.len() as u64).min(8) as usize;
        out.extend_from_slice(&x.to_le_bytes()[..want]);
    }
}

/// The bytes of each file of `version`, by entry file name.
fn contents(version: u32, shape: &Shape) -> Vec<(String, Vec<u8>)> {
    let mut image = format!("ktstr conformance image, version {version}\n").into_bytes();
    image.truncate(shape.image_len as usize);
    image.reserve(shape.image_len as usize - image.len());
    noise(&mut image, shape.image_len, u64::from(version) + 1);
    let mut files = vec![(shape.image_name.to_string(), image)];
    if shape.vmlinux {
        let mut v = format!("\x7fELF conformance vmlinux, version {version}\n").into_bytes();
        v.extend(std::iter::repeat_n(&b"symbols "[..], 512).flatten());
        files.push((VMLINUX_NAME.to_string(), v));
    }
    files.push((
        CONFIG_NAME.to_string(),
        format!(
            "# conformance version {version}\nCONFIG_CONFORMANCE_VERSION={version}\nCONFIG_X=y\n"
        )
        .into_bytes(),
    ));
    if shape.log {
        files.push((
            LOG_NAME.to_string(),
            format!("(compressed build log of version {version})").into_bytes(),
        ));
    }
    files
}

impl Build {
    /// Write build `version` of `key` under `dir` (`src/` for the backend,
    /// `pristine/` for the comparisons).
    pub fn write(dir: &Path, key: &CacheKey, version: u32, shape: &Shape) -> Self {
        let src = dir.join("src");
        let pristine = dir.join("pristine");
        for d in [&src, &pristine] {
            std::fs::create_dir_all(d)
                .unwrap_or_else(|e| panic!("conformance fixture: create {}: {e}", d.display()));
        }
        let mut files = Vec::new();
        for (name, bytes) in contents(version, shape) {
            // Source names differ from entry names, as a build's do.
            let from = src.join(format!("out-{name}"));
            let copy = pristine.join(&name);
            for p in [&from, &copy] {
                std::fs::write(p, &bytes)
                    .unwrap_or_else(|e| panic!("conformance fixture: write {}: {e}", p.display()));
            }
            files.push((name, from, copy));
        }
        let path_of = |name: &str| {
            files
                .iter()
                .find(|(n, ..)| n == name)
                .map(|(_, from, _)| from.clone())
        };
        let artifacts = Artifacts {
            image: path_of(shape.image_name).expect("an image"),
            vmlinux: path_of(VMLINUX_NAME),
            config: path_of(CONFIG_NAME).expect("a config"),
            log: path_of(LOG_NAME),
        };
        Self {
            version,
            artifacts,
            metadata: metadata(key, version, shape.image_name),
            files,
        }
    }

    /// Check `got`, a backend's metadata for this build: everything the
    /// caller gave, with `artifacts` holding each stored file's real digest
    /// and size. A backend may drop `source.path` (a remote must: it names a
    /// directory on the building machine) and set `origin`.
    pub fn check_metadata(&self, got: &Metadata) -> Result<(), String> {
        let mut want = self.metadata.clone();
        want.artifacts = self.digests()?;
        if got.source.path.is_none() {
            want.source.path = None;
        }
        want.origin.clone_from(&got.origin);
        if &want == got {
            return Ok(());
        }
        Err(format!(
            "metadata of version {} differs from what was stored: {}",
            self.version,
            differences(&want, got)
        ))
    }

    /// The digest and size of every file, by entry name.
    fn digests(&self) -> Result<BTreeMap<String, ArtifactInfo>, String> {
        let mut out = BTreeMap::new();
        for (name, _, pristine) in &self.files {
            let (sha256, size) = crate::hash::sha256_file(pristine)
                .map_err(|e| format!("conformance fixture: {e}"))?;
            out.insert(name.clone(), ArtifactInfo { sha256, size });
        }
        Ok(out)
    }

    /// Check that `entry` serves exactly this build's files.
    pub fn check_files(&self, entry: &CacheEntry) -> Result<(), String> {
        for (name, _, pristine) in &self.files {
            same_file(pristine, &entry.dir.join(name))
                .map_err(|e| format!("entry file {name} of version {}: {e}", self.version))?;
        }
        let wanted = |name: &str| self.files.iter().any(|(n, ..)| n == name);
        if entry.vmlinux().is_some() != wanted(VMLINUX_NAME) {
            return Err(format!(
                "entry.vmlinux() is {:?} for a build {} a vmlinux",
                entry.vmlinux(),
                if wanted(VMLINUX_NAME) {
                    "with"
                } else {
                    "without"
                }
            ));
        }
        if entry.log().is_some() != wanted(LOG_NAME) {
            return Err(format!(
                "entry.log() is {:?} for a build {} a log",
                entry.log(),
                if wanted(LOG_NAME) { "with" } else { "without" }
            ));
        }
        Ok(())
    }

    /// Check that `store` only read the files it was given.
    pub fn check_sources_untouched(&self) -> Result<(), String> {
        for (name, from, pristine) in &self.files {
            same_file(pristine, from)
                .map_err(|e| format!("store changed its input {} ({name}): {e}", from.display()))?;
        }
        Ok(())
    }
}

/// The metadata a host would store for `version` of `key`.
pub(super) fn metadata(key: &CacheKey, version: u32, image_name: &str) -> Metadata {
    Metadata {
        schema: Metadata::SCHEMA,
        key: key.clone(),
        source: SourceInfo {
            kind: "local".into(),
            identity: format!("{version:040x}"),
            path: Some("/home/conformance/src/linux".into()),
        },
        version: Some("6.12.3".into()),
        arch: "x86_64".into(),
        image_name: image_name.into(),
        profile: "default".into(),
        config_sha256: crate::hash::sha256_hex(format!("config {version}").as_bytes()),
        fragments: Vec::new(),
        builder: "kbuild 0.1.0".into(),
        toolchain: "gcc 12.2.0".into(),
        built_at: built_at(version),
        components: vec![crate::cache::KeyComponent::new(
            "source",
            format!("v{version}"),
        )],
        artifacts: BTreeMap::new(),
        strip: None,
        origin: None,
        kernelrelease: Some("6.12.3".into()),
        build: None,
        verify: None,
    }
}

/// The top-level fields in which `got` differs from `want`, with both values.
fn differences(want: &Metadata, got: &Metadata) -> String {
    let (Ok(serde_json::Value::Object(w)), Ok(serde_json::Value::Object(g))) =
        (serde_json::to_value(want), serde_json::to_value(got))
    else {
        return format!("want {want:?}, got {got:?}");
    };
    let mut out = Vec::new();
    for k in w.keys().chain(g.keys().filter(|k| !w.contains_key(*k))) {
        let (a, b) = (w.get(k), g.get(k));
        if a != b {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("(absent)".into(), |v| v.to_string());
            out.push(format!("{k}: want {}, got {}", show(a), show(b)));
        }
    }
    out.join("; ")
}

/// Byte-compare two files without loading either whole; the error says
/// where they first differ.
pub(super) fn same_file(want: &Path, got: &Path) -> Result<(), String> {
    let open =
        |p: &Path| std::fs::File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()));
    let (mut a, mut b) = (open(want)?, open(got)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut a, &mut ba).map_err(|e| format!("read {}: {e}", want.display()))?;
        let nb = read_full(&mut b, &mut bb).map_err(|e| format!("read {}: {e}", got.display()))?;
        let n = na.min(nb);
        // Slice equality is a memcmp; the position is only wanted on a mismatch.
        if ba[..n] != bb[..n]
            && let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y)
        {
            return Err(format!(
                "{} differs from the file handed to store at byte {}",
                got.display(),
                offset + i as u64
            ));
        }
        if na != nb {
            let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            return Err(format!(
                "{} is {} bytes, the file handed to store {} bytes",
                got.display(),
                len(got),
                len(want)
            ));
        }
        if na == 0 {
            return Ok(());
        }
        offset += na as u64;
    }
}

/// Fill `buf` unless the file ends first; the count read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
