//! CPU reservation end to end: the default `llc` reserver, `--cpu-cap`,
//! `KTSTR_CPU_CAP`, the bypass, per-host config and `ktstr locks`.
//!
//! The fixture's make records its `-j` value and the CPUs its recipe may run
//! on (`KTSTR_FIXTURE_CPUS_LOG`), so these tests see what make saw.

mod common;

use std::path::Path;

use common::Fixture;

fn cpuset_root() -> Option<&'static Path> {
    ["/sys/fs/cgroup/cpuset", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cpuset.cpus").exists() || p.join("cpuset.cpus.effective").exists())
}

fn can_sandbox() -> Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("not root: cannot create cpuset cgroups".into());
    }
    let Some(root) = cpuset_root() else {
        return Err("no cgroup v1 cpuset hierarchy here".into());
    };
    let _ = root;
    Ok(())
}

/// The sandbox make ran in, from the fixture's record of `/proc/self/cgroup`.
fn sandbox_of(log: &str) -> std::path::PathBuf {
    let rel = log
        .lines()
        .find_map(|l| l.split_once(":cpuset:").map(|(_, p)| p.trim()))
        .unwrap_or_else(|| panic!("no cpuset line in {log}"));
    assert!(
        rel.contains("/ktstr-"),
        "make ran outside a ktstr sandbox: {rel}"
    );
    cpuset_root().unwrap().join(rel.trim_start_matches('/'))
}

fn cpus_log(fx: &Fixture) -> String {
    std::fs::read_to_string(fx.root.path().join("cpus.log")).unwrap_or_default()
}

fn with_cpus_log(fx: Fixture) -> Fixture {
    let log = fx.root.path().join("cpus.log").display().to_string();
    fx.with_env("KTSTR_FIXTURE_CPUS_LOG", &log)
}

#[test]
fn cpu_cap_one_runs_make_j1_inside_a_one_cpu_cpuset() {
    if let Err(why) = can_sandbox() {
        ktstr_sdk::testing::skip(why);
        return;
    }
    let fx = with_cpus_log(Fixture::git());
    let run = fx.build(&["--cpu-cap", "1"]);
    run.image_path();
    let log = cpus_log(&fx);
    assert!(log.contains("jobs -j1"), "{log}\n{}", run.describe());
    let cpus = log
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in {log}"));
    assert!(
        cpus.parse::<usize>().is_ok(),
        "make should run on exactly one CPU, got {cpus:?}"
    );
    let sandbox = sandbox_of(&log);
    run.assert_stderr_has("reserved 1 CPU");
    assert!(!sandbox.exists(), "{} must be removed", sandbox.display());
}

#[test]
fn failed_build_leaves_no_sandbox() {
    if let Err(why) = can_sandbox() {
        ktstr_sdk::testing::skip(why);
        return;
    }
    let fx = with_cpus_log(Fixture::git());
    let frag = fx.write_file("fail.config", "CONFIG_FIXTURE_FAIL=y\n");
    let run = fx.build(&["--cpu-cap", "1", "--extra-kconfig", frag.to_str().unwrap()]);
    assert!(!run.status.success(), "{}", run.describe());
    let sandbox = sandbox_of(&cpus_log(&fx));
    assert!(!sandbox.exists(), "{} must be removed", sandbox.display());
}

#[test]
fn cpu_cap_from_the_environment_and_empty_means_unset() {
    let fx = with_cpus_log(Fixture::git()).with_env("KTSTR_CPU_CAP", "1");
    let run = fx.build(&["--reserver", "none"]);
    run.image_path();
    assert!(cpus_log(&fx).contains("jobs -j1"), "{}", cpus_log(&fx));

    let fx = Fixture::git().with_env("KTSTR_CPU_CAP", "");
    fx.build(&["--reserver", "none"]).image_path();

    let fx = Fixture::git().with_env("KTSTR_CPU_CAP", "0");
    let run = fx.build(&[]);
    assert_eq!(run.status.code(), Some(2), "{}", run.describe());
    run.assert_stderr_has("at least 1 CPU");
}

