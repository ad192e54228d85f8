//! The enforcement [`Gate`]: what pullgate decides at PullImage and CreateContainer.
//!
//! PullImage:
//! 1. Normalise the reference, find the policies that apply (image globs, namespace).
//! 2. Exempt or unmatched: decided by configuration alone.
//! 3. Otherwise resolve the digest on the mirror, and for each applicable policy discover and
//!    verify signatures (cached per registry, repository, digest, policy, generations and
//!    credentials: [`CacheKey`]; single flight).
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::audit::{AuditLog, AuditRecord};
use super::cache::{DecisionCache, Lookup};
use super::decision::{Reason, Verdict};
use crate::cri::api::AuthConfig;
use crate::cri::intercept::{BoxFuture, CreateCall, CreateVerdict, Gate, MountImage, PullCall, PullVerdict, SandboxCall, UncheckedCall};
use crate::digest::Digest;
use crate::policy::{Applicable, ImagePolicy, Mode, PolicySet, Unmatched};
use crate::registry::reference::{Aliases, Reference};
use crate::registry::Error as RegistryError;
use crate::trust::TrustUnavailable;

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
    /// The manifest's bytes, when resolving the tag fetched them: on a cache miss,
    /// `Checker::verify` starts from them instead of fetching the manifest again.
    pub manifest: Option<crate::registry::FetchedManifest>,
}

/// The result of checking one image against one policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    pub allowed: bool,
    /// Why allowed or denied (its `Display`: one line).
    pub reason: Reason,
    /// Signer identities that satisfied the policy (SAN or key fingerprint).
    pub identity: String,
    /// Where the deciding signature came from.
    pub source: String,
    /// Allowed: the manifest containerd is to pull, which is what was verified: the image's
    /// own manifest; for an index, the platform manifest containerd would pick (verified
    /// itself, or covered by the signed index), or the index itself under `multi_arch: index`.
    pub pin: Option<Digest>,
    /// Allowed: the config digests (containerd's image IDs) of the verified manifest(s) this
    /// decision admits at CreateContainer.
    pub configs: Vec<Digest>,
    /// Allowed under attestation `notOlderThan` conditions: when the first of them turns false;
    /// the cached decision expires then at the latest.
    pub fresh_until: Option<jiff::Timestamp>,
}

/// Freshness of the trust root, as the gate needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustStatus {
    /// Bumped on every trust-root swap; part of every cache key.
    pub generation: u64,
    /// `Some(why)` when decisions needing the trust root must fail closed.
    pub unusable: Option<TrustUnavailable>,
}

/// Mirror access and verification, as the gate uses them (the real one is
/// `enforce::checker::MirrorChecker`; tests use fakes).
pub trait Checker: Send + Sync + 'static {
    /// Resolves `reference` to its digest(s) on the mirror.
    fn resolve<'a>(&'a self, reference: &'a Reference, auth: Option<&'a AuthConfig>) -> BoxFuture<'a, Result<Resolved, RegistryError>>;
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

/// How a refusal names an image: `image <name> (<digest>)`, the name as the call used it, then
/// the digest checked, once (`image <name>@<digest>` when the name already carries it).
fn subject(image: &str, digest: &str) -> String {
    if image.strip_suffix(digest).is_some_and(|n| n.ends_with('@')) {
        format!("image {image}")
    } else {
        format!("image {image} ({digest})")
    }
}

/// Decision-cache key: everything a decision depends on. Never a tag, always the digest; the
/// registry and repository, because signatures are discovered in the image's repository (a
/// refusal of `demo/does-not-exist@D` says nothing of `demo/app@D`); the generations that make
/// old decisions unreachable after a policy or trust-root change; and the credentials the
/// mirror was asked with, because a refusal made with a wrong pull secret says nothing of the
/// pods that have the right one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Canonical registry name (aliases resolved).
    registry: String,
    repository: String,
    digest: String,
    policy: String,
    policy_generation: u64,
    trust_generation: u64,
    /// sha256 of the credentials kubelet passed; `None`: none (the mirror's own, if any).
    credentials: Option<String>,
}

