//! Pushing test material to a registry over the OCI distribution API (monolithic blob upload,
//! manifest PUT): works against the testbed's real registry (distribution 2.8) and against the
//! fake registry of this directory. Also builds what cosign pushes: legacy `.sig` and `.att` manifests,
//! Sigstore bundle referrers and referrers-tag-schema indexes.

use std::net::SocketAddr;

use base64::Engine as _;
use bytes::Bytes;
use pullgate::registry::Digest;
use serde_json::{json, Value};

use super::http::request;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// A registry to push to, with optional basic credentials.
#[derive(Clone)]
pub struct Pusher {
    pub addr: SocketAddr,
    pub basic: Option<(String, String)>,
}

impl Pusher {
    pub fn new(addr: SocketAddr) -> Pusher {
        Pusher { addr, basic: None }
    }

    fn auth(&self) -> Vec<(&'static str, String)> {
        match &self.basic {
            Some((u, p)) => {
                vec![("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))))]
            }
            None => vec![],
        }
    }

    /// Uploads a blob (POST then PUT with the digest); returns its digest.
    pub async fn blob(&self, repo: &str, bytes: &[u8]) -> Result<Digest, String> {
        let digest = Digest::sha256(bytes);
        let auth = self.auth();
        let start = request(self.addr, "POST", &format!("/v2/{repo}/blobs/uploads/"), &auth, Bytes::new()).await?;
        if start.status != 202 {
            return Err(format!("start upload to {repo}: HTTP {} {}", start.status, String::from_utf8_lossy(&start.body)));
        }
        let location = start.header("location").ok_or("upload without Location")?.to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let mut headers = auth.clone();
        headers.push(("content-type", "application/octet-stream".into()));
        let done = request(self.addr, "PUT", &format!("{location}{sep}digest={digest}"), &headers, Bytes::copy_from_slice(bytes)).await?;
        if done.status != 201 {
            return Err(format!("finish upload to {repo}: HTTP {} {}", done.status, String::from_utf8_lossy(&done.body)));
        }
        Ok(digest)
    }

    /// PUTs a manifest at `reference` (tag or digest); returns its digest.
    pub async fn manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Result<Digest, String> {
        let mut headers = self.auth();
        headers.push(("content-type", media_type.into()));
        let r = request(self.addr, "PUT", &format!("/v2/{repo}/manifests/{reference}"), &headers, Bytes::copy_from_slice(bytes)).await?;
        if r.status != 201 {
            return Err(format!("PUT manifest {repo}:{reference}: HTTP {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
        Ok(Digest::sha256(bytes))
    }

    /// Pushes a JSON value as a manifest.
    pub async fn json_manifest(&self, repo: &str, reference: &str, media_type: &str, value: &Value) -> Result<(Digest, usize), String> {
        let bytes = serde_json::to_vec(value).unwrap();
        let d = self.manifest(repo, reference, media_type, &bytes).await?;
        Ok((d, bytes.len()))
    }
}

/// A descriptor as JSON.
pub fn descriptor(media_type: &str, digest: &Digest, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest.to_string(), "size": size})
}

/// Pushes a tiny image with no layers to `repo:tag`: a config blob whose label holds `repo:tag`
/// and `salt` (so a distinct digest per salt) and a manifest, which containerd pulls and records
/// like any image. Returns the manifest digest.
pub async fn push_tiny_image(p: &Pusher, repo: &str, tag: &str, salt: &str) -> Result<Digest, String> {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"pullgate.test": format!("{repo}:{tag} {salt}")}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .map_err(|e| e.to_string())?;
    let cd = p.blob(repo, &config).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &cd, config.len()),
        "layers": []
    });
    Ok(p.json_manifest(repo, tag, OCI_MANIFEST, &manifest).await?.0)
}

/// A cosign simple-signing payload for `digest` (what the legacy signature signs).
pub fn simple_signing_payload(image: &str, digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": image},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap()
}

/// Pushes a cosign legacy signature for `subject` at tag `sha256-<hex>.sig` with one layer per
/// `signatures` entry (payload, signature annotation); returns the manifest digest and the
/// layer digests.
pub async fn push_legacy_signature(
    p: &Pusher,
    repo: &str,
    image: &str,
    subject: &Digest,
    signatures: &[&str],
) -> Result<(Digest, Vec<Digest>), String> {
    let payload = simple_signing_payload(image, subject);
    let payload_digest = p.blob(repo, &payload).await?;
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [payload_digest.to_string()]}
    }))
    .unwrap();
    let config_digest = p.blob(repo, &config).await?;
    let layers: Vec<Value> = signatures
        .iter()
        .map(|sig| {
            json!({
                "mediaType": SIMPLE_SIGNING,
                "digest": payload_digest.to_string(),
                "size": payload.len(),
                "annotations": {
                    "dev.cosignproject.cosign/signature": sig,
                    "dev.sigstore.cosign/certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                    "dev.sigstore.cosign/chain": "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
                    "dev.sigstore.cosign/bundle": "{\"SignedEntryTimestamp\":\"MEUC\",\"Payload\":{\"logIndex\":1}}"
                }
            })
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": layers
    });
    let (d, _) = p.json_manifest(repo, &subject.cosign_signature_tag(), OCI_MANIFEST, &manifest).await?;
    Ok((d, vec![payload_digest]))
}

