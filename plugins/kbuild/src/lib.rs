//! Built-in builder: kbuild `make` with the parallelism the reservation granted.
//!
//! # Make arguments
//!
//! Every `make` that compiles (the kernel build and `compile_commands.json`)
//! gets the argument list from [`Setup::make_args`], and only from there:
//!
//! ```text
//! make -j<N> KCFLAGS=-Wno-error[ $KCFLAGS] LOCALVERSION= [ARCH=..] [CROSS_COMPILE=..]
//!      [LLVM=1 | LLVM=-N | CC=gcc-N HOSTCC=gcc-N] [inputs from the environment] [O=dir] [target]
//! ```
//!
//! * `KCFLAGS=-Wno-error`: a new compiler's new warning must not fail an
//!   otherwise good build.
//! * `LOCALVERSION=`: without it a git tree with uncommitted changes gains a
//!   `+` suffix and relinks on every no-op build.
//! * The variant ([`Variant`]: `--arch`, `--toolchain`, `--cross-compile`).
//! * Inputs from the environment (`CC`, `KCFLAGS`, ...; see
//!   [`ktstr_sdk::make_env`]): passed on the command line, because kbuild's
//!   own assignments override the environment, and recorded in the key.
//!
//! make runs with a controlled environment (`make_env::controlled`), so
//! nothing else the user exported reaches it. The configure-time makes get
//! the same arguments through [`BuildPlan::make_args`].
//!
//! kbuild records each object's command line and rebuilds everything whose
//! command changed, so the build and `compile_commands.json` invocations must
//! agree exactly; that is why there is one function.
//!
//! The `-j` value and `O=` only change how and where the kernel builds, not
//! what it builds, so they are left out of the cache key.

pub mod toolchain;
pub mod wrapper;

use std::path::{Path, PathBuf};

use ktstr_sdk::arch::{self, KernelArch};
use ktstr_sdk::build::{BuildOutput, BuildPlan, BuildRequest, Builder, Variant};
use ktstr_sdk::cache::KeyComponent;
use ktstr_sdk::config::ConfigReader;
use ktstr_sdk::context::{CommandOutcome, CommandSpec, StageContext};
use ktstr_sdk::error::{Result, StageError};
use ktstr_sdk::make_env;
use ktstr_sdk::registry::{BuiltinPlugin, Constructor, PluginConfig};

use crate::toolchain::Family;
use crate::wrapper::Wrap;

/// Plugin name in the registry and in the `builder` key component.
pub const NAME: &str = "kbuild";

/// Arguments every compiling `make` gets, before the variant's.
pub const FIXED_MAKE_ARGS: [&str; 2] = ["KCFLAGS=-Wno-error", "LOCALVERSION="];

/// Output lines quoted in a failure report.
pub const ERROR_TAIL_LINES: usize = 40;

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "builds the kernel with kbuild `make -jN` inside the CPU reservation",
        constructor: Constructor::Builder(|cfg| {
            Ok(Box::new(KbuildBuilder::new().with_settings(&Settings::from_value(cfg)?)?))
        }),
    }
}

/// The `[plugin.kbuild]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Compiler wrapper: `distcc`, `icecc`, `ccache`, `sccache` or `none`.
    pub wrapper: Option<String>,
    /// A wrapper that cannot run is an error, not a local build.
    pub wrapper_required: bool,
    /// `make -j` with the wrapper, instead of the engine's capacity.
    pub wrapper_jobs: Option<usize>,
}

/// The key `--wrapper` sets in the `[plugin.kbuild]` table.
pub const WRAPPER_KEY: &str = "wrapper";
/// The key `--wrapper-required` sets.
pub const WRAPPER_REQUIRED_KEY: &str = "wrapper_required";

impl Settings {
    /// Parse a `[plugin.kbuild]` table (`Null` when absent).
    pub fn from_value(cfg: &PluginConfig) -> Result<Self> {
        ConfigReader::new(NAME, cfg)
            .and_then(|r| r.deserialize())
            .map_err(|e| {
                e.with_hint(
                    "known keys: wrapper, wrapper_required, wrapper_jobs (see `ktstr docs \
                     build-farm`)",
                )
            })
    }
}

/// What one variant's makes are given, before any tool is asked anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub arch: &'static KernelArch,
    pub family: Family,
    /// Every make argument but `-j`, `O=` and the target.
    pub make_args: Vec<String>,
    /// The commands make will run as compiler, linker and assembler.
    pub cc: String,
    pub ld: String,
    pub assembler: Option<String>,
    pub objcopy: String,
    /// The compiler for host programs (`HOSTCC`).
    pub hostcc: String,
}

