//! `--kernel` versions, ranges and tarballs from the command line, against a
//! kernel.org-shaped mirror made of fixture kernels (a `file://` directory,
//! and a loopback HTTP server for URLs).
//!
//! The plugin's own tests cover the download and unpacking faults; these
//! check what the host adds: a keyable spec is a hit with the mirror gone,
//! ranges go on past failures, scratch trees go away unless kept.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Fixture, make_tarball, stem};

/// Versions the fixture mirror offers.
const RELEASES: &[&str] = &["6.98.3", "6.99.0", "6.99.1", "6.99.2"];

fn sha256(path: &Path) -> String {
    ktstr_sdk::hash::sha256_file(path).unwrap().0
}

/// `<dir>/mirror/v6.x/{linux-*.tar.xz, sha256sums.asc}` and
/// `<dir>/releases.json`; `corrupt` versions get a wrong digest.
struct Mirror {
    root: PathBuf,
    releases: PathBuf,
}

impl Mirror {
    fn new(dir: &Path, corrupt: &[&str]) -> Mirror {
        let root = dir.join("mirror");
        let series = root.join("v6.x");
        let work = dir.join("mirror-work");
        std::fs::create_dir_all(&work).unwrap();
        let mut sums = String::from("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n");
        for version in RELEASES {
            let file = make_tarball(&work, version, &series);
            let digest = if corrupt.contains(version) {
                "0".repeat(64)
            } else {
                sha256(&file)
            };
            sums.push_str(&format!("{digest}  {}.tar.xz\n", stem(version)));
        }
        sums.push_str(
            "-----BEGIN PGP SIGNATURE-----\n\nnot checked\n-----END PGP SIGNATURE-----\n",
        );
        std::fs::write(series.join("sha256sums.asc"), sums).unwrap();
        let releases = dir.join("releases.json");
        let entries: Vec<String> = ["6.99.2", "6.98.3"]
            .iter()
            .map(|v| {
                format!(
                    r#"{{"iseol": false, "version": "{v}", "moniker": "stable", "source": "file://{}/v6.x/linux-{v}.tar.xz"}}"#,
                    root.display()
                )
            })
            .collect();
        std::fs::write(
            &releases,
            format!(
                r#"{{"latest_stable": {{"version": "6.99.2"}}, "releases": [{}]}}"#,
                entries.join(", ")
            ),
        )
        .unwrap();
        Mirror { root, releases }
    }

    /// A fixture whose ktstr uses this mirror.
    fn fixture(&self, fx: Fixture) -> Fixture {
        fx.with_env(
            "KTSTR_KERNEL_MIRROR",
            &format!("file://{}", self.root.display()),
        )
        .with_env(
            "KTSTR_RELEASES_URL",
            &format!("file://{}", self.releases.display()),
        )
    }
}

