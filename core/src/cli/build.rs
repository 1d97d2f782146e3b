//! `ktstr build`: its flags, their help, and the run.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use ktstr_sdk::StageError;
use ktstr_sdk::build::Variant;
use ktstr_sdk::configure::{ConfigureRequest, Configurer, Fragment};
use ktstr_sdk::source::KernelSpec;
use ktstr_sdk::verify::VerifyRecord;

use super::build_json::{BuildReport, Failed};
use super::{BootFailed, UsageError, host_context};
use crate::pipeline::verify;
use crate::pipeline::{self, BuildRequestSpec, NotCached, Outcome};
use crate::progress::{LABEL, StderrProgress};
use crate::stage_setup::{self, Overrides};

/// `ktstr build --help`: one example per kind of `--kernel` spec.
const EXAMPLES: &str = "\
Examples:
  ktstr build --kernel ~/linux             a kernel tree (clean git trees cached)
  ktstr build --kernel 6.12                the newest 6.12.x from kernel.org
  ktstr build --kernel 6.12.3 --profile tiny
  ktstr build --kernel 6.10..6.12          every release of a range, in turn
  ktstr build --kernel ./linux-6.12.3.tar.xz
  ktstr build --kernel 'https://host/linux-6.12.3.tar.xz#sha256=HEX'
  ktstr build --kernel 'git+https://host/linux.git#tag=v6.12'  (#branch=, #sha=)
  ktstr build --kernel ~/linux --kconfig CONFIG_KASAN=y --arch arm64
stdout is the image path only: qemu-system-x86_64 -kernel \"$(ktstr build ...)\".
Every spec, flag and error: `ktstr docs cli` and `ktstr docs sources`.";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct BuildArgs {
    /// Kernel source: a kernel tree (a directory), a release (6.12.3, or
    /// 6.12 for the newest 6.12.x), a range (6.10..6.12), a tarball (a
    /// file, or a file:// or https:// URL, optionally ending in
    /// #sha256=HEX) or a git ref (git+URL, optionally #tag=, #branch= or
    /// #sha=). See the examples below.
    #[arg(long, value_name = "SPEC")]
    pub kernel: String,
    /// Configuration profile: `default` (defconfig + sched_ext test
    /// options) or `tiny` (tinyconfig + the minimum for sched_ext); a
    /// configurer plugin may offer others.
    #[arg(
        long,
        default_value = "default",
        value_name = "NAME",
        value_parser = Completed(any_profile, builtin_profiles)
    )]
    pub profile: String,
    /// Extra kconfig fragment applied after the profile (repeatable; last
    /// occurrence of a symbol wins).
    #[arg(long = "extra-kconfig", value_name = "FILE")]
    pub extra_kconfig: Vec<PathBuf>,
    /// Run `make mrproper` first (local trees only).
    #[arg(long)]
    pub clean: bool,
    /// Rebuild even if the cache has this kernel.
    #[arg(long)]
    pub force: bool,
    /// Reserve N CPUs for the build (`make -jN`), enforced by the reserver
    /// (default: 30% of the CPUs this process may use).
    /// Also read from KTSTR_CPU_CAP (an empty value counts as unset).
    #[arg(
        long,
        value_name = "N",
        env = CPU_CAP_ENV,
        hide_env = true,
        value_parser = CpuCapParser
    )]
    pub cpu_cap: Option<CpuCap>,
    /// Use this reserver for this run (overrides the config file).
    #[arg(long, value_name = "NAME")]
    pub reserver: Option<String>,
    /// Load a plugin (NAME[@VERSION-REQ] or a library path) and use its
    /// stages; repeatable.
    #[arg(long = "plugin", value_name = "NAME|PATH")]
    pub plugins: Vec<String>,
    /// Keep the extracted tarball or git checkout after the build.
    #[arg(long)]
    pub keep_source: bool,
    /// Build a tarball whose sha256 does not match the published digest.
    #[arg(long)]
    pub skip_sha256: bool,
    /// On a cache miss, say which key input differs from the nearest entry.
    #[arg(long)]
    pub explain: bool,
    /// Build for this architecture (kbuild ARCH: x86_64, arm64, riscv, s390,
    /// powerpc, arm, loongarch; aliases like aarch64 work). Default: the
    /// host's, or `arch` in the config file.
    #[arg(long, value_name = "ARCH", value_parser = Completed(parse_arch, arch_names), hide_possible_values = true)]
    pub arch: Option<String>,
    /// Compiler family: gcc (default), gcc-N, clang or llvm (LLVM=1 with its
    /// integrated assembler), llvm-N (LLVM=-N).
    #[arg(long, value_name = "NAME", value_parser = Completed(parse_toolchain, toolchain_names), hide_possible_values = true)]
    pub toolchain: Option<String>,
    /// CROSS_COMPILE prefix for a foreign --arch (default: found on PATH by
    /// the usual triplet, e.g. aarch64-linux-gnu-).
    #[arg(long, value_name = "PREFIX")]
    pub cross_compile: Option<String>,
    /// Configure and build out of tree in DIR (kbuild O=); the source tree
    /// is not written.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// One kconfig line, applied after --extra-kconfig files (repeatable;
    /// last occurrence of a symbol wins), e.g. --kconfig CONFIG_KASAN=y.
    #[arg(long = "kconfig", value_name = "CONFIG_X=VALUE")]
    pub kconfig: Vec<String>,
    /// Put a compiler wrapper in front of CC and HOSTCC: distcc, icecc,
    /// ccache, sccache, or none (overrides `wrapper` in the config file). A
    /// wrapper never changes the cache key; one that cannot run here means
    /// a local build and a warning (see `ktstr docs build-farm`).
    #[arg(long, value_name = "NAME", value_parser = Completed(parse_wrapper, ktstr_plugin_kbuild::wrapper::wrapper_names), hide_possible_values = true)]
    pub wrapper: Option<String>,
    /// A wrapper that cannot run is an error instead of a local build.
    #[arg(long)]
    pub wrapper_required: bool,
    /// Print the result as JSON on stdout (key, paths, outcome, durations;
    /// docs/cli.md) instead of the image path.
    #[arg(long)]
    pub json: bool,
    /// Boot-check the kernel (the `qemu` verifier, or `verifier` in the
    /// config file) and record the verdict with the entry: a new build
    /// before it is stored, a hit that has no verdict yet. Exit 3 when the
    /// kernel fails its check. Config: `verify = true`.
    #[arg(long)]
    pub verify: bool,
    /// Wall-clock bound of the boot check (default 120s; config
    /// `verify_timeout`).
    #[arg(long, value_name = "DURATION")]
    pub verify_timeout: Option<String>,
}

