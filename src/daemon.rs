//! `pullgate serve`: wires the configuration to the proxy and runs it until a signal.
//!
//! SIGHUP reloads the policy from the configuration file and the installed trust root: a valid
//! new policy or root is swapped in atomically (in-flight decisions finish on the old one); an
//! invalid one is refused, logged, and the last good one stays in force.
//! SIGHUP and the trust-root tick also re-read the break-glass windows (`pullgate break-glass`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::admin;
use crate::admin::health::Health;
use crate::admin::metrics::{Metrics, ProbeStatus, StateCollector};
use crate::admin::server::Admin;
use crate::config::Config;
use crate::cri::intercept::Gate;
use crate::cri::listener::{ListenError, Listener};
use crate::cri::server;
use crate::enforce::audit::AuditLog;
use crate::enforce::gate::Enforcer;
use crate::enforce::metrics::{EnforceMetrics, EnforcerState, ReloadStatus};
use crate::trust::TrustHandle;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    #[error("policy: {0}")]
    Policy(String),
    #[error("cannot bind the admin endpoints on {0} (admin.listen): {1}")]
    Admin(std::net::SocketAddr, std::io::Error),
}

/// The enforcement side of a running daemon, kept for reloads.
struct Enforcement {
    enforcer: Arc<Enforcer>,
    trust: Arc<TrustHandle>,
    /// Generation of the policy in force; the next reload uses the next number.
    policy_generation: AtomicU64,
    config_path: Option<PathBuf>,
    /// Outcome of the latest policy (re)load, for metrics.
    reload_status: Arc<ReloadStatus>,
    metrics: Option<Arc<EnforceMetrics>>,
}

/// The host name, for audit records.
fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

fn build_enforcement(
    config: &Config,
    config_path: Option<&Path>,
    metrics: Option<Arc<EnforceMetrics>>,
) -> Result<Option<Enforcement>, StartError> {
    let Some(policy_config) = &config.policy else {
        return Ok(None);
    };
    let policy = policy_config.compile(1).map_err(|e| StartError::Policy(e.to_string()))?;
    let trust = Arc::new(crate::app::trust_root(config));
    match trust.reload() {
        Ok(outcome) => tracing::info!(state_dir = %config.trust_root.state_dir.display(), ?outcome, "trust root loaded"),
        Err(e) => tracing::error!(
            state_dir = %config.trust_root.state_dir.display(),
            error = %e,
            "no usable trust root: enforce-mode pulls will be refused until `pullgate trust-root import` installs one"
        ),
    }
    let audit = AuditLog::new(&config.audit).map_err(StartError::Audit)?;
    let node = config.node_name.clone().unwrap_or_else(hostname);
    let wiring = crate::app::EnforcerWiring { audit, node, metrics: metrics.clone(), break_glass: true };
    let enforcer = crate::app::enforcer(config, policy, trust.clone(), wiring);
    let enforcer = Arc::new(enforcer);
    tracing::info!(
        policies = policy_config.policies.len(),
        exemptions = policy_config.exemptions.len(),
        unmatched = ?policy_config.unmatched,
        "enforcement on"
    );
    Ok(Some(Enforcement {
        enforcer,
        trust,
        policy_generation: AtomicU64::new(1),
        config_path: config_path.map(Path::to_owned),
        reload_status: Arc::new(ReloadStatus::default()),
        metrics,
    }))
}

impl Enforcement {
    /// SIGHUP: re-read the policy and the trust root; keep the last good of each.
    fn reload(&self) {
        let policy_ok = self.reload_policy();
        self.reload_status.record(policy_ok);
        if let Some(m) = &self.metrics {
            m.policy_reload(policy_ok);
        }
        match self.trust.reload() {
            Ok(outcome) => tracing::info!(?outcome, "trust root reloaded"),
            Err(e) => tracing::error!(error = %e, "trust root reload refused; the previous root stays in force"),
        }
        let open = self.enforcer.break_glass().reload();
        tracing::info!(open, "break-glass windows re-read");
    }

