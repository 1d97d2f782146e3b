//! The waiter's decisions against a scripted lease store and lookup: take a
//! free lease (heartbeat, release on drop), wait and pull, take over an
//! expired or unchanging lease, give up after the limit, and build without
//! a lease when the store fails or the tier goes down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ktstr_sdk::lease::LeaseTimings;
use ktstr_sdk::testing::{RecordingProgress, RecordingRunner, context_with};

use super::*;

/// A lease whose last heartbeat was `heartbeat_ago` before `now`.
fn theirs(expiry: Duration, heartbeat_ago: Duration, now: SystemTime) -> Theirs {
    let key = CacheKey::parse("k-1").unwrap();
    let r = LeaseRecord::new(&key, "ci-3", "run", expiry);
    Theirs {
        record: Ok(r.beat(now - heartbeat_ago)),
        version: "\"v1\"".into(),
    }
}

#[test]
fn a_lease_is_abandoned_by_its_heartbeat_or_by_not_changing() {
    let expiry = Duration::from_secs(10);
    // One fixed "now": a stalled test thread cannot change the ages.
    let now = SystemTime::now();
    let fresh = theirs(expiry, Duration::ZERO, now);
    assert_eq!(abandoned(&fresh, Duration::from_secs(3), expiry, now), None);
    let old = theirs(expiry, Duration::from_secs(60), now);
    let why = abandoned(&old, Duration::ZERO, expiry, now).unwrap();
    assert!(why.starts_with("has had no heartbeat for 1m00s"), "{why}");
    // A holder whose clock runs ahead looks fresh forever; watched long
    // enough without a change, it is abandoned all the same.
    let ahead = theirs(expiry, Duration::ZERO, now + Duration::from_secs(3600));
    assert_eq!(abandoned(&ahead, Duration::from_secs(9), expiry, now), None);
    let why = abandoned(&ahead, Duration::from_secs(11), expiry, now).unwrap();
    assert!(why.starts_with("has not changed for 11.0s"), "{why}");
    let unreadable = Theirs {
        record: Err("version 9".into()),
        version: "\"v\"".into(),
    };
    assert_eq!(
        abandoned(&unreadable, Duration::from_secs(9), expiry, now),
        None
    );
    assert!(abandoned(&unreadable, Duration::from_secs(11), expiry, now).is_some());
    assert_eq!(holder(&unreadable), "an unreadable lease (version 9)");
    assert!(
        ages(&old, now).contains("last heartbeat 1m00s ago"),
        "{}",
        ages(&old, now)
    );
}

/// A bucket holding at most one lease, with a scripted other holder.
struct Fake {
    current: Mutex<Option<(LeaseRecord, u64)>>,
    /// The other holder heartbeats (its version changes between polls).
    alive: bool,
    /// Every call fails.
    fails: bool,
    timings: LeaseTimings,
    refreshes: AtomicUsize,
    releases: AtomicUsize,
    take_overs: AtomicUsize,
}

impl Fake {
    fn new(timings: LeaseTimings) -> Self {
        Self {
            current: Mutex::new(None),
            alive: false,
            fails: false,
            timings,
            refreshes: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            take_overs: AtomicUsize::new(0),
        }
    }

    /// Held by `host other pid 7`, last heartbeat `ago` (negative: ahead).
    fn held_by_other(self, ago: Duration, ahead: bool) -> Self {
        let r = LeaseRecord {
            pid: 7,
            ..LeaseRecord::new(&key(), "other", "other-run", self.timings.expiry)
        };
        let now = SystemTime::now();
        let r = r.beat(if ahead { now + ago } else { now - ago });
        *self.current.lock().unwrap() = Some((r, 1));
        self
    }

