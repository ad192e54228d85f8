//! Signs images in a registry with the test Sigstore stack (`support::sigstore`) and publishes
//! the signatures where cosign would: a v3 bundle as an OCI referrer (listed in the referrers
//! tag schema index, since distribution 2.8 has no referrers API), and/or a legacy
//! `sha256-<hex>.sig` tag. Used by the enforcement end-to-end tests and the demo.

use serde_json::{json, Value};

use super::registry::http::request;
use super::registry::push::{push_bundle_bytes, push_referrers_tag, push_signature_layers, Pusher, COSIGN_SIGN_PREDICATE};
use super::sigstore::{SignOptions, Stack};
use pullgate::registry::Digest;

/// How to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// cosign v3: a Sigstore bundle v0.3 referrer.
    Bundle,
    /// cosign legacy: a `.sig` tag with a simple-signing layer.
    Legacy,
}

/// The media type and size of the manifest `digest` in `repo`, as the registry serves it.
pub async fn manifest_info(p: &Pusher, repo: &str, digest: &Digest) -> Result<(String, usize), String> {
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
    let mut headers = vec![("accept", accept.to_string())];
    if let Some((u, pw)) = &p.basic {
        use base64::Engine as _;
        headers.push(("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}")))));
    }
    let r = request(p.addr, "GET", &format!("/v2/{repo}/manifests/{digest}"), &headers, bytes::Bytes::new()).await?;
    if r.status != 200 {
        return Err(format!("GET manifest {repo}@{digest}: HTTP {}", r.status));
    }
    let media_type = r.header("content-type").unwrap_or("application/vnd.oci.image.manifest.v1+json").to_string();
    Ok((media_type, r.body.len()))
}

/// Signs `digest` (a manifest in `repo`) with `opts` and publishes the signature in `format`.
pub async fn sign_and_push(
    stack: &mut Stack,
    p: &Pusher,
    repo: &str,
    digest: &Digest,
    opts: &SignOptions,
    format: Format,
) -> Result<(), String> {
    let subject: pullgate::verify::Digest = digest.to_string().parse().map_err(|e| format!("{e}"))?;
    match format {
        Format::Bundle => {
            let signed = stack.sign_image_v3(&subject, opts);
            push_bundle(p, repo, digest, signed.json().as_bytes()).await
        }
        Format::Legacy => {
            let sig = stack.sign_image_legacy(&subject, opts);
            let annotations: Value = json!(sig.annotations());
            push_signature_layers(p, repo, digest, &[(sig.payload.clone(), annotations)]).await.map(|_| ())
        }
    }
}

/// Publishes bundle bytes (valid or not) as a v3 referrer of `digest`, appending to the
/// referrers tag index if one exists.
pub async fn push_bundle(p: &Pusher, repo: &str, digest: &Digest, bundle: &[u8]) -> Result<(), String> {
    let (media_type, size) = manifest_info(p, repo, digest).await?;
    let desc = push_bundle_bytes(p, repo, digest, size, &media_type, COSIGN_SIGN_PREDICATE, bundle).await?;
    let mut listed = existing_referrers(p, repo, digest).await;
    listed.push(desc);
    push_referrers_tag(p, repo, digest, listed).await.map(|_| ())
}

/// Publishes an attestation bundle (`cosign attest` v3) as a referrer of `digest` whose
/// annotation names `predicate_type`, appending to the referrers tag index.
pub async fn push_attestation(p: &Pusher, repo: &str, digest: &Digest, predicate_type: &str, bundle: &[u8]) -> Result<(), String> {
    let (media_type, size) = manifest_info(p, repo, digest).await?;
    let desc = push_bundle_bytes(p, repo, digest, size, &media_type, predicate_type, bundle).await?;
    let mut listed = existing_referrers(p, repo, digest).await;
    listed.push(desc);
    push_referrers_tag(p, repo, digest, listed).await.map(|_| ())
}

async fn existing_referrers(p: &Pusher, repo: &str, digest: &Digest) -> Vec<Value> {
    let headers = vec![("accept", "application/vnd.oci.image.index.v1+json".to_string())];
    match request(p.addr, "GET", &format!("/v2/{repo}/manifests/{}", digest.referrers_tag()), &headers, bytes::Bytes::new()).await {
        Ok(r) if r.status == 200 => serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("manifests").and_then(|m| m.as_array().cloned()))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