impl Setup {
    /// Work out the make arguments for `variant` and the kbuild `inputs`
    /// taken from the environment.
    pub fn new(variant: &Variant, inputs: &[(String, String)]) -> Result<Self> {
        let arch = match &variant.arch {
            Some(a) => arch::find(a)?,
            None => arch::host(),
        };
        let family = Family::parse(variant.toolchain.as_deref().unwrap_or("gcc"))?;
        let cross = match &variant.cross_compile {
            Some(prefix) => prefix.trim().to_string(),
            None if !arch.is_native() && matches!(family, Family::Gcc(_)) => {
                toolchain::find_cross_prefix(arch, family)?
            }
            None => String::new(),
        };
        let mut vars: Vec<(String, String)> = Vec::new();
        if !arch.is_native() {
            vars.push(("ARCH".into(), arch.name.into()));
        }
        if !cross.is_empty() {
            vars.push(("CROSS_COMPILE".into(), cross.clone()));
        }
        for arg in family.make_args(&cross) {
            let (k, v) = arg
                .split_once('=')
                .expect("family make args are assignments");
            vars.push((k.into(), v.into()));
        }
        let mut kcflags = "-Wno-error".to_string();
        for (k, v) in inputs {
            if k == "KCFLAGS" {
                kcflags = format!("{kcflags} {v}");
            } else if let Some(slot) = vars.iter_mut().find(|(n, _)| n == k) {
                slot.1 = v.clone();
            } else {
                vars.push((k.clone(), v.clone()));
            }
        }
        let var = |name: &str| vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let cc = var("CC").unwrap_or_else(|| family.cc(&cross));
        let ld = var("LD").unwrap_or_else(|| family.ld(&cross));
        let assembler = var("AS").or_else(|| family.assembler(&cross));
        let objcopy = var("OBJCOPY").unwrap_or_else(|| family.objcopy(&cross));
        let hostcc = var("HOSTCC").unwrap_or_else(|| family.cc(""));
        let make_args = [format!("KCFLAGS={kcflags}"), "LOCALVERSION=".to_string()]
            .into_iter()
            .chain(vars.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        Ok(Self {
            arch,
            family,
            make_args,
            cc,
            ld,
            assembler,
            objcopy,
            hostcc,
        })
    }

    /// `-j<jobs>` (at least 1), the make arguments and `O=` for `output`.
    pub fn args_for(&self, jobs: usize, output: Option<&Path>) -> Vec<String> {
        std::iter::once(format!("-j{}", jobs.max(1)))
            .chain(self.make_args.iter().cloned())
            .chain(output.map(|o| format!("O={}", o.display())))
            .collect()
    }

    /// [`Self::args_for`] with `wrap` in front of `CC` and `HOSTCC`: what
    /// the build's makes run, never what the key records.
    pub fn wrapped_args(
        &self,
        jobs: usize,
        output: Option<&Path>,
        wrap: Option<&Wrap>,
    ) -> Vec<String> {
        let mut args = self.args_for(jobs, output);
        let Some(wrap) = wrap else { return args };
        for (var, cc) in [("CC", &self.cc), ("HOSTCC", &self.hostcc)] {
            let arg = format!("{var}={}", wrap.command(cc));
            let prefix = format!("{var}=");
            match args.iter_mut().find(|a| a.starts_with(&prefix)) {
                Some(slot) => *slot = arg,
                None => args.push(arg),
            }
        }
        args
    }
}

/// A make command line as a shell reads it: values with blanks quoted.
fn shell_line(args: &[String]) -> String {
    let quoted = args.iter().map(|a| match a.split_once('=') {
        Some((k, v)) if v.contains(char::is_whitespace) => format!("{k}='{v}'"),
        _ => a.clone(),
    });
    std::iter::once("make".to_string())
        .chain(quoted)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The kbuild builder.
#[derive(Debug, Clone)]
pub struct KbuildBuilder {
    /// kbuild variables to pass; `None`: taken from the environment when
    /// a build is planned (refusing the ones ktstr cannot honour).
    inputs: Option<Vec<(String, String)>>,
    /// Where toolchain answers are remembered (a cache root).
    memo_root: Option<PathBuf>,
    /// The compiler wrapper asked for, if any.
    wrapper: Option<wrapper::Choice>,
}

impl Default for KbuildBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KbuildBuilder {
    /// A builder taking kbuild inputs from the environment and remembering
    /// toolchain versions under the cache root.
    pub fn new() -> Self {
        Self {
            inputs: None,
            memo_root: ktstr_sdk::paths::cache_root().ok(),
            wrapper: None,
        }
    }

    /// Apply `[plugin.kbuild]` settings (the wrapper).
    pub fn with_settings(mut self, settings: &Settings) -> Result<Self> {
        let engine = match &settings.wrapper {
            Some(raw) => wrapper::parse_wrapper(raw)?,
            None => None,
        };
        if settings.wrapper_required && engine.is_none() {
            return Err(StageError::invalid_input(
                "wrapper_required is set (--wrapper-required) but no wrapper is chosen",
            )
            .with_hint("pass --wrapper NAME or set wrapper = \"NAME\" in [plugin.kbuild]"));
        }
        if settings.wrapper_jobs == Some(0) {
            return Err(StageError::invalid_input(
                "[plugin.kbuild] wrapper_jobs = 0: must be at least 1",
            ));
        }
        self.wrapper = engine.map(|engine| wrapper::Choice {
            engine,
            required: settings.wrapper_required,
            jobs: settings.wrapper_jobs,
        });
        Ok(self)
    }

    /// A builder with explicit kbuild inputs (`CC`, `KCFLAGS`, ...),
    /// ignoring the environment and remembering nothing.
    pub fn with_inputs(inputs: Vec<(String, String)>) -> Self {
        Self {
            inputs: Some(inputs),
            memo_root: None,
            wrapper: None,
        }
    }

    /// Remember toolchain answers under the cache root `root`.
    pub fn remembering_in(mut self, root: &Path) -> Self {
        self.memo_root = Some(root.to_path_buf());
        self
    }

    /// The kbuild variables to pass, and those not passed.
    fn environment(&self) -> Result<make_env::Classified> {
        match &self.inputs {
            Some(inputs) => Ok(make_env::Classified {
                inputs: inputs.clone(),
                dropped: Vec::new(),
            }),
            None => make_env::classify_process_env(),
        }
    }

    /// The make setup for `variant`.
    pub fn setup(&self, variant: &Variant) -> Result<Setup> {
        Setup::new(variant, &self.environment()?.inputs)
    }

    /// Run one `make` as a progress step, streaming its lines.
    fn run_make(&self, cx: &StageContext, tree: &Path, make: Invocation) -> Result<()> {
        cx.cancel.check()?;
        let mut spec = CommandSpec::new("make").args(make.args).cwd(tree);
        spec.env = make.env;
        let mut spec = make_env::controlled(spec);
        spec.cgroup_procs = make.sandbox;
        tracing::debug!(command = %spec.display(), tree = %tree.display(), "running make");
        cx.progress.step(&make.step);
        let result = cx.runner.run(&spec, &mut |line| cx.progress.line(line));
        cx.progress.finish_step();
        let outcome = result?;
        if outcome.success() {
            return Ok(());
        }
        // Ctrl-C reaches make too; report the interruption, not a failure.
        cx.cancel.check()?;
        Err(make_failure(make.what, tree, &spec, &outcome, make.hint))
    }
}

/// One `make` run.
struct Invocation {
    /// Progress step name.
    step: String,
    /// Names the run in error messages (`make`, `make mrproper`).
    what: &'static str,
    args: Vec<String>,
    /// Set for make on top of the controlled environment.
    env: Vec<(String, String)>,
    sandbox: Option<PathBuf>,
    /// What to do when it fails (the reproduce command is appended).
    hint: &'static str,
}

/// The error for a `make` that ran and failed: exit status in the message,
/// the output tail as one cause, and how to reproduce it in the hint.
fn make_failure(
    what: &str,
    tree: &Path,
    spec: &CommandSpec,
    outcome: &CommandOutcome,
    hint: &str,
) -> StageError {
    let status = match outcome.code {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".to_string(),
    };
    let mut err = StageError::command(format!("{what} failed in {} ({status})", tree.display()));
    let tail = outcome.failure_tail(ERROR_TAIL_LINES);
    if !tail.is_empty() {
        err.causes
            .push(format!("last lines of output:\n{}", tail.join("\n")));
    }
    err.with_hint(format!(
        "{hint}; reproduce with `cd {} && {}`",
        tree.display(),
        spec.display()
    ))
}

impl Builder for KbuildBuilder {
    fn identity(&self, cx: &StageContext) -> Result<Vec<KeyComponent>> {
        Ok(self.plan(&Variant::default(), cx)?.components)
    }

    fn plan(&self, variant: &Variant, cx: &StageContext) -> Result<BuildPlan> {
        let env = self.environment()?;
        for (name, why) in &env.dropped {
            cx.progress.note(&format!(
                "not passing {name} from the environment to make: {why}"
            ));
        }
        let setup = Setup::new(variant, &env.inputs)?;
        let memo = self.memo_root.as_deref();
        let family = setup.family;
        let gcc = matches!(family, Family::Gcc(_));
        let cc = toolchain::describe(memo, cx, "C compiler", "CC", &setup.cc, gcc, family)?;
        let ld = toolchain::describe(memo, cx, "linker", "LD", &setup.ld, false, family)?;
        let assembler = match &setup.assembler {
            Some(a) => toolchain::describe(memo, cx, "assembler", "AS", a, false, family)?,
            None => "integrated".to_string(),
        };
        let builder = format!(
            "{NAME} {}; make {}",
            env!("CARGO_PKG_VERSION"),
            setup.make_args.join(" ")
        );
        Ok(BuildPlan {
            arch: setup.arch,
            components: vec![
                KeyComponent::new("builder", builder),
                KeyComponent::new("toolchain", format!("cc: {cc}; ld: {ld}; as: {assembler}")),
            ],
            make_args: setup.make_args,
            objcopy: setup.objcopy,
        })
    }

    fn builds_out_of_tree(&self) -> bool {
        true
    }

    fn clean(&self, tree: &Path, cx: &StageContext) -> Result<()> {
        check_tree(tree)?;
        self.run_make(
            cx,
            tree,
            Invocation {
                step: "make mrproper".to_string(),
                what: "make mrproper",
                args: vec!["mrproper".to_string()],
                env: Vec::new(),
                sandbox: None,
                hint: "fix the error shown above",
            },
        )
    }

    fn build(&self, req: &BuildRequest, cx: &StageContext) -> Result<BuildOutput> {
        let tree = req.tree.as_path();
        check_tree(tree)?;
        let setup = self.setup(&req.variant)?;
        let output = req.output.as_deref();
        let build_dir = output.unwrap_or(tree);
        if let Some(out) = output {
            std::fs::create_dir_all(out)
                .map_err(|e| StageError::io("create the output directory", out, e))?;
        }
        let wrap = match self.wrapper {
            Some(choice) => wrapper::resolve(choice, &setup.cc, req.make_jobs, cx)?,
            None => None,
        };
        let jobs = wrap.as_ref().map_or(req.make_jobs, |w| w.jobs);
        let wrap_env = wrap.as_ref().map(|w| w.env.clone()).unwrap_or_default();
        let args = setup.wrapped_args(jobs, output, wrap.as_ref());
        let step = match &wrap {
            Some(w) => w.step(req.make_jobs),
            None => format!("building (make {})", args[0]),
        };
        self.run_make(
            cx,
            tree,
            Invocation {
                step,
                what: "make",
                args: args.clone(),
                env: wrap_env.clone(),
                sandbox: req.sandbox_procs.clone(),
                hint: "fix the error shown above",
            },
        )?;

        if req.compile_commands {
            let mut cc_args = args;
            cc_args.push("compile_commands.json".to_string());
            self.run_make(
                cx,
                tree,
                Invocation {
                    step: "generating compile_commands.json".to_string(),
                    what: "make compile_commands.json",
                    args: cc_args,
                    env: wrap_env,
                    sandbox: req.sandbox_procs.clone(),
                    hint: "the kernel itself built; generating compile_commands.json needs \
                           python3 (scripts/clang-tools/gen_compile_commands.py)",
                },
            )?;
        }

        let arch = setup.arch;
        let image = build_dir.join(arch.image_path);
        if !image.is_file() {
            return Err(StageError::command(format!(
                "make succeeded but produced no {} in {}",
                arch.image_path,
                build_dir.display()
            ))
            .with_hint(format!(
                "check that .config targets {} (run `make olddefconfig` in the tree) and that \
                 the default make target builds {}",
                arch.name, arch.image_name
            )));
        }
        let vmlinux = build_dir.join("vmlinux");
        let vmlinux = if vmlinux.is_file() {
            Some(vmlinux)
        } else {
            cx.progress
                .warn("vmlinux not found; BTF will not be cached");
            None
        };
        let command = Some(shell_line(&setup.wrapped_args(jobs, output, wrap.as_ref())));
        Ok(BuildOutput {
            image,
            vmlinux,
            command,
        })
    }
}

/// A missing tree would otherwise surface as "cannot run make".
fn check_tree(tree: &Path) -> Result<()> {
    if tree.is_dir() {
        Ok(())
    } else {
        Err(StageError::not_found(format!(
            "kernel tree {} does not exist or is not a directory",
            tree.display()
        )))
    }
}

#[cfg(test)]
mod tests;
