//! Build leases: how a fleet of machines sharing a remote cache tier builds
//! each kernel once (see docs/remote-cache.md, "Build leases").
//!
//! A machine that misses a key everywhere takes the key's lease in a tier
//! that can create objects atomically, builds, stores, and releases it.
//! Another machine that misses the same key finds the lease taken, waits
//! for the entry and pulls it. The lease is a small record ([`LeaseRecord`])
//! the holder refreshes while it builds; one whose heartbeat is older than
//! its expiry is taken over, atomically, by one waiter.
//!
//! The tier only stores records ([`LeaseStore`]); when to take, wait, take
//! over and release is the host's policy. A backend offers leases through
//! [`CacheBackend::leases`](crate::cache::CacheBackend::leases); the default
//! is none (dynamic plugins, tiers without an atomic create), and such a
//! tier behaves as before: no fleet single-flight.

use std::time::{Duration, SystemTime};

use crate::cache::CacheKey;
use crate::error::Result;

/// `format` of every lease record.
pub const FORMAT: &str = "ktstr-build-lease";
/// `version` of the records this SDK writes.
pub const VERSION: u32 = 1;

/// Who builds a key, and since when: the lease object's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    pub key: CacheKey,
    /// The holder's host name.
    pub host: String,
    /// The holder's process id on that host.
    pub pid: u32,
    /// Unique per ktstr run: tells two runs with the same host and pid apart.
    pub run_id: String,
    /// When the holder took the lease (RFC 3339, UTC).
    pub started_at: String,
    /// The holder's last refresh (RFC 3339, UTC, milliseconds).
    pub heartbeat_at: String,
    /// How long after `heartbeat_at` the lease counts as abandoned.
    pub expiry_ms: u64,
}

impl LeaseRecord {
    /// A fresh record for this process, stamped now.
    pub fn new(key: &CacheKey, host: &str, run_id: &str, expiry: Duration) -> Self {
        let now = stamp(SystemTime::now());
        Self {
            format: FORMAT.into(),
            version: VERSION,
            key: key.clone(),
            host: host.into(),
            pid: std::process::id(),
            run_id: run_id.into(),
            started_at: now.clone(),
            heartbeat_at: now,
            expiry_ms: u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The same record with its heartbeat at `now`.
    pub fn beat(&self, now: SystemTime) -> Self {
        Self {
            heartbeat_at: stamp(now),
            ..self.clone()
        }
    }

    pub fn expiry(&self) -> Duration {
        Duration::from_millis(self.expiry_ms)
    }

    /// How long ago the holder last refreshed it, by `now`'s clock; zero
    /// for a heartbeat in the future (a clock ahead of ours), `None` when
    /// the time does not parse.
    pub fn heartbeat_age(&self, now: SystemTime) -> Option<Duration> {
        let at = humantime::parse_rfc3339_weak(&self.heartbeat_at).ok()?;
        Some(now.duration_since(at).unwrap_or_default())
    }

    /// How long ago it was taken (zero if in the future or unparsable).
    pub fn age(&self, now: SystemTime) -> Duration {
        humantime::parse_rfc3339_weak(&self.started_at)
            .ok()
            .and_then(|at| now.duration_since(at).ok())
            .unwrap_or_default()
    }

    /// Whether its heartbeat is older than its expiry.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.heartbeat_age(now).is_some_and(|a| a > self.expiry())
    }

    /// "host ci-3 pid 4711", for progress lines.
    pub fn holder(&self) -> String {
        format!("host {} pid {}", self.host, self.pid)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a lease record serializes")
    }

    /// Parse a record; `Err` says why it is not one this SDK understands.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, String> {
        let r: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.format != FORMAT {
            return Err(format!("format is {:?}, not {FORMAT:?}", r.format));
        }
        if r.version != VERSION {
            return Err(format!(
                "version {} (this ktstr reads {VERSION})",
                r.version
            ));
        }
        Ok(r)
    }
}

