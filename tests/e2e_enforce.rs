//! End-to-end enforcement with real parts: a real containerd and registry (`scripts/testbed.sh`),
//! the real `pullgate` binary with a policy and an imported trust root, and a kubelet-like CRI
//! client. Images are signed by the test Sigstore stack (`tests/support/sigstore`: a Fulcio-like
//! CA, CT log, Rekor-like log; its own code, since the real services cannot run here) and the
//! signatures are published in the registry where cosign puts them.
//!
//! The trials share one testbed and one pullgate (plus short-lived extra instances) and run one
//! at a time. Without root they are reported as ignored, with the reason.

// The test signing stack is a std Mutex held across awaits inside one `block_on`: trials run
// one at a time and nothing else takes it.
#![allow(clippy::await_holding_lock)]

#[path = "support/admin.rs"]
mod admin;
#[path = "support/cri.rs"]
mod cri;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/mod.rs"]
mod support;
#[path = "support/testbed.rs"]
mod testbed;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use daemon::Daemon;
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed};
use pullgate::enforce::audit::{read_records, AuditRecord};
use pullgate::registry::Digest;
use serde_json::json;
use support::registry::push::Pusher;
use support::signer::{sign_and_push, Format};
use support::sigstore::{SignOptions, Stack, DEFAULT_ISSUER, DEFAULT_SAN};
use testbed::{Generation, Testbed};

type TestResult = Result<(), Failed>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    registry: String,
    pusher: Pusher,
    /// The enforce-mode instance most trials use.
    pg: Mutex<Daemon>,
    pg_sock: PathBuf,
    audit_log: PathBuf,
    state_dir: PathBuf,
    stack: Mutex<Stack>,
}

impl Ctx {
    fn direct(&self) -> PathBuf {
        self.tb.containerd_sock()
    }
    fn audit(&self) -> Vec<AuditRecord> {
        read_records(&self.audit_log).map(|r| r.0).unwrap_or_default()
    }
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

/// Stops pullgate and the testbed (containerd, shims, registry).
fn teardown(c: &Ctx) {
    if let Ok(mut pg) = c.pg.lock() {
        pg.terminate(Duration::from_secs(10));
    }
    c.tb.clean();
}

/// The pullgate configuration used by the trials: enforce mode for the demo repositories.
fn config(c: &SetupPaths, listen: &Path, mode: &str, hosts_dir: &str, audit: &Path) -> String {
    let reg = &c.registry;
    format!(
        r#"listen: {listen}
upstream: {upstream}
registry:
  hosts_dir: {hosts_dir}
  bundle_dir: {bundles}
  connect_timeout: 1s
  request_timeout: 5s
  discovery_timeout: 10s
trust_root:
  state_dir: {state}
audit:
  sink: file
  path: {audit}
cri:
  sandbox_image: {sandbox}
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{reg}/pause", "{reg}/pause:*"]
  policies:
    - name: demo
      images: ["{reg}/demo/**"]
      mode: {mode}
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {issuer}
                subject: {san}
                extensions:
                  github-workflow-repository: pullgate/demo
    - name: attested
      images: ["{reg}/att/**"]
      mode: {mode}
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {issuer}
                subject: {san}
          attestations:
            - predicateType: {slsa}
              conditions:
                - path: buildDefinition.externalParameters.workflow.ref
                  equals: refs/heads/main
                - path: runDetails.builder.id
                  matches: https://github\.com/actions/runner/.*
            - predicateType: {vuln}
              signer:
                keyless:
                  identities:
                    - issuer: {issuer}
                      subject: {scanner}
              conditions:
                - path: metadata.scanFinishedOn
                  notOlderThan: 7d
"#,
        listen = listen.display(),
        upstream = c.containerd.display(),
        bundles = c.dir.join("bundles").display(),
        state = c.dir.join("state").display(),
        audit = audit.display(),
        sandbox = format_args!("{reg}/pause:1"),
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
        slsa = SLSA,
        vuln = VULN,
        scanner = SCANNER,
    )
}

const SLSA: &str = "https://slsa.dev/provenance/v1";
const VULN: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
const SCANNER: &str = "https://github.com/pullgate/scanner/.github/workflows/scan.yml@refs/heads/main";

struct SetupPaths {
    dir: PathBuf,
    registry: String,
    containerd: PathBuf,
}

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "enf", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;
    let pusher = Pusher::new(addr);
    let paths = SetupPaths { dir: tb.dir.clone(), registry: registry.clone(), containerd: tb.containerd_sock() };

