//! Opening URLs: one blocking reqwest client per call, `file://` as plain
//! files, bounded retries on transient failures.
//!
//! Retrying is only safe before any byte of the body was used, so it lives
//! here, around connecting and reading the status line; once [`open`]
//! returns, the caller owns the stream and a failure is final. The client's
//! per-read timeout is the no-progress watchdog: reqwest's blocking
//! `timeout` bounds the wait for the headers and every single body read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ktstr_sdk::prelude::*;

use crate::config::Settings;

/// A body being read, with what is known about it up front.
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    /// Declared length (Content-Length or file size).
    pub len: Option<u64>,
    /// `Content-Type` of an HTTP response.
    pub content_type: Option<String>,
    /// `ETag` / `Last-Modified` of an HTTP response, remembered once the
    /// body is verified (see [`crate::revalidate`]).
    pub validators: crate::revalidate::Validators,
}

/// How a fetch failed, before any byte was consumed.
#[derive(Debug)]
pub enum OpenError {
    /// 404 / 410, or a missing file.
    NotFound(StageError),
    Other(StageError),
}

impl OpenError {
    pub fn into_stage(self) -> StageError {
        match self {
            OpenError::NotFound(e) | OpenError::Other(e) => e,
        }
    }
}

/// The blocking client every fetch of one call shares.
pub fn client(settings: &Settings) -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .connect_timeout(settings.connect_timeout())
        .timeout(settings.stall_timeout())
        .user_agent(concat!("ktstr/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StageError::internal("cannot create the HTTP client").caused_by(e))
}

/// A `file://` URL's path, `None` for other schemes.
pub fn file_url_path(url: &str) -> Option<PathBuf> {
    let lower = url.get(..7)?.to_ascii_lowercase();
    (lower == "file://").then(|| PathBuf::from(&url[7..]))
}

/// Open `url` (http, https or file://), retrying transient failures.
/// `hint` is attached to unreachable/failed errors.
pub fn open(
    client: &reqwest::blocking::Client,
    url: &str,
    settings: &Settings,
    hint: &str,
    cx: &StageContext,
) -> std::result::Result<Opened, OpenError> {
    if let Some(path) = file_url_path(url) {
        return open_file(&path).map_err(|e| match e.kind {
            ErrorKind::NotFound => OpenError::NotFound(e),
            _ => OpenError::Other(e),
        });
    }
    let mut attempt = 0u32;
    loop {
        cx.cancel.check().map_err(OpenError::Other)?;
        let outcome = client.get(url).send();
        let transient = match &outcome {
            Ok(resp) => {
                let s = resp.status();
                s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        };
        if transient && attempt < settings.retries {
            attempt += 1;
            let why = match &outcome {
                Ok(resp) => format!("HTTP {}", resp.status()),
                Err(e) => error_chain(e),
            };
            cx.progress.note(&format!(
                "{url}: {why}; retrying ({attempt} of {})",
                settings.retries
            ));
            std::thread::sleep(backoff(attempt));
            continue;
        }
        let tries = if attempt > 0 {
            format!(" (after {} attempts)", attempt + 1)
        } else {
            String::new()
        };
        return match outcome {
            Err(e) if e.is_timeout() => Err(OpenError::Other(
                StageError::new(
                    ErrorKind::Io,
                    format!(
                        "cannot reach {url}: no answer within {} s{tries}",
                        if e.is_connect() {
                            settings.connect_timeout_secs
                        } else {
                            settings.stall_timeout_secs
                        }
                    ),
                )
                .with_hint(hint),
            )),
            Err(e) => Err(OpenError::Other(
                StageError::new(ErrorKind::Io, format!("cannot reach {url}{tries}"))
                    .caused_by(e)
                    .with_hint(hint),
            )),
            Ok(resp) if resp.status().is_success() => {
                let content_type = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                Ok(Opened {
                    len: resp.content_length(),
                    content_type,
                    validators: crate::revalidate::Validators::from_headers(resp.headers()),
                    reader: Box::new(resp),
                })
            }
            Ok(resp)
                if matches!(
                    resp.status(),
                    reqwest::StatusCode::NOT_FOUND | reqwest::StatusCode::GONE
                ) =>
            {
                Err(OpenError::NotFound(StageError::not_found(format!(
                    "{url}: not found (HTTP {})",
                    resp.status().as_u16()
                ))))
            }
            Ok(resp) => Err(OpenError::Other(
                StageError::new(
                    ErrorKind::Io,
                    format!("{url}: the server answered HTTP {}{tries}", resp.status()),
                )
                .with_hint(hint),
            )),
        };
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(5))
}

/// `err` and its sources joined with `: ` (reqwest's own Display stops at
/// "error sending request").
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

/// Open a local file as a body. Only a regular file (after following
/// symlinks) is a tarball: a FIFO, a device (`/dev/zero`) or a directory is
/// refused at once, before anything reads from it.
pub fn open_file(path: &Path) -> Result<Opened> {
    use ktstr_sdk::fsread::{Follow, open_regular};
    let file = open_regular(path, "tarball", Follow::Yes).map_err(|e| match e.kind {
        ErrorKind::NotFound => {
            e.with_hint("check the path; relative paths are taken from the current directory")
        }
        _ if path.is_dir() => {
            e.with_hint("pass a kernel source directory as ./DIR (the local source) instead")
        }
        _ => e,
    })?;
    let meta = file
        .metadata()
        .map_err(|e| StageError::io("inspect", path, e))?;
    Ok(Opened {
        reader: Box::new(file),
        len: Some(meta.len()),
        content_type: None,
        validators: Default::default(),
    })
}

/// Fetch a small text document (releases.json, sha256sums.asc) whole.
pub fn fetch_text(
    client: &reqwest::blocking::Client,
    url: &str,
    settings: &Settings,
    hint: &str,
    cx: &StageContext,
) -> std::result::Result<String, OpenError> {
    const LIMIT: u64 = 64 << 20;
    let opened = open(client, url, settings, hint, cx)?;
    let mut buf = Vec::new();
    opened
        .reader
        .take(LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| {
            OpenError::Other(
                StageError::new(ErrorKind::Io, format!("cannot read {url}"))
                    .caused_by(e)
                    .with_hint(hint.to_string()),
            )
        })?;
    if buf.len() as u64 > LIMIT {
        return Err(OpenError::Other(StageError::corrupt(format!(
            "{url}: larger than {} MiB, not the expected document",
            LIMIT >> 20
        ))));
    }
    String::from_utf8(buf).map_err(|_| {
        OpenError::Other(
            StageError::corrupt(format!("{url}: not UTF-8 text")).with_hint(hint.to_string()),
        )
    })
}
