//! `ktstr build`.

use anyhow::Result;
use ktstr_sdk::build::Variant;
use ktstr_sdk::configure::{ConfigureRequest, Fragment};
use ktstr_sdk::source::KernelSpec;

use super::{BuildArgs, host_context};
use ktstr_sdk::StageError;

use crate::host::{self, Overrides};
use crate::pipeline::{self, BuildRequestSpec, NotCached, Outcome};
use crate::progress::StderrProgress;

const DIRTY_GIT_HINT: &str = "commit or stash your changes to cache builds of this tree";
const NON_GIT_HINT: &str = "run `git init && git add -A && git commit -m base` in the tree so \
     ktstr can identify its content and cache its builds";

pub fn run(args: &BuildArgs) -> Result<()> {
    let (cx, progress) = host_context();
    let mut setup = host::setup(&Overrides {
        plugins: args.plugins.clone(),
        reserver: args.reserver.clone(),
    })?;
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
        cpu_cap: args.cpu_cap,
        explain: args.explain,
        keep_source: args.keep_source,
        bypass_locks: super::bypass_requested(),
        variant,
        output,
    };
    if args.skip_sha256 {
        ktstr_sdk::switch::apply(ktstr_sdk::switch::SKIP_SHA256, &mut setup.selection.configs);
    }
    let stages = setup.stages()?;
    let root = ktstr_sdk::paths::cache_root()?;
    let targets = pipeline::resolve(&stages, &request.spec, &cx)?;
    if targets.len() == 1 {
        let outcome = pipeline::run(&stages, &request, &targets[0], &root, &cx)?;
        report(&outcome, &progress);
        println!("{}", outcome.image().display());
        return Ok(());
    }

    // A range: build each member, carry on past failures, sum up.
    let mut failed = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let label = target.label();
        progress.println(&format!("[{}/{}] {label}", i + 1, targets.len()));
        match pipeline::run(&stages, &request, target, &root, &cx) {
            Ok(outcome) => {
                report(&outcome, &progress);
                println!("{label} {}", outcome.image().display());
            }
            Err(e) if e.kind == ktstr_sdk::ErrorKind::Cancelled => return Err(e.into()),
            Err(e) => {
                super::report(&anyhow::Error::from(e.clone()));
                failed.push((label, e));
            }
        }
    }
    let built = targets.len() - failed.len();
    if failed.is_empty() {
        progress.println(&format!("all {} kernels of {} built", built, args.kernel));
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

fn report(outcome: &Outcome, progress: &StderrProgress) {
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
