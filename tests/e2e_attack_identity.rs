//! Attack suite, identity half of issue 10 ("what is verified is what runs, by names that cannot
//! be forged"), against real parts: a real containerd and registry (`scripts/testbed.sh`), the
//! real `pullgate` binary with the demo policy (`demo/**` enforce, identity pinned, `pause:*`
//! exempt) and a kubelet-like CRI client. Signatures come from the test Sigstore stack
//! (`tests/support/sigstore`, its own code: the real Sigstore services cannot run here).
//!
//! Each attack asserts the refusal kubelet sees (`SignatureValidationFailed: ...`), the audit
//! record, and that containerd holds the unsigned content under no name. Audit mode lets the
//! attacks through with an audit record; pass-through mode (no policy) is unchanged. Both run
//! last, since they bring the unsigned content onto the node.
//!
//! Without root every trial is reported ignored, with the reason.

// The test signing stack is a std Mutex held across awaits inside one `block_on`: trials run
// one at a time and nothing else takes it.
#![allow(clippy::await_holding_lock)]

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

use bytes::Bytes;
use daemon::Daemon;
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed};
use pullgate::enforce::audit::{read_records, AuditRecord};
use pullgate::registry::Digest;
use serde_json::{json, Value};
use support::registry::http::request;
use support::registry::push::{Pusher, OCI_INDEX};
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

/// One pullgate instance of the suite.
struct Instance {
    daemon: Mutex<Daemon>,
    sock: PathBuf,
    audit: PathBuf,
}

impl Instance {
    fn records(&self) -> Vec<AuditRecord> {
        read_records(&self.audit).map(|r| r.0).unwrap_or_default()
    }
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    registry: String,
    /// `localhost:PORT`: the same registry, spelled otherwise.
    alias: String,
    pusher: Pusher,
    stack: Mutex<Stack>,
    /// The signed demo manifest (demo/app:1) and its config digest (image ID).
    signed: Digest,
    signed_id: String,
    /// The unsigned manifest (demo/unsigned:1) and its image ID.
    unsigned: Digest,
    unsigned_id: String,
    /// Enforce, `unmatched: deny`.
    enforce: Instance,
    /// Enforce, `unmatched: allow` (the documented rollout phase).
    rollout: Instance,
    /// Audit mode.
    audit: Instance,
    /// No policy: pass-through.
    passthrough: Instance,
}

