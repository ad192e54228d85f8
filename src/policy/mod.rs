//! Whom we accept for which image: image policies (globs, namespaces, modes, exemptions,
//! authorities) and the `policy:` configuration they are compiled from. Separate from what we
//! trust (`verify::trust`).
//!
//! # Layout
//! - [`images`]: the `policy:` YAML, its compilation into a [`PolicySet`], and
//!   [`PolicySet::applicable`]: what must be checked for an image in a namespace.
//!
//! The signer requirements themselves (identities, authorities, required attestations and
//! their matching) are [`crate::verify::signers`]: verification matches against them and must
//! not depend on how they are configured. They are re-exported here, where policies are built.

pub mod images;

pub use crate::verify::signers::{
    AttestationRequirement, Authority, AuthoritySigners, Condition, ExtensionClaim, IdentityMismatch, IdentityPolicy, JsonPath,
    KeylessIdentity, PolicyError, StringMatcher, Test,
};
pub use images::{
    Applicable, AttestationConfig, AuthorityConfig, ConditionConfig, ExemptionConfig, IdentityConfig, ImagePolicy, ImagePolicyConfig,
    KeyConfig, KeylessConfig, Mode, MultiArch, PolicyConfig, PolicyConfigError, PolicySet, ScalarConfig, SignerConfig, Unmatched,
};