/// A hash naming the credentials kubelet passed (never the credentials themselves); `None`
/// when it passed none.
fn credential_scope(auth: Option<&AuthConfig>) -> Option<String> {
    let a = auth?;
    let fields = [&a.username, &a.password, &a.auth, &a.server_address, &a.identity_token, &a.registry_token];
    if fields.iter().all(|f| f.is_empty()) {
        return None;
    }
    let mut bytes = Vec::new();
    for f in fields {
        bytes.extend_from_slice(&(f.len() as u64).to_be_bytes());
        bytes.extend_from_slice(f.as_bytes());
    }
    Some(Digest::sha256(&bytes).hex().to_string())
}

/// Tunables of the decision cache.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most decisions kept.
    pub capacity: usize,
    /// How long an allowed decision is reused.
    #[serde(deserialize_with = "crate::settings::de_duration")]
    pub allow_ttl: Duration,
    /// How long a refusal is reused (short: a signature pushed a moment later is picked up).
    #[serde(deserialize_with = "crate::settings::de_duration")]
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
    metrics: Option<Arc<super::metrics::EnforceMetrics>>,
    /// Other spellings of registries (`registry.aliases`): one canonical name per registry.
    aliases: Aliases,
    /// `name@<platform manifest>` -> the signed index it was pinned from at PullImage, so that
    /// CreateContainer can find the signature that covers it. Bounded by the cache capacity;
    /// after a restart the image's tags are resolved on the mirror instead.
    picked: Mutex<HashMap<String, Digest>>,
    /// Bound of `picked`.
    picked_capacity: usize,
    /// `ImageService` paths pullgate does not know that configuration lets through
    /// (`cri.allow_image_methods`).
    allowed_methods: Vec<String>,
    /// Break-glass windows: digests let through although refused (`pullgate break-glass`).
    break_glass: super::break_glass::BreakGlass,
}

/// The surfaces beyond a pull and a container's own image: image volumes, the sandbox image,
/// images containerd does not have, calls that name no image.
mod surfaces;

/// The break-glass hook: a refusal of a digest in an open window becomes an allowance.
mod break_glass;

/// The decision for an image present in containerd (CreateContainer and the surfaces).
mod create;

/// The forms of a reference policies and exemptions are matched against, with its canonical
/// registry name (lower-cased, no `:443`): `name` and `name:tag` for a tag reference, `name`
/// and `name@digest` for a digest reference. containerd ignores the tag of `name:tag@digest`,
/// so it is ignored here too.
pub fn match_names(reference: &Reference) -> Vec<String> {
    match_names_in(&Aliases::default(), reference)
}

