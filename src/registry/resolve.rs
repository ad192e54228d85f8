//! Tag → digest on the mirror, and content fetched by digest, verified.
//!
//! Resolution is containerd's: `HEAD <path>/<repo>/manifests/<tag>` on each endpoint with the
//! `resolve` capability in order (a 404 or an error moves on to the next), taking the
//! `Docker-Content-Digest` answer, or the digest of the bytes of a `GET` when the header is
//! missing. The manifest is then fetched by that digest from the `pull` endpoints, like
//! containerd fetches it, and its bytes must hash to the digest: a mirror that serves other bytes
//! fails the resolution with an error naming it. Every fetched manifest and blob is bounded by a
//! size limit and checked against its digest.
//!
//! The gate resolves a tag with one `GET` instead (`TagRequest::Get`): the digest is that of the
//! bytes served (which must equal any `Docker-Content-Digest` the mirror sends), and on a cold
//! decision those bytes are the manifest, so it is not fetched a second time by digest.

use bytes::Bytes;
use http::{Method, StatusCode};
use oci_spec::image::{ImageIndex, ImageManifest};
use serde::Serialize;

use super::client::{Call, ErrorKind, Op, RequestError, Transport};
use super::config::Platform;
use super::hosts::Endpoint;
use super::platform::{select, EntryPlatform, Matcher};
use super::reference::Reference;
use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What containerd accepts for an image manifest or index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Why an image could not be resolved; one line naming the image and the endpoints.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{reference}: not found on {endpoints}")]
    NotFound { reference: String, endpoints: String },
    #[error("{reference}: no endpoint with the `{capability}` capability is configured for {registry} (hosts.toml)")]
    NoEndpoint { reference: String, registry: String, capability: &'static str },
    #[error("{reference}: {error}")]
    Request { reference: String, error: RequestError },
    #[error("{reference}: {endpoint}: manifest {digest}: {message}")]
    Manifest { reference: String, endpoint: String, digest: String, message: String },
}

/// An image resolved on the mirror.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedImage {
    /// The reference as normalised.
    pub reference: Reference,
    /// The digest of the manifest or index the reference points to: what to pull.
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The endpoint that answered the tag (or served the manifest, for a digest reference).
    pub resolved_by: String,
    /// For an index: the manifest for the configured platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformImage>,
    /// The config digest (containerd's image ID) of the manifest, for a single-platform image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Digest>,
    /// Things worth telling (e.g. an index without the wanted platform).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The verified manifest bytes.
    #[serde(skip)]
    pub manifest: Bytes,
}

/// The platform manifest picked from an index.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformImage {
    /// The entry's platform as the index writes it.
    pub platform: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// The config digest (containerd's image ID) of that manifest, fetched and verified.
    pub config: Digest,
}

/// Which digest of an image signatures are looked up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectRole {
    /// A single-platform image's manifest.
    Manifest,
    /// A multi-arch image's index (covers its platform manifests).
    Index,
    /// The platform manifest picked from an index.
    Platform,
}

impl ResolvedImage {
    /// The digests to discover signatures for: the image's own, then its platform manifest's.
    pub fn subjects(&self) -> Vec<(Digest, SubjectRole)> {
        match &self.platform {
            None if is_index(&self.media_type) => vec![(self.digest.clone(), SubjectRole::Index)],
            None => vec![(self.digest.clone(), SubjectRole::Manifest)],
            Some(p) => vec![(self.digest.clone(), SubjectRole::Index), (p.digest.clone(), SubjectRole::Platform)],
        }
    }
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// Which store a digest is fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    Manifests,
    Blobs,
}

/// Content fetched by digest and verified.
pub(crate) struct Fetched {
    pub body: Bytes,
    pub content_type: Option<String>,
    pub endpoint: String,
}

/// Why content could not be fetched by digest.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// 404 on every endpoint tried.
    NotFound(Vec<String>),
    Request(RequestError),
    NoEndpoint,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotFound(eps) => write!(f, "not found on {}", eps.join(", ")),
            FetchError::Request(e) => write!(f, "{e}"),
            FetchError::NoEndpoint => f.write_str("no endpoint with the `pull` capability"),
        }
    }
}

