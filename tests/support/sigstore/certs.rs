//! X.509 certificates for the test Fulcio CA and TSA, built with x509-cert types.

use std::str::FromStr;
use std::time::Duration;

use x509_cert::der::asn1::{GeneralizedTime, Ia5String, OctetString, UtcTime, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName, SubjectKeyIdentifier,
};
use x509_cert::ext::{AsExtension, Extension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use super::keys::TestKey;

/// id-kp-codeSigning.
pub const EKU_CODE_SIGNING: &str = "1.3.6.1.5.5.7.3.3";
/// id-kp-timeStamping.
pub const EKU_TIME_STAMPING: &str = "1.3.6.1.5.5.7.3.8";
/// The embedded SCT list extension.
pub const SCT_LIST_OID: &str = "1.3.6.1.4.1.11129.2.4.2";

/// A certificate's SAN.
#[derive(Debug, Clone)]
pub enum San {
    /// A URI SAN (CI workflows).
    Uri(String),
    /// An email SAN (people).
    Email(String),
    /// A Fulcio username otherName SAN (`1.3.6.1.4.1.57264.1.7`, UTF8String).
    OtherName(String),
}

/// An extension to add verbatim: (OID, critical, DER value).
pub type RawExtension = (String, bool, Vec<u8>);

/// What to put in a certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    /// Subject DN, RFC 4514 string ("" for Fulcio leaves).
    pub subject: String,
    /// Serial number.
    pub serial: u64,
    /// notBefore, seconds since the epoch.
    pub not_before: i64,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    /// Whether this is a CA certificate.
    pub ca: bool,
    /// Extended key usages (dotted OIDs).
    pub eku: Vec<&'static str>,
    /// Whether the EKU extension is critical.
    pub eku_critical: bool,
    /// Subject alternative name (critical, as Fulcio does for empty subjects).
    pub san: Option<San>,
    /// Further extensions, in order.
    pub extra: Vec<RawExtension>,
}

impl CertSpec {
    /// A CA certificate spec.
    pub fn ca(subject: &str, not_before: i64, not_after: i64) -> Self {
        Self {
            subject: subject.to_string(),
            serial: 1,
            not_before,
            not_after,
            ca: true,
            eku: Vec::new(),
            eku_critical: false,
            san: None,
            extra: Vec::new(),
        }
    }
}

/// An issued certificate and the DN it was issued under.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// DER certificate.
    pub der: Vec<u8>,
}

impl IssuedCert {
    /// PEM encoding.
    pub fn pem(&self) -> String {
        super::keys::pem("CERTIFICATE", &self.der)
    }

    /// The parsed certificate.
    pub fn parsed(&self) -> Certificate {
        Certificate::from_der(&self.der).expect("own certificate parses")
    }
}

fn time(seconds: i64) -> Time {
    let d = Duration::from_secs(seconds.max(0) as u64);
    // UTCTime covers 1950-2049; GeneralizedTime beyond, as RFC 5280 requires.
    match UtcTime::from_unix_duration(d) {
        Ok(t) => Time::UtcTime(t),
        Err(_) => Time::GeneralTime(GeneralizedTime::from_unix_duration(d).expect("time")),
    }
}

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(s)
}

fn key_identifier(spki_der: &[u8]) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, spki_der);
    digest.as_ref().to_vec()
}

/// Build the TBSCertificate for `spec`, to be signed by `issuer_key` under `issuer_dn`.
pub fn tbs(spec: &CertSpec, subject_spki: &[u8], issuer_dn: &str, issuer_key: &TestKey) -> TbsCertificate {
    let subject = if spec.subject.is_empty() { Name::default() } else { Name::from_str(&spec.subject).expect("subject DN") };
    let issuer = Name::from_str(issuer_dn).expect("issuer DN");
    let mut extensions = Vec::new();
    let ext = |e: &dyn ExtensionEncoder, critical: bool| e.to_ext(critical);
    extensions.push(ext(&BasicConstraints { ca: spec.ca, path_len_constraint: None }, true));
    let usages = if spec.ca { KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign) } else { KeyUsage(KeyUsages::DigitalSignature.into()) };
    extensions.push(ext(&usages, true));
    if !spec.eku.is_empty() {
        extensions.push(ext(&ExtendedKeyUsage(spec.eku.iter().map(|o| oid(o)).collect()), spec.eku_critical));
    }
    extensions.push(ext(&SubjectKeyIdentifier(OctetString::new(key_identifier(subject_spki)).expect("ski")), false));
    extensions.push(ext(
        &AuthorityKeyIdentifier {
            key_identifier: Some(OctetString::new(key_identifier(&issuer_key.spki_der())).expect("aki")),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        },
        false,
    ));
    if let Some(san) = &spec.san {
        let name = match san {
            San::Uri(uri) => GeneralName::UniformResourceIdentifier(Ia5String::new(uri).expect("uri")),
            San::Email(email) => GeneralName::Rfc822Name(Ia5String::new(email).expect("email")),
            San::OtherName(name) => GeneralName::OtherName(x509_cert::ext::pkix::name::OtherName {
                type_id: oid("1.3.6.1.4.1.57264.1.7"),
                value: x509_cert::der::Any::encode_from(&Utf8StringRef::new(name).expect("utf8")).expect("other name"),
            }),
        };
        extensions.push(ext(&SubjectAltName(vec![name]), true));
    }
    for (id, critical, value) in &spec.extra {
        extensions.push(Extension {
            extn_id: oid(id),
            critical: *critical,
            extn_value: OctetString::new(value.clone()).expect("ext value"),
        });
    }
    TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::from(spec.serial),
        signature: AlgorithmIdentifierOwned { oid: oid(issuer_key.cert_signature_oid()), parameters: None },
        issuer,
        validity: Validity { not_before: time(spec.not_before), not_after: time(spec.not_after) },
        subject,
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(subject_spki).expect("spki"),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    }
}

/// Sign a TBSCertificate.
pub fn sign(tbs: TbsCertificate, issuer_key: &TestKey) -> IssuedCert {
    let tbs_der = tbs.to_der().expect("tbs der");
    let signature = issuer_key.sign(&tbs_der);
    let cert = Certificate {
        signature_algorithm: tbs.signature.clone(),
        tbs_certificate: tbs,
        signature: x509_cert::der::asn1::BitString::from_bytes(&signature).expect("bitstring"),
    };
    IssuedCert { der: cert.to_der().expect("cert der") }
}

/// Issue a certificate in one step.
pub fn issue(spec: &CertSpec, subject_spki: &[u8], issuer_dn: &str, issuer_key: &TestKey) -> IssuedCert {
    sign(tbs(spec, subject_spki, issuer_dn, issuer_key), issuer_key)
}

/// A Fulcio claim extension value: `.1`-`.6` hold the raw string, `.8`+ a DER UTF8String.
pub fn fulcio_claim(number: u32, value: &str) -> RawExtension {
    let der = if number <= 6 { value.as_bytes().to_vec() } else { Utf8StringRef::new(value).expect("utf8").to_der().expect("der") };
    (format!("1.3.6.1.4.1.57264.1.{number}"), false, der)
}

/// Object-safe view of x509-cert's extension types.
trait ExtensionEncoder {
    fn to_ext(&self, critical: bool) -> Extension;
}

impl<T: AsExtension + Encode> ExtensionEncoder for T {
    fn to_ext(&self, critical: bool) -> Extension {
        Extension { extn_id: T::OID, critical, extn_value: OctetString::new(self.to_der().expect("ext der")).expect("ext") }
    }
}
