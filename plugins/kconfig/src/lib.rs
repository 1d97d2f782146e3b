//! Built-in configurer: base config target + profile fragment + user fragments.
//!
//! Configuring a kernel for ktstr is: start from a base `.config` (the
//! profile's make target, `defconfig` or `tinyconfig`, only when the tree has
//! no `.config` yet), append the profile's baked-in fragment and then the
//! user's `--extra-kconfig` fragments, and let `make olddefconfig` resolve
//! dependencies. Appending relies on kbuild's rule that the last occurrence
//! of a symbol in `.config` wins, so user lines override baked-in ones.
//!
//! `olddefconfig` silently drops any line whose dependencies are unmet, and
//! a user overriding a baked-in symbol is easy to do by accident; both are
//! reported as warnings naming the `file:line` to edit. After the build,
//! [`validate`](Configurer::validate) refuses a kernel that lost a symbol
//! ktstr needs (sched_ext, BPF, BTF), with a hint per symbol, because such
//! a kernel builds fine and only fails much later when a test runs on it.
//!
//! Modules: [`fragment`] parses and merges fragment text and reads
//! `.config`; [`profiles`] holds the baked-in profiles.

pub mod fragment;
pub mod profiles;

use std::io::Write;
use std::path::{Path, PathBuf};

use ktstr_sdk::cache::KeyComponent;
use ktstr_sdk::configure::{ConfigureRequest, Configurer, ProfileInfo};
use ktstr_sdk::context::{CommandOutcome, CommandSpec, StageContext};
use ktstr_sdk::error::{ErrorKind, IoResultExt, Result, StageError};
use ktstr_sdk::fsread::{self, Follow};
use ktstr_sdk::hash::sha256_hex;
use ktstr_sdk::make_env;
use ktstr_sdk::registry::{BuiltinPlugin, Constructor};

use crate::fragment::{Assignment, DotConfig, Value};
use crate::profiles::Profile;

/// Lines of make output quoted in a failure.
const ERROR_TAIL_LINES: usize = 20;

/// Key component names this configurer contributes.
pub const COMPONENT_PROFILE: &str = "profile";
pub const COMPONENT_PROFILE_CONFIG: &str = "profile-config";
pub const COMPONENT_EXTRA_KCONFIG: &str = "extra-kconfig";

/// The built-in `kconfig` configurer. Stateless: everything comes from the
/// request and the tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct KconfigConfigurer;

impl KconfigConfigurer {
    pub fn new() -> Self {
        Self
    }
}

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: "kconfig",
        version: env!("CARGO_PKG_VERSION"),
        summary: "base config target + baked-in profile fragment + --extra-kconfig fragments, \
                  olddefconfig, then checks the symbols sched_ext needs",
        constructor: Constructor::Configurer(|_cfg| Ok(Box::new(KconfigConfigurer::new()))),
    }
}

/// A request resolved against the profiles and parsed: what to apply.
#[derive(Debug, Clone)]
struct Plan {
    profile: &'static Profile,
    /// The profile's fragment, merged (last wins, sorted).
    baked: Vec<Assignment>,
    /// The user fragments merged among themselves, in request order.
    user: Vec<Assignment>,
    /// Baked-in then user: what `.config` must end up carrying.
    all: Vec<Assignment>,
}

impl Plan {
    fn new(request: &ConfigureRequest) -> Result<Self> {
        let profile = profiles::find(&request.profile)?;
        let shipped = |origin: &str, text: &str| {
            fragment::parse(origin, text)
                .map_err(|e| StageError::internal(e.message).with_hint("this is a ktstr bug"))
        };
        let mut baked_lines = shipped(&profile.origin_name(), profile.fragment)?;
        if let Some((origin, text)) = profile.arch_fragment(&request_arch(request)) {
            baked_lines.extend(shipped(&origin, text)?);
        }
        let user_lines = request
            .fragments
            .iter()
            .map(|f| fragment::parse(&f.name, &f.content))
            .collect::<Result<Vec<_>>>()?;
        let baked = fragment::merge([baked_lines.as_slice()]);
        let user = fragment::merge(user_lines.iter().map(Vec::as_slice));
        let all = fragment::merge([baked.as_slice(), user.as_slice()]);
        Ok(Self {
            profile,
            baked,
            user,
            all,
        })
    }

