//! `ktstr cache gc` against real servers: `s3-cache` on s3s-fs and
//! `http-cache` on nginx (WebDAV), plus the local tier. Each skips with
//! the reason when its server is not installed (.ci/run installs both).
//!
//! Remote entries are seeded as files in the servers' own directories
//! (both keep objects as plain files): a manifest, an archive of a chosen
//! size and a last-use marker with a chosen time inside, so which entry
//! is least recently used is decided by the test, not by when it ran.
//! Object ages (what makes an archive without a manifest an orphan) are
//! the files' mtimes, which both servers report as the objects' times.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Fixture, Run};
use ktstr_test_servers::{Nginx, S3Server};
use serde_json::json;

const DAY: u64 = 24 * 60 * 60;

fn ago(secs: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(secs)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn key(n: u32) -> String {
    format!("6.99.1-tarball-x86_64-{n:016x}")
}

enum Server {
    S3(S3Server),
    Dav(Nginx),
}

/// One remote tier on a running server, and where its objects are on disk.
struct Remote {
    server: Server,
    plugin: &'static str,
    /// `<prefix>/v1` on the server's disk.
    base: PathBuf,
}

impl Remote {
    fn s3() -> Option<Self> {
        let s3 = S3Server::start()?;
        let base = s3.bucket_dir().join("ktstr/v1");
        Some(Self {
            server: Server::S3(s3),
            plugin: "s3-cache",
            base,
        })
    }

    fn dav() -> Option<Self> {
        let nginx = Nginx::start()?;
        let base = nginx.data_dir().join("v1");
        Some(Self {
            server: Server::Dav(nginx),
            plugin: "http-cache",
            base,
        })
    }

    /// Every server that is installed.
    fn all() -> Vec<Self> {
        [Self::s3(), Self::dav()].into_iter().flatten().collect()
    }

    /// A machine (cache root) using this tier.
    fn machine(&self) -> Fixture {
        match &self.server {
            Server::S3(s3) => Fixture::plain().on_s3(s3.port),
            Server::Dav(nginx) => Fixture::plain()
                .with_env("KTSTR_HTTP_CACHE_URL", &nginx.url())
                .with_env("KTSTR_HTTP_CACHE_RETRIES", "0"),
        }
    }

    fn read_only_env(&self) -> &'static str {
        match self.server {
            Server::S3(_) => "KTSTR_S3_READ_ONLY",
            Server::Dav(_) => "KTSTR_HTTP_CACHE_READ_ONLY",
        }
    }

    fn gc(&self, fx: &Fixture, extra: &[&str]) -> Run {
        let mut args = vec!["cache", "gc", "--plugin", self.plugin];
        args.extend_from_slice(extra);
        fx.run(&args)
    }

    fn write(&self, rel: &str, body: &[u8], mtime: SystemTime) {
        let path = self.base.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    /// An entry of `size` archive bytes, uploaded at `uploaded`, last used
    /// at `used` (no marker when `None`).
    fn seed(&self, key: &str, size: usize, uploaded: SystemTime, used: Option<SystemTime>) {
        let body = vec![b'k'; size];
        let sha = ktstr_sdk::hash::sha256_hex(&body);
        self.write(&format!("archives/{key}/{sha}.tar.zst"), &body, uploaded);
        let digest = "ab".repeat(32);
        let manifest = json!({
            "format": "ktstr-remote-cache",
            "version": 1,
            "key": key,
            "archive": {
                "name": format!("{sha}.tar.zst"),
                "sha256": sha,
                "size": size,
                "unpacked_size": size,
            },
            "metadata": {
                "schema": 1, "key": key,
                "source": {"kind": "tarball", "identity": digest},
                "version": "6.99.1", "arch": "x86_64", "image_name": "bzImage",
                "profile": "tiny", "config_sha256": digest, "builder": "kbuild",
                "toolchain": "gcc", "built_at": rfc3339(uploaded), "components": [],
                "artifacts": {
                    "bzImage": {"sha256": digest, "size": 10},
                    "config": {"sha256": digest, "size": 10},
                },
            },
            "uploaded_at": rfc3339(uploaded),
            "uploader": "test",
        });
        self.write(
            &format!("manifests/{key}.json"),
            manifest.to_string().as_bytes(),
            uploaded,
        );
        if let Some(used) = used {
            self.marker(key, used);
        }
    }

    fn marker(&self, key: &str, used: SystemTime) {
        let body = json!({"used_at": rfc3339(used)}).to_string();
        self.write(&format!("used/{key}"), body.as_bytes(), used);
    }

    /// A build lease as the lease writer makes it (`ktstr_sdk::lease`).
    fn lease(&self, key: &str, heartbeat: SystemTime, expiry_s: u64) {
        let record = ktstr_sdk::lease::LeaseRecord {
            heartbeat_at: humantime::format_rfc3339_millis(heartbeat).to_string(),
            host: "builder-1".into(),
            pid: 4242,
            ..ktstr_sdk::lease::LeaseRecord::new(
                &ktstr_sdk::cache::CacheKey::parse(key).unwrap(),
                "builder-1",
                "run-1",
                Duration::from_secs(expiry_s),
            )
        };
        self.write(
            &format!("leases/{key}.json"),
            record.to_json().as_bytes(),
            heartbeat,
        );
    }

    /// Every object, as a path relative to `<prefix>/v1`.
    fn objects(&self) -> BTreeSet<String> {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                    // s3s-fs keeps its own metadata beside objects.
                    if !rel.contains(".s3s") {
                        out.insert(rel);
                    }
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.base, &self.base, &mut out);
        out
    }

    /// Whether any object of `key` (manifest, archive, marker) is left.
    fn holds(&self, key: &str) -> bool {
        self.objects().iter().any(|o| o.contains(key))
    }
}

