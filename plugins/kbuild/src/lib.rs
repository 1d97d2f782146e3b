//! Built-in builder: kbuild `make` with the parallelism the reservation granted.
//!
//! # Make arguments
//!
//! Every `make` that compiles (the kernel build and `compile_commands.json`)
//! gets the argument list from [`make_args`], and only from there:
//!
//! ```text
//! make -j<N> KCFLAGS=-Wno-error LOCALVERSION= [CC=$CC] [LD=$LD] [target]
//! ```
//!
//! * `KCFLAGS=-Wno-error`: a new compiler's new warning must not fail an
//!   otherwise good build.
//! * `LOCALVERSION=`: without it a git tree with uncommitted changes gains a
//!   `+` suffix and relinks on every no-op build.
//! * `CC=`/`LD=`: only when `$CC`/`$LD` are set and non-empty. kbuild assigns
//!   `CC` and `LD` in its Makefile, which overrides the environment, so the
//!   toolchain the cache key records ([`Builder::identity`]) is only the one
//!   that builds the kernel if it is passed on the command line.
//!
//! kbuild records each object's command line and rebuilds everything whose
//! command changed, so the build and `compile_commands.json` invocations must
//! agree exactly; that is why there is one function.
//!
//! The `-j` value only changes how fast the kernel builds, not what it
//! builds, so it is left out of the cache key.

use std::path::{Path, PathBuf};

use ktstr_sdk::arch;
use ktstr_sdk::build::{BuildOutput, BuildRequest, Builder};
use ktstr_sdk::cache::KeyComponent;
use ktstr_sdk::context::{CommandOutcome, CommandSpec, StageContext};
use ktstr_sdk::error::{Result, StageError};
use ktstr_sdk::registry::{BuiltinPlugin, Constructor};

/// Plugin name in the registry and in the `builder` key component.
pub const NAME: &str = "kbuild";

/// Arguments every compiling `make` gets, besides `-j` and the toolchain.
pub const FIXED_MAKE_ARGS: [&str; 2] = ["KCFLAGS=-Wno-error", "LOCALVERSION="];

/// Output lines quoted in a failure report.
pub const ERROR_TAIL_LINES: usize = 40;

/// Debian packages a kernel build needs; quoted in hints.
const DEBIAN_PACKAGES: &str =
    "apt-get install build-essential flex bison bc libelf-dev libssl-dev dwarves cpio";

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "builds the kernel with kbuild `make -jN` inside the CPU reservation",
        constructor: Constructor::Builder(|_cfg| Ok(Box::new(KbuildBuilder::new()))),
    }
}

/// Compiler and linker overrides (`$CC`, `$LD`), `None` for kbuild's
/// defaults (`gcc`, `ld`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toolchain {
    pub cc: Option<String>,
    pub ld: Option<String>,
}

impl Toolchain {
    /// `$CC` and `$LD`; an empty value counts as unset.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Self {
            cc: var("CC"),
            ld: var("LD"),
        }
    }

    /// The compiler command (`gcc` unless overridden).
    pub fn cc(&self) -> &str {
        self.cc.as_deref().unwrap_or("gcc")
    }

    /// The linker command (`ld` unless overridden).
    pub fn ld(&self) -> &str {
        self.ld.as_deref().unwrap_or("ld")
    }

    /// `CC=`/`LD=` make arguments for the overrides that are set.
    fn make_overrides(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(cc) = &self.cc {
            out.push(format!("CC={cc}"));
        }
        if let Some(ld) = &self.ld {
            out.push(format!("LD={ld}"));
        }
        out
    }
}

/// Everything a compiling `make` gets except `-j`: the part of the command
/// line that determines what is built (and therefore enters the cache key).
pub fn make_args_without_jobs(toolchain: &Toolchain) -> Vec<String> {
    FIXED_MAKE_ARGS
        .iter()
        .map(|s| s.to_string())
        .chain(toolchain.make_overrides())
        .collect()
}

/// The argument list shared by the kernel build and `compile_commands.json`:
/// `-j<jobs>` (at least 1) followed by [`make_args_without_jobs`].
pub fn make_args(jobs: usize, toolchain: &Toolchain) -> Vec<String> {
    std::iter::once(format!("-j{}", jobs.max(1)))
        .chain(make_args_without_jobs(toolchain))
        .collect()
}

