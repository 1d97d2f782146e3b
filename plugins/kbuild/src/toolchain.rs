//! The toolchain a build will really run, and its identity for the key.
//!
//! `--toolchain` picks a family (`gcc`, `gcc-N`, `clang`/`llvm`, `llvm-N`);
//! a foreign `--arch` needs a `CROSS_COMPILE` prefix, found on PATH by the
//! names distributions use unless `--cross-compile` gives one. The key then
//! records what each tool says of itself (`--version`, and the target
//! triple for gcc), derived from the very commands make is given.
//!
//! Asking a compiler its version costs a process spawn (~5-20 ms each), on
//! every cache hit. So answers are remembered per binary: a memo file under
//! `<cache root>/state/kbuild/toolchain/` named by the binary's resolved path,
//! size, mtime and inode. An upgraded compiler is a different file (new
//! size/mtime/inode) and is asked again; a hit costs a few `stat`s.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ktstr_sdk::arch::KernelArch;
use ktstr_sdk::context::{CommandSpec, StageContext};
use ktstr_sdk::error::{Result, StageError};

/// Debian packages a kernel build needs; quoted in hints.
pub const DEBIAN_PACKAGES: &str =
    "apt-get install build-essential flex bison bc libelf-dev libssl-dev dwarves cpio";

/// A compiler family, as `--toolchain` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `gcc` or `gcc-N`.
    Gcc(Option<u32>),
    /// `clang`, `llvm` (`LLVM=1`) or `llvm-N`/`clang-N` (`LLVM=-N`).
    Llvm(Option<u32>),
}

impl Family {
    /// Parse a `--toolchain` value.
    pub fn parse(raw: &str) -> Result<Self> {
        let bad = || {
            StageError::invalid_input(format!("--toolchain {raw}: not a toolchain ktstr knows"))
                .with_hint(
                    "use gcc, gcc-N, clang, llvm or llvm-N (N a major version, e.g. llvm-16)",
                )
        };
        let (name, version) = match raw.split_once('-') {
            Some((n, v)) => {
                let v: u32 = v.parse().map_err(|_| bad())?;
                (n, Some(v))
            }
            None => (raw, None),
        };
        match name {
            "gcc" => Ok(Self::Gcc(version)),
            "clang" | "llvm" => Ok(Self::Llvm(version)),
            _ => Err(bad()),
        }
    }

    /// `-N`, or nothing.
    fn suffix(self) -> String {
        match self {
            Self::Gcc(Some(n)) | Self::Llvm(Some(n)) => format!("-{n}"),
            _ => String::new(),
        }
    }

    /// The compiler command for `cross` (`aarch64-linux-gnu-gcc-12`, `clang-16`).
    pub fn cc(self, cross: &str) -> String {
        match self {
            Self::Gcc(_) => format!("{cross}gcc{}", self.suffix()),
            Self::Llvm(_) => format!("clang{}", self.suffix()),
        }
    }

    /// The linker command.
    pub fn ld(self, cross: &str) -> String {
        match self {
            Self::Gcc(_) => format!("{cross}ld"),
            Self::Llvm(_) => format!("ld.lld{}", self.suffix()),
        }
    }

    /// The assembler command, `None` when the compiler assembles itself.
    pub fn assembler(self, cross: &str) -> Option<String> {
        match self {
            Self::Gcc(_) => Some(format!("{cross}as")),
            Self::Llvm(_) => None,
        }
    }

    /// The objcopy for this family's ELF files.
    pub fn objcopy(self, cross: &str) -> String {
        match self {
            Self::Gcc(_) => format!("{cross}objcopy"),
            Self::Llvm(_) => format!("llvm-objcopy{}", self.suffix()),
        }
    }

    /// The make arguments selecting this family (besides `CROSS_COMPILE`).
    pub fn make_args(self, cross: &str) -> Vec<String> {
        match self {
            Self::Gcc(None) => Vec::new(),
            Self::Gcc(Some(_)) => vec![
                format!("CC={}", self.cc(cross)),
                format!("HOSTCC={}", self.cc("")),
            ],
            Self::Llvm(None) => vec!["LLVM=1".into()],
            Self::Llvm(Some(n)) => vec![format!("LLVM=-{n}")],
        }
    }

    /// The Debian package providing this family's compiler.
    fn package(self) -> String {
        match self {
            Self::Gcc(_) => format!("gcc{}", self.suffix()),
            Self::Llvm(_) => format!("clang{s} lld{s} llvm{s}", s = self.suffix()),
        }
    }
}

/// Find a `CROSS_COMPILE` prefix for `arch` whose compiler is on PATH.
pub fn find_cross_prefix(arch: &KernelArch, family: Family) -> Result<String> {
    for prefix in arch.cross_prefixes {
        if which(&family.cc(prefix)).is_some() {
            return Ok((*prefix).to_string());
        }
    }
    let tried: Vec<String> = arch.cross_prefixes.iter().map(|p| family.cc(p)).collect();
    Err(StageError::not_found(format!(
        "--arch {}: no cross compiler on PATH (looked for {})",
        arch.name,
        tried.join(", ")
    ))
    .with_hint(format!(
        "install one (on Debian: apt-get install {}), pass --cross-compile PREFIX, or build \
         with --toolchain llvm, which needs no cross compiler",
        arch.cross_package
    )))
}

