//! Recognising and decoding the compressed stream.
//!
//! The format is taken from the first bytes, not from the name: a mirror
//! may rename, and a captive portal answers any URL with an HTML page and
//! status 200, which has to be reported as "not a tarball" rather than as
//! an .xz data error. .xz goes through the C liblzma with its multithreaded
//! decoder (kernel.org and Debian tarballs are written in independent
//! blocks), which is what lets an acquire keep up with `tar -xJf`.

use std::io::{self, Read, Write};

use ktstr_sdk::prelude::*;

use crate::pipe::{self, ChunkReader, ChunkWriter, Failure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xz,
    Gzip,
    Zstd,
    /// An uncompressed tar.
    Tar,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Xz => "xz",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
            Format::Tar => "tar",
        }
    }
}

/// Bytes needed to recognise every format (a tar header is 512).
pub const SNIFF_LEN: usize = 512;

/// Recognise `head` (the first up to [`SNIFF_LEN`] bytes of `what`).
pub fn detect(head: &[u8], what: &str) -> Result<Format> {
    if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        return Ok(Format::Xz);
    }
    if head.starts_with(&[0x1F, 0x8B]) {
        return Ok(Format::Gzip);
    }
    if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        return Ok(Format::Zstd);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(Format::Tar);
    }
    if head.is_empty() {
        return Err(
            StageError::corrupt(format!("{what} is empty, not a tarball"))
                .with_hint("check the URL or file; a kernel tarball is around 140 MiB"),
        );
    }
    if looks_like_html(head) {
        return Err(not_a_tarball_html(what));
    }
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(StageError::corrupt(format!(
        "{what} is not a tarball: unknown format (first bytes {})",
        shown.join(" ")
    ))
    .with_hint("expected a .tar.xz, .tar.gz or .tar.zst kernel tarball"))
}

/// The error for an HTML page served in place of the tarball.
pub fn not_a_tarball_html(what: &str) -> StageError {
    StageError::corrupt(format!(
        "{what} is not a tarball: the server sent an HTML page (an error page, a login or a captive portal?)"
    ))
    .with_hint("open the URL in a browser to see the page; log in to the network or fix the URL, or point KTSTR_KERNEL_MIRROR at a reachable mirror")
}

fn looks_like_html(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let t = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .to_ascii_lowercase();
    [
        "<!doctype html",
        "<html",
        "<head",
        "<body",
        "<?xml",
        "<!--",
        "<title",
    ]
    .iter()
    .any(|p| t.starts_with(p))
}

/// Read up to `n` bytes (fewer only at end of stream).
pub fn read_head(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    r.by_ref().take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// The decompression stage: read `input`, recognise it, write the tar
/// stream to `output`. On failure, record the error and tell the consumer.
pub fn run(
    mut input: ChunkReader,
    mut output: ChunkWriter,
    xz_threads: u32,
    what: &str,
    failure: &Failure,
) {
    let outcome = (|| -> Result<()> {
        let head = read_head(&mut input, SNIFF_LEN).map_err(|e| stream_error(e, what, None))?;
        let format = detect(&head, what)?;
        let source = io::Cursor::new(head).chain(&mut input);
        let mut decoder: Box<dyn Read> = match format {
            Format::Xz => Box::new(liblzma::read::XzDecoder::new_stream(
                source,
                xz_decoder(xz_threads).map_err(|e| {
                    StageError::internal("cannot start the .xz decoder").caused_by(e)
                })?,
            )),
            Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(source)),
            Format::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(source).map_err(|e| {
                    StageError::internal("cannot start the zstd decoder").caused_by(e)
                })?)
            }
            Format::Tar => Box::new(source),
        };
        let mut buf = vec![0u8; pipe::CHUNK];
        loop {
            let n = match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(stream_error(e, what, Some(format))),
            };
            if output.send(buf[..n].to_vec()).is_err() {
                // The extractor stopped (it failed or finished): nothing to report.
                return Ok(());
            }
        }
        drop(decoder);
        // Let the download run to its end so the digest covers every byte.
        io::copy(&mut input, &mut io::sink()).map_err(|e| stream_error(e, what, None))?;
        output.flush().map_err(|_| StageError::cancelled())?;
        Ok(())
    })();
    if let Err(e) = outcome {
        failure.record(e);
        output.fail();
    }
}

fn xz_decoder(
    threads: u32,
) -> std::result::Result<liblzma::stream::Stream, liblzma::stream::Error> {
    if threads <= 1 {
        return liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0);
    }
    liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .memlimit_threading(1 << 30)
        .memlimit_stop(u64::MAX)
        .decoder()
}

fn stream_error(e: io::Error, what: &str, format: Option<Format>) -> StageError {
    if pipe::is_upstream(&e) {
        return StageError::internal(pipe::UPSTREAM_FAILED);
    }
    let data = format.map_or(String::new(), |f| format!(" {} data", f.name()));
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return StageError::corrupt(format!("{what}: the{data} stream is truncated")).with_hint(
            "the download was cut short or the file is incomplete; retry, or fetch the file again",
        );
    }
    StageError::corrupt(format!("{what}: corrupt{data}"))
        .caused_by(e)
        .with_hint("the file is damaged or not what its name says; fetch it again")
}

/// An in-memory compressor for tests and tools: `data` as `format`.
pub fn compress(data: &[u8], format: Format) -> Vec<u8> {
    match format {
        Format::Xz => {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
            enc.write_all(data).expect("in-memory write");
            enc.finish().expect("in-memory write")
        }
        Format::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("in-memory write");
            enc.finish().expect("in-memory write")
        }
        Format::Zstd => zstd::stream::encode_all(data, 1).expect("in-memory write"),
        Format::Tar => data.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_magic() {
        for f in [Format::Xz, Format::Gzip, Format::Zstd] {
            assert_eq!(detect(&compress(b"hello", f), "x").unwrap(), f);
        }
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&tar, "x").unwrap(), Format::Tar);
    }

    #[test]
    fn html_and_unknown_data_are_named() {
        let e = detect(
            b"\n  <!DOCTYPE html><html><body>Sign in</body>",
            "http://h/l.tar.xz",
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Corrupt);
        assert!(
            e.message.contains("http://h/l.tar.xz is not a tarball"),
            "{}",
            e.message
        );
        assert!(e.message.contains("HTML"), "{}", e.message);
        let e = detect(b"PK\x03\x04", "f.zip").unwrap_err();
        assert!(
            e.message.contains("first bytes 50 4b 03 04"),
            "{}",
            e.message
        );
        let e = detect(b"", "f").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
    }
}
