//! What a verified Fulcio certificate says about its signer.
//!
//! The library reports the SAN and the OIDC issuer; policies may also match
//! any Fulcio claim (OID arc `1.3.6.1.4.1.57264.1`), so we read those here,
//! from the same certificate bytes the library verified.

use std::collections::BTreeMap;

use serde::Serialize;

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
        return number.parse::<u32>().ok().map(|n| format!("{FULCIO_ARC}.{n}"));
    }
    FULCIO_CLAIMS.iter().find(|(_, name)| *name == name_or_oid).map(|(n, _)| format!("{FULCIO_ARC}.{n}"))
}

/// The human name of a Fulcio claim OID, if it has one.
pub fn claim_name(oid: &str) -> Option<&'static str> {
    let number: u32 = oid.strip_prefix(FULCIO_ARC)?.strip_prefix('.')?.parse().ok()?;
    FULCIO_CLAIMS.iter().find(|(n, _)| *n == number).map(|(_, name)| *name)
}

/// Fulcio's otherName SAN type for usernames (`1.3.6.1.4.1.57264.1.7`),
/// issued for OIDC providers whose identity is neither an email nor a URI.
pub const OTHER_NAME_SAN: &str = "1.3.6.1.4.1.57264.1.7";

/// The signer as described by a certificate that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateIdentity {
    /// The SAN identity, if any: the email or URI SAN the library reads, or
    /// else the value of a Fulcio username otherName SAN ([`OTHER_NAME_SAN`]),
    /// matched by policy exactly like the other two (exact or regex).
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
    pub(crate) fn new(info: &sigstore_verify::crypto::CertificateInfo, leaf_der: &[u8]) -> Self {
        Self {
            subject: info.identity.as_ref().map(|san| san.as_str().to_string()).or_else(|| other_name_san(leaf_der)),
            issuer: info.issuer.clone(),
            extensions: fulcio_claims(leaf_der),
            not_before: info.not_before.to_string(),
            not_after: info.not_after.to_string(),
        }
    }
}

/// Read the Fulcio claims of a DER certificate. Claims that cannot be decoded
/// as text are left out (a policy requiring them then fails closed).
///
/// This runs on every verification, after the library has already parsed
/// and verified the same certificate, so it walks the DER directly instead of
/// building a full `x509_cert::Certificate` a second time.
pub fn fulcio_claims(leaf_der: &[u8]) -> BTreeMap<String, String> {
    let mut claims = BTreeMap::new();
    let Some(view) = der_walk::tbs(leaf_der) else {
        return claims;
    };
    for (oid, value) in view.extensions {
        let Some(number) = der_walk::fulcio_claim_number(oid) else {
            continue;
        };
        let decoded = if number <= 6 {
            // Deprecated claims hold the bare string. Fall back to DER for
            // issuers that encoded them the new way.
            std::str::from_utf8(value).ok().map(str::to_owned).or_else(|| der_walk::utf8_string(value))
        } else {
            der_walk::utf8_string(value)
        };
        if let Some(decoded) = decoded {
            claims.insert(claim_key(number), decoded);
        }
    }
    claims
}

/// `1.3.6.1.4.1.57264.1.<number>`, spelled without the formatter for the
/// claims every certificate carries (this runs on every verification).
fn claim_key(number: u32) -> String {
    const KNOWN: [&str; 25] = [
        "1.3.6.1.4.1.57264.1.0",
        "1.3.6.1.4.1.57264.1.1",
        "1.3.6.1.4.1.57264.1.2",
        "1.3.6.1.4.1.57264.1.3",
        "1.3.6.1.4.1.57264.1.4",
        "1.3.6.1.4.1.57264.1.5",
        "1.3.6.1.4.1.57264.1.6",
        "1.3.6.1.4.1.57264.1.7",
        "1.3.6.1.4.1.57264.1.8",
        "1.3.6.1.4.1.57264.1.9",
        "1.3.6.1.4.1.57264.1.10",
        "1.3.6.1.4.1.57264.1.11",
        "1.3.6.1.4.1.57264.1.12",
        "1.3.6.1.4.1.57264.1.13",
        "1.3.6.1.4.1.57264.1.14",
        "1.3.6.1.4.1.57264.1.15",
        "1.3.6.1.4.1.57264.1.16",
        "1.3.6.1.4.1.57264.1.17",
        "1.3.6.1.4.1.57264.1.18",
        "1.3.6.1.4.1.57264.1.19",
        "1.3.6.1.4.1.57264.1.20",
        "1.3.6.1.4.1.57264.1.21",
        "1.3.6.1.4.1.57264.1.22",
        "1.3.6.1.4.1.57264.1.23",
        "1.3.6.1.4.1.57264.1.24",
    ];
    match KNOWN.get(number as usize) {
        Some(key) => (*key).to_string(),
        None => format!("{FULCIO_ARC}.{number}"),
    }
}

