//! The cpuset sandbox: a child cgroup that binds the build's processes to
//! the plan's CPUs and memory nodes.
//!
//! `make -jN` alone only limits how many jobs run, not where: the kernel
//! scheduler still spreads them over every CPU, including the ones a
//! concurrent perf run is measuring. A cpuset makes the plan binding for
//! make and every compiler it forks.
//!
//! Where the sandbox lives: next to ktstr's own cgroup, as its child
//! `ktstr-<pid>-<n>`, in
//! - cgroup v2 when ktstr's cgroup offers the `cpuset` controller (it is
//!   enabled in the parent's `cgroup.subtree_control` if needed), else
//! - the cgroup v1 `cpuset` hierarchy, where `cpuset.cpus` and
//!   `cpuset.mems` must be written before any process may join.
//!
//! ktstr itself never joins: only processes spawned for the build do, by
//! writing to [`Sandbox::procs`] between fork and exec. On drop the sandbox
//! waits briefly for exiting processes, moves stragglers back to the parent
//! and removes the directory. Sandboxes whose ktstr died (SIGKILL, power
//! loss of a container) are removed by [`sweep`] on the next reservation;
//! the pid in the name says whose they are.
//!
//! A reserver normally gets here through [`super::Host::cpuset_hierarchy`]
//! and [`Sandbox::create_joinable`], and hands the sandbox to a
//! [`super::Confined`] guard.
//!
//! The cgroup root is a parameter (default `/sys/fs/cgroup`). When the
//! directory is not a cgroup filesystem (a test tree), files are created
//! as they are written and the sandbox is removed recursively.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::prelude::*;

use super::topology::format_cpulist;

/// Name prefix of every sandbox (and of the v2 leaf ktstr may move into).
pub const PREFIX: &str = "ktstr-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where sandboxes are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// The hierarchy's mount point.
    pub mount: PathBuf,
    /// ktstr's own cgroup in that hierarchy: sandboxes are its children.
    pub parent: PathBuf,
    /// Prefix of the cpuset files: `cpuset.`, or empty on a v1 mount with
    /// the `noprefix` option.
    pub prefix: &'static str,
    /// Not a cgroup filesystem (a synthetic tree in tests).
    pub synthetic: bool,
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `(hierarchy id, controllers, path)` entries of a `/proc/<pid>/cgroup`.
fn parse_self_cgroup(text: &str) -> Vec<(String, Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (h, c, p) = (it.next()?, it.next()?, it.next()?);
            let ctrls = c
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            Some((h.to_string(), ctrls, p.to_string()))
        })
        .collect()
}

/// Whether `path` is on a cgroup (v1 or v2) filesystem, not a synthetic tree.
pub fn is_cgroupfs(path: &Path) -> bool {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
    statfs(path).is_ok_and(|s| {
        let t = s.filesystem_type();
        t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC
    })
}

/// Join a `/proc/self/cgroup` path to a mount; the mount itself when that
/// cgroup is not visible there (another cgroup namespace, a test tree).
fn cgroup_dir(mount: &Path, path: &str) -> PathBuf {
    let mut dir = mount.join(path.trim_start_matches('/'));
    // If ktstr moved itself into its v2 leaf, sandboxes still go next to it.
    let me = format!("{PREFIX}{}-host", std::process::id());
    if dir.file_name().is_some_and(|n| n == me.as_str()) {
        dir.pop();
    }
    if dir.is_dir() {
        dir
    } else {
        mount.to_path_buf()
    }
}

