//! Why a signature was rejected: one small enum per verification step.
//!
//! Every variant renders as a single line that an operator can act on
//! (`identity mismatch: ...`, `no transparency log proof`, `certificate not
//! valid at signing time ...`). [`VerifyError`] is what callers match on; the
//! library's own error is mapped into it in exactly one place,
//! [`VerifyError::from_library`], so new upstream variants land in one match.

use thiserror::Error;

/// Step 1: the signature material could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaterialError {
    /// The bundle is not a well-formed Sigstore bundle.
    #[error("malformed bundle: {0}")]
    MalformedBundle(String),
    /// Well formed, but uses a media type, content or entry kind we do not verify.
    #[error("unsupported bundle: {0}")]
    UnsupportedBundle(String),
    /// A cosign legacy signature layer or one of its annotations is malformed.
    #[error("malformed cosign signature: {0}")]
    MalformedLegacy(String),
    /// An input exceeds the size we are willing to parse.
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A PEM public key could not be parsed or uses an unsupported algorithm.
    #[error("malformed public key: {0}")]
    MalformedKey(String),
    /// A digest string is not `sha256:<64 hex>`, `sha384:<96 hex>` or `sha512:<128 hex>`.
    #[error("malformed digest {0:?}: want sha256:<64 hex>, sha384:<96 hex> or sha512:<128 hex>")]
    MalformedDigest(String),
}

/// `s` as a digest, or [`MaterialError::MalformedDigest`] quoting (at most 140 characters of) it.
pub(crate) fn parse_digest(s: &str) -> Result<crate::digest::Digest, MaterialError> {
    crate::digest::Digest::parse(s).map_err(|_| MaterialError::MalformedDigest(s.chars().take(140).collect()))
}

/// Step 2: the signature does not describe the artifact or image being checked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BindingError {
    /// A cosign image signature must be a DSSE envelope, not a bare message signature.
    #[error("not an image signature: bundle holds a message signature, want a DSSE in-toto statement")]
    NotDsse,
    /// The DSSE payload is not an in-toto statement.
    #[error("DSSE payload type is {got:?}, want \"application/vnd.in-toto+json\"")]
    PayloadType {
        /// The envelope's payload type.
        got: String,
    },
    /// The DSSE payload is not valid in-toto statement JSON.
    #[error("malformed in-toto statement: {0}")]
    MalformedStatement(String),
    /// The statement is not an in-toto Statement v1.
    #[error("statement type is {got:?}, want \"https://in-toto.io/Statement/v1\"")]
    StatementType {
        /// The statement's `_type`.
        got: String,
    },
    /// The statement is an attestation of some other kind, not a cosign signature.
    #[error("predicate type is {got:?}, want \"https://sigstore.dev/cosign/sign/v1\"")]
    PredicateType {
        /// The statement's `predicateType`.
        got: String,
    },
    /// No subject of the statement names the pulled image.
    #[error("subject digest mismatch: signed {got}, pulled {want}")]
    SubjectDigest {
        /// The subject digests found in the statement.
        got: String,
        /// The digest of the image being pulled.
        want: String,
    },
    /// The simple-signing payload does not hash to its layer digest.
    #[error("payload digest mismatch: payload hashes to {got}, layer says {want}")]
    LayerDigest {
        /// sha256 of the payload.
        got: String,
        /// The layer descriptor's digest.
        want: String,
    },
    /// The simple-signing payload is not a cosign container image signature.
    #[error("critical.type is {got:?}, want \"cosign container image signature\"")]
    CriticalType {
        /// The payload's `critical.type`.
        got: String,
    },
    /// The simple-signing payload signs another image.
    #[error("signed manifest digest is {got}, pulled image is {want}")]
    ManifestDigest {
        /// `critical.image.docker-manifest-digest`.
        got: String,
        /// The digest of the image being pulled.
        want: String,
    },
    /// Step 2a: `messageSignature.messageDigest` names another artifact.
    #[error("message digest mismatch: bundle says {got}, artifact is {want}")]
    MessageDigest {
        /// The bundle's `messageDigest` (algorithm:hex).
        got: String,
        /// The artifact's digest in that algorithm, when computable.
        want: String,
    },
    /// The bundle signs some other artifact (message digest or subject mismatch).
    #[error("artifact mismatch: {0}")]
    Artifact(String),
}

