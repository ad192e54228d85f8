//! Required attestations through the image decision: the test Sigstore stack signs real SLSA v1
//! provenance and a cosign vulnerability-scan predicate, and the engine judges them with the
//! same steps as signatures, plus the policy's conditions. The last test takes cosign's own
//! on-wire attestation from `../shared/vectors` (`cosign_oci-attestation`) through the same path.
//! The `legacy_att_*` tests do the same for cosign's legacy `.att` layers (DSSE envelope, Rekor
//! SET of an `intoto/0.0.2` or `dsse/0.0.1` entry), rebuilt into bundles as enforcement does.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use pullgate::policy::{
    AttestationRequirement, Authority, AuthoritySigners, Condition, IdentityPolicy, JsonPath, KeylessIdentity, StringMatcher, Test,
};
use pullgate::verify::attestation::STATEMENT_V01;
use pullgate::verify::image::verify_image_at;
use pullgate::verify::legacy_attestation::DSSE_ENVELOPE_MEDIA_TYPE;
use pullgate::verify::{verify_image, Digest, ImageDecision, LegacyAttestation, PublicKey, SignatureMaterial};
use serde_json::{json, Value};
use support::sigstore::certs::San;
use support::sigstore::keys::{KeyAlg, TestKey};
use support::sigstore::{image_digest, rfc3339, SignOptions, Stack, DEFAULT_ISSUER, DEFAULT_SAN};

const SLSA: &str = "https://slsa.dev/provenance/v1";
const VULN: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
const BUILDER: &str = "https://github.com/pullgate/demo/.github/workflows/release.yml@refs/heads/main";
const SCANNER: &str = "https://github.com/pullgate/scanner/.github/workflows/scan.yml@refs/heads/main";

/// SLSA v1 provenance as GitHub's builder writes it, for `workflow_ref`.
fn provenance(workflow_ref: &str) -> Value {
    json!({
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {"workflow": {
                "ref": workflow_ref,
                "repository": "https://github.com/pullgate/demo",
                "path": ".github/workflows/release.yml"
            }},
            "internalParameters": {"github": {"event_name": "push", "repository_id": "1", "repository_owner_id": "2"}},
            "resolvedDependencies": [{
                "uri": format!("git+https://github.com/pullgate/demo@{workflow_ref}"),
                "digest": {"gitCommit": "0123456789abcdef0123456789abcdef01234567"}
            }]
        },
        "runDetails": {
            "builder": {"id": "https://github.com/actions/runner/github-hosted"},
            "metadata": {"invocationId": "https://github.com/pullgate/demo/actions/runs/1/attempts/1"}
        }
    })
}

/// cosign's vulnerability-scan predicate, finished at `finished` (seconds).
fn scan(finished: i64, critical: u32) -> Value {
    json!({
        "invocation": {"uri": "https://github.com/pullgate/scanner/actions/runs/7", "event_id": "7", "builder.id": "github"},
        "scanner": {
            "uri": "pkg:github/aquasecurity/trivy@0.50.0",
            "version": "0.50.0",
            "result": {"summary": {"critical": critical, "high": 2}}
        },
        "metadata": {"scanStartedOn": rfc3339(finished - 60), "scanFinishedOn": rfc3339(finished)}
    })
}

fn condition(path: &str, test: Test) -> Condition {
    Condition { path: JsonPath::parse(path).unwrap(), test }
}

/// The release workflow signs; it must also have attested SLSA provenance from `main`, and the
/// scanner must have attested a scan no older than a week with no critical findings.
fn policy() -> IdentityPolicy {
    let provenance = AttestationRequirement {
        predicate_type: SLSA.into(),
        signers: None,
        conditions: vec![
            condition("buildDefinition.externalParameters.workflow.ref", Test::Equals("refs/heads/main".into())),
            condition(
                "buildDefinition.externalParameters.workflow.repository",
                Test::Matches(StringMatcher::regex(r"https://github\.com/pullgate/.*").unwrap()),
            ),
            condition(
                "buildDefinition.resolvedDependencies[0].digest.gitCommit",
                Test::Matches(StringMatcher::regex("[0-9a-f]{40}").unwrap()),
            ),
        ],
    };
    let scanned = AttestationRequirement {
        predicate_type: VULN.into(),
        signers: Some(AuthoritySigners::Keyless(vec![KeylessIdentity::exact(SCANNER, DEFAULT_ISSUER)])),
        conditions: vec![
            condition("metadata.scanFinishedOn", Test::NotOlderThan(Duration::from_secs(7 * 86400), "7d".into())),
            condition("scanner.result.summary.critical", Test::OneOf(vec!["0".into()])),
        ],
    };
    let authority = Authority::keyless("release", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)])
        .unwrap()
        .with_attestations(vec![provenance, scanned]);
    IdentityPolicy::any_of(vec![authority]).unwrap()
}