    // The test Sigstore stack and its trust root, imported as an operator would.
    let mut stack = Stack::new();
    let root = tb.dir.join("trusted_root.json");
    std::fs::write(&root, stack.trusted_root_json()).map_err(|e| e.to_string())?;
    let state_dir = tb.dir.join("state");
    let out = Command::new(daemon::binary())
        .args(["trust-root", "import", "--trusted-root"])
        .arg(&root)
        .arg("--accept-unverified-trusted-root")
        .arg("--state-dir")
        .arg(&state_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("trust-root import failed: {}", String::from_utf8_lossy(&out.stderr)));
    }

    // Sign the demo images: demo/app:1 with a cosign v3 bundle, demo/app:2 the legacy way.
    let opts = SignOptions::new(stack.now);
    let digest = |k: &str| Digest::parse(tb.get(k)).map_err(|e| e.to_string());
    let (d1, d2) = (digest("DEMO_DIGEST")?, digest("DEMO2_DIGEST")?);
    rt.block_on(async {
        sign_and_push(&mut stack, &pusher, "demo/app", &d1, &opts, Format::Bundle).await?;
        sign_and_push(&mut stack, &pusher, "demo/app", &d2, &opts, Format::Legacy).await
    })?;

    let pg_sock = tb.dir.join("pg.sock");
    let audit_log = tb.dir.join("audit.log");
    let cfg = tb.dir.join("enforce.yaml");
    std::fs::write(&cfg, config(&paths, &pg_sock, "enforce", tb.get("HOSTS_DIR"), &audit_log)).map_err(|e| e.to_string())?;
    let pg = Daemon::start(&pg_sock, &["--config", cfg.to_str().unwrap()])?;
    Ok(Ctx { rt, tb, registry, pusher, pg: Mutex::new(pg), pg_sock, audit_log, state_dir, stack: Mutex::new(stack) })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("signed_image_is_pulled_and_runs", signed_image_is_pulled_and_runs),
        ("legacy_signed_image_is_pulled", legacy_signed_image_is_pulled),
        ("unsigned_image_is_refused", unsigned_image_is_refused),
        ("bad_signatures_are_refused_with_their_reason", bad_signatures_are_refused),
        ("unmatched_image_is_denied_by_default", unmatched_image_is_denied),
        ("exempt_pause_image_is_allowed", exempt_pause_image_is_allowed),
        ("moved_tag_never_brings_in_the_unsigned_image", moved_tag),
        ("preloaded_images_are_checked_at_create_container", preloaded_images),
        ("concurrent_pulls_share_one_verification", concurrent_pulls),
        ("concurrent_pulls_by_digest_make_one_verification_in_the_metrics", concurrent_pulls_by_digest),
        ("audit_mode_lets_unsigned_through_and_logs_it", audit_mode),
        ("mirror_down_refuses_in_enforce_and_logs_in_audit", mirror_down),
        ("stale_or_missing_trust_root_fails_closed", missing_trust_root),
        ("policy_reload_keeps_last_good_on_error", policy_reload),
        ("network_access_is_only_containerd_and_the_mirror", offline),
        ("image_volumes_are_checked_like_images", image_volumes),
        ("attestations_are_required_and_judged", attestations),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let trials = testbed::ignore_on(
        trials,
        Generation::Containerd16,
        &["image_volumes_are_checked_like_images"],
        "containerd 1.6 has no image volumes (CRI Mount.image, containerd 2.1+): it ignores the field",
    );
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// --- helpers -----------------------------------------------------------------------------------

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(namespace: &str, name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: namespace.into(),
            attempt: 0,
        }),
        linux: Some(k8s::LinuxPodSandboxConfig {
            security_context: Some(k8s::LinuxSandboxSecurityContext {
                namespace_options: Some(k8s::NamespaceOption { network: k8s::NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn pull(socket: &Path, image: &str) -> Result<String, tonic::Status> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod("team", "web")) };
    Ok(cri::images(socket).pull_image(req).await?.into_inner().image_ref)
}

async fn image_status(socket: &Path, image: &str) -> Result<Option<k8s::Image>, tonic::Status> {
    Ok(cri::images(socket).image_status(k8s::ImageStatusRequest { image: spec(image), verbose: false }).await?.into_inner().image)
}

/// The refusal kubelet would see: code Unknown, message `SignatureValidationFailed: ...`.
fn expect_refusal(result: Result<String, tonic::Status>, contains: &[&str]) -> Result<String, Failed> {
    let status = match result {
        Ok(r) => return Err(format!("pull succeeded ({r}); expected SignatureValidationFailed").into()),
        Err(s) => s,
    };
    ensure!(status.code() == tonic::Code::Unknown, "code {:?}: {}", status.code(), status.message());
    let msg = status.message().to_string();
    ensure!(msg.starts_with("SignatureValidationFailed: "), "message: {msg}");
    ensure!(!msg.contains('\n'), "message is not one line: {msg}");
    for c in contains {
        ensure!(msg.contains(c), "message lacks {c:?}: {msg}");
    }
    Ok(msg)
}

/// Pushes a new tiny image (a distinct digest) to `repo:tag`; returns its digest.
async fn push_image(c: &Ctx, repo: &str, tag: &str) -> Result<Digest, Failed> {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"pullgate.test": format!("{repo}:{tag}")}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))?;
    let cd = c.pusher.blob(repo, &config).await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": []
    });
    Ok(c.pusher.json_manifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", &manifest).await?.0)
}

// --- trials ------------------------------------------------------------------------------------

