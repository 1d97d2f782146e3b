//! Unit tests for the configurer: identity, tree checks, validation, and
//! `configure` end to end against a fake kernel tree whose Makefile
//! implements `defconfig`, `tinyconfig` and `olddefconfig` in sh.

use std::path::Path;
use std::sync::Arc;

use ktstr_sdk::configure::Fragment;
use ktstr_sdk::context::Cancellation;

use ktstr_sdk::testing::{ProgressEvent as Event, RecordingProgress as Recorder, RecordingRunner};

use super::*;

struct Harness {
    cx: StageContext,
    progress: Arc<Recorder>,
    runner: Arc<RecordingRunner>,
}

fn harness() -> Harness {
    let progress = Arc::new(Recorder::default());
    let runner = Arc::new(RecordingRunner::default());
    Harness {
        cx: StageContext {
            progress: progress.clone(),
            runner: runner.clone(),
            cancel: Cancellation::new(),
        },
        progress,
        runner,
    }
}

fn request(profile: &str, fragments: &[(&str, &str)]) -> ConfigureRequest {
    ConfigureRequest {
        profile: profile.to_string(),
        fragments: fragments
            .iter()
            .map(|(name, content)| Fragment {
                name: name.to_string(),
                content: content.to_string(),
            })
            .collect(),
        make_jobs: 3,
        ..ConfigureRequest::default()
    }
}

fn component<'a>(components: &'a [KeyComponent], name: &str) -> Option<&'a str> {
    components
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.value.as_str())
}

/// Fake `olddefconfig`: the last occurrence of each symbol wins (kept in
/// first-seen order); CONFIG_FIXTURE_UNMET and every symbol listed in
/// `./unmet` are dropped (unmet dependencies); every symbol listed in
/// `./forced` ends up `=y` (selected by something else).
const FAKE_OLDDEFCONFIG: &str = r#"#!/bin/sh
set -e
touch unmet forced
awk '
  FILENAME == "unmet" { unmet[$0] = 1; next }
  FILENAME == "forced" { forced[$0] = 1; next }
  {
    sym = ""
    if ($0 ~ /^CONFIG_[A-Za-z0-9_]+=/) sym = substr($0, 1, index($0, "=") - 1)
    else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) sym = $2
    if (sym == "" || sym == "CONFIG_FIXTURE_UNMET" || (sym in unmet)) next
    if (!(sym in val)) order[n++] = sym
    val[sym] = $0
  }
  END {
    for (s in forced) { if (!(s in val)) order[n++] = s; val[s] = s "=y" }
    for (i = 0; i < n; i++) print val[order[i]]
  }
' unmet forced .config > .config.new
mv .config.new .config
"#;

const FAKE_MAKEFILE: &str = "\
.PHONY: defconfig tinyconfig olddefconfig
defconfig:
\t@echo '*** fake defconfig'
\t@printf 'CONFIG_BASE=y\\n# CONFIG_BPF is not set\\nCONFIG_KPROBES=m\\n' > .config
tinyconfig:
\t@printf 'CONFIG_TINYBASE=y\\n' > .config
olddefconfig:
\t@sh ./fake-olddefconfig.sh
\t@echo '# configuration written to .config'
";

fn fake_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Makefile"), FAKE_MAKEFILE).unwrap();
    std::fs::write(dir.path().join("fake-olddefconfig.sh"), FAKE_OLDDEFCONFIG).unwrap();
    dir
}

fn read_config(tree: &Path) -> String {
    std::fs::read_to_string(tree.join(".config")).unwrap()
}

/// A `.config` carrying every line the request asks for.
fn satisfying_config(req: &ConfigureRequest) -> String {
    let plan = Plan::new(req).unwrap();
    format!(
        "#\n# generated\n#\nCONFIG_OTHER=y\n{}",
        fragment::normalized(&plan.all)
    )
}

/// Line number of `needle` in a baked-in fragment.
fn baked_line(profile: &str, needle: &str) -> usize {
    profiles::find(profile)
        .unwrap()
        .fragment
        .lines()
        .position(|l| l == needle)
        .unwrap()
        + 1
}

// ---- registration and profiles -------------------------------------------

#[test]
fn registered_as_builtin_configurer() {
    let plugin = ktstr_sdk::registry::builtins()
        .into_iter()
        .find(|p| p.name == "kconfig")
        .expect("kconfig registered through ktstr_sdk::inventory");
    assert_eq!(plugin.version, env!("CARGO_PKG_VERSION"));
    let Constructor::Configurer(make) = plugin.constructor else {
        panic!("kconfig must be a configurer");
    };
    let configurer = make(&serde_json_null()).unwrap();
    let names: Vec<String> = configurer.profiles().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["default", "tiny"]);
}

