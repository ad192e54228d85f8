//! Steps 1 and 2: the OCI 1.1 referrers API (paged, bounded) and the referrers tag schema
//! (an OCI index at tag `sha256-<hex>`), and the handling of one listed referrer: a bundle or a
//! cosign signature artifact is fetched, anything else is kept aside.

use http::StatusCode;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::*;

impl Ctx<'_> {
    pub(super) async fn referrers_api(&self) -> Listing {
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

    pub(super) async fn referrers_tag(&self) -> Listing {
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

    /// Handles one listed referrer: a bundle or a cosign signature artifact is fetched, anything
    /// else is kept aside.
    pub(super) async fn referrer(&self, step: Step, endpoint: &str, tag: Option<&str>, desc: &Descriptor) -> ReferrerResult {
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
        let eps = self.endpoints_from(endpoint);
        let manifest = match self.referrer_manifest(endpoint, &eps, &manifest_digest, desc.size()).await {
            Ok(m) => m,
            Err(problem) => {
                out.problems.push(problem);
                return out;
            }
        };
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

    /// The image manifest of a listed referrer of `size` bytes (per its descriptor), fetched
    /// from `eps` and checked against its digest; an error (the problem to report) when it is
    /// too large, cannot be fetched, is not an image manifest or is about another subject.
    async fn referrer_manifest(
        &self,
        endpoint: &str,
        eps: &[&Endpoint],
        manifest_digest: &Digest,
        size: u64,
    ) -> Result<ImageManifest, String> {
        if size > self.settings.max_manifest {
            return Err(format!(
                "{endpoint}: referrer {manifest_digest} is {size} bytes per its descriptor, over the {}-byte limit (registry.max_manifest_bytes)",
                self.settings.max_manifest
            ));
        }
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let fetched = fetch_verified(
            self.transport,
            self.op,
            eps,
            self.repo,
            Store::Manifests,
            manifest_digest,
            self.settings.max_manifest,
            manifest_limit_setting(),
            accept,
        )
        .await;
        let body = fetched.map_err(|e| format!("referrer {manifest_digest}: {e}"))?.body;
        let manifest = match serde_json::from_slice::<ImageManifest>(&body) {
            Ok(m) if m.media_type().as_ref().map(|m| m.to_string()).is_none_or(|m| m == OCI_MANIFEST || m == DOCKER_MANIFEST) => m,
            Ok(m) => {
                return Err(format!(
                    "{endpoint}: referrer {manifest_digest} has media type {:?}, not an image manifest",
                    m.media_type().as_ref().map(|m| m.to_string())
                ));
            }
            Err(e) => return Err(format!("{endpoint}: referrer {manifest_digest} is not an image manifest: {}", one_line(&e.to_string()))),
        };
        if let Some(s) = manifest.subject() {
            if s.digest().to_string() != self.subject.to_string() {
                return Err(format!("{endpoint}: referrer {manifest_digest} is about {}, not {}", s.digest(), self.subject));
            }
        }
        Ok(manifest)
    }

    fn source(&self, step: Step, endpoint: &str, tag: Option<&str>, manifest: &Digest, blob: &Digest) -> Source {
        match (step, tag) {
            (Step::ReferrersTag, Some(tag)) => {
                Source::ReferrersTag { endpoint: endpoint.into(), tag: tag.into(), manifest: manifest.clone(), blob: blob.clone() }
            }
            _ => Source::ReferrersApi { endpoint: endpoint.into(), manifest: manifest.clone(), blob: blob.clone() },
        }
    }
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