fn scratch_entries(fx: &Fixture) -> Vec<String> {
    std::fs::read_dir(fx.cache.join("scratch"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

fn build(fx: &Fixture, spec: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["build", "--kernel", spec];
    args.extend_from_slice(extra);
    fx.run(&args)
}

#[test]
fn exact_version_builds_then_hits_without_the_mirror() {
    let fx = Fixture::plain();
    let mirror = Mirror::new(fx.root.path(), &[]);
    let fx = mirror.fixture(fx);
    let first = build(&fx, "6.99.1", &[]);
    first.image_path();
    let key = first.cached_key();
    assert!(key.starts_with("6.99.1-tarball-x86_64-"), "{key}");
    assert_eq!(fx.build_count(), 1);
    assert!(
        scratch_entries(&fx).is_empty(),
        "{:?}",
        scratch_entries(&fx)
    );

    // The key is known from the spec alone: no download, no mirror needed.
    std::fs::remove_dir_all(&mirror.root).unwrap();
    let second = build(&fx, "6.99.1", &[]);
    assert_eq!(second.hit_key(), key, "{}", second.describe());
    assert_eq!(fx.build_count(), 1);
}

#[test]
fn a_series_resolves_to_its_newest_release() {
    let fx = Fixture::plain();
    let fx = Mirror::new(fx.root.path(), &[]).fixture(fx);
    let run = build(&fx, "6.99", &[]);
    run.image_path();
    assert!(
        run.cached_key().starts_with("6.99.2-tarball-"),
        "{}",
        run.describe()
    );
}

#[test]
fn a_range_builds_every_member_and_goes_on_past_failures() {
    let fx = Fixture::plain();
    let fx = Mirror::new(fx.root.path(), &["6.99.1"]).fixture(fx);
    let run = build(&fx, "6.99.0..6.99.2", &[]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    run.assert_stderr_has("[1/3] 6.99.0")
        .assert_stderr_has("[3/3] 6.99.2")
        .assert_stderr_has("sha256 mismatch")
        .assert_stderr_has("1 of 3 kernels of 6.99.0..6.99.2 failed: 6.99.1");
    let built: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(built.len(), 2, "{}", run.describe());
    assert!(built[0].starts_with("6.99.0 ") && built[1].starts_with("6.99.2 "));
    assert!(
        scratch_entries(&fx).is_empty(),
        "{:?}",
        scratch_entries(&fx)
    );

    // Both good members are now hits.
    let again = build(&fx, "6.99.0..6.99.2", &["--skip-sha256"]);
    again
        .assert_stderr_has("cache hit 6.99.0-tarball")
        .assert_stderr_has("cache hit 6.99.2-tarball");

    // --json: one array, a failed member in its place, exit 1 as without.
    let json = build(&fx, "6.99.0..6.99.2", &["--json"]);
    assert_eq!(json.code(), Some(1), "{}", json.describe());
    let rows = json.json();
    let outcomes: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["hit", "failed", "hit"], "{}", json.describe());
    let failed: Vec<&String> = rows[1].as_object().unwrap().keys().collect();
    assert_eq!(failed, ["error", "kernel", "outcome"], "exact field set");
    assert_eq!(rows[1]["kernel"], "6.99.1");
    assert!(rows[1]["error"].as_str().unwrap().contains("sha256"));
}

#[test]
fn a_tarball_path_builds_and_keep_source_keeps_the_tree() {
    let fx = Fixture::plain();
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = make_tarball(&work, "6.99.1", fx.root.path());
    let run = build(&fx, "./linux-6.99.1.tar.xz", &["--keep-source"]);
    run.image_path();
    run.assert_stderr_has("kept the source tree in");
    let mut kept = scratch_entries(&fx);
    kept.sort();
    assert_eq!(kept.len(), 2, "the tree and its marker: {kept:?}");
    assert_eq!(
        kept[1],
        format!("{}.kept", kept[0]),
        "--keep-source marks the tree so no sweep removes it"
    );
    assert!(
        fx.cache
            .join("scratch")
            .join(&kept[0])
            .join("linux-6.99.1/Makefile")
            .is_file()
            || fx
                .cache
                .join("scratch")
                .join(&kept[0])
                .join("Makefile")
                .is_file()
    );
    // A named local tarball is hashed during resolve: the second run hits.
    let again = build(&fx, file.to_str().unwrap(), &[]);
    assert_eq!(again.hit_key(), run.cached_key(), "{}", again.describe());
    // A later build sweeps what dead processes left, but not a kept tree.
    build(&fx, file.to_str().unwrap(), &["--force"]).image_path();
    assert!(
        fx.cache.join("scratch").join(&kept[0]).is_dir(),
        "{:?}",
        scratch_entries(&fx)
    );
}

/// A python3 HTTP server on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// `python3 -m http.server` serving `dir`.
    fn start(dir: &Path) -> Option<Server> {
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .current_dir(dir);
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        Self::spawn(cmd, |line| line.split("port ").nth(1)?.split(' ').next())
    }

    /// Start `cmd` and read its port from the first line it prints.
    fn spawn(mut cmd: Command, port: fn(&str) -> Option<&str>) -> Option<Server> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .ok()?;
        // Killed on drop even when the line is not what was expected.
        let mut server = Server { child, port: 0 };
        server.port = port(line.trim())?.parse().ok()?;
        Some(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_url_with_a_digest_is_a_hit_with_the_server_gone() {
    let fx = Fixture::plain();
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let served = fx.root.path().join("www");
    let file = make_tarball(&work, "6.99.3", &served);
    let Some(server) = Server::start(&served) else {
        ktstr_sdk::testing::skip("python3 http.server did not start");
        return;
    };
    let url = format!(
        "http://127.0.0.1:{}/linux-6.99.3.tar.xz#sha256={}",
        server.port,
        sha256(&file)
    );
    let first = build(&fx, &url, &[]);
    first.image_path();
    drop(server);
    let second = build(&fx, &url, &[]);
    assert_eq!(
        second.hit_key(),
        first.cached_key(),
        "{}",
        second.describe()
    );

    // A wrong digest is refused, nothing is cached, nothing is left behind.
    let bad = format!(
        "{}#sha256={}",
        url.split('#').next().unwrap(),
        "1".repeat(64)
    );
    let server = Server::start(&served).unwrap();
    let bad = bad.replace(
        &url.split('/').nth(2).unwrap().to_string(),
        &format!("127.0.0.1:{}", server.port),
    );
    let run = build(&fx, &bad, &[]);
    run.assert_fails().assert_stderr_has("sha256 mismatch");
    assert!(
        scratch_entries(&fx).is_empty(),
        "{:?}",
        scratch_entries(&fx)
    );
}

#[test]
fn an_unclaimed_spec_lists_the_accepted_forms() {
    let fx = Fixture::plain();
    let run = build(&fx, "ftp://example/linux.tar.xz", &[]);
    run.assert_fails()
        .assert_stderr_has("not a kernel spec ktstr understands")
        .assert_stderr_has("6.12.3")
        .assert_stderr_has("git+");
}

/// A git remote holding the fixture kernel on `main`, tagged `v6.99.0`.
fn git_remote(fx: &Fixture) -> (PathBuf, String) {
    let repo = fx.root.path().join("remote");
    common::copy_dir(&common::fixture_src(), &repo);
    common::git_init_commit(&repo);
    common::git(&repo, &["tag", "v6.99.0"]);
    let url = format!("git+file://{}", repo.display());
    (repo, url)
}

#[test]
fn git_refs_build_once_per_commit() {
    let fx = Fixture::plain();
    let (repo, url) = git_remote(&fx);
    let head_before = common::git(&repo, &["rev-parse", "HEAD"]);

    let first = build(&fx, &format!("{url}#branch=main"), &[]);
    first.image_path();
    let key = first.cached_key();
    assert!(key.starts_with("6.99.0-git-x86_64-"), "{key}");
    assert!(
        scratch_entries(&fx).is_empty(),
        "{:?}",
        scratch_entries(&fx)
    );

    // The same commit by tag, by sha and by the remote's HEAD: one key, no build.
    let sha = head_before.trim();
    for spec in [
        format!("{url}#branch=main"),
        format!("{url}#tag=v6.99.0"),
        format!("{url}#sha={sha}"),
        url.clone(),
    ] {
        let run = build(&fx, &spec, &[]);
        assert_eq!(run.hit_key(), key, "{spec}\n{}", run.describe());
    }
    assert_eq!(fx.build_count(), 1);

    // The branch moves: a new key and a build; the old tag still hits.
    std::fs::write(repo.join("NEWS"), "moved\n").unwrap();
    common::git(&repo, &["add", "NEWS"]);
    common::git(&repo, &["-c", "gc.auto=0", "commit", "-q", "-m", "move"]);
    let moved = build(&fx, &format!("{url}#branch=main"), &[]);
    moved.image_path();
    assert_ne!(moved.cached_key(), key);
    assert_eq!(fx.build_count(), 2);
    assert_eq!(
        build(&fx, &format!("{url}#tag=v6.99.0"), &[]).hit_key(),
        key
    );

    // The user's repository is never touched.
    assert_eq!(common::git(&repo, &["status", "--porcelain"]), "");
    assert_ne!(common::git(&repo, &["rev-parse", "HEAD"]), head_before);
    assert_eq!(
        common::git(&repo, &["rev-parse", "v6.99.0"]).trim(),
        head_before.trim()
    );
}

#[test]
fn git_unknown_ref_names_it() {
    let fx = Fixture::plain();
    let (_repo, url) = git_remote(&fx);
    let run = build(&fx, &format!("{url}#tag=v9.9"), &[]);
    run.assert_fails().assert_stderr_has("v9.9").assert_hint();
    assert_eq!(fx.build_count(), 0);
    assert!(
        scratch_entries(&fx).is_empty(),
        "{:?}",
        scratch_entries(&fx)
    );
}

/// Debian's `linux-source-6.12.tar.xz` has no version in its name: the first
/// run unpacks it to learn the version, later runs hash it and hit.
#[test]
fn an_unversioned_tarball_is_unpacked_once() {
    let fx = Fixture::plain();
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let made = make_tarball(&work, "6.99.4", &work);
    let file = fx.root.path().join("linux-source-6.99.tar.xz");
    std::fs::rename(made, &file).unwrap();
    let spec = file.to_str().unwrap();
    let first = build(&fx, spec, &[]);
    first.image_path();
    first.assert_stderr_has("unpacked");
    let key = first.cached_key();
    assert!(key.starts_with("6.99.4-tarball-"), "{key}");
    let second = build(&fx, spec, &[]);
    assert_eq!(second.hit_key(), key, "{}", second.describe());
    second.assert_stderr_lacks("unpacked");
}

/// A python3 HTTP server for one directory that sends a strong `ETag` (the
/// file's sha256) and `Last-Modified`, answers `If-None-Match` with 304
/// unless `ignore_conditions`, and logs `STATUS PATH` per request.
struct ValidatingServer {
    server: Server,
    log: PathBuf,
}

const VALIDATING_SERVER: &str = r#"
import hashlib, http.server, os, sys
root, log, ignore = sys.argv[1], sys.argv[2], sys.argv[3] == "ignore"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = os.path.join(root, self.path.lstrip("/"))
        try:
            data = open(path, "rb").read()
        except OSError:
            self.note(404); self.send_error(404); return
        etag = '"%s"' % hashlib.sha256(data).hexdigest()
        # Logged before answering, so the log is complete when the client has its answer.
        if not ignore and self.headers.get("If-None-Match") == etag:
            self.note(304)
            self.send_response(304); self.send_header("ETag", etag); self.end_headers()
            return
        self.note(200)
        self.send_response(200)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", self.date_time_string(int(os.stat(path).st_mtime)))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass
    def note(self, status):
        with open(log, "a") as f:
            f.write("%d %s\n" % (status, self.path))
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl ValidatingServer {
    fn start(dir: &Path, ignore_conditions: bool) -> Option<ValidatingServer> {
        let log = dir.with_extension("log");
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", VALIDATING_SERVER])
            .arg(dir)
            .arg(&log)
            .arg(if ignore_conditions {
                "ignore"
            } else {
                "honour"
            });
        let server = Server::spawn(cmd, |line| Some(line))?;
        Some(ValidatingServer { server, log })
    }

    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.server.port)
    }

    /// The statuses answered so far, in order.
    fn statuses(&self) -> Vec<u16> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    }
}

/// A URL without `#sha256=`: the first run downloads and builds; the second
/// asks with `If-None-Match`, gets 304 and hits without a transfer; a
/// changed file (new ETag) is downloaded again and gets a new key.
#[test]
fn a_url_without_digest_is_revalidated_not_downloaded() {
    let fx = Fixture::plain();
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let served = fx.root.path().join("www");
    let made = make_tarball(&work, "6.99.5", &work);
    std::fs::create_dir_all(&served).unwrap();
    std::fs::rename(&made, served.join("kernel.tar.xz")).unwrap();
    let Some(server) = ValidatingServer::start(&served, false) else {
        ktstr_sdk::testing::skip("python3 did not start the HTTP server");
        return;
    };
    let url = server.url("kernel.tar.xz");

    let first = build(&fx, &url, &[]);
    let key = first.cached_key();
    assert!(key.starts_with("6.99.5-tarball-"), "{key}");
    assert_eq!(server.statuses(), [200]);

    let second = build(&fx, &url, &[]);
    assert_eq!(second.hit_key(), key, "{}", second.describe());
    second
        .assert_stderr_has("unchanged since it was downloaded (HTTP 304)")
        .assert_stderr_lacks("unpacked");
    assert_eq!(server.statuses(), [200, 304], "no second transfer");
    assert_eq!(fx.build_count(), 1);

    // The file changes: a new ETag, a new download, a new key.
    let made = make_tarball(&work, "6.99.6", &work);
    std::fs::rename(&made, served.join("kernel.tar.xz")).unwrap();
    let third = build(&fx, &url, &[]);
    let new_key = third.cached_key();
    assert!(
        new_key.starts_with("6.99.6-tarball-"),
        "{}",
        third.describe()
    );
    assert_eq!(server.statuses(), [200, 304, 200, 200]);
    assert_eq!(fx.build_count(), 2);
    assert!(
        scratch_entries(&fx).is_empty(),
        "{:?}",
        scratch_entries(&fx)
    );
}

/// A server that ignores conditional requests still works: every run is
/// answered 200; the same strong ETag still means the same content, so the
/// second run hits (the body is not read).
#[test]
fn a_server_ignoring_conditions_still_works() {
    let fx = Fixture::plain();
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let served = fx.root.path().join("www");
    std::fs::create_dir_all(&served).unwrap();
    let made = make_tarball(&work, "6.99.5", &work);
    std::fs::rename(&made, served.join("kernel.tar.xz")).unwrap();
    let Some(server) = ValidatingServer::start(&served, true) else {
        ktstr_sdk::testing::skip("python3 did not start the HTTP server");
        return;
    };
    let url = server.url("kernel.tar.xz");
    let key = build(&fx, &url, &[]).cached_key();
    let again = build(&fx, &url, &[]);
    assert_eq!(again.hit_key(), key, "{}", again.describe());
    again.assert_stderr_has("unchanged since it was downloaded (HTTP 200)");
    assert_eq!(server.statuses(), [200, 200]);
    assert_eq!(fx.build_count(), 1);
}
