//! The tarball source against a loopback HTTP server and local files.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ktstr_plugin_tarball::TarballSource;
use ktstr_plugin_tarball::config::Settings;
use ktstr_plugin_tarball::decompress::Format;
use ktstr_sdk::prelude::*;
use ktstr_sdk::testing::{RecordingProgress, RecordingRunner, context_with};
use support::*;

/// A mirror with releases.json, a v6.x directory and its sums file.
struct Mirror {
    server: Server,
    served: Vec<(String, Vec<u8>)>,
}

const LISTED: [&str; 11] = [
    "6.10", "6.10.14", "6.11", "6.11.1", "6.12", "6.12.1", "6.12.2", "6.12.3", "6.12.4", "6.12.5",
    "6.6.64",
];

impl Mirror {
    /// Serve real tarballs for 6.12.3, 6.12.5, 6.10.14 and 6.11.1; list
    /// every release in `LISTED` in the sums file (dummy digests for the
    /// ones not served); `wrong` gets a wrong digest.
    fn start(wrong: Option<&str>) -> Mirror {
        let server = Server::start();
        server.body(
            "/releases.json",
            releases_json(&[
                ("6.13-rc3", "mainline"),
                ("6.12.5", "stable"),
                ("6.6.64", "longterm"),
                ("next-20241206", "linux-next"),
            ]),
        );
        let mut served = Vec::new();
        let mut sums = Vec::new();
        for v in LISTED {
            let name = format!("linux-{v}.tar.xz");
            let real = ["6.12.3", "6.12.5", "6.10.14", "6.11.1"].contains(&v);
            let digest = if real {
                let top: &'static str = Box::leak(format!("linux-{v}").into_boxed_str());
                let data = tarball(&kernel_items(top, v), Format::Xz);
                let d = sha256_hex(&data);
                server.body(&format!("/pub/v6.x/{name}"), data.clone());
                served.push((v.to_string(), data));
                d
            } else {
                "0".repeat(64)
            };
            let digest = if wrong == Some(v) {
                "f".repeat(64)
            } else {
                digest
            };
            sums.push((name, digest));
        }
        sums.push(("linux-6.12.3.tar.gz".into(), "1".repeat(64)));
        server.body("/pub/v6.x/sha256sums.asc", sums_asc(&sums));
        Mirror { server, served }
    }

    fn settings(&self) -> Settings {
        Settings {
            mirror: self.server.url("/pub"),
            releases_url: self.server.url("/releases.json"),
            ..fast_settings()
        }
    }

    fn data(&self, v: &str) -> &[u8] {
        &self.served.iter().find(|(x, _)| x == v).unwrap().1
    }
}

fn fast_settings() -> Settings {
    Settings {
        connect_timeout_secs: 2,
        stall_timeout_secs: 2,
        retries: 0,
        xz_threads: 2,
        ..Settings::default()
    }
}

struct Env {
    root: tempfile::TempDir,
    source: TarballSource,
    cx: StageContext,
    progress: Arc<RecordingProgress>,
}

impl Env {
    fn new(settings: Settings) -> Env {
        let root = tempfile::tempdir().unwrap();
        let source = TarballSource::with_settings(settings, Some(root.path().to_path_buf()));
        let (cx, progress) = context_with(Arc::new(RecordingRunner::default()));
        Env {
            root,
            source,
            cx,
            progress,
        }
    }

    fn scratch(&self) -> PathBuf {
        self.root.path().join("scratch")
    }

