//! Fast mode's own run of the library's keyless steps for the two bundle
//! shapes every pull sees: a DSSE envelope logged as a Rekor v1 `dsse/0.0.1`
//! entry (cosign v3 image bundles) and a message signature logged as
//! `hashedrekord/0.0.1` (cosign legacy `.sig` layers), each entry with a SET.
//!
//! `sigstore_verify::Verifier::verify` re-derives per call what the bundle
//! already holds parsed: it canonicalizes each SET payload through a generic
//! JSON canonicalizer and parses the log key again, and for step 8 it decodes
//! the certificate PEM inside the Rekor body with a general-purpose PEM
//! parser (a third of the work above the crypto floor). Here the same checks
//! run on the parsed bundle, with the log keys parsed once per trust root
//! (`tlog::RekorKeys`), the canonical JSON written directly, and the logged
//! certificate compared with the leaf's canonical PEM (the library's PEM
//! parser decides only when the bytes are written any other way).
//!
//! **Why this cannot change a verdict.** [`TrustMaterial::library_steps_direct`]
//! answers "these steps pass" or "not decided here" (`None`): a shape it
//! does not cover, and every check that fails, sends the bundle down the
//! library path in `bundle.rs`, which then decides and words the refusal as
//! before. So this only makes accepted bundles cheaper, provided every check
//! the library runs for these shapes (with the policy fast mode gives it:
//! any identity, SCT and log proofs ours) runs here, at least as strictly:
//!
//! | library | here |
//! |---|---|
//! | prepare: structure (inclusion proof not required) | the caller's structure check requires it (stricter) |
//! | prepare: `parse_certificate_info` of the leaf | same call |
//! | prepare: signing scheme from key and `messageDigest` algorithm | same calls |
//! | prepare: DSSE payload type in-toto, statement parses, has subjects with known digests | same, with the library's `Statement` |
//! | step 0: every Rekor v1 SET verifies by the entry's log key valid at its integrated time, not in the future; at least one time | same (RFC 3161 tokens: the caller's own path, as before) |
//! | step 1: chain to a Fulcio CA valid at each time, code-signing EKU; leaf valid at each time | same webpki call per time (`legacy.rs`), same window checks |
//! | step 7: DSSE signature over the PAE, statement subject is the artifact; or `messageDigest` equals the artifact's and the prehashed signature verifies | same library calls |
//! | step 8, `dsse/0.0.1`: body parses, SHA-256 payload hash (lowercase hex) matches, exactly one signature, equal bytes, verifier PEM is the leaf | same, PEM compared canonically first |
//! | step 8, `hashedrekord/0.0.1`: body parses, hash is the artifact's SHA-256, logged certificate is the leaf, signature bytes equal, integrated time within the leaf's validity | same; the last is step 1's validity check at that very time |
//!
//! The differential suites (`tests/verify_*.rs`) run fast mode against the
//! library's own path on every vector, tamper case, mutant and fuzz input.

use sigstore_verify::crypto::CertificateInfo;
use sigstore_verify::rekor::body::RekorEntryBody;
use sigstore_verify::types::{
    Bundle, DerCertificate, HashAlgorithm, KindVersion, Sha256Hash, Sha512Hash, SignatureContent, Statement, TransparencyLogEntry,
    VerificationMaterialContent,
};

use super::bundle::ArtifactRef;
use super::trust::TrustMaterial;
use crate::digest::DigestAlgorithm;

/// What the library's run would have produced for a covered bundle.
pub(super) struct Direct {
    /// The leaf's parsed certificate info (for identity and validity).
    pub(super) info: CertificateInfo,
    /// The SET-authenticated integrated times (step 0).
    pub(super) times: Vec<jiff::Timestamp>,
}

