//! The remote entry format, shared by every remote tier.
//!
//! One entry is two objects:
//!
//! ```text
//! <prefix>/v1/archives/<key>/<sha256>.tar.zst   the files: a zstd-compressed tar
//! <prefix>/v1/manifests/<key>.json              what they are: see [`Manifest`]
//! ```
//!
//! Why this shape:
//! - **One archive per entry** keeps a pull to two requests however many
//!   files an entry has, and zstd makes the (already stripped) vmlinux
//!   several times smaller on the wire.
//! - **The archive is named by its own sha256**, so an upload can never
//!   overwrite the bytes another manifest points at. Writers upload the
//!   archive first and the manifest last; a manifest therefore always names
//!   an archive that exists, and two machines pushing the same key at once
//!   each publish a self-consistent pair (the last manifest wins; with
//!   byte-identical files the archives even coincide, as the tar is
//!   deterministic: fixed order, mtime 0, uid 0, mode 0644).
//! - **The manifest carries the digests** of the archive and of every file,
//!   and the archive's unpacked size. A reader checks all of them and caps
//!   the bytes it will inflate at that size (itself capped by
//!   `max_entry_size`), so a corrupt, truncated or hostile object costs a
//!   bounded download and is never handed to the local cache.
//! - **No local paths leave the machine**: [`sanitize`] drops the source
//!   tree path and reduces fragment paths to file names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use ktstr_sdk::cache::{
    ArtifactInfo, Artifacts, CONFIG_NAME, CacheKey, LOG_NAME, Metadata, VMLINUX_NAME,
};
use ktstr_sdk::error::{IoResultExt, Result, StageError};
use ktstr_sdk::hash::{Sha256Stream, is_sha256_hex};

/// `format` field of every manifest.
pub const FORMAT: &str = "ktstr-remote-cache";
/// Layout version; also the `v1/` path component.
pub const FORMAT_VERSION: u32 = 1;
/// Manifests are small; anything bigger is not one of ours.
pub const MAX_MANIFEST_SIZE: u64 = 1 << 20;
/// Suffix of archive object names.
pub const ARCHIVE_SUFFIX: &str = ".tar.zst";

/// The archive object of an entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveInfo {
    /// Object name inside `archives/<key>/`: `<sha256>.tar.zst`.
    pub name: String,
    /// sha256 of the compressed object.
    pub sha256: String,
    /// Size of the compressed object.
    pub size: u64,
    /// Size of the tar stream inside: the decompression cap.
    pub unpacked_size: u64,
}

/// The manifest object of an entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] for manifests this code writes.
    pub version: u32,
    pub key: CacheKey,
    pub archive: ArchiveInfo,
    /// The entry's metadata, without local paths; `artifacts` holds the
    /// sha256 and size of every file in the archive.
    pub metadata: Metadata,
    /// RFC 3339 UTC.
    pub uploaded_at: String,
    /// `ktstr-plugin-remote-cache <version>`.
    pub uploader: String,
}

/// Object name of the manifest of `key`, relative to `<prefix>/v1/`.
pub fn manifest_name(key: &CacheKey) -> String {
    format!("manifests/{key}.json")
}

/// Directory of the archives of `key`, relative to `<prefix>/v1/`.
pub fn archive_dir(key: &CacheKey) -> String {
    format!("archives/{key}")
}

/// Metadata as it may leave this machine: no source tree path, user
/// fragments named by file name only (they are recorded as given on the
/// command line, which may be an absolute path under someone's home), and
/// the same for every absolute path in the `ktstr build` reproducer.
pub fn sanitize(metadata: &Metadata) -> Metadata {
    let mut m = metadata.clone();
    m.source.path = None;
    for f in &mut m.fragments {
        if let Some(base) = Path::new(&f.name).file_name() {
            f.name = base.to_string_lossy().into_owned();
        }
    }
    if let Some(build) = &mut m.build {
        build.reproduce.ktstr = without_local_paths(&build.reproduce.ktstr);
    }
    m
}

