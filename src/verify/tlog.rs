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
        verify_checkpoint(entry, proof, rekor_keys)?;
    }
    if entry.inclusion_promise.is_some() && !set_verified_by_library(entry) {
        verify_entry_set(entry, rekor_keys)?;
    }
    Ok(())
}

/// Every entry must name a log of the trusted root, and a Rekor v2
/// checkpoint must carry a valid signature by *that* log's key.
///
/// The library authenticates a v2 checkpoint with any trusted log key whose
/// hint matches and never looks at the entry's log ID. We also check it in
/// both modes (as sigstore-go does), so an entry cannot claim one log while
/// being proven by another one with a different validity window.
pub(crate) fn verify_log_identity(
    entry: &TransparencyLogEntry,
    rekor_keys: &Keyring,
) -> Result<(), TlogError> {
    let log_id = entry.log_id.key_id.as_bytes();
    let key_id = Sha256Hash::try_from(log_id)
        .map_err(|e| TlogError::MalformedEntry(format!("invalid log ID: {e}")))?;
    let key = rekor_keys
        .key(&key_id)
        .ok_or_else(|| TlogError::UnknownLog(key_id.to_hex()))?;
    if is_rekor_v2(entry) {
        let Some(checkpoint) = entry
            .inclusion_proof
            .as_ref()
            .and_then(|p| p.checkpoint.checkpoint())
        else {
            return Err(TlogError::NoProof(
                "Rekor v2 entry without a checkpoint".into(),
            ));
        };
        let signed = checkpoint
            .signatures()
            .iter()
            .filter(|s| s.key_id.as_bytes()[..] == log_id[..4])
            .any(|s| key.verify(checkpoint.signed_data(), &s.signature).is_ok());
        if !signed {
            return Err(TlogError::Checkpoint(format!(
                "not signed by the entry's log {}",
                key_id.to_hex()
            )));
        }
    }
    Ok(())
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

fn verify_checkpoint(
    entry: &TransparencyLogEntry,
    proof: &InclusionProof,
    rekor_keys: &Keyring,
) -> Result<(), TlogError> {
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
    // Checkpoints may carry witness cosignatures and four-byte key hints can
    // collide: try every trusted key whose hint matches every signature, and
    // accept the first that verifies (same rule as the library).
    let message = checkpoint.signed_data();
    let now = jiff::Timestamp::now();
    let mut hint_matched = false;
    for signature in checkpoint.signatures() {
        for key in rekor_keys.keys_by_hint(&signature.key_id, now) {
            hint_matched = true;
            if key.verify(message, &signature.signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(TlogError::Checkpoint(if hint_matched {
        "no valid signature by a trusted log key".into()
    } else {
        "not signed by any trusted log key".into()
    }))
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
