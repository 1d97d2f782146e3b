//! `ktstr locks`: every lock the host and its stages take, and who holds or
//! waits for it.
//!
//! The host lists its own build (per key) and source-tree locks; each
//! selected stage lists its own through its `locks()` hook
//! ([`ktstr_sdk::lock_list`]), so this command knows no plugin's lock
//! files. Holders come from `/proc/locks`. By default only locks someone
//! holds or waits for are shown; `--all` shows every lock file (those of
//! removed entries are pruned by `kernel clean`, see `ktstr_sdk::lock::prune`).

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ktstr_sdk::lock;
use ktstr_sdk::lock_list::{self, LockInfo};
use ktstr_sdk::paths;

use crate::registry::Stages;
use crate::table::{Column, GiveWay};

#[derive(Debug, Args)]
pub struct LocksArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Show every lock file, also the free ones (default: only locks
    /// someone holds or waits for).
    #[arg(long)]
    pub all: bool,
    /// Never shorten lock names or holders to fit the terminal.
    #[arg(long)]
    pub wide: bool,
}

/// The host's own locks: per-key build locks and source-tree locks.
fn host_locks(root: &Path) -> Vec<Vec<LockInfo>> {
    let dir = paths::lock_dir(root);
    vec![
        lock_list::list_dir(&dir, "build", paths::BUILD_LOCK_PREFIX),
        lock_list::list_dir(&dir, "source", paths::SOURCE_LOCK_PREFIX),
    ]
}

/// Every lock, in groups: the reserver's CPU locks, the host's build and
/// tree locks, the source stages' locks, then the cache tiers'.
fn collect(root: &Path, stages: &Stages) -> ktstr_sdk::Result<Vec<LockInfo>> {
    let named = |kind: &str, name: &str, listed: ktstr_sdk::Result<Vec<LockInfo>>| {
        listed.map_err(|e| e.context(format!("{kind} plugin {name}: listing its locks")))
    };
    let mut groups = vec![named(
        "reserver",
        &stages.reserver.name,
        stages.reserver.stage.locks(),
    )?];
    groups.extend(host_locks(root));
    for s in &stages.sources {
        groups.push(named("source", &s.name, s.stage.locks())?);
    }
    for (c, _) in stages.tiers.scope(true) {
        groups.push(named("cache", &c.name, c.stage.locks())?);
    }
    Ok(ordered(groups))
}

/// Kinds in the order their groups come, each sorted by id; a lock file
/// two stages both list is shown once.
fn ordered(groups: Vec<Vec<LockInfo>>) -> Vec<LockInfo> {
    let mut kinds: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for row in groups.into_iter().flatten() {
        if !seen.insert(row.path.clone()) {
            continue;
        }
        if !kinds.contains(&row.kind) {
            kinds.push(row.kind.clone());
        }
        rows.push(row);
    }
    rows.sort_by_key(|r| (kinds.iter().position(|k| *k == r.kind), natural(&r.id)));
    rows
}

/// Sort numeric ids (CPU numbers) as numbers, everything else as text.
fn natural(id: &str) -> (u64, String) {
    (id.parse().unwrap_or(u64::MAX), id.to_string())
}

const COLUMNS: [Column; 4] = [
    Column {
        header: "KIND",
        min: 0,
        middle: false,
    },
    Column {
        header: "LOCK",
        min: 24,
        middle: true,
    },
    Column {
        header: "STATE",
        min: 0,
        middle: false,
    },
    Column {
        header: "WHO",
        min: 24,
        middle: false,
    },
];

/// Too wide: the holders' command lines shorten first, then the lock's
/// name (a key, a tree path) in its middle.
const GIVE_WAY: [GiveWay; 2] = [GiveWay::Shorten(3), GiveWay::Shorten(1)];

