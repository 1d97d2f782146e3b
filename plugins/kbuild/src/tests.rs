use std::sync::{Arc, Mutex};

use ktstr_sdk::ErrorKind;
use ktstr_sdk::context::{CapturedOutput, CommandOutcome, CommandRunner, CommandSpec};
use ktstr_sdk::registry::StageKind;
use ktstr_sdk::runner::SystemRunner;

use ktstr_sdk::testing::{ProgressEvent as Event, RecordingProgress};

use super::*;

/// Records every spec; `run` emits `lines` and ends with `code`; `capture`
/// answers `<program> --version` from `versions`.
struct FakeRunner {
    specs: Mutex<Vec<CommandSpec>>,
    code: Option<i32>,
    lines: Vec<String>,
    versions: Vec<(String, String)>,
}

impl FakeRunner {
    fn new(code: Option<i32>) -> Self {
        Self {
            specs: Mutex::new(Vec::new()),
            code,
            lines: Vec::new(),
            versions: Vec::new(),
        }
    }
    fn specs(&self) -> Vec<CommandSpec> {
        self.specs.lock().unwrap().clone()
    }
}

impl CommandRunner for FakeRunner {
    fn run(&self, spec: &CommandSpec, on_line: &mut dyn FnMut(&str)) -> Result<CommandOutcome> {
        self.specs.lock().unwrap().push(spec.clone());
        for l in &self.lines {
            on_line(l);
        }
        Ok(CommandOutcome {
            code: self.code,
            tail: self
                .lines
                .iter()
                .map(|text| ktstr_sdk::context::OutputLine {
                    text: text.clone(),
                    stderr: false,
                })
                .collect(),
        })
    }

    fn capture(&self, spec: &CommandSpec) -> Result<CapturedOutput> {
        self.specs.lock().unwrap().push(spec.clone());
        let display = spec.display();
        let answer = self
            .versions
            .iter()
            .find(|(p, _)| *p == display)
            .or_else(|| self.versions.iter().find(|(p, _)| *p == spec.program));
        match answer {
            Some((_, out)) => Ok(CapturedOutput {
                code: Some(0),
                stdout: out.clone(),
                stderr: String::new(),
            }),
            None => Err(StageError::command(format!(
                "cannot run `{}`",
                spec.display()
            ))),
        }
    }
}

fn context(runner: Arc<dyn CommandRunner>) -> (StageContext, Arc<RecordingProgress>) {
    ktstr_sdk::testing::context_with(runner)
}

fn real_context() -> (StageContext, Arc<RecordingProgress>) {
    context(Arc::new(SystemRunner))
}

fn builder() -> KbuildBuilder {
    // Hermetic: never pick up the developer's $CC/$LD, remember nothing.
    KbuildBuilder::with_inputs(Vec::new())
}

fn request(tree: &Path, jobs: usize, compile_commands: bool) -> BuildRequest {
    BuildRequest {
        tree: tree.to_path_buf(),
        make_jobs: jobs,
        sandbox_procs: None,
        compile_commands,
        ..Default::default()
    }
}

/// A tree whose Makefile's default target runs `all_recipe` (one shell line
/// per element) after logging make's command-line variables to args.log.
fn fake_tree(all_recipe: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let image = arch::host().image_path;
    let log = "echo \"$(filter-out --jobserver%,$(MAKEFLAGS)) KCFLAGS=$(KCFLAGS) \
               LOCALVERSION=[$(LOCALVERSION)] CC=[$(origin CC)]\" >> args.log";
    let mut mk = format!(
        "IMAGE := {image}\n.PHONY: all mrproper\nall:\n\t@echo all >> targets.log\n\t@{log}\n"
    );
    for line in all_recipe {
        mk.push_str(&format!("\t{line}\n"));
    }
    mk.push_str(&format!(
        "compile_commands.json:\n\t@echo compile_commands.json >> targets.log\n\t@{log}\n\
         \t@echo '[]' > compile_commands.json\n\
         mrproper:\n\t@echo mrproper >> targets.log\n\t@echo '  CLEAN   scripts'\n\
         \t@rm -f vmlinux $(IMAGE) compile_commands.json\n"
    ));
    std::fs::write(dir.path().join("Makefile"), mk).unwrap();
    dir
}

