//! End-to-end tests of the reserver: synthetic sysfs and cgroup trees, real
//! flocks in temp lock directories, and (as root, on a host with a cpuset
//! controller) a real sandbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ktstr_sdk::context::CommandRunner;
use ktstr_sdk::lock::{self, LockMode};
use ktstr_sdk::runner::SystemRunner;
use ktstr_sdk::testing::{RecordingProgress, context_with};

use super::*;
use ktstr_sdk::cpus::sandbox as cgroup;
use ktstr_sdk::cpus::topology::{self, fake::FakeMachine};

struct Env {
    dir: tempfile::TempDir,
    reserver: LlcReserver,
    allowed: CpuSet,
}

impl Env {
    fn lock_dir(&self) -> PathBuf {
        self.reserver.lock_dir().unwrap()
    }
    fn cgroup_parent(&self) -> PathBuf {
        self.dir.path().join("cgroup/cpuset")
    }
}

/// A v1-style cgroup tree like this CI machine's (v2 without cpuset).
fn fake_cgroups(root: &Path) {
    for (p, text) in [
        ("unified/cgroup.controllers", ""),
        ("cpuset/cpuset.cpus", "0-15"),
        ("cpuset/cpuset.mems", "0-1"),
        ("cpuset/cgroup.procs", ""),
    ] {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn env(machine: FakeMachine<'_>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    machine.write(&dir.path().join("sys"));
    fake_cgroups(&dir.path().join("cgroup"));
    let allowed = machine
        .llcs
        .iter()
        .flat_map(|l| l.iter().copied())
        .collect();
    let reserver = LlcReserver {
        config: LlcConfig {
            sysfs_root: dir.path().join("sys"),
            cgroup_root: dir.path().join("cgroup"),
            lock_dir: Some(dir.path().join("locks")),
            budget_percent: 30,
            mode: Mode::SharedLlc,
            announce_after_secs: DEFAULT_ANNOUNCE_AFTER_SECS,
        },
    };
    Env {
        dir,
        reserver,
        allowed,
    }
}

/// 4 LLCs of 4 CPUs on 2 nodes.
fn four_llcs() -> Env {
    env(FakeMachine {
        llcs: &[
            &[0, 1, 2, 3],
            &[4, 5, 6, 7],
            &[8, 9, 10, 11],
            &[12, 13, 14, 15],
        ],
        nodes: &[&[0, 1, 2, 3, 4, 5, 6, 7], &[8, 9, 10, 11, 12, 13, 14, 15]],
        online: None,
        smt: 1,
    })
}

fn one_llc() -> Env {
    env(FakeMachine {
        llcs: &[&[0, 1]],
        nodes: &[&[0, 1]],
        online: None,
        smt: 1,
    })
}

fn new_cx() -> (StageContext, Arc<RecordingProgress>) {
    context_with(Arc::new(SystemRunner))
}

fn req(cap: Option<usize>) -> ReserveRequest {
    ReserveRequest { cpu_cap: cap }
}

/// Whether `ok` comes true within 30 s, polled every 10 ms: what another
/// thread or process does is awaited, never assumed after a sleep.
fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether the lock at `p` can be taken soon. Other tests in this process
/// fork children; a child forked while a lock fd was open shares that
/// flock until it execs (the fd is close-on-exec), so "released" is
/// observed a moment later, not necessarily at once.
fn free_soon(p: &Path) -> bool {
    eventually(|| lock::try_lock(p, LockMode::Exclusive).unwrap().is_some())
}

/// Whether a build reporting to `progress` has noted `prefix` (waits for it).
fn noted(progress: &RecordingProgress, prefix: &str) -> bool {
    eventually(|| progress.notes().iter().any(|n| n.starts_with(prefix)))
}

fn llcs_of(cpus: &[usize]) -> BTreeSet<usize> {
    cpus.iter().map(|c| c / 4).collect()
}

#[test]
fn default_budget_reserves_30_percent_in_a_sandbox() {
    let e = four_llcs();
    let (cx, progress) = new_cx();
    let r = e.reserver.reserve_on(&req(None), &cx, &e.allowed).unwrap();
    // ceil(16 * 0.3) = 5: LLC 0 whole + one CPU of LLC 1, all on node 0.
    assert_eq!(r.make_jobs, 5);
    assert_eq!(r.cpus, vec![0, 1, 2, 3, 4]);
    assert_eq!(r.mems, vec![0]);
    let procs = r.sandbox_procs.clone().expect("sandboxed");
    let sandbox = procs.parent().unwrap().to_path_buf();
    assert_eq!(sandbox.parent().unwrap(), e.cgroup_parent());
    assert_eq!(
        std::fs::read_to_string(sandbox.join("cpuset.cpus")).unwrap(),
        "0-4"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.join("cpuset.mems")).unwrap(),
        "0"
    );
    assert!(progress.warnings().is_empty(), "{:?}", progress.warnings());
    assert!(
        progress
            .notes()
            .iter()
            .any(|n| n.contains("reserved 5 CPUs (0-4)")),
        "{:?}",
        progress.notes()
    );
    // Both LLCs are locked while the reservation lives, released after.
    for id in [0, 10] {
        let p = locks::llc_lock(&e.lock_dir(), id);
        assert!(lock::try_lock(&p, LockMode::Exclusive).unwrap().is_none());
    }
    drop(r);
    assert!(!sandbox.exists(), "sandbox removed on drop");
    for id in [0, 10] {
        let p = locks::llc_lock(&e.lock_dir(), id);
        assert!(free_soon(&p), "{} still locked after the drop", p.display());
    }
}

#[test]
fn explicit_cap_is_exact() {
    let e = four_llcs();
    let (cx, _) = new_cx();
    for cap in [1, 4, 6, 8, 11, 16] {
        let r = e
            .reserver
            .reserve_on(&req(Some(cap)), &cx, &e.allowed)
            .unwrap();
        assert_eq!(r.make_jobs, cap);
        assert_eq!(r.cpus.len(), cap);
    }
    let err = e
        .reserver
        .reserve_on(&req(Some(17)), &cx, &e.allowed)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--cpu-cap 17: only 16 CPUs are available to this process"
    );
    let err = e
        .reserver
        .reserve_on(&req(Some(0)), &cx, &e.allowed)
        .unwrap_err();
    assert_eq!(err.to_string(), "--cpu-cap 0: must be at least 1 CPU");
}