    fn baked_value(&self, symbol: &str) -> Option<&Value> {
        self.baked
            .iter()
            .find(|a| a.symbol == symbol)
            .map(|a| &a.value)
    }

    fn is_user_symbol(&self, symbol: &str) -> bool {
        self.user.iter().any(|a| a.symbol == symbol)
    }
}

/// The kbuild arch the request configures for: the builder's `ARCH=`
/// make argument (the last one, as make takes it), else the host's. An
/// arch ktstr does not know is passed through: it has no arch fragment.
fn request_arch(request: &ConfigureRequest) -> String {
    match request
        .make_args
        .iter()
        .rev()
        .find_map(|a| a.strip_prefix("ARCH="))
    {
        Some(name) => {
            ktstr_sdk::arch::find(name).map_or_else(|_| name.to_string(), |a| a.name.into())
        }
        None => ktstr_sdk::arch::host().name.to_string(),
    }
}

fn dot_config_path(tree: &Path) -> PathBuf {
    tree.join(".config")
}

/// Largest `.config` read (a real one is ~300 KiB).
const MAX_DOT_CONFIG: u64 = 16 << 20;

/// Read `tree/.config`; `None` when it does not exist. A FIFO, device or
/// huge file in its place is an error naming it, at once.
fn read_dot_config(tree: &Path) -> Result<Option<DotConfig>> {
    let path = dot_config_path(tree);
    let bytes = fsread::read_optional(&path, "kernel config", MAX_DOT_CONFIG, Follow::Yes)?;
    Ok(bytes.map(|b| DotConfig::parse(&String::from_utf8_lossy(&b))))
}