/// The recipe of a tree that builds like a kernel.
const GOOD_BUILD: &[&str] = &[
    "@echo '  CC      kernel/fork.o'",
    "@echo '  LD      vmlinux'",
    "@mkdir -p $(dir $(IMAGE))",
    "@echo image > $(IMAGE)",
    "@echo elf > vmlinux",
    "@echo 'Kernel: $(IMAGE) is ready'",
];

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn inputs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn make_args_are_jobs_then_fixed() {
    let setup = Setup::new(&Variant::default(), &[]).unwrap();
    assert_eq!(
        setup.args_for(8, None),
        ["-j8", "KCFLAGS=-Wno-error", "LOCALVERSION="]
    );
    assert_eq!(
        setup.args_for(0, None)[0],
        "-j1",
        "-j0 would mean unlimited"
    );
    let setup = Setup::new(
        &Variant::default(),
        &inputs(&[("CC", "ccache gcc"), ("LD", "ld.bfd"), ("KCFLAGS", "-O3")]),
    )
    .unwrap();
    assert_eq!(
        setup.args_for(2, Some(Path::new("/out"))),
        [
            "-j2",
            "KCFLAGS=-Wno-error -O3",
            "LOCALVERSION=",
            "CC=ccache gcc",
            "LD=ld.bfd",
            "O=/out"
        ]
    );
    assert_eq!(
        (setup.cc.as_str(), setup.ld.as_str()),
        ("ccache gcc", "ld.bfd")
    );
}