    /// Names in the scratch directory.
    fn scratch_entries(&self) -> Vec<String> {
        match std::fs::read_dir(self.scratch()) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn resolve(&self, spec: &str) -> Result<Vec<Resolved>> {
        self.source.resolve(&KernelSpec::new(spec), &self.cx)
    }

    fn acquire(&self, spec: &str) -> Result<AcquiredSource> {
        self.source.acquire(&KernelSpec::new(spec), &self.cx)
    }

    fn acquire_err(&self, spec: &str) -> StageError {
        let mut before = self.scratch_entries();
        let e = self.acquire(spec).expect_err("acquire must fail");
        let mut after = self.scratch_entries();
        before.sort();
        after.sort();
        assert_eq!(before, after, "staging left behind after {e}");
        e
    }
}

fn assert_small_tree(src: &AcquiredSource, version: &str) {
    let dir = &src.source_dir;
    assert_eq!(src.version.as_deref(), Some(version));
    assert!(src.is_temp && !src.is_local && !src.is_git);
    assert!(dir.join("kernel/sched/core.c").is_file());
    let mk = std::fs::read_to_string(dir.join("Makefile")).unwrap();
    assert!(mk.contains("PATCHLEVEL"));
    let link = std::fs::read_link(dir.join("scripts/dtc/include-prefixes/arm")).unwrap();
    assert_eq!(link, Path::new("../../../arch/arm/boot/dts"));
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(dir.join("kernel/sched/core.c")).unwrap();
    let b = std::fs::metadata(dir.join("kernel/sched/core-copy.c")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink kept");
    assert_eq!(
        std::fs::metadata(dir.join("scripts/run.sh"))
            .unwrap()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(a.mode() & 0o777, 0o644);
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("tarball-{}-", std::process::id())) && !name.ends_with(".part"),
        "{name}"
    );
}

#[test]
fn exact_version_resolves_offline_and_acquires_verified() {
    let m = Mirror::start(None);
    let env = Env::new(m.settings());
    let r = env.resolve("6.12.3").unwrap();
    assert_eq!(r.len(), 1);
    assert!(r[0].is_keyable());
    assert_eq!(
        m.server.hits.lock().unwrap().len(),
        0,
        "exact versions need no network to resolve"
    );
    let src = env.acquire(&r[0].spec.raw).unwrap();
    assert_eq!(Some(&src.identity), r[0].identity.as_ref());
    assert_eq!(src.identity.id, "linux-6.12.3");
    assert!(!src.is_dirty);
    assert_small_tree(&src, "6.12.3");
    assert_eq!(
        env.scratch_entries().len(),
        1,
        "only the installed tree remains"
    );
    let lines = env.progress.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("downloaded ") && (l.contains("MiB/s") || l.contains("KiB/s"))),
        "{lines:?}"
    );
    assert!(
        env.progress
            .steps()
            .iter()
            .any(|s| s.contains("linux-6.12.3.tar.xz"))
    );
    assert_eq!(m.server.hits_of("/pub/v6.x/sha256sums.asc"), 1);
}

#[test]
fn series_resolves_to_newest_release_pinned_by_digest() {
    let m = Mirror::start(None);
    let env = Env::new(m.settings());
    let r = env.resolve("6.12").unwrap();
    assert_eq!(r.len(), 1);
    let digest = sha256_hex(m.data("6.12.5"));
    assert_eq!(r[0].spec.raw, format!("6.12.5#sha256={digest}"));
    assert_eq!(r[0].version.as_deref(), Some("6.12.5"));
    assert_eq!(r[0].identity.as_ref().unwrap().id, "linux-6.12.5");
    let src = env.acquire(&r[0].spec.raw).unwrap();
    assert_eq!(Some(&src.identity), r[0].identity.as_ref());
    assert_small_tree(&src, "6.12.5");
    // Pinned: acquiring needs no sums file again.
    assert_eq!(m.server.hits_of("/pub/v6.x/sha256sums.asc"), 1);
    // An end-of-life series is found in the sums listing.
    let r = env.resolve("6.10").unwrap();
    assert_eq!(r[0].version.as_deref(), Some("6.10.14"));
}

