//! Verifying a cosign legacy signature: the binding of its simple-signing payload to the layer
//! and the image, then the equivalent Sigstore v0.1 bundle (or, for `rekord` entries, the same
//! checks done here with the library's primitives).

use serde::Deserialize;
use sigstore_verify::types::bundle::{
    InclusionPromise, LogId, MessageDigest, MessageSignature, PublicKeyIdentifier, Rfc3161Timestamp, TimestampVerificationData,
    VerificationMaterial, X509Certificate,
};
use sigstore_verify::types::{
    Bundle, CanonicalizedBody, DerCertificate, DigestBytes, KindVersion, LogIndex, LogKeyId, MediaType, SignatureBytes, SignatureContent,
    SignedTimestamp, TimestampToken, TransparencyLogEntry, VerificationMaterialContent,
};

use super::{
    b64, bounded, pem_blocks, pem_certificates, LegacySignature, RekorSetBundle, ANNOTATION_BUNDLE, ANNOTATION_CERTIFICATE,
    ANNOTATION_CHAIN, ANNOTATION_RFC3161, ANNOTATION_SIGNATURE, CRITICAL_TYPE, MAX_PAYLOAD_BYTES,
};
use crate::digest::{Digest, DigestAlgorithm};
use crate::verify::bundle::{ArtifactRef, ExpectedSigner, LogEntrySummary, Signer, VerifiedSignature};
use crate::verify::certificate::CertificateIdentity;
use crate::verify::error::{one_line, BindingError, CertificateError, MaterialError, SignatureError, TlogError, VerifyError};
use crate::verify::tlog;
use crate::verify::trust::TrustMaterial;

/// The simple-signing payload fields we check.
#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    type_: String,
    image: CriticalImage,
}

#[derive(Deserialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Parsed, bound-to-the-image pieces of a legacy signature.
struct Parsed {
    signature: Vec<u8>,
    leaf: Option<DerCertificate>,
    chain: Vec<DerCertificate>,
    set: Option<RekorSetBundle>,
    /// The SET bundle's entry body, decoded (`set.body_bytes()`), until
    /// taken for the hashedrekord bundle.
    set_body: Vec<u8>,
    timestamp: Option<Vec<u8>>,
}

impl TrustMaterial {
    /// Verify a cosign legacy `.sig` layer for the image `image`.
    ///
    /// Step 2 (binding) happens first and is cheap: payload digest equals the
    /// layer digest, `critical.type`, and the signed manifest digest equals
    /// the pulled one. Steps 3 to 8 run on the equivalent v0.1 bundle.
    pub fn verify_legacy(
        &self,
        sig: &LegacySignature,
        image: &Digest,
        signer: ExpectedSigner<'_>,
    ) -> Result<VerifiedSignature, VerifyError> {
        // (1) Bounds.
        bounded("simple-signing payload", sig.payload.len(), MAX_PAYLOAD_BYTES)?;
        // (2) Bind the payload to its layer and to the pulled image.
        if let Some(layer_digest) = &sig.layer_digest {
            let actual = Digest::compute(layer_digest.algorithm(), &sig.payload);
            if &actual != layer_digest {
                return Err(BindingError::LayerDigest { got: actual.to_string(), want: layer_digest.to_string() }.into());
            }
        }
        let payload: SimpleSigning = serde_json::from_slice(&sig.payload)
            .map_err(|e| MaterialError::MalformedLegacy(format!("simple-signing payload: {}", one_line(&e.to_string()))))?;
        if payload.critical.type_ != CRITICAL_TYPE {
            return Err(BindingError::CriticalType { got: one_line(&payload.critical.type_) }.into());
        }
        let signed: Digest = payload.critical.image.docker_manifest_digest.parse().map_err(|_| BindingError::ManifestDigest {
            got: one_line(&payload.critical.image.docker_manifest_digest),
            want: image.to_string(),
        })?;
        if &signed != image {
            return Err(BindingError::ManifestDigest { got: signed.to_string(), want: image.to_string() }.into());
        }
        self.verify_legacy_payload(sig, signer)
    }