impl Ctx {
    fn direct(&self) -> PathBuf {
        self.tb.containerd_sock()
    }
    fn addr(&self) -> SocketAddr {
        self.pusher.addr
    }
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

/// Stops the pullgate instances and the testbed (containerd, shims, registry).
fn teardown(c: &Ctx) {
    for i in [&c.enforce, &c.rollout, &c.audit, &c.passthrough] {
        if let Ok(mut d) = i.daemon.lock() {
            d.terminate(Duration::from_secs(10));
        }
    }
    c.tb.clean();
}

fn config(tb: &Testbed, registry: &str, alias: &str, listen: &Path, audit: &Path, mode: &str, unmatched: &str) -> String {
    format!(
        r#"listen: {listen}
upstream: {upstream}
registry:
  hosts_dir: {hosts_dir}
  bundle_dir: null
  connect_timeout: 1s
  request_timeout: 5s
  discovery_timeout: 10s
  aliases:
    "{registry}": ["{alias}"]
trust_root:
  state_dir: {state}
audit:
  sink: file
  path: {audit}
policy:
  unmatched: {unmatched}
  exemptions:
    - name: sandbox
      images: ["{registry}/pause:*"]
  policies:
    - name: demo
      images: ["{registry}/demo/**"]
      mode: {mode}
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {issuer}
                subject: {san}
                extensions:
                  github-workflow-repository: pullgate/demo
"#,
        listen = listen.display(),
        upstream = tb.containerd_sock().display(),
        hosts_dir = tb.get("HOSTS_DIR"),
        state = tb.dir.join("state").display(),
        audit = audit.display(),
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
    )
}

fn start(tb: &Testbed, name: &str, cfg: Option<String>) -> Result<Instance, String> {
    let sock = tb.dir.join(format!("{name}.sock"));
    let audit = tb.dir.join(format!("{name}.audit.log"));
    let daemon = match cfg {
        Some(text) => {
            let path = tb.dir.join(format!("{name}.yaml"));
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            Daemon::start(&sock, &["--config", path.to_str().unwrap_or_default()])?
        }
        None => Daemon::start(
            &sock,
            &["--listen", sock.to_str().unwrap_or_default(), "--upstream", tb.containerd_sock().to_str().unwrap_or_default()],
        )?,
    };
    Ok(Instance { daemon: Mutex::new(daemon), sock, audit })
}

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "atk", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;
    let alias = format!("localhost:{}", addr.port());
    let pusher = Pusher::new(addr);
    let stack = Stack::new();
    let root = tb.dir.join("trusted_root.json");
    std::fs::write(&root, stack.trusted_root_json()).map_err(|e| e.to_string())?;
    let out = Command::new(daemon::binary())
        .args(["trust-root", "import", "--trusted-root"])
        .arg(&root)
        .arg("--accept-unverified-trusted-root")
        .arg("--state-dir")
        .arg(tb.dir.join("state"))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("trust-root import failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let digest = |k: &str| Digest::parse(tb.get(k)).map_err(|e| e.to_string());
    let (signed, unsigned) = (digest("DEMO_DIGEST")?, digest("UNSIGNED_DIGEST")?);
    let (signed_id, unsigned_id) = rt.block_on(async {
        let s = manifest(addr, "demo/app", &signed).await?;
        let u = manifest(addr, "demo/unsigned", &unsigned).await?;
        Ok::<_, String>((config_of(&s.2)?, config_of(&u.2)?))
    })?;
    let cfg = |name: &str, mode: &str, unmatched: &str| {
        Some(config(
            &tb,
            &registry,
            &alias,
            &tb.dir.join(format!("{name}.sock")),
            &tb.dir.join(format!("{name}.audit.log")),
            mode,
            unmatched,
        ))
    };
    let enforce = start(&tb, "enf", cfg("enf", "enforce", "deny"))?;
    let rollout = start(&tb, "roll", cfg("roll", "enforce", "allow"))?;
    let audit = start(&tb, "aud", cfg("aud", "audit", "deny"))?;
    let passthrough = start(&tb, "pass", None)?;
    Ok(Ctx {
        rt,
        tb,
        registry,
        alias,
        pusher,
        stack: Mutex::new(stack),
        signed,
        signed_id,
        unsigned,
        unsigned_id,
        enforce,
        rollout,
        audit,
        passthrough,
    })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // Order matters: the last two let the unsigned content onto the node.
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("a1_index_platform_disagreement_is_refused", index_platform_disagreement),
        ("a1_allowed_index_pull_is_pinned_to_the_verified_manifest", index_pull_is_pinned),
        ("a1_preloaded_index_is_checked_by_image_id_at_create", preloaded_index_at_create),
        ("a5_other_spellings_of_the_registry_are_one_registry", registry_spellings),
        ("a6_tag_exemption_does_not_admit_a_digest", tag_exemption_and_digest),
        ("exemption_applies_only_to_the_name_the_pod_used", exemption_by_name_used),
        ("reference_tricks_are_refused", reference_tricks),
        ("signature_copied_from_another_image_is_refused", copied_signature),
        ("zz_audit_mode_lets_attacks_through_with_a_record", audit_mode),
        ("zz_pass_through_is_unchanged", pass_through),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// --- helpers -----------------------------------------------------------------------------------

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest's media type, size and bytes, as the registry serves it.
async fn manifest(addr: SocketAddr, repo: &str, digest: &Digest) -> Result<(String, usize, Bytes), String> {
    let r = request(addr, "GET", &format!("/v2/{repo}/manifests/{digest}"), &[("accept", ACCEPT.to_string())], Bytes::new()).await?;
    if r.status != 200 {
        return Err(format!("GET {repo}@{digest}: HTTP {}", r.status));
    }
    let mt = r.header("content-type").unwrap_or("application/vnd.oci.image.manifest.v1+json").to_string();
    Ok((mt, r.body.len(), r.body))
}

fn config_of(manifest: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(manifest).map_err(|e| e.to_string())?;
    v["config"]["digest"].as_str().map(str::to_string).ok_or_else(|| "manifest without config".into())
}

/// Copies manifest `digest` (with its config and layers) from `from` to `to`; returns its media
/// type and size.
async fn copy(c: &Ctx, from: &str, digest: &Digest, to: &str) -> Result<(String, usize), Failed> {
    let (mt, size, body) = manifest(c.addr(), from, digest).await?;
    let v: Value = serde_json::from_slice(&body)?;
    let mut blobs: Vec<String> = vec![config_of(&body)?];
    for l in v["layers"].as_array().cloned().unwrap_or_default() {
        blobs.extend(l["digest"].as_str().map(str::to_string));
    }
    for b in blobs {
        let r = request(c.addr(), "GET", &format!("/v2/{from}/blobs/{b}"), &[], Bytes::new()).await?;
        ensure!(r.status == 200, "GET blob {from}@{b}: HTTP {}", r.status);
        c.pusher.blob(to, &r.body).await?;
    }
    c.pusher.manifest(to, &digest.to_string(), &mt, &body).await?;
    Ok((mt, size))
}

/// Pushes to `repo:1` an index of the signed and the unsigned demo manifests with the given
/// platforms (`os/arch[/variant]`), the signed one signed in `repo`; returns the index digest.
async fn push_index(c: &Ctx, repo: &str, entries: &[(&str, bool)]) -> Result<Digest, Failed> {
    let (smt, ssize) = copy(c, "demo/app", &c.signed, repo).await?;
    let (umt, usize_) = copy(c, "demo/unsigned", &c.unsigned, repo).await?;
    {
        let mut stack = c.stack.lock().map_err(|_| "stack lock")?;
        let opts = SignOptions::new(stack.now);
        sign_and_push(&mut stack, &c.pusher, repo, &c.signed, &opts, Format::Bundle).await?;
    }
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(platform, signed)| {
            let parts: Vec<&str> = platform.split('/').collect();
            let mut p = json!({"os": parts[0], "architecture": parts[1]});
            if let Some(v) = parts.get(2) {
                p["variant"] = json!(v);
            }
            let (mt, d, size) = if *signed { (&smt, &c.signed, ssize) } else { (&umt, &c.unsigned, usize_) };
            json!({"mediaType": mt, "digest": d.to_string(), "size": size, "platform": p})
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    Ok(c.pusher.json_manifest(repo, "1", OCI_INDEX, &index).await?.0)
}

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod() -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: "web".into(),
            uid: format!("web-{}", std::process::id()),
            namespace: "team".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

async fn pull(socket: &Path, image: &str) -> Result<String, tonic::Status> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: Some(pod()) };
    Ok(cri::images(socket).pull_image(req).await?.into_inner().image_ref)
}

async fn image_status(socket: &Path, image: &str) -> Result<Option<k8s::Image>, tonic::Status> {
    Ok(cri::images(socket).image_status(k8s::ImageStatusRequest { image: spec(image), verbose: false }).await?.into_inner().image)
}

async fn remove(socket: &Path, image: &str) -> Result<(), tonic::Status> {
    cri::images(socket).remove_image(k8s::RemoveImageRequest { image: spec(image) }).await.map(|_| ())
}

/// CreateContainer of `image` (as kubelet sends it: the image ref, and the pod spec's name in
/// `user_specified_image`) in a sandbox that does not exist: pullgate decides before
/// containerd looks at the sandbox, so a refusal is pullgate's and anything else passed it.
async fn create(socket: &Path, image: &str, user_specified: Option<&str>) -> Result<(), tonic::Status> {
    let image =
        Some(k8s::ImageSpec { image: image.into(), user_specified_image: user_specified.unwrap_or_default().into(), ..Default::default() });
    let req = k8s::CreateContainerRequest {
        pod_sandbox_id: "no-such-sandbox".into(),
        config: Some(k8s::ContainerConfig {
            metadata: Some(k8s::ContainerMetadata { name: "app".into(), attempt: 0 }),
            image,
            ..Default::default()
        }),
        sandbox_config: Some(pod()),
    };
    cri::runtime(socket).create_container(req).await.map(|_| ())
}

fn refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>, contains: &[&str]) -> Result<String, Failed> {
    let status = match result {
        Ok(r) => return Err(format!("succeeded ({r:?}); expected SignatureValidationFailed").into()),
        Err(s) => s,
    };
    let msg = status.message().to_string();
    ensure!(status.code() == tonic::Code::Unknown && msg.starts_with("SignatureValidationFailed: "), "{:?}: {msg}", status.code());
    ensure!(!msg.contains('\n'), "not one line: {msg}");
    for c in contains {
        ensure!(msg.contains(c), "message lacks {c:?}: {msg}");
    }
    Ok(msg)
}