/// Steps 3 and 4: the signing certificate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertificateError {
    /// The certificate or its chain could not be parsed.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The certificate does not chain to a trusted Fulcio CA (or lacks code signing).
    #[error("untrusted certificate: {0}")]
    Untrusted(String),
    /// No trusted CA was valid at the signing time.
    #[error("no trusted certificate authority is valid at signing time {time}")]
    NoValidAuthority {
        /// The verified signing time.
        time: String,
    },
    /// The signing time is before the certificate's notBefore.
    #[error("certificate not valid at signing time {time}: not before {not_before}")]
    NotYetValid {
        /// The verified signing time.
        time: String,
        /// The certificate's notBefore.
        not_before: String,
    },
    /// The signing time is after the certificate's notAfter.
    #[error("certificate not valid at signing time {time}: expired at {not_after}")]
    Expired {
        /// The verified signing time.
        time: String,
        /// The certificate's notAfter.
        not_after: String,
    },
    /// Step 4a: a certificate the bundle carries after the leaf is not X.509.
    #[error("malformed chain certificate {index}: {reason}")]
    ChainCertificate {
        /// Position in the carried chain (the leaf is 0).
        index: usize,
        /// Why it does not parse.
        reason: String,
    },
    /// Step 4a: the bundle carries a self-signed (root) certificate that is
    /// not one of the trust root's CA certificates.
    #[error("bundle carries a root certificate at chain position {0}; roots must come from the trusted root")]
    RootInChain(usize),
    /// The embedded SCT is missing or does not verify against a trusted CT log.
    #[error("invalid certificate transparency SCT: {0}")]
    Sct(String),
    /// A certificate was required but the material carries a public key (or the reverse).
    #[error("{0}")]
    WrongKind(String),
}

/// Steps 3, 6 and 8: transparency log evidence.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlogError {
    /// The material carries no log entry, or no inclusion proof where one is required.
    #[error("no transparency log proof: {0}")]
    NoProof(String),
    /// The entry names a log that is not in the trusted root.
    #[error("unknown transparency log {0}")]
    UnknownLog(String),
    /// The Merkle inclusion proof does not lead to the checkpoint's root.
    #[error("invalid inclusion proof: {0}")]
    InclusionProof(String),
    /// The checkpoint is malformed or not signed by a trusted log key.
    #[error("invalid checkpoint: {0}")]
    Checkpoint(String),
    /// The signed entry timestamp (SET) does not verify.
    #[error("invalid signed entry timestamp: {0}")]
    Set(String),
    /// The log entry describes another signature, key or artifact.
    #[error("log entry does not match the signature: {0}")]
    EntryMismatch(String),
    /// Step 6a: an inclusion-proof field disagrees with the signed
    /// checkpoint or with the entry (index, tree size or root).
    #[error("inclusion proof {field} {proof} does not match the {signed}")]
    ProofFieldMismatch {
        /// `logIndex`, `treeSize` or `rootHash`.
        field: &'static str,
        /// The proof's value.
        proof: String,
        /// What the signed checkpoint or the entry commits to.
        signed: String,
    },
    /// Step 6b: the checkpoint is not signed by the entry's own log under its name.
    #[error("checkpoint not signed by the entry's log: {0}")]
    CheckpointSigner(String),
    /// The integrated time is in the future or outside the certificate's validity.
    #[error("invalid integrated time: {0}")]
    IntegratedTime(String),
    /// The log entry body could not be parsed.
    #[error("malformed log entry: {0}")]
    MalformedEntry(String),
}

/// Step 3: RFC 3161 timestamps and the signing time.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimestampError {
    /// A timestamp did not verify against any trusted timestamp authority.
    #[error("invalid RFC 3161 timestamp: {0}")]
    Invalid(String),
    /// An authentic timestamp outside its authority's validity window.
    #[error("RFC 3161 timestamp {0} is outside its authority's validity window")]
    OutsideAuthorityValidity(String),
    /// Step 1: more RFC 3161 tokens than any honest bundle carries.
    #[error("{0} RFC 3161 timestamps, over the limit of {limit}", limit = crate::verify::bundle::MAX_TIMESTAMPS)]
    TooMany(usize),
    /// Step 1: the same RFC 3161 token twice; it would count twice.
    #[error("duplicate RFC 3161 timestamp (tokens {0} and {1} are identical)")]
    Duplicate(usize, usize),
    /// No verified signing time at all (no SET and no timestamp).
    #[error("no verified signing time: {0}")]
    NoVerifiedTime(String),
}

