//! Required attestations: in-toto statements other than cosign's signature, verified with the
//! same steps as signatures and judged against each authority's
//! [`AttestationRequirement`]s.
//!
//! A candidate bundle is an attestation when its DSSE envelope holds an in-toto Statement (v1,
//! or v0.1 as older `cosign attest` writes) whose `predicateType` is not cosign's signature
//! predicate. For each requirement of each authority:
//!
//! 1. candidates with exactly the required `predicateType` are considered (none: "not found");
//! 2. (step 2) one of the statement's subjects is the image digest being decided;
//! 3. (steps 1, 3-8) the bundle verifies against the trust root, as a signature would;
//! 4. (step 9) its signer matches the requirement's signer, or the authority's own;
//! 5. every condition holds on the statement's `predicate`.
//!
//! The first candidate that passes all five satisfies the requirement. Otherwise the reason is
//! the failure of the candidate that got furthest, as one line:
//! `attestation https://slsa.dev/provenance/v1: buildDefinition... = "x", want "y"`.

use std::cell::OnceCell;

use serde::Serialize;
use serde_json::Value;
use sigstore_verify::types::Bundle;

use super::bundle::{parse_bundle, ArtifactRef, ExpectedSigner, Signer, VerifiedSignature};
use super::error::{one_line, VerifyError};
use super::image::{check_statement_subject, in_toto_statement, signer_label, SignatureMaterial, COSIGN_SIGN_PREDICATE, STATEMENT_V1};
use super::signers::{AttestationRequirement, AuthoritySigners, IdentityPolicy};
use super::trust::TrustMaterial;
use crate::digest::Digest;

/// in-toto Statement v0.1, still written by `cosign attest` before v3.
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";

/// An attestation bundle found for the image, parsed once.
pub struct AttestationCandidate {
    source: String,
    predicate_type: String,
    statement: Value,
    bundle: Box<Bundle>,
    /// Keyless verification (steps 1, 3-8) runs at most once, however many
    /// requirements consider this candidate.
    keyless: OnceCell<Result<VerifiedSignature, VerifyError>>,
}

impl AttestationCandidate {
    /// `Some` when `material` is a bundle holding an in-toto statement of a predicate other than
    /// cosign's signature; anything else (including unreadable bundles) stays a signature
    /// candidate and is judged as one.
    pub fn classify(material: &SignatureMaterial) -> Option<AttestationCandidate> {
        let SignatureMaterial::Bundle { source, json } = material else {
            return None;
        };
        let bundle = parse_bundle(json).ok()?;
        let statement = in_toto_statement(&bundle).ok()?;
        let kind = statement.get("_type").and_then(Value::as_str)?;
        if kind != STATEMENT_V1 && kind != STATEMENT_V01 {
            return None;
        }
        let predicate_type = statement.get("predicateType").and_then(Value::as_str)?;
        if predicate_type == COSIGN_SIGN_PREDICATE {
            return None;
        }
        Some(AttestationCandidate {
            source: source.clone(),
            predicate_type: predicate_type.to_string(),
            statement,
            bundle: Box::new(bundle),
            keyless: OnceCell::new(),
        })
    }

    /// The statement's `predicateType`.
    pub fn predicate_type(&self) -> &str {
        &self.predicate_type
    }
}

/// How one attestation fared against one requirement of one authority.
#[derive(Debug, Clone, Serialize)]
pub struct Judgment {
    /// The authority whose requirement this is.
    pub authority: String,
    /// Whether this attestation satisfies it.
    pub satisfied: bool,
    /// Why not, in one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One attestation found for the image, and how it was judged.
#[derive(Debug, Clone, Serialize)]
pub struct AttestationOutcome {
    /// Where it came from.
    pub source: String,
    /// Its `predicateType`.
    pub predicate_type: String,
    /// Who signed it, when its signature verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Per-requirement results; empty when no authority requires this predicate type.
    pub judgments: Vec<Judgment>,
}

impl AttestationOutcome {
    /// One line: how it was judged.
    pub fn verdict(&self) -> String {
        if self.judgments.is_empty() {
            return "not required by the policy".into();
        }
        let parts: Vec<String> = self
            .judgments
            .iter()
            .map(|j| match &j.reason {
                None => format!("satisfies authority {}", j.authority),
                Some(r) => format!("authority {}: {r}", j.authority),
            })
            .collect();
        parts.join("; ")
    }
}

/// One requirement of one authority, and whether any attestation met it.
#[derive(Debug, Clone, Serialize)]
pub struct RequirementOutcome {
    /// The authority.
    pub authority: String,
    /// The required `predicateType`.
    pub predicate_type: String,
    /// Whether an attestation met it.
    pub satisfied: bool,
    /// Whether the authority's signature was satisfied (then this requirement decides).
    pub signed: bool,
    /// `attestation <type>: <why>`, when not satisfied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Satisfied under `notOlderThan` conditions: the moment the last satisfying attestation
    /// stops meeting them (a cached decision must not outlive it).
    #[serde(skip)]
    pub fresh_until: Option<jiff::Timestamp>,
}

/// How far a candidate got: a later stage is the more useful reason.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Verify,
    Signer,
    Condition,
}

