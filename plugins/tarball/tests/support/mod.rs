//! Test support: a tiny HTTP/1.1 server on 127.0.0.1 and generators for
//! small kernel tarballs (well-formed and hostile).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ktstr_plugin_tarball::decompress::{Format, compress};

/// What the server answers on one path.
#[derive(Clone)]
pub enum Reply {
    /// 200 with a body and a content type.
    Body(Arc<Vec<u8>>, &'static str),
    /// 200 streaming a file from disk.
    File(PathBuf),
    /// A status with a short text body.
    Status(u16),
    /// 200 whose Content-Length is larger than what is sent; then close.
    Truncated(Arc<Vec<u8>>, u64),
    /// 200 with the headers and `prefix`, then silence for `hold`.
    Stall(Arc<Vec<u8>>, Duration),
    /// `fails` times 503, then the body.
    FlakyThen(Arc<Mutex<u32>>, Arc<Vec<u8>>),
    /// A file with validators, answering conditional requests (or not).
    Conditional(Arc<Conditional>),
}

/// A URL whose content, `ETag` and `Last-Modified` the test changes, and
/// how it answered so far.
#[derive(Default)]
pub struct Conditional {
    pub state: Mutex<Versioned>,
    /// Requests answered with the whole body.
    pub full: std::sync::atomic::AtomicUsize,
    /// Requests answered 304.
    pub not_modified: std::sync::atomic::AtomicUsize,
    /// The `If-None-Match` / `If-Modified-Since` of every request.
    pub conditions: Mutex<Vec<(Option<String>, Option<String>)>>,
}

#[derive(Default)]
pub struct Versioned {
    pub body: Arc<Vec<u8>>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Answer 304 when a condition matches (else always 200).
    pub honour: bool,
}

impl Conditional {
    pub fn new(
        body: Vec<u8>,
        etag: Option<&str>,
        last_modified: Option<&str>,
        honour: bool,
    ) -> Arc<Self> {
        let c = Arc::new(Conditional::default());
        c.set(body, etag, last_modified, honour);
        c
    }

    pub fn set(
        &self,
        body: Vec<u8>,
        etag: Option<&str>,
        last_modified: Option<&str>,
        honour: bool,
    ) {
        *self.state.lock().unwrap() = Versioned {
            body: Arc::new(body),
            etag: etag.map(str::to_string),
            last_modified: last_modified.map(str::to_string),
            honour,
        };
    }

