//! Real servers for the remote-cache tests, on 127.0.0.1 with free ports:
//! `s3s-fs` (an S3 server that checks SigV4) and nginx with WebDAV. Each
//! test skips with a printed reason when its server binary is missing;
//! .ci/run installs both.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ktstr_sdk::cache::{Artifacts, CacheKey, Metadata, SourceInfo};

pub const ACCESS_KEY: &str = "ktstr-test-access";
pub const SECRET_KEY: &str = "ktstr-test-secret-key-123";
pub const BUCKET: &str = "kernels";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on port {port} within 20s");
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // cargo install puts binaries here, which may not be on a CI PATH.
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A running s3s-fs; killed on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl S3Server {
    /// `None` (after printing why) when s3s-fs is not installed.
    pub fn start() -> Option<Self> {
        let Some(bin) = find_program("s3s-fs") else {
            ktstr_sdk::testing::skip(
                "s3s-fs not found on PATH; install it with \
                 `cargo install s3s-fs@0.14.1 --features binary --locked`",
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let log = dir.path().join("s3s.log");
        let port = free_port();
        let mut child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("s3s.err")).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "s3s-fs", &log);
        Some(Self { child, port, dir })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket's directory on the server's disk.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("root").join(BUCKET)
    }

    /// A credentials file with profiles `good` and `bad` (wrong secret).
    pub fn credentials_file(&self) -> PathBuf {
        let path = self.dir.path().join("credentials");
        std::fs::write(
            &path,
            format!(
                "[good]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n\n\
                 [bad]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = not-the-secret\n"
            ),
        )
        .unwrap();
        path
    }

    /// Settings for a writable tier; `extra` overrides.
    pub fn config(&self, scratch: &Path, extra: serde_json::Value) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "endpoint": self.endpoint(),
            "bucket": BUCKET,
            "prefix": "ci/ktstr",
            "region": "us-east-1",
            "credentials_file": self.credentials_file(),
            "profile": "good",
            "connect_timeout": "2s",
            "read_timeout": "5s",
            "request_timeout": "30s",
            "retries": 1,
            "scratch_dir": scratch,
        });
        merge(&mut cfg, extra);
        cfg
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn merge(cfg: &mut serde_json::Value, extra: serde_json::Value) {
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            cfg[k] = v;
        }
    }
}

/// A running nginx with WebDAV (PUT/DELETE/MKCOL + PROPFIND); stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

const DAV_EXT: &str = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so";

impl Nginx {
    pub fn start() -> Option<Self> {
        let Some(bin) = find_program("nginx") else {
            ktstr_sdk::testing::skip(
                "nginx not found; install it with `apt-get install -y nginx libnginx-mod-http-dav-ext`",
            );
            return None;
        };
        if !Path::new(DAV_EXT).exists() {
            ktstr_sdk::testing::skip(format!(
                "{DAV_EXT} not found; install it with `apt-get install -y libnginx-mod-http-dav-ext`"
            ));
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data");
        std::fs::create_dir_all(data.join("cache")).unwrap();
        let port = free_port();
        let user = if nix_is_root() { "user root;" } else { "" };
        let conf = format!(
            r#"{user}
load_module {DAV_EXT};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {data};
        client_max_body_size 0;
        location / {{
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"#,
            d = d.display(),
            data = data.display(),
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = d.join("error.log");
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "nginx", &log);
        Some(Self { child, port, dir })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cache", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data/cache")
    }

    pub fn config(&self, scratch: &Path, extra: serde_json::Value) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "url": self.url(),
            "connect_timeout": "2s",
            "read_timeout": "5s",
            "request_timeout": "30s",
            "retries": 1,
            "scratch_dir": scratch,
        });
        merge(&mut cfg, extra);
        cfg
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    // Effective uid from /proc, without a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A listener that accepts connections and never answers.
pub struct Staller {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Staller {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
                // Read (and ignore) requests so the client's send completes.
                for s in &mut held {
                    s.set_nonblocking(true).ok();
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Staller {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    free_port()
}

pub fn key(s: &str) -> CacheKey {
    CacheKey::parse(s).unwrap()
}

/// Deterministic, incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Files of a fake build in `dir`: an image of `image_len` bytes.
pub fn build_output(dir: &Path, image_len: usize, seed: u64) -> Artifacts {
    std::fs::create_dir_all(dir).unwrap();
    let image = dir.join("bzImage");
    let vmlinux = dir.join("vmlinux-stripped");
    let config = dir.join(".config");
    std::fs::write(&image, noise(image_len, seed)).unwrap();
    let mut v = b"\x7fELF".to_vec();
    v.extend(std::iter::repeat_n(b"symbols ".to_vec(), 4096).flatten());
    std::fs::write(&vmlinux, v).unwrap();
    std::fs::write(&config, format!("CONFIG_SEED={seed}\nCONFIG_X=y\n")).unwrap();
    let log = dir.join("build.log.zst");
    std::fs::write(&log, format!("(compressed build log {seed})")).unwrap();
    Artifacts {
        image,
        vmlinux: Some(vmlinux),
        config,
        log: Some(log),
    }
}

pub fn metadata(key: &CacheKey, built_at: &str) -> Metadata {
    Metadata {
        schema: Metadata::SCHEMA,
        key: key.clone(),
        source: SourceInfo {
            kind: "local".into(),
            identity: "0123456789abcdef0123456789abcdef01234567".into(),
            path: Some("/home/alice/src/linux".into()),
        },
        version: Some("6.12.3".into()),
        arch: "x86_64".into(),
        image_name: "bzImage".into(),
        profile: "tiny".into(),
        config_sha256: "0".repeat(64),
        fragments: vec![],
        builder: "kbuild 0.1.0".into(),
        toolchain: "gcc 12".into(),
        built_at: built_at.into(),
        components: vec![],
        artifacts: BTreeMap::new(),
        strip: None,
        origin: None,
        kernelrelease: None,
        build: None,
    }
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Find the single file under `dir` whose path ends with `suffix`.
pub fn find_file(dir: &Path, suffix: &str) -> PathBuf {
    let hits: Vec<String> = tree(dir)
        .into_iter()
        .filter(|p| p.ends_with(suffix))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "files ending in {suffix}: {hits:?} in {:?}",
        tree(dir)
    );
    dir.join(&hits[0])
}