/// [`match_names`] with the registry aliases of the configuration.
pub fn match_names_in(aliases: &Aliases, reference: &Reference) -> Vec<String> {
    let name = aliases.name(reference);
    let mut names = vec![name.clone()];
    match (reference.digest(), reference.tag()) {
        (Some(d), _) => names.push(format!("{name}@{d}")),
        (None, Some(tag)) => names.push(format!("{name}:{tag}")),
        (None, None) => {}
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
    reason: Reason,
    identity: String,
    source: String,
    cached: bool,
}

impl Enforcer {
    pub fn new(policy: PolicySet, cache: &CacheConfig, checker: Arc<dyn Checker>, audit: AuditLog, node: String) -> Enforcer {
        Enforcer {
            policy: RwLock::new(Arc::new(policy)),
            cache: DecisionCache::new(cache.capacity, cache.allow_ttl, cache.deny_ttl, |o: &Outcome| o.allowed)
                .with_deadline(|o: &Outcome| o.fresh_until),
            checker,
            audit,
            node,
            metrics: None,
            aliases: Aliases::default(),
            picked: Mutex::new(HashMap::new()),
            picked_capacity: cache.capacity.max(1),
            allowed_methods: Vec::new(),
            break_glass: Default::default(),
        }
    }

    /// Treats the registry spellings in `aliases` as one registry.
    pub fn with_aliases(mut self, aliases: Aliases) -> Enforcer {
        self.aliases = aliases;
        self
    }

    fn names(&self, reference: &Reference) -> Vec<String> {
        match_names_in(&self.aliases, reference)
    }

    /// Remembers that `pinned` (a platform manifest) was picked from the signed index `index`.
    fn remember_pick(&self, pinned: &Reference, index: &Digest) {
        let mut picked = self.picked.lock().unwrap_or_else(|p| p.into_inner());
        if picked.len() >= self.picked_capacity {
            picked.clear();
        }
        picked
            .insert(format!("{}@{}", self.aliases.name(pinned), pinned.digest().map(|d| d.to_string()).unwrap_or_default()), index.clone());
    }

    fn picked_from(&self, reference: &Reference) -> Option<Digest> {
        let key = format!("{}@{}", self.aliases.name(reference), reference.digest()?);
        self.picked.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()
    }

    /// Records decisions and cache lookups in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<super::metrics::EnforceMetrics>) -> Enforcer {
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

    /// The policy in force, in one line (for `/ready`).
    pub fn policy_summary(&self) -> String {
        let policy = self.policy();
        format!("generation {}: {} policies, unmatched images {:?}", policy.generation, policy.policies().len(), policy.unmatched)
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    fn audit(&self, record: AuditRecord) {
        if let Err(e) = self.audit.write(&record) {
            if let Some(m) = &self.metrics {
                m.audit_write_error();
            }
            tracing::error!(error = %e, decision = %record.decision, "cannot write the audit log; the decision stands");
        }
    }

    /// Checks one image (whose digest is known) against the applicable policies.
    async fn check(
        &self,
        reference: &Reference,
        resolved: &Resolved,
        policies: &[Arc<ImagePolicy>],
        generation: u64,
        auth: Option<&AuthConfig>,
    ) -> Vec<(Arc<ImagePolicy>, Arc<Outcome>, bool)> {
        let trust = self.checker.trust();
        let mut results = Vec::new();
        for policy in policies {
            if let Some(why) = &trust.unusable {
                let outcome = Outcome { allowed: false, reason: Reason::trust_root(why), ..Default::default() };
                results.push((policy.clone(), Arc::new(outcome), false));
                continue;
            }
            let key = CacheKey {
                registry: self.aliases.registry(reference.registry()),
                repository: reference.repository().to_string(),
                digest: resolved.digest.to_string(),
                policy: policy.name.clone(),
                policy_generation: generation,
                trust_generation: trust.generation,
                credentials: credential_scope(auth),
            };
            // An approval holds for whoever asks (the signature is on the digest, whatever the
            // credentials it was fetched with), so it is also kept under the key without
            // credentials: CreateContainer, which has none, finds the pull's decision.
            // Refusals stay under the credentials they were made with.
            let shared = CacheKey { credentials: None, ..key.clone() };
            let approved = key.credentials.is_some().then(|| self.cache.peek(&shared)).flatten().filter(|o| o.allowed);
            let (outcome, lookup) = match approved {
                Some(o) => (o, Lookup::Hit),
                None => {
                    let (outcome, lookup) =
                        self.cache.get_or_compute(key.clone(), || self.checker.verify(reference, resolved, policy, auth)).await;
                    if outcome.allowed && key.credentials.is_some() {
                        self.cache.put(shared, outcome.clone());
                    }
                    (outcome, lookup)
                }
            };
            if let Some(m) = &self.metrics {
                m.cache_lookup(lookup);
            }
            results.push((policy.clone(), outcome, lookup != Lookup::Miss));
        }
        results
    }

    /// Combines per-policy results: enforce-mode failures refuse, audit-mode ones are noted.
    /// `image` is the name a refusal shows (what the call asked for), `digest` what was checked.
    fn combine(&self, image: &str, digest: &str, results: &[(Arc<ImagePolicy>, Arc<Outcome>, bool)]) -> Checked {
        let allowed_by_enforce = !results.iter().any(|(p, o, _)| p.mode == Mode::Enforce && !o.allowed);
        let all_failures: Vec<(String, Reason)> =
            results.iter().filter(|(_, o, _)| !o.allowed).map(|(p, o, _)| (p.name.clone(), o.reason.clone())).collect();
        let mode = Mode::of(results.iter().map(|(p, _, _)| p));
        let would_allow = all_failures.is_empty();
        let reason = if would_allow {
            Reason::Policies { subject: None, results: results.iter().map(|(p, o, _)| (p.name.clone(), o.reason.clone())).collect() }
        } else {
            Reason::Policies { subject: Some(subject(image, digest)), results: all_failures }
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
            // Bounded here already: the caller chose it, and it may be megabytes long.
            image: crate::bounded::field(&call.image).into_owned(),
            ..Default::default()
        };
        let reference = match Reference::parse(&call.image) {
            Ok(r) => r,
            Err(e) => {
                // The error names the reference itself; both shortened.
                let (image, e) = (crate::bounded::shorten(&call.image, 256), e.to_string());
                record.deny(&Reason::InvalidRequest(format!("invalid image reference {image:?}: {}", crate::bounded::shorten(&e, 512))));
                record.mode = Some(Mode::Enforce);
                return (PullVerdict::Refuse(record.reason.clone()), record);
            }
        };
        let policy = self.policy();
        let applicable = policy.applicable(&self.names(&reference), call.namespace.as_deref());
        record.policy = applicable.label();
        let policies = match applicable {
            Applicable::Exempt(name) => {
                record.allow(&Reason::Exempt(format!("exempt by exemption {name}")));
                return (PullVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Allow) => {
                record.allow(&Reason::UnmatchedAllowed("no policy matches; policy.unmatched is allow".into()));
                return (PullVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Deny) => {
                record.mode = Some(Mode::Enforce);
                record.deny(&Reason::Unmatched(format!(
                    "image {reference} matches no policy and policy.unmatched is deny: add a policy for it, or an exemption"
                )));
                return (PullVerdict::Refuse(record.reason.clone()), record);
            }
            Applicable::Policies(p) => p,
        };
        let enforce = Mode::of(&policies) == Mode::Enforce;
        record.mode = Some(if enforce { Mode::Enforce } else { Mode::Audit });
        let auth = call.auth.as_ref();
        let resolved = match self.checker.resolve(&reference, auth).await {
            Ok(r) => r,
            Err(e) => {
                record.deny(&Reason::unresolved(&reference, &e));
                let verdict = if enforce { PullVerdict::Refuse(record.reason.clone()) } else { PullVerdict::Forward };
                return (verdict, record);
            }
        };
        let results = self.check(&reference, &resolved, &policies, policy.generation, auth).await;
        let checked = self.combine(&call.image, &resolved.digest.to_string(), &results);
        record.digest = checked.digest.clone();
        if checked.would_allow {
            record.allow(&checked.reason);
        } else {
            record.deny(&checked.reason);
        }
        record.identity = checked.identity;
        record.source = checked.source;
        record.cached = checked.cached;
        if !checked.allowed {
            return (PullVerdict::Refuse(record.reason.clone()), record);
        }
        // What was verified is what containerd pulls: the platform manifest when that (or an
        // index covering it) verified; the index only when every policy verified the index.
        let pins: Vec<&Digest> = results.iter().filter(|(_, o, _)| o.allowed).filter_map(|(_, o, _)| o.pin.as_ref()).collect();
        let pin =
            pins.iter().find(|d| ***d != resolved.digest).or(pins.first()).map(|d| (*d).clone()).unwrap_or_else(|| resolved.digest.clone());
        let pinned = reference.with_digest(pin.clone());
        if pin != resolved.digest {
            self.remember_pick(&pinned, &resolved.digest);
        }
        let tag_as = match (reference.tag(), reference.digest()) {
            // containerd drops the tag of `name:tag@digest` too; nothing to add.
            (Some(tag), None) => Some(format!("{}:{tag}", reference.name())),
            _ => None,
        };
        (PullVerdict::Pin { reference: pinned.to_string(), tag_as }, record)
    }

    fn finish(&self, started: Instant, record: AuditRecord, refused: bool) {
        // Bounded before it is logged or written: its fields carry what the caller sent.
        let mut record = record.bound();
        record.time = now_rfc3339();
        record.latency_ms = (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        // `&str` values, not `%`: the human log format quotes and escapes them (`image="…"`),
        // so a newline in an image string cannot start a forged line.
        let r = &record;
        let (call, image, digest, policy) = (r.call.as_str(), r.image.as_str(), r.digest.as_str(), r.policy.as_str());
        let verdict = record.verdict(refused);
        if verdict == Verdict::AuditWouldDeny {
            tracing::warn!(call, image, digest, policy, reason = r.reason.as_str(), "audit mode: enforce would refuse this");
        } else if refused {
            tracing::warn!(call, image, digest, policy, reason = r.reason.as_str(), "refused");
        } else {
            tracing::info!(call, image, digest, policy, identity = r.identity.as_str(), cached = r.cached, "allowed");
        }
        if let Some(m) = &self.metrics {
            m.decision(&record, verdict);
        }
        self.audit(record.settled(verdict));
    }
}

impl Gate for Enforcer {
    fn pull<'a>(&'a self, call: &'a PullCall) -> BoxFuture<'a, PullVerdict> {
        Box::pin(async move {
            let started = Instant::now();
            let (verdict, record) = self.break_glass_pull(call, self.decide_pull(call).await);
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

#[cfg(test)]
mod tests;
