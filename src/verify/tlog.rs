//! Transparency-log checks we run ourselves, with the library's primitives.
//!
//! Two reasons this exists instead of leaving everything to the library:
//!
//! * Speed. The library verifies a Rekor v1 SET twice per bundle (once to
//!   trust the integrated time, once again with the inclusion proof). We let it
//!   do the first and do the inclusion proof and checkpoint here, which saves a
//!   P-256 verification on every pull. `bundle.rs` runs the library with
//!   `skip_tlog_unsafe` only together with [`verify_inclusion`] below, which
//!   mirrors the library's steps 4 and 5 check for check.
//! * Coverage. cosign legacy signatures carry a bare SET ("bundle"
//!   annotation) and, before 2022, `rekord` entries the library cannot parse.

use aws_lc_rs::signature::{self as aws_sig, ParsedPublicKey, VerificationAlgorithm};
use serde::Serialize;
use sigstore_verify::crypto::{Keyring, SigningScheme, VerificationKey};
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::bundle::InclusionProof;
use sigstore_verify::types::{KindVersion, Sha256Hash, SignatureBytes, TransparencyLogEntry};

use super::error::{one_line, TlogError};

/// A keyring of the trust root (Rekor keys; CT log keys in `sct.rs`): the
/// library's keyring (lookup by log ID and validity window, as the library
/// does it) plus each ECDSA key parsed once per trust root, so the SET,
/// checkpoint and SCT checks of every pull do not parse the key again. A
/// key without a parsed form (another scheme, or one aws-lc refuses) is
/// verified through the keyring's own key object, as before; both give the
/// same answer for the same bytes.
pub(crate) struct ParsedKeyring {
    keyring: Keyring,
    parsed: Vec<(Sha256Hash, ParsedPublicKey)>,
}

/// The trust root's Rekor keys.
pub(crate) type RekorKeys = ParsedKeyring;

impl std::ops::Deref for ParsedKeyring {
    type Target = Keyring;
    fn deref(&self) -> &Keyring {
        &self.keyring
    }
}

impl ParsedKeyring {
    /// Wrap the root's Rekor keyring and parse its ECDSA keys.
    pub(crate) fn prepare(root: &TrustedRoot, keyring: Keyring) -> Self {
        let ids = root.tlogs.iter().map(|log| log.log_id.key_id.as_bytes());
        Self::with_ids(keyring, ids)
    }

    /// Wrap `keyring` and parse the ECDSA keys it holds under `ids`.
    pub(crate) fn with_ids<'a>(keyring: Keyring, ids: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut parsed: Vec<(Sha256Hash, ParsedPublicKey)> = Vec::new();
        for id in ids {
            let Ok(id) = Sha256Hash::try_from(id) else {
                continue;
            };
            let Some(key) = keyring.key(&id) else {
                continue;
            };
            let alg: &'static dyn VerificationAlgorithm = match key.scheme() {
                SigningScheme::EcdsaP256Sha256 => &aws_sig::ECDSA_P256_SHA256_ASN1,
                SigningScheme::EcdsaP384Sha384 => &aws_sig::ECDSA_P384_SHA384_ASN1,
                _ => continue,
            };
            // The library refuses such a key at every verification; keep
            // that answer by leaving the key to it.
            if sigstore_verify::crypto::validate_raw_public_key(key.scheme(), key.as_bytes()).is_err()
                || parsed.iter().any(|(known, _)| *known == id)
            {
                continue;
            }
            if let Ok(p) = ParsedPublicKey::new(alg, key.as_bytes()) {
                parsed.push((id, p));
            }
        }
        Self { keyring, parsed }
    }

    /// Verify `signature` over `data` with `key`, the keyring's key for
    /// `key_id` (already looked up with the validity rule of the caller).
    pub(crate) fn verify(&self, key_id: &Sha256Hash, key: &VerificationKey, data: &[u8], signature: &[u8]) -> Result<(), String> {
        match self.parsed.iter().find(|(id, _)| id == key_id) {
            // On a refusal the keyring's key answers too, for its wording.
            Some((_, parsed)) if parsed.verify_sig(data, signature).is_ok() => Ok(()),
            _ => key.verify(data, &SignatureBytes::from_bytes(signature)).map_err(|e| e.to_string()),
        }
    }
}

