//! Entry locks that work on NFS.
//!
//! `flock` over NFS is emulated with byte-range locks on some servers and
//! clients and silently local on others, so this cache does not rely on
//! it. A lock is a file created with `O_CREAT|O_EXCL` (atomic on NFSv3 and
//! later) holding `host pid unix-time`. A lock is stale when its holder is
//! on this host and dead, or when it is older than `stale_after` (a holder
//! on another host may have crashed; nobody holds a store lock for long).
//! Breaking a stale lock renames it to a unique name first, so that two
//! processes breaking the same lock cannot remove a fresh one by mistake.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ktstr_sdk::prelude::*;

/// This machine's name, as recorded in lock files.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A held lock; the file is removed on drop.
#[derive(Debug)]
pub struct EntryLock {
    path: PathBuf,
    token: String,
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        // Only remove the file if it is still ours (not broken and re-taken).
        if std::fs::read_to_string(&self.path).is_ok_and(|t| t == self.token) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn holder_is_stale(text: &str, modified: Option<SystemTime>, stale_after: Duration) -> bool {
    let mut fields = text.split_whitespace();
    let (host, pid) = (
        fields.next(),
        fields.next().and_then(|p| p.parse::<u32>().ok()),
    );
    if let (Some(host), Some(pid)) = (host, pid)
        && host == hostname()
        && !ktstr_sdk::owned::pid_alive(pid)
    {
        return true;
    }
    modified
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age > stale_after)
}

/// Take the lock at `path`, waiting up to `wait` for a live holder.
pub fn acquire(path: &Path, stale_after: Duration, wait: Duration) -> Result<EntryLock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).at("create lock directory", dir)?;
    }
    let token = format!(
        "{} {} {}\n",
        hostname(),
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    let deadline = std::time::Instant::now() + wait;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(token.as_bytes())
                    .and_then(|()| f.sync_all())
                    .at("write lock file", path)?;
                return Ok(EntryLock {
                    path: path.to_path_buf(),
                    token,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StageError::io("create lock file", path, e)),
        }
        let holder = std::fs::read_to_string(path).unwrap_or_default();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if holder_is_stale(&holder, modified, stale_after) {
            let aside = path.with_extension(format!("stale-{}", std::process::id()));
            if std::fs::rename(path, &aside).is_ok() {
                tracing::warn!("broke stale lock {} ({})", path.display(), holder.trim());
                let _ = std::fs::remove_file(&aside);
            }
            continue;
        }
        if std::time::Instant::now() >= deadline {
            return Err(StageError::new(
                ErrorKind::Io,
                format!("{} is held by {}", path.display(), holder.trim()),
            )
            .with_hint(format!(
                "another ktstr is storing this kernel; retry later, or remove {} if that process is gone",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_then_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let held = acquire(&p, Duration::from_secs(60), Duration::ZERO).unwrap();
        let e = acquire(&p, Duration::from_secs(60), Duration::ZERO).unwrap_err();
        assert!(e.message.contains("is held by"), "{e}");
        drop(held);
        assert!(!p.exists());
        acquire(&p, Duration::from_secs(60), Duration::ZERO).unwrap();
    }

    #[test]
    fn dead_local_holders_and_old_locks_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        // pid 0 never has a /proc entry.
        std::fs::write(&p, format!("{} 0 0\n", hostname())).unwrap();
        let _l = acquire(&p, Duration::from_secs(60), Duration::ZERO).unwrap();
        assert!(holder_is_stale(
            "other-host 1 0",
            Some(SystemTime::now() - Duration::from_secs(120)),
            Duration::from_secs(60)
        ));
        assert!(!holder_is_stale(
            "other-host 1 0",
            Some(SystemTime::now()),
            Duration::from_secs(60)
        ));
    }
}