impl TrustMaterial {
    /// The library's steps 0, 1, 7 and 8 (prepare included) for a covered
    /// shape, or `None`: not covered, or some check failed (the library path
    /// then decides). RFC 3161 tokens are not read: the caller calls this
    /// only for bundles without them, or whose tokens it verifies itself
    /// because a SET dates the signature (what it would hand the library
    /// is then the bundle without them).
    pub(super) fn library_steps_direct(&self, bundle: &Bundle, artifact: ArtifactRef<'_>, leaf: &DerCertificate) -> Option<Direct> {
        let entries = &bundle.verification_material.tlog_entries;
        if entries.is_empty() {
            return None;
        }
        for entry in entries {
            let covered = matches!(
                (&bundle.content, entry.kind_version, artifact),
                (SignatureContent::DsseEnvelope(_), KindVersion::DsseV001, ArtifactRef::Digest(_))
                    | (SignatureContent::MessageSignature(_), KindVersion::HashedRekordV001, _)
            );
            if !covered || entry.inclusion_promise.is_none() || entry.integrated_time.is_none() {
                return None;
            }
        }
        let carried: Vec<DerCertificate> = match &bundle.verification_material.content {
            VerificationMaterialContent::X509CertificateChain { certificates } => {
                certificates.iter().skip(1).map(|c| c.raw_bytes.clone()).collect()
            }
            VerificationMaterialContent::Certificate(_) => Vec::new(),
            _ => return None,
        };

        // prepare: the leaf, the scheme, the DSSE statement.
        let info = sigstore_verify::crypto::parse_certificate_info(leaf).ok()?;
        let key = info.key_algorithm;
        let (scheme, statement) = match &bundle.content {
            SignatureContent::MessageSignature(m) => (
                match &m.message_digest {
                    Some(d) => key.resolve_signing_scheme(d.algorithm).ok()?,
                    None => key.default_signing_scheme(),
                },
                None,
            ),
            SignatureContent::DsseEnvelope(envelope) => {
                if envelope.payload_type != "application/vnd.in-toto+json" {
                    return None;
                }
                let statement: Statement = serde_json::from_slice(envelope.payload.as_bytes()).ok()?;
                if statement.subject.is_empty() || statement.subject_algorithms().is_empty() {
                    return None;
                }
                (key.default_signing_scheme(), Some(statement))
            }
            _ => return None,
        };

        // Step 0: SET-authenticated integrated times.
        let now = jiff::Timestamp::now();
        let mut times = Vec::with_capacity(entries.len());
        for entry in entries {
            let time = entry.integrated_time?;
            super::tlog::verify_entry_set(entry, &self.rekor_keys).ok()?;
            if time > now {
                return None;
            }
            times.push(time);
        }

        // Step 1: the chain and the leaf's validity at every time.
        for &time in &times {
            if time.as_second() < 0 {
                return None;
            }
            self.verify_fulcio_chain(leaf, &carried, time).ok()?;
            if time < info.not_before || time > info.not_after {
                return None;
            }
        }

        // Step 7: the signature, and what it binds.
        let mut digests = Digests::new(artifact);
        match (&bundle.content, statement) {
            (SignatureContent::DsseEnvelope(envelope), Some(statement)) => {
                sigstore_verify::crypto::verify_signature(&info.public_key, &envelope.pae(), &envelope.signature.sig, scheme).ok()?;
                let sha256 = digests.get(HashAlgorithm::Sha2256).and_then(|d| Sha256Hash::try_from(d.as_slice()).ok());
                let sha512 = digests.get(HashAlgorithm::Sha2512).and_then(|d| Sha512Hash::try_from(d.as_slice()).ok());
                let bound = sha256.is_some_and(|d| statement.matches_sha256(&d)) || sha512.is_some_and(|d| statement.matches_sha512(&d));
                if !bound {
                    return None;
                }
            }
            (SignatureContent::MessageSignature(m), None) => {
                if let Some(d) = &m.message_digest {
                    if digests.get(d.algorithm)? != d.digest.as_bytes() {
                        return None;
                    }
                }
                let digest = digests.get(scheme.hash_algorithm()?)?;
                sigstore_verify::crypto::verify_signature_prehashed(&info.public_key, &digest, &m.signature, scheme).ok()?;
            }
            _ => return None,
        }

        // Step 8: each entry describes this signature.
        for entry in entries {
            entry_matches(entry, bundle, &mut digests, leaf)?;
        }
        Some(Direct { info, times })
    }
}

/// The artifact's digests, as the library's prepared artifact holds them:
/// computed for bytes (each algorithm once, when first asked), and only the
/// given one for a digest.
struct Digests<'a> {
    artifact: ArtifactRef<'a>,
    computed: Vec<(HashAlgorithm, Vec<u8>)>,
}

impl<'a> Digests<'a> {
    fn new(artifact: ArtifactRef<'a>) -> Self {
        Self { artifact, computed: Vec::new() }
    }

    /// The digest in `algorithm`, or `None` where the library has none.
    fn get(&mut self, algorithm: HashAlgorithm) -> Option<Vec<u8>> {
        use sigstore_verify::crypto::{sha256, sha384, sha512};
        match self.artifact {
            ArtifactRef::Bytes(bytes) => {
                if let Some((_, known)) = self.computed.iter().find(|(a, _)| *a == algorithm) {
                    return Some(known.clone());
                }
                let digest = match algorithm {
                    HashAlgorithm::Sha2256 => sha256(bytes).as_bytes().to_vec(),
                    HashAlgorithm::Sha2384 => sha384(bytes).as_bytes().to_vec(),
                    HashAlgorithm::Sha2512 => sha512(bytes).as_bytes().to_vec(),
                    _ => return None,
                };
                self.computed.push((algorithm, digest.clone()));
                Some(digest)
            }
            ArtifactRef::Digest(digest) => {
                let own = match digest.algorithm() {
                    DigestAlgorithm::Sha256 => HashAlgorithm::Sha2256,
                    DigestAlgorithm::Sha384 => HashAlgorithm::Sha2384,
                    DigestAlgorithm::Sha512 => HashAlgorithm::Sha2512,
                };
                (own == algorithm).then(|| digest.bytes())
            }
        }
    }
}

