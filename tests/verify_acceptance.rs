//! Issue 11: bundles Sigstore's reference clients accept are accepted, and
//! the consistency checks of the numbered verification steps refuse what
//! they must. All material comes from the test Sigstore stack.

mod support;

use base64::Engine as _;
use pullgate::policy::{KeylessIdentity, StringMatcher};
use pullgate::verify::error::{CertificateError, TimestampError, TlogError};
use pullgate::verify::{parse_bundle, ArtifactRef, ExpectedSigner, Mode, Signer, TrustMaterial, VerifiedSignature, VerifyError};
use serde_json::{json, Value};
use support::sigstore::certs::{self, CertSpec, San, EKU_TIME_STAMPING};
use support::sigstore::keys::{KeyAlg, TestKey};
use support::sigstore::tsa::{self, TokenForm};
use support::sigstore::{image_digest, Stack};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Verify `bundle` for `image` in both modes; they must agree.
fn verify(trust: &TrustMaterial, bundle: &Value, image: &pullgate::verify::Digest) -> Result<VerifiedSignature, VerifyError> {
    let parsed = parse_bundle(bundle.to_string().as_bytes()).map_err(VerifyError::from)?;
    let fast = trust.verify_bundle_with_mode(&parsed, ArtifactRef::Digest(image), ExpectedSigner::Certificate, Mode::Fast);
    let reference = trust.verify_bundle_with_mode(&parsed, ArtifactRef::Digest(image), ExpectedSigner::Certificate, Mode::Reference);
    assert_eq!(fast.is_ok(), reference.is_ok(), "fast {fast:?} and reference {reference:?} disagree");
    fast
}

fn signature_of(bundle: &Value) -> Vec<u8> {
    B64.decode(bundle["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap()).unwrap()
}

fn set_tokens(bundle: &mut Value, tokens: &[Vec<u8>]) {
    let list: Vec<Value> = tokens.iter().map(|t| json!({"signedTimestamp": B64.encode(t)})).collect();
    bundle["verificationMaterial"]["timestampVerificationData"] = json!({"rfc3161Timestamps": list});
}

/// A TSA (leaf under its own root) that no trust root lists.
fn foreign_tsa(now: i64) -> (TestKey, support::sigstore::certs::IssuedCert) {
    let root_key = TestKey::generate(KeyAlg::P384);
    let dn = "CN=unlisted tsa root,O=elsewhere.test";
    let leaf_key = TestKey::generate(KeyAlg::P256);
    let mut spec = CertSpec::ca("CN=unlisted tsa,O=elsewhere.test", now - 3600, now + 3600);
    spec.ca = false;
    spec.serial = 3;
    spec.eku = vec![EKU_TIME_STAMPING];
    spec.eku_critical = true;
    let leaf = certs::issue(&spec, &leaf_key.spki_der(), dn, &root_key);
    (leaf_key, leaf)
}

#[test]
fn other_name_san_is_the_identity() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(1);
    let mut opts = stack.options();
    opts.identity.san = San::OtherName("user!example.com".into());
    let signed = stack.sign_image_v3(&image, &opts);
    let verified = verify(&trust, &signed.bundle, &image).expect("otherName leaf verifies");
    let Signer::Certificate(identity) = &verified.signer else {
        panic!("keyless signer expected");
    };
    assert_eq!(identity.subject.as_deref(), Some("user!example.com"));
    let exact = KeylessIdentity::exact("user!example.com", support::sigstore::DEFAULT_ISSUER);
    exact.check(identity).expect("exact match");
    let mut regex = exact.clone();
    regex.subject = StringMatcher::regex(r"[a-z]+!example\.com").unwrap();
    regex.check(identity).expect("regex match");
    let other = KeylessIdentity::exact("user!example.org", support::sigstore::DEFAULT_ISSUER);
    assert!(other.check(identity).is_err());
}

#[test]
fn private_root_without_ca_common_name() {
    let mut stack = Stack::new();
    let mut root: Value = serde_json::from_str(&stack.trusted_root_json()).unwrap();
    for list in ["certificateAuthorities", "timestampAuthorities"] {
        root[list][0]["subject"].as_object_mut().unwrap().remove("commonName");
    }
    let trust = TrustMaterial::from_json(&root.to_string()).expect("root without CN loads");
    let image = image_digest(2);
    let mut opts = stack.options();
    opts.tsa = true;
    let signed = stack.sign_image_v3(&image, &opts);
    verify(&trust, &signed.bundle, &image).expect("verifies against it");
}

#[test]
fn unlisted_tsa_tokens_are_skipped_next_to_a_set() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(3);
    let opts = stack.options();
    let mut signed = stack.sign_image_v3(&image, &opts);
    let signature = signature_of(&signed.bundle);
    let (key, cert) = foreign_tsa(stack.now);
    let tokens: Vec<Vec<u8>> = (0..2).map(|i| tsa::timestamp(&signature, stack.now - 200 + i, &cert, &key, 9 + i as u64)).collect();
    set_tokens(&mut signed.bundle, &tokens);
    let verified = verify(&trust, &signed.bundle, &image).expect("SET alone dates it");
    assert_eq!(verified.skipped_timestamps.len(), 2, "{verified:?}");
    assert_eq!(verified.signing_times.len(), 1, "only the SET time counts");
    let shown = serde_json::to_string(&verified).unwrap();
    assert!(shown.contains("skipped_timestamps"), "{shown}");

    // Without the SET the skipped tokens leave no verified time: refused.
    signed.bundle["verificationMaterial"]["tlogEntries"][0].as_object_mut().unwrap().remove("inclusionPromise");
    let err = verify(&trust, &signed.bundle, &image).unwrap_err();
    assert!(matches!(err, VerifyError::Timestamp(TimestampError::NoVerifiedTime(_))), "{err}");
}

