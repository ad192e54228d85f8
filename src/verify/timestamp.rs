//! RFC 3161 timestamps with the TSA certificate chain checked once per root.
//!
//! The library re-validates each timestamp authority's certificate chain
//! (two P-384 signatures for a leaf-intermediate-root chain) on every
//! timestamp, although the chain is part of the trust root and never changes.
//! Here the time-independent part of that validation (signatures, EKU, basic
//! constraints, as webpki checks them) runs once when the root is loaded; per
//! token only the CMS signature, the hashes and the validity windows of the
//! chain's certificates at the token's time remain.
//!
//! Semantics mirror `sigstore_tsa::verify_timestamp_for_authority` check for
//! check, and the differential tests run both on every tamper case.

use cms::content_info::CmsVersion;
use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{GeneralizedTime, Int, OctetString};
use der::oid::ObjectIdentifier;
use der::{Decode, Encode, Reader};
use jiff::Timestamp;
use rustls_pki_types::{CertificateDer, UnixTime};
use sigstore_verify::crypto::{KeyAlgorithm, SigningScheme, VerificationKey};
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{DerPublicKey, SignatureBytes, TimeRange};
use x509_cert::Certificate;

use super::error::{one_line, TimestampError};

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_WITH_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
/// id-kp-timeStamping, 1.3.6.1.5.5.7.3.8, DER contents.
const EKU_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

/// RFC 3161 §2.4.2 MessageImprint.
#[derive(Clone, Debug, der::Sequence)]
struct MessageImprint {
    hash_algorithm: x509_cert::spki::AlgorithmIdentifierOwned,
    hashed_message: OctetString,
}

/// RFC 3161 §2.4.2 TSTInfo.
#[derive(Clone, Debug, der::Sequence)]
struct TstInfo {
    version: u8,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    gen_time: GeneralizedTime,
    #[asn1(optional = "true")]
    accuracy: Option<der::Any>,
    #[asn1(default = "default_false")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    tsa: Option<der::Any>,
    #[asn1(context_specific = "1", optional = "true", tag_mode = "IMPLICIT")]
    extensions: Option<x509_cert::ext::Extensions>,
}

fn default_false() -> bool {
    false
}

/// One timestamp authority of the trust root, with its chain pre-validated.
pub(crate) struct CachedAuthority {
    leaf: Certificate,
    leaf_key: DerPublicKey,
    leaf_algorithm: Option<KeyAlgorithm>,
    leaf_ski: Option<Vec<u8>>,
    /// Validity of the leaf and intermediates (webpki does not check the
    /// anchor's), as whole seconds like webpki's clock.
    path_validity: Vec<(i64, i64)>,
    /// Why the time-independent chain checks failed, if they did.
    chain_error: Option<String>,
    window: Option<TimeRange>,
}

/// Prepare every timestamp authority of `root`.
pub(crate) fn prepare(root: &TrustedRoot) -> Vec<CachedAuthority> {
    let mut out = Vec::new();
    for tsa in &root.timestamp_authorities {
        let certs = &tsa.cert_chain.certificates;
        let (leaf_der, intermediates, root_der) = match certs.as_slice() {
            [] => continue,
            [only] => (only, &[][..], only),
            [leaf, middle @ .., root] => (leaf, middle, root),
        };
        let Ok(leaf) = Certificate::from_der(leaf_der.raw_bytes.as_bytes()) else {
            continue;
        };
        let leaf_key =
            leaf.tbs_certificate.subject_public_key_info.to_der().map(DerPublicKey::new).unwrap_or_else(|_| DerPublicKey::new(Vec::new()));
        let leaf_algorithm = KeyAlgorithm::from_spki(&leaf_key).ok();
        let leaf_ski = leaf.tbs_certificate.extensions.as_ref().and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == ID_SUBJECT_KEY_IDENTIFIER)
                .and_then(|e| OctetString::from_der(e.extn_value.as_bytes()).ok())
                .map(|ski| ski.as_bytes().to_vec())
        });
        let mut path_validity = Vec::new();
        for der in std::iter::once(leaf_der).chain(intermediates) {
            match Certificate::from_der(der.raw_bytes.as_bytes()) {
                Ok(cert) => {
                    let validity = &cert.tbs_certificate.validity;
                    path_validity.push((unix(validity.not_before.to_unix_duration()), unix(validity.not_after.to_unix_duration())));
                }
                Err(_) => path_validity.push((i64::MAX, i64::MIN)),
            }
        }
        let chain_error = check_chain(leaf_der.raw_bytes.as_bytes(), intermediates, root_der.raw_bytes.as_bytes(), &path_validity);
        out.push(CachedAuthority { leaf, leaf_key, leaf_algorithm, leaf_ski, path_validity, chain_error, window: tsa.valid_for });
    }
    out
}

