//! `pullgate verify-bundle` and `pullgate verify-image-files`: command-line front ends of
//! [`crate::verify`], mounted as subcommands by `main.rs`.
//!
//! - `verify-bundle` implements the sigstore-conformance client protocol, so
//!   Sigstore's own suites can drive pullgate's verifier.
//! - `verify-image-files` is the cosign-like check for build pipelines: does
//!   this image digest carry a signature, from files, that the current mirrored
//!   root and the given identity accept?
//!
//! Exit codes ([`crate::cmd::exit`]): 0 verified, 1 not verified, 64 unusable input or
//! configuration.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::cmd::{exit, OutputFormat};
use crate::digest::Digest;
use crate::verify::bundle::{parse_bundle, ArtifactRef, ExpectedSigner, Signer};
use crate::verify::error::one_line;
use crate::verify::image::{verify_image, SignatureMaterial};
use crate::verify::keys::PublicKey;
use crate::verify::legacy::LegacySignature;
use crate::verify::signers::{Authority, ExtensionClaim, IdentityPolicy, KeylessIdentity, StringMatcher};
use crate::verify::trust::TrustMaterial;

/// Largest artifact `verify-bundle` reads into memory.
const MAX_ARTIFACT_BYTES: u64 = 1 << 31;

/// `pullgate verify-bundle`: the sigstore-conformance client protocol.
///
/// `verify-bundle [--staging] --bundle FILE (--certificate-identity ID
/// --certificate-oidc-issuer URL | --key KEY.pub) [--trusted-root FILE]
/// FILE_OR_DIGEST`
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("signer").required(true).args(["certificate_identity", "key"])))]
pub struct VerifyBundleArgs {
    /// Use the embedded Sigstore staging root when no --trusted-root is given.
    #[arg(long)]
    pub staging: bool,
    /// The Sigstore bundle (v0.1 to v0.3) to verify.
    #[arg(long, value_name = "FILE")]
    pub bundle: PathBuf,
    /// Required certificate SAN, matched exactly.
    #[arg(long, value_name = "ID", requires = "certificate_oidc_issuer", conflicts_with = "key")]
    pub certificate_identity: Option<String>,
    /// Required OIDC issuer, matched exactly.
    #[arg(long, value_name = "URL", requires = "certificate_identity")]
    pub certificate_oidc_issuer: Option<String>,
    /// PEM public key for key-signed bundles.
    #[arg(long, value_name = "KEY.pub")]
    pub key: Option<PathBuf>,
    /// trusted_root.json to verify against (default: embedded production or staging root).
    #[arg(long, value_name = "FILE")]
    pub trusted_root: Option<PathBuf>,
    /// The signed file, or its `sha256:<hex>`/`sha512:<hex>` digest.
    #[arg(value_name = "FILE_OR_DIGEST")]
    pub artifact: String,
}

/// Run `verify-bundle`: exit 0 only when verified, else one line on stderr.
pub fn run_verify_bundle(args: VerifyBundleArgs) -> i32 {
    match verify_bundle_command(&args) {
        Ok(summary) => {
            println!("OK: {summary}");
            exit::OK
        }
        Err((code, reason)) => {
            eprintln!("{}", one_line(&reason));
            code
        }
    }
}

type CliResult<T> = Result<T, (i32, String)>;

fn usage(reason: impl std::fmt::Display) -> (i32, String) {
    (exit::USAGE, reason.to_string())
}

fn rejected(reason: impl std::fmt::Display) -> (i32, String) {
    (exit::FAILED, reason.to_string())
}

