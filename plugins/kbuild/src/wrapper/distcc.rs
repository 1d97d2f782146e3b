//! distcc: which hosts it would use, how many jobs they take, whether any
//! answers, and whether they compile with this host's compiler.
//!
//! The host list is distcc's own (`DISTCC_HOSTS`, else `$DISTCC_DIR/hosts`
//! or `~/.distcc/hosts`, else `/etc/distcc/hosts`), read with distcc's
//! syntax (`host[:port][/limit][,opts]`, `@host` over ssh, `localhost`,
//! `--options`). `-j` is the sum of the reachable remote hosts' limits.
//!
//! distcc ships preprocessed source to each host's own compiler, so a host
//! with another gcc yields other objects under this host's key. Each
//! remote host compiles a one-line probe with fallback off, and the
//! compiler stamp in its object (`.comment`: `GCC: (Debian 14.2.0-19)
//! 14.2.0`) is compared with a local compile's; a difference is a
//! warning naming the host.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ktstr_sdk::context::{CommandSpec, StageContext};
use ktstr_sdk::make_env;

use super::Unavailable;

/// distccd's port when a host names none.
pub const DEFAULT_PORT: u16 = 3632;
/// distcc's job limit for a host that names none.
const DEFAULT_LIMIT: usize = 4;
/// How long a host may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One entry of a distcc host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// `localhost[/N]`: compiles here, not a remote slot.
    Local,
    /// `host[:port][/limit]`, as written (`spec`, without options).
    Tcp {
        spec: String,
        host: String,
        port: u16,
        limit: usize,
    },
    /// `[user]@host[/limit][:command]`.
    Ssh { spec: String, limit: usize },
    /// `+zeroconf`: hosts found at run time, not countable here.
    Zeroconf,
}

/// Parse a host list (`DISTCC_HOSTS` or a hosts file; `#` starts a comment).
pub fn parse_hosts(text: &str) -> Vec<Host> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for word in line.split_whitespace() {
            if word.starts_with("--") {
                continue;
            }
            if word == "+zeroconf" {
                out.push(Host::Zeroconf);
                continue;
            }
            let spec = word.split(',').next().unwrap_or(word);
            out.push(parse_host(spec));
        }
    }
    out
}

fn parse_host(spec: &str) -> Host {
    let limit_of = |s: &str| s.parse::<usize>().ok();
    if let Some((_, rest)) = spec.rsplit_once('@') {
        let host = rest.split(':').next().unwrap_or(rest);
        let limit = host
            .split_once('/')
            .and_then(|(_, l)| limit_of(l))
            .unwrap_or(DEFAULT_LIMIT);
        return Host::Ssh {
            spec: spec.to_string(),
            limit,
        };
    }
    // host[:port][/limit] or the old host[/limit][:port].
    let (mut host, mut port, mut limit) = (spec, DEFAULT_PORT, None);
    if let Some((h, rest)) = host.split_once('/') {
        host = h;
        let (l, p) = rest.split_once(':').unwrap_or((rest, ""));
        limit = limit_of(l);
        if let Ok(p) = p.parse() {
            port = p;
        }
    }
    if let Some((h, p)) = host.split_once(':') {
        host = h;
        port = p.parse().unwrap_or(DEFAULT_PORT);
    }
    if host == "localhost" {
        return Host::Local;
    }
    Host::Tcp {
        spec: spec.to_string(),
        host: host.to_string(),
        port,
        limit: limit.unwrap_or(DEFAULT_LIMIT),
    }
}

/// An ssh host spec without its `/limit` (`u@h/4:cmd` -> `u@h:cmd`).
fn without_limit(spec: &str) -> String {
    let (host, command) = spec.split_at(spec.find(':').unwrap_or(spec.len()));
    let host = host.split('/').next().unwrap_or(host);
    format!("{host}{command}")
}

/// The host list distcc would read, and where it came from.
fn host_list() -> Option<(String, String)> {
    if let Some(v) = ktstr_sdk::paths::env_nonempty("DISTCC_HOSTS") {
        return Some(("DISTCC_HOSTS".into(), v));
    }
    let dir = ktstr_sdk::paths::env_nonempty("DISTCC_DIR")
        .map(PathBuf::from)
        .or_else(|| ktstr_sdk::paths::env_nonempty("HOME").map(|h| Path::new(&h).join(".distcc")));
    let files = dir
        .map(|d| d.join("hosts"))
        .into_iter()
        .chain([PathBuf::from("/etc/distcc/hosts")]);
    for file in files {
        if let Ok(text) = std::fs::read_to_string(&file) {
            return Some((file.display().to_string(), text));
        }
    }
    None
}

