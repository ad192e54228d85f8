//! The HTTP/2 connection to containerd: connected lazily, shared by all calls, re-established
//! after containerd restarts.
//!
//! While containerd is down, calls fail at once with `Unavailable` instead of waiting: kubelet
//! retries on its own schedule, and a hung CRI call would stall its sync loop. After a failed
//! connect, further calls fail fast without touching the socket until a backoff (doubling, capped)
//! has passed, so a crash-looping containerd is not hammered by every caller.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::proxy::RequestBody;
use crate::config::UpstreamConnection;

/// Why containerd could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("containerd is unreachable at {path}: {reason}")]
    Connect { path: PathBuf, reason: String },
    #[error("containerd is unreachable at {path}: {reason} (next attempt in {retry_in_ms} ms)")]
    BackingOff { path: PathBuf, reason: String, retry_in_ms: u128 },
}

/// The shared upstream connection.
pub struct Upstream {
    path: PathBuf,
    settings: UpstreamConnection,
    /// The live connection, cloned by each call (a clone is a handle, not a new connection).
    /// A std mutex: it is held only to clone or replace the handle, never across an await.
    current: Mutex<Option<SendRequest<RequestBody>>>,
    /// Serialises connection attempts so concurrent callers share one attempt; holds the
    /// backoff state, which is only meaningful to whoever is about to connect.
    connecting: tokio::sync::Mutex<Backoff>,
}

#[derive(Default)]
struct Backoff {
    /// When the next attempt may be made after a failure.
    retry_at: Option<Instant>,
    /// The wait to apply after the next failure.
    next_wait: Duration,
    last_error: String,
}

impl Upstream {
    pub fn new(path: &Path, settings: UpstreamConnection) -> Self {
        Upstream {
            path: path.to_owned(),
            settings,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Backoff::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a connection to containerd is currently established.
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    fn live(&self) -> Option<SendRequest<RequestBody>> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// A handle to send a request on, connecting first if needed.
    pub async fn sender(&self) -> Result<SendRequest<RequestBody>, UpstreamError> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let mut backoff = self.connecting.lock().await;
        // Someone else may have connected while we waited for the lock.
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let now = Instant::now();
        if let Some(at) = backoff.retry_at.filter(|at| *at > now) {
            return Err(UpstreamError::BackingOff {
                path: self.path.clone(),
                reason: backoff.last_error.clone(),
                retry_in_ms: (at - now).as_millis(),
            });
        }
        match tokio::time::timeout(self.settings.connect_timeout, self.connect()).await {
            Ok(Ok(sender)) => {
                if backoff.retry_at.is_some() {
                    tracing::info!(upstream = %self.path.display(), "reconnected to containerd");
                }
                *backoff = Backoff::default();
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
                Ok(sender)
            }
            outcome => {
                let reason = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {:?}", self.settings.connect_timeout),
                };
                let wait = backoff.next_wait.max(self.settings.initial_backoff);
                if backoff.retry_at.is_none() {
                    tracing::warn!(upstream = %self.path.display(), %reason, "cannot connect to containerd; failing calls with Unavailable until it is back");
                }
                backoff.retry_at = Some(now + wait);
                backoff.next_wait = (wait * 2).min(self.settings.max_backoff);
                backoff.last_error = reason.clone();
                Err(UpstreamError::Connect { path: self.path.clone(), reason })
            }
        }
    }

    /// Forgets the current connection (after a call found it broken), so the next call
    /// reconnects.
    pub fn reset(&self, broken: &SendRequest<RequestBody>) {
        let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|s| s.is_closed() || broken.is_closed()) {
            *guard = None;
        }
    }

    async fn connect(&self) -> Result<SendRequest<RequestBody>, String> {
        let stream = UnixStream::connect(&self.path).await.map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Larger windows than h2's 64 KiB default, so big ListContainers/ListImages
            // answers are not throttled by WINDOW_UPDATE round trips.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        let path = self.path.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(upstream = %path.display(), error = %e, "connection to containerd closed");
            } else {
                tracing::debug!(upstream = %path.display(), "connection to containerd closed");
            }
        });
        tracing::debug!(upstream = %self.path.display(), "connected to containerd");
        Ok(sender)
    }
}
