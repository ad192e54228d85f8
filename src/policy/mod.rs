//! Whom we accept: identity policy, separate from what we trust (`verify::trust`).
//!
//! # Layout
//! - [`identity`]: keyless identities: SAN and issuer (exact or anchored
//!   regex) and Fulcio extension claims (exact).
//! - [`attestation`]: attestations an authority requires (predicate type, signer,
//!   conditions on the predicate).
//! - [`authority`]: authorities (keyless identities or public keys) and the
//!   N-of-M [`IdentityPolicy`] over them.
//!
//! Image patterns, namespaces and enforcement modes arrive with the
//! enforcement issue; they will select an [`IdentityPolicy`] per image, so this
//! module stays independent of how images are matched.

pub mod attestation;
pub mod authority;
pub mod identity;

pub use attestation::{AttestationRequirement, Condition, JsonPath, Test};
pub use authority::{Authority, AuthoritySigners, IdentityPolicy};
pub use identity::{ExtensionClaim, IdentityMismatch, KeylessIdentity, PolicyError, StringMatcher};
