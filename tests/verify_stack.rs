//! The test Sigstore stack produces real material: it verifies with the
//! library's own verifier directly, with pullgate's engine, and through the
//! image decision, for every format and key type.

mod support;

use pullgate::policy::{Authority, ExtensionClaim, IdentityPolicy, KeylessIdentity, StringMatcher};
use pullgate::verify::{parse_bundle, verify_image, ExpectedSigner, Mode, PublicKey, SignatureMaterial, Signer};
use support::sigstore::keys::{KeyAlg, TestKey};
use support::sigstore::{image_digest, LegacyKind, Stack, DEFAULT_ISSUER, DEFAULT_SAN};

fn keyless_policy() -> IdentityPolicy {
    IdentityPolicy::any_of(vec![Authority::keyless("release", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)]).unwrap()]).unwrap()
}

#[test]
fn merkle_proofs_match_the_library() {
    support::sigstore::rekor::check_proofs_against_library();
}

#[test]
fn v3_bundle_verifies_with_the_library_directly() {
    let mut stack = Stack::new();
    let image = image_digest(1);
    for tsa in [false, true] {
        let mut opts = stack.options();
        opts.tsa = tsa;
        let signed = stack.sign_image_v3(&image, &opts);
        let bundle = sigstore_verify::types::Bundle::from_json(&signed.json()).expect("bundle parses");
        let root = sigstore_verify::trust_root::TrustedRoot::from_json(&stack.trusted_root_json()).unwrap();
        let verifier = sigstore_verify::Verifier::new(&root).unwrap();
        let policy = sigstore_verify::VerificationPolicy::new(DEFAULT_SAN, DEFAULT_ISSUER);
        let digest = sigstore_verify::types::Sha256Hash::try_from(image.bytes().as_slice()).unwrap();
        let result = verifier.verify(digest, &bundle, &policy).expect("library verifies stack bundle");
        assert!(result.certificate_verified() && result.sct_verified() && result.tlog_verified());
        assert_eq!(result.verified_timestamps().len(), if tsa { 2 } else { 1 });
    }
}

#[test]
fn legacy_pieces_verify_with_the_library_directly() {
    // Rebuild, by hand, the v0.1 bundle a legacy `.sig` layer amounts to and
    // hand it to the library: the stack's certificate chain, SCT, SET and
    // hashedrekord body are real Sigstore material.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut stack = Stack::new();
    let image = image_digest(2);
    let opts = stack.options();
    let sig = stack.sign_image_legacy(&image, &opts);
    let set: serde_json::Value = serde_json::from_str(sig.rekor_bundle.as_ref().unwrap()).unwrap();
    let leaf = sigstore_verify::types::DerCertificate::from_pem(sig.certificate.as_ref().unwrap()).unwrap();
    let bundle = serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "verificationMaterial": {
            "x509CertificateChain": {"certificates": [
                {"rawBytes": b64.encode(leaf.as_bytes())},
                {"rawBytes": b64.encode(&stack.fulcio_intermediate.der)},
            ]},
            "tlogEntries": [{
                "logIndex": set["Payload"]["logIndex"].to_string(),
                "logId": {"keyId": b64.encode(hex::decode(set["Payload"]["logID"].as_str().unwrap()).unwrap())},
                "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                "integratedTime": set["Payload"]["integratedTime"].to_string(),
                "inclusionPromise": {"signedEntryTimestamp": set["SignedEntryTimestamp"]},
                "canonicalizedBody": set["Payload"]["body"],
            }],
        },
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64.encode(sig.layer_digest.as_ref().unwrap().bytes())},
            "signature": sig.signature,
        },
    });
    let bundle = sigstore_verify::types::Bundle::from_json(&bundle.to_string()).unwrap();
    let root = sigstore_verify::trust_root::TrustedRoot::from_json(&stack.trusted_root_json()).unwrap();
    let policy = sigstore_verify::VerificationPolicy::new(DEFAULT_SAN, DEFAULT_ISSUER);
    sigstore_verify::verify(sig.payload.as_slice(), &bundle, &policy, &root).expect("library verifies legacy pieces");
}

#[test]
fn v3_keyless_verifies_in_both_modes_and_reports_claims() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(3);
    for tsa in [false, true] {
        let mut opts = stack.options();
        opts.tsa = tsa;
        let signed = stack.sign_image_v3(&image, &opts);
        let bundle = parse_bundle(signed.json().as_bytes()).unwrap();
        for mode in [Mode::Fast, Mode::Reference] {
            pullgate::verify::image::check_image_statement(&bundle, &image).unwrap();
            let v = trust
                .verify_bundle_with_mode(&bundle, pullgate::verify::ArtifactRef::Digest(&image), ExpectedSigner::Certificate, mode)
                .unwrap();
            let Signer::Certificate(id) = &v.signer else { panic!("certificate signer") };
            assert_eq!(id.subject.as_deref(), Some(DEFAULT_SAN));
            assert_eq!(id.issuer.as_deref(), Some(DEFAULT_ISSUER));
            assert_eq!(id.extensions.get("1.3.6.1.4.1.57264.1.14").map(String::as_str), Some("refs/heads/main"));
            assert_eq!(id.extensions.get("1.3.6.1.4.1.57264.1.5").map(String::as_str), Some("pullgate/demo"));
        }
    }
}

