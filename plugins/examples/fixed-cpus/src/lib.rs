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
//! `$KTSTR_FIXED_CPUS` (same syntax) overrides the table. The build gets
//! `make -j<number of CPUs>` and the CPU list in its reservation; with
//! `--cpu-cap N` it gets the first N of them, and asking for more than the
//! host's list is an error. This reserver does not confine make to the
//! CPUs itself (the built-in `llc` reserver shows how, with a cgroup).

use std::collections::BTreeMap;

use ktstr_sdk::export::Plugin;
use ktstr_sdk::prelude::*;

pub const NAME: &str = "fixed-cpus";
pub const ENV: &str = "KTSTR_FIXED_CPUS";

/// Parse `0-3,8,10-11` into CPU numbers (sorted, no duplicates).
pub fn parse_cpu_list(raw: &str) -> std::result::Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {part:?} runs backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(format!("{raw:?} names no CPUs"));
    }
    Ok(cpus)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The reserver: CPU lists by host name.
#[derive(Debug, Clone, Default)]
pub struct FixedCpus {
    default: Option<String>,
    hosts: BTreeMap<String, String>,
}

fn config_error(why: String) -> StageError {
    StageError::invalid_input(format!("plugin {NAME}: {why}")).with_hint(format!(
        "configure [plugin.{NAME}] with `default = \"0-3\"` and/or `hosts = {{ name = \"0-7\" }}`, or set {ENV}"
    ))
}

impl FixedCpus {
    pub fn from_config(cfg: &PluginConfig) -> Result<Self> {
        let mut me = Self::default();
        let table = match cfg {
            serde_json::Value::Null => return Ok(me),
            serde_json::Value::Object(t) => t,
            other => return Err(config_error(format!("config must be a table, got {other}"))),
        };
        for (k, v) in table {
            match (k.as_str(), v) {
                ("default", serde_json::Value::String(s)) => me.default = Some(s.clone()),
                ("hosts", serde_json::Value::Object(hosts)) => {
                    for (host, list) in hosts {
                        let list = list.as_str().ok_or_else(|| {
                            config_error(format!("hosts.{host} must be a CPU list string"))
                        })?;
                        parse_cpu_list(list)
                            .map_err(|e| config_error(format!("hosts.{host}: {e}")))?;
                        me.hosts.insert(host.clone(), list.to_string());
                    }
                }
                (k, _) => {
                    return Err(config_error(format!(
                        "unexpected key {k:?} (known: default = \"LIST\", hosts = {{ NAME = \"LIST\" }})"
                    )));
                }
            }
        }
        Ok(me)
    }

    /// The CPU list for `host`, and where it came from.
    pub fn cpus_for(&self, host: &str) -> Result<(Vec<usize>, String)> {
        let (raw, from) = if let Some(env) = std::env::var(ENV).ok().filter(|v| !v.is_empty()) {
            (env, format!("${ENV}"))
        } else if let Some(list) = self.hosts.get(host) {
            (list.clone(), format!("hosts.{host}"))
        } else if let Some(list) = &self.default {
            (list.clone(), "default".to_string())
        } else {
            return Err(config_error(format!("no CPU list for host {host:?}")));
        };
        let cpus = parse_cpu_list(&raw).map_err(|e| config_error(format!("{from}: {e}")))?;
        Ok((cpus, from))
    }
}

impl Reserver for FixedCpus {
    fn reserve(&self, request: &ReserveRequest, _cx: &StageContext) -> Result<Reservation> {
        let host = hostname();
        let (mut cpus, from) = self.cpus_for(&host)?;
        if let Some(cap) = request.cpu_cap {
            if cap > cpus.len() {
                return Err(StageError::invalid_input(format!(
                    "--cpu-cap {cap}: host {host} has only {} CPUs reserved for builds ({from})",
                    cpus.len()
                ))
                .with_hint(format!("pass --cpu-cap {} or less", cpus.len())));
            }
            cpus.truncate(cap);
        }
        tracing::info!("host {host}: building on CPUs {cpus:?} ({from})");
        Ok(Reservation {
            make_jobs: cpus.len(),
            cpus,
            mems: Vec::new(),
            sandbox_procs: None,
            guard: None,
        })
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

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8, 2").unwrap(), [0, 1, 2, 3, 8]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn hosts_then_default() {
        let r = FixedCpus::from_config(&serde_json::json!({
            "default": "0-1",
            "hosts": {"big": "0-7"}
        }))
        .unwrap();
        assert_eq!(r.cpus_for("big").unwrap().0.len(), 8);
        assert_eq!(r.cpus_for("other").unwrap().0, [0, 1]);
        let e = FixedCpus::default().cpus_for("x").unwrap_err();
        assert!(e.message.contains("no CPU list"), "{e}");
        assert!(FixedCpus::from_config(&serde_json::json!({"hosts": {"a": "z"}})).is_err());
    }
}
