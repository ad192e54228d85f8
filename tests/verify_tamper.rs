//! Every failure path, one tampered thing at a time, with the reason asserted.
//!
//! Each test starts from material the test stack signs validly (checked by
//! `baseline_is_valid`), changes exactly one thing, and asserts both the step
//! (`VerifyError` variant / category) and the one-line reason.

mod support;

use base64::Engine as _;
use pullgate::policy::{Authority, ExtensionClaim, IdentityPolicy, KeylessIdentity, StringMatcher};
use pullgate::verify::error::{BindingError, CertificateError, MaterialError, SignatureError, TimestampError, TlogError};
use pullgate::verify::{
    parse_bundle, verify_image, Digest, ExpectedSigner, LegacySignature, Mode, PublicKey, SignatureMaterial, TrustMaterial,
    VerifiedSignature, VerifyError,
};
use serde_json::Value;
use support::sigstore::keys::{KeyAlg, TestKey};
use support::sigstore::rekor::Rekor;
use support::sigstore::{image_digest, LegacyKind, RootOptions, SctMode, SignOptions, Stack, DEFAULT_ISSUER, DEFAULT_SAN};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Verify a v3 bundle for `image` in both modes; they must agree.
fn verify_v3(trust: &TrustMaterial, bundle: &Value, image: &Digest) -> Result<VerifiedSignature, VerifyError> {
    let parsed = parse_bundle(bundle.to_string().as_bytes())?;
    let fast = trust.verify_image_bundle(&parsed, image, ExpectedSigner::Certificate);
    // The reference path (library unmodified) must reach the same verdict.
    let reference = pullgate::verify::image::check_image_statement(&parsed, image).map_err(VerifyError::from).and_then(|()| {
        trust.verify_bundle_with_mode(&parsed, pullgate::verify::ArtifactRef::Digest(image), ExpectedSigner::Certificate, Mode::Reference)
    });
    assert_eq!(fast.is_ok(), reference.is_ok(), "fast {fast:?} vs reference {reference:?}");
    fast
}

fn verify_legacy(trust: &TrustMaterial, sig: &LegacySignature, image: &Digest) -> Result<VerifiedSignature, VerifyError> {
    let signer = if sig.certificate.is_some() { ExpectedSigner::Certificate } else { panic!("use verify_legacy_key") };
    trust.verify_legacy(sig, image, signer)
}

/// Assert the error is `matches` and its text contains `text`.
#[track_caller]
fn assert_reason(result: Result<VerifiedSignature, VerifyError>, matches: impl Fn(&VerifyError) -> bool, text: &str) {
    let err = result.expect_err("tampered material must not verify");
    let line = err.to_string();
    assert!(matches(&err), "unexpected error variant: {err:?}");
    assert!(line.contains(text), "reason {line:?} does not mention {text:?}");
    assert!(!line.contains('\n'), "reason is not one line: {line:?}");
}

fn flip_b64(v: &mut Value) {
    let mut bytes = B64.decode(v.as_str().expect("base64 string")).expect("base64");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    *v = B64.encode(bytes).into();
}

fn flip_last_b64(v: &mut Value) {
    let mut bytes = B64.decode(v.as_str().expect("base64 string")).expect("base64");
    let i = bytes.len() - 3;
    bytes[i] ^= 0x01;
    *v = B64.encode(bytes).into();
}

fn entry(bundle: &mut Value) -> &mut Value {
    &mut bundle["verificationMaterial"]["tlogEntries"][0]
}

struct Fixture {
    stack: Stack,
    trust: TrustMaterial,
    image: Digest,
}

fn fixture() -> Fixture {
    let stack = Stack::new();
    let trust = stack.trust();
    Fixture { stack, trust, image: image_digest(42) }
}

impl Fixture {
    fn v3(&mut self, f: impl FnOnce(&mut SignOptions)) -> Value {
        let mut opts = self.stack.options();
        f(&mut opts);
        self.stack.sign_image_v3(&self.image, &opts).bundle
    }
    fn legacy(&mut self, f: impl FnOnce(&mut SignOptions)) -> LegacySignature {
        let mut opts = self.stack.options();
        f(&mut opts);
        self.stack.sign_image_legacy(&self.image, &opts)
    }
}