fn evicted(run: &Run) -> Vec<String> {
    run.json()["tiers"][0]["evicted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

/// Four entries of 1000 bytes whose last uses run opposite to their
/// build times: the cap keeps the two most recently used.
#[test]
fn a_bucket_over_its_cap_shrinks_to_it_least_recently_used_first() {
    for remote in Remote::all() {
        let fx = remote.machine();
        remote.seed(&key(1), 1000, ago(40 * DAY), Some(ago(DAY)));
        remote.seed(&key(2), 1000, ago(30 * DAY), Some(ago(10 * DAY)));
        // Never pulled: last used when it was uploaded.
        remote.seed(&key(3), 1000, ago(5 * DAY), None);
        remote.seed(&key(4), 1000, ago(25 * DAY), Some(ago(20 * DAY)));
        let before = remote.objects();

        let dry = remote.gc(&fx, &["--max-size", "2000", "--dry-run"]);
        dry.assert_ok();
        assert_eq!(remote.objects(), before, "--dry-run deleted something");
        let lines: Vec<&str> = dry.stdout.lines().collect();
        assert!(lines[1].contains(&key(4)) && lines[1].contains("would remove (max-size)"));
        assert!(lines[2].contains(&key(2)), "{}", dry.describe());
        assert_eq!(lines.len(), 3, "{}", dry.describe());
        dry.assert_stderr_has("nothing removed (--dry-run)");

        let run = remote.gc(&fx, &["--max-size", "2000", "--json"]);
        run.assert_ok();
        assert_eq!(evicted(&run), [key(4), key(2)], "{}", run.describe());
        let tier = &run.json()["tiers"][0];
        let fields: BTreeSet<&str> = tier
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            fields,
            BTreeSet::from([
                "tier",
                "description",
                "dry_run",
                "evicted",
                "spared",
                "orphans",
                "entries_before",
                "bytes_before",
                "entries_after",
                "bytes_after",
                "notes",
                "freed",
            ]),
            "the JSON field set changed: update docs/cli.md"
        );
        assert_eq!(tier["bytes_after"], 2000, "{tier}");
        assert_eq!(tier["entries_after"], 2, "{tier}");
        for gone in [key(2), key(4)] {
            assert!(!remote.holds(&gone), "{gone} left: {:?}", remote.objects());
        }
        for kept in [key(1), key(3)] {
            assert!(remote.objects().contains(&format!("manifests/{kept}.json")));
        }
        // The listing agrees, with each entry's last use.
        let list = fx.run(&["kernel", "list", "--json", "--plugin", remote.plugin]);
        let rows: Vec<_> = (list.json().as_array().unwrap().iter())
            .filter(|r| r["tier"] == remote.plugin)
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["last_used"].clone(),
                )
            })
            .collect();
        assert_eq!(rows.len(), 2, "{}", list.describe());
        assert!(rows.iter().all(|(_, used)| used.is_string()), "{rows:?}");

        // Under the cap: nothing more goes.
        let again = remote.gc(&fx, &["--max-size", "2000", "--json"]);
        assert!(evicted(&again).is_empty(), "{}", again.describe());
    }
}

