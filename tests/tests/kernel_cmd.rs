//! `ktstr kernel list` and `ktstr kernel clean`, including damaged entries.

mod common;

use std::fs;
use std::time::Duration;

use common::Fixture;

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

    // stdin is /dev/null: no prompt possible, so refuse.
    let run = fx.run(&["kernel", "clean"]);
    run.assert_fails().assert_stderr_has("--force");
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

    let run = fx.run(&["kernel", "clean", "--force"]);
    run.assert_fails()
        .assert_stderr_has("in use")
        .assert_stderr_has("held by pid");
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
