//! Garbage collection of one cache tier (`ktstr cache gc`): which entries
//! go, in what order, and the report of what went.
//!
//! One policy for every tier, so it lives here, next to the
//! [`CacheBackend`] trait whose default [`CacheBackend::gc`] applies it
//! with `list` and `remove`. A backend that knows more (a remote tier's
//! compressed sizes, its build leases, objects no entry owns) builds its
//! own [`Candidate`]s and calls [`collect`] with them, so the policy is
//! still decided here.
//!
//! The policy: entries are taken least recently used first. With
//! `keep_last` N, the N most recently used are never taken. An entry older
//! than `max_age` goes; then, while the entries left take more than
//! `max_size`, the least recently used goes. `keep_last` alone takes every
//! entry but those N. Removal failures (an entry in use, a refusal) keep
//! the entry and the walk goes on to the next one, so the size cap is met
//! by the next-oldest entries where it can be.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::cache::{CacheBackend, CacheEntry, CacheKey, Listed};
use crate::context::StageContext;
use crate::error::Result;

/// What `ktstr cache gc` asks a tier to hold to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Remove least recently used entries until the rest take at most
    /// this many bytes.
    pub max_size: Option<u64>,
    /// Remove entries not used for longer than this.
    pub max_age: Option<Duration>,
    /// Never remove the N most recently used entries; alone: remove all
    /// but them.
    pub keep_last: Option<usize>,
}

impl GcPolicy {
    /// Whether the policy asks for anything at all.
    pub fn is_empty(&self) -> bool {
        self.max_size.is_none() && self.max_age.is_none() && self.keep_last.is_none()
    }
}

/// One call of [`CacheBackend::gc`].
#[derive(Debug, Clone)]
pub struct GcRequest {
    pub policy: GcPolicy,
    /// Decide and report, remove nothing.
    pub dry_run: bool,
    /// The time ages are measured against.
    pub now: SystemTime,
}

/// An entry as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: CacheKey,
    /// Bytes the entry takes in its tier.
    pub size: u64,
    /// When it was last used (RFC 3339), as recorded or inferred.
    pub last_used: String,
}

/// An entry removed (with `dry_run`: that would be removed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Evicted {
    pub key: String,
    pub size: u64,
    pub last_used: String,
    /// `max-age`, `max-size` or `keep-last`.
    pub reason: &'static str,
}

/// An entry the policy wanted gone but that stays, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Spared {
    pub key: String,
    pub reason: String,
}

/// An object no entry owns, removed (with `dry_run`: that would be).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Orphan {
    /// `archive without a manifest`, `stale lease`, ...
    pub what: String,
    /// Where it is, for people.
    pub location: String,
    pub size: Option<u64>,
}

/// What one tier's garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub evicted: Vec<Evicted>,
    pub spared: Vec<Spared>,
    pub orphans: Vec<Orphan>,
    /// Usable entries, and their bytes, before and after.
    pub entries_before: usize,
    pub bytes_before: u64,
    pub entries_after: usize,
    pub bytes_after: u64,
    /// Things the user should know that are not failures (corrupt entries
    /// left for `kernel clean`, a cleanup this tier cannot do).
    pub notes: Vec<String>,
}

impl GcReport {
    /// Bytes freed by evictions and orphans (with `dry_run`: that would be).
    pub fn freed(&self) -> u64 {
        self.evicted.iter().map(|e| e.size).sum::<u64>()
            + self.orphans.iter().filter_map(|o| o.size).sum::<u64>()
    }
}

/// `rfc3339` as a time; `None` when it is not one.
pub fn parse_time(rfc3339: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(rfc3339).ok()
}

/// The later of two RFC 3339 times (an unparsable one loses).
pub fn later(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if parse_time(&b) > parse_time(&a) {
                Some(b)
            } else {
                Some(a)
            }
        }
        (a, b) => a.or(b),
    }
}

/// The default candidates of a listing: usable entries, sized by their
/// files, last used when the backend says (else when they were built).
pub fn candidates(rows: &[Listed]) -> (Vec<Candidate>, usize) {
    let mut out = Vec::new();
    let mut corrupt = 0;
    for row in rows {
        match row {
            Listed::Ok(e) => out.push(Candidate {
                key: e.key.clone(),
                size: e.metadata.artifacts.values().map(|a| a.size).sum(),
                last_used: last_used(e),
            }),
            Listed::Corrupt { .. } => corrupt += 1,
        }
    }
    (out, corrupt)
}

