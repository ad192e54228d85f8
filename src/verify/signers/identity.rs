//! Keyless identities: which Fulcio certificates an authority accepts.
//!
//! The library only compares SAN and issuer for equality. Policies also need
//! anchored regular expressions (one workflow, any tag) and the Fulcio claims
//! that pin a repository, ref or trigger, so matching lives here and runs on
//! the [`CertificateIdentity`] of a signature that already verified.

use std::fmt;

use regex::Regex;
use serde::Serialize;
use thiserror::Error;

use crate::verify::certificate::{claim_name, claim_oid, CertificateIdentity};

/// Upper bound on a compiled pattern, so a policy cannot make matching slow.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Building a policy failed. Reported at configuration time, never per pull.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// A pattern does not compile.
    #[error("invalid regular expression {pattern:?}: {reason}")]
    InvalidRegex {
        /// The pattern as written.
        pattern: String,
        /// Why it does not compile.
        reason: String,
    },
    /// An extension claim names neither a Fulcio OID nor a known claim name.
    #[error("unknown certificate extension {0:?}: want a 1.3.6.1.4.1.57264.1.N OID or a claim name such as source-repository-ref")]
    UnknownClaim(String),
    /// The threshold cannot be met (or is zero).
    #[error("threshold {threshold} is impossible with {authorities} authorities")]
    Threshold {
        /// Required authorities.
        threshold: usize,
        /// Configured authorities.
        authorities: usize,
    },
    /// An authority with nothing in it would never match.
    #[error("authority {0:?} has no identities or keys")]
    EmptyAuthority(String),
}

/// How a certificate field must look.
#[derive(Debug, Clone)]
pub enum StringMatcher {
    /// Byte-for-byte equality (the Sigstore default; no case folding).
    Exact(String),
    /// A regular expression that must match the *whole* value.
    Regex {
        /// The pattern as configured (shown in reasons).
        pattern: String,
        /// `^(?:pattern)$`, compiled once.
        compiled: Regex,
    },
}

impl StringMatcher {
    /// Match exactly this value.
    pub fn exact(value: impl Into<String>) -> Self {
        Self::Exact(value.into())
    }

    /// Match values the whole of which match `pattern`. Anchoring is implicit
    /// so `https://github.com/org/.*` cannot be satisfied by
    /// `https://evil.example/?https://github.com/org/x`.
    pub fn regex(pattern: impl Into<String>) -> Result<Self, PolicyError> {
        let pattern = pattern.into();
        let compiled = regex::RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(REGEX_SIZE_LIMIT).build().map_err(|e| {
            PolicyError::InvalidRegex {
                pattern: pattern.clone(),
                reason: e.to_string().lines().last().unwrap_or_default().trim().to_string(),
            }
        })?;
        Ok(Self::Regex { pattern, compiled })
    }

    /// Whether `value` satisfies this matcher.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(expected) => value == expected,
            Self::Regex { compiled, .. } => compiled.is_match(value),
        }
    }
}

impl PartialEq for StringMatcher {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Regex { pattern: a, .. }, Self::Regex { pattern: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for StringMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(value) => f.write_str(value),
            Self::Regex { pattern, .. } => write!(f, "regex {pattern}"),
        }
    }
}

impl Serialize for StringMatcher {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A Fulcio claim that must have exactly this value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtensionClaim {
    /// Dotted OID under `1.3.6.1.4.1.57264.1`.
    pub oid: String,
    /// Required value.
    pub value: String,
}

impl ExtensionClaim {
    /// A claim given by OID or by name (`source-repository-ref`, `github-workflow-trigger`, ...).
    pub fn new(name_or_oid: &str, value: impl Into<String>) -> Result<Self, PolicyError> {
        let oid = claim_oid(name_or_oid).ok_or_else(|| PolicyError::UnknownClaim(name_or_oid.to_string()))?;
        Ok(Self { oid, value: value.into() })
    }

    fn label(&self) -> String {
        match claim_name(&self.oid) {
            Some(name) => format!("{name} ({})", self.oid),
            None => self.oid.clone(),
        }
    }
}

/// A keyless signer an authority accepts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeylessIdentity {
    /// The certificate SAN (email or URI).
    pub subject: StringMatcher,
    /// The OIDC issuer. `None` accepts any issuer, including none: only for
    /// 2021-era certificates that predate the issuer extension.
    pub issuer: Option<StringMatcher>,
    /// Fulcio claims that must all be present with exactly these values.
    pub claims: Vec<ExtensionClaim>,
}