#[test]
fn every_signer_identifier_form_verifies() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(4);
    for by_key_identifier in [false, true] {
        for embed_certificate in [false, true] {
            for with_set in [true, false] {
                let form = TokenForm { by_key_identifier, embed_certificate };
                let opts = stack.options();
                let mut signed = stack.sign_image_v3(&image, &opts);
                let signature = signature_of(&signed.bundle);
                let time = stack.now - 250;
                let token = tsa::timestamp_with(&signature, time, &stack.tsa_leaf, &stack.tsa_leaf_key, 77, form);
                set_tokens(&mut signed.bundle, &[token]);
                if !with_set {
                    signed.bundle["verificationMaterial"]["tlogEntries"][0].as_object_mut().unwrap().remove("inclusionPromise");
                }
                let verified = verify(&trust, &signed.bundle, &image).unwrap_or_else(|e| panic!("{form:?} set={with_set}: {e}"));
                let want = support::sigstore::rfc3339(time);
                assert!(verified.signing_times.contains(&want), "{form:?}: {:?}", verified.signing_times);
                assert!(verified.skipped_timestamps.is_empty());
            }
        }
    }
}

#[test]
fn too_many_and_duplicate_tokens_are_refused() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(5);
    let opts = stack.options();
    let mut signed = stack.sign_image_v3(&image, &opts);
    let signature = signature_of(&signed.bundle);
    let tokens: Vec<Vec<u8>> = (0..33).map(|i| stack.timestamp(&signature, stack.now - 250 + i)).collect();
    set_tokens(&mut signed.bundle, &tokens[..32]);
    verify(&trust, &signed.bundle, &image).expect("32 distinct tokens are fine");
    set_tokens(&mut signed.bundle, &tokens);
    let err = verify(&trust, &signed.bundle, &image).unwrap_err();
    assert_eq!(err, VerifyError::Timestamp(TimestampError::TooMany(33)));
    set_tokens(&mut signed.bundle, &[tokens[0].clone(), tokens[1].clone(), tokens[0].clone()]);
    let err = verify(&trust, &signed.bundle, &image).unwrap_err();
    assert_eq!(err, VerifyError::Timestamp(TimestampError::Duplicate(0, 2)));
}

/// The stack's bundle rewritten as v0.1/v0.2: a certificate chain.
fn as_chain_bundle(stack: &Stack, bundle: &mut Value, version: &str, extra: &[&[u8]]) {
    let leaf = bundle["verificationMaterial"]["certificate"]["rawBytes"].clone();
    let material = bundle["verificationMaterial"].as_object_mut().unwrap();
    material.remove("certificate");
    let mut certificates = vec![json!({"rawBytes": leaf})];
    for der in extra {
        certificates.push(json!({"rawBytes": B64.encode(der)}));
    }
    material.insert("x509CertificateChain".into(), json!({"certificates": certificates}));
    bundle["mediaType"] = format!("application/vnd.dev.sigstore.bundle+json;version={version}").into();
    let _ = stack;
}

