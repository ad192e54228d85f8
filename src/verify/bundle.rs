//! Cryptographic verification of one Sigstore bundle (v0.1 to v0.3).
//!
//! This answers "is this signature real, logged and made by the holder of this
//! certificate or key at a verified time?". It deliberately does *not* decide
//! whether that signer is acceptable: that is `policy`, evaluated on the
//! [`VerifiedSignature`] this returns, so a bundle is verified once no matter
//! how many authorities a policy lists.

use serde::Serialize;
use sigstore_verify::types::{Artifact, ArtifactDigest, Bundle, HashAlgorithm, TransparencyLogEntry, VerificationMaterialContent};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy};

use crate::digest::{Digest, DigestAlgorithm};

use super::certificate::CertificateIdentity;
use super::error::{from_bundle_structure, one_line, CertificateError, MaterialError, VerifyError};
use super::keys::PublicKey;
use super::timestamp::ParsedToken;
use super::tlog;
use super::trust::TrustMaterial;

/// Largest bundle we parse. cosign image bundles are ~5 KiB; SLSA
/// provenance bundles reach a few hundred KiB.
pub const MAX_BUNDLE_BYTES: usize = 8 << 20;

/// Most RFC 3161 tokens one bundle may carry. Each costs a CMS signature
/// check; sigstore-go and sigstore-python refuse more than 32, and no
/// signer needs more than a handful.
pub const MAX_TIMESTAMPS: usize = 32;

/// What was signed, as the caller knows it.
#[derive(Debug, Clone, Copy)]
pub enum ArtifactRef<'a> {
    /// The artifact's bytes.
    Bytes(&'a [u8]),
    /// Only its digest (an image manifest digest, or `sha256:`/`sha512:` on the CLI).
    Digest(&'a Digest),
}

impl<'a> ArtifactRef<'a> {
    fn to_library(self) -> Result<Artifact<'a>, MaterialError> {
        Ok(match self {
            Self::Bytes(bytes) => Artifact::Blob(bytes),
            Self::Digest(digest) => Artifact::Digest(library_digest(digest)?),
        })
    }
}

/// `digest` in the verification library's form.
fn library_digest(digest: &Digest) -> Result<ArtifactDigest, MaterialError> {
    library_digest_of(digest.algorithm(), digest.bytes(), &digest.to_string())
}

/// The library's digest of `algorithm` and `bytes`; `shown` names it in the error. A [`Digest`]
/// is validated when it is made, so the error is not expected; if it ever came, the signature
/// is refused with the digest named (never checked against a stand-in digest).
fn library_digest_of(algorithm: DigestAlgorithm, bytes: Vec<u8>, shown: &str) -> Result<ArtifactDigest, MaterialError> {
    let library_algorithm = match algorithm {
        DigestAlgorithm::Sha256 => HashAlgorithm::Sha2256,
        DigestAlgorithm::Sha384 => HashAlgorithm::Sha2384,
        DigestAlgorithm::Sha512 => HashAlgorithm::Sha2512,
    };
    ArtifactDigest::new(library_algorithm, bytes).map_err(|_| MaterialError::MalformedDigest(shown.chars().take(140).collect()))
}

/// Which kind of signer the caller is prepared to accept for this bundle.
#[derive(Debug, Clone, Copy)]
pub enum ExpectedSigner<'a> {
    /// A Fulcio certificate; the identity is matched afterwards by policy.
    Certificate,
    /// This configured public key.
    Key(&'a PublicKey),
}

/// Who signed, as established by verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Signer {
    /// A Fulcio certificate that chained to the trusted root at signing time.
    Certificate(CertificateIdentity),
    /// A configured public key.
    Key {
        /// `sha256:<hex>` of the key's SPKI.
        fingerprint: String,
        /// The key algorithm.
        algorithm: String,
    },
}

/// A transparency-log entry that was verified with the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntrySummary {
    /// Hex log ID (sha256 of the log key).
    pub log_id: String,
    /// Index in the log.
    pub log_index: u64,
    /// `kind/version` of the entry.
    pub kind: String,
    /// Integrated time (RFC 3339), when the entry has one.
    pub integrated_time: Option<String>,
}

