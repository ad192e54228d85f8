//! Configured public keys for key-based (non-Fulcio) signatures.

use std::fmt;

use sigstore_verify::crypto::KeyAlgorithm;
use sigstore_verify::types::DerPublicKey;

use super::error::{one_line, MaterialError};

/// Upper bound for a PEM key file; real keys are under 2 KiB (RSA-8192 ~1.5 KiB).
const MAX_PEM_BYTES: usize = 64 << 10;

/// The key algorithms we accept for key-based verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// ECDSA over NIST P-256 (cosign's default).
    EcdsaP256,
    /// ECDSA over NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA (PKCS#1 v1.5), 2048 to 8192 bits.
    Rsa,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa => "rsa",
        })
    }
}

/// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo) accepted as a signer.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    der: DerPublicKey,
    kind: KeyKind,
    fingerprint: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.kind, self.fingerprint)
    }
}

impl PublicKey {
    /// Parse a PEM-encoded SubjectPublicKeyInfo.
    pub fn from_pem(pem: &str) -> Result<Self, MaterialError> {
        if pem.len() > MAX_PEM_BYTES {
            return Err(MaterialError::TooLarge { what: "public key PEM", size: pem.len(), limit: MAX_PEM_BYTES });
        }
        let der = DerPublicKey::from_pem(pem.trim()).map_err(|e| MaterialError::MalformedKey(one_line(&e.to_string())))?;
        Self::from_der(der)
    }

    /// Wrap a DER SubjectPublicKeyInfo.
    pub fn from_der(der: DerPublicKey) -> Result<Self, MaterialError> {
        let algorithm = KeyAlgorithm::from_spki(&der).map_err(|e| MaterialError::MalformedKey(one_line(&e.to_string())))?;
        let kind = match algorithm {
            KeyAlgorithm::EcdsaP256 => KeyKind::EcdsaP256,
            KeyAlgorithm::EcdsaP384 => KeyKind::EcdsaP384,
            KeyAlgorithm::Ed25519 => KeyKind::Ed25519,
            KeyAlgorithm::Rsa => KeyKind::Rsa,
            other => return Err(MaterialError::MalformedKey(format!("unsupported key algorithm {other:?}"))),
        };
        // Reject keys the crypto backend would refuse (compressed points,
        // out-of-range RSA moduli) now, at configuration time.
        sigstore_verify::crypto::VerificationKey::from_spki(&der).map_err(|e| MaterialError::MalformedKey(one_line(&e.to_string())))?;
        let fingerprint = format!("sha256:{}", sigstore_verify::crypto::sha256(der.as_bytes()).to_hex());
        Ok(Self { der, kind, fingerprint })
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn der(&self) -> &DerPublicKey {
        &self.der
    }

    /// The algorithm.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// `sha256:<hex>` of the DER SPKI: how the key is named in decisions and logs.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The digest cosign uses with this key for message signatures.
    pub(crate) fn message_digest_algorithm(&self) -> sigstore_verify::types::HashAlgorithm {
        use sigstore_verify::types::HashAlgorithm;
        match self.kind {
            KeyKind::EcdsaP384 => HashAlgorithm::Sha2384,
            _ => HashAlgorithm::Sha2256,
        }
    }
}