#[test]
fn bypass_conflicts_with_a_cap_at_parse_time() {
    let fx = Fixture::git().with_env("KTSTR_BYPASS_LLC_LOCKS", "1");
    let run = fx.build(&["--cpu-cap", "1"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.describe());
    run.assert_stderr_has("--cpu-cap conflicts with KTSTR_BYPASS_LLC_LOCKS");
    assert_eq!(fx.build_count(), 0);

    let fx = Fixture::git()
        .with_env("KTSTR_BYPASS_LLC_LOCKS", "1")
        .with_env("KTSTR_CPU_CAP", "1");
    let run = fx.build(&[]);
    assert_eq!(run.status.code(), Some(2), "{}", run.describe());
    run.assert_stderr_has("KTSTR_CPU_CAP conflicts");

    // Bypassed: builds with no reservation; empty counts as unset.
    let fx = Fixture::git().with_env("KTSTR_BYPASS_LLC_LOCKS", "1");
    fx.build(&[])
        .assert_stderr_has("no CPU reservation")
        .image_path();
    let fx = Fixture::git().with_env("KTSTR_BYPASS_LLC_LOCKS", "");
    fx.build(&[]).assert_stderr_lacks("no CPU reservation");
}

#[test]
fn per_host_config_switches_the_reserver() {
    let fx = Fixture::git();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let config = fx.write_file(
        "config.toml",
        &format!(
            "reserver = \"llc\"\n[hosts.\"{}*\"]\nreserver = \"none\"\n",
            &host[..host.len().min(3)]
        ),
    );
    let fx = fx.with_env("KTSTR_CONFIG", config.to_str().unwrap());
    let list = fx.run(&["plugins", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let in_use: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "reserver" && r["selected"] == true)
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_use, ["none"], "{}", list.describe());
    fx.build(&[]).assert_stderr_lacks("reserved ").image_path();

    // --reserver wins over the file for one run.
    let fx2 = Fixture::git().with_env("KTSTR_CONFIG", config.to_str().unwrap());
    fx2.build(&["--reserver", "llc"])
        .assert_stderr_has("reserved ")
        .image_path();
}

#[test]
fn a_bad_config_file_names_itself() {
    let fx = Fixture::git();
    let config = fx.write_file("config.toml", "reserver = \"none\"\nreserverr = 1\n");
    let fx = fx.with_env("KTSTR_CONFIG", config.to_str().unwrap());
    let run = fx.build(&[]);
    assert_eq!(run.status.code(), Some(1));
    run.assert_stderr_has("config.toml")
        .assert_stderr_has("reserverr")
        .assert_stderr_has("line 2");
    let fx = Fixture::git().with_env("KTSTR_CONFIG", "/nonexistent/ktstr.toml");
    fx.build(&[])
        .assert_stderr_has("/nonexistent/ktstr.toml")
        .assert_stderr_has("KTSTR_CONFIG");
}

#[test]
fn locks_lists_llc_and_source_locks() {
    let fx = Fixture::git();
    fx.build(&[]).image_path();
    let run = fx.run(&["locks", "--json", "--all"]);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let kinds: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.contains(&"llc".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"source".to_string()), "{kinds:?}");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["holders"].as_array().unwrap().is_empty())
    );
    let source = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "source")
        .unwrap();
    assert_eq!(
        source["guards"].as_str().unwrap(),
        common::canon(&fx.tree).display().to_string()
    );
    let text = fx.run(&["locks", "--all"]);
    assert!(text.stdout.contains("free"), "{}", text.describe());
}