#[test]
fn concurrent_reservations_get_disjoint_llcs() {
    let e = Arc::new(four_llcs());
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let e = e.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let (cx, _) = new_cx();
                barrier.wait();
                e.reserver
                    .reserve_on(&req(Some(6)), &cx, &e.allowed)
                    .unwrap()
            })
        })
        .collect();
    let rs: Vec<Reservation> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let (a, b) = (llcs_of(&rs[0].cpus), llcs_of(&rs[1].cpus));
    assert_eq!(rs[0].cpus.len(), 6);
    assert_eq!(rs[1].cpus.len(), 6);
    assert!(a.is_disjoint(&b), "{:?} vs {:?}", rs[0].cpus, rs[1].cpus);
    // Each stays on one node (two LLCs per node).
    assert_eq!(rs[0].mems.len(), 1);
    assert_eq!(rs[1].mems.len(), 1);
    assert_ne!(rs[0].mems, rs[1].mems);
}

/// Another process holds the only LLC: the reservation waits, says whom
/// for (pid and command line), and proceeds once the holder exits.
#[test]
fn waits_for_a_holder_process_and_names_it() {
    let e = Arc::new(one_llc());
    let lock_path = locks::llc_lock(&e.lock_dir(), 0);
    std::fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    std::fs::write(&lock_path, b"").unwrap();
    // Holds the LLC until `release` exists (or a minute passes, if this
    // test dies first).
    let release = e.dir.path().join("release");
    let mut holder = std::process::Command::new("flock")
        .args(["--exclusive", "--close"])
        .arg(&lock_path)
        .args([
            "sh",
            "-c",
            "i=0; while [ ! -e \"$0\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
        ])
        .arg(&release)
        .spawn()
        .expect("flock(1) from util-linux");
    let pid = holder.id();
    assert!(
        eventually(|| lock::holders(&lock_path).iter().any(|h| h.pid == pid)),
        "holder {pid} never locked"
    );
    let (cx, progress) = new_cx();
    let e2 = e.clone();
    let waiter =
        std::thread::spawn(move || e2.reserver.reserve_on(&req(Some(1)), &cx, &e2.allowed));
    let named = format!("LLC 0 held by pid {pid} (flock");
    assert!(
        eventually(|| progress
            .notes()
            .iter()
            .any(|n| n.starts_with("waiting for 1 CPU") && n.contains(&named))),
        "holder {pid} not named: {:?}",
        progress.notes()
    );
    assert!(!waiter.is_finished(), "reserved a CPU of a held LLC");
    std::fs::write(&release, b"").unwrap();
    let r = waiter.join().unwrap().unwrap();
    assert_eq!(r.cpus, vec![0]);
    assert!(holder.wait().unwrap().success());
}