fn verify_bundle_command(args: &VerifyBundleArgs) -> CliResult<String> {
    let trust = match &args.trusted_root {
        Some(path) => TrustMaterial::from_file(path),
        None if args.staging => TrustMaterial::embedded_staging(),
        None => TrustMaterial::embedded_production(),
    }
    .map_err(usage)?;
    let bundle_json = read_limited(&args.bundle, crate::verify::bundle::MAX_BUNDLE_BYTES as u64)?;
    let bundle = parse_bundle(&bundle_json).map_err(rejected)?;
    let key = match &args.key {
        Some(path) => Some(read_key(path)?),
        None => None,
    };

    // The artifact is a digest when it looks like one and no such file exists.
    let artifact_bytes;
    let digest;
    let artifact = if !Path::new(&args.artifact).exists() && Digest::parse(&args.artifact).is_ok() {
        digest = crate::verify::error::parse_digest(&args.artifact).map_err(usage)?;
        ArtifactRef::Digest(&digest)
    } else {
        artifact_bytes = read_limited(Path::new(&args.artifact), MAX_ARTIFACT_BYTES)?;
        ArtifactRef::Bytes(&artifact_bytes)
    };

    let signer = match &key {
        Some(key) => ExpectedSigner::Key(key),
        None => ExpectedSigner::Certificate,
    };
    let verified = trust.verify_bundle(&bundle, artifact, signer).map_err(rejected)?;
    // Step 3a: tokens from a TSA the trust root does not list were skipped,
    // not counted; say so next to the verdict.
    let skipped = match verified.skipped_timestamps.len() {
        0 => String::new(),
        n => format!("; {n} RFC 3161 timestamp(s) skipped: signed by a TSA the trust root does not list"),
    };
    match (&verified.signer, &args.certificate_identity, &args.certificate_oidc_issuer) {
        (Signer::Certificate(identity), Some(subject), Some(issuer)) => {
            KeylessIdentity::exact(subject, issuer).check(identity).map_err(rejected)?;
            Ok(format!("signed by {subject} ({issuer}){skipped}"))
        }
        (Signer::Key { fingerprint, .. }, None, None) => Ok(format!("signed by key {fingerprint}{skipped}")),
        _ => Err(rejected("signer kind does not match the requested verification")),
    }
}

fn read_limited(path: &Path, limit: u64) -> CliResult<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > limit {
        return Err(usage(format!("{} is {} bytes, over the {limit}-byte limit", path.display(), meta.len())));
    }
    std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
}

fn read_text(path: &Path, limit: u64) -> CliResult<String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|_| usage(format!("{} is not UTF-8", path.display())))
}

