//! Property test: random mutations of valid signature material are never
//! accepted, never panic, and the fast path always agrees with the library's
//! unmodified reference path.
//!
//! Deterministic: a fixed-seed PRNG drives every choice, so a failure is
//! reproducible from the printed iteration. `PULLGATE_FUZZ_ITERATIONS`
//! raises the bound (default 400 per format).

mod support;

use base64::Engine as _;
use pullgate::verify::{
    parse_bundle, ArtifactRef, Digest, ExpectedSigner, LegacySignature, Mode, RekorSetBundle, TrustMaterial, VerifyError,
};
use serde_json::Value;
use support::sigstore::{image_digest, Stack};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

thread_local! {
    /// What the last mutation did, for failure messages.
    static LAST: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn note(what: String) {
    LAST.with(|l| *l.borrow_mut() = what);
}

fn last() -> String {
    LAST.with(|l| l.borrow().clone())
}

/// SplitMix64: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn iterations() -> usize {
    std::env::var("PULLGATE_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(400)
}

/// Paths to every string and number leaf of a JSON value.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(k.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                leaves(child, path, out);
                path.pop();
            }
        }
        Value::String(_) | Value::Number(_) => out.push(path.clone()),
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Array(items) => &mut items[k.parse::<usize>().unwrap()],
        other => &mut other[k.as_str()],
    })
}

/// Flip one bit of a byte string.
fn flip(rng: &mut Rng, bytes: &mut [u8]) {
    if bytes.is_empty() {
        return;
    }
    let i = rng.below(bytes.len());
    let bit = rng.below(8);
    LAST.with(|l| l.borrow_mut().push_str(&format!(" byte {i}/{} bit {bit}", bytes.len())));
    bytes[i] ^= 1 << bit;
}

/// One semantic mutation of a JSON document.
fn mutate_json(rng: &mut Rng, doc: &Value) -> Value {
    let mut doc = doc.clone();
    let mut paths = Vec::new();
    leaves(&doc, &mut Vec::new(), &mut paths);
    match rng.below(4) {
        // Flip a bit inside a base64 field's decoded bytes (signatures,
        // certificates, bodies, hashes, SETs, tokens, payloads).
        0 | 1 => {
            for _ in 0..8 {
                let path = &paths[rng.below(paths.len())];
                let leaf = at(&mut doc, path);
                if let Some(mut bytes) = leaf.as_str().and_then(|s| B64.decode(s).ok()).filter(|b| !b.is_empty()) {
                    note(format!("flip decoded {path:?}"));
                    flip(rng, &mut bytes);
                    *leaf = B64.encode(bytes).into();
                    return doc;
                }
            }
            doc
        }
        // Change a text or number leaf.
        2 => {
            let path = &paths[rng.below(paths.len())];
            note(format!("change leaf {path:?}"));
            let leaf = at(&mut doc, path);
            let replacement = match &*leaf {
                Value::String(s) if !s.is_empty() => {
                    let mut bytes = s.clone().into_bytes();
                    let i = rng.below(bytes.len());
                    bytes[i] = b"0aZ/+=-\n"[rng.below(8)];
                    String::from_utf8_lossy(&bytes).into_owned().into()
                }
                Value::Number(n) => match n.as_i64() {
                    Some(i) => (i + 1 - 2 * (rng.below(2) as i64)).into(),
                    None => 0.into(),
                },
                other => other.clone(),
            };
            *leaf = replacement;
            doc
        }
        // Remove a field.
        _ => {
            let path = &paths[rng.below(paths.len())];
            note(format!("remove {path:?}"));
            let (last, parent) = path.split_last().unwrap();
            match at(&mut doc, parent) {
                Value::Object(map) => {
                    map.remove(last);
                }
                Value::Array(items) => {
                    let i: usize = last.parse().unwrap();
                    items.remove(i);
                }
                _ => {}
            }
            doc
        }
    }
}

/// One byte-level mutation of serialized text.
fn mutate_bytes(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    let i = rng.below(bytes.len());
    note(format!("text edit at {i}"));
    match rng.below(3) {
        0 => flip(rng, &mut bytes[i..i + 1]),
        1 => {
            bytes.remove(i);
        }
        _ => {
            let b = rng.next() as u8;
            bytes.insert(i, b);
        }
    }
    bytes
}