    /// Steps 3 to 8 for a legacy signature whose payload is already bound.
    pub fn verify_legacy_payload(&self, sig: &LegacySignature, signer: ExpectedSigner<'_>) -> Result<VerifiedSignature, VerifyError> {
        let mut parsed = parse_pieces(sig, &self.fulcio_certs, &self.fulcio_pem_bodies)?;
        match (&parsed.leaf, signer) {
            (None, ExpectedSigner::Certificate) => {
                return Err(CertificateError::WrongKind("signed with a public key, not a Fulcio certificate".into()).into())
            }
            (Some(_), ExpectedSigner::Key(_)) => {
                return Err(CertificateError::WrongKind("signed with a Fulcio certificate, not a public key".into()).into())
            }
            _ => {}
        }
        let body = std::mem::take(&mut parsed.set_body);
        let Some(set) = &parsed.set else {
            // (6) cosign uploads every signature to Rekor unless told not to;
            //     without the SET there is no proof the signature was logged.
            return Err(TlogError::NoProof(format!("no {ANNOTATION_BUNDLE} annotation")).into());
        };
        let (kind, version) = RekorSetBundle::kind_of(&body)?;
        match (kind.as_str(), version.as_str()) {
            ("hashedrekord", "0.0.1") => self.verify_as_bundle(sig, &parsed, set, body, signer),
            ("rekord", "0.0.1") => self.verify_rekord(sig, &parsed, set, signer),
            _ => Err(MaterialError::UnsupportedBundle(format!(
                "Rekor entry kind {}/{} for a cosign signature",
                one_line(&kind),
                one_line(&version)
            ))
            .into()),
        }
    }

    /// hashedrekord entries: rebuild the v0.1 bundle and let the library verify it.
    fn verify_as_bundle(
        &self,
        sig: &LegacySignature,
        parsed: &Parsed,
        set: &RekorSetBundle,
        body: Vec<u8>,
        signer: ExpectedSigner<'_>,
    ) -> Result<VerifiedSignature, VerifyError> {
        let bundle = to_bundle(sig, parsed, set, body, signer)?;
        self.verify_bundle(&bundle, ArtifactRef::Bytes(&sig.payload), signer)
    }

    /// Verify a bare Rekor SET bundle (the `dev.sigstore.cosign/bundle`
    /// annotation) against the trusted logs: step 6 on its own.
    pub fn verify_rekor_set_bundle(&self, set: &RekorSetBundle) -> Result<LogEntrySummary, VerifyError> {
        // (6) The log must be trusted and its key valid at the integrated time.
        tlog::verify_set_parts(&self.rekor_keys, &set.body, set.integrated_time, set.log_index, &set.log_id, &set.set)?;
        // (3) An integrated time from the future is a forged or broken log.
        let time = timestamp(set.integrated_time)?;
        if time > jiff::Timestamp::now() {
            return Err(TlogError::IntegratedTime(format!("{time} is in the future")).into());
        }
        let (kind, version) = set.kind()?;
        Ok(LogEntrySummary {
            log_id: hex::encode(&set.log_id),
            log_index: set.log_index as u64,
            kind: format!("{}/{}", one_line(&kind), one_line(&version)),
            integrated_time: Some(time.to_string()),
        })
    }