fn read_key(path: &Path) -> CliResult<PublicKey> {
    let pem = read_text(path, 64 << 10)?;
    // A bad configured key is a usage problem, not a rejected signature.
    PublicKey::from_pem(&pem).map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// `pullgate verify-image-files`: cosign-like image verification from files.
#[derive(Debug, Clone, Args)]
pub struct VerifyImageFilesArgs {
    /// Manifest digest of the image being checked (`sha256:<hex>`).
    #[arg(long, value_name = "DIGEST")]
    pub digest: String,
    /// A Sigstore bundle: a cosign v3 referrer or a `cosign sign --bundle` file. Repeatable.
    #[arg(long = "bundle", value_name = "FILE")]
    pub bundles: Vec<PathBuf>,
    /// A legacy `.sig` layer as DESCRIPTOR.json=PAYLOAD: the layer descriptor
    /// (with its annotations) and the layer blob. Repeatable.
    #[arg(long = "signature-layer", value_name = "DESCRIPTOR=PAYLOAD")]
    pub signature_layers: Vec<String>,
    /// Legacy signature from separate files: the simple-signing payload.
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub payload: Option<PathBuf>,
    /// Legacy signature: file holding the base64 signature.
    #[arg(long, value_name = "FILE", requires = "payload")]
    pub signature: Option<PathBuf>,
    /// Legacy signature: PEM signing certificate.
    #[arg(long, value_name = "FILE", requires = "payload")]
    pub certificate: Option<PathBuf>,
    /// Legacy signature: PEM certificate chain.
    #[arg(long, value_name = "FILE", requires = "payload")]
    pub certificate_chain: Option<PathBuf>,
    /// Legacy signature: Rekor SET bundle JSON (the `dev.sigstore.cosign/bundle` annotation).
    #[arg(long, value_name = "FILE", requires = "payload")]
    pub rekor_bundle: Option<PathBuf>,
    /// Legacy signature: RFC 3161 timestamp JSON (the `dev.sigstore.cosign/rfc3161timestamp` annotation).
    #[arg(long, value_name = "FILE", requires = "payload")]
    pub rfc3161_timestamp: Option<PathBuf>,
    /// trusted_root.json to verify against (the mirrored root).
    #[arg(long, value_name = "FILE")]
    pub trusted_root: PathBuf,
    /// Whom to accept.
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub output: OutputFormat,
}

/// Whom to accept, cosign style: one keyless identity (SAN and issuer, exact
/// or anchored regex, plus Fulcio claims) or one or more public keys. Shared
/// by `verify-image-files` and the registry-backed `verify`.
#[derive(Debug, Clone, Default, Args)]
pub struct IdentityArgs {
    /// Required certificate SAN, exact.
    #[arg(long, value_name = "ID", conflicts_with = "certificate_identity_regexp")]
    pub certificate_identity: Option<String>,
    /// Required certificate SAN, as a regular expression matching the whole SAN.
    #[arg(long, value_name = "REGEX")]
    pub certificate_identity_regexp: Option<String>,
    /// Required OIDC issuer, exact.
    #[arg(long, value_name = "URL", conflicts_with = "certificate_oidc_issuer_regexp")]
    pub certificate_oidc_issuer: Option<String>,
    /// Required OIDC issuer, as a regular expression matching the whole issuer.
    #[arg(long, value_name = "REGEX")]
    pub certificate_oidc_issuer_regexp: Option<String>,
    /// Required Fulcio claim, as OID=VALUE or NAME=VALUE (e.g. source-repository-ref=refs/heads/main). Repeatable.
    #[arg(long = "certificate-extension", value_name = "OID=VALUE")]
    pub certificate_extensions: Vec<String>,
    /// Required GitHub workflow trigger (Fulcio claim 1.3.6.1.4.1.57264.1.2).
    #[arg(long, value_name = "TRIGGER")]
    pub certificate_github_workflow_trigger: Option<String>,
    /// Required GitHub workflow SHA (claim .1.3).
    #[arg(long, value_name = "SHA")]
    pub certificate_github_workflow_sha: Option<String>,
    /// Required GitHub workflow name (claim .1.4).
    #[arg(long, value_name = "NAME")]
    pub certificate_github_workflow_name: Option<String>,
    /// Required GitHub workflow repository (claim .1.5).
    #[arg(long, value_name = "REPO")]
    pub certificate_github_workflow_repository: Option<String>,
    /// Required GitHub workflow ref (claim .1.6).
    #[arg(long, value_name = "REF")]
    pub certificate_github_workflow_ref: Option<String>,
    /// Accept signatures by this PEM public key instead of a Fulcio identity. Repeatable (any one).
    #[arg(long = "key", value_name = "KEY.pub")]
    pub keys: Vec<PathBuf>,
}

impl IdentityArgs {
    /// Whether any identity or key flag was given.
    pub fn is_given(&self) -> bool {
        self.certificate_identity.is_some()
            || self.certificate_identity_regexp.is_some()
            || self.certificate_oidc_issuer.is_some()
            || self.certificate_oidc_issuer_regexp.is_some()
            || !self.certificate_extensions.is_empty()
            || self.certificate_github_workflow_trigger.is_some()
            || self.certificate_github_workflow_sha.is_some()
            || self.certificate_github_workflow_name.is_some()
            || self.certificate_github_workflow_repository.is_some()
            || self.certificate_github_workflow_ref.is_some()
            || !self.keys.is_empty()
    }
}

/// Run `verify-image-files`; prints the decision, returns the exit code.
pub fn run_verify_image_files(args: VerifyImageFilesArgs) -> i32 {
    let (policy, trust, image, candidates) = match prepare_image_files(&args) {
        Ok(prepared) => prepared,
        Err((code, reason)) => {
            eprintln!("{}", one_line(&reason));
            return code;
        }
    };
    let decision = verify_image(&trust, &image, &candidates, &policy);
    match args.output {
        OutputFormat::Json => {
            let mut value = serde_json::to_value(&decision).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert("reason".into(), decision.reason().into());
            }
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        }
        OutputFormat::Human => {
            let verdict = if decision.allowed { "VERIFIED" } else { "DENIED" };
            println!("{verdict} {}: {}", decision.image, decision.reason());
            for c in &decision.candidates {
                let status = match c.reason() {
                    None => "ok".to_string(),
                    Some(reason) => reason,
                };
                println!("  {} [{}]: {status}", c.source, c.format);
            }
        }
    }
    if decision.allowed {
        exit::OK
    } else {
        if args.output == OutputFormat::Json {
            eprintln!("{}", decision.reason());
        }
        exit::FAILED
    }
}

type Prepared = (IdentityPolicy, TrustMaterial, Digest, Vec<SignatureMaterial>);

