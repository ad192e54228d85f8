//! Offline Sigstore verification of container image signatures.
//!
//! # Layout
//! - [`trust`]: the trusted root, parsed once, shared and swapped atomically.
//! - [`attestation`]: required in-toto attestations (SLSA provenance, scans) and their conditions.
//! - [`bundle`]: cryptographic verification of one Sigstore bundle.
//! - [`image`]: cosign v3 image binding and the per-image decision.
//! - [`legacy`]: cosign `.sig` simple-signing layers and their annotations.
//! - [`legacy_attestation`]: cosign `.att` DSSE layers, rebuilt into attestation bundles.
//! - [`tlog`]: inclusion proofs, checkpoints and SETs we check ourselves.
//! - `timestamp`: RFC 3161 tokens against TSA chains validated once per root.
//! - `sct`: the leaf's embedded SCT (step 5) on the DER, in fast mode.
//! - `direct`: fast mode's own run of the library's steps for the common
//!   keyless shapes (DSSE with `dsse/0.0.1`, message with `hashedrekord/0.0.1`).
//! - [`certificate`]: the Fulcio claims of a verified certificate.
//! - [`keys`]: configured public keys for key-based signatures.
//! - [`signers`]: whom a signature must come from: identities, authorities, required
//!   attestations (step 9).
//! - [`error`]: one error enum per verification step.
//! - [`crate::cmd::verify_files`]: `verify-bundle` (sigstore-conformance protocol) and `verify-image-files`.
//!
//! # Verification steps
//! Every candidate signature goes through these steps; each failure is a
//! distinct variant of [`error::VerifyError`] and the step numbers are repeated
//! above the code that implements them.
//!
//! 1. Parse the material within size limits; require the log evidence its
//!    format needs (from bundle v0.2 on an inclusion proof; a v0.1 bundle
//!    may carry only a SET, see the allow-list). At most 32 RFC 3161 tokens
//!    and no token twice ([`error::TimestampError::TooMany`],
//!    [`error::TimestampError::Duplicate`]).
//! 2. Bind it to the pulled image: DSSE in-toto Statement v1 with predicate
//!    `https://sigstore.dev/cosign/sign/v1` and the manifest digest as
//!    subject; or, for legacy `.sig` layers, payload digest, `critical.type`
//!    and `critical.image.docker-manifest-digest`. (2a) A message
//!    signature's `messageDigest`, when present, equals the artifact's.
//!    (2b) A required attestation (an in-toto Statement v1 or v0.1 of another
//!    predicate type, see [`attestation`]) is bound the same way, by subject,
//!    and goes through steps 1-9 like a signature; conditions on its predicate
//!    are checked after step 9. A cosign legacy `.att` layer is first rebuilt
//!    into the v0.1 bundle it amounts to ([`legacy_attestation`]).
//! 3. Establish verified signing times from SETs and RFC 3161 timestamps.
//!    (3a) A token whose signer (issuer and serial, or subject key
//!    identifier) is no TSA of the trust root is skipped, reported in
//!    [`VerifiedSignature::skipped_timestamps`] and at debug level, and never
//!    counted; the remaining sources must give at least one verified time.
//! 4. Chain the certificate to a trusted Fulcio CA valid at every signing
//!    time (or use a configured key). (4a) Every certificate a bundle
//!    carries after the leaf parses as X.509 and none is a self-signed
//!    certificate other than one of the trust root's own CA certificates
//!    ([`error::CertificateError::ChainCertificate`],
//!    [`error::CertificateError::RootInChain`]); parsed intermediates are
//!    otherwise unused, since the leaf is chained to the trust root's CAs.
//! 5. Verify the certificate's SCT.
//! 6. Verify the inclusion proof, signed checkpoint and SET. (6a) The
//!    proof's `treeSize` and `rootHash` equal the signed checkpoint's, for
//!    Rekor v1 and v2, and for Rekor v2 its `logIndex` equals the entry's
//!    ([`error::TlogError::ProofFieldMismatch`]). (6b) The checkpoint is
//!    signed by the entry's own log, on a signature line carrying the log's
//!    name ([`error::TlogError::CheckpointSigner`]).
//! 7. Verify the signature.
//! 8. Check the log entry describes this signature.
//! 9. Match the signer against the policy's authorities (SAN, including a
//!    Fulcio username otherName SAN, issuer, Fulcio claims, keys) and count
//!    satisfied authorities against the threshold.
//!
//! # Edits that verification accepts on purpose
//!
//! `tests/verify_mutations.rs` edits every field of every valid bundle it
//! knows (bit flips in base64 fields, number steps, character edits, key
//! deletions) and requires each edit to be refused, except the ones in
//! [`ALLOWED_EDITS`], which cannot change what was signed, by whom or when:
//!
//! | field | edit | why it is accepted |
//! |---|---|---|
//! | `mediaType` | a version step to one whose requirements the bundle also meets (v0.1 to v0.2) | Unsigned format marker. Later versions only add requirements (v0.2 requires an inclusion proof), so a bundle meeting them is verified by the stricter rules. A missing `mediaType` is refused (the library would read it as v0.1). |
//! | `verificationMaterial.publicKey.hint` | any | Unsigned by design: only a lookup hint. The key that verifies is the one the policy configures, never one the hint names. |
//! | `dsseEnvelope.signatures[].keyid` | any | Unsigned DSSE key hint, not part of the PAE; ignored like the public-key hint. |
//! | `messageSignature.messageDigest` | deletion | Optional in the bundle spec (identification only). The signature over the artifact and the hashedrekord entry's digest (step 8) bind the artifact; when present it must match (2a). |
//! | `tlogEntries[].inclusionProof` (v0.1) | deletion | Bundle v0.1 predates the inclusion-proof requirement: a SET alone is log evidence there (sigstore-go accepts, sigstore-python refuses; the Sigstore suites expect acceptance). From v0.2 on it is required. |
//! | `x509CertificateChain.certificates[1..]` | edits that still parse as X.509 | Carried intermediates are never used: the leaf is chained to the trust root's own CA certificates (4a). Edits that break the DER, or a carried root the trust root does not hold, are refused. |
//! | checkpoint witness cosignature | any edit in a signature line that does not name the log | No policy here requires witnesses; only the log's own signature line is verified (6b). Edits to the signed note body or to the log's line are refused, and so is a note without its final newline. Unused base64 padding bits cannot be set: the signature lines are decoded strictly (canonical padding). |
//! | checkpoint log signature line, second copy | edits in one of two lines naming the log | A checkpoint may carry the log's signature twice; one valid line by the entry's log key is the proof, the other is not read. |
//! | `rfc3161Timestamps[]` naming an unlisted TSA | edits to a token's signer identifier | The token then names a TSA the trust root does not list: skipped and reported (3a), never counted, as sigstore-go and sigstore-python do. Accepted only when the remaining time sources still verify. |
//! | `rfc3161Timestamps[]` embedded certificates | bit flips inside a certificate a token embeds | Embedded certificates are never used: the signer is found among the trust root's TSAs (3a), with or without one. |
//! | redundant time source | deletion of `inclusionPromise`, `timestampVerificationData` or a token | When another verified time source remains (a SET or a listed token) the threshold of one is still met; the deleted one added nothing. |

