//! `--explain`: why the cache missed, as the nearest entry's differing inputs.
//!
//! A `.config` digest that differs says little on its own; every entry
//! stores the `.config` it was built with, so when the wanted one is at
//! hand (a local tree's) the difference is spelt out symbol by symbol.

use std::path::Path;

use ktstr_plugin_kconfig::fragment::{DotConfig, Value, describe_final};
use ktstr_sdk::cache::{CacheEntry, Listed};
use ktstr_sdk::context::StageContext;

use crate::identity::{self, DerivedKey};
use crate::registry::Stages;

/// Symbols listed before the rest are only counted.
const SHOWN_SYMBOLS: usize = 20;

/// Print why `derived` missed: the local entry of the same prefix that
/// differs in the fewest inputs, and how. `dot_config` is the `.config`
/// the wanted key was derived from, when there is one.
pub(super) fn miss(
    stages: &Stages,
    derived: &DerivedKey,
    dot_config: Option<&Path>,
    cx: &StageContext,
) {
    let prefix = identity::prefix_of(&derived.key);
    let entries = stages.tiers.local().stage.list(cx).unwrap_or_default();
    let nearest = entries.iter().filter_map(|l| match l {
        Listed::Ok(e) if identity::prefix_of(&e.key) == prefix => Some(e),
        _ => None,
    });
    let best = nearest.min_by_key(|e| {
        identity::explain_difference(&derived.components, &e.metadata.components).len()
    });
    match best {
        None => cx.progress.note(&format!(
            "explain: no cached entry starts with {prefix}; inputs are: {}",
            derived
                .components
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(e) => {
            cx.progress.note(&format!(
                "explain: {} missed; nearest entry {} differs in:",
                derived.key, e.key
            ));
            for line in identity::explain_difference(&derived.components, &e.metadata.components) {
                cx.progress.note(&format!("explain:   {line}"));
            }
            if let Some(lines) = config_symbols(derived, dot_config, e) {
                for line in lines {
                    cx.progress.note(&format!("explain:     {line}"));
                }
            }
        }
    }
}

/// The `.config` symbols that differ between `dot_config` and the entry's
/// stored config, when their digests differ and both can be read.
fn config_symbols(
    derived: &DerivedKey,
    dot_config: Option<&Path>,
    entry: &CacheEntry,
) -> Option<Vec<String>> {
    let digest = |components: &[ktstr_sdk::cache::KeyComponent]| {
        components
            .iter()
            .find(|c| c.name == "config")
            .and_then(|c| c.value.strip_prefix(".config:"))
            .map(str::to_string)
    };
    let wanted = digest(&derived.components)?;
    if digest(&entry.metadata.components).as_deref() == Some(wanted.as_str()) {
        return None;
    }
    let read = |path: &Path| {
        use ktstr_sdk::fsread::{Follow, read_text};
        read_text(path, "kernel config", 64 << 20, Follow::Yes)
    };
    let ours = match dot_config.map(read) {
        Some(Ok(text)) if ktstr_sdk::hash::sha256_hex(text.as_bytes()) == wanted => text,
        Some(Ok(_)) => {
            return Some(vec![
                "(the tree's .config changed since; symbols not compared)".into(),
            ]);
        }
        Some(Err(e)) => return Some(vec![format!("(symbols not compared: {e})")]),
        None => return None,
    };
    let theirs = match read(&entry.config()) {
        Ok(text) => text,
        Err(e) => return Some(vec![format!("(symbols not compared: {e})")]),
    };
    Some(symbol_difference(&ours, &theirs))
}

/// `CONFIG_X: wanted …, entry has …` for each symbol whose value differs,
/// by name, the first [`SHOWN_SYMBOLS`] then how many more.
fn symbol_difference(wanted: &str, entry: &str) -> Vec<String> {
    let (wanted, entry) = (DotConfig::parse(wanted), DotConfig::parse(entry));
    let mut symbols: Vec<&str> = wanted.iter().chain(entry.iter()).map(|(s, _)| s).collect();
    symbols.sort_unstable();
    symbols.dedup();
    let differing: Vec<String> = symbols
        .into_iter()
        .filter(|s| !same(wanted.get(s), entry.get(s)))
        .map(|s| {
            format!(
                "{}, entry has {}",
                describe_final(s, wanted.get(s)),
                value_of(entry.get(s))
            )
        })
        .collect();
    if differing.is_empty() {
        return vec![".config symbols are the same (the files differ in comments or order)".into()];
    }
    let total = differing.len();
    let mut out = vec![format!(
        ".config symbols that differ ({total}; wanted, then the entry's):"
    )];
    out.extend(differing.into_iter().take(SHOWN_SYMBOLS));
    if total > SHOWN_SYMBOLS {
        out.push(format!("and {} more", total - SHOWN_SYMBOLS));
    }
    out
}

/// An absent symbol and a "not set" one build the same kernel.
fn same(a: Option<&Value>, b: Option<&Value>) -> bool {
    let set = |v: Option<&Value>| match v {
        Some(Value::Set(x)) => Some(x.clone()),
        _ => None,
    };
    set(a) == set(b)
}

fn value_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::Set(x)) => x.clone(),
        Some(Value::NotSet) => "not set".into(),
        None => "none (absent)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_symbols_are_named_sorted_and_capped() {
        let wanted =
            "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_SAME=m\nCONFIG_NEW=y\n";
        let entry =
            "CONFIG_A=m\nCONFIG_B=y\nCONFIG_C=\"y\"\nCONFIG_SAME=m\n# CONFIG_NEW is not set\n";
        let lines = symbol_difference(wanted, entry);
        assert_eq!(
            lines,
            [
                ".config symbols that differ (4; wanted, then the entry's):",
                "CONFIG_A=y, entry has m",
                "CONFIG_B is not set, entry has y",
                "CONFIG_C=\"x\", entry has \"y\"",
                "CONFIG_NEW=y, entry has not set",
            ]
        );

        let many: String = (0..25).map(|i| format!("CONFIG_S{i:02}=y\n")).collect();
        let lines = symbol_difference(&many, "");
        assert_eq!(lines.len(), 1 + SHOWN_SYMBOLS + 1);
        assert_eq!(lines[1], "CONFIG_S00=y, entry has none (absent)");
        assert_eq!(
            lines[SHOWN_SYMBOLS],
            "CONFIG_S19=y, entry has none (absent)"
        );
        assert_eq!(lines.last().unwrap(), "and 5 more");
    }

    #[test]
    fn not_set_and_absent_are_the_same_kernel() {
        let lines = symbol_difference("# CONFIG_X is not set\nCONFIG_Y=y\n", "CONFIG_Y=y\n# c\n");
        assert_eq!(
            lines,
            [".config symbols are the same (the files differ in comments or order)"]
        );
    }
}
