//! cosign legacy attestations: the `sha256-<hex>.att` tag.
//!
//! `cosign attest` before v3 (without `--new-bundle-format`) pushes each attestation as a layer
//! of media type `application/vnd.dsse.envelope.v1+json` whose blob is the DSSE envelope (an
//! in-toto statement, payload type `application/vnd.in-toto+json`) and whose annotations carry
//! the signing certificate, its chain, the Rekor SET (`dev.sigstore.cosign/bundle`) and,
//! optionally, an RFC 3161 timestamp. The log entry is of kind `intoto/0.0.2` (cosign 2.x) or
//! `dsse/0.0.1` (later cosign with the DSSE entry type).
//!
//! As for `.sig` layers ([`super::legacy`]), those pieces are exactly a Sigstore v0.1 bundle
//! with a DSSE envelope and a SET-only log entry, so the layer is rebuilt into that bundle and
//! goes through the same path as every attestation bundle ([`super::attestation`]): subject,
//! DSSE signature over the PAE, chain to a trusted Fulcio CA at the signing time, SET by a
//! trusted Rekor key over the canonical payload, log entry consistent with the envelope (payload
//! hash, payload type, signature, signer), signer identity, then the policy's conditions.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{one_line, MaterialError, TlogError, VerifyError};
use super::legacy::{
    b64, bounded, check_layer, pem_certificates, RekorSetBundle, ANNOTATION_BUNDLE, ANNOTATION_CERTIFICATE, ANNOTATION_CHAIN,
    ANNOTATION_RFC3161,
};
use crate::digest::Digest;

