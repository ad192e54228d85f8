//! Test TUF repositories in Sigstore's published layout, signed with throwaway keys.
//!
//! Signatures cover the securesystemslib canonical JSON of `signed` (the encoder `sigstore-tuf`
//! verifies against); files are written pretty-printed, as Sigstore publishes them. Keys are a
//! mix of ECDSA P-256 (PEM, `ecdsa-sha2-nistp256`, like Sigstore's) and Ed25519 (hex).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};

pub const DAY: SignedDuration = SignedDuration::from_hours(24);

/// A trusted_root.json the verification engine accepts (the library's embedded production one).
pub fn production_trusted_root() -> Vec<u8> {
    sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT.as_bytes().to_vec()
}

/// A different valid trusted_root.json (the library's embedded staging one).
pub fn staging_trusted_root() -> Vec<u8> {
    sigstore_verify::trust_root::SIGSTORE_STAGING_TRUSTED_ROOT.as_bytes().to_vec()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
}

/// A signing key with its TUF key object and key ID.
pub struct TestKey {
    pair: Pair,
    pub public: Value,
    pub id: String,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestKey({})", &self.id[..8])
    }
}

impl TestKey {
    pub fn ed25519() -> Arc<TestKey> {
        let pair = Ed25519KeyPair::generate().unwrap();
        let public = json!({
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyval": { "public": hex::encode(pair.public_key().as_ref()) },
        });
        Arc::new(TestKey { id: key_id(&public), pair: Pair::Ed25519(pair), public })
    }

    pub fn ecdsa() -> Arc<TestKey> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1, then the uncompressed point.
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.extend_from_slice(pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(&spki);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        let public = json!({
            "keytype": "ecdsa",
            "scheme": "ecdsa-sha2-nistp256",
            "keyval": { "public": pem },
        });
        Arc::new(TestKey { id: key_id(&public), pair: Pair::Ecdsa(pair), public })
    }

    /// Hex signature over `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        match &self.pair {
            Pair::Ed25519(p) => hex::encode(p.sign(message).as_ref()),
            Pair::Ecdsa(p) => hex::encode(p.sign(&SystemRandom::new(), message).unwrap().as_ref()),
        }
    }
}

fn key_id(public: &Value) -> String {
    sha256_hex(&sigstore_tuf::canonical_json::to_canonical_bytes(public).unwrap())
}

/// A metadata file: `signed` with signatures by `keys`.
pub fn sign_envelope(signed: &Value, keys: &[&TestKey]) -> Vec<u8> {
    let canonical = sigstore_tuf::canonical_json::to_canonical_bytes(signed).unwrap();
    let signatures: Vec<Value> = keys.iter().map(|k| json!({ "keyid": k.id, "sig": k.sign(&canonical) })).collect();
    let mut out = serde_json::to_vec_pretty(&json!({ "signatures": signatures, "signed": signed })).unwrap();
    out.push(b'\n');
    out
}

/// Keys and threshold of one role.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub keys: Vec<Arc<TestKey>>,
    pub threshold: usize,
}

impl RoleSpec {
    /// `n` fresh keys (alternating ECDSA and Ed25519) with `threshold`.
    pub fn fresh(n: usize, threshold: usize) -> RoleSpec {
        let keys = (0..n).map(|i| if i % 2 == 0 { TestKey::ecdsa() } else { TestKey::ed25519() }).collect();
        RoleSpec { keys, threshold }
    }

    pub fn key_refs(&self) -> Vec<&TestKey> {
        self.keys.iter().map(|k| k.as_ref()).collect()
    }
}

/// One root version.
#[derive(Debug, Clone)]
pub struct RootSpec {
    pub version: u64,
    pub expires: Timestamp,
    pub root: RoleSpec,
    pub timestamp: RoleSpec,
    pub snapshot: RoleSpec,
    pub targets: RoleSpec,
}

impl RootSpec {
    pub fn signed(&self) -> Value {
        let mut keys = serde_json::Map::new();
        let mut roles = serde_json::Map::new();
        for (name, role) in [("root", &self.root), ("timestamp", &self.timestamp), ("snapshot", &self.snapshot), ("targets", &self.targets)]
        {
            for k in &role.keys {
                keys.insert(k.id.clone(), k.public.clone());
            }
            let ids: Vec<&str> = role.keys.iter().map(|k| k.id.as_str()).collect();
            roles.insert(name.into(), json!({ "keyids": ids, "threshold": role.threshold }));
        }
        json!({
            "_type": "root",
            "spec_version": "1.0.31",
            "version": self.version,
            "expires": self.expires.to_string(),
            "consistent_snapshot": true,
            "keys": keys,
            "roles": roles,
        })
    }
}

