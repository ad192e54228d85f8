//! The metrics registry: one `prometheus-client` registry, every metric named `pullgate_...`.
//!
//! Components record into what they are handed: the proxy into [`CallMetrics`] (see
//! [`super::calls`]); the enforcement side registers its own families and scrape-time state
//! (`crate::enforce::metrics`, through [`Metrics::registry_mut`]: admin knows no enforcement
//! types). State that already lives somewhere (the trust root's facts, containerd's connection)
//! is read when Prometheus scrapes, by [`StateCollector`], so it can never drift from what
//! pullgate actually uses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::calls::CallMetrics;
use crate::gauge::{bool_gauge, gauge};
use crate::trust::TrustHandle;

/// The last readiness probe of containerd (a CRI `Version` call).
#[derive(Debug, Default)]
pub struct ProbeStatus {
    /// 0: never probed, 1: answered, 2: did not answer.
    state: AtomicU64,
    /// When the last probe finished, for [`Self::age`].
    at: std::sync::Mutex<Option<Instant>>,
}

impl ProbeStatus {
    pub fn record(&self, up: bool) {
        self.state.store(if up { 1 } else { 2 }, Ordering::Relaxed);
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// `None` before the first probe.
    pub fn up(&self) -> Option<bool> {
        match self.state.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// Time since the last probe; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        self.at.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }
}

/// Live state, published at scrape time.
pub struct StateCollector {
    /// Whether a policy is configured (its own state is the enforcer's collector,
    /// `crate::enforce::metrics::EnforcerState`, registered next to this one).
    pub enforcement: bool,
    pub trust: Option<Arc<TrustHandle>>,
    /// The proxy's connection to containerd.
    pub upstream: Arc<dyn Fn() -> bool + Send + Sync>,
    pub probe: Arc<ProbeStatus>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        bool_gauge(
            &mut e,
            "enforcement_enabled",
            "1 when a policy is configured (0: pure pass-through, nothing is checked)",
            self.enforcement,
        )?;
        bool_gauge(&mut e, "upstream_connected", "1 while the proxy holds an HTTP/2 connection to containerd", (self.upstream)())?;
        if let Some(up) = self.probe.up() {
            bool_gauge(&mut e, "upstream_up", "1 when containerd answered the last CRI Version probe (made on /ready and on scrapes)", up)?;
        }
        if let Some(trust) = &self.trust {
            let facts = trust.facts();
            bool_gauge(&mut e, "trust_root_installed", "1 when a trust root is loaded", facts.installed)?;
            gauge(
                &mut e,
                "trust_root_generation",
                "Generation of the loaded trust root (+1 per swap; 0: none)",
                None,
                facts.generation as f64,
            )?;
            {
                let mut m = e.encode_descriptor(
                    "trust_root_state",
                    "The loaded trust root's freshness: 1 for the current state",
                    None,
                    MetricType::Gauge,
                )?;
                for state in ["fresh", "expiring", "stale", "none"] {
                    ConstGauge::new(if facts.verdict == state { 1i64 } else { 0 }).encode(m.encode_family(&[("state", state)])?)?;
                }
            }
            if let Some(s) = facts.seconds_until_stale {
                gauge(
                    &mut e,
                    "trust_root_seconds_until_stale",
                    "Seconds until the loaded trust root goes stale and enforce-mode decisions fail closed (negative: stale)",
                    None,
                    s as f64,
                )?;
            }
            if let Some(t) = facts.imported_at {
                gauge(
                    &mut e,
                    "trust_root_imported_timestamp",
                    "When the loaded trust root was imported",
                    Some(Unit::Seconds),
                    t.as_second() as f64,
                )?;
            }
            if let Some(r) = &facts.last_reload {
                bool_gauge(
                    &mut e,
                    "trust_root_last_reload_success",
                    "1 when the last trust-root reload succeeded (0: refused, the previous root stays)",
                    r.ok,
                )?;
                gauge(
                    &mut e,
                    "trust_root_last_reload_timestamp",
                    "When the trust root was last (re)loaded",
                    Some(Unit::Seconds),
                    r.at.as_second() as f64,
                )?;
            }
            if let Some(i) = &facts.last_import {
                bool_gauge(&mut e, "trust_root_last_import_success", "1 when the last `pullgate trust-root import` succeeded", i.ok)?;
                gauge(
                    &mut e,
                    "trust_root_last_import_timestamp",
                    "When `pullgate trust-root import` last ran",
                    Some(Unit::Seconds),
                    i.at.as_second() as f64,
                )?;
            }
        }
        Ok(())
    }
}

/// The registry and the recorders handed to components.
pub struct Metrics {
    registry: Registry,
    /// Leaked once per process: each call's probe holds a plain reference (no reference count
    /// to touch on the pass-through path).
    pub calls: &'static CallMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pullgate");
        let calls: &'static CallMetrics = Box::leak(Box::default());
        registry.register_collector(Box::new(CallRef(calls)));
        registry.register("build", "pullgate's version", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
        Metrics { registry, calls }
    }

    /// Adds the scrape-time state.
    pub fn register_state(&mut self, state: StateCollector) {
        self.registry.register_collector(Box::new(state));
    }

    /// The registry, for components that register their own metrics (the enforcement side:
    /// `crate::enforce::metrics`).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Every metric as OpenMetrics text (what Prometheus asks for), or in the classic
    /// Prometheus text format (for `curl`, `promtool check metrics` and older scrapers).
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if let Err(e) = encoded {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[derive(Debug)]
struct CallRef(&'static CallMetrics);

impl Collector for CallRef {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix_and_records() {
        let m = Metrics::new();
        m.calls.record(m.calls.method("/runtime.v1.RuntimeService/Version"), 0, Instant::now());
        let classic = m.encode(false);
        assert!(classic.contains(r#"pullgate_cri_calls_total{service="RuntimeService",method="Version",code="OK"} 1"#), "{classic}");
        let text = m.encode(true);
        assert!(text.contains(r#"pullgate_cri_calls_total{service="RuntimeService",method="Version",code="OK"} 1"#), "{text}");
        assert!(text.contains(r#"pullgate_cri_call_duration_seconds_count{service="RuntimeService",method="Version"} 1"#), "{text}");
        assert!(text.contains(r#"pullgate_build_info{version="#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
