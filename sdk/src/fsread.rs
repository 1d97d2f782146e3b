//! Reading files ktstr does not control, with a type check and a bound.
//!
//! Every file ktstr reads can be something other than a small regular file:
//! a fragment, the config file or a tarball path given by the user; a
//! tree's Makefile; a cache entry's `metadata.json` or a state file under
//! the cache root, which anyone with write access may have replaced. A FIFO
//! there blocks `open` and `read` forever, `/dev/zero` never ends, and a
//! multi-gigabyte file grows memory without bound. So every read goes
//! through here: the file is opened with `O_NONBLOCK` (opening a FIFO then
//! returns at once), optionally with `O_NOFOLLOW` (files ktstr itself
//! wrote are never symlinks), `fstat`ed on the open descriptor (no race
//! with a rename), refused unless it is a regular file, and read up to a
//! limit. Errors name the file, what it is, and the limit.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{ErrorKind, Result, StageError};

/// Upper bound for small text files: fragments, the config file, state
/// files, `metadata.json`, a Makefile's head (1 MiB).
pub const SMALL_FILE_LIMIT: u64 = 1 << 20;

/// Whether the last path component may be a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// User-named files: a symlink is followed, the target is checked.
    Yes,
    /// Files under the cache root ktstr wrote itself: a symlink is refused.
    No,
}

/// A human name for a file type, for errors.
fn kind_name(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading, refusing anything but a regular file.
/// `what` names the file's role in messages ("fragment", "config file").
/// A missing file is `ErrorKind::NotFound`; a file of the wrong type is
/// `InvalidInput`; other failures are `Io`. The returned file is in
/// blocking mode (O_NONBLOCK has no effect on regular files).
pub fn open_regular(path: &Path, what: &str, follow: Follow) -> Result<File> {
    let mut flags = nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    if follow == Follow::No {
        flags |= nix::libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| open_error(path, what, follow, e))?;
    let meta = file
        .metadata()
        .map_err(|e| StageError::io(&format!("stat {what}"), path, e))?;
    if !meta.file_type().is_file() {
        return Err(StageError::invalid_input(format!(
            "{what} {} is {}, not a regular file",
            path.display(),
            kind_name(meta.file_type())
        ))
        .with_hint(format!("point ktstr at a regular file for the {what}")));
    }
    Ok(file)
}

fn open_error(path: &Path, what: &str, follow: Follow, e: std::io::Error) -> StageError {
    let raw = e.raw_os_error();
    if follow == Follow::No && raw == Some(nix::libc::ELOOP) {
        return StageError::invalid_input(format!(
            "{what} {} is a symlink; ktstr does not follow symlinks there",
            path.display()
        ))
        .with_hint("remove the symlink; ktstr writes a regular file there itself");
    }
    if raw == Some(nix::libc::ELOOP) {
        return StageError::invalid_input(format!(
            "{what} {}: too many levels of symbolic links (a symlink loop?)",
            path.display()
        ))
        .caused_by(e);
    }
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::IsADirectory => ErrorKind::InvalidInput,
        _ => ErrorKind::Io,
    };
    StageError::new(kind, format!("cannot read {what} {}", path.display())).caused_by(e)
}

/// Read at most `limit` bytes of the regular file `path`; a larger file is
/// an error naming the file and the limit.
pub fn read_bounded(path: &Path, what: &str, limit: u64, follow: Follow) -> Result<Vec<u8>> {
    let file = open_regular(path, what, follow)?;
    let mut out = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| StageError::io(&format!("read {what}"), path, e))?;
    if out.len() as u64 > limit {
        return Err(StageError::invalid_input(format!(
            "{what} {} is larger than the {} limit",
            path.display(),
            human_size(limit)
        ))
        .with_hint(format!(
            "a {what} is a small text file; check that this is the file you meant"
        )));
    }
    Ok(out)
}

/// [`read_bounded`] as UTF-8 text; invalid UTF-8 is an error naming the file.
pub fn read_text(path: &Path, what: &str, limit: u64, follow: Follow) -> Result<String> {
    let bytes = read_bounded(path, what, limit, follow)?;
    String::from_utf8(bytes).map_err(|e| {
        StageError::invalid_input(format!("{what} {} is not UTF-8 text", path.display()))
            .caused_by(e)
    })
}

/// [`read_bounded`] where a missing file is `Ok(None)`.
pub fn read_optional(
    path: &Path,
    what: &str,
    limit: u64,
    follow: Follow,
) -> Result<Option<Vec<u8>>> {
    match read_bounded(path, what, limit, follow) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `1 MiB`, `64 KiB`, `17 bytes`.
pub fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn err(path: &Path, follow: Follow) -> StageError {
        read_bounded(path, "fragment", 16, follow).unwrap_err()
    }

    #[test]
    fn regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "CONFIG_X=y\n").unwrap();
        assert_eq!(
            read_text(&f, "fragment", 16, Follow::No).unwrap(),
            "CONFIG_X=y\n"
        );
        std::fs::write(&f, [b'a'; 16]).unwrap();
        assert_eq!(
            read_bounded(&f, "fragment", 16, Follow::No).unwrap().len(),
            16
        );
    }

    #[test]
    fn larger_files_name_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big");
        std::fs::write(&f, [b'a'; 17]).unwrap();
        let e = err(&f, Follow::Yes);
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("larger than the 16 bytes limit"),
            "{e}"
        );
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let start = Instant::now();
        for (path, what) in [
            (fifo.as_path(), "a FIFO"),
            (link.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ] {
            let e = err(path, Follow::Yes);
            assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
            assert!(e.to_string().contains(what), "{path:?}: {e}");
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn symlinks_are_refused_when_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(err(&link, Follow::No).to_string().contains("is a symlink"));
        assert_eq!(read_bounded(&link, "x", 16, Follow::Yes).unwrap(), b"x");
    }

    #[test]
    fn loops_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(err(&a, Follow::Yes).to_string().contains("symbolic links"));
        let missing = dir.path().join("missing");
        assert_eq!(err(&missing, Follow::Yes).kind, ErrorKind::NotFound);
        assert_eq!(read_optional(&missing, "x", 16, Follow::No).unwrap(), None);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(1 << 20), "1 MiB");
        assert_eq!(human_size(64 << 10), "64 KiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size(17), "17 bytes");
    }
}
