//! `ktstr kernel list` and `ktstr kernel clean`, including damaged entries,
//! sizes, terminal widths, named and size-capped cleaning, and `locks`
//! with lock files pruned.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::Fixture;

/// Two entries, the second built at least a second later (`built_at`
/// orders them): (older, newer).
fn two_entries(fx: &Fixture) -> (String, String) {
    let older = fx.build(&[]).cached_key();
    std::thread::sleep(Duration::from_millis(1100));
    let newer = fx.build(&["--profile", "tiny"]).cached_key();
    assert_ne!(older, newer);
    (older, newer)
}

fn size_of(fx: &Fixture, key: &str) -> u64 {
    fx.list_json()
        .iter()
        .find(|r| r["key"] == key)
        .and_then(|r| r["size"].as_u64())
        .unwrap_or_else(|| panic!("{key} has no size"))
}

#[track_caller]
fn assert_fits(stdout: &str, width: usize) {
    for line in stdout.lines() {
        assert!(
            line.chars().count() <= width,
            "line longer than {width} columns ({}): {line:?}\n{stdout}",
            line.chars().count()
        );
    }
}

#[test]
fn list_shows_sizes_and_totals_and_fits_the_width() {
    let fx = Fixture::git();
    let (older, newer) = two_entries(&fx);
    let total = size_of(&fx, &older) + size_of(&fx, &newer);
    assert!(total > 0);

    let wide = fx.run(&["kernel", "list", "--wide"]);
    wide.assert_ok();
    let header = wide.stdout.lines().next().unwrap();
    for col in [
        "KEY", "VERSION", "ARCH", "PROFILE", "SIZE", "BUILT", "BOOT", "STATUS", "SOURCE",
    ] {
        assert!(header.contains(col), "{col} missing: {header}");
    }
    assert!(wide.stdout.contains(&older) && wide.stdout.contains(&newer));
    let last = wide.stdout.lines().last().unwrap();
    assert!(last.starts_with("total: 2 entries, "), "{last}");

    for width in [120, 100, 80, 60, 40] {
        let run = fx
            .command(&["kernel", "list"])
            .env("COLUMNS", width.to_string())
            .output()
            .unwrap();
        assert!(run.status.success());
        let stdout = String::from_utf8(run.stdout).unwrap();
        assert_fits(&stdout, width);
        assert!(stdout.lines().next().unwrap().contains("SIZE"), "{stdout}");
    }
    // Narrow enough to shorten the key: it keeps its version and digest
    // ends, and stderr says how to see it whole.
    let run = fx
        .command(&["kernel", "list"])
        .env("COLUMNS", "40")
        .output()
        .unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    let row = stdout.lines().nth(1).unwrap();
    assert!(row.starts_with("6.99.0-") && row.contains('…'), "{stdout}");
    assert!(String::from_utf8_lossy(&run.stderr).contains("--wide"));

    // --wide wins over COLUMNS; --json always has full keys.
    let run = fx
        .command(&["kernel", "list", "--wide"])
        .env("COLUMNS", "40")
        .output()
        .unwrap();
    assert!(String::from_utf8(run.stdout).unwrap().contains(&older));
}