fn signed_image_is_pulled_and_runs(c: &Ctx) -> TestResult {
    let image = c.tb.get("DEMO_IMAGE").to_string();
    let digest = c.tb.get("DEMO_DIGEST").to_string();
    c.rt.block_on(async {
        let image_ref = pull(&c.pg_sock, &image).await?;
        // kubelet's view: ImageStatus by the reference it asked for finds the image, so
        // IfNotPresent does not pull again.
        let st = image_status(&c.pg_sock, &image).await?.ok_or("ImageStatus by tag finds nothing after the pull")?;
        ensure!(st.id == image_ref, "{} != {image_ref}", st.id);
        ensure!(st.repo_digests.iter().any(|d| d.ends_with(&digest)), "repo digests {:?}", st.repo_digests);
        ensure!(st.repo_tags.contains(&image), "repo tags {:?}", st.repo_tags);

        // And it runs: CreateContainer through pullgate checks the image again (cached).
        let mut rt = cri::runtime(&c.pg_sock);
        let cfg = pod("team", "signed");
        let sandbox = rt
            .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let container = rt
            .create_container(k8s::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(k8s::ContainerConfig {
                    metadata: Some(k8s::ContainerMetadata { name: "app".into(), attempt: 0 }),
                    image: spec(&image_ref),
                    command: vec!["/hello".into()],
                    ..Default::default()
                }),
                sandbox_config: Some(cfg),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(k8s::StartContainerRequest { container_id: container.clone() }).await?;
        let out = rt
            .exec_sync(k8s::ExecSyncRequest {
                container_id: container.clone(),
                cmd: vec!["/hello".into(), "echo".into(), "signed".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        ensure!(String::from_utf8_lossy(&out.stdout).trim() == "signed", "exec output {:?}", out);
        rt.stop_container(k8s::StopContainerRequest { container_id: container.clone(), timeout: 5 }).await?;
        rt.remove_container(k8s::RemoveContainerRequest { container_id: container }).await?;
        rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await?;
        rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await?;
        Ok::<_, Failed>(())
    })?;
    let records = c.audit();
    let pulls: Vec<&AuditRecord> = records.iter().filter(|r| r.call == "PullImage" && r.image == image).collect();
    let r = pulls.first().ok_or("no audit record for the pull")?;
    ensure!(r.decision == "allow" && r.digest == digest && r.policy == "demo" && r.mode == Some(pullgate::policy::Mode::Enforce), "{r:?}");
    ensure!(r.identity.contains(DEFAULT_SAN) && r.source.contains("referrer"), "identity/source: {r:?}");
    ensure!(r.namespace == "team" && r.pod == "team/web", "{r:?}");
    let creates: Vec<&AuditRecord> = records.iter().filter(|r| r.call == "CreateContainer" && r.decision == "allow").collect();
    ensure!(creates.iter().any(|r| r.cached && r.digest == digest), "CreateContainer did not reuse the decision: {creates:?}");
    Ok(())
}

fn legacy_signed_image_is_pulled(c: &Ctx) -> TestResult {
    let image = c.tb.get("DEMO2_IMAGE").to_string();
    c.rt.block_on(pull(&c.pg_sock, &image))?;
    let r = c.audit().into_iter().rev().find(|r| r.image == image).ok_or("no audit record")?;
    ensure!(r.decision == "allow" && r.source.contains(".sig"), "{r:?}");
    Ok(())
}

fn unsigned_image_is_refused(c: &Ctx) -> TestResult {
    let image = c.tb.get("UNSIGNED_IMAGE").to_string();
    let digest = c.tb.get("UNSIGNED_DIGEST").to_string();
    c.rt.block_on(async {
        let msg = expect_refusal(pull(&c.pg_sock, &image).await, &[&image, &digest, "policy demo", "no signatures found"])?;
        eprintln!("kubelet would report: SignatureValidationFailed ({msg})");
        // Nothing was pulled.
        ensure!(image_status(&c.direct(), &image).await?.is_none(), "the unsigned image is on the node");
        Ok(())
    })
}

fn bad_signatures_are_refused(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let mut cases: Vec<(&str, SignOptions, Vec<&str>)> = Vec::new();
        let now = c.stack.lock().unwrap().now;
        let mut wrong_id = SignOptions::new(now);
        wrong_id.identity.san =
            support::sigstore::certs::San::Uri("https://github.com/evil/fork/.github/workflows/release.yml@refs/heads/main".into());
        cases.push(("wrong-identity", wrong_id, vec!["identity mismatch", "evil/fork"]));
        let mut wrong_issuer = SignOptions::new(now);
        wrong_issuer.identity.issuer = Some("https://accounts.example.com".into());
        cases.push(("wrong-issuer", wrong_issuer, vec!["issuer mismatch", "accounts.example.com"]));
        let mut untrusted = SignOptions::new(now);
        untrusted.untrusted_ca = true;
        cases.push(("untrusted-ca", untrusted, vec!["certificate"]));
        for (name, opts, want) in cases {
            let repo = format!("demo/neg-{name}");
            let digest = push_image(c, &repo, "1").await?;
            sign_and_push(&mut c.stack.lock().unwrap(), &c.pusher, &repo, &digest, &opts, Format::Bundle).await?;
            let image = format!("{}/{repo}:1", c.registry);
            let msg = expect_refusal(pull(&c.pg_sock, &image).await, &want)?;
            eprintln!("{name}: {msg}");
        }
        // A tampered signature: a valid bundle with its signature bytes changed.
        let repo = "demo/neg-tampered";
        let digest = push_image(c, repo, "1").await?;
        let subject: pullgate::verify::Digest = digest.to_string().parse()?;
        let mut bundle = {
            let mut stack = c.stack.lock().unwrap();
            stack.sign_image_v3(&subject, &SignOptions::new(now)).bundle
        };
        let sig = bundle["dsseEnvelope"]["signatures"][0]["sig"].as_str().ok_or("bundle has no DSSE signature")?.to_string();
        let mut raw = base64_decode(&sig);
        let last = raw.len() - 1;
        raw[last] ^= 1;
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = json!(base64_encode(&raw));
        support::signer::push_bundle(&c.pusher, repo, &digest, bundle.to_string().as_bytes()).await?;
        let msg = expect_refusal(pull(&c.pg_sock, &format!("{}/{repo}:1", c.registry)).await, &["signature"])?;
        eprintln!("tampered: {msg}");
        Ok(())
    })
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unmatched_image_is_denied(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        push_image(c, "other/thing", "1").await?;
        let image = format!("{}/other/thing:1", c.registry);
        expect_refusal(pull(&c.pg_sock, &image).await, &["matches no policy", "policy.unmatched"])?;
        Ok(())
    })
}

fn exempt_pause_image_is_allowed(c: &Ctx) -> TestResult {
    let image = c.tb.get("SANDBOX_IMAGE").to_string();
    c.rt.block_on(pull(&c.pg_sock, &image))?;
    let r = c.audit().into_iter().rev().find(|r| r.image == image).ok_or("no audit record")?;
    ensure!(r.decision == "allow" && r.policy == "exempt:sandbox", "{r:?}");
    Ok(())
}

/// The tag moves to an unsigned image after pullgate verified it: what containerd holds, and
/// what runs, is still the verified digest; the unsigned one is never pulled.
fn moved_tag(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let repo = "demo/moving";
        let signed = push_image(c, repo, "1").await?;
        {
            let mut stack = c.stack.lock().unwrap();
            let opts = SignOptions::new(stack.now);
            sign_and_push(&mut stack, &c.pusher, repo, &signed, &opts, Format::Bundle).await?;
        }
        let image = format!("{}/{repo}:1", c.registry);
        pull(&c.pg_sock, &image).await?;
        // The tag moves to an unsigned image.
        let unsigned = push_image(c, repo, "unsigned").await?;
        let (_, manifest) = {
            let addr = c.pusher.addr;
            let r = support::registry::http::request(
                addr,
                "GET",
                &format!("/v2/{repo}/manifests/unsigned"),
                &[("accept", "application/vnd.oci.image.manifest.v1+json".into())],
                bytes::Bytes::new(),
            )
            .await?;
            (r.status, r.body)
        };
        c.pusher.manifest(repo, "1", "application/vnd.oci.image.manifest.v1+json", &manifest).await?;
        // containerd's record for the tag still names the verified digest.
        let st = image_status(&c.pg_sock, &image).await?.ok_or("image gone")?;
        ensure!(st.repo_digests.iter().any(|d| d.ends_with(&signed.to_string())), "{:?}", st.repo_digests);
        // A new pull resolves the moved tag, refuses it, and leaves the verified image in place.
        expect_refusal(pull(&c.pg_sock, &image).await, &[&unsigned.to_string()])?;
        let st = image_status(&c.direct(), &image).await?.ok_or("image gone")?;
        ensure!(st.repo_digests.iter().all(|d| !d.ends_with(&unsigned.to_string())), "unsigned digest on the node: {:?}", st.repo_digests);
        let listed = cri::images(&c.direct()).list_images(k8s::ListImagesRequest::default()).await?.into_inner();
        ensure!(
            !listed.images.iter().any(|i| i.repo_digests.iter().any(|d| d.ends_with(&unsigned.to_string()))),
            "the unsigned image was pulled"
        );
        Ok(())
    })
}

