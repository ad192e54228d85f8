//! cosign legacy image signatures: the `sha256-<hex>.sig` tag.
//!
//! Each signature is a layer of media type
//! `application/vnd.dev.cosign.simplesigning.v1+json` whose blob is a small
//! "simple signing" JSON payload and whose annotations carry the signature,
//! certificate, chain, Rekor SET ("bundle") and RFC 3161 timestamp.
//!
//! Those pieces are exactly a Sigstore v0.1 bundle with a message signature
//! over the payload, so after the image-binding checks we rebuild that bundle
//! and let the library verify it. Entries of kind `rekord` (cosign before
//! 2022) are the one thing the library cannot parse; they are verified here
//! with the same primitives (see [`TrustMaterial::verify_rekord`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::error::{one_line, MaterialError};
use crate::digest::Digest;

mod verify;

/// Media type of a cosign simple-signing layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation holding the base64 signature over the payload.
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// Annotation holding the PEM signing certificate.
pub const ANNOTATION_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
/// Annotation holding the PEM intermediate chain.
pub const ANNOTATION_CHAIN: &str = "dev.sigstore.cosign/chain";
/// Annotation holding the Rekor SET bundle JSON.
pub const ANNOTATION_BUNDLE: &str = "dev.sigstore.cosign/bundle";
/// Annotation holding the RFC 3161 timestamp JSON.
pub const ANNOTATION_RFC3161: &str = "dev.sigstore.cosign/rfc3161timestamp";
/// `critical.type` of a cosign image signature payload.
pub const CRITICAL_TYPE: &str = "cosign container image signature";

/// Real payloads are ~300 bytes; optional annotations rarely add more than a few KiB.
const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Bound for each annotation value (certificates and chains are a few KiB).
pub(crate) const MAX_ANNOTATION_BYTES: usize = 256 << 10;

/// One cosign legacy signature: a simple-signing layer and its annotations.
#[derive(Debug, Clone, Default)]
pub struct LegacySignature {
    /// The layer blob (the simple-signing JSON payload).
    pub payload: Vec<u8>,
    /// The layer descriptor's digest, when the signature came from a registry.
    pub layer_digest: Option<Digest>,
    /// `dev.cosignproject.cosign/signature`: base64 signature over the payload.
    pub signature: String,
    /// `dev.sigstore.cosign/certificate`: PEM leaf certificate (keyless).
    pub certificate: Option<String>,
    /// `dev.sigstore.cosign/chain`: PEM intermediates (keyless).
    pub chain: Option<String>,
    /// `dev.sigstore.cosign/bundle`: Rekor SET bundle JSON.
    pub rekor_bundle: Option<String>,
    /// `dev.sigstore.cosign/rfc3161timestamp`: `{"SignedRFC3161Timestamp": "<base64>"}`.
    pub rfc3161_timestamp: Option<String>,
}

/// The part of an OCI descriptor a signature layer needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayerDescriptor {
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl LegacySignature {
    /// Build from a layer descriptor (JSON, as in the `.sig` manifest) and its blob.
    pub fn from_layer_json(descriptor: &str, payload: Vec<u8>) -> Result<Self, MaterialError> {
        bounded("layer descriptor", descriptor.len(), MAX_ANNOTATION_BYTES * 4)?;
        let descriptor: LayerDescriptor = serde_json::from_str(descriptor)
            .map_err(|e| MaterialError::MalformedLegacy(format!("layer descriptor: {}", one_line(&e.to_string()))))?;
        Self::from_layer(&descriptor.media_type, &descriptor.digest, &descriptor.annotations, payload)
    }

    /// Build from a layer's media type, digest and annotations, and its blob.
    pub fn from_layer(
        media_type: &str,
        digest: &str,
        annotations: &BTreeMap<String, String>,
        payload: Vec<u8>,
    ) -> Result<Self, MaterialError> {
        let layer_digest = check_layer(media_type, SIMPLE_SIGNING_MEDIA_TYPE, digest, annotations)?;
        let signature = annotations
            .get(ANNOTATION_SIGNATURE)
            .cloned()
            .ok_or_else(|| MaterialError::MalformedLegacy(format!("no {ANNOTATION_SIGNATURE} annotation")))?;
        Ok(Self {
            payload,
            layer_digest: Some(layer_digest),
            signature,
            certificate: annotations.get(ANNOTATION_CERTIFICATE).cloned(),
            chain: annotations.get(ANNOTATION_CHAIN).cloned(),
            rekor_bundle: annotations.get(ANNOTATION_BUNDLE).cloned(),
            rfc3161_timestamp: annotations.get(ANNOTATION_RFC3161).cloned(),
        })
    }

    /// The annotations this signature would carry on a `.sig` layer.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert(ANNOTATION_SIGNATURE.to_string(), self.signature.clone());
        let optional = [
            (ANNOTATION_CERTIFICATE, &self.certificate),
            (ANNOTATION_CHAIN, &self.chain),
            (ANNOTATION_BUNDLE, &self.rekor_bundle),
            (ANNOTATION_RFC3161, &self.rfc3161_timestamp),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                out.insert(name.to_string(), value.clone());
            }
        }
        out
    }
}

