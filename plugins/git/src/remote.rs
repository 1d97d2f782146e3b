//! Talking to the remote: resolving a ref with `ls-refs`, and turning gix's
//! transport errors into messages that name the URL and the fix.
//!
//! Resolution asks the remote every time (never the mirror's refs): a
//! branch that moved upstream must produce a new commit, hence a new cache
//! key. With protocol v2 the request is narrowed by prefix to the one ref
//! (plus its namesake in the other namespace, to suggest `#branch=` when
//! the user wrote `#tag=`), so it costs one round trip and a few hundred
//! bytes even on a kernel repository with thousands of tags.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix::protocol::handshake::Ref;
use gix::remote::Direction;
use ktstr_sdk::prelude::*;

use crate::spec::{GitRef, GitSpec};

/// A remote configured for fetching `refspecs` from `url`, without tags.
pub fn remote<'r>(
    repo: &'r gix::Repository,
    url: &str,
    refspecs: &[String],
) -> Result<gix::Remote<'r>> {
    let bad_url = |e: gix::Error| {
        StageError::invalid_input(format!("git URL {url} is not valid"))
            .caused_by(e)
            .with_hint("check the spelling of the URL after git+")
    };
    repo.remote_at(url)
        .map_err(bad_url)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(refspecs.iter().map(String::as_str), Direction::Fetch)
        .map_err(|e| {
            StageError::internal(format!("cannot build a fetch refspec for {url}")).caused_by(e)
        })
}

/// Network time limits for http(s) remotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP/TLS connection.
    pub connect: Duration,
    /// Waiting for response headers, and between two reads of the body:
    /// a stall watchdog, not a cap on the whole transfer (servers send
    /// progress while they prepare a pack, so a healthy fetch never idles
    /// this long).
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(20),
            stall: Duration::from_secs(120),
        }
    }
}

/// Connect to `spec`'s remote for fetching. For http(s), the transport
/// options come from git config (gix reads `http.*`) plus ktstr's
/// timeouts, replacing the reqwest client's 30 s default which would
/// abort a slow but healthy kernel fetch.
pub fn connect<'a, 'r>(
    remote: &'a gix::Remote<'r>,
    spec: &GitSpec,
    timeouts: Timeouts,
) -> Result<
    gix::remote::Connection<
        'a,
        'static,
        'r,
        Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
    >,
> {
    use gix::protocol::transport::client::blocking_io::http;
    let connection = remote
        .connect(Direction::Fetch)
        .map_err(|e| transport_error(spec, "connect to", e))?;
    if !matches!(spec.scheme.as_str(), "http" | "https") {
        return Ok(connection);
    }
    let options = remote
        .repo()
        .transport_options(spec.url.as_str(), None)
        .map_err(|e| transport_error(spec, "read the git http configuration for", e))?;
    let Some(Ok(mut options)) = options.map(|o| o.downcast::<http::Options>()) else {
        return Ok(connection);
    };
    let Timeouts { connect, stall } = timeouts;
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |builder| {
            Ok(builder.connect_timeout(connect).timeout(stall))
        })),
        configure_request: None,
    };
    options.backend = Some(Arc::new(Mutex::new(backend)));
    Ok(connection.with_transport_options(options))
}

/// List the remote refs matching `refspecs` (protocol v2 filters by prefix).
pub fn list_refs(
    repo: &gix::Repository,
    spec: &GitSpec,
    refspecs: &[String],
    timeouts: Timeouts,
) -> Result<Vec<Ref>> {
    let remote = remote(repo, &spec.url, refspecs)?;
    let connection = connect(&remote, spec, timeouts)?;
    let (map, _handshake) = connection
        .ref_map(
            gix::progress::Discard,
            gix::remote::ref_map::Options::default(),
        )
        .map_err(|e| transport_error(spec, "list the refs of", e))?;
    Ok(map.remote_refs)
}

/// The full name and the peeled commit id a remote ref points at (`None`
/// for an unborn HEAD).
fn name_and_target(r: &Ref) -> (&[u8], Option<gix::ObjectId>) {
    match r {
        Ref::Peeled {
            full_ref_name,
            object,
            ..
        }
        | Ref::Direct {
            full_ref_name,
            object,
        }
        | Ref::Symbolic {
            full_ref_name,
            object,
            ..
        } => (full_ref_name.as_bytes(), Some(*object)),
        Ref::Unborn { full_ref_name, .. } => (full_ref_name.as_bytes(), None),
    }
}

