//! Step 5, the leaf certificate's embedded SCT, in fast mode.
//!
//! The same check as the library's `verify_sct` (RFC 6962 §3.2: exactly one
//! SCT, signed by a trusted CT log whose key was valid at the SCT's time, over
//! the precertificate TBS and the issuer's key hash), done on the DER bytes:
//! the precertificate TBS is the leaf's TBS with the SCT extension spliced
//! out, instead of a full `x509_cert` decode, a clone and a re-encode of the
//! certificate on every verification. The issuer key hash is prepared once
//! per trust root ([`issuer_key_hash`]). Differential tests hold this to the
//! library's verdict on every vector, tamper case and mutation.

use sigstore_verify::crypto::SigningScheme;
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{Sha256Hash, SignatureBytes};

use super::certificate::der_walk::tlv;
use super::error::{one_line, CertificateError, VerifyError};

/// DER contents of the SCT list extension OID, 1.3.6.1.4.1.11129.2.4.2.
const SCT_LIST_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0xd6, 0x79, 0x02, 0x04, 0x02];

/// The schemes an SCT may name (RFC 5246 SignatureAndHashAlgorithm), as the
/// library maps them, with the trusted CT log keys for each.
pub(crate) struct CtKeys(Vec<(u16, SigningScheme, super::tlog::ParsedKeyring)>);

impl CtKeys {
    /// The trust root's CT log keys, by scheme (as `Verifier::new` builds them).
    pub(crate) fn prepare(root: &TrustedRoot) -> Result<Self, String> {
        let schemes = [
            (0x0403, SigningScheme::EcdsaP256Sha256),
            (0x0503, SigningScheme::EcdsaP384Sha384),
            (0x0401, SigningScheme::RsaPkcs1Sha256),
            (0x0501, SigningScheme::RsaPkcs1Sha384),
            (0x0601, SigningScheme::RsaPkcs1Sha512),
        ];
        let mut keys = Vec::with_capacity(schemes.len());
        for (code, scheme) in schemes {
            let ring = root.ctfe_keys(scheme).map_err(|e| one_line(&e.to_string()))?;
            let ids = root.ctlogs.iter().map(|log| log.log_id.key_id.as_bytes());
            keys.push((code, scheme, super::tlog::ParsedKeyring::with_ids(ring, ids)));
        }
        Ok(Self(keys))
    }
}

/// The SHA-256 of the SPKI of the certificate that issued `leaf`, when the
/// candidates leave exactly one: the trust root's Fulcio certificates and
/// the certificates the bundle carries after the leaf, whose subject is the
/// leaf's issuer name. webpki builds the verified path only through a
/// certificate whose subject is byte for byte the leaf's issuer, taken from
/// exactly these two sets, so one candidate key means the verified issuer's
/// key. `None` (no candidate, or several keys under one name, as in
/// Sigstore staging) leaves the SCT to the library, which reads the issuer
/// from the verified path; so does a certificate of either set we cannot
/// read (`trusted` is `None` when a trust-root certificate was unreadable).
pub(crate) fn issuer_key_hash(leaf: &[u8], trusted: Option<&[(Vec<u8>, [u8; 32])]>, carried: &[&[u8]]) -> Option<[u8; 32]> {
    let trusted = trusted?;
    let issuer = super::certificate::issuer_name(leaf)?;
    let mut found: Option<[u8; 32]> = None;
    let mut consider = |hash: [u8; 32]| -> bool {
        match found {
            Some(known) if known != hash => false,
            _ => {
                found = Some(hash);
                true
            }
        }
    };
    for (subject, hash) in trusted {
        if *subject == issuer && !consider(*hash) {
            return None;
        }
    }
    for cert in carried {
        // A certificate we cannot read could be the issuer: leave it to the library.
        if super::certificate::subject_name(cert)? == issuer {
            let spki = super::certificate::spki(cert)?;
            if !consider(spki_hash(&spki)) {
                return None;
            }
        }
    }
    found
}

/// SHA-256 of a DER SubjectPublicKeyInfo.
pub(crate) fn spki_hash(spki: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(sigstore_verify::crypto::sha256(spki).as_bytes());
    out
}

