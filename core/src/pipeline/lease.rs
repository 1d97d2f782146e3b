//! Fleet single-flight: a build lease in a shared remote tier, so machines
//! that miss the same key at once build it once (docs/remote-cache.md,
//! "Build leases").
//!
//! The same idea as [`super::build_lock`], one level up: taken after the
//! local key lock (so one process per machine asks) and before CPUs are
//! reserved (so a waiter holds none). The first writable remote tier that
//! offers leases arbitrates. Whoever gets the lease builds, refreshing it
//! from a background thread, and releases it when the run ends, built or
//! failed; the others wait for the entry, looking for it every poll, and
//! pull it when it appears. A lease whose heartbeat is older than its
//! expiry, or that has not changed for an expiry as far as this waiter has
//! watched it (a holder whose clock runs ahead), is taken over with a
//! conditional replace, so of several waiters one builds. A waiter that
//! has waited its limit builds itself. Any failure of the lease machinery
//! is one warning and a build without it: leases save work, they never
//! cost a build.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ktstr_sdk::Result;
use ktstr_sdk::cache::{CacheEntry, CacheKey};
use ktstr_sdk::context::{Progress, StageContext};
use ktstr_sdk::lease::{Claim, Lease, LeaseRecord, LeaseStore, Theirs};

use crate::identity::DerivedKey;
use crate::progress::human_duration;
use crate::registry::Stages;
use crate::tiers::is_read_only;

mod held;
pub(super) use held::FleetLease;

/// What asking for the fleet's turn got.
pub(super) enum Leased {
    /// Ours: build, and release it (on drop) when done.
    Held(FleetLease),
    /// Another machine built it while we waited: its entry, pulled.
    PeerBuilt(Box<CacheEntry>),
    /// No lease (no tier offers one, it failed, or we waited our limit):
    /// build as without a fleet.
    Without,
}

/// Take `derived`'s lease in the first live writable tier that has leases,
/// or wait for whoever holds it.
pub(super) fn take(stages: &Stages, derived: &DerivedKey, cx: &StageContext) -> Result<Leased> {
    let Some((tier, store)) = (stages.tiers.live_remotes())
        .filter(|t| !is_read_only(t))
        .find_map(|t| Some((t.name.clone(), t.stage.leases()?)))
    else {
        return Ok(Leased::Without);
    };
    // A waiter looks every poll: a damaged entry it keeps finding (being
    // rebuilt by the holder) is reported once, not once per poll.
    let polling = StageContext {
        progress: Arc::new(Once::new(cx.progress.clone())),
        ..cx.clone()
    };
    let look = || stages.tiers.lookup(derived, &polling);
    let live = || stages.tiers.live_remotes().any(|t| t.name == tier);
    Waiter {
        key: &derived.key,
        cx,
        tier: &tier,
        store,
        host: crate::config::hostname(),
        run_id: run_id(),
        look: &look,
        live: &live,
    }
    .run()
}

/// One run's attempt at a key's lease.
struct Waiter<'a> {
    key: &'a CacheKey,
    cx: &'a StageContext,
    tier: &'a str,
    store: Arc<dyn LeaseStore>,
    host: String,
    run_id: String,
    /// Look the key up in every tier (a remote hit is pulled).
    look: &'a dyn Fn() -> Result<Option<CacheEntry>>,
    /// Whether the lease's tier is still used in this run.
    live: &'a dyn Fn() -> bool,
}

/// The lease version a waiter watches, and since when it has not changed.
struct Watched {
    /// The holder's run, to tell a heartbeat from a takeover.
    run_id: Option<String>,
    version: String,
    since: Instant,
}

