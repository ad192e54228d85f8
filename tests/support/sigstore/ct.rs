//! A certificate-transparency log that issues embedded SCTs (RFC 6962 §3.2).

use x509_cert::der::Encode;
use x509_cert::ext::pkix::sct::{
    DigitallySigned, HashAlgorithm, LogId, SerializedSct, SignatureAlgorithm, SignatureAndHashAlgorithm, SignedCertificateTimestamp,
    SignedCertificateTimestampList, Version,
};
use x509_cert::TbsCertificate;

use super::keys::TestKey;

/// The bytes a CT log signs for a precertificate entry.
fn signed_data(timestamp_ms: u64, issuer_key_hash: &[u8; 32], precert_tbs: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8, 0u8]; // v1, certificate_timestamp
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // precert_entry
    out.extend_from_slice(issuer_key_hash);
    let len = precert_tbs.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]); // uint24 length
    out.extend_from_slice(precert_tbs);
    out.extend_from_slice(&0u16.to_be_bytes()); // no extensions
    out
}

/// Compute the SCT-list extension value for `tbs` (which must not yet carry
/// one), as `ct_key` would for a leaf issued by the holder of `issuer_spki`.
pub fn sct_extension(tbs: &TbsCertificate, issuer_spki: &[u8], ct_key: &TestKey, timestamp_ms: u64) -> Vec<u8> {
    let precert = tbs.to_der().expect("tbs");
    let issuer_key_hash = sha256(issuer_spki);
    let signature = ct_key.sign(&signed_data(timestamp_ms, &issuer_key_hash, &precert));
    let sct = SignedCertificateTimestamp {
        version: Version::V1,
        log_id: LogId { key_id: ct_key.key_id() },
        timestamp: timestamp_ms,
        extensions: Vec::<u8>::new().into(),
        signature: DigitallySigned {
            algorithm: SignatureAndHashAlgorithm { hash: HashAlgorithm::Sha256, signature: SignatureAlgorithm::Ecdsa },
            signature: signature.into(),
        },
    };
    let list = SignedCertificateTimestampList::new(&[SerializedSct::new(sct).expect("sct")]).expect("sct list");
    list.to_der().expect("sct list der")
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
