//! Kconfig fragments: strict parsing, last-wins merging, and reading `.config`.
//!
//! Fragments are parsed strictly, before anything is built, because kbuild
//! itself is lenient: a typo such as `CONFIG_FOO = y` or `CONFIG_FOO=yes` is
//! silently ignored by `make olddefconfig`, and the user only finds out after
//! a full kernel build that the option never took effect. Rejecting such a
//! line up front, with its `file:line`, is the cheap place to catch it.
//!
//! Every assignment keeps its provenance ([`Origin`]) so warnings about
//! overrides and dropped lines can point at the exact line to edit.
//!
//! The merge mirrors kbuild's own rule for a `.config` with repeated
//! symbols (`conf_read_simple`: the last occurrence wins), so appending the
//! merged lines to `.config` has the same effect as appending every
//! fragment in order. The merged list is sorted by symbol: once duplicates
//! are resolved, order no longer changes what kbuild produces, so the
//! sorted form is the canonical one to hash for the cache key.

use std::collections::BTreeMap;
use std::fmt;

use ktstr_sdk::error::{Result, StageError};

/// Hint attached to every rejected fragment line.
pub const LINE_HINT: &str = "write CONFIG_NAME=value or # CONFIG_NAME is not set";

/// The value a fragment assigns to a symbol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// `CONFIG_FOO=<v>` with `v` exactly as written (`y`, `m`, `64`,
    /// `0x1f`, `"quoted"`); never `n`.
    Set(String),
    /// `# CONFIG_FOO is not set` or `CONFIG_FOO=n`.
    NotSet,
}

/// Where an assignment was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The fragment's name: the user's path as given, or `<profile> profile`
    /// for a baked-in fragment.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One parsed fragment line that assigns a symbol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// The full symbol name including the prefix (`CONFIG_BPF`).
    pub symbol: String,
    pub value: Value,
    pub origin: Origin,
}

impl Assignment {
    /// The canonical `.config` line: `CONFIG_X=v` or `# CONFIG_X is not set`.
    pub fn config_line(&self) -> String {
        match &self.value {
            Value::Set(v) => format!("{}={v}", self.symbol),
            Value::NotSet => format!("# {} is not set", self.symbol),
        }
    }

    /// How messages spell the request: `CONFIG_X=v`, or `CONFIG_X=n` for
    /// not set, so an override reads as a plain value change.
    pub fn spelled(&self) -> String {
        spell(&self.symbol, Some(&self.value))
    }

    /// Whether `config` (a parsed `.config`) carries this assignment:
    /// the exact `CONFIG_X=v` line, or for "not set" either the
    /// `# CONFIG_X is not set` line or no `CONFIG_X=` line at all.
    pub fn is_satisfied_by(&self, config: &DotConfig) -> bool {
        match (&self.value, config.get(&self.symbol)) {
            (Value::Set(want), Some(Value::Set(have))) => want == have,
            (Value::Set(_), _) => false,
            (Value::NotSet, Some(Value::Set(_))) => false,
            (Value::NotSet, _) => true,
        }
    }
}

/// `CONFIG_X=v`, `CONFIG_X=n` (not set) or, for a symbol `.config` does not
/// mention at all, `CONFIG_X is absent`.
pub fn spell(symbol: &str, value: Option<&Value>) -> String {
    match value {
        Some(Value::Set(v)) => format!("{symbol}={v}"),
        Some(Value::NotSet) => format!("{symbol}=n"),
        None => format!("{symbol} is absent"),
    }
}

/// How a final `.config` value reads in a "dropped" warning:
/// `CONFIG_X=m`, `CONFIG_X is not set`, or `CONFIG_X is absent`.
pub fn describe_final(symbol: &str, value: Option<&Value>) -> String {
    match value {
        Some(Value::NotSet) => format!("{symbol} is not set"),
        other => spell(symbol, other),
    }
}

/// Parse one fragment. `name` labels errors and provenance.
///
/// Accepted lines: blank, `# comment`, `# CONFIG_FOO is not set`, and
/// `CONFIG_FOO=<value>` where the value is `y`, `n`, `m`, a decimal number,
/// `0x` hex, or a double-quoted string. Leading and trailing whitespace
/// (including a CRLF's `\r`) is ignored. Anything else is an
/// [`InvalidInput`](ktstr_sdk::ErrorKind::InvalidInput) error naming
/// `name:line`.
pub fn parse(name: &str, content: &str) -> Result<Vec<Assignment>> {
    let mut out = Vec::new();
    for (idx, raw) in content.lines().enumerate() {
        let line = idx + 1;
        let text = raw.trim();
        let origin = || Origin {
            file: name.to_string(),
            line,
        };
        if text.is_empty() {
            continue;
        }
        if let Some(comment) = text.strip_prefix('#') {
            if let Some(symbol) = comment
                .trim_start()
                .strip_suffix(" is not set")
                .filter(|s| is_symbol(s))
            {
                out.push(Assignment {
                    symbol: symbol.to_string(),
                    value: Value::NotSet,
                    origin: origin(),
                });
            }
            continue;
        }
        let parsed = text
            .split_once('=')
            .filter(|(symbol, value)| is_symbol(symbol) && is_value(value));
        let Some((symbol, value)) = parsed else {
            return Err(StageError::invalid_input(format!(
                "{name}:{line}: {text:?} is not a kconfig line"
            ))
            .with_hint(LINE_HINT));
        };
        let value = if value == "n" {
            Value::NotSet
        } else {
            Value::Set(value.to_string())
        };
        out.push(Assignment {
            symbol: symbol.to_string(),
            value,
            origin: origin(),
        });
    }
    Ok(out)
}