#[test]
fn variants_choose_arch_cross_prefix_and_llvm() {
    let foreign = if arch::host().name == "arm64" {
        "x86_64"
    } else {
        "arm64"
    };
    let setup = Setup::new(
        &Variant {
            arch: Some(foreign.into()),
            toolchain: Some("gcc-12".into()),
            cross_compile: Some("my-prefix-".into()),
        },
        &[],
    )
    .unwrap();
    assert_eq!(setup.arch.name, foreign);
    assert_eq!(
        setup.make_args[2..],
        [
            format!("ARCH={foreign}"),
            "CROSS_COMPILE=my-prefix-".into(),
            "CC=my-prefix-gcc-12".into(),
            "HOSTCC=gcc-12".into()
        ]
    );
    assert_eq!(setup.cc, "my-prefix-gcc-12");
    assert_eq!(setup.assembler.as_deref(), Some("my-prefix-as"));

    // LLVM needs no cross prefix; the arch alone picks clang's target.
    let llvm = Setup::new(
        &Variant {
            arch: Some(foreign.into()),
            toolchain: Some("llvm-16".into()),
            cross_compile: None,
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        llvm.make_args[2..],
        [format!("ARCH={foreign}"), "LLVM=-16".into()]
    );
    assert_eq!(
        (llvm.cc.as_str(), llvm.ld.as_str()),
        ("clang-16", "ld.lld-16")
    );
    assert_eq!(llvm.assembler, None);

    // The environment's CC wins over the family's, as make would have it.
    let cc = Setup::new(
        &Variant {
            toolchain: Some("clang".into()),
            ..Variant::default()
        },
        &inputs(&[("CC", "ccache clang")]),
    )
    .unwrap();
    assert_eq!(cc.make_args[2..], ["LLVM=1", "CC=ccache clang"]);
    assert_eq!(cc.cc, "ccache clang");

    let err = Setup::new(
        &Variant {
            arch: Some("vax".into()),
            ..Variant::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(err.message.contains("--arch vax"), "{err}");
}

#[test]
fn out_of_tree_build_finds_the_image_in_the_output_dir() {
    let tree = fake_tree(&[
        "@mkdir -p $(O)/$(dir $(IMAGE))",
        "@echo image > $(O)/$(IMAGE)",
        "@echo elf > $(O)/vmlinux",
    ]);
    let out = tempfile::tempdir().unwrap();
    let (cx, _) = real_context();
    let mut req = request(tree.path(), 1, false);
    req.output = Some(out.path().join("build"));
    let built = builder().build(&req, &cx).unwrap();
    assert_eq!(
        built.image,
        out.path().join("build").join(arch::host().image_path)
    );
    assert_eq!(built.vmlinux, Some(out.path().join("build/vmlinux")));
    assert!(
        read(tree.path(), "args.log")
            .contains(&format!("O={}", out.path().join("build").display()))
    );
}

#[test]
fn make_gets_a_controlled_environment() {
    let runner = Arc::new(FakeRunner::new(Some(0)));
    let (cx, _) = context(runner.clone());
    let tree = fake_tree(GOOD_BUILD);
    let _ = builder().build(&request(tree.path(), 1, false), &cx);
    let spec = &runner.specs()[0];
    assert!(spec.env_clear, "{spec:?}");
    assert!(
        spec.env.iter().all(|(k, _)| make_env::is_allowed(k)),
        "{spec:?}"
    );
}

#[test]
fn build_succeeds_and_both_makes_get_identical_args() {
    let tree = fake_tree(GOOD_BUILD);
    let (cx, progress) = real_context();
    let out = builder()
        .build(&request(tree.path(), 3, true), &cx)
        .unwrap();

    assert_eq!(out.image, tree.path().join(arch::host().image_path));
    assert_eq!(out.vmlinux, Some(tree.path().join("vmlinux")));
    assert!(tree.path().join("compile_commands.json").is_file());
    assert_eq!(
        read(tree.path(), "targets.log"),
        "all\ncompile_commands.json\n"
    );

    let log = read(tree.path(), "args.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert_eq!(lines[0], lines[1], "build and compile_commands.json differ");
    assert!(lines[0].contains("-j3"), "{log}");
    assert!(lines[0].contains("KCFLAGS=-Wno-error"), "{log}");
    assert!(lines[0].contains("LOCALVERSION=[]"), "{log}");
    // No $CC override: kbuild's own default stays in charge.
    assert!(lines[0].contains("CC=[default]"), "{log}");

    let streamed = progress.lines();
    assert!(streamed.iter().any(|l| l == "  CC      kernel/fork.o"));
    assert!(streamed.iter().any(|l| l.starts_with("Kernel: ")));
    assert_eq!(
        progress.steps(),
        ["building (make -j3)", "generating compile_commands.json"]
    );
    let finishes = progress
        .events()
        .iter()
        .filter(|e| **e == Event::Finish)
        .count();
    assert_eq!(finishes, 2);
    assert!(progress.warnings().is_empty(), "{:?}", progress.warnings());
}

#[test]
fn toolchain_override_reaches_make() {
    let tree = fake_tree(GOOD_BUILD);
    let (cx, _) = real_context();
    let b = KbuildBuilder::with_inputs(inputs(&[("CC", "gcc")]));
    b.build(&request(tree.path(), 1, false), &cx).unwrap();
    let log = read(tree.path(), "args.log");
    assert!(log.contains("CC=[command line]"), "{log}");
}

#[test]
fn no_compile_commands_runs_make_once() {
    let tree = fake_tree(GOOD_BUILD);
    let (cx, progress) = real_context();
    builder()
        .build(&request(tree.path(), 2, false), &cx)
        .unwrap();
    assert_eq!(read(tree.path(), "targets.log"), "all\n");
    assert!(!tree.path().join("compile_commands.json").exists());
    assert_eq!(progress.steps(), ["building (make -j2)"]);
}

#[test]
fn failing_build_reports_exit_code_and_tail() {
    let tree = fake_tree(&[
        "@i=0; while [ $$i -lt 100 ]; do echo \"  CC      filler$$i.o\"; i=$$((i+1)); done",
        "@echo \"fs/fake.c:12:3: error: expected ';' before '}' token\" >&2",
        "@exit 3",
    ]);
    let (cx, progress) = real_context();
    let err = builder()
        .build(&request(tree.path(), 2, true), &cx)
        .unwrap_err();

    assert_eq!(err.kind, ErrorKind::Command);
    assert_eq!(
        err.message,
        format!("make failed in {} (exit 2)", tree.path().display())
    );
    assert_eq!(err.causes.len(), 1, "{:?}", err.causes);
    let tail = &err.causes[0];
    assert!(tail.starts_with("last lines of output:\n"), "{tail}");
    assert!(
        tail.contains("fs/fake.c:12:3: error: expected ';'"),
        "{tail}"
    );
    assert!(tail.contains("Error 3"), "make's own report: {tail}");
    assert!(!tail.contains("filler0.o"), "tail must be trimmed: {tail}");
    assert!(tail.lines().count() <= ERROR_TAIL_LINES + 1, "{tail}");
    let hint = err.hint.clone().unwrap();
    assert!(hint.contains("fix the error"), "{hint}");
    assert!(
        hint.contains("make -j2 KCFLAGS=-Wno-error LOCALVERSION="),
        "{hint}"
    );
    // The whole output was still streamed, and compile_commands.json never ran.
    assert_eq!(
        progress
            .lines()
            .iter()
            .filter(|l| l.contains("filler"))
            .count(),
        100
    );
    assert_eq!(read(tree.path(), "targets.log"), "all\n");
    assert!(err.to_string().contains("error: expected ';'"));
}

#[test]
fn failing_compile_commands_is_an_error() {
    let tree = fake_tree(GOOD_BUILD);
    let mk = tree.path().join("Makefile");
    let text = std::fs::read_to_string(&mk).unwrap().replace(
        "\t@echo '[]' > compile_commands.json\n",
        "\t@echo 'no python3' >&2; exit 1\n",
    );
    std::fs::write(&mk, text).unwrap();
    let (cx, _) = real_context();
    let err = builder()
        .build(&request(tree.path(), 1, true), &cx)
        .unwrap_err();
    assert!(
        err.message
            .starts_with("make compile_commands.json failed in"),
        "{err}"
    );
    assert!(err.causes[0].contains("no python3"), "{err}");
    assert!(err.hint.unwrap().contains("python3"));
}

#[test]
fn signal_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Arc::new(FakeRunner {
        lines: vec!["  CC      a.o".into()],
        ..FakeRunner::new(None)
    });
    let (cx, _) = context(runner);
    let err = builder()
        .build(&request(dir.path(), 1, false), &cx)
        .unwrap_err();
    assert!(err.message.ends_with("(killed by a signal)"), "{err}");
    assert_eq!(err.causes, ["last lines of output:\n  CC      a.o"]);
}

#[test]
fn build_without_image_is_a_clear_error() {
    let tree = fake_tree(&["@echo elf > vmlinux"]);
    let (cx, _) = real_context();
    let err = builder()
        .build(&request(tree.path(), 1, false), &cx)
        .unwrap_err();
    let image = arch::host().image_path;
    assert_eq!(
        err.message,
        format!(
            "make succeeded but produced no {image} in {}",
            tree.path().display()
        )
    );
    assert!(err.hint.unwrap().contains(arch::host().image_name));
}

#[test]
fn missing_vmlinux_warns_but_succeeds() {
    let tree = fake_tree(&["@mkdir -p $(dir $(IMAGE))", "@echo image > $(IMAGE)"]);
    let (cx, progress) = real_context();
    let out = builder()
        .build(&request(tree.path(), 1, false), &cx)
        .unwrap();
    assert_eq!(out.vmlinux, None);
    assert_eq!(
        progress.warnings(),
        ["vmlinux not found; BTF will not be cached"]
    );
}

#[test]
fn chatty_build_on_both_pipes_does_not_deadlock() {
    // ~1.4 MB on each pipe: far beyond any pipe buffer.
    let mut recipe = vec![
        "@yes 'stdout chatter line 0123456789' | head -n 40000",
        "@yes 'stderr chatter line 0123456789' | head -n 40000 >&2",
    ];
    recipe.extend_from_slice(GOOD_BUILD);
    let tree = fake_tree(&recipe);
    let (cx, progress) = real_context();
    let out = builder()
        .build(&request(tree.path(), 2, false), &cx)
        .unwrap();
    assert!(out.image.is_file());
    let lines = progress.lines();
    let count = |needle: &str| lines.iter().filter(|l| l.starts_with(needle)).count();
    assert_eq!(count("stdout chatter"), 40000);
    assert_eq!(count("stderr chatter"), 40000);
}

#[test]
fn clean_runs_mrproper() {
    let tree = fake_tree(GOOD_BUILD);
    let (cx, _) = real_context();
    let b = builder();
    b.build(&request(tree.path(), 1, false), &cx).unwrap();
    assert!(tree.path().join("vmlinux").exists());

    let (cx, progress) = real_context();
    b.clean(tree.path(), &cx).unwrap();
    assert_eq!(read(tree.path(), "targets.log"), "all\nmrproper\n");
    assert!(!tree.path().join("vmlinux").exists());
    assert_eq!(progress.steps(), ["make mrproper"]);
    assert_eq!(progress.lines(), ["  CLEAN   scripts"]);
}

#[test]
fn failing_clean_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Makefile"),
        "mrproper:\n\t@echo 'rm: cannot remove x: Permission denied'; exit 1\n",
    )
    .unwrap();
    let (cx, _) = real_context();
    let err = builder().clean(dir.path(), &cx).unwrap_err();
    assert_eq!(
        err.message,
        format!("make mrproper failed in {} (exit 2)", dir.path().display())
    );
    assert!(err.causes[0].contains("Permission denied"), "{err}");
}

#[test]
fn missing_tree_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("linux");
    let (cx, _) = real_context();
    let err = builder().build(&request(&gone, 1, false), &cx).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("linux"), "{err}");
    let err = builder().clean(&gone, &cx).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}

