//! Files braid re-reads while it runs (certificates, the tokens file): each is a [`Reloadable`] that
//! [`watch`] polls every [`INTERVAL`]. Polling the contents, not file events, is what works with Kubernetes
//! Secret volumes, whose files are swapped through symlinks.
//!
//! The rule every [`Reloadable`] keeps: a change that cannot be used (a half-written file, a bad edit)
//! leaves what is in force in force, and is reported once per change.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often watched files are looked at for changes.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// What a look at the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed since the last look.
    Unchanged,
    /// The files changed and are now in use.
    Reloaded,
    /// The files changed but cannot be used (why, naming the file); the previous ones stay in force.
    Failed(String),
}

/// Something whose files [`watch`] polls.
pub trait Reloadable: Send + Sync + 'static {
    /// What it is, for the logs (`listener TLS`, `branch TLS`, `tokens file`).
    fn what(&self) -> &'static str;
    /// Looks at the files and takes them when they changed and load. Blocking I/O is fine: [`watch`] runs
    /// it on the blocking pool.
    fn reload(&self) -> Reload;
}

/// Polls `target`'s files every `interval` until `cancel`, logging each change taken (info) and each change
/// refused (warning: the previous files stay in force).
pub fn watch(
    target: Arc<dyn Reloadable>,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let polled = Arc::clone(&target);
            let Ok(outcome) = tokio::task::spawn_blocking(move || polled.reload()).await else {
                continue;
            };
            match outcome {
                Reload::Unchanged => {}
                Reload::Reloaded => {
                    tracing::info!(
                        what = target.what(),
                        "files changed: the new ones are in use"
                    );
                }
                Reload::Failed(e) => tracing::warn!(
                    what = target.what(),
                    error = %e,
                    "files changed but cannot be used; keeping the ones in force"
                ),
            }
        }
    })
}
