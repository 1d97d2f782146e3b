//! Compiler wrappers: distcc, icecream, ccache and sccache in front of the
//! compiler, chosen with `--wrapper NAME` or `wrapper = "NAME"` in
//! `[plugin.kbuild]` (per host through `[hosts."…".plugin.kbuild]`).
//!
//! A wrapper changes where and how often the compiler runs, never which
//! compiler: the cache key is the plain build's (the `builder` component
//! holds the make arguments without the wrapper, the `toolchain` one the
//! compiler's own answers), so an entry built through distcc is a hit for
//! a plain build and the other way round. What the premise needs (the same
//! compiler on every distcc host) is checked where it can be: a distcc
//! host whose compiler stamps its objects differently is a warning.
//!
//! The engine is wired the way each documents for kbuild: `CC="<engine>
//! <cc>"` and `HOSTCC="<engine> <hostcc>"` on make's command line, the
//! engine's own variables (`DISTCC_*`, `ICECC_*`, `CCACHE_*`, `SCCACHE_*`)
//! passed through the controlled environment. Only the build's `make`
//! gets the wrapper; configuring stays local (its probes are tiny). An
//! engine that cannot run here (not installed, no distccd reachable, no
//! iceccd) means a local build and one warning, or an error when the user
//! said the wrapper is required.

mod distcc;

use std::path::PathBuf;

use ktstr_sdk::context::{CommandSpec, StageContext};
use ktstr_sdk::error::{Result, StageError};
use ktstr_sdk::make_env;

use crate::toolchain::which;

/// The engines ktstr can put in front of the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Distcc,
    Icecc,
    Ccache,
    Sccache,
}

impl Engine {
    pub const ALL: [Engine; 4] = [Self::Distcc, Self::Icecc, Self::Ccache, Self::Sccache];

    /// The engine's command, which is also its name for `--wrapper`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Distcc => "distcc",
            Self::Icecc => "icecc",
            Self::Ccache => "ccache",
            Self::Sccache => "sccache",
        }
    }

    /// The Debian package that installs it.
    fn package(self) -> &'static str {
        match self {
            Self::Distcc => "distcc",
            Self::Icecc => "icecc",
            Self::Ccache => "ccache",
            Self::Sccache => "sccache",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == raw)
    }

    /// Variables the engine needs to leave the compiler's identity alone.
    /// distcc otherwise runs `gcc` as `x86_64-linux-gnu-gcc`, whose
    /// `--version` line kbuild records in `CONFIG_CC_VERSION_TEXT` and in
    /// the kernel's banner.
    pub fn env(self) -> Vec<(String, String)> {
        match self {
            Self::Distcc => vec![("DISTCC_NO_REWRITE_CROSS".into(), "1".into())],
            _ => Vec::new(),
        }
    }
}

/// `--wrapper` and `wrapper = ...`: an engine, or `none` for no wrapper
/// (so a run can drop the config file's choice).
pub fn parse_wrapper(raw: &str) -> Result<Option<Engine>> {
    if raw == "none" {
        return Ok(None);
    }
    Engine::parse(raw).map(Some).ok_or_else(|| {
        StageError::invalid_input(format!("wrapper {raw}: not a compiler wrapper ktstr knows"))
            .with_hint("use distcc, icecc, ccache, sccache or none (see `ktstr docs build-farm`)")
    })
}

/// The names `--wrapper` accepts.
pub fn wrapper_names() -> Vec<&'static str> {
    Engine::ALL
        .iter()
        .map(|e| e.name())
        .chain(["none"])
        .collect()
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub engine: Engine,
    /// A missing engine is an error instead of a local build.
    pub required: bool,
    /// `make -j` to use with the engine instead of its own capacity.
    pub jobs: Option<usize>,
}

/// A wrapper that is ready, and how the build uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrap {
    pub engine: Engine,
    /// `make -j`.
    pub jobs: usize,
    /// What `jobs` comes from, for the progress line (`12 remote slots`).
    pub capacity: String,
    /// Added to make's environment ([`Engine::env`]).
    pub env: Vec<(String, String)>,
}

