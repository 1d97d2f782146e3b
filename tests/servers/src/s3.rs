//! `s3s-fs`: an S3 server that checks SigV4 signatures and keeps objects
//! as plain files, so tests can look at (and damage) them on disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{find_program, free_port, merge, wait_for_port};

pub const ACCESS_KEY: &str = "ktstr-test-access";
pub const SECRET_KEY: &str = "ktstr-test-secret-key-123";
pub const BUCKET: &str = "kernels";

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

impl S3Server {
    /// How many objects the bucket holds.
    pub fn objects(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| {
                    if e.file_type().unwrap().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        }
        count(&self.bucket_dir())
    }
}