/// Each word of a command line (POSIX-shell quoted, as the host writes it)
/// that is an absolute path reduced to its file name.
fn without_local_paths(command: &str) -> String {
    split_shell_words(command)
        .into_iter()
        .map(|(raw, value)| match value.strip_prefix('/') {
            Some(_) => {
                let base = Path::new(&value)
                    .file_name()
                    .map_or_else(|| ".".to_string(), |b| b.to_string_lossy().into_owned());
                if base.contains([' ', '\'', '"', '\\', '$', '`']) {
                    format!("'{}'", base.replace('\'', r"'\''"))
                } else {
                    base
                }
            }
            None => raw,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Words of a command line: (as written, unquoted value). Handles single
/// quotes and backslash escapes, which is all the host's quoting uses.
fn split_shell_words(command: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let (mut raw, mut value) = (String::new(), String::new());
    let mut quoted = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' if !quoted => {
                if !raw.is_empty() {
                    words.push((std::mem::take(&mut raw), std::mem::take(&mut value)));
                }
                continue;
            }
            '\'' => quoted = !quoted,
            '\\' if !quoted => {
                raw.push(c);
                if let Some(next) = chars.next() {
                    raw.push(next);
                    value.push(next);
                }
                continue;
            }
            _ => value.push(c),
        }
        raw.push(c);
    }
    if !raw.is_empty() {
        words.push((raw, value));
    }
    words
}

