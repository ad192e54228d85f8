//! The attacks of issue 10 on pullgate's surfaces, end to end with real parts: a real containerd
//! and registry (`scripts/testbed.sh`), on both containerd generations (Debian's 1.6 and 2.x from
//! the shared folder; each trial runs once per generation), the real `pullgate` binary with the demo policy (`demo/**` enforce,
//! identity pinned, `pause:*` exempt), the `k8s-cri` crate's v1 and v1alpha2 clients, and the
//! real `ctr` (../shared/bin, else Debian's). Signatures come from the test Sigstore stack
//! (`tests/support/sigstore`, its own code: the real services cannot run here).
//!
//! Each attack asserts the refusal text, that containerd holds no unsigned content under any name
//! and runs no container from it, and that an audit record is written; the same attack through
//! an audit-mode pullgate goes through, with an audit record saying enforce would refuse it.
//! Image volumes need containerd 2.x: on 1.6 those trials say so and pass without running.

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
use k8s_cri::v1alpha2 as k8s2;
use libtest_mimic::{Arguments, Failed};
use pullgate::enforce::audit::{read_records, AuditRecord};
use pullgate::registry::Digest;
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

/// One pullgate instance of the suite.
struct Pg {
    daemon: Mutex<Daemon>,
    sock: PathBuf,
    audit: PathBuf,
}

impl Pg {
    fn records(&self) -> Vec<AuditRecord> {
        read_records(&self.audit).map(|r| r.0).unwrap_or_default()
    }
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    tb: Testbed,
    /// containerd 2.x (else 1.6/1.7).
    containerd2: bool,
    /// The demo policy in enforce mode, `pause:*` exempt.
    enforce: Pg,
    /// The same policy in audit mode (unmatched images allowed).
    audit: Pg,
    /// Enforce mode with the sandbox image under the policy and no exemption for it.
    strict: Pg,
    /// `strict` in audit mode.
    strict_audit: Pg,
}

impl Ctx {
    fn direct(&self) -> PathBuf {
        self.tb.containerd_sock()
    }
    fn get(&self, k: &str) -> String {
        self.tb.get(k).to_string()
    }
}

static CTX: testbed::Contexts<Ctx> = testbed::Contexts::new();

/// Stops the pullgate instances and the testbed (containerd, shims, registry).
fn teardown(c: &Ctx) {
    for pg in [&c.enforce, &c.audit, &c.strict, &c.strict_audit] {
        if let Ok(mut d) = pg.daemon.lock() {
            d.terminate(Duration::from_secs(10));
        }
    }
    c.tb.clean();
}

/// The policy variants of the suite.
struct Variant {
    mode: &'static str,
    unmatched: &'static str,
    /// Exempt `pause:*` (the demo policy); else the sandbox image falls under the policy.
    exempt_pause: bool,
}

fn config(dir: &Path, tb: &Testbed, listen: &Path, audit: &Path, v: &Variant) -> String {
    let reg = tb.get("REGISTRY");
    let exemptions = if v.exempt_pause {
        format!("  exemptions:\n    - name: sandbox\n      images: [\"{reg}/pause\", \"{reg}/pause:*\"]\n")
    } else {
        "  exemptions: []\n".to_string()
    };
    let images = if v.exempt_pause { format!("[\"{reg}/demo/**\"]") } else { format!("[\"{reg}/demo/**\", \"{reg}/pause*\"]") };
    format!(
        r#"listen: {listen}
upstream: {upstream}
registry:
  hosts_dir: {hosts}
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
  unmatched: {unmatched}
{exemptions}  policies:
    - name: demo
      images: {images}
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
        hosts = tb.get("HOSTS_DIR"),
        bundles = dir.join("bundles").display(),
        state = dir.join("state").display(),
        audit = audit.display(),
        sandbox = tb.get("SANDBOX_IMAGE"),
        unmatched = v.unmatched,
        mode = v.mode,
        issuer = DEFAULT_ISSUER,
        san = DEFAULT_SAN,
    )
}