#[test]
fn inclusion_proof_required_from_v0_2_on() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(6);
    let opts = stack.options();
    let signed = stack.sign_image_v3(&image, &opts);
    for (version, accepted) in [("0.1", true), ("0.2", false)] {
        let mut bundle = signed.bundle.clone();
        let intermediate = stack.fulcio_intermediate.der.clone();
        as_chain_bundle(&stack, &mut bundle, version, &[&intermediate]);
        verify(&trust, &bundle, &image).expect("with its proof");
        bundle["verificationMaterial"]["tlogEntries"][0].as_object_mut().unwrap().remove("inclusionProof");
        let result = verify(&trust, &bundle, &image);
        assert_eq!(result.is_ok(), accepted, "v{version}: {result:?}");
        if !accepted {
            assert!(matches!(result, Err(VerifyError::Tlog(TlogError::NoProof(_)))), "{result:?}");
        }
    }
}

#[test]
fn carried_chain_certificates_must_parse_and_not_be_roots() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(7);
    let opts = stack.options();
    let signed = stack.sign_image_v3(&image, &opts);
    let intermediate = stack.fulcio_intermediate.der.clone();
    let root = stack.fulcio_root.der.clone();

    // The trust root's own root, repeated (as npm provenance bundles do): fine.
    let mut bundle = signed.bundle.clone();
    as_chain_bundle(&stack, &mut bundle, "0.1", &[&intermediate, &root]);
    verify(&trust, &bundle, &image).expect("the trusted root repeated");

    // Any other self-signed certificate: refused.
    let rogue = stack.rogue_intermediate.der.clone();
    let mut bundle = signed.bundle.clone();
    as_chain_bundle(&stack, &mut bundle, "0.1", &[&intermediate, &rogue]);
    let err = verify(&trust, &bundle, &image).unwrap_err();
    assert_eq!(err, VerifyError::Certificate(CertificateError::RootInChain(2)));

    let mut garbage = intermediate.clone();
    garbage[1] ^= 0x40; // the outer length: no longer DER
    let mut bundle = signed.bundle.clone();
    as_chain_bundle(&stack, &mut bundle, "0.1", &[&garbage]);
    let err = verify(&trust, &bundle, &image).unwrap_err();
    assert!(matches!(err, VerifyError::Certificate(CertificateError::ChainCertificate { index: 1, .. })), "{err}");
}

#[test]
fn checkpoint_signer_name_and_tree_size_are_checked() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(8);
    let opts = stack.options();
    let signed = stack.sign_image_v3(&image, &opts);
    let proof = "/verificationMaterial/tlogEntries/0/inclusionProof";

    // Signature line under another name: same key, same bytes.
    let mut bundle = signed.bundle.clone();
    let envelope = bundle.pointer(&format!("{proof}/checkpoint/envelope")).unwrap();
    let renamed = envelope.as_str().unwrap().replace("\u{2014} rekor.pullgate.test ", "\u{2014} witness.example ");
    *bundle.pointer_mut(&format!("{proof}/checkpoint/envelope")).unwrap() = renamed.into();
    let err = verify(&trust, &bundle, &image).unwrap_err();
    assert!(matches!(err, VerifyError::Tlog(TlogError::CheckpointSigner(_))), "{err}");

    // A witness cosignature next to the log's own: not read, accepted.
    let mut bundle = signed.bundle.clone();
    let witness = TestKey::generate(KeyAlg::P256);
    let text = bundle.pointer(&format!("{proof}/checkpoint/envelope")).unwrap().as_str().unwrap().to_string();
    let body = text.split("\n\n").next().unwrap().to_string() + "\n";
    let mut line = witness.key_id()[..4].to_vec();
    line.extend(witness.sign(body.as_bytes()));
    let cosigned = format!("{text}\u{2014} witness.example {}\n", B64.encode(line));
    *bundle.pointer_mut(&format!("{proof}/checkpoint/envelope")).unwrap() = cosigned.into();
    verify(&trust, &bundle, &image).expect("witness cosignature is ignored");

    // Tree size: one more than the checkpoint signs.
    let mut bundle = signed.bundle.clone();
    let size: u64 = bundle.pointer(&format!("{proof}/treeSize")).unwrap().as_str().unwrap().parse().unwrap();
    *bundle.pointer_mut(&format!("{proof}/treeSize")).unwrap() = (size + 1).to_string().into();
    assert!(verify(&trust, &bundle, &image).is_err());

    // Index in the proof differs from the entry's.
    let mut bundle = signed.bundle.clone();
    let index: u64 = bundle.pointer(&format!("{proof}/logIndex")).unwrap().as_str().unwrap().parse().unwrap();
    *bundle.pointer_mut(&format!("{proof}/logIndex")).unwrap() = (index + 1).to_string().into();
    assert!(verify(&trust, &bundle, &image).is_err());
}