/// The value of the certificate's Fulcio username otherName SAN
/// ([`OTHER_NAME_SAN`], a UTF8String), if it has one.
pub fn other_name_san(leaf_der: &[u8]) -> Option<String> {
    let view = der_walk::tbs(leaf_der)?;
    let (_, names) = view.extensions.iter().find(|(oid, _)| *oid == der_walk::SUBJECT_ALT_NAME)?;
    der_walk::fulcio_other_name(names)
}

/// The DER issuer `Name` (whole TLV) of a certificate, without a full parse.
pub(crate) fn issuer_name(cert_der: &[u8]) -> Option<Vec<u8>> {
    der_walk::tbs(cert_der).map(|view| view.issuer.to_vec())
}

/// The DER SubjectPublicKeyInfo (whole TLV) of a certificate, without a full parse.
pub(crate) fn spki(cert_der: &[u8]) -> Option<Vec<u8>> {
    der_walk::tbs(cert_der).map(|view| view.spki.to_vec())
}

/// The DER subject `Name` (whole TLV) of a certificate, without a full parse.
pub(crate) fn subject_name(cert_der: &[u8]) -> Option<Vec<u8>> {
    der_walk::tbs(cert_der).map(|view| view.subject.to_vec())
}

/// A minimal, allocation-free DER reader for the few certificate fields we
/// need after the library has verified the certificate. Any surprise yields
/// `None`; callers treat that as "field absent".
pub(crate) mod der_walk {
    /// One TLV: (tag, whole encoding, contents, rest of input).
    pub(crate) type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    pub(crate) fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
        let tag = *input.first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers never occur in certificates
        }
        let first = *input.get(1)?;
        let (len, header) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for b in input.get(2..2 + n)? {
                len = (len << 8) | *b as usize;
            }
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        let whole = input.get(..end)?;
        Some((tag, whole, &whole[header..], &input[end..]))
    }

    pub(super) struct TbsView<'a> {
        pub(super) issuer: &'a [u8],
        pub(super) subject: &'a [u8],
        pub(super) spki: &'a [u8],
        /// (OID contents, extnValue contents) in order.
        pub(super) extensions: Vec<(&'a [u8], &'a [u8])>,
    }

    pub(super) fn tbs(cert: &[u8]) -> Option<TbsView<'_>> {
        let (0x30, _, cert, _) = tlv(cert)? else {
            return None;
        };
        let (0x30, _, tbs, _) = tlv(cert)? else {
            return None;
        };
        let mut rest = tbs;
        let (tag, _, _, after) = tlv(rest)?;
        if tag == 0xa0 {
            rest = after; // version
        }
        let (0x02, _, _, rest) = tlv(rest)? else {
            return None;
        }; // serial
        let (0x30, _, _, rest) = tlv(rest)? else {
            return None;
        }; // signature
        let (0x30, issuer, _, rest) = tlv(rest)? else {
            return None;
        };
        let (0x30, _, _, rest) = tlv(rest)? else {
            return None;
        }; // validity
        let (0x30, subject, _, rest) = tlv(rest)? else {
            return None;
        };
        let (0x30, spki, _, mut rest) = tlv(rest)? else {
            return None;
        };
        let mut extensions = Vec::new();
        while !rest.is_empty() {
            let (tag, _, contents, after) = tlv(rest)?;
            rest = after;
            if tag != 0xa3 {
                continue; // issuerUniqueID / subjectUniqueID
            }
            let (0x30, _, mut list, _) = tlv(contents)? else {
                return None;
            };
            while !list.is_empty() {
                let (0x30, _, ext, after) = tlv(list)? else {
                    return None;
                };
                list = after;
                let (0x06, _, oid, mut fields) = tlv(ext)? else {
                    return None;
                };
                let (tag, _, value, after) = tlv(fields)?;
                if tag == 0x01 {
                    fields = after; // critical
                    let (0x04, _, value, _) = tlv(fields)? else {
                        return None;
                    };
                    extensions.push((oid, value));
                } else if tag == 0x04 {
                    extensions.push((oid, value));
                } else {
                    return None;
                }
            }
        }
        Some(TbsView { issuer, subject, spki, extensions })
    }

    /// DER contents of the subjectAltName OID, 2.5.29.17.
    pub(super) const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    /// DER contents of 1.3.6.1.4.1.57264.1.7 (Fulcio username otherName).
    const FULCIO_USERNAME: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01, 0x07];

    /// The first Fulcio username otherName in a DER GeneralNames:
    /// `[0] { type-id OID, [0] EXPLICIT UTF8String }`.
    pub(super) fn fulcio_other_name(general_names: &[u8]) -> Option<String> {
        let (0x30, _, mut names, _) = tlv(general_names)? else {
            return None;
        };
        while !names.is_empty() {
            let (tag, _, contents, after) = tlv(names)?;
            names = after;
            if tag != 0xa0 {
                continue;
            }
            let (0x06, _, oid, rest) = tlv(contents)? else {
                return None;
            };
            if oid != FULCIO_USERNAME {
                continue;
            }
            let (0xa0, _, value, _) = tlv(rest)? else {
                return None;
            };
            return utf8_string(value);
        }
        None
    }

    /// `N` if `oid` (DER contents) is `1.3.6.1.4.1.57264.1.N`.
    pub(super) fn fulcio_claim_number(oid: &[u8]) -> Option<u32> {
        const PREFIX: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xbf, 0x30, 0x01];
        let tail = oid.strip_prefix(PREFIX)?;
        if tail.is_empty() || tail.len() > 4 || tail[tail.len() - 1] & 0x80 != 0 {
            return None;
        }
        let mut n: u32 = 0;
        for b in tail {
            n = (n << 7) | u32::from(b & 0x7f);
        }
        Some(n)
    }

    /// A whole DER UTF8String.
    pub(super) fn utf8_string(value: &[u8]) -> Option<String> {
        let (0x0c, whole, contents, _) = tlv(value)? else {
            return None;
        };
        if whole.len() != value.len() {
            return None;
        }
        std::str::from_utf8(contents).ok().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_resolve() {
        assert_eq!(claim_oid("source-repository-ref").as_deref(), Some("1.3.6.1.4.1.57264.1.14"));
        assert_eq!(claim_oid("1.3.6.1.4.1.57264.1.5").as_deref(), Some("1.3.6.1.4.1.57264.1.5"));
        assert_eq!(claim_oid("1.2.3"), None);
        assert_eq!(claim_oid("nope"), None);
        assert_eq!(claim_name("1.3.6.1.4.1.57264.1.9"), Some("build-signer-uri"));
    }

    #[test]
    fn claim_keys_are_the_dotted_oids() {
        for number in [0u32, 1, 9, 10, 24, 25, 100, u32::MAX] {
            assert_eq!(claim_key(number), format!("{FULCIO_ARC}.{number}"));
        }
    }

    #[test]
    fn der_walk_never_panics_on_garbage() {
        let mut data = vec![0x30, 0x82, 0xff, 0xff];
        for i in 0..2000u32 {
            data.push((i.wrapping_mul(2654435761) >> 13) as u8);
            let _ = fulcio_claims(&data);
            let _ = fulcio_claims(&data[4..]);
            let _ = issuer_name(&data);
        }
        assert!(fulcio_claims(&[]).is_empty());
    }
}
