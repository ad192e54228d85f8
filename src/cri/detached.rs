//! Gate decisions run as tasks of their own, detached from the call that asked for them.
//!
//! hyper drops a call's future when the client resets the stream or closes the connection
//! (kubelet's deadline passing, crictl interrupted, a client that exits mid-call). A decision
//! dropped at one of its await points (a mirror request, a verification) would stop there: no
//! audit record, no decision metric, although the call may have been refused or let through
//! the moment before. [`Detached`] runs every decision that awaits in a spawned task that
//! completes whatever the caller does; the call only waits for it. A decision that panics
//! refuses the call (fails closed).

use std::future::Future;
use std::sync::Arc;

use super::intercept::{BoxFuture, CreateCall, CreateVerdict, Gate, MountImage, PullCall, PullVerdict, SandboxCall, UncheckedCall};

/// A [`Gate`] whose decisions outlive the calls that asked for them.
pub struct Detached(Arc<dyn Gate>);

impl Detached {
    pub fn wrap(gate: Arc<dyn Gate>) -> Arc<dyn Gate> {
        Arc::new(Detached(gate))
    }
}

/// Runs `decision` to completion in its own task and returns its verdict; `failed` is the verdict
/// when the task panicked.
async fn detached<T: Send + 'static>(decision: impl Future<Output = T> + Send + 'static, failed: impl FnOnce(String) -> T) -> T {
    match tokio::spawn(decision).await {
        Ok(verdict) => verdict,
        Err(e) => {
            tracing::error!(error = %e, "a gate decision failed; refusing the call");
            failed(format!("pullgate could not check this call (internal error: {e})"))
        }
    }
}

impl Gate for Detached {
    fn pull<'a>(&'a self, call: &'a PullCall) -> BoxFuture<'a, PullVerdict> {
        let (gate, call) = (self.0.clone(), call.clone());
        Box::pin(detached(async move { gate.pull(&call).await }, PullVerdict::Refuse))
    }

    fn create<'a>(&'a self, call: &'a CreateCall) -> BoxFuture<'a, CreateVerdict> {
        let (gate, call) = (self.0.clone(), call.clone());
        Box::pin(detached(async move { gate.create(&call).await }, CreateVerdict::Refuse))
    }

    fn mounts<'a>(&'a self, call: &'a CreateCall, mounts: &'a [MountImage]) -> BoxFuture<'a, CreateVerdict> {
        let (gate, call, mounts) = (self.0.clone(), call.clone(), mounts.to_vec());
        Box::pin(detached(async move { gate.mounts(&call, &mounts).await }, CreateVerdict::Refuse))
    }

    fn sandbox<'a>(&'a self, call: &'a SandboxCall) -> BoxFuture<'a, CreateVerdict> {
        let (gate, call) = (self.0.clone(), call.clone());
        Box::pin(detached(async move { gate.sandbox(&call).await }, CreateVerdict::Refuse))
    }

    /// Decided without awaiting anything (no mirror, no verification): once polled it runs to
    /// its audit record, so it needs no task of its own.
    fn unchecked<'a>(&'a self, call: &'a UncheckedCall) -> BoxFuture<'a, CreateVerdict> {
        self.0.unchecked(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    /// A gate whose pull waits for `release`, then notes that it finished (as the enforcer
    /// writes its audit record last).
    #[derive(Default)]
    struct Slow {
        started: Notify,
        release: Notify,
        finished: AtomicBool,
    }

    impl Gate for Slow {
        fn pull<'a>(&'a self, _: &'a PullCall) -> BoxFuture<'a, PullVerdict> {
            Box::pin(async move {
                self.started.notify_one();
                self.release.notified().await;
                self.finished.store(true, Ordering::SeqCst);
                PullVerdict::Forward
            })
        }
        fn create<'a>(&'a self, _: &'a CreateCall) -> BoxFuture<'a, CreateVerdict> {
            Box::pin(async { panic!("a bug in a decision") })
        }
        fn mounts<'a>(&'a self, _: &'a CreateCall, _: &'a [MountImage]) -> BoxFuture<'a, CreateVerdict> {
            Box::pin(async { CreateVerdict::Forward })
        }
        fn sandbox<'a>(&'a self, _: &'a SandboxCall) -> BoxFuture<'a, CreateVerdict> {
            Box::pin(async { CreateVerdict::Forward })
        }
        fn unchecked<'a>(&'a self, _: &'a UncheckedCall) -> BoxFuture<'a, CreateVerdict> {
            Box::pin(async { CreateVerdict::Forward })
        }
    }

    #[tokio::test]
    async fn a_decision_completes_after_its_caller_is_gone() {
        let slow = Arc::new(Slow::default());
        let gate = Detached::wrap(slow.clone());
        let call = PullCall { image: "r/x:1".into(), ..Default::default() };
        let caller = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.pull(&call).await })
        };
        slow.started.notified().await;
        // The client goes away mid-call: hyper drops the call's future.
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert!(!slow.finished.load(Ordering::SeqCst));
        slow.release.notify_one();
        while !slow.finished.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_decision_that_panics_refuses() {
        let gate = Detached::wrap(Arc::new(Slow::default()));
        let v = gate.create(&CreateCall::default()).await;
        assert!(matches!(&v, CreateVerdict::Refuse(r) if r.contains("internal error")), "{v:?}");
    }
}
