//! Decisions as types: what happened to a call ([`Verdict`]) and why ([`Reason`]).
//!
//! A [`Reason`] is made where the decision is made, in the variant that says what kind of
//! reason it is; its `Display` is the one-line refusal (or allowance) text, and
//! [`Reason::category`] the metric label and `pullgate report` group. Rewording a message
//! therefore never moves a decision to another label. Audit records carry both (`reason`,
//! `category`); [`legacy_category`] classifies records written before `category` existed.

use std::fmt;

use crate::registry::{self, Reference};
use crate::trust::TrustUnavailable;

/// What happened to one call (or one image of a call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let through: verified, exempt, unmatched and allowed, break-glass.
    Allow,
    /// Refused.
    Deny,
    /// Let through only because every policy that failed is in audit mode: enforce mode would
    /// have refused it.
    AuditWouldDeny,
}

impl Verdict {
    /// The verdict of a decision enforce mode would (`would_allow`) or would not allow, given
    /// whether the call was `refused`.
    pub fn of(would_allow: bool, refused: bool) -> Verdict {
        match (would_allow, refused) {
            (_, true) => Verdict::Deny,
            (true, false) => Verdict::Allow,
            (false, false) => Verdict::AuditWouldDeny,
        }
    }

    /// The `result` label of `pullgate_decisions_total`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditWouldDeny => "audit_deny",
        }
    }
}

/// The fixed set of reason kinds: metric labels and report groups. The refusal kinds come in
/// precedence order: when several refusals make one decision, the first kind among them names
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Unmatched,
    TrustRoot,
    InvalidRequest,
    NoRegistryDigest,
    Mirror,
    NoSignatures,
    Attestation,
    Identity,
    InvalidSignature,
    /// The image verified, but containerd's image is not what the verified manifest runs.
    ImageMismatch,
    /// Nothing pullgate can verify: an image containerd does not have, an unreported sandbox
    /// image, a call that names no image, an answer from containerd that is not a digest.
    Uncheckable,
    // Allowances.
    BreakGlass,
    Exempt,
    UnmatchedAllowed,
    ImageAbsent,
    Verified,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Unmatched => "unmatched",
            Category::TrustRoot => "trust_root",
            Category::InvalidRequest => "invalid_request",
            Category::NoRegistryDigest => "no_registry_digest",
            Category::Mirror => "mirror",
            Category::NoSignatures => "no_signatures",
            Category::Attestation => "attestation",
            Category::Identity => "identity",
            Category::InvalidSignature => "invalid_signature",
            Category::ImageMismatch => "image_mismatch",
            Category::Uncheckable => "uncheckable",
            Category::BreakGlass => "break_glass",
            Category::Exempt => "exempt",
            Category::UnmatchedAllowed => "unmatched_allowed",
            Category::ImageAbsent => "image_absent",
            Category::Verified => "verified",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision came out as it did. Each simple variant holds its one-line text (made where
/// the decision is made, from the registry, verification or trust error it wraps); the
/// composite ones are built from the per-policy and per-digest reasons.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Allowed: the verification engine's line (`verified: 1 of 1 required authorities ...`).
    Verified(String),
    /// Allowed: an exemption matched.
    Exempt(String),
    /// Allowed: no policy applies and `unmatched: allow`.
    UnmatchedAllowed(String),
    /// Allowed: containerd does not have the image and will refuse the container itself.
    ImageAbsent(String),
    /// Allowed: an open break-glass window let a refused digest through.
    BreakGlass(String),
    /// Refused: the call itself cannot be read (an invalid image reference).
    InvalidRequest(String),
    /// Refused: no policy applies and `unmatched: deny`.
    Unmatched(String),
    /// Refused: the trust root is missing, stale or unusable.
    TrustRoot(String),
    /// Refused: the image has no registry digest whose signature could be looked up.
    NoRegistryDigest(String),
    /// Refused: the registry mirror could not resolve, fetch or discover.
    Mirror(String),
    /// Refused: no signature candidates at all.
    NoSignatures(String),
    /// Refused: a required attestation is missing or does not hold.
    Attestation(String),
    /// Refused: signatures verified, but no authority's identity matched.
    Identity(String),
    /// Refused: the signature material itself did not verify.
    InvalidSignature(String),
    /// Refused: verified, but not what containerd's image runs.
    ImageMismatch(String),
    /// Refused: nothing pullgate can verify.
    Uncheckable(String),
    /// One image checked against the applicable policies: every policy's reason when all
    /// passed; when some failed, `subject` (`image <name> (<digest>)`) and the failures only.
    Policies { subject: Option<String>, results: Vec<(String, Reason)> },
    /// Several refusals (each registry digest of an image tried), in order.
    Several(Vec<Reason>),
    /// A reason with a prefix naming what it is about (`image volume /data: ...`).
    About { what: String, reason: Box<Reason> },
    /// A reason with more said after it (`note` includes its separator: `; discovery errors:
    /// ...`, ` (on index ...)`); of the same kind.
    Noted { reason: Box<Reason>, note: String },
}

