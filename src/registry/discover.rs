//! Finding the signature material of an image digest on the mirror and on the node.
//!
//! For each subject digest (a single-platform manifest; or an index and then its platform
//! manifest), in this order, all candidates collected:
//! 1. the OCI 1.1 referrers API, `GET <path>/<repo>/referrers/<digest>` (a 404, another error
//!    status or an answer that is not an OCI index means "unsupported", not "no signatures");
//!    no `artifactType` filter is sent: signatures come in several artifact types (Sigstore
//!    bundles of several versions, cosign's OCI 1.1 simple-signing artifacts) and attestations are
//!    kept too, while the filter takes one value, so one unfiltered listing (paged, bounded) is
//!    filtered here;
//! 2. the referrers tag schema: an OCI index at tag `sha256-<hex>`;
//! 3. cosign's legacy signature tag `sha256-<hex>.sig`: its simple-signing layers (and, when a
//!    policy requires attestations, the legacy attestation tag `sha256-<hex>.att`: its DSSE
//!    envelope layers);
//! 4. the local bundle directory: `<dir>/sha256-<hex>.json` and `<dir>/sha256-<hex>.sigstore.json`.
//!
//! Listings come from the endpoints with the `pull` capability, in containerd's order (a 404 or
//! an unreachable endpoint moves on to the next); what a listing points to is fetched from the
//! endpoint that listed it first, then the others, and checked against its digest and size
//! (content is addressed by digest, so where it comes from does not matter for trust). A
//! signature tag or referrer found on a pull-only mirror is used: signatures are verified
//! cryptographically, so a mirror can hide them but not forge them. A referrer whose predicate type
//! is not cosign's signature predicate is an attestation: kept aside (not fetched), never used as
//! a signature, unless a policy requires attestations ([`DiscoverSettings::attestations`]): then
//! it is fetched like a signature bundle, and so are `<dir>/sha256-<hex>.<name>.att.json` files;
//! the verification engine tells the two apart by the statement's predicate type; cosign's
//! legacy `.att` tag is read then too. Each step's outcome and every problem met is reported,
//! for the decision report.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Method, StatusCode};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Serialize;

use super::client::{Call, ErrorKind, Op, RequestError, Transport};
use super::hosts::Endpoint;
use super::resolve::{
    fetch_verified, manifest_limit_setting, FetchError, ResolvedImage, Store, SubjectRole, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use crate::digest::Digest;

/// Sigstore bundle media types, newest first (cosign v3 writes v0.3).
pub const BUNDLE_MEDIA_TYPES: &[&str] = &[
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
];
/// The layer media type of a cosign simple-signing signature.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer media type of a cosign legacy attestation (a DSSE envelope) on the `.att` tag.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Artifact type of cosign's signatures stored as OCI 1.1 referrers (cosign 2.x experimental).
pub const COSIGN_SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Annotation cosign puts on bundle referrers saying what the bundle's statement is.
pub const PREDICATE_TYPE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";
/// cosign v3's predicate type for an image signature.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// Referrers considered per listing; more is a broken or hostile mirror.
const MAX_REFERRERS: usize = 64;
/// Pages of a referrers API answer followed.
const MAX_REFERRER_PAGES: usize = 8;
/// Simple-signing layers read from one `.sig` manifest.
const MAX_SIGNATURE_LAYERS: usize = 32;

/// Where signature material is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    ReferrersApi,
    ReferrersTag,
    SignatureTag,
    BundleDir,
    AttestationTag,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ReferrersApi => "referrers API",
            Step::ReferrersTag => "referrers tag",
            Step::SignatureTag => "cosign .sig tag",
            Step::BundleDir => "bundle directory",
            Step::AttestationTag => "cosign .att tag",
        })
    }
}

/// Where one candidate came from, for audit logs and the decision report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A referrer listed by the referrers API: its manifest and the bundle blob in it.
    ReferrersApi { endpoint: String, manifest: Digest, blob: Digest },
    /// A referrer listed in the referrers tag schema index at `tag`.
    ReferrersTag { endpoint: String, tag: String, manifest: Digest, blob: Digest },
    /// A layer of cosign's legacy signature (`.sig`) or attestation (`.att`) manifest at `tag`.
    SignatureTag { endpoint: String, tag: String, manifest: Digest, layer: Digest },
    /// A bundle file on the node.
    BundleFile { path: PathBuf },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::ReferrersApi { endpoint, manifest, .. } => write!(f, "referrer {manifest} (referrers API on {endpoint})"),
            Source::ReferrersTag { endpoint, tag, manifest, .. } => write!(f, "referrer {manifest} (tag {tag} on {endpoint})"),
            Source::SignatureTag { endpoint, tag, layer, .. } => write!(f, "layer {layer} of tag {tag} on {endpoint}"),
            Source::BundleFile { path } => write!(f, "bundle file {}", path.display()),
        }
    }
}