/// When `e` was last used: what its tier recorded, else when it was built.
pub fn last_used(e: &CacheEntry) -> String {
    e.last_used
        .clone()
        .unwrap_or_else(|| e.metadata.built_at.clone())
}

/// The default [`CacheBackend::gc`]: the policy over `list`, entries
/// removed with `remove`.
pub fn default_gc<B: CacheBackend + ?Sized>(
    backend: &B,
    request: &GcRequest,
    cx: &StageContext,
) -> Result<GcReport> {
    let rows = backend.list(cx)?;
    let (candidates, corrupt) = candidates(&rows);
    let mut report = collect(
        request,
        candidates,
        &BTreeMap::new(),
        |key| backend.remove(key, cx).map(|_| ()),
        cx,
    )?;
    if corrupt > 0 {
        report.notes.push(corrupt_note(corrupt));
    }
    Ok(report)
}

/// The note for corrupt entries gc leaves alone.
pub fn corrupt_note(n: usize) -> String {
    format!(
        "{n} corrupt entr{} left alone: `ktstr kernel clean` removes corrupt entries",
        if n == 1 { "y" } else { "ies" }
    )
}

/// Apply `request.policy` to `candidates`: remove (through `remove`,
/// unless `dry_run`) what it says, least recently used first. `protected`
/// keys are never removed (the value says why: a build lease, say).
pub fn collect(
    request: &GcRequest,
    mut candidates: Vec<Candidate>,
    protected: &BTreeMap<CacheKey, String>,
    mut remove: impl FnMut(&CacheKey) -> Result<()>,
    cx: &StageContext,
) -> Result<GcReport> {
    let policy = request.policy;
    let when = |c: &Candidate| parse_time(&c.last_used).unwrap_or(SystemTime::UNIX_EPOCH);
    // Most recently used first; equal times by key, so the order is stable.
    candidates.sort_by(|a, b| when(b).cmp(&when(a)).then_with(|| a.key.cmp(&b.key)));
    let mut report = GcReport {
        dry_run: request.dry_run,
        entries_before: candidates.len(),
        bytes_before: candidates.iter().map(|c| c.size).sum(),
        ..GcReport::default()
    };
    let mut total = report.bytes_before;
    let mut left = candidates.len();
    let kept_newest = policy.keep_last.unwrap_or(0);
    let only_keep_last = policy.max_age.is_none() && policy.max_size.is_none();
    if policy.is_empty() {
        report.entries_after = left;
        report.bytes_after = total;
        return Ok(report);
    }
    for (rank, c) in candidates.iter().enumerate().rev() {
        if rank < kept_newest {
            continue;
        }
        let too_old = policy.max_age.is_some_and(|age| {
            request
                .now
                .duration_since(when(c))
                .is_ok_and(|idle| idle > age)
        });
        let reason = if only_keep_last {
            "keep-last"
        } else if too_old {
            "max-age"
        } else if policy.max_size.is_some_and(|max| total > max) {
            "max-size"
        } else {
            continue;
        };
        if let Some(why) = protected.get(&c.key) {
            report.spared.push(Spared {
                key: c.key.to_string(),
                reason: why.clone(),
            });
            continue;
        }
        cx.cancel.check()?;
        if !request.dry_run
            && let Err(e) = remove(&c.key)
        {
            report.spared.push(Spared {
                key: c.key.to_string(),
                reason: e.to_string(),
            });
            continue;
        }
        total -= c.size;
        left -= 1;
        report.evicted.push(Evicted {
            key: c.key.to_string(),
            size: c.size,
            last_used: c.last_used.clone(),
            reason,
        });
    }
    report.entries_after = left;
    report.bytes_after = total;
    if let Some(max) = policy.max_size
        && total > max
    {
        report.notes.push(format!(
            "still {}, over the {} asked for: the rest is kept by --keep-last, in use or \
             under a build lease",
            crate::context::human_bytes(total),
            crate::context::human_bytes(max)
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, StageError};
    use crate::testing::{RecordingRunner, context_with};
    use std::sync::Arc;

    fn cand(key: &str, size: u64, day: u32) -> Candidate {
        Candidate {
            key: CacheKey::parse(key).unwrap(),
            size,
            last_used: format!("2026-11-{day:02}T00:00:00Z"),
        }
    }

    fn request(policy: GcPolicy, dry_run: bool) -> GcRequest {
        GcRequest {
            policy,
            dry_run,
            now: parse_time("2026-11-30T00:00:00Z").unwrap(),
        }
    }

    fn run(
        policy: GcPolicy,
        dry_run: bool,
        protected: &[(&str, &str)],
        refuse: &[&str],
    ) -> (GcReport, Vec<String>) {
        let (cx, _) = context_with(Arc::new(RecordingRunner::default()));
        let protected = protected
            .iter()
            .map(|(k, why)| (CacheKey::parse(k).unwrap(), why.to_string()))
            .collect();
        let mut removed = Vec::new();
        let report = collect(
            &request(policy, dry_run),
            vec![
                cand("k-new", 10, 29),
                cand("k-old", 10, 1),
                cand("k-mid", 10, 15),
                cand("k-mid2", 10, 20),
            ],
            &protected,
            |k| {
                if refuse.contains(&k.as_str()) {
                    return Err(StageError::new(ErrorKind::Io, format!("{k} is in use")));
                }
                removed.push(k.to_string());
                Ok(())
            },
            &cx,
        )
        .unwrap();
        (report, removed)
    }

    fn keys(r: &GcReport) -> Vec<&str> {
        r.evicted.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn max_size_takes_the_least_recently_used_first() {
        let policy = GcPolicy {
            max_size: Some(20),
            ..GcPolicy::default()
        };
        let (r, removed) = run(policy, false, &[], &[]);
        assert_eq!(keys(&r), ["k-old", "k-mid"]);
        assert_eq!(removed, ["k-old", "k-mid"]);
        assert_eq!(
            (r.bytes_before, r.bytes_after, r.entries_after),
            (40, 20, 2)
        );
        assert_eq!(r.freed(), 20);
        assert!(r.evicted.iter().all(|e| e.reason == "max-size"));
    }

    #[test]
    fn dry_run_decides_the_same_and_removes_nothing() {
        let policy = GcPolicy {
            max_size: Some(20),
            ..GcPolicy::default()
        };
        let (r, removed) = run(policy, true, &[], &[]);
        assert_eq!(keys(&r), ["k-old", "k-mid"]);
        assert!(removed.is_empty());
        assert!(r.dry_run);
    }

    #[test]
    fn max_age_and_keep_last() {
        let age = GcPolicy {
            max_age: Some(Duration::from_secs(12 * 86400)),
            ..GcPolicy::default()
        };
        assert_eq!(keys(&run(age, false, &[], &[]).0), ["k-old", "k-mid"]);
        let keep = GcPolicy {
            keep_last: Some(1),
            ..GcPolicy::default()
        };
        let (r, _) = run(keep, false, &[], &[]);
        assert_eq!(keys(&r), ["k-old", "k-mid", "k-mid2"]);
        assert!(r.evicted.iter().all(|e| e.reason == "keep-last"));
        // keep-last is a floor under the other rules.
        let both = GcPolicy {
            max_age: Some(Duration::from_secs(86400)),
            keep_last: Some(3),
            ..GcPolicy::default()
        };
        assert_eq!(keys(&run(both, false, &[], &[]).0), ["k-old"]);
        let (r, _) = run(
            GcPolicy {
                max_size: Some(0),
                keep_last: Some(2),
                ..GcPolicy::default()
            },
            false,
            &[],
            &[],
        );
        assert_eq!(keys(&r), ["k-old", "k-mid"]);
        assert!(
            r.notes[0].contains("asked for: the rest is kept by --keep-last"),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn protected_and_refused_entries_stay_and_the_next_oldest_goes() {
        let policy = GcPolicy {
            max_size: Some(20),
            ..GcPolicy::default()
        };
        let (r, removed) = run(policy, false, &[("k-old", "under a lease")], &["k-mid"]);
        // The policy still holds: the most recently used goes too.
        assert_eq!(removed, ["k-mid2", "k-new"]);
        assert_eq!(keys(&r), ["k-mid2", "k-new"]);
        let spared: Vec<_> = r.spared.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(spared, ["k-old", "k-mid"]);
        assert_eq!(r.spared[0].reason, "under a lease");
        assert_eq!(r.bytes_after, 20);
    }

    #[test]
    fn an_empty_policy_removes_nothing() {
        let (r, removed) = run(GcPolicy::default(), false, &[], &[]);
        assert!(r.evicted.is_empty() && removed.is_empty());
        assert_eq!(r.entries_after, 4);
    }

    #[test]
    fn later_picks_the_later_time() {
        let a = Some("2026-01-01T00:00:00Z".to_string());
        let b = Some("2026-02-01T00:00:00Z".to_string());
        assert_eq!(later(a.clone(), b.clone()), b);
        assert_eq!(later(b.clone(), a.clone()), b);
        assert_eq!(later(None, a.clone()), a);
        assert_eq!(later(Some("junk".into()), a.clone()), a);
    }
}
