//! The planner: which CPUs a build gets. Pure functions, no I/O.
//!
//! A build pollutes the last-level cache it runs on, so LLCs are the unit
//! the planner thinks in. It
//!
//! 1. counts only CPUs that are online and in this process's affinity mask;
//! 2. keeps the plan on one NUMA node when any node can hold it (memory is
//!    then bound to that node too), else spills over the fewest nodes;
//! 3. fills whole LLCs first, biggest first, and takes the remainder from
//!    the smallest LLC that can hold it, so the plan has exactly N CPUs and
//!    touches as few and as small LLCs as possible;
//! 4. avoids LLCs other holders are on (the caller passes an
//!    [`Occupancy`]), so concurrent builds land on disjoint caches when
//!    there are enough; [`plan_shared`] then falls back to the free CPUs of
//!    LLCs other builds share, where [`plan_exclusive`] waits;
//! 5. takes a partial LLC in whole cores (SMT siblings together), leaving
//!    whole cores idle rather than half-loaded.

use std::collections::BTreeSet;

use ktstr_sdk::prelude::*;

use ktstr_sdk::cpus::locks::Occupancy;
use ktstr_sdk::cpus::{CpuSet, Topology, format_cpulist};

/// Default budget: this share of the allowed CPUs, rounded up.
pub const DEFAULT_BUDGET_PERCENT: u32 = 30;

/// How many CPUs to reserve.
///
/// `cap` is the user's `--cpu-cap`/`KTSTR_CPU_CAP` (an explicit contract);
/// without it, `percent` of `allowed`, rounded up, at least 1.
pub fn budget(cap: Option<usize>, allowed: usize, percent: u32) -> Result<usize> {
    let allowed = allowed.max(1);
    match cap {
        None => {
            let n = (allowed * percent as usize).div_ceil(100);
            Ok(n.clamp(1, allowed))
        }
        Some(0) => Err(StageError::invalid_input(
            "--cpu-cap 0: must be at least 1 CPU",
        )),
        Some(cap) if cap > allowed => {
            let cpus = if allowed == 1 { "CPU is" } else { "CPUs are" };
            Err(StageError::invalid_input(format!(
                "--cpu-cap {cap}: only {allowed} {cpus} available to this process"
            ))
            .with_hint(format!(
                "pass --cpu-cap {allowed} or less, or leave it out to reserve \
                 {percent}% of the allowed CPUs"
            )))
        }
        Some(cap) => Ok(cap),
    }
}

/// One LLC in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLlc {
    pub id: usize,
    /// The CPUs of this LLC the build gets.
    pub cpus: Vec<usize>,
    /// All usable CPUs of the LLC are taken.
    pub whole: bool,
}

/// A reservation plan: exactly the requested number of CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Locked LLCs, in lock order (ascending id).
    pub llcs: Vec<PlannedLlc>,
    /// All planned CPUs, ascending.
    pub cpus: Vec<usize>,
    /// Memory nodes to bind, ascending.
    pub mems: Vec<usize>,
}

impl Plan {
    pub fn llc_ids(&self) -> Vec<usize> {
        self.llcs.iter().map(|l| l.id).collect()
    }

    /// "3 CPUs (0-2) in LLC 0 on node 0" for notes.
    pub fn describe(&self) -> String {
        let ids: Vec<String> = self.llc_ids().iter().map(usize::to_string).collect();
        format!(
            "{} CPU{} ({}) in LLC{} {} on node{} {}",
            self.cpus.len(),
            if self.cpus.len() == 1 { "" } else { "s" },
            format_cpulist(&self.cpus),
            if ids.len() == 1 { "" } else { "s" },
            ids.join(","),
            if self.mems.len() == 1 { "" } else { "s" },
            format_cpulist(&self.mems),
        )
    }
}

/// Why no plan was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPlan {
    /// The machine has fewer usable (online and allowed) CPUs than wanted:
    /// waiting will not help.
    TooFew { want: usize, usable: usize },
    /// Enough CPUs exist, but not enough are in LLCs nobody holds.
    Busy { want: usize, free: usize },
}