/// A signature candidate, to be verified by the verification engine.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Material {
    /// A Sigstore bundle (JSON), as stored.
    Bundle {
        /// The digest it was found for.
        subject: Digest,
        media_type: String,
        /// sha256 of the bundle bytes, to name it.
        digest: Digest,
        #[serde(skip)]
        json: Bytes,
        source: Source,
    },
    /// A cosign simple-signing signature: the payload and the layer's annotations
    /// (`dev.cosignproject.cosign/signature`, `dev.sigstore.cosign/certificate`, `.../chain`,
    /// `.../bundle`, `.../rfc3161timestamp`).
    LegacySignature {
        subject: Digest,
        /// The layer digest, which the payload bytes hash to.
        digest: Digest,
        #[serde(skip)]
        payload: Bytes,
        annotations: BTreeMap<String, String>,
        source: Source,
    },
    /// A cosign legacy attestation (a layer of the `.att` tag): the DSSE envelope and the
    /// layer's annotations (`dev.sigstore.cosign/certificate`, `.../chain`, `.../bundle`,
    /// `predicateType`).
    LegacyAttestation {
        subject: Digest,
        /// The layer digest, which the envelope bytes hash to.
        digest: Digest,
        #[serde(skip)]
        envelope: Bytes,
        annotations: BTreeMap<String, String>,
        source: Source,
    },
}

impl Material {
    pub fn subject(&self) -> &Digest {
        match self {
            Material::Bundle { subject, .. } | Material::LegacySignature { subject, .. } | Material::LegacyAttestation { subject, .. } => {
                subject
            }
        }
    }

    pub fn source(&self) -> &Source {
        match self {
            Material::Bundle { source, .. } | Material::LegacySignature { source, .. } | Material::LegacyAttestation { source, .. } => {
                source
            }
        }
    }
}

/// A referrer that is not a signature (an attestation, an SBOM...), kept for later policy use.
#[derive(Debug, Clone, Serialize)]
pub struct SideArtifact {
    pub subject: Digest,
    pub step: Step,
    pub endpoint: String,
    pub manifest: Digest,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub predicate_type: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What one step found for one subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Found {
        candidates: usize,
    },
    /// Looked, and there is nothing.
    NotFound,
    /// The mirror does not offer this kind of lookup (referrers API).
    Unsupported {
        reason: String,
    },
    /// The lookup failed: there may be material that could not be seen.
    Failed {
        error: String,
    },
    Skipped {
        reason: String,
    },
}

/// One step for one subject.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub subject: Digest,
    pub step: Step,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Candidates that could not be used (wrong digest, too large, malformed...), one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl StepReport {
    pub fn is_error(&self) -> bool {
        matches!(self.outcome, Outcome::Failed { .. }) || !self.problems.is_empty()
    }
}

/// A digest signatures were looked for.
#[derive(Debug, Clone, Serialize)]
pub struct Subject {
    pub digest: Digest,
    pub role: SubjectRole,
}

/// Everything discovery found for an image.
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    pub subjects: Vec<Subject>,
    pub steps: Vec<StepReport>,
    pub materials: Vec<Material>,
    pub side_artifacts: Vec<SideArtifact>,
}

impl Discovery {
    /// One line per failed step or unusable candidate: material may exist that was not seen.
    pub fn errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.steps {
            if let Outcome::Failed { error } = &s.outcome {
                out.push(format!("{} for {}: {error}", s.step, s.subject));
            }
            for p in &s.problems {
                out.push(format!("{} for {}: {p}", s.step, s.subject));
            }
        }
        out
    }
}

/// Settings discovery needs.
pub(crate) struct DiscoverSettings<'a> {
    pub max_manifest: u64,
    pub max_blob: u64,
    pub bundle_dir: Option<&'a std::path::Path>,
    /// Fetch attestation bundles too (a policy requires attestations), instead of keeping them
    /// aside: referrers whose predicate is not cosign's signature, and `<stem>.*.att.json` files.
    pub attestations: bool,
}

/// Discovers all material for the subjects of `image`.
pub(crate) async fn discover(
    transport: &Transport,
    op: &Op,
    endpoints: &[Endpoint],
    image: &ResolvedImage,
    settings: &DiscoverSettings<'_>,
) -> Discovery {
    let pullers: Vec<&Endpoint> = endpoints.iter().filter(|e| e.capabilities.pull).collect();
    let subjects = image.subjects();
    let repo = image.reference.repository();
    let runs = subjects.iter().map(|(digest, _)| discover_subject(transport, op, &pullers, repo, digest, settings));
    let results = join_all(runs).await;
    assemble(subjects, results)
}