/// The parts of an RFC 3161 token that its signature authenticates: the
/// TSTInfo and the signer infos (signed attributes, signature, signer id).
/// CMS also carries unauthenticated fields (`digestAlgorithms`, embedded
/// certificates) that verifiers rightly ignore; a bit flip there leaves a
/// token that still proves the same time, so it is not a meaningful mutation.
fn tsa_signed_parts(token: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    use x509_cert::der::{Decode, Encode, Reader};
    // Tokens come bare (ContentInfo) or inside a TimeStampResp whose status
    // is unauthenticated too.
    let info = match cms::content_info::ContentInfo::from_der(token) {
        Ok(info) => info,
        Err(_) => {
            let outer = x509_cert::der::Any::from_der(token).ok()?;
            let mut reader = x509_cert::der::SliceReader::new(outer.value()).ok()?;
            let _status: x509_cert::der::Any = reader.decode().ok()?;
            reader.decode().ok()?
        }
    };
    let signed = cms::signed_data::SignedData::from_der(&info.content.to_der().ok()?).ok()?;
    // The signature covers the TSTInfo bytes, not the tag they are wrapped in.
    let econtent = signed.encap_content_info.econtent?.value().to_vec();
    // Per signer: id, digest algorithm, signed attributes and signature. The
    // signer's `signatureAlgorithm` is not covered by the signature either;
    // the library derives the scheme from the TSA key and digest algorithm
    // (pullgate's fast path also refuses one that contradicts the digest).
    let mut signers = Vec::new();
    for si in signed.signer_infos.0.iter() {
        signers.extend(si.sid.to_der().ok()?);
        signers.extend(si.digest_alg.to_der().ok()?);
        signers.extend(si.signed_attrs.as_ref()?.to_der().ok()?);
        signers.extend(si.signature.to_der().ok()?);
    }
    Some((econtent, signers))
}

/// Whether `mutated` differs from `original` only in unauthenticated CMS fields.
fn same_but_unsigned_tsa_fields(mutated: &sigstore_verify::types::Bundle, original: &sigstore_verify::types::Bundle) -> bool {
    let tokens = |b: &sigstore_verify::types::Bundle| {
        b.verification_material
            .timestamp_verification_data
            .rfc3161_timestamps
            .iter()
            .map(|t| t.signed_timestamp.as_bytes().to_vec())
            .collect::<Vec<_>>()
    };
    let (m, o) = (tokens(mutated), tokens(original));
    if m.len() != o.len()
        || m.iter().zip(&o).any(|(a, b)| a != b && (tsa_signed_parts(a).is_none() || tsa_signed_parts(a) != tsa_signed_parts(b)))
    {
        return false;
    }
    let mut normalized = mutated.clone();
    normalized.verification_material.timestamp_verification_data = original.verification_material.timestamp_verification_data.clone();
    &normalized == original
}

/// Whether `mutated` only lost its `mediaType`, which the library reads as a
/// v0.1 bundle (cosign's first bundles had none). The same evidence is then
/// verified under v0.1 rules, a subset of v0.3's (this bundle still carries
/// its inclusion proof, and the proof is still checked), so acceptance is
/// correct. A v0.1 bundle must still carry a SET.
fn only_media_type_downgraded(mutated: &sigstore_verify::types::Bundle, original: &sigstore_verify::types::Bundle) -> bool {
    let mut normalized = mutated.clone();
    normalized.media_type = original.media_type;
    mutated.media_type == sigstore_verify::types::MediaType::Bundle0_1 && &normalized == original
}

/// Whether `mutated` differs only in the key *name* of a checkpoint
/// signature line. A signed note's signature covers the note body; the name
/// after the em dash is a label (Rekor keys are found by the 4-byte hint), so
/// the same key's signature over the same tree head is the same evidence.
fn only_checkpoint_signer_name_changed(mutated: &sigstore_verify::types::Bundle, original: &sigstore_verify::types::Bundle) -> bool {
    let evidence = |b: &sigstore_verify::types::Bundle| {
        b.verification_material
            .tlog_entries
            .iter()
            .map(|e| {
                e.inclusion_proof.as_ref().and_then(|p| p.checkpoint.checkpoint()).map(|c| {
                    let sigs: Vec<_> =
                        c.signatures().iter().map(|s| (s.key_id.as_bytes().to_vec(), s.signature.as_bytes().to_vec())).collect();
                    (c.signed_data().to_vec(), sigs)
                })
            })
            .collect::<Vec<_>>()
    };
    if evidence(mutated) != evidence(original) {
        return false;
    }
    let mut normalized = mutated.clone();
    for (n, o) in normalized.verification_material.tlog_entries.iter_mut().zip(&original.verification_material.tlog_entries) {
        if let (Some(np), Some(op)) = (n.inclusion_proof.as_mut(), o.inclusion_proof.as_ref()) {
            np.checkpoint = op.checkpoint.clone();
        }
    }
    &normalized == original
}