fn unix(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The time-independent part of webpki's chain validation: run it once at a
/// moment when every non-anchor certificate is valid.
fn check_chain(
    leaf: &[u8],
    intermediates: &[sigstore_verify::trust_root::trusted_root::CertificateEntry],
    root: &[u8],
    path_validity: &[(i64, i64)],
) -> Option<String> {
    let start = path_validity.iter().map(|v| v.0).max()?;
    let end = path_validity.iter().map(|v| v.1).min()?;
    if start > end || start < 0 {
        return Some("TSA certificates are never valid at the same time".into());
    }
    let root = CertificateDer::from(root);
    let anchor = match webpki::anchor_from_trusted_cert(&root) {
        Ok(anchor) => anchor,
        Err(e) => return Some(format!("TSA root: {e:?}")),
    };
    let intermediates: Vec<CertificateDer<'_>> = intermediates.iter().map(|c| CertificateDer::from(c.raw_bytes.as_bytes())).collect();
    let leaf = CertificateDer::from(leaf);
    let end_entity = match webpki::EndEntityCert::try_from(&leaf) {
        Ok(ee) => ee,
        Err(e) => return Some(format!("TSA certificate: {e:?}")),
    };
    end_entity
        .verify_for_usage(
            sigstore_verify::crypto::WEBPKI_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(start as u64)),
            webpki::KeyUsage::required(EKU_TIME_STAMPING),
            None,
            None,
        )
        .err()
        .map(|e| format!("TSA certificate chain validation failed: {e:?}"))
}

fn hash(oid: &ObjectIdentifier, data: &[u8]) -> Option<Vec<u8>> {
    match *oid {
        ID_SHA256 => Some(sigstore_verify::crypto::sha256(data).as_bytes().to_vec()),
        ID_SHA384 => Some(sigstore_verify::crypto::sha384(data).as_bytes().to_vec()),
        ID_SHA512 => Some(sigstore_verify::crypto::sha512(data).as_bytes().to_vec()),
        _ => None,
    }
}

/// A parsed token: what the TSA signed and how.
struct Token {
    tst: TstInfo,
    tst_der: Vec<u8>,
    signer: SignerInfo,
}

fn parse(token: &[u8]) -> Result<Token, String> {
    // A bare TimeStampToken (ContentInfo), or one inside a TimeStampResp.
    let info = match ContentInfo::from_der(token) {
        Ok(info) => info,
        Err(_) => {
            let outer = der::Any::from_der(token).map_err(|e| format!("failed to decode TimeStampToken: {e}"))?;
            let mut reader = der::SliceReader::new(outer.value()).map_err(|e| e.to_string())?;
            let status: der::Any = reader.decode().map_err(|e| e.to_string())?;
            let mut status_reader = der::SliceReader::new(status.value()).map_err(|e| e.to_string())?;
            let code: u8 = status_reader.decode().map_err(|e| e.to_string())?;
            if code > 1 {
                return Err(format!("Timestamp request not granted: {code}"));
            }
            let token: der::Any = reader.decode().map_err(|_| "TimeStampResp missing timeStampToken".to_string())?;
            ContentInfo::from_der(&token.to_der().map_err(|e| e.to_string())?)
                .map_err(|e| format!("failed to decode ContentInfo from token: {e}"))?
        }
    };
    if info.content_type != ID_SIGNED_DATA {
        return Err("ContentInfo content type is not SignedData".into());
    }
    let (encap, signer) = signed_data(&info.content).map_err(|e| format!("failed to decode SignedData: {e}"))?;
    if encap.econtent_type != ID_CT_TST_INFO {
        return Err("encap content type is not TSTInfo".into());
    }
    let tst_der = encap.econtent.as_ref().ok_or("no TSTInfo")?.value().to_vec();
    let tst = TstInfo::from_der(&tst_der).map_err(|e| format!("failed to decode TSTInfo: {e}"))?;
    Ok(Token { tst, tst_der, signer })
}

/// RFC 5652 §5.1 SignedData: the encapsulated content and its one signer
/// (RFC 3161 §2.4.2: the token carries the TSA's signature and no other).
/// Embedded certificates are decoded, so a corrupt one refuses the token as
/// the reference clients do, but never used.
fn signed_data(content: &der::Any) -> der::Result<(EncapsulatedContentInfo, SignerInfo)> {
    let signed = SignedData::from_der(&content.to_der()?)?;
    let mut signers = signed.signer_infos.0.into_vec().into_iter();
    match (signers.next(), signers.next()) {
        (Some(signer), None) => Ok((signed.encap_content_info, signer)),
        _ => Err(der::Tag::Set.value_error()),
    }
}