fn serde_json_null() -> ktstr_sdk::registry::PluginConfig {
    ktstr_sdk::registry::PluginConfig::Null
}

#[test]
fn profiles_report_base_targets() {
    let profiles = KconfigConfigurer::new().profiles();
    let pairs: Vec<_> = profiles
        .iter()
        .map(|p| (p.name.as_str(), p.base_target.as_str()))
        .collect();
    assert_eq!(pairs, [("default", "defconfig"), ("tiny", "tinyconfig")]);
    assert!(profiles.iter().all(|p| !p.summary.is_empty()));
}

// ---- identity ------------------------------------------------------------

#[test]
fn identity_names_profile_and_hashes_its_fragment() {
    let c = KconfigConfigurer::new();
    let default = c.identity(&request("default", &[])).unwrap();
    let names: Vec<_> = default.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, [COMPONENT_PROFILE, COMPONENT_PROFILE_CONFIG]);
    assert_eq!(component(&default, COMPONENT_PROFILE), Some("default"));
    let pc = component(&default, COMPONENT_PROFILE_CONFIG).unwrap();
    let hash = pc.strip_prefix("defconfig+").expect(pc);
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));

    let tiny = c.identity(&request("tiny", &[])).unwrap();
    let tpc = component(&tiny, COMPONENT_PROFILE_CONFIG).unwrap();
    assert!(tpc.starts_with("tinyconfig+"), "{tpc}");
    assert_ne!(&tpc["tinyconfig+".len()..], hash);
    // Deterministic.
    assert_eq!(default, c.identity(&request("default", &[])).unwrap());
}

/// The tiny profile's arm64 lines (its PL011 serial console) apply when
/// the builder passes `ARCH=arm64`, and only then: an x86_64 tree neither
/// gets them nor has its key changed by them.
#[test]
fn arch_fragment_applies_to_its_arch_only() {
    let c = KconfigConfigurer::new();
    let for_arch = |make_args: &[&str]| {
        let mut req = request("tiny", &[]);
        req.make_args = make_args.iter().map(|a| a.to_string()).collect();
        req
    };
    let pl011 = "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y";
    let plan_lines = |req: &ConfigureRequest| fragment::normalized(&Plan::new(req).unwrap().all);
    let x86 = for_arch(&["ARCH=x86_64"]);
    let arm64 = for_arch(&["ARCH=x86_64", "ARCH=aarch64", "LLVM=1"]);
    assert!(!plan_lines(&x86).contains(pl011));
    assert!(plan_lines(&arm64).contains(pl011), "{}", plan_lines(&arm64));
    // Unknown arches pass through without a fragment; the host's applies
    // when no ARCH= is given (this test host is x86_64 or arm64).
    assert!(!plan_lines(&for_arch(&["ARCH=um"])).contains(pl011));
    let host_is_arm64 = ktstr_sdk::arch::host().name == "arm64";
    assert_eq!(plan_lines(&for_arch(&[])).contains(pl011), host_is_arm64);

    let key = |req: &ConfigureRequest| {
        component(&c.identity(req).unwrap(), COMPONENT_PROFILE_CONFIG).map(str::to_string)
    };
    assert_ne!(key(&x86), key(&arm64));
    assert_eq!(key(&x86), key(&for_arch(&["ARCH=x86"])));
    // The default profile has no arm64 lines.
    let mut default_arm64 = request("default", &[]);
    default_arm64.make_args = vec!["ARCH=arm64".into()];
    let mut default_x86 = request("default", &[]);
    default_x86.make_args = vec!["ARCH=x86_64".into()];
    assert_eq!(key(&default_x86), key(&default_arm64));

    // An arm64 .config without the console is not configured for arm64.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".config"), satisfying_config(&x86)).unwrap();
    assert!(c.is_configured(dir.path(), &x86).unwrap());
    assert!(!c.is_configured(dir.path(), &arm64).unwrap());
}