pub const CPU_CAP_ENV: &str = "KTSTR_CPU_CAP";
pub const BYPASS_ENV: &str = "KTSTR_BYPASS_LLC_LOCKS";

/// `KTSTR_BYPASS_LLC_LOCKS` is set to something non-empty.
pub fn bypass_requested() -> bool {
    ktstr_sdk::paths::env_nonempty(BYPASS_ENV).is_some()
}

/// `--cpu-cap`, or `KTSTR_CPU_CAP` when the flag is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCap {
    /// `None`: the variable is empty, which counts as unset.
    pub cpus: Option<usize>,
    pub from_env: bool,
}

impl BuildArgs {
    /// The CPUs to reserve, if a cap was given.
    pub fn cpu_cap(&self) -> Option<usize> {
        self.cpu_cap.and_then(|c| c.cpus)
    }

    /// A usage error clap cannot see: a CPU cap together with the bypass.
    /// The text follows `error: `.
    pub fn conflict(&self) -> Option<String> {
        let cap = self.cpu_cap.filter(|c| c.cpus.is_some())?;
        if !bypass_requested() {
            return None;
        }
        let from = if cap.from_env {
            CPU_CAP_ENV
        } else {
            "--cpu-cap"
        };
        Some(format!(
            "{from} conflicts with {BYPASS_ENV}: a CPU cap is a reservation, and the bypass \
             skips reservation\n{LABEL}: hint: unset {BYPASS_ENV} to enforce the cap, or drop \
             {from} to build without a reservation"
        ))
    }
}

