//! The reserver conformance suite (see docs/plugin-authoring.md).
//!
//! A reserver author calls [`check`] (or [`assert_conforms`]) from their
//! own tests with their reserver, configured as on a real host. The suite
//! reserves through the real command runner and checks the rules every
//! reserver must keep, each named so a failure points at one:
//!
//! - `reserve`: the default request is granted (or refused with an error);
//! - `within-allowed`: granted CPUs are ones this process may run on;
//! - `make-jobs`: `make -jN` is at least 1 and at most the granted CPUs;
//! - `cpu-cap`: `--cpu-cap 1` is honoured or refused, and a cap above the
//!   allowed CPUs is refused;
//! - `confined`: a process spawned through the runner with the
//!   reservation's sandbox runs on exactly the granted CPUs, and a
//!   reserver that grants CPUs on a host that can confine gives a sandbox;
//! - `release-sandbox`, `release-locks`: after the guard drops, the
//!   sandbox is gone and none of its locks (those its `locks()` hook
//!   lists) is held by this process;
//! - `release-order`: the sandbox is gone before any lock is released.
//!
//! "Allowed" is this process's affinity mask; run the suite with the
//! reserver configured as on a real host (a temp `lock_dir` keeps
//! concurrent tests apart).
//!
//! Checks that need what the host lacks (root, a cgroup filesystem) are
//! skipped with the reason printed, never passed silently.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cpus::{self, CpuSet, format_cpulist, parse_cpulist, sandbox};
use crate::lock;
use crate::prelude::*;
use crate::runner::SystemRunner;
use crate::testing::{context_with, skip};

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule's name (see the module doc).
    pub rule: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rule `{}` broken: {}", self.rule, self.detail)
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Checks not run, and why (also printed when they are skipped).
    pub skipped: Vec<String>,
}

impl Report {
    fn fail(&mut self, rule: &'static str, detail: impl Into<String>) {
        self.violations.push(Violation {
            rule,
            detail: detail.into(),
        });
    }

    fn skip(&mut self, why: String) {
        skip(format!("reserver conformance: {why}"));
        self.skipped.push(why);
    }

    /// Whether `rule` was broken.
    pub fn broke(&self, rule: &str) -> bool {
        self.violations.iter().any(|v| v.rule == rule)
    }
}

/// Run the suite and panic with every broken rule.
#[track_caller]
pub fn assert_conforms(reserver: &dyn Reserver) {
    let report = check(reserver);
    if !report.violations.is_empty() {
        let lines: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        panic!(
            "the reserver breaks the reservation contract:\n  {}",
            lines.join("\n  ")
        );
    }
}

/// Run the suite against `reserver`.
pub fn check(reserver: &dyn Reserver) -> Report {
    let mut report = Report::default();
    let allowed = match cpus::allowed_cpus() {
        Ok(a) => a,
        Err(e) => {
            report.skip(format!("cannot read this process's CPUs: {e}"));
            return report;
        }
    };
    let (cx, _) = context_with(Arc::new(SystemRunner));
    let ask = |cap| reserver.reserve(&ReserveRequest { cpu_cap: cap }, &cx);

    match ask(None) {
        Ok(res) => check_reservation(reserver, res, &allowed, None, &cx, &mut report),
        Err(e) => report.fail("reserve", format!("the default request failed: {e}")),
    }
    match ask(Some(1)) {
        Ok(res) => check_reservation(reserver, res, &allowed, Some(1), &cx, &mut report),
        Err(e) => report.skip(format!("--cpu-cap 1 refused ({e}); cap checks not run")),
    }
    let too_many = allowed.len() + 1;
    if let Ok(res) = ask(Some(too_many)) {
        report.fail(
            "cpu-cap",
            format!(
                "--cpu-cap {too_many} was granted ({} CPUs, make -j{}) although only {} CPUs \
                 are allowed; a cap that cannot be kept must be an error",
                res.cpus.len(),
                res.make_jobs,
                allowed.len()
            ),
        );
    }
    report
}

