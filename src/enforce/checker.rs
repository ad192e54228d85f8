//! The real [`Checker`]: the registry mirror (`crate::registry`) for digests and signature
//! material, the verification engine (`crate::verify`) for the decision, and the installed trust
//! root (`crate::trust`) as the anchor.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::decision::Reason;
use super::gate::{Checker, Outcome, Resolved, TrustStatus};
use super::metrics::EnforceMetrics;
use crate::cri::api::AuthConfig;
use crate::cri::intercept::BoxFuture;
use crate::policy::{ImagePolicy, MultiArch};
use crate::registry::{self, Credentials, Discovery, Material, Reference, Registry, ResolvedImage, Secret};
use crate::trust::TrustHandle;
use crate::verify::image::{verify_image, ImageDecision, SignatureMaterial};
use crate::verify::legacy::LegacySignature;
use crate::verify::legacy_attestation::LegacyAttestation;
use crate::verify::trust::TrustMaterial;
use crate::verify::{Signer, VerifyError};

/// Checks images on the mirror against the installed trust root.
pub struct MirrorChecker {
    registry: Registry,
    trust: Arc<TrustHandle>,
    /// Mirror request and verification counters, when metrics are on.
    metrics: Option<Arc<EnforceMetrics>>,
}

impl MirrorChecker {
    pub fn new(registry: Registry, trust: Arc<TrustHandle>) -> MirrorChecker {
        MirrorChecker { registry, trust, metrics: None }
    }

    /// Records mirror requests and verifications in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<EnforceMetrics>) -> MirrorChecker {
        self.metrics = Some(metrics);
        self
    }

    fn note_mirror(&self, reference: &Reference, operation: &'static str, ok: bool, started: Instant) {
        if let Some(m) = &self.metrics {
            m.mirror_request(&self.registry.mirror_label(reference.registry()), operation, ok, started.elapsed());
        }
    }
}

/// kubelet's `AuthConfig` as registry credentials; `None` when kubelet sent nothing.
pub fn credentials(auth: Option<&AuthConfig>) -> Option<Credentials> {
    let a = auth?;
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let secret = |s: &str| (!s.is_empty()).then(|| Secret::new(s));
    let c = Credentials {
        username: some(&a.username),
        password: secret(&a.password),
        auth: secret(&a.auth),
        identity_token: secret(&a.identity_token),
        registry_token: secret(&a.registry_token),
        server_address: some(&a.server_address),
    };
    (!c.is_empty()).then_some(c)
}

/// The discovered candidates for one subject digest, in the verification engine's form. A
/// candidate that cannot even be read becomes a failed candidate later, not an error here.
fn candidates_for(materials: &[Material], subject: &registry::Digest) -> (Vec<SignatureMaterial>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for m in materials.iter().filter(|m| m.subject() == subject) {
        match m {
            Material::Bundle { json, source, .. } => {
                out.push(SignatureMaterial::Bundle { source: source.to_string(), json: json.to_vec() })
            }
            Material::LegacySignature { digest, payload, annotations, source, .. } => {
                match LegacySignature::from_layer(
                    crate::verify::legacy::SIMPLE_SIGNING_MEDIA_TYPE,
                    &digest.to_string(),
                    annotations,
                    payload.to_vec(),
                ) {
                    Ok(signature) => out.push(SignatureMaterial::Legacy { source: source.to_string(), signature }),
                    Err(e) => problems.push(format!("{source}: {e}")),
                }
            }
            // Rebuilt into the Sigstore bundle it amounts to and judged as any attestation.
            Material::LegacyAttestation { digest, envelope, annotations, source, .. } => {
                match LegacyAttestation::from_layer(
                    crate::verify::legacy_attestation::DSSE_ENVELOPE_MEDIA_TYPE,
                    &digest.to_string(),
                    annotations,
                    envelope.to_vec(),
                )
                .map_err(VerifyError::from)
                .and_then(|a| a.to_bundle_json())
                {
                    Ok(json) => out.push(SignatureMaterial::Bundle { source: source.to_string(), json }),
                    Err(e) => problems.push(format!("{source}: {e}")),
                }
            }
        }
    }
    (out, problems)
}