/// A fake Sigstore bundle (discovery does not verify; the verification engine does).
pub fn fake_bundle(label: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"mediaType": BUNDLE_V03, "pullgateTest": label})).unwrap()
}

/// Pushes a cosign v3-style bundle referrer of `subject` (by digest, no tag); returns the
/// referrer manifest's descriptor (with artifactType and annotations, as listed in an index)
/// and the bundle bytes.
pub async fn push_bundle_referrer(
    p: &Pusher,
    repo: &str,
    subject: &Digest,
    subject_size: usize,
    subject_media_type: &str,
    predicate_type: &str,
    label: &str,
) -> Result<(Value, Vec<u8>), String> {
    let bundle = fake_bundle(label);
    let desc = push_bundle_bytes(p, repo, subject, subject_size, subject_media_type, predicate_type, &bundle).await?;
    Ok((desc, bundle))
}

/// Pushes `bundle` (real or not) as a cosign v3 referrer of `subject`, the way cosign 3 stores
/// it; returns the referrer's descriptor as listed in a referrers index.
pub async fn push_bundle_bytes(
    p: &Pusher,
    repo: &str,
    subject: &Digest,
    subject_size: usize,
    subject_media_type: &str,
    predicate_type: &str,
    bundle: &[u8],
) -> Result<Value, String> {
    let bundle_digest = p.blob(repo, bundle).await?;
    let empty_digest = p.blob(repo, b"{}").await?;
    let annotations = json!({
        "dev.sigstore.bundle.content": "dsse-envelope",
        "dev.sigstore.bundle.predicateType": predicate_type,
        "org.opencontainers.image.created": "2025-01-01T00:00:00Z"
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03,
        "config": {"mediaType": EMPTY_CONFIG, "digest": empty_digest.to_string(), "size": 2},
        "layers": [descriptor(BUNDLE_V03, &bundle_digest, bundle.len())],
        "subject": descriptor(subject_media_type, subject, subject_size),
        "annotations": annotations
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = Digest::sha256(&bytes);
    p.manifest(repo, &digest.to_string(), OCI_MANIFEST, &bytes).await?;
    let mut desc = descriptor(OCI_MANIFEST, &digest, bytes.len());
    desc["artifactType"] = json!(BUNDLE_V03);
    desc["annotations"] = annotations;
    Ok(desc)
}

/// Pushes a cosign legacy signature manifest at tag `sha256-<hex>.sig` with these layers
/// (simple-signing payload bytes and the layer annotations); returns the manifest digest.
pub async fn push_signature_layers(p: &Pusher, repo: &str, subject: &Digest, layers: &[(Vec<u8>, Value)]) -> Result<Digest, String> {
    push_cosign_layers(p, repo, &subject.cosign_signature_tag(), SIMPLE_SIGNING, layers).await
}

/// Pushes a cosign legacy attestation manifest at tag `sha256-<hex>.att` with these layers (DSSE
/// envelope bytes and the layer annotations), as `cosign attest` before v3 does; returns the
/// manifest digest.
pub async fn push_attestation_layers(p: &Pusher, repo: &str, subject: &Digest, layers: &[(Vec<u8>, Value)]) -> Result<Digest, String> {
    push_cosign_layers(p, repo, &subject.cosign_attestation_tag(), DSSE_ENVELOPE, layers).await
}

async fn push_cosign_layers(p: &Pusher, repo: &str, tag: &str, media_type: &str, layers: &[(Vec<u8>, Value)]) -> Result<Digest, String> {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (payload, annotations) in layers {
        let d = p.blob(repo, payload).await?;
        diff_ids.push(d.to_string());
        descs.push(json!({"mediaType": media_type, "digest": d.to_string(), "size": payload.len(), "annotations": annotations}));
    }
    let config =
        serde_json::to_vec(&json!({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
            .unwrap();
    let config_digest = p.blob(repo, &config).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": descs
    });
    Ok(p.json_manifest(repo, tag, OCI_MANIFEST, &manifest).await?.0)
}

/// Pushes the referrers tag schema index for `subject` listing `descriptors`.
pub async fn push_referrers_tag(p: &Pusher, repo: &str, subject: &Digest, descriptors: Vec<Value>) -> Result<Digest, String> {
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors});
    Ok(p.json_manifest(repo, &subject.referrers_tag(), OCI_INDEX, &index).await?.0)
}
