//! `ktstr locks`: every LLC, source-tree, build (per key), mirror and
//! cache-entry lock, and who holds or waits for it.
//!
//! Lock files are never deleted (see docs/cache.md), so the directory lists
//! everything ever locked; holders come from `/proc/locks`. A lock file's
//! content, when present, is a one-line description of what it guards
//! (a tree path, a CPU list); its name alone says the kind.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ktstr_sdk::lock::{self, Holder};
use ktstr_sdk::paths;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct LocksArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    kind: &'static str,
    /// Key, LLC id or hash from the file name.
    id: String,
    /// What the file says it guards (tree path, CPUs), if anything.
    guards: String,
    path: PathBuf,
    holders: Vec<Holder>,
}

fn classify(name: &str) -> Option<(&'static str, &str)> {
    let stem = name.strip_suffix(".lock")?;
    [
        ("llc-", "llc"),
        ("source-", "source"),
        ("entry-", "entry"),
        ("build-", "build"),
        ("mirror-", "mirror"),
    ]
    .into_iter()
    .find_map(|(prefix, kind)| stem.strip_prefix(prefix).map(|id| (kind, id)))
}

fn scan(dir: &Path, rows: &mut Vec<Row>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((kind, id)) = name.to_str().and_then(classify) else {
            continue;
        };
        let path = entry.path();
        // A lock file's content says what it guards; one replaced by a
        // FIFO or a huge file must not hang or bloat `ktstr locks`.
        let guards = ktstr_sdk::fsread::read_text(
            &path,
            "lock file",
            4 << 10,
            ktstr_sdk::fsread::Follow::No,
        )
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
        .unwrap_or_default();
        rows.push(Row {
            kind,
            id: id.to_string(),
            guards,
            holders: lock::holders(&path),
            path,
        });
    }
}

fn collect(root: &Path, cpu: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let main = paths::lock_dir(root);
    scan(&main, &mut rows);
    if cpu != main {
        scan(cpu, &mut rows);
    }
    let order = |k: &str| {
        ["llc", "build", "source", "mirror", "entry"]
            .iter()
            .position(|x| *x == k)
    };
    rows.sort_by_key(|r| (order(r.kind), natural(&r.id)));
    rows
}

/// Sort LLC ids numerically, everything else as text.
fn natural(id: &str) -> (u64, String) {
    (id.parse().unwrap_or(u64::MAX), id.to_string())
}

fn render(rows: &[Row], out: &mut impl Write) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(
            out,
            "no locks (nothing has been built with this cache root)"
        );
    }
    writeln!(out, "{:<7} {:<36} {:<8} WHO", "KIND", "LOCK", "STATE")?;
    for row in rows {
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
        writeln!(out, "{:<7} {:<36} {:<8} {who}", row.kind, what, state)?;
    }
    Ok(())
}

pub fn run(as_json: bool, watch: bool) -> Result<()> {
    let root = paths::cache_root()?;
    // The llc reserver's settings may move its locks (`[plugin.llc] lock_dir`).
    let setup = crate::stage_setup::setup(&crate::stage_setup::Overrides::default())?;
    let cpu_dir =
        ktstr_plugin_llc::LlcReserver::from_config(setup.selection.config("llc"))?.lock_dir()?;
    let cancel = ktstr_sdk::context::Cancellation::new();
    if watch {
        crate::interrupt::install(&cancel);
    }
    loop {
        let rows = collect(&root, &cpu_dir);
        let mut out = std::io::stdout().lock();
        if as_json {
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        } else {
            if watch && std::io::stdout().is_terminal() {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            render(&rows, &mut out)?;
        }
        out.flush()?;
        drop(out);
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
    fn names_say_the_kind() {
        assert_eq!(classify("llc-3.lock"), Some(("llc", "3")));
        assert_eq!(
            classify("entry-6.12.0-local-x86_64-ab.lock"),
            Some(("entry", "6.12.0-local-x86_64-ab"))
        );
        assert_eq!(classify("source-1a2b.lock"), Some(("source", "1a2b")));
        assert_eq!(
            classify("build-6.12.0-tarball-x86_64-ab.lock"),
            Some(("build", "6.12.0-tarball-x86_64-ab"))
        );
        assert_eq!(classify("other.txt"), None);
    }

    #[test]
    fn lists_holders_of_a_held_lock() {
        let root = tempfile::tempdir().unwrap();
        paths::ensure_root(root.path()).unwrap();
        let path = paths::llc_lock(&paths::lock_dir(root.path()), 2);
        std::fs::write(&path, "cpus 4-7\n").unwrap();
        let _held = lock::try_lock(&path, lock::LockMode::Exclusive)
            .unwrap()
            .unwrap();
        let free = paths::llc_lock(&paths::lock_dir(root.path()), 10);
        std::fs::write(&free, "").unwrap();
        let rows = collect(root.path(), &paths::lock_dir(root.path()));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].id.as_str(), rows[0].guards.as_str()),
            ("2", "cpus 4-7")
        );
        assert_eq!(rows[0].holders.len(), 1);
        assert_eq!(rows[0].holders[0].pid, std::process::id());
        assert!(rows[1].holders.is_empty());
        let mut text = Vec::new();
        render(&rows, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("2 (cpus 4-7)") && text.contains("held"),
            "{text}"
        );
        assert!(text.contains("free"), "{text}");
    }
}