#[test]
fn waiting_is_cancellable() {
    let e = one_llc();
    let (cx, _) = new_cx();
    let first = e
        .reserver
        .reserve_on(&req(Some(2)), &cx, &e.allowed)
        .unwrap();
    let (cx2, progress) = new_cx();
    let cancel = cx2.cancel.clone();
    let e = Arc::new(e);
    let e2 = e.clone();
    let t = std::thread::spawn(move || e2.reserver.reserve_on(&req(Some(1)), &cx2, &e2.allowed));
    assert!(
        noted(&progress, "waiting for 1 CPU"),
        "{:?}",
        progress.notes()
    );
    cancel.cancel();
    let err = t.join().unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert_eq!(progress.notes().len(), 1, "one note while waiting");
    // This same process holds the LLC; the note says so.
    let me = std::process::id();
    assert!(progress.notes()[0].contains(&format!("pid {me}")));
    drop(first);
}

#[test]
fn waiter_proceeds_when_a_peer_releases() {
    let e = Arc::new(four_llcs());
    let (cx, _) = new_cx();
    let first = e
        .reserver
        .reserve_on(&req(Some(12)), &cx, &e.allowed)
        .unwrap();
    let e2 = e.clone();
    let (cx2, progress) = new_cx();
    let t = std::thread::spawn(move || {
        let r = e2
            .reserver
            .reserve_on(&req(Some(8)), &cx2, &e2.allowed)
            .unwrap();
        r.cpus.clone()
    });
    assert!(
        noted(&progress, "waiting for 8 CPUs"),
        "{:?}",
        progress.notes()
    );
    assert!(!t.is_finished(), "8 CPUs reserved while only 4 were free");
    let held = first.cpus.clone();
    drop(first);
    let cpus = t.join().unwrap();
    assert_eq!(cpus.len(), 8);
    assert_eq!(held.len(), 12);
}

/// Two 1-CPU builds on a 2-CPU, 1-LLC host: both reserved at once, on
/// disjoint CPUs, the second told it shares the LLC; a third waits.
#[test]
fn two_one_cpu_builds_share_a_one_llc_host() {
    let e = Arc::new(one_llc());
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (e, barrier) = (e.clone(), barrier.clone());
            std::thread::spawn(move || {
                let (cx, progress) = new_cx();
                barrier.wait();
                let r = e
                    .reserver
                    .reserve_on(&req(Some(1)), &cx, &e.allowed)
                    .unwrap();
                (r, progress.notes())
            })
        })
        .collect();
    let got: Vec<(Reservation, Vec<String>)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut cpus: Vec<usize> = got.iter().flat_map(|(r, _)| r.cpus.clone()).collect();
    cpus.sort_unstable();
    assert_eq!(cpus, vec![0, 1], "disjoint CPUs");
    let notes: Vec<&String> = got.iter().flat_map(|(_, n)| n).collect();
    assert!(
        notes.iter().all(|n| !n.starts_with("waiting")),
        "neither waited: {notes:?}"
    );
    // The build that locked second saw the first on LLC 0 when it planned
    // (its first plan lost the race for CPU 0). Both can say so: a build
    // that plans while the other tries the LLC sees it there too.
    let sharing = notes
        .iter()
        .filter(|n| n.ends_with("sharing LLC 0 with other builds"))
        .count();
    assert!((1..=2).contains(&sharing), "{notes:?}");
    // Both CPUs taken: a third build waits (cancelled here).
    let (cx, progress) = new_cx();
    let cancel = cx.cancel.clone();
    let e3 = e.clone();
    let third = std::thread::spawn(move || e3.reserver.reserve_on(&req(Some(1)), &cx, &e3.allowed));
    assert!(
        noted(
            &progress,
            "waiting for 1 CPU free in last-level caches open to builds: LLC 0 held by pid"
        ),
        "{:?}",
        progress.notes()
    );
    cancel.cancel();
    let err = third.join().unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
}

