//! The servers the remote-cache tests talk to, on 127.0.0.1 with free
//! ports: `s3s-fs` (an S3 server that checks SigV4), nginx with WebDAV,
//! and a listener that never answers.
//!
//! Both the plugin's own tests (`ktstr-plugin-remote-cache`) and the
//! end-to-end tests (`ktstr-tests`) start them; they are separate crates,
//! so the one copy lives here, a dev-dependency of both. A server whose
//! binary is missing is not an error: `start` prints why and returns
//! `None`, and the test skips. .ci/run installs both.

mod nginx;
mod s3;
mod staller;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub use nginx::Nginx;
pub use s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
pub use staller::Staller;

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    free_port()
}

/// `name` on `PATH`, in `~/.cargo/bin` or in the sbin directories.
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

/// Settings `extra` overrides in `cfg` (both JSON objects).
pub fn merge(cfg: &mut serde_json::Value, extra: serde_json::Value) {
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            cfg[k] = v;
        }
    }
}

/// Wait until `child` listens on `port`; panic, quoting `log`, if it exits
/// first or takes over 20 s.
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
