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

    /// The CreateContainer decision for `call`, neither logged, audited nor counted (for
    /// `pullgate doctor`, which asks about every image on the node).
    pub async fn dry_run_create(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        self.decide_create(call).await
    }

    /// The name the pod asked for (`user_specified_image`, else the container config's image
    /// when that is a name), when it really is one of the image's names in containerd; `None`
    /// when that is not known (an image ID, a short ID, an older kubelet).
    fn asked_name(&self, call: &CreateCall, tags: &[Reference], digests: &[Reference]) -> Option<Reference> {
        let spelled = call.user_specified.as_deref().filter(|s| !s.is_empty()).unwrap_or(&call.image);
        let asked = Reference::parse(spelled).ok()?;
        let same = |r: &Reference| {
            self.aliases.same_repository(r, &asked)
                && match asked.digest() {
                    Some(d) => r.digest() == Some(d),
                    None => r.digest().is_none() && r.tag() == asked.tag(),
                }
        };
        tags.iter().chain(digests).any(same).then_some(asked)
    }

    /// The per-image decision at CreateContainer (and for any other call that puts an image
    /// present in containerd into a container): `call.status` is containerd's record of the
    /// image, `call.user_specified`/`call.image` the name it was asked by.
    ///
    /// - An exemption applies only when the name the pod asked for is exempt (when that name is
    ///   not known: only when every name of the image is exempt).
    /// - Otherwise the policies of that name (unknown: of every name of the image) apply, and
    ///   the image is allowed only when one of its registry digests in that repository verifies
    ///   under all of them **and** the image ID is the config of the manifest that verified: a
    ///   passing digest never admits an image ID that is not what it runs.
    async fn decide_create(&self, call: &CreateCall) -> (CreateVerdict, AuditRecord) {
        let mut record = AuditRecord {
            node: self.node.clone(),
            call: "CreateContainer".into(),
            namespace: call.namespace.clone().unwrap_or_default(),
            pod: call.pod.clone(),
            image: call.user_specified.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| call.image.clone()),
            ..Default::default()
        };
        let Some(image) = &call.status else {
            // containerd refuses a container of an image it does not have.
            record.allow(&Reason::ImageAbsent("image not present in containerd; containerd will refuse the container".into()));
            return (CreateVerdict::Forward, record);
        };
        let refuse = |mut record: AuditRecord, reason: Reason| {
            record.mode = Some(Mode::Enforce);
            record.deny(&reason);
            (CreateVerdict::Refuse(record.reason.clone()), record)
        };
        let policy = self.policy();
        let ns = call.namespace.as_deref();
        let tags: Vec<Reference> =
            image.repo_tags.iter().filter_map(|t| Reference::parse(t).ok()).filter(|r| r.digest().is_none()).collect();
        let digests: Vec<Reference> =
            image.repo_digests.iter().filter_map(|d| Reference::parse(d).ok()).filter(|r| r.digest().is_some()).collect();
        let id = match Digest::parse(&image.id) {
            Ok(d) => d,
            Err(e) => {
                return refuse(
                    record,
                    Reason::Uncheckable(format!("containerd reports image ID {:?} for {}: not a digest ({e})", image.id, call.image)),
                )
            }
        };
        let asked = self.asked_name(call, &tags, &digests);
        let scope: Vec<&Reference> = match &asked {
            Some(r) => vec![r],
            None => tags.iter().chain(digests.iter()).collect(),
        };
        // Exemptions: by the asked name only; unknown name: every name must be exempt.
        let exempt: Vec<Option<String>> = scope.iter().map(|r| policy.exemption(&self.names(r))).collect();
        if !exempt.is_empty() && exempt.iter().all(Option::is_some) {
            let name = exempt.into_iter().flatten().next().unwrap_or_default();
            record.policy = format!("exempt:{name}");
            record.allow(&Reason::Exempt(match &asked {
                Some(r) => format!("{r}: exempt by exemption {name}"),
                None => format!("every name of image {} is exempt (exemption {name})", image.id),
            }));
            return (CreateVerdict::Forward, record);
        }
        // The registry digests to verify: those in the asked repository (unknown: all).
        let candidates: Vec<&Reference> =
            digests.iter().filter(|d| asked.as_ref().is_none_or(|a| self.aliases.same_repository(a, d))).collect();
        let mut names: Vec<String> =
            scope.iter().flat_map(|r| self.names(r)).chain(candidates.iter().flat_map(|r| self.names(r))).collect();
        names.sort();
        names.dedup();
        let applicable = policy.applicable_policies(&names, ns);
        record.policy = applicable.label();
        let policies = match applicable {
            Applicable::Policies(p) => p,
            Applicable::Exempt(_) | Applicable::Unmatched(Unmatched::Allow) => {
                record.allow(&Reason::UnmatchedAllowed("no policy matches; policy.unmatched is allow".into()));
                return (CreateVerdict::Forward, record);
            }
            Applicable::Unmatched(Unmatched::Deny) => {
                let shown = asked
                    .as_ref()
                    .map(|r| r.to_string())
                    .or(image.repo_tags.first().or(image.repo_digests.first()).cloned())
                    .unwrap_or_else(|| image.id.clone());
                return refuse(
                    record,
                    Reason::Unmatched(format!("image {shown} ({}) matches no policy and policy.unmatched is deny", image.id)),
                );
            }
        };
        if candidates.is_empty() {
            let reason = Reason::NoRegistryDigest(match &asked {
                Some(a) if !digests.is_empty() => format!("image {} has no registry digest in repository {}, the name the pod asked for, so its signature cannot be checked", image.id, self.aliases.name(a)),
                _ => format!("image {} has no registry digest (imported or built on the node, not pulled from a registry), so its signature cannot be checked", image.id),
            });
            return refuse(record, reason);
        }
        let mut failures = Vec::new();
        let mut audit_only = true;
        for reference in candidates {
            let Some(digest) = reference.digest().cloned() else { continue };
            // What a refusal names: the reference the pod used; unknown (an image ID), the
            // image's tag in this repository, else the repository.
            let shown = match &asked {
                Some(_) => record.image.clone(),
                None => {
                    tags.iter().find(|t| self.aliases.same_repository(t, reference)).map_or_else(|| reference.name(), |t| t.to_string())
                }
            };
            // The digest itself; then the signed index it was pinned from, if known; then what
            // the image's tags in this repository point to on the mirror now.
            let mut tried: Vec<Digest> = Vec::new();
            let mut queue: Vec<Digest> = vec![digest.clone()];
            queue.extend(self.picked_from(reference));
            let mut tags_resolved = false;
            while let Some(subject) = queue.first().cloned() {
                queue.remove(0);
                if tried.contains(&subject) {
                    continue;
                }
                tried.push(subject.clone());
                let subject_ref = reference.with_digest(subject.clone());
                let resolved = Resolved { digest: subject.clone(), platform_digest: None, image: None };
                let mut results = self.check(&subject_ref, &resolved, &policies, policy.generation, None).await;
                for (_, outcome, _) in results.iter_mut() {
                    if !outcome.allowed {
                        continue;
                    }
                    // The verified manifest must be what the image is: the digest itself, or the
                    // entry pinned from the index, and its config must be this image ID.
                    let runs = outcome.pin.as_ref().is_some_and(|p| *p == digest || *p == subject);
                    if !runs || !outcome.configs.contains(&id) {
                        let mut o = (**outcome).clone();
                        o.allowed = false;
                        o.reason = Reason::ImageMismatch(format!(
                            "{subject_ref} verified, but image {id} is not what it runs (verified manifest {}, config {})",
                            o.pin.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                            o.configs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                        ));
                        *outcome = Arc::new(o);
                    }
                }
                let checked = self.combine(&shown, &subject.to_string(), &results);
                record.digest = checked.digest.clone();
                record.policy = checked.policy.clone();
                record.mode = Some(checked.mode);
                record.identity = checked.identity.clone();
                record.source = checked.source.clone();
                record.cached = checked.cached;
                if checked.would_allow {
                    record.allow(&checked.reason);
                    return (CreateVerdict::Forward, record);
                }
                if !checked.allowed {
                    audit_only = false;
                }
                failures.push(checked.reason);
                if queue.is_empty() && !tags_resolved {
                    tags_resolved = true;
                    for tag in tags.iter().filter(|t| self.aliases.same_repository(t, reference)) {
                        if let Ok(r) = self.checker.resolve(tag, None).await {
                            queue.push(r.digest);
                        }
                    }
                }
            }
        }
        record.deny(&Reason::Several(failures));
        if audit_only {
            (CreateVerdict::Forward, record)
        } else {
            record.mode = Some(Mode::Enforce);
            (CreateVerdict::Refuse(record.reason.clone()), record)
        }
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
mod tests {
    //! The enforcer's rules with a fake [`Checker`] (no registry, no signatures: each digest's
    //! verification outcome is given).
    use super::*;
    use crate::cri::api;
    use crate::enforce::audit::AuditConfig;
    use crate::policy::PolicyConfig;
    use std::collections::BTreeMap;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Ie0Fvwx1B3bMWPAMjMt5LIpn/pd\nG3EeWqgqk4XyV3U/cQGJwdZdWSmV0Nf1E0hu8fVUnM6u8oqvXs5yBn0CUQ==\n-----END PUBLIC KEY-----\n";
    const REG: &str = "127.0.0.1:5000";