/// Hashes and counts what passes through; fails past `limit` bytes.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256Stream,
    count: u64,
    limit: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Self::with_limit(inner, u64::MAX)
    }

    pub fn with_limit(inner: T, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256Stream::new(),
            count: 0,
            limit,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Feed bytes that bypassed `Read`/`Write` (async downloads).
    pub fn update(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.count += bytes.len() as u64;
        if self.count > self.limit {
            return Err(io::Error::other(format!(
                "more than the expected {} bytes",
                self.limit
            )));
        }
        self.hasher.update(bytes);
        Ok(())
    }

    /// (sha256 hex, byte count, inner).
    pub fn finish(self) -> (String, u64, T) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.update(&buf[..n])?;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.update(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An entry packed for upload.
#[derive(Debug)]
pub struct Packed {
    /// The archive, in the scratch directory; deleted on drop.
    pub file: tempfile::NamedTempFile,
    pub manifest: Manifest,
}

fn pack_error(key: &CacheKey, e: io::Error) -> StageError {
    StageError::new(ktstr_sdk::ErrorKind::Io, format!("pack cache entry {key}")).caused_by(e)
}

/// Archive `artifacts` into a temporary file under `scratch` and describe
/// it. The files' digests are computed while archiving; when `metadata`
/// already records digests (it normally does: it comes from the local
/// entry) they must agree, so a local entry damaged since it was stored is
/// never spread to other machines.
pub fn pack(
    key: &CacheKey,
    artifacts: &Artifacts,
    metadata: &Metadata,
    level: i32,
    scratch: &Path,
) -> Result<Packed> {
    if &metadata.key != key {
        return Err(StageError::invalid_input(format!(
            "cache entry {key}: metadata is for key {}",
            metadata.key
        ))
        .with_hint("this is a bug in the caller: store the metadata under its own key"));
    }
    let image_name = metadata.image_name.as_str();
    if !ktstr_sdk::cache::is_image_name(image_name) {
        return Err(StageError::invalid_input(format!(
            "cache entry {key}: image name {image_name:?} is not a usable file name"
        )));
    }
    let mut files = vec![(image_name.to_string(), &artifacts.image)];
    if let Some(v) = &artifacts.vmlinux {
        files.push((VMLINUX_NAME.to_string(), v));
    }
    files.push((CONFIG_NAME.to_string(), &artifacts.config));
    if let Some(log) = &artifacts.log {
        files.push((LOG_NAME.to_string(), log));
    }

    let tmp = tempfile::Builder::new()
        .prefix(".push-")
        .suffix(ARCHIVE_SUFFIX)
        .tempfile_in(scratch)
        .at("create a temporary file in", scratch)?;
    let out = Hashing::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
    let encoder = zstd::Encoder::new(out, level).map_err(|e| pack_error(key, e))?;
    let mut tar = tar::Builder::new(Hashing::new(encoder));
    let mut digests = BTreeMap::new();
    for (name, path) in files {
        let file = File::open(path).at("open", path)?;
        let len = file.metadata().at("stat", path)?.len();
        let mut header = tar::Header::new_gnu();
        header.set_path(&name).map_err(|e| pack_error(key, e))?;
        header.set_size(len);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut reader = Hashing::new(file.take(len));
        tar.append(&header, &mut reader)
            .map_err(|e| StageError::io("archive", path, e))?;
        let (sha256, read, _) = reader.finish();
        if read != len {
            return Err(StageError::new(
                ktstr_sdk::ErrorKind::Io,
                format!("{} changed size while it was archived", path.display()),
            ));
        }
        digests.insert(name, ArtifactInfo { sha256, size: len });
    }
    let counted = tar.into_inner().map_err(|e| pack_error(key, e))?;
    let (_, unpacked_size, encoder) = counted.finish();
    let out = encoder.finish().map_err(|e| pack_error(key, e))?;
    let (sha256, size, mut buffered) = out.finish();
    buffered.flush().map_err(|e| pack_error(key, e))?;
    drop(buffered);

    if !metadata.artifacts.is_empty() && metadata.artifacts != digests {
        let differing: Vec<&str> = digests
            .iter()
            .filter(|(n, i)| metadata.artifacts.get(*n) != Some(*i))
            .map(|(n, _)| n.as_str())
            .chain(
                metadata
                    .artifacts
                    .keys()
                    .filter(|n| !digests.contains_key(*n))
                    .map(String::as_str),
            )
            .collect();
        return Err(StageError::corrupt(format!(
            "cache entry {key}: the files to upload do not match their metadata ({}); not uploading",
            differing.join(", ")
        ))
        .with_hint("the local entry is damaged: run `ktstr kernel clean` for it and rebuild"));
    }
    let mut metadata = sanitize(metadata);
    metadata.artifacts = digests;
    Ok(Packed {
        file: tmp,
        manifest: Manifest {
            format: FORMAT.to_string(),
            version: FORMAT_VERSION,
            key: key.clone(),
            archive: ArchiveInfo {
                name: format!("{sha256}{ARCHIVE_SUFFIX}"),
                sha256,
                size,
                unpacked_size,
            },
            metadata,
            uploaded_at: ktstr_sdk::now_rfc3339(),
            uploader: format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
        },
    })
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }
}

/// Parse and check a manifest fetched for `key`. The error is the reason,
/// without the key (callers add where the object lives).
pub fn parse_manifest(
    bytes: &[u8],
    key: &CacheKey,
    max_entry_size: u64,
) -> std::result::Result<Manifest, String> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(format!(
            "manifest is {} bytes, more than the {MAX_MANIFEST_SIZE} a manifest may have",
            bytes.len()
        ));
    }
    let mut m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid: {e}"))?;
    if m.format != FORMAT {
        return Err(format!("manifest format is {:?}, not {FORMAT:?}", m.format));
    }
    if m.version != FORMAT_VERSION {
        return Err(format!(
            "manifest version is {}, this ktstr reads version {FORMAT_VERSION}",
            m.version
        ));
    }
    if &m.key != key || &m.metadata.key != key {
        return Err(format!("manifest belongs to key {}", m.metadata.key));
    }
    if m.metadata.schema != Metadata::SCHEMA {
        return Err(format!(
            "metadata schema is {}, this ktstr reads schema {}",
            m.metadata.schema,
            Metadata::SCHEMA
        ));
    }
    let image = m.metadata.image_name.as_str();
    if !ktstr_sdk::cache::is_image_name(image) {
        return Err(format!("image name {image:?} is not a plain file name"));
    }
    for required in [image, CONFIG_NAME] {
        if !m.metadata.artifacts.contains_key(required) {
            return Err(format!("manifest lists no {required}"));
        }
    }
    let mut total = 0u64;
    for (name, info) in &m.metadata.artifacts {
        // The build log is optional: manifests written before ktstr kept
        // logs list only the first three.
        if name != image && name != VMLINUX_NAME && name != CONFIG_NAME && name != LOG_NAME {
            return Err(format!("manifest lists unexpected file {name:?}"));
        }
        if !is_sha256_hex(&info.sha256) {
            return Err(format!("{name} has malformed sha256 {:?}", info.sha256));
        }
        total = total.saturating_add(info.size);
    }
    let a = &m.archive;
    if !is_sha256_hex(&a.sha256) || a.name != format!("{}{ARCHIVE_SUFFIX}", a.sha256) {
        return Err(format!(
            "archive name {:?} does not match its sha256 {:?}",
            a.name, a.sha256
        ));
    }
    if a.size == 0 || a.size > max_entry_size || a.unpacked_size > max_entry_size {
        return Err(format!(
            "entry is {} bytes ({} unpacked), over the max_entry_size limit of {max_entry_size}",
            a.size, a.unpacked_size
        ));
    }
    if total > a.unpacked_size {
        return Err(format!(
            "files total {total} bytes but the archive unpacks to only {}",
            a.unpacked_size
        ));
    }
    // A foreign writer may have left a path in; it is not ours to keep.
    m.metadata = sanitize(&m.metadata);
    Ok(m)
}

