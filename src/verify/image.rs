//! The per-image decision: candidate signatures in, allow/deny out.
//!
//! The caller (the enforcement layer, or `verify-image-files`) hands over the
//! pulled manifest digest, every piece of signature material it found
//! (cosign v3 bundles from referrers or files, legacy `.sig` layers) and the
//! identity policy. Each candidate is verified cryptographically at most once
//! per signer kind and then matched against every authority, so the decision
//! says for each candidate why it did or did not count.

use serde::Serialize;
use sigstore_verify::types::{Bundle, SignatureContent};

use super::attestation::{AttestationCandidate, AttestationOutcome, RequirementOutcome};
use super::bundle::{parse_bundle, ArtifactRef, ExpectedSigner, Signer, VerifiedSignature};
use super::error::{one_line, BindingError, VerifyError};
use super::legacy::LegacySignature;
use super::signers::{AuthoritySigners, IdentityMismatch, IdentityPolicy, PolicySummary};
use super::trust::TrustMaterial;
use crate::digest::Digest;

/// DSSE payload type of in-toto statements.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// `_type` of an in-toto Statement v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// Predicate type cosign v3 uses for image signatures.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// OCI artifact type / media type of a Sigstore bundle v0.3 referrer.
pub const BUNDLE_V03_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// One piece of signature material found for an image.
#[derive(Debug, Clone)]
pub enum SignatureMaterial {
    /// A Sigstore bundle: a cosign v3 referrer or a `cosign sign --bundle` file.
    Bundle {
        /// Where it came from (referrer digest, file name), for the decision.
        source: String,
        /// The bundle JSON, unparsed: parse failures are per-candidate reasons.
        json: Vec<u8>,
    },
    /// A layer of the legacy `sha256-<hex>.sig` tag.
    Legacy {
        /// Where it came from, for the decision.
        source: String,
        /// The layer and its annotations.
        signature: LegacySignature,
    },
}

impl SignatureMaterial {
    fn source(&self) -> &str {
        match self {
            Self::Bundle { source, .. } | Self::Legacy { source, .. } => source,
        }
    }

    fn format(&self) -> &'static str {
        match self {
            Self::Bundle { .. } => "sigstore-bundle",
            Self::Legacy { .. } => "cosign-legacy",
        }
    }
}

/// How one candidate fared against one authority.
#[derive(Debug, Clone, Serialize)]
pub struct AuthorityOutcome {
    /// The authority's name.
    pub authority: String,
    /// Whether this candidate satisfies it.
    pub satisfied: bool,
    /// Why not, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What happened to one candidate.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateOutcome {
    /// Where the candidate came from.
    pub source: String,
    /// `sigstore-bundle` or `cosign-legacy`.
    pub format: &'static str,
    /// The verified signature, if the cryptography held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<VerifiedSignature>,
    /// Why the signature itself was rejected (before any identity matching).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The step category of `error` (`tlog`, `binding`, `certificate`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_category: Option<&'static str>,
    /// Per-authority results.
    pub authorities: Vec<AuthorityOutcome>,
}

impl CandidateOutcome {
    /// The most useful single reason this candidate did not count.
    pub fn reason(&self) -> Option<String> {
        if let Some(error) = &self.error {
            return Some(error.clone());
        }
        if self.authorities.iter().any(|a| a.satisfied) {
            return None;
        }
        let reasons: Vec<&str> = self.authorities.iter().filter_map(|a| a.reason.as_deref()).collect();
        Some(match reasons.as_slice() {
            [] => "matched no authority".to_string(),
            [one] => (*one).to_string(),
            many => many.join("; "),
        })
    }
}

/// The decision for one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDecision {
    /// The pulled manifest digest.
    pub image: String,
    /// Whether enough authorities signed.
    pub allowed: bool,
    /// Authorities satisfied by at least one candidate.
    pub satisfied: Vec<String>,
    /// The policy applied.
    pub policy: PolicySummary,
    /// Every candidate, in input order.
    pub candidates: Vec<CandidateOutcome>,
    /// The trust root that decided (`sha256:` of trusted_root.json).
    pub trust_root: String,
    /// Attestations found (when the policy requires any), and how each was judged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attestations: Vec<AttestationOutcome>,
    /// Each required attestation of each authority.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<RequirementOutcome>,
}