#[test]
fn baseline_is_valid() {
    let mut fx = fixture();
    for tsa in [false, true] {
        let b = fx.v3(|o| o.tsa = tsa);
        verify_v3(&fx.trust, &b, &fx.image).expect("v3 baseline");
        let l = fx.legacy(|o| o.tsa = tsa);
        verify_legacy(&fx.trust, &l, &fx.image).expect("legacy baseline");
    }
}

// ---- signature ---------------------------------------------------------

#[test]
fn dsse_signature() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    flip_last_b64(&mut b["dsseEnvelope"]["signatures"][0]["sig"]);
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Signature(SignatureError::Invalid(_))),
        "invalid signature",
    );
}

#[test]
fn dsse_payload() {
    // Re-encode the statement with one more subject: signature no longer covers it.
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let mut statement: Value = serde_json::from_slice(&B64.decode(b["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap()).unwrap();
    statement["subject"].as_array_mut().unwrap().push(serde_json::json!({"digest": {"sha256": "00".repeat(32)}}));
    b["dsseEnvelope"]["payload"] = B64.encode(statement.to_string()).into();
    assert_reason(verify_v3(&fx.trust, &b, &fx.image), |e| matches!(e, VerifyError::Signature(_) | VerifyError::Tlog(_)), "");
}

#[test]
fn legacy_signature() {
    let mut fx = fixture();
    let mut l = fx.legacy(|_| {});
    let mut v = Value::from(l.signature.clone());
    flip_last_b64(&mut v);
    l.signature = v.as_str().unwrap().to_string();
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Signature(SignatureError::Invalid(_))),
        "invalid signature",
    );
}

#[test]
fn legacy_signature_not_base64() {
    let mut fx = fixture();
    let mut l = fx.legacy(|_| {});
    l.signature = "not base64!".into();
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Material(MaterialError::MalformedLegacy(_))),
        "not base64",
    );
}

// ---- certificate and chain -----------------------------------------------

#[test]
fn certificate_signature_bytes() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    flip_last_b64(&mut b["verificationMaterial"]["certificate"]["rawBytes"]);
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::Untrusted(_))),
        "untrusted certificate",
    );
}

#[test]
fn certificate_truncated() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let der = B64.decode(b["verificationMaterial"]["certificate"]["rawBytes"].as_str().unwrap()).unwrap();
    b["verificationMaterial"]["certificate"]["rawBytes"] = B64.encode(&der[..der.len() / 2]).into();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::Malformed(_))),
        "malformed certificate",
    );
}

#[test]
fn certificate_swapped_for_another_valid_leaf() {
    // A different, validly issued leaf: chain and SCT hold, the signature does not.
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let other = fx.v3(|_| {});
    b["verificationMaterial"]["certificate"] = other["verificationMaterial"]["certificate"].clone();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Signature(_) | VerifyError::Tlog(TlogError::EntryMismatch(_))),
        "",
    );
}

#[test]
fn untrusted_ca() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.untrusted_ca = true);
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::Untrusted(_))),
        "not issued by a trusted Fulcio CA",
    );
}

#[test]
fn untrusted_ca_with_forged_chain_annotation() {
    let mut fx = fixture();
    let l = fx.legacy(|o| o.untrusted_ca = true);
    assert!(l.chain.as_deref().unwrap().contains("BEGIN CERTIFICATE"));
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        // The forged self-signed "intermediate" is a root the trust root
        // does not hold: refused before any chain is built (step 4a).
        |e| matches!(e, VerifyError::Certificate(CertificateError::RootInChain(_))),
        "roots must come from the trusted root",
    );
}

#[test]
fn chain_annotation_garbage() {
    let mut fx = fixture();
    let mut l = fx.legacy(|_| {});
    l.chain = Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Material(MaterialError::MalformedLegacy(_)) | VerifyError::Certificate(_)),
        "",
    );
}

