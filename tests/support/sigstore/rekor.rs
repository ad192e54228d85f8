//! A Rekor-v1-like transparency log: RFC 6962 Merkle tree, signed
//! checkpoints, inclusion proofs and signed entry timestamps (SETs).

use base64::Engine as _;
use serde_json::json;

use super::keys::TestKey;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0u8], data])
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1u8], left, right])
}

/// Merkle tree hash of `leaves` (RFC 6962 §2.1).
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// Largest power of two smaller than `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// Audit path for leaf `m` (RFC 6962 §2.1.1), leaf to root.
fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = path(m, &leaves[..k]);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = path(m - k, &leaves[k..]);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// Everything a bundle needs about one logged entry.
#[derive(Debug, Clone)]
pub struct LoggedEntry {
    /// Index in the log.
    pub index: u64,
    /// The canonicalized body.
    pub body: Vec<u8>,
    /// Integrated time (seconds).
    pub integrated_time: i64,
    /// Signed entry timestamp.
    pub set: Vec<u8>,
    /// Tree size of the proof.
    pub tree_size: u64,
    /// Root hash of that tree.
    pub root: Hash,
    /// Audit path.
    pub hashes: Vec<Hash>,
    /// Signed checkpoint (note text).
    pub checkpoint: String,
    /// Raw log ID.
    pub log_id: [u8; 32],
    /// `kind`, `version` of the body.
    pub kind: (&'static str, &'static str),
}

impl LoggedEntry {
    /// The bundle `tlogEntries[]` JSON object (Rekor v1 shape).
    pub fn to_bundle_json(&self, with_proof: bool, with_promise: bool) -> serde_json::Value {
        let mut entry = json!({
            "logIndex": self.index.to_string(),
            "logId": {"keyId": B64.encode(self.log_id)},
            "kindVersion": {"kind": self.kind.0, "version": self.kind.1},
            "integratedTime": self.integrated_time.to_string(),
            "canonicalizedBody": B64.encode(&self.body),
        });
        if with_promise {
            entry["inclusionPromise"] = json!({"signedEntryTimestamp": B64.encode(&self.set)});
        }
        if with_proof {
            entry["inclusionProof"] = json!({
                "logIndex": self.index.to_string(),
                "rootHash": B64.encode(self.root),
                "treeSize": self.tree_size.to_string(),
                "hashes": self.hashes.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
                "checkpoint": {"envelope": self.checkpoint},
            });
        }
        entry
    }

    /// The cosign `dev.sigstore.cosign/bundle` annotation value.
    pub fn to_cosign_set_bundle(&self) -> String {
        json!({
            "SignedEntryTimestamp": B64.encode(&self.set),
            "Payload": {
                "body": B64.encode(&self.body),
                "integratedTime": self.integrated_time,
                "logIndex": self.index,
                "logID": hex::encode(self.log_id),
            }
        })
        .to_string()
    }
}

/// The log.
#[derive(Debug)]
pub struct Rekor {
    /// The log's signing key (P-256).
    pub key: TestKey,
    /// Checkpoint origin line.
    pub origin: String,
    leaves: Vec<Hash>,
}

impl Rekor {
    /// A log with `prefill` unrelated entries, so proofs are non-trivial.
    pub fn new(key: TestKey, prefill: usize) -> Self {
        let leaves = (0..prefill).map(|i| leaf_hash(format!("unrelated entry {i}").as_bytes())).collect();
        Self { key, origin: "rekor.pullgate.test - 1193050959916656506".to_string(), leaves }
    }

    /// The raw log ID.
    pub fn log_id(&self) -> [u8; 32] {
        self.key.key_id()
    }

    /// Append `body` at `integrated_time` and return its proofs.
    pub fn append(&mut self, body: Vec<u8>, kind: (&'static str, &'static str), integrated_time: i64) -> LoggedEntry {
        let index = self.leaves.len();
        self.leaves.push(leaf_hash(&body));
        let tree_size = self.leaves.len();
        let root = mth(&self.leaves);
        let hashes = path(index, &self.leaves);
        let log_id = self.log_id();
        let set = self.sign_set(&body, integrated_time, index as i64, &log_id);
        let checkpoint = self.checkpoint(tree_size as u64, &root);
        LoggedEntry { index: index as u64, body, integrated_time, set, tree_size: tree_size as u64, root, hashes, checkpoint, log_id, kind }
    }

