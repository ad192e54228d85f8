//! Every case of `shared/vectors/cases.json` (real Sigstore vectors), through
//! the library API with the artifact file and with its digest, and through the
//! `verify-bundle` conformance CLI. All must match `expect`.
//!
//! The vectors are read in place from `$PULLGATE_SHARED` or
//! `<crate>/../shared`; when neither exists the test prints why and passes.

use std::path::{Path, PathBuf};

use pullgate::cmd::verify_files::{run_verify_bundle, VerifyBundleArgs};
use pullgate::policy::{Authority, IdentityPolicy, KeylessIdentity, StringMatcher};
use pullgate::verify::{
    parse_bundle, verify_image, ArtifactRef, Digest, ExpectedSigner, LegacySignature, Mode, PublicKey, RekorSetBundle, SignatureMaterial,
    Signer, TrustMaterial,
};
use serde_json::Value;

fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PULLGATE_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    dir.join("vectors/cases.json").is_file().then_some(dir)
}

struct Case {
    dir: PathBuf,
    v: Value,
}

impl Case {
    fn name(&self) -> &str {
        self.v["name"].as_str().unwrap_or("?")
    }
    fn str(&self, key: &str) -> Option<&str> {
        self.v[key].as_str()
    }
    fn path(&self, key: &str) -> Option<PathBuf> {
        self.str(key).map(|p| self.dir.join(p))
    }
    fn read(&self, key: &str) -> Option<String> {
        self.path(key).map(|p| std::fs::read_to_string(p).expect("vector file"))
    }
    fn expect_pass(&self) -> bool {
        self.str("expect") == Some("pass")
    }
}

/// The production root "as of the collection date" for cases without their own.
fn production_root_json(shared: &Path) -> String {
    let targets = shared.join("tuf/sigstore-public-good/targets");
    if let Ok(entries) = std::fs::read_dir(&targets) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".trusted_root.json") {
                return std::fs::read_to_string(entry.path()).expect("TUF target");
            }
        }
    }
    sigstore_verify::trust_root::SIGSTORE_PRODUCTION_TRUSTED_ROOT.to_string()
}

fn trust_for(case: &Case, shared: &Path) -> Result<TrustMaterial, String> {
    let mut json = match case.read("trusted_root") {
        Some(json) => json,
        None => production_root_json(shared),
    };
    if let Some(key_pem) = case.read("rekor_key_override") {
        json = override_rekor_key(&json, case, &key_pem);
    }
    TrustMaterial::from_json(&json).map_err(|e| e.to_string())
}

/// Register `key_pem` under the log ID the case's SET names (a swapped key).
fn override_rekor_key(root_json: &str, case: &Case, key_pem: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let set = RekorSetBundle::parse(&case.read("rekor_bundle").unwrap()).unwrap();
    let log_id = b64.encode(&set.log_id);
    let key = PublicKey::from_pem(key_pem).unwrap();
    let mut root: Value = serde_json::from_str(root_json).unwrap();
    for tlog in root["tlogs"].as_array_mut().unwrap() {
        if tlog["logId"]["keyId"].as_str() == Some(log_id.as_str()) {
            tlog["publicKey"]["rawBytes"] = b64.encode(key.der().as_bytes()).into();
        }
    }
    root.to_string()
}

/// Verify a bundle case through the library API; Ok(()) means verified.
fn verify_bundle_case(case: &Case, shared: &Path, use_digest: bool) -> Result<(), String> {
    verify_bundle_case_mode(case, shared, use_digest, Mode::Fast)
}