#[test]
fn ranges_resolve_every_series_oldest_first() {
    let m = Mirror::start(None);
    let env = Env::new(m.settings());
    let r = env.resolve("6.10..6.12").unwrap();
    let versions: Vec<_> = r.iter().map(|r| r.version.clone().unwrap()).collect();
    assert_eq!(versions, ["6.10.14", "6.11.1", "6.12.5"]);
    assert!(
        r.iter()
            .all(|r| r.is_keyable() && r.spec.raw.contains("#sha256="))
    );
    let r = env.resolve("6.12.1..6.12.3").unwrap();
    let versions: Vec<_> = r.iter().map(|r| r.version.clone().unwrap()).collect();
    assert_eq!(versions, ["6.12.1", "6.12.2", "6.12.3"]);
    let e = env.acquire("6.10..6.12").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
}

#[test]
fn missing_release_suggests_the_nearest() {
    let m = Mirror::start(None);
    let env = Env::new(m.settings());
    let e = env.acquire_err("6.12.9");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("6.12.9"), "{e}");
    assert!(
        e.hint.as_deref().unwrap().contains("6.12.5"),
        "{:?}",
        e.hint
    );
    // Listed but not on the mirror: the tarball's 404.
    let e = env.acquire_err("6.12.4");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("/pub/v6.x/linux-6.12.4.tar.xz"), "{e}");
    assert!(e.message.contains("404"), "{e}");
    let hint = e.hint.unwrap();
    assert!(hint.contains("6.12.3") || hint.contains("6.12.5"), "{hint}");
    // A series nobody lists.
    let e = env.resolve("6.14").unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.hint.unwrap().contains("6.12.5"));
    // The current release candidate is offered; others are not.
    let e = env.resolve("6.13-rc1").unwrap_err();
    assert!(e.hint.unwrap().contains("git+https://"));
    let r = env.resolve("6.13-rc3").unwrap();
    assert!(r[0].spec.raw.ends_with("linux-6.13-rc3.tar.xz"));
    assert!(!r[0].is_keyable());
}

#[test]
fn sha256_mismatch_fails_unless_skipped() {
    let m = Mirror::start(Some("6.12.3"));
    let env = Env::new(m.settings());
    let e = env.acquire_err("6.12.3");
    assert_eq!(e.kind, ErrorKind::Corrupt);
    let actual = sha256_hex(m.data("6.12.3"));
    assert!(e.message.contains(&"f".repeat(64)), "{e}");
    assert!(e.message.contains(&actual), "{e}");
    assert!(
        e.message
            .contains(&m.server.url("/pub/v6.x/linux-6.12.3.tar.xz")),
        "{e}"
    );
    assert!(e.hint.unwrap().contains("--skip-sha256"));

    let env = Env::new(Settings {
        skip_sha256: true,
        ..m.settings()
    });
    let src = env.acquire("6.12.3").unwrap();
    assert!(src.is_dirty, "an unverified tree must never be cached");
    assert_eq!(src.identity.id, "linux-6.12.3");
    assert!(
        env.progress
            .warnings()
            .iter()
            .any(|w| w.contains("sha256 mismatch"))
    );
}

#[test]
fn url_with_and_without_digest() {
    let m = Mirror::start(None);
    let env = Env::new(m.settings());
    let data = m.data("6.11.1");
    let url = m.server.url("/pub/v6.x/linux-6.11.1.tar.xz");
    let r = env.resolve(&url).unwrap();
    assert!(
        !r[0].is_keyable(),
        "a URL without a digest is only known after download"
    );
    let src = env.acquire(&url).unwrap();
    assert_eq!(src.identity.id, sha256_hex(data));
    assert_small_tree(&src, "6.11.1");

    let pinned = format!("{url}#sha256={}", sha256_hex(data));
    let r = env.resolve(&pinned).unwrap();
    assert!(r[0].is_keyable());
    assert_eq!(r[0].version.as_deref(), Some("6.11.1"));
    let src = env.acquire(&r[0].spec.raw).unwrap();
    assert_eq!(Some(&src.identity), r[0].identity.as_ref());

    let wrong = format!("{url}#sha256={}", "a".repeat(64));
    let e = env.acquire_err(&wrong);
    assert_eq!(e.kind, ErrorKind::Corrupt);
    assert!(e.message.contains("sha256 mismatch"), "{e}");
}

