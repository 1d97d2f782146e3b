//! The boot check end to end, without a VM: the verifier fixtures
//! (tests/fixtures/plugins/verifier-*) loaded into the real `ktstr` with
//! `--plugin`, over the fixture kernel tree. What is checked is the host's
//! side: the verdict in metadata, `kernel list` and `--json`, the remote
//! tier; the exit codes; a verifier that panics or hangs.
//!
//! `cargo test` does not build cdylibs, so the first test to need them runs
//! `$CARGO build -p <fixture>...` into this test's target directory, next
//! to the `ktstr` binary, whose directory is a plugin search directory.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{Fixture, Run};
use ktstr_test_servers::S3Server;

const VERIFIERS: [&str; 4] = [
    "ktstr-plugin-verifier-pass",
    "ktstr-plugin-verifier-fail",
    "ktstr-plugin-verifier-panic",
    "ktstr-plugin-verifier-hang",
];

/// `<target>/<profile>` after building ktstr and the verifier fixtures.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let profile_dir = common::ktstr_bin().parent().unwrap().to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(["build", "--quiet", "--profile", &profile])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap())
            .stdin(Stdio::null());
        for lib in VERIFIERS {
            cmd.args(["-p", lib]);
        }
        let out = cmd.output().expect("run cargo");
        assert!(
            out.status.success(),
            "building the verifier fixtures failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir
    })
}

/// `fx`, once the verifier fixtures are built: they are found by name in
/// the directory of the `ktstr` under test, a plugin search directory.
fn with_verifiers(fx: Fixture) -> Fixture {
    built();
    fx
}

fn git_fixture() -> Fixture {
    with_verifiers(Fixture::git())
}

/// The `verify` record in the entry's metadata.json on disk.
fn stored_verdict(fx: &Fixture, key: &str) -> serde_json::Value {
    let text = fs::read_to_string(fx.kernels_dir().join(key).join("metadata.json")).unwrap();
    let metadata: serde_json::Value = serde_json::from_str(&text).unwrap();
    metadata["verify"].clone()
}

/// The BOOT cell of `key`'s row in `kernel list --wide`.
fn boot_cell(fx: &Fixture, key: &str) -> String {
    let list = fx.run(&["kernel", "list", "--wide"]);
    list.assert_ok();
    let header = list.stdout.lines().next().unwrap();
    let at = header.find("BOOT").expect("a BOOT column");
    let end = header.find("STATUS").expect("a STATUS column after it");
    let row = (list.stdout.lines())
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("{key} not listed\n{}", list.describe()));
    row[at..end].trim().to_string()
}

#[track_caller]
fn assert_exit(run: &Run, code: i32) {
    assert_eq!(run.code(), Some(code), "{}", run.describe());
    run.assert_no_panic();
}

#[test]
fn verify_records_the_verdict_where_list_and_json_show_it() {
    let fx = git_fixture();
    let run = fx.build(&["--verify", "--plugin", "verifier-pass", "--json"]);
    run.assert_ok()
        .assert_stderr_has("boot check passed (verifier-pass 0.1.0, ");
    let report = run.json();
    let key = report["key"].as_str().unwrap().to_string();
    let verify = &report["verify"];
    assert_eq!(verify["passed"], true, "{report:#}");
    assert_eq!(verify["verifier"], "verifier-pass");
    assert_eq!(verify["verifier_version"], "0.1.0");
    assert!(verify["verified_at"].as_str().unwrap().ends_with('Z'));
    assert!(verify["duration_ms"].is_u64());
    // What the request carried, as the fixture saw it through the ABI.
    let image = fs::metadata(report["image"].as_str().unwrap()).unwrap();
    assert_eq!(
        verify["observed"]["image_bytes"],
        image.len().to_string(),
        "the verifier checked the built image"
    );
    assert_eq!(
        verify["observed"]["timeout_ms"], "120000",
        "the default bound"
    );
    assert_eq!(verify["observed"]["arch"], "x86_64");
    let cpus: usize = verify["observed"]["cpus"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=4).contains(&cpus), "{cpus}");

    assert_eq!(stored_verdict(&fx, &key), *verify, "metadata.json has it");
    let row = &fx.list_json()[0];
    assert_eq!(row["verify"], *verify);
    assert!(
        boot_cell(&fx, &key).starts_with("ok "),
        "{}",
        boot_cell(&fx, &key)
    );

    // A hit that has a verdict is not checked again, whatever the verifier.
    let again = fx.build(&["--verify", "--plugin", "verifier-fail"]);
    again.image_path();
    assert_eq!(again.hit_key(), key);
    again.assert_stderr_has("boot check passed (verifier-pass");

    // verify-boot re-checks on demand and replaces the verdict.
    let run = fx.run(&["kernel", "verify-boot", &key, "--plugin", "verifier-fail"]);
    assert_exit(&run, 3);
    assert_eq!(run.stdout.trim(), format!("{key} failed"));
    run.assert_stderr_has(&format!("{key}: boot check FAILED (verifier-fail 0.1.0, "))
        .assert_stderr_has("  | Kernel panic - not syncing");
    let stored = stored_verdict(&fx, &key);
    assert_eq!(stored["passed"], false, "{stored:#}");
    assert_eq!(stored["verifier"], "verifier-fail");
    assert_eq!(boot_cell(&fx, &key), "FAILED");

    let run = fx.run(&[
        "kernel",
        "verify-boot",
        &key,
        "--plugin",
        "verifier-pass",
        "--json",
    ]);
    run.assert_ok();
    let rows = run.json();
    assert_eq!(rows[0]["key"], key.as_str());
    assert_eq!(rows[0]["status"], "passed");
    assert_eq!(rows[0]["verify"], stored_verdict(&fx, &key));

    let run = fx.run(&[
        "kernel",
        "verify-boot",
        "6.99.0-nope",
        "--plugin",
        "verifier-pass",
    ]);
    run.assert_fails()
        .assert_stderr_has("6.99.0-nope: not in the local cache");
}