/// Under a real 80-column terminal (no COLUMNS): no line wraps.
#[test]
fn list_fits_a_real_80_column_terminal() {
    use std::io::Read;
    let fx = Fixture::git();
    fx.build(&[]).cached_key();
    for cols in [80u16, 50] {
        let size = nix::pty::Winsize {
            ws_row: 24,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let mut cmd = fx.command(&["kernel", "list"]);
        cmd.env_remove("COLUMNS")
            .stdout(std::process::Stdio::from(pty.slave))
            .stderr(std::process::Stdio::null());
        let status = cmd.status().unwrap();
        drop(cmd);
        assert!(status.success());
        let mut master = fs::File::from(pty.master);
        let mut raw = Vec::new();
        // Reading past the end of a closed pty is EIO: the data is in.
        let _ = master.read_to_end(&mut raw);
        let text = String::from_utf8(raw).unwrap().replace("\r\n", "\n");
        assert!(text.contains("SIZE"), "{text}");
        assert_fits(&text, usize::from(cols));
    }
}

#[test]
fn clean_named_keys_and_unknown_keys() {
    let fx = Fixture::git();
    let (older, newer) = two_entries(&fx);

    let run = fx.run(&["kernel", "clean", "--force", &older, "6.99.0-nope"]);
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has("\"6.99.0-nope\" is not in the")
        .assert_stderr_has("kernel list");
    assert_eq!(
        fx.entries_on_disk().len(),
        2,
        "nothing removed: {}",
        run.describe()
    );

    let freed = size_of(&fx, &older);
    let run = fx.run(&["kernel", "clean", "--force", &older]);
    run.assert_ok()
        .assert_stderr_prefixed()
        .assert_stderr_has(&format!("removed {older} ("))
        .assert_stderr_has("removed 1 entry, freed ");
    assert!(
        run.stdout.is_empty(),
        "humans read stderr: {}",
        run.describe()
    );
    assert_eq!(fx.entries_on_disk(), vec![newer], "{freed}");

    let run = fx.run(&["kernel", "clean", "--keep", "1", "somekey"]);
    assert_eq!(
        run.code(),
        Some(2),
        "keys and --keep conflict: {}",
        run.describe()
    );
}

#[test]
fn clean_dry_run_removes_nothing() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    let run = fx.run(&["kernel", "clean", "--dry-run"]);
    run.assert_ok()
        .assert_stderr_has(&format!("would remove {key} ("))
        .assert_stderr_has("nothing removed (--dry-run)");
    assert_eq!(fx.entries_on_disk(), vec![key]);
}

#[test]
fn clean_max_size_evicts_the_oldest_until_under() {
    let fx = Fixture::git();
    let (older, newer) = two_entries(&fx);
    let newer_size = size_of(&fx, &newer);
    let limit = newer_size.to_string();

    let run = fx.run(&["kernel", "clean", "--force", "--max-size", &limit]);
    run.assert_ok()
        .assert_stderr_has(&format!("removed {older} ("));
    assert_eq!(
        fx.entries_on_disk(),
        vec![newer.clone()],
        "{}",
        run.describe()
    );

    // Already under: nothing goes.
    fx.run(&["kernel", "clean", "--force", "--max-size", "1G"])
        .assert_ok()
        .assert_stderr_has("nothing to remove");
    assert_eq!(fx.entries_on_disk(), vec![newer]);

    fx.run(&["kernel", "clean", "--force", "--max-size", "0"])
        .assert_ok();
    assert!(fx.entries_on_disk().is_empty());
}

#[test]
fn clean_max_size_rejects_bad_sizes() {
    let fx = Fixture::git();
    for bad in ["20X", "lots", "-1G"] {
        let flag = format!("--max-size={bad}");
        let run = fx.run(&["kernel", "clean", &flag]);
        assert_eq!(run.code(), Some(2), "{}", run.describe());
        run.assert_stderr_has("--max-size")
            .assert_stderr_has("like 500M or 20G");
    }
}