/// `mode = "exclusive-llc"`: the second build queues until the first
/// leaves, and a sharing build cannot join an exclusive one either.
#[test]
fn exclusive_llc_mode_still_queues() {
    let mut e = one_llc();
    e.reserver.config.mode = Mode::ExclusiveLlc;
    let e = Arc::new(e);
    let (cx, progress) = new_cx();
    let first = e
        .reserver
        .reserve_on(&req(Some(1)), &cx, &e.allowed)
        .unwrap();
    assert_eq!(first.cpus, vec![0]);
    assert!(
        lock::try_lock(&locks::llc_lock(&e.lock_dir(), 0), LockMode::Shared)
            .unwrap()
            .is_none(),
        "the LLC is held exclusively"
    );
    assert!(!progress.notes().iter().any(|n| n.contains("sharing")));
    let e2 = e.clone();
    let (cx2, second_progress) = new_cx();
    let second = std::thread::spawn(move || {
        let r = e2
            .reserver
            .reserve_on(&req(Some(1)), &cx2, &e2.allowed)
            .unwrap();
        r.cpus.clone()
    });
    assert!(
        noted(
            &second_progress,
            "waiting for 1 CPU in last-level caches held by other ktstr runs: LLC 0 held by pid"
        ),
        "{:?}",
        second_progress.notes()
    );
    // A sharing build (another host config, same lock directory) waits too.
    let mut sharing = e.reserver.clone();
    sharing.config.mode = Mode::SharedLlc;
    let (cx3, sharing_progress) = new_cx();
    let cancel = cx3.cancel.clone();
    let allowed = e.allowed.clone();
    let sharer = std::thread::spawn(move || sharing.reserve_on(&req(Some(1)), &cx3, &allowed));
    assert!(
        noted(
            &sharing_progress,
            "waiting for 1 CPU free in last-level caches open to builds: LLC 0 held by pid"
        ),
        "{:?}",
        sharing_progress.notes()
    );
    cancel.cancel();
    let err = sharer.join().unwrap().unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert!(
        !second.is_finished(),
        "the second exclusive build must queue"
    );
    drop(first);
    assert_eq!(second.join().unwrap().len(), 1);
}

/// A test runner holding the LLC exclusively (flock(1), as
/// docs/reservation.md tells it) keeps builds off; they proceed when it
/// releases.
#[test]
fn builds_wait_for_an_llc_exclusive_test_runner() {
    let e = one_llc();
    let dir = e.lock_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let release = dir.join("release");
    let mut runner = std::process::Command::new("flock")
        .arg(locks::intent_lock(&dir, 0))
        .arg("flock")
        .arg(locks::llc_lock(&dir, 0))
        .args(["sh", "-c", "while [ ! -e \"$0\" ]; do sleep 0.05; done"])
        .arg(&release)
        .spawn()
        .expect("flock(1) from util-linux");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock::holders(&locks::llc_lock(&dir, 0)).is_empty() {
        assert!(Instant::now() < deadline, "the runner never locked");
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = Arc::new(e);
    let (builds, progress): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| {
            let e = e.clone();
            let (cx, progress) = new_cx();
            let build = std::thread::spawn(move || {
                e.reserver
                    .reserve_on(&req(Some(1)), &cx, &e.allowed)
                    .unwrap()
            });
            (build, progress)
        })
        .unzip();
    // Each build waits, naming the runner, until it releases.
    let runner_named = format!("pid {} (flock", runner.id());
    for p in &progress {
        assert!(
            eventually(|| p
                .notes()
                .iter()
                .any(|n| n.contains("LLC 0 held by pid") && n.contains(&runner_named))),
            "the runner is named: {:?}",
            p.notes()
        );
    }
    assert!(
        builds.iter().all(|b| !b.is_finished()),
        "a build got a CPU of an LLC a test runner holds exclusively"
    );
    std::fs::write(&release, b"").unwrap();
    runner.wait().unwrap();
    let got: Vec<Reservation> = builds.into_iter().map(|t| t.join().unwrap()).collect();
    let mut cpus: Vec<usize> = got.iter().flat_map(|r| r.cpus.clone()).collect();
    cpus.sort_unstable();
    assert_eq!(cpus, vec![0, 1], "after the runner, both at once");
}

