//! Command-line switches that change a plugin's settings.
//!
//! Some options belong on the command line although only one plugin acts
//! on them (`--skip-sha256` concerns the tarball source alone). The host
//! defines the switch and knows no plugin's config keys; a built-in plugin
//! registers which key of its own `[plugin.<name>]` table the switch sets,
//! and [`apply`] sets it in the tables before the stages are constructed,
//! exactly as if the config file said `key = true`.

use std::collections::BTreeMap;

use crate::registry::PluginConfig;

/// `--skip-sha256`: a download that cannot be verified is built, not refused.
pub const SKIP_SHA256: &str = "skip-sha256";

/// A built-in plugin's answer to one switch.
#[derive(Debug)]
pub struct SwitchBinding {
    /// The switch, e.g. [`SKIP_SHA256`].
    pub switch: &'static str,
    /// The plugin whose table it changes.
    pub plugin: &'static str,
    /// The key set to `true` in that table.
    pub key: &'static str,
}

inventory::collect!(SwitchBinding);

/// Set every key bound to `switch` to `true` in its plugin's table (in
/// `configs`, by plugin name), creating an empty table where there is none.
/// A table that is not a table is left for its plugin to refuse.
pub fn apply(switch: &str, configs: &mut BTreeMap<String, PluginConfig>) {
    apply_bindings(inventory::iter::<SwitchBinding>, switch, configs);
}

fn apply_bindings<'a>(
    bindings: impl IntoIterator<Item = &'a SwitchBinding>,
    switch: &str,
    configs: &mut BTreeMap<String, PluginConfig>,
) {
    for b in bindings.into_iter().filter(|b| b.switch == switch) {
        let table = configs
            .entry(b.plugin.to_string())
            .or_insert_with(|| serde_json::json!({}));
        if let Some(map) = table.as_object_mut() {
            map.insert(b.key.to_string(), true.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_sets_the_bound_keys_only() {
        let bindings = [
            SwitchBinding {
                switch: "s",
                plugin: "p",
                key: "k",
            },
            SwitchBinding {
                switch: "other",
                plugin: "q",
                key: "k",
            },
        ];
        let mut configs = BTreeMap::new();
        configs.insert("p".to_string(), serde_json::json!({"x": 1}));
        configs.insert("r".to_string(), serde_json::json!(5));
        apply_bindings(&bindings, "s", &mut configs);
        assert_eq!(configs["p"], serde_json::json!({"x": 1, "k": true}));
        assert!(!configs.contains_key("q"));
        assert_eq!(configs["r"], serde_json::json!(5));

        let mut empty = BTreeMap::new();
        apply_bindings(&bindings, "s", &mut empty);
        assert_eq!(empty["p"], serde_json::json!({"k": true}));
    }
}