#[test]
fn expired_certificate() {
    let mut fx = fixture();
    let b = fx.v3(|o| {
        o.cert_not_before = Some(o.signing_time - 1200);
        o.cert_not_after = Some(o.signing_time - 600);
    });
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::Expired { .. })),
        "certificate not valid at signing time",
    );
}

#[test]
fn not_yet_valid_certificate() {
    let mut fx = fixture();
    let b = fx.v3(|o| {
        o.cert_not_before = Some(o.signing_time + 60);
        o.cert_not_after = Some(o.signing_time + 660);
    });
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::NotYetValid { .. })),
        "not before",
    );
}

#[test]
fn expired_certificate_legacy_rekord() {
    let mut fx = fixture();
    let l = fx.legacy(|o| {
        o.legacy_kind = LegacyKind::Rekord;
        o.sct = SctMode::Missing;
        o.cert_not_before = Some(o.signing_time - 1200);
        o.cert_not_after = Some(o.signing_time - 600);
    });
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::Expired { .. })),
        "certificate not valid at signing time",
    );
}

// ---- SCT --------------------------------------------------------------------

#[test]
fn sct_from_untrusted_log() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.sct = SctMode::UntrustedLog);
    assert_reason(verify_v3(&fx.trust, &b, &fx.image), |e| matches!(e, VerifyError::Certificate(CertificateError::Sct(_))), "SCT");
}

#[test]
fn sct_missing() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.sct = SctMode::Missing);
    assert_reason(verify_v3(&fx.trust, &b, &fx.image), |e| matches!(e, VerifyError::Certificate(CertificateError::Sct(_))), "SCT");
}

#[test]
fn sct_key_outside_validity_window() {
    let mut fx = fixture();
    let b = fx.v3(|_| {});
    let now = fx.stack.now;
    let trust = fx.stack.trust_with(&RootOptions { ct_window: Some((now - 100, None)), ..Default::default() });
    assert_reason(verify_v3(&trust, &b, &fx.image), |e| matches!(e, VerifyError::Certificate(CertificateError::Sct(_))), "SCT");
}

// ---- transparency log ---------------------------------------------------------

#[test]
fn log_entry_body() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let mut body: Value = serde_json::from_slice(&B64.decode(entry(&mut b)["canonicalizedBody"].as_str().unwrap()).unwrap()).unwrap();
    body["spec"]["payloadHash"]["value"] = "00".repeat(32).into();
    entry(&mut b)["canonicalizedBody"] = B64.encode(body.to_string()).into();
    // The SET covers the body: it is the first check to notice.
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::Set(_))),
        "invalid signed entry timestamp",
    );
}

#[test]
fn log_entry_of_another_signature() {
    // A genuine, fully proven entry, but for a different signature (CVE-2022-36056).
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let other = fx.v3(|_| {});
    *entry(&mut b) = other["verificationMaterial"]["tlogEntries"][0].clone();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::EntryMismatch(_))),
        "log entry does not match",
    );
}

#[test]
fn legacy_log_entry_of_another_payload() {
    let mut fx = fixture();
    let mut l = fx.legacy(|_| {});
    let other = fx.stack.sign_image_legacy(&image_digest(43), &fx.stack.options());
    l.rekor_bundle = other.rekor_bundle;
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::EntryMismatch(_))),
        "log entry does not match",
    );
}

#[test]
fn legacy_rekord_entry_of_another_payload() {
    let mut fx = fixture();
    let mut l = fx.legacy(|o| {
        o.legacy_kind = LegacyKind::Rekord;
        o.sct = SctMode::Missing;
    });
    let mut opts = fx.stack.options();
    opts.legacy_kind = LegacyKind::Rekord;
    let other = fx.stack.sign_image_legacy(&image_digest(43), &opts);
    l.rekor_bundle = other.rekor_bundle;
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::EntryMismatch(_))),
        "log entry does not match",
    );
}

#[test]
fn inclusion_proof_hash() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    flip_b64(&mut entry(&mut b)["inclusionProof"]["hashes"][0]);
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::InclusionProof(_))),
        "invalid inclusion proof",
    );
}

