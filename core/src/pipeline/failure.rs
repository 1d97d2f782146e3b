//! A failed configure or build keeps its evidence, and the error says where.
//!
//! The builder's error carries the reproduce command (`cd <tree> && make
//! ...`). For a scratch tree (an extracted tarball, a git checkout) that
//! command only works if the tree is still there, so it is kept, marked for
//! the sweep to remove a day later; the plain build log is kept the same
//! way. `--keep-source` trees stay for good. An interrupted build keeps
//! nothing: the user stopped it.

use ktstr_sdk::StageError;
use ktstr_sdk::error::ErrorKind;
use ktstr_sdk::scratch::FAILED_KEPT_FOR;

use crate::build_log::BuildLog;
use crate::scratch::ScratchGuard;

/// Keep the log (and a scratch tree) of the step that failed with `err`,
/// and add where they are to its hint.
pub fn keep_evidence(
    mut err: StageError,
    log: &mut BuildLog,
    scratch: &mut ScratchGuard,
) -> StageError {
    if err.kind == ErrorKind::Cancelled {
        return err;
    }
    let hours = FAILED_KEPT_FOR.as_secs() / 3600;
    let mut notes = vec![format!(
        "make's whole output is in {} (kept for {hours} hours)",
        log.keep_failed().display()
    )];
    if let Some(dir) = scratch.keep_failed() {
        notes.push(if scratch.kept_for_good() {
            format!("the source tree stays in {} (--keep-source)", dir.display())
        } else {
            format!(
                "the source tree is kept in {} so that command works; a `ktstr build` removes \
                 it after {hours} hours (pass --keep-source to keep a tree for good)",
                dir.display()
            )
        });
    }
    let hint = match err.hint.take() {
        Some(h) => format!("{h}\n{}", notes.join("\n")),
        None => notes.join("\n"),
    };
    err.with_hint(hint)
}
