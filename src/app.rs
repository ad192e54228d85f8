//! The wiring every command shares: configuration -> trust root, registry mirror, checker ->
//! enforcer -> proxy. `serve` ([`crate::daemon`]), `doctor` and `verify` build from here, so what
//! one of them judges is judged as the others do.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::cri::client::CriClient;
use crate::cri::intercept::Gate;
use crate::cri::proxy::Proxy;
use crate::cri::upstream::Upstream;
use crate::enforce::audit::AuditLog;
use crate::enforce::break_glass::BreakGlass;
use crate::enforce::checker::MirrorChecker;
use crate::enforce::gate::Enforcer;
use crate::enforce::metrics::EnforceMetrics;
use crate::policy::PolicySet;
use crate::registry::reference::Aliases;
use crate::registry::{HostsDir, Registry};
use crate::trust::{StateDir, SystemClock, TrustHandle};

/// The installed trust root of `trust_root.state_dir` (not loaded yet: call `reload`).
pub fn trust_root(config: &Config) -> TrustHandle {
    TrustHandle::new(StateDir::new(&config.trust_root.state_dir), config.trust_root.policy(), Arc::new(SystemClock))
}

/// The node's registry mirrors, as `registry:` configures them.
pub fn registry(config: &Config) -> Registry {
    Registry::new(config.registry.clone())
}

/// What an enforcer needs besides the configuration: where it records, and what it reports to.
pub struct EnforcerWiring {
    pub audit: AuditLog,
    /// Node name in audit records.
    pub node: String,
    pub metrics: Option<Arc<EnforceMetrics>>,
    /// Honour the break-glass windows of the state directory (the daemon does; a dry run that
    /// predicts the policy's answer does not).
    pub break_glass: bool,
}

/// The enforcer of `policy`, checking signatures on the mirrors against `trust`, with the
/// configuration's registry aliases, allowed CRI methods and cache.
pub fn enforcer(config: &Config, policy: PolicySet, trust: Arc<TrustHandle>, wiring: EnforcerWiring) -> Enforcer {
    let mut checker = MirrorChecker::new(registry(config), trust);
    if let Some(m) = &wiring.metrics {
        checker = checker.with_metrics(m.clone());
    }
    // Validated with the configuration; an invalid map cannot reach here.
    let aliases = Aliases::new(&config.registry.aliases).unwrap_or_default();
    let (aliases, derived) = aliases.with_hosts_dir(&HostsDir::new(config.registry.hosts_dir.clone()));
    for line in derived {
        tracing::info!("registry alias: {line}");
    }
    let mut enforcer = Enforcer::new(policy, &config.cache, Arc::new(checker), wiring.audit, wiring.node)
        .with_aliases(aliases)
        .with_allowed_methods(config.cri.allowed_paths());
    if wiring.break_glass {
        let break_glass = BreakGlass::in_state_dir(&config.trust_root.state_dir);
        break_glass.reload();
        enforcer = enforcer.with_break_glass(break_glass);
    }
    if let Some(m) = wiring.metrics {
        enforcer = enforcer.with_metrics(m);
    }
    enforcer
}

/// The CRI proxy in front of `upstream`, with `gate` deciding (none: pure pass-through).
pub fn proxy(config: &Config, gate: Option<Arc<dyn Gate>>) -> Proxy {
    let upstream = Upstream::new(&config.upstream, config.upstream_connection.clone());
    Proxy::new(upstream, config.access.clone(), gate)
        .with_sandbox_image(config.cri.sandbox_image.clone())
        .with_buffer_budget(config.cri.max_buffered_bytes)
        .with_frame_relay(config.cri.frame_relay)
}

/// A CRI client of the socket at `socket` (containerd's or pullgate's), connecting as the proxy
/// does, each call bounded by `timeout`.
pub fn cri_client(config: &Config, socket: &Path, timeout: Duration) -> CriClient {
    CriClient::new(socket, config.upstream_connection.clone(), timeout)
}