/// The first line `command --version` prints (with the engine's `env`),
/// as kbuild's `CC_VERSION_TEXT` takes it.
fn version_line(cx: &StageContext, command: &str, env: &[(String, String)]) -> Option<String> {
    let mut words = command.split_whitespace();
    let mut spec = CommandSpec::new(words.next()?).args(words).arg("--version");
    spec.env = env.to_vec();
    let out = cx.runner.capture(&make_env::controlled(spec)).ok()?;
    let line = out.stdout.lines().next()?.trim().to_string();
    (out.code == Some(0) && !line.is_empty()).then_some(line)
}

/// sccache compiles through a server its first client starts and that
/// stays up for later builds. Started by a compile, it would inherit the
/// build's locks and hold them for as long as it runs (the next build of the
/// tree would wait for it); started here as a [`CommandSpec::service`], it
/// holds none. "Address in use" is a server already running.
fn start_service(engine: Engine, cx: &StageContext) -> std::result::Result<(), Unavailable> {
    if engine != Engine::Sccache {
        return Ok(());
    }
    let mut spec = CommandSpec::new("sccache").arg("--start-server").service();
    spec.env = engine.env();
    let failed = |why: String| Unavailable {
        why: format!("its server did not start: {why}"),
        fix: "run `sccache --start-server` by hand to see why (SCCACHE_* settings)".into(),
    };
    let out = cx
        .runner
        .capture(&make_env::controlled(spec))
        .map_err(|e| failed(e.to_string()))?;
    let said = format!("{}{}", out.stdout, out.stderr);
    if out.code == Some(0) || said.contains("Address in use") {
        return Ok(());
    }
    Err(failed(
        said.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .to_string(),
    ))
}

/// The wrapped compiler must say what the compiler says: kbuild puts that
/// line in `.config` and the kernel, so anything else is another kernel.
fn same_identity(
    engine: Engine,
    cc: &str,
    cx: &StageContext,
) -> std::result::Result<(), Unavailable> {
    let wrapped = format!("{} {cc}", engine.name());
    let plain = version_line(cx, cc, &[]);
    let through = version_line(cx, &wrapped, &engine.env());
    if plain.is_some() && plain == through {
        return Ok(());
    }
    Err(Unavailable {
        why: format!(
            "`{wrapped} --version` answers {}, not {} as `{cc} --version` does; kbuild records \
             that line in the kernel (CONFIG_CC_VERSION_TEXT), so it would build another kernel",
            through.map_or("nothing".into(), |l| format!("`{l}`")),
            plain.map_or("nothing".into(), |l| format!("`{l}`")),
        ),
        fix: format!("fix or update {} so it runs {cc} unchanged", engine.name()),
    })
}

impl Wrap {
    /// `distcc gcc` for `gcc`; a command that already starts with the
    /// engine is left alone.
    pub fn command(&self, cc: &str) -> String {
        if cc.split_whitespace().next() == Some(self.engine.name()) {
            cc.to_string()
        } else {
            format!("{} {cc}", self.engine.name())
        }
    }

    /// `building with distcc (12 remote slots, -j12; local: 2 CPUs)`.
    pub fn step(&self, local_cpus: usize) -> String {
        let cpus = if local_cpus == 1 { "CPU" } else { "CPUs" };
        format!(
            "building with {} ({}-j{}; local: {local_cpus} {cpus})",
            self.engine.name(),
            if self.capacity.is_empty() {
                String::new()
            } else {
                format!("{}, ", self.capacity)
            },
            self.jobs
        )
    }
}

/// Why an engine cannot be used here, and what fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub why: String,
    pub fix: String,
}

