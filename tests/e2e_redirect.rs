//! Mirrors that redirect, end to end with real parts: a real containerd and registry
//! (`scripts/testbed.sh`), the real `pullgate` binary in enforce mode, and between them and the
//! registry a redirecting front (`support/registry/redirect.rs`) that, like a registry on
//! object storage, wants credentials and answers blob GETs with `307` to a storage host
//! (`127.0.0.2`) that is passed to the real registry. containerd's `hosts.toml` makes the front
//! the registry's only endpoint, for containerd and pullgate alike.
//!
//! The trials share one testbed and front and run one at a time; each starts its own pullgate
//! (decisions are cached per daemon). Without root they are reported as ignored, with the reason.

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

use daemon::Daemon;
use k8s_cri::v1 as k8s;
use libtest_mimic::{Arguments, Failed};
use pullgate::registry::Digest;
use support::registry::push::Pusher;
use support::registry::redirect::{Front, Storage};
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

const USER: &str = "puller";
const PASSWORD: &str = "mirror-pass";

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    front: Front,
    /// The image signed (bundle referrer) in the registry behind the front.
    image: String,
    digest: String,
    /// Trials run one at a time; this numbers their pullgate instances.
    runs: Mutex<u32>,
    pusher: Pusher,
    stack: Mutex<Stack>,
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "rdr", &[])?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| e.to_string())?;
    let registry = tb.get("REGISTRY").to_string();
    let addr: SocketAddr = registry.parse().map_err(|e| format!("{registry}: {e}"))?;
    let pusher = Pusher::new(addr);

    let mut stack = Stack::new();
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
    let digest = tb.get("DEMO_DIGEST").to_string();
    let d = Digest::parse(&digest).map_err(|e| e.to_string())?;
    let opts = SignOptions::new(stack.now);
    rt.block_on(sign_and_push(&mut stack, &pusher, "demo/app", &d, &opts, Format::Bundle))?;

    let front = rt.block_on(Front::start(addr, USER, PASSWORD)).map_err(|e| format!("cannot start the redirecting front: {e}"))?;
    // The front is the registry's only endpoint, for containerd (which reads hosts.toml on every
    // pull) and pullgate: no fallback to the registry itself around a refused redirect.
    let hosts = PathBuf::from(tb.get("HOSTS_DIR")).join(&registry);
    std::fs::create_dir_all(&hosts).map_err(|e| e.to_string())?;
    std::fs::write(
        hosts.join("hosts.toml"),
        format!("server = \"http://{}\"\n\n# containerd 1.6 ignores a hosts.toml without this table\n[host]\n", front.mirror),
    )
    .map_err(|e| e.to_string())?;
    let image = tb.get("DEMO_IMAGE").to_string();
    Ok(Ctx { rt, tb, front, image, digest, runs: Mutex::new(0), pusher, stack: Mutex::new(stack) })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("signed_image_behind_redirecting_mirror_is_verified_and_pulled", signed_image_is_pulled),
        ("redirect_loop_is_refused", redirect_loop_is_refused),
        ("endless_redirects_are_refused_after_the_hop_limit", endless_redirects_are_refused),
        ("redirect_to_a_host_not_allowed_is_refused", unlisted_host_is_refused),
        ("redirect_target_serving_other_bytes_is_refused", other_bytes_are_refused),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

/// Stops the testbed (containerd, shims, registry); the front ends with the process.
fn teardown(c: &Ctx) {
    c.tb.clean();
}

/// Starts an enforce-mode pullgate for one trial; `extra` goes under `registry:`.
fn pullgate(c: &Ctx, extra: &str) -> Result<(Daemon, PathBuf), Failed> {
    let n = {
        let mut runs = c.runs.lock().map_err(|_| "poisoned")?;
        *runs += 1;
        *runs
    };
    let dir = &c.tb.dir;
    let sock = dir.join(format!("pg{n}.sock"));
    let reg = c.tb.get("REGISTRY");
    let cfg = format!(
        r#"listen: {sock}
upstream: {upstream}
registry:
  hosts_dir: {hosts}
  bundle_dir: null
  connect_timeout: 1s
  request_timeout: 5s
  discovery_timeout: 10s
{extra}
trust_root:
  state_dir: {state}
policy:
  unmatched: deny
  exemptions:
    - name: sandbox
      images: ["{reg}/pause", "{reg}/pause:*"]
  policies:
    - name: demo
      images: ["{reg}/demo/**"]
      mode: enforce
      authorities:
        - name: release-workflow
          keyless:
            identities:
              - issuer: {issuer}
                subject: {san}
"#,
        sock = sock.display(),
        upstream = c.tb.containerd_sock().display(),
        hosts = c.tb.get("HOSTS_DIR"),
        state = dir.join("state").display(),
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
    );
    let path = dir.join(format!("pg{n}.yaml"));
    std::fs::write(&path, cfg)?;
    let pg = Daemon::start(&sock, &["--config", path.to_str().unwrap_or_default(), "--log-level", "debug"])?;
    Ok((pg, sock))
}

/// PullImage as kubelet sends it with an image pull secret for the mirror.
async fn pull(socket: &Path, image: &str) -> Result<String, tonic::Status> {
    let req = k8s::PullImageRequest {
        image: Some(k8s::ImageSpec { image: image.into(), ..Default::default() }),
        auth: Some(k8s::AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() }),
        sandbox_config: None,
    };
    Ok(cri::images(socket).pull_image(req).await?.into_inner().image_ref)
}

async fn remove(c: &Ctx) {
    let spec = Some(k8s::ImageSpec { image: c.image.clone(), ..Default::default() });
    let _ = cri::images(&c.tb.containerd_sock()).remove_image(k8s::RemoveImageRequest { image: spec }).await;
}