/// Whether `host:port` accepts a connection; the error otherwise.
fn connect(host: &str, port: u16) -> std::result::Result<(), String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?;
    let mut last = format!("{host}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{host}:{port}: {e}"),
        }
    }
    Err(last)
}

/// distcc can send jobs somewhere: `(-j, "N remote slots")`, after
/// warning about hosts that do not answer or compile with another compiler.
pub fn ready(cc: &str, cx: &StageContext) -> std::result::Result<(usize, String), Unavailable> {
    if let Some(dir) = ktstr_sdk::paths::env_nonempty("DISTCC_DIR")
        && !Path::new(&dir).is_dir()
    {
        // distcc keeps its locks there, and without it compiles everything locally.
        return Err(Unavailable {
            why: format!("DISTCC_DIR={dir} is not a directory"),
            fix: format!("mkdir -p {dir}, or unset DISTCC_DIR"),
        });
    }
    let Some((source, text)) = host_list() else {
        return Err(Unavailable {
            why: "it has no hosts (DISTCC_HOSTS is unset and there is no ~/.distcc/hosts or \
                  /etc/distcc/hosts)"
                .into(),
            fix: "export DISTCC_HOSTS='host1/8 host2/8' (see `ktstr docs build-farm`)".into(),
        });
    };
    let hosts = parse_hosts(&text);
    let tcp: Vec<(&str, &str, u16, usize)> = hosts
        .iter()
        .filter_map(|h| match h {
            Host::Tcp {
                spec,
                host,
                port,
                limit,
            } => Some((spec.as_str(), host.as_str(), *port, *limit)),
            _ => None,
        })
        .collect();
    let answers: Vec<std::result::Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = tcp
            .iter()
            .map(|(_, host, port, _)| s.spawn(move || connect(host, *port)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("probe panicked".into())))
            .collect()
    });
    // (as written, as one distcc job goes to it, limit)
    let mut usable: Vec<(String, String, usize)> = Vec::new();
    let mut dead = Vec::new();
    for ((spec, host, port, limit), answer) in tcp.iter().zip(answers) {
        match answer {
            Ok(()) => usable.push((spec.to_string(), format!("{host}:{port}"), *limit)),
            Err(e) => dead.push(e),
        }
    }
    for h in &hosts {
        if let Host::Ssh { spec, limit } = h {
            usable.push((spec.clone(), without_limit(spec), *limit));
        }
    }
    let zeroconf = hosts.contains(&Host::Zeroconf);
    if usable.is_empty() && !zeroconf {
        let why = if dead.is_empty() {
            format!("{source} names no remote host")
        } else {
            format!("no distccd answers ({})", dead.join("; "))
        };
        return Err(Unavailable {
            why,
            fix: format!(
                "start distccd on the hosts of {source} (distccd --daemon --allow <this host>) \
                 or list reachable ones"
            ),
        });
    }
    if !dead.is_empty() {
        cx.progress.warn(&format!(
            "distcc: {} of the hosts in {source} do not answer ({}); building with the others",
            dead.len(),
            dead.join("; ")
        ));
    }
    check_compilers(cc, &usable, cx);
    let slots: usize = usable.iter().map(|(_, _, l)| l).sum();
    let capacity = if zeroconf {
        format!("{slots} remote slots + zeroconf")
    } else {
        format!("{slots} remote slots")
    };
    Ok((slots, capacity))
}

/// Warn about each host whose compiler stamps objects differently from
/// this host's `cc`. Best effort: a probe that cannot run is a warning.
fn check_compilers(cc: &str, hosts: &[(String, String, usize)], cx: &StageContext) {
    let Some(dir) = ProbeDir::new() else { return };
    let Some(local) = dir.compile(cx, cc, None, "local.o") else {
        tracing::debug!("cannot compile the distcc probe locally with {cc}");
        return;
    };
    for (i, (spec, host, _)) in hosts.iter().enumerate() {
        match dir.compile(cx, cc, Some(host), &format!("host{i}.o")) {
            Some(remote) if remote == local => {}
            Some(remote) => cx.progress.warn(&format!(
                "distcc host {spec} compiles with `{remote}`, this host with `{local}`: its \
                 objects differ from a local build's while the cache key names this host's \
                 compiler; install the same compiler there or drop it from the host list"
            )),
            None => cx.progress.warn(&format!(
                "distcc host {spec} did not compile a probe (is {cc} installed there and \
                 allowed by distccd?); distcc retries such jobs locally"
            )),
        }
    }
}

/// A scratch directory with the probe source, removed on drop.
struct ProbeDir(PathBuf);