/// Passed pullgate (containerd's own answer, whatever it is).
fn passed<T>(result: Result<T, tonic::Status>) -> TestResult {
    if let Err(s) = &result {
        ensure!(!s.message().starts_with("SignatureValidationFailed"), "refused by pullgate: {}", s.message());
    }
    Ok(())
}

/// containerd holds the unsigned content under no name, and runs no container of it.
async fn unsigned_absent(c: &Ctx) -> TestResult {
    ensure!(image_status(&c.direct(), &c.unsigned_id).await?.is_none(), "containerd holds the unsigned image {}", c.unsigned_id);
    let list = cri::images(&c.direct()).list_images(k8s::ListImagesRequest { filter: None }).await?.into_inner().images;
    ensure!(!list.iter().any(|i| i.id == c.unsigned_id), "unsigned image listed");
    let containers = cri::runtime(&c.direct()).list_containers(k8s::ListContainersRequest { filter: None }).await?.into_inner().containers;
    ensure!(!containers.iter().any(|k| k.image_ref == c.unsigned_id), "a container of the unsigned image exists");
    Ok(())
}

fn record<'a>(records: &'a [AuditRecord], call: &str, image: &str) -> Result<&'a AuditRecord, Failed> {
    records.iter().rev().find(|r| r.call == call && r.image == image).ok_or_else(|| format!("no {call} audit record for {image}").into())
}