#[test]
fn identity_extra_kconfig_ignores_formatting_but_not_values() {
    let c = KconfigConfigurer::new();
    let extra = |frags: &[(&str, &str)]| {
        let ids = c.identity(&request("default", frags)).unwrap();
        component(&ids, COMPONENT_EXTRA_KCONFIG).map(str::to_string)
    };
    let base = extra(&[("a.kconfig", "CONFIG_HZ=250\nCONFIG_NUMA=n\n")]).unwrap();
    assert_eq!(base.len(), 64);
    // Comments, blank lines, whitespace, CRLF, `=n` vs `is not set`, line
    // order and the file's name do not matter.
    for same in [
        "# tuning\n\n  CONFIG_HZ=250  \r\n# CONFIG_NUMA is not set\n",
        "CONFIG_NUMA=n\nCONFIG_HZ=250\n",
        "CONFIG_HZ=100\nCONFIG_HZ=250\nCONFIG_NUMA=n\n",
    ] {
        assert_eq!(
            extra(&[("b.kconfig", same)]).as_deref(),
            Some(base.as_str()),
            "{same:?}"
        );
    }
    // Split across two fragments, same result.
    assert_eq!(
        extra(&[("a", "CONFIG_HZ=250\n"), ("b", "CONFIG_NUMA=n\n")]).as_deref(),
        Some(base.as_str())
    );
    // Value changes do.
    for different in [
        "CONFIG_HZ=1000\nCONFIG_NUMA=n\n",
        "CONFIG_HZ=250\nCONFIG_NUMA=y\n",
        "CONFIG_HZ=250\n",
    ] {
        assert_ne!(
            extra(&[("a", different)]).as_deref(),
            Some(base.as_str()),
            "{different:?}"
        );
    }
    // Last fragment wins, so order across fragments matters when they conflict.
    assert_ne!(
        extra(&[("a", "CONFIG_HZ=100\n"), ("b", "CONFIG_HZ=250\n")]),
        extra(&[("b", "CONFIG_HZ=250\n"), ("a", "CONFIG_HZ=100\n")]),
    );
    // No fragment, or one that assigns nothing: no extra component, and the
    // profile components are unchanged by fragments.
    assert_eq!(extra(&[]), None);
    assert_eq!(extra(&[("empty", "# nothing here\n\n")]), None);
    let plain = c.identity(&request("default", &[])).unwrap();
    let with = c
        .identity(&request("default", &[("a", "CONFIG_HZ=250\n")]))
        .unwrap();
    assert_eq!(with[..2], plain[..]);
}

#[test]
fn identity_rejects_bad_input_before_any_build() {
    let c = KconfigConfigurer::new();
    let err = c
        .identity(&request(
            "default",
            &[
                ("ok.kconfig", "CONFIG_A=y\n"),
                ("bad.kconfig", "# x\nCONFIG_HZ = 250\n"),
            ],
        ))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert_eq!(
        err.message,
        "bad.kconfig:2: \"CONFIG_HZ = 250\" is not a kconfig line"
    );
    assert_eq!(err.hint.as_deref(), Some(fragment::LINE_HINT));

    let err = c.identity(&request("foo", &[])).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert_eq!(err.message, "--profile foo: unknown profile");
    assert!(err.hint.unwrap().contains("default"));
}

// ---- is_configured -------------------------------------------------------

#[test]
fn is_configured_requires_every_merged_line() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path();
    let req = request("default", &[]);
    assert!(!c.is_configured(tree, &req).unwrap(), "no .config yet");

    std::fs::write(tree.join(".config"), satisfying_config(&req)).unwrap();
    assert!(c.is_configured(tree, &req).unwrap());

    // One baked-in line changed.
    let edited = satisfying_config(&req).replace("CONFIG_BPF_JIT=y\n", "CONFIG_BPF_JIT=m\n");
    std::fs::write(tree.join(".config"), edited).unwrap();
    assert!(!c.is_configured(tree, &req).unwrap());

    // The tiny profile asks for lines the default one does not.
    std::fs::write(tree.join(".config"), satisfying_config(&req)).unwrap();
    assert!(!c.is_configured(tree, &request("tiny", &[])).unwrap());
}

#[test]
fn is_configured_checks_user_lines_and_not_set_semantics() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path();
    let base = satisfying_config(&request("default", &[]));

    // "not set" is satisfied by an explicit line or by absence.
    let off = request("default", &[("u", "# CONFIG_NUMA is not set\n")]);
    std::fs::write(tree.join(".config"), &base).unwrap();
    assert!(c.is_configured(tree, &off).unwrap());
    std::fs::write(
        tree.join(".config"),
        format!("{base}# CONFIG_NUMA is not set\n"),
    )
    .unwrap();
    assert!(c.is_configured(tree, &off).unwrap());
    std::fs::write(tree.join(".config"), format!("{base}CONFIG_NUMA=y\n")).unwrap();
    assert!(!c.is_configured(tree, &off).unwrap());

    // A value needs its exact line.
    let hz = request("default", &[("u", "CONFIG_HZ=250\n")]);
    std::fs::write(tree.join(".config"), &base).unwrap();
    assert!(!c.is_configured(tree, &hz).unwrap());
    std::fs::write(tree.join(".config"), format!("{base}CONFIG_HZ=250\n")).unwrap();
    assert!(c.is_configured(tree, &hz).unwrap());

    // A user override of a baked-in symbol is what must be present.
    let no_kprobes = request("default", &[("u", "CONFIG_KPROBES=n\n")]);
    assert!(!c.is_configured(tree, &no_kprobes).unwrap());
    let swapped = base.replace("CONFIG_KPROBES=y\n", "# CONFIG_KPROBES is not set\n");
    std::fs::write(tree.join(".config"), swapped).unwrap();
    assert!(c.is_configured(tree, &no_kprobes).unwrap());
}

