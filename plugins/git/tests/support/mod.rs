//! Fixtures for the git source tests: origin repositories made with the
//! git CLI, and a smart-HTTP server (`git http-backend` behind a tiny CGI
//! front end) on 127.0.0.1.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Whether the git CLI is installed (the fixtures need it).
pub fn git_available() -> bool {
    let ok = Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        ktstr_sdk::testing::skip("git is not installed");
    }
    ok
}

/// Run git in `dir` with a hermetic config; panic on failure; stdout trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "gc.auto=0",
            "-c",
            "user.name=ktstr test",
            "-c",
            "user.email=test@ktstr.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A kernel-looking repository at `<tmp>/origin` (non-bare, branch `main`,
/// annotated tag `v6.99`, lightweight tag `light`, branch `sched-next`).
pub struct Origin {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Origin {
    pub fn new() -> Origin {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(tmp.path()).unwrap().join("origin");
        std::fs::create_dir_all(dir.join("arch/x86")).unwrap();
        std::fs::create_dir_all(dir.join("init")).unwrap();
        std::fs::write(dir.join("Makefile"), makefile(1)).unwrap();
        std::fs::write(dir.join("Kconfig"), "source \"arch/x86/Kconfig\"\n").unwrap();
        std::fs::write(dir.join("arch/x86/Kconfig"), "config X86\n\tdef_bool y\n").unwrap();
        std::fs::write(dir.join("init/main.c"), "int main(void) { return 0; }\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let script = dir.join("scripts.sh");
            std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        git(&dir, &["init", "-q"]);
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-q", "-m", "v6.99.1"]);
        git(&dir, &["tag", "-a", "-m", "release", "v6.99"]);
        git(&dir, &["tag", "light"]);
        git(&dir, &["branch", "sched-next"]);
        Origin { tmp, dir }
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub fn rev(&self, rev: &str) -> String {
        git(&self.dir, &["rev-parse", &format!("{rev}^{{commit}}")])
    }

    /// Commit a new SUBLEVEL on the current branch; returns the commit.
    pub fn bump(&self, sublevel: u32) -> String {
        std::fs::write(self.dir.join("Makefile"), makefile(sublevel)).unwrap();
        git(
            &self.dir,
            &["commit", "-q", "-am", &format!("sublevel {sublevel}")],
        );
        self.rev("HEAD")
    }

    /// Panic with the differing lines when the origin changed since `before`.
    pub fn assert_unchanged(&self, before: &str) {
        let now = self.snapshot();
        let changed: Vec<_> = now
            .lines()
            .filter(|l| !before.lines().any(|b| b == *l))
            .collect();
        let gone: Vec<_> = before
            .lines()
            .filter(|l| !now.lines().any(|b| b == *l))
            .collect();
        assert!(
            changed.is_empty() && gone.is_empty(),
            "the origin repository was modified:\nnow: {changed:#?}\nbefore: {gone:#?}"
        );
    }

    /// Everything about the origin a fetch could change: every file's
    /// path, size and mtime, the refs, HEAD and the status.
    pub fn snapshot(&self) -> String {
        let mut lines = Vec::new();
        walk(&self.dir, &mut lines);
        lines.sort();
        lines.push(git(&self.dir, &["for-each-ref"]));
        lines.push(git(&self.dir, &["rev-parse", "HEAD"]));
        // --no-optional-locks: status must not refresh (write) the index.
        lines.push(git(
            &self.dir,
            &["--no-optional-locks", "status", "--porcelain", "--ignored"],
        ));
        lines.join("\n")
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        let mtime = m.modified().unwrap();
        out.push(format!("{} {} {:?}", e.path().display(), m.len(), mtime));
        if m.is_dir() {
            walk(&e.path(), out);
        }
    }
}

pub fn makefile(sublevel: u32) -> String {
    format!(
        "# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 99\nSUBLEVEL = {sublevel}\nEXTRAVERSION =\nNAME = Test\n\nall:\n\t@true\n"
    )
}

/// Every file under `dir`, relative, sorted (for comparing trees).
pub fn tree_files(dir: &Path) -> Vec<String> {
    fn go(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                go(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

/// Smart HTTP on 127.0.0.1: each request runs `git http-backend` as a
/// CGI program over the repositories under `root`. Dropping it closes the
/// port.
pub struct GitHttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GitHttpServer {
    pub fn start(root: &Path) -> GitHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, requests, root) = (stop.clone(), requests.clone(), root.to_path_buf());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    requests.fetch_add(1, Ordering::SeqCst);
                    let root = root.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = serve(stream, &root) {
                            eprintln!("test http server: {e}");
                        }
                    });
                }
            })
        };
        GitHttpServer {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = header("content-type") {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = header("git-protocol") {
        cmd.env("GIT_PROTOCOL", v);
    }
    if let Some(v) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    // Stream the CGI response as http-backend produces it (headers first,
    // then the pack), like a real server: the client sees progress early.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    loop {
        let mut h = String::new();
        if out.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(s) = h.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else {
            response.extend_from_slice(h.as_bytes());
            response.extend_from_slice(b"\r\n");
        }
    }
    let mut stream = stream;
    // No Content-Length: the body ends when the connection closes.
    write!(stream, "HTTP/1.1 {status}\r\nConnection: close\r\n")?;
    stream.write_all(&response)?;
    stream.write_all(b"\r\n")?;
    std::io::copy(&mut out, &mut stream)?;
    let _ = writer.join();
    let _ = child.wait();
    stream.flush()
}

/// A server that accepts connections and never answers.
pub struct SilentServer {
    pub addr: SocketAddr,
    _listener: TcpListener,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        SilentServer {
            addr: listener.local_addr().unwrap(),
            _listener: listener,
        }
    }
}