#[test]
fn image_decision_accepts_v3_and_legacy_keyless() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(4);
    let opts = stack.options();
    let v3 = stack.sign_image_v3(&image, &opts);
    let mut legacy_opts = stack.options();
    legacy_opts.tsa = true;
    let legacy = stack.sign_image_legacy(&image, &legacy_opts);
    let mut rekord_opts = stack.options();
    rekord_opts.legacy_kind = LegacyKind::Rekord;
    rekord_opts.sct = support::sigstore::SctMode::Missing;
    let rekord = stack.sign_image_legacy(&image, &rekord_opts);
    let policy = keyless_policy();
    for candidate in [
        SignatureMaterial::Bundle { source: "v3".into(), json: v3.json().into_bytes() },
        SignatureMaterial::Legacy { source: "legacy".into(), signature: legacy },
        SignatureMaterial::Legacy { source: "rekord".into(), signature: rekord },
    ] {
        let decision = verify_image(&trust, &image, std::slice::from_ref(&candidate), &policy);
        assert!(decision.allowed, "{}", decision.reason());
        assert!(decision.reason().starts_with("verified"));
    }
}

#[test]
fn regex_identity_and_claims() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(5);
    let opts = stack.options();
    let v3 = stack.sign_image_v3(&image, &opts);
    let candidates = [SignatureMaterial::Bundle { source: "v3".into(), json: v3.json().into_bytes() }];
    let identity = KeylessIdentity {
        subject: StringMatcher::regex(r"https://github\.com/pullgate/demo/\.github/workflows/.*@refs/heads/main").unwrap(),
        issuer: Some(StringMatcher::regex(r"https://token\.actions\.githubusercontent\.com").unwrap()),
        claims: vec![
            ExtensionClaim::new("source-repository-ref", "refs/heads/main").unwrap(),
            ExtensionClaim::new("github-workflow-trigger", "push").unwrap(),
        ],
    };
    let policy = IdentityPolicy::any_of(vec![Authority::keyless("ci", vec![identity]).unwrap()]).unwrap();
    let decision = verify_image(&trust, &image, &candidates, &policy);
    assert!(decision.allowed, "{}", decision.reason());
}

#[test]
fn key_based_signatures_for_every_algorithm() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(6);
    for alg in [KeyAlg::P256, KeyAlg::P384, KeyAlg::Ed25519, KeyAlg::Rsa] {
        let key = TestKey::generate(alg);
        let public = PublicKey::from_pem(&key.public_pem()).unwrap();
        let policy = IdentityPolicy::any_of(vec![Authority::keys("team", vec![public.clone()]).unwrap()]).unwrap();
        let opts = stack.options();
        let v3 = stack.sign_image_v3_with_key(&image, &opts, &key);
        let legacy = stack.sign_image_legacy_with_key(&image, &opts, &key);
        let mut rekord_opts = stack.options();
        rekord_opts.legacy_kind = LegacyKind::Rekord;
        let rekord = stack.sign_image_legacy_with_key(&image, &rekord_opts, &key);
        for candidate in [
            SignatureMaterial::Bundle { source: "v3".into(), json: v3.json().into_bytes() },
            SignatureMaterial::Legacy { source: "legacy".into(), signature: legacy },
            SignatureMaterial::Legacy { source: "rekord".into(), signature: rekord },
        ] {
            let decision = verify_image(&trust, &image, std::slice::from_ref(&candidate), &policy);
            assert!(decision.allowed, "{alg:?} {candidate:?}: {}", decision.reason());
        }
        // Another key of the same algorithm is not accepted.
        let other = PublicKey::from_pem(&TestKey::generate(alg).public_pem()).unwrap();
        let policy = IdentityPolicy::any_of(vec![Authority::keys("other", vec![other]).unwrap()]).unwrap();
        let v3 = stack.sign_image_v3_with_key(&image, &opts, &key);
        let decision =
            verify_image(&trust, &image, &[SignatureMaterial::Bundle { source: "v3".into(), json: v3.json().into_bytes() }], &policy);
        assert!(!decision.allowed, "{alg:?}: wrong key accepted");
    }
}

#[test]
fn threshold_two_of_three() {
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(7);
    let team_key = TestKey::generate(KeyAlg::P256);
    let team = PublicKey::from_pem(&team_key.public_pem()).unwrap();
    let unused = PublicKey::from_pem(&TestKey::generate(KeyAlg::P256).public_pem()).unwrap();
    let policy = IdentityPolicy::new(
        vec![
            Authority::keyless("ci", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)]).unwrap(),
            Authority::keys("team", vec![team]).unwrap(),
            Authority::keys("security", vec![unused]).unwrap(),
        ],
        2,
    )
    .unwrap();
    let opts = stack.options();
    let keyless = SignatureMaterial::Bundle { source: "ci".into(), json: stack.sign_image_v3(&image, &opts).json().into_bytes() };
    let keyed = SignatureMaterial::Legacy { source: "team".into(), signature: stack.sign_image_legacy_with_key(&image, &opts, &team_key) };
    let one = verify_image(&trust, &image, std::slice::from_ref(&keyless), &policy);
    assert!(!one.allowed);
    assert!(one.reason().starts_with("1 of 2 required authorities satisfied"), "{}", one.reason());
    let two = verify_image(&trust, &image, &[keyless, keyed], &policy);
    assert!(two.allowed, "{}", two.reason());
    assert_eq!(two.satisfied, vec!["ci".to_string(), "team".to_string()]);
}

#[test]
fn no_candidates_is_denied() {
    let stack = Stack::new();
    let decision = verify_image(&stack.trust(), &image_digest(8), &[], &keyless_policy());
    assert!(!decision.allowed);
    assert_eq!(decision.reason(), "no signatures found");
}
