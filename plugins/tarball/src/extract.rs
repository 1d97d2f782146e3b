//! Unpacking a tar stream into a staging directory, refusing anything that
//! could write or point outside it.
//!
//! The `tar` crate only parses; every path decision is made here:
//! entry paths must be relative without `..`; no entry may be written
//! through a symlink from the archive (so a link cannot redirect a later
//! write); symlinks must resolve inside the tree, following the archive's
//! other symlinks, which is checked again once all are known; hardlinks
//! must name an earlier regular file of the archive; device files and
//! fifos are refused; and the bytes written are capped: an entry whose
//! declared size (ustar or PAX) would pass the cap is refused before a byte
//! of it is written, and every byte is counted as it is written, whatever
//! any header claims. File modes are normalised to 0644/0755.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ktstr_sdk::context::Cancellation;
use ktstr_sdk::prelude::*;
use tar::EntryType;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_unpacked_bytes: u64,
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub entries: u64,
    pub bytes: u64,
}

fn refuse(what: &str, why: String) -> StageError {
    StageError::corrupt(format!("refusing to unpack {what}: {why}")).with_hint(
        "this is not a plain kernel tarball; check where it came from (kernel.org tarballs never contain such entries)",
    )
}

/// A relative path with `.` removed; `Err` for absolute paths and `..`.
fn clean_relative(raw: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
        }
    }
    Ok(out)
}

/// Resolve `target` as seen from directory `base` (tree-relative), following
/// the archive's `links`. `None` when it leaves the tree.
fn resolve_inside(
    base: &[OsString],
    target: &Path,
    links: &HashMap<PathBuf, PathBuf>,
    depth: u32,
) -> Option<Vec<OsString>> {
    if depth > 40 {
        return None;
    }
    let mut stack = base.to_vec();
    for c in target.components() {
        match c {
            Component::Normal(p) => {
                stack.push(p.to_os_string());
                let here: PathBuf = stack.iter().collect();
                if let Some(next) = links.get(&here) {
                    stack.pop();
                    stack = resolve_inside(&stack, next, links, depth + 1)?;
                }
            }
            Component::CurDir => {}
            Component::ParentDir => {
                stack.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(stack)
}

fn parent_components(rel: &Path) -> Vec<OsString> {
    rel.parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default()
}

/// The archive symlink among `rel`'s ancestors, if any.
fn through_symlink<'a>(rel: &'a Path, symlinks: &HashMap<PathBuf, PathBuf>) -> Option<&'a Path> {
    if symlinks.is_empty() {
        return None;
    }
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| symlinks.contains_key(*a))
}