/// Check that `choice`'s engine can run, and size the build for it.
/// `cc` is the compiler make will run (for distcc's compiler check),
/// `local_jobs` what the reservation granted. An engine that cannot run
/// is `Ok(None)` after one warning, or an error when it is required.
pub fn resolve(
    choice: Choice,
    cc: &str,
    local_jobs: usize,
    cx: &StageContext,
) -> Result<Option<Wrap>> {
    let engine = choice.engine;
    let ready = match which(engine.name()) {
        None => Err(Unavailable {
            why: format!("{} is not installed (not on PATH)", engine.name()),
            fix: format!(
                "install it (on Debian: apt-get install {})",
                engine.package()
            ),
        }),
        Some(_) => start_service(engine, cx)
            .and_then(|()| same_identity(engine, cc, cx))
            .and_then(|()| match engine {
                Engine::Distcc => distcc::ready(cc, cx),
                Engine::Icecc => icecc_ready().map(|()| (0, String::new())),
                Engine::Ccache | Engine::Sccache => Ok((0, String::new())),
            }),
    };
    match ready {
        Ok((engine_jobs, capacity)) => {
            let (jobs, capacity) = match choice.jobs {
                Some(n) => (n, "wrapper_jobs".to_string()),
                None => (engine_jobs.max(local_jobs).max(1), capacity),
            };
            Ok(Some(Wrap {
                engine,
                jobs,
                capacity,
                env: engine.env(),
            }))
        }
        Err(u) if choice.required => Err(StageError::not_found(format!(
            "wrapper {} is required, but {}",
            engine.name(),
            u.why
        ))
        .with_hint(format!(
            "{}, or drop --wrapper-required (wrapper_required) to build locally when it is missing",
            u.fix
        ))),
        Err(u) => {
            cx.progress.warn(&format!(
                "wrapper {}: {}; building locally without it ({})",
                engine.name(),
                u.why,
                u.fix
            ));
            Ok(None)
        }
    }
}

/// Where an icecream client finds its local daemon, in the order `icecc`
/// tries them (`ICECC_TEST_SOCKET` is how tests run a private daemon).
fn icecc_sockets() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(s) = ktstr_sdk::paths::env_nonempty("ICECC_TEST_SOCKET") {
        out.push(PathBuf::from(s));
    }
    if let Some(home) = ktstr_sdk::paths::env_nonempty("HOME") {
        out.push(PathBuf::from(home).join(".iceccd.socket"));
    }
    out.push("/var/run/icecc/iceccd.socket".into());
    out.push("/var/run/iceccd.socket".into());
    out
}

/// An iceccd answers on one of its sockets. Whether it has a scheduler
/// cannot be asked cheaply; without one iceccd compiles locally.
fn icecc_ready() -> std::result::Result<(), Unavailable> {
    let sockets = icecc_sockets();
    if sockets
        .iter()
        .any(|s| std::os::unix::net::UnixStream::connect(s).is_ok())
    {
        return Ok(());
    }
    let tried: Vec<String> = sockets.iter().map(|s| s.display().to_string()).collect();
    Err(Unavailable {
        why: format!(
            "no iceccd answers on this host (tried {})",
            tried.join(", ")
        ),
        fix: "start iceccd (on Debian: apt-get install icecc; point it at the scheduler with \
              -s HOST or let it find one by broadcast)"
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_none_means_no_wrapper() {
        for e in Engine::ALL {
            assert_eq!(parse_wrapper(e.name()).unwrap(), Some(e));
        }
        assert_eq!(parse_wrapper("none").unwrap(), None);
        let err = parse_wrapper("distc").unwrap_err();
        assert!(err.message.contains("distc"), "{err}");
        assert!(err.hint.unwrap().contains("distcc, icecc"));
    }

    #[test]
    fn the_command_wraps_once_and_the_step_says_where_jobs_go() {
        let w = Wrap {
            engine: Engine::Distcc,
            jobs: 12,
            capacity: "12 remote slots".into(),
            env: Vec::new(),
        };
        assert_eq!(w.command("gcc-12"), "distcc gcc-12");
        assert_eq!(w.command("distcc gcc"), "distcc gcc");
        assert_eq!(
            w.step(2),
            "building with distcc (12 remote slots, -j12; local: 2 CPUs)"
        );
        let c = Wrap {
            engine: Engine::Ccache,
            jobs: 1,
            capacity: String::new(),
            env: Vec::new(),
        };
        assert_eq!(c.step(1), "building with ccache (-j1; local: 1 CPU)");
    }
}