/// Judges every requirement of every authority against `candidates`. `signed[i]` says whether
/// authority `i`'s signature was satisfied. `now` dates `notOlderThan` conditions.
pub fn judge(
    trust: &TrustMaterial,
    image: &Digest,
    candidates: &[AttestationCandidate],
    policy: &IdentityPolicy,
    signed: &[bool],
    now: jiff::Timestamp,
) -> (Vec<AttestationOutcome>, Vec<RequirementOutcome>) {
    let mut outcomes: Vec<AttestationOutcome> = candidates
        .iter()
        .map(|c| AttestationOutcome {
            source: c.source.clone(),
            predicate_type: one_line(&c.predicate_type),
            signer: None,
            judgments: Vec::new(),
        })
        .collect();
    let mut requirements = Vec::new();
    for (i, authority) in policy.authorities().iter().enumerate() {
        for req in &authority.attestations {
            let signers = req.signers.as_ref().unwrap_or(&authority.signers);
            let mut best: Option<(Stage, String)> = None;
            let mut satisfied = false;
            // Over the satisfying candidates: `Some(None)` once one holds regardless of time.
            let mut fresh_until: Option<Option<jiff::Timestamp>> = None;
            for (c, outcome) in candidates.iter().zip(outcomes.iter_mut()) {
                if c.predicate_type != req.predicate_type {
                    continue;
                }
                let result = check(trust, image, c, signers, req, now);
                if let Ok(v) | Err((_, _, Some(v))) = &result {
                    outcome.signer.get_or_insert_with(|| signer_label(&v.signer));
                }
                let reason = match result {
                    Ok(_) => None,
                    Err((stage, why, _)) => {
                        if best.as_ref().is_none_or(|(s, _)| stage > *s) {
                            best = Some((stage, why.clone()));
                        }
                        Some(why)
                    }
                };
                if reason.is_none() {
                    satisfied = true;
                    let until = req.fresh_until(c.statement.get("predicate").unwrap_or(&Value::Null));
                    fresh_until = Some(match fresh_until {
                        None => until,
                        Some(seen) => seen.zip(until).map(|(a, b)| a.max(b)),
                    });
                }
                outcome.judgments.push(Judgment { authority: authority.name.clone(), satisfied: reason.is_none(), reason });
            }
            let reason = (!satisfied).then(|| {
                let why = match best {
                    Some((_, why)) => why,
                    None => "not found".to_string(),
                };
                one_line(&format!("attestation {}: {why}", req.predicate_type))
            });
            requirements.push(RequirementOutcome {
                authority: authority.name.clone(),
                predicate_type: req.predicate_type.clone(),
                satisfied,
                signed: signed.get(i).copied().unwrap_or(false),
                reason,
                fresh_until: fresh_until.flatten(),
            });
        }
    }
    (outcomes, requirements)
}

type Failure = (Stage, String, Option<VerifiedSignature>);

// A failure carries the signature it verified (if any) for the report; it is built once per
// candidate, off the hot path, so its size costs nothing worth boxing.
#[allow(clippy::result_large_err)]
fn check(
    trust: &TrustMaterial,
    image: &Digest,
    c: &AttestationCandidate,
    signers: &AuthoritySigners,
    req: &AttestationRequirement,
    now: jiff::Timestamp,
) -> Result<VerifiedSignature, Failure> {
    // (2) The statement is about the image being decided.
    check_statement_subject(&c.statement, image).map_err(|e| (Stage::Verify, e.to_string(), None))?;
    // (1), (3)-(8) and (9): verified by an accepted signer.
    let verified = match signers {
        AuthoritySigners::Keyless(identities) => {
            let verified = c
                .keyless
                .get_or_init(|| trust.verify_bundle(&c.bundle, ArtifactRef::Digest(image), ExpectedSigner::Certificate))
                .as_ref()
                .map_err(|e| (Stage::Verify, e.to_string(), None))?;
            let Signer::Certificate(identity) = &verified.signer else {
                return Err((Stage::Verify, "expected a certificate signer".into(), None));
            };
            let mut first = None;
            if !identities.iter().any(|id| match id.check(identity) {
                Ok(()) => true,
                Err(e) => {
                    first.get_or_insert(e);
                    false
                }
            }) {
                let why = first.map(|e| e.to_string()).unwrap_or_default();
                return Err((Stage::Signer, why, Some(verified.clone())));
            }
            verified.clone()
        }
        AuthoritySigners::Keys(keys) => {
            let mut last = None;
            let mut found = None;
            for key in keys {
                match trust.verify_bundle(&c.bundle, ArtifactRef::Digest(image), ExpectedSigner::Key(key)) {
                    Ok(v) => {
                        found = Some(v);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (found, last) {
                (Some(v), _) => v,
                (None, Some(e)) if keys.len() == 1 => return Err((Stage::Verify, e.to_string(), None)),
                _ => {
                    let why = format!("signed by none of the {} accepted key(s)", keys.len());
                    return Err((Stage::Signer, why, None));
                }
            }
        }
    };
    // Conditions on the predicate (absent predicate: every path is missing).
    let predicate = c.statement.get("predicate").unwrap_or(&Value::Null);
    req.check_conditions(predicate, now).map_err(|why| (Stage::Condition, why, Some(verified.clone())))?;
    Ok(verified)
}
