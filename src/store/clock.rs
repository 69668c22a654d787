//! One clock per store. Every replica reads the database's clock once at start (and again every few
//! minutes) and advances it with its own monotonic clock in between, so timeouts and schedules do not depend
//! on each host's wall clock (DTM #511: hosts with skewed clocks fire timeouts early or late).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{DynStore, Result};
use crate::model::Millis;

/// A clock anchored to the store's clock. Cheap to clone.
#[derive(Clone)]
pub struct StoreClock {
    inner: Arc<Inner>,
}

struct Inner {
    /// Store time at `anchor_instant`, in ms.
    anchor_ms: AtomicI64,
    /// `anchor_instant` as ms after `origin`.
    anchor_offset_ms: AtomicI64,
    origin: Instant,
    /// Added to every reading: lets tests (and only tests) pretend time has passed.
    skew_ms: AtomicI64,
}

impl StoreClock {
    /// A clock that starts at `store_now`.
    pub fn anchored(store_now: Millis) -> Self {
        Self {
            inner: Arc::new(Inner {
                anchor_ms: AtomicI64::new(store_now.0),
                anchor_offset_ms: AtomicI64::new(0),
                origin: Instant::now(),
                skew_ms: AtomicI64::new(0),
            }),
        }
    }

    /// A clock anchored to the store's current time.
    pub async fn from_store(store: &DynStore) -> Result<Self> {
        Ok(Self::anchored(store.db_now().await?))
    }

    /// Re-reads the store's clock.
    pub async fn resync(&self, store: &DynStore) -> Result<()> {
        let now = store.db_now().await?;
        let elapsed = self.elapsed_ms();
        // Never step backwards: a clock that goes back would make due work undue again.
        let current = self.now().0 - self.inner.skew_ms.load(Ordering::Relaxed);
        let next = now.0.max(current);
        self.inner.anchor_ms.store(next, Ordering::Relaxed);
        self.inner
            .anchor_offset_ms
            .store(elapsed, Ordering::Relaxed);
        Ok(())
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The current store time.
    pub fn now(&self) -> Millis {
        let since_anchor = self.elapsed_ms() - self.inner.anchor_offset_ms.load(Ordering::Relaxed);
        Millis(
            self.inner.anchor_ms.load(Ordering::Relaxed)
                + since_anchor
                + self.inner.skew_ms.load(Ordering::Relaxed),
        )
    }

    /// Moves this clock forward by `by` (test hook: DTM's tests forward time the same way).
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.inner.skew_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn advances_with_monotonic_time_and_skew() {
        let clock = StoreClock::anchored(Millis(1_000_000));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.now(), Millis(1_003_000));
        clock.advance(Duration::from_secs(60));
        assert_eq!(clock.now(), Millis(1_063_000));
    }
}