fn sct_error(detail: impl Into<String>) -> VerifyError {
    CertificateError::Sct(detail.into()).into()
}

/// Verify the one SCT embedded in `leaf` (DER), issued under the key whose
/// SPKI hashes to `issuer_key_hash`.
pub(crate) fn verify(leaf: &[u8], issuer_key_hash: &[u8; 32], ct: &CtKeys) -> Result<(), VerifyError> {
    let malformed = || CertificateError::Malformed("failed to parse certificate".into());
    let (precert_tbs, sct_list) = split_precert(leaf).ok_or_else(malformed)?;
    let Some(sct_list) = sct_list else {
        return Err(sct_error("certificate is missing SCT extension (Signed Certificate Timestamp)"));
    };
    let sct = single_sct(sct_list)?;
    let code = u16::from_be_bytes([sct.hash, sct.signature_alg]);
    let Some((_, _, keyring)) = ct.0.iter().find(|(c, _, _)| *c == code) else {
        return Err(sct_error(format!("unsupported SCT signature algorithm: 0x{code:04x}")));
    };
    if keyring.is_empty() {
        return Err(VerifyError::from_library(sigstore_verify::Error::InvalidTrustRoot("no CT log keys in trusted root".into())));
    }
    let issued_at = i64::try_from(sct.timestamp)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .ok_or_else(|| sct_error("invalid SCT timestamp"))?;
    // RFC 6962 §3.2 digitally-signed struct for a precertificate entry.
    let tbs_len =
        u32::try_from(precert_tbs.len()).ok().filter(|n| *n < 1 << 24).ok_or_else(|| sct_error("precertificate TBS too large"))?;
    let mut data = Vec::with_capacity(precert_tbs.len() + sct.extensions.len() + 50);
    data.push(0); // sct_version v1
    data.push(0); // signature_type certificate_timestamp
    data.extend_from_slice(&sct.timestamp.to_be_bytes());
    data.extend_from_slice(&1u16.to_be_bytes()); // precert_entry
    data.extend_from_slice(issuer_key_hash);
    data.extend_from_slice(&tbs_len.to_be_bytes()[1..]);
    data.extend_from_slice(&precert_tbs);
    data.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
    data.extend_from_slice(sct.extensions);
    let log_id = Sha256Hash::new(*sct.log_id);
    if let Some(key) = keyring.key_at(&log_id, issued_at) {
        if keyring.verify(&log_id, key, &data, sct.signature).is_ok() {
            return Ok(());
        }
    }
    // Not verified: the keyring's own check decides, in its wording.
    keyring
        .verify_with_key_id_at(&log_id, issued_at, &data, &SignatureBytes::from_bytes(sct.signature))
        .map_err(|e| sct_error(format!("SCT signature verification failed: {}", one_line(&e.to_string()))))
}

struct Sct<'a> {
    log_id: &'a [u8; 32],
    timestamp: u64,
    extensions: &'a [u8],
    hash: u8,
    signature_alg: u8,
    signature: &'a [u8],
}

/// The one SCT of a DER `SignedCertificateTimestampList` extension value.
fn single_sct(ext_value: &[u8]) -> Result<Sct<'_>, VerifyError> {
    let list_error = || sct_error("failed to parse SCT list");
    // extnValue holds an OCTET STRING around the TLS-encoded list.
    let (0x04, whole, tls, _) = tlv(ext_value).ok_or_else(list_error)? else {
        return Err(list_error());
    };
    if whole.len() != ext_value.len() {
        return Err(list_error());
    }
    let (list, rest) = tls_vec16(tls).ok_or_else(list_error)?;
    if !rest.is_empty() {
        return Err(list_error());
    }
    let mut scts = Vec::new();
    let mut items = list;
    while !items.is_empty() {
        let (sct, rest) = tls_vec16(items).ok_or_else(list_error)?;
        scts.push(sct);
        items = rest;
    }
    let sct = match scts.as_slice() {
        [single] => *single,
        [] => return Err(sct_error("no SCTs found in certificate")),
        _ => return Err(sct_error("certificate contains multiple SCTs, expected exactly one")),
    };
    parse_sct(sct).ok_or_else(|| sct_error("failed to parse SCT"))
}