    /// SET: the log key's signature over canonical JSON of the entry metadata.
    pub fn sign_set(&self, body: &[u8], integrated_time: i64, index: i64, log_id: &[u8; 32]) -> Vec<u8> {
        let payload = json!({
            "body": B64.encode(body),
            "integratedTime": integrated_time,
            "logIndex": index,
            "logID": hex::encode(log_id),
        });
        let canonical = serde_json_canonicalizer::to_vec(&payload).expect("canonical");
        self.key.sign(&canonical)
    }

    /// A signed note for a tree head.
    pub fn checkpoint(&self, size: u64, root: &Hash) -> String {
        let body = format!("{}\n{}\n{}\n", self.origin, size, B64.encode(root));
        let signature = self.key.sign(body.as_bytes());
        let mut sig = self.log_id()[..4].to_vec();
        sig.extend_from_slice(&signature);
        format!("{body}\n\u{2014} rekor.pullgate.test {}\n", B64.encode(sig))
    }
}

/// Canonical JSON bytes of a Rekor entry body.
pub fn canonical(body: &serde_json::Value) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(body).expect("canonical body")
}

/// A `hashedrekord/0.0.1` body: sha256 of the artifact, its signature and verifier PEM.
pub fn hashedrekord_body(artifact_sha256_hex: &str, signature: &[u8], verifier_pem: &str) -> Vec<u8> {
    canonical(&json!({
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": artifact_sha256_hex}},
            "signature": {
                "content": B64.encode(signature),
                "publicKey": {"content": B64.encode(verifier_pem)},
            }
        }
    }))
}

/// A `dsse/0.0.1` body for a DSSE envelope with one signature.
pub fn dsse_body(envelope_json: &[u8], payload: &[u8], signature: &[u8], verifier_pem: &str) -> Vec<u8> {
    canonical(&json!({
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": hex::encode(sha256(&[envelope_json]))},
            "payloadHash": {"algorithm": "sha256", "value": hex::encode(sha256(&[payload]))},
            "signatures": [{"signature": B64.encode(signature), "verifier": B64.encode(verifier_pem)}],
        }
    }))
}

/// An `intoto/0.0.2` body (what cosign 2.x `attest` logs): the envelope without its payload,
/// each signature base64-encoded once more, the verifier PEM base64-encoded, and the hashes of
/// the submitted envelope and of the decoded payload.
pub fn intoto_body(envelope_json: &[u8], payload_type: &str, payload: &[u8], signature: &[u8], verifier_pem: &str) -> Vec<u8> {
    canonical(&json!({
        "apiVersion": "0.0.2",
        "kind": "intoto",
        "spec": {"content": {
            "envelope": {
                "payloadType": payload_type,
                "signatures": [{"sig": B64.encode(B64.encode(signature)), "publicKey": B64.encode(verifier_pem)}],
            },
            "hash": {"algorithm": "sha256", "value": hex::encode(sha256(&[envelope_json]))},
            "payloadHash": {"algorithm": "sha256", "value": hex::encode(sha256(&[payload]))},
        }}
    }))
}

/// A `rekord/0.0.1` body (cosign before 2022).
pub fn rekord_body(payload: &[u8], signature: &[u8], verifier_pem: &str) -> Vec<u8> {
    canonical(&json!({
        "apiVersion": "0.0.1",
        "kind": "rekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": hex::encode(sha256(&[payload]))}},
            "signature": {
                "content": B64.encode(signature),
                "format": "x509",
                "publicKey": {"content": B64.encode(verifier_pem)},
            }
        }
    }))
}

/// Self-check: audit paths for every leaf of trees up to 20 leaves verify
/// with the library's RFC 6962 implementation.
pub fn check_proofs_against_library() {
    {
        for n in 1..20usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&[i as u8])).collect();
            let root = mth(&leaves);
            for m in 0..n {
                let p: Vec<_> = path(m, &leaves).into_iter().map(sigstore_verify::types::Sha256Hash::new).collect();
                sigstore_merkle::verify_inclusion_proof(
                    &sigstore_verify::types::Sha256Hash::new(leaves[m]),
                    m as u64,
                    n as u64,
                    &p,
                    &sigstore_verify::types::Sha256Hash::new(root),
                )
                .unwrap();
            }
        }
    }
}