/// Mirror of the library's steps 4 and 5 for one entry: Merkle inclusion
/// proof, signed checkpoint, and the SET when the library's step 0 did not
/// already verify it.
pub(crate) fn verify_inclusion(entry: &TransparencyLogEntry, rekor_keys: &RekorKeys) -> Result<(), TlogError> {
    if let Some(proof) = &entry.inclusion_proof {
        verify_merkle_inclusion(entry, proof)?;
        verify_checkpoint(entry, proof)?;
    }
    if entry.inclusion_promise.is_some() && !set_verified_by_library(entry) {
        verify_entry_set(entry, rekor_keys)?;
    }
    Ok(())
}

/// Step 6, run in both modes after the library or [`verify_inclusion`]:
/// every entry must name a log of the trusted root, its inclusion proof must
/// agree with what the signed checkpoint and the entry commit to, and the
/// checkpoint must be signed by *that* log under its own name.
///
/// The library authenticates a checkpoint with any trusted log key whose
/// four-byte hint matches any signature line, never looks at the signer name
/// or the entry's log ID, and (for Rekor v2) ignores the proof's duplicated
/// index, size and root. Here:
///
/// * (6a) Rekor v2: `inclusionProof.logIndex` equals the entry's `logIndex`
///   (Rekor v1 numbers entries across shards and proves them in the current
///   shard's tree, so its two indices differ legitimately);
///   `inclusionProof.treeSize` and `rootHash` equal the checkpoint's
///   ([`TlogError::ProofFieldMismatch`]). Rekor v1 proves with the proof's
///   fields and v2 with the checkpoint's: either way a bundle whose copies
///   disagree is inconsistent and refused, as sigstore-go does.
/// * (6b) the checkpoint carries a signature line whose name is the log's
///   name (the origin up to its first space, as Rekor v1 and v2 write it),
///   whose key hint is the entry's log ID, and which verifies with the
///   entry's own log key ([`TlogError::CheckpointSigner`]). Other lines
///   (witness cosignatures, which no policy here requires) are not read.
pub(crate) fn verify_log_identity(entry: &TransparencyLogEntry, rekor_keys: &RekorKeys) -> Result<(), TlogError> {
    let log_id = entry.log_id.key_id.as_bytes();
    let key_id = Sha256Hash::try_from(log_id).map_err(|e| TlogError::MalformedEntry(format!("invalid log ID: {e}")))?;
    if rekor_keys.key(&key_id).is_none() {
        return Err(TlogError::UnknownLog(key_id.to_hex()));
    }
    let Some(proof) = &entry.inclusion_proof else {
        return Ok(());
    };
    let Some(checkpoint) = proof.checkpoint.checkpoint() else {
        return Err(TlogError::NoProof("inclusion proof without a checkpoint".into()));
    };
    // (6a) One index, one tree size, one root.
    let mismatch = |field: &'static str, proof: String, signed: String| Err(TlogError::ProofFieldMismatch { field, proof, signed });
    // Rekor v1 numbers entries globally but proves them in the current
    // shard's tree, so there the two indices differ legitimately and the
    // proof's is authenticated by the Merkle path alone.
    if is_rekor_v2(entry) && proof.log_index.get() != entry.log_index.get() {
        return mismatch("logIndex", proof.log_index.get().to_string(), format!("entry logIndex {}", entry.log_index.get()));
    }
    if proof.tree_size != checkpoint.tree_size() {
        return mismatch("treeSize", proof.tree_size.to_string(), format!("checkpoint tree size {}", checkpoint.tree_size()));
    }
    if proof.root_hash != *checkpoint.root_hash() {
        return mismatch("rootHash", proof.root_hash.to_hex(), format!("checkpoint root {}", checkpoint.root_hash().to_hex()));
    }
    // (6b) Signed by the entry's own log, under the log's own name, in a
    //      well-formed signed note: every line, the last signature line
    //      included, ends with a newline (as the Go note parser requires).
    if !proof.checkpoint.envelope().ends_with('\n') {
        return Err(TlogError::Checkpoint("signed note does not end with a newline".into()));
    }
    verify_checkpoint_signer(checkpoint, &key_id, rekor_keys)
}