#[test]
fn max_age_and_keep_last() {
    for remote in Remote::all() {
        let fx = remote.machine();
        for (n, days) in [(1, 1), (2, 10), (3, 40), (4, 60)] {
            remote.seed(&key(n), 100, ago(90 * DAY), Some(ago(days * DAY)));
        }
        // A push of key 4 in flight: its archive is up, its manifest not yet.
        let pushing = format!("archives/{}/{}.tar.zst", key(4), "77".repeat(32));
        remote.write(&pushing, b"new build", ago(30));
        // keep-last is a floor under the age rule.
        let run = remote.gc(&fx, &["--max-age", "30d", "--keep-last", "3", "--json"]);
        assert_eq!(evicted(&run), [key(4)], "{}", run.describe());
        let left: Vec<String> = (remote.objects().into_iter())
            .filter(|o| o.contains(&key(4)))
            .collect();
        assert_eq!(left, [pushing], "the in-flight push's archive must stay");
        let run = remote.gc(&fx, &["--max-age", "30d", "--json"]);
        assert_eq!(evicted(&run), [key(3)], "{}", run.describe());
        assert_eq!(run.json()["tiers"][0]["evicted"][0]["reason"], "max-age");
        // Alone, keep-last keeps exactly that many.
        let run = remote.gc(&fx, &["--keep-last", "1", "--json"]);
        assert_eq!(evicted(&run), [key(2)], "{}", run.describe());
        assert!(remote.holds(&key(1)) && !remote.holds(&key(2)));
    }
}

#[test]
fn orphans_go_and_an_entry_under_a_live_lease_stays() {
    for remote in Remote::all() {
        let fx = remote.machine();
        // An entry whose key a build holds a lease on: it stays.
        remote.seed(&key(1), 100, ago(60 * DAY), Some(ago(50 * DAY)));
        remote.lease(&key(1), ago(5), 600);
        // An entry that stays, with the losing archive of a concurrent push.
        remote.seed(&key(2), 100, ago(60 * DAY), Some(ago(DAY)));
        let loser = format!("archives/{}/{}.tar.zst", key(2), "cd".repeat(32));
        remote.write(&loser, b"loser", ago(2 * 3600));
        // Archives without a manifest: one left by a killed push, one of a
        // push still uploading (young).
        let dead = format!("archives/{}/{}.tar.zst", key(3), "ef".repeat(32));
        remote.write(&dead, b"dead push", ago(2 * 3600));
        let young = format!("archives/{}/{}.tar.zst", key(4), "12".repeat(32));
        remote.write(&young, b"uploading", ago(60));
        // A lease whose holder died, and a marker whose entry is gone.
        remote.lease(&key(5), ago(3600), 60);
        remote.marker(&key(6), ago(3 * DAY));

        let dry = remote.gc(&fx, &["--max-age", "30d", "--dry-run", "--json"]);
        dry.assert_ok();
        let orphans = |run: &Run| -> BTreeSet<String> {
            (run.json()["tiers"][0]["orphans"].as_array().unwrap().iter())
                .map(|o| {
                    let l = o["location"].as_str().unwrap();
                    l[l.find("/v1/").unwrap() + 4..].to_string()
                })
                .collect()
        };
        let expected: BTreeSet<String> = [
            loser.clone(),
            dead.clone(),
            format!("leases/{}.json", key(5)),
            format!("used/{}", key(6)),
        ]
        .into();
        assert_eq!(orphans(&dry), expected, "{}", dry.describe());
        assert!(remote.objects().contains(&dead), "--dry-run deleted");

        let run = remote.gc(&fx, &["--max-age", "30d"]);
        run.assert_ok();
        let table = &run.stdout;
        assert!(
            table.contains(&key(1))
                && table.contains("kept: a build holds its lease (host builder-1 pid 4242"),
            "{}",
            run.describe()
        );
        assert!(
            table.contains("removed: archive without a manifest"),
            "{table}"
        );
        let left = remote.objects();
        assert!(
            left.contains(&format!("manifests/{}.json", key(1))),
            "{left:?}"
        );
        assert!(
            left.contains(&format!("leases/{}.json", key(1))),
            "live lease removed"
        );
        assert!(left.contains(&young), "a young archive went: {left:?}");
        for gone in [&loser, &dead] {
            assert!(!left.contains(gone), "{gone} left");
        }
        assert!(
            left.contains(&format!("manifests/{}.json", key(2))),
            "{left:?}"
        );
        assert!(!remote.holds(&key(5)) && !remote.holds(&key(6)), "{left:?}");
    }
}