/// One message from the decoding thread to the writing thread.
enum Chunk {
    /// Start the file `dest/name`, expected to hash to `info`.
    File(String, ArtifactInfo),
    Bytes(Vec<u8>),
}

/// Unpack the tar.zst read from `archive` into the empty directory `dest`,
/// checking every file against `manifest`. At most
/// `manifest.archive.unpacked_size` bytes are inflated. The archive's own
/// digest is the caller's to check (it sees the raw bytes). The error is
/// the reason, for a `Corrupt` error.
///
/// Decompression and untar run here; hashing and writing each file run on a
/// second thread, so the two halves overlap and a pull keeps up with the
/// download instead of trailing it.
pub fn unpack(
    archive: impl Read,
    manifest: &Manifest,
    dest: &Path,
) -> std::result::Result<(), String> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(8);
    let writer_dest = dest.to_path_buf();
    let writer = std::thread::spawn(move || write_files(rx, &writer_dest));
    let decoded = decode_entries(archive, manifest, &tx);
    drop(tx);
    let written = writer
        .join()
        .unwrap_or_else(|_| Err("the unpacking thread panicked".to_string()));
    match decoded {
        // The writer hung up first: its own error (a digest mismatch, a
        // failed write) is the reason, whichever thread noticed first.
        Err(Decode::WriterGone) => Err(written
            .err()
            .unwrap_or_else(|| "the unpacking thread stopped early".to_string())),
        // A decoding error explains a writer that stopped early, not the reverse.
        Err(Decode::Failed(reason)) => Err(reason),
        Ok(()) => written,
    }
}

/// Why decoding stopped.
enum Decode {
    /// The archive is bad; the reason.
    Failed(String),
    /// The writing thread hung up; its result carries the reason.
    WriterGone,
}

impl From<String> for Decode {
    fn from(reason: String) -> Self {
        Decode::Failed(reason)
    }
}