/// Images that reached the node without pullgate: CreateContainer verifies them then.
fn preloaded_images(c: &Ctx) -> TestResult {
    let unsigned = c.tb.get("UNSIGNED_IMAGE").to_string();
    let signed = c.tb.get("DEMO2_IMAGE").to_string();
    c.rt.block_on(async {
        // Pulled straight from containerd, bypassing pullgate.
        let unsigned_id = pull(&c.direct(), &unsigned).await?;
        cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: spec(&signed) }).await.ok();
        let signed_id = pull(&c.direct(), &signed).await?;
        let mut rt = cri::runtime(&c.pg_sock);
        let cfg = pod("team", "preloaded");
        let sandbox = rt
            .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let create = |image: String, asked: Option<&str>| {
            let mut rt = rt.clone();
            let (sandbox, cfg) = (sandbox.clone(), cfg.clone());
            let user_specified_image = asked.unwrap_or_default().to_string();
            async move {
                rt.create_container(k8s::CreateContainerRequest {
                    pod_sandbox_id: sandbox,
                    config: Some(k8s::ContainerConfig {
                        metadata: Some(k8s::ContainerMetadata {
                            name: format!("c{}{}", image.len(), user_specified_image.len()),
                            attempt: 0,
                        }),
                        image: Some(k8s::ImageSpec { image, user_specified_image, ..Default::default() }),
                        command: vec!["/hello".into()],
                        ..Default::default()
                    }),
                    sandbox_config: Some(cfg),
                })
                .await
                .map(|r| r.into_inner().container_id)
            }
        };
        let refused = create(unsigned_id.clone(), None).await;
        // As kubelet 1.30+ sends it: the image ID plus the name the pod spec used.
        let named = create(unsigned_id.clone(), Some(&unsigned)).await;
        let ok = create(signed_id.clone(), None).await;
        rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await?;
        rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await?;
        let status = refused.err().ok_or("CreateContainer of a pre-loaded unsigned image succeeded")?;
        ensure!(
            status.message().starts_with("SignatureValidationFailed: ") && status.message().contains("no signatures found"),
            "{}",
            status.message()
        );
        // The refusal names what the pod asked for, then the digest, once.
        let status = named.err().ok_or("CreateContainer of a pre-loaded unsigned image by name succeeded")?;
        let msg = status.message();
        ensure!(
            msg.starts_with(&format!("SignatureValidationFailed: image {unsigned} (sha256:")) && msg.matches("sha256:").count() == 1,
            "{msg}"
        );
        ok.map_err(|s| format!("pre-loaded signed image refused: {}", s.message()))?;
        Ok(())
    })
}

fn concurrent_pulls(c: &Ctx) -> TestResult {
    let repo = "demo/popular";
    let image = format!("{}/{repo}:1", c.registry);
    c.rt.block_on(async {
        let digest = push_image(c, repo, "1").await?;
        {
            let mut stack = c.stack.lock().unwrap();
            let opts = SignOptions::new(stack.now);
            sign_and_push(&mut stack, &c.pusher, repo, &digest, &opts, Format::Bundle).await?;
        }
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let sock = c.pg_sock.clone();
                let image = image.clone();
                tokio::spawn(async move { pull(&sock, &image).await })
            })
            .collect();
        for call in calls {
            call.await.map_err(|e| e.to_string())??;
        }
        Ok::<_, Failed>(())
    })?;
    let records: Vec<AuditRecord> = c.audit().into_iter().filter(|r| r.image == image).collect();
    ensure!(records.len() == 100, "{} audit records", records.len());
    ensure!(records.iter().all(|r| r.decision == "allow"), "a pull was refused");
    let verified = records.iter().filter(|r| !r.cached).count();
    ensure!(verified == 1, "{verified} verifications for 100 concurrent pulls of one digest");
    Ok(())
}