/// Ctrl-C during make: exit 130, the sandbox is removed and the scratch
/// tree of a tarball source too.
#[test]
fn interrupt_removes_sandbox_and_scratch_tree() {
    let fx = with_cpus_log(Fixture::plain());
    let work = fx.root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = common::make_tarball(&work, "6.99.8", fx.root.path());
    let mut victim = fx.spawn(
        &[
            "build",
            "--kernel",
            file.to_str().unwrap(),
            "--cpu-cap",
            "1",
        ],
        &[("KTSTR_FIXTURE_BUILD_SECONDS", "30")],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cpus_log(&fx).contains("cgroup") && !cpus_log(&fx).contains("0::") {
        assert!(std::time::Instant::now() < deadline, "make never started");
        assert!(
            victim.child.try_wait().unwrap().is_none(),
            "ktstr exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sent_at = std::time::Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &victim.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let run = victim.wait(std::time::Duration::from_secs(60));
    assert_eq!(run.code(), Some(130), "{}", run.describe());
    // A signal to ktstr alone (as a CI runner sends it) must stop make too,
    // not wait out its 30 s.
    assert!(
        sent_at.elapsed() < std::time::Duration::from_secs(20),
        "make was not stopped: ktstr took {:?} after the signal",
        sent_at.elapsed()
    );
    let scratch: Vec<_> = std::fs::read_dir(fx.cache.join("scratch"))
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    if can_sandbox().is_ok() {
        let sandbox = sandbox_of(&cpus_log(&fx));
        assert!(!sandbox.exists(), "{} must be removed", sandbox.display());
    }
}

/// The walkthrough of docs/plugin-authoring.md section 13: a scaffolded
/// reserver passes its own conformance test as generated, and the config
/// file selects it on this host only, where it confines make.
#[test]
fn scaffolded_reserver_passes_its_conformance_test_and_is_selected_per_host() {
    let fx = Fixture::git();
    let dir = common::scaffold(&fx, "team-cpus", "reserver");
    let out = common::cargo_in_scaffold(&dir, &["test", "--quiet", "--lib"]);
    let text = common::output_text(&out);
    assert!(out.status.success(), "the scaffold's tests fail:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the conformance test did not run:\n{text}"
    );
    let out = common::cargo_in_scaffold(&dir, &["build", "--quiet", "--message-format=short"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let libs = fx.root.path().join("libs");
    std::fs::create_dir_all(&libs).unwrap();
    let so = "libktstr_plugin_team_cpus.so";
    let target = common::scaffold_target().join("debug");
    std::fs::copy(target.join(so), libs.join(so)).unwrap();

    // Selected on this host only; any other host keeps llc.
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let config = fx.write_file(
        "config.toml",
        &format!("reserver = \"llc\"\n[hosts.\"{host}\"]\nreserver = \"team-cpus\"\n"),
    );
    let fx = with_cpus_log(fx)
        .with_env("KTSTR_CONFIG", config.to_str().unwrap())
        .with_env("KTSTR_PLUGIN_PATH", libs.to_str().unwrap());
    let run = fx.build(&[]);
    run.image_path();
    let log = cpus_log(&fx);
    let allowed = ktstr_sdk::cpus::allowed_cpus().unwrap();
    let quarter: Vec<usize> = allowed
        .iter()
        .rev()
        .take(allowed.len().div_ceil(4))
        .copied()
        .collect();
    let want = ktstr_sdk::cpus::format_cpulist(&quarter);
    assert!(
        log.contains(&format!("jobs -j{}", quarter.len())),
        "{log}\n{}",
        run.describe()
    );
    if let Err(why) = can_sandbox() {
        ktstr_sdk::testing::skip(why);
        return;
    }
    assert!(
        log.contains(&format!("Cpus_allowed_list:\t{want}\n")),
        "make must run on CPUs {want}:\n{log}\n{}",
        run.describe()
    );
    sandbox_of(&log);
}

// ---- builds sharing a host ------------------------------------------------

/// Two fixtures with one cache (so one CPU lock directory) and trees at
/// different commits (so different keys: no build lock between them), each
/// with its own CPU log, and a gate file their makes wait for.
fn two_trees() -> (Fixture, Fixture, std::path::PathBuf) {
    let a = Fixture::git();
    let mut b = Fixture::git();
    b.cache = a.cache.clone();
    b.dirty_tracked_file();
    common::git(&b.tree, &["commit", "-q", "-am", "b"]);
    let gate = a.root.path().join("gate");
    let gate_s = gate.display().to_string();
    let a = with_cpus_log(a).with_env("KTSTR_FIXTURE_BUILD_GATE", &gate_s);
    let b = with_cpus_log(b).with_env("KTSTR_FIXTURE_BUILD_GATE", &gate_s);
    (a, b, gate)
}

/// The CPU a build's make ran on, from its "reserved 1 CPU (N) ..." note.
fn reserved_cpu(run: &common::Run) -> usize {
    run.stderr
        .lines()
        .find_map(|l| l.split_once("reserved 1 CPU (")?.1.split_once(')'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'reserved 1 CPU (N)' note\n{}", run.describe()))
}

fn make_started(fx: &Fixture) -> bool {
    cpus_log(fx).contains("jobs -j")
}

/// Whether every allowed CPU of this host is in one last-level cache.
fn one_llc_host() -> bool {
    let allowed = ktstr_sdk::cpus::allowed_cpus().unwrap();
    ktstr_sdk::cpus::Topology::read(Path::new("/sys")).is_ok_and(|t| {
        t.llcs
            .iter()
            .filter(|l| !l.cpus.is_disjoint(&allowed))
            .count()
            == 1
    })
}

/// Two `--cpu-cap 1` builds of two trees on this host run side by side:
/// both makes are running at once (each waits on a gate the test opens only
/// when both have started, so serialised builds would never get there), on
/// different CPUs.
#[test]
fn two_one_cpu_builds_run_side_by_side() {
    if ktstr_sdk::cpus::allowed_cpus().unwrap().len() < 2 {
        ktstr_sdk::testing::skip("needs 2 CPUs");
        return;
    }
    let (a, b, gate) = two_trees();
    let mut ra = a.spawn_build(&["--cpu-cap", "1"], &[]);
    let mut rb = b.spawn_build(&["--cpu-cap", "1"], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !(make_started(&a) && make_started(&b)) {
        for r in [&mut ra, &mut rb] {
            assert!(
                r.child.try_wait().unwrap().is_none(),
                "a build ended before the gate opened"
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the builds did not run at once: make started in {}",
            if make_started(&a) {
                "the first only"
            } else if make_started(&b) {
                "the second only"
            } else {
                "neither"
            }
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&gate, b"").unwrap();
    let ra = ra.wait(std::time::Duration::from_secs(120));
    let rb = rb.wait(std::time::Duration::from_secs(120));
    ra.image_path();
    rb.image_path();
    for r in [&ra, &rb] {
        r.assert_stderr_lacks("waiting for");
    }
    assert_ne!(reserved_cpu(&ra), reserved_cpu(&rb), "disjoint CPUs");
    if one_llc_host() {
        let sharing = [&ra, &rb]
            .iter()
            .filter(|r| r.stderr.contains("with other builds"))
            .count();
        assert_eq!(sharing, 1, "{}\n{}", ra.describe(), rb.describe());
    }
    if can_sandbox().is_ok() {
        let cpus = |fx: &Fixture| {
            cpus_log(fx)
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|c| c.trim().to_string())
                .unwrap()
        };
        assert_eq!(cpus(&a), reserved_cpu(&ra).to_string());
        assert_eq!(cpus(&b), reserved_cpu(&rb).to_string());
    }
}

/// A build whose stderr goes to a file, so the test can read its notes
/// while it runs.
struct Watched {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl Watched {
    fn spawn(fx: &Fixture, name: &str) -> Watched {
        let stderr = fx.root.path().join(name);
        let args = fx.build_args(&["--cpu-cap", "1"]);
        let child = fx
            .command(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Watched { child, stderr }
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    fn finish(mut self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while self.child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("build did not finish:\n{}", self.stderr());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}:\n{}", self.stderr());
        self.stderr()
    }
}

/// A test runner takes this host's LLCs exclusively with the flock(1)
/// command docs/reservation.md gives: builds wait (and say for whom) and
/// run, side by side, once it releases them.
#[test]
fn builds_wait_while_a_test_runner_holds_the_llc_with_flock() {
    let Ok(topo) = ktstr_sdk::cpus::Topology::read(Path::new("/sys")) else {
        ktstr_sdk::testing::skip("no CPU topology in /sys");
        return;
    };
    let (a, b, gate) = two_trees();
    let locks = a.root.path().join("cpu-locks");
    let locks_s = locks.display().to_string();
    let a = a.with_env("KTSTR_LOCK_DIR", &locks_s);
    let b = b.with_env("KTSTR_LOCK_DIR", &locks_s);
    std::fs::create_dir_all(&locks).unwrap();
    // flock DIR/llc-<id>.intent flock DIR/llc-<id>.lock ... for every LLC.
    let release = a.root.path().join("release");
    let mut runner = std::process::Command::new("flock");
    let mut first = true;
    for l in &topo.llcs {
        if !first {
            runner.arg("flock");
        }
        first = false;
        runner
            .arg(locks.join(format!("llc-{}.intent", l.id)))
            .arg("flock")
            .arg(locks.join(format!("llc-{}.lock", l.id)));
    }
    let mut runner = runner
        .args(["sh", "-c", "while [ ! -e \"$0\" ]; do sleep 0.05; done"])
        .arg(&release)
        .spawn()
        .expect("flock(1) from util-linux");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !topo
        .llcs
        .iter()
        .all(|l| !ktstr_sdk::lock::holders(&locks.join(format!("llc-{}.lock", l.id))).is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "flock never locked");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let wa = Watched::spawn(&a, "a.err");
    let wb = Watched::spawn(&b, "b.err");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !(wa.stderr().contains("waiting for 1 CPU") && wb.stderr().contains("waiting for 1 CPU"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the builds did not wait for the runner:\n{}\n{}",
            wa.stderr(),
            wb.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !make_started(&a) && !make_started(&b),
        "make ran on an LLC a test runner holds"
    );
    for w in [&wa, &wb] {
        assert!(
            w.stderr().contains(&format!("pid {} (flock", runner.id())),
            "the runner is not named:\n{}",
            w.stderr()
        );
    }
    std::fs::write(&release, b"").unwrap();
    assert!(runner.wait().unwrap().success());
    // Released: both make runs start, at once (the gate opens only then).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !(make_started(&a) && make_started(&b)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the builds did not both start after the release:\n{}\n{}",
            wa.stderr(),
            wb.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(&gate, b"").unwrap();
    wa.finish();
    wb.finish();
}