fn start_pg(tb: &Testbed, name: &str, v: &Variant) -> Result<Pg, String> {
    let sock = tb.dir.join(format!("{name}.sock"));
    let audit = tb.dir.join(format!("{name}.audit.log"));
    let cfg = tb.dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, config(&tb.dir, tb, &sock, &audit, v)).map_err(|e| e.to_string())?;
    let daemon = Daemon::start(&sock, &["--config", cfg.to_str().unwrap_or_default()])?;
    Ok(Pg { daemon: Mutex::new(daemon), sock, audit })
}

fn setup(generation: Generation) -> Result<Ctx, String> {
    let tb = Testbed::start_generation(generation, "atk", &[])?;
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
    let opts = SignOptions::new(stack.now);
    let d1 = Digest::parse(tb.get("DEMO_DIGEST")).map_err(|e| e.to_string())?;
    rt.block_on(sign_and_push(&mut stack, &pusher, "demo/app", &d1, &opts, Format::Bundle))?;

    let version = rt
        .block_on(async { cri::runtime(&tb.containerd_sock()).version(k8s::VersionRequest { version: "v1".into() }).await })
        .map_err(|e| format!("containerd Version: {e}"))?
        .into_inner();
    let containerd2 = !version.runtime_version.trim_start_matches('v').starts_with('1');
    eprintln!("e2e_attack: containerd {} ({})", version.runtime_version, if containerd2 { "2.x" } else { "1.x" });

    let enforce = start_pg(&tb, "enf", &Variant { mode: "enforce", unmatched: "deny", exempt_pause: true })?;
    let audit = start_pg(&tb, "aud", &Variant { mode: "audit", unmatched: "allow", exempt_pause: true })?;
    let strict = start_pg(&tb, "strict", &Variant { mode: "enforce", unmatched: "deny", exempt_pause: false })?;
    let strict_audit = start_pg(&tb, "straud", &Variant { mode: "audit", unmatched: "allow", exempt_pause: false })?;
    Ok(Ctx { rt, tb, containerd2, enforce, audit, strict, strict_audit })
}

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests: Vec<testbed::Trial<Ctx>> = vec![
        ("v1alpha2_pull_of_unsigned_is_refused", v1alpha2_pull),
        ("v1alpha2_create_of_unsigned_is_refused", v1alpha2_create),
        ("containerd_native_api_through_pullgate_is_refused", native_api),
        ("unknown_image_service_method_is_refused", unknown_image_method),
        ("checkpoint_archive_restore_is_refused", checkpoint_archive),
        ("unverified_sandbox_image_is_refused", sandbox_image),
        ("unsigned_image_volume_is_refused_signed_is_mounted", image_volumes),
        ("audit_mode_lets_each_attack_through_with_a_record", audit_mode),
    ];
    let trials = testbed::trials(tests, &CTX, setup, teardown);
    let conclusion = libtest_mimic::run(&args, trials);
    CTX.finish(teardown);
    conclusion.exit();
}

// --- helpers -----------------------------------------------------------------------------------

fn spec(image: &str) -> Option<k8s::ImageSpec> {
    Some(k8s::ImageSpec { image: image.into(), ..Default::default() })
}

fn spec2(image: &str) -> Option<k8s2::ImageSpec> {
    Some(k8s2::ImageSpec { image: image.into(), ..Default::default() })
}