#[test]
fn inclusion_proof_index() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let index: u64 = entry(&mut b)["inclusionProof"]["logIndex"].as_str().unwrap().parse().unwrap();
    entry(&mut b)["inclusionProof"]["logIndex"] = (index - 1).to_string().into();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::InclusionProof(_))),
        "invalid inclusion proof",
    );
}

#[test]
fn inclusion_proof_missing() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.inclusion_proof = false);
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::NoProof(_))),
        "no transparency log proof",
    );
}

#[test]
fn no_log_entry_at_all() {
    let mut fx = fixture();
    let b = fx.v3(|o| {
        o.tlog = false;
        o.tsa = true;
    });
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::NoProof(_))),
        "no transparency log proof",
    );
    let mut l = fx.legacy(|_| {});
    l.rekor_bundle = None;
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::NoProof(_))),
        "no transparency log proof",
    );
}

#[test]
fn checkpoint_signature() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let envelope = entry(&mut b)["inclusionProof"]["checkpoint"]["envelope"].as_str().unwrap().to_string();
    let (body, sig_line) = envelope.split_once("\n\n").unwrap();
    let (prefix, sig_b64) = sig_line.trim_end().rsplit_once(' ').unwrap();
    let mut sig = B64.decode(sig_b64).unwrap();
    let last = sig.len() - 3;
    sig[last] ^= 1;
    entry(&mut b)["inclusionProof"]["checkpoint"]["envelope"] = format!("{body}\n\n{prefix} {}\n", B64.encode(sig)).into();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::CheckpointSigner(_))),
        "checkpoint not signed by the entry's log",
    );
}

#[test]
fn checkpoint_by_another_log() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let rogue = Rekor::new(TestKey::generate(KeyAlg::P256), 0);
    let size: u64 = entry(&mut b)["inclusionProof"]["treeSize"].as_str().unwrap().parse().unwrap();
    let root: [u8; 32] = B64.decode(entry(&mut b)["inclusionProof"]["rootHash"].as_str().unwrap()).unwrap().try_into().unwrap();
    entry(&mut b)["inclusionProof"]["checkpoint"]["envelope"] = rogue.checkpoint(size, &root).into();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::CheckpointSigner(_))),
        "checkpoint not signed by the entry's log",
    );
}

#[test]
fn checkpoint_root_differs_from_proof() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let size: u64 = entry(&mut b)["inclusionProof"]["treeSize"].as_str().unwrap().parse().unwrap();
    // A validly signed checkpoint, but for another tree.
    let checkpoint = fx.stack.rekor.checkpoint(size, &[7u8; 32]);
    entry(&mut b)["inclusionProof"]["checkpoint"]["envelope"] = checkpoint.into();
    assert_reason(verify_v3(&fx.trust, &b, &fx.image), |e| matches!(e, VerifyError::Tlog(TlogError::Checkpoint(_))), "invalid checkpoint");
}

#[test]
fn signed_entry_timestamp() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    flip_last_b64(&mut entry(&mut b)["inclusionPromise"]["signedEntryTimestamp"]);
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::Set(_))),
        "invalid signed entry timestamp",
    );
    let mut l = fx.legacy(|_| {});
    let mut set: Value = serde_json::from_str(l.rekor_bundle.as_ref().unwrap()).unwrap();
    flip_last_b64(&mut set["SignedEntryTimestamp"]);
    l.rekor_bundle = Some(set.to_string());
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::Set(_))),
        "invalid signed entry timestamp",
    );
}

#[test]
fn signed_entry_timestamp_rekord() {
    let mut fx = fixture();
    let mut l = fx.legacy(|o| {
        o.legacy_kind = LegacyKind::Rekord;
        o.sct = SctMode::Missing;
    });
    let mut set: Value = serde_json::from_str(l.rekor_bundle.as_ref().unwrap()).unwrap();
    flip_last_b64(&mut set["SignedEntryTimestamp"]);
    l.rekor_bundle = Some(set.to_string());
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::Set(_))),
        "invalid signed entry timestamp",
    );
}

