//! End-to-end tests of the git source against real repositories served
//! over file:// and smart HTTP from 127.0.0.1.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ktstr_plugin_git::GitSource;
use ktstr_sdk::context::{Cancellation, NoProgress, Progress, StageContext};
use ktstr_sdk::prelude::*;
use support::{GitHttpServer, Origin, git, git_available, tree_files};

struct Cache {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn cache() -> Cache {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap().join("cache");
    Cache { _tmp: tmp, root }
}

fn cx() -> StageContext {
    StageContext::quiet()
}

fn resolve_one(src: &GitSource, spec: &str) -> Result<Resolved> {
    let mut all = src.resolve(&KernelSpec::new(spec), &cx())?;
    assert_eq!(all.len(), 1);
    Ok(all.remove(0))
}

/// Every file in the mirror's pack directory with its size: a fetch that
/// received objects adds a pack.
fn packs(root: &Path, url: &str) -> Vec<(String, u64)> {
    let dir = ktstr_plugin_git::mirror::git_mirror(root, url).join("objects/pack");
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn scratch_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(ktstr_sdk::paths::scratch_dir(root))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Check an acquired tree against the origin commit.
fn assert_tree(src: &AcquiredSource, origin: &Origin, commit: &str, root: &Path) {
    assert_eq!(src.identity.kind, "git");
    assert_eq!(src.identity.id, commit);
    assert_eq!(src.identity.short.as_deref(), Some(&commit[..12]));
    assert!(src.is_temp && !src.is_git && !src.is_local && !src.is_dirty);
    assert!(
        src.source_dir
            .starts_with(ktstr_sdk::paths::scratch_dir(root)),
        "{}",
        src.source_dir.display()
    );
    let name = src.source_dir.file_name().unwrap().to_string_lossy();
    assert!(
        name.starts_with(&format!("git-{}-", std::process::id())),
        "{name}"
    );
    assert!(!src.source_dir.join(".git").exists());
    let expected = git(&origin.dir, &["ls-tree", "-r", "--name-only", commit]);
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(tree_files(&src.source_dir), expected);
    let makefile = git(&origin.dir, &["show", &format!("{commit}:Makefile")]);
    assert_eq!(
        std::fs::read_to_string(src.source_dir.join("Makefile"))
            .unwrap()
            .trim(),
        makefile
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(src.source_dir.join("scripts.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "executable bit kept");
}

#[test]
fn file_remote_tag_branch_sha_and_head() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let before = origin.snapshot();
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let url = origin.file_url();
    let first = origin.rev("HEAD");
    assert_ne!(
        git(&origin.dir, &["rev-parse", "v6.99"]),
        first,
        "annotated tag"
    );

    for spec in [
        format!("git+{url}#tag=v6.99"),
        format!("git+{url}#tag=light"),
        format!("git+{url}#branch=sched-next"),
        format!("git+{url}"),
        format!("git+{url}#sha={first}"),
    ] {
        let r = resolve_one(&src, &spec).unwrap();
        assert_eq!(r.identity.as_ref().unwrap().id, first, "{spec}");
        assert_eq!(r.spec.raw, format!("git+{url}#sha={first}"), "{spec}");
        let got = src.acquire(&r.spec, &cx()).unwrap();
        assert_tree(&got, &origin, &first, &c.root);
        assert_eq!(got.version.as_deref(), Some("6.99.1"));
        std::fs::remove_dir_all(&got.source_dir).unwrap();
    }
    // An unpinned spec given straight to acquire works too.
    let got = src
        .acquire(&KernelSpec::new(format!("git+{url}#tag=v6.99")), &cx())
        .unwrap();
    assert_eq!(got.identity.id, first);

    // Depth 1 by default: the mirror is shallow.
    let mirror = ktstr_plugin_git::mirror::git_mirror(&c.root, &url);
    assert!(mirror.join("shallow").is_file());
    assert_eq!(
        git(&mirror, &["for-each-ref", "--format=%(refname)"]),
        format!("refs/ktstr/{first}")
    );
    origin.assert_unchanged(&before);
}

#[test]
fn http_remote_resolves_then_hits_without_fetching() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let first = origin.rev("HEAD");
    let second = origin.bump(2);
    let before = origin.snapshot();
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let server = GitHttpServer::start(origin.dir.parent().unwrap());
    let url = server.url("origin");
    let spec = format!("git+{url}#branch=main");

    // Nothing in the mirror yet: the commit is known, the version is not.
    let r = resolve_one(&src, &spec).unwrap();
    assert_eq!(r.identity.as_ref().unwrap().id, second);
    assert_eq!(r.version, None);
    assert!(!r.is_keyable());
    assert!(packs(&c.root, &url).is_empty(), "resolve fetched objects");

    let got = src.acquire(&r.spec, &cx()).unwrap();
    assert_tree(&got, &origin, &second, &c.root);
    assert_eq!(got.version.as_deref(), Some("6.99.2"));
    let after_fetch = packs(&c.root, &url);
    assert!(!after_fetch.is_empty());

    // Unchanged ref: same identity, now keyable, and no objects fetched.
    let requests = server.requests();
    let again = resolve_one(&src, &spec).unwrap();
    assert_eq!(again.identity, r.identity);
    assert_eq!(again.version.as_deref(), Some("6.99.2"));
    assert!(again.is_keyable());
    assert_eq!(packs(&c.root, &url), after_fetch);
    assert!(server.requests() > requests, "resolve must ask the remote");

    // The pinned spec needs no network at all once mirrored.
    drop(server);
    let offline = resolve_one(&src, &again.spec.raw).unwrap();
    assert_eq!(offline, again);
    let got2 = src.acquire(&again.spec, &cx()).unwrap();
    assert_tree(&got2, &origin, &second, &c.root);
    assert_ne!(got2.source_dir, got.source_dir, "a fresh scratch tree");
    assert_eq!(packs(&c.root, &url), after_fetch);

    // An older commit by id: fetched incrementally over HTTP.
    let server = GitHttpServer::start(origin.dir.parent().unwrap());
    let url2 = server.url("origin");
    let old = src
        .acquire(&KernelSpec::new(format!("git+{url2}#sha={first}")), &cx())
        .unwrap();
    assert_tree(&old, &origin, &first, &c.root);
    assert_eq!(old.version.as_deref(), Some("6.99.1"));
    origin.assert_unchanged(&before);
}

#[test]
fn moved_branch_gives_a_new_identity() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let server = GitHttpServer::start(origin.dir.parent().unwrap());
    let spec = format!("git+{}#branch=main", server.url("origin"));
    let r1 = resolve_one(&src, &spec).unwrap();
    src.acquire(&r1.spec, &cx()).unwrap();
    assert!(resolve_one(&src, &spec).unwrap().is_keyable());

    let moved = origin.bump(7);
    let r2 = resolve_one(&src, &spec).unwrap();
    assert_eq!(r2.identity.as_ref().unwrap().id, moved);
    assert_ne!(r2.identity, r1.identity);
    assert_eq!(r2.version, None, "not in the mirror yet");
    let got = src.acquire(&r2.spec, &cx()).unwrap();
    assert_eq!(got.identity.id, moved);
    assert_eq!(got.version.as_deref(), Some("6.99.7"));
    assert_tree(&got, &origin, &moved, &c.root);
}

#[test]
fn unknown_refs_name_the_url_and_suggest_neighbours() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let server = GitHttpServer::start(origin.dir.parent().unwrap());
    for url in [origin.file_url(), server.url("origin")] {
        let e = resolve_one(&src, &format!("git+{url}#tag=v6.98")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert_eq!(
            e.message,
            format!("git+{url}: there is no tag v6.98 on the remote")
        );
        let hint = e.hint.unwrap();
        assert!(hint.contains("tag v6.99"), "{hint}");
        assert!(hint.contains("git ls-remote"), "{hint}");

        // The name exists, as the other kind of ref.
        let e = resolve_one(&src, &format!("git+{url}#tag=sched-next")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.hint.as_deref(),
            Some(
                format!("the remote has a branch of that name: write git+{url}#branch=sched-next")
                    .as_str()
            )
        );
        let e = resolve_one(&src, &format!("git+{url}#branch=v6.99")).unwrap_err();
        assert!(e.hint.unwrap().contains(&format!("git+{url}#tag=v6.99")));
    }

    // A commit the remote does not have: found out at acquire time, and
    // nothing is left in the scratch directory.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let url = server.url("origin");
    let spec = format!("git+{url}#sha={missing}");
    let r = resolve_one(&src, &spec).unwrap();
    assert_eq!(r.version, None);
    let e = src.acquire(&r.spec, &cx()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
    assert!(
        e.message.contains(missing) && e.message.contains(&url),
        "{e}"
    );
    assert!(scratch_entries(&c.root).is_empty());
}

#[test]
fn unreachable_remote_is_reported() {
    if !git_available() {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let url = format!("http://127.0.0.1:{port}/linux.git");
    let started = std::time::Instant::now();
    let e = resolve_one(&src, &format!("git+{url}#tag=v6.12")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io, "{e:?}");
    assert_eq!(e.message, format!("git+{url}: cannot reach the remote"));
    assert!(e.hint.unwrap().contains("git ls-remote"));
    assert!(!e.causes.is_empty());
    eprintln!("unreachable remote reported in {:?}", started.elapsed());

    let e = src
        .acquire(
            &KernelSpec::new(format!("git+{url}#sha={}", "a".repeat(40))),
            &cx(),
        )
        .unwrap_err();
    assert_eq!(e.message, format!("git+{url}: cannot reach the remote"));
    assert!(scratch_entries(&c.root).is_empty());
}

#[test]
fn missing_path_and_non_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let c = cache();
    let src = GitSource::default().with_root(&c.root);

    let url = format!("file://{}/nope.git", dir.display());
    let e = resolve_one(&src, &format!("git+{url}#tag=v1")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
    assert!(e.message.contains("does not exist"), "{e}");

    std::fs::write(dir.join("README"), "hi\n").unwrap();
    let url = format!("file://{}", dir.display());
    let e = resolve_one(&src, &format!("git+{url}#tag=v1")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e:?}");
    assert_eq!(
        e.message,
        format!("git+{url}: {} is not a git repository", dir.display())
    );
    assert!(e.hint.is_some());

    // Served over HTTP, a missing repository is a 404.
    if !git_available() {
        return;
    }
    let server = GitHttpServer::start(&dir);
    let url = server.url("absent.git");
    let e = resolve_one(&src, &format!("git+{url}")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}");
    assert_eq!(
        e.message,
        format!("git+{url}: no git repository at this URL")
    );
}

#[test]
fn repository_owned_by_another_user_is_refused_with_the_fix() {
    if !git_available() {
        return;
    }
    if !nix_is_root() {
        ktstr_sdk::testing::skip("not running as root (cannot chown a repository to another user)");
        return;
    }
    let safe = std::process::Command::new("git")
        .args(["config", "--get-all", "safe.directory"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    if !safe.is_empty() {
        ktstr_sdk::testing::skip("this host's git config sets safe.directory");
        return;
    }
    let origin = Origin::new();
    for p in [origin.dir.clone(), origin.dir.join(".git")] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let url = origin.file_url();
    let e = resolve_one(&src, &format!("git+{url}#tag=v6.99")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e:?}");
    assert!(
        e.message.contains("refuses the repository") && e.message.contains("owned by another user"),
        "{e}"
    );
    assert!(e.message.contains(&url));
    let hint = e.hint.unwrap();
    assert!(
        hint.contains(&format!("safe.directory {}", origin.dir.display())),
        "{hint}"
    );
}

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // A file we create is owned by our effective uid.
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().metadata().unwrap().uid() == 0 && std::env::var_os("SUDO_UID").is_none()
}

/// Cancels the run when the checkout step starts.
struct CancelOnCheckout(Cancellation);

impl Progress for CancelOnCheckout {
    fn step(&self, name: &str) {
        if name.starts_with("checking out") {
            self.0.cancel();
        }
    }
    fn line(&self, _: &str) {}
    fn finish_step(&self) {}
    fn warn(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

#[test]
fn cancelled_checkout_leaves_no_scratch_tree() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let cancel = Cancellation::new();
    let ctx = StageContext {
        progress: Arc::new(CancelOnCheckout(cancel.clone())),
        runner: Arc::new(ktstr_sdk::runner::SystemRunner),
        cancel,
    };
    let e = src
        .acquire(
            &KernelSpec::new(format!("git+{}#tag=v6.99", origin.file_url())),
            &ctx,
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e:?}");
    assert!(
        scratch_entries(&c.root).is_empty(),
        "{:?}",
        scratch_entries(&c.root)
    );
    // The mirror keeps what it fetched; the next run only checks out.
    let ok = src
        .acquire(
            &KernelSpec::new(format!("git+{}#tag=v6.99", origin.file_url())),
            &StageContext {
                progress: Arc::new(NoProgress),
                ..cx()
            },
        )
        .unwrap();
    assert_eq!(scratch_entries(&c.root).len(), 1);
    assert_eq!(ok.version.as_deref(), Some("6.99.1"));
}

#[test]
fn not_a_kernel_tree_is_refused_before_checkout() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    std::fs::write(origin.dir.join("Makefile"), "all:\n\ttrue\n").unwrap();
    git(&origin.dir, &["commit", "-q", "-am", "not a kernel"]);
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let url = origin.file_url();
    let e = src
        .acquire(&KernelSpec::new(format!("git+{url}#branch=main")), &cx())
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput, "{e:?}");
    assert!(e.message.contains("not a kernel source tree"), "{e}");
    assert!(e.message.contains("branch main"), "{e}");
    assert!(scratch_entries(&c.root).is_empty());
}

#[test]
fn full_history_with_depth_zero_and_protocol_v0_fallback() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let first = origin.rev("HEAD");
    let second = origin.bump(2);
    let _third = origin.bump(3);
    let c = cache();
    let url = origin.file_url();

    // depth = 0: the whole history arrives, the mirror is not shallow.
    let src = GitSource::from_config(&serde_json::json!({ "depth": 0 }))
        .unwrap()
        .with_root(&c.root);
    src.acquire(&KernelSpec::new(format!("git+{url}#branch=main")), &cx())
        .unwrap();
    let mirror = ktstr_plugin_git::mirror::git_mirror(&c.root, &url);
    assert!(!mirror.join("shallow").exists());
    assert_eq!(git(&mirror, &["cat-file", "-t", &first]), "commit");

    // A protocol v0 server refuses a commit that is no ref tip: the
    // fallback fetches the branches and tags instead.
    let c2 = cache();
    let src = GitSource::default().with_root(&c2.root);
    let spec = KernelSpec::new(format!("git+{url}#sha={second}"));
    let r = src.resolve(&spec, &cx()).unwrap().remove(0);
    assert_eq!(r.version, None);
    let mirror = ktstr_plugin_git::mirror::git_mirror(&c2.root, &url);
    assert!(!mirror.exists(), "a #sha= resolve creates nothing");
    // Create the mirror, then pin it to protocol v0.
    resolve_one(&src, &format!("git+{url}#branch=main")).unwrap();
    git(&mirror, &["config", "protocol.version", "0"]);
    let got = src.acquire(&r.spec, &cx()).unwrap();
    assert_eq!(got.identity.id, second);
    assert_eq!(got.version.as_deref(), Some("6.99.2"));
    // Only the fallback writes branches and tags into the mirror.
    let refs = git(&mirror, &["for-each-ref", "--format=%(refname)"]);
    assert!(refs.lines().any(|r| r == "refs/heads/main"), "{refs}");
    assert!(refs.lines().any(|r| r == "refs/tags/v6.99"), "{refs}");
}

#[test]
fn config_and_registration() {
    let e = GitSource::from_config(&serde_json::json!({ "depht": 1 })).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(
        e.message.starts_with("[plugin.git]: unknown field `depht`"),
        "{e}"
    );
    assert!(GitSource::from_config(&serde_json::json!({ "depth": 5 })).is_ok());

    let p = ktstr_sdk::registry::builtins()
        .into_iter()
        .find(|p| p.name == "git")
        .expect("git is registered");
    assert_eq!(p.constructor.kind(), StageKind::Source);
    let Constructor::Source(make) = p.constructor else {
        unreachable!()
    };
    let src = make(&PluginConfig::Null).unwrap();
    assert!(src.claims(&KernelSpec::new("git+https://h/linux.git#tag=v6.12")));
    assert!(!src.claims(&KernelSpec::new("https://h/linux-6.12.tar.xz")));
    assert!(!src.claims(&KernelSpec::new("./linux")));
    assert!(src.accepted_forms().iter().any(|f| f.contains("#tag=")));
}

/// Timings on a real kernel repository (`KTSTR_GIT_BENCH_REPO=/path/to/linux`
/// with a `v6.12` tag), next to `git clone --depth 1` of the same tag.
/// Run with `cargo test -p ktstr-plugin-git --test git_source -- --ignored --nocapture`.
#[test]
#[ignore = "needs a kernel repository in KTSTR_GIT_BENCH_REPO; prints timings"]
fn real_kernel_timings() {
    let Some(repo) = std::env::var_os("KTSTR_GIT_BENCH_REPO").map(PathBuf::from) else {
        ktstr_sdk::testing::skip("KTSTR_GIT_BENCH_REPO is not set");
        return;
    };
    let time = |what: &str, f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        let d = t.elapsed();
        eprintln!("{what:<50} {:>8.2} s", d.as_secs_f64());
    };
    let server = GitHttpServer::start(repo.parent().unwrap());
    let name = repo.file_name().unwrap().to_string_lossy().into_owned();
    for url in [format!("file://{}", repo.display()), server.url(&name)] {
        eprintln!("--- {url}");
        let c = cache();
        let src = GitSource::default().with_root(&c.root);
        let spec = format!("git+{url}#tag=v6.12");
        let mut r = None;
        time("resolve (empty mirror)", &mut || {
            r = Some(resolve_one(&src, &spec).unwrap())
        });
        let r = r.unwrap();
        assert!(!r.is_keyable());
        let mut got = None;
        time("acquire: fetch depth 1 + checkout", &mut || {
            got = Some(src.acquire(&r.spec, &cx()).unwrap())
        });
        let bytes: u64 = packs(&c.root, &url).iter().map(|p| p.1).sum();
        eprintln!(
            "{:<50} {:>8.1} MiB",
            "mirror pack size",
            bytes as f64 / 1048576.0
        );
        std::fs::remove_dir_all(&got.unwrap().source_dir).unwrap();
        time("resolve again (unchanged tag, keyable)", &mut || {
            assert!(resolve_one(&src, &spec).unwrap().is_keyable())
        });
        time("resolve pinned #sha= (no network)", &mut || {
            assert!(resolve_one(&src, &r.spec.raw).unwrap().is_keyable())
        });
        time("acquire again (checkout only)", &mut || {
            src.acquire(&r.spec, &cx()).unwrap();
        });
        let dest = c.root.join("git-clone");
        time("reference: git clone --depth 1 --branch v6.12", &mut || {
            let st = std::process::Command::new("git")
                .args(["clone", "-q", "--depth", "1", "--branch", "v6.12", &url])
                .arg(&dest)
                .status()
                .unwrap();
            assert!(st.success());
        });
    }
}

#[test]
fn concurrent_acquires_fetch_once() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let c = cache();
    let url = origin.file_url();
    let spec = KernelSpec::new(format!("git+{url}#tag=v6.99"));
    let trees: Vec<AcquiredSource> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let src = GitSource::default().with_root(&c.root);
                let spec = spec.clone();
                s.spawn(move || src.acquire(&spec, &cx()).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let dirs: std::collections::HashSet<_> = trees.iter().map(|t| &t.source_dir).collect();
    assert_eq!(dirs.len(), 3, "each acquire gets its own scratch tree");
    for t in &trees {
        assert_tree(t, &origin, &origin.rev("v6.99"), &c.root);
    }
    let pack_files = packs(&c.root, &url)
        .into_iter()
        .filter(|(name, _)| name.ends_with(".pack"))
        .count();
    assert_eq!(pack_files, 1, "the commit was fetched more than once");
}

#[test]
fn stalled_remote_times_out() {
    // The kernel completes the TCP handshake from the listen backlog; the
    // server never reads or answers.
    let server = support::SilentServer::start();
    let c = cache();
    let src = GitSource::from_config(&serde_json::json!({ "timeout_secs": 1 }))
        .unwrap()
        .with_root(&c.root);
    let url = format!("http://{}/linux.git", server.addr);
    let started = std::time::Instant::now();
    let e = resolve_one(&src, &format!("git+{url}#tag=v6.12")).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind, ErrorKind::Io, "{e:?}");
    assert_eq!(
        e.message,
        format!("git+{url}: the remote stopped responding")
    );
    assert!(e.hint.unwrap().contains("timeout_secs"));
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");

    let e = GitSource::from_config(&serde_json::json!({ "timeout_secs": 0 })).unwrap_err();
    assert!(e.message.contains("timeout_secs = 0"), "{e}");
}

/// Records every note, to check what the user was told.
#[derive(Default)]
struct Notes(std::sync::Mutex<Vec<String>>);

impl Progress for Notes {
    fn step(&self, _: &str) {}
    fn line(&self, _: &str) {}
    fn finish_step(&self) {}
    fn warn(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
    fn note(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_string());
    }
}

/// A fetch killed mid-way leaves git's lock files in the mirror (the flock
/// dies with the process, `shallow.lock` does not). The next fetch, holding
/// the mirror lock, knows they are stale: it removes them, says so, and
/// fetches, over HTTP as over file://.
#[test]
fn stale_lock_files_of_a_killed_fetch_are_recovered() {
    if !git_available() {
        return;
    }
    let origin = Origin::new();
    let c = cache();
    let src = GitSource::default().with_root(&c.root);
    let server = GitHttpServer::start(origin.dir.parent().unwrap());
    let url = server.url("origin");
    let first = origin.rev("HEAD");
    src.acquire(&KernelSpec::new(format!("git+{url}#sha={first}")), &cx())
        .unwrap();
    let mirror = ktstr_plugin_git::mirror::git_mirror(&c.root, &url);
    assert!(mirror.join("shallow").is_file(), "the mirror is shallow");

    // What a `kill -9` during the next fetch leaves behind.
    let planted = [
        mirror.join("shallow.lock"),
        mirror.join("packed-refs.lock"),
        mirror.join("config.lock"),
        mirror.join(format!("refs/ktstr/{first}.lock")),
    ];
    for p in &planted {
        std::fs::write(p, "").unwrap();
    }
    let second = origin.bump(5);
    let notes = Arc::new(Notes::default());
    let cx2 = StageContext {
        progress: notes.clone(),
        ..StageContext::quiet()
    };
    let got = src
        .acquire(&KernelSpec::new(format!("git+{url}#sha={second}")), &cx2)
        .expect("a stale shallow.lock must not break the remote");
    assert_tree(&got, &origin, &second, &c.root);
    assert_eq!(got.version.as_deref(), Some("6.99.5"));
    for p in &planted {
        assert!(!p.exists(), "{} was left", p.display());
    }
    let said = notes.0.lock().unwrap().join("\n");
    assert!(
        said.contains("shallow.lock") && said.contains("killed"),
        "the user was not told: {said}"
    );
}

/// `ktstr locks` learns the mirror locks from the source itself.
#[test]
fn lists_its_mirror_locks() {
    let root = tempfile::tempdir().unwrap();
    let lock = ktstr_plugin_git::mirror::mirror_lock(root.path(), "https://example.invalid/l.git");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "").unwrap();
    std::fs::write(lock.with_file_name("entry-k.lock"), "").unwrap();
    let locks = GitSource::default().with_root(root.path()).locks().unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0].kind, "mirror");
    assert_eq!(locks[0].path, lock);
}