/// Discovery started before the manifest is known: the material of `digest` (the manifest or
/// index `image` resolves to) is looked for while `image` is being fetched, and once `image`
/// is known, that of the subjects it adds (an index's platform manifest). The result is what
/// [`discover`] gives for the resolved image, in the same order: subjects in
/// [`ResolvedImage::subjects`] order, steps in their fixed order, whichever request finishes
/// first. `image` failing cancels the discovery in flight.
pub(crate) async fn discover_while<E>(
    transport: &Transport,
    op: &Op,
    endpoints: &[Endpoint],
    digest: &Digest,
    repo: &str,
    image: impl std::future::Future<Output = Result<ResolvedImage, E>>,
    settings: &DiscoverSettings<'_>,
) -> Result<(ResolvedImage, Discovery), E> {
    let pullers: Vec<&Endpoint> = endpoints.iter().filter(|e| e.capabilities.pull).collect();
    let early = async { Ok::<_, E>(discover_subject(transport, op, &pullers, repo, digest, settings).await) };
    // The subjects the manifest adds are looked for as soon as it is known, alongside.
    let rest = async {
        let image = image.await?;
        let added: Vec<Digest> = image.subjects().into_iter().map(|(d, _)| d).filter(|d| d != digest).collect();
        let runs = added.iter().map(|d| discover_subject(transport, op, &pullers, repo, d, settings));
        let results = join_all(runs).await;
        Ok((image, results))
    };
    let (early, (image, added)) = tokio::try_join!(early, rest)?;
    let subjects = image.subjects();
    let (mut early, mut added) = (Some(early), added.into_iter());
    let results = subjects.iter().filter_map(|(d, _)| if d == digest { early.take() } else { added.next() }).collect();
    let discovery = assemble(subjects, results);
    Ok((image, discovery))
}

/// One [`Discovery`] from the per-subject results, in subject order.
fn assemble(subjects: Vec<(Digest, SubjectRole)>, results: Vec<SubjectResult>) -> Discovery {
    let mut d = Discovery {
        subjects: subjects.into_iter().map(|(digest, role)| Subject { digest, role }).collect(),
        steps: Vec::new(),
        materials: Vec::new(),
        side_artifacts: Vec::new(),
    };
    for r in results {
        d.steps.extend(r.steps);
        d.materials.extend(r.materials);
        d.side_artifacts.extend(r.side);
    }
    d
}

#[derive(Default)]
struct SubjectResult {
    steps: Vec<StepReport>,
    materials: Vec<Material>,
    side: Vec<SideArtifact>,
}

/// A listing of referrers from one step.
enum Listing {
    Found { endpoint: String, tag: Option<String>, descriptors: Vec<Descriptor>, problems: Vec<String> },
    NotFound,
    Unsupported(String),
    Failed(String),
}

async fn discover_subject(
    transport: &Transport,
    op: &Op,
    pullers: &[&Endpoint],
    repo: &str,
    subject: &Digest,
    settings: &DiscoverSettings<'_>,
) -> SubjectResult {
    let ctx = Ctx { transport, op, pullers, repo, subject, settings };
    let (api, tag, sig, files, att) =
        tokio::join!(ctx.referrers_api(), ctx.referrers_tag(), ctx.signature_tag(), ctx.bundle_files(), ctx.attestation_tag());
    let mut out = SubjectResult::default();
    let mut seen = HashSet::new();
    for (step, listing) in [(Step::ReferrersApi, api), (Step::ReferrersTag, tag)] {
        let (outcome, problems) = match listing {
            Listing::Found { endpoint, tag, descriptors, mut problems } => {
                let fresh: Vec<Descriptor> = descriptors.into_iter().filter(|d| seen.insert(d.digest().to_string())).collect();
                let results = join_all(fresh.iter().map(|d| ctx.referrer(step, &endpoint, tag.as_deref(), d))).await;
                let mut count = 0;
                for r in results {
                    count += r.materials.len();
                    out.materials.extend(r.materials);
                    out.side.extend(r.side);
                    problems.extend(r.problems);
                }
                (if count > 0 { Outcome::Found { candidates: count } } else { Outcome::NotFound }, problems)
            }
            Listing::NotFound => (Outcome::NotFound, Vec::new()),
            Listing::Unsupported(reason) => (Outcome::Unsupported { reason }, Vec::new()),
            Listing::Failed(error) => (Outcome::Failed { error }, Vec::new()),
        };
        out.steps.push(StepReport { subject: subject.clone(), step, outcome, problems });
    }
    for (step, (outcome, materials, problems)) in [(Step::SignatureTag, sig), (Step::BundleDir, files)] {
        out.materials.extend(materials);
        out.steps.push(StepReport { subject: subject.clone(), step, outcome, problems });
    }
    if let Some((outcome, materials, problems)) = att {
        out.materials.extend(materials);
        out.steps.push(StepReport { subject: subject.clone(), step: Step::AttestationTag, outcome, problems });
    }
    out
}