#[test]
fn sandbox_procs_reach_every_make() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join(arch::host().image_path);
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    std::fs::write(&image, "image").unwrap();
    let runner = Arc::new(FakeRunner {
        lines: vec!["  LD      vmlinux".into()],
        ..FakeRunner::new(Some(0))
    });
    let (cx, progress) = context(runner.clone());
    let procs = PathBuf::from("/sys/fs/cgroup/ktstr-test/cgroup.procs");
    let req = BuildRequest {
        sandbox_procs: Some(procs.clone()),
        ..request(dir.path(), 4, true)
    };
    let out = builder().build(&req, &cx).unwrap();
    assert_eq!(out.image, image);

    let specs = runner.specs();
    assert_eq!(specs.len(), 2);
    for spec in &specs {
        assert_eq!(spec.program, "make");
        assert_eq!(spec.cwd.as_deref(), Some(dir.path()));
        assert_eq!(spec.cgroup_procs.as_ref(), Some(&procs));
    }
    assert_eq!(
        specs[0].args,
        Setup::new(&Variant::default(), &[])
            .unwrap()
            .args_for(4, None)
    );
    assert_eq!(specs[1].args[..specs[0].args.len()], specs[0].args[..]);
    assert_eq!(specs[1].args.last().unwrap(), "compile_commands.json");
    assert_eq!(progress.lines(), ["  LD      vmlinux", "  LD      vmlinux"]);
}

