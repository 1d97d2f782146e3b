//! The acquire pipeline: download (and hash) → decompress → extract, three
//! threads joined by bounded channels, no intermediate file.
//!
//! The download thread hashes every byte as it passes, so the sha256 is
//! known the moment the last byte arrives; the tree is only installed by
//! the caller after comparing it. The watchdog is the client's per-read
//! timeout (see `fetch`); here a timed-out read becomes "no data for N s".

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ktstr_sdk::context::{Cancellation, Progress, human_bytes};
use ktstr_sdk::hash::Sha256Stream;
use ktstr_sdk::prelude::*;

use crate::config::Settings;
use crate::extract::{self, Extracted};
use crate::fetch::Opened;
use crate::pipe::{self, ChunkWriter, Failure};

/// What the pipeline produced: the unpacked tree (still in staging) and
/// the digest of the bytes read.
#[derive(Debug)]
pub struct Fetched {
    pub sha256: String,
    pub bytes: u64,
    pub extracted: Extracted,
}

/// Chunks buffered between download and decompression (x 256 KiB).
const DOWNLOAD_DEPTH: usize = 64;
/// Chunks buffered between decompression and extraction.
const TAR_DEPTH: usize = 32;

/// Run the pipeline over `opened` (named `what` in messages) into
/// `staging`. On error the staging directory may hold a partial tree;
/// the caller removes it.
pub fn fetch_and_extract(
    opened: Opened,
    what: &str,
    staging: &Path,
    settings: &Settings,
    cx: &StageContext,
) -> Result<Fetched> {
    if let Some(ct) = &opened.content_type
        && ct.to_ascii_lowercase().starts_with("text/html")
    {
        return Err(crate::decompress::not_a_tarball_html(what));
    }
    let failure = Failure::default();
    let files = Arc::new(AtomicU64::new(0));
    let (dl_tx, dl_rx) = pipe::channel(DOWNLOAD_DEPTH);
    let (tar_tx, mut tar_rx) = pipe::channel(TAR_DEPTH);

    // Detached on failure: a download blocked in a read ends by itself
    // (watchdog) or at its next send, once the consumer is gone.
    let downloader = {
        let failure = failure.clone();
        let what = what.to_string();
        let stall = settings.stall_timeout();
        let progress = cx.progress.clone();
        let cancel = cx.cancel.clone();
        let files = files.clone();
        std::thread::Builder::new()
            .name("ktstr-download".into())
            .spawn(move || {
                download(
                    opened, dl_tx, &what, stall, progress, cancel, files, &failure,
                )
            })
            .map_err(|e| StageError::internal("cannot start the download thread").caused_by(e))?
    };
    let decompressor = {
        let failure = failure.clone();
        let what = what.to_string();
        let threads = settings.xz_threads();
        std::thread::Builder::new()
            .name("ktstr-decompress".into())
            .spawn(move || crate::decompress::run(dl_rx, tar_tx, threads, &what, &failure))
            .map_err(|e| {
                StageError::internal("cannot start the decompression thread").caused_by(e)
            })?
    };

    let limits = extract::Limits {
        max_unpacked_bytes: settings.max_unpacked_bytes,
    };
    let extracted = extract::unpack(&mut tar_rx, staging, &limits, what, &cx.cancel, &files)
        .and_then(|x| {
            // Drain the end-of-archive padding so the decompressor, and
            // through it the download, run to their end.
            std::io::copy(&mut tar_rx, &mut std::io::sink()).map_err(|e| {
                StageError::new(ErrorKind::Io, format!("{what}: reading the archive")).caused_by(e)
            })?;
            Ok(x)
        });
    let extracted = match extracted {
        Ok(x) => x,
        Err(e) => {
            drop(tar_rx);
            return Err(failure.take().unwrap_or(e));
        }
    };
    let _ = decompressor.join();
    let downloaded = downloader.join();
    if let Some(e) = failure.take() {
        return Err(e);
    }
    let (sha256, bytes) = match downloaded {
        Ok(Some(d)) => d,
        _ => {
            return Err(StageError::internal(format!(
                "{what}: the download thread failed"
            )));
        }
    };
    Ok(Fetched {
        sha256,
        bytes,
        extracted,
    })
}