pub mod attestation;
pub mod bundle;
pub mod certificate;
mod direct;
pub mod error;
pub mod image;
pub mod keys;
pub mod legacy;
pub mod legacy_attestation;
mod sct;
pub mod signers;
mod timestamp;
pub mod tlog;
pub mod trust;

pub use crate::digest::{Digest, DigestAlgorithm};
pub use bundle::{parse_bundle, ArtifactRef, ExpectedSigner, LogEntrySummary, Mode, Signer, VerifiedSignature};
pub use certificate::CertificateIdentity;
pub use error::VerifyError;
pub use image::{verify_image, CandidateOutcome, ImageDecision, SignatureMaterial};
pub use keys::{KeyKind, PublicKey};
pub use legacy::{LegacySignature, RekorSetBundle};
pub use legacy_attestation::LegacyAttestation;
pub use trust::TrustMaterial;

/// A single-field edit of a valid bundle that verification accepts on
/// purpose; the table in the module docs gives each with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedEdit {
    /// The field (or class of field) edited.
    pub field: &'static str,
    /// Which edits are accepted.
    pub edit: &'static str,
    /// Why the edit cannot change what was signed, by whom or when.
    pub reason: &'static str,
}

/// The allow-list of [`AllowedEdit`]s, as documented above; the mutation
/// test refuses to pass if an accepted edit is not explained by one of them.
pub const ALLOWED_EDITS: &[AllowedEdit] = &[
    AllowedEdit {
        field: "mediaType",
        edit: "a version step to one whose requirements the bundle also meets",
        reason: "unsigned format marker; later versions only add requirements",
    },
    AllowedEdit { field: "verificationMaterial.publicKey.hint", edit: "any", reason: "unsigned lookup hint; the configured key verifies" },
    AllowedEdit { field: "dsseEnvelope.signatures[].keyid", edit: "any", reason: "unsigned DSSE key hint, outside the PAE" },
    AllowedEdit {
        field: "messageSignature.messageDigest",
        edit: "deletion",
        reason: "optional in the bundle spec; signature and log entry bind the artifact",
    },
    AllowedEdit {
        field: "tlogEntries[].inclusionProof (v0.1)",
        edit: "deletion",
        reason: "bundle v0.1 accepts a SET alone (Sigstore suites, sigstore-go)",
    },
    AllowedEdit {
        field: "x509CertificateChain.certificates[1..]",
        edit: "edits that still parse as X.509",
        reason: "carried intermediates are unused; the trust root's CAs anchor the leaf",
    },
    AllowedEdit {
        field: "checkpoint witness cosignature",
        edit: "edits in a signature line that does not name the log",
        reason: "no policy requires witnesses; only the log's line is verified",
    },
    AllowedEdit {
        field: "checkpoint log signature line, second copy",
        edit: "edits in one of two lines naming the log",
        reason: "one valid line by the entry's log key proves the checkpoint",
    },
    AllowedEdit {
        field: "rfc3161Timestamps[] naming an unlisted TSA",
        edit: "edits to a token's signer identifier",
        reason: "skipped and reported, never counted; other time sources still verify",
    },
    AllowedEdit {
        field: "rfc3161Timestamps[] embedded certificates",
        edit: "bit flips inside a certificate the token embeds",
        reason: "embedded certificates are unused; the trust root's TSAs are",
    },
    AllowedEdit {
        field: "redundant time source",
        edit: "deletion of a SET or timestamp while another time source verifies",
        reason: "the threshold of one verified time is still met",
    },
];
