//! Command line: parsing, dispatch and how errors reach the user.
//!
//! Results go to stdout; progress, warnings and errors to stderr, each
//! line prefixed `ktstr: `. Exit codes: 0 success, 1 failure, 2 usage.

mod build;
mod cache;
mod config;
mod kernel;
mod locks;
mod log;
mod plugins;
mod shell;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use ktstr_sdk::StageError;
use ktstr_sdk::context::{Cancellation, StageContext};
use ktstr_sdk::runner::InterruptibleRunner;

use crate::progress::{LABEL, StderrProgress};

pub use build::{BuildArgs, CpuCap};
pub use cache::CacheCommand;
pub use kernel::KernelCommand;
pub use locks::LocksArgs;
pub use log::LogArgs;
pub use plugins::{NewKind, PluginsCommand};
pub use shell::{CompletionsArgs, ManArgs};

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
    Locks(LocksArgs),
    /// Show the stage plugins this ktstr can use.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print a shell completion script: `source <(ktstr completions bash)`.
    Completions(CompletionsArgs),
    /// Print the man page (`ktstr man | man -l -`), or write one page per
    /// command with --out-dir.
    Man(ManArgs),
    /// Show the effective configuration for this host, each value with
    /// where it came from (default, file:line, env, flag).
    Config(config::ConfigArgs),
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
    if let Command::Build(args) = &cli.command
        && let Some(conflict) = args.conflict()
    {
        eprintln!("{LABEL}: error: {conflict}");
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
        Command::Kernel(KernelCommand::Log(LogArgs { key })) => log::run(&key),
        Command::Kernel(KernelCommand::Verify { keys, json }) => kernel::verify(&keys, json),
        Command::Plugins(PluginsCommand::List { json }) => plugins::list(json),
        Command::Plugins(PluginsCommand::Info { name, json }) => plugins::info(&name, json),
        Command::Plugins(PluginsCommand::New {
            name,
            kind,
            sdk_path,
            dir,
        }) => plugins::new(&name, kind, sdk_path.as_deref(), dir.as_deref()),
        Command::Locks(LocksArgs { json, watch }) => locks::run(json, watch),
        Command::Cache(CacheCommand::Push { key, plugins }) => cache::push(&key, &plugins),
        Command::Cache(CacheCommand::Pull { key, plugins }) => cache::pull(&key, &plugins),
        Command::Completions(args) => shell::completions(&args),
        Command::Man(args) => shell::man(&args),
        Command::Config(args) => config::run(&args),
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
}