fn signer_label(s: &Signer) -> String {
    match s {
        Signer::Certificate(c) => c.subject.clone().unwrap_or_else(|| "certificate without SAN".into()),
        Signer::Key { fingerprint, .. } => format!("key {fingerprint}"),
    }
}

/// The kind of reason a decision the engine made is, read from its structure (the same
/// branches as [`ImageDecision::reason`] takes), with its line.
fn reason_of(decision: &ImageDecision, line: String) -> Reason {
    if decision.allowed {
        return Reason::Verified(line);
    }
    if decision.requirements.iter().any(|r| r.signed && !r.satisfied && r.reason.is_some()) {
        return Reason::Attestation(line);
    }
    if decision.candidates.is_empty() {
        return Reason::NoSignatures(line);
    }
    if decision.candidates.iter().any(|c| c.error_category == Some("trust-root")) {
        Reason::TrustRoot(line)
    } else if decision.candidates.iter().any(|c| c.verified.is_some()) {
        // The signature held; no authority's identity (or threshold) was met.
        Reason::Identity(line)
    } else {
        Reason::InvalidSignature(line)
    }
}

fn outcome_of(decision: &ImageDecision, problems: &[String]) -> Outcome {
    let mut identity = BTreeSet::new();
    let mut source = BTreeSet::new();
    for c in &decision.candidates {
        if let Some(v) = &c.verified {
            identity.insert(signer_label(&v.signer));
            if c.authorities.iter().any(|a| a.satisfied) {
                source.insert(c.source.clone());
            }
        }
    }
    let mut line = decision.reason();
    if !decision.allowed && !problems.is_empty() {
        line = format!("{line}; unreadable candidates: {}", problems.join("; "));
    }
    Outcome {
        allowed: decision.allowed,
        reason: reason_of(decision, line),
        identity: identity.into_iter().collect::<Vec<_>>().join(", "),
        source: source.into_iter().collect::<Vec<_>>().join(", "),
        // The earliest moment a satisfied `notOlderThan` condition turns false.
        fresh_until: decision.requirements.iter().filter(|r| r.satisfied).filter_map(|r| r.fresh_until).min(),
        ..Default::default()
    }
}

/// Verifies what discovery found for `image` against `policy`: the outcome, and the engine's
/// full decision for each subject digest tried (for `pullgate verify`'s report).
pub async fn decide(
    trust: Arc<TrustMaterial>,
    image: &ResolvedImage,
    discovery: &Discovery,
    policy: &ImagePolicy,
) -> (Outcome, Vec<ImageDecision>) {
    // Which digests a signature may be on (multi-arch: the index covers its manifests), and for
    // each, what containerd is then to pull and which image ID that admits.
    let subjects: Vec<(registry::Digest, registry::Digest, registry::Digest)> = match (&image.platform, &image.config) {
        (Some(p), _) => match policy.multi_arch {
            // The platform manifest is pinned either way: containerd never picks from the index.
            MultiArch::Either => {
                vec![(image.digest.clone(), p.digest.clone(), p.config.clone()), (p.digest.clone(), p.digest.clone(), p.config.clone())]
            }
            MultiArch::Platform => vec![(p.digest.clone(), p.digest.clone(), p.config.clone())],
            // The index is pinned; containerd picks the entry pullgate picked (same rules).
            MultiArch::Index => vec![(image.digest.clone(), image.digest.clone(), p.config.clone())],
        },
        (None, Some(config)) => vec![(image.digest.clone(), image.digest.clone(), config.clone())],
        (None, None) => {
            let why = if image.notes.is_empty() { "no manifest for this node's platform".to_string() } else { image.notes.join("; ") };
            return (deny(Reason::Uncheckable(format!("index {}: {why} (containerd would not pull it either)", image.digest))), Vec::new());
        }
    };
    let mut decisions = Vec::new();
    let mut last: Option<Outcome> = None;
    for (subject, pin, config) in &subjects {
        let (candidates, problems) = candidates_for(&discovery.materials, subject);
        let digest = subject.clone();
        // CPU-bound (signature checks): off the reactor threads.
        let identity = policy.identity.clone();
        let trust = trust.clone();
        let decision = match tokio::task::spawn_blocking(move || verify_image(&trust, &digest, &candidates, &identity)).await {
            Ok(d) => d,
            Err(e) => return (deny(Reason::Uncheckable(format!("verification task failed: {e}"))), decisions),
        };
        let mut outcome = outcome_of(&decision, &problems);
        decisions.push(decision);
        if outcome.allowed {
            outcome.pin = Some(pin.clone());
            outcome.configs = vec![config.clone()];
            if subject != pin {
                outcome.reason =
                    std::mem::take(&mut outcome.reason).noted(format!(" (on index {subject}; pinned to its entry for this node, {pin})"));
            }
            return (outcome, decisions);
        }
        last = Some(outcome);
    }
    let mut out = last.unwrap_or_else(|| deny(Reason::NoSignatures("no signatures found".into())));
    let errors = discovery.errors();
    if !errors.is_empty() {
        // The kind stays that of the engine's decision; the line says what discovery missed.
        out.reason = std::mem::take(&mut out.reason).noted(format!("; discovery errors: {}", errors.join("; ")));
    }
    (out, decisions)
}