    pub fn counts(&self) -> (usize, usize) {
        (
            self.full.load(Ordering::SeqCst),
            self.not_modified.load(Ordering::SeqCst),
        )
    }
}

#[derive(Clone, Default)]
pub struct Routes(Arc<Mutex<HashMap<String, Reply>>>);

pub struct Server {
    pub base: String,
    routes: Routes,
    pub hits: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes = Routes::default();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let routes = routes.clone();
            let hits = hits.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let routes = routes.clone();
                    let hits = hits.clone();
                    std::thread::spawn(move || {
                        let _ = serve(conn, &routes, &hits);
                    });
                }
            });
        }
        Server {
            base,
            routes,
            hits,
            stop,
        }
    }

    pub fn route(&self, path: &str, reply: Reply) {
        self.routes
            .0
            .lock()
            .unwrap()
            .insert(path.to_string(), reply);
    }

    pub fn body(&self, path: &str, body: Vec<u8>) {
        self.route(
            path,
            Reply::Body(Arc::new(body), "application/octet-stream"),
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits_of(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
    }
}

fn serve(conn: TcpStream, routes: &Routes, hits: &Mutex<Vec<String>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers: HashMap<String, String> = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    hits.lock().unwrap().push(path.clone());
    let reply = routes.0.lock().unwrap().get(&path).cloned();
    let mut out = conn;
    let head = |status: u16, len: u64, ctype: &str| {
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n",
            if status == 200 { "OK" } else { "Error" }
        )
    };
    match reply {
        None => {
            out.write_all(head(404, 9, "text/plain").as_bytes())?;
            out.write_all(b"not found")?;
        }
        Some(Reply::Body(body, ctype)) => {
            out.write_all(head(200, body.len() as u64, ctype).as_bytes())?;
            out.write_all(&body)?;
        }
        Some(Reply::File(path)) => {
            let mut f = std::fs::File::open(path)?;
            let len = f.metadata()?.len();
            out.write_all(head(200, len, "application/x-xz").as_bytes())?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
            }
        }
        Some(Reply::Status(code)) => {
            out.write_all(head(code, 5, "text/plain").as_bytes())?;
            out.write_all(b"error")?;
        }
        Some(Reply::Truncated(body, claimed)) => {
            out.write_all(head(200, claimed, "application/octet-stream").as_bytes())?;
            out.write_all(&body)?;
        }
        Some(Reply::Stall(prefix, hold)) => {
            out.write_all(
                head(
                    200,
                    prefix.len() as u64 + 1_000_000,
                    "application/octet-stream",
                )
                .as_bytes(),
            )?;
            out.write_all(&prefix)?;
            out.flush()?;
            std::thread::sleep(hold);
        }
        Some(Reply::Conditional(c)) => {
            let inm = headers.get("if-none-match").cloned();
            let ims = headers.get("if-modified-since").cloned();
            c.conditions
                .lock()
                .unwrap()
                .push((inm.clone(), ims.clone()));
            let v = c.state.lock().unwrap();
            // RFC 9110: If-Modified-Since is ignored when If-None-Match is sent.
            let unchanged = match (&inm, &ims) {
                (Some(inm), _) => v.etag.as_deref() == Some(inm.as_str()),
                (None, Some(ims)) => v.last_modified.as_deref() == Some(ims.as_str()),
                (None, None) => false,
            };
            let mut head = String::new();
            if let Some(e) = &v.etag {
                head.push_str(&format!("ETag: {e}\r\n"));
            }
            if let Some(lm) = &v.last_modified {
                head.push_str(&format!("Last-Modified: {lm}\r\n"));
            }
            if v.honour && unchanged {
                c.not_modified.fetch_add(1, Ordering::SeqCst);
                out.write_all(
                    format!("HTTP/1.1 304 Not Modified\r\n{head}Connection: close\r\n\r\n")
                        .as_bytes(),
                )?;
            } else {
                c.full.fetch_add(1, Ordering::SeqCst);
                out.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/x-xz\r\n{head}Connection: close\r\n\r\n",
                        v.body.len()
                    )
                    .as_bytes(),
                )?;
                // The client may hang up after the headers (it had what
                // it needed): not an error of the server's.
                let _ = out.write_all(&v.body);
            }
        }
        Some(Reply::FlakyThen(fails, body)) => {
            let mut left = fails.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                out.write_all(head(503, 5, "text/plain").as_bytes())?;
                out.write_all(b"error")?;
            } else {
                out.write_all(head(200, body.len() as u64, "application/octet-stream").as_bytes())?;
                out.write_all(&body)?;
            }
        }
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// One entry of a generated tarball.
#[derive(Clone)]
pub enum Item {
    File(&'static str, Vec<u8>),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Fifo(&'static str),
    CharDev(&'static str),
    /// A file whose header claims `size` bytes (data is zeros).
    Big(&'static str, u64),
}

/// The top Makefile of a kernel `version` (`6.12.3`).
pub fn makefile(version: &str) -> Vec<u8> {
    let mut parts = version.splitn(3, '.');
    let (v, p, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap_or("0"),
    );
    format!(
        "# SPDX-License-Identifier: GPL-2.0\nVERSION = {v}\nPATCHLEVEL = {p}\nSUBLEVEL = {s}\nEXTRAVERSION =\nNAME = Test\n\nall:\n\ttrue\n"
    )
    .into_bytes()
}

/// A small kernel tree under `top/`.
pub fn kernel_items(top: &'static str, version: &str) -> Vec<Item> {
    let top_s: &'static str = top;
    let p = |s: &str| -> &'static str { Box::leak(format!("{top_s}/{s}").into_boxed_str()) };
    vec![
        Item::Dir(p("")),
        Item::File(p("Makefile"), makefile(version)),
        Item::File(p("Kconfig"), b"source \"arch/Kconfig\"\n".to_vec()),
        Item::Dir(p("arch")),
        Item::File(p("arch/Kconfig"), b"config X\n".to_vec()),
        Item::Dir(p("kernel/sched")),
        Item::File(p("kernel/sched/core.c"), b"int x;\n".repeat(100)),
        Item::Symlink(
            p("scripts/dtc/include-prefixes/arm"),
            "../../../arch/arm/boot/dts",
        ),
        Item::Hardlink(p("kernel/sched/core-copy.c"), p("kernel/sched/core.c")),
        Item::File(p("scripts/run.sh"), b"#!/bin/sh\n".to_vec()),
    ]
}

fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    // Write the name bytes directly: `set_path` refuses `..` and absolute
    // paths, which the hostile archives need.
    let name = path.as_bytes();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
    h.set_mtime(1_700_000_000);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let t = target.as_bytes();
    h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
}

/// An uncompressed tar of `items`.
pub fn tar_of(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |mut h: tar::Header, data: &[u8]| {
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    };
    for item in items {
        match item {
            Item::File(p, data) => {
                push(header(p, tar::EntryType::Regular, data.len() as u64), data)
            }
            Item::Dir(p) => push(header(&format!("{p}/"), tar::EntryType::Directory, 0), &[]),
            Item::Symlink(p, t) => {
                let mut h = header(p, tar::EntryType::Symlink, 0);
                set_link(&mut h, t);
                push(h, &[]);
            }
            Item::Hardlink(p, t) => {
                let mut h = header(p, tar::EntryType::Link, 0);
                set_link(&mut h, t);
                push(h, &[]);
            }
            Item::Fifo(p) => push(header(p, tar::EntryType::Fifo, 0), &[]),
            Item::CharDev(p) => push(header(p, tar::EntryType::Char, 0), &[]),
            Item::Big(p, size) => {
                let h = header(p, tar::EntryType::Regular, *size);
                push(h, &vec![0u8; *size as usize]);
            }
        }
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// `items` as a compressed tarball.
pub fn tarball(items: &[Item], format: Format) -> Vec<u8> {
    compress(&tar_of(items), format)
}

#[allow(unused_imports)] // not every test binary that includes this module hashes
pub use ktstr_sdk::hash::sha256_hex;

/// A clear-signed sums file listing `(file name, digest)`.
pub fn sums_asc(entries: &[(String, String)]) -> Vec<u8> {
    let mut s = String::from("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n");
    for (name, hex) in entries {
        s.push_str(&format!("{hex}  {name}\n"));
    }
    s.push_str("-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n");
    s.into_bytes()
}

/// A kernel.org-style releases.json.
pub fn releases_json(entries: &[(&str, &str)]) -> Vec<u8> {
    let releases: Vec<String> = entries
        .iter()
        .map(|(v, m)| {
            format!(
                r#"{{"iseol":false,"version":"{v}","moniker":"{m}","source":"https://cdn.example/linux-{v}.tar.xz","pgp":null,"released":{{"timestamp":0,"isodate":"2024-12-01"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"latest_stable":{{"version":"x"}},"releases":[{}]}}"#,
        releases.join(",")
    )
    .into_bytes()
}