// ---- validate ------------------------------------------------------------

const ALL_REQUIRED: &str = "CONFIG_BPF=y\nCONFIG_BPF_SYSCALL=y\nCONFIG_BPF_JIT=y\n\
    CONFIG_DEBUG_INFO_BTF=y\nCONFIG_SCHED_CLASS_EXT=y\nCONFIG_KALLSYMS=y\nCONFIG_SMP=y\n";

#[test]
fn validate_accepts_a_config_with_every_required_symbol() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".config"), ALL_REQUIRED).unwrap();
    c.validate(dir.path(), &request("default", &[])).unwrap();
    c.validate(dir.path(), &request("tiny", &[])).unwrap();
}

#[test]
fn validate_lists_each_missing_symbol_with_a_hint() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ALL_REQUIRED
        .replace("CONFIG_BPF_JIT=y\n", "# CONFIG_BPF_JIT is not set\n")
        .replace("CONFIG_SMP=y\n", "")
        .replace("CONFIG_KALLSYMS=y\n", "CONFIG_KALLSYMS=m\n");
    std::fs::write(dir.path().join(".config"), cfg).unwrap();

    let err = c
        .validate(dir.path(), &request("default", &[]))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Validation);
    assert_eq!(
        err.message,
        format!(
            "kernel config is missing 3 required symbol(s) in {}",
            dir.path().join(".config").display()
        )
    );
    assert_eq!(
        err.causes,
        ["CONFIG_BPF_JIT is not set, CONFIG_KALLSYMS=m, CONFIG_SMP is absent"]
    );
    assert_eq!(
        err.to_string(),
        format!(
            "kernel config is missing 3 required symbol(s) in {}: \
             CONFIG_BPF_JIT is not set, CONFIG_KALLSYMS=m, CONFIG_SMP is absent",
            dir.path().join(".config").display()
        )
    );
    let hint = err.hint.unwrap();
    let lines: Vec<&str> = hint.lines().collect();
    assert_eq!(lines.len(), 3, "{hint}");
    let profile = profiles::find("default").unwrap();
    for (line, sym) in lines
        .iter()
        .zip(["CONFIG_BPF_JIT", "CONFIG_KALLSYMS", "CONFIG_SMP"])
    {
        assert_eq!(
            *line,
            format!("{sym}: {}", profile.required(sym).unwrap().hint)
        );
    }
    assert!(!hint.contains("--extra-kconfig"), "{hint}");
}

#[test]
fn validate_names_extra_kconfig_fragments_when_given() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ALL_REQUIRED.replace("CONFIG_DEBUG_INFO_BTF=y\n", "");
    std::fs::write(dir.path().join(".config"), cfg).unwrap();
    let req = request(
        "tiny",
        &[("frags/a.kconfig", "CONFIG_X=y\n"), ("b.kconfig", "")],
    );
    let err = c.validate(dir.path(), &req).unwrap_err();
    assert!(
        err.message.contains("missing 1 required symbol(s)"),
        "{err}"
    );
    let hint = err.hint.unwrap();
    assert!(
        hint.starts_with("CONFIG_DEBUG_INFO_BTF: DEBUG_INFO_BTF needs DEBUG_INFO"),
        "{hint}"
    );
    assert!(hint.contains("pahole"), "{hint}");
    assert!(
        hint.ends_with(
            "check that your --extra-kconfig fragment(s) frags/a.kconfig, b.kconfig \
             do not disable them"
        ),
        "{hint}"
    );
}

#[test]
fn validate_without_config_names_the_path() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    let err = c
        .validate(dir.path(), &request("default", &[]))
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(
        err.message
            .contains(&dir.path().join(".config").display().to_string()),
        "{err}"
    );
    assert!(err.hint.is_some());
}

// ---- configure -----------------------------------------------------------

