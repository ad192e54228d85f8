//! Accepting connections and serving them over HTTP/2 until shutdown, then draining.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;

use super::calls::{CallObserver, Metered};
use super::listener::Listener;
use super::proxy::{Peer, Proxy};
use super::quiet::QuietStream;

/// Serves CRI on `listener` until `shutdown` resolves, telling `calls` of every call; then stops
/// accepting, lets in-flight calls finish for at most `drain`, and removes the socket if
/// pullgate created it.
pub async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    calls: Option<&'static dyn CallObserver>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        // kubelet multiplexes all its CRI calls over one connection.
        .max_concurrent_streams(1000)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20))
        // No `date` header on responses: containerd sends none, and pass-through must not add
        // one (it also saves formatting one per call).
        .auto_date_header(false);
    // Frame-relay connections (`frame_relay/`): told to stop at shutdown, counted to drain.
    let (stop_relays, relays_stopping) = tokio::sync::watch::channel(false);
    let relays = Arc::new(());
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.inner.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer = match stream.peer_cred() {
            Ok(c) => Peer { uid: c.uid(), gid: c.gid(), pid: c.pid() },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read peer credentials; closing connection");
                continue;
            }
        };
        if !proxy.admits(&peer) {
            tracing::warn!(uid = peer.uid, gid = peer.gid, pid = peer.pid, "refusing calls from a caller that is not allowed");
        } else {
            tracing::debug!(uid = peer.uid, pid = peer.pid, "connection accepted");
        }
        let stream = match QuietStream::new(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the connection; closing it");
                continue;
            }
        };
        if proxy.frame_relay() {
            // The relay needs a connection to containerd of its own that answers; without one,
            // hyper serves the connection (its calls fail with `Unavailable` while containerd
            // is down, and it reconnects).
            let (proxy, live, stop, watcher, h2) = (proxy.clone(), relays.clone(), relays_stopping.clone(), graceful.watcher(), h2.clone());
            tokio::spawn(async move {
                match relay_upstream(&proxy).await {
                    Some((upstream, first)) => super::frame_relay::serve(stream, upstream, first, proxy, peer, calls, stop).await,
                    None => serve_hyper(&h2, stream, proxy, peer, calls, watcher).await,
                }
                drop(live);
            });
            continue;
        }
        let (proxy, watcher) = (proxy.clone(), graceful.watcher());
        let conn = serve_hyper(&h2, stream, proxy, peer, calls, watcher);
        tokio::spawn(conn);
    }
    listener.cleanup();
    tracing::info!(timeout = ?drain, "shutting down: no new connections, draining in-flight calls");
    let _ = stop_relays.send(true);
    let relays_drained = async {
        while Arc::strong_count(&relays) > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(drain, async { tokio::join!(graceful.shutdown(), relays_drained) }).await {
        Ok(_) => tracing::info!("all calls finished"),
        Err(_) => tracing::warn!(timeout = ?drain, "calls still running after the drain timeout; closing them"),
    }
}

type H2Builder = hyper::server::conn::http2::Builder<TokioExecutor>;

/// Serves one connection with hyper's HTTP/2 server, every call through [`Proxy::handle`].
fn serve_hyper(
    h2: &H2Builder,
    stream: QuietStream,
    proxy: Arc<Proxy>,
    peer: Peer,
    calls: Option<&'static dyn CallObserver>,
    watcher: hyper_util::server::graceful::Watcher,
) -> impl Future<Output = ()> + Send + 'static {
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let probe = super::calls::start(calls, req.uri().path());
        let call = proxy.clone().handle(peer, req.map(super::proxy::CallerBody::Hyper));
        async move {
            // An error is containerd's reset of the call: hyper resets the caller's stream
            // with its reason (the probe, dropped, counts the call as cancelled).
            let resp = call.await?;
            let mut probe = probe;
            if let Some(p) = probe.as_mut() {
                p.headers(resp.headers());
            }
            Ok::<_, h2::Error>(resp.map(|body| Metered::new(body, probe)))
        }
    });
    let conn = watcher.watch(h2.serve_connection(TokioIo::new(stream), svc));
    async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// A connection to containerd for one relayed caller connection, once containerd has spoken
/// (grpc-go servers send their SETTINGS at once): a socket that accepts but closes (containerd
/// going down) leaves the caller to hyper. Returns the bytes read.
async fn relay_upstream(proxy: &Proxy) -> Option<(QuietStream, Vec<u8>)> {
    let path = proxy.upstream().path();
    let first = async {
        let stream = tokio::net::UnixStream::connect(path).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut buf) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    buf.truncate(n);
                    return Ok((QuietStream::new(stream)?, buf));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(RELAY_CONNECT_TIMEOUT, first).await {
        Ok(Ok(s)) => Some(s),
        outcome => {
            let reason = outcome.map_or_else(|_| "no SETTINGS in time".to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
            tracing::debug!(upstream = %path.display(), %reason, "containerd does not answer the frame relay; serving the connection through hyper");
            None
        }
    }
}

/// How long containerd has to greet a new relay connection.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
