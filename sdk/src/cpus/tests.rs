//! `Host::confine` and the lock protocol's modes, on synthetic sysfs and
//! cgroup trees with real flocks in temp directories.

use std::path::Path;
use std::sync::Arc;

use super::topology::fake::FakeMachine;
use super::*;
use crate::lock::tests::settles;
use crate::lock::{self, LockMode};
use crate::runner::SystemRunner;
use crate::testing::context_with;

/// A v1-style cgroup tree (v2 without cpuset, a v1 cpuset hierarchy).
fn fake_cgroups(root: &Path) {
    for (p, text) in [
        ("unified/cgroup.controllers", ""),
        ("cpuset/cpuset.cpus", "0-15"),
        ("cpuset/cpuset.mems", "0"),
        ("cpuset/cgroup.procs", ""),
    ] {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A host whose allowed CPUs form LLCs of two, cgroups synthetic.
fn host(dir: &Path, cgroups: bool) -> Host {
    let allowed: Vec<usize> = allowed_cpus().unwrap().into_iter().collect();
    let llcs: Vec<&[usize]> = allowed.chunks(2).collect();
    FakeMachine {
        llcs: &llcs,
        nodes: &[&allowed],
        online: None,
        smt: 1,
    }
    .write(&dir.join("sys"));
    if cgroups {
        fake_cgroups(&dir.join("cgroup"));
    }
    Host {
        sysfs_root: dir.join("sys"),
        cgroup_root: dir.join("cgroup"),
        lock_dir: Some(dir.join("locks")),
    }
}

fn first_cpu() -> CpuSet {
    allowed_cpus().unwrap().into_iter().take(1).collect()
}

#[test]
fn confine_locks_the_llc_and_creates_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), true);
    let (cx, progress) = context_with(Arc::new(SystemRunner));
    let res = h.confine(&first_cpu(), true, &cx).unwrap();
    let cpu = *first_cpu().first().unwrap();
    assert_eq!(res.cpus, vec![cpu]);
    assert_eq!(res.make_jobs, 1);
    let procs = res.sandbox_procs.clone().unwrap();
    let sandbox = procs.parent().unwrap().to_path_buf();
    assert_eq!(
        std::fs::read_to_string(sandbox.join("cpuset.cpus")).unwrap(),
        cpu.to_string()
    );
    // The first allowed CPU is in the fake machine's first LLC, id 0: the
    // build shares the LLC and owns the CPU.
    let llc = dir.path().join("locks/llc-0.lock");
    assert!(
        lock::try_lock(&llc, LockMode::Exclusive).unwrap().is_none(),
        "the LLC must be held (shared): no perf run may take it"
    );
    assert!(
        lock::try_lock(&llc, LockMode::Shared).unwrap().is_some(),
        "another build may share the LLC"
    );
    let cpu_lock = locks::cpu_lock(&dir.path().join("locks"), cpu);
    assert!(
        lock::try_lock(&cpu_lock, LockMode::Shared)
            .unwrap()
            .is_none(),
        "the CPU must be held exclusively"
    );
    assert!(progress.warnings().is_empty());
    assert!(progress.notes().iter().any(|n| n.contains("reserved CPU")));
    drop(res);
    assert!(!sandbox.exists());
    let free = |p: &Path| settles(|| lock::try_lock(p, LockMode::Exclusive).unwrap().is_some());
    assert!(free(&llc), "the LLC is released");
    assert!(free(&cpu_lock), "the CPU is released");
}

#[test]
fn no_cpuset_controller_fails_a_cap_and_warns_once_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), false);
    let (cx, progress) = context_with(Arc::new(SystemRunner));
    let e = h.confine(&first_cpu(), true, &cx).unwrap_err();
    assert!(e.to_string().contains("cannot be enforced"), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("Delegate=yes"), "{e}");

    let res = h.confine(&first_cpu(), false, &cx).unwrap();
    assert!(res.sandbox_procs.is_none());
    assert_eq!(progress.warnings().len(), 1, "{:?}", progress.warnings());
    assert!(progress.warnings()[0].contains("best-effort"));
    assert!(
        progress
            .notes()
            .iter()
            .any(|n| n.contains("(not enforced)"))
    );
}