/// Decode the archive and send each file's bytes to the writer.
fn decode_entries(
    archive: impl Read,
    manifest: &Manifest,
    tx: &std::sync::mpsc::SyncSender<Chunk>,
) -> std::result::Result<(), Decode> {
    let cap = manifest.archive.unpacked_size;
    let decoder = zstd::Decoder::new(archive).map_err(|e| format!("archive: {e}"))?;
    let mut tar = tar::Archive::new(Hashing::with_limit(decoder, cap));
    let mut seen = BTreeSet::new();
    let bad = |e: io::Error| {
        if e.to_string().starts_with("more than the expected") {
            format!("archive unpacks to more than the {cap} bytes its manifest records")
        } else {
            format!("archive is damaged: {e}")
        }
    };
    let gone = |_| Decode::WriterGone;
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(format!(
                "archive holds a {:?} entry; only regular files are allowed",
                entry.header().entry_type()
            )
            .into());
        }
        let name = entry
            .path()
            .map_err(bad)?
            .to_str()
            .map(str::to_string)
            .unwrap_or_default();
        let Some(info) = manifest.metadata.artifacts.get(&name) else {
            return Err(format!("archive holds unexpected file {name:?}").into());
        };
        if !seen.insert(name.clone()) {
            return Err(format!("archive holds {name} twice").into());
        }
        if entry.size() != info.size {
            return Err(format!(
                "{name} is {} bytes in the archive, the manifest records {}",
                entry.size(),
                info.size
            )
            .into());
        }
        tx.send(Chunk::File(name, info.clone())).map_err(gone)?;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = read_full(&mut entry, &mut buf).map_err(bad)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            tx.send(Chunk::Bytes(buf)).map_err(gone)?;
        }
    }
    if let Some(missing) = manifest
        .metadata
        .artifacts
        .keys()
        .find(|n| !seen.contains(*n))
    {
        return Err(format!("archive lacks {missing}").into());
    }
    // Inflate the rest so the zstd frame checksum is checked and the
    // reader is drained (still under the cap).
    let mut buf = vec![0u8; 1 << 20];
    copy_big(&mut tar.into_inner(), &mut io::sink(), &mut buf).map_err(bad)?;
    Ok(())
}

/// Fill `buf` as far as the reader allows; 0 only at the end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The writing half: create, hash and write each file; check its digest.
fn write_files(
    rx: std::sync::mpsc::Receiver<Chunk>,
    dest: &Path,
) -> std::result::Result<(), String> {
    type Open = (
        String,
        ArtifactInfo,
        std::path::PathBuf,
        Hashing<BufWriter<File>>,
    );
    fn close(open: Option<Open>) -> std::result::Result<(), String> {
        let Some((name, info, path, out)) = open else {
            return Ok(());
        };
        let (sha256, size, mut w) = out.finish();
        w.flush()
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        if size != info.size || sha256 != info.sha256 {
            return Err(format!(
                "{name} has sha256 {sha256} ({size} bytes), the manifest records {} ({} bytes)",
                info.sha256, info.size
            ));
        }
        Ok(())
    }
    let mut open: Option<Open> = None;
    for chunk in rx {
        match chunk {
            Chunk::File(name, info) => {
                close(open.take())?;
                let path = dest.join(&name);
                let file = File::create_new(&path)
                    .map_err(|e| format!("create {}: {e}", path.display()))?;
                let out = Hashing::new(BufWriter::with_capacity(1 << 20, file));
                open = Some((name, info, path, out));
            }
            Chunk::Bytes(bytes) => {
                let Some((_, _, path, out)) = open.as_mut() else {
                    return Err("archive data before any file".into());
                };
                out.write_all(&bytes)
                    .map_err(|e| format!("write {}: {e}", path.display()))?;
            }
        }
    }
    close(open)
}