    /// Every method takes the `current` guard once and holds it through
    /// its read and its write, as the bucket's conditional PUT is atomic:
    /// a heartbeat in flight must not overwrite a takeover made meanwhile.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(LeaseRecord, u64)>> {
        self.current.lock().unwrap()
    }

    fn theirs(&self, cur: &mut Option<(LeaseRecord, u64)>) -> Claim {
        let (r, v) = cur.as_mut().unwrap();
        if self.alive && r.run_id == "other-run" {
            *r = r.beat(SystemTime::now());
            *v += 1;
        }
        Claim::Theirs(Theirs {
            record: Ok(r.clone()),
            version: v.to_string(),
        })
    }

    fn ours(cur: &mut Option<(LeaseRecord, u64)>, record: &LeaseRecord, version: u64) -> Claim {
        *cur = Some((record.clone(), version));
        Claim::Ours(Lease {
            record: record.clone(),
            version: version.to_string(),
        })
    }

    fn broken() -> ktstr_sdk::StageError {
        ktstr_sdk::StageError::new(ktstr_sdk::ErrorKind::Io, "PUT lease failed")
    }
}

impl LeaseStore for Fake {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn timings(&self) -> LeaseTimings {
        self.timings
    }
    fn claim(&self, record: &LeaseRecord) -> Result<Claim> {
        if self.fails {
            return Err(Self::broken());
        }
        let mut cur = self.slot();
        if cur.is_none() {
            return Ok(Self::ours(&mut cur, record, 1));
        }
        Ok(self.theirs(&mut cur))
    }
    fn take_over(&self, record: &LeaseRecord, stale: &Theirs) -> Result<Claim> {
        self.take_overs.fetch_add(1, Ordering::SeqCst);
        let mut cur = self.slot();
        let v = cur.as_ref().map(|(_, v)| *v);
        if v.map(|v| v.to_string()) == Some(stale.version.clone()) {
            return Ok(Self::ours(&mut cur, record, v.unwrap() + 1));
        }
        Ok(self.theirs(&mut cur))
    }
    fn refresh(&self, held: &Lease, record: &LeaseRecord) -> Result<Claim> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        let mut cur = self.slot();
        match cur.as_ref().map(|(r, v)| (r.run_id.clone(), *v)) {
            Some((run, v)) if run == held.record.run_id => Ok(Self::ours(&mut cur, record, v + 1)),
            _ => Ok(self.theirs(&mut cur)),
        }
    }
    fn release(&self, held: &Lease) -> Result<bool> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        let mut cur = self.slot();
        if cur
            .as_ref()
            .is_some_and(|(r, _)| r.run_id == held.record.run_id)
        {
            *cur = None;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Whether `done` holds within a deadline far beyond any heartbeat here
/// (a loaded machine may not run the heartbeat thread for seconds).
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn key() -> CacheKey {
    CacheKey::parse("k-1").unwrap()
}

fn fast() -> LeaseTimings {
    LeaseTimings {
        heartbeat: Duration::from_millis(20),
        expiry: Duration::from_millis(300),
        wait: Duration::from_secs(20),
        poll: Duration::from_millis(20),
    }
}

fn entry() -> CacheEntry {
    let metadata: ktstr_sdk::cache::Metadata = serde_json::from_value(serde_json::json!({
        "schema": 1, "key": "k-1",
        "source": {"kind": "x", "identity": "y"},
        "version": null, "arch": "x86_64", "image_name": "bzImage",
        "profile": "default", "config_sha256": "", "builder": "b",
        "toolchain": "t", "built_at": "", "components": [], "artifacts": {}
    }))
    .unwrap();
    CacheEntry {
        key: key(),
        dir: "/nowhere".into(),
        metadata,
        origin: "local".into(),
        location: None,
        last_used: None,
    }
}

/// Run a waiter on `store`; the entry appears at the `appears_at`-th lookup.
fn wait_on(
    store: &Arc<Fake>,
    appears_at: Option<usize>,
    live: bool,
) -> (Result<Leased>, Arc<RecordingProgress>, usize) {
    let (cx, progress) = context_with(Arc::new(RecordingRunner::default()));
    let lookups = AtomicUsize::new(0);
    let look = || {
        let n = lookups.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(appears_at.filter(|&at| n >= at).map(|_| entry()))
    };
    let live = || live;
    let k = key();
    let got = Waiter {
        key: &k,
        cx: &cx,
        tier: "s3-cache",
        store: store.clone(),
        host: "me".into(),
        run_id: "my-run".into(),
        look: &look,
        live: &live,
    }
    .run();
    (got, progress, lookups.load(Ordering::SeqCst))
}

#[test]
fn a_free_lease_is_taken_heartbeated_and_released_on_drop() {
    let store = Arc::new(Fake::new(fast()));
    let (got, progress, lookups) = wait_on(&store, None, true);
    let Ok(Leased::Held(held)) = got else {
        panic!("not held")
    };
    assert_eq!(lookups, 1, "won: looked once more before building");
    assert!(
        eventually(|| store.refreshes.load(Ordering::SeqCst) >= 2),
        "no heartbeats"
    );
    assert!(store.current.lock().unwrap().is_some());
    drop(held);
    assert_eq!(store.releases.load(Ordering::SeqCst), 1);
    assert!(store.current.lock().unwrap().is_none(), "not released");
    assert!(progress.warnings().is_empty(), "{:?}", progress.warnings());
}

#[test]
fn a_won_lease_whose_entry_appeared_meanwhile_is_released_unused() {
    let store = Arc::new(Fake::new(fast()));
    let (got, progress, _) = wait_on(&store, Some(1), true);
    assert!(matches!(got, Ok(Leased::PeerBuilt(_))));
    assert!(store.current.lock().unwrap().is_none(), "kept the lease");
    assert!(
        progress
            .notes()
            .iter()
            .any(|n| n.contains("cached k-1 just now")),
        "{:?}",
        progress.notes()
    );
}

#[test]
fn a_waiter_names_the_holder_and_pulls_the_entry_when_it_appears() {
    let store = Arc::new(Fake {
        alive: true,
        ..Fake::new(fast()).held_by_other(Duration::ZERO, false)
    });
    let (got, progress, lookups) = wait_on(&store, Some(3), true);
    assert!(matches!(got, Ok(Leased::PeerBuilt(_))));
    assert_eq!(lookups, 3);
    let notes = progress.notes();
    assert!(
        notes[0].starts_with("k-1 is being built by host other pid 7 (lease taken ")
            && notes[0].contains("waiting up to 20.0s for its entry in s3-cache"),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n == "host other pid 7 built k-1 while we waited; not building it here"),
        "{notes:?}"
    );
    assert_eq!(
        progress.steps(),
        ["waiting for host other pid 7 to build k-1"]
    );
    assert!(
        progress
            .lines()
            .iter()
            .any(|l| l.contains("last heartbeat"))
    );
    assert_eq!(store.take_overs.load(Ordering::SeqCst), 0);
    assert!(progress.warnings().is_empty(), "{:?}", progress.warnings());
}

