//! Owned tasks: every task an attache spawns is tracked and cancellable, so `shutdown()` can wait
//! for all of them to end.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where attaches spawn their tasks: a tracker and the root cancellation token.
///
/// Clone it freely; all clones share the tracker and the token.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// A new, empty task set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root token; attaches take child tokens of it.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Spawns a tracked task that ends when `cancel` is cancelled (or on its own, or when
    /// aborted through the returned handle).
    pub fn spawn<F>(&self, cancel: CancellationToken, fut: F) -> tokio::task::AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker
            .spawn(async move {
                cancel.run_until_cancelled_owned(fut).await;
            })
            .abort_handle()
    }

    /// Cancels every task and waits until all have ended.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Number of tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}