/// (6b) The checkpoint is signed by the log with ID `key_id`, on a signature
/// line that names the checkpoint's origin log. Key hints are four bytes and
/// may collide: every line with the right name and hint is tried.
fn verify_checkpoint_signer(
    checkpoint: &sigstore_verify::types::Checkpoint,
    key_id: &Sha256Hash,
    rekor_keys: &RekorKeys,
) -> Result<(), TlogError> {
    let name = log_name(checkpoint.origin());
    // Same validity rule as the library's checkpoint check: a key whose
    // window has not started cannot have signed; an expired log's
    // checkpoints stay verifiable for historical entries.
    let key = rekor_keys
        .key_started_by(key_id, jiff::Timestamp::now())
        .ok_or_else(|| TlogError::CheckpointSigner(format!("log {} key is not yet valid", key_id.to_hex())))?;
    let hint = &key_id.as_bytes()[..4];
    let mut named = false;
    for signature in checkpoint.signatures() {
        if signature.name != name {
            continue;
        }
        named = true;
        if signature.key_id.as_bytes()[..] == hint[..]
            && rekor_keys.verify(key_id, key, checkpoint.signed_data(), signature.signature.as_bytes()).is_ok()
        {
            return Ok(());
        }
    }
    Err(TlogError::CheckpointSigner(if named {
        format!("no valid signature by the entry's log {} under its name {name:?}", key_id.to_hex())
    } else {
        format!("no signature line names the log {name:?}")
    }))
}

/// The log's name in a checkpoint origin: Rekor v1 writes
/// `rekor.sigstore.dev - 1193050959916656506` and signs as
/// `rekor.sigstore.dev`; Rekor v2 uses the bare name for both.
fn log_name(origin: &str) -> &str {
    origin.split(' ').next().unwrap_or(origin)
}

/// The library's step 0 verifies the SET of every Rekor v1 entry that has an
/// integrated time (it is what authenticates that time); all others are ours.
fn set_verified_by_library(entry: &TransparencyLogEntry) -> bool {
    is_rekor_v1(entry) && entry.integrated_time.is_some()
}

fn is_rekor_v1(entry: &TransparencyLogEntry) -> bool {
    matches!(entry.kind_version, KindVersion::HashedRekordV001 | KindVersion::DsseV001 | KindVersion::IntotoV002)
}

fn is_rekor_v2(entry: &TransparencyLogEntry) -> bool {
    entry.kind_version == KindVersion::HashedRekordV002
}

fn verify_merkle_inclusion(entry: &TransparencyLogEntry, proof: &InclusionProof) -> Result<(), TlogError> {
    // Rekor v2 takes index, size and root from the signed checkpoint; v1
    // duplicates them in the proof and the checkpoint must agree (below).
    let (leaf_index, tree_size, root_hash) = if is_rekor_v2(entry) {
        let checkpoint =
            proof.checkpoint.checkpoint().ok_or_else(|| TlogError::Checkpoint("Rekor v2 inclusion proof has no checkpoint".into()))?;
        (entry.log_index.get(), checkpoint.tree_size(), *checkpoint.root_hash())
    } else {
        (proof.log_index.get(), proof.tree_size, proof.root_hash)
    };
    let leaf_hash = sigstore_merkle::hash_leaf(entry.canonicalized_body.as_bytes());
    sigstore_merkle::verify_inclusion_proof(&leaf_hash, leaf_index, tree_size, &proof.hashes, &root_hash)
        .map_err(|e| TlogError::InclusionProof(one_line(&e.to_string())))
}

fn verify_checkpoint(entry: &TransparencyLogEntry, proof: &InclusionProof) -> Result<(), TlogError> {
    let checkpoint = proof.checkpoint.checkpoint().ok_or_else(|| TlogError::Checkpoint("inclusion proof has no checkpoint".into()))?;
    if !is_rekor_v2(entry) && checkpoint.root_hash() != &proof.root_hash {
        return Err(TlogError::Checkpoint(format!(
            "root hash {} does not match the proof's {}",
            checkpoint.root_hash().to_hex(),
            proof.root_hash.to_hex()
        )));
    }
    // The library's rule (some trusted key with a matching hint signed it)
    // is implied by the stricter (6b) in [`verify_log_identity`], which
    // every caller runs next: checking both would verify the same ECDSA
    // signature twice on every pull.
    Ok(())
}