#[test]
fn gzip_and_zstd_from_file_url_and_plain_path() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(fast_settings());
    for (format, name) in [
        (Format::Gzip, "linux-6.1.2.tar.gz"),
        (Format::Zstd, "linux-6.1.2.tar.zst"),
        (Format::Tar, "linux-6.1.2.tar"),
    ] {
        let data = tarball(&kernel_items("linux-6.1.2", "6.1.2"), format);
        let path = dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        let src = env.acquire(&format!("file://{}", path.display())).unwrap();
        assert_small_tree(&src, "6.1.2");
        assert_eq!(src.identity.id, sha256_hex(&data));
        // A plain path resolves to its digest (hashed locally) and is keyable.
        let r = env.resolve(path.to_str().unwrap()).unwrap();
        assert!(r[0].is_keyable());
        assert_eq!(
            r[0].spec.raw,
            format!("{}#sha256={}", path.display(), sha256_hex(&data))
        );
        let src = env.acquire(&r[0].spec.raw).unwrap();
        assert_eq!(Some(&src.identity), r[0].identity.as_ref());
        assert_eq!(src.version.as_deref(), Some("6.1.2"));
    }
    // A tree without a top-level directory, under any name, is accepted too.
    let items: Vec<Item> = kernel_items("linux-6.1.2", "6.1.2")
        .into_iter()
        .filter_map(|i| match i {
            Item::File(p, d) if !p.contains("core-copy") => {
                Some(Item::File(p.strip_prefix("linux-6.1.2/").unwrap(), d))
            }
            _ => None,
        })
        .collect();
    let path = dir.path().join("flat.tar.xz");
    std::fs::write(&path, tarball(&items, Format::Xz)).unwrap();
    let r = env.resolve(path.to_str().unwrap()).unwrap();
    assert!(!r[0].is_keyable(), "no version in the name");
    let src = env.acquire(path.to_str().unwrap()).unwrap();
    assert_eq!(src.version.as_deref(), Some("6.1.2"));
    assert!(src.source_dir.join("kernel/sched/core.c").is_file());
}

#[test]
fn missing_file_and_directory_are_clear() {
    let env = Env::new(fast_settings());
    let e = env.acquire_err("/nonexistent/linux-6.1.tar.xz");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.to_string().contains("/nonexistent/linux-6.1.tar.xz"),
        "{e}"
    );
}

fn hostile(name: &str, items: Vec<Item>, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(Settings {
        max_unpacked_bytes: 1 << 20,
        ..fast_settings()
    });
    let path = dir.path().join(format!("{name}.tar.xz"));
    std::fs::write(&path, tarball(&items, Format::Xz)).unwrap();
    let e = env.acquire_err(path.to_str().unwrap());
    assert_eq!(e.kind, ErrorKind::Corrupt, "{name}: {e}");
    assert!(e.message.contains(expect), "{name}: {e}");
    assert!(e.message.contains(path.to_str().unwrap()), "{name}: {e}");
    assert!(!dir.path().join("evil").exists() && !dir.path().join("escaped").exists());
}

fn with_tree(extra: Vec<Item>) -> Vec<Item> {
    let mut items = kernel_items("linux-6.1.2", "6.1.2");
    items.extend(extra);
    items
}

#[test]
fn path_traversal_is_refused() {
    hostile(
        "dotdot",
        with_tree(vec![Item::File("linux-6.1.2/../../escaped", b"x".to_vec())]),
        "contains `..`",
    );
    hostile(
        "absolute",
        with_tree(vec![Item::File("/tmp/ktstr-abs-escape", b"x".to_vec())]),
        "absolute path",
    );
    assert!(!Path::new("/tmp/ktstr-abs-escape").exists());
}