/// Whether `mutated` is `original` minus some of its redundant evidence: a
/// SET where the inclusion proof and an RFC 3161 timestamp remain, or the
/// timestamp where the SET remains, or a message signature's digest hint.
/// What is left is a complete bundle in its
/// own right (cosign v3 with a TSA, or with Rekor v1 alone), so accepting it
/// is correct; the tests in verify_tamper.rs cover removing evidence that is
/// *not* redundant.
fn only_redundant_evidence_removed(mutated: &sigstore_verify::types::Bundle, original: &sigstore_verify::types::Bundle) -> bool {
    let mut reduced = original.clone();
    if mutated.verification_material.tlog_entries.len() != reduced.verification_material.tlog_entries.len() {
        return false;
    }
    for (r, m) in reduced.verification_material.tlog_entries.iter_mut().zip(&mutated.verification_material.tlog_entries) {
        if m.inclusion_promise.is_none() {
            r.inclusion_promise = None;
        }
    }
    if mutated.verification_material.timestamp_verification_data.rfc3161_timestamps.is_empty() {
        reduced.verification_material.timestamp_verification_data.rfc3161_timestamps.clear();
    }
    // `messageDigest` is an unsigned hint: the signature is checked over the
    // artifact itself either way.
    if let (sigstore_verify::types::SignatureContent::MessageSignature(r), sigstore_verify::types::SignatureContent::MessageSignature(m)) =
        (&mut reduced.content, &mutated.content)
    {
        if m.message_digest.is_none() {
            r.message_digest = None;
        }
    }
    &reduced == mutated
}

/// Rekor v2 proofs duplicate index, size and root from the signed checkpoint;
/// those copies are unauthenticated and ignored by design, so changing them
/// changes nothing that is verified.
fn only_rekor_v2_proof_copies_changed(mutated: &sigstore_verify::types::Bundle, original: &sigstore_verify::types::Bundle) -> bool {
    let mut normalized = mutated.clone();
    for (n, o) in normalized.verification_material.tlog_entries.iter_mut().zip(&original.verification_material.tlog_entries) {
        if n.kind_version != sigstore_verify::types::KindVersion::HashedRekordV002 {
            continue;
        }
        if let (Some(np), Some(op)) = (n.inclusion_proof.as_mut(), o.inclusion_proof.as_ref()) {
            np.root_hash = op.root_hash;
            np.tree_size = op.tree_size;
            np.log_index = op.log_index;
        }
    }
    &normalized == original
}

fn both_modes(trust: &TrustMaterial, json: &[u8], image: &Digest) -> (Result<usize, VerifyError>, Result<usize, VerifyError>) {
    let bundle = match parse_bundle(json) {
        Ok(b) => b,
        Err(e) => return (Err(e.clone().into()), Err(e.into())),
    };
    let run = |mode| {
        pullgate::verify::image::check_image_statement(&bundle, image)
            .map_err(VerifyError::from)
            .and_then(|()| trust.verify_bundle_with_mode(&bundle, ArtifactRef::Digest(image), ExpectedSigner::Certificate, mode))
            // How many RFC 3161 tokens were skipped as unlisted (step 3a).
            .map(|v| v.skipped_timestamps.len())
    };
    (run(Mode::Fast), run(Mode::Reference))
}