impl ImageDecision {
    /// One line: why the image is allowed or denied.
    pub fn reason(&self) -> String {
        if self.allowed {
            let who: Vec<String> = self.candidates.iter().filter_map(|c| c.verified.as_ref().map(|v| signer_label(&v.signer))).collect();
            let mut line = format!(
                "verified: {} of {} required authorities ({}) signed by {}",
                self.satisfied.len(),
                self.policy.threshold,
                self.satisfied.join(", "),
                who.join(", ")
            );
            let attested: Vec<&str> = self
                .requirements
                .iter()
                .filter(|r| r.satisfied && self.satisfied.contains(&r.authority))
                .map(|r| r.predicate_type.as_str())
                .collect();
            if !attested.is_empty() {
                line.push_str(&format!("; attested: {}", one_line(&attested.join(", "))));
            }
            return line;
        }
        // An authority whose signature held but whose attestations did not: that is the reason.
        let attestation_failures: Vec<&str> =
            self.requirements.iter().filter(|r| r.signed && !r.satisfied).filter_map(|r| r.reason.as_deref()).collect();
        if !attestation_failures.is_empty() {
            return one_line(&attestation_failures.join("; "));
        }
        if self.candidates.is_empty() {
            return "no signatures found".to_string();
        }
        let details: Vec<String> = self.candidates.iter().filter_map(|c| c.reason().map(|r| format!("{}: {r}", c.source))).collect();
        let mut line = if self.policy.threshold > 1 || !self.satisfied.is_empty() {
            format!("{} of {} required authorities satisfied; ", self.satisfied.len(), self.policy.threshold)
        } else {
            String::new()
        };
        line.push_str(&details.join("; "));
        one_line(&line)
    }
}

pub(crate) fn signer_label(signer: &Signer) -> String {
    match signer {
        Signer::Certificate(c) => c.subject.clone().unwrap_or_else(|| "certificate without SAN".into()),
        Signer::Key { fingerprint, .. } => format!("key {fingerprint}"),
    }
}

/// Step 2 for cosign v3 bundles: the DSSE envelope holds an in-toto Statement
/// v1 with the cosign signing predicate, one of whose subjects is the image.
pub fn check_image_statement(bundle: &Bundle, image: &Digest) -> Result<(), BindingError> {
    let statement = in_toto_statement(bundle)?;
    let field = |name: &str| statement.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    if field("_type") != STATEMENT_V1 {
        return Err(BindingError::StatementType { got: one_line(field("_type")) });
    }
    if field("predicateType") != COSIGN_SIGN_PREDICATE {
        return Err(BindingError::PredicateType { got: one_line(field("predicateType")) });
    }
    check_statement_subject(&statement, image)
}

/// The in-toto statement a bundle's DSSE envelope carries, as JSON.
pub(crate) fn in_toto_statement(bundle: &Bundle) -> Result<serde_json::Value, BindingError> {
    let SignatureContent::DsseEnvelope(envelope) = &bundle.content else {
        return Err(BindingError::NotDsse);
    };
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(BindingError::PayloadType { got: one_line(&envelope.payload_type) });
    }
    serde_json::from_slice(envelope.payload.as_bytes()).map_err(|e| BindingError::MalformedStatement(one_line(&e.to_string())))
}

/// One of the statement's subjects names `image` (same algorithm, exact hex).
pub(crate) fn check_statement_subject(statement: &serde_json::Value, image: &Digest) -> Result<(), BindingError> {
    let algorithm = image.algorithm().name();
    let want = image.hex();
    let subjects = statement.get("subject").and_then(|s| s.as_array()).map(Vec::as_slice).unwrap_or_default();
    let mut seen = Vec::new();
    for subject in subjects {
        if let Some(got) = subject.get("digest").and_then(|d| d.get(algorithm)).and_then(|v| v.as_str()) {
            // OCI digests are lower-case hex; compare exactly.
            if got == want {
                return Ok(());
            }
            seen.push(format!("{algorithm}:{}", one_line(got)));
        }
    }
    Err(BindingError::SubjectDigest {
        got: if seen.is_empty() { format!("no {algorithm} subject") } else { seen.join(", ") },
        want: image.to_string(),
    })
}

impl TrustMaterial {
    /// Steps 1-8 for one cosign v3 bundle against the pulled image.
    pub fn verify_image_bundle(
        &self,
        bundle: &Bundle,
        image: &Digest,
        signer: ExpectedSigner<'_>,
    ) -> Result<VerifiedSignature, VerifyError> {
        // (2) Image binding first: cheap, and the most common mismatch.
        check_image_statement(bundle, image)?;
        // (3)-(8) The library also re-checks the subject against the digest.
        self.verify_bundle(bundle, ArtifactRef::Digest(image), signer)
    }
}

