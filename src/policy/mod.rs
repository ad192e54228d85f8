//! Whom we accept: identity policy, separate from what we trust (`verify::trust`).
//!
//! The signer requirements themselves (identities, authorities, required attestations and
//! their matching) are [`crate::verify::signers`]: verification matches against them and must
//! not depend on how they are configured. They are re-exported here, where policies are built.
//!
//! Image patterns, namespaces and enforcement modes select an [`IdentityPolicy`] per image.

pub use crate::verify::signers::{
    AttestationRequirement, Authority, AuthoritySigners, Condition, ExtensionClaim, IdentityMismatch, IdentityPolicy, JsonPath,
    KeylessIdentity, PolicyError, StringMatcher, Test,
};