fn check_reservation(
    reserver: &dyn Reserver,
    mut res: Reservation,
    allowed: &CpuSet,
    cap: Option<usize>,
    cx: &StageContext,
    report: &mut Report,
) {
    let what = match cap {
        Some(c) => format!("with --cpu-cap {c}"),
        None => "by default".to_string(),
    };
    let granted: CpuSet = res.cpus.iter().copied().collect();
    let outside: CpuSet = granted.difference(allowed).copied().collect();
    if !outside.is_empty() {
        report.fail(
            "within-allowed",
            format!(
                "{what}: granted CPUs {} outside the allowed set {}",
                format_cpulist(&outside),
                format_cpulist(allowed)
            ),
        );
    }
    if res.make_jobs == 0 || (!granted.is_empty() && res.make_jobs > granted.len()) {
        report.fail(
            "make-jobs",
            format!(
                "{what}: make -j{} for {} granted CPUs",
                res.make_jobs,
                granted.len()
            ),
        );
    }
    if let Some(cap) = cap
        && (res.make_jobs > cap || granted.len() > cap)
    {
        report.fail(
            "cpu-cap",
            format!(
                "--cpu-cap {cap} granted {} CPUs ({}) and make -j{}",
                granted.len(),
                format_cpulist(&granted),
                res.make_jobs
            ),
        );
    }

    let sandbox_dir = res
        .sandbox_procs
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    match &res.sandbox_procs {
        Some(procs) => check_confined(procs, &granted, &what, cx, report),
        None if !granted.is_empty() => match host_can_confine() {
            Ok(()) => report.fail(
                "confined",
                format!(
                    "{what}: granted CPUs {} but no sandbox, on a host that can confine",
                    format_cpulist(&granted)
                ),
            ),
            Err(why) => report.skip(format!("{what}: confinement not checked: {why}")),
        },
        None => {}
    }

    // A straggler in a real sandbox makes its removal take a while, so a
    // guard that frees the locks first is seen doing it.
    let real = sandbox_dir.as_deref().is_some_and(sandbox::is_cgroupfs);
    if real && let Some(procs) = &res.sandbox_procs {
        let mut spec = CommandSpec::new("sh").args(["-c", "sleep 1 >/dev/null 2>&1 & exit 0"]);
        spec.cgroup_procs = Some(procs.clone());
        let _ = cx.runner.capture(&spec);
    }
    let mine = |paths: &[PathBuf]| -> Vec<PathBuf> {
        paths
            .iter()
            .filter(|p| held_by_me(p))
            .cloned()
            .collect::<Vec<_>>()
    };
    let lock_paths: Vec<PathBuf> = reserver
        .locks()
        .map(|l| l.into_iter().map(|i| i.path).collect())
        .unwrap_or_default();
    let held = mine(&lock_paths);

    // Watch the release: a lock of ours free while the sandbox exists
    // breaks the order. The lock is looked at first and the sandbox after:
    // a sandbox seen afterwards existed when the lock was seen free (it is
    // never re-created), whereas the other order would blame a guard that
    // removed the sandbox between the two looks. A lock counts as free when
    // two readings of /proc/locks in a row miss it: while other processes
    // take and release locks, one reading of a table longer than a page
    // can skip a held lock (see `lock::proc_locks`).
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, held, dir) = (done.clone(), held.clone(), sandbox_dir.clone());
        std::thread::spawn(move || {
            let d = dir?;
            let mut seen_free = false;
            while !done.load(Ordering::Acquire) {
                match held.iter().find(|p| !held_by_me(p)) {
                    Some(free) if seen_free && d.exists() => return Some(free.clone()),
                    free => seen_free = free.is_some(),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        })
    };
    drop(res.guard.take());
    drop(res);
    done.store(true, Ordering::Release);
    if let Ok(Some(free)) = watcher.join() {
        report.fail(
            "release-order",
            format!(
                "{what}: lock {} was released while the sandbox {} still existed; \
                 remove the sandbox first (hold it in ktstr_sdk::cpus::Confined)",
                free.display(),
                sandbox_dir.as_deref().unwrap_or(Path::new("?")).display()
            ),
        );
    }
    if let Some(dir) = &sandbox_dir
        && dir.exists()
    {
        report.fail(
            "release-sandbox",
            format!(
                "{what}: sandbox {} still exists after the guard dropped",
                dir.display()
            ),
        );
    }
    // A fork in another thread holds copies of lock fds until it execs.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut still = mine(&held);
    while !still.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        still = mine(&held);
    }
    if !still.is_empty() {
        report.fail(
            "release-locks",
            format!(
                "{what}: still held after the guard dropped: {}",
                still
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
}

fn held_by_me(path: &Path) -> bool {
    let me = std::process::id();
    lock::holders(path)
        .iter()
        .any(|h| h.pid == me && !h.waiting)
}

fn check_confined(
    procs: &Path,
    granted: &CpuSet,
    what: &str,
    cx: &StageContext,
    report: &mut Report,
) {
    let Some(dir) = procs.parent() else {
        report.fail(
            "confined",
            format!("{what}: sandbox_procs {} has no directory", procs.display()),
        );
        return;
    };
    if !dir.is_dir() {
        report.fail(
            "confined",
            format!("{what}: sandbox {} does not exist", dir.display()),
        );
        return;
    }
    if !sandbox::is_cgroupfs(dir) {
        report.skip(format!(
            "{what}: {} is not a cgroup filesystem (a test tree); confinement not checked",
            dir.display()
        ));
        return;
    }
    let mut spec = CommandSpec::new("sh").args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
    spec.cgroup_procs = Some(procs.to_path_buf());
    let out = match cx.runner.capture(&spec) {
        Ok(o) if o.code == Some(0) => o.stdout,
        Ok(o) => {
            report.fail(
                "confined",
                format!("{what}: a process in the sandbox exited with {:?}", o.code),
            );
            return;
        }
        Err(e) => {
            report.fail(
                "confined",
                format!("{what}: a process cannot join the sandbox: {e}"),
            );
            return;
        }
    };
    let ran_on = out
        .split_once(':')
        .and_then(|(_, list)| parse_cpulist(list).ok())
        .unwrap_or_default();
    if &ran_on != granted {
        report.fail(
            "confined",
            format!(
                "{what}: a process in the sandbox may run on CPUs {} but the reservation grants {}",
                format_cpulist(&ran_on),
                format_cpulist(granted)
            ),
        );
    }
}

/// Ok when this host could confine a build (root and a real cpuset
/// hierarchy), else why not.
fn host_can_confine() -> std::result::Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    match sandbox::detect_for_self(Path::new("/sys/fs/cgroup")) {
        Ok(h) if !h.synthetic => Ok(()),
        Ok(h) => Err(format!("{} is not a cgroup filesystem", h.parent.display())),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
