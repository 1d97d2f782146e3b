//! Stage 6 in the pipeline: boot-check an image and record the verdict.
//!
//! A new build is checked *before* it is stored, inside the build's CPU
//! reservation, so the verdict is in the metadata every tier receives. A
//! hit without a verdict is checked under a reservation of its own, and
//! its metadata re-stored in the local tier and pushed to the writable
//! remotes. A hit that already has a verdict is not checked again (the
//! verdict describes the same bytes); `ktstr kernel verify-boot` re-runs
//! the check on demand.
//!
//! The verifier runs on a thread of its own and the host bounds it: past
//! the timeout plus a grace period the host cancels its context, reports
//! a clear error and moves on. A library plugin that ignores cancellation
//! keeps its thread until ktstr exits (a thread cannot be killed safely);
//! processes it started through the context's runner are killed with the
//! context. A panic in the verifier is an error naming it, never a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ktstr_sdk::cache::CacheEntry;
use ktstr_sdk::context::{Cancellation, StageContext};
use ktstr_sdk::registry::StageKind;
use ktstr_sdk::reserve::{Reservation, ReserveRequest};
use ktstr_sdk::runner::InterruptibleRunner;
use ktstr_sdk::verify::{Verdict, Verifier, VerifyRecord, VerifyRequest};
use ktstr_sdk::{ErrorKind, Result, StageError};

use crate::registry::{Catalog, Selection, Stages};

/// Wall-clock bound of one boot check unless configured: a TCG boot of a
/// small kernel takes ~25 s on a slow machine; a large one several times
/// that.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// [`DEFAULT_TIMEOUT`] as `ktstr config` shows it.
pub const DEFAULT_TIMEOUT_TEXT: &str = "120s";
/// Longest bound accepted: a check that needs more is a hung one.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most virtual CPUs a guest is given; a boot check proves the kernel
/// boots on SMP, it does not need the whole reservation.
pub const MAX_VCPUS: usize = 4;
/// CPUs reserved to check a hit, unless `--cpu-cap` says otherwise.
pub const HIT_CPUS: usize = 2;

/// `--verify-timeout` / `verify_timeout`: a duration as every ktstr
/// setting takes one (`90s`, `5m`, plain seconds), from 1 s to
/// [`MAX_TIMEOUT`].
pub fn parse_timeout(raw: &str, origin: &str) -> Result<Duration> {
    let bad = |why: &str| {
        StageError::invalid_input(format!("{origin} {raw:?}: {why}"))
            .with_hint("write a duration such as 90s or 5m (at least 1s, at most 1h)")
    };
    let d = ktstr_sdk::config::parse_duration(raw).ok_or_else(|| bad("is not a duration"))?;
    if d < Duration::from_secs(1) {
        return Err(bad("is shorter than one second"));
    }
    if d > MAX_TIMEOUT {
        return Err(bad("is longer than an hour"));
    }
    Ok(d)
}