impl ProbeDir {
    fn new() -> Option<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("ktstr-distcc-probe-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let me = Self(dir);
        std::fs::write(
            me.0.join("probe.c"),
            "int ktstr_distcc_probe(int x) { return x + 1; }\n",
        )
        .ok()?;
        Some(me)
    }

    /// Compile the probe (through distcc on `host`, with no local
    /// fallback) and return the compiler's stamp in the object.
    fn compile(
        &self,
        cx: &StageContext,
        cc: &str,
        host: Option<&str>,
        out: &str,
    ) -> Option<String> {
        let mut words: Vec<&str> = cc.split_whitespace().collect();
        if host.is_some() {
            words.insert(0, "distcc");
        }
        let mut spec = CommandSpec::new(words[0])
            .args(words[1..].iter().copied())
            .args(["-c", "probe.c", "-o", out])
            .cwd(&self.0);
        if let Some(h) = host {
            for (k, v) in super::Engine::Distcc.env() {
                spec = spec.env(k, v);
            }
            spec = spec
                .env("DISTCC_HOSTS", h)
                .env("DISTCC_FALLBACK", "0")
                .env("DISTCC_SKIP_LOCAL_RETRY", "1")
                .env("DISTCC_IO_TIMEOUT", "30");
        }
        let got = cx.runner.capture(&make_env::controlled(spec)).ok()?;
        if got.code != Some(0) {
            tracing::debug!(host, stderr = %got.stderr, "distcc probe failed");
            return None;
        }
        compiler_stamp(&std::fs::read(self.0.join(out)).ok()?)
    }
}

impl Drop for ProbeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The compiler's identification string in an object (its `.comment`
/// section): `GCC: (Debian 14.2.0-19) 14.2.0`, `Debian clang version 19.1.7`.
pub fn compiler_stamp(object: &[u8]) -> Option<String> {
    for needle in [&b"GCC: ("[..], b"clang version "] {
        let Some(at) = object.windows(needle.len()).position(|w| w == needle) else {
            continue;
        };
        let start = object[..at]
            .iter()
            .rposition(|&b| b == 0)
            .map_or(0, |p| p + 1);
        let end = object[at..]
            .iter()
            .position(|&b| b == 0)
            .map_or(object.len(), |p| at + p);
        return Some(String::from_utf8_lossy(&object[start..end]).into_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(spec: &str, host: &str, port: u16, limit: usize) -> Host {
        Host::Tcp {
            spec: spec.into(),
            host: host.into(),
            port,
            limit,
        }
    }

    #[test]
    fn host_lists_parse_like_distcc() {
        let got = parse_hosts(
            "--randomize localhost/2 a b:4000 c/8 d:4001/12 e/6:4002 f/3,lzo @g/5 u@h:/usr/bin/distccd +zeroconf\n# x/9",
        );
        assert_eq!(
            got,
            [
                Host::Local,
                tcp("a", "a", 3632, 4),
                tcp("b:4000", "b", 4000, 4),
                tcp("c/8", "c", 3632, 8),
                tcp("d:4001/12", "d", 4001, 12),
                tcp("e/6:4002", "e", 4002, 6),
                tcp("f/3", "f", 3632, 3),
                Host::Ssh {
                    spec: "@g/5".into(),
                    limit: 5
                },
                Host::Ssh {
                    spec: "u@h:/usr/bin/distccd".into(),
                    limit: 4
                },
                Host::Zeroconf,
            ]
        );
    }

    #[test]
    fn ssh_specs_lose_only_their_limit() {
        assert_eq!(without_limit("u@h/4:/bin/distccd"), "u@h:/bin/distccd");
        assert_eq!(without_limit("@g/5"), "@g");
        assert_eq!(without_limit("@g"), "@g");
        assert_eq!(
            without_limit("u@h:/usr/bin/distccd"),
            "u@h:/usr/bin/distccd"
        );
    }

    #[test]
    fn the_stamp_is_the_whole_comment_string() {
        let obj = b"\x7fELF\0\0junk\0GCC: (Debian 14.2.0-19) 14.2.0\0more";
        assert_eq!(
            compiler_stamp(obj).unwrap(),
            "GCC: (Debian 14.2.0-19) 14.2.0"
        );
        let obj = b"\0Debian clang version 19.1.7 (3)\0";
        assert_eq!(
            compiler_stamp(obj).unwrap(),
            "Debian clang version 19.1.7 (3)"
        );
        assert_eq!(compiler_stamp(b"\0nothing\0"), None);
    }

    #[test]
    fn a_closed_port_does_not_connect() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(connect("127.0.0.1", port).is_ok());
        drop(l);
        assert!(connect("127.0.0.1", port).is_err());
    }
}
