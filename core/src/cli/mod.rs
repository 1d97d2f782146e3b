//! Command line: parsing, dispatch and how errors reach the user.
//!
//! Results go to stdout; progress, warnings, errors and log events to
//! stderr, each line prefixed `ktstr: `, coloured only on a terminal and
//! never with `NO_COLOR`. Exit codes: 0 success, 1 failure, 2 usage
//! (clap's, and [`UsageError`] for a flag value judged after parsing),
//! 3 a kernel failed its boot check ([`BootFailed`]), 130 interrupted.

mod build;
mod build_json;
mod cache;
mod cache_gc;
mod config;
mod docs;
mod kernel;
mod kernel_clean;
mod kernel_verify;
mod locks;
mod log;
mod log_format;
pub(crate) mod plugins;
mod shell;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use ktstr_sdk::StageError;
use ktstr_sdk::context::{Cancellation, StageContext};
use ktstr_sdk::runner::InterruptibleRunner;

use crate::progress::{LABEL, StderrProgress};

pub use build::{BuildArgs, CpuCap};
pub use cache::CacheCommand;
pub use docs::DocsArgs;
pub use kernel::KernelCommand;
pub use locks::LocksArgs;
pub use log::LogArgs;
pub use plugins::{NewKind, PluginsCommand};
pub use shell::{CompletionsArgs, ManArgs};

/// Where to read on: shown under `ktstr --help` and in the man page.
const AFTER_HELP: &str = concat!(
    "Configuration: $KTSTR_CONFIG, else $XDG_CONFIG_HOME/ktstr/config.toml\n",
    "  (default ~/.config/ktstr/config.toml); none is needed.\n",
    "Environment: KTSTR_CACHE_DIR (cache root, default ~/.cache/ktstr),\n",
    "  KTSTR_CPU_CAP, KTSTR_BYPASS_LLC_LOCKS, KTSTR_PLUGIN_PATH, KTSTR_LOCK_DIR,\n",
    "  KTSTR_KERNEL_MIRROR, KTSTR_RELEASES_URL, NO_COLOR, RUST_LOG; an empty value\n",
    "  counts as unset.\n",
    "Exit codes: 0 success, 1 failure, 2 usage error, 3 a kernel failed its\n",
    "  boot check (--verify, kernel verify-boot), 130 interrupted.\n",
    "Documentation: `ktstr help <command>`, `ktstr man | man -l -`, and the\n",
    "  guides, built in: `ktstr docs` lists them (`ktstr docs cli` has every\n",
    "  flag, variable and error; config, sources, cache, plugin-authoring)."
);

#[derive(Debug, Parser)]
#[command(
    name = "ktstr",
    version,
    about = "Build Linux kernels for kernel and scheduler testing, and never build the same one twice",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// More on stderr: -v streams make's output line by line and logs
    /// ktstr's debug events; -vv logs ktstr's trace events and the debug
    /// events of the libraries it uses (HTTP, TLS).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a kernel, or return the cached build of the same inputs.
    // Boxed: the build flags outweigh every other command's (clippy::large_enum_variant).
    Build(Box<BuildArgs>),
    /// Inspect and prune cached kernels.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Copy one cached kernel between the local cache and remote tiers, or
    /// evict the least recently used ones (gc).
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
    /// Print one of ktstr's guides (config, sources, cache, ...), or list
    /// them.
    Docs(DocsArgs),
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

/// A bad flag value that could only be judged after parsing (a profile
/// is checked against the configurer the config file selects): a usage
/// error like clap's, exit 2, reported as its [`StageError`].
#[derive(Debug)]
pub struct UsageError(pub StageError);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for UsageError {}

/// Kernels that failed their boot check (`build --verify`, `kernel
/// verify-boot`): the command did its job, the kernel is bad. Exit 3, so a
/// script tells a broken kernel from a broken tool; the verdict lines were
/// printed already.
#[derive(Debug)]
pub struct BootFailed {
    pub keys: Vec<String>,
}

impl BootFailed {
    pub const EXIT: i32 = 3;

    pub fn new(keys: Vec<String>) -> Self {
        Self { keys }
    }
}

impl std::fmt::Display for BootFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "boot check failed for {}; {} cached, marked FAILED",
            self.keys.join(", "),
            if self.keys.len() == 1 {
                "the entry stays"
            } else {
                "the entries stay"
            }
        )
    }
}

impl std::error::Error for BootFailed {}

fn stage_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a StageError> {
    e.downcast_ref::<StageError>()
        .or_else(|| e.downcast_ref::<UsageError>().map(|u| &u.0))
}