/// A perf run waiting (through the SDK) for builds to leave its LLC is not
/// starved by builds that keep arriving: once it announced itself, new
/// builds wait for it.
#[test]
fn a_waiting_perf_run_is_not_starved_by_new_builds() {
    let e = Arc::new(one_llc());
    let (cx, _) = new_cx();
    let running = e
        .reserver
        .reserve_on(&req(Some(1)), &cx, &e.allowed)
        .unwrap();
    let dir = e.lock_dir();
    let perf = std::thread::spawn(move || {
        let (cx, _) = new_cx();
        locks::lock_set(&dir, &[CpuLock::Llc(0)], HolderKind::PerfTest, &cx).unwrap()
    });
    let dir = e.lock_dir();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock::holders(&locks::intent_lock(&dir, 0)).is_empty() {
        assert!(Instant::now() < deadline, "the perf run never announced");
        std::thread::sleep(Duration::from_millis(10));
    }
    // CPU 1 is free, but the LLC is promised to the perf run.
    let e2 = e.clone();
    let (cx2, newcomer_progress) = new_cx();
    let newcomer = std::thread::spawn(move || {
        let r = e2
            .reserver
            .reserve_on(&req(Some(1)), &cx2, &e2.allowed)
            .unwrap();
        (Instant::now(), r)
    });
    assert!(
        noted(&newcomer_progress, "waiting for 1 CPU"),
        "{:?}",
        newcomer_progress.notes()
    );
    assert!(!newcomer.is_finished(), "a new build joined the LLC");
    drop(running);
    let held = perf.join().unwrap();
    let perf_done = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !newcomer.is_finished(),
        "the build must wait for the perf run"
    );
    drop(held);
    let (got_at, r) = newcomer.join().unwrap();
    assert!(got_at > perf_done);
    assert_eq!(r.cpus.len(), 1);
}

/// A 2-CPU build waits behind a 1-CPU one on a 2-CPU host. Before
/// `announce_after_secs`, a later 1-CPU build overtakes it (CPU 1 is free);
/// after, the waiter announces the LLC and later builds wait for it.
#[test]
fn a_build_waiting_too_long_stops_later_builds_overtaking_it() {
    for announce_after_secs in [DEFAULT_ANNOUNCE_AFTER_SECS, 0] {
        let mut e = one_llc();
        e.reserver.config.announce_after_secs = announce_after_secs;
        let e = Arc::new(e);
        let (cx, _) = new_cx();
        let first = e
            .reserver
            .reserve_on(&req(Some(1)), &cx, &e.allowed)
            .unwrap();
        let e2 = e.clone();
        let (cx2, big_progress) = new_cx();
        let big = std::thread::spawn(move || {
            e2.reserver
                .reserve_on(&req(Some(2)), &cx2, &e2.allowed)
                .unwrap()
        });
        // The big build is waiting (and, with 0 s, has announced LLC 0).
        let dir = e.lock_dir();
        let waits = if announce_after_secs > 0 {
            "waiting for 2 CPUs"
        } else {
            "waited 0s: announced LLC 0; builds that come later wait"
        };
        assert!(noted(&big_progress, waits), "{:?}", big_progress.notes());
        assert!(!big.is_finished());
        let e3 = e.clone();
        let (cx3, later_progress) = new_cx();
        let later = std::thread::spawn(move || {
            e3.reserver
                .reserve_on(&req(Some(1)), &cx3, &e3.allowed)
                .unwrap()
        });
        if announce_after_secs > 0 {
            let later = later.join().unwrap();
            assert_eq!(later.cpus, vec![1], "overtakes within the grace time");
            drop((first, later));
            let r = big.join().unwrap();
            assert_eq!(r.cpus, vec![0, 1]);
            continue;
        }
        assert!(
            noted(&later_progress, "waiting for 1 CPU"),
            "{:?}",
            later_progress.notes()
        );
        assert!(
            !lock::holders(&locks::intent_lock(&dir, 0)).is_empty(),
            "the waiter announced LLC 0"
        );
        assert!(!later.is_finished(), "a later build overtook the waiter");
        drop(first);
        let r = big.join().unwrap();
        assert_eq!(r.cpus, vec![0, 1], "the waiter runs first");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!later.is_finished(), "the later build waits for the CPUs");
        drop(r);
        assert_eq!(later.join().unwrap().cpus.len(), 1);
    }
}