/// The checks every cosign legacy layer (`.sig` or `.att`) gets before its pieces are read:
/// its media type is `want`, each annotation value is within [`MAX_ANNOTATION_BYTES`], and its
/// digest parses (returned).
pub(crate) fn check_layer(
    media_type: &str,
    want: &str,
    digest: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Digest, MaterialError> {
    if media_type != want {
        return Err(MaterialError::MalformedLegacy(format!("layer media type is {:?}, want {want:?}", one_line(media_type))));
    }
    for value in annotations.values() {
        bounded("annotation", value.len(), MAX_ANNOTATION_BYTES)?;
    }
    super::error::parse_digest(digest)
}

pub(crate) fn bounded(what: &'static str, size: usize, limit: usize) -> Result<(), MaterialError> {
    if size > limit {
        return Err(MaterialError::TooLarge { what, size, limit });
    }
    Ok(())
}

/// The `dev.sigstore.cosign/bundle` annotation: a Rekor v1 SET and what it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekorSetBundle {
    /// The SET (signature by the log key).
    pub set: Vec<u8>,
    /// base64 canonicalized entry body, exactly as logged.
    pub body: String,
    /// Integrated time, seconds since the epoch.
    pub integrated_time: i64,
    /// Log index.
    pub log_index: i64,
    /// Raw 32-byte log ID.
    pub log_id: Vec<u8>,
}

#[derive(Deserialize)]
struct WireSetBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: WireSetPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSetPayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

impl RekorSetBundle {
    /// Parse the annotation value.
    pub fn parse(json: &str) -> Result<Self, MaterialError> {
        Self::parse_with_body(json).map(|(set, _)| set)
    }

    /// [`Self::parse`], also handing back the decoded body (decoded once).
    fn parse_with_body(json: &str) -> Result<(Self, Vec<u8>), MaterialError> {
        bounded("Rekor bundle annotation", json.len(), MAX_ANNOTATION_BYTES)?;
        let malformed = |what: &str| MaterialError::MalformedLegacy(format!("Rekor bundle: {what}"));
        let wire: WireSetBundle = serde_json::from_str(json).map_err(|e| malformed(&one_line(&e.to_string())))?;
        let set = b64(&wire.set).ok_or_else(|| malformed("SignedEntryTimestamp is not base64"))?;
        let log_id = hex::decode(&wire.payload.log_id).map_err(|_| malformed("logID is not hex"))?;
        if log_id.len() != 32 {
            return Err(malformed("logID is not 32 bytes"));
        }
        if wire.payload.log_index < 0 || wire.payload.integrated_time < 0 {
            return Err(malformed("negative logIndex or integratedTime"));
        }
        let body = b64(&wire.payload.body).ok_or_else(|| malformed("body is not base64"))?;
        let set =
            Self { set, body: wire.payload.body, integrated_time: wire.payload.integrated_time, log_index: wire.payload.log_index, log_id };
        Ok((set, body))
    }

    /// The logged entry body (JSON).
    pub fn body_bytes(&self) -> Vec<u8> {
        b64(&self.body).unwrap_or_default()
    }

    pub(crate) fn kind(&self) -> Result<(String, String), MaterialError> {
        Self::kind_of(&self.body_bytes())
    }