#[test]
fn a_read_only_tier_and_a_missing_tier_are_refused() {
    let Some(remote) = Remote::s3() else { return };
    remote.seed(&key(1), 100, ago(DAY), None);
    let before = remote.objects();
    let fx = remote.machine().with_env("KTSTR_S3_READ_ONLY", "1");
    let run = remote.gc(&fx, &["--keep-last", "0"]);
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has("not collecting garbage in s3-cache: it is read-only")
        .assert_stderr_has("KTSTR_S3_READ_ONLY");
    assert_eq!(remote.objects(), before);

    let none = Fixture::plain().run(&["cache", "gc", "--remote", "--max-size", "1G"]);
    none.assert_fails()
        .assert_stderr_has("no remote cache tier is configured");
    let no_policy = Fixture::plain().run(&["cache", "gc"]);
    assert_eq!(no_policy.code(), Some(2), "{}", no_policy.describe());
    let bad_age = Fixture::plain().run(&["cache", "gc", "--max-age", "soon"]);
    assert_eq!(bad_age.code(), Some(2), "{}", bad_age.describe());
    bad_age.assert_stderr_has("like 30d");
}

fn local_keys(fx: &Fixture) -> Vec<String> {
    fx.list_json()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

/// A pull records the use in the bucket (a read-only one does not); a pull
/// that finds the manifest but not the archive (gc removed it in between)
/// is a clean miss, and pulls racing a real gc end with a verified entry
/// or none.
#[test]
fn pulls_record_their_use_and_never_install_a_half_deleted_entry() {
    for (n, remote) in Remote::all().into_iter().enumerate() {
        let shared = tempfile::tempdir().unwrap();
        let spec = common::fixture_tarball(shared.path(), &format!("6.99.{}", 70 + n));
        let a = remote.machine();
        let built = a.run(&[
            "build",
            "--kernel",
            spec.to_str().unwrap(),
            "--plugin",
            remote.plugin,
        ]);
        let key = built.cached_key();
        let marker = format!("used/{key}");
        assert!(!remote.objects().contains(&marker), "a push is not a use");

        let ro = remote.machine().with_env(remote.read_only_env(), "1");
        ro.run(&["cache", "pull", &key, "--plugin", remote.plugin])
            .assert_ok();
        assert!(
            !remote.objects().contains(&marker),
            "a read-only tier wrote"
        );
        let b = remote.machine();
        b.run(&["cache", "pull", &key, "--plugin", remote.plugin])
            .assert_ok();
        let read_marker = || {
            let body = std::fs::read(remote.base.join(&marker)).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            humantime::parse_rfc3339(v["used_at"].as_str().unwrap()).unwrap()
        };
        assert!(ago(60) < read_marker(), "the pull did not record its use");
        // A day-old marker is refreshed by the next pull.
        remote.marker(&key, ago(2 * DAY));
        remote
            .machine()
            .run(&["cache", "pull", &key, "--plugin", remote.plugin])
            .assert_ok();
        assert!(
            ago(60) < read_marker(),
            "a day-old marker was not refreshed"
        );

        // The manifest read, the archive gone: what a pull sees when gc
        // deletes between its two GETs.
        let archive = (remote.objects().into_iter())
            .find(|o| o.starts_with(&format!("archives/{key}/")))
            .unwrap();
        std::fs::remove_file(remote.base.join(&archive)).unwrap();
        let c = remote.machine();
        let pull = c.run(&["cache", "pull", &key, "--plugin", remote.plugin]);
        pull.assert_fails().assert_stderr_has("is missing");
        assert!(
            local_keys(&c).is_empty(),
            "a half-deleted entry was installed"
        );

        // Real races: a pull and a gc that evicts everything, started together.
        for round in 0..3 {
            a.run(&["cache", "push", &key, "--plugin", remote.plugin])
                .assert_ok();
            let d = remote.machine();
            let pulling = d.spawn(&["cache", "pull", &key, "--plugin", remote.plugin], &[]);
            let gc = remote.gc(&d, &["--keep-last", "0"]);
            gc.assert_ok();
            let pulled = pulling.wait(Duration::from_secs(60));
            match pulled.code() {
                Some(0) => {
                    d.run(&["kernel", "verify"]).assert_ok();
                }
                _ => assert!(
                    local_keys(&d).is_empty(),
                    "round {round}: a failed pull left an entry: {}",
                    pulled.describe()
                ),
            }
            // A pull that ended after the removal may have recorded its use:
            // a marker without an entry, which the next gc removes as an
            // orphan after an hour. Nothing else of the entry is left.
            let left = remote.objects();
            assert!(
                left.iter().all(|o| o == &marker || !o.contains(&key)),
                "round {round}: gc left {left:?}"
            );
        }
    }
}

/// Without --remote: the local cache, by the marker each hit touches.
#[test]
fn the_local_cache_is_collected_by_last_use() {
    let shared = tempfile::tempdir().unwrap();
    let fx = Fixture::plain();
    let mut keys = Vec::new();
    let mut specs = Vec::new();
    for v in ["6.99.11", "6.99.12", "6.99.13"] {
        let spec = common::fixture_tarball(shared.path(), v);
        keys.push(
            fx.run(&["build", "--kernel", spec.to_str().unwrap()])
                .cached_key(),
        );
        specs.push(spec);
    }
    // Built 11, 12, 13; used 13 longest ago, then 11, then 12.
    for (key, days) in keys.iter().zip([5, 1, 9]) {
        std::fs::File::options()
            .write(true)
            .open(fx.cache.join("used").join(key))
            .unwrap()
            .set_modified(ago(days * DAY))
            .unwrap();
    }
    let dry = fx.run(&["cache", "gc", "--keep-last", "1", "--dry-run", "--json"]);
    assert_eq!(
        evicted(&dry),
        [keys[2].clone(), keys[0].clone()],
        "{}",
        dry.describe()
    );
    assert_eq!(local_keys(&fx).len(), 3, "--dry-run removed");
    let size_of_newest: u64 = {
        let all = fx.run(&["cache", "gc", "--max-size", "0", "--dry-run", "--json"]);
        let evicted = all.json()["tiers"][0]["evicted"].clone();
        (evicted.as_array().unwrap().iter())
            .find(|e| e["key"] == keys[1].as_str())
            .unwrap()["size"]
            .as_u64()
            .unwrap()
    };
    let run = fx.run(&[
        "cache",
        "gc",
        "--max-size",
        &size_of_newest.to_string(),
        "--json",
    ]);
    run.assert_ok();
    assert_eq!(
        evicted(&run),
        [keys[2].clone(), keys[0].clone()],
        "{}",
        run.describe()
    );
    assert_eq!(local_keys(&fx), [keys[1].clone()]);
    assert!(
        !fx.cache.join("used").join(&keys[2]).exists(),
        "marker kept"
    );
    let lock = |k: &str| fx.cache.join(format!(".locks/entry-{k}.lock"));
    assert!(lock(&keys[1]).exists(), "the lock of a cached entry went");
    assert!(
        !lock(&keys[2]).exists(),
        "the lock of an evicted entry was kept"
    );
    // Listing is not a use; a hit is.
    let last_used = || {
        let list = fx.run(&["kernel", "list", "--json"]);
        let used = list.json()[0]["last_used"].as_str().unwrap().to_string();
        humantime::parse_rfc3339(&used).unwrap()
    };
    assert!(last_used() < ago(DAY / 2), "listing counted as a use");
    let hit = fx.run(&["build", "--kernel", specs[1].to_str().unwrap()]);
    assert_eq!(hit.hit_key(), keys[1]);
    assert!(last_used() > ago(60), "a hit did not record its use");
}