/// The download stage. Returns the digest and byte count, or `None` after
/// recording a failure.
#[allow(clippy::too_many_arguments)]
fn download(
    opened: Opened,
    mut out: ChunkWriter,
    what: &str,
    stall: Duration,
    progress: Arc<dyn Progress>,
    cancel: Cancellation,
    files: Arc<AtomicU64>,
    failure: &Failure,
) -> Option<(String, u64)> {
    let Opened {
        mut reader, len, ..
    } = opened;
    let mut hasher = Sha256Stream::new();
    let mut total = 0u64;
    let start = Instant::now();
    let mut last_report = start;
    let mut last_data = start;
    let report = |total: u64, done: bool| {
        let line = progress_line(
            total,
            len,
            start.elapsed(),
            files.load(Ordering::Relaxed),
            done,
        );
        progress.line(&line);
    };
    let result = (|| -> Result<()> {
        loop {
            if cancel.is_cancelled() {
                return Err(StageError::cancelled());
            }
            let mut buf = vec![0u8; pipe::CHUNK];
            let n = match read_some(&mut reader, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let idle = last_data.elapsed();
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || idle + Duration::from_millis(200) >= stall
                        || crate::fetch::error_chain(&e).contains("timed out")
                    {
                        return Err(StageError::new(
                            ErrorKind::Io,
                            format!(
                                "{what}: download stalled: no data for {} s after {}",
                                stall.as_secs(),
                                human_bytes(total)
                            ),
                        )
                        .with_hint(
                            "the server or network stopped sending; retry, raise stall_timeout_secs in [plugin.tarball], or use a closer mirror (KTSTR_KERNEL_MIRROR)",
                        ));
                    }
                    let short = len.map_or(String::new(), |l| format!(" of {}", human_bytes(l)));
                    return Err(StageError::new(
                        ErrorKind::Io,
                        format!("{what}: download failed after {}{short}", human_bytes(total)),
                    )
                    .caused_by(e)
                    .with_hint("retry; if it keeps failing, use another mirror (KTSTR_KERNEL_MIRROR) or a local file"));
                }
            };
            if n == 0 {
                break;
            }
            last_data = Instant::now();
            buf.truncate(n);
            hasher.update(&buf);
            total += n as u64;
            if out.send(buf).is_err() {
                // The consumer stopped; whoever stopped it reports why.
                return Ok(());
            }
            if last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                progress.bytes(total, len);
            }
        }
        if let Some(len) = len
            && total < len
        {
            return Err(StageError::corrupt(format!(
                "{what}: truncated download: got {total} of {len} bytes"
            ))
            .with_hint("the connection was cut; retry"));
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            report(total, true);
            drop(out);
            Some((hasher.finish(), total))
        }
        Err(e) => {
            failure.record(e);
            out.fail();
            None
        }
    }
}

/// Fill `buf` as far as the source gives without blocking on a second read
/// after a short one (a read that returns data resets the watchdog).
fn read_some(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if filled >= buf.len() / 4 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if filled > 0 => {
                // Report the bytes we have; the error recurs on the next read.
                let _ = e;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn progress_line(
    total: u64,
    len: Option<u64>,
    elapsed: Duration,
    files: u64,
    done: bool,
) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = human_bytes((total as f64 / secs) as u64);
    let of = len.map_or(String::new(), |l| {
        format!(" of {} ({}%)", human_bytes(l), total * 100 / l.max(1))
    });
    let verb = if done { "downloaded" } else { "downloading" };
    format!(
        "{verb} {}{of}, {rate}/s, {files} files unpacked",
        human_bytes(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_bytes_rate_and_share() {
        let l = progress_line(50 << 20, Some(100 << 20), Duration::from_secs(2), 7, false);
        assert_eq!(
            l,
            "downloading 50.0 MiB of 100.0 MiB (50%), 25.0 MiB/s, 7 files unpacked"
        );
        assert!(
            progress_line(10, None, Duration::from_secs(1), 0, true)
                .starts_with("downloaded 0.0 KiB")
        );
    }
}