fn parse_arch(raw: &str) -> Result<String, String> {
    ktstr_sdk::arch::find(raw)
        .map(|a| a.name.to_string())
        .map_err(|e| match e.hint {
            Some(h) => format!("not an architecture ktstr builds; {h}"),
            None => e.message,
        })
}

/// A value parser that also names the values shells should offer: `parse`
/// accepts more spellings (aliases, versioned toolchains) than are listed.
#[derive(Clone, Copy)]
struct Completed(
    fn(&str) -> Result<String, String>,
    fn() -> Vec<&'static str>,
);

impl TypedValueParser for Completed {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        self.0.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            (self.1)()
                .into_iter()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

fn arch_names() -> Vec<&'static str> {
    ktstr_sdk::arch::ARCHES.iter().map(|a| a.name).collect()
}

/// Profiles are the configurer's: checked in [`check_profile`] once the
/// config file has said which configurer runs.
fn any_profile(raw: &str) -> Result<String, String> {
    Ok(raw.to_string())
}

fn builtin_profiles() -> Vec<&'static str> {
    ktstr_plugin_kconfig::profiles::PROFILES
        .iter()
        .map(|p| p.name)
        .collect()
}

/// `--reserver NAME` that neither a built-in nor a plugin provides is a
/// bad flag value (exit 2), like an unknown `--profile`.
fn unknown_reserver_is_usage(e: StageError, reserver: Option<&str>) -> anyhow::Error {
    match reserver {
        Some(r)
            if e.kind == ktstr_sdk::ErrorKind::NotFound
                && e.message
                    == crate::registry::unknown_stage(
                        ktstr_sdk::registry::StageKind::Reserver,
                        r,
                    ) =>
        {
            UsageError(e.context(format!("--reserver {r}"))).into()
        }
        _ => e.into(),
    }
}

/// `--profile` names a profile of the selected configurer, or it is a
/// usage error (exit 2) listing them, with the nearest as a suggestion.
fn check_profile(profile: &str, configurer: &crate::registry::Named<dyn Configurer>) -> Result<()> {
    let known = configurer.stage.profiles();
    if known.iter().any(|p| p.name == profile) {
        return Ok(());
    }
    let names: Vec<&str> = known.iter().map(|p| p.name.as_str()).collect();
    let list: Vec<String> = known
        .iter()
        .map(|p| format!("{} ({} + fragment)", p.name, p.base_target))
        .collect();
    Err(UsageError(
        StageError::invalid_input(format!(
            "--profile {profile}: not a profile of the {} configurer",
            configurer.name
        ))
        .with_hint(format!(
            "{}choose one of: {}",
            crate::suggest::did_you_mean(profile, names.iter().copied()),
            list.join(", ")
        )),
    )
    .into())
}

fn toolchain_names() -> Vec<&'static str> {
    vec!["gcc", "clang", "llvm"]
}

fn parse_wrapper(raw: &str) -> Result<String, String> {
    ktstr_plugin_kbuild::wrapper::parse_wrapper(raw)
        .map(|_| raw.to_string())
        .map_err(|e| match e.hint {
            Some(h) => format!("not a compiler wrapper ktstr knows; {h}"),
            None => e.message,
        })
}

/// `--wrapper` and `--wrapper-required` into the kbuild builder's table,
/// over the config file's `wrapper` (the builder reads them from there,
/// so per-host config and the flag are one setting).
fn apply_wrapper_flags(args: &BuildArgs, setup: &mut stage_setup::Setup) -> Result<()> {
    if args.wrapper.is_none() && !args.wrapper_required {
        return Ok(());
    }
    let builder = &setup.selection.builder;
    if builder != ktstr_plugin_kbuild::NAME {
        return Err(UsageError(
            StageError::invalid_input(format!(
                "--wrapper: the selected builder {builder:?} does not take a compiler wrapper"
            ))
            .with_hint(
                "only the built-in kbuild builder does; drop --wrapper or use builder = \"kbuild\"",
            ),
        )
        .into());
    }
    let table = setup
        .selection
        .configs
        .entry(ktstr_plugin_kbuild::NAME.to_string())
        .or_insert_with(|| serde_json::json!({}));
    if table.is_null() {
        *table = serde_json::json!({});
    }
    if let Some(map) = table.as_object_mut() {
        if args.wrapper_required
            && args.wrapper.is_none()
            && !map.contains_key(ktstr_plugin_kbuild::WRAPPER_KEY)
        {
            return Err(UsageError(
                StageError::invalid_input("--wrapper-required: no wrapper is chosen")
                    .with_hint("add --wrapper NAME (distcc, icecc, ccache, sccache)"),
            )
            .into());
        }
        if let Some(w) = &args.wrapper {
            map.insert(ktstr_plugin_kbuild::WRAPPER_KEY.into(), w.clone().into());
        }
        if args.wrapper_required {
            map.insert(
                ktstr_plugin_kbuild::WRAPPER_REQUIRED_KEY.into(),
                true.into(),
            );
        }
    }
    Ok(())
}