/// A signature that verified. Policy decides whether its signer is acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedSignature {
    /// The signer.
    pub signer: Signer,
    /// Every verified signing time (SET integrated times, RFC 3161 times), RFC 3339.
    pub signing_times: Vec<String>,
    /// The log entries that were verified.
    pub tlog_entries: Vec<LogEntrySummary>,
    /// RFC 3161 tokens skipped because their signer is no timestamp
    /// authority of the trust root (one line each). They are not counted as
    /// signing times: reported so an operator sees them, never trusted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_timestamps: Vec<String>,
}

/// Parse bundle JSON, refusing oversized input. Never panics.
pub fn parse_bundle(json: &[u8]) -> Result<Bundle, MaterialError> {
    if json.len() > MAX_BUNDLE_BYTES {
        return Err(MaterialError::TooLarge { what: "bundle", size: json.len(), limit: MAX_BUNDLE_BYTES });
    }
    let text = std::str::from_utf8(json).map_err(|_| MaterialError::MalformedBundle("not UTF-8".into()))?;
    // The library reads a bundle without `mediaType` as v0.1 (the laxest
    // version, which needs no inclusion proof). The bundle spec requires the
    // field, so a bundle without it is refused rather than downgraded.
    #[derive(serde::Deserialize)]
    struct MediaTypeProbe {
        #[serde(rename = "mediaType")]
        media_type: Option<serde::de::IgnoredAny>,
    }
    let probe: MediaTypeProbe = serde_json::from_str(text).map_err(|e| MaterialError::MalformedBundle(one_line(&e.to_string())))?;
    if probe.media_type.is_none() {
        return Err(MaterialError::MalformedBundle("no mediaType".into()));
    }
    Bundle::from_json(text).map_err(|e| MaterialError::MalformedBundle(one_line(&e.to_string())))
}

/// Whether the library's optimized path or its unmodified reference path runs.
///
/// `Fast` is what production uses. `Reference` is the library's `verify` with
/// no step taken over, kept so tests can check the two always agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Library steps 0-3 and 7-8; steps 4-5 (inclusion proof, checkpoint,
    /// remaining SETs) in [`tlog`], without re-verifying the SET.
    Fast,
    /// The library's own full verification.
    Reference,
}

impl TrustMaterial {
    /// Verify a bundle's signature, certificate (or key), timestamps and log
    /// evidence against this trust root. Identity is *not* checked here.
    ///
    /// # Verification steps
    ///
    /// 1. Parse the material (done by [`parse_bundle`]) and check it has the
    ///    log evidence its version requires ("no transparency log proof").
    /// 2. (Callers) bind the signature to the artifact: image statement checks
    ///    in `image.rs`, simple-signing checks in `legacy.rs`.
    /// 3. Establish verified signing times: SETs and RFC 3161 timestamps
    ///    (library step 0).
    /// 4. The certificate chains to a trusted Fulcio CA at every signing time,
    ///    with code-signing EKU; or the configured key is the signer (step 1).
    /// 5. The certificate's embedded SCT verifies (step 2).
    /// 6. Inclusion proof, signed checkpoint and SETs (steps 4-5, in `tlog.rs`).
    /// 7. The signature over the artifact or DSSE PAE (step 7).
    /// 8. The log entries describe this very signature (step 8, CVE-2022-36056).
    pub fn verify_bundle(
        &self,
        bundle: &Bundle,
        artifact: ArtifactRef<'_>,
        signer: ExpectedSigner<'_>,
    ) -> Result<VerifiedSignature, VerifyError> {
        self.verify_bundle_with_mode(bundle, artifact, signer, Mode::Fast)
    }

