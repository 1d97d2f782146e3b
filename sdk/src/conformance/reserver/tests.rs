//! The suite must fail: deliberately broken reservers, each breaking one
//! rule, are reported with that rule's name; a correct one passes.

use std::path::PathBuf;

use super::*;
use crate::cpus::locks::{CpuLock, HolderKind, try_lock_set};
use crate::cpus::{Confined, Host, Sandbox};
use crate::lock::FileLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    None,
    OutsideAllowed,
    IgnoresCap,
    GrantsTooMany,
    LeaksSandbox,
    LocksFirst,
    KeepsLocks,
}

/// Grants the first allowed CPU, with a lock file and a synthetic sandbox
/// in a temp dir, broken as `flaw` says.
struct Fake {
    flaw: Flaw,
    dir: tempfile::TempDir,
}

struct Guard {
    flaw: Flaw,
    sandbox: PathBuf,
    locks: Vec<FileLock>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        match self.flaw {
            Flaw::LocksFirst => {
                // The locks are free (once any fork's copy of them is
                // gone), and stay so with the sandbox there for a while.
                let paths: Vec<PathBuf> = self.locks.iter().map(|l| l.path().to_owned()).collect();
                self.locks.clear();
                let deadline = Instant::now() + Duration::from_secs(30);
                while paths.iter().any(|p| held_by_me(p)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(300));
                let _ = std::fs::remove_dir_all(&self.sandbox);
            }
            Flaw::LeaksSandbox => {}
            Flaw::KeepsLocks => {
                let _ = std::fs::remove_dir_all(&self.sandbox);
                std::mem::forget(std::mem::take(&mut self.locks));
            }
            _ => {
                let _ = std::fs::remove_dir_all(&self.sandbox);
            }
        }
    }
}

