//! Built-in reserver that reserves nothing.
//!
//! It pins no CPUs, binds no memory nodes, takes no locks and creates no
//! sandbox: it only picks the `make -j` value. `--cpu-cap N` becomes
//! `-jN` (checked against the CPUs this process may use); without it the
//! build uses every allowed CPU. Concurrent builds are not kept apart.

use ktstr_sdk::prelude::*;
use ktstr_sdk::reserve::allowed_cpu_count;

/// The plugin's registered name.
pub const NAME: &str = "none";

/// Reserver that reserves nothing and only sets `make -jN`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoneReserver;

ktstr_sdk::inventory::submit! {
    BuiltinPlugin {
        name: NAME,
        version: env!("CARGO_PKG_VERSION"),
        summary: "no reservation: does not pin or lock CPUs; --cpu-cap N only sets make -jN (default: all allowed CPUs)",
        constructor: Constructor::Reserver(|_cfg| Ok(Box::new(NoneReserver))),
    }
}

impl Reserver for NoneReserver {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation> {
        cx.cancel.check()?;
        reserve_with(request, allowed_cpu_count())
    }
}

/// The reservation for `request` when `allowed` CPUs are available.
pub fn reserve_with(request: &ReserveRequest, allowed: usize) -> Result<Reservation> {
    let make_jobs = match request.cpu_cap {
        None => allowed.max(1),
        Some(0) => {
            return Err(StageError::invalid_input(
                "--cpu-cap 0: must be at least 1 CPU",
            ));
        }
        Some(cap) if cap > allowed => {
            let cpus = if allowed == 1 { "CPU is" } else { "CPUs are" };
            return Err(StageError::invalid_input(format!(
                "--cpu-cap {cap}: only {allowed} {cpus} available to this process"
            ))
            .with_hint(format!(
                "pass --cpu-cap {allowed} or less, or leave it out to use all {allowed}"
            )));
        }
        Some(cap) => cap,
    };
    Ok(Reservation {
        cpus: Vec::new(),
        mems: Vec::new(),
        make_jobs,
        sandbox_procs: None,
        guard: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cpu_cap: Option<usize>) -> ReserveRequest {
        ReserveRequest { cpu_cap }
    }

    #[test]
    fn default_uses_every_allowed_cpu() {
        let r = reserve_with(&request(None), 16).unwrap();
        assert_eq!(r.make_jobs, 16);
        assert!(r.cpus.is_empty());
        assert!(r.mems.is_empty());
        assert!(r.sandbox_procs.is_none());
        assert!(r.guard.is_none());
    }

    #[test]
    fn cap_sets_make_jobs() {
        assert_eq!(reserve_with(&request(Some(4)), 16).unwrap().make_jobs, 4);
        assert_eq!(reserve_with(&request(Some(1)), 16).unwrap().make_jobs, 1);
    }

    #[test]
    fn cap_equal_to_allowed_is_accepted() {
        let r = reserve_with(&request(Some(16)), 16).unwrap();
        assert_eq!(r.make_jobs, 16);
        assert!(r.cpus.is_empty());
    }

    #[test]
    fn zero_cap_is_rejected() {
        let e = reserve_with(&request(Some(0)), 16).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(e.to_string(), "--cpu-cap 0: must be at least 1 CPU");
    }

    #[test]
    fn cap_above_allowed_is_rejected_with_hint() {
        let e = reserve_with(&request(Some(17)), 16).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            "--cpu-cap 17: only 16 CPUs are available to this process"
        );
        assert!(e.hint.as_deref().unwrap().contains("--cpu-cap 16"));
        let e = reserve_with(&request(Some(2)), 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cpu-cap 2: only 1 CPU is available to this process"
        );
    }

    #[test]
    fn reserve_uses_this_process_cpus() {
        let allowed = allowed_cpu_count();
        let cx = StageContext::quiet();
        let r = NoneReserver.reserve(&request(None), &cx).unwrap();
        assert_eq!(r.make_jobs, allowed);
        let e = NoneReserver
            .reserve(&request(Some(allowed + 1)), &cx)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
    }

    #[test]
    fn cancelled_reserve_fails() {
        let cx = StageContext::quiet();
        cx.cancel.cancel();
        let e = NoneReserver.reserve(&request(None), &cx).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled);
    }

    #[test]
    fn registered_as_builtin() {
        let p = ktstr_sdk::registry::builtins()
            .into_iter()
            .find(|p| p.name == NAME)
            .expect("none is registered");
        assert_eq!(p.constructor.kind(), StageKind::Reserver);
        let Constructor::Reserver(make) = p.constructor else {
            unreachable!()
        };
        let reserver = make(&PluginConfig::Null).unwrap();
        let r = reserver
            .reserve(&request(Some(1)), &StageContext::quiet())
            .unwrap();
        assert_eq!(r.make_jobs, 1);
    }

    #[test]
    fn passes_the_reserver_conformance_suite() {
        // No CPUs granted: the suite checks the cap rules and make -j.
        ktstr_sdk::conformance::reserver::assert_conforms(&NoneReserver);
    }
}