pub(crate) fn manifest_limit_setting() -> &'static str {
    "registry.max_manifest_bytes"
}

/// Fetches `digest` from `store` on the first of `endpoints` that has it, checking size and
/// digest. A 404 or an unreachable endpoint moves on to the next; a wrong digest or an oversized
/// answer is an error at once (the mirror serves something else).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch_verified(
    transport: &Transport,
    op: &Op,
    endpoints: &[&Endpoint],
    repository: &str,
    store: Store,
    digest: &Digest,
    limit: u64,
    limit_setting: &'static str,
    accept: &str,
) -> Result<Fetched, FetchError> {
    let mut first_err: Option<RequestError> = None;
    let mut not_found = Vec::new();
    let mut tried = 0;
    for ep in endpoints {
        if op.is_dead(ep) {
            continue;
        }
        tried += 1;
        let kind = if store == Store::Manifests { "manifests" } else { "blobs" };
        let call = Call {
            method: Method::GET,
            path: format!("{}/{}/{}/{}", ep.path, repository, kind, digest),
            accept,
            limit,
            limit_setting,
            repository,
        };
        let resp = match transport.send(op, ep, &call).await {
            Ok(r) => r,
            Err(e) if e.is_unreachable() => {
                first_err.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(FetchError::Request(e)),
        };
        if resp.status == StatusCode::NOT_FOUND {
            not_found.push(ep.url());
            continue;
        }
        let fail = |kind| RequestError { endpoint: ep.url(), method: "GET".into(), path: call.path.clone(), kind };
        if !resp.status.is_success() {
            first_err.get_or_insert(fail(ErrorKind::Status { status: resp.status.as_u16(), detail: resp.detail() }));
            continue;
        }
        if !digest.matches(&resp.body) {
            let got = Digest::compute(digest.algorithm(), &resp.body);
            return Err(FetchError::Request(fail(ErrorKind::DigestMismatch { got: got.to_string(), want: digest.to_string() })));
        }
        let content_type = resp.header("content-type").map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        return Ok(Fetched { body: resp.body, content_type, endpoint: ep.url() });
    }
    if let Some(e) = first_err {
        return Err(FetchError::Request(e));
    }
    if tried == 0 && not_found.is_empty() {
        return Err(FetchError::NoEndpoint);
    }
    Err(FetchError::NotFound(not_found))
}

/// The media type of a manifest: its `mediaType` field, else the served content type, else its
/// shape.
pub(crate) fn manifest_media_type(body: &[u8], content_type: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let peek: Peek = serde_json::from_slice(body).ok()?;
    if let Some(mt) = peek.media_type.filter(|m| !m.is_empty()) {
        return Some(mt);
    }
    if let Some(ct) = content_type.filter(|c| [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST].contains(c)) {
        return Some(ct.to_string());
    }
    if peek.manifests.is_some() {
        Some(OCI_INDEX.into())
    } else if peek.layers.is_some() {
        Some(OCI_MANIFEST.into())
    } else {
        None
    }
}

/// What resolving a reference's tag gave.
pub(crate) struct TagResolution {
    pub digest: Digest,
    /// The manifest, when a `GET` was needed (or asked for) to learn the digest.
    pub prefetched: Option<FetchedManifest>,
    /// The endpoint that answered the tag (`None` for a digest reference).
    pub resolved_by: Option<String>,
}

/// A manifest (or index) fetched by `GET` while its tag was resolved: its bytes hash to `digest`.
/// Handed to [`resolve`] of that digest, it saves fetching the manifest a second time.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub body: Bytes,
    pub content_type: Option<String>,
    /// The endpoint that served it.
    pub endpoint: String,
}

/// A reference resolved on the mirror: its digest and, when a tag was asked for with `GET`, the
/// manifest served.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub digest: Digest,
    pub manifest: Option<FetchedManifest>,
}