#[test]
fn symlink_escapes_are_refused() {
    hostile(
        "symlink-up",
        with_tree(vec![Item::Symlink("linux-6.1.2/evil", "../../..")]),
        "points outside the tree",
    );
    hostile(
        "symlink-abs",
        with_tree(vec![Item::Symlink("linux-6.1.2/evil", "/etc")]),
        "absolute path",
    );
    // A link that is harmless alone but escapes through another link.
    hostile(
        "symlink-chain",
        with_tree(vec![
            Item::Symlink("linux-6.1.2/d1/l", ".."),
            Item::Symlink("linux-6.1.2/d1/l2", "l/../.."),
        ]),
        "points outside the tree",
    );
    // Writing through a symlink the archive planted.
    hostile(
        "through-link",
        with_tree(vec![
            Item::Symlink("linux-6.1.2/up", "kernel"),
            Item::File("linux-6.1.2/up/x", b"x".to_vec()),
        ]),
        "through the symlink",
    );
}

#[test]
fn hardlink_escapes_are_refused() {
    hostile(
        "hardlink-up",
        with_tree(vec![Item::Hardlink("linux-6.1.2/evil", "../etc/passwd")]),
        "contains `..`",
    );
    hostile(
        "hardlink-abs",
        with_tree(vec![Item::Hardlink("linux-6.1.2/evil", "/etc/passwd")]),
        "absolute path",
    );
    hostile(
        "hardlink-unknown",
        with_tree(vec![Item::Hardlink(
            "linux-6.1.2/evil",
            "linux-6.1.2/nothing",
        )]),
        "not a file earlier in the archive",
    );
}

#[test]
fn device_files_and_fifos_are_refused() {
    hostile(
        "chardev",
        with_tree(vec![Item::CharDev("linux-6.1.2/null")]),
        "device file",
    );
    hostile(
        "fifo",
        with_tree(vec![Item::Fifo("linux-6.1.2/pipe")]),
        "device file or fifo",
    );
}

#[test]
fn oversized_archives_are_refused() {
    hostile(
        "big",
        with_tree(vec![
            Item::Big("linux-6.1.2/a", 600 << 10),
            Item::Big("linux-6.1.2/b", 600 << 10),
        ]),
        "more than the 1 MiB cap",
    );
}

#[test]
fn archives_that_are_not_one_kernel_tree_are_refused() {
    hostile(
        "two-tops",
        vec![
            Item::File("a/Makefile", makefile("6.1.2")),
            Item::File("b/x", b"x".to_vec()),
        ],
        "not a kernel tarball",
    );
}

#[test]
fn html_page_is_not_a_tarball() {
    let server = Server::start();
    let page = b"<!DOCTYPE html><html><body>Please sign in</body></html>".to_vec();
    server.route(
        "/portal/linux-6.12.3.tar.xz",
        Reply::Body(Arc::new(page.clone()), "text/html; charset=utf-8"),
    );
    server.route(
        "/sniff/linux-6.12.3.tar.xz",
        Reply::Body(Arc::new(page), "application/octet-stream"),
    );
    let env = Env::new(fast_settings());
    for path in ["/portal/linux-6.12.3.tar.xz", "/sniff/linux-6.12.3.tar.xz"] {
        let url = server.url(path);
        let e = env.acquire_err(&url);
        assert_eq!(e.kind, ErrorKind::Corrupt);
        assert!(
            e.message.contains(&format!("{url} is not a tarball")),
            "{e}"
        );
        assert!(e.message.contains("HTML"), "{e}");
    }
}

