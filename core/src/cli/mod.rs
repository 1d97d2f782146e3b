//! Command line: parsing, dispatch and how errors reach the user.
//!
//! Results go to stdout; progress, warnings and errors to stderr, each
//! line prefixed `ktstr: `. Exit codes: 0 success, 1 failure, 2 usage.

mod build;
mod cache;
mod kernel;
mod locks;
mod log;
mod plugins;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ktstr_sdk::StageError;
use ktstr_sdk::context::{Cancellation, StageContext};
use ktstr_sdk::runner::InterruptibleRunner;

use crate::progress::{LABEL, StderrProgress};

#[derive(Debug, Parser)]
#[command(
    name = "ktstr",
    version,
    about = "Build Linux kernels for kernel and scheduler testing, and never build the same one twice"
)]
pub struct Cli {
    /// More on stderr: -v streams make's output line by line and logs at
    /// debug level, -vv at trace level (like RUST_LOG=ktstr=debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a kernel, or return the cached build of the same inputs.
    Build(BuildArgs),
    /// Inspect and prune cached kernels.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Copy one cached kernel between the local cache and remote tiers.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show every CPU (LLC), source-tree, mirror and cache-entry lock and
    /// who holds it.
    Locks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Redraw every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Show the stage plugins this ktstr can use.
    #[command(subcommand)]
    Plugins(PluginsCommand),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Kernel source: a path to a kernel tree.
    #[arg(long, value_name = "SPEC")]
    pub kernel: String,
    /// Configuration profile: `default` (defconfig + sched_ext test
    /// options) or `tiny` (tinyconfig + the minimum for sched_ext).
    #[arg(long, default_value = "default", value_name = "NAME")]
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
    #[arg(long, value_name = "N", value_parser = parse_cpu_cap)]
    pub cpu_cap: Option<usize>,
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
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    pub arch: Option<String>,
    /// Compiler family: gcc (default), gcc-N, clang or llvm (LLVM=1 with its
    /// integrated assembler), llvm-N (LLVM=-N).
    #[arg(long, value_name = "NAME", value_parser = parse_toolchain)]
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
}

fn parse_arch(raw: &str) -> Result<String, String> {
    ktstr_sdk::arch::find(raw)
        .map(|a| a.name.to_string())
        .map_err(|e| match e.hint {
            Some(h) => format!("not an architecture ktstr builds; {h}"),
            None => e.message,
        })
}

fn parse_toolchain(raw: &str) -> Result<String, String> {
    ktstr_plugin_kbuild::toolchain::Family::parse(raw)
        .map(|_| raw.to_string())
        .map_err(|e| match e.hint {
            Some(h) => format!("not a toolchain ktstr knows; {h}"),
            None => e.message,
        })
}

pub const CPU_CAP_ENV: &str = "KTSTR_CPU_CAP";
pub const BYPASS_ENV: &str = "KTSTR_BYPASS_LLC_LOCKS";