/// How a tag is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagRequest {
    /// `HEAD`, then `GET` only when the answer carries no digest (containerd's way).
    Head,
    /// `GET` at once: the digest and the manifest's bytes in one round trip.
    Get,
}

/// The digest `reference` names: its own, or its tag's as the first `resolve` endpoint that
/// has it answers (`how`), as containerd resolves.
pub(crate) async fn resolve_digest(
    transport: &Transport,
    op: &Op,
    endpoints: &[Endpoint],
    reference: &Reference,
    max_manifest: u64,
    how: TagRequest,
) -> Result<TagResolution, ResolveError> {
    if let Some(d) = reference.digest() {
        return Ok(TagResolution { digest: d.clone(), prefetched: None, resolved_by: None });
    }
    let refname = reference.to_string();
    let repo = reference.repository();
    let tag = reference.tag().unwrap_or(super::reference::DEFAULT_TAG);
    let resolvers: Vec<&Endpoint> = endpoints.iter().filter(|e| e.capabilities.resolve).collect();
    if resolvers.is_empty() {
        return Err(ResolveError::NoEndpoint { reference: refname, registry: reference.registry().into(), capability: "resolve" });
    }
    let mut first_err = None;
    for ep in &resolvers {
        if op.is_dead(ep) {
            continue;
        }
        match resolve_tag(transport, op, ep, repo, tag, max_manifest, how).await {
            Ok(Some((digest, prefetched))) => {
                let prefetched = prefetched.map(|(body, content_type)| FetchedManifest {
                    digest: digest.clone(),
                    body,
                    content_type,
                    endpoint: ep.url(),
                });
                return Ok(TagResolution { digest, prefetched, resolved_by: Some(ep.url()) });
            }
            Ok(None) => continue,
            Err(e) if matches!(e.kind, ErrorKind::DigestMismatch { .. } | ErrorKind::TooLarge { .. }) => {
                return Err(ResolveError::Request { reference: refname, error: e });
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(error) => Err(ResolveError::Request { reference: refname, error }),
        None => {
            Err(ResolveError::NotFound { reference: refname, endpoints: resolvers.iter().map(|e| e.url()).collect::<Vec<_>>().join(", ") })
        }
    }
}

/// Resolves `reference` to a verified manifest, and for an index to its `platform` manifest.
/// `known`: the manifest already fetched for the digest `reference` names (used only when it is
/// that digest's), instead of fetching it again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn resolve(
    transport: &Transport,
    op: &Op,
    endpoints: &[Endpoint],
    reference: &Reference,
    platform: &Platform,
    max_manifest: u64,
    known: Option<&FetchedManifest>,
) -> Result<ResolvedImage, ResolveError> {
    let repo = reference.repository();
    let pullers: Vec<&Endpoint> = endpoints.iter().filter(|e| e.capabilities.pull).collect();
    let TagResolution { digest, prefetched, resolved_by } =
        resolve_digest(transport, op, endpoints, reference, max_manifest, TagRequest::Head).await?;
    let prefetched = prefetched.or_else(|| known.filter(|k| k.digest == digest && digest.matches(&k.body)).cloned());

    let (body, content_type, served_by) = match prefetched {
        Some(m) => (m.body, m.content_type, m.endpoint),
        None => fetch_manifest(transport, op, &pullers, reference, &digest, max_manifest).await?,
    };
    let bad = |endpoint: &str, message: String| ResolveError::Manifest {
        reference: reference.to_string(),
        endpoint: endpoint.to_string(),
        digest: digest.to_string(),
        message,
    };
    let media_type =
        manifest_media_type(&body, content_type.as_deref()).ok_or_else(|| bad(&served_by, "not a JSON manifest or index".into()))?;
    let mut image = ResolvedImage {
        reference: reference.clone(),
        digest: digest.clone(),
        media_type: media_type.clone(),
        size: body.len() as u64,
        resolved_by: resolved_by.unwrap_or_else(|| served_by.clone()),
        platform: None,
        config: None,
        notes: Vec::new(),
        manifest: body.clone(),
    };
    if is_index(&media_type) {
        match index_platform(transport, op, &pullers, repo, &body, &served_by, platform, max_manifest).await {
            Ok(Some(p)) => image.platform = Some(p),
            Ok(None) => image.notes.push(format!("index has no manifest for platform {platform}")),
            Err((endpoint, message)) => return Err(bad(&endpoint, message)),
        }
    } else if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        let manifest: ImageManifest = serde_json::from_slice(&body).map_err(|e| bad(&served_by, format!("invalid manifest: {e}")))?;
        image.config =
            Some(Digest::parse(manifest.config().digest().as_ref()).map_err(|e| bad(&served_by, format!("config digest: {e}")))?);
    } else {
        return Err(bad(&served_by, format!("unsupported media type {media_type:?} (expected an OCI or Docker v2 manifest or index)")));
    }
    Ok(image)
}