    /// [`Self::verify_bundle`] with an explicit [`Mode`] (for differential tests and benches).
    pub fn verify_bundle_with_mode(
        &self,
        bundle: &Bundle,
        artifact: ArtifactRef<'_>,
        signer: ExpectedSigner<'_>,
        mode: Mode,
    ) -> Result<VerifiedSignature, VerifyError> {
        // (1) Bounded, duplicate-free timestamps; a parseable carried chain.
        self.check_material(bundle)?;
        // (3a) Tokens from a TSA the trust root does not list are set aside
        //      (both modes, so the library never sees them either).
        let parsed: Vec<ParsedToken> = bundle
            .verification_material
            .timestamp_verification_data
            .rfc3161_timestamps
            .iter()
            .map(|t| super::timestamp::parse_token(t.signed_timestamp.as_bytes()))
            .collect();
        let (filtered, skipped, parsed) = self.without_unlisted_timestamps(bundle, parsed);
        let bundle = filtered.as_ref().unwrap_or(bundle);
        let mut verified = match signer {
            ExpectedSigner::Certificate => self.verify_keyless(bundle, artifact, mode, &parsed),
            ExpectedSigner::Key(key) => self.verify_with_key(bundle, artifact, key),
        }?;
        verified.skipped_timestamps = skipped;
        Ok(verified)
    }

    /// (1) See [`check_material_with`].
    fn check_material(&self, bundle: &Bundle) -> Result<(), VerifyError> {
        check_material_with(self, bundle)
    }

    /// (3a) The bundle without the RFC 3161 tokens whose signer no TSA of the
    /// trust root matches (by issuer and serial or by subject key
    /// identifier), and a one-line note per skipped token. `None` when
    /// nothing was skipped (no copy is made).
    ///
    /// This is what sigstore-go and sigstore-python do: a token they cannot
    /// attribute to a trusted TSA is ignored, and the remaining verified
    /// time sources (SETs, listed tokens) must still meet the threshold of
    /// one, which the library enforces on what is left. A token that names a
    /// listed TSA but does not verify still refuses the bundle.
    /// `parsed` holds the bundle's tokens decoded, in order; what is
    /// returned holds those of the tokens kept.
    fn without_unlisted_timestamps(&self, bundle: &Bundle, parsed: Vec<ParsedToken>) -> (Option<Bundle>, Vec<String>, Vec<ParsedToken>) {
        let unlisted: Vec<usize> = parsed
            .iter()
            .enumerate()
            .filter(|(_, t)| super::timestamp::signer_listed(&self.tsa, t) == Some(false))
            .map(|(i, _)| i)
            .collect();
        if unlisted.is_empty() {
            return (None, Vec::new(), parsed);
        }
        let notes: Vec<String> =
            unlisted.iter().map(|i| format!("RFC 3161 timestamp {i} skipped: signed by a TSA the trust root does not list")).collect();
        for note in &notes {
            tracing::debug!(target: "pullgate::verify", "{note}");
        }
        let mut copy = bundle.clone();
        let mut index = 0;
        copy.verification_material.timestamp_verification_data.rfc3161_timestamps.retain(|_| {
            let keep = !unlisted.contains(&index);
            index += 1;
            keep
        });
        let kept = parsed.into_iter().enumerate().filter(|(i, _)| !unlisted.contains(i)).map(|(_, t)| t).collect();
        (Some(copy), notes, kept)
    }

