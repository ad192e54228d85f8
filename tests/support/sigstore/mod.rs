//! A complete, offline Sigstore stack for tests.
//!
//! - A Fulcio-like CA: P-384 root and intermediate issuing short-lived P-256
//!   leaf certificates with the Fulcio OID extensions (issuer v1 `.1.1` and v2
//!   `.1.8`, GitHub workflow claims) and an embedded SCT from a test CT log.
//! - A Rekor-like log: RFC 6962 Merkle tree, signed checkpoints, inclusion
//!   proofs and SETs, with `dsse`, `hashedrekord` and `rekord` entries.
//! - An RFC 3161 TSA (P-256 leaf under a P-384 intermediate and root).
//! - The `trusted_root.json` describing all of it.
//!
//! It signs any image digest as a cosign v3 bundle (DSSE in-toto Statement v1,
//! predicate `https://sigstore.dev/cosign/sign/v1`) or as a legacy `.sig`
//! simple-signing layer, keyless or with a key; it attests as a cosign v3
//! bundle or as a legacy `.att` DSSE layer (`intoto/0.0.2` or `dsse/0.0.1`
//! entry and SET). Options let a test produce
//! material that is wrong in exactly one respect; the rest of the tampering
//! is done on the output JSON.

pub mod certs;
pub mod ct;
pub mod keys;
pub mod rekor;
pub mod tsa;

use base64::Engine as _;
use serde_json::{json, Value};

use certs::{fulcio_claim, CertSpec, IssuedCert, San, EKU_CODE_SIGNING, EKU_TIME_STAMPING};
use keys::{KeyAlg, TestKey};
use pullgate::verify::{Digest, LegacyAttestation, LegacySignature, TrustMaterial};
use rekor::{LoggedEntry, Rekor};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// DN of the test Fulcio root.
pub const FULCIO_ROOT_DN: &str = "CN=pullgate test fulcio root,O=pullgate.test";
/// DN of the test Fulcio intermediate.
pub const FULCIO_INTERMEDIATE_DN: &str = "CN=pullgate test fulcio intermediate,O=pullgate.test";
/// Default signer identity (a GitHub Actions workflow).
pub const DEFAULT_SAN: &str = "https://github.com/pullgate/demo/.github/workflows/release.yml@refs/heads/main";
/// Default OIDC issuer.
pub const DEFAULT_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// cosign v3 image signature predicate.
pub const COSIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// in-toto Statement v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";

/// Who the leaf certificate says signed.
#[derive(Debug, Clone)]
pub struct Identity {
    /// SAN.
    pub san: San,
    /// OIDC issuer, written to both `.1.1` and `.1.8`; `None` omits both.
    pub issuer: Option<String>,
    /// Further Fulcio claims by number (`.1.N`).
    pub claims: Vec<(u32, String)>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            san: San::Uri(DEFAULT_SAN.to_string()),
            issuer: Some(DEFAULT_ISSUER.to_string()),
            claims: vec![
                (2, "push".into()),
                (3, "0123456789abcdef0123456789abcdef01234567".into()),
                (4, "release".into()),
                (5, "pullgate/demo".into()),
                (6, "refs/heads/main".into()),
                (9, DEFAULT_SAN.into()),
                (11, "github-hosted".into()),
                (12, "https://github.com/pullgate/demo".into()),
                (14, "refs/heads/main".into()),
                (20, "push".into()),
            ],
        }
    }
}

/// How the leaf's SCT is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SctMode {
    /// Signed by the trusted CT log.
    Valid,
    /// No SCT extension.
    Missing,
    /// Signed by a CT log that is not in the trusted root.
    UntrustedLog,
}

/// Which Rekor entry kind a legacy signature is logged as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyKind {
    /// `hashedrekord/0.0.1` (cosign since 2022).
    HashedRekord,
    /// `rekord/0.0.1` (cosign 2021).
    Rekord,
}