fn parse_toolchain(raw: &str) -> Result<String, String> {
    ktstr_plugin_kbuild::toolchain::Family::parse(raw)
        .map(|_| raw.to_string())
        .map_err(|e| match e.hint {
            Some(h) => format!("not a toolchain ktstr knows; {h}"),
            None => e.message,
        })
}

fn parse_cpu_cap(raw: &str) -> Result<usize, String> {
    let n: usize = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a whole number of CPUs"))?;
    if n == 0 {
        return Err("must be at least 1 CPU".into());
    }
    Ok(n)
}

/// Parses `--cpu-cap` with [`parse_cpu_cap`]. A value from `KTSTR_CPU_CAP`
/// is read like every ktstr variable (empty or not UTF-8 counts as unset,
/// see `paths::env_nonempty`), and a bad one is blamed on the variable,
/// not on the flag.
#[derive(Debug, Clone, Copy)]
struct CpuCapParser;

impl TypedValueParser for CpuCapParser {
    type Value = CpuCap;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<CpuCap, clap::Error> {
        self.parse_ref_(cmd, arg, value, ValueSource::CommandLine)
    }

    fn parse_ref_(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
        source: ValueSource,
    ) -> Result<CpuCap, clap::Error> {
        if source != ValueSource::EnvVariable {
            let cpus = parse_cpu_cap.parse_ref(cmd, arg, value)?;
            return Ok(CpuCap {
                cpus: Some(cpus),
                from_env: false,
            });
        }
        let Some(raw) = value.to_str().filter(|v| !v.is_empty()) else {
            return Ok(CpuCap {
                cpus: None,
                from_env: true,
            });
        };
        match parse_cpu_cap(raw) {
            Ok(n) => Ok(CpuCap {
                cpus: Some(n),
                from_env: true,
            }),
            // Raw, with no command attached: rendered as is, without
            // clap's usage footer (`cli::main` adds the label).
            Err(why) => Err(clap::Error::raw(
                ErrorKind::ValueValidation,
                format!(
                    "{CPU_CAP_ENV}={raw:?}: {why}\n{LABEL}: hint: set it to a number of CPUs \
                     (at least 1) or unset it\n"
                ),
            )),
        }
    }
}

const DIRTY_GIT_HINT: &str = "commit or stash your changes to cache builds of this tree";
const NON_GIT_HINT: &str = "run `git init && git add -A && git commit -m base` in the tree so \
     ktstr can identify its content and cache its builds";

