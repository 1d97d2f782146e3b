//! The cache backend conformance suite: the contract of [`CacheBackend`]
//! as rules a backend author runs against their own backend, in their own
//! `tests/`, without running ktstr.
//!
//! Enable the SDK's `conformance` feature for tests only (it pulls in
//! `tempfile`; plugin builds stay lean):
//!
//! ```toml
//! [dev-dependencies]
//! ktstr-sdk = { path = "...", features = ["conformance"] }
//! ```
//!
//! then give the suite a way to make your backend:
//!
//! ```ignore
//! use ktstr_sdk::conformance::cache::{self, Fixture, Options};
//!
//! #[test]
//! fn conforms() {
//!     cache::run(
//!         &|fx: &Fixture| Box::new(MyCache::at(fx.shared.join("cache"))),
//!         Options::default(),
//!     );
//! }
//! ```
//!
//! Each [`Rule`] runs on a fresh [`Fixture`]; `make` is called once per
//! backend instance a rule needs (several for the concurrency and
//! second-reader checks), and every instance made for one fixture must see
//! the same storage. [`run`] panics naming each broken rule and what it
//! observed; [`check`] returns the [`Report`] instead. Rules the backend
//! cannot be checked for say why they were skipped ([`Options::read_only`]
//! and [`Options::corrupt`] enable two of them).
//!
//! [`CacheBackend`]: crate::cache::CacheBackend
#![cfg(feature = "conformance")]

mod handle;
mod rules;
mod sources;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cache::{CacheBackend, CacheKey};
use handle::Handle;
use sources::{Build, Shape};

/// Where one rule's backends keep their data.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Unique per rule run (`cf4711-3`): use it as an
    /// object-store prefix, bucket path or table name, so every rule starts
    /// from an empty cache even on a shared server.
    pub id: String,
    /// A directory every instance made for this fixture shares (a local
    /// backend's root).
    pub shared: PathBuf,
    /// A directory of this instance alone (scratch, unpack space).
    pub private: PathBuf,
}

/// Makes one backend instance for a fixture.
pub type Make<'a> = dyn Fn(&Fixture) -> Box<dyn CacheBackend> + Sync + 'a;

/// Damages the stored entry of a key, at rest (see [`Options::corrupt`]).
pub type Corrupt<'a> = dyn Fn(&Fixture, &CacheKey) + Sync + 'a;

/// What the suite needs beyond the backend itself.
pub struct Options<'a> {
    read_only: Option<Box<Make<'a>>>,
    corrupt: Option<Box<Corrupt<'a>>>,
    skip: Vec<(Rule, String)>,
    large_size: u64,
    rounds: u32,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            read_only: None,
            corrupt: None,
            skip: Vec::new(),
            large_size: (64 << 20) + 1,
            rounds: 4,
        }
    }
}

impl fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("read_only", &self.read_only.is_some())
            .field("corrupt", &self.corrupt.is_some())
            .field("skip", &self.skip)
            .field("large_size", &self.large_size)
            .field("rounds", &self.rounds)
            .finish()
    }
}

impl<'a> Options<'a> {
    /// How to make a read-only instance over the same storage as `make`'s
    /// for the same fixture (your backend's `read_only = true`). Enables
    /// [`Rule::ReadOnly`].
    pub fn read_only(
        mut self,
        make: impl Fn(&Fixture) -> Box<dyn CacheBackend> + Sync + 'a,
    ) -> Self {
        self.read_only = Some(Box::new(make));
        self
    }

    /// How to damage a stored entry at rest, as a disk error or a careless
    /// hand would (flip a byte of a stored file, truncate it): the lookup
    /// must then report it. Enables [`Rule::Corrupt`].
    pub fn corrupt(mut self, damage: impl Fn(&Fixture, &CacheKey) + Sync + 'a) -> Self {
        self.corrupt = Some(Box::new(damage));
        self
    }

    /// Size of the image in the large-artifact rule: 64 MiB + 1 by default
    /// (the odd byte catches block-size rounding).
    pub fn large_size(mut self, bytes: u64) -> Self {
        self.large_size = bytes;
        self
    }

    /// Stores per writer in the atomic-replace rule (4 by default).
    pub fn rounds(mut self, rounds: u32) -> Self {
        self.rounds = rounds.max(1);
        self
    }

    /// Do not check `rule`, for `reason` (printed with every run).
    pub fn skip(mut self, rule: Rule, reason: impl Into<String>) -> Self {
        self.skip.push((rule, reason.into()));
        self
    }
}

