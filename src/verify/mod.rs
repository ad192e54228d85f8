//! Offline Sigstore verification of container image signatures.
//!
//! # Layout
//! - [`trust`]: the trusted root, parsed once, shared and swapped atomically.
//! - [`bundle`]: cryptographic verification of one Sigstore bundle.
//! - [`image`]: cosign v3 image binding and the per-image decision.
//! - [`legacy`]: cosign `.sig` simple-signing layers and their annotations.
//! - [`tlog`]: inclusion proofs, checkpoints and SETs we check ourselves.
//! - `timestamp`: RFC 3161 tokens against TSA chains validated once per root.
//! - [`certificate`]: the Fulcio claims of a verified certificate.
//! - [`keys`]: configured public keys for key-based signatures.
//! - [`digest`]: `sha256:`/`sha512:` digests.
//! - [`error`]: one error enum per verification step.
//! - [`cli`]: `verify-bundle` (sigstore-conformance protocol) and `verify-image-files`.
//!
//! # Verification steps
//! Every candidate signature goes through these steps; each failure is a
//! distinct variant of [`error::VerifyError`] and the step numbers are repeated
//! above the code that implements them.
//!
//! 1. Parse the material within size limits; require the log evidence its
//!    format needs.
//! 2. Bind it to the pulled image: DSSE in-toto Statement v1 with predicate
//!    `https://sigstore.dev/cosign/sign/v1` and the manifest digest as
//!    subject; or, for legacy `.sig` layers, payload digest, `critical.type`
//!    and `critical.image.docker-manifest-digest`.
//! 3. Establish verified signing times from SETs and RFC 3161 timestamps.
//! 4. Chain the certificate to a trusted Fulcio CA valid at every signing
//!    time (or use a configured key).
//! 5. Verify the certificate's SCT.
//! 6. Verify the inclusion proof, signed checkpoint and SET.
//! 7. Verify the signature.
//! 8. Check the log entry describes this signature.
//! 9. Match the signer against the policy's authorities (SAN, issuer, Fulcio
//!    claims, keys) and count satisfied authorities against the threshold.

pub mod bundle;
pub mod certificate;
pub mod cli;
pub mod digest;
pub mod error;
pub mod image;
pub mod keys;
pub mod legacy;
mod timestamp;
pub mod tlog;
pub mod trust;

pub use bundle::{
    parse_bundle, ArtifactRef, ExpectedSigner, LogEntrySummary, Mode, Signer, VerifiedSignature,
};
pub use certificate::CertificateIdentity;
pub use digest::{Digest, DigestAlgorithm};
pub use error::VerifyError;
pub use image::{verify_image, CandidateOutcome, ImageDecision, SignatureMaterial};
pub use keys::{KeyKind, PublicKey};
pub use legacy::{LegacySignature, RekorSetBundle};
pub use trust::{TrustMaterial, TrustStore};
