//! What a verified Fulcio certificate says about its signer.
//!
//! The library reports the SAN and the OIDC issuer; policies may also match
//! any Fulcio claim (OID arc `1.3.6.1.4.1.57264.1`), so we read those here,
//! from the same certificate bytes the library verified.

use std::collections::BTreeMap;

use serde::Serialize;
use x509_cert::der::Decode;
use x509_cert::Certificate;

/// The Fulcio extension arc: `1.3.6.1.4.1.57264.1.<n>`.
pub const FULCIO_ARC: &str = "1.3.6.1.4.1.57264.1";

/// Fulcio claims by number, with the names cosign gives them on its CLI.
/// `.1` to `.6` are the deprecated raw-string encodings, `.8` onward DER UTF8String.
pub const FULCIO_CLAIMS: &[(u32, &str)] = &[
    (1, "issuer-v1"),
    (2, "github-workflow-trigger"),
    (3, "github-workflow-sha"),
    (4, "github-workflow-name"),
    (5, "github-workflow-repository"),
    (6, "github-workflow-ref"),
    (8, "issuer"),
    (9, "build-signer-uri"),
    (10, "build-signer-digest"),
    (11, "runner-environment"),
    (12, "source-repository-uri"),
    (13, "source-repository-digest"),
    (14, "source-repository-ref"),
    (15, "source-repository-identifier"),
    (16, "source-repository-owner-uri"),
    (17, "source-repository-owner-identifier"),
    (18, "build-config-uri"),
    (19, "build-config-digest"),
    (20, "build-trigger"),
    (21, "run-invocation-uri"),
    (22, "source-repository-visibility-at-signing"),
    (23, "deployment-environment"),
    (24, "token-subject"),
];

/// Resolve a claim given as a dotted OID or as one of the [`FULCIO_CLAIMS`] names.
pub fn claim_oid(name_or_oid: &str) -> Option<String> {
    if let Some(rest) = name_or_oid.strip_prefix(FULCIO_ARC) {
        let number = rest.strip_prefix('.')?;
        return number
            .parse::<u32>()
            .ok()
            .map(|n| format!("{FULCIO_ARC}.{n}"));
    }
    FULCIO_CLAIMS
        .iter()
        .find(|(_, name)| *name == name_or_oid)
        .map(|(n, _)| format!("{FULCIO_ARC}.{n}"))
}

/// The human name of a Fulcio claim OID, if it has one.
pub fn claim_name(oid: &str) -> Option<&'static str> {
    let number: u32 = oid.strip_prefix(FULCIO_ARC)?.strip_prefix('.')?.parse().ok()?;
    FULCIO_CLAIMS
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| *name)
}

/// The signer as described by a certificate that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateIdentity {
    /// The SAN identity (email or URI) the library matched on, if any.
    pub subject: Option<String>,
    /// The OIDC issuer (`.1.8`, else `.1.1`), if any.
    pub issuer: Option<String>,
    /// Every Fulcio claim present, by dotted OID, decoded as text.
    pub extensions: BTreeMap<String, String>,
    /// notBefore (RFC 3339).
    pub not_before: String,
    /// notAfter (RFC 3339).
    pub not_after: String,
}

impl CertificateIdentity {
    /// Build from the library's certificate info plus the leaf's raw DER.
    pub(crate) fn new(
        info: &sigstore_verify::crypto::CertificateInfo,
        leaf_der: &[u8],
    ) -> Self {
        Self {
            subject: info.identity.as_ref().map(|san| san.as_str().to_string()),
            issuer: info.issuer.clone(),
            extensions: fulcio_claims(leaf_der),
            not_before: info.not_before.to_string(),
            not_after: info.not_after.to_string(),
        }
    }
}

/// Read the Fulcio claims of a DER certificate. Claims that cannot be decoded
/// as text are left out (a policy requiring them then fails closed).
pub fn fulcio_claims(leaf_der: &[u8]) -> BTreeMap<String, String> {
    let mut claims = BTreeMap::new();
    let Ok(cert) = Certificate::from_der(leaf_der) else {
        return claims;
    };
    let Some(extensions) = cert.tbs_certificate.extensions.as_ref() else {
        return claims;
    };
    for ext in extensions {
        let oid = ext.extn_id.to_string();
        let Some(number) = oid
            .strip_prefix(FULCIO_ARC)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let bytes = ext.extn_value.as_bytes();
        let value = if number <= 6 {
            // Deprecated claims hold the bare string. Fall back to DER for
            // issuers that encoded them the new way.
            std::str::from_utf8(bytes)
                .ok()
                .map(str::to_owned)
                .or_else(|| der_utf8(bytes))
        } else {
            der_utf8(bytes)
        };
        if let Some(value) = value {
            claims.insert(oid, value);
        }
    }
    claims
}

fn der_utf8(bytes: &[u8]) -> Option<String> {
    x509_cert::der::asn1::Utf8StringRef::from_der(bytes)
        .ok()
        .map(|s| s.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_resolve() {
        assert_eq!(
            claim_oid("source-repository-ref").as_deref(),
            Some("1.3.6.1.4.1.57264.1.14")
        );
        assert_eq!(
            claim_oid("1.3.6.1.4.1.57264.1.5").as_deref(),
            Some("1.3.6.1.4.1.57264.1.5")
        );
        assert_eq!(claim_oid("1.2.3"), None);
        assert_eq!(claim_oid("nope"), None);
        assert_eq!(claim_name("1.3.6.1.4.1.57264.1.9"), Some("build-signer-uri"));
    }
}