/// How long past its own bound the host waits for a verifier before
/// giving up on it: a tenth of the bound, 1 to 30 s.
pub fn grace(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The selected verifier of one run, and its bound.
pub struct BootCheck {
    pub name: String,
    pub version: String,
    stage: Arc<dyn Verifier>,
    pub timeout: Duration,
}

impl BootCheck {
    /// Construct the verifier `selection` names (`verifier = "..."`,
    /// `--plugin`), with its `[plugin.<name>]` table. `asked_by` names what
    /// asked for the check (`--verify`, `verify = true in the config
    /// file`), for the error when there is no such verifier.
    pub fn select(
        catalog: &Catalog,
        selection: &Selection,
        timeout: Duration,
        asked_by: &str,
    ) -> Result<Self> {
        let name = &selection.verifier;
        let factory = catalog.find(StageKind::Verifier, name).map_err(|e| {
            e.context(asked_by).with_hint(format!(
                "install the {name} verifier, or load a verifier plugin with --plugin NAME \
                     (`ktstr plugins list` shows the verifiers; `ktstr docs verify` says how \
                     to write one)"
            ))
        })?;
        let version = factory.version().to_string();
        let named =
            crate::registry::named::<dyn Verifier>(factory, selection.config(factory.name()))?;
        Ok(Self::new(
            named.name,
            version,
            Arc::from(named.stage),
            timeout,
        ))
    }

    pub fn new(name: String, version: String, stage: Arc<dyn Verifier>, timeout: Duration) -> Self {
        Self {
            name,
            version,
            stage,
            timeout,
        }
    }

    /// Run the check on `request` (its `timeout_ms` is set here) and
    /// describe it as the host records it. `Err` when the verifier could
    /// not run, panicked, overran the bound, or the user interrupted.
    pub fn check(&self, mut request: VerifyRequest, cx: &StageContext) -> Result<VerifyRecord> {
        cx.cancel.check()?;
        request.timeout_ms = self.timeout.as_millis() as u64;
        let verified_at = ktstr_sdk::now_rfc3339();
        let started = Instant::now();
        let cancel = Cancellation::new();
        let vcx = StageContext {
            progress: cx.progress.clone(),
            runner: Arc::new(InterruptibleRunner::new(cancel.clone())),
            cancel: cancel.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let stage = self.stage.clone();
        std::thread::Builder::new()
            .name(format!("verifier {}", self.name))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    stage.verify(&request, &vcx)
                }));
                let _ = tx.send(result);
            })
            .map_err(|e| StageError::internal("cannot start the verifier's thread").caused_by(e))?;
        cx.progress.step(&format!("boot check with {}", self.name));
        let result = self.wait(&rx, &cancel, started, cx);
        cx.progress.finish_step();
        let verdict = result?;
        Ok(VerifyRecord {
            verifier: self.name.clone(),
            verifier_version: self.version.clone(),
            verified_at,
            duration_ms: started.elapsed().as_millis() as u64,
            verdict,
        })
    }

    /// Wait for the verifier's thread: its result, the user's interrupt
    /// (passed on to the verifier) or the bound.
    fn wait(
        &self,
        rx: &mpsc::Receiver<std::thread::Result<Result<Verdict>>>,
        cancel: &Cancellation,
        started: Instant,
        cx: &StageContext,
    ) -> Result<Verdict> {
        let bound = self.timeout + grace(self.timeout);
        let mut interrupted: Option<Instant> = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Ok(verdict))) if interrupted.is_none() => return Ok(verdict),
                Ok(Ok(Err(e))) if interrupted.is_none() => {
                    return Err(e.context(format!("verifier {}", self.name)));
                }
                Ok(Ok(_)) => return Err(StageError::cancelled()),
                Ok(Err(panic)) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    return Err(StageError::internal(format!(
                        "verifier {} panicked: {message}",
                        self.name
                    ))
                    .with_hint("a bug in the verifier: report it to its author"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(StageError::internal(format!(
                        "verifier {} ended without a result",
                        self.name
                    )));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if cx.cancel.is_cancelled() {
                cancel.cancel();
                // Give it a moment to stop its guest, then leave it.
                let since = *interrupted.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(2) {
                    return Err(StageError::cancelled());
                }
                continue;
            }
            if started.elapsed() > bound {
                cancel.cancel();
                return Err(StageError::new(
                    ErrorKind::Command,
                    format!(
                        "verifier {} did not finish within {} (its bound {} plus {} grace); \
                         stopped waiting for it",
                        self.name,
                        secs(bound),
                        secs(self.timeout),
                        secs(grace(self.timeout)),
                    ),
                )
                .with_hint(
                    "the verifier ignores its bound: report it to its author; meanwhile raise \
                     --verify-timeout if the guest is merely slow, or select another verifier \
                     (a library verifier that hangs keeps a thread until ktstr exits)",
                ));
            }
        }
    }
}

/// `3s`, `1.5s`.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Virtual CPUs for a guest under `reservation`.
pub fn vcpus(reservation: &Reservation) -> usize {
    reservation.make_jobs.clamp(1, MAX_VCPUS)
}

/// What to check for a stored entry.
pub fn request_for_entry(
    entry: &CacheEntry,
    reservation: &Reservation,
    scratch: &Path,
) -> VerifyRequest {
    VerifyRequest {
        image: entry.image(),
        vmlinux: entry.vmlinux(),
        config: entry.config(),
        arch: entry.metadata.arch.clone(),
        kernelrelease: entry.metadata.kernelrelease.clone(),
        vcpus: vcpus(reservation),
        timeout_ms: 0,
        sandbox_procs: reservation.sandbox_procs.clone(),
        scratch: scratch.to_path_buf(),
    }
}