fn verify_bundle_case_mode(case: &Case, shared: &Path, use_digest: bool, mode: Mode) -> Result<(), String> {
    let trust = trust_for(case, shared)?;
    let json = std::fs::read(case.path("bundle").unwrap()).unwrap();
    let bundle = parse_bundle(&json).map_err(|e| e.to_string())?;
    let key = case.read("key").map(|pem| PublicKey::from_pem(&pem)).transpose().map_err(|e| e.to_string())?;
    let artifact_bytes;
    let digest: Digest;
    let artifact = if use_digest {
        digest = case.str("digest").unwrap().parse().map_err(|e: pullgate::digest::DigestError| e.to_string())?;
        ArtifactRef::Digest(&digest)
    } else {
        artifact_bytes = std::fs::read(case.path("artifact").unwrap()).unwrap();
        ArtifactRef::Bytes(&artifact_bytes)
    };
    let signer = match &key {
        Some(key) => ExpectedSigner::Key(key),
        None => ExpectedSigner::Certificate,
    };
    let verified = trust.verify_bundle_with_mode(&bundle, artifact, signer, mode).map_err(|e| e.to_string())?;
    if let Signer::Certificate(identity) = &verified.signer {
        let id = KeylessIdentity::exact(case.str("identity").unwrap(), case.str("issuer").unwrap());
        id.check(identity).map_err(|e| e.to_string())?;
    } else if key.is_none() {
        return Err("key signer without a key".into());
    }
    Ok(())
}

fn verify_bundle_cli(case: &Case, use_digest: bool) -> i32 {
    let artifact = if use_digest { case.str("digest").unwrap().to_string() } else { case.path("artifact").unwrap().display().to_string() };
    run_verify_bundle(VerifyBundleArgs {
        staging: false,
        bundle: case.path("bundle").unwrap(),
        certificate_identity: case.str("identity").map(str::to_string),
        certificate_oidc_issuer: case.str("issuer").map(str::to_string),
        key: case.path("key"),
        trusted_root: case.path("trusted_root"),
        artifact,
    })
}

fn keyless_identity(case: &Case) -> KeylessIdentity {
    KeylessIdentity {
        subject: StringMatcher::exact(case.str("identity").unwrap()),
        issuer: case.str("issuer").map(StringMatcher::exact),
        claims: Vec::new(),
    }
}

/// cosign legacy image signature: from the layer descriptor, from separate
/// files, and through the image decision.
fn verify_legacy_case(case: &Case, shared: &Path) -> Vec<(String, Result<(), String>)> {
    let mut results = Vec::new();
    let trust = match trust_for(case, shared) {
        Ok(t) => t,
        Err(e) => return vec![("trust".into(), Err(e))],
    };
    let image: Digest = case.str("image_digest").unwrap().parse().unwrap();
    let payload = std::fs::read(case.path("payload").unwrap()).unwrap();
    let identity = keyless_identity(case);
    let check = |r: Result<pullgate::verify::VerifiedSignature, pullgate::verify::VerifyError>| -> Result<(), String> {
        let v = r.map_err(|e| e.to_string())?;
        match &v.signer {
            Signer::Certificate(c) => identity.check(c).map_err(|e| e.to_string()),
            Signer::Key { .. } => Err("unexpected key signer".into()),
        }
    };

    let from_layer = LegacySignature::from_layer_json(&case.read("layer_descriptor").unwrap(), payload.clone()).map_err(|e| e.to_string());
    results.push(("layer".into(), from_layer.and_then(|sig| check(trust.verify_legacy(&sig, &image, ExpectedSigner::Certificate)))));

    let files = LegacySignature {
        payload: payload.clone(),
        layer_digest: None,
        signature: case.read("signature").unwrap().trim().to_string(),
        certificate: case.read("certificate"),
        chain: None,
        rekor_bundle: case.read("rekor_bundle"),
        rfc3161_timestamp: None,
    };
    results.push(("files".into(), check(trust.verify_legacy(&files, &image, ExpectedSigner::Certificate))));

    let policy = IdentityPolicy::any_of(vec![Authority::keyless("case", vec![identity.clone()]).unwrap()]).unwrap();
    let decision = verify_image(&trust, &image, &[SignatureMaterial::Legacy { source: "files".into(), signature: files }], &policy);
    results.push(("decision".into(), if decision.allowed { Ok(()) } else { Err(decision.reason()) }));
    results
}

fn verify_set_case(case: &Case, shared: &Path) -> Result<(), String> {
    let trust = trust_for(case, shared)?;
    let set = RekorSetBundle::parse(&case.read("rekor_bundle").unwrap()).map_err(|e| e.to_string())?;
    trust.verify_rekor_set_bundle(&set).map(|_| ()).map_err(|e| e.to_string())
}