/// Print an error chain the way every ktstr error looks.
pub fn report(err: &anyhow::Error) {
    if let Some(stage) = err.chain().find_map(stage_error) {
        let outer: Vec<String> = err
            .chain()
            .take_while(|e| stage_error(*e).is_none())
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
    // `ktstr` matches every ktstr crate (ktstr_sdk, ktstr_plugin_*).
    let filter = match verbose {
        0 => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        1 => tracing_subscriber::EnvFilter::new("warn,ktstr=debug"),
        _ => tracing_subscriber::EnvFilter::new("debug,ktstr=trace"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| SuspendingStderr)
        .with_ansi(colour_on_stderr())
        .event_format(log_format::Prefixed)
        .try_init();
}

/// Colour only on a terminal that can show it (not `TERM=dumb`), and never
/// with `NO_COLOR` set to anything non-empty (<https://no-color.org>).
pub fn colour_on_stderr() -> bool {
    crate::progress::redrawable() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Log events go to stderr above the status line, never into it.
struct SuspendingStderr;

impl std::io::Write for SuspendingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::suspended(|| std::io::stderr().write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// clap's rendering of a usage error, every line prefixed like every
/// other ktstr line: `ktstr: error: ...`, the value list and tips
/// indented under it, clap's pointer to --help as the hint.
fn prefix_usage_error(rendered: &str) -> String {
    let mut out = String::new();
    for (i, line) in rendered.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if i == 0 {
            let body = line.strip_prefix("error: ").unwrap_or(line);
            out.push_str(&format!("{LABEL}: error: {body}\n"));
        } else if line.starts_with(&format!("{LABEL}: ")) {
            out.push_str(&format!("{line}\n"));
        } else if let Some(rest) = line.strip_prefix("For more information, try ") {
            out.push_str(&format!(
                "{LABEL}: hint: for more information, try {rest}\n"
            ));
        } else if line.starts_with(' ') {
            out.push_str(&format!("{LABEL}: {line}\n"));
        } else {
            out.push_str(&format!("{LABEL}:   {line}\n"));
        }
    }
    out
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
            eprint!("{}", prefix_usage_error(&e.render().to_string()));
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
        Command::Kernel(KernelCommand::List(args)) => kernel::list(&args),
        Command::Kernel(KernelCommand::Clean(args)) => kernel::clean(&args),
        Command::Kernel(KernelCommand::Log(LogArgs { key })) => log::run(&key),
        Command::Kernel(KernelCommand::Verify { keys, json }) => kernel::verify(&keys, json),
        Command::Kernel(KernelCommand::VerifyBoot(args)) => kernel_verify::verify_boot(&args),
        Command::Plugins(PluginsCommand::List { json }) => plugins::list(json),
        Command::Plugins(PluginsCommand::Info { name, json }) => plugins::info(&name, json),
        Command::Plugins(PluginsCommand::New {
            name,
            kind,
            lang,
            sdk_path,
            dir,
        }) => plugins::new(&name, kind, lang, sdk_path.as_deref(), dir.as_deref()),
        Command::Locks(args) => locks::run(&args),
        Command::Cache(CacheCommand::Push { key, plugins }) => cache::push(&key, &plugins),
        Command::Cache(CacheCommand::Pull { key, plugins, json }) => {
            cache::pull(&key, &plugins, json)
        }
        Command::Cache(CacheCommand::Gc(args)) => cache_gc::run(&args),
        Command::Completions(args) => shell::completions(&args),
        Command::Man(args) => shell::man(&args),
        Command::Docs(args) => docs::run(&args),
        Command::Config(args) => config::run(&args),
    };
    match result {
        Ok(()) => 0,
        // The reader closed stdout (`| head`): it has what it wanted.
        Err(e) if crate::broken_pipe::is_broken_pipe(&e) => 0,
        Err(e) => {
            crate::progress::clear_status();
            report(&e);
            let cancelled = e
                .chain()
                .filter_map(|c| c.downcast_ref::<StageError>())
                .any(|s| s.kind == ktstr_sdk::ErrorKind::Cancelled);
            if cancelled {
                crate::interrupt::EXIT_INTERRUPTED
            } else if e.chain().any(|c| c.is::<UsageError>()) {
                2
            } else if e.chain().any(|c| c.is::<BootFailed>()) {
                BootFailed::EXIT
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
    fn every_line_of_a_usage_error_is_prefixed() {
        let err = Cli::try_parse_from(["ktstr", "plugins", "new", "x", "--kind", "foo"])
            .unwrap_err()
            .render()
            .to_string();
        let text = prefix_usage_error(&err);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ktstr: error: invalid value 'foo' for '--kind <KIND>'",
                "ktstr:   [possible values: source, reserver, configurer, builder, cache]",
                "ktstr: hint: for more information, try '--help'.",
            ]
        );
        let err = Cli::try_parse_from(["ktstr", "build"])
            .unwrap_err()
            .render()
            .to_string();
        for line in prefix_usage_error(&err).lines() {
            assert!(line.starts_with("ktstr: "), "{line:?}");
        }
    }
}
