//! Leases against a real s3s-fs: create-only, conditional refresh and
//! takeover, release only by the holder, and races of several machines
//! (threads with their own tier instances) where exactly one may win.

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use ktstr_sdk::cache::{CacheBackend, CacheKey};
use ktstr_sdk::lease::{Claim, Lease, LeaseRecord, LeaseStore, Theirs};
use ktstr_test_servers::{Nginx, S3Server};

fn no_env(_: &str) -> Option<String> {
    None
}

/// A tier instance ("one machine") on `server`, with its lease store.
fn machine(server: &S3Server, scratch: &Path, extra: serde_json::Value) -> Arc<dyn LeaseStore> {
    let tier = crate::s3_tier_with_env(&server.config(scratch, extra), &no_env).unwrap();
    tier.leases().expect("a writable s3 tier has leases")
}

fn record(run: &str) -> LeaseRecord {
    LeaseRecord::new(
        &CacheKey::parse("6.12.3-tarball-x86_64-feed").unwrap(),
        "host-a",
        run,
        Duration::from_secs(60),
    )
}

fn ours(c: Claim) -> Lease {
    match c {
        Claim::Ours(l) => l,
        Claim::Theirs(t) => panic!("expected our lease, got {t:?}"),
    }
}

fn theirs(c: Claim) -> Theirs {
    match c {
        Claim::Theirs(t) => t,
        Claim::Ours(l) => panic!("expected someone else's lease, got ours: {l:?}"),
    }
}

fn lease_file(server: &S3Server) -> std::path::PathBuf {
    server
        .bucket_dir()
        .join("ci/ktstr/v1/leases/6.12.3-tarball-x86_64-feed.json")
}

#[test]
fn one_holder_refreshes_and_only_it_releases() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let a = machine(&server, scratch.path(), serde_json::json!({}));
    let b = machine(&server, scratch.path(), serde_json::json!({}));

    let held = ours(a.claim(&record("run-a")).unwrap());
    assert!(lease_file(&server).is_file(), "not at v1/leases/<key>.json");
    let on_disk = std::fs::read(lease_file(&server)).unwrap();
    assert_eq!(LeaseRecord::from_json(&on_disk).unwrap(), held.record);

    let seen = theirs(b.claim(&record("run-b")).unwrap());
    assert_eq!(seen.record.as_ref().unwrap().run_id, "run-a");
    assert_eq!(seen.version, held.version);

    let beat = held
        .record
        .beat(std::time::SystemTime::now() + Duration::from_secs(1));
    let refreshed = ours(a.refresh(&held, &beat).unwrap());
    assert_ne!(
        refreshed.version, held.version,
        "a refresh is a new version"
    );
    assert_eq!(refreshed.record.heartbeat_at, beat.heartbeat_at);
    // A refresh from a version we never saw (its answer was lost) still
    // lands: the lease is this run's, so it is written over the current one.
    let again = held
        .record
        .beat(std::time::SystemTime::now() + Duration::from_secs(2));
    let resynced = ours(a.refresh(&held, &again).unwrap());
    assert_eq!(resynced.record.heartbeat_at, again.heartbeat_at);
    assert_ne!(resynced.version, refreshed.version);
    let refreshed = resynced;

    let not_mine = Lease {
        record: record("run-b"),
        version: refreshed.version.clone(),
    };
    assert!(
        !b.release(&not_mine).unwrap(),
        "released someone else's lease"
    );
    assert!(lease_file(&server).is_file());
    assert!(a.release(&refreshed).unwrap());
    assert!(!lease_file(&server).exists());
    assert!(!a.release(&refreshed).unwrap(), "nothing left to release");
    ours(b.claim(&record("run-b")).unwrap());
}

/// The machines of a race read their write back after 1 s, not 250 ms: a
/// loaded CI host can stall s3s-fs's check-then-write of a racing writer
/// past the production default, and a second winner would then be this
/// test's artefact, not the code's.
fn racer_settings() -> serde_json::Value {
    serde_json::json!({"lease_settle": "1s"})
}