/// Step 8 for one covered entry (see the module table).
fn entry_matches(entry: &TransparencyLogEntry, bundle: &Bundle, digests: &mut Digests<'_>, leaf: &DerCertificate) -> Option<()> {
    let body = RekorEntryBody::parse(&entry.canonicalized_body, entry.kind_version).ok()?;
    match (&bundle.content, &body) {
        (SignatureContent::DsseEnvelope(envelope), RekorEntryBody::DsseV001(dsse)) => {
            let hash = &dsse.spec.payload_hash;
            if hash.algorithm != HashAlgorithm::Sha2256
                || hex::encode(sigstore_verify::crypto::sha256(envelope.payload.as_bytes())) != hash.value
            {
                return None;
            }
            let [logged] = dsse.spec.signatures.as_slice() else {
                return None;
            };
            if envelope.signature.sig.as_bytes() != logged.signature.as_bytes()
                || !is_leaf_pem(logged.verifier.as_bytes(), leaf, || logged.parse_certificate().ok())
            {
                return None;
            }
        }
        (SignatureContent::MessageSignature(m), RekorEntryBody::HashedRekordV001(rekord)) => {
            let expected = Sha256Hash::from_hex(rekord.spec.data.hash.value.as_str()).ok()?;
            let actual = digests.get(HashAlgorithm::Sha2256)?;
            if expected.as_bytes()[..] != actual[..] {
                return None;
            }
            let key = &rekord.spec.signature.public_key;
            if !is_leaf_pem(key.content.as_bytes(), leaf, || key.parse_certificate().ok()) || m.signature != rekord.spec.signature.content {
                return None;
            }
            // The integrated time within the leaf's validity: step 1 checked
            // it at this very time (every SET time is a validation time).
        }
        _ => return None,
    }
    Some(())
}

/// Whether the PEM `logged` in a Rekor body is the leaf certificate. The
/// canonical form Rekor writes (64-column base64, LF line ends, final LF
/// optional) is compared byte for byte; anything else is decoded by the
/// library's own parser (`parse`), which decides as it always did.
fn is_leaf_pem(logged: &[u8], leaf: &DerCertificate, parse: impl FnOnce() -> Option<DerCertificate>) -> bool {
    if canonical_pem(leaf.as_bytes())
        .is_some_and(|pem| logged == pem.as_bytes() || logged == pem.as_bytes().strip_suffix(b"\n").unwrap_or(b""))
    {
        return true;
    }
    parse().is_some_and(|der| der.as_bytes() == leaf.as_bytes())
}

/// `-----BEGIN CERTIFICATE-----` PEM of `der`, 64 columns, LF line ends.
pub(super) fn canonical_pem(der: &[u8]) -> Option<String> {
    use base64::Engine as _;
    if der.is_empty() {
        return None;
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        pem.push_str(std::str::from_utf8(line).ok()?);
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    Some(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical PEM is what the library's PEM parser reads back as the
    /// same DER, with and without the final newline.
    #[test]
    fn canonical_pem_round_trips_through_the_library_parser() {
        for len in [1usize, 47, 48, 49, 96, 500, 1234] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = canonical_pem(&der).unwrap();
            for text in [pem.as_str(), pem.strip_suffix('\n').unwrap()] {
                let parsed = DerCertificate::from_pem(text).unwrap();
                assert_eq!(parsed.as_bytes(), &der[..], "{len}");
            }
            assert!(pem.lines().all(|l| l.len() <= 64));
        }
        assert!(canonical_pem(&[]).is_none());
    }

    #[test]
    fn a_differently_written_pem_goes_to_the_parser() {
        let leaf = DerCertificate::new(vec![1, 2, 3, 4]);
        let crlf = canonical_pem(leaf.as_bytes()).unwrap().replace('\n', "\r\n");
        let mut asked = false;
        assert!(is_leaf_pem(crlf.as_bytes(), &leaf, || {
            asked = true;
            DerCertificate::from_pem(&crlf).ok()
        }));
        assert!(asked);
        assert!(!is_leaf_pem(b"garbage", &leaf, || None));
        let other = DerCertificate::new(vec![9, 9]);
        let pem = canonical_pem(other.as_bytes()).unwrap();
        assert!(!is_leaf_pem(pem.as_bytes(), &leaf, || DerCertificate::from_pem(&pem).ok()));
    }
}