impl std::fmt::Display for NoPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooFew { want, usable } => write!(
                f,
                "{want} CPUs wanted but only {usable} are online, allowed and in a known LLC"
            ),
            Self::Busy { want, free } => write!(
                f,
                "{want} CPUs wanted but only {free} are in LLCs no other ktstr holds"
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Cand {
    id: usize,
    node: usize,
    usable: CpuSet,
}

/// Fill `want` from `cands` (ranked: lower rank first): whole LLCs biggest
/// first, then the remainder from the smallest LLC that holds it.
/// Returns (candidate index, CPUs to take) or None if capacity is short.
fn select(cands: &[(usize, &Cand)], want: usize) -> Option<Vec<(usize, usize)>> {
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by_key(|&i| {
        let (rank, c) = cands[i];
        (rank, std::cmp::Reverse(c.usable.len()), c.id)
    });
    let mut rem = want;
    let mut picks = Vec::new();
    let mut skipped = Vec::new();
    for i in order {
        if rem == 0 {
            break;
        }
        let n = cands[i].1.usable.len();
        if n <= rem {
            picks.push((i, n));
            rem -= n;
        } else {
            skipped.push(i);
        }
    }
    if rem > 0 {
        // Every skipped LLC is bigger than what remains.
        let best = skipped.into_iter().min_by_key(|&i| {
            let (rank, c) = cands[i];
            (rank, c.usable.len(), c.id)
        })?;
        picks.push((best, rem));
    }
    Some(picks)
}

/// A scored selection: ((LLCs, waste, node), ranked candidates, picks).
type Choice<'a> = (
    (usize, usize, usize),
    Vec<(usize, &'a Cand)>,
    Vec<(usize, usize)>,
);

/// (LLCs touched, CPUs locked but unused): smaller is better.
fn score(cands: &[(usize, &Cand)], picks: &[(usize, usize)], want: usize) -> (usize, usize) {
    let locked: usize = picks.iter().map(|&(i, _)| cands[i].1.usable.len()).sum();
    (picks.len(), locked - want)
}

/// Plan `want` CPUs on `topo`, using only `allowed` CPUs and avoiding the
/// LLC ids in `busy`.
pub fn plan(
    topo: &Topology,
    allowed: &CpuSet,
    want: usize,
    busy: &BTreeSet<usize>,
) -> std::result::Result<Plan, NoPlan> {
    let all: Vec<Cand> = topo
        .llcs
        .iter()
        .map(|l| Cand {
            id: l.id,
            node: l.node,
            usable: l
                .cpus
                .iter()
                .filter(|c| allowed.contains(c) && topo.online.contains(c))
                .copied()
                .collect(),
        })
        .filter(|c| !c.usable.is_empty())
        .collect();
    let usable: usize = all.iter().map(|c| c.usable.len()).sum();
    if usable < want || want == 0 {
        return Err(NoPlan::TooFew { want, usable });
    }
    let free: Vec<&Cand> = all.iter().filter(|c| !busy.contains(&c.id)).collect();
    let free_total: usize = free.iter().map(|c| c.usable.len()).sum();
    if free_total < want {
        return Err(NoPlan::Busy {
            want,
            free: free_total,
        });
    }

    let mut nodes: Vec<(usize, usize)> = Vec::new(); // (node, free capacity)
    for c in &free {
        match nodes.iter_mut().find(|(n, _)| *n == c.node) {
            Some((_, cap)) => *cap += c.usable.len(),
            None => nodes.push((c.node, c.usable.len())),
        }
    }
    nodes.sort();

    // One node if any can hold the plan: the one needing the fewest and
    // tightest LLCs, lowest id on ties.
    let mut best: Option<Choice<'_>> = None;
    for &(node, cap) in &nodes {
        if cap < want {
            continue;
        }
        let cands: Vec<(usize, &Cand)> = free
            .iter()
            .filter(|c| c.node == node)
            .map(|c| (0, *c))
            .collect();
        let Some(picks) = select(&cands, want) else {
            continue;
        };
        let (n, waste) = score(&cands, &picks, want);
        let key = (n, waste, node);
        if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
            best = Some((key, cands, picks));
        }
    }
    let (cands, picks) = match best {
        Some((_, cands, picks)) => (cands, picks),
        None => {
            // Spill: the biggest nodes first, as few as possible.
            let mut order = nodes.clone();
            order.sort_by_key(|&(n, cap)| (std::cmp::Reverse(cap), n));
            let mut taken = 0;
            let mut cands = Vec::new();
            for (rank, (node, cap)) in order.into_iter().enumerate() {
                if taken >= want {
                    break;
                }
                taken += cap;
                cands.extend(free.iter().filter(|c| c.node == node).map(|c| (rank, *c)));
            }
            let picks = select(&cands, want).ok_or(NoPlan::Busy {
                want,
                free: free_total,
            })?;
            (cands, picks)
        }
    };

    let mut llcs: Vec<PlannedLlc> = picks
        .iter()
        .map(|&(i, take)| {
            let c = cands[i].1;
            let cpus: Vec<usize> = if take == c.usable.len() {
                c.usable.iter().copied().collect()
            } else {
                let mut part: Vec<usize> =
                    topo.core_order(&c.usable).into_iter().take(take).collect();
                part.sort_unstable();
                part
            };
            PlannedLlc {
                id: c.id,
                whole: take == c.usable.len(),
                cpus,
            }
        })
        .collect();
    llcs.sort_by_key(|l| l.id);
    let mut cpus: Vec<usize> = llcs.iter().flat_map(|l| l.cpus.iter().copied()).collect();
    cpus.sort_unstable();
    let mems = topo.mems_for(&cpus);
    Ok(Plan { llcs, cpus, mems })
}