#[test]
fn signed_entry_timestamp_removed() {
    // Without the SET (and without a TSA) there is no verified signing time.
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    entry(&mut b).as_object_mut().unwrap().remove("inclusionPromise");
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Timestamp(TimestampError::NoVerifiedTime(_))),
        "no verified signing time",
    );
}

#[test]
fn integrated_time() {
    let mut fx = fixture();
    let mut b = fx.v3(|_| {});
    let t: i64 = entry(&mut b)["integratedTime"].as_str().unwrap().parse().unwrap();
    entry(&mut b)["integratedTime"] = (t + 60).to_string().into();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::Set(_))),
        "invalid signed entry timestamp",
    );
}

#[test]
fn rekor_key_outside_validity_window() {
    let mut fx = fixture();
    let b = fx.v3(|_| {});
    let now = fx.stack.now;
    let trust = fx.stack.trust_with(&RootOptions { rekor_window: Some((now - 100, None)), ..Default::default() });
    assert_reason(
        verify_v3(&trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::Set(_))),
        "No log key valid at integrated time",
    );
    let l = fx.legacy(|o| {
        o.legacy_kind = LegacyKind::Rekord;
        o.sct = SctMode::Missing;
    });
    assert_reason(
        verify_legacy(&trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Tlog(TlogError::Set(_))),
        "not valid at integrated time",
    );
}

#[test]
fn ca_outside_validity_window() {
    let mut fx = fixture();
    let b = fx.v3(|_| {});
    let now = fx.stack.now;
    let trust = fx.stack.trust_with(&RootOptions { ca_window: Some((now - 3 * 86400, Some(now - 86400))), ..Default::default() });
    assert_reason(
        verify_v3(&trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::NoValidAuthority { .. })),
        "no trusted certificate authority",
    );
}

// ---- RFC 3161 timestamps ---------------------------------------------------------

#[test]
fn timestamp_token_bytes() {
    let mut fx = fixture();
    let mut b = fx.v3(|o| o.tsa = true);
    flip_last_b64(&mut b["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]["signedTimestamp"]);
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Timestamp(TimestampError::Invalid(_))),
        "invalid RFC 3161 timestamp",
    );
}

#[test]
fn timestamp_over_another_signature() {
    let mut fx = fixture();
    let mut b = fx.v3(|o| o.tsa = true);
    let other = fx.v3(|o| o.tsa = true);
    b["verificationMaterial"]["timestampVerificationData"] = other["verificationMaterial"]["timestampVerificationData"].clone();
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Timestamp(TimestampError::Invalid(_))),
        "hash mismatch",
    );
}

#[test]
fn timestamp_outside_certificate_validity() {
    let mut fx = fixture();
    let b = fx.v3(|o| {
        o.tsa = true;
        o.tsa_time = Some(o.signing_time + 3600);
    });
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Certificate(CertificateError::Expired { .. })),
        "certificate not valid at signing time",
    );
}

#[test]
fn timestamp_authority_outside_validity_window() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.tsa = true);
    let now = fx.stack.now;
    let trust = fx.stack.trust_with(&RootOptions { tsa_window: Some((now - 3 * 86400, Some(now - 86400))), ..Default::default() });
    assert_reason(
        verify_v3(&trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Timestamp(TimestampError::OutsideAuthorityValidity(_))),
        "outside its authority's validity window",
    );
}

#[test]
fn legacy_timestamp_annotation() {
    let mut fx = fixture();
    let mut l = fx.legacy(|o| o.tsa = true);
    let mut ts: Value = serde_json::from_str(l.rfc3161_timestamp.as_ref().unwrap()).unwrap();
    flip_last_b64(&mut ts["SignedRFC3161Timestamp"]);
    l.rfc3161_timestamp = Some(ts.to_string());
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Timestamp(TimestampError::Invalid(_))),
        "invalid RFC 3161 timestamp",
    );
}

// ---- image binding ----------------------------------------------------------------