#[test]
fn cpus_outside_the_affinity_mask_or_offline_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), true);
    let (cx, _) = context_with(Arc::new(SystemRunner));
    let beyond = allowed_cpus().unwrap().last().unwrap() + 1;
    let e = h.confine(&CpuSet::from([beyond]), false, &cx).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("CPUs {beyond} are not available")),
        "{e}"
    );
    assert!(e.hint.is_some());
    let e = h.confine(&CpuSet::new(), false, &cx).unwrap_err();
    assert!(e.to_string().contains("no CPUs to reserve"), "{e}");

    let cpu = *first_cpu().first().unwrap();
    let online = allowed_cpus().unwrap();
    let rest: CpuSet = online.iter().copied().filter(|&c| c != cpu).collect();
    std::fs::write(
        dir.path().join("sys/devices/system/cpu/online"),
        format_cpulist(&rest),
    )
    .unwrap();
    let e = h.confine(&first_cpu(), false, &cx).unwrap_err();
    assert!(e.to_string().contains("offline"), "{e}");
}

#[test]
fn a_held_lock_makes_confine_wait_cancellably_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), true);
    let (cx, progress) = context_with(Arc::new(SystemRunner));
    let first = h.confine(&first_cpu(), false, &cx).unwrap();
    let cancel = cx.cancel.clone();
    let second = std::thread::spawn(move || h.confine(&first_cpu(), false, &cx).map(drop));
    let me = format!("pid {}", std::process::id());
    assert!(
        settles(|| progress
            .notes()
            .iter()
            .any(|n| n.starts_with("waiting for CPU") && n.contains(&me))),
        "{:?}",
        progress.notes()
    );
    assert!(!second.is_finished(), "confine must wait for the held CPU");
    cancel.cancel();
    let e = second.join().unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
    drop(first);
}

/// The table of docs/reservation.md: who may share an LLC and a CPU with
/// whom.
#[test]
fn holder_modes_follow_the_documented_table() {
    use HolderKind::*;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let on = |cpu: usize| [CpuLock::Llc(3), CpuLock::Cpu(cpu)];
    let take = |locks: &[CpuLock], h: HolderKind| locks::try_lock_set(d, locks, h).unwrap();

    // Functional runs share LLC and CPU with each other; builds share the
    // LLC with them but not their CPU; a perf run shares nothing.
    let f1 = take(&on(0), FunctionalTest).unwrap();
    let f2 = take(&on(0), FunctionalTest).unwrap();
    assert_eq!(take(&on(0), Build).unwrap_err(), CpuLock::Cpu(0));
    let b1 = take(&on(1), Build).unwrap();
    assert_eq!(take(&on(1), Build).unwrap_err(), CpuLock::Cpu(1));
    let b2 = take(&on(2), Build).unwrap();
    for h in [PerfTest, ExclusiveBuild] {
        assert_eq!(take(&[CpuLock::Llc(3)], h).unwrap_err(), CpuLock::Llc(3));
    }
    drop((f1, f2, b1, b2));

    // A perf run (or an LLC-exclusive build) keeps everyone off its LLC.
    for owner in [PerfTest, ExclusiveBuild] {
        let mut held = None;
        assert!(
            settles(|| {
                held = take(&[CpuLock::Llc(3)], owner).ok();
                held.is_some()
            }),
            "{owner:?} cannot take the released LLC"
        );
        for h in [Build, FunctionalTest, PerfTest, ExclusiveBuild] {
            assert_eq!(
                take(&on(4), h).unwrap_err(),
                CpuLock::Llc(3),
                "{owner:?} vs {h:?}"
            );
        }
        drop(held);
    }
}

#[test]
fn locks_for_uses_llcs_and_falls_back_to_cpus() {
    let topo = Topology {
        llcs: vec![Llc {
            id: 7,
            cpus: CpuSet::from([0, 1]),
            node: 0,
        }],
        ..Topology::default()
    };
    let cpus = CpuSet::from([0, 1, 5]);
    assert_eq!(
        locks::locks_for(&cpus, Some(&topo)),
        [
            CpuLock::Llc(7),
            CpuLock::Cpu(0),
            CpuLock::Cpu(1),
            CpuLock::Cpu(5)
        ]
    );
    assert_eq!(
        locks::locks_for(&cpus, None),
        [CpuLock::Cpu(0), CpuLock::Cpu(1), CpuLock::Cpu(5)]
    );
    let dir = tempfile::tempdir().unwrap();
    let held = locks::try_lock_set(
        dir.path(),
        &[CpuLock::Cpu(5), CpuLock::Llc(7)],
        HolderKind::Build,
    )
    .unwrap()
    .unwrap();
    let listed = locks::list(dir.path());
    assert_eq!(
        listed
            .iter()
            .map(|l| (l.kind.as_str(), l.id.as_str()))
            .collect::<Vec<_>>(),
        [("llc", "7"), ("cpu", "5")]
    );
    drop(held);
}