/// The sum of the samples of counter `name` (all label sets) in a `/metrics` scrape.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| key.split('{').next() == Some(name))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Issue 16: 100 pods pulling one digest at once cause one verification, as pullgate's own
/// metrics count it (an instance with the admin endpoint on, so the counters start at zero).
fn concurrent_pulls_by_digest(c: &Ctx) -> TestResult {
    let repo = "demo/popular-by-digest";
    let sock = c.tb.dir.join("sf.sock");
    let audit = c.tb.dir.join("sf-audit.log");
    let addr = admin::free_port()?;
    let paths = SetupPaths { dir: c.tb.dir.clone(), registry: c.registry.clone(), containerd: c.direct() };
    let cfg = c.tb.dir.join("sf.yaml");
    let text = format!("{}admin:\n  listen: {addr}\n", config(&paths, &sock, "enforce", c.tb.get("HOSTS_DIR"), &audit));
    std::fs::write(&cfg, text)?;
    let mut d = Daemon::start(&sock, &["--config", cfg.to_str().unwrap()])?;
    let scrape = || -> Result<String, Failed> {
        let (status, body) = admin::http_get(addr, "/metrics")?;
        ensure!(status == 200, "GET /metrics: HTTP {status}");
        Ok(body)
    };
    let before = scrape()?;
    let image = c.rt.block_on(async {
        let digest = push_image(c, repo, "1").await?;
        {
            let mut stack = c.stack.lock().unwrap();
            let opts = SignOptions::new(stack.now);
            sign_and_push(&mut stack, &c.pusher, repo, &digest, &opts, Format::Bundle).await?;
        }
        let image = format!("{}/{repo}@{digest}", c.registry);
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let (sock, image) = (sock.clone(), image.clone());
                tokio::spawn(async move { pull(&sock, &image).await })
            })
            .collect();
        for call in calls {
            call.await.map_err(|e| e.to_string())?.map_err(|s| format!("a pull failed: {}", s.message()))?;
        }
        Ok::<_, Failed>(image)
    })?;
    let after = scrape()?;
    d.terminate(Duration::from_secs(10));
    let delta = |name: &str| counter_sum(&after, name) - counter_sum(&before, name);
    let verifications = delta("pullgate_verifications_total");
    ensure!(verifications == 1.0, "{verifications} verifications for 100 concurrent pulls of one digest (metrics)");
    let lookup = |result: &str| {
        let get = |text: &str| admin::sample(text, "pullgate_decision_cache_lookups_total", &[("result", result)]).unwrap_or(0.0);
        get(&after) - get(&before)
    };
    ensure!(
        lookup("miss") == 1.0 && lookup("joined") + lookup("hit") == 99.0,
        "cache lookups: miss {}, joined {}, hit {}",
        lookup("miss"),
        lookup("joined"),
        lookup("hit")
    );
    let (records, _) = read_records(&audit)?;
    let records: Vec<&AuditRecord> = records.iter().filter(|r| r.image == image).collect();
    ensure!(records.len() == 100 && records.iter().all(|r| r.decision == "allow"), "{} audit records, all allowed expected", records.len());
    ensure!(records.iter().filter(|r| !r.cached).count() == 1, "more than one uncached decision in the audit log");
    Ok(())
}

/// A second pullgate on the same node, with the same policy in audit mode.
fn start_instance(c: &Ctx, name: &str, mode: &str, hosts_dir: &str) -> Result<(Daemon, PathBuf, PathBuf), Failed> {
    let sock = c.tb.dir.join(format!("{name}.sock"));
    let audit = c.tb.dir.join(format!("{name}-audit.log"));
    let paths = SetupPaths { dir: c.tb.dir.clone(), registry: c.registry.clone(), containerd: c.direct() };
    let cfg = c.tb.dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, config(&paths, &sock, mode, hosts_dir, &audit))?;
    let d = Daemon::start(&sock, &["--config", cfg.to_str().unwrap()])?;
    Ok((d, sock, audit))
}

fn audit_mode(c: &Ctx) -> TestResult {
    let image = c.tb.get("UNSIGNED_IMAGE").to_string();
    let (mut d, sock, audit) = start_instance(c, "audit", "audit", c.tb.get("HOSTS_DIR"))?;
    c.rt.block_on(async {
        cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: spec(&image) }).await.ok();
        pull(&sock, &image).await.map_err(|s| format!("audit mode refused: {}", s.message()))
    })?;
    d.terminate(Duration::from_secs(10));
    let (records, _) = read_records(&audit)?;
    let r = records.iter().find(|r| r.image == image).ok_or("no audit record")?;
    ensure!(
        r.mode == Some(pullgate::policy::Mode::Audit)
            && r.decision == "allow"
            && r.would_deny
            && r.format == 2
            && r.reason.contains("no signatures found"),
        "{r:?}"
    );
    ensure!(d.logs().contains("audit mode: enforce would refuse this"), "no warning in logs");
    Ok(())
}