#[test]
fn mutated_v3_bundles_are_never_accepted() {
    let mut rng = Rng(0x5EED_0000_0000_0003);
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(1);
    let mut variants = Vec::new();
    for tsa in [false, true] {
        let mut opts = stack.options();
        opts.tsa = tsa;
        variants.push(stack.sign_image_v3(&image, &opts).bundle);
    }
    for v in &variants {
        let (fast, reference) = both_modes(&trust, v.to_string().as_bytes(), &image);
        assert!(fast.is_ok() && reference.is_ok(), "baseline must verify: {fast:?} {reference:?}");
    }
    let originals: Vec<_> = variants.iter().map(|v| parse_bundle(v.to_string().as_bytes()).unwrap()).collect();
    let (mut rejected, mut equivalent) = (0, 0);
    for i in 0..iterations() {
        let which = rng.below(variants.len());
        let mutated = if rng.below(3) == 0 {
            let text = variants[which].to_string();
            let m = mutate_bytes(&mut rng, &text);
            if let Some(at) = text.bytes().zip(&m).position(|(a, b)| a != *b) {
                let lo = at.saturating_sub(60);
                note(format!(
                    "{} near {:?} -> {:?}",
                    last(),
                    String::from_utf8_lossy(&text.as_bytes()[lo..(at + 40).min(text.len())]),
                    String::from_utf8_lossy(&m[lo..(at + 40).min(m.len())])
                ));
            }
            m
        } else {
            mutate_json(&mut rng, &variants[which]).to_string().into_bytes()
        };
        // A mutation the parser normalizes away (an unknown field renamed,
        // say) leaves the same bundle: acceptance is then correct.
        if parse_bundle(&mutated).is_ok_and(|b| {
            b == originals[which]
                || same_but_unsigned_tsa_fields(&b, &originals[which])
                || only_media_type_downgraded(&b, &originals[which])
                || only_checkpoint_signer_name_changed(&b, &originals[which])
                || only_redundant_evidence_removed(&b, &originals[which])
        }) {
            equivalent += 1;
            continue;
        }
        let (fast, reference) = both_modes(&trust, &mutated, &image);
        // A flip in a token's signer identifier makes it name a TSA the
        // trust root does not list: skipped and reported (step 3a, on the
        // documented allow-list), the SET still dates the signature.
        if matches!((&fast, &reference), (Ok(a), Ok(b)) if *a > 0 && *b > 0) {
            equivalent += 1;
            continue;
        }
        assert!(
            fast.is_err() && reference.is_err(),
            "iteration {i}: mutated bundle accepted ({}) (fast {fast:?}, reference {reference:?}): {}",
            last(),
            String::from_utf8_lossy(&mutated)
        );
        if let Err(e) = &fast {
            assert!(!e.to_string().contains('\n'));
        }
        rejected += 1;
    }
    println!("v3: {rejected} mutations rejected, {equivalent} semantically equivalent skipped");
    assert!(rejected > iterations() / 2);
}

/// One semantic mutation of a legacy signature's pieces.
fn mutate_legacy(rng: &mut Rng, sig: &LegacySignature) -> Option<LegacySignature> {
    let mut m = sig.clone();
    let choice = rng.below(6);
    note(format!("legacy mutation {choice}"));
    match choice {
        0 => {
            flip(rng, &mut m.payload);
            // Keep the layer digest consistent half the time, so the
            // signature check (not just the digest check) is exercised.
            if rng.below(2) == 0 {
                m.layer_digest = Some(Digest::compute(pullgate::verify::DigestAlgorithm::Sha256, &m.payload));
            }
        }
        1 => {
            let mut bytes = B64.decode(&m.signature).ok()?;
            flip(rng, &mut bytes);
            m.signature = B64.encode(bytes);
        }
        2 => {
            let der = sigstore_verify::types::DerCertificate::from_pem(m.certificate.as_deref()?).ok()?;
            let mut bytes = der.as_bytes().to_vec();
            flip(rng, &mut bytes);
            m.certificate = Some(support::sigstore::keys::pem("CERTIFICATE", &bytes));
        }
        3 | 4 => {
            let doc: Value = serde_json::from_str(m.rekor_bundle.as_deref()?).ok()?;
            let mutated = mutate_json(rng, &doc).to_string();
            let before = RekorSetBundle::parse(m.rekor_bundle.as_deref()?).ok();
            if RekorSetBundle::parse(&mutated).ok() == before {
                return None;
            }
            m.rekor_bundle = Some(mutated);
        }
        _ => {
            let doc: Value = serde_json::from_str(m.rfc3161_timestamp.as_deref()?).ok()?;
            let original = B64.decode(doc["SignedRFC3161Timestamp"].as_str()?).ok()?;
            let mut token = original.clone();
            flip(rng, &mut token);
            if tsa_signed_parts(&token).is_some() && tsa_signed_parts(&token) == tsa_signed_parts(&original) {
                return None;
            }
            m.rfc3161_timestamp = Some(serde_json::json!({"SignedRFC3161Timestamp": B64.encode(token)}).to_string());
        }
    }
    Some(m)
}