// --- trials ------------------------------------------------------------------------------------

/// Attack 1: an index listing the signed and an unsigned manifest, in the three shapes where
/// containerd's pick is the unsigned one. pullgate picks what containerd picks, so it verifies
/// the unsigned manifest, and refuses.
fn index_platform_disagreement(c: &Ctx) -> TestResult {
    let shapes: [(&str, [(&str, bool); 2]); 3] = [
        ("demo/idx-variant", [("linux/amd64/v9", true), ("linux/amd64", false)]),
        ("demo/idx-x86", [("linux/x86_64", false), ("linux/amd64", true)]),
        ("demo/idx-case", [("Linux/AMD64", false), ("linux/amd64", true)]),
    ];
    c.rt.block_on(async {
        for (repo, entries) in shapes {
            let index = push_index(c, repo, &entries).await?;
            let image = format!("{}/{repo}:1", c.registry);
            let msg = refusal(pull(&c.enforce.sock, &image).await, &["policy demo", "no signatures found"])?;
            eprintln!("{repo}: {msg}");
            let r = record(&c.enforce.records(), "PullImage", &image)?.clone();
            ensure!(r.decision == "deny" && r.mode == Some(pullgate::policy::Mode::Enforce) && r.digest == index.to_string(), "{r:?}");
            ensure!(image_status(&c.direct(), &image).await?.is_none(), "{image} is on the node");
            unsigned_absent(c).await?;
        }
        Ok(())
    })
}

/// The index's pick for this node is the signed manifest: allowed, and containerd is told to
/// pull exactly that manifest, so it never chooses from the index itself.
fn index_pull_is_pinned(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let repo = "demo/idx-ok";
        let index = push_index(c, repo, &[("linux/arm64", false), ("linux/amd64", true)]).await?;
        let image = format!("{}/{repo}:1", c.registry);
        let image_ref = pull(&c.enforce.sock, &image).await?;
        ensure!(image_ref == c.signed_id, "pulled {image_ref}, expected the signed config {}", c.signed_id);
        let st = image_status(&c.direct(), &image).await?.ok_or("no image by tag")?;
        ensure!(st.repo_digests.iter().any(|d| d.ends_with(&c.signed.to_string())), "repo digests {:?}", st.repo_digests);
        ensure!(!st.repo_digests.iter().any(|d| d.ends_with(&index.to_string())), "the index was pulled: {:?}", st.repo_digests);
        passed(create(&c.enforce.sock, &image_ref, Some(&image)).await)?;
        let r = record(&c.enforce.records(), "CreateContainer", &image)?.clone();
        ensure!(r.decision == "allow", "{r:?}");
        unsigned_absent(c).await
    })
}