/// The builder's make arguments reach every configure-time make, in the
/// controlled environment; an out-of-tree request runs in the source with
/// `O=` the build directory.
#[test]
fn configure_passes_builder_args_and_builds_out_of_tree() {
    let c = KconfigConfigurer::new();
    let src = fake_tree();
    let out = tempfile::tempdir().unwrap();
    let h = harness();
    let mut req = request("tiny", &[]);
    req.make_args = vec!["ARCH=arm64".into(), "LLVM=1".into()];
    req.source_dir = Some(src.path().to_path_buf());
    let _ = c.configure(out.path(), &req, &h.cx);
    let specs = h.runner.specs();
    assert!(!specs.is_empty());
    let o = format!("O={}", out.path().display());
    for spec in &specs {
        assert_eq!(spec.cwd.as_deref(), Some(src.path()));
        assert_eq!(spec.args[2..4], ["ARCH=arm64", "LLVM=1"]);
        assert_eq!(spec.args[4], o);
        assert!(spec.env_clear);
        assert!(
            spec.env
                .iter()
                .all(|(k, _)| ktstr_sdk::make_env::is_allowed(k))
        );
    }
}

#[test]
fn configure_fresh_tree_merges_warns_and_reports_drops() {
    let c = KconfigConfigurer::new();
    let dir = fake_tree();
    let tree = dir.path();
    let h = harness();
    let user = "# my additions\n\
                CONFIG_BPF=n\n\
                CONFIG_FIXTURE_UNMET=y\n\
                CONFIG_USER=m\n\
                # CONFIG_KPROBES is not set\n\
                CONFIG_SMP=y\n";
    let req = request("default", &[("extra.kconfig", user)]);
    c.configure(tree, &req, &h.cx).unwrap();

    // make defconfig (no .config yet), then olddefconfig, both in the tree
    // with -j, LOCALVERSION= and no sandbox.
    let specs = h.runner.specs();
    assert_eq!(h.runner.last_args(), ["defconfig", "olddefconfig"]);
    for spec in &specs {
        assert_eq!(spec.program, "make");
        assert_eq!(spec.cwd.as_deref(), Some(tree));
        assert_eq!(spec.args[..2], ["-j3", "LOCALVERSION="]);
        assert_eq!(spec.cgroup_procs, None);
    }

    assert_eq!(
        h.progress.warnings(),
        [
            "extra.kconfig:2: CONFIG_BPF=n overrides the default profile's CONFIG_BPF=y",
            "extra.kconfig:5: CONFIG_KPROBES=n overrides the default profile's CONFIG_KPROBES=y",
            "extra.kconfig:3: CONFIG_FIXTURE_UNMET=y was dropped by olddefconfig \
             (final: CONFIG_FIXTURE_UNMET is absent); check its dependencies",
        ]
    );
    assert!(h.progress.notes().is_empty(), "{:?}", h.progress.notes());

    // One progress step wrapping make's streamed output.
    let events = h.progress.events();
    assert_eq!(
        events.first(),
        Some(&Event::Step("configuring (default)".into()))
    );
    assert_eq!(events.last(), Some(&Event::Finish));
    assert!(events.contains(&Event::Line("*** fake defconfig".into())));
    assert!(events.contains(&Event::Line("# configuration written to .config".into())));

    // The final .config: base + profile + user, user winning.
    let config = read_config(tree);
    let lines: Vec<&str> = config.lines().collect();
    for want in [
        "CONFIG_BASE=y",
        "# CONFIG_BPF is not set",
        "# CONFIG_KPROBES is not set",
        "CONFIG_USER=m",
        "CONFIG_SCHED_CLASS_EXT=y",
        "CONFIG_DEBUG_INFO_BTF=y",
        "CONFIG_VIRTIO_CONSOLE=y",
    ] {
        assert!(lines.contains(&want), "{want} missing from:\n{config}");
    }
    assert!(!config.contains("CONFIG_FIXTURE_UNMET"));
    assert!(!lines.contains(&"CONFIG_BPF=y"));

    // The dropped line means the request is not fully satisfied, and the
    // user's CONFIG_BPF=n fails validation, naming the fragment.
    assert!(!c.is_configured(tree, &req).unwrap());
    let err = c.validate(tree, &req).unwrap_err();
    assert_eq!(err.causes, ["CONFIG_BPF is not set"]);
    assert!(
        err.hint
            .unwrap()
            .contains("--extra-kconfig fragment(s) extra.kconfig"),
    );
}