/// Decide whether `image` is signed as `policy` requires, from `candidates`.
///
/// Never panics and never stops at the first bad candidate: every candidate
/// gets an outcome, so the decision explains itself.
pub fn verify_image(trust: &TrustMaterial, image: &Digest, candidates: &[SignatureMaterial], policy: &IdentityPolicy) -> ImageDecision {
    verify_image_at(trust, image, candidates, policy, jiff::Timestamp::now())
}

/// [`verify_image`] with the time `notOlderThan` attestation conditions are judged at.
pub fn verify_image_at(
    trust: &TrustMaterial,
    image: &Digest,
    candidates: &[SignatureMaterial],
    policy: &IdentityPolicy,
    now: jiff::Timestamp,
) -> ImageDecision {
    // Attestation bundles are told apart only when the policy requires attestations; otherwise
    // every candidate is judged as a signature, as it always was.
    let mut attestations = Vec::new();
    let mut signatures = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        match policy.has_attestations().then(|| AttestationCandidate::classify(candidate)).flatten() {
            Some(a) => attestations.push(a),
            None => signatures.push(candidate),
        }
    }
    let mut outcomes = Vec::with_capacity(signatures.len());
    let mut satisfied = vec![false; policy.authorities().len()];
    for candidate in signatures {
        let outcome = evaluate_candidate(trust, image, candidate, policy);
        for (i, a) in outcome.authorities.iter().enumerate() {
            satisfied[i] |= a.satisfied;
        }
        outcomes.push(outcome);
    }
    let (attestations, requirements) = if policy.has_attestations() {
        super::attestation::judge(trust, image, &attestations, policy, &satisfied, now)
    } else {
        (Vec::new(), Vec::new())
    };
    // An authority counts only when every attestation it requires passed too.
    let authority_index = |name: &str| policy.authorities().iter().position(|a| a.name == name);
    for r in requirements.iter().filter(|r| !r.satisfied) {
        if let Some(i) = authority_index(&r.authority) {
            satisfied[i] = false;
        }
    }
    let satisfied_names: Vec<String> =
        policy.authorities().iter().zip(&satisfied).filter(|(_, s)| **s).map(|(a, _)| a.name.clone()).collect();
    ImageDecision {
        image: image.to_string(),
        allowed: satisfied_names.len() >= policy.threshold(),
        satisfied: satisfied_names,
        policy: policy.summary(),
        candidates: outcomes,
        trust_root: trust.source_digest().to_string(),
        attestations,
        requirements,
    }
}

/// A candidate after step 1: parsed, and knowing whether it is keyless.
enum Parsed {
    Bundle(Box<Bundle>),
    Legacy(LegacySignature),
}

/// Steps (1)-(9) for one candidate: parsed, then verified as keyless or key-signed.
fn evaluate_candidate(trust: &TrustMaterial, image: &Digest, candidate: &SignatureMaterial, policy: &IdentityPolicy) -> CandidateOutcome {
    let outcome = CandidateOutcome {
        source: candidate.source().to_string(),
        format: candidate.format(),
        verified: None,
        error: None,
        error_category: None,
        authorities: Vec::new(),
    };
    // (1) Parse.
    let parsed = match candidate {
        SignatureMaterial::Bundle { json, .. } => match parse_bundle(json) {
            Ok(bundle) => Parsed::Bundle(Box::new(bundle)),
            Err(e) => return failed(outcome, policy, e.into()),
        },
        SignatureMaterial::Legacy { signature, .. } => Parsed::Legacy(signature.clone()),
    };
    let keyless = match &parsed {
        Parsed::Bundle(b) => b.signing_certificate().is_some(),
        Parsed::Legacy(l) => l.certificate.as_deref().is_some_and(|c| !c.trim().is_empty()),
    };
    let verify = |signer: ExpectedSigner<'_>| match &parsed {
        Parsed::Bundle(bundle) => trust.verify_image_bundle(bundle, image, signer),
        Parsed::Legacy(sig) => trust.verify_legacy(sig, image, signer),
    };
    if keyless {
        keyless_outcome(outcome, policy, verify)
    } else {
        keyed_outcome(outcome, policy, verify)
    }
}