#[test]
fn subject_digest() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.subject_hex = Some("ab".repeat(32)));
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Binding(BindingError::SubjectDigest { .. })),
        "subject digest mismatch",
    );
    // A valid signature for another image does not transfer.
    let b = fx.v3(|_| {});
    assert_reason(
        verify_v3(&fx.trust, &b, &image_digest(7)),
        |e| matches!(e, VerifyError::Binding(BindingError::SubjectDigest { .. })),
        "subject digest mismatch",
    );
}

#[test]
fn predicate_type() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.predicate_type = "https://slsa.dev/provenance/v1".into());
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Binding(BindingError::PredicateType { .. })),
        "predicate type is",
    );
}

#[test]
fn statement_type() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.statement_type = "https://in-toto.io/Statement/v0.1".into());
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Binding(BindingError::StatementType { .. })),
        "statement type is",
    );
}

#[test]
fn payload_type() {
    let mut fx = fixture();
    let b = fx.v3(|o| o.payload_type = "application/vnd.dev.cosign.simplesigning.v1+json".into());
    assert_reason(
        verify_v3(&fx.trust, &b, &fx.image),
        |e| matches!(e, VerifyError::Binding(BindingError::PayloadType { .. })),
        "DSSE payload type",
    );
}

#[test]
fn legacy_payload_changed() {
    let mut fx = fixture();
    let mut l = fx.legacy(|_| {});
    l.payload.push(b' ');
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Binding(BindingError::LayerDigest { .. })),
        "payload digest mismatch",
    );
}

#[test]
fn legacy_manifest_digest() {
    let mut fx = fixture();
    let l = fx.legacy(|_| {});
    assert_reason(
        verify_legacy(&fx.trust, &l, &image_digest(7)),
        |e| matches!(e, VerifyError::Binding(BindingError::ManifestDigest { .. })),
        "signed manifest digest is",
    );
}

#[test]
fn legacy_critical_type() {
    let mut fx = fixture();
    let l = fx.legacy(|o| o.critical_type = "cosign container image attestation".into());
    assert_reason(
        verify_legacy(&fx.trust, &l, &fx.image),
        |e| matches!(e, VerifyError::Binding(BindingError::CriticalType { .. })),
        "critical.type",
    );
}

// ---- identity policy ------------------------------------------------------------------

fn decide(fx: &mut Fixture, identity: KeylessIdentity) -> String {
    let b = fx.v3(|_| {});
    let policy = IdentityPolicy::any_of(vec![Authority::keyless("ci", vec![identity]).unwrap()]).unwrap();
    let decision = verify_image(
        &fx.trust,
        &fx.image,
        &[SignatureMaterial::Bundle { source: "bundle".into(), json: b.to_string().into_bytes() }],
        &policy,
    );
    assert!(!decision.allowed);
    let reason = decision.reason();
    assert!(!reason.contains('\n'));
    reason
}

#[test]
fn identity() {
    let mut fx = fixture();
    let want = "https://github.com/pullgate/demo/.github/workflows/release.yml@refs/heads/dev";
    let reason = decide(&mut fx, KeylessIdentity::exact(want, DEFAULT_ISSUER));
    assert_eq!(reason, format!("bundle: identity mismatch: got {DEFAULT_SAN}, want {want}"));
    let reason = decide(
        &mut fx,
        KeylessIdentity { subject: StringMatcher::regex("https://github.com/other/.*").unwrap(), issuer: None, claims: vec![] },
    );
    assert!(reason.contains("identity mismatch") && reason.contains("want regex https://github.com/other/.*"), "{reason}");
}

#[test]
fn issuer() {
    let mut fx = fixture();
    let reason = decide(&mut fx, KeylessIdentity::exact(DEFAULT_SAN, "https://accounts.google.com"));
    assert_eq!(reason, format!("bundle: issuer mismatch: got {DEFAULT_ISSUER}, want https://accounts.google.com"));
}