fn prepare_image_files(args: &VerifyImageFilesArgs) -> CliResult<Prepared> {
    let image = crate::verify::error::parse_digest(&args.digest).map_err(usage)?;
    let policy = policy_from_flags(&args.identity)?;
    let trust = TrustMaterial::from_file(&args.trusted_root).map_err(usage)?;
    let mut candidates = Vec::new();
    for path in &args.bundles {
        candidates.push(SignatureMaterial::Bundle {
            source: path.display().to_string(),
            json: read_limited(path, crate::verify::bundle::MAX_BUNDLE_BYTES as u64)?,
        });
    }
    for spec in &args.signature_layers {
        let (descriptor, payload) =
            spec.split_once('=').ok_or_else(|| usage(format!("--signature-layer {spec:?}: want DESCRIPTOR.json=PAYLOAD")))?;
        let descriptor_json = read_text(Path::new(descriptor), 1 << 20)?;
        let payload = read_limited(Path::new(payload), 1 << 20)?;
        let signature = LegacySignature::from_layer_json(&descriptor_json, payload).map_err(|e| usage(format!("{descriptor}: {e}")))?;
        candidates.push(SignatureMaterial::Legacy { source: descriptor.to_string(), signature });
    }
    if let (Some(payload), Some(signature)) = (&args.payload, &args.signature) {
        let optional = |p: &Option<PathBuf>| -> CliResult<Option<String>> { p.as_deref().map(|p| read_text(p, 1 << 20)).transpose() };
        candidates.push(SignatureMaterial::Legacy {
            source: signature.display().to_string(),
            signature: LegacySignature {
                payload: read_limited(payload, 1 << 20)?,
                layer_digest: None,
                signature: read_text(signature, 1 << 20)?.trim().to_string(),
                certificate: optional(&args.certificate)?,
                chain: optional(&args.certificate_chain)?,
                rekor_bundle: optional(&args.rekor_bundle)?,
                rfc3161_timestamp: optional(&args.rfc3161_timestamp)?,
            },
        });
    }
    if candidates.is_empty() {
        return Err(usage("no signature material: give --bundle, --signature-layer or --payload/--signature"));
    }
    Ok((policy, trust, image, candidates))
}

/// Build the one-authority policy the identity flags describe. Errors are
/// usage errors (contradictory flags, bad regex, unreadable key), one line.
pub fn identity_policy(args: &IdentityArgs) -> Result<IdentityPolicy, String> {
    policy_from_flags(args).map_err(|(_, reason)| reason)
}

fn policy_from_flags(args: &IdentityArgs) -> CliResult<IdentityPolicy> {
    let subject = match (&args.certificate_identity, &args.certificate_identity_regexp) {
        (Some(exact), None) => Some(StringMatcher::exact(exact)),
        (None, Some(pattern)) => Some(StringMatcher::regex(pattern).map_err(usage)?),
        _ => None,
    };
    let issuer = match (&args.certificate_oidc_issuer, &args.certificate_oidc_issuer_regexp) {
        (Some(exact), None) => Some(StringMatcher::exact(exact)),
        (None, Some(pattern)) => Some(StringMatcher::regex(pattern).map_err(usage)?),
        _ => None,
    };
    let mut claims = Vec::new();
    for spec in &args.certificate_extensions {
        let (name, value) = spec.split_once('=').ok_or_else(|| usage(format!("--certificate-extension {spec:?}: want OID=VALUE")))?;
        claims.push(ExtensionClaim::new(name, value).map_err(usage)?);
    }
    let github = [
        ("github-workflow-trigger", &args.certificate_github_workflow_trigger),
        ("github-workflow-sha", &args.certificate_github_workflow_sha),
        ("github-workflow-name", &args.certificate_github_workflow_name),
        ("github-workflow-repository", &args.certificate_github_workflow_repository),
        ("github-workflow-ref", &args.certificate_github_workflow_ref),
    ];
    for (name, value) in github {
        if let Some(value) = value {
            claims.push(ExtensionClaim::new(name, value).map_err(usage)?);
        }
    }
    let keyless_requested = subject.is_some() || issuer.is_some() || !claims.is_empty();
    let authority = match (keyless_requested, args.keys.is_empty()) {
        (true, false) => return Err(usage("give either certificate identity flags or --key, not both")),
        (false, true) => return Err(usage("give --certificate-identity[-regexp] and --certificate-oidc-issuer[-regexp], or --key")),
        (false, false) => {
            let keys = args.keys.iter().map(|p| read_key(p)).collect::<CliResult<Vec<_>>>()?;
            Authority::keys("key", keys).map_err(usage)?
        }
        (true, true) => {
            let (Some(subject), Some(issuer)) = (subject, issuer) else {
                return Err(usage(
                    "keyless verification needs both --certificate-identity[-regexp] and --certificate-oidc-issuer[-regexp]",
                ));
            };
            Authority::keyless("identity", vec![KeylessIdentity { subject, issuer: Some(issuer), claims }]).map_err(usage)?
        }
    };
    IdentityPolicy::any_of(vec![authority]).map_err(usage)
}