/// The kbuild builder.
#[derive(Debug, Clone)]
pub struct KbuildBuilder {
    toolchain: Toolchain,
}

impl Default for KbuildBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KbuildBuilder {
    /// A builder using `$CC`/`$LD` from the environment, if set.
    pub fn new() -> Self {
        Self::with_toolchain(Toolchain::from_env())
    }

    /// A builder with explicit toolchain overrides (ignores the environment).
    pub fn with_toolchain(toolchain: Toolchain) -> Self {
        Self { toolchain }
    }

    pub fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    /// Run one `make` as a progress step, streaming its lines.
    fn run_make(&self, cx: &StageContext, tree: &Path, make: Invocation) -> Result<()> {
        cx.cancel.check()?;
        let mut spec = CommandSpec::new("make").args(make.args).cwd(tree);
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

/// First non-empty line of `<tool> --version`, for the toolchain identity.
/// `role` names the tool in messages, `var` is the variable that overrides it.
fn tool_version(cx: &StageContext, role: &str, var: &str, command: &str) -> Result<String> {
    let mut words = command.split_whitespace();
    let program = words.next().unwrap_or(command);
    let spec = CommandSpec::new(program).args(words).arg("--version");
    let hint = format!(
        "install the {role} (on Debian: {DEBIAN_PACKAGES}), put `{program}` on PATH, or point \
         ${var} at another one"
    );
    let out = cx.runner.capture(&spec).map_err(|e| {
        let mut err =
            StageError::command(format!("cannot run the {role} `{command}`")).with_hint(&hint);
        if e.causes.is_empty() {
            err.causes.push(e.message);
        } else {
            err.causes.extend(e.causes);
        }
        err
    })?;
    let first = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .map(str::trim)
        .find(|l| !l.is_empty());
    match (out.code, first) {
        (Some(0), Some(line)) => Ok(line.to_string()),
        (code, _) => {
            let status = code.map_or("killed by a signal".to_string(), |c| format!("exit {c}"));
            let mut err = StageError::command(format!(
                "`{}` did not report a version ({status})",
                spec.display()
            ))
            .with_hint(hint);
            if let Some(line) = out.stderr.lines().find(|l| !l.trim().is_empty()) {
                err.causes.push(line.trim().to_string());
            }
            Err(err)
        }
    }
}

impl Builder for KbuildBuilder {
    fn identity(&self, cx: &StageContext) -> Result<Vec<KeyComponent>> {
        let builder = format!(
            "{NAME} {}; make {}",
            env!("CARGO_PKG_VERSION"),
            make_args_without_jobs(&self.toolchain).join(" ")
        );
        let cc = tool_version(cx, "C compiler", "CC", self.toolchain.cc())?;
        let ld = tool_version(cx, "linker", "LD", self.toolchain.ld())?;
        Ok(vec![
            KeyComponent::new("builder", builder),
            KeyComponent::new("toolchain", format!("{cc}; {ld}")),
        ])
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
                sandbox: None,
                hint: "fix the error shown above",
            },
        )
    }

    fn build(&self, req: &BuildRequest, cx: &StageContext) -> Result<BuildOutput> {
        let tree = req.tree.as_path();
        check_tree(tree)?;
        let args = make_args(req.make_jobs, &self.toolchain);
        self.run_make(
            cx,
            tree,
            Invocation {
                step: format!("building (make {})", args[0]),
                what: "make",
                args: args.clone(),
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
                    sandbox: req.sandbox_procs.clone(),
                    hint: "the kernel itself built; generating compile_commands.json needs \
                           python3 (scripts/clang-tools/gen_compile_commands.py)",
                },
            )?;
        }

        let arch = arch::host();
        let image = tree.join(arch.image_path);
        if !image.is_file() {
            return Err(StageError::command(format!(
                "make succeeded but produced no {} in {}",
                arch.image_path,
                tree.display()
            ))
            .with_hint(format!(
                "check that .config targets {} (run `make olddefconfig` in the tree) and that \
                 the default make target builds {}",
                arch.name, arch.image_name
            )));
        }
        let vmlinux = tree.join("vmlinux");
        let vmlinux = if vmlinux.is_file() {
            Some(vmlinux)
        } else {
            cx.progress
                .warn("vmlinux not found; BTF will not be cached");
            None
        };
        let command = Some(format!(
            "make {}",
            make_args(req.make_jobs, &self.toolchain).join(" ")
        ));
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
