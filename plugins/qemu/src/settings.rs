//! `[plugin.qemu]`: the verifier's settings, each also settable as
//! `KTSTR_QEMU_<KEY>` (the environment wins).

use std::time::Duration;

use ktstr_sdk::Result;
use ktstr_sdk::config::{ConfigReader, Setting};
use ktstr_sdk::prelude::PluginConfig;

use crate::accel::AccelChoice;
use crate::machine::Firmware;

pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "timeout",
        help: "bound for one boot, when shorter than the host's verify timeout (e.g. 30s)",
    },
    Setting {
        key: "memory",
        help: "guest memory (default 512MiB)",
    },
    Setting {
        key: "append",
        help: "kernel parameters added after ktstr's (console=, panic=-1, rdinit=/init)",
    },
    Setting {
        key: "qemu",
        help: "the qemu binary to run instead of the arch's qemu-system-*",
    },
    Setting {
        key: "accel",
        help: "auto (KVM when /dev/kvm works, else TCG), kvm or tcg",
    },
    Setting {
        key: "firmware",
        help: "x86_64 -bios file (default qboot.rom; \"default\" for qemu's own)",
    },
];

pub const ENV_PREFIX: &str = "KTSTR_QEMU_";
const DEFAULT_MEMORY: u64 = 512 << 20;

/// The settings, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub timeout: Option<Duration>,
    pub memory_mib: u64,
    pub append: Option<String>,
    pub qemu: Option<String>,
    pub accel: AccelChoice,
    pub firmware: Firmware,
}

impl Settings {
    pub fn read(cfg: &PluginConfig) -> Result<Self> {
        let r = ConfigReader::new(crate::NAME, cfg)?
            .known(SETTINGS)?
            .with_env(ENV_PREFIX, &ktstr_sdk::paths::env_nonempty);
        Self::from_reader(&r)
    }

    pub fn from_reader(r: &ConfigReader<'_>) -> Result<Self> {
        let timeout = match r.string("timeout")? {
            Some(_) => Some(r.duration("timeout", Duration::ZERO)?),
            None => None,
        };
        let memory = r.size("memory", DEFAULT_MEMORY)?;
        if memory < 64 << 20 {
            return Err(r.bad("memory", "must be at least 64MiB"));
        }
        let accel = match r.string("accel")? {
            None => AccelChoice::Auto,
            Some(s) => AccelChoice::parse(&s)
                .ok_or_else(|| r.bad("accel", format!("is {s:?}: must be auto, kvm or tcg")))?,
        };
        let firmware = match r.string("firmware")? {
            None => Firmware::Table,
            Some(s) if s == "default" => Firmware::QemuDefault,
            Some(s) => Firmware::File(s),
        };
        Ok(Self {
            timeout,
            memory_mib: memory.div_ceil(1 << 20),
            append: r.string("append")?,
            qemu: r.string("qemu")?,
            accel,
            firmware,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(cfg: serde_json::Value, env: &[(&str, &str)]) -> Result<Settings> {
        let lookup = |k: &str| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        };
        let r = ConfigReader::new(crate::NAME, &cfg)?
            .known(SETTINGS)?
            .with_env(ENV_PREFIX, &lookup);
        Settings::from_reader(&r)
    }

    #[test]
    fn defaults() {
        let s = read(serde_json::Value::Null, &[]).unwrap();
        assert_eq!(s.timeout, None);
        assert_eq!(s.memory_mib, 512);
        assert_eq!(s.accel, AccelChoice::Auto);
        assert_eq!(s.firmware, Firmware::Table);
        assert_eq!((s.append, s.qemu), (None, None));
    }

    #[test]
    fn table_and_environment() {
        let cfg = json!({"timeout": "30s", "memory": "1GiB", "append": "rdinit=/nonexistent",
                         "qemu": "/opt/qemu/bin/qemu-system-x86_64", "accel": "kvm",
                         "firmware": "default"});
        let s = read(cfg.clone(), &[]).unwrap();
        assert_eq!(s.timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.memory_mib, 1024);
        assert_eq!(s.append.as_deref(), Some("rdinit=/nonexistent"));
        assert_eq!(s.qemu.as_deref(), Some("/opt/qemu/bin/qemu-system-x86_64"));
        assert_eq!(s.accel, AccelChoice::Kvm);
        assert_eq!(s.firmware, Firmware::QemuDefault);
        let s = read(
            cfg,
            &[("KTSTR_QEMU_ACCEL", "tcg"), ("KTSTR_QEMU_TIMEOUT", "2")],
        )
        .unwrap();
        assert_eq!(s.accel, AccelChoice::Tcg);
        assert_eq!(s.timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = read(json!({"accel": "hvf"}), &[]).unwrap_err();
        assert!(
            e.message.contains("`accel`") && e.message.contains("hvf"),
            "{e}"
        );
        assert!(e.hint.unwrap().contains("KTSTR_QEMU_ACCEL"));
        let e = read(json!({"memory": "16MiB"}), &[]).unwrap_err();
        assert!(e.message.contains("at least 64MiB"), "{e}");
        let e = read(json!({"timeout": "soon"}), &[]).unwrap_err();
        assert!(e.message.contains("`timeout`"), "{e}");
        let e = read(json!({"memroy": "1G"}), &[]).unwrap_err();
        assert!(e.message.contains("memroy"), "{e}");
    }
}