/// `CONFIG_` followed by at least one of `[A-Za-z0-9_]`.
fn is_symbol(s: &str) -> bool {
    s.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// `y`/`n`/`m`, a decimal integer, `0x` hex, or a well-formed quoted string.
fn is_value(v: &str) -> bool {
    if matches!(v, "y" | "n" | "m") {
        return true;
    }
    let digits = v.strip_prefix('-').unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    is_quoted(v)
}

/// `"..."` where every inner `"` and `\` is backslash-escaped, as kbuild
/// writes string values.
fn is_quoted(v: &str) -> bool {
    let Some(inner) = v.strip_prefix('"').and_then(|rest| rest.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let ok = match c {
            // An escape needs something to escape (not the closing quote).
            '\\' => chars.next().is_some(),
            '"' => false,
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Merge fragments in order: the last assignment of each symbol wins.
/// The result is sorted by symbol (see the module docs for why).
pub fn merge<'a, I>(layers: I) -> Vec<Assignment>
where
    I: IntoIterator<Item = &'a [Assignment]>,
{
    let mut by_symbol: BTreeMap<&str, &Assignment> = BTreeMap::new();
    for layer in layers {
        for a in layer {
            by_symbol.insert(a.symbol.as_str(), a);
        }
    }
    by_symbol.into_values().cloned().collect()
}

/// The canonical text of merged assignments: one `.config` line each,
/// newline-terminated. Comments, blank lines, whitespace, `=n` versus
/// `is not set`, and overridden duplicates do not affect it.
pub fn normalized(assignments: &[Assignment]) -> String {
    assignments.iter().map(|a| a.config_line() + "\n").collect()
}

/// The symbol values of a `.config` file as kbuild wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DotConfig {
    values: BTreeMap<String, Value>,
}

impl DotConfig {
    /// Read `CONFIG_X=v` and `# CONFIG_X is not set` lines; everything else
    /// (section comments, stray text) is ignored. Later lines win, as in
    /// kbuild.
    pub fn parse(text: &str) -> Self {
        let mut values = BTreeMap::new();
        for raw in text.lines() {
            let line = raw.trim();
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(symbol) = comment
                    .trim_start()
                    .strip_suffix(" is not set")
                    .filter(|s| is_symbol(s))
                {
                    values.insert(symbol.to_string(), Value::NotSet);
                }
                continue;
            }
            if let Some((symbol, value)) = line.split_once('=').filter(|(s, _)| is_symbol(s)) {
                let value = if value == "n" {
                    Value::NotSet
                } else {
                    Value::Set(value.to_string())
                };
                values.insert(symbol.to_string(), value);
            }
        }
        Self { values }
    }

    /// The value of `symbol` (`CONFIG_X`), `None` when `.config` does not
    /// mention it.
    pub fn get(&self, symbol: &str) -> Option<&Value> {
        self.values.get(symbol)
    }

    /// Every symbol `.config` mentions, by name, with its value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(s, v)| (s.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr_sdk::ErrorKind;

    fn set(v: &str) -> Value {
        Value::Set(v.to_string())
    }

    #[test]
    fn accepts_every_documented_line_form() {
        let text = "\n  # a comment\n# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_C=m\n\
                    CONFIG_D=n\nCONFIG_E=42\nCONFIG_F=-1\nCONFIG_G=0x1f\n\
                    CONFIG_H=\"ttyS0,115200 \\\"q\\\"\"\n  CONFIG_I=y  \r\n\
                    # CONFIG_J=y is a comment, not an assignment\n";
        let got = parse("frag.kconfig", text).unwrap();
        let pairs: Vec<_> = got
            .iter()
            .map(|a| (a.symbol.as_str(), a.value.clone(), a.origin.line))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("CONFIG_A", Value::NotSet, 3),
                ("CONFIG_B", set("y"), 4),
                ("CONFIG_C", set("m"), 5),
                ("CONFIG_D", Value::NotSet, 6),
                ("CONFIG_E", set("42"), 7),
                ("CONFIG_F", set("-1"), 8),
                ("CONFIG_G", set("0x1f"), 9),
                ("CONFIG_H", set("\"ttyS0,115200 \\\"q\\\"\""), 10),
                ("CONFIG_I", set("y"), 11),
            ]
        );
        assert!(got.iter().all(|a| a.origin.file == "frag.kconfig"));
    }

    #[test]
    fn rejects_malformed_lines_with_file_and_line() {
        for (bad, text) in [
            ("CONFIG_FOO = y", "CONFIG_FOO = y"),
            ("CONFIG_FOO=yes", "CONFIG_FOO=yes"),
            ("FOO=y", "FOO=y"),
            ("CONFIG_=y", "CONFIG_=y"),
            ("CONFIG_FOO=", "CONFIG_FOO="),
            ("CONFIG_FOO", "CONFIG_FOO"),
            ("CONFIG_FOO=0x", "CONFIG_FOO=0x"),
            ("CONFIG_FOO=0xZZ", "CONFIG_FOO=0xZZ"),
            ("CONFIG_FOO=\"open", "CONFIG_FOO=\"open"),
            ("CONFIG_FOO=\"a\"b\"", "CONFIG_FOO=\"a\"b\""),
            ("CONFIG_FOO=\"a\\\"", "CONFIG_FOO=\"a\\\""),
            (
                "CONFIG_FOO=y # trailing comment",
                "CONFIG_FOO=y # trailing comment",
            ),
            ("CONFIG-FOO=y", "CONFIG-FOO=y"),
            ("  CONFIG_FOO=Y  ", "CONFIG_FOO=Y"),
        ] {
            let content = format!("# header\nCONFIG_OK=y\n{bad}\nCONFIG_LATER=y\n");
            let err = parse("my/extra.kconfig", &content).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput, "{bad:?}");
            assert_eq!(
                err.message,
                format!("my/extra.kconfig:3: {text:?} is not a kconfig line"),
                "{bad:?}"
            );
            assert_eq!(err.hint.as_deref(), Some(LINE_HINT));
        }
    }

    fn a(symbol: &str, value: Value, file: &str, line: usize) -> Assignment {
        Assignment {
            symbol: symbol.to_string(),
            value,
            origin: Origin {
                file: file.to_string(),
                line,
            },
        }
    }

    #[test]
    fn merge_last_occurrence_wins_and_keeps_its_origin() {
        let base = vec![
            a("CONFIG_Z", set("y"), "base", 1),
            a("CONFIG_A", set("y"), "base", 2),
        ];
        let first = vec![
            a("CONFIG_A", Value::NotSet, "one", 1),
            a("CONFIG_A", set("m"), "one", 2),
        ];
        let second = vec![a("CONFIG_Z", set("0x10"), "two", 7)];
        let merged = merge([base.as_slice(), first.as_slice(), second.as_slice()]);
        assert_eq!(
            merged,
            vec![
                a("CONFIG_A", set("m"), "one", 2),
                a("CONFIG_Z", set("0x10"), "two", 7),
            ]
        );
    }

    #[test]
    fn normalized_ignores_spelling_but_not_values() {
        let x = merge([parse("x", "# c\nCONFIG_A=y\n\nCONFIG_B=n\n")
            .unwrap()
            .as_slice()]);
        let y = merge([
            parse("y", "  CONFIG_B=y\n# CONFIG_B is not set\nCONFIG_A=y  \n")
                .unwrap()
                .as_slice(),
        ]);
        assert_eq!(normalized(&x), normalized(&y));
        assert_eq!(normalized(&x), "CONFIG_A=y\n# CONFIG_B is not set\n");
        let z = merge([parse("z", "CONFIG_A=m\nCONFIG_B=n\n").unwrap().as_slice()]);
        assert_ne!(normalized(&x), normalized(&z));
    }

    #[test]
    fn dot_config_satisfaction_rules() {
        let cfg = DotConfig::parse(
            "#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_A=y\nCONFIG_M=m\n\
             # CONFIG_OFF is not set\nCONFIG_S=\"x y\"\nCONFIG_LATE=y\nCONFIG_LATE=m\n",
        );
        let check = |sym: &str, v: Value| a(sym, v, "f", 1).is_satisfied_by(&cfg);
        assert!(check("CONFIG_A", set("y")));
        assert!(!check("CONFIG_A", set("m")));
        assert!(!check("CONFIG_M", set("y")));
        assert!(check("CONFIG_S", set("\"x y\"")));
        assert!(check("CONFIG_LATE", set("m")), "last line wins");
        assert!(!check("CONFIG_ABSENT", set("y")));
        assert!(check("CONFIG_OFF", Value::NotSet));
        assert!(check("CONFIG_ABSENT", Value::NotSet));
        assert!(!check("CONFIG_A", Value::NotSet));
        assert_eq!(
            describe_final("CONFIG_OFF", cfg.get("CONFIG_OFF")),
            "CONFIG_OFF is not set"
        );
        assert_eq!(
            describe_final("CONFIG_M", cfg.get("CONFIG_M")),
            "CONFIG_M=m"
        );
        assert_eq!(describe_final("CONFIG_Q", None), "CONFIG_Q is absent");
    }
}