fn lock_files(fx: &Fixture) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(fx.cache.join(".locks"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// `locks` lists held locks unless --all; `kernel clean` deletes the lock
/// files of the entries it removed, except one somebody holds.
#[test]
fn locks_show_held_ones_and_clean_prunes_the_free_ones() {
    let fx = Fixture::git();
    let (older, newer) = two_entries(&fx);
    let named = |key: &str| {
        lock_files(&fx)
            .into_iter()
            .filter(|p| p.to_str().unwrap().contains(key))
            .collect::<Vec<_>>()
    };
    assert!(!named(&older).is_empty(), "{:?}", lock_files(&fx));

    let all = fx.run(&["locks", "--all"]);
    all.assert_ok();
    assert!(
        all.stdout.contains(&older) && all.stdout.contains("free"),
        "{}",
        all.describe()
    );
    for width in [80, 50] {
        let out = fx
            .command(&["locks", "--all"])
            .env("COLUMNS", width.to_string())
            .output()
            .unwrap();
        assert_fits(&String::from_utf8(out.stdout).unwrap(), width);
    }
    let held = fx.run(&["locks"]);
    held.assert_ok();
    assert!(
        !held.stdout.contains(&older),
        "free locks hidden: {}",
        held.describe()
    );
    assert!(held.stdout.contains("--all"), "{}", held.describe());
    let json = fx.run(&["locks", "--json"]).json();
    assert_eq!(json, serde_json::json!([]));

    // Lock files of keys long gone: one free, one held by another process.
    let gone = |hash: &str| {
        let path = fx
            .cache
            .join(".locks")
            .join(format!("build-6.99.0-local-x86_64-{hash}.lock"));
        fs::write(&path, "").unwrap();
        path
    };
    let free_stale = gone("00000000feedface");
    let held_stale = gone("00000000deadbeef");
    let mut holder = std::process::Command::new("flock")
        .args(["--shared", "--close"])
        .arg(&held_stale)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fx.run(&["locks"]).stdout.contains("deadbeef") {
        assert!(std::time::Instant::now() < deadline, "holder never locked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let shown = fx.run(&["locks"]);
    assert!(
        shown.stdout.contains("held") && !shown.stdout.contains("feedface"),
        "{}",
        shown.describe()
    );

    let run = fx.run(&["kernel", "clean", "--force", "--json", &older]);
    run.assert_ok();
    assert_eq!(fx.entries_on_disk(), vec![newer.clone()]);
    assert!(
        named(&older).is_empty(),
        "older's locks pruned: {:?}",
        lock_files(&fx)
    );
    assert!(!named(&newer).is_empty(), "a live entry's locks stay");
    assert!(!free_stale.exists(), "a free stale lock is pruned");
    assert!(held_stale.exists(), "a held lock file stays");
    assert!(
        run.json()["pruned_locks"].as_u64().unwrap() >= 2,
        "{}",
        run.describe()
    );

    holder.kill().unwrap();
    holder.wait().unwrap();
    // Nothing to remove from the cache, but the lock file now free goes.
    let v = fx
        .run(&["kernel", "clean", "--force", "--json", "--max-size", "1G"])
        .json();
    assert_eq!(v["removed"], serde_json::json!([]), "{v}");
    assert_eq!(v["pruned_locks"], 1, "{v}");
    assert!(!held_stale.exists(), "pruned once free");
    fx.run(&["kernel", "clean", "--force"]).assert_ok();
    assert!(named(&newer).is_empty(), "{:?}", lock_files(&fx));
    // And a build after pruning locks and stores as before.
    fx.build(&[]).cached_key();
}

#[test]
fn list_on_an_empty_cache() {
    let fx = Fixture::git();
    assert!(fx.list_json().is_empty());
    let run = fx.run(&["kernel", "list"]);
    run.assert_ok();
    assert!(
        run.stdout.lines().next().is_some_and(|l| l.contains("KEY")),
        "header line with KEY\n{}",
        run.describe()
    );
}

#[test]
fn plain_list_shows_the_key() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    let run = fx.run(&["kernel", "list"]);
    run.assert_ok();
    assert!(
        run.stdout.lines().next().is_some_and(|l| l.contains("KEY")),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains(&key), "{}", run.describe());
}

#[test]
fn corrupt_metadata_is_listed_and_never_served() {
    let fx = Fixture::git();
    let first = fx.build(&[]);
    let image = first.image_path();
    let key = first.cached_key();
    let meta = image.parent().unwrap().join("metadata.json");
    fs::write(&meta, "{ this is not json").unwrap();

    let list = fx.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["key"], key.as_str(), "{list:?}");
    assert_eq!(list[0]["status"], "corrupt", "{list:?}");
    assert!(
        list[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a corrupt entry has a reason: {list:?}"
    );
    let plain = fx.run(&["kernel", "list"]);
    plain.assert_ok();
    assert!(plain.stdout.contains(&key), "{}", plain.describe());

    // A build must not serve it: it rebuilds and replaces the entry.
    let run = fx.build(&[]);
    assert_eq!(run.image_path(), image, "{}", run.describe());
    run.assert_stderr_lacks("cache hit ");
    assert_eq!(run.cached_key(), key, "{}", run.describe());
    assert_eq!(fx.build_count(), 2, "{:?}", fx.make_log());
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&meta).unwrap()).expect("metadata.json replaced");
    assert!(meta.is_object());
    let list = fx.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "ok", "{list:?}");
    assert_eq!(fx.build(&[]).hit_key(), key);
}

#[test]
fn entry_missing_its_image_is_corrupt_and_rebuilt() {
    let fx = Fixture::git();
    let first = fx.build(&[]);
    let image = first.image_path();
    let key = first.cached_key();
    fs::remove_file(&image).unwrap();

    let list = fx.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "corrupt", "{list:?}");

    let run = fx.build(&[]);
    assert_eq!(run.image_path(), image, "{}", run.describe());
    run.assert_stderr_lacks("cache hit ");
    assert_eq!(run.cached_key(), key);
    assert_eq!(fx.list_json()[0]["status"], "ok");
}

