//! The enforcement [`Gate`]: what pullgate decides at PullImage and CreateContainer.
//!
//! PullImage:
//! 1. Normalise the reference, find the policies that apply (image globs, namespace).
//! 2. Exempt or unmatched: decided by configuration alone.
//! 3. Otherwise resolve the digest on the mirror, and for each applicable policy discover and
//!    verify signatures (cached per digest, policy and generations; single flight).
//! 4. All enforce-mode policies must pass; audit-mode failures are logged and let through.
//! 5. Allowed: containerd pulls exactly the verified digest (no time-of-check to time-of-use
//!    gap when the tag moves); the tag record is added so kubelet's ImageStatus finds it.
//!
//! CreateContainer: the image must have a valid decision under the current policy for one of
//! its registry digests; images that never went through PullImage (pre-loaded, imported, pulled
//! before pullgate) are verified then, by their repo digests, or refused.
//!
//! Every error (mirror down, timeout, malformed material, stale trust root) refuses in enforce
//! mode. Every decision is written to the audit log.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::audit::{AuditLog, AuditRecord};
use super::cache::{DecisionCache, Lookup};
use super::policy::{Applicable, ImagePolicy, Mode, PolicySet, Unmatched};
use crate::cri::api::AuthConfig;
use crate::cri::intercept::{BoxFuture, CreateCall, CreateVerdict, Gate, MountImage, PullCall, PullVerdict, SandboxCall, UncheckedCall};
use crate::registry::reference::{Digest, Reference};

/// The digests an image reference resolved to on the mirror.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The manifest (or index) digest the reference names.
    pub digest: Digest,
    /// For an index: the manifest digest of this node's platform.
    pub platform_digest: Option<Digest>,
    /// What the mirror served, when the checker already fetched the manifest (saves fetching it
    /// again); `None`: `Checker::verify` fetches it by `digest` when it needs it (a cache miss).
    pub image: Option<Arc<crate::registry::ResolvedImage>>,
}

/// The result of checking one image against one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub allowed: bool,
    /// One line: why allowed or denied.
    pub reason: String,
    /// Signer identities that satisfied the policy (SAN or key fingerprint).
    pub identity: String,
    /// Where the deciding signature came from.
    pub source: String,
}

/// Freshness of the trust root, as the gate needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustStatus {
    /// Bumped on every trust-root swap; part of every cache key.
    pub generation: u64,
    /// `Some(message)` when decisions needing the trust root must fail closed.
    pub unusable: Option<String>,
}

/// Mirror access and verification, as the gate uses them (the real one is
/// `enforce::checker::MirrorChecker`; tests use fakes).
pub trait Checker: Send + Sync + 'static {
    /// Resolves `reference` to its digest(s) on the mirror.
    fn resolve<'a>(&'a self, reference: &'a Reference, auth: Option<&'a AuthConfig>) -> BoxFuture<'a, Result<Resolved, String>>;
    /// Discovers the signatures of `resolved` in `reference`'s repository and verifies them
    /// against `policy`.
    fn verify<'a>(
        &'a self,
        reference: &'a Reference,
        resolved: &'a Resolved,
        policy: &'a ImagePolicy,
        auth: Option<&'a AuthConfig>,
    ) -> BoxFuture<'a, Outcome>;
    /// The trust root's generation and whether it may be used.
    fn trust(&self) -> TrustStatus;
}

/// Decision-cache key: never a tag, always the digest, with the generations that make old
/// decisions unreachable after a policy or trust-root change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    digest: String,
    policy: String,
    policy_generation: u64,
    trust_generation: u64,
}

/// Tunables of the decision cache.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most decisions kept.
    pub capacity: usize,
    /// How long an allowed decision is reused.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub allow_ttl: Duration,
    /// How long a refusal is reused (short: a signature pushed a moment later is picked up).
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub deny_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { capacity: 10_000, allow_ttl: Duration::from_secs(3600), deny_ttl: Duration::from_secs(10) }
    }
}