fn pod(name: &str) -> k8s::PodSandboxConfig {
    k8s::PodSandboxConfig {
        metadata: Some(k8s::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "team".into(),
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

fn pod2(name: &str) -> k8s2::PodSandboxConfig {
    k8s2::PodSandboxConfig {
        metadata: Some(k8s2::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "team".into(),
            attempt: 0,
        }),
        linux: Some(k8s2::LinuxPodSandboxConfig {
            security_context: Some(k8s2::LinuxSandboxSecurityContext {
                namespace_options: Some(k8s2::NamespaceOption { network: k8s2::NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The refusal kubelet sees: code Unknown, one line `SignatureValidationFailed: ...`.
fn expect_refusal<T: std::fmt::Debug>(result: Result<T, tonic::Status>, contains: &[&str]) -> Result<String, Failed> {
    let status = match result {
        Ok(r) => return Err(format!("call succeeded ({r:?}); expected SignatureValidationFailed").into()),
        Err(s) => s,
    };
    ensure!(status.code() == tonic::Code::Unknown, "code {:?}: {}", status.code(), status.message());
    let msg = status.message().to_string();
    ensure!(msg.starts_with("SignatureValidationFailed: ") && !msg.contains('\n'), "message: {msg}");
    for c in contains {
        ensure!(msg.contains(c), "message lacks {c:?}: {msg}");
    }
    Ok(msg)
}

/// Pulls `image` into containerd directly, bypassing pullgate (a pre-loaded image).
async fn preload(c: &Ctx, image: &str) -> Result<String, Failed> {
    let req = k8s::PullImageRequest { image: spec(image), auth: None, sandbox_config: None };
    Ok(cri::images(&c.direct()).pull_image(req).await?.into_inner().image_ref)
}

/// Removes every image record of the unsigned image (and the content with it), directly.
async fn remove_unsigned(c: &Ctx) -> TestResult {
    let digest = c.get("UNSIGNED_DIGEST");
    let images = cri::images(&c.direct()).list_images(k8s::ListImagesRequest { filter: None }).await?.into_inner().images;
    for image in images
        .iter()
        .filter(|i| i.repo_digests.iter().any(|d| d.ends_with(&digest)) || i.repo_tags.iter().any(|t| t.contains("demo/unsigned")))
    {
        cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: spec(&image.id) }).await?;
    }
    Ok(())
}

/// containerd holds no unsigned content under any name (no CRI image, no record in its own
/// image store, no content blob of that manifest) and runs no container from it.
async fn assert_no_unsigned(c: &Ctx) -> TestResult {
    let digest = c.get("UNSIGNED_DIGEST");
    let images = cri::images(&c.direct()).list_images(k8s::ListImagesRequest { filter: None }).await?.into_inner().images;
    let held: Vec<_> = images
        .iter()
        .filter(|i| i.repo_digests.iter().any(|d| d.ends_with(&digest)) || i.repo_tags.iter().any(|t| t.contains("demo/unsigned")))
        .collect();
    ensure!(held.is_empty(), "containerd holds the unsigned image: {held:?}");
    let content = ctr(&c.direct(), &["-n", "k8s.io", "content", "ls", "-q"])?;
    ensure!(!content.contains(&digest), "containerd's content store holds the unsigned manifest {digest}");
    let records = ctr(&c.direct(), &["-n", "k8s.io", "images", "ls", "-q"])?;
    ensure!(!records.contains("unsigned") && !records.contains(&digest), "containerd's image store names the unsigned image:\n{records}");
    let containers = cri::runtime(&c.direct()).list_containers(k8s::ListContainersRequest { filter: None }).await?.into_inner().containers;
    let running: Vec<_> = containers
        .iter()
        .filter(|k| k.image_ref.contains(&digest) || k.image.as_ref().is_some_and(|i| i.image.contains("unsigned")))
        .collect();
    ensure!(running.is_empty(), "containerd has a container of the unsigned image: {running:?}");
    Ok(())
}

/// The `ctr` binary: the shared upstream one, else the distribution's.
fn ctr_binary() -> Option<PathBuf> {
    if let Some(shared) = testbed::shared_bin("ctr") {
        return Some(shared);
    }
    let debian = PathBuf::from("/usr/bin/ctr");
    debian.exists().then_some(debian)
}

fn ctr(address: &Path, args: &[&str]) -> Result<String, Failed> {
    let bin = ctr_binary().ok_or("no ctr binary (../shared/bin/ctr or /usr/bin/ctr)")?;
    let out = Command::new(bin).arg("--address").arg(address).args(args).output()?;
    ensure!(out.status.success(), "ctr {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ctr` against pullgate's socket; returns (success, stdout + stderr).
fn ctr_through(sock: &Path, args: &[&str]) -> Result<(bool, String), Failed> {
    let bin = ctr_binary().ok_or("no ctr binary (../shared/bin/ctr or /usr/bin/ctr)")?;
    let out = Command::new(bin).arg("--address").arg(sock).args(args).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

fn last_record(records: &[AuditRecord], f: impl Fn(&AuditRecord) -> bool) -> Result<&AuditRecord, Failed> {
    records.iter().rev().find(|r| f(r)).ok_or_else(|| Failed::from("no matching audit record"))
}

/// A pod through `sock`; its sandbox id.
async fn run_pod(sock: &Path, name: &str) -> Result<String, tonic::Status> {
    let req = k8s::RunPodSandboxRequest { config: Some(pod(name)), runtime_handler: String::new() };
    Ok(cri::runtime(sock).run_pod_sandbox(req).await?.into_inner().pod_sandbox_id)
}

async fn remove_pod(c: &Ctx, id: &str) {
    let mut rt = cri::runtime(&c.direct());
    let _ = rt.stop_pod_sandbox(k8s::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await;
    let _ = rt.remove_pod_sandbox(k8s::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await;
}

fn container(image: &str, mounts: Vec<k8s::Mount>) -> k8s::ContainerConfig {
    k8s::ContainerConfig {
        metadata: Some(k8s::ContainerMetadata { name: "app".into(), attempt: 0 }),
        image: spec(image),
        command: vec!["/hello".into()],
        mounts,
        ..Default::default()
    }
}

// --- trials ------------------------------------------------------------------------------------

/// Attack 2: a v1alpha2 PullImage of an unsigned image.
fn v1alpha2_pull(c: &Ctx) -> TestResult {
    let image = c.get("UNSIGNED_IMAGE");
    c.rt.block_on(async {
        let mut client = k8s2::image_service_client::ImageServiceClient::new(cri::channel(&c.enforce.sock));
        let req = k8s2::PullImageRequest { image: spec2(&image), auth: None, sandbox_config: Some(pod2("v1alpha2")) };
        expect_refusal(client.pull_image(req).await, &[&image, "denied by policy demo"])?;
        assert_no_unsigned(c).await
    })?;
    let records = c.enforce.records();
    let r = last_record(&records, |r| r.call == "PullImage" && r.image == image)?;
    ensure!(r.decision == "deny" && r.mode == Some(pullgate::policy::Mode::Enforce) && r.pod == "team/v1alpha2", "{r:?}");
    Ok(())
}

/// Attack 2: a v1alpha2 CreateContainer of an unsigned, pre-loaded image.
fn v1alpha2_create(c: &Ctx) -> TestResult {
    let image = c.get("UNSIGNED_IMAGE");
    c.rt.block_on(async {
        let image_id = preload(c, &image).await?;
        let sandbox = run_pod(&c.enforce.sock, "v1alpha2-create").await?;
        let mut client = k8s2::runtime_service_client::RuntimeServiceClient::new(cri::channel(&c.enforce.sock));
        for name in [image.as_str(), image_id.as_str()] {
            let req = k8s2::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(k8s2::ContainerConfig {
                    metadata: Some(k8s2::ContainerMetadata { name: "app".into(), attempt: 0 }),
                    image: spec2(name),
                    command: vec!["/hello".into()],
                    ..Default::default()
                }),
                sandbox_config: Some(pod2("v1alpha2-create")),
            };
            expect_refusal(client.create_container(req).await, &["denied by policy demo"])?;
        }
        remove_pod(c, &sandbox).await;
        remove_unsigned(c).await?;
        assert_no_unsigned(c).await
    })?;
    let records = c.enforce.records();
    let r = last_record(&records, |r| r.call == "CreateContainer" && r.pod == "team/v1alpha2-create")?;
    ensure!(r.decision == "deny" && r.mode == Some(pullgate::policy::Mode::Enforce), "{r:?}");
    Ok(())
}

/// Attack 4: containerd's own API (`ctr`) through pullgate's socket: pull the unsigned image,
/// and tag an image to an exempt name.
fn native_api(c: &Ctx) -> TestResult {
    let image = c.get("UNSIGNED_IMAGE");
    let forged = format!("{}/pause:forged", c.get("REGISTRY"));
    let sock = &c.enforce.sock;
    let (ok, out) = ctr_through(sock, &["-n", "k8s.io", "images", "pull", "--plain-http", &image])?;
    ensure!(!ok, "ctr pull through pullgate succeeded:\n{out}");
    ensure!(out.contains("pullgate forwards only the CRI API"), "ctr pull output lacks the reason:\n{out}");
    let (ok, out) = ctr_through(sock, &["-n", "k8s.io", "images", "tag", &image, &forged])?;
    ensure!(!ok && out.contains("pullgate forwards only the CRI API"), "ctr tag through pullgate:\n{out}");
    let (ok, out) = ctr_through(sock, &["-n", "k8s.io", "containers", "ls"])?;
    ensure!(!ok && out.contains("use containerd's own socket"), "ctr containers ls through pullgate:\n{out}");
    c.rt.block_on(assert_no_unsigned(c))?;
    let records = c.enforce.records();
    let r = last_record(&records, |r| r.surface == "not CRI" && r.call.starts_with("/containerd.services."))?;
    ensure!(r.decision == "deny" && r.mode == Some(pullgate::policy::Mode::Enforce) && r.reason.contains("uid 0"), "{r:?}");
    Ok(())
}

/// An ImageService method pullgate does not know is refused in enforce mode; the read-only
/// stream of KEP-5825 is known and passes (containerd answers it or says Unimplemented).
fn unknown_image_method(c: &Ctx) -> TestResult {
    c.rt.block_on(async {
        let req = k8s::PullImageRequest { image: spec(&c.get("UNSIGNED_IMAGE")), auth: None, sandbox_config: None };
        let body = bytes::Bytes::from(prost::Message::encode_to_vec(&req));
        let err = cri::raw_unary(cri::channel(&c.enforce.sock), "/runtime.v1.ImageService/FetchImage", body.clone())
            .await
            .err()
            .ok_or("FetchImage passed")?;
        ensure!(err.code() == tonic::Code::PermissionDenied, "{err:?}");
        ensure!(
            err.message().contains("does not know /runtime.v1.ImageService/FetchImage")
                && err.message().contains("cri.allow_image_methods"),
            "{}",
            err.message()
        );
        // Known: forwarded; containerd answers (or does not implement it, on older versions).
        match cri::raw_unary(cri::channel(&c.enforce.sock), "/runtime.v1.ImageService/StreamImages", bytes::Bytes::new()).await {
            Ok(_) => {}
            Err(s) => ensure!(s.code() == tonic::Code::Unimplemented, "StreamImages: {s:?}"),
        }
        assert_no_unsigned(c).await
    })?;
    let records = c.enforce.records();
    let r = last_record(&records, |r| r.surface == "unknown ImageService method")?;
    ensure!(r.decision == "deny" && r.call == "/runtime.v1.ImageService/FetchImage", "{r:?}");
    Ok(())
}

/// Checkpoint restore on 2.x: a CreateContainer whose image is an archive path containerd would
/// restore from. pullgate cannot verify it and refuses it (on 1.6 containerd would refuse it
/// too; the rule is the same).
fn checkpoint_archive(c: &Ctx) -> TestResult {
    let archive = c.tb.dir.join("checkpoint.tar");
    std::fs::write(&archive, b"not a real checkpoint")?;
    let archive = archive.display().to_string();
    c.rt.block_on(async {
        let sandbox = run_pod(&c.enforce.sock, "restore").await?;
        let req = k8s::CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(container(&archive, vec![])),
            sandbox_config: Some(pod("restore")),
        };
        let r = cri::runtime(&c.enforce.sock).create_container(req).await;
        remove_pod(c, &sandbox).await;
        expect_refusal(r, &[&archive, "not present in containerd", "checkpoint"])
    })?;
    let records = c.enforce.records();
    let r = last_record(&records, |r| r.call == "CreateContainer" && r.image == archive)?;
    ensure!(r.decision == "deny" && r.mode == Some(pullgate::policy::Mode::Enforce), "{r:?}");
    Ok(())
}

/// Attack 7: with no exemption for it, the sandbox image must be verified; containerd must not
/// pull it by tag on RunPodSandbox, nor run it when pre-loaded.
fn sandbox_image(c: &Ctx) -> TestResult {
    let pause = c.get("SANDBOX_IMAGE");
    let pause_digest = c.get("SANDBOX_DIGEST");
    c.rt.block_on(async {
        // No sandbox may use it while it is removed.
        let pods = cri::runtime(&c.direct()).list_pod_sandbox(k8s::ListPodSandboxRequest { filter: None }).await?.into_inner().items;
        for p in pods {
            remove_pod(c, &p.id).await;
        }
        let _ = cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: spec(&pause) }).await;
        // Absent: pullgate pulls it through the gate, which refuses it; containerd pulls nothing.
        expect_refusal(run_pod(&c.strict.sock, "strict-absent").await, &[&format!("sandbox image {pause}"), "denied by policy demo"])?;
        let st = cri::images(&c.direct())
            .image_status(k8s::ImageStatusRequest { image: spec(&pause), verbose: false })
            .await?
            .into_inner()
            .image;
        ensure!(st.is_none(), "containerd pulled the refused sandbox image: {st:?}");
        let content = ctr(&c.direct(), &["-n", "k8s.io", "content", "ls", "-q"])?;
        ensure!(!content.contains(&pause_digest), "containerd's content store holds the refused sandbox image");
        // Present (pre-loaded): still refused, and no sandbox was created.
        preload(c, &pause).await?;
        expect_refusal(run_pod(&c.strict.sock, "strict-present").await, &[&format!("sandbox image {pause}"), "denied by policy demo"])?;
        let pods = cri::runtime(&c.direct()).list_pod_sandbox(k8s::ListPodSandboxRequest { filter: None }).await?.into_inner().items;
        ensure!(
            pods.iter().all(|p| !p.metadata.as_ref().is_some_and(|m| m.name.starts_with("strict-"))),
            "a sandbox was created: {pods:?}"
        );
        Ok::<_, Failed>(())
    })?;
    let records = c.strict.records();
    let r = last_record(&records, |r| r.call == "RunPodSandbox" && r.pod == "team/strict-present")?;
    ensure!(
        r.decision == "deny" && r.mode == Some(pullgate::policy::Mode::Enforce) && r.surface == "sandbox image" && r.image == pause,
        "{r:?}"
    );
    let r = last_record(&records, |r| r.call == "PullImage" && r.pod == "team/strict-absent")?;
    ensure!(r.decision == "deny" && r.image == pause, "{r:?}");
    Ok(())
}

/// Attack 3: an unsigned, present image volume next to a signed container image is refused,
/// naming the mount; a signed image volume is allowed and mounted.
fn image_volumes(c: &Ctx) -> TestResult {
    if !c.containerd2 {
        eprintln!("image_volumes: containerd 1.x has no image volumes (KEP-4639 needs containerd 2.1+); not run on this generation");
        return Ok(());
    }
    let signed = c.get("DEMO_IMAGE");
    let unsigned = c.get("UNSIGNED_IMAGE");
    c.rt.block_on(async {
        let signed_ref = cri::images(&c.enforce.sock)
            .pull_image(k8s::PullImageRequest { image: spec(&signed), auth: None, sandbox_config: Some(pod("volumes")) })
            .await?
            .into_inner()
            .image_ref;
        let unsigned_ref = preload(c, &unsigned).await?;
        let sandbox = run_pod(&c.enforce.sock, "volumes").await?;
        let volume = |image: &str| k8s::Mount { container_path: "/data".into(), readonly: true, image: spec(image), ..Default::default() };
        let mut rt = cri::runtime(&c.enforce.sock);
        let refused = rt
            .create_container(k8s::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(container(&signed_ref, vec![volume(&unsigned_ref)])),
                sandbox_config: Some(pod("volumes")),
            })
            .await;
        expect_refusal(refused, &["image volume /data: ", "denied by policy demo"])?;
        remove_unsigned(c).await?;
        assert_no_unsigned(c).await?;
        let id = rt
            .create_container(k8s::CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(container(&signed_ref, vec![volume(&signed_ref)])),
                sandbox_config: Some(pod("volumes")),
            })
            .await?
            .into_inner()
            .container_id;
        rt.start_container(k8s::StartContainerRequest { container_id: id.clone() }).await?;
        let out = rt
            .exec_sync(k8s::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["/hello".into(), "cat".into(), "/data/etc/pullgate-variant".into()],
                timeout: 10,
            })
            .await?
            .into_inner();
        ensure!(String::from_utf8_lossy(&out.stdout).contains("demo/app:1"), "the image volume is not mounted: {out:?}");
        remove_pod(c, &sandbox).await;
        Ok::<_, Failed>(())
    })?;
    let records = c.enforce.records();
    let r = last_record(&records, |r| r.surface == "image volume /data" && r.decision == "deny")?;
    ensure!(r.mode == Some(pullgate::policy::Mode::Enforce) && r.pod == "team/volumes", "{r:?}");
    let r = last_record(&records, |r| r.surface == "image volume /data" && r.decision == "allow")?;
    ensure!(r.digest == c.get("DEMO_DIGEST"), "{r:?}");
    Ok(())
}

/// Audit mode: every attack above goes through, each with a `deny` record in audit mode.
fn audit_mode(c: &Ctx) -> TestResult {
    let image = c.get("UNSIGNED_IMAGE");
    let pause = c.get("SANDBOX_IMAGE");
    c.rt.block_on(async {
        // v1alpha2 PullImage (containerd 2.x no longer serves v1alpha2: pullgate let it through).
        let mut client = k8s2::image_service_client::ImageServiceClient::new(cri::channel(&c.audit.sock));
        let req = k8s2::PullImageRequest { image: spec2(&image), auth: None, sandbox_config: Some(pod2("audit")) };
        match client.pull_image(req).await {
            Ok(_) => {}
            Err(s) if c.containerd2 && s.code() == tonic::Code::Unimplemented => {}
            Err(s) => return Err(Failed::from(format!("audit-mode v1alpha2 pull: {s:?}"))),
        }
        // The sandbox image under the policy, unverified: pulled and run.
        let pods = cri::runtime(&c.direct()).list_pod_sandbox(k8s::ListPodSandboxRequest { filter: None }).await?.into_inner().items;
        for p in pods {
            remove_pod(c, &p.id).await;
        }
        let _ = cri::images(&c.direct()).remove_image(k8s::RemoveImageRequest { image: spec(&pause) }).await;
        let sandbox = run_pod(&c.strict_audit.sock, "audit-sandbox").await?;
        remove_pod(c, &sandbox).await;
        Ok::<_, Failed>(())
    })?;
    // containerd's own API: let through.
    let (ok, out) = ctr_through(&c.audit.sock, &["-n", "k8s.io", "containers", "ls"])?;
    ensure!(ok, "audit mode refused ctr: {out}");
    let records = c.audit.records();
    let r = last_record(&records, |r| r.call == "PullImage" && r.image == image)?;
    ensure!(r.decision == "allow" && r.would_deny && r.format == 2 && r.mode == Some(pullgate::policy::Mode::Audit), "{r:?}");
    let r = last_record(&records, |r| r.surface == "not CRI")?;
    ensure!(r.decision == "allow" && r.would_deny && r.format == 2 && r.mode == Some(pullgate::policy::Mode::Audit), "{r:?}");
    let records = c.strict_audit.records();
    let r = last_record(&records, |r| r.call == "RunPodSandbox" && r.pod == "team/audit-sandbox")?;
    ensure!(
        r.decision == "allow"
            && r.would_deny
            && r.format == 2
            && r.mode == Some(pullgate::policy::Mode::Audit)
            && r.surface == "sandbox image",
        "{r:?}"
    );
    c.rt.block_on(remove_unsigned(c))?;
    Ok(())
}