/// Options for one signature; the defaults produce valid material.
#[derive(Debug, Clone)]
pub struct SignOptions {
    /// Leaf identity.
    pub identity: Identity,
    /// Signing (integrated) time, seconds; default five minutes ago.
    pub signing_time: i64,
    /// Leaf notBefore; default signing time - 30 s.
    pub cert_not_before: Option<i64>,
    /// Leaf notAfter; default signing time + 10 min.
    pub cert_not_after: Option<i64>,
    /// SCT production.
    pub sct: SctMode,
    /// Issue the leaf from a CA that is not in the trusted root (same DN).
    pub untrusted_ca: bool,
    /// Add an RFC 3161 timestamp.
    pub tsa: bool,
    /// Timestamp time, default the signing time.
    pub tsa_time: Option<i64>,
    /// Include a transparency log entry.
    pub tlog: bool,
    /// Include the inclusion proof (v0.3 requires it).
    pub inclusion_proof: bool,
    /// Statement `_type`.
    pub statement_type: String,
    /// Statement `predicateType`.
    pub predicate_type: String,
    /// Statement `predicate` (attestations); `None` omits it, as cosign's signature does.
    pub predicate: Option<Value>,
    /// Override the subject digest (hex) the statement names.
    pub subject_hex: Option<String>,
    /// DSSE payload type.
    pub payload_type: String,
    /// Legacy: `critical.type`.
    pub critical_type: String,
    /// Legacy: log entry kind.
    pub legacy_kind: LegacyKind,
}

impl SignOptions {
    /// Valid defaults relative to `now`.
    pub fn new(now: i64) -> Self {
        Self {
            identity: Identity::default(),
            signing_time: now - 300,
            cert_not_before: None,
            cert_not_after: None,
            sct: SctMode::Valid,
            untrusted_ca: false,
            tsa: false,
            tsa_time: None,
            tlog: true,
            inclusion_proof: true,
            statement_type: STATEMENT_V1.into(),
            predicate_type: COSIGN_PREDICATE.into(),
            predicate: None,
            subject_hex: None,
            payload_type: "application/vnd.in-toto+json".into(),
            critical_type: "cosign container image signature".into(),
            legacy_kind: LegacyKind::HashedRekord,
        }
    }
}

/// Validity windows and omissions for the generated trusted root.
#[derive(Debug, Clone, Default)]
pub struct RootOptions {
    /// Rekor key `validFor` (start, optional end).
    pub rekor_window: Option<(i64, Option<i64>)>,
    /// CT log key `validFor`.
    pub ct_window: Option<(i64, Option<i64>)>,
    /// Fulcio CA `validFor`.
    pub ca_window: Option<(i64, Option<i64>)>,
    /// TSA `validFor`.
    pub tsa_window: Option<(i64, Option<i64>)>,
    /// Leave the CT log out.
    pub omit_ctlog: bool,
}

/// The stack: keys, CA and TSA certificates, and the log.
pub struct Stack {
    /// "Now" for everything the stack produces.
    pub now: i64,
    /// Fulcio root key (P-384) and certificate.
    pub fulcio_root_key: TestKey,
    /// Fulcio root certificate.
    pub fulcio_root: IssuedCert,
    /// Fulcio intermediate key (P-384).
    pub fulcio_intermediate_key: TestKey,
    /// Fulcio intermediate certificate.
    pub fulcio_intermediate: IssuedCert,
    /// An intermediate with the same DN that the trusted root does not know.
    pub rogue_intermediate_key: TestKey,
    /// Its self-signed certificate, which a forger would ship as "chain".
    pub rogue_intermediate: IssuedCert,
    /// CT log key (P-256).
    pub ct_key: TestKey,
    /// A CT log key the trusted root does not know.
    pub rogue_ct_key: TestKey,
    /// The transparency log.
    pub rekor: Rekor,
    /// TSA root key and certificate (P-384).
    pub tsa_root_key: TestKey,
    /// TSA root certificate.
    pub tsa_root: IssuedCert,
    /// TSA intermediate key (P-384).
    pub tsa_intermediate_key: TestKey,
    /// TSA intermediate certificate.
    pub tsa_intermediate: IssuedCert,
    /// TSA signing key (P-256).
    pub tsa_leaf_key: TestKey,
    /// TSA signing certificate.
    pub tsa_leaf: IssuedCert,
    serial: u64,
}

