//! Content digests, the one type every layer names content by: `sha256:<64 hex>`,
//! `sha384:<96 hex>` or `sha512:<128 hex>`, lowercase as OCI requires.
//!
//! Images are addressed by them on the mirror (`registry`), signatures are bound to them
//! (`verify`), decisions are cached and pinned by them (`enforce`), and `bounded` shortens long
//! text with them. A bottom module: it uses no other pullgate module.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// Why a string is not a digest pullgate can check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no `algorithm:` prefix")]
    NoAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (sha256, sha384 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} is not {1} lowercase hex characters")]
    BadHex(String, usize),
}

/// Hash functions OCI content is addressed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl DigestAlgorithm {
    /// The prefix in `algorithm:hex` strings.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha384 => "sha384",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha384 => 96,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    fn aws_lc(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            DigestAlgorithm::Sha256 => &aws_lc_rs::digest::SHA256,
            DigestAlgorithm::Sha384 => &aws_lc_rs::digest::SHA384,
            DigestAlgorithm::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }
}

/// A content digest (`sha256:<64 hex>`), validated; the hex is lowercase as OCI requires.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let (alg, hex) = s.split_once(':').ok_or_else(|| DigestError::NoAlgorithm(s.to_string()))?;
        let algorithm = match alg {
            "sha256" => DigestAlgorithm::Sha256,
            "sha384" => DigestAlgorithm::Sha384,
            "sha512" => DigestAlgorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm(alg.to_string())),
        };
        if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::BadHex(s.to_string(), algorithm.hex_len()));
        }
        Ok(Digest { algorithm, hex: hex.to_string() })
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn compute(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
        let d = aws_lc_rs::digest::digest(algorithm.aws_lc(), bytes);
        // Lowercase hex, as `{:02x}` per byte wrote it (one allocation, not one per byte).
        Digest { algorithm, hex: hex::encode(d.as_ref()) }
    }

    pub fn sha256(bytes: &[u8]) -> Digest {
        Digest::compute(DigestAlgorithm::Sha256, bytes)
    }

    /// Whether `bytes` hash to this digest (with this digest's algorithm).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::compute(self.algorithm, bytes) == *self
    }

    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// Lowercase hex of the digest, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The raw digest bytes.
    pub fn bytes(&self) -> Vec<u8> {
        // Validated as lowercase hex of the algorithm's length at construction.
        self.hex.as_bytes().chunks(2).map(|p| (nibble(p[0]) << 4) | nibble(p[1])).collect()
    }

    /// The tag of the OCI 1.1 referrers tag schema: `<alg>-<ref>`, alg and ref truncated to 32
    /// and 64 characters (OCI distribution spec, "Referrers Tag Schema").
    pub fn referrers_tag(&self) -> String {
        let alg = self.algorithm.name();
        format!("{}-{}", &alg[..alg.len().min(32)], &self.hex[..self.hex.len().min(64)])
    }

    /// The tag cosign stores legacy signatures under: the digest with `:` replaced, plus `.sig`.
    pub fn cosign_signature_tag(&self) -> String {
        format!("{}-{}.sig", self.algorithm.name(), self.hex)
    }

    /// The tag cosign stores legacy attestations under: the signature tag with `.att`.
    pub fn cosign_attestation_tag(&self) -> String {
        format!("{}-{}.att", self.algorithm.name(), self.hex)
    }

    /// The file stem a bundle for this digest has in the local bundle directory.
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.algorithm.name(), self.hex)
    }
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        _ => c - b'a' + 10,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_helpers() {
        let d = Digest::sha256(b"hello");
        assert_eq!(d.to_string(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(d.matches(b"hello"));
        assert!(!d.matches(b"hello!"));
        assert_eq!(d.referrers_tag(), "sha256-2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(d.cosign_signature_tag(), format!("{}.sig", d.referrers_tag()));
        let d512 = Digest::compute(DigestAlgorithm::Sha512, b"x");
        assert_eq!(d512.referrers_tag().len(), "sha512-".len() + 64, "ref truncated to 64 characters");
        assert!(Digest::parse(&d512.to_string()).is_ok());
        assert!(Digest::parse("sha256").is_err());
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        assert_eq!(d.bytes(), aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"hello").as_ref());
        let d384 = Digest::compute(DigestAlgorithm::Sha384, b"x");
        assert_eq!(Digest::parse(&d384.to_string()), Ok(d384.clone()));
        assert_eq!(d384.bytes().len(), 48);
        assert!(Digest::parse(&d384.to_string().to_uppercase().replace("SHA", "sha")).is_err(), "hex is lowercase");
        assert!(Digest::parse("md5:00").is_err());
    }
}