fn deny(reason: Reason) -> Outcome {
    Outcome { allowed: false, reason, ..Default::default() }
}

impl Checker for MirrorChecker {
    fn resolve<'a>(&'a self, reference: &'a Reference, auth: Option<&'a AuthConfig>) -> BoxFuture<'a, Result<Resolved, registry::Error>> {
        Box::pin(async move {
            if let Some(digest) = reference.digest() {
                // Nothing to ask the mirror (so no mirror request to count): the digest is the
                // reference's own. The host configuration is still read, so that a broken
                // `hosts.toml` refuses as it does for a tag, cached decision or not.
                self.registry.endpoints(reference.registry())?;
                return Ok(Resolved { digest: digest.clone(), platform_digest: None, image: None, manifest: None });
            }
            let creds = credentials(auth);
            let started = Instant::now();
            // One `GET` of the tag: decisions are cached by digest, so on a hit only the digest is
            // used; on a miss `verify` starts from the manifest's bytes (checked against the
            // digest) instead of fetching them again, a round trip less on a cold decision.
            let resolution = self.registry.resolve_tag(reference, creds.as_ref()).await;
            self.note_mirror(reference, "resolve", resolution.is_ok(), started);
            let resolution = resolution?;
            Ok(Resolved { digest: resolution.digest, platform_digest: None, image: None, manifest: resolution.manifest })
        })
    }

    fn verify<'a>(
        &'a self,
        reference: &'a Reference,
        resolved: &'a Resolved,
        policy: &'a ImagePolicy,
        auth: Option<&'a AuthConfig>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let (trust, _) = match self.trust.material() {
                Ok(m) => m,
                Err(e) => return deny(Reason::trust_root(&e)),
            };
            let creds = credentials(auth);
            let started = Instant::now();
            let attestations = policy.identity.has_attestations();
            let found = match &resolved.image {
                Some(i) => self.registry.discover_with(i, creds.as_ref(), attestations).await.map(|d| (i.clone(), d)),
                None => {
                    // The manifest by digest (checked against it) and discovery, overlapped.
                    let by_digest = reference.with_digest(resolved.digest.clone());
                    let noted = |ok| self.note_mirror(reference, "resolve", ok, started);
                    let known = resolved.manifest.as_ref();
                    match self.registry.resolve_and_discover_with(&by_digest, creds.as_ref(), attestations, known, noted).await {
                        Ok((i, d)) => Ok((Arc::new(i), d)),
                        Err(e) => return deny(Reason::unfetched(&resolved.digest, &e)),
                    }
                }
            };
            let failed_steps = found.as_ref().map(|(_, d)| !d.errors().is_empty()).unwrap_or(true);
            self.note_mirror(reference, "discover", !failed_steps, started);
            let (image, discovery) = match found {
                Ok(found) => found,
                Err(e) => return deny(Reason::undiscovered(&e)),
            };
            let started = Instant::now();
            let outcome = decide(trust, &image, &discovery, policy).await.0;
            if let Some(m) = &self.metrics {
                m.verification(outcome.allowed, started.elapsed());
            }
            outcome
        })
    }

    fn trust(&self) -> TrustStatus {
        match self.trust.material() {
            Ok((_, generation)) => TrustStatus { generation, unusable: None },
            Err(e) => TrustStatus { generation: self.trust.generation(), unusable: Some(e) },
        }
    }
}