/// Find a hierarchy with the cpuset controller under `cgroup_root`, for
/// a process whose `/proc/self/cgroup` reads `self_cgroup`. The error
/// lists what was looked at and why it did not qualify.
pub fn detect(cgroup_root: &Path, self_cgroup: &str) -> Result<Hierarchy> {
    let entries = parse_self_cgroup(self_cgroup);
    let v2_path = entries
        .iter()
        .find(|(h, c, _)| h == "0" && c.is_empty())
        .map_or("/", |(_, _, p)| p.as_str());
    let v1_path = entries
        .iter()
        .find(|(_, c, _)| c.iter().any(|c| c == "cpuset"))
        .map_or("/", |(_, _, p)| p.as_str());
    let mut reasons = Vec::new();

    for mount in [cgroup_root.to_path_buf(), cgroup_root.join("unified")] {
        if !mount.join("cgroup.controllers").is_file() {
            continue;
        }
        let parent = cgroup_dir(&mount, v2_path);
        let ctrls = read_trim(&parent.join("cgroup.controllers")).unwrap_or_default();
        if ctrls.split_whitespace().any(|c| c == "cpuset") {
            return Ok(Hierarchy {
                version: Version::V2,
                synthetic: !is_cgroupfs(&parent),
                mount,
                parent,
                prefix: "cpuset.",
            });
        }
        reasons.push(format!(
            "cgroup v2 at {} offers no cpuset controller (cgroup.controllers: \"{ctrls}\")",
            parent.display()
        ));
    }

    let mut v1_mounts = vec![cgroup_root.join("cpuset")];
    if let Ok(rd) = std::fs::read_dir(cgroup_root) {
        let mut extra: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n != "cpuset" && n.split(',').any(|c| c == "cpuset")
            })
            .map(|e| e.path())
            .collect();
        extra.sort();
        v1_mounts.extend(extra);
    }
    for mount in v1_mounts {
        let prefix = if mount.join("cpuset.cpus").is_file() {
            "cpuset."
        } else if mount.join("cpus").is_file() && mount.join("mems").is_file() {
            ""
        } else {
            continue;
        };
        let parent = cgroup_dir(&mount, v1_path);
        return Ok(Hierarchy {
            version: Version::V1,
            synthetic: !is_cgroupfs(&parent),
            mount,
            parent,
            prefix,
        });
    }
    if reasons.is_empty() {
        reasons.push(format!(
            "no cgroup v2 mount at {root} or {root}/unified, no cgroup v1 cpuset \
             hierarchy at {root}/cpuset",
            root = cgroup_root.display()
        ));
    }
    Err(StageError::new(
        ErrorKind::Unsupported,
        format!("no cpuset controller available: {}", reasons.join("; ")),
    ))
}

/// Detect with this process's real `/proc/self/cgroup`.
pub fn detect_for_self(cgroup_root: &Path) -> Result<Hierarchy> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    detect(cgroup_root, &text)
}

static NEXT: AtomicUsize = AtomicUsize::new(1);

/// A live sandbox; removed on drop.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    parent: PathBuf,
    synthetic: bool,
}

fn write_raw(path: &Path, value: &str, create: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)?;
    f.write_all(value.as_bytes())
}

fn write_file(path: &Path, value: &str, create: bool) -> Result<()> {
    write_raw(path, value, create)
        .map_err(|e| StageError::io(&format!("write \"{value}\" to"), path, e))
}

impl Sandbox {
    /// Create `ktstr-<pid>-<n>` under `h.parent` bound to `cpus` and
    /// `mems`. Nothing joins it yet.
    pub fn create(h: &Hierarchy, cpus: &[usize], mems: &[usize]) -> Result<Self> {
        if h.version == Version::V2 {
            enable_cpuset_v2(h)?;
        }
        let pid = std::process::id();
        let dir = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = h.parent.join(format!("{PREFIX}{pid}-{n}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StageError::io("create cgroup", &dir, e)),
            }
        };
        let sandbox = Self {
            dir,
            parent: h.parent.clone(),
            synthetic: h.synthetic,
        };
        // v1 refuses tasks until both are set; v2 accepts either order.
        let p = h.prefix;
        write_file(
            &sandbox.dir.join(format!("{p}cpus")),
            &format_cpulist(cpus),
            h.synthetic,
        )?;
        write_file(
            &sandbox.dir.join(format!("{p}mems")),
            &format_cpulist(mems),
            h.synthetic,
        )?;
        if h.synthetic {
            write_file(&sandbox.procs(), "", true)?;
        }
        Ok(sandbox)
    }