    /// `rekord/0.0.1` entries (cosign before 2022), which the library cannot
    /// parse: the same checks, in library order, with library primitives.
    fn verify_rekord(
        &self,
        sig: &LegacySignature,
        parsed: &Parsed,
        set: &RekorSetBundle,
        signer: ExpectedSigner<'_>,
    ) -> Result<VerifiedSignature, VerifyError> {
        // (3) Verified times: the SET-authenticated integrated time, and any
        //     RFC 3161 timestamp over the signature.
        let entry = self.verify_rekor_set_bundle(set)?;
        let mut times = vec![timestamp(set.integrated_time)?];
        if let Some(token) = &parsed.timestamp {
            times.push(self.verify_timestamp_token(token, &parsed.signature)?);
        }
        // (4) Chain and validity at every verified time; (5) SCT.
        let (public_key, identity) = match (&parsed.leaf, signer) {
            (Some(leaf), ExpectedSigner::Certificate) => {
                let info = sigstore_verify::crypto::parse_certificate_info(leaf)
                    .map_err(|e| CertificateError::Malformed(one_line(&e.to_string())))?;
                for time in &times {
                    self.verify_fulcio_chain(leaf, &parsed.chain, *time)?;
                    if *time < info.not_before {
                        return Err(
                            CertificateError::NotYetValid { time: time.to_string(), not_before: info.not_before.to_string() }.into()
                        );
                    }
                    if *time > info.not_after {
                        return Err(CertificateError::Expired { time: time.to_string(), not_after: info.not_after.to_string() }.into());
                    }
                }
                // Certificates of the rekord era predate Fulcio's CT log. One
                // that carries an SCT is from a later issuer; verifying its SCT
                // is the library's job, which cannot parse this entry kind, so
                // refuse rather than skip the check.
                if has_embedded_sct(leaf.as_bytes()) {
                    return Err(CertificateError::Sct("SCT on a certificate logged as rekord/0.0.1 is not supported".into()).into());
                }
                (info.public_key.clone(), Some(CertificateIdentity::new(&info, leaf.as_bytes())))
            }
            (None, ExpectedSigner::Key(key)) => (key.der().clone(), None),
            _ => {
                return Err(CertificateError::WrongKind("signer kind mismatch".into()).into());
            }
        };
        // (7) The signature over the payload.
        let algorithm = sigstore_verify::crypto::KeyAlgorithm::from_spki(&public_key)
            .map_err(|e| SignatureError::Unsupported(one_line(&e.to_string())))?;
        sigstore_verify::crypto::verify_signature(
            &public_key,
            &sig.payload,
            &SignatureBytes::from_bytes(&parsed.signature),
            legacy_scheme(algorithm),
        )
        .map_err(|e| SignatureError::Invalid(one_line(&e.to_string())))?;
        // (8) The logged entry is this payload, signature and signer.
        check_rekord_body(set, sig, parsed, &public_key)?;
        let signer = match (identity, signer) {
            (Some(identity), _) => Signer::Certificate(identity),
            (None, ExpectedSigner::Key(key)) => {
                Signer::Key { fingerprint: key.fingerprint().to_string(), algorithm: key.kind().to_string() }
            }
            (None, ExpectedSigner::Certificate) => return Err(CertificateError::WrongKind("signer kind mismatch".into()).into()),
        };
        let mut signing_times: Vec<String> = times.iter().map(ToString::to_string).collect();
        signing_times.sort();
        signing_times.dedup();
        Ok(VerifiedSignature { signer, signing_times, tlog_entries: vec![entry], skipped_timestamps: Vec::new() })
    }

    fn verify_timestamp_token(&self, token: &[u8], signature: &[u8]) -> Result<jiff::Timestamp, VerifyError> {
        Ok(crate::verify::timestamp::verify(&self.tsa, token, signature)?)
    }