#[test]
fn a_kernel_that_fails_is_kept_marked_and_exits_3() {
    let fx = git_fixture();
    let run = fx.build(&["--verify", "--plugin", "verifier-fail"]);
    assert_exit(&run, 3);
    let image = PathBuf::from(run.stdout.trim());
    assert!(
        image.is_file(),
        "the image path is still printed\n{}",
        run.describe()
    );
    run.assert_stderr_has("boot check FAILED (verifier-fail 0.1.0, ")
        .assert_stderr_has(" s): kernel panic: VFS: Unable to mount root fs on unknown-block(0,0)")
        .assert_stderr_has("  | ---[ end Kernel panic - not syncing ]---")
        .assert_stderr_has("ktstr: error: boot check failed for ")
        .assert_stderr_prefixed();
    let key = run.cached_key();
    assert_eq!(
        fx.entries_on_disk(),
        std::slice::from_ref(&key),
        "the entry is kept"
    );
    assert_eq!(boot_cell(&fx, &key), "FAILED");
    assert_eq!(
        stored_verdict(&fx, &key)["console_tail"][1],
        "---[ end Kernel panic - not syncing ]---"
    );
    // Known bad: a hit says so again, with the same exit code.
    assert_exit(&fx.build(&["--verify", "--plugin", "verifier-pass"]), 3);
}

#[test]
fn a_panicking_verifier_is_an_error_naming_it_and_the_build_stays_cached() {
    let fx = git_fixture();
    let run = fx.build(&["--verify", "--plugin", "verifier-panic"]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(
        !run.stderr.contains("thread '") && !run.stderr.contains("RUST_BACKTRACE"),
        "a raw panic report reached the user\n{}",
        run.describe()
    );
    run.assert_hint()
        .assert_stderr_has("plugin verifier-panic panicked in verifier verifier-panic verify")
        .assert_stderr_has("the fixture verifier exploded")
        .assert_stderr_has("without a boot check")
        .assert_stderr_has("`ktstr kernel verify-boot ");
    let key = run.cached_key();
    assert_eq!(fx.entries_on_disk(), std::slice::from_ref(&key));
    assert!(stored_verdict(&fx, &key).is_null());
    assert_eq!(boot_cell(&fx, &key), "-");
}

#[test]
fn a_hanging_verifier_is_abandoned_after_its_bound() {
    let fx = git_fixture();
    let run = fx.build(&[
        "--verify",
        "--verify-timeout",
        "2s",
        "--plugin",
        "verifier-hang",
    ]);
    run.assert_fails()
        .assert_stderr_has("verifier verifier-hang did not finish within 3s")
        .assert_hint();
    assert!(run.elapsed < Duration::from_secs(30), "{:?}", run.elapsed);
    let key = run.cached_key();
    assert!(stored_verdict(&fx, &key).is_null());

    let run = fx.build(&["--verify", "--verify-timeout", "soon"]);
    assert_exit(&run, 2);
    run.assert_stderr_has("--verify-timeout \"soon\": is not a duration");
}

#[test]
fn an_unknown_verifier_is_one_clear_error_before_building() {
    let fx = git_fixture();
    let config = fx.root.path().join("xdg-config/ktstr/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(&config, "verifier = \"acme-smoke\"\n").unwrap();
    let run = fx.build(&["--verify"]);
    run.assert_fails()
        .assert_stderr_has("no verifier plugin named \"acme-smoke\"")
        .assert_hint();
    assert_eq!(fx.build_count(), 0, "{}", run.describe());
}

#[test]
fn per_host_config_verifies_every_new_build() {
    let fx = git_fixture();
    let config = fx.root.path().join("xdg-config/ktstr/config.toml");
    fs::create_dir_all(config.parent().unwrap()).unwrap();
    fs::write(
        &config,
        "verifier = \"verifier-pass\"\n\
         [hosts.\"no-such-host-*\"]\nverify = true\n",
    )
    .unwrap();
    let run = fx.build(&[]);
    run.image_path();
    run.assert_stderr_lacks("boot check");
    let key = run.cached_key();
    assert!(stored_verdict(&fx, &key).is_null());
    fx.run(&["kernel", "clean", "--force", &key]).assert_ok();

    fs::write(
        &config,
        "verifier = \"verifier-pass\"\n\
         [hosts.\"*\"]\nverify = true\nverify_timeout = \"45s\"\n",
    )
    .unwrap();
    let run = fx.build(&[]);
    run.image_path();
    let stored = stored_verdict(&fx, &run.cached_key());
    assert_eq!(stored["passed"], true, "{}", run.describe());
    assert_eq!(stored["observed"]["timeout_ms"], "45000");
}

/// A fixture machine whose ktstr uses the bucket at `port`.
fn machine(port: u16) -> Fixture {
    with_verifiers(Fixture::plain()).on_s3(port)
}

/// A machine that pulls only entries whose boot check passed, and never
/// uploads.
fn strict_machine(port: u16) -> Fixture {
    machine(port)
        .with_env("KTSTR_S3_REQUIRE_VERIFIED", "true")
        .with_env("KTSTR_S3_READ_ONLY", "true")
}

fn build_from(fx: &Fixture, spec: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "build",
        "--kernel",
        spec.to_str().unwrap(),
        "--plugin",
        "s3-cache",
    ];
    args.extend_from_slice(extra);
    fx.run(&args)
}