    /// [`Sandbox::create`], then prove a process can join it the way the
    /// build's processes will (through `cx.runner`), so a permission
    /// problem surfaces now and not as a failed `make`.
    pub fn create_joinable(
        h: &Hierarchy,
        cpus: &[usize],
        mems: &[usize],
        cx: &StageContext,
    ) -> Result<Self> {
        let sb = Self::create(h, cpus, mems)?;
        let mut probe = CommandSpec::new("true");
        probe.cgroup_procs = Some(sb.procs());
        let out = cx.runner.capture(&probe).map_err(|e| {
            StageError::new(
                ErrorKind::Io,
                format!("a process cannot join the sandbox {}", sb.procs().display()),
            )
            .caused_by(e)
        })?;
        if out.code != Some(0) {
            return Err(StageError::new(
                ErrorKind::Io,
                format!(
                    "probe process in sandbox {} exited with {:?}",
                    sb.dir().display(),
                    out.code
                ),
            ));
        }
        Ok(sb)
    }

    /// The `cgroup.procs` file a build process writes "0" to, to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Make `cpuset` available to children of `h.parent` (v2).
fn enable_cpuset_v2(h: &Hierarchy) -> Result<()> {
    let ctl = h.parent.join("cgroup.subtree_control");
    let current = read_trim(&ctl).unwrap_or_default();
    if current.split_whitespace().any(|c| c == "cpuset") {
        return Ok(());
    }
    match write_raw(&ctl, "+cpuset", h.synthetic) {
        Ok(()) => Ok(()),
        // "No internal processes": a non-root cgroup with processes of its
        // own cannot hand controllers to children. In a delegated scope
        // that process is ktstr itself; move it into a leaf and retry.
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && h.parent != h.mount => {
            let leaf = h
                .parent
                .join(format!("{PREFIX}{}-host", std::process::id()));
            match std::fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(StageError::io("create cgroup", &leaf, err)),
            }
            write_file(
                &leaf.join("cgroup.procs"),
                &std::process::id().to_string(),
                false,
            )
            .map_err(|e2| {
                StageError::io("write \"+cpuset\" to", &ctl, e).context(format!(
                    "cgroup {} has processes of its own and moving ktstr out failed ({e2})",
                    h.parent.display()
                ))
            })?;
            write_file(&ctl, "+cpuset", false)
        }
        Err(e) => Err(StageError::io("write \"+cpuset\" to", &ctl, e)),
    }
}

fn pids_in(procs: &Path) -> Vec<u32> {
    read_trim(procs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Remove a sandbox directory: wait up to `grace` for its processes to
/// exit, move the rest to `parent`, then rmdir (retrying while the kernel
/// still counts exiting tasks).
fn remove_cgroup(dir: &Path, parent: &Path, synthetic: bool, grace: Duration) -> Result<()> {
    if synthetic {
        return match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StageError::io("remove cgroup", dir, e))
            }
            _ => Ok(()),
        };
    }
    let procs = dir.join("cgroup.procs");
    let deadline = std::time::Instant::now() + grace;
    while !pids_in(&procs).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in pids_in(&procs) {
        let _ = write_file(&parent.join("cgroup.procs"), &pid.to_string(), false);
    }
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(StageError::io("remove cgroup", dir, e)),
        }
    }
    Err(StageError::io(
        "remove cgroup",
        dir,
        last.unwrap_or_else(|| std::io::Error::other("busy")),
    ))
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup(
            &self.dir,
            &self.parent,
            self.synthetic,
            Duration::from_millis(500),
        ) {
            tracing::warn!("leaving sandbox cgroup behind (swept later): {e}");
        }
    }
}

/// The ktstr pid a sandbox name belongs to: `ktstr-<pid>-<anything>`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, suffix) = rest.split_once('-')?;
    if suffix.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Remove sandboxes in `h.parent` whose ktstr process is gone. Returns the