#[test]
fn unreadable_sysfs_with_a_cap_is_an_error_with_remedies() {
    let e = four_llcs();
    let mut r = e.reserver.clone();
    r.config.sysfs_root = e.dir.path().join("no-sysfs");
    let (cx, progress) = new_cx();
    let err = r.reserve_on(&req(Some(2)), &cx, &e.allowed).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Io | ErrorKind::Unsupported));
    assert!(
        err.message.starts_with(&format!(
            "--cpu-cap 2 cannot be enforced: cannot read the CPU topology from {}",
            r.config.sysfs_root.display()
        )),
        "{err}"
    );
    let hint = err.hint.unwrap();
    for remedy in [
        "root",
        "systemd-run --user --scope -p Delegate=yes",
        "--reserver none",
        "KTSTR_BYPASS_LLC_LOCKS=1",
    ] {
        assert!(hint.contains(remedy), "{remedy} missing from {hint}");
    }
    assert!(progress.warnings().is_empty());
}

#[test]
fn unreadable_sysfs_without_a_cap_warns_once_and_builds_unconfined() {
    let e = four_llcs();
    let mut r = e.reserver.clone();
    r.config.sysfs_root = e.dir.path().join("no-sysfs");
    let (cx, progress) = new_cx();
    let res = r.reserve_on(&req(None), &cx, &e.allowed).unwrap();
    assert_eq!(res.make_jobs, 5);
    assert!(res.cpus.is_empty() && res.sandbox_procs.is_none() && res.guard.is_none());
    let w = progress.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("make -j5") && w[0].contains("cannot read the CPU topology"),
        "{w:?}"
    );
}

#[test]
fn no_cpuset_controller_with_a_cap_fails_before_locking() {
    let e = four_llcs();
    let mut r = e.reserver.clone();
    r.config.cgroup_root = e.dir.path().join("empty-cgroup");
    std::fs::create_dir_all(&r.config.cgroup_root).unwrap();
    let (cx, _) = new_cx();
    let err = r.reserve_on(&req(Some(4)), &cx, &e.allowed).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unsupported);
    assert!(
        err.message
            .starts_with("--cpu-cap 4 cannot be enforced: no cpuset controller available"),
        "{err}"
    );
    assert!(err.hint.unwrap().contains("--reserver none"));
    assert!(
        locks::list(&e.lock_dir())
            .iter()
            .all(|l| l.holders.is_empty())
    );
}

#[test]
fn no_cpuset_controller_without_a_cap_still_locks_llcs() {
    let e = four_llcs();
    let mut r = e.reserver.clone();
    r.config.cgroup_root = e.dir.path().join("empty-cgroup");
    std::fs::create_dir_all(&r.config.cgroup_root).unwrap();
    let (cx, progress) = new_cx();
    let res = r.reserve_on(&req(None), &cx, &e.allowed).unwrap();
    assert_eq!(res.make_jobs, 5);
    assert!(res.sandbox_procs.is_none());
    assert_eq!(progress.warnings().len(), 1);
    assert!(progress.warnings()[0].contains("without a CPU sandbox"));
    assert!(
        progress
            .notes()
            .iter()
            .any(|n| n.ends_with("(not enforced)"))
    );
    // Peers still steer around this build.
    let me = std::process::id();
    assert!(
        locks::list(&e.lock_dir())
            .iter()
            .any(|l| l.id == "0" && l.holders.iter().any(|h| h.pid == me))
    );
}