/// Unpack the tar stream `reader` into `dest` (an existing, empty
/// directory). `what` names the archive in errors; `files` counts entries
/// for the progress line.
pub fn unpack(
    reader: &mut dyn Read,
    dest: &Path,
    limits: &Limits,
    what: &str,
    cancel: &Cancellation,
    files: &AtomicU64,
) -> Result<Extracted> {
    let mut archive = tar::Archive::new(reader);
    let mut symlinks: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut made_dirs: HashSet<PathBuf> = HashSet::new();
    let mut regular: HashSet<PathBuf> = HashSet::new();
    let mut total = 0u64;
    let mut count = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    // Raw iteration: extension records (PAX, GNU long names) are read here
    // with a bound, not by the tar crate, which would read one of any size
    // into memory.
    let entries = archive
        .entries()
        .map_err(|e| StageError::corrupt(format!("{what}: not a tar archive")).caused_by(e))?
        .raw(true);
    let mut ext = Extensions::default();
    for entry in entries {
        if count.is_multiple_of(128) {
            cancel.check()?;
        }
        let mut entry = entry.map_err(|e| {
            StageError::corrupt(format!("{what}: damaged tar data after {count} entries"))
                .caused_by(e)
                .with_hint("the archive is truncated or corrupt; fetch it again")
        })?;
        let kind = entry.header().entry_type();
        if ext.absorb(&mut entry, kind, what)? {
            continue;
        }
        let pending = std::mem::take(&mut ext);
        if let Some(size) = pending.size {
            let declared = entry.size();
            if size != declared {
                return Err(refuse(
                    what,
                    format!(
                        "a PAX record gives {} a size of {size} bytes, its header {declared}",
                        String::from_utf8_lossy(&entry.path_bytes())
                    ),
                ));
            }
        }
        let path_bytes = pending
            .path
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let link_bytes = pending
            .link
            .or_else(|| entry.link_name_bytes().map(|b| b.into_owned()));
        let raw_path = PathBuf::from(std::ffi::OsStr::from_bytes(&path_bytes));
        let rel = clean_relative(&raw_path)
            .map_err(|why| refuse(what, format!("entry {} {why}", raw_path.display())))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if let Some(link) = through_symlink(&rel, &symlinks) {
            return Err(refuse(
                what,
                format!(
                    "entry {} would be written through the symlink {}",
                    rel.display(),
                    link.display()
                ),
            ));
        }
        let target = dest.join(&rel);
        count += 1;
        files.store(count, Ordering::Relaxed);
        match kind {
            EntryType::Directory => {
                std::fs::create_dir_all(&target).at("create directory", &target)?;
                made_dirs.insert(rel);
            }
            EntryType::Regular | EntryType::Continuous => {
                // The size the entry declares (PAX `size` records included:
                // `Entry::size` is the effective one) refuses early; the
                // bytes really written are what the cap is enforced on.
                if total.saturating_add(entry.size()) > limits.max_unpacked_bytes {
                    return Err(over_cap(what, limits));
                }
                ensure_parent(dest, &rel, &mut made_dirs)?;
                let mode = entry.header().mode().unwrap_or(0o644);
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                let mtime = entry.header().mtime().ok();
                let mut file = create_new(&target, mode)?;
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(StageError::corrupt(format!(
                                "{what}: damaged tar data in {}",
                                rel.display()
                            ))
                            .caused_by(e));
                        }
                    };
                    total = total.saturating_add(n as u64);
                    if total > limits.max_unpacked_bytes {
                        return Err(over_cap(what, limits));
                    }
                    file.write_all(&buf[..n]).at("write", &target)?;
                }
                if let Some(mtime) = mtime {
                    let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
                }
                regular.insert(rel);
            }
            EntryType::Symlink => {
                let link = link_bytes
                    .as_deref()
                    .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(b)))
                    .unwrap_or_default();
                if link.as_os_str().is_empty() || link.is_absolute() {
                    return Err(refuse(
                        what,
                        format!(
                            "symlink {} points to the absolute path {}",
                            rel.display(),
                            link.display()
                        ),
                    ));
                }
                if resolve_inside(&parent_components(&rel), &link, &symlinks, 0).is_none() {
                    return Err(symlink_escape(what, &rel, &link));
                }
                ensure_parent(dest, &rel, &mut made_dirs)?;
                remove_existing(&target)?;
                std::os::unix::fs::symlink(&link, &target).at("create symlink", &target)?;
                symlinks.insert(rel, link);
            }
            EntryType::Link => {
                let link = link_bytes
                    .as_deref()
                    .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(b)))
                    .unwrap_or_default();
                let source = clean_relative(&link).map_err(|why| {
                    refuse(
                        what,
                        format!("hardlink {} to {} {why}", rel.display(), link.display()),
                    )
                })?;
                if !regular.contains(&source) || through_symlink(&source, &symlinks).is_some() {
                    return Err(refuse(
                        what,
                        format!(
                            "hardlink {} points to {}, which is not a file earlier in the archive",
                            rel.display(),
                            link.display()
                        ),
                    ));
                }
                ensure_parent(dest, &rel, &mut made_dirs)?;
                remove_existing(&target)?;
                std::fs::hard_link(dest.join(&source), &target).at("create hardlink", &target)?;
                regular.insert(rel);
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(refuse(
                    what,
                    format!("{} is a device file or fifo", rel.display()),
                ));
            }
            other => {
                return Err(refuse(
                    what,
                    format!("{} has an unsupported entry type {other:?}", rel.display()),
                ));
            }
        }
    }
    // A later symlink can change where an earlier one leads: check them
    // all again now that every link is known.
    for (rel, link) in &symlinks {
        if resolve_inside(&parent_components(rel), link, &symlinks, 0).is_none() {
            return Err(symlink_escape(what, rel, link));
        }
    }
    Ok(Extracted {
        entries: count,
        bytes: total,
    })
}