/// RFC 3339 UTC with milliseconds.
fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// How a tier's leases are timed (the tier's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// The holder refreshes its lease this often.
    pub heartbeat: Duration,
    /// A lease not refreshed for this long is abandoned.
    pub expiry: Duration,
    /// A waiter gives up and builds itself after this long.
    pub wait: Duration,
    /// A waiter looks for the entry (and at the lease) this often.
    pub poll: Duration,
}

impl LeaseTimings {
    pub const DEFAULT: Self = Self {
        heartbeat: Duration::from_secs(30),
        expiry: Duration::from_secs(300),
        wait: Duration::from_secs(3600),
        poll: Duration::from_secs(5),
    };
}

/// A lease as read from, or written to, a tier: its record and the
/// tier's version token for that exact content (an ETag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub record: LeaseRecord,
    pub version: String,
}

/// Someone else's lease. Its record is `Err` when the object is not a
/// record this SDK reads (damaged, or from a newer ktstr): it is still
/// respected, and judged abandoned only by not changing for an expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Theirs {
    pub record: std::result::Result<LeaseRecord, String>,
    pub version: String,
}

/// What asking for a lease got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours now.
    Ours(Lease),
    /// Held by someone else.
    Theirs(Theirs),
}

/// A tier's store of build leases, one object per key. Every operation is
/// atomic in the tier: create only if absent, replace only if unchanged.
pub trait LeaseStore: Send + Sync {
    /// Where the leases live, for messages (`s3-cache s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// How leases in this tier are timed.
    fn timings(&self) -> LeaseTimings;

    /// Create `record`'s lease if there is none; otherwise say who holds it.
    fn claim(&self, record: &LeaseRecord) -> Result<Claim>;

    /// Replace `stale` with `record`, only if the lease is still exactly
    /// `stale` (so of two waiters taking over, one wins).
    fn take_over(&self, record: &LeaseRecord, stale: &Theirs) -> Result<Claim>;

    /// Refresh `held` with `record` (its new heartbeat), only if it is
    /// still ours and unchanged: `Ok(Claim::Theirs)` when it was taken over.
    fn refresh(&self, held: &Lease, record: &LeaseRecord) -> Result<Claim>;

    /// Delete the lease if it is still `held`'s run's; `Ok(false)` when it
    /// is gone or someone else's.
    fn release(&self, held: &Lease) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LeaseRecord {
        LeaseRecord::new(
            &CacheKey::parse("6.12.3-tarball-x86_64-0a1b").unwrap(),
            "ci-3",
            "run-1",
            Duration::from_secs(10),
        )
    }

    #[test]
    fn records_round_trip_and_refuse_other_formats() {
        let r = record();
        assert_eq!(LeaseRecord::from_json(r.to_json().as_bytes()).unwrap(), r);
        assert_eq!(r.pid, std::process::id());
        let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        v["version"] = 2.into();
        let e = LeaseRecord::from_json(v.to_string().as_bytes()).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        assert!(LeaseRecord::from_json(b"{}").is_err());
        assert!(LeaseRecord::from_json(b"not json").is_err());
    }

    #[test]
    fn a_lease_expires_when_its_heartbeat_is_older_than_its_expiry() {
        let r = record();
        let now = SystemTime::now();
        assert!(!r.expired(now));
        assert!(!r.expired(now + Duration::from_secs(9)));
        assert!(r.expired(now + Duration::from_secs(11)));
        // A holder whose clock is ahead of ours is not older than zero.
        assert_eq!(
            r.heartbeat_age(now - Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
        let beaten = r.beat(now + Duration::from_secs(8));
        assert!(!beaten.expired(now + Duration::from_secs(11)));
        assert_eq!(beaten.started_at, r.started_at);
        assert!(r.age(now + Duration::from_secs(5)) >= Duration::from_secs(4));
        let garbled = LeaseRecord {
            heartbeat_at: "yesterday".into(),
            ..r
        };
        assert!(!garbled.expired(now), "an unreadable time is never expired");
        assert_eq!(
            garbled.holder(),
            "host ci-3 pid ".to_string() + &garbled.pid.to_string()
        );
    }
}
