//! Per-verification cost against the crypto floor, measured in the same run.
//!
//! `cargo bench --bench verify` (release). For each case, the verifier and
//! trust material are built once and reused; each sample verifies one
//! already-parsed bundle; we report the median of many samples, interleaving
//! the contenders so machine noise hits them alike.
//!
//! The floor is what no verifier can reuse across bundles, done alone with
//! pre-parsed keys: the leaf certificate's P-384 signature by the Fulcio
//! intermediate, the P-256 checks (DSSE or message signature, SCT, SET,
//! checkpoint, TSA where present), and the hashing (Merkle path, payload).

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use pullgate::policy::KeylessIdentity;
use pullgate::verify::{parse_bundle, ArtifactRef, Digest, ExpectedSigner, LegacySignature, Mode, Signer, TrustMaterial};
use serde_json::Value;
use support::sigstore::{image_digest, Stack, DEFAULT_ISSUER, DEFAULT_SAN};
use x509_cert::der::{Decode, Encode};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn samples() -> usize {
    std::env::var("PULLGATE_BENCH_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One sample of a contender, through a named, never-inlined frame per
/// contender so that a profiler can attribute the cost of each in one run
/// (same keys and signatures for all: ECDSA cost varies a little with them).
/// Load-independent figure: instructions per verification, e.g.
/// `valgrind --tool=callgrind` and the inclusive cost of `verify::sample_fast`
/// against `verify::sample_floor`, divided by their call counts.
fn sample(name: &str, f: &mut dyn FnMut()) {
    match name {
        "fast" => sample_fast(f),
        "floor" => sample_floor(f),
        _ => f(),
    }
}

fn name_of<'a>(name: &&'a str) -> &'a str {
    name
}

// Distinct bodies, so the linker cannot fold the two frames into one.
#[inline(never)]
fn sample_fast(f: &mut dyn FnMut()) {
    black_box(1u8);
    f()
}

#[inline(never)]
fn sample_floor(f: &mut dyn FnMut()) {
    black_box(2u8);
    f()
}

