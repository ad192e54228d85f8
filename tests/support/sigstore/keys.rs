//! Signing keys for the test stack (aws-lc-rs), in the algorithms Sigstore uses.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

/// Which algorithm a [`TestKey`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256, SHA-256 (Fulcio leaves, Rekor, CT, TSA leaf, cosign keys).
    P256,
    /// ECDSA P-384, SHA-384 (Fulcio root and intermediate).
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA-2048, PKCS#1 v1.5 SHA-256.
    Rsa,
}

/// A private key that can sign and report its SubjectPublicKeyInfo.
pub enum TestKey {
    /// ECDSA (P-256 or P-384).
    Ecdsa(KeyAlg, EcdsaKeyPair),
    /// Ed25519.
    Ed25519(Ed25519KeyPair),
    /// RSA.
    Rsa(RsaKeyPair),
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestKey({:?})", self.alg())
    }
}

impl TestKey {
    /// A fresh random key.
    pub fn generate(alg: KeyAlg) -> Self {
        match alg {
            KeyAlg::P256 => Self::Ecdsa(alg, EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).expect("p256")),
            KeyAlg::P384 => Self::Ecdsa(alg, EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_ASN1_SIGNING).expect("p384")),
            KeyAlg::Ed25519 => Self::Ed25519(Ed25519KeyPair::generate().expect("ed25519")),
            KeyAlg::Rsa => Self::Rsa(RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa")),
        }
    }

    /// The algorithm.
    pub fn alg(&self) -> KeyAlg {
        match self {
            Self::Ecdsa(alg, _) => *alg,
            Self::Ed25519(_) => KeyAlg::Ed25519,
            Self::Rsa(_) => KeyAlg::Rsa,
        }
    }

    /// Sign `message` (hashing it as the algorithm prescribes).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ecdsa(_, key) => key.sign(&rng, message).expect("sign").as_ref().to_vec(),
            Self::Ed25519(key) => key.sign(message).as_ref().to_vec(),
            Self::Rsa(key) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig).expect("rsa sign");
                sig
            }
        }
    }

    /// DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> Vec<u8> {
        match self {
            Self::Ecdsa(_, key) => key.public_key().as_der().expect("der").as_ref().to_vec(),
            Self::Ed25519(key) => key.public_key().as_der().expect("der").as_ref().to_vec(),
            Self::Rsa(key) => key.public_key().as_der().expect("der").as_ref().to_vec(),
        }
    }

    /// PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> String {
        pem("PUBLIC KEY", &self.spki_der())
    }

    /// sha256 of the SPKI: the log ID of a Rekor or CT key.
    pub fn key_id(&self) -> [u8; 32] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.spki_der());
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// The signature algorithm OID this key uses when it signs certificates.
    pub fn cert_signature_oid(&self) -> &'static str {
        match self.alg() {
            KeyAlg::P256 => "1.2.840.10045.4.3.2",
            KeyAlg::P384 => "1.2.840.10045.4.3.3",
            KeyAlg::Ed25519 => "1.3.101.112",
            KeyAlg::Rsa => "1.2.840.113549.1.1.11",
        }
    }

    /// `keyDetails` of this key in a trusted_root.json.
    pub fn key_details(&self) -> &'static str {
        match self.alg() {
            KeyAlg::P256 => "PKIX_ECDSA_P256_SHA_256",
            KeyAlg::P384 => "PKIX_ECDSA_P384_SHA_384",
            KeyAlg::Ed25519 => "PKIX_ED25519",
            KeyAlg::Rsa => "PKIX_RSA_PKCS1V15_2048_SHA256",
        }
    }
}

/// PEM-encode `der` under `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