#[test]
fn configure_builds_on_an_existing_config() {
    let c = KconfigConfigurer::new();
    let dir = fake_tree();
    let tree = dir.path();
    // The user's own .config, without a trailing newline.
    std::fs::write(tree.join(".config"), "CONFIG_MINE=y\nCONFIG_NO_NEWLINE=y").unwrap();
    let h = harness();
    let req = request("default", &[]);
    c.configure(tree, &req, &h.cx).unwrap();

    assert_eq!(
        h.runner.last_args(),
        ["olddefconfig"],
        "no defconfig over the user's .config"
    );
    let config = read_config(tree);
    let lines: Vec<&str> = config.lines().collect();
    assert!(lines.contains(&"CONFIG_MINE=y"), "{config}");
    assert!(lines.contains(&"CONFIG_NO_NEWLINE=y"), "{config}");
    assert!(lines.contains(&"CONFIG_SCHED_CLASS_EXT=y"), "{config}");
    assert!(
        h.progress.warnings().is_empty(),
        "{:?}",
        h.progress.warnings()
    );
    assert!(h.progress.notes().is_empty());
    assert!(c.is_configured(tree, &req).unwrap());
    c.validate(tree, &req).unwrap();
    // Nothing but .config was written.
    assert_eq!(
        std::fs::read_to_string(tree.join("Makefile")).unwrap(),
        FAKE_MAKEFILE
    );
}

#[test]
fn configure_with_reset_starts_from_the_base_target() {
    let c = KconfigConfigurer::new();
    let dir = fake_tree();
    let tree = dir.path();
    std::fs::write(
        tree.join(".config"),
        "CONFIG_LEFTOVER_FROM_OTHER_PROFILE=y\n",
    )
    .unwrap();
    let h = harness();
    let mut req = request("tiny", &[]);
    req.reset = true;
    c.configure(tree, &req, &h.cx).unwrap();
    assert_eq!(h.runner.last_args(), ["tinyconfig", "olddefconfig"]);
    let config = read_config(tree);
    assert!(
        !config.contains("CONFIG_LEFTOVER_FROM_OTHER_PROFILE"),
        "reset must not build on the old .config: {config}"
    );
    assert!(c.is_configured(tree, &req).unwrap());
}

#[test]
fn configure_tiny_uses_tinyconfig_and_the_sandbox() {
    let c = KconfigConfigurer::new();
    let dir = fake_tree();
    let tree = dir.path();
    // A regular file stands in for cgroup.procs: the runner writes "0" to it.
    let procs = tree.join("fake-cgroup.procs");
    std::fs::write(&procs, "").unwrap();
    let h = harness();
    let mut req = request("tiny", &[]);
    req.sandbox_procs = Some(procs.clone());
    req.make_jobs = 0;
    c.configure(tree, &req, &h.cx).unwrap();

    assert_eq!(h.runner.last_args(), ["tinyconfig", "olddefconfig"]);
    for spec in h.runner.specs() {
        assert_eq!(spec.cgroup_procs.as_deref(), Some(procs.as_path()));
        assert_eq!(spec.args[0], "-j1", "make_jobs 0 is clamped to 1");
    }
    assert_eq!(
        h.progress.events().first(),
        Some(&Event::Step("configuring (tiny)".into()))
    );
    let config = read_config(tree);
    assert!(config.lines().any(|l| l == "CONFIG_TINYBASE=y"));
    assert!(!config.contains("CONFIG_BASE=y"));
    assert!(config.lines().any(|l| l == "CONFIG_BINFMT_ELF=y"));
    assert!(c.is_configured(tree, &req).unwrap());
    assert!(!c.is_configured(tree, &request("default", &[])).unwrap());
}

#[test]
fn configure_reports_dropped_baked_in_lines_softly() {
    let c = KconfigConfigurer::new();
    let sched_line = baked_line("default", "CONFIG_SCHED_CLASS_EXT=y");
    let ikconfig_line = baked_line("default", "CONFIG_IKCONFIG_PROC=y");
    let hint = profiles::find("default")
        .unwrap()
        .required("CONFIG_SCHED_CLASS_EXT")
        .unwrap()
        .hint;
    let sched_head = format!(
        "default profile:{sched_line}: CONFIG_SCHED_CLASS_EXT=y was dropped by olddefconfig \
         (final: CONFIG_SCHED_CLASS_EXT is absent); ktstr requires it, so the build will \
         fail validation: {hint}"
    );
    let ikconfig_head = format!(
        "default profile:{ikconfig_line}: CONFIG_IKCONFIG_PROC=y was dropped by olddefconfig \
         (final: CONFIG_IKCONFIG_PROC is absent)"
    );

    // A required baked-in symbol dropped is a warning; any other is a note.
    // With user fragments given, both point at them as a possible cause.
    for (fragments, warn_tail, note_tail) in [
        (
            vec![],
            String::new(),
            "; this tree or architecture may not support it".to_string(),
        ),
        (
            vec![("u.kconfig", "CONFIG_HZ=250\n")],
            "; check that your --extra-kconfig fragment(s) u.kconfig do not disable its \
             dependencies"
                .to_string(),
            "; this tree may not support it, or your --extra-kconfig fragment(s) u.kconfig \
             disable its dependencies"
                .to_string(),
        ),
    ] {
        let dir = fake_tree();
        let tree = dir.path();
        std::fs::write(
            tree.join("unmet"),
            "CONFIG_SCHED_CLASS_EXT\nCONFIG_IKCONFIG_PROC\n",
        )
        .unwrap();
        let h = harness();
        let req = request("default", &fragments);
        c.configure(tree, &req, &h.cx).unwrap();
        assert_eq!(h.progress.warnings(), [format!("{sched_head}{warn_tail}")]);
        assert_eq!(h.progress.notes(), [format!("{ikconfig_head}{note_tail}")]);
        let err = c.validate(tree, &req).unwrap_err();
        assert_eq!(err.causes, ["CONFIG_SCHED_CLASS_EXT is absent"]);
    }
}