/// The enforcement gate.
pub struct Enforcer {
    /// The policy in force; replaced whole on reload (readers clone the `Arc`).
    policy: RwLock<Arc<PolicySet>>,
    cache: DecisionCache<CacheKey, Outcome>,
    checker: Arc<dyn Checker>,
    audit: AuditLog,
    node: String,
    /// Decision and cache counters, when metrics are on.
    metrics: Option<Arc<crate::admin::metrics::EnforceMetrics>>,
    /// `ImageService` paths pullgate does not know that configuration lets through
    /// (`cri.allow_image_methods`).
    allowed_methods: Vec<String>,
}

/// The surfaces beyond a pull and a container's own image: image volumes, the sandbox image,
/// images containerd does not have, calls that name no image.
mod surfaces;

/// The forms of a reference policies are matched against.
pub fn match_names(reference: &Reference) -> Vec<String> {
    let name = reference.name();
    let mut names = vec![name.clone()];
    if let Some(tag) = reference.tag() {
        names.push(format!("{name}:{tag}"));
    }
    if let Some(d) = reference.digest() {
        names.push(format!("{name}@{d}"));
    }
    names
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Millisecond).map(|t| t.to_string()).unwrap_or_default()
}

/// What one check of an image came to, before it is turned into a verdict.
struct Checked {
    /// No enforce-mode policy failed: the call goes through.
    allowed: bool,
    /// No policy failed at all: what enforce mode everywhere would do.
    would_allow: bool,
    digest: String,
    policy: String,
    mode: Mode,
    reason: String,
    identity: String,
    source: String,
    cached: bool,
}

impl Enforcer {
    pub fn new(policy: PolicySet, cache: &CacheConfig, checker: Arc<dyn Checker>, audit: AuditLog, node: String) -> Enforcer {
        Enforcer {
            policy: RwLock::new(Arc::new(policy)),
            cache: DecisionCache::new(cache.capacity, cache.allow_ttl, cache.deny_ttl, |o: &Outcome| o.allowed),
            checker,
            audit,
            node,
            metrics: None,
            allowed_methods: Vec::new(),
        }
    }

    /// Records decisions and cache lookups in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::admin::metrics::EnforceMetrics>) -> Enforcer {
        self.metrics = Some(metrics);
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<PolicySet> {
        self.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a new policy in force; decisions made under the old one are dropped.
    pub fn replace_policy(&self, policy: PolicySet) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.cache.clear();
    }

    /// Drops cached decisions (after a trust-root change; keys already differ by generation).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    fn audit(&self, record: AuditRecord) {
        if let Err(e) = self.audit.write(&record) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    /// Checks one image (whose digest is known) against the applicable policies.
    async fn check(&self, reference: &Reference, resolved: &Resolved, policies: &[Arc<ImagePolicy>], generation: u64, auth: Option<&AuthConfig>) -> Vec<(Arc<ImagePolicy>, Arc<Outcome>, bool)> {
        let trust = self.checker.trust();
        let mut results = Vec::new();
        for policy in policies {
            if let Some(why) = &trust.unusable {
                let outcome = Outcome { allowed: false, reason: why.clone(), identity: String::new(), source: String::new() };
                results.push((policy.clone(), Arc::new(outcome), false));
                continue;
            }
            let key = CacheKey {
                digest: resolved.digest.to_string(),
                policy: policy.name.clone(),
                policy_generation: generation,
                trust_generation: trust.generation,
            };
            let (outcome, lookup) = self
                .cache
                .get_or_compute(key, || self.checker.verify(reference, resolved, policy, auth))
                .await;
            if let Some(m) = &self.metrics {
                m.cache_lookup(lookup);
            }
            results.push((policy.clone(), outcome, lookup != Lookup::Miss));
        }
        results
    }