/// Media type of a cosign attestation layer (the DSSE envelope).
pub const DSSE_ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Annotation cosign puts on an attestation layer naming its predicate type (unsigned: only
/// the signed statement's `predicateType` is judged).
pub const ANNOTATION_PREDICATE_TYPE: &str = "predicateType";
/// Media type of the rebuilt bundle.
const BUNDLE_V01: &str = "application/vnd.dev.sigstore.bundle+json;version=0.1";
/// Envelopes are statements of a few KiB; SLSA provenance with many dependencies stays far
/// below this.
const MAX_ENVELOPE_BYTES: usize = 4 << 20;

/// One layer of a cosign `.att` manifest: the DSSE envelope and its annotations.
#[derive(Debug, Clone, Default)]
pub struct LegacyAttestation {
    /// The layer blob: the DSSE envelope JSON.
    pub envelope: Vec<u8>,
    /// The layer descriptor's digest, when the attestation came from a registry.
    pub layer_digest: Option<Digest>,
    /// `dev.sigstore.cosign/certificate`: PEM leaf certificate (keyless).
    pub certificate: Option<String>,
    /// `dev.sigstore.cosign/chain`: PEM intermediates (keyless).
    pub chain: Option<String>,
    /// `dev.sigstore.cosign/bundle`: Rekor SET bundle JSON.
    pub rekor_bundle: Option<String>,
    /// `dev.sigstore.cosign/rfc3161timestamp`: `{"SignedRFC3161Timestamp": "<base64>"}`.
    pub rfc3161_timestamp: Option<String>,
    /// `predicateType` annotation (informational).
    pub predicate_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEnvelope {
    payload_type: String,
    payload: String,
    signatures: Vec<WireSignature>,
}

#[derive(Deserialize)]
struct WireSignature {
    #[serde(default)]
    keyid: Option<String>,
    sig: String,
}

impl LegacyAttestation {
    /// Build from a layer's media type, digest and annotations, and its blob.
    pub fn from_layer(
        media_type: &str,
        digest: &str,
        annotations: &BTreeMap<String, String>,
        envelope: Vec<u8>,
    ) -> Result<Self, MaterialError> {
        let layer_digest = check_layer(media_type, DSSE_ENVELOPE_MEDIA_TYPE, digest, annotations)?;
        let get = |name: &str| annotations.get(name).cloned();
        Ok(Self {
            envelope,
            layer_digest: Some(layer_digest),
            certificate: get(ANNOTATION_CERTIFICATE),
            chain: get(ANNOTATION_CHAIN),
            rekor_bundle: get(ANNOTATION_BUNDLE),
            rfc3161_timestamp: get(ANNOTATION_RFC3161),
            predicate_type: get(ANNOTATION_PREDICATE_TYPE),
        })
    }

    /// The annotations this attestation carries on an `.att` layer.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let fields = [
            (ANNOTATION_CERTIFICATE, &self.certificate),
            (ANNOTATION_CHAIN, &self.chain),
            (ANNOTATION_BUNDLE, &self.rekor_bundle),
            (ANNOTATION_RFC3161, &self.rfc3161_timestamp),
            (ANNOTATION_PREDICATE_TYPE, &self.predicate_type),
        ];
        fields.into_iter().filter_map(|(name, value)| value.as_ref().map(|v| (name.to_string(), v.clone()))).collect()
    }

    /// The Sigstore v0.1 bundle (JSON) these pieces amount to: the envelope, the certificate
    /// and chain (or a key hint), the log entry with its SET, and the timestamp. Only the form is
    /// checked here (bounds, layer digest, encodings, a supported entry kind); every
    /// cryptographic check is the bundle verification's.
    pub fn to_bundle_json(&self) -> Result<Vec<u8>, VerifyError> {
        let malformed = |what: String| MaterialError::MalformedLegacy(what);
        bounded("DSSE envelope", self.envelope.len(), MAX_ENVELOPE_BYTES)?;
        if let Some(layer_digest) = &self.layer_digest {
            let actual = Digest::compute(layer_digest.algorithm(), &self.envelope);
            if &actual != layer_digest {
                return Err(super::error::BindingError::LayerDigest { got: actual.to_string(), want: layer_digest.to_string() }.into());
            }
        }
        let envelope: WireEnvelope =
            serde_json::from_slice(&self.envelope).map_err(|e| malformed(format!("DSSE envelope: {}", one_line(&e.to_string()))))?;
        if b64(&envelope.payload).is_none() {
            return Err(malformed("DSSE envelope: payload is not base64".into()).into());
        }
        if envelope.signatures.len() != 1 {
            return Err(malformed(format!("DSSE envelope has {} signatures, want 1", envelope.signatures.len())).into());
        }
        let signatures: Vec<Value> =
            envelope.signatures.iter().map(|s| json!({"sig": s.sig, "keyid": s.keyid.clone().unwrap_or_default()})).collect();
        let mut material = serde_json::Map::new();
        match self.certificate.as_deref().filter(|pem| !pem.trim().is_empty()) {
            Some(pem) => {
                let mut certificates = match pem_certificates(pem).as_deref() {
                    Ok([one]) => vec![one.clone()],
                    Ok(_) => return Err(malformed(format!("{ANNOTATION_CERTIFICATE}: want exactly one certificate")).into()),
                    Err(e) => return Err(malformed(format!("{ANNOTATION_CERTIFICATE}: {e}")).into()),
                };
                if let Some(chain) = self.chain.as_deref().filter(|pem| !pem.trim().is_empty()) {
                    certificates.extend(pem_certificates(chain).map_err(|e| malformed(format!("{ANNOTATION_CHAIN}: {e}")))?);
                }
                let raw: Vec<Value> = certificates.iter().map(|der| json!({"rawBytes": B64.encode(der)})).collect();
                material.insert("x509CertificateChain".into(), json!({"certificates": raw}));
            }
            // Key-signed: the configured key verifies, as for a `.sig` layer.
            None => {
                material.insert("publicKey".into(), json!({"hint": ""}));
            }
        }
        let Some(set) = self.rekor_bundle.as_deref() else {
            // cosign logs every attestation unless told not to; without the SET there is no
            // proof it was logged.
            return Err(TlogError::NoProof(format!("no {ANNOTATION_BUNDLE} annotation")).into());
        };
        let set = RekorSetBundle::parse(set)?;
        let (kind, version) = set.kind()?;
        if !matches!((kind.as_str(), version.as_str()), ("intoto", "0.0.2") | ("dsse", "0.0.1")) {
            return Err(MaterialError::UnsupportedBundle(format!(
                "Rekor entry kind {}/{} for a cosign attestation (want intoto/0.0.2 or dsse/0.0.1)",
                one_line(&kind),
                one_line(&version)
            ))
            .into());
        }
        material.insert(
            "tlogEntries".into(),
            json!([{
                "logIndex": set.log_index.to_string(),
                "logId": {"keyId": B64.encode(&set.log_id)},
                "kindVersion": {"kind": kind, "version": version},
                "integratedTime": set.integrated_time.to_string(),
                "inclusionPromise": {"signedEntryTimestamp": B64.encode(&set.set)},
                "canonicalizedBody": set.body,
            }]),
        );
        if let Some(timestamp) = self.rfc3161_timestamp.as_deref() {
            #[derive(Deserialize)]
            struct Wire {
                #[serde(rename = "SignedRFC3161Timestamp")]
                signed: String,
            }
            let wire: Wire =
                serde_json::from_str(timestamp).map_err(|e| malformed(format!("{ANNOTATION_RFC3161}: {}", one_line(&e.to_string()))))?;
            if b64(&wire.signed).is_none() {
                return Err(malformed(format!("{ANNOTATION_RFC3161} is not base64")).into());
            }
            material.insert("timestampVerificationData".into(), json!({"rfc3161Timestamps": [{"signedTimestamp": wire.signed.trim()}]}));
        }
        let bundle = json!({
            "mediaType": BUNDLE_V01,
            "verificationMaterial": material,
            "dsseEnvelope": {
                "payload": envelope.payload,
                "payloadType": envelope.payload_type,
                "signatures": signatures,
            },
        });
        Ok(serde_json::to_vec(&bundle).unwrap_or_default())
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
