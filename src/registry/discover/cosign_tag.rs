//! Step 3: cosign's legacy tags, `sha256-<hex>.sig` (simple-signing layers) and, when a policy
//! requires attestations, `sha256-<hex>.att` (DSSE envelope layers).

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use oci_spec::image::ImageManifest;

use super::*;

impl Ctx<'_> {
    /// GET a tag's manifest on the first endpoint that has it: `Ok(None)` when none has it.
    pub(super) async fn get_tag(&self, tag: &str, accept: &'static str) -> Result<Option<(String, Bytes)>, String> {
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

    pub(super) async fn signature_tag(&self) -> (Outcome, Vec<Material>, Vec<String>) {
        self.cosign_tag(self.subject.cosign_signature_tag(), SIMPLE_SIGNING).await
    }

    /// cosign's legacy attestation tag, only when a policy requires attestations.
    pub(super) async fn attestation_tag(&self) -> Option<(Outcome, Vec<Material>, Vec<String>)> {
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
}