/// A TUF repository being built in `dir`.
#[derive(Debug)]
pub struct Repo {
    pub dir: PathBuf,
    /// Base instant for default expiries.
    pub now: Timestamp,
    /// Every root so far; `roots[v - 1]` is version `v`.
    pub roots: Vec<RootSpec>,
    pub timestamp_version: u64,
    pub snapshot_version: u64,
    pub targets_version: u64,
    pub timestamp_expires: Timestamp,
    pub snapshot_expires: Timestamp,
    pub targets_expires: Timestamp,
    /// Target name -> content.
    pub targets: BTreeMap<String, Vec<u8>>,
    /// Pin length and sha256 of snapshot (in timestamp) and targets (in snapshot), as TUF
    /// allows; Sigstore's public instance pins versions only.
    pub pin_hashes: bool,
    /// How many keys sign timestamp, snapshot and targets on publish (default: all).
    pub signers: BTreeMap<&'static str, usize>,
}

impl Repo {
    /// Root version 1 (root 3 keys threshold 2, one key each for the others) and a first
    /// publication of timestamp, snapshot and targets with the production trusted root.
    pub fn new(dir: &Path, now: Timestamp) -> Repo {
        std::fs::create_dir_all(dir.join("targets")).unwrap();
        let root = RootSpec {
            version: 1,
            expires: now + 365 * DAY,
            root: RoleSpec::fresh(3, 2),
            timestamp: RoleSpec::fresh(1, 1),
            snapshot: RoleSpec::fresh(1, 1),
            targets: RoleSpec::fresh(2, 2),
        };
        let mut repo = Repo {
            dir: dir.to_owned(),
            now,
            roots: Vec::new(),
            timestamp_version: 0,
            snapshot_version: 0,
            targets_version: 0,
            timestamp_expires: now + DAY,
            snapshot_expires: now + 7 * DAY,
            targets_expires: now + 90 * DAY,
            targets: [("trusted_root.json".to_string(), production_trusted_root())].into(),
            pin_hashes: true,
            signers: BTreeMap::new(),
        };
        let signed = root.signed();
        repo.roots.push(root);
        let keys = repo.roots[0].root.key_refs();
        std::fs::write(repo.root_path(1), sign_envelope(&signed, &keys)).unwrap();
        repo.publish();
        repo
    }

    pub fn root(&self) -> &RootSpec {
        self.roots.last().unwrap()
    }

    pub fn root_version(&self) -> u64 {
        self.root().version
    }

