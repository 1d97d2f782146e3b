//! nginx with WebDAV (PUT/DELETE/MKCOL + PROPFIND): what `http-cache`
//! talks to.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{find_program, free_port, merge, wait_for_port};

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