#[test]
fn extension_claims() {
    let mut fx = fixture();
    let reason = decide(
        &mut fx,
        KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)
            .with_claim(ExtensionClaim::new("source-repository-ref", "refs/tags/v1").unwrap()),
    );
    assert_eq!(
        reason,
        "bundle: certificate extension source-repository-ref (1.3.6.1.4.1.57264.1.14) mismatch: got refs/heads/main, want refs/tags/v1"
    );
    let reason = decide(
        &mut fx,
        KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)
            .with_claim(ExtensionClaim::new("1.3.6.1.4.1.57264.1.23", "production").unwrap()),
    );
    assert!(reason.contains("deployment-environment") && reason.contains("got none"), "{reason}");
}

#[test]
fn issuer_v1_only_is_still_read() {
    // Certificates of 2022 carried only the `.1.1` issuer; `.1.8` took over later.
    let mut fx = fixture();
    let mut opts = fx.stack.options();
    opts.identity.issuer = None;
    opts.identity.claims.push((1, DEFAULT_ISSUER.into()));
    let b = fx.stack.sign_image_v3(&fx.image, &opts).bundle;
    let v = verify_v3(&fx.trust, &b, &fx.image).unwrap();
    let pullgate::verify::Signer::Certificate(id) = v.signer else { panic!() };
    assert_eq!(id.issuer.as_deref(), Some(DEFAULT_ISSUER));
}

// ---- keys -----------------------------------------------------------------------------

#[test]
fn key_based_wrong_key_and_kind_confusion() {
    let mut fx = fixture();
    let key = TestKey::generate(KeyAlg::P256);
    let other = PublicKey::from_pem(&TestKey::generate(KeyAlg::P256).public_pem()).unwrap();
    let opts = fx.stack.options();
    let b = fx.stack.sign_image_v3_with_key(&fx.image, &opts, &key);
    let parsed = parse_bundle(b.json().as_bytes()).unwrap();
    let err = fx.trust.verify_image_bundle(&parsed, &fx.image, ExpectedSigner::Key(&other)).unwrap_err();
    assert!(matches!(err, VerifyError::Signature(_) | VerifyError::Tlog(TlogError::EntryMismatch(_))), "{err:?}");
    // A key-signed bundle cannot satisfy a keyless identity...
    let err = fx.trust.verify_image_bundle(&parsed, &fx.image, ExpectedSigner::Certificate).unwrap_err();
    assert_eq!(err.to_string(), "signed with a public key, not a Fulcio certificate");
    // ...and a keyless one cannot satisfy a key.
    let keyless = parse_bundle(fx.v3(|_| {}).to_string().as_bytes()).unwrap();
    let err = fx.trust.verify_image_bundle(&keyless, &fx.image, ExpectedSigner::Key(&other)).unwrap_err();
    assert_eq!(err.to_string(), "signed with a Fulcio certificate, not a public key");
    // Legacy, wrong key.
    let l = fx.stack.sign_image_legacy_with_key(&fx.image, &opts, &key);
    let err = fx.trust.verify_legacy(&l, &fx.image, ExpectedSigner::Key(&other)).unwrap_err();
    assert!(matches!(err, VerifyError::Signature(_) | VerifyError::Tlog(TlogError::EntryMismatch(_))), "{err:?}");
}

// ---- malformed input never panics -------------------------------------------------------

#[test]
fn malformed_inputs_are_reasons_not_panics() {
    let fx = fixture();
    let inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        vec![0xff, 0xfe, 0x00],
        br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#.to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        vec![b' '; pullgate::verify::bundle::MAX_BUNDLE_BYTES + 1],
    ];
    for input in inputs {
        let candidates = [SignatureMaterial::Bundle { source: "x".into(), json: input }];
        let policy =
            IdentityPolicy::any_of(vec![Authority::keyless("ci", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)]).unwrap()])
                .unwrap();
        let decision = verify_image(&fx.trust, &fx.image, &candidates, &policy);
        assert!(!decision.allowed);
        assert!(!decision.reason().contains('\n'));
    }
    for garbage in ["", "{}", "not json", r#"{"SignedEntryTimestamp":"!!","Payload":{}}"#] {
        assert!(pullgate::verify::RekorSetBundle::parse(garbage).is_err());
    }
    assert!(LegacySignature::from_layer_json("{}", vec![]).is_err());
    assert!(TrustMaterial::from_json("{}").is_err());
    assert!(PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
}