/// Why a verified certificate does not match a keyless identity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityMismatch {
    /// The SAN does not match.
    #[error("identity mismatch: got {got}, want {want}")]
    Subject {
        /// The certificate's SAN.
        got: String,
        /// The configured matcher.
        want: String,
    },
    /// The OIDC issuer does not match.
    #[error("issuer mismatch: got {got}, want {want}")]
    Issuer {
        /// The certificate's issuer.
        got: String,
        /// The configured matcher.
        want: String,
    },
    /// A Fulcio claim is absent or differs.
    #[error("certificate extension {claim} mismatch: got {got}, want {want}")]
    Extension {
        /// Claim name and OID.
        claim: String,
        /// The certificate's value.
        got: String,
        /// The required value.
        want: String,
    },
    /// A keyless signature cannot satisfy a key authority, and vice versa.
    #[error("{0}")]
    SignerKind(String),
    /// A key signature that verified with none of the authority's keys.
    #[error("signed by none of the authority's {0} key(s)")]
    NoKey(usize),
}

impl KeylessIdentity {
    /// SAN and issuer matched exactly (cosign's `--certificate-identity`/`--certificate-oidc-issuer`).
    pub fn exact(subject: impl Into<String>, issuer: impl Into<String>) -> Self {
        Self { subject: StringMatcher::exact(subject), issuer: Some(StringMatcher::exact(issuer)), claims: Vec::new() }
    }

    /// Require a Fulcio claim as well.
    pub fn with_claim(mut self, claim: ExtensionClaim) -> Self {
        self.claims.push(claim);
        self
    }

    /// Step 9: does this verified certificate satisfy the identity?
    pub fn check(&self, identity: &CertificateIdentity) -> Result<(), IdentityMismatch> {
        let subject = identity.subject.as_deref();
        if !subject.is_some_and(|s| self.subject.matches(s)) {
            return Err(IdentityMismatch::Subject { got: quote_opt(subject), want: self.subject.to_string() });
        }
        if let Some(issuer) = &self.issuer {
            let got = identity.issuer.as_deref();
            if !got.is_some_and(|g| issuer.matches(g)) {
                return Err(IdentityMismatch::Issuer { got: quote_opt(got), want: issuer.to_string() });
            }
        }
        for claim in &self.claims {
            let got = identity.extensions.get(&claim.oid).map(String::as_str);
            if got != Some(claim.value.as_str()) {
                return Err(IdentityMismatch::Extension { claim: claim.label(), got: quote_opt(got), want: claim.value.clone() });
            }
        }
        Ok(())
    }
}

fn quote_opt(value: Option<&str>) -> String {
    match value {
        Some(v) => crate::verify::error::one_line(v),
        None => "none".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cert(subject: &str, issuer: &str) -> CertificateIdentity {
        let mut extensions = BTreeMap::new();
        extensions.insert("1.3.6.1.4.1.57264.1.14".to_string(), "refs/heads/main".to_string());
        CertificateIdentity {
            subject: Some(subject.into()),
            issuer: Some(issuer.into()),
            extensions,
            not_before: String::new(),
            not_after: String::new(),
        }
    }

    #[test]
    fn regex_is_anchored() {
        let m = StringMatcher::regex("https://github.com/org/.*").unwrap();
        assert!(m.matches("https://github.com/org/repo/.github/workflows/x.yml@refs/heads/main"));
        assert!(!m.matches("https://evil.example/?https://github.com/org/x"));
        let m = StringMatcher::regex("a|b").unwrap();
        assert!(!m.matches("ab"), "alternation must stay inside the anchors");
        assert!(StringMatcher::regex("(").is_err());
    }

    #[test]
    fn identity_checks_each_field() {
        let id = KeylessIdentity::exact("me@example.com", "https://issuer")
            .with_claim(ExtensionClaim::new("source-repository-ref", "refs/heads/main").unwrap());
        assert!(id.check(&cert("me@example.com", "https://issuer")).is_ok());
        let err = id.check(&cert("you@example.com", "https://issuer")).unwrap_err();
        assert_eq!(err.to_string(), "identity mismatch: got you@example.com, want me@example.com");
        assert!(matches!(id.check(&cert("me@example.com", "https://issuer/")), Err(IdentityMismatch::Issuer { .. })));
        let id = id.with_claim(ExtensionClaim::new("build-trigger", "push").unwrap());
        let err = id.check(&cert("me@example.com", "https://issuer")).unwrap_err();
        assert!(err.to_string().starts_with("certificate extension build-trigger"));
    }
}