/// Whether a token's signer is one of the trust root's timestamp
/// authorities: its SignerIdentifier (issuer and serial, or subject key
/// identifier) names the signing certificate of some TSA in the root.
/// Certificates embedded in the token are never consulted: only the trust
/// root says which TSA keys exist.
///
/// `Some(false)` means the token parses and names a TSA the trust root does
/// not list: sigstore-go and sigstore-python skip such tokens (they cannot be
/// verified, so they never count towards the threshold). `None` (does not
/// parse) and `Some(true)` keep the token, which must then verify.
pub(crate) fn signer_listed(authorities: &[CachedAuthority], token: &ParsedToken) -> Option<bool> {
    let parsed = token.0.as_ref().ok()?;
    Some(authorities.iter().any(|a| signer_matches(a, &parsed.signer.sid)))
}

/// A token decoded once per verification: the signer lookup (3a) and the
/// verification (3) both read it (the decode, embedded certificates
/// included, costs as much as the rest of a token's non-crypto work).
pub(crate) struct ParsedToken(Result<Token, String>);

/// Decode `token` for [`signer_listed`] and [`verify_parsed`].
pub(crate) fn parse_token(token: &[u8]) -> ParsedToken {
    ParsedToken(parse(token))
}

fn signer_matches(authority: &CachedAuthority, sid: &SignerIdentifier) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => {
            id.issuer == authority.leaf.tbs_certificate.issuer && id.serial_number == authority.leaf.tbs_certificate.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => authority.leaf_ski.as_deref() == Some(ski.0.as_bytes()),
    }
}

/// Verify `token` over `signature` against every usable authority; the
/// first authority that authenticates it decides, as in the library.
pub(crate) fn verify(authorities: &[CachedAuthority], token: &[u8], signature: &[u8]) -> Result<Timestamp, TimestampError> {
    verify_parsed(authorities, &parse_token(token), signature)
}

/// [`verify`] of a token decoded by [`parse_token`].
pub(crate) fn verify_parsed(authorities: &[CachedAuthority], token: &ParsedToken, signature: &[u8]) -> Result<Timestamp, TimestampError> {
    let now = Timestamp::now();
    let usable: Vec<&CachedAuthority> = authorities.iter().filter(|a| a.window.is_none_or(|w| w.has_started_by(now))).collect();
    if usable.is_empty() {
        return Err(TimestampError::Invalid(
            "TSA timestamp verification failed: no timestamp authorities configured in trusted root".into(),
        ));
    }
    let parsed = token.0.as_ref().map_err(|e| TimestampError::Invalid(format!("TSA timestamp verification failed: {}", one_line(e))))?;
    let mut rejected_time = None;
    let mut last_error = None;
    for authority in usable {
        match verify_with(authority, parsed, signature) {
            Ok(time) => {
                if authority.window.is_none_or(|w| w.contains(time)) {
                    return Ok(time);
                }
                rejected_time = Some(time);
            }
            Err(e) => last_error = Some(e),
        }
    }
    if let Some(time) = rejected_time {
        return Err(TimestampError::OutsideAuthorityValidity(time.to_string()));
    }
    Err(TimestampError::Invalid(format!("TSA timestamp verification failed: {}", one_line(&last_error.unwrap_or_default()))))
}