fn render(
    rows: &[LockInfo],
    all: bool,
    width: Option<usize>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return if all {
            writeln!(
                out,
                "no locks (nothing has been built with this cache root)"
            )
        } else {
            writeln!(
                out,
                "no lock is held or awaited (--all lists every lock file)"
            )
        };
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let held = row.holders.iter().filter(|h| !h.waiting).count();
            let waiting = row.holders.len() - held;
            let state = match (held, waiting) {
                (0, 0) => "free".to_string(),
                (_, 0) => "held".to_string(),
                (_, w) => format!("held+{w}w"),
            };
            let what = if row.guards.is_empty() {
                row.id.clone()
            } else {
                format!("{} ({})", row.id, row.guards)
            };
            let who = if row.holders.is_empty() {
                String::new()
            } else {
                lock::describe_holders(&row.holders)
            };
            vec![row.kind.clone(), what, state, who]
        })
        .collect();
    let (lines, _) = crate::table::render(&COLUMNS, &GIVE_WAY, &cells, width);
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

pub fn run(args: &LocksArgs) -> Result<()> {
    let (as_json, watch) = (args.json, args.watch);
    let root = paths::cache_root()?;
    // Stages find their own lock files (a stage's settings may move them).
    let stages = crate::stage_setup::setup(&crate::stage_setup::Overrides::default())?.stages()?;
    let cancel = ktstr_sdk::context::Cancellation::new();
    if watch {
        crate::interrupt::install(&cancel);
    }
    loop {
        let mut rows = collect(&root, &stages)?;
        if !args.all {
            rows.retain(|r| !r.holders.is_empty());
        }
        if as_json {
            crate::report::print_json(&rows)?;
        } else {
            let mut out = std::io::stdout().lock();
            if watch && std::io::stdout().is_terminal() {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            render(&rows, args.all, crate::table::width(args.wide), &mut out)?;
            out.flush()?;
        }
        if !watch {
            return Ok(());
        }
        for _ in 0..10 {
            if cancel.is_cancelled() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_locks_are_named_by_prefix() {
        let root = tempfile::tempdir().unwrap();
        paths::ensure_root(root.path()).unwrap();
        let dir = paths::lock_dir(root.path());
        for name in [
            "source-1a2b.lock",
            "build-6.12.0-tarball-x86_64-ab.lock",
            "mirror-1a2b.lock",
            "other.txt",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let rows = ordered(host_locks(root.path()));
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.kind.as_str(), r.id.as_str()))
            .collect();
        assert_eq!(
            got,
            [("build", "6.12.0-tarball-x86_64-ab"), ("source", "1a2b")]
        );
    }

    #[test]
    fn lists_holders_of_a_held_lock() {
        let root = tempfile::tempdir().unwrap();
        paths::ensure_root(root.path()).unwrap();
        let dir = paths::lock_dir(root.path());
        // A stage's family of locks, as its `locks()` hook lists them.
        let path = dir.join("cpu-2.lock");
        std::fs::write(&path, "cpus 4-7\n").unwrap();
        let _held = lock::try_lock(&path, lock::LockMode::Exclusive)
            .unwrap()
            .unwrap();
        std::fs::write(dir.join("cpu-10.lock"), "").unwrap();
        std::fs::write(dir.join("source-ab.lock"), "").unwrap();
        let stage = lock_list::list_dir(&dir, "cpu", "cpu-");
        let mut groups = vec![stage.clone(), stage];
        groups.extend(host_locks(root.path()));
        let rows = ordered(groups);
        assert_eq!(rows.len(), 3, "listed twice, shown once: {rows:?}");
        assert_eq!(
            (rows[0].id.as_str(), rows[0].guards.as_str()),
            ("2", "cpus 4-7")
        );
        assert_eq!(rows[1].id, "10");
        assert_eq!(rows[2].kind, "source");
        assert_eq!(rows[0].holders.len(), 1);
        assert_eq!(rows[0].holders[0].pid, std::process::id());
        assert!(rows[1].holders.is_empty());
        let mut text = Vec::new();
        render(&rows, true, None, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("2 (cpus 4-7)") && text.contains("held"),
            "{text}"
        );
        assert!(text.contains("free"), "{text}");
    }
}