#[test]
fn cancelled_build_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Arc::new(FakeRunner::new(Some(0)));
    let (cx, _) = context(runner.clone());
    cx.cancel.cancel();
    let err = builder()
        .build(&request(dir.path(), 1, false), &cx)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Cancelled);
    assert!(runner.specs().is_empty());
}

fn fake_versions() -> Vec<(String, String)> {
    vec![
        (
            "gcc --version".into(),
            "gcc (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022\n".into(),
        ),
        ("gcc -dumpmachine".into(), "x86_64-linux-gnu\n".into()),
        (
            "ld".into(),
            "GNU ld (GNU Binutils for Debian) 2.40\n".into(),
        ),
        (
            "as".into(),
            "GNU assembler (GNU Binutils for Debian) 2.40\n".into(),
        ),
    ]
}

#[test]
fn identity_excludes_jobs_and_names_toolchain() {
    let runner = Arc::new(FakeRunner {
        versions: fake_versions(),
        ..FakeRunner::new(Some(0))
    });
    let (cx, _) = context(runner.clone());
    let ids = builder().identity(&cx).unwrap();
    assert_eq!(
        ids,
        [
            KeyComponent::new(
                "builder",
                format!(
                    "kbuild {}; make KCFLAGS=-Wno-error LOCALVERSION=",
                    env!("CARGO_PKG_VERSION")
                )
            ),
            KeyComponent::new(
                "toolchain",
                "cc: gcc (Debian 12.2.0-14) 12.2.0 (target x86_64-linux-gnu); \
                 ld: GNU ld (GNU Binutils for Debian) 2.40; \
                 as: GNU assembler (GNU Binutils for Debian) 2.40"
            ),
        ]
    );
    let specs: Vec<String> = runner.specs().iter().map(|s| s.display()).collect();
    assert_eq!(
        specs,
        [
            "gcc --version",
            "gcc -dumpmachine",
            "ld --version",
            "as --version"
        ]
    );

    // The builder component is what the build runs minus -j, for any N.
    let setup = Setup::new(&Variant::default(), &[]).unwrap();
    for jobs in [1, 8] {
        let args = setup.args_for(jobs, None);
        assert_eq!(args[0], format!("-j{jobs}"));
        assert!(
            ids[0]
                .value
                .ends_with(&format!("make {}", args[1..].join(" ")))
        );
    }
    assert!(!ids[0].value.contains("-j"));
}