#[test]
fn clean_needs_force_off_a_tty_and_keep_keeps_the_newest() {
    let fx = Fixture::git();
    let older = fx.build(&[]).cached_key();
    // built_at must be able to tell them apart.
    std::thread::sleep(Duration::from_millis(1100));
    let newer = fx.build(&["--profile", "tiny"]).cached_key();
    assert_ne!(older, newer);
    assert_eq!(fx.list_json().len(), 2);

    // stdin is /dev/null: no prompt possible, so refuse, in a statement
    // (nobody is there to answer a question).
    let run = fx.run(&["kernel", "clean"]);
    run.assert_fails()
        .assert_hint()
        .assert_stderr_has("--force")
        .assert_stderr_has("--dry-run");
    assert!(
        !run.error_text().contains('?'),
        "the refusal is not a question: {}",
        run.describe()
    );
    assert_eq!(fx.list_json().len(), 2, "refused clean removed entries");
    assert_eq!(fx.entries_on_disk().len(), 2);

    let run = fx.run(&["kernel", "clean", "--keep", "1", "--force"]);
    run.assert_ok();
    let list = fx.list_json();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["key"],
        newer.as_str(),
        "--keep 1 keeps the newest: {list:?}"
    );
    assert_eq!(fx.entries_on_disk(), vec![newer.clone()]);

    let run = fx.run(&["kernel", "clean", "--force"]);
    run.assert_ok();
    assert!(fx.list_json().is_empty());
    assert!(
        fx.entries_on_disk().is_empty(),
        "{:?}",
        fx.entries_on_disk()
    );

    // Cleaning an empty cache is fine.
    fx.run(&["kernel", "clean", "--force"]).assert_ok();

    // And the next build stores again.
    fx.build(&[]).cached_key();
}

/// Scratch directories of dead stores are swept by the next store; a live
/// owner's are left alone.
#[test]
fn staging_dirs_of_dead_processes_are_swept() {
    let fx = Fixture::git();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    fs::create_dir_all(&fx.cache).unwrap();
    let stale = fx
        .cache
        .join(format!(".tmp-6.99.0-local-x86_64-0badf00d-{dead_pid}"));
    let live = fx.cache.join(format!(
        ".tmp-6.99.0-local-x86_64-0badf00d-{}",
        std::process::id()
    ));
    for dir in [&stale, &live] {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("bzImage"), "partial").unwrap();
    }

    fx.build(&[]).cached_key();
    assert!(!stale.exists(), "{} was not swept", stale.display());
    assert!(
        live.exists(),
        "{} belongs to a live process",
        live.display()
    );
    assert_eq!(fx.list_json().len(), 1, "scratch dirs are not entries");
}

/// `kernel clean` while another process reads an entry (holds its shared
/// lock): the entry is kept, the reader is named, and the exit code says
/// the clean was incomplete. Once the reader is gone, clean removes it.
#[test]
fn clean_keeps_an_entry_another_process_is_reading() {
    let fx = Fixture::git();
    let key = fx.build(&[]).cached_key();
    let lock = fx.cache.join(".locks").join(format!("entry-{key}.lock"));
    assert!(lock.is_file(), "{} missing", lock.display());
    // --close: only flock(1) itself holds the lock, so killing it releases it.
    let mut reader = std::process::Command::new("flock")
        .args(["--shared", "--close"])
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    // Wait until the reader holds the lock (an exclusive try then fails).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let free = std::process::Command::new("flock")
            .args(["--exclusive", "--nonblock"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success();
        if !free {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reader never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let run = fx.run(&["kernel", "clean", "--force", "--json"]);
    run.assert_fails()
        .assert_stderr_has("in use")
        .assert_stderr_has("held by pid");
    let report = run.json();
    assert_eq!(report["removed"], serde_json::json!([]), "{report}");
    assert_eq!(report["kept"][0]["key"], key.as_str(), "{report}");
    assert!(
        report["kept"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("held by pid")),
        "{report}"
    );
    assert_eq!(
        fx.entries_on_disk(),
        vec![key.clone()],
        "{}",
        run.describe()
    );

    reader.kill().unwrap();
    reader.wait().unwrap();
    fx.run(&["kernel", "clean", "--force"]).assert_ok();
    assert!(fx.entries_on_disk().is_empty());
}