/// The fields a Rekor v1 SET signs, serialized as RFC 8785 canonical JSON.
#[derive(Serialize)]
struct SetPayload<'a> {
    body: &'a str,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logIndex")]
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: &'a str,
}

/// Verify a signed entry timestamp given its parts (as in a cosign `bundle`
/// annotation). `log_id` is the raw 32-byte log ID.
pub(crate) fn verify_set_parts(
    rekor_keys: &RekorKeys,
    body_base64: &str,
    integrated_time: i64,
    log_index: i64,
    log_id: &[u8],
    set: &[u8],
) -> Result<(), TlogError> {
    verify_set_body(rekor_keys, SetBody::Base64(body_base64), integrated_time, log_index, log_id, set)
}

/// The entry body a SET signs: as logged (base64 text), or decoded (then
/// encoded with standard padded base64 straight into the signed payload,
/// which is what `CanonicalizedBody::to_base64` gives).
#[derive(Clone, Copy)]
enum SetBody<'a> {
    Base64(&'a str),
    Bytes(&'a [u8]),
}

fn verify_set_body(
    rekor_keys: &RekorKeys,
    body: SetBody<'_>,
    integrated_time: i64,
    log_index: i64,
    log_id: &[u8],
    set: &[u8],
) -> Result<(), TlogError> {
    let key_id = Sha256Hash::try_from(log_id).map_err(|e| TlogError::MalformedEntry(format!("invalid log ID: {e}")))?;
    let time = jiff::Timestamp::from_second(integrated_time).map_err(|e| TlogError::IntegratedTime(one_line(&e.to_string())))?;
    // The log key must have been valid when the entry was integrated.
    let key = rekor_keys.key_at(&key_id, time).ok_or_else(|| unknown_or_expired(rekor_keys, &key_id, time))?;
    let log_id_hex = hex::encode(log_id);
    let canonical = match body {
        SetBody::Base64(text) => set_payload(text, integrated_time, log_index, &log_id_hex)?,
        SetBody::Bytes(bytes) => set_payload_of_bytes(bytes, integrated_time, log_index, &log_id_hex)?,
    };
    rekor_keys.verify(&key_id, key, &canonical, set).map_err(|e| TlogError::Set(one_line(&e)))
}

/// The RFC 8785 canonical JSON of a SET payload. Written directly when every
/// value is one canonical JSON writes as is (keys in UTF-16 order, integers
/// of at most 2^53 in magnitude, base64 and hex strings, which need no
/// escaping); anything else goes through `serde_json_canonicalizer`, which
/// the unit tests compare this against.
fn set_payload(body_base64: &str, integrated_time: i64, log_index: i64, log_id_hex: &str) -> Result<Vec<u8>, TlogError> {
    const EXACT: u64 = 1 << 53;
    /// The bytes of base64 and hex text, which canonical JSON writes as is.
    const PLAIN: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            table[b] = c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=';
            b += 1;
        }
        table
    };
    let plain = |s: &str| s.bytes().all(|b| PLAIN[b as usize]);
    if integrated_time.unsigned_abs() < EXACT && log_index.unsigned_abs() < EXACT && plain(body_base64) && plain(log_id_hex) {
        let mut out = Vec::with_capacity(body_base64.len() + log_id_hex.len() + 100);
        out.extend_from_slice(b"{\"body\":\"");
        out.extend_from_slice(body_base64.as_bytes());
        out.extend_from_slice(b"\",\"integratedTime\":");
        out.extend_from_slice(integrated_time.to_string().as_bytes());
        out.extend_from_slice(b",\"logID\":\"");
        out.extend_from_slice(log_id_hex.as_bytes());
        out.extend_from_slice(b"\",\"logIndex\":");
        out.extend_from_slice(log_index.to_string().as_bytes());
        out.push(b'}');
        return Ok(out);
    }
    let payload = SetPayload { body: body_base64, integrated_time, log_index, log_id: log_id_hex };
    serde_json_canonicalizer::to_vec(&payload).map_err(|e| TlogError::Set(one_line(&e.to_string())))
}