/// Ask the remote which commit a tag, branch or HEAD names.
pub fn resolve_ref(repo: &gix::Repository, spec: &GitSpec, timeouts: Timeouts) -> Result<String> {
    let full = spec
        .reference
        .full_name()
        .expect("a commit id needs no resolving");
    let mut refspecs = vec![full.clone()];
    let other = match &spec.reference {
        GitRef::Tag(name) => Some(GitRef::Branch(name.clone())),
        GitRef::Branch(name) => Some(GitRef::Tag(name.clone())),
        _ => None,
    };
    if let Some(other) = &other {
        refspecs.extend(other.full_name());
    }
    let refs = list_refs(repo, spec, &refspecs, timeouts)?;
    let found = refs
        .iter()
        .map(name_and_target)
        .find(|(name, _)| *name == full.as_bytes());
    match found {
        Some((_, Some(id))) => Ok(id.to_string()),
        Some((_, None)) => Err(StageError::not_found(format!(
            "git+{}: the remote HEAD points at a branch with no commits",
            spec.url
        ))
        .with_hint("name a branch or tag explicitly with #branch=NAME or #tag=NAME")),
        None => {
            let in_other = other.filter(|o| {
                let other_full = o.full_name().unwrap_or_default();
                refs.iter()
                    .any(|r| name_and_target(r).0 == other_full.as_bytes())
            });
            Err(unknown_ref(repo, spec, in_other, timeouts))
        }
    }
}

/// "no tag X at URL", with the namesake in the other namespace or a few
/// similarly named refs as the hint.
fn unknown_ref(
    repo: &gix::Repository,
    spec: &GitSpec,
    in_other: Option<GitRef>,
    timeouts: Timeouts,
) -> StageError {
    let err = StageError::not_found(format!(
        "git+{}: there is no {} on the remote",
        spec.url,
        spec.reference.describe()
    ));
    if let Some(other) = in_other {
        let fragment = match &other {
            GitRef::Tag(n) => format!("#tag={n}"),
            GitRef::Branch(n) => format!("#branch={n}"),
            _ => unreachable!("only tags and branches have namesakes"),
        };
        return err.with_hint(format!(
            "the remote has a {} of that name: write git+{}{fragment}",
            other.describe().split(' ').next().unwrap_or("ref"),
            spec.url
        ));
    }
    let listing = format!("`git ls-remote --heads --tags {}`", spec.url);
    let wanted = match &spec.reference {
        GitRef::Tag(n) | GitRef::Branch(n) => n.as_str(),
        _ => return err.with_hint(format!("list the remote's refs with {listing}")),
    };
    // The error path may afford listing every branch and tag.
    let all = ["refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"].map(String::from);
    let near = list_refs(repo, spec, &all, timeouts)
        .map(|refs| nearest(wanted, refs.iter().map(|r| name_and_target(r).0)))
        .unwrap_or_default();
    if near.is_empty() {
        err.with_hint(format!("list the remote's refs with {listing}"))
    } else {
        err.with_hint(format!(
            "similar refs on the remote: {}; list them all with {listing}",
            near.join(", ")
        ))
    }
}

