//! The reserver conformance suite's `release-order` watcher must never
//! blame a correct release. It once looked at the sandbox before the lock,
//! so a guard that removed the sandbox and freed the lock between the two
//! looks was blamed; a CI run failed that way (commit b0b1a1d).
//!
//! Catching that race takes busy threads preempting the watcher for
//! hundreds of rounds, which would stretch every timing window of the
//! other tests in the SDK's unit-test binary; cargo runs this binary on
//! its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ktstr_sdk::conformance::reserver::check;
use ktstr_sdk::cpus::locks::{CpuLock, HolderKind, list, try_lock_set};
use ktstr_sdk::lock::FileLock;
use ktstr_sdk::lock_list::LockInfo;
use ktstr_sdk::prelude::*;

/// Grants the first allowed CPU with a lock file and a synthetic sandbox
/// in a temp dir, and releases them in the right order.
struct Correct {
    dir: tempfile::TempDir,
}

/// Removes the sandbox, then (its fields dropping after `drop`) the locks.
struct Guard {
    sandbox: PathBuf,
    _locks: Vec<FileLock>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.sandbox);
    }
}

impl Reserver for Correct {
    fn reserve(&self, request: &ReserveRequest, _cx: &StageContext) -> Result<Reservation> {
        let allowed = ktstr_sdk::cpus::allowed_cpus()?;
        if request.cpu_cap.is_some_and(|c| c > allowed.len()) {
            return Err(StageError::invalid_input("too many"));
        }
        let cpu = *allowed.first().unwrap();
        let locks = try_lock_set(
            &self.dir.path().join("locks"),
            &[CpuLock::Cpu(cpu)],
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
            cpus: vec![cpu],
            mems: vec![0],
            make_jobs: 1,
            sandbox_procs: Some(sandbox.join("cgroup.procs")),
            guard: Some(Box::new(Guard {
                sandbox,
                _locks: locks,
            })),
        })
    }

    fn locks(&self) -> Result<Vec<LockInfo>> {
        Ok(list(&self.dir.path().join("locks")))
    }
}

/// Many correct releases in a row all pass, while busy threads preempt
/// the watcher between its looks, as a loaded CI machine did. Against the
/// old watcher this failed about one run in three.
#[test]
fn a_correct_release_is_never_blamed_for_the_order() {
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let blamed = (0..300)
        .map(|_| {
            check(&Correct {
                dir: tempfile::tempdir().unwrap(),
            })
        })
        .find(|r| r.broke("release-order"));
    stop.store(true, Ordering::Relaxed);
    spinners.into_iter().for_each(|t| t.join().unwrap());
    assert!(blamed.is_none(), "{:?}", blamed.map(|r| r.violations));
}