    /// `parsed`: the bundle's RFC 3161 tokens, decoded, in order.
    fn verify_keyless(
        &self,
        bundle: &Bundle,
        artifact: ArtifactRef<'_>,
        mode: Mode,
        parsed: &[ParsedToken],
    ) -> Result<VerifiedSignature, VerifyError> {
        // (1) The material must carry a certificate; a key-signed bundle
        //     cannot satisfy a keyless identity.
        let leaf = match &bundle.verification_material.content {
            VerificationMaterialContent::PublicKey(_) => {
                return Err(CertificateError::WrongKind("signed with a public key, not a Fulcio certificate".into()).into())
            }
            _ => bundle.signing_certificate().ok_or_else(|| CertificateError::Malformed("empty certificate chain".into()))?,
        };
        let result = match mode {
            Mode::Reference => self
                .verifier
                .verify(artifact.to_library()?, bundle, &VerificationPolicy::any_identity())
                .map_err(VerifyError::from_library)?,
            Mode::Fast => {
                // (1) The log evidence the bundle version requires: the same
                //     structural rule the library applies when it verifies
                //     the log itself, which `skip_tlog_unsafe` would relax.
                sigstore_verify::bundle::validate_bundle_with_options(
                    bundle,
                    &sigstore_verify::bundle::ValidationOptions::new().with_require_inclusion_proof(true).with_require_timestamp(false),
                )
                .map_err(from_bundle_structure)?;
                // (3) RFC 3161 timestamps are ours when a SET also dates the
                //     signature: the library then runs on the bundle without
                //     them and we verify them against the cached TSA chains.
                let tokens = &bundle.verification_material.timestamp_verification_data.rfc3161_timestamps;
                let own_timestamps = !tokens.is_empty() && has_set_time(bundle);
                // (3), (4), (7), (8): the library. Its step 0 verifies each
                //     Rekor v1 SET once to trust the integrated time.
                // (5) The SCT is ours when the leaf's issuer key is known
                //     without the verified path (`sct.rs`): the same check
                //     without decoding and re-encoding the certificate.
                let carried: Vec<&[u8]> = match &bundle.verification_material.content {
                    VerificationMaterialContent::X509CertificateChain { certificates } => {
                        certificates.iter().skip(1).map(|c| c.raw_bytes.as_bytes()).collect()
                    }
                    _ => Vec::new(),
                };
                let sct_issuer = self.ct_keys.as_ref().and_then(|ct| {
                    let hash = super::sct::issuer_key_hash(leaf.as_bytes(), self.fulcio_issuers.as_deref(), &carried)?;
                    Some((hash, ct))
                });
                let full_policy = VerificationPolicy::any_identity().skip_tlog_unsafe();
                let policy = if sct_issuer.is_some() { full_policy.clone().skip_sct() } else { full_policy.clone() };
                // (3), (4), (7), (8) for the common shapes without the
                //     library's per-call re-derivations (`direct.rs`); any
                //     other shape, and anything that does not pass there, is
                //     decided by the library as before.
                let direct = match &sct_issuer {
                    Some(_) if own_timestamps || tokens.is_empty() => self.library_steps_direct(bundle, artifact, leaf),
                    _ => None,
                };
                let (info, library_times) = match direct {
                    Some(direct) => (direct.info, direct.times),
                    None => {
                        let stripped;
                        let library_bundle = if own_timestamps {
                            let mut copy = bundle.clone();
                            copy.verification_material.timestamp_verification_data.rfc3161_timestamps.clear();
                            stripped = copy;
                            &stripped
                        } else {
                            bundle
                        };
                        let result = match self.verifier.verify(artifact.to_library()?, library_bundle, &policy) {
                            Ok(result) => result,
                            Err(error) => {
                                // A refusal: report what the library reports with its
                                // own SCT check (step 5 comes before 7 and 8).
                                if sct_issuer.is_some() {
                                    if let Err(first) = self.verifier.verify(artifact.to_library()?, library_bundle, &full_policy) {
                                        return Err(VerifyError::from_library(first));
                                    }
                                }
                                return Err(VerifyError::from_library(error));
                            }
                        };
                        let info = result
                            .certificate()
                            .ok_or_else(|| CertificateError::Malformed("verified bundle reported no certificate".into()))?;
                        (info.clone(), result.verified_timestamps().to_vec())
                    }
                };
                if let Some((issuer_key_hash, ct)) = &sct_issuer {
                    super::sct::verify(leaf.as_bytes(), issuer_key_hash, ct)?;
                }
                // (6) Inclusion proofs, checkpoints, and any SET step 0 did not cover.
                for entry in &bundle.verification_material.tlog_entries {
                    tlog::verify_inclusion(entry, &self.rekor_keys)?;
                }
                let mut all = library_times;
                if own_timestamps {
                    let signature = signature_bytes(bundle)?;
                    let mut times = Vec::with_capacity(tokens.len());
                    for token in parsed {
                        times.push(super::timestamp::verify_parsed(&self.tsa, token, signature)?);
                    }
                    // (4) The certificate must be valid at these times too.
                    //     When its CA's window might not cover them, let the
                    //     library decide with the full bundle.
                    for time in &times {
                        if !self.ca_covers(leaf.as_bytes(), *time) {
                            return self.verify_keyless(bundle, artifact, Mode::Reference, parsed);
                        }
                        if *time < info.not_before {
                            return Err(
                                CertificateError::NotYetValid { time: time.to_string(), not_before: info.not_before.to_string() }.into()
                            );
                        }
                        if *time > info.not_after {
                            return Err(CertificateError::Expired { time: time.to_string(), not_after: info.not_after.to_string() }.into());
                        }
                    }
                    all.extend(times);
                }
                return self.finish_keyless(bundle, leaf.as_bytes(), &info, &all);
            }
        };
        let info = result.certificate().ok_or_else(|| CertificateError::Malformed("verified bundle reported no certificate".into()))?;
        let info = info.clone();
        self.finish_keyless(bundle, leaf.as_bytes(), &info, result.verified_timestamps())
    }

