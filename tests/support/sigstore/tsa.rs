//! An RFC 3161 timestamp authority producing CMS TimeStampTokens.

use std::time::Duration;

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos};
use x509_cert::attr::{Attribute, AttributeValue};
use x509_cert::der::asn1::{GeneralizedTime, OctetString, SetOfVec};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Any, Encode, Tag};
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::certs::IssuedCert;
use super::keys::TestKey;

const ID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
const ID_CT_TST_INFO: &str = "1.2.840.113549.1.9.16.1.4";
const ID_CONTENT_TYPE: &str = "1.2.840.113549.1.9.3";
const ID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
const ID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
const TSA_POLICY: &str = "1.3.6.1.4.1.57264.2";

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

fn sha256_alg() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid: oid(ID_SHA256), parameters: None }
}

/// MessageImprint ::= SEQUENCE { hashAlgorithm AlgorithmIdentifier, hashedMessage OCTET STRING }
#[derive(der::Sequence)]
struct MessageImprint {
    hash_algorithm: AlgorithmIdentifierOwned,
    hashed_message: OctetString,
}

/// TSTInfo (RFC 3161 §2.4.2), the fields we emit.
#[derive(der::Sequence)]
struct TstInfo {
    version: u8,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: u64,
    gen_time: GeneralizedTime,
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref().to_vec()
}

/// How a token names its signer (RFC 5652 SignerIdentifier) and whether it
/// embeds the signing certificate. Real TSAs use every combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenForm {
    /// `subjectKeyIdentifier` instead of `issuerAndSerialNumber`.
    pub by_key_identifier: bool,
    /// Put the signing certificate in `certificates`.
    pub embed_certificate: bool,
}

impl Default for TokenForm {
    fn default() -> Self {
        Self { by_key_identifier: false, embed_certificate: true }
    }
}

/// Timestamp `signature` at `time` (seconds) with the TSA leaf `cert`/`key`.
pub fn timestamp(signature: &[u8], time: i64, cert: &IssuedCert, key: &TestKey, serial: u64) -> Vec<u8> {
    timestamp_with(signature, time, cert, key, serial, TokenForm::default())
}

/// [`timestamp`] in a given [`TokenForm`].
pub fn timestamp_with(signature: &[u8], time: i64, cert: &IssuedCert, key: &TestKey, serial: u64, form: TokenForm) -> Vec<u8> {
    let tst = TstInfo {
        version: 1,
        policy: oid(TSA_POLICY),
        message_imprint: MessageImprint {
            hash_algorithm: sha256_alg(),
            hashed_message: OctetString::new(sha256(signature)).expect("imprint"),
        },
        serial_number: serial,
        gen_time: GeneralizedTime::from_unix_duration(Duration::from_secs(time as u64)).expect("time"),
    };
    let tst_der = tst.to_der().expect("tstinfo");

    let attr =
        |id: &str, value: Any| Attribute { oid: oid(id), values: SetOfVec::try_from(vec![AttributeValue::from(value)]).expect("attr") };
    let content_type = Any::encode_from(&oid(ID_CT_TST_INFO)).expect("oid any");
    let digest = Any::new(Tag::OctetString, sha256(&tst_der)).expect("digest any");
    let signed_attrs =
        SetOfVec::try_from(vec![attr(ID_CONTENT_TYPE, content_type), attr(ID_MESSAGE_DIGEST, digest)]).expect("signed attrs");
    let signature = key.sign(&signed_attrs.to_der().expect("attrs der"));

    let parsed = cert.parsed();
    let sid = if form.by_key_identifier {
        let ski = parsed
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == oid("2.5.29.14"))
            .map(|e| {
                use x509_cert::der::Decode;
                x509_cert::ext::pkix::SubjectKeyIdentifier::from_der(e.extn_value.as_bytes()).expect("ski")
            })
            .expect("TSA certificate has a subject key identifier");
        SignerIdentifier::SubjectKeyIdentifier(ski)
    } else {
        SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: parsed.tbs_certificate.issuer.clone(),
            serial_number: parsed.tbs_certificate.serial_number.clone(),
        })
    };
    let signer = SignerInfo {
        // RFC 5652 §5.3: version 3 when the signer is named by key identifier.
        version: if form.by_key_identifier { CmsVersion::V3 } else { CmsVersion::V1 },
        sid,
        digest_alg: sha256_alg(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: AlgorithmIdentifierOwned { oid: oid(ECDSA_WITH_SHA256), parameters: None },
        signature: OctetString::new(signature).expect("sig"),
        unsigned_attrs: None,
    };
    let signed_data = SignedData {
        version: CmsVersion::V3,
        digest_algorithms: SetOfVec::try_from(vec![sha256_alg()]).expect("algs"),
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: oid(ID_CT_TST_INFO),
            econtent: Some(Any::new(Tag::OctetString, tst_der).expect("econtent")),
        },
        certificates: form
            .embed_certificate
            .then(|| CertificateSet(SetOfVec::try_from(vec![cms::cert::CertificateChoices::Certificate(parsed)]).expect("certs"))),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer]).expect("signers")),
    };
    ContentInfo { content_type: oid(ID_SIGNED_DATA), content: Any::encode_from(&signed_data).expect("signed data") }
        .to_der()
        .expect("content info")
}
