//! `ktstr docs [TOPIC]`: the guides of docs/, compiled into the binary.
//!
//! `cargo install` copies no documentation, so a hint that said "see
//! docs/cache.md" pointed at a file the user does not have. Hints name
//! `ktstr docs cache` instead, which works wherever the binary is.

use std::io::Write;

use anyhow::Result;
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub struct DocsArgs {
    /// The guide to print (markdown); without one, list the guides.
    #[arg(value_enum)]
    pub topic: Option<Topic>,
}

/// One guide; the value name is the file name under docs/ without `.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topic {
    Cli,
    Config,
    Sources,
    SourcesGit,
    BuildInputs,
    BuildFarm,
    Cache,
    RemoteCache,
    Reservation,
    PluginAuthoring,
    PluginAbi,
    PluginProtocol,
    Architecture,
    Verify,
}

impl Topic {
    pub fn text(self) -> &'static str {
        match self {
            Topic::Cli => include_str!("../../../docs/cli.md"),
            Topic::Config => include_str!("../../../docs/config.md"),
            Topic::Sources => include_str!("../../../docs/sources.md"),
            Topic::SourcesGit => include_str!("../../../docs/sources-git.md"),
            Topic::BuildInputs => include_str!("../../../docs/build-inputs.md"),
            Topic::BuildFarm => include_str!("../../../docs/build-farm.md"),
            Topic::Cache => include_str!("../../../docs/cache.md"),
            Topic::RemoteCache => include_str!("../../../docs/remote-cache.md"),
            Topic::Reservation => include_str!("../../../docs/reservation.md"),
            Topic::PluginAuthoring => include_str!("../../../docs/plugin-authoring.md"),
            Topic::PluginAbi => include_str!("../../../docs/plugin-abi.md"),
            Topic::PluginProtocol => include_str!("../../../docs/plugin-protocol.md"),
            Topic::Architecture => include_str!("../../../docs/architecture.md"),
            Topic::Verify => include_str!("../../../docs/verify.md"),
        }
    }

    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// The guide's title: its first `# ` heading.
    pub fn title(self) -> &'static str {
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .unwrap_or("")
    }
}

pub fn run(args: &DocsArgs) -> Result<()> {
    let text = match args.topic {
        Some(topic) => topic.text().to_string(),
        None => {
            let mut list = String::from("Guides (ktstr docs TOPIC):\n");
            for topic in Topic::value_variants() {
                list.push_str(&format!("  {:<18}{}\n", topic.name(), topic.title()));
            }
            list
        }
    };
    // One write, so `| head` closing the pipe ends the command quietly.
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guide_in_docs_is_a_topic_and_every_topic_has_a_title() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".md")
                    .map(String::from)
            })
            .filter(|name| name != "benchmarks")
            .collect();
        on_disk.sort();
        let mut topics: Vec<String> = Topic::value_variants().iter().map(|t| t.name()).collect();
        topics.sort();
        assert_eq!(topics, on_disk, "docs/ and `ktstr docs` disagree");
        for topic in Topic::value_variants() {
            assert!(
                !topic.title().is_empty(),
                "{} has no # heading",
                topic.name()
            );
        }
    }

    /// Every "`ktstr docs X`" a hint or help text cites names a real guide.
    #[test]
    fn every_cited_guide_exists() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut cited = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(root)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if path.is_dir() {
                    if name != "target" && name != ".git" {
                        stack.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "rs" || e == "md") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    for rest in text.split("`ktstr docs ").skip(1) {
                        let topic: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                            .collect();
                        cited.push((path.clone(), topic));
                    }
                }
            }
        }
        assert!(cited.len() >= 5, "the hints cite guides: {cited:?}");
        for (path, topic) in cited {
            if topic.is_empty() {
                continue;
            }
            assert!(
                Topic::from_str(&topic, false).is_ok(),
                "{} cites `ktstr docs {topic}`, which is no guide",
                path.display()
            );
        }
    }
}
