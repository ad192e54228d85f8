//! Trust material: the parsed `trusted_root.json` and everything derived from
//! it that verification reuses.
//!
//! Parsing the root, validating its keys and certificates and building the
//! library's `Verifier` happens once per root, not once per pull. The result is
//! immutable and shared behind an `Arc`; the trust root handle
//! (`crate::trust::handle`) swaps it when the root is rotated, and in-flight
//! verifications keep the `Arc` they started with.

use std::path::Path;

use rustls_pki_types::{CertificateDer, TrustAnchor};
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::TimeRange;

use super::error::{one_line, TrustRootError};

/// Upper bound for a trusted_root.json. Real roots are ~10 KiB; this refuses
/// to parse something absurd handed over by a broken mirror.
pub const MAX_TRUSTED_ROOT_BYTES: usize = 4 << 20;

/// A Fulcio certificate usable as a path anchor, with its CA's validity window.
pub(crate) struct FulcioAnchor {
    pub(crate) anchor: TrustAnchor<'static>,
    pub(crate) window: Option<TimeRange>,
}

/// Everything derived from one trusted root. Cheap to share (`Arc`), never mutated.
pub struct TrustMaterial {
    /// The parsed root, kept for reporting and for building views of it.
    root: TrustedRoot,
    /// The library verifier: validated keys, CT keyrings and Fulcio anchors.
    pub(crate) verifier: sigstore_verify::Verifier,
    /// Rekor keys parsed once, for the log checks we perform ourselves
    /// (checkpoint, SETs).
    pub(crate) rekor_keys: super::tlog::RekorKeys,
    /// Fulcio anchors for the legacy `rekord` path, which the library does not cover.
    pub(crate) fulcio_anchors: Vec<FulcioAnchor>,
    /// DER subject and CA window of every Fulcio anchor, to check a verified
    /// leaf's CA against further signing times without another chain walk.
    pub(crate) fulcio_subjects: Vec<(Vec<u8>, Option<TimeRange>)>,
    /// DER of every Fulcio CA certificate: a legacy `chain` annotation that
    /// repeats them adds nothing (they are anchors already) and is dropped.
    pub(crate) fulcio_certs: Vec<Vec<u8>>,
    /// The canonical PEM body of each of `fulcio_certs`: a legacy `chain`
    /// annotation block written so is dropped without decoding it.
    pub(crate) fulcio_pem_bodies: Vec<String>,
    /// (subject DER, SHA-256 of the SPKI) of each Fulcio certificate: the
    /// issuer key hash of the SCT check (step 5, fast mode). `None` if one
    /// could not be read: the library then checks every SCT.
    pub(crate) fulcio_issuers: Option<Vec<(Vec<u8>, [u8; 32])>>,
    /// CT log keys by SCT signature scheme (step 5, fast mode). `None` if
    /// they could not be prepared: the library then checks every SCT (and
    /// reports that problem itself), as it did before fast mode checked them.
    pub(crate) ct_keys: Option<super::sct::CtKeys>,
    /// Timestamp authorities with their certificate chains checked once.
    pub(crate) tsa: Vec<super::timestamp::CachedAuthority>,
    /// sha256 of the JSON this was built from, to report which root decided.
    source_digest: String,
}

impl std::fmt::Debug for TrustMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustMaterial")
            .field("source_digest", &self.source_digest)
            .field("tlogs", &self.root.tlogs.len())
            .field("certificate_authorities", &self.root.certificate_authorities.len())
            .field("ctlogs", &self.root.ctlogs.len())
            .field("timestamp_authorities", &self.root.timestamp_authorities.len())
            .finish()
    }
}