/// `io::copy` with a large buffer: std's 8 KiB chunks make every layer
/// (tar, the size cap, zstd) run many more times for the same bytes.
fn copy_big(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::cache::{FragmentInfo, SourceInfo};

    pub(crate) fn metadata(key: &CacheKey) -> Metadata {
        Metadata {
            schema: Metadata::SCHEMA,
            key: key.clone(),
            source: SourceInfo {
                kind: "local".into(),
                identity: "abc".into(),
                path: Some("/home/alice/src/linux".into()),
            },
            version: Some("6.12.3".into()),
            arch: "x86_64".into(),
            image_name: "bzImage".into(),
            profile: "tiny".into(),
            config_sha256: "0".repeat(64),
            fragments: vec![FragmentInfo {
                name: "/home/alice/frag/debug.kconfig".into(),
                sha256: "1".repeat(64),
            }],
            builder: "kbuild".into(),
            toolchain: "gcc".into(),
            built_at: "2025-01-01T00:00:00Z".into(),
            components: vec![],
            artifacts: BTreeMap::new(),
            strip: None,
            origin: None,
            kernelrelease: None,
            build: None,
            verify: None,
        }
    }

    fn files(dir: &Path, image_len: usize) -> Artifacts {
        let image = dir.join("bzImage");
        let vmlinux = dir.join("vmlinux");
        let config = dir.join("config");
        let mut bytes = vec![0u8; image_len];
        // Not all zeros, so compression is realistic-ish.
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        std::fs::write(&image, &bytes).unwrap();
        std::fs::write(&vmlinux, b"\x7fELF fake vmlinux").unwrap();
        std::fs::write(&config, b"CONFIG_X=y\n").unwrap();
        let log = dir.join("build.log.zst");
        std::fs::write(&log, b"(a compressed build log)").unwrap();
        Artifacts {
            image,
            vmlinux: Some(vmlinux),
            config,
            log: Some(log),
        }
    }

    fn key() -> CacheKey {
        CacheKey::parse("6.12.3-local-x86_64-0a1b2c3d").unwrap()
    }

    fn pack_one(dir: &Path) -> Packed {
        let src = dir.join("src");
        std::fs::create_dir(&src).unwrap();
        let a = files(&src, 100_000);
        pack(&key(), &a, &metadata(&key()), 3, dir).unwrap()
    }

    #[test]
    fn round_trip_and_manifest_json() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack_one(dir.path());
        let m = &packed.manifest;
        assert_eq!(
            m.archive.size,
            std::fs::metadata(packed.file.path()).unwrap().len()
        );
        assert_eq!(
            m.archive.sha256,
            ktstr_sdk::hash::sha256_file(packed.file.path()).unwrap().0
        );
        assert!(m.archive.size < 100_000, "compressed: {}", m.archive.size);
        assert_eq!(m.metadata.artifacts.len(), 4, "image, vmlinux, config, log");

        let json = m.to_json();
        let parsed = parse_manifest(&json, &key(), 1 << 30).unwrap();
        assert_eq!(&parsed, m);

        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack(File::open(packed.file.path()).unwrap(), m, &out).unwrap();
        for (name, info) in &m.metadata.artifacts {
            let (sha, size) = ktstr_sdk::hash::sha256_file(&out.join(name)).unwrap();
            assert_eq!((sha.as_str(), size), (info.sha256.as_str(), info.size));
        }
        assert_eq!(
            std::fs::read(out.join("config")).unwrap(),
            b"CONFIG_X=y\n".to_vec()
        );
    }

    #[test]
    fn archives_are_deterministic() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let pa = pack_one(a.path());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let pb = pack_one(b.path());
        assert_eq!(pa.manifest.archive, pb.manifest.archive);
    }

    #[test]
    fn no_local_paths_are_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack_one(dir.path());
        let json = String::from_utf8(packed.manifest.to_json()).unwrap();
        assert!(!json.contains("/home/alice"), "{json}");
        assert!(json.contains("\"debug.kconfig\""), "{json}");
        assert_eq!(packed.manifest.metadata.source.path, None);
        // Also in the archive: only the plain files.
        let mut names = vec![];
        let mut ar =
            tar::Archive::new(zstd::Decoder::new(File::open(packed.file.path()).unwrap()).unwrap());
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["bzImage", "vmlinux", "config", LOG_NAME]);
    }

    #[test]
    fn pack_refuses_files_that_disagree_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let a = files(&src, 1000);
        let mut md = metadata(&key());
        md.artifacts.insert(
            "bzImage".into(),
            ArtifactInfo {
                sha256: "f".repeat(64),
                size: 1000,
            },
        );
        let err = pack(&key(), &a, &md, 3, dir.path()).unwrap_err();
        assert_eq!(err.kind, ktstr_sdk::ErrorKind::Corrupt);
        assert!(err.message.contains("bzImage"), "{err}");
        assert!(err.message.contains("not uploading"), "{err}");
    }

    #[test]
    fn digest_mismatch_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack_one(dir.path());
        let mut m = packed.manifest.clone();
        m.metadata.artifacts.get_mut("vmlinux").unwrap().sha256 = "0".repeat(64);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let err = unpack(File::open(packed.file.path()).unwrap(), &m, &out).unwrap_err();
        assert!(err.starts_with("vmlinux has sha256 "), "{err}");
    }

    /// The writer fails on the first file while the decoder still has
    /// megabytes to send: the decoder then finds the channel closed, and
    /// the digest error must still be what the caller reads (it once read
    /// "the unpacking thread stopped", at random).
    #[test]
    fn writer_error_wins_over_a_closed_channel() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let a = files(&src, 1000);
        std::fs::write(a.vmlinux.as_ref().unwrap(), vec![7u8; 24 << 20]).unwrap();
        let packed = pack(&key(), &a, &metadata(&key()), 1, dir.path()).unwrap();
        let mut m = packed.manifest.clone();
        m.metadata.artifacts.get_mut("bzImage").unwrap().sha256 = "0".repeat(64);
        for round in 0..5 {
            let out = dir.path().join(format!("out{round}"));
            std::fs::create_dir(&out).unwrap();
            let err = unpack(File::open(packed.file.path()).unwrap(), &m, &out).unwrap_err();
            assert!(
                err.starts_with("bzImage has sha256 "),
                "round {round}: {err}"
            );
        }
    }

    #[test]
    fn decompression_bomb_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros compresses to a few KiB.
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let a = files(&src, 10);
        std::fs::write(&a.image, vec![0u8; 64 << 20]).unwrap();
        let packed = pack(&key(), &a, &metadata(&key()), 3, dir.path()).unwrap();
        assert!(packed.manifest.archive.size < 1 << 20);

        // A manifest that lies about the unpacked size stops inflation there.
        let mut m = packed.manifest.clone();
        m.archive.unpacked_size = 1 << 20;
        m.metadata.artifacts.get_mut("bzImage").unwrap().size = 1000;
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let err = unpack(File::open(packed.file.path()).unwrap(), &m, &out).unwrap_err();
        assert!(
            err.contains("more than") || err.contains("bzImage is"),
            "{err}"
        );
        let written: u64 = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(written <= 1 << 20, "inflated {written} bytes");

        // Truthful sizes over max_entry_size are refused before download.
        let json = packed.manifest.to_json();
        let err = parse_manifest(&json, &key(), 32 << 20).unwrap_err();
        assert!(err.contains("max_entry_size"), "{err}");

        // And the cap holds even if the manifest's file sizes are honest
        // but the unpacked size lies.
        let mut m = packed.manifest.clone();
        m.archive.unpacked_size = 2 << 20;
        let out2 = dir.path().join("out2");
        std::fs::create_dir(&out2).unwrap();
        let err = unpack(File::open(packed.file.path()).unwrap(), &m, &out2).unwrap_err();
        assert!(err.contains("more than the 2097152 bytes"), "{err}");
    }

    #[test]
    fn bad_manifests_are_rejected_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack_one(dir.path());
        let good = packed.manifest.clone();
        let k = key();
        let check = |m: &Manifest, want: &str| {
            let err = parse_manifest(&m.to_json(), &k, 1 << 30).unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        };
        let mut m = good.clone();
        m.version = 2;
        check(&m, "version is 2");
        let mut m = good.clone();
        m.format = "zip".into();
        check(&m, "format");
        let mut m = good.clone();
        m.archive.name = "../../etc/passwd".into();
        check(&m, "does not match");
        let mut m = good.clone();
        m.metadata.image_name = "../bzImage".into();
        check(&m, "not a plain file name");
        let mut m = good.clone();
        m.metadata.artifacts.insert(
            "extra".into(),
            ArtifactInfo {
                sha256: "a".repeat(64),
                size: 1,
            },
        );
        check(&m, "unexpected file");
        let other = CacheKey::parse("other-key").unwrap();
        let err = parse_manifest(&good.to_json(), &other, 1 << 30).unwrap_err();
        assert!(err.contains("belongs to key"), "{err}");
        let err = parse_manifest(b"{\"format\":", &k, 1 << 30).unwrap_err();
        assert!(err.starts_with("manifest is not valid"), "{err}");
        let err = parse_manifest(&vec![b' '; 2 << 20], &k, 1 << 30).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn reproducers_lose_their_local_paths() {
        assert_eq!(
            without_local_paths(
                "ktstr build --kernel /home/alice/linux --profile tiny --extra-kconfig \
                 '/home/alice/my frag.kconfig' --force"
            ),
            "ktstr build --kernel linux --profile tiny --extra-kconfig 'my frag.kconfig' --force"
        );
        let url = "ktstr build --kernel git+https://h/r.git#tag=v1 --profile default --force";
        assert_eq!(without_local_paths(url), url);
        assert_eq!(
            without_local_paths(r"--kernel '/home/a/it'\''s/linux' x"),
            "--kernel linux x"
        );
        assert_eq!(
            without_local_paths(r"--extra-kconfig '/h/it'\''s'"),
            r"--extra-kconfig 'it'\''s'"
        );
    }

    #[test]
    fn manifests_without_a_log_or_build_record_still_parse() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack_one(dir.path());
        let mut m = packed.manifest.clone();
        m.metadata.artifacts.remove(LOG_NAME);
        // What a ktstr from before build logs wrote: no such fields at all.
        let mut json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        let meta = json["metadata"].as_object_mut().unwrap();
        meta.remove("kernelrelease");
        meta.remove("build");
        assert!(!json.to_string().contains(LOG_NAME));
        let parsed = parse_manifest(json.to_string().as_bytes(), &key(), 1 << 30).unwrap();
        assert_eq!(parsed.metadata.build, None);
        assert!(!parsed.metadata.artifacts.contains_key(LOG_NAME));

        // And one with them keeps them.
        let mut with = packed.manifest.clone();
        with.metadata.kernelrelease = Some("6.12.3".into());
        with.metadata.build = Some(ktstr_sdk::cache::BuildRecord {
            warnings: 2,
            ..Default::default()
        });
        let parsed = parse_manifest(&with.to_json(), &key(), 1 << 30).unwrap();
        assert_eq!(parsed.metadata.kernelrelease.as_deref(), Some("6.12.3"));
        assert_eq!(parsed.metadata.build.unwrap().warnings, 2);
        assert!(parsed.metadata.artifacts.contains_key(LOG_NAME));
    }

    #[test]
    fn truncated_archive_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack_one(dir.path());
        let bytes = std::fs::read(packed.file.path()).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let err = unpack(&bytes[..bytes.len() / 2], &packed.manifest, &out).unwrap_err();
        assert!(
            err.contains("damaged") || err.contains("lacks") || err.contains("sha256"),
            "{err}"
        );
    }
}