/// The file `program` runs: a path as given, else the first match on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// What a tool says of itself: the first line of `<command> --version`,
/// and with `triple`, ` (target <-dumpmachine>)`. `role` and `var` name it
/// in errors.
pub fn describe(
    memo_root: Option<&Path>,
    cx: &StageContext,
    role: &str,
    var: &str,
    command: &str,
    triple: bool,
    family: Family,
) -> Result<String> {
    let memo = memo_root.and_then(|root| Memo::for_command(root, command, triple));
    if let Some(known) = memo.as_ref().and_then(Memo::read) {
        return Ok(known);
    }
    let mut out = probe(cx, role, var, command, &["--version"], family)?;
    if triple {
        let machine = probe(cx, role, var, command, &["-dumpmachine"], family)?;
        out = format!("{out} (target {machine})");
    }
    if let Some(memo) = memo {
        memo.write(&out);
    }
    Ok(out)
}

/// First non-empty output line of `command args...`.
fn probe(
    cx: &StageContext,
    role: &str,
    var: &str,
    command: &str,
    args: &[&str],
    family: Family,
) -> Result<String> {
    let mut words = command.split_whitespace();
    let program = words.next().unwrap_or(command);
    let spec = CommandSpec::new(program)
        .args(words)
        .args(args.iter().copied());
    let hint = format!(
        "install the {role} (on Debian: apt-get install {}; for the kernel's other build tools: \
         {DEBIAN_PACKAGES}), put `{program}` on PATH, or point ${var} at another one",
        family.package()
    );
    let out = cx.runner.capture(&spec).map_err(|e| {
        let mut err =
            StageError::command(format!("cannot run the {role} `{command}`")).with_hint(&hint);
        if e.causes.is_empty() {
            err.causes.push(e.message);
        } else {
            err.causes.extend(e.causes);
        }
        err
    })?;
    let first = out
        .stdout
        .lines()
        .chain(out.stderr.lines())
        .map(str::trim)
        .find(|l| !l.is_empty());
    match (out.code, first) {
        (Some(0), Some(line)) => Ok(line.to_string()),
        (code, _) => {
            let status = code.map_or("killed by a signal".to_string(), |c| format!("exit {c}"));
            let mut err =
                StageError::command(format!("`{}` did not answer ({status})", spec.display()))
                    .with_hint(hint);
            if let Some(line) = out.stderr.lines().find(|l| !l.trim().is_empty()) {
                err.causes.push(line.trim().to_string());
            }
            Err(err)
        }
    }
}

/// A remembered answer for one command over files that have not changed.
struct Memo {
    path: PathBuf,
}

impl Memo {
    /// `None` when a word of the command is not a file we can stat (the
    /// answer is then not remembered).
    fn for_command(root: &Path, command: &str, triple: bool) -> Option<Self> {
        let mut id = format!("v1 triple={triple}\n");
        for word in command.split_whitespace() {
            if word.starts_with('-') {
                id.push_str(&format!("arg {word}\n"));
                continue;
            }
            let file = which(word)?;
            let real = std::fs::canonicalize(&file).ok()?;
            let m = std::fs::metadata(&real).ok()?;
            id.push_str(&format!(
                "{word} {} {} {} {} {}\n",
                real.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            ));
        }
        let name = &ktstr_sdk::hash::sha256_hex(id.as_bytes())[..32];
        Some(Self {
            path: ktstr_sdk::paths::plugin_state(root, crate::NAME)
                .join("toolchain")
                .join(name),
        })
    }

    fn read(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let line = text.strip_suffix('\n')?;
        (!line.is_empty() && !line.contains('\n') && line.len() < 4096).then(|| line.to_string())
    }

    /// Best effort: a memo that cannot be written costs a spawn next time.
    fn write(&self, answer: &str) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        let ok = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, format!("{answer}\n")))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = ok {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(
                "cannot remember toolchain identity in {}: {e}",
                dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_parse_and_name_their_tools() {
        assert_eq!(Family::parse("gcc").unwrap(), Family::Gcc(None));
        assert_eq!(Family::parse("gcc-12").unwrap(), Family::Gcc(Some(12)));
        assert_eq!(Family::parse("clang").unwrap(), Family::Llvm(None));
        assert_eq!(Family::parse("llvm-16").unwrap(), Family::Llvm(Some(16)));
        for bad in ["icc", "gcc-", "llvm-x", "gcc-12-1", ""] {
            let err = Family::parse(bad).unwrap_err();
            assert!(err.message.contains("--toolchain"), "{bad}: {err}");
        }
        let g = Family::Gcc(Some(12));
        assert_eq!(g.cc("aarch64-linux-gnu-"), "aarch64-linux-gnu-gcc-12");
        assert_eq!(g.ld("aarch64-linux-gnu-"), "aarch64-linux-gnu-ld");
        assert_eq!(
            g.make_args("aarch64-linux-gnu-"),
            ["CC=aarch64-linux-gnu-gcc-12", "HOSTCC=gcc-12"]
        );
        let l = Family::Llvm(Some(16));
        assert_eq!(
            (l.cc("x-"), l.ld("x-")),
            ("clang-16".into(), "ld.lld-16".into())
        );
        assert_eq!(l.assembler(""), None);
        assert_eq!(Family::Llvm(None).make_args(""), ["LLVM=1"]);
        assert_eq!(l.make_args(""), ["LLVM=-16"]);
    }

    #[test]
    fn missing_cross_compiler_names_the_package() {
        let arch = ktstr_sdk::arch::find("loongarch").unwrap();
        // Nobody has a loongarch cross compiler called this on PATH.
        let err = find_cross_prefix(arch, Family::Gcc(Some(999))).unwrap_err();
        assert!(
            err.message.contains("loongarch64-linux-gnu-gcc-999"),
            "{err}"
        );
        let hint = err.hint.unwrap();
        assert!(hint.contains("gcc-loongarch64-linux-gnu"), "{hint}");
        assert!(hint.contains("--cross-compile"), "{hint}");
    }

    #[test]
    fn which_finds_sh() {
        assert!(which("sh").is_some());
        assert!(which("ktstr-no-such-tool").is_none());
        assert!(which("/bin/sh").is_some());
    }
}
