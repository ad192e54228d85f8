//! The global budget for the request bytes pullgate buffers: intercepted calls (PullImage,
//! CreateContainer, RunPodSandbox, ImageStatus) are read whole before they are decided, each up
//! to 16 MiB. Without a bound over all of them, 96 concurrent 15 MiB requests held ~1 GB.
//!
//! A call reserves the length its gRPC message header declares before reading the message; a
//! call that cannot get its bytes within [`WAIT`] is refused with `RESOURCE_EXHAUSTED` (kubelet
//! retries), holding nothing while it waits, so waiting calls cannot deadlock each other.
//! Pass-through calls are streamed and never counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default budget (`cri.max_buffered_bytes`).
pub const DEFAULT_MAX_BUFFERED: u64 = 64 << 20;

/// Smallest budget configuration accepts: one call of the largest size pullgate buffers.
pub const MIN_MAX_BUFFERED: u64 = 16 << 20;

/// How long a call waits for bytes other calls hold before it is refused.
pub const WAIT: Duration = Duration::from_secs(10);

/// Bytes of buffered requests, shared by every connection.
#[derive(Clone)]
pub struct Budget {
    /// One permit per byte; bounds the bytes all intercepted calls hold at once.
    bytes: Arc<Semaphore>,
    total: u64,
}

/// The budget could not give a call its bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pullgate is buffering its limit of intercepted requests ({total} bytes, cri.max_buffered_bytes); this call needs {wanted} more: retry"
)]
pub struct Exhausted {
    pub wanted: u64,
    pub total: u64,
}

/// Bytes a call holds; given back when dropped.
#[derive(Debug, Default)]
pub struct Reservation(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Budget {
    /// A budget of `total` bytes.
    pub fn new(total: u64) -> Budget {
        let total = total.min(Semaphore::MAX_PERMITS as u64);
        Budget { bytes: Arc::new(Semaphore::new(total as usize)), total }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> u64 {
        self.bytes.available_permits() as u64
    }

    /// Reserves `wanted` bytes, waiting at most `wait` for calls that hold them.
    pub async fn reserve(&self, wanted: u64, wait: Duration) -> Result<Reservation, Exhausted> {
        let exhausted = Exhausted { wanted, total: self.total };
        if wanted == 0 {
            return Ok(Reservation(None));
        }
        let n = u32::try_from(wanted).ok().filter(|n| u64::from(*n) <= self.total).ok_or(exhausted.clone())?;
        match tokio::time::timeout(wait, self.bytes.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(Reservation(Some(permit))),
            _ => Err(exhausted),
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(DEFAULT_MAX_BUFFERED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_wait_for_bytes_then_are_refused() {
        let b = Budget::new(100);
        let first = b.reserve(60, WAIT).await.unwrap();
        assert_eq!(b.available(), 40);
        assert_eq!(b.reserve(50, Duration::from_secs(1)).await.unwrap_err(), Exhausted { wanted: 50, total: 100 });
        // Waiting: served when the first call gives its bytes back.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(50, WAIT).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(b.available(), 100);
        // More than the whole budget is never granted; nothing is free.
        assert!(b.reserve(101, WAIT).await.is_err());
        assert!(b.reserve(0, WAIT).await.is_ok());
    }
}
