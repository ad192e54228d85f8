//! Content digests as they appear on the wire: `sha256:<hex>` / `sha512:<hex>`.

use std::fmt;
use std::str::FromStr;

use super::error::MaterialError;
use sigstore_verify::types::{ArtifactDigest, HashAlgorithm};

/// The digest algorithms an image or artifact may be named by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// SHA-256, the OCI default.
    Sha256,
    /// SHA-512, used by some in-toto subjects (npm provenance).
    Sha512,
}

impl DigestAlgorithm {
    /// The prefix used in `algorithm:hex` strings.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }
}

/// A validated digest, e.g. the manifest digest of the image being pulled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    bytes: Vec<u8>,
}

impl Digest {
    /// Hash `data` with `algorithm`.
    pub fn of(algorithm: DigestAlgorithm, data: &[u8]) -> Self {
        let bytes = match algorithm {
            DigestAlgorithm::Sha256 => sigstore_verify::crypto::sha256(data).as_bytes().to_vec(),
            DigestAlgorithm::Sha512 => sigstore_verify::crypto::sha512(data).as_bytes().to_vec(),
        };
        Self { algorithm, bytes }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lower-case hex of the digest, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// Whether `s` is syntactically a digest (used to tell digests from file names).
    pub fn looks_like_digest(s: &str) -> bool {
        s.parse::<Digest>().is_ok()
    }

    pub(crate) fn to_library(&self) -> ArtifactDigest {
        let algorithm = match self.algorithm {
            DigestAlgorithm::Sha256 => HashAlgorithm::Sha2256,
            DigestAlgorithm::Sha512 => HashAlgorithm::Sha2512,
        };
        // Length was validated at construction, so this cannot fail; fall back
        // to an obviously-wrong zero digest rather than panicking if it ever did.
        ArtifactDigest::new(algorithm, self.bytes.clone()).unwrap_or_else(|_| {
            ArtifactDigest::sha256(sigstore_verify::types::Sha256Hash::new([0; 32]))
        })
    }
}

impl FromStr for Digest {
    type Err = MaterialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || MaterialError::MalformedDigest(truncate(s));
        let (prefix, hex_part) = s.split_once(':').ok_or_else(malformed)?;
        let algorithm = match prefix {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            _ => return Err(malformed()),
        };
        if hex_part.len() != algorithm.len() * 2 {
            return Err(malformed());
        }
        let bytes = hex::decode(hex_part).map_err(|_| malformed())?;
        Ok(Self { algorithm, bytes })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.prefix(), self.hex())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(140).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d: Digest = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf"
            .parse()
            .unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert!(d.to_string().starts_with("sha256:a0cf"));
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
        assert!("sha256".parse::<Digest>().is_err());
        assert!(format!("sha512:{}", "0".repeat(128))
            .parse::<Digest>()
            .is_ok());
    }
}