    /// Combines per-policy results: enforce-mode failures refuse, audit-mode ones are noted.
    fn combine(&self, image: &str, digest: &str, results: &[(Arc<ImagePolicy>, Arc<Outcome>, bool)]) -> Checked {
        let enforce_failures: Vec<String> = results
            .iter()
            .filter(|(p, o, _)| p.mode == Mode::Enforce && !o.allowed)
            .map(|(p, o, _)| format!("policy {}: {}", p.name, o.reason))
            .collect();
        let all_failures: Vec<String> = results
            .iter()
            .filter(|(_, o, _)| !o.allowed)
            .map(|(p, o, _)| format!("policy {}: {}", p.name, o.reason))
            .collect();
        let mode = if results.iter().any(|(p, _, _)| p.mode == Mode::Enforce) { Mode::Enforce } else { Mode::Audit };
        let allowed_by_enforce = enforce_failures.is_empty();
        let would_allow = all_failures.is_empty();
        let reason = if would_allow {
            results.iter().map(|(p, o, _)| format!("policy {}: {}", p.name, o.reason)).collect::<Vec<_>>().join("; ")
        } else {
            format!("image {image} ({digest}) denied by {}", all_failures.join("; "))
        };
        let pick = |f: fn(&Outcome) -> &String| {
            let mut v: Vec<&str> = results.iter().map(|(_, o, _)| f(o).as_str()).filter(|s| !s.is_empty()).collect();
            v.dedup();
            v.join(", ")
        };
        Checked {
            allowed: allowed_by_enforce,
            would_allow,
            digest: digest.to_string(),
            policy: results.iter().map(|(p, _, _)| p.name.as_str()).collect::<Vec<_>>().join(","),
            mode,
            reason,
            identity: pick(|o| &o.identity),
            source: pick(|o| &o.source),
            cached: !results.is_empty() && results.iter().all(|(_, _, c)| *c),
        }
    }