fn mirror_down(c: &Ctx) -> TestResult {
    // pullgate's hosts directory sends the registry to a closed port; containerd's still works,
    // so what audit mode lets through really is pulled.
    let dead = c.tb.dir.join("dead-hosts");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    std::fs::create_dir_all(dead.join(&c.registry))?;
    std::fs::write(
        dead.join(&c.registry).join("hosts.toml"),
        format!("server = \"http://127.0.0.1:{port}\"\n[host.\"http://127.0.0.1:{port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )?;
    let image = format!("{}/demo/app:1", c.registry);
    for (mode, name) in [("enforce", "down-enforce"), ("audit", "down-audit")] {
        let (mut d, sock, audit) = start_instance(c, name, mode, dead.to_str().unwrap())?;
        let result = c.rt.block_on(pull(&sock, &image));
        d.terminate(Duration::from_secs(10));
        let (records, _) = read_records(&audit)?;
        let r = records.iter().find(|r| r.image == image).ok_or("no audit record")?;
        ensure!(
            r.reason.contains("cannot resolve") && r.reason.contains(&port.to_string()),
            "reason does not say the mirror is down: {r:?}"
        );
        match mode {
            "enforce" => {
                expect_refusal(result, &["cannot resolve", &format!("127.0.0.1:{port}")])?;
            }
            _ => {
                result.map_err(|s| format!("audit mode refused with the mirror down: {}", s.message()))?;
            }
        }
    }
    Ok(())
}

fn missing_trust_root(c: &Ctx) -> TestResult {
    // Same policy, but an empty state directory: nothing to verify against.
    let sock = c.tb.dir.join("noroot.sock");
    let audit = c.tb.dir.join("noroot-audit.log");
    let paths = SetupPaths { dir: c.tb.dir.join("noroot"), registry: c.registry.clone(), containerd: c.direct() };
    std::fs::create_dir_all(&paths.dir)?;
    let cfg = c.tb.dir.join("noroot.yaml");
    std::fs::write(&cfg, config(&paths, &sock, "enforce", c.tb.get("HOSTS_DIR"), &audit))?;
    let mut d = Daemon::start(&sock, &["--config", cfg.to_str().unwrap()])?;
    let result = c.rt.block_on(pull(&sock, c.tb.get("DEMO_IMAGE")));
    d.terminate(Duration::from_secs(10));
    expect_refusal(result, &["trust root", "pullgate trust-root import"])?;
    let _ = &c.state_dir;
    Ok(())
}

fn policy_reload(c: &Ctx) -> TestResult {
    let (mut d, sock, _audit) = start_instance(c, "reload", "enforce", c.tb.get("HOSTS_DIR"))?;
    let cfg = c.tb.dir.join("reload.yaml");
    // A broken policy: refused, the last good one stays.
    let good = std::fs::read_to_string(&cfg)?;
    std::fs::write(&cfg, good.replace("mode: enforce", "mode: sometimes"))?;
    d.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    ensure!(d.logs().contains("reload refused"), "no refusal logged:\n{}", d.logs());
    let unsigned = c.tb.get("UNSIGNED_IMAGE").to_string();
    c.rt.block_on(async { expect_refusal(pull(&sock, &unsigned).await, &["no signatures found"]) })?;
    // A good new policy (audit mode) takes effect.
    std::fs::write(&cfg, good.replace("mode: enforce", "mode: audit"))?;
    d.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    ensure!(d.logs().contains("policy reloaded"), "no reload logged:\n{}", d.logs());
    c.rt.block_on(pull(&sock, &unsigned)).map_err(|s| format!("new audit policy not in force: {}", s.message()))?;
    d.terminate(Duration::from_secs(10));
    Ok(())
}

/// Offline: every connection the daemon opens while it verifies signed, unsigned and
/// refused images goes to containerd's socket or the configured mirror; nothing else (no
/// Fulcio, Rekor, TUF CDN, DNS). Traced at the system-call level with strace.
fn offline(c: &Ctx) -> TestResult {
    let sock = c.tb.dir.join("traced.sock");
    let audit = c.tb.dir.join("traced-audit.log");
    let trace = c.tb.dir.join("connect.trace");
    let paths = SetupPaths { dir: c.tb.dir.clone(), registry: c.registry.clone(), containerd: c.direct() };
    let cfg = c.tb.dir.join("traced.yaml");
    std::fs::write(&cfg, config(&paths, &sock, "enforce", c.tb.get("HOSTS_DIR"), &audit))?;
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=connect,sendto", "-o"]).arg(&trace).arg(daemon::binary());
    cmd.args(["serve", "--config", cfg.to_str().unwrap()]);
    let mut d = Daemon::start_with(&sock, &mut cmd)?;
    c.rt.block_on(async {
        cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: spec(c.tb.get("DEMO_IMAGE")) }).await.ok();
        pull(&sock, c.tb.get("DEMO_IMAGE")).await?;
        let _ = pull(&sock, c.tb.get("UNSIGNED_IMAGE")).await;
        let _ = pull(&sock, "ghcr.io/example/app:1").await;
        Ok::<_, Failed>(())
    })?;
    // SIGTERM the traced pullgate itself (strace's child), then strace exits with it.
    let _ = Command::new("pkill").args(["-TERM", "-f"]).arg(format!("serve --config {}", cfg.display())).status();
    d.wait(Duration::from_secs(10));
    d.terminate(Duration::from_secs(5));
    let text = std::fs::read_to_string(&trace)?;
    let connects: Vec<&str> = text.lines().filter(|l| l.contains("connect(")).collect();
    ensure!(!connects.is_empty(), "strace saw no connect at all:\n{text}");
    let port = c.registry.rsplit(':').next().unwrap_or_default();
    let mirror = format!("sin_port=htons({port}), sin_addr=inet_addr(\"127.0.0.1\")");
    let containerd = format!("sun_path=\"{}\"", c.direct().display());
    let mut reached_mirror = false;
    for line in &connects {
        if line.contains("AF_UNIX") {
            ensure!(line.contains(&containerd), "connection to a unix socket other than containerd's: {line}");
        } else if line.contains("AF_INET") {
            ensure!(line.contains(&mirror), "network connection other than the mirror: {line}");
            reached_mirror = true;
        } else {
            return Err(format!("unexpected connect: {line}").into());
        }
    }
    ensure!(reached_mirror, "the mirror was never contacted: {connects:?}");
    ensure!(!text.contains("htons(53)"), "DNS traffic: {text}");
    Ok(())
}

