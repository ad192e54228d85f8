//! The enforcement side's metrics: decision, cache, mirror and verification counters
//! ([`EnforceMetrics`], recorded by the gate and the mirror checker) and the enforcer's state
//! read at scrape time ([`EnforcerState`]). Both are registered in the admin server's registry by
//! whoever wires pullgate together; admin itself knows no enforcement type.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::audit::AuditRecord;
use super::cache::Lookup;
use super::decision::Verdict;
use super::gate::Enforcer;
use crate::gauge::{bool_gauge, gauge};
use crate::policy::Mode;

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
            ("mode", record.mode.map_or("none", Mode::as_str).to_string()),
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
        let labels = [
            ("registry", registry.to_string()),
            ("operation", operation.to_string()),
            ("outcome", if ok { "ok" } else { "error" }.to_string()),
        ];
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

    /// New counters, registered in `registry` (the admin server's).
    pub fn registered(registry: &mut Registry) -> Arc<EnforceMetrics> {
        let metrics = Arc::new(EnforceMetrics::default());
        metrics.register(registry);
        metrics
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "decisions",
            "PullImage and CreateContainer decisions, by policy, mode, result and reason category",
            self.decisions.clone(),
        );
        registry.register(
            "decision_cache_lookups",
            "Decision cache lookups (joined: waited for a concurrent identical check)",
            self.cache_lookups.clone(),
        );
        registry.register(
            "mirror_requests",
            "Requests to the registry mirror: resolving a reference, discovering signatures",
            self.mirror_requests.clone(),
        );
        registry.register_with_unit(
            "mirror_request_duration",
            "Time to resolve a reference or discover signatures on the mirror",
            Unit::Seconds,
            self.mirror_duration.clone(),
        );
        registry.register("verifications", "Signature verifications of one image against one policy", self.verifications.clone());
        registry.register_with_unit(
            "verification_duration",
            "Time to verify the discovered signatures of one image against one policy",
            Unit::Seconds,
            self.verification_duration.clone(),
        );
        registry.register("policy_reloads", "Policy reloads (SIGHUP), by result", self.policy_reloads.clone());
        registry.register(
            "audit_write_errors",
            "Audit records that could not be written (the decision was made and logged anyway)",
            self.audit_write_errors.clone(),
        );
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

/// The enforcer's state, published at scrape time.
pub struct EnforcerState {
    pub enforcer: Arc<Enforcer>,
    pub policy_reload: Arc<ReloadStatus>,
}

impl std::fmt::Debug for EnforcerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcerState").finish_non_exhaustive()
    }
}

impl Collector for EnforcerState {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(&mut e, "decision_cache_entries", "Decisions held in the decision cache", None, self.enforcer.cache_len() as f64)?;
        gauge(
            &mut e,
            "policy_generation",
            "Generation of the policy in force (increases with every successful reload)",
            None,
            self.enforcer.policy().generation as f64,
        )?;
        bool_gauge(&mut e, "policy_last_reload_success", "1 when the last policy load or reload succeeded", self.policy_reload.last_ok())?;
        gauge(
            &mut e,
            "policy_last_reload_timestamp",
            "When the policy was last loaded or a reload was attempted",
            Some(Unit::Seconds),
            self.policy_reload.last_at.load(Ordering::Relaxed) as f64,
        )?;
        let bg = self.enforcer.break_glass().facts(jiff::Timestamp::now());
        bool_gauge(
            &mut e,
            "break_glass_active",
            "1 while a break-glass window (`pullgate break-glass`) lets named digests through refusals",
            bg.active,
        )?;
        gauge(&mut e, "break_glass_images", "Image digests in open break-glass windows", None, bg.images as f64)?;
        let expiry = bg.expires_at.map_or(0.0, |t| t.as_second() as f64);
        gauge(
            &mut e,
            "break_glass_expiry_timestamp",
            "When the last open break-glass window ends (0: none open)",
            Some(Unit::Seconds),
            expiry,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_counted_by_verdict_and_category() {
        let mut registry = Registry::with_prefix("pullgate");
        let m = EnforceMetrics::registered(&mut registry);
        let record = AuditRecord {
            call: "PullImage".into(),
            policy: "demo".into(),
            mode: Some(Mode::Enforce),
            decision: "deny".into(),
            reason: "no signatures found".into(),
            category: "no_signatures".into(),
            ..Default::default()
        };
        m.decision(&record, Verdict::Deny);
        m.decision(&AuditRecord { mode: Some(Mode::Audit), ..record }, Verdict::AuditWouldDeny);
        m.cache_lookup(Lookup::Miss);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"pullgate_decisions_total{call="PullImage",policy="demo",mode="enforce",result="deny",reason="no_signatures"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"pullgate_decisions_total{call="PullImage",policy="demo",mode="audit",result="audit_deny",reason="no_signatures"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"pullgate_decision_cache_lookups_total{result="miss"} 1"#), "{text}");
    }
}