/// What to check for a build that is not stored yet.
pub struct Fresh<'a> {
    pub image: &'a Path,
    pub vmlinux: Option<&'a Path>,
    pub config: PathBuf,
    pub arch: &'a str,
    pub kernelrelease: Option<String>,
}

impl Fresh<'_> {
    pub fn request(&self, reservation: &Reservation, scratch: &Path) -> VerifyRequest {
        VerifyRequest {
            image: self.image.to_path_buf(),
            vmlinux: self.vmlinux.map(Path::to_path_buf),
            config: self.config.clone(),
            arch: self.arch.to_string(),
            kernelrelease: self.kernelrelease.clone(),
            vcpus: vcpus(reservation),
            timeout_ms: 0,
            sandbox_procs: reservation.sandbox_procs.clone(),
            scratch: scratch.to_path_buf(),
        }
    }
}

/// Check `entry` (a hit, or a key `kernel verify-boot` names) under a
/// reservation of its own and record the verdict: the local tier's
/// metadata is re-stored (its `origin` kept) and the entry pushed to every
/// live writable remote (a failure there warns). Returns the local entry.
pub fn check_entry(
    stages: &Stages,
    check: &BootCheck,
    entry: &CacheEntry,
    own: &OwnReservation,
    root: &Path,
    cx: &StageContext,
) -> Result<CacheEntry> {
    let reservation = own.reserve(stages, cx)?;
    let scratch = ktstr_sdk::scratch::Scratch::stage(root, "verify")?;
    let request = request_for_entry(entry, &reservation, scratch.path());
    let record = check.check(request, cx)?;
    drop(reservation);
    record_verdict(stages, entry, record, cx)
}

/// Store `entry` again with `record` as its verdict: locally (an error if
/// that fails), then in every live writable remote (warnings).
pub fn record_verdict(
    stages: &Stages,
    entry: &CacheEntry,
    record: VerifyRecord,
    cx: &StageContext,
) -> Result<CacheEntry> {
    let mut metadata = entry.metadata.clone();
    metadata.verify = Some(record);
    let tiers = &stages.tiers;
    let local = tiers
        .local()
        .stage
        .store(&entry.key, &entry.artifacts(), &metadata, cx)
        .map_err(|e| {
            e.context(format!(
                "recording the boot check of {} in the {}",
                entry.key,
                tiers.local().stage.describe()
            ))
        })?;
    for tier in tiers
        .live_remotes()
        .filter(|t| !crate::tiers::is_read_only(t))
    {
        cx.cancel.check()?;
        if let Err(e) = tiers.push_to(tier, &local, cx) {
            crate::report::warn_error(
                &*cx.progress,
                &format!(
                    "{}: could not record the boot check of {}: ",
                    tier.name, entry.key
                ),
                &e,
            );
        }
    }
    Ok(local)
}

/// The CPUs a check outside a build reserves.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnReservation {
    /// `--cpu-cap`; default [`HIT_CPUS`].
    pub cpu_cap: Option<usize>,
    /// `KTSTR_BYPASS_LLC_LOCKS`: no reservation.
    pub bypass: bool,
}

impl OwnReservation {
    fn reserve(&self, stages: &Stages, cx: &StageContext) -> Result<Reservation> {
        if self.bypass {
            return Ok(super::bypass_reservation());
        }
        stages.reserver.stage.reserve(
            &ReserveRequest {
                cpu_cap: Some(self.cpu_cap.unwrap_or(HIT_CPUS)),
            },
            cx,
        )
    }
}

/// One line for the user: `boot check passed (qemu 0.1.0, 24.1 s): ...`.
pub fn verdict_line(record: &VerifyRecord) -> String {
    format!(
        "boot check {} ({} {}, {:.1} s): {}",
        if record.verdict.passed {
            "passed"
        } else {
            "FAILED"
        },
        record.verifier,
        record.verifier_version,
        record.duration_ms as f64 / 1000.0,
        record.verdict.summary
    )
}

