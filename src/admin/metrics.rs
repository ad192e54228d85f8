//! The metrics registry: one `prometheus-client` registry, every metric named `pullgate_...`.
//!
//! Components record into what they are handed: the proxy into [`CallMetrics`] (see
//! [`super::calls`]), the enforcement gate and the mirror checker into [`EnforceMetrics`]. State
//! that already lives somewhere (the trust root's facts, the policy generation, the decision
//! cache's size, containerd's connection) is read when Prometheus scrapes, by [`StateCollector`],
//! so it can never drift from what pullgate actually uses.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::calls::CallMetrics;
use crate::enforce::audit::AuditRecord;
use crate::enforce::cache::Lookup;
use crate::enforce::decision::Verdict;
use crate::enforce::gate::Enforcer;
use crate::trust::TrustHandle;

/// Latency buckets for mirror requests and verification, in seconds.
const SLOW_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Labels3 = [(&'static str, String); 3];
/// Histograms by one static label; built by [`slow_histogram`].
type HistogramFamily = Family<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>;
type Labels5 = [(&'static str, String); 5];

fn slow_histogram() -> Histogram {
    Histogram::new(SLOW_BUCKETS)
}

/// What the enforcement side records: decisions, cache lookups, mirror requests, verification.
#[derive(Debug)]
pub struct EnforceMetrics {
    /// call, policy, mode, result (`allow`, `deny`: refused, `audit_deny`: let through in audit
    /// mode), reason ([`Reason::category`](crate::enforce::decision::Reason::category)).
    decisions: Family<Labels5, Counter>,
    /// result: `hit`, `miss`, `joined`.
    cache_lookups: Family<[(&'static str, &'static str); 1], Counter>,
    /// registry (bounded: `Registry::mirror_label`), operation (`resolve`, `discover`),
    /// outcome (`ok`, `error`).
    mirror_requests: Family<Labels3, Counter>,
    /// operation.
    mirror_duration: HistogramFamily,
    /// result: `verified`, `rejected`.
    verifications: Family<[(&'static str, &'static str); 1], Counter>,
    verification_duration: Histogram,
    /// result: `ok`, `error`.
    policy_reloads: Family<[(&'static str, &'static str); 1], Counter>,
    /// Audit records that could not be written (disk full, file removed): the decision stood.
    audit_write_errors: Counter,
}

impl Default for EnforceMetrics {
    fn default() -> Self {
        EnforceMetrics {
            decisions: Family::default(),
            cache_lookups: Family::default(),
            mirror_requests: Family::default(),
            mirror_duration: Family::new_with_constructor(slow_histogram),
            verifications: Family::default(),
            verification_duration: slow_histogram(),
            policy_reloads: Family::default(),
            audit_write_errors: Counter::default(),
        }
    }
}

/// The `call` label of a decision, from a bounded set: the calls the gate decides, else
/// `other` (an unchecked call's record names its gRPC path, which the caller chose).
fn call_label(call: &str) -> &'static str {
    match call {
        "PullImage" => "PullImage",
        "CreateContainer" => "CreateContainer",
        "RunPodSandbox" => "RunPodSandbox",
        _ => "other",
    }
}

impl EnforceMetrics {
    /// Notes one decision as it is written to the audit log.
    pub fn decision(&self, record: &AuditRecord, verdict: Verdict) {
        let labels = [
            ("call", call_label(&record.call).to_string()),
            ("policy", record.policy.clone()),
            ("mode", if record.mode.is_empty() { "none".to_string() } else { record.mode.clone() }),
            ("result", verdict.label().to_string()),
            ("reason", record.category()),
        ];
        self.decisions.get_or_create(&labels).inc();
    }

    pub fn cache_lookup(&self, lookup: Lookup) {
        let result = match lookup {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Joined => "joined",
        };
        self.cache_lookups.get_or_create(&[("result", result)]).inc();
    }

    /// Notes one request to a registry mirror (resolving a tag, or discovering signatures).
    pub fn mirror_request(&self, registry: &str, operation: &'static str, ok: bool, took: Duration) {
        let labels = [("registry", registry.to_string()), ("operation", operation.to_string()), ("outcome", if ok { "ok" } else { "error" }.to_string())];
        self.mirror_requests.get_or_create(&labels).inc();
        self.mirror_duration.get_or_create(&[("operation", operation)]).observe(took.as_secs_f64());
    }

    /// Notes one signature verification (the cryptographic part, after discovery).
    pub fn verification(&self, verified: bool, took: Duration) {
        self.verifications.get_or_create(&[("result", if verified { "verified" } else { "rejected" })]).inc();
        self.verification_duration.observe(took.as_secs_f64());
    }

    pub fn policy_reload(&self, ok: bool) {
        self.policy_reloads.get_or_create(&[("result", if ok { "ok" } else { "error" })]).inc();
    }

    /// Notes one audit record lost to a write error.
    pub fn audit_write_error(&self) {
        self.audit_write_errors.inc();
    }

    fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register("decisions", "PullImage and CreateContainer decisions, by policy, mode, result and reason category", self.decisions.clone());
        registry.register("decision_cache_lookups", "Decision cache lookups (joined: waited for a concurrent identical check)", self.cache_lookups.clone());
        registry.register("mirror_requests", "Requests to the registry mirror: resolving a reference, discovering signatures", self.mirror_requests.clone());
        registry.register_with_unit("mirror_request_duration", "Time to resolve a reference or discover signatures on the mirror", Unit::Seconds, self.mirror_duration.clone());
        registry.register("verifications", "Signature verifications of one image against one policy", self.verifications.clone());
        registry.register_with_unit("verification_duration", "Time to verify the discovered signatures of one image against one policy", Unit::Seconds, self.verification_duration.clone());
        registry.register("policy_reloads", "Policy reloads (SIGHUP), by result", self.policy_reloads.clone());
        registry.register("audit_write_errors", "Audit records that could not be written (the decision was made and logged anyway)", self.audit_write_errors.clone());
    }
}

/// The policy's reload history (the generation itself is the enforcer's).
#[derive(Debug)]
pub struct ReloadStatus {
    last_ok: AtomicBool,
    /// Unix seconds of the last load or reload.
    last_at: AtomicI64,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        ReloadStatus { last_ok: AtomicBool::new(true), last_at: AtomicI64::new(jiff::Timestamp::now().as_second()) }
    }
}

impl ReloadStatus {
    pub fn record(&self, ok: bool) {
        self.last_ok.store(ok, Ordering::Relaxed);
        self.last_at.store(jiff::Timestamp::now().as_second(), Ordering::Relaxed);
    }

    pub fn last_ok(&self) -> bool {
        self.last_ok.load(Ordering::Relaxed)
    }
}

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
    pub enforcer: Option<Arc<Enforcer>>,
    pub trust: Option<Arc<TrustHandle>>,
    pub policy_reload: Arc<ReloadStatus>,
    /// The proxy's connection to containerd.
    pub upstream: Arc<dyn Fn() -> bool + Send + Sync>,
    pub probe: Arc<ProbeStatus>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<Unit>, value: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
    g.encode(m)
}

