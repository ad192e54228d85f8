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

mod bundle_dir;
mod cosign_tag;
mod referrers;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::future::join_all;
use http::Method;
use oci_spec::image::Descriptor;
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
    // What the two referrer listings name is fetched as soon as both listings are in, while the
    // cosign tags and the bundle directory are still being read: those never hold up the
    // referrer chain (listing -> referrer manifest -> bundle blob) that a decision waits for.
    let referrers = async {
        let (api, tag) = tokio::join!(ctx.referrers_api(), ctx.referrers_tag());
        ctx.fetch_listed([(Step::ReferrersApi, api), (Step::ReferrersTag, tag)]).await
    };
    let (mut out, sig, files, att) = tokio::join!(referrers, ctx.signature_tag(), ctx.bundle_files(), ctx.attestation_tag());
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
    /// The referrers of each listing, in listing order, each fetched once (a referrer that an
    /// earlier listing named too is counted there); all fetched at once.
    async fn fetch_listed(&self, listings: [(Step, Listing); 2]) -> SubjectResult {
        let mut seen = HashSet::new();
        let listings = listings.map(|(step, listing)| match listing {
            Listing::Found { endpoint, tag, descriptors, problems } => {
                let fresh: Vec<Descriptor> = descriptors.into_iter().filter(|d| seen.insert(d.digest().to_string())).collect();
                (step, Ok((endpoint, tag, fresh, problems)))
            }
            Listing::NotFound => (step, Err(Outcome::NotFound)),
            Listing::Unsupported(reason) => (step, Err(Outcome::Unsupported { reason })),
            Listing::Failed(error) => (step, Err(Outcome::Failed { error })),
        });
        let fetches = listings.iter().map(|(step, listing)| async move {
            match listing {
                Ok((endpoint, tag, fresh, _)) => join_all(fresh.iter().map(|d| self.referrer(*step, endpoint, tag.as_deref(), d))).await,
                Err(_) => Vec::new(),
            }
        });
        let fetched = join_all(fetches).await;
        let mut out = SubjectResult::default();
        for ((step, listing), results) in listings.into_iter().zip(fetched) {
            let (outcome, problems) = match listing {
                Ok((_, _, _, mut problems)) => {
                    let mut count = 0;
                    for r in results {
                        count += r.materials.len();
                        out.materials.extend(r.materials);
                        out.side.extend(r.side);
                        problems.extend(r.problems);
                    }
                    (if count > 0 { Outcome::Found { candidates: count } } else { Outcome::NotFound }, problems)
                }
                Err(outcome) => (outcome, Vec::new()),
            };
            out.steps.push(StepReport { subject: self.subject.clone(), step, outcome, problems });
        }
        out
    }

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
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