/// One checked promise of the cache contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Miss,
    RoundTrip,
    ListOrder,
    Remove,
    Replace,
    AtomicReplace,
    PartialStore,
    ReadOnly,
    LargeArtifact,
    Corrupt,
    Cancellation,
}

impl Rule {
    pub const ALL: [Rule; 11] = [
        Rule::Miss,
        Rule::RoundTrip,
        Rule::ListOrder,
        Rule::Remove,
        Rule::Replace,
        Rule::AtomicReplace,
        Rule::PartialStore,
        Rule::ReadOnly,
        Rule::LargeArtifact,
        Rule::Corrupt,
        Rule::Cancellation,
    ];

    /// The rule's name in reports (`round-trip`).
    pub fn name(self) -> &'static str {
        match self {
            Rule::Miss => "miss",
            Rule::RoundTrip => "round-trip",
            Rule::ListOrder => "list-order",
            Rule::Remove => "remove",
            Rule::Replace => "replace",
            Rule::AtomicReplace => "atomic-replace",
            Rule::PartialStore => "partial-store",
            Rule::ReadOnly => "read-only",
            Rule::LargeArtifact => "large-artifact",
            Rule::Corrupt => "corrupt",
            Rule::Cancellation => "cancellation",
        }
    }

    /// The promise, in one sentence.
    pub fn contract(self) -> &'static str {
        match self {
            Rule::Miss => {
                "an empty cache answers lookup with Ok(None), list with nothing and remove with Ok(false)"
            }
            Rule::RoundTrip => {
                "what store is given, lookup returns: byte-identical files, equal metadata with real digests, to a second instance too, and store leaves its inputs as they were"
            }
            Rule::ListOrder => {
                "list returns every entry, in sort_newest_first order, with the metadata lookup returns"
            }
            Rule::Remove => {
                "remove deletes exactly its key (not one it is a prefix of) and returns Ok(true), then Ok(false)"
            }
            Rule::Replace => {
                "a store over an existing key replaces the whole entry, older or newer"
            }
            Rule::AtomicReplace => {
                "under concurrent stores of one key, every lookup returns one whole stored version, never a mix"
            }
            Rule::PartialStore => {
                "a store that fails (a missing or non-file artifact) leaves nothing visible and keeps the entry it would have replaced, and its error names the bad input"
            }
            Rule::ReadOnly => {
                "a read-only backend refuses store and remove with an Unsupported error and a hint, and changes nothing"
            }
            Rule::LargeArtifact => "a large image (64 MiB+) round-trips byte-identical",
            Rule::Corrupt => {
                "an entry damaged at rest is a Corrupt error or a miss on lookup, never served; a store replaces it and remove deletes it"
            }
            Rule::Cancellation => "a cancelled store leaves nothing visible",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one rule went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Not checked, and why.
    Skipped(String),
    /// The rule is broken; what was observed.
    Broken(String),
}

/// Every rule's outcome for one backend.
#[derive(Debug, Clone)]
pub struct Report {
    /// The backend's `describe()`.
    pub backend: String,
    pub results: Vec<(Rule, Outcome)>,
}

impl Report {
    /// The broken rules and what each observed.
    pub fn broken(&self) -> Vec<(Rule, &str)> {
        self.results
            .iter()
            .filter_map(|(r, o)| match o {
                Outcome::Broken(why) => Some((*r, why.as_str())),
                _ => None,
            })
            .collect()
    }

    pub fn outcome(&self, rule: Rule) -> Option<&Outcome> {
        self.results
            .iter()
            .find(|(r, _)| *r == rule)
            .map(|(_, o)| o)
    }
}

/// One line per rule: `ok`, `skipped` or `BROKEN`, with the contract and
/// the observation of each broken rule.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cache conformance of {}:", self.backend)?;
        for (rule, outcome) in &self.results {
            match outcome {
                Outcome::Passed => writeln!(f, "  ok       {rule}")?,
                Outcome::Skipped(why) => writeln!(f, "  skipped  {rule}: {why}")?,
                Outcome::Broken(why) => {
                    writeln!(f, "  BROKEN   {rule} ({}): {why}", rule.contract())?
                }
            }
        }
        Ok(())
    }
}