#[test]
fn sweeps_orphans_of_dead_processes() {
    let e = four_llcs();
    let orphan = e.cgroup_parent().join("ktstr-999999999-3");
    std::fs::create_dir_all(&orphan).unwrap();
    let (cx, _) = new_cx();
    let r = e
        .reserver
        .reserve_on(&req(Some(1)), &cx, &e.allowed)
        .unwrap();
    assert!(!orphan.exists());
    drop(r);
    let left: Vec<_> = std::fs::read_dir(e.cgroup_parent())
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("ktstr-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn config_table_is_parsed_and_checked() {
    assert_eq!(
        LlcConfig::from_value(&PluginConfig::Null).unwrap(),
        LlcConfig::default()
    );
    let c = LlcConfig::from_value(&serde_json::json!({
        "sysfs_root": "/x/sys", "cgroup_root": "/x/cg", "lock_dir": "/x/locks", "budget_percent": 50
    }))
    .unwrap();
    assert_eq!(c.sysfs_root, Path::new("/x/sys"));
    assert_eq!(c.cgroup_root, Path::new("/x/cg"));
    assert_eq!(c.lock_dir.as_deref(), Some(Path::new("/x/locks")));
    assert_eq!(c.budget_percent, 50);
    assert_eq!(c.mode, Mode::SharedLlc, "sharing is the default");
    assert_eq!(c.announce_after_secs, 30);
    let c = LlcConfig::from_value(
        &serde_json::json!({"mode": "exclusive-llc", "announce_after_secs": 5}),
    )
    .unwrap();
    assert_eq!(c.mode, Mode::ExclusiveLlc);
    assert_eq!(c.announce_after_secs, 5);
    let e = LlcConfig::from_value(&serde_json::json!({"mode": "exclusive"})).unwrap_err();
    assert!(e.to_string().contains("exclusive-llc"), "{e}");
    let e = LlcConfig::from_value(&serde_json::json!({"budget": 5})).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("[plugin.llc]: unknown field `budget`"),
        "{e}"
    );
    assert!(e.hint.unwrap().contains("budget_percent"));
    let e = LlcConfig::from_value(&serde_json::json!({"budget_percent": 0})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "[plugin.llc] budget_percent = 0: must be between 1 and 100"
    );
}

#[test]
fn budget_percent_from_config_is_used() {
    let mut e = four_llcs();
    e.reserver.config.budget_percent = 50;
    let (cx, _) = new_cx();
    let r = e.reserver.reserve_on(&req(None), &cx, &e.allowed).unwrap();
    assert_eq!(r.make_jobs, 8);
}

#[test]
fn registered_as_builtin() {
    let p = ktstr_sdk::registry::builtins()
        .into_iter()
        .find(|p| p.name == NAME)
        .expect("llc is registered");
    let Constructor::Reserver(make) = p.constructor else {
        panic!("llc is not a reserver");
    };
    assert!(make(&PluginConfig::Null).is_ok());
    assert!(make(&serde_json::json!({"nope": 1})).is_err());
}

// ---- real cgroups (root, cpuset controller) --------------------------------