/// Run each contender `n` times, interleaved in rounds; median microseconds each.
fn race(contenders: &mut [(&str, &mut dyn FnMut())], n: usize) -> Vec<f64> {
    // PULLGATE_BENCH_CONTENDER=fast runs only that contender (for profiling).
    if let Ok(only) = std::env::var("PULLGATE_BENCH_CONTENDER") {
        return contenders
            .iter_mut()
            .map(|(name, f)| {
                if *name != only {
                    return f64::NAN;
                }
                let mut t = Vec::with_capacity(n);
                for _ in 0..n {
                    let start = Instant::now();
                    sample(name_of(name), &mut **f);
                    t.push(start.elapsed().as_secs_f64() * 1e6);
                }
                median(t)
            })
            .collect();
    }
    let rounds = 20;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(n); contenders.len()];
    for (name, f) in contenders.iter_mut() {
        for _ in 0..50 {
            sample(name_of(name), &mut **f); // warm-up
        }
    }
    for _ in 0..rounds {
        for (i, (name, f)) in contenders.iter_mut().enumerate() {
            for _ in 0..n / rounds {
                let start = Instant::now();
                sample(name_of(name), &mut **f);
                times[i].push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    times.into_iter().map(median).collect()
}

/// One signature check of the floor: pre-parsed key, message, signature.
struct Check {
    key: ParsedPublicKey,
    message: Vec<u8>,
    signature: Vec<u8>,
}

impl Check {
    fn new(alg: &'static dyn VerificationAlgorithm, spki: &[u8], message: Vec<u8>, signature: Vec<u8>) -> Self {
        let spki = x509_cert::spki::SubjectPublicKeyInfoRef::from_der(spki).expect("spki");
        let key = ParsedPublicKey::new(alg, spki.subject_public_key.raw_bytes()).expect("key");
        key.verify_sig(&message, &signature).expect("floor input must verify");
        Self { key, message, signature }
    }
    fn run(&self) {
        black_box(self.key.verify_sig(black_box(&self.message), black_box(&self.signature))).expect("verify");
    }
}

/// Leaf TBS, signature by the Fulcio intermediate.
fn leaf_check(stack: &Stack, leaf_der: &[u8]) -> Check {
    let cert = x509_cert::Certificate::from_der(leaf_der).unwrap();
    Check::new(
        &sig::ECDSA_P384_SHA384_ASN1,
        &stack.fulcio_intermediate_key.spki_der(),
        cert.tbs_certificate.to_der().unwrap(),
        cert.signature.raw_bytes().to_vec(),
    )
}

/// The SCT's RFC 6962 signed data, rebuilt from the final certificate.
fn sct_check(stack: &Stack, leaf_der: &[u8]) -> Check {
    use x509_cert::ext::pkix::SignedCertificateTimestampList;
    let cert = x509_cert::Certificate::from_der(leaf_der).unwrap();
    let mut tbs = cert.tbs_certificate.clone();
    let exts = tbs.extensions.as_mut().unwrap();
    let position = exts.iter().position(|e| e.extn_id.to_string() == "1.3.6.1.4.1.11129.2.4.2").unwrap();
    let ext = exts.remove(position);
    let list = SignedCertificateTimestampList::from_der(ext.extn_value.as_bytes()).unwrap();
    let sct = list.parse_timestamps().unwrap()[0].parse_timestamp().unwrap();
    let precert = tbs.to_der().unwrap();
    let issuer_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &stack.fulcio_intermediate_key.spki_der());
    let mut data = vec![0u8, 0u8];
    data.extend_from_slice(&sct.timestamp.to_be_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(issuer_hash.as_ref());
    data.extend_from_slice(&(precert.len() as u32).to_be_bytes()[1..]);
    data.extend_from_slice(&precert);
    data.extend_from_slice(&0u16.to_be_bytes());
    Check::new(&sig::ECDSA_P256_SHA256_ASN1, &stack.ct_key.spki_der(), data, sct.signature.signature.as_slice().to_vec())
}

/// SET over the canonical JSON of the entry metadata.
fn set_check(stack: &Stack, body: &[u8], time: i64, index: i64, set: Vec<u8>) -> Check {
    let payload = serde_json::json!({
        "body": B64.encode(body),
        "integratedTime": time,
        "logIndex": index,
        "logID": hex::encode(stack.rekor.log_id()),
    });
    Check::new(&sig::ECDSA_P256_SHA256_ASN1, &stack.rekor.key.spki_der(), serde_json_canonicalizer::to_vec(&payload).unwrap(), set)
}

fn checkpoint_check(stack: &Stack, envelope: &str) -> Check {
    let (body, sig_line) = envelope.split_once("\n\n").unwrap();
    let sig_b64 = sig_line.trim_end().rsplit_once(' ').unwrap().1;
    let signature = B64.decode(sig_b64).unwrap()[4..].to_vec();
    Check::new(&sig::ECDSA_P256_SHA256_ASN1, &stack.rekor.key.spki_der(), format!("{body}\n").into_bytes(), signature)
}

/// The TSA's CMS signature over its signed attributes, plus the two hashes.
fn tsa_checks(stack: &Stack, token: &[u8], signature: &[u8]) -> (Check, Vec<Vec<u8>>) {
    let info = cms::content_info::ContentInfo::from_der(token).unwrap();
    let signed = cms::signed_data::SignedData::from_der(&info.content.to_der().unwrap()).unwrap();
    let si = signed.signer_infos.0.get(0).unwrap();
    let attrs = si.signed_attrs.as_ref().unwrap().to_der().unwrap();
    let tst = signed.encap_content_info.econtent.as_ref().unwrap().value().to_vec();
    let check = Check::new(&sig::ECDSA_P256_SHA256_ASN1, &stack.tsa_leaf_key.spki_der(), attrs, si.signature.as_bytes().to_vec());
    (check, vec![signature.to_vec(), tst])
}

/// RFC 6962 leaf + path hashing for an entry, and any other hashed inputs.
fn hashing(body: &[u8], path_len: usize, extra: &[Vec<u8>]) {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    h.update(&[0]);
    h.update(body);
    let mut node = h.finish();
    for _ in 0..path_len {
        let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        c.update(&[1]);
        c.update(node.as_ref());
        c.update(node.as_ref());
        node = c.finish();
    }
    for data in extra {
        black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data));
    }
    black_box(node);
}

struct Row {
    case: String,
    library: Option<f64>,
    reference: f64,
    fast: f64,
    floor: f64,
    parse: f64,
}

fn check_identity(v: &pullgate::verify::VerifiedSignature) {
    let Signer::Certificate(id) = &v.signer else { panic!("keyless") };
    KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER).check(id).expect("identity");
}