#[test]
fn verdicts_travel_with_entries_and_strict_machines_pull_only_verified_ones() {
    let Some(s3) = S3Server::start() else { return };
    let shared = tempfile::tempdir().unwrap();
    let tarball = |v: &str| common::fixture_tarball(shared.path(), v);

    // Built without a check and pushed: a strict machine builds its own.
    let unchecked = tarball("6.99.6");
    let a = machine(s3.port);
    let key = build_from(&a, &unchecked, &[]).cached_key();
    let b = strict_machine(s3.port);
    let run = build_from(&b, &unchecked, &[]);
    run.image_path();
    run.assert_stderr_has(&format!(
        "s3-cache: not pulling {key}: it has no boot check and require_verified is set"
    ));
    assert_eq!(b.build_count(), 1, "a miss, not an error");

    // verify-boot records the verdict remotely too: now it is pulled.
    let run = a.run(&[
        "kernel",
        "verify-boot",
        &key,
        "--plugin",
        "verifier-pass",
        "--plugin",
        "s3-cache",
    ]);
    run.assert_ok();
    let c = strict_machine(s3.port);
    let run = build_from(&c, &unchecked, &[]);
    assert_eq!(run.hit_key(), key, "{}", run.describe());
    assert_eq!(c.build_count(), 0);
    assert_eq!(c.list_json()[0]["verify"]["verifier"], "verifier-pass");

    // --verify: the verdict is in the entry every tier gets.
    let checked = tarball("6.99.7");
    let run = build_from(&a, &checked, &["--verify", "--plugin", "verifier-pass"]);
    let key = run.cached_key();
    let d = strict_machine(s3.port);
    assert_eq!(build_from(&d, &checked, &[]).hit_key(), key);
    assert_eq!(d.build_count(), 0);
    assert_eq!(d.list_json()[0]["verify"]["passed"], true);

    // A failed verdict is pushed too, and a strict machine refuses it.
    let broken = tarball("6.99.8");
    let run = build_from(&a, &broken, &["--verify", "--plugin", "verifier-fail"]);
    assert_exit(&run, 3);
    let key = run.cached_key();
    let e = strict_machine(s3.port);
    let run = build_from(&e, &broken, &[]);
    run.image_path();
    run.assert_stderr_has(&format!(
        "s3-cache: not pulling {key}: its boot check failed (kernel panic: VFS"
    ));
    assert_eq!(e.build_count(), 1);
    // A machine that does not insist still gets it, marked.
    let f = machine(s3.port);
    assert_eq!(build_from(&f, &broken, &[]).hit_key(), key);
    assert_eq!(f.list_json()[0]["verify"]["passed"], false);
}

/// The `verify-*` scratch directories under the cache root.
fn verify_scratch(fx: &Fixture) -> Vec<String> {
    fs::read_dir(fx.cache.join("scratch"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("verify-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Ctrl-C during the check of a new build stops the run at once, even with
/// a verifier that ignores it, and stores nothing.
#[test]
fn an_interrupt_during_the_check_stores_nothing() {
    let fx = git_fixture();
    let mut child = fx.spawn_build(
        &[
            "--verify",
            "--verify-timeout",
            "60s",
            "--plugin",
            "verifier-hang",
        ],
        &[],
    );
    let started = std::time::Instant::now();
    while verify_scratch(&fx).is_empty() {
        assert!(
            child.child.try_wait().unwrap().is_none(),
            "ktstr exited before the check"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no check began"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let run = child.wait(Duration::from_secs(20));
    assert_exit(&run, 130);
    assert!(fx.entries_on_disk().is_empty(), "{}", run.describe());
    assert!(verify_scratch(&fx).is_empty(), "scratch left behind");
}