#[test]
fn configure_reports_a_not_set_request_that_something_selects() {
    let c = KconfigConfigurer::new();
    let dir = fake_tree();
    let tree = dir.path();
    std::fs::write(tree.join("forced"), "CONFIG_CRC32\n").unwrap();
    let h = harness();
    let req = request("tiny", &[("off.kconfig", "\n# CONFIG_CRC32 is not set\n")]);
    c.configure(tree, &req, &h.cx).unwrap();
    assert_eq!(
        h.progress.warnings(),
        [
            "off.kconfig:2: CONFIG_CRC32=n was dropped by olddefconfig (final: CONFIG_CRC32=y); \
          another enabled option selects it"
        ]
    );
}

#[test]
fn configure_make_failure_names_target_tree_and_output_tail() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path();
    std::fs::write(
        tree.join("Makefile"),
        "olddefconfig:\n\t@i=1; while [ $$i -le 30 ]; do echo \"out $$i\"; i=$$((i+1)); done; exit 2\n",
    )
    .unwrap();
    std::fs::write(tree.join(".config"), "CONFIG_A=y\n").unwrap();
    let h = harness();
    let err = c
        .configure(tree, &request("default", &[]), &h.cx)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Command);
    assert_eq!(
        err.message,
        format!("make olddefconfig failed in {} (exit 2)", tree.display())
    );
    assert_eq!(err.causes.len(), 1);
    let tail: Vec<&str> = err.causes[0].lines().collect();
    assert_eq!(tail[0], "last lines of output:");
    assert_eq!(tail.len(), 1 + ERROR_TAIL_LINES);
    assert!(tail.contains(&"out 30"), "{tail:?}");
    assert!(!tail.contains(&"out 5"), "{tail:?}");
    let hint = err.hint.unwrap();
    assert!(
        hint.contains(&format!(
            "reproduce with `cd {} && make -j3 LOCALVERSION= olddefconfig`",
            tree.display()
        )),
        "{hint}"
    );
    // The progress step is closed even on failure.
    assert_eq!(h.progress.events().last(), Some(&Event::Finish));
}

#[test]
fn configure_base_target_failure_is_a_command_error() {
    let c = KconfigConfigurer::new();
    let dir = tempfile::tempdir().unwrap();
    // Not a kernel tree: no Makefile at all.
    let h = harness();
    let err = c
        .configure(dir.path(), &request("tiny", &[]), &h.cx)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Command);
    assert!(
        err.message.starts_with(&format!(
            "make tinyconfig failed in {}",
            dir.path().display()
        )),
        "{err}"
    );
    assert!(err.hint.unwrap().contains("kernel source tree"));
    assert!(!dir.path().join(".config").exists());
}

#[test]
fn configure_rejects_bad_fragments_and_cancellation_before_running_make() {
    let c = KconfigConfigurer::new();
    let dir = fake_tree();
    let tree = dir.path();

    let h = harness();
    let err = c
        .configure(
            tree,
            &request("default", &[("bad", "CONFIG_A=yes\n")]),
            &h.cx,
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidInput);
    assert_eq!(err.message, "bad:1: \"CONFIG_A=yes\" is not a kconfig line");
    assert!(h.runner.specs().is_empty());
    assert!(h.progress.events().is_empty());

    let h = harness();
    h.cx.cancel.cancel();
    let err = c
        .configure(tree, &request("default", &[]), &h.cx)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert!(h.runner.specs().is_empty());
    assert!(!tree.join(".config").exists());
}