/// The cache-hit path: answers are remembered per binary, so a second
/// identity spawns nothing; a changed binary is asked again.
#[test]
fn toolchain_answers_are_remembered_per_binary() {
    let root = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let cc = bin.path().join("my-cc");
    std::fs::write(&cc, "#!/bin/sh\necho 'my-cc 1.0'\n").unwrap();
    std::fs::set_permissions(&cc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let b = KbuildBuilder::with_inputs(inputs(&[("CC", cc.to_str().unwrap())]))
        .remembering_in(root.path());
    let runner = Arc::new(FakeRunner {
        versions: {
            let mut v = fake_versions();
            v.push((cc.display().to_string(), "my-cc 1.0\n".into()));
            v
        },
        ..FakeRunner::new(Some(0))
    });
    let (cx, _) = context(runner.clone());
    let first = b.identity(&cx).unwrap();
    let spawned = runner.specs().len();
    assert_eq!(spawned, 4, "{:?}", runner.specs());
    assert_eq!(b.identity(&cx).unwrap(), first);
    assert_eq!(runner.specs().len(), spawned, "a second identity spawned");

    // A new compiler binary (other size and mtime) is asked again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&cc, "#!/bin/sh\necho 'my-cc 2.0, a longer answer'\n").unwrap();
    b.identity(&cx).unwrap();
    assert!(runner.specs().len() > spawned);
}

#[test]
fn identity_uses_real_gcc() {
    let probe = std::process::Command::new("gcc").arg("--version").output();
    let Ok(probe) = probe else {
        ktstr_sdk::testing::skip("gcc not installed");
        return;
    };
    let first = String::from_utf8_lossy(&probe.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let (cx, _) = real_context();
    let ids = builder().identity(&cx).unwrap();
    let toolchain = &ids[1].value;
    assert!(
        toolchain.starts_with(&format!("cc: {first} (target ")),
        "{toolchain}"
    );
    assert!(toolchain.contains("; ld: GNU ld"), "{toolchain}");
    assert!(toolchain.contains("; as: GNU assembler"), "{toolchain}");
    // Stable across calls (and no -j to vary).
    assert_eq!(builder().identity(&cx).unwrap(), ids);
}

#[test]
fn identity_honours_cc_override() {
    let runner = Arc::new(FakeRunner {
        versions: vec![
            ("ccache".into(), "gcc (GCC) 14.1.0\n".into()),
            ("ld.bfd".into(), "GNU ld 2.42\n".into()),
            ("as".into(), "GNU assembler 2.42\n".into()),
        ],
        ..FakeRunner::new(Some(0))
    });
    let (cx, _) = context(runner.clone());
    let b = KbuildBuilder::with_inputs(inputs(&[("CC", "ccache gcc"), ("LD", "ld.bfd")]));
    let ids = b.identity(&cx).unwrap();
    assert!(
        ids[0].value.ends_with("CC=ccache gcc LD=ld.bfd"),
        "{:?}",
        ids
    );
    assert!(ids[1].value.starts_with("cc: gcc (GCC) 14.1.0"), "{ids:?}");
    assert!(
        ids[1]
            .value
            .contains("; ld: GNU ld 2.42; as: GNU assembler 2.42"),
        "{ids:?}"
    );
    assert_eq!(runner.specs()[0].display(), "ccache gcc --version");
}

#[test]
fn missing_compiler_names_it_with_install_hint() {
    let (cx, _) = real_context();
    let b = KbuildBuilder::with_inputs(inputs(&[("CC", "ktstr-no-such-cc")]));
    let err = b.identity(&cx).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Command);
    assert!(
        err.message.contains("C compiler `ktstr-no-such-cc`"),
        "{err}"
    );
    let hint = err.hint.unwrap();
    assert!(hint.contains("apt-get install build-essential"), "{hint}");
    assert!(hint.contains("$CC"), "{hint}");
}

#[test]
fn failing_version_probe_is_an_error() {
    let (cx, _) = real_context();
    let b = KbuildBuilder::with_inputs(inputs(&[("CC", "false")]));
    let err = b.identity(&cx).unwrap_err();
    assert!(err.message.contains("false --version"), "{err}");
    assert!(err.message.contains("did not answer"), "{err}");
    assert!(err.message.contains("exit 1"), "{err}");
}

#[test]
fn registered_as_builtin_builder() {
    let plugin = ktstr_sdk::registry::builtins()
        .into_iter()
        .find(|p| p.name == "kbuild")
        .expect("kbuild registered");
    assert_eq!(plugin.constructor.kind(), StageKind::Builder);
    assert_eq!(plugin.version, env!("CARGO_PKG_VERSION"));
    let Constructor::Builder(make) = plugin.constructor else {
        unreachable!()
    };
    assert!(make(&Default::default()).is_ok());
}

#[test]
fn a_wrapper_goes_in_front_of_cc_and_hostcc_in_place() {
    let w = |engine| wrapper::Wrap {
        engine,
        jobs: 6,
        capacity: String::new(),
        env: Vec::new(),
    };
    let plain = Setup::new(&Variant::default(), &[]).unwrap();
    assert_eq!(
        plain.wrapped_args(6, None, Some(&w(wrapper::Engine::Distcc))),
        [
            "-j6",
            "KCFLAGS=-Wno-error",
            "LOCALVERSION=",
            "CC=distcc gcc",
            "HOSTCC=distcc gcc"
        ]
    );
    assert_eq!(plain.wrapped_args(6, None, None), plain.args_for(6, None));
    let gcc12 = Setup::new(
        &Variant {
            toolchain: Some("gcc-12".into()),
            cross_compile: Some("x-".into()),
            ..Variant::default()
        },
        &[],
    )
    .unwrap();
    let args = gcc12.wrapped_args(2, Some(Path::new("/o")), Some(&w(wrapper::Engine::Ccache)));
    assert_eq!(
        args[3..],
        [
            "CROSS_COMPILE=x-",
            "CC=ccache x-gcc-12",
            "HOSTCC=ccache gcc-12",
            "O=/o"
        ]
    );
    let llvm = Setup::new(
        &Variant {
            toolchain: Some("llvm-16".into()),
            ..Variant::default()
        },
        &[],
    )
    .unwrap();
    assert_eq!(
        llvm.wrapped_args(1, None, Some(&w(wrapper::Engine::Icecc)))[3..],
        ["LLVM=-16", "CC=icecc clang-16", "HOSTCC=icecc clang-16"]
    );
    assert_eq!(
        shell_line(&args),
        "make -j2 KCFLAGS=-Wno-error LOCALVERSION= CROSS_COMPILE=x- CC='ccache x-gcc-12' \
         HOSTCC='ccache gcc-12' O=/o"
    );
}

#[test]
fn a_wrapper_is_not_in_the_key() {
    let runner = Arc::new(FakeRunner {
        versions: vec![
            ("gcc".into(), "gcc (GCC) 14.1.0\n".into()),
            ("ld".into(), "GNU ld 2.42\n".into()),
            ("as".into(), "GNU assembler 2.42\n".into()),
        ],
        ..FakeRunner::new(Some(0))
    });
    let (cx, _) = context(runner.clone());
    let settings = Settings {
        wrapper: Some("distcc".into()),
        wrapper_required: true,
        wrapper_jobs: Some(9),
    };
    let wrapped = builder().with_settings(&settings).unwrap();
    assert_eq!(
        wrapped.plan(&Variant::default(), &cx).unwrap(),
        builder().plan(&Variant::default(), &cx).unwrap()
    );
    // Planning (every cache hit plans) never asks the engine anything.
    assert!(
        runner.specs().iter().all(|s| s.program != "distcc"),
        "{:?}",
        runner.specs()
    );
}

#[test]
fn kbuild_settings_are_checked() {
    let parse = |v: serde_json::Value| Settings::from_value(&v);
    assert_eq!(parse(serde_json::Value::Null).unwrap(), Settings::default());
    let err = parse(serde_json::json!({"wraper": "distcc"})).unwrap_err();
    assert!(
        err.hint.unwrap().contains("known keys: wrapper"),
        "{}",
        err.message
    );
    let with = |s: Settings| builder().with_settings(&s).map(|_| ());
    let err = with(Settings {
        wrapper: Some("distc".into()),
        ..Settings::default()
    })
    .unwrap_err();
    assert!(err.message.contains("wrapper distc"), "{err}");
    let err = with(Settings {
        wrapper_required: true,
        ..Settings::default()
    })
    .unwrap_err();
    assert!(err.message.contains("no wrapper is chosen"), "{err}");
    let err = with(Settings {
        wrapper: Some("ccache".into()),
        wrapper_jobs: Some(0),
        ..Settings::default()
    })
    .unwrap_err();
    assert!(err.message.contains("wrapper_jobs = 0"), "{err}");
    with(Settings {
        wrapper: Some("none".into()),
        wrapper_required: false,
        wrapper_jobs: None,
    })
    .unwrap();
}