/// Check every rule; panic naming each broken one and what it observed.
/// Skipped rules are printed (a skip nobody sees reads as a pass).
pub fn run(make: &Make<'_>, options: Options<'_>) {
    let report = check(make, &options);
    for (rule, outcome) in &report.results {
        if let Outcome::Skipped(why) = outcome {
            crate::testing::skip(format!("cache conformance rule {rule}: {why}"));
        }
    }
    let broken = report.broken();
    if !broken.is_empty() {
        let names: Vec<&str> = broken.iter().map(|(r, _)| r.name()).collect();
        panic!(
            "{} broken cache conformance rule(s): {}\n{report}",
            broken.len(),
            names.join(", ")
        );
    }
}

/// Check every rule.
pub fn check(make: &Make<'_>, options: &Options<'_>) -> Report {
    check_rules(&Rule::ALL, make, options)
}

/// Check `rules` only.
pub fn check_rules(rules: &[Rule], make: &Make<'_>, options: &Options<'_>) -> Report {
    let mut results = Vec::new();
    let mut backend = None;
    for &rule in rules {
        let outcome = match options.skip.iter().find(|(r, _)| *r == rule) {
            Some((_, why)) => Outcome::Skipped(why.clone()),
            None => {
                let suite = Suite::new(rule, make, options);
                backend.get_or_insert_with(|| suite.instance().describe());
                rules::check(rule, &suite)
            }
        };
        results.push((rule, outcome));
    }
    Report {
        backend: backend.unwrap_or_else(|| "a cache backend".into()),
        results,
    }
}

/// Sequence numbers keeping fixtures of one process apart.
static FIXTURES: AtomicUsize = AtomicUsize::new(0);

/// One rule's run: its fixture and the ways to make backends over it.
struct Suite<'s, 'a> {
    rule: Rule,
    make: &'s Make<'a>,
    options: &'s Options<'a>,
    /// Holds `shared`, the instances' private directories and the sources.
    root: tempfile::TempDir,
    fixture: Fixture,
    instances: AtomicUsize,
}

impl<'s, 'a> Suite<'s, 'a> {
    fn new(rule: Rule, make: &'s Make<'a>, options: &'s Options<'a>) -> Self {
        let root = tempfile::Builder::new()
            .prefix(&format!("ktstr-conformance-{rule}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cache conformance: cannot create a temp dir: {e}"));
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared)
            .unwrap_or_else(|e| panic!("cache conformance: create {}: {e}", shared.display()));
        let fixture = Fixture {
            // Short: test servers that keep an object as one file per key
            // (s3s-fs) hit NAME_MAX with long prefixes.
            id: format!(
                "cf{}-{}",
                std::process::id(),
                FIXTURES.fetch_add(1, Ordering::Relaxed)
            ),
            shared,
            private: PathBuf::new(),
        };
        Self {
            rule,
            make,
            options,
            root,
            fixture,
            instances: AtomicUsize::new(0),
        }
    }

    /// A fixture with a fresh private directory.
    fn next_fixture(&self) -> Fixture {
        let n = self.instances.fetch_add(1, Ordering::Relaxed);
        let private = self.root.path().join(format!("instance-{n}"));
        std::fs::create_dir(&private)
            .unwrap_or_else(|e| panic!("cache conformance: create {}: {e}", private.display()));
        Fixture {
            private,
            ..self.fixture.clone()
        }
    }

    /// A new backend instance over this rule's storage.
    fn instance(&self) -> Handle {
        Handle::new((self.make)(&self.next_fixture()))
    }

    /// A read-only instance over the same storage, if the author said how.
    fn read_only_instance(&self) -> Option<Handle> {
        let make = self.options.read_only.as_ref()?;
        Some(Handle::new(make(&self.next_fixture())))
    }

    /// Damage `key`'s stored entry, if the author said how.
    fn corrupt(&self, key: &CacheKey) -> bool {
        match &self.options.corrupt {
            Some(damage) => {
                damage(&self.next_fixture(), key);
                true
            }
            None => false,
        }
    }

    /// A key of this rule's (`<rule>-<name>`).
    fn key(&self, name: &str) -> CacheKey {
        CacheKey::parse(&format!("{}-{name}", self.rule)).expect("conformance keys are valid")
    }

    /// Write build `version` of `key` (each call its own directory).
    fn build(&self, key: &CacheKey, version: u32, shape: &Shape) -> Build {
        let n = self.instances.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.path().join(format!("build-{key}-{version}-{n}"));
        Build::write(&dir, key, version, shape)
    }

    /// The directory for inputs the rule makes by hand.
    fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cache conformance: create {}: {e}", dir.display()));
        dir
    }
}