    /// Common tail of keyless verification: log identity and the result.
    fn finish_keyless(
        &self,
        bundle: &Bundle,
        leaf: &[u8],
        info: &sigstore_verify::crypto::CertificateInfo,
        verified_times: &[jiff::Timestamp],
    ) -> Result<VerifiedSignature, VerifyError> {
        // (6) In both modes: each entry is proven by the log it names.
        for entry in &bundle.verification_material.tlog_entries {
            tlog::verify_log_identity(entry, &self.rekor_keys)?;
        }
        Ok(VerifiedSignature {
            signer: Signer::Certificate(CertificateIdentity::new(info, leaf)),
            signing_times: times(verified_times),
            tlog_entries: summarize(&bundle.verification_material.tlog_entries),
            skipped_timestamps: Vec::new(),
        })
    }

    /// Whether every trusted CA that could have issued `leaf` (same subject
    /// as its issuer) was valid at `time`. The library has already verified
    /// the leaf's chain at another signing time, so this is what remains of
    /// chain validation at `time` (webpki does not check anchor validity).
    fn ca_covers(&self, leaf: &[u8], time: jiff::Timestamp) -> bool {
        let Some(issuer) = super::certificate::issuer_name(leaf) else {
            return false;
        };
        let mut candidates = self.fulcio_subjects.iter().filter(|(subject, _)| *subject == issuer).peekable();
        candidates.peek().is_some() && candidates.all(|(_, window)| window.is_none_or(|w| w.contains(time)))
    }

    fn verify_with_key(&self, bundle: &Bundle, artifact: ArtifactRef<'_>, key: &PublicKey) -> Result<VerifiedSignature, VerifyError> {
        if !matches!(bundle.verification_material.content, VerificationMaterialContent::PublicKey(_)) {
            return Err(CertificateError::WrongKind("signed with a Fulcio certificate, not a public key".into()).into());
        }
        // The library's key path verifies each SET once; nothing to optimize.
        let policy = PublicKeyVerificationPolicy::new(key.der().clone());
        let result = self.verifier.verify(artifact.to_library()?, bundle, &policy).map_err(VerifyError::from_library)?;
        for entry in &bundle.verification_material.tlog_entries {
            tlog::verify_log_identity(entry, &self.rekor_keys)?;
        }
        Ok(VerifiedSignature {
            signer: Signer::Key { fingerprint: key.fingerprint().to_string(), algorithm: key.kind().to_string() },
            signing_times: times(result.verified_timestamps()),
            tlog_entries: summarize(&bundle.verification_material.tlog_entries),
            skipped_timestamps: Vec::new(),
        })
    }
}