/// A signed cosign v3 bundle and the pieces a test may want to look at.
#[derive(Debug, Clone)]
pub struct SignedBundle {
    /// The bundle JSON.
    pub bundle: Value,
    /// The leaf certificate (keyless).
    pub leaf: Option<IssuedCert>,
    /// The log entry.
    pub entry: Option<LoggedEntry>,
}

impl SignedBundle {
    /// Serialized bundle.
    pub fn json(&self) -> String {
        self.bundle.to_string()
    }
}

const YEAR: i64 = 365 * 24 * 3600;

impl Stack {
    /// A fresh stack with new keys; "now" is the current time.
    pub fn new() -> Self {
        let now = jiff::Timestamp::now().as_second();
        Self::at(now)
    }

    /// A fresh stack whose "now" is `now`.
    pub fn at(now: i64) -> Self {
        let fulcio_root_key = TestKey::generate(KeyAlg::P384);
        let fulcio_root = certs::issue(
            &CertSpec::ca(FULCIO_ROOT_DN, now - 2 * YEAR, now + 10 * YEAR),
            &fulcio_root_key.spki_der(),
            FULCIO_ROOT_DN,
            &fulcio_root_key,
        );
        let fulcio_intermediate_key = TestKey::generate(KeyAlg::P384);
        let mut spec = CertSpec::ca(FULCIO_INTERMEDIATE_DN, now - YEAR, now + 5 * YEAR);
        spec.serial = 2;
        spec.eku = vec![EKU_CODE_SIGNING];
        let fulcio_intermediate = certs::issue(&spec, &fulcio_intermediate_key.spki_der(), FULCIO_ROOT_DN, &fulcio_root_key);

        const TSA_ROOT_DN: &str = "CN=pullgate test tsa root,O=pullgate.test";
        const TSA_INTERMEDIATE_DN: &str = "CN=pullgate test tsa intermediate,O=pullgate.test";
        let tsa_root_key = TestKey::generate(KeyAlg::P384);
        let tsa_root =
            certs::issue(&CertSpec::ca(TSA_ROOT_DN, now - 2 * YEAR, now + 10 * YEAR), &tsa_root_key.spki_der(), TSA_ROOT_DN, &tsa_root_key);
        let tsa_intermediate_key = TestKey::generate(KeyAlg::P384);
        let mut spec = CertSpec::ca(TSA_INTERMEDIATE_DN, now - YEAR, now + 5 * YEAR);
        spec.serial = 2;
        // webpki applies the required EKU to intermediates as well.
        spec.eku = vec![EKU_TIME_STAMPING];
        let tsa_intermediate = certs::issue(&spec, &tsa_intermediate_key.spki_der(), TSA_ROOT_DN, &tsa_root_key);
        let tsa_leaf_key = TestKey::generate(KeyAlg::P256);
        let mut spec = CertSpec::ca("CN=pullgate test tsa,O=pullgate.test", now - YEAR, now + 2 * YEAR);
        spec.ca = false;
        spec.serial = 3;
        spec.eku = vec![EKU_TIME_STAMPING];
        spec.eku_critical = true;
        let tsa_leaf = certs::issue(&spec, &tsa_leaf_key.spki_der(), TSA_INTERMEDIATE_DN, &tsa_intermediate_key);

        let rogue_intermediate_key = TestKey::generate(KeyAlg::P384);
        let mut spec = CertSpec::ca(FULCIO_INTERMEDIATE_DN, now - YEAR, now + 5 * YEAR);
        spec.eku = vec![EKU_CODE_SIGNING];
        let rogue_intermediate = certs::issue(&spec, &rogue_intermediate_key.spki_der(), FULCIO_INTERMEDIATE_DN, &rogue_intermediate_key);

        Self {
            now,
            fulcio_root_key,
            fulcio_root,
            fulcio_intermediate_key,
            fulcio_intermediate,
            rogue_intermediate_key,
            rogue_intermediate,
            ct_key: TestKey::generate(KeyAlg::P256),
            rogue_ct_key: TestKey::generate(KeyAlg::P256),
            rekor: Rekor::new(TestKey::generate(KeyAlg::P256), 5),
            tsa_root_key,
            tsa_root,
            tsa_intermediate_key,
            tsa_intermediate,
            tsa_leaf_key,
            tsa_leaf,
            serial: 100,
        }
    }