#[test]
fn an_expired_lease_is_taken_over() {
    let store = Arc::new(Fake::new(fast()).held_by_other(Duration::from_secs(3600), false));
    let (got, progress, _) = wait_on(&store, None, true);
    assert!(matches!(got, Ok(Leased::Held(_))));
    assert_eq!(store.take_overs.load(Ordering::SeqCst), 1);
    // 60m00s, or a few seconds more if this thread stalled since the
    // heartbeat was written (the exact text is the unit test's above).
    let expired = |n: &String| {
        n.strip_prefix("the build lease of k-1 by host other pid 7 has had no heartbeat for 60m")
            .and_then(|rest| rest.split_once("s (expiry 0.3s); "))
            .is_some_and(|(secs, then)| {
                secs.len() == 2 && secs.parse::<u8>().is_ok() && then == "taking it over"
            })
    };
    assert!(
        progress.notes().iter().any(expired),
        "{:?}",
        progress.notes()
    );
}

/// A holder whose clock runs an hour ahead never looks expired; its lease
/// not changing for an expiry gives it away.
#[test]
fn a_lease_that_stops_changing_is_taken_over_whatever_its_clock_says() {
    let store = Arc::new(Fake::new(fast()).held_by_other(Duration::from_secs(3600), true));
    let started = Instant::now();
    let (got, progress, _) = wait_on(&store, None, true);
    assert!(matches!(got, Ok(Leased::Held(_))));
    assert!(
        started.elapsed() >= fast().expiry,
        "{:?}",
        started.elapsed()
    );
    assert!(
        (progress.notes().iter()).any(|n| n.contains("has not changed for")),
        "{:?}",
        progress.notes()
    );
}

