//! `pullgate verify IMAGE_REF`: the cosign-verify-like check operators run on a node or in a
//! pipeline, fully offline: resolve the image on the mirror (containerd's hosts.toml), discover
//! its signatures, verify them against the policy (from `--config`, or identity/key flags) and
//! the mirrored trust root, and print every candidate with its reason. Exit 0 only when allowed.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::verify_files::{identity_policy, IdentityArgs};
use crate::app;
use crate::cmd::{exit, OutputFormat};
use crate::config::Config;
use crate::enforce::checker::decide;
use crate::enforce::gate::{match_names, Outcome};
use crate::policy::{Applicable, ImagePolicy, MultiArch, Unmatched};
use crate::registry::{RegistryArgs, Report};
use crate::verify::image::ImageDecision;
use crate::verify::trust::TrustMaterial;

const DENIED: i32 = exit::FAILED;
const USAGE: i32 = exit::USAGE;

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The image, as a pod spec names it (`registry.internal/team/app:1.2`, `...@sha256:...`).
    pub image: String,
    /// pullgate configuration: its policy, `registry:` and `trust_root:` sections are used.
    /// Identity or key flags replace the policy.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Namespace the pod would run in (for policies with a namespace selector).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// trusted_root.json to verify against instead of the installed (imported) trust root.
    #[arg(long, value_name = "FILE")]
    pub trusted_root: Option<PathBuf>,
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct PolicyResult {
    policy: String,
    mode: &'static str,
    allowed: bool,
    reason: String,
    identity: String,
    source: String,
    /// The engine's decision per subject digest tried (index, platform manifest).
    decisions: Vec<ImageDecision>,
}

#[derive(Debug, Serialize)]
struct VerifyReport {
    image: String,
    allowed: bool,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mirror: Option<Report>,
    policies: Vec<PolicyResult>,
}

fn fail(code: i32, message: impl std::fmt::Display) -> i32 {
    eprintln!("pullgate verify: {message}");
    code
}

pub fn run_verify(args: VerifyArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(verify(args))
}

async fn verify(args: VerifyArgs) -> i32 {
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return fail(USAGE, format!("invalid configuration: {e}")),
        },
        None => Config::default(),
    };
    args.registry.apply(&mut config.registry);
    if let Err((key, e)) = config.registry.validate() {
        return fail(USAGE, format!("registry.{key}: {e}"));
    }

    // Whom we accept: the flags, or the configuration's policy for this image.
    let flag_policy = match args.identity.is_given() {
        true => match identity_policy(&args.identity) {
            Ok(p) => Some(Arc::new(ImagePolicy::adhoc("command-line", p, MultiArch::Either))),
            Err(e) => return fail(USAGE, e),
        },
        false => None,
    };
    let policies: Vec<Arc<ImagePolicy>> = match (flag_policy, &config.policy) {
        (Some(p), _) => vec![p],
        (None, None) => {
            return fail(USAGE, "no policy: give --certificate-identity[-regexp] and --certificate-oidc-issuer[-regexp], --key, or --config with a `policy` section")
        }
        (None, Some(policy)) => {
            let set = match policy.compile(1) {
                Ok(s) => s,
                Err(e) => return fail(USAGE, e),
            };
            let reference = match crate::registry::Reference::parse(&args.image) {
                Ok(r) => r,
                Err(e) => return fail(USAGE, e),
            };
            match set.applicable(&match_names(&reference), args.namespace.as_deref()) {
                Applicable::Policies(p) => p,
                Applicable::Exempt(name) => {
                    println!("{}: exempt by exemption {name}: admitted without a signature", args.image);
                    return 0;
                }
                Applicable::Unmatched(Unmatched::Allow) => {
                    println!("{}: matches no policy; policy.unmatched is allow: admitted without a signature", args.image);
                    return 0;
                }
                Applicable::Unmatched(Unmatched::Deny) => {
                    return fail(DENIED, format!("{}: matches no policy and policy.unmatched is deny", args.image))
                }
            }
        }
    };

    // What we trust: an explicit file, or the installed, fresh root.
    let trust: Arc<TrustMaterial> = match &args.trusted_root {
        Some(path) => match TrustMaterial::from_file(path) {
            Ok(t) => Arc::new(t),
            Err(e) => return fail(USAGE, format!("{}: {e}", path.display())),
        },
        None => {
            let handle = app::trust_root(&config);
            if let Err(e) = handle.reload() {
                return fail(DENIED, format!("trust root in {}: {e}", config.trust_root.state_dir.display()));
            }
            match handle.material() {
                Ok((t, _)) => t,
                Err(e) => return fail(DENIED, e),
            }
        }
    };

    let registry = app::registry(&config);
    let credentials = args.registry.credentials();
    let attestations = policies.iter().any(|p| p.identity.has_attestations());
    let report = match registry.inspect_with(&args.image, credentials.as_ref(), attestations).await {
        Ok(r) => r,
        Err(e) => return fail(DENIED, format!("{}: {e}", args.image)),
    };
    let mut results = Vec::new();
    for p in &policies {
        let (outcome, decisions) = decide(trust.clone(), &report.image, &report.discovery, p).await;
        results.push(result(p, outcome, decisions));
    }
    let allowed = !results.is_empty() && results.iter().all(|r| r.allowed);
    let reason = results.iter().map(|r| format!("policy {}: {}", r.policy, r.reason)).collect::<Vec<_>>().join("; ");
    let out = VerifyReport { image: args.image.clone(), allowed, reason, mirror: Some(report), policies: results };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()),
        OutputFormat::Human => print_human(&out),
    }
    if allowed {
        0
    } else {
        DENIED
    }
}

fn result(p: &ImagePolicy, o: Outcome, decisions: Vec<ImageDecision>) -> PolicyResult {
    PolicyResult {
        policy: p.name.clone(),
        mode: p.mode.as_str(),
        allowed: o.allowed,
        reason: o.reason.to_string(),
        identity: o.identity,
        source: o.source,
        decisions,
    }
}

fn print_human(out: &VerifyReport) {
    if let Some(report) = &out.mirror {
        println!("{report}");
    }
    for p in &out.policies {
        let verdict = if p.allowed { "ALLOWED" } else { "DENIED" };
        println!("policy {} ({}): {verdict}: {}", p.policy, p.mode, p.reason);
        for d in &p.decisions {
            for c in &d.candidates {
                match c.reason() {
                    None => println!("  ok      {} [{}]", c.source, c.format),
                    Some(r) => println!("  failed  {} [{}]: {r}", c.source, c.format),
                }
            }
            for a in &d.attestations {
                let ok = a.judgments.iter().any(|j| j.satisfied);
                let signer = a.signer.as_deref().map(|s| format!(" signed by {s}")).unwrap_or_default();
                println!(
                    "  {}  attestation {} from {}{signer}: {}",
                    if ok { "ok    " } else { "failed" },
                    a.predicate_type,
                    a.source,
                    a.verdict()
                );
            }
            for r in d.requirements.iter().filter(|r| !r.satisfied) {
                println!("  missing attestation for authority {}: {}", r.authority, r.reason.as_deref().unwrap_or("not satisfied"));
            }
        }
    }
    println!("{}: {}", out.image, if out.allowed { "verified" } else { "NOT verified" });
}