impl Default for Reason {
    fn default() -> Self {
        Reason::NoSignatures("no signatures found".into())
    }
}

impl Reason {
    pub fn category(&self) -> Category {
        match self {
            Reason::Verified(_) => Category::Verified,
            Reason::Exempt(_) => Category::Exempt,
            Reason::UnmatchedAllowed(_) => Category::UnmatchedAllowed,
            Reason::ImageAbsent(_) => Category::ImageAbsent,
            Reason::BreakGlass(_) => Category::BreakGlass,
            Reason::InvalidRequest(_) => Category::InvalidRequest,
            Reason::Unmatched(_) => Category::Unmatched,
            Reason::TrustRoot(_) => Category::TrustRoot,
            Reason::NoRegistryDigest(_) => Category::NoRegistryDigest,
            Reason::Mirror(_) => Category::Mirror,
            Reason::NoSignatures(_) => Category::NoSignatures,
            Reason::Attestation(_) => Category::Attestation,
            Reason::Identity(_) => Category::Identity,
            Reason::InvalidSignature(_) => Category::InvalidSignature,
            Reason::ImageMismatch(_) => Category::ImageMismatch,
            Reason::Uncheckable(_) => Category::Uncheckable,
            Reason::Policies { subject: None, .. } => Category::Verified,
            Reason::Policies { subject: Some(_), results } => first(results.iter().map(|(_, r)| r)).unwrap_or(Category::InvalidSignature),
            Reason::Several(reasons) => first(reasons.iter()).unwrap_or(Category::InvalidSignature),
            Reason::About { reason, .. } | Reason::Noted { reason, .. } => reason.category(),
        }
    }

    /// Whether this reason refuses (as opposed to explaining an allowance).
    pub fn is_refusal(&self) -> bool {
        self.category() < Category::BreakGlass
    }

    /// `self`, prefixed with what it is about.
    pub fn about(self, what: impl Into<String>) -> Reason {
        Reason::About { what: what.into(), reason: Box::new(self) }
    }

    /// `self`, followed by `note` (which starts with its separator).
    pub fn noted(self, note: impl Into<String>) -> Reason {
        Reason::Noted { reason: Box::new(self), note: note.into() }
    }
}

/// The refusals made from the registry and trust errors a check runs into: each error type
/// becomes its [`Reason`] here, and only here.
impl Reason {
    /// The trust root cannot be used (`TrustStatus::unusable`, or found so while verifying).
    pub fn trust_root(e: &TrustUnavailable) -> Reason {
        Reason::TrustRoot(e.to_string())
    }

    /// `reference` could not be resolved to a digest on the mirror (`Checker::resolve`).
    pub fn unresolved(reference: &Reference, e: &registry::Error) -> Reason {
        Reason::Mirror(format!("cannot resolve {reference} on the registry mirror: {e}"))
    }

    /// The manifest `digest` could not be fetched from the mirror.
    pub fn unfetched(digest: &registry::Digest, e: &registry::Error) -> Reason {
        Reason::Mirror(format!("cannot fetch {digest} from the registry mirror: {e}"))
    }

    /// Signature discovery could not start (no usable host configuration).
    pub fn undiscovered(e: &registry::Error) -> Reason {
        Reason::Mirror(format!("signature discovery failed: {e}"))
    }
}

/// The first category, by precedence, among `reasons`.
fn first<'a>(reasons: impl Iterator<Item = &'a Reason>) -> Option<Category> {
    reasons.map(Reason::category).min()
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Verified(s)
            | Reason::Exempt(s)
            | Reason::UnmatchedAllowed(s)
            | Reason::ImageAbsent(s)
            | Reason::BreakGlass(s)
            | Reason::InvalidRequest(s)
            | Reason::Unmatched(s)
            | Reason::TrustRoot(s)
            | Reason::NoRegistryDigest(s)
            | Reason::Mirror(s)
            | Reason::NoSignatures(s)
            | Reason::Attestation(s)
            | Reason::Identity(s)
            | Reason::InvalidSignature(s)
            | Reason::ImageMismatch(s)
            | Reason::Uncheckable(s) => f.write_str(s),
            Reason::Policies { subject, results } => {
                if let Some(subject) = subject {
                    write!(f, "{subject} denied by ")?;
                }
                for (i, (policy, reason)) in results.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "policy {policy}: {reason}")?;
                }
                Ok(())
            }
            Reason::Several(reasons) => {
                for (i, reason) in reasons.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{reason}")?;
                }
                Ok(())
            }
            Reason::About { what, reason } => write!(f, "{what}: {reason}"),
            Reason::Noted { reason, note } => write!(f, "{reason}{note}"),
        }
    }
}

