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

use serde::Serialize;
use sigstore_verify::crypto::Keyring;
use sigstore_verify::types::bundle::InclusionProof;
use sigstore_verify::types::{KindVersion, Sha256Hash, SignatureBytes, TransparencyLogEntry};

use super::error::{one_line, TlogError};

/// Mirror of the library's steps 4 and 5 for one entry: Merkle inclusion
/// proof, signed checkpoint, and the SET when the library's step 0 did not
/// already verify it.
pub(crate) fn verify_inclusion(
    entry: &TransparencyLogEntry,
    rekor_keys: &Keyring,
) -> Result<(), TlogError> {
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
pub(crate) fn verify_log_identity(
    entry: &TransparencyLogEntry,
    rekor_keys: &Keyring,
) -> Result<(), TlogError> {
    let log_id = entry.log_id.key_id.as_bytes();
    let key_id = Sha256Hash::try_from(log_id)
        .map_err(|e| TlogError::MalformedEntry(format!("invalid log ID: {e}")))?;
    if rekor_keys.key(&key_id).is_none() {
        return Err(TlogError::UnknownLog(key_id.to_hex()));
    }
    let Some(proof) = &entry.inclusion_proof else {
        return Ok(());
    };
    let Some(checkpoint) = proof.checkpoint.checkpoint() else {
        return Err(TlogError::NoProof(
            "inclusion proof without a checkpoint".into(),
        ));
    };
    // (6a) One index, one tree size, one root.
    let mismatch = |field: &'static str, proof: String, signed: String| {
        Err(TlogError::ProofFieldMismatch {
            field,
            proof,
            signed,
        })
    };
    // Rekor v1 numbers entries globally but proves them in the current
    // shard's tree, so there the two indices differ legitimately and the
    // proof's is authenticated by the Merkle path alone.
    if is_rekor_v2(entry) && proof.log_index.get() != entry.log_index.get() {
        return mismatch(
            "logIndex",
            proof.log_index.get().to_string(),
            format!("entry logIndex {}", entry.log_index.get()),
        );
    }
    if proof.tree_size != checkpoint.tree_size() {
        return mismatch(
            "treeSize",
            proof.tree_size.to_string(),
            format!("checkpoint tree size {}", checkpoint.tree_size()),
        );
    }
    if proof.root_hash != *checkpoint.root_hash() {
        return mismatch(
            "rootHash",
            proof.root_hash.to_hex(),
            format!("checkpoint root {}", checkpoint.root_hash().to_hex()),
        );
    }
    // (6b) Signed by the entry's own log, under the log's own name, in a
    //      well-formed signed note: every line, the last signature line
    //      included, ends with a newline (as the Go note parser requires).
    if !proof.checkpoint.envelope().ends_with('\n') {
        return Err(TlogError::Checkpoint(
            "signed note does not end with a newline".into(),
        ));
    }
    verify_checkpoint_signer(checkpoint, &key_id, rekor_keys)
}