    pub(in crate::verify) fn verify_fulcio_chain(
        &self,
        leaf: &DerCertificate,
        chain: &[DerCertificate],
        time: jiff::Timestamp,
    ) -> Result<(), VerifyError> {
        use rustls_pki_types::{CertificateDer, UnixTime};
        /// id-kp-codeSigning, 1.3.6.1.5.5.7.3.3, DER contents.
        const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
        // Borrowed views of the owned anchors (a clone copies three buffers each).
        let anchors: Vec<rustls_pki_types::TrustAnchor<'_>> = self
            .fulcio_anchors
            .iter()
            .filter(|a| a.window.is_none_or(|w| w.contains(time)))
            .map(|a| rustls_pki_types::TrustAnchor {
                subject: rustls_pki_types::Der::from(a.anchor.subject.as_ref()),
                subject_public_key_info: rustls_pki_types::Der::from(a.anchor.subject_public_key_info.as_ref()),
                name_constraints: a.anchor.name_constraints.as_ref().map(|n| rustls_pki_types::Der::from(n.as_ref())),
            })
            .collect();
        if anchors.is_empty() {
            return Err(CertificateError::NoValidAuthority { time: time.to_string() }.into());
        }
        let intermediates: Vec<CertificateDer<'_>> = chain.iter().map(|c| CertificateDer::from(c.as_bytes())).collect();
        let leaf_der = CertificateDer::from(leaf.as_bytes());
        let end_entity =
            webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| CertificateError::Malformed(one_line(&format!("{e:?}"))))?;
        let seconds = u64::try_from(time.as_second()).unwrap_or(0);
        end_entity
            .verify_for_usage(
                sigstore_verify::crypto::WEBPKI_VERIFICATION_ALGS,
                &anchors,
                &intermediates,
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds)),
                webpki::KeyUsage::required(CODE_SIGNING),
                None,
                None,
            )
            .map_err(|e| {
                VerifyError::from_library(sigstore_verify::Error::Certificate(sigstore_verify::CertificateError::ChainInvalid(format!(
                    "{e:?}"
                ))))
            })?;
        Ok(())
    }
}

fn timestamp(seconds: i64) -> Result<jiff::Timestamp, TlogError> {
    jiff::Timestamp::from_second(seconds).map_err(|e| TlogError::IntegratedTime(one_line(&e.to_string())))
}

/// cosign signs with SHA-256 except on P-384 keys (SHA-384).
fn legacy_scheme(algorithm: sigstore_verify::crypto::KeyAlgorithm) -> sigstore_verify::crypto::SigningScheme {
    use sigstore_verify::crypto::{KeyAlgorithm, SigningScheme};
    match algorithm {
        KeyAlgorithm::EcdsaP384 => SigningScheme::EcdsaP384Sha384,
        other => other.default_signing_scheme(),
    }
}

fn has_embedded_sct(leaf_der: &[u8]) -> bool {
    use x509_cert::der::Decode;
    const SCT_OID: &str = "1.3.6.1.4.1.11129.2.4.2";
    x509_cert::Certificate::from_der(leaf_der)
        .ok()
        .and_then(|c| c.tbs_certificate.extensions)
        .is_some_and(|exts| exts.iter().any(|e| e.extn_id.to_string() == SCT_OID))
}

/// Decode the annotation values. Step 1.
/// `trusted_pem`: the PEM bodies of `trusted`, as [`trusted_pem_body`] writes them.
fn parse_pieces(sig: &LegacySignature, trusted: &[Vec<u8>], trusted_pem: &[String]) -> Result<Parsed, MaterialError> {
    let malformed = |what: String| MaterialError::MalformedLegacy(what);
    let signature =
        b64(&sig.signature).filter(|s| !s.is_empty()).ok_or_else(|| malformed(format!("{ANNOTATION_SIGNATURE} is not base64")))?;
    let leaf = sig
        .certificate
        .as_deref()
        .filter(|pem| !pem.trim().is_empty())
        .map(|pem| match pem_certificates(pem).as_deref() {
            Ok([one]) => Ok(DerCertificate::new(one.clone())),
            Ok(_) => Err(malformed(format!("{ANNOTATION_CERTIFICATE}: want exactly one certificate"))),
            Err(e) => Err(malformed(format!("{ANNOTATION_CERTIFICATE}: {e}"))),
        })
        .transpose()?;
    let chain = match sig.chain.as_deref() {
        Some(pem) => split_pem_certificates(pem, trusted, trusted_pem).map_err(|e| malformed(format!("{ANNOTATION_CHAIN}: {e}")))?,
        None => Vec::new(),
    };
    let (set, set_body) = match sig.rekor_bundle.as_deref().map(RekorSetBundle::parse_with_body).transpose()? {
        Some((set, body)) => (Some(set), body),
        None => (None, Vec::new()),
    };
    let timestamp = match sig.rfc3161_timestamp.as_deref() {
        Some(json) => {
            #[derive(Deserialize)]
            struct Wire {
                #[serde(rename = "SignedRFC3161Timestamp")]
                signed: String,
            }
            let wire: Wire =
                serde_json::from_str(json).map_err(|e| malformed(format!("{ANNOTATION_RFC3161}: {}", one_line(&e.to_string()))))?;
            Some(b64(&wire.signed).ok_or_else(|| malformed(format!("{ANNOTATION_RFC3161} is not base64")))?)
        }
        None => None,
    };
    Ok(Parsed { signature, leaf, chain, set, set_body, timestamp })
}