    pub fn root_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("{version}.root.json"))
    }

    /// Adds root version N+1 made by `change` from version N, signed by every root key of
    /// both versions (so both thresholds are met).
    pub fn rotate(&mut self, change: impl FnOnce(&mut RootSpec)) {
        let old = self.root().clone();
        let mut new = old.clone();
        new.version += 1;
        change(&mut new);
        let mut signers: Vec<&TestKey> = old.root.key_refs();
        for k in new.root.key_refs() {
            if !signers.iter().any(|s| s.id == k.id) {
                signers.push(k);
            }
        }
        let bytes = sign_envelope(&new.signed(), &signers);
        std::fs::write(self.root_path(new.version), bytes).unwrap();
        self.roots.push(new);
    }

    /// Adds root version N+1 made by `change`, signed by exactly `signers`.
    pub fn rotate_signed_by(&mut self, change: impl FnOnce(&mut RootSpec), signers: &[&TestKey]) {
        let mut new = self.root().clone();
        new.version += 1;
        change(&mut new);
        std::fs::write(self.root_path(new.version), sign_envelope(&new.signed(), signers)).unwrap();
        self.roots.push(new);
    }

    fn signers_for(&self, role: &'static str, spec: &RoleSpec) -> Vec<Arc<TestKey>> {
        let n = self.signers.get(role).copied().unwrap_or(spec.keys.len());
        spec.keys.iter().take(n).cloned().collect()
    }

    fn meta(&self, version: u64, bytes: &[u8]) -> Value {
        if self.pin_hashes {
            json!({ "version": version, "length": bytes.len(), "hashes": { "sha256": sha256_hex(bytes) } })
        } else {
            json!({ "version": version })
        }
    }

    pub fn targets_signed(&self) -> Value {
        let targets: serde_json::Map<String, Value> = self
            .targets
            .iter()
            .map(|(name, bytes)| (name.clone(), json!({ "length": bytes.len(), "hashes": { "sha256": sha256_hex(bytes) } })))
            .collect();
        json!({
            "_type": "targets",
            "spec_version": "1.0.31",
            "version": self.targets_version,
            "expires": self.targets_expires.to_string(),
            "targets": targets,
        })
    }

    /// Publishes the next versions of targets, snapshot and timestamp (and the target files).
    pub fn publish(&mut self) {
        self.targets_version += 1;
        self.snapshot_version += 1;
        self.timestamp_version += 1;
        self.write_targets();
        self.write_snapshot_and_timestamp();
    }

    /// Writes `N.targets.json` and the target files for the current `targets_version`.
    pub fn write_targets(&self) {
        for (name, bytes) in &self.targets {
            std::fs::write(self.dir.join("targets").join(format!("{}.{name}", sha256_hex(bytes))), bytes).unwrap();
        }
        let root = self.root();
        let signers = self.signers_for("targets", &root.targets);
        let keys: Vec<&TestKey> = signers.iter().map(|k| k.as_ref()).collect();
        let bytes = sign_envelope(&self.targets_signed(), &keys);
        std::fs::write(self.dir.join(format!("{}.targets.json", self.targets_version)), bytes).unwrap();
    }

    /// Writes `N.snapshot.json` pinning the current targets file, and `timestamp.json`.
    pub fn write_snapshot_and_timestamp(&self) {
        let targets_bytes = std::fs::read(self.dir.join(format!("{}.targets.json", self.targets_version))).unwrap();
        let snapshot = json!({
            "_type": "snapshot",
            "spec_version": "1.0.31",
            "version": self.snapshot_version,
            "expires": self.snapshot_expires.to_string(),
            "meta": { "targets.json": self.meta(self.targets_version, &targets_bytes) },
        });
        self.write_role("snapshot", &snapshot, &format!("{}.snapshot.json", self.snapshot_version));
        self.write_timestamp();
    }

    /// Writes `timestamp.json` pinning the current snapshot file.
    pub fn write_timestamp(&self) {
        let snapshot_bytes = std::fs::read(self.dir.join(format!("{}.snapshot.json", self.snapshot_version))).unwrap();
        let timestamp = json!({
            "_type": "timestamp",
            "spec_version": "1.0.31",
            "version": self.timestamp_version,
            "expires": self.timestamp_expires.to_string(),
            "meta": { "snapshot.json": self.meta(self.snapshot_version, &snapshot_bytes) },
        });
        self.write_role("timestamp", &timestamp, "timestamp.json");
    }

    fn write_role(&self, role: &'static str, signed: &Value, file: &str) {
        let root = self.root();
        let spec = match role {
            "timestamp" => &root.timestamp,
            "snapshot" => &root.snapshot,
            _ => &root.targets,
        };
        let signers = self.signers_for(role, spec);
        let keys: Vec<&TestKey> = signers.iter().map(|k| k.as_ref()).collect();
        std::fs::write(self.dir.join(file), sign_envelope(signed, &keys)).unwrap();
    }

    /// Path of a target file as published.
    pub fn target_path(&self, name: &str) -> PathBuf {
        let bytes = &self.targets[name];
        self.dir.join("targets").join(format!("{}.{name}", sha256_hex(bytes)))
    }

    /// Copies the whole repository to `dest` (a mirror snapshot frozen in time).
    pub fn copy_to(&self, dest: &Path) {
        copy_dir(&self.dir, dest);
    }
}

pub fn copy_dir(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dest.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}

/// The real Sigstore metadata in `shared/tuf/sigstore-public-good`, if this checkout has it:
/// `$PULLGATE_SHARED/tuf/...` or `<crate>/../shared/tuf/...`.
pub fn shared_public_good() -> Option<PathBuf> {
    let shared = match std::env::var_os("PULLGATE_SHARED") {
        Some(s) => PathBuf::from(s),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    let dir = shared.join("tuf/sigstore-public-good");
    dir.join("1.root.json").is_file().then_some(dir)
}

pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}