fn signed_by(stack: &Stack, san: &str) -> SignOptions {
    let mut opts = stack.options();
    opts.identity.san = San::Uri(san.into());
    opts
}

fn material(name: &str, json: String) -> SignatureMaterial {
    SignatureMaterial::Bundle { source: name.into(), json: json.into_bytes() }
}

struct Fixture {
    stack: Stack,
    image: Digest,
}

impl Fixture {
    fn new(n: u64) -> Fixture {
        Fixture { stack: Stack::new(), image: image_digest(n) }
    }
    fn signature(&mut self) -> SignatureMaterial {
        let opts = self.stack.options();
        material("signature", self.stack.sign_image_v3(&self.image, &opts).json())
    }
    fn provenance(&mut self, workflow_ref: &str) -> SignatureMaterial {
        let opts = signed_by(&self.stack, BUILDER);
        material("provenance", self.stack.attest_image(&self.image, &opts, SLSA, provenance(workflow_ref)).json())
    }
    fn scan(&mut self, age: i64) -> SignatureMaterial {
        let opts = signed_by(&self.stack, SCANNER);
        let finished = self.stack.now - age;
        material("scan", self.stack.attest_image(&self.image, &opts, VULN, scan(finished, 0)).json())
    }
    fn decide(&self, candidates: &[SignatureMaterial]) -> ImageDecision {
        verify_image(&self.stack.trust(), &self.image, candidates, &policy())
    }
}

#[test]
fn signature_and_every_attestation_allow() {
    let mut f = Fixture::new(40);
    // The builder's provenance is signed by the release workflow itself (the authority's own
    // identity: BUILDER is DEFAULT_SAN).
    assert_eq!(BUILDER, DEFAULT_SAN);
    let candidates = [f.signature(), f.provenance("refs/heads/main"), f.scan(3600)];
    let d = f.decide(&candidates);
    assert!(d.allowed, "{}", d.reason());
    assert!(d.reason().contains(&format!("attested: {SLSA}, {VULN}")), "{}", d.reason());
    // Attestations are not judged as signatures, and each says how it was judged.
    assert_eq!(d.candidates.len(), 1, "{:?}", d.candidates);
    assert_eq!(d.attestations.len(), 2);
    for a in &d.attestations {
        assert!(a.judgments.iter().all(|j| j.satisfied), "{a:?}");
        assert!(a.signer.is_some() && a.verdict().contains("satisfies authority release"), "{}", a.verdict());
    }
    assert!(d.requirements.iter().all(|r| r.satisfied && r.signed));
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["attestations"][0]["predicate_type"], SLSA);
}

