//! `pullgate serve`: wires the configuration to the proxy and runs it until a signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::cri::listener::{ListenError, Listener};
use crate::cri::proxy::Proxy;
use crate::cri::server;
use crate::cri::upstream::Upstream;

/// Runs the daemon until `shutdown` resolves. Fails only if the socket cannot be set up.
///
/// `activated` is the socket systemd passed, if any (see [`Listener::systemd_socket`]); without
/// it pullgate binds `config.listen` itself.
pub async fn run(
    config: Config,
    activated: Option<std::os::unix::net::UnixListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ListenError> {
    let started = Instant::now();
    let listener = match activated {
        Some(socket) => Listener::activated(socket)?,
        None => Listener::bind(&config.listen, config.socket_mode.0, config.socket_group)?,
    };
    let upstream = Upstream::new(&config.upstream, config.upstream_connection.clone());
    let proxy = Arc::new(Proxy::new(upstream, config.access.clone(), None));
    tracing::info!(
        listen = %config.listen.display(),
        upstream = %config.upstream.display(),
        startup_ms = started.elapsed().as_secs_f64() * 1000.0,
        "pullgate is accepting CRI calls"
    );
    server::serve(listener, proxy, shutdown, config.drain_timeout).await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop pullgate with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