/// Plan for a build that owns whole LLCs: only LLCs nobody is on.
pub fn plan_exclusive(
    topo: &Topology,
    allowed: &CpuSet,
    want: usize,
    occ: &Occupancy,
) -> std::result::Result<Plan, NoPlan> {
    plan(topo, allowed, want, &occ.touched(topo))
}

/// Plan for a build that shares LLCs with other builds: LLCs nobody is on
/// when they can hold the plan (exactly what [`plan_exclusive`] picks, so
/// builds keep off each other's caches while there is room), else the free
/// CPUs of every LLC that is not closed (held exclusively, or announced by
/// a perf run waiting for it).
pub fn plan_shared(
    topo: &Topology,
    allowed: &CpuSet,
    want: usize,
    occ: &Occupancy,
) -> std::result::Result<Plan, NoPlan> {
    match plan_exclusive(topo, allowed, want, occ) {
        Err(NoPlan::Busy { .. }) => {}
        done => return done,
    }
    let free: CpuSet = allowed
        .difference(&occ.unavailable_cpus(topo))
        .copied()
        .collect();
    plan(topo, &free, want, &occ.closed).map_err(|_| NoPlan::Busy {
        want,
        free: free.intersection(&topo.online).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::cpus::Llc;

    /// `llcs[i]` = (cpus, node); LLC id = i. `smt` = sibling group size.
    fn topo(llcs: &[(&[usize], usize)], smt: usize) -> Topology {
        let mut t = Topology::default();
        for (i, (cpus, node)) in llcs.iter().enumerate() {
            t.llcs.push(Llc {
                id: i,
                cpus: cpus.iter().copied().collect(),
                node: *node,
            });
            t.online.extend(cpus.iter());
            t.nodes.entry(*node).or_default().extend(cpus.iter());
            t.memory_nodes.insert(*node);
            for core in cpus.chunks(smt.max(1)) {
                t.cores.push(core.iter().copied().collect());
            }
        }
        t
    }

    fn all(t: &Topology) -> CpuSet {
        t.online.clone()
    }

    fn none() -> BTreeSet<usize> {
        BTreeSet::new()
    }

    /// 4 LLCs of 4 CPUs, LLCs 0-1 on node 0, 2-3 on node 1.
    fn four_on_two() -> Topology {
        topo(
            &[
                (&[0, 1, 2, 3], 0),
                (&[4, 5, 6, 7], 0),
                (&[8, 9, 10, 11], 1),
                (&[12, 13, 14, 15], 1),
            ],
            1,
        )
    }

    #[test]
    fn default_budget_is_30_percent_rounded_up() {
        for (allowed, want) in [
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 2),
            (7, 3),
            (10, 3),
            (16, 5),
            (64, 20),
            (100, 30),
        ] {
            assert_eq!(
                budget(None, allowed, 30).unwrap(),
                want,
                "allowed {allowed}"
            );
        }
        assert_eq!(budget(None, 8, 100).unwrap(), 8);
        assert_eq!(budget(None, 8, 0).unwrap(), 1, "at least one CPU");
        assert_eq!(budget(None, 8, 500).unwrap(), 8, "never above allowed");
    }

    #[test]
    fn explicit_cap_is_checked_against_allowed() {
        assert_eq!(budget(Some(3), 8, 30).unwrap(), 3);
        assert_eq!(budget(Some(8), 8, 30).unwrap(), 8);
        let e = budget(Some(0), 8, 30).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "--cpu-cap 0: must be at least 1 CPU");
        let e = budget(Some(9), 8, 30).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cpu-cap 9: only 8 CPUs are available to this process"
        );
        assert!(e.hint.unwrap().contains("--cpu-cap 8"));
    }

    #[test]
    fn exact_n_with_partial_last_llc() {
        let t = four_on_two();
        let p = plan(&t, &all(&t), 6, &none()).unwrap();
        assert_eq!(p.cpus.len(), 6);
        assert_eq!(p.llcs.len(), 2);
        assert_eq!(p.llcs.iter().filter(|l| l.whole).count(), 1);
        assert_eq!(
            p.llcs
                .iter()
                .filter(|l| !l.whole)
                .map(|l| l.cpus.len())
                .sum::<usize>(),
            2
        );
        assert_eq!(p.cpus, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(p.mems, vec![0]);
        for n in 1..=16 {
            let p = plan(&t, &all(&t), n, &none()).unwrap();
            assert_eq!(p.cpus.len(), n, "want {n}");
            assert_eq!(p.llcs.len(), n.div_ceil(4), "want {n}: {p:?}");
        }
    }

    #[test]
    fn stays_on_one_node_when_it_fits() {
        let t = four_on_two();
        // Node 0 has only LLC 1 free (4 CPUs): 8 CPUs must come from node 1.
        let p = plan(&t, &all(&t), 8, &BTreeSet::from([0])).unwrap();
        assert_eq!(p.llc_ids(), vec![2, 3]);
        assert_eq!(p.mems, vec![1]);
        // 5 CPUs fit on node 1 only as well; not LLC 1 + part of node 1.
        let p = plan(&t, &all(&t), 5, &BTreeSet::from([0])).unwrap();
        assert!(p.llcs.iter().all(|l| l.id >= 2), "{p:?}");
        assert_eq!(p.mems, vec![1]);
    }

    #[test]
    fn spills_over_nodes_only_when_needed() {
        let t = four_on_two();
        let p = plan(&t, &all(&t), 12, &none()).unwrap();
        assert_eq!(p.cpus.len(), 12);
        assert_eq!(p.llcs.len(), 3);
        assert_eq!(p.mems, vec![0, 1]);
        // Node 1 is whole and free, node 0 half busy: the spill starts with
        // the bigger node.
        let p = plan(&t, &all(&t), 10, &BTreeSet::from([0])).unwrap();
        assert_eq!(p.cpus.len(), 10);
        assert!(
            p.llcs.iter().filter(|l| l.whole).all(|l| l.id >= 2),
            "{p:?}"
        );
        assert_eq!(p.llc_ids(), vec![1, 2, 3]);
    }

    #[test]
    fn avoids_busy_llcs_and_reports_busy() {
        let t = four_on_two();
        let p = plan(&t, &all(&t), 4, &BTreeSet::from([0])).unwrap();
        assert_eq!(p.llc_ids(), vec![1]);
        let e = plan(&t, &all(&t), 4, &BTreeSet::from([0, 1, 2, 3])).unwrap_err();
        assert_eq!(e, NoPlan::Busy { want: 4, free: 0 });
        let e = plan(&t, &all(&t), 13, &BTreeSet::from([0])).unwrap_err();
        assert_eq!(e, NoPlan::Busy { want: 13, free: 12 });
    }

    #[test]
    fn two_plans_with_the_first_busy_are_disjoint() {
        let t = four_on_two();
        let a = plan(&t, &all(&t), 4, &none()).unwrap();
        let busy: BTreeSet<usize> = a.llc_ids().into_iter().collect();
        let b = plan(&t, &all(&t), 4, &busy).unwrap();
        assert!(a.cpus.iter().all(|c| !b.cpus.contains(c)));
        assert!(a.llc_ids().iter().all(|id| !b.llc_ids().contains(id)));
    }

    #[test]
    fn one_llc_machine() {
        let t = topo(&[(&[0, 1], 0)], 1);
        let p = plan(&t, &all(&t), 1, &none()).unwrap();
        assert_eq!(p.cpus, vec![0]);
        assert_eq!(
            p.llcs,
            vec![PlannedLlc {
                id: 0,
                cpus: vec![0],
                whole: false
            }]
        );
        let e = plan(&t, &all(&t), 1, &BTreeSet::from([0])).unwrap_err();
        assert!(matches!(e, NoPlan::Busy { .. }));
        let e = plan(&t, &all(&t), 3, &none()).unwrap_err();
        assert_eq!(e, NoPlan::TooFew { want: 3, usable: 2 });
    }

    #[test]
    fn allowed_set_covering_half_an_llc() {
        // LLC 0 = 0-3 but only 0-1 allowed; LLC 1 = 4-7 fully allowed.
        let t = topo(&[(&[0, 1, 2, 3], 0), (&[4, 5, 6, 7], 0)], 1);
        let allowed = CpuSet::from([0, 1, 4, 5, 6, 7]);
        // 2 CPUs: the half-allowed LLC fits exactly; take it whole rather
        // than splitting the full one.
        let p = plan(&t, &allowed, 2, &none()).unwrap();
        assert_eq!(p.cpus, vec![0, 1]);
        assert!(p.llcs[0].whole);
        // Never a CPU outside the allowed set.
        for n in 1..=6 {
            let p = plan(&t, &allowed, n, &none()).unwrap();
            assert_eq!(p.cpus.len(), n);
            assert!(p.cpus.iter().all(|c| allowed.contains(c)), "{p:?}");
        }
        let e = plan(&t, &allowed, 7, &none()).unwrap_err();
        assert_eq!(e, NoPlan::TooFew { want: 7, usable: 6 });
    }

    #[test]
    fn offline_cpus_never_planned() {
        let mut t = topo(&[(&[0, 1, 2, 3], 0)], 1);
        t.online = CpuSet::from([0, 2]);
        let p = plan(&t, &CpuSet::from([0, 1, 2, 3]), 2, &none()).unwrap();
        assert_eq!(p.cpus, vec![0, 2]);
        let e = plan(&t, &CpuSet::from([0, 1, 2, 3]), 3, &none()).unwrap_err();
        assert_eq!(e, NoPlan::TooFew { want: 3, usable: 2 });
    }

    #[test]
    fn partial_llc_takes_whole_cores() {
        // SMT-2: siblings (0,1) (2,3) ... within each LLC.
        let t = topo(&[(&[0, 1, 2, 3, 4, 5, 6, 7], 0)], 2);
        let p = plan(&t, &all(&t), 2, &none()).unwrap();
        assert_eq!(p.cpus, vec![0, 1], "one whole core");
        let p = plan(&t, &all(&t), 3, &none()).unwrap();
        assert_eq!(p.cpus, vec![0, 1, 2]);
        // Siblings far apart (0,4) (1,5) ... as on many x86 machines.
        let mut t = topo(&[(&[0, 1, 2, 3, 4, 5, 6, 7], 0)], 1);
        t.cores = (0..4).map(|c| CpuSet::from([c, c + 4])).collect();
        let p = plan(&t, &all(&t), 4, &none()).unwrap();
        assert_eq!(p.cpus, vec![0, 1, 4, 5]);
    }

    #[test]
    fn remainder_goes_to_the_smallest_llc_that_fits() {
        let t = topo(
            &[
                (&[0, 1, 2, 3, 4, 5, 6, 7], 0),
                (&[8, 9, 10], 0),
                (&[11, 12, 13, 14, 15, 16, 17, 18], 0),
            ],
            1,
        );
        let p = plan(&t, &all(&t), 10, &none()).unwrap();
        assert_eq!(p.cpus.len(), 10);
        assert_eq!(p.llc_ids(), vec![0, 1]);
        assert!(p.llcs[0].whole && !p.llcs[1].whole);
    }

    fn occ(closed: &[usize], shared: &[usize], cpus: &[usize]) -> Occupancy {
        Occupancy {
            closed: closed.iter().copied().collect(),
            shared: shared.iter().copied().collect(),
            cpus: cpus.iter().copied().collect(),
        }
    }

    #[test]
    fn shared_plans_prefer_untouched_llcs_then_share() {
        let t = four_on_two();
        // A build on CPUs 0-1 of LLC 0: the next goes to an untouched LLC,
        // as an exclusive plan would.
        let busy = occ(&[], &[0], &[0, 1]);
        let p = plan_shared(&t, &all(&t), 2, &busy).unwrap();
        assert_eq!(p, plan_exclusive(&t, &all(&t), 2, &busy).unwrap());
        assert_eq!(p.llc_ids(), vec![1]);
        // Every LLC touched: share the free CPUs, where exclusive waits.
        let busy = occ(&[], &[0, 1, 2, 3], &[0, 1, 4, 5, 6, 8, 12, 13, 14]);
        let p = plan_shared(&t, &all(&t), 2, &busy).unwrap();
        assert_eq!(p.cpus, vec![2, 3], "{p:?}");
        assert!(matches!(
            plan_exclusive(&t, &all(&t), 2, &busy),
            Err(NoPlan::Busy { .. })
        ));
        // A closed LLC (perf run, exclusive build) is never shared.
        let busy = occ(&[0], &[], &[]);
        let p = plan_shared(&t, &all(&t), 16 - 4, &busy).unwrap();
        assert!(p.cpus.iter().all(|&c| c >= 4), "{p:?}");
        let e = plan_shared(&t, &all(&t), 13, &busy).unwrap_err();
        assert_eq!(e, NoPlan::Busy { want: 13, free: 12 });
        // Too few CPUs on the machine is not a wait.
        let e = plan_shared(&t, &all(&t), 17, &busy).unwrap_err();
        assert_eq!(
            e,
            NoPlan::TooFew {
                want: 17,
                usable: 16
            }
        );
    }

    #[test]
    fn two_one_cpu_builds_on_a_two_cpu_llc() {
        let t = topo(&[(&[0, 1], 0)], 1);
        let a = plan_shared(&t, &all(&t), 1, &Occupancy::default()).unwrap();
        assert_eq!(a.cpus, vec![0]);
        let busy = occ(&[], &[0], &a.cpus);
        let b = plan_shared(&t, &all(&t), 1, &busy).unwrap();
        assert_eq!(b.cpus, vec![1]);
        assert!(matches!(
            plan_exclusive(&t, &all(&t), 1, &busy),
            Err(NoPlan::Busy { .. })
        ));
        let full = occ(&[], &[0], &[0, 1]);
        assert_eq!(
            plan_shared(&t, &all(&t), 1, &full).unwrap_err(),
            NoPlan::Busy { want: 1, free: 0 }
        );
    }

    #[test]
    fn shared_plans_take_whole_free_cores() {
        // SMT-2 cores (0,1) (2,3) (4,5) (6,7); someone holds CPU 0.
        let t = topo(&[(&[0, 1, 2, 3, 4, 5, 6, 7], 0)], 2);
        let busy = occ(&[], &[0], &[0]);
        let p = plan_shared(&t, &all(&t), 2, &busy).unwrap();
        assert_eq!(p.cpus, vec![2, 3], "a whole core, not CPU 0's sibling");
        let p = plan_shared(&t, &all(&t), 7, &busy).unwrap();
        assert_eq!(p.cpus, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn describe_is_readable() {
        let t = four_on_two();
        let p = plan(&t, &all(&t), 3, &none()).unwrap();
        assert_eq!(p.describe(), "3 CPUs (0-2) in LLC 0 on node 0");
    }
}