/// RFC 6962 v1 SignedCertificateTimestamp, consumed exactly.
fn parse_sct(bytes: &[u8]) -> Option<Sct<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != 0 {
        return None;
    }
    let (log_id, rest) = rest.split_first_chunk::<32>()?;
    let (timestamp, rest) = rest.split_first_chunk::<8>()?;
    let (extensions, rest) = tls_vec16(rest)?;
    let (&hash, rest) = rest.split_first()?;
    let (&signature_alg, rest) = rest.split_first()?;
    // The TLS enums the library's decoder knows (RFC 5246, RFC 8422).
    if !matches!(hash, 0..=6 | 8) || !matches!(signature_alg, 0..=3 | 7 | 8) {
        return None;
    }
    let (signature, rest) = tls_vec16(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some(Sct { log_id, timestamp: u64::from_be_bytes(*timestamp), extensions, hash, signature_alg, signature })
}

/// A TLS `opaque<0..2^16-1>`: (contents, rest).
fn tls_vec16(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = input.split_first_chunk::<2>()?;
    let len = u16::from_be_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The precertificate TBS (the leaf's TBSCertificate with every SCT list
/// extension removed, re-wrapped with DER lengths) and the SCT list
/// extension's value, if any. `None` if the DER does not have the shape of a
/// certificate (the library has parsed it before this runs).
fn split_precert(cert: &[u8]) -> Option<(Vec<u8>, Option<&[u8]>)> {
    let (0x30, _, cert, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, _, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut contents = Vec::with_capacity(tbs.len());
    let mut sct_list = None;
    let mut rest = tbs;
    while !rest.is_empty() {
        let (tag, whole, inner, after) = tlv(rest)?;
        rest = after;
        if tag != 0xa3 {
            contents.extend_from_slice(whole);
            continue;
        }
        let (0x30, seq, mut list, _) = tlv(inner)? else {
            return None;
        };
        if seq.len() != inner.len() {
            return None;
        }
        let mut kept = Vec::with_capacity(list.len());
        while !list.is_empty() {
            let (0x30, ext, fields, after) = tlv(list)? else {
                return None;
            };
            list = after;
            let (0x06, _, oid, after_oid) = tlv(fields)? else {
                return None;
            };
            if oid != SCT_LIST_OID {
                kept.extend_from_slice(ext);
                continue;
            }
            if sct_list.is_some() {
                return None; // a repeated extension is not a valid certificate
            }
            let (tag, _, value, after) = tlv(after_oid)?;
            let value = if tag == 0x01 {
                let (0x04, _, value, _) = tlv(after)? else {
                    return None;
                };
                value
            } else if tag == 0x04 {
                value
            } else {
                return None;
            };
            sct_list = Some(value);
        }
        let mut sequence = Vec::with_capacity(kept.len() + 4);
        push_tlv(&mut sequence, 0x30, &kept);
        push_tlv(&mut contents, 0xa3, &sequence);
    }
    let mut out = Vec::with_capacity(contents.len() + 4);
    push_tlv(&mut out, 0x30, &contents);
    Some((out, sct_list))
}

/// Append a DER TLV with a definite, minimal length.
fn push_tlv(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    out.push(tag);
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(contents);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precert_split_never_panics_on_garbage() {
        let mut data = vec![0x30, 0x82, 0x01, 0x00, 0x30, 0x81, 0xf0, 0xa3];
        for i in 0..1500u32 {
            data.push((i.wrapping_mul(2654435761) >> 11) as u8);
            let _ = split_precert(&data);
            let _ = single_sct(&data);
            let _ = parse_sct(&data);
        }
    }

    #[test]
    fn der_lengths_are_minimal() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536] {
            let mut out = Vec::new();
            push_tlv(&mut out, 0x30, &vec![0; len]);
            let (tag, whole, contents, rest) = tlv(&out).unwrap();
            assert_eq!((tag, whole.len(), contents.len(), rest.len()), (0x30, out.len(), len, 0));
            let header = out.len() - len;
            assert_eq!(
                header,
                if len < 128 {
                    2
                } else if len < 256 {
                    3
                } else if len < 65536 {
                    4
                } else {
                    5
                }
            );
        }
    }
}