/// Attack 1, afterwards: the index is pre-loaded (pulled by containerd itself, not through
/// pullgate), containerd picked the unsigned manifest. CreateContainer of it is refused by
/// name, by image ID, by short ID: the index's digest does not admit what containerd picked.
fn preloaded_index_at_create(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let image = format!("{}/demo/idx-variant:1", c.registry);
        push_index(c, "demo/idx-variant", &[("linux/amd64/v9", true), ("linux/amd64", false)]).await?;
        let id = pull(&c.direct(), &image).await?;
        ensure!(id == c.unsigned_id, "containerd picked {id}, expected the unsigned {}", c.unsigned_id);
        let hex = id.trim_start_matches("sha256:");
        let short = &hex[..12];
        let outcome = async {
            refusal(create(&c.enforce.sock, &id, Some(&image)).await, &[])?;
            refusal(create(&c.enforce.sock, &id, None).await, &[])?;
            refusal(create(&c.enforce.sock, short, None).await, &[])?;
            refusal(create(&c.enforce.sock, hex, None).await, &[])?;
            let r = record(&c.enforce.records(), "CreateContainer", &image)?.clone();
            ensure!(r.decision == "deny" && r.mode == Some(pullgate::policy::Mode::Enforce), "{r:?}");
            Ok::<_, Failed>(())
        }
        .await;
        remove(&c.direct(), &image).await?;
        outcome?;
        unsigned_absent(c).await
    })
}

/// Attack 5 (with `unmatched: allow`): another spelling of the registry (alias, case, the
/// HTTPS default port) is the same registry to policy.
fn registry_spellings(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let upper = c.alias.to_uppercase();
        for image in [
            format!("{}/demo/unsigned:1", c.registry),
            format!("{}/demo/unsigned:1", c.alias),
            format!("{upper}/demo/unsigned:1"),
            format!("{}/demo/unsigned@{}", c.alias, c.unsigned),
        ] {
            // Refused by the policy of the canonical name (the reason is the signature check,
            // or the mirror when the alias is not reachable from pullgate).
            let msg = refusal(pull(&c.rollout.sock, &image).await, &[])?;
            eprintln!("{image}: {msg}");
            let r = record(&c.rollout.records(), "PullImage", &image)?.clone();
            ensure!(r.decision == "deny" && r.policy == "demo", "{r:?}");
        }
        unsigned_absent(c).await
    })
}

/// Attack 6: `pause:*` admits `pause:<tag>` only; `pause:1@sha256:<unsigned>` is the digest
/// containerd would pull, and is not exempt.
fn tag_exemption_and_digest(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        copy(c, "demo/unsigned", &c.unsigned, "pause").await?;
        let image = format!("{}/pause:1@{}", c.registry, c.unsigned);
        let msg = refusal(pull(&c.enforce.sock, &image).await, &["matches no policy"])?;
        eprintln!("{msg}");
        let r = record(&c.enforce.records(), "PullImage", &image)?.clone();
        ensure!(r.decision == "deny", "{r:?}");
        unsigned_absent(c).await?;
        // The tag itself is exempt (and `config check` warns that it names a tag).
        pull(&c.enforce.sock, &format!("{}/pause:1", c.registry)).await?;
        Ok(())
    })
}

/// An image with an exempt name and a covered name (given with containerd's own API, as a
/// node admin could): exempt only when the pod used the exempt name.
fn exemption_by_name_used(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let real = format!("{}/demo/unsigned:1", c.registry);
        let forged = format!("{}/pause:forged", c.registry);
        // containerd's own client, from ../shared (2.x `ctr`, which can tag on 1.6 with --local).
        let Some(ctr) = testbed::shared_bin("ctr") else {
            eprintln!("skipping: no ctr in {} (needed to give the image a second name)", testbed::shared_dir().display());
            return Ok(());
        };
        let id = pull(&c.direct(), &real).await?;
        let out = Command::new(&ctr)
            .args(["--address", c.direct().to_str().unwrap_or_default(), "-n", "k8s.io", "images", "tag", "--local", &real, &forged])
            .output();
        let outcome = async {
            let out = out?;
            ensure!(out.status.success(), "ctr images tag: {}", String::from_utf8_lossy(&out.stderr));
            refusal(create(&c.enforce.sock, &id, Some(&real)).await, &["no signatures found"])?;
            refusal(create(&c.enforce.sock, &id, None).await, &[])?;
            let r = record(&c.enforce.records(), "CreateContainer", &real)?.clone();
            ensure!(r.decision == "deny", "{r:?}");
            // The exempt name itself is what the exemption admits (a tag: whoever can point it
            // elsewhere decides; `config check` warns, pin exemptions by digest).
            passed(create(&c.enforce.sock, &id, Some(&forged)).await)?;
            Ok::<_, Failed>(())
        }
        .await;
        let _ = remove(&c.direct(), &id).await;
        outcome?;
        unsigned_absent(c).await
    })
}