/// (1) Checks on the material alone, before any cryptography, in both modes.
///
/// * At most [`MAX_TIMESTAMPS`] RFC 3161 tokens, none repeated: a repeated
///   token would be verified (and counted) twice, and an attacker could make
///   every pull pay for thousands of CMS checks.
/// * (4a) Every certificate a v0.1/v0.2 chain carries after the leaf parses
///   as X.509, and a self-signed (root) certificate is refused unless it is
///   byte for byte one of the trust root's CA certificates: roots come from
///   the trust root, never from the bundle (sigstore-conformance rule), yet
///   real v0.1 bundles (npm provenance, sigstore-go test data) repeat the
///   production Fulcio root and must keep verifying. Parsed intermediates
///   are otherwise unused: the leaf is chained to the trust root's own CA
///   certificates, so what else the bundle carries cannot make a chain
///   valid.
fn check_material_with(trust: &TrustMaterial, bundle: &Bundle) -> Result<(), VerifyError> {
    use super::error::TimestampError;
    let tokens = &bundle.verification_material.timestamp_verification_data.rfc3161_timestamps;
    if tokens.len() > MAX_TIMESTAMPS {
        return Err(TimestampError::TooMany(tokens.len()).into());
    }
    for (i, token) in tokens.iter().enumerate() {
        if let Some(j) = tokens[..i].iter().position(|earlier| earlier.signed_timestamp.as_bytes() == token.signed_timestamp.as_bytes()) {
            return Err(TimestampError::Duplicate(j, i).into());
        }
    }
    if let VerificationMaterialContent::X509CertificateChain { certificates } = &bundle.verification_material.content {
        use der::Decode as _;
        for (index, cert) in certificates.iter().enumerate().skip(1) {
            let der = cert.raw_bytes.as_bytes();
            let parsed = x509_cert::Certificate::from_der(der)
                .map_err(|e| CertificateError::ChainCertificate { index, reason: one_line(&e.to_string()) })?;
            if parsed.tbs_certificate.subject == parsed.tbs_certificate.issuer
                && !trust.fulcio_certs.iter().any(|known| known[..] == der[..])
            {
                return Err(CertificateError::RootInChain(index).into());
            }
        }
    }
    Ok(())
}

/// Whether a Rekor v1 SET authenticates an integrated time for the bundle:
/// then the library has a signing time even without the RFC 3161 tokens.
fn has_set_time(bundle: &Bundle) -> bool {
    use sigstore_verify::types::KindVersion;
    bundle.verification_material.tlog_entries.iter().any(|e| {
        matches!(e.kind_version, KindVersion::HashedRekordV001 | KindVersion::DsseV001 | KindVersion::IntotoV002)
            && e.inclusion_promise.is_some()
            && e.integrated_time.is_some()
    })
}

/// The signature bytes an RFC 3161 token is computed over.
fn signature_bytes(bundle: &Bundle) -> Result<&[u8], VerifyError> {
    use sigstore_verify::types::SignatureContent;
    match &bundle.content {
        SignatureContent::MessageSignature(m) => Ok(m.signature.as_bytes()),
        SignatureContent::DsseEnvelope(e) => Ok(e.signature.sig.as_bytes()),
        _ => Err(MaterialError::UnsupportedBundle("unsupported signature content".into()).into()),
    }
}

fn times(times: &[jiff::Timestamp]) -> Vec<String> {
    let mut out: Vec<String> = times.iter().map(ToString::to_string).collect();
    out.sort();
    out.dedup();
    out
}

fn summarize(entries: &[TransparencyLogEntry]) -> Vec<LogEntrySummary> {
    entries
        .iter()
        .map(|entry| LogEntrySummary {
            log_id: hex::encode(entry.log_id.key_id.as_bytes()),
            log_index: entry.log_index.get(),
            kind: format!("{}/{}", entry.kind_version.kind(), entry.kind_version.version()),
            integrated_time: entry.integrated_time.map(|t| t.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_the_library_cannot_take_is_refused_not_replaced() {
        let image = Digest::sha256(b"image");
        let ok = library_digest(&image).unwrap();
        assert_eq!(ok.value().as_bytes(), image.bytes().as_slice());
        // A length that does not fit the algorithm: an error naming the digest, not a zero digest.
        let err = library_digest_of(DigestAlgorithm::Sha384, image.bytes(), &image.to_string()).unwrap_err();
        assert!(matches!(&err, MaterialError::MalformedDigest(d) if *d == image.to_string()), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}