/// removed directories; failures are logged, never fatal.
pub fn sweep(h: &Hierarchy) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(&h.parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if !entry.path().is_dir() || crate::owned::pid_alive(pid) {
            continue;
        }
        let dir = entry.path();
        match remove_cgroup(&dir, &h.parent, h.synthetic, Duration::ZERO) {
            Ok(()) => removed.push(dir),
            Err(e) => tracing::warn!("cannot sweep orphaned sandbox: {e}"),
        }
    }
    removed.sort();
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// The layout of this CI machine: v1 cpuset + a v2 mount without it.
    fn fake_v1(root: &Path) {
        touch(&root.join("unified/cgroup.controllers"), "\n");
        touch(&root.join("cpuset/cpuset.cpus"), "0-7\n");
        touch(&root.join("cpuset/cpuset.mems"), "0\n");
        touch(&root.join("cpuset/cgroup.procs"), "");
    }

    const SELF_V1: &str = "3:cpuset:/\n1:cpu:/\n0::/\n";

    #[test]
    fn prefers_v2_with_cpuset() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("cgroup.controllers"), "cpu cpuset memory\n");
        touch(
            &root.join("user.slice/x.scope/cgroup.controllers"),
            "cpuset cpu\n",
        );
        let h = detect(root, "0::/user.slice/x.scope\n").unwrap();
        assert_eq!(h.version, Version::V2);
        assert_eq!(h.parent, root.join("user.slice/x.scope"));
        assert!(h.synthetic);
        let sb = Sandbox::create(&h, &[2, 3], &[0]).unwrap();
        assert_eq!(
            std::fs::read_to_string(h.parent.join("cgroup.subtree_control")).unwrap(),
            "+cpuset"
        );
        assert_eq!(
            std::fs::read_to_string(sb.dir().join("cpuset.cpus")).unwrap(),
            "2-3"
        );
        let name = sb.dir().file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(owner_pid(&name), Some(std::process::id()));
        let d = sb.dir().to_path_buf();
        drop(sb);
        assert!(!d.exists());
    }

    #[test]
    fn falls_back_to_v1_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_v1(root);
        let h = detect(root, SELF_V1).unwrap();
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.parent, root.join("cpuset"));
        assert_eq!(h.prefix, "cpuset.");
        let sb = Sandbox::create(&h, &[0, 1, 2, 5], &[0]).unwrap();
        assert_eq!(
            std::fs::read_to_string(sb.dir().join("cpuset.cpus")).unwrap(),
            "0-2,5"
        );
        assert_eq!(
            std::fs::read_to_string(sb.dir().join("cpuset.mems")).unwrap(),
            "0"
        );
        assert!(sb.procs().ends_with("cgroup.procs"));

        std::fs::remove_dir_all(root.join("cpuset")).unwrap();
        let e = detect(root, SELF_V1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        assert!(e.to_string().contains("offers no cpuset controller"), "{e}");
        assert!(e.to_string().contains("unified"), "{e}");
    }

    #[test]
    fn nothing_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let e = detect(dir.path(), "").unwrap_err();
        assert!(
            e.to_string().contains("no cpuset controller available"),
            "{e}"
        );
    }

    #[test]
    fn sweep_removes_only_dead_owners() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_v1(root);
        let h = detect(root, SELF_V1).unwrap();
        // A pid that cannot exist (above pid_max) stands for a dead ktstr.
        let dead = h.parent.join("ktstr-999999999-1");
        let mine = h.parent.join(format!("ktstr-{}-77", std::process::id()));
        let other = h.parent.join("user-stuff");
        for d in [&dead, &mine, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        assert_eq!(sweep(&h), vec![dead.clone()]);
        assert!(!dead.exists() && mine.exists() && other.exists());
    }

    #[test]
    fn owner_pid_parses_names() {
        assert_eq!(owner_pid("ktstr-12-3"), Some(12));
        assert_eq!(owner_pid("ktstr-12-host"), Some(12));
        assert_eq!(owner_pid("ktstr-12"), None);
        assert_eq!(owner_pid("ktstr-x-1"), None);
        assert_eq!(owner_pid("other-12-1"), None);
    }
}