#[test]
fn mutated_legacy_signatures_are_never_accepted() {
    let mut rng = Rng(0x5EED_0000_0000_0004);
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(2);
    let mut variants = Vec::new();
    for (tsa, kind) in [(true, support::sigstore::LegacyKind::HashedRekord), (false, support::sigstore::LegacyKind::Rekord)] {
        let mut opts = stack.options();
        opts.tsa = tsa;
        opts.legacy_kind = kind;
        if kind == support::sigstore::LegacyKind::Rekord {
            opts.sct = support::sigstore::SctMode::Missing;
        }
        variants.push(stack.sign_image_legacy(&image, &opts));
    }
    for v in &variants {
        trust.verify_legacy(v, &image, ExpectedSigner::Certificate).expect("baseline");
    }
    let mut rejected = 0;
    for i in 0..iterations() {
        let which = rng.below(variants.len());
        let Some(mutated) = mutate_legacy(&mut rng, &variants[which]) else {
            continue;
        };
        let result = trust.verify_legacy(&mutated, &image, ExpectedSigner::Certificate);
        // Skipped unlisted-TSA tokens are allowed (step 3a), see above.
        if result.as_ref().is_ok_and(|v| !v.skipped_timestamps.is_empty()) {
            continue;
        }
        assert!(result.is_err(), "iteration {i}: mutated legacy signature accepted ({}): {mutated:?}", last());
        rejected += 1;
    }
    println!("legacy: {rejected} mutations rejected");
    assert!(rejected > iterations() / 2);
}

/// The same property on real production bundles from the shared vectors
/// (skipped when they are not present).
#[test]
fn mutated_real_bundles_are_never_accepted() {
    let shared = match std::env::var_os("PULLGATE_SHARED") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    let vectors = shared.join("vectors");
    if !vectors.join("cases.json").is_file() {
        eprintln!("SKIP: shared vectors not found (set PULLGATE_SHARED or place them at ../shared)");
        return;
    }
    let mut rng = Rng(0x5EED_0000_0000_0005);
    let mut rejected = 0;
    // A cosign v3 image bundle (Rekor v1 + TSA) and a message-signature bundle.
    for name in ["rs_kubewarden-v1.34.0", "happy-path-v0.3", "rekor2-happy-path"] {
        let dir = vectors.join(name);
        let trust = TrustMaterial::from_file(dir.join("trusted_root.json")).unwrap();
        let text = std::fs::read_to_string(dir.join("bundle.sigstore.json")).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let original = parse_bundle(text.as_bytes()).unwrap();
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(vectors.join("cases.json")).unwrap()).unwrap();
        let digest: Digest =
            cases.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["digest"].as_str().unwrap().parse().unwrap();
        let verify = |json: &[u8]| -> Result<(), VerifyError> {
            let bundle = parse_bundle(json)?;
            for mode in [Mode::Fast, Mode::Reference] {
                trust.verify_bundle_with_mode(&bundle, ArtifactRef::Digest(&digest), ExpectedSigner::Certificate, mode)?;
            }
            Ok(())
        };
        verify(text.as_bytes()).expect("baseline");
        for i in 0..iterations() / 2 {
            let mutated =
                if rng.below(3) == 0 { mutate_bytes(&mut rng, &text) } else { mutate_json(&mut rng, &doc).to_string().into_bytes() };
            if parse_bundle(&mutated).is_ok_and(|b| {
                b == original
                    || same_but_unsigned_tsa_fields(&b, &original)
                    || only_media_type_downgraded(&b, &original)
                    || only_checkpoint_signer_name_changed(&b, &original)
                    || only_redundant_evidence_removed(&b, &original)
                    || only_rekor_v2_proof_copies_changed(&b, &original)
            }) {
                continue;
            }
            let bundle = parse_bundle(&mutated);
            let fast = bundle
                .as_ref()
                .map_err(|e| VerifyError::from(e.clone()))
                .and_then(|b| trust.verify_bundle_with_mode(b, ArtifactRef::Digest(&digest), ExpectedSigner::Certificate, Mode::Fast));
            let reference = bundle
                .as_ref()
                .map_err(|e| VerifyError::from(e.clone()))
                .and_then(|b| trust.verify_bundle_with_mode(b, ArtifactRef::Digest(&digest), ExpectedSigner::Certificate, Mode::Reference));
            assert!(fast.is_err() && reference.is_err(), "{name} iteration {i}: mutated bundle accepted ({})", last());
            rejected += 1;
        }
    }
    println!("real bundles: {rejected} mutations rejected");
}
