//! `--explain`: why the cache missed, as the nearest entry's differing inputs.

use ktstr_sdk::cache::Listed;
use ktstr_sdk::context::StageContext;

use crate::identity::{self, DerivedKey};
use crate::registry::Stages;

/// Print why `derived` missed: the local entry of the same prefix that
/// differs in the fewest inputs, and how.
pub(super) fn miss(stages: &Stages, derived: &DerivedKey, cx: &StageContext) {
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
        }
    }
}