/// Up to five refs whose short name is closest to `wanted`, shown as
/// `tag v6.12` / `branch main`.
fn nearest<'a>(wanted: &str, names: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut scored: Vec<(usize, String)> = names
        .filter_map(|full| {
            let full = full.to_str().ok()?;
            let (kind, short) = if let Some(s) = full.strip_prefix("refs/tags/") {
                ("tag", s.strip_suffix("^{}").unwrap_or(s))
            } else if let Some(s) = full.strip_prefix("refs/heads/") {
                ("branch", s)
            } else {
                return None;
            };
            let distance = edit_distance(wanted, short);
            // Only suggest names that are plausibly typos or neighbours.
            (distance <= wanted.len().max(short.len()) / 2 + 1)
                .then(|| (distance, format!("{kind} {short}")))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(5).map(|(_, s)| s).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Every message in a gix error chain, outermost first.
pub fn chain(e: &gix::Error) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for err in e.iter_errors() {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Map a failure to talk to the remote onto an error naming the URL, the
/// likely cause and the fix.
pub fn transport_error(spec: &GitSpec, action: &str, e: gix::Error) -> StageError {
    let causes = chain(&e);
    let text = causes.join(": ").to_ascii_lowercase();
    let io_kinds: Vec<std::io::ErrorKind> = e
        .iter_errors()
        .filter_map(|err| err.downcast_ref::<std::io::Error>().map(|io| io.kind()))
        .collect();
    let url = &spec.url;
    let with_causes = |mut err: StageError| {
        err.causes = causes.clone();
        err
    };

    if e.is_cancelled() || text.contains("interrupt") {
        return StageError::cancelled();
    }
    if let Some(err) = local_repository_problem(spec) {
        return with_causes(err);
    }
    if text.contains("status 404") || text.contains("repository not found") {
        return with_causes(
            StageError::not_found(format!("git+{url}: no git repository at this URL"))
                .with_hint("check the URL; open it in a browser or run `git ls-remote URL` to see what the server has"),
        );
    }
    if text.contains("status 401")
        || text.contains("status 403")
        || e.is_unauthenticated()
        || e.is_permission_denied()
    {
        return with_causes(
            StageError::invalid_input(format!("git+{url}: the server refused access"))
                .with_hint("configure credentials for this host in git (a credential helper, or a token in ~/.netrc) and check that `git ls-remote URL` works"),
        );
    }
    let connecting = text.contains("connect");
    if text.contains("timed out") && !connecting {
        return with_causes(
            StageError::new(ErrorKind::Io, format!("git+{url}: the remote stopped responding"))
                .with_hint("the server sent nothing for too long; retry later, or raise timeout_secs in [plugin.git] for a slow server"),
        );
    }
    let unreachable = io_kinds.iter().any(|k| {
        matches!(
            k,
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable
        )
    }) || [
        "connection refused",
        "error trying to connect",
        "dns error",
        "failed to lookup",
        "timed out",
        "could not resolve",
        "connection reset",
        "network is unreachable",
        "no route to host",
    ]
    .iter()
    .any(|needle| text.contains(needle));
    if unreachable {
        return with_causes(
            StageError::new(ErrorKind::Io, format!("git+{url}: cannot reach the remote"))
                .with_hint("check the host name and port, your network and proxy (https_proxy / http_proxy environment variables); run `git ls-remote URL` to test the same connection"),
        );
    }
    with_causes(
        StageError::new(
            ErrorKind::Io,
            format!("git+{url}: cannot {action} the remote"),
        )
        .with_hint("run `git ls-remote URL` to see what git says about this remote"),
    )
}

/// For a `file://` remote, what git itself would refuse: a missing path,
/// a directory that is no repository, or a repository owned by another
/// user (git's `safe.directory` check, which gix only sees as a failed
/// handshake because upload-pack dies before speaking).
pub fn local_repository_problem(spec: &GitSpec) -> Option<StageError> {
    let path = Path::new(spec.url.strip_prefix("file://")?);
    let url = &spec.url;
    if !path.exists() {
        return Some(
            StageError::not_found(format!("git+{url}: {} does not exist", path.display()))
                .with_hint(
                    "check the path after file:// (it must be absolute: git+file:///srv/linux.git)",
                ),
        );
    }
    let git_dir = [path.to_path_buf(), path.join(".git")]
        .into_iter()
        .find(|p| gix::discover::is_git(p).is_ok());
    let Some(git_dir) = git_dir else {
        return Some(
            StageError::invalid_input(format!(
                "git+{url}: {} is not a git repository",
                path.display()
            ))
            .with_hint("point git+file:// at a bare repository (linux.git) or at a work tree containing .git"),
        );
    };
    // git checks the work tree top (or the bare git dir) and the git dir.
    let untrusted = [path, git_dir.as_path()]
        .into_iter()
        .find(|p| !gix::sec::identity::is_path_owned_by_current_user(p).unwrap_or(true));
    untrusted.map(|p| {
        StageError::invalid_input(format!(
            "git+{url}: git refuses the repository {} as unsafe: it is owned by another user",
            p.display()
        ))
        .with_hint(format!(
            "if you trust it, run `git config --global --add safe.directory {}`; or clone it to a repository you own and use that",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_prefers_close_names() {
        let names: Vec<&[u8]> = vec![
            b"refs/tags/v6.12",
            b"refs/tags/v6.12^{}",
            b"refs/tags/v6.11",
            b"refs/heads/main",
            b"refs/tags/v5.4",
            b"refs/heads/something-else-entirely",
            b"refs/pull/1/head",
        ];
        let near = nearest("v6.13", names.into_iter());
        assert_eq!(near[..2], ["tag v6.11", "tag v6.12"]);
        assert!(!near.iter().any(|n| n.contains("entirely")), "{near:?}");
        assert!(!near.iter().any(|n| n.contains("pull")), "{near:?}");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