/// `kernel list`'s BOOT cell: `ok 24s`, `FAILED` or `-`.
pub fn boot_cell(record: Option<&VerifyRecord>) -> String {
    match record {
        None => "-".into(),
        Some(r) if r.verdict.passed => format!("ok {}s", (r.duration_ms + 500) / 1000),
        Some(_) => "FAILED".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use ktstr_sdk::testing::{RecordingRunner, context_with};

    use super::*;

    struct Fixed(std::result::Result<Verdict, StageError>);
    impl Verifier for Fixed {
        fn verify(&self, r: &VerifyRequest, _: &StageContext) -> Result<Verdict> {
            assert_eq!(r.timeout_ms, 2000, "the host sets the bound");
            self.0.clone()
        }
    }

    struct Boom;
    impl Verifier for Boom {
        fn verify(&self, _: &VerifyRequest, _: &StageContext) -> Result<Verdict> {
            panic!("no guest for you")
        }
    }

    /// Sleeps past every bound and ignores cancellation.
    struct Hang(Arc<AtomicBool>);
    impl Verifier for Hang {
        fn verify(&self, _: &VerifyRequest, _: &StageContext) -> Result<Verdict> {
            std::thread::sleep(Duration::from_secs(30));
            self.0.store(true, Ordering::SeqCst);
            Ok(Verdict::default())
        }
    }

    fn check(stage: impl Verifier + 'static) -> BootCheck {
        check_within(stage, Duration::from_secs(2))
    }

    fn check_within(stage: impl Verifier + 'static, bound: Duration) -> BootCheck {
        BootCheck::new("t".into(), "1.0".into(), Arc::new(stage), bound)
    }

    fn cx() -> StageContext {
        context_with(Arc::new(RecordingRunner::default())).0
    }

    #[test]
    fn a_verdict_becomes_a_record_and_errors_name_the_verifier() {
        let passed = Verdict {
            passed: true,
            summary: "booted".into(),
            ..Verdict::default()
        };
        let r = check(Fixed(Ok(passed.clone())))
            .check(VerifyRequest::default(), &cx())
            .unwrap();
        assert_eq!(
            (r.verifier.as_str(), r.verifier_version.as_str()),
            ("t", "1.0")
        );
        assert_eq!(r.verdict, passed);
        assert!(r.verified_at.ends_with('Z'), "{}", r.verified_at);
        assert!(verdict_line(&r).starts_with("boot check passed (t 1.0, "));
        assert_eq!(boot_cell(Some(&r)), "ok 0s");
        assert_eq!(boot_cell(None), "-");

        let e = check(Fixed(Err(StageError::not_found(
            "qemu-system-x86_64 is missing",
        ))))
        .check(VerifyRequest::default(), &cx())
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.to_string().starts_with("verifier t: "), "{e}");
    }

    #[test]
    fn a_panic_is_an_error_naming_the_verifier() {
        let e = check(Boom)
            .check(VerifyRequest::default(), &cx())
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Internal);
        assert_eq!(e.message, "verifier t panicked: no guest for you");
    }

    #[test]
    fn a_hanging_verifier_is_abandoned_after_its_bound_and_grace() {
        let finished = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let e = check(Hang(finished.clone()))
            .check(VerifyRequest::default(), &cx())
            .unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(3), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(!finished.load(Ordering::SeqCst));
        assert!(e.message.contains("did not finish within 3s"), "{e}");
    }

    #[test]
    fn an_interrupt_stops_the_wait() {
        let c = cx();
        let cancel = c.cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            cancel.cancel();
        });
        let started = Instant::now();
        // A bound (30 s, then 3 s of grace) far beyond the assertion: only
        // the interrupt can end the wait in time, however loaded the host.
        let e = check_within(Hang(Arc::default()), Duration::from_secs(30))
            .check(VerifyRequest::default(), &c)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "waited for the bound"
        );
    }

    #[test]
    fn timeouts_parse_within_bounds() {
        assert_eq!(
            parse_timeout("90s", "--verify-timeout").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_timeout(DEFAULT_TIMEOUT_TEXT, "x").unwrap(),
            DEFAULT_TIMEOUT
        );
        let e = parse_timeout("soon", "--verify-timeout").unwrap_err();
        assert_eq!(e.message, "--verify-timeout \"soon\": is not a duration");
        assert!(e.hint.is_some());
        assert!(parse_timeout("500ms", "x").is_err());
        assert!(parse_timeout("2h", "x").is_err());
        assert_eq!(grace(DEFAULT_TIMEOUT), Duration::from_secs(12));
        assert_eq!(grace(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
