//! distccd and icecream (scheduler + iceccd) on loopback, started by the
//! wrapper tests on free ports and killed with their process groups on
//! drop, and what their own logs say about the jobs they ran.
//!
//! Run as root, both daemons drop to their own users (`distccd`,
//! `icecc`), so their directory is world-readable and the log directory
//! world-writable. iceccd's client socket is private to the test
//! (`ICECC_TEST_SOCKET`), so a system iceccd is never used by mistake.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `program` is on PATH.
pub use ktstr_sdk::testing::missing;

/// A port nobody listens on now (and, with `pair`, the next one too: the
/// icecream scheduler takes two).
pub fn free_port(pair: bool) -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !pair
            || (port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok())
        {
            return port;
        }
    }
}

/// A directory the daemons' users can read, with a world-writable `logs/`.
pub fn daemon_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ktstr-wrap-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let logs = dir.path().join("logs");
    fs::create_dir(&logs).unwrap();
    fs::set_permissions(&logs, fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// A daemon in its own process group, killed with it on drop.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        Daemon {
            child: cmd.spawn().expect("spawn daemon"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Wait until `file` contains `needle`.
fn wait_for(file: &Path, needle: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if fs::read_to_string(file).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// distccd on 127.0.0.1, allowing only loopback clients.
pub struct Distccd {
    pub port: u16,
    pub log: PathBuf,
    /// `DISTCC_DIR` for the clients (distcc keeps its locks there).
    pub client_dir: PathBuf,
    _daemon: Daemon,
}

impl Distccd {
    /// Start one; `path` is the daemon's PATH (where it finds compilers).
    pub fn start(dir: &Path, path: Option<&Path>) -> Distccd {
        let port = free_port(false);
        let log = dir.join("logs").join(format!("distccd-{port}.log"));
        let mut cmd = Command::new("distccd");
        cmd.args(["--no-detach", "--daemon", "--allow", "127.0.0.1"])
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(["--jobs", "2", "--log-level", "info", "--log-file"])
            .arg(&log);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let daemon = Daemon::spawn(&mut cmd);
        assert!(
            wait_for(&log, "listening on", Duration::from_secs(10)),
            "distccd did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        let client_dir = dir.join(format!("distcc-client-{port}"));
        fs::create_dir_all(&client_dir).unwrap();
        Distccd {
            port,
            log,
            client_dir,
            _daemon: daemon,
        }
    }

    /// `DISTCC_HOSTS` naming this daemon with `slots` jobs.
    pub fn hosts(&self, slots: usize) -> String {
        format!("127.0.0.1:{}/{slots}", self.port)
    }

    /// The environment a client needs.
    pub fn env(&self, slots: usize) -> Vec<(String, String)> {
        vec![
            ("DISTCC_HOSTS".into(), self.hosts(slots)),
            (
                "DISTCC_DIR".into(),
                self.client_dir.to_str().unwrap().into(),
            ),
        ]
    }

    /// Compile jobs the daemon finished, per its log: the source names.
    pub fn compiled(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" COMPILE_OK "))
            .filter_map(|l| l.rsplit(' ').next().map(str::to_string))
            .collect()
    }

    /// [`Distccd::compiled`] once `source` has been compiled `n` times, or
    /// after 10 s: distccd logs a job after it has sent the object back, so
    /// the client can finish before the log says so.
    pub fn compiled_once_logged(&self, source: &str, n: usize) -> Vec<String> {
        logged(|| self.compiled(), |jobs| count(jobs, source) >= n)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn count(jobs: &[String], source: &str) -> usize {
    jobs.iter().filter(|j| j.contains(source)).count()
}

/// `read()` once `enough` says so, or what it reads after 10 s.
fn logged(read: impl Fn() -> Vec<String>, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = read();
        if enough(&jobs) || Instant::now() > deadline {
            return jobs;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// icecc-scheduler and one iceccd that has logged in to it.
pub struct Icecream {
    /// `ICECC_TEST_SOCKET` for the clients.
    pub socket: PathBuf,
    pub scheduler_log: PathBuf,
    pub daemon_log: PathBuf,
    _iceccd: Daemon,
    _scheduler: Daemon,
}

impl Icecream {
    pub fn start(dir: &Path) -> Icecream {
        let port = free_port(true);
        let logs = dir.join("logs");
        let scheduler_log = logs.join("scheduler.log");
        let daemon_log = logs.join("iceccd.log");
        let socket = logs.join("iceccd.sock");
        let scheduler = Daemon::spawn(
            Command::new("icecc-scheduler")
                .args(["-p", &port.to_string(), "-vvv", "-l"])
                .arg(&scheduler_log),
        );
        let envs = logs.join("envs");
        let iceccd = Daemon::spawn(
            Command::new("iceccd")
                .env("ICECC_TEST_SOCKET", &socket)
                .args(["-s", &format!("127.0.0.1:{port}")])
                .args(["-p", &free_port(false).to_string()])
                .args(["-N", "ktstr-test", "-vvv", "-b"])
                .arg(&envs)
                .arg("-l")
                .arg(&daemon_log),
        );
        assert!(
            wait_for(
                &daemon_log,
                "Connected to scheduler",
                Duration::from_secs(60)
            ),
            "iceccd did not log in to the scheduler on port {port}:\n{}",
            fs::read_to_string(&daemon_log).unwrap_or_default()
        );
        Icecream {
            socket,
            scheduler_log,
            daemon_log,
            _iceccd: iceccd,
            _scheduler: scheduler,
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "ICECC_TEST_SOCKET".into(),
            self.socket.to_str().unwrap().into(),
        )]
    }

    /// Jobs the scheduler placed (its `NEW` lines), per its log.
    pub fn jobs(&self) -> Vec<String> {
        fs::read_to_string(&self.scheduler_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(": NEW "))
            .map(str::to_string)
            .collect()
    }

    /// [`Icecream::jobs`] once `source` has been placed `n` times, or after
    /// 10 s (the scheduler's log is written on its own time).
    pub fn jobs_once_logged(&self, source: &str, n: usize) -> Vec<String> {
        logged(|| self.jobs(), |jobs| count(jobs, source) >= n)
    }
}

/// `ccache --print-stats` for `dir`, as (counter, value).
pub fn ccache_stats(dir: &Path) -> Vec<(String, u64)> {
    let out = Command::new("ccache")
        .arg("--print-stats")
        .env("CCACHE_DIR", dir)
        .output()
        .expect("run ccache");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// One counter of [`ccache_stats`] (0 when absent).
pub fn ccache_stat(dir: &Path, counter: &str) -> u64 {
    ccache_stats(dir)
        .into_iter()
        .find(|(k, _)| k == counter)
        .map_or(0, |(_, v)| v)
}