pub fn run(args: &BuildArgs) -> Result<()> {
    let started = super::build_json::Started::now();
    let (cx, progress) = host_context();
    let mut setup = stage_setup::setup(&Overrides {
        plugins: args.plugins.clone(),
        reserver: args.reserver.clone(),
    })
    .map_err(|e| unknown_reserver_is_usage(e, args.reserver.as_deref()))?;
    let settings = &setup.effective.settings;
    let mut fragments = args
        .extra_kconfig
        .iter()
        .map(|p| pipeline::read_fragment(p))
        .collect::<Result<Vec<_>, _>>()?;
    let config_lines = settings
        .kconfig
        .iter()
        .flatten()
        .map(|l| (l, "config file kconfig"));
    let flag_lines = args.kconfig.iter().map(|l| (l, "--kconfig"));
    fragments.extend(
        config_lines
            .chain(flag_lines)
            .map(|(line, origin)| Fragment {
                name: format!("{origin} {line}"),
                content: format!("{line}\n"),
            }),
    );
    let variant = Variant {
        arch: args.arch.clone().or_else(|| settings.arch.clone()),
        toolchain: args
            .toolchain
            .clone()
            .or_else(|| settings.toolchain.clone()),
        cross_compile: args
            .cross_compile
            .clone()
            .or_else(|| settings.cross_compile.clone()),
    };
    let output = args
        .output
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--output: {e}"))?;
    let request = BuildRequestSpec {
        spec: KernelSpec::new(&args.kernel),
        configure: ConfigureRequest {
            profile: args.profile.clone(),
            fragments,
            make_jobs: 1,
            ..ConfigureRequest::default()
        },
        clean: args.clean,
        force: args.force,
        cpu_cap: args.cpu_cap(),
        explain: args.explain,
        keep_source: args.keep_source,
        bypass_locks: bypass_requested(),
        variant,
        output,
    };
    if args.skip_sha256 {
        ktstr_sdk::switch::apply(ktstr_sdk::switch::SKIP_SHA256, &mut setup.selection.configs);
    }
    let asked_by = if args.verify {
        Some("--verify")
    } else if setup.effective.settings.verify == Some(true) {
        Some("verify = true in the config file")
    } else {
        None
    };
    let verifier = match asked_by {
        Some(asked_by) => Some(super::kernel_verify::boot_check(
            args.verify_timeout.as_deref(),
            &mut setup,
            asked_by,
        )?),
        None => None,
    };
    apply_wrapper_flags(args, &mut setup)?;
    let mut stages = setup.stages()?;
    check_profile(&args.profile, &stages.configurer)?;
    stages.verifier = verifier;
    let root = ktstr_sdk::paths::cache_root()?;
    let targets = pipeline::resolve(&stages, &request.spec, &cx)?;
    if targets.len() == 1 {
        let outcome = pipeline::run(&stages, &request, &targets[0], &root, &cx)?;
        report(&outcome, &progress, stages.verifier.is_some());
        if args.json {
            crate::report::print_json(&BuildReport::new(&outcome, started, &stages.tiers))?;
        } else {
            println!("{}", outcome.image().display());
        }
        return match failed_boot(&outcome) {
            Some(key) => Err(BootFailed::new(vec![key]).into()),
            None => Ok(()),
        };
    }

    // A range: build each member, carry on past failures, sum up.
    let mut failed = Vec::new();
    let mut failed_boots = Vec::new();
    let mut json = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let label = target.label();
        progress.println(&format!("[{}/{}] {label}", i + 1, targets.len()));
        match pipeline::run(&stages, &request, target, &root, &cx) {
            Ok(outcome) => {
                report(&outcome, &progress, stages.verifier.is_some());
                failed_boots.extend(failed_boot(&outcome));
                if args.json {
                    json.push(serde_json::to_value(BuildReport::new(
                        &outcome,
                        started,
                        &stages.tiers,
                    ))?);
                } else {
                    println!("{label} {}", outcome.image().display());
                }
            }
            Err(e) if e.kind == ktstr_sdk::ErrorKind::Cancelled => return Err(e.into()),
            Err(e) => {
                crate::progress::suspended(|| super::report(&anyhow::Error::from(e.clone())));
                json.push(serde_json::to_value(Failed {
                    kernel: label.clone(),
                    outcome: "failed",
                    error: e.to_string(),
                })?);
                failed.push((label, e));
            }
        }
    }
    if args.json {
        crate::report::print_json(&json)?;
    }
    let built = targets.len() - failed.len();
    if failed.is_empty() {
        progress.println(&format!("all {} kernels of {} built", built, args.kernel));
        if !failed_boots.is_empty() {
            return Err(BootFailed::new(failed_boots).into());
        }
        return Ok(());
    }
    let names: Vec<_> = failed.iter().map(|(l, _)| l.as_str()).collect();
    Err(anyhow::Error::from(
        StageError::command(format!(
            "{} of {} kernels of {} failed: {}",
            failed.len(),
            targets.len(),
            args.kernel,
            names.join(", ")
        ))
        .with_hint("the errors above say why; rerun one with --kernel <version>"),
    ))
}