impl TrustMaterial {
    /// Parse a Sigstore TrustedRoot JSON document and prepare it for verification.
    pub fn from_json(json: &str) -> Result<Self, TrustRootError> {
        if json.len() > MAX_TRUSTED_ROOT_BYTES {
            return Err(TrustRootError::Invalid(format!("{} bytes, over the {MAX_TRUSTED_ROOT_BYTES}-byte limit", json.len())));
        }
        let root = TrustedRoot::from_json(json).map_err(|e| TrustRootError::Invalid(one_line(&e.to_string())))?;
        let source_digest = format!("sha256:{}", sigstore_verify::crypto::sha256(json.as_bytes()).to_hex());
        Self::from_root(root, source_digest)
    }

    /// Read and prepare a trusted_root.json file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TrustRootError> {
        let path = path.as_ref();
        let read_error = |reason: String| TrustRootError::Read { path: path.display().to_string(), reason };
        let len = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?.len();
        if len > MAX_TRUSTED_ROOT_BYTES as u64 {
            return Err(read_error(format!("{len} bytes, over the {MAX_TRUSTED_ROOT_BYTES}-byte limit")));
        }
        let json = std::fs::read_to_string(path).map_err(|e| read_error(e.to_string()))?;
        Self::from_json(&json)
    }

    /// The embedded Sigstore public-good production root shipped with the
    /// library (possibly stale; the conformance CLI's default).
    pub fn embedded_production() -> Result<Self, TrustRootError> {
        Self::from_json(sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT)
    }

    /// The embedded Sigstore staging root (`verify-bundle --staging`).
    pub fn embedded_staging() -> Result<Self, TrustRootError> {
        Self::from_json(sigstore_verify::trust_root::SIGSTORE_STAGING_TRUSTED_ROOT)
    }

    fn from_root(root: TrustedRoot, source_digest: String) -> Result<Self, TrustRootError> {
        let invalid = |e: &dyn std::fmt::Display| TrustRootError::Invalid(one_line(&e.to_string()));
        let verifier = sigstore_verify::Verifier::new(&root).map_err(|e| invalid(&e))?;
        let rekor_keys = root.rekor_keys().map_err(|e| invalid(&e))?;
        let rekor_keys = super::tlog::RekorKeys::prepare(&root, rekor_keys);
        let mut fulcio_anchors = Vec::new();
        let mut fulcio_subjects = Vec::new();
        let mut fulcio_certs = Vec::new();
        let mut fulcio_issuers = Some(Vec::new());
        for ca in &root.certificate_authorities {
            for cert in &ca.cert_chain.certificates {
                let der = CertificateDer::from(cert.raw_bytes.as_bytes());
                let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| invalid(&e))?;
                fulcio_anchors.push(FulcioAnchor { anchor: anchor.to_owned(), window: ca.valid_for });
                fulcio_certs.push(cert.raw_bytes.as_bytes().to_vec());
                let der = cert.raw_bytes.as_bytes();
                match (super::certificate::subject_name(der), super::certificate::spki(der)) {
                    (Some(subject), Some(spki)) => {
                        if let Some(issuers) = fulcio_issuers.as_mut() {
                            issuers.push((subject.clone(), super::sct::spki_hash(&spki)));
                        }
                        fulcio_subjects.push((subject, ca.valid_for));
                    }
                    (subject, _) => {
                        fulcio_issuers = None;
                        if let Some(subject) = subject {
                            fulcio_subjects.push((subject, ca.valid_for));
                        }
                    }
                }
            }
        }
        let fulcio_pem_bodies = fulcio_certs.iter().filter_map(|der| super::legacy::trusted_pem_body(der)).collect();
        let tsa = super::timestamp::prepare(&root);
        let ct_keys = super::sct::CtKeys::prepare(&root).ok();
        Ok(Self {
            root,
            verifier,
            rekor_keys,
            fulcio_anchors,
            fulcio_subjects,
            fulcio_certs,
            fulcio_pem_bodies,
            fulcio_issuers,
            ct_keys,
            tsa,
            source_digest,
        })
    }

    /// The parsed trusted root.
    pub fn trusted_root(&self) -> &TrustedRoot {
        &self.root
    }

    /// `sha256:<hex>` of the JSON this material was built from.
    pub fn source_digest(&self) -> &str {
        &self.source_digest
    }
}