/// Split concatenated PEM certificates, leaving out the ones the trust root
/// already holds (they are path anchors; repeating them only costs time).
/// A block written exactly as [`trusted_pem_body`] writes a trusted
/// certificate is that certificate: it is dropped without being decoded.
fn split_pem_certificates(pem: &str, trusted: &[Vec<u8>], trusted_pem: &[String]) -> Result<Vec<DerCertificate>, String> {
    let mut out = Vec::new();
    for der in pem_blocks(pem, |body| trusted_pem.iter().any(|known| known.as_bytes() == body))? {
        let Some(der) = der else {
            continue;
        };
        if trusted.contains(&der) {
            continue;
        }
        // Unused intermediates would be ignored by path building; refuse
        // garbage anyway rather than carry it into a decision.
        {
            use x509_cert::der::Decode;
            x509_cert::Certificate::from_der(&der).map_err(|e| one_line(&e.to_string()))?;
        }
        out.push(DerCertificate::new(der));
    }
    Ok(out)
}

/// The v0.1 bundle equivalent to a legacy signature with a hashedrekord entry.
fn to_bundle(
    sig: &LegacySignature,
    parsed: &Parsed,
    set: &RekorSetBundle,
    body: Vec<u8>,
    signer: ExpectedSigner<'_>,
) -> Result<Bundle, VerifyError> {
    let malformed = |e: &dyn std::fmt::Display| MaterialError::MalformedLegacy(one_line(&e.to_string()));
    let entry = TransparencyLogEntry::new(
        LogIndex::new(set.log_index as u64).map_err(|e| malformed(&e))?,
        LogId::new(LogKeyId::new(set.log_id.clone())),
        KindVersion::HashedRekordV001,
        CanonicalizedBody::new(body),
    )
    .with_integrated_time(timestamp(set.integrated_time)?)
    .with_inclusion_promise(InclusionPromise::new(SignedTimestamp::new(set.set.clone())));
    let (content, digest_algorithm) = match (&parsed.leaf, signer) {
        (Some(leaf), _) => {
            let mut certificates = vec![X509Certificate::new(leaf.clone())];
            certificates.extend(parsed.chain.iter().cloned().map(X509Certificate::new));
            // Only the key algorithm is needed here; the library parses the
            // certificate fully when it verifies it.
            let algorithm = crate::verify::certificate::spki(leaf.as_bytes())
                .and_then(|spki| sigstore_verify::crypto::KeyAlgorithm::from_spki(&sigstore_verify::types::DerPublicKey::new(spki)).ok())
                .ok_or_else(|| CertificateError::Malformed("unreadable public key".into()))?;
            let digest = match algorithm {
                sigstore_verify::crypto::KeyAlgorithm::EcdsaP384 => SignedDigest::Sha384,
                _ => SignedDigest::Sha256,
            };
            (VerificationMaterialContent::X509CertificateChain { certificates }, digest)
        }
        (None, ExpectedSigner::Key(key)) => (
            VerificationMaterialContent::PublicKey(PublicKeyIdentifier::new(String::new())),
            match key.message_digest_algorithm() {
                sigstore_verify::types::HashAlgorithm::Sha2384 => SignedDigest::Sha384,
                _ => SignedDigest::Sha256,
            },
        ),
        (None, ExpectedSigner::Certificate) => return Err(CertificateError::WrongKind("signer kind mismatch".into()).into()),
    };
    let message_digest = match digest_algorithm {
        SignedDigest::Sha256 => MessageDigest::new(
            sigstore_verify::types::HashAlgorithm::Sha2256,
            DigestBytes::new(Digest::compute(DigestAlgorithm::Sha256, &sig.payload).bytes()),
        ),
        SignedDigest::Sha384 => MessageDigest::new(
            sigstore_verify::types::HashAlgorithm::Sha2384,
            DigestBytes::new(sigstore_verify::crypto::sha384(&sig.payload).as_bytes().to_vec()),
        ),
    };
    let mut material = VerificationMaterial::new(content).with_tlog_entries(vec![entry]);
    if let Some(token) = &parsed.timestamp {
        material = material.with_timestamp_verification_data(TimestampVerificationData::new(vec![Rfc3161Timestamp::new(
            TimestampToken::new(token.clone()),
        )]));
    }
    Ok(Bundle::new(
        MediaType::Bundle0_1,
        material,
        SignatureContent::MessageSignature(
            MessageSignature::new(SignatureBytes::from_bytes(&parsed.signature)).with_message_digest(message_digest),
        ),
    ))
}