/// Step 7: the signature itself.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The signature does not verify with the signing key.
    #[error("invalid signature: {0}")]
    Invalid(String),
    /// The material cannot be verified with this key's algorithm.
    #[error("unsupported signature: {0}")]
    Unsupported(String),
}

/// The trusted root is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrustRootError {
    /// The file could not be read.
    #[error("cannot read trusted root {path}: {reason}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The JSON does not describe a usable TrustedRoot.
    #[error("invalid trusted root: {0}")]
    Invalid(String),
}

/// Why one signature candidate was rejected. One line, one cause.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// Step 1.
    #[error(transparent)]
    Material(#[from] MaterialError),
    /// Step 2.
    #[error(transparent)]
    Binding(#[from] BindingError),
    /// Steps 3 and 4.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// Steps 3, 6 and 8.
    #[error(transparent)]
    Tlog(#[from] TlogError),
    /// Step 3.
    #[error(transparent)]
    Timestamp(#[from] TimestampError),
    /// Step 7.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The trusted root rejected the material's authorities.
    #[error(transparent)]
    TrustRoot(#[from] TrustRootError),
}

impl VerifyError {
    /// A short stable label for metrics and JSON output (`"tlog"`, `"binding"`, ...).
    pub fn category(&self) -> &'static str {
        match self {
            Self::Material(_) => "material",
            Self::Binding(_) => "binding",
            Self::Certificate(_) => "certificate",
            Self::Tlog(_) => "tlog",
            Self::Timestamp(_) => "timestamp",
            Self::Signature(_) => "signature",
            Self::TrustRoot(_) => "trust-root",
        }
    }

    /// Map a `sigstore-verify` error onto our per-step variants.
    ///
    /// This is the single place where the library's error vocabulary is
    /// translated, so an upstream change shows up here and nowhere else.
    pub fn from_library(error: sigstore_verify::Error) -> Self {
        use sigstore_verify::error::{CertificateError as LCert, TimestampError as LTime, TransparencyLogError as LTlog};
        use sigstore_verify::Error as L;
        let text = one_line(&error.to_string());
        match error {
            L::IdentityMismatch { .. } | L::IssuerMismatch { .. } => {
                // We always verify with `any_identity` and match identities in
                // `policy`, so these cannot occur; keep them readable anyway.
                CertificateError::Untrusted(text).into()
            }
            L::SignatureInvalid(d) => SignatureError::Invalid(one_line(&d)).into(),
            // The library reports a log entry that hashes another artifact as
            // an artifact mismatch; for us that is the entry not matching.
            L::ArtifactMismatch(d) if d.contains("entry") => TlogError::EntryMismatch(one_line(&d)).into(),
            L::ArtifactMismatch(d) => BindingError::Artifact(one_line(&d)).into(),
            L::UnsupportedArtifact(d) => SignatureError::Unsupported(one_line(&d)).into(),
            L::Certificate(c) => match c {
                LCert::Malformed(d) => CertificateError::Malformed(one_line(&d)).into(),
                LCert::ChainInvalid(d) => chain_error(&d).into(),
                LCert::NoValidAuthority { time } => CertificateError::NoValidAuthority { time: time.to_string() }.into(),
                LCert::NotYetValid { time, not_before } => {
                    CertificateError::NotYetValid { time: time.to_string(), not_before: not_before.to_string() }.into()
                }
                LCert::Expired { time, not_after } => {
                    CertificateError::Expired { time: time.to_string(), not_after: not_after.to_string() }.into()
                }
                LCert::Sct(d) => CertificateError::Sct(one_line(&d)).into(),
                _ => CertificateError::Untrusted(text).into(),
            },
            L::TransparencyLog(t) => match t {
                LTlog::UnknownLog { log_id } => TlogError::UnknownLog(log_id).into(),
                LTlog::InclusionProof(d) => TlogError::InclusionProof(one_line(&d)).into(),
                LTlog::Checkpoint(d) => TlogError::Checkpoint(one_line(&d)).into(),
                LTlog::InclusionPromise(d) => TlogError::Set(one_line(&d)).into(),
                LTlog::EntryMismatch(d) => TlogError::EntryMismatch(one_line(&d)).into(),
                LTlog::IntegratedTime(d) => TlogError::IntegratedTime(one_line(&d)).into(),
                LTlog::MalformedEntry(d) => TlogError::MalformedEntry(one_line(&d)).into(),
                _ => TlogError::MalformedEntry(text).into(),
            },
            L::Timestamp(t) => match t {
                LTime::Invalid(d) => TimestampError::Invalid(one_line(&d)).into(),
                LTime::OutsideAuthorityValidity { time } => TimestampError::OutsideAuthorityValidity(time.to_string()).into(),
                LTime::NoVerifiedTimestamp(d) => TimestampError::NoVerifiedTime(one_line(&d)).into(),
                _ => TimestampError::Invalid(text).into(),
            },
            L::Bundle(b) => from_bundle_structure(b),
            L::InvalidBundle(d) => MaterialError::MalformedBundle(one_line(&d)).into(),
            L::UnsupportedBundle(d) => MaterialError::UnsupportedBundle(one_line(&d)).into(),
            L::Types(d) => MaterialError::MalformedBundle(one_line(&d.to_string())).into(),
            L::Crypto(d) => SignatureError::Unsupported(one_line(&d.to_string())).into(),
            L::InvalidTrustRoot(d) => TrustRootError::Invalid(one_line(&d)).into(),
            L::TrustRoot(d) => TrustRootError::Invalid(one_line(&d.to_string())).into(),
            L::TrustedCertificate(d) => TrustRootError::Invalid(one_line(&d.to_string())).into(),
            _ => MaterialError::MalformedBundle(text).into(),
        }
    }
}

/// webpki reports validity failures inside the chain error; surface the
/// common ones as the time-related variants the operator actually needs.
fn chain_error(detail: &str) -> CertificateError {
    let time = |label: &str| -> Option<String> {
        let rest = &detail[detail.find(label)? + label.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let seconds: i64 = digits.parse().ok()?;
        jiff::Timestamp::from_second(seconds).ok().map(|t| t.to_string())
    };
    if detail.contains("CertExpired") {
        if let (Some(time), Some(not_after)) = (time("time: UnixTime("), time("not_after: UnixTime(")) {
            return CertificateError::Expired { time, not_after };
        }
    }
    if detail.contains("CertNotValidYet") {
        if let (Some(time), Some(not_before)) = (time("time: UnixTime("), time("not_before: UnixTime(")) {
            return CertificateError::NotYetValid { time, not_before };
        }
    }
    if ["InvalidSignatureForPublicKey", "UnknownIssuer", "BadSignature"].iter().any(|marker| detail.contains(marker)) {
        return CertificateError::Untrusted(format!("not issued by a trusted Fulcio CA ({})", one_line(detail)));
    }
    CertificateError::Untrusted(one_line(detail))
}

/// Map the library's structural bundle checks (sigstore-bundle) to our steps.
pub(crate) fn from_bundle_structure(error: sigstore_verify::bundle::Error) -> VerifyError {
    use sigstore_verify::bundle::Error as B;
    let text = one_line(&error.to_string());
    match error {
        B::MissingInclusionPromise(_) | B::MissingInclusionProof(_) | B::MissingSigningTimeEvidence => TlogError::NoProof(text).into(),
        B::MissingCheckpoint | B::CheckpointRootMismatch => TlogError::Checkpoint(text).into(),
        B::LogIndexOutOfRange { .. } => TlogError::InclusionProof(text).into(),
        B::MissingTimestamp => TimestampError::NoVerifiedTime(text).into(),
        _ => MaterialError::UnsupportedBundle(text).into(),
    }
}

/// Collapse any line breaks so every reason stays on one log line.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last_space = false;
    for ch in text.chars() {
        let ch = if ch.is_control() { ' ' } else { ch };
        if ch == ' ' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(ch);
            last_space = false;
        }
    }
    // Bound pathological inputs (a reason may quote attacker-controlled text).
    const MAX: usize = 600;
    if out.len() > MAX {
        let mut cut = MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out.trim().to_string()
}