    /// Re-reads the policy; whether a new valid one is in force.
    fn reload_policy(&self) -> bool {
        let Some(path) = &self.config_path else { return true };
        match Config::load(path) {
            Ok(cfg) => match cfg.policy {
                Some(p) => {
                    let generation = self.policy_generation.fetch_add(1, Ordering::SeqCst) + 1;
                    match p.compile(generation) {
                        Ok(set) => {
                            self.enforcer.replace_policy(set);
                            tracing::info!(generation, "policy reloaded");
                            true
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
                            false
                        }
                    }
                }
                None => {
                    tracing::error!(
                        "policy reload refused: the new configuration has no `policy` section (switching enforcement off needs a restart); the previous policy stays in force"
                    );
                    false
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the previous policy stays in force");
                false
            }
        }
    }
}

/// Runs the daemon until `shutdown` resolves. Fails only if it cannot start.
///
/// `activated` is the socket systemd passed, if any (see [`Listener::systemd_socket`]); without
/// it pullgate binds `config.listen` itself. `config_path` is re-read on SIGHUP.
pub async fn run(
    config: Config,
    config_path: Option<&Path>,
    activated: Option<std::os::unix::net::UnixListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let started = Instant::now();
    // SIGHUP's handler first, then let the signal through (see [`hold_reload_signal`]): one that
    // arrives from here on is a reload once the daemon is up.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    if hup.is_ok() {
        reload_signal_mask().thread_unblock().ok();
    }
    let mut metrics = config.admin.listen.map(|_| Metrics::new());
    let enforce_metrics = metrics.as_mut().map(|m| EnforceMetrics::registered(m.registry_mut()));
    let enforcement = build_enforcement(&config, config_path, enforce_metrics)?;
    // Before the CRI socket: a port in use must not leave a bound socket behind.
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(admin::server::bind(addr).await.map_err(|e| StartError::Admin(addr, e))?),
        None => None,
    };
    let listener = match activated {
        Some(socket) => Listener::activated(socket)?,
        None => Listener::bind(&config.listen, config.socket_mode.0, config.socket_group)?,
    };
    let gate = enforcement.as_ref().map(|e| e.enforcer.clone() as Arc<dyn Gate>);
    let proxy = Arc::new(crate::app::proxy(&config, gate));
    tracing::info!(
        listen = %config.listen.display(),
        upstream = %config.upstream.display(),
        startup_ms = started.elapsed().as_secs_f64() * 1000.0,
        "pullgate is accepting CRI calls"
    );
    let calls = metrics.as_ref().map(|m| m.calls as &'static dyn crate::cri::calls::CallObserver);
    if let (Some(admin_listener), Some(mut metrics)) = (admin_listener, metrics) {
        let probe = Arc::new(ProbeStatus::default());
        let connected = proxy.clone();
        if let Some(e) = &enforcement {
            let state = EnforcerState { enforcer: e.enforcer.clone(), policy_reload: e.reload_status.clone() };
            metrics.registry_mut().register_collector(Box::new(state));
        }
        metrics.register_state(StateCollector {
            enforcement: enforcement.is_some(),
            trust: enforcement.as_ref().map(|e| e.trust.clone()),
            upstream: Arc::new(move || connected.upstream().is_connected()),
            probe: probe.clone(),
        });
        let health = Health {
            config_path: config_path.map(Path::to_owned),
            policy: enforcement.as_ref().map(|e| {
                let enforcer = e.enforcer.clone();
                Arc::new(move || enforcer.policy_summary()) as Arc<dyn Fn() -> String + Send + Sync>
            }),
            trust: enforcement.as_ref().map(|e| e.trust.clone()),
            containerd: crate::app::cri_client(
                &config,
                &config.upstream,
                config.upstream_connection.connect_timeout + std::time::Duration::from_secs(3),
            ),
            probe,
        };
        tokio::spawn(admin::server::serve(admin_listener, Arc::new(Admin { metrics, health })));
    }
    let enforcement = enforcement.map(Arc::new);
    if let Some(e) = &enforcement {
        let watcher = e.trust.clone();
        let interval = config.trust_root.watch_interval;
        tokio::spawn(async move { watcher.watch(interval, std::future::pending()).await });
        // Break-glass windows: picked up on the same tick (and on SIGHUP); each decision checks
        // a window's expiry itself, the tick only notices new, revoked and ended windows.
        let enforcer = e.enforcer.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let enforcer = enforcer.clone();
                let _ = tokio::task::spawn_blocking(move || enforcer.break_glass().reload()).await;
            }
        });
    }
    // Always handle SIGHUP (installed at the top): its default action would terminate the process.
    tokio::spawn(async move {
        let Ok(mut hup) = hup else { return };
        while hup.recv().await.is_some() {
            match &enforcement {
                Some(e) => {
                    tracing::info!("SIGHUP received: reloading policy and trust root");
                    let e = e.clone();
                    // Reading files and verifying a root: off the reactor.
                    let _ = tokio::task::spawn_blocking(move || e.reload()).await;
                }
                None => tracing::info!("SIGHUP received: no policy configured, nothing to reload"),
            }
        }
    });
    server::serve(listener, proxy, calls, shutdown, config.drain_timeout).await;
    Ok(())
}

fn reload_signal_mask() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGHUP);
    set
}

/// Holds SIGHUP pending on this thread (and the threads it starts) until [`run`] has installed
/// its handler. Call it first thing in `main`: SIGHUP's default action terminates the process,
/// and `systemctl reload` (the sync DaemonSet sends one every round) can arrive while pullgate
/// is still starting. A held signal is delivered, as a reload, once the handler is in place.
pub fn hold_reload_signal() {
    if let Err(e) = reload_signal_mask().thread_block() {
        eprintln!("pullgate: cannot block SIGHUP during startup: {e}");
    }
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