    /// Default (valid) sign options.
    pub fn options(&self) -> SignOptions {
        SignOptions::new(self.now)
    }

    /// The trusted_root.json describing this stack.
    pub fn trusted_root_json(&self) -> String {
        self.trusted_root_json_with(&RootOptions::default())
    }

    /// The trusted root, with validity windows or omissions.
    pub fn trusted_root_json_with(&self, o: &RootOptions) -> String {
        let window = |w: Option<(i64, Option<i64>)>, default_start: i64| {
            let (start, end) = w.unwrap_or((default_start, None));
            let mut v = json!({"start": rfc3339(start)});
            if let Some(end) = end {
                v["end"] = rfc3339(end).into();
            }
            v
        };
        let log = |key: &TestKey, url: &str, w: Option<(i64, Option<i64>)>| {
            json!({
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(key.spki_der()),
                    "keyDetails": key.key_details(),
                    "validFor": window(w, self.now - 2 * YEAR),
                },
                "logId": {"keyId": B64.encode(key.key_id())},
            })
        };
        let mut root = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(&self.rekor.key, "https://rekor.pullgate.test", o.rekor_window)],
            "certificateAuthorities": [{
                "subject": {"organization": "pullgate.test", "commonName": "pullgate test fulcio"},
                "uri": "https://fulcio.pullgate.test",
                "certChain": {"certificates": [
                    {"rawBytes": B64.encode(&self.fulcio_intermediate.der)},
                    {"rawBytes": B64.encode(&self.fulcio_root.der)},
                ]},
                "validFor": window(o.ca_window, self.now - 2 * YEAR),
            }],
            "ctlogs": [log(&self.ct_key, "https://ctfe.pullgate.test", o.ct_window)],
            "timestampAuthorities": [{
                "subject": {"organization": "pullgate.test", "commonName": "pullgate test tsa"},
                "uri": "https://tsa.pullgate.test",
                "certChain": {"certificates": [
                    {"rawBytes": B64.encode(&self.tsa_leaf.der)},
                    {"rawBytes": B64.encode(&self.tsa_intermediate.der)},
                    {"rawBytes": B64.encode(&self.tsa_root.der)},
                ]},
                "validFor": window(o.tsa_window, self.now - 2 * YEAR),
            }],
        });
        if o.omit_ctlog {
            root["ctlogs"] = json!([]);
        }
        serde_json::to_string_pretty(&root).expect("root json")
    }

    /// Trust material for this stack's default root.
    pub fn trust(&self) -> TrustMaterial {
        TrustMaterial::from_json(&self.trusted_root_json()).expect("stack root verifies")
    }

    /// Trust material for a root built with `o`.
    pub fn trust_with(&self, o: &RootOptions) -> TrustMaterial {
        TrustMaterial::from_json(&self.trusted_root_json_with(o)).expect("stack root verifies")
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// Issue a Fulcio leaf for `opts`, with its private key.
    pub fn issue_leaf(&mut self, opts: &SignOptions) -> (TestKey, IssuedCert) {
        let key = TestKey::generate(KeyAlg::P256);
        let not_before = opts.cert_not_before.unwrap_or(opts.signing_time - 30);
        let not_after = opts.cert_not_after.unwrap_or(opts.signing_time + 600);
        let mut extra = Vec::new();
        if let Some(issuer) = &opts.identity.issuer {
            extra.push(fulcio_claim(1, issuer));
            extra.push(fulcio_claim(8, issuer));
        }
        for (n, v) in &opts.identity.claims {
            extra.push(fulcio_claim(*n, v));
        }
        let spec = CertSpec {
            subject: String::new(),
            serial: self.next_serial(),
            not_before,
            not_after,
            ca: false,
            eku: vec![EKU_CODE_SIGNING],
            eku_critical: false,
            san: Some(opts.identity.san.clone()),
            extra,
        };
        let issuer_key = if opts.untrusted_ca { &self.rogue_intermediate_key } else { &self.fulcio_intermediate_key };
        let mut tbs = certs::tbs(&spec, &key.spki_der(), FULCIO_INTERMEDIATE_DN, issuer_key);
        let ct_key = match opts.sct {
            SctMode::Valid => Some(&self.ct_key),
            SctMode::UntrustedLog => Some(&self.rogue_ct_key),
            SctMode::Missing => None,
        };
        if let Some(ct_key) = ct_key {
            let value = ct::sct_extension(&tbs, &issuer_key.spki_der(), ct_key, (not_before as u64) * 1000);
            if let Some(exts) = tbs.extensions.as_mut() {
                exts.push(x509_cert::ext::Extension {
                    extn_id: x509_cert::der::oid::ObjectIdentifier::new_unwrap(certs::SCT_LIST_OID),
                    critical: false,
                    extn_value: x509_cert::der::asn1::OctetString::new(value).expect("sct ext"),
                });
            }
        }
        let cert = certs::sign(tbs, issuer_key);
        (key, cert)
    }

    /// The in-toto statement cosign v3 signs for `image`.
    pub fn image_statement(&self, image: &Digest, opts: &SignOptions) -> Vec<u8> {
        let hex = opts.subject_hex.clone().unwrap_or_else(|| image.hex().to_string());
        let algorithm = image.algorithm().name();
        let mut statement = json!({
            "_type": opts.statement_type,
            "subject": [{"digest": {algorithm: hex}, "annotations": {}}],
            "predicateType": opts.predicate_type,
        });
        if let Some(predicate) = &opts.predicate {
            statement["predicate"] = predicate.clone();
        }
        serde_json::to_vec(&statement).expect("statement")
    }

    /// Keyless attestation (as `cosign attest` v3 writes it): a v0.3 bundle whose DSSE
    /// statement has `predicate_type` and `predicate`, about `image`.
    pub fn attest_image(&mut self, image: &Digest, opts: &SignOptions, predicate_type: &str, predicate: Value) -> SignedBundle {
        let mut opts = opts.clone();
        opts.predicate_type = predicate_type.into();
        opts.predicate = Some(predicate);
        self.sign_image_v3(image, &opts)
    }

    /// Keyless legacy attestation (as `cosign attest` before v3 pushes it on the `.att` tag): a
    /// DSSE envelope layer with the certificate, chain and Rekor SET annotations, logged as
    /// `entry` (`("intoto", "0.0.2")` as cosign 2.x does, or `("dsse", "0.0.1")`).
    pub fn attest_image_legacy(
        &mut self,
        image: &Digest,
        opts: &SignOptions,
        predicate_type: &str,
        predicate: Value,
        entry: (&'static str, &'static str),
    ) -> LegacyAttestation {
        self.legacy_attestation(image, opts, predicate_type, predicate, entry, None)
    }

    /// [`Stack::attest_image_legacy`] signed with `key` (`cosign attest --key`): no certificate.
    pub fn attest_image_legacy_with_key(
        &mut self,
        image: &Digest,
        opts: &SignOptions,
        predicate_type: &str,
        predicate: Value,
        key: &TestKey,
    ) -> LegacyAttestation {
        self.legacy_attestation(image, opts, predicate_type, predicate, ("intoto", "0.0.2"), Some(key))
    }

    fn legacy_attestation(
        &mut self,
        image: &Digest,
        opts: &SignOptions,
        predicate_type: &str,
        predicate: Value,
        entry: (&'static str, &'static str),
        with_key: Option<&TestKey>,
    ) -> LegacyAttestation {
        let mut opts = opts.clone();
        opts.predicate_type = predicate_type.into();
        opts.predicate = Some(predicate);
        let (leaf_key, leaf) = match with_key {
            Some(_) => (None, None),
            None => {
                let (key, leaf) = self.issue_leaf(&opts);
                (Some(key), Some(leaf))
            }
        };
        let key = with_key.or(leaf_key.as_ref()).expect("a signing key");
        let verifier_pem = leaf.as_ref().map(IssuedCert::pem).unwrap_or_else(|| key.public_pem());
        let chain = format!("{}{}", self.fulcio_intermediate.pem(), self.fulcio_root.pem());
        let payload = self.image_statement(image, &opts);
        let pae = sigstore_verify::types::pae(&opts.payload_type, &payload);
        let signature = key.sign(&pae);
        let envelope = serde_json::to_vec(&json!({
            "payloadType": opts.payload_type,
            "payload": B64.encode(&payload),
            "signatures": [{"keyid": "", "sig": B64.encode(&signature)}],
        }))
        .expect("envelope");
        let body = match entry {
            ("dsse", _) => rekor::dsse_body(&envelope, &payload, &signature, &verifier_pem),
            _ => rekor::intoto_body(&envelope, &opts.payload_type, &payload, &signature, &verifier_pem),
        };
        let rekor_bundle = opts.tlog.then(|| self.rekor.append(body, entry, opts.signing_time).to_cosign_set_bundle());
        LegacyAttestation {
            layer_digest: Some(Digest::compute(pullgate::verify::DigestAlgorithm::Sha256, &envelope)),
            envelope,
            certificate: leaf.as_ref().map(IssuedCert::pem),
            chain: leaf.is_some().then_some(chain),
            rekor_bundle,
            rfc3161_timestamp: None,
            predicate_type: Some(predicate_type.into()),
        }
    }

    /// Keyless cosign v3 bundle for `image`.
    pub fn sign_image_v3(&mut self, image: &Digest, opts: &SignOptions) -> SignedBundle {
        let (key, leaf) = self.issue_leaf(opts);
        let material = json!({"certificate": {"rawBytes": B64.encode(&leaf.der)}});
        let verifier_pem = leaf.pem();
        let mut signed = self.dsse_bundle(image, opts, &key, material, &verifier_pem);
        signed.leaf = Some(leaf);
        signed
    }

    /// Key-signed cosign v3 bundle for `image`.
    pub fn sign_image_v3_with_key(&mut self, image: &Digest, opts: &SignOptions, key: &TestKey) -> SignedBundle {
        let hint = B64.encode(key.key_id());
        let material = json!({"publicKey": {"hint": hint}});
        self.dsse_bundle(image, opts, key, material, &key.public_pem())
    }

    fn dsse_bundle(&mut self, image: &Digest, opts: &SignOptions, key: &TestKey, mut material: Value, verifier_pem: &str) -> SignedBundle {
        let payload = self.image_statement(image, opts);
        let pae = sigstore_verify::types::pae(&opts.payload_type, &payload);
        let signature = key.sign(&pae);
        let envelope = json!({
            "payload": B64.encode(&payload),
            "payloadType": opts.payload_type,
            "signatures": [{"sig": B64.encode(&signature), "keyid": ""}],
        });
        let mut entry = None;
        if opts.tlog {
            let body = rekor::dsse_body(envelope.to_string().as_bytes(), &payload, &signature, verifier_pem);
            let logged = self.rekor.append(body, ("dsse", "0.0.1"), opts.signing_time);
            material["tlogEntries"] = json!([logged.to_bundle_json(opts.inclusion_proof, true)]);
            entry = Some(logged);
        } else {
            material["tlogEntries"] = json!([]);
        }
        if opts.tsa {
            let token = self.timestamp(&signature, opts.tsa_time.unwrap_or(opts.signing_time));
            material["timestampVerificationData"] = json!({"rfc3161Timestamps": [{"signedTimestamp": B64.encode(token)}]});
        }
        SignedBundle {
            bundle: json!({
                "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                "verificationMaterial": material,
                "dsseEnvelope": envelope,
            }),
            leaf: None,
            entry,
        }
    }

    /// An RFC 3161 token over `signature` at `time`.
    pub fn timestamp(&mut self, signature: &[u8], time: i64) -> Vec<u8> {
        let serial = self.next_serial();
        tsa::timestamp(signature, time, &self.tsa_leaf, &self.tsa_leaf_key, serial)
    }

    /// The simple-signing payload cosign signs for `image`.
    pub fn simple_signing_payload(&self, image: &Digest, opts: &SignOptions) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "critical": {
                "identity": {"docker-reference": "registry.pullgate.test/demo"},
                "image": {"docker-manifest-digest": image.to_string()},
                "type": opts.critical_type,
            },
            "optional": null,
        }))
        .expect("payload")
    }

    /// Keyless legacy `.sig` layer for `image`.
    pub fn sign_image_legacy(&mut self, image: &Digest, opts: &SignOptions) -> LegacySignature {
        let (key, leaf) = self.issue_leaf(opts);
        let chain = if opts.untrusted_ca {
            self.rogue_intermediate.pem()
        } else {
            format!("{}{}", self.fulcio_intermediate.pem(), self.fulcio_root.pem())
        };
        self.legacy(image, opts, &key, Some((leaf.pem(), chain)))
    }

    /// Key-signed legacy `.sig` layer for `image`.
    pub fn sign_image_legacy_with_key(&mut self, image: &Digest, opts: &SignOptions, key: &TestKey) -> LegacySignature {
        self.legacy(image, opts, key, None)
    }

    fn legacy(&mut self, image: &Digest, opts: &SignOptions, key: &TestKey, cert: Option<(String, String)>) -> LegacySignature {
        let payload = self.simple_signing_payload(image, opts);
        let signature = key.sign(&payload);
        let verifier_pem = cert.as_ref().map(|(leaf, _)| leaf.clone()).unwrap_or_else(|| key.public_pem());
        let payload_digest = Digest::compute(pullgate::verify::DigestAlgorithm::Sha256, &payload);
        let rekor_bundle = opts.tlog.then(|| {
            let (body, kind) = match opts.legacy_kind {
                LegacyKind::HashedRekord => {
                    (rekor::hashedrekord_body(payload_digest.hex(), &signature, &verifier_pem), ("hashedrekord", "0.0.1"))
                }
                LegacyKind::Rekord => (rekor::rekord_body(&payload, &signature, &verifier_pem), ("rekord", "0.0.1")),
            };
            self.rekor.append(body, kind, opts.signing_time).to_cosign_set_bundle()
        });
        let rfc3161_timestamp = opts.tsa.then(|| {
            let token = self.timestamp(&signature, opts.tsa_time.unwrap_or(opts.signing_time));
            json!({"SignedRFC3161Timestamp": B64.encode(token)}).to_string()
        });
        let (certificate, chain) = match cert {
            Some((leaf, chain)) => (Some(leaf), Some(chain)),
            None => (None, None),
        };
        LegacySignature {
            payload,
            layer_digest: Some(payload_digest),
            signature: B64.encode(&signature),
            certificate,
            chain,
            rekor_bundle,
            rfc3161_timestamp,
        }
    }
}

impl Default for Stack {
    fn default() -> Self {
        Self::new()
    }
}

/// RFC 3339 UTC for `seconds`.
pub fn rfc3339(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds).expect("time").to_string()
}

/// A random-looking but deterministic image digest for test `n`.
pub fn image_digest(n: u64) -> Digest {
    Digest::compute(pullgate::verify::DigestAlgorithm::Sha256, format!("manifest {n}").as_bytes())
}
