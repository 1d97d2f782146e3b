//! `ktstr build`.

use anyhow::Result;
use ktstr_sdk::configure::ConfigureRequest;
use ktstr_sdk::source::KernelSpec;

use super::{BuildArgs, host_context};
use crate::pipeline::{self, BuildRequestSpec, NotCached, Outcome};
use crate::registry::Stages;

const DIRTY_GIT_HINT: &str = "commit or stash your changes to cache builds of this tree";
const NON_GIT_HINT: &str = "run `git init && git add -A && git commit -m base` in the tree so \
     ktstr can identify its content and cache its builds";

pub fn run(args: &BuildArgs) -> Result<()> {
    let (cx, progress) = host_context();
    let fragments = args
        .extra_kconfig
        .iter()
        .map(|p| pipeline::read_fragment(p))
        .collect::<Result<Vec<_>, _>>()?;
    let request = BuildRequestSpec {
        spec: KernelSpec::new(&args.kernel),
        configure: ConfigureRequest {
            profile: args.profile.clone(),
            fragments,
            make_jobs: 1,
            sandbox_procs: None,
            reset: false,
        },
        clean: args.clean,
        force: args.force,
        cpu_cap: args.cpu_cap,
        explain: args.explain,
    };
    let stages = Stages::builtin()?;
    let root = ktstr_sdk::paths::cache_root()?;
    let outcome = pipeline::run(&stages, &request, &root, &cx)?;
    match &outcome {
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
    println!("{}", outcome.image().display());
    Ok(())
}
