//! The manifest of one installed trust root: `manifest.json` in its generation directory.
//!
//! It is written last, after every file it lists, and names each file's sha256, so a reader
//! that finds a manifest finds a complete installation, and a file changed behind pullgate's
//! back is detected on load.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Version of the manifest format; a reader refuses other versions.
pub const MANIFEST_FORMAT: u32 = 1;

/// File name of the Sigstore trusted root inside a generation directory.
pub const TRUSTED_ROOT_FILE: &str = "trusted_root.json";
/// File name of the Sigstore signing config inside a generation directory (when present).
pub const SIGNING_CONFIG_FILE: &str = "signing_config.json";
/// Directory of the verified TUF metadata inside a generation directory.
pub const TUF_DIR: &str = "tuf";

/// How an installed root came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootKind {
    /// Verified from a mirrored TUF repository, chained from a pinned TUF root.
    Tuf,
    /// A bare `trusted_root.json` accepted with `--accept-unverified-trusted-root`: nothing
    /// vouches for it but the operator who imported it.
    UnverifiedTrustedRoot,
}

impl RootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Tuf => "tuf",
            RootKind::UnverifiedTrustedRoot => "unverified-trusted-root",
        }
    }
}

/// One installed trust root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    pub kind: RootKind,
    /// Where it was imported from: the mirror directory or the trusted_root.json file.
    pub source: String,
    /// Number of this installation in the state dir, increasing with every import.
    pub generation: u64,
    /// When `trust-root import` accepted it.
    pub imported_at: Timestamp,
    /// What `max_age` counts from: the time this exact signed content (TUF: timestamp role
    /// version and bytes; unverified: trusted_root.json bytes) was first imported into this
    /// state dir. Re-importing identical content keeps the earlier time, so re-running an
    /// import cannot launder an old mirror into a fresh one.
    pub fresh_since: Timestamp,
    /// The TUF root the chain was verified from (TUF imports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_root: Option<PinnedRootRecord>,
    /// The verified TUF roles (TUF imports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<TufRoles>,
    /// Every installed file (path relative to the generation directory) with its digest.
    pub files: BTreeMap<String, FileRecord>,
    /// The operator dropped the rollback floors of earlier imports (`--reset-rollback-protection`).
    #[serde(default)]
    pub rollback_protection_reset: bool,
}

/// The pinned TUF root an import chained from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedRootRecord {
    /// `embedded` (the Sigstore public-good root shipped in pullgate) or the `--root` file path.
    pub source: String,
    pub version: u64,
    pub sha256: String,
}

/// The four top-level TUF roles as verified at import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TufRoles {
    pub root: RoleRecord,
    pub timestamp: RoleRecord,
    pub snapshot: RoleRecord,
    pub targets: RoleRecord,
}

impl TufRoles {
    /// `(name, record)` in the order the TUF workflow verifies them.
    pub fn iter(&self) -> [(&'static str, &RoleRecord); 4] {
        [("root", &self.root), ("timestamp", &self.timestamp), ("snapshot", &self.snapshot), ("targets", &self.targets)]
    }
}

/// One verified TUF role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRecord {
    pub version: u64,
    pub expires: Timestamp,
    /// sha256 of the metadata file as verified.
    pub sha256: String,
}

/// An installed file's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub sha256: String,
    pub length: u64,
}

impl FileRecord {
    pub fn of(bytes: &[u8]) -> FileRecord {
        FileRecord { sha256: sha256_hex(bytes), length: bytes.len() as u64 }
    }

    pub fn matches(&self, bytes: &[u8]) -> bool {
        self.length == bytes.len() as u64 && self.sha256 == sha256_hex(bytes)
    }
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sigstore_verify::crypto::sha256(bytes).to_hex()
}

impl Manifest {
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(format!("manifest format {} is not the supported {MANIFEST_FORMAT}", manifest.format));
        }
        if !manifest.files.contains_key(TRUSTED_ROOT_FILE) {
            return Err(format!("manifest lists no {TRUSTED_ROOT_FILE}"));
        }
        if manifest.kind == RootKind::Tuf && manifest.roles.is_none() {
            return Err("manifest of a TUF import has no roles".into());
        }
        Ok(manifest)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// sha256 of the installed trusted_root.json.
    pub fn trusted_root_sha256(&self) -> &str {
        &self.files[TRUSTED_ROOT_FILE].sha256
    }
}