/// Image volumes (CRI `Mount.image`, KEP-4639; containerd 2.1+): a pod whose image volume is
/// signed is created with the volume mounted; one whose image volume is unsigned (pre-loaded
/// behind pullgate's back, as PullImage through pullgate refuses it) is refused, naming it.
fn image_volumes(c: &Ctx) -> TestResult {
    let image = c.tb.get("DEMO_IMAGE").to_string();
    let signed_volume = c.tb.get("DEMO2_IMAGE").to_string();
    let unsigned_volume = c.tb.get("UNSIGNED_IMAGE").to_string();
    c.rt.block_on(async {
        let image_ref = pull(&c.pg_sock, &image).await?;
        let signed_ref = pull(&c.pg_sock, &signed_volume).await?;
        let unsigned_ref = pull(&c.direct(), &unsigned_volume).await?;
        let mut rt = cri::runtime(&c.pg_sock);
        let cfg = pod("team", "volumes");
        let sandbox = rt
            .run_pod_sandbox(k8s::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let create = |name: &'static str, volume: String| {
            let mut rt = rt.clone();
            let (sandbox, cfg, image_ref) = (sandbox.clone(), cfg.clone(), image_ref.clone());
            async move {
                rt.create_container(k8s::CreateContainerRequest {
                    pod_sandbox_id: sandbox,
                    config: Some(k8s::ContainerConfig {
                        metadata: Some(k8s::ContainerMetadata { name: name.into(), attempt: 0 }),
                        image: spec(&image_ref),
                        command: vec!["/hello".into()],
                        mounts: vec![k8s::Mount {
                            container_path: "/vol".into(),
                            readonly: true,
                            image: spec(&volume),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    sandbox_config: Some(cfg),
                })
                .await
                .map(|r| r.into_inner().container_id)
            }
        };
        let refused = create("unsigned-volume", unsigned_ref.clone()).await;
        let allowed = create("signed-volume", signed_ref.clone()).await;
        let mounted = match &allowed {
            Ok(id) => {
                rt.start_container(k8s::StartContainerRequest { container_id: id.clone() }).await?;
                let out = rt
                    .exec_sync(k8s::ExecSyncRequest {
                        container_id: id.clone(),
                        cmd: vec!["/hello".into(), "cat".into(), "/vol/etc/pullgate-variant".into()],
                        timeout: 10,
                    })
                    .await?
                    .into_inner();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            Err(_) => String::new(),
        };
        rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await?;
        rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await?;
        cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: spec(&unsigned_ref) }).await.ok();
        allowed.map_err(|s| format!("a container with a signed image volume was refused: {}", s.message()))?;
        ensure!(mounted == "demo/app:2", "the signed image volume is not mounted at /vol: {mounted:?}");
        let status = refused.err().ok_or("a container with an unsigned image volume was created")?;
        ensure!(
            status.message().starts_with("SignatureValidationFailed: ") && status.message().contains("no signatures found"),
            "{}",
            status.message()
        );
        Ok(())
    })
}

// --- attestations (#14) -------------------------------------------------------------------------

fn provenance(workflow_ref: &str) -> serde_json::Value {
    json!({
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {"workflow": {"ref": workflow_ref, "repository": "https://github.com/pullgate/demo", "path": ".github/workflows/release.yml"}},
            "resolvedDependencies": [{"uri": format!("git+https://github.com/pullgate/demo@{workflow_ref}"), "digest": {"gitCommit": "0123456789abcdef0123456789abcdef01234567"}}]
        },
        "runDetails": {"builder": {"id": "https://github.com/actions/runner/github-hosted"}, "metadata": {"invocationId": "https://github.com/pullgate/demo/actions/runs/1/attempts/1"}}
    })
}

fn vuln_scan(finished: i64) -> serde_json::Value {
    json!({
        "scanner": {"uri": "pkg:github/aquasecurity/trivy@0.50.0", "version": "0.50.0", "result": {"summary": {"critical": 0}}},
        "metadata": {"scanStartedOn": support::sigstore::rfc3339(finished - 60), "scanFinishedOn": support::sigstore::rfc3339(finished)}
    })
}

/// What one attestation case publishes besides the image signature.
enum Att {
    /// A valid attestation bundle: `predicate_type`, `predicate`, signed by `san`.
    Valid { predicate_type: &'static str, predicate: serde_json::Value, san: &'static str },
    /// A valid one with its DSSE payload edited after signing.
    Tampered { predicate_type: &'static str, predicate: serde_json::Value, san: &'static str },
}

/// Where the attestations of a case are published.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// As cosign v3 bundle referrers (listed in the referrers tag schema).
    Referrers,
    /// As files in the node's bundle directory.
    BundleDir,
    /// As layers of cosign's legacy `sha256-<hex>.att` tag (`cosign attest` before v3).
    AttTag,
}

/// Signature plus provenance and scan, attached at `place` to a fresh image at `att/<name>:1`;
/// pulls it through pullgate.
async fn attested_pull(c: &Ctx, name: &str, atts: Vec<Att>, place: Place) -> Result<(String, Result<String, tonic::Status>), Failed> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let repo = format!("att/{name}");
    let digest = push_image(c, &repo, "1").await?;
    let subject: pullgate::verify::Digest = digest.to_string().parse()?;
    let now = c.stack.lock().unwrap().now;
    sign_and_push(&mut c.stack.lock().unwrap(), &c.pusher, &repo, &digest, &SignOptions::new(now), Format::Bundle).await?;
    let mut att_layers = Vec::new();
    for (i, att) in atts.into_iter().enumerate() {
        let (predicate_type, predicate, san, tamper) = match att {
            Att::Valid { predicate_type, predicate, san } => (predicate_type, predicate, san, false),
            Att::Tampered { predicate_type, predicate, san } => (predicate_type, predicate, san, true),
        };
        let mut opts = SignOptions::new(now);
        opts.identity.san = support::sigstore::certs::San::Uri(san.into());
        if place == Place::AttTag {
            // What `cosign attest` v2 pushes: Statement v0.1, an intoto/0.0.2 entry and its SET.
            opts.statement_type = "https://in-toto.io/Statement/v0.1".into();
            let legacy = c.stack.lock().unwrap().attest_image_legacy(&subject, &opts, predicate_type, predicate, ("intoto", "0.0.2"));
            ensure!(!tamper, "tampering is not a case for the .att tag here");
            att_layers.push((legacy.envelope.clone(), json!(legacy.annotations())));
            continue;
        }
        let mut bundle = c.stack.lock().unwrap().attest_image(&subject, &opts, predicate_type, predicate).bundle;
        if tamper {
            let payload = base64_decode(bundle["dsseEnvelope"]["payload"].as_str().ok_or("no payload")?);
            let edited = String::from_utf8(payload)?.replace("refs/heads/evil", "refs/heads/main");
            bundle["dsseEnvelope"]["payload"] = json!(b64.encode(edited));
        }
        let bytes = bundle.to_string();
        if place == Place::BundleDir {
            let file = c.tb.dir.join("bundles").join(format!("{}.{i}.att.json", digest.file_stem()));
            std::fs::create_dir_all(file.parent().unwrap())?;
            std::fs::write(&file, bytes)?;
        } else {
            support::signer::push_attestation(&c.pusher, &repo, &digest, predicate_type, bytes.as_bytes()).await?;
        }
    }
    if !att_layers.is_empty() {
        support::registry::push::push_attestation_layers(&c.pusher, &repo, &digest, &att_layers).await?;
    }
    let image = format!("{}/{repo}:1", c.registry);
    let result = pull(&c.pg_sock, &image).await;
    Ok((image, result))
}