    async fn decide_pull(&self, call: &PullCall) -> (PullVerdict, AuditRecord) {
        let mut record = AuditRecord {
            node: self.node.clone(),
            call: "PullImage".into(),
            namespace: call.namespace.clone().unwrap_or_default(),
            pod: call.pod.clone(),
            image: call.image.clone(),
            ..Default::default()
        };
        let reference = match Reference::parse(&call.image) {
            Ok(r) => r,
            Err(e) => {
                record.decision = "deny".into();
                record.reason = format!("invalid image reference {:?}: {e}", call.image);
                record.mode = Mode::Enforce.as_str().into();
                return (PullVerdict::Refuse(record.reason.clone()), record);
            }
        };
        let policy = self.policy();
        let policies = match policy.applicable(&match_names(&reference), call.namespace.as_deref()) {
            Applicable::Exempt(name) => {
                record.policy = format!("exempt:{name}");
                record.decision = "allow".into();
                record.reason = format!("exempt by exemption {name}");
                return (PullVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Allow) => {
                record.policy = "unmatched".into();
                record.decision = "allow".into();
                record.reason = "no policy matches; policy.unmatched is allow".into();
                return (PullVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Deny) => {
                record.policy = "unmatched".into();
                record.mode = Mode::Enforce.as_str().into();
                record.decision = "deny".into();
                record.reason = format!(
                    "image {reference} matches no policy and policy.unmatched is deny: add a policy for it, or an exemption"
                );
                return (PullVerdict::Refuse(record.reason.clone()), record);
            }
            Applicable::Policies(p) => p,
        };
        let enforce = policies.iter().any(|p| p.mode == Mode::Enforce);
        record.mode = if enforce { "enforce" } else { "audit" }.into();
        record.policy = policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(",");
        let auth = call.auth.as_ref();
        let resolved = match self.checker.resolve(&reference, auth).await {
            Ok(r) => r,
            Err(e) => {
                record.decision = "deny".into();
                record.reason = format!("cannot resolve {reference} on the registry mirror: {e}");
                let verdict = if enforce { PullVerdict::Refuse(record.reason.clone()) } else { PullVerdict::Forward };
                return (verdict, record);
            }
        };
        let results = self.check(&reference, &resolved, &policies, policy.generation, auth).await;
        let checked = self.combine(&reference.to_string(), &resolved.digest.to_string(), &results);
        record.digest = checked.digest.clone();
        record.decision = if checked.would_allow { "allow" } else { "deny" }.into();
        record.reason = checked.reason.clone();
        record.identity = checked.identity;
        record.source = checked.source;
        record.cached = checked.cached;
        if !checked.allowed {
            return (PullVerdict::Refuse(checked.reason), record);
        }
        let pinned = reference.with_digest(resolved.digest.clone());
        let tag_as = match (reference.tag(), reference.digest()) {
            // containerd drops the tag of `name:tag@digest` too; nothing to add.
            (Some(tag), None) => Some(format!("{}:{tag}", reference.name())),
            _ => None,
        };
        (PullVerdict::Pin { reference: pinned.to_string(), tag_as }, record)
    }

    /// The CreateContainer decision for `call`, neither logged, audited nor counted (for
    /// `pullgate doctor`, which asks about every image on the node).
    pub async fn dry_run_create(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        self.decide_create(call).await
    }

    async fn decide_create(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        let mut record = AuditRecord {
            node: self.node.clone(),
            call: "CreateContainer".into(),
            namespace: call.namespace.clone().unwrap_or_default(),
            pod: call.pod.clone(),
            image: call.image.clone(),
            ..Default::default()
        };
        let Some(image) = &call.status else {
            // containerd refuses a container of an image it does not have.
            record.decision = "allow".into();
            record.reason = "image not present in containerd; containerd will refuse the container".into();
            return (CreateVerdict::Forward, record);
        };
        let policy = self.policy();
        let tags: Vec<Reference> = image.repo_tags.iter().filter_map(|t| Reference::parse(t).ok()).collect();
        let digests: Vec<Reference> = image
            .repo_digests
            .iter()
            .filter_map(|d| Reference::parse(d).ok())
            .filter(|r| r.digest().is_some())
            .collect();
        // Every name the image is known by, for exemptions and policy matching.
        let mut all_names: Vec<String> = tags.iter().chain(digests.iter()).flat_map(match_names).collect();
        all_names.sort();
        all_names.dedup();
        let ns = call.namespace.as_deref();
        match policy.applicable(&all_names, ns) {
            Applicable::Exempt(name) => {
                record.policy = format!("exempt:{name}");
                record.decision = "allow".into();
                record.reason = format!("exempt by exemption {name}");
                return (CreateVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Allow) => {
                record.policy = "unmatched".into();
                record.decision = "allow".into();
                record.reason = "no policy matches; policy.unmatched is allow".into();
                return (CreateVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Deny) => {
                record.policy = "unmatched".into();
                record.mode = "enforce".into();
                record.decision = "deny".into();
                record.reason = format!(
                    "image {} ({}) matches no policy and policy.unmatched is deny",
                    image.repo_tags.first().or(image.repo_digests.first()).unwrap_or(&image.id),
                    image.id
                );
                return (CreateVerdict::Refuse(record.reason.clone()), record);
            }
            Applicable::Policies(_) => {}
        }
        if digests.is_empty() {
            record.mode = "enforce".into();
            record.decision = "deny".into();
            record.reason = format!(
                "image {} has no registry digest (imported or built on the node, not pulled from a registry), so its signature cannot be checked",
                image.id
            );
            return (CreateVerdict::Refuse(record.reason.clone()), record);
        }
        // Allowed if one of its registry names passes every policy that applies to it.
        let mut failures = Vec::new();
        let mut audit_only = true;
        for reference in &digests {
            let mut names = match_names(reference);
            names.extend(tags.iter().filter(|t| t.name() == reference.name()).flat_map(match_names));
            let policies = match policy.applicable(&names, ns) {
                Applicable::Policies(p) => p,
                Applicable::Exempt(_) | Applicable::Unmatched(Unmatched::Allow) => {
                    record.decision = "allow".into();
                    record.reason = format!("{reference}: no enforcing policy applies to this name");
                    return (CreateVerdict::Forward, record);
                }
                Applicable::Unmatched(Unmatched::Deny) => {
                    failures.push(format!("{reference}: matches no policy"));
                    audit_only = false;
                    continue;
                }
            };
            let digest = reference.digest().cloned().expect("filtered above");
            let resolved = Resolved { digest: digest.clone(), platform_digest: None, image: None };
            let results = self.check(reference, &resolved, &policies, policy.generation, None).await;
            let checked = self.combine(&reference.to_string(), &digest.to_string(), &results);
            record.digest = checked.digest.clone();
            record.policy = checked.policy.clone();
            record.mode = checked.mode.as_str().into();
            record.identity = checked.identity.clone();
            record.source = checked.source.clone();
            record.cached = checked.cached;
            if checked.would_allow {
                record.decision = "allow".into();
                record.reason = checked.reason;
                return (CreateVerdict::Forward, record);
            }
            if checked.allowed {
                // Only audit-mode policies failed.
                failures.push(checked.reason);
            } else {
                audit_only = false;
                failures.push(checked.reason);
            }
        }
        record.decision = "deny".into();
        record.reason = failures.join("; ");
        if audit_only {
            (CreateVerdict::Forward, record)
        } else {
            (CreateVerdict::Refuse(record.reason.clone()), record)
        }
    }

    fn finish(&self, started: Instant, mut record: AuditRecord, refused: bool) {
        record.time = now_rfc3339();
        record.latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        if record.decision == "deny" && !refused {
            tracing::warn!(call = %record.call, image = %record.image, digest = %record.digest, policy = %record.policy, reason = %record.reason, "audit mode: enforce would refuse this");
        } else if refused {
            tracing::warn!(call = %record.call, image = %record.image, digest = %record.digest, policy = %record.policy, reason = %record.reason, "refused");
        } else {
            tracing::info!(call = %record.call, image = %record.image, digest = %record.digest, policy = %record.policy, identity = %record.identity, cached = record.cached, "allowed");
        }
        if let Some(m) = &self.metrics {
            m.decision(&record, refused);
        }
        self.audit(record);
    }
}

impl Gate for Enforcer {
    fn pull<'a>(&'a self, call: &'a PullCall) -> BoxFuture<'a, PullVerdict> {
        Box::pin(async move {
            let started = Instant::now();
            let (verdict, record) = self.decide_pull(call).await;
            self.finish(started, record, matches!(verdict, PullVerdict::Refuse(_)));
            verdict
        })
    }

    fn create<'a>(&'a self, call: &'a CreateCall) -> BoxFuture<'a, CreateVerdict> {
        Box::pin(async move {
            let started = Instant::now();
            let (verdict, record) = self.decide_image(call).await;
            self.finish(started, record, matches!(verdict, CreateVerdict::Refuse(_)));
            verdict
        })
    }

    fn mounts<'a>(&'a self, call: &'a CreateCall, mounts: &'a [MountImage]) -> BoxFuture<'a, CreateVerdict> {
        Box::pin(self.gate_mounts(call, mounts))
    }

    fn sandbox<'a>(&'a self, call: &'a SandboxCall) -> BoxFuture<'a, CreateVerdict> {
        Box::pin(async move {
            let started = Instant::now();
            let (verdict, record) = self.decide_sandbox(call).await;
            self.finish(started, record, matches!(verdict, CreateVerdict::Refuse(_)));
            verdict
        })
    }

    fn unchecked<'a>(&'a self, call: &'a UncheckedCall) -> BoxFuture<'a, CreateVerdict> {
        Box::pin(async move {
            let started = Instant::now();
            match self.decide_unchecked(call) {
                Some((verdict, record)) => {
                    self.finish(started, record, matches!(verdict, CreateVerdict::Refuse(_)));
                    verdict
                }
                None => CreateVerdict::Forward,
            }
        })
    }
}