fn bool_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: bool) -> Result<(), std::fmt::Error> {
    gauge(encoder, name, help, None, if value { 1.0 } else { 0.0 })
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        bool_gauge(&mut e, "enforcement_enabled", "1 when a policy is configured (0: pure pass-through, nothing is checked)", self.enforcer.is_some())?;
        bool_gauge(&mut e, "upstream_connected", "1 while the proxy holds an HTTP/2 connection to containerd", (self.upstream)())?;
        if let Some(up) = self.probe.up() {
            bool_gauge(&mut e, "upstream_up", "1 when containerd answered the last CRI Version probe (made on /ready and on scrapes)", up)?;
        }
        if let Some(enforcer) = &self.enforcer {
            gauge(&mut e, "decision_cache_entries", "Decisions held in the decision cache", None, enforcer.cache_len() as f64)?;
            gauge(&mut e, "policy_generation", "Generation of the policy in force (increases with every successful reload)", None, enforcer.policy().generation as f64)?;
            bool_gauge(&mut e, "policy_last_reload_success", "1 when the last policy load or reload succeeded", self.policy_reload.last_ok())?;
            gauge(
                &mut e,
                "policy_last_reload_timestamp",
                "When the policy was last loaded or a reload was attempted",
                Some(Unit::Seconds),
                self.policy_reload.last_at.load(Ordering::Relaxed) as f64,
            )?;
            let bg = enforcer.break_glass().facts(jiff::Timestamp::now());
            bool_gauge(&mut e, "break_glass_active", "1 while a break-glass window (`pullgate break-glass`) lets named digests through refusals", bg.active)?;
            gauge(&mut e, "break_glass_images", "Image digests in open break-glass windows", None, bg.images as f64)?;
            let expiry = bg.expires_at.map_or(0.0, |t| t.as_second() as f64);
            gauge(&mut e, "break_glass_expiry_timestamp", "When the last open break-glass window ends (0: none open)", Some(Unit::Seconds), expiry)?;
        }
        if let Some(trust) = &self.trust {
            let facts = trust.facts();
            bool_gauge(&mut e, "trust_root_installed", "1 when a trust root is loaded", facts.installed)?;
            gauge(&mut e, "trust_root_generation", "Generation of the loaded trust root (+1 per swap; 0: none)", None, facts.generation as f64)?;
            {
                let mut m = e.encode_descriptor("trust_root_state", "The loaded trust root's freshness: 1 for the current state", None, MetricType::Gauge)?;
                for state in ["fresh", "expiring", "stale", "none"] {
                    ConstGauge::new(if facts.verdict == state { 1i64 } else { 0 }).encode(m.encode_family(&[("state", state)])?)?;
                }
            }
            if let Some(s) = facts.seconds_until_stale {
                gauge(&mut e, "trust_root_seconds_until_stale", "Seconds until the loaded trust root goes stale and enforce-mode decisions fail closed (negative: stale)", None, s as f64)?;
            }
            if let Some(t) = facts.imported_at {
                gauge(&mut e, "trust_root_imported_timestamp", "When the loaded trust root was imported", Some(Unit::Seconds), t.as_second() as f64)?;
            }
            if let Some(r) = &facts.last_reload {
                bool_gauge(&mut e, "trust_root_last_reload_success", "1 when the last trust-root reload succeeded (0: refused, the previous root stays)", r.ok)?;
                gauge(&mut e, "trust_root_last_reload_timestamp", "When the trust root was last (re)loaded", Some(Unit::Seconds), r.at.as_second() as f64)?;
            }
            if let Some(i) = &facts.last_import {
                bool_gauge(&mut e, "trust_root_last_import_success", "1 when the last `pullgate trust-root import` succeeded", i.ok)?;
                gauge(&mut e, "trust_root_last_import_timestamp", "When `pullgate trust-root import` last ran", Some(Unit::Seconds), i.at.as_second() as f64)?;
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
    pub enforce: Arc<EnforceMetrics>,
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
        let enforce = Arc::new(EnforceMetrics::default());
        enforce.register(&mut registry);
        registry.register("build", "pullgate's version", Info::new([("version", env!("CARGO_PKG_VERSION"))]));
        Metrics { registry, calls, enforce }
    }

    /// Adds the scrape-time state.
    pub fn register_state(&mut self, state: StateCollector) {
        self.registry.register_collector(Box::new(state));
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
        let record = AuditRecord {
            call: "PullImage".into(),
            policy: "demo".into(),
            mode: "enforce".into(),
            decision: "deny".into(),
            reason: "no signatures found".into(),
            category: "no_signatures".into(),
            ..Default::default()
        };
        m.enforce.decision(&record, Verdict::Deny);
        m.enforce.cache_lookup(Lookup::Miss);
        m.calls.record(m.calls.method("/runtime.v1.RuntimeService/Version"), 0, Instant::now());
        let classic = m.encode(false);
        assert!(classic.contains(r#"pullgate_cri_calls_total{service="RuntimeService",method="Version",code="OK"} 1"#), "{classic}");
        let text = m.encode(true);
        assert!(text.contains(r#"pullgate_decisions_total{call="PullImage",policy="demo",mode="enforce",result="deny",reason="no_signatures"} 1"#), "{text}");
        assert!(text.contains(r#"pullgate_decision_cache_lookups_total{result="miss"} 1"#), "{text}");
        assert!(text.contains(r#"pullgate_cri_calls_total{service="RuntimeService",method="Version",code="OK"} 1"#), "{text}");
        assert!(text.contains(r#"pullgate_cri_call_duration_seconds_count{service="RuntimeService",method="Version"} 1"#), "{text}");
        assert!(text.contains(r#"pullgate_build_info{version="#), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