impl Waiter<'_> {
    fn record(&self) -> LeaseRecord {
        LeaseRecord::new(
            self.key,
            &self.host,
            &self.run_id,
            self.store.timings().expiry,
        )
    }

    /// A lease operation failed: one warning, and build without it.
    fn give_up(&self, e: &ktstr_sdk::StageError) -> Leased {
        crate::report::warn_error(
            &*self.cx.progress,
            &format!(
                "{}: building {} without a build lease (other machines may build it too): ",
                self.tier, self.key
            ),
            e,
        );
        Leased::Without
    }

    fn run(&self) -> Result<Leased> {
        let timings = self.store.timings();
        let started = Instant::now();
        let mut watched: Option<Watched> = None;
        let mut claim = self.store.claim(&self.record());
        let outcome = loop {
            let theirs = match claim {
                Err(e) => break self.give_up(&e),
                Ok(Claim::Ours(lease)) => break self.won(lease, watched.is_some())?,
                Ok(Claim::Theirs(t)) => t,
            };
            if watched.as_ref().is_none_or(|w| w.version != theirs.version) {
                match &watched {
                    None => self.announce(&theirs, timings.wait),
                    Some(w) if w.run_id != run_of(&theirs) => self.cx.progress.note(&format!(
                        "{} is now being built by {} ({})",
                        self.key,
                        holder(&theirs),
                        ages(&theirs, SystemTime::now())
                    )),
                    Some(_) => {}
                }
                watched = Some(Watched {
                    run_id: run_of(&theirs),
                    version: theirs.version.clone(),
                    since: Instant::now(),
                });
            }
            let unchanged = watched
                .as_ref()
                .map_or(Duration::ZERO, |w| w.since.elapsed());
            if let Some(why) = abandoned(&theirs, unchanged, timings.expiry, SystemTime::now()) {
                self.cx.progress.note(&format!(
                    "the build lease of {} by {} {why}; taking it over",
                    self.key,
                    holder(&theirs)
                ));
                claim = self.store.take_over(&self.record(), &theirs);
                continue;
            }
            self.cx
                .progress
                .line(&status(&theirs, started.elapsed(), SystemTime::now()));
            if started.elapsed() >= timings.wait {
                self.cx.progress.finish_step();
                self.cx.progress.warn(&format!(
                    "waited {} for {} to build {}; building it here (lease_wait in \
                     [plugin.{}] sets the limit)",
                    human_duration(timings.wait),
                    holder(&theirs),
                    self.key,
                    self.tier
                ));
                break Leased::Without;
            }
            self.sleep(timings.poll)?;
            if let Some(entry) = (self.look)()? {
                self.cx.progress.finish_step();
                self.cx.progress.note(&format!(
                    "{} built {} while we waited; not building it here",
                    holder(&theirs),
                    self.key
                ));
                break Leased::PeerBuilt(Box::new(entry));
            }
            if !(self.live)() {
                // Its lookup failed and was reported: the tier is down.
                break Leased::Without;
            }
            claim = self.store.claim(&self.record());
        };
        if watched.is_some() {
            self.cx.progress.finish_step();
        }
        Ok(outcome)
    }

    /// The lease is ours. Look once more, since the holder we waited for
    /// (or one that finished between our miss and our claim) may have
    /// stored the entry just before releasing.
    fn won(&self, lease: Lease, waited: bool) -> Result<Leased> {
        let held = FleetLease::start(self.store.clone(), lease, self.tier, self.cx);
        if let Some(entry) = (self.look)()? {
            self.cx.progress.note(&format!(
                "another machine cached {} {}; not building it here",
                self.key,
                if waited {
                    "while we waited"
                } else {
                    "just now"
                }
            ));
            drop(held);
            return Ok(Leased::PeerBuilt(Box::new(entry)));
        }
        tracing::debug!("{}: took the build lease of {}", self.tier, self.key);
        Ok(Leased::Held(held))
    }

    fn announce(&self, theirs: &Theirs, wait: Duration) {
        self.cx.progress.note(&format!(
            "{} is being built by {} ({}); waiting up to {} for its entry in {} instead of \
             building it twice",
            self.key,
            holder(theirs),
            ages(theirs, SystemTime::now()),
            human_duration(wait),
            self.tier
        ));
        self.cx.progress.step(&format!(
            "waiting for {} to build {}",
            holder(theirs),
            self.key
        ));
    }

    /// Sleep `d`, waking early for an interrupt.
    fn sleep(&self, d: Duration) -> Result<()> {
        let until = Instant::now() + d;
        loop {
            self.cx.cancel.check()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

/// Why `theirs` counts as abandoned at `now`, if it does: its heartbeat
/// is older than its expiry, or it has not changed for an expiry while we
/// watched.
fn abandoned(
    theirs: &Theirs,
    unchanged: Duration,
    default_expiry: Duration,
    now: SystemTime,
) -> Option<String> {
    let expiry = theirs
        .record
        .as_ref()
        .map_or(default_expiry, |r| r.expiry());
    if let Ok(r) = &theirs.record
        && r.expired(now)
    {
        return Some(format!(
            "has had no heartbeat for {} (expiry {})",
            human_duration(r.heartbeat_age(now).unwrap_or_default()),
            human_duration(expiry)
        ));
    }
    (unchanged > expiry).then(|| {
        format!(
            "has not changed for {} (expiry {})",
            human_duration(unchanged),
            human_duration(expiry)
        )
    })
}

fn run_of(theirs: &Theirs) -> Option<String> {
    theirs.record.as_ref().ok().map(|r| r.run_id.clone())
}

/// "host ci-3 pid 4711", or what is known of an unreadable lease.
fn holder(theirs: &Theirs) -> String {
    match &theirs.record {
        Ok(r) => r.holder(),
        Err(why) => format!("an unreadable lease ({why})"),
    }
}

/// "lease taken 2m 3s ago, last heartbeat 4s ago", as of `now`.
fn ages(theirs: &Theirs, now: SystemTime) -> String {
    let Ok(r) = &theirs.record else {
        return "holder unknown".into();
    };
    let beat = r.heartbeat_age(now).map_or("unknown".to_string(), |a| {
        format!("{} ago", human_duration(a))
    });
    format!(
        "lease taken {} ago, last heartbeat {beat}",
        human_duration(r.age(now))
    )
}

/// The status line while waiting.
fn status(theirs: &Theirs, waited: Duration, now: SystemTime) -> String {
    format!("{}; waited {}", ages(theirs, now), human_duration(waited))
}

/// A progress sink that passes each distinct warning and note once.
struct Once {
    inner: Arc<dyn Progress>,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Once {
    fn new(inner: Arc<dyn Progress>) -> Self {
        Self {
            inner,
            seen: Default::default(),
        }
    }

    fn first(&self, message: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(message.to_string())
    }
}

impl Progress for Once {
    fn step(&self, name: &str) {
        self.inner.step(name);
    }
    fn line(&self, line: &str) {
        self.inner.line(line);
    }
    fn finish_step(&self) {
        self.inner.finish_step();
    }
    fn warn(&self, message: &str) {
        if self.first(message) {
            self.inner.warn(message);
        }
    }
    fn note(&self, message: &str) {
        if self.first(message) {
            self.inner.note(message);
        }
    }
    fn bytes(&self, done: u64, total: Option<u64>) {
        self.inner.bytes(done, total);
    }
}

/// Unique per run: tells a restarted ktstr with a reused pid from the old one.
fn run_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            format!("{}-{nanos:x}", std::process::id())
        })
}

#[cfg(test)]
mod tests;
