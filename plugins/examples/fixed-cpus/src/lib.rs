//! Example ktstr plugin: a reserver that gives each build host a fixed CPU
//! list, for machines whose other CPUs belong to something else (a
//! benchmark, a VM, interrupt handling).
//!
//! Built exactly as a third party would build it — a cdylib depending on
//! `ktstr-sdk` only — and loaded with `--plugin fixed-cpus`, which makes it
//! the reserver. Config (`[plugin.fixed-cpus]` in ktstr's config file):
//!
//! ```toml
//! [plugin.fixed-cpus]
//! default = "0-3"                      # hosts not listed below
//! hosts = { build1 = "0-15", build2 = "8-15,24-31" }
//! ```
//!
//! `$KTSTR_FIXED_CPUS` (same syntax) overrides the table. With `--cpu-cap N`
//! the build gets the first N CPUs of the list; asking for more is an error.
//! This file only decides *which* CPUs: the SDK's reservation blocks
//! ([`ktstr_sdk::cpus::Host::confine`]) lock them with the protocol every
//! ktstr on the host shares and confine make to them with a cpuset cgroup.
//! Where the host cannot confine, `--cpu-cap` fails with the remedies and
//! a build without it warns once.

use std::collections::BTreeMap;

use ktstr_sdk::cpus::{CpuSet, Host, parse_cpulist};
use ktstr_sdk::export::Plugin;
use ktstr_sdk::prelude::*;

pub const NAME: &str = "fixed-cpus";
pub const ENV: &str = "KTSTR_FIXED_CPUS";

/// The reserver: CPU lists by host name.
#[derive(Debug, Clone, Default)]
pub struct FixedCpus {
    default: Option<CpuSet>,
    hosts: BTreeMap<String, CpuSet>,
    /// Where the host's CPU facts live (tests point it at temp dirs).
    pub host: Host,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    default: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
}

fn config_error(why: String) -> StageError {
    StageError::invalid_input(format!("plugin {NAME}: {why}")).with_hint(format!(
        "configure [plugin.{NAME}] with `default = \"0-3\"` and/or `hosts = {{ name = \"0-7\" }}`, or set {ENV}"
    ))
}

fn cpus(raw: &str, from: &str) -> Result<CpuSet> {
    match parse_cpulist(raw) {
        Ok(set) if !set.is_empty() => Ok(set),
        Ok(_) => Err(config_error(format!("{from}: {raw:?} names no CPUs"))),
        Err(e) => Err(config_error(format!("{from}: {e}"))),
    }
}

impl FixedCpus {
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        if cfg.is_null() {
            return Ok(Self::default());
        }
        let c: Config =
            serde_json::from_value(cfg.clone()).map_err(|e| config_error(e.to_string()))?;
        let mut me = Self {
            default: c.default.map(|d| cpus(&d, "default")).transpose()?,
            ..Self::default()
        };
        for (host, list) in c.hosts {
            me.hosts
                .insert(host.clone(), cpus(&list, &format!("hosts.{host}"))?);
        }
        Ok(me)
    }

    /// The CPU list for `host`, and where it came from.
    pub fn cpus_for(&self, host: &str) -> Result<(CpuSet, String)> {
        if let Some(env) = std::env::var(ENV).ok().filter(|v| !v.is_empty()) {
            let from = format!("${ENV}");
            return Ok((cpus(&env, &from)?, from));
        }
        let (set, from) = match (self.hosts.get(host), &self.default) {
            (Some(set), _) => (set, format!("hosts.{host}")),
            (None, Some(set)) => (set, "default".to_string()),
            (None, None) => return Err(config_error(format!("no CPU list for host {host:?}"))),
        };
        Ok((set.clone(), from))
    }
}

impl Reserver for FixedCpus {
    fn reserve(&self, request: &ReserveRequest, cx: &StageContext) -> Result<Reservation> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = host.trim();
        let (mut cpus, from) = self.cpus_for(host)?;
        if let Some(cap) = request.cpu_cap {
            if cap > cpus.len() {
                return Err(StageError::invalid_input(format!(
                    "--cpu-cap {cap}: host {host} has only {} CPUs reserved for builds ({from})",
                    cpus.len()
                ))
                .with_hint(format!("pass --cpu-cap {} or less", cpus.len())));
            }
            cpus = cpus.into_iter().take(cap).collect();
        }
        self.host.confine(&cpus, request.cpu_cap.is_some(), cx)
    }

    fn locks(&self) -> Result<Vec<ktstr_sdk::lock_list::LockInfo>> {
        Ok(ktstr_sdk::cpus::locks::list(&self.host.lock_dir()?))
    }
}

fn plugin() -> Plugin {
    Plugin::new(NAME, env!("CARGO_PKG_VERSION")).stage(
        NAME,
        "a fixed CPU list per host name from the config file (make -j = its size)",
        &["default", "hosts"],
        Constructor::Reserver(|cfg| Ok(Box::new(FixedCpus::from_config(cfg)?))),
    )
}

ktstr_sdk::export_plugin!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::conformance::reserver;

    #[test]
    fn hosts_then_default() {
        let r = FixedCpus::from_config(&serde_json::json!({
            "default": "0-1",
            "hosts": {"big": "0-7"}
        }))
        .unwrap();
        assert_eq!(r.cpus_for("big").unwrap().0.len(), 8);
        assert_eq!(r.cpus_for("other").unwrap().0, CpuSet::from([0, 1]));
        let e = FixedCpus::default().cpus_for("x").unwrap_err();
        assert!(e.message.contains("no CPU list"), "{e}");
    }

    #[test]
    fn bad_config_names_the_key() {
        for (cfg, says) in [
            (serde_json::json!({"hosts": {"a": "z"}}), "hosts.a"),
            (serde_json::json!({"default": "3-1"}), "backwards"),
            (serde_json::json!({"default": ""}), "names no CPUs"),
            (serde_json::json!({"cpus": "0"}), "unknown field `cpus`"),
        ] {
            let e = FixedCpus::from_config(&cfg).unwrap_err();
            assert!(e.to_string().contains(says), "{cfg}: {e}");
            assert!(e.hint.is_some());
        }
    }

    /// The first allowed CPU, locks in a temp dir.
    fn on_first_cpu() -> (FixedCpus, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let first = *ktstr_sdk::cpus::allowed_cpus().unwrap().first().unwrap();
        let mut r =
            FixedCpus::from_config(&serde_json::json!({ "default": first.to_string() })).unwrap();
        r.host.lock_dir = Some(dir.path().join("locks"));
        (r, dir)
    }

    #[test]
    fn passes_the_reserver_conformance_suite() {
        let (r, _dir) = on_first_cpu();
        reserver::assert_conforms(&r);
    }

    #[test]
    fn a_cpu_outside_the_affinity_mask_is_refused() {
        let (mut r, _dir) = on_first_cpu();
        let beyond = ktstr_sdk::cpus::allowed_cpus().unwrap().last().unwrap() + 1;
        r.default = Some(CpuSet::from([beyond]));
        let (cx, _) =
            ktstr_sdk::testing::context_with(std::sync::Arc::new(ktstr_sdk::runner::SystemRunner));
        let e = r
            .reserve(&ReserveRequest { cpu_cap: None }, &cx)
            .unwrap_err();
        assert!(
            e.to_string().contains("not available to this process"),
            "{e}"
        );
    }
}
