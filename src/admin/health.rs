//! `/live` and `/ready`.
//!
//! Live: the process answers. Ready: pullgate can decide kubelet's calls right now, which means
//! all of
//! - the configuration and the policy are loaded (always true once `serve` runs: an invalid
//!   one stops it before anything is bound; without a policy pullgate is a pass-through proxy
//!   and says so);
//! - with a policy, a trust root is loaded and fresh enough to use (otherwise every enforce-mode
//!   decision fails closed);
//! - containerd answers a CRI `Version` call now.
//!
//! Readiness is computed on each request, not latched: a trust root that goes stale or a
//! containerd that stops makes pullgate unready again, which is what an operator's alerting
//! needs to see.

use std::sync::Arc;
use std::time::Duration;

use super::metrics::ProbeStatus;
use crate::cri::client::CriClient;
use crate::trust::TrustHandle;

/// One readiness condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// One line.
    pub detail: String,
}

/// What readiness looks at.
pub struct Health {
    /// The configuration file in force, or `None` for built-in defaults.
    pub config_path: Option<std::path::PathBuf>,
    /// With a policy: the policy in force, in one line (`generation N: ...`).
    pub policy: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    pub trust: Option<Arc<TrustHandle>>,
    /// pullgate's own connection to containerd for probes (not the proxy's: a probe must not
    /// queue behind kubelet's calls).
    pub containerd: CriClient,
    pub probe: Arc<ProbeStatus>,
}

impl Health {
    /// Asks containerd for its version; records the outcome for the metrics.
    pub async fn probe_containerd(&self) -> Check {
        let result = self.containerd.version().await;
        self.probe.record(result.is_ok());
        match result {
            Ok(v) => Check {
                name: "containerd",
                ok: true,
                detail: format!(
                    "{} {} answers on {} (CRI {})",
                    v.runtime_name,
                    v.runtime_version,
                    self.containerd.socket().display(),
                    v.runtime_api_version
                ),
            },
            Err(e) => Check {
                name: "containerd",
                ok: false,
                detail: format!("containerd at {} does not answer: {e}", self.containerd.socket().display()),
            },
        }
    }

    /// Probes containerd unless the last probe is more recent than `max_age` (scrapes).
    pub async fn probe_if_older(&self, max_age: Duration) {
        if self.probe.age().is_none_or(|age| age > max_age) {
            self.probe_containerd().await;
        }
    }

    /// Every readiness condition, in order.
    pub async fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        checks.push(Check {
            name: "config",
            ok: true,
            detail: match &self.config_path {
                Some(p) => format!("{} loaded", p.display()),
                None => "no configuration file: built-in defaults".into(),
            },
        });
        match &self.policy {
            Some(summary) => checks.push(Check { name: "policy", ok: true, detail: summary() }),
            None => {
                checks.push(Check { name: "policy", ok: true, detail: "no policy configured: pass-through, nothing is checked".into() })
            }
        }
        if let Some(trust) = &self.trust {
            checks.push(match trust.material() {
                Ok((_, generation)) => {
                    let facts = trust.facts();
                    let until = facts.stale_at.map(|t| format!(", usable until {t}")).unwrap_or_default();
                    Check { name: "trust_root", ok: true, detail: format!("generation {generation} {}{until}", facts.verdict) }
                }
                Err(e) => Check { name: "trust_root", ok: false, detail: format!("{e}; enforce-mode decisions fail closed") },
            });
        }
        checks.push(self.probe_containerd().await);
        checks
    }

    /// `(ready, body)` for `/ready`.
    pub async fn ready(&self) -> (bool, String) {
        let checks = self.checks().await;
        let ready = checks.iter().all(|c| c.ok);
        let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
        for c in &checks {
            body.push_str(&format!("{} {}: {}\n", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail));
        }
        (ready, body)
    }
}
