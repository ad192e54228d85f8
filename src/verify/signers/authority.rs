//! Authorities and the N-of-M identity policy.
//!
//! An authority is one party whose signature counts: a set of keyless
//! identities (any one suffices) or a set of public keys (any one suffices).
//! A policy requires `threshold` distinct authorities to have signed, so
//! "release team AND security team" is two authorities with threshold 2.

use serde::Serialize;

use super::attestation::AttestationRequirement;
use super::identity::{KeylessIdentity, PolicyError};
use crate::verify::keys::PublicKey;

/// Who can speak for an authority.
#[derive(Debug, Clone)]
pub enum AuthoritySigners {
    /// Fulcio certificates matching any of these identities.
    Keyless(Vec<KeylessIdentity>),
    /// Signatures by any of these keys.
    Keys(Vec<PublicKey>),
}

/// One party whose signature counts towards the threshold.
#[derive(Debug, Clone)]
pub struct Authority {
    /// Name used in decisions and logs.
    pub name: String,
    /// Identities or keys.
    pub signers: AuthoritySigners,
    /// Attestations that must also be present and pass (none: the signature suffices).
    pub attestations: Vec<AttestationRequirement>,
}

impl Authority {
    /// A keyless authority.
    pub fn keyless(name: impl Into<String>, identities: Vec<KeylessIdentity>) -> Result<Self, PolicyError> {
        let name = name.into();
        if identities.is_empty() {
            return Err(PolicyError::EmptyAuthority(name));
        }
        Ok(Self { name, signers: AuthoritySigners::Keyless(identities), attestations: Vec::new() })
    }

    /// A key-based authority.
    pub fn keys(name: impl Into<String>, keys: Vec<PublicKey>) -> Result<Self, PolicyError> {
        let name = name.into();
        if keys.is_empty() {
            return Err(PolicyError::EmptyAuthority(name));
        }
        Ok(Self { name, signers: AuthoritySigners::Keys(keys), attestations: Vec::new() })
    }

    /// This authority, also requiring `attestations`.
    pub fn with_attestations(mut self, attestations: Vec<AttestationRequirement>) -> Self {
        self.attestations = attestations;
        self
    }

    /// Whether this authority accepts Fulcio certificates.
    pub fn is_keyless(&self) -> bool {
        matches!(self.signers, AuthoritySigners::Keyless(_))
    }
}

/// `threshold` of `authorities` must have signed the image.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    authorities: Vec<Authority>,
    threshold: usize,
}

/// A serializable view of a policy, for decision output.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    /// Authority names.
    pub authorities: Vec<String>,
    /// Required count.
    pub threshold: usize,
}

impl IdentityPolicy {
    /// Require `threshold` (1 ..= len) of `authorities`.
    pub fn new(authorities: Vec<Authority>, threshold: usize) -> Result<Self, PolicyError> {
        if threshold == 0 || threshold > authorities.len() {
            return Err(PolicyError::Threshold { threshold, authorities: authorities.len() });
        }
        Ok(Self { authorities, threshold })
    }

    /// Any one of `authorities`.
    pub fn any_of(authorities: Vec<Authority>) -> Result<Self, PolicyError> {
        Self::new(authorities, 1)
    }

    /// All of `authorities`.
    pub fn all_of(authorities: Vec<Authority>) -> Result<Self, PolicyError> {
        let n = authorities.len();
        Self::new(authorities, n)
    }

    /// The authorities.
    pub fn authorities(&self) -> &[Authority] {
        &self.authorities
    }

    /// How many must be satisfied.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Whether any authority accepts Fulcio certificates.
    pub fn has_keyless(&self) -> bool {
        self.authorities.iter().any(Authority::is_keyless)
    }

    /// Whether any authority requires attestations.
    pub fn has_attestations(&self) -> bool {
        self.authorities.iter().any(|a| !a.attestations.is_empty())
    }

    /// Whether any authority accepts keys.
    pub fn has_keys(&self) -> bool {
        self.authorities.iter().any(|a| !a.is_keyless())
    }

    /// A serializable summary.
    pub fn summary(&self) -> PolicySummary {
        PolicySummary { authorities: self.authorities.iter().map(|a| a.name.clone()).collect(), threshold: self.threshold }
    }
}