/// (6b) The checkpoint is signed by the log with ID `key_id`, on a signature
/// line that names the checkpoint's origin log. Key hints are four bytes and
/// may collide: every line with the right name and hint is tried.
fn verify_checkpoint_signer(
    checkpoint: &sigstore_verify::types::Checkpoint,
    key_id: &Sha256Hash,
    rekor_keys: &Keyring,
) -> Result<(), TlogError> {
    let name = log_name(checkpoint.origin());
    // Same validity rule as the library's checkpoint check: a key whose
    // window has not started cannot have signed; an expired log's
    // checkpoints stay verifiable for historical entries.
    let key = rekor_keys
        .key_started_by(key_id, jiff::Timestamp::now())
        .ok_or_else(|| {
            TlogError::CheckpointSigner(format!(
                "log {} key is not yet valid",
                key_id.to_hex()
            ))
        })?;
    let hint = &key_id.as_bytes()[..4];
    let mut named = false;
    for signature in checkpoint.signatures() {
        if signature.name != name {
            continue;
        }
        named = true;
        if signature.key_id.as_bytes()[..] == hint[..]
            && key.verify(checkpoint.signed_data(), &signature.signature).is_ok()
        {
            return Ok(());
        }
    }
    Err(TlogError::CheckpointSigner(if named {
        format!(
            "no valid signature by the entry's log {} under its name {name:?}",
            key_id.to_hex()
        )
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
    matches!(
        entry.kind_version,
        KindVersion::HashedRekordV001 | KindVersion::DsseV001 | KindVersion::IntotoV002
    )
}

fn is_rekor_v2(entry: &TransparencyLogEntry) -> bool {
    entry.kind_version == KindVersion::HashedRekordV002
}

fn verify_merkle_inclusion(
    entry: &TransparencyLogEntry,
    proof: &InclusionProof,
) -> Result<(), TlogError> {
    // Rekor v2 takes index, size and root from the signed checkpoint; v1
    // duplicates them in the proof and the checkpoint must agree (below).
    let (leaf_index, tree_size, root_hash) = if is_rekor_v2(entry) {
        let checkpoint = proof.checkpoint.checkpoint().ok_or_else(|| {
            TlogError::Checkpoint("Rekor v2 inclusion proof has no checkpoint".into())
        })?;
        (
            entry.log_index.get(),
            checkpoint.tree_size(),
            *checkpoint.root_hash(),
        )
    } else {
        (proof.log_index.get(), proof.tree_size, proof.root_hash)
    };
    let leaf_hash = sigstore_merkle::hash_leaf(entry.canonicalized_body.as_bytes());
    sigstore_merkle::verify_inclusion_proof(
        &leaf_hash,
        leaf_index,
        tree_size,
        &proof.hashes,
        &root_hash,
    )
    .map_err(|e| TlogError::InclusionProof(one_line(&e.to_string())))
}

fn verify_checkpoint(entry: &TransparencyLogEntry, proof: &InclusionProof) -> Result<(), TlogError> {
    let checkpoint = proof
        .checkpoint
        .checkpoint()
        .ok_or_else(|| TlogError::Checkpoint("inclusion proof has no checkpoint".into()))?;
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
    rekor_keys: &Keyring,
    body_base64: &str,
    integrated_time: i64,
    log_index: i64,
    log_id: &[u8],
    set: &[u8],
) -> Result<(), TlogError> {
    let key_id = Sha256Hash::try_from(log_id)
        .map_err(|e| TlogError::MalformedEntry(format!("invalid log ID: {e}")))?;
    let time = jiff::Timestamp::from_second(integrated_time)
        .map_err(|e| TlogError::IntegratedTime(one_line(&e.to_string())))?;
    // The log key must have been valid when the entry was integrated.
    let key = rekor_keys
        .key_at(&key_id, time)
        .ok_or_else(|| unknown_or_expired(rekor_keys, &key_id, time))?;
    let log_id_hex = hex::encode(log_id);
    let payload = SetPayload {
        body: body_base64,
        integrated_time,
        log_index,
        log_id: &log_id_hex,
    };
    let canonical = serde_json_canonicalizer::to_vec(&payload)
        .map_err(|e| TlogError::Set(one_line(&e.to_string())))?;
    key.verify(&canonical, &SignatureBytes::from_bytes(set))
        .map_err(|e| TlogError::Set(one_line(&e.to_string())))
}

fn unknown_or_expired(
    rekor_keys: &Keyring,
    key_id: &Sha256Hash,
    time: jiff::Timestamp,
) -> TlogError {
    if rekor_keys.key(key_id).is_some() {
        TlogError::Set(format!(
            "log {} key was not valid at integrated time {time}",
            key_id.to_hex()
        ))
    } else {
        TlogError::UnknownLog(key_id.to_hex())
    }
}

/// Verify the SET of a bundle entry.
fn verify_entry_set(entry: &TransparencyLogEntry, rekor_keys: &Keyring) -> Result<(), TlogError> {
    let promise = entry
        .inclusion_promise
        .as_ref()
        .ok_or_else(|| TlogError::Set("missing inclusion promise".into()))?;
    let Some(time) = entry.integrated_time else {
        // A SET always signs an integrated time; one without it cannot verify.
        return Err(TlogError::Set(
            "inclusion promise without integrated time".into(),
        ));
    };
    verify_set_parts(
        rekor_keys,
        &entry.canonicalized_body.to_base64(),
        time.as_second(),
        entry.log_index.as_i64(),
        entry.log_id.key_id.as_bytes(),
        promise.signed_entry_timestamp.as_bytes(),
    )
}