/// Which digest cosign signed the payload with.
enum SignedDigest {
    Sha256,
    Sha384,
}

/// Step 8 for rekord: the logged hash, signature and signer are this signature's.
fn check_rekord_body(
    set: &RekorSetBundle,
    sig: &LegacySignature,
    parsed: &Parsed,
    public_key: &sigstore_verify::types::DerPublicKey,
) -> Result<(), VerifyError> {
    let mismatch = |what: &str| VerifyError::from(TlogError::EntryMismatch(what.to_string()));
    let body: serde_json::Value =
        serde_json::from_slice(&set.body_bytes()).map_err(|e| TlogError::MalformedEntry(one_line(&e.to_string())))?;
    let spec = &body["spec"];
    let hash = &spec["data"]["hash"];
    if hash["algorithm"].as_str() != Some("sha256") {
        return Err(mismatch("logged payload hash is not sha256"));
    }
    let payload_hash = Digest::compute(DigestAlgorithm::Sha256, &sig.payload);
    if hash["value"].as_str() != Some(payload_hash.hex()) {
        return Err(mismatch("logged payload hash differs from the payload"));
    }
    let logged_sig = spec["signature"]["content"].as_str().and_then(b64);
    if logged_sig.as_deref() != Some(parsed.signature.as_slice()) {
        return Err(mismatch("logged signature differs from the signature"));
    }
    let logged_key = spec["signature"]["publicKey"]["content"]
        .as_str()
        .and_then(b64)
        .and_then(|pem| String::from_utf8(pem).ok())
        .ok_or_else(|| mismatch("logged public key is missing"))?;
    let same_signer = match &parsed.leaf {
        Some(leaf) => DerCertificate::from_pem(logged_key.trim()).map(|logged| logged.as_bytes() == leaf.as_bytes()).unwrap_or(false),
        None => sigstore_verify::types::DerPublicKey::from_pem(logged_key.trim())
            .map(|logged| logged.as_bytes() == public_key.as_bytes())
            .unwrap_or(false),
    };
    if !same_signer {
        return Err(mismatch("logged signer differs from the signer"));
    }
    Ok(())
}