/// Names of the user fragments, for hints: `a.kconfig, b.kconfig`.
fn fragment_names(request: &ConfigureRequest) -> String {
    request
        .fragments
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Configurer for KconfigConfigurer {
    fn profiles(&self) -> Vec<ProfileInfo> {
        profiles::PROFILES.iter().map(Profile::info).collect()
    }

    fn identity(&self, request: &ConfigureRequest) -> Result<Vec<KeyComponent>> {
        let plan = Plan::new(request)?;
        let mut components = vec![
            KeyComponent::new(COMPONENT_PROFILE, plan.profile.name),
            KeyComponent::new(
                COMPONENT_PROFILE_CONFIG,
                format!(
                    "{}+{}",
                    plan.profile.base_target,
                    sha256_hex(fragment::normalized(&plan.baked).as_bytes())
                ),
            ),
        ];
        // Fragments that assign nothing (only comments) change nothing, so
        // they do not change the key either.
        if !plan.user.is_empty() {
            components.push(KeyComponent::new(
                COMPONENT_EXTRA_KCONFIG,
                sha256_hex(fragment::normalized(&plan.user).as_bytes()),
            ));
        }
        Ok(components)
    }

    fn is_configured(&self, tree: &Path, request: &ConfigureRequest) -> Result<bool> {
        let plan = Plan::new(request)?;
        let Some(config) = read_dot_config(tree)? else {
            return Ok(false);
        };
        Ok(plan.all.iter().all(|a| a.is_satisfied_by(&config)))
    }

    fn configure(&self, tree: &Path, request: &ConfigureRequest, cx: &StageContext) -> Result<()> {
        let plan = Plan::new(request)?;
        cx.cancel.check()?;
        cx.progress
            .step(&format!("configuring ({})", plan.profile.name));
        let result = configure_steps(tree, request, &plan, cx);
        cx.progress.finish_step();
        result
    }

    fn validate(&self, tree: &Path, request: &ConfigureRequest) -> Result<()> {
        let profile = profiles::find(&request.profile)?;
        let path = dot_config_path(tree);
        let Some(config) = read_dot_config(tree)? else {
            return Err(StageError::not_found(format!(
                "kernel config {} does not exist",
                path.display()
            ))
            .with_hint("configure the tree before validating it; `ktstr build` does both"));
        };
        let want = Value::Set("y".to_string());
        let missing: Vec<_> = profile
            .required
            .iter()
            .filter(|r| config.get(r.symbol) != Some(&want))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut err = StageError::new(
            ErrorKind::Validation,
            format!(
                "kernel config is missing {} required symbol(s) in {}",
                missing.len(),
                path.display()
            ),
        );
        // One cause, so the rendered error reads
        // "...: CONFIG_A is not set, CONFIG_B=m".
        err.causes.push(
            missing
                .iter()
                .map(|r| fragment::describe_final(r.symbol, config.get(r.symbol)))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut hint: Vec<String> = missing
            .iter()
            .map(|r| format!("{}: {}", r.symbol, r.hint))
            .collect();
        if !request.fragments.is_empty() {
            hint.push(format!(
                "check that your --extra-kconfig fragment(s) {} do not disable them",
                fragment_names(request)
            ));
        }
        Err(err.with_hint(hint.join("\n")))
    }
}

/// The body of `configure`, between the progress step's start and finish.
fn configure_steps(
    tree: &Path,
    request: &ConfigureRequest,
    plan: &Plan,
    cx: &StageContext,
) -> Result<()> {
    let config_path = dot_config_path(tree);

    // 1. Base config, only for a tree without one (or when the host asks
    //    for a reset): an existing .config is the user's and is built upon.
    let has_config = config_path.try_exists().at("check for", &config_path)?;
    if has_config && !request.reset {
        tracing::debug!(config = %config_path.display(), "keeping the existing .config");
    } else {
        run_make(tree, request, plan.profile.base_target, cx)?;
        cx.cancel.check()?;
    }

    // 2. User lines that change a baked-in value: allowed (last wins), but
    //    said out loud, since it may defeat what the profile is for.
    for u in &plan.user {
        if let Some(baked) = plan.baked_value(&u.symbol)
            && *baked != u.value
        {
            cx.progress.warn(&format!(
                "{}: {} overrides the {} profile's {}",
                u.origin,
                u.spelled(),
                plan.profile.name,
                fragment::spell(&u.symbol, Some(baked))
            ));
        }
    }

    // 3. Append the merged lines; kbuild keeps the last occurrence.
    append_lines(&config_path, &plan.all)?;
    cx.cancel.check()?;

    // 4. Resolve dependencies.
    run_make(tree, request, "olddefconfig", cx)?;
    cx.cancel.check()?;

    // 5. Report requested lines that did not survive.
    let Some(config) = read_dot_config(tree)? else {
        return Err(StageError::command(format!(
            "make olddefconfig left no {} behind",
            config_path.display()
        ))
        .with_hint("check that the tree's Makefile is a kernel Makefile"));
    };
    report_dropped(plan, request, &config, cx);
    Ok(())
}

/// Warn about user lines, and (more softly) baked-in lines, that the final
/// `.config` does not carry.
fn report_dropped(plan: &Plan, request: &ConfigureRequest, config: &DotConfig, cx: &StageContext) {
    for u in &plan.user {
        if u.is_satisfied_by(config) {
            continue;
        }
        let advice = match u.value {
            Value::Set(_) => "check its dependencies",
            Value::NotSet => "another enabled option selects it",
        };
        cx.progress.warn(&format!(
            "{}: {} was dropped by olddefconfig (final: {}); {advice}",
            u.origin,
            u.spelled(),
            fragment::describe_final(&u.symbol, config.get(&u.symbol)),
        ));
    }
    for b in &plan.baked {
        if plan.is_user_symbol(&b.symbol) || b.is_satisfied_by(config) {
            continue;
        }
        let head = format!(
            "{}: {} was dropped by olddefconfig (final: {})",
            b.origin,
            b.spelled(),
            fragment::describe_final(&b.symbol, config.get(&b.symbol)),
        );
        match plan.profile.required(&b.symbol) {
            Some(required) => {
                let mut msg = format!(
                    "{head}; ktstr requires it, so the build will fail validation: {}",
                    required.hint
                );
                if !request.fragments.is_empty() {
                    msg.push_str(&format!(
                        "; check that your --extra-kconfig fragment(s) {} do not disable its \
                         dependencies",
                        fragment_names(request)
                    ));
                }
                cx.progress.warn(&msg);
            }
            None if request.fragments.is_empty() => cx.progress.note(&format!(
                "{head}; this tree or architecture may not support it"
            )),
            None => cx.progress.note(&format!(
                "{head}; this tree may not support it, or your --extra-kconfig fragment(s) {} \
                 disable its dependencies",
                fragment_names(request)
            )),
        }
    }
}

/// Append `lines` to `.config`, starting on a fresh line.
fn append_lines(config_path: &Path, lines: &[Assignment]) -> Result<()> {
    let existing = fsread::read_bounded(config_path, "kernel config", MAX_DOT_CONFIG, Follow::Yes)?;
    let mut text = String::new();
    if existing.last().is_some_and(|b| *b != b'\n') {
        text.push('\n');
    }
    text.push_str(&fragment::normalized(lines));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(config_path)
        .at("open", config_path)?;
    file.write_all(text.as_bytes())
        .at("append to", config_path)?;
    Ok(())
}

/// `make -jN LOCALVERSION= <builder's make args> [O=tree] <target>` in
/// `tree` (or in the source, for an out-of-tree build directory), in the
/// sandbox and the controlled environment, streaming output.
fn run_make(
    tree: &Path,
    request: &ConfigureRequest,
    target: &str,
    cx: &StageContext,
) -> Result<()> {
    let (cwd, out_of_tree) = match &request.source_dir {
        Some(source) => (source.as_path(), Some(tree)),
        None => (tree, None),
    };
    let args = [
        format!("-j{}", request.make_jobs.max(1)),
        "LOCALVERSION=".to_string(),
    ]
    .into_iter()
    .chain(request.make_args.iter().cloned())
    .chain(out_of_tree.map(|o| format!("O={}", o.display())))
    .chain(std::iter::once(target.to_string()));
    let mut spec = make_env::controlled(CommandSpec::new("make").cwd(cwd).args(args));
    spec.cgroup_procs = request.sandbox_procs.clone();
    tracing::debug!(command = %spec.display(), tree = %tree.display(), "running make");
    let outcome = cx.runner.run(&spec, &mut |line| cx.progress.line(line))?;
    if outcome.success() {
        return Ok(());
    }
    // Ctrl-C reaches make too: report the interruption, not a failure.
    cx.cancel.check()?;
    Err(make_failure(cwd, target, &spec, &outcome))
}

/// A `make` that ran and failed: target, tree and exit status in the
/// message, the output tail as one cause, what to do in the hint.
fn make_failure(
    tree: &Path,
    target: &str,
    spec: &CommandSpec,
    outcome: &CommandOutcome,
) -> StageError {
    let status = match outcome.code {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".to_string(),
    };
    let mut err = StageError::command(format!(
        "make {target} failed in {} ({status})",
        tree.display()
    ));
    let tail = outcome.failure_tail(ERROR_TAIL_LINES);
    if !tail.is_empty() {
        err.causes
            .push(format!("last lines of output:\n{}", tail.join("\n")));
    }
    let advice = if target == "olddefconfig" {
        "the fragment lines were appended to the end of .config; check the output for the \
         offending line"
    } else {
        "check that this is a Linux kernel source tree and that flex, bison and a C compiler \
         are installed (on Debian: apt-get install build-essential flex bison bc)"
    };
    err.with_hint(format!(
        "{advice}; reproduce with `cd {} && {}`",
        tree.display(),
        spec.display()
    ))
}

#[cfg(test)]
mod tests;