#[test]
fn a_waiter_builds_after_its_limit() {
    let timings = LeaseTimings {
        wait: Duration::from_millis(200),
        ..fast()
    };
    let store = Arc::new(Fake {
        alive: true,
        ..Fake::new(timings).held_by_other(Duration::ZERO, false)
    });
    let (got, progress, _) = wait_on(&store, None, true);
    assert!(matches!(got, Ok(Leased::Without)));
    let warnings = progress.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("waited 0.2s for host other pid 7 to build k-1; building it here"),
        "{warnings:?}"
    );
    assert_eq!(
        store.take_overs.load(Ordering::SeqCst),
        0,
        "took a live lease"
    );
}

#[test]
fn a_failing_lease_store_costs_one_warning_and_no_build() {
    let store = Arc::new(Fake {
        fails: true,
        ..Fake::new(fast())
    });
    let (got, progress, lookups) = wait_on(&store, None, true);
    assert!(matches!(got, Ok(Leased::Without)));
    assert_eq!(lookups, 0);
    let warnings = progress.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("s3-cache: building k-1 without a build lease (other machines may build it too): PUT lease failed"),
        "{warnings:?}"
    );
}

#[test]
fn a_tier_that_went_down_ends_the_wait() {
    let store = Arc::new(Fake {
        alive: true,
        ..Fake::new(fast()).held_by_other(Duration::ZERO, false)
    });
    let (got, _, lookups) = wait_on(&store, None, false);
    assert!(matches!(got, Ok(Leased::Without)));
    assert_eq!(lookups, 1);
}

/// Taken over while it built: the old holder stops heartbeating, says so,
/// and does not delete the new holder's lease.
#[test]
fn a_holder_that_lost_its_lease_leaves_the_new_one_alone() {
    let store = Arc::new(Fake::new(fast()));
    let (got, progress, _) = wait_on(&store, None, true);
    let Ok(Leased::Held(held)) = got else {
        panic!("not held")
    };
    let usurper = LeaseRecord::new(&key(), "other", "other-run", fast().expiry);
    Fake::ours(&mut store.slot(), &usurper, 100);
    let lost =
        |w: &String| w.starts_with("s3-cache: lost the build lease of k-1 to host other pid");
    assert!(
        eventually(|| progress.warnings().iter().any(lost)),
        "the next heartbeat did not notice: {:?}",
        progress.warnings()
    );
    drop(held);
    assert_eq!(
        store.current.lock().unwrap().as_ref().unwrap().0.run_id,
        "other-run"
    );
    assert_eq!(
        progress.warnings().iter().filter(|w| lost(w)).count(),
        1,
        "{:?}",
        progress.warnings()
    );
}

#[test]
fn polling_reports_a_repeated_warning_once() {
    let (cx, progress) = context_with(Arc::new(RecordingRunner::default()));
    let once = Once::new(cx.progress.clone());
    for _ in 0..3 {
        once.warn("not using s3-cache entry k-1: archive truncated");
        once.note("hint: the next successful build of k-1 replaces it");
    }
    once.warn("another");
    assert_eq!(
        progress.warnings(),
        ["not using s3-cache entry k-1: archive truncated", "another"]
    );
    assert_eq!(progress.notes().len(), 1);
}

/// Ctrl-C while waiting ends the wait at once, holding nothing.
#[test]
fn an_interrupt_ends_the_wait() {
    let store = Arc::new(Fake {
        alive: true,
        ..Fake::new(fast()).held_by_other(Duration::ZERO, false)
    });
    let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
    let cancel = cx.cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        cancel.cancel();
    });
    let k = key();
    let started = Instant::now();
    let got = Waiter {
        key: &k,
        cx: &cx,
        tier: "s3-cache",
        store: store.clone(),
        host: "me".into(),
        run_id: "my-run".into(),
        look: &|| Ok(None),
        live: &|| true,
    }
    .run();
    stopper.join().unwrap();
    let Err(e) = got else {
        panic!("the wait went on after the interrupt")
    };
    assert_eq!(e.kind, ktstr_sdk::ErrorKind::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
    let holder = store
        .current
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .0
        .run_id
        .clone();
    assert_eq!(holder, "other-run");
}