/// `n` machines do `op` at the same instant; how many got the lease.
fn race(
    server: &S3Server,
    n: usize,
    op: impl Fn(&dyn LeaseStore, LeaseRecord) -> Claim + Send + Sync + 'static,
) -> Vec<String> {
    let scratch = tempfile::tempdir().unwrap();
    let barrier = Arc::new(Barrier::new(n));
    let op = Arc::new(op);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let store = machine(server, scratch.path(), racer_settings());
            let (barrier, op) = (barrier.clone(), op.clone());
            std::thread::spawn(move || {
                barrier.wait();
                match op(&*store, record(&format!("racer-{i}"))) {
                    Claim::Ours(l) => Some(l.record.run_id),
                    Claim::Theirs(_) => None,
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn of_machines_claiming_at_once_exactly_one_wins() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let cleaner = machine(&server, scratch.path(), serde_json::json!({}));
    for round in 0..6 {
        let winners = race(&server, 4, |s, r| s.claim(&r).unwrap());
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let on_disk = LeaseRecord::from_json(&std::fs::read(lease_file(&server)).unwrap()).unwrap();
        assert_eq!(on_disk.run_id, winners[0], "round {round}");
        let held = Lease {
            record: on_disk,
            version: String::new(),
        };
        assert!(cleaner.release(&held).unwrap());
    }
}

/// The takeover race: several waiters find the same abandoned lease and
/// replace it at once; the conditional replace lets one of them win, and
/// the abandoned holder, should it wake up, finds it lost.
#[test]
fn of_waiters_taking_over_at_once_exactly_one_wins() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let dead = machine(&server, scratch.path(), serde_json::json!({}));
    for round in 0..6 {
        let held = ours(dead.claim(&record(&format!("dead-{round}"))).unwrap());
        let stale = theirs(
            machine(&server, scratch.path(), serde_json::json!({}))
                .claim(&record("looker"))
                .unwrap(),
        );
        let winners = race(&server, 4, move |s, r| s.take_over(&r, &stale).unwrap());
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let now = LeaseRecord::from_json(&std::fs::read(lease_file(&server)).unwrap()).unwrap();
        assert_eq!(now.run_id, winners[0]);
        let lost = theirs(dead.refresh(&held, &held.record).unwrap());
        assert_eq!(lost.record.unwrap().run_id, winners[0]);
        assert!(
            !dead.release(&held).unwrap(),
            "the old holder deleted the new lease"
        );
        let winner = Lease {
            record: now,
            version: String::new(),
        };
        assert!(dead.release(&winner).unwrap());
    }
}

/// A lease object that is not a record (damaged, or a newer ktstr's) is
/// still someone's: reported with the reason, taken over only explicitly.
#[test]
fn an_unreadable_lease_is_still_held() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let a = machine(&server, scratch.path(), serde_json::json!({}));
    ours(a.claim(&record("run-a")).unwrap());
    std::fs::write(lease_file(&server), b"{\"format\": \"something else\"}").unwrap();
    let seen = theirs(a.claim(&record("run-b")).unwrap());
    assert!(seen.record.is_err(), "{seen:?}");
    ours(a.take_over(&record("run-b"), &seen).unwrap());
}

#[test]
fn read_only_disabled_and_http_tiers_take_no_leases() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    for extra in [
        serde_json::json!({"read_only": true}),
        serde_json::json!({"leases": false}),
    ] {
        let tier = crate::s3_tier_with_env(&server.config(scratch.path(), extra.clone()), &no_env)
            .unwrap()
            .into_backend();
        assert!(tier.leases().is_none(), "{extra}");
    }
    let Some(nginx) = Nginx::start() else {
        return;
    };
    let http = crate::http_tier_with_env(
        &nginx.config(scratch.path(), serde_json::json!({})),
        &no_env,
    )
    .unwrap();
    assert!(http.leases().is_none());
}