    /// `kind` and `apiVersion` of a decoded entry body.
    fn kind_of(body: &[u8]) -> Result<(String, String), MaterialError> {
        // Only the two top-level fields: no `Value` tree of the whole body.
        // A field that is absent or not a string reads as "", as before.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Field {
            Text(String),
            Other(serde::de::IgnoredAny),
        }
        #[derive(Deserialize)]
        struct Head {
            kind: Option<Field>,
            #[serde(rename = "apiVersion")]
            api_version: Option<Field>,
        }
        let text = |field: Option<Field>| match field {
            Some(Field::Text(text)) => text,
            _ => String::new(),
        };
        // `Value` keeps the last of repeated keys; so does this, where a
        // struct would refuse the duplicate.
        let head: Head = serde_json::from_slice(body).or_else(|_| {
            serde_json::from_slice::<serde_json::Value>(body)
                .map(|v| Head {
                    kind: v.get("kind").and_then(|v| v.as_str()).map(|s| Field::Text(s.into())),
                    api_version: v.get("apiVersion").and_then(|v| v.as_str()).map(|s| Field::Text(s.into())),
                })
                .map_err(|e| MaterialError::MalformedLegacy(format!("Rekor entry body: {}", one_line(&e.to_string()))))
        })?;
        Ok((text(head.kind), text(head.api_version)))
    }
}

pub(crate) fn b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

/// Decode `-----BEGIN CERTIFICATE-----` blocks (RFC 7468, strict base64,
/// whitespace ignored). Annotations are small and signed material is checked
/// later, so this is deliberately simple: anything but blocks and whitespace,
/// more than 8 blocks, or none at all is an error.
pub(crate) fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    Ok(pem_blocks(text, |_| false)?.into_iter().flatten().collect())
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// [`pem_certificates`], with `None` for each block whose body (the text
/// between the BEGIN and END lines) `known` recognizes: such a block is
/// counted and its place kept, but not decoded.
fn pem_blocks(text: &str, known: impl Fn(&[u8]) -> bool) -> Result<Vec<Option<Vec<u8>>>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let body = rest.strip_prefix(PEM_BEGIN).ok_or("expected -----BEGIN CERTIFICATE-----")?;
        let end = body.find(PEM_END).ok_or("missing -----END CERTIFICATE-----")?;
        if known(&body.as_bytes()[..end]) {
            out.push(None);
        } else {
            let b64: Vec<u8> = body.as_bytes()[..end].iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
            let der = b64_strict(&b64).ok_or("certificate is not base64")?;
            if der.is_empty() {
                return Err("empty certificate".into());
            }
            out.push(Some(der));
        }
        if out.len() > 8 {
            return Err("more than 8 certificates".into());
        }
        rest = body[end + PEM_END.len()..].trim_start();
    }
    if out.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(out)
}

/// The body of `der`'s canonical PEM block (64-column base64, LF line
/// ends: what cosign writes), as [`pem_blocks`] sees it between the BEGIN
/// and END lines. It decodes to exactly `der`.
pub(super) fn trusted_pem_body(der: &[u8]) -> Option<String> {
    let pem = super::direct::canonical_pem(der)?;
    let body = pem.strip_prefix(PEM_BEGIN)?.strip_suffix('\n')?.strip_suffix(PEM_END)?;
    Some(body.to_string())
}

fn b64_strict(s: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain block written as the trust root's certificate is skipped
    /// undecoded only where decoding it would give that very certificate;
    /// any other spelling is decoded as before.
    #[test]
    fn a_canonically_written_trusted_block_is_that_certificate() {
        let trusted: Vec<u8> = (0..700u32).map(|i| (i * 13 + 5) as u8).collect();
        let other: Vec<u8> = (0..300u32).map(|i| (i * 7 + 1) as u8).collect();
        let body = trusted_pem_body(&trusted).unwrap();
        let pem = |der: &[u8]| super::super::direct::canonical_pem(der).unwrap();
        let text = format!("{}{}", pem(&trusted), pem(&other));
        assert_eq!(pem_certificates(&text).unwrap(), vec![trusted.clone(), other.clone()]);
        let known = |b: &[u8]| b == body.as_bytes();
        assert_eq!(pem_blocks(&text, known).unwrap(), vec![None, Some(other.clone())]);
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(pem_blocks(&crlf, known).unwrap(), vec![Some(trusted.clone()), Some(other)]);
        // Skipped blocks still count towards the bounds.
        let nine = pem(&trusted).repeat(9);
        assert_eq!(pem_blocks(&nine, known).unwrap_err(), "more than 8 certificates");
        assert_eq!(pem_certificates(&nine).unwrap_err(), "more than 8 certificates");
    }
}
