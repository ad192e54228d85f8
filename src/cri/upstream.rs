//! The HTTP/2 connection to containerd: connected lazily, shared by all calls, re-established
//! after containerd restarts.
//!
//! While containerd is down, calls fail at once with `Unavailable` instead of waiting: kubelet
//! retries on its own schedule, and a hung CRI call would stall its sync loop. After a failed
//! connect, further calls fail fast without touching the socket until a backoff (doubling, capped)
//! has passed, so a crash-looping containerd is not hammered by every caller.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::late_pong::LatePong;
use super::proxy::RequestBody;
use super::quiet::QuietStream;
use super::relay::{RequestPipe, UpstreamBody};
use super::settings::UpstreamConnection;

/// While calls are in flight, a ping checks that containerd still answers after this long.
/// Not shorter: grpc-go servers (containerd) by default answer a client that pings more often
/// than every 5 minutes with GOAWAY `too_many_pings`, which would end long-running streams such
/// as GetContainerEvents.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5 * 60 + 10);
/// How long containerd has to answer that ping before the connection is given up.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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
    current: Mutex<Option<Sender>>,
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

/// A handle to send calls on one HTTP/2 connection to containerd.
#[derive(Clone)]
pub struct Sender {
    send: h2::client::SendRequest<Bytes>,
    conn: Arc<ConnState>,
}

/// What the calls on a connection and its driver task share. Each call holds a reference until
/// its response body ends, so the reference count tells the driver whether calls are in flight.
#[derive(Default)]
pub struct ConnState {
    closed: AtomicBool,
}

impl Sender {
    /// Whether the connection has ended (or was given up).
    pub fn is_closed(&self) -> bool {
        self.conn.closed.load(Ordering::Acquire)
    }

    /// Sends one call: its headers, then its body, which is streamed on; resolves with
    /// containerd's response headers, the body still streaming.
    pub async fn call(self, head: Request<()>, body: RequestBody) -> Result<Response<UpstreamBody>, h2::Error> {
        let Sender { send, conn } = self;
        let mut send = match send.ready().await {
            Ok(s) => s,
            Err(e) => return Err(conn.failed(e)),
        };
        let eos = body.is_end_stream();
        let (response, stream) = match send.send_request(head, eos) {
            Ok(r) => r,
            Err(e) => return Err(conn.failed(e)),
        };
        drop(send);
        if !eos {
            // Queue what the body has now behind the HEADERS, before h2's connection task
            // writes them: a unary request goes out in one write. Whatever is left (a streaming
            // request) is sent by a task of its own.
            let mut pipe = RequestPipe::new(body, stream);
            let done = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx))).await;
            if done.is_pending() {
                tokio::spawn(pipe);
            }
        }
        let response = response.await.map_err(|e| conn.failed(e))?;
        Ok(response.map(|recv| UpstreamBody::new(recv, conn)))
    }
}

impl ConnState {
    /// Notes an error of the connection itself (as opposed to one call's), so that the next call
    /// connects anew; returns it.
    fn failed(&self, e: h2::Error) -> h2::Error {
        if e.is_go_away() || e.is_io() {
            self.closed.store(true, Ordering::Release);
        }
        e
    }
}

impl Upstream {
    pub fn new(path: &Path, settings: UpstreamConnection) -> Self {
        Upstream { path: path.to_owned(), settings, current: Mutex::new(None), connecting: tokio::sync::Mutex::new(Backoff::default()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a connection to containerd is currently established.
    pub fn is_connected(&self) -> bool {
        self.live().is_some()
    }

    fn live(&self) -> Option<Sender> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// A handle to send a request on, connecting first if needed.
    pub async fn sender(&self) -> Result<Sender, UpstreamError> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        // Boxed: the connect path's state is large, and every call's future would otherwise
        // carry (and copy) it.
        Box::pin(self.connect_shared()).await
    }

    /// Connects, or waits for a concurrent caller's attempt; fails fast while backing off.
    async fn connect_shared(&self) -> Result<Sender, UpstreamError> {
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
    pub fn reset(&self, broken: &Sender) {
        let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|s| s.is_closed() || broken.is_closed()) {
            *guard = None;
        }
    }

    async fn connect(&self) -> Result<Sender, String> {
        let stream = UnixStream::connect(&self.path).await.and_then(QuietStream::new).map_err(|e| e.to_string())?;
        // containerd's pings are acknowledged after the calls their answers woke (late_pong.rs).
        let stream = LatePong::new(stream);
        let (send, connection) = h2::client::Builder::new()
            // Larger windows than h2's 64 KiB default, so big ListContainers/ListImages
            // answers are not throttled by WINDOW_UPDATE round trips.
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(1 << 20)
            // hyper's client defaults, which pullgate used before it drove h2 itself.
            .initial_max_send_streams(100)
            .max_header_list_size(16 << 10)
            .max_send_buffer_size(1 << 20)
            .max_local_error_reset_streams(Some(1024))
            .enable_push(false)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        let conn = Arc::new(ConnState::default());
        tokio::spawn(drive(connection, conn.clone(), self.path.clone()));
        tracing::debug!(upstream = %self.path.display(), "connected to containerd");
        Ok(Sender { send, conn })
    }
}

/// Runs the connection until it ends; pings containerd now and then while calls are in flight.
async fn drive(mut connection: h2::client::Connection<LatePong<QuietStream>, Bytes>, conn: Arc<ConnState>, path: PathBuf) {
    let mut ping_pong = connection.ping_pong();
    let outcome = loop {
        tokio::select! {
            biased;
            r = &mut connection => break r,
            () = tokio::time::sleep(KEEP_ALIVE_INTERVAL) => {
                // References: `Upstream::current`, this task, and one per call in flight.
                let (Some(pp), true) = (ping_pong.as_mut(), Arc::strong_count(&conn) > 2) else { continue };
                tokio::select! {
                    biased;
                    r = &mut connection => break r,
                    pong = tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pp.ping(h2::Ping::opaque())) => match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break Err(e),
                        Err(_) => {
                            tracing::warn!(upstream = %path.display(), timeout = ?KEEP_ALIVE_TIMEOUT,
                                "containerd did not answer a keep-alive ping; closing the connection");
                            break Ok(());
                        }
                    },
                }
            }
        }
    };
    conn.closed.store(true, Ordering::Release);
    drop(connection);
    match outcome {
        Err(e) => tracing::warn!(upstream = %path.display(), error = %e, "connection to containerd closed"),
        Ok(()) => tracing::debug!(upstream = %path.display(), "connection to containerd closed"),
    }
}