/// Configures a real kernel tree (Debian's linux-source-6.12, extracted into
/// a temp dir, or `KTSTR_KCONFIG_REAL_TREE` whose `.config` is replaced) with
/// each profile and checks every baked-in line survives olddefconfig.
#[test]
fn real_tree_profiles_survive_olddefconfig() {
    const TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
    let scratch = tempfile::tempdir().unwrap();
    let tree = match std::env::var_os("KTSTR_KCONFIG_REAL_TREE").filter(|v| !v.is_empty()) {
        Some(t) => std::path::PathBuf::from(t),
        None if Path::new(TARBALL).is_file() => {
            let ok = std::process::Command::new("tar")
                .args(["-xJf", TARBALL, "-C"])
                .arg(scratch.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "extracting {TARBALL} failed");
            scratch.path().join("linux-source-6.12")
        }
        None => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipping real-tree kconfig test: {TARBALL} missing (apt-get install \
                 linux-source-6.12 flex bison bc dwarves) and KTSTR_KCONFIG_REAL_TREE unset"
            );
            return;
        }
    };
    let tree = tree.as_path();
    let c = KconfigConfigurer::new();
    for profile in ["default", "tiny"] {
        let _ = std::fs::remove_file(tree.join(".config"));
        let h = harness();
        let mut req = request(profile, &[]);
        req.make_jobs = 2;
        c.configure(tree, &req, &h.cx).unwrap();
        assert!(
            h.progress.warnings().is_empty(),
            "{profile}: {:?}",
            h.progress.warnings()
        );
        assert!(
            h.progress.notes().is_empty(),
            "{profile}: {:?}",
            h.progress.notes()
        );
        assert!(c.is_configured(tree, &req).unwrap(), "{profile}");
        c.validate(tree, &req).unwrap();
        eprintln!("{profile}: every baked-in line survived olddefconfig");
    }

    // The tiny profile's arm64 lines (PL011 console) survive an arm64
    // olddefconfig too; configuring needs the cross compiler kbuild probes.
    let cross = "aarch64-linux-gnu-";
    if std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(format!("{cross}gcc")).is_file()))
    {
        let _ = std::fs::remove_file(tree.join(".config"));
        let h = harness();
        let mut req = request("tiny", &[]);
        req.make_jobs = 2;
        req.make_args = vec!["ARCH=arm64".into(), format!("CROSS_COMPILE={cross}")];
        c.configure(tree, &req, &h.cx).unwrap();
        assert!(
            h.progress.warnings().is_empty(),
            "{:?}",
            h.progress.warnings()
        );
        assert!(h.progress.notes().is_empty(), "{:?}", h.progress.notes());
        assert!(c.is_configured(tree, &req).unwrap());
        c.validate(tree, &req).unwrap();
        assert!(read_config(tree).contains("\nCONFIG_SERIAL_AMBA_PL011_CONSOLE=y\n"));
        eprintln!("tiny (arm64): every baked-in line survived olddefconfig");
    } else {
        eprintln!(
            "skipping the arm64 part of the real-tree kconfig test: {cross}gcc missing \
             (apt-get install gcc-aarch64-linux-gnu)"
        );
    }

    // A user fragment that breaks sched_ext's dependency chain and asks for
    // an option whose dependency is off: real olddefconfig drops both.
    let _ = std::fs::remove_file(tree.join(".config"));
    let h = harness();
    let mut req = request(
        "default",
        &[(
            "break.kconfig",
            "# CONFIG_BPF_SYSCALL is not set\nCONFIG_KASAN_VMALLOC=y\n",
        )],
    );
    req.make_jobs = 2;
    c.configure(tree, &req, &h.cx).unwrap();
    let warnings = h.progress.warnings();
    eprintln!("warnings: {warnings:#?}\nnotes: {:#?}", h.progress.notes());
    assert!(warnings.contains(
        &"break.kconfig:1: CONFIG_BPF_SYSCALL=n overrides the default profile's CONFIG_BPF_SYSCALL=y"
            .to_string()
    ));
    assert!(warnings.iter().any(|w| w.starts_with(
        "break.kconfig:2: CONFIG_KASAN_VMALLOC=y was dropped by olddefconfig (final: "
    )));
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("CONFIG_SCHED_CLASS_EXT=y was dropped"))
    );
    let err = c.validate(tree, &req).unwrap_err();
    eprintln!(
        "validate: {err}\nhint: {}",
        err.hint.as_deref().unwrap_or("")
    );
    assert_eq!(
        err.causes,
        [
            "CONFIG_BPF_SYSCALL is not set, CONFIG_DEBUG_INFO_BTF is absent, \
          CONFIG_SCHED_CLASS_EXT is absent"
        ]
    );
    let _ = std::fs::remove_file(tree.join(".config"));
}