#[test]
fn truncated_download_fails_cleanly() {
    let server = Server::start();
    let data = tarball(&kernel_items("linux-6.1.2", "6.1.2"), Format::Xz);
    let cut = data[..data.len() / 2].to_vec();
    server.route(
        "/t/linux-6.1.2.tar.xz",
        Reply::Truncated(Arc::new(cut.clone()), data.len() as u64),
    );
    // Without a Content-Length check the decoder notices the cut.
    server.route(
        "/short/linux-6.1.2.tar.xz",
        Reply::Body(Arc::new(cut), "application/x-xz"),
    );
    let env = Env::new(fast_settings());
    let url = server.url("/t/linux-6.1.2.tar.xz");
    let e = env.acquire_err(&url);
    assert!(e.message.contains(&url), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("truncated") || text.contains("download failed after"),
        "{text}"
    );
    let url = server.url("/short/linux-6.1.2.tar.xz");
    let e = env.acquire_err(&url);
    assert_eq!(e.kind, ErrorKind::Corrupt);
    assert!(e.message.contains("truncated"), "{e}");
}

#[test]
fn stalled_download_trips_the_watchdog() {
    let server = Server::start();
    let data = tarball(&kernel_items("linux-6.1.2", "6.1.2"), Format::Xz);
    server.route(
        "/slow/linux-6.1.2.tar.xz",
        Reply::Stall(Arc::new(data[..64].to_vec()), Duration::from_secs(8)),
    );
    let env = Env::new(Settings {
        stall_timeout_secs: 1,
        ..fast_settings()
    });
    let url = server.url("/slow/linux-6.1.2.tar.xz");
    let start = Instant::now();
    let e = env.acquire_err(&url);
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "watchdog took {:?}",
        start.elapsed()
    );
    assert!(e.message.contains(&url), "{e}");
    assert!(e.message.contains("stalled: no data for 1 s"), "{e}");
    assert!(e.hint.unwrap().contains("stall_timeout_secs"));
}

#[test]
fn transient_errors_are_retried_then_reported() {
    let m = Mirror::start(None);
    let data = m.data("6.12.3").to_vec();
    m.server.route(
        "/flaky/linux-6.12.3.tar.xz",
        Reply::FlakyThen(Arc::new(Mutex::new(2)), Arc::new(data)),
    );
    let env = Env::new(Settings {
        retries: 2,
        ..m.settings()
    });
    let src = env
        .acquire(&m.server.url("/flaky/linux-6.12.3.tar.xz"))
        .unwrap();
    assert_eq!(src.version.as_deref(), Some("6.12.3"));
    assert_eq!(m.server.hits_of("/flaky/linux-6.12.3.tar.xz"), 3);
    assert_eq!(
        env.progress
            .notes()
            .iter()
            .filter(|n| n.contains("retrying"))
            .count(),
        2
    );

    m.server
        .route("/down/linux-6.12.3.tar.xz", Reply::Status(503));
    let e = env.acquire_err(&m.server.url("/down/linux-6.12.3.tar.xz"));
    assert!(e.message.contains("HTTP 503"), "{e}");
    assert!(e.message.contains("after 3 attempts"), "{e}");
    assert_eq!(m.server.hits_of("/down/linux-6.12.3.tar.xz"), 3);
}

#[test]
fn unreachable_mirror_names_the_url_and_the_fix() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let env = Env::new(Settings {
        mirror: format!("{base}/pub"),
        releases_url: format!("{base}/releases.json"),
        ..fast_settings()
    });
    let e = env.resolve("6.12").unwrap_err();
    assert!(
        e.message
            .contains(&format!("cannot reach {base}/releases.json")),
        "{e}"
    );
    assert!(e.hint.unwrap().contains("KTSTR_RELEASES_URL"));
    let e = env.acquire_err("6.12.3");
    assert!(
        e.message
            .contains(&format!("cannot reach {base}/pub/v6.x/sha256sums.asc")),
        "{e}"
    );
    let hint = e.hint.unwrap();
    assert!(
        hint.contains("KTSTR_KERNEL_MIRROR") && hint.contains("--kernel ./linux-6.12.3.tar.xz"),
        "{hint}"
    );
}