fn attestations(c: &Ctx) -> TestResult {
    let now = c.stack.lock().unwrap().now;
    let good_provenance = || Att::Valid { predicate_type: SLSA, predicate: provenance("refs/heads/main"), san: DEFAULT_SAN };
    let fresh_scan = || Att::Valid { predicate_type: VULN, predicate: vuln_scan(now - 3600), san: SCANNER };
    c.rt.block_on(async {
        // Allowed: from referrers (the referrers tag schema here), from the bundle directory, and
        // from cosign's legacy `.att` tag alone.
        for (name, place) in [("allowed", Place::Referrers), ("allowed-files", Place::BundleDir), ("allowed-att", Place::AttTag)] {
            let (image, result) = attested_pull(c, name, vec![good_provenance(), fresh_scan()], place).await?;
            result.map_err(|s| format!("{name}: attested image refused: {}", s.message()))?;
            let r = c.audit().into_iter().rev().find(|r| r.image == image).ok_or("no audit record")?;
            ensure!(r.decision == "allow" && r.policy == "attested" && r.reason.contains(&format!("attested: {SLSA}, {VULN}")), "{name}: {r:?}");
            if place == Place::AttTag {
                // `pullgate verify IMAGE` lists the `.att` layers like the others.
                let out = Command::new(daemon::binary()).args(["verify", "--config"]).arg(c.tb.dir.join("enforce.yaml")).arg(&image).output()?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                ensure!(out.status.code() == Some(0), "verify refused it:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
                for t in [SLSA, VULN] {
                    ensure!(
                        stdout.lines().any(|l| l.contains(&format!("ok      attestation {t} from layer")) && l.contains(".att on ") && l.contains("satisfies authority release-workflow")),
                        "verify output lacks the .att attestation {t}:\n{stdout}"
                    );
                }
            }
        }
        let refusals: Vec<(&str, Vec<Att>, Vec<String>)> = vec![
            ("missing", vec![fresh_scan()], vec![format!("attestation {SLSA}: not found")]),
            (
                "condition-att",
                vec![Att::Valid { predicate_type: SLSA, predicate: provenance("refs/heads/evil"), san: DEFAULT_SAN }, fresh_scan()],
                vec![format!(r#"attestation {SLSA}: buildDefinition.externalParameters.workflow.ref = "refs/heads/evil", want "refs/heads/main""#)],
            ),
            (
                "wrong-signer",
                vec![Att::Valid { predicate_type: SLSA, predicate: provenance("refs/heads/main"), san: "https://github.com/evil/fork/.github/workflows/release.yml@refs/heads/main" }, fresh_scan()],
                vec![format!("attestation {SLSA}: identity mismatch"), "evil/fork".into()],
            ),
            (
                "condition",
                vec![Att::Valid { predicate_type: SLSA, predicate: provenance("refs/heads/evil"), san: DEFAULT_SAN }, fresh_scan()],
                vec![format!(r#"attestation {SLSA}: buildDefinition.externalParameters.workflow.ref = "refs/heads/evil", want "refs/heads/main""#)],
            ),
            (
                "stale",
                vec![good_provenance(), Att::Valid { predicate_type: VULN, predicate: vuln_scan(now - 30 * 86400), san: SCANNER }],
                vec![format!("attestation {VULN}: metadata.scanFinishedOn = "), "want a time no older than 7d".into()],
            ),
            (
                "tampered",
                vec![Att::Tampered { predicate_type: SLSA, predicate: provenance("refs/heads/evil"), san: DEFAULT_SAN }, fresh_scan()],
                vec![format!("attestation {SLSA}: ")],
            ),
        ];
        for (name, atts, want) in refusals {
            let place = if name.ends_with("-att") { Place::AttTag } else { Place::Referrers };
            let (image, result) = attested_pull(c, name, atts, place).await?;
            let want: Vec<&str> = want.iter().map(String::as_str).collect();
            let msg = expect_refusal(result, &want)?;
            eprintln!("{name}: {msg}");
            if name == "condition" {
                // `pullgate verify IMAGE` lists the attestations found and how each was judged.
                let out = Command::new(daemon::binary()).args(["verify", "--config"]).arg(c.tb.dir.join("enforce.yaml")).arg(&image).output()?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                ensure!(out.status.code() != Some(0), "verify allowed it:\n{stdout}");
                ensure!(
                    stdout.lines().any(|l| l.contains(&format!("failed  attestation {SLSA} from referrer")) && l.contains("want \"refs/heads/main\"")),
                    "verify output lacks the failed provenance:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ensure!(stdout.lines().any(|l| l.contains(&format!("ok      attestation {VULN}")) && l.contains("satisfies authority release-workflow")), "verify output lacks the scan:\n{stdout}");
            }
            if name == "tampered" {
                ensure!(!msg.contains("want \"refs/heads/main\""), "tampered payload judged on its content: {msg}");
            }
            ensure!(image_status(&c.direct(), &image).await?.is_none(), "{name}: the image is on the node");
            let r = c.audit().into_iter().rev().find(|r| r.image == image).ok_or("no audit record")?;
            ensure!(r.decision == "deny", "{name}: {r:?}");
            ensure!(r.category == "attestation", "{name}: category {} for {}", r.category, r.reason);
        }
        Ok(())
    })
}