/// The key of an entry whose recorded boot check failed.
fn failed_boot(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Hit(e) | Outcome::PeerBuilt(e) | Outcome::Stored(e) => (e.metadata.verify)
            .as_ref()
            .filter(|r| !r.verdict.passed)
            .map(|_| e.key.to_string()),
        Outcome::NotCached { .. } => None,
    }
}

/// The verdict line (after `label: `), and on a failure the console
/// lines the verifier kept.
pub(super) fn print_verdict(label: &str, record: &VerifyRecord, progress: &StderrProgress) {
    progress.println(&format!("{label}{}", verify::verdict_line(record)));
    if !record.verdict.passed {
        for line in &record.verdict.console_tail {
            progress.println(&format!("  | {line}"));
        }
    }
}

fn report(outcome: &Outcome, progress: &StderrProgress, verifying: bool) {
    report_outcome(outcome, progress);
    if verifying {
        match outcome {
            Outcome::Hit(e) | Outcome::PeerBuilt(e) | Outcome::Stored(e) => {
                if let Some(record) = &e.metadata.verify {
                    print_verdict("", record, progress);
                }
            }
            Outcome::NotCached { .. } => progress.println(
                "boot check skipped: only cached kernels are checked (their verdict is stored \
                 with them)",
            ),
        }
    }
}

fn report_outcome(outcome: &Outcome, progress: &StderrProgress) {
    match outcome {
        Outcome::Hit(entry) => progress.println(&format!("cache hit {}", entry.key)),
        Outcome::PeerBuilt(_) => {}
        Outcome::Stored(entry) => progress.println(&format!("cached {}", entry.key)),
        Outcome::NotCached { tree, reason, .. } => {
            let tree = tree.display();
            match reason {
                NotCached::ChangedDuringBuild => progress.println(&format!(
                    "source tree {tree} changed during the build; kernel built but not cached \
                     (run again once the tree is settled to cache it)"
                )),
                NotCached::Dirty { is_git: true } => {
                    progress.println(&format!(
                        "source tree {tree} has uncommitted changes; kernel built but not cached"
                    ));
                    progress.println(&format!("hint: {DIRTY_GIT_HINT}"));
                }
                NotCached::Dirty { is_git: false } => {
                    progress.println(&format!(
                        "source tree {tree} is not a git repository; kernel built but not cached"
                    ));
                    progress.println(&format!("hint: {NON_GIT_HINT}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cap_zero_is_rejected_with_reason() {
        assert_eq!(parse_cpu_cap("0").unwrap_err(), "must be at least 1 CPU");
        assert!(parse_cpu_cap("x").unwrap_err().contains("\"x\""));
        assert_eq!(parse_cpu_cap("4"), Ok(4));
    }

    #[test]
    fn cpu_cap_from_the_environment_is_blamed_on_the_variable() {
        let cmd = clap::Command::new("ktstr");
        let parse = |raw: &str, source| {
            CpuCapParser.parse_ref_(&cmd, None, std::ffi::OsStr::new(raw), source)
        };
        let unset = CpuCap {
            cpus: None,
            from_env: true,
        };
        assert_eq!(parse("", ValueSource::EnvVariable).unwrap(), unset);
        assert_eq!(
            parse("2", ValueSource::EnvVariable).unwrap(),
            CpuCap {
                cpus: Some(2),
                from_env: true
            }
        );
        assert_eq!(
            parse("0", ValueSource::EnvVariable)
                .unwrap_err()
                .render()
                .to_string(),
            "error: KTSTR_CPU_CAP=\"0\": must be at least 1 CPU\nktstr: hint: set it to a number \
             of CPUs (at least 1) or unset it\n"
        );
        // On the command line an empty value is an error, not "unset".
        assert!(parse("", ValueSource::CommandLine).is_err());
        assert_eq!(
            parse("3", ValueSource::CommandLine).unwrap(),
            CpuCap {
                cpus: Some(3),
                from_env: false
            }
        );
    }
}