/// Whether the case's bundle is a cosign v3 image signature (DSSE statement
/// with the cosign signing predicate): then it also goes through the image
/// decision, with its digest as the pulled manifest.
fn is_cosign_image_bundle(case: &Case) -> bool {
    use base64::Engine as _;
    let Ok(text) = std::fs::read_to_string(case.path("bundle").unwrap()) else {
        return false;
    };
    let Ok(doc) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let Some(payload) = doc["dsseEnvelope"]["payload"].as_str() else {
        return false;
    };
    let Ok(payload) = base64::engine::general_purpose::STANDARD.decode(payload) else {
        return false;
    };
    serde_json::from_slice::<Value>(&payload).is_ok_and(|s| s["predicateType"] == "https://sigstore.dev/cosign/sign/v1")
}

fn verify_image_case(case: &Case, shared: &Path) -> Result<(), String> {
    let trust = trust_for(case, shared)?;
    let image: Digest = case.str("digest").unwrap().parse().map_err(|e: pullgate::digest::DigestError| e.to_string())?;
    let policy = IdentityPolicy::any_of(vec![Authority::keyless("case", vec![keyless_identity(case)]).unwrap()]).unwrap();
    let candidates =
        [SignatureMaterial::Bundle { source: case.name().to_string(), json: std::fs::read(case.path("bundle").unwrap()).unwrap() }];
    let decision = verify_image(&trust, &image, &candidates, &policy);
    if decision.allowed {
        Ok(())
    } else {
        Err(decision.reason())
    }
}

#[test]
fn every_vector_matches_expectation() {
    let Some(shared) = shared_dir() else {
        eprintln!("SKIP: shared vectors not found (set PULLGATE_SHARED or place them at ../shared)");
        return;
    };
    let vectors = shared.join("vectors");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(vectors.join("cases.json")).unwrap()).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut unknown = Vec::new();
    let mut record = |case: &Case, mode: &str, result: Result<(), String>| {
        checked += 1;
        let passed = result.is_ok();
        if let Err(reason) = &result {
            assert!(!reason.contains('\n'), "{} {mode}: reason is not one line: {reason:?}", case.name());
        }
        let status = if passed == case.expect_pass() { "ok " } else { "BAD" };
        println!(
            "{status} {:<55} {:<8} expect {:<4} {}",
            case.name(),
            mode,
            case.str("expect").unwrap_or("?"),
            result.err().unwrap_or_else(|| "verified".into())
        );
        if passed != case.expect_pass() {
            failures.push(format!("{} ({mode})", case.name()));
        }
    };
    for v in cases {
        let case = Case { dir: vectors.clone(), v };
        let format = case.str("format").unwrap_or_default();
        if format == "sigstore-bundle" {
            if case.str("artifact").is_some() {
                record(&case, "file", verify_bundle_case(&case, &shared, false));
            }
            record(&case, "digest", verify_bundle_case(&case, &shared, true));
            // The library's unmodified path must agree on every vector.
            record(&case, "ref", verify_bundle_case_mode(&case, &shared, true, Mode::Reference));
            if is_cosign_image_bundle(&case) {
                record(&case, "image", verify_image_case(&case, &shared));
            }
            let code = verify_bundle_cli(&case, true);
            record(&case, "cli", if code == 0 { Ok(()) } else { Err(format!("exit {code}")) });
            if case.str("artifact").is_some() {
                let code = verify_bundle_cli(&case, false);
                record(&case, "cli-file", if code == 0 { Ok(()) } else { Err(format!("exit {code}")) });
            }
        } else if case.str("payload").is_some() {
            for (mode, result) in verify_legacy_case(&case, &shared) {
                record(&case, &mode, result);
            }
        } else if case.str("rekor_bundle").is_some() {
            record(&case, "set", verify_set_case(&case, &shared));
        } else {
            unknown.push(format!("{}: unknown format {format:?}", case.name()));
        }
    }
    println!("{checked} checks");
    assert!(unknown.is_empty(), "{unknown:#?}");
    assert!(failures.is_empty(), "vectors not matching expect: {failures:#?}");
}