/// The manifest by digest, from the pull endpoints in order, as containerd fetches it: its bytes,
/// content type and the endpoint that served it.
async fn fetch_manifest(
    transport: &Transport,
    op: &Op,
    pullers: &[&Endpoint],
    reference: &Reference,
    digest: &Digest,
    max_manifest: u64,
) -> Result<(Bytes, Option<String>, String), ResolveError> {
    let refname = reference.to_string();
    let repo = reference.repository();
    let limit = manifest_limit_setting();
    match fetch_verified(transport, op, pullers, repo, Store::Manifests, digest, max_manifest, limit, MANIFEST_ACCEPT).await {
        Ok(f) => Ok((f.body, f.content_type, f.endpoint)),
        Err(FetchError::Request(error)) => Err(ResolveError::Request { reference: refname, error }),
        Err(FetchError::NoEndpoint) => {
            Err(ResolveError::NoEndpoint { reference: refname, registry: reference.registry().into(), capability: "pull" })
        }
        Err(FetchError::NotFound(eps)) => {
            Err(ResolveError::NotFound { reference: format!("{refname} (manifest {digest})"), endpoints: eps.join(", ") })
        }
    }
}

/// The platform manifest containerd would pull from the index `body` (served by `served_by`) on
/// this node, fetched and verified; `None` when the index has none for `platform`. An error is
/// (endpoint, message), for `ResolveError::Manifest`.
#[allow(clippy::too_many_arguments)]
async fn index_platform(
    transport: &Transport,
    op: &Op,
    pullers: &[&Endpoint],
    repo: &str,
    body: &[u8],
    served_by: &str,
    platform: &Platform,
    max_manifest: u64,
) -> Result<Option<PlatformImage>, (String, String)> {
    let fail = |endpoint: &str, message: String| (endpoint.to_string(), message);
    let index: ImageIndex = serde_json::from_slice(body).map_err(|e| fail(served_by, format!("invalid index: {e}")))?;
    // containerd's own choice for this node (see `platform`), not merely a match.
    let entries: Vec<Option<EntryPlatform>> = index
        .manifests()
        .iter()
        .map(|d| {
            d.platform().as_ref().map(|p| EntryPlatform {
                os: p.os().to_string(),
                architecture: p.architecture().to_string(),
                variant: p.variant().clone().unwrap_or_default(),
            })
        })
        .collect();
    let matcher = Matcher::only(platform);
    match select(&matcher, &entries).and_then(|i| index.manifests().get(i).map(|d| (d, entries.get(i).cloned().flatten()))) {
        Some((_, None)) => Err(fail(
            served_by,
            format!("the index entry containerd would pick for {platform} has no platform (not supported: its config would decide)"),
        )),
        Some((d, Some(entry))) => {
            let what = format!(
                "index entry {}/{}{}",
                entry.os,
                entry.architecture,
                if entry.variant.is_empty() { String::new() } else { format!("/{}", entry.variant) }
            );
            let pd = Digest::parse(d.digest().as_ref()).map_err(|e| fail(served_by, format!("{what}: {e}")))?;
            let mt = d.media_type().to_string();
            if is_index(&mt) {
                return Err(fail(served_by, format!("{what} is itself an index (nested indexes are not supported)")));
            }
            let fetched = fetch_verified(
                transport,
                op,
                pullers,
                repo,
                Store::Manifests,
                &pd,
                max_manifest,
                manifest_limit_setting(),
                MANIFEST_ACCEPT,
            )
            .await
            .map_err(|e| fail(served_by, format!("{what} ({pd}): {e}")))?;
            let manifest: ImageManifest = serde_json::from_slice(&fetched.body)
                .map_err(|e| fail(&fetched.endpoint, format!("{what} ({pd}): invalid manifest: {e}")))?;
            let config = Digest::parse(manifest.config().digest().as_ref())
                .map_err(|e| fail(&fetched.endpoint, format!("{what} ({pd}): config: {e}")))?;
            Ok(Some(PlatformImage {
                platform: what.trim_start_matches("index entry ").to_string(),
                digest: pd,
                media_type: mt,
                size: d.size(),
                config,
            }))
        }
        None => Ok(None),
    }
}