/// [`set_payload`] for a decoded body: its base64 is written straight into
/// the payload (base64 needs no escaping), without a separate string.
fn set_payload_of_bytes(body: &[u8], integrated_time: i64, log_index: i64, log_id_hex: &str) -> Result<Vec<u8>, TlogError> {
    use base64::Engine as _;
    const EXACT: u64 = 1 << 53;
    let hex_plain = log_id_hex.bytes().all(|b| b.is_ascii_alphanumeric());
    if integrated_time.unsigned_abs() >= EXACT || log_index.unsigned_abs() >= EXACT || !hex_plain {
        let text = base64::engine::general_purpose::STANDARD.encode(body);
        return set_payload(&text, integrated_time, log_index, log_id_hex);
    }
    let mut out = String::with_capacity(body.len().div_ceil(3) * 4 + log_id_hex.len() + 100);
    out.push_str("{\"body\":\"");
    base64::engine::general_purpose::STANDARD.encode_string(body, &mut out);
    out.push_str("\",\"integratedTime\":");
    out.push_str(&integrated_time.to_string());
    out.push_str(",\"logID\":\"");
    out.push_str(log_id_hex);
    out.push_str("\",\"logIndex\":");
    out.push_str(&log_index.to_string());
    out.push('}');
    Ok(out.into_bytes())
}

fn unknown_or_expired(rekor_keys: &Keyring, key_id: &Sha256Hash, time: jiff::Timestamp) -> TlogError {
    if rekor_keys.key(key_id).is_some() {
        TlogError::Set(format!("log {} key was not valid at integrated time {time}", key_id.to_hex()))
    } else {
        TlogError::UnknownLog(key_id.to_hex())
    }
}

/// Verify the SET of a bundle entry.
pub(crate) fn verify_entry_set(entry: &TransparencyLogEntry, rekor_keys: &RekorKeys) -> Result<(), TlogError> {
    let promise = entry.inclusion_promise.as_ref().ok_or_else(|| TlogError::Set("missing inclusion promise".into()))?;
    let Some(time) = entry.integrated_time else {
        // A SET always signs an integrated time; one without it cannot verify.
        return Err(TlogError::Set("inclusion promise without integrated time".into()));
    };
    verify_set_body(
        rekor_keys,
        SetBody::Bytes(entry.canonicalized_body.as_bytes()),
        time.as_second(),
        entry.log_index.as_i64(),
        entry.log_id.key_id.as_bytes(),
        promise.signed_entry_timestamp.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_payload_is_the_canonical_json() {
        let cases = [
            ("eyJhIjoxfQ==", 1_700_000_000, 42, "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d"),
            ("", 0, 0, ""),
            ("a+b/c=", -1, -(1 << 52), "00"),
            ("x", (1 << 53) - 1, 1 << 53, "ff"),
            ("x", i64::MAX, i64::MIN, "ff"),
            ("not \"plain\" \u{e9}", 5, 6, "ab"),
        ];
        for (body, time, index, id) in cases {
            let want = serde_json_canonicalizer::to_vec(&SetPayload { body, integrated_time: time, log_index: index, log_id: id }).unwrap();
            let got = set_payload(body, time, index, id).unwrap();
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want), "{body:?} {time} {index} {id:?}");
        }
    }

    /// A decoded body gives the payload of its base64 as the library writes
    /// it (`CanonicalizedBody::to_base64`).
    #[test]
    fn set_payload_of_bytes_is_that_of_the_base64() {
        use sigstore_verify::types::CanonicalizedBody;
        let bodies: [&[u8]; 5] = [b"", b"a", b"ab", b"{\"kind\":\"dsse\"}", &[0xff, 0xfe, 0, 1, 2, 3, 250]];
        for body in bodies {
            let text = CanonicalizedBody::new(body.to_vec()).to_base64();
            for (time, index, id) in [(1_700_000_000, 42, "c0d2"), (-1, 0, "00"), (i64::MAX, i64::MIN, "ff"), (5, 6, "not hex")] {
                let want = set_payload(&text, time, index, id).unwrap();
                let got = set_payload_of_bytes(body, time, index, id).unwrap();
                assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want), "{body:?} {time} {index} {id:?}");
            }
        }
    }
}
