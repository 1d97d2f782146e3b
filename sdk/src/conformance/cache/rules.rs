//! The rules: each drives backends over a fresh fixture and, when the
//! contract is broken, says what it observed.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::handle::{Handle, describe_error};
use super::sources::{Build, Shape, built_at};
use super::{Outcome, Rule, Suite};
use crate::cache::{CacheEntry, CacheKey, Listed, sort_newest_first};
use crate::error::{ErrorKind, StageError};

/// Size of the images most rules store (odd on purpose).
const SMALL: u64 = 100_003;

/// Why a rule stopped early.
enum Stop {
    Broken(String),
    Skip(String),
}

impl From<String> for Stop {
    fn from(observed: String) -> Self {
        Self::Broken(observed)
    }
}

type Checked = Result<(), Stop>;

/// Stop the rule as broken with an observation unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Stop::Broken(format!($($fmt)+)));
        }
    };
}

pub(super) fn check(rule: Rule, s: &Suite<'_, '_>) -> Outcome {
    let checked = catch_unwind(AssertUnwindSafe(|| match rule {
        Rule::Miss => miss(s),
        Rule::RoundTrip => round_trip(s),
        Rule::ListOrder => list_order(s),
        Rule::Remove => remove(s),
        Rule::Replace => replace(s),
        Rule::AtomicReplace => atomic_replace(s),
        Rule::PartialStore => partial_store(s),
        Rule::ReadOnly => read_only(s),
        Rule::LargeArtifact => large_artifact(s),
        Rule::Corrupt => corrupt(s),
        Rule::Cancellation => cancellation(s),
    }));
    match checked {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(Stop::Broken(observed))) => Outcome::Broken(observed),
        Ok(Err(Stop::Skip(why))) => Outcome::Skipped(why),
        Err(panic) => Outcome::Broken(format!(
            "the rule panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    }
}

/// A writable instance: the rules that store need one.
fn writable(s: &Suite<'_, '_>) -> Result<Handle, Stop> {
    let b = s.instance();
    ensure!(
        !b.capabilities()?.read_only,
        "the backend `make` returned says read_only in capabilities(); the suite needs a writable \
         instance (pass the read-only one to Options::read_only)"
    );
    Ok(b)
}

/// A listing as the observations quote it: `key (built_at)` or `key (corrupt: why)`.
fn rows(listed: &[Listed]) -> Vec<String> {
    listed
        .iter()
        .map(|row| match row {
            Listed::Ok(e) => format!("{} ({})", e.key, e.metadata.built_at),
            Listed::Corrupt { key, reason } => format!("{key} (corrupt: {reason})"),
        })
        .collect()
}

/// Check a hit for `key`: the key, an origin, the metadata and the files of `build`.
fn check_hit(what: &str, key: &CacheKey, build: &Build, hit: &CacheEntry) -> Checked {
    ensure!(
        &hit.key == key,
        "{what} returned an entry for key {}",
        hit.key
    );
    ensure!(
        !hit.origin.is_empty(),
        "{what} returned an entry with an empty origin (say which backend answered)"
    );
    build
        .check_metadata(&hit.metadata)
        .map_err(|e| format!("{what} returned {e}"))?;
    build
        .check_files(hit)
        .map_err(|e| format!("{what} returned an entry whose {e}"))?;
    Ok(())
}

/// Look `key` up and check it holds `build`.
fn expect_hit(b: &Handle, what: &str, key: &CacheKey, build: &Build) -> Checked {
    let hit = match b.try_lookup(key)? {
        Ok(Some(hit)) => hit,
        Ok(None) => return Err(Stop::Broken(format!("{what} was a miss"))),
        Err(e) => {
            return Err(Stop::Broken(format!(
                "{what} failed: {}",
                describe_error(&e)
            )));
        }
    };
    check_hit(what, key, build, &hit)
}

/// Look `key` up and expect a miss.
fn expect_miss(b: &Handle, what: &str, key: &CacheKey) -> Checked {
    match b.try_lookup(key)? {
        Ok(None) => Ok(()),
        Ok(Some(hit)) => Err(Stop::Broken(format!(
            "{what} returned an entry (built_at {}, in {})",
            hit.metadata.built_at,
            hit.dir.display()
        ))),
        Err(e) => Err(Stop::Broken(format!(
            "{what} failed instead of missing: {}",
            describe_error(&e)
        ))),
    }
}

/// The keys a listing holds, in order.
fn keys(listed: &[Listed]) -> Vec<String> {
    listed
        .iter()
        .map(|row| match row {
            Listed::Ok(e) => e.key.to_string(),
            Listed::Corrupt { key, .. } => key.clone(),
        })
        .collect()
}

fn miss(s: &Suite<'_, '_>) -> Checked {
    let b = s.instance();
    let key = s.key("absent");
    expect_miss(&b, "lookup of a key never stored", &key)?;
    let listed = b.list()?;
    ensure!(
        listed.is_empty(),
        "list of an empty cache returned {:?}",
        rows(&listed)
    );
    ensure!(
        !b.remove(&key)?,
        "remove of a key never stored returned Ok(true)"
    );
    Ok(())
}

fn round_trip(s: &Suite<'_, '_>) -> Checked {
    let b = writable(s)?;
    let full_key = s.key("full");
    let minimal_key = s.key("minimal");
    let builds = [
        (&full_key, s.build(&full_key, 1, &Shape::full(SMALL))),
        (
            &minimal_key,
            s.build(&minimal_key, 2, &Shape::minimal(SMALL / 2)),
        ),
    ];
    for (key, build) in &builds {
        let stored = b.store(key, &build.artifacts, &build.metadata)?;
        ensure!(
            &stored.key == *key,
            "store {key} returned an entry for key {}",
            stored.key
        );
        build
            .check_metadata(&stored.metadata)
            .map_err(|e| format!("store {key} returned {e}"))?;
        // `dir` is the entry's directory, or empty for a backend that keeps
        // no directory (docs/cache.md, "Backend contract").
        stored
            .check_returned("store", Some(key), &b.describe())
            .map_err(|e| e.message)?;
        if stored.is_local() {
            build
                .check_files(&stored)
                .map_err(|e| format!("store {key} returned an entry whose {e}"))?;
        }
        build.check_sources_untouched()?;
        expect_hit(
            &b,
            &format!("lookup {key} right after storing it"),
            key,
            build,
        )?;
    }
    // Another process (or machine) over the same storage sees the same.
    let other = s.instance();
    for (key, build) in &builds {
        expect_hit(
            &other,
            &format!("lookup {key} by a second instance over the same storage"),
            key,
            build,
        )?;
    }
    Ok(())
}

fn list_order(s: &Suite<'_, '_>) -> Checked {
    let b = writable(s)?;
    // Stored out of order; two share a built_at, so the key decides.
    let (old, same_b, newest, same_a) = (s.key("old"), s.key("b"), s.key("new"), s.key("a"));
    let mut builds = Vec::new();
    for (key, version) in [(&old, 1), (&same_b, 3), (&newest, 5), (&same_a, 4)] {
        let mut build = s.build(key, version, &Shape::minimal(1000 + version as u64));
        if key == &same_a {
            build.metadata.built_at = built_at(3);
        }
        b.store(key, &build.artifacts, &build.metadata)?;
        builds.push((key.clone(), build));
    }
    let listed = b.list()?;
    let want: Vec<String> = [&newest, &same_a, &same_b, &old]
        .iter()
        .map(|k| k.to_string())
        .collect();
    ensure!(
        keys(&listed) == want,
        "list returned {:?}; sort_newest_first order is {want:?}",
        rows(&listed)
    );
    let mut sorted = listed.clone();
    sort_newest_first(&mut sorted);
    ensure!(
        keys(&sorted) == keys(&listed),
        "list is not in sort_newest_first order: {:?}",
        rows(&listed)
    );
    for row in &listed {
        let Listed::Ok(entry) = row else {
            return Err(Stop::Broken(format!(
                "list reports an entry just stored as unusable: {:?}",
                rows(std::slice::from_ref(row))
            )));
        };
        let (_, build) = builds
            .iter()
            .find(|(k, _)| k == &entry.key)
            .expect("listed keys were checked");
        build
            .check_metadata(&entry.metadata)
            .map_err(|e| format!("list row {}: {e}", entry.key))?;
    }
    Ok(())
}

fn remove(s: &Suite<'_, '_>) -> Checked {
    let b = writable(s)?;
    // One key is a prefix of the other: object stores list by prefix.
    let (k1, k10) = (s.key("x-1"), s.key("x-10"));
    let b1 = s.build(&k1, 1, &Shape::minimal(SMALL));
    let b10 = s.build(&k10, 2, &Shape::full(SMALL));
    b.store(&k1, &b1.artifacts, &b1.metadata)?;
    b.store(&k10, &b10.artifacts, &b10.metadata)?;
    ensure!(
        b.remove(&k1)?,
        "remove {k1} of a stored entry returned Ok(false)"
    );
    expect_miss(&b, &format!("lookup {k1} after removing it"), &k1)?;
    expect_miss(
        &s.instance(),
        &format!("lookup {k1} by a second instance after removing it"),
        &k1,
    )?;
    expect_hit(&b, &format!("lookup {k10} after removing {k1}"), &k10, &b10)?;
    let listed = b.list()?;
    ensure!(
        keys(&listed) == [k10.to_string()],
        "list after removing {k1} returned {:?}; want only {k10}",
        rows(&listed)
    );
    ensure!(
        !b.remove(&k1)?,
        "remove {k1} a second time returned Ok(true); nothing was left to remove"
    );
    ensure!(b.remove(&k10)?, "remove {k10} returned Ok(false)");
    let listed = b.list()?;
    ensure!(
        listed.is_empty(),
        "list after removing every entry returned {:?}",
        rows(&listed)
    );
    Ok(())
}

fn replace(s: &Suite<'_, '_>) -> Checked {
    let b = writable(s)?;
    let key = s.key("replaced");
    let v1 = s.build(&key, 1, &Shape::full(SMALL));
    let v2 = s.build(&key, 2, &Shape::minimal(SMALL + 777));
    // Newer over older, then older over newer: a store always replaces.
    for (from, to) in [(&v1, &v2), (&v2, &v1)] {
        b.store(&key, &from.artifacts, &from.metadata)?;
        b.store(&key, &to.artifacts, &to.metadata)?;
        expect_hit(
            &s.instance(),
            &format!(
                "lookup {key} after storing version {} over version {}",
                to.version, from.version
            ),
            &key,
            to,
        )?;
        let listed = b.list()?;
        ensure!(
            keys(&listed) == [key.to_string()]
                && matches!(&listed[0], Listed::Ok(e) if e.metadata.built_at == to.metadata.built_at),
            "list after replacing {key} by version {} returned {:?}",
            to.version,
            rows(&listed)
        );
    }
    Ok(())
}

fn atomic_replace(s: &Suite<'_, '_>) -> Checked {
    let key = s.key("contended");
    let first = s.build(&key, 1, &Shape::full(SMALL));
    writable(s)?.store(&key, &first.artifacts, &first.metadata)?;
    // Two writers, each storing versions of its own; every version has its
    // own built_at and bytes, and the writers' file sets differ.
    let rounds = s.options.rounds;
    let writers: Vec<Vec<Build>> = (0..2u32)
        .map(|w| {
            (0..rounds)
                .map(|r| {
                    let version = 10 + 100 * w + r;
                    let shape = if w == 0 {
                        Shape::full(SMALL + version as u64)
                    } else {
                        Shape::minimal(SMALL + version as u64)
                    };
                    s.build(&key, version, &shape)
                })
                .collect()
        })
        .collect();
    let mut versions: HashMap<String, &Build> = HashMap::new();
    versions.insert(first.metadata.built_at.clone(), &first);
    for build in writers.iter().flatten() {
        versions.insert(build.metadata.built_at.clone(), build);
    }
    let handles: Vec<Handle> = (0..4).map(|_| s.instance()).collect();
    let (writer_handles, reader_handles) = handles.split_at(2);
    let broken: Mutex<Option<String>> = Mutex::new(None);
    let fail = |why: String| {
        broken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
    };
    let writing = AtomicUsize::new(2);
    let (hits, misses, unsure) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for (w, builds) in writer_handles.iter().zip(&writers) {
            let (writing, stop, fail) = (&writing, &stop, &fail);
            let key = &key;
            scope.spawn(move || {
                for build in builds {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(why) = w.store(key, &build.artifacts, &build.metadata) {
                        fail(format!("while another instance stored {key} too: {why}"));
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                writing.fetch_sub(1, Ordering::SeqCst);
            });
        }
        for r in reader_handles {
            let (writing, stop, fail) = (&writing, &stop, &fail);
            let (hits, misses, unsure, versions, key) = (&hits, &misses, &unsure, &versions, &key);
            scope.spawn(move || {
                let mut n = 0;
                while (writing.load(Ordering::SeqCst) > 0 || n < 3) && !stop.load(Ordering::Relaxed)
                {
                    n += 1;
                    match read_one(r, key, versions) {
                        Ok(Read::Hit) => hits.fetch_add(1, Ordering::Relaxed),
                        Ok(Read::Miss) => misses.fetch_add(1, Ordering::Relaxed),
                        Ok(Read::Replaced) => unsure.fetch_add(1, Ordering::Relaxed),
                        Err(why) => {
                            fail(why);
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    };
                }
            });
        }
    });
    if let Some(why) = broken.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(Stop::Broken(why));
    }
    let (hits, misses, unsure) = (hits.into_inner(), misses.into_inner(), unsure.into_inner());
    ensure!(
        hits > 0,
        "no lookup returned {key} while it was being replaced ({misses} misses, {unsure} \
         entries replaced before their files could be read)"
    );
    // The last store to finish wins: one writer's last version.
    let reader = s.instance();
    let last = reader
        .lookup(&key)?
        .ok_or_else(|| format!("lookup {key} after the concurrent stores was a miss"))?;
    let lasts: Vec<&Build> = writers.iter().filter_map(|w| w.last()).collect();
    let Some(build) = lasts
        .iter()
        .find(|b| b.metadata.built_at == last.metadata.built_at)
    else {
        return Err(Stop::Broken(format!(
            "after the concurrent stores {key} holds built_at {}, which is neither writer's last store",
            last.metadata.built_at
        )));
    };
    check_hit(
        &format!("lookup {key} after the concurrent stores"),
        &key,
        build,
        &last,
    )?;
    let listed = reader.list()?;
    ensure!(
        keys(&listed) == [key.to_string()],
        "list after concurrent stores of {key} returned {:?}",
        rows(&listed)
    );
    Ok(())
}

/// What one lookup during concurrent stores saw.
enum Read {
    /// A whole stored version.
    Hit,
    Miss,
    /// The entry was replaced between the lookup and reading its files, so
    /// the files could not be judged (entries are directories the next
    /// store may swap).
    Replaced,
}

/// One lookup of `key` while other instances store it: a miss, or a hit
/// that is wholly one stored version.
fn read_one(
    r: &Handle,
    key: &CacheKey,
    versions: &HashMap<String, &Build>,
) -> Result<Read, String> {
    let hit = match r.try_lookup(key)? {
        Ok(None) => return Ok(Read::Miss),
        Ok(Some(hit)) => hit,
        Err(e) => {
            return Err(format!(
                "lookup {key} failed while another instance replaced it: {}; a reader must see \
                 the old entry or the new one",
                describe_error(&e)
            ));
        }
    };
    let Some(build) = versions.get(&hit.metadata.built_at) else {
        return Err(format!(
            "lookup {key} returned metadata with built_at {}, which no store wrote",
            hit.metadata.built_at
        ));
    };
    build
        .check_metadata(&hit.metadata)
        .map_err(|e| format!("lookup {key} during concurrent stores returned a mix: {e}"))?;
    let Err(why) = build.check_files(&hit) else {
        return Ok(Read::Hit);
    };
    // Every version is stored once, so if the entry still is this version,
    // its files were never this version's: a mix.
    match r.try_lookup(key)? {
        Ok(Some(again)) if again.metadata.built_at == hit.metadata.built_at => Err(format!(
            "lookup {key} during concurrent stores returned version {} whose {why}, and a \
             second lookup still returned version {}: a mix of two stores",
            build.version, build.version
        )),
        _ => Ok(Read::Replaced),
    }
}

/// Check that a failed store's error names `bad` (the input at fault).
fn names_input(e: &StageError, what: &str, bad: &Path) -> Checked {
    let name = bad
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = format!("{e} {}", e.hint.as_deref().unwrap_or(""));
    ensure!(
        text.contains(&name),
        "store with {what} failed, but its error does not name the bad input {}: {}",
        bad.display(),
        describe_error(e)
    );
    Ok(())
}

fn partial_store(s: &Suite<'_, '_>) -> Checked {
    let b = writable(s)?;
    let bad = s.scratch("bad-inputs");
    let missing = bad.join("no-such-bzImage");
    let config_dir = bad.join("config-is-a-directory");
    let log_dir = bad.join("log-is-a-directory");
    for d in [&config_dir, &log_dir] {
        std::fs::create_dir_all(d)
            .unwrap_or_else(|e| panic!("cache conformance: create {}: {e}", d.display()));
    }
    let kept = s.key("kept");
    let kept_build = s.build(&kept, 1, &Shape::full(SMALL));
    b.store(&kept, &kept_build.artifacts, &kept_build.metadata)?;

    type Spoil = fn(&mut crate::cache::Artifacts, &Path);
    let cases: [(&str, &str, &Path, Spoil); 4] = [
        (
            "missing-image",
            "an image that does not exist",
            &missing,
            |a, p| a.image = p.into(),
        ),
        (
            "config-dir",
            "a directory as the config",
            &config_dir,
            |a, p| a.config = p.into(),
        ),
        (
            "log-dir",
            "a directory as the build log (the last file)",
            &log_dir,
            |a, p| a.log = Some(p.into()),
        ),
        (
            "kept",
            "a missing vmlinux, over an existing entry",
            &missing,
            |a, p| a.vmlinux = Some(p.into()),
        ),
    ];
    for (i, (name, what, path, spoil)) in cases.into_iter().enumerate() {
        let key = s.key(name);
        let mut build = s.build(&key, 2 + i as u32, &Shape::full(SMALL + i as u64));
        spoil(&mut build.artifacts, path);
        match b.try_store(&key, &build.artifacts, &build.metadata)? {
            Ok(entry) => {
                return Err(Stop::Broken(format!(
                    "store {key} with {what} succeeded (returned {})",
                    entry.dir.display()
                )));
            }
            Err(e) => names_input(&e, what, path)?,
        }
        for (who, h) in [("", &b), (" by a second instance", &s.instance())] {
            let lookup = format!("lookup {key}{who} after a failed store with {what}");
            if key == kept {
                expect_hit(h, &lookup, &key, &kept_build)?;
            } else {
                expect_miss(h, &lookup, &key)?;
            }
        }
        let listed = b.list()?;
        ensure!(
            keys(&listed) == [kept.to_string()],
            "list after a failed store of {key} with {what} returned {:?}; want only {kept}",
            rows(&listed)
        );
    }
    Ok(())
}

/// A listing as compared before and after refused writes.
fn snapshot(b: &Handle) -> Result<Vec<String>, String> {
    Ok(b.list()?
        .iter()
        .map(|row| match row {
            Listed::Ok(e) => format!(
                "{} {} {:?}",
                e.key, e.metadata.built_at, e.metadata.artifacts
            ),
            Listed::Corrupt { key, reason } => format!("{key} corrupt: {reason}"),
        })
        .collect())
}

/// Check that a write on a read-only instance was refused properly.
fn refused(call: &str, r: crate::error::Result<impl std::fmt::Debug>) -> Checked {
    match r {
        Ok(v) => Err(Stop::Broken(format!(
            "{call} on the read-only instance succeeded (returned {v:?})"
        ))),
        Err(e) if e.kind != ErrorKind::Unsupported => Err(Stop::Broken(format!(
            "{call} on the read-only instance failed with kind {:?}, not Unsupported: {}",
            e.kind,
            describe_error(&e)
        ))),
        Err(e) if e.hint.is_none() => Err(Stop::Broken(format!(
            "{call} on the read-only instance was refused without a hint saying how to make it \
             writable: {}",
            describe_error(&e)
        ))),
        Err(_) => Ok(()),
    }
}

fn read_only(s: &Suite<'_, '_>) -> Checked {
    let Some(ro) = s.read_only_instance() else {
        return Err(Stop::Skip(
            "Options::read_only not given, so the backend's read-only mode is not checked".into(),
        ));
    };
    let w = writable(s)?;
    let key = s.key("present");
    let v1 = s.build(&key, 1, &Shape::full(SMALL));
    w.store(&key, &v1.artifacts, &v1.metadata)?;
    ensure!(
        ro.capabilities()?.read_only,
        "the instance Options::read_only made says read_only: false in capabilities()"
    );
    let before = snapshot(&w)?;
    expect_hit(
        &ro,
        &format!("lookup {key} on the read-only instance"),
        &key,
        &v1,
    )?;
    expect_miss(
        &ro,
        "lookup of a key never stored, on the read-only instance",
        &s.key("absent"),
    )?;
    let fresh = s.key("new");
    let v2 = s.build(&fresh, 2, &Shape::minimal(SMALL));
    refused(
        &format!("store of a new key {fresh}"),
        ro.try_store(&fresh, &v2.artifacts, &v2.metadata)?
            .map(|e| e.dir),
    )?;
    let v3 = s.build(&key, 3, &Shape::minimal(SMALL));
    refused(
        &format!("store over the existing {key}"),
        ro.try_store(&key, &v3.artifacts, &v3.metadata)?
            .map(|e| e.dir),
    )?;
    refused(&format!("remove {key}"), ro.try_remove(&key)?)?;
    let after = snapshot(&w)?;
    ensure!(
        before == after,
        "the cache changed after refused writes on the read-only instance: list was {before:?}, is {after:?}"
    );
    expect_hit(&w, &format!("lookup {key} after refused writes"), &key, &v1)
}

fn large_artifact(s: &Suite<'_, '_>) -> Checked {
    let b = writable(s)?;
    let key = s.key("large");
    let shape = Shape {
        image_name: "bzImage",
        image_len: s.options.large_size,
        vmlinux: false,
        log: false,
    };
    let build = s.build(&key, 1, &shape);
    let stored = b.store(&key, &build.artifacts, &build.metadata)?;
    build
        .check_metadata(&stored.metadata)
        .map_err(|e| format!("store {key} returned {e}"))?;
    expect_hit(
        &s.instance(),
        &format!("lookup of the {} byte {key}", s.options.large_size),
        &key,
        &build,
    )?;
    ensure!(b.remove(&key)?, "remove {key} returned Ok(false)");
    Ok(())
}

/// A lookup of the damaged `key` must not serve it.
fn damaged_not_served(b: &Handle, who: &str, key: &CacheKey, build: &Build) -> Checked {
    match b.try_lookup(key)? {
        Ok(None) => Ok(()),
        Err(e) if e.kind == ErrorKind::Corrupt => Ok(()),
        Err(e) => Err(Stop::Broken(format!(
            "lookup {key}{who} of a damaged entry failed with kind {:?}, not Corrupt (so the host \
             cannot tell damage from an outage): {}",
            e.kind,
            describe_error(&e)
        ))),
        Ok(Some(hit)) => match check_hit("", key, build, &hit) {
            Err(Stop::Broken(why)) => Err(Stop::Broken(format!(
                "lookup {key}{who} served the damaged entry: {why}"
            ))),
            _ => Err(Stop::Broken(format!(
                "lookup {key}{who} returned the entry intact after Options::corrupt damaged it; \
                 the hook damaged nothing a reader can tell (or the backend repaired it: then skip \
                 this rule)"
            ))),
        },
    }
}

fn corrupt(s: &Suite<'_, '_>) -> Checked {
    if s.options.corrupt.is_none() {
        return Err(Stop::Skip(
            "Options::corrupt not given, so detection of damaged entries is not checked".into(),
        ));
    }
    let b = writable(s)?;
    let key = s.key("damaged");
    let v1 = s.build(&key, 1, &Shape::full(SMALL));
    b.store(&key, &v1.artifacts, &v1.metadata)?;
    s.corrupt(&key);
    damaged_not_served(&b, "", &key, &v1)?;
    damaged_not_served(&s.instance(), " by a second instance", &key, &v1)?;
    // A store repairs it.
    let v2 = s.build(&key, 2, &Shape::full(SMALL + 1));
    b.store(&key, &v2.artifacts, &v2.metadata)
        .map_err(|e| format!("over a damaged entry: {e}"))?;
    expect_hit(
        &s.instance(),
        &format!("lookup {key} after storing over the damaged entry"),
        &key,
        &v2,
    )?;
    // Remove deletes a damaged entry (that is how users clean up).
    s.corrupt(&key);
    ensure!(
        b.remove(&key)
            .map_err(|e| format!("of a damaged entry: {e}"))?,
        "remove {key} of a damaged entry returned Ok(false)"
    );
    expect_miss(
        &s.instance(),
        &format!("lookup {key} after removing the damaged entry"),
        &key,
    )?;
    Ok(())
}

/// A store under a cancelled context fails as `Cancelled` and shows
/// nothing: neither a new key nor a change to the entry it would replace.
fn cancellation(s: &Suite<'_, '_>) -> Checked {
    let b = writable(s)?;
    let kept = s.key("kept");
    let v1 = s.build(&kept, 1, &Shape::full(SMALL));
    b.store(&kept, &v1.artifacts, &v1.metadata)?;
    let cx = super::handle::context();
    cx.cancel.cancel();
    let stopped = Handle::with_context((s.make)(&s.next_fixture()), cx);
    let fresh = s.key("fresh");
    for (key, what) in [(&kept, "over an existing entry"), (&fresh, "of a new key")] {
        let v2 = s.build(key, 2, &Shape::full(SMALL + 1));
        match stopped.try_store(key, &v2.artifacts, &v2.metadata) {
            Err(panicked) => return Err(Stop::Broken(panicked)),
            Ok(Ok(_)) => {
                return Err(Stop::Broken(format!(
                    "store {key} {what} succeeded although the run was cancelled"
                )));
            }
            Ok(Err(e)) => ensure!(
                e.kind == ErrorKind::Cancelled,
                "store {key} {what} under a cancelled context failed with {}, not as cancelled",
                describe_error(&e)
            ),
        }
    }
    expect_hit(
        &s.instance(),
        &format!("lookup {kept} after a cancelled store over it"),
        &kept,
        &v1,
    )?;
    expect_miss(
        &s.instance(),
        &format!("lookup {fresh} after its store was cancelled"),
        &fresh,
    )
}