#[test]
fn missing_attestation_is_named() {
    let mut f = Fixture::new(41);
    let d = {
        let c = [f.signature(), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    assert_eq!(d.reason(), format!("attestation {SLSA}: not found"));
    // No signature at all: the signature is the reason, as before.
    let d = {
        let c = [f.provenance("refs/heads/main"), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    assert_eq!(d.reason(), "no signatures found");
}

#[test]
fn wrong_signer_is_refused() {
    let mut f = Fixture::new(42);
    // Provenance signed by a fork's workflow; the scan by the release workflow instead of the
    // scanner the requirement names.
    let opts = signed_by(&f.stack, "https://github.com/evil/fork/.github/workflows/release.yml@refs/heads/main");
    let forged = material("forged", f.stack.attest_image(&f.image, &opts, SLSA, provenance("refs/heads/main")).json());
    let d = {
        let c = [f.signature(), forged, f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    let r = d.reason();
    assert!(r.starts_with(&format!("attestation {SLSA}: identity mismatch")) && r.contains("evil/fork"), "{r}");

    let opts = f.stack.options();
    let by_release = material("scan-by-release", f.stack.attest_image(&f.image, &opts, VULN, scan(f.stack.now, 0)).json());
    let d = {
        let c = [f.signature(), f.provenance("refs/heads/main"), by_release];
        f.decide(&c)
    };
    assert!(!d.allowed);
    assert!(d.reason().starts_with(&format!("attestation {VULN}: identity mismatch")), "{}", d.reason());
}

#[test]
fn failing_condition_names_the_field() {
    let mut f = Fixture::new(43);
    let d = {
        let c = [f.signature(), f.provenance("refs/heads/evil"), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    assert_eq!(
        d.reason(),
        format!(r#"attestation {SLSA}: buildDefinition.externalParameters.workflow.ref = "refs/heads/evil", want "refs/heads/main""#)
    );
    // A second, good provenance satisfies the requirement: any one suffices.
    let d = {
        let c = [f.signature(), f.provenance("refs/heads/evil"), f.provenance("refs/heads/main"), f.scan(60)];
        f.decide(&c)
    };
    assert!(d.allowed, "{}", d.reason());
    // A critical finding fails `oneOf`.
    let opts = signed_by(&f.stack, SCANNER);
    let bad = material("scan", f.stack.attest_image(&f.image, &opts, VULN, scan(f.stack.now, 3)).json());
    let d = {
        let c = [f.signature(), f.provenance("refs/heads/main"), bad];
        f.decide(&c)
    };
    assert_eq!(d.reason(), format!(r#"attestation {VULN}: scanner.result.summary.critical = 3, want one of ["0"]"#));
}

#[test]
fn stale_scan_is_refused() {
    let mut f = Fixture::new(44);
    let d = {
        let c = [f.signature(), f.provenance("refs/heads/main"), f.scan(30 * 86400)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    let r = d.reason();
    assert!(
        r.starts_with(&format!("attestation {VULN}: metadata.scanFinishedOn = \"")) && r.ends_with("want a time no older than 7d"),
        "{r}"
    );
    // The same scan, judged at its time, passes: the clock is the only difference.
    let now = jiff::Timestamp::from_second(f.stack.now - 30 * 86400 + 60).unwrap();
    let candidates = [f.signature(), f.provenance("refs/heads/main"), f.scan(30 * 86400)];
    assert!(verify_image_at(&f.stack.trust(), &f.image, &candidates, &policy(), now).allowed);
}

#[test]
fn tampered_or_misbound_attestations_are_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut f = Fixture::new(45);
    // The payload edited after signing: main -> a valid statement that no longer verifies.
    let opts = signed_by(&f.stack, BUILDER);
    let mut bundle = f.stack.attest_image(&f.image, &opts, SLSA, provenance("refs/heads/evil")).bundle;
    let payload = b64.decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
    let edited = String::from_utf8(payload).unwrap().replace("refs/heads/evil", "refs/heads/main");
    bundle["dsseEnvelope"]["payload"] = json!(b64.encode(edited));
    let d = {
        let c = [f.signature(), material("tampered", bundle.to_string()), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    let r = d.reason();
    assert!(r.starts_with(&format!("attestation {SLSA}: ")) && !r.contains("want \"refs/heads/main\""), "{r}");
    assert!(d.attestations[0].signer.is_none(), "{:?}", d.attestations[0]);

    // Provenance of another image.
    let other = image_digest(99);
    let about_other = material("other", f.stack.attest_image(&other, &opts, SLSA, provenance("refs/heads/main")).json());
    let d = {
        let c = [f.signature(), about_other, f.scan(60)];
        f.decide(&c)
    };
    assert!(d.reason().contains("subject digest mismatch"), "{}", d.reason());
}

#[test]
fn key_signed_attestation_with_a_named_key() {
    let mut f = Fixture::new(46);
    let key = TestKey::generate(KeyAlg::P256);
    let public = PublicKey::from_pem(&key.public_pem()).unwrap();
    let mut opts = f.stack.options();
    opts.predicate_type = SLSA.into();
    opts.predicate = Some(provenance("refs/heads/main"));
    let keyed = material("keyed", f.stack.sign_image_v3_with_key(&f.image, &opts, &key).json());
    let requirement =
        AttestationRequirement { predicate_type: SLSA.into(), signers: Some(AuthoritySigners::Keys(vec![public])), conditions: vec![] };
    let authority = Authority::keyless("release", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)])
        .unwrap()
        .with_attestations(vec![requirement]);
    let policy = IdentityPolicy::any_of(vec![authority]).unwrap();
    let d = {
        let c = [f.signature(), keyed];
        verify_image(&f.stack.trust(), &f.image, &c, &policy)
    };
    assert!(d.allowed, "{}", d.reason());
    // The builder's keyless provenance does not satisfy a key requirement.
    let d = {
        let c = [f.signature(), f.provenance("refs/heads/main")];
        verify_image(&f.stack.trust(), &f.image, &c, &policy)
    };
    assert!(!d.allowed && d.reason().starts_with(&format!("attestation {SLSA}: ")), "{}", d.reason());
}

#[test]
fn without_requirements_attestations_stay_signature_candidates() {
    // Unchanged behaviour: a policy without attestations judges every bundle as a signature.
    let mut f = Fixture::new(47);
    let plain =
        IdentityPolicy::any_of(vec![Authority::keyless("release", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)]).unwrap()])
            .unwrap();
    let d = {
        let c = [f.provenance("refs/heads/main")];
        verify_image(&f.stack.trust(), &f.image, &c, &plain)
    };
    assert!(!d.allowed && d.attestations.is_empty() && d.requirements.is_empty());
    assert!(d.reason().contains("predicate type is"), "{}", d.reason());
    let d = {
        let c = [f.signature(), f.provenance("refs/heads/main")];
        verify_image(&f.stack.trust(), &f.image, &c, &plain)
    };
    assert!(d.allowed && !d.reason().contains("attested"), "{}", d.reason());
}

fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("PULLGATE_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    dir.join("vectors/cosign_oci-attestation/bundle.sigstore.json").is_file().then_some(dir)
}

#[test]
fn cosign_on_wire_attestation_vector() {
    let Some(shared) = shared_dir() else {
        eprintln!("SKIP: ../shared/vectors/cosign_oci-attestation not found (set PULLGATE_SHARED)");
        return;
    };
    let dir = shared.join("vectors/cosign_oci-attestation");
    let trust = pullgate::verify::TrustMaterial::from_json(&std::fs::read_to_string(dir.join("trusted_root.json")).unwrap()).unwrap();
    let image: Digest = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4".parse().unwrap();
    let bundle = material("cosign_oci-attestation", std::fs::read_to_string(dir.join("bundle.sigstore.json")).unwrap());
    // cosign attest's custom predicate, Statement v0.1; signed with a GitHub-login identity.
    let requirement = |subject: &str| AttestationRequirement {
        predicate_type: "https://cosign.sigstore.dev/attestation/v1".into(),
        signers: Some(AuthoritySigners::Keyless(vec![KeylessIdentity::exact(subject, "https://github.com/login/oauth")])),
        conditions: vec![
            condition("Data", Test::Equals("{\"foo\": \"bar\"}\n".into())),
            condition("Timestamp", Test::NotOlderThan(Duration::from_secs(86400), "1d".into())),
        ],
    };
    let decide = |subject: &str, now: &str| {
        let authority = Authority::keyless("release", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)])
            .unwrap()
            .with_attestations(vec![requirement(subject)]);
        let policy = IdentityPolicy::any_of(vec![authority]).unwrap();
        verify_image_at(&trust, &image, std::slice::from_ref(&bundle), &policy, now.parse().unwrap())
    };
    let d = decide("cody@soyland.com", "2025-03-01T00:00:00Z");
    assert_eq!(d.attestations.len(), 1, "{d:?}");
    assert!(d.requirements[0].satisfied, "{:?}", d.requirements);
    assert_eq!(d.attestations[0].signer.as_deref(), Some("cody@soyland.com"));
    // The image itself carries no signature in this vector: the decision still needs one.
    assert!(!d.allowed && d.reason() == "no signatures found", "{}", d.reason());
    // Wrong identity (the `_wrong-identity` case) and a stale attestation are refused.
    let d = decide("wrong", "2025-03-01T00:00:00Z");
    assert!(d.requirements[0].reason.as_deref().unwrap().contains("identity mismatch"), "{:?}", d.requirements);
    let d = decide("cody@soyland.com", "2025-04-01T00:00:00Z");
    let why = d.requirements[0].reason.clone().unwrap();
    assert_eq!(
        why,
        "attestation https://cosign.sigstore.dev/attestation/v1: Timestamp = \"2025-02-28T19:18:11Z\", want a time no older than 1d"
    );
}

// --- cosign's legacy `.att` tag -----------------------------------------------------------------

/// The bundle a `.att` layer is rebuilt into, through the layer form the registry gives
/// (media type, digest, annotations, blob), as the enforcement path does.
fn from_att(name: &str, att: &LegacyAttestation) -> Result<SignatureMaterial, String> {
    let digest = att.layer_digest.as_ref().map(ToString::to_string).unwrap_or_default();
    let layer = LegacyAttestation::from_layer(DSSE_ENVELOPE_MEDIA_TYPE, &digest, &att.annotations(), att.envelope.clone())
        .map_err(|e| e.to_string())?;
    let json = layer.to_bundle_json().map_err(|e| e.to_string())?;
    Ok(material(name, String::from_utf8(json).unwrap()))
}

impl Fixture {
    /// Provenance as `cosign attest` v2 writes it: Statement v0.1, `intoto/0.0.2` entry.
    fn legacy_provenance(&mut self, workflow_ref: &str, san: &str) -> LegacyAttestation {
        let mut opts = signed_by(&self.stack, san);
        opts.statement_type = STATEMENT_V01.into();
        self.stack.attest_image_legacy(&self.image, &opts, SLSA, provenance(workflow_ref), INTOTO)
    }
    fn legacy_scan(&mut self, age: i64, entry: (&'static str, &'static str)) -> LegacyAttestation {
        let opts = signed_by(&self.stack, SCANNER);
        let finished = self.stack.now - age;
        self.stack.attest_image_legacy(&self.image, &opts, VULN, scan(finished, 0), entry)
    }
}

const INTOTO: (&str, &str) = ("intoto", "0.0.2");
const DSSE: (&str, &str) = ("dsse", "0.0.1");

/// Re-points `att` at an edited envelope (as a registry would serve it: the layer digest is the
/// new blob's).
fn with_envelope(att: &LegacyAttestation, envelope: Value) -> LegacyAttestation {
    let mut att = att.clone();
    att.envelope = serde_json::to_vec(&envelope).unwrap();
    att.layer_digest = Some(Digest::compute(pullgate::verify::DigestAlgorithm::Sha256, &att.envelope));
    att
}

#[test]
fn legacy_att_layers_are_judged_like_bundles() {
    let mut f = Fixture::new(50);
    let provenance = f.legacy_provenance("refs/heads/main", BUILDER);
    // The Rekor body is an intoto/0.0.2 entry with the envelope's payload type, the signature
    // base64-encoded twice and the payload hash; its SET is the stack's Rekor key's.
    let set = pullgate::verify::RekorSetBundle::parse(provenance.rekor_bundle.as_deref().unwrap()).unwrap();
    let body: Value = serde_json::from_slice(&set.body_bytes()).unwrap();
    assert_eq!((body["kind"].as_str(), body["apiVersion"].as_str()), (Some("intoto"), Some("0.0.2")));
    assert!(body["spec"]["content"]["payloadHash"]["value"].is_string());
    assert!(f.stack.trust().verify_rekor_set_bundle(&set).is_ok());

    for entry in [INTOTO, DSSE] {
        let candidates =
            [f.signature(), from_att(".att provenance", &provenance).unwrap(), from_att(".att scan", &f.legacy_scan(3600, entry)).unwrap()];
        let d = f.decide(&candidates);
        assert!(d.allowed, "{entry:?}: {}", d.reason());
        assert!(d.reason().contains(&format!("attested: {SLSA}, {VULN}")), "{}", d.reason());
        assert_eq!(d.attestations.len(), 2);
        assert_eq!(d.attestations[0].source, ".att provenance");
        assert_eq!(d.attestations[0].signer.as_deref(), Some(BUILDER));
    }
    // A `.att` layer and a v3 referrer mix: either satisfies its own requirement.
    let candidates = [f.signature(), from_att(".att", &provenance).unwrap(), f.scan(60)];
    assert!(f.decide(&candidates).allowed);
    // A failing condition is reported as for a bundle.
    let evil = f.legacy_provenance("refs/heads/evil", BUILDER);
    let d = {
        let c = [f.signature(), from_att(".att", &evil).unwrap(), f.scan(60)];
        f.decide(&c)
    };
    assert_eq!(
        d.reason(),
        format!(r#"attestation {SLSA}: buildDefinition.externalParameters.workflow.ref = "refs/heads/evil", want "refs/heads/main""#)
    );
}

#[test]
fn legacy_att_tampered_payload_is_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut f = Fixture::new(51);
    let att = f.legacy_provenance("refs/heads/evil", BUILDER);
    let mut envelope: Value = serde_json::from_slice(&att.envelope).unwrap();
    let payload = b64.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let edited = String::from_utf8(payload).unwrap().replace("refs/heads/evil", "refs/heads/main");
    envelope["payload"] = json!(b64.encode(edited));
    let tampered = with_envelope(&att, envelope);
    let d = {
        let c = [f.signature(), from_att(".att", &tampered).unwrap(), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    let r = d.reason();
    assert!(r.starts_with(&format!("attestation {SLSA}: invalid signature")) && !r.contains("want \"refs/heads/main\""), "{r}");
    assert!(d.attestations[0].signer.is_none(), "{:?}", d.attestations[0]);
    // The blob no longer hashing to its layer digest is refused before anything else.
    let mut swapped = tampered.clone();
    swapped.layer_digest = att.layer_digest.clone();
    let err = from_att(".att", &swapped).unwrap_err();
    assert!(err.contains("payload digest mismatch"), "{err}");
}

#[test]
fn legacy_att_set_must_be_over_this_envelope() {
    let mut f = Fixture::new(52);
    let good = f.legacy_provenance("refs/heads/main", BUILDER);
    let other = f.legacy_provenance("refs/heads/main", BUILDER);
    // A valid SET, but over another attestation's entry (another signature and key).
    let mut borrowed = good.clone();
    borrowed.rekor_bundle = other.rekor_bundle.clone();
    let d = {
        let c = [f.signature(), from_att(".att", &borrowed).unwrap(), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    let r = d.reason();
    assert!(r.starts_with(&format!("attestation {SLSA}: log entry does not match")) && d.attestations[0].signer.is_none(), "{r}");
    // This attestation's body under the other entry's SET: the SET does not verify.
    let mut spliced: Value = serde_json::from_str(other.rekor_bundle.as_deref().unwrap()).unwrap();
    let own: Value = serde_json::from_str(good.rekor_bundle.as_deref().unwrap()).unwrap();
    spliced["Payload"]["body"] = own["Payload"]["body"].clone();
    let mut forged = good.clone();
    forged.rekor_bundle = Some(spliced.to_string());
    let d = {
        let c = [f.signature(), from_att(".att", &forged).unwrap(), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed && d.reason().starts_with(&format!("attestation {SLSA}: invalid signed entry timestamp")), "{}", d.reason());
    // No SET at all: no proof the attestation was logged.
    let mut no_set = good.clone();
    no_set.rekor_bundle = None;
    assert!(from_att(".att", &no_set).unwrap_err().contains("dev.sigstore.cosign/bundle"));
}

#[test]
fn legacy_att_wrong_signer_or_subject_is_refused() {
    let mut f = Fixture::new(53);
    let forged = f.legacy_provenance("refs/heads/main", "https://github.com/evil/fork/.github/workflows/release.yml@refs/heads/main");
    let d = {
        let c = [f.signature(), from_att(".att", &forged).unwrap(), f.scan(60)];
        f.decide(&c)
    };
    assert!(!d.allowed);
    let r = d.reason();
    assert!(r.starts_with(&format!("attestation {SLSA}: identity mismatch")) && r.contains("evil/fork"), "{r}");

    // Provenance of another image, pushed on this image's `.att` tag.
    let mut opts = signed_by(&f.stack, BUILDER);
    opts.statement_type = STATEMENT_V01.into();
    let about_other = f.stack.attest_image_legacy(&image_digest(98), &opts, SLSA, provenance("refs/heads/main"), INTOTO);
    let d = {
        let c = [f.signature(), from_att(".att", &about_other).unwrap(), f.scan(60)];
        f.decide(&c)
    };
    assert!(d.reason().contains("subject digest mismatch"), "{}", d.reason());
}

#[test]
fn legacy_att_malformed_layers_are_refused_with_a_reason() {
    let mut f = Fixture::new(54);
    let att = f.legacy_provenance("refs/heads/main", BUILDER);
    let digest = att.layer_digest.as_ref().unwrap().to_string();
    // A `.sig` layer media type is not an attestation.
    let err = LegacyAttestation::from_layer(
        "application/vnd.dev.cosign.simplesigning.v1+json",
        &digest,
        &att.annotations(),
        att.envelope.clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("application/vnd.dsse.envelope.v1+json"), "{err}");
    // Not an envelope, two signatures, an unsupported entry kind.
    let not_json = with_envelope(&att, json!("nope"));
    assert!(from_att(".att", &not_json).unwrap_err().contains("DSSE envelope"));
    let mut envelope: Value = serde_json::from_slice(&att.envelope).unwrap();
    let sig = envelope["signatures"][0].clone();
    envelope["signatures"] = json!([sig.clone(), sig]);
    assert!(from_att(".att", &with_envelope(&att, envelope)).unwrap_err().contains("2 signatures"));
    let mut old: Value = serde_json::from_str(att.rekor_bundle.as_deref().unwrap()).unwrap();
    old["Payload"]["body"] =
        json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, r#"{"kind":"intoto","apiVersion":"0.0.1","spec":{}}"#));
    let mut v001 = att.clone();
    v001.rekor_bundle = Some(old.to_string());
    let err = from_att(".att", &v001).unwrap_err();
    assert!(err.contains("intoto/0.0.1"), "{err}");
}

#[test]
fn legacy_att_signed_with_a_key() {
    // `cosign attest --key`: no certificate annotations; the configured key verifies, and the
    // logged entry names that key.
    let mut f = Fixture::new(56);
    let key = TestKey::generate(KeyAlg::P256);
    let public = PublicKey::from_pem(&key.public_pem()).unwrap();
    let mut opts = f.stack.options();
    opts.statement_type = STATEMENT_V01.into();
    let keyed = f.stack.attest_image_legacy_with_key(&f.image, &opts, SLSA, provenance("refs/heads/main"), &key);
    assert!(keyed.certificate.is_none() && keyed.chain.is_none());
    let policy = |public: PublicKey| {
        let requirement =
            AttestationRequirement { predicate_type: SLSA.into(), signers: Some(AuthoritySigners::Keys(vec![public])), conditions: vec![] };
        let authority = Authority::keyless("release", vec![KeylessIdentity::exact(DEFAULT_SAN, DEFAULT_ISSUER)])
            .unwrap()
            .with_attestations(vec![requirement]);
        IdentityPolicy::any_of(vec![authority]).unwrap()
    };
    let d = {
        let c = [f.signature(), from_att(".att", &keyed).unwrap()];
        verify_image(&f.stack.trust(), &f.image, &c, &policy(public))
    };
    assert!(d.allowed, "{}", d.reason());
    // Another key does not verify it.
    let other = PublicKey::from_pem(&TestKey::generate(KeyAlg::P256).public_pem()).unwrap();
    let d = {
        let c = [f.signature(), from_att(".att", &keyed).unwrap()];
        verify_image(&f.stack.trust(), &f.image, &c, &policy(other))
    };
    assert!(!d.allowed && d.reason().starts_with(&format!("attestation {SLSA}: ")), "{}", d.reason());
}

#[test]
fn freshness_deadline_of_an_allowed_decision() {
    // The scan requirement holds until its scan is 7 days old; with two scans, until the newer
    // one is; the provenance requirement has no time condition.
    let mut f = Fixture::new(55);
    let candidates = [f.signature(), f.provenance("refs/heads/main"), f.scan(3600), f.scan(2 * 86400)];
    let d = f.decide(&candidates);
    assert!(d.allowed, "{}", d.reason());
    let until = |t: &str| d.requirements.iter().find(|r| r.predicate_type == t).unwrap().fresh_until;
    assert_eq!(until(SLSA), None);
    assert_eq!(until(VULN), Some(jiff::Timestamp::from_second(f.stack.now - 3600 + 7 * 86400).unwrap()));
}