/// Reference tricks: a tag and a digest that disagree, image IDs, uppercase, `docker.io`
/// spellings.
fn reference_tricks(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        // demo/app:1 is signed; the digest is the unsigned manifest, now also in demo/app.
        copy(c, "demo/unsigned", &c.unsigned, "demo/app").await?;
        let image = format!("{}/demo/app:1@{}", c.registry, c.unsigned);
        refusal(pull(&c.enforce.sock, &image).await, &["no signatures found", &c.unsigned.to_string()])?;
        ensure!(record(&c.enforce.records(), "PullImage", &image)?.decision == "deny", "no deny record");
        let hex = c.unsigned_id.trim_start_matches("sha256:").to_string();
        for (image, want) in [
            (hex.clone(), "image ID"),
            (c.unsigned_id.clone(), "matches no policy"),
            (format!("{}/demo/UNSIGNED:1", c.registry), "lowercase"),
            ("index.docker.io/library/busybox:1".to_string(), "matches no policy"),
            ("docker.io/busybox:1".to_string(), "matches no policy"),
        ] {
            let msg = refusal(pull(&c.enforce.sock, &image).await, &[want])?;
            eprintln!("{image}: {msg}");
            ensure!(record(&c.enforce.records(), "PullImage", &image)?.decision == "deny", "no deny record for {image}");
        }
        unsigned_absent(c).await
    })
}

/// A valid signature of the signed image, attached to the unsigned one.
fn copied_signature(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let repo = "demo/copied";
        copy(c, "demo/unsigned", &c.unsigned, repo).await?;
        let (mt, _, body) = manifest(c.addr(), repo, &c.unsigned).await?;
        c.pusher.manifest(repo, "1", &mt, &body).await?;
        let bundle = {
            let mut stack = c.stack.lock().map_err(|_| "stack lock")?;
            let subject: pullgate::verify::Digest = c.signed.to_string().parse()?;
            let opts = SignOptions::new(stack.now);
            stack.sign_image_v3(&subject, &opts).json()
        };
        support::signer::push_bundle(&c.pusher, repo, &c.unsigned, bundle.as_bytes()).await?;
        let image = format!("{}/{repo}:1", c.registry);
        let msg = refusal(pull(&c.enforce.sock, &image).await, &["policy demo"])?;
        eprintln!("{msg}");
        ensure!(record(&c.enforce.records(), "PullImage", &image)?.decision == "deny", "no deny record");
        unsigned_absent(c).await
    })
}

/// Audit mode: the attacks go through, each with an audit record saying enforce would refuse.
fn audit_mode(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let image = format!("{}/demo/idx-x86:1", c.registry);
        push_index(c, "demo/idx-x86", &[("linux/x86_64", false), ("linux/amd64", true)]).await?;
        let id = pull(&c.audit.sock, &image).await?;
        let r = record(&c.audit.records(), "PullImage", &image)?.clone();
        ensure!(r.decision == "allow" && r.would_deny && r.format == 2 && r.mode == Some(pullgate::policy::Mode::Audit), "{r:?}");
        passed(create(&c.audit.sock, &id, Some(&image)).await)?;
        let r = record(&c.audit.records(), "CreateContainer", &image)?.clone();
        ensure!(r.decision == "allow" && r.would_deny && r.format == 2 && r.mode == Some(pullgate::policy::Mode::Audit), "{r:?}");
        remove(&c.direct(), &image).await?;
        Ok(())
    })
}

/// No policy: pullgate forwards, decides nothing, writes no record.
fn pass_through(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let image = format!("{}/demo/idx-case:1", c.registry);
        push_index(c, "demo/idx-case", &[("Linux/AMD64", false), ("linux/amd64", true)]).await?;
        let id = pull(&c.passthrough.sock, &image).await?;
        ensure!(id == c.unsigned_id, "pass-through pulled {id}: containerd's own pick is the unsigned entry");
        passed(create(&c.passthrough.sock, &id, Some(&image)).await)?;
        ensure!(c.passthrough.records().is_empty(), "pass-through wrote audit records");
        remove(&c.direct(), &image).await?;
        Ok(())
    })
}