/// A keyless candidate: (2)-(8) once; (9) against every keyless authority.
fn keyless_outcome(
    mut outcome: CandidateOutcome,
    policy: &IdentityPolicy,
    verify: impl Fn(ExpectedSigner<'_>) -> Result<VerifiedSignature, VerifyError>,
) -> CandidateOutcome {
    if !policy.has_keyless() {
        return failed(
            outcome,
            policy,
            crate::verify::error::CertificateError::WrongKind("signed with a Fulcio certificate, but the policy only accepts keys".into())
                .into(),
        );
    }
    let verified = match verify(ExpectedSigner::Certificate) {
        Ok(v) => v,
        Err(e) => return failed(outcome, policy, e),
    };
    let Signer::Certificate(identity) = &verified.signer else {
        return failed(outcome, policy, crate::verify::error::CertificateError::WrongKind("expected a certificate signer".into()).into());
    };
    for authority in policy.authorities() {
        let result = match &authority.signers {
            AuthoritySigners::Keyless(identities) => {
                let mut first_error = None;
                let mut ok = false;
                for id in identities {
                    match id.check(identity) {
                        Ok(()) => {
                            ok = true;
                            break;
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                if ok {
                    Ok(())
                } else {
                    Err(first_error.map(|e| e.to_string()).unwrap_or_default())
                }
            }
            AuthoritySigners::Keys(_) => Err(IdentityMismatch::SignerKind("keyless signature, authority accepts keys".into()).to_string()),
        };
        outcome.authorities.push(authority_outcome(&authority.name, result));
    }
    outcome.verified = Some(verified);
    outcome
}

/// A key-signed candidate: (2)-(8) per configured key until one verifies, for each authority.
fn keyed_outcome(
    mut outcome: CandidateOutcome,
    policy: &IdentityPolicy,
    verify: impl Fn(ExpectedSigner<'_>) -> Result<VerifiedSignature, VerifyError>,
) -> CandidateOutcome {
    if !policy.has_keys() {
        return failed(
            outcome,
            policy,
            crate::verify::error::CertificateError::WrongKind(
                "signed with a public key, but the policy only accepts Fulcio identities".into(),
            )
            .into(),
        );
    }
    for authority in policy.authorities() {
        let result = match &authority.signers {
            AuthoritySigners::Keys(keys) => {
                let mut last_error = None;
                let mut found = None;
                for key in keys {
                    match verify(ExpectedSigner::Key(key)) {
                        Ok(v) => {
                            found = Some(v);
                            break;
                        }
                        Err(e) => last_error = Some(e),
                    }
                }
                match found {
                    Some(v) => {
                        outcome.verified.get_or_insert(v);
                        Ok(())
                    }
                    None => Err(match last_error {
                        // Binding and material errors do not depend on the key: report them as such.
                        Some(e @ (VerifyError::Binding(_) | VerifyError::Material(_) | VerifyError::Tlog(_))) => e.to_string(),
                        Some(e) if keys.len() == 1 => e.to_string(),
                        _ => IdentityMismatch::NoKey(keys.len()).to_string(),
                    }),
                }
            }
            AuthoritySigners::Keyless(_) => {
                Err(IdentityMismatch::SignerKind("key signature, authority accepts Fulcio identities".into()).to_string())
            }
        };
        outcome.authorities.push(authority_outcome(&authority.name, result));
    }
    outcome
}

fn authority_outcome(name: &str, result: Result<(), String>) -> AuthorityOutcome {
    AuthorityOutcome { authority: name.to_string(), satisfied: result.is_ok(), reason: result.err() }
}

fn failed(mut outcome: CandidateOutcome, policy: &IdentityPolicy, error: VerifyError) -> CandidateOutcome {
    outcome.error_category = Some(error.category());
    outcome.error = Some(error.to_string());
    outcome.authorities =
        policy.authorities().iter().map(|a| AuthorityOutcome { authority: a.name.clone(), satisfied: false, reason: None }).collect();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestAlgorithm;

    #[test]
    fn sha384_image_digest_binds_to_a_sha384_subject() {
        let image = Digest::compute(DigestAlgorithm::Sha384, b"manifest");
        let statement = |alg: &str, hex: &str| serde_json::json!({"subject": [{"digest": {alg: hex}}]});
        assert_eq!(check_statement_subject(&statement("sha384", image.hex()), &image), Ok(()));
        let other = Digest::compute(DigestAlgorithm::Sha384, b"other");
        assert!(check_statement_subject(&statement("sha384", other.hex()), &image).is_err());
        let sha256 = Digest::sha256(b"manifest");
        assert!(check_statement_subject(&statement("sha256", sha256.hex()), &image).is_err(), "another algorithm is not a match");
    }
}
