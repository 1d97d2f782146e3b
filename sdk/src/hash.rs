//! Digests used for identity and integrity.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::context::Cancellation;
use crate::error::Result;

/// An incremental sha256 (downloads, archives, files streamed through a
/// pipeline): feed bytes as they pass, get the lowercase hex at the end.
#[derive(Clone, Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lowercase hex of everything fed.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// Whether `s` is a sha256 digest as ktstr writes them: 64 lowercase hex
/// digits. (Parsers of user input lowercase first.)
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex sha256 and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    sha256_file_cancellable(path, None)
}

/// [`sha256_file`] that stops with `Cancelled` between reads once `cancel`
/// is raised (a large tarball takes a noticeable fraction of a second).
pub fn sha256_file_cancellable(
    path: &Path,
    cancel: Option<&Cancellation>,
) -> Result<(String, u64)> {
    // A FIFO or a device in place of a file would block or never end.
    let mut file = crate::fsread::open_regular(path, "file", crate::fsread::Follow::Yes)?;
    let mut hasher = Sha256Stream::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        if let Some(cancel) = cancel {
            cancel.check()?;
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(crate::error::StageError::io("read", path, e)),
        };
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finish(), size))
}

/// CRC32 as exactly 8 lowercase hex digits (zero-padded: keys depend on it).
pub fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn crc32_is_zero_padded() {
        let probe = (0u32..10_000)
            .map(|n| format!("probe-{n}"))
            .find(|p| crc32fast::hash(p.as_bytes()) < 0x1000_0000)
            .unwrap();
        let h = crc32_hex(probe.as_bytes());
        assert_eq!(h.len(), 8);
        assert!(h.starts_with('0'));
    }

    #[test]
    fn file_digest_matches_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (d, n) = sha256_file(&p).unwrap();
        assert_eq!(d, sha256_hex(b"abc"));
        assert_eq!(n, 3);
    }
}