/// `KTSTR_BYPASS_LLC_LOCKS` is set to something non-empty.
pub fn bypass_requested() -> bool {
    ktstr_sdk::paths::env_nonempty(BYPASS_ENV).is_some()
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

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// List cached kernels.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list the entries of this plugin's cache tiers (NAME or
        /// library path); repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
        /// Also list the entries of every remote tier (config `caches`).
        #[arg(long)]
        remote: bool,
    },
    /// Print the build log of a cached kernel (make's whole output) to stdout.
    Log {
        /// The entry's key (`ktstr kernel list`).
        key: String,
    },
    /// Remove cached kernels.
    Clean {
        /// Keep the N most recently built entries.
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Do not ask for confirmation (required off a terminal).
        #[arg(long)]
        force: bool,
        /// Also clean this plugin's (writable) cache tiers; repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
    },
    /// Check local entries' files against their recorded sha256 digests;
    /// a corrupt entry is removed so its next build rebuilds it.
    Verify {
        /// Keys to check (default: every local entry).
        keys: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Upload a local entry to every writable remote tier.
    Push {
        /// The entry's key (`ktstr kernel list`).
        key: String,
        /// Load a plugin (e.g. `s3-cache`) for this command; repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
    },
    /// Download an entry from the first remote tier that has it.
    Pull {
        /// The entry's key (`ktstr kernel list --remote`).
        key: String,
        /// Load a plugin (e.g. `s3-cache`) for this command; repeatable.
        #[arg(long = "plugin", value_name = "NAME|PATH")]
        plugins: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List built-in plugins and every plugin library found, with its ABI
    /// status.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's stages, version, library path and config keys.
    Info {
        /// A built-in or plugin name, or a library path.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a plugin crate that builds as is (`cargo build --release`).
    New {
        /// Plugin name (letters, digits, -): the crate is ktstr-plugin-NAME.
        name: String,
        /// The stage the plugin provides.
        #[arg(long, value_enum)]
        kind: plugins::NewKind,
        /// The ktstr-sdk crate to depend on (a path dependency). Default:
        /// the sdk of the source tree this ktstr was built from.
        #[arg(long, value_name = "DIR")]
        sdk_path: Option<PathBuf>,
        /// Where to create the crate. Default: ./ktstr-plugin-NAME.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The host's stage context: real processes, stderr progress.
pub fn host_context() -> (StageContext, Arc<StderrProgress>) {
    let progress = Arc::new(StderrProgress::new());
    let cancel = Cancellation::new();
    let cx = StageContext {
        progress: progress.clone(),
        runner: Arc::new(InterruptibleRunner::new(cancel.clone())),
        cancel,
    };
    crate::interrupt::install(&cx.cancel);
    (cx, progress)
}

/// Print an error chain the way every ktstr error looks.
pub fn report(err: &anyhow::Error) {
    if let Some(stage) = err.chain().find_map(|e| e.downcast_ref::<StageError>()) {
        let outer: Vec<String> = err
            .chain()
            .take_while(|e| e.downcast_ref::<StageError>().is_none())
            .map(ToString::to_string)
            .collect();
        let mut text = outer.join(": ");
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&stage.message);
        // One-line causes extend the sentence; multi-line ones (a build
        // log tail) follow as an indented block.
        let mut blocks = Vec::new();
        for cause in &stage.causes {
            if cause.contains('\n') {
                blocks.push(cause);
            } else {
                text.push_str(&format!(": {cause}"));
            }
        }
        eprintln!("{LABEL}: error: {text}");
        for block in blocks {
            for line in block.lines() {
                eprintln!("{LABEL}:   {line}");
            }
        }
        if let Some(hint) = &stage.hint {
            let mut lines = hint.lines();
            if let Some(first) = lines.next() {
                eprintln!("{LABEL}: hint: {first}");
            }
            for line in lines {
                eprintln!("{LABEL}:       {line}");
            }
        }
    } else {
        eprintln!("{LABEL}: error: {err:#}");
    }
}

fn init_tracing(verbose: u8) {
    let filter = match verbose {
        0 => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        1 => tracing_subscriber::EnvFilter::new("warn,ktstr=debug"),
        _ => tracing_subscriber::EnvFilter::new("warn,ktstr=trace"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

/// Entry point of the `ktstr` binary; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print to stdout, exit 0.
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let body = rendered.strip_prefix("error: ").unwrap_or(&rendered);
            eprint!("{LABEL}: error: {body}");
            return 2;
        }
    };
    let mut cli = cli;
    if let Command::Build(args) = &mut cli.command
        && args.cpu_cap.is_none()
        && let Some(raw) = ktstr_sdk::paths::env_nonempty(CPU_CAP_ENV)
    {
        match parse_cpu_cap(&raw) {
            Ok(n) => args.cpu_cap = Some(n),
            Err(why) => {
                eprintln!(
                    "{LABEL}: error: {CPU_CAP_ENV}={raw:?}: {why}\n{LABEL}: hint: set it to a \
                     number of CPUs (at least 1) or unset it"
                );
                return 2;
            }
        }
    }
    if let Command::Build(args) = &cli.command
        && args.cpu_cap.is_some()
        && bypass_requested()
    {
        let from = if std::env::args().any(|a| a.starts_with("--cpu-cap")) {
            "--cpu-cap"
        } else {
            CPU_CAP_ENV
        };
        eprintln!(
            "{LABEL}: error: {from} conflicts with {BYPASS_ENV}: a CPU cap is a reservation, \
             and the bypass skips reservation\n{LABEL}: hint: unset {BYPASS_ENV} to enforce the \
             cap, or drop {from} to build without a reservation"
        );
        return 2;
    }
    init_tracing(cli.verbose);
    crate::progress::set_stream_output(cli.verbose > 0);
    let result = match cli.command {
        Command::Build(args) => build::run(&args),
        Command::Kernel(KernelCommand::List {
            json,
            plugins,
            remote,
        }) => kernel::list(json, &plugins, remote),
        Command::Kernel(KernelCommand::Clean {
            keep,
            force,
            plugins,
        }) => kernel::clean(keep, force, &plugins),
        Command::Kernel(KernelCommand::Log { key }) => log::run(&key),
        Command::Kernel(KernelCommand::Verify { keys, json }) => kernel::verify(&keys, json),
        Command::Plugins(PluginsCommand::List { json }) => plugins::list(json),
        Command::Plugins(PluginsCommand::Info { name, json }) => plugins::info(&name, json),
        Command::Plugins(PluginsCommand::New {
            name,
            kind,
            sdk_path,
            dir,
        }) => plugins::new(&name, kind, sdk_path.as_deref(), dir.as_deref()),
        Command::Locks { json, watch } => locks::run(json, watch),
        Command::Cache(CacheCommand::Push { key, plugins }) => cache::push(&key, &plugins),
        Command::Cache(CacheCommand::Pull { key, plugins }) => cache::pull(&key, &plugins),
    };
    match result {
        Ok(()) => 0,
        // The reader closed stdout (`| head`): it has what it wanted.
        Err(e) if crate::broken_pipe::is_broken_pipe(&e) => 0,
        Err(e) => {
            report(&e);
            let cancelled = e
                .chain()
                .filter_map(|c| c.downcast_ref::<StageError>())
                .any(|s| s.kind == ktstr_sdk::ErrorKind::Cancelled);
            if cancelled {
                crate::interrupt::EXIT_INTERRUPTED
            } else {
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cpu_cap_zero_is_rejected_with_reason() {
        assert_eq!(parse_cpu_cap("0").unwrap_err(), "must be at least 1 CPU");
        assert!(parse_cpu_cap("x").unwrap_err().contains("\"x\""));
        assert_eq!(parse_cpu_cap("4"), Ok(4));
    }
}