/// The most an extension record (a PAX header, a GNU long name) may
/// hold: real ones are a path or two and a few numbers.
const EXTENSION_LIMIT: u64 = 1 << 20;

/// What extension records said about the next entry.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Extensions {
    /// If `entry` is an extension record, read it (bounded) into `self`
    /// and return true.
    fn absorb<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        kind: EntryType,
        what: &str,
    ) -> Result<bool> {
        let name = match kind {
            EntryType::XGlobalHeader => "PAX global header",
            EntryType::XHeader => "PAX header",
            EntryType::GNULongName => "GNU long name",
            EntryType::GNULongLink => "GNU long link name",
            _ => return Ok(false),
        };
        if entry.size() > EXTENSION_LIMIT {
            return Err(refuse(
                what,
                format!(
                    "a {name} of {} bytes (the limit is {})",
                    entry.size(),
                    ktstr_sdk::fsread::human_size(EXTENSION_LIMIT)
                ),
            ));
        }
        let mut body = Vec::new();
        Read::take(&mut *entry, EXTENSION_LIMIT)
            .read_to_end(&mut body)
            .map_err(|e| {
                StageError::corrupt(format!("{what}: damaged tar data in a {name}")).caused_by(e)
            })?;
        let trim = |mut b: Vec<u8>| {
            while b.last() == Some(&0) {
                b.pop();
            }
            b
        };
        match kind {
            EntryType::GNULongName => self.path = Some(trim(body)),
            EntryType::GNULongLink => self.link = Some(trim(body)),
            EntryType::XHeader => {
                for record in tar::PaxExtensions::new(&body) {
                    let record = record.map_err(|e| {
                        StageError::corrupt(format!("{what}: a malformed PAX header")).caused_by(e)
                    })?;
                    match record.key_bytes() {
                        b"path" => self.path = Some(record.value_bytes().to_vec()),
                        b"linkpath" => self.link = Some(record.value_bytes().to_vec()),
                        b"size" => {
                            let size = std::str::from_utf8(record.value_bytes())
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok())
                                .ok_or_else(|| {
                                    refuse(what, "a PAX size record is not a number".to_string())
                                })?;
                            self.size = Some(size);
                        }
                        _ => {}
                    }
                }
            }
            _ => {} // global header: nothing ktstr uses (git puts the commit there)
        }
        Ok(true)
    }
}

fn over_cap(what: &str, limits: &Limits) -> StageError {
    refuse(
        what,
        format!(
            "its files add up to more than the {} MiB cap (max_unpacked_bytes)",
            limits.max_unpacked_bytes >> 20
        ),
    )
    .with_hint("a kernel tree is about 1.5 GiB; raise max_unpacked_bytes in [plugin.tarball] if this archive is genuine")
}

fn symlink_escape(what: &str, rel: &Path, link: &Path) -> StageError {
    refuse(
        what,
        format!(
            "symlink {} -> {} points outside the tree",
            rel.display(),
            link.display()
        ),
    )
}

fn ensure_parent(dest: &Path, rel: &Path, made: &mut HashSet<PathBuf>) -> Result<()> {
    let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if made.contains(parent) {
        return Ok(());
    }
    let dir = dest.join(parent);
    std::fs::create_dir_all(&dir).at("create directory", &dir)?;
    made.insert(parent.to_path_buf());
    Ok(())
}