fn verify_with(authority: &CachedAuthority, token: &Token, signature: &[u8]) -> Result<Timestamp, String> {
    let Token { tst, tst_der, signer } = token;
    // The token is about this signature.
    let imprint = &tst.message_imprint;
    let computed = hash(&imprint.hash_algorithm.oid, signature)
        .ok_or_else(|| format!("unsupported hash algorithm: {}", imprint.hash_algorithm.oid))?;
    if computed != imprint.hashed_message.as_bytes() {
        return Err(format!(
            "Timestamp message hash mismatch: expected {}, got {}",
            hex::encode(imprint.hashed_message.as_bytes()),
            hex::encode(&computed)
        ));
    }
    let time = Timestamp::try_from(tst.gen_time.to_system_time()).map_err(|_| "invalid timestamp in TSTInfo".to_string())?;
    if time < Timestamp::UNIX_EPOCH {
        return Err("timestamp before epoch".into());
    }
    // Signed by this authority's leaf (embedded certificates are ignored).
    let matches = signer_matches(authority, &signer.sid);
    if !matches {
        return Err("Failed to verify timestamp signature: CMS signer does not match any trusted TSA certificate".into());
    }
    // RFC 5652 §5.3: version 1 with issuerAndSerialNumber, 3 with a subject
    // key identifier. The version is not signed and the library ignores it;
    // a token that contradicts itself is refused.
    let version_fits = match signer.sid {
        SignerIdentifier::IssuerAndSerialNumber(_) => signer.version == CmsVersion::V1,
        SignerIdentifier::SubjectKeyIdentifier(_) => signer.version == CmsVersion::V3,
    };
    if !version_fits {
        return Err(format!("signer info version {:?} does not fit its signer identifier", signer.version));
    }
    let attrs = signer.signed_attrs.as_ref().ok_or("no signed attributes found")?;
    let digest_oid = &signer.digest_alg.oid;
    let digest_attr = attrs.iter().find(|a| a.oid == ID_MESSAGE_DIGEST).ok_or("message-digest attribute not found in signed_attrs")?;
    if digest_attr.values.len() != 1 {
        return Err("message-digest attribute should have exactly one value".into());
    }
    let value = digest_attr.values.get(0).ok_or("no message-digest value")?;
    let value_der = value.to_der().map_err(|e| e.to_string())?;
    let digest =
        der::asn1::OctetStringRef::from_der(&value_der).map_err(|e| format!("failed to decode message-digest as OCTET STRING: {e}"))?;
    let content_hash = hash(digest_oid, tst_der).ok_or_else(|| format!("unsupported signer digest algorithm: {digest_oid}"))?;
    if content_hash != digest.as_bytes() {
        return Err("message-digest attribute does not match TSTInfo".into());
    }
    let attrs_der = der::asn1::SetOfVec::try_from(attrs.iter().cloned().collect::<Vec<_>>())
        .and_then(|set| set.to_der())
        .map_err(|e| format!("failed to re-encode attributes: {e}"))?;
    let algorithm = match authority.leaf_algorithm {
        Some(a @ (KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384)) => a,
        _ => return Err("not an EC key".into()),
    };
    let hash_algorithm = match *digest_oid {
        ID_SHA256 => sigstore_verify::types::HashAlgorithm::Sha2256,
        ID_SHA384 => sigstore_verify::types::HashAlgorithm::Sha2384,
        ID_SHA512 => sigstore_verify::types::HashAlgorithm::Sha2512,
        _ => return Err(format!("unsupported digest algorithm: {digest_oid}")),
    };
    // The signer's signatureAlgorithm is not covered by the signature; the
    // library ignores it. A token whose stated algorithm contradicts its
    // digest algorithm (ecdsa-with-SHA384 over a SHA-256 digest) is
    // inconsistent and refused: real TSAs name the pair they used.
    let stated = &signer.signature_algorithm.oid;
    let consistent = match *stated {
        ECDSA_WITH_SHA256 => *digest_oid == ID_SHA256,
        ECDSA_WITH_SHA384 => *digest_oid == ID_SHA384,
        ECDSA_WITH_SHA512 => *digest_oid == ID_SHA512,
        ID_EC_PUBLIC_KEY => true,
        _ => false,
    };
    if !consistent {
        return Err(format!("signer's signature algorithm {stated} does not fit digest algorithm {digest_oid}"));
    }
    let scheme: SigningScheme = algorithm.resolve_signing_scheme(hash_algorithm).map_err(|e| e.to_string())?;
    VerificationKey::from_der(&authority.leaf_key, scheme)
        .and_then(|key| key.verify(&attrs_der, &SignatureBytes::from_bytes(signer.signature.as_bytes())))
        .map_err(|e| format!("Failed to verify timestamp signature: {e}"))?;
    // The chain, validated at load, must also be valid at this time.
    if let Some(error) = &authority.chain_error {
        return Err(format!("TSA certificate validation failed: {error}"));
    }
    let seconds = time.as_second();
    for (i, (not_before, not_after)) in authority.path_validity.iter().enumerate() {
        let which = if i == 0 { "TSA certificate" } else { "TSA intermediate certificate" };
        if seconds < *not_before {
            return Err(format!("TSA certificate validation failed: {which} not valid until {}", ts(*not_before)));
        }
        if seconds > *not_after {
            return Err(format!("TSA certificate validation failed: {which} expired at {}", ts(*not_after)));
        }
    }
    Ok(time)
}

fn ts(seconds: i64) -> String {
    Timestamp::from_second(seconds).map(|t| t.to_string()).unwrap_or_default()
}