/// The refusal kubelet would see, which must name every one of `contains`.
fn expect_refusal(result: Result<String, tonic::Status>, contains: &[&str]) -> Result<String, Failed> {
    let status = match result {
        Ok(r) => return Err(format!("pull succeeded ({r}); expected SignatureValidationFailed").into()),
        Err(s) => s,
    };
    let msg = status.message().to_string();
    ensure!(status.code() == tonic::Code::Unknown && msg.starts_with("SignatureValidationFailed: "), "{status:?}");
    for want in contains {
        ensure!(msg.contains(want), "refusal lacks {want:?}: {msg}");
    }
    Ok(msg)
}

/// Runs `f` with the front in `mode`, then puts it back to serving.
fn with_mode<T>(c: &Ctx, mode: Storage, f: impl FnOnce() -> T) -> T {
    c.front.set(mode);
    c.front.clear();
    let out = f();
    c.front.set(Storage::Serve);
    out
}

// --- trials ------------------------------------------------------------------------------------

/// Pushes and signs a new image (a config blob of its own, so containerd has none of its
/// blobs yet and must fetch them through the redirect); returns its reference.
async fn fresh_signed_image(c: &Ctx, repo: &str) -> Result<String, Failed> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"pullgate.test": format!("{repo}:{}", std::process::id())}},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))?;
    let cd = c.pusher.blob(repo, &config).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": []
    });
    let digest = c.pusher.json_manifest(repo, "1", "application/vnd.oci.image.manifest.v1+json", &manifest).await?.0;
    let mut stack = c.stack.lock().map_err(|_| "poisoned")?;
    let opts = SignOptions::new(stack.now);
    sign_and_push(&mut stack, &c.pusher, repo, &digest, &opts, Format::Bundle).await?;
    Ok(format!("{}/{repo}:1", c.tb.get("REGISTRY")))
}

/// A signed image behind the redirecting mirror is verified by pullgate (which follows the
/// redirect for the signature bundle) and pulled by containerd (which follows it for the
/// image's blobs); the credentials reach the mirror only, never the storage host.
fn signed_image_is_pulled(c: &Ctx) -> TestResult {
    let (mut pg, sock) = pullgate(c, "")?;
    let image = c.rt.block_on(fresh_signed_image(c, "demo/redirected"))?;
    let result = with_mode(c, Storage::Serve, || c.rt.block_on(pull(&sock, &image)));
    pg.terminate(Duration::from_secs(5));
    let image_ref = result.map_err(|s| format!("pull refused: {s:?}\npullgate log:\n{}", pg.logs()))?;
    ensure!(image_ref.starts_with("sha256:"), "image ref {image_ref}");
    let seen = c.front.seen();
    let storage: Vec<_> = seen.iter().filter(|s| s.side == "storage").collect();
    let by = |agent: &str| storage.iter().filter(|s| s.user_agent.starts_with(agent) && s.path.contains("/blobs/")).count();
    ensure!(by("pullgate/") > 0, "pullgate fetched no blob from the storage host: {seen:#?}");
    ensure!(by("containerd/") > 0, "containerd fetched no blob from the storage host: {seen:#?}");
    ensure!(storage.iter().all(|s| s.authorization.is_none()), "credentials reached the storage host: {storage:#?}");
    ensure!(
        seen.iter().any(|s| s.side == "mirror" && s.user_agent.starts_with("pullgate/") && s.authorization.is_some()),
        "pullgate never authenticated at the mirror: {seen:#?}"
    );
    let log = pg.logs();
    ensure!(
        log.contains("following redirect") && log.contains(&c.front.storage.to_string()),
        "no debug line names the redirect target:\n{log}"
    );
    ensure!(!log.contains("s3cr3t-sig"), "the signed URL's query was logged:\n{log}");
    eprintln!(
        "pulled {image} ({image_ref}) through the redirecting mirror; storage host {} saw {} requests, none with credentials",
        c.front.storage,
        storage.len()
    );
    let _ = &c.digest;
    Ok(())
}

fn refused_with(c: &Ctx, mode: Storage, extra: &str, contains: &[&str]) -> TestResult {
    let (mut pg, sock) = pullgate(c, extra)?;
    let result = with_mode(c, mode, || {
        c.rt.block_on(async {
            remove(c).await;
            pull(&sock, &c.image).await
        })
    });
    pg.terminate(Duration::from_secs(5));
    let msg = expect_refusal(result, contains).map_err(|e| format!("{:?}\npullgate log:\n{}", e.message(), pg.logs()))?;
    eprintln!("{mode:?}: kubelet would report: {msg}");
    let node = c.rt.block_on(async {
        let req = k8s::ImageStatusRequest { image: Some(k8s::ImageSpec { image: c.image.clone(), ..Default::default() }), verbose: false };
        cri::images(&c.tb.containerd_sock()).image_status(req).await
    })?;
    ensure!(node.into_inner().image.is_none(), "the image reached the node although pullgate refused it");
    Ok(())
}

fn redirect_loop_is_refused(c: &Ctx) -> TestResult {
    refused_with(c, Storage::Loop, "", &["redirect loop"])
}

fn endless_redirects_are_refused(c: &Ctx) -> TestResult {
    refused_with(c, Storage::Chain, "", &["more than 10 redirects"])
}

fn unlisted_host_is_refused(c: &Ctx) -> TestResult {
    let storage = c.front.storage.to_string();
    refused_with(c, Storage::Serve, "  redirect_hosts: [\"127.0.0.3\", storage.internal]", &[&storage, "registry.redirect_hosts"])
}

fn other_bytes_are_refused(c: &Ctx) -> TestResult {
    refused_with(c, Storage::Tamper, "", &["not the requested"])
}