/// Remove what a duplicate entry replaces (never following a symlink).
fn remove_existing(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(StageError::corrupt(format!(
            "refusing to replace the directory {} with another entry",
            path.display()
        ))),
        Ok(_) => std::fs::remove_file(path).at("replace", path),
        Err(_) => Ok(()),
    }
}

fn create_new(path: &Path, mode: u32) -> Result<std::fs::File> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_existing(path)?;
            open().at("create", path)
        }
        Err(e) => Err(StageError::io("create", path, e)),
    }
}

/// Where the kernel tree is inside an unpacked archive: the single
/// top-level directory (`linux-6.12.3/`, Debian's `linux-source-6.12/`),
/// or `dest` itself when the archive is a tree without a top directory.
/// Both must hold a kernel Makefile.
pub fn find_tree(dest: &Path, what: &str) -> Result<(PathBuf, String)> {
    let mut top = Vec::new();
    for entry in std::fs::read_dir(dest).at("read", dest)? {
        let entry = entry.at("read", dest)?;
        top.push(entry.file_name());
    }
    let version_at = |dir: &Path| -> Option<String> {
        let text = ktstr_sdk::fsread::read_bounded(
            &dir.join("Makefile"),
            "Makefile",
            ktstr_sdk::fsread::SMALL_FILE_LIMIT,
            ktstr_sdk::fsread::Follow::No,
        )
        .ok()?;
        ktstr_sdk::source::kernel_version_from_makefile(&String::from_utf8_lossy(&text))
    };
    if top.is_empty() {
        return Err(StageError::corrupt(format!("{what}: the archive is empty"))
            .with_hint("expected a kernel tarball with one top-level linux-X.Y.Z/ directory"));
    }
    if top.len() == 1 {
        let dir = dest.join(&top[0]);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
            && let Some(version) = version_at(&dir)
        {
            return Ok((dir, version));
        }
    }
    if let Some(version) = version_at(dest) {
        return Ok((dest.to_path_buf(), version));
    }
    let mut names: Vec<String> = top
        .iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    let shown = if names.len() > 5 {
        format!("{}, ... ({} entries)", names[..5].join(", "), names.len())
    } else {
        names.join(", ")
    };
    Err(StageError::corrupt(format!(
        "{what} is not a kernel tarball: expected one top-level directory with a kernel Makefile (VERSION, PATCHLEVEL), found {shown}"
    ))
    .with_hint("pass a kernel.org or distribution kernel source tarball (linux-X.Y.Z.tar.xz)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_cleaned_and_escapes_refused() {
        assert_eq!(
            clean_relative(Path::new("./a/./b")).unwrap(),
            Path::new("a/b")
        );
        assert!(clean_relative(Path::new("a/../../b")).is_err());
        assert!(clean_relative(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn symlinks_resolve_through_other_links() {
        let mut links = HashMap::new();
        let base =
            |s: &str| -> Vec<OsString> { Path::new(s).iter().map(|c| c.to_os_string()).collect() };
        assert!(resolve_inside(&base("a/b"), Path::new("../../c"), &links, 0).is_some());
        assert!(resolve_inside(&base("a/b"), Path::new("../../../c"), &links, 0).is_none());
        // d1/l -> .. (the root), then d1/l2 -> l/.. leaves the tree.
        links.insert(PathBuf::from("d1/l"), PathBuf::from(".."));
        assert!(resolve_inside(&base("d1"), Path::new("l/.."), &links, 0).is_none());
        assert!(resolve_inside(&base("d1"), Path::new("l/x"), &links, 0).is_some());
        // A loop is refused rather than followed forever.
        links.insert(PathBuf::from("x"), PathBuf::from("y"));
        links.insert(PathBuf::from("y"), PathBuf::from("x"));
        assert!(resolve_inside(&[], Path::new("x"), &links, 0).is_none());
    }
}
