//! The host's CPU topology, read from a sysfs root.
//!
//! The root is a parameter (default `/sys`) so tests describe a machine as a
//! directory tree instead of needing one. Only the few files the planner
//! needs are read:
//!
//! - `devices/system/cpu/online`: CPUs that exist right now. Offline CPUs
//!   have no cache directory and can never run a job.
//! - `devices/system/cpu/cpuN/cache/indexM/{level,type,id,shared_cpu_list}`:
//!   the highest-level data/unified cache of each CPU is its last-level
//!   cache (LLC). CPUs listing the same LLC share it.
//! - `devices/system/cpu/cpuN/topology/thread_siblings_list`: SMT siblings,
//!   so a partial LLC is handed out in whole cores.
//! - `devices/system/node/nodeN/cpulist` and `devices/system/node/has_memory`:
//!   NUMA nodes, so a plan stays on one node and binds memory there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::prelude::*;

/// A set of CPU or node numbers.
pub type CpuSet = BTreeSet<usize>;

/// Parse a kernel cpulist (`0-3,8,10-11`; empty means no CPUs).
pub fn parse_cpulist(text: &str) -> std::result::Result<CpuSet, String> {
    let mut out = CpuSet::new();
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{part}` is not a CPU number or range"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("`{part}`: range runs backwards"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(part)?);
            }
        }
    }
    Ok(out)
}

/// Format a set as a kernel cpulist (`0-3,8`), the form cpuset files take.
pub fn format_cpulist<'a>(set: impl IntoIterator<Item = &'a usize>) -> String {
    let mut sorted: Vec<usize> = set.into_iter().copied().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// One last-level cache domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Llc {
    /// The cache's `id` (falls back to its lowest CPU when the kernel does
    /// not export `id`). Names the lock file `llc-<id>.lock`.
    pub id: usize,
    /// Online CPUs sharing this cache.
    pub cpus: CpuSet,
    /// The NUMA node most of its CPUs belong to (0 without NUMA info).
    pub node: usize,
}

/// What the planner needs to know about the machine.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    /// LLC domains, by id.
    pub llcs: Vec<Llc>,
    /// Online CPUs.
    pub online: CpuSet,
    /// SMT sibling groups (one entry per physical core), by lowest CPU.
    pub cores: Vec<CpuSet>,
    /// Node → its CPUs.
    pub nodes: BTreeMap<usize, CpuSet>,
    /// Nodes with memory (valid `cpuset.mems` values).
    pub memory_nodes: CpuSet,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .at("read", path)
}

fn read_list(path: &Path) -> Result<CpuSet> {
    let text = read(path)?;
    parse_cpulist(&text).map_err(|e| {
        StageError::corrupt(format!("{}: {e}", path.display()))
            .with_hint("this file should hold a kernel cpulist such as 0-3,8")
    })
}

/// Numbered entries `prefix<N>` in `dir`, sorted by N.
fn numbered(dir: &Path, prefix: &str) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).at("list", dir)? {
        let entry = entry.at("list", dir)?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix(prefix))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        out.push((n, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// The highest-level data or unified cache of one CPU: (level, id, cpus).
fn cpu_llc(cpu_dir: &Path, cpu: usize) -> Result<Option<(u32, usize, CpuSet)>> {
    let cache = cpu_dir.join("cache");
    if !cache.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(u32, usize, CpuSet)> = None;
    for (_, index) in numbered(&cache, "index")? {
        let ty = read(&index.join("type")).unwrap_or_default();
        if ty == "Instruction" {
            continue;
        }
        let level: u32 = read(&index.join("level"))?.parse().map_err(|_| {
            StageError::corrupt(format!("{}: not a number", index.join("level").display()))
        })?;
        if best.as_ref().is_some_and(|(l, _, _)| *l >= level) {
            continue;
        }
        let cpus = read_list(&index.join("shared_cpu_list"))?;
        // `id` is missing on some architectures and older kernels; the
        // lowest sharing CPU names the domain just as uniquely.
        let id = match read(&index.join("id")) {
            Ok(s) => s.parse().unwrap_or_else(|_| *cpus.first().unwrap_or(&cpu)),
            Err(_) => *cpus.first().unwrap_or(&cpu),
        };
        best = Some((level, id, cpus));
    }
    Ok(best)
}

impl Topology {
    /// Read the topology below `sysfs_root` (normally `/sys`).
    ///
    /// Errors name the file that could not be read; the caller decides
    /// whether that is fatal (explicit `--cpu-cap`) or a warning.
    pub fn read(sysfs_root: &Path) -> Result<Self> {
        let cpu_root = sysfs_root.join("devices/system/cpu");
        let cpu_dirs = numbered(&cpu_root, "cpu")?;
        let online = match read_list(&cpu_root.join("online")) {
            Ok(set) => set,
            // Without the online mask, every CPU with cache info counts.
            Err(_) => cpu_dirs.iter().map(|(n, _)| *n).collect(),
        };

        let mut by_id: BTreeMap<usize, CpuSet> = BTreeMap::new();
        let mut cores: BTreeMap<usize, CpuSet> = BTreeMap::new();
        for (cpu, dir) in &cpu_dirs {
            if !online.contains(cpu) {
                continue;
            }
            let Some((_level, id, _shared)) = cpu_llc(dir, *cpu)? else {
                continue;
            };
            by_id.entry(id).or_default().insert(*cpu);
            let siblings = read_list(&dir.join("topology/thread_siblings_list"))
                .ok()
                .map(|s| s.intersection(&online).copied().collect::<CpuSet>())
                .filter(|s| s.contains(cpu))
                .unwrap_or_else(|| CpuSet::from([*cpu]));
            cores.insert(*siblings.first().expect("contains cpu"), siblings);
        }
        if by_id.is_empty() {
            return Err(StageError::not_found(format!(
                "no CPU cache information under {} (expected cpu*/cache/index*/)",
                cpu_root.display()
            ))
            .with_hint("run on a Linux host with sysfs mounted at /sys"));
        }

        let node_root = sysfs_root.join("devices/system/node");
        let mut nodes = BTreeMap::new();
        if node_root.is_dir() {
            for (node, dir) in numbered(&node_root, "node")? {
                let cpus = read_list(&dir.join("cpulist"))?;
                nodes.insert(node, cpus);
            }
        }
        let all: CpuSet = by_id.values().flatten().copied().collect();
        if nodes.is_empty() {
            // A kernel without NUMA support: one node holding everything.
            nodes.insert(0, all.clone());
        }
        let memory_nodes = read_list(&node_root.join("has_memory"))
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| nodes.keys().copied().collect());

        let node_of = |cpu: usize| {
            nodes
                .iter()
                .find(|(_, cpus)| cpus.contains(&cpu))
                .map(|(n, _)| *n)
        };
        let llcs = by_id
            .into_iter()
            .map(|(id, cpus)| {
                let mut votes: BTreeMap<usize, usize> = BTreeMap::new();
                for &c in &cpus {
                    *votes.entry(node_of(c).unwrap_or(0)).or_default() += 1;
                }
                let node = votes
                    .iter()
                    .max_by_key(|(n, v)| (**v, std::cmp::Reverse(**n)))
                    .map(|(n, _)| *n)
                    .unwrap_or(0);
                Llc { id, cpus, node }
            })
            .collect();
        Ok(Self {
            llcs,
            online,
            cores: cores.into_values().collect(),
            nodes,
            memory_nodes,
        })
    }

    /// The LLC with this id.
    pub fn llc(&self, id: usize) -> Option<&Llc> {
        self.llcs.iter().find(|l| l.id == id)
    }

    /// The node `cpu` belongs to.
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .find(|(_, cpus)| cpus.contains(&cpu))
            .map(|(n, _)| *n)
    }

    /// Memory nodes for a build on `cpus`: the nodes of those CPUs that
    /// have memory; for CPU-only nodes any node with memory; 0 at worst.
    pub fn mems_for<'a>(&self, cpus: impl IntoIterator<Item = &'a usize>) -> Vec<usize> {
        let mut mems: CpuSet = cpus
            .into_iter()
            .filter_map(|&c| self.node_of(c))
            .filter(|n| self.memory_nodes.contains(n))
            .collect();
        if mems.is_empty() {
            mems = self.memory_nodes.clone();
        }
        if mems.is_empty() {
            mems.insert(0);
        }
        mems.into_iter().collect()
    }

    /// `cpus` ordered so SMT siblings are adjacent, cores whose siblings are
    /// all in `cpus` first: taking a prefix takes whole cores, and the
    /// leftover sibling of a core someone else half uses comes last.
    pub fn core_order(&self, cpus: &CpuSet) -> Vec<usize> {
        let mut groups: Vec<(bool, Vec<usize>)> = Vec::new();
        let mut seen = CpuSet::new();
        for &c in cpus {
            if seen.contains(&c) {
                continue;
            }
            let core = self.cores.iter().find(|core| core.contains(&c));
            let (whole, group): (bool, Vec<usize>) = match core {
                Some(core) => (
                    core.is_subset(cpus),
                    core.intersection(cpus).copied().collect(),
                ),
                None => (true, vec![c]),
            };
            seen.extend(group.iter().copied());
            groups.push((whole, group));
        }
        // Stable: cores keep their CPU order within each class.
        groups.sort_by_key(|(whole, _)| !whole);
        groups.into_iter().flat_map(|(_, g)| g).collect()
    }
}

/// Writes synthetic sysfs trees, so a reserver's tests describe a machine
/// as a directory instead of needing one (point `sysfs_root` at it).
pub mod fake {
    use super::*;

    /// A synthetic machine: `llcs[i]` = CPUs of LLC i (cache id = i * 10 so
    /// ids and indexes differ), `nodes[n]` = CPUs of node n, `smt` = the
    /// size of sibling groups (consecutive CPUs within an LLC).
    pub struct FakeMachine<'a> {
        pub llcs: &'a [&'a [usize]],
        pub nodes: &'a [&'a [usize]],
        pub online: Option<&'a str>,
        pub smt: usize,
    }

    /// Test helper: panics on I/O errors.
    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{text}\n")).unwrap();
    }

    impl FakeMachine<'_> {
        /// Write the machine's sysfs files below `root` (panics on I/O
        /// errors: it is for tests).
        pub fn write(&self, root: &Path) {
            let cpu_root = root.join("devices/system/cpu");
            let mut all = Vec::new();
            for (i, llc) in self.llcs.iter().enumerate() {
                let list = format_cpulist(llc.iter());
                for (k, &cpu) in llc.iter().enumerate() {
                    all.push(cpu);
                    let dir = cpu_root.join(format!("cpu{cpu}"));
                    // L1d private, L1i private (ignored), L2 private, L3 shared.
                    let own = cpu.to_string();
                    for (idx, level, ty, shared, id) in [
                        (0, 1, "Data", own.as_str(), cpu),
                        (1, 1, "Instruction", own.as_str(), cpu),
                        (2, 2, "Unified", own.as_str(), cpu),
                        (3, 3, "Unified", list.as_str(), i * 10),
                    ] {
                        let d = dir.join(format!("cache/index{idx}"));
                        write(&d.join("level"), &level.to_string());
                        write(&d.join("type"), ty);
                        write(&d.join("shared_cpu_list"), shared);
                        write(&d.join("id"), &id.to_string());
                    }
                    let smt = self.smt.max(1);
                    let first = k - k % smt;
                    let sib: Vec<usize> = llc.iter().skip(first).take(smt).copied().collect();
                    write(
                        &dir.join("topology/thread_siblings_list"),
                        &format_cpulist(sib.iter()),
                    );
                }
            }
            let online = self
                .online
                .map(str::to_string)
                .unwrap_or_else(|| format_cpulist(all.iter()));
            write(&cpu_root.join("online"), &online);
            let node_root = root.join("devices/system/node");
            for (n, cpus) in self.nodes.iter().enumerate() {
                write(
                    &node_root.join(format!("node{n}/cpulist")),
                    &format_cpulist(cpus.iter()),
                );
            }
            if !self.nodes.is_empty() {
                write(
                    &node_root.join("has_memory"),
                    &format!("0-{}", self.nodes.len() - 1),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMachine;
    use super::*;

    #[test]
    fn cpulists_round_trip() {
        let s = parse_cpulist("0-3,8,10-11\n").unwrap();
        assert_eq!(s, CpuSet::from([0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(format_cpulist(&s), "0-3,8,10-11");
        assert!(parse_cpulist("").unwrap().is_empty());
        assert!(parse_cpulist("3-1").unwrap_err().contains("backwards"));
        assert!(parse_cpulist("x").unwrap_err().contains("`x`"));
    }

    #[test]
    fn reads_llcs_nodes_and_smt() {
        let dir = tempfile::tempdir().unwrap();
        FakeMachine {
            llcs: &[&[0, 1, 2, 3], &[4, 5, 6, 7]],
            nodes: &[&[0, 1, 2, 3], &[4, 5, 6, 7]],
            online: None,
            smt: 2,
        }
        .write(dir.path());
        let t = Topology::read(dir.path()).unwrap();
        assert_eq!(t.llcs.len(), 2);
        assert_eq!(t.llcs[0].id, 0);
        assert_eq!(t.llcs[1].id, 10);
        assert_eq!(t.llcs[1].cpus, CpuSet::from([4, 5, 6, 7]));
        assert_eq!(t.llcs[1].node, 1);
        assert_eq!(t.cores.len(), 4);
        assert_eq!(t.memory_nodes, CpuSet::from([0, 1]));
        assert_eq!(t.node_of(5), Some(1));
    }

    #[test]
    fn offline_cpus_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        FakeMachine {
            llcs: &[&[0, 1, 2, 3]],
            nodes: &[&[0, 1, 2, 3]],
            online: Some("0-1,3"),
            smt: 1,
        }
        .write(dir.path());
        let t = Topology::read(dir.path()).unwrap();
        assert_eq!(t.llcs[0].cpus, CpuSet::from([0, 1, 3]));
        assert_eq!(t.online, CpuSet::from([0, 1, 3]));
    }

    #[test]
    fn core_order_keeps_siblings_together() {
        let t = Topology {
            cores: vec![CpuSet::from([0, 4]), CpuSet::from([1, 5])],
            ..Topology::default()
        };
        assert_eq!(t.core_order(&CpuSet::from([0, 1, 4, 5])), vec![0, 4, 1, 5]);
        // Core 0 is half used by someone else: its free sibling comes last.
        assert_eq!(t.core_order(&CpuSet::from([1, 4, 5])), vec![1, 5, 4]);
    }

    #[test]
    fn no_numa_dir_means_one_node() {
        let dir = tempfile::tempdir().unwrap();
        FakeMachine {
            llcs: &[&[0, 1]],
            nodes: &[],
            online: None,
            smt: 1,
        }
        .write(dir.path());
        let t = Topology::read(dir.path()).unwrap();
        assert_eq!(t.nodes.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(t.memory_nodes, CpuSet::from([0]));
    }

    #[test]
    fn missing_sysfs_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = Topology::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("devices/system/cpu"), "{e}");
        std::fs::create_dir_all(dir.path().join("devices/system/cpu/cpu0")).unwrap();
        let e = Topology::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("no CPU cache information"), "{e}");
    }

    #[test]
    fn reads_this_host() {
        // Not an assertion about the machine's shape: only that real sysfs
        // parses when present.
        if Path::new("/sys/devices/system/cpu/cpu0/cache").is_dir() {
            let t = Topology::read(Path::new("/sys")).unwrap();
            assert!(!t.llcs.is_empty());
        }
    }
}
