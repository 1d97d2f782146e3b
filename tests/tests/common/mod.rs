//! Helpers shared by the end-to-end tests: find (and build) the `ktstr`
//! binary, set up a fixture kernel tree with its own cache, run `ktstr`.
//!
//! Every test binary includes this module with `mod common;`, and not every
//! binary uses every helper.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Path of the `ktstr` binary under test.
///
/// Cargo only gives `CARGO_BIN_EXE_<name>` to the integration tests of the
/// package that defines the binary, and `cargo test -p ktstr-tests` does not
/// build other packages' binaries. So, unless `KTSTR_TEST_BIN` names a binary
/// to test (e.g. an installed one), the first call runs
/// `$CARGO build -p ktstr --bin ktstr` for the same profile and target
/// directory as this test executable (a no-op when it is up to date) and uses
/// `<target>/<profile>/ktstr`. This works from a clean clone with
/// `cargo test --workspace` and never tests a stale binary.
pub fn ktstr_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("KTSTR_TEST_BIN").filter(|v| !v.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "KTSTR_TEST_BIN={} is not a file",
                bin.display()
            );
            return bin;
        }
        // <target>/<profile>/deps/<test>-<hash>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir
            .parent()
            .expect("<target>/<profile>")
            .to_path_buf();
        let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let cargo = std::env::var_os("CARGO")
            .or_else(|| option_env!("CARGO").map(Into::into))
            .unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let out = Command::new(&cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "ktstr",
                "--bin",
                "ktstr",
                "--profile",
                &profile,
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", Path::new(&cargo).display()));
        assert!(
            out.status.success(),
            "building the ktstr binary failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("ktstr");
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
}

/// Source of the fixture kernel tree.
pub fn fixture_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/kernel")
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Run git in `dir` without the user's or system's configuration.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_SYSTEM", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "ktstr tests")
        .env("GIT_AUTHOR_EMAIL", "tests@ktstr.invalid")
        .env("GIT_AUTHOR_DATE", "2025-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "ktstr tests")
        .env("GIT_COMMITTER_EMAIL", "tests@ktstr.invalid")
        .env("GIT_COMMITTER_DATE", "2025-01-01T00:00:00Z")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `git init` + add everything + commit.
pub fn git_init_commit(dir: &Path) {
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    // gc.auto=0: an 80k-file kernel commit would otherwise start a slow repack.
    git(
        dir,
        &["-c", "gc.auto=0", "commit", "-q", "-m", "fixture kernel"],
    );
}

/// The result of one `ktstr` run.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    fn from_output(args: Vec<String>, out: Output, elapsed: Duration) -> Run {
        Run {
            args,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        }
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Everything a failed assertion should show.
    pub fn describe(&self) -> String {
        format!(
            "ktstr {}\n  exit: {}\n  --- stdout ---\n{}  --- stderr ---\n{}  --------------",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.code(),
            Some(0),
            "expected success\n{}",
            self.describe()
        );
        self.assert_no_panic();
        self
    }

    /// A user-facing failure: exit code 1, an `ktstr: error: ` line, no panic.
    #[track_caller]
    pub fn assert_fails(&self) -> &Self {
        assert_eq!(
            self.code(),
            Some(1),
            "expected exit code 1\n{}",
            self.describe()
        );
        self.assert_no_panic();
        assert!(
            self.stderr.contains("ktstr: error: "),
            "expected an `ktstr: error: ` line\n{}",
            self.describe()
        );
        self
    }

    /// The error comes with a `hint: ` line (for errors with a known fix).
    #[track_caller]
    pub fn assert_hint(&self) -> &Self {
        assert!(
            self.error_text().lines().any(|l| l.contains("hint: ")),
            "expected a `hint: ` line after the error\n{}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn assert_no_panic(&self) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "ktstr panicked\n{}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr should contain {needle:?}\n{}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn assert_stderr_lacks(&self, needle: &str) -> &Self {
        assert!(
            !self.stderr.contains(needle),
            "stderr should not contain {needle:?}\n{}",
            self.describe()
        );
        self
    }

    /// The `ktstr: error: ...` line(s) and what follows them.
    pub fn error_text(&self) -> &str {
        match self.stderr.find("ktstr: error: ") {
            Some(i) => &self.stderr[i..],
            None => "",
        }
    }

    /// `ktstr build` on success: exactly one stdout line, an existing file.
    #[track_caller]
    pub fn image_path(&self) -> PathBuf {
        self.assert_ok();
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stdout must be exactly one line (the image)\n{}",
            self.describe()
        );
        let path = PathBuf::from(lines[0]);
        assert!(
            path.is_absolute(),
            "image path must be absolute\n{}",
            self.describe()
        );
        assert!(
            path.is_file(),
            "image {} does not exist\n{}",
            path.display(),
            self.describe()
        );
        path
    }

    /// stderr lines are `ktstr: ` lines, or indented continuations of one.
    #[track_caller]
    pub fn assert_stderr_prefixed(&self) -> &Self {
        for line in self.stderr.lines() {
            assert!(
                line.is_empty() || line.starts_with("ktstr: ") || line.starts_with([' ', '\t']),
                "stderr line not prefixed with `ktstr: `: {line:?}\n{}",
                self.describe()
            );
        }
        self
    }

    /// The key in a `ktstr: cached <key>` line.
    #[track_caller]
    pub fn cached_key(&self) -> String {
        self.key_after("cached ")
    }

    /// The key after `cache hit `.
    #[track_caller]
    pub fn hit_key(&self) -> String {
        self.key_after("cache hit ")
    }

    #[track_caller]
    fn key_after(&self, marker: &str) -> String {
        let Some(i) = self.stderr.find(marker) else {
            panic!("stderr should contain {marker:?}\n{}", self.describe());
        };
        self.stderr[i + marker.len()..]
            .split(|c: char| c.is_whitespace() || c == ':' || c == ',' || c == '(' || c == ')')
            .next()
            .unwrap()
            .to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }
}

/// Keys look like `6.99.0-local-x86_64-<16 hex>` for the fixture tree.
pub fn is_fixture_key(key: &str) -> bool {
    let Some(hash) = key.strip_prefix("6.99.0-local-x86_64-") else {
        return false;
    };
    hash.len() == 16
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fixture kernel tree, a cache root and a make log, each in one temp dir.
pub struct Fixture {
    pub root: tempfile::TempDir,
    pub tree: PathBuf,
    pub cache: PathBuf,
    pub make_log: PathBuf,
    /// Extra environment for every ktstr run.
    pub env: Vec<(String, String)>,
}

impl Fixture {
    /// A copy of the fixture tree that is not under git.
    pub fn plain() -> Fixture {
        let root = tempfile::Builder::new()
            .prefix("ktstr-e2e-")
            .tempdir()
            .unwrap();
        let tree = root.path().join("linux");
        copy_dir(&fixture_src(), &tree);
        let cache = root.path().join("cache");
        let make_log = root.path().join("make.log");
        Fixture {
            root,
            tree,
            cache,
            make_log,
            env: Vec::new(),
        }
    }

    /// A copy of the fixture tree, committed to a fresh git repository.
    pub fn git() -> Fixture {
        let fx = Fixture::plain();
        git_init_commit(&fx.tree);
        fx
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Fixture {
        self.env.push((key.into(), value.into()));
        self
    }

    /// This machine's `s3-cache` is the test s3s-fs bucket on `port`, with
    /// the servers' credentials and no retries (a failure shows at once).
    pub fn on_s3(self, port: u16) -> Fixture {
        self.with_env("KTSTR_S3_ENDPOINT", &format!("http://127.0.0.1:{port}"))
            .with_env("KTSTR_S3_BUCKET", ktstr_test_servers::BUCKET)
            .with_env("KTSTR_S3_REGION", "us-east-1")
            .with_env("KTSTR_S3_CONNECT_TIMEOUT", "2s")
            .with_env("KTSTR_S3_RETRIES", "0")
            .with_env("AWS_ACCESS_KEY_ID", ktstr_test_servers::ACCESS_KEY)
            .with_env("AWS_SECRET_ACCESS_KEY", ktstr_test_servers::SECRET_KEY)
    }

    /// A file in the temp dir (outside the tree), e.g. for fragments.
    pub fn write_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.root.path().join(name);
        fs::write(&path, content).unwrap();
        path
    }

    /// A `ktstr` command with a private cache, config and make log, and
    /// none of the caller's `KTSTR_*` settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ktstr_bin());
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KTSTR_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("KTSTR_CACHE_DIR", &self.cache)
            .env("KTSTR_FIXTURE_MAKE_LOG", &self.make_log)
            .env("XDG_CONFIG_HOME", self.root.path().join("xdg-config"))
            .env("XDG_DATA_HOME", self.root.path().join("xdg-data"))
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE")
            .current_dir(self.root.path())
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_cmd(self.command(args), args)
    }

    pub fn run_cmd(&self, mut cmd: Command, args: &[&str]) -> Run {
        let start = Instant::now();
        let out = cmd.output().expect("spawn ktstr");
        Run::from_output(
            args.iter().map(|s| s.to_string()).collect(),
            out,
            start.elapsed(),
        )
    }

    /// `ktstr build --kernel <tree> <extra...>`.
    pub fn build(&self, extra: &[&str]) -> Run {
        self.run(&self.build_args(extra))
    }

    pub fn build_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["build", "--kernel", self.tree.to_str().unwrap()];
        args.extend_from_slice(extra);
        args
    }

    /// Start `ktstr build` in the background with piped stdout/stderr.
    pub fn spawn_build(&self, extra: &[&str], env: &[(&str, &str)]) -> Spawned {
        self.spawn(&self.build_args(extra), env)
    }

    /// `ktstr <args...>` in the background, with extra environment.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> Spawned {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Spawned::new(args, cmd.spawn().expect("spawn ktstr"))
    }

    /// One entry per make invocation: its goals (`all` for the default goal).
    pub fn make_log(&self) -> Vec<String> {
        fs::read_to_string(&self.make_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many make invocations built the kernel (the default goal or an
    /// image target).
    pub fn build_count(&self) -> usize {
        self.make_log()
            .iter()
            .filter(|line| is_build_goal(line))
            .count()
    }

    /// Wait until make has been asked to build the kernel `n` times in total
    /// while `child` runs; fails at once if `child` exits first.
    pub fn wait_for_build_start(&self, n: usize, child: &mut Spawned, timeout: Duration) {
        let start = Instant::now();
        while self.build_count() < n {
            if child.child.try_wait().unwrap().is_some() {
                let args = child.args.clone();
                let run = child.collect();
                panic!(
                    "ktstr exited before make built; make log: {:?}\n{}",
                    self.make_log(),
                    Run { args, ..run }.describe()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "make was not asked to build within {timeout:?}; make log: {:?}",
                self.make_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kernels_dir(&self) -> PathBuf {
        self.cache.join("kernels")
    }

    /// `ktstr kernel list --json`, parsed.
    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let run = self.run(&["kernel", "list", "--json"]);
        run.assert_ok();
        match run.json() {
            serde_json::Value::Array(items) => items,
            other => panic!("kernel list --json must print an array, got {other}"),
        }
    }

    /// The cache entry directories that exist on disk.
    pub fn entries_on_disk(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.kernels_dir()) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// The in-tree image a build produces.
    pub fn tree_image(&self) -> PathBuf {
        self.tree.join("arch/x86/boot/bzImage")
    }

    /// Make a tracked file differ from HEAD.
    pub fn dirty_tracked_file(&self) {
        let kconfig = self.tree.join("Kconfig");
        let mut text = fs::read_to_string(&kconfig).unwrap();
        text.push_str("# an uncommitted edit\n");
        fs::write(&kconfig, text).unwrap();
    }
}

pub fn is_build_goal(line: &str) -> bool {
    line.split_whitespace()
        .any(|g| matches!(g, "all" | "bzImage" | "vmlinux"))
}

/// The fixture make's gate (`KTSTR_FIXTURE_BUILD_GATE`): a build waits
/// there until the test opens it, so a test holds a build at make for as
/// long as it needs (until a second ktstr has said it waits) instead of for
/// a guessed number of seconds.
pub struct Gate {
    dir: tempfile::TempDir,
    path: String,
    opened: std::cell::Cell<bool>,
}

impl Gate {
    pub fn new() -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate").display().to_string();
        Gate {
            dir,
            path,
            opened: Default::default(),
        }
    }

    /// The environment a build must have to stop at this gate.
    pub fn env(&self) -> (&'static str, &str) {
        ("KTSTR_FIXTURE_BUILD_GATE", &self.path)
    }

    /// Let the builds at the gate go on.
    pub fn open(&self) {
        self.pass("");
    }

    /// Let the builds at the gate go on and fail.
    pub fn fail(&self) {
        self.pass("fail\n");
    }

    /// The gate appears with its content at once (a rename), so make never
    /// reads it half written.
    fn pass(&self, content: &str) {
        let staged = self.dir.path().join("staged");
        fs::write(&staged, content).unwrap();
        fs::rename(&staged, &self.path).unwrap();
        self.opened.set(true);
    }
}

impl Drop for Gate {
    /// A test that failed before opening its gate must not leave builds
    /// polling for it forever.
    fn drop(&mut self) {
        if !self.opened.get() {
            self.open();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A `ktstr` running in the background.
pub struct Spawned {
    pub args: Vec<String>,
    pub start: Instant,
    pub child: Child,
    /// stderr as read so far, once [`Spawned::wait_for_stderr`] started
    /// reading it (the reader also keeps the pipe from filling up).
    stderr_read: Option<StderrReader>,
}

/// A thread that reads a child's stderr into `seen` as it comes.
struct StderrReader {
    seen: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Spawned {
    /// `child`, spawned with `args` and piped stdout and stderr.
    pub fn new(args: Vec<String>, child: Child) -> Spawned {
        Spawned {
            args,
            start: Instant::now(),
            child,
            stderr_read: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for exit, at most `timeout` from now.
    pub fn wait(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return self.collect();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let run = self.collect();
                panic!(
                    "ktstr did not finish within {timeout:?}\n{}",
                    run.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until ktstr has written `needle` to stderr: the way to know a
    /// second process has reached a lock or lease, rather than sleeping and
    /// hoping it has. Fails if ktstr exits first or `timeout` passes.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let seen = self.stderr_reader().clone();
        let deadline = Instant::now() + timeout;
        let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        while !text().contains(needle) {
            let exited = self.child.try_wait().unwrap().is_some();
            if exited || Instant::now() > deadline {
                // What the reader has not appended yet is in the pipe still.
                std::thread::sleep(Duration::from_millis(100));
                if text().contains(needle) {
                    return;
                }
                let _ = self.child.kill();
                let run = self.collect();
                panic!(
                    "ktstr {} before saying {needle:?} (waited {timeout:?})\n{}",
                    if exited { "exited" } else { "did not finish" },
                    run.describe()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_reader(&mut self) -> &Arc<Mutex<Vec<u8>>> {
        if self.stderr_read.is_none() {
            let mut pipe = self.child.stderr.take().expect("stderr is piped");
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = seen.clone();
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            self.stderr_read = Some(StderrReader {
                seen,
                thread: reader,
            });
        }
        &self.stderr_read.as_ref().unwrap().seen
    }

    /// Wait for exit and read the output.
    fn collect(&mut self) -> Run {
        let status = self.child.wait().unwrap();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_end(&mut stdout).unwrap();
        }
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_end(&mut stderr).unwrap();
        }
        if let Some(reader) = self.stderr_read.take() {
            reader.thread.join().unwrap();
            stderr = std::mem::take(&mut *reader.seen.lock().unwrap());
        }
        let elapsed = self.start.elapsed();
        Run::from_output(
            self.args.clone(),
            Output {
                status,
                stdout,
                stderr,
            },
            elapsed,
        )
    }
}

/// Section names of an ELF file, from `readelf -S -W`.
pub fn elf_sections(path: &Path) -> Vec<String> {
    let out = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(path)
        .output()
        .expect("run readelf (binutils)");
    assert!(
        out.status.success(),
        "readelf -S {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "  [Nr] Name  Type ..." -> the token after "]"
            let rest = line.trim_start().strip_prefix('[')?;
            let (_, rest) = rest.split_once(']')?;
            rest.split_whitespace().next().map(str::to_string)
        })
        .filter(|name| name != "Name")
        .collect()
}

/// The `Machine:` line of an ELF header, from `readelf -h`.
pub fn elf_machine(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-h")
        .arg(path)
        .output()
        .expect("run readelf (binutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Machine:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[track_caller]
pub fn assert_stripped_vmlinux(path: &Path) {
    let sections = elf_sections(path);
    assert!(
        sections.iter().any(|s| s == ".BTF"),
        "{}: no .BTF section: {sections:?}",
        path.display()
    );
    assert!(
        sections.iter().any(|s| s == ".symtab"),
        "{}: no .symtab: {sections:?}",
        path.display()
    );
    assert!(
        !sections.iter().any(|s| s.starts_with(".debug_")),
        "{}: debug sections left: {sections:?}",
        path.display()
    );
}

/// Canonical form of a path for comparisons.
pub fn canon(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()))
}

/// A directory of symlinks to every program on `$PATH` except `without`.
pub fn path_without(dir: &Path, without: &[&str]) -> PathBuf {
    let bin = dir.join("bin-without");
    fs::create_dir_all(&bin).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for entry_dir in std::env::split_paths(&path) {
        let Ok(rd) = fs::read_dir(&entry_dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            if without.iter().any(|w| OsStr::new(w) == name) {
                continue;
            }
            let link = bin.join(&name);
            if !link.exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), &link);
            }
        }
    }
    bin
}

/// The symbols every ktstr profile requires (validated after each build).
pub const REQUIRED_SYMBOLS: [&str; 7] = [
    "BPF",
    "BPF_SYSCALL",
    "BPF_JIT",
    "DEBUG_INFO_BTF",
    "SCHED_CLASS_EXT",
    "KALLSYMS",
    "SMP",
];

/// Every required symbol is `=y` in `config` (a cached entry's `config`).
pub fn assert_required_symbols(config: &str) {
    for sym in REQUIRED_SYMBOLS {
        assert!(
            config.lines().any(|l| l == format!("CONFIG_{sym}=y")),
            "cached config lacks CONFIG_{sym}=y:\n{config}"
        );
    }
}

impl Fixture {
    /// No entry on disk and none listed.
    pub fn assert_nothing_cached(&self) {
        assert!(
            self.entries_on_disk().is_empty(),
            "{:?}",
            self.entries_on_disk()
        );
        assert!(self.list_json().is_empty());
    }
}

/// kernel.org's file stem for a release: `linux-6.12` for 6.12.0.
pub fn stem(version: &str) -> String {
    format!("linux-{}", version.strip_suffix(".0").unwrap_or(version))
}

/// `<stem>.tar.xz` of the fixture tree, its Makefile set to `version`.
/// The fixture kernel as `linux-<version>.tar.xz` in `dir`: the same bytes
/// (so the same key) for every caller, e.g. every "machine" of a fleet test.
pub fn fixture_tarball(dir: &Path, version: &str) -> PathBuf {
    let work = dir.join(format!("work-{version}"));
    fs::create_dir_all(&work).unwrap();
    make_tarball(&work, version, dir)
}

pub fn make_tarball(work: &Path, version: &str, out_dir: &Path) -> PathBuf {
    let [v, p, s]: [&str; 3] = version
        .split('.')
        .collect::<Vec<_>>()
        .try_into()
        .expect("X.Y.Z");
    let top = work.join(stem(version));
    copy_dir(&fixture_src(), &top);
    let makefile = fs::read_to_string(top.join("Makefile")).unwrap();
    let makefile = makefile
        .replacen("VERSION = 6\n", &format!("VERSION = {v}\n"), 1)
        .replacen("PATCHLEVEL = 99\n", &format!("PATCHLEVEL = {p}\n"), 1)
        .replacen("SUBLEVEL = 0\n", &format!("SUBLEVEL = {s}\n"), 1);
    std::fs::write(top.join("Makefile"), makefile).unwrap();
    std::fs::create_dir_all(out_dir).unwrap();
    let file = out_dir.join(format!("{}.tar.xz", stem(version)));
    let status = Command::new("tar")
        .arg("-cJf")
        .arg(&file)
        .arg("-C")
        .arg(work)
        .arg(stem(version))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(&top).unwrap();
    file
}

/// Live processes (zombies aside) whose working directory is in `tree`:
/// the make, shells and compilers of a build there. `(pid, comm, cmdline)`.
pub fn processes_in(tree: &Path) -> Vec<(u32, String, String)> {
    let tree = canon(tree);
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(&tree) {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) S ...": the state follows the last ')'.
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start());
        if state.is_none_or(|s| s.starts_with('Z') || s.starts_with('X')) {
            continue;
        }
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        found.push((pid, comm.trim().to_string(), cmdline));
    }
    found
}

/// Wait until nothing runs in `tree`; panics naming what still does.
#[track_caller]
pub fn assert_nothing_runs_in(tree: &Path, within: Duration, context: &str) {
    let start = Instant::now();
    loop {
        let left = processes_in(tree);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "processes of the killed build still run in {} after {within:?}: {left:?}\n{context}",
            tree.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tree's build lock can be taken: no process of any build holds it.
#[track_caller]
pub fn assert_tree_lock_free(cache: &Path, tree: &Path) {
    let path = ktstr_sdk::paths::source_lock(cache, &canon(tree));
    let lock = ktstr_sdk::lock::try_lock(&path, ktstr_sdk::lock::LockMode::Exclusive).unwrap();
    assert!(
        lock.is_some(),
        "the tree lock {} is still held: {:?}",
        path.display(),
        ktstr_sdk::lock::holders(&path)
    );
}

/// Where every scaffold test builds (`<target>/scaffold`): dependencies
/// compile once for all of them.
pub fn scaffold_target() -> PathBuf {
    ktstr_bin()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("scaffold")
}

/// `ktstr plugins new NAME --kind KIND` under the fixture's root, against
/// this workspace's SDK and with its lock file, so it builds offline.
pub fn scaffold(fx: &Fixture, name: &str, kind: &str) -> PathBuf {
    let dir = fx.root.path().join(name);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sdk = workspace.join("sdk");
    fx.run(&[
        "plugins",
        "new",
        name,
        "--kind",
        kind,
        "--sdk-path",
        sdk.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ])
    .assert_ok();
    fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    dir
}

/// `cargo ARGS --offline` in a scaffolded crate, into [`scaffold_target`].
pub fn cargo_in_scaffold(dir: &Path, args: &[&str]) -> Output {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target())
        // The scaffold's own tests (conformance suites) take CPU and cache
        // locks: in a directory of their own, not the machine's, so a build
        // running on this host cannot make them wait or fail.
        .env("KTSTR_CACHE_DIR", dir.join(".ktstr-test-cache"))
        .env("KTSTR_LOCK_DIR", dir.join(".ktstr-test-locks"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A finished command's stdout then stderr, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