struct Ctx<'a> {
    transport: &'a Transport,
    op: &'a Op,
    pullers: &'a [&'a Endpoint],
    repo: &'a str,
    subject: &'a Digest,
    settings: &'a DiscoverSettings<'a>,
}

#[derive(Default)]
struct ReferrerResult {
    materials: Vec<Material>,
    side: Vec<SideArtifact>,
    problems: Vec<String>,
}

impl Ctx<'_> {
    fn call(&self, ep: &Endpoint, path: String, accept: &'static str) -> Call<'_> {
        Call {
            method: Method::GET,
            path: format!("{}/{}/{}", ep.path, self.repo, path),
            accept,
            limit: self.settings.max_manifest,
            limit_setting: manifest_limit_setting(),
            repository: self.repo,
        }
    }

    /// Pull endpoints with `first` (the one that listed something) moved to the front.
    fn endpoints_from(&self, first: &str) -> Vec<&Endpoint> {
        let mut eps: Vec<&Endpoint> = self.pullers.to_vec();
        eps.sort_by_key(|e| e.url() != first);
        eps
    }

    fn no_endpoints(&self) -> Option<Listing> {
        self.pullers.is_empty().then(|| Listing::Failed("no endpoint with the `pull` capability is configured".into()))
    }

    async fn referrers_api(&self) -> Listing {
        if let Some(l) = self.no_endpoints() {
            return l;
        }
        let mut unsupported = Vec::new();
        let mut first_err: Option<RequestError> = None;
        for ep in self.pullers {
            if self.op.is_dead(ep) {
                continue;
            }
            let mut call = self.call(ep, format!("referrers/{}", self.subject), OCI_INDEX);
            let mut descriptors = Vec::new();
            let mut problems = Vec::new();
            let mut supported = true;
            for page in 0..MAX_REFERRER_PAGES {
                let resp = match self.transport.send(self.op, ep, &call).await {
                    Ok(r) => r,
                    Err(e) => {
                        if page == 0 {
                            first_err.get_or_insert(e);
                            supported = false;
                        } else {
                            problems.push(format!("next page of the listing: {e}"));
                        }
                        break;
                    }
                };
                let index = if resp.status == StatusCode::OK { serde_json::from_slice::<ImageIndex>(&resp.body).ok() } else { None };
                let Some(index) = index else {
                    if page == 0 {
                        let why = if resp.status == StatusCode::OK {
                            "answer is not an OCI index".to_string()
                        } else {
                            format!("HTTP {}", resp.status.as_u16())
                        };
                        unsupported.push(format!("{}: {why}", ep.url()));
                        supported = false;
                    } else {
                        problems.push(format!("{}: next page {}: not an OCI index (HTTP {})", ep.url(), call.path, resp.status.as_u16()));
                    }
                    break;
                };
                descriptors.extend(index.manifests().iter().cloned());
                match next_link(resp.header("link"), &ep.path) {
                    Some(Ok(path)) if page + 1 < MAX_REFERRER_PAGES && descriptors.len() < MAX_REFERRERS => call.path = path,
                    Some(Ok(_)) => {
                        problems.push(format!(
                            "{}: more referrers than the {} considered; the rest were not examined",
                            ep.url(),
                            descriptors.len()
                        ));
                        break;
                    }
                    Some(Err(why)) => {
                        problems.push(format!("{}: {why}", ep.url()));
                        break;
                    }
                    None => break,
                }
            }
            if !supported {
                continue;
            }
            truncate(&mut descriptors, &mut problems, &ep.url());
            return Listing::Found { endpoint: ep.url(), tag: None, descriptors, problems };
        }
        match first_err {
            Some(e) => Listing::Failed(e.to_string()),
            None if unsupported.is_empty() => Listing::Failed("every endpoint was unreachable earlier in this operation".into()),
            None => Listing::Unsupported(unsupported.join("; ")),
        }
    }

    async fn referrers_tag(&self) -> Listing {
        if let Some(l) = self.no_endpoints() {
            return l;
        }
        let tag = self.subject.referrers_tag();
        match self.get_tag(&tag, OCI_INDEX).await {
            Err(e) => Listing::Failed(e),
            Ok(None) => Listing::NotFound,
            Ok(Some((endpoint, body))) => {
                let mut problems = Vec::new();
                match serde_json::from_slice::<ImageIndex>(&body) {
                    Ok(index) => {
                        let mut descriptors = index.manifests().clone();
                        truncate(&mut descriptors, &mut problems, &endpoint);
                        Listing::Found { endpoint, tag: Some(tag), descriptors, problems }
                    }
                    Err(e) => Listing::Failed(format!("{endpoint}: tag {tag} is not an OCI index: {}", one_line(&e.to_string()))),
                }
            }
        }
    }

    /// GET a tag's manifest on the first endpoint that has it: `Ok(None)` when none has it.
    async fn get_tag(&self, tag: &str, accept: &'static str) -> Result<Option<(String, Bytes)>, String> {
        let mut first_err: Option<String> = None;
        for ep in self.pullers {
            if self.op.is_dead(ep) {
                continue;
            }
            let call = self.call(ep, format!("manifests/{tag}"), accept);
            match self.transport.send(self.op, ep, &call).await {
                Ok(r) if r.status == StatusCode::NOT_FOUND => continue,
                Ok(r) if r.status.is_success() => {
                    // A tag has no digest to check against; the registry's claim must hold, though.
                    if let Some(Ok(claimed)) = r.header("docker-content-digest").map(Digest::parse) {
                        if !claimed.matches(&r.body) {
                            let got = Digest::compute(claimed.algorithm(), &r.body);
                            let e = RequestError {
                                endpoint: ep.url(),
                                method: "GET".into(),
                                path: call.path.clone(),
                                kind: ErrorKind::DigestMismatch { got: got.to_string(), want: claimed.to_string() },
                            };
                            return Err(e.to_string());
                        }
                    }
                    return Ok(Some((ep.url(), r.body)));
                }
                Ok(r) => {
                    let e = RequestError {
                        endpoint: ep.url(),
                        method: "GET".into(),
                        path: call.path.clone(),
                        kind: ErrorKind::Status { status: r.status.as_u16(), detail: r.detail() },
                    };
                    first_err.get_or_insert(e.to_string());
                }
                Err(e) => {
                    first_err.get_or_insert(e.to_string());
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    async fn signature_tag(&self) -> (Outcome, Vec<Material>, Vec<String>) {
        self.cosign_tag(self.subject.cosign_signature_tag(), SIMPLE_SIGNING).await
    }

    /// cosign's legacy attestation tag, only when a policy requires attestations.
    async fn attestation_tag(&self) -> Option<(Outcome, Vec<Material>, Vec<String>)> {
        if !self.settings.attestations {
            return None;
        }
        Some(self.cosign_tag(self.subject.cosign_attestation_tag(), DSSE_ENVELOPE).await)
    }

    /// The layers of media type `layer_type` of the cosign manifest at `tag` (`.sig` or `.att`).
    async fn cosign_tag(&self, tag: String, layer_type: &'static str) -> (Outcome, Vec<Material>, Vec<String>) {
        if self.pullers.is_empty() {
            return (Outcome::Failed { error: "no endpoint with the `pull` capability is configured".into() }, vec![], vec![]);
        }
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let (endpoint, body) = match self.get_tag(&tag, accept).await {
            Err(error) => return (Outcome::Failed { error }, vec![], vec![]),
            Ok(None) => return (Outcome::NotFound, vec![], vec![]),
            Ok(Some(found)) => found,
        };
        let manifest_digest = Digest::sha256(&body);
        let manifest: ImageManifest = match serde_json::from_slice(&body) {
            Ok(m) => m,
            Err(e) => {
                let error = format!("{endpoint}: tag {tag} is not an image manifest: {}", one_line(&e.to_string()));
                return (Outcome::Failed { error }, vec![], vec![]);
            }
        };
        let mut problems = Vec::new();
        let layers: Vec<&Descriptor> = manifest.layers().iter().filter(|l| l.media_type().to_string() == layer_type).collect();
        let skipped = manifest.layers().len() - layers.len();
        if skipped > 0 {
            let what = if layer_type == SIMPLE_SIGNING { "simple-signing signatures" } else { "DSSE attestations" };
            problems.push(format!("{endpoint}: tag {tag}: {skipped} layer(s) that are not {what} were ignored"));
        }
        if layers.len() > MAX_SIGNATURE_LAYERS {
            problems.push(format!(
                "{endpoint}: tag {tag} has {} signatures; only the first {MAX_SIGNATURE_LAYERS} were examined",
                layers.len()
            ));
        }
        let eps = self.endpoints_from(&endpoint);
        let fetches = layers.iter().take(MAX_SIGNATURE_LAYERS).map(|layer| {
            let eps = eps.clone();
            let tag = tag.clone();
            let endpoint = endpoint.clone();
            let manifest_digest = manifest_digest.clone();
            async move {
                let layer_digest = Digest::parse(layer.digest().as_ref()).map_err(|e| format!("layer digest: {e}"))?;
                let body = self.blob(&eps, &layer_digest, layer.size()).await?;
                let annotations: BTreeMap<String, String> = layer.annotations().clone().unwrap_or_default().into_iter().collect();
                let source = Source::SignatureTag { endpoint, tag, manifest: manifest_digest, layer: layer_digest.clone() };
                let subject = self.subject.clone();
                Ok::<_, String>(if layer_type == SIMPLE_SIGNING {
                    Material::LegacySignature { subject, digest: layer_digest, payload: body, annotations, source }
                } else {
                    Material::LegacyAttestation { subject, digest: layer_digest, envelope: body, annotations, source }
                })
            }
        });
        let mut materials = Vec::new();
        for r in join_all(fetches).await {
            match r {
                Ok(m) => materials.push(m),
                Err(p) => problems.push(p),
            }
        }
        let outcome = if materials.is_empty() { Outcome::NotFound } else { Outcome::Found { candidates: materials.len() } };
        (outcome, materials, problems)
    }

    /// A blob by digest, bounded by `max_blob_bytes` and by its descriptor's size.
    async fn blob(&self, eps: &[&Endpoint], digest: &Digest, declared: u64) -> Result<Bytes, String> {
        if declared > self.settings.max_blob {
            return Err(format!(
                "blob {digest} is {declared} bytes per its descriptor, over the {}-byte limit (registry.max_blob_bytes)",
                self.settings.max_blob
            ));
        }
        let limit = self.settings.max_blob.min(declared.max(1));
        fetch_verified(self.transport, self.op, eps, self.repo, Store::Blobs, digest, limit, "registry.max_blob_bytes", "*/*")
            .await
            .map(|f| f.body)
            .map_err(|e| match e {
                FetchError::NotFound(eps) => format!("blob {digest} not found on {}", eps.join(", ")),
                e => e.to_string(),
            })
    }

    /// Handles one listed referrer: a bundle or a cosign signature artifact is fetched, anything
    /// else is kept aside.
    async fn referrer(&self, step: Step, endpoint: &str, tag: Option<&str>, desc: &Descriptor) -> ReferrerResult {
        let mut out = ReferrerResult::default();
        let manifest_digest = match Digest::parse(desc.digest().as_ref()) {
            Ok(d) => d,
            Err(e) => {
                out.problems.push(format!("{endpoint}: referrer {}: {e}", desc.digest()));
                return out;
            }
        };
        let annotations: BTreeMap<String, String> = desc.annotations().clone().unwrap_or_default().into_iter().collect();
        let artifact_type = desc.artifact_type().as_ref().map(|m| m.to_string());
        let side = |artifact_type: Option<String>, predicate: Option<String>, annotations: BTreeMap<String, String>| SideArtifact {
            subject: self.subject.clone(),
            step,
            endpoint: endpoint.to_string(),
            manifest: manifest_digest.clone(),
            size: desc.size(),
            artifact_type,
            predicate_type: predicate,
            annotations,
        };
        let predicate = annotations.get(PREDICATE_TYPE_ANNOTATION).cloned();
        let is_bundle = |t: &str| BUNDLE_MEDIA_TYPES.contains(&t);
        match artifact_type.as_deref() {
            Some(t) if is_bundle(t) && !self.settings.attestations && predicate.as_deref().is_some_and(|p| p != COSIGN_SIGN_PREDICATE) => {
                out.side.push(side(artifact_type.clone(), predicate, annotations));
                return out;
            }
            Some(t) if !is_bundle(t) && t != COSIGN_SIGNATURE_ARTIFACT => {
                out.side.push(side(artifact_type.clone(), predicate, annotations));
                return out;
            }
            _ => {}
        }
        // A bundle, a cosign signature artifact, or no artifactType in the listing: the manifest
        // says which.
        if desc.size() > self.settings.max_manifest {
            out.problems.push(format!(
                "{endpoint}: referrer {manifest_digest} is {} bytes per its descriptor, over the {}-byte limit (registry.max_manifest_bytes)",
                desc.size(),
                self.settings.max_manifest
            ));
            return out;
        }
        let eps = self.endpoints_from(endpoint);
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let fetched = fetch_verified(
            self.transport,
            self.op,
            &eps,
            self.repo,
            Store::Manifests,
            &manifest_digest,
            self.settings.max_manifest,
            manifest_limit_setting(),
            accept,
        )
        .await;
        let body = match fetched {
            Ok(f) => f.body,
            Err(e) => {
                out.problems.push(format!("referrer {manifest_digest}: {e}"));
                return out;
            }
        };
        let manifest = match serde_json::from_slice::<ImageManifest>(&body) {
            Ok(m) if m.media_type().as_ref().map(|m| m.to_string()).is_none_or(|m| m == OCI_MANIFEST || m == DOCKER_MANIFEST) => m,
            Ok(m) => {
                out.problems.push(format!(
                    "{endpoint}: referrer {manifest_digest} has media type {:?}, not an image manifest",
                    m.media_type().as_ref().map(|m| m.to_string())
                ));
                return out;
            }
            Err(e) => {
                out.problems.push(format!("{endpoint}: referrer {manifest_digest} is not an image manifest: {}", one_line(&e.to_string())));
                return out;
            }
        };
        if let Some(s) = manifest.subject() {
            if s.digest().to_string() != self.subject.to_string() {
                out.problems.push(format!("{endpoint}: referrer {manifest_digest} is about {}, not {}", s.digest(), self.subject));
                return out;
            }
        }
        let mut manifest_annotations: BTreeMap<String, String> = manifest.annotations().clone().unwrap_or_default().into_iter().collect();
        let artifact_type = artifact_type
            .or_else(|| manifest.artifact_type().as_ref().map(|m| m.to_string()))
            .or_else(|| Some(manifest.config().media_type().to_string()));
        let predicate = predicate.or_else(|| manifest_annotations.get(PREDICATE_TYPE_ANNOTATION).cloned());
        let at = artifact_type.as_deref().unwrap_or("");
        if at == COSIGN_SIGNATURE_ARTIFACT {
            for layer in manifest.layers().iter().filter(|l| l.media_type().to_string() == SIMPLE_SIGNING).take(MAX_SIGNATURE_LAYERS) {
                let Ok(layer_digest) = Digest::parse(layer.digest().as_ref()) else {
                    out.problems.push(format!("{endpoint}: referrer {manifest_digest}: invalid layer digest {}", layer.digest()));
                    continue;
                };
                match self.blob(&eps, &layer_digest, layer.size()).await {
                    Ok(payload) => out.materials.push(Material::LegacySignature {
                        subject: self.subject.clone(),
                        digest: layer_digest.clone(),
                        payload,
                        annotations: layer.annotations().clone().unwrap_or_default().into_iter().collect(),
                        source: self.source(step, endpoint, tag, &manifest_digest, &layer_digest),
                    }),
                    Err(p) => out.problems.push(p),
                }
            }
            return out;
        }
        if !is_bundle(at) || (!self.settings.attestations && predicate.as_deref().is_some_and(|p| p != COSIGN_SIGN_PREDICATE)) {
            manifest_annotations.extend(annotations);
            out.side.push(side(artifact_type, predicate, manifest_annotations));
            return out;
        }
        let bundles: Vec<&Descriptor> = manifest.layers().iter().filter(|l| is_bundle(l.media_type().as_ref())).collect();
        if bundles.is_empty() {
            out.problems.push(format!("{endpoint}: referrer {manifest_digest} has no bundle layer"));
        }
        for layer in bundles.into_iter().take(MAX_SIGNATURE_LAYERS) {
            let Ok(blob_digest) = Digest::parse(layer.digest().as_ref()) else {
                out.problems.push(format!("{endpoint}: referrer {manifest_digest}: invalid layer digest {}", layer.digest()));
                continue;
            };
            match self.blob(&eps, &blob_digest, layer.size()).await {
                Ok(json) => out.materials.push(Material::Bundle {
                    subject: self.subject.clone(),
                    media_type: layer.media_type().to_string(),
                    digest: blob_digest.clone(),
                    json,
                    source: self.source(step, endpoint, tag, &manifest_digest, &blob_digest),
                }),
                Err(p) => out.problems.push(p),
            }
        }
        out
    }

    fn source(&self, step: Step, endpoint: &str, tag: Option<&str>, manifest: &Digest, blob: &Digest) -> Source {
        match (step, tag) {
            (Step::ReferrersTag, Some(tag)) => {
                Source::ReferrersTag { endpoint: endpoint.into(), tag: tag.into(), manifest: manifest.clone(), blob: blob.clone() }
            }
            _ => Source::ReferrersApi { endpoint: endpoint.into(), manifest: manifest.clone(), blob: blob.clone() },
        }
    }

    async fn bundle_files(&self) -> (Outcome, Vec<Material>, Vec<String>) {
        let Some(dir) = self.settings.bundle_dir else {
            return (Outcome::Skipped { reason: "no bundle directory configured".into() }, vec![], vec![]);
        };
        let stem = self.subject.file_stem();
        let mut materials = Vec::new();
        let mut problems = Vec::new();
        let mut names = vec![format!("{stem}.json"), format!("{stem}.sigstore.json")];
        if self.settings.attestations {
            names.extend(attestation_files(dir, &stem, &mut problems).await);
        }
        for name in names {
            let path = dir.join(&name);
            let meta = match tokio::fs::metadata(&path).await {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if !meta.is_file() {
                problems.push(format!("{}: not a regular file", path.display()));
                continue;
            }
            if meta.len() > self.settings.max_blob {
                problems.push(format!(
                    "{}: {} bytes, over the {}-byte limit (registry.max_blob_bytes)",
                    path.display(),
                    meta.len(),
                    self.settings.max_blob
                ));
                continue;
            }
            match tokio::fs::read(&path).await {
                Ok(bytes) if bytes.len() as u64 <= self.settings.max_blob => {
                    let json = Bytes::from(bytes);
                    materials.push(Material::Bundle {
                        subject: self.subject.clone(),
                        media_type: BUNDLE_MEDIA_TYPES[0].into(),
                        digest: Digest::sha256(&json),
                        json,
                        source: Source::BundleFile { path },
                    });
                }
                Ok(_) => problems.push(format!("{}: grew over the size limit while being read", path.display())),
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        let outcome = if materials.is_empty() { Outcome::NotFound } else { Outcome::Found { candidates: materials.len() } };
        (outcome, materials, problems)
    }
}

/// Attestation bundle files read per subject from the bundle directory.
const MAX_ATTESTATION_FILES: usize = 16;

/// Names of attestation bundle files for `stem` in `dir`: `<stem>.<name>.att.json`, sorted, at
/// most [`MAX_ATTESTATION_FILES`].
async fn attestation_files(dir: &std::path::Path, stem: &str, problems: &mut Vec<String>) -> Vec<String> {
    let prefix = format!("{stem}.");
    let mut names = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return names,
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return names;
        }
    };
    loop {
        match entries.next_entry().await {
            Ok(Some(entry)) => {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".att.json") {
                    names.push(name);
                }
            }
            Ok(None) => break,
            Err(e) => {
                problems.push(format!("{}: {e}", dir.display()));
                break;
            }
        }
    }
    names.sort();
    if names.len() > MAX_ATTESTATION_FILES {
        problems.push(format!(
            "{}: {} attestation files for {stem}; only the first {MAX_ATTESTATION_FILES} were read",
            dir.display(),
            names.len()
        ));
        names.truncate(MAX_ATTESTATION_FILES);
    }
    names
}

fn truncate(descriptors: &mut Vec<Descriptor>, problems: &mut Vec<String>, endpoint: &str) {
    if descriptors.len() > MAX_REFERRERS {
        problems.push(format!("{endpoint}: {} referrers listed; only the first {MAX_REFERRERS} were examined", descriptors.len()));
        descriptors.truncate(MAX_REFERRERS);
    }
}

/// The next page from a `Link: <url>; rel="next"` header: a path on the same endpoint.
fn next_link(link: Option<&str>, api_path: &str) -> Option<Result<String, String>> {
    let link = link?;
    for part in link.split(',') {
        let part = part.trim();
        let (Some(start), Some(end)) = (part.find('<'), part.find('>')) else { continue };
        if start >= end || !part[end..].to_ascii_lowercase().replace(' ', "").contains("rel=\"next\"") {
            continue;
        }
        let url = &part[start + 1..end];
        if url.contains("://") || url.starts_with("//") {
            return Some(Err(format!("next page link {url:?} points to another host; not followed")));
        }
        if !url.starts_with(api_path) || !url.starts_with('/') {
            return Some(Err(format!("next page link {url:?} is outside the registry API; not followed")));
        }
        return Some(Ok(url.to_string()));
    }
    None
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(next_link(Some("</v2/a/referrers/x?n=1&last=y>; rel=\"next\""), "/v2"), Some(Ok("/v2/a/referrers/x?n=1&last=y".into())));
        assert_eq!(next_link(None, "/v2"), None);
        assert_eq!(next_link(Some("</v2/a>; rel=\"prev\""), "/v2"), None);
        assert!(next_link(Some("<https://evil/v2/a>; rel=\"next\""), "/v2").unwrap().is_err());
        assert!(next_link(Some("</other/a>; rel=\"next\""), "/v2").unwrap().is_err());
    }
}