/// `HEAD` (then `GET` if needed), or `GET` at once, a tag on one endpoint: `Ok(None)` for 404.
async fn resolve_tag(
    transport: &Transport,
    op: &Op,
    ep: &Endpoint,
    repo: &str,
    tag: &str,
    max_manifest: u64,
    how: TagRequest,
) -> Result<Option<(Digest, Option<(Bytes, Option<String>)>)>, RequestError> {
    let path = format!("{}/{}/manifests/{}", ep.path, repo, tag);
    let head = Call {
        method: Method::HEAD,
        path: path.clone(),
        accept: MANIFEST_ACCEPT,
        limit: max_manifest,
        limit_setting: manifest_limit_setting(),
        repository: repo,
    };
    if how == TagRequest::Get {
        return get_tag(transport, op, ep, Call { method: Method::GET, ..head }).await;
    }
    let resp = transport.send(op, ep, &head).await?;
    let fail = |method: &str, kind| RequestError { endpoint: ep.url(), method: method.into(), path: path.clone(), kind };
    if resp.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status.is_success() {
        return Err(fail("HEAD", ErrorKind::Status { status: resp.status.as_u16(), detail: String::new() }));
    }
    if let Some(len) = resp.header("content-length").and_then(|l| l.parse::<u64>().ok()) {
        if len > max_manifest {
            return Err(fail("HEAD", ErrorKind::TooLarge { size: len, limit: max_manifest, setting: manifest_limit_setting() }));
        }
    }
    if let Some(Ok(d)) = resp.header("docker-content-digest").map(Digest::parse) {
        return Ok(Some((d, None)));
    }
    // No usable digest header: the digest is that of the manifest's bytes.
    get_tag(transport, op, ep, Call { method: Method::GET, ..head }).await
}

/// `GET` a tag on one endpoint: the digest of the bytes served (which must match the
/// `Docker-Content-Digest` the mirror claims, if any) and the bytes; `Ok(None)` for 404.
async fn get_tag(
    transport: &Transport,
    op: &Op,
    ep: &Endpoint,
    get: Call<'_>,
) -> Result<Option<(Digest, Option<(Bytes, Option<String>)>)>, RequestError> {
    let resp = transport.send(op, ep, &get).await?;
    let path = &get.path;
    let fail = |method: &str, kind| RequestError { endpoint: ep.url(), method: method.into(), path: path.clone(), kind };
    if resp.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status.is_success() {
        return Err(fail("GET", ErrorKind::Status { status: resp.status.as_u16(), detail: resp.detail() }));
    }
    let digest = match resp.header("docker-content-digest").map(Digest::parse) {
        Some(Ok(claimed)) if !claimed.matches(&resp.body) => {
            let got = Digest::compute(claimed.algorithm(), &resp.body);
            return Err(fail("GET", ErrorKind::DigestMismatch { got: got.to_string(), want: claimed.to_string() }));
        }
        Some(Ok(claimed)) => claimed,
        _ => Digest::sha256(&resp.body),
    };
    let ct = resp.header("content-type").map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
    Ok(Some((digest, Some((resp.body, ct)))))
}