impl Fake {
    fn new(flaw: Flaw) -> Self {
        Self {
            flaw,
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Reserver for Fake {
    fn reserve(&self, request: &ReserveRequest, _cx: &StageContext) -> Result<Reservation> {
        let allowed = cpus::allowed_cpus()?;
        if request.cpu_cap.is_some_and(|c| c > allowed.len()) && self.flaw != Flaw::GrantsTooMany {
            return Err(StageError::invalid_input("too many"));
        }
        let first = *allowed.first().unwrap();
        let mut cpus = vec![first];
        if self.flaw == Flaw::OutsideAllowed {
            cpus = vec![allowed.last().unwrap() + 1];
        }
        if self.flaw == Flaw::IgnoresCap {
            cpus.push(first + 1);
        }
        let locks = try_lock_set(
            &self.dir.path().join("locks"),
            &[CpuLock::Cpu(cpus[0])],
            HolderKind::Build,
        )?
        .map_err(|l| StageError::internal(format!("{l} busy")))?;
        let sandbox = self
            .dir
            .path()
            .join(format!("sandbox-{:?}", request.cpu_cap));
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::write(sandbox.join("cgroup.procs"), "").unwrap();
        Ok(Reservation {
            make_jobs: cpus.len(),
            cpus,
            mems: vec![0],
            sandbox_procs: Some(sandbox.join("cgroup.procs")),
            guard: Some(Box::new(Guard {
                flaw: self.flaw,
                sandbox,
                locks,
            })),
        })
    }

    fn locks(&self) -> Result<Vec<crate::lock_list::LockInfo>> {
        Ok(cpus::locks::list(&self.dir.path().join("locks")))
    }
}

fn broken_rules(flaw: Flaw) -> Report {
    let report = check(&Fake::new(flaw));
    eprintln!("{flaw:?}: {:?}", report.violations);
    report
}

#[test]
fn a_correct_reserver_passes() {
    let report = broken_rules(Flaw::None);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_conforms(&Fake::new(Flaw::None));
}

#[test]
fn cpus_outside_the_allowed_set_are_reported() {
    let r = broken_rules(Flaw::OutsideAllowed);
    assert!(r.broke("within-allowed"), "{:?}", r.violations);
    assert!(
        r.violations[0]
            .to_string()
            .contains("outside the allowed set")
    );
}

#[test]
fn an_ignored_cap_is_reported() {
    let r = broken_rules(Flaw::IgnoresCap);
    assert!(r.broke("cpu-cap"), "{:?}", r.violations);
    let r = broken_rules(Flaw::GrantsTooMany);
    assert!(r.broke("cpu-cap"), "{:?}", r.violations);
    assert!(
        r.violations
            .iter()
            .any(|v| v.detail.contains("must be an error")),
        "{:?}",
        r.violations
    );
}

#[test]
fn a_leaked_sandbox_is_reported() {
    let r = broken_rules(Flaw::LeaksSandbox);
    assert!(r.broke("release-sandbox"), "{:?}", r.violations);
    assert!(!r.broke("release-locks"));
}

#[test]
fn locks_released_before_the_sandbox_are_reported() {
    let r = broken_rules(Flaw::LocksFirst);
    assert!(r.broke("release-order"), "{:?}", r.violations);
    assert!(!r.broke("release-sandbox"));
}

#[test]
fn kept_locks_are_reported() {
    let r = broken_rules(Flaw::KeepsLocks);
    assert!(r.broke("release-locks"), "{:?}", r.violations);
}

#[test]
#[should_panic(expected = "rule `release-sandbox` broken")]
fn assert_conforms_panics_naming_the_rule() {
    assert_conforms(&Fake::new(Flaw::LeaksSandbox));
}

// ---- real cgroups ---------------------------------------------------------

/// `Host::confine` on the real host, on the first allowed CPU (or, with
/// `lie`, a sandbox on every allowed CPU while claiming one).
struct Real {
    lie: bool,
    unconfined: bool,
    host: Host,
    _dir: tempfile::TempDir,
}

impl Real {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            lie: false,
            unconfined: false,
            host: Host {
                lock_dir: Some(dir.path().join("locks")),
                ..Host::default()
            },
            _dir: dir,
        }
    }
}

impl Reserver for Real {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation> {
        let allowed = cpus::allowed_cpus()?;
        if request.cpu_cap.is_some_and(|c| c > allowed.len()) {
            return Err(StageError::invalid_input("too many"));
        }
        let one: CpuSet = allowed.iter().take(1).copied().collect();
        if self.unconfined {
            return Ok(Reservation {
                cpus: one.into_iter().collect(),
                mems: vec![],
                make_jobs: 1,
                sandbox_procs: None,
                guard: None,
            });
        }
        if !self.lie {
            return self.host.confine(&one, request.cpu_cap.is_some(), cx);
        }
        let h = self.host.cpuset_hierarchy()?;
        let all: Vec<usize> = allowed.iter().copied().collect();
        let sb = Sandbox::create_joinable(&h, &all, &[0], cx)?;
        Ok(Confined::new(Some(sb), vec![]).into_reservation(one.into_iter().collect(), vec![0]))
    }

    fn locks(&self) -> Result<Vec<crate::lock_list::LockInfo>> {
        Ok(cpus::locks::list(&self.host.lock_dir()?))
    }
}

#[test]
fn real_host_confine_passes_the_suite() {
    if let Err(why) = host_can_confine() {
        skip(why);
        return;
    }
    let r = check(&Real::new());
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
}

#[test]
fn real_host_unconfined_or_misconfined_is_reported() {
    if let Err(why) = host_can_confine() {
        skip(why);
        return;
    }
    let r = check(&Real {
        unconfined: true,
        ..Real::new()
    });
    assert!(r.broke("confined"), "{:?}", r.violations);
    assert!(
        r.violations[0].detail.contains("no sandbox"),
        "{:?}",
        r.violations
    );
    if cpus::allowed_cpus().unwrap().len() < 2 {
        skip("a lying sandbox needs 2 allowed CPUs");
        return;
    }
    let r = check(&Real {
        lie: true,
        ..Real::new()
    });
    assert!(r.broke("confined"), "{:?}", r.violations);
    assert!(
        r.violations[0].detail.contains("may run on CPUs"),
        "{:?}",
        r.violations
    );
}