/// The category of a record written before records carried one (by its wording; only for
/// reading old audit logs: new records carry [`Reason::category`]).
pub fn legacy_category(decision: &str, reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    let has = |s: &str| r.contains(s);
    if decision == "allow" {
        return if r.starts_with("break-glass:") {
            "break_glass"
        } else if has("exempt by") {
            "exempt"
        } else if has("no policy matches") || has("no enforcing policy applies") {
            "unmatched_allowed"
        } else if has("not present in containerd") {
            "image_absent"
        } else {
            "verified"
        };
    }
    if has("matches no policy") {
        "unmatched"
    } else if has("trust root") {
        "trust_root"
    } else if has("invalid image reference") || has("cannot decode") {
        "invalid_request"
    } else if has("no registry digest") {
        "no_registry_digest"
    } else if has("cannot resolve") || has("cannot fetch") || has("signature discovery failed") || has("cannot look up image") {
        "mirror"
    } else if has("no signatures found") {
        "no_signatures"
    } else if r.starts_with("attestation ") || has(": attestation ") {
        "attestation"
    } else if has("identity mismatch") || has("issuer mismatch") || has("matched no authority") || has("extension") {
        "identity"
    } else {
        "invalid_signature"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_reasons_read_as_before_and_keep_their_kind() {
        let failed = Reason::Policies {
            subject: Some("image r/x (sha256:1)".into()),
            results: vec![
                ("b".into(), Reason::NoSignatures("no signatures found".into())),
                ("c".into(), Reason::TrustRoot("no trust root installed".into())),
            ],
        };
        assert_eq!(failed.to_string(), "image r/x (sha256:1) denied by policy b: no signatures found; policy c: no trust root installed");
        assert_eq!(failed.category(), Category::TrustRoot, "the first kind by precedence");
        let allowed = Reason::Policies { subject: None, results: vec![("a".into(), Reason::Verified("verified: 1 of 1".into()))] };
        assert_eq!((allowed.to_string().as_str(), allowed.category()), ("policy a: verified: 1 of 1", Category::Verified));
        let several = Reason::Several(vec![Reason::Identity("x".into()), Reason::Mirror("y".into())]);
        assert_eq!((several.to_string().as_str(), several.category()), ("x; y", Category::Mirror));
        let about = Reason::Mirror("down".into()).about("image volume /d");
        assert_eq!((about.to_string().as_str(), about.category().as_str()), ("image volume /d: down", "mirror"));
        assert!(!Reason::BreakGlass("b".into()).is_refusal() && Reason::Uncheckable("u".into()).is_refusal());
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(true, false), Verdict::Allow);
        assert_eq!(Verdict::of(false, false), Verdict::AuditWouldDeny);
        assert_eq!(Verdict::of(false, true).label(), "deny");
        assert_eq!(Verdict::AuditWouldDeny.label(), "audit_deny");
    }

    #[test]
    fn old_records_fall_into_categories() {
        let cases = [
            ("allow", "exempt by exemption sandbox", "exempt"),
            ("allow", "no policy matches; policy.unmatched is allow", "unmatched_allowed"),
            ("allow", "policy demo: verified: 1 of 1 required authorities", "verified"),
            ("allow", "break-glass: r/etcd@sha256:1 is in a window opened by root (uid 0) on n until 2026-01-01T00:00:00Z (INC-1); refused otherwise: image r/etcd (sha256:1) denied by policy cp: trust root is stale", "break_glass"),
            ("deny", "image r/x:1 matches no policy and policy.unmatched is deny: add a policy", "unmatched"),
            ("deny", "image r/x (sha256:1) denied by policy demo: no trust root installed: run `pullgate trust-root import`", "trust_root"),
            ("deny", "cannot resolve r/x:1 on the registry mirror: connection refused", "mirror"),
            ("deny", "image r/x (sha256:1) denied by policy demo: no signatures found", "no_signatures"),
            ("deny", "image r/x (sha256:1) denied by policy demo: referrer: identity mismatch: got a, want b", "identity"),
            ("deny", "image r/x (sha256:1) denied by policy demo: referrer: signature does not verify", "invalid_signature"),
            ("deny", "image sha256:1 has no registry digest (imported or built on the node)", "no_registry_digest"),
            ("deny", "image r/x (sha256:1) denied by policy demo: attestation https://slsa.dev/provenance/v1: not found", "attestation"),
            ("deny", "image r/x (sha256:1) denied by policy demo: attestation https://slsa.dev/provenance/v1: identity mismatch: got a, want b", "attestation"),
        ];
        for (decision, reason, want) in cases {
            assert_eq!(legacy_category(decision, reason), want, "{reason}");
        }
    }
}
