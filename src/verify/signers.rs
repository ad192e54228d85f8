//! Whom a signature must come from: the signer requirements verification matches against
//! (step 9), built by `crate::policy` from its configuration or by the verify CLIs from flags.
//!
//! # Layout
//! - [`identity`]: keyless identities: SAN and issuer (exact or anchored
//!   regex) and Fulcio extension claims (exact).
//! - [`attestation`]: attestations an authority requires (predicate type, signer,
//!   conditions on the predicate).
//! - [`authority`]: authorities (keyless identities or public keys) and the
//!   N-of-M [`IdentityPolicy`] over them.
//!
//! Which images need which [`IdentityPolicy`] is `crate::policy`'s business; these types
//! know nothing of images, namespaces or modes.

pub mod attestation;
pub mod authority;
pub mod identity;

pub use attestation::{AttestationRequirement, Condition, JsonPath, Test};
pub use authority::{Authority, AuthoritySigners, IdentityPolicy, PolicySummary};
pub use identity::{ExtensionClaim, IdentityMismatch, KeylessIdentity, PolicyError, StringMatcher};