    fn d(n: u8) -> Digest {
        Digest::sha256(&[n])
    }

    #[derive(Default)]
    struct Fake {
        /// digest -> outcome of verifying it.
        outcomes: HashMap<String, Outcome>,
        /// tag reference -> digest on the mirror.
        tags: HashMap<String, Digest>,
        /// Repositories the mirror does not have: every verification there fails.
        missing: Vec<String>,
        /// A password the mirror refuses.
        wrong_password: Option<String>,
        /// Verifications asked for (cache misses).
        verified: std::sync::atomic::AtomicUsize,
        /// The trust root's generation, and why it is unusable (if it is).
        trust_generation: std::sync::atomic::AtomicU64,
        trust_unusable: Mutex<Option<TrustUnavailable>>,
    }

    /// What the mirror says of a tag it does not have.
    pub(super) fn not_found(reference: &Reference) -> RegistryError {
        crate::registry::ResolveError::NotFound { reference: reference.to_string(), endpoints: "the fake mirror".into() }.into()
    }

    impl Checker for Fake {
        fn resolve<'a>(&'a self, reference: &'a Reference, _: Option<&'a AuthConfig>) -> BoxFuture<'a, Result<Resolved, RegistryError>> {
            Box::pin(async move {
                let digest = match reference.digest() {
                    Some(d) => d.clone(),
                    None => self.tags.get(&reference.to_string()).cloned().ok_or_else(|| not_found(reference))?,
                };
                Ok(Resolved { digest, platform_digest: None, image: None })
            })
        }
        fn verify<'a>(
            &'a self,
            reference: &'a Reference,
            resolved: &'a Resolved,
            _: &'a ImagePolicy,
            auth: Option<&'a AuthConfig>,
        ) -> BoxFuture<'a, Outcome> {
            self.verified.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                let deny = |reason: &str| Outcome { allowed: false, reason: Reason::Mirror(reason.into()), ..Default::default() };
                if self.missing.iter().any(|m| m == reference.repository()) {
                    return deny("cannot fetch: not found");
                }
                if auth.is_some_and(|a| Some(&a.password) == self.wrong_password.as_ref()) {
                    return deny("cannot fetch: unauthorized");
                }
                self.outcomes.get(&resolved.digest.to_string()).cloned().unwrap_or(Outcome {
                    allowed: false,
                    reason: Reason::NoSignatures("no signatures found".into()),
                    ..Default::default()
                })
            })
        }
        fn trust(&self) -> TrustStatus {
            TrustStatus {
                generation: self.trust_generation.load(std::sync::atomic::Ordering::Relaxed),
                unusable: self.trust_unusable.lock().unwrap().clone(),
            }
        }
    }

    fn signed(pin: Digest, config: Digest) -> Outcome {
        Outcome { allowed: true, reason: Reason::Verified("verified".into()), pin: Some(pin), configs: vec![config], ..Default::default() }
    }

    fn enforcer(fake: Fake, unmatched: &str, multi_arch: &str) -> Enforcer {
        enforcer_in(Arc::new(fake), unmatched, multi_arch, "enforce")
    }

    fn policy_set(unmatched: &str, multi_arch: &str, mode: &str, generation: u64) -> PolicySet {
        let yaml = format!(
            "unmatched: {unmatched}\nexemptions:\n  - name: sandbox\n    images: [\"{REG}/pause:*\"]\npolicies:\n  - name: demo\n    images: [\"{REG}/demo/**\"]\n    mode: {mode}\n    multi_arch: {multi_arch}\n    authorities:\n      - name: k\n        key:\n          data: \"{}\"\n",
            KEY.replace('\n', "\\n")
        );
        let cfg: PolicyConfig = serde_saphyr::from_str(&yaml).unwrap();
        cfg.compile(generation).unwrap()
    }

    fn enforcer_in(fake: Arc<Fake>, unmatched: &str, multi_arch: &str, mode: &str) -> Enforcer {
        let aliases = Aliases::new(&BTreeMap::from([(REG.to_string(), vec!["localhost:5000".to_string()])])).unwrap();
        Enforcer::new(
            policy_set(unmatched, multi_arch, mode, 1),
            &CacheConfig::default(),
            fake,
            AuditLog::new(&AuditConfig::Off).unwrap(),
            "node".into(),
        )
        .with_aliases(aliases)
    }

    fn pull(image: &str) -> PullCall {
        PullCall { image: image.into(), ..Default::default() }
    }

    fn create(image: &str, user_specified: Option<&str>, id: &Digest, tags: &[&str], digests: &[String]) -> CreateCall {
        CreateCall {
            image: image.into(),
            user_specified: user_specified.map(str::to_string),
            status: Some(api::Image {
                id: id.to_string(),
                repo_tags: tags.iter().map(|s| s.to_string()).collect(),
                repo_digests: digests.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refused(v: &CreateVerdict) -> bool {
        matches!(v, CreateVerdict::Refuse(_))
    }

    #[tokio::test]
    async fn pulls_are_pinned_to_the_verified_platform_manifest() {
        // Index I, signed; pullgate's pick for this node is P (config C).
        let (i, p, c) = (d(1), d(2), d(3));
        let mut fake = Fake::default();
        fake.tags.insert(format!("{REG}/demo/app:1"), i.clone());
        fake.outcomes.insert(i.to_string(), signed(p.clone(), c.clone()));
        let e = enforcer(fake, "deny", "either");
        let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app:1"))).await;
        assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{p}"), tag_as: Some(format!("{REG}/demo/app:1")) });
        // CreateContainer of what containerd then holds: P's record, picked from the signed index.
        let call = create(
            &c.to_string(),
            Some(&format!("{REG}/demo/app:1")),
            &c,
            &[&format!("{REG}/demo/app:1")],
            &[format!("{REG}/demo/app@{p}")],
        );
        let (v, r) = e.decide_create(&call).await;
        assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
    }

    #[tokio::test]
    async fn multi_arch_index_pins_the_index() {
        let (i, c) = (d(1), d(3));
        let mut fake = Fake::default();
        fake.tags.insert(format!("{REG}/demo/app:1"), i.clone());
        fake.outcomes.insert(i.to_string(), signed(i.clone(), c.clone()));
        let e = enforcer(fake, "deny", "index");
        let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app:1"))).await;
        assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{i}"), tag_as: Some(format!("{REG}/demo/app:1")) });
    }

    #[tokio::test]
    async fn a_passing_digest_does_not_admit_another_image_id() {
        // The signed index I admits config C only; containerd holds unsigned config U under it.
        let (i, c, u) = (d(1), d(3), d(4));
        let mut fake = Fake::default();
        fake.outcomes.insert(i.to_string(), signed(i.clone(), c.clone()));
        let e = enforcer(fake, "deny", "index");
        let names = [format!("{REG}/demo/app@{i}"), format!("{REG}/demo/unsigned@{}", d(9))];
        for asked in [None, Some(format!("{REG}/demo/app@{i}")), Some(format!("{REG}/demo/unsigned@{}", d(9)))] {
            let (v, r) = e.decide_create(&create(&u.to_string(), asked.as_deref(), &u, &[], &names)).await;
            assert!(refused(&v), "asked {asked:?}: {}", r.reason);
            assert_eq!(r.decision, "deny");
        }
        let (v, r) = e.decide_create(&create(&c.to_string(), None, &c, &[], &names[..1])).await;
        assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
    }

    #[tokio::test]
    async fn after_a_restart_the_tag_finds_the_signed_index() {
        let (i, p, c) = (d(1), d(2), d(3));
        let mut fake = Fake::default();
        fake.tags.insert(format!("{REG}/demo/app:1"), i.clone());
        fake.outcomes.insert(i.to_string(), signed(p.clone(), c.clone()));
        let e = enforcer(fake, "deny", "either");
        let call = create(&c.to_string(), None, &c, &[&format!("{REG}/demo/app:1")], &[format!("{REG}/demo/app@{p}")]);
        let (v, r) = e.decide_create(&call).await;
        assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
        // A platform manifest the index does not pin is not admitted by the index's signature.
        let other = d(5);
        let call = create(&c.to_string(), None, &c, &[&format!("{REG}/demo/app:1")], &[format!("{REG}/demo/app@{other}")]);
        assert!(refused(&e.decide_create(&call).await.0));
    }

    #[tokio::test]
    async fn exemptions_apply_to_the_name_the_pod_used() {
        let u = d(4);
        let e = enforcer(Fake::default(), "deny", "either");
        let tags = [format!("{REG}/pause:forged"), format!("{REG}/demo/unsigned:1")];
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let digests = [format!("{REG}/demo/unsigned@{}", d(9))];
        let by = |asked: Option<String>| create(&u.to_string(), asked.as_deref(), &u, &tags, &digests);
        let (v, r) = e.decide_create(&by(Some(format!("{REG}/demo/unsigned:1")))).await;
        assert!(refused(&v), "{}", r.reason);
        let (v, r) = e.decide_create(&by(None)).await;
        assert!(refused(&v), "by image ID, not every name exempt: {}", r.reason);
        let (v, r) = e.decide_create(&by(Some(format!("{REG}/pause:forged")))).await;
        assert_eq!(v, CreateVerdict::Forward, "{}", r.reason);
        // A name the image does not have counts as unknown.
        let (v, _) = e.decide_create(&by(Some(format!("{REG}/pause:other")))).await;
        assert!(refused(&v));
        // Only exempt names: exempt by image ID too.
        let call = create(&u.to_string(), None, &u, &[&format!("{REG}/pause:3.9")], &[]);
        assert_eq!(e.decide_create(&call).await.0, CreateVerdict::Forward);
    }

    #[tokio::test]
    async fn refusals_are_not_shared_across_repositories_or_credentials() {
        let (p, c) = (d(2), d(3));
        let mut fake = Fake::default();
        fake.outcomes.insert(p.to_string(), signed(p.clone(), c.clone()));
        fake.missing.push("demo/does-not-exist".into());
        fake.wrong_password = Some("wrong".into());
        let e = enforcer(fake, "deny", "either");
        let pinned = |v: &PullVerdict| matches!(v, PullVerdict::Pin { .. });
        // The refusal of a name that does not exist, for the digest of a signed image...
        let (v, r) = e.decide_pull(&pull(&format!("{REG}/demo/does-not-exist@{p}"))).await;
        assert!(matches!(v, PullVerdict::Refuse(_)), "{}", r.reason);
        // ...says nothing of the signed image, under its own name.
        let (v, r) = e.decide_pull(&pull(&format!("{REG}/demo/app@{p}"))).await;
        assert!(pinned(&v) && !r.cached, "{v:?} {}", r.reason);
        // A refusal made with a wrong pull secret says nothing of other credentials.
        let with = |password: &str| PullCall {
            image: format!("{REG}/demo/other@{p}"),
            auth: Some(AuthConfig { username: "u".into(), password: password.into(), ..Default::default() }),
            ..Default::default()
        };
        let (v, r) = e.decide_pull(&with("wrong")).await;
        assert!(matches!(v, PullVerdict::Refuse(_)), "{}", r.reason);
        let (v, r) = e.decide_pull(&with("wrong")).await;
        assert!(matches!(v, PullVerdict::Refuse(_)) && r.cached, "{}", r.reason);
        let (v, r) = e.decide_pull(&with("right")).await;
        assert!(pinned(&v) && !r.cached, "{}", r.reason);
        // An approval holds for any caller: CreateContainer (no credentials) finds it.
        let call = create(&c.to_string(), Some(&format!("{REG}/demo/other@{p}")), &c, &[], &[format!("{REG}/demo/other@{p}")]);
        let (v, r) = e.decide_create(&call).await;
        assert!(v == CreateVerdict::Forward && r.cached, "{}", r.reason);
        let (v, r) = e.decide_pull(&with("wrong")).await;
        assert!(pinned(&v) && r.cached, "an approval is not hidden by another caller's refusal: {}", r.reason);
    }

    #[tokio::test]
    async fn names_are_canonical() {
        let e = enforcer(Fake::default(), "allow", "either");
        // Another spelling of the registry is the same image to policy (unmatched: allow).
        for image in ["localhost:5000/demo/unsigned:1", "LOCALHOST:5000/demo/unsigned:1", "127.0.0.1:5000/demo/unsigned:1"] {
            let (v, r) = e.decide_pull(&pull(image)).await;
            assert!(matches!(v, PullVerdict::Refuse(_)), "{image}: {}", r.reason);
            assert_eq!(r.policy, "demo");
        }
        assert!(matches!(e.decide_pull(&pull("other.example/x:1")).await.0, PullVerdict::Forward));
        // A tag exemption does not admit a digest; `pause:*` admits a tag.
        let e = enforcer(Fake::default(), "deny", "either");
        let (v, r) = e.decide_pull(&pull(&format!("{REG}/pause:1@{}", d(7)))).await;
        assert!(matches!(v, PullVerdict::Refuse(_)), "{}", r.reason);
        assert!(matches!(e.decide_pull(&pull("localhost:5000/pause:3.9")).await.0, PullVerdict::Forward));
    }

    #[tokio::test]
    async fn refusals_name_what_the_call_asked_for_then_the_digest_once() {
        let (id, registry_digest) = (d(4), d(9));
        let e = enforcer(Fake::default(), "deny", "either");
        let tags = [format!("{REG}/demo/unsigned:1")];
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let digests = [format!("{REG}/demo/unsigned@{registry_digest}")];
        let no_sigs = format!("({registry_digest}) denied by policy demo: no signatures found");
        // The pod's own spelling (another spelling of the registry), then the digest, once.
        let call = create(&id.to_string(), Some("localhost:5000/demo/unsigned:1"), &id, &tags, &digests);
        let CreateVerdict::Refuse(reason) = e.decide_create(&call).await.0 else { panic!("allowed") };
        assert_eq!(reason, format!("image localhost:5000/demo/unsigned:1 {no_sigs}"));
        assert_eq!(reason.matches(&registry_digest.to_string()).count(), 1, "{reason}");
        // Asked by image ID (an older kubelet): the image's tag in that repository.
        let call = create(&id.to_string(), None, &id, &tags, &digests);
        let CreateVerdict::Refuse(reason) = e.decide_create(&call).await.0 else { panic!("allowed") };
        assert_eq!(reason, format!("image {REG}/demo/unsigned:1 {no_sigs}"));
        // No tag: the repository.
        let call = create(&id.to_string(), None, &id, &[], &digests);
        let CreateVerdict::Refuse(reason) = e.decide_create(&call).await.0 else { panic!("allowed") };
        assert_eq!(reason, format!("image {REG}/demo/unsigned {no_sigs}"));
        // A pull names the reference as asked; a digest reference carries its digest already.
        let (_, r) = e.decide_pull(&pull(&format!("localhost:5000/demo/x@{registry_digest}"))).await;
        assert_eq!(r.reason, format!("image localhost:5000/demo/x@{registry_digest} denied by policy demo: no signatures found"));
    }

    fn verifications(fake: &Fake) -> usize {
        fake.verified.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test]
    async fn exempt_and_unmatched_are_decided_by_configuration_alone() {
        let fake = Arc::new(Fake::default());
        let e = enforcer_in(fake.clone(), "deny", "either", "enforce");
        let (v, r) = e.decide_pull(&pull(&format!("{REG}/pause:3.9"))).await;
        assert_eq!(v, PullVerdict::Forward);
        assert_eq!(
            (r.decision.as_str(), r.category.as_str(), r.policy.as_str(), r.reason.as_str()),
            ("allow", "exempt", "exempt:sandbox", "exempt by exemption sandbox")
        );
        let (v, r) = e.decide_pull(&pull("other.example/x:1")).await;
        assert_eq!(
            v,
            PullVerdict::Refuse(
                "image other.example/x:1 matches no policy and policy.unmatched is deny: add a policy for it, or an exemption".into()
            )
        );
        assert_eq!((r.decision.as_str(), r.mode.map_or("", Mode::as_str), r.category.as_str()), ("deny", "enforce", "unmatched"));
        let e = enforcer_in(fake.clone(), "allow", "either", "enforce");
        let (v, r) = e.decide_pull(&pull("other.example/x:1")).await;
        assert_eq!((v, r.category.as_str()), (PullVerdict::Forward, "unmatched_allowed"));
        // Neither asked the mirror anything.
        assert_eq!(verifications(&fake), 0);
        // An unreadable reference is refused as an invalid request.
        let (v, r) = e.decide_pull(&pull("UPPER/Case:%%")).await;
        assert!(matches!(v, PullVerdict::Refuse(_)) && r.category == "invalid_request", "{v:?} {r:?}");
    }

    #[tokio::test]
    async fn audit_mode_lets_through_what_enforce_refuses_and_says_so() {
        let image = format!("{REG}/demo/unsigned@{}", d(9));
        for (mode, refused) in [("enforce", true), ("audit", false)] {
            let e = enforcer_in(Arc::new(Fake::default()), "deny", "either", mode);
            let (v, r) = e.decide_pull(&pull(&image)).await;
            assert_eq!(matches!(v, PullVerdict::Refuse(_)), refused, "{mode}");
            assert_eq!((r.mode.map_or("", Mode::as_str), r.category.as_str()), (mode, "no_signatures"));
            assert_eq!(r.reason, format!("image {image} denied by policy demo: no signatures found"));
            let verdict = r.verdict(refused);
            let written = r.settled(verdict);
            let want = if refused { ("deny", false, Verdict::Deny) } else { ("allow", true, Verdict::AuditWouldDeny) };
            assert_eq!((written.decision.as_str(), written.would_deny, verdict), want, "{mode}");
            assert_eq!(written.category, "no_signatures", "the refusal's kind, also when let through");
        }
    }

    #[tokio::test]
    async fn an_unusable_trust_root_refuses_without_asking_the_mirror() {
        let mut fake = Fake::default();
        fake.outcomes.insert(d(2).to_string(), signed(d(2), d(3)));
        let fake = Arc::new(fake);
        *fake.trust_unusable.lock().unwrap() = Some(TrustUnavailable::NotInstalled);
        let e = enforcer_in(fake.clone(), "deny", "either", "enforce");
        let image = format!("{REG}/demo/app@{}", d(2));
        let (v, r) = e.decide_pull(&pull(&image)).await;
        assert_eq!(
            v,
            PullVerdict::Refuse(format!("image {image} denied by policy demo: no trust root installed: run `pullgate trust-root import`"))
        );
        assert_eq!(r.category, "trust_root");
        assert_eq!(verifications(&fake), 0);
        // Usable again (a new generation): verified, nothing stale reused.
        *fake.trust_unusable.lock().unwrap() = None;
        fake.trust_generation.store(2, std::sync::atomic::Ordering::Relaxed);
        let (v, r) = e.decide_pull(&pull(&image)).await;
        assert!(matches!(v, PullVerdict::Pin { .. }) && r.category == "verified", "{v:?} {}", r.reason);
    }

    #[tokio::test]
    async fn tags_and_digests_pin_to_the_verified_digest() {
        let (p, c) = (d(2), d(3));
        let mut fake = Fake::default();
        fake.tags.insert(format!("{REG}/demo/app:1"), p.clone());
        fake.outcomes.insert(p.to_string(), signed(p.clone(), c));
        let e = enforcer(fake, "deny", "either");
        let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app:1"))).await;
        assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{p}"), tag_as: Some(format!("{REG}/demo/app:1")) });
        let (v, _) = e.decide_pull(&pull(&format!("{REG}/demo/app@{p}"))).await;
        assert_eq!(v, PullVerdict::Pin { reference: format!("{REG}/demo/app@{p}"), tag_as: None });
        // A tag the mirror does not know: refused as a mirror failure.
        let (v, r) = e.decide_pull(&pull(&format!("{REG}/demo/app:2"))).await;
        assert!(matches!(v, PullVerdict::Refuse(_)) && r.category == "mirror", "{v:?} {}", r.reason);
    }

    #[tokio::test]
    async fn cached_decisions_last_only_for_their_generations() {
        let (p, c) = (d(2), d(3));
        let mut fake = Fake::default();
        fake.outcomes.insert(p.to_string(), signed(p.clone(), c));
        let fake = Arc::new(fake);
        let e = enforcer_in(fake.clone(), "deny", "either", "enforce");
        let call = pull(&format!("{REG}/demo/app@{p}"));
        let (_, r) = e.decide_pull(&call).await;
        assert!(!r.cached);
        let (_, r) = e.decide_pull(&call).await;
        assert!(r.cached);
        assert_eq!(verifications(&fake), 1);
        // A new policy: verified again.
        e.replace_policy(policy_set("deny", "either", "enforce", 2));
        let (_, r) = e.decide_pull(&call).await;
        assert!(!r.cached);
        assert_eq!(verifications(&fake), 2);
        // A new trust root: verified again.
        fake.trust_generation.store(7, std::sync::atomic::Ordering::Relaxed);
        let (_, r) = e.decide_pull(&call).await;
        assert!(!r.cached);
        assert_eq!(verifications(&fake), 3);
        let (_, r) = e.decide_pull(&call).await;
        assert!(r.cached);
    }

    #[tokio::test]
    async fn image_volumes_are_decided_one_by_one() {
        let (p, c) = (d(2), d(3));
        let mut fake = Fake::default();
        fake.outcomes.insert(p.to_string(), signed(p.clone(), c.clone()));
        let e = enforcer(fake, "deny", "either");
        let container = create(&c.to_string(), None, &c, &[], &[format!("{REG}/demo/app@{p}")]);
        let signed_volume =
            MountImage { container_path: "/models".into(), image: format!("{REG}/demo/app@{p}"), status: container.status.clone() };
        let u = d(4);
        let unsigned = api::Image { id: u.to_string(), repo_digests: vec![format!("{REG}/demo/unsigned@{}", d(9))], ..Default::default() };
        let unsigned_volume =
            MountImage { container_path: "/data".into(), image: format!("{REG}/demo/unsigned@{}", d(9)), status: Some(unsigned) };
        assert_eq!(e.gate_mounts(&container, std::slice::from_ref(&signed_volume)).await, CreateVerdict::Forward);
        let v = e.gate_mounts(&container, &[signed_volume, unsigned_volume]).await;
        let CreateVerdict::Refuse(reason) = v else { panic!("an unsigned volume went through") };
        assert!(reason.starts_with("image volume /data: "), "{reason}");
    }
}