#[test]
fn file_mirror_serves_versions() {
    let m = Mirror::start(None);
    let dir = tempfile::tempdir().unwrap();
    let v6 = dir.path().join("v6.x");
    std::fs::create_dir(&v6).unwrap();
    let data = m.data("6.12.3");
    std::fs::write(v6.join("linux-6.12.3.tar.xz"), data).unwrap();
    std::fs::write(
        v6.join("sha256sums.asc"),
        sums_asc(&[("linux-6.12.3.tar.xz".into(), sha256_hex(data))]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("releases.json"),
        releases_json(&[("6.12.3", "stable")]),
    )
    .unwrap();
    let env = Env::new(Settings {
        mirror: format!("file://{}", dir.path().display()),
        releases_url: format!("file://{}/releases.json", dir.path().display()),
        ..fast_settings()
    });
    let r = env.resolve("6.12").unwrap();
    assert_eq!(r[0].version.as_deref(), Some("6.12.3"));
    let src = env.acquire(&r[0].spec.raw).unwrap();
    assert_small_tree(&src, "6.12.3");
    let e = env.acquire_err("6.12.2");
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.hint.unwrap().contains("6.12.3"));
}

#[test]
fn cancelled_acquire_leaves_nothing() {
    let m = Mirror::start(None);
    let env = Env::new(m.settings());
    env.cx.cancel.cancel();
    let e = env.acquire_err("6.12.3");
    assert_eq!(e.kind, ErrorKind::Cancelled);
}

/// A kernel tarball of `version` whose top directory is `linux-<version>`.
fn kernel_tarball(version: &str) -> Vec<u8> {
    let top: &'static str = Box::leak(format!("linux-{version}").into_boxed_str());
    tarball(&kernel_items(top, version), Format::Xz)
}

const MONDAY: &str = "Mon, 30 Nov 2026 10:00:00 GMT";
const TUESDAY: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

/// A URL without a digest: the first resolve knows nothing and the acquire
/// downloads; later resolves ask with the remembered validators and a 304
/// pins the URL to the remembered digest, with no body transferred.
#[test]
fn url_without_digest_is_revalidated_by_etag() {
    let server = Server::start();
    let v1 = kernel_tarball("6.11.1");
    let file = Conditional::new(v1.clone(), Some("\"one\""), Some(MONDAY), true);
    server.route("/ci/kernel.tar.xz", Reply::Conditional(file.clone()));
    let env = Env::new(fast_settings());
    let url = server.url("/ci/kernel.tar.xz");

    assert!(
        !env.resolve(&url).unwrap()[0].is_keyable(),
        "nothing remembered yet"
    );
    assert_eq!(file.counts(), (0, 0), "nothing to ask without a memo");
    let first = env.acquire(&url).unwrap();
    assert_eq!(first.identity.id, sha256_hex(&v1));
    assert_eq!(file.counts(), (1, 0));

    let r = env.resolve(&url).unwrap().remove(0);
    assert_eq!(file.counts(), (1, 1), "revalidated with one 304");
    assert_eq!(
        file.conditions.lock().unwrap().last().unwrap(),
        &(Some("\"one\"".to_string()), Some(MONDAY.to_string()))
    );
    assert!(r.is_keyable(), "{r:?}");
    assert_eq!(r.spec.raw, format!("{url}#sha256={}", sha256_hex(&v1)));
    assert_eq!(r.identity.as_ref(), Some(&first.identity));
    assert_eq!(
        r.version.as_deref(),
        Some("6.11.1"),
        "from the version memo"
    );
    assert!(
        env.progress
            .notes()
            .iter()
            .any(|n| n.contains("unchanged since it was downloaded (HTTP 304)")),
        "{:?}",
        env.progress.notes()
    );

    // The file changes (new ETag): the URL is unknown again, downloaded,
    // and the new content has a new identity, remembered in turn.
    let v2 = kernel_tarball("6.12.3");
    file.set(v2.clone(), Some("\"two\""), Some(TUESDAY), true);
    assert!(!env.resolve(&url).unwrap()[0].is_keyable());
    let second = env.acquire(&url).unwrap();
    assert_eq!(second.identity.id, sha256_hex(&v2));
    assert_eq!(second.version.as_deref(), Some("6.12.3"));
    let r = env.resolve(&url).unwrap().remove(0);
    assert_eq!(r.identity.unwrap().id, sha256_hex(&v2));
    assert_eq!(r.version.as_deref(), Some("6.12.3"));

    // A memo that lies (the server says 304 but the bytes changed) is
    // caught by the digest of the download and forgotten.
    file.set(
        kernel_tarball("6.10.14"),
        Some("\"two\""),
        Some(TUESDAY),
        true,
    );
    let pinned = env.resolve(&url).unwrap().remove(0);
    assert!(pinned.is_keyable());
    let e = env.acquire_err(&pinned.spec.raw);
    assert!(e.message.contains("sha256 mismatch"), "{e}");
    assert!(!env.resolve(&url).unwrap()[0].is_keyable(), "forgotten");
}