fn bench_v3(stack: &mut Stack, trust: &TrustMaterial, image: &Digest, tsa: bool) -> Row {
    let mut opts = stack.options();
    opts.tsa = tsa;
    let signed = stack.sign_image_v3(image, &opts);
    let json = signed.json();
    let bundle = parse_bundle(json.as_bytes()).unwrap();
    let entry = signed.entry.clone().unwrap();
    let leaf = signed.leaf.clone().unwrap();
    let envelope = &signed.bundle["dsseEnvelope"];
    let payload = B64.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let dsse_sig = B64.decode(envelope["signatures"][0]["sig"].as_str().unwrap()).unwrap();
    let leaf_spki = leaf.parsed().tbs_certificate.subject_public_key_info.to_der().unwrap();
    let pae = sigstore_verify::types::pae("application/vnd.in-toto+json", &payload);
    let mut checks = vec![
        leaf_check(stack, &leaf.der),
        Check::new(&sig::ECDSA_P256_SHA256_ASN1, &leaf_spki, pae, dsse_sig.clone()),
        sct_check(stack, &leaf.der),
        set_check(stack, &entry.body, entry.integrated_time, entry.index as i64, entry.set.clone()),
        checkpoint_check(stack, &entry.checkpoint),
    ];
    let mut extra = vec![payload.clone()];
    if tsa {
        let token = B64
            .decode(
                signed.bundle["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]["signedTimestamp"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let (check, hashed) = tsa_checks(stack, &token, &dsse_sig);
        checks.push(check);
        extra.extend(hashed);
    }
    let body = entry.body.clone();
    let path_len = entry.hashes.len();

    let library_root = sigstore_verify::trust_root::TrustedRoot::from_json(&stack.trusted_root_json()).unwrap();
    let library = sigstore_verify::Verifier::new(&library_root).unwrap();
    let library_policy = sigstore_verify::VerificationPolicy::new(DEFAULT_SAN, DEFAULT_ISSUER);
    let lib_bundle = sigstore_verify::types::Bundle::from_json(&json).unwrap();
    let digest = sigstore_verify::types::Sha256Hash::try_from(image.bytes().as_slice()).unwrap();

    let n = samples();
    let times = race(
        &mut [
            ("library", &mut || {
                black_box(library.verify(digest, &lib_bundle, &library_policy).unwrap());
            }),
            ("reference", &mut || {
                pullgate::verify::image::check_image_statement(&bundle, image).unwrap();
                let v = trust
                    .verify_bundle_with_mode(&bundle, ArtifactRef::Digest(image), ExpectedSigner::Certificate, Mode::Reference)
                    .unwrap();
                check_identity(&v);
            }),
            ("fast", &mut || {
                let v = trust.verify_image_bundle(&bundle, image, ExpectedSigner::Certificate).unwrap();
                check_identity(&v);
            }),
            ("floor", &mut || {
                for c in &checks {
                    c.run();
                }
                hashing(&body, path_len, &extra);
            }),
            ("parse", &mut || {
                black_box(parse_bundle(black_box(json.as_bytes())).unwrap());
            }),
        ],
        n,
    );
    Row {
        case: format!("cosign v3 image bundle (DSSE, Rekor v1 dsse entry{})", if tsa { ", RFC 3161" } else { "" }),
        library: Some(times[0]),
        reference: times[1],
        fast: times[2],
        floor: times[3],
        parse: times[4],
    }
}

fn bench_legacy(stack: &mut Stack, trust: &TrustMaterial, image: &Digest) -> Row {
    let opts = stack.options();
    let sig: LegacySignature = stack.sign_image_legacy(image, &opts);
    let leaf_der = sigstore_verify::types::DerCertificate::from_pem(sig.certificate.as_ref().unwrap()).unwrap();
    let leaf = support::sigstore::certs::IssuedCert { der: leaf_der.as_bytes().to_vec() };
    let leaf_spki = leaf.parsed().tbs_certificate.subject_public_key_info.to_der().unwrap();
    let set: Value = serde_json::from_str(sig.rekor_bundle.as_ref().unwrap()).unwrap();
    let body = B64.decode(set["Payload"]["body"].as_str().unwrap()).unwrap();
    let checks = vec![
        leaf_check(stack, &leaf.der),
        Check::new(&sig::ECDSA_P256_SHA256_ASN1, &leaf_spki, sig.payload.clone(), B64.decode(&sig.signature).unwrap()),
        sct_check(stack, &leaf.der),
        set_check(
            stack,
            &body,
            set["Payload"]["integratedTime"].as_i64().unwrap(),
            set["Payload"]["logIndex"].as_i64().unwrap(),
            B64.decode(set["SignedEntryTimestamp"].as_str().unwrap()).unwrap(),
        ),
    ];
    let extra = vec![sig.payload.clone()];
    let n = samples();
    let times = race(
        &mut [
            ("fast", &mut || {
                let v = trust.verify_legacy(&sig, image, ExpectedSigner::Certificate).unwrap();
                check_identity(&v);
            }),
            ("floor", &mut || {
                for c in &checks {
                    c.run();
                }
                hashing(&body, 0, &extra);
            }),
        ],
        n,
    );
    Row {
        case: "cosign legacy `.sig` layer (hashedrekord, SET)".into(),
        library: None,
        reference: f64::NAN,
        fast: times[0],
        floor: times[1],
        parse: f64::NAN,
    }
}

/// A real production cosign v3 bundle (kubewarden-controller v1.34.0:
/// Rekor v1 dsse entry and an RFC 3161 timestamp) from the shared vectors,
/// when present. No floor: its TSA chain and keys are not ours to re-sign.
fn bench_real() -> Option<Row> {
    let shared = match std::env::var_os("PULLGATE_SHARED") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    let dir = shared.join("vectors/rs_kubewarden-v1.34.0");
    let json = std::fs::read_to_string(dir.join("bundle.sigstore.json")).ok()?;
    let root_json = std::fs::read_to_string(dir.join("trusted_root.json")).ok()?;
    let trust = TrustMaterial::from_json(&root_json).ok()?;
    let image: Digest = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172".parse().ok()?;
    let san = "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml@refs/tags/v1.34.0";
    let bundle = parse_bundle(json.as_bytes()).ok()?;
    let library_root = sigstore_verify::trust_root::TrustedRoot::from_json(&root_json).ok()?;
    let library = sigstore_verify::Verifier::new(&library_root).ok()?;
    let policy = sigstore_verify::VerificationPolicy::new(san, DEFAULT_ISSUER);
    let lib_bundle = sigstore_verify::types::Bundle::from_json(&json).ok()?;
    let digest = sigstore_verify::types::Sha256Hash::try_from(image.bytes().as_slice()).ok()?;
    let identity = KeylessIdentity::exact(san, DEFAULT_ISSUER);
    let times = race(
        &mut [
            ("library", &mut || {
                black_box(library.verify(digest, &lib_bundle, &policy).unwrap());
            }),
            ("reference", &mut || {
                let v = trust
                    .verify_bundle_with_mode(&bundle, ArtifactRef::Digest(&image), ExpectedSigner::Certificate, Mode::Reference)
                    .unwrap();
                let Signer::Certificate(id) = &v.signer else { panic!() };
                identity.check(id).unwrap();
            }),
            ("fast", &mut || {
                let v = trust.verify_image_bundle(&bundle, &image, ExpectedSigner::Certificate).unwrap();
                let Signer::Certificate(id) = &v.signer else { panic!() };
                identity.check(id).unwrap();
            }),
            ("parse", &mut || {
                black_box(parse_bundle(black_box(json.as_bytes())).unwrap());
            }),
        ],
        samples(),
    );
    Some(Row {
        case: "real cosign v3 bundle (kubewarden v1.34.0: production Fulcio, Rekor v1, TSA)".into(),
        library: Some(times[0]),
        reference: times[1],
        fast: times[2],
        floor: f64::NAN,
        parse: times[3],
    })
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.0}")
    }
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let mut stack = Stack::new();
    let trust = stack.trust();
    let image = image_digest(1);
    // PULLGATE_BENCH_CASE=v3|v3-tsa|legacy runs one case (for profiling).
    let only = std::env::var("PULLGATE_BENCH_CASE").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut rows = Vec::new();
    if wanted("v3") {
        rows.push(bench_v3(&mut stack, &trust, &image, false));
    }
    if wanted("v3-tsa") {
        rows.push(bench_v3(&mut stack, &trust, &image, true));
    }
    if wanted("legacy") {
        rows.push(bench_legacy(&mut stack, &trust, &image));
    }
    if wanted("real") {
        rows.extend(bench_real());
    }
    println!("\nmedian microseconds per verification, {} samples each, verifier reused\n", samples());
    println!(
        "| case | library as-is | pullgate reference | pullgate fast | crypto floor | fast / floor | library / floor | bundle parse |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let ratio = |v: f64| {
            if r.floor.is_nan() || v.is_nan() {
                "-".to_string()
            } else {
                format!("{:.2}x", v / r.floor)
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.case,
            r.library.map(fmt).unwrap_or_else(|| "-".into()),
            fmt(r.reference),
            fmt(r.fast),
            fmt(r.floor),
            ratio(r.fast),
            r.library.map(ratio).unwrap_or_else(|| "-".into()),
            fmt(r.parse),
        );
    }
}
