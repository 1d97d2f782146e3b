//! A held build lease: refreshed from a background thread while the build
//! runs, released when the run ends (see [`super`]). Kept apart from the
//! waiting, which decides whether to hold one at all.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use ktstr_sdk::cache::CacheKey;
use ktstr_sdk::context::{Progress, StageContext};
use ktstr_sdk::lease::{Claim, Lease, LeaseStore};

use super::holder;

/// A held lease: refreshed from a background thread until dropped, then
/// released (if it is still ours). Dropped when the run ends, whether it
/// stored the kernel, failed or was interrupted; a process killed with
/// SIGKILL leaves it to expire.
pub(in crate::pipeline) struct FleetLease {
    /// Dropping it stops the heartbeat thread.
    stop: Option<mpsc::Sender<()>>,
    /// Returns the lease as last refreshed; `None` once it was lost.
    thread: Option<JoinHandle<Option<Lease>>>,
    store: Arc<dyn LeaseStore>,
    progress: Arc<dyn Progress>,
    tier: String,
    key: CacheKey,
}

impl FleetLease {
    pub(super) fn start(
        store: Arc<dyn LeaseStore>,
        lease: Lease,
        tier: &str,
        cx: &StageContext,
    ) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let key = lease.record.key.clone();
        let beat = Heartbeat {
            store: store.clone(),
            progress: cx.progress.clone(),
            tier: tier.to_string(),
        };
        let thread = std::thread::Builder::new()
            .name("ktstr-lease".into())
            .spawn(move || beat.run(lease, &stopped))
            .ok();
        if thread.is_none() {
            cx.progress.warn(&format!(
                "cannot start the heartbeat of the build lease of {key}; other machines may \
                 take it over and build it too"
            ));
        }
        Self {
            stop: Some(stop),
            thread,
            store,
            progress: cx.progress.clone(),
            tier: tier.to_string(),
            key,
        }
    }
}

impl Drop for FleetLease {
    fn drop(&mut self) {
        drop(self.stop.take());
        let Some(lease) = self.thread.take().and_then(|t| t.join().ok()).flatten() else {
            return;
        };
        match self.store.release(&lease) {
            Ok(_) => tracing::debug!("{}: released the build lease of {}", self.tier, self.key),
            Err(e) => crate::report::warn_error(
                &*self.progress,
                &format!(
                    "{}: could not release the build lease of {} (other machines wait for it \
                     to expire): ",
                    self.tier, self.key
                ),
                &e,
            ),
        }
    }
}

/// The heartbeat thread's state.
struct Heartbeat {
    store: Arc<dyn LeaseStore>,
    progress: Arc<dyn Progress>,
    tier: String,
}

impl Heartbeat {
    /// Refresh `lease` every heartbeat until `stopped` says stop; the lease
    /// as last refreshed, or `None` once someone else holds it.
    fn run(self, mut lease: Lease, stopped: &mpsc::Receiver<()>) -> Option<Lease> {
        let every = self.store.timings().heartbeat;
        let mut warned = false;
        loop {
            match stopped.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return Some(lease),
            }
            let next = lease.record.beat(SystemTime::now());
            match self.store.refresh(&lease, &next) {
                Ok(Claim::Ours(fresh)) => lease = fresh,
                Ok(Claim::Theirs(t)) => {
                    self.progress.warn(&format!(
                        "{}: lost the build lease of {} to {} (our heartbeats came too late); \
                         finishing the build anyway",
                        self.tier,
                        lease.record.key,
                        holder(&t)
                    ));
                    return None;
                }
                Err(e) if !warned => {
                    warned = true;
                    crate::report::warn_error(
                        &*self.progress,
                        &format!(
                            "{}: could not refresh the build lease of {} (retrying; other \
                             machines take it over after its expiry): ",
                            self.tier, lease.record.key
                        ),
                        &e,
                    );
                }
                Err(e) => tracing::debug!("refreshing the build lease: {e}"),
            }
        }
    }
}