/// Only `Last-Modified`: the condition is `If-Modified-Since`.
#[test]
fn url_without_etag_is_revalidated_by_date() {
    let server = Server::start();
    let data = kernel_tarball("6.11.1");
    let file = Conditional::new(data.clone(), None, Some(MONDAY), true);
    server.route("/k.tar.xz", Reply::Conditional(file.clone()));
    let env = Env::new(fast_settings());
    let url = server.url("/k.tar.xz");
    env.acquire(&url).unwrap();
    let r = env.resolve(&url).unwrap().remove(0);
    assert!(r.is_keyable());
    assert_eq!(file.counts(), (1, 1));
    assert_eq!(
        file.conditions.lock().unwrap().last().unwrap(),
        &(None, Some(MONDAY.to_string()))
    );
    file.set(data, None, Some(TUESDAY), true);
    assert!(
        !env.resolve(&url).unwrap()[0].is_keyable(),
        "touched: ask again"
    );
}

/// Servers that ignore conditions still work: the same strong ETag on a
/// 200 is the same content (the body is not read), and a server without
/// validators is downloaded every time.
#[test]
fn servers_ignoring_conditions_still_work() {
    let server = Server::start();
    let data = kernel_tarball("6.11.1");
    let tagged = Conditional::new(data.clone(), Some("\"same\""), None, false);
    server.route("/tagged.tar.xz", Reply::Conditional(tagged.clone()));
    let plain = Conditional::new(data.clone(), None, None, false);
    server.route("/plain.tar.xz", Reply::Conditional(plain.clone()));
    let env = Env::new(fast_settings());

    let url = server.url("/tagged.tar.xz");
    env.acquire(&url).unwrap();
    let r = env.resolve(&url).unwrap().remove(0);
    assert!(r.is_keyable());
    assert_eq!(r.identity.unwrap().id, sha256_hex(&data));
    assert_eq!(tagged.counts(), (2, 0));
    tagged.set(kernel_tarball("6.12.3"), Some("\"other\""), None, false);
    assert!(!env.resolve(&url).unwrap()[0].is_keyable());

    let url = server.url("/plain.tar.xz");
    for _ in 0..2 {
        assert!(!env.resolve(&url).unwrap()[0].is_keyable());
        assert_eq!(env.acquire(&url).unwrap().identity.id, sha256_hex(&data));
    }
    assert_eq!(
        plain.counts(),
        (2, 0),
        "no validators: no conditional request"
    );
    assert!(
        plain
            .conditions
            .lock()
            .unwrap()
            .iter()
            .all(|c| *c == (None, None))
    );
}
