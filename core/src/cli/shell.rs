//! `ktstr completions SHELL` and `ktstr man`: what shells and `man` need,
//! generated from the clap definition the parser itself uses (with
//! clap_complete and clap_mangen), so they cannot drift from the flags.
//!
//! Both render into memory and then write stdout once, so a reader that
//! closes the pipe early (`| head`) ends the command quietly instead of
//! panicking inside a generator.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for; load the output with, e.g.,
    /// `source <(ktstr completions bash)`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command (ktstr.1, ktstr-build.1, ...) into DIR
    /// instead of printing ktstr.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut super::Cli::command(), "ktstr", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(())
}

pub fn man(args: &ManArgs) -> Result<()> {
    let cmd = super::Cli::command();
    let Some(dir) = &args.out_dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::io::stdout().lock().write_all(&page)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--out-dir {}: cannot create it", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("--out-dir {}: cannot write the pages", dir.display()))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    let mut out = std::io::stdout().lock();
    for page in pages {
        writeln!(out, "{}", page.display())?;
    }
    Ok(())
}