/// A reserver on the real /sys and /sys/fs/cgroup with a temp lock dir,
/// or None (with the reason printed) when this host cannot run the test.
fn real_host() -> Option<(tempfile::TempDir, LlcReserver, cgroup::Hierarchy)> {
    if !nix::unistd::geteuid().is_root() {
        ktstr_sdk::testing::skip("real cpuset sandbox tests need root");
        return None;
    }
    let h = match cgroup::detect_for_self(Path::new("/sys/fs/cgroup")) {
        Ok(h) if !h.synthetic => h,
        Ok(h) => {
            ktstr_sdk::testing::skip(format!("{} is not a cgroup filesystem", h.parent.display()));
            return None;
        }
        Err(e) => {
            ktstr_sdk::testing::skip(e);
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let r = LlcReserver {
        config: LlcConfig {
            lock_dir: Some(dir.path().join("locks")),
            ..LlcConfig::default()
        },
    };
    Some((dir, r, h))
}

fn our_sandboxes(h: &cgroup::Hierarchy) -> Vec<PathBuf> {
    let me = format!("ktstr-{}-", std::process::id());
    std::fs::read_dir(&h.parent)
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(&me))
        .map(|d| d.path())
        .collect()
}

fn in_sandbox(procs: &Path, script: &str) -> (Option<i32>, String) {
    let mut spec = CommandSpec::new("sh").args(["-c", script]);
    spec.cgroup_procs = Some(procs.to_path_buf());
    let out = SystemRunner.capture(&spec).unwrap();
    (out.code, out.stdout)
}

#[test]
fn real_sandbox_confines_the_child_to_the_plan() {
    let Some((_dir, r, _h)) = real_host() else {
        return;
    };
    let (cx, _) = new_cx();
    let res = r.reserve(&req(Some(1)), &cx).unwrap();
    assert_eq!(res.cpus.len(), 1);
    let procs = res.sandbox_procs.clone().expect("sandbox on a root host");
    let sandbox = procs.parent().unwrap().to_path_buf();
    let (code, out) = in_sandbox(
        &procs,
        "grep -E '^(Cpus|Mems)_allowed_list' /proc/self/status",
    );
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!(
            "Cpus_allowed_list:\t{}\n",
            topology::format_cpulist(&res.cpus)
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Mems_allowed_list:\t{}\n",
            topology::format_cpulist(&res.mems)
        )),
        "{out}"
    );
    // ktstr itself stays outside.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert!(!own.contains(sandbox.file_name().unwrap().to_str().unwrap()));
    drop(res);
    assert!(!sandbox.exists());
}

#[test]
fn real_sandbox_is_removed_after_a_failed_child_and_a_straggler() {
    let Some((_dir, r, h)) = real_host() else {
        return;
    };
    let (cx, _) = new_cx();
    let res = r.reserve(&req(Some(1)), &cx).unwrap();
    let procs = res.sandbox_procs.clone().unwrap();
    let sandbox = procs.parent().unwrap().to_path_buf();
    let (code, _) = in_sandbox(&procs, "exit 3");
    assert_eq!(code, Some(3));
    // A background process outlives its shell: it is moved out on drop.
    let (code, _) = in_sandbox(&procs, "sleep 3 >/dev/null 2>&1 & exit 0");
    assert_eq!(code, Some(0));
    drop(res);
    assert!(!sandbox.exists(), "straggler kept the sandbox alive");
    assert!(
        !our_sandboxes(&h).contains(&sandbox),
        "{:?}",
        our_sandboxes(&h)
    );
}

#[test]
fn real_sweep_removes_an_orphan_of_a_dead_pid() {
    let Some((_dir, r, h)) = real_host() else {
        return;
    };
    // A pid no process can have; the suffix keeps concurrent runs apart.
    let orphan = h
        .parent
        .join(format!("ktstr-999999999-{}", std::process::id()));
    std::fs::create_dir_all(&orphan).unwrap();
    let (cx, _) = new_cx();
    let res = r.reserve(&req(Some(1)), &cx).unwrap();
    assert!(!orphan.exists(), "orphan not swept");
    drop(res);
}

#[test]
fn real_default_budget_on_this_host() {
    let Some((_dir, r, _h)) = real_host() else {
        return;
    };
    let (cx, progress) = new_cx();
    let allowed = allowed_cpus().unwrap();
    let res = r.reserve(&req(None), &cx).unwrap();
    assert_eq!(res.make_jobs, (allowed.len() * 3).div_ceil(10).max(1));
    assert!(res.sandbox_procs.is_some());
    assert!(progress.warnings().is_empty(), "{:?}", progress.warnings());
    assert!(SystemRunner.capture(&CommandSpec::new("true")).is_ok());
}

#[test]
fn passes_the_reserver_conformance_suite_on_a_synthetic_machine() {
    let e = four_llcs();
    let report = ktstr_sdk::conformance::reserver::check(&e.reserver);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

#[test]
fn real_passes_the_reserver_conformance_suite() {
    let Some((_dir, r, _h)) = real_host() else {
        return;
    };
    ktstr_sdk::conformance::reserver::assert_conforms(&r);
}
